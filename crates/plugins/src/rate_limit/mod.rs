//! `rate_limit`: limits per second, minute, hour or day, with bursts, counted per client
//! address, header, consumer, JWT claim or script-chosen key. Over a limit, the request
//! gets 429 with `Retry-After`; every answer carries the `RateLimit-*` headers of the limit
//! closest to running out.
//!
//! The `local` policy counts in the node (shared by its workers, kept across reloads);
//! the `redis` policy counts in Redis, shared by every node, in one round trip. While
//! Redis fails, requests go through unchecked (`fail_open`) or get 503 (`fail_closed`).
//! The algorithm (GCRA) and both stores are `sluicegate-ratelimit`'s.

mod config;
#[cfg(test)]
mod tests;

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use http::{HeaderName, HeaderValue};
use sha2::{Digest, Sha256};
use smallvec::SmallVec;

pub use config::{KeyConfig, OnError, Policy, RateLimitConfig};
use sluicegate_core::context::{Consumer, RequestCtx};
use sluicegate_core::diag::{Diags, Path};
use sluicegate_core::error::{rejection, Kind};
use sluicegate_core::yaml::Node;
use sluicegate_jwt::Claims;
use sluicegate_ratelimit::local::LocalLimiter;
use sluicegate_ratelimit::metrics::Counters;
use sluicegate_ratelimit::redis::{Endpoint, RedisLimiter, RedisSettings, StoreError};
use sluicegate_ratelimit::{Limit, Period, ScriptKey, Verdict};

use super::ip_restriction::cidr::CidrSet;
use super::ip_restriction::{client_ip, ranges};
use super::json_path::{as_text, JsonPath};
use super::{parse_config, BuildCtx, Flow, Phase, PhaseSet, Plugin, Step};

static RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("ratelimit-limit");
static RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("ratelimit-remaining");
static RATELIMIT_RESET: HeaderName = HeaderName::from_static("ratelimit-reset");
static RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");

/// Keys longer than this are counted by their SHA-256, so a huge header value costs no
/// more memory than a short one.
const MAX_KEY_BYTES: usize = 128;

/// The `rate_limit` plugin.
#[derive(Debug)]
pub struct RateLimit {
    key: Key,
    trusted: CidrSet,
    store: Store,
    headers: bool,
    /// `RateLimit-Policy`, built once.
    policy_header: Option<HeaderValue>,
    counters: Arc<Counters>,
}

#[derive(Debug)]
enum Key {
    ClientIp,
    Consumer,
    Script,
    Header(HeaderName),
    Claim(JsonPath),
}

#[derive(Debug)]
enum Store {
    Local(LocalLimiter),
    Redis {
        limiter: Box<RedisLimiter>,
        on_error: OnError,
    },
}

/// Builds a `rate_limit` plugin from its config.
pub fn build(
    config: &Node,
    path: &Path,
    ctx: &BuildCtx<'_>,
    diags: &mut Diags,
) -> Option<Arc<dyn Plugin>> {
    let cfg: RateLimitConfig = parse_config(config, path, diags)?;
    let before = diags.0.len();
    let limits = limits(&cfg, path, diags);
    let key = match &cfg.key {
        KeyConfig::ClientIp => Some(Key::ClientIp),
        KeyConfig::Consumer => Some(Key::Consumer),
        KeyConfig::Script => Some(Key::Script),
        KeyConfig::Header(h) => match HeaderName::from_bytes(h.as_bytes()) {
            Ok(n) => Some(Key::Header(n)),
            Err(_) => {
                diags.push(
                    &path.key("key").key("header"),
                    format!("invalid header name `{h}`"),
                );
                None
            }
        },
        KeyConfig::Claim(c) => match JsonPath::parse(c) {
            Ok(p) if !p.is_root() => Some(Key::Claim(p)),
            Ok(_) => {
                diags.push(&path.key("key").key("claim"), "name a claim, not `$`");
                None
            }
            Err(e) => {
                diags.push(&path.key("key").key("claim"), e);
                None
            }
        },
    };
    let trusted = cfg
        .trusted_proxies
        .as_ref()
        .map_or_else(CidrSet::default, |l| {
            ranges(l, &path.key("trusted_proxies"), false, diags)
        });
    if let Some(b) = &cfg.bucket {
        if b.is_empty() || b.len() > 100 || b.contains(['{', '}', '|']) {
            diags.push(
                &path.key("bucket"),
                "a bucket is 1 to 100 characters, without `{`, `}` and `|`",
            );
        }
    }
    if cfg.max_keys == 0 {
        diags.push(&path.key("max_keys"), "must be at least 1");
    }
    // `label` names the counts in `/metrics`; `bucket` keeps a bucket named like a route
    // apart from that route's own counts.
    let (bucket, label) = match (&cfg.bucket, ctx.route) {
        (Some(b), _) => (format!("bucket:{b}"), b.clone()),
        (None, Some(route)) => (format!("route:{route}"), route.to_string()),
        (None, None) => ("global".to_string(), "global".to_string()),
    };
    let redis_url = cfg.redis.as_ref().map(|r| r.url.trim()).unwrap_or("");
    let policy = cfg.policy.unwrap_or(if redis_url.is_empty() {
        Policy::Local
    } else {
        Policy::Redis
    });
    if diags.0.len() != before {
        return None;
    }
    let (key, limits) = (key?, limits?);
    // The scope names what is counted, so two entries that count differently never share.
    let scope = format!("{bucket}|{}", key.describe());
    let store = match policy {
        Policy::Local => match LocalLimiter::new(&scope, &limits, cfg.max_keys) {
            Ok(l) => Store::Local(l),
            Err(e) => {
                diags.push(&path.key("limits"), e);
                return None;
            }
        },
        Policy::Redis => redis_store(&cfg, &scope, &limits, path, diags)?,
    };
    Some(Arc::new(RateLimit {
        key,
        trusted,
        store,
        headers: cfg.headers,
        policy_header: policy_header(&limits),
        counters: sluicegate_ratelimit::metrics::counters(&label),
    }))
}

fn limits(cfg: &RateLimitConfig, path: &Path, diags: &mut Diags) -> Option<Vec<Limit>> {
    let at = path.key("limits");
    let max = sluicegate_ratelimit::local::MAX_LIMITS;
    if cfg.limits.is_empty() || cfg.limits.len() > max {
        diags.push(
            &at,
            format!("give 1 to {max} limits (`{{rate: 10, per: second}}`)"),
        );
        return None;
    }
    let mut out = Vec::new();
    for (i, l) in cfg.limits.iter().enumerate() {
        let Some(period) = Period::parse(&l.per) else {
            diags.push(
                &at.index(i).key("per"),
                format!(
                    "unknown period `{}`; expected one of: {}",
                    l.per,
                    Period::NAMES
                ),
            );
            continue;
        };
        match Limit::new(l.rate, period, l.burst) {
            Ok(limit) if out.contains(&limit) => {
                diags.push(&at.index(i), "the same limit twice");
            }
            Ok(limit) => out.push(limit),
            Err(e) => diags.push(&at.index(i), e),
        }
    }
    (out.len() == cfg.limits.len()).then_some(out)
}

fn redis_store(
    cfg: &RateLimitConfig,
    scope: &str,
    limits: &[Limit],
    path: &Path,
    diags: &mut Diags,
) -> Option<Store> {
    let at = path.key("redis");
    let Some(r) = cfg.redis.as_ref().filter(|r| !r.url.trim().is_empty()) else {
        diags.push(&path.key("policy"), "the `redis` policy needs `redis.url`");
        return None;
    };
    let endpoint = match Endpoint::parse(r.url.trim()) {
        Ok(e) => e,
        Err(e) => {
            diags.push(&at.key("url"), e);
            return None;
        }
    };
    if !(1..=60_000).contains(&r.timeout_ms) {
        diags.push(&at.key("timeout_ms"), "must be 1..=60000");
        return None;
    }
    if r.prefix.is_empty() || r.prefix.contains(['{', '}']) {
        diags.push(
            &at.key("prefix"),
            "must not be empty nor contain `{` or `}`",
        );
        return None;
    }
    let settings = RedisSettings {
        endpoint,
        timeout: Duration::from_millis(r.timeout_ms),
        backoff: Duration::from_millis(r.backoff_ms),
        prefix: r.prefix.clone(),
    };
    match RedisLimiter::new(scope, limits, settings) {
        Ok(limiter) => Some(Store::Redis {
            limiter: Box::new(limiter),
            on_error: r.on_error,
        }),
        Err(e) => {
            diags.push(&path.key("limits"), e);
            None
        }
    }
}

/// `RateLimit-Policy`: `10;w=1, 1000;w=3600;burst=50`.
fn policy_header(limits: &[Limit]) -> Option<HeaderValue> {
    let text = limits
        .iter()
        .map(|l| {
            let mut s = format!("{};w={}", l.rate, l.period.seconds());
            if l.burst != l.rate {
                s.push_str(&format!(";burst={}", l.burst));
            }
            s
        })
        .collect::<Vec<_>>()
        .join(", ");
    HeaderValue::from_str(&text).ok()
}

impl Key {
    fn describe(&self) -> String {
        match self {
            Key::ClientIp => "client_ip".into(),
            Key::Consumer => "consumer".into(),
            Key::Script => "script".into(),
            Key::Header(h) => format!("header:{h}"),
            Key::Claim(c) => format!("claim:{c}"),
        }
    }
}

/// A request's key: on the stack unless long.
type KeyBuf = SmallVec<[u8; 64]>;

/// `tag:value`, with a long value replaced by its SHA-256.
fn tagged(tag: &str, value: &[u8]) -> KeyBuf {
    let mut out = KeyBuf::new();
    out.extend_from_slice(tag.as_bytes());
    out.push(b':');
    if value.len() <= MAX_KEY_BYTES {
        out.extend_from_slice(value);
    } else {
        out.extend_from_slice(b"sha256:");
        for b in Sha256::digest(value) {
            out.extend_from_slice(format!("{b:02x}").as_bytes());
        }
    }
    out
}

/// `ip:ADDRESS`, written without the formatting machinery for IPv4 (most clients).
fn address_key(ip: std::net::IpAddr) -> KeyBuf {
    let mut out = KeyBuf::new();
    out.extend_from_slice(b"ip:");
    match ip {
        std::net::IpAddr::V4(v4) => {
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                if octet >= 100 {
                    out.push(b'0' + octet / 100);
                }
                if octet >= 10 {
                    out.push(b'0' + octet / 10 % 10);
                }
                out.push(b'0' + octet % 10);
            }
        }
        std::net::IpAddr::V6(v6) => {
            use std::io::Write;
            let mut text = [0u8; 48];
            let mut rest = &mut text[..];
            // An IPv6 address is at most 45 characters: the write cannot fail.
            let _ = write!(rest, "{v6}");
            let len = 48 - rest.len();
            out.extend_from_slice(&text[..len]);
        }
    }
    out
}

impl RateLimit {
    /// The request's key; a request without the configured one (no header, no consumer,
    /// no claim, no script key) is counted by its client address. `None` when the client
    /// address a trusted proxy forwarded is malformed.
    fn key_of(&self, ctx: &RequestCtx) -> Option<KeyBuf> {
        let found = match &self.key {
            Key::ClientIp => None,
            Key::Header(h) => ctx
                .head
                .headers
                .get(h)
                .map(|v| tagged("header", v.as_bytes())),
            Key::Consumer => ctx
                .vars
                .get::<Consumer>()
                .map(|c| tagged("consumer", c.0.as_bytes())),
            Key::Script => ctx
                .vars
                .get::<ScriptKey>()
                .map(|k| tagged("script", k.0.as_bytes())),
            Key::Claim(path) => ctx
                .vars
                .get::<Claims>()
                .and_then(|c| path.get_in(&c.0))
                .filter(|v| !v.is_null())
                .map(|v| tagged("claim", as_text(v).as_bytes())),
        };
        match found {
            Some(k) => Some(k),
            None => Some(address_key(client_ip(ctx, &self.trusted)?)),
        }
    }

    fn answer(&self, ctx: &mut RequestCtx, v: Verdict) -> Flow {
        use std::sync::atomic::Ordering::Relaxed;
        if self.headers {
            let h = &mut ctx.response_headers;
            h.insert(RATELIMIT_LIMIT.clone(), number(v.limit));
            h.insert(RATELIMIT_REMAINING.clone(), number(v.remaining));
            h.insert(RATELIMIT_RESET.clone(), number(v.reset_secs()));
            if let Some(p) = &self.policy_header {
                h.insert(RATELIMIT_POLICY.clone(), p.clone());
            }
        }
        if v.admitted {
            self.counters.admitted.fetch_add(1, Relaxed);
            return Flow::Continue;
        }
        self.counters.limited.fetch_add(1, Relaxed);
        let wait = v.retry_after_secs();
        tracing::debug!(
            request_id = ctx.request_id_str(),
            retry_after = wait,
            "Request over its rate limit refused."
        );
        let mut r = rejection(
            Kind::RateLimited,
            format!("rate limit exceeded; retry in {wait} s"),
            &ctx.request_id,
        );
        r.headers
            .insert(http::header::RETRY_AFTER, HeaderValue::from(wait));
        Flow::Respond(r)
    }

    fn store_failed(&self, ctx: &RequestCtx, e: &StoreError, on_error: OnError) -> Flow {
        use std::sync::atomic::Ordering::Relaxed;
        if *e != StoreError::Backoff {
            // Once per failure: the backoff that follows answers without asking.
            self.counters.store_error(e.kind());
            tracing::warn!(
                request_id = ctx.request_id_str(),
                error = %e,
                on_error = match on_error {
                    OnError::FailOpen => "fail_open",
                    OnError::FailClosed => "fail_closed",
                },
                "The rate-limit store failed."
            );
        }
        match on_error {
            OnError::FailOpen => {
                self.counters.failed_open.fetch_add(1, Relaxed);
                Flow::Continue
            }
            OnError::FailClosed => {
                self.counters.failed_closed.fetch_add(1, Relaxed);
                Flow::Respond(rejection(
                    Kind::Unavailable,
                    "the rate-limit store is unavailable",
                    &ctx.request_id,
                ))
            }
        }
    }
}

/// `n` as a header value; the numbers headers carry most often are made once, so sending
/// them allocates nothing.
fn number(n: u64) -> HeaderValue {
    const CACHED: u64 = 1024;
    static SMALL: OnceLock<Vec<HeaderValue>> = OnceLock::new();
    let small = SMALL.get_or_init(|| {
        (0..=CACHED)
            .map(|i| HeaderValue::from_static(Box::leak(i.to_string().into_boxed_str())))
            .collect()
    });
    match small.get(n as usize) {
        Some(v) => v.clone(),
        None => HeaderValue::from(n),
    }
}

impl Plugin for RateLimit {
    fn name(&self) -> &'static str {
        "rate_limit"
    }

    fn phases(&self) -> PhaseSet {
        PhaseSet::of(&[Phase::Access])
    }

    fn access<'a>(&'a self, ctx: &'a mut RequestCtx) -> Step<'a> {
        let Some(key) = self.key_of(ctx) else {
            return Step::Ready(Ok(Flow::Respond(rejection(
                Kind::BadRequest,
                "the client address in X-Forwarded-For is malformed",
                &ctx.request_id,
            ))));
        };
        match &self.store {
            Store::Local(limiter) => {
                let v = limiter.check(&key);
                Step::Ready(Ok(self.answer(ctx, v)))
            }
            Store::Redis { limiter, on_error } => Step::Wait(Box::pin(async move {
                Ok(match limiter.check(&key).await {
                    Ok(v) => self.answer(ctx, v),
                    Err(e) => self.store_failed(ctx, &e, *on_error),
                })
            })),
        }
    }
}
