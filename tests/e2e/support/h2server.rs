//! A streaming upstream for HTTP/2 work (gRPC, trailers, TLS checks): a hyper server that
//! speaks HTTP/1.1 and HTTP/2 (prior knowledge, or ALPN over TLS) on `127.0.0.1:0`, on its
//! own thread and runtime, calling a handler with the request as it streams in (body not
//! read up front, so trailers and bidirectional streams stay observable).
//!
//! With TLS, every accepted connection is recorded ([`TlsSeen`]): the SNI the client sent,
//! whether it presented a certificate, and the ALPN protocol agreed.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

/// The response body type of handlers: any body, boxed (tonic's body boxes any
/// `http_body::Body` with `Bytes` data).
pub type AnyBody = tonic::body::Body;

type Reply = Pin<Box<dyn Future<Output = Response<AnyBody>> + Send>>;
type Handler = Arc<dyn Fn(Request<Incoming>) -> Reply + Send + Sync>;

/// What a TLS client showed during one handshake.
#[derive(Debug, Clone)]
pub struct TlsSeen {
    /// The SNI host name, if one was sent.
    pub sni: Option<String>,
    /// Whether the client presented a certificate (only asked for with client auth).
    pub client_cert: bool,
    /// The ALPN protocol agreed on.
    pub alpn: Option<Vec<u8>>,
}

/// A running server; stopped (and its thread joined) when dropped.
pub struct H2Server {
    addr: SocketAddr,
    tls_seen: Arc<Mutex<Vec<TlsSeen>>>,
    handshake_failures: Arc<Mutex<Vec<String>>>,
    connections: Arc<std::sync::atomic::AtomicUsize>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl H2Server {
    /// Serves cleartext HTTP/1.1 and h2c with `handler`.
    pub fn start<F, Fut>(handler: F) -> H2Server
    where
        F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Response<AnyBody>> + Send + 'static,
    {
        Self::start_with(None, handler)
    }

    /// Serves over TLS with `config` (HTTP/1.1 or h2, whatever the client speaks).
    pub fn start_tls<F, Fut>(config: Arc<rustls::ServerConfig>, handler: F) -> H2Server
    where
        F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Response<AnyBody>> + Send + 'static,
    {
        Self::start_with(Some(config), handler)
    }

    fn start_with<F, Fut>(tls: Option<Arc<rustls::ServerConfig>>, handler: F) -> H2Server
    where
        F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Response<AnyBody>> + Send + 'static,
    {
        let handler: Handler = Arc::new(move |req| Box::pin(handler(req)));
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        std_listener.set_nonblocking(true).unwrap();
        let addr = std_listener.local_addr().unwrap();
        let tls_seen = Arc::new(Mutex::new(Vec::new()));
        let handshake_failures = Arc::new(Mutex::new(Vec::new()));
        let (seen, failures) = (tls_seen.clone(), handshake_failures.clone());
        let connections = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let accepted = connections.clone();
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name(format!("h2-upstream-{}", addr.port()))
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async move {
                    let listener = TcpListener::from_std(std_listener).unwrap();
                    tokio::select! {
                        _ = accept_loop(listener, tls, handler, seen, failures, accepted) => {}
                        _ = stop_rx => {}
                    }
                });
            })
            .unwrap();
        H2Server {
            addr,
            tls_seen,
            handshake_failures,
            connections,
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }

    /// The listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> usize {
        self.connections.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Every completed TLS handshake so far.
    pub fn tls_seen(&self) -> Vec<TlsSeen> {
        self.tls_seen.lock().unwrap().clone()
    }

    /// Every failed TLS handshake so far (the server's error text).
    pub fn handshake_failures(&self) -> Vec<String> {
        self.handshake_failures.lock().unwrap().clone()
    }

    /// The failed handshakes once there are at least `n` (or after five seconds): the
    /// server records a failure after sending its alert, so the client can learn of the
    /// refusal before the server's task has written it down.
    pub async fn wait_for_handshake_failures(&self, n: usize) -> Vec<String> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            let failures = self.handshake_failures();
            if failures.len() >= n || std::time::Instant::now() >= deadline {
                return failures;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }
}

impl Drop for H2Server {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    handler: Handler,
    seen: Arc<Mutex<Vec<TlsSeen>>>,
    failures: Arc<Mutex<Vec<String>>>,
    accepted: Arc<std::sync::atomic::AtomicUsize>,
) {
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            continue;
        };
        accepted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let handler = handler.clone();
        let (seen, failures) = (seen.clone(), failures.clone());
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let handler = handler.clone();
                async move { Ok::<_, std::convert::Infallible>(handler(req).await) }
            });
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            match acceptor {
                None => {
                    let _ = builder.serve_connection(TokioIo::new(tcp), service).await;
                }
                Some(acceptor) => {
                    let stream = match acceptor.accept(tcp).await {
                        Ok(s) => s,
                        Err(e) => {
                            failures.lock().unwrap().push(e.to_string());
                            return;
                        }
                    };
                    let conn = stream.get_ref().1;
                    seen.lock().unwrap().push(TlsSeen {
                        sni: conn.server_name().map(str::to_string),
                        client_cert: conn.peer_certificates().is_some_and(|c| !c.is_empty()),
                        alpn: conn.alpn_protocol().map(<[u8]>::to_vec),
                    });
                    let _ = builder
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                }
            }
        });
    }
}
