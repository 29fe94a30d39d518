//! `json_transform`: reshapes JSON bodies with a declarative mapping ([`mapping`]): pick,
//! rename, nest, constants and defaults, with the path syntax of
//! [`json_path`](crate::json_path) — e.g. a Zapier "signal" `{name, variables{}}`
//! into the event schema an upstream expects.
//!
//! - Request side (access phase): a JSON body (by `Content-Type`, or none given) is read,
//!   mapped and replaced, with `Content-Type: application/json` and the new length. Invalid
//!   JSON, or a missing `required` field, is refused with 400 JSON before any upstream sees
//!   it. An empty body is left alone; other content types pass (or get 415 with
//!   `other_content_types: reject`).
//! - Response side (header_filter + body_filter): 2xx responses with a JSON content type and
//!   no content encoding are held back chunk by chunk (up to `max_body_bytes`), mapped at
//!   the end, and sent as one chunk (the driver sends filtered bodies chunked, without
//!   `Content-Length`). The status is already on its way by then, so a body that is not
//!   JSON, is too large, or lacks a required field goes out unchanged, with a warning in
//!   the log.
//!
//! Runs after the signature and auth plugins (they must see the raw body) and after
//! `form_to_json`, before `lua` scripts.

mod config;
pub mod mapping;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use http::HeaderValue;
use serde_json::Value;

pub use config::JsonTransformConfig;

use self::config::Others;
use self::mapping::{MapError, Mapping};
use super::{parse_config, BuildCtx, Flow, Phase, PhaseSet, Plugin, PluginError, Step};
use sluicegate_core::context::{RequestCtx, ResponseHead};
use sluicegate_core::diag::{Diags, Path};
use sluicegate_core::error::{rejection, Kind};
use sluicegate_core::yaml::Node;

/// Gives each instance an id, so several instances on one chain keep separate buffers.
static NEXT_ID: AtomicUsize = AtomicUsize::new(1);

struct RequestSide {
    mapping: Mapping,
    others: Others,
}

struct ResponseSide {
    mapping: Mapping,
    max_body_bytes: usize,
}

/// The `json_transform` plugin.
pub struct JsonTransform {
    id: usize,
    request: Option<RequestSide>,
    response: Option<ResponseSide>,
}

/// Response bodies held back by the instances of a request's chain.
#[derive(Clone, Default)]
struct Pending(Vec<Held>);

#[derive(Clone)]
struct Held {
    owner: usize,
    data: BytesMut,
    /// Gave up (too large): the rest passes unchanged.
    passthrough: bool,
}

/// Builds a `json_transform` plugin from its config.
pub fn build(
    config: &Node,
    path: &Path,
    _ctx: &BuildCtx<'_>,
    diags: &mut Diags,
) -> Option<Arc<dyn Plugin>> {
    let cfg: JsonTransformConfig = parse_config(config, path, diags)?;
    let before = diags.0.len();
    let request = cfg.request.as_ref().and_then(|side| {
        let p = path.key("request");
        if side.max_body_bytes != config_default_max() {
            diags.push(
                &p.key("max_body_bytes"),
                "only applies to `response` (request bodies are limited by the listener's `max_body_bytes`)",
            );
        }
        Mapping::compile(side, &p, diags).map(|mapping| RequestSide {
            mapping,
            others: side.other_content_types,
        })
    });
    let response = cfg.response.as_ref().and_then(|side| {
        let p = path.key("response");
        if side.other_content_types != Others::Pass {
            diags.push(
                &p.key("other_content_types"),
                "only applies to `request` (responses of other types always pass)",
            );
        }
        if side.fields.iter().any(|f| f.required) {
            diags.push(
                &p.key("fields"),
                "`required` only applies to `request` (a response cannot be refused)",
            );
        }
        if side.max_body_bytes == 0 {
            diags.push(&p.key("max_body_bytes"), "must be greater than 0");
        }
        Mapping::compile(side, &p, diags).map(|mapping| ResponseSide {
            mapping,
            max_body_bytes: side.max_body_bytes,
        })
    });
    if cfg.request.is_none() && cfg.response.is_none() {
        diags.push(path, "give `request`, `response` or both");
    }
    (diags.0.len() == before).then(|| {
        Arc::new(JsonTransform {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            request,
            response,
        }) as Arc<dyn Plugin>
    })
}

fn config_default_max() -> usize {
    1024 * 1024
}

/// Whether a content type is JSON: `application/json`, `application/*+json`, `text/json`.
fn is_json(content_type: &str) -> bool {
    let media = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    media == "application/json"
        || media == "text/json"
        || (media.starts_with("application/") && media.ends_with("+json"))
}

fn content_type(headers: &http::HeaderMap) -> Option<&str> {
    headers
        .get(http::header::CONTENT_TYPE)
        .map(|v| v.to_str().unwrap_or("?"))
}

impl JsonTransform {
    async fn transform_request(
        &self,
        side: &RequestSide,
        ctx: &mut RequestCtx,
    ) -> Result<Flow, PluginError> {
        if content_type(&ctx.head.headers).is_some_and(|ct| !is_json(ct)) {
            return Ok(match side.others {
                Others::Pass => Flow::Continue,
                Others::Reject => Flow::Respond(rejection(
                    Kind::UnsupportedMediaType,
                    "expected a JSON body (application/json)",
                    &ctx.request_id,
                )),
            });
        }
        let body = ctx.read_body().await?;
        if body.is_empty() {
            return Ok(Flow::Continue);
        }
        let input: Value = match serde_json::from_slice(&body) {
            Ok(v) => v,
            Err(e) => {
                tracing::debug!(request_id = ctx.request_id_str(), error = %e, "Invalid JSON body refused.");
                return Ok(Flow::Respond(rejection(
                    Kind::InvalidJson,
                    format!("the request body is not valid JSON: {e}"),
                    &ctx.request_id,
                )));
            }
        };
        let output = match side.mapping.apply(&input) {
            Ok(v) => v,
            Err(MapError::Missing(field)) => {
                return Ok(Flow::Respond(rejection(
                    Kind::BadRequest,
                    format!("the request body lacks the required field `{field}`"),
                    &ctx.request_id,
                )));
            }
        };
        let bytes = Bytes::from(output.to_string());
        let headers = &mut ctx.head.headers;
        headers.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        headers.insert(http::header::CONTENT_LENGTH, HeaderValue::from(bytes.len()));
        headers.remove(http::header::TRANSFER_ENCODING);
        ctx.set_body(bytes);
        Ok(Flow::Continue)
    }

    /// The mapped response body, or the original one (with a warning) when it cannot be.
    fn transform_response(&self, side: &ResponseSide, ctx: &RequestCtx, data: Bytes) -> Bytes {
        if data.is_empty() {
            return data;
        }
        let input: Value = match serde_json::from_slice(&data) {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(request_id = ctx.request_id_str(), route = ctx.route_name(), error = %e, "Response body is not valid JSON; sent unchanged.");
                return data;
            }
        };
        match side.mapping.apply(&input) {
            Ok(v) => Bytes::from(v.to_string()),
            Err(MapError::Missing(field)) => {
                tracing::warn!(request_id = ctx.request_id_str(), route = ctx.route_name(), field = %field, "Response body lacks a mapped field; sent unchanged.");
                data
            }
        }
    }
}

impl Plugin for JsonTransform {
    fn name(&self) -> &'static str {
        "json_transform"
    }

    fn phases(&self) -> PhaseSet {
        match (self.request.is_some(), self.response.is_some()) {
            (true, true) => PhaseSet::of(&[Phase::Access, Phase::HeaderFilter, Phase::BodyFilter]),
            (true, false) => PhaseSet::of(&[Phase::Access]),
            _ => PhaseSet::of(&[Phase::HeaderFilter, Phase::BodyFilter]),
        }
    }

    fn access<'a>(&'a self, ctx: &'a mut RequestCtx) -> Step<'a> {
        let Some(side) = &self.request else {
            return Step::next();
        };
        let json = content_type(&ctx.head.headers).is_none_or(is_json);
        if !json && side.others == Others::Pass {
            return Step::next();
        }
        Step::Wait(Box::pin(self.transform_request(side, ctx)))
    }

    fn header_filter(
        &self,
        ctx: &mut RequestCtx,
        resp: &mut ResponseHead,
    ) -> Result<(), PluginError> {
        if self.response.is_none()
            || !resp.status.is_success()
            || resp.status == http::StatusCode::NO_CONTENT
            || !content_type(&resp.headers).is_some_and(is_json)
            || resp
                .headers
                .get(http::header::CONTENT_ENCODING)
                .is_some_and(|e| e != "identity")
        {
            return Ok(());
        }
        // The body changes length: the driver sends filtered bodies chunked.
        resp.headers.remove(http::header::CONTENT_LENGTH);
        let held = Held {
            owner: self.id,
            data: BytesMut::new(),
            passthrough: false,
        };
        match ctx.vars.get_mut::<Pending>() {
            Some(p) => p.0.push(held),
            None => {
                ctx.vars.insert(Pending(vec![held]));
            }
        }
        Ok(())
    }

    fn body_filter(
        &self,
        ctx: &mut RequestCtx,
        chunk: &mut Bytes,
        eof: bool,
    ) -> Result<(), PluginError> {
        let Some(side) = &self.response else {
            return Ok(());
        };
        let Some(held) = ctx
            .vars
            .get_mut::<Pending>()
            .and_then(|p| p.0.iter_mut().find(|h| h.owner == self.id))
        else {
            return Ok(());
        };
        if held.passthrough {
            return Ok(());
        }
        if held.data.len() + chunk.len() > side.max_body_bytes {
            held.passthrough = true;
            let mut all = std::mem::take(&mut held.data);
            all.extend_from_slice(chunk);
            *chunk = all.freeze();
            tracing::warn!(
                request_id = ctx.request_id_str(),
                route = ctx.route_name(),
                limit = side.max_body_bytes,
                "Response body over json_transform's max_body_bytes; sent unchanged."
            );
            return Ok(());
        }
        held.data.extend_from_slice(chunk);
        *chunk = Bytes::new();
        if eof {
            let data = std::mem::take(&mut held.data).freeze();
            *chunk = self.transform_response(side, ctx, data);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
