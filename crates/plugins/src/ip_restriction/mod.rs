//! `ip_restriction`: allow and deny lists of IPv4/IPv6 ranges; a refused client gets 403
//! JSON before anything else runs. The client address is the connection's peer, unless
//! the peer is a trusted proxy: then `X-Forwarded-For` is read from the right, skipping
//! trusted proxies, and the first untrusted address is the client (the addresses to its
//! left were written by the client itself and prove nothing). The deny list is checked
//! first; with an allow list, anything not in it is refused.

pub mod cidr;
mod config;

use std::net::IpAddr;
use std::sync::Arc;

use http::HeaderName;

use cidr::{canonical, parse_forwarded, Cidr, CidrSet};
pub use config::{IpRestrictionConfig, RangeList};

use super::{parse_config, BuildCtx, Flow, Phase, PhaseSet, Plugin, Step};
use sluicegate_core::context::RequestCtx;
use sluicegate_core::diag::{Diags, Path};
use sluicegate_core::error::{rejection, Kind};
use sluicegate_core::yaml::Node;

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// The `ip_restriction` plugin.
#[derive(Debug)]
pub struct IpRestriction {
    allow: Option<CidrSet>,
    deny: CidrSet,
    trusted: CidrSet,
}

/// Builds an `ip_restriction` plugin from its config.
pub fn build(
    config: &Node,
    path: &Path,
    _ctx: &BuildCtx<'_>,
    diags: &mut Diags,
) -> Option<Arc<dyn Plugin>> {
    let cfg: IpRestrictionConfig = parse_config(config, path, diags)?;
    let before = diags.0.len();
    if cfg.allow.is_none() && cfg.deny.is_none() {
        diags.push(path, "give `allow`, `deny` or both");
    }
    let allow = cfg
        .allow
        .as_ref()
        .map(|l| ranges(l, &path.key("allow"), true, diags));
    let deny = cfg.deny.as_ref().map_or_else(CidrSet::default, |l| {
        ranges(l, &path.key("deny"), true, diags)
    });
    let trusted = cfg
        .trusted_proxies
        .as_ref()
        .map_or_else(CidrSet::default, |l| {
            ranges(l, &path.key("trusted_proxies"), false, diags)
        });
    (diags.0.len() == before).then(|| {
        Arc::new(IpRestriction {
            allow,
            deny,
            trusted,
        }) as Arc<dyn Plugin>
    })
}

/// Parses `list` into a set, recording each bad entry; `required`: an empty list is an
/// error.
pub fn ranges(list: &RangeList, path: &Path, required: bool, diags: &mut Diags) -> CidrSet {
    let entries = list.entries();
    if entries.is_empty() && required {
        diags.push(path, "the list is empty");
    }
    let mut out = Vec::new();
    for (i, text) in entries {
        let p = i.map_or_else(|| path.clone(), |i| path.index(i));
        match Cidr::parse(text) {
            Ok(c) => out.push(c),
            Err(e) => diags.push(&p, e),
        }
    }
    CidrSet::new(out)
}

/// The client's address: the connection's peer, unless the peer is one of `trusted`; then
/// the first address in `X-Forwarded-For`, read from the right, that is not trusted.
/// `None` when a forwarded address that must be believed is malformed.
pub fn client_ip(ctx: &RequestCtx, trusted: &CidrSet) -> Option<IpAddr> {
    let peer = canonical(ctx.client_addr.ip());
    if trusted.is_empty() || !trusted.contains(peer) {
        return Some(peer);
    }
    let mut addr = peer;
    for value in ctx.head.headers.get_all(&X_FORWARDED_FOR).iter().rev() {
        let text = value.to_str().ok()?;
        for part in text.rsplit(',').map(str::trim).filter(|p| !p.is_empty()) {
            addr = canonical(parse_forwarded(part)?);
            if !trusted.contains(addr) {
                return Some(addr);
            }
        }
    }
    // Every hop is a trusted proxy: the leftmost is as close to the client as it gets.
    Some(addr)
}

impl IpRestriction {
    fn check(&self, ctx: &RequestCtx) -> Flow {
        let Some(ip) = client_ip(ctx, &self.trusted) else {
            return refuse(
                ctx,
                "the client address in X-Forwarded-For is malformed".to_string(),
            );
        };
        let allowed = !self.deny.contains(ip) && self.allow.as_ref().is_none_or(|a| a.contains(ip));
        if allowed {
            Flow::Continue
        } else {
            refuse(ctx, format!("client address {ip} is not allowed"))
        }
    }
}

fn refuse(ctx: &RequestCtx, message: String) -> Flow {
    tracing::debug!(request_id = ctx.request_id_str(), peer = %ctx.client_addr, reason = %message, "Request refused by the IP restriction.");
    Flow::Respond(rejection(Kind::Forbidden, message, &ctx.request_id))
}

impl Plugin for IpRestriction {
    fn name(&self) -> &'static str {
        "ip_restriction"
    }

    fn phases(&self) -> PhaseSet {
        PhaseSet::of(&[Phase::Access])
    }

    fn access<'a>(&'a self, ctx: &'a mut RequestCtx) -> Step<'a> {
        Step::Ready(Ok(self.check(ctx)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{self, access, responded};
    use sluicegate_lua::harness::FakeRequest;

    fn from(h: &sluicegate_lua::harness::Harness, peer: &str, xff: &[&str]) -> RequestCtx {
        let mut req = FakeRequest {
            client_addr: std::net::SocketAddr::new(peer.parse().unwrap(), 5000),
            ..FakeRequest::default()
        };
        for v in xff {
            req.headers.append("x-forwarded-for", v.parse().unwrap());
        }
        h.request(req)
    }

    fn allowed(
        p: &Arc<dyn Plugin>,
        h: &sluicegate_lua::harness::Harness,
        peer: &str,
        xff: &[&str],
    ) -> bool {
        let mut ctx = from(h, peer, xff);
        match access(&**p, &mut ctx) {
            Flow::Continue => true,
            other => {
                let (status, body) = responded(other);
                assert_eq!(status, 403);
                assert_eq!(body["error"], "forbidden");
                false
            }
        }
    }

    #[test]
    fn allows_listed_ranges_and_refuses_the_rest() {
        let p = testing::plugin(build, "{allow: [10.0.0.0/8, '2001:db8::/32']}", &[]);
        let h = testing::harness();
        assert!(allowed(&p, &h, "10.1.2.3", &[]));
        assert!(allowed(&p, &h, "2001:db8::7", &[]));
        assert!(allowed(&p, &h, "::ffff:10.9.9.9", &[]));
        assert!(!allowed(&p, &h, "192.168.0.1", &[]));
        // Without trusted proxies, X-Forwarded-For is the client's word only.
        assert!(!allowed(&p, &h, "192.168.0.1", &["10.0.0.1"]));
    }

    #[test]
    fn deny_wins_over_allow() {
        let p = testing::plugin(build, "{allow: 10.0.0.0/8, deny: 10.6.6.0/24}", &[]);
        let h = testing::harness();
        assert!(allowed(&p, &h, "10.1.1.1", &[]));
        assert!(!allowed(&p, &h, "10.6.6.6", &[]));
        let p = testing::plugin(build, "{deny: ['203.0.113.0/24']}", &[]);
        assert!(allowed(&p, &h, "10.6.6.6", &[]));
        assert!(!allowed(&p, &h, "203.0.113.9", &[]));
    }

    #[test]
    fn takes_the_rightmost_untrusted_forwarded_address() {
        let p = testing::plugin(
            build,
            "{allow: 198.51.100.0/24, trusted_proxies: '10.0.0.0/8, 172.16.0.0/12'}",
            &[],
        );
        let h = testing::harness();
        // client → 172.16.0.5 (proxy) → 10.0.0.2 (proxy) → gateway
        assert!(allowed(&p, &h, "10.0.0.2", &["198.51.100.7, 172.16.0.5"]));
        // A client that forges an allowed address on the left gains nothing.
        assert!(!allowed(
            &p,
            &h,
            "10.0.0.2",
            &["198.51.100.7, 203.0.113.1, 172.16.0.5"]
        ));
        // Several headers are one list, in order.
        assert!(allowed(
            &p,
            &h,
            "10.0.0.2",
            &["203.0.113.1", "198.51.100.7"]
        ));
        assert!(allowed(
            &p,
            &h,
            "10.0.0.2",
            &["[2001:db8::1]:80, 198.51.100.8:1234"]
        ));
        // An untrusted peer's header is ignored.
        assert!(!allowed(&p, &h, "203.0.113.1", &["198.51.100.7"]));
        // A malformed address where the client's should be is refused.
        assert!(!allowed(&p, &h, "10.0.0.2", &["198.51.100.7, garbage"]));
        // Only proxies: the leftmost counts.
        assert!(!allowed(&p, &h, "10.0.0.2", &["10.0.0.9"]));
    }

    #[test]
    fn reads_comma_separated_lists_from_one_variable() {
        let mut env = std::collections::HashMap::new();
        env.insert(
            "ALLOW_CIDRS".to_string(),
            "127.0.0.0/8,10.0.0.0/8 ::1".to_string(),
        );
        let node = sluicegate_core::yaml::parse("{allow: '${ALLOW_CIDRS}'}", &env).unwrap();
        let mut diags = Diags::default();
        let ctx = BuildCtx {
            consumers: &Default::default(),
            base_dir: std::path::Path::new("."),
            secrets: sluicegate_secrets::SecretStore::empty(),
            route: None,
            lua_modules: &sluicegate_lua::Modules::empty(),
        };
        let p = build(&node, &Path::root(), &ctx, &mut diags).unwrap();
        let h = testing::harness();
        assert!(allowed(&p, &h, "10.2.3.4", &[]));
        assert!(allowed(&p, &h, "::1", &[]));
        assert!(!allowed(&p, &h, "11.0.0.1", &[]));
    }

    #[test]
    fn rejects_bad_configs_with_their_paths() {
        let paths = |text: &str| -> Vec<String> {
            testing::errors(build, text, &[])
                .into_iter()
                .map(|(p, _)| p)
                .collect()
        };
        assert_eq!(paths("{}"), [""]);
        assert_eq!(
            paths("{allow: [10.0.0.0/8, 10.0.0.1/8, nope]}"),
            ["allow[1]", "allow[2]"]
        );
        assert_eq!(paths("{allow: '10.0.0.0/8,300.0.0.0/8'}"), ["allow"]);
        assert_eq!(paths("{allow: ''}"), ["allow"]);
        assert_eq!(
            paths("{deny: 10.0.0.0/8, trusted_proxies: [x]}"),
            ["trusted_proxies[0]"]
        );
        assert_eq!(paths("{allow: {a: 1}}"), ["allow"]);
        assert_eq!(paths("{allow: 10.0.0.0/8, colour: red}"), ["colour"]);
    }
}
