//! Random tokens (`state`, `nonce`, session ids) and Proof Key for Code Exchange (RFC 7636)
//! with the `S256` method, the only one the plugin sends.
//!
//! Invariant: every token comes from the operating system's random source; there is no
//! weaker fallback.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use ring::digest::{digest, SHA256};
use ring::rand::{SecureRandom as _, SystemRandom};

/// Fills `buf` from the operating system's random source.
///
/// # Panics
///
/// If that source fails. ring reads it with `getrandom(2)`, which blocks until the kernel's
/// pool is ready and then does not fail; a host where it does cannot run a login safely, and
/// a guessable `state`, nonce or cookie nonce would be worse than failing the request.
pub(crate) fn fill_random(buf: &mut [u8]) {
    if SystemRandom::new().fill(buf).is_err() {
        panic!("the operating system's random source failed");
    }
}

/// `bytes` random bytes as base64url without padding (16 bytes make 22 characters, 32 make
/// 43).
///
/// # Panics
///
/// If the operating system's random source fails (see the crate documentation).
pub fn random_token(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    fill_random(&mut buf);
    URL_SAFE_NO_PAD.encode(buf)
}

/// A new code verifier: 32 random bytes, 43 characters, the shortest RFC 7636 §4.1 allows and
/// the length it recommends.
pub fn verifier() -> String {
    random_token(32)
}

/// The `S256` code challenge of `verifier`: `BASE64URL(SHA256(verifier))` (RFC 7636 §4.2).
pub fn challenge(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(digest(&SHA256, verifier.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn computes_the_verifier_and_challenge_of_rfc_7636_appendix_b() {
        let octets = [
            116, 24, 223, 180, 151, 153, 224, 37, 79, 250, 96, 125, 216, 173, 187, 186, 22, 212,
            37, 77, 105, 214, 191, 240, 91, 88, 5, 88, 83, 132, 141, 121,
        ];
        let verifier = URL_SAFE_NO_PAD.encode(octets);
        assert_eq!(verifier, "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk");
        assert_eq!(
            challenge(&verifier),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
    }

    #[test]
    fn verifiers_are_43_unreserved_characters_and_differ() {
        let v = verifier();
        assert_eq!(v.len(), 43);
        assert!(v
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
        assert_ne!(v, verifier());
    }

    #[test]
    fn random_tokens_have_the_length_of_their_bytes_in_base64url() {
        assert_eq!(random_token(16).len(), 22);
        assert_eq!(random_token(0), "");
        assert_ne!(random_token(16), random_token(16));
    }
}
