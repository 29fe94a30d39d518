//! A small gRPC service, `test.Echo`, with tonic on both ends and no generated code: the
//! message is a hand-written prost struct, the server dispatches on the path to
//! `tonic::server::Grpc`, the client is `tonic::client::Grpc` over a hyper HTTP/2
//! connection (h2c, or h2 over TLS). Nothing needs `protoc`.
//!
//! ```proto
//! message Msg { string text = 1; uint32 count = 2; }
//! service Echo {
//!   rpc Unary(Msg) returns (Msg);                  // "echo: <text>"; text "fail" → INVALID_ARGUMENT
//!   rpc ServerStream(Msg) returns (stream Msg);    // <count> messages, then OK — or, for text
//!                                                 // "fail-late", DATA_LOSS with metadata
//!   rpc ClientStream(stream Msg) returns (Msg);    // texts joined with "+", count = messages
//!   rpc Bidi(stream Msg) returns (stream Msg);     // "re: <text>" for each message
//! }
//! ```
//!
//! Every response carries `x-handler` metadata (headers); errors carry `x-detail` metadata
//! (trailers). The server records each request's headers.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use futures_util::{stream, Stream, StreamExt};
use http::uri::PathAndQuery;
use http::{HeaderMap, Uri};
use hyper::body::Incoming;
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncWrite};
use tonic::metadata::MetadataMap;
use tonic::server::{
    ClientStreamingService, ServerStreamingService, StreamingService, UnaryService,
};
use tonic::{Code, Request, Response, Status, Streaming};
use tonic_prost::ProstCodec;

use crate::support::h2server::{AnyBody, H2Server};

/// The one message type.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Msg {
    /// Text.
    #[prost(string, tag = "1")]
    pub text: String,
    /// A count.
    #[prost(uint32, tag = "2")]
    pub count: u32,
}

/// `Msg` with `text`.
pub fn msg(text: impl Into<String>) -> Msg {
    Msg {
        text: text.into(),
        count: 0,
    }
}

fn metadata(pairs: &[(&'static str, &'static str)]) -> MetadataMap {
    let mut md = MetadataMap::new();
    for (k, v) in pairs {
        md.insert(*k, v.parse().unwrap());
    }
    md
}

fn with_handler<T>(name: &'static str, body: T) -> Response<T> {
    let mut resp = Response::new(body);
    resp.metadata_mut()
        .insert("x-handler", name.parse().unwrap());
    resp
}

type BoxFut<T> = Pin<Box<dyn Future<Output = Result<Response<T>, Status>> + Send>>;
type MsgStream = Pin<Box<dyn Stream<Item = Result<Msg, Status>> + Send>>;

struct Unary;
impl UnaryService<Msg> for Unary {
    type Response = Msg;
    type Future = BoxFut<Msg>;
    fn call(&mut self, req: Request<Msg>) -> Self::Future {
        Box::pin(async move {
            let m = req.into_inner();
            if m.text == "fail" {
                return Err(Status::with_metadata(
                    Code::InvalidArgument,
                    "no “fail” allowed: 100% refused",
                    metadata(&[("x-detail", "unary-refusal")]),
                ));
            }
            Ok(with_handler(
                "unary",
                Msg {
                    text: format!("echo: {}", m.text),
                    count: m.count,
                },
            ))
        })
    }
}

struct ServerStream;
impl ServerStreamingService<Msg> for ServerStream {
    type Response = Msg;
    type ResponseStream = MsgStream;
    type Future = BoxFut<MsgStream>;
    fn call(&mut self, req: Request<Msg>) -> Self::Future {
        Box::pin(async move {
            let m = req.into_inner();
            let fail = m.text == "fail-late";
            let items = (0..m.count).map(move |i| Ok(msg(format!("{} #{i}", m.text))));
            let end = fail.then(|| {
                Err(Status::with_metadata(
                    Code::DataLoss,
                    "stream broke after the messages",
                    metadata(&[("x-detail", "late-failure"), ("x-count", "3")]),
                ))
            });
            let s: MsgStream = Box::pin(stream::iter(items.chain(end)));
            Ok(with_handler("server-stream", s))
        })
    }
}

struct ClientStream;
impl ClientStreamingService<Msg> for ClientStream {
    type Response = Msg;
    type Future = BoxFut<Msg>;
    fn call(&mut self, req: Request<Streaming<Msg>>) -> Self::Future {
        Box::pin(async move {
            let mut s = req.into_inner();
            let mut texts = Vec::new();
            while let Some(m) = s.message().await? {
                texts.push(m.text);
            }
            Ok(with_handler(
                "client-stream",
                Msg {
                    count: texts.len() as u32,
                    text: texts.join("+"),
                },
            ))
        })
    }
}

struct Bidi;
impl StreamingService<Msg> for Bidi {
    type Response = Msg;
    type ResponseStream = MsgStream;
    type Future = BoxFut<MsgStream>;
    fn call(&mut self, req: Request<Streaming<Msg>>) -> Self::Future {
        Box::pin(async move {
            let s = req.into_inner();
            let replies: MsgStream = Box::pin(s.map(|m| m.map(|m| msg(format!("re: {}", m.text)))));
            Ok(with_handler("bidi", replies))
        })
    }
}

/// Routes one HTTP/2 request to the `test.Echo` method its path names.
pub async fn dispatch(req: http::Request<Incoming>) -> http::Response<AnyBody> {
    let codec = ProstCodec::<Msg, Msg>::default;
    let mut grpc = tonic::server::Grpc::new(codec());
    match req.uri().path() {
        "/test.Echo/Unary" => grpc.unary(Unary, req).await,
        "/test.Echo/ServerStream" => grpc.server_streaming(ServerStream, req).await,
        "/test.Echo/ClientStream" => grpc.client_streaming(ClientStream, req).await,
        "/test.Echo/Bidi" => grpc.streaming(Bidi, req).await,
        _ => Status::unimplemented("no such method").into_http(),
    }
}

/// A `test.Echo` server (h2c, or TLS with `tls`), recording every request's headers.
pub struct EchoServer {
    /// The server.
    pub server: H2Server,
    headers: Arc<Mutex<Vec<HeaderMap>>>,
}

impl EchoServer {
    /// A cleartext (h2c) server.
    pub fn start() -> EchoServer {
        Self::start_with(None)
    }

    /// A server behind TLS with `config`.
    pub fn start_tls(config: Arc<rustls::ServerConfig>) -> EchoServer {
        Self::start_with(Some(config))
    }

    fn start_with(tls: Option<Arc<rustls::ServerConfig>>) -> EchoServer {
        let headers = Arc::new(Mutex::new(Vec::new()));
        let record = headers.clone();
        let handler = move |req: http::Request<Incoming>| {
            record.lock().unwrap().push(req.headers().clone());
            dispatch(req)
        };
        let server = match tls {
            None => H2Server::start(handler),
            Some(config) => H2Server::start_tls(config, handler),
        };
        EchoServer { server, headers }
    }

    /// The listening address.
    pub fn addr(&self) -> std::net::SocketAddr {
        self.server.addr()
    }

    /// Headers of every request received so far.
    pub fn headers(&self) -> Vec<HeaderMap> {
        self.headers.lock().unwrap().clone()
    }
}

/// A tower service over one hyper HTTP/2 client connection, for `tonic::client::Grpc`.
#[derive(Clone)]
pub struct Channel(SendRequest<AnyBody>);

impl tower_service::Service<http::Request<AnyBody>> for Channel {
    type Response = http::Response<Incoming>;
    type Error = hyper::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<AnyBody>) -> Self::Future {
        Box::pin(self.0.send_request(req))
    }
}

/// A `test.Echo` client.
pub struct EchoClient {
    grpc: tonic::client::Grpc<Channel>,
}

impl EchoClient {
    /// Speaks HTTP/2 over `io` (a TCP stream for h2c, a TLS stream that agreed on h2);
    /// `origin` gives `:scheme` and `:authority`.
    pub async fn over<I>(io: I, origin: &str) -> EchoClient
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .handshake(TokioIo::new(io))
            .await
            .unwrap();
        tokio::spawn(conn);
        let origin: Uri = origin.parse().unwrap();
        EchoClient {
            grpc: tonic::client::Grpc::with_origin(Channel(sender), origin),
        }
    }

    /// An h2c client of `addr`.
    pub async fn h2c(addr: std::net::SocketAddr) -> EchoClient {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        Self::over(tcp, &format!("http://localhost:{}", addr.port())).await
    }

    fn path(method: &str) -> PathAndQuery {
        format!("/test.Echo/{method}").parse().unwrap()
    }

    /// `Unary`.
    pub async fn unary(&mut self, m: Msg) -> Result<Response<Msg>, Status> {
        self.grpc.ready().await.unwrap();
        let codec = ProstCodec::<Msg, Msg>::default();
        self.grpc
            .unary(Request::new(m), Self::path("Unary"), codec)
            .await
    }

    /// `ServerStream`.
    pub async fn server_stream(&mut self, m: Msg) -> Result<Response<Streaming<Msg>>, Status> {
        self.grpc.ready().await.unwrap();
        let codec = ProstCodec::<Msg, Msg>::default();
        self.grpc
            .server_streaming(Request::new(m), Self::path("ServerStream"), codec)
            .await
    }

    /// `ClientStream`.
    pub async fn client_stream<S>(&mut self, messages: S) -> Result<Response<Msg>, Status>
    where
        S: Stream<Item = Msg> + Send + 'static,
    {
        self.grpc.ready().await.unwrap();
        let codec = ProstCodec::<Msg, Msg>::default();
        self.grpc
            .client_streaming(Request::new(messages), Self::path("ClientStream"), codec)
            .await
    }

    /// `Bidi`.
    pub async fn bidi<S>(&mut self, messages: S) -> Result<Response<Streaming<Msg>>, Status>
    where
        S: Stream<Item = Msg> + Send + 'static,
    {
        self.grpc.ready().await.unwrap();
        let codec = ProstCodec::<Msg, Msg>::default();
        self.grpc
            .streaming(Request::new(messages), Self::path("Bidi"), codec)
            .await
    }
}
