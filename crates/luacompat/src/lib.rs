//! Lua compatibility: the APIs other Lua gateways give their scripts, on top of the Lua
//! bridge (`sluicegate-lua`), so code written for them runs unchanged under our budgets and
//! sandbox. With the bridge, the only crate that imports `mlua`.
//!
//! - [`socket`]: OpenResty's cosockets, `ngx.socket.tcp()` and `ngx.socket.udp()`, the
//!   way every OpenResty library (lua-resty-redis, lua-resty-http...) reaches the network;
//! - [`envoy`]: Envoy's Lua filter (`envoy_on_request(handle)`, `envoy_on_response`) and
//!   the `envoy_lua` plugin that runs it;
//! - [`modules`]: the `json` and `jwt` modules Envoy scripts `require`.
//!
//! [`install`] registers them with the bridge; the application calls it once at start,
//! before any VM exists.

pub mod envoy;
mod luau;
pub mod modules;
pub mod socket;

/// Adds this crate's API to every Lua VM created from now on.
pub fn install() {
    sluicegate_lua::provide_extension(socket::register);
    sluicegate_lua::provide_extension(modules::register);
    sluicegate_lua::provide_extension(envoy::register);
}
