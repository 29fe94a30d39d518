//! `sluicegate.upstream.set(name [, target])`: sends the request to upstream `name` instead
//! of the route's — OpenResty's `balancer_by_lua` use case — optionally to one of its
//! targets first (`"ip:port"`, or `"host:port"` of a target named by host). The choice
//! applies when the request is forwarded; a target that is down, ejected or unreachable is
//! skipped like any other, and retries go to the upstream's other targets.
//!
//! Returns `true`, or `nil, err` for an unknown upstream or a target it does not have.

use std::rc::Rc;
use std::sync::Arc;

use mlua::{Lua, Table, Value};

use super::super::vm::Host;
use super::super::{Kind, Kinds};

/// Where the choice still matters: before the request is forwarded.
const PHASES: Kinds = Kinds(Kind::Rewrite.bit() | Kind::Access.bit());

/// Registers `sluicegate.upstream`.
pub fn register(lua: &Lua, host: &Rc<Host>, sluicegate: &Table) -> mlua::Result<()> {
    let upstream = lua.create_table()?;
    let h = host.clone();
    let set = lua.create_function(move |lua, (name, target): (String, Option<String>)| {
        let chosen = (h.rt.upstreams)(&name, target.as_deref());
        let mut out = mlua::MultiValue::new();
        match chosen {
            Ok(u) => {
                h.with_req(lua, "sluicegate.upstream.set", PHASES, |state| {
                    state.upstream_choice = Some((u, target.map(|t| Arc::from(t.as_str()))));
                    Ok(())
                })?;
                out.push_back(Value::Boolean(true));
            }
            Err(e) => {
                // The phase is checked either way, so a misplaced call fails loudly.
                h.check(lua, "sluicegate.upstream.set", PHASES)?;
                out.push_back(Value::Nil);
                out.push_back(Value::String(lua.create_string(e)?));
            }
        }
        Ok(out)
    })?;
    upstream.raw_set("set", set)?;
    sluicegate.raw_set("upstream", upstream)?;
    Ok(())
}
