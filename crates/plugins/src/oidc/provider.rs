//! The OpenID provider as the `oidc` plugin talks to it: discovery, the token endpoint
//! (code exchange and refresh), ID token verification with the provider's key set, and
//! userinfo lookups of opaque access tokens.
//!
//! One [`Provider`] per issuer and client in the process, shared by every configuration
//! that names them (like [`Jwks::shared`]), so a reload keeps the discovery document, the
//! keys, the userinfo cache and the refreshes in flight.
//!
//! Invariants: nothing here runs at configuration load (`check` works offline); the first
//! request that needs the provider fetches discovery, concurrent ones wait for that one
//! fetch, and after a failure the next attempt waits [`RETRY`]: a provider that is down
//! costs each request a fast 502, not a pile of connections. Every call is bounded by the
//! client's timeout.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex, Weak};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use http::{HeaderName, HeaderValue, Uri};
use serde_json::{Map, Value};

use crate::jwt::jwks::{self, Jwks, KeysUnavailable};
use sluicegate_jwt::token::{self, ClaimRules, TokenError as JwtError};
use sluicegate_oidc::flight::SingleFlight;
use sluicegate_oidc::provider::{basic_auth, form_encode, Discovery, TokenError, TokenResponse};
use sluicegate_upstream::fetch;

/// Wait after a failed discovery before the next try.
const RETRY: Duration = Duration::from_secs(1);
/// Largest document (discovery, token answer, userinfo) accepted.
const MAX_DOCUMENT: usize = 256 * 1024;
/// Largest ID token or bearer JWT accepted.
pub(crate) const MAX_TOKEN: usize = 16 * 1024;
/// How long the result of a refresh is kept for requests still carrying the old session
/// (a page's parallel requests that left before the new cookie arrived).
const REFRESH_KEPT: Duration = Duration::from_secs(60);
/// Most userinfo answers kept.
const USERINFO_ENTRIES: usize = 10_000;

/// How the client authenticates at the token endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ClientAuth {
    /// HTTP Basic (RFC 6749 §2.3.1).
    Basic,
    /// `client_id` and `client_secret` in the form.
    Post,
}

/// What identifies a provider and client; equal settings share one [`Provider`].
pub(crate) struct Settings {
    pub issuer: String,
    pub client_id: String,
    /// The client secret's values (current first); empty for a public client.
    pub secret: Option<String>,
    pub auth: ClientAuth,
    pub client: fetch::Client,
    /// The TLS settings as written, so providers that differ only there stay apart.
    pub tls_settings: String,
}

/// A verified token's claims.
pub(crate) type Claims = Map<String, Value>;

/// A userinfo answer, until when it is trusted.
type Cached = (Instant, Arc<Claims>);

/// The outcome of a refresh, shared by the requests that waited for it.
#[derive(Clone, Debug)]
pub(crate) enum Refreshed {
    /// New tokens.
    Tokens(Arc<TokenResponse>, Option<Arc<Claims>>),
    /// The provider refused the refresh token: the session is over.
    Ended(String),
    /// The provider could not be asked: keep the session until it expires.
    Unavailable(String),
}

struct Loaded {
    doc: Discovery,
    token_endpoint: Uri,
    userinfo_endpoint: Option<Uri>,
    jwks: Arc<Jwks>,
}

/// One provider and client.
pub(crate) struct Provider {
    settings: Settings,
    loaded: ArcSwapOption<Loaded>,
    discovering: SingleFlight<Result<(), String>>,
    failed_at: Mutex<Option<(Instant, String)>>,
    refreshes: SingleFlight<Refreshed>,
    userinfo: Mutex<HashMap<[u8; 32], Cached>>,
}

static PROVIDERS: LazyLock<Mutex<HashMap<String, Weak<Provider>>>> =
    LazyLock::new(Default::default);

/// An ID token or bearer JWT that did not verify.
#[derive(Debug)]
pub(crate) enum Rejected {
    /// The token is not acceptable (the message says why).
    Invalid(String),
    /// The keys could not be fetched.
    KeysUnavailable,
}

impl Provider {
    /// The provider for `settings`, shared with the running configuration when equal.
    pub fn shared(settings: Settings) -> Arc<Provider> {
        let id = format!(
            "{}|{}|{:?}|{:?}|{:?}|{}|{}",
            settings.issuer,
            settings.client_id,
            settings.secret.as_deref().map(sha256_hex),
            settings.auth,
            settings.client.timeout,
            settings.client.max_bytes,
            settings.tls_settings
        );
        let mut map = PROVIDERS.lock().unwrap_or_else(|e| e.into_inner());
        map.retain(|_, w| w.strong_count() > 0);
        if let Some(p) = map.get(&id).and_then(Weak::upgrade) {
            return p;
        }
        let p = Arc::new(Provider {
            settings,
            loaded: ArcSwapOption::empty(),
            discovering: SingleFlight::new(Duration::ZERO),
            failed_at: Mutex::new(None),
            refreshes: SingleFlight::new(REFRESH_KEPT),
            userinfo: Mutex::new(HashMap::new()),
        });
        map.insert(id, Arc::downgrade(&p));
        p
    }

    /// The discovery document, fetched on first use.
    pub async fn discovery(&self) -> Result<Discovery, String> {
        Ok(self.load().await?.doc.clone())
    }

    async fn load(&self) -> Result<Arc<Loaded>, String> {
        if let Some(l) = self.loaded.load_full() {
            return Ok(l);
        }
        if let Some((at, why)) = &*self.failed_at.lock().unwrap_or_else(|e| e.into_inner()) {
            if at.elapsed() < RETRY {
                return Err(why.clone());
            }
        }
        let outcome = self
            .discovering
            .run("discovery", || async {
                if self.loaded.load().is_some() {
                    return Ok(());
                }
                match self.fetch_discovery().await {
                    Ok(l) => {
                        tracing::info!(issuer = %self.settings.issuer, "OpenID provider discovered.");
                        self.loaded.store(Some(Arc::new(l)));
                        Ok(())
                    }
                    Err(e) => {
                        tracing::warn!(issuer = %self.settings.issuer, error = %e, "OpenID provider discovery failed.");
                        *self.failed_at.lock().unwrap_or_else(|e| e.into_inner()) =
                            Some((Instant::now(), e.clone()));
                        Err(e)
                    }
                }
            })
            .await;
        outcome?;
        self.loaded
            .load_full()
            .ok_or_else(|| "the provider's discovery document is not loaded".to_string())
    }

    async fn fetch_discovery(&self) -> Result<Loaded, String> {
        let s = &self.settings;
        let url: Uri = format!(
            "{}/.well-known/openid-configuration",
            s.issuer.trim_end_matches('/')
        )
        .parse()
        .map_err(|e| format!("bad discovery URL: {e}"))?;
        let resp = s.client.get(&url, &[accept_json()]).await?;
        if resp.status != 200 {
            return Err(format!("the discovery document answered {}", resp.status));
        }
        let doc = Discovery::parse(&resp.body, &s.issuer)?;
        let parse = |what: &str, u: &str| -> Result<Uri, String> {
            u.parse::<Uri>()
                .map_err(|e| format!("the provider's {what} `{u}` is not a URL: {e}"))
        };
        let token_endpoint = parse("token_endpoint", &doc.token_endpoint)?;
        let userinfo_endpoint = match &doc.userinfo_endpoint {
            Some(u) => Some(parse("userinfo_endpoint", u)?),
            None => None,
        };
        let jwks = Jwks::shared(jwks::Settings {
            url: parse("jwks_uri", &doc.jwks_uri)?,
            refresh: Duration::from_secs(3600),
            min_refetch: Duration::from_secs(5),
            timeout: s.client.timeout,
            max_bytes: MAX_DOCUMENT,
            tls: s.client.tls.clone(),
            sni: s.client.sni.clone(),
            tls_settings: s.tls_settings.clone(),
        });
        Ok(Loaded {
            doc,
            token_endpoint,
            userinfo_endpoint,
            jwks,
        })
    }

    /// Calls the token endpoint with `form` plus the client's authentication.
    pub async fn token(&self, form: &[(&str, &str)]) -> Result<TokenResponse, TokenError> {
        let loaded = self.load().await.map_err(TokenError::Unavailable)?;
        let s = &self.settings;
        let mut pairs = form.to_vec();
        let mut headers = vec![accept_json()];
        match (&s.secret, s.auth) {
            (Some(secret), ClientAuth::Basic) => {
                let v = HeaderValue::from_str(&basic_auth(&s.client_id, secret))
                    .map_err(|_| TokenError::Rejected("the client secret is not usable".into()))?;
                headers.push((http::header::AUTHORIZATION, v));
            }
            (Some(secret), ClientAuth::Post) => {
                pairs.push(("client_id", &s.client_id));
                pairs.push(("client_secret", secret));
            }
            (None, _) => pairs.push(("client_id", &s.client_id)),
        }
        let resp = s
            .client
            .post_form(&loaded.token_endpoint, &headers, form_encode(&pairs))
            .await
            .map_err(TokenError::Unavailable)?;
        TokenResponse::parse(resp.status, &resp.body)
    }

    /// Refreshes with `refresh_token`, once per `key` however many requests ask at once;
    /// verifies the new ID token when there is one.
    pub async fn refresh(&self, key: &str, refresh_token: &str, leeway: u64) -> Refreshed {
        self.refreshes
            .run(key, || async {
                let form = [
                    ("grant_type", "refresh_token"),
                    ("refresh_token", refresh_token),
                ];
                match self.token(&form).await {
                    Ok(t) => {
                        let claims = match &t.id_token {
                            Some(id) => match self.verify_id_token(id, None, leeway).await {
                                Ok(c) => Some(Arc::new(c)),
                                Err(Rejected::Invalid(why)) => {
                                    return Refreshed::Ended(format!(
                                        "the refreshed ID token is not valid: {why}"
                                    ))
                                }
                                Err(Rejected::KeysUnavailable) => {
                                    return Refreshed::Unavailable(
                                        "the provider's keys are not available".into(),
                                    )
                                }
                            },
                            None => None,
                        };
                        Refreshed::Tokens(Arc::new(t), claims)
                    }
                    Err(TokenError::InvalidGrant(why)) | Err(TokenError::Rejected(why)) => {
                        Refreshed::Ended(why)
                    }
                    Err(TokenError::Unavailable(why)) => Refreshed::Unavailable(why),
                }
            })
            .await
    }

    /// Verifies an ID token from this provider for this client: signature with the
    /// provider's keys, `iss`, `aud` (and `azp` when there are several audiences), `exp`,
    /// `iat`, `sub`, and the `nonce` when one was sent.
    pub async fn verify_id_token(
        &self,
        id_token: &str,
        nonce: Option<&str>,
        leeway: u64,
    ) -> Result<Claims, Rejected> {
        let rules = ClaimRules {
            issuers: vec![self.settings.issuer.clone()],
            audiences: vec![self.settings.client_id.clone()],
            required: vec!["exp".into(), "iat".into(), "sub".into()],
            leeway_secs: leeway,
        };
        let claims = self.verify_jwt(id_token, &rules).await?;
        if let Some(Value::Array(auds)) = claims.get("aud") {
            let azp = claims.get("azp").and_then(Value::as_str);
            if auds.len() > 1 && azp != Some(self.settings.client_id.as_str()) {
                return Err(Rejected::Invalid(
                    "the token has several audiences and `azp` is not this client".into(),
                ));
            }
        }
        if let Some(expected) = nonce {
            let got = claims.get("nonce").and_then(Value::as_str).unwrap_or("");
            if !bool::from(subtle::ConstantTimeEq::ct_eq(
                got.as_bytes(),
                expected.as_bytes(),
            )) {
                return Err(Rejected::Invalid(
                    "the ID token's nonce does not match".into(),
                ));
            }
        }
        Ok(claims)
    }

    /// Verifies a JWT signed with this provider's keys against `rules`.
    pub async fn verify_jwt(&self, jwt: &str, rules: &ClaimRules) -> Result<Claims, Rejected> {
        let loaded = self.load().await.map_err(|_| Rejected::KeysUnavailable)?;
        verify_with_jwks(&loaded.jwks, jwt, rules).await
    }

    /// The claims the userinfo endpoint returns for an opaque access token, cached for
    /// `keep` (or the answer's `max-age` when shorter).
    pub async fn userinfo(
        &self,
        access_token: &str,
        keep: Duration,
    ) -> Result<Arc<Claims>, UserinfoError> {
        let digest = sha256(access_token.as_bytes());
        {
            let cache = self.userinfo.lock().unwrap_or_else(|e| e.into_inner());
            if let Some((until, claims)) = cache.get(&digest) {
                if Instant::now() < *until {
                    return Ok(claims.clone());
                }
            }
        }
        let loaded = self.load().await.map_err(UserinfoError::Unavailable)?;
        let Some(url) = &loaded.userinfo_endpoint else {
            return Err(UserinfoError::Invalid(
                "the provider has no userinfo endpoint to check opaque tokens".into(),
            ));
        };
        let auth = HeaderValue::from_str(&format!("Bearer {access_token}"))
            .map_err(|_| UserinfoError::Invalid("the token is not a valid header value".into()))?;
        let resp = self
            .settings
            .client
            .get(url, &[accept_json(), (http::header::AUTHORIZATION, auth)])
            .await
            .map_err(UserinfoError::Unavailable)?;
        match resp.status {
            200 => {}
            400 | 401 | 403 => {
                return Err(UserinfoError::Invalid(
                    "the provider does not accept the access token".into(),
                ))
            }
            s => {
                return Err(UserinfoError::Unavailable(format!(
                    "the userinfo endpoint answered {s}"
                )))
            }
        }
        let claims: Claims = serde_json::from_slice(&resp.body).map_err(|_| {
            UserinfoError::Unavailable("the userinfo answer is not a JSON object".into())
        })?;
        if !claims.get("sub").is_some_and(Value::is_string) {
            return Err(UserinfoError::Unavailable(
                "the userinfo answer has no `sub`".into(),
            ));
        }
        let keep = max_age(&resp.headers).map_or(keep, |m| m.min(keep));
        let claims = Arc::new(claims);
        let mut cache = self.userinfo.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= USERINFO_ENTRIES {
            let now = Instant::now();
            cache.retain(|_, (until, _)| *until > now);
            if cache.len() >= USERINFO_ENTRIES {
                cache.clear();
            }
        }
        cache.insert(digest, (Instant::now() + keep, claims.clone()));
        Ok(claims)
    }
}

/// Why an opaque token was not accepted.
#[derive(Debug)]
pub(crate) enum UserinfoError {
    /// The provider refused it: 401.
    Invalid(String),
    /// The provider could not be asked: 502.
    Unavailable(String),
}

/// Verifies `jwt` with the keys of `jwks` (asymmetric algorithms only: an HMAC token would
/// be signed with a secret the provider does not publish) against `rules`.
pub(crate) async fn verify_with_jwks(
    jwks: &Arc<Jwks>,
    jwt: &str,
    rules: &ClaimRules,
) -> Result<Claims, Rejected> {
    let invalid = |e: JwtError| Rejected::Invalid(e.to_string());
    let parsed = token::parse(jwt, MAX_TOKEN).map_err(invalid)?;
    if parsed.alg.is_hmac() {
        return Err(invalid(JwtError::Algorithm));
    }
    match jwks.verify(&parsed).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(invalid(e.unwrap_or(JwtError::UnknownKey))),
        Err(KeysUnavailable) => return Err(Rejected::KeysUnavailable),
    }
    rules
        .check(&parsed.claims, sluicegate_jwt::now())
        .map_err(invalid)?;
    Ok(parsed.claims)
}

fn accept_json() -> (HeaderName, HeaderValue) {
    (
        http::header::ACCEPT,
        HeaderValue::from_static("application/json"),
    )
}

fn max_age(headers: &http::HeaderMap) -> Option<Duration> {
    let cc = headers.get(http::header::CACHE_CONTROL)?.to_str().ok()?;
    cc.split(',').find_map(|d| {
        let (k, v) = d.trim().split_once('=')?;
        k.eq_ignore_ascii_case("max-age")
            .then(|| v.trim().parse().ok().map(Duration::from_secs))
            .flatten()
    })
}

pub(crate) fn sha256(bytes: &[u8]) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, bytes);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

fn sha256_hex(text: &str) -> String {
    sha256(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
