//! The provider's documents, read and written without I/O: the discovery document (OpenID
//! Connect Discovery 1.0), the token endpoint's answer (RFC 6749 §5), and the encodings of
//! the requests sent to it.
//!
//! Invariants: a discovery document is only accepted for the issuer it was fetched for, and
//! with `http(s)` endpoints; a token error says whether the grant is dead (end the session),
//! refused for another reason, or the provider is unavailable (retry later, keep the
//! session); text taken from the provider's answers is cut short and stripped of control
//! characters before it reaches a message.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use serde::Deserialize;

/// The longest piece of the provider's text (`error_description`) kept in a message.
const MAX_DETAIL_CHARS: usize = 200;

/// The provider's metadata (OpenID Connect Discovery 1.0 §3), the fields the plugin uses.
#[derive(Deserialize, Clone, Debug)]
pub struct Discovery {
    /// `issuer`: must equal the configured issuer.
    pub issuer: String,
    /// Where the browser is sent to log in.
    pub authorization_endpoint: String,
    /// Where codes and refresh tokens are exchanged.
    pub token_endpoint: String,
    /// The signing keys of the ID tokens.
    pub jwks_uri: String,
    /// The UserInfo endpoint, if any.
    #[serde(default)]
    pub userinfo_endpoint: Option<String>,
    /// RP-initiated logout (OpenID Connect RP-Initiated Logout 1.0), if supported.
    #[serde(default)]
    pub end_session_endpoint: Option<String>,
    /// How clients may authenticate at the token endpoint; empty means
    /// `client_secret_basic` only (Discovery §3).
    #[serde(default)]
    pub token_endpoint_auth_methods_supported: Vec<String>,
    /// The PKCE methods supported; often absent even when PKCE works.
    #[serde(default)]
    pub code_challenge_methods_supported: Vec<String>,
}

impl Discovery {
    /// Parses the discovery document fetched for `expected_issuer`. The issuer must match
    /// exactly (Discovery §4.3), except that one side may end with a `/` and the other not,
    /// a common difference between configuration and providers.
    pub fn parse(body: &[u8], expected_issuer: &str) -> Result<Discovery, String> {
        let doc: Discovery = serde_json::from_slice(body)
            .map_err(|e| format!("the discovery document is not valid: {e}"))?;
        if !same_issuer(&doc.issuer, expected_issuer) {
            return Err(format!(
                "the discovery document is for issuer `{}`, not `{expected_issuer}`",
                clean(&doc.issuer)
            ));
        }
        let required = [
            ("authorization_endpoint", Some(&doc.authorization_endpoint)),
            ("token_endpoint", Some(&doc.token_endpoint)),
            ("jwks_uri", Some(&doc.jwks_uri)),
            ("userinfo_endpoint", doc.userinfo_endpoint.as_ref()),
            ("end_session_endpoint", doc.end_session_endpoint.as_ref()),
        ];
        for (field, url) in required {
            if let Some(url) = url {
                if !is_http_url(url) {
                    return Err(format!(
                        "the discovery document's {field} `{}` is not an http(s) URL",
                        clean(url)
                    ));
                }
            }
        }
        Ok(doc)
    }

    /// Whether the provider may be sent an `S256` code challenge: it lists it, or lists no
    /// methods at all (many providers support PKCE without saying so).
    pub fn supports_s256(&self) -> bool {
        self.code_challenge_methods_supported.is_empty()
            || self
                .code_challenge_methods_supported
                .iter()
                .any(|m| m == "S256")
    }
}

/// `a` and `b` are equal, or one is the other with a `/` appended.
fn same_issuer(a: &str, b: &str) -> bool {
    a == b || a.strip_suffix('/') == Some(b) || b.strip_suffix('/') == Some(a)
}

fn is_http_url(url: &str) -> bool {
    let rest = url
        .get(..8)
        .filter(|p| p.eq_ignore_ascii_case("https://"))
        .map(|_| &url[8..])
        .or_else(|| {
            url.get(..7)
                .filter(|p| p.eq_ignore_ascii_case("http://"))
                .map(|_| &url[7..])
        });
    rest.is_some_and(|rest| {
        !rest.is_empty()
            && !rest.starts_with(['/', '?', '#'])
            && rest.bytes().all(|b| b.is_ascii_graphic())
    })
}

/// The token endpoint's successful answer (RFC 6749 §5.1).
#[derive(Deserialize, Clone, Debug)]
pub struct TokenResponse {
    /// The access token.
    pub access_token: String,
    /// `Bearer`, in practice.
    pub token_type: String,
    /// The ID token: always there after a code exchange, sometimes after a refresh.
    #[serde(default)]
    pub id_token: Option<String>,
    /// A new refresh token, if the provider rotates them (keep the old one otherwise).
    #[serde(default)]
    pub refresh_token: Option<String>,
    /// Seconds until the access token expires.
    #[serde(default)]
    pub expires_in: Option<u64>,
}

/// Why the token endpoint gave no tokens.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// `400` with `invalid_grant`: the code or refresh token is dead; end the session.
    #[error("the grant is invalid: {0}")]
    InvalidGrant(String),
    /// Another OAuth error (a 4xx with an `error`): `error: error_description`.
    #[error("the token request was rejected: {0}")]
    Rejected(String),
    /// A 5xx, an answer that is not an OAuth one, or no answer: try again later.
    #[error("the token endpoint is unavailable: {0}")]
    Unavailable(String),
}

/// The error answer of RFC 6749 §5.2.
#[derive(Deserialize)]
struct ErrorResponse {
    error: String,
    #[serde(default)]
    error_description: Option<String>,
}

impl TokenResponse {
    /// Reads the token endpoint's answer with HTTP `status` and `body`.
    pub fn parse(status: u16, body: &[u8]) -> Result<TokenResponse, TokenError> {
        match status {
            200..=299 => serde_json::from_slice(body).map_err(|e| {
                TokenError::Unavailable(format!("the token response is not valid: {e}"))
            }),
            400..=499 => {
                let Ok(err) = serde_json::from_slice::<ErrorResponse>(body) else {
                    return Err(TokenError::Unavailable(format!(
                        "status {status} without an OAuth error"
                    )));
                };
                let detail = match &err.error_description {
                    Some(d) => format!("{}: {}", clean(&err.error), clean(d)),
                    None => clean(&err.error),
                };
                if status == 400 && err.error == "invalid_grant" {
                    Err(TokenError::InvalidGrant(detail))
                } else {
                    Err(TokenError::Rejected(detail))
                }
            }
            _ => Err(TokenError::Unavailable(format!("status {status}"))),
        }
    }
}

/// Provider text made fit for a log line: control characters dropped, cut at
/// [`MAX_DETAIL_CHARS`].
fn clean(text: &str) -> String {
    let mut out: String = text
        .chars()
        .filter(|c| !c.is_control())
        .take(MAX_DETAIL_CHARS)
        .collect();
    if text
        .chars()
        .filter(|c| !c.is_control())
        .nth(MAX_DETAIL_CHARS)
        .is_some()
    {
        out.push('…');
    }
    out
}

/// Percent-encodes `s` for a form or query: RFC 3986 unreserved characters stay, everything
/// else (space included, as `%20`) becomes `%XX`.
fn encode(s: &str, out: &mut String) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push('%');
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 15)]));
        }
    }
}

/// `pairs` as an `application/x-www-form-urlencoded` body (or query string).
pub fn form_encode(pairs: &[(&str, &str)]) -> String {
    let mut out = String::new();
    for (i, (name, value)) in pairs.iter().enumerate() {
        if i > 0 {
            out.push('&');
        }
        encode(name, &mut out);
        out.push('=');
        encode(value, &mut out);
    }
    out
}

/// `base` with `pairs` appended to its query (after `?`, or `&` when it has one already).
pub fn url_with_query(base: &str, pairs: &[(&str, &str)]) -> String {
    if pairs.is_empty() {
        return base.to_owned();
    }
    let sep = if !base.contains('?') {
        "?"
    } else if base.ends_with(['?', '&']) {
        ""
    } else {
        "&"
    };
    format!("{base}{sep}{}", form_encode(pairs))
}

/// The `Authorization` header value for `client_secret_basic` (RFC 6749 §2.3.1): both parts
/// form-encoded, then `id:secret` in base64.
pub fn basic_auth(client_id: &str, secret: &str) -> String {
    let mut pair = String::new();
    encode(client_id, &mut pair);
    pair.push(':');
    encode(secret, &mut pair);
    format!("Basic {}", STANDARD.encode(pair))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    fn discovery(issuer: &str) -> Vec<u8> {
        serde_json::to_vec(&json!({
            "issuer": issuer,
            "authorization_endpoint": "https://idp.example.com/authorize",
            "token_endpoint": "https://idp.example.com/token",
            "jwks_uri": "https://idp.example.com/jwks",
            "userinfo_endpoint": "https://idp.example.com/userinfo",
            "code_challenge_methods_supported": ["plain", "S256"],
            "response_types_supported": ["code"],
        }))
        .unwrap()
    }

    #[test]
    fn reads_a_discovery_document_for_its_issuer() {
        let doc = Discovery::parse(
            &discovery("https://idp.example.com"),
            "https://idp.example.com",
        )
        .unwrap();
        assert_eq!(doc.token_endpoint, "https://idp.example.com/token");
        assert_eq!(doc.end_session_endpoint, None);
        assert!(doc.token_endpoint_auth_methods_supported.is_empty());
        assert!(doc.supports_s256());
    }

    #[test]
    fn allows_only_a_trailing_slash_difference_in_the_issuer() {
        let body = discovery("https://idp.example.com/");
        assert!(Discovery::parse(&body, "https://idp.example.com").is_ok());
        assert!(Discovery::parse(&body, "https://idp.example.com/").is_ok());
        for other in [
            "https://idp.example.com///",
            "https://IDP.example.com",
            "https://idp.example.com/tenant",
            "http://idp.example.com",
            "https://evil.example.com",
        ] {
            let err = Discovery::parse(&body, other).unwrap_err();
            assert!(err.contains("issuer"), "{other}: {err}");
        }
        let doubled = discovery("https://idp.example.com//");
        assert!(Discovery::parse(&doubled, "https://idp.example.com").is_err());
    }

    #[test]
    fn rejects_endpoints_that_are_not_http_urls() {
        for bad in [
            "javascript:alert(1)",
            "/token",
            "https://",
            "https:///x",
            "ftp://idp/x",
            "https://idp/a b",
        ] {
            let mut doc: serde_json::Value =
                serde_json::from_slice(&discovery("https://idp")).unwrap();
            doc["token_endpoint"] = json!(bad);
            let err =
                Discovery::parse(&serde_json::to_vec(&doc).unwrap(), "https://idp").unwrap_err();
            assert!(err.contains("token_endpoint"), "{bad}: {err}");
        }
        let mut doc: serde_json::Value = serde_json::from_slice(&discovery("https://idp")).unwrap();
        doc["end_session_endpoint"] = json!("data:x");
        assert!(Discovery::parse(&serde_json::to_vec(&doc).unwrap(), "https://idp").is_err());
        doc["end_session_endpoint"] = json!("HTTP://idp:8080/logout");
        assert!(Discovery::parse(&serde_json::to_vec(&doc).unwrap(), "https://idp").is_ok());
    }

    #[test]
    fn rejects_a_discovery_document_that_is_not_one() {
        assert!(Discovery::parse(b"<html>", "https://idp").is_err());
        assert!(Discovery::parse(br#"{"issuer":"https://idp"}"#, "https://idp").is_err());
    }

    #[test]
    fn knows_when_s256_is_not_offered() {
        let mut doc = Discovery::parse(&discovery("https://idp"), "https://idp").unwrap();
        doc.code_challenge_methods_supported = vec!["plain".into()];
        assert!(!doc.supports_s256());
        doc.code_challenge_methods_supported.clear();
        assert!(doc.supports_s256());
    }

    #[test]
    fn reads_a_token_response() {
        let body = br#"{"access_token":"at","token_type":"Bearer","id_token":"a.b.c","expires_in":300,"scope":"openid"}"#;
        let tokens = TokenResponse::parse(200, body).unwrap();
        assert_eq!(tokens.access_token, "at");
        assert_eq!(tokens.id_token.as_deref(), Some("a.b.c"));
        assert_eq!(tokens.refresh_token, None);
        assert_eq!(tokens.expires_in, Some(300));
    }

    #[test]
    fn tells_a_dead_grant_from_other_errors() {
        let dead = br#"{"error":"invalid_grant","error_description":"Token is not active"}"#;
        assert_eq!(
            TokenResponse::parse(400, dead).unwrap_err(),
            TokenError::InvalidGrant("invalid_grant: Token is not active".into())
        );
        let client = br#"{"error":"invalid_client"}"#;
        assert_eq!(
            TokenResponse::parse(401, client).unwrap_err(),
            TokenError::Rejected("invalid_client".into())
        );
        assert!(matches!(
            TokenResponse::parse(403, dead).unwrap_err(),
            TokenError::Rejected(_)
        ));
    }

    #[test]
    fn calls_server_errors_and_non_oauth_answers_unavailable() {
        for (status, body) in [
            (500, &br#"{"error":"server_error"}"#[..]),
            (503, b"<html>down</html>"),
            (429, b"slow down"),
            (404, b"not found"),
            (302, b""),
            (200, b"not json"),
            (200, br#"{"token_type":"Bearer"}"#),
        ] {
            assert!(
                matches!(
                    TokenResponse::parse(status, body),
                    Err(TokenError::Unavailable(_))
                ),
                "{status}"
            );
        }
    }

    #[test]
    fn cleans_the_providers_text_before_it_reaches_a_message() {
        let body = serde_json::to_vec(&json!({
            "error": "invalid_request\r\nforged: line",
            "error_description": "x".repeat(500),
        }))
        .unwrap();
        let TokenError::Rejected(detail) = TokenResponse::parse(400, &body).unwrap_err() else {
            panic!("not rejected");
        };
        assert!(
            detail.starts_with("invalid_requestforged: line: xxx"),
            "{detail}"
        );
        assert!(!detail.contains('\n'));
        assert!(detail.chars().count() < 250, "{}", detail.len());
    }

    #[test]
    fn form_encodes_keeping_only_unreserved_characters() {
        assert_eq!(
            form_encode(&[
                ("grant_type", "authorization_code"),
                ("redirect_uri", "https://app.example.com/cb?x=1&y"),
                ("scope", "openid email"),
                ("k", "a+b~c.d_e-f/é"),
            ]),
            "grant_type=authorization_code\
             &redirect_uri=https%3A%2F%2Fapp.example.com%2Fcb%3Fx%3D1%26y\
             &scope=openid%20email&k=a%2Bb~c.d_e-f%2F%C3%A9"
        );
        assert_eq!(form_encode(&[]), "");
    }

    #[test]
    fn appends_a_query_to_a_url_with_or_without_one() {
        let q = [("a", "1"), ("b", "x y")];
        assert_eq!(
            url_with_query("https://idp/auth", &q),
            "https://idp/auth?a=1&b=x%20y"
        );
        assert_eq!(
            url_with_query("https://idp/auth?t=x", &q),
            "https://idp/auth?t=x&a=1&b=x%20y"
        );
        assert_eq!(
            url_with_query("https://idp/auth?", &q),
            "https://idp/auth?a=1&b=x%20y"
        );
        assert_eq!(url_with_query("https://idp/auth", &[]), "https://idp/auth");
    }

    #[test]
    fn encodes_client_credentials_for_basic_auth() {
        // RFC 6749 §2.3.1's example credentials.
        assert_eq!(
            basic_auth("s6BhdRkqt3", "gX1fBat3bV"),
            "Basic czZCaGRSa3F0MzpnWDFmQmF0M2JW"
        );
        // `:` in the id and non-ASCII in the secret are form-encoded first.
        assert_eq!(
            basic_auth("a:b", "é"),
            format!("Basic {}", STANDARD.encode("a%3Ab:%C3%A9"))
        );
    }
}
