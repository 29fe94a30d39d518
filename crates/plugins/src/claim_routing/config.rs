//! Configuration of the `claim_routing` plugin.

use std::collections::BTreeMap;

use serde::Deserialize;

/// `config` of a `claim_routing` plugin entry.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClaimRoutingConfig {
    /// Tried in order; the first whose conditions hold and whose template can be filled in
    /// names the upstream.
    pub rules: Vec<RuleConfig>,
    /// The upstream used when no rule applies or the name a rule gives is no upstream.
    pub fallback: Option<String>,
    /// Without `fallback`: 421 (Misdirected Request, the default) or 502.
    #[serde(default = "default_status")]
    pub status: u16,
}

/// One rule.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    /// Claim path → accepted value (a scalar or a list of scalars); all must hold.
    #[serde(default)]
    pub when: BTreeMap<String, serde_json::Value>,
    /// Upstream name template: text with `${claims.PATH}` placeholders.
    pub upstream: String,
}

fn default_status() -> u16 {
    421
}
