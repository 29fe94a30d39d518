//! Conversions between Lua values and the outside world (`crates/lua/src/convert.rs` and
//! the `cjson` module built on it): JSON to Lua values and back, numbers as Lua prints
//! them, URI escaping and query strings with nginx's rules.
//!
//! Invariants: no panic; a JSON document decoded into Lua values encodes to valid JSON
//! that decodes to the same Lua values again; a printed number reads back as a number
//! (the same one, to Lua's 14 significant digits); `unescape_uri` undoes `escape_uri`;
//! `parse_args` never returns more pairs than asked for.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mlua::Lua;
use sluicegate_lua::api::cjson::{encode_value, to_lua};
use sluicegate_lua::convert::{escape_uri, number_text, parse_args, unescape_uri};

thread_local! {
    static LUA: Lua = Lua::new();
}

/// Decodes `text` as `cjson.decode` does and encodes it again.
fn round_trip(lua: &Lua, text: &[u8]) -> Option<Vec<u8>> {
    let json: serde_json::Value = serde_json::from_slice(text).ok()?;
    let value = to_lua(lua, json).expect("a JSON value becomes a Lua value");
    encode_value(lua, &value).ok()
}

fn check_number(n: f64) {
    let text = number_text(n);
    let back: f64 = match text.as_str() {
        "nan" => return assert!(n.is_nan()),
        "inf" => f64::INFINITY,
        "-inf" => f64::NEG_INFINITY,
        t => t
            .parse()
            .unwrap_or_else(|_| panic!("`{t}` (from {n:e}) is not a number")),
    };
    if n.is_normal() {
        let err = ((back - n) / n).abs();
        assert!(err < 1e-13, "`{text}` is not {n:e}");
    } else if !n.is_finite() || n == 0.0 {
        assert_eq!(back, n);
    }
}

fuzz_target!(|data: &[u8]| {
    LUA.with(|lua| {
        if let Some(first) = round_trip(lua, data) {
            let _: serde_json::Value = serde_json::from_slice(&first).unwrap_or_else(|e| {
                panic!(
                    "cjson wrote invalid JSON ({e}): {}",
                    String::from_utf8_lossy(&first)
                )
            });
            let second = round_trip(lua, &first).expect("cjson's own output does not decode");
            assert_eq!(first, second, "encoding is not stable");
        }
        lua.gc_collect().ok();
    });
    for chunk in data.chunks_exact(8) {
        let bits = u64::from_le_bytes(chunk.try_into().unwrap_or_default());
        check_number(f64::from_bits(bits));
    }
    assert_eq!(unescape_uri(&escape_uri(data, false)), data);
    let _ = escape_uri(data, true);
    let max = usize::from(data.first().copied().unwrap_or(0) % 8);
    let (args, dropped) = parse_args(data, max);
    if max > 0 {
        assert!(args.len() <= max);
    }
    if dropped {
        assert!(max > 0 && args.len() == max);
    }
});
