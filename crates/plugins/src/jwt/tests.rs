//! Unit tests of the `jwt` plugin: configuration validation, and verification of tokens
//! signed here with the committed test keys (tests/keys/) for every algorithm.

use std::collections::HashMap;

use base64::Engine as _;
use http::HeaderValue;
use ring::signature as sig;
use serde_json::{json, Value};

use super::*;
use sluicegate_core::yaml::parse;
use sluicegate_lua::harness::{FakeRequest, Harness};

const RSA_A: &str = include_str!("../../../../tests/keys/rsa-a.pem");
const RSA_A_PUB: &str = include_str!("../../../../tests/keys/rsa-a.pub.pem");
const RSA_B: &str = include_str!("../../../../tests/keys/rsa-b.pem");
const P256: &str = include_str!("../../../../tests/keys/ec-p256.pem");
const P256_PUB: &str = include_str!("../../../../tests/keys/ec-p256.pub.pem");
const P384: &str = include_str!("../../../../tests/keys/ec-p384.pem");
const P384_PUB: &str = include_str!("../../../../tests/keys/ec-p384.pub.pem");
const ED: &str = include_str!("../../../../tests/keys/ed25519.pem");
const ED_PUB: &str = include_str!("../../../../tests/keys/ed25519.pub.pem");
const SECRET: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

fn der(pem: &str) -> Vec<u8> {
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    base64::engine::general_purpose::STANDARD
        .decode(body)
        .unwrap()
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// Signs `claims` with `alg` and the private key `pem` (or the secret for HS*).
pub fn sign(alg: &str, pem: &str, header_extra: Value, claims: &Value) -> String {
    let mut header = json!({"alg": alg, "typ": "JWT"});
    if let (Some(h), Some(extra)) = (header.as_object_mut(), header_extra.as_object()) {
        h.extend(extra.clone());
    }
    let input = format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    );
    let rng = ring::rand::SystemRandom::new();
    let signature: Vec<u8> = match alg {
        "HS256" | "HS384" | "HS512" => {
            let a = match alg {
                "HS256" => ring::hmac::HMAC_SHA256,
                "HS384" => ring::hmac::HMAC_SHA384,
                _ => ring::hmac::HMAC_SHA512,
            };
            let k = ring::hmac::Key::new(a, pem.as_bytes());
            ring::hmac::sign(&k, input.as_bytes()).as_ref().to_vec()
        }
        "RS256" | "RS384" | "RS512" | "PS256" | "PS384" | "PS512" => {
            let pad: &dyn sig::RsaEncoding = match alg {
                "RS256" => &sig::RSA_PKCS1_SHA256,
                "RS384" => &sig::RSA_PKCS1_SHA384,
                "RS512" => &sig::RSA_PKCS1_SHA512,
                "PS256" => &sig::RSA_PSS_SHA256,
                "PS384" => &sig::RSA_PSS_SHA384,
                _ => &sig::RSA_PSS_SHA512,
            };
            let kp = sig::RsaKeyPair::from_pkcs8(&der(pem)).unwrap();
            let mut out = vec![0; kp.public().modulus_len()];
            kp.sign(pad, &rng, input.as_bytes(), &mut out).unwrap();
            out
        }
        "ES256" | "ES384" => {
            let a = if alg == "ES256" {
                &sig::ECDSA_P256_SHA256_FIXED_SIGNING
            } else {
                &sig::ECDSA_P384_SHA384_FIXED_SIGNING
            };
            let kp = sig::EcdsaKeyPair::from_pkcs8(a, &der(pem), &rng).unwrap();
            kp.sign(&rng, input.as_bytes()).unwrap().as_ref().to_vec()
        }
        "EdDSA" => {
            let kp = sig::Ed25519KeyPair::from_pkcs8_maybe_unchecked(&der(pem)).unwrap();
            kp.sign(input.as_bytes()).as_ref().to_vec()
        }
        other => panic!("no signer for {other}"),
    };
    format!("{input}.{}", b64(&signature))
}

fn future() -> u64 {
    now() as u64 + 3600
}

/// The secrets every test configuration may refer to.
const SECRETS: &[(&str, &str, Option<&str>)] = &[
    ("hs", SECRET, None),
    ("short", "short", None),
    ("h40", "0123456789abcdef0123456789abcdef01234567", None),
    (
        "rotating",
        "new-0123456789abcdef0123456789abcdef",
        Some("old-0123456789abcdef0123456789abcdef"),
    ),
    (
        "b64",
        "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWYwMTIzNDU2Nzg5YWJjZGVmMDEyMzQ1Njc4OWFiY2RlZg==",
        None,
    ),
];

/// A key entry for the `hs` secret.
const HS: &str = "{secret: \"${secret:hs}\"}";

fn build_from(text: &str) -> (Option<Arc<dyn Plugin>>, Diags) {
    crate::testing::build(build, text, SECRETS)
}

fn plugin(text: &str) -> Arc<dyn Plugin> {
    let (p, d) = build_from(text);
    assert!(d.is_empty(), "{:?}", d.0);
    p.unwrap()
}

fn errors(text: &str) -> Vec<(String, String)> {
    let (p, d) = build_from(text);
    assert!(p.is_none());
    d.0.into_iter().map(|d| (d.path, d.message)).collect()
}

/// Runs the access phase with `Authorization: Bearer token` (or no header).
async fn run(plugin: &Arc<dyn Plugin>, token: Option<&str>) -> (Flow, RequestCtx) {
    run_with(
        plugin,
        token.map(|t| ("authorization", format!("Bearer {t}"))),
        "/",
    )
    .await
}

async fn run_with(
    plugin: &Arc<dyn Plugin>,
    header: Option<(&str, String)>,
    uri: &str,
) -> (Flow, RequestCtx) {
    let h = Harness::new(Default::default()).unwrap();
    let mut req = FakeRequest {
        uri: uri.parse().unwrap(),
        ..Default::default()
    };
    if let Some((n, v)) = header {
        req.headers.insert(
            HeaderName::from_bytes(n.as_bytes()).unwrap(),
            HeaderValue::from_str(&v).unwrap(),
        );
    }
    let mut ctx = h.request(req);
    let flow = plugin.access(&mut ctx).run().await.unwrap();
    (flow, ctx)
}

/// The status and `WWW-Authenticate` of a rejection, or 0 when the request went on.
fn outcome(flow: &Flow) -> (u16, String) {
    match flow {
        Flow::Continue => (0, String::new()),
        Flow::Respond(r) => (
            r.status.as_u16(),
            r.headers
                .get("www-authenticate")
                .map(|v| v.to_str().unwrap().to_string())
                .unwrap_or_default(),
        ),
    }
}

fn pem_key(pem: &str) -> String {
    format!("{{pem: {:?}}}", pem)
}

#[tokio::test]
async fn accepts_tokens_of_every_algorithm_with_a_key_of_its_type() {
    let cases = [
        ("HS256", SECRET, HS.to_string()),
        ("HS384", SECRET, HS.to_string()),
        ("HS512", SECRET, HS.to_string()),
        ("RS256", RSA_A, pem_key(RSA_A_PUB)),
        ("RS384", RSA_A, pem_key(RSA_A_PUB)),
        ("RS512", RSA_A, pem_key(RSA_A_PUB)),
        ("PS256", RSA_A, pem_key(RSA_A_PUB)),
        ("PS384", RSA_A, pem_key(RSA_A_PUB)),
        ("PS512", RSA_A, pem_key(RSA_A_PUB)),
        ("ES256", P256, pem_key(P256_PUB)),
        ("ES384", P384, pem_key(P384_PUB)),
        ("EdDSA", ED, pem_key(ED_PUB)),
    ];
    for (alg, signing, key) in cases {
        let p = plugin(&format!("keys: [{key}]"));
        let claims = json!({"sub": "alice", "exp": future()});
        let t = sign(alg, signing, json!({}), &claims);
        let (flow, ctx) = run(&p, Some(&t)).await;
        assert_eq!(outcome(&flow).0, 0, "{alg}");
        let c = ctx.vars.get::<Claims>().expect("claims stored");
        assert_eq!(c.0["sub"], "alice", "{alg}");
        assert_eq!(
            ctx.vars.get::<Consumer>(),
            Some(&Consumer("alice".into())),
            "`sub` names the consumer"
        );
        // A signature that does not match is rejected.
        let (head, _) = t.rsplit_once('.').unwrap();
        let forged = sign(
            alg,
            signing,
            json!({}),
            &json!({"sub": "mallory", "exp": future()}),
        );
        let bad = format!("{head}.{}", forged.rsplit_once('.').unwrap().1);
        let (flow, ctx) = run(&p, Some(&bad)).await;
        assert_eq!(outcome(&flow).0, 401, "{alg}");
        assert!(ctx.vars.get::<Claims>().is_none());
        assert!(ctx.vars.get::<Consumer>().is_none());
    }
}

#[tokio::test]
async fn rejects_expired_early_foreign_and_incomplete_tokens() {
    let p = plugin(&format!(
        "keys: [{HS}]\nissuer: https://idp.example\naudience: [api]\nrequired_claims: [exp, sub]\nleeway_secs: 5"
    ));
    let good = json!({"iss": "https://idp.example", "aud": "api", "sub": "a", "exp": future()});
    let cases = [
        (json!({"exp": now() as u64 - 60}), "expired"),
        (json!({"nbf": future()}), "not valid yet"),
        (json!({"iss": "https://evil.example"}), "issuer"),
        (json!({"aud": ["web"]}), "audience"),
        (json!({"sub": null}), "required claim `sub`"),
        (json!({"exp": "tomorrow"}), "wrong type"),
    ];
    let t = sign("HS256", SECRET, json!({}), &good);
    assert_eq!(outcome(&run(&p, Some(&t)).await.0).0, 0);
    for (change, expected) in cases {
        let mut claims = good.clone();
        claims
            .as_object_mut()
            .unwrap()
            .extend(change.as_object().unwrap().clone());
        let t = sign("HS256", SECRET, json!({}), &claims);
        let (status, challenge) = outcome(&run(&p, Some(&t)).await.0);
        assert_eq!(status, 401, "{expected}");
        assert!(challenge.contains("error=\"invalid_token\""), "{challenge}");
        assert!(challenge.contains(expected), "{expected}: {challenge}");
    }
    let mut no_exp = good.clone();
    no_exp.as_object_mut().unwrap().remove("exp");
    let t = sign("HS256", SECRET, json!({}), &no_exp);
    assert!(outcome(&run(&p, Some(&t)).await.0).1.contains("`exp`"));
}

#[tokio::test]
async fn rejects_unsigned_tokens_and_algorithm_confusion() {
    let rsa = plugin(&format!("keys: [{}]", pem_key(RSA_A_PUB)));
    let claims = json!({"exp": future()});
    // alg none, with and without a signature part.
    let none_input = format!(
        "{}.{}",
        b64(br#"{"alg":"none"}"#),
        b64(claims.to_string().as_bytes())
    );
    for t in [format!("{none_input}."), format!("{none_input}.c2ln")] {
        let (status, challenge) = outcome(&run(&rsa, Some(&t)).await.0);
        assert_eq!(status, 401);
        assert!(challenge.contains("alg none"), "{challenge}");
    }
    // HS256 "signed" with the RSA public key as the secret: the RSA key never checks MACs.
    let confused = sign("HS256", RSA_A_PUB, json!({}), &claims);
    let (status, challenge) = outcome(&run(&rsa, Some(&confused)).await.0);
    assert_eq!(status, 401);
    assert!(
        challenge.contains("algorithm is not accepted"),
        "{challenge}"
    );
    // An ES256 token against an RSA key set, and an RS256 token against a P-256 key.
    let es = sign("ES256", P256, json!({}), &claims);
    assert_eq!(outcome(&run(&rsa, Some(&es)).await.0).0, 401);
    let ec = plugin(&format!("keys: [{}]", pem_key(P256_PUB)));
    let rs = sign("RS256", RSA_A, json!({}), &claims);
    assert_eq!(outcome(&run(&ec, Some(&rs)).await.0).0, 401);
    // A key pinned to RS256 refuses PS256 tokens.
    let pinned = plugin(&format!("keys: [{{alg: RS256, pem: {:?}}}]", RSA_A_PUB));
    let ps = sign("PS256", RSA_A, json!({}), &claims);
    assert_eq!(outcome(&run(&pinned, Some(&ps)).await.0).0, 401);
    // A token signed by another RSA key.
    let other = sign("RS256", RSA_B, json!({}), &claims);
    let (_, challenge) = outcome(&run(&rsa, Some(&other)).await.0);
    assert!(challenge.contains("signature is invalid"), "{challenge}");
}

#[tokio::test]
async fn picks_keys_by_kid_and_tries_keys_without_one() {
    let p = plugin(&format!(
        "keys:\n  - {{kid: a, pem: {:?}}}\n  - {{kid: e, pem: {:?}}}",
        RSA_A_PUB, ED_PUB
    ));
    let claims = json!({"exp": future()});
    let ok = sign("RS256", RSA_A, json!({"kid": "a"}), &claims);
    assert_eq!(outcome(&run(&p, Some(&ok)).await.0).0, 0);
    let no_kid = sign("EdDSA", ED, json!({}), &claims);
    assert_eq!(outcome(&run(&p, Some(&no_kid)).await.0).0, 0);
    let wrong_kid = sign("RS256", RSA_A, json!({"kid": "e"}), &claims);
    let (_, challenge) = outcome(&run(&p, Some(&wrong_kid)).await.0);
    assert!(challenge.contains("no key matches"), "{challenge}");
}

#[tokio::test]
async fn missing_tokens_get_a_challenge_without_an_error_code() {
    let p = plugin(&format!("keys: [{HS}]\nrealm: api"));
    let (flow, _) = run(&p, None).await;
    assert_eq!(outcome(&flow), (401, "Bearer realm=\"api\"".to_string()));
    let (flow, _) = run_with(
        &p,
        Some(("authorization", "Basic dXNlcjpwdw==".into())),
        "/",
    )
    .await;
    assert_eq!(outcome(&flow).0, 401);
    let Flow::Respond(r) = flow else { panic!() };
    let body: Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(body["error"], "missing_token");
    assert_eq!(body["request_id"], "test-request-id");
    let (flow, _) = run_with(&p, Some(("authorization", "Bearer x".repeat(5000))), "/").await;
    assert!(outcome(&flow).1.contains("too large"));
    let (flow, _) = run(&p, Some("not-a-token")).await;
    assert!(outcome(&flow).1.contains("malformed"));
}

#[tokio::test]
async fn optional_mode_lets_anonymous_requests_through_but_not_bad_tokens() {
    let p = plugin(&format!("keys: [{HS}]\noptional: true"));
    let (flow, ctx) = run(&p, None).await;
    assert_eq!(outcome(&flow).0, 0);
    assert!(ctx.vars.get::<Claims>().is_none());
    assert_eq!(outcome(&run(&p, Some("a.b.c")).await.0).0, 401);
}

#[tokio::test]
async fn copies_claims_to_headers_and_drops_client_values() {
    let p = plugin(&format!(
        "keys: [{HS}]\nclaims_to_headers: {{sub: X-User, org.id: X-Org, roles: X-Roles, missing: X-Missing}}\nstrip_token: true"
    ));
    let t = sign(
        "HS256",
        SECRET,
        json!({}),
        &json!({"sub": "alice", "org": {"id": 7}, "roles": ["a", "b"], "exp": future()}),
    );
    let h = Harness::new(Default::default()).unwrap();
    let mut req = FakeRequest::default();
    req.headers.insert(
        "authorization",
        HeaderValue::from_str(&format!("Bearer {t}")).unwrap(),
    );
    req.headers
        .insert("x-missing", HeaderValue::from_static("spoofed"));
    req.headers
        .insert("x-user", HeaderValue::from_static("spoofed"));
    let mut ctx = h.request(req);
    assert!(matches!(
        p.access(&mut ctx).run().await.unwrap(),
        Flow::Continue
    ));
    assert_eq!(ctx.head.headers["x-user"], "alice");
    assert_eq!(ctx.head.headers["x-org"], "7");
    assert_eq!(ctx.head.headers["x-roles"], "[\"a\",\"b\"]");
    assert!(ctx.head.headers.get("x-missing").is_none());
    assert!(ctx.head.headers.get("authorization").is_none());
}

#[tokio::test]
async fn reads_tokens_from_cookies_and_query_parameters_and_strips_them() {
    let p = plugin(&format!(
        "keys: [{HS}]\ntoken: {{header: null, cookie: jwt, query: access_token}}\nstrip_token: true"
    ));
    let t = sign("HS256", SECRET, json!({}), &json!({"exp": future()}));
    let (flow, ctx) = run_with(&p, Some(("cookie", format!("a=1; jwt={t}; b=2"))), "/").await;
    assert_eq!(outcome(&flow).0, 0);
    assert_eq!(ctx.head.headers["cookie"], "a=1; b=2");
    let (flow, ctx) = run_with(&p, None, &format!("/x?a=1&access_token={t}&b=2")).await;
    assert_eq!(outcome(&flow).0, 0);
    assert_eq!(ctx.head.uri.to_string(), "/x?a=1&b=2");
    // The Authorization header is not a source here.
    let (flow, _) = run(&p, Some(&t)).await;
    assert_eq!(outcome(&flow).0, 401);
}

#[test]
fn validates_the_configuration_with_paths() {
    let e = errors("{}");
    assert!(e[0].1.contains("`keys`, `jwks`"), "{e:?}");
    let e = errors("keys: [{secret: \"${secret:short}\"}]");
    assert_eq!(e[0].0, "keys[0].secret");
    assert!(e[0].1.contains("32"));
    let e = errors("keys: [{secret: \"${secret:hs}\", pem: x}]");
    assert!(e[0].1.contains("exactly one"));
    let e =
        errors("keys: [{pem: \"-----BEGIN PRIVATE KEY-----\\nAAAA\\n-----END PRIVATE KEY-----\"}]");
    assert!(e[0].1.contains("private key"), "{e:?}");
    let e = errors(&format!("keys: [{{alg: ES256, pem: {:?}}}]", RSA_A_PUB));
    assert_eq!(e[0].0, "keys[0].alg");
    let e = errors(&format!("keys: [{HS}]\nalgorithms: [none, RS256, XX1]"));
    assert_eq!(e.len(), 3, "{e:?}");
    assert!(e[1].1.contains("no key can verify RS256"));
    let e = errors(&format!("keys: [{HS}]\njwks: {{url: ftp://x}}"));
    assert_eq!(e[0].0, "jwks.url");
    let e = errors(
        "jwks: {url: 'http://idp/jwks', refresh_interval_ms: 10, min_refetch_interval_ms: 0}",
    );
    assert_eq!(e.len(), 2, "{e:?}");
    assert!(e[0].1.contains("at least 1000"), "{e:?}");
    let e = errors(&format!(
        "keys: [{HS}]\nclaims_to_headers: {{sub: \"bad header\"}}\nrealm: 'a\"b'\ncolour: red"
    ));
    assert!(!e.is_empty());
    let e = errors(&format!("keys: [{HS}]\ncolour: red"));
    assert!(e[0].1.contains("unknown field"), "{e:?}");
    let e = errors(&format!("keys: [{HS}]\ntoken: {{header: null}}"));
    assert!(e[0].1.contains("at least one"), "{e:?}");
    let e = errors("keys: [{pem_file: nope.pem}]");
    assert!(e[0].1.contains("cannot read"), "{e:?}");
    let e = errors("keys: [{jwk: {kty: oct, k: c2hvcnQ}}]");
    assert_eq!(e[0].0, "keys[0].jwk");
    let e = errors("jwks: {url: 'https://idp/jwks', tls: {client_cert: c.pem, roots: builtin}}");
    let paths: Vec<&str> = e.iter().map(|(p, _)| p.as_str()).collect();
    assert!(paths.contains(&"jwks.tls.client_cert"), "{e:?}");
    assert!(paths.contains(&"jwks.tls.roots"), "{e:?}");
}

#[test]
fn accepts_public_jwks_and_base64_secrets_and_refuses_literal_ones() {
    let k = b64(SECRET.as_bytes());
    let e = errors(&format!(
        "keys: [{{jwk: {{kty: oct, k: {k}, alg: HS256, kid: s1}}}}]"
    ));
    assert_eq!(e[0].0, "keys[0].jwk");
    assert!(e[0].1.contains("${secret:NAME}"), "{e:?}");
    plugin("keys: [{secret: \"${secret:b64}\", secret_base64: true}]");
    let ec = json!({"kty": "EC", "crv": "P-256", "x": "MKBCTNIcKUSDii11ySs3526iDZ8AiTo7Tu6KPAqv7D4",
        "y": "4Etl6SRW2YiLUrN5vfvVHuhp7x8PxltmWWlbbM4IFyM", "use": "sig", "kid": "1"});
    plugin(&format!("keys: [{{jwk: {ec}}}]"));
    let e = errors(&format!("keys: [{{secret: {SECRET}}}]"));
    assert_eq!(e[0].0, "keys[0].secret");
    assert!(e[0].1.contains("secret reference"), "{e:?}");
    let e = errors("keys: [{secret: \"${secret:undeclared}\"}]");
    assert_eq!(e[0].0, "keys[0].secret");
}

#[tokio::test]
async fn accepts_the_current_and_the_previous_secret_during_a_rotation() {
    let p = plugin("keys: [{secret: \"${secret:rotating}\"}]");
    let claims = json!({"exp": future()});
    for secret in [
        "new-0123456789abcdef0123456789abcdef",
        "old-0123456789abcdef0123456789abcdef",
    ] {
        let t = sign("HS256", secret, json!({}), &claims);
        assert_eq!(outcome(&run(&p, Some(&t)).await.0).0, 0, "{secret}");
    }
    let t = sign(
        "HS256",
        "xyz-0123456789abcdef0123456789abcdef",
        json!({}),
        &claims,
    );
    assert_eq!(outcome(&run(&p, Some(&t)).await.0).0, 401);
}

#[test]
fn derives_the_accepted_algorithms_from_the_keys() {
    let text = "keys: [{secret: \"${secret:h40}\"}]";
    let node = parse(text, &HashMap::new()).unwrap();
    let cfg: JwtConfig = sluicegate_core::de::from_node(&node, &Path::root()).unwrap();
    let store = sluicegate_secrets::SecretStore::from_secrets([sluicegate_secrets::Secret::new(
        "h40",
        sluicegate_secrets::SecretValue::new(b"0123456789abcdef0123456789abcdef01234567".to_vec()),
        None,
    )]);
    let mut d = Diags::default();
    let ctx = BuildCtx {
        consumers: &Default::default(),
        base_dir: std::path::Path::new("."),
        secrets: &store,
        route: None,
        lua_modules: &sluicegate_lua::Modules::empty(),
    };
    let keys = build_key(&cfg.keys[0], &Path::root(), &ctx, &mut d);
    assert!(d.is_empty(), "{:?}", d.0);
    assert_eq!(
        algorithms(&cfg, &keys, false, false, &Path::root(), &mut d),
        [Alg::HS256]
    );
    assert_eq!(
        algorithms(&cfg, &keys, true, false, &Path::root(), &mut d).len(),
        10
    );
}
