//! `jwt`: verifies a JSON Web Token in the access phase and rejects the request with 401
//! and an RFC 6750 `WWW-Authenticate: Bearer` challenge unless it is valid. Keys come from
//! the configuration (shared secrets, PEM, JWK) or from a JWKS URL ([`jwks`]); claims are
//! checked ([`token::ClaimRules`]), chosen ones copied into upstream request headers, and
//! all of them left in the request context ([`Claims`]) for `claim_routing` and for Lua
//! (`sluicegate.jwt.claims()`).
//!
//! Invariants: a request only goes on with claims in its context if their token verified;
//! headers named in `claims_to_headers` never reach the upstream with client-sent values;
//! the request path never blocks on a JWKS fetch (it awaits one, with a time limit).

mod config;
pub mod jwks;
pub(crate) mod materials;

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use http::{HeaderName, HeaderValue};
use serde_json::{Map, Value};

pub use config::{JwtConfig, KeyConfig};

pub use sluicegate_jwt::{verify_with_keys, Claims};

use self::jwks::Jwks;
use super::json_path::{as_text, JsonPath};
use super::{parse_config, BuildCtx, Flow, Phase, PhaseSet, Plugin, Step};
use sluicegate_core::context::{Consumer, RequestCtx};
use sluicegate_core::diag::{Diags, Path};
use sluicegate_core::error::{bearer_challenge, error_response, Kind, ProxyError, Source};
use sluicegate_core::yaml::Node;
use sluicegate_jwt::keys::{self, Alg, Key, Material};
use sluicegate_jwt::now;
use sluicegate_jwt::token::{self, ClaimRules, TokenError};

/// Where the token was found, so `strip_token` can remove it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Found {
    Header,
    Cookie,
    Query,
}

/// Where tokens are looked for, in this order.
#[derive(Debug)]
struct Sources {
    header: Option<HeaderName>,
    cookie: Option<String>,
    query: Option<String>,
}

/// The `jwt` plugin.
pub struct Jwt {
    keys: Vec<Key>,
    jwks: Option<Arc<Jwks>>,
    /// With `consumers: true`, the consumers whose issuers' tokens are verified too.
    consumers: Option<Arc<crate::consumers::Consumers>>,
    algorithms: Vec<Alg>,
    rules: ClaimRules,
    sources: Sources,
    to_headers: Vec<(JsonPath, HeaderName)>,
    optional: bool,
    strip_token: bool,
    realm: String,
    max_token_bytes: usize,
}

/// Builds a `jwt` plugin from its config.
pub fn build(
    config: &Node,
    path: &Path,
    ctx: &BuildCtx<'_>,
    diags: &mut Diags,
) -> Option<Arc<dyn Plugin>> {
    let cfg: JwtConfig = parse_config(config, path, diags)?;
    let before = diags.0.len();
    let mut keys = Vec::new();
    for (i, k) in cfg.keys.iter().enumerate() {
        keys.extend(build_key(k, &path.key("keys").index(i), ctx, diags));
    }
    let jwks = cfg
        .jwks
        .as_ref()
        .and_then(|j| jwks_settings(j, &path.key("jwks"), ctx, diags));
    if cfg.keys.is_empty() && cfg.jwks.is_none() && !cfg.consumers {
        diags.push(path, "give `keys`, `jwks`, `consumers: true`, or several");
    }
    let algorithms = algorithms(&cfg, &keys, jwks.is_some(), cfg.consumers, path, diags);
    let sources = sources(&cfg.token, &path.key("token"), diags);
    let mut to_headers = Vec::new();
    for (claim, header) in &cfg.claims_to_headers {
        let p = path.key("claims_to_headers").key(claim);
        let claim_path = JsonPath::parse(claim).map_err(|e| diags.push(&p, e)).ok();
        let name = HeaderName::from_bytes(header.as_bytes())
            .map_err(|_| diags.push(&p, format!("invalid header name `{header}`")))
            .ok();
        if let Some(cp) = claim_path.as_ref().filter(|c| c.is_root()) {
            diags.push(&p, format!("`{cp}` names no claim"));
        }
        if let (Some(c), Some(n)) = (claim_path, name) {
            to_headers.push((c, n));
        }
    }
    if cfg.realm.is_empty()
        || !cfg
            .realm
            .chars()
            .all(|c| (' '..='~').contains(&c) && c != '"' && c != '\\')
    {
        diags.push(
            &path.key("realm"),
            "the realm must be printable ASCII without `\"` or `\\`",
        );
    }
    if !(16..=65536).contains(&cfg.max_token_bytes) {
        diags.push(&path.key("max_token_bytes"), "must be 16..=65536");
    }
    if cfg.leeway_secs > 86_400 {
        diags.push(&path.key("leeway_secs"), "must be at most 86400 (one day)");
    }
    let required = cfg
        .required_claims
        .clone()
        .unwrap_or_else(|| vec!["exp".into()]);
    if diags.0.len() != before {
        return None;
    }
    Some(Arc::new(Jwt {
        keys,
        jwks: jwks.map(Jwks::shared),
        consumers: cfg.consumers.then(|| ctx.consumers.clone()),
        algorithms,
        rules: ClaimRules {
            issuers: cfg.issuer.0.clone(),
            audiences: cfg.audience.0.clone(),
            required,
            leeway_secs: cfg.leeway_secs,
        },
        sources: sources?,
        to_headers,
        optional: cfg.optional,
        strip_token: cfg.strip_token,
        realm: cfg.realm.clone(),
        max_token_bytes: cfg.max_token_bytes,
    }))
}

/// Builds the key(s) of one `keys` entry (a secret with a previous value gives two).
fn build_key(k: &KeyConfig, path: &Path, ctx: &BuildCtx<'_>, diags: &mut Diags) -> Vec<Key> {
    let Ok(alg) = materials::algorithm(k.alg.as_deref(), path, diags) else {
        return Vec::new();
    };
    let given = [
        k.secret.is_some(),
        k.pem.is_some(),
        k.pem_file.is_some(),
        k.jwk.is_some(),
    ];
    if given.iter().filter(|g| **g).count() != 1 {
        diags.push(
            path,
            "give exactly one of `secret`, `pem`, `pem_file` and `jwk`",
        );
        return Vec::new();
    }
    if k.secret_base64 && k.secret.is_none() {
        diags.push(&path.key("secret_base64"), "only applies to `secret`");
    }
    let mut materials: Vec<(Path, Result<Material, String>)> = Vec::new();
    let mut kid = k.kid.clone();
    let mut alg = alg;
    if let Some(r) = &k.secret {
        let p = path.key("secret");
        let secret = ctx.secrets.resolve(r, &p, diags);
        // The current value, then the previous one while a rotation is under way.
        for value in secret.iter().flat_map(|s| s.values()) {
            let value = value.expose();
            let bytes = if k.secret_base64 {
                match decode_any_base64(value) {
                    Some(b) => b,
                    None => {
                        diags.push(&p, "the secret is not valid base64");
                        continue;
                    }
                }
            } else {
                value.to_vec()
            };
            materials.push((p.clone(), Material::hmac(&bytes, alg)));
        }
    } else if let Some(pem) = &k.pem {
        materials.push((path.key("pem"), keys::from_pem(pem)));
    } else if let Some(file) = &k.pem_file {
        let full = ctx.base_dir.join(file);
        let m = std::fs::read_to_string(&full)
            .map_err(|e| format!("cannot read `{}`: {e}", full.display()))
            .and_then(|t| keys::from_pem(&t));
        materials.push((path.key("pem_file"), m));
    } else if let Some(jwk) = &k.jwk {
        let p = path.key("jwk");
        match keys::from_jwk(jwk) {
            Ok(key) => {
                if kid.is_none() {
                    kid = key.kid.clone();
                }
                if alg.is_some() && key.alg.is_some() && alg != key.alg {
                    diags.push(&path.key("alg"), "differs from the JWK's `alg`");
                }
                alg = alg.or(key.alg);
                materials.push((p, Ok(key.material)));
            }
            Err(keys::JwkSkip::NotForSignatures) => {
                diags.push(&p, "the JWK is for encryption (`use: enc`), not signatures")
            }
            Err(keys::JwkSkip::Invalid(why)) => diags.push(&p, why),
        }
    }
    materials::keys_of(materials, kid, alg, path, diags)
}

fn decode_any_base64(text: &[u8]) -> Option<Vec<u8>> {
    use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
    let trimmed: Vec<u8> = text
        .iter()
        .copied()
        .filter(|b| !b.is_ascii_whitespace())
        .collect();
    STANDARD.decode(&trimmed).ok().or_else(|| {
        let unpadded: Vec<u8> = trimmed.into_iter().filter(|b| *b != b'=').collect();
        URL_SAFE_NO_PAD.decode(unpadded).ok()
    })
}

fn jwks_settings(
    j: &config::JwksConfig,
    path: &Path,
    ctx: &BuildCtx<'_>,
    diags: &mut Diags,
) -> Option<jwks::Settings> {
    let before = diags.0.len();
    let url: Option<http::Uri> = match j.url.parse::<http::Uri>() {
        Ok(u) if matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some() => Some(u),
        _ => {
            diags.push(
                &path.key("url"),
                format!("`{}` is not an http:// or https:// URL with a host", j.url),
            );
            None
        }
    };
    // Floors that keep a typo from turning the gateway into a load generator against the
    // identity provider.
    for (key, v, min) in [
        ("refresh_interval_ms", j.refresh_interval_ms, 1000),
        ("min_refetch_interval_ms", j.min_refetch_interval_ms, 100),
        ("timeout_ms", j.timeout_ms, 1),
    ] {
        if v < min {
            diags.push(&path.key(key), format!("must be at least {min}"));
        }
    }
    if j.min_refetch_interval_ms > j.refresh_interval_ms {
        diags.push(
            &path.key("min_refetch_interval_ms"),
            "must not be longer than `refresh_interval_ms`",
        );
    }
    if j.max_bytes == 0 {
        diags.push(&path.key("max_bytes"), "must be greater than 0");
    }
    // The JWKS client takes `verify`, `ca_file` and `sni`; the upstream-only keys are
    // refused rather than ignored.
    for (key, set) in [
        ("roots", j.tls.roots.is_some()),
        ("client_cert", j.tls.client_cert.is_some()),
        ("client_key", j.tls.client_key.is_some()),
    ] {
        if set {
            diags.push(
                &path.key("tls").key(key),
                "not supported for a JWKS URL (use `ca_file`, `sni` or `verify`)",
            );
        }
    }
    let https = url
        .as_ref()
        .is_some_and(|u| u.scheme_str() == Some("https"));
    let tls = if https {
        match sluicegate_upstream::tls::client_config(
            &j.tls,
            ctx.base_dir,
            sluicegate_upstream::Protocol::Http1,
        ) {
            Ok(c) => Some(c),
            Err(e) => {
                diags.push(&path.key("tls"), e);
                None
            }
        }
    } else {
        None
    };
    if diags.0.len() != before {
        return None;
    }
    Some(jwks::Settings {
        url: url?,
        refresh: Duration::from_millis(j.refresh_interval_ms),
        min_refetch: Duration::from_millis(j.min_refetch_interval_ms),
        timeout: Duration::from_millis(j.timeout_ms),
        max_bytes: j.max_bytes,
        tls,
        sni: j.tls.sni.clone(),
        tls_settings: format!("{:?}", j.tls),
    })
}

/// The accepted algorithms: the configured ones (each must have a key source), or every
/// algorithm the keys can verify.
fn algorithms(
    cfg: &JwtConfig,
    keys: &[Key],
    jwks: bool,
    consumers: bool,
    path: &Path,
    diags: &mut Diags,
) -> Vec<Alg> {
    // Consumers come and go with the configuration: any algorithm may meet one of their
    // keys (each key still accepts only the algorithms its material fits).
    let usable =
        |a: Alg| consumers || keys.iter().any(|k| k.accepts(a, None)) || (jwks && !a.is_hmac());
    if cfg.algorithms.0.is_empty() {
        return Alg::ALL.into_iter().filter(|a| usable(*a)).collect();
    }
    let mut out = Vec::new();
    for (i, name) in cfg.algorithms.0.iter().enumerate() {
        let p = path.key("algorithms").index(i);
        match Alg::parse(name) {
            None if name.eq_ignore_ascii_case("none") => {
                diags.push(&p, "unsigned tokens (`none`) cannot be accepted")
            }
            None => diags.push(
                &p,
                format!("unknown algorithm `{name}`; supported: {}", Alg::names()),
            ),
            Some(a) if !usable(a) => diags.push(
                &p,
                format!(
                    "no key can verify {}: add a key of its type{}",
                    a.as_str(),
                    if a.is_hmac() { "" } else { " or a `jwks` URL" }
                ),
            ),
            Some(a) => out.push(a),
        }
    }
    out
}

fn sources(cfg: &config::TokenConfig, path: &Path, diags: &mut Diags) -> Option<Sources> {
    let header = match &cfg.header {
        Some(h) => match HeaderName::from_bytes(h.as_bytes()) {
            Ok(n) => Some(n),
            Err(_) => {
                diags.push(&path.key("header"), format!("invalid header name `{h}`"));
                return None;
            }
        },
        None => None,
    };
    for (key, v) in [("cookie", &cfg.cookie), ("query", &cfg.query)] {
        if v.as_deref()
            .is_some_and(|n| n.is_empty() || n.contains([';', '=', '&', ' ']))
        {
            diags.push(&path.key(key), "not a valid name");
        }
    }
    if header.is_none() && cfg.cookie.is_none() && cfg.query.is_none() {
        diags.push(path, "give at least one of `header`, `cookie` and `query`");
        return None;
    }
    Some(Sources {
        header,
        cookie: cfg.cookie.clone(),
        query: cfg.query.clone(),
    })
}

impl Sources {
    /// The token and where it was found. An `Authorization` header with another scheme
    /// (`Basic ...`) counts as no token.
    fn find(&self, head: &http::request::Parts) -> Option<(String, Found)> {
        if let Some(name) = &self.header {
            if let Some(v) = head.headers.get(name).and_then(|v| v.to_str().ok()) {
                let v = v.trim();
                let bearer = v
                    .split_once(' ')
                    .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
                    .map(|(_, t)| t.trim());
                let token = if name == http::header::AUTHORIZATION {
                    bearer
                } else {
                    bearer.or(Some(v))
                };
                if let Some(t) = token.filter(|t| !t.is_empty()) {
                    return Some((t.to_string(), Found::Header));
                }
            }
        }
        if let Some(cookie) = &self.cookie {
            for v in head.headers.get_all(http::header::COOKIE) {
                let Ok(text) = v.to_str() else { continue };
                for pair in text.split(';') {
                    if let Some((n, val)) = pair.trim().split_once('=') {
                        if n == cookie && !val.is_empty() {
                            return Some((val.trim_matches('"').to_string(), Found::Cookie));
                        }
                    }
                }
            }
        }
        if let Some(param) = &self.query {
            for pair in head.uri.query().unwrap_or("").split('&') {
                if let Some((n, val)) = pair.split_once('=') {
                    if n == param && !val.is_empty() {
                        return Some((val.to_string(), Found::Query));
                    }
                }
            }
        }
        None
    }

    /// Removes the token from where it was found.
    fn strip(&self, head: &mut http::request::Parts, found: Found) {
        match found {
            Found::Header => {
                if let Some(n) = &self.header {
                    head.headers.remove(n);
                }
            }
            Found::Cookie => {
                let Some(name) = &self.cookie else { return };
                let kept: Vec<String> = head
                    .headers
                    .get_all(http::header::COOKIE)
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                    .flat_map(|t| t.split(';'))
                    .map(str::trim)
                    .filter(|p| !p.is_empty() && p.split_once('=').is_none_or(|(n, _)| n != name))
                    .map(str::to_string)
                    .collect();
                head.headers.remove(http::header::COOKIE);
                if let Ok(v) = HeaderValue::from_str(&kept.join("; ")) {
                    if !kept.is_empty() {
                        head.headers.insert(http::header::COOKIE, v);
                    }
                }
            }
            Found::Query => {
                let Some(param) = &self.query else { return };
                let query = head.uri.query().unwrap_or("");
                let kept: Vec<&str> = query
                    .split('&')
                    .filter(|p| !p.is_empty() && p.split_once('=').map_or(*p, |(n, _)| n) != param)
                    .collect();
                let pq = if kept.is_empty() {
                    head.uri.path().to_string()
                } else {
                    format!("{}?{}", head.uri.path(), kept.join("&"))
                };
                let mut parts = head.uri.clone().into_parts();
                if let Ok(p) = pq.parse() {
                    parts.path_and_query = Some(p);
                    if let Ok(u) = http::Uri::from_parts(parts) {
                        head.uri = u;
                    }
                }
            }
        }
    }
}

impl Jwt {
    /// Verifies the token's signature and claims; returns the claims and, when a
    /// consumer's credential verified it, that consumer.
    async fn verify(
        &self,
        token: &str,
    ) -> Result<(Map<String, Value>, Option<Arc<str>>), ProxyError> {
        let invalid = |e: TokenError| ProxyError::client(Kind::TokenInvalid, e.to_string());
        let parsed = token::parse(token, self.max_token_bytes).map_err(invalid)?;
        if !self.algorithms.contains(&parsed.alg) {
            return Err(invalid(TokenError::Algorithm));
        }
        // A consumer's issuer: its credential, and only it, decides.
        let consumer = self.consumers.as_ref().and_then(|c| {
            let iss = parsed.claims.get("iss")?.as_str()?;
            c.by_issuer(iss)
        });
        if let Some((name, keys)) = consumer {
            sluicegate_jwt::verify_with(&parsed, keys)
                .map_err(|e| invalid(e.unwrap_or(TokenError::UnknownKey)))?;
            self.rules.check(&parsed.claims, now()).map_err(invalid)?;
            return Ok((parsed.claims, Some(name.clone())));
        }
        let mut outcome = sluicegate_jwt::verify_with(&parsed, &self.keys);
        if let (Err(inline), Some(jwks)) = (&outcome, &self.jwks) {
            // Configured keys without a `kid` are candidates for every token; when they
            // do not verify it, the right key may still be a published one.
            outcome = match jwks.verify(&parsed).await {
                Ok(Err(None)) | Err(_) if inline.is_some() => Err(inline.clone()),
                Ok(r) => r,
                Err(jwks::KeysUnavailable) => {
                    return Err(ProxyError::new(
                        Source::Plugin,
                        Kind::Unavailable,
                        "the token signing keys are not available",
                    ))
                }
            };
        }
        match outcome {
            Ok(()) => {}
            Err(e) => return Err(invalid(e.unwrap_or(TokenError::UnknownKey))),
        }
        self.rules.check(&parsed.claims, now()).map_err(invalid)?;
        Ok((parsed.claims, None))
    }

    fn reject(&self, ctx: &RequestCtx, err: &ProxyError) -> Flow {
        tracing::debug!(request_id = ctx.request_id_str(), route = ctx.route_name(), error = %err.message, "JWT rejected.");
        if err.kind == Kind::Unavailable {
            tracing::warn!(request_id = ctx.request_id_str(), route = ctx.route_name(), url = %self.jwks.as_ref().map(|j| j.url().to_string()).unwrap_or_default(), "JWT not verified: no signing keys could be fetched.");
            return Flow::Respond(error_response(err, &ctx.request_id));
        }
        Flow::Respond(bearer_challenge(err, &self.realm, &ctx.request_id))
    }

    async fn check(&self, ctx: &mut RequestCtx) -> Flow {
        // Client-sent values of the claim headers never reach the upstream.
        for (_, name) in &self.to_headers {
            ctx.head.headers.remove(name);
        }
        let Some((token, found)) = self.sources.find(&ctx.head) else {
            if self.optional {
                return Flow::Continue;
            }
            let err = ProxyError::client(Kind::TokenMissing, "a bearer token is required");
            return self.reject(ctx, &err);
        };
        let (claims, consumer) = match self.verify(&token).await {
            Ok(c) => c,
            Err(e) => return self.reject(ctx, &e),
        };
        for (claim, name) in &self.to_headers {
            let Some(v) = claim.get_in(&claims).filter(|v| !v.is_null()) else {
                continue;
            };
            match HeaderValue::from_bytes(as_text(v).as_bytes()) {
                Ok(hv) => {
                    ctx.head.headers.insert(name.clone(), hv);
                }
                Err(_) => {
                    tracing::debug!(request_id = ctx.request_id_str(), claim = %claim, "Claim not copied to a header: not a valid header value.")
                }
            }
        }
        if self.strip_token {
            self.sources.strip(&mut ctx.head, found);
        }
        if let Some(name) = consumer {
            ctx.vars.insert(Consumer(name));
        } else if let Some(serde_json::Value::String(sub)) = claims.get("sub") {
            ctx.vars.insert(Consumer(Arc::from(sub.as_str())));
        }
        ctx.vars.insert(Claims(Arc::new(claims)));
        Flow::Continue
    }
}

impl Plugin for Jwt {
    fn name(&self) -> &'static str {
        "jwt"
    }

    fn phases(&self) -> PhaseSet {
        PhaseSet::of(&[Phase::Access])
    }

    fn access<'a>(&'a self, ctx: &'a mut RequestCtx) -> Step<'a> {
        Step::Wait(Box::pin(async move { Ok(self.check(ctx).await) }))
    }
}

#[cfg(test)]
pub(crate) mod tests;
