//! `lua`: runs a Lua script in one phase of a route's requests (or of every request, as a
//! global plugin, optionally restricted to host patterns). The script is compiled once,
//! here, when the configuration is validated — a syntax error is a configuration error
//! with the script's name and line — and each worker loads the bytecode into its own VM
//! on first use. The runtime and the plugin type are the Lua crate's; docs/lua-api.md is the user's reference.
//!
//! ```yaml
//! plugins:
//!   - name: lua
//!     config:
//!       name: auth
//!       phase: access
//!       code: |
//!         if ngx.var.http_x_api_key ~= "secret" then return ngx.exit(401) end
//! ```

mod config;

use std::sync::Arc;

pub use config::LuaConfig;
pub use sluicegate_lua::plugin::Lua;

use super::{parse_config, BuildCtx, Phase, Plugin};
use sluicegate_core::diag::{Diags, Path};
use sluicegate_core::yaml::Node;
use sluicegate_lua::plugin::host_rules;

/// Builds a `lua` plugin: reads and compiles the script.
pub fn build(
    config: &Node,
    path: &Path,
    ctx: &BuildCtx<'_>,
    diags: &mut Diags,
) -> Option<Arc<dyn Plugin>> {
    let cfg: LuaConfig = parse_config(config, path, diags)?;
    let before = diags.0.len();
    let phase = Phase::parse(&cfg.phase);
    if phase.is_none() {
        diags.push(
            &path.key("phase"),
            format!("unknown phase `{}`; expected rewrite, access, content, header_filter, body_filter or log", cfg.phase),
        );
    }
    let script = script(
        cfg.code.as_deref(),
        cfg.file.as_deref(),
        cfg.name.as_deref(),
        path,
        ctx,
        diags,
    );
    let hosts = host_rules(&cfg.hosts.0, &path.key("hosts"), diags);
    if diags.0.len() != before {
        return None;
    }
    let (script, phase) = (script?, phase?);
    Some(Arc::new(Lua::for_hosts(Arc::new(script), phase, hosts)))
}

/// Reads (`file`, relative to the configuration) or takes (`code`) a script's source and
/// compiles it against the configuration's modules; every problem is recorded at the key
/// it concerns. Shared by the plugins that run scripts (`lua`, `envoy_lua`).
pub(crate) fn script(
    code: Option<&str>,
    file: Option<&str>,
    name: Option<&str>,
    path: &Path,
    ctx: &BuildCtx<'_>,
    diags: &mut Diags,
) -> Option<sluicegate_lua::Script> {
    let (source, at, default_name) = match (code, file) {
        (Some(code), None) => (
            Some(code.to_string()),
            path.key("code"),
            path.as_str().trim_end_matches(".config").to_string(),
        ),
        (None, Some(file)) => {
            let full = ctx.base_dir.join(file);
            match std::fs::read_to_string(&full) {
                Ok(text) => (Some(text), path.key("file"), file.to_string()),
                Err(e) => {
                    diags.push(
                        &path.key("file"),
                        format!("cannot read `{}`: {e}", full.display()),
                    );
                    (None, path.key("file"), file.to_string())
                }
            }
        }
        _ => {
            diags.push(path, "give exactly one of `code` and `file`");
            (None, path.clone(), String::new())
        }
    };
    let name = name.map(str::to_string).unwrap_or(default_name);
    source.and_then(|src| match sluicegate_lua::compile(&name, &src) {
        Ok(s) => Some(s.using(ctx.lua_modules)),
        Err(e) => {
            diags.push(&at, format!("script `{name}`: syntax error at {e}"));
            None
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluicegate_core::phase::PhaseSet;
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
        let p = build(
            &node,
            &Path::root()
                .key("routes")
                .index(0)
                .key("plugins")
                .index(1)
                .key("config"),
            &ctx,
            &mut diags,
        );
        (p, diags)
    }

    #[test]
    fn reports_syntax_errors_with_script_name_and_line() {
        let (p, d) = build_from("phase: access\nname: auth\ncode: |\n  local x = 1\n  if x then\n");
        assert!(p.is_none());
        assert_eq!(d.0[0].path, "routes[0].plugins[1].config.code");
        assert!(
            d.0[0].message.contains("script `auth`"),
            "{}",
            d.0[0].message
        );
        assert!(d.0[0].message.contains("line "), "{}", d.0[0].message);
    }

    #[test]
    fn requires_exactly_one_source_and_a_known_phase() {
        let (p, d) = build_from("phase: acces\ncode: 'return'\nfile: x.lua\n");
        assert!(p.is_none());
        let messages: Vec<&str> = d.0.iter().map(|d| d.message.as_str()).collect();
        assert!(
            messages.iter().any(|m| m.contains("unknown phase")),
            "{messages:?}"
        );
        assert!(
            messages.iter().any(|m| m.contains("exactly one")),
            "{messages:?}"
        );
    }

    #[test]
    fn names_inline_scripts_after_their_config_path() {
        let (p, _) = build_from("phase: content\ncode: ngx.say('hi')\n");
        let p = p.unwrap();
        assert_eq!(p.phases(), PhaseSet::of(&[Phase::Content]));
    }

    #[test]
    fn host_rules_match_exact_wildcard_and_regex_hosts() {
        let mut d = Diags::default();
        let rules = host_rules(
            &[
                "api.example.com".into(),
                "*.internal".into(),
                "~^v[0-9]\\.".into(),
            ],
            &Path::root(),
            &mut d,
        );
        assert!(rules[0].matches("api.example.com"));
        assert!(rules[1].matches("a.b.internal") && !rules[1].matches("internal"));
        assert!(rules[2].matches("v2.example.com"));
    }
}
