//! Helpers for the built-in plugins' unit tests: build a plugin from YAML with a given set
//! of secrets, make a request context, and run a phase to its end.

use std::sync::Arc;

use futures_util::FutureExt;

use super::{BuildCtx, Factory, Flow, Plugin};
use sluicegate_core::context::{RequestCtx, ResponseHead};
use sluicegate_core::diag::{Diags, Path};
use sluicegate_lua::harness::{FakeRequest, Harness};
use sluicegate_secrets::{Secret, SecretStore, SecretValue};

/// Builds a plugin with `factory` from the YAML `text`; `secrets` are `(name, current,
/// previous)` triples.
pub fn build(
    factory: Factory,
    text: &str,
    secrets: &[(&str, &str, Option<&str>)],
) -> (Option<Arc<dyn Plugin>>, Diags) {
    build_with(factory, text, secrets, &Default::default())
}

/// [`build`] with the configuration's `consumers`.
pub fn build_with(
    factory: Factory,
    text: &str,
    secrets: &[(&str, &str, Option<&str>)],
    consumers: &Arc<crate::consumers::Consumers>,
) -> (Option<Arc<dyn Plugin>>, Diags) {
    let node = sluicegate_core::yaml::parse(text, &std::collections::HashMap::new()).unwrap();
    let store = SecretStore::from_secrets(secrets.iter().map(|(n, cur, prev)| {
        Secret::new(
            n,
            SecretValue::new(cur.as_bytes().to_vec()),
            prev.map(|p| SecretValue::new(p.as_bytes().to_vec())),
        )
    }));
    let mut diags = Diags::default();
    let ctx = BuildCtx {
        consumers,
        base_dir: std::path::Path::new("."),
        secrets: &store,
        route: Some("test"),
        lua_modules: &sluicegate_lua::Modules::empty(),
    };
    let plugin = factory(&node, &Path::root(), &ctx, &mut diags);
    (plugin, diags)
}

/// Builds a plugin that must be valid.
pub fn plugin(
    factory: Factory,
    text: &str,
    secrets: &[(&str, &str, Option<&str>)],
) -> Arc<dyn Plugin> {
    let (p, d) = build(factory, text, secrets);
    assert!(d.is_empty(), "unexpected errors: {:?}", d.0);
    p.unwrap()
}

/// The config errors building `text` gives, as `(path, message)` pairs.
pub fn errors(
    factory: Factory,
    text: &str,
    secrets: &[(&str, &str, Option<&str>)],
) -> Vec<(String, String)> {
    let (p, d) = build(factory, text, secrets);
    assert!(p.is_none(), "expected errors for {text}");
    d.0.into_iter().map(|d| (d.path, d.message)).collect()
}

/// A harness for request contexts.
pub fn harness() -> Harness {
    Harness::new(sluicegate_lua::LuaSettings::default()).unwrap()
}

/// A request with the given method, URI, headers and body.
pub fn request(
    h: &Harness,
    method: &str,
    uri: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> RequestCtx {
    let mut req = FakeRequest {
        method: method.parse().unwrap(),
        uri: uri.parse().unwrap(),
        body: body.map(bytes::Bytes::copy_from_slice),
        ..FakeRequest::default()
    };
    for (k, v) in headers {
        req.headers.append(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            http::HeaderValue::from_str(v).unwrap(),
        );
    }
    h.request(req)
}

/// Runs the access phase to its end (bodies are buffered, so nothing waits).
pub fn access(p: &dyn Plugin, ctx: &mut RequestCtx) -> Flow {
    p.access(ctx)
        .run()
        .now_or_never()
        .expect("the phase waited")
        .unwrap()
}

/// Runs the content phase to its end.
pub fn content(p: &dyn Plugin, ctx: &mut RequestCtx) -> Flow {
    p.content(ctx)
        .run()
        .now_or_never()
        .expect("the phase waited")
        .unwrap()
}

/// A response head with `status` and `headers`, for header filters.
pub fn response(status: u16, headers: &[(&str, &str)]) -> ResponseHead {
    let mut b = http::Response::builder().status(status);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(()).unwrap().into_parts().0
}

/// The status and parsed JSON body of a `Flow::Respond`.
pub fn responded(flow: Flow) -> (u16, serde_json::Value) {
    match flow {
        Flow::Respond(r) => (
            r.status.as_u16(),
            serde_json::from_slice(&r.body).unwrap_or(serde_json::Value::Null),
        ),
        Flow::Continue => panic!("expected a response, the request continued"),
    }
}
