//! Programs with `Authorization: Bearer`: the provider's own JWTs (its key set, the
//! configured audiences), other issuers' JWTs (`bearer.issuers`: Google ID tokens for
//! Zapier or Pub/Sub pushes), and opaque access tokens checked at the provider's userinfo
//! endpoint and cached.
//!
//! Invariant: a bearer token that does not verify is answered 401 with a `Bearer`
//! challenge, never a login redirect, and never falls back to another kind of check.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::HeaderValue;
use serde_json::Value;

use super::config::OidcConfig;
use super::identity::Identity;
use super::provider::{self, verify_with_jwks, Claims, Rejected, UserinfoError};
use super::{BuildCtx, Oidc};
use crate::jwt::jwks::{self, Jwks};
use sluicegate_core::diag::{Diags, Path};
use sluicegate_core::error::{bearer_challenge, error_response, Kind, ProxyError, Source};
use sluicegate_core::phase::LocalResponse;
use sluicegate_jwt::token::{self, ClaimRules};

/// Google's ID tokens: both spellings of its issuer and its published keys.
const GOOGLE_ISSUERS: [&str; 2] = ["https://accounts.google.com", "accounts.google.com"];
const GOOGLE_JWKS: &str = "https://www.googleapis.com/oauth2/v3/certs";

/// Another issuer whose JWTs pass.
struct Issuer {
    jwks: Arc<Jwks>,
    rules: ClaimRules,
    emails: Vec<String>,
}

/// Most verified JWTs remembered per plugin.
const VERIFIED_ENTRIES: usize = 10_000;
/// Longest a verified JWT is trusted without checking its signature again (a key the
/// issuer withdraws stops working within this time).
const VERIFIED_KEEP_SECS: u64 = 300;

/// The bearer-token settings of one plugin.
pub(crate) struct Bearer {
    audiences: Vec<String>,
    issuers: Vec<Issuer>,
    userinfo: bool,
    userinfo_keep: Duration,
    /// JWTs that verified, by SHA-256 of the token: the claims and until when (unix
    /// seconds: the token's `exp`, at most `VERIFIED_KEEP_SECS` from the check). A
    /// program sends the same token on every call; the signature check (~30 µs for
    /// RS256) runs once per token, not per request.
    verified: Mutex<HashMap<[u8; 32], Verified>>,
}

/// A verified JWT's claims and until when they are trusted (unix seconds).
type Verified = (u64, Arc<Claims>);

/// A rejection, built once the request id is at hand.
pub(crate) type Reject = Box<dyn FnOnce(&HeaderValue) -> LocalResponse + Send>;

/// The token of `Authorization: Bearer TOKEN`.
pub(crate) fn token_of(headers: &http::HeaderMap) -> Option<&str> {
    let v = headers
        .get(http::header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .trim();
    let (scheme, token) = v.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

impl Bearer {
    /// Builds the settings; `None` inside when bearer tokens are off.
    pub fn build(
        cfg: &OidcConfig,
        path: &Path,
        ctx: &BuildCtx<'_>,
        diags: &mut Diags,
    ) -> Option<Option<Bearer>> {
        let b = &cfg.bearer;
        if !b.enabled {
            return Some(None);
        }
        let before = diags.0.len();
        let audiences = if b.audiences.0.is_empty() {
            vec![cfg.client_id.clone()]
        } else {
            b.audiences.0.clone()
        };
        let mut issuers = Vec::new();
        for (i, ic) in b.issuers.iter().enumerate() {
            let p = path.key("issuers").index(i);
            let (names, url) = match ic.preset.as_deref() {
                Some("google") => {
                    if !ic.issuer.0.is_empty() || ic.jwks_url.is_some() {
                        diags.push(&p, "`preset: google` sets `issuer` and `jwks_url` itself");
                    }
                    (
                        GOOGLE_ISSUERS.map(String::from).to_vec(),
                        GOOGLE_JWKS.to_string(),
                    )
                }
                Some(other) => {
                    diags.push(
                        &p.key("preset"),
                        format!("unknown preset `{other}`; known: google"),
                    );
                    continue;
                }
                None => match &ic.jwks_url {
                    Some(u) if !ic.issuer.0.is_empty() => (ic.issuer.0.clone(), u.clone()),
                    _ => {
                        diags.push(&p, "give `preset: google`, or `issuer` and `jwks_url`");
                        continue;
                    }
                },
            };
            if ic.audiences.0.is_empty() {
                diags.push(
                    &p.key("audiences"),
                    "give the audiences this gateway accepts",
                );
            }
            let url = match url.parse::<http::Uri>() {
                Ok(u) if matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some() => {
                    u
                }
                _ => {
                    diags.push(
                        &p.key("jwks_url"),
                        format!("`{url}` is not an http:// or https:// URL"),
                    );
                    continue;
                }
            };
            let tls = if url.scheme_str() == Some("https") {
                // A preset's issuer is on the public web: the built-in roots; an issuer of
                // one's own shares the provider's TLS settings.
                let tls_cfg = if ic.preset.is_some() {
                    Default::default()
                } else {
                    cfg.tls.clone()
                };
                sluicegate_upstream::tls::client_config(
                    &tls_cfg,
                    ctx.base_dir,
                    sluicegate_upstream::Protocol::Http1,
                )
                .map_err(|e| diags.push(&p, e))
                .ok()
            } else {
                None
            };
            issuers.push(Issuer {
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
                    issuers: names,
                    audiences: ic.audiences.0.clone(),
                    required: vec!["exp".into(), "sub".into()],
                    leeway_secs: cfg.leeway_secs,
                },
                emails: ic.emails.0.iter().map(|e| e.to_lowercase()).collect(),
            });
        }
        if b.userinfo_cache_secs > 86_400 {
            diags.push(&path.key("userinfo_cache_secs"), "must be at most 86400");
        }
        if diags.0.len() != before {
            return None;
        }
        Some(Some(Bearer {
            audiences,
            issuers,
            userinfo: b.userinfo,
            userinfo_keep: Duration::from_secs(b.userinfo_cache_secs),
            verified: Mutex::new(HashMap::new()),
        }))
    }

    /// Who `token` is, or the response refusing it.
    pub async fn identify(&self, oidc: &Oidc, token: &str) -> Result<Identity, Reject> {
        let claims = if token.split('.').count() == 3 {
            self.verify_jwt(oidc, token).await?
        } else if self.userinfo {
            match oidc.provider.userinfo(token, self.userinfo_keep).await {
                Ok(c) => c,
                Err(UserinfoError::Invalid(why)) => return Err(invalid(why)),
                Err(UserinfoError::Unavailable(why)) => return Err(unavailable(why)),
            }
        } else {
            return Err(invalid("opaque access tokens are not accepted here".into()));
        };
        Identity::from_claims(&claims, &oidc.groups_claim)
            .ok_or_else(|| invalid("the token names no subject".into()))
    }

    async fn verify_jwt(&self, oidc: &Oidc, token: &str) -> Result<Arc<Claims>, Reject> {
        let digest = provider::sha256(token.as_bytes());
        let now = sluicegate_jwt::now() as u64;
        {
            let cache = self.verified.lock().unwrap_or_else(|e| e.into_inner());
            if let Some((until, claims)) = cache.get(&digest) {
                if now < *until {
                    return Ok(claims.clone());
                }
            }
        }
        let claims = self.verify_jwt_now(oidc, token).await?;
        let exp = claims.get("exp").and_then(Value::as_f64).unwrap_or(0.0) as u64;
        let until = exp.min(now + VERIFIED_KEEP_SECS);
        let mut cache = self.verified.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= VERIFIED_ENTRIES {
            cache.retain(|_, (t, _)| *t > now);
            if cache.len() >= VERIFIED_ENTRIES {
                cache.clear();
            }
        }
        cache.insert(digest, (until, claims.clone()));
        Ok(claims)
    }

    async fn verify_jwt_now(&self, oidc: &Oidc, token: &str) -> Result<Arc<Claims>, Reject> {
        // The issuer chooses the keys and rules; the signature is checked next.
        let unverified =
            token::parse(token, provider::MAX_TOKEN).map_err(|e| invalid(e.to_string()))?;
        let iss = unverified
            .claims
            .get("iss")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let outcome = if iss == oidc.issuer {
            let rules = ClaimRules {
                issuers: vec![oidc.issuer.clone()],
                audiences: self.audiences.clone(),
                required: vec!["exp".into(), "sub".into()],
                leeway_secs: oidc.leeway,
            };
            oidc.provider.verify_jwt(token, &rules).await
        } else if let Some(issuer) = self.issuers.iter().find(|i| i.rules.issuers.contains(&iss)) {
            let claims = verify_with_jwks(&issuer.jwks, token, &issuer.rules).await;
            match claims {
                Ok(c) if !issuer.emails.is_empty() => {
                    let email = c
                        .get("email")
                        .and_then(Value::as_str)
                        .map(str::to_lowercase);
                    let verified = c.get("email_verified").and_then(Value::as_bool) == Some(true);
                    if !verified || !email.is_some_and(|e| issuer.emails.contains(&e)) {
                        return Err(invalid(
                            "the token's email is not one this gateway accepts".into(),
                        ));
                    }
                    Ok(c)
                }
                other => other,
            }
        } else {
            return Err(invalid(format!(
                "tokens issued by `{iss}` are not accepted here"
            )));
        };
        match outcome {
            Ok(c) => Ok(Arc::new(c)),
            Err(Rejected::Invalid(why)) => Err(invalid(why)),
            Err(Rejected::KeysUnavailable) => Err(unavailable(
                "the token signing keys are not available".into(),
            )),
        }
    }
}

fn invalid(why: String) -> Reject {
    Box::new(move |id| {
        let err = ProxyError::client(Kind::TokenInvalid, why);
        bearer_challenge(&err, "sluicegate", id)
    })
}

fn unavailable(why: String) -> Reject {
    Box::new(move |id| {
        tracing::warn!(request_id = id.to_str().unwrap_or(""), error = %why, "Bearer token not checked: the identity provider is unavailable.");
        let err = ProxyError::new(
            Source::Plugin,
            Kind::ProviderUnavailable,
            "the identity provider is unavailable; try again shortly",
        );
        error_response(&err, id)
    })
}
