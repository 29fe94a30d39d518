//! Configuration of the `hmac_signature` plugin.

use serde::Deserialize;

use sluicegate_secrets::SecretRef;

/// `config` of an `hmac_signature` plugin entry.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HmacSignatureConfig {
    /// Which signing scheme the sender uses.
    pub preset: Preset,
    /// The signing secret (`"${secret:NAME}"`); give this or `secrets`.
    pub secret: Option<SecretRef>,
    /// Several signing secrets, all accepted (each with its previous value too).
    #[serde(default)]
    pub secrets: Vec<SecretRef>,
    /// How far the request's timestamp may be from the gateway's clock, either way
    /// (schemes with a timestamp; 300 by default, as Slack and Standard Webhooks advise).
    pub tolerance_secs: Option<u64>,
    /// `generic`: the header holding the signature.
    pub header: Option<String>,
    /// `generic`: the hash function (`sha256` by default).
    pub algorithm: Option<Algorithm>,
    /// `generic`: how the signature is written (`hex` by default).
    pub encoding: Option<Encoding>,
    /// `generic`: text before the signature in the header (e.g. `sha256=`).
    pub prefix: Option<String>,
    /// `generic`: what is signed, with `{body}`, `{timestamp}`, `{method}`, `{path}` and
    /// `{header:NAME}` placeholders (`{body}` by default).
    pub signed_content: Option<String>,
    /// `generic`: the header holding the request's Unix timestamp (seconds), checked
    /// against `tolerance_secs` and available as `{timestamp}`.
    pub timestamp_header: Option<String>,
}

/// The supported signing schemes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Preset {
    /// Slack's `v0` signatures.
    Slack,
    /// GitHub's `X-Hub-Signature-256`.
    Github,
    /// The Standard Webhooks specification (`webhook-id`, `webhook-timestamp`,
    /// `webhook-signature`).
    StandardWebhooks,
    /// Any HMAC scheme described by the `generic` options.
    Generic,
}

/// Hash functions for HMAC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Algorithm {
    /// HMAC-SHA1 (legacy senders only).
    Sha1,
    /// HMAC-SHA256.
    Sha256,
    /// HMAC-SHA512.
    Sha512,
}

/// How a signature is written in its header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Encoding {
    /// Lower- or upper-case hexadecimal.
    Hex,
    /// Standard base64 (padding optional).
    Base64,
}
