//! Configuration of the `oidc` plugin (docs/plugins.md, `oidc`).

use std::collections::BTreeMap;

use serde::Deserialize;

use sluicegate_config::file::{OneOrMany, UpstreamTlsConfig};
use sluicegate_secrets::SecretRef;

/// `config` of an `oidc` plugin entry.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OidcConfig {
    /// The provider's issuer URL; its discovery document is at
    /// `{issuer}/.well-known/openid-configuration`.
    pub issuer: String,
    /// This gateway's client id at the provider.
    pub client_id: String,
    /// The client secret: `${secret:NAME}`.
    pub client_secret: Option<SecretRef>,
    /// `client_secret_basic` (the default) or `client_secret_post`.
    #[serde(default = "default_client_auth")]
    pub client_auth: String,
    /// Where users reach the gateway (`https://app.example.com`); the redirect URI is this
    /// plus `paths.callback`, and `Secure` cookies follow its scheme.
    pub public_url: String,
    /// Scopes asked for; `openid` must be one.
    #[serde(default = "default_scopes")]
    pub scopes: OneOrMany,
    /// Extra parameters of the authorization request (`access_type: offline`, `hd`, `prompt`).
    #[serde(default)]
    pub auth_params: BTreeMap<String, String>,
    /// The session cookie.
    pub session: SessionConfig,
    /// Who may pass; everyone who logs in when empty.
    #[serde(default)]
    pub allow: AllowConfig,
    /// The identity headers sent upstream.
    #[serde(default)]
    pub headers: HeadersConfig,
    /// The claim that lists a user's groups.
    #[serde(default = "default_groups_claim")]
    pub groups_claim: String,
    /// Further ID token claims kept in the session (and seen by Lua and claim rules).
    #[serde(default)]
    pub claims: Vec<String>,
    /// The endpoints the plugin answers.
    #[serde(default)]
    pub paths: PathsConfig,
    /// Whether `/login?token=true` shows the ID token after login (for local development).
    #[serde(default)]
    pub token_page: bool,
    /// Where the browser goes after logout (a path on this site or an allowed origin).
    #[serde(default = "default_after_logout")]
    pub after_logout: String,
    /// Origins other than `public_url` that `rd=` may send the user to after login.
    #[serde(default)]
    pub redirect_origins: Vec<String>,
    /// API clients with bearer tokens.
    #[serde(default)]
    pub bearer: BearerConfig,
    /// Clock skew allowed on `exp`, `nbf` and `iat`.
    #[serde(default = "default_leeway")]
    pub leeway_secs: u64,
    /// Limit on each call to the provider.
    #[serde(default = "default_timeout")]
    pub timeout_ms: u64,
    /// TLS toward an `https` provider (`verify`, `ca_file`, `sni`).
    #[serde(default)]
    pub tls: UpstreamTlsConfig,
}

/// `session`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionConfig {
    /// The sealing secret: `${secret:NAME}` of at least 32 bytes; its previous value still
    /// opens sessions while it rotates.
    pub secret: SecretRef,
    /// The cookie's name (longer sessions use `NAME.0`, `NAME.1`...).
    #[serde(default = "default_cookie")]
    pub cookie: String,
    /// Longest a session lasts, refreshes included.
    #[serde(default = "default_max_lifetime")]
    pub max_lifetime_secs: u64,
    /// How long before the tokens expire they are refreshed.
    #[serde(default = "default_refresh_before")]
    pub refresh_before_secs: u64,
    /// `lax` (the default), `strict` or `none`.
    #[serde(default = "default_same_site")]
    pub same_site: String,
    /// The cookie's `Domain` (to share a session between subdomains).
    pub domain: Option<String>,
}

/// `allow`: emails, domains and groups admit a user when any of them matches; every claim
/// rule must hold besides.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AllowConfig {
    /// Email addresses (a list, or one comma-separated string).
    #[serde(default)]
    pub emails: OneOrMany,
    /// Email domains (a list, or one comma-separated string).
    #[serde(default)]
    pub domains: OneOrMany,
    /// Groups (a list, or one comma-separated string).
    #[serde(default)]
    pub groups: OneOrMany,
    /// Claim path → accepted values (the claim, or one element of it, must be one).
    #[serde(default)]
    pub claims: BTreeMap<String, OneOrMany>,
    /// Whether an email the provider did not verify (`email_verified: false`) is refused.
    #[serde(default = "yes")]
    pub verified_email: bool,
}

/// `headers`: names of the identity headers; an empty name sends none.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeadersConfig {
    /// The subject.
    #[serde(default = "default_user_header")]
    pub user: String,
    /// The email address.
    #[serde(default = "default_email_header")]
    pub email: String,
    /// The groups, comma-separated.
    #[serde(default = "default_groups_header")]
    pub groups: String,
    /// Whether the ID token is sent as `Authorization: Bearer` (it is then kept in the
    /// session, which grows by its size).
    #[serde(default)]
    pub id_token: bool,
}

impl Default for HeadersConfig {
    fn default() -> Self {
        HeadersConfig {
            user: default_user_header(),
            email: default_email_header(),
            groups: default_groups_header(),
            id_token: false,
        }
    }
}

/// `paths`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PathsConfig {
    /// Starts a login (`rd=` the target, `token=true` the token page).
    #[serde(default = "default_login")]
    pub login: String,
    /// The redirect URI's path.
    #[serde(default = "default_callback")]
    pub callback: String,
    /// Ends the session.
    #[serde(default = "default_logout")]
    pub logout: String,
}

impl Default for PathsConfig {
    fn default() -> Self {
        PathsConfig {
            login: default_login(),
            callback: default_callback(),
            logout: default_logout(),
        }
    }
}

/// `bearer`: requests with `Authorization: Bearer`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BearerConfig {
    /// Whether bearer tokens are accepted at all.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Accepted audiences of the issuer's JWTs; the client id by default.
    #[serde(default)]
    pub audiences: OneOrMany,
    /// Other issuers whose JWTs pass (Google ID tokens of Zapier or Pub/Sub pushes).
    #[serde(default)]
    pub issuers: Vec<IssuerConfig>,
    /// Whether an opaque access token is checked at the provider's userinfo endpoint.
    #[serde(default = "yes")]
    pub userinfo: bool,
    /// How long a userinfo answer is trusted (a shorter `Cache-Control: max-age` wins).
    #[serde(default = "default_userinfo_cache")]
    pub userinfo_cache_secs: u64,
}

impl Default for BearerConfig {
    fn default() -> Self {
        BearerConfig {
            enabled: true,
            audiences: OneOrMany::default(),
            issuers: Vec::new(),
            userinfo: true,
            userinfo_cache_secs: default_userinfo_cache(),
        }
    }
}

/// One extra issuer: `preset: google`, or `issuer` and `jwks_url`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssuerConfig {
    /// `google`: Google's ID tokens (both `iss` spellings, Google's key set).
    pub preset: Option<String>,
    /// Accepted `iss` values.
    #[serde(default)]
    pub issuer: OneOrMany,
    /// The issuer's key set.
    pub jwks_url: Option<String>,
    /// Accepted audiences (required: a token for someone else must not pass).
    pub audiences: OneOrMany,
    /// Accepted `email` values (e.g. the service account of a Pub/Sub push); any when empty.
    #[serde(default)]
    pub emails: OneOrMany,
}

fn yes() -> bool {
    true
}
fn default_client_auth() -> String {
    "client_secret_basic".into()
}
fn default_scopes() -> OneOrMany {
    OneOrMany(vec!["openid".into(), "email".into(), "profile".into()])
}
fn default_groups_claim() -> String {
    "groups".into()
}
fn default_after_logout() -> String {
    "/".into()
}
fn default_leeway() -> u64 {
    60
}
fn default_timeout() -> u64 {
    5000
}
fn default_cookie() -> String {
    "sluicegate_session".into()
}
fn default_max_lifetime() -> u64 {
    7 * 86_400
}
fn default_refresh_before() -> u64 {
    60
}
fn default_same_site() -> String {
    "lax".into()
}
fn default_user_header() -> String {
    "X-Forwarded-User".into()
}
fn default_email_header() -> String {
    "X-Forwarded-Email".into()
}
fn default_groups_header() -> String {
    "X-Forwarded-Groups".into()
}
fn default_login() -> String {
    "/login".into()
}
fn default_callback() -> String {
    "/login/callback".into()
}
fn default_logout() -> String {
    "/logout".into()
}
fn default_userinfo_cache() -> u64 {
    300
}
