//! `cjson` and `cjson.safe`: lua-cjson's encoding rules — `cjson.null`, `cjson.empty_array`,
//! `cjson.array_mt`/`empty_array_mt`, empty tables as objects, `/` escaped as `\/`,
//! numbers with 14 significant digits, "excessively sparse array" errors. The safe variant
//! returns `nil, err` instead of raising. The encoder options are fixed (the module is
//! shared by all scripts, so a per-script setting would leak into other scripts); the option
//! functions exist and return the fixed value.

use mlua::{LightUserData, Lua, Table, Value};

use super::super::convert;

/// Marker behind `cjson.empty_array` (a light userdata, as in lua-cjson).
static EMPTY_ARRAY: u8 = 0;

/// Nesting limit of encode and decode (lua-cjson's default is 1000; serde_json stops at 128
/// when decoding).
const MAX_DEPTH: usize = 1000;

fn empty_array() -> Value {
    Value::LightUserData(LightUserData(
        std::ptr::addr_of!(EMPTY_ARRAY).cast_mut().cast(),
    ))
}

struct Marks {
    array_mt: Table,
    empty_array_mt: Table,
}

fn escape(out: &mut Vec<u8>, s: &[u8]) {
    out.push(b'"');
    for &b in s {
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'/' => out.extend_from_slice(b"\\/"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            0x08 => out.extend_from_slice(b"\\b"),
            0x0c => out.extend_from_slice(b"\\f"),
            0..=0x1f | 0x7f => out.extend_from_slice(format!("\\u{b:04x}").as_bytes()),
            _ => out.push(b),
        }
    }
    out.push(b'"');
}

fn number(out: &mut Vec<u8>, n: f64) -> Result<(), String> {
    if !n.is_finite() {
        return Err("Cannot serialise number: must not be NaN or Infinity".into());
    }
    out.extend_from_slice(convert::number_text(n).as_bytes());
    Ok(())
}

fn is_mt(t: &Table, mt: &Table) -> bool {
    t.metatable()
        .is_some_and(|m| m.to_pointer() == mt.to_pointer())
}

/// Array length if `t` is an array (keys 1..n, not too sparse), `None` for an object.
fn array_len(t: &Table, marks: &Marks) -> Result<Option<usize>, String> {
    if is_mt(t, &marks.array_mt) || is_mt(t, &marks.empty_array_mt) {
        return Ok(Some(t.raw_len()));
    }
    let (mut max, mut count) = (0usize, 0usize);
    for kv in t.pairs::<Value, Value>() {
        let (k, _) = kv.map_err(|e| e.to_string())?;
        let idx = match k {
            Value::Integer(i) if i >= 1 => usize::try_from(i).ok(),
            Value::Number(n) if n >= 1.0 && n.fract() == 0.0 && n < 1e15 => Some(n as usize),
            _ => None,
        };
        match idx {
            Some(i) => {
                max = max.max(i);
                count += 1;
            }
            None => return Ok(None),
        }
    }
    if count == 0 {
        return Ok(None);
    }
    // lua-cjson's defaults: ratio 2, safe 10.
    if max > 10 && max > count * 2 {
        return Err("Cannot serialise table: excessively sparse array".into());
    }
    Ok(Some(max))
}

fn encode(v: &Value, out: &mut Vec<u8>, depth: usize, marks: &Marks) -> Result<(), String> {
    match v {
        Value::Nil => out.extend_from_slice(b"null"),
        Value::Boolean(b) => out.extend_from_slice(if *b { b"true" } else { b"false" }),
        Value::Integer(i) => number(out, *i as f64)?,
        Value::Number(n) => number(out, *n)?,
        Value::String(s) => escape(out, &s.as_bytes()),
        Value::LightUserData(l) if l.0.is_null() => out.extend_from_slice(b"null"),
        Value::LightUserData(_) if *v == empty_array() => out.extend_from_slice(b"[]"),
        Value::Table(t) => {
            if depth >= MAX_DEPTH {
                return Err(format!(
                    "Cannot serialise, excessive nesting ({})",
                    depth + 1
                ));
            }
            match array_len(t, marks)? {
                Some(n) => {
                    out.push(b'[');
                    for i in 1..=n {
                        if i > 1 {
                            out.push(b',');
                        }
                        let item: Value = t.raw_get(i).map_err(|e| e.to_string())?;
                        encode(&item, out, depth + 1, marks)?;
                    }
                    out.push(b']');
                }
                None => {
                    out.push(b'{');
                    let mut first = true;
                    for kv in t.pairs::<Value, Value>() {
                        let (k, item) = kv.map_err(|e| e.to_string())?;
                        if !first {
                            out.push(b',');
                        }
                        first = false;
                        match &k {
                            Value::String(s) => escape(out, &s.as_bytes()),
                            Value::Integer(_) | Value::Number(_) => {
                                escape(out, &convert::as_bytes(&k).unwrap_or_default())
                            }
                            _ => {
                                return Err(
                                    "Cannot serialise table: table key must be a number or string"
                                        .into(),
                                )
                            }
                        }
                        out.push(b':');
                        encode(&item, out, depth + 1, marks)?;
                    }
                    out.push(b'}');
                }
            }
        }
        other => {
            return Err(format!(
                "Cannot serialise {}: type not supported",
                other.type_name()
            ))
        }
    }
    Ok(())
}

/// Converts a JSON value as `cjson.decode` would (`null` is `cjson.null`).
pub fn to_lua(lua: &Lua, v: serde_json::Value) -> mlua::Result<Value> {
    Ok(match v {
        serde_json::Value::Null => Value::NULL,
        serde_json::Value::Bool(b) => Value::Boolean(b),
        serde_json::Value::Number(n) => Value::Number(n.as_f64().unwrap_or(0.0)),
        serde_json::Value::String(s) => Value::String(lua.create_string(s)?),
        serde_json::Value::Array(items) => {
            let t = lua.create_table_with_capacity(items.len(), 0)?;
            for (i, item) in items.into_iter().enumerate() {
                t.raw_set(i + 1, to_lua(lua, item)?)?;
            }
            Value::Table(t)
        }
        serde_json::Value::Object(map) => {
            let t = lua.create_table_with_capacity(0, map.len())?;
            for (k, item) in map {
                t.raw_set(k, to_lua(lua, item)?)?;
            }
            Value::Table(t)
        }
    })
}

fn decode(lua: &Lua, text: &[u8]) -> Result<Value, String> {
    let parsed: serde_json::Value = serde_json::from_slice(text)
        .map_err(|e| format!("Expected value but found invalid token: {e}"))?;
    to_lua(lua, parsed).map_err(|e| e.to_string())
}

/// Encodes `v` with lua-cjson's rules (used by the spec runner for messages too).
pub fn encode_value(lua: &Lua, v: &Value) -> Result<Vec<u8>, String> {
    let marks = Marks {
        array_mt: lua.create_table().map_err(|e| e.to_string())?,
        empty_array_mt: lua.create_table().map_err(|e| e.to_string())?,
    };
    let mut out = Vec::new();
    encode(v, &mut out, 0, &marks)?;
    Ok(out)
}

/// The `cjson` module (`safe` = `cjson.safe`).
pub fn module(lua: &Lua, safe: bool) -> mlua::Result<Table> {
    let m = lua.create_table()?;
    let array_mt = lua.create_table()?;
    let empty_array_mt = lua.create_table()?;
    let marks = std::rc::Rc::new(Marks {
        array_mt: array_mt.clone(),
        empty_array_mt: empty_array_mt.clone(),
    });
    // Both variants return `nil, err` from Rust; the raising one re-raises in Lua so that
    // `pcall` hands scripts a string, as lua-cjson does.
    let fail = move |lua: &Lua, e: String| -> mlua::Result<mlua::MultiValue> {
        Ok([Value::Nil, Value::String(lua.create_string(&e)?)]
            .into_iter()
            .collect())
    };
    let mk = marks.clone();
    m.raw_set(
        "encode",
        lua.create_function(move |lua, v: Value| {
            let mut out = Vec::new();
            match encode(&v, &mut out, 0, &mk) {
                Ok(()) => Ok([Value::String(lua.create_string(out)?)]
                    .into_iter()
                    .collect()),
                Err(e) => fail(lua, e),
            }
        })?,
    )?;
    m.raw_set(
        "decode",
        lua.create_function(move |lua, s: Value| {
            let Some(text) = convert::as_bytes(&s) else {
                return fail(
                    lua,
                    format!(
                        "bad argument #1 to 'decode' (string expected, got {})",
                        s.type_name()
                    ),
                );
            };
            match decode(lua, &text) {
                Ok(v) => Ok([v].into_iter().collect()),
                Err(e) => fail(lua, e),
            }
        })?,
    )?;
    if !safe {
        let raising: mlua::Function = lua
            .load("local f = ... return function(v) local r, err = f(v) if r == nil and err ~= nil then error(err, 2) end return r end")
            .set_name("=cjson")
            .into_function()?;
        for name in ["encode", "decode"] {
            let inner: mlua::Function = m.raw_get(name)?;
            m.raw_set(name, raising.call::<mlua::Function>(inner)?)?;
        }
    }
    m.raw_set("null", Value::NULL)?;
    m.raw_set("empty_array", empty_array())?;
    m.raw_set("array_mt", array_mt)?;
    m.raw_set("empty_array_mt", empty_array_mt)?;
    for (name, fixed) in [
        ("encode_empty_table_as_object", Value::Boolean(true)),
        ("decode_array_with_array_mt", Value::Boolean(false)),
        ("encode_escape_forward_slash", Value::Boolean(true)),
        ("encode_number_precision", Value::Integer(14)),
        ("encode_max_depth", Value::Integer(MAX_DEPTH as i64)),
        ("decode_max_depth", Value::Integer(MAX_DEPTH as i64)),
        ("encode_invalid_numbers", Value::Boolean(false)),
        ("decode_invalid_numbers", Value::Boolean(true)),
        ("encode_keep_buffer", Value::Boolean(true)),
    ] {
        m.raw_set(
            name,
            lua.create_function(move |_, _: mlua::MultiValue| Ok(fixed.clone()))?,
        )?;
    }
    m.raw_set(
        "encode_sparse_array",
        lua.create_function(|_, _: mlua::MultiValue| Ok((false, 2, 10)))?,
    )?;
    let this = m.clone();
    m.raw_set("new", lua.create_function(move |_, ()| Ok(this.clone()))?)?;
    m.raw_set("_NAME", if safe { "cjson.safe" } else { "cjson" })?;
    m.raw_set("_VERSION", "2.1.0.14")?;
    Ok(m)
}
