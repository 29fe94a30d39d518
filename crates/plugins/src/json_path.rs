//! The small path syntax plugins use to point into JSON values (request bodies, JWT
//! claims): `user.id`, `items[0].id`, `["key.with.dots"].x`, and `$` for the whole value
//! (`$.user.id` is the same as `user.id`). Where a path only reads and may collect several
//! values ([`JsonPath::parse_pattern`]), `items[*].id` takes `id` from every element.
//!
//! Invariants: a path is parsed once, when the configuration is loaded; reading never
//! fails (a missing step is "absent"); writing creates the objects and arrays on the way
//! and replaces a value of another type in its way.

use std::fmt;

use serde_json::{Map, Value};

/// Array indexes in paths stop here, so a path cannot make a write allocate a huge array.
pub const MAX_INDEX: usize = 1000;

/// One step of a path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// An object member.
    Key(String),
    /// An array element.
    Index(usize),
    /// Every element of an array (patterns only).
    Each,
}

/// A parsed path; empty means the whole value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonPath {
    steps: Vec<Step>,
    text: String,
}

impl fmt::Display for JsonPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl JsonPath {
    /// Parses `text` (no `[*]`).
    pub fn parse(text: &str) -> Result<JsonPath, String> {
        Self::parse_with(text, false)
    }

    /// Parses `text`, which may use `[*]` to read every element of an array.
    pub fn parse_pattern(text: &str) -> Result<JsonPath, String> {
        Self::parse_with(text, true)
    }

    fn parse_with(text: &str, each: bool) -> Result<JsonPath, String> {
        let mut steps = Vec::new();
        let mut rest = text.trim();
        if rest == "$" {
            rest = "";
        } else if let Some(r) = rest.strip_prefix("$.") {
            rest = r;
        } else if let Some(r) = rest.strip_prefix('$') {
            if !r.starts_with('[') {
                return Err(format!("`{text}`: `$` must be followed by `.` or `[`"));
            }
            rest = r;
        }
        let bad = |why: &str| format!("`{text}`: {why}");
        let mut expect_key = !rest.starts_with('[');
        while !rest.is_empty() {
            if let Some(r) = rest.strip_prefix('[') {
                if let Some(r) = r.strip_prefix('"') {
                    let end = r.find("\"]").ok_or_else(|| bad("unterminated `[\"`"))?;
                    steps.push(Step::Key(r[..end].to_string()));
                    rest = &r[end + 2..];
                } else if let Some(r) = r.strip_prefix("*]") {
                    if !each {
                        return Err(bad(
                            "`[*]` is only allowed where values are read (a field's `from`)",
                        ));
                    }
                    steps.push(Step::Each);
                    rest = r;
                } else {
                    let end = r.find(']').ok_or_else(|| bad("unterminated `[`"))?;
                    let n: usize = r[..end]
                        .trim()
                        .parse()
                        .map_err(|_| bad("an index must be a number (or a quoted key)"))?;
                    if n > MAX_INDEX {
                        return Err(bad(&format!("indexes stop at {MAX_INDEX}")));
                    }
                    steps.push(Step::Index(n));
                    rest = &r[end + 1..];
                }
                expect_key = false;
            } else if let Some(r) = rest.strip_prefix('.') {
                if expect_key {
                    return Err(bad("empty name"));
                }
                rest = r;
                expect_key = true;
            } else {
                if !expect_key {
                    return Err(bad("expected `.` or `[` between steps"));
                }
                let end = rest.find(['.', '[']).unwrap_or(rest.len());
                let name = &rest[..end];
                if name.is_empty() {
                    return Err(bad("empty name"));
                }
                steps.push(Step::Key(name.to_string()));
                rest = &rest[end..];
                expect_key = false;
            }
        }
        if expect_key && !steps.is_empty() {
            return Err(bad("ends with `.`"));
        }
        Ok(JsonPath {
            steps,
            text: text.trim().to_string(),
        })
    }

    /// Whether the path is the whole value (`$`).
    pub fn is_root(&self) -> bool {
        self.steps.is_empty()
    }

    /// The steps.
    pub fn steps(&self) -> &[Step] {
        &self.steps
    }

    /// The value at the path, if there is one.
    pub fn get<'a>(&self, root: &'a Value) -> Option<&'a Value> {
        let mut cur = root;
        for step in &self.steps {
            cur = match (step, cur) {
                (Step::Key(k), Value::Object(m)) => m.get(k)?,
                (Step::Index(i), Value::Array(a)) => a.get(*i)?,
                _ => return None,
            };
        }
        Some(cur)
    }

    /// The value at the path, with every `[*]` collecting the values found under each
    /// element of an array into an array (elements where the rest is missing are left out).
    pub fn select(&self, root: &Value) -> Option<Value> {
        select(&self.steps, root)
    }

    /// The value at the path inside an object given as a map (JWT claims).
    pub fn get_in<'a>(&self, root: &'a Map<String, Value>) -> Option<&'a Value> {
        let (first, rest) = self.steps.split_first()?;
        let Step::Key(k) = first else { return None };
        let mut cur = root.get(k)?;
        for step in rest {
            cur = match (step, cur) {
                (Step::Key(k), Value::Object(m)) => m.get(k)?,
                (Step::Index(i), Value::Array(a)) => a.get(*i)?,
                _ => return None,
            };
        }
        Some(cur)
    }

    /// Writes `value` at the path, creating what is missing on the way.
    pub fn set(&self, root: &mut Value, value: Value) {
        let mut cur = root;
        for step in &self.steps {
            cur = match step {
                Step::Key(k) => {
                    if !cur.is_object() {
                        *cur = Value::Object(Map::new());
                    }
                    match cur {
                        Value::Object(m) => m.entry(k.clone()).or_insert(Value::Null),
                        _ => return,
                    }
                }
                // Writes never go through `[*]`: such paths are refused when loading.
                Step::Each => return,
                Step::Index(i) => {
                    if !cur.is_array() {
                        *cur = Value::Array(Vec::new());
                    }
                    match cur {
                        Value::Array(a) => {
                            if a.len() <= *i {
                                a.resize(*i + 1, Value::Null);
                            }
                            &mut a[*i]
                        }
                        _ => return,
                    }
                }
            };
        }
        *cur = value;
    }

    /// Removes the value at the path (an array element is removed, shifting the rest).
    pub fn remove(&self, root: &mut Value) -> Option<Value> {
        let (last, parents) = self.steps.split_last()?;
        let mut cur = root;
        for step in parents {
            cur = match (step, cur) {
                (Step::Key(k), Value::Object(m)) => m.get_mut(k)?,
                (Step::Index(i), Value::Array(a)) => a.get_mut(*i)?,
                _ => return None,
            };
        }
        match (last, cur) {
            (Step::Key(k), Value::Object(m)) => m.remove(k),
            (Step::Index(i), Value::Array(a)) if *i < a.len() => Some(a.remove(*i)),
            _ => None,
        }
    }
}

fn select(steps: &[Step], root: &Value) -> Option<Value> {
    let mut cur = root;
    for (i, step) in steps.iter().enumerate() {
        cur = match (step, cur) {
            (Step::Key(k), Value::Object(m)) => m.get(k)?,
            (Step::Index(n), Value::Array(a)) => a.get(*n)?,
            (Step::Each, Value::Array(a)) => {
                let rest = &steps[i + 1..];
                return Some(Value::Array(
                    a.iter().filter_map(|item| select(rest, item)).collect(),
                ));
            }
            _ => return None,
        };
    }
    Some(cur.clone())
}

/// A value as header or template text: strings as they are, other scalars as JSON, and
/// arrays and objects as compact JSON.
pub fn as_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn p(s: &str) -> JsonPath {
        JsonPath::parse(s).unwrap()
    }

    #[test]
    fn parses_names_indexes_quoted_keys_and_the_root() {
        assert_eq!(
            p("items[0].id").steps(),
            [
                Step::Key("items".into()),
                Step::Index(0),
                Step::Key("id".into())
            ]
        );
        assert_eq!(p("$.a").steps(), p("a").steps());
        assert!(p("$").is_root());
        assert_eq!(
            p("[\"https://x.io/region\"]").steps(),
            [Step::Key("https://x.io/region".into())]
        );
        assert_eq!(p("$[1]").steps(), [Step::Index(1)]);
        for bad in [
            "a..b", "a.", ".a", "a[x]", "a[1", "a[\"x", "a[5000]", "a[0]b", "$x",
        ] {
            assert!(JsonPath::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn reads_and_writes_nested_values() {
        let doc = json!({"variables": {"user_id": 7}, "items": [{"id": "a"}, {"id": "b"}]});
        assert_eq!(p("variables.user_id").get(&doc), Some(&json!(7)));
        assert_eq!(p("items[1].id").get(&doc), Some(&json!("b")));
        assert_eq!(p("items[5].id").get(&doc), None);
        assert_eq!(p("variables.user_id.x").get(&doc), None);
        let mut out = Value::Null;
        p("data.users[1].id").set(&mut out, json!(7));
        assert_eq!(out, json!({"data": {"users": [null, {"id": 7}]}}));
        p("data.kind").set(&mut out, json!("x"));
        assert_eq!(out["data"]["kind"], "x");
        let mut doc = doc;
        assert_eq!(p("items[0]").remove(&mut doc), Some(json!({"id": "a"})));
        assert_eq!(doc["items"], json!([{"id": "b"}]));
        assert_eq!(p("nope.x").remove(&mut doc), None);
    }

    #[test]
    fn patterns_collect_from_every_array_element() {
        let doc =
            json!({"items": [{"id": 1, "tags": ["a"]}, {"x": 0}, {"id": 3, "tags": ["b", "c"]}]});
        let pat = |s: &str| JsonPath::parse_pattern(s).unwrap();
        assert_eq!(pat("items[*].id").select(&doc), Some(json!([1, 3])));
        assert_eq!(
            pat("items[*].tags[*]").select(&doc),
            Some(json!([["a"], ["b", "c"]]))
        );
        assert_eq!(pat("items[0].id").select(&doc), Some(json!(1)));
        assert_eq!(pat("nope[*]").select(&doc), None);
        assert!(JsonPath::parse("items[*].id").is_err());
    }

    #[test]
    fn reads_from_a_claims_map() {
        let claims = json!({"region": "eu", "org": {"id": 3}});
        let m = claims.as_object().unwrap();
        assert_eq!(p("org.id").get_in(m), Some(&json!(3)));
        assert_eq!(as_text(p("region").get_in(m).unwrap()), "eu");
        assert_eq!(as_text(&json!([1, 2])), "[1,2]");
    }
}
