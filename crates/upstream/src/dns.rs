//! Name resolution for upstream targets: the `dns:` section, the hosts file, and lookups of
//! A/AAAA and SRV records through hickory's stub resolver (nameservers, search domains and
//! `ndots` from `resolv.conf`, or the nameservers the configuration names).
//!
//! This module only answers "what does this name resolve to now, and for how long"; caching,
//! refreshing ahead of expiry and serving stale answers belong to the resolver task
//! (the application's supervisor). The hosts file is read again when it changes, so an edit to it
//! applies without a restart, like a DNS change.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path as FsPath, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use hickory_resolver::config::{
    LookupIpStrategy, NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts,
};
use hickory_resolver::proto::rr::RData;
use hickory_resolver::TokioResolver;
use serde::Deserialize;

use sluicegate_core::diag::{Diags, Path};

/// The `dns:` section as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DnsConfig {
    /// Nameservers (`ip` or `ip:port`) to ask instead of those in `resolv.conf`.
    pub nameservers: Option<Vec<String>>,
    /// The resolver configuration file (nameservers, `search`, `options ndots:N`).
    pub resolv_conf: Option<String>,
    /// A hosts file consulted before DNS; an empty string turns it off.
    pub hosts_file: Option<String>,
    /// Answers are kept at least this long, whatever their TTL.
    pub min_ttl_ms: Option<u64>,
    /// Answers are refreshed at least this often, whatever their TTL.
    pub max_ttl_ms: Option<u64>,
    /// How long the last good answer keeps serving after it expired while DNS fails.
    pub stale_ms: Option<u64>,
    /// Time one query may take before the next nameserver (or attempt) is tried.
    pub timeout_ms: Option<u64>,
    /// Tries per query.
    pub attempts: Option<usize>,
    /// Wait before asking again after a failed refresh.
    pub error_retry_ms: Option<u64>,
    /// `ipv4_and_ipv6` (default), `ipv4` or `ipv6`.
    pub family: Option<String>,
}

/// Defaults of the `dns:` section (also in docs/upstreams.md).
pub mod defaults {
    /// The usual place of the system's resolver configuration.
    pub const RESOLV_CONF: &str = "/etc/resolv.conf";
    /// The usual place of the hosts file.
    pub const HOSTS_FILE: &str = "/etc/hosts";
    /// 1 s: short TTLs are honoured (service discovery records often use 1-5 s).
    pub const MIN_TTL_MS: u64 = 1_000;
    /// 5 min: a record with a day-long TTL is still checked now and then.
    pub const MAX_TTL_MS: u64 = 300_000;
    /// 1 h, like Kong's `dns_stale_ttl`: a DNS outage shorter than this is invisible.
    pub const STALE_MS: u64 = 3_600_000;
    /// 2 s per query, then the next nameserver.
    pub const TIMEOUT_MS: u64 = 2_000;
    /// Tries per query (glibc's default is 2).
    pub const ATTEMPTS: usize = 2;
    /// A failing name is asked again every second until it answers.
    pub const ERROR_RETRY_MS: u64 = 1_000;
}

/// Which address families a name resolves to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// A and AAAA, IPv4 addresses first.
    Both,
    /// A only.
    Ipv4,
    /// AAAA only.
    Ipv6,
}

/// The validated `dns:` section.
#[derive(Debug, Clone, PartialEq)]
pub struct DnsSettings {
    /// Nameservers to use instead of `resolv.conf`'s.
    pub nameservers: Option<Vec<SocketAddr>>,
    /// Where `search` and `ndots` (and, without `nameservers`, the nameservers) come from.
    pub resolv_conf: PathBuf,
    /// Hosts file consulted first; `None` when turned off.
    pub hosts_file: Option<PathBuf>,
    /// Lower bound on how long an answer is used.
    pub min_ttl: Duration,
    /// Upper bound on how long an answer is used.
    pub max_ttl: Duration,
    /// How long an expired answer keeps serving while DNS fails.
    pub stale: Duration,
    /// Per-query timeout.
    pub timeout: Duration,
    /// Tries per query.
    pub attempts: usize,
    /// Wait after a failed refresh.
    pub error_retry: Duration,
    /// Address families.
    pub family: Family,
}

impl Default for DnsSettings {
    fn default() -> Self {
        DnsSettings {
            nameservers: None,
            resolv_conf: PathBuf::from(defaults::RESOLV_CONF),
            hosts_file: Some(PathBuf::from(defaults::HOSTS_FILE)),
            min_ttl: Duration::from_millis(defaults::MIN_TTL_MS),
            max_ttl: Duration::from_millis(defaults::MAX_TTL_MS),
            stale: Duration::from_millis(defaults::STALE_MS),
            timeout: Duration::from_millis(defaults::TIMEOUT_MS),
            attempts: defaults::ATTEMPTS,
            error_retry: Duration::from_millis(defaults::ERROR_RETRY_MS),
            family: Family::Both,
        }
    }
}

/// Validates the `dns:` section; relative paths resolve against `base_dir`.
pub fn settings(cfg: DnsConfig, base_dir: &FsPath, path: &Path, diags: &mut Diags) -> DnsSettings {
    let mut s = DnsSettings::default();
    if let Some(list) = cfg.nameservers {
        if list.is_empty() {
            diags.push(
                &path.key("nameservers"),
                "list at least one nameserver, or leave `nameservers` out to use resolv.conf",
            );
        }
        let mut out = Vec::new();
        for (i, ns) in list.iter().enumerate() {
            match parse_nameserver(ns) {
                Some(a) => out.push(a),
                None => diags.push(
                    &path.key("nameservers").index(i),
                    format!("`{ns}` is not an IP address or ip:port"),
                ),
            }
        }
        s.nameservers = Some(out);
    }
    let file = |p: &str| {
        let p = PathBuf::from(p);
        if p.is_absolute() {
            p
        } else {
            base_dir.join(p)
        }
    };
    if let Some(r) = cfg.resolv_conf {
        s.resolv_conf = file(&r);
        if !s.resolv_conf.is_file() {
            diags.push(
                &path.key("resolv_conf"),
                format!("`{}` is not a readable file", s.resolv_conf.display()),
            );
        }
    }
    match cfg.hosts_file.as_deref() {
        Some("") => s.hosts_file = None,
        Some(h) => {
            let p = file(h);
            if !p.is_file() {
                diags.push(
                    &path.key("hosts_file"),
                    format!("`{}` is not a readable file", p.display()),
                );
            }
            s.hosts_file = Some(p);
        }
        None => {}
    }
    let ms = |key: &str, v: Option<u64>, default: u64, min: u64, diags: &mut Diags| {
        let v = v.unwrap_or(default);
        if v < min || v > 86_400_000 {
            diags.push(
                &path.key(key),
                format!("must be between {min} and 86400000 (one day)"),
            );
        }
        Duration::from_millis(v.clamp(min, 86_400_000))
    };
    s.min_ttl = ms(
        "min_ttl_ms",
        cfg.min_ttl_ms,
        defaults::MIN_TTL_MS,
        100,
        diags,
    );
    s.max_ttl = ms(
        "max_ttl_ms",
        cfg.max_ttl_ms,
        defaults::MAX_TTL_MS,
        100,
        diags,
    );
    if s.max_ttl < s.min_ttl {
        diags.push(&path.key("max_ttl_ms"), "must not be below min_ttl_ms");
    }
    s.stale = ms("stale_ms", cfg.stale_ms, defaults::STALE_MS, 0, diags);
    s.timeout = ms("timeout_ms", cfg.timeout_ms, defaults::TIMEOUT_MS, 1, diags);
    s.error_retry = ms(
        "error_retry_ms",
        cfg.error_retry_ms,
        defaults::ERROR_RETRY_MS,
        100,
        diags,
    );
    if let Some(a) = cfg.attempts {
        if !(1..=10).contains(&a) {
            diags.push(&path.key("attempts"), "must be between 1 and 10");
        }
        s.attempts = a.clamp(1, 10);
    }
    s.family = match cfg.family.as_deref() {
        None | Some("ipv4_and_ipv6") => Family::Both,
        Some("ipv4") => Family::Ipv4,
        Some("ipv6") => Family::Ipv6,
        Some(other) => {
            diags.push(
                &path.key("family"),
                format!("unknown family `{other}`; expected ipv4_and_ipv6, ipv4 or ipv6"),
            );
            Family::Both
        }
    };
    s
}

fn parse_nameserver(s: &str) -> Option<SocketAddr> {
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Some(a);
    }
    s.trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<IpAddr>()
        .ok()
        .map(|ip| SocketAddr::new(ip, 53))
}

/// One answer: addresses with their weights, and how long the answer may be used.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    /// Resolved addresses (with the port) and weights, in a stable order.
    pub addrs: Vec<(SocketAddr, u32)>,
    /// The TTL, already bounded by `min_ttl`/`max_ttl`.
    pub ttl: Duration,
    /// Where the answer came from: `hosts` or `dns`.
    pub source: &'static str,
    /// For SRV answers: the record's target name of each address (for TLS SNI).
    pub names: Vec<(SocketAddr, String)>,
}

/// Resolves names with one hickory resolver and the hosts file.
pub struct Lookup {
    settings: DnsSettings,
    resolver: Result<TokioResolver, String>,
    hosts: Mutex<HostsCache>,
}

#[derive(Default)]
struct HostsCache {
    modified: Option<SystemTime>,
    names: HashMap<String, Vec<IpAddr>>,
}

impl Lookup {
    /// A resolver for `settings`. Must be called inside a tokio runtime (hickory spawns its
    /// connection tasks there). A broken `resolv.conf` is reported by each lookup.
    pub fn new(settings: DnsSettings) -> Lookup {
        let resolver = build(&settings);
        if let Err(e) = &resolver {
            tracing::error!(error = %e, "Cannot configure the DNS resolver; names resolve only through the hosts file.");
        }
        Lookup {
            settings,
            resolver,
            hosts: Mutex::default(),
        }
    }

    /// The settings this resolver was built with.
    pub fn settings(&self) -> &DnsSettings {
        &self.settings
    }

    /// The addresses of `host` (A/AAAA, or the hosts file), each with `port` and `weight`.
    pub async fn host(&self, host: &str, port: u16, weight: u32) -> Result<Answer, String> {
        if let Some(ips) = self.hosts_file_entry(host) {
            return Ok(Answer {
                addrs: ips
                    .into_iter()
                    .map(|ip| (SocketAddr::new(ip, port), weight))
                    .collect(),
                // The hosts file is read again when it changes; checking it costs nothing.
                ttl: self.settings.min_ttl,
                source: "hosts",
                names: Vec::new(),
            });
        }
        let resolver = self.resolver.as_ref().map_err(Clone::clone)?;
        let lookup = resolver
            .lookup_ip(host)
            .await
            .map_err(|e| format!("cannot resolve `{host}`: {e}"))?;
        let mut ttl = u32::MAX;
        let mut addrs = Vec::new();
        for record in lookup.as_lookup().answers() {
            let ip = match &record.data {
                RData::A(a) => IpAddr::V4(a.0),
                RData::AAAA(a) => IpAddr::V6(a.0),
                _ => continue,
            };
            ttl = ttl.min(record.ttl);
            let addr = SocketAddr::new(ip, port);
            if !addrs.iter().any(|(a, _)| *a == addr) {
                addrs.push((addr, weight));
            }
        }
        if addrs.is_empty() {
            return Err(format!("`{host}` has no address records"));
        }
        addrs.sort();
        Ok(Answer {
            addrs,
            ttl: self.bound(ttl),
            source: "dns",
            names: Vec::new(),
        })
    }

    /// The targets of SRV name `name` (e.g. `_http._tcp.api.example`): the records of the
    /// lowest priority, each target resolved, weights scaled to 1..=1000.
    pub async fn srv(&self, name: &str) -> Result<Answer, String> {
        let resolver = self.resolver.as_ref().map_err(Clone::clone)?;
        let lookup = resolver
            .srv_lookup(name)
            .await
            .map_err(|e| format!("cannot resolve SRV `{name}`: {e}"))?;
        let mut records = Vec::new();
        let mut ttl = u32::MAX;
        for record in lookup.answers() {
            if let RData::SRV(srv) = &record.data {
                ttl = ttl.min(record.ttl);
                records.push((srv.priority, srv.weight, srv.port, srv.target.to_utf8()));
            }
        }
        if records.is_empty() {
            return Err(format!("SRV `{name}` has no records"));
        }
        let mut priorities: Vec<u16> = records.iter().map(|r| r.0).collect();
        priorities.sort_unstable();
        priorities.dedup();
        let mut addrs = Vec::new();
        let mut names = Vec::new();
        let mut errors = Vec::new();
        // The lowest priority value whose targets resolve; higher ones are fallbacks.
        for priority in priorities {
            let group: Vec<_> = records.iter().filter(|r| r.0 == priority).collect();
            let max_weight = group
                .iter()
                .map(|r| u32::from(r.1))
                .max()
                .unwrap_or(0)
                .max(1);
            for (_, weight, port, target) in group {
                // Weights over 1000 are scaled down to the balancer's range; RFC 2782's
                // weight 0 gets a very small share, not none.
                let scaled = if max_weight <= 1000 {
                    u32::from(*weight).max(1)
                } else {
                    (u32::from(*weight) * 1000 / max_weight).clamp(1, 1000)
                };
                let host = target.trim_end_matches('.');
                match self.host(host, *port, scaled).await {
                    Ok(a) => {
                        ttl = ttl.min(a.ttl.as_secs().try_into().unwrap_or(u32::MAX));
                        for entry in a.addrs {
                            if !addrs.iter().any(|(x, _)| *x == entry.0) {
                                names.push((entry.0, host.to_string()));
                                addrs.push(entry);
                            }
                        }
                    }
                    Err(e) => errors.push(e),
                }
            }
            if !addrs.is_empty() {
                break;
            }
        }
        if addrs.is_empty() {
            return Err(format!(
                "no target of SRV `{name}` resolves: {}",
                errors.join("; ")
            ));
        }
        addrs.sort();
        Ok(Answer {
            addrs,
            ttl: self.bound(ttl),
            source: "dns",
            names,
        })
    }

    fn bound(&self, ttl_secs: u32) -> Duration {
        Duration::from_secs(u64::from(ttl_secs)).clamp(self.settings.min_ttl, self.settings.max_ttl)
    }

    /// The hosts file's addresses for `host`, reading the file again if it changed.
    fn hosts_file_entry(&self, host: &str) -> Option<Vec<IpAddr>> {
        let path = self.settings.hosts_file.as_ref()?;
        let modified = std::fs::metadata(path).and_then(|m| m.modified()).ok();
        let mut cache = self
            .hosts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if modified != cache.modified || cache.modified.is_none() {
            cache.names = std::fs::read_to_string(path)
                .map(|t| parse_hosts(&t))
                .unwrap_or_default();
            cache.modified = modified;
        }
        let key = host.trim_end_matches('.').to_ascii_lowercase();
        let ips = cache.names.get(&key)?;
        let wanted: Vec<IpAddr> = ips
            .iter()
            .copied()
            .filter(|ip| match self.settings.family {
                Family::Both => true,
                Family::Ipv4 => ip.is_ipv4(),
                Family::Ipv6 => ip.is_ipv6(),
            })
            .collect();
        (!wanted.is_empty()).then_some(wanted)
    }
}

/// Parses a hosts file: `address name [aliases...]`, `#` comments; names lower-cased.
pub fn parse_hosts(text: &str) -> HashMap<String, Vec<IpAddr>> {
    let mut out: HashMap<String, Vec<IpAddr>> = HashMap::new();
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("");
        let mut fields = line.split_whitespace();
        let Some(ip) = fields.next().and_then(|f| f.parse::<IpAddr>().ok()) else {
            continue;
        };
        for name in fields {
            let list = out
                .entry(name.trim_end_matches('.').to_ascii_lowercase())
                .or_default();
            if !list.contains(&ip) {
                list.push(ip);
            }
        }
    }
    out
}

fn build(settings: &DnsSettings) -> Result<TokioResolver, String> {
    let system = std::fs::read(&settings.resolv_conf)
        .map_err(|e| e.to_string())
        .and_then(|data| {
            hickory_resolver::system_conf::parse_resolv_conf(data).map_err(|e| e.to_string())
        });
    let (config, mut opts) = match (&settings.nameservers, system) {
        (Some(servers), system) => {
            let name_servers = servers
                .iter()
                .map(|a| {
                    let mut ns = NameServerConfig::udp_and_tcp(a.ip());
                    for c in &mut ns.connections {
                        c.port = a.port();
                    }
                    ns
                })
                .collect();
            // The search list and ndots still come from resolv.conf when there is one.
            let (search, ndots) = match system {
                Ok((c, o)) => (c.search().to_vec(), o.ndots),
                Err(_) => (Vec::new(), ResolverOpts::default().ndots),
            };
            let mut opts = ResolverOpts::default();
            opts.ndots = ndots;
            (ResolverConfig::from_parts(None, search, name_servers), opts)
        }
        (None, Ok(pair)) => pair,
        (None, Err(e)) => {
            return Err(format!(
                "cannot read `{}`: {e}",
                settings.resolv_conf.display()
            ))
        }
    };
    opts.timeout = settings.timeout;
    opts.attempts = settings.attempts;
    // The refresh task caches answers itself (with the stale period); a second cache
    // inside the resolver would hand back an answer it already had.
    opts.cache_size = 0;
    opts.use_hosts_file = ResolveHosts::Never;
    opts.ip_strategy = match settings.family {
        Family::Both => LookupIpStrategy::Ipv4AndIpv6,
        Family::Ipv4 => LookupIpStrategy::Ipv4Only,
        Family::Ipv6 => LookupIpStrategy::Ipv6Only,
    };
    let mut builder = TokioResolver::builder_with_config(
        config,
        hickory_resolver::net::runtime::TokioRuntimeProvider::default(),
    );
    *builder.options_mut() = opts;
    builder.build().map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_hosts_files_with_aliases_and_comments() {
        let hosts = parse_hosts(
            "127.0.0.1 localhost\n# a comment\n10.0.0.5  api.internal API2 # trailing\n10.0.0.6 api.internal\nnot-an-ip x\n",
        );
        assert_eq!(
            hosts["api.internal"],
            vec![
                "10.0.0.5".parse::<IpAddr>().unwrap(),
                "10.0.0.6".parse().unwrap()
            ]
        );
        assert_eq!(hosts["api2"], vec!["10.0.0.5".parse::<IpAddr>().unwrap()]);
        assert!(!hosts.contains_key("x"));
    }

    #[test]
    fn nameservers_take_a_port_or_default_to_53() {
        assert_eq!(
            parse_nameserver("127.0.0.1:5353"),
            Some("127.0.0.1:5353".parse().unwrap())
        );
        assert_eq!(
            parse_nameserver("10.0.0.2"),
            Some("10.0.0.2:53".parse().unwrap())
        );
        assert_eq!(parse_nameserver("::1"), Some("[::1]:53".parse().unwrap()));
        assert_eq!(parse_nameserver("dns.example"), None);
    }
}
