//! `security_headers`: adds the browser-hardening response headers — HSTS,
//! `X-Frame-Options`, `X-Content-Type-Options`, `Content-Security-Policy`,
//! `Referrer-Policy`, `Permissions-Policy`, `Cross-Origin-Opener-Policy` — to every response
//! of the route, the gateway's own included. Header values are validated and built once;
//! the header filter only inserts them. A value the upstream already set is kept unless
//! `replace_upstream` is on.

mod config;

use std::sync::Arc;

use http::{HeaderName, HeaderValue};

pub use config::SecurityHeadersConfig;

use super::{parse_config, BuildCtx, Phase, PhaseSet, Plugin, PluginError};
use sluicegate_core::context::{RequestCtx, ResponseHead};
use sluicegate_core::diag::{Diags, Path};
use sluicegate_core::yaml::Node;

/// One year: the shortest HSTS max-age the browsers' preload lists accept.
const PRELOAD_MIN_MAX_AGE: u64 = 31_536_000;

/// The values `Referrer-Policy` accepts (W3C Referrer Policy, section 3).
const REFERRER_POLICIES: &[&str] = &[
    "no-referrer",
    "no-referrer-when-downgrade",
    "same-origin",
    "origin",
    "strict-origin",
    "origin-when-cross-origin",
    "strict-origin-when-cross-origin",
    "unsafe-url",
];

/// The `security_headers` plugin.
#[derive(Debug)]
pub struct SecurityHeaders {
    headers: Vec<(HeaderName, HeaderValue)>,
    replace: bool,
}

/// Builds a `security_headers` plugin from its config.
pub fn build(
    config: &Node,
    path: &Path,
    _ctx: &BuildCtx<'_>,
    diags: &mut Diags,
) -> Option<Arc<dyn Plugin>> {
    let cfg: SecurityHeadersConfig = parse_config(config, path, diags)?;
    let before = diags.0.len();
    let mut headers = Vec::new();
    let mut add = |name: &'static str, value: &str, key: &str, diags: &mut Diags| {
        match HeaderValue::from_str(value) {
            Ok(v) => headers.push((HeaderName::from_static(name), v)),
            Err(_) => diags.push(&path.key(key), "not a valid header value"),
        }
    };
    if cfg.hsts_max_age_secs > 0 {
        let mut v = format!("max-age={}", cfg.hsts_max_age_secs);
        if cfg.hsts_include_subdomains {
            v.push_str("; includeSubDomains");
        }
        if cfg.hsts_preload {
            if !cfg.hsts_include_subdomains || cfg.hsts_max_age_secs < PRELOAD_MIN_MAX_AGE {
                diags.push(
                    &path.key("hsts_preload"),
                    format!(
                        "preload needs hsts_include_subdomains and hsts_max_age_secs of at \
                         least {PRELOAD_MIN_MAX_AGE} (one year)"
                    ),
                );
            }
            v.push_str("; preload");
        }
        add("strict-transport-security", &v, "hsts_max_age_secs", diags);
    } else if cfg.hsts_preload {
        diags.push(&path.key("hsts_preload"), "preload needs HSTS on");
    }
    match cfg.frame_options.to_ascii_uppercase().as_str() {
        "OFF" => {}
        v @ ("DENY" | "SAMEORIGIN") => add("x-frame-options", v, "frame_options", diags),
        _ => diags.push(
            &path.key("frame_options"),
            format!(
                "`{}` is not DENY, SAMEORIGIN or off (ALLOW-FROM is obsolete: use a CSP \
                 `frame-ancestors` directive)",
                cfg.frame_options
            ),
        ),
    }
    if cfg.content_type_options {
        add(
            "x-content-type-options",
            "nosniff",
            "content_type_options",
            diags,
        );
    }
    match &cfg.content_security_policy {
        Some(csp) if csp.trim().is_empty() => {
            diags.push(&path.key("content_security_policy"), "empty policy");
        }
        Some(csp) => {
            let name = if cfg.content_security_policy_report_only {
                "content-security-policy-report-only"
            } else {
                "content-security-policy"
            };
            add(name, csp, "content_security_policy", diags);
        }
        None if cfg.content_security_policy_report_only => diags.push(
            &path.key("content_security_policy_report_only"),
            "needs content_security_policy",
        ),
        None => {}
    }
    match cfg.referrer_policy.as_str() {
        "off" => {}
        v if v.split(',').all(|p| REFERRER_POLICIES.contains(&p.trim())) => {
            add("referrer-policy", v, "referrer_policy", diags)
        }
        v => diags.push(
            &path.key("referrer_policy"),
            format!(
                "`{v}` is not a referrer policy; expected one of {} or off",
                REFERRER_POLICIES.join(", ")
            ),
        ),
    }
    if let Some(v) = &cfg.permissions_policy {
        add("permissions-policy", v, "permissions_policy", diags);
    }
    if let Some(v) = &cfg.cross_origin_opener_policy {
        if !matches!(
            v.as_str(),
            "same-origin" | "same-origin-allow-popups" | "unsafe-none" | "noopener-allow-popups"
        ) {
            diags.push(
                &path.key("cross_origin_opener_policy"),
                format!("`{v}` is not same-origin, same-origin-allow-popups, noopener-allow-popups or unsafe-none"),
            );
        } else {
            add(
                "cross-origin-opener-policy",
                v,
                "cross_origin_opener_policy",
                diags,
            );
        }
    }
    if headers.is_empty() && diags.0.len() == before {
        diags.push(path, "every header is off: nothing to do");
    }
    (diags.0.len() == before).then(|| {
        Arc::new(SecurityHeaders {
            headers,
            replace: cfg.replace_upstream,
        }) as Arc<dyn Plugin>
    })
}

impl Plugin for SecurityHeaders {
    fn name(&self) -> &'static str {
        "security_headers"
    }

    fn phases(&self) -> PhaseSet {
        PhaseSet::of(&[Phase::HeaderFilter])
    }

    fn reads_request_late(&self) -> bool {
        false
    }

    fn header_filter(
        &self,
        _ctx: &mut RequestCtx,
        resp: &mut ResponseHead,
    ) -> Result<(), PluginError> {
        for (name, value) in &self.headers {
            if self.replace {
                resp.headers.insert(name.clone(), value.clone());
            } else {
                resp.headers
                    .entry(name.clone())
                    .or_insert_with(|| value.clone());
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{self, request, response};

    fn filtered(text: &str, upstream: &[(&str, &str)]) -> ResponseHead {
        let p = testing::plugin(build, text, &[]);
        let h = testing::harness();
        let mut ctx = request(&h, "GET", "/", &[], None);
        let mut head = response(200, upstream);
        p.header_filter(&mut ctx, &mut head).unwrap();
        head
    }

    #[test]
    fn adds_safe_defaults() {
        let head = filtered("", &[]);
        let h = &head.headers;
        assert_eq!(
            h["strict-transport-security"],
            "max-age=63072000; includeSubDomains"
        );
        assert_eq!(h["x-frame-options"], "DENY");
        assert_eq!(h["x-content-type-options"], "nosniff");
        assert_eq!(h["referrer-policy"], "strict-origin-when-cross-origin");
        assert!(h.get("content-security-policy").is_none());
    }

    #[test]
    fn sets_a_policy_and_keeps_the_upstreams_own_values_unless_told() {
        let cfg = "{content_security_policy: \"default-src 'self'\", frame_options: sameorigin, hsts_max_age_secs: 0}";
        let head = filtered(cfg, &[("x-frame-options", "DENY")]);
        assert_eq!(
            head.headers["content-security-policy"],
            "default-src 'self'"
        );
        assert_eq!(head.headers["x-frame-options"], "DENY");
        assert!(head.headers.get("strict-transport-security").is_none());
        let cfg = "{frame_options: sameorigin, replace_upstream: true}";
        let head = filtered(cfg, &[("x-frame-options", "DENY")]);
        assert_eq!(head.headers["x-frame-options"], "SAMEORIGIN");
    }

    #[test]
    fn rejects_invalid_values_with_their_paths() {
        let errs = testing::errors(
            build,
            "{frame_options: ALLOW-FROM x, referrer_policy: sometimes, hsts_preload: true, hsts_max_age_secs: 600, cross_origin_opener_policy: maybe}",
            &[],
        );
        let paths: Vec<&str> = errs.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(
            paths,
            [
                "hsts_preload",
                "frame_options",
                "referrer_policy",
                "cross_origin_opener_policy"
            ]
        );
        let errs = testing::errors(
            build,
            "{hsts_max_age_secs: 0, frame_options: off, content_type_options: false, referrer_policy: off}",
            &[],
        );
        assert!(errs[0].1.contains("nothing to do"));
    }
}
