//! Configuration of the `request_termination` plugin.

use std::collections::BTreeMap;

use serde::Deserialize;

/// `config` of a `request_termination` plugin entry.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestTerminationConfig {
    /// Status code (200..=599); 503 by default, as for maintenance.
    #[serde(default = "default_status")]
    pub status: u16,
    /// A text body.
    pub body: Option<String>,
    /// A JSON body (any value), sent with `application/json`.
    pub json: Option<serde_json::Value>,
    /// Content type (default `text/plain; charset=utf-8` for `body`, `application/json`
    /// for `json`).
    pub content_type: Option<String>,
    /// Extra response headers.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

fn default_status() -> u16 {
    503
}
