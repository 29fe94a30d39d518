//! The on-disk form of the top-level `secrets:` section.

use serde::Deserialize;

/// Where one secret's values come from: exactly one source for the current value, at most
/// one for the previous value (kept valid while a rotation is under way).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretConfig {
    /// Environment variable holding the current value.
    pub env: Option<String>,
    /// File holding the current value (one trailing newline is ignored); re-read on reload.
    pub file: Option<String>,
    /// Environment variable holding the previous value; unset or empty means none.
    pub previous_env: Option<String>,
    /// File holding the previous value; a missing file means none.
    pub previous_file: Option<String>,
}
