//! The stream handle in raw Luau: a userdata of a tag of its own holding only its call's
//! token and direction, made by the driver inside the running call, and the header
//! methods every filter calls (`headers`, `get`, `add`, `replace`, `remove`) as Luau C
//! functions.
//!
//! Why: through mlua, a call from Lua into Rust costs about 1,400 instructions before any
//! work (a protected frame, the arguments' conversion, references through its ref thread),
//! and a userdata made from Rust while a memory cap is set another protected call. Seed
//! 003's filter makes eight such calls and two handles per request. A C function reads its
//! arguments off the Luau stack and answers in place.
//!
//! The methods' Rust implementations ([`super::handle::methods`], called with the handle's
//! token and direction) stay the reference: every case off the common path — an argument
//! that is not a handle or not a string, a handle out of its call, a pseudo-header write,
//! an invalid name or value, several values to join, raw response lines not merged yet —
//! is handed to them unchanged, and they raise Envoy's errors. The C functions never
//! decide an error themselves.
//!
//! Invariants the `unsafe` code relies on:
//! - a C function calls what may raise a Luau error (a push that allocates, `lua_call`,
//!   `luaL_error`) only when no Rust value with a destructor is alive in its frame: a
//!   raise unwinds through it;
//! - a handle holds a pointer to its VM's [`Host`] (given to `newhandle` as its upvalue);
//!   the host outlives every value and call of the VM's Lua state (the Rust methods,
//!   stored in that state, own a reference to it);
//! - the request state is read in place (no guard) only between checks and pushes that run
//!   no Rust code, so nothing can borrow it mutably meanwhile.
#![allow(unsafe_code)]

use std::ffi::{c_char, c_int, c_void, CStr};
use std::rc::Rc;

use mlua::ffi::{self, lua_State};
use mlua::{Function, Lua, Table};
use sluicegate_lua::vm::Host;

use super::handle::{self, Dir, Found};
use crate::luau::string_at;

/// The handle's userdata tag (mlua uses 0 and 1; nothing else in the gateway tags
/// userdata).
const TAG: c_int = 40;

/// A handle's contents: its call's token, its VM's host (read here instead of from an
/// upvalue, which costs Luau a pseudo-index lookup per call) and its direction.
#[derive(Clone, Copy)]
#[repr(C)]
struct RawHandle {
    token: u64,
    host: *const Host,
    dir: u8,
}

impl RawHandle {
    /// The VM's host.
    ///
    /// # Safety
    /// The handle was read off a live Luau stack ([`handle_at`]).
    unsafe fn host<'a>(&self) -> &'a Host {
        // SAFETY: `new_handle` stored its VM's host, which outlives every value of the
        // VM's Lua state (the module's invariants).
        unsafe { &*self.host }
    }
}

/// The handle at `idx`, if that value is one.
///
/// # Safety
/// `l` is a running Luau thread and `idx` a valid stack index.
unsafe fn handle_at(l: *mut lua_State, idx: c_int) -> Option<RawHandle> {
    // SAFETY: as the caller's; every block of the tag holds a `RawHandle`.
    unsafe { crate::luau::tagged_at(l, idx, TAG) }
}

/// The VM's host, from upvalue 1.
///
/// # Safety
/// Only from `new_handle` made by [`functions`].
unsafe fn host<'a>(l: *mut lua_State) -> &'a Host {
    // SAFETY: upvalue 1 is the host pointer `functions` stored; the host outlives the call.
    unsafe { &*(ffi::lua_tolightuserdata(l, ffi::lua_upvalueindex(1)) as *const Host) }
}

/// Hands the call, arguments as given, to the method's Rust implementation (upvalue 1)
/// and returns what it returns.
///
/// # Safety
/// Only from a header C function made by [`install`], with no Rust value with a destructor
/// alive in the caller's frame (the method may raise).
unsafe fn fallback(l: *mut lua_State) -> c_int {
    // SAFETY: a C function has LUA_MINSTACK free slots; the upvalue is a function.
    unsafe { crate::luau::call_upvalue(l, 1) }
}

/// `newhandle(dir)`: the handle for the running call, bound to its token.
unsafe extern "C-unwind" fn new_handle(l: *mut lua_State) -> c_int {
    // SAFETY: called by Luau with its arguments on the stack; `running_token` drops its
    // borrow before returning; the userdata block is `size_of::<RawHandle>()` bytes,
    // written once before any other use. An allocation failure or the raise happens with
    // nothing alive in this frame.
    unsafe {
        let host = host(l);
        let token = handle::running_token(host);
        if token == 0 {
            ffi::luaL_error(
                l,
                c"a stream handle is made only for a filter's call".as_ptr(),
            );
        }
        let dir = ffi::lua_tonumberx(l, 1, std::ptr::null_mut()) as u8;
        let p = ffi::lua_newuserdatataggedwithmetatable(l, std::mem::size_of::<RawHandle>(), TAG)
            as *mut RawHandle;
        p.write_unaligned(RawHandle {
            token,
            host: std::ptr::from_ref(host),
            dir,
        });
    }
    1
}

/// `scope_of(handle)`: its token and direction, for the Rust methods.
unsafe extern "C-unwind" fn scope_of(l: *mut lua_State) -> c_int {
    // SAFETY: called by Luau; the raise happens with nothing alive in this frame.
    unsafe {
        match handle_at(l, 1) {
            Some(h) => {
                ffi::lua_pushnumber(l, h.token as f64);
                ffi::lua_pushnumber(l, f64::from(h.dir));
                2
            }
            None => ffi::luaL_error(
                l,
                c"expected a stream handle (call its methods with `:`)".as_ptr(),
            ),
        }
    }
}

/// `iter_of(v)`: the `__iter` metamethod of userdata `v` (read past a locked metatable),
/// or nothing.
unsafe extern "C-unwind" fn iter_of(l: *mut lua_State) -> c_int {
    // SAFETY: called by Luau; reads only.
    unsafe {
        if ffi::lua_type(l, 1) == ffi::LUA_TUSERDATA && ffi::lua_getmetatable(l, 1) != 0 {
            ffi::lua_rawgetfield(l, -1, c"__iter".as_ptr());
            return 1;
        }
    }
    0
}

/// `handle:headers()`: the handle itself, once it is known to be in its call.
unsafe extern "C-unwind" fn headers(l: *mut lua_State) -> c_int {
    // SAFETY: see the module's invariants; `bound` drops its borrow before returning.
    unsafe {
        match handle_at(l, 1) {
            Some(h) if handle::bound(h.host(), h.token) => {
                if ffi::lua_gettop(l) != 1 {
                    ffi::lua_settop(l, 1);
                }
                1
            }
            _ => fallback(l),
        }
    }
}

/// `headers:get(name)`.
unsafe extern "C-unwind" fn get(l: *mut lua_State) -> c_int {
    // SAFETY: see the module's invariants. The state is read without a guard: between the
    // borrow and the push nothing runs but this function and Luau's allocator.
    unsafe {
        let (Some(h), Some(name)) = (handle_at(l, 1), string_at(l, 2)) else {
            return fallback(l);
        };
        let Ok(cur) = h.host().cur.try_borrow_unguarded() else {
            return fallback(l);
        };
        let found = match cur.as_deref() {
            Some(s) if s.binding == h.token => handle::find(s, Dir::from_code(h.dir), name),
            _ => Found::Slow,
        };
        match found {
            Found::Nil => ffi::lua_pushnil(l),
            Found::Bytes(b) => ffi::lua_pushlstring_(l, b.as_ptr() as *const c_char, b.len()),
            Found::Status(code) => {
                let digits = [
                    b'0' + (code / 100 % 10) as u8,
                    b'0' + (code / 10 % 10) as u8,
                    b'0' + (code % 10) as u8,
                ];
                ffi::lua_pushlstring_(l, digits.as_ptr() as *const c_char, digits.len());
            }
            Found::Slow => return fallback(l),
        }
        1
    }
}

/// `add`, `replace` and `remove`: a write done by [`handle::write_fast`], whose values are
/// all dropped before this frame may raise.
unsafe fn write(l: *mut lua_State, value: bool, append: bool) -> c_int {
    // SAFETY: see the module's invariants.
    unsafe {
        let h = handle_at(l, 1);
        let name = string_at(l, 2);
        let v = if value { string_at(l, 3) } else { None };
        let done = match (h, name) {
            (Some(h), Some(name)) if v.is_some() || !value => {
                handle::write_fast(h.host(), h.token, Dir::from_code(h.dir), name, v, append)
            }
            _ => false,
        };
        if done {
            0
        } else {
            fallback(l)
        }
    }
}

unsafe extern "C-unwind" fn add(l: *mut lua_State) -> c_int {
    // SAFETY: as `write`.
    unsafe { write(l, true, true) }
}

unsafe extern "C-unwind" fn replace(l: *mut lua_State) -> c_int {
    // SAFETY: as `write`.
    unsafe { write(l, true, false) }
}

unsafe extern "C-unwind" fn remove(l: *mut lua_State) -> c_int {
    // SAFETY: as `write`.
    unsafe { write(l, false, false) }
}

/// The header methods done in C, by name.
const HOT: &[(&CStr, ffi::lua_CFunction)] = &[
    (c"headers", headers),
    (c"get", get),
    (c"add", add),
    (c"replace", replace),
    (c"remove", remove),
];

/// The functions the driver and the `pairs` wrapper use.
pub struct Raw {
    /// `newhandle(dir)`.
    pub new_handle: Function,
    /// `scope_of(handle)`.
    pub scope_of: Function,
    /// `iter_of(v)`.
    pub iter_of: Function,
}

/// The C functions besides the header methods; `newhandle` keeps `host` as its upvalue.
pub fn functions(lua: &Lua, host: &Rc<Host>) -> mlua::Result<Raw> {
    let host = Rc::as_ptr(host) as *mut c_void;
    // SAFETY: each function follows Luau's C calling convention and the module's
    // invariants; `make` runs protected and leaves the closure on the stack.
    unsafe {
        Ok(Raw {
            new_handle: lua.exec_raw((), move |l| {
                ffi::lua_pushlightuserdata(l, host);
                ffi::lua_pushcclosurek(l, new_handle, c"newhandle".as_ptr(), 1, None);
            })?,
            scope_of: lua.create_c_function(scope_of)?,
            iter_of: lua.create_c_function(iter_of)?,
        })
    }
}

/// Makes the handle's type in this VM: `methods` (name → Lua wrapper of the Rust method)
/// gets the C header methods, each falling back to the wrapper it replaces; the tag's
/// metatable indexes `methods`, iterates with `iter`, and is locked and read-only, like
/// `methods`, so that no script can change another's handles.
pub fn install(lua: &Lua, methods: &Table, iter: &Function) -> mlua::Result<()> {
    // SAFETY: runs protected (an allocation failure is an error, not an abort), with
    // `methods` at index 1 and `iter` at index 2; every push is balanced by the set that
    // consumes it.
    unsafe {
        lua.exec_raw::<()>((methods, iter), move |l| {
            ffi::lua_getuserdatametatable(l, TAG);
            let installed = ffi::lua_type(l, -1) != ffi::LUA_TNIL;
            ffi::lua_settop(l, 2);
            if installed {
                return;
            }
            for (name, f) in HOT {
                ffi::lua_rawgetfield(l, 1, name.as_ptr());
                ffi::lua_pushcclosurek(l, *f, name.as_ptr(), 1, None);
                ffi::lua_setfield(l, 1, name.as_ptr());
            }
            ffi::lua_createtable(l, 0, 4);
            ffi::lua_pushvalue(l, 1);
            ffi::lua_setfield(l, -2, c"__index".as_ptr());
            ffi::lua_pushvalue(l, 2);
            ffi::lua_setfield(l, -2, c"__iter".as_ptr());
            let locked = c"The metatable is locked";
            ffi::lua_pushlstring_(l, locked.as_ptr(), locked.count_bytes());
            ffi::lua_setfield(l, -2, c"__metatable".as_ptr());
            let name = c"StreamHandle";
            ffi::lua_pushlstring_(l, name.as_ptr(), name.count_bytes());
            ffi::lua_setfield(l, -2, c"__type".as_ptr());
            ffi::lua_setreadonly(l, -1, 1);
            ffi::lua_setreadonly(l, 1, 1);
            ffi::lua_setuserdatametatable(l, TAG);
            ffi::lua_settop(l, 0);
        })
    }
}
