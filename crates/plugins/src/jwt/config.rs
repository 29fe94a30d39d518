//! Configuration of the `jwt` plugin.

use std::collections::BTreeMap;

use serde::Deserialize;

use sluicegate_config::file::{OneOrMany, UpstreamTlsConfig};
use sluicegate_secrets::SecretRef;

/// `config` of a `jwt` plugin entry.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtConfig {
    /// Keys given in the configuration.
    #[serde(default)]
    pub keys: Vec<KeyConfig>,
    /// Keys published at a JWKS URL.
    pub jwks: Option<JwksConfig>,
    /// Also verify tokens whose `iss` is a consumer's `jwt` credential, with that
    /// credential's key; the consumer is then the request's consumer.
    #[serde(default)]
    pub consumers: bool,
    /// Accepted algorithms; default: every algorithm the keys can verify.
    #[serde(default)]
    pub algorithms: OneOrMany,
    /// Accepted `iss` values.
    #[serde(default)]
    pub issuer: OneOrMany,
    /// Accepted audiences (`aud` must name one).
    #[serde(default)]
    pub audience: OneOrMany,
    /// Claims that must be present; `["exp"]` by default.
    pub required_claims: Option<Vec<String>>,
    /// Clock skew allowed on `exp`, `nbf` and `iat`.
    #[serde(default = "default_leeway")]
    pub leeway_secs: u64,
    /// Where the token is looked for.
    #[serde(default)]
    pub token: TokenConfig,
    /// Claim → upstream request header.
    #[serde(default)]
    pub claims_to_headers: BTreeMap<String, String>,
    /// Let requests without a token through (a token that is present must still verify).
    #[serde(default)]
    pub optional: bool,
    /// Remove the token from the request before it goes upstream.
    #[serde(default)]
    pub strip_token: bool,
    /// `realm` of the `WWW-Authenticate` challenge.
    #[serde(default = "default_realm")]
    pub realm: String,
    /// Longest token accepted.
    #[serde(default = "default_max_token")]
    pub max_token_bytes: usize,
}

/// One key in `keys`: exactly one of `secret`, `pem`, `pem_file`, `jwk`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyConfig {
    /// Matched against the token's `kid`; a key without one is tried for every token.
    pub kid: Option<String>,
    /// The one algorithm this key verifies; by default every algorithm of its type (for a
    /// secret: each HS algorithm it is long enough for).
    pub alg: Option<String>,
    /// A shared secret for HS256/384/512: `${secret:NAME}`; its current and previous
    /// values are both accepted.
    pub secret: Option<SecretRef>,
    /// Whether `secret` is base64 (standard or URL alphabet) rather than raw text.
    #[serde(default)]
    pub secret_base64: bool,
    /// A PEM public key or certificate, inline.
    pub pem: Option<String>,
    /// A PEM file, relative to the configuration file; read at load.
    pub pem_file: Option<String>,
    /// A JWK object.
    pub jwk: Option<serde_json::Value>,
}

/// `jwks`: where to fetch keys and how often.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwksConfig {
    /// `http://` or `https://` URL of the JWKS document.
    pub url: String,
    /// Regular refresh.
    #[serde(default = "default_refresh")]
    pub refresh_interval_ms: u64,
    /// At most one fetch per this interval for unknown `kid`s (and retries after failures).
    #[serde(default = "default_min_refetch")]
    pub min_refetch_interval_ms: u64,
    /// Time limit of one fetch (connect, TLS, response).
    #[serde(default = "default_fetch_timeout")]
    pub timeout_ms: u64,
    /// Largest JWKS document accepted.
    #[serde(default = "default_max_jwks")]
    pub max_bytes: usize,
    /// TLS settings for `https` URLs (`verify`, `ca_file`, `sni`).
    #[serde(default)]
    pub tls: UpstreamTlsConfig,
}

/// `token`: where the token is read from, in this order.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    /// A request header (`Authorization` needs the `Bearer` scheme).
    #[serde(default = "default_header")]
    pub header: Option<String>,
    /// A cookie name.
    pub cookie: Option<String>,
    /// A query parameter name.
    pub query: Option<String>,
}

impl Default for TokenConfig {
    fn default() -> Self {
        TokenConfig {
            header: default_header(),
            cookie: None,
            query: None,
        }
    }
}

fn default_header() -> Option<String> {
    Some("Authorization".to_string())
}

fn default_leeway() -> u64 {
    // Enough for ordinary clock drift between issuer and gateway.
    60
}

fn default_realm() -> String {
    "sluicegate".to_string()
}

fn default_max_token() -> usize {
    // Tokens with many claims reach a few KiB; well under the default header limit.
    8192
}

fn default_refresh() -> u64 {
    300_000
}

fn default_min_refetch() -> u64 {
    30_000
}

fn default_fetch_timeout() -> u64 {
    5_000
}

fn default_max_jwks() -> usize {
    1024 * 1024
}
