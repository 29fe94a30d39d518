//! `sluicegate.jwt.claims()`: the claims of the token the `jwt` plugin verified for this
//! request, as a table (a fresh copy each call: changing it changes nothing else), or `nil`
//! when no token was verified (no `jwt` plugin on the route, an anonymous request let
//! through by `optional: true`, or a call before the access phase). JSON `null` claims are
//! `cjson.null`, as `cjson.decode` gives them.
//!
//! ```lua
//! local claims = sluicegate.jwt.claims()
//! if not claims or claims.plan ~= "pro" then return ngx.exit(403) end
//! ngx.req.set_header("X-Plan", claims.plan)
//! ```

use std::rc::Rc;

use mlua::{Lua, Table, Value};

use super::super::vm::Host;
use super::super::Kinds;

/// Registers `sluicegate.jwt`.
pub fn register(lua: &Lua, host: &Rc<Host>, sluicegate: &Table) -> mlua::Result<()> {
    let jwt = lua.create_table()?;
    let h = host.clone();
    jwt.raw_set(
        "claims",
        lua.create_function(move |lua, ()| {
            let claims = h.with_req(lua, "sluicegate.jwt.claims", Kinds::REQUEST, |s| {
                Ok(s.info.jwt_claims.clone())
            })?;
            match claims {
                None => Ok(Value::Nil),
                Some(map) => super::cjson::to_lua(lua, serde_json::Value::Object((*map).clone())),
            }
        })?,
    )?;
    sluicegate.raw_set("jwt", jwt)?;
    Ok(())
}
