//! lua-resty-dynacode's JSON document, read as is:
//!
//! ```json
//! {"general": {"status": "enabled", "skip_domains": ["regex", ...]},
//!  "domains": [{"name": "* or host regex",
//!               "plugins": [{"name": "...", "code": "lua source", "phase": "access"}]}]}
//! ```
//!
//! The document's shape is checked whole: something that is not this shape (not JSON, a
//! `domains` that is not a list, an invalid `skip_domains` regex...) is rejected and the
//! running version keeps serving. A problem confined to one plugin (an unknown phase, a
//! missing `code`, and, when the set is built, an invalid domain regex) only takes that script out, and is reported
//! like a compile error. Unknown fields are ignored, as dynacode ignores them.

use serde_json::Value;

use sluicegate_core::phase::Phase;

/// One script as a source describes it.
#[derive(Debug, Clone, PartialEq)]
pub struct ScriptSpec {
    /// Unique within its source: `DOMAIN/PLUGIN` for the code API, the file name for the
    /// directory, the pushed name for the admin API.
    pub name: String,
    /// The phase it runs in (absent when the source gave none or an unknown one; then
    /// `problem` says so).
    pub phase: Option<Phase>,
    /// `*` (every host) or a regular expression searched in the request host.
    pub domain: String,
    /// Lua source.
    pub code: String,
    /// Why the script cannot be loaded, found before compiling.
    pub problem: Option<String>,
}

/// What one source provides: a switch, hosts to skip, and scripts in run order.
#[derive(Debug, Clone, PartialEq)]
pub struct SourceDoc {
    /// `general.status == "enabled"` (always true for the directory and admin sources).
    pub enabled: bool,
    /// Regexes of hosts none of this source's scripts run for.
    pub skip_domains: Vec<String>,
    /// The scripts, in document order.
    pub specs: Vec<ScriptSpec>,
}

impl SourceDoc {
    /// An enabled source with `specs` and nothing skipped.
    pub fn enabled(specs: Vec<ScriptSpec>) -> SourceDoc {
        SourceDoc {
            enabled: true,
            skip_domains: Vec::new(),
            specs,
        }
    }
}

/// Parses a code-API document. The error says what is wrong and where (`domains[2].plugins`).
pub fn parse(bytes: &[u8]) -> Result<SourceDoc, String> {
    let root: Value =
        serde_json::from_slice(bytes).map_err(|e| format!("not a JSON document: {e}"))?;
    let Value::Object(root) = root else {
        return Err(format!(
            "the document must be a JSON object, found {}",
            kind(&root)
        ));
    };
    let general = match root.get("general") {
        None | Some(Value::Null) => serde_json::Map::new(),
        Some(Value::Object(g)) => g.clone(),
        Some(other) => {
            return Err(format!(
                "general: expected an object, found {}",
                kind(other)
            ))
        }
    };
    let enabled = match general.get("status") {
        None | Some(Value::Null) => false,
        Some(Value::String(s)) => s == "enabled",
        Some(other) => {
            return Err(format!(
                "general.status: expected a string, found {}",
                kind(other)
            ))
        }
    };
    let mut skip_domains = Vec::new();
    match general.get("skip_domains") {
        None | Some(Value::Null) => {}
        Some(Value::Array(items)) => {
            for (i, item) in items.iter().enumerate() {
                let Value::String(re) = item else {
                    return Err(format!(
                        "general.skip_domains[{i}]: expected a string, found {}",
                        kind(item)
                    ));
                };
                regex::Regex::new(re)
                    .map_err(|e| format!("general.skip_domains[{i}]: invalid regex: {e}"))?;
                skip_domains.push(re.clone());
            }
        }
        Some(other) => {
            return Err(format!(
                "general.skip_domains: expected a list, found {}",
                kind(other)
            ))
        }
    }
    let domains = match root.get("domains") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(d)) => d.clone(),
        Some(other) => return Err(format!("domains: expected a list, found {}", kind(other))),
    };
    let mut specs: Vec<ScriptSpec> = Vec::new();
    for (i, domain) in domains.iter().enumerate() {
        let Value::Object(domain) = domain else {
            return Err(format!(
                "domains[{i}]: expected an object, found {}",
                kind(domain)
            ));
        };
        let Some(Value::String(dname)) = domain.get("name") else {
            return Err(format!("domains[{i}].name: a string is required"));
        };
        let plugins = match domain.get("plugins") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(p)) => p.clone(),
            Some(other) => {
                return Err(format!(
                    "domains[{i}].plugins: expected a list, found {}",
                    kind(other)
                ))
            }
        };
        for (j, plugin) in plugins.iter().enumerate() {
            let Value::Object(plugin) = plugin else {
                return Err(format!(
                    "domains[{i}].plugins[{j}]: expected an object, found {}",
                    kind(plugin)
                ));
            };
            let pname = match plugin.get("name") {
                Some(Value::String(s)) if !s.is_empty() => s.clone(),
                _ => format!("plugin-{j}"),
            };
            let name = format!("{dname}/{pname}");
            // (The domain regex is checked, and compiled once, when the set is built.)
            let mut problem = None;
            let code = match plugin.get("code") {
                Some(Value::String(s)) => s.clone(),
                _ => {
                    problem.get_or_insert_with(|| "`code` (a string) is required".to_string());
                    String::new()
                }
            };
            let phase = match plugin.get("phase") {
                Some(Value::String(s)) => {
                    let p = Phase::parse(s);
                    if p.is_none() {
                        problem.get_or_insert_with(|| format!("unknown phase `{s}`; expected rewrite, access, content, header_filter, body_filter or log"));
                    }
                    p
                }
                _ => {
                    problem.get_or_insert_with(|| "`phase` (a string) is required".to_string());
                    None
                }
            };
            if specs.iter().any(|s| s.name == name) {
                problem.get_or_insert_with(|| {
                    format!("another plugin of domain `{dname}` has the same name")
                });
            }
            specs.push(ScriptSpec {
                name,
                phase,
                domain: dname.clone(),
                code,
                problem,
            });
        }
    }
    Ok(SourceDoc {
        enabled,
        skip_domains,
        specs,
    })
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_dynacode_readme_example_as_is() {
        let text = r#"{"general":{"status":"enabled","skip_domains":["[\\w\\d\\.\\-]*server.local.com"]},
          "domains":[{"name":"dynamic.local.com","plugins":[
            {"name":"dynamic content","code":"ngx.say(\"hi\")","phase":"content"},
            {"name":"cors","code":"ngx.header[\"A\"] = \"b\"","phase":"header_filter"}]}]}"#;
        let doc = parse(text.as_bytes()).unwrap();
        assert!(doc.enabled);
        assert_eq!(doc.skip_domains.len(), 1);
        assert_eq!(doc.specs.len(), 2);
        assert_eq!(doc.specs[0].name, "dynamic.local.com/dynamic content");
        assert_eq!(doc.specs[0].phase, Some(Phase::Content));
        assert!(doc.specs.iter().all(|s| s.problem.is_none()));
    }

    #[test]
    fn any_status_but_enabled_disables_the_set() {
        for status in [r#""disabled""#, r#""Enabled""#, "null"] {
            let text = format!(r#"{{"general":{{"status":{status}}},"domains":[]}}"#);
            assert!(!parse(text.as_bytes()).unwrap().enabled, "{status}");
        }
    }

    #[test]
    fn rejects_documents_of_the_wrong_shape_with_the_place() {
        for (text, place) in [
            ("[1]", "JSON object"),
            ("{\"domains\": {}}", "domains:"),
            ("{\"domains\": [{\"plugins\": []}]}", "domains[0].name"),
            (
                "{\"general\": {\"skip_domains\": [\"(\"]}}",
                "skip_domains[0]",
            ),
            ("not json", "not a JSON document"),
        ] {
            let e = parse(text.as_bytes()).unwrap_err();
            assert!(e.contains(place), "{text}: {e}");
        }
    }

    #[test]
    fn a_bad_plugin_is_reported_on_its_own() {
        let text = r#"{"general":{"status":"enabled"},"domains":[{"name":"(","plugins":[
            {"name":"a","code":"return","phase":"access"}]},{"name":"*","plugins":[
            {"name":"b","code":"return","phase":"acces"},{"name":"c","phase":"log"},
            {"name":"d","code":"return","phase":"log"}]}]}"#;
        let doc = parse(text.as_bytes()).unwrap();
        let problems: Vec<_> = doc.specs.iter().map(|s| s.problem.is_some()).collect();
        assert_eq!(problems, [false, true, true, false]);
        assert!(doc.specs[1]
            .problem
            .as_deref()
            .unwrap()
            .contains("unknown phase"));
    }
}
