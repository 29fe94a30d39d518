//! Parsing a compact JWS (RFC 7515 §7.1) and checking its registered claims (RFC 7519
//! §4.1). Everything here is pure: the plugin picks the keys and the clock.
//!
//! Invariants: a token is only accepted after its signature was verified with a key of
//! the algorithm's own type; `alg: none`, unknown algorithms and `crit` extensions are
//! rejected; every error message is safe to show to the client (no key material, no
//! token contents).

use serde_json::{Map, Value};

use super::keys::{b64url, Alg};

/// Why a token was rejected. The message is the `error_description` the client sees.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Not three base64url parts, bad JSON, and the like.
    #[error("the token is malformed: {0}")]
    Malformed(&'static str),
    /// Over `max_token_bytes`.
    #[error("the token is too large")]
    TooLarge,
    /// `alg: none`: an unsigned token.
    #[error("unsigned tokens (alg none) are not accepted")]
    Unsigned,
    /// An algorithm not supported, or not allowed by the configuration.
    #[error("the token's algorithm is not accepted")]
    Algorithm,
    /// The header lists extensions that must be understood (`crit`).
    #[error("the token uses critical header extensions that are not supported")]
    Critical,
    /// No configured or published key has the token's `kid` (or fits its algorithm).
    #[error("no key matches the token")]
    UnknownKey,
    /// The signature does not verify.
    #[error("the token's signature is invalid")]
    Signature,
    /// `exp` has passed.
    #[error("the token has expired")]
    Expired,
    /// `nbf` is in the future.
    #[error("the token is not valid yet")]
    NotYetValid,
    /// `iat` is later than now plus the leeway.
    #[error("the token was issued in the future (check the clocks)")]
    IssuedInFuture,
    /// `iss` is not an accepted issuer.
    #[error("the token's issuer is not accepted")]
    Issuer,
    /// `aud` does not name an accepted audience.
    #[error("the token's audience is not accepted")]
    Audience,
    /// A required claim is absent.
    #[error("the token lacks the required claim `{0}`")]
    MissingClaim(String),
    /// A registered claim has the wrong type.
    #[error("the token's `{0}` claim has the wrong type")]
    ClaimType(&'static str),
}

/// A token split and decoded, signature not yet checked.
pub struct Parsed<'a> {
    /// The `alg` header.
    pub alg: Alg,
    /// The `kid` header.
    pub kid: Option<String>,
    /// The claims.
    pub claims: Map<String, Value>,
    /// `header.payload` as sent: the bytes the signature covers.
    pub signing_input: &'a [u8],
    /// The decoded signature.
    pub signature: Vec<u8>,
}

/// Splits and decodes `token` (without checking the signature or claims).
pub fn parse(token: &str, max_bytes: usize) -> Result<Parsed<'_>, TokenError> {
    if token.len() > max_bytes {
        return Err(TokenError::TooLarge);
    }
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(TokenError::Malformed("expected three dot-separated parts"));
    };
    let header = b64url(h).ok_or(TokenError::Malformed("the header is not base64url"))?;
    let header: Map<String, Value> = serde_json::from_slice(&header)
        .map_err(|_| TokenError::Malformed("the header is not a JSON object"))?;
    let alg = match header.get("alg") {
        Some(Value::String(a)) if a.eq_ignore_ascii_case("none") => {
            return Err(TokenError::Unsigned)
        }
        Some(Value::String(a)) => Alg::parse(a).ok_or(TokenError::Algorithm)?,
        _ => return Err(TokenError::Malformed("the header has no `alg`")),
    };
    if header.contains_key("crit") {
        return Err(TokenError::Critical);
    }
    let kid = match header.get("kid") {
        None | Some(Value::Null) => None,
        Some(Value::String(k)) => Some(k.clone()),
        Some(_) => return Err(TokenError::Malformed("`kid` is not a string")),
    };
    let payload = b64url(p).ok_or(TokenError::Malformed("the payload is not base64url"))?;
    let claims: Map<String, Value> = serde_json::from_slice(&payload)
        .map_err(|_| TokenError::Malformed("the payload is not a JSON object"))?;
    let signature = b64url(s).ok_or(TokenError::Malformed("the signature is not base64url"))?;
    if signature.is_empty() {
        return Err(TokenError::Unsigned);
    }
    Ok(Parsed {
        alg,
        kid,
        claims,
        signing_input: &token.as_bytes()[..h.len() + 1 + p.len()],
        signature,
    })
}

/// The claim checks of a plugin instance.
#[derive(Debug, Default, Clone)]
pub struct ClaimRules {
    /// Accepted `iss` values; empty accepts any.
    pub issuers: Vec<String>,
    /// Accepted audiences: `aud` must name one; empty skips the check.
    pub audiences: Vec<String>,
    /// Claims that must be present (and not null).
    pub required: Vec<String>,
    /// Clock skew allowed on `exp`, `nbf` and `iat`, in seconds.
    pub leeway_secs: u64,
}

fn numeric(claims: &Map<String, Value>, name: &'static str) -> Result<Option<f64>, TokenError> {
    match claims.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n.as_f64().map(Some).ok_or(TokenError::ClaimType(name)),
        Some(_) => Err(TokenError::ClaimType(name)),
    }
}

impl ClaimRules {
    /// Checks `claims` at `now` (seconds since the epoch).
    pub fn check(&self, claims: &Map<String, Value>, now: f64) -> Result<(), TokenError> {
        let leeway = self.leeway_secs as f64;
        for name in &self.required {
            if claims.get(name).is_none_or(Value::is_null) {
                return Err(TokenError::MissingClaim(name.clone()));
            }
        }
        if let Some(exp) = numeric(claims, "exp")? {
            // RFC 7519 §4.1.4: the token must not be accepted on or after `exp`.
            if now >= exp + leeway {
                return Err(TokenError::Expired);
            }
        }
        if let Some(nbf) = numeric(claims, "nbf")? {
            if now + leeway < nbf {
                return Err(TokenError::NotYetValid);
            }
        }
        if let Some(iat) = numeric(claims, "iat")? {
            // A token "issued" beyond the leeway in the future comes from a clock that is
            // too far off to trust its `exp` either (OpenID Connect Core §3.1.3.7).
            if now + leeway < iat {
                return Err(TokenError::IssuedInFuture);
            }
        }
        if !self.issuers.is_empty() {
            match claims.get("iss") {
                Some(Value::String(iss)) if self.issuers.iter().any(|i| i == iss) => {}
                _ => return Err(TokenError::Issuer),
            }
        }
        if !self.audiences.is_empty() {
            let ok = match claims.get("aud") {
                Some(Value::String(a)) => self.audiences.contains(a),
                Some(Value::Array(list)) => list
                    .iter()
                    .filter_map(Value::as_str)
                    .any(|a| self.audiences.iter().any(|x| x == a)),
                _ => false,
            };
            if !ok {
                return Err(TokenError::Audience);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;
    use serde_json::json;

    fn b64(v: &Value) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    }

    fn token(header: Value, claims: Value) -> String {
        format!("{}.{}.c2ln", b64(&header), b64(&claims))
    }

    #[test]
    fn splits_a_token_and_keeps_the_signing_input() {
        let t = token(json!({"alg": "RS256", "kid": "k1"}), json!({"sub": "u"}));
        let p = parse(&t, 8192).unwrap();
        assert_eq!(p.alg, Alg::RS256);
        assert_eq!(p.kid.as_deref(), Some("k1"));
        assert_eq!(p.claims["sub"], "u");
        assert_eq!(p.signature, b"sig");
        assert_eq!(p.signing_input, t.rsplit_once('.').unwrap().0.as_bytes());
    }

    #[test]
    fn rejects_unsigned_unknown_critical_and_malformed_tokens() {
        let none = token(json!({"alg": "none"}), json!({}));
        assert_eq!(parse(&none, 8192).err(), Some(TokenError::Unsigned));
        let none_upper = token(json!({"alg": "NONE"}), json!({}));
        assert_eq!(parse(&none_upper, 8192).err(), Some(TokenError::Unsigned));
        let empty_sig = format!(
            "{}.",
            none.rsplit_once('.').unwrap().0.replace(
                &b64(&json!({"alg": "none"})),
                &b64(&json!({"alg": "HS256"})),
            )
        );
        assert_eq!(parse(&empty_sig, 8192).err(), Some(TokenError::Unsigned));
        let odd = token(json!({"alg": "HS999"}), json!({}));
        assert_eq!(parse(&odd, 8192).err(), Some(TokenError::Algorithm));
        let crit = token(json!({"alg": "HS256", "crit": ["exp"]}), json!({}));
        assert_eq!(parse(&crit, 8192).err(), Some(TokenError::Critical));
        for bad in [
            "",
            "a.b",
            "a.b.c.d",
            "!!.e30.c2ln",
            "e30.e30.c2ln",
            "W10.e30.c2ln",
        ] {
            assert!(
                matches!(parse(bad, 8192), Err(TokenError::Malformed(_))),
                "{bad}"
            );
        }
        let array_payload = format!("{}.W10.c2ln", b64(&json!({"alg": "HS256"})));
        assert!(matches!(
            parse(&array_payload, 8192),
            Err(TokenError::Malformed(_))
        ));
        assert_eq!(
            parse(&"a".repeat(100), 50).err(),
            Some(TokenError::TooLarge)
        );
    }

    #[test]
    fn survives_arbitrary_text() {
        let samples = [
            "...",
            "..",
            ".",
            "a..",
            "..a",
            "\u{1F600}.\u{1F600}.\u{1F600}",
            "eyJhbGciOiJIUzI1NiJ9..",
            "eyJhbGciOiJIUzI1NiJ9.e30.",
            "eyJ9.eyJ9.eyJ9",
            "bnVsbA.bnVsbA.bnVsbA",
            "eyJhbGciOjF9.e30.c2ln",
        ];
        for s in samples {
            assert!(parse(s, 8192).is_err(), "{s}");
        }
    }

    #[test]
    fn checks_time_claims_with_leeway() {
        let rules = ClaimRules {
            leeway_secs: 30,
            ..Default::default()
        };
        let c = |v: Value| v.as_object().unwrap().clone();
        assert!(rules.check(&c(json!({"exp": 1000})), 1020.0).is_ok());
        assert_eq!(
            rules.check(&c(json!({"exp": 1000})), 1030.0).err(),
            Some(TokenError::Expired)
        );
        assert!(rules.check(&c(json!({"nbf": 1000})), 975.0).is_ok());
        assert_eq!(
            rules.check(&c(json!({"nbf": 1000})), 960.0).err(),
            Some(TokenError::NotYetValid)
        );
        assert!(rules.check(&c(json!({"iat": 1000})), 975.0).is_ok());
        assert_eq!(
            rules.check(&c(json!({"iat": 1000})), 960.0).err(),
            Some(TokenError::IssuedInFuture)
        );
        assert_eq!(
            rules.check(&c(json!({"exp": "soon"})), 0.0).err(),
            Some(TokenError::ClaimType("exp"))
        );
    }

    #[test]
    fn checks_issuer_audience_and_required_claims() {
        let rules = ClaimRules {
            issuers: vec!["https://idp".into()],
            audiences: vec!["api".into(), "admin".into()],
            required: vec!["sub".into()],
            leeway_secs: 0,
        };
        let c = |v: Value| v.as_object().unwrap().clone();
        let good = json!({"iss": "https://idp", "aud": ["web", "api"], "sub": "u"});
        assert!(rules.check(&c(good), 0.0).is_ok());
        let single_aud = json!({"iss": "https://idp", "aud": "admin", "sub": "u"});
        assert!(rules.check(&c(single_aud), 0.0).is_ok());
        let bad_iss = json!({"iss": "https://evil", "aud": "api", "sub": "u"});
        assert_eq!(
            rules.check(&c(bad_iss), 0.0).err(),
            Some(TokenError::Issuer)
        );
        let bad_aud = json!({"iss": "https://idp", "aud": ["web"], "sub": "u"});
        assert_eq!(
            rules.check(&c(bad_aud), 0.0).err(),
            Some(TokenError::Audience)
        );
        let no_aud = json!({"iss": "https://idp", "sub": "u"});
        assert_eq!(
            rules.check(&c(no_aud), 0.0).err(),
            Some(TokenError::Audience)
        );
        let no_sub = json!({"iss": "https://idp", "aud": "api", "sub": null});
        assert_eq!(
            rules.check(&c(no_sub), 0.0).err(),
            Some(TokenError::MissingClaim("sub".into()))
        );
    }
}
