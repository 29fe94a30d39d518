//! Cosockets against real servers: a RESP client and an HTTP/1.1 client written in Lua on
//! `ngx.socket.tcp` (the way lua-resty-redis and lua-resty-http use it) against a real
//! `redis-server` and a real HTTP server, then every bad-input path: connect refused and
//! timed out, read timeouts that leave the socket usable, a peer closing mid-read, a
//! script that leaves sockets open, the CPU budget hit while a socket waits, sockets in
//! timers and where they are refused, UDP, and TLS with and without verification.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use sluicegate_core::phase::{Flow, Phase, Plugin, PluginError};
use sluicegate_lua::harness::{FakeRequest, Harness};
use sluicegate_lua::LuaSettings;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

mod support;
use support::run;

/// A minimal RESP client on cosockets (commands as arrays, replies of every type).
const RESP: &str = r#"
local function resp_connect(port)
  local sock = ngx.socket.tcp()
  sock:settimeout(2000)
  local ok, err = sock:connect("127.0.0.1", port)
  if not ok then return nil, err end
  return sock
end
local function read_reply(sock)
  local line, err = sock:receive()
  if not line then return nil, err end
  local kind, rest = string.sub(line, 1, 1), string.sub(line, 2)
  if kind == "+" then return rest
  elseif kind == "-" then return false, rest
  elseif kind == ":" then return tonumber(rest)
  elseif kind == "$" then
    local n = tonumber(rest)
    if n < 0 then return ngx.null end
    local data, err2 = sock:receive(n + 2)
    if not data then return nil, err2 end
    return string.sub(data, 1, n)
  elseif kind == "*" then
    local out = {}
    for i = 1, tonumber(rest) do out[i] = read_reply(sock) end
    return out
  end
  return nil, "bad reply " .. line
end
local function command(sock, ...)
  local args = { ... }
  local req = { "*", #args, "\r\n" }
  for _, a in ipairs(args) do
    a = tostring(a)
    req[#req + 1] = { "$", #a, "\r\n", a, "\r\n" }
  end
  local bytes, err = sock:send(req)
  if not bytes then return nil, err end
  return read_reply(sock)
end
"#;

fn settings() -> LuaSettings {
    LuaSettings {
        shared_dicts: vec![("results".into(), 65536)],
        ..LuaSettings::default()
    }
}

fn script(phase: Phase, code: &str) -> sluicegate_lua::plugin::Lua {
    sluicegate_luacompat::install();
    sluicegate_lua::provide_http_tls(test_tls);
    let s = sluicegate_lua::compile("sock", &format!("{RESP}\n{code}")).unwrap();
    sluicegate_lua::plugin::Lua::new(Arc::new(s), phase)
}

/// The body a content script answered with, or its error.
async fn content(h: &Harness, code: &str) -> Result<String, String> {
    let p = script(Phase::Content, code);
    let mut ctx = h.request(FakeRequest::default());
    match p.content(&mut ctx).run().await {
        Ok(Flow::Respond(r)) => Ok(String::from_utf8_lossy(&r.body).into_owned()),
        Ok(Flow::Continue) => Err("continued".into()),
        Err(PluginError::Script {
            message,
            over_budget,
            ..
        }) => Err(format!(
            "{}{message}",
            if over_budget { "budget: " } else { "" }
        )),
        Err(e) => Err(e.to_string()),
    }
}

fn test_tls(verify: bool) -> Result<Arc<rustls::ClientConfig>, String> {
    let cfg = sluicegate_config::file::UpstreamTlsConfig {
        verify: Some(verify),
        ..Default::default()
    };
    sluicegate_upstream::tls::client_config(
        &cfg,
        std::path::Path::new("."),
        sluicegate_upstream::Protocol::Http1,
    )
}

/// A TCP server on an ephemeral port; `handle` serves each connection.
async fn server<F, Fut>(handle: F) -> SocketAddr
where
    F: Fn(tokio::net::TcpStream) -> Fut + 'static,
    Fut: std::future::Future<Output = ()> + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::task::spawn_local(async move {
        while let Ok((s, _)) = listener.accept().await {
            tokio::task::spawn_local(handle(s));
        }
    });
    addr
}

/// A small HTTP/1.1 server: `/len` answers with a Content-Length body, `/chunked` with
/// a chunked one, `/close` with a body ended by closing the connection.
async fn http_server() -> SocketAddr {
    server(|s| async move {
        let (r, mut w) = s.into_split();
        let mut r = BufReader::new(r);
        loop {
            let mut line = String::new();
            if r.read_line(&mut line).await.unwrap_or(0) == 0 {
                return;
            }
            let path = line.split_whitespace().nth(1).unwrap_or("/").to_string();
            loop {
                let mut h = String::new();
                if r.read_line(&mut h).await.unwrap_or(0) == 0 || h == "\r\n" {
                    break;
                }
            }
            let out: &[u8] = match path.as_str() {
                "/len" => b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\nX-Test: yes\r\n\r\nhello world",
                "/chunked" => b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
                _ => b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil the end",
            };
            let _ = w.write_all(out).await;
            if path == "/close" {
                return;
            }
        }
    })
    .await
}

const HTTP_CLIENT: &str = r#"
local function get(sock, path)
  assert(sock:send({ "GET ", path, " HTTP/1.1\r\nHost: test\r\n\r\n" }))
  local status = assert(sock:receive("*l"))
  local headers = {}
  while true do
    local line = assert(sock:receive())
    if line == "" then break end
    local k, v = string.match(line, "^([^:]+):%s*(.*)$")
    headers[string.lower(k)] = v
  end
  local body
  if headers["content-length"] then
    body = assert(sock:receive(tonumber(headers["content-length"])))
  elseif headers["transfer-encoding"] == "chunked" then
    local parts = {}
    local read_line = sock:receiveuntil("\r\n")
    while true do
      local size = tonumber(assert(read_line()), 16)
      if size == 0 then assert(read_line()) break end
      parts[#parts + 1] = assert(sock:receive(size))
      assert(sock:receive(2))
    end
    body = table.concat(parts)
  else
    body = assert(sock:receive("*a"))
  end
  return status, headers, body
end
"#;

#[test]
fn a_resp_client_talks_to_a_real_redis_and_reuses_pooled_connections() {
    let redis = sluicegate_testkit::redis::RedisServer::start();
    let port = redis.port();
    run(async move {
        let h = Harness::new(settings()).unwrap();
        let code = format!(
            r#"
local sock = assert(resp_connect({port}))
local reused = sock:getreusedtimes()
assert(command(sock, "SET", "greeting", "hello"))
local v = command(sock, "GET", "greeting")
local missing = command(sock, "GET", "nothing")
local n = command(sock, "INCR", "counter")
local ok, err = command(sock, "NOSUCHCOMMAND")
-- a pipeline: two commands sent at once, two replies read
sock:send({{ "*1\r\n$4\r\nPING\r\n", "*2\r\n$4\r\nECHO\r\n$2\r\nhi\r\n" }})
local pong, echo = read_reply(sock), read_reply(sock)
assert(sock:setkeepalive(10000, 10))
local after, closed = sock:send("x")
ngx.say(reused, " ", v, " ", tostring(missing == ngx.null), " ", n, " ", tostring(ok), " ", string.sub(err, 1, 3), " ", pong, " ", echo, " ", tostring(after), " ", closed)
"#
        );
        let first = content(&h, &code).await.unwrap();
        assert_eq!(first, "0 hello true 1 false ERR PONG hi nil closed\n");
        let second = content(&h, &code).await.unwrap();
        assert!(second.starts_with("1 hello true 2 "), "{second}");
        assert_eq!(sluicegate_luacompat::socket::pool::idle_count(), 1);
    });
}

#[test]
fn an_http_client_reads_length_chunked_and_close_delimited_bodies() {
    run(async {
        let addr = http_server().await;
        let h = Harness::new(settings()).unwrap();
        let code = format!(
            r#"{HTTP_CLIENT}
local sock = ngx.socket.tcp()
sock:settimeouts(1000, 1000, 1000)
assert(sock:connect("localhost", {port}))
local s1, h1, b1 = get(sock, "/len")
local s2, _, b2 = get(sock, "/chunked")
local s3, _, b3 = get(sock, "/close")
ngx.say(s1, "|", h1["x-test"], "|", b1, "|", b2, "|", b3)
local again, err = sock:receive()
ngx.say(tostring(again), " ", err)
"#,
            port = addr.port()
        );
        let out = content(&h, &code).await.unwrap();
        assert_eq!(
            out,
            "HTTP/1.1 200 OK|yes|hello world|hello world|until the end\nnil closed\n"
        );
    });
}

#[test]
fn connect_failures_and_timeouts_are_return_values() {
    run(async {
        let h = Harness::new(settings()).unwrap();
        // A port nobody listens on.
        let free = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = free.local_addr().unwrap().port();
        drop(free);
        // A listener that never accepts, with its backlog full: connects hang.
        let full = tokio::net::TcpSocket::new_v4().unwrap();
        full.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let full = full.listen(0).unwrap();
        let full_port = full.local_addr().unwrap().port();
        let mut fillers = Vec::new();
        for _ in 0..4 {
            if let Ok(Ok(c)) = tokio::time::timeout(
                Duration::from_millis(100),
                tokio::net::TcpStream::connect(("127.0.0.1", full_port)),
            )
            .await
            {
                fillers.push(c);
            }
        }
        let code = format!(
            r#"
local s = ngx.socket.tcp()
local ok, err = s:connect("127.0.0.1", {port})
local s2 = ngx.socket.tcp()
s2:settimeout(100)
local t0 = ngx.now()
local ok2, err2 = s2:connect("127.0.0.1", {full_port})
local s3 = ngx.socket.tcp()
local ok3, err3 = s3:connect("no-such-host.invalid", 80)
local sent, err4 = s3:send("x")
ngx.say(tostring(ok), " ", err, "|", tostring(ok2), " ", err2, "|", tostring(ok3), " ", err3, "|", tostring(sent), " ", err4)
"#
        );
        let out = content(&h, &code).await.unwrap();
        assert_eq!(
            out,
            "nil connection refused|nil timeout|nil no-such-host.invalid could not be resolved|nil closed\n"
        );
        drop(fillers);
    });
}

#[test]
fn a_read_timeout_leaves_the_socket_usable_and_a_peer_closing_mid_read_returns_the_partial() {
    run(async {
        // Answers "pong" to "ping"; says nothing before.
        let ping = server(|s| async move {
            let (r, mut w) = s.into_split();
            let mut r = BufReader::new(r);
            let mut line = String::new();
            while r.read_line(&mut line).await.unwrap_or(0) > 0 {
                let _ = w.write_all(b"pong\n").await;
                line.clear();
            }
        })
        .await;
        // Sends half a reply, then closes.
        let half = server(|mut s| async move {
            let _ = s.write_all(b"partial").await;
        })
        .await;
        let h = Harness::new(settings()).unwrap();
        let code = format!(
            r#"
local s = ngx.socket.tcp()
assert(s:connect("127.0.0.1", {ping}))
s:settimeout(50)
local line, err, partial = s:receive()
assert(s:send("ping\n"))
s:settimeout(1000)
local pong = s:receive("*l")
local any = (s:send("ping\n") and s:receiveany(100))
local c = ngx.socket.tcp()
assert(c:connect("127.0.0.1", {half}))
local data, err2, partial2 = c:receive(100)
local after, err3 = c:receive()
ngx.say(tostring(line), " ", err, " [", partial, "] ", pong, " ", any, "|", tostring(data), " ", err2, " [", partial2, "] ", tostring(after), " ", err3)
"#,
            ping = ping.port(),
            half = half.port()
        );
        let out = content(&h, &code).await.unwrap();
        assert_eq!(
            out,
            "nil timeout [] pong pong\n|nil closed [partial] nil closed\n"
        );
    });
}

#[test]
fn a_send_larger_than_the_kernel_takes_at_once_arrives_whole_and_once() {
    run(async {
        // Reads nothing for a while (the kernel's buffers fill up), then reads the
        // length-prefixed payload and says whether it is the one expected, byte for byte.
        let slow = server(|s| async move {
            let (r, mut w) = s.into_split();
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            let mut r = BufReader::new(r);
            let mut line = String::new();
            if r.read_line(&mut line).await.unwrap_or(0) == 0 {
                return;
            }
            let n: usize = line.trim().parse().unwrap();
            let mut body = vec![0u8; n];
            r.read_exact(&mut body).await.unwrap();
            // 251 bytes (a prime) repeated: a piece lost, doubled or moved shows.
            let block: Vec<u8> = (0..251u32).map(|i| (i * 7 % 256) as u8).collect();
            let expected = block.repeat(33_420);
            let verdict = if body == expected {
                "same"
            } else {
                "different"
            };
            let _ = w.write_all(format!("{n} {verdict}\n").as_bytes()).await;
        })
        .await;
        let h = Harness::new(settings()).unwrap();
        let code = format!(
            r#"
local block = {{}}
for i = 0, 250 do block[i + 1] = string.char(i * 7 % 256) end
local payload = string.rep(table.concat(block), 33420)
-- As an array (put together by the Rust method) and as one string (tried in C first).
for _, form in {{"array", "string"}} do
  local s = ngx.socket.tcp()
  s:settimeout(5000)
  assert(s:connect("127.0.0.1", {port}))
  local data = {{#payload, "\n", payload}}
  if form == "string" then data = table.concat(data) end
  local sent = assert(s:send(data))
  ngx.say(form, " ", sent == #payload + #tostring(#payload) + 1, " ", s:receive())
  s:close()
end
"#,
            port = slow.port()
        );
        let out = content(&h, &code).await.unwrap();
        assert_eq!(
            out, "array true 8388420 same\nstring true 8388420 same\n",
            "8 MiB sent once, in order, its whole length returned"
        );
    });
}

#[test]
fn reads_answered_from_the_buffer_and_the_kernel_match_waiting_ones() {
    run(async {
        // Sends everything at once and waits: every later read is in the buffer already.
        let burst = server(|mut s| async move {
            let _ = s.write_all(b"one\r\ntwo\nthree-four").await;
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        })
        .await;
        let h = Harness::new(settings()).unwrap();
        let code = format!(
            r#"
local s = ngx.socket.tcp()
s:settimeout(1000)
assert(s:connect("127.0.0.1", {port}))
local a = s:receive()
local b = s:receive("*l")
local c = s:receive(5)
local d = s:receive(1)
s:settimeout(50)
local e, err, partial = s:receive(10)
ngx.say(a, " ", b, " ", c, " ", d, " ", tostring(e), " ", err, " [", partial, "]")
"#,
            port = burst.port()
        );
        let out = content(&h, &code).await.unwrap();
        assert_eq!(out, "one two three - nil timeout [four]\n");
    });
}

#[test]
fn receiveuntil_finds_patterns_inclusive_and_in_sized_pieces() {
    run(async {
        let addr = server(|mut s| async move {
            let _ = s
                .write_all(b"first--END--second part--END--tail--END--x")
                .await;
            let mut sink = [0u8; 16];
            let _ = s.read(&mut sink).await;
        })
        .await;
        let h = Harness::new(settings()).unwrap();
        let code = format!(
            r#"
local s = ngx.socket.tcp()
s:settimeout(1000)
assert(s:connect("127.0.0.1", {port}))
local plain = s:receiveuntil("--END--")
local inclusive = s:receiveuntil("--END--", {{ inclusive = true }})
local a = plain()
local b = inclusive()
local pieces = {{}}
while true do
  local chunk, err = plain(3)
  if not chunk then assert(err == nil, err) break end
  pieces[#pieces + 1] = chunk
end
ngx.say(a, "|", b, "|", table.concat(pieces, ","))
"#,
            port = addr.port()
        );
        let out = content(&h, &code).await.unwrap();
        assert_eq!(out, "first|second part--END--|tai,l\n");
    });
}

/// A server that reports, through the channel, when a connection's peer closed it.
async fn eof_watcher(
    delay_reply: Option<Duration>,
) -> (SocketAddr, tokio::sync::mpsc::UnboundedReceiver<()>) {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let addr = server(move |mut s| {
        let tx = tx.clone();
        async move {
            if let Some(d) = delay_reply {
                tokio::time::sleep(d).await;
                let _ = s.write_all(b"late\n").await;
            }
            let mut buf = [0u8; 64];
            loop {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
            let _ = tx.send(());
        }
    })
    .await;
    (addr, rx)
}

#[test]
fn sockets_a_script_leaves_open_are_closed_when_its_call_ends() {
    run(async {
        let (addr, mut closed) = eof_watcher(None).await;
        let h = Harness::new(settings()).unwrap();
        let code = format!(
            r#"
keep = {{}}
for i = 1, 3 do
  local s = ngx.socket.tcp()
  assert(s:connect("127.0.0.1", {port}))
  keep[i] = s
end
ngx.say("left open")
"#,
            port = addr.port()
        );
        assert_eq!(content(&h, &code).await.unwrap(), "left open\n");
        for _ in 0..3 {
            tokio::time::timeout(Duration::from_secs(2), closed.recv())
                .await
                .expect("the server sees each connection closed");
        }
    });
}

#[test]
fn waiting_on_a_socket_is_free_but_spinning_after_it_hits_the_budget() {
    run(async {
        let (addr, mut closed) = eof_watcher(Some(Duration::from_millis(150))).await;
        let h = Harness::new(LuaSettings {
            cpu_budget: Duration::from_millis(30),
            ..settings()
        })
        .unwrap();
        let code = format!(
            r#"
local s = ngx.socket.tcp()
assert(s:connect("127.0.0.1", {port}))
local line = assert(s:receive())
if ngx.var.uri == "/spin" then while true do end end
ngx.say(line)
"#,
            port = addr.port()
        );
        // 150 ms of waiting under a 30 ms budget: fine.
        assert_eq!(content(&h, &code).await.unwrap(), "late\n");
        closed.recv().await;
        let p = script(Phase::Content, &code);
        let mut ctx = h.request(FakeRequest {
            uri: http::Uri::from_static("/spin"),
            ..FakeRequest::default()
        });
        match p.content(&mut ctx).run().await {
            Err(PluginError::Script {
                over_budget,
                message,
                ..
            }) => {
                assert!(over_budget, "{message}");
            }
            other => panic!("expected a budget failure, got {other:?}"),
        }
        tokio::time::timeout(Duration::from_secs(2), closed.recv())
            .await
            .expect("the socket of the failed call is closed");
    });
}

#[test]
fn timers_use_sockets_and_filters_may_not() {
    let redis = sluicegate_testkit::redis::RedisServer::start();
    let port = redis.port();
    run(async move {
        let h = Harness::new(settings()).unwrap();
        let code = format!(
            r#"
assert(ngx.timer.at(0, function()
  local sock = assert(resp_connect({port}))
  assert(command(sock, "SET", "from-timer", "yes"))
  ngx.shared.results:set("timer", command(sock, "GET", "from-timer"))
end))
ngx.say("scheduled")
"#
        );
        // The plugin (and so its script) stays alive: timers of a dropped script stop.
        let p = script(Phase::Content, &code);
        let mut ctx = h.request(FakeRequest::default());
        assert!(matches!(
            p.content(&mut ctx).run().await,
            Ok(Flow::Respond(_))
        ));
        let mut value = String::new();
        for _ in 0..100 {
            tokio::time::sleep(Duration::from_millis(20)).await;
            value = content(&h, "ngx.say(tostring(ngx.shared.results:get('timer')))")
                .await
                .unwrap();
            if value == "yes\n" {
                break;
            }
        }
        assert_eq!(value, "yes\n");

        let p = script(Phase::HeaderFilter, "local s = ngx.socket.tcp()");
        let mut ctx = h.request(FakeRequest::default());
        let mut resp = http::Response::new(()).into_parts().0;
        let err = p
            .header_filter(&mut ctx, &mut resp)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("ngx.socket.tcp is not allowed in the header_filter phase"),
            "{err}"
        );
    });
}

#[test]
fn a_socket_is_sealed_and_its_methods_refuse_other_values_and_closed_sockets_say_so() {
    run(async {
        let h = Harness::new(settings()).unwrap();
        let body = content(
            &h,
            r#"
local sock = ngx.socket.tcp()
local out = {}
local function try(f, ...)
  local ok, err = pcall(f, ...)
  out[#out + 1] = tostring(ok) .. " " .. tostring(err):match("^[^\n]*")
end
try(sock.connect, "127.0.0.1", 1)
try(sock.send, {}, "x")
try(sock.settimeout, 5, 100)
try(sock.setkeepalive, nil)
try(function() sock.send = nil end)
out[#out + 1] = tostring(getmetatable(sock))
out[#out + 1] = tostring((sock:settimeout(100)))
for _, m in {"send", "receive", "setkeepalive", "close"} do
  local a, b = sock[m](sock, m == "send" and "x" or nil)
  out[#out + 1] = m .. " " .. tostring(a) .. " " .. tostring(b)
end
-- Sockets made and dropped are collected with what they hold.
for _ = 1, 20000 do ngx.socket.tcp():settimeout(1) end
ngx.print(table.concat(out, "\n"))
"#,
        )
        .await
        .unwrap();
        let lines: Vec<&str> = body.lines().collect();
        for line in &lines[..4] {
            assert!(
                line.starts_with("false ") && line.contains("expected a TCP socket"),
                "{body}"
            );
        }
        assert!(lines[4].starts_with("false "), "{body}");
        assert_eq!(
            &lines[5..],
            [
                "The metatable is locked",
                "nil",
                "send nil closed",
                "receive nil closed",
                "setkeepalive nil closed",
                "close nil closed",
            ],
            "{body}"
        );
    });
}

#[test]
fn a_socket_kept_for_the_next_request_is_refused_there() {
    run(async {
        let (addr, _closed) = eof_watcher(None).await;
        sluicegate_luacompat::install();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("keep.lua"), "return {}").unwrap();
        let set = Arc::new(sluicegate_lua::Modules::load(&[dir.path().into()]).unwrap());
        let code = format!(
            r#"
local keep = require "keep"
if keep.sock then
  local ok, err = keep.sock:send("x")
  local ok2, err2 = keep.sock:close()
  ngx.say(tostring(ok), " ", err, " ", tostring(ok2), " ", err2)
  return
end
keep.sock = ngx.socket.tcp()
assert(keep.sock:connect("127.0.0.1", {port}))
ngx.say("kept")
"#,
            port = addr.port()
        );
        let s = sluicegate_lua::compile("keep", &code).unwrap().using(&set);
        let p = sluicegate_lua::plugin::Lua::new(Arc::new(s), Phase::Content);
        let h = Harness::new(settings()).unwrap();
        let mut bodies = Vec::new();
        for _ in 0..2 {
            let mut ctx = h.request(FakeRequest::default());
            match p.content(&mut ctx).run().await {
                Ok(Flow::Respond(r)) => bodies.push(String::from_utf8_lossy(&r.body).into_owned()),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(bodies, ["kept\n", "nil closed nil closed\n"]);
    });
}

#[test]
fn udp_sockets_send_and_receive_datagrams() {
    run(async {
        let echo = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let port = echo.local_addr().unwrap().port();
        tokio::task::spawn_local(async move {
            let mut buf = [0u8; 512];
            while let Ok((n, from)) = echo.recv_from(&mut buf).await {
                let mut reply = b"echo:".to_vec();
                reply.extend_from_slice(&buf[..n]);
                let _ = echo.send_to(&reply, from).await;
            }
        });
        let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let silent_port = silent.local_addr().unwrap().port();
        let h = Harness::new(settings()).unwrap();
        let code = format!(
            r#"
local u = ngx.socket.udp()
assert(u:setpeername("127.0.0.1", {port}))
u:settimeout(1000)
assert(u:send({{ "que", "ry" }}))
local reply = u:receive()
local q = ngx.socket.udp()
assert(q:setpeername("127.0.0.1", {silent_port}))
q:settimeout(50)
q:send("hello?")
local none, err = q:receive()
assert(u:close())
local after, err2 = u:send("x")
ngx.say(reply, " ", tostring(none), " ", err, " ", tostring(after), " ", err2)
"#
        );
        let out = content(&h, &code).await.unwrap();
        assert_eq!(out, "echo:query nil timeout nil closed\n");
        drop(silent);
    });
}

#[test]
fn tls_handshakes_verify_by_default() {
    run(async {
        let cert = rcgen::generate_simple_self_signed(vec!["tls.test".to_string()]).unwrap();
        let chain = vec![cert.cert.der().clone()];
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(
            rustls::pki_types::PrivatePkcs8KeyDer::from(cert.key_pair.serialize_der()),
        );
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let addr = server(move |s| {
            let acceptor = acceptor.clone();
            async move {
                if let Ok(mut tls) = acceptor.accept(s).await {
                    let mut buf = [0u8; 64];
                    if let Ok(n) = tls.read(&mut buf).await {
                        let _ = tls.write_all(&buf[..n]).await;
                        let _ = tls.flush().await;
                    }
                }
            }
        })
        .await;
        let h = Harness::new(settings()).unwrap();
        let code = format!(
            r#"
local s = ngx.socket.tcp()
s:settimeout(2000)
assert(s:connect("127.0.0.1", {port}))
local ok, err = s:sslhandshake(nil, "tls.test")
local t = ngx.socket.tcp()
t:settimeout(2000)
assert(t:connect("127.0.0.1", {port}))
local ok2, err2 = t:sslhandshake(false, "tls.test", false)
assert(t:send("secret\n"))
local back = t:receive()
ngx.say(tostring(ok), " ", tostring(string.find(err, "handshake failed", 1, true) ~= nil), " ", tostring(ok2), " ", back)
"#,
            port = addr.port()
        );
        let out = content(&h, &code).await.unwrap();
        assert_eq!(out, "nil true true secret\n");
    });
}
