//! Verification keys of the `jwt` plugin: the JWS algorithms it accepts ([`Alg`]), key
//! material parsed from PEM (SPKI, PKCS#1, X.509 certificates), JWK and shared secrets
//! ([`Key`]), and signature verification with `ring`.
//!
//! Invariants: a key only ever verifies the algorithms of its own type (an RSA key never
//! checks an `HS256` MAC, so a public key cannot be abused as an HMAC secret); `none` is
//! not an algorithm here at all; HMAC secrets are at least as long as the hash output
//! (RFC 7518 §3.2) and RSA moduli at least 2048 bits.

use base64::Engine as _;
use ring::{hmac, signature};

/// A JWS algorithm the plugin verifies (RFC 7518 §3.1, RFC 8037 for `EdDSA`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Alg {
    /// HMAC with SHA-256.
    HS256,
    /// HMAC with SHA-384.
    HS384,
    /// HMAC with SHA-512.
    HS512,
    /// RSASSA-PKCS1-v1_5 with SHA-256.
    RS256,
    /// RSASSA-PKCS1-v1_5 with SHA-384.
    RS384,
    /// RSASSA-PKCS1-v1_5 with SHA-512.
    RS512,
    /// RSASSA-PSS with SHA-256.
    PS256,
    /// RSASSA-PSS with SHA-384.
    PS384,
    /// RSASSA-PSS with SHA-512.
    PS512,
    /// ECDSA on P-256 with SHA-256.
    ES256,
    /// ECDSA on P-384 with SHA-384.
    ES384,
    /// Ed25519.
    EdDSA,
}

impl Alg {
    /// Every algorithm, in documentation order.
    pub const ALL: [Alg; 12] = [
        Alg::HS256,
        Alg::HS384,
        Alg::HS512,
        Alg::RS256,
        Alg::RS384,
        Alg::RS512,
        Alg::PS256,
        Alg::PS384,
        Alg::PS512,
        Alg::ES256,
        Alg::ES384,
        Alg::EdDSA,
    ];

    /// The name in a JOSE header (case-sensitive, as RFC 7515 requires).
    pub fn as_str(self) -> &'static str {
        match self {
            Alg::HS256 => "HS256",
            Alg::HS384 => "HS384",
            Alg::HS512 => "HS512",
            Alg::RS256 => "RS256",
            Alg::RS384 => "RS384",
            Alg::RS512 => "RS512",
            Alg::PS256 => "PS256",
            Alg::PS384 => "PS384",
            Alg::PS512 => "PS512",
            Alg::ES256 => "ES256",
            Alg::ES384 => "ES384",
            Alg::EdDSA => "EdDSA",
        }
    }

    /// Parses a header or configuration name.
    pub fn parse(s: &str) -> Option<Alg> {
        Alg::ALL.into_iter().find(|a| a.as_str() == s)
    }

    /// The names, for error messages.
    pub fn names() -> String {
        Alg::ALL.map(Alg::as_str).join(", ")
    }

    /// Whether this is an HMAC algorithm.
    pub fn is_hmac(self) -> bool {
        matches!(self, Alg::HS256 | Alg::HS384 | Alg::HS512)
    }

    fn hmac(self) -> Option<(hmac::Algorithm, usize)> {
        match self {
            Alg::HS256 => Some((hmac::HMAC_SHA256, 32)),
            Alg::HS384 => Some((hmac::HMAC_SHA384, 48)),
            Alg::HS512 => Some((hmac::HMAC_SHA512, 64)),
            _ => None,
        }
    }
}

/// Key material, by type. The type decides which algorithms the key can verify.
pub enum Material {
    /// A shared secret, ready for each HMAC algorithm it is long enough for.
    Hmac(Vec<(Alg, hmac::Key)>),
    /// An RSA public key.
    Rsa {
        /// Modulus, big-endian, no leading zeros.
        n: Vec<u8>,
        /// Public exponent, big-endian, no leading zeros.
        e: Vec<u8>,
    },
    /// A P-256 public point, uncompressed (`04 || x || y`).
    P256(Vec<u8>),
    /// A P-384 public point, uncompressed.
    P384(Vec<u8>),
    /// An Ed25519 public key.
    Ed25519(Vec<u8>),
}

impl std::fmt::Debug for Material {
    /// The key type only: secrets never reach a log.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.kind())
    }
}

impl Material {
    /// Whether `alg` is an algorithm for this type of key.
    pub fn fits(&self, alg: Alg) -> bool {
        match self {
            Material::Hmac(keys) => keys.iter().any(|(a, _)| *a == alg),
            Material::Rsa { .. } => matches!(
                alg,
                Alg::RS256 | Alg::RS384 | Alg::RS512 | Alg::PS256 | Alg::PS384 | Alg::PS512
            ),
            Material::P256(_) => alg == Alg::ES256,
            Material::P384(_) => alg == Alg::ES384,
            Material::Ed25519(_) => alg == Alg::EdDSA,
        }
    }

    /// A short name of the key type, for messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Material::Hmac(_) => "shared secret",
            Material::Rsa { .. } => "RSA key",
            Material::P256(_) => "P-256 key",
            Material::P384(_) => "P-384 key",
            Material::Ed25519(_) => "Ed25519 key",
        }
    }

    /// An HMAC key for every HS algorithm `secret` is long enough for (RFC 7518 §3.2: at
    /// least the hash size); `None` when it is too short for all of them.
    pub fn hmac(secret: &[u8], only: Option<Alg>) -> Result<Material, String> {
        let algs: Vec<Alg> = match only {
            Some(a) => vec![a],
            None => vec![Alg::HS256, Alg::HS384, Alg::HS512],
        };
        let mut keys = Vec::new();
        for alg in algs {
            let Some((h, min)) = alg.hmac() else {
                return Err(format!(
                    "a shared secret only verifies HS256, HS384 or HS512, not {}",
                    alg.as_str()
                ));
            };
            if secret.len() >= min {
                keys.push((alg, hmac::Key::new(h, secret)));
            } else if only.is_some() {
                return Err(format!(
                    "the secret is {} bytes; {} needs at least {min} (RFC 7518 §3.2)",
                    secret.len(),
                    alg.as_str()
                ));
            }
        }
        if keys.is_empty() {
            return Err(format!(
                "the secret is {} bytes; HMAC keys need at least 32 (RFC 7518 §3.2)",
                secret.len()
            ));
        }
        Ok(Material::Hmac(keys))
    }

    /// An RSA key from its modulus and exponent (leading zeros removed, size checked).
    pub fn rsa(n: &[u8], e: &[u8]) -> Result<Material, String> {
        let n = strip_zeros(n);
        let e = strip_zeros(e);
        let bits = match n.first() {
            Some(b) => n.len() * 8 - b.leading_zeros() as usize,
            None => 0,
        };
        if !(2048..=8192).contains(&bits) {
            return Err(format!(
                "the RSA modulus is {bits} bits; 2048 to 8192 are accepted"
            ));
        }
        if e.is_empty() || e.len() > 4 {
            return Err("the RSA public exponent is invalid".into());
        }
        Ok(Material::Rsa {
            n: n.to_vec(),
            e: e.to_vec(),
        })
    }

    fn ec(point: &[u8], p384: bool) -> Result<Material, String> {
        let coord = if p384 { 48 } else { 32 };
        if point.len() != 1 + 2 * coord || point[0] != 4 {
            return Err(format!(
                "the {} public key must be an uncompressed point",
                if p384 { "P-384" } else { "P-256" }
            ));
        }
        Ok(if p384 {
            Material::P384(point.to_vec())
        } else {
            Material::P256(point.to_vec())
        })
    }

    fn ed25519(key: &[u8]) -> Result<Material, String> {
        if key.len() != 32 {
            return Err("an Ed25519 public key is 32 bytes".into());
        }
        Ok(Material::Ed25519(key.to_vec()))
    }

    /// Verifies `sig` over `msg` with `alg` (which must fit the key: see [`Self::fits`]).
    pub fn verify(&self, alg: Alg, msg: &[u8], sig: &[u8]) -> bool {
        match self {
            Material::Hmac(keys) => keys
                .iter()
                .find(|(a, _)| *a == alg)
                // Constant-time comparison inside ring.
                .is_some_and(|(_, k)| hmac::verify(k, msg, sig).is_ok()),
            Material::Rsa { n, e } => {
                let params: &signature::RsaParameters = match alg {
                    Alg::RS256 => &signature::RSA_PKCS1_2048_8192_SHA256,
                    Alg::RS384 => &signature::RSA_PKCS1_2048_8192_SHA384,
                    Alg::RS512 => &signature::RSA_PKCS1_2048_8192_SHA512,
                    Alg::PS256 => &signature::RSA_PSS_2048_8192_SHA256,
                    Alg::PS384 => &signature::RSA_PSS_2048_8192_SHA384,
                    Alg::PS512 => &signature::RSA_PSS_2048_8192_SHA512,
                    _ => return false,
                };
                signature::RsaPublicKeyComponents { n, e }
                    .verify(params, msg, sig)
                    .is_ok()
            }
            Material::P256(point) if alg == Alg::ES256 => {
                signature::UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, point)
                    .verify(msg, sig)
                    .is_ok()
            }
            Material::P384(point) if alg == Alg::ES384 => {
                signature::UnparsedPublicKey::new(&signature::ECDSA_P384_SHA384_FIXED, point)
                    .verify(msg, sig)
                    .is_ok()
            }
            Material::Ed25519(key) if alg == Alg::EdDSA => {
                signature::UnparsedPublicKey::new(&signature::ED25519, key)
                    .verify(msg, sig)
                    .is_ok()
            }
            _ => false,
        }
    }
}

/// One verification key.
pub struct Key {
    /// Key id matched against the token's `kid`; `None` matches any token.
    pub kid: Option<String>,
    /// The one algorithm the key is for, when the configuration or JWK says so.
    pub alg: Option<Alg>,
    /// The key itself.
    pub material: Material,
}

impl Key {
    /// Whether this key may verify a token with `alg` and `kid`.
    pub fn accepts(&self, alg: Alg, kid: Option<&str>) -> bool {
        self.alg.is_none_or(|a| a == alg)
            && self.material.fits(alg)
            && match (&self.kid, kid) {
                (Some(mine), Some(theirs)) => mine == theirs,
                _ => true,
            }
    }
}

fn strip_zeros(b: &[u8]) -> &[u8] {
    let start = b.iter().position(|x| *x != 0).unwrap_or(b.len());
    &b[start..]
}

/// Decodes base64url without padding (as JOSE uses), tolerating trailing `=`.
pub fn b64url(s: &str) -> Option<Vec<u8>> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s.trim_end_matches('='))
        .ok()
}

// --- PEM and DER ----------------------------------------------------------------------

/// Parses a PEM public key: `PUBLIC KEY` (SPKI), `RSA PUBLIC KEY` (PKCS#1) or
/// `CERTIFICATE` (the certificate's key; its validity is not checked).
pub fn from_pem(text: &str) -> Result<Material, String> {
    let begin = text
        .find("-----BEGIN ")
        .ok_or("not PEM: no `-----BEGIN` line")?;
    let rest = &text[begin + 11..];
    let label_end = rest.find("-----").ok_or("not PEM: bad BEGIN line")?;
    let label = &rest[..label_end];
    let body_start = label_end + 5;
    let end_marker = format!("-----END {label}-----");
    let body_len = rest[body_start..]
        .find(&end_marker)
        .ok_or("not PEM: no matching END line")?;
    let body: String = rest[body_start..body_start + body_len]
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    let der = base64::engine::general_purpose::STANDARD
        .decode(body)
        .map_err(|_| "the PEM body is not valid base64".to_string())?;
    match label {
        "PUBLIC KEY" => from_spki(&der),
        "RSA PUBLIC KEY" => from_pkcs1(&der),
        "CERTIFICATE" => from_certificate(&der),
        l if l.contains("PRIVATE KEY") => {
            Err("this is a private key; give the public key (`PUBLIC KEY`)".into())
        }
        l => Err(format!(
            "unsupported PEM block `{l}`; expected PUBLIC KEY, RSA PUBLIC KEY or CERTIFICATE"
        )),
    }
}

/// A DER reader over one level of TLVs.
struct Der<'a>(&'a [u8]);

impl<'a> Der<'a> {
    /// Reads the next element: (tag, contents).
    fn next(&mut self) -> Result<(u8, &'a [u8]), String> {
        let bad = || "malformed DER".to_string();
        let (&tag, rest) = self.0.split_first().ok_or_else(bad)?;
        let (&first, mut rest) = rest.split_first().ok_or_else(bad)?;
        let len = if first < 0x80 {
            first as usize
        } else {
            let n = (first & 0x7f) as usize;
            if n == 0 || n > 4 || rest.len() < n {
                return Err(bad());
            }
            let len = rest[..n]
                .iter()
                .fold(0usize, |acc, b| (acc << 8) | *b as usize);
            rest = &rest[n..];
            len
        };
        if rest.len() < len {
            return Err(bad());
        }
        let (content, after) = rest.split_at(len);
        self.0 = after;
        Ok((tag, content))
    }

    fn expect(&mut self, tag: u8) -> Result<&'a [u8], String> {
        match self.next()? {
            (t, c) if t == tag => Ok(c),
            _ => Err("unexpected DER structure".into()),
        }
    }
}

const SEQUENCE: u8 = 0x30;
const INTEGER: u8 = 0x02;
const BIT_STRING: u8 = 0x03;
const OID: u8 = 0x06;
/// 1.2.840.113549.1.1.1
const OID_RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];
/// 1.2.840.10045.2.1
const OID_EC: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
/// 1.2.840.10045.3.1.7
const OID_P256: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
/// 1.3.132.0.34
const OID_P384: &[u8] = &[0x2b, 0x81, 0x04, 0x00, 0x22];
/// 1.3.101.112
const OID_ED25519: &[u8] = &[0x2b, 0x65, 0x70];

/// SubjectPublicKeyInfo (RFC 5280 §4.1.2.7).
pub fn from_spki(der: &[u8]) -> Result<Material, String> {
    let mut outer = Der(Der(der).expect(SEQUENCE)?);
    let mut alg = Der(outer.expect(SEQUENCE)?);
    let oid = alg.expect(OID)?;
    let bits = outer.expect(BIT_STRING)?;
    let key = match bits.split_first() {
        Some((0, key)) => key,
        _ => return Err("malformed public key bit string".into()),
    };
    if oid == OID_RSA {
        from_pkcs1(key)
    } else if oid == OID_EC {
        match alg.expect(OID)? {
            c if c == OID_P256 => Material::ec(key, false),
            c if c == OID_P384 => Material::ec(key, true),
            _ => Err("unsupported elliptic curve; P-256 and P-384 are supported".into()),
        }
    } else if oid == OID_ED25519 {
        Material::ed25519(key)
    } else {
        Err("unsupported key type; RSA, EC (P-256, P-384) and Ed25519 are supported".into())
    }
}

/// RSAPublicKey (RFC 8017 A.1.1).
fn from_pkcs1(der: &[u8]) -> Result<Material, String> {
    let mut seq = Der(Der(der).expect(SEQUENCE)?);
    let n = seq.expect(INTEGER)?;
    let e = seq.expect(INTEGER)?;
    Material::rsa(n, e)
}

/// The SubjectPublicKeyInfo of an X.509 certificate (RFC 5280 §4.1).
fn from_certificate(der: &[u8]) -> Result<Material, String> {
    let mut cert = Der(Der(der).expect(SEQUENCE)?);
    let mut tbs = Der(cert.expect(SEQUENCE)?);
    let mut first = tbs.next()?;
    if first.0 == 0xa0 {
        // [0] version, then the serial number.
        first = tbs.next()?;
    }
    let _serial = first;
    for _ in 0..4 {
        // signature algorithm, issuer, validity, subject
        tbs.next()?;
    }
    let start = tbs.0;
    let (tag, _) = tbs.next()?;
    if tag != SEQUENCE {
        return Err("malformed certificate".into());
    }
    // The whole SPKI element, header included, as it sits in the certificate.
    from_spki(&start[..start.len() - tbs.0.len()])
}

// --- JWK ------------------------------------------------------------------------------

/// Why a JWK was not used.
#[derive(Debug, PartialEq, Eq)]
pub enum JwkSkip {
    /// The key is for encryption (`use: enc`), not signatures.
    NotForSignatures,
    /// The key is unusable (unknown type, bad fields); the message says why.
    Invalid(String),
}

/// Parses a public JWK (RFC 7517): `RSA`, `EC` (P-256, P-384) or `OKP` (Ed25519). Shared
/// secrets (`oct`) are refused: they are declared as secrets, never written in a
/// configuration or published in a JWKS document.
pub fn from_jwk(jwk: &serde_json::Value) -> Result<Key, JwkSkip> {
    let invalid = |m: &str| JwkSkip::Invalid(m.to_string());
    let obj = jwk
        .as_object()
        .ok_or_else(|| invalid("a JWK must be an object"))?;
    let field = |name: &str| -> Result<Vec<u8>, JwkSkip> {
        let v = obj
            .get(name)
            .and_then(|v| v.as_str())
            .ok_or_else(|| JwkSkip::Invalid(format!("`{name}` is missing")))?;
        b64url(v).ok_or_else(|| JwkSkip::Invalid(format!("`{name}` is not base64url")))
    };
    if let Some(u) = obj.get("use").and_then(|v| v.as_str()) {
        if u != "sig" {
            return Err(JwkSkip::NotForSignatures);
        }
    }
    let kid = match obj.get("kid") {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::String(s)) => Some(s.clone()),
        Some(_) => return Err(invalid("`kid` must be a string")),
    };
    let alg = match obj.get("alg").and_then(|v| v.as_str()) {
        None => None,
        Some(a) => Some(Alg::parse(a).ok_or_else(|| {
            JwkSkip::Invalid(format!(
                "unsupported `alg` `{a}`; supported: {}",
                Alg::names()
            ))
        })?),
    };
    let kty = obj.get("kty").and_then(|v| v.as_str()).unwrap_or("");
    let crv = obj.get("crv").and_then(|v| v.as_str()).unwrap_or("");
    let material = match kty {
        "RSA" => Material::rsa(&field("n")?, &field("e")?).map_err(JwkSkip::Invalid)?,
        "EC" => {
            let (x, y) = (field("x")?, field("y")?);
            let p384 = match crv {
                "P-256" => false,
                "P-384" => true,
                c => {
                    return Err(JwkSkip::Invalid(format!(
                        "unsupported curve `{c}`; P-256 and P-384 are supported"
                    )))
                }
            };
            let mut point = vec![4u8];
            point.extend_from_slice(&x);
            point.extend_from_slice(&y);
            Material::ec(&point, p384).map_err(JwkSkip::Invalid)?
        }
        "OKP" if crv == "Ed25519" => Material::ed25519(&field("x")?).map_err(JwkSkip::Invalid)?,
        "OKP" => {
            return Err(JwkSkip::Invalid(format!(
                "unsupported curve `{crv}`; Ed25519 is supported"
            )))
        }
        "oct" => {
            return Err(invalid(
                "shared secrets (`oct`) are not accepted as JWKs; declare the secret and use `secret: \"${secret:NAME}\"`",
            ))
        }
        other => {
            return Err(JwkSkip::Invalid(format!(
                "unsupported key type `{other}`; RSA, EC, OKP and oct are supported"
            )))
        }
    };
    if let Some(a) = alg {
        if !material.fits(a) {
            return Err(JwkSkip::Invalid(format!(
                "`alg` {} does not fit a {}",
                a.as_str(),
                material.kind()
            )));
        }
    }
    Ok(Key { kid, alg, material })
}

#[cfg(test)]
mod tests {
    use super::*;

    const RSA_PUB: &str = include_str!("../../../tests/keys/rsa-a.pub.pem");
    const RSA_PKCS1: &str = include_str!("../../../tests/keys/rsa-a.pkcs1.pub.pem");
    const P256: &str = include_str!("../../../tests/keys/ec-p256.pub.pem");
    const P384: &str = include_str!("../../../tests/keys/ec-p384.pub.pem");
    const ED: &str = include_str!("../../../tests/keys/ed25519.pub.pem");
    const RSA_PRIVATE: &str = include_str!("../../../tests/keys/rsa-a.pem");

    #[test]
    fn reads_every_supported_pem_public_key() {
        assert!(matches!(from_pem(RSA_PUB), Ok(Material::Rsa { .. })));
        assert!(matches!(from_pem(P256), Ok(Material::P256(_))));
        assert!(matches!(from_pem(P384), Ok(Material::P384(_))));
        assert!(matches!(from_pem(ED), Ok(Material::Ed25519(_))));
        let (Ok(Material::Rsa { n: n1, .. }), Ok(Material::Rsa { n: n2, .. })) =
            (from_pem(RSA_PUB), from_pem(RSA_PKCS1))
        else {
            panic!("both RSA forms parse");
        };
        assert_eq!(n1, n2);
    }

    #[test]
    fn refuses_private_keys_garbage_and_short_secrets() {
        assert!(from_pem(RSA_PRIVATE).unwrap_err().contains("private key"));
        assert!(from_pem("hello").is_err());
        assert!(from_pem("-----BEGIN X-----END X-----").is_err());
        assert!(from_pem("-----BEGIN PUBLIC KEY").is_err());
        assert!(Material::rsa(&[0, 0], &[1, 0, 1]).is_err());
        assert!(from_spki(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]).is_err());
        assert!(from_pem("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----").is_err());
        assert!(Material::hmac(b"short", None).unwrap_err().contains("32"));
        assert!(Material::hmac(&[7; 40], Some(Alg::HS384)).is_err());
        let m = Material::hmac(&[7; 40], None).unwrap();
        assert!(m.fits(Alg::HS256) && !m.fits(Alg::HS384));
    }

    #[test]
    fn keys_only_fit_their_own_algorithms() {
        let rsa = from_pem(RSA_PUB).unwrap();
        assert!(rsa.fits(Alg::RS256) && rsa.fits(Alg::PS512));
        assert!(!rsa.fits(Alg::HS256) && !rsa.fits(Alg::ES256));
        let ec = from_pem(P256).unwrap();
        assert!(ec.fits(Alg::ES256) && !ec.fits(Alg::ES384));
        assert!(!rsa.verify(Alg::HS256, b"x", b"y"));
    }

    #[test]
    fn parses_jwks_keys_and_skips_unusable_ones() {
        let ok = serde_json::json!({"kty": "OKP", "crv": "Ed25519", "kid": "e1",
            "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"});
        let key = from_jwk(&ok).unwrap();
        assert_eq!(key.kid.as_deref(), Some("e1"));
        let enc = serde_json::json!({"kty": "RSA", "use": "enc", "n": "AQAB", "e": "AQAB"});
        assert_eq!(from_jwk(&enc).err(), Some(JwkSkip::NotForSignatures));
        let oct = serde_json::json!({"kty": "oct", "k": "c2VjcmV0"});
        assert!(from_jwk(&oct).is_err());
        let mismatch = serde_json::json!({"kty": "OKP", "crv": "Ed25519", "alg": "RS256",
            "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"});
        assert!(matches!(from_jwk(&mismatch), Err(JwkSkip::Invalid(_))));
    }

    #[test]
    fn takes_the_public_key_of_a_certificate() {
        let certified = rcgen::generate_simple_self_signed(vec!["idp.example".into()]).unwrap();
        let Ok(Material::P256(point)) = from_pem(&certified.cert.pem()) else {
            panic!("rcgen's default key is P-256");
        };
        assert_eq!(point, certified.key_pair.public_key_raw());
        assert!(from_pem("-----BEGIN CERTIFICATE-----\nMAA=\n-----END CERTIFICATE-----").is_err());
    }

    #[test]
    fn survives_random_and_truncated_der() {
        // A small deterministic generator: the point is coverage of odd inputs, not secrecy.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let real = {
            let body: String = RSA_PUB
                .lines()
                .filter(|l| !l.starts_with("-----"))
                .collect();
            base64::engine::general_purpose::STANDARD
                .decode(body)
                .unwrap()
        };
        for cut in 0..real.len() {
            let _ = from_spki(&real[..cut]);
            let _ = from_certificate(&real[..cut]);
        }
        for _ in 0..2000 {
            let len = (next() % 64) as usize;
            let mut bytes: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            if let Some(first) = bytes.first_mut() {
                *first = 0x30;
            }
            let _ = from_spki(&bytes);
            let _ = from_certificate(&bytes);
            let _ = from_pkcs1(&bytes);
        }
    }

    /// RFC 8037 A.4: the Ed25519 signature of the example JWS.
    #[test]
    fn verifies_the_rfc_8037_ed25519_example() {
        let key =
            Material::ed25519(&b64url("11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo").unwrap())
                .unwrap();
        let msg = b"eyJhbGciOiJFZERTQSJ9.RXhhbXBsZSBvZiBFZDI1NTE5IHNpZ25pbmc";
        let sig = b64url("hgyY0il_MGCjP0JzlnLWG1PPOt7-09PGcvMg3AIbQR6dWbhijcNR4ki4iylGjg5BhVsPt9g7sVvpAr_MuM0KAg").unwrap();
        assert!(key.verify(Alg::EdDSA, msg, &sig));
        assert!(!key.verify(Alg::EdDSA, b"other", &sig));
    }
}
