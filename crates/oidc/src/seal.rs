//! Sealed values: what the plugin puts in its cookies, encrypted and authenticated with
//! AES-256-GCM so the browser can neither read nor change them.
//!
//! Format: base64url without padding of `version (1) || nonce (12 random bytes) ||
//! ciphertext || tag (16)`. The additional authenticated data is the purpose (`"login"`,
//! `"session"`), so a value sealed for one purpose never opens as another.
//!
//! Invariants: one key per configured secret, derived with HKDF-SHA256, so no raw secret is
//! ever an AES key; sealing always uses the current (first) key, opening tries the current
//! key and then the previous ones, so rotating a secret logs nobody out until the old one is
//! removed; input longer than [`MAX_SEALED_CHARS`] is refused before it is decoded.

use std::fmt;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, MAX_TAG_LEN, NONCE_LEN};
use ring::hkdf;

use crate::pkce::fill_random;

/// The shortest secret accepted: 256 bits, the strength of the AES-256 key made from it.
pub const MIN_SECRET_BYTES: usize = 32;

/// The longest sealed text [`Sealer::open`] decodes: 16 KiB, above the largest cookie value
/// the plugin sets (8 chunks of 3800 bytes are under 32 KiB, but a session never gets near
/// that) and small enough that a forged cookie costs nothing to refuse.
pub const MAX_SEALED_CHARS: usize = 16 * 1024;

/// The format version, the first byte of every sealed value.
const VERSION: u8 = 1;

/// The HKDF salt (RFC 5869 §3.1: a fixed, public, application-specific value is fine).
const SALT: &[u8] = b"sluicegate-oidc-v1";

/// The HKDF info: what the derived key is for, so other keys can be derived from the same
/// secret later without ever being equal to this one.
const INFO: &[u8] = b"cookie aes-256-gcm key";

const HEADER_LEN: usize = 1 + NONCE_LEN;

/// Why a sealed value did not open.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    /// Not base64url, too short or too long, or an unknown format version.
    #[error("the sealed value is malformed")]
    Malformed,
    /// No key opens it: tampered with, truncated, forged, or sealed with a retired key.
    #[error("the sealed value does not open with any current key")]
    Invalid,
}

/// A value that opened.
pub struct Opened {
    /// What was sealed.
    pub plaintext: Vec<u8>,
    /// Whether the current key opened it; when false, the caller should seal it again with
    /// the current key (a previous secret is about to be retired).
    pub with_current_key: bool,
}

impl fmt::Debug for Opened {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The plaintext is a session: tokens stay out of logs.
        f.debug_struct("Opened")
            .field(
                "plaintext",
                &format_args!("<{} bytes>", self.plaintext.len()),
            )
            .field("with_current_key", &self.with_current_key)
            .finish()
    }
}

/// Seals and opens values with the configured secrets. Cheap to share: the keys are
/// expanded once, in [`Sealer::new`].
pub struct Sealer {
    /// The current key first, then the previous ones, in the order configured.
    keys: Vec<LessSafeKey>,
}

impl fmt::Debug for Sealer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sealer")
            .field("keys", &self.keys.len())
            .finish()
    }
}

impl Sealer {
    /// A sealer for `secrets`: the first is the current secret, the others previous ones
    /// still accepted when opening. Each must be at least [`MIN_SECRET_BYTES`] long.
    pub fn new(secrets: &[&[u8]]) -> Result<Sealer, String> {
        if secrets.is_empty() {
            return Err("at least one secret is required".into());
        }
        let salt = hkdf::Salt::new(hkdf::HKDF_SHA256, SALT);
        let mut keys = Vec::with_capacity(secrets.len());
        for (i, secret) in secrets.iter().enumerate() {
            if secret.len() < MIN_SECRET_BYTES {
                return Err(format!(
                    "secret {} of {} is too short: each secret must be at least \
                     {MIN_SECRET_BYTES} bytes",
                    i + 1,
                    secrets.len()
                ));
            }
            let prk = salt.extract(secret);
            let okm = prk
                .expand(&[INFO], &AES_256_GCM)
                .map_err(|_| "cannot derive a key from the secret".to_string())?;
            keys.push(LessSafeKey::new(UnboundKey::from(okm)));
        }
        Ok(Sealer { keys })
    }

    /// Seals `plaintext` for `purpose` with the current key.
    ///
    /// # Panics
    ///
    /// If the operating system's random source fails (see [`crate::pkce::random_token`]).
    pub fn seal(&self, purpose: &str, plaintext: &[u8]) -> String {
        let mut nonce = [0u8; NONCE_LEN];
        fill_random(&mut nonce);
        let mut out = Vec::with_capacity(HEADER_LEN + plaintext.len() + MAX_TAG_LEN);
        out.push(VERSION);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(plaintext);
        let sealed = self.keys.first().and_then(|key| {
            key.seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(purpose.as_bytes()),
                &mut out[HEADER_LEN..],
            )
            .ok()
        });
        match sealed {
            Some(tag) => {
                out.extend_from_slice(tag.as_ref());
                URL_SAFE_NO_PAD.encode(out)
            }
            // `new` always makes a key, and sealing only fails for inputs of gigabytes: an
            // empty value never opens, so this fails closed.
            None => String::new(),
        }
    }

    /// Opens `sealed`, sealed for `purpose` with the current or a previous key.
    pub fn open(&self, purpose: &str, sealed: &str) -> Result<Opened, SealError> {
        if sealed.len() > MAX_SEALED_CHARS {
            return Err(SealError::Malformed);
        }
        let mut bytes = URL_SAFE_NO_PAD
            .decode(sealed)
            .map_err(|_| SealError::Malformed)?;
        if bytes.len() < HEADER_LEN + MAX_TAG_LEN || bytes[0] != VERSION {
            return Err(SealError::Malformed);
        }
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&bytes[1..HEADER_LEN]);
        let last = self.keys.len().saturating_sub(1);
        for (i, key) in self.keys.iter().enumerate() {
            let nonce = Nonce::assume_unique_for_key(nonce);
            let aad = Aad::from(purpose.as_bytes());
            if i == last {
                // The last try may spoil the buffer (ring zeroes it on failure).
                let Ok(plain) = key.open_in_place(nonce, aad, &mut bytes[HEADER_LEN..]) else {
                    break;
                };
                let len = plain.len();
                bytes.drain(..HEADER_LEN);
                bytes.truncate(len);
                return Ok(Opened {
                    plaintext: bytes,
                    with_current_key: i == 0,
                });
            }
            let mut copy = bytes[HEADER_LEN..].to_vec();
            if let Ok(plain) = key.open_in_place(nonce, aad, &mut copy) {
                let len = plain.len();
                copy.truncate(len);
                return Ok(Opened {
                    plaintext: copy,
                    with_current_key: i == 0,
                });
            }
        }
        Err(SealError::Invalid)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const CURRENT: &[u8] = b"the current secret, thirty-two bytes or more";
    const PREVIOUS: &[u8] = b"the previous secret, also long enough to use";
    const OTHER: &[u8] = b"someone else's secret, long enough all the same";

    fn b64(bytes: &[u8]) -> String {
        URL_SAFE_NO_PAD.encode(bytes)
    }

    #[test]
    fn opens_what_it_sealed_with_the_current_key() {
        let s = Sealer::new(&[CURRENT]).unwrap();
        let sealed = s.seal("session", b"hello");
        let opened = s.open("session", &sealed).unwrap();
        assert_eq!(opened.plaintext, b"hello");
        assert!(opened.with_current_key);
        let empty = s.seal("session", b"");
        assert_eq!(s.open("session", &empty).unwrap().plaintext, b"");
    }

    #[test]
    fn uses_a_fresh_nonce_for_every_seal() {
        let s = Sealer::new(&[CURRENT]).unwrap();
        assert_ne!(s.seal("session", b"same"), s.seal("session", b"same"));
    }

    #[test]
    fn output_is_base64url_of_version_nonce_ciphertext_and_tag() {
        let s = Sealer::new(&[CURRENT]).unwrap();
        let sealed = s.seal("login", b"0123456789");
        assert!(sealed
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
        let raw = URL_SAFE_NO_PAD.decode(&sealed).unwrap();
        assert_eq!(raw.len(), 1 + 12 + 10 + 16);
        assert_eq!(raw[0], 1);
    }

    #[test]
    fn rejects_secrets_shorter_than_32_bytes() {
        let err = Sealer::new(&[&[7u8; 31]]).unwrap_err();
        assert!(err.contains("at least 32 bytes"), "{err}");
        let err = Sealer::new(&[CURRENT, b"short"]).unwrap_err();
        assert!(err.contains("secret 2 of 2"), "{err}");
        assert!(Sealer::new(&[]).is_err());
        assert!(Sealer::new(&[&[7u8; 32]]).is_ok());
    }

    #[test]
    fn does_not_open_a_value_sealed_for_another_purpose() {
        let s = Sealer::new(&[CURRENT]).unwrap();
        let login = s.seal("login", b"{}");
        assert_eq!(s.open("session", &login).unwrap_err(), SealError::Invalid);
    }

    #[test]
    fn opens_with_a_previous_key_and_says_so() {
        let old = Sealer::new(&[PREVIOUS]).unwrap();
        let sealed = old.seal("session", b"kept across rotation");
        let rotated = Sealer::new(&[CURRENT, PREVIOUS]).unwrap();
        let opened = rotated.open("session", &sealed).unwrap();
        assert_eq!(opened.plaintext, b"kept across rotation");
        assert!(!opened.with_current_key);
        let resealed = rotated.seal("session", &opened.plaintext);
        assert!(rotated.open("session", &resealed).unwrap().with_current_key);
        assert!(old.open("session", &resealed).is_err());
    }

    #[test]
    fn does_not_open_a_value_sealed_with_a_retired_or_foreign_key() {
        let old = Sealer::new(&[PREVIOUS]).unwrap();
        let sealed = old.seal("session", b"x");
        let retired = Sealer::new(&[CURRENT]).unwrap();
        assert_eq!(
            retired.open("session", &sealed).unwrap_err(),
            SealError::Invalid
        );
        let foreign = Sealer::new(&[OTHER, CURRENT]).unwrap();
        assert_eq!(
            foreign.open("session", &sealed).unwrap_err(),
            SealError::Invalid
        );
    }

    #[test]
    fn detects_every_flipped_bit_and_any_truncation() {
        let s = Sealer::new(&[CURRENT, PREVIOUS]).unwrap();
        let raw = URL_SAFE_NO_PAD
            .decode(s.seal("session", b"attack at dawn"))
            .unwrap();
        for i in 1..raw.len() {
            for bit in 0..8 {
                let mut bad = raw.clone();
                bad[i] ^= 1 << bit;
                assert_eq!(
                    s.open("session", &b64(&bad)).unwrap_err(),
                    SealError::Invalid,
                    "byte {i} bit {bit}"
                );
            }
        }
        for len in 29..raw.len() {
            assert_eq!(
                s.open("session", &b64(&raw[..len])).unwrap_err(),
                SealError::Invalid
            );
        }
        let mut longer = raw.clone();
        longer.push(0);
        assert_eq!(
            s.open("session", &b64(&longer)).unwrap_err(),
            SealError::Invalid
        );
    }

    #[test]
    fn calls_malformed_what_is_not_a_sealed_value() {
        let s = Sealer::new(&[CURRENT]).unwrap();
        let good = URL_SAFE_NO_PAD.decode(s.seal("session", b"x")).unwrap();
        let mut version_2 = good.clone();
        version_2[0] = 2;
        for bad in [
            String::new(),
            "not base64!".into(),
            format!("{}=", b64(&good)),
            b64(&good).replace('-', "+").replace('_', "/") + "*",
            b64(&[1u8; 28]),
            b64(&version_2),
            "A".repeat(MAX_SEALED_CHARS + 1),
        ] {
            assert_eq!(
                s.open("session", &bad).unwrap_err(),
                SealError::Malformed,
                "{bad}"
            );
        }
    }

    #[test]
    fn debug_output_shows_no_plaintext_or_keys() {
        let s = Sealer::new(&[CURRENT]).unwrap();
        let opened = s.open("p", &s.seal("p", b"refresh-token")).unwrap();
        let shown = format!("{opened:?} {s:?}");
        assert!(!shown.contains("refresh"), "{shown}");
        assert!(shown.contains("<13 bytes>"), "{shown}");
    }
}
