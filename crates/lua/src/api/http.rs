//! `sluicegate.http.request`: non-blocking outbound HTTP/1.1 (like lua-resty-http's
//! `request_uri`). The script waits without blocking the worker, and the wait does not
//! count against its CPU budget. One connection per request; `https` verifies certificates
//! against the web roots unless `ssl_verify = false`.
//!
//! ```lua
//! local res, err = sluicegate.http.request("http://127.0.0.1:8081/check", {
//!   method = "POST", headers = { ["Content-Type"] = "application/json" },
//!   body = cjson.encode(payload), timeout_ms = 2000,
//! })
//! if not res then ngx.log(ngx.ERR, err) return ngx.exit(502) end
//! ngx.say(res.status, " ", res.body)
//! ```

use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use mlua::{Lua, Table, Value};

use super::super::vm::Host;
use super::super::{convert, Kinds};

/// Default total time for one request.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// Default limit on the response body.
const DEFAULT_MAX_BODY: usize = 10 * 1024 * 1024;

/// One outbound request, parsed from the Lua arguments.
struct Spec {
    uri: Uri,
    method: Method,
    headers: HeaderMap,
    body: Bytes,
    timeout: Duration,
    max_body: usize,
    verify: bool,
}

fn parse(lua: &Lua, first: Value, second: Option<Table>) -> mlua::Result<Spec> {
    let (url, opts) = match first {
        Value::String(s) => (s.to_string_lossy(), second),
        Value::Table(t) => (
            t.raw_get::<String>("url")
                .map_err(|_| convert::error(lua, "sluicegate.http.request: `url` is required"))?,
            Some(t),
        ),
        other => {
            return Err(convert::error(
                lua,
                format!(
                    "sluicegate.http.request: a URL or an options table is expected, got {}",
                    other.type_name()
                ),
            ))
        }
    };
    let uri: Uri = url.parse().map_err(|e| {
        convert::error(
            lua,
            format!("sluicegate.http.request: bad URL `{url}`: {e}"),
        )
    })?;
    if !matches!(uri.scheme_str(), Some("http") | Some("https")) || uri.host().is_none() {
        return Err(convert::error(lua, format!("sluicegate.http.request: the URL must be http:// or https:// with a host, got `{url}`")));
    }
    let mut spec = Spec {
        uri,
        method: Method::GET,
        headers: HeaderMap::new(),
        body: Bytes::new(),
        timeout: DEFAULT_TIMEOUT,
        max_body: DEFAULT_MAX_BODY,
        verify: true,
    };
    let Some(opts) = opts else { return Ok(spec) };
    if let Some(m) = opts.raw_get::<Option<String>>("method")? {
        spec.method = Method::from_bytes(m.to_ascii_uppercase().as_bytes())
            .map_err(|_| convert::error(lua, format!("bad method `{m}`")))?;
    }
    if let Some(headers) = opts.raw_get::<Option<Table>>("headers")? {
        for kv in headers.pairs::<mlua::LuaString, Value>() {
            let (k, v) = kv?;
            super::req::set_header(lua, &mut spec.headers, &k.as_bytes(), &v, false)?;
        }
    }
    if let Some(body) = opts.raw_get::<Option<mlua::LuaString>>("body")? {
        spec.body = Bytes::copy_from_slice(&body.as_bytes());
    }
    if let Some(ms) = opts
        .raw_get::<Option<f64>>("timeout_ms")?
        .or(opts.raw_get::<Option<f64>>("timeout")?)
    {
        spec.timeout = Duration::from_millis(ms.clamp(1.0, 3_600_000.0) as u64);
    }
    if let Some(max) = opts.raw_get::<Option<usize>>("max_body_bytes")? {
        spec.max_body = max;
    }
    if let Some(v) = opts.raw_get::<Option<bool>>("ssl_verify")? {
        spec.verify = v;
    }
    Ok(spec)
}

/// One outbound HTTP/1.1 request from another API area (the Envoy filter's `httpCall`):
/// certificates verified, the response body limited to 10 MiB, the whole exchange bounded
/// by `timeout`. Resolves to status, headers and body, or the reason it failed.
pub async fn fetch(
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
    timeout: Duration,
    tls: crate::HttpTls,
) -> Result<(u16, HeaderMap, Bytes), String> {
    let spec = Spec {
        uri,
        method,
        headers,
        body,
        timeout,
        max_body: DEFAULT_MAX_BODY,
        verify: true,
    };
    match tokio::time::timeout(timeout, send(spec, tls)).await {
        Ok(r) => r,
        Err(_) => Err(format!("timed out after {} ms", timeout.as_millis())),
    }
}

trait Io: hyper::rt::Read + hyper::rt::Write + Unpin {}
impl<T: hyper::rt::Read + hyper::rt::Write + Unpin> Io for T {}

async fn send(spec: Spec, tls: crate::HttpTls) -> Result<(u16, HeaderMap, Bytes), String> {
    let https = spec.uri.scheme_str() == Some("https");
    let host = spec
        .uri
        .host()
        .unwrap_or("")
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let port = spec.uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    let tcp = tokio::net::TcpStream::connect((host.as_str(), port))
        .await
        .map_err(|e| format!("connect to {host}:{port} failed: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let io: Box<dyn Io> = if https {
        let config = tls(spec.verify)?;
        let name = rustls::pki_types::ServerName::try_from(host.clone())
            .map_err(|e| format!("bad TLS server name `{host}`: {e}"))?;
        let stream = tokio_rustls::TlsConnector::from(Arc::clone(&config))
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS handshake with {host}:{port} failed: {e}"))?;
        Box::new(TokioIo::new(stream))
    } else {
        Box::new(TokioIo::new(tcp))
    };
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| format!("HTTP handshake failed: {e}"))?;
    tokio::task::spawn_local(async move {
        let _ = conn.await;
    });
    let mut builder = http::Request::builder()
        .method(spec.method)
        .uri(spec.uri.path_and_query().map_or("/", |p| p.as_str()));
    if let Some(h) = builder.headers_mut() {
        *h = spec.headers;
        if !h.contains_key(http::header::HOST) {
            let authority = spec.uri.authority().map_or(host.as_str(), |a| a.as_str());
            if let Ok(v) = HeaderValue::from_str(authority) {
                h.insert(http::header::HOST, v);
            }
        }
        h.entry(http::header::USER_AGENT)
            .or_insert(HeaderValue::from_static("sluicegate-lua"));
    }
    let req = builder
        .body(Full::new(spec.body))
        .map_err(|e| format!("bad request: {e}"))?;
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| format!("request failed: {e}"))?;
    let (parts, body) = resp.into_parts();
    let body = Limited::new(body, spec.max_body)
        .collect()
        .await
        .map_err(|e| format!("reading the response body failed: {e}"))?
        .to_bytes();
    Ok((parts.status.as_u16(), parts.headers, body))
}

fn response(lua: &Lua, status: u16, headers: &HeaderMap, body: &[u8]) -> mlua::Result<Table> {
    let t = lua.create_table()?;
    t.raw_set("status", status)?;
    let (h, _) = super::req::headers_table(lua, headers, 0, None)?;
    t.raw_set("headers", h)?;
    t.raw_set("body", lua.create_string(body)?)?;
    Ok(t)
}

/// Registers `sluicegate.http`.
pub fn register(lua: &Lua, host: &Rc<Host>, sluicegate: &Table) -> mlua::Result<()> {
    let http = lua.create_table()?;
    let h = host.clone();
    let request =
        lua.create_async_function(move |lua, (first, second): (Value, Option<Table>)| {
            let spec = h
                .check(&lua, "sluicegate.http.request", Kinds::WAIT)
                .and_then(|_| h.check_async(&lua, "sluicegate.http.request"))
                .and_then(|_| parse(&lua, first, second));
            let tls = h.rt.http_tls;
            async move {
                let spec = spec?;
                let timeout = spec.timeout;
                let outcome = match tokio::time::timeout(timeout, send(spec, tls)).await {
                    Ok(r) => r,
                    Err(_) => Err(format!("timed out after {} ms", timeout.as_millis())),
                };
                let mut out = mlua::MultiValue::new();
                match outcome {
                    Ok((status, headers, body)) => {
                        out.push_back(Value::Table(response(&lua, status, &headers, &body)?))
                    }
                    Err(e) => {
                        out.push_back(Value::Nil);
                        out.push_back(Value::String(lua.create_string(e)?));
                    }
                }
                Ok(out)
            }
        })?;
    http.raw_set("request_uri", request.clone())?;
    http.raw_set("request", request)?;
    sluicegate.raw_set("http", http)?;
    Ok(())
}
