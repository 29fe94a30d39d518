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
    #[serde(default)]
    pub keys: Vec<SecretRef>,
    /// Also accept every consumer's `key_auth` credential (the consumer it names is then
    /// the request's consumer).
    #[serde(default)]
    pub consumers: bool,
    /// Remove the key from the request before it goes upstream.
    #[serde(default)]
    pub strip: bool,
}
