//! The stream handle and the objects it hands out, as Envoy's Lua filter documents them:
//! header maps (with the pseudo-headers `:path`, `:method`, `:authority`, `:scheme`,
//! `:status`), body buffers, route metadata, stream info with dynamic metadata, the
//! connection's TLS, logging, `httpCall`, `respond`, and the helpers (`base64Escape`,
//! `timestamp`, `importPublicKey` / `verifySignature`).
//!
//! The handle itself is a raw Luau userdata holding its call's token, its VM and its
//! direction (module `raw`); its methods are the Rust functions of [`methods`], called
//! with that token and direction, and for the common header calls C functions that fall
//! back to them. Every object reads and changes the request through the running call's
//! state (the bridge's [`ReqState`]), after checking that the call is the one it was made
//! for.

use std::future::Future;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue};
use mlua::{
    AnyUserData, FromLuaMulti, IntoLuaMulti, Lua, MetaMethod, UserData, UserDataMethods, Value,
};
use sluicegate_core::context::RequestBody;
use sluicegate_lua::state::ReqState;
use sluicegate_lua::vm::Host;
use sluicegate_lua::Kinds;

/// Envoy's message for an object used after its hook.
const OUT_OF_SCOPE: &str = "object used outside of proper scope";

/// Which way the hook runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    /// `envoy_on_request`.
    Request,
    /// `envoy_on_response`.
    Response,
}

impl Dir {
    /// The number a handle carries.
    pub fn code(self) -> u8 {
        match self {
            Dir::Request => 0,
            Dir::Response => 1,
        }
    }

    /// The direction of a handle's number.
    pub fn from_code(code: u8) -> Dir {
        if code == 0 {
            Dir::Request
        } else {
            Dir::Response
        }
    }
}

/// What every object of one call carries: the host, the call's token, the direction.
#[derive(Clone)]
pub struct Scope {
    host: Rc<Host>,
    token: u64,
    dir: Dir,
}

impl Scope {
    /// The scope of a handle, from the token and direction its methods are given.
    fn of(host: &Rc<Host>, token: f64, dir: u8) -> Scope {
        Scope {
            host: host.clone(),
            token: token as u64,
            dir: Dir::from_code(dir),
        }
    }

    /// Runs `f` on the call's request state, or raises when the call is over.
    fn with<R>(
        &self,
        lua: &Lua,
        f: impl FnOnce(&mut ReqState) -> mlua::Result<R>,
    ) -> mlua::Result<R> {
        let mut cur = self
            .host
            .cur
            .try_borrow_mut()
            .map_err(|_| mlua::Error::runtime(OUT_OF_SCOPE))?;
        match cur.as_deref_mut() {
            Some(s) if s.binding == self.token => f(s),
            _ => Err(sluicegate_lua::convert::error(lua, OUT_OF_SCOPE)),
        }
    }
}

/// The running call's token (0 when no call runs or it binds no handle).
pub(crate) fn running_token(host: &Host) -> u64 {
    host.cur
        .try_borrow()
        .ok()
        .and_then(|c| c.as_deref().map(|s| s.binding))
        .unwrap_or(0)
}

/// Whether the running call is the one of `token`.
pub(crate) fn bound(host: &Host, token: u64) -> bool {
    host.cur
        .try_borrow()
        .is_ok_and(|c| c.as_deref().is_some_and(|s| s.binding == token))
}

fn err(lua: &Lua, message: impl std::fmt::Display) -> mlua::Error {
    sluicegate_lua::convert::error(lua, message)
}

/// A string argument's bytes (numbers as their text).
fn text(v: &Value) -> Option<String> {
    sluicegate_lua::convert::as_bytes(v).map(|b| String::from_utf8_lossy(&b).into_owned())
}

/// Builds the table of the handle's methods: each a Rust function of `(token, dir, ...)`
/// given the handle's scope.
struct Methods<'a> {
    lua: &'a Lua,
    host: &'a Rc<Host>,
    table: mlua::Table,
}

impl Methods<'_> {
    fn sync<A, R>(
        &self,
        name: &str,
        f: impl Fn(&Lua, &Scope, A) -> mlua::Result<R> + 'static,
    ) -> mlua::Result<()>
    where
        A: FromLuaMulti,
        R: IntoLuaMulti,
    {
        let host = self.host.clone();
        let f = self
            .lua
            .create_function(move |lua, (token, dir, args): (f64, u8, A)| {
                f(lua, &Scope::of(&host, token, dir), args)
            })?;
        self.table.raw_set(name, f)
    }

    /// A method that may wait (it yields the call's coroutine).
    fn wait<A, R, F>(
        &self,
        name: &str,
        f: impl Fn(Lua, Scope, A) -> F + 'static,
    ) -> mlua::Result<()>
    where
        A: FromLuaMulti,
        R: IntoLuaMulti,
        F: Future<Output = mlua::Result<R>> + 'static,
    {
        let host = self.host.clone();
        let f = self
            .lua
            .create_async_function(move |lua, (token, dir, args): (f64, u8, A)| {
                f(lua, Scope::of(&host, token, dir), args)
            })?;
        self.table.raw_set(name, f)
    }
}

/// The stream handle's methods, by name, as Rust functions of the handle's token and
/// direction and the method's arguments. `headers` only checks the scope (the handle is
/// its own header map); `__iter` is the handle's `pairs`.
pub fn methods(lua: &Lua, host: &Rc<Host>) -> mlua::Result<mlua::Table> {
    let m = Methods {
        lua,
        host,
        table: lua.create_table()?,
    };
    m.sync("headers", |lua, scope, ()| scope.with(lua, |_| Ok(())))?;
    header_methods(&m)?;
    m.sync("trailers", |lua, scope, ()| {
        // Trailers are not kept apart from the body here: there are none to show.
        scope.with(lua, |_| Ok(()))?;
        Ok(Value::Nil)
    })?;
    m.wait("body", |lua, scope, always_wrap: Option<bool>| async move {
        body(&lua, &scope, always_wrap.unwrap_or(false)).await
    })?;
    m.wait("bodyChunks", |lua, scope, ()| async move {
        // The body is buffered whole, then handed out as one chunk.
        let buffer = body(&lua, &scope, false).await?;
        let mut pending = Some(buffer);
        lua.create_function_mut(move |_, ()| Ok(pending.take().unwrap_or(Value::Nil)))
    })?;
    m.sync("metadata", |lua, scope, ()| {
        let map = scope.with(lua, |s| Ok(s.info.route_metadata.clone()))?;
        lua.create_userdata(Metadata(map))
    })?;
    m.sync("streamInfo", |lua, scope, ()| {
        scope.with(lua, |_| Ok(()))?;
        lua.create_userdata(StreamInfo(scope.clone()))
    })?;
    m.sync("connection", |lua, scope, ()| {
        scope.with(lua, |_| Ok(()))?;
        lua.create_userdata(Connection(scope.clone()))
    })?;
    for (name, level) in [
        ("logTrace", 0u8),
        ("logDebug", 1),
        ("logInfo", 2),
        ("logWarn", 3),
        ("logErr", 4),
        ("logCritical", 5),
    ] {
        m.sync(name, move |lua, scope, message: Value| {
            let message = sluicegate_lua::convert::display(&message);
            let id = scope.with(lua, |s| {
                Ok(String::from_utf8_lossy(s.info.request_id.as_bytes()).into_owned())
            })?;
            log(&scope.host, level, &id, &message);
            Ok(())
        })?;
    }
    m.wait(
        "respond",
        |lua, scope, (headers, body): (mlua::Table, Option<mlua::LuaString>)| async move {
            respond(&lua, &scope, &headers, body)?;
            if scope.host.in_async.get() {
                // The call ends here: the gateway answers with what was recorded.
                std::future::pending::<()>().await;
                Ok(())
            } else {
                sluicegate_lua::budget::set_exiting();
                Err(mlua::Error::runtime("respond"))
            }
        },
    )?;
    m.wait(
        "httpCall",
        |lua,
         scope,
         (cluster, headers, body, timeout, options): (
            String,
            mlua::Table,
            Option<mlua::LuaString>,
            Option<f64>,
            Value,
        )| async move {
            http_call(&lua, &scope, cluster, &headers, body, timeout, options).await
        },
    )?;
    m.sync("clearRouteCache", |lua, scope, ()| {
        // Routes are chosen once per request, before filters; `cluster_header` is read
        // after them, so there is no cache to clear.
        scope.with(lua, |_| Ok(()))
    })?;
    m.sync("base64Escape", |_, _, data: mlua::LuaString| {
        use base64::Engine;
        Ok(base64::engine::general_purpose::STANDARD.encode(&*data.as_bytes()))
    })?;
    m.sync("timestamp", |_, _, format: Option<Value>| {
        let _ = format;
        let ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        Ok(ms)
    })?;
    m.sync("timestampString", |_, _, resolution: Option<Value>| {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let micro = matches!(
            resolution,
            Some(Value::Integer(1)) | Some(Value::Number(1.0))
        );
        Ok(if micro {
            now.as_micros().to_string()
        } else {
            now.as_millis().to_string()
        })
    })?;
    m.sync(
        "importPublicKey",
        |lua, _, (der, len): (mlua::LuaString, Option<usize>)| {
            let bytes = der.as_bytes();
            let der = &bytes[..len.unwrap_or(bytes.len()).min(bytes.len())];
            match sluicegate_jwt::keys::from_spki(der) {
                Ok(key) => Ok(Value::UserData(
                    lua.create_userdata(PublicKey(Some(Arc::new(key))))?,
                )),
                // Envoy hands out an empty key object: verifySignature then fails.
                Err(_) => Ok(Value::UserData(lua.create_userdata(PublicKey(None))?)),
            }
        },
    )?;
    m.sync(
        "verifySignature",
        |lua,
         _,
         (hash, key, sig, sig_len, data, data_len): (
            String,
            AnyUserData,
            mlua::LuaString,
            Option<usize>,
            mlua::LuaString,
            Option<usize>,
        )| {
            let key = key.borrow::<PublicKey>()?.0.clone();
            let sig = sig.as_bytes();
            let data = data.as_bytes();
            let sig = &sig[..sig_len.unwrap_or(sig.len()).min(sig.len())];
            let data = &data[..data_len.unwrap_or(data.len()).min(data.len())];
            let mut out = mlua::MultiValue::new();
            let alg = match hash.to_ascii_lowercase().as_str() {
                "sha256" => Some(sluicegate_jwt::keys::Alg::RS256),
                "sha384" => Some(sluicegate_jwt::keys::Alg::RS384),
                "sha512" => Some(sluicegate_jwt::keys::Alg::RS512),
                _ => None,
            };
            let outcome = match (alg, key) {
                (None, _) => Err(format!("{hash} is not supported.")),
                (_, None) => Err("Failed to verify digest. Error code: 0".to_string()),
                (Some(alg), Some(key)) => {
                    if key.verify(alg, data, sig) {
                        Ok(())
                    } else {
                        Err("Failed to verify digest. Error code: 0".to_string())
                    }
                }
            };
            match outcome {
                Ok(()) => {
                    out.push_back(Value::Boolean(true));
                    out.push_back(Value::Nil);
                }
                Err(e) => {
                    out.push_back(Value::Boolean(false));
                    out.push_back(Value::String(lua.create_string(e)?));
                }
            }
            Ok(out)
        },
    )?;
    Ok(m.table)
}

fn log(host: &Host, level: u8, request_id: &str, message: &str) {
    let script = host.script_name();
    let script = &*script;
    match level {
        0 => tracing::trace!(request_id, script, "{message}"),
        1 => tracing::debug!(request_id, script, "{message}"),
        2 => tracing::info!(request_id, script, "{message}"),
        3 => tracing::warn!(request_id, script, "{message}"),
        4 => tracing::error!(request_id, script, "{message}"),
        _ => tracing::error!(request_id, script, critical = true, "{message}"),
    }
}

/// `body()`: the request body, read whole first (the client is waited for); `nil` when
/// there is none, unless `always_wrap`. In the response hook there is no body yet.
async fn body(lua: &Lua, scope: &Scope, always_wrap: bool) -> mlua::Result<Value> {
    if scope.dir == Dir::Response {
        return Err(err(lua, "body() is not available in envoy_on_response: response bodies stream through without being buffered (see docs/lua-api.md)"));
    }
    let streaming = scope.with(lua, |s| Ok(matches!(s.body, RequestBody::Stream(_))))?;
    if streaming {
        scope.host.check_async(lua, "body()")?;
        let read = sluicegate_lua::api::req::read_body(lua, &scope.host)?;
        read.call_async::<()>(()).await?;
    }
    let empty = scope.with(lua, |s| {
        Ok(match &s.body {
            RequestBody::Buffered(b) => b.is_empty(),
            _ => true,
        })
    })?;
    if empty && !always_wrap {
        return Ok(Value::Nil);
    }
    Ok(Value::UserData(lua.create_userdata(Buffer(scope.clone()))?))
}

/// `respond(headers, body)`: records the local response; the call then ends.
fn respond(
    lua: &Lua,
    scope: &Scope,
    headers: &mlua::Table,
    body: Option<mlua::LuaString>,
) -> mlua::Result<()> {
    if scope.dir == Dir::Response {
        return Err(err(
            lua,
            "respond() cannot be called from the response path",
        ));
    }
    scope.host.check(lua, "respond()", Kinds::OUTPUT)?;
    let mut status = None;
    let mut map = HeaderMap::new();
    for kv in headers.pairs::<mlua::LuaString, Value>() {
        let (k, v) = kv?;
        let key = k.to_string_lossy();
        let Some(value) = text(&v) else {
            return Err(err(
                lua,
                format!("respond(): the value of header `{key}` must be a string"),
            ));
        };
        if key == ":status" {
            status = value
                .parse::<u16>()
                .ok()
                .and_then(|c| http::StatusCode::from_u16(c).ok());
            if status.is_none() {
                return Err(err(lua, format!("respond(): invalid :status `{value}`")));
            }
            continue;
        }
        let name = HeaderName::from_bytes(key.as_bytes())
            .map_err(|_| err(lua, format!("respond(): invalid header name `{key}`")))?;
        let value = HeaderValue::from_str(&value)
            .map_err(|_| err(lua, format!("respond(): invalid value for header `{key}`")))?;
        map.append(name, value);
    }
    let Some(status) = status else {
        return Err(err(lua, "respond(): the headers must include :status"));
    };
    let body = body.map(|b| b.as_bytes().to_vec()).unwrap_or_default();
    scope.with(lua, |s| {
        s.out.status = Some(status);
        s.out.headers = map;
        s.out.headers_set = true;
        s.out.body.clear();
        s.out.body.extend_from_slice(&body);
        s.out.sent = true;
        s.out.exit = Some(i64::from(status.as_u16()));
        Ok(())
    })
}

/// Longest time `httpCall` may be given (Envoy takes any; ours is bounded).
const MAX_HTTP_CALL: Duration = Duration::from_secs(300);

/// `httpCall(cluster, headers, body, timeout_ms[, asynchronous | options])`.
#[allow(clippy::too_many_arguments)]
async fn http_call(
    lua: &Lua,
    scope: &Scope,
    cluster: String,
    headers: &mlua::Table,
    body: Option<mlua::LuaString>,
    timeout: Option<f64>,
    options: Value,
) -> mlua::Result<mlua::MultiValue> {
    scope.with(lua, |_| Ok(()))?;
    scope.host.check(lua, "httpCall()", Kinds::YIELD)?;
    let asynchronous = match &options {
        Value::Boolean(b) => *b,
        Value::Table(t) => t.raw_get::<Option<bool>>("asynchronous")?.unwrap_or(false),
        _ => false,
    };
    if !asynchronous {
        scope.host.check_async(lua, "httpCall()")?;
    }
    let timeout = match timeout {
        Some(ms) if ms > 0.0 => Duration::from_millis(ms as u64).min(MAX_HTTP_CALL),
        // Envoy's 0 means no timeout: ours always applies one.
        _ => MAX_HTTP_CALL,
    };
    let (method, path, authority, map) = call_headers(lua, headers)?;
    let (scheme, addr) = upstream_address(&scope.host, &cluster).map_err(|e| err(lua, e))?;
    let uri: http::Uri = format!("{scheme}://{addr}{path}")
        .parse()
        .map_err(|e| err(lua, format!("httpCall(): bad :path `{path}`: {e}")))?;
    let mut map = map;
    if let Ok(v) = HeaderValue::from_str(&authority) {
        map.insert(http::header::HOST, v);
    }
    let body = body
        .map(|b| Bytes::copy_from_slice(&b.as_bytes()))
        .unwrap_or_default();
    let tls = scope.host.rt.http_tls;
    let fut = sluicegate_lua::api::http::fetch(method, uri, map, body, timeout, tls);
    if asynchronous {
        let host = scope.host.clone();
        let script = host.script_name();
        tokio::task::spawn_local(async move {
            if let Err(e) = fut.await {
                tracing::warn!(script = %script, cluster = %cluster, error = %e, "httpCall (asynchronous) failed.");
            }
        });
        return Ok(mlua::MultiValue::new());
    }
    match fut.await {
        Ok((status, headers, body)) => {
            let t = lua.create_table()?;
            t.raw_set(":status", status.to_string())?;
            for (k, v) in &headers {
                let v = String::from_utf8_lossy(v.as_bytes()).into_owned();
                match t.raw_get::<Value>(k.as_str())? {
                    Value::Nil => t.raw_set(k.as_str(), v)?,
                    Value::Table(list) => list.raw_push(v)?,
                    Value::String(first) => {
                        let list = lua.create_sequence_from([first.to_string_lossy(), v])?;
                        t.raw_set(k.as_str(), list)?
                    }
                    _ => {}
                }
            }
            let mut out = mlua::MultiValue::new();
            out.push_back(Value::Table(t));
            out.push_back(Value::String(lua.create_string(&body)?));
            Ok(out)
        }
        Err(e) => Err(err(lua, format!("http call to {cluster} failed: {e}"))),
    }
}

/// The method, path, authority and other headers of an `httpCall` header table.
fn call_headers(
    lua: &Lua,
    headers: &mlua::Table,
) -> mlua::Result<(http::Method, String, String, HeaderMap)> {
    let (mut method, mut path, mut authority) = (None, None, None);
    let mut map = HeaderMap::new();
    for kv in headers.pairs::<mlua::LuaString, Value>() {
        let (k, v) = kv?;
        let key = k.to_string_lossy();
        let values: Vec<String> = match &v {
            Value::Table(t) => t
                .sequence_values::<Value>()
                .filter_map(|v| v.ok().and_then(|v| text(&v)))
                .collect(),
            other => text(other).into_iter().collect(),
        };
        match key.as_str() {
            ":method" => method = values.into_iter().next(),
            ":path" => path = values.into_iter().next(),
            ":authority" => authority = values.into_iter().next(),
            _ => {
                let name = HeaderName::from_bytes(key.as_bytes())
                    .map_err(|_| err(lua, format!("httpCall(): invalid header name `{key}`")))?;
                for v in values {
                    let v = HeaderValue::from_str(&v).map_err(|_| {
                        err(lua, format!("httpCall(): invalid value for header `{key}`"))
                    })?;
                    map.append(name.clone(), v);
                }
            }
        }
    }
    let (Some(method), Some(path), Some(authority)) = (method, path, authority) else {
        return Err(err(
            lua,
            "http call headers must include ':path', ':method', and ':authority'",
        ));
    };
    let method = http::Method::from_bytes(method.as_bytes())
        .map_err(|_| err(lua, format!("httpCall(): invalid :method `{method}`")))?;
    if !path.starts_with('/') {
        return Err(err(
            lua,
            format!("httpCall(): :path must start with /, got `{path}`"),
        ));
    }
    Ok((method, path, authority, map))
}

thread_local! {
    /// Rotates `httpCall` over an upstream's targets.
    static CURSOR: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Scheme and `ip:port` of an available target of upstream `name`.
fn upstream_address(
    host: &Host,
    name: &str,
) -> Result<(&'static str, std::net::SocketAddr), String> {
    let found = (host.rt.upstreams)(name, None).map_err(|_| {
        format!("http call cluster invalid. Must be configured: no upstream `{name}`")
    })?;
    let upstream = found
        .downcast::<sluicegate_upstream::Upstream>()
        .map_err(|_| format!("upstream `{name}` cannot be called from Lua"))?;
    let set = upstream.live.load();
    let n = set.targets.len();
    if n == 0 {
        return Err(format!("upstream `{name}` has no resolved target"));
    }
    let start = CURSOR.with(|c| {
        let v = c.get();
        c.set(v.wrapping_add(1));
        v
    });
    let pick = (0..n)
        .map(|i| &set.targets[(start + i) % n])
        .find(|t| t.state.available())
        .unwrap_or(&set.targets[start % n]);
    Ok((upstream.scheme(), pick.addr))
}

/// A header map: the request's or the response's, with their pseudo-headers.
struct Headers<'a> {
    scope: &'a Scope,
}

/// The request's pseudo-headers in Envoy's order.
const REQUEST_PSEUDO: &[&str] = &[":authority", ":path", ":method", ":scheme"];

/// What a header read on the C path found in the request state.
pub(crate) enum Found<'s> {
    /// No such header.
    Nil,
    /// Its one value.
    Bytes(&'s [u8]),
    /// `:status`.
    Status(u16),
    /// A case for the Rust method ([`Headers::get`]): several values to join, raw response
    /// lines not merged yet, a name that is not lowercase UTF-8 pseudo-header text.
    Slow,
}

/// `get(name)` without allocating, for the C path: the value borrowed from `s`.
pub(crate) fn find<'s>(s: &'s ReqState, dir: Dir, name: &[u8]) -> Found<'s> {
    if name.first() == Some(&b':') {
        return match pseudo(s, dir, name) {
            Some(Pseudo::Bytes(b)) => Found::Bytes(b),
            Some(Pseudo::Status(code)) => Found::Status(code),
            // An unknown name, or one in capitals: the Rust method lowercases it.
            None => Found::Slow,
        };
    }
    let map = match dir {
        Dir::Request => &s.head.headers,
        Dir::Response if s.raw.is_some() => return Found::Slow,
        Dir::Response => &s.resp.headers,
    };
    // The converted names are kept, as for writes: parsing a name is most of a lookup.
    let Some(name) = sluicegate_lua::convert::header_name(name, false) else {
        return Found::Slow;
    };
    let mut values = map.get_all(name).iter();
    match (values.next(), values.next()) {
        (None, _) => Found::Nil,
        (Some(v), None) => Found::Bytes(v.as_bytes()),
        _ => Found::Slow,
    }
}

/// `add` (`append`), `replace` or (without a value) `remove` of a plain header on the C
/// path; false for a case the Rust method takes (a pseudo-header, an invalid name or value,
/// a handle out of its call), which then raises Envoy's error or does what it documents.
/// Nothing it makes outlives it.
pub(crate) fn write_fast(
    host: &Host,
    token: u64,
    dir: Dir,
    name: &[u8],
    value: Option<&[u8]>,
    append: bool,
) -> bool {
    if name.first() == Some(&b':') {
        return false;
    }
    // Filters name the same few headers on every request: the converted names are kept.
    let Some(header) = sluicegate_lua::convert::header_name(name, false) else {
        return false;
    };
    let value = match value.map(HeaderValue::from_bytes) {
        Some(Ok(v)) => Some(v),
        Some(Err(_)) => return false,
        None => None,
    };
    let Ok(mut cur) = host.cur.try_borrow_mut() else {
        return false;
    };
    match cur.as_deref_mut() {
        Some(s) if s.binding == token => {
            apply(s, dir, header, value, append);
            true
        }
        _ => false,
    }
}

/// A checked header write on the state.
fn apply(s: &mut ReqState, dir: Dir, header: HeaderName, value: Option<HeaderValue>, append: bool) {
    let map = match dir {
        Dir::Request => &mut s.head.headers,
        // Writes never need the upstream's lines merged: `add` appends to what the gateway
        // adds, `replace` and `remove` drop the raw lines of that name.
        Dir::Response => {
            if !append {
                s.replace_raw(&header);
            }
            &mut s.resp.headers
        }
    };
    match value {
        None => {
            map.remove(&header);
        }
        Some(v) if append => {
            map.append(header, v);
        }
        Some(v) => {
            map.insert(header, v);
        }
    }
}

impl Headers<'_> {
    /// Every value of `name` (pseudo-headers included).
    fn values(&self, lua: &Lua, name: &str) -> mlua::Result<Vec<String>> {
        let dir = self.scope.dir;
        let name = name.to_ascii_lowercase();
        self.scope.with(lua, |s| {
            if name.starts_with(':') {
                return Ok(pseudo(s, dir, name.as_bytes())
                    .map(|p| p.text())
                    .into_iter()
                    .collect());
            }
            let map = headers_of(s, dir)?;
            Ok(map
                .get_all(name.as_str())
                .iter()
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                .collect())
        })
    }

    /// `get(name)`: the value (several joined with `,`), or `nil`. Values come from the
    /// worker's cache of recent strings: header values repeat from request to request.
    fn get(&self, lua: &Lua, name: &[u8]) -> mlua::Result<Value> {
        let dir = self.scope.dir;
        let strings = &self.scope.host.strings;
        let Ok(name) = std::str::from_utf8(name) else {
            return Ok(Value::Nil);
        };
        self.scope.with(lua, |s| {
            if name.starts_with(':') {
                return match pseudo(s, dir, name.to_ascii_lowercase().as_bytes()) {
                    Some(Pseudo::Bytes(b)) => Ok(Value::String(strings.get(lua, b)?)),
                    Some(Pseudo::Status(code)) => {
                        Ok(Value::String(lua.create_string(code.to_string())?))
                    }
                    None => Ok(Value::Nil),
                };
            }
            let map = headers_of(s, dir)?;
            let mut values = map.get_all(name).iter();
            match (values.next(), values.next()) {
                (None, _) => Ok(Value::Nil),
                (Some(v), None) => Ok(Value::String(strings.get(lua, v.as_bytes())?)),
                (Some(a), Some(b)) => {
                    let mut joined = a.as_bytes().to_vec();
                    for v in std::iter::once(b).chain(values) {
                        joined.push(b',');
                        joined.extend_from_slice(v.as_bytes());
                    }
                    Ok(Value::String(lua.create_string(&joined)?))
                }
            }
        })
    }

    /// Adds (`append`), replaces or (without a value) removes header `name`. Names and
    /// values are taken as bytes: `HeaderName` lowercases the name itself.
    fn write(
        &self,
        lua: &Lua,
        name: &[u8],
        value: Option<&[u8]>,
        append: bool,
    ) -> mlua::Result<()> {
        let dir = self.scope.dir;
        let shown = || String::from_utf8_lossy(name).into_owned();
        self.scope.with(lua, |s| {
            if name.starts_with(b":") {
                let lower = shown().to_ascii_lowercase();
                let value = value.map(|v| String::from_utf8_lossy(v).into_owned());
                return set_pseudo(lua, s, dir, &lower, value.as_deref());
            }
            let header = sluicegate_lua::convert::header_name(name, false)
                .ok_or_else(|| err(lua, format!("invalid header name `{}`", shown())))?;
            let value = value
                .map(|v| {
                    HeaderValue::from_bytes(v)
                        .map_err(|_| err(lua, format!("invalid value for header `{}`", shown())))
                })
                .transpose()?;
            apply(s, dir, header, value, append);
            Ok(())
        })
    }

    /// Every (name, value) pair, pseudo-headers first.
    fn all(&self, lua: &Lua) -> mlua::Result<Vec<(String, String)>> {
        let dir = self.scope.dir;
        self.scope.with(lua, |s| {
            let mut out = Vec::new();
            let names: &[&str] = match dir {
                Dir::Request => REQUEST_PSEUDO,
                Dir::Response => &[":status"],
            };
            for n in names {
                if let Some(v) = pseudo(s, dir, n.as_bytes()) {
                    out.push((n.to_string(), v.text()));
                }
            }
            for (k, v) in headers_of(s, dir)?.iter() {
                if dir == Dir::Request && k == http::header::HOST {
                    continue;
                }
                out.push((
                    k.as_str().to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                ));
            }
            Ok(out)
        })
    }
}

fn headers_of(s: &mut ReqState, dir: Dir) -> mlua::Result<&mut HeaderMap> {
    match dir {
        Dir::Request => Ok(&mut s.head.headers),
        Dir::Response => s.response_headers().map_err(mlua::Error::runtime),
    }
}

/// A pseudo-header's value, borrowed from the request state.
enum Pseudo<'s> {
    Bytes(&'s [u8]),
    Status(u16),
}

impl Pseudo<'_> {
    fn text(&self) -> String {
        match self {
            Pseudo::Bytes(b) => String::from_utf8_lossy(b).into_owned(),
            Pseudo::Status(code) => code.to_string(),
        }
    }
}

/// The value of pseudo-header `name` (lowercase), if it is one. `:authority` is `Host`,
/// or the target's authority when there is no `Host`.
fn pseudo<'s>(s: &'s ReqState, dir: Dir, name: &[u8]) -> Option<Pseudo<'s>> {
    let bytes = match (dir, name) {
        (Dir::Request, b":path") => s
            .head
            .uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .as_bytes(),
        (Dir::Request, b":method") => s.head.method.as_str().as_bytes(),
        (Dir::Request, b":authority") => match s.head.headers.get(http::header::HOST) {
            Some(v) => v.as_bytes(),
            None => s.head.uri.authority()?.as_str().as_bytes(),
        },
        (Dir::Request, b":scheme") => {
            if s.info.tls {
                b"https".as_slice()
            } else {
                b"http"
            }
        }
        (Dir::Response, b":status") => return Some(Pseudo::Status(s.resp.status.as_u16())),
        _ => return None,
    };
    Some(Pseudo::Bytes(bytes))
}

fn set_pseudo(
    lua: &Lua,
    s: &mut ReqState,
    dir: Dir,
    name: &str,
    value: Option<&str>,
) -> mlua::Result<()> {
    let Some(value) = value else {
        return Err(err(
            lua,
            format!("the pseudo-header `{name}` cannot be removed"),
        ));
    };
    match (dir, name) {
        (Dir::Request, ":path") => {
            if !value.starts_with('/') {
                return Err(err(lua, format!(":path must start with /, got `{value}`")));
            }
            s.head.uri = value
                .parse()
                .map_err(|e| err(lua, format!("invalid :path `{value}`: {e}")))?;
        }
        (Dir::Request, ":method") => {
            s.head.method = http::Method::from_bytes(value.as_bytes())
                .map_err(|_| err(lua, format!("invalid :method `{value}`")))?;
        }
        (Dir::Request, ":authority") => {
            let v = HeaderValue::from_str(value)
                .map_err(|_| err(lua, format!("invalid :authority `{value}`")))?;
            s.head.headers.insert(http::header::HOST, v);
        }
        (Dir::Response, ":status") => {
            s.resp.status = value
                .parse::<u16>()
                .ok()
                .and_then(|c| http::StatusCode::from_u16(c).ok())
                .ok_or_else(|| err(lua, format!("invalid :status `{value}`")))?;
        }
        _ => {
            return Err(err(
                lua,
                format!("the pseudo-header `{name}` cannot be set here"),
            ))
        }
    }
    Ok(())
}

/// The header-map methods, on the handle itself: `handle:headers()` returns the handle
/// (no object per call), which answers them for its direction. `get`, `add`, `replace`
/// and `remove` are reached through the C functions of [`super::raw`] first.
fn header_methods(m: &Methods) -> mlua::Result<()> {
    fn headers(scope: &Scope) -> Headers<'_> {
        Headers { scope }
    }
    m.sync("get", |lua, scope, name: mlua::LuaString| {
        headers(scope).get(lua, &name.as_bytes())
    })?;
    m.sync(
        "getAtIndex",
        |lua, scope, (name, index): (String, usize)| {
            Ok(headers(scope).values(lua, &name)?.into_iter().nth(index))
        },
    )?;
    m.sync("getNumValues", |lua, scope, name: String| {
        Ok(headers(scope).values(lua, &name)?.len())
    })?;
    for (method, append) in [("add", true), ("replace", false)] {
        m.sync(
            method,
            move |lua, scope, (name, value): (mlua::LuaString, Value)| {
                let value = sluicegate_lua::convert::as_bytes(&value)
                    .ok_or_else(|| err(lua, format!("{method}(): the value must be a string")))?;
                headers(scope).write(lua, &name.as_bytes(), Some(&value), append)
            },
        )?;
    }
    m.sync("remove", |lua, scope, name: mlua::LuaString| {
        let name = name.as_bytes();
        if name.starts_with(b":") {
            return Ok(());
        }
        headers(scope).write(lua, &name, None, false)
    })?;
    m.sync("setHttp1ReasonPhrase", |lua, scope, _reason: String| {
        // HTTP/1.1 reason phrases are always the canonical ones here.
        scope.with(lua, |_| Ok(()))
    })?;
    m.sync("__iter", |lua, scope, ()| {
        let items = headers(scope)
            .all(lua)?
            .into_iter()
            .map(|(k, v)| Ok((k, Value::String(lua.create_string(v)?))))
            .collect::<mlua::Result<Vec<_>>>()?;
        pairs_of(lua, items)
    })
}

/// `(iterator, nil, nil)` over `items`.
fn pairs_of(lua: &Lua, items: Vec<(String, Value)>) -> mlua::Result<mlua::MultiValue> {
    let mut items = items.into_iter();
    let f = lua.create_function_mut(move |lua, _: mlua::MultiValue| {
        let mut out = mlua::MultiValue::new();
        if let Some((k, v)) = items.next() {
            out.push_back(Value::String(lua.create_string(k)?));
            out.push_back(v);
        }
        Ok(out)
    })?;
    let mut out = mlua::MultiValue::new();
    out.push_back(Value::Function(f));
    Ok(out)
}

/// The request body, buffered.
pub struct Buffer(Scope);

impl Buffer {
    fn bytes(&self, lua: &Lua) -> mlua::Result<Bytes> {
        self.0.with(lua, |s| {
            Ok(match &s.body {
                RequestBody::Buffered(b) => b.clone(),
                _ => Bytes::new(),
            })
        })
    }
}

impl UserData for Buffer {
    fn add_methods<M: UserDataMethods<Self>>(m: &mut M) {
        m.add_method("length", |lua, this, ()| Ok(this.bytes(lua)?.len()));
        m.add_method("getBytes", |lua, this, (index, length): (usize, usize)| {
            let b = this.bytes(lua)?;
            if index.saturating_add(length) > b.len() {
                return Err(err(
                    lua,
                    "index/length must be >= 0 and (index + length) must be <= buffer size",
                ));
            }
            lua.create_string(&b[index..index + length])
        });
        m.add_method("setBytes", |lua, this, data: mlua::LuaString| {
            let data = Bytes::copy_from_slice(&data.as_bytes());
            let len = data.len();
            this.0.with(lua, |s| {
                s.body = RequestBody::Buffered(data);
                // The forwarded request is framed by the new body.
                s.head.headers.remove(http::header::TRANSFER_ENCODING);
                s.head
                    .headers
                    .insert(http::header::CONTENT_LENGTH, HeaderValue::from(len));
                Ok(len)
            })
        });
    }
}

/// The route's metadata (`metadata:` of the route).
pub struct Metadata(Option<Arc<serde_json::Map<String, serde_json::Value>>>);

impl UserData for Metadata {
    fn add_methods<M: UserDataMethods<Self>>(m: &mut M) {
        m.add_method("get", |lua, this, key: String| {
            match this.0.as_ref().and_then(|m| m.get(&key)) {
                Some(v) => sluicegate_lua::api::cjson::to_lua(lua, v.clone()),
                None => Ok(Value::Nil),
            }
        });
        m.add_meta_method(MetaMethod::Iter, |lua, this, ()| {
            let items = match &this.0 {
                Some(map) => map
                    .iter()
                    .map(|(k, v)| {
                        Ok((
                            k.clone(),
                            sluicegate_lua::api::cjson::to_lua(lua, v.clone())?,
                        ))
                    })
                    .collect::<mlua::Result<Vec<_>>>()?,
                None => Vec::new(),
            };
            pairs_of(lua, items)
        });
    }
}

/// `streamInfo()`.
pub struct StreamInfo(Scope);

/// Key of the dynamic metadata table in the request's `ngx.ctx` (shared by both hooks).
const DYNAMIC_METADATA: &str = "\0envoy.dynamic_metadata";

impl UserData for StreamInfo {
    fn add_methods<M: UserDataMethods<Self>>(m: &mut M) {
        m.add_method("protocol", |lua, this, ()| {
            this.0.with(lua, |s| {
                Ok(match s.info.version {
                    http::Version::HTTP_10 => "HTTP/1.0",
                    http::Version::HTTP_2 => "HTTP/2",
                    http::Version::HTTP_3 => "HTTP/3",
                    _ => "HTTP/1.1",
                })
            })
        });
        for name in ["downstreamRemoteAddress", "downstreamDirectRemoteAddress"] {
            m.add_method(name, |lua, this, ()| {
                this.0.with(lua, |s| Ok(s.info.client_addr.to_string()))
            });
        }
        m.add_method("downstreamLocalAddress", |lua, this, ()| {
            // The listener's address is not tracked per request.
            this.0.with(lua, |_| Ok(String::new()))
        });
        m.add_method("requestedServerName", |lua, this, ()| {
            // The TLS server name is not tracked per request: the empty string, as Envoy
            // answers for a connection without SNI.
            this.0.with(lua, |_| Ok(String::new()))
        });
        m.add_method("dynamicMetadata", |lua, this, ()| {
            this.0.with(lua, |_| Ok(()))?;
            let ngx: mlua::Table = lua.globals().get("ngx")?;
            let ctx: mlua::Table = ngx.get("ctx")?;
            let table = match ctx.raw_get::<Value>(DYNAMIC_METADATA)? {
                Value::Table(t) => t,
                _ => {
                    let t = lua.create_table()?;
                    ctx.raw_set(DYNAMIC_METADATA, &t)?;
                    t
                }
            };
            lua.create_userdata(DynamicMetadata(this.0.clone(), table))
        });
    }
}

/// `streamInfo():dynamicMetadata()`: filter name → key → value, kept for the request.
pub struct DynamicMetadata(Scope, mlua::Table);

impl UserData for DynamicMetadata {
    fn add_methods<M: UserDataMethods<Self>>(m: &mut M) {
        m.add_method("get", |lua, this, filter: String| {
            this.0.with(lua, |_| Ok(()))?;
            this.1.raw_get::<Value>(filter)
        });
        m.add_method(
            "set",
            |lua, this, (filter, key, value): (String, String, Value)| {
                this.0.with(lua, |_| Ok(()))?;
                let ns = match this.1.raw_get::<Value>(filter.as_str())? {
                    Value::Table(t) => t,
                    _ => {
                        let t = lua.create_table()?;
                        this.1.raw_set(filter, &t)?;
                        t
                    }
                };
                ns.raw_set(key, value)
            },
        );
        m.add_meta_method(MetaMethod::Iter, |lua, this, ()| {
            this.0.with(lua, |_| Ok(()))?;
            let items = this
                .1
                .pairs::<String, Value>()
                .collect::<mlua::Result<Vec<_>>>()?;
            pairs_of(lua, items)
        });
    }
}

/// `connection()`.
pub struct Connection(Scope);

impl UserData for Connection {
    fn add_methods<M: UserDataMethods<Self>>(m: &mut M) {
        m.add_method("ssl", |lua, this, ()| {
            let tls = this.0.with(lua, |s| Ok(s.info.tls))?;
            if tls {
                Ok(Value::UserData(lua.create_userdata(Ssl)?))
            } else {
                Ok(Value::Nil)
            }
        });
    }
}

/// `connection():ssl()` of a TLS connection. Client certificates are not requested by
/// the gateway's listeners, so none is ever presented.
pub struct Ssl;

impl UserData for Ssl {
    fn add_methods<M: UserDataMethods<Self>>(m: &mut M) {
        m.add_method("peerCertificatePresented", |_, _, ()| Ok(false));
        m.add_method("peerCertificateValidated", |_, _, ()| Ok(false));
        for name in [
            "sha256PeerCertificateDigest",
            "serialNumberPeerCertificate",
            "issuerPeerCertificate",
            "subjectPeerCertificate",
            "urlEncodedPemEncodedPeerCertificate",
            "urlEncodedPemEncodedPeerCertificateChain",
            "sessionId",
            // The negotiated version and suite are not tracked per request.
            "ciphersuiteString",
            "tlsVersion",
        ] {
            m.add_method(name, |_, _, ()| Ok(String::new()));
        }
        m.add_method("uriSanPeerCertificate", |lua, _, ()| lua.create_table());
        m.add_method("dnsSansPeerCertificate", |lua, _, ()| lua.create_table());
    }
}

/// A key from `importPublicKey` (empty when the DER did not parse).
pub struct PublicKey(Option<Arc<sluicegate_jwt::keys::Material>>);

impl UserData for PublicKey {}
