//! The `pubsub` backend: every queued request is published to a Google Cloud Pub/Sub topic
//! through the REST API (`POST /v1/projects/P/topics/T:publish`), as the
//! [envelope](sluicegate_queue::envelope) (the body as the message's data, the rest of the
//! request in attributes). Pub/Sub stores it and pushes it to a subscription's endpoint (a
//! `pubsub_push` route of this or another gateway): this gateway's delivery loop never
//! reads the queue ([`QueueBackend::delivers`] is false), so nothing is pending here.
//!
//! Credentials, in order: none with an emulator (`emulator_host`); a service-account key
//! (`credentials`), from which a self-signed RS256 JWT is exchanged for an access token at
//! the key's `token_uri`; else the metadata server of the machine (GCE, GKE, Cloud Run),
//! whose host `GCE_METADATA_HOST` overrides as in Google's libraries. An access token is
//! cached until a minute before it expires, and refreshed by one caller at a time.
//!
//! Dead letters (a push playback that failed for good) stay on this gateway, in a local
//! write-ahead log in the queue's directory; a replay publishes the message again and then
//! removes it from that log.
//!
//! Invariants:
//! - The caller's ack is sent only after Pub/Sub answered the publish with a message id,
//!   i.e. once the topic stored the message; the id is that message id (a decimal string,
//!   read as a number). A publish (the token included) is bounded by `publish_timeout`,
//!   retried within it after a connection error, 429 or 5xx, and answered 503 when the
//!   engine stays unreachable. Other refusals are not retried: a 400 is the request's
//!   fault (400 to the client), a 401, 403 or 404 a configuration error, named in the log.
//! - Every HTTP call runs on the engines' runtime ([`crate::runtime`]) through one bounded
//!   [`fetch::Client`] call; what the request path reads synchronously (the stats) is
//!   kept in memory.
//! - A replayed dead letter is published before it leaves the local log: a crash between
//!   the two may publish it twice, never lose it. A record the local log holds as pending
//!   (a dead-letter write or replay cut short) is made a dead letter again at open.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use bytes::Bytes;
use futures_util::FutureExt as _;
use http::{HeaderName, HeaderValue, Method, Uri};
use serde_json::Value;
use tokio::time::Instant;

use sluicegate_queue::backend::{
    BackendStats, BoxFuture, DeadLetterInfo, QueueBackend, StoredMessage,
};
use sluicegate_queue::config::PubSubSettings;
use sluicegate_queue::envelope::{self, Envelope};
use sluicegate_queue::{record, QueueError, WalBackend};
use sluicegate_upstream::fetch;

use crate::runtime;

/// The backend's kind.
const KIND: &str = "pubsub";
/// The Pub/Sub service.
const SERVICE: &str = "https://pubsub.googleapis.com";
/// The token endpoint when a key names none.
const DEFAULT_TOKEN_URI: &str = "https://oauth2.googleapis.com/token";
/// The metadata server's host when `GCE_METADATA_HOST` is not set.
const METADATA_HOST: &str = "metadata.google.internal";
/// The scope the access token is asked for.
const SCOPE: &str = "https://www.googleapis.com/auth/pubsub";
/// Pub/Sub's limit on one message (data and attributes).
pub const MAX_MESSAGE_BYTES: u64 = 10 * 1024 * 1024;
/// Pause between two publish tries within the publish timeout.
const PUBLISH_RETRY: Duration = Duration::from_millis(100);
/// A token is refreshed this long before it expires.
const TOKEN_MARGIN: Duration = Duration::from_secs(60);
/// Largest answer read from Pub/Sub or a token endpoint.
const MAX_ANSWER_BYTES: usize = 256 * 1024;
/// Longest piece of an error answer quoted in a message.
const MAX_QUOTED: usize = 300;
/// Why a record found pending in the local log at open is a dead letter again.
const LEFTOVER_REASON: &str = "left pending in the local log by an interrupted dead-letter \
write or replay (it may have been published already)";

/// A queue published to a Pub/Sub topic.
pub struct PubSubBackend {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for PubSubBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PubSubBackend")
            .field("queue", &self.inner.name)
            .field("topic", &self.inner.topic_path())
            .field("emulator", &self.inner.settings.emulator_host)
            .finish_non_exhaustive()
    }
}

/// Where the backend's HTTP calls go (tests point them at a fake server).
#[derive(Debug, Clone)]
struct Endpoints {
    /// The Pub/Sub service (`https://pubsub.googleapis.com` or the emulator's URL).
    pubsub: String,
    /// The metadata server's host (and port).
    metadata_host: String,
}

impl Endpoints {
    fn from(settings: &PubSubSettings) -> Endpoints {
        Endpoints {
            pubsub: match &settings.emulator_host {
                Some(host) => format!("http://{host}"),
                None => SERVICE.to_string(),
            },
            metadata_host: std::env::var("GCE_METADATA_HOST")
                .ok()
                .map(|h| h.trim().to_string())
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| METADATA_HOST.to_string()),
        }
    }
}

/// A service-account key, ready to sign.
struct ServiceAccount {
    email: String,
    key_id: Option<String>,
    key: ring::signature::RsaKeyPair,
    /// The token endpoint, also the JWT's audience.
    token_uri: String,
    token_url: Uri,
}

/// How an access token is obtained.
enum Auth {
    /// The emulator: no token.
    None,
    /// Exchanged for a self-signed JWT.
    Key(Box<ServiceAccount>),
    /// Asked of the metadata server.
    Metadata(Uri),
}

impl Auth {
    fn describe(&self) -> &'static str {
        match self {
            Auth::None => "none (emulator)",
            Auth::Key(_) => "service-account key",
            Auth::Metadata(_) => "metadata server",
        }
    }
}

/// A cached access token.
struct Token {
    value: String,
    /// When it must be refreshed.
    until: Instant,
}

struct Inner {
    name: String,
    settings: PubSubSettings,
    publish_url: Uri,
    auth: Auth,
    tls: Option<Arc<rustls::ClientConfig>>,
    token: tokio::sync::Mutex<Option<Token>>,
    /// The dead letters.
    local: WalBackend,
    max_bytes: u64,
    /// False after a publish that failed for want of the engine, until one succeeds.
    healthy: AtomicBool,
    closed: AtomicBool,
    /// One replay at a time (a dead letter is published once per replay).
    replaying: tokio::sync::Mutex<()>,
}

/// How one publish try failed.
enum Failure {
    /// Worth another try within the timeout.
    Transient(String),
    /// The access token was refused: worth one more try with a new one.
    Unauthorized(String),
    /// Final.
    Final(QueueError),
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn ready_now<T: Send + 'static>(r: Result<T, QueueError>) -> BoxFuture<T> {
    Box::pin(std::future::ready(r))
}

fn b64url(data: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(data)
}

/// At most [`MAX_QUOTED`] bytes of `text`, cut at a character boundary.
fn quoted(text: &str) -> String {
    let text = text.trim();
    if text.len() <= MAX_QUOTED {
        return text.to_string();
    }
    let mut cut = MAX_QUOTED;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}…", &text[..cut])
}

/// The message of a Google API error answer (`{"error":{"message":…}}`), of an OAuth one
/// (`{"error":…,"error_description":…}`), or the body itself.
fn error_message(body: &[u8]) -> String {
    if let Ok(v) = serde_json::from_slice::<Value>(body) {
        if let Some(m) = v["error"]["message"].as_str() {
            return quoted(m);
        }
        if let Some(e) = v["error"].as_str() {
            return match v["error_description"].as_str() {
                Some(d) => quoted(&format!("{e}: {d}")),
                None => quoted(e),
            };
        }
    }
    let text = quoted(&String::from_utf8_lossy(body));
    if text.is_empty() {
        "(no message)".into()
    } else {
        text
    }
}

/// A message id as the trait's number: Pub/Sub's ids are decimal strings; anything else
/// is hashed (FNV-1a), so the same id always gives the same number.
fn numeric_id(message_id: &str) -> u64 {
    if let Ok(n) = message_id.parse::<u64>() {
        return n;
    }
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in message_id.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// The size Pub/Sub counts for a message: its data and its attributes.
fn message_size(env: &Envelope) -> u64 {
    let attributes: usize = env.attributes.iter().map(|(k, v)| k.len() + v.len()).sum();
    (env.data.len() + attributes) as u64
}

/// TLS toward Google: the Mozilla roots compiled into the binary (Google's roots are
/// among them), so that the backend works in images without a CA bundle.
fn tls_config() -> Result<Arc<rustls::ClientConfig>, String> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    let mut config =
        rustls::ClientConfig::builder_with_provider(sluicegate_upstream::tls::provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS setup: {e}"))?
            .with_root_certificates(roots)
            .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Parses a service-account key (JSON).
fn service_account(json: &str) -> Result<ServiceAccount, String> {
    let v: Value =
        serde_json::from_str(json).map_err(|e| format!("the credentials are not JSON: {e}"))?;
    let email = v["client_email"]
        .as_str()
        .ok_or("the credentials have no `client_email`")?
        .to_string();
    let pem = v["private_key"]
        .as_str()
        .ok_or("the credentials have no `private_key`")?;
    let der = rustls_pemfile::private_key(&mut pem.as_bytes())
        .map_err(|e| format!("the credentials' `private_key` is not PEM: {e}"))?
        .ok_or("the credentials' `private_key` holds no private key")?;
    let key = match &der {
        rustls::pki_types::PrivateKeyDer::Pkcs8(k) => {
            ring::signature::RsaKeyPair::from_pkcs8(k.secret_pkcs8_der())
        }
        rustls::pki_types::PrivateKeyDer::Pkcs1(k) => {
            ring::signature::RsaKeyPair::from_der(k.secret_pkcs1_der())
        }
        _ => return Err("the credentials' `private_key` is not an RSA key".into()),
    }
    .map_err(|e| format!("the credentials' `private_key` is not a usable RSA key: {e}"))?;
    let token_uri = v["token_uri"]
        .as_str()
        .filter(|u| !u.is_empty())
        .unwrap_or(DEFAULT_TOKEN_URI)
        .to_string();
    let token_url: Uri = token_uri
        .parse()
        .map_err(|e| format!("the credentials' `token_uri` `{token_uri}` is not a URL: {e}"))?;
    Ok(ServiceAccount {
        email,
        key_id: v["private_key_id"].as_str().map(str::to_string),
        key,
        token_uri,
        token_url,
    })
}

impl ServiceAccount {
    /// A signed JWT asking for a Pub/Sub token, issued at `iat` (unix seconds).
    fn assertion(&self, iat: u64) -> Result<String, String> {
        let mut header = serde_json::json!({"alg": "RS256", "typ": "JWT"});
        if let Some(kid) = &self.key_id {
            header["kid"] = Value::String(kid.clone());
        }
        let claims = serde_json::json!({
            "iss": self.email,
            "sub": self.email,
            "aud": self.token_uri,
            "scope": SCOPE,
            "iat": iat,
            "exp": iat + 3600,
        });
        let signing_input = format!(
            "{}.{}",
            b64url(header.to_string().as_bytes()),
            b64url(claims.to_string().as_bytes())
        );
        let mut signature = vec![0u8; self.key.public().modulus_len()];
        self.key
            .sign(
                &ring::signature::RSA_PKCS1_SHA256,
                &ring::rand::SystemRandom::new(),
                signing_input.as_bytes(),
                &mut signature,
            )
            .map_err(|_| "signing the token request failed".to_string())?;
        Ok(format!("{signing_input}.{}", b64url(&signature)))
    }
}

impl PubSubBackend {
    /// Opens queue `name`, published to the topic in `settings`; its dead letters live in
    /// a local log in `dir`, bounded to `max_bytes`. Fails when the log cannot be opened
    /// (another process holds it: [`QueueError::Locked`]) or the credentials are not a
    /// usable service-account key; Pub/Sub itself is first reached by the first publish.
    pub fn open(
        name: &str,
        settings: PubSubSettings,
        dir: &std::path::Path,
        max_bytes: u64,
    ) -> Result<PubSubBackend, QueueError> {
        let endpoints = Endpoints::from(&settings);
        PubSubBackend::open_with(name, settings, dir, max_bytes, endpoints)
    }

    fn open_with(
        name: &str,
        settings: PubSubSettings,
        dir: &std::path::Path,
        max_bytes: u64,
        endpoints: Endpoints,
    ) -> Result<PubSubBackend, QueueError> {
        let io = |message: String| QueueError::Io {
            queue: name.to_string(),
            message,
        };
        let handle = runtime::handle().map_err(io)?;
        let publish_url: Uri = format!(
            "{}/v1/projects/{}/topics/{}:publish",
            endpoints.pubsub, settings.project, settings.topic
        )
        .parse()
        .map_err(|e| io(format!("bad Pub/Sub publish URL: {e}")))?;
        let auth = if settings.emulator_host.is_some() {
            Auth::None
        } else if let Some(json) = &settings.credentials {
            Auth::Key(Box::new(service_account(json).map_err(io)?))
        } else {
            let url = format!(
                "http://{}/computeMetadata/v1/instance/service-accounts/default/token",
                endpoints.metadata_host
            );
            Auth::Metadata(
                url.parse()
                    .map_err(|e| io(format!("bad metadata server URL `{url}`: {e}")))?,
            )
        };
        let tls = Some(tls_config().map_err(io)?);
        let local = WalBackend::open(name, dir, max_bytes)?;
        let leftovers: Vec<u64> = local
            .read_pending(0, usize::MAX)
            .now_or_never()
            .and_then(Result::ok)
            .unwrap_or_default()
            .iter()
            .map(|m| m.id)
            .collect();
        let inner = Arc::new(Inner {
            name: name.to_string(),
            settings,
            publish_url,
            auth,
            tls,
            token: tokio::sync::Mutex::new(None),
            local,
            max_bytes,
            healthy: AtomicBool::new(true),
            closed: AtomicBool::new(false),
            replaying: tokio::sync::Mutex::new(()),
        });
        if !leftovers.is_empty() {
            tracing::warn!(queue = name, count = leftovers.len(), "Records left pending in the local dead-letter log; making them dead letters again.");
            let inner = inner.clone();
            handle.spawn(async move {
                for id in leftovers {
                    if let Err(e) = inner.local.dead_letter(id, LEFTOVER_REASON).await {
                        tracing::error!(queue = %inner.name, id, error = %e, "Cannot make a leftover record a dead letter.");
                    }
                }
            });
        }
        tracing::info!(
            queue = name,
            topic = %inner.topic_path(),
            credentials = inner.auth.describe(),
            "Queue opened on Google Pub/Sub."
        );
        Ok(PubSubBackend { inner })
    }
}

impl Inner {
    fn topic_path(&self) -> String {
        format!(
            "projects/{}/topics/{}",
            self.settings.project, self.settings.topic
        )
    }

    fn open(&self) -> Result<(), QueueError> {
        if self.closed.load(Ordering::Acquire) {
            Err(QueueError::Closed(self.name.clone()))
        } else {
            Ok(())
        }
    }

    fn unavailable(&self, message: impl Into<String>) -> QueueError {
        QueueError::Unavailable {
            queue: self.name.clone(),
            backend: KIND,
            message: message.into(),
        }
    }

    fn io(&self, message: impl Into<String>) -> QueueError {
        QueueError::Io {
            queue: self.name.clone(),
            message: message.into(),
        }
    }

    fn client(&self, timeout: Duration) -> fetch::Client {
        fetch::Client {
            tls: self.tls.clone(),
            sni: None,
            timeout,
            max_bytes: MAX_ANSWER_BYTES,
            user_agent: "sluicegate-pubsub",
        }
    }

    /// The envelope of record `payload`, checked against Pub/Sub's size limit.
    fn envelope(&self, payload: Bytes) -> Result<Envelope, QueueError> {
        let invalid = |message: String| QueueError::Invalid {
            queue: self.name.clone(),
            message,
        };
        let req = record::decode(payload).map_err(|e| invalid(e.to_string()))?;
        let env = envelope::encode(&self.name, &req).map_err(invalid)?;
        let len = message_size(&env);
        if len > MAX_MESSAGE_BYTES {
            return Err(QueueError::TooLarge {
                queue: self.name.clone(),
                len,
                max: MAX_MESSAGE_BYTES,
            });
        }
        Ok(env)
    }

    /// The access token to send (`None`: the emulator), fetched or from the cache.
    async fn token(&self, deadline: Instant) -> Result<Option<String>, Failure> {
        if matches!(self.auth, Auth::None) {
            return Ok(None);
        }
        let mut cached = tokio::time::timeout_at(deadline, self.token.lock())
            .await
            .map_err(|_| Failure::Transient("waiting for the access token".into()))?;
        if let Some(t) = &*cached {
            if Instant::now() < t.until {
                return Ok(Some(t.value.clone()));
            }
        }
        let (value, lifetime) = self.fetch_token(deadline).await?;
        *cached = Some(Token {
            value: value.clone(),
            until: Instant::now() + lifetime.saturating_sub(TOKEN_MARGIN),
        });
        Ok(Some(value))
    }

    /// A new access token and how long it lives.
    async fn fetch_token(&self, deadline: Instant) -> Result<(String, Duration), Failure> {
        let left = deadline.saturating_duration_since(Instant::now());
        let client = self.client(left);
        let (url, answer) = match &self.auth {
            Auth::None => return Err(Failure::Transient("no token source".into())),
            Auth::Key(sa) => {
                let jwt = sa
                    .assertion(now_secs())
                    .map_err(|e| Failure::Final(self.unavailable(e)))?;
                let form = format!(
                    "grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer&assertion={jwt}"
                );
                (
                    &sa.token_url,
                    client.post_form(&sa.token_url, &[], form).await,
                )
            }
            Auth::Metadata(url) => {
                let flavor = (
                    HeaderName::from_static("metadata-flavor"),
                    HeaderValue::from_static("Google"),
                );
                (url, client.get(url, &[flavor]).await)
            }
        };
        let resp =
            answer.map_err(|e| Failure::Transient(format!("access token from {url}: {e}")))?;
        if resp.status == 429 || resp.status >= 500 {
            return Err(Failure::Transient(format!(
                "access token from {url}: answered {}: {}",
                resp.status,
                error_message(&resp.body)
            )));
        }
        if resp.status != 200 {
            return Err(Failure::Final(self.unavailable(format!(
                "cannot get an access token from {url}: answered {}: {}",
                resp.status,
                error_message(&resp.body)
            ))));
        }
        let v: Value = serde_json::from_slice(&resp.body).map_err(|e| {
            Failure::Final(
                self.unavailable(format!("the access token answer of {url} is not JSON: {e}")),
            )
        })?;
        let token = v["access_token"]
            .as_str()
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                Failure::Final(self.unavailable(format!(
                    "the access token answer of {url} has no `access_token`"
                )))
            })?;
        let lifetime = Duration::from_secs(v["expires_in"].as_u64().unwrap_or(3600));
        Ok((token.to_string(), lifetime))
    }

    /// One publish try of `body` (a `PublishRequest`).
    async fn publish_once(&self, body: &Bytes, deadline: Instant) -> Result<u64, Failure> {
        let token = self.token(deadline).await?;
        let mut headers = vec![(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )];
        if let Some(t) = token {
            let value = HeaderValue::from_str(&format!("Bearer {t}")).map_err(|_| {
                Failure::Final(self.unavailable("the access token is not a header value"))
            })?;
            headers.push((http::header::AUTHORIZATION, value));
        }
        let left = deadline.saturating_duration_since(Instant::now());
        let resp = self
            .client(left)
            .send(Method::POST, &self.publish_url, &headers, body.clone())
            .await
            .map_err(Failure::Transient)?;
        let topic = self.topic_path();
        let message = || error_message(&resp.body);
        match resp.status {
            200 => {
                let v: Value = serde_json::from_slice(&resp.body).map_err(|e| {
                    Failure::Transient(format!("the publish answer is not JSON: {e}"))
                })?;
                match v["messageIds"].get(0).and_then(Value::as_str) {
                    Some(id) => Ok(numeric_id(id)),
                    None => Err(Failure::Transient(
                        "the publish answer has no `messageIds`".into(),
                    )),
                }
            }
            429 => Err(Failure::Transient(format!(
                "Pub/Sub is throttling publishes (429): {}",
                message()
            ))),
            s if s >= 500 => Err(Failure::Transient(format!(
                "Pub/Sub answered {s}: {}",
                message()
            ))),
            400 => Err(Failure::Final(QueueError::Invalid {
                queue: self.name.clone(),
                message: format!("Pub/Sub refused the message: {}", message()),
            })),
            401 => Err(Failure::Unauthorized(format!(
                "Pub/Sub refused the credentials ({}) for topic `{topic}`: {}",
                self.auth.describe(),
                message()
            ))),
            403 => Err(Failure::Final(self.io(format!(
                "permission denied publishing to topic `{topic}` (credentials: {}): {}",
                self.auth.describe(),
                message()
            )))),
            404 => Err(Failure::Final(self.io(format!(
                "topic `{topic}` does not exist (create it, or fix `pubsub.project` and `pubsub.topic`): {}",
                message()
            )))),
            s => Err(Failure::Final(self.io(format!(
                "Pub/Sub answered {s} publishing to topic `{topic}`: {}",
                message()
            )))),
        }
    }

    /// Publishes `env`, retrying within the publish timeout; resolves to its id.
    async fn publish(&self, env: &Envelope) -> Result<u64, QueueError> {
        let result = self.publish_within(env).await;
        match &result {
            Ok(_) => self.healthy.store(true, Ordering::Release),
            Err(QueueError::Unavailable { .. } | QueueError::Io { .. }) => {
                self.healthy.store(false, Ordering::Release)
            }
            Err(_) => {}
        }
        result
    }

    async fn publish_within(&self, env: &Envelope) -> Result<u64, QueueError> {
        let timeout = self.settings.publish_timeout;
        let deadline = Instant::now() + timeout;
        let body = Bytes::from(serde_json::json!({ "messages": [env.to_json()] }).to_string());
        let mut renewed = false;
        let mut last = String::from("no answer");
        loop {
            self.open()?;
            match tokio::time::timeout_at(deadline, self.publish_once(&body, deadline)).await {
                Ok(Ok(id)) => return Ok(id),
                Ok(Err(Failure::Final(e))) => return Err(e),
                Ok(Err(Failure::Transient(e))) => last = e,
                Ok(Err(Failure::Unauthorized(e))) => {
                    // Maybe revoked or expired early: one more try with a new token.
                    if let Ok(mut cached) =
                        tokio::time::timeout_at(deadline, self.token.lock()).await
                    {
                        *cached = None;
                    }
                    if renewed || matches!(self.auth, Auth::None) {
                        return Err(self.io(e));
                    }
                    renewed = true;
                    last = e;
                    continue;
                }
                Err(_) => {}
            }
            if Instant::now() + PUBLISH_RETRY >= deadline {
                return Err(self.unavailable(format!(
                    "publish to `{}` not acknowledged within {} ms: {last}",
                    self.topic_path(),
                    timeout.as_millis()
                )));
            }
            tokio::time::sleep(PUBLISH_RETRY).await;
        }
    }
}

fn unsupported<T: Send + 'static>(name: &str, what: &str) -> BoxFuture<T> {
    ready_now(Err(QueueError::Unsupported {
        queue: name.to_string(),
        what: format!("{what} (Pub/Sub delivers by push)"),
        backend: KIND,
    }))
}

impl QueueBackend for PubSubBackend {
    fn kind(&self) -> &'static str {
        KIND
    }

    fn durability(&self) -> &'static str {
        if self.inner.settings.emulator_host.is_some() {
            "held by the Pub/Sub emulator (in its memory)"
        } else {
            "stored by Google Pub/Sub (the topic's message storage)"
        }
    }

    fn delivers(&self) -> bool {
        false
    }

    fn redelivers(&self) -> bool {
        false
    }

    fn record_dead(&self, payload: Vec<u8>, reason: &str) -> BoxFuture<u64> {
        if let Err(e) = self.inner.open() {
            return ready_now(Err(e));
        }
        self.inner.local.record_dead(payload, reason)
    }

    fn append(&self, payload: Vec<u8>) -> BoxFuture<u64> {
        let inner = self.inner.clone();
        if let Err(e) = inner.open() {
            return ready_now(Err(e));
        }
        let env = match inner.envelope(Bytes::from(payload)) {
            Ok(env) => env,
            Err(e) => return ready_now(Err(e)),
        };
        runtime::spawn(&self.inner.name, async move { inner.publish(&env).await })
    }

    fn read_pending(&self, _from_id: u64, _max: usize) -> BoxFuture<Vec<StoredMessage>> {
        ready_now(self.inner.open().map(|()| Vec::new()))
    }

    fn browse(&self, _from_id: u64, _max: usize) -> BoxFuture<Vec<StoredMessage>> {
        ready_now(self.inner.open().map(|()| Vec::new()))
    }

    fn get(&self, id: u64) -> BoxFuture<Option<StoredMessage>> {
        self.inner.local.get(id)
    }

    fn ack(&self, _id: u64) -> BoxFuture<()> {
        unsupported(&self.inner.name, "acknowledging a message")
    }

    fn dead_letter(&self, _id: u64, _reason: &str) -> BoxFuture<()> {
        unsupported(&self.inner.name, "dead-lettering a pending message")
    }

    fn retry_later(&self, _id: u64, _delay: Duration) -> BoxFuture<()> {
        unsupported(&self.inner.name, "engine redelivery")
    }

    fn dead_letters(&self) -> BoxFuture<Vec<DeadLetterInfo>> {
        self.inner.local.dead_letters()
    }

    /// Publishes dead letter `id` again; resolves to the new Pub/Sub message id. Only
    /// then is it removed from the local log: the log's replay turns it into a pending
    /// record (its only way to take one dead letter out), which is acked at once.
    fn replay(&self, id: u64) -> BoxFuture<u64> {
        let inner = self.inner.clone();
        runtime::spawn(&self.inner.name, async move {
            inner.open()?;
            let _one = inner.replaying.lock().await;
            let stored = inner.local.get(id).await?.ok_or(QueueError::NotFound {
                queue: inner.name.clone(),
                id,
            })?;
            if stored.dead.is_none() {
                return Err(QueueError::NotDead {
                    queue: inner.name.clone(),
                    id,
                });
            }
            let env = inner.envelope(stored.payload)?;
            let message_id = inner.publish(&env).await?;
            let removed = async {
                let pending = inner.local.replay(id).await?;
                inner.local.ack(pending).await
            }
            .await;
            if let Err(e) = removed {
                tracing::error!(queue = %inner.name, id, message_id, error = %e, "Dead letter published again, but not removed from the local log.");
                return Err(inner.io(format!(
                    "dead letter {id} was published again (message {message_id}) but could not be removed from the local log: {e}"
                )));
            }
            Ok(message_id)
        })
    }

    fn purge_dead(&self) -> BoxFuture<u64> {
        self.inner.local.purge_dead()
    }

    fn stats(&self) -> BackendStats {
        let inner = &self.inner;
        let local = inner.local.stats();
        BackendStats {
            pending: 0,
            oldest_pending_id: None,
            oldest_pending_appended_at_ms: None,
            dead: local.dead,
            bytes_on_disk: local.bytes_on_disk,
            max_bytes: inner.max_bytes,
            next_id: local.next_id,
            healthy: local.healthy
                && inner.healthy.load(Ordering::Acquire)
                && !inner.closed.load(Ordering::Acquire),
        }
    }

    fn close(&self) {
        if self.inner.closed.swap(true, Ordering::AcqRel) {
            return;
        }
        self.inner.local.close();
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::sync::Mutex;

    use sluicegate_queue::QueuedRequest;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A 2048-bit RSA key made for these tests only (`openssl genpkey -algorithm RSA
    /// -pkeyopt rsa_keygen_bits:2048`).
    const TEST_KEY: &str = "-----BEGIN PRIVATE KEY-----\n\
MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC7LL+gBuKXd7WG\n\
CfUsD3rXhXDWPNxYJcg46Nrs26ORK7bJain0vKjNJseEhNPOizZcU2LHSxfwA0mH\n\
PDT+HdP7yXukU5tVPCijtC7V8xkF2cskSKZ7xoJQgnE3Ngfy5EUHM63LEdEq2n57\n\
BZmWj0Z64y5fsMf+icHlPDHocJCgivQwkN1zMSomRaZpAw+CpO9qAYaKIosAP3YB\n\
+2wzLCHrNTHEydhLjGytI52TxqpETteg9JLWQ+Becd9pImVgttJqZsIef+HdNVgK\n\
jrIHldnj2Lqc8BFwD38bOiUZBjSVhmFgwCg6ZucngMU37Bl19BDlH1DsAJJxay9J\n\
22PaaxNzAgMBAAECggEAJTQzUJkdv/Kk66QeDehzx9P3xjWprIGyBxHNtifAHtJc\n\
DjPibAl12fU70izett636ukOKMPV2biljFJczCfco178iwCtTudawpNFffRIhH+y\n\
X59rLA4ch+ktnMZKFS7nQ5OzlzoO4+AzJLvLt//5h+KRLKcEUaVLG4f3+ZYqQSaV\n\
ZofhYLiLMiH05NWDQmrcwy24oOnIwC57qCvdEtxbpvhRxVBglmV3loM1lQDJ+tng\n\
rZeb8/4ezx/H9Nx6gK/ivRDOsUCaMg0VydhbSOLWjmv3R/7woEYFKrwLWZGTj2pY\n\
Q5/BxFRxjjy5Ae9eaH5NFJmQZMy3eJncSqmWTZA7OQKBgQD/5VLZszLPD6PHh9mt\n\
ZIdakCAFpNQzpLv6rShbh0g0hgch4+lGZad2iwRoOVo4oKtq2eoxHa8XpmuLiqwz\n\
F/McE6TUbTiVm3RibnmcN9+ERX4bkwnnJQ4/F0RRyrGod0HNUB6JgaTRX+lsnsOX\n\
w+LZDqlr4ttf6b9UD5jZILpOywKBgQC7QELNQJbv//XfpmxEkmU/6cytCDNG4TaL\n\
4CEH1VaZEiFNkHALB3MTtdeN8P3pARPp7vVc3Wr6UPn0duBAoIsgBRJy0M4D2t5k\n\
TWbYh+kMVw4hdiiyC+iRaPp9vOUvcr60KF7up9BTTCZj1hUm+UNji9kR4oRCgsV5\n\
pNYhhh9Q+QKBgFQV596PSs/NZNTo5/dZBD0XBN615eC+beKWSZ+h2XEg5XEWcg3m\n\
01tZnO4egm3/JbSrvI+9IE7WKZqly6XSZdlA/zWqWiCW/2xkvuM9XN4a87Bd5bAl\n\
dgP3QkTaJPyli2LKw+4NQrpmGM7PcJgLDxyh+7vuxIVEytD1exVF8tJ3AoGAJf3u\n\
z9hIB5/mUh9hHjSZyHL2bTEZvkrZl129NeqqLFqKWUNyCDrVtW0StCDuU4U9dhxe\n\
uh3Oo8UkQd6Qt2wbbj65NIR7GDsjHjS6JjrFJRTQsCdaMG3MHRywnixiT9M3MDR0\n\
tnVkBlKQA3efSQ4QBzWLsF5GOXxw9rJkI98joXkCgYEA4m4gTU4hEHMIb1oZiHSm\n\
ryJKJ/JWXGV38Yns82kBvHcymWDG+Dto4W58rSec3zXQ2BYlRmcKGtAj7aFwqst/\n\
qCs0N1cftuKswoO3zdvoBlap8F4MgkfdsWO/lJbeniA4+8W+9LDZQ3WmU7PC7Y/W\n\
Osq+yaJP4AplqRwB2y6AoQg=\n\
-----END PRIVATE KEY-----\n\
";
    /// Its public key (`openssl rsa -RSAPublicKey_out -outform DER`, base64).
    const TEST_PUBLIC_KEY: &str = "MIIBCgKCAQEAuyy/oAbil3e1hgn1LA9614Vw1jzcWCXIOOja7NujkSu2yWop9LyozSbHhITTzos2XFNix0sX8ANJhzw0/h3T+8l7pFObVTwoo7Qu1fMZBdnLJEime8aCUIJxNzYH8uRFBzOtyxHRKtp+ewWZlo9GeuMuX7DH/onB5Twx6HCQoIr0MJDdczEqJkWmaQMPgqTvagGGiiKLAD92AftsMywh6zUxxMnYS4xsrSOdk8aqRE7XoPSS1kPgXnHfaSJlYLbSambCHn/h3TVYCo6yB5XZ49i6nPARcA9/GzolGQY0lYZhYMAoOmbnJ4DFN+wZdfQQ5R9Q7ACScWsvSdtj2msTcwIDAQAB";

    /// One request the fake server received.
    #[derive(Debug, Clone)]
    struct Seen {
        method: String,
        path: String,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    }

    impl Seen {
        fn header(&self, name: &str) -> Option<&str> {
            self.headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
        }
    }

    /// What the fake server answers: a status and a body, or nothing (it holds the
    /// connection).
    type Reply = Option<(u16, String)>;
    type Handler = Arc<dyn Fn(&Seen) -> Reply + Send + Sync>;

    struct Fake {
        addr: std::net::SocketAddr,
        seen: Arc<Mutex<Vec<Seen>>>,
    }

    impl Fake {
        fn seen(&self) -> Vec<Seen> {
            self.seen.lock().unwrap().clone()
        }

        fn on(&self, path_part: &str) -> Vec<Seen> {
            self.seen()
                .into_iter()
                .filter(|s| s.path.contains(path_part))
                .collect()
        }

        fn url(&self) -> String {
            format!("http://{}", self.addr)
        }
    }

    /// A fake Pub/Sub, token endpoint and metadata server, all in one: HTTP/1.1, one
    /// request per connection.
    async fn fake(handler: impl Fn(&Seen) -> Reply + Send + Sync + 'static) -> Fake {
        let handler: Handler = Arc::new(handler);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = listener.accept().await else {
                    return;
                };
                let handler = handler.clone();
                let log = log.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 8192];
                    let head_end = loop {
                        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break p + 4;
                        }
                        let n = s.read(&mut chunk).await.unwrap_or(0);
                        if n == 0 {
                            return;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                    };
                    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
                    let mut lines = head.split("\r\n");
                    let mut first = lines.next().unwrap_or("").split(' ');
                    let method = first.next().unwrap_or("").to_string();
                    let path = first.next().unwrap_or("").to_string();
                    let headers: Vec<(String, String)> = lines
                        .filter_map(|l| l.split_once(':'))
                        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
                        .collect();
                    let len: usize = headers
                        .iter()
                        .find(|(n, _)| n == "content-length")
                        .and_then(|(_, v)| v.parse().ok())
                        .unwrap_or(0);
                    while buf.len() < head_end + len {
                        let n = s.read(&mut chunk).await.unwrap_or(0);
                        if n == 0 {
                            return;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                    }
                    let req = Seen {
                        method,
                        path,
                        headers,
                        body: buf[head_end..head_end + len].to_vec(),
                    };
                    log.lock().unwrap().push(req.clone());
                    match handler(&req) {
                        Some((status, body)) => {
                            let answer = format!(
                                "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                                body.len()
                            );
                            let _ = s.write_all(answer.as_bytes()).await;
                        }
                        None => {
                            tokio::time::sleep(Duration::from_secs(30)).await;
                        }
                    }
                });
            }
        });
        Fake { addr, seen }
    }

    fn published(id: &str) -> Reply {
        Some((200, format!("{{\"messageIds\":[\"{id}\"]}}")))
    }

    fn settings(emulator: Option<&Fake>, credentials: Option<String>) -> PubSubSettings {
        PubSubSettings {
            project: "proj".into(),
            topic: "hooks".into(),
            emulator_host: emulator.map(|f| f.addr.to_string()),
            credentials,
            publish_timeout: Duration::from_millis(2000),
        }
    }

    fn endpoints(fake: &Fake) -> Endpoints {
        Endpoints {
            pubsub: fake.url(),
            metadata_host: fake.addr.to_string(),
        }
    }

    fn open(dir: &tempfile::TempDir, s: PubSubSettings, fake: &Fake) -> PubSubBackend {
        PubSubBackend::open_with("hooks", s, dir.path(), 1 << 20, endpoints(fake)).unwrap()
    }

    fn request() -> QueuedRequest {
        let mut r = QueuedRequest::new(Method::POST, "/wal/hooks?x=1");
        r.headers
            .append("content-type", HeaderValue::from_static("application/json"));
        r.headers.append("x-a", HeaderValue::from_static("1"));
        r.body = Bytes::from_static(b"{\"hello\":\"world\"}\x00\xff");
        r.request_id = "req-7".into();
        r
    }

    fn payload() -> Vec<u8> {
        record::encode(&request())
    }

    fn key_json(token_uri: &str) -> String {
        serde_json::json!({
            "type": "service_account",
            "project_id": "proj",
            "private_key_id": "kid-1",
            "private_key": TEST_KEY,
            "client_email": "gw@proj.iam.gserviceaccount.com",
            "token_uri": token_uri,
        })
        .to_string()
    }

    fn form_value(body: &[u8], key: &str) -> Option<String> {
        String::from_utf8_lossy(body)
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v.to_string())
    }

    #[tokio::test]
    async fn publishes_the_envelope_to_the_emulator_without_authorization() {
        let f = fake(|s| {
            if s.path.ends_with(":publish") {
                published("1234567890123")
            } else {
                Some((404, "{}".into()))
            }
        })
        .await;
        let dir = tempfile::tempdir().unwrap();
        let b = open(&dir, settings(Some(&f), None), &f);
        assert_eq!(b.append(payload()).await.unwrap(), 1_234_567_890_123);
        let seen = f.seen();
        assert_eq!(seen.len(), 1);
        let s = &seen[0];
        assert_eq!(s.method, "POST");
        assert_eq!(s.path, "/v1/projects/proj/topics/hooks:publish");
        assert!(s.header("authorization").is_none(), "{s:?}");
        assert_eq!(s.header("content-type"), Some("application/json"));
        let body: Value = serde_json::from_slice(&s.body).unwrap();
        let msg = &body["messages"][0];
        let data = base64::engine::general_purpose::STANDARD
            .decode(msg["data"].as_str().unwrap())
            .unwrap();
        assert_eq!(data, request().body);
        let expected = envelope::encode("hooks", &request()).unwrap().to_json();
        assert_eq!(msg["attributes"], expected["attributes"]);
        assert_eq!(msg["attributes"]["sluicegate_uri"], "/wal/hooks?x=1");
        assert_eq!(msg["attributes"]["sluicegate_request_id"], "req-7");
        assert_eq!(msg["attributes"]["sluicegate_queue"], "hooks");
        assert_eq!(b.kind(), "pubsub");
        assert!(!b.delivers());
        assert!(!b.redelivers());
        assert!(b.durability().contains("emulator"));
        let st = b.stats();
        assert_eq!((st.pending, st.dead, st.max_bytes), (0, 0, 1 << 20));
        assert!(st.healthy);
        assert!(b.read_pending(0, 10).await.unwrap().is_empty());
        assert!(b.browse(0, 10).await.unwrap().is_empty());
        assert!(matches!(
            b.ack(1).await,
            Err(QueueError::Unsupported { .. })
        ));
        assert!(matches!(
            b.dead_letter(1, "x").await,
            Err(QueueError::Unsupported { .. })
        ));
        assert!(matches!(
            b.retry_later(1, Duration::from_secs(1)).await,
            Err(QueueError::Unsupported { .. })
        ));
        b.close();
        assert!(matches!(
            b.append(payload()).await,
            Err(QueueError::Closed(_))
        ));
    }

    #[tokio::test]
    async fn a_message_id_that_is_not_a_number_is_hashed() {
        assert_eq!(numeric_id("42"), 42);
        assert_eq!(numeric_id("abc"), numeric_id("abc"));
        assert_ne!(numeric_id("abc"), numeric_id("abd"));
        let f = fake(|_| published("msg-x")).await;
        let dir = tempfile::tempdir().unwrap();
        let b = open(&dir, settings(Some(&f), None), &f);
        assert_eq!(b.append(payload()).await.unwrap(), numeric_id("msg-x"));
    }

    #[tokio::test]
    async fn a_service_account_key_mints_a_verifiable_jwt_and_the_token_is_cached() {
        let tokens = Arc::new(AtomicUsize::new(0));
        let count = tokens.clone();
        let f = fake(move |s| {
            if s.path == "/token" {
                let n = count.fetch_add(1, Ordering::SeqCst) + 1;
                Some((
                    200,
                    format!("{{\"access_token\":\"tok-{n}\",\"expires_in\":3599,\"token_type\":\"Bearer\"}}"),
                ))
            } else {
                published("7")
            }
        })
        .await;
        let dir = tempfile::tempdir().unwrap();
        let token_uri = format!("{}/token", f.url());
        let b = open(&dir, settings(None, Some(key_json(&token_uri))), &f);
        assert!(b.durability().contains("Google Pub/Sub"));
        assert_eq!(b.append(payload()).await.unwrap(), 7);
        assert_eq!(b.append(payload()).await.unwrap(), 7);
        assert_eq!(
            tokens.load(Ordering::SeqCst),
            1,
            "one token for two publishes"
        );
        let publishes = f.on(":publish");
        assert_eq!(publishes.len(), 2);
        for p in &publishes {
            assert_eq!(p.header("authorization"), Some("Bearer tok-1"));
        }
        let token_call = &f.on("/token")[0];
        assert_eq!(token_call.method, "POST");
        assert_eq!(
            token_call.header("content-type"),
            Some("application/x-www-form-urlencoded")
        );
        assert_eq!(
            form_value(&token_call.body, "grant_type").as_deref(),
            Some("urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer")
        );
        let jwt = form_value(&token_call.body, "assertion").unwrap();
        let parts: Vec<&str> = jwt.split('.').collect();
        assert_eq!(parts.len(), 3);
        let dec = |p: &str| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(p)
                .unwrap()
        };
        let header: Value = serde_json::from_slice(&dec(parts[0])).unwrap();
        assert_eq!(
            header,
            serde_json::json!({"alg": "RS256", "typ": "JWT", "kid": "kid-1"})
        );
        let claims: Value = serde_json::from_slice(&dec(parts[1])).unwrap();
        assert_eq!(claims["iss"], "gw@proj.iam.gserviceaccount.com");
        assert_eq!(claims["sub"], "gw@proj.iam.gserviceaccount.com");
        assert_eq!(claims["aud"], token_uri.as_str());
        assert_eq!(claims["scope"], SCOPE);
        let iat = claims["iat"].as_u64().unwrap();
        assert_eq!(claims["exp"].as_u64().unwrap(), iat + 3600);
        assert!(iat.abs_diff(now_secs()) < 60);
        let public = base64::engine::general_purpose::STANDARD
            .decode(TEST_PUBLIC_KEY)
            .unwrap();
        ring::signature::UnparsedPublicKey::new(
            &ring::signature::RSA_PKCS1_2048_8192_SHA256,
            public,
        )
        .verify(
            format!("{}.{}", parts[0], parts[1]).as_bytes(),
            &dec(parts[2]),
        )
        .expect("the JWT verifies with the key's public half");
    }

    #[tokio::test]
    async fn an_expired_token_is_fetched_again() {
        let tokens = Arc::new(AtomicUsize::new(0));
        let count = tokens.clone();
        let f = fake(move |s| {
            if s.path == "/token" {
                count.fetch_add(1, Ordering::SeqCst);
                // Lives less than the refresh margin: stale at once.
                Some((200, "{\"access_token\":\"t\",\"expires_in\":30}".into()))
            } else {
                published("1")
            }
        })
        .await;
        let dir = tempfile::tempdir().unwrap();
        let token_uri = format!("{}/token", f.url());
        let b = open(&dir, settings(None, Some(key_json(&token_uri))), &f);
        b.append(payload()).await.unwrap();
        b.append(payload()).await.unwrap();
        assert_eq!(tokens.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_refused_token_request_is_unavailable_with_the_cause() {
        let f = fake(|s| {
            if s.path == "/token" {
                Some((
                    400,
                    "{\"error\":\"invalid_grant\",\"error_description\":\"Invalid JWT Signature.\"}"
                        .into(),
                ))
            } else {
                published("1")
            }
        })
        .await;
        let dir = tempfile::tempdir().unwrap();
        let token_uri = format!("{}/token", f.url());
        let b = open(&dir, settings(None, Some(key_json(&token_uri))), &f);
        match b.append(payload()).await {
            Err(QueueError::Unavailable { message, .. }) => {
                assert!(message.contains("Invalid JWT Signature"), "{message}");
            }
            other => panic!("{other:?}"),
        }
        assert!(f.on(":publish").is_empty());
        assert!(!b.stats().healthy);
    }

    #[tokio::test]
    async fn a_refused_token_is_renewed_once() {
        let tokens = Arc::new(AtomicUsize::new(0));
        let publishes = Arc::new(AtomicUsize::new(0));
        let (t, p) = (tokens.clone(), publishes.clone());
        let f = fake(move |s| {
            if s.path == "/token" {
                let n = t.fetch_add(1, Ordering::SeqCst) + 1;
                Some((
                    200,
                    format!("{{\"access_token\":\"tok-{n}\",\"expires_in\":3599}}"),
                ))
            } else if p.fetch_add(1, Ordering::SeqCst) == 0 {
                Some((401, "{\"error\":{\"message\":\"revoked\"}}".into()))
            } else {
                published("8")
            }
        })
        .await;
        let dir = tempfile::tempdir().unwrap();
        let token_uri = format!("{}/token", f.url());
        let b = open(&dir, settings(None, Some(key_json(&token_uri))), &f);
        assert_eq!(b.append(payload()).await.unwrap(), 8);
        assert_eq!(tokens.load(Ordering::SeqCst), 2);
        assert_eq!(
            f.on(":publish")[1].header("authorization"),
            Some("Bearer tok-2")
        );
    }

    #[tokio::test]
    async fn the_metadata_server_gives_the_token_without_a_key() {
        let f = fake(|s| {
            if s.path.starts_with("/computeMetadata/") {
                Some((
                    200,
                    "{\"access_token\":\"meta-tok\",\"expires_in\":3000}".into(),
                ))
            } else {
                published("9")
            }
        })
        .await;
        let dir = tempfile::tempdir().unwrap();
        let b = open(&dir, settings(None, None), &f);
        assert_eq!(b.append(payload()).await.unwrap(), 9);
        b.append(payload()).await.unwrap();
        let meta = f.on("/computeMetadata/");
        assert_eq!(meta.len(), 1);
        assert_eq!(
            meta[0].path,
            "/computeMetadata/v1/instance/service-accounts/default/token"
        );
        assert_eq!(meta[0].header("metadata-flavor"), Some("Google"));
        assert_eq!(
            f.on(":publish")[1].header("authorization"),
            Some("Bearer meta-tok")
        );
    }

    #[tokio::test]
    async fn a_server_error_is_retried_and_the_publish_succeeds() {
        let calls = Arc::new(AtomicUsize::new(0));
        let count = calls.clone();
        let f = fake(move |_| {
            if count.fetch_add(1, Ordering::SeqCst) == 0 {
                Some((
                    500,
                    "{\"error\":{\"code\":500,\"message\":\"boom\"}}".into(),
                ))
            } else {
                published("55")
            }
        })
        .await;
        let dir = tempfile::tempdir().unwrap();
        let b = open(&dir, settings(Some(&f), None), &f);
        assert_eq!(b.append(payload()).await.unwrap(), 55);
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        assert!(b.stats().healthy);
    }

    #[tokio::test]
    async fn a_missing_topic_is_a_clear_error_naming_it_and_not_retried() {
        let f = fake(|_| {
            Some((
                404,
                "{\"error\":{\"code\":404,\"message\":\"Resource not found (resource=hooks).\",\"status\":\"NOT_FOUND\"}}"
                    .into(),
            ))
        })
        .await;
        let dir = tempfile::tempdir().unwrap();
        let b = open(&dir, settings(Some(&f), None), &f);
        match b.append(payload()).await {
            Err(QueueError::Io { message, .. }) => {
                assert!(message.contains("projects/proj/topics/hooks"), "{message}");
                assert!(message.contains("does not exist"), "{message}");
                assert!(message.contains("Resource not found"), "{message}");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(f.seen().len(), 1);
        assert!(!b.stats().healthy);
    }

    #[tokio::test]
    async fn a_bad_request_is_invalid_with_pubsubs_message() {
        let f = fake(|_| {
            Some((
                400,
                "{\"error\":{\"code\":400,\"message\":\"An attribute key is invalid.\"}}".into(),
            ))
        })
        .await;
        let dir = tempfile::tempdir().unwrap();
        let b = open(&dir, settings(Some(&f), None), &f);
        match b.append(payload()).await {
            Err(QueueError::Invalid { message, .. }) => {
                assert!(
                    message.contains("An attribute key is invalid."),
                    "{message}"
                )
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(f.seen().len(), 1);
    }

    #[tokio::test]
    async fn a_server_that_never_answers_is_unavailable_within_the_publish_timeout() {
        let f = fake(|_| None).await;
        let dir = tempfile::tempdir().unwrap();
        let mut s = settings(Some(&f), None);
        s.publish_timeout = Duration::from_millis(300);
        let b = open(&dir, s, &f);
        let start = std::time::Instant::now();
        match b.append(payload()).await {
            Err(QueueError::Unavailable {
                message, backend, ..
            }) => {
                assert_eq!(backend, "pubsub");
                assert!(message.contains("300 ms"), "{message}");
            }
            other => panic!("{other:?}"),
        }
        let took = start.elapsed();
        assert!(took >= Duration::from_millis(250), "{took:?}");
        assert!(took < Duration::from_millis(1000), "{took:?}");
        assert!(!b.stats().healthy);
    }

    #[tokio::test]
    async fn an_unreachable_service_is_unavailable_and_health_returns_after_a_publish() {
        let up = Arc::new(AtomicBool::new(false));
        let flag = up.clone();
        let f = fake(move |_| {
            if flag.load(Ordering::SeqCst) {
                published("3")
            } else {
                Some((503, "{\"error\":{\"message\":\"down\"}}".into()))
            }
        })
        .await;
        let dir = tempfile::tempdir().unwrap();
        let mut s = settings(Some(&f), None);
        s.publish_timeout = Duration::from_millis(300);
        let b = open(&dir, s, &f);
        match b.append(payload()).await {
            Err(QueueError::Unavailable { message, .. }) => {
                assert!(message.contains("down"), "{message}")
            }
            other => panic!("{other:?}"),
        }
        assert!(f.seen().len() >= 2, "retried within the timeout");
        assert!(!b.stats().healthy);
        up.store(true, Ordering::SeqCst);
        assert_eq!(b.append(payload()).await.unwrap(), 3);
        assert!(b.stats().healthy);
    }

    #[tokio::test]
    async fn a_message_over_pubsubs_limit_is_refused_before_any_call() {
        let f = fake(|_| published("1")).await;
        let dir = tempfile::tempdir().unwrap();
        let b = open(&dir, settings(Some(&f), None), &f);
        let mut r = request();
        r.body = Bytes::from(vec![b'a'; MAX_MESSAGE_BYTES as usize + 1]);
        match b.append(record::encode(&r)).await {
            Err(QueueError::TooLarge { max, .. }) => assert_eq!(max, MAX_MESSAGE_BYTES),
            other => panic!("{other:?}"),
        }
        match b.append(b"not a record".to_vec()).await {
            Err(QueueError::Invalid { .. }) => {}
            other => panic!("{other:?}"),
        }
        assert!(f.seen().is_empty());
    }

    #[tokio::test]
    async fn dead_letters_stay_local_and_a_replay_publishes_and_removes_them() {
        let f = fake(|_| published("777")).await;
        let dir = tempfile::tempdir().unwrap();
        let b = open(&dir, settings(Some(&f), None), &f);
        let id = b.record_dead(payload(), "push failed: 500").await.unwrap();
        let other = b.record_dead(payload(), "push failed: 502").await.unwrap();
        let dead = b.dead_letters().await.unwrap();
        assert_eq!(
            dead.iter().map(|d| d.id).collect::<Vec<_>>(),
            vec![id, other]
        );
        assert_eq!(dead[0].reason, "push failed: 500");
        assert_eq!(b.stats().dead, 2);
        assert_eq!(b.stats().pending, 0);
        let got = b.get(id).await.unwrap().unwrap();
        assert_eq!(got.payload, Bytes::from(payload()));
        assert_eq!(got.dead.unwrap().reason, "push failed: 500");
        assert!(f.seen().is_empty());

        assert_eq!(b.replay(id).await.unwrap(), 777);
        let publishes = f.on(":publish");
        assert_eq!(publishes.len(), 1);
        let body: Value = serde_json::from_slice(&publishes[0].body).unwrap();
        assert_eq!(
            body["messages"][0],
            envelope::encode("hooks", &request()).unwrap().to_json()
        );
        assert!(
            b.get(id).await.unwrap().is_none(),
            "the dead letter is gone"
        );
        let dead = b.dead_letters().await.unwrap();
        assert_eq!(dead.iter().map(|d| d.id).collect::<Vec<_>>(), vec![other]);
        assert!(b.read_pending(0, 10).await.unwrap().is_empty());
        assert!(matches!(
            b.replay(id).await,
            Err(QueueError::NotFound { .. })
        ));

        assert_eq!(b.purge_dead().await.unwrap(), 1);
        assert!(b.dead_letters().await.unwrap().is_empty());
        assert_eq!(b.stats().dead, 0);
        b.close();
    }

    #[tokio::test]
    async fn a_failed_replay_keeps_the_dead_letter() {
        let f = fake(|_| Some((503, "{}".into()))).await;
        let dir = tempfile::tempdir().unwrap();
        let mut s = settings(Some(&f), None);
        s.publish_timeout = Duration::from_millis(200);
        let b = open(&dir, s, &f);
        let id = b.record_dead(payload(), "r").await.unwrap();
        assert!(matches!(
            b.replay(id).await,
            Err(QueueError::Unavailable { .. })
        ));
        assert!(b.get(id).await.unwrap().unwrap().dead.is_some());
        assert_eq!(b.dead_letters().await.unwrap().len(), 1);
    }

    #[tokio::test]
    async fn a_record_left_pending_in_the_local_log_is_a_dead_letter_again() {
        let f = fake(|_| published("1")).await;
        let dir = tempfile::tempdir().unwrap();
        {
            let wal = WalBackend::open("hooks", dir.path(), 1 << 20).unwrap();
            wal.append(payload()).await.unwrap();
            wal.close();
        }
        let b = open(&dir, settings(Some(&f), None), &f);
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            let dead = b.dead_letters().await.unwrap();
            if dead.len() == 1 {
                assert_eq!(dead[0].reason, LEFTOVER_REASON);
                break;
            }
            assert!(std::time::Instant::now() < deadline, "not dead-lettered");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn a_bad_key_fails_at_open() {
        let f = fake(|_| published("1")).await;
        let dir = tempfile::tempdir().unwrap();
        let bad = serde_json::json!({"client_email": "a@b", "private_key": "nope"}).to_string();
        let e = PubSubBackend::open_with(
            "hooks",
            settings(None, Some(bad)),
            dir.path(),
            1 << 20,
            endpoints(&f),
        )
        .unwrap_err();
        assert!(e.to_string().contains("private_key"), "{e}");
    }
}
