//! Configuration of the `headers` plugin.

use std::collections::BTreeMap;

use serde::Deserialize;

/// `config` of a `headers` plugin entry.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeadersConfig {
    /// Changes to the request sent upstream.
    #[serde(default)]
    pub request: HeaderOps,
    /// Changes to the response sent to the client.
    #[serde(default)]
    pub response: HeaderOps,
}

/// Header operations, applied in the order remove → set → add.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderOps {
    /// Replace (or create) these headers.
    #[serde(default)]
    pub set: BTreeMap<String, String>,
    /// Append these values, keeping existing ones.
    #[serde(default)]
    pub add: BTreeMap<String, String>,
    /// Remove these headers.
    #[serde(default)]
    pub remove: Vec<String>,
}
