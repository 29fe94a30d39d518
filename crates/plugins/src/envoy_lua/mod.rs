//! `envoy_lua`: runs an Envoy Lua filter script unchanged — `envoy_on_request(handle)` in
//! the access phase and `envoy_on_response(handle)` on the response head — with the
//! stream-handle API of Envoy's documentation, under the same CPU budget, memory cap,
//! sandbox and per-call globals as `lua` scripts. The runtime is the compatibility
//! crate's (`sluicegate_luacompat::envoy`); docs/lua-api.md#envoy-lua-filters is the
//! user's reference.
//!
//! ```yaml
//! plugins:
//!   - name: envoy_lua
//!     config:
//!       code: |
//!         function envoy_on_request(handle)
//!           handle:headers():add("x-filtered", "1")
//!         end
//! ```

use std::sync::Arc;

use serde::Deserialize;

use super::{parse_config, BuildCtx, Plugin};
use sluicegate_core::diag::{Diags, Path};
use sluicegate_core::yaml::Node;
use sluicegate_luacompat::envoy::plugin::{EnvoyLua, OnError};

/// `config` of an `envoy_lua` entry: exactly one of `code` and `file`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnvoyLuaConfig {
    /// The filter script inline (Envoy's `inline_code`).
    pub code: Option<String>,
    /// The filter script in a file (relative to the configuration file).
    pub file: Option<String>,
    /// Name in logs, metrics and errors; defaults to the file name or the config path.
    pub name: Option<String>,
    /// What a script error does: `continue` (Envoy's behaviour: logged, counted, the
    /// request goes on with the edits made so far) or `fail` (500). Over-budget calls
    /// always fail.
    #[serde(default)]
    pub on_error: Option<String>,
}

/// Builds an `envoy_lua` plugin: reads and compiles the script.
pub fn build(
    config: &Node,
    path: &Path,
    ctx: &BuildCtx<'_>,
    diags: &mut Diags,
) -> Option<Arc<dyn Plugin>> {
    let cfg: EnvoyLuaConfig = parse_config(config, path, diags)?;
    let before = diags.0.len();
    let on_error = match cfg.on_error.as_deref() {
        None | Some("continue") => OnError::Continue,
        Some("fail") => OnError::Fail,
        Some(other) => {
            diags.push(
                &path.key("on_error"),
                format!("unknown value `{other}`; expected continue or fail"),
            );
            OnError::Continue
        }
    };
    let script = super::lua::script(
        cfg.code.as_deref(),
        cfg.file.as_deref(),
        cfg.name.as_deref(),
        path,
        ctx,
        diags,
    );
    if diags.0.len() != before {
        return None;
    }
    let plugin = EnvoyLua::new(script?, on_error);
    if plugin.hooks() == (false, false) {
        let at = if cfg.code.is_some() { "code" } else { "file" };
        diags.push(
            &path.key(at),
            "the script defines neither envoy_on_request nor envoy_on_response",
        );
        return None;
    }
    Some(Arc::new(plugin))
}
