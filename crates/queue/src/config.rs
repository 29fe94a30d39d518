//! The `queue:` block of a route: its on-disk form ([`QueueConfig`], serde) and the
//! validated form ([`RouteQueue`]: the queue's name, the acknowledgement to send, and the
//! delivery settings). Validation reports every problem with its path, like the rest of
//! the configuration.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, StatusCode};

use super::retry::{defaults, RetryPolicy, StatusSet};
use sluicegate_config::queue::{
    AckConfig, NatsConfig, PubSubConfig, QueueConfig, RetryConfig, StatusPattern,
};
use sluicegate_core::diag::{Diags, Path};
use sluicegate_core::phase::LocalResponse;

/// Default bound on a queue's bytes on disk: 1 GiB.
pub const DEFAULT_MAX_BYTES: u64 = 1 << 30;
/// Smallest accepted `max_bytes`: room for a few segments and the state log.
pub const MIN_MAX_BYTES: u64 = 64 * 1024;
/// Default delivery concurrency: one message at a time keeps strict FIFO order.
pub const DEFAULT_CONCURRENCY: usize = 1;

/// In which order messages are sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ordering {
    /// In append order; a message waiting for its retry holds back the ones after it.
    Fifo,
    /// A message waiting for its retry lets later ones pass.
    Unordered,
}

/// Delivery and storage settings of a queue (delivery settings apply live on reload).
#[derive(Debug, Clone, PartialEq)]
pub struct QueueSettings {
    /// Retry policy.
    pub retry: RetryPolicy,
    /// Deliveries in flight at once.
    pub concurrency: usize,
    /// Ordering.
    pub ordering: Ordering,
    /// Bound on bytes on disk (applies when the queue is opened, i.e. at start).
    pub max_bytes: u64,
}

impl Default for QueueSettings {
    fn default() -> Self {
        QueueSettings {
            retry: RetryPolicy::default(),
            concurrency: DEFAULT_CONCURRENCY,
            ordering: Ordering::Fifo,
            max_bytes: DEFAULT_MAX_BYTES,
        }
    }
}

/// The body of the acknowledgement.
#[derive(Debug, Clone)]
enum AckBody {
    /// `{"queued":true,"queue":...,"id":...,"request_id":...}`.
    DefaultJson,
    /// A template.
    Template(String),
    /// Nothing (status 204).
    Empty,
}

/// The acknowledgement a queued route answers with.
#[derive(Debug, Clone)]
pub struct Ack {
    status: StatusCode,
    headers: HeaderMap,
    body: AckBody,
}

impl Ack {
    /// The response for message `id` of `queue`; `durability` says what the backend's
    /// acknowledgement means (the default JSON body carries it).
    pub fn render(
        &self,
        queue: &str,
        id: u64,
        request_id: &str,
        durability: &str,
    ) -> LocalResponse {
        let mut headers = self.headers.clone();
        let (body, content_type) = match &self.body {
            AckBody::Empty => (Bytes::new(), None),
            AckBody::DefaultJson => {
                let v = serde_json::json!({"queued": true, "queue": queue, "id": id, "request_id": request_id, "durability": durability});
                (Bytes::from(v.to_string()), Some("application/json"))
            }
            AckBody::Template(t) => {
                let text = t
                    .replace("{id}", &id.to_string())
                    .replace("{queue}", queue)
                    .replace("{request_id}", request_id);
                let trimmed = text.trim_start();
                let ct = if trimmed.starts_with('{') || trimmed.starts_with('[') {
                    "application/json"
                } else {
                    "text/plain; charset=utf-8"
                };
                (Bytes::from(text), (!t.is_empty()).then_some(ct))
            }
        };
        if let Some(ct) = content_type {
            headers
                .entry(http::header::CONTENT_TYPE)
                .or_insert(HeaderValue::from_static(ct));
        }
        headers.insert(super::MESSAGE_ID_HEADER.clone(), HeaderValue::from(id));
        LocalResponse {
            status: self.status,
            headers,
            body,
        }
    }
}

/// The validated `queue:` of a route.
#[derive(Debug, Clone)]
pub struct RouteQueue {
    /// Queue name.
    pub name: String,
    /// What the client gets once its request is durable.
    pub ack: Ack,
    /// Delivery and storage settings.
    pub settings: Arc<QueueSettings>,
    /// Where the messages are stored (applies when the queue is opened).
    pub engine: Arc<Engine>,
}

/// The storage engine of a queue.
#[derive(Debug, Clone, PartialEq)]
pub enum Engine {
    /// The write-ahead log on this node's disk.
    Local,
    /// A NATS JetStream stream.
    Nats(NatsSettings),
    /// A Google Pub/Sub topic.
    PubSub(PubSubSettings),
}

impl Engine {
    /// Its name in the configuration.
    pub fn name(&self) -> &'static str {
        match self {
            Engine::Local => "local",
            Engine::Nats(_) => "nats",
            Engine::PubSub(_) => "pubsub",
        }
    }
}

/// The validated `queue.nats`.
#[derive(Clone, PartialEq)]
pub struct NatsSettings {
    /// Server URLs (`nats://host:port`, `tls://host:port`).
    pub urls: Vec<String>,
    /// Replicas of the stream.
    pub replicas: usize,
    /// Stream name.
    pub stream: String,
    /// Subject the messages are published to.
    pub subject: String,
    /// The dead-letter stream's name.
    pub dead_stream: String,
    /// Its subject prefix (`PREFIX.ID` per dead letter).
    pub dead_subject: String,
    /// Durable consumer's name.
    pub consumer: String,
    /// Ack wait of the consumer.
    pub ack_wait: Duration,
    /// Bound on a publish.
    pub publish_timeout: Duration,
    /// User and password.
    pub user: Option<(String, String)>,
    /// Token.
    pub token: Option<String>,
}

impl std::fmt::Debug for NatsSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsSettings")
            .field("urls", &self.urls)
            .field("stream", &self.stream)
            .field("replicas", &self.replicas)
            .finish_non_exhaustive()
    }
}

/// The validated `queue.pubsub`.
#[derive(Clone, PartialEq)]
pub struct PubSubSettings {
    /// Project.
    pub project: String,
    /// Topic.
    pub topic: String,
    /// The emulator (`host:port`), when one is used.
    pub emulator_host: Option<String>,
    /// A service-account key (JSON).
    pub credentials: Option<String>,
    /// Bound on a publish.
    pub publish_timeout: Duration,
}

impl std::fmt::Debug for PubSubSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PubSubSettings")
            .field("project", &self.project)
            .field("topic", &self.topic)
            .field("emulator_host", &self.emulator_host)
            .finish_non_exhaustive()
    }
}

/// Whether `name` can name a JetStream stream or consumer.
fn valid_nats_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-'))
}

/// Whether `subject` is a literal NATS subject (dot-separated tokens, no wildcards).
fn valid_subject(subject: &str) -> bool {
    !subject.is_empty()
        && subject.split('.').all(|t| {
            !t.is_empty()
                && t != "*"
                && t != ">"
                && t.bytes()
                    .all(|b| b.is_ascii_graphic() && b != b'*' && b != b'>')
        })
}

fn nats_settings(
    cfg: Option<NatsConfig>,
    queue: &str,
    path: &Path,
    diags: &mut Diags,
) -> Option<NatsSettings> {
    let Some(cfg) = cfg else {
        diags.push(
            path,
            "the `nats` backend needs a `nats:` section with its `url`",
        );
        return None;
    };
    let urls: Vec<String> = cfg
        .url
        .map(|u| u.0)
        .unwrap_or_default()
        .iter()
        .flat_map(|u| u.split(','))
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(str::to_string)
        .collect();
    if urls.is_empty() {
        diags.push(&path.key("url"), "at least one server URL is needed");
    }
    for u in &urls {
        let scheme_ok =
            ["nats://", "tls://"].iter().any(|s| u.starts_with(s)) || !u.contains("://");
        let hostport = u.split("://").last().unwrap_or("");
        let hostport = hostport.rsplit('@').next().unwrap_or(hostport);
        if !scheme_ok
            || hostport
                .rsplit_once(':')
                .is_none_or(|(h, p)| h.is_empty() || p.parse::<u16>().is_err())
        {
            diags.push(
                &path.key("url"),
                format!("`{u}` is not a NATS server URL (nats://host:port)"),
            );
        }
    }
    let replicas = in_range(cfg.replicas, 1, 1, 5, &path.key("replicas"), diags) as usize;
    let stream = cfg.stream.unwrap_or_else(|| queue.replace('.', "_"));
    if !valid_nats_name(&stream) || stream.ends_with("_dead") {
        diags.push(
            &path.key("stream"),
            format!("`{stream}` is not a valid stream name: use letters, digits, `_` or `-`, not ending in `_dead`"),
        );
    }
    let subject = cfg
        .subject
        .unwrap_or_else(|| format!("sluicegate.queue.{stream}"));
    if !valid_subject(&subject) {
        diags.push(
            &path.key("subject"),
            format!("`{subject}` is not a literal NATS subject"),
        );
    }
    let consumer = cfg.consumer.unwrap_or_else(|| "sluicegate".into());
    if !valid_nats_name(&consumer) {
        diags.push(
            &path.key("consumer"),
            format!("`{consumer}` is not a valid consumer name"),
        );
    }
    let ack_wait = in_range(
        cfg.ack_wait_ms,
        60_000,
        1_000,
        3_600_000,
        &path.key("ack_wait_ms"),
        diags,
    );
    let publish_timeout = in_range(
        cfg.publish_timeout_ms,
        5_000,
        10,
        120_000,
        &path.key("publish_timeout_ms"),
        diags,
    );
    let user = match (cfg.user, cfg.password) {
        (Some(u), Some(p)) => Some((u, p)),
        (None, None) => None,
        _ => {
            diags.push(path, "`user` and `password` go together");
            None
        }
    };
    Some(NatsSettings {
        urls,
        replicas,
        dead_stream: format!("{stream}_dead"),
        dead_subject: format!("{subject}.dead"),
        stream,
        subject,
        consumer,
        ack_wait: Duration::from_millis(ack_wait),
        publish_timeout: Duration::from_millis(publish_timeout),
        user,
        token: cfg.token,
    })
}

fn pubsub_settings(
    cfg: Option<PubSubConfig>,
    path: &Path,
    diags: &mut Diags,
) -> Option<PubSubSettings> {
    let Some(cfg) = cfg else {
        diags.push(
            path,
            "the `pubsub` backend needs a `pubsub:` section with `project` and `topic`",
        );
        return None;
    };
    let name_ok = |n: &str| {
        !n.is_empty()
            && n.len() <= 255
            && n.bytes().all(|b| {
                b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b'+' | b'%')
            })
    };
    let project = cfg.project.unwrap_or_default();
    if !name_ok(&project) {
        diags.push(&path.key("project"), "a Google Cloud project id is needed");
    }
    let topic = cfg.topic.unwrap_or_default();
    if !name_ok(&topic) {
        diags.push(
            &path.key("topic"),
            "a topic name is needed (letters, digits, `-_.~+%`)",
        );
    }
    let emulator_host = cfg
        .emulator_host
        .or_else(|| std::env::var("PUBSUB_EMULATOR_HOST").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty());
    if let Some(h) = &emulator_host {
        if h.rsplit_once(':')
            .is_none_or(|(host, p)| host.is_empty() || p.parse::<u16>().is_err())
        {
            diags.push(
                &path.key("emulator_host"),
                format!("`{h}` is not host:port"),
            );
        }
    }
    let credentials = cfg.credentials.filter(|c| !c.trim().is_empty());
    if let Some(c) = &credentials {
        let ok = serde_json::from_str::<serde_json::Value>(c)
            .ok()
            .is_some_and(|v| v["client_email"].is_string() && v["private_key"].is_string());
        if !ok {
            diags.push(
                &path.key("credentials"),
                "must be a service-account key (JSON with `client_email` and `private_key`)",
            );
        }
    }
    let publish_timeout = in_range(
        cfg.publish_timeout_ms,
        10_000,
        10,
        120_000,
        &path.key("publish_timeout_ms"),
        diags,
    );
    Some(PubSubSettings {
        project,
        topic,
        emulator_host,
        credentials,
        publish_timeout: Duration::from_millis(publish_timeout),
    })
}

/// Whether `name` can be a queue (and directory) name.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

fn statuses(list: &[StatusPattern], path: &Path, diags: &mut Diags) -> StatusSet {
    let mut set = StatusSet::empty();
    for (i, p) in list.iter().enumerate() {
        let text = match p {
            StatusPattern::Code(c) => c.to_string(),
            StatusPattern::Text(t) => t.clone(),
        };
        if let Err(e) = set.insert_pattern(&text) {
            diags.push(&path.index(i), e);
        }
    }
    set
}

fn in_range(
    v: Option<u64>,
    default: u64,
    min: u64,
    max: u64,
    path: &Path,
    diags: &mut Diags,
) -> u64 {
    let v = v.unwrap_or(default);
    if !(min..=max).contains(&v) {
        diags.push(path, format!("must be between {min} and {max}"));
    }
    v.clamp(min, max)
}

/// Validates a route's `queue:` block at `path`; `route` is the route's name.
pub fn validate(
    cfg: QueueConfig,
    route: &str,
    path: &Path,
    diags: &mut Diags,
) -> Option<RouteQueue> {
    let before = diags.0.len();
    let name = cfg.name.unwrap_or_else(|| route.to_string());
    if !valid_name(&name) {
        diags.push(
            &path.key("name"),
            format!("`{name}` is not a valid queue name: use 1 to 64 letters, digits, `_`, `-` or `.`, not starting with `.`"),
        );
    }
    let retry = retry_policy(&cfg.retry, cfg.dead_letter_on.as_deref(), path, diags);
    let concurrency = in_range(
        cfg.concurrency.map(|c| c as u64),
        DEFAULT_CONCURRENCY as u64,
        1,
        1024,
        &path.key("concurrency"),
        diags,
    ) as usize;
    let engine = match cfg.backend.as_deref() {
        None | Some("local") => Engine::Local,
        Some("nats") => nats_settings(cfg.nats.clone(), &name, &path.key("nats"), diags)
            .map_or(Engine::Local, Engine::Nats),
        Some("pubsub") => pubsub_settings(cfg.pubsub.clone(), &path.key("pubsub"), diags)
            .map_or(Engine::Local, Engine::PubSub),
        Some(other) => {
            diags.push(
                &path.key("backend"),
                format!("unknown backend `{other}`; expected local, nats or pubsub"),
            );
            Engine::Local
        }
    };
    if !matches!(engine, Engine::Nats(_)) && cfg.nats.is_some() && cfg.backend.is_some() {
        diags.push(
            &path.key("nats"),
            format!("only read with `backend: nats`, not `{}`", engine.name()),
        );
    }
    if !matches!(engine, Engine::PubSub(_)) && cfg.pubsub.is_some() && cfg.backend.is_some() {
        diags.push(
            &path.key("pubsub"),
            format!("only read with `backend: pubsub`, not `{}`", engine.name()),
        );
    }
    let ordering = match cfg.ordering.as_deref() {
        // The engine redelivers a failed message later while others pass it: unordered.
        None if matches!(engine, Engine::Nats(_)) => Ordering::Unordered,
        Some("fifo") if matches!(engine, Engine::Nats(_)) => {
            diags.push(
                &path.key("ordering"),
                "`fifo` is not supported by the nats backend (a message waiting for its retry does not hold back the others); use `unordered`",
            );
            Ordering::Unordered
        }
        None | Some("fifo") => Ordering::Fifo,
        Some("unordered") => Ordering::Unordered,
        Some(other) => {
            diags.push(
                &path.key("ordering"),
                format!("unknown ordering `{other}`; expected fifo or unordered"),
            );
            Ordering::Fifo
        }
    };
    let max_bytes = in_range(
        cfg.max_bytes,
        DEFAULT_MAX_BYTES,
        MIN_MAX_BYTES,
        u64::MAX / 2,
        &path.key("max_bytes"),
        diags,
    );
    let ack = ack(cfg.ack, &path.key("ack"), diags);
    if diags.0.len() > before {
        return None;
    }
    Some(RouteQueue {
        name,
        ack: ack?,
        settings: Arc::new(QueueSettings {
            retry,
            concurrency,
            ordering,
            max_bytes,
        }),
        engine: Arc::new(engine),
    })
}

/// What the route around a `queue:` block offers.
#[derive(Debug, Clone, Copy)]
pub struct RouteCtx<'a> {
    /// The route's name (the queue's default name).
    pub route: &'a str,
    /// Whether the route has an `upstream` (required: deliveries go there).
    pub has_upstream: bool,
    /// Whether one of the route's own plugins answers in the content phase (never reached
    /// on a queued route, so it is a configuration error).
    pub has_content_plugin: bool,
}

/// Validates a route's `queue:` at `path`, including the checks that involve the route
/// (an upstream, no content plugin) and the other routes (`names`: queue names taken).
pub fn validate_route(
    cfg: QueueConfig,
    route: &RouteCtx<'_>,
    path: &Path,
    names: &mut std::collections::HashSet<String>,
    diags: &mut Diags,
) -> Option<Arc<RouteQueue>> {
    if !route.has_upstream {
        diags.push(path, "a queued route needs an `upstream` to deliver to");
    }
    if route.has_content_plugin {
        diags.push(
            path,
            "a queued route cannot have a content-phase plugin: the queue answers instead",
        );
    }
    let name = cfg.name.clone().unwrap_or_else(|| route.route.to_string());
    let unique = names.insert(name.clone());
    if !unique {
        diags.push(
            &path.key("name"),
            format!("queue `{name}` is already used by another route"),
        );
    }
    let q = validate(cfg, route.route, path, diags)?;
    (unique && route.has_upstream && !route.has_content_plugin).then(|| Arc::new(q))
}

fn retry_policy(
    cfg: &RetryConfig,
    dead_letter_on: Option<&[StatusPattern]>,
    path: &Path,
    diags: &mut Diags,
) -> RetryPolicy {
    let d = RetryPolicy::default();
    let rp = path.key("retry");
    let initial = in_range(
        cfg.initial_backoff_ms,
        defaults::INITIAL_BACKOFF_MS,
        1,
        3_600_000,
        &rp.key("initial_backoff_ms"),
        diags,
    );
    let max_default = defaults::MAX_BACKOFF_MS.max(initial);
    let max = in_range(
        cfg.max_backoff_ms,
        max_default,
        initial,
        24 * 3_600_000,
        &rp.key("max_backoff_ms"),
        diags,
    );
    let multiplier = cfg.multiplier.unwrap_or(defaults::MULTIPLIER);
    if !(1.0..=10.0).contains(&multiplier) {
        diags.push(&rp.key("multiplier"), "must be between 1 and 10");
    }
    let max_attempts = in_range(
        cfg.max_attempts.map(u64::from),
        u64::from(defaults::MAX_ATTEMPTS),
        1,
        1_000_000,
        &rp.key("max_attempts"),
        diags,
    );
    let max_age = match cfg.max_age_ms.unwrap_or(defaults::MAX_AGE_MS) {
        0 => None,
        ms => Some(Duration::from_millis(ms)),
    };
    RetryPolicy {
        on_status: cfg
            .on_status
            .as_deref()
            .map_or(d.on_status, |l| statuses(l, &rp.key("on_status"), diags)),
        dead_letter_on: dead_letter_on.map_or(d.dead_letter_on, |l| {
            statuses(l, &path.key("dead_letter_on"), diags)
        }),
        initial_backoff: Duration::from_millis(initial),
        max_backoff: Duration::from_millis(max),
        multiplier: multiplier.clamp(1.0, 10.0),
        max_attempts: max_attempts as u32,
        max_age,
    }
}

fn ack(cfg: AckConfig, path: &Path, diags: &mut Diags) -> Option<Ack> {
    let code = cfg.status.unwrap_or(202);
    let status = match StatusCode::from_u16(code) {
        Ok(s) if s.is_success() => s,
        _ => {
            diags.push(&path.key("status"), "must be a 2xx status");
            StatusCode::ACCEPTED
        }
    };
    let mut headers = HeaderMap::new();
    for (name, value) in &cfg.headers {
        if let Some((n, v)) =
            sluicegate_core::phase::header_pair(name, value, &path.key("headers").key(name), diags)
        {
            headers.append(n, v);
        }
    }
    let body = match (cfg.body, status) {
        (Some(b), StatusCode::NO_CONTENT | StatusCode::RESET_CONTENT) if !b.is_empty() => {
            diags.push(&path.key("body"), format!("a {code} answer has no body"));
            AckBody::Empty
        }
        (_, StatusCode::NO_CONTENT | StatusCode::RESET_CONTENT) => AckBody::Empty,
        (Some(b), _) => AckBody::Template(b),
        (None, _) => AckBody::DefaultJson,
    };
    Some(Ack {
        status,
        headers,
        body,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> Result<RouteQueue, Vec<String>> {
        let node = sluicegate_core::yaml::parse(yaml, &std::collections::HashMap::new())
            .map_err(|d| vec![format!("{d:?}")])?;
        let path = Path::root().key("queue");
        let cfg: QueueConfig =
            sluicegate_core::de::from_node(&node, &path).map_err(|d| vec![d.path])?;
        let mut diags = Diags::default();
        validate(cfg, "hooks", &path, &mut diags)
            .ok_or_else(|| diags.0.iter().map(|d| d.path.clone()).collect())
    }

    #[test]
    fn defaults_to_the_route_name_fifo_and_a_202_json_ack() {
        let q = parse("{}").unwrap();
        assert_eq!(q.name, "hooks");
        assert_eq!(q.settings.ordering, Ordering::Fifo);
        assert_eq!(q.settings.concurrency, 1);
        let r = q.ack.render("hooks", 42, "rid", "fsynced");
        assert_eq!(r.status, 202);
        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(v["id"], 42);
        assert_eq!(r.headers["x-sluicegate-message-id"], "42");
    }

    #[test]
    fn renders_a_slack_style_empty_200() {
        let q = parse("{ack: {status: 200, body: ''}}").unwrap();
        let r = q.ack.render("hooks", 1, "rid", "fsynced");
        assert_eq!(r.status, 200);
        assert!(r.body.is_empty());
        assert!(r.headers.get("content-type").is_none());
    }

    #[test]
    fn fills_body_templates_and_custom_headers() {
        let q = parse("{ack: {body: 'ok {id} in {queue}', headers: {X-A: b}}}").unwrap();
        let r = q.ack.render("hooks", 9, "rid", "fsynced");
        assert_eq!(&r.body[..], b"ok 9 in hooks");
        assert_eq!(r.headers["x-a"], "b");
        assert_eq!(r.headers["content-type"], "text/plain; charset=utf-8");
    }

    #[test]
    fn reports_every_bad_setting_with_its_path() {
        let errs = parse(
            "{name: '../x', ack: {status: 500}, concurrency: 0, ordering: random, max_bytes: 10, dead_letter_on: ['7xx'], retry: {on_status: [42], multiplier: 0.5, initial_backoff_ms: 0, max_attempts: 0}}",
        )
        .unwrap_err();
        for p in [
            "queue.name",
            "queue.ack.status",
            "queue.concurrency",
            "queue.ordering",
            "queue.max_bytes",
            "queue.dead_letter_on[0]",
            "queue.retry.on_status[0]",
            "queue.retry.multiplier",
            "queue.retry.initial_backoff_ms",
            "queue.retry.max_attempts",
        ] {
            assert!(errs.iter().any(|e| e == p), "no error at {p}: {errs:?}");
        }
    }

    #[test]
    fn zero_max_age_means_no_limit() {
        let q = parse("{retry: {max_age_ms: 0, on_status: ['5xx', 429, 408]}}").unwrap();
        assert_eq!(q.settings.retry.max_age, None);
        assert!(q.settings.retry.on_status.contains(408));
    }
}
