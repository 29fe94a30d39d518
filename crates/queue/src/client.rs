//! The delivery thread's HTTP client: hyper's connection-level HTTP/1.1 and HTTP/2
//! clients over TCP (or TLS with the upstream's rustls configuration), with a small
//! keep-alive pool per target. It belongs to the delivery thread (`Rc`, `spawn_local`), so
//! it never contends with the request workers' pools.
//!
//! One [`Client::send`] is one delivery attempt: it picks a target with the upstream's
//! balancer, tries the next target when one cannot be connected to, waits for the response
//! head within the upstream's `read_timeout`, and reads (a bounded prefix of) the body so
//! the connection can be reused.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Method, Request, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::retry::parse_retry_after;
use sluicegate_core::LocalExec;
use sluicegate_upstream::{Protocol, Target, Upstream};

/// Response bodies are read up to this size (for the dead-letter reason); the rest is
/// drained within the same timeout or the connection is closed.
const BODY_LIMIT: usize = 64 * 1024;
/// How much of an error body goes into the reason text.
const EXCERPT_LEN: usize = 256;
/// The balancer keeps one cursor per worker; delivery uses the first one.
const BALANCER_SLOT: usize = 0;

/// A request to deliver.
#[derive(Debug, Clone)]
pub struct Outgoing {
    /// Method.
    pub method: Method,
    /// Path and query (origin form).
    pub path_and_query: String,
    /// Headers (hop-by-hop already removed).
    pub headers: HeaderMap,
    /// Body.
    pub body: Bytes,
}

/// The upstream's answer.
#[derive(Debug, Clone)]
pub struct Answer {
    /// Status code.
    pub status: u16,
    /// `Retry-After`, parsed.
    pub retry_after: Option<Duration>,
    /// The start of the body, as text, for reasons and logs.
    pub excerpt: String,
    /// The target that answered.
    pub target: String,
}

/// Why an attempt got no answer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SendError {
    /// No target could be connected to.
    #[error("cannot connect to upstream `{upstream}`: {message}")]
    Connect {
        /// Upstream name.
        upstream: String,
        /// The last target's error.
        message: String,
    },
    /// No response head within the read timeout.
    #[error("upstream `{upstream}` did not answer within {ms} ms")]
    Timeout {
        /// Upstream name.
        upstream: String,
        /// The timeout.
        ms: u128,
    },
    /// The connection broke or the request could not be built.
    #[error("upstream `{upstream}` failed: {message}")]
    Protocol {
        /// Upstream name.
        upstream: String,
        /// What happened.
        message: String,
    },
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

type Body = Full<Bytes>;

#[derive(Default)]
struct Pools {
    h1: HashMap<u64, Vec<(http1::SendRequest<Body>, Instant)>>,
    h2: HashMap<u64, http2::SendRequest<Body>>,
}

/// The delivery client (cheap to clone; clones share the pool).
#[derive(Clone, Default)]
pub struct Client {
    pools: Rc<RefCell<Pools>>,
}

enum Conn {
    H1(http1::SendRequest<Body>, bool),
    H2(http2::SendRequest<Body>, bool),
}

impl Client {
    /// Sends `out` to `upstream` once (trying further targets only when one cannot be
    /// connected to).
    pub async fn send(&self, upstream: &Upstream, out: &Outgoing) -> Result<Answer, SendError> {
        let set = upstream.live.load_full();
        let attempts = set.len().max(1);
        let mut last = SendError::Connect {
            upstream: upstream.name.clone(),
            message: "the upstream has no (resolved) targets".into(),
        };
        let mut tried = sluicegate_upstream::balance::Tried::default();
        for _ in 0..attempts {
            // Healthy targets first; with none left, any target not tried yet.
            let Some(index) = set
                .select(&upstream.policy, BALANCER_SLOT, 0, tried, false)
                .or_else(|| set.select(&upstream.policy, BALANCER_SLOT, 0, tried, true))
            else {
                break;
            };
            tried.add(index);
            let target = &set.targets[index];
            let conn = match self.checkout(upstream, target).await {
                Ok(c) => c,
                Err(e) => {
                    upstream.metrics.error("connect");
                    last = e;
                    continue;
                }
            };
            let req = build(upstream, target, out)?;
            return match self.exchange(upstream, target, conn, req).await {
                Err(Retry::Unsent(req)) => {
                    // A pooled connection had closed before anything was written: one fresh try.
                    let conn = self.connect(upstream, target).await?;
                    match self.exchange(upstream, target, conn, req).await {
                        Err(Retry::Unsent(_)) => Err(SendError::Protocol {
                            upstream: upstream.name.clone(),
                            message: "the connection closed before the request was sent".into(),
                        }),
                        Err(Retry::Failed(e)) => Err(e),
                        Ok(a) => Ok(a),
                    }
                }
                Err(Retry::Failed(e)) => Err(e),
                Ok(a) => Ok(a),
            };
        }
        Err(last)
    }

    async fn checkout(&self, upstream: &Upstream, target: &Target) -> Result<Conn, SendError> {
        {
            let mut pools = self.pools.borrow_mut();
            if upstream.protocol == Protocol::Http2 {
                if let Some(s) = pools.h2.get(&target.pool_key).filter(|s| !s.is_closed()) {
                    return Ok(Conn::H2(s.clone(), true));
                }
            } else if let Some(idle) = pools.h1.get_mut(&target.pool_key) {
                while let Some((s, since)) = idle.pop() {
                    if !s.is_closed() && s.is_ready() && since.elapsed() < upstream.idle_timeout {
                        return Ok(Conn::H1(s, true));
                    }
                }
            }
        }
        self.connect(upstream, target).await
    }

    async fn connect(&self, upstream: &Upstream, target: &Target) -> Result<Conn, SendError> {
        let fail = |message: String| SendError::Connect {
            upstream: upstream.name.clone(),
            message: format!("target {}: {message}", target.address),
        };
        let connecting = async {
            let tcp = TcpStream::connect(target.addr)
                .await
                .map_err(|e| fail(e.to_string()))?;
            let _ = tcp.set_nodelay(true);
            let io: Box<dyn Io> = match &upstream.tls {
                None => Box::new(tcp),
                Some(tls) => {
                    let name = tls.sni.clone().unwrap_or_else(|| target.host.clone());
                    let server_name = rustls::pki_types::ServerName::try_from(name)
                        .map_err(|e| fail(format!("invalid TLS server name: {e}")))?;
                    let stream = tokio_rustls::TlsConnector::from(tls.config.clone())
                        .connect(server_name, tcp)
                        .await
                        .map_err(|e| fail(format!("TLS handshake failed: {e}")))?;
                    Box::new(stream)
                }
            };
            Ok::<_, SendError>(TokioIo::new(io))
        };
        let io = match tokio::time::timeout(upstream.connect_timeout, connecting).await {
            Ok(r) => r?,
            Err(_) => {
                return Err(fail(format!(
                    "connect timed out after {:?}",
                    upstream.connect_timeout
                )))
            }
        };
        match upstream.protocol {
            Protocol::Http1 => {
                let (sender, conn) = http1::Builder::new()
                    .handshake(io)
                    .await
                    .map_err(|e| fail(format!("handshake failed: {e}")))?;
                tokio::task::spawn_local(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!(error = %e, "Delivery connection ended with an error.");
                    }
                });
                Ok(Conn::H1(sender, false))
            }
            Protocol::Http2 => {
                let (sender, conn) = http2::Builder::new(LocalExec)
                    .timer(TokioTimer::new())
                    .handshake(io)
                    .await
                    .map_err(|e| fail(format!("HTTP/2 handshake failed: {e}")))?;
                tokio::task::spawn_local(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!(error = %e, "Delivery HTTP/2 connection ended with an error.");
                    }
                });
                self.pools
                    .borrow_mut()
                    .h2
                    .insert(target.pool_key, sender.clone());
                Ok(Conn::H2(sender, false))
            }
        }
    }

    async fn exchange(
        &self,
        upstream: &Upstream,
        target: &Target,
        conn: Conn,
        req: Request<Body>,
    ) -> Result<Answer, Retry> {
        let timeout = upstream.read_timeout;
        let timed_out = || {
            upstream.metrics.error("timeout");
            Retry::Failed(SendError::Timeout {
                upstream: upstream.name.clone(),
                ms: timeout.as_millis(),
            })
        };
        let broken = |reused: bool, e: hyper::client::conn::TrySendError<Request<Body>>| {
            let mut e = e;
            match e.take_message() {
                Some(req) if reused => Retry::Unsent(req),
                _ => {
                    upstream.metrics.error("protocol");
                    Retry::Failed(SendError::Protocol {
                        upstream: upstream.name.clone(),
                        message: e.into_error().to_string(),
                    })
                }
            }
        };
        let (response, h1) = match conn {
            Conn::H1(mut sender, reused) => {
                if sender.ready().await.is_err() {
                    return Err(Retry::Unsent(req));
                }
                match tokio::time::timeout(timeout, sender.try_send_request(req)).await {
                    Err(_) => return Err(timed_out()),
                    Ok(Err(e)) => return Err(broken(reused, e)),
                    Ok(Ok(r)) => (r, Some(sender)),
                }
            }
            Conn::H2(mut sender, reused) => {
                match tokio::time::timeout(timeout, sender.try_send_request(req)).await {
                    Err(_) => return Err(timed_out()),
                    Ok(Err(e)) => {
                        self.pools.borrow_mut().h2.remove(&target.pool_key);
                        return Err(broken(reused, e));
                    }
                    Ok(Ok(r)) => (r, None),
                }
            }
        };
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, std::time::SystemTime::now()));
        let body = Limited::new(response.into_body(), BODY_LIMIT);
        let excerpt = match tokio::time::timeout(timeout, body.collect()).await {
            Ok(Ok(collected)) => {
                if let Some(sender) = h1 {
                    self.release(upstream, target, sender);
                }
                let bytes = collected.to_bytes();
                let cut = &bytes[..bytes.len().min(EXCERPT_LEN)];
                String::from_utf8_lossy(cut).trim().to_string()
            }
            // The status is what counts; the connection is not reused.
            _ => String::new(),
        };
        Ok(Answer {
            status,
            retry_after,
            excerpt,
            target: target.address.to_string(),
        })
    }

    fn release(&self, upstream: &Upstream, target: &Target, sender: http1::SendRequest<Body>) {
        if sender.is_closed() {
            return;
        }
        let mut pools = self.pools.borrow_mut();
        let idle = pools.h1.entry(target.pool_key).or_default();
        if idle.len() < upstream.max_idle.max(1) {
            idle.push((sender, Instant::now()));
        }
    }
}

enum Retry {
    /// The request was not written: it may go on a fresh connection.
    Unsent(Request<Body>),
    /// The attempt failed.
    Failed(SendError),
}

impl From<SendError> for Retry {
    fn from(e: SendError) -> Self {
        Retry::Failed(e)
    }
}

fn build(upstream: &Upstream, target: &Target, out: &Outgoing) -> Result<Request<Body>, SendError> {
    let invalid = |what: &str| SendError::Protocol {
        upstream: upstream.name.clone(),
        message: format!("cannot build the request: {what}"),
    };
    let mut headers = out.headers.clone();
    let uri: Uri = if upstream.protocol == Protocol::Http2 {
        headers.remove(header::HOST);
        Uri::builder()
            .scheme(upstream.scheme())
            .authority(&*target.address)
            .path_and_query(out.path_and_query.as_str())
            .build()
            .map_err(|_| invalid("invalid path"))?
    } else {
        if !headers.contains_key(header::HOST) {
            let host = HeaderValue::from_str(&target.address)
                .map_err(|_| invalid("invalid target address"))?;
            headers.insert(header::HOST, host);
        }
        out.path_and_query
            .parse()
            .map_err(|_| invalid("invalid path"))?
    };
    let mut req = Request::new(Full::new(out.body.clone()));
    *req.method_mut() = out.method.clone();
    *req.uri_mut() = uri;
    *req.headers_mut() = headers;
    Ok(req)
}
