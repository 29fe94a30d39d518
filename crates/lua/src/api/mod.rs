//! The API scripts see: `ngx.*` (OpenResty's names and semantics), `cjson`, `bit`, and the
//! `sluicegate.*` table. Each file registers one area; every function checks the context it
//! is called from ([`Host::check`](super::vm::Host::check)) the way OpenResty does.

pub mod cjson;
pub mod crypto;
pub mod http;
pub mod jwt;
pub mod ngx;
pub mod queue;
pub mod ratelimit;
pub mod re;
pub mod req;
pub mod resp;
pub mod shared;
pub mod timer;
pub mod upstream;
pub mod var;

use std::rc::Rc;

use mlua::{Lua, Table};

use super::vm::Host;

/// The `bit` module of LuaJIT on top of Luau's `bit32`: LuaJIT returns signed 32-bit
/// results, `bit32` unsigned ones, so every result goes through `tobit`.
const BIT_SHIM: &str = r#"
local b32 = bit32
local function tobit(x)
  x = x % 4294967296
  if x >= 2147483648 then x = x - 4294967296 end
  return x
end
local function wrap(f)
  return function(...) return tobit(f(...)) end
end
local bit = {
  tobit = tobit,
  band = wrap(b32.band), bor = wrap(b32.bor), bxor = wrap(b32.bxor), bnot = wrap(b32.bnot),
  lshift = function(x, n) return tobit(b32.lshift(x % 4294967296, n % 32)) end,
  rshift = function(x, n) return tobit(b32.rshift(x % 4294967296, n % 32)) end,
  arshift = function(x, n) return tobit(b32.arshift(x % 4294967296, n % 32)) end,
  rol = function(x, n) return tobit(b32.lrotate(x % 4294967296, n % 32)) end,
  ror = function(x, n) return tobit(b32.rrotate(x % 4294967296, n % 32)) end,
  bswap = function(x)
    x = x % 4294967296
    return tobit(b32.bor(b32.lshift(b32.band(x, 0xff), 24), b32.lshift(b32.band(b32.rshift(x, 8), 0xff), 16),
      b32.lshift(b32.band(b32.rshift(x, 16), 0xff), 8), b32.rshift(x, 24)))
  end,
  tohex = function(x, n)
    n = n or 8
    local upper = n < 0
    if upper then n = -n end
    local s = string.format(upper and "%08X" or "%08x", x % 4294967296)
    return string.sub(s, 9 - n)
  end,
}
return bit
"#;

/// Registers every global and module; returns the table `require` resolves from.
pub fn register(lua: &Lua, host: &Rc<Host>, globals: &Table) -> mlua::Result<Table> {
    let modules = lua.create_table()?;
    let ngx = lua.create_table()?;
    ngx::register(lua, host, &ngx)?;
    var::register(lua, host, &ngx)?;
    req::register(lua, host, &ngx)?;
    resp::register(lua, host, &ngx)?;
    shared::register(lua, host, &ngx)?;
    timer::register(lua, host, &ngx)?;
    let re = re::register(lua, host, &ngx)?;
    let sluicegate = lua.create_table()?;
    crypto::register(lua, &ngx, &sluicegate)?;
    http::register(lua, host, &sluicegate)?;
    queue::register(lua, host, &sluicegate)?;
    jwt::register(lua, host, &sluicegate)?;
    upstream::register(lua, host, &sluicegate)?;
    ratelimit::register(lua, host, &sluicegate)?;
    let cjson = cjson::module(lua, false)?;
    let cjson_safe = cjson::module(lua, true)?;
    ngx.raw_set("null", mlua::Value::NULL)?;
    let bit: Table = lua.load(BIT_SHIM).set_name("=bit").eval()?;

    let base64 = lua.create_table()?;
    for name in ["encode_base64url", "decode_base64url"] {
        base64.raw_set(
            name,
            sluicegate
                .raw_get::<Table>("crypto")?
                .raw_get::<mlua::Value>(name)?,
        )?;
    }

    let print_host = host.clone();
    let print = lua.create_function(move |lua, args: mlua::Variadic<mlua::Value>| {
        let text: Vec<String> = args.iter().map(super::convert::display).collect();
        ngx::write_log(lua, &print_host, 6, &text.join("\t"));
        Ok(())
    })?;
    globals.raw_set("print", print)?;
    let debug = lua.create_table()?;
    debug.raw_set(
        "traceback",
        lua.create_function(|lua, (msg, level): (Option<mlua::Value>, Option<usize>)| {
            let msg = msg.map(|m| super::convert::display(&m));
            lua.traceback(msg.as_deref(), level.unwrap_or(1))
        })?,
    )?;
    globals.raw_set("debug", debug)?;
    globals.raw_set("ngx", &ngx)?;
    globals.raw_set("sluicegate", &sluicegate)?;

    modules.raw_set("cjson", cjson)?;
    modules.raw_set("cjson.safe", cjson_safe)?;
    modules.raw_set("bit", bit)?;
    modules.raw_set("ngx", &ngx)?;
    modules.raw_set("ngx.re", re)?;
    modules.raw_set("ngx.base64", base64)?;
    modules.raw_set("resty.core", true)?;
    modules.raw_set("sluicegate", &sluicegate)?;
    Ok(modules)
}
