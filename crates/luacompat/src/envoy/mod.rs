//! Envoy's Lua filter: `envoy_on_request(handle)` and `envoy_on_response(handle)` with
//! the stream-handle API of Envoy's documentation, run under our CPU budget, memory cap
//! and sandbox.
//!
//! How a call runs: the filter script is compiled like any script, marked
//! [`load_once`](sluicegate_lua::Script::load_once): as in Envoy, its top-level code runs
//! once per worker, on the first call, and what it defines (the hooks, helper functions,
//! tables) stays. Then the hook runs, through the VM's driver ([`Driver`]), with a handle
//! the driver makes inside the call: a raw Luau userdata whose common header methods are C
//! functions (module `raw`), falling back to the Rust methods of [`handle`].
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
mod raw;

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

/// The per-VM functions that run filter calls. A worker's first call of a script runs
/// `first(dir, globals, hook_name, chunk, seal)`; once the chunk ran, each hook is called
/// through a function `caller(globals, hook_name, dir)` made for the script's instance and
/// kept with it ([`Instance::kept`](sluicegate_lua::vm::Instance::kept)), which takes no
/// arguments: a call pushes one function and nothing else. The handle is made inside the
/// call, bound to the call's token. The hooks' names are made once per VM (a string made
/// from Rust is a protected call of its own).
#[derive(Clone)]
pub struct Driver {
    /// Runs the chunk, seals what it defined, then calls the hook.
    pub first: Function,
    /// Makes the caller of a hook.
    pub caller: Function,
    /// `"envoy_on_request"`.
    pub on_request: mlua::LuaString,
    /// `"envoy_on_response"`.
    pub on_response: mlua::LuaString,
}

/// The driver's two functions. A hook is looked up on every call (a hook may assign a
/// new one, as in Envoy) but only among the names the chunk defined, with the global
/// `rawget`, which Luau runs as a builtin without a call frame.
const DRIVER: &str = r#"
local newhandle = ...
local function caller(globals, hook, dir)
  return function()
    local f = rawget(globals, hook)
    if f ~= nil then return f(newhandle(dir)) end
  end
end
local function first(dir, globals, hook, chunk, seal)
  chunk()
  seal()
  return caller(globals, hook, dir)()
end
return first, caller
"#;

/// The handle's methods: each Rust method called with the handle's token and direction.
/// `headers` answers the handle itself; `__iter` becomes the metatable's.
const WRAP: &str = r#"
local slow, scope_of = ...
local methods, iter = {}, nil
for name, f in slow do
  if name == "headers" then
    methods[name] = function(h) f(scope_of(h)) return h end
  elseif name == "__iter" then
    iter = function(h) return f(scope_of(h)) end
  else
    methods[name] = function(h, ...)
      local token, dir = scope_of(h)
      return f(token, dir, ...)
    end
  end
end
return methods, iter
"#;

/// `pairs` that also iterates userdata with an `__iter` metamethod (Envoy's objects
/// iterate with Lua 5.2's `__pairs`; Luau's `pairs` only takes tables).
const PAIRS: &str = r#"
local rawpairs, iter_of, type = ...
return function(v, ...)
  if type(v) == "userdata" then
    local iter = iter_of(v)
    if iter ~= nil then return iter(v) end
  end
  return rawpairs(v, ...)
end
"#;

/// Registers the Envoy filter's handle type, its driver and `pairs` over handle objects
/// (an [`Extension`](sluicegate_lua::Extension)).
pub fn register(lua: &Lua, host: &Rc<Host>, _modules: &Table, globals: &Table) -> mlua::Result<()> {
    let c = raw::functions(lua, host)?;
    let slow = handle::methods(lua, host)?;
    let (methods, iter): (Table, Function) = lua
        .load(WRAP)
        .set_name(sluicegate_lua::convert::GLUE_CHUNK)
        .call((slow, c.scope_of))?;
    raw::install(lua, &methods, &iter)?;
    let (first, caller): (Function, Function) =
        lua.load(DRIVER).set_name("=envoy_lua").call(c.new_handle)?;
    lua.set_app_data(Driver {
        first,
        caller,
        on_request: lua.create_string("envoy_on_request")?,
        on_response: lua.create_string("envoy_on_response")?,
    });
    let rawpairs: Value = globals.raw_get("pairs")?;
    let kind: Value = globals.raw_get("type")?;
    let pairs: Function = lua
        .load(PAIRS)
        .set_name(sluicegate_lua::convert::GLUE_CHUNK)
        .call((rawpairs, c.iter_of, kind))?;
    globals.raw_set("pairs", pairs)?;
    Ok(())
}
