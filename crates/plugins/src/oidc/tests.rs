//! Tests of the `oidc` plugin that need no provider: configuration, sessions, the identity
//! headers, the rules and the answers to requests without one. The flows with a real
//! provider and browser are in `tests/e2e/oidc.rs`.

use super::build;
use crate::testing::{self, access, request, responded};
use sluicegate_core::phase::Flow;
use sluicegate_oidc::seal::Sealer;
use sluicegate_oidc::session::Session;

const SECRETS: &[(&str, &str, Option<&str>)] = &[
    ("client", "client-secret", None),
    (
        "session",
        "session-secret-b-0123456789abcdef0123",
        Some("session-secret-a-0123456789abcdef0123"),
    ),
];

const CONFIG: &str = r#"{issuer: "http://127.0.0.1:9", client_id: gw, client_secret: "${secret:client}",
  public_url: "https://app.example.com", session: {secret: "${secret:session}"},
  allow: {domains: "example.com, example.org", claims: {"org.tier": [gold]}}, claims: [name]}"#;

fn now() -> u64 {
    sluicegate_jwt::now() as u64
}

fn session(secret: &str, expires_in: i64, refresh: bool) -> String {
    let sealer = Sealer::new(&[secret.as_bytes()]).unwrap();
    let t = now();
    let mut claims = serde_json::Map::new();
    claims.insert("org".into(), serde_json::json!({"tier": "gold"}));
    Session {
        sub: "u-1".into(),
        email: Some("alice@example.com".into()),
        groups: vec!["eng".into(), "admins".into()],
        claims,
        expires_at: (t as i64 + expires_in) as u64,
        ends_at: t + 86_400,
        refresh_token: refresh.then(|| "rt".to_string()),
        id_token: None,
        sid: "sid-1".into(),
    }
    .seal(&sealer)
}

#[test]
fn rejects_bad_configurations_with_their_paths() {
    let errors = testing::errors(
        build,
        r#"{issuer: "ftp://x", client_id: "", public_url: "https://a.example/app",
            scopes: [email], session: {secret: "${secret:short}", same_site: sometimes},
            allow: {emails: [nobody], domains: ["not a domain"]},
            paths: {login: /same, callback: /same}, after_logout: "https://evil.example/",
            headers: {email: "bad header"}, client_auth: magic}"#,
        &[("short", "too short", None)],
    );
    let paths: Vec<&str> = errors.iter().map(|(p, _)| p.as_str()).collect();
    for expected in [
        "issuer",
        "client_id",
        "public_url",
        "scopes",
        "session.secret",
        "session.same_site",
        "allow.emails",
        "allow.domains",
        "paths",
        "after_logout",
        "headers.email",
        "client_auth",
    ] {
        assert!(
            paths.contains(&expected),
            "{expected} missing in {errors:?}"
        );
    }
}

#[test]
fn builds_the_shipped_shape() {
    testing::plugin(build, CONFIG, SECRETS);
}

#[test]
fn a_valid_session_passes_with_the_identity_and_without_its_cookie_or_client_copies() {
    let p = testing::plugin(build, CONFIG, SECRETS);
    let h = testing::harness();
    let cookie = format!(
        "a=1; sluicegate_session={}; b=2",
        session("session-secret-b-0123456789abcdef0123", 3600, true)
    );
    let mut ctx = request(
        &h,
        "GET",
        "/app",
        &[
            ("cookie", &cookie),
            ("x-forwarded-email", "mallory@evil.example"),
        ],
        None,
    );
    assert!(matches!(access(p.as_ref(), &mut ctx), Flow::Continue));
    let hdr = |n: &str| {
        ctx.head
            .headers
            .get(n)
            .map(|v| v.to_str().unwrap().to_string())
    };
    assert_eq!(
        hdr("x-forwarded-email").as_deref(),
        Some("alice@example.com")
    );
    assert_eq!(hdr("x-forwarded-groups").as_deref(), Some("eng,admins"));
    assert_eq!(hdr("x-forwarded-user").as_deref(), Some("u-1"));
    assert_eq!(hdr("cookie").as_deref(), Some("a=1; b=2"));
    let claims = ctx.vars.get::<sluicegate_jwt::Claims>().unwrap();
    assert_eq!(claims.0["email"], "alice@example.com");
}

#[test]
fn a_session_sealed_with_the_previous_secret_passes_and_is_resealed() {
    let p = testing::plugin(build, CONFIG, SECRETS);
    let h = testing::harness();
    let cookie = format!(
        "sluicegate_session={}",
        session("session-secret-a-0123456789abcdef0123", 3600, true)
    );
    let mut ctx = request(&h, "GET", "/app", &[("cookie", &cookie)], None);
    assert!(matches!(access(p.as_ref(), &mut ctx), Flow::Continue));
    let mut resp = testing::response(200, &[]);
    p.header_filter(&mut ctx, &mut resp).unwrap();
    let set = resp.headers.get("set-cookie").unwrap().to_str().unwrap();
    assert!(set.starts_with("sluicegate_session="), "{set}");
    assert!(set.contains("Secure") && set.contains("HttpOnly"), "{set}");
}

#[test]
fn forged_or_retired_sessions_and_expired_ones_without_refresh_get_401_and_are_cleared() {
    let p = testing::plugin(build, CONFIG, SECRETS);
    let h = testing::harness();
    for value in [
        session("a-retired-secret-0123456789abcdef0123456", 3600, true),
        session("session-secret-b-0123456789abcdef0123", -10, false),
        "garbage".to_string(),
    ] {
        let cookie = format!("sluicegate_session={value}");
        let mut ctx = request(
            &h,
            "GET",
            "/app",
            &[("cookie", &cookie), ("accept", "application/json")],
            None,
        );
        let flow = access(p.as_ref(), &mut ctx);
        let Flow::Respond(resp) = flow else {
            panic!("passed")
        };
        assert_eq!(resp.status, 401);
        let cleared = resp.headers.get_all("set-cookie").iter().any(|v| {
            let v = v.to_str().unwrap();
            v.starts_with("sluicegate_session=") && v.contains("Max-Age=0")
        });
        assert!(cleared, "{:?}", resp.headers);
    }
}

#[test]
fn programs_without_a_session_get_401_json_with_the_login_url() {
    let p = testing::plugin(build, CONFIG, SECRETS);
    let h = testing::harness();
    let mut ctx = request(
        &h,
        "POST",
        "/api/items?x=1",
        &[("accept", "text/html")],
        None,
    );
    let (status, body) = responded(access(p.as_ref(), &mut ctx));
    assert_eq!(status, 401);
    assert_eq!(body["error"], "login_required");
    assert_eq!(
        body["login_url"],
        "https://app.example.com/login?rd=%2Fapi%2Fitems%3Fx%3D1"
    );
}

#[test]
fn sessions_outside_the_rules_get_403() {
    let p = testing::plugin(
        build,
        &CONFIG.replace("example.com, example.org", "example.org"),
        SECRETS,
    );
    let h = testing::harness();
    let cookie = format!(
        "sluicegate_session={}",
        session("session-secret-b-0123456789abcdef0123", 3600, true)
    );
    let mut ctx = request(&h, "GET", "/app", &[("cookie", &cookie)], None);
    let (status, body) = responded(access(p.as_ref(), &mut ctx));
    assert_eq!(status, 403);
    assert_eq!(body["error"], "forbidden");
}

#[test]
fn login_refuses_targets_off_the_site_before_any_provider_call() {
    let p = testing::plugin(build, CONFIG, SECRETS);
    let h = testing::harness();
    for rd in [
        "https%3A%2F%2Fevil.example",
        "%2F%2Fevil.example",
        "%2F%5Cevil",
    ] {
        let mut ctx = request(&h, "GET", &format!("/login?rd={rd}"), &[], None);
        let (status, _) = responded(access(p.as_ref(), &mut ctx));
        assert_eq!(status, 400, "{rd}");
    }
}

#[test]
fn a_session_seen_before_gets_the_same_answer_as_the_first_time() {
    let p = testing::plugin(build, CONFIG, SECRETS);
    let refusing = testing::plugin(
        build,
        &CONFIG.replace("example.com, example.org", "example.org"),
        SECRETS,
    );
    let h = testing::harness();
    let old_key = format!(
        "sluicegate_session={}",
        session("session-secret-a-0123456789abcdef0123", 3600, true)
    );
    for _ in 0..3 {
        let mut ctx = request(
            &h,
            "GET",
            "/app",
            &[("cookie", &old_key), ("x-forwarded-user", "mallory")],
            None,
        );
        assert!(matches!(access(p.as_ref(), &mut ctx), Flow::Continue));
        assert_eq!(ctx.head.headers["x-forwarded-user"], "u-1");
        assert!(ctx.head.headers.get("cookie").is_none());
        let claims = ctx.vars.get::<sluicegate_jwt::Claims>().unwrap();
        assert_eq!(claims.0["email"], "alice@example.com");
        // Still sealed with the previous key: sealed again every time until replaced.
        let mut resp = testing::response(200, &[]);
        p.header_filter(&mut ctx, &mut resp).unwrap();
        assert!(resp.headers.get("set-cookie").is_some());

        let mut ctx = request(&h, "GET", "/app", &[("cookie", &old_key)], None);
        let (status, _) = responded(access(refusing.as_ref(), &mut ctx));
        assert_eq!(status, 403);
    }
}
