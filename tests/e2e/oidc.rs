//! The `oidc` plugin end to end, against a real OpenID provider (panva's `oidc-provider`,
//! started by `sluicegate-testkit` from `tests/fixtures/oidc`) and, for the login in a
//! browser, a real Chromium driven by Playwright.
//!
//! Most tests log in without a browser: the provider's scripted login
//! ([`OidcProvider::login`]) plays the user at the provider and hands back the callback URL,
//! which the test then sends to the gateway with the login cookie, as a browser would. That
//! lets a test forge, replay and tamper with each step.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Empty;
use serde_json::{json, Value};
use sluicegate_testkit::oidc::{run_browser, OidcProvider, ProviderOptions};

use crate::support::client::Reply;
use crate::support::{request, send, Config, RawUpstream, TestGateway, Upstream};

const CLIENT_SECRET: &str = "gateway-client-secret";
const SESSION_A: &str = "session-secret-a-0123456789abcdef0123";
const SESSION_B: &str = "session-secret-b-0123456789abcdef0123";

/// The plugin's configuration in the tests unless a test says otherwise.
const PLUGIN: &str = r#"
      issuer: "{{issuer}}"
      client_id: gateway
      client_secret: "${secret:client}"
      public_url: "http://127.0.0.1:{{port}}"
      scopes: [openid, email, profile, groups, offline_access]
      session: {secret: "${secret:session}", refresh_before_secs: {{refresh_before}}}
      allow: {domains: "example.com"}
      token_page: true
      timeout_ms: 2000
"#;

/// A provider, a gateway in front of an upstream that echoes who it was told the user is.
struct Site {
    idp: OidcProvider,
    gw: TestGateway,
    up: Upstream,
    port: u16,
}

struct SiteOptions<'a> {
    plugin: &'a str,
    session_current: &'a str,
    session_previous: Option<&'a str>,
    token_ttl: u64,
    refresh_before: u64,
    extra: &'a str,
}

impl Default for SiteOptions<'_> {
    fn default() -> Self {
        SiteOptions {
            plugin: PLUGIN,
            session_current: SESSION_A,
            session_previous: None,
            token_ttl: 3600,
            refresh_before: 60,
            extra: "",
        }
    }
}

fn provider(port: u16, token_ttl: u64) -> OidcProvider {
    OidcProvider::start(&ProviderOptions {
        clients: json!([{
            "client_id": "gateway",
            "client_secret": CLIENT_SECRET,
            "redirect_uris": [format!("http://127.0.0.1:{port}/login/callback")],
            "post_logout_redirect_uris": [format!("http://127.0.0.1:{port}/")],
            "token_endpoint_auth_method": "client_secret_basic",
            "grant_types": ["authorization_code", "refresh_token"],
            "response_types": ["code"],
        }]),
        id_token_ttl: token_ttl,
        access_token_ttl: token_ttl,
    })
}

fn upstream() -> Upstream {
    Upstream::start(|seen: crate::support::upstream::Seen| async move {
        let body = format!(
            "hello {} groups={} user={} cookie={}",
            seen.header("x-forwarded-email"),
            seen.header("x-forwarded-groups"),
            seen.header("x-forwarded-user"),
            seen.header("cookie"),
        );
        http::Response::builder()
            .status(200)
            .header("content-type", "text/plain")
            .body(http_body_util::Full::new(Bytes::from(body)))
            .unwrap()
    })
}

/// A gateway on `port` in front of `app`, using `idp`.
fn gateway(idp: &OidcProvider, app: SocketAddr, port: u16, o: &SiteOptions<'_>) -> TestGateway {
    let previous = match o.session_previous {
        Some(_) => r#", previous_file: "{{dir}}/session_previous""#,
        None => "",
    };
    let body = format!(
        r#"
secrets:
  client: {{file: "{{{{dir}}}}/client"}}
  session: {{file: "{{{{dir}}}}/session"{previous}}}
upstreams: [{{name: app, targets: ["{{{{app}}}}"]}}]
plugins:
  - name: oidc
    config:
{plugin}
{extra}
routes:
  - name: all
    upstream: app
"#,
        plugin = o.plugin.trim_end(),
        extra = o.extra,
    );
    let mut cfg = Config::new(&body)
        .listeners(&format!("listeners:\n  - address: 127.0.0.1:{port}\n"))
        .var("app", app)
        .var("issuer", idp.issuer())
        .var("port", port)
        .var("refresh_before", o.refresh_before)
        .file("client", CLIENT_SECRET)
        .file("session", o.session_current);
    if let Some(p) = o.session_previous {
        cfg = cfg.file("session_previous", p);
    }
    cfg.workers(2).start()
}

fn site(o: SiteOptions<'_>) -> Site {
    let port = sluicegate_testkit::free_port();
    let idp = provider(port, o.token_ttl);
    let up = upstream();
    let gw = gateway(&idp, up.addr(), port, &o);
    Site { idp, gw, up, port }
}

/// The cookies a browser would hold for the gateway's origin.
#[derive(Default, Clone, Debug)]
struct Jar(BTreeMap<String, String>);

impl Jar {
    fn take(&mut self, reply: &Reply) {
        for c in reply.header_all("set-cookie") {
            let pair = c.split(';').next().unwrap_or("");
            let (name, value) = pair.split_once('=').unwrap();
            let expired = c.to_ascii_lowercase().contains("max-age=0");
            if expired || value.is_empty() {
                self.0.remove(name);
            } else {
                self.0.insert(name.to_string(), value.to_string());
            }
        }
    }

    fn header(&self) -> String {
        self.0
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    fn session(&self) -> Option<&String> {
        self.0.get("sluicegate_session")
    }
}

async fn get_with(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Reply {
    let mut req = request("GET", path);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    send(addr, req.body(Empty::<Bytes>::new()).unwrap()).await
}

const PAGE: (&str, &str) = ("accept", "text/html,application/xhtml+xml");

impl Site {
    fn origin(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// `GET path` as a browser holding `jar` would send it.
    async fn browse(&self, path: &str, jar: &Jar) -> Reply {
        let cookies = jar.header();
        let mut headers = vec![PAGE];
        if !cookies.is_empty() {
            headers.push(("cookie", &cookies));
        }
        get_with(self.gw.addr, path, &headers).await
    }

    /// Starts a login at `/login?...`: returns the provider URL and the jar with the login
    /// cookie.
    async fn start_login(&self, query: &str, jar: &mut Jar) -> String {
        let r = self.browse(&format!("/login{query}"), jar).await;
        assert_eq!(r.status, 302, "{}", r.text());
        jar.take(&r);
        let location = r.header("location").to_string();
        assert!(location.starts_with(&self.idp.issuer()), "{location}");
        location
    }

    /// The gateway path of a callback URL the provider redirected to.
    fn callback_path(&self, url: &str) -> String {
        url.strip_prefix(&self.origin())
            .unwrap_or_else(|| panic!("not a callback of this gateway: {url}"))
            .to_string()
    }

    /// A whole login as `user`; returns the callback's answer and the jar after it.
    async fn login(&self, user: &str, query: &str) -> (Reply, Jar) {
        let mut jar = Jar::default();
        let auth = self.start_login(query, &mut jar).await;
        let callback = self.idp.login(&auth, user, "any password");
        let r = self.browse(&self.callback_path(&callback), &jar).await;
        jar.take(&r);
        (r, jar)
    }

    /// A login that must succeed: returns the jar holding the session.
    async fn logged_in(&self, user: &str) -> Jar {
        let (r, jar) = self.login(user, "?rd=/app").await;
        assert_eq!(r.status, 302, "{}", r.text());
        assert_eq!(r.header("location"), format!("{}/app", self.origin()));
        assert!(jar.session().is_some(), "no session cookie: {jar:?}");
        jar
    }
}

#[tokio::test]
async fn a_browser_logs_in_lands_on_its_page_logs_out_and_logs_in_again() {
    let s = site(SiteOptions::default());
    let target = format!("{}/dashboard?tab=1", s.origin());
    let logout = format!("{}/logout", s.origin());
    let seen = tokio::task::spawn_blocking(move || {
        run_browser(&target, &logout, "alice@example.com", "secret")
    })
    .await
    .unwrap();
    let first = &seen["first"];
    assert_eq!(
        first["url"],
        format!("{}/dashboard?tab=1", s.origin()),
        "{seen}"
    );
    assert!(
        first["body"]
            .as_str()
            .unwrap()
            .contains("hello alice@example.com"),
        "{seen}"
    );
    assert!(seen["login_form_again"].as_bool().unwrap(), "{seen}");
    assert!(
        seen["second"]["body"]
            .as_str()
            .unwrap()
            .contains("hello alice@example.com"),
        "{seen}"
    );
    let stats = s.idp.stats();
    assert_eq!(stats["end_session_calls"], 1, "{stats}");
}

#[tokio::test]
async fn without_a_session_a_page_load_goes_to_the_provider_and_programs_get_401_json() {
    let s = site(SiteOptions::default());
    let page = s.browse("/reports?q=1", &Jar::default()).await;
    assert_eq!(page.status, 302);
    let location = page.header("location");
    assert!(
        location.starts_with(&format!("{}/auth?", s.idp.issuer())),
        "{location}"
    );
    for needed in [
        "code_challenge_method=S256",
        "response_type=code",
        "client_id=gateway",
        "nonce=",
        "state=",
    ] {
        assert!(location.contains(needed), "{needed} missing in {location}");
    }
    let cookie = page.header("set-cookie");
    assert!(cookie.starts_with("sluicegate_session_login_"), "{cookie}");
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Lax"),
        "{cookie}"
    );
    assert!(cookie.contains("Path=/login/callback"), "{cookie}");

    for headers in [
        vec![("accept", "application/json")],
        vec![PAGE, ("x-requested-with", "XMLHttpRequest")],
        vec![PAGE, ("sec-fetch-mode", "cors")],
        vec![PAGE, ("upgrade", "websocket"), ("connection", "upgrade")],
    ] {
        let r = get_with(s.gw.addr, "/reports?q=1", &headers).await;
        assert_eq!(r.status, 401, "{headers:?}");
        let body = r.json();
        assert_eq!(body["error"], "login_required");
        assert_eq!(
            body["login_url"],
            format!("{}/login?rd=%2Freports%3Fq%3D1", s.origin())
        );
    }
    let post = send(
        s.gw.addr,
        request("POST", "/reports")
            .header("accept", "text/html")
            .body(Empty::<Bytes>::new())
            .unwrap(),
    )
    .await;
    assert_eq!(post.status, 401);
    assert!(s.up.requests().is_empty());
}

#[tokio::test]
async fn after_login_the_upstream_sees_the_identity_never_the_clients_copy_nor_the_session_cookie()
{
    let s = site(SiteOptions::default());
    let jar = s.logged_in("alice@example.com").await;
    let cookies = format!("theme=dark; {}", jar.header());
    let r = get_with(
        s.gw.addr,
        "/app",
        &[
            ("cookie", &cookies),
            ("x-forwarded-email", "mallory@example.com"),
            ("x-forwarded-groups", "admins"),
        ],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = s.up.only_request();
    assert_eq!(seen.header_all("x-forwarded-email"), ["alice@example.com"]);
    assert_eq!(seen.header("x-forwarded-groups"), "engineering,admins");
    assert_eq!(seen.header("x-forwarded-user"), "alice@example.com");
    assert_eq!(seen.header("cookie"), "theme=dark");
    // A typical session fits in one cookie well under 1 KiB.
    let session = jar.session().unwrap();
    assert!(session.len() < 1024, "{} bytes", session.len());
}

#[tokio::test]
async fn lua_sees_the_same_identity() {
    let s = site(SiteOptions {
        extra: r#"  - name: lua
    config:
      phase: access
      code: |
        local c = sluicegate.jwt.claims()
        ngx.req.set_header("x-lua-saw", c.email .. " " .. table.concat(c.groups, "+"))"#,
        ..Default::default()
    });
    let jar = s.logged_in("alice@example.com").await;
    let r = s.browse("/app", &jar).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        s.up.only_request().header("x-lua-saw"),
        "alice@example.com engineering+admins"
    );
}

#[tokio::test]
async fn users_outside_the_allowed_domains_or_with_unverified_emails_get_403_and_no_session() {
    let s = site(SiteOptions::default());
    for user in ["carol@other.org", "dave@example.com"] {
        let (r, jar) = s.login(user, "?rd=/app").await;
        assert_eq!(r.status, 403, "{user}: {}", r.text());
        assert_eq!(r.json()["error"], "forbidden");
        assert!(jar.session().is_none(), "{user}: {jar:?}");
    }
    assert!(s.up.requests().is_empty());
}

#[tokio::test]
async fn a_callback_without_its_login_cookie_or_with_a_forged_state_is_refused() {
    let s = site(SiteOptions::default());
    let mut jar = Jar::default();
    let auth = s.start_login("?rd=/app", &mut jar).await;
    let callback = s.callback_path(&s.idp.login(&auth, "alice@example.com", "pw"));

    // Missing: another browser (the attacker's link) has no login cookie.
    let r = s.browse(&callback, &Jar::default()).await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.json()["message"]
        .as_str()
        .unwrap()
        .contains("not started here"));

    // Forged: the state in the URL is not the one the cookie was made for.
    let forged = callback.replace("state=", "state=x");
    let r = s.browse(&forged, &jar).await;
    assert_eq!(r.status, 400, "{}", r.text());

    // A login cookie of this gateway with another login's state under its name.
    let mut other = Jar::default();
    s.start_login("?rd=/app", &mut other).await;
    let (_, sealed) = other.0.iter().next().unwrap();
    let name = jar.0.keys().next().unwrap().clone();
    let mut swapped = Jar::default();
    swapped.0.insert(name, sealed.clone());
    let r = s.browse(&callback, &swapped).await;
    assert_eq!(r.status, 400, "{}", r.text());

    // The real one still works once; replaying it (cookie and all) does not.
    let ok = s.browse(&callback, &jar).await;
    assert_eq!(ok.status, 302, "{}", ok.text());
    assert!(ok
        .header_all("set-cookie")
        .iter()
        .any(|c| c.starts_with("sluicegate_session=")));
    let replay = s.browse(&callback, &jar).await;
    assert_eq!(replay.status, 401, "{}", replay.text());
    assert!(replay
        .header_all("set-cookie")
        .iter()
        .all(|c| !c.starts_with("sluicegate_session=")));
}

#[tokio::test]
async fn logins_in_parallel_tabs_each_finish() {
    let s = site(SiteOptions::default());
    let mut jar = Jar::default();
    let first = s.start_login("?rd=/one", &mut jar).await;
    let second = s.start_login("?rd=/two", &mut jar).await;
    assert_eq!(jar.0.len(), 2, "one login cookie per tab: {jar:?}");
    for (auth, target) in [(second, "/two"), (first, "/one")] {
        let callback = s.callback_path(&s.idp.login(&auth, "alice@example.com", "pw"));
        let r = s.browse(&callback, &jar).await;
        assert_eq!(r.status, 302, "{}", r.text());
        assert_eq!(r.header("location"), format!("{}{target}", s.origin()));
        jar.take(&r);
    }
    assert!(jar.session().is_some());
}

/// A login whose ID token the provider replaced as `spec` says must be refused with 401
/// and leave no session.
async fn refuses_tampered_id_token(spec: Value, expect: &str) {
    let s = site(SiteOptions::default());
    s.idp.tamper(&spec);
    let (r, jar) = s.login("alice@example.com", "?rd=/app").await;
    assert_eq!(r.status, 401, "{spec}: {}", r.text());
    let message = r.json()["message"].as_str().unwrap().to_string();
    assert!(message.contains(expect), "{spec}: {message}");
    assert!(jar.session().is_none());
    assert!(s.up.requests().is_empty());
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[tokio::test]
async fn an_id_token_with_another_nonce_is_refused() {
    refuses_tampered_id_token(
        json!({"claims": {"nonce": "someone-elses"}, "key": "issuer"}),
        "nonce",
    )
    .await;
}

#[tokio::test]
async fn an_expired_id_token_is_refused() {
    let t = now() - 7200;
    refuses_tampered_id_token(
        json!({"claims": {"iat": t, "exp": t + 600}, "key": "issuer"}),
        "expired",
    )
    .await;
}

#[tokio::test]
async fn an_id_token_from_another_issuer_is_refused() {
    refuses_tampered_id_token(
        json!({"claims": {"iss": "https://evil.example"}, "key": "issuer"}),
        "issuer",
    )
    .await;
}

#[tokio::test]
async fn an_id_token_for_another_audience_is_refused() {
    refuses_tampered_id_token(
        json!({"claims": {"aud": "someone-else"}, "key": "issuer"}),
        "audience",
    )
    .await;
}

#[tokio::test]
async fn an_unsigned_id_token_is_refused() {
    refuses_tampered_id_token(json!({"key": "none"}), "").await;
}

#[tokio::test]
async fn an_id_token_signed_by_another_key_is_refused() {
    refuses_tampered_id_token(json!({"key": "other"}), "").await;
}

#[tokio::test]
async fn tampered_truncated_and_forged_session_cookies_are_refused_and_cleared() {
    let s = site(SiteOptions::default());
    let jar = s.logged_in("alice@example.com").await;
    let good = jar.session().unwrap().clone();
    let mut flipped = good.clone().into_bytes();
    let mid = flipped.len() / 2;
    flipped[mid] = if flipped[mid] == b'A' { b'B' } else { b'A' };
    for bad in [
        String::from_utf8(flipped).unwrap(),
        good[..good.len() - 4].to_string(),
        "AQAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA".to_string(),
        "not base64 at all!".to_string(),
    ] {
        let cookie = format!("sluicegate_session={bad}");
        let r = get_with(
            s.gw.addr,
            "/app",
            &[("accept", "application/json"), ("cookie", &cookie)],
        )
        .await;
        assert_eq!(r.status, 401, "{bad}");
        assert!(
            r.header_all("set-cookie")
                .iter()
                .any(|c| c.starts_with("sluicegate_session=") && c.contains("Max-Age=0")),
            "the bad cookie is cleared: {:?}",
            r.header_all("set-cookie")
        );
    }
    assert!(s.up.requests().is_empty());
}

#[tokio::test]
async fn sessions_pass_on_every_node_with_the_secret_survive_its_rotation_and_die_with_a_retired_one(
) {
    let s = site(SiteOptions::default());
    let jar = s.logged_in("alice@example.com").await;
    let cookie = jar.header();
    let json = ("accept", "application/json");

    // Another node with the same secret: no shared store needed.
    let port = sluicegate_testkit::free_port();
    let same = gateway(&s.idp, s.up.addr(), port, &SiteOptions::default());
    let r = get_with(same.addr, "/app", &[json, ("cookie", &cookie)]).await;
    assert_eq!(r.status, 200, "{}", r.text());

    // Rotated: B is current, A previous. The session passes and is re-sealed with B.
    let rotated = gateway(
        &s.idp,
        s.up.addr(),
        sluicegate_testkit::free_port(),
        &SiteOptions {
            session_current: SESSION_B,
            session_previous: Some(SESSION_A),
            ..Default::default()
        },
    );
    let r = get_with(rotated.addr, "/app", &[json, ("cookie", &cookie)]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let mut resealed = jar.clone();
    resealed.take(&r);
    assert_ne!(
        resealed.session(),
        jar.session(),
        "re-sealed with the current secret"
    );

    // A retired: only B. The old cookie is refused; the re-sealed one passes.
    let retired = gateway(
        &s.idp,
        s.up.addr(),
        sluicegate_testkit::free_port(),
        &SiteOptions {
            session_current: SESSION_B,
            ..Default::default()
        },
    );
    let r = get_with(retired.addr, "/app", &[json, ("cookie", &cookie)]).await;
    assert_eq!(r.status, 401);
    let r = get_with(
        retired.addr,
        "/app",
        &[json, ("cookie", &resealed.header())],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
}

#[tokio::test]
async fn rd_targets_off_this_site_are_refused() {
    let s = site(SiteOptions::default());
    for rd in [
        "https://evil.example/",
        "//evil.example/",
        "/\\evil.example/",
        "\\/evil.example",
        "%2F%2Fevil.example",
        "/%2F%2Fevil.example",
        "/%5Cevil.example",
        "https%3A%2F%2Fevil.example",
        "http://127.0.0.1:1@evil.example/",
        "javascript:alert(1)",
        "https:evil.example",
    ] {
        let r = s
            .browse(&format!("/login?rd={}", urlencode(rd)), &Jar::default())
            .await;
        assert_eq!(
            r.status,
            400,
            "rd={rd}: {} {}",
            r.status,
            r.header("location")
        );
    }
    let ok = s
        .browse(
            &format!("/login?rd={}", urlencode(&format!("{}/x?y=1", s.origin()))),
            &Jar::default(),
        )
        .await;
    assert_eq!(ok.status, 302);
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

async fn bearer(s: &Site, token: &str) -> Reply {
    let auth = format!("Bearer {token}");
    get_with(s.gw.addr, "/api", &[PAGE, ("authorization", &auth)]).await
}

fn token_claims(s: &Site, extra: Value) -> Value {
    let t = now();
    let mut c = json!({
        "iss": s.idp.issuer(), "aud": "gateway", "sub": "zapier-bot",
        "email": "bot@example.com", "email_verified": true, "iat": t, "exp": t + 600,
    });
    for (k, v) in extra.as_object().unwrap() {
        c[k] = v.clone();
    }
    c
}

#[tokio::test]
async fn bearer_jwts_from_the_issuer_pass_and_bad_ones_get_401_never_a_redirect() {
    let s = site(SiteOptions::default());
    let sign = |extra: Value, key: &str| s.idp.sign(&json!({}), &token_claims(&s, extra), key);
    let good = sign(json!({}), "issuer");
    let r = bearer(&s, &good).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        s.up.only_request().header("x-forwarded-email"),
        "bot@example.com"
    );
    // Verified once, then remembered until its expiry: the same identity every time.
    for _ in 0..2 {
        assert_eq!(bearer(&s, &good).await.status, 200);
        assert_eq!(
            s.up.requests()
                .last()
                .map(|r| r.header("x-forwarded-email").to_string()),
            Some("bot@example.com".to_string())
        );
    }

    let t = now();
    for (what, token) in [
        ("another audience", sign(json!({"aud": "other"}), "issuer")),
        ("another key", sign(json!({}), "other")),
        (
            "unsigned",
            s.idp.sign(
                &json!({"alg": "none"}),
                &token_claims(&s, json!({})),
                "issuer",
            ),
        ),
        (
            "expired",
            sign(json!({"exp": t - 600, "iat": t - 1200}), "issuer"),
        ),
        ("garbage", "a.b.c".to_string()),
    ] {
        let r = bearer(&s, &token).await;
        assert_eq!(r.status, 401, "{what}: {}", r.text());
        assert!(
            r.header("www-authenticate").contains("invalid_token"),
            "{what}"
        );
    }
    let outsider = sign(json!({"email": "eve@other.org"}), "issuer");
    assert_eq!(bearer(&s, &outsider).await.status, 403);
}

#[tokio::test]
async fn clock_skew_within_the_leeway_passes_and_beyond_it_does_not() {
    let s = site(SiteOptions::default());
    let t = now();
    let sign = |extra: Value| s.idp.sign(&json!({}), &token_claims(&s, extra), "issuer");
    // Issued 30 s "in the future" by a provider whose clock runs ahead: within 60 s.
    assert_eq!(bearer(&s, &sign(json!({"iat": t + 30}))).await.status, 200);
    assert_eq!(bearer(&s, &sign(json!({"exp": t - 30}))).await.status, 200);
    assert_eq!(bearer(&s, &sign(json!({"iat": t + 300}))).await.status, 401);
    assert_eq!(bearer(&s, &sign(json!({"exp": t - 300}))).await.status, 401);
}

#[tokio::test]
async fn opaque_access_tokens_are_checked_at_userinfo_once_then_cached() {
    let s = site(SiteOptions::default());
    let token = s.idp.access_token(
        "bob@example.com",
        "openid email profile groups",
        "gateway",
        600,
    );
    for _ in 0..3 {
        let r = bearer(&s, &token).await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
    assert_eq!(s.idp.stats()["userinfo_calls"], 1);
    assert_eq!(
        s.up.requests()[0].header("x-forwarded-email"),
        "bob@example.com"
    );
    let r = bearer(&s, "opaque-but-unknown-token").await;
    assert_eq!(r.status, 401, "{}", r.text());
}

#[tokio::test]
async fn with_the_provider_down_sessions_keep_working_and_new_logins_get_502() {
    let s = site(SiteOptions::default());
    let jar = s.logged_in("alice@example.com").await;
    let token = s
        .idp
        .access_token("bob@example.com", "openid email", "gateway", 600);
    s.idp.set_down(true);
    let r = s.browse("/app", &jar).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = s.browse("/login?rd=/app", &Jar::default()).await;
    // Discovery was fetched before: the login starts; the provider's page is down, not ours.
    assert_eq!(r.status, 302);
    let r = bearer(&s, &token).await;
    assert_eq!(r.status, 502, "{}", r.text());
    assert_eq!(r.json()["error"], "identity_provider_unavailable");
    s.idp.set_down(false);
    assert_eq!(bearer(&s, &token).await.status, 200);
}

#[tokio::test]
async fn a_gateway_that_never_reached_the_provider_answers_502() {
    let s = site(SiteOptions::default());
    s.idp.set_down(true);
    let r = s.browse("/app", &Jar::default()).await;
    assert_eq!(r.status, 502, "{}", r.text());
    assert_eq!(r.json()["error"], "identity_provider_unavailable");
}

#[tokio::test]
async fn thirty_two_concurrent_requests_of_an_expiring_session_make_one_refresh() {
    let s = site(SiteOptions {
        token_ttl: 6,
        refresh_before: 3,
        ..Default::default()
    });
    let jar = s.logged_in("alice@example.com").await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    let before = s.idp.stats()["refresh_calls"].as_u64().unwrap();
    let cookie = jar.header();
    let mut all = Vec::new();
    for _ in 0..32 {
        let addr = s.gw.addr;
        let cookie = cookie.clone();
        all.push(tokio::spawn(async move {
            get_with(
                addr,
                "/app",
                &[("accept", "application/json"), ("cookie", &cookie)],
            )
            .await
        }));
    }
    let mut refreshed = Jar::default();
    for r in all {
        let r = r.await.unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        refreshed.take(&r);
    }
    assert_eq!(s.idp.stats()["refresh_calls"].as_u64().unwrap() - before, 1);
    let new = refreshed
        .session()
        .expect("the refreshed session is sent back");
    assert_ne!(Some(new), jar.session());
    let r = get_with(
        s.gw.addr,
        "/app",
        &[
            ("accept", "application/json"),
            ("cookie", &refreshed.header()),
        ],
    )
    .await;
    assert_eq!(r.status, 200);
}

#[tokio::test]
async fn a_refused_refresh_ends_the_session_cleanly() {
    let s = site(SiteOptions {
        token_ttl: 6,
        refresh_before: 3,
        ..Default::default()
    });
    let jar = s.logged_in("alice@example.com").await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    let json = ("accept", "application/json");
    let cookie = jar.header();
    // Node one refreshes and the provider rotates the refresh token...
    assert_eq!(
        get_with(s.gw.addr, "/app", &[json, ("cookie", &cookie)])
            .await
            .status,
        200
    );
    // ...so node two, with the same old cookie, is refused: the session ends, no loop.
    // (Its own process in a cluster; here a different provider timeout keeps the two
    // in-process nodes from sharing one refresh.)
    let other_plugin = PLUGIN.replace("timeout_ms: 2000", "timeout_ms: 2001");
    let other = gateway(
        &s.idp,
        s.up.addr(),
        sluicegate_testkit::free_port(),
        &SiteOptions {
            plugin: &other_plugin,
            token_ttl: 6,
            refresh_before: 3,
            ..Default::default()
        },
    );
    let r = get_with(other.addr, "/app", &[json, ("cookie", &cookie)]).await;
    assert_eq!(r.status, 401, "{}", r.text());
    assert_eq!(r.json()["error"], "login_required");
    assert!(r
        .header_all("set-cookie")
        .iter()
        .any(|c| c.contains("Max-Age=0")));
    let page = get_with(other.addr, "/app", &[PAGE, ("cookie", &cookie)]).await;
    assert_eq!(page.status, 302, "a page load goes to log in again");
}

#[tokio::test]
async fn the_token_page_shows_the_id_token_after_login() {
    let s = site(SiteOptions::default());
    let (r, jar) = s.login("alice@example.com", "?token=true").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let page = r.text();
    let start = page.find("readonly rows=\"12\" cols=\"100\">").unwrap() + 30;
    let token = &page[start..page[start..].find('<').unwrap() + start];
    assert_eq!(token.split('.').count(), 3, "{page}");
    assert!(jar.session().is_some());
    // The token it shows works as a bearer token.
    assert_eq!(bearer(&s, token).await.status, 200);
}

#[tokio::test]
async fn logout_clears_the_session_and_ends_the_providers() {
    let s = site(SiteOptions::default());
    let jar = s.logged_in("alice@example.com").await;
    let r = s.browse("/logout", &jar).await;
    assert_eq!(r.status, 302);
    let location = r.header("location");
    assert!(
        location.starts_with(&format!("{}/session/end", s.idp.issuer())),
        "{location}"
    );
    assert!(location.contains("client_id=gateway"), "{location}");
    assert!(location.contains("post_logout_redirect_uri="), "{location}");
    let mut after = jar.clone();
    after.take(&r);
    assert!(after.session().is_none());
    assert_eq!(s.browse("/app", &after).await.status, 302);
}

#[tokio::test]
async fn the_iap_example_runs_as_its_comment_says() {
    use crate::support::bin::Process;
    let port = sluicegate_testkit::free_port();
    let idp = provider(port, 3600);
    let up = upstream();
    let issuer = idp.issuer();
    let public = format!("http://127.0.0.1:{port}");
    let upstream_addr = up.addr().to_string();
    let port_text = port.to_string();
    let example = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/iap.yaml");
    let _gw = Process::start_with_env(
        &example,
        &[
            ("OIDC_ISSUER", &issuer),
            ("OIDC_CLIENT_ID", "gateway"),
            ("OIDC_CLIENT_SECRET", CLIENT_SECRET),
            ("SESSION_SECRET", SESSION_A),
            ("ALLOWED_DOMAINS", "example.org, example.com"),
            ("PUBLIC_URL", &public),
            ("UPSTREAM", &upstream_addr),
            ("PORT", &port_text),
            ("ADMIN_PORT", "0"),
        ],
    );
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let r = get_with(addr, "/login?rd=/hello", &[PAGE]).await;
    assert_eq!(r.status, 302, "{}", r.text());
    let mut jar = Jar::default();
    jar.take(&r);
    let auth = r.header("location").to_string();
    assert!(
        auth.contains(&format!(
            "redirect_uri={}",
            urlencode(&format!("{public}/login/callback"))
        )),
        "{auth}"
    );
    let callback = idp.login(&auth, "alice@example.com", "pw");
    let path = callback.strip_prefix(&public).unwrap().to_string();
    let cookies = jar.header();
    let r = get_with(addr, &path, &[PAGE, ("cookie", &cookies)]).await;
    assert_eq!(r.status, 302, "{}", r.text());
    jar.take(&r);
    let r = get_with(addr, "/hello", &[PAGE, ("cookie", &jar.header())]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.text().contains("hello alice@example.com"), "{}", r.text());
    assert_eq!(
        up.only_request().header("x-forwarded-email"),
        "alice@example.com"
    );
}

/// A WebSocket echo server that keeps the handshake headers it was sent.
#[allow(clippy::result_large_err)] // the handshake callback's type is tungstenite's
fn recording_websocket_echo() -> (RawUpstream, Arc<Mutex<Vec<http::HeaderMap>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let kept = seen.clone();
    let up = RawUpstream::start(move |stream| {
        let kept = kept.clone();
        async move {
            use futures_util::{SinkExt, StreamExt};
            use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
            let record = |req: &Request, resp: Response| {
                kept.lock().unwrap().push(req.headers().clone());
                Ok(resp)
            };
            let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(stream, record).await else {
                return;
            };
            while let Some(Ok(msg)) = ws.next().await {
                if msg.is_text() && ws.send(msg).await.is_err() {
                    break;
                }
            }
        }
    });
    (up, seen)
}

#[tokio::test]
async fn websocket_upgrades_pass_with_a_session_and_get_401_without_one() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use tokio_tungstenite::tungstenite::Message;

    let s = site(SiteOptions::default());
    let jar = s.logged_in("alice@example.com").await;
    // Another node with the same secret, in front of a WebSocket server.
    let (echo, seen) = recording_websocket_echo();
    let port = sluicegate_testkit::free_port();
    let gw = gateway(&s.idp, echo.addr(), port, &SiteOptions::default());
    let url = format!("ws://{}/socket", gw.addr);

    let mut req = url.as_str().into_client_request().unwrap();
    let cookies = format!("theme=dark; {}", jar.header());
    req.headers_mut().insert("cookie", cookies.parse().unwrap());
    req.headers_mut()
        .insert("x-forwarded-email", "mallory@example.com".parse().unwrap());
    let (mut ws, resp) =
        crate::support::within("WebSocket handshake", tokio_tungstenite::connect_async(req))
            .await
            .expect("a session's upgrade passes");
    assert_eq!(resp.status(), 101);
    ws.send(Message::text("hello")).await.unwrap();
    let echoed = crate::support::within("echo", ws.next())
        .await
        .expect("a message")
        .unwrap();
    assert_eq!(echoed, Message::text("hello"));
    ws.close(None).await.unwrap();
    {
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 1);
        let h = &seen[0];
        let all: Vec<_> = h.get_all("x-forwarded-email").iter().collect();
        assert_eq!(all, ["alice@example.com"]);
        assert_eq!(h["cookie"], "theme=dark");
    }

    // Without a session: 401 with the login URL, and the upstream never sees the upgrade.
    let err = tokio_tungstenite::connect_async(url.as_str())
        .await
        .expect_err("no session, no upgrade");
    match err {
        tokio_tungstenite::tungstenite::Error::Http(resp) => assert_eq!(resp.status(), 401),
        other => panic!("expected a 401 answer, got {other:?}"),
    }
    assert_eq!(echo.accepted(), 1);
}
