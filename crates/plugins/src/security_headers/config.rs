//! Configuration of the `security_headers` plugin.

use serde::Deserialize;

/// `config` of a `security_headers` plugin entry. Every header has a safe default; set an
/// option to `off` (or `0` for HSTS) to leave that header out.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecurityHeadersConfig {
    /// `Strict-Transport-Security: max-age=...`; 0 leaves the header out.
    #[serde(default = "default_hsts_max_age")]
    pub hsts_max_age_secs: u64,
    /// Adds `includeSubDomains` to HSTS.
    #[serde(default = "yes")]
    pub hsts_include_subdomains: bool,
    /// Adds `preload` to HSTS (needs `includeSubDomains` and a max-age of at least a year).
    #[serde(default)]
    pub hsts_preload: bool,
    /// `X-Frame-Options`: `DENY`, `SAMEORIGIN` or `off`.
    #[serde(default = "default_frame_options")]
    pub frame_options: String,
    /// `X-Content-Type-Options: nosniff`.
    #[serde(default = "yes")]
    pub content_type_options: bool,
    /// `Content-Security-Policy` value; none by default (a policy is specific to the app).
    pub content_security_policy: Option<String>,
    /// Send the policy as `Content-Security-Policy-Report-Only` instead.
    #[serde(default)]
    pub content_security_policy_report_only: bool,
    /// `Referrer-Policy` value, or `off`.
    #[serde(default = "default_referrer_policy")]
    pub referrer_policy: String,
    /// `Permissions-Policy` value; none by default.
    pub permissions_policy: Option<String>,
    /// `Cross-Origin-Opener-Policy` value; none by default.
    pub cross_origin_opener_policy: Option<String>,
    /// Replace values the upstream set itself (by default the upstream's own value wins).
    #[serde(default)]
    pub replace_upstream: bool,
}

fn yes() -> bool {
    true
}

/// Two years, the value hstspreload.org recommends.
fn default_hsts_max_age() -> u64 {
    63_072_000
}

fn default_frame_options() -> String {
    "DENY".to_string()
}

fn default_referrer_policy() -> String {
    "strict-origin-when-cross-origin".to_string()
}
