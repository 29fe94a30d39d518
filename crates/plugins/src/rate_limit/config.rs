//! Configuration of the `rate_limit` plugin.

use serde::Deserialize;

use crate::ip_restriction::RangeList;

/// `config` of a `rate_limit` plugin entry.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    /// The limits; a request must fit every one.
    pub limits: Vec<LimitConfig>,
    /// What is counted: the client address by default.
    #[serde(default)]
    pub key: KeyConfig,
    /// Proxies in front of the gateway whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Option<RangeList>,
    /// Entries with the same bucket share their counts (across routes); by default each
    /// route counts apart, and a global entry counts over every route.
    pub bucket: Option<String>,
    /// `local` or `redis`; by default `redis` when `redis.url` is set and not empty.
    pub policy: Option<Policy>,
    /// The Redis server of the `redis` policy.
    pub redis: Option<RedisConfig>,
    /// Send `RateLimit-Limit`, `RateLimit-Remaining`, `RateLimit-Reset` and
    /// `RateLimit-Policy` on every response.
    #[serde(default = "yes")]
    pub headers: bool,
    /// Keys the local policy tracks per limit before new ones share one count.
    #[serde(default = "default_max_keys")]
    pub max_keys: usize,
}

/// One limit.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitConfig {
    /// Requests per `per`.
    pub rate: u64,
    /// `second`, `minute`, `hour` or `day`.
    pub per: String,
    /// Requests that may come back to back; `rate` by default.
    pub burst: Option<u64>,
}

/// Where the counts are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Policy {
    /// In this node, shared by its workers.
    Local,
    /// In Redis, shared by every node that uses it.
    Redis,
}

/// `redis:` of the `redis` policy.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisConfig {
    /// `redis://[[user]:password@]host[:port][/db]`; empty means none (local policy).
    #[serde(default)]
    pub url: String,
    /// Connecting plus the round trip.
    #[serde(default = "default_timeout")]
    pub timeout_ms: u64,
    /// After a failure, Redis is not asked for this long (0: every request asks).
    #[serde(default = "default_backoff")]
    pub backoff_ms: u64,
    /// Prepended to every Redis key.
    #[serde(default = "default_prefix")]
    pub prefix: String,
    /// What a request gets while Redis fails.
    #[serde(default)]
    pub on_error: OnError,
}

/// What happens to a request while the shared store fails.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnError {
    /// Let it through, unchecked (counted in `/metrics`).
    #[default]
    FailOpen,
    /// Refuse it with 503.
    FailClosed,
}

/// What a request is counted by.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum KeyConfig {
    /// `client_ip`: the client address (through `trusted_proxies`).
    #[default]
    ClientIp,
    /// `consumer`: who `key_auth` or `jwt` identified.
    Consumer,
    /// `script`: the value a Lua script gave `sluicegate.ratelimit.set_key`.
    Script,
    /// `{header: NAME}`: a request header's value.
    Header(String),
    /// `{claim: PATH}`: a claim of the token the `jwt` plugin verified.
    Claim(String),
}

impl<'de> Deserialize<'de> for KeyConfig {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = KeyConfig;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(
                    "`client_ip`, `consumer`, `script`, `{header: NAME}` or `{claim: PATH}`",
                )
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<KeyConfig, E> {
                match v {
                    "client_ip" => Ok(KeyConfig::ClientIp),
                    "consumer" => Ok(KeyConfig::Consumer),
                    "script" => Ok(KeyConfig::Script),
                    other => Err(E::custom(format!(
                        "unknown key `{other}`; expected `client_ip`, `consumer`, `script`, `{{header: NAME}}` or `{{claim: PATH}}`"
                    ))),
                }
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<KeyConfig, A::Error> {
                use serde::de::Error;
                let Some((k, v)) = map.next_entry::<String, String>()? else {
                    return Err(A::Error::custom("give `header: NAME` or `claim: PATH`"));
                };
                if map.next_key::<String>()?.is_some() {
                    return Err(A::Error::custom(
                        "give one of `header` and `claim`, not both",
                    ));
                }
                match k.as_str() {
                    "header" => Ok(KeyConfig::Header(v)),
                    "claim" => Ok(KeyConfig::Claim(v)),
                    other => Err(A::Error::custom(format!(
                        "unknown key source `{other}`; expected `header` or `claim`"
                    ))),
                }
            }
        }
        d.deserialize_any(V)
    }
}

fn yes() -> bool {
    true
}

fn default_max_keys() -> usize {
    sluicegate_ratelimit::local::DEFAULT_MAX_KEYS
}

fn default_timeout() -> u64 {
    100
}

fn default_backoff() -> u64 {
    1000
}

fn default_prefix() -> String {
    "sluicegate:rl".into()
}
