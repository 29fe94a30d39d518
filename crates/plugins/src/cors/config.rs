//! Configuration of the `cors` plugin.

use serde::Deserialize;

/// `config` of a `cors` plugin entry.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CorsConfig {
    /// Allowed origins: `https://app.example.com`, `https://*.example.com` (any subdomain),
    /// or `*` (any origin).
    pub origins: Vec<String>,
    /// Methods allowed in cross-origin requests.
    #[serde(default = "default_methods")]
    pub methods: Vec<String>,
    /// Request headers allowed in cross-origin requests; by default the ones a preflight
    /// asks for are allowed.
    pub headers: Option<Vec<String>>,
    /// Response headers the browser may show to the page (beyond the CORS-safelisted ones).
    #[serde(default)]
    pub exposed_headers: Vec<String>,
    /// Allow cookies and HTTP authentication (`Access-Control-Allow-Credentials: true`).
    #[serde(default)]
    pub credentials: bool,
    /// How long a browser may cache a preflight answer.
    pub max_age_secs: Option<u64>,
}

fn default_methods() -> Vec<String> {
    ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
        .map(String::from)
        .to_vec()
}
