//! `oidc`: an identity-aware proxy. Users log in at an OpenID provider (authorization code
//! flow with PKCE, [`flow`]); the gateway keeps who they are in a sealed cookie (no shared
//! store, so every node of a cluster accepts every session), refreshes their tokens before
//! they expire, admits them by email, domain, group or claim ([`identity::Rules`]) and
//! tells the upstream who they are in headers. Programs pass with bearer tokens instead:
//! the provider's JWTs, other issuers' JWTs (Google ID tokens), or opaque access tokens
//! checked at the userinfo endpoint ([`bearer`]).
//!
//! Invariants: the identity headers and the plugin's own cookies never reach the upstream
//! with client-sent values; a request without an identity never reaches it; a request that
//! is not a top-level page load is answered 401 JSON, never a redirect; a failed refresh
//! ends the session (one clear login, no loop); a provider that cannot be reached keeps
//! issued sessions working until their tokens expire. No request with a valid session
//! makes a network call except the one refresh per session and node.

mod bearer;
mod config;
mod flow;
mod identity;
mod known;
pub(crate) mod provider;
#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Duration;

use http::HeaderValue;

pub use config::OidcConfig;

use self::identity::{Headers, Identity, Rules};
use self::known::{Admitted, Known, KnownSessions, Refused};
use self::provider::{ClientAuth, Provider, Refreshed};
use super::{parse_config, BuildCtx, Flow, Phase, PhaseSet, Plugin, Step};
use sluicegate_core::context::{RequestCtx, ResponseHead};
use sluicegate_core::diag::{Diags, Path};
use sluicegate_core::error::{error_response, Kind, ProxyError, Source};
use sluicegate_core::phase::{LocalResponse, PluginError};
use sluicegate_core::yaml::Node;
use sluicegate_http1::raw::RawHeaders;
use sluicegate_oidc::cookie::{self, Attrs, SameSite};
use sluicegate_oidc::seal::{SealError, Sealer};
use sluicegate_oidc::session::Session;

/// `Set-Cookie` values the header filter adds to the response (a refreshed or re-sealed
/// session, or the clearing of one that ended).
#[derive(Clone)]
struct PendingCookies(Vec<HeaderValue>);

/// The `oidc` plugin.
pub struct Oidc {
    provider: Arc<Provider>,
    sealer: Sealer,
    issuer: String,
    client_id: String,
    /// `public_url` without a trailing `/`.
    public_url: String,
    redirect_uri: String,
    scopes: String,
    auth_params: Vec<(String, String)>,
    cookie: String,
    login_prefix: String,
    session_attrs: Attrs,
    login_attrs: Attrs,
    max_lifetime: u64,
    refresh_before: u64,
    rules: Rules,
    headers: Headers,
    groups_claim: String,
    kept_claims: Vec<String>,
    login_path: String,
    callback_path: String,
    logout_path: String,
    token_page: bool,
    after_logout: String,
    /// Origins `rd=` may name besides paths on this site (`public_url`'s among them).
    origins: Vec<String>,
    bearer: Option<bearer::Bearer>,
    leeway: u64,
    /// Sessions each worker has opened, with what they let through.
    known: KnownSessions,
}

/// What the session cookie said.
/// A session cookie as read, before any provider call.
enum Opened {
    /// No session cookie.
    Absent,
    /// Not (or no longer) a session.
    Ended(String),
    /// Valid and not due for refresh (sealed with a previous key: re-seal it).
    Fresh(Arc<Known>),
    /// Valid, but its tokens are due for refresh.
    Due(Session, bool),
}

enum SessionCheck {
    /// No session cookie.
    Absent,
    /// A session, maybe refreshed or re-sealed (then `reseal`).
    Valid(Session, bool),
    /// A cookie that is not (or no longer) a session: cleared, then treated as absent.
    Ended(String),
    /// The tokens expired and the provider cannot refresh them now.
    Unavailable(String),
}

/// Builds an `oidc` plugin from its config.
pub fn build(
    config: &Node,
    path: &Path,
    ctx: &BuildCtx<'_>,
    diags: &mut Diags,
) -> Option<Arc<dyn Plugin>> {
    let cfg: OidcConfig = parse_config(config, path, diags)?;
    let before = diags.0.len();
    let issuer = http_url(&cfg.issuer, &path.key("issuer"), diags).map(|_| cfg.issuer.clone());
    if cfg.client_id.is_empty() {
        diags.push(&path.key("client_id"), "must not be empty");
    }
    let public = http_url(&cfg.public_url, &path.key("public_url"), diags);
    let public_url = cfg.public_url.trim_end_matches('/').to_string();
    if public
        .as_ref()
        .is_some_and(|u| u.path() != "/" || u.query().is_some())
    {
        diags.push(
            &path.key("public_url"),
            "give the origin only (`https://app.example.com`), without a path",
        );
    }
    let https = public
        .as_ref()
        .is_some_and(|u| u.scheme_str() == Some("https"));
    let secret = cfg.client_secret.as_ref().and_then(|r| {
        let s = ctx.secrets.resolve(r, &path.key("client_secret"), diags)?;
        String::from_utf8(s.current().expose().to_vec())
            .map_err(|_| diags.push(&path.key("client_secret"), "the secret is not UTF-8 text"))
            .ok()
    });
    let auth = match cfg.client_auth.as_str() {
        "client_secret_basic" => ClientAuth::Basic,
        "client_secret_post" => ClientAuth::Post,
        other => {
            diags.push(
                &path.key("client_auth"),
                format!(
                    "unknown method `{other}`; use `client_secret_basic` or `client_secret_post`"
                ),
            );
            ClientAuth::Basic
        }
    };
    if !cfg.scopes.0.iter().any(|s| s == "openid") {
        diags.push(&path.key("scopes"), "must include `openid`");
    }
    let sealer = session_sealer(&cfg, path, ctx, diags);
    let s = &cfg.session;
    let sp = path.key("session");
    let same_site = match s.same_site.as_str() {
        "lax" => SameSite::Lax,
        "strict" => SameSite::Strict,
        "none" => SameSite::None,
        other => {
            diags.push(
                &sp.key("same_site"),
                format!("`{other}` is not `lax`, `strict` or `none`"),
            );
            SameSite::Lax
        }
    };
    if same_site == SameSite::None && !https {
        diags.push(
            &sp.key("same_site"),
            "`none` needs an https `public_url` (browsers drop it otherwise)",
        );
    }
    let session_attrs = Attrs {
        path: "/".into(),
        domain: s.domain.clone(),
        secure: https,
        http_only: true,
        same_site,
        max_age: None,
    };
    if let Err(errors) = session_attrs.validate(&s.cookie) {
        for e in errors {
            diags.push(&sp.key("cookie"), e);
        }
    }
    if s.max_lifetime_secs < 60 {
        diags.push(&sp.key("max_lifetime_secs"), "must be at least 60");
    }
    let paths = &cfg.paths;
    for (key, p) in [
        ("login", &paths.login),
        ("callback", &paths.callback),
        ("logout", &paths.logout),
    ] {
        if !p.starts_with('/') || p.contains(['?', '#']) {
            diags.push(
                &path.key("paths").key(key),
                "must be a path starting with `/`, without a query",
            );
        }
    }
    if paths.login == paths.callback
        || paths.login == paths.logout
        || paths.callback == paths.logout
    {
        diags.push(
            &path.key("paths"),
            "`login`, `callback` and `logout` must differ",
        );
    }
    let mut origins = vec![public_url.clone()];
    for (i, o) in cfg.redirect_origins.iter().enumerate() {
        match sluicegate_oidc::redirect::check_origin(o) {
            Ok(()) => origins.push(o.trim_end_matches('/').to_string()),
            Err(e) => diags.push(&path.key("redirect_origins").index(i), e),
        }
    }
    let after_logout = match sluicegate_oidc::redirect::safe_target(&cfg.after_logout, &origins) {
        Some(t) if t.starts_with('/') => format!("{public_url}{t}"),
        Some(t) => t,
        None => {
            diags.push(
                &path.key("after_logout"),
                "must be a path on this site or an allowed origin",
            );
            String::new()
        }
    };
    if cfg.leeway_secs > 600 {
        diags.push(&path.key("leeway_secs"), "must be at most 600");
    }
    if cfg.timeout_ms == 0 || cfg.timeout_ms > 60_000 {
        diags.push(&path.key("timeout_ms"), "must be 1..=60000");
    }
    let mut auth_params = Vec::new();
    for (k, v) in &cfg.auth_params {
        const OURS: [&str; 8] = [
            "response_type",
            "client_id",
            "redirect_uri",
            "scope",
            "state",
            "nonce",
            "code_challenge",
            "code_challenge_method",
        ];
        if OURS.contains(&k.as_str()) {
            diags.push(&path.key("auth_params").key(k), "is set by the plugin");
        }
        auth_params.push((k.clone(), v.clone()));
    }
    let rules = Rules::build(&cfg.allow, &path.key("allow"), diags);
    let headers = Headers::build(&cfg.headers, &path.key("headers"), diags);
    let mut kept_claims = cfg.claims.clone();
    kept_claims.extend(rules.claims_read().map(str::to_string));
    kept_claims.push("email_verified".into());
    kept_claims.sort();
    kept_claims.dedup();
    let tls = provider_tls(&cfg, issuer.as_deref(), path, ctx, diags);
    let client = sluicegate_upstream::fetch::Client {
        tls: tls.clone(),
        sni: cfg.tls.sni.clone(),
        timeout: Duration::from_millis(cfg.timeout_ms),
        max_bytes: 256 * 1024,
        user_agent: "sluicegate-oidc",
    };
    let bearer = bearer::Bearer::build(&cfg, &path.key("bearer"), ctx, diags);
    if diags.0.len() != before {
        return None;
    }
    let provider = Provider::shared(provider::Settings {
        issuer: issuer.clone()?,
        client_id: cfg.client_id.clone(),
        secret,
        auth,
        client,
        tls_settings: format!("{:?}", cfg.tls),
    });
    Some(Arc::new(Oidc {
        provider,
        sealer: sealer?,
        issuer: issuer?,
        client_id: cfg.client_id.clone(),
        redirect_uri: format!("{public_url}{}", paths.callback),
        public_url,
        scopes: cfg.scopes.0.join(" "),
        auth_params,
        cookie: s.cookie.clone(),
        login_prefix: format!("{}_login", s.cookie),
        login_attrs: Attrs {
            path: paths.callback.clone(),
            domain: None,
            same_site: SameSite::Lax,
            max_age: Some(flow::LOGIN_SECS as i64),
            ..session_attrs.clone()
        },
        session_attrs,
        max_lifetime: s.max_lifetime_secs,
        refresh_before: s.refresh_before_secs,
        rules,
        headers,
        groups_claim: cfg.groups_claim.clone(),
        kept_claims,
        login_path: paths.login.clone(),
        callback_path: paths.callback.clone(),
        logout_path: paths.logout.clone(),
        token_page: cfg.token_page,
        after_logout,
        origins,
        bearer: bearer?,
        leeway: cfg.leeway_secs,
        known: KnownSessions::default(),
    }))
}

fn http_url(text: &str, path: &Path, diags: &mut Diags) -> Option<http::Uri> {
    match text.parse::<http::Uri>() {
        Ok(u) if matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some() => Some(u),
        _ => {
            diags.push(
                path,
                format!("`{text}` is not an http:// or https:// URL with a host"),
            );
            None
        }
    }
}

fn session_sealer(
    cfg: &OidcConfig,
    path: &Path,
    ctx: &BuildCtx<'_>,
    diags: &mut Diags,
) -> Option<Sealer> {
    let p = path.key("session").key("secret");
    let secret = ctx.secrets.resolve(&cfg.session.secret, &p, diags)?;
    let values: Vec<&[u8]> = secret.values().map(|v| v.expose()).collect();
    Sealer::new(&values).map_err(|e| diags.push(&p, e)).ok()
}

fn provider_tls(
    cfg: &OidcConfig,
    issuer: Option<&str>,
    path: &Path,
    ctx: &BuildCtx<'_>,
    diags: &mut Diags,
) -> Option<Arc<rustls::ClientConfig>> {
    for (key, set) in [
        ("roots", cfg.tls.roots.is_some()),
        ("client_cert", cfg.tls.client_cert.is_some()),
        ("client_key", cfg.tls.client_key.is_some()),
    ] {
        if set {
            diags.push(
                &path.key("tls").key(key),
                "not supported for the provider (use `ca_file`, `sni` or `verify`)",
            );
        }
    }
    if !issuer.is_some_and(|i| i.starts_with("https://")) {
        return None;
    }
    sluicegate_upstream::tls::client_config(
        &cfg.tls,
        ctx.base_dir,
        sluicegate_upstream::Protocol::Http1,
    )
    .map_err(|e| diags.push(&path.key("tls"), e))
    .ok()
}

/// The current time in whole seconds since the epoch.
fn now() -> u64 {
    sluicegate_jwt::now() as u64
}

impl Oidc {
    fn is_our_cookie(&self, name: &str) -> bool {
        cookie::is_named(name, &self.cookie) || cookie::is_prefixed(name, &self.login_prefix)
    }

    /// The session cookie's attributes for a session ending at `ends_at`.
    fn session_cookie_attrs(&self, ends_at: u64) -> Attrs {
        Attrs {
            max_age: Some(ends_at.saturating_sub(now()) as i64),
            ..self.session_attrs.clone()
        }
    }

    /// `Set-Cookie` values that store `session`.
    fn session_cookies(&self, session: &Session, request: &http::HeaderMap) -> Vec<HeaderValue> {
        let sealed = session.seal(&self.sealer);
        cookie::set_chunked(
            &self.cookie,
            &sealed,
            &self.session_cookie_attrs(session.ends_at),
            request,
        )
    }

    /// `Set-Cookie` values that remove the session.
    fn clear_session(&self, request: &http::HeaderMap) -> Vec<HeaderValue> {
        cookie::clear_chunked(&self.cookie, &self.session_attrs, request)
    }

    /// The whole check, for requests that may need the provider (the plugin's own paths,
    /// a session due for refresh, a bearer token, no identity at all).
    async fn check(&self, ctx: &mut RequestCtx, opened: Opened) -> Flow {
        let path = ctx.original_uri.path();
        if path == self.login_path {
            return self.start(ctx).await;
        }
        if path == self.callback_path {
            return self.callback(ctx).await;
        }
        if path == self.logout_path {
            return self.logout(ctx).await;
        }
        let mut cookies = Vec::new();
        match self.refreshed(opened).await {
            SessionCheck::Valid(session, reseal) => return self.valid(ctx, session, reseal),
            SessionCheck::Absent => {}
            SessionCheck::Ended(why) => {
                tracing::info!(request_id = ctx.request_id_str(), route = ctx.route_name(), reason = %why, "Session ended.");
                cookies = self.clear_session(&ctx.head.headers);
            }
            SessionCheck::Unavailable(why) => {
                tracing::warn!(request_id = ctx.request_id_str(), route = ctx.route_name(), error = %why, "Session not refreshed: the identity provider is unavailable.");
                let err = ProxyError::new(
                    Source::Plugin,
                    Kind::ProviderUnavailable,
                    "the identity provider cannot refresh your session now; try again shortly",
                );
                return Flow::Respond(error_response(&err, &ctx.request_id));
            }
        }
        if let Some(b) = &self.bearer {
            if let Some(token) = bearer::token_of(&ctx.head.headers) {
                let token = token.to_string();
                return match b.identify(self, &token).await {
                    Ok(identity) => self.pass(ctx, identity, None, cookies),
                    Err(flow) => with_cookies(flow(&ctx.request_id), cookies),
                };
            }
        }
        self.unauthenticated(ctx, cookies).await
    }

    /// Lets a request with a valid session through (re-sealing it when due).
    fn valid(&self, ctx: &mut RequestCtx, session: Session, reseal: bool) -> Flow {
        let cookies = if reseal {
            self.session_cookies(&session, &ctx.head.headers)
        } else {
            Vec::new()
        };
        let admission = self.session_admission(&session);
        self.apply(ctx, &admission, cookies)
    }

    /// Lets a request with a fresh session through, from what its worker already knows.
    fn valid_known(&self, ctx: &mut RequestCtx, known: &Known) -> Flow {
        let cookies = if known.current_key {
            Vec::new()
        } else {
            self.session_cookies(&known.session, &ctx.head.headers)
        };
        self.apply(ctx, &known.admission, cookies)
    }

    /// Lets an identified request through, after the rules.
    fn pass(
        &self,
        ctx: &mut RequestCtx,
        identity: Identity,
        id_token: Option<&str>,
        cookies: Vec<HeaderValue>,
    ) -> Flow {
        let admission = self.admission(identity, id_token);
        self.apply(ctx, &admission, cookies)
    }

    /// What the rules say of a session's user, and what it puts on a request if admitted.
    fn session_admission(&self, s: &Session) -> Result<Admitted, Refused> {
        let identity = Identity {
            sub: s.sub.clone(),
            email: s.email.clone(),
            groups: s.groups.clone(),
            claims: s.claims.clone(),
        };
        self.admission(identity, s.id_token.as_deref())
    }

    /// What the rules say of `identity`, and what it puts on a request if admitted.
    fn admission(&self, identity: Identity, id_token: Option<&str>) -> Result<Admitted, Refused> {
        if let Err(reason) = self.rules.admit(&identity) {
            let user = identity.email.unwrap_or(identity.sub);
            return Err(Refused { user, reason });
        }
        let headers = self.headers.values(&identity, id_token);
        let (consumer, claims) = identity.into_vars(&self.groups_claim);
        Ok(Admitted {
            headers,
            consumer,
            claims,
        })
    }

    /// Applies an admission to the request: 403 if refused, else the identity headers and
    /// vars set and the plugin's cookies removed.
    fn apply(
        &self,
        ctx: &mut RequestCtx,
        admission: &Result<Admitted, Refused>,
        cookies: Vec<HeaderValue>,
    ) -> Flow {
        let admitted = match admission {
            Ok(a) => a,
            Err(r) => {
                tracing::info!(request_id = ctx.request_id_str(), route = ctx.route_name(), user = %r.user, reason = %r.reason, "Identity not allowed.");
                let err = ProxyError::new(Source::Plugin, Kind::Forbidden, r.reason.clone());
                return with_cookies(error_response(&err, &ctx.request_id), cookies);
            }
        };
        cookie::strip(&mut ctx.head.headers, |n| self.is_our_cookie(n));
        for (name, value) in &admitted.headers {
            ctx.head.headers.insert(name.clone(), value.clone());
        }
        ctx.vars.insert(admitted.consumer.clone());
        ctx.vars.insert(admitted.claims.clone());
        if !cookies.is_empty() {
            ctx.vars.insert(PendingCookies(cookies));
        }
        Flow::Continue
    }

    /// Reads and checks the session cookie, without the network.
    fn open_session(&self, headers: &http::HeaderMap) -> Opened {
        let Some(text) = cookie::get_chunked(headers, &self.cookie) else {
            return Opened::Absent;
        };
        let known = match self.known.get_or_open(text, |text| {
            let (session, current_key) = Session::open(&self.sealer, text)?;
            let admission = self.session_admission(&session);
            Ok::<_, SealError>(Known {
                session,
                current_key,
                admission,
            })
        }) {
            Ok(k) => k,
            Err(e) => return Opened::Ended(format!("the session cookie is not valid: {e}")),
        };
        let s = &known.session;
        let now = now();
        if now >= s.ends_at {
            return Opened::Ended("the session reached its maximum lifetime".into());
        }
        if now + self.refresh_before < s.expires_at {
            return Opened::Fresh(known);
        }
        if s.refresh_token.is_none() {
            if now >= s.expires_at {
                return Opened::Ended("the tokens expired and there is no refresh token".into());
            }
            return Opened::Fresh(known);
        }
        Opened::Due(s.clone(), !known.current_key)
    }

    /// Refreshes a session that is due (one refresh per session and node).
    async fn refreshed(&self, opened: Opened) -> SessionCheck {
        let (mut s, mut reseal) = match opened {
            Opened::Absent => return SessionCheck::Absent,
            Opened::Ended(why) => return SessionCheck::Ended(why),
            Opened::Fresh(k) => return SessionCheck::Valid(k.session.clone(), !k.current_key),
            Opened::Due(s, reseal) => (s, reseal),
        };
        let Some(refresh_token) = s.refresh_token.clone() else {
            return SessionCheck::Valid(s, reseal);
        };
        let now = now();
        let key = format!("{}:{}", s.sid, s.expires_at);
        match self
            .provider
            .refresh(&key, &refresh_token, self.leeway)
            .await
        {
            Refreshed::Tokens(tokens, claims) => {
                if let Some(c) = &claims {
                    self.update_from_claims(&mut s, c);
                }
                s.expires_at = self.expiry(now, tokens.expires_in, claims.as_deref(), s.ends_at);
                if tokens.refresh_token.is_some() {
                    s.refresh_token = tokens.refresh_token.clone();
                }
                if self.headers.id_token && tokens.id_token.is_some() {
                    s.id_token = tokens.id_token.clone();
                }
                reseal = true;
            }
            Refreshed::Ended(why) => {
                return SessionCheck::Ended(format!("the provider refused the refresh: {why}"))
            }
            Refreshed::Unavailable(why) => {
                if now >= s.expires_at {
                    return SessionCheck::Unavailable(why);
                }
            }
        }
        SessionCheck::Valid(s, reseal)
    }

    /// When the tokens are due for refresh: the access token's lifetime or the ID token's
    /// `exp`, whichever comes first, and never after the session's end.
    fn expiry(
        &self,
        now: u64,
        expires_in: Option<u64>,
        claims: Option<&provider::Claims>,
        ends_at: u64,
    ) -> u64 {
        let by_access = expires_in.map(|s| now + s);
        let by_id = claims
            .and_then(|c| c.get("exp"))
            .and_then(|e| e.as_f64())
            .map(|e| e as u64);
        let due = match (by_access, by_id) {
            (Some(a), Some(b)) => a.min(b),
            (Some(a), None) | (None, Some(a)) => a,
            // Neither says: check again in five minutes.
            (None, None) => now + 300,
        };
        due.min(ends_at)
    }

    /// Copies who the user is from verified ID token claims into the session.
    fn update_from_claims(&self, s: &mut Session, claims: &provider::Claims) {
        if let Some(id) = Identity::from_claims(claims, &self.groups_claim) {
            s.sub = id.sub;
            s.email = id.email;
            s.groups = id.groups;
        }
        s.claims = self
            .kept_claims
            .iter()
            .filter_map(|k| Some((k.clone(), claims.get(k)?.clone())))
            .collect();
    }

    /// No identity: a page load goes to the provider, anything else gets 401 JSON.
    async fn unauthenticated(&self, ctx: &mut RequestCtx, cookies: Vec<HeaderValue>) -> Flow {
        let target = ctx
            .original_uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_string();
        if flow::is_page_load(&ctx.head) {
            return match self.redirect_to_provider(ctx, target).await {
                Flow::Respond(resp) => with_cookies(resp, cookies),
                other => other,
            };
        }
        let login_url = sluicegate_oidc::provider::url_with_query(
            &format!("{}{}", self.public_url, self.login_path),
            &[("rd", &target)],
        );
        let err = ProxyError::new(Source::Plugin, Kind::LoginRequired, "log in first");
        let mut resp = error_response(&err, &ctx.request_id);
        if let Ok(serde_json::Value::Object(mut body)) = serde_json::from_slice(&resp.body) {
            body.insert("login_url".into(), login_url.into());
            resp.body = serde_json::Value::Object(body).to_string().into();
        }
        with_cookies(resp, cookies)
    }
}

/// Adds `Set-Cookie` values to a local response.
fn with_cookies(mut resp: LocalResponse, cookies: Vec<HeaderValue>) -> Flow {
    for c in cookies {
        resp.headers.append(http::header::SET_COOKIE, c);
    }
    Flow::Respond(resp)
}

impl Plugin for Oidc {
    fn name(&self) -> &'static str {
        "oidc"
    }

    fn phases(&self) -> PhaseSet {
        PhaseSet::of(&[Phase::Access, Phase::HeaderFilter])
    }

    fn access<'a>(&'a self, ctx: &'a mut RequestCtx) -> Step<'a> {
        self.headers.strip(&mut ctx.head.headers);
        let path = ctx.original_uri.path();
        let own_path =
            path == self.login_path || path == self.callback_path || path == self.logout_path;
        let opened = if own_path {
            Opened::Absent
        } else {
            self.open_session(&ctx.head.headers)
        };
        // The common case, a session that is not due for refresh, needs no provider and
        // no future.
        if let Opened::Fresh(known) = &opened {
            return Step::Ready(Ok(self.valid_known(ctx, known)));
        }
        Step::Wait(Box::pin(async move { Ok(self.check(ctx, opened).await) }))
    }

    fn header_filter(
        &self,
        ctx: &mut RequestCtx,
        resp: &mut ResponseHead,
    ) -> Result<(), PluginError> {
        if let Some(PendingCookies(cookies)) = ctx.vars.remove::<PendingCookies>() {
            for c in cookies {
                resp.headers.append(http::header::SET_COOKIE, c);
            }
        }
        Ok(())
    }

    fn filters_raw_headers(&self) -> bool {
        true
    }

    fn header_filter_raw(
        &self,
        ctx: &mut RequestCtx,
        resp: &mut ResponseHead,
        _raw: &mut RawHeaders,
    ) -> Result<(), PluginError> {
        self.header_filter(ctx, resp)
    }

    fn reads_request_late(&self) -> bool {
        false
    }
}
