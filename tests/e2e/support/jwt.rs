//! Signing test tokens with the committed test keys (tests/keys/), and their public halves
//! as PEM text or JWKs for the gateway's configuration and for in-test JWKS servers.

use base64::Engine as _;
use ring::signature::{self as sig, KeyPair as _};
use serde_json::{json, Value};

/// RSA 2048 key "a" (PKCS#8 PEM).
pub const RSA_A: &str = include_str!("../../keys/rsa-a.pem");
/// Public half of [`RSA_A`] (SPKI PEM).
pub const RSA_A_PUB: &str = include_str!("../../keys/rsa-a.pub.pem");
/// RSA 2048 key "b".
pub const RSA_B: &str = include_str!("../../keys/rsa-b.pem");
/// ECDSA P-256 key.
pub const P256: &str = include_str!("../../keys/ec-p256.pem");
/// Ed25519 key.
pub const ED25519: &str = include_str!("../../keys/ed25519.pem");
/// A 64-byte HMAC secret.
pub const SECRET: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

fn der(pem: &str) -> Vec<u8> {
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    base64::engine::general_purpose::STANDARD
        .decode(body)
        .unwrap()
}

pub fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// Seconds since the epoch.
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A compact JWS of `claims` signed with `alg` by `key` (a private key PEM, or the HMAC
/// secret for HS*), with `kid` in the header when given.
pub fn sign(alg: &str, key: &str, kid: Option<&str>, claims: &Value) -> String {
    let mut header = json!({"alg": alg, "typ": "JWT"});
    if let Some(k) = kid {
        header["kid"] = json!(k);
    }
    let input = format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    );
    let rng = ring::rand::SystemRandom::new();
    let signature: Vec<u8> = match alg {
        "HS256" => {
            let k = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key.as_bytes());
            ring::hmac::sign(&k, input.as_bytes()).as_ref().to_vec()
        }
        "RS256" => {
            let kp = sig::RsaKeyPair::from_pkcs8(&der(key)).unwrap();
            let mut out = vec![0; kp.public().modulus_len()];
            kp.sign(&sig::RSA_PKCS1_SHA256, &rng, input.as_bytes(), &mut out)
                .unwrap();
            out
        }
        "ES256" => {
            let kp = sig::EcdsaKeyPair::from_pkcs8(
                &sig::ECDSA_P256_SHA256_FIXED_SIGNING,
                &der(key),
                &rng,
            )
            .unwrap();
            kp.sign(&rng, input.as_bytes()).unwrap().as_ref().to_vec()
        }
        "EdDSA" => {
            let kp = sig::Ed25519KeyPair::from_pkcs8_maybe_unchecked(&der(key)).unwrap();
            kp.sign(input.as_bytes()).as_ref().to_vec()
        }
        other => panic!("no signer for {other} in the end-to-end helpers"),
    };
    format!("{input}.{}", b64(&signature))
}

/// The public JWK of a private RSA, P-256 or Ed25519 key PEM.
pub fn jwk(key: &str, kid: &str) -> Value {
    let rng = ring::rand::SystemRandom::new();
    if let Ok(kp) = sig::RsaKeyPair::from_pkcs8(&der(key)) {
        let c = sig::RsaPublicKeyComponents::<Vec<u8>>::from(kp.public());
        return json!({"kty": "RSA", "kid": kid, "use": "sig", "alg": "RS256",
            "n": b64(&c.n), "e": b64(&c.e)});
    }
    if let Ok(kp) =
        sig::EcdsaKeyPair::from_pkcs8(&sig::ECDSA_P256_SHA256_FIXED_SIGNING, &der(key), &rng)
    {
        let p = kp.public_key().as_ref();
        return json!({"kty": "EC", "crv": "P-256", "kid": kid,
            "x": b64(&p[1..33]), "y": b64(&p[33..65])});
    }
    let kp = sig::Ed25519KeyPair::from_pkcs8_maybe_unchecked(&der(key)).unwrap();
    json!({"kty": "OKP", "crv": "Ed25519", "kid": kid, "x": b64(kp.public_key().as_ref())})
}

/// Claims valid for an hour, merged with `extra`.
pub fn claims(extra: Value) -> Value {
    let mut c = json!({"sub": "alice", "iat": now(), "exp": now() + 3600});
    if let (Some(m), Some(e)) = (c.as_object_mut(), extra.as_object()) {
        m.extend(e.clone());
    }
    c
}

/// A directory holding [`SECRET`] in the file `hs`, for a `secrets:` entry
/// `{file: "<dir>/hs"}` (the directory goes away when dropped).
pub fn secret_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("hs"), SECRET).unwrap();
    dir
}
