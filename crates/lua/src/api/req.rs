//! `ngx.req.*`: reading and changing the request (`ngx.var` is in `var.rs`).

use std::rc::Rc;
use std::time::UNIX_EPOCH;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue};
use mlua::{Lua, Table, Value};

use super::super::convert;
use super::super::state::ReqState;
use super::super::vm::Host;
use super::super::Kinds;
use super::ngx::args_table;
use sluicegate_core::context::RequestBody;

/// `ngx.req.set_header` and friends are allowed in these phases (request headers can no
/// longer reach the upstream in the filter phases, but OpenResty allows the call).
const SET_HEADER: Kinds = Kinds::of(&[
    super::super::Kind::Rewrite,
    super::super::Kind::Access,
    super::super::Kind::Content,
    super::super::Kind::HeaderFilter,
    super::super::Kind::BodyFilter,
]);

/// Replaces the query string of the request.
pub fn set_query(s: &mut ReqState, query: Option<&[u8]>) -> Result<(), String> {
    let path = s.head.uri.path().to_string();
    set_path_and_query(s, &path, query)
}

fn set_path_and_query(s: &mut ReqState, path: &str, query: Option<&[u8]>) -> Result<(), String> {
    let mut pq = path.as_bytes().to_vec();
    if let Some(q) = query.filter(|q| !q.is_empty()) {
        pq.push(b'?');
        pq.extend_from_slice(q);
    }
    let pq = http::uri::PathAndQuery::try_from(pq).map_err(|e| format!("invalid URI: {e}"))?;
    let mut parts = s.head.uri.clone().into_parts();
    parts.path_and_query = Some(pq);
    s.head.uri = http::Uri::from_parts(parts).map_err(|e| format!("invalid URI: {e}"))?;
    Ok(())
}

fn header_value(lua: &Lua, v: &Value) -> mlua::Result<HeaderValue> {
    let made = match v {
        // Read in place: no copy of the string before the value's own.
        Value::String(s) => HeaderValue::from_bytes(&s.as_bytes()),
        other => {
            let b = convert::as_bytes(other).ok_or_else(|| {
                convert::error(
                    lua,
                    format!("header value must be a string, got {}", v.type_name()),
                )
            })?;
            HeaderValue::from_bytes(&b)
        }
    };
    made.map_err(|_| convert::error(lua, "invalid header value"))
}

/// Sets (or with `nil` removes) header `name` in `headers`; a table sets one line per value.
pub fn set_header(
    lua: &Lua,
    headers: &mut HeaderMap,
    name: &[u8],
    value: &Value,
    underscores: bool,
) -> mlua::Result<()> {
    let name = checked_header_name(lua, name, underscores)?;
    set_named_header(lua, headers, name, value)
}

/// `name` as a header name, or the error a script gets for an invalid one.
pub fn checked_header_name(
    lua: &Lua,
    name: &[u8],
    underscores: bool,
) -> mlua::Result<http::HeaderName> {
    convert::header_name(name, underscores).ok_or_else(|| {
        convert::error(
            lua,
            format!("invalid header name \"{}\"", String::from_utf8_lossy(name)),
        )
    })
}

/// Sets header `name` to one value given as text.
pub fn set_header_text(
    lua: &Lua,
    headers: &mut HeaderMap,
    name: http::HeaderName,
    text: &[u8],
) -> mlua::Result<()> {
    let value =
        HeaderValue::from_bytes(text).map_err(|_| convert::error(lua, "invalid header value"))?;
    headers.insert(name, value);
    Ok(())
}

/// [`set_header`] with the name already converted.
pub fn set_named_header(
    lua: &Lua,
    headers: &mut HeaderMap,
    name: http::HeaderName,
    value: &Value,
) -> mlua::Result<()> {
    match value {
        Value::Nil => {
            headers.remove(&name);
        }
        Value::Table(t) => {
            let mut values = Vec::new();
            for v in t.sequence_values::<Value>() {
                values.push(header_value(lua, &v?)?);
            }
            headers.remove(&name);
            for v in values {
                headers.append(name.clone(), v);
            }
        }
        v => {
            headers.insert(name, header_value(lua, v)?);
        }
    }
    Ok(())
}

/// A table of `headers` the way `ngx.req.get_headers` returns it.
pub fn headers_table(
    lua: &Lua,
    headers: &HeaderMap,
    max: usize,
    meta: Option<&Table>,
) -> mlua::Result<(Table, bool)> {
    let t = lua.create_table_with_capacity(0, headers.keys_len())?;
    let mut truncated = false;
    for (count, (name, value)) in headers.iter().enumerate() {
        if max > 0 && count >= max {
            truncated = true;
            break;
        }
        let v = lua.create_string(value.as_bytes())?;
        match t.raw_get::<Value>(name.as_str())? {
            Value::Nil => t.raw_set(name.as_str(), v)?,
            Value::Table(list) => list.raw_push(v)?,
            first => t.raw_set(
                name.as_str(),
                lua.create_sequence_from([first, Value::String(v)])?,
            )?,
        }
    }
    if let Some(m) = meta {
        t.set_metatable(Some(m.clone()))?;
    }
    Ok((t, truncated))
}

fn truncated(lua: &Lua, t: Table, truncated: bool) -> mlua::Result<mlua::MultiValue> {
    let mut out = mlua::MultiValue::new();
    out.push_back(Value::Table(t));
    if truncated {
        out.push_back(Value::String(lua.create_string("truncated")?));
    }
    Ok(out)
}

/// Registers `ngx.req`.
pub fn register(lua: &Lua, host: &Rc<Host>, ngx: &Table) -> mlua::Result<()> {
    let req = lua.create_table()?;
    let headers_meta: Table = lua
        .load("return { __index = function(t, k) if type(k) ~= 'string' then return nil end return rawget(t, (string.gsub(string.lower(k), '_', '-'))) end }")
        .set_name("=ngx.req")
        .eval()?;

    let h = host.clone();
    req.raw_set(
        "get_headers",
        lua.create_function(move |lua, (max, raw): (Option<usize>, Option<bool>)| {
            let meta = (!raw.unwrap_or(false)).then_some(&headers_meta);
            let (t, cut) = h.with_req(lua, "ngx.req.get_headers", Kinds::REQUEST, |s| {
                headers_table(lua, &s.head.headers, max.unwrap_or(100), meta)
            })?;
            truncated(lua, t, cut)
        })?,
    )?;
    let h = host.clone();
    req.raw_set(
        "set_header",
        lua.create_function(move |lua, (name, value): (mlua::LuaString, Value)| {
            h.with_req(lua, "ngx.req.set_header", SET_HEADER, |s| {
                set_header(lua, &mut s.head.headers, &name.as_bytes(), &value, false)
            })
        })?,
    )?;
    let h = host.clone();
    req.raw_set(
        "clear_header",
        lua.create_function(move |lua, name: mlua::LuaString| {
            h.with_req(lua, "ngx.req.clear_header", SET_HEADER, |s| {
                set_header(
                    lua,
                    &mut s.head.headers,
                    &name.as_bytes(),
                    &Value::Nil,
                    false,
                )
            })
        })?,
    )?;
    let h = host.clone();
    req.raw_set(
        "get_uri_args",
        lua.create_function(move |lua, max: Option<usize>| {
            let (args, cut) = h.with_req(lua, "ngx.req.get_uri_args", Kinds::REQUEST, |s| {
                Ok(convert::parse_args(
                    s.head.uri.query().unwrap_or("").as_bytes(),
                    max.unwrap_or(100),
                ))
            })?;
            truncated(lua, args_table(lua, args)?, cut)
        })?,
    )?;
    let h = host.clone();
    req.raw_set(
        "set_uri_args",
        lua.create_function(move |lua, args: Value| {
            let query = match &args {
                Value::Table(t) => super::ngx::encode_args(lua, t)?,
                other => convert::as_bytes(other).ok_or_else(|| {
                    convert::error(lua, "ngx.req.set_uri_args: a string or a table is expected")
                })?,
            };
            h.with_req(lua, "ngx.req.set_uri_args", Kinds::OUTPUT, |s| {
                set_query(s, Some(&query)).map_err(|e| convert::error(lua, e))
            })
        })?,
    )?;
    let h = host.clone();
    req.raw_set(
        "get_post_args",
        lua.create_function(move |lua, max: Option<usize>| {
            let body = h.with_req(lua, "ngx.req.get_post_args", Kinds::OUTPUT, |s| {
                Ok(match &s.body {
                    RequestBody::Buffered(b) => Some(b.clone()),
                    RequestBody::Empty => Some(Bytes::new()),
                    RequestBody::Stream(_) => None,
                })
            })?;
            let mut out = mlua::MultiValue::new();
            match body {
                Some(b) => {
                    let (args, cut) = convert::parse_args(&b, max.unwrap_or(100));
                    return truncated(lua, args_table(lua, args)?, cut);
                }
                None => {
                    out.push_back(Value::Nil);
                    out.push_back(Value::String(lua.create_string(
                        "request body not read yet; call ngx.req.read_body() first",
                    )?));
                }
            }
            Ok(out)
        })?,
    )?;
    let h = host.clone();
    req.raw_set(
        "get_method",
        lua.create_function(move |lua, ()| {
            h.with_req(lua, "ngx.req.get_method", Kinds::REQUEST, |s| {
                Ok(s.head.method.as_str().to_string())
            })
        })?,
    )?;
    let h = host.clone();
    req.raw_set(
        "set_method",
        lua.create_function(move |lua, m: String| {
            let method = http::Method::from_bytes(m.as_bytes())
                .map_err(|_| convert::error(lua, format!("invalid method \"{m}\"")))?;
            h.with_req(lua, "ngx.req.set_method", Kinds::OUTPUT, |s| {
                s.head.method = method;
                Ok(())
            })
        })?,
    )?;
    let h = host.clone();
    req.raw_set(
        "set_uri",
        lua.create_function(move |lua, (uri, jump): (String, Option<bool>)| {
            if jump == Some(true) {
                return Err(convert::error(lua, "ngx.req.set_uri: jump is not supported (the route is chosen before scripts run)"));
            }
            if !uri.starts_with('/') {
                return Err(convert::error(lua, "ngx.req.set_uri: the URI must start with /"));
            }
            h.with_req(lua, "ngx.req.set_uri", SET_HEADER, |s| {
                let query = s.head.uri.query().map(|q| q.as_bytes().to_vec());
                let path = String::from_utf8_lossy(&convert::escape_uri(uri.as_bytes(), true)).into_owned();
                set_path_and_query(s, &path, query.as_deref()).map_err(|e| convert::error(lua, e))
            })
        })?,
    )?;
    let h = host.clone();
    req.raw_set(
        "get_body_data",
        lua.create_function(move |lua, ()| {
            h.with_req(
                lua,
                "ngx.req.get_body_data",
                Kinds::of(&[
                    super::super::Kind::Rewrite,
                    super::super::Kind::Access,
                    super::super::Kind::Content,
                    super::super::Kind::Log,
                ]),
                |s| match &s.body {
                    RequestBody::Buffered(b) if !b.is_empty() => {
                        lua.create_string(b).map(Value::String)
                    }
                    _ => Ok(Value::Nil),
                },
            )
        })?,
    )?;
    let h = host.clone();
    req.raw_set(
        "set_body_data",
        lua.create_function(move |lua, data: mlua::LuaString| {
            h.with_req(lua, "ngx.req.set_body_data", Kinds::OUTPUT, |s| {
                s.body = RequestBody::Buffered(Bytes::copy_from_slice(&data.as_bytes()));
                Ok(())
            })
        })?,
    )?;
    let h = host.clone();
    req.raw_set(
        "discard_body",
        lua.create_function(move |lua, ()| {
            h.with_req(lua, "ngx.req.discard_body", Kinds::OUTPUT, |s| {
                s.body = RequestBody::Empty;
                Ok(())
            })
        })?,
    )?;
    req.raw_set(
        "get_body_file",
        lua.create_function(|_, ()| Ok(Value::Nil))?,
    )?;
    req.raw_set("is_internal", lua.create_function(|_, ()| Ok(false))?)?;
    let h = host.clone();
    req.raw_set(
        "start_time",
        lua.create_function(move |lua, ()| {
            h.with_req(lua, "ngx.req.start_time", Kinds::REQUEST, |s| {
                let started = std::time::SystemTime::now()
                    .checked_sub(s.info.started.elapsed())
                    .unwrap_or(UNIX_EPOCH);
                Ok(started
                    .duration_since(UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_millis() as f64
                    / 1000.0)
            })
        })?,
    )?;
    let h = host.clone();
    req.raw_set(
        "http_version",
        lua.create_function(move |lua, ()| {
            h.with_req(lua, "ngx.req.http_version", Kinds::REQUEST, |s| {
                Ok(match s.head.version {
                    http::Version::HTTP_09 => 0.9,
                    http::Version::HTTP_10 => 1.0,
                    http::Version::HTTP_2 => 2.0,
                    http::Version::HTTP_3 => 3.0,
                    _ => 1.1,
                })
            })
        })?,
    )?;
    let h = host.clone();
    req.raw_set(
        "raw_header",
        lua.create_function(move |lua, no_request_line: Option<bool>| {
            h.with_req(lua, "ngx.req.raw_header", Kinds::REQUEST, |s| {
                let mut out = Vec::new();
                if !no_request_line.unwrap_or(false) {
                    let pq = s.head.uri.path_and_query().map_or("/", |p| p.as_str());
                    out.extend_from_slice(
                        format!("{} {pq} {:?}\r\n", s.head.method, s.head.version).as_bytes(),
                    );
                }
                for (n, v) in &s.head.headers {
                    out.extend_from_slice(n.as_str().as_bytes());
                    out.extend_from_slice(b": ");
                    out.extend_from_slice(v.as_bytes());
                    out.extend_from_slice(b"\r\n");
                }
                out.extend_from_slice(b"\r\n");
                lua.create_string(out)
            })
        })?,
    )?;
    req.raw_set("read_body", read_body(lua, host)?)?;
    ngx.raw_set("req", req)?;
    Ok(())
}

/// `ngx.req.read_body()`: reads the whole body (waiting for the client). A body over the
/// listener's limit or a stalled client ends the request with 413 / 408.
pub fn read_body(lua: &Lua, host: &Rc<Host>) -> mlua::Result<mlua::Function> {
    let h = host.clone();
    lua.create_async_function(move |lua, ()| {
        let taken = h
            .check(&lua, "ngx.req.read_body", Kinds::OUTPUT)
            .and_then(|_| h.check_async(&lua, "ngx.req.read_body"))
            .and_then(|_| {
                h.with_req(&lua, "ngx.req.read_body", Kinds::OUTPUT, |s| {
                    Ok(match std::mem::replace(&mut s.body, RequestBody::Empty) {
                        RequestBody::Stream(stream) => Some(stream),
                        other => {
                            s.body = other;
                            None
                        }
                    })
                })
            });
        let h = h.clone();
        async move {
            let Some(stream) = taken? else { return Ok(()) };
            match stream.collect().await {
                Ok(bytes) => {
                    if let Some(s) = h.cur.borrow_mut().as_mut() {
                        s.body = RequestBody::Buffered(bytes);
                    }
                    Ok(())
                }
                Err(e) => {
                    if let Some(s) = h.cur.borrow_mut().as_mut() {
                        s.body_error = Some(e);
                        s.out.exit = Some(-1);
                    }
                    std::future::pending::<()>().await;
                    Ok(())
                }
            }
        }
    })
}
