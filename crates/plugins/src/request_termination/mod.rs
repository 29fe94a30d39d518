//! `request_termination`: answers every request of the route with a fixed status, body and
//! headers, without an upstream (maintenance pages, health routes, stubs). It runs in the
//! access phase with a low priority, so auth plugins still apply before it.

mod config;

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, StatusCode};

pub use config::RequestTerminationConfig;

use super::{
    header_pair, parse_config, BuildCtx, Flow, LocalResponse, Phase, PhaseSet, Plugin, Step,
};
use sluicegate_core::context::RequestCtx;
use sluicegate_core::diag::{Diags, Path};
use sluicegate_core::yaml::Node;

/// The `request_termination` plugin.
#[derive(Debug)]
pub struct RequestTermination {
    response: LocalResponse,
}

/// Builds a `request_termination` plugin from its config.
pub fn build(
    config: &Node,
    path: &Path,
    _ctx: &BuildCtx<'_>,
    diags: &mut Diags,
) -> Option<Arc<dyn Plugin>> {
    let cfg: RequestTerminationConfig = parse_config(config, path, diags)?;
    let before = diags.0.len();
    let status = match StatusCode::from_u16(cfg.status) {
        Ok(s) if (200..=599).contains(&cfg.status) => s,
        _ => {
            diags.push(
                &path.key("status"),
                format!("`{}` is not a final status code (200..599)", cfg.status),
            );
            StatusCode::SERVICE_UNAVAILABLE
        }
    };
    let mut headers = HeaderMap::new();
    let body = match (&cfg.body, &cfg.json) {
        (Some(_), Some(_)) => {
            diags.push(path, "give `body` or `json`, not both");
            Bytes::new()
        }
        (Some(text), None) => {
            let ct = cfg
                .content_type
                .as_deref()
                .unwrap_or("text/plain; charset=utf-8");
            headers.extend(header_pair(
                "content-type",
                ct,
                &path.key("content_type"),
                diags,
            ));
            Bytes::from(text.clone())
        }
        (None, Some(json)) => {
            let ct = cfg.content_type.as_deref().unwrap_or("application/json");
            headers.extend(header_pair(
                "content-type",
                ct,
                &path.key("content_type"),
                diags,
            ));
            Bytes::from(json.to_string())
        }
        (None, None) => Bytes::new(),
    };
    // Configured headers replace defaults (a `Content-Type` here wins over `content_type`).
    for (k, v) in &cfg.headers {
        if let Some((n, v)) = header_pair(k, v, &path.key("headers").key(k), diags) {
            headers.insert(n, v);
        }
    }
    (diags.0.len() == before).then(|| {
        Arc::new(RequestTermination {
            response: LocalResponse {
                status,
                headers,
                body,
            },
        }) as Arc<dyn Plugin>
    })
}

impl Plugin for RequestTermination {
    fn name(&self) -> &'static str {
        "request_termination"
    }

    fn answers(&self) -> bool {
        true
    }

    fn phases(&self) -> PhaseSet {
        PhaseSet::of(&[Phase::Access])
    }

    fn access<'a>(&'a self, _ctx: &'a mut RequestCtx) -> Step<'a> {
        Step::Ready(Ok(Flow::Respond(self.response.clone())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluicegate_core::yaml::parse;
    use std::collections::HashMap;

    fn build_from(text: &str) -> (Option<Arc<dyn Plugin>>, Diags) {
        let node = parse(text, &HashMap::new()).unwrap();
        let mut diags = Diags::default();
        let ctx = BuildCtx {
            consumers: &Default::default(),
            base_dir: std::path::Path::new("."),
            secrets: sluicegate_secrets::SecretStore::empty(),
            route: None,
            lua_modules: &sluicegate_lua::Modules::empty(),
        };
        (build(&node, &Path::root(), &ctx, &mut diags), diags)
    }

    #[test]
    fn defaults_to_an_empty_503() {
        let (p, d) = build_from("{}");
        assert!(d.is_empty());
        assert!(p.is_some());
    }

    #[test]
    fn rejects_body_and_json_together_and_bad_status() {
        let (p, d) = build_from("{status: 1000, body: x, json: {a: 1}}");
        assert!(p.is_none());
        assert_eq!(d.0.len(), 2, "{:?}", d.0);
    }
}
