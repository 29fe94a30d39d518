//! Configuration of the `key_auth` plugin.

use serde::Deserialize;

use sluicegate_secrets::SecretRef;

/// `config` of a `key_auth` plugin entry.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyAuthConfig {
    /// Request header carrying the key (`X-Api-Key` when neither `header` nor `query_param`
    /// is given).
    pub header: Option<String>,
    /// Query parameter carrying the key (looked at when the header is absent).
    pub query_param: Option<String>,
    /// The accepted keys: secret references; each accepts its current and previous value.
    pub keys: Vec<SecretRef>,
    /// Remove the key from the request before it goes upstream.
    #[serde(default)]
    pub strip: bool,
}
