//! Who a request is (from a session, an ID token, a bearer JWT or a userinfo answer), who
//! may pass ([`Rules`]), and how the identity reaches the upstream and Lua.
//!
//! Invariants: the identity headers are removed from every request before anything else
//! ([`Headers::strip`]), so a client can never supply them; they are set only from a
//! verified identity. Rules are checked on every request, sessions included, so a stricter
//! configuration applies to sessions already issued.

use std::collections::HashSet;
use std::sync::Arc;

use http::{HeaderName, HeaderValue};
use serde_json::{Map, Value};

use super::config::{AllowConfig, HeadersConfig};
use crate::json_path::{as_text, JsonPath, Step};
use sluicegate_core::context::Consumer;
use sluicegate_core::diag::{Diags, Path};
use sluicegate_jwt::Claims;

/// The user behind a request.
#[derive(Debug, Clone)]
pub(crate) struct Identity {
    pub sub: String,
    pub email: Option<String>,
    pub groups: Vec<String>,
    /// Every claim known (the session's kept ones, or all of a token's).
    pub claims: Map<String, Value>,
}

impl Identity {
    /// The identity a verified token or userinfo answer describes.
    pub fn from_claims(claims: &Map<String, Value>, groups_claim: &str) -> Option<Identity> {
        let sub = claims.get("sub")?.as_str()?.to_string();
        let email = claims
            .get("email")
            .and_then(Value::as_str)
            .map(str::to_string);
        let groups = match claims.get(groups_claim) {
            Some(Value::Array(a)) => a.iter().map(as_text).collect(),
            Some(Value::String(s)) => s
                .split(',')
                .map(str::trim)
                .filter(|g| !g.is_empty())
                .map(str::to_string)
                .collect(),
            _ => Vec::new(),
        };
        Some(Identity {
            sub,
            email,
            groups,
            claims: claims.clone(),
        })
    }

    /// Whether the provider said the email is not verified.
    fn email_unverified(&self) -> bool {
        match self.claims.get("email_verified") {
            Some(Value::Bool(b)) => !b,
            // Some providers send it as a string.
            Some(Value::String(s)) => s != "true",
            _ => false,
        }
    }

    /// What puts the identity where Lua and later plugins see it: the claims (`sub`,
    /// `email`, the groups and the kept claims) and the consumer (the email, else the
    /// subject).
    pub fn into_vars(self, groups_claim: &str) -> (Consumer, Claims) {
        let who: Arc<str> = Arc::from(self.email.as_deref().unwrap_or(&self.sub));
        let mut claims = self.claims;
        claims.insert("sub".into(), Value::String(self.sub));
        if let Some(e) = self.email {
            claims.insert("email".into(), Value::String(e));
        }
        claims.insert(
            groups_claim.into(),
            Value::Array(self.groups.into_iter().map(Value::String).collect()),
        );
        (Consumer(who), Claims(Arc::new(claims)))
    }
}

/// Who may pass.
pub(crate) struct Rules {
    emails: HashSet<String>,
    domains: HashSet<String>,
    groups: HashSet<String>,
    claims: Vec<(JsonPath, Vec<String>)>,
    verified_email: bool,
}

/// Splits list entries that are comma-separated strings (`${ALLOWED_DOMAINS}`).
fn entries(list: &[String]) -> impl Iterator<Item = String> + '_ {
    list.iter()
        .flat_map(|e| e.split(','))
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .map(str::to_string)
}

impl Rules {
    /// Builds the rules, recording problems at `path`.
    pub fn build(cfg: &AllowConfig, path: &Path, diags: &mut Diags) -> Rules {
        let emails: HashSet<String> = entries(&cfg.emails.0).map(|e| e.to_lowercase()).collect();
        for e in &emails {
            if e.split_once('@')
                .is_none_or(|(l, d)| l.is_empty() || d.is_empty())
            {
                diags.push(
                    &path.key("emails"),
                    format!("`{e}` is not an email address"),
                );
            }
        }
        let domains: HashSet<String> = entries(&cfg.domains.0)
            .map(|d| d.trim_start_matches('@').to_lowercase())
            .collect();
        for d in &domains {
            if d.contains(['@', '/', ' ']) || !d.contains('.') {
                diags.push(&path.key("domains"), format!("`{d}` is not a domain name"));
            }
        }
        let mut claims = Vec::new();
        for (name, values) in &cfg.claims {
            let p = path.key("claims").key(name);
            match JsonPath::parse(name) {
                Ok(jp) if jp.is_root() => diags.push(&p, "names no claim"),
                Ok(_) if values.0.is_empty() => diags.push(&p, "give at least one accepted value"),
                Ok(jp) => claims.push((jp, values.0.clone())),
                Err(e) => diags.push(&p, e),
            }
        }
        Rules {
            emails,
            domains,
            groups: entries(&cfg.groups.0).collect(),
            claims,
            verified_email: cfg.verified_email,
        }
    }

    /// The top-level claims the rules read, which sessions must keep.
    pub fn claims_read(&self) -> impl Iterator<Item = &str> {
        self.claims
            .iter()
            .filter_map(|(p, _)| match p.steps().first() {
                Some(Step::Key(k)) => Some(k.as_str()),
                _ => None,
            })
    }

    /// `Ok` when `id` may pass; otherwise why not (shown to the user).
    pub fn admit(&self, id: &Identity) -> Result<(), String> {
        let email = id.email.as_deref().map(str::to_lowercase);
        if self.verified_email && email.is_some() && id.email_unverified() {
            return Err("your email address is not verified by the identity provider".into());
        }
        let listed = !(self.emails.is_empty() && self.domains.is_empty() && self.groups.is_empty());
        if listed {
            let by_email = email.as_deref().is_some_and(|e| {
                self.emails.contains(e)
                    || e.rsplit_once('@')
                        .is_some_and(|(_, d)| self.domains.contains(d))
            });
            let by_group = id.groups.iter().any(|g| self.groups.contains(g));
            if !by_email && !by_group {
                return Err(format!(
                    "{} may not use this site",
                    id.email.as_deref().unwrap_or(&id.sub)
                ));
            }
        }
        for (path, accepted) in &self.claims {
            let ok = match path.get_in(&id.claims) {
                Some(Value::Array(items)) => items
                    .iter()
                    .any(|v| accepted.iter().any(|a| *a == as_text(v))),
                Some(v) if !v.is_null() => accepted.iter().any(|a| *a == as_text(v)),
                _ => false,
            };
            if !ok {
                return Err(format!("the claim `{path}` does not allow this site"));
            }
        }
        Ok(())
    }
}

/// The identity headers.
pub(crate) struct Headers {
    user: Option<HeaderName>,
    email: Option<HeaderName>,
    groups: Option<HeaderName>,
    /// Whether the ID token goes upstream as `Authorization: Bearer`.
    pub id_token: bool,
}

impl Headers {
    /// Parses the names, recording problems at `path`.
    pub fn build(cfg: &HeadersConfig, path: &Path, diags: &mut Diags) -> Headers {
        let mut name = |key: &str, v: &str| -> Option<HeaderName> {
            if v.is_empty() {
                return None;
            }
            let n = HeaderName::from_bytes(v.as_bytes())
                .map_err(|_| diags.push(&path.key(key), format!("invalid header name `{v}`")))
                .ok()?;
            if n == http::header::AUTHORIZATION
                || n == http::header::COOKIE
                || n == http::header::HOST
            {
                diags.push(&path.key(key), format!("`{v}` cannot carry the identity"));
                return None;
            }
            Some(n)
        };
        Headers {
            user: name("user", &cfg.user),
            email: name("email", &cfg.email),
            groups: name("groups", &cfg.groups),
            id_token: cfg.id_token,
        }
    }

    /// Removes client-sent copies of the identity headers.
    pub fn strip(&self, headers: &mut http::HeaderMap) {
        for n in [&self.user, &self.email, &self.groups]
            .into_iter()
            .flatten()
        {
            headers.remove(n);
        }
    }

    /// The headers a verified identity sets (values that are not valid header values are
    /// left out rather than mangled).
    pub fn values(&self, id: &Identity, id_token: Option<&str>) -> Vec<(HeaderName, HeaderValue)> {
        let groups = id.groups.join(",");
        let values = [
            (&self.user, Some(id.sub.as_str())),
            (&self.email, id.email.as_deref()),
            (
                &self.groups,
                Some(groups.as_str()).filter(|g| !g.is_empty()),
            ),
        ];
        let mut out = Vec::with_capacity(4);
        for (name, value) in values {
            if let (Some(n), Some(v)) = (name, value) {
                if let Ok(hv) = HeaderValue::from_str(v) {
                    out.push((n.clone(), hv));
                }
            }
        }
        if let (true, Some(t)) = (self.id_token, id_token) {
            if let Ok(hv) = HeaderValue::from_str(&format!("Bearer {t}")) {
                out.push((http::header::AUTHORIZATION, hv));
            }
        }
        out
    }
}
