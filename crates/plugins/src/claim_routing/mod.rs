//! `claim_routing`: chooses the upstream of a request from the claims of its verified JWT
//! (the edge-routing pattern: a user's region claim names the regional cluster that serves
//! them, or the edge that owns that region). It runs in the access phase after `jwt`, reads
//! the [`Claims`] that plugin left in the request context, fills in upstream name
//! templates such as `api-${claims.region}`, and sets
//! [`RequestCtx::upstream_override`]. When no rule applies or the name is no upstream of
//! the configuration, it uses the `fallback` upstream or answers 421 (or 502) JSON.
//!
//! Invariants: only claims of a verified token are used (they are signed by the issuer);
//! a claim value only becomes part of an upstream name when it is a short printable
//! scalar; names are looked up in the request's own snapshot, so a reload never sends a
//! request to an upstream of another configuration version.

mod config;

use std::sync::Arc;

use serde_json::{Map, Value};

pub use config::ClaimRoutingConfig;

use super::json_path::{as_text, JsonPath};
use super::jwt::Claims;
use super::{parse_config, BuildCtx, Flow, Phase, PhaseSet, Plugin, Step};
use sluicegate_core::context::RequestCtx;
use sluicegate_core::diag::{Diags, Path};
use sluicegate_core::error::{error_response, Kind, ProxyError, Source};
use sluicegate_core::yaml::Node;

/// Longest claim value put into an upstream name.
const MAX_CLAIM_TEXT: usize = 128;

/// One piece of an upstream name template.
#[derive(Debug, Clone, PartialEq)]
enum Part {
    Text(String),
    Claim(JsonPath),
}

/// An upstream name template: text and `${claims.PATH}` placeholders.
#[derive(Debug, Clone, PartialEq)]
struct Template(Vec<Part>);

impl Template {
    fn parse(text: &str) -> Result<Template, String> {
        let mut parts = Vec::new();
        let mut rest = text;
        while let Some(start) = rest.find("${") {
            if start > 0 {
                parts.push(Part::Text(rest[..start].to_string()));
            }
            let after = &rest[start + 2..];
            let end = after
                .find('}')
                .ok_or_else(|| format!("unterminated `${{` in `{text}`"))?;
            let inner = &after[..end];
            let claim = inner.strip_prefix("claims.").ok_or_else(|| {
                format!("`${{{inner}}}`: only `${{claims.NAME}}` placeholders are allowed here")
            })?;
            parts.push(Part::Claim(JsonPath::parse(claim)?));
            rest = &after[end + 1..];
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_string()));
        }
        if parts.is_empty() {
            return Err("the upstream name is empty".into());
        }
        Ok(Template(parts))
    }

    /// The name with no placeholders, if the template has none.
    fn constant(&self) -> Option<String> {
        match self.0.as_slice() {
            [Part::Text(t)] => Some(t.clone()),
            _ => None,
        }
    }

    /// The name for these claims; `None` when a placeholder's claim is missing or not a
    /// short printable scalar.
    fn render(&self, claims: Option<&Map<String, Value>>) -> Option<String> {
        let mut out = String::new();
        for part in &self.0 {
            match part {
                Part::Text(t) => out.push_str(t),
                Part::Claim(path) => out.push_str(&claim_text(claims?, path)?),
            }
        }
        Some(out)
    }
}

/// A claim as text when it is a string, number or boolean that is short and printable.
fn claim_text(claims: &Map<String, Value>, path: &JsonPath) -> Option<String> {
    let v = path.get_in(claims)?;
    if !matches!(v, Value::String(_) | Value::Number(_) | Value::Bool(_)) {
        return None;
    }
    let text = as_text(v);
    (!text.is_empty() && text.len() <= MAX_CLAIM_TEXT && text.bytes().all(|b| b.is_ascii_graphic()))
        .then_some(text)
}

/// One compiled rule.
#[derive(Debug)]
struct Rule {
    when: Vec<(JsonPath, Vec<String>)>,
    upstream: Template,
}

impl Rule {
    fn holds(&self, claims: Option<&Map<String, Value>>) -> bool {
        self.when.iter().all(|(path, accepted)| {
            claims
                .and_then(|c| claim_text(c, path))
                .is_some_and(|v| accepted.contains(&v))
        })
    }
}

/// The `claim_routing` plugin.
#[derive(Debug)]
pub struct ClaimRouting {
    rules: Vec<Rule>,
    fallback: Option<String>,
    kind: Kind,
    /// Upstream names written in the configuration, with their paths (checked at load).
    refs: Vec<(Path, String)>,
}

/// Builds a `claim_routing` plugin from its config.
pub fn build(
    config: &Node,
    path: &Path,
    _ctx: &BuildCtx<'_>,
    diags: &mut Diags,
) -> Option<Arc<dyn Plugin>> {
    let cfg: ClaimRoutingConfig = parse_config(config, path, diags)?;
    compile(cfg, path, diags).map(|p| Arc::new(p) as Arc<dyn Plugin>)
}

fn compile(cfg: ClaimRoutingConfig, path: &Path, diags: &mut Diags) -> Option<ClaimRouting> {
    let before = diags.0.len();
    if cfg.rules.is_empty() {
        diags.push(&path.key("rules"), "give at least one rule");
    }
    let mut rules = Vec::new();
    let mut refs = Vec::new();
    for (i, r) in cfg.rules.iter().enumerate() {
        let p = path.key("rules").index(i);
        let mut when = Vec::new();
        for (claim, accepted) in &r.when {
            let wp = p.key("when").key(claim);
            match (JsonPath::parse(claim), accepted_values(accepted)) {
                (Ok(c), _) if c.is_root() => diags.push(&wp, "names no claim"),
                (Ok(c), Ok(values)) => when.push((c, values)),
                (Err(e), _) | (_, Err(e)) => diags.push(&wp, e),
            }
        }
        match Template::parse(&r.upstream) {
            Ok(t) => {
                if let Some(name) = t.constant() {
                    refs.push((p.key("upstream"), name));
                }
                rules.push(Rule { when, upstream: t });
            }
            Err(e) => diags.push(&p.key("upstream"), e),
        }
    }
    if let Some(f) = &cfg.fallback {
        refs.push((path.key("fallback"), f.clone()));
    }
    let kind = match cfg.status {
        421 => Kind::Misdirected,
        502 => Kind::NoUpstream,
        s => {
            diags.push(&path.key("status"), format!("`{s}`: must be 421 or 502"));
            Kind::Misdirected
        }
    };
    if cfg.fallback.is_some() && cfg.status != 421 {
        diags.push(&path.key("status"), "has no effect with a `fallback`");
    }
    (diags.0.len() == before).then_some(ClaimRouting {
        rules,
        fallback: cfg.fallback,
        kind,
        refs,
    })
}

/// The accepted values of a `when` entry: a scalar or a list of scalars, as text.
fn accepted_values(v: &Value) -> Result<Vec<String>, String> {
    let scalar = |v: &Value| match v {
        Value::String(_) | Value::Number(_) | Value::Bool(_) => Ok(as_text(v)),
        _ => Err("expected a value or a list of values".to_string()),
    };
    match v {
        Value::Array(items) if !items.is_empty() => items.iter().map(scalar).collect(),
        Value::Array(_) => Err("the list of values is empty".into()),
        other => Ok(vec![scalar(other)?]),
    }
}

impl ClaimRouting {
    /// The upstream name for these claims: the first rule that holds and can be filled in.
    fn choose(&self, claims: Option<&Map<String, Value>>) -> Option<String> {
        self.rules
            .iter()
            .filter(|r| r.holds(claims))
            .find_map(|r| r.upstream.render(claims))
    }

    fn route(&self, ctx: &mut RequestCtx) -> Flow {
        let claims = ctx.vars.get::<Claims>().map(|c| c.0.clone());
        let chosen = self.choose(claims.as_deref());
        if let Some(name) = &chosen {
            if let Some(up) = ctx.snapshot.upstream(name) {
                tracing::debug!(request_id = ctx.request_id_str(), upstream = %name, "Claim routing chose an upstream.");
                ctx.upstream_override = Some(up);
                return Flow::Continue;
            }
        }
        if let Some(up) = self
            .fallback
            .as_ref()
            .and_then(|f| ctx.snapshot.upstream(f))
        {
            tracing::debug!(
                request_id = ctx.request_id_str(),
                wanted = chosen.as_deref().unwrap_or("-"),
                "Claim routing used the fallback upstream."
            );
            ctx.upstream_override = Some(up);
            return Flow::Continue;
        }
        let message = match &chosen {
            Some(name) => format!("no upstream `{name}` for this request"),
            None => "no upstream for this request's token claims".to_string(),
        };
        tracing::info!(request_id = ctx.request_id_str(), route = ctx.route_name(), error = %message, "Claim routing found no upstream.");
        let err = ProxyError::new(Source::Plugin, self.kind, message);
        Flow::Respond(error_response(&err, &ctx.request_id))
    }
}

impl Plugin for ClaimRouting {
    fn name(&self) -> &'static str {
        "claim_routing"
    }

    fn phases(&self) -> PhaseSet {
        PhaseSet::of(&[Phase::Access])
    }

    /// It always picks the upstream or answers, so its route needs no `upstream`.
    fn answers(&self) -> bool {
        true
    }

    fn upstream_refs(&self) -> Vec<(Path, String)> {
        self.refs.clone()
    }

    fn access<'a>(&'a self, ctx: &'a mut RequestCtx) -> Step<'a> {
        Step::Ready(Ok(self.route(ctx)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use sluicegate_core::context::UpstreamRef;
    use sluicegate_core::yaml::parse;
    use sluicegate_lua::harness::{FakeRequest, Harness, TestConfig};
    use std::collections::HashMap;

    fn build_from(text: &str) -> (Option<Arc<dyn Plugin>>, Diags) {
        crate::testing::build(build, text, &[])
    }

    const EDGE: &str = r#"
rules:
  - when: {region: eu}
    upstream: "api-${claims.region}"
  - upstream: "edge-${claims.region}"
"#;

    fn claims(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn parses_templates_with_claim_placeholders() {
        let t = Template::parse("api-${claims.region}-${claims.org.id}").unwrap();
        assert_eq!(
            t.render(Some(&claims(json!({"region": "eu", "org": {"id": 7}})))),
            Some("api-eu-7".into())
        );
        assert_eq!(t.render(Some(&claims(json!({"region": "eu"})))), None);
        assert_eq!(t.render(None), None);
        assert_eq!(
            Template::parse("plain").unwrap().constant(),
            Some("plain".into())
        );
        assert!(Template::parse("x-${region}").is_err());
        assert!(Template::parse("x-${claims.region").is_err());
        assert!(Template::parse("").is_err());
    }

    #[test]
    fn routes_home_region_claims_to_the_api_and_others_sideways() {
        let node = parse(EDGE, &HashMap::new()).unwrap();
        let cfg = sluicegate_core::de::from_node(&node, &Path::root()).unwrap();
        let r = compile(cfg, &Path::root(), &mut Diags::default()).unwrap();
        let eu = claims(json!({"region": "eu"}));
        let us = claims(json!({"region": "us"}));
        assert_eq!(r.choose(Some(&eu)), Some("api-eu".into()));
        assert_eq!(r.choose(Some(&us)), Some("edge-us".into()));
        assert_eq!(r.choose(Some(&claims(json!({"region": {"x": 1}})))), None);
        assert_eq!(r.choose(Some(&claims(json!({"region": "a b"})))), None);
        assert_eq!(r.choose(None), None);
    }

    #[tokio::test]
    async fn answers_421_or_uses_the_fallback_when_no_upstream_fits() {
        let h = Harness::new(Default::default()).unwrap();
        // Upstreams stand in as their names: the plugin hands them over without looking.
        let snapshot = Arc::new(TestConfig {
            lua: Arc::default(),
            upstreams: ["api-eu", "home"]
                .map(|n| (n.to_string(), Arc::new(n.to_string()) as UpstreamRef))
                .into(),
        });
        let run = |plugin: Arc<dyn Plugin>, c: Option<Value>| {
            let mut ctx = h.request(FakeRequest::default());
            ctx.snapshot = snapshot.clone();
            if let Some(c) = c {
                ctx.vars.insert(Claims(Arc::new(claims(c))));
            }
            async move {
                let flow = plugin.access(&mut ctx).run().await.unwrap();
                let chosen = ctx
                    .upstream_override
                    .and_then(|u| u.downcast::<String>().ok());
                (flow, chosen.map(|name| (*name).clone()))
            }
        };
        let (p, _) = build_from(EDGE);
        let p = p.unwrap();
        let (flow, up) = run(p.clone(), Some(json!({"region": "eu"}))).await;
        assert!(matches!(flow, Flow::Continue));
        assert_eq!(up.as_deref(), Some("api-eu"));
        let (flow, up) = run(p.clone(), Some(json!({"region": "us"}))).await;
        assert!(up.is_none());
        let Flow::Respond(r) = flow else { panic!() };
        assert_eq!(r.status, 421);
        let body: Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(body["error"], "misdirected_request");
        assert!(body["message"].as_str().unwrap().contains("edge-us"));

        let (p, _) = build_from(&format!("{EDGE}fallback: home\n"));
        let (flow, up) = run(p.unwrap(), None).await;
        assert!(matches!(flow, Flow::Continue));
        assert_eq!(up.as_deref(), Some("home"));

        let (p, _) = build_from(&format!("{EDGE}status: 502\n"));
        let (flow, _) = run(p.unwrap(), Some(json!({"region": "us"}))).await;
        let Flow::Respond(r) = flow else { panic!() };
        assert_eq!(r.status, 502);
    }

    #[test]
    fn validates_rules_status_and_names_the_upstreams_it_uses() {
        let (p, d) = build_from("rules: []\nstatus: 404\ncolour: red");
        assert!(p.is_none());
        assert!(d.0[0].message.contains("unknown field"), "{:?}", d.0);
        let (p, d) = build_from("rules: []\nstatus: 404");
        assert!(p.is_none());
        assert_eq!(d.0.len(), 2, "{:?}", d.0);
        let (_, d) = build_from("rules: [{upstream: 'x-$${region}'}]");
        assert_eq!(d.0[0].path, "rules[0].upstream");
        let (_, d) = build_from("rules: [{when: {region: {a: 1}}, upstream: x}]");
        assert_eq!(d.0[0].path, "rules[0].when.region");
        let (p, d) = build_from("rules: [{when: {tier: [1, 2]}, upstream: fixed}]\nfallback: home");
        assert!(d.is_empty(), "{:?}", d.0);
        let refs: Vec<(String, String)> = p
            .unwrap()
            .upstream_refs()
            .into_iter()
            .map(|(p, n)| (p.to_string(), n))
            .collect();
        assert_eq!(
            refs,
            [
                ("rules[0].upstream".to_string(), "fixed".to_string()),
                ("fallback".to_string(), "home".to_string())
            ]
        );
    }
}
