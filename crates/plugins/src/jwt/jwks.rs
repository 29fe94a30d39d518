//! Keys published at a JWKS URL (RFC 7517 §5): fetched and refreshed in the background,
//! looked up by `kid` on the request path without blocking a worker.
//!
//! One [`Jwks`] per distinct source (URL and settings) in the process: a reload that keeps
//! the source keeps the cache (see [`Jwks::shared`]). The first request that needs it
//! starts its fetcher: a thread of its own with a small tokio runtime, so a slow or hanging
//! JWKS server never occupies a worker. The fetcher refreshes every `refresh_interval`,
//! retries a failed fetch after `min_refetch_interval`, and fetches early when a request
//! brings an unknown `kid` — at most once per `min_refetch_interval`, however many such
//! requests arrive. A failed fetch or a bad document keeps the keys already known. The
//! thread ends once no configuration uses the source any more.
//!
//! Requests read the current key set through `ArcSwap` (no lock); a request that has to
//! wait for a fetch (the first one, or an unknown `kid`) awaits a `watch` channel with a
//! time limit.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex, Weak};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::Uri;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use tokio::sync::{watch, Notify};

use sluicegate_jwt::keys::{from_jwk, JwkSkip, Key};

/// Where and how often to fetch.
#[derive(Clone)]
pub struct Settings {
    /// The document's URL.
    pub url: Uri,
    /// Regular refresh.
    pub refresh: Duration,
    /// Shortest time between two fetches triggered by unknown `kid`s or failures.
    pub min_refetch: Duration,
    /// Limit on one fetch.
    pub timeout: Duration,
    /// Largest document accepted.
    pub max_bytes: usize,
    /// TLS client configuration for `https` URLs.
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// Server name for TLS, when not the URL's host.
    pub sni: Option<String>,
    /// The TLS settings as written, so sources that differ only there stay apart.
    pub tls_settings: String,
}

impl Settings {
    /// What makes two sources the same cache.
    fn identity(&self) -> String {
        format!(
            "{}|{:?}|{:?}|{:?}|{}|{}",
            self.url,
            self.refresh,
            self.min_refetch,
            self.timeout,
            self.max_bytes,
            self.tls_settings
        )
    }
}

/// The keys of one fetch.
#[derive(Default)]
pub struct KeySet {
    /// Usable keys, in document order.
    pub keys: Vec<Key>,
    /// Whether a fetch has ever succeeded.
    pub loaded: bool,
}

struct Pace {
    /// When the last fetch started.
    last_fetch: Option<Instant>,
    /// Whether the fetcher thread runs.
    started: bool,
}

/// A cached JWKS source.
pub struct Jwks {
    settings: Settings,
    current: ArcSwap<KeySet>,
    /// Counts finished fetches (successful or not); requests wait for it to move.
    done: watch::Sender<u64>,
    pace: Mutex<Pace>,
    wake: Arc<Notify>,
}

static SOURCES: LazyLock<Mutex<HashMap<String, Weak<Jwks>>>> = LazyLock::new(Default::default);

impl Jwks {
    /// The cache for `settings`: the one already in use by the running configuration if
    /// there is one, so reloads keep fetched keys.
    pub fn shared(settings: Settings) -> Arc<Jwks> {
        let id = settings.identity();
        let mut map = SOURCES.lock().unwrap_or_else(|e| e.into_inner());
        map.retain(|_, w| w.strong_count() > 0);
        if let Some(existing) = map.get(&id).and_then(Weak::upgrade) {
            return existing;
        }
        let jwks = Arc::new(Jwks {
            settings,
            current: ArcSwap::from_pointee(KeySet::default()),
            done: watch::channel(0).0,
            pace: Mutex::new(Pace {
                last_fetch: None,
                started: false,
            }),
            wake: Arc::new(Notify::new()),
        });
        map.insert(id, Arc::downgrade(&jwks));
        jwks
    }

    /// The URL, for logs.
    pub fn url(&self) -> &Uri {
        &self.settings.url
    }

    /// The keys known now; starts the fetcher on first use.
    pub fn keys(self: &Arc<Self>) -> Arc<KeySet> {
        self.start();
        self.current.load_full()
    }

    /// Asks for a fetch now unless one started less than `min_refetch` ago. Returns a
    /// receiver that changes when that fetch is done, or `None` when rate-limited.
    pub fn refetch(self: &Arc<Self>) -> Option<watch::Receiver<u64>> {
        self.start();
        let mut pace = self.pace.lock().unwrap_or_else(|e| e.into_inner());
        if pace
            .last_fetch
            .is_some_and(|t| t.elapsed() < self.settings.min_refetch)
        {
            return None;
        }
        // Reserve the slot now, so concurrent requests do not each ask.
        pace.last_fetch = Some(Instant::now());
        let rx = self.done.subscribe();
        self.wake.notify_one();
        Some(rx)
    }

    /// A receiver for the next finished fetch (for the first request, before any fetch).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.done.subscribe()
    }

    /// How long a request may wait for a fetch.
    pub fn wait_limit(&self) -> Duration {
        self.settings.timeout + Duration::from_millis(100)
    }

    fn start(self: &Arc<Self>) {
        let mut pace = self.pace.lock().unwrap_or_else(|e| e.into_inner());
        if pace.started {
            return;
        }
        pace.started = true;
        pace.last_fetch = Some(Instant::now());
        drop(pace);
        let weak = Arc::downgrade(self);
        let wake = self.wake.clone();
        let spawned = std::thread::Builder::new()
            .name("sluicegate-jwks".into())
            .spawn(move || fetcher(weak, wake));
        if let Err(e) = spawned {
            tracing::error!(url = %self.settings.url, error = %e, "Could not start the JWKS fetcher.");
            let mut pace = self.pace.lock().unwrap_or_else(|e| e.into_inner());
            pace.started = false;
        }
    }

    fn store(&self, keys: Vec<Key>) {
        self.current.store(Arc::new(KeySet { keys, loaded: true }));
    }
}

impl Drop for Jwks {
    fn drop(&mut self) {
        // Wakes the fetcher so it sees the source is gone and ends.
        self.wake.notify_one();
    }
}

/// The fetcher thread: fetch, then sleep until the next refresh or an early wake-up.
fn fetcher(weak: Weak<Jwks>, wake: Arc<Notify>) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "Could not start the JWKS fetcher's runtime.");
            return;
        }
    };
    rt.block_on(async move {
        loop {
            let Some(jwks) = weak.upgrade() else { return };
            let ok = fetch_once(&jwks).await;
            let next = if ok {
                jwks.settings.refresh
            } else {
                jwks.settings.min_refetch
            };
            drop(jwks);
            let _ = tokio::time::timeout(next, wake.notified()).await;
            let Some(jwks) = weak.upgrade() else { return };
            let mut pace = jwks.pace.lock().unwrap_or_else(|e| e.into_inner());
            // A wake-up from `refetch` already set the time; a timer wake-up sets it here.
            if pace.last_fetch.is_none_or(|t| t.elapsed() >= next) {
                pace.last_fetch = Some(Instant::now());
            }
        }
    });
}

/// One fetch; updates the keys on success. Returns whether it succeeded.
async fn fetch_once(jwks: &Jwks) -> bool {
    let s = &jwks.settings;
    let outcome = match tokio::time::timeout(s.timeout, get(s)).await {
        Ok(r) => r.and_then(|body| parse_document(&body)),
        Err(_) => Err(format!("no answer within {} ms", s.timeout.as_millis())),
    };
    let ok = match outcome {
        Ok(Document { keys, skipped }) => {
            for (i, why) in skipped {
                tracing::warn!(url = %s.url, key = i, reason = %why, "JWKS key skipped.");
            }
            tracing::info!(url = %s.url, keys = keys.len(), "JWKS fetched.");
            jwks.store(keys);
            true
        }
        Err(e) => {
            let known = jwks.current.load().keys.len();
            tracing::warn!(url = %s.url, error = %e, known_keys = known, "JWKS fetch failed; keeping the keys already known.");
            false
        }
    };
    jwks.done.send_modify(|n| *n += 1);
    ok
}

/// A parsed JWKS document.
pub struct Document {
    /// The usable keys, in document order.
    pub keys: Vec<Key>,
    /// (index, reason) of the keys that were skipped.
    pub skipped: Vec<(usize, String)>,
}

/// Parses a JWKS document. Keys for encryption are left out silently; unusable signature
/// keys are left out and named in `skipped`.
pub fn parse_document(body: &[u8]) -> Result<Document, String> {
    let doc: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| format!("the document is not JSON: {e}"))?;
    let list = doc
        .get("keys")
        .and_then(|k| k.as_array())
        .ok_or("the document has no `keys` array")?;
    let mut keys = Vec::new();
    let mut skipped = Vec::new();
    for (i, jwk) in list.iter().enumerate() {
        match from_jwk(jwk) {
            Ok(k) => keys.push(k),
            Err(JwkSkip::NotForSignatures) => {}
            Err(JwkSkip::Invalid(why)) => skipped.push((i, why)),
        }
    }
    if keys.is_empty() && !list.is_empty() {
        return Err("the document has no usable signature keys".into());
    }
    Ok(Document { keys, skipped })
}

trait Io: hyper::rt::Read + hyper::rt::Write + Unpin + Send {}
impl<T: hyper::rt::Read + hyper::rt::Write + Unpin + Send> Io for T {}

/// GETs the document (HTTP/1.1, one connection).
async fn get(s: &Settings) -> Result<Bytes, String> {
    let https = s.url.scheme_str() == Some("https");
    let host = s
        .url
        .host()
        .unwrap_or("")
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let port = s.url.port_u16().unwrap_or(if https { 443 } else { 80 });
    let tcp = tokio::net::TcpStream::connect((host.as_str(), port))
        .await
        .map_err(|e| format!("connect to {host}:{port} failed: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let io: Box<dyn Io> = match (&s.tls, https) {
        (Some(tls), true) => {
            let name_text = s.sni.clone().unwrap_or_else(|| host.clone());
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
    let authority = s.url.authority().map_or(host.as_str(), |a| a.as_str());
    let req = http::Request::get(s.url.path_and_query().map_or("/", |p| p.as_str()))
        .header(http::header::HOST, authority)
        .header(
            http::header::ACCEPT,
            "application/json, application/jwk-set+json",
        )
        .header(http::header::USER_AGENT, "sluicegate-jwks")
        .body(Empty::<Bytes>::new())
        .map_err(|e| format!("bad request: {e}"))?;
    let result = async {
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| format!("request failed: {e}"))?;
        if !resp.status().is_success() {
            return Err(format!("the server answered {}", resp.status().as_u16()));
        }
        let body = Limited::new(resp.into_body(), s.max_bytes)
            .collect()
            .await
            .map_err(|e| format!("reading the document failed: {e}"))?
            .to_bytes();
        Ok(body)
    }
    .await;
    driver.abort();
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_document_keeps_its_usable_keys_and_names_the_others() {
        let doc = serde_json::json!({"keys": [
            {"kty": "OKP", "crv": "Ed25519", "kid": "a", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"},
            {"kty": "RSA", "kid": "enc", "use": "enc", "n": "AQAB", "e": "AQAB"},
            {"kty": "XYZ", "kid": "odd"}
        ]});
        let d = parse_document(doc.to_string().as_bytes()).unwrap();
        assert_eq!(d.keys.len(), 1);
        assert_eq!(d.skipped.len(), 1);
        assert_eq!(d.skipped[0].0, 2);
    }

    #[test]
    fn rejects_documents_without_usable_keys() {
        assert!(parse_document(b"<html>").is_err());
        assert!(parse_document(b"{\"keys\": 5}").is_err());
        let only_bad = serde_json::json!({"keys": [{"kty": "XYZ"}]});
        assert!(parse_document(only_bad.to_string().as_bytes()).is_err());
        assert!(parse_document(b"{\"keys\": []}").unwrap().keys.is_empty());
    }
}
