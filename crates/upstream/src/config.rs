//! The upstream settings this module adds to the configuration format (`hash_on`,
//! `health`, `circuit_breaker`, SRV targets) and their validation into runtime settings.
//! Every error names its path; defaults are documented in docs/upstreams.md.

use std::time::Duration;

use super::balance::{HashOn, Policy};
use super::live::{SpecKind, TargetSpec};
use sluicegate_config::upstream::{
    ActiveConfig, CircuitConfig, HashOnConfig, HealthConfig, StatusSpec,
};
use sluicegate_core::diag::{Diags, Path};

/// Validated active check settings.
#[derive(Debug, Clone, PartialEq)]
pub struct ActiveCheck {
    /// Path (and query) to GET.
    pub path: http::uri::PathAndQuery,
    /// `Host` header override.
    pub host: Option<String>,
    /// Between checks.
    pub interval: Duration,
    /// Per check.
    pub timeout: Duration,
    /// Successes to come back.
    pub healthy_threshold: u32,
    /// Failures to go down.
    pub unhealthy_threshold: u32,
    /// Healthy statuses: (low, high) inclusive ranges.
    pub expected: Vec<(u16, u16)>,
}

impl ActiveCheck {
    /// Whether `status` counts as healthy.
    pub fn expects(&self, status: u16) -> bool {
        self.expected
            .iter()
            .any(|(lo, hi)| (*lo..=*hi).contains(&status))
    }
}

/// Validated passive check settings.
#[derive(Debug, Clone, PartialEq)]
pub struct Passive {
    /// Failures in a row to eject.
    pub max_failures: u32,
    /// Statuses counted as failures.
    pub failure_statuses: Vec<u16>,
    /// First ejection.
    pub backoff: Duration,
    /// Longest ejection.
    pub max_backoff: Duration,
}

/// Health settings of an upstream.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Health {
    /// Active checks, if on.
    pub active: Option<ActiveCheck>,
    /// Passive checks, if on.
    pub passive: Option<Passive>,
    /// With every target unhealthy: 503 instead of trying them anyway.
    pub fail_closed: bool,
}

/// Circuit breaker settings of an upstream (0 = no limit).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Circuit {
    /// Requests in flight per target.
    pub max_connections: usize,
    /// Requests waiting for a slot.
    pub max_pending: usize,
    /// Longest wait for a slot.
    pub pending_timeout: Duration,
}

/// Defaults (also in docs/upstreams.md).
pub mod defaults {
    /// Envoy and Kong check every 5-10 s; 5 s finds a dead target within ~15 s at 3 failures.
    pub const CHECK_INTERVAL_MS: u64 = 5_000;
    /// A check slower than this counts as a failure.
    pub const CHECK_TIMEOUT_MS: u64 = 2_000;
    /// Successes in a row to come back (Envoy's default is 1, Kong's 1-2).
    pub const HEALTHY_THRESHOLD: u32 = 2;
    /// Failures in a row to go down.
    pub const UNHEALTHY_THRESHOLD: u32 = 3;
    /// Envoy outlier detection's `consecutive_5xx` default is 5.
    pub const MAX_FAILURES: u32 = 5;
    /// Envoy's `base_ejection_time` is 30 s; 10 s brings a recovered target back sooner.
    pub const BACKOFF_MS: u64 = 10_000;
    /// Envoy's `max_ejection_time` default is 300 s.
    pub const MAX_BACKOFF_MS: u64 = 300_000;
    /// Waiting for a circuit breaker slot at most this long.
    pub const PENDING_TIMEOUT_MS: u64 = 1_000;
}

/// The policy from `balance` and `hash_on`.
pub fn policy(
    balance: &str,
    hash_on: Option<HashOnConfig>,
    path: &Path,
    diags: &mut Diags,
) -> Policy {
    let policy = match balance {
        "round_robin" => Policy::RoundRobin,
        "least_connections" => Policy::LeastConnections,
        "random_two_choices" => Policy::RandomTwoChoices,
        "peak_ewma" => Policy::PeakEwma,
        "consistent_hash" => {
            let on = hash_on.as_ref().map(|h| {
                let set = usize::from(h.header.is_some())
                    + usize::from(h.cookie.is_some())
                    + usize::from(h.client_ip);
                if set != 1 {
                    diags.push(
                        &path.key("hash_on"),
                        "give exactly one of `header`, `cookie` or `client_ip: true`",
                    );
                }
                if let Some(name) = &h.header {
                    match HeaderName::from_bytes(name.as_bytes()) {
                        Ok(n) => HashOn::Header(n),
                        Err(_) => {
                            diags.push(
                                &path.key("hash_on").key("header"),
                                format!("`{name}` is not a valid header name"),
                            );
                            HashOn::ClientIp
                        }
                    }
                } else if let Some(c) = &h.cookie {
                    if c.is_empty() {
                        diags.push(&path.key("hash_on").key("cookie"), "must not be empty");
                    }
                    HashOn::Cookie(c.clone())
                } else {
                    HashOn::ClientIp
                }
            });
            match on {
                Some(on) => Policy::Hash(on),
                None => {
                    diags.push(
                        &path.key("balance"),
                        "consistent_hash needs `hash_on` (header, cookie or client_ip)",
                    );
                    Policy::Hash(HashOn::ClientIp)
                }
            }
        }
        other => {
            diags.push(
                &path.key("balance"),
                format!(
                    "unknown policy `{other}`; expected round_robin, least_connections, random_two_choices, peak_ewma or consistent_hash"
                ),
            );
            Policy::RoundRobin
        }
    };
    if hash_on.is_some() && !matches!(policy, Policy::Hash(_)) && balance != "consistent_hash" {
        diags.push(
            &path.key("hash_on"),
            "only used with `balance: consistent_hash`",
        );
    }
    policy
}

use http::HeaderName;

/// Validates `health:`.
pub fn health(cfg: HealthConfig, path: &Path, diags: &mut Diags) -> Health {
    let fail_closed = match cfg.all_unhealthy.as_deref() {
        None | Some("fail_open") => false,
        Some("fail_closed") => true,
        Some(other) => {
            diags.push(
                &path.key("all_unhealthy"),
                format!("unknown behaviour `{other}`; expected fail_open or fail_closed"),
            );
            false
        }
    };
    let active = cfg.active.map(|a| active(a, &path.key("active"), diags));
    let passive = cfg.passive.map(|p| {
        let p_path = path.key("passive");
        let max_failures = p.max_failures.unwrap_or(defaults::MAX_FAILURES);
        if !(1..=1000).contains(&max_failures) {
            diags.push(&p_path.key("max_failures"), "must be between 1 and 1000");
        }
        let statuses = p
            .failure_statuses
            .unwrap_or_else(|| vec![500, 502, 503, 504]);
        for (i, s) in statuses.iter().enumerate() {
            if !(100..=599).contains(s) {
                diags.push(
                    &p_path.key("failure_statuses").index(i),
                    "must be a status code between 100 and 599",
                );
            }
        }
        let backoff = duration(
            p.backoff_ms,
            defaults::BACKOFF_MS,
            &p_path.key("backoff_ms"),
            diags,
        );
        let max_backoff = duration(
            p.max_backoff_ms,
            defaults::MAX_BACKOFF_MS,
            &p_path.key("max_backoff_ms"),
            diags,
        );
        if max_backoff < backoff {
            diags.push(
                &p_path.key("max_backoff_ms"),
                "must not be below backoff_ms",
            );
        }
        Passive {
            max_failures: max_failures.max(1),
            failure_statuses: statuses,
            backoff,
            max_backoff,
        }
    });
    Health {
        active,
        passive,
        fail_closed,
    }
}

fn active(a: ActiveConfig, path: &Path, diags: &mut Diags) -> ActiveCheck {
    let check_path = if a.path.starts_with('/') {
        a.path.parse().ok()
    } else {
        None
    };
    let check_path = check_path.unwrap_or_else(|| {
        diags.push(&path.key("path"), "must be a path starting with `/`");
        http::uri::PathAndQuery::from_static("/")
    });
    if let Some(h) = &a.host {
        if http::HeaderValue::from_str(h).is_err() || h.is_empty() {
            diags.push(&path.key("host"), "must be a valid Host header value");
        }
    }
    let interval = duration(
        a.interval_ms,
        defaults::CHECK_INTERVAL_MS,
        &path.key("interval_ms"),
        diags,
    );
    let timeout = duration(
        a.timeout_ms,
        defaults::CHECK_TIMEOUT_MS,
        &path.key("timeout_ms"),
        diags,
    );
    let threshold = |key: &str, v: Option<u32>, default: u32, diags: &mut Diags| {
        let v = v.unwrap_or(default);
        if !(1..=100).contains(&v) {
            diags.push(&path.key(key), "must be between 1 and 100");
        }
        v.clamp(1, 100)
    };
    let healthy_threshold = threshold(
        "healthy_threshold",
        a.healthy_threshold,
        defaults::HEALTHY_THRESHOLD,
        diags,
    );
    let unhealthy_threshold = threshold(
        "unhealthy_threshold",
        a.unhealthy_threshold,
        defaults::UNHEALTHY_THRESHOLD,
        diags,
    );
    let mut expected = Vec::new();
    match a.expected_statuses {
        None => expected.push((200, 399)),
        Some(list) => {
            if list.is_empty() {
                diags.push(&path.key("expected_statuses"), "list at least one status");
            }
            for (i, s) in list.iter().enumerate() {
                let p = path.key("expected_statuses").index(i);
                match s {
                    StatusSpec::Code(c) if (100..=599).contains(c) => expected.push((*c, *c)),
                    StatusSpec::Class(c)
                        if c.len() == 3
                            && c[1..].eq_ignore_ascii_case("xx")
                            && matches!(c.as_bytes()[0], b'1'..=b'5') =>
                    {
                        let lo = u16::from(c.as_bytes()[0] - b'0') * 100;
                        expected.push((lo, lo + 99));
                    }
                    _ => diags.push(
                        &p,
                        "must be a status code (100-599) or a class like \"2xx\"",
                    ),
                }
            }
        }
    }
    ActiveCheck {
        path: check_path,
        host: a.host,
        interval,
        timeout,
        healthy_threshold,
        unhealthy_threshold,
        expected,
    }
}

/// Validates `circuit_breaker:`.
pub fn circuit(cfg: CircuitConfig, path: &Path, diags: &mut Diags) -> Circuit {
    if cfg.max_connections == Some(0) {
        diags.push(&path.key("max_connections"), "must be at least 1");
    }
    if cfg.max_pending.is_some() && cfg.max_connections.is_none() {
        diags.push(
            &path.key("max_pending"),
            "only applies with `max_connections`",
        );
    }
    Circuit {
        max_connections: cfg.max_connections.unwrap_or(0),
        max_pending: cfg.max_pending.unwrap_or(0),
        pending_timeout: duration(
            cfg.pending_timeout_ms,
            defaults::PENDING_TIMEOUT_MS,
            &path.key("pending_timeout_ms"),
            diags,
        ),
    }
}

/// The configured targets: IP addresses need no DNS, host names resolve through A/AAAA
/// (or the hosts file), `{srv: name}` through SRV.
pub fn target_specs(
    targets: &[sluicegate_config::file::TargetConfig],
    path: &Path,
    diags: &mut Diags,
) -> Vec<TargetSpec> {
    use sluicegate_config::file::TargetConfig;
    let mut out = Vec::new();
    for (j, t) in targets.iter().enumerate() {
        let tp = path.index(j);
        let (address, srv, weight) = match t {
            TargetConfig::Address(a) => (a.as_str(), None, 1),
            TargetConfig::Weighted(w) => (w.address.as_str(), w.srv.as_deref(), w.weight),
        };
        if !(1..=1000).contains(&weight) {
            diags.push(&tp.key("weight"), "must be between 1 and 1000");
        }
        let weight = weight.clamp(1, 1000);
        let kind = match (address.is_empty(), srv) {
            (true, Some(name)) => {
                if !is_dns_name(name) {
                    diags.push(&tp.key("srv"), format!("`{name}` is not a DNS name"));
                    continue;
                }
                SpecKind::Srv {
                    name: name.to_string(),
                }
            }
            (false, Some(_)) => {
                diags.push(&tp, "give either `address` or `srv`, not both");
                continue;
            }
            (true, None) => {
                diags.push(&tp, "a target needs `address` (host:port) or `srv`");
                continue;
            }
            (false, None) => match sluicegate_config::split_host_port(address) {
                Some((host, port)) => match host.parse::<std::net::IpAddr>() {
                    Ok(ip) => SpecKind::Static(std::net::SocketAddr::new(ip, port)),
                    Err(_) if is_dns_name(&host) => SpecKind::Host {
                        name: host.to_ascii_lowercase(),
                        port,
                    },
                    Err(_) => {
                        diags.push(
                            &tp,
                            format!("`{host}` is neither an IP address nor a host name"),
                        );
                        continue;
                    }
                },
                None => {
                    diags.push(&tp, format!("`{address}` is not a host:port address"));
                    continue;
                }
            },
        };
        let written = match t {
            TargetConfig::Address(a) => a.clone(),
            TargetConfig::Weighted(w) => w.srv.clone().unwrap_or_else(|| w.address.clone()),
        };
        out.push(TargetSpec {
            written,
            kind,
            weight,
        });
    }
    out
}

/// Letters, digits, `-`, `_` (SRV labels) and dots; labels of 1-63 characters.
fn is_dns_name(name: &str) -> bool {
    let name = name.strip_suffix('.').unwrap_or(name);
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

fn duration(v: Option<u64>, default: u64, path: &Path, diags: &mut Diags) -> Duration {
    let v = v.unwrap_or(default);
    if !(1..=86_400_000).contains(&v) {
        diags.push(path, "must be between 1 and 86400000 ms");
    }
    Duration::from_millis(v.clamp(1, 86_400_000))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_classes_and_codes_are_accepted_and_others_rejected() {
        let mut diags = Diags::default();
        let a = active(
            ActiveConfig {
                path: "/healthz".into(),
                host: None,
                interval_ms: None,
                timeout_ms: None,
                healthy_threshold: None,
                unhealthy_threshold: None,
                expected_statuses: Some(vec![
                    StatusSpec::Class("2xx".into()),
                    StatusSpec::Code(301),
                    StatusSpec::Class("9xx".into()),
                ]),
            },
            &Path::root().key("active"),
            &mut diags,
        );
        assert!(a.expects(204) && a.expects(301) && !a.expects(302));
        assert_eq!(diags.0.len(), 1);
        assert_eq!(diags.0[0].path, "active.expected_statuses[2]");
    }

    #[test]
    fn consistent_hashing_needs_exactly_one_key() {
        let mut diags = Diags::default();
        policy("consistent_hash", None, &Path::root(), &mut diags);
        assert_eq!(diags.0[0].path, "balance");
        let mut diags = Diags::default();
        let p = policy(
            "consistent_hash",
            Some(HashOnConfig {
                header: Some("X-User".into()),
                cookie: None,
                client_ip: false,
            }),
            &Path::root(),
            &mut diags,
        );
        assert!(diags.is_empty());
        assert_eq!(
            p,
            Policy::Hash(HashOn::Header(HeaderName::from_static("x-user")))
        );
    }
}
