//! `ngx.var.*`: nginx's request variables (`host`, `uri`, `args`, `http_*`, `cookie_*`,
//! `arg_*`, ...) with nginx's semantics; `ngx.var.args` is the one that can be assigned.

use std::rc::Rc;
use std::time::UNIX_EPOCH;

use http::{HeaderMap, HeaderValue};
use mlua::{Lua, Table, Value};

use super::super::convert;
use super::super::state::ReqState;
use super::super::vm::Host;
use super::super::Kinds;
use super::req::set_query;
use sluicegate_core::context::RequestBody;

/// Looks a header up by a `ngx.var.http_*` style name (`_` means `-`) without allocating.
fn header_values<'h>(
    headers: &'h HeaderMap,
    name: &[u8],
) -> Option<http::header::GetAll<'h, HeaderValue>> {
    let mut buf = [0u8; 96];
    if name.len() > buf.len() {
        let owned = convert::header_name(name, true)?;
        let all = headers.get_all(owned);
        return all.iter().next().is_some().then_some(all);
    }
    for (d, s) in buf.iter_mut().zip(name) {
        *d = if *s == b'_' { b'-' } else { *s };
    }
    let text = std::str::from_utf8(&buf[..name.len()]).ok()?;
    // `&str` lookups lower-case into a stack buffer; an invalid name finds nothing.
    let all = headers.get_all(text);
    all.iter().next().is_some().then_some(all)
}

/// Joins repeated headers like nginx ≥ 1.23: `, ` (cookies: `; `).
fn joined(values: http::header::GetAll<'_, HeaderValue>, cookie: bool) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, v) in values.iter().enumerate() {
        if i > 0 {
            out.extend_from_slice(if cookie { b"; " } else { b", " });
        }
        out.extend_from_slice(v.as_bytes());
    }
    out
}

/// The value of cookie `name` in the `Cookie` header(s).
pub fn cookie<'h>(headers: &'h HeaderMap, name: &[u8]) -> Option<&'h [u8]> {
    headers.get_all(http::header::COOKIE).iter().find_map(|v| {
        v.as_bytes().split(|b| *b == b';').find_map(|pair| {
            let pair = pair.trim_ascii();
            let eq = pair.iter().position(|b| *b == b'=')?;
            (pair[..eq].trim_ascii() == name).then(|| pair[eq + 1..].trim_ascii())
        })
    })
}

fn percent_decode(s: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        if s[i] == b'%' && i + 2 < s.len() {
            let h = (s[i + 1] as char).to_digit(16);
            let l = (s[i + 2] as char).to_digit(16);
            if let (Some(h), Some(l)) = (h, l) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(s[i]);
        i += 1;
    }
    out
}

fn var(lua: &Lua, host: &Host, s: &ReqState, name: &[u8]) -> mlua::Result<Value> {
    let head = &s.head;
    let string = |b: &[u8]| host.strings.get(lua, b).map(Value::String);
    if let Some(h) = name.strip_prefix(b"http_") {
        return match header_values(&head.headers, h) {
            Some(values) => {
                let mut it = values.iter();
                match (it.next(), it.next()) {
                    (Some(one), None) => string(one.as_bytes()),
                    _ => string(&joined(values, h.eq_ignore_ascii_case(b"cookie"))),
                }
            }
            None => Ok(Value::Nil),
        };
    }
    if let Some(c) = name.strip_prefix(b"cookie_") {
        return cookie(&head.headers, c).map_or(Ok(Value::Nil), string);
    }
    if let Some(a) = name.strip_prefix(b"arg_") {
        let query = head.uri.query().unwrap_or("").as_bytes();
        return convert::raw_arg(query, a).map_or(Ok(Value::Nil), string);
    }
    if let Some(h) = name.strip_prefix(b"sent_http_") {
        return match header_values(&s.resp.headers, h) {
            Some(values) => string(&joined(values, false)),
            None => Ok(Value::Nil),
        };
    }
    let info = &s.info;
    match name {
        b"host" | b"server_name" => string(sluicegate_core::context::request_host(head).as_bytes()),
        b"http_host" => head
            .headers
            .get(http::header::HOST)
            .map_or(Ok(Value::Nil), |v| string(v.as_bytes())),
        b"uri" => string(&percent_decode(head.uri.path().as_bytes())),
        b"document_uri" => string(head.uri.path().as_bytes()),
        b"request_uri" => string(
            head.uri
                .path_and_query()
                .map_or("/", |p| p.as_str())
                .as_bytes(),
        ),
        b"args" | b"query_string" => head
            .uri
            .query()
            .map_or(Ok(Value::Nil), |q| string(q.as_bytes())),
        b"is_args" => string(if head.uri.query().is_some() {
            b"?"
        } else {
            b""
        }),
        b"request_method" => string(head.method.as_str().as_bytes()),
        b"scheme" => string(if info.tls { b"https" } else { b"http" }),
        b"https" => string(if info.tls { b"on" } else { b"" }),
        b"remote_addr" => string(info.client_addr.ip().to_string().as_bytes()),
        b"remote_port" => string(info.client_addr.port().to_string().as_bytes()),
        b"binary_remote_addr" => match info.client_addr.ip() {
            std::net::IpAddr::V4(ip) => string(&ip.octets()),
            std::net::IpAddr::V6(ip) => string(&ip.octets()),
        },
        b"server_protocol" => string(format!("{:?}", head.version).as_bytes()),
        b"request_id" => string(info.request_id.as_bytes()),
        b"content_type" => head
            .headers
            .get(http::header::CONTENT_TYPE)
            .map_or(Ok(Value::Nil), |v| string(v.as_bytes())),
        b"content_length" => head
            .headers
            .get(http::header::CONTENT_LENGTH)
            .map_or(Ok(Value::Nil), |v| string(v.as_bytes())),
        b"request_time" => {
            string(format!("{:.3}", info.started.elapsed().as_secs_f64()).as_bytes())
        }
        b"msec" => string(
            format!(
                "{:.3}",
                std::time::SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_secs_f64()
            )
            .as_bytes(),
        ),
        b"status" => {
            let status = if info.status != 0 {
                info.status
            } else {
                s.resp.status.as_u16()
            };
            string(status.to_string().as_bytes())
        }
        b"upstream_addr" => info
            .upstream
            .as_deref()
            .map_or(Ok(Value::Nil), |u| string(u.as_bytes())),
        b"bytes_sent" | b"body_bytes_sent" => string(info.bytes_out.to_string().as_bytes()),
        b"request_length" => string(info.bytes_in.to_string().as_bytes()),
        b"request_body" => match &s.body {
            RequestBody::Buffered(b) if !b.is_empty() => string(b),
            _ => Ok(Value::Nil),
        },
        b"hostname" => string(b"localhost"),
        _ => Ok(Value::Nil),
    }
}

/// Registers `ngx.var`.
pub fn register(lua: &Lua, host: &Rc<Host>, ngx: &Table) -> mlua::Result<()> {
    let var_meta = lua.create_table()?;
    let h = host.clone();
    var_meta.raw_set(
        "__index",
        // The table argument is read as a boolean and the name as bytes: neither then
        // costs a reference in mlua's registry thread (about a third of the call).
        lua.create_function(move |lua, (_, name): (bool, mlua::BString)| {
            h.with_req(lua, "ngx.var", Kinds::REQUEST, |s| {
                if name.starts_with(b"sent_http_") {
                    // The response headers as they will go out: raw upstream lines too.
                    s.response_headers().map_err(|e| convert::error(lua, e))?;
                }
                var(lua, &h, s, &name)
            })
        })?,
    )?;
    let h = host.clone();
    var_meta.raw_set(
        "__newindex",
        lua.create_function(move |lua, (_, name, value): (bool, mlua::BString, Value)| {
            h.with_req(lua, "ngx.var", Kinds::OUTPUT, |s| match name.as_slice() {
                b"args" | b"query_string" => {
                    let q = convert::as_bytes(&value);
                    set_query(s, q.as_deref()).map_err(|e| convert::error(lua, e))
                }
                other => Err(convert::error(
                    lua,
                    format!(
                        "variable \"{}\" not found for writing (only ngx.var.args can be changed)",
                        String::from_utf8_lossy(other)
                    ),
                )),
            })
        })?,
    )?;
    let var_table = lua.create_table()?;
    var_table.set_metatable(Some(var_meta))?;
    ngx.raw_set("var", var_table)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_cookies_by_exact_name() {
        let mut h = HeaderMap::new();
        h.append("cookie", HeaderValue::from_static("a=1; session=xyz"));
        h.append("cookie", HeaderValue::from_static("Session=other"));
        assert_eq!(cookie(&h, b"session"), Some(&b"xyz"[..]));
        assert_eq!(cookie(&h, b"Session"), Some(&b"other"[..]));
        assert_eq!(cookie(&h, b"missing"), None);
    }

    #[test]
    fn joins_repeated_headers() {
        let mut h = HeaderMap::new();
        h.append("x-multi", HeaderValue::from_static("a"));
        h.append("x-multi", HeaderValue::from_static("b"));
        let v = header_values(&h, b"X_Multi").map(|v| joined(v, false));
        assert_eq!(v.as_deref(), Some(&b"a, b"[..]));
    }

    #[test]
    fn decodes_percent_escapes_in_paths_but_not_plus() {
        assert_eq!(percent_decode(b"/a%20b+c%2"), b"/a b+c%2");
    }
}
