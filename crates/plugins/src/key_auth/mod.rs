//! `key_auth`: the request must carry one of the configured keys, in a header or a query
//! parameter; otherwise it gets 401 before anything else is spent on it. Keys are secrets
//! (`${secret:NAME}`), so each accepts its current and its previous value during a
//! rotation. The comparison takes the same time wherever a candidate differs from a key,
//! and every key is compared, so timing reveals neither a key nor which one matched.
//! With `strip`, the key is removed before the request is forwarded, so the upstream never
//! sees it and its own `Authorization` header stays untouched.

mod config;

use std::sync::Arc;

use http::{HeaderName, HeaderValue};

pub use config::KeyAuthConfig;

use super::{parse_config, BuildCtx, Flow, Phase, PhaseSet, Plugin, Step};
use sluicegate_core::context::{Consumer, RequestCtx};
use sluicegate_core::diag::{Diags, Path};
use sluicegate_core::error::{rejection, Kind};
use sluicegate_core::yaml::Node;
use sluicegate_secrets::SecretValue;

/// The header used when the config names no place for the key.
const DEFAULT_HEADER: &str = "x-api-key";

/// The `key_auth` plugin.
#[derive(Debug)]
pub struct KeyAuth {
    header: Option<HeaderName>,
    query_param: Option<String>,
    keys: Vec<SecretValue>,
    /// The name of the secret each key belongs to: the consumer it identifies.
    owners: Vec<Arc<str>>,
    /// With `consumers: true`, the consumers whose keys are accepted too.
    consumers: Option<Arc<crate::consumers::Consumers>>,
    strip: bool,
    /// Where the key is expected, for the 401 message.
    expected: String,
}

/// Builds a `key_auth` plugin from its config.
pub fn build(
    config: &Node,
    path: &Path,
    ctx: &BuildCtx<'_>,
    diags: &mut Diags,
) -> Option<Arc<dyn Plugin>> {
    let cfg: KeyAuthConfig = parse_config(config, path, diags)?;
    let before = diags.0.len();
    let header_name = match (&cfg.header, &cfg.query_param) {
        (None, None) => Some(DEFAULT_HEADER),
        (h, _) => h.as_deref(),
    };
    let header = header_name.and_then(|h| match HeaderName::from_bytes(h.as_bytes()) {
        Ok(n) => Some(n),
        Err(_) => {
            diags.push(&path.key("header"), format!("invalid header name `{h}`"));
            None
        }
    });
    if let Some(q) = &cfg.query_param {
        if q.is_empty() || q.bytes().any(|b| matches!(b, b'&' | b'=' | b'#' | b' ')) {
            diags.push(
                &path.key("query_param"),
                format!("invalid query parameter name `{q}`"),
            );
        }
    }
    if cfg.keys.is_empty() && !cfg.consumers {
        diags.push(
            &path.key("keys"),
            "give at least one key (`\"${secret:NAME}\"`), or `consumers: true`",
        );
    }
    let mut keys = Vec::new();
    let mut owners = Vec::new();
    for (i, r) in cfg.keys.iter().enumerate() {
        if let Some(secret) = ctx.secrets.resolve(r, &path.key("keys").index(i), diags) {
            let owner: Arc<str> = Arc::from(secret.name());
            for value in secret.values() {
                keys.push(value.clone());
                owners.push(owner.clone());
            }
        }
    }
    let expected = match (&header, &cfg.query_param) {
        (Some(h), Some(q)) => format!("header `{h}` or query parameter `{q}`"),
        (Some(h), None) => format!("header `{h}`"),
        (None, Some(q)) => format!("query parameter `{q}`"),
        (None, None) => String::new(),
    };
    (diags.0.len() == before).then(|| {
        Arc::new(KeyAuth {
            header,
            query_param: cfg.query_param,
            keys,
            owners,
            consumers: cfg.consumers.then(|| ctx.consumers.clone()),
            strip: cfg.strip,
            expected,
        }) as Arc<dyn Plugin>
    })
}

impl KeyAuth {
    /// The index of the key `candidate` is, if it is one. Every key is compared and the
    /// index chosen without a branch, so the time taken does not depend on which key (if
    /// any) matched.
    fn matching(&self, candidate: &[u8]) -> Option<usize> {
        use subtle::{Choice, ConditionallySelectable};
        let none = u32::MAX;
        let found = self.keys.iter().enumerate().fold(none, |found, (i, key)| {
            let hit = Choice::from(u8::from(key.ct_eq(candidate)));
            u32::conditional_select(&found, &(i as u32), hit)
        });
        (found != none).then_some(found as usize)
    }

    fn check(&self, ctx: &mut RequestCtx) -> Flow {
        if let Some(h) = &self.header {
            if let Some(v) = ctx.head.headers.get(h) {
                let found = self.owner(v.as_bytes());
                if found.is_some() && self.strip {
                    ctx.head.headers.remove(h);
                }
                return self.verdict(found, ctx);
            }
        }
        if let Some(q) = &self.query_param {
            if let Some(value) = crate::query::query_value(ctx.head.uri.query(), q) {
                let found = self.owner(value.as_bytes());
                if found.is_some() && self.strip {
                    strip_query_param(&mut ctx.head.uri, q);
                }
                return self.verdict(found, ctx);
            }
        }
        tracing::debug!(
            request_id = ctx.request_id_str(),
            "Request without an API key refused."
        );
        Flow::Respond(unauthorized(
            format!("an API key is required in the {}", self.expected),
            &ctx.request_id,
        ))
    }

    /// The consumer `candidate` is the key of: a configured key's secret, else (with
    /// `consumers: true`) the consumer holding it as a credential.
    fn owner(&self, candidate: &[u8]) -> Option<Arc<str>> {
        if let Some(i) = self.matching(candidate) {
            return self.owners.get(i).cloned();
        }
        self.consumers.as_ref()?.by_key(candidate).cloned()
    }

    /// Lets the request on when a key matched, naming its consumer.
    fn verdict(&self, found: Option<Arc<str>>, ctx: &mut RequestCtx) -> Flow {
        if let Some(owner) = found {
            ctx.vars.insert(Consumer(owner));
            return Flow::Continue;
        }
        tracing::debug!(
            request_id = ctx.request_id_str(),
            "Request with an invalid API key refused."
        );
        Flow::Respond(unauthorized("invalid API key".to_string(), &ctx.request_id))
    }
}

fn unauthorized(message: String, request_id: &HeaderValue) -> super::LocalResponse {
    let mut r = rejection(Kind::Unauthorized, message, request_id);
    r.headers.insert(
        http::header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Key realm=\"sluicegate\""),
    );
    r
}

/// Removes every `name=...` pair from the URI's query.
fn strip_query_param(uri: &mut http::Uri, name: &str) {
    let Some(query) = uri.query() else { return };
    let kept: Vec<&str> = query
        .split('&')
        .filter(|pair| pair.split_once('=').map_or(*pair, |(k, _)| k) != name)
        .collect();
    let mut pq = uri.path().to_string();
    if !kept.is_empty() {
        pq.push('?');
        pq.push_str(&kept.join("&"));
    }
    let mut parts = std::mem::take(uri).into_parts();
    parts.path_and_query = pq.parse().ok();
    if let Ok(u) = http::Uri::from_parts(parts) {
        *uri = u;
    }
}

impl Plugin for KeyAuth {
    fn name(&self) -> &'static str {
        "key_auth"
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
    use crate::testing::{self, access, request, responded};

    const SECRETS: &[(&str, &str, Option<&str>)] = &[
        ("proxy_key", "new-key", Some("old-key")),
        ("other", "other-key", None),
    ];

    fn plugin(text: &str) -> Arc<dyn Plugin> {
        testing::plugin(build, text, SECRETS)
    }

    #[test]
    fn accepts_the_current_and_the_previous_value_of_every_key() {
        let p = plugin("{header: X-Proxy-Auth, keys: ['${secret:proxy_key}', '${secret:other}']}");
        let h = testing::harness();
        for key in ["new-key", "old-key", "other-key"] {
            let mut ctx = request(&h, "GET", "/", &[("x-proxy-auth", key)], None);
            assert!(matches!(access(&*p, &mut ctx), Flow::Continue), "{key}");
            assert_eq!(ctx.head.headers["x-proxy-auth"], key, "kept without strip");
            let owner = if key == "other-key" {
                "other"
            } else {
                "proxy_key"
            };
            assert_eq!(
                ctx.vars.get::<Consumer>(),
                Some(&Consumer(owner.into())),
                "the key's secret names the consumer"
            );
        }
        let mut ctx = request(&h, "GET", "/", &[("x-proxy-auth", "wrong")], None);
        access(&*p, &mut ctx);
        assert_eq!(ctx.vars.get::<Consumer>(), None);
    }

    #[test]
    fn refuses_missing_and_wrong_keys_with_a_json_401() {
        let p = plugin("{header: X-Proxy-Auth, keys: ['${secret:proxy_key}']}");
        let h = testing::harness();
        let mut ctx = request(&h, "GET", "/", &[], None);
        let (status, body) = responded(access(&*p, &mut ctx));
        assert_eq!(status, 401);
        assert_eq!(body["error"], "unauthorized");
        assert!(body["message"].as_str().unwrap().contains("x-proxy-auth"));
        assert_eq!(body["request_id"], "test-request-id");
        for wrong in ["new-ke", "new-keyy", "other-key", ""] {
            let mut ctx = request(&h, "GET", "/", &[("x-proxy-auth", wrong)], None);
            let (status, body) = responded(access(&*p, &mut ctx));
            assert_eq!(
                (status, body["message"].as_str().unwrap()),
                (401, "invalid API key")
            );
            assert!(!body.to_string().contains("new-key"), "the key never shows");
        }
    }

    #[test]
    fn strips_the_key_but_leaves_other_credentials_alone() {
        let p = plugin("{header: X-Proxy-Auth, keys: ['${secret:proxy_key}'], strip: true}");
        let h = testing::harness();
        let mut ctx = request(
            &h,
            "GET",
            "/",
            &[
                ("x-proxy-auth", "new-key"),
                ("authorization", "Bearer upstream"),
            ],
            None,
        );
        assert!(matches!(access(&*p, &mut ctx), Flow::Continue));
        assert!(ctx.head.headers.get("x-proxy-auth").is_none());
        assert_eq!(ctx.head.headers["authorization"], "Bearer upstream");
    }

    #[test]
    fn reads_a_percent_encoded_query_parameter_and_strips_it() {
        let p = plugin("{query_param: api_key, keys: ['${secret:other}'], strip: true}");
        let h = testing::harness();
        let mut ctx = request(&h, "GET", "/x?a=1&api_key=other%2Dkey&b=2", &[], None);
        assert!(matches!(access(&*p, &mut ctx), Flow::Continue));
        assert_eq!(ctx.head.uri, "/x?a=1&b=2");
        let mut ctx = request(&h, "GET", "/x?api_key=other-key", &[], None);
        assert!(matches!(access(&*p, &mut ctx), Flow::Continue));
        assert_eq!(ctx.head.uri, "/x");
        let mut ctx = request(&h, "GET", "/x?api_key=nope", &[], None);
        assert_eq!(responded(access(&*p, &mut ctx)).0, 401);
        // The header is not looked at when only a query parameter is configured.
        let mut ctx = request(&h, "GET", "/x", &[("x-api-key", "other-key")], None);
        assert_eq!(responded(access(&*p, &mut ctx)).0, 401);
    }

    #[test]
    fn defaults_to_the_x_api_key_header() {
        let p = plugin("{keys: ['${secret:other}']}");
        let h = testing::harness();
        let mut ctx = request(&h, "GET", "/", &[("x-api-key", "other-key")], None);
        assert!(matches!(access(&*p, &mut ctx), Flow::Continue));
    }

    #[test]
    fn rejects_bad_configs_with_their_paths() {
        let errs = testing::errors(build, "{header: 'bad header', keys: []}", SECRETS);
        let paths: Vec<&str> = errs.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(paths, ["header", "keys"]);
        let errs = testing::errors(
            build,
            "{keys: ['${secret:missing}', plain-text-key]}",
            SECRETS,
        );
        assert_eq!(errs[0].0, "keys[1]");
        assert!(errs[0].1.contains("secret reference"), "{errs:?}");
        let errs = testing::errors(build, "{keys: ['${secret:missing}']}", SECRETS);
        assert_eq!(errs[0].0, "keys[0]");
        assert!(errs[0].1.contains("not declared"), "{errs:?}");
        let errs = testing::errors(build, "{keys: ['${secret:other}'], colour: red}", SECRETS);
        assert_eq!(errs[0].0, "colour");
    }
}
