//! JSON Web Tokens (`crates/jwt`): splitting and decoding a token, the claim rules, and
//! the key formats a configuration or a JWKS document may hold (JWK, PEM).
//!
//! The first byte picks what the rest is: a token (checked against default claim rules
//! and an HMAC key), a JWK (JSON) or a PEM text. Invariants: no panic; a parsed token's
//! signing input is the token's first two parts and the signature is not empty; a token
//! signed with the key verifies, and the same token with another signature does not.
#![no_main]

use base64::Engine as _;
use libfuzzer_sys::fuzz_target;
use ring::hmac;
use sluicegate_jwt::keys::{self, Alg, Key, Material};
use sluicegate_jwt::token::{self, ClaimRules};

/// The largest token the jwt plugin accepts by default is far smaller; this only bounds
/// the work per input.
const MAX_TOKEN_BYTES: usize = 64 * 1024;

/// At least as long as SHA-512's output, so one secret serves every HMAC algorithm.
const SECRET: &[u8] = b"a fuzzing secret that is sixty-four bytes long, for HS512 too!!!";

fn hmac_key() -> Key {
    Key {
        kid: None,
        alg: None,
        material: Material::hmac(SECRET, None).expect("an hmac key"),
    }
}

/// The tag `alg` puts on `input` with [`SECRET`], for the HMAC algorithms.
fn tag(alg: Alg, input: &[u8]) -> Option<Vec<u8>> {
    let algorithm = match alg {
        Alg::HS256 => hmac::HMAC_SHA256,
        Alg::HS384 => hmac::HMAC_SHA384,
        Alg::HS512 => hmac::HMAC_SHA512,
        _ => return None,
    };
    Some(
        hmac::sign(&hmac::Key::new(algorithm, SECRET), input)
            .as_ref()
            .to_vec(),
    )
}

fuzz_target!(|data: &[u8]| {
    let Some((&what, rest)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    match what % 3 {
        0 => {
            let Ok(parsed) = token::parse(text, MAX_TOKEN_BYTES) else {
                return;
            };
            assert!(!parsed.signature.is_empty());
            let input = parsed.signing_input;
            assert!(text.as_bytes().starts_with(input));
            assert_eq!(input.iter().filter(|b| **b == b'.').count(), 1);
            let _ = ClaimRules::default().check(&parsed.claims, sluicegate_jwt::now());
            let key = hmac_key();
            let verdict = sluicegate_jwt::verify_with(&parsed, std::slice::from_ref(&key));
            let Some(good) = tag(parsed.alg, input) else {
                assert!(
                    verdict.is_err(),
                    "a non-HMAC token verified with an HMAC key"
                );
                return;
            };
            assert_eq!(verdict.is_ok(), parsed.signature == good);
            let signed = format!(
                "{}.{}",
                String::from_utf8_lossy(input),
                base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&good)
            );
            let resigned =
                token::parse(&signed, MAX_TOKEN_BYTES).expect("a re-signed token parses");
            assert!(sluicegate_jwt::verify_with(&resigned, std::slice::from_ref(&key)).is_ok());
        }
        1 => {
            if let Ok(jwk) = serde_json::from_str::<serde_json::Value>(text) {
                if let Ok(key) = keys::from_jwk(&jwk) {
                    let _ = key.material.kind();
                    for alg in [Alg::RS256, Alg::ES256, Alg::HS256, Alg::EdDSA] {
                        let _ = key.material.verify(alg, b"a.b", b"signature");
                    }
                }
            }
        }
        _ => {
            if let Ok(material) = keys::from_pem(text) {
                let _ = material.verify(Alg::RS256, b"a.b", b"signature");
            }
        }
    }
});
