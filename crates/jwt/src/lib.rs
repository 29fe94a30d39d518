//! JSON Web Tokens: parsing and size limits ([`token`]), keys and signature algorithms
//! (HMAC, RSA, ECDSA, Ed25519; [`keys`]), and claim rules, with no HTTP in sight. The
//! `jwt` plugin verifies requests with it; scripts call it through `sluicegate.jwt`.

pub mod keys;
pub mod token;

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value};

use self::keys::{Alg, Key};
use self::token::{ClaimRules, TokenError};

/// The claims of the token verified for this request, in `RequestCtx::vars`.
#[derive(Clone, Debug)]
pub struct Claims(pub Arc<Map<String, Value>>);

/// The current time in seconds since the epoch, as claims count it.
pub fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Verifies the signature of `parsed` with `keys`. `Err(None)` means no key was a candidate (the
/// caller may look elsewhere, or refetch the JWKS and try again).
pub fn verify_with(parsed: &token::Parsed<'_>, keys: &[Key]) -> Result<(), Option<TokenError>> {
    let kid = parsed.kid.as_deref();
    let mut tried = false;
    for key in keys.iter().filter(|k| k.accepts(parsed.alg, kid)) {
        tried = true;
        if key
            .material
            .verify(parsed.alg, parsed.signing_input, &parsed.signature)
        {
            return Ok(());
        }
    }
    if tried {
        Err(Some(TokenError::Signature))
    } else {
        Err(None)
    }
}

/// Verifies `token` with `keys` only (no JWKS): size, algorithm (one of `algorithms`),
/// signature, then `rules`. What `sluicegate.jwt.verify` uses.
pub fn verify_with_keys(
    token: &str,
    keys: &[Key],
    algorithms: &[Alg],
    rules: &ClaimRules,
    max_bytes: usize,
) -> Result<Map<String, Value>, TokenError> {
    let parsed = token::parse(token, max_bytes)?;
    if !algorithms.contains(&parsed.alg) {
        return Err(TokenError::Algorithm);
    }
    verify_with(&parsed, keys).map_err(|e| e.unwrap_or(TokenError::UnknownKey))?;
    rules.check(&parsed.claims, now())?;
    Ok(parsed.claims)
}
