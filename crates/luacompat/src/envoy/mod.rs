//! Envoy's Lua filter: `envoy_on_request(handle)` and `envoy_on_response(handle)` with
//! the stream-handle API of Envoy's documentation, run under our CPU budget, memory cap
//! and sandbox.
//!
//! How a call runs: the filter script is compiled like any script, marked
//! [`load_once`](sluicegate_lua::Script::load_once): as in Envoy, its top-level code runs
//! once per worker, on the first call, and what it defines (the hooks, helper functions,
//! tables) stays. Then the hook runs, through one driver function per VM ([`Driver`]).
//! Any other global a hook assigns lives for that call only, so the global-variable leak
//! of Envoy's filter (a new global per request) cannot happen; state that must outlive a
//! call belongs in a module (`lua.package_path`), `ngx.shared`, or a table the top-level
//! code created.
//!
//! Invariants:
//! - a handle (and every object it hands out: headers, buffers, stream info) is bound to
//!   the call that created it by a token the call's state holds
//!   ([`ReqState::binding`](sluicegate_lua::state::ReqState::binding)); used after its hook
//!   returned, or from another request, it raises Envoy's "object used outside of proper
//!   scope";
//! - the request hook runs in the access phase of the gateway (after rewrite plugins and
//!   before the route's upstream is chosen, so `cluster_header` sees what it set); the
//!   response hook in the header filter, where nothing may wait.

pub mod handle;
pub mod plugin;

use std::cell::Cell;
use std::rc::Rc;

use mlua::{Function, Lua, Table, Value};
use sluicegate_lua::vm::Host;

thread_local! {
    /// Tokens of hook calls on this worker thread.
    static NEXT_TOKEN: Cell<u64> = const { Cell::new(1) };
}

/// A fresh token for a hook call.
pub(crate) fn next_token() -> u64 {
    NEXT_TOKEN.with(|c| {
        let t = c.get();
        c.set(t.wrapping_add(1).max(1));
        t
    })
}

/// The per-VM driver that runs a filter call: `driver(handle, globals, hook_name[, chunk,
/// seal])`; the chunk is passed on a worker's first call of the script only. The hooks'
/// names are made once per VM (a string made from Rust is a protected call of its own).
#[derive(Clone)]
pub struct Driver {
    /// The driver function.
    pub run: Function,
    /// `"envoy_on_request"`.
    pub on_request: mlua::LuaString,
    /// `"envoy_on_response"`.
    pub on_response: mlua::LuaString,
}

/// The driver: runs the chunk once per worker (defining the hooks) and seals what it
/// defined, then calls the hook if the script defines it.
const DRIVER: &str = r#"
local rawget = ...
return function(handle, globals, hook, chunk, seal)
  if chunk then
    chunk()
    seal()
  end
  local f = rawget(globals, hook)
  if f ~= nil then return f(handle) end
end
"#;

/// Registers the Envoy filter's driver and `pairs` over handle objects (an
/// [`Extension`](sluicegate_lua::Extension)).
pub fn register(
    lua: &Lua,
    _host: &Rc<Host>,
    _modules: &Table,
    globals: &Table,
) -> mlua::Result<()> {
    let rawget: Value = globals.raw_get("rawget")?;
    let run: Function = lua.load(DRIVER).set_name("=envoy_lua").call(rawget)?;
    lua.set_app_data(Driver {
        run,
        on_request: lua.create_string("envoy_on_request")?,
        on_response: lua.create_string("envoy_on_response")?,
    });
    // Envoy's objects iterate with `pairs` (Lua 5.2's `__pairs`); Luau's `pairs` only
    // takes tables, so objects with an `__iter` metamethod are iterated through it.
    let pairs: Function = globals.raw_get("pairs")?;
    let wrapped = lua.create_function(move |_, v: mlua::MultiValue| {
        if let Some(Value::UserData(ud)) = v.front() {
            if let Ok(iter) = ud.metatable().and_then(|m| m.get::<Function>("__iter")) {
                return iter.call::<mlua::MultiValue>(ud.clone());
            }
        }
        pairs.call::<mlua::MultiValue>(v)
    })?;
    globals.raw_set("pairs", wrapped)?;
    Ok(())
}
