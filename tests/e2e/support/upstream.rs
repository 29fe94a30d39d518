//! In-process upstream servers on `127.0.0.1:0`, each on its own thread with its own tokio
//! runtime, so a test's client code and the gateway's workers never share a scheduler
//! with them.
//!
//! - [`Upstream`]: a hyper server (HTTP/1.1 and prior-knowledge h2c on the same port) that
//!   records every request it sees ([`Seen`]) and answers through a handler.
//! - [`RawUpstream`]: a plain TCP acceptor whose handler gets the socket, for misbehaving
//!   upstreams (never answering, resetting mid-body) and the WebSocket echo server.
//! - [`dead_address`]: an address where nothing listens.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Response, StatusCode, Uri, Version};
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

/// One request as the upstream received it (body read whole).
#[derive(Debug, Clone)]
pub struct Seen {
    /// Method.
    pub method: Method,
    /// Request target (origin-form for HTTP/1.1, absolute for HTTP/2).
    pub uri: Uri,
    /// Protocol version the gateway spoke.
    pub version: Version,
    /// Headers as received.
    pub headers: HeaderMap,
    /// The whole body.
    pub body: Bytes,
}

impl Seen {
    /// The value of header `name` as text ("" when absent).
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    /// Every value of header `name`, one per header line.
    pub fn header_all(&self, name: &str) -> Vec<&str> {
        self.headers
            .get_all(name)
            .iter()
            .map(|v| v.to_str().unwrap_or(""))
            .collect()
    }
}

/// What a handler returns.
pub type Answer = Pin<Box<dyn Future<Output = Response<Full<Bytes>>> + Send>>;
type Handler = Arc<dyn Fn(Seen) -> Answer + Send + Sync>;

/// Runs a server loop on its own thread and runtime until dropped.
struct Background {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Background {
    fn start<F, Fut>(serve: F) -> Background
    where
        F: FnOnce(TcpListener) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + 'static,
    {
        let std_listener =
            std::net::TcpListener::bind("127.0.0.1:0").expect("bind an upstream port");
        Self::start_on(std_listener, serve)
    }

    fn start_on<F, Fut>(std_listener: std::net::TcpListener, serve: F) -> Background
    where
        F: FnOnce(TcpListener) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + 'static,
    {
        std_listener
            .set_nonblocking(true)
            .expect("nonblocking listener");
        let addr = std_listener.local_addr().expect("upstream address");
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name(format!("upstream-{}", addr.port()))
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("upstream runtime");
                let local = tokio::task::LocalSet::new();
                local.block_on(&rt, async move {
                    let listener = TcpListener::from_std(std_listener).expect("tokio listener");
                    tokio::select! {
                        _ = serve(listener) => {}
                        _ = stop_rx => {}
                    }
                });
            })
            .expect("upstream thread");
        Background {
            addr,
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A recording HTTP upstream (HTTP/1.1 and h2c).
pub struct Upstream {
    server: Background,
    seen: Arc<Mutex<Vec<Seen>>>,
    connections: Arc<AtomicUsize>,
}

impl Upstream {
    /// An upstream that answers each request with `handler`.
    pub fn start<F, Fut>(handler: F) -> Upstream
    where
        F: Fn(Seen) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Response<Full<Bytes>>> + Send + 'static,
    {
        Self::start_with(None, handler)
    }

    /// An echo upstream behind TLS with `config` (HTTP/1.1 or h2 by ALPN).
    pub fn echo_tls(config: Arc<rustls::ServerConfig>) -> Upstream {
        Self::start_with(
            Some(config),
            |seen: Seen| async move { echo_response(&seen) },
        )
    }

    /// An upstream behind TLS with `config` that answers each request with `handler`.
    pub fn start_tls<F, Fut>(config: Arc<rustls::ServerConfig>, handler: F) -> Upstream
    where
        F: Fn(Seen) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Response<Full<Bytes>>> + Send + 'static,
    {
        Self::start_with(Some(config), handler)
    }

    fn start_with<F, Fut>(tls: Option<Arc<rustls::ServerConfig>>, handler: F) -> Upstream
    where
        F: Fn(Seen) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Response<Full<Bytes>>> + Send + 'static,
    {
        let handler: Handler = Arc::new(move |seen| Box::pin(handler(seen)));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(AtomicUsize::new(0));
        let (record, count) = (seen.clone(), connections.clone());
        let server =
            Background::start(move |listener| serve_http(listener, tls, handler, record, count));
        Upstream {
            server,
            seen,
            connections,
        }
    }

    /// An upstream bound to `bind` (e.g. `127.0.0.2:PORT`, for DNS tests that move a name
    /// to another address with the same port) answering with `handler`.
    pub fn start_on<F, Fut>(bind: &str, handler: F) -> Upstream
    where
        F: Fn(Seen) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Response<Full<Bytes>>> + Send + 'static,
    {
        let handler: Handler = Arc::new(move |seen| Box::pin(handler(seen)));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(AtomicUsize::new(0));
        let (record, count) = (seen.clone(), connections.clone());
        let listener = std::net::TcpListener::bind(bind).expect("bind an upstream port");
        let server = Background::start_on(listener, move |listener| {
            serve_http(listener, None, handler, record, count)
        });
        Upstream {
            server,
            seen,
            connections,
        }
    }

    /// An echo upstream listening, from now on, on a port held by [`reserve_port`] (the
    /// upstream that "starts late").
    pub fn echo_on(reserved: ReservedPort) -> Upstream {
        reserved.0.listen(128).expect("listen on the reserved port");
        let handler: Handler = Arc::new(|seen: Seen| Box::pin(async move { echo_response(&seen) }));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(AtomicUsize::new(0));
        let (record, count) = (seen.clone(), connections.clone());
        let server = Background::start_on(reserved.0.into(), move |listener| {
            serve_http(listener, None, handler, record, count)
        });
        Upstream {
            server,
            seen,
            connections,
        }
    }

    /// An upstream that answers 200 with the request body, and `x-upstream-path` set to the
    /// path it received.
    pub fn echo() -> Upstream {
        Upstream::start(|seen: Seen| async move { echo_response(&seen) })
    }

    /// An echo upstream that waits `delay` before answering.
    pub fn slow(delay: Duration) -> Upstream {
        Upstream::start(move |seen: Seen| async move {
            tokio::time::sleep(delay).await;
            echo_response(&seen)
        })
    }

    /// `host:port` to put in a configuration.
    pub fn addr(&self) -> SocketAddr {
        self.server.addr
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    /// Every request received so far.
    pub fn requests(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// The only request received so far (fails when there is not exactly one).
    pub fn only_request(&self) -> Seen {
        let all = self.requests();
        assert_eq!(
            all.len(),
            1,
            "expected exactly one upstream request, got {all:#?}"
        );
        all.into_iter().next().unwrap()
    }
}

/// 200 with the request's body, echoing its path in `x-upstream-path`.
pub fn echo_response(seen: &Seen) -> Response<Full<Bytes>> {
    Response::builder()
        .status(StatusCode::OK)
        .header(
            "x-upstream-path",
            seen.uri.path_and_query().map_or("/", |p| p.as_str()),
        )
        .body(Full::new(seen.body.clone()))
        .unwrap()
}

async fn serve_http(
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    handler: Handler,
    seen: Arc<Mutex<Vec<Seen>>>,
    connections: Arc<AtomicUsize>,
) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        connections.fetch_add(1, Ordering::SeqCst);
        let handler = handler.clone();
        let seen = seen.clone();
        let tls = tls.clone();
        tokio::task::spawn_local(async move {
            let service = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                let handler = handler.clone();
                let seen = seen.clone();
                async move {
                    let (head, body) = req.into_parts();
                    let body = match body.collect().await {
                        Ok(b) => b.to_bytes(),
                        // The gateway aborted the body (a client-side failure): no answer.
                        Err(e) => return Err(e),
                    };
                    let request = Seen {
                        method: head.method,
                        uri: head.uri,
                        version: head.version,
                        headers: head.headers,
                        body,
                    };
                    seen.lock().unwrap().push(request.clone());
                    Ok::<_, hyper::Error>(handler(request).await)
                }
            });
            let server = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            match tls {
                None => {
                    let _ = server.serve_connection(TokioIo::new(stream), service).await;
                }
                Some(config) => {
                    let Ok(stream) = tokio_rustls::TlsAcceptor::from(config).accept(stream).await
                    else {
                        return;
                    };
                    let _ = server.serve_connection(TokioIo::new(stream), service).await;
                }
            }
        });
    }
}

type RawHandler = Arc<dyn Fn(TcpStream) -> Pin<Box<dyn Future<Output = ()>>> + Send + Sync>;

/// A TCP upstream whose handler owns each accepted socket.
pub struct RawUpstream {
    server: Background,
    accepted: Arc<AtomicUsize>,
}

impl RawUpstream {
    /// Calls `handler` with every accepted connection (each on its own task).
    pub fn start<F, Fut>(handler: F) -> RawUpstream
    where
        F: Fn(TcpStream) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + 'static,
    {
        let handler: RawHandler = Arc::new(move |s| Box::pin(handler(s)));
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        let server = Background::start(move |listener| async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                count.fetch_add(1, Ordering::SeqCst);
                tokio::task::spawn_local(handler(stream));
            }
        });
        RawUpstream { server, accepted }
    }

    /// An upstream that reads the request and never answers (keeps the socket open).
    pub fn silent() -> RawUpstream {
        RawUpstream::start(|mut stream| async move {
            use tokio::io::AsyncReadExt;
            let mut buf = [0u8; 4096];
            while let Ok(n) = stream.read(&mut buf).await {
                if n == 0 {
                    break;
                }
            }
        })
    }

    /// A WebSocket server that echoes every text and binary message.
    pub fn websocket_echo() -> RawUpstream {
        RawUpstream::start(|stream| async move {
            use futures_util::{SinkExt, StreamExt};
            let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
                return;
            };
            while let Some(Ok(msg)) = ws.next().await {
                if msg.is_text() || msg.is_binary() {
                    if ws.send(msg).await.is_err() {
                        break;
                    }
                } else if msg.is_close() {
                    let _ = ws.close(None).await;
                    break;
                }
            }
        })
    }

    /// `host:port` to put in a configuration.
    pub fn addr(&self) -> SocketAddr {
        self.server.addr
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

/// An address where nothing listens: a port bound but never listened on, held for the rest
/// of the test run so that no other test's server can be handed it (connections to it are
/// refused).
pub fn dead_address() -> SocketAddr {
    static HELD: std::sync::Mutex<Vec<socket2::Socket>> = std::sync::Mutex::new(Vec::new());
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    socket.bind(&any.into()).unwrap();
    let addr = socket.local_addr().unwrap().as_socket().unwrap();
    HELD.lock().unwrap().push(socket);
    addr
}

/// A port bound but not listening: connections to it are refused until an upstream starts
/// on it with [`Upstream::echo_on`], and no other test can take it meanwhile.
pub struct ReservedPort(socket2::Socket);

impl ReservedPort {
    /// The reserved address.
    pub fn addr(&self) -> SocketAddr {
        self.0.local_addr().unwrap().as_socket().unwrap()
    }
}

/// Reserves a local port (see [`ReservedPort`]).
pub fn reserve_port() -> ReservedPort {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    socket.bind(&any.into()).unwrap();
    ReservedPort(socket)
}
