//! Building a sandboxed VM: Luau's safe standard libraries without `loadstring`, `getfenv`,
//! `setfenv` or any file access; a `require` that only resolves built-in modules (and never
//! reads files); the host API; then Luau's sandbox mode, which makes the globals, every
//! library table and the string metatable read-only. Module tables reachable only through
//! `require` (and nested API tables such as `ngx.req`) are frozen here too, so no script can
//! change what another script sees.

use std::collections::HashSet;
use std::rc::Rc;

use mlua::{Lua, LuaOptions, StdLib, Table, Value};

use super::vm::Host;
use super::{api, budget};

/// A Luau state with the safe standard libraries.
pub fn new_lua() -> mlua::Result<Lua> {
    let libs = StdLib::COROUTINE
        | StdLib::TABLE
        | StdLib::OS
        | StdLib::STRING
        | StdLib::UTF8
        | StdLib::BIT
        | StdLib::MATH
        | StdLib::BUFFER;
    Lua::new_with(libs, LuaOptions::default())
}

/// Globals removed because they load code, reach outside the sandbox or change other
/// functions' environments. `_G` goes too: Luau resolves built-in names once, when a script
/// is loaded, so a global `_G` would always be the frozen table; each script environment
/// provides its own `_G` instead (see `vm.rs`).
const REMOVED: &[&str] = &[
    "loadstring",
    "load",
    "getfenv",
    "setfenv",
    "require",
    "dofile",
    "loadfile",
    "module",
    "_G",
];

/// Adds modules and globals before the VM is frozen (the spec runner's `describe`, `it`...).
pub type Extras<'a> = &'a dyn Fn(&Lua, &Table, &Table) -> mlua::Result<()>;

/// Registers the API (and `extras`: modules, globals), freezes everything and installs the
/// interrupt. Returns the (frozen) globals table that script environments read through.
pub fn install(lua: &Lua, host: &Rc<Host>, extras: Option<Extras<'_>>) -> mlua::Result<Table> {
    let globals = lua.globals();
    for name in REMOVED {
        globals.raw_set(*name, Value::Nil)?;
    }
    let modules = api::register(lua, host, &globals)?;
    for ext in super::extensions() {
        ext(lua, host, &modules, &globals)?;
    }
    if let Some(extras) = extras {
        extras(lua, &modules, &globals)?;
    }
    for lib in [
        "string",
        "table",
        "math",
        "os",
        "coroutine",
        "utf8",
        "bit32",
        "buffer",
    ] {
        if let Ok(t @ Value::Table(_)) = globals.raw_get::<Value>(lib) {
            modules.raw_set(lib, t)?;
        }
    }
    // Named in "not found" messages: every module registered above, extensions' included.
    let mut known: Vec<String> = modules
        .pairs::<String, Value>()
        .filter_map(|kv| kv.ok().map(|(k, _)| k))
        .collect();
    known.sort();
    let require_modules = modules.clone();
    let h = host.clone();
    let require = lua.create_function(move |lua, name: mlua::LuaString| {
        let key = name.to_string_lossy();
        if let v @ (Value::Table(_) | Value::Function(_) | Value::Boolean(_)) =
            require_modules.raw_get::<Value>(key.as_str())?
        {
            return Ok(v);
        }
        let vm = h.vm.borrow().upgrade();
        if let Some(vm) = vm {
            if let Some(v) = vm.require_module(&key)? {
                return Ok(v);
            }
        }
        let searched = match h.instance.borrow().as_ref().and_then(|i| i.script_arc()) {
            Some(s) => match &s.modules {
                Some(m) => m.searched(&key),
                None => "no lua.package_path is configured".to_string(),
            },
            None => "no lua.package_path is configured".to_string(),
        };
        Err(super::convert::error(
            lua,
            format!(
                "module '{key}' not found: not a built-in module ({}), and {searched}",
                known.join(", ")
            ),
        ))
    })?;
    globals.raw_set("require", require)?;
    let mut seen = HashSet::new();
    freeze(&modules, &mut seen);
    freeze(&globals, &mut seen);
    lua.sandbox(true)?;
    budget::install(lua);
    Ok(globals)
}

/// Makes `t` and every table reachable from it (values and metatables) read-only.
fn freeze(t: &Table, seen: &mut HashSet<usize>) {
    if !seen.insert(t.to_pointer() as usize) {
        return;
    }
    if let Some(meta) = t.metatable() {
        freeze(&meta, seen);
    }
    let children: Vec<Table> = t
        .pairs::<Value, Value>()
        .filter_map(|kv| match kv {
            Ok((_, Value::Table(c))) => Some(c),
            _ => None,
        })
        .collect();
    for c in &children {
        freeze(c, seen);
    }
    t.set_readonly(true);
}

#[cfg(test)]
mod tests {
    use super::super::Runtime;
    use super::*;

    fn vm() -> Rc<super::super::vm::Vm> {
        super::super::vm::Vm::new(Runtime::standalone(Default::default())).unwrap()
    }

    #[test]
    fn removes_code_loading_and_environment_functions() {
        let vm = vm();
        for name in [
            "loadstring",
            "getfenv",
            "setfenv",
            "load",
            "dofile",
            "io",
            "debug.sethook",
            "os.execute",
            "os.getenv",
        ] {
            let v: Value = vm
                .lua
                .load(format!("return {name}"))
                .eval()
                .unwrap_or(Value::Nil);
            assert!(v.is_nil(), "{name} is still reachable");
        }
    }

    #[test]
    fn the_standard_library_cannot_be_changed() {
        let vm = vm();
        let r = vm
            .lua
            .load("string.upper = function() return 'x' end")
            .exec();
        assert!(r.is_err());
        let r = vm.lua.load("getmetatable('').__index = {}").exec();
        assert!(r.is_err());
        let r = vm.lua.load("ngx.req.get_method = nil").exec();
        assert!(r.is_err());
    }

    #[test]
    fn require_resolves_built_in_modules_only() {
        let vm = vm();
        let ok: bool = vm
            .lua
            .load("local cjson = require 'cjson'; return type(cjson.encode) == 'function'")
            .eval()
            .unwrap();
        assert!(ok);
        let err = vm
            .lua
            .load("require 'os'; require 'socket'")
            .exec()
            .unwrap_err();
        assert!(err.to_string().contains("not a built-in module"), "{err}");
    }
}
