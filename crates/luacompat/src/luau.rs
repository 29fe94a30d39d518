//! Stack reads the Luau C functions of [`crate::envoy`] and [`crate::socket`] share.
#![allow(unsafe_code)]

use std::ffi::c_int;

use mlua::ffi::{self, lua_State};

/// The `T` a userdata of `tag` at `idx` holds, if that value is one.
///
/// # Safety
/// `l` is a running Luau thread, `idx` a valid stack index, and every userdata of `tag`
/// was written with a `T` when it was made.
pub(crate) unsafe fn tagged_at<T: Copy>(l: *mut lua_State, idx: c_int, tag: c_int) -> Option<T> {
    // SAFETY: a non-null pointer from `lua_touserdatatagged` is a block of `tag`, which
    // holds a `T` by the contract.
    unsafe {
        let p = ffi::lua_touserdatatagged(l, idx, tag) as *const T;
        if p.is_null() {
            None
        } else {
            Some(p.read_unaligned())
        }
    }
}

/// The string at `idx` (not a number), borrowed from the stack.
///
/// # Safety
/// As [`tagged_at`]'s first two; the slice lives while the value stays on the stack.
pub(crate) unsafe fn string_at<'a>(l: *mut lua_State, idx: c_int) -> Option<&'a [u8]> {
    // SAFETY: for a string value `lua_tolstring` neither converts nor allocates and
    // returns its bytes and length.
    unsafe {
        if ffi::lua_type(l, idx) != ffi::LUA_TSTRING {
            return None;
        }
        let mut len = 0usize;
        let p = ffi::lua_tolstring(l, idx, &mut len);
        if p.is_null() {
            return None;
        }
        Some(std::slice::from_raw_parts(p as *const u8, len))
    }
}

/// Calls upvalue `upvalue` of the running C function with its arguments as they are on the stack
/// and returns what it returns.
///
/// # Safety
/// `l` is the running C function's thread, that upvalue a function, and no Rust value with a
/// destructor is alive in the caller's frame (the call may raise).
pub(crate) unsafe fn call_upvalue(l: *mut lua_State, upvalue: c_int) -> c_int {
    // SAFETY: a C function has LUA_MINSTACK free slots; the upvalue is a function.
    unsafe {
        let n = ffi::lua_gettop(l);
        ffi::lua_pushvalue(l, ffi::lua_upvalueindex(upvalue));
        ffi::lua_insert(l, 1);
        ffi::lua_call(l, n, ffi::LUA_MULTRET);
        ffi::lua_gettop(l)
    }
}
