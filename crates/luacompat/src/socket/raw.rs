//! The TCP socket object in raw Luau: a userdata of a tag of its own that owns the
//! socket's state, and the methods a pooled request-reply client calls on every request
//! (`settimeout`, `connect` from the pool, `send`, `receive` from what is buffered or
//! readable at once, `setkeepalive`) as Luau C functions.
//!
//! Why: through mlua, a call from Lua into Rust costs about 1,500 instructions before any
//! work (a protected frame, the socket's type check and borrow, the arguments' and
//! results' conversion); a Redis GET through a pooled socket makes seven such calls. A C
//! function reads its arguments off the Luau stack and answers in place.
//!
//! The methods' Rust implementations in [`super`] stay the reference: every case off the
//! common path — an argument of another type, a table to send, a busy, closed or foreign
//! socket, a pool miss, an error, the end of the stream, a read that must wait — is handed
//! to them unchanged (a C function that cannot finish calls its Rust version, or returns
//! `false` for its caller to call the waiting one), and they raise or answer as
//! OpenResty does. The C functions never decide an error themselves.
//!
//! Invariants the `unsafe` code relies on:
//! - a C function calls what may raise a Luau error (a push that allocates, `lua_call`)
//!   only when no Rust value with a destructor is alive in its frame: a raise unwinds
//!   through it;
//! - a socket's block holds two pointers made by `Rc::into_raw` (its state and its VM's
//!   host), written right after the block is allocated (nothing runs in between) and
//!   released only by the tag's destructor;
//! - the Rust methods take the socket as a light userdata pointing at its block, made
//!   only by [`parts`] and the fallbacks from a value of this tag that stays on the
//!   calling stack meanwhile; those functions are reachable only as upvalues of the
//!   methods (Luau scripts cannot read upvalues), so no other light userdata reaches them;
//! - the socket's state is read in place (no guard) only between checks and pushes that
//!   run no Rust code but the destructors of other sockets, so nothing borrows it
//!   meanwhile.
#![allow(unsafe_code)]

use std::cell::{RefCell, RefMut};
use std::ffi::{c_char, c_int, c_void, CStr};
use std::mem::ManuallyDrop;
use std::rc::Rc;
use std::time::Duration;

use bytes::Buf;
use mlua::ffi::{self, lua_State};
use mlua::{Function, LightUserData, Lua, Table};
use sluicegate_lua::vm::Host;
use sluicegate_lua::Kinds;

use super::{ms, owned, pool, try_fill, Conn, Guard, Tcp, TcpSocket, DEFAULT_TIMEOUT};
use crate::luau::string_at;

/// The socket's userdata tag (mlua uses 0 and 1, the Envoy stream handle 40).
const TAG: c_int = 41;

/// A socket's block: its state and its VM's host, each one strong reference.
#[derive(Clone, Copy)]
#[repr(C)]
struct RawSocket {
    tcp: *const RefCell<Tcp>,
    host: *const Host,
}

/// The block's size: the state the socket owns counts under the VM's memory cap as if it
/// lived in the block.
const BLOCK: usize = std::mem::size_of::<RawSocket>() + std::mem::size_of::<RefCell<Tcp>>();

/// The socket at `idx`, if that value is one.
///
/// # Safety
/// `l` is a running Luau thread and `idx` a valid stack index.
unsafe fn socket_at(l: *mut lua_State, idx: c_int) -> Option<RawSocket> {
    // SAFETY: as the caller's; every block of the tag holds a `RawSocket`.
    unsafe { crate::luau::tagged_at(l, idx, TAG) }
}

/// The number at `idx`: `Some(None)` for nil or nothing, `None` for another type.
///
/// # Safety
/// As [`socket_at`].
unsafe fn number_at(l: *mut lua_State, idx: c_int) -> Option<Option<f64>> {
    // SAFETY: reads only.
    unsafe {
        match ffi::lua_type(l, idx) {
            ffi::LUA_TNIL | ffi::LUA_TNONE => Some(None),
            ffi::LUA_TNUMBER => Some(Some(ffi::lua_tonumberx(l, idx, std::ptr::null_mut()))),
            _ => None,
        }
    }
}

/// The socket `p` (a light userdata [`parts`] or a fallback made) as the Rust methods
/// take it: its own references to the state and the host.
pub(super) fn socket_from(p: LightUserData) -> Option<TcpSocket> {
    if p.0.is_null() {
        return None;
    }
    // SAFETY: by the module's invariants `p` points at a live socket block whose two
    // pointers hold a strong reference each; each is counted once more for the copy.
    unsafe {
        let raw = (p.0 as *const RawSocket).read_unaligned();
        Rc::increment_strong_count(raw.tcp);
        Rc::increment_strong_count(raw.host);
        Some(TcpSocket {
            tcp: Rc::from_raw(raw.tcp),
            host: Rc::from_raw(raw.host),
        })
    }
}

/// Whether the running call may wait (the checks `connect`, `send` and `receive` make
/// before anything else).
fn may_wait(host: &Host) -> bool {
    Kinds::WAIT.has(host.kind.get()) && host.in_async.get()
}

/// Hands the call to the method's Rust implementation (upvalue 1), the socket given as
/// its block's light userdata, and returns what it returns.
///
/// # Safety
/// Only from a C function made by [`install`], with no Rust value with a destructor alive
/// in the caller's frame (the method may raise).
unsafe fn fallback(l: *mut lua_State) -> c_int {
    // SAFETY: a C function has LUA_MINSTACK free slots; the upvalue is a function.
    unsafe {
        let p = ffi::lua_touserdatatagged(l, 1, TAG);
        if !p.is_null() {
            ffi::lua_pushlightuserdata(l, p);
            ffi::lua_replace(l, 1);
        }
        crate::luau::call_upvalue(l, 1)
    }
}

/// `ngx.socket.tcp()`: a new socket (upvalue 1 the host, upvalue 2 the Rust version,
/// which raises the phase error).
unsafe extern "C-unwind" fn new_socket(l: *mut lua_State) -> c_int {
    // SAFETY: the host outlives the VM's calls; the allocation (which may raise) happens
    // with nothing alive in this frame, and the block is written before anything else runs.
    unsafe {
        let host = ffi::lua_tolightuserdata(l, ffi::lua_upvalueindex(1)) as *const Host;
        if !Kinds::WAIT.has((*host).kind.get()) {
            return crate::luau::call_upvalue(l, 2);
        }
        let p = ffi::lua_newuserdatataggedwithmetatable(l, BLOCK, TAG) as *mut RawSocket;
        Rc::increment_strong_count(host);
        p.write_unaligned(RawSocket {
            tcp: Rc::into_raw(Rc::new(RefCell::new(Tcp::new()))),
            host,
        });
    }
    1
}

/// The tag's destructor: releases the block's two references.
unsafe extern "C" fn drop_socket(_l: *mut lua_State, p: *mut c_void) {
    // SAFETY: `p` is a block `new_socket` wrote (the module's invariants); it is read once,
    // here, as the block dies.
    unsafe {
        let raw = (p as *const RawSocket).read_unaligned();
        drop(Rc::from_raw(raw.tcp));
        drop(Rc::from_raw(raw.host));
    }
}

/// `parts(sock)`: the socket's block as a light userdata, for the Rust methods (nil when
/// `sock` is not a socket: they then raise).
unsafe extern "C-unwind" fn parts(l: *mut lua_State) -> c_int {
    // SAFETY: reads and a push that does not allocate.
    unsafe {
        let p = ffi::lua_touserdatatagged(l, 1, TAG);
        if p.is_null() {
            ffi::lua_pushnil(l);
        } else {
            ffi::lua_pushlightuserdata(l, p);
        }
    }
    1
}

/// `sock:settimeout(ms)`.
unsafe extern "C-unwind" fn settimeout(l: *mut lua_State) -> c_int {
    // SAFETY: see the module's invariants; the borrow ends before any return.
    unsafe {
        let (Some(s), Some(v)) = (socket_at(l, 1), number_at(l, 2)) else {
            return fallback(l);
        };
        let set = match (*s.tcp).try_borrow_mut() {
            Ok(mut t) => {
                let d = ms(v);
                (t.connect_timeout, t.send_timeout, t.read_timeout) = (d, d, d);
                true
            }
            Err(_) => false,
        };
        if set {
            0
        } else {
            fallback(l)
        }
    }
}

/// What a tried-first method did.
enum Done {
    /// Finished: push this integer.
    Integer(i64),
    /// Must wait: push `false` (the caller then calls the waiting version).
    Wait,
}

/// Pushes what a method did, or hands it to its Rust version.
///
/// # Safety
/// As [`fallback`].
unsafe fn answer(l: *mut lua_State, done: Option<Done>) -> c_int {
    // SAFETY: neither push allocates.
    unsafe {
        match done {
            Some(Done::Integer(n)) => ffi::lua_pushinteger(l, n as ffi::lua_Integer),
            Some(Done::Wait) => ffi::lua_pushboolean(l, 0),
            None => return fallback(l),
        }
    }
    1
}

/// `connect(host, port)` from the worker's pool: `Wait` on a miss. As
/// `super::connect_start` does it for these arguments.
fn connect_pooled(s: RawSocket, host_name: &[u8], port: f64) -> Option<Done> {
    // SAFETY: the block's pointers are live (the module's invariants); the `Rc` made from
    // the state's pointer is not dropped (it only lends a weak reference to the guard).
    let (tcp, host) = unsafe { (ManuallyDrop::new(Rc::from_raw(s.tcp)), &*s.host) };
    if !may_wait(host) || port.fract() != 0.0 || !(1.0..=65535.0).contains(&port) {
        return None;
    }
    let name = std::str::from_utf8(host_name).ok()?;
    if name.starts_with("unix:") {
        return None;
    }
    let mut t = tcp.try_borrow_mut().ok()?;
    if t.busy {
        return None;
    }
    // The running call owns what it connects: its request must be there to take the guard.
    let mut cur = host.cur.try_borrow_mut().ok()?;
    let state = cur.as_deref_mut()?;
    t.conn = None;
    t.key.clear();
    t.key.push_str(name);
    t.key.push(':');
    push_decimal(&mut t.key, port as u16);
    match pool::take(&t.key) {
        Some(conn) => {
            state.owned.push(Box::new(Guard(Rc::downgrade(&tcp))));
            t.conn = Some(conn);
            Some(Done::Integer(1))
        }
        None => Some(Done::Wait),
    }
}

/// Appends `n` in decimal (the pool key's port, on every pooled connect: no
/// formatting machinery, no allocation).
fn push_decimal(out: &mut String, n: u16) {
    let mut digits = [0u8; 5];
    let mut at = digits.len();
    let mut n = n;
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend(digits[at..].iter().map(|&d| char::from(d)));
}

/// `sock:connect(host, port)`, tried first: from the pool, or `false`.
unsafe extern "C-unwind" fn connect(l: *mut lua_State) -> c_int {
    // SAFETY: see the module's invariants; `connect_pooled`'s values are dropped before
    // `answer` may raise.
    unsafe {
        let args = (
            socket_at(l, 1),
            string_at(l, 2),
            ffi::lua_type(l, 3) == ffi::LUA_TNUMBER,
            ffi::lua_gettop(l) <= 3 || ffi::lua_type(l, 4) == ffi::LUA_TNIL,
        );
        let done = match args {
            (Some(s), Some(name), true, true) => {
                connect_pooled(s, name, ffi::lua_tonumberx(l, 3, std::ptr::null_mut()))
            }
            _ => None,
        };
        answer(l, done)
    }
}

/// The state of socket `s` for an operation of the running call that owns its
/// connection.
///
/// # Safety
/// `s`'s pointers are live.
unsafe fn usable<'a>(s: RawSocket) -> Option<RefMut<'a, Tcp>> {
    // SAFETY: as the function's contract.
    let (cell, host) = unsafe { (&*s.tcp, &*s.host) };
    if !may_wait(host) {
        return None;
    }
    let t = cell.try_borrow_mut().ok()?;
    (!t.busy && t.conn.is_some() && owned(host, s.tcp)).then_some(t)
}

/// `sock:send(data)` of a string, tried first: what the kernel takes at once. A part left
/// over is kept for the waiting `send`, which the caller then runs (`false`).
unsafe extern "C-unwind" fn send(l: *mut lua_State) -> c_int {
    // SAFETY: see the module's invariants.
    unsafe {
        let (Some(s), Some(data)) = (socket_at(l, 1), string_at(l, 2)) else {
            return fallback(l);
        };
        let done = usable(s).and_then(|mut t| {
            if t.unsent.is_some() {
                return None;
            }
            let written = t.conn.as_ref()?.stream.try_write(data);
            match written {
                Some(Ok(n)) if n == data.len() => Some(Done::Integer(n as i64)),
                Some(Ok(n)) => {
                    t.unsent = Some((data[n..].to_vec(), data.len()));
                    Some(Done::Wait)
                }
                None => Some(Done::Wait),
                // Errors are the Rust version's to word.
                Some(Err(_)) => None,
            }
        });
        answer(l, done)
    }
}

/// What a read asks for.
#[derive(Clone, Copy)]
enum Want {
    Line,
    Count(usize),
}

/// The read's pattern at `idx` when it is a line or a byte count.
///
/// # Safety
/// As [`socket_at`].
unsafe fn want_at(l: *mut lua_State, idx: c_int) -> Option<Want> {
    // SAFETY: reads only.
    unsafe {
        match ffi::lua_type(l, idx) {
            ffi::LUA_TNIL | ffi::LUA_TNONE => Some(Want::Line),
            ffi::LUA_TSTRING => match string_at(l, idx)? {
                b"*l" | b"l" => Some(Want::Line),
                _ => None,
            },
            ffi::LUA_TNUMBER => {
                let n = ffi::lua_tonumberx(l, idx, std::ptr::null_mut());
                (n >= 0.0 && n.fract() == 0.0 && n <= super::MAX_BUFFERED as f64)
                    .then_some(Want::Count(n as usize))
            }
            _ => None,
        }
    }
}

/// Where the data `want` asks for ends in `conn`'s buffer: its length and the bytes it
/// consumes (a line's end too).
fn ready_len(conn: &Conn, want: Want) -> Option<(usize, usize)> {
    match want {
        Want::Line => {
            let i = conn.buf.iter().position(|b| *b == b'\n')?;
            let len = if i > 0 && conn.buf[i - 1] == b'\r' {
                i - 1
            } else {
                i
            };
            Some((len, i + 1))
        }
        Want::Count(n) => (conn.buf.len() >= n).then_some((n, n)),
    }
}

/// What a read tried first found.
enum Read {
    /// The data: its length and the bytes it consumes.
    Ready(usize, usize),
    /// It must wait.
    Wait,
}

/// `sock:receive()` of a line or a count, tried first: from what the buffer and the
/// kernel hold at once, or `false`.
unsafe extern "C-unwind" fn receive(l: *mut lua_State) -> c_int {
    // SAFETY: see the module's invariants: the buffer is read in place for the push, and
    // consumed only after it succeeded (a raise loses no data).
    unsafe {
        let (Some(s), Some(want)) = (socket_at(l, 1), want_at(l, 2)) else {
            return fallback(l);
        };
        let read = usable(s).and_then(|mut t| {
            let conn = t.conn.as_mut()?;
            loop {
                if let Some((len, used)) = ready_len(conn, want) {
                    return Some(Read::Ready(len, used));
                }
                match try_fill(conn) {
                    None => return Some(Read::Wait),
                    Some(Ok(n)) if n > 0 => {}
                    // The end of the stream and errors are the Rust version's.
                    Some(_) => return None,
                }
            }
        });
        match read {
            Some(Read::Ready(len, used)) => {
                let Some(conn) = (*s.tcp)
                    .try_borrow_unguarded()
                    .ok()
                    .and_then(|t| t.conn.as_ref())
                else {
                    return fallback(l);
                };
                ffi::lua_pushlstring_(l, conn.buf.as_ptr() as *const c_char, len);
                if let Ok(mut t) = (*s.tcp).try_borrow_mut() {
                    if let Some(conn) = t.conn.as_mut() {
                        conn.buf.advance(used);
                    }
                }
                1
            }
            Some(Read::Wait) => {
                ffi::lua_pushboolean(l, 0);
                1
            }
            None => fallback(l),
        }
    }
}

/// `sock:setkeepalive(idle, size)`: the connection into the worker's pool. As the Rust
/// version does it when the buffer is empty.
unsafe extern "C-unwind" fn setkeepalive(l: *mut lua_State) -> c_int {
    // SAFETY: see the module's invariants; every value is dropped before `answer`.
    unsafe {
        let (Some(s), Some(idle), Some(size)) = (socket_at(l, 1), number_at(l, 2), number_at(l, 3))
        else {
            return fallback(l);
        };
        let done = (|| {
            let mut t = (*s.tcp).try_borrow_mut().ok()?;
            if t.busy || !owned(&*s.host, s.tcp) || !t.conn.as_ref()?.buf.is_empty() {
                return None;
            }
            let conn = t.conn.take()?;
            let idle = match idle {
                Some(ms) if ms > 0.0 => Duration::from_millis(ms.min(1e9) as u64),
                _ => DEFAULT_TIMEOUT,
            };
            let size = size.map_or(pool::DEFAULT_SIZE, |s| s.max(1.0) as usize);
            pool::put(&t.key, conn, idle, size);
            Some(Done::Integer(1))
        })();
        answer(l, done)
    }
}

/// The methods done in C, each falling back to the Rust method of its name in the table
/// it replaces: the plain ones, and the tried-first versions of the waiting ones.
const PLAIN: &[(&CStr, ffi::lua_CFunction)] =
    &[(c"settimeout", settimeout), (c"setkeepalive", setkeepalive)];
const TRIED: &[(&CStr, ffi::lua_CFunction)] = &[
    (c"connect", connect),
    (c"send", send),
    (c"receive", receive),
];

/// Makes the socket's type in this VM: the C methods falling back to the Rust methods of
/// their names in `plain` go into `methods`, and the tried-first ones replace the Rust
/// ones of `tries` they fall back to; the tag gets its destructor and a locked, read-only
/// metatable indexing `methods` (which the caller fills with the other methods). Returns `ngx.socket.tcp`
/// (`fallback_new` raises its phase error) and `parts`.
pub(super) fn install(
    lua: &Lua,
    host: &Rc<Host>,
    plain: &Table,
    tries: &Table,
    methods: &Table,
    fallback_new: Function,
) -> mlua::Result<(Function, Function)> {
    let host = Rc::as_ptr(host) as *mut c_void;
    // SAFETY: runs protected (an allocation failure is an error, not an abort), with the
    // three tables at 1 to 3 and `fallback_new` at 4; every push is balanced by the set
    // that consumes it. The host outlives the VM (its methods own a reference to it).
    unsafe {
        lua.exec_raw::<()>((plain, tries, methods, &fallback_new), move |l| {
            for (from, to, list) in [(1, 3, PLAIN), (2, 2, TRIED)] {
                for (name, f) in list {
                    ffi::lua_rawgetfield(l, from, name.as_ptr());
                    ffi::lua_pushcclosurek(l, *f, name.as_ptr(), 1, None);
                    ffi::lua_setfield(l, to, name.as_ptr());
                }
            }
            ffi::lua_getuserdatametatable(l, TAG);
            let installed = ffi::lua_type(l, -1) != ffi::LUA_TNIL;
            ffi::lua_settop(l, 4);
            if !installed {
                ffi::lua_createtable(l, 0, 3);
                ffi::lua_pushvalue(l, 3);
                ffi::lua_setfield(l, -2, c"__index".as_ptr());
                let locked = c"The metatable is locked";
                ffi::lua_pushlstring_(l, locked.as_ptr(), locked.count_bytes());
                ffi::lua_setfield(l, -2, c"__metatable".as_ptr());
                let name = c"TcpSocket";
                ffi::lua_pushlstring_(l, name.as_ptr(), name.count_bytes());
                ffi::lua_setfield(l, -2, c"__type".as_ptr());
                ffi::lua_setreadonly(l, -1, 1);
                ffi::lua_setuserdatametatable(l, TAG);
                ffi::lua_setuserdatadtor(l, TAG, Some(drop_socket));
            }
            ffi::lua_settop(l, 0);
        })?;
        let tcp = lua.exec_raw((&fallback_new,), move |l| {
            ffi::lua_pushlightuserdata(l, host);
            ffi::lua_insert(l, 1);
            ffi::lua_pushcclosurek(l, new_socket, c"tcp".as_ptr(), 2, None);
        })?;
        Ok((tcp, lua.create_c_function(parts)?))
    }
}

#[cfg(test)]
mod tests {
    use super::push_decimal;

    #[test]
    fn a_port_is_written_in_decimal() {
        for n in [0u16, 7, 80, 443, 6379, 10000, 65535] {
            let mut key = String::from("h:");
            push_decimal(&mut key, n);
            assert_eq!(key, format!("h:{n}"));
        }
    }
}
