//! The path syntax of `json_transform` and the claim plugins (`crates/plugins/src/json_path.rs`).
//!
//! Input: a path, a NUL byte, then a JSON document (optional). Invariants: no panic; a
//! parsed path parses again from its text to the same steps; reading never fails; a value
//! written at a path is read back at that path, and removing it then finds it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::{json, Value};
use sluicegate_plugins::json_path::{as_text, JsonPath, Step};

fuzz_target!(|data: &[u8]| {
    let (path, doc) = match data.iter().position(|b| *b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let Ok(text) = std::str::from_utf8(path) else {
        return;
    };
    let mut root: Value =
        serde_json::from_slice(doc).unwrap_or_else(|_| json!({"a": [1, {"b": 2}]}));
    if let Ok(pattern) = JsonPath::parse_pattern(text) {
        let again =
            JsonPath::parse_pattern(&pattern.to_string()).expect("a path's text parses again");
        assert_eq!(again.steps(), pattern.steps());
        let _ = pattern.select(&root).map(|v| as_text(&v));
    }
    let Ok(p) = JsonPath::parse(text) else {
        return;
    };
    assert!(!p.steps().contains(&Step::Each));
    let read = p.get(&root).cloned();
    assert_eq!(read, p.select(&root));
    if let Value::Object(map) = &root {
        if matches!(p.steps().first(), Some(Step::Key(_))) {
            assert_eq!(p.get_in(map), read.as_ref());
        }
    }
    let marker = json!({"written": true});
    p.set(&mut root, marker.clone());
    assert_eq!(
        p.get(&root),
        Some(&marker),
        "a written value is not read back"
    );
    if p.is_root() {
        assert_eq!(p.remove(&mut root), None);
    } else {
        assert_eq!(
            p.remove(&mut root),
            Some(marker),
            "a written value is not removed"
        );
    }
});
