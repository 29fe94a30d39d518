//! `health`: answers the route's requests itself with `200 {"status":"ok"}`, or
//! `503 {"status":"draining"}` once the gateway has begun a graceful shutdown, so a load
//! balancer stops sending new traffic while in-flight requests finish. No upstream is
//! touched. The responses are built once, when the plugin is.

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, StatusCode};

use super::{parse_config, BuildCtx, Flow, LocalResponse, Phase, PhaseSet, Plugin, Step};
use sluicegate_core::context::RequestCtx;
use sluicegate_core::diag::{Diags, Path};
use sluicegate_core::yaml::Node;

/// `config` of a `health` plugin entry: it takes no options.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthConfig {}

/// The `health` plugin.
#[derive(Debug)]
pub struct Health {
    ok: LocalResponse,
    draining: LocalResponse,
}

/// Builds a `health` plugin (its config must be empty).
pub fn build(
    config: &Node,
    path: &Path,
    _ctx: &BuildCtx<'_>,
    diags: &mut Diags,
) -> Option<Arc<dyn Plugin>> {
    let HealthConfig {} = parse_config(config, path, diags)?;
    Some(Arc::new(Health {
        ok: response(StatusCode::OK, r#"{"status":"ok"}"#),
        draining: response(StatusCode::SERVICE_UNAVAILABLE, r#"{"status":"draining"}"#),
    }))
}

fn response(status: StatusCode, body: &'static str) -> LocalResponse {
    let mut headers = HeaderMap::new();
    headers.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    // A cached "ok" would hide a draining gateway from the load balancer.
    headers.insert(
        http::header::CACHE_CONTROL,
        HeaderValue::from_static("no-store"),
    );
    LocalResponse {
        status,
        headers,
        body: Bytes::from_static(body.as_bytes()),
    }
}

impl Plugin for Health {
    fn name(&self) -> &'static str {
        "health"
    }

    fn phases(&self) -> PhaseSet {
        PhaseSet::of(&[Phase::Content])
    }

    fn content<'a>(&'a self, ctx: &'a mut RequestCtx) -> Step<'a> {
        let draining = ctx.worker.draining();
        let r = if draining { &self.draining } else { &self.ok };
        Step::Ready(Ok(Flow::Respond(r.clone())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{self, content, request, responded};

    #[test]
    fn answers_ok_then_503_once_the_gateway_drains() {
        let p = testing::plugin(build, "", &[]);
        let h = testing::harness();
        let mut ctx = request(&h, "GET", "/healthcheck", &[], None);
        let (status, body) = responded(content(&*p, &mut ctx));
        assert_eq!((status, body), (200, serde_json::json!({"status": "ok"})));
        h.worker.draining.set(true);
        let mut ctx = request(&h, "GET", "/healthcheck", &[], None);
        let (status, body) = responded(content(&*p, &mut ctx));
        assert_eq!(
            (status, body),
            (503, serde_json::json!({"status": "draining"}))
        );
    }

    #[test]
    fn takes_no_options() {
        let errs = testing::errors(build, "{path: /x}", &[]);
        assert_eq!(errs[0].0, "path");
    }
}
