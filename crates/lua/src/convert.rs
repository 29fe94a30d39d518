//! Conversions shared by the API modules: errors that carry the script's `name:line:`,
//! Lua values to bytes (OpenResty's rules for `ngx.say` and friends), URI escaping and
//! query-string parsing with nginx's rules.

use mlua::{Lua, Value};

/// The chunk name of Lua glue between scripts and Rust functions (wrappers an extension
/// loads): [`location`] passes over its frames as over mlua's own, so that an error names
/// the script's line, not the wrapper's.
pub const GLUE_CHUNK: &str = "=[glue]";

/// `name:line: ` of the Lua code that called the running Rust function.
pub fn location(lua: &Lua) -> String {
    let glue = &GLUE_CHUNK[1..];
    // Level 1 is the caller; async functions sit behind mlua's own polling frames, and
    // extensions' methods behind a glue wrapper and a C function.
    for level in 1..9 {
        let found = lua.inspect_stack(level, |d| {
            let src = d.source();
            let name = src.short_src.as_deref().unwrap_or("?").to_string();
            match d.current_line() {
                Some(line) if !name.starts_with("__mlua") && name != glue => {
                    Some(format!("{name}:{line}: "))
                }
                _ => None,
            }
        });
        match found {
            Some(Some(at)) => return at,
            Some(None) => continue,
            None => break,
        }
    }
    String::new()
}

/// A runtime error prefixed with the caller's location, like `luaL_error`.
pub fn error(lua: &Lua, message: impl std::fmt::Display) -> mlua::Error {
    mlua::Error::RuntimeError(format!("{}{message}", location(lua)))
}

/// The bytes of a string or number argument (`nil` for anything else).
pub fn as_bytes(v: &Value) -> Option<Vec<u8>> {
    match v {
        Value::String(s) => Some(s.as_bytes().to_vec()),
        // Luau has one number type: an integer prints as the same number as a float does.
        Value::Integer(i) => Some(number_text(*i as f64).into_bytes()),
        Value::Number(n) => Some(number_text(*n).into_bytes()),
        _ => None,
    }
}

/// How Lua prints a number (`%.14g`): integers without a fraction, and every number with
/// at most 14 significant digits, so from 1e14 on an integer too is written with an exponent
/// (a 15-digit integer written out would read back the same, but the number next to it with
/// a fraction would not: cjson's output would change each time it is decoded and encoded).
pub fn number_text(n: f64) -> String {
    if n.is_nan() {
        return "nan".to_string();
    }
    if n.is_infinite() {
        return if n > 0.0 { "inf" } else { "-inf" }.to_string();
    }
    if n.fract() == 0.0 && n.abs() < 1e14 {
        return format!("{}", n as i64);
    }
    let exp = n.abs().log10().floor() as i32;
    if !(-5..14).contains(&exp) {
        let s = format!("{n:.13e}");
        let (mantissa, e) = s.split_once('e').unwrap_or((&s, "0"));
        let mantissa = trim_zeros(mantissa);
        let e: i32 = e.parse().unwrap_or(0);
        let sign = if e < 0 { '-' } else { '+' };
        return format!("{mantissa}e{sign}{:02}", e.abs());
    }
    let decimals = usize::try_from(13 - exp).unwrap_or(0);
    trim_zeros(&format!("{n:.decimals$}")).to_string()
}

fn trim_zeros(s: &str) -> &str {
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.')
    } else {
        s
    }
}

/// Appends a value the way `ngx.print` does: strings, numbers, booleans, `nil`,
/// `ngx.null`, and (nested) arrays of those.
pub fn append_printable(lua: &Lua, out: &mut Vec<u8>, v: &Value, depth: usize) -> mlua::Result<()> {
    match v {
        Value::String(s) => out.extend_from_slice(&s.as_bytes()),
        Value::Integer(_) | Value::Number(_) => out.extend(as_bytes(v).unwrap_or_default()),
        Value::Boolean(b) => out.extend_from_slice(if *b { b"true" } else { b"false" }),
        Value::Nil => out.extend_from_slice(b"nil"),
        Value::LightUserData(l) if l.0.is_null() => out.extend_from_slice(b"null"),
        Value::Table(t) if depth < 32 => {
            for item in t.sequence_values::<Value>() {
                append_printable(lua, out, &item?, depth + 1)?;
            }
        }
        other => {
            return Err(error(
                lua,
                format!("bad argument: string, number, boolean, nil, ngx.null or array table expected, got {}", other.type_name()),
            ))
        }
    }
    Ok(())
}

/// `tostring` for log messages: strings and numbers as is, others by type.
pub fn display(v: &Value) -> String {
    match v {
        Value::String(s) => s.to_string_lossy(),
        Value::Integer(_) | Value::Number(_) => {
            String::from_utf8_lossy(&as_bytes(v).unwrap_or_default()).into_owned()
        }
        Value::Boolean(b) => b.to_string(),
        Value::Nil => "nil".to_string(),
        Value::LightUserData(l) if l.0.is_null() => "null".to_string(),
        other => format!("{}: {:p}", other.type_name(), other.to_pointer()),
    }
}

/// Bytes nginx leaves unescaped in `escape_uri` type 2 (RFC 3986 unreserved).
fn unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// Bytes left as is by type 0 (a whole URI): unreserved plus reserved delimiters.
fn uri_safe(b: u8) -> bool {
    unreserved(b) || b"!*'();:@&=+$,/?#[]".contains(&b)
}

/// `ngx.escape_uri(s, type)`: type 2 (default) escapes everything but unreserved bytes;
/// type 0 keeps URI delimiters.
pub fn escape_uri(s: &[u8], whole_uri: bool) -> Vec<u8> {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = Vec::with_capacity(s.len());
    for &b in s {
        let keep = if whole_uri {
            uri_safe(b)
        } else {
            unreserved(b)
        };
        if keep {
            out.push(b);
        } else {
            out.extend_from_slice(&[b'%', HEX[(b >> 4) as usize], HEX[(b & 15) as usize]]);
        }
    }
    out
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// `ngx.unescape_uri`: decodes `%XX` and `+` (as a space); invalid escapes stay as they are.
pub fn unescape_uri(s: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        match s[i] {
            b'%' if i + 2 < s.len() => match (hex(s[i + 1]), hex(s[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    out
}

/// One `key[=value]` pair of a query string, decoded. `None` value = a bare key (`?debug`).
pub type Arg = (Vec<u8>, Option<Vec<u8>>);

/// Parses a query string or form body like `ngx.decode_args`: up to `max` pairs (0 = no
/// limit); returns whether pairs were dropped.
pub fn parse_args(query: &[u8], max: usize) -> (Vec<Arg>, bool) {
    let mut out = Vec::new();
    for part in query.split(|b| *b == b'&') {
        if part.is_empty() {
            continue;
        }
        if max > 0 && out.len() >= max {
            return (out, true);
        }
        let (k, v) = match part.iter().position(|b| *b == b'=') {
            Some(i) => (&part[..i], Some(unescape_uri(&part[i + 1..]))),
            None => (part, None),
        };
        if k.is_empty() {
            continue;
        }
        out.push((unescape_uri(k), v));
    }
    (out, false)
}

/// The raw (still escaped) value of argument `name` in `query`, matching the name without
/// regard to case, like nginx's `$arg_NAME`.
pub fn raw_arg<'q>(query: &'q [u8], name: &[u8]) -> Option<&'q [u8]> {
    query.split(|b| *b == b'&').find_map(|part| {
        let (k, v) = match part.iter().position(|b| *b == b'=') {
            Some(i) => (&part[..i], &part[i + 1..]),
            None => (part, &part[part.len()..]),
        };
        k.eq_ignore_ascii_case(name).then_some(v)
    })
}

/// The header name a script wrote (`ngx.header.content_type`, `ngx.req.set_header`):
/// lower-cased, `_` read as `-` when `underscores`. Scripts name the same few headers on
/// every request, so the last names converted are kept per thread: converting costs a
/// lower-casing pass, a validation and, for names `http` does not know, an allocation.
pub fn header_name(name: &[u8], underscores: bool) -> Option<http::HeaderName> {
    if name.len() > NAME_CACHE_LEN {
        return convert_header_name(name, underscores);
    }
    if let Some(hit) = NAMES.with(|c| c.borrow().get(name, underscores)) {
        return Some(hit);
    }
    let converted = convert_header_name(name, underscores)?;
    NAMES.with(|c| c.borrow_mut().put(name, underscores, converted.clone()));
    Some(converted)
}

/// Names longer than this are converted every time (and not kept).
const NAME_CACHE_LEN: usize = 64;
/// How many names are kept per thread.
const NAME_CACHE_SIZE: usize = 16;

thread_local! {
    static NAMES: std::cell::RefCell<NameCache> = const {
        std::cell::RefCell::new(NameCache { entries: Vec::new(), next: 0 })
    };
}

/// The last header names converted: as written, the `_` rule, and the name.
struct NameCache {
    entries: Vec<(Box<[u8]>, bool, http::HeaderName)>,
    /// The entry replaced next once full (oldest first).
    next: usize,
}

impl NameCache {
    fn get(&self, name: &[u8], underscores: bool) -> Option<http::HeaderName> {
        self.entries
            .iter()
            .find(|(n, u, _)| *u == underscores && **n == *name)
            .map(|(_, _, h)| h.clone())
    }

    fn put(&mut self, name: &[u8], underscores: bool, header: http::HeaderName) {
        let entry = (Box::from(name), underscores, header);
        if self.entries.len() < NAME_CACHE_SIZE {
            self.entries.push(entry);
        } else {
            self.entries[self.next] = entry;
            self.next = (self.next + 1) % NAME_CACHE_SIZE;
        }
    }
}

fn convert_header_name(name: &[u8], underscores: bool) -> Option<http::HeaderName> {
    let mut buf = [0u8; 128];
    if name.len() <= buf.len() {
        for (d, s) in buf.iter_mut().zip(name) {
            *d = if underscores && *s == b'_' {
                b'-'
            } else {
                s.to_ascii_lowercase()
            };
        }
        return http::HeaderName::from_bytes(&buf[..name.len()]).ok();
    }
    let owned: Vec<u8> = name
        .iter()
        .map(|s| {
            if underscores && *s == b'_' {
                b'-'
            } else {
                s.to_ascii_lowercase()
            }
        })
        .collect();
    http::HeaderName::from_bytes(&owned).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_like_nginx_type_2_and_type_0() {
        assert_eq!(escape_uri(b"a b/c?d=e~", false), b"a%20b%2Fc%3Fd%3De~");
        assert_eq!(escape_uri(b"/a b?x=1", true), b"/a%20b?x=1");
    }

    #[test]
    fn unescapes_percent_and_plus_and_keeps_bad_escapes() {
        assert_eq!(unescape_uri(b"b%20r56+7"), b"b r56 7");
        assert_eq!(unescape_uri(b"100%"), b"100%");
        assert_eq!(unescape_uri(b"%zz%4"), b"%zz%4");
    }

    #[test]
    fn parses_repeated_bare_and_empty_args() {
        let (args, truncated) = parse_args(b"a=1&a=2&flag&empty=&x%20y=z+w", 0);
        assert!(!truncated);
        assert_eq!(args[0], (b"a".to_vec(), Some(b"1".to_vec())));
        assert_eq!(args[2], (b"flag".to_vec(), None));
        assert_eq!(args[3], (b"empty".to_vec(), Some(Vec::new())));
        assert_eq!(args[4], (b"x y".to_vec(), Some(b"z w".to_vec())));
        assert!(parse_args(b"a=1&b=2&c=3", 2).1);
    }

    #[test]
    fn raw_args_match_names_without_case_and_stay_escaped() {
        assert_eq!(raw_arg(b"Name=a%20b&x=1", b"name"), Some(&b"a%20b"[..]));
        assert_eq!(raw_arg(b"flag&x=1", b"flag"), Some(&b""[..]));
        assert_eq!(raw_arg(b"x=1", b"y"), None);
    }

    #[test]
    fn normalizes_header_names() {
        assert_eq!(header_name(b"X_Api_Key", true).unwrap(), "x-api-key");
        assert_eq!(header_name(b"X_Api_Key", false).unwrap(), "x_api_key");
        assert!(header_name(b"bad name", true).is_none());
        // From the cache, each spelling keeps its own conversion, and once more names
        // were used than it holds, the old ones are converted again, still right.
        assert_eq!(header_name(b"X_Api_Key", true).unwrap(), "x-api-key");
        assert_eq!(header_name(b"X_Api_Key", false).unwrap(), "x_api_key");
        for i in 0..NAME_CACHE_SIZE * 2 {
            let name = format!("X_N{i}");
            assert_eq!(
                header_name(name.as_bytes(), true).unwrap(),
                format!("x-n{i}").as_str()
            );
        }
        assert_eq!(header_name(b"X_Api_Key", true).unwrap(), "x-api-key");
        let long = "x".repeat(NAME_CACHE_LEN + 1);
        assert_eq!(header_name(long.as_bytes(), true).unwrap(), long.as_str());
    }

    #[test]
    fn prints_numbers_like_lua() {
        assert_eq!(number_text(3.0), "3");
        assert_eq!(number_text(0.5), "0.5");
        assert_eq!(number_text(-2.0), "-2");
        assert_eq!(number_text(1.0 / 3.0), "0.33333333333333");
        assert_eq!(number_text(1e20), "1e+20");
        assert_eq!(number_text(123.456), "123.456");
        assert_eq!(number_text(99_999_999_999_999.0), "99999999999999");
        assert_eq!(number_text(1e14), "1e+14");
    }

    /// Found by the `lua_convert` fuzz target: `888888888888889.4` was written as
    /// `8.8888888888889e+14`, which decodes to the integer 888888888888890, which was then
    /// written as `888888888888890`: cjson's output was not stable.
    #[test]
    fn writes_a_fifteen_digit_number_alike_whether_it_has_a_fraction_or_not() {
        assert_eq!(number_text(888_888_888_888_889.4), "8.8888888888889e+14");
        assert_eq!(number_text(888_888_888_888_890.0), "8.8888888888889e+14");
        let lua = Lua::new();
        let encode = |text: &[u8]| {
            let json: serde_json::Value = serde_json::from_slice(text).unwrap();
            let value = crate::api::cjson::to_lua(&lua, json).unwrap();
            crate::api::cjson::encode_value(&lua, &value).unwrap()
        };
        let once = encode(b"[888888888888889.4,-123456789012345]");
        assert_eq!(once, b"[8.8888888888889e+14,-1.2345678901234e+14]");
        assert_eq!(encode(&once), once);
    }
}
