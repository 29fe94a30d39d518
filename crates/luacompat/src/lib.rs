//! Lua compatibility: the APIs other Lua gateways give their scripts, on top of the Lua
//! bridge (`sluicegate-lua`), so code written for them runs unchanged under our budgets and
//! sandbox. With the bridge, the only crate that imports `mlua`.
//!
//! - [`socket`]: OpenResty's cosockets, `ngx.socket.tcp()` and `ngx.socket.udp()`, the
//!   way every OpenResty library (lua-resty-redis, lua-resty-http...) reaches the network.
//!
//! [`install`] registers them with the bridge; the application calls it once at start,
//! before any VM exists.

pub mod socket;

/// Adds this crate's API to every Lua VM created from now on.
pub fn install() {
    sluicegate_lua::provide_extension(socket::register);
}
