//! `pubsub_push`: the push playback of a queue on Google Pub/Sub (seed `000`'s
//! `/wal-playback`). A push subscription sends each envelope the `pubsub` backend
//! published back to a route with this plugin, which
//!
//! 1. verifies the push's `Authorization: Bearer` OpenID token — signed by a key of the
//!    configured key set (Google's by default), `iss` one of the issuers, `aud` the
//!    configured audience, `email` the push's service account with `email_verified`
//!    true, `exp`/`iat` within the leeway (the `jwt` plugin's verification);
//! 2. unpacks the push — wrapped (`{"message": {...}, "subscription": ...}`, with either
//!    key spelling) or unwrapped (the data as the body, the attributes as headers) — and
//!    rebuilds the original request from the envelope (`sluicegate_queue::envelope`);
//! 3. sends it to the queue's route upstream on the delivery thread, with the queue's
//!    retry policy deciding what the answer means: delivered → 204; retryable (429, 5xx,
//!    connection errors, timeouts) → 500, so that Pub/Sub retries with its backoff; not
//!    retryable (other 4xx) → recorded as a dead letter of the queue on this gateway
//!    (`/queues/NAME/dead`) and 204, so a poison message never slows the subscription.
//!
//! Invariants: nothing reaches an upstream before the token check passed and the push
//! parsed; a request that is not a Pub/Sub push gets 400; a push is answered 204 only
//! once its request was delivered or durably recorded as a dead letter.

mod config;
#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use serde_json::Value;

pub use config::PubSubPushConfig;

use super::jwt::jwks::{self, Jwks};
use super::oidc::provider::{verify_with_jwks, Rejected};
use super::{parse_config, BuildCtx, Flow, LocalResponse, Phase, PhaseSet, Plugin, Step};
use sluicegate_core::context::RequestCtx;
use sluicegate_core::diag::{Diags, Path};
use sluicegate_core::error::{rejection, Kind};
use sluicegate_core::yaml::Node;
use sluicegate_jwt::token::ClaimRules;
use sluicegate_queue::retry::Verdict;
use sluicegate_queue::{envelope, record, QueueError, QueuedRequest, Queues};

/// Google's issuers of push tokens.
pub const GOOGLE_ISSUERS: [&str; 2] = ["https://accounts.google.com", "accounts.google.com"];
/// Google's key set.
pub const GOOGLE_JWKS: &str = "https://www.googleapis.com/oauth2/v3/certs";
/// The header an unwrapped push carries its message id in.
const UNWRAPPED_ID: &str = "x-goog-pubsub-message-id";

/// The `pubsub_push` plugin.
pub struct PubSubPush {
    queue: String,
    check: Option<Check>,
}

impl std::fmt::Debug for PubSubPush {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PubSubPush")
            .field("queue", &self.queue)
            .field("verify", &self.check.is_some())
            .finish()
    }
}

/// The token check.
struct Check {
    jwks: Arc<Jwks>,
    rules: ClaimRules,
    service_accounts: Vec<String>,
}

/// Builds a `pubsub_push` plugin from its config.
pub fn build(
    config: &Node,
    path: &Path,
    ctx: &BuildCtx<'_>,
    diags: &mut Diags,
) -> Option<Arc<dyn Plugin>> {
    let cfg: PubSubPushConfig = parse_config(config, path, diags)?;
    let before = diags.0.len();
    if !sluicegate_queue::config::valid_name(&cfg.queue) {
        diags.push(
            &path.key("queue"),
            "give the name of the queue whose pushes this route plays back",
        );
    }
    let check = if cfg.verify {
        check(&cfg, path, ctx, diags)
    } else {
        tracing::warn!(
            route = ctx.route.unwrap_or("-"),
            queue = %cfg.queue,
            "pubsub_push accepts pushes without checking their token (`verify: false`): only for the emulator or a private network."
        );
        None
    };
    (diags.0.len() == before).then(|| {
        Arc::new(PubSubPush {
            queue: cfg.queue.clone(),
            check,
        }) as Arc<dyn Plugin>
    })
}

fn check(
    cfg: &PubSubPushConfig,
    path: &Path,
    ctx: &BuildCtx<'_>,
    diags: &mut Diags,
) -> Option<Check> {
    if cfg.audience.trim().is_empty() {
        diags.push(
            &path.key("audience"),
            "required with `verify: true`: the audience the push subscription's token names (by default its push endpoint URL)",
        );
    }
    let service_accounts: Vec<String> = cfg
        .service_account
        .0
        .iter()
        .map(|s| s.trim().to_lowercase())
        .filter(|s| !s.is_empty())
        .collect();
    if service_accounts.is_empty() {
        diags.push(
            &path.key("service_account"),
            "required with `verify: true`: the email of the service account the push subscription signs its tokens as",
        );
    }
    let issuers: Vec<String> = if cfg.issuer.0.iter().all(|i| i.trim().is_empty()) {
        GOOGLE_ISSUERS.map(String::from).to_vec()
    } else {
        cfg.issuer.0.clone()
    };
    let url_text = cfg
        .jwks_url
        .as_deref()
        .filter(|u| !u.trim().is_empty())
        .unwrap_or(GOOGLE_JWKS);
    let url = match url_text.parse::<http::Uri>() {
        Ok(u) if matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some() => u,
        _ => {
            diags.push(
                &path.key("jwks_url"),
                format!("`{url_text}` is not an http:// or https:// URL"),
            );
            return None;
        }
    };
    let tls = if url.scheme_str() == Some("https") {
        sluicegate_upstream::tls::client_config(
            &cfg.tls,
            ctx.base_dir,
            sluicegate_upstream::Protocol::Http1,
        )
        .map_err(|e| diags.push(&path.key("tls"), e))
        .ok()
    } else {
        None
    };
    Some(Check {
        jwks: Jwks::shared(jwks::Settings {
            url,
            refresh: Duration::from_secs(3600),
            min_refetch: Duration::from_secs(5),
            timeout: Duration::from_millis(cfg.timeout_ms),
            max_bytes: 256 * 1024,
            tls,
            sni: None,
            tls_settings: format!("{:?}", cfg.tls),
        }),
        rules: ClaimRules {
            issuers,
            audiences: vec![cfg.audience.clone()],
            required: vec!["exp".into(), "iat".into(), "email".into()],
            leeway_secs: cfg.leeway_secs,
        },
        service_accounts,
    })
}

/// One unpacked push.
#[derive(Debug, PartialEq)]
struct Push {
    message_id: String,
    attempt: u32,
    request: Result<QueuedRequest, String>,
    /// The data, kept for a dead letter when the envelope does not decode.
    data: Bytes,
}

fn str_field<'a>(obj: &'a serde_json::Map<String, Value>, names: &[&str]) -> Option<&'a str> {
    names
        .iter()
        .find_map(|n| obj.get(*n).and_then(Value::as_str))
}

/// Unpacks a push request (`Err`: not a Pub/Sub push).
fn unpack(headers: &HeaderMap, body: &Bytes) -> Result<Push, String> {
    if let Some(id) = headers.get(UNWRAPPED_ID) {
        // Unwrapped: the data is the body, the attributes are headers.
        let message_id = id
            .to_str()
            .map_err(|_| "bad message id header")?
            .to_string();
        let attr = |k: &str| {
            headers
                .get(k)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        return Ok(Push {
            message_id,
            attempt: 1,
            request: envelope::decode(attr, body.clone()),
            data: body.clone(),
        });
    }
    let doc: Value = serde_json::from_slice(body)
        .map_err(|_| "the body is not a Pub/Sub push (JSON with a `message`)".to_string())?;
    let message = doc
        .get("message")
        .and_then(Value::as_object)
        .ok_or("the body is not a Pub/Sub push: no `message` object")?;
    let message_id = str_field(message, &["messageId", "message_id"])
        .ok_or("the push message has no `messageId`")?
        .to_string();
    if str_field(message, &["publishTime", "publish_time"]).is_none() {
        return Err("the push message has no `publishTime`".into());
    }
    let data = match message.get("data") {
        None | Some(Value::Null) => Bytes::new(),
        Some(Value::String(s)) => Bytes::from(
            base64::engine::general_purpose::STANDARD
                .decode(s)
                .map_err(|_| "the push message's `data` is not base64")?,
        ),
        Some(_) => return Err("the push message's `data` is not a string".into()),
    };
    let attributes = match message.get("attributes") {
        None | Some(Value::Null) => serde_json::Map::new(),
        Some(Value::Object(m)) => m.clone(),
        Some(_) => return Err("the push message's `attributes` is not an object".into()),
    };
    let attempt = doc
        .get("deliveryAttempt")
        .or_else(|| doc.get("delivery_attempt"))
        .and_then(Value::as_u64)
        .and_then(|n| u32::try_from(n).ok())
        .unwrap_or(1)
        .max(1);
    let attr = |k: &str| {
        attributes
            .get(k)
            .and_then(Value::as_str)
            .map(str::to_string)
    };
    Ok(Push {
        message_id,
        attempt,
        request: envelope::decode(attr, data.clone()),
        data,
    })
}

fn no_content() -> LocalResponse {
    LocalResponse {
        status: StatusCode::NO_CONTENT,
        headers: HeaderMap::new(),
        body: Bytes::new(),
    }
}

fn retry_please(message: &str) -> LocalResponse {
    LocalResponse::json_error(StatusCode::INTERNAL_SERVER_ERROR, "not_delivered", message)
}

impl PubSubPush {
    async fn verify(&self, ctx: &RequestCtx) -> Result<(), LocalResponse> {
        let Some(check) = &self.check else {
            return Ok(());
        };
        let refuse = |kind: Kind, message: &str| rejection(kind, message, &ctx.request_id);
        let token = ctx
            .head
            .headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.split_once(' ')
                    .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
                    .map(|(_, t)| t.trim())
            })
            .ok_or_else(|| refuse(Kind::Unauthorized, "a Pub/Sub push carries a bearer token"))?;
        let claims = match verify_with_jwks(&check.jwks, token, &check.rules).await {
            Ok(c) => c,
            Err(Rejected::KeysUnavailable) => {
                tracing::warn!(
                    request_id = ctx.request_id_str(),
                    "The push token's key set cannot be fetched; Pub/Sub will retry."
                );
                return Err(retry_please("the key set is unavailable"));
            }
            Err(e) => {
                tracing::info!(request_id = ctx.request_id_str(), error = ?e, "Push token refused.");
                return Err(refuse(Kind::Unauthorized, "the push token is not valid"));
            }
        };
        let email = claims
            .get("email")
            .and_then(Value::as_str)
            .map(str::to_lowercase);
        if !email.is_some_and(|e| check.service_accounts.contains(&e)) {
            return Err(refuse(
                Kind::Forbidden,
                "the push token is not the subscription's service account",
            ));
        }
        if claims.get("email_verified") != Some(&Value::Bool(true)) {
            return Err(refuse(
                Kind::Forbidden,
                "the push token's email is not verified",
            ));
        }
        Ok(())
    }

    async fn play(&self, ctx: &mut RequestCtx) -> LocalResponse {
        if let Err(r) = self.verify(ctx).await {
            return r;
        }
        let body = match ctx.read_body().await {
            Ok(b) => b,
            Err(e) => return sluicegate_core::error::error_response(&e, &ctx.request_id),
        };
        let push = match unpack(&ctx.head.headers, &body) {
            Ok(p) => p,
            Err(message) => return rejection(Kind::BadRequest, message, &ctx.request_id),
        };
        let Some(queues) = ctx.worker.service::<Arc<Queues>>().cloned() else {
            return retry_please("no queues on this gateway");
        };
        let Some(queue) = queues.get(&self.queue) else {
            tracing::error!(request_id = ctx.request_id_str(), queue = %self.queue, "pubsub_push names a queue that is not configured.");
            return retry_please("the queue is not configured");
        };
        let rid = ctx.request_id_str().to_string();
        let id = push.message_id.parse::<u64>().unwrap_or(0);
        let (request, reason) = match push.request {
            Ok(request) => {
                let verdict = queues
                    .play(&self.queue, request.clone(), id, push.attempt)
                    .await;
                match verdict {
                    Ok(Verdict::Delivered) => return no_content(),
                    Ok(Verdict::Retry { reason, .. }) => {
                        tracing::info!(request_id = %rid, queue = %self.queue, message_id = %push.message_id, attempt = push.attempt, error = %reason, "Pushed message not delivered; Pub/Sub retries it.");
                        return retry_please(&reason);
                    }
                    Err(e) => {
                        tracing::warn!(request_id = %rid, queue = %self.queue, error = %e, "Pushed message could not be sent; Pub/Sub retries it.");
                        return retry_please("the gateway cannot deliver right now");
                    }
                    Ok(Verdict::Dead { reason }) => (request, reason),
                }
            }
            // A push of ours that does not decode is a poison message: kept, not retried.
            Err(why) => {
                let mut r = QueuedRequest::new(http::Method::POST, "/");
                r.body = push.data.clone();
                r.request_id = rid.clone();
                (r, format!("not a sluicegate envelope: {why}"))
            }
        };
        let reason = format!("{reason} (Pub/Sub message {})", push.message_id);
        match queue
            .backend()
            .record_dead(record::encode(&request), &reason)
            .await
        {
            Ok(dead_id) => {
                sluicegate_queue::metrics::QueueMetrics::inc(&queue.metrics().dead_lettered);
                tracing::warn!(request_id = %rid, queue = %self.queue, id = dead_id, message_id = %push.message_id, reason = %reason, "Pushed message moved to the dead letters.");
                no_content()
            }
            Err(e) => {
                let e: QueueError = e;
                tracing::error!(request_id = %rid, queue = %self.queue, error = %e, "Pushed message could not be recorded as a dead letter; Pub/Sub retries it.");
                retry_please("the dead letter could not be recorded")
            }
        }
    }
}

impl Plugin for PubSubPush {
    fn name(&self) -> &'static str {
        "pubsub_push"
    }

    fn phases(&self) -> PhaseSet {
        PhaseSet::of(&[Phase::Content])
    }

    fn content<'a>(&'a self, ctx: &'a mut RequestCtx) -> Step<'a> {
        Step::Wait(Box::pin(
            async move { Ok(Flow::Respond(self.play(ctx).await)) },
        ))
    }

    fn reads_request_late(&self) -> bool {
        false
    }
}
