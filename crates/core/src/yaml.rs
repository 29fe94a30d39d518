//! The YAML (and JSON) reader: turns a file into a tree of [`Node`]s that keep their line
//! numbers, with `${ENV}` / `${ENV:-default}` interpolated and scalars typed after
//! interpolation (so `port: ${PORT:-8080}` is an integer).
//!
//! Invariants: every node carries the 1-based line it started on; interpolation never
//! touches `${secret:NAME}` references (those are resolved by the secrets layer when a
//! plugin asks for them) nor `${claims.NAME}` (claim routing templates); a missing
//! variable without a default is an error at that node.

use std::collections::HashMap;

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::{Marker, TScalarStyle};

use crate::diag::{Diag, Path};

/// One value in the configuration tree, with the line it was written on.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    /// The value.
    pub kind: NodeKind,
    /// 1-based line in the source file.
    pub line: usize,
}

/// The shape of a [`Node`].
#[derive(Debug, Clone, PartialEq)]
pub enum NodeKind {
    /// `null`, `~` or an empty value.
    Null,
    /// `true` / `false`.
    Bool(bool),
    /// An integer that fits in i64.
    Int(i64),
    /// A floating-point number.
    Float(f64),
    /// A string (every quoted scalar, and plain scalars that are not another type).
    Str(String),
    /// A sequence.
    Seq(Vec<Node>),
    /// A mapping, in source order. Keys are strings (other key types are rejected).
    Map(Vec<(String, Node)>),
}

impl Node {
    /// Frees the tree with a [`pace::point`](crate::pace::point) per item of each
    /// top-level section: a parsed configuration's 10,000 routes free in as many steps.
    pub fn free_paced(self) {
        fn items(node: Node) -> Vec<Node> {
            match node.kind {
                NodeKind::Seq(items) => items,
                NodeKind::Map(entries) => entries.into_iter().map(|(_, v)| v).collect(),
                _ => Vec::new(),
            }
        }
        for section in items(self) {
            crate::pace::drop_paced(items(section));
        }
    }

    /// A short name of the node's type, for error messages.
    pub fn type_name(&self) -> &'static str {
        match self.kind {
            NodeKind::Null => "null",
            NodeKind::Bool(_) => "a boolean",
            NodeKind::Int(_) => "an integer",
            NodeKind::Float(_) => "a number",
            NodeKind::Str(_) => "a string",
            NodeKind::Seq(_) => "a list",
            NodeKind::Map(_) => "a mapping",
        }
    }

    /// The value under `key` when this node is a mapping.
    pub fn get(&self, key: &str) -> Option<&Node> {
        match &self.kind {
            NodeKind::Map(entries) => entries.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    /// Removes and returns the value under `key` when this node is a mapping.
    pub fn take(&mut self, key: &str) -> Option<Node> {
        match &mut self.kind {
            NodeKind::Map(entries) => {
                let pos = entries.iter().position(|(k, _)| k == key)?;
                Some(entries.remove(pos).1)
            }
            _ => None,
        }
    }

    /// The string value, when this node is a string.
    pub fn as_str(&self) -> Option<&str> {
        match &self.kind {
            NodeKind::Str(s) => Some(s),
            _ => None,
        }
    }

    /// Records the line of this node and every node below it under its path.
    pub fn index_lines(&self, path: &Path, out: &mut HashMap<String, usize>) {
        out.insert(path.to_string(), self.line);
        match &self.kind {
            NodeKind::Seq(items) => {
                for (i, item) in items.iter().enumerate() {
                    item.index_lines(&path.index(i), out);
                }
            }
            NodeKind::Map(entries) => {
                for (k, v) in entries {
                    v.index_lines(&path.key(k), out);
                }
            }
            _ => {}
        }
    }
}

/// Where interpolated values come from (the process environment in production, a map in tests).
pub trait Env {
    /// The value of variable `name`, if set.
    fn var(&self, name: &str) -> Option<String>;
}

/// The process environment.
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}

impl Env for HashMap<String, String> {
    fn var(&self, name: &str) -> Option<String> {
        self.get(name).cloned()
    }
}

/// Renders a JSON document as YAML text (block style; multi-line strings such as Lua code
/// as literal blocks), for exports a user edits as a configuration file.
pub fn emit_json(value: &serde_json::Value) -> Result<String, String> {
    fn convert(v: &serde_json::Value) -> yaml_rust2::Yaml {
        use yaml_rust2::Yaml;
        match v {
            serde_json::Value::Null => Yaml::Null,
            serde_json::Value::Bool(b) => Yaml::Boolean(*b),
            serde_json::Value::Number(n) => match n.as_i64() {
                Some(i) => Yaml::Integer(i),
                None => Yaml::Real(n.to_string()),
            },
            serde_json::Value::String(s) => Yaml::String(s.clone()),
            serde_json::Value::Array(items) => Yaml::Array(items.iter().map(convert).collect()),
            // An entry's `name` first, as one writes it; the rest in key order.
            serde_json::Value::Object(map) => Yaml::Hash(
                map.get_key_value("name")
                    .into_iter()
                    .chain(map.iter().filter(|(k, _)| *k != "name"))
                    .map(|(k, v)| (Yaml::String(k.clone()), convert(v)))
                    .collect(),
            ),
        }
    }
    let mut out = String::new();
    let mut emitter = yaml_rust2::YamlEmitter::new(&mut out);
    emitter.multiline_strings(true);
    emitter
        .dump(&convert(value))
        .map_err(|e| format!("{e:?}"))?;
    // A file, not a stream: without the document marker it can be appended to another.
    let body = out.strip_prefix("---\n").unwrap_or(&out);
    Ok(format!("{body}\n"))
}

/// Parses `text` (YAML or JSON) into a node tree, interpolating environment variables.
/// Returns every interpolation error; a syntax error stops parsing and is returned alone.
pub fn parse(text: &str, env: &dyn Env) -> Result<Node, Vec<Diag>> {
    let mut builder = Builder {
        env,
        stack: Vec::new(),
        anchors: HashMap::new(),
        root: None,
        errors: Vec::new(),
    };
    let mut parser = Parser::new_from_str(text);
    if let Err(e) = parser.load(&mut builder, false) {
        return Err(vec![Diag::at_line(
            e.marker().line(),
            format!("invalid YAML: {}", e.info()),
        )]);
    }
    if !builder.errors.is_empty() {
        return Err(builder.errors);
    }
    Ok(builder.root.unwrap_or(Node {
        kind: NodeKind::Null,
        line: 1,
    }))
}

enum Frame {
    Seq(Node, usize),
    Map(Node, Option<(String, usize)>, usize),
}

struct Builder<'e> {
    env: &'e dyn Env,
    stack: Vec<Frame>,
    anchors: HashMap<usize, Node>,
    root: Option<Node>,
    errors: Vec<Diag>,
}

impl Builder<'_> {
    fn push_value(&mut self, node: Node, anchor: usize) {
        if anchor > 0 {
            self.anchors.insert(anchor, node.clone());
        }
        match self.stack.last_mut() {
            None => self.root = Some(node),
            Some(Frame::Seq(seq, _)) => {
                if let NodeKind::Seq(items) = &mut seq.kind {
                    items.push(node);
                }
            }
            Some(Frame::Map(map, pending_key, _)) => match pending_key.take() {
                None => match node.kind {
                    NodeKind::Str(s) => *pending_key = Some((s, node.line)),
                    NodeKind::Int(i) => *pending_key = Some((i.to_string(), node.line)),
                    NodeKind::Bool(b) => *pending_key = Some((b.to_string(), node.line)),
                    _ => {
                        self.errors.push(Diag::at_line(
                            node.line,
                            format!("mapping keys must be strings, found {}", node.type_name()),
                        ));
                        *pending_key = Some((String::new(), node.line));
                    }
                },
                Some((key, key_line)) => {
                    if let NodeKind::Map(entries) = &mut map.kind {
                        if entries.iter().any(|(k, _)| *k == key) {
                            self.errors
                                .push(Diag::at_line(key_line, format!("duplicate key `{key}`")));
                        }
                        entries.push((key, node));
                    }
                }
            },
        }
    }

    fn scalar(&mut self, value: String, style: TScalarStyle, line: usize) -> Node {
        let (text, ok) = match interpolate(&value, self.env) {
            Ok(t) => (t, true),
            Err(msg) => {
                self.errors.push(Diag::at_line(line, msg));
                (value, false)
            }
        };
        let kind = if style != TScalarStyle::Plain || !ok {
            NodeKind::Str(text)
        } else {
            plain_kind(text)
        };
        Node { kind, line }
    }
}

impl MarkedEventReceiver for Builder<'_> {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        // Parsing a large file is a reload's first piece of background work.
        crate::pace::point();
        let line = mark.line().max(1);
        match ev {
            Event::Scalar(value, style, anchor, _tag) => {
                let node = self.scalar(value, style, line);
                self.push_value(node, anchor);
            }
            Event::SequenceStart(anchor, _) => self.stack.push(Frame::Seq(
                Node {
                    kind: NodeKind::Seq(Vec::new()),
                    line,
                },
                anchor,
            )),
            Event::MappingStart(anchor, _) => self.stack.push(Frame::Map(
                Node {
                    kind: NodeKind::Map(Vec::new()),
                    line,
                },
                None,
                anchor,
            )),
            Event::SequenceEnd | Event::MappingEnd => {
                if let Some(frame) = self.stack.pop() {
                    let (node, anchor) = match frame {
                        Frame::Seq(n, a) => (n, a),
                        Frame::Map(n, _, a) => (n, a),
                    };
                    self.push_value(node, anchor);
                }
            }
            Event::Alias(id) => match self.anchors.get(&id).cloned() {
                Some(node) => self.push_value(node, 0),
                None => self.errors.push(Diag::at_line(
                    line,
                    "alias to an unknown anchor".to_string(),
                )),
            },
            Event::Nothing
            | Event::StreamStart
            | Event::StreamEnd
            | Event::DocumentStart
            | Event::DocumentEnd => {}
        }
    }
}

/// Types a plain (unquoted) scalar the way YAML 1.2's core schema does.
fn plain_kind(text: String) -> NodeKind {
    match text.as_str() {
        "" | "~" | "null" | "Null" | "NULL" => return NodeKind::Null,
        "true" | "True" | "TRUE" => return NodeKind::Bool(true),
        "false" | "False" | "FALSE" => return NodeKind::Bool(false),
        _ => {}
    }
    if let Ok(i) = text.parse::<i64>() {
        return NodeKind::Int(i);
    }
    let looks_numeric = text
        .bytes()
        .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'+' | b'e' | b'E'))
        && text.bytes().any(|b| b.is_ascii_digit());
    if looks_numeric {
        if let Ok(f) = text.parse::<f64>() {
            return NodeKind::Float(f);
        }
    }
    NodeKind::Str(text)
}

/// The index of the `}` closing a `${` whose body starts `body`, past nested `${...}`.
fn closing_brace(body: &str) -> Option<usize> {
    let bytes = body.as_bytes();
    let mut depth = 0usize;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'$' if bytes.get(i + 1) == Some(&b'{') => {
                depth += 1;
                i += 1;
            }
            b'}' if depth == 0 => return Some(i),
            b'}' => depth -= 1,
            _ => {}
        }
        i += 1;
    }
    None
}

/// Replaces `${NAME}` and `${NAME:-default}` with environment values. `$${` writes a
/// literal `${`. `${secret:NAME}` is kept as written for the secrets layer, and
/// `${claims.NAME}` for claim routing templates.
pub fn interpolate(input: &str, env: &dyn Env) -> Result<String, String> {
    if !input.contains('$') {
        return Ok(input.to_string());
    }
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos..];
        if let Some(stripped) = after.strip_prefix("$${") {
            out.push_str("${");
            rest = stripped;
            continue;
        }
        let Some(body_start) = after.strip_prefix("${") else {
            out.push('$');
            rest = &after[1..];
            continue;
        };
        let Some(end) = closing_brace(body_start) else {
            return Err(format!("unterminated `${{` in `{input}`"));
        };
        let body = &body_start[..end];
        rest = &body_start[end + 1..];
        // `${claims.NAME}` is a claim routing template, filled in per request.
        if body.starts_with("secret:") || body.starts_with("claims.") {
            out.push_str("${");
            out.push_str(body);
            out.push('}');
            continue;
        }
        let (name, default) = match body.split_once(":-") {
            Some((n, d)) => (n, Some(d)),
            None => (body, None),
        };
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            return Err(format!("invalid variable name `{name}` in `${{{body}}}`"));
        }
        // A default may name another variable: `${PREVIOUS:-${CURRENT}}`.
        let default = default.map(|d| interpolate(d, env)).transpose()?;
        match (env.var(name), default) {
            (Some(v), Some(d)) if v.is_empty() => out.push_str(&d),
            (Some(v), _) => out.push_str(&v),
            (None, Some(d)) => out.push_str(&d),
            (None, None) => {
                return Err(format!(
                    "environment variable `{name}` is not set (write `${{{name}:-default}}` to give a default)"
                ))
            }
        }
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn interpolates_variables_and_defaults() {
        let e = env(&[("PORT", "9000"), ("EMPTY", "")]);
        assert_eq!(interpolate("a:${PORT}", &e).unwrap(), "a:9000");
        assert_eq!(interpolate("${NOPE:-8080}", &e).unwrap(), "8080");
        assert_eq!(interpolate("${EMPTY:-x}", &e).unwrap(), "x");
        assert_eq!(interpolate("${NOPE:-${PORT}}/", &e).unwrap(), "9000/");
        assert_eq!(interpolate("${NOPE:-a${EMPTY:-b}c}", &e).unwrap(), "abc");
        assert!(interpolate("${NOPE:-${ALSO_NOPE}}", &e)
            .unwrap_err()
            .contains("ALSO_NOPE"));
        assert_eq!(interpolate("$${PORT}", &e).unwrap(), "${PORT}");
        assert_eq!(
            interpolate("${secret:slack}", &e).unwrap(),
            "${secret:slack}"
        );
        assert!(interpolate("${NOPE}", &e).unwrap_err().contains("NOPE"));
        assert_eq!(
            interpolate("api-${claims.region}", &e).unwrap(),
            "api-${claims.region}"
        );
    }

    #[test]
    fn types_plain_scalars_after_interpolation() {
        let e = env(&[("PORT", "9000")]);
        let n = parse("port: ${PORT}\nname: '${PORT}'\nflag: true\nx: 1.5\n", &e).unwrap();
        assert_eq!(n.get("port").unwrap().kind, NodeKind::Int(9000));
        assert_eq!(n.get("name").unwrap().kind, NodeKind::Str("9000".into()));
        assert_eq!(n.get("flag").unwrap().kind, NodeKind::Bool(true));
        assert_eq!(n.get("x").unwrap().kind, NodeKind::Float(1.5));
    }

    #[test]
    fn keeps_line_numbers_and_reports_duplicate_keys() {
        let n = parse("a: 1\nb:\n  - x\n  - y\n", &env(&[])).unwrap();
        assert_eq!(n.get("b").unwrap().line, 3);
        let errs = parse("a: 1\na: 2\n", &env(&[])).unwrap_err();
        assert_eq!(errs[0].line, Some(2));
    }

    #[test]
    fn reads_json_too() {
        let n = parse(r#"{"a": [1, "two"], "b": {"c": null}}"#, &env(&[])).unwrap();
        assert!(matches!(n.get("a").unwrap().kind, NodeKind::Seq(_)));
        assert_eq!(n.get("b").unwrap().get("c").unwrap().kind, NodeKind::Null);
    }
}
