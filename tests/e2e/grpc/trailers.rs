//! The HTTP/2 pieces gRPC stands on, checked with plain hyper clients and servers: request
//! trailers reach the upstream, response trailers reach the client (also after body
//! filters that add a last chunk), a headers-only response stays headers-only.

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response};
use http_body::Frame;
use http_body_util::{BodyExt, Empty, StreamBody};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};

use super::gateway_to;
use crate::support::h2server::{AnyBody, H2Server};
use crate::support::within;

type Frames = StreamBody<
    futures_util::stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, std::convert::Infallible>>>,
>;

fn frames(data: &[&'static str], trailers: &[(&'static str, &'static str)]) -> Frames {
    let mut out: Vec<Result<Frame<Bytes>, std::convert::Infallible>> = data
        .iter()
        .map(|d| Ok(Frame::data(Bytes::from_static(d.as_bytes()))))
        .collect();
    if !trailers.is_empty() {
        let mut map = HeaderMap::new();
        for (k, v) in trailers {
            map.insert(*k, HeaderValue::from_static(v));
        }
        out.push(Ok(Frame::trailers(map)));
    }
    StreamBody::new(futures_util::stream::iter(out))
}

/// An upstream answering `data` then `trailers`, with the request's trailers echoed as
/// `x-request-trailer-*` headers... after reading the request body whole.
fn upstream(
    data: &'static [&'static str],
    trailers: &'static [(&'static str, &'static str)],
) -> H2Server {
    H2Server::start(move |req: Request<Incoming>| async move {
        let te = req.headers().get("te").cloned();
        let collected = req.into_body().collect().await.unwrap();
        let mut resp = Response::new(AnyBody::new(frames(data, trailers)));
        if let Some(t) = collected.trailers() {
            for (k, v) in t {
                let name = format!("x-request-trailer-{k}");
                resp.headers_mut().insert(
                    http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                    v.clone(),
                );
            }
        }
        if let Some(te) = te {
            resp.headers_mut().insert("x-request-te", te);
        }
        let body = collected.to_bytes();
        resp.headers_mut()
            .insert("x-request-bytes", body.len().into());
        resp
    })
}

/// Sends `req` over h2c and returns the head, the whole body and the trailers.
async fn exchange<B>(
    addr: std::net::SocketAddr,
    req: Request<B>,
) -> (http::response::Parts, Bytes, Option<HeaderMap>)
where
    B: http_body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let resp = within("response head", sender.send_request(req))
        .await
        .unwrap();
    let (head, body) = resp.into_parts();
    let collected = within("response body", body.collect()).await.unwrap();
    let trailers = collected.trailers().cloned();
    (head, collected.to_bytes(), trailers)
}

#[tokio::test]
async fn request_trailers_and_te_reach_the_upstream_and_response_trailers_reach_the_client() {
    let up = upstream(
        &["hello ", "world"],
        &[("x-checksum", "abc"), ("grpc-status", "0")],
    );
    let gw = gateway_to(up.addr(), "").start();
    let req = Request::post("http://localhost/upload")
        .header("te", "trailers")
        .body(frames(&["part one, ", "part two"], &[("x-sum", "42")]))
        .unwrap();
    let (head, body, trailers) = exchange(gw.addr, req).await;

    assert_eq!(head.status, 200);
    assert_eq!(head.headers["x-request-trailer-x-sum"], "42");
    assert_eq!(head.headers["x-request-te"], "trailers");
    assert_eq!(head.headers["x-request-bytes"], "18");
    assert!(
        head.headers.get("content-length").is_none(),
        "{:?}",
        head.headers
    );
    assert_eq!(body, "hello world");
    let trailers = trailers.expect("trailers reach the client");
    assert_eq!(trailers["x-checksum"], "abc");
    assert_eq!(trailers["grpc-status"], "0");
}

#[tokio::test]
async fn trailers_come_after_the_last_chunk_a_body_filter_adds() {
    let up = upstream(&["hello"], &[("x-checksum", "abc")]);
    let plugins = r#"{name: lua, config: {name: bang, phase: body_filter, code: "if ngx.arg[2] then ngx.arg[1] = ngx.arg[1] .. '!' end"}}"#;
    let gw = gateway_to(up.addr(), plugins).start();
    let req = Request::get("http://localhost/")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let (head, body, trailers) = exchange(gw.addr, req).await;

    assert_eq!(head.status, 200);
    assert_eq!(body, "hello!");
    assert_eq!(
        trailers.expect("trailers after the filter")["x-checksum"],
        "abc"
    );
}

#[tokio::test]
async fn a_headers_only_grpc_response_gets_no_invented_content_length() {
    let up = H2Server::start(|_req: Request<Incoming>| async move {
        Response::builder()
            .header("content-type", "application/grpc")
            .header("grpc-status", "5")
            .header("grpc-message", "not found")
            .body(AnyBody::empty())
            .unwrap()
    });
    let gw = gateway_to(up.addr(), "").start();
    let req = Request::post("http://localhost/test.Echo/Unary")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let (head, body, trailers) = exchange(gw.addr, req).await;

    assert_eq!(head.status, 200);
    assert_eq!(head.headers["grpc-status"], "5");
    assert_eq!(head.headers["grpc-message"], "not found");
    assert!(
        head.headers.get("content-length").is_none(),
        "{:?}",
        head.headers
    );
    assert!(body.is_empty());
    assert!(trailers.is_none());
}
