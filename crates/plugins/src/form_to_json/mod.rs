//! `form_to_json`: turns an `application/x-www-form-urlencoded` request body (what Slack
//! and HTML forms send) into a JSON object for upstreams that speak JSON. Fields keep the
//! order they first appear in; a field that appears more than once becomes an array of its
//! values, in order; with `arrays: always`, every value is an array. `Content-Type` becomes
//! `application/json` and `Content-Length` the new length. Requests of another content type
//! pass untouched (or get 415 with `other_content_types: reject`). A body that is not valid
//! form encoding (a bad `%` escape, a field without a name, bytes that are not UTF-8 once
//! decoded) gets 400 JSON.
//!
//! Runs in the access phase after the signature and auth plugins (which must see the raw
//! body) and before `lua` scripts, which then see JSON.

use std::sync::Arc;

use bytes::Bytes;
use http::HeaderValue;
use serde::Deserialize;

use super::{parse_config, BuildCtx, Flow, Phase, PhaseSet, Plugin, PluginError, Step};
use sluicegate_core::context::RequestCtx;
use sluicegate_core::diag::{Diags, Path};
use sluicegate_core::error::{rejection, Kind};
use sluicegate_core::yaml::Node;

/// `config` of a `form_to_json` plugin entry.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FormToJsonConfig {
    /// `repeated` (default): only repeated fields become arrays; `always`: every field is an
    /// array, so the upstream sees one shape whatever the count.
    #[serde(default)]
    pub arrays: Arrays,
    /// What to do with a request that is not form-encoded: `pass` (default) or `reject`
    /// (415).
    #[serde(default)]
    pub other_content_types: Others,
}

/// When values become arrays.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Arrays {
    /// Fields given more than once.
    #[default]
    Repeated,
    /// Every field.
    Always,
}

/// What happens to requests of another content type.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Others {
    /// Forwarded untouched.
    #[default]
    Pass,
    /// Refused with 415.
    Reject,
}

/// The `form_to_json` plugin.
#[derive(Debug)]
pub struct FormToJson {
    arrays: Arrays,
    others: Others,
}

/// Builds a `form_to_json` plugin from its config.
pub fn build(
    config: &Node,
    path: &Path,
    _ctx: &BuildCtx<'_>,
    diags: &mut Diags,
) -> Option<Arc<dyn Plugin>> {
    let cfg: FormToJsonConfig = parse_config(config, path, diags)?;
    Some(Arc::new(FormToJson {
        arrays: cfg.arrays,
        others: cfg.other_content_types,
    }))
}

/// Whether the request says its body is form-encoded (parameters such as `charset` allowed).
fn is_form(ctx: &RequestCtx) -> bool {
    ctx.head
        .headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|t| {
            t.trim()
                .eq_ignore_ascii_case("application/x-www-form-urlencoded")
        })
}

/// Decodes a form body into `(name, values)` pairs in order of first appearance.
pub fn decode(body: &[u8]) -> Result<Vec<(String, Vec<String>)>, String> {
    let mut fields: Vec<(String, Vec<String>)> = Vec::new();
    // Index by name: a body with many fields must not cost quadratic time.
    let mut index: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    for (i, pair) in body.split(|b| *b == b'&').enumerate() {
        if pair.is_empty() {
            continue;
        }
        let (name, value) = match pair.iter().position(|b| *b == b'=') {
            Some(eq) => (&pair[..eq], &pair[eq + 1..]),
            None => (pair, &b""[..]),
        };
        let name = component(name).map_err(|e| format!("field {}: {e}", i + 1))?;
        if name.is_empty() {
            return Err(format!("field {} has no name", i + 1));
        }
        let value = component(value).map_err(|e| format!("field `{name}`: {e}"))?;
        match index.get(&name) {
            Some(&at) => fields[at].1.push(value),
            None => {
                index.insert(name.clone(), fields.len());
                fields.push((name, vec![value]));
            }
        }
    }
    Ok(fields)
}

/// Decodes one name or value: `+` is a space, `%XX` a byte; the result must be UTF-8.
fn component(raw: &[u8]) -> Result<String, String> {
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        match raw[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = |b: Option<&u8>| b.and_then(|b| (*b as char).to_digit(16));
                match (hex(raw.get(i + 1)), hex(raw.get(i + 2))) {
                    (Some(h), Some(l)) => out.push((h * 16 + l) as u8),
                    _ => return Err("invalid `%` escape".to_string()),
                }
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).map_err(|_| "not UTF-8 once decoded".to_string())
}

/// Renders the fields as a JSON object.
pub fn to_json(fields: &[(String, Vec<String>)], arrays: Arrays) -> Bytes {
    let mut out: Vec<u8> = Vec::with_capacity(
        fields
            .iter()
            .map(|(n, v)| n.len() + v.iter().map(|s| s.len() + 3).sum::<usize>() + 4)
            .sum::<usize>()
            + 2,
    );
    out.push(b'{');
    for (i, (name, values)) in fields.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        push_json_str(&mut out, name);
        out.push(b':');
        if values.len() == 1 && arrays == Arrays::Repeated {
            push_json_str(&mut out, &values[0]);
        } else {
            out.push(b'[');
            for (j, v) in values.iter().enumerate() {
                if j > 0 {
                    out.push(b',');
                }
                push_json_str(&mut out, v);
            }
            out.push(b']');
        }
    }
    out.push(b'}');
    Bytes::from(out)
}

fn push_json_str(out: &mut Vec<u8>, s: &str) {
    // Writing a string into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

impl FormToJson {
    async fn convert(&self, ctx: &mut RequestCtx) -> Result<Flow, PluginError> {
        if !is_form(ctx) {
            return Ok(match self.others {
                Others::Pass => Flow::Continue,
                Others::Reject => Flow::Respond(rejection(
                    Kind::UnsupportedMediaType,
                    "expected an application/x-www-form-urlencoded body",
                    &ctx.request_id,
                )),
            });
        }
        let body = ctx.read_body().await?;
        let fields = match decode(&body) {
            Ok(f) => f,
            Err(e) => {
                tracing::debug!(request_id = ctx.request_id_str(), error = %e, "Invalid form body refused.");
                return Ok(Flow::Respond(rejection(
                    Kind::BadRequest,
                    format!("the form body is invalid: {e}"),
                    &ctx.request_id,
                )));
            }
        };
        let json = to_json(&fields, self.arrays);
        let headers = &mut ctx.head.headers;
        headers.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        headers.insert(http::header::CONTENT_LENGTH, HeaderValue::from(json.len()));
        headers.remove(http::header::TRANSFER_ENCODING);
        ctx.set_body(json);
        Ok(Flow::Continue)
    }
}

impl Plugin for FormToJson {
    fn name(&self) -> &'static str {
        "form_to_json"
    }

    fn phases(&self) -> PhaseSet {
        PhaseSet::of(&[Phase::Access])
    }

    fn access<'a>(&'a self, ctx: &'a mut RequestCtx) -> Step<'a> {
        if !is_form(ctx) && self.others == Others::Pass {
            return Step::next();
        }
        Step::Wait(Box::pin(self.convert(ctx)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{self, access, request, responded};
    use sluicegate_core::context::RequestBody;

    const FORM: (&str, &str) = (
        "content-type",
        "application/x-www-form-urlencoded; charset=utf-8",
    );

    fn body(ctx: &RequestCtx) -> serde_json::Value {
        match &ctx.body {
            RequestBody::Buffered(b) => serde_json::from_slice(b).unwrap(),
            _ => panic!("body not replaced"),
        }
    }

    #[test]
    fn turns_a_slack_command_into_json_with_arrays_for_repeated_fields() {
        let p = testing::plugin(build, "", &[]);
        let h = testing::harness();
        let form = b"command=%2Fdeploy&text=prod+now&tag=a&user_name=road%C3%A9&tag=b&empty=&flag";
        let mut ctx = request(
            &h,
            "POST",
            "/",
            &[FORM, ("content-length", "72")],
            Some(form),
        );
        assert!(matches!(access(&*p, &mut ctx), Flow::Continue));
        let json = body(&ctx);
        assert_eq!(
            json,
            serde_json::json!({
                "command": "/deploy", "text": "prod now", "tag": ["a", "b"],
                "user_name": "roadé", "empty": "", "flag": ""
            })
        );
        let RequestBody::Buffered(raw) = &ctx.body else {
            unreachable!()
        };
        assert!(raw.starts_with(br#"{"command":"/deploy","text":"prod now","tag":["a","b"]"#));
        assert_eq!(ctx.head.headers["content-type"], "application/json");
        assert_eq!(
            ctx.head.headers["content-length"],
            raw.len().to_string().as_str()
        );
    }

    #[test]
    fn always_arrays_and_an_empty_body() {
        let p = testing::plugin(build, "{arrays: always}", &[]);
        let h = testing::harness();
        let mut ctx = request(&h, "POST", "/", &[FORM], Some(b"a=1&b=2&a=3"));
        assert!(matches!(access(&*p, &mut ctx), Flow::Continue));
        assert_eq!(body(&ctx), serde_json::json!({"a": ["1", "3"], "b": ["2"]}));
        let mut ctx = request(&h, "POST", "/", &[FORM], None);
        assert!(matches!(access(&*p, &mut ctx), Flow::Continue));
        assert_eq!(body(&ctx), serde_json::json!({}));
    }

    #[test]
    fn refuses_invalid_forms_with_a_json_400() {
        let p = testing::plugin(build, "", &[]);
        let h = testing::harness();
        for bad in [&b"a=%zz"[..], b"a=%4", b"=value", b"a=%FF%FE", b"%C3=1"] {
            let mut ctx = request(&h, "POST", "/", &[FORM], Some(bad));
            let (status, json) = responded(access(&*p, &mut ctx));
            assert_eq!(status, 400, "{}", String::from_utf8_lossy(bad));
            assert_eq!(json["error"], "bad_request");
        }
    }

    #[test]
    fn passes_or_refuses_other_content_types() {
        let h = testing::harness();
        let p = testing::plugin(build, "", &[]);
        let mut ctx = request(
            &h,
            "POST",
            "/",
            &[("content-type", "application/json")],
            Some(b"{}"),
        );
        assert!(matches!(access(&*p, &mut ctx), Flow::Continue));
        assert_eq!(ctx.head.headers["content-type"], "application/json");
        let p = testing::plugin(build, "{other_content_types: reject}", &[]);
        let mut ctx = request(
            &h,
            "POST",
            "/",
            &[("content-type", "text/plain")],
            Some(b"x"),
        );
        assert_eq!(responded(access(&*p, &mut ctx)).0, 415);
    }

    #[test]
    fn rejects_unknown_options() {
        let errs = testing::errors(build, "{arrays: sometimes}", &[]);
        assert_eq!(errs[0].0, "arrays");
        let errs = testing::errors(build, "{nest: true}", &[]);
        assert_eq!(errs[0].0, "nest");
    }
}
