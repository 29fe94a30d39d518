//! Configuration of the `lua` plugin.

use serde::Deserialize;

use sluicegate_config::file::OneOrMany;

/// `config` of a `lua` plugin entry: exactly one of `code` and `file`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LuaConfig {
    /// `rewrite`, `access`, `content`, `header_filter`, `body_filter` or `log`.
    pub phase: String,
    /// The script inline.
    pub code: Option<String>,
    /// The script in a file (relative to the configuration file).
    pub file: Option<String>,
    /// Name in logs, metrics and errors; defaults to the file name or the config path.
    pub name: Option<String>,
    /// Restricts the script to requests for these hosts (`api.example.com`,
    /// `*.example.com`, `~regex`); mostly for global scripts.
    #[serde(default)]
    pub hosts: OneOrMany,
}
