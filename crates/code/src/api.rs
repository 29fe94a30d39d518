//! The code-API poller and the persisted last good document.
//!
//! Every `interval_secs` (plus up to `jitter_ms` at random) the poller GETs the document
//! with the configured headers and `If-None-Match` (the last document's ETag), under
//! `timeout_ms` for the whole exchange and `max_bytes` for the body:
//! - 304 costs nothing more;
//! - a 200 whose body hashes like the running document is counted as unchanged;
//! - a malformed document, an error status, a timeout or an oversize body is reported
//!   (`/status`, logs, metrics) and the running version keeps serving;
//! - a new document goes to the reloader; once applied it is written to
//!   `DATA_DIR/code/api.json` (with `api.meta.json`: URL, ETag, fetch time), atomically, so
//!   a restart while the code API is down starts with it (offline mode).
//!
//! The poller runs on the control thread and reads its settings from the current snapshot
//! on every round, so a configuration reload changes URL, interval or headers live.

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, StatusCode};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};

use super::build::now;
use super::config::ApiSettings;
use super::{document, Change, Source};

/// What one poll brought.
#[derive(Debug)]
pub enum Fetched {
    /// 304: the document did not change.
    NotModified,
    /// 200 with this body and ETag.
    Document {
        /// The body.
        body: Bytes,
        /// The ETag header, if any.
        etag: Option<String>,
    },
}

/// What is stored next to the persisted document.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Meta {
    /// The URL it was fetched from.
    pub url: String,
    /// Its ETag.
    pub etag: Option<String>,
    /// When it was fetched (RFC 3339).
    pub fetched_at: String,
}

/// Where the persisted document lives.
pub fn persisted_paths(data_dir: &Path) -> (PathBuf, PathBuf) {
    let dir = data_dir.join("code");
    (dir.join("api.json"), dir.join("api.meta.json"))
}

/// Writes `bytes` to `path` atomically (temporary file, fsync, rename).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// Keeps the last good document and its metadata for an offline start.
pub fn persist(data_dir: &Path, body: &[u8], meta: &Meta) -> std::io::Result<()> {
    let (doc, meta_path) = persisted_paths(data_dir);
    let meta_bytes = serde_json::to_vec_pretty(meta).map_err(std::io::Error::other)?;
    write_atomic(&doc, body)?;
    write_atomic(&meta_path, &meta_bytes)
}

/// The persisted document for `url`, if there is one (a document fetched from another URL
/// is not used).
pub fn load_persisted(data_dir: &Path, url: &str) -> Option<(Vec<u8>, Meta)> {
    let (doc, meta_path) = persisted_paths(data_dir);
    let meta: Meta = serde_json::from_slice(&std::fs::read(&meta_path).ok()?).ok()?;
    if meta.url != url {
        tracing::warn!(persisted_url = %meta.url, url, "The persisted code-API document comes from another URL; not using it.");
        return None;
    }
    let body = std::fs::read(&doc).ok()?;
    Some((body, meta))
}

/// At start: applies the persisted document, if any, so the gateway serves the last good
/// code before (or without) the code API answering.
pub fn load_at_start(
    registry: &super::CodeRegistry,
    settings: &super::CodeSettings,
    data_dir: &Path,
) {
    let Some(api) = &settings.api else { return };
    let url = api.url.to_string();
    let Some((body, meta)) = load_persisted(data_dir, &url) else {
        return;
    };
    match document::parse(&body) {
        Ok(doc) => {
            let outcome = registry.apply(
                Change::Replace(Source::Api, Some(doc)),
                "start",
                Some(settings),
            );
            let failed = outcome.errors.len();
            registry.with_sources(|s| {
                let st = &mut s[Source::Api.index()];
                st.last_result = Some("loaded_from_disk".into());
                st.offline = true;
                st.etag = meta.etag.clone();
                st.document_version = Some(super::version_of(&body));
                st.last_change_at = Some(now());
                st.last_error = (failed > 0)
                    .then(|| format!("{failed} script(s) of the persisted document not loaded"));
            });
            tracing::warn!(url, fetched_at = %meta.fetched_at, "Serving the last good code-API document from the data directory until the code API answers.");
        }
        Err(e) => {
            tracing::error!(url, error = %e, "The persisted code-API document is unreadable; ignoring it.");
        }
    }
}

trait Io: hyper::rt::Read + hyper::rt::Write + Unpin + Send {}
impl<T: hyper::rt::Read + hyper::rt::Write + Unpin + Send> Io for T {}

/// GETs the document once (without the overall timeout; see [`fetch`]).
async fn get(api: &ApiSettings, etag: Option<&str>) -> Result<Fetched, String> {
    let uri = &api.url;
    let https = uri.scheme_str() == Some("https");
    let host = uri
        .host()
        .unwrap_or("")
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    let tcp = tokio::net::TcpStream::connect((host.as_str(), port))
        .await
        .map_err(|e| format!("connect to {host}:{port} failed: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let io: Box<dyn Io> = if https {
        let config = api.tls()?;
        let name = rustls::pki_types::ServerName::try_from(host.clone())
            .map_err(|e| format!("bad TLS server name `{host}`: {e}"))?;
        let stream = tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS handshake with {host}:{port} failed: {e}"))?;
        Box::new(TokioIo::new(stream))
    } else {
        Box::new(TokioIo::new(tcp))
    };
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| format!("HTTP handshake failed: {e}"))?;
    let conn = tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut req = http::Request::get(uri.path_and_query().map_or("/", |p| p.as_str()))
        .body(Empty::<Bytes>::new())
        .map_err(|e| format!("bad request: {e}"))?;
    let headers = req.headers_mut();
    let authority = uri.authority().map_or(host.as_str(), |a| a.as_str());
    if let Ok(v) = HeaderValue::from_str(authority) {
        headers.insert(http::header::HOST, v);
    }
    headers.insert(
        http::header::USER_AGENT,
        HeaderValue::from_static(concat!("sluicegate/", env!("CARGO_PKG_VERSION"))),
    );
    headers.insert(
        http::header::ACCEPT,
        HeaderValue::from_static("application/json"),
    );
    for (name, value) in &api.headers {
        headers.insert(name.clone(), value.clone());
    }
    if let Some(tag) = etag.and_then(|t| HeaderValue::from_str(t).ok()) {
        headers.insert(http::header::IF_NONE_MATCH, tag);
    }
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| format!("request failed: {e}"))?;
    let (parts, body) = resp.into_parts();
    let result = match parts.status {
        StatusCode::NOT_MODIFIED => Ok(Fetched::NotModified),
        StatusCode::OK => {
            let declared = parts
                .headers
                .get(http::header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok());
            if declared.is_some_and(|n| n > api.max_bytes as u64) {
                Err(format!(
                    "the document is {} bytes; the limit (code.api.max_bytes) is {}",
                    declared.unwrap_or(0),
                    api.max_bytes
                ))
            } else {
                match Limited::new(body, api.max_bytes).collect().await {
                    Ok(b) => Ok(Fetched::Document {
                        body: b.to_bytes(),
                        etag: parts
                            .headers
                            .get(http::header::ETAG)
                            .and_then(|v| v.to_str().ok())
                            .map(str::to_string),
                    }),
                    Err(e) => Err(format!(
                        "reading the document failed (limit {} bytes): {e}",
                        api.max_bytes
                    )),
                }
            }
        }
        other => Err(format!("the code API answered {other}")),
    };
    conn.abort();
    result
}

/// GETs the document under the configured timeout.
pub async fn fetch(api: &ApiSettings, etag: Option<&str>) -> Result<Fetched, String> {
    match tokio::time::timeout(api.timeout, get(api, etag)).await {
        Ok(r) => r,
        Err(_) => Err(format!(
            "no complete answer within {} ms (code.api.timeout_ms)",
            api.timeout.as_millis()
        )),
    }
}

/// A random duration in `0..=max` (jitter spreads a fleet's polls).
pub fn jitter(max: Duration) -> Duration {
    if max.is_zero() {
        return Duration::ZERO;
    }
    let r = uuid::Uuid::new_v4().as_u128() as u64;
    Duration::from_millis(r % (max.as_millis() as u64 + 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_within_its_bound() {
        assert_eq!(jitter(Duration::ZERO), Duration::ZERO);
        let max = Duration::from_millis(20);
        let seen: Vec<Duration> = (0..200).map(|_| jitter(max)).collect();
        assert!(seen.iter().all(|d| *d <= max));
        assert!(seen.iter().any(|d| *d != seen[0]), "jitter varies");
    }

    #[test]
    fn a_persisted_document_is_only_used_for_its_own_url() {
        let dir = tempfile::tempdir().unwrap();
        let meta = Meta {
            url: "http://a/doc.json".into(),
            etag: Some("\"1\"".into()),
            fetched_at: now(),
        };
        persist(dir.path(), b"{}", &meta).unwrap();
        let (body, got) = load_persisted(dir.path(), "http://a/doc.json").unwrap();
        assert_eq!(
            (body.as_slice(), got.etag.as_deref()),
            (&b"{}"[..], Some("\"1\""))
        );
        assert!(load_persisted(dir.path(), "http://b/doc.json").is_none());
    }
}
