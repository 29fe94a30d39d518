//! A compiled mapping: how one JSON document becomes another. Pure data in, data out; the
//! plugin decides where the documents come from.
//!
//! Order: the output starts as a copy of the input (`keep: true`) or an empty object; the
//! `remove` paths are removed from it; then each field is written in order, reading from
//! the *input* — so `remove: [old]` with `{to: new, from: old}` renames.

use serde_json::{Map, Value};

use super::config::SideConfig;
use crate::json_path::JsonPath;
use sluicegate_core::diag::{Diags, Path};

/// Where a field's value comes from.
#[derive(Debug)]
enum Source {
    /// A path of the input, with the value used when it is missing.
    From {
        path: JsonPath,
        default: Option<Value>,
        required: bool,
    },
    /// A constant.
    Value(Value),
}

#[derive(Debug)]
struct Field {
    to: JsonPath,
    source: Source,
}

/// A compiled mapping.
#[derive(Debug)]
pub struct Mapping {
    keep: bool,
    remove: Vec<JsonPath>,
    fields: Vec<Field>,
}

/// Why a document could not be mapped.
#[derive(Debug, PartialEq, Eq)]
pub enum MapError {
    /// A `required` field's source is missing.
    Missing(String),
}

impl Mapping {
    /// Compiles `cfg`, recording problems under `path`.
    pub fn compile(cfg: &SideConfig, path: &Path, diags: &mut Diags) -> Option<Mapping> {
        let before = diags.0.len();
        let mut remove = Vec::new();
        for (i, r) in cfg.remove.iter().enumerate() {
            let p = path.key("remove").index(i);
            match JsonPath::parse(r) {
                Ok(jp) if jp.is_root() => diags.push(&p, "cannot remove the whole document"),
                Ok(jp) => remove.push(jp),
                Err(e) => diags.push(&p, e),
            }
        }
        if !remove.is_empty() && !cfg.keep {
            diags.push(
                &path.key("remove"),
                "only applies with `keep: true` (without it, the output starts empty)",
            );
        }
        let mut fields = Vec::new();
        for (i, f) in cfg.fields.iter().enumerate() {
            let p = path.key("fields").index(i);
            let to = JsonPath::parse(&f.to).map_err(|e| diags.push(&p.key("to"), e));
            let source = match (&f.from, &f.value) {
                (Some(from), None) => match JsonPath::parse_pattern(from) {
                    Ok(jp) => Some(Source::From {
                        path: jp,
                        default: f.default.clone(),
                        required: f.required,
                    }),
                    Err(e) => {
                        diags.push(&p.key("from"), e);
                        None
                    }
                },
                (None, Some(v)) => {
                    if f.default.is_some() || f.required {
                        diags.push(&p, "`default` and `required` only apply to `from`");
                    }
                    Some(Source::Value(v.clone()))
                }
                _ => {
                    diags.push(&p, "give exactly one of `from` and `value`");
                    None
                }
            };
            if f.required && f.default.is_some() {
                diags.push(&p, "a field with a `default` cannot be `required`");
            }
            if let (Ok(to), Some(source)) = (to, source) {
                fields.push(Field { to, source });
            }
        }
        if fields.is_empty() && remove.is_empty() && diags.0.len() == before {
            diags.push(
                path,
                "nothing to do: give `fields` (or `keep: true` with `remove`)",
            );
        }
        (diags.0.len() == before).then_some(Mapping {
            keep: cfg.keep,
            remove,
            fields,
        })
    }

    /// Maps `input` to the output document.
    pub fn apply(&self, input: &Value) -> Result<Value, MapError> {
        let mut out = if self.keep {
            input.clone()
        } else {
            Value::Object(Map::new())
        };
        for r in &self.remove {
            r.remove(&mut out);
        }
        for f in &self.fields {
            let v = match &f.source {
                Source::Value(v) => v.clone(),
                Source::From {
                    path,
                    default,
                    required,
                } => match (path.select(input), default) {
                    (Some(v), _) => v,
                    (None, Some(d)) => d.clone(),
                    (None, None) if *required => {
                        return Err(MapError::Missing(path.to_string()));
                    }
                    (None, None) => continue,
                },
            };
            f.to.set(&mut out, v);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn mapping(yaml: &str) -> Result<Mapping, Vec<(String, String)>> {
        let node = sluicegate_core::yaml::parse(yaml, &std::collections::HashMap::new()).unwrap();
        let cfg: SideConfig = sluicegate_core::de::from_node(&node, &Path::root()).unwrap();
        let mut d = Diags::default();
        Mapping::compile(&cfg, &Path::root(), &mut d)
            .ok_or_else(|| d.0.into_iter().map(|d| (d.path, d.message)).collect())
    }

    /// The Zapier "signal" of the seed article: `{name, variables{}}` into an upstream's
    /// event schema.
    #[test]
    fn turns_a_zapier_signal_into_the_upstream_schema() {
        let m = mapping(
            r#"
fields:
  - {to: event.type, from: name}
  - {to: event.user.id, from: variables.user_id, required: true}
  - {to: event.user.email, from: variables.email, default: null}
  - {to: "event.tags[0]", from: variables.tag, default: untagged}
  - {to: source, value: zapier}
  - {to: raw, from: $}
  - {to: event.amounts, from: "lines[*].amount"}
"#,
        )
        .unwrap();
        let signal = json!({"name": "deal_won", "variables": {"user_id": "u1", "amount": "10"},
            "lines": [{"amount": 4}, {"amount": 6}]});
        assert_eq!(
            m.apply(&signal).unwrap(),
            json!({
                "event": {"type": "deal_won", "user": {"id": "u1", "email": null}, "tags": ["untagged"],
                    "amounts": [4, 6]},
                "source": "zapier",
                "raw": signal,
            })
        );
        assert_eq!(
            m.apply(&json!({"name": "x"})),
            Err(MapError::Missing("variables.user_id".into()))
        );
    }

    #[test]
    fn keeps_removes_and_renames() {
        let m = mapping(
            r#"
keep: true
remove: [password, old_name, "items[0]"]
fields:
  - {to: new_name, from: old_name}
  - {to: first_id, from: "items[0].id"}
"#,
        )
        .unwrap();
        let input =
            json!({"old_name": "n", "password": "p", "keep": 1, "items": [{"id": 1}, {"id": 2}]});
        assert_eq!(
            m.apply(&input).unwrap(),
            json!({"new_name": "n", "keep": 1, "items": [{"id": 2}], "first_id": 1})
        );
        // Optional fields whose source is missing are left out.
        assert_eq!(m.apply(&json!({"keep": 1})).unwrap(), json!({"keep": 1}));
    }

    #[test]
    fn unwraps_an_envelope_into_the_whole_document() {
        let m = mapping("fields: [{to: $, from: data}]").unwrap();
        assert_eq!(m.apply(&json!({"data": [1, 2]})).unwrap(), json!([1, 2]));
    }

    #[test]
    fn reports_every_bad_field_with_its_path() {
        let e = mapping(
            r#"
remove: [a]
fields:
  - {to: "a..b", from: x}
  - {to: y}
  - {to: z, value: 1, default: 2}
  - {to: w, from: "q[", required: true}
  - {to: v, from: q, required: true, default: 1}
"#,
        )
        .unwrap_err();
        let paths: Vec<&str> = e.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(
            paths,
            [
                "remove",
                "fields[0].to",
                "fields[1]",
                "fields[2]",
                "fields[3].from",
                "fields[4]"
            ],
            "{e:?}"
        );
        assert!(mapping("keep: true").unwrap_err()[0]
            .1
            .contains("nothing to do"));
        let e = mapping("fields: [{to: \"a[*]\", from: b}]").unwrap_err();
        assert_eq!(e[0].0, "fields[0].to");
        assert!(e[0].1.contains("[*]"), "{e:?}");
    }
}
