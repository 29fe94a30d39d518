//! A signing scheme compiled from a preset or the `generic` options: which header carries
//! the signature and how it is written, what is signed (a template over the request), and
//! the hash function. Verification computes the HMAC under every accepted key and compares
//! it with every signature the header offers in constant time, without allocating.

use base64::Engine as _;
use hmac::{Hmac, Mac};
use http::{HeaderMap, HeaderName};
use subtle::ConstantTimeEq;

use super::config::{Algorithm, Encoding};
use sluicegate_secrets::SecretValue;

/// The longest digest (SHA-512).
const MAX_DIGEST: usize = 64;

/// One piece of the signed content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    /// Fixed bytes.
    Literal(Box<[u8]>),
    /// The raw request body.
    Body,
    /// The timestamp header's value, as sent.
    Timestamp,
    /// The request method.
    Method,
    /// The path and query as received.
    Path,
    /// A request header's value, as sent.
    Header(HeaderName),
}

/// Parses a signed-content template: `{body}`, `{timestamp}`, `{method}`, `{path}`,
/// `{header:NAME}`; `{{` and `}}` are literal braces.
pub fn parse_template(text: &str) -> Result<Vec<Segment>, String> {
    let mut out = Vec::new();
    let mut lit = String::new();
    let mut rest = text;
    while let Some(i) = rest.find(['{', '}']) {
        lit.push_str(&rest[..i]);
        let after = &rest[i..];
        if let Some(r) = after.strip_prefix("{{") {
            lit.push('{');
            rest = r;
            continue;
        }
        if let Some(r) = after.strip_prefix("}}") {
            lit.push('}');
            rest = r;
            continue;
        }
        if after.starts_with('}') {
            return Err("unmatched `}` (write `}}` for a literal brace)".to_string());
        }
        let end = after
            .find('}')
            .ok_or_else(|| "unterminated `{` (write `{{` for a literal brace)".to_string())?;
        let name = &after[1..end];
        let seg = match name {
            "body" => Segment::Body,
            "timestamp" => Segment::Timestamp,
            "method" => Segment::Method,
            "path" => Segment::Path,
            _ => match name.strip_prefix("header:") {
                Some(h) => Segment::Header(
                    HeaderName::from_bytes(h.trim().as_bytes())
                        .map_err(|_| format!("invalid header name `{h}`"))?,
                ),
                None => {
                    return Err(format!(
                        "unknown placeholder `{{{name}}}`; expected {{body}}, {{timestamp}}, \
                         {{method}}, {{path}} or {{header:NAME}}"
                    ))
                }
            },
        };
        if !lit.is_empty() {
            out.push(Segment::Literal(
                std::mem::take(&mut lit).into_bytes().into(),
            ));
        }
        out.push(seg);
        rest = &after[end + 1..];
    }
    lit.push_str(rest);
    if !lit.is_empty() {
        out.push(Segment::Literal(lit.into_bytes().into()));
    }
    Ok(out)
}

/// What a signature is computed over, borrowed from the request.
pub struct Signed<'a> {
    /// The raw body.
    pub body: &'a [u8],
    /// The timestamp header's value (empty when the scheme has none).
    pub timestamp: &'a [u8],
    /// The method.
    pub method: &'a str,
    /// Path and query as received.
    pub path: &'a str,
    /// The request headers.
    pub headers: &'a HeaderMap,
}

/// A compiled signing scheme.
#[derive(Debug, Clone)]
pub struct Scheme {
    /// The header carrying the signature(s).
    pub signature_header: HeaderName,
    /// Text each signature starts with (`v0=`, `sha256=`, `v1,`), removed before decoding.
    pub prefix: Box<[u8]>,
    /// Whether the header holds a space-separated list of signatures (Standard Webhooks).
    pub list: bool,
    /// How signatures are written.
    pub encoding: Encoding,
    /// The hash function.
    pub algorithm: Algorithm,
    /// What is signed.
    pub template: Vec<Segment>,
    /// The header carrying the Unix timestamp, when the scheme has one.
    pub timestamp_header: Option<HeaderName>,
}

impl Scheme {
    /// Slack: `X-Slack-Signature: v0=<hex HMAC-SHA256 of "v0:{timestamp}:{body}">`.
    pub fn slack() -> Scheme {
        Scheme {
            signature_header: HeaderName::from_static("x-slack-signature"),
            prefix: b"v0=".as_slice().into(),
            list: false,
            encoding: Encoding::Hex,
            algorithm: Algorithm::Sha256,
            template: vec![
                Segment::Literal(b"v0:".as_slice().into()),
                Segment::Timestamp,
                Segment::Literal(b":".as_slice().into()),
                Segment::Body,
            ],
            timestamp_header: Some(HeaderName::from_static("x-slack-request-timestamp")),
        }
    }

    /// GitHub: `X-Hub-Signature-256: sha256=<hex HMAC-SHA256 of the body>`.
    pub fn github() -> Scheme {
        Scheme {
            signature_header: HeaderName::from_static("x-hub-signature-256"),
            prefix: b"sha256=".as_slice().into(),
            list: false,
            encoding: Encoding::Hex,
            algorithm: Algorithm::Sha256,
            template: vec![Segment::Body],
            timestamp_header: None,
        }
    }

    /// Standard Webhooks: `webhook-signature: v1,<base64> [v1,<base64> ...]`, the HMAC-SHA256
    /// of `{webhook-id}.{webhook-timestamp}.{body}`.
    pub fn standard_webhooks() -> Scheme {
        Scheme {
            signature_header: HeaderName::from_static("webhook-signature"),
            prefix: b"v1,".as_slice().into(),
            list: true,
            encoding: Encoding::Base64,
            algorithm: Algorithm::Sha256,
            template: vec![
                Segment::Header(HeaderName::from_static("webhook-id")),
                Segment::Literal(b".".as_slice().into()),
                Segment::Timestamp,
                Segment::Literal(b".".as_slice().into()),
                Segment::Body,
            ],
            timestamp_header: Some(HeaderName::from_static("webhook-timestamp")),
        }
    }

    /// Headers that must be present before the body is worth reading.
    pub fn required_headers(&self) -> Vec<HeaderName> {
        let mut out = vec![self.signature_header.clone()];
        out.extend(self.timestamp_header.clone());
        for seg in &self.template {
            if let Segment::Header(h) = seg {
                if !out.contains(h) {
                    out.push(h.clone());
                }
            }
        }
        out
    }

    /// Whether `header` (the signature header's value) holds a valid signature of `signed`
    /// under one of `keys`. Every key and every offered signature is compared, so the time
    /// taken does not depend on which (if any) matched.
    pub fn verify(&self, keys: &[SecretValue], header: &[u8], signed: &Signed<'_>) -> bool {
        let mut found = false;
        for key in keys {
            let Some((expected, len)) = self.digest(key.expose(), signed) else {
                continue;
            };
            for candidate in self.candidates(header) {
                let mut buf = [0u8; MAX_DIGEST];
                if let Some(n) = decode(self.encoding, candidate, &mut buf) {
                    found |= n == len && bool::from(buf[..n].ct_eq(&expected[..len]));
                }
            }
        }
        found
    }

    /// The signatures offered in the header, without their prefix.
    fn candidates<'h>(&'h self, header: &'h [u8]) -> impl Iterator<Item = &'h [u8]> + 'h {
        let list = self.list;
        header
            .trim_ascii()
            .split(move |b| list && *b == b' ')
            .filter(|p| !p.is_empty())
            .filter_map(|p| p.strip_prefix(&*self.prefix))
    }

    /// The HMAC of `signed` under `key`.
    pub fn digest(&self, key: &[u8], signed: &Signed<'_>) -> Option<([u8; MAX_DIGEST], usize)> {
        match self.algorithm {
            Algorithm::Sha1 => self.mac::<Hmac<sha1::Sha1>>(key, signed),
            Algorithm::Sha256 => self.mac::<Hmac<sha2::Sha256>>(key, signed),
            Algorithm::Sha512 => self.mac::<Hmac<sha2::Sha512>>(key, signed),
        }
    }

    fn mac<M: Mac + hmac::digest::KeyInit>(
        &self,
        key: &[u8],
        signed: &Signed<'_>,
    ) -> Option<([u8; MAX_DIGEST], usize)> {
        let mut m = <M as Mac>::new_from_slice(key).ok()?;
        for seg in &self.template {
            match seg {
                Segment::Literal(b) => m.update(b),
                Segment::Body => m.update(signed.body),
                Segment::Timestamp => m.update(signed.timestamp),
                Segment::Method => m.update(signed.method.as_bytes()),
                Segment::Path => m.update(signed.path.as_bytes()),
                Segment::Header(h) => {
                    if let Some(v) = signed.headers.get(h) {
                        m.update(v.as_bytes());
                    }
                }
            }
        }
        let out = m.finalize().into_bytes();
        let mut buf = [0u8; MAX_DIGEST];
        let n = out.len().min(MAX_DIGEST);
        buf[..n].copy_from_slice(&out[..n]);
        Some((buf, n))
    }
}

/// Decodes a written signature into `out`; `None` when it is malformed or too long.
fn decode(encoding: Encoding, text: &[u8], out: &mut [u8; MAX_DIGEST]) -> Option<usize> {
    match encoding {
        Encoding::Hex => {
            if !text.len().is_multiple_of(2) || text.len() / 2 > out.len() {
                return None;
            }
            for (i, pair) in text.chunks_exact(2).enumerate() {
                out[i] = hex_digit(pair[0])? << 4 | hex_digit(pair[1])?;
            }
            Some(text.len() / 2)
        }
        Encoding::Base64 => {
            // Base64 of 64 bytes is 88 characters; anything longer is not a digest.
            if text.len() > 88 {
                return None;
            }
            base64::engine::general_purpose::STANDARD
                .decode_slice(text, out)
                .or_else(|_| {
                    base64::engine::general_purpose::STANDARD_NO_PAD.decode_slice(text, out)
                })
                .ok()
        }
    }
}

fn hex_digit(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Decodes a Standard Webhooks secret: `whsec_` followed by base64 (the prefix is optional).
pub fn standard_webhooks_key(secret: &[u8]) -> Option<Vec<u8>> {
    let b64 = secret.strip_prefix(b"whsec_").unwrap_or(secret);
    base64::engine::general_purpose::STANDARD
        .decode(b64)
        .ok()
        .filter(|k| !k.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(values: &[&[u8]]) -> Vec<SecretValue> {
        values
            .iter()
            .map(|v| SecretValue::new(v.to_vec()))
            .collect()
    }

    fn signed<'a>(body: &'a [u8], ts: &'a [u8], headers: &'a HeaderMap) -> Signed<'a> {
        Signed {
            body,
            timestamp: ts,
            method: "POST",
            path: "/hook",
            headers,
        }
    }

    // Source: Slack API documentation, "Verifying requests from Slack"
    // (api.slack.com/authentication/verifying-requests-from-slack), the worked example.
    const SLACK_SECRET: &[u8] = b"8f742231b10e8888abcd99yyyzzz85a5";
    const SLACK_TIMESTAMP: &[u8] = b"1531420618";
    const SLACK_BODY: &[u8] = b"token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow&channel_id=G8PSS9T3V&channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner&command=%2Fwebhook-collect&text=&response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2FT1DC2JH3J%2F397700885554%2F96rGlfmibIGlgcZRskXaIFfN&trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c";
    const SLACK_SIGNATURE: &[u8] =
        b"v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503";

    #[test]
    fn verifies_the_example_from_slacks_documentation() {
        let h = HeaderMap::new();
        let s = Scheme::slack();
        let msg = signed(SLACK_BODY, SLACK_TIMESTAMP, &h);
        assert!(s.verify(&keys(&[SLACK_SECRET]), SLACK_SIGNATURE, &msg));
        assert!(!s.verify(&keys(&[b"another secret"]), SLACK_SIGNATURE, &msg));
        let tampered = signed(b"token=xyzz0WbapA4vBCDEFasx0q6G", SLACK_TIMESTAMP, &h);
        assert!(!s.verify(&keys(&[SLACK_SECRET]), SLACK_SIGNATURE, &tampered));
        let other_time = signed(SLACK_BODY, b"1531420619", &h);
        assert!(!s.verify(&keys(&[SLACK_SECRET]), SLACK_SIGNATURE, &other_time));
    }

    // Source: GitHub Docs, "Validating webhook deliveries" — secret "It's a Secret to
    // Everybody", payload "Hello, World!".
    #[test]
    fn verifies_the_example_from_githubs_documentation() {
        let h = HeaderMap::new();
        let s = Scheme::github();
        let msg = signed(b"Hello, World!", b"", &h);
        let sig = b"sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
        let k = keys(&[b"It's a Secret to Everybody"]);
        assert!(s.verify(&k, sig, &msg));
        // Upper-case hex is the same signature; the prefix is required.
        let upper = [b"sha256=".as_slice(), &sig[7..].to_ascii_uppercase()].concat();
        assert!(s.verify(&k, &upper, &msg));
        assert!(!s.verify(&k, &sig[7..], &msg));
        assert!(!s.verify(&k, b"sha256=757107ea", &msg));
    }

    // Source: the Standard Webhooks specification's reference libraries' test vector
    // (github.com/standard-webhooks/standard-webhooks, libraries/*): secret
    // whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw, id msg_p5jXN8AQM9LWM0D4loKWxJek,
    // timestamp 1614265330, payload {"test": 2432232314}.
    #[test]
    fn verifies_the_standard_webhooks_test_vector() {
        let mut h = HeaderMap::new();
        h.insert(
            "webhook-id",
            "msg_p5jXN8AQM9LWM0D4loKWxJek".parse().unwrap(),
        );
        let s = Scheme::standard_webhooks();
        let msg = signed(br#"{"test": 2432232314}"#, b"1614265330", &h);
        let key = standard_webhooks_key(b"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let k = keys(&[&key]);
        let sig = b"v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";
        assert!(s.verify(&k, sig, &msg));
        // One valid signature among several (the sender rotating its keys) is enough.
        let several = b"v1,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc= v1a,abc v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";
        assert!(s.verify(&k, several, &msg));
        assert!(!s.verify(&k, b"v1,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc=", &msg));
        // A different id changes the signed content.
        let mut other = HeaderMap::new();
        other.insert("webhook-id", "msg_other".parse().unwrap());
        let msg = signed(br#"{"test": 2432232314}"#, b"1614265330", &other);
        assert!(!s.verify(&k, sig, &msg));
    }

    #[test]
    fn accepts_any_of_several_keys() {
        let h = HeaderMap::new();
        let s = Scheme::github();
        let msg = signed(b"Hello, World!", b"", &h);
        let sig = b"sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
        let k = keys(&[b"new secret", b"It's a Secret to Everybody"]);
        assert!(s.verify(&k, sig, &msg));
    }

    #[test]
    fn parses_templates() {
        use Segment::*;
        assert_eq!(
            parse_template("{timestamp}.{body}").unwrap(),
            [Timestamp, Literal(b".".as_slice().into()), Body]
        );
        assert_eq!(
            parse_template("{{x}}{method} {path}|{header:X-Id}").unwrap(),
            [
                Literal(b"{x}".as_slice().into()),
                Method,
                Literal(b" ".as_slice().into()),
                Path,
                Literal(b"|".as_slice().into()),
                Header(HeaderName::from_static("x-id")),
            ]
        );
        assert!(parse_template("{bogus}")
            .unwrap_err()
            .contains("unknown placeholder"));
        assert!(parse_template("{body").is_err());
        assert!(parse_template("body}").is_err());
        assert!(parse_template("{header:bad name}").is_err());
    }

    #[test]
    fn generic_sha512_base64_signatures() {
        let h = HeaderMap::new();
        let s = Scheme {
            signature_header: HeaderName::from_static("x-sig"),
            prefix: Box::new([]),
            list: false,
            encoding: Encoding::Base64,
            algorithm: Algorithm::Sha512,
            template: parse_template("{method} {path}\n{body}").unwrap(),
            timestamp_header: None,
        };
        let msg = signed(b"payload", b"", &h);
        let (d, n) = s.digest(b"k", &msg).unwrap();
        assert_eq!(n, 64);
        let sig = base64::engine::general_purpose::STANDARD.encode(&d[..n]);
        assert!(s.verify(&keys(&[b"k"]), sig.as_bytes(), &msg));
        let unpadded = sig.trim_end_matches('=');
        assert!(s.verify(&keys(&[b"k"]), unpadded.as_bytes(), &msg));
        assert!(!s.verify(&keys(&[b"j"]), sig.as_bytes(), &msg));
    }
}
