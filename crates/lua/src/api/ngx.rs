//! The core of the `ngx` table: constants, `ngx.log`, time, `ngx.ctx`, `ngx.sleep`,
//! `ngx.get_phase`, `ngx.worker`, `ngx.config`, URI escaping and query-string encoding.

use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use mlua::{Lua, Table, Value};

use super::super::convert;
use super::super::state::CtxKey;
use super::super::vm::Host;
use super::super::Kinds;

/// HTTP status constants (`ngx.HTTP_*`).
const STATUSES: &[(&str, i64)] = &[
    ("HTTP_CONTINUE", 100),
    ("HTTP_SWITCHING_PROTOCOLS", 101),
    ("HTTP_OK", 200),
    ("HTTP_CREATED", 201),
    ("HTTP_ACCEPTED", 202),
    ("HTTP_NO_CONTENT", 204),
    ("HTTP_PARTIAL_CONTENT", 206),
    ("HTTP_SPECIAL_RESPONSE", 300),
    ("HTTP_MOVED_PERMANENTLY", 301),
    ("HTTP_MOVED_TEMPORARILY", 302),
    ("HTTP_SEE_OTHER", 303),
    ("HTTP_NOT_MODIFIED", 304),
    ("HTTP_TEMPORARY_REDIRECT", 307),
    ("HTTP_PERMANENT_REDIRECT", 308),
    ("HTTP_BAD_REQUEST", 400),
    ("HTTP_UNAUTHORIZED", 401),
    ("HTTP_PAYMENT_REQUIRED", 402),
    ("HTTP_FORBIDDEN", 403),
    ("HTTP_NOT_FOUND", 404),
    ("HTTP_NOT_ALLOWED", 405),
    ("HTTP_NOT_ACCEPTABLE", 406),
    ("HTTP_REQUEST_TIMEOUT", 408),
    ("HTTP_CONFLICT", 409),
    ("HTTP_GONE", 410),
    ("HTTP_UPGRADE_REQUIRED", 426),
    ("HTTP_TOO_MANY_REQUESTS", 429),
    ("HTTP_CLOSE", 444),
    ("HTTP_ILLEGAL", 451),
    ("HTTP_INTERNAL_SERVER_ERROR", 500),
    ("HTTP_METHOD_NOT_IMPLEMENTED", 501),
    ("HTTP_BAD_GATEWAY", 502),
    ("HTTP_SERVICE_UNAVAILABLE", 503),
    ("HTTP_GATEWAY_TIMEOUT", 504),
    ("HTTP_VERSION_NOT_SUPPORTED", 505),
    ("HTTP_INSUFFICIENT_STORAGE", 507),
];

/// Log levels (`ngx.ERR`...), nginx's numbering.
const LEVELS: &[(&str, i64)] = &[
    ("STDERR", 0),
    ("EMERG", 1),
    ("ALERT", 2),
    ("CRIT", 3),
    ("ERR", 4),
    ("WARN", 5),
    ("NOTICE", 6),
    ("INFO", 7),
    ("DEBUG", 8),
];

const METHODS: &[&str] = &[
    "GET",
    "HEAD",
    "PUT",
    "POST",
    "DELETE",
    "OPTIONS",
    "MKCOL",
    "COPY",
    "MOVE",
    "PROPFIND",
    "PROPPATCH",
    "LOCK",
    "UNLOCK",
    "PATCH",
    "TRACE",
];

fn level_name(level: i64) -> &'static str {
    match level {
        0 => "stderr",
        1 => "emerg",
        2 => "alert",
        3 => "crit",
        4 => "error",
        5 => "warn",
        6 => "notice",
        7 => "info",
        _ => "debug",
    }
}

/// Writes one script log line (to tracing, or to the spec capture) with script, line and
/// request id.
pub fn write_log(lua: &Lua, host: &Host, level: i64, message: &str) {
    let at = convert::location(lua);
    let script = host.script_name();
    if let Some(lines) = host.captured_logs.borrow_mut().as_mut() {
        lines.push(format!("[{}] {at}{message}", level_name(level)));
        return;
    }
    if host.plain_logs.get() {
        eprintln!("[{}] {at}{message}", level_name(level));
        return;
    }
    let request_id = host
        .cur
        .try_borrow()
        .ok()
        .and_then(|c| {
            c.as_ref()
                .map(|s| s.info.request_id.to_str().unwrap_or("-").to_string())
        })
        .unwrap_or_default();
    let at = at.trim_end_matches([':', ' ']);
    match level {
        0..=4 => tracing::error!(script = %script, at, request_id, "{message}"),
        5 => tracing::warn!(script = %script, at, request_id, "{message}"),
        6 | 7 => tracing::info!(script = %script, at, request_id, "{message}"),
        _ => tracing::debug!(script = %script, at, request_id, "{message}"),
    }
}

fn now() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}

/// `(year, month, day, hour, minute, second)` of a Unix time (UTC).
pub fn civil(secs: i64) -> (i64, i64, i64, i64, i64, i64) {
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day, rem / 3600, rem % 3600 / 60, rem % 60)
}

fn cookie_time(secs: i64) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let (y, mo, d, h, mi, s) = civil(secs);
    let wd = DAYS[secs.div_euclid(86_400).rem_euclid(7) as usize];
    let month = MONTHS[(mo - 1).clamp(0, 11) as usize];
    // nginx writes two-digit years up to 2037 (old Netscape cookie parsers).
    let year = if y > 2037 { y } else { y % 100 };
    format!("{wd}, {d:02}-{month}-{year:02} {h:02}:{mi:02}:{s:02} GMT")
}

fn set_fn<F, A, R>(lua: &Lua, t: &Table, name: &str, f: F) -> mlua::Result<()>
where
    F: Fn(&Lua, A) -> mlua::Result<R> + 'static,
    A: mlua::FromLuaMulti,
    R: mlua::IntoLuaMulti,
{
    t.raw_set(name, lua.create_function(f)?)
}

/// `ngx.ctx` of the running call (created on first use).
pub fn get_ctx(lua: &Lua, host: &Host) -> mlua::Result<Table> {
    host.check(lua, "ngx.ctx", Kinds::REQUEST_OR_TIMER)?;
    let existing = host.cur.borrow().as_ref().and_then(|s| s.ctx_key.clone());
    if let Some(k) = existing {
        return lua.registry_value(&k.0);
    }
    let t = lua.create_table()?;
    set_ctx(lua, host, t.clone())?;
    Ok(t)
}

fn set_ctx(lua: &Lua, host: &Host, t: Table) -> mlua::Result<()> {
    let key = CtxKey(Arc::new(lua.create_registry_value(t)?));
    if let Some(s) = host.cur.borrow_mut().as_mut() {
        s.ctx_key = Some(key);
        s.ctx_created = true;
    }
    Ok(())
}

/// Registers the core of `ngx` (and its metatable for `ngx.ctx`, `ngx.status`...).
pub fn register(lua: &Lua, host: &Rc<Host>, ngx: &Table) -> mlua::Result<()> {
    for (name, code) in STATUSES {
        ngx.raw_set(*name, *code)?;
    }
    for (name, level) in LEVELS {
        ngx.raw_set(*name, *level)?;
    }
    for m in METHODS {
        ngx.raw_set(format!("HTTP_{m}"), *m)?;
    }
    for (name, code) in [
        ("OK", 0),
        ("ERROR", -1),
        ("AGAIN", -2),
        ("DONE", -4),
        ("DECLINED", -5),
    ] {
        ngx.raw_set(name, code)?;
    }

    let h = host.clone();
    set_fn(lua, ngx, "log", move |lua, args: mlua::Variadic<Value>| {
        let level = match args.first() {
            Some(Value::Integer(l)) => *l,
            Some(Value::Number(l)) => *l as i64,
            _ => {
                return Err(convert::error(
                    lua,
                    "ngx.log: the first argument must be a log level such as ngx.ERR",
                ))
            }
        };
        let mut msg = String::new();
        for v in args.iter().skip(1) {
            match v {
                Value::Table(t)
                    if t.metatable()
                        .is_some_and(|m| m.contains_key("__tostring").unwrap_or(false)) =>
                {
                    let s: mlua::LuaString = lua
                        .globals()
                        .get::<mlua::Function>("tostring")?
                        .call(t.clone())?;
                    msg.push_str(&s.to_string_lossy());
                }
                Value::Table(_) | Value::Function(_) | Value::Thread(_) | Value::UserData(_) => {
                    return Err(convert::error(
                        lua,
                        format!("ngx.log: bad argument: {} cannot be logged", v.type_name()),
                    ))
                }
                other => msg.push_str(&convert::display(other)),
            }
        }
        write_log(lua, &h, level, &msg);
        Ok(())
    })?;

    set_fn(lua, ngx, "time", |_, ()| Ok(now().as_secs() as i64))?;
    set_fn(lua, ngx, "now", |_, ()| {
        Ok((now().as_millis() as f64) / 1000.0)
    })?;
    set_fn(lua, ngx, "update_time", |_, ()| Ok(()))?;
    set_fn(lua, ngx, "today", |_, ()| {
        let (y, m, d, ..) = civil(now().as_secs() as i64);
        Ok(format!("{y:04}-{m:02}-{d:02}"))
    })?;
    for name in ["localtime", "utctime"] {
        set_fn(lua, ngx, name, |_, ()| {
            let (y, m, d, h, mi, s) = civil(now().as_secs() as i64);
            Ok(format!("{y:04}-{m:02}-{d:02} {h:02}:{mi:02}:{s:02}"))
        })?;
    }
    set_fn(lua, ngx, "http_time", |_, secs: f64| {
        Ok(httpdate::fmt_http_date(
            UNIX_EPOCH + Duration::from_secs(secs.max(0.0) as u64),
        ))
    })?;
    set_fn(lua, ngx, "cookie_time", |_, secs: f64| {
        Ok(cookie_time(secs as i64))
    })?;
    set_fn(lua, ngx, "parse_http_time", |_, s: String| {
        Ok(httpdate::parse_http_date(&s)
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map(|d| d.as_secs() as i64))
    })?;

    set_fn(
        lua,
        ngx,
        "escape_uri",
        |lua, (s, kind): (Value, Option<i64>)| {
            let b = convert::as_bytes(&s).unwrap_or_default();
            lua.create_string(convert::escape_uri(&b, kind == Some(0)))
        },
    )?;
    set_fn(lua, ngx, "unescape_uri", |lua, s: Value| {
        let b = convert::as_bytes(&s).unwrap_or_default();
        lua.create_string(convert::unescape_uri(&b))
    })?;
    set_fn(lua, ngx, "encode_args", |lua, t: Table| {
        lua.create_string(encode_args(lua, &t)?)
    })?;
    set_fn(
        lua,
        ngx,
        "decode_args",
        |lua, (s, max): (mlua::LuaString, Option<usize>)| {
            let (args, _) = convert::parse_args(&s.as_bytes(), max.unwrap_or(100));
            args_table(lua, args)
        },
    )?;
    set_fn(lua, ngx, "quote_sql_str", |lua, s: mlua::LuaString| {
        let mut out = vec![b'\''];
        for &b in s.as_bytes().iter() {
            match b {
                b'\'' => out.extend_from_slice(b"\\'"),
                b'\\' => out.extend_from_slice(b"\\\\"),
                b'"' => out.extend_from_slice(b"\\\""),
                b'\n' => out.extend_from_slice(b"\\n"),
                b'\r' => out.extend_from_slice(b"\\r"),
                b'\t' => out.extend_from_slice(b"\\t"),
                0 => out.extend_from_slice(b"\\0"),
                26 => out.extend_from_slice(b"\\Z"),
                _ => out.push(b),
            }
        }
        out.push(b'\'');
        lua.create_string(out)
    })?;

    let h = host.clone();
    set_fn(lua, ngx, "get_phase", move |_, ()| Ok(h.kind.get().name()))?;

    let h = host.clone();
    ngx.raw_set(
        "sleep",
        lua.create_async_function(move |lua, secs: f64| {
            let check = h
                .check(&lua, "ngx.sleep", Kinds::WAIT)
                .and_then(|_| h.check_async(&lua, "ngx.sleep"))
                .and_then(|_| {
                    if secs.is_finite() && secs >= 0.0 {
                        Ok(())
                    } else {
                        Err(convert::error(
                            &lua,
                            "ngx.sleep: the delay must be a non-negative number",
                        ))
                    }
                });
            async move {
                check?;
                if secs == 0.0 {
                    tokio::task::yield_now().await;
                } else {
                    tokio::time::sleep(Duration::from_secs_f64(secs)).await;
                }
                Ok(())
            }
        })?,
    )?;

    let worker = lua.create_table()?;
    let (id, count) = (host.rt.worker_id, host.rt.worker_count);
    set_fn(lua, &worker, "id", move |_, ()| Ok(id))?;
    set_fn(lua, &worker, "count", move |_, ()| Ok(count))?;
    set_fn(lua, &worker, "pid", |_, ()| Ok(std::process::id()))?;
    set_fn(lua, &worker, "exiting", |_, ()| Ok(false))?;
    ngx.raw_set("worker", worker)?;
    let config = lua.create_table()?;
    config.raw_set("subsystem", "http")?;
    config.raw_set("debug", false)?;
    config.raw_set("prefix", "")?;
    config.raw_set("nginx_version", 1_025_003)?;
    config.raw_set("ngx_lua_version", 10_026)?;
    config.raw_set("sluicegate_version", env!("CARGO_PKG_VERSION"))?;
    ngx.raw_set("config", config)?;
    for unsupported in ["location", "thread", "on_abort"] {
        let name = format!("ngx.{unsupported}");
        let f = lua.create_function(move |lua, _: mlua::MultiValue| -> mlua::Result<()> {
            Err(convert::error(
                lua,
                format!("{name} is not supported by sluicegate (see docs/lua-api.md)"),
            ))
        })?;
        if unsupported == "on_abort" {
            ngx.raw_set(unsupported, f)?;
        } else {
            let t = lua.create_table()?;
            let meta = lua.create_table()?;
            meta.raw_set("__index", f)?;
            t.set_metatable(Some(meta))?;
            ngx.raw_set(unsupported, t)?;
        }
    }
    ngx.set_metatable(Some(metatable(lua, host)?))?;
    Ok(())
}

/// The metatable of `ngx`: dynamic fields `ctx`, `status`, `headers_sent`, `is_subrequest`.
fn metatable(lua: &Lua, host: &Rc<Host>) -> mlua::Result<Table> {
    let meta = lua.create_table()?;
    let h = host.clone();
    meta.raw_set(
        "__index",
        lua.create_function(
            move |lua, (_, key): (bool, mlua::LuaString)| -> mlua::Result<Value> {
                match &*key.as_bytes() {
                    b"ctx" => get_ctx(lua, &h).map(Value::Table),
                    b"status" => super::resp::get_status(lua, &h),
                    b"headers_sent" => h.with_req(lua, "ngx.headers_sent", Kinds::REQUEST, |s| {
                        Ok(Value::Boolean(s.out.sent))
                    }),
                    b"is_subrequest" => Ok(Value::Boolean(false)),
                    _ => Ok(Value::Nil),
                }
            },
        )?,
    )?;
    let h = host.clone();
    meta.raw_set(
        "__newindex",
        lua.create_function(
            move |lua, (_, key, value): (bool, mlua::LuaString, Value)| match &*key.as_bytes() {
                b"ctx" => match value {
                    Value::Table(t) => {
                        h.check(lua, "ngx.ctx", Kinds::REQUEST_OR_TIMER)?;
                        set_ctx(lua, &h, t)
                    }
                    _ => Err(convert::error(lua, "ngx.ctx must be set to a table")),
                },
                b"status" => super::resp::set_status(lua, &h, value),
                other => Err(convert::error(
                    lua,
                    format!(
                        "ngx.{} cannot be assigned (the ngx table is read-only)",
                        String::from_utf8_lossy(other)
                    ),
                )),
            },
        )?,
    )?;
    Ok(meta)
}

/// `ngx.encode_args`: keys in sorted order (for determinism), values escaped, `true` as a
/// bare key, `false` dropped, arrays repeated.
pub fn encode_args(lua: &Lua, t: &Table) -> mlua::Result<Vec<u8>> {
    let mut pairs: Vec<(Vec<u8>, Value)> = Vec::new();
    for kv in t.pairs::<Value, Value>() {
        let (k, v) = kv?;
        let key = convert::as_bytes(&k).ok_or_else(|| {
            convert::error(lua, "ngx.encode_args: keys must be strings or numbers")
        })?;
        pairs.push((key, v));
    }
    pairs.sort_by(|a, b| a.0.cmp(&b.0));
    let mut out = Vec::new();
    let push = |out: &mut Vec<u8>, k: &[u8], v: Option<&[u8]>| {
        if !out.is_empty() {
            out.push(b'&');
        }
        out.extend(convert::escape_uri(k, false));
        if let Some(v) = v {
            out.push(b'=');
            out.extend(convert::escape_uri(v, false));
        }
    };
    for (k, v) in pairs {
        match v {
            Value::Boolean(true) => push(&mut out, &k, None),
            Value::Boolean(false) => {}
            Value::Table(items) => {
                for item in items.sequence_values::<Value>() {
                    match item? {
                        Value::Boolean(true) => push(&mut out, &k, None),
                        Value::Boolean(false) => {}
                        x => {
                            let b = convert::as_bytes(&x).ok_or_else(|| {
                                convert::error(lua, "ngx.encode_args: bad argument value")
                            })?;
                            push(&mut out, &k, Some(&b));
                        }
                    }
                }
            }
            x => {
                let b = convert::as_bytes(&x)
                    .ok_or_else(|| convert::error(lua, "ngx.encode_args: bad argument value"))?;
                push(&mut out, &k, Some(&b));
            }
        }
    }
    Ok(out)
}

/// Builds the table `ngx.decode_args` / `get_uri_args` return: repeated keys become arrays,
/// bare keys `true`.
pub fn args_table(lua: &Lua, args: Vec<convert::Arg>) -> mlua::Result<Table> {
    let t = lua.create_table()?;
    for (k, v) in args {
        let key = lua.create_string(&k)?;
        let value = match v {
            Some(v) => Value::String(lua.create_string(&v)?),
            None => Value::Boolean(true),
        };
        match t.raw_get::<Value>(&key)? {
            Value::Nil => t.raw_set(key, value)?,
            Value::Table(list) => list.raw_push(value)?,
            first => {
                let list = lua.create_sequence_from([first, value])?;
                t.raw_set(key, list)?;
            }
        }
    }
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_cookie_times_like_nginx() {
        assert_eq!(cookie_time(1_290_079_655), "Thu, 18-Nov-10 11:27:35 GMT");
    }
}
