//! `ngx.re.match/find/gmatch/sub/gsub` and the `ngx.re` module's `split`, on the `regex`
//! crate (PCRE-like syntax without backreferences or look-around; linear time, so no
//! catastrophic backtracking). Options: `i m s x u a U` as in PCRE; `j o d D J` are
//! accepted and ignored (every regex is compiled once and cached per worker).
//! Positions are 1-based byte offsets like OpenResty; unmatched groups are `false`.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use mlua::{Function, Lua, MultiValue, Table, Value};
use regex::bytes::{Captures, Regex, RegexBuilder};

use super::super::convert;
use super::super::vm::Host;

/// Regexes kept per worker before the cache is cleared (OpenResty's
/// `lua_regex_cache_max_entries` default is 1024).
const CACHE_MAX: usize = 1024;

type Cache = Rc<RefCell<HashMap<(Vec<u8>, String), Rc<Regex>>>>;

fn compile(cache: &Cache, pattern: &[u8], opts: &str) -> Result<(Rc<Regex>, bool), String> {
    let anchored = opts.contains('a');
    if let Some(r) = cache.borrow().get(&(pattern.to_vec(), opts.to_string())) {
        return Ok((r.clone(), anchored));
    }
    let text =
        std::str::from_utf8(pattern).map_err(|_| "the regex is not valid UTF-8".to_string())?;
    let mut b = RegexBuilder::new(text);
    b.unicode(false).size_limit(4 * 1024 * 1024);
    for c in opts.chars() {
        match c {
            'i' => b.case_insensitive(true),
            'm' => b.multi_line(true),
            's' => b.dot_matches_new_line(true),
            'x' => b.ignore_whitespace(true),
            'u' => b.unicode(true),
            'U' => b.swap_greed(true),
            'a' | 'j' | 'o' | 'd' | 'D' | 'J' => &mut b,
            other => return Err(format!("unknown flag \"{other}\" (flags=\"{opts}\")")),
        };
    }
    let re = Rc::new(
        b.build()
            .map_err(|e| format!("failed to compile regex \"{text}\": {e}"))?,
    );
    let mut c = cache.borrow_mut();
    if c.len() >= CACHE_MAX {
        c.clear();
    }
    c.insert((pattern.to_vec(), opts.to_string()), re.clone());
    Ok((re, anchored))
}

fn opts_of(v: &Option<Value>) -> String {
    v.as_ref()
        .and_then(convert::as_bytes)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

/// Start offset (0-based) from `ctx.pos`.
fn start_of(ctx: &Option<Table>) -> mlua::Result<usize> {
    Ok(match ctx {
        Some(t) => t
            .raw_get::<Option<i64>>("pos")?
            .map_or(0, |p| usize::try_from(p - 1).unwrap_or(0)),
        None => 0,
    })
}

fn search<'s>(re: &Regex, subject: &'s [u8], start: usize, anchored: bool) -> Option<Captures<'s>> {
    if start > subject.len() {
        return None;
    }
    let caps = re.captures_at(subject, start)?;
    let m = caps.get(0)?;
    (!anchored || m.start() == start).then_some(caps)
}

fn captures_table(
    lua: &Lua,
    re: &Regex,
    caps: &Captures<'_>,
    reuse: Option<Table>,
) -> mlua::Result<Table> {
    let t = match reuse {
        Some(t) => {
            t.clear()?;
            t
        }
        None => lua.create_table_with_capacity(caps.len(), 0)?,
    };
    for (i, m) in caps.iter().enumerate() {
        let v = match m {
            Some(m) => Value::String(lua.create_string(m.as_bytes())?),
            None => Value::Boolean(false),
        };
        t.raw_set(i, v)?;
    }
    for (i, name) in re.capture_names().enumerate() {
        if let Some(name) = name {
            let v = match caps.get(i) {
                Some(m) => Value::String(lua.create_string(m.as_bytes())?),
                None => Value::Boolean(false),
            };
            t.raw_set(name, v)?;
        }
    }
    Ok(t)
}

fn nil_err(lua: &Lua, e: String) -> mlua::Result<MultiValue> {
    Ok([Value::Nil, Value::String(lua.create_string(e)?)]
        .into_iter()
        .collect())
}

/// A compiled replacement template: literal bytes and group references.
enum Piece {
    Lit(Vec<u8>),
    Group(usize),
    Named(String),
}

fn template(t: &[u8]) -> Result<Vec<Piece>, String> {
    let mut out = Vec::new();
    let mut lit = Vec::new();
    let mut i = 0;
    while i < t.len() {
        if t[i] != b'$' {
            lit.push(t[i]);
            i += 1;
            continue;
        }
        let rest = &t[i + 1..];
        let (piece, used) = if rest.first() == Some(&b'$') {
            lit.push(b'$');
            i += 2;
            continue;
        } else if rest.first() == Some(&b'{') {
            let end = rest
                .iter()
                .position(|b| *b == b'}')
                .ok_or("unmatched \"{\" in the replacement template")?;
            let name = String::from_utf8_lossy(&rest[1..end]).into_owned();
            let piece = match name.parse::<usize>() {
                Ok(n) => Piece::Group(n),
                Err(_) if !name.is_empty() => Piece::Named(name),
                Err(_) => return Err("empty \"${}\" in the replacement template".into()),
            };
            (piece, end + 2)
        } else {
            let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
            if digits == 0 {
                return Err("invalid capturing variable name in the replacement template".into());
            }
            let n = String::from_utf8_lossy(&rest[..digits])
                .parse()
                .unwrap_or(0);
            (Piece::Group(n), digits + 1)
        };
        if !lit.is_empty() {
            out.push(Piece::Lit(std::mem::take(&mut lit)));
        }
        out.push(piece);
        i += used;
    }
    if !lit.is_empty() {
        out.push(Piece::Lit(lit));
    }
    Ok(out)
}

fn expand(pieces: &[Piece], caps: &Captures<'_>, out: &mut Vec<u8>) {
    for p in pieces {
        match p {
            Piece::Lit(l) => out.extend_from_slice(l),
            Piece::Group(n) => {
                out.extend_from_slice(caps.get(*n).map_or(&b""[..], |m| m.as_bytes()))
            }
            Piece::Named(n) => {
                out.extend_from_slice(caps.name(n).map_or(&b""[..], |m| m.as_bytes()))
            }
        }
    }
}

/// `sub` (`all` = false) and `gsub`.
fn substitute(
    lua: &Lua,
    cache: &Cache,
    args: (mlua::LuaString, mlua::LuaString, Value, Option<Value>),
    all: bool,
) -> mlua::Result<MultiValue> {
    let (subject, pattern, replace, opts) = args;
    let (re, anchored) = match compile(cache, &pattern.as_bytes(), &opts_of(&opts)) {
        Ok(r) => r,
        Err(e) => {
            return Ok(
                [Value::Nil, Value::Nil, Value::String(lua.create_string(e)?)]
                    .into_iter()
                    .collect(),
            )
        }
    };
    let pieces = match &replace {
        Value::Function(_) => None,
        other => {
            let t = convert::as_bytes(other).ok_or_else(|| {
                convert::error(lua, "the replacement must be a string or a function")
            })?;
            match template(&t) {
                Ok(p) => Some(p),
                Err(e) => {
                    return Ok(
                        [Value::Nil, Value::Nil, Value::String(lua.create_string(e)?)]
                            .into_iter()
                            .collect(),
                    )
                }
            }
        }
    };
    let subject = subject.as_bytes().to_vec();
    let mut out = Vec::with_capacity(subject.len());
    let (mut pos, mut last, mut count) = (0usize, 0usize, 0i64);
    while let Some(caps) = search(&re, &subject, pos, anchored) {
        let Some(m) = caps.get(0) else { break };
        out.extend_from_slice(&subject[last..m.start()]);
        match (&pieces, &replace) {
            (Some(p), _) => expand(p, &caps, &mut out),
            (None, Value::Function(f)) => {
                let t = captures_table(lua, &re, &caps, None)?;
                let r: Value = f.call(t)?;
                out.extend(convert::as_bytes(&r).unwrap_or_default());
            }
            _ => {}
        }
        count += 1;
        last = m.end();
        pos = if m.end() == m.start() {
            m.end() + 1
        } else {
            m.end()
        };
        if m.end() == m.start() && m.end() < subject.len() {
            out.push(subject[m.end()]);
            last = m.end() + 1;
        }
        if !all || anchored || pos > subject.len() {
            break;
        }
    }
    if last < subject.len() {
        out.extend_from_slice(&subject[last..]);
    }
    Ok([
        Value::String(lua.create_string(out)?),
        Value::Integer(count),
    ]
    .into_iter()
    .collect())
}

/// Registers `ngx.re`; returns the `ngx.re` module (`split`, `opt`).
pub fn register(lua: &Lua, _host: &Rc<Host>, ngx: &Table) -> mlua::Result<Table> {
    let cache: Cache = Rc::default();
    let re_t = lua.create_table()?;

    let c = cache.clone();
    re_t.raw_set(
        "match",
        lua.create_function(
            move |lua,
                  (subject, pattern, opts, ctx, res): (
                mlua::LuaString,
                mlua::LuaString,
                Option<Value>,
                Option<Table>,
                Option<Table>,
            )| {
                let (re, anchored) = match compile(&c, &pattern.as_bytes(), &opts_of(&opts)) {
                    Ok(r) => r,
                    Err(e) => return nil_err(lua, e),
                };
                let subject = subject.as_bytes();
                let Some(caps) = search(&re, &subject, start_of(&ctx)?, anchored) else {
                    return Ok(MultiValue::from_iter([Value::Nil]));
                };
                if let (Some(ctx), Some(m)) = (&ctx, caps.get(0)) {
                    ctx.raw_set("pos", m.end() + 1)?;
                }
                Ok(MultiValue::from_iter([Value::Table(captures_table(
                    lua, &re, &caps, res,
                )?)]))
            },
        )?,
    )?;

    let c = cache.clone();
    re_t.raw_set(
        "find",
        lua.create_function(
            move |lua,
                  (subject, pattern, opts, ctx, nth): (
                mlua::LuaString,
                mlua::LuaString,
                Option<Value>,
                Option<Table>,
                Option<usize>,
            )| {
                let (re, anchored) = match compile(&c, &pattern.as_bytes(), &opts_of(&opts)) {
                    Ok(r) => r,
                    Err(e) => return nil_err(lua, e),
                };
                let subject = subject.as_bytes();
                let Some(caps) = search(&re, &subject, start_of(&ctx)?, anchored) else {
                    return Ok(MultiValue::from_iter([Value::Nil]));
                };
                if let (Some(ctx), Some(m)) = (&ctx, caps.get(0)) {
                    ctx.raw_set("pos", m.end() + 1)?;
                }
                match caps.get(nth.unwrap_or(0)) {
                    Some(m) => Ok(MultiValue::from_iter([
                        Value::Integer(m.start() as i64 + 1),
                        Value::Integer(m.end() as i64),
                    ])),
                    None => Ok(MultiValue::from_iter([Value::Nil])),
                }
            },
        )?,
    )?;

    let c = cache.clone();
    re_t.raw_set(
        "gmatch",
        lua.create_function(move |lua, (subject, pattern, opts): (mlua::LuaString, mlua::LuaString, Option<Value>)| {
            let (re, anchored) = match compile(&c, &pattern.as_bytes(), &opts_of(&opts)) {
                Ok(r) => r,
                Err(e) => return nil_err(lua, e),
            };
            let subject = subject.as_bytes().to_vec();
            let pos = std::cell::Cell::new(Some(0usize));
            let iter: Function = lua.create_function(move |lua, ()| {
                let Some(start) = pos.get() else { return Ok(Value::Nil) };
                let Some(caps) = search(&re, &subject, start, anchored) else {
                    pos.set(None);
                    return Ok(Value::Nil);
                };
                let Some(m) = caps.get(0) else { return Ok(Value::Nil) };
                let next = if m.end() == m.start() { m.end() + 1 } else { m.end() };
                pos.set((next <= subject.len() && !anchored).then_some(next));
                Ok(Value::Table(captures_table(lua, &re, &caps, None)?))
            })?;
            Ok(MultiValue::from_iter([Value::Function(iter)]))
        })?,
    )?;

    let c = cache.clone();
    re_t.raw_set(
        "sub",
        lua.create_function(move |lua, args| substitute(lua, &c, args, false))?,
    )?;
    let c = cache.clone();
    re_t.raw_set(
        "gsub",
        lua.create_function(move |lua, args| substitute(lua, &c, args, true))?,
    )?;
    ngx.raw_set("re", re_t.clone())?;

    let module = lua.create_table()?;
    let c = cache;
    module.raw_set(
        "split",
        lua.create_function(
            move |lua,
                  (subject, pattern, opts, _ctx, max, res): (
                mlua::LuaString,
                mlua::LuaString,
                Option<Value>,
                Option<Table>,
                Option<usize>,
                Option<Table>,
            )| {
                let (re, _) = match compile(&c, &pattern.as_bytes(), &opts_of(&opts)) {
                    Ok(r) => r,
                    Err(e) => return nil_err(lua, e),
                };
                let subject = subject.as_bytes();
                let out = match res {
                    Some(t) => {
                        t.clear()?;
                        t
                    }
                    None => lua.create_table()?,
                };
                let max = max.unwrap_or(0);
                let mut last = 0;
                let mut n = 0;
                for m in re.find_iter(&subject) {
                    if max > 0 && n + 1 >= max {
                        break;
                    }
                    if m.start() == m.end() && m.start() == 0 {
                        continue;
                    }
                    out.raw_push(lua.create_string(&subject[last..m.start()])?)?;
                    n += 1;
                    last = m.end();
                }
                out.raw_push(lua.create_string(&subject[last..])?)?;
                Ok(MultiValue::from_iter([Value::Table(out)]))
            },
        )?,
    )?;
    module.raw_set("opt", lua.create_function(|_, _: MultiValue| Ok(()))?)?;
    for name in ["match", "find", "gmatch", "sub", "gsub"] {
        module.raw_set(name, re_t.raw_get::<Value>(name)?)?;
    }
    Ok(module)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_replacement_templates() {
        let p = template(b"<$1|${2}|$$|${name}>").unwrap();
        assert_eq!(p.len(), 7);
        assert!(template(b"$x").is_err());
        assert!(template(b"${1").is_err());
    }
}
