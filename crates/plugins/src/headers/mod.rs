//! `headers`: set, add and remove request headers (access phase, after the auth plugins,
//! which have higher priorities) and response headers (header_filter phase).

mod config;

use std::sync::Arc;

use http::{HeaderMap, HeaderName, HeaderValue};

pub use config::{HeaderOps, HeadersConfig};

use super::{
    header_pair, parse_config, BuildCtx, Flow, Phase, PhaseSet, Plugin, PluginError, Step,
};
use sluicegate_core::context::{RequestCtx, ResponseHead};
use sluicegate_core::diag::{Diags, Path};
use sluicegate_core::yaml::Node;
use sluicegate_http1::raw::RawHeaders;

/// Compiled header operations.
#[derive(Debug, Default)]
struct Ops {
    remove: Vec<HeaderName>,
    set: Vec<(HeaderName, HeaderValue)>,
    add: Vec<(HeaderName, HeaderValue)>,
}

impl Ops {
    fn compile(cfg: &HeaderOps, path: &Path, diags: &mut Diags) -> Ops {
        let mut ops = Ops::default();
        for (i, name) in cfg.remove.iter().enumerate() {
            match HeaderName::from_bytes(name.as_bytes()) {
                Ok(n) => ops.remove.push(n),
                Err(_) => diags.push(
                    &path.key("remove").index(i),
                    format!("invalid header name `{name}`"),
                ),
            }
        }
        for (k, v) in &cfg.set {
            ops.set
                .extend(header_pair(k, v, &path.key("set").key(k), diags));
        }
        for (k, v) in &cfg.add {
            ops.add
                .extend(header_pair(k, v, &path.key("add").key(k), diags));
        }
        ops
    }

    fn is_empty(&self) -> bool {
        self.remove.is_empty() && self.set.is_empty() && self.add.is_empty()
    }

    /// [`Ops::apply`] on a response whose upstream lines are raw: removed and replaced
    /// names drop their raw lines, and the new values go in `headers` (written after them).
    fn apply_raw(&self, headers: &mut HeaderMap, raw: &mut RawHeaders) {
        for n in self.remove.iter().chain(self.set.iter().map(|(n, _)| n)) {
            raw.remove(n);
        }
        self.apply(headers);
    }

    fn apply(&self, headers: &mut HeaderMap) {
        for n in &self.remove {
            headers.remove(n);
        }
        for (n, v) in &self.set {
            headers.insert(n.clone(), v.clone());
        }
        for (n, v) in &self.add {
            headers.append(n.clone(), v.clone());
        }
    }
}

/// The `headers` plugin.
#[derive(Debug)]
pub struct Headers {
    request: Ops,
    response: Ops,
}

/// Builds a `headers` plugin from its config.
pub fn build(
    config: &Node,
    path: &Path,
    _ctx: &BuildCtx<'_>,
    diags: &mut Diags,
) -> Option<Arc<dyn Plugin>> {
    let cfg: HeadersConfig = parse_config(config, path, diags)?;
    let before = diags.0.len();
    let plugin = Headers {
        request: Ops::compile(&cfg.request, &path.key("request"), diags),
        response: Ops::compile(&cfg.response, &path.key("response"), diags),
    };
    if plugin.request.is_empty() && plugin.response.is_empty() {
        diags.push(
            path,
            "nothing to do: give `request` or `response` operations",
        );
    }
    (diags.0.len() == before).then(|| Arc::new(plugin) as Arc<dyn Plugin>)
}

impl Plugin for Headers {
    fn name(&self) -> &'static str {
        "headers"
    }

    fn phases(&self) -> PhaseSet {
        match (self.request.is_empty(), self.response.is_empty()) {
            (false, false) => PhaseSet::of(&[Phase::Access, Phase::HeaderFilter]),
            (false, true) => PhaseSet::of(&[Phase::Access]),
            _ => PhaseSet::of(&[Phase::HeaderFilter]),
        }
    }

    fn reads_request_late(&self) -> bool {
        false
    }

    fn access<'a>(&'a self, ctx: &'a mut RequestCtx) -> Step<'a> {
        self.request.apply(&mut ctx.head.headers);
        Step::Ready(Ok(Flow::Continue))
    }

    fn header_filter(
        &self,
        _ctx: &mut RequestCtx,
        resp: &mut ResponseHead,
    ) -> Result<(), PluginError> {
        self.response.apply(&mut resp.headers);
        Ok(())
    }

    fn filters_raw_headers(&self) -> bool {
        true
    }

    fn header_filter_raw(
        &self,
        _ctx: &mut RequestCtx,
        resp: &mut ResponseHead,
        raw: &mut RawHeaders,
    ) -> Result<(), PluginError> {
        self.response.apply_raw(&mut resp.headers, raw);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluicegate_core::yaml::parse;
    use std::collections::HashMap;

    fn ops(text: &str) -> (Option<Arc<dyn Plugin>>, Diags) {
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
    fn applies_remove_then_set_then_add() {
        let cfg = HeaderOps {
            set: [("x-a".to_string(), "1".to_string())].into(),
            add: [("x-b".to_string(), "2".to_string())].into(),
            remove: vec!["x-c".to_string()],
        };
        let mut diags = Diags::default();
        let ops = Ops::compile(&cfg, &Path::root(), &mut diags);
        let mut h = HeaderMap::new();
        h.insert("x-a", HeaderValue::from_static("old"));
        h.insert("x-b", HeaderValue::from_static("keep"));
        h.insert("x-c", HeaderValue::from_static("gone"));
        ops.apply(&mut h);
        assert_eq!(h["x-a"], "1");
        assert_eq!(h.get_all("x-b").iter().count(), 2);
        assert!(h.get("x-c").is_none());
    }

    #[test]
    fn rejects_invalid_header_names_and_empty_configs() {
        let (p, d) = ops("response: {set: {\"bad name\": x}}");
        assert!(p.is_none());
        assert_eq!(d.0[0].path, "response.set.bad name");
        let (p, d) = ops("{}");
        assert!(p.is_none());
        assert!(d.0[0].message.contains("nothing to do"));
    }
}
