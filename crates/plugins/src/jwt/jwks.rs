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
use tokio::sync::{watch, Notify};

use sluicegate_jwt::keys::{from_jwk, JwkSkip, Key};
use sluicegate_jwt::token::{Parsed, TokenError};

/// No fetch of the key set has succeeded yet (the source is down or unreachable).
#[derive(Debug, Clone, Copy)]
pub struct KeysUnavailable;

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

    /// Verifies `parsed` with the published keys: waits (bounded) for the first fetch, and
    /// when no key matches, refetches once (rate-limited) in case the issuer rotated its
    /// keys. `Ok(Err(None))`: no key matched; `Ok(Err(Some(e)))`: a key matched and the
    /// signature or algorithm was wrong.
    pub async fn verify(
        self: &Arc<Self>,
        parsed: &Parsed<'_>,
    ) -> Result<Result<(), Option<TokenError>>, KeysUnavailable> {
        let mut first = self.subscribe();
        let mut set = self.keys();
        if !set.loaded {
            let waited = if *first.borrow_and_update() == 0 {
                Some(first)
            } else {
                self.refetch()
            };
            if let Some(rx) = waited {
                wait_for(rx, self.wait_limit()).await;
            }
            set = self.keys();
            if !set.loaded {
                return Err(KeysUnavailable);
            }
        }
        let outcome = sluicegate_jwt::verify_with(parsed, &set.keys);
        if !matches!(outcome, Err(None)) {
            return Ok(outcome);
        }
        let Some(rx) = self.refetch() else {
            return Ok(outcome);
        };
        wait_for(rx, self.wait_limit()).await;
        Ok(sluicegate_jwt::verify_with(parsed, &self.keys().keys))
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

async fn wait_for(mut rx: watch::Receiver<u64>, limit: Duration) {
    let _ = tokio::time::timeout(limit, rx.changed()).await;
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
    let outcome = get(s).await.and_then(|body| parse_document(&body));
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

/// GETs the document.
async fn get(s: &Settings) -> Result<Bytes, String> {
    let client = sluicegate_upstream::fetch::Client {
        tls: s.tls.clone(),
        sni: s.sni.clone(),
        timeout: s.timeout,
        max_bytes: s.max_bytes,
        user_agent: "sluicegate-jwks",
    };
    let accept = (
        http::header::ACCEPT,
        http::HeaderValue::from_static("application/json, application/jwk-set+json"),
    );
    let resp = client.get(&s.url, &[accept]).await?;
    if !(200..300).contains(&resp.status) {
        return Err(format!("the server answered {}", resp.status));
    }
    Ok(resp.body)
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
