//! `hmac_signature`: verifies webhook signatures before the request costs anything
//! upstream — Slack (`v0`), GitHub (`X-Hub-Signature-256`), Standard Webhooks, or a
//! `generic` HMAC scheme. Requests without a valid signature, or whose timestamp is outside
//! the tolerance (replays), get 401 JSON.
//!
//! The cheap checks (headers present, timestamp within tolerance) run before the body is
//! read; then the raw body is read once ([`RequestCtx::read_body`]) and stays buffered, so
//! it is forwarded (or queued) byte for byte. Several secrets, each with its current and
//! previous value, are accepted; comparisons are constant-time ([`scheme`]).

mod config;
pub mod scheme;

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use http::HeaderName;

pub use config::{Algorithm, Encoding, HmacSignatureConfig, Preset};
use scheme::{Scheme, Segment, Signed};

use super::{parse_config, BuildCtx, Flow, Phase, PhaseSet, Plugin, PluginError, Step};
use sluicegate_core::context::RequestCtx;
use sluicegate_core::diag::{Diags, Path};
use sluicegate_core::error::{rejection, Kind};
use sluicegate_core::yaml::Node;
use sluicegate_secrets::SecretValue;

/// Slack and the Standard Webhooks specification both advise five minutes.
const DEFAULT_TOLERANCE_SECS: u64 = 300;

/// The `hmac_signature` plugin.
#[derive(Debug)]
pub struct HmacSignature {
    scheme: Scheme,
    keys: Vec<SecretValue>,
    required: Vec<HeaderName>,
    tolerance_secs: u64,
}

/// Builds an `hmac_signature` plugin from its config.
pub fn build(
    config: &Node,
    path: &Path,
    ctx: &BuildCtx<'_>,
    diags: &mut Diags,
) -> Option<Arc<dyn Plugin>> {
    let cfg: HmacSignatureConfig = parse_config(config, path, diags)?;
    let before = diags.0.len();
    let scheme = match cfg.preset {
        Preset::Slack => Some(Scheme::slack()),
        Preset::Github => Some(Scheme::github()),
        Preset::StandardWebhooks => Some(Scheme::standard_webhooks()),
        Preset::Generic => generic(&cfg, path, diags),
    };
    if cfg.preset != Preset::Generic {
        let generic_only = [
            ("header", cfg.header.is_some()),
            ("algorithm", cfg.algorithm.is_some()),
            ("encoding", cfg.encoding.is_some()),
            ("prefix", cfg.prefix.is_some()),
            ("signed_content", cfg.signed_content.is_some()),
            ("timestamp_header", cfg.timestamp_header.is_some()),
        ];
        for (key, given) in generic_only {
            if given {
                diags.push(&path.key(key), "only with `preset: generic`");
            }
        }
    }
    if let Some(s) = &scheme {
        match cfg.tolerance_secs {
            Some(_) if s.timestamp_header.is_none() => diags.push(
                &path.key("tolerance_secs"),
                "this scheme carries no timestamp (give `timestamp_header` with `generic`)",
            ),
            Some(0) => diags.push(&path.key("tolerance_secs"), "must be at least 1"),
            _ => {}
        }
    }
    let keys = keys(&cfg, path, ctx, diags);
    let scheme = scheme?;
    (diags.0.len() == before).then(|| {
        Arc::new(HmacSignature {
            required: scheme.required_headers(),
            scheme,
            keys,
            tolerance_secs: cfg.tolerance_secs.unwrap_or(DEFAULT_TOLERANCE_SECS),
        }) as Arc<dyn Plugin>
    })
}

/// Resolves `secret` / `secrets` into the accepted keys (decoded for Standard Webhooks).
fn keys(
    cfg: &HmacSignatureConfig,
    path: &Path,
    ctx: &BuildCtx<'_>,
    diags: &mut Diags,
) -> Vec<SecretValue> {
    let refs: Vec<(Path, &sluicegate_secrets::SecretRef)> =
        match (&cfg.secret, cfg.secrets.is_empty()) {
            (Some(_), false) => {
                diags.push(path, "give `secret` or `secrets`, not both");
                return Vec::new();
            }
            (None, true) => {
                diags.push(
                    &path.key("secret"),
                    "required: the signing secret, as `\"${secret:NAME}\"`",
                );
                return Vec::new();
            }
            (Some(r), true) => vec![(path.key("secret"), r)],
            (None, false) => cfg
                .secrets
                .iter()
                .enumerate()
                .map(|(i, r)| (path.key("secrets").index(i), r))
                .collect(),
        };
    let mut keys = Vec::new();
    for (p, r) in refs {
        let Some(secret) = ctx.secrets.resolve(r, &p, diags) else {
            continue;
        };
        for value in secret.values() {
            if cfg.preset == Preset::StandardWebhooks {
                match scheme::standard_webhooks_key(value.expose()) {
                    Some(k) => keys.push(SecretValue::new(k)),
                    None => diags.push(
                        &p,
                        format!(
                            "secret `{}` is not a Standard Webhooks secret (`whsec_` followed \
                             by base64)",
                            secret.name()
                        ),
                    ),
                }
            } else {
                keys.push(value.clone());
            }
        }
    }
    keys
}

/// Compiles the `generic` options.
fn generic(cfg: &HmacSignatureConfig, path: &Path, diags: &mut Diags) -> Option<Scheme> {
    let header = match &cfg.header {
        None => {
            diags.push(&path.key("header"), "required with `preset: generic`");
            None
        }
        Some(h) => match HeaderName::from_bytes(h.as_bytes()) {
            Ok(n) => Some(n),
            Err(_) => {
                diags.push(&path.key("header"), format!("invalid header name `{h}`"));
                None
            }
        },
    };
    let timestamp_header = match &cfg.timestamp_header {
        None => None,
        Some(h) => match HeaderName::from_bytes(h.as_bytes()) {
            Ok(n) => Some(n),
            Err(_) => {
                diags.push(
                    &path.key("timestamp_header"),
                    format!("invalid header name `{h}`"),
                );
                None
            }
        },
    };
    let template_path = path.key("signed_content");
    let template = match scheme::parse_template(cfg.signed_content.as_deref().unwrap_or("{body}")) {
        Ok(t) => t,
        Err(e) => {
            diags.push(&template_path, e);
            return None;
        }
    };
    if !template.contains(&Segment::Body) {
        diags.push(
            &template_path,
            "must include `{body}`: a signature that does not cover the body lets anyone change it",
        );
    }
    if template.contains(&Segment::Timestamp) && cfg.timestamp_header.is_none() {
        diags.push(&template_path, "`{timestamp}` needs `timestamp_header`");
    }
    Some(Scheme {
        signature_header: header?,
        prefix: cfg.prefix.clone().unwrap_or_default().into_bytes().into(),
        list: false,
        encoding: cfg.encoding.unwrap_or(Encoding::Hex),
        algorithm: cfg.algorithm.unwrap_or(Algorithm::Sha256),
        template,
        timestamp_header,
    })
}

impl HmacSignature {
    /// The checks that need no body: required headers, timestamp within tolerance.
    fn precheck(&self, ctx: &RequestCtx) -> Result<(), String> {
        for h in &self.required {
            if !ctx.head.headers.contains_key(h) {
                return Err(format!("missing header `{h}`"));
            }
        }
        if let Some(h) = &self.scheme.timestamp_header {
            let ts = ctx
                .head
                .headers
                .get(h)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<i64>().ok())
                .ok_or_else(|| format!("header `{h}` is not a Unix timestamp"))?;
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs() as i64);
            if now.abs_diff(ts) > self.tolerance_secs {
                return Err(format!(
                    "the request timestamp is more than {} s away from the current time",
                    self.tolerance_secs
                ));
            }
        }
        Ok(())
    }

    fn verify(&self, ctx: &RequestCtx, body: &[u8]) -> bool {
        let headers = &ctx.head.headers;
        let header = headers
            .get(&self.scheme.signature_header)
            .map_or(&b""[..], |v| v.as_bytes());
        let timestamp = self
            .scheme
            .timestamp_header
            .as_ref()
            .and_then(|h| headers.get(h))
            .map_or(&b""[..], |v| v.as_bytes());
        let signed = Signed {
            body,
            timestamp,
            method: ctx.head.method.as_str(),
            path: ctx
                .original_uri
                .path_and_query()
                .map_or("/", |pq| pq.as_str()),
            headers,
        };
        self.scheme.verify(&self.keys, header, &signed)
    }

    fn refuse(ctx: &RequestCtx, why: String) -> Flow {
        tracing::debug!(request_id = ctx.request_id_str(), reason = %why, "Request with an invalid signature refused.");
        Flow::Respond(rejection(Kind::Unauthorized, why, &ctx.request_id))
    }
}

impl Plugin for HmacSignature {
    fn name(&self) -> &'static str {
        "hmac_signature"
    }

    fn phases(&self) -> PhaseSet {
        PhaseSet::of(&[Phase::Access])
    }

    fn access<'a>(&'a self, ctx: &'a mut RequestCtx) -> Step<'a> {
        if let Err(why) = self.precheck(ctx) {
            return Step::Ready(Ok(Self::refuse(ctx, why)));
        }
        Step::Wait(Box::pin(async move {
            let body = ctx.read_body().await.map_err(PluginError::Body)?;
            if self.verify(ctx, &body) {
                Ok(Flow::Continue)
            } else {
                Ok(Self::refuse(ctx, "invalid signature".to_string()))
            }
        }))
    }
}

#[cfg(test)]
mod tests;
