//! `cors`: Cross-Origin Resource Sharing. A preflight (`OPTIONS` with `Origin` and
//! `Access-Control-Request-Method`) is answered here with 204 and the allowed methods,
//! headers and max-age, never reaching the upstream; a preflight from an origin that is not
//! allowed gets 403 JSON. Actual requests from an allowed origin get
//! `Access-Control-Allow-Origin` (plus credentials and exposed headers) on their response,
//! whoever produced it. Requests without `Origin` are not touched.
//!
//! With `credentials`, browsers refuse `*`, so the request's own origin is echoed (with
//! `Vary: Origin`) even when every origin is allowed. Header values are built once.

mod config;

use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};

pub use config::CorsConfig;

use super::{
    parse_config, BuildCtx, Flow, LocalResponse, Phase, PhaseSet, Plugin, PluginError, Step,
};
use sluicegate_core::context::{RequestCtx, ResponseHead};
use sluicegate_core::diag::{Diags, Path};
use sluicegate_core::error::{rejection, Kind};
use sluicegate_core::yaml::Node;

/// One allowed-origin pattern (lower-case).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Origin {
    /// Any origin.
    Any,
    /// Exactly this origin.
    Exact(String),
    /// `scheme://` + any subdomain of `.suffix` (optionally + `:port`).
    Subdomains { scheme: String, suffix: String },
}

impl Origin {
    fn parse(text: &str) -> Result<Origin, String> {
        if text == "*" {
            return Ok(Origin::Any);
        }
        let lower = text.to_ascii_lowercase();
        let (scheme, host) = lower
            .split_once("://")
            .filter(|(s, h)| !s.is_empty() && !h.is_empty())
            .ok_or_else(|| {
                format!("`{text}` is not an origin (`https://app.example.com`, `https://*.example.com` or `*`)")
            })?;
        if host.contains('/') {
            return Err(format!(
                "`{text}`: an origin has no path (remove the trailing `/...`)"
            ));
        }
        match host.strip_prefix("*.") {
            Some(suffix) if !suffix.is_empty() && !suffix.contains('*') => Ok(Origin::Subdomains {
                scheme: format!("{scheme}://"),
                suffix: format!(".{suffix}"),
            }),
            _ if host.contains('*') => Err(format!(
                "`{text}`: a wildcard is allowed only as the first label (`https://*.example.com`)"
            )),
            _ => Ok(Origin::Exact(lower)),
        }
    }

    fn matches(&self, origin: &str) -> bool {
        match self {
            Origin::Any => true,
            Origin::Exact(o) => o.eq_ignore_ascii_case(origin),
            Origin::Subdomains { scheme, suffix } => {
                origin.len() > scheme.len() + suffix.len()
                    && origin[..scheme.len()].eq_ignore_ascii_case(scheme)
                    && origin[origin.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
                    && !origin[scheme.len()..origin.len() - suffix.len()].contains(['/', ':'])
            }
        }
    }
}

/// The `cors` plugin.
#[derive(Debug)]
pub struct Cors {
    origins: Vec<Origin>,
    any_origin: bool,
    methods: HeaderValue,
    headers: Option<HeaderValue>,
    exposed: Option<HeaderValue>,
    credentials: bool,
    max_age: Option<HeaderValue>,
}

/// Builds a `cors` plugin from its config.
pub fn build(
    config: &Node,
    path: &Path,
    _ctx: &BuildCtx<'_>,
    diags: &mut Diags,
) -> Option<Arc<dyn Plugin>> {
    let cfg: CorsConfig = parse_config(config, path, diags)?;
    let before = diags.0.len();
    if cfg.origins.is_empty() {
        diags.push(&path.key("origins"), "give at least one origin (or `*`)");
    }
    let mut origins = Vec::new();
    for (i, o) in cfg.origins.iter().enumerate() {
        match Origin::parse(o) {
            Ok(o) => origins.push(o),
            Err(e) => diags.push(&path.key("origins").index(i), e),
        }
    }
    if cfg.methods.is_empty() {
        diags.push(&path.key("methods"), "give at least one method");
    }
    for (i, m) in cfg.methods.iter().enumerate() {
        if m != "*" && http::Method::from_bytes(m.as_bytes()).is_err() {
            diags.push(
                &path.key("methods").index(i),
                format!("invalid method `{m}`"),
            );
        }
    }
    let names = |list: &[String], key: &str, diags: &mut Diags| {
        for (i, h) in list.iter().enumerate() {
            if h != "*" && HeaderName::from_bytes(h.as_bytes()).is_err() {
                diags.push(
                    &path.key(key).index(i),
                    format!("invalid header name `{h}`"),
                );
            }
        }
    };
    if let Some(h) = &cfg.headers {
        names(h, "headers", diags);
    }
    names(&cfg.exposed_headers, "exposed_headers", diags);
    if cfg.credentials {
        // The Fetch standard gives `*` no wildcard meaning in credentialed requests.
        for (key, list) in [
            ("methods", &cfg.methods),
            ("headers", cfg.headers.as_ref().unwrap_or(&Vec::new())),
            ("exposed_headers", &cfg.exposed_headers),
        ] {
            if list.iter().any(|v| v == "*") {
                diags.push(
                    &path.key(key),
                    "`*` is not a wildcard for browsers when `credentials` is on: list the names",
                );
            }
        }
    }
    let joined = |list: &[String]| HeaderValue::from_str(&list.join(", ")).ok();
    let plugin = Cors {
        any_origin: origins.contains(&Origin::Any),
        origins,
        methods: joined(&cfg.methods).unwrap_or(HeaderValue::from_static("GET")),
        headers: cfg.headers.as_deref().and_then(joined),
        exposed: (!cfg.exposed_headers.is_empty())
            .then(|| joined(&cfg.exposed_headers))
            .flatten(),
        credentials: cfg.credentials,
        max_age: cfg.max_age_secs.map(HeaderValue::from),
    };
    (diags.0.len() == before).then(|| Arc::new(plugin) as Arc<dyn Plugin>)
}

impl Cors {
    fn allowed(&self, origin: &HeaderValue) -> bool {
        origin
            .to_str()
            .is_ok_and(|o| self.origins.iter().any(|p| p.matches(o)))
    }

    /// Whether the answer depends on the request's origin (so caches must key on it).
    fn echoes_origin(&self) -> bool {
        !self.any_origin || self.credentials
    }

    /// Sets the headers every CORS response from an allowed origin carries.
    fn allow_origin(&self, origin: &HeaderValue, headers: &mut HeaderMap) {
        if self.echoes_origin() {
            headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
            vary_origin(headers);
        } else {
            headers.insert(
                header::ACCESS_CONTROL_ALLOW_ORIGIN,
                HeaderValue::from_static("*"),
            );
        }
        if self.credentials {
            headers.insert(
                header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
        }
    }

    fn preflight(&self, ctx: &RequestCtx, origin: &HeaderValue) -> Flow {
        if !self.allowed(origin) {
            tracing::debug!(
                request_id = ctx.request_id_str(),
                "CORS preflight from an origin that is not allowed refused."
            );
            return Flow::Respond(rejection(
                Kind::Forbidden,
                "this origin may not make cross-origin requests here",
                &ctx.request_id,
            ));
        }
        let mut headers = HeaderMap::new();
        self.allow_origin(origin, &mut headers);
        headers.insert(header::ACCESS_CONTROL_ALLOW_METHODS, self.methods.clone());
        let requested = ctx.head.headers.get(header::ACCESS_CONTROL_REQUEST_HEADERS);
        match (&self.headers, requested) {
            (Some(h), _) => {
                headers.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, h.clone());
            }
            (None, Some(r)) => {
                headers.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, r.clone());
                headers.append(
                    header::VARY,
                    HeaderValue::from_static("Access-Control-Request-Headers"),
                );
            }
            (None, None) => {}
        }
        if let Some(m) = &self.max_age {
            headers.insert(header::ACCESS_CONTROL_MAX_AGE, m.clone());
        }
        Flow::Respond(LocalResponse {
            status: StatusCode::NO_CONTENT,
            headers,
            body: Bytes::new(),
        })
    }
}

/// Adds `Vary: Origin` unless the response already varies on it.
fn vary_origin(headers: &mut HeaderMap) {
    let varies = headers.get_all(header::VARY).iter().any(|v| {
        v.to_str().is_ok_and(|v| {
            v.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("origin") || t.trim() == "*")
        })
    });
    if !varies {
        headers.append(header::VARY, HeaderValue::from_static("Origin"));
    }
}

fn is_preflight(ctx: &RequestCtx) -> bool {
    ctx.head.method == http::Method::OPTIONS
        && ctx
            .head
            .headers
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
}

impl Plugin for Cors {
    fn name(&self) -> &'static str {
        "cors"
    }

    fn phases(&self) -> PhaseSet {
        PhaseSet::of(&[Phase::Access, Phase::HeaderFilter])
    }

    fn answers(&self) -> bool {
        // It answers preflights only; other requests still need an upstream.
        false
    }

    fn access<'a>(&'a self, ctx: &'a mut RequestCtx) -> Step<'a> {
        let flow = match ctx.head.headers.get(header::ORIGIN) {
            Some(origin) if is_preflight(ctx) => self.preflight(ctx, origin),
            _ => Flow::Continue,
        };
        Step::Ready(Ok(flow))
    }

    fn header_filter(
        &self,
        ctx: &mut RequestCtx,
        resp: &mut ResponseHead,
    ) -> Result<(), PluginError> {
        if is_preflight(ctx) {
            return Ok(());
        }
        match ctx.head.headers.get(header::ORIGIN) {
            Some(origin) if self.allowed(origin) => {
                self.allow_origin(origin, &mut resp.headers);
                if let Some(e) = &self.exposed {
                    resp.headers
                        .insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, e.clone());
                }
            }
            // The answer would differ for another origin: a shared cache must not hand this
            // response to a cross-origin request.
            _ if self.echoes_origin() => vary_origin(&mut resp.headers),
            _ => {}
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
