//! One-shot HTTP/1.1 requests the gateway itself makes to a service it depends on (a JWKS
//! URL, an OpenID provider's discovery, token and userinfo endpoints): one connection, one
//! request, the whole answer read into memory.
//!
//! Invariants: every call is bounded — the connection, TLS handshake, request and body
//! together take at most [`Client::timeout`], and a body longer than [`Client::max_bytes`]
//! is an error, never a partial document. The answer's status is returned as is: callers
//! decide what a 4xx means to them. Nothing here is pooled, so a service that changes its
//! address or certificate is met fresh by the next call.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;

/// How to reach one service.
#[derive(Clone)]
pub struct Client {
    /// TLS client configuration for `https` URLs (`None`: `https` URLs fail).
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// Server name for TLS, when not the URL's host.
    pub sni: Option<String>,
    /// Limit on a whole call.
    pub timeout: Duration,
    /// Largest body accepted.
    pub max_bytes: usize,
    /// The `User-Agent` sent.
    pub user_agent: &'static str,
}

/// What came back.
#[derive(Debug)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Response headers.
    pub headers: HeaderMap,
    /// The whole body.
    pub body: Bytes,
}

trait Io: hyper::rt::Read + hyper::rt::Write + Unpin + Send {}
impl<T: hyper::rt::Read + hyper::rt::Write + Unpin + Send> Io for T {}

impl Client {
    /// `GET url`.
    pub async fn get(
        &self,
        url: &Uri,
        headers: &[(HeaderName, HeaderValue)],
    ) -> Result<Response, String> {
        self.send(Method::GET, url, headers, Bytes::new()).await
    }

    /// `POST url` with an `application/x-www-form-urlencoded` body.
    pub async fn post_form(
        &self,
        url: &Uri,
        headers: &[(HeaderName, HeaderValue)],
        form: String,
    ) -> Result<Response, String> {
        let mut all = headers.to_vec();
        all.push((
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/x-www-form-urlencoded"),
        ));
        self.send(Method::POST, url, &all, Bytes::from(form)).await
    }

    /// Sends one request and reads the whole answer, within [`Client::timeout`].
    pub async fn send(
        &self,
        method: Method,
        url: &Uri,
        headers: &[(HeaderName, HeaderValue)],
        body: Bytes,
    ) -> Result<Response, String> {
        match tokio::time::timeout(self.timeout, self.exchange(method, url, headers, body)).await {
            Ok(r) => r,
            Err(_) => Err(format!("no answer within {} ms", self.timeout.as_millis())),
        }
    }

    async fn exchange(
        &self,
        method: Method,
        url: &Uri,
        headers: &[(HeaderName, HeaderValue)],
        body: Bytes,
    ) -> Result<Response, String> {
        let https = match url.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(format!("`{url}` is not an http:// or https:// URL")),
        };
        let host = url
            .host()
            .ok_or_else(|| format!("`{url}` has no host"))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let port = url.port_u16().unwrap_or(if https { 443 } else { 80 });
        let tcp = tokio::net::TcpStream::connect((host.as_str(), port))
            .await
            .map_err(|e| format!("connect to {host}:{port} failed: {e}"))?;
        let _ = tcp.set_nodelay(true);
        let io: Box<dyn Io> = match (&self.tls, https) {
            (Some(tls), true) => {
                let name_text = self.sni.clone().unwrap_or_else(|| host.clone());
                let name = rustls::pki_types::ServerName::try_from(name_text.clone())
                    .map_err(|e| format!("bad TLS server name `{name_text}`: {e}"))?;
                let stream = tokio_rustls::TlsConnector::from(Arc::clone(tls))
                    .connect(name, tcp)
                    .await
                    .map_err(|e| format!("TLS handshake with {host}:{port} failed: {e}"))?;
                Box::new(TokioIo::new(stream))
            }
            (None, true) => return Err("no TLS configuration for an https URL".into()),
            _ => Box::new(TokioIo::new(tcp)),
        };
        let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(|e| format!("HTTP handshake failed: {e}"))?;
        let driver = tokio::spawn(conn);
        let authority = url.authority().map_or(host.as_str(), |a| a.as_str());
        let mut builder = http::Request::builder()
            .method(method)
            .uri(url.path_and_query().map_or("/", |p| p.as_str()))
            .header(http::header::HOST, authority)
            .header(http::header::USER_AGENT, self.user_agent);
        for (name, value) in headers {
            builder = builder.header(name, value);
        }
        let req = builder
            .body(Full::new(body))
            .map_err(|e| format!("bad request: {e}"))?;
        let result = async {
            let resp = sender
                .send_request(req)
                .await
                .map_err(|e| format!("request failed: {e}"))?;
            let (head, body) = resp.into_parts();
            let body = Limited::new(body, self.max_bytes)
                .collect()
                .await
                .map_err(|e| format!("reading the answer failed: {e}"))?
                .to_bytes();
            Ok(Response {
                status: head.status.as_u16(),
                headers: head.headers,
                body,
            })
        }
        .await;
        driver.abort();
        result
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn client(timeout_ms: u64, max_bytes: usize) -> Client {
        Client {
            tls: None,
            sni: None,
            timeout: Duration::from_millis(timeout_ms),
            max_bytes,
            user_agent: "sluicegate-test",
        }
    }

    /// A server that reads one request, answers `answer` and returns what it read.
    async fn serve_once(answer: &'static [u8]) -> (Uri, tokio::task::JoinHandle<Vec<u8>>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut seen = Vec::new();
            let mut buf = [0u8; 4096];
            while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = s.read(&mut buf).await.unwrap();
                if n == 0 {
                    break;
                }
                seen.extend_from_slice(&buf[..n]);
            }
            let _ = s.write_all(answer).await;
            seen
        });
        (format!("http://{addr}/token?x=1").parse().unwrap(), task)
    }

    #[tokio::test]
    async fn posts_a_form_and_returns_any_status_with_its_body() {
        let (url, seen) =
            serve_once(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 7\r\n\r\n{\"e\":1}").await;
        let r = client(2000, 1024)
            .post_form(&url, &[], "a=b".into())
            .await
            .unwrap();
        assert_eq!(r.status, 400);
        assert_eq!(&r.body[..], b"{\"e\":1}");
        let seen = String::from_utf8(seen.await.unwrap()).unwrap();
        assert!(seen.starts_with("POST /token?x=1 HTTP/1.1\r\n"), "{seen}");
        assert!(seen.contains("application/x-www-form-urlencoded"), "{seen}");
    }

    #[tokio::test]
    async fn a_body_over_the_limit_is_an_error_not_a_partial_document() {
        let (url, _seen) =
            serve_once(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n0123456789").await;
        let e = client(2000, 5).get(&url, &[]).await.unwrap_err();
        assert!(e.contains("reading the answer failed"), "{e}");
    }

    #[tokio::test]
    async fn a_server_that_never_answers_is_bounded_by_the_timeout() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let _hold = tokio::spawn(async move {
            let (s, _) = listener.accept().await.unwrap();
            tokio::time::sleep(Duration::from_secs(10)).await;
            drop(s);
        });
        let url: Uri = format!("http://{addr}/").parse().unwrap();
        let e = client(100, 1024).get(&url, &[]).await.unwrap_err();
        assert!(e.contains("no answer within 100 ms"), "{e}");
    }

    #[tokio::test]
    async fn refuses_urls_that_are_not_http() {
        let url: Uri = "ftp://example.com/".parse().unwrap();
        assert!(client(100, 10).get(&url, &[]).await.is_err());
    }
}
