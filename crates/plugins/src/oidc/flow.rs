//! The login endpoints: `/login` (start), `/login/callback` (the provider's redirect back)
//! and `/logout`, and the redirect of a page load without a session.
//!
//! A login in flight is a sealed cookie of its own, named after its `state` and sent only
//! to the callback path, holding the `state`, `nonce`, PKCE verifier and target: several
//! tabs can log in at once, a callback whose cookie is missing, forged, expired or for
//! another `state` is refused with a page that says why (never sent back to the provider,
//! so never a loop), and the cookie is cleared by the callback so a replayed callback URL
//! finds nothing. The target is a path on this site or an allowed origin
//! ([`sluicegate_oidc::redirect::safe_target`]).

use http::{HeaderMap, HeaderValue, Method, StatusCode};
use subtle::ConstantTimeEq;

use super::identity::Identity;
use super::provider::Rejected;
use super::{now, with_cookies, Oidc};
use crate::query::query_value;
use sluicegate_core::context::RequestCtx;
use sluicegate_core::error::{error_response, Kind, ProxyError, Source};
use sluicegate_core::phase::{Flow, LocalResponse};
use sluicegate_oidc::cookie;
use sluicegate_oidc::pkce;
use sluicegate_oidc::provider::{url_with_query, TokenError};
use sluicegate_oidc::redirect::safe_target;
use sluicegate_oidc::session::{login_cookie_name, Login, Session};

/// How long a login may take, from the redirect to the provider to the callback.
pub(crate) const LOGIN_SECS: u64 = 600;

/// Whether a request is a browser's top-level page load (which may be redirected to the
/// provider) rather than a script's or a program's request (which gets 401 JSON).
pub(crate) fn is_page_load(head: &http::request::Parts) -> bool {
    let h = &head.headers;
    let text = |name: &str| h.get(name).and_then(|v| v.to_str().ok());
    (head.method == Method::GET || head.method == Method::HEAD)
        && text("accept").is_some_and(|a| a.contains("text/html"))
        && text("x-requested-with").is_none()
        && !h.contains_key(http::header::UPGRADE)
        && text("sec-fetch-mode").is_none_or(|m| m == "navigate")
        && text("sec-fetch-dest").is_none_or(|d| d == "document")
}

fn reject(ctx: &RequestCtx, kind: Kind, message: impl Into<String>) -> LocalResponse {
    let err = ProxyError::new(Source::Plugin, kind, message);
    tracing::info!(request_id = ctx.request_id_str(), route = ctx.route_name(), error = %err.message, "Login refused.");
    error_response(&err, &ctx.request_id)
}

fn redirect(location: &str, cookies: Vec<HeaderValue>) -> Flow {
    let mut headers = HeaderMap::new();
    if let Ok(v) = HeaderValue::from_str(location) {
        headers.insert(http::header::LOCATION, v);
    }
    headers.insert(
        http::header::CACHE_CONTROL,
        HeaderValue::from_static("no-store"),
    );
    with_cookies(
        LocalResponse {
            status: StatusCode::FOUND,
            headers,
            body: Default::default(),
        },
        cookies,
    )
}

impl Oidc {
    /// `GET /login?rd=TARGET` (or `?token=true`): starts a login.
    pub(super) async fn start(&self, ctx: &mut RequestCtx) -> Flow {
        let query = ctx.original_uri.query();
        let target = if self.token_page && query_value(query, "token").as_deref() == Some("true") {
            format!("{}?token=true", self.login_path)
        } else {
            match query_value(query, "rd") {
                None => "/".to_string(),
                Some(rd) => match safe_target(&rd, &self.origins) {
                    Some(t) => t,
                    None => {
                        return Flow::Respond(reject(
                            ctx,
                            Kind::BadRequest,
                            "the `rd` target is not a page of this site",
                        ))
                    }
                },
            }
        };
        self.redirect_to_provider(ctx, target).await
    }

    /// Redirects to the provider's authorization endpoint with a new login cookie.
    pub(super) async fn redirect_to_provider(&self, ctx: &RequestCtx, target: String) -> Flow {
        let doc = match self.provider.discovery().await {
            Ok(d) => d,
            Err(e) => return Flow::Respond(self.provider_down(ctx, &e)),
        };
        let login = Login {
            state: pkce::random_token(24),
            nonce: pkce::random_token(24),
            verifier: pkce::verifier(),
            target,
            created: now(),
        };
        let challenge = pkce::challenge(&login.verifier);
        let mut params: Vec<(&str, &str)> = vec![
            ("response_type", "code"),
            ("client_id", &self.client_id),
            ("redirect_uri", &self.redirect_uri),
            ("scope", &self.scopes),
            ("state", &login.state),
            ("nonce", &login.nonce),
            ("code_challenge", &challenge),
            ("code_challenge_method", "S256"),
        ];
        params.extend(
            self.auth_params
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str())),
        );
        let location = url_with_query(&doc.authorization_endpoint, &params);
        let name = login_cookie_name(&self.login_prefix, &login.state);
        let sealed = login.seal(&self.sealer);
        redirect(
            &location,
            vec![cookie::set(&name, &sealed, &self.login_attrs)],
        )
    }

    fn provider_down(&self, ctx: &RequestCtx, why: &str) -> LocalResponse {
        tracing::warn!(request_id = ctx.request_id_str(), route = ctx.route_name(), issuer = %self.issuer, error = %why, "The identity provider is unavailable.");
        let err = ProxyError::new(
            Source::Plugin,
            Kind::ProviderUnavailable,
            "the identity provider is unavailable; try again shortly",
        );
        error_response(&err, &ctx.request_id)
    }

    /// `GET /login/callback?code=...&state=...`: finishes a login.
    pub(super) async fn callback(&self, ctx: &mut RequestCtx) -> Flow {
        let query = ctx.original_uri.query();
        let Some(state) = query_value(query, "state").filter(|s| !s.is_empty()) else {
            return Flow::Respond(reject(ctx, Kind::BadRequest, "the callback has no `state`"));
        };
        let name = login_cookie_name(&self.login_prefix, &state);
        // Whatever happens next, this login is over.
        let clear = vec![cookie::set(
            &name,
            "",
            &sluicegate_oidc::cookie::Attrs {
                max_age: Some(0),
                ..self.login_attrs.clone()
            },
        )];
        let Some(sealed) = cookie::get(&ctx.head.headers, &name) else {
            return with_cookies(
                reject(
                    ctx,
                    Kind::BadRequest,
                    "this login was not started here, took longer than 10 minutes, or your browser blocks cookies; start again",
                ),
                clear,
            );
        };
        let login = match Login::open(&self.sealer, sealed) {
            Ok(l) if bool::from(l.state.as_bytes().ct_eq(state.as_bytes())) => l,
            _ => {
                return with_cookies(
                    reject(ctx, Kind::BadRequest, "the login state does not match"),
                    clear,
                )
            }
        };
        if now() > login.created + LOGIN_SECS {
            return with_cookies(
                reject(
                    ctx,
                    Kind::BadRequest,
                    "the login took longer than 10 minutes; start again",
                ),
                clear,
            );
        }
        // RFC 9207: a provider that names itself must be ours (mix-up attacks).
        if let Some(iss) = query_value(query, "iss") {
            if *iss != *self.issuer {
                return with_cookies(
                    reject(
                        ctx,
                        Kind::BadRequest,
                        "the callback comes from another issuer",
                    ),
                    clear,
                );
            }
        }
        if let Some(error) = query_value(query, "error") {
            let description = query_value(query, "error_description").unwrap_or_default();
            let message = format!("the identity provider refused the login: {error} {description}");
            return with_cookies(reject(ctx, Kind::Unauthorized, message.trim_end()), clear);
        }
        let Some(code) = query_value(query, "code").filter(|c| !c.is_empty()) else {
            return with_cookies(
                reject(ctx, Kind::BadRequest, "the callback has no `code`"),
                clear,
            );
        };
        let form = [
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", &self.redirect_uri),
            ("code_verifier", &login.verifier),
        ];
        let tokens = match self.provider.token(&form).await {
            Ok(t) => t,
            Err(TokenError::InvalidGrant(why)) | Err(TokenError::Rejected(why)) => {
                return with_cookies(
                    reject(
                        ctx,
                        Kind::Unauthorized,
                        format!("the identity provider refused the code: {why}"),
                    ),
                    clear,
                )
            }
            Err(TokenError::Unavailable(why)) => {
                return with_cookies(self.provider_down(ctx, &why), clear)
            }
        };
        let Some(id_token) = tokens.id_token.as_deref() else {
            return with_cookies(
                self.provider_down(ctx, "the token answer has no ID token"),
                clear,
            );
        };
        let claims = match self
            .provider
            .verify_id_token(id_token, Some(&login.nonce), self.leeway)
            .await
        {
            Ok(c) => c,
            Err(Rejected::Invalid(why)) => {
                return with_cookies(
                    reject(
                        ctx,
                        Kind::Unauthorized,
                        format!("the ID token is not valid: {why}"),
                    ),
                    clear,
                )
            }
            Err(Rejected::KeysUnavailable) => {
                return with_cookies(
                    self.provider_down(ctx, "the provider's keys are not available"),
                    clear,
                )
            }
        };
        let Some(identity) = Identity::from_claims(&claims, &self.groups_claim) else {
            return with_cookies(
                reject(ctx, Kind::Unauthorized, "the ID token names no subject"),
                clear,
            );
        };
        if let Err(why) = self.rules.admit(&identity) {
            let mut resp = reject(ctx, Kind::Forbidden, why);
            resp.headers.append(
                http::header::CACHE_CONTROL,
                HeaderValue::from_static("no-store"),
            );
            return with_cookies(resp, clear);
        }
        let now = now();
        let ends_at = now + self.max_lifetime;
        let mut session = Session {
            sub: String::new(),
            email: None,
            groups: Vec::new(),
            claims: Default::default(),
            expires_at: self.expiry(now, tokens.expires_in, Some(&claims), ends_at),
            ends_at,
            refresh_token: tokens.refresh_token.clone(),
            id_token: self.headers.id_token.then(|| id_token.to_string()),
            sid: pkce::random_token(12),
        };
        self.update_from_claims(&mut session, &claims);
        tracing::info!(request_id = ctx.request_id_str(), user = %identity.email.as_deref().unwrap_or(&identity.sub), "Logged in.");
        let mut cookies = clear;
        cookies.extend(self.session_cookies(&session, &ctx.head.headers));
        if self.token_page && login.target == format!("{}?token=true", self.login_path) {
            return with_cookies(token_page(id_token), cookies);
        }
        let location = if login.target.starts_with('/') {
            format!("{}{}", self.public_url, login.target)
        } else {
            login.target
        };
        redirect(&location, cookies)
    }

    /// `/logout`: clears the session, then logs out at the provider when it can.
    pub(super) async fn logout(&self, ctx: &mut RequestCtx) -> Flow {
        // The ID token as a hint, even when due for refresh: no refresh to log out.
        let hint = match self.open_session(&ctx.head.headers) {
            super::Opened::Fresh(known) => known.session.id_token.clone(),
            super::Opened::Due(s, _) => s.id_token,
            _ => None,
        };
        let cookies = self.clear_session(&ctx.head.headers);
        let end_session = match self.provider.discovery().await {
            Ok(doc) => doc.end_session_endpoint,
            Err(e) => {
                tracing::warn!(request_id = ctx.request_id_str(), error = %e, "Logged out here only: the identity provider is unavailable.");
                None
            }
        };
        let location = match end_session {
            Some(url) => {
                let mut params: Vec<(&str, &str)> = vec![
                    ("client_id", &self.client_id),
                    ("post_logout_redirect_uri", &self.after_logout),
                ];
                if let Some(h) = &hint {
                    params.push(("id_token_hint", h));
                }
                url_with_query(&url, &params)
            }
            None => self.after_logout.clone(),
        };
        redirect(&location, cookies)
    }
}

/// The page that shows a developer their ID token to copy (`token_page: true`).
fn token_page(id_token: &str) -> LocalResponse {
    // An ID token is three base64url parts: nothing in it needs escaping in HTML.
    let safe: String = id_token
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        .collect();
    let body = format!(
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>Your ID token</title></head>\
         <body><h1>Your ID token</h1><p>Send it as <code>Authorization: Bearer &lt;token&gt;</code>. \
         It expires like any ID token; log in again for a new one.</p>\
         <textarea id=\"token\" readonly rows=\"12\" cols=\"100\">{safe}</textarea></body></html>\n"
    );
    let mut headers = HeaderMap::new();
    headers.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    headers.insert(
        http::header::CACHE_CONTROL,
        HeaderValue::from_static("no-store"),
    );
    headers.insert(
        http::header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'"),
    );
    LocalResponse {
        status: StatusCode::OK,
        headers,
        body: body.into(),
    }
}
