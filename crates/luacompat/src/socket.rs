//! `ngx.socket.tcp()` and `ngx.socket.udp()`: OpenResty's cosockets, with its methods,
//! return values and error strings, so libraries written on them (lua-resty-redis,
//! lua-resty-http, lua-resty-memcached...) run unchanged.
//!
//! Design:
//! - A socket object is a userdata of `raw`'s tag owning an `Rc<RefCell<Tcp>>`; the calls
//!   a pooled request-reply client makes on every request are done in C there, everything
//!   else by the Rust methods here. An operation takes the
//!   connection out of the cell for as long as it waits (never holding a borrow across an
//!   await), so a second coroutine using the same object meanwhile gets `"socket busy"`.
//! - Every connection is owned by the call that connected it: `connect` pushes a
//!   `Guard` into the call's owned resources, and dropping it (when the request phase or
//!   timer run ends) closes the connection. Operations from any other call — a socket kept
//!   in a module table for the next request — get `nil, "bad request"`, as in OpenResty,
//!   and never reach the connection.
//! - `setkeepalive` hands the connection to the worker's pool ([`pool`]), keyed by the pool
//!   name (`host:port` by default); `connect` takes from it first. A pooled connection the
//!   peer closed, or one past its idle time, is never handed out.
//! - Waiting does not count against the CPU budget (the methods are async functions), and
//!   every wait is bounded: connect, send and read timeouts default to 60 s
//!   (`lua_socket_*_timeout`), and 0 means that default, never "forever".
//! - `connect` (from the pool), `send` and `receive` first try to finish without waiting
//!   (plain functions); only when they must wait do they run as async functions, whose
//!   coroutine round costs several times more. A `send` the kernel took only part of
//!   leaves the rest to its waiting version, which writes just that.
//! - Reads go through a per-connection buffer; a line or a `receiveuntil` chunk longer than
//!   [`MAX_BUFFERED`] fails instead of growing without end.

pub mod pool;
mod raw;
mod udp;

use std::cell::RefCell;
use std::rc::{Rc, Weak};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use mlua::{FromLua, Lua, MultiValue, Table, Value};
use sluicegate_lua::vm::Host;
use sluicegate_lua::Kinds;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// OpenResty's default connect, send and read timeouts (`lua_socket_*_timeout 60s`).
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);
/// Most bytes one read may hold while it looks for a line end or a pattern (16 MiB).
pub const MAX_BUFFERED: usize = 16 * 1024 * 1024;
/// Bytes asked of the kernel per read.
const READ_CHUNK: usize = 16 * 1024;

/// The transport under a connection.
pub(crate) enum Stream {
    Tcp(tokio::net::TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>),
    Unix(tokio::net::UnixStream),
}

impl Stream {
    async fn read_buf(&mut self, buf: &mut BytesMut) -> std::io::Result<usize> {
        buf.reserve(READ_CHUNK);
        match self {
            Stream::Tcp(s) => s.read_buf(buf).await,
            Stream::Tls(s) => s.read_buf(buf).await,
            Stream::Unix(s) => s.read_buf(buf).await,
        }
    }

    async fn write_all(&mut self, data: &[u8]) -> std::io::Result<()> {
        match self {
            Stream::Tcp(s) => s.write_all(data).await,
            Stream::Tls(s) => {
                s.write_all(data).await?;
                s.flush().await
            }
            Stream::Unix(s) => s.write_all(data).await,
        }
    }

    /// Reads what the kernel already holds, without waiting: `None` when that would wait
    /// (or the transport cannot be read this way: TLS).
    fn try_read_buf(&mut self, buf: &mut BytesMut) -> Option<std::io::Result<usize>> {
        buf.reserve(READ_CHUNK);
        let r = match self {
            Stream::Tcp(s) => s.try_read_buf(buf),
            Stream::Unix(s) => s.try_read_buf(buf),
            Stream::Tls(_) => return None,
        };
        match r {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => None,
            r => Some(r),
        }
    }

    /// Writes what the kernel takes now: the bytes written (`Some(Ok(0))` when it would
    /// wait), or `None` for a transport that cannot be written this way (TLS).
    fn try_write(&self, data: &[u8]) -> Option<std::io::Result<usize>> {
        let r = match self {
            Stream::Tcp(s) => s.try_write(data),
            Stream::Unix(s) => s.try_write(data),
            Stream::Tls(_) => return None,
        };
        match r {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Some(Ok(0)),
            r => Some(r),
        }
    }

    /// Whether the peer closed (or sent something unasked) while the connection idled.
    fn is_stale(&self) -> bool {
        let mut probe = [0u8; 1];
        let r = match self {
            Stream::Tcp(s) => s.try_read(&mut probe),
            Stream::Tls(s) => s.get_ref().0.try_read(&mut probe),
            Stream::Unix(s) => s.try_read(&mut probe),
        };
        !matches!(r, Err(ref e) if e.kind() == std::io::ErrorKind::WouldBlock)
    }
}

/// One open connection with what was read ahead of the script.
pub(crate) struct Conn {
    pub(crate) stream: Stream,
    pub(crate) buf: BytesMut,
    /// Times it came out of the pool.
    pub(crate) reused: u32,
    /// The host name given to `connect` (the default TLS server name).
    pub(crate) host: String,
}

/// Why an operation failed, as OpenResty words it.
fn io_error(e: &std::io::Error) -> String {
    use std::io::ErrorKind as K;
    match e.kind() {
        K::ConnectionRefused => "connection refused".into(),
        K::TimedOut => "timeout".into(),
        K::ConnectionReset => "connection reset by peer".into(),
        K::BrokenPipe => "broken pipe".into(),
        K::UnexpectedEof | K::ConnectionAborted => "closed".into(),
        _ => e.to_string(),
    }
}

/// A TCP cosocket's state.
struct Tcp {
    conn: Option<Conn>,
    /// An operation holds the connection.
    busy: bool,
    connect_timeout: Duration,
    send_timeout: Duration,
    read_timeout: Duration,
    /// Pool key of the connection (`host:port`, `unix:path`, or the `pool` option).
    key: String,
    /// What a `send` tried without waiting could not write yet, and the whole length it
    /// returns: the waiting `send` right after writes this instead of its argument.
    unsent: Option<(Vec<u8>, usize)>,
}

/// Closes its socket's connection when the call that connected it ends.
struct Guard(Weak<RefCell<Tcp>>);

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(tcp) = self.0.upgrade() {
            if let Ok(mut t) = tcp.try_borrow_mut() {
                t.conn = None;
            }
        }
    }
}

/// A socket as its Rust methods take it (the Lua object is `raw`'s userdata, which
/// owns the same state).
#[derive(Clone)]
pub struct TcpSocket {
    tcp: Rc<RefCell<Tcp>>,
    host: Rc<Host>,
}

fn ms(v: Option<f64>) -> Duration {
    match v {
        Some(ms) if ms > 0.0 => Duration::from_millis(ms.min(1e9) as u64),
        _ => DEFAULT_TIMEOUT,
    }
}

/// `nil, err` (and `partial` when given).
fn fail(lua: &Lua, err: &str, partial: Option<&[u8]>) -> mlua::Result<MultiValue> {
    let mut out = MultiValue::new();
    out.push_back(Value::Nil);
    out.push_back(Value::String(lua.create_string(err)?));
    if let Some(p) = partial {
        out.push_back(Value::String(lua.create_string(p)?));
    }
    Ok(out)
}

fn one(v: Value) -> MultiValue {
    let mut out = MultiValue::new();
    out.push_back(v);
    out
}

/// Appends `v` (a string, number, boolean or a nested array of those) to `out`, as
/// `send` accepts it.
fn flatten(lua: &Lua, v: &Value, out: &mut Vec<u8>, depth: usize) -> mlua::Result<()> {
    match v {
        Value::String(s) => out.extend_from_slice(&s.as_bytes()),
        Value::Integer(_) | Value::Number(_) => {
            out.extend_from_slice(&sluicegate_lua::convert::as_bytes(v).unwrap_or_default())
        }
        Value::Boolean(b) => out.extend_from_slice(if *b { b"true" } else { b"false" }),
        Value::Table(t) if depth < 32 => {
            for item in t.sequence_values::<Value>() {
                flatten(lua, &item?, out, depth + 1)?;
            }
        }
        other => {
            return Err(sluicegate_lua::convert::error(
                lua,
                format!(
                    "bad argument #1 to 'send' (bad data type {} found)",
                    other.type_name()
                ),
            ))
        }
    }
    Ok(())
}

impl Tcp {
    fn new() -> Tcp {
        Tcp {
            conn: None,
            busy: false,
            connect_timeout: DEFAULT_TIMEOUT,
            send_timeout: DEFAULT_TIMEOUT,
            read_timeout: DEFAULT_TIMEOUT,
            key: String::new(),
            unsent: None,
        }
    }
}

/// Whether the running call owns the connection of socket state `tcp`.
fn owned(host: &Host, tcp: *const RefCell<Tcp>) -> bool {
    let cur = match host.cur.try_borrow() {
        Ok(c) => c,
        Err(_) => return false,
    };
    cur.as_deref().is_some_and(|s| {
        s.owned.iter().any(|o| {
            o.downcast_ref::<Guard>()
                .is_some_and(|g| std::ptr::eq(g.0.as_ptr(), tcp))
        })
    })
}

impl FromLua for TcpSocket {
    fn from_lua(value: Value, lua: &Lua) -> mlua::Result<TcpSocket> {
        match value {
            Value::LightUserData(p) => raw::socket_from(p),
            _ => None,
        }
        .ok_or_else(|| {
            sluicegate_lua::convert::error(lua, "expected a TCP socket (call its methods with `:`)")
        })
    }
}

impl TcpSocket {
    /// Whether the running call owns this socket's connection.
    fn owned_here(&self) -> bool {
        owned(&self.host, Rc::as_ptr(&self.tcp))
    }

    /// Takes the connection for one operation: `Err` is the error string to return.
    fn take(&self) -> Result<(Conn, Tcp2), &'static str> {
        let mut t = self.tcp.borrow_mut();
        if t.busy {
            return Err("socket busy");
        }
        if t.conn.is_none() {
            return Err("closed");
        }
        if !self.owned_here() {
            return Err("bad request");
        }
        t.busy = true;
        let conn = t.conn.take().ok_or("closed")?;
        Ok((
            conn,
            Tcp2 {
                send: t.send_timeout,
                read: t.read_timeout,
            },
        ))
    }

    /// Gives the connection back after an operation (`None`: it is closed).
    fn give(&self, conn: Option<Conn>) {
        let mut t = self.tcp.borrow_mut();
        t.busy = false;
        t.conn = conn;
    }
}

/// The timeouts an operation runs with.
struct Tcp2 {
    send: Duration,
    read: Duration,
}

/// Reads more into the buffer: the number of bytes (0 at the peer's end of stream).
async fn fill(conn: &mut Conn, timeout: Duration) -> Result<usize, String> {
    if conn.buf.len() >= MAX_BUFFERED {
        return Err(format!(
            "too much data: more than {MAX_BUFFERED} bytes buffered"
        ));
    }
    match tokio::time::timeout(timeout, conn.stream.read_buf(&mut conn.buf)).await {
        Ok(Ok(n)) => Ok(n),
        Ok(Err(e)) => Err(io_error(&e)),
        Err(_) => Err("timeout".into()),
    }
}

/// Reads what the kernel already holds into the buffer: `None` when that would wait.
fn try_fill(conn: &mut Conn) -> Option<Result<usize, String>> {
    if conn.buf.len() >= MAX_BUFFERED {
        return Some(Err(format!(
            "too much data: more than {MAX_BUFFERED} bytes buffered"
        )));
    }
    conn.stream
        .try_read_buf(&mut conn.buf)
        .map(|r| r.map_err(|e| io_error(&e)))
}

/// What a read pattern asks for.
#[derive(Clone, Copy)]
enum Pattern {
    Line,
    All,
    Count(usize),
}

fn pattern_of(lua: &Lua, v: Option<Value>) -> mlua::Result<Pattern> {
    match v {
        None | Some(Value::Nil) => Ok(Pattern::Line),
        Some(Value::String(s)) => match &*s.as_bytes() {
            b"*l" | b"l" => Ok(Pattern::Line),
            b"*a" | b"a" => Ok(Pattern::All),
            other => Err(sluicegate_lua::convert::error(
                lua,
                format!(
                    "bad argument #1 to 'receive' (bad pattern argument: {})",
                    String::from_utf8_lossy(other)
                ),
            )),
        },
        Some(v @ (Value::Integer(_) | Value::Number(_))) => {
            let n = match v {
                Value::Integer(i) => i as f64,
                Value::Number(n) => n,
                _ => 0.0,
            };
            if n < 0.0 {
                return Err(sluicegate_lua::convert::error(
                    lua,
                    "bad argument #1 to 'receive' (bad pattern argument)",
                ));
            }
            Ok(Pattern::Count(n as usize))
        }
        Some(other) => Err(sluicegate_lua::convert::error(
            lua,
            format!(
                "bad argument #1 to 'receive' (bad pattern argument: a {})",
                other.type_name()
            ),
        )),
    }
}

/// The outcome of a read: the data, or the error with what was read (and consumed).
type ReadResult = Result<Vec<u8>, (String, Vec<u8>)>;

/// The data `pattern` asks for, if the buffer holds it.
fn ready(conn: &mut Conn, pattern: Pattern) -> Option<Vec<u8>> {
    match pattern {
        Pattern::Line => {
            let i = conn.buf.iter().position(|b| *b == b'\n')?;
            let mut line = conn.buf.split_to(i + 1).to_vec();
            line.pop();
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            Some(line)
        }
        Pattern::Count(n) => (conn.buf.len() >= n).then(|| conn.buf.split_to(n).to_vec()),
        Pattern::All => None,
    }
}

/// The end of a read after a fill of the buffer, if it ended it (the peer's end of stream
/// or an error), with whether the connection is still usable.
fn ended(
    conn: &mut Conn,
    pattern: Pattern,
    filled: Result<usize, String>,
) -> Option<(ReadResult, bool)> {
    match filled {
        Ok(0) => {
            let rest = conn.buf.split().to_vec();
            Some(match pattern {
                Pattern::All => (Ok(rest), false),
                _ => (Err(("closed".into(), rest)), false),
            })
        }
        Ok(_) => None,
        Err(e) => {
            let rest = conn.buf.split().to_vec();
            let usable = e == "timeout";
            Some((Err((e, rest)), usable))
        }
    }
}

async fn receive(conn: &mut Conn, pattern: Pattern, timeout: Duration) -> (ReadResult, bool) {
    // The bool: whether the connection is still usable.
    loop {
        if let Some(data) = ready(conn, pattern) {
            return (Ok(data), true);
        }
        let filled = fill(conn, timeout).await;
        if let Some(end) = ended(conn, pattern, filled) {
            return end;
        }
    }
}

/// `receive` without waiting: the read's outcome, or `None` when it has to wait.
fn try_receive(conn: &mut Conn, pattern: Pattern) -> Option<(ReadResult, bool)> {
    loop {
        if let Some(data) = ready(conn, pattern) {
            return Some((Ok(data), true));
        }
        let filled = try_fill(conn)?;
        if let Some(end) = ended(conn, pattern, filled) {
            return Some(end);
        }
    }
}

/// What `receive` returns for a read's outcome. Short data comes from the worker's cache
/// of recent strings: protocol lines (status lines, lengths, header lines) repeat.
fn read_result(lua: &Lua, this: &TcpSocket, r: ReadResult) -> mlua::Result<MultiValue> {
    match r {
        Ok(data) => Ok(one(Value::String(this.host.strings.get(lua, &data)?))),
        Err((e, partial)) => fail(lua, &e, Some(&partial)),
    }
}

/// What a method tried without waiting returns when it has to wait: the call goes on to
/// the method's waiting version (no cosocket method returns `false` itself).
const MUST_WAIT: Value = Value::Boolean(false);

/// Builds the socket's methods: Rust functions taking the socket as `raw` hands it over.
struct Methods<'a> {
    lua: &'a Lua,
    /// The methods that never wait, by name.
    plain: Table,
    /// The methods that may wait (async functions), by name.
    waits: Table,
    /// The versions of `connect`, `send` and `receive` first tried without waiting: each
    /// returns [`MUST_WAIT`] when it has to wait.
    tries: Table,
}

impl Methods<'_> {
    /// A method that never waits.
    fn sync<A, R>(
        &self,
        name: &str,
        f: impl Fn(&Lua, &TcpSocket, A) -> mlua::Result<R> + 'static,
    ) -> mlua::Result<()>
    where
        A: mlua::FromLuaMulti,
        R: mlua::IntoLuaMulti,
    {
        self.plain.raw_set(name, self.function(f)?)
    }

    /// The version of a waiting method tried first (see [`Methods::tries`]).
    fn try_first<A>(
        &self,
        name: &str,
        f: impl Fn(&Lua, &TcpSocket, A) -> mlua::Result<MultiValue> + 'static,
    ) -> mlua::Result<()>
    where
        A: mlua::FromLuaMulti,
    {
        self.tries.raw_set(name, self.function(f)?)
    }

    /// A plain function of the socket and the method's arguments.
    fn function<A, R>(
        &self,
        f: impl Fn(&Lua, &TcpSocket, A) -> mlua::Result<R> + 'static,
    ) -> mlua::Result<mlua::Function>
    where
        A: mlua::FromLuaMulti,
        R: mlua::IntoLuaMulti,
    {
        self.lua
            .create_function(move |lua, (this, args): (TcpSocket, A)| f(lua, &this, args))
    }

    /// A method that may wait (it runs as an async function).
    fn wait<A, F>(
        &self,
        name: &str,
        f: impl Fn(Lua, TcpSocket, A) -> F + 'static,
    ) -> mlua::Result<()>
    where
        A: mlua::FromLuaMulti + 'static,
        F: std::future::Future<Output = mlua::Result<MultiValue>> + 'static,
    {
        let f = self
            .lua
            .create_async_function(move |lua, (this, args): (TcpSocket, A)| f(lua, this, args))?;
        self.waits.raw_set(name, f)
    }
}

/// The methods scripts call, in `methods` (which already holds those done in C): each
/// Rust method behind a Lua function that hands it the socket as `parts` gives it, and
/// each tried-first method in front of its waiting version: when the first returns
/// `false`, the same arguments go to the second.
const WRAP: &str = r#"
local methods, plain, waits, tries, parts = ...
for name, f in plain do
  if methods[name] == nil then
    methods[name] = function(self, ...) return f(parts(self), ...) end
  end
end
for name, wait in waits do
  local try = tries[name]
  if try then
    methods[name] = function(self, ...)
      local a, b, c = try(self, ...)
      if a ~= false then return a, b, c end
      return wait(parts(self), ...)
    end
  else
    methods[name] = function(self, ...) return wait(parts(self), ...) end
  end
end
"#;

/// The socket's methods. `connect` (from the worker's pool), `send` (what the kernel
/// takes at once) and `receive` (what the buffer and the kernel already hold) are tried
/// without waiting first: a call that can finish at once then costs a plain function
/// call, not an async one's coroutine round.
/// Returns `ngx.socket.tcp`, which makes sockets with them.
fn methods(lua: &Lua, host: &Rc<Host>) -> mlua::Result<mlua::Function> {
    let m = Methods {
        lua,
        plain: lua.create_table()?,
        waits: lua.create_table()?,
        tries: lua.create_table()?,
    };
    m.try_first(
        "connect",
        |lua, this, (host, port, opts): (String, Value, Option<Table>)| {
            this.host.check(lua, "ngx.socket connect", Kinds::WAIT)?;
            this.host.check_async(lua, "ngx.socket connect")?;
            match connect_start(lua, this, host, port, opts)? {
                Ok(done) => Ok(done),
                Err(_) => Ok(one(MUST_WAIT)),
            }
        },
    )?;
    m.try_first("send", |lua, this, data: Value| {
        this.host.check_async(lua, "send")?;
        let mut bytes = Vec::new();
        flatten(lua, &data, &mut bytes, 0)?;
        let (conn, _) = match this.take() {
            Ok(x) => x,
            Err(e) => return fail(lua, e, None),
        };
        let written = conn.stream.try_write(&bytes);
        match written {
            Some(Ok(n)) if n == bytes.len() => {
                this.give(Some(conn));
                Ok(one(Value::Integer(bytes.len() as i64)))
            }
            Some(Ok(n)) => {
                let total = bytes.len();
                bytes.drain(..n);
                this.give(Some(conn));
                this.tcp.borrow_mut().unsent = Some((bytes, total));
                Ok(one(MUST_WAIT))
            }
            Some(Err(e)) => {
                this.give(None);
                fail(lua, &io_error(&e), None)
            }
            None => {
                this.give(Some(conn));
                Ok(one(MUST_WAIT))
            }
        }
    })?;
    m.try_first("receive", |lua, this, pattern: Option<Value>| {
        this.host.check_async(lua, "receive")?;
        let pattern = pattern_of(lua, pattern)?;
        let (mut conn, _) = match this.take() {
            Ok(x) => x,
            Err(e) => return fail(lua, e, Some(b"")),
        };
        match try_receive(&mut conn, pattern) {
            Some((r, usable)) => {
                this.give(usable.then_some(conn));
                read_result(lua, this, r)
            }
            None => {
                this.give(Some(conn));
                Ok(one(MUST_WAIT))
            }
        }
    })?;
    m.wait(
        "connect",
        |lua, this, (host, port, opts): (String, Value, Option<Table>)| async move {
            this.host.check(&lua, "ngx.socket connect", Kinds::WAIT)?;
            this.host.check_async(&lua, "ngx.socket connect")?;
            connect(&lua, &this, host, port, opts).await
        },
    )?;
    m.wait("sslhandshake", |lua, this, args: MultiValue| async move {
        this.host.check_async(&lua, "sslhandshake")?;
        sslhandshake(&lua, &this, args).await
    })?;
    m.wait("send", |lua, this, data: Value| async move {
        this.host.check_async(&lua, "send")?;
        // The rest of what the tried-first `send` just began, or all of `data`.
        let unsent = this.tcp.borrow_mut().unsent.take();
        let (bytes, total) = match unsent {
            Some(rest) => rest,
            None => {
                let mut bytes = Vec::new();
                flatten(&lua, &data, &mut bytes, 0)?;
                let total = bytes.len();
                (bytes, total)
            }
        };
        let (mut conn, t) = match this.take() {
            Ok(x) => x,
            Err(e) => return fail(&lua, e, None),
        };
        let r = tokio::time::timeout(t.send, conn.stream.write_all(&bytes)).await;
        match r {
            Ok(Ok(())) => {
                this.give(Some(conn));
                Ok(one(Value::Integer(total as i64)))
            }
            Ok(Err(e)) => {
                this.give(None);
                fail(&lua, &io_error(&e), None)
            }
            Err(_) => {
                // A send timeout leaves the stream in an unknown state: closed.
                this.give(None);
                fail(&lua, "timeout", None)
            }
        }
    })?;
    m.wait("receive", |lua, this, pattern: Option<Value>| async move {
        this.host.check_async(&lua, "receive")?;
        let pattern = pattern_of(&lua, pattern)?;
        let (mut conn, t) = match this.take() {
            Ok(x) => x,
            Err(e) => return fail(&lua, e, Some(b"")),
        };
        let (r, usable) = receive(&mut conn, pattern, t.read).await;
        this.give(usable.then_some(conn));
        read_result(&lua, &this, r)
    })?;
    m.wait("receiveany", |lua, this, max: f64| async move {
        this.host.check_async(&lua, "receiveany")?;
        if max < 1.0 {
            return Err(sluicegate_lua::convert::error(
                &lua,
                "bad argument #1 to 'receiveany' (bad max argument)",
            ));
        }
        let max = max as usize;
        let (mut conn, t) = match this.take() {
            Ok(x) => x,
            Err(e) => return fail(&lua, e, None),
        };
        if conn.buf.is_empty() {
            match fill(&mut conn, t.read).await {
                Ok(0) => {
                    this.give(None);
                    return fail(&lua, "closed", None);
                }
                Ok(_) => {}
                Err(e) => {
                    this.give((e == "timeout").then_some(conn));
                    return fail(&lua, &e, None);
                }
            }
        }
        let n = max.min(conn.buf.len());
        let data = conn.buf.split_to(n);
        this.give(Some(conn));
        Ok(one(Value::String(lua.create_string(&data)?)))
    })?;
    m.sync(
        "receiveuntil",
        |lua, this, (pattern, opts): (mlua::LuaString, Option<Table>)| {
            let pattern = pattern.as_bytes().to_vec();
            if pattern.is_empty() {
                return Err(sluicegate_lua::convert::error(
                    lua,
                    "bad argument #1 to 'receiveuntil' (pattern is empty)",
                ));
            }
            let inclusive = match &opts {
                Some(t) => t.raw_get::<Option<bool>>("inclusive")?.unwrap_or(false),
                None => false,
            };
            until_reader(lua, this.clone(), pattern, inclusive)
        },
    )?;
    m.sync("settimeout", |_, this, ms_: Option<f64>| {
        let d = ms(ms_);
        let mut t = this.tcp.borrow_mut();
        (t.connect_timeout, t.send_timeout, t.read_timeout) = (d, d, d);
        Ok(())
    })?;
    m.sync(
        "settimeouts",
        |_, this, (c, s, r): (Option<f64>, Option<f64>, Option<f64>)| {
            let mut t = this.tcp.borrow_mut();
            (t.connect_timeout, t.send_timeout, t.read_timeout) = (ms(c), ms(s), ms(r));
            Ok(())
        },
    )?;
    m.sync(
        "setkeepalive",
        |lua, this, (idle, size): (Option<f64>, Option<f64>)| {
            let conn = match this.take() {
                Ok((c, _)) => c,
                Err(e) => return fail(lua, e, None),
            };
            if !conn.buf.is_empty() {
                this.give(None);
                return fail(lua, "unread data in buffer", None);
            }
            let idle = match idle {
                Some(ms) if ms > 0.0 => Duration::from_millis(ms.min(1e9) as u64),
                _ => DEFAULT_TIMEOUT,
            };
            let size = size.map_or(pool::DEFAULT_SIZE, |s| (s.max(1.0)) as usize);
            pool::put(&this.tcp.borrow().key, conn, idle, size);
            this.give(None);
            Ok(one(Value::Integer(1)))
        },
    )?;
    m.sync("getreusedtimes", |lua, this, ()| {
        let t = this.tcp.borrow();
        match &t.conn {
            Some(c) if this.owned_here() => Ok(one(Value::Integer(i64::from(c.reused)))),
            Some(_) => fail(lua, "bad request", None),
            None => fail(lua, "closed", None),
        }
    })?;
    m.sync("close", |lua, this, ()| {
        let t = this.tcp.borrow();
        if t.busy {
            return fail(lua, "socket busy", None);
        }
        if t.conn.is_none() {
            return fail(lua, "closed", None);
        }
        drop(t);
        if !this.owned_here() {
            return fail(lua, "bad request", None);
        }
        this.tcp.borrow_mut().conn = None;
        Ok(one(Value::Integer(1)))
    })?;
    m.sync("setoption", |lua, this, (name, value): (String, Value)| {
        let t = this.tcp.borrow();
        let Some(conn) = &t.conn else {
            return fail(lua, "closed", None);
        };
        let on =
            matches!(value, Value::Boolean(true)) || matches!(value, Value::Integer(i) if i != 0);
        match (name.as_str(), &conn.stream) {
            ("tcp-nodelay", Stream::Tcp(s)) => {
                let _ = s.set_nodelay(on);
            }
            ("tcp-nodelay", Stream::Tls(s)) => {
                let _ = s.get_ref().0.set_nodelay(on);
            }
            ("keepalive" | "reuseaddr" | "sndbuf" | "rcvbuf" | "tcp-nodelay", _) => {}
            (other, _) => {
                return Err(sluicegate_lua::convert::error(
                    lua,
                    format!("bad argument #2 to 'setoption' (unsupported option {other})"),
                ))
            }
        }
        Ok(one(Value::Integer(1)))
    })?;
    let h = host.clone();
    let refuse = lua
        .create_function(move |lua, ()| h.check(lua, "ngx.socket.tcp", Kinds::WAIT).map(|_| ()))?;
    let methods = lua.create_table()?;
    let (tcp, parts) = raw::install(lua, host, &m.plain, &m.tries, &methods, refuse)?;
    lua.load(WRAP)
        .set_name(sluicegate_lua::convert::GLUE_CHUNK)
        .call::<()>((&methods, &m.plain, &m.waits, &m.tries, parts))?;
    methods.set_readonly(true);
    Ok(tcp)
}

/// `connect`: from the worker's pool, or a new connection.
async fn connect(
    lua: &Lua,
    this: &TcpSocket,
    host: String,
    port: Value,
    opts: Option<Table>,
) -> mlua::Result<MultiValue> {
    let target = match connect_start(lua, this, host, port, opts)? {
        Ok(done) => return Ok(done),
        Err(open) => open,
    };
    let timeout = this.tcp.borrow().connect_timeout;
    this.tcp.borrow_mut().busy = true;
    let opened = tokio::time::timeout(timeout, open(&target)).await;
    this.tcp.borrow_mut().busy = false;
    match opened {
        Ok(Ok(stream)) => {
            let host = match &target {
                Target::Tcp(h, _) => h.clone(),
                Target::Unix(_) => String::new(),
            };
            connected(
                lua,
                this,
                Conn {
                    stream,
                    buf: BytesMut::new(),
                    reused: 0,
                    host,
                },
            )
        }
        Ok(Err(e)) => fail(lua, &e, None),
        Err(_) => fail(lua, "timeout", None),
    }
}

/// Makes `conn` the socket's, owned by the running call.
fn connected(lua: &Lua, this: &TcpSocket, conn: Conn) -> mlua::Result<MultiValue> {
    let guard = Guard(Rc::downgrade(&this.tcp));
    this.host
        .with_req(lua, "ngx.socket connect", Kinds::WAIT, |s| {
            s.owned.push(Box::new(guard));
            Ok(())
        })?;
    this.tcp.borrow_mut().conn = Some(conn);
    Ok(one(Value::Integer(1)))
}

/// What `connect` does before it may wait: checks its arguments, drops the socket's
/// previous connection and takes one from the pool. `Ok(Ok)` is `connect`'s result (an
/// error, or a pooled connection); `Ok(Err)` is what to connect to.
fn connect_start(
    lua: &Lua,
    this: &TcpSocket,
    host: String,
    port: Value,
    opts: Option<Table>,
) -> mlua::Result<Result<MultiValue, Target>> {
    // `connect(host, port[, opts])` or `connect("unix:/path"[, opts])`.
    let (port, opts) = match port {
        Value::Integer(p) => (Some(p), opts),
        Value::Number(p) => (Some(p as i64), opts),
        Value::Table(t) if host.starts_with("unix:") => (None, Some(t)),
        Value::Nil => (None, opts),
        other => {
            return Err(sluicegate_lua::convert::error(
                lua,
                format!(
                    "bad argument #2 to 'connect' (number expected, got {})",
                    other.type_name()
                ),
            ))
        }
    };
    let target = match (&port, host.strip_prefix("unix:")) {
        (_, Some(path)) => Target::Unix(path.to_string()),
        (Some(p), None) if (1..=65535).contains(p) => Target::Tcp(host.clone(), *p as u16),
        (Some(_), None) => {
            return Err(sluicegate_lua::convert::error(
                lua,
                "bad argument #2 to 'connect' (port out of range)",
            ))
        }
        (None, None) => {
            return Err(sluicegate_lua::convert::error(
                lua,
                "bad argument #2 to 'connect' (number expected, got nil)",
            ))
        }
    };
    let key = match opts
        .as_ref()
        .map(|o| o.raw_get::<Option<String>>("pool"))
        .transpose()?
        .flatten()
    {
        Some(k) => k,
        None => match &target {
            Target::Tcp(h, p) => format!("{h}:{p}"),
            Target::Unix(path) => format!("unix:{path}"),
        },
    };
    {
        let mut t = this.tcp.borrow_mut();
        if t.busy {
            return fail(lua, "socket busy", None).map(Ok);
        }
        // Connecting again closes the previous connection first.
        t.conn = None;
        t.key = key.clone();
    }
    match pool::take(&key) {
        Some(conn) => connected(lua, this, conn).map(Ok),
        None => Ok(Err(target)),
    }
}

enum Target {
    Tcp(String, u16),
    Unix(String),
}

/// Resolves host names (with the system resolver) and connects to the first address
/// that accepts.
async fn open(target: &Target) -> Result<Stream, String> {
    match target {
        Target::Unix(path) => tokio::net::UnixStream::connect(path)
            .await
            .map(Stream::Unix)
            .map_err(|e| io_error(&e)),
        Target::Tcp(host, port) => {
            let addrs = resolve(host, *port).await?;
            let mut last = String::from("connection refused");
            for addr in addrs {
                match tokio::net::TcpStream::connect(addr).await {
                    Ok(s) => {
                        let _ = s.set_nodelay(true);
                        return Ok(Stream::Tcp(s));
                    }
                    Err(e) => last = io_error(&e),
                }
            }
            Err(last)
        }
    }
}

/// The addresses of `host`.
pub(crate) async fn resolve(host: &str, port: u16) -> Result<Vec<std::net::SocketAddr>, String> {
    let name = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = name.parse::<std::net::IpAddr>() {
        return Ok(vec![std::net::SocketAddr::new(ip, port)]);
    }
    match tokio::net::lookup_host((name, port)).await {
        Ok(a) => {
            let v: Vec<_> = a.collect();
            if v.is_empty() {
                Err(format!("{host} could not be resolved"))
            } else {
                Ok(v)
            }
        }
        Err(_) => Err(format!("{host} could not be resolved")),
    }
}

async fn sslhandshake(lua: &Lua, this: &TcpSocket, args: MultiValue) -> mlua::Result<MultiValue> {
    // (self is consumed by the method) reused_session, server_name, ssl_verify, ...
    let mut it = args.into_iter();
    let _reused = it.next();
    let server_name = match it.next() {
        Some(Value::String(s)) => Some(s.to_str()?.to_string()),
        _ => None,
    };
    let verify = !matches!(it.next(), Some(Value::Boolean(false)));
    let (conn, t) = match this.take() {
        Ok(x) => x,
        Err(e) => return fail(lua, e, None),
    };
    let Conn {
        stream,
        buf,
        reused,
        host,
    } = conn;
    let tcp = match stream {
        Stream::Tcp(s) if buf.is_empty() => s,
        other => {
            this.give(Some(Conn {
                stream: other,
                buf,
                reused,
                host,
            }));
            return fail(
                lua,
                "handshake is only possible on a plain TCP connection with nothing read",
                None,
            );
        }
    };
    let name = server_name.clone().unwrap_or_else(|| host.clone());
    let config = match (this.host.rt.http_tls)(verify) {
        Ok(c) => c,
        Err(e) => {
            this.give(None);
            return fail(lua, &e, None);
        }
    };
    let server = match rustls::pki_types::ServerName::try_from(name.clone()) {
        Ok(s) => s,
        Err(_) => {
            this.give(None);
            return fail(lua, &format!("bad server name `{name}`"), None);
        }
    };
    let hs = tokio_rustls::TlsConnector::from(config).connect(server, tcp);
    match tokio::time::timeout(t.read, hs).await {
        Ok(Ok(tls)) => {
            this.give(Some(Conn {
                stream: Stream::Tls(Box::new(tls)),
                buf: BytesMut::new(),
                reused,
                host,
            }));
            Ok(one(Value::Boolean(true)))
        }
        Ok(Err(e)) => {
            this.give(None);
            fail(lua, &format!("handshake failed: {e}"), None)
        }
        Err(_) => {
            this.give(None);
            fail(lua, "timeout", None)
        }
    }
}

/// The iterator `receiveuntil` returns: each call reads up to the pattern (or, given a
/// size, at most that many bytes of the data before it, then `nil` at the pattern).
fn until_reader(
    lua: &Lua,
    socket: TcpSocket,
    pattern: Vec<u8>,
    inclusive: bool,
) -> mlua::Result<mlua::Function> {
    let state = Rc::new(RefCell::new(false)); // the pattern was reached in size mode
    lua.create_async_function(move |lua, size: Option<f64>| {
        let this = socket.clone();
        let pattern = pattern.clone();
        let done = state.clone();
        async move {
            this.host.check_async(&lua, "receiveuntil")?;
            if *done.borrow() {
                *done.borrow_mut() = false;
                return Ok(MultiValue::new());
            }
            let (mut conn, t) = match this.take() {
                Ok(x) => x,
                Err(e) => return fail(&lua, e, Some(b"")),
            };
            let size = size.filter(|s| *s > 0.0).map(|s| s as usize);
            loop {
                if let Some(i) = find(&conn.buf, &pattern) {
                    let out = match size {
                        Some(n) if i > 0 => conn.buf.split_to(i.min(n)).to_vec(),
                        Some(_) => {
                            conn.buf.advance(pattern.len());
                            this.give(Some(conn));
                            if inclusive {
                                *done.borrow_mut() = true;
                                return Ok(one(Value::String(lua.create_string(&pattern)?)));
                            }
                            return Ok(MultiValue::new());
                        }
                        None => {
                            let mut data = conn.buf.split_to(i).to_vec();
                            conn.buf.advance(pattern.len());
                            if inclusive {
                                data.extend_from_slice(&pattern);
                            }
                            data
                        }
                    };
                    this.give(Some(conn));
                    return Ok(one(Value::String(lua.create_string(&out)?)));
                }
                if let Some(n) = size {
                    // Bytes that cannot start the pattern may go out already.
                    let safe = conn.buf.len().saturating_sub(pattern.len() - 1);
                    if safe > 0 {
                        let out = conn.buf.split_to(safe.min(n)).to_vec();
                        this.give(Some(conn));
                        return Ok(one(Value::String(lua.create_string(&out)?)));
                    }
                }
                match fill(&mut conn, t.read).await {
                    Ok(0) => {
                        let rest = conn.buf.split().to_vec();
                        this.give(None);
                        return fail(&lua, "closed", Some(&rest));
                    }
                    Ok(_) => {}
                    Err(e) => {
                        let rest = conn.buf.split().to_vec();
                        this.give((e == "timeout").then_some(conn));
                        return fail(&lua, &e, Some(&rest));
                    }
                }
            }
        }
    })
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.len() > hay.len() {
        return None;
    }
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Registers `ngx.socket` (an [`Extension`](sluicegate_lua::Extension)).
pub fn register(lua: &Lua, host: &Rc<Host>, modules: &Table, globals: &Table) -> mlua::Result<()> {
    let ngx: Table = globals.raw_get("ngx")?;
    let socket = lua.create_table()?;
    let tcp = methods(lua, host)?;
    socket.raw_set("tcp", &tcp)?;
    socket.raw_set("stream", &tcp)?;
    let h = host.clone();
    socket.raw_set(
        "udp",
        lua.create_function(move |lua, ()| {
            h.check(lua, "ngx.socket.udp", Kinds::WAIT)?;
            lua.create_userdata(udp::UdpSocket::new(&h))
        })?,
    )?;
    let connect: mlua::Function = lua
        .load(
            "local tcp = ... return function(...) local s = tcp() local ok, err = s:connect(...) \
             if not ok then return nil, err end return s end",
        )
        .set_name("=ngx.socket.connect")
        .call(&tcp)?;
    socket.raw_set("connect", connect)?;
    ngx.raw_set("socket", &socket)?;
    modules.raw_set("ngx.socket", socket)?;
    Ok(())
}
