//! The response side of `ngx`: `ngx.header`, `ngx.status`, `ngx.say`/`ngx.print`/`ngx.flush`/
//! `ngx.eof`, `ngx.exit`, `ngx.redirect`, and `ngx.arg` in body filters.
//!
//! Output is buffered (the response leaves when the phase ends), but the OpenResty rules
//! are kept: the first `ngx.say` "sends" the headers, after which `ngx.status` and
//! `ngx.header` writes are ignored with an error log and `ngx.redirect` fails.

use std::rc::Rc;

use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use mlua::{Lua, Table, Value};

use super::super::convert;
use super::super::state::ReqState;
use super::super::vm::Host;
use super::super::{Kind, Kinds};
use super::req::{checked_header_name, set_header_text, set_named_header};

/// Where `ngx.exit` may be called.
const EXIT: Kinds = Kinds::of(&[
    Kind::Rewrite,
    Kind::Access,
    Kind::Content,
    Kind::HeaderFilter,
    Kind::Timer,
]);
/// Where `ngx.header` may be written.
const HEADER_WRITE: Kinds = Kinds::of(&[
    Kind::Rewrite,
    Kind::Access,
    Kind::Content,
    Kind::HeaderFilter,
]);

fn log_ignored(lua: &Lua, host: &Host, what: &str) {
    super::ngx::write_log(
        lua,
        host,
        4,
        &format!("attempt to set {what} after sending out response headers"),
    );
}

/// The response headers a write goes to: its own output in output phases, the real
/// response in filter phases (whose raw upstream lines of the written name the caller
/// drops first: the write replaces them).
fn headers(s: &mut ReqState) -> &mut HeaderMap {
    if Kinds::OUTPUT.has(s.kind) {
        &mut s.out.headers
    } else {
        &mut s.resp.headers
    }
}

fn header_get(lua: &Lua, s: &mut ReqState, name: &[u8]) -> mlua::Result<Value> {
    let Some(name) = convert::header_name(name, true) else {
        return Ok(Value::Nil);
    };
    let map = if Kinds::OUTPUT.has(s.kind) {
        &mut s.out.headers
    } else {
        s.response_headers().map_err(|e| convert::error(lua, e))?
    };
    let all = map.get_all(&name);
    let mut values = all.iter();
    let Some(first) = values.next() else {
        return Ok(Value::Nil);
    };
    let rest: Vec<_> = values.collect();
    if rest.is_empty() {
        return lua.create_string(first.as_bytes()).map(Value::String);
    }
    let t = lua.create_table()?;
    t.raw_push(lua.create_string(first.as_bytes())?)?;
    for v in rest {
        t.raw_push(lua.create_string(v.as_bytes())?)?;
    }
    Ok(Value::Table(t))
}

/// `ngx.status` read.
pub fn get_status(lua: &Lua, host: &Host) -> mlua::Result<Value> {
    host.with_req(lua, "ngx.status", Kinds::REQUEST, |s| {
        let code = match s.kind {
            Kind::Rewrite | Kind::Access | Kind::Content => s.out.status.map_or(0, |c| c.as_u16()),
            Kind::Log if s.info.status != 0 => s.info.status,
            _ => s.resp.status.as_u16(),
        };
        Ok(Value::Integer(i64::from(code)))
    })
}

/// `ngx.status = code`.
pub fn set_status(lua: &Lua, host: &Host, value: Value) -> mlua::Result<()> {
    let code = match value {
        Value::Integer(i) => i,
        Value::Number(n) => n as i64,
        Value::String(ref s) => s
            .to_str()
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0),
        _ => 0,
    };
    let status = u16::try_from(code)
        .ok()
        .filter(|c| (100..=999).contains(c))
        .and_then(|c| StatusCode::from_u16(c).ok())
        .ok_or_else(|| convert::error(lua, format!("ngx.status: invalid status {code}")))?;
    let ignored = host.with_req(lua, "ngx.status", Kinds::REQUEST, |s| {
        Ok(match s.kind {
            Kind::Rewrite | Kind::Access | Kind::Content if !s.out.sent => {
                s.out.status = Some(status);
                false
            }
            Kind::HeaderFilter => {
                s.resp.status = status;
                false
            }
            _ => true,
        })
    })?;
    if ignored {
        log_ignored(lua, host, "ngx.status");
    }
    Ok(())
}

fn output(
    lua: &Lua,
    host: &Host,
    name: &str,
    args: &mlua::Variadic<Value>,
    newline: bool,
) -> mlua::Result<mlua::MultiValue> {
    let mut buf = Vec::new();
    for a in args.iter() {
        convert::append_printable(lua, &mut buf, a, 0)?;
    }
    if newline {
        buf.push(b'\n');
    }
    let ok = host.with_req(lua, name, Kinds::OUTPUT, |s| {
        if s.out.eof {
            return Ok(false);
        }
        s.out.sent = true;
        s.out.body.extend_from_slice(&buf);
        Ok(true)
    })?;
    let mut out = mlua::MultiValue::new();
    if ok {
        out.push_back(Value::Integer(1));
    } else {
        out.push_back(Value::Nil);
        out.push_back(Value::String(lua.create_string("seen eof")?));
    }
    Ok(out)
}

/// Registers the response functions on `ngx`.
pub fn register(lua: &Lua, host: &Rc<Host>, ngx: &Table) -> mlua::Result<()> {
    let header_meta = lua.create_table()?;
    let h = host.clone();
    header_meta.raw_set(
        "__index",
        // As `ngx.var`: no registry references for the table and the name.
        lua.create_function(move |lua, (_, name): (bool, mlua::BString)| {
            h.with_req(lua, "ngx.header", Kinds::REQUEST, |s| {
                header_get(lua, s, &name)
            })
        })?,
    )?;
    let h = host.clone();
    header_meta.raw_set(
        "__newindex",
        lua.create_function(
            // A string (or number) value is read as bytes, with no registry reference;
            // anything else (nil, a table of values) as a value.
            move |lua,
                  (_, name, value): (bool, mlua::BString, mlua::Either<mlua::BString, Value>)| {
                let ignored = h.with_req(lua, "ngx.header (assignment)", HEADER_WRITE, |s| {
                    if Kinds::OUTPUT.has(s.kind) && s.out.sent {
                        return Ok(true);
                    }
                    let n = checked_header_name(lua, &name, true)?;
                    if Kinds::OUTPUT.has(s.kind) {
                        s.out.headers_set = true;
                    } else {
                        s.replace_raw(&n);
                    }
                    match &value {
                        mlua::Either::Left(text) => set_header_text(lua, headers(s), n, text)?,
                        mlua::Either::Right(v) => set_named_header(lua, headers(s), n, v)?,
                    }
                    Ok(false)
                })?;
                if ignored {
                    log_ignored(
                        lua,
                        &h,
                        &format!("ngx.header.{}", String::from_utf8_lossy(&name)),
                    );
                }
                Ok(())
            },
        )?,
    )?;
    let header = lua.create_table()?;
    header.set_metatable(Some(header_meta))?;
    ngx.raw_set("header", header)?;

    let h = host.clone();
    ngx.raw_set(
        "say",
        lua.create_function(move |lua, args: mlua::Variadic<Value>| {
            output(lua, &h, "ngx.say", &args, true)
        })?,
    )?;
    let h = host.clone();
    ngx.raw_set(
        "print",
        lua.create_function(move |lua, args: mlua::Variadic<Value>| {
            output(lua, &h, "ngx.print", &args, false)
        })?,
    )?;
    let h = host.clone();
    ngx.raw_set(
        "flush",
        lua.create_function(move |lua, _: Option<bool>| {
            h.with_req(lua, "ngx.flush", Kinds::OUTPUT, |s| {
                s.out.sent = true;
                Ok(1)
            })
        })?,
    )?;
    let h = host.clone();
    ngx.raw_set(
        "eof",
        lua.create_function(move |lua, ()| {
            h.with_req(lua, "ngx.eof", Kinds::OUTPUT, |s| {
                s.out.sent = true;
                s.out.eof = true;
                Ok(1)
            })
        })?,
    )?;

    // ngx.exit and ngx.redirect record the decision, then yield forever: the call ends at
    // once, even from inside pcall (a yield is not an error). Filter phases cannot yield, so
    // there the recorded exit unwinds with an error the VM recognizes.
    let h = host.clone();
    let set_exit = lua.create_function(move |lua, code: Value| {
        let code = match code {
            Value::Integer(i) => i,
            Value::Number(n) if n.fract() == 0.0 => n as i64,
            other => {
                return Err(convert::error(
                    lua,
                    format!(
                        "ngx.exit: the status must be a number, got {}",
                        other.type_name()
                    ),
                ))
            }
        };
        let kind = h.check(lua, "ngx.exit", EXIT)?;
        if kind != Kind::Timer
            && code >= 200
            && StatusCode::from_u16(u16::try_from(code).unwrap_or(0)).is_err()
        {
            return Err(convert::error(
                lua,
                format!("ngx.exit: invalid status {code}"),
            ));
        }
        h.with_req(lua, "ngx.exit", EXIT, |s| {
            s.out.exit = Some(code);
            Ok(())
        })?;
        let _ = kind;
        if h.in_async.get() {
            Ok(true)
        } else {
            super::super::budget::set_exiting();
            Ok(false)
        }
    })?;
    let h = host.clone();
    let set_redirect =
        lua.create_function(move |lua, (uri, status): (mlua::LuaString, Option<i64>)| {
            let status = status.unwrap_or(302);
            if ![301, 302, 303, 307, 308].contains(&status) {
                return Err(convert::error(
                    lua,
                    format!(
                        "ngx.redirect: only 301, 302, 303, 307 and 308 are allowed, got {status}"
                    ),
                ));
            }
            let location = http::HeaderValue::from_bytes(&uri.as_bytes())
                .map_err(|_| convert::error(lua, "ngx.redirect: invalid URI"))?;
            h.with_req(lua, "ngx.redirect", Kinds::OUTPUT, |s| {
                if s.out.sent {
                    return Err(convert::error(
                        lua,
                        "attempt to call ngx.redirect after sending out the headers",
                    ));
                }
                s.out.headers.insert(http::header::LOCATION, location);
                s.out.headers_set = true;
                s.out.status = StatusCode::from_u16(status as u16).ok();
                s.out.exit = Some(status);
                Ok(())
            })?;
            if h.in_async.get() {
                Ok(true)
            } else {
                super::super::budget::set_exiting();
                Ok(false)
            }
        })?;
    let wait = lua.create_async_function(|_, ()| async {
        std::future::pending::<()>().await;
        Ok(())
    })?;
    let make: mlua::Function = lua
        .load(
            r#"
local set_exit, set_redirect, wait = ...
local sentinel = setmetatable({}, { __tostring = function() return "ngx.exit" end })
local function exit(code)
  if set_exit(code) then return wait() end
  error(sentinel, 0)
end
local function redirect(uri, status)
  if set_redirect(uri, status) then return wait() end
  error(sentinel, 0)
end
return exit, redirect
"#,
        )
        .set_name("=ngx")
        .into_function()?;
    let (exit, redirect): (mlua::Function, mlua::Function) =
        make.call((set_exit, set_redirect, wait))?;
    ngx.raw_set("exit", exit)?;
    ngx.raw_set("redirect", redirect)?;

    let arg_meta = lua.create_table()?;
    let h = host.clone();
    arg_meta.raw_set(
        "__index",
        lua.create_function(move |lua, (_, i): (bool, i64)| {
            h.with_req(
                lua,
                "ngx.arg",
                Kinds::of(&[Kind::BodyFilter]),
                |s| match i {
                    1 => lua.create_string(&s.chunk).map(Value::String),
                    2 => Ok(Value::Boolean(s.eof)),
                    _ => Ok(Value::Nil),
                },
            )
        })?,
    )?;
    let h = host.clone();
    arg_meta.raw_set(
        "__newindex",
        lua.create_function(move |lua, (_, i, v): (bool, i64, Value)| {
            h.with_req(lua, "ngx.arg", Kinds::of(&[Kind::BodyFilter]), |s| {
                match i {
                    1 => s.chunk = Bytes::from(convert::as_bytes(&v).unwrap_or_default()),
                    2 => s.eof = !matches!(v, Value::Nil | Value::Boolean(false)),
                    _ => {
                        return Err(convert::error(
                            lua,
                            "ngx.arg: only ngx.arg[1] and ngx.arg[2] exist in body_filter",
                        ))
                    }
                }
                Ok(())
            })
        })?,
    )?;
    let arg = lua.create_table()?;
    arg.set_metatable(Some(arg_meta))?;
    ngx.raw_set("arg", arg)?;
    Ok(())
}
