//! The `jwt` plugin end to end: bearer tokens checked at the gateway, claims forwarded as
//! headers, RFC 6750 challenges, and keys from an in-test JWKS server that rotates them.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Empty;
use serde_json::{json, Value};

use crate::support::client::full;
use crate::support::jwt::{self, claims, sign, RSA_A, RSA_A_PUB, RSA_B, SECRET};
use crate::support::upstream::Seen;
use crate::support::{request, send, Config, RawUpstream, Upstream};

async fn get_with_token(
    addr: std::net::SocketAddr,
    path: &str,
    token: &str,
) -> crate::support::client::Reply {
    let req = request("GET", path)
        .header("authorization", format!("Bearer {token}"))
        .header("x-user", "spoofed")
        .body(Empty::<Bytes>::new())
        .unwrap();
    send(addr, req).await
}

#[tokio::test]
async fn jwt_checks_bearer_tokens_and_forwards_chosen_claims() {
    let up = Upstream::echo();
    let secrets = jwt::secret_dir();
    let gw = Config::new(&format!(
        r#"
secrets: {{jwt_hs: {{file: "{{{{secrets}}}}/hs"}}}}
upstreams: [{{name: app, targets: ["{{{{app}}}}"]}}]
routes:
  - name: api
    upstream: app
    plugins:
      - name: jwt
        config:
          keys:
            - {{kid: hs, secret: "${{secret:jwt_hs}}"}}
            - {{kid: rs, pem: {RSA_A_PUB:?}}}
          issuer: https://idp.example
          audience: api
          realm: example
          claims_to_headers: {{sub: X-User, org.region: X-Region}}
"#
    ))
    .var("app", up.addr())
    .var("secrets", secrets.path().display())
    .start();

    let good = claims(json!({"iss": "https://idp.example", "aud": "api", "org": {"region": "eu"}}));
    for token in [
        sign("HS256", SECRET, Some("hs"), &good),
        sign("RS256", RSA_A, Some("rs"), &good),
    ] {
        let reply = get_with_token(gw.addr, "/orders", &token).await;
        assert_eq!(reply.status, 200, "{}", reply.text());
    }
    let seen = up.requests();
    assert_eq!(seen.len(), 2);
    for s in &seen {
        assert_eq!(s.header_all("x-user"), ["alice"]);
        assert_eq!(s.header("x-region"), "eu");
        // The token itself is forwarded unless `strip_token` is set.
        assert!(s.header("authorization").starts_with("Bearer "));
    }

    let missing = gw.get("/orders").await;
    assert_eq!(missing.status, 401);
    assert_eq!(
        missing.header("www-authenticate"),
        "Bearer realm=\"example\""
    );
    let body = missing.json();
    assert_eq!(body["error"], "missing_token");
    assert_eq!(body["request_id"], missing.header("x-request-id"));

    let expired =
        claims(json!({"iss": "https://idp.example", "aud": "api", "exp": jwt::now() - 120}));
    let reply = get_with_token(gw.addr, "/orders", &sign("HS256", SECRET, None, &expired)).await;
    assert_eq!(reply.status, 401);
    assert_eq!(
        reply.header("www-authenticate"),
        "Bearer realm=\"example\", error=\"invalid_token\", error_description=\"the token has expired\""
    );
    assert_eq!(reply.json()["error"], "invalid_token");

    let foreign = sign("RS256", RSA_B, Some("rs"), &good);
    let reply = get_with_token(gw.addr, "/orders", &foreign).await;
    assert_eq!(reply.status, 401);
    assert!(reply
        .header("www-authenticate")
        .contains("signature is invalid"));
    assert_eq!(
        up.requests().len(),
        2,
        "rejected requests never reach the upstream"
    );
}

/// A JWKS server whose document the test replaces; counts its requests.
struct JwksServer {
    up: Upstream,
    doc: Arc<Mutex<Value>>,
}

impl JwksServer {
    fn start(keys: Vec<Value>) -> JwksServer {
        let doc = Arc::new(Mutex::new(json!({ "keys": keys })));
        let serving = doc.clone();
        let up = Upstream::start(move |_: Seen| {
            let body = serving.lock().unwrap().to_string();
            async move {
                http::Response::builder()
                    .header("content-type", "application/jwk-set+json")
                    .body(full(body))
                    .unwrap()
            }
        });
        JwksServer { up, doc }
    }

    fn rotate(&self, keys: Vec<Value>) {
        *self.doc.lock().unwrap() = json!({ "keys": keys });
    }

    fn fetches(&self) -> usize {
        self.up.requests().len()
    }
}

/// A gateway whose one route checks tokens against `jwks_url`, and its echo upstream.
fn jwks_gateway(
    jwks_url: &str,
    min_refetch_ms: u64,
    timeout_ms: u64,
) -> (crate::support::TestGateway, Upstream) {
    let up = Upstream::echo();
    let gw = Config::new(&format!(
        r#"
upstreams: [{{name: app, targets: ["{{{{app}}}}"]}}]
routes:
  - name: api
    upstream: app
    plugins:
      - name: jwt
        config:
          jwks:
            url: {jwks_url}
            refresh_interval_ms: 3600000
            min_refetch_interval_ms: {min_refetch_ms}
            timeout_ms: {timeout_ms}
"#
    ))
    .var("app", up.addr())
    .start();
    (gw, up)
}

#[tokio::test]
async fn jwks_keys_are_fetched_and_an_unknown_kid_triggers_a_refetch() {
    let server = JwksServer::start(vec![jwt::jwk(RSA_A, "a")]);
    let (gw, _up) = jwks_gateway(&format!("http://{}/jwks.json", server.up.addr()), 300, 5000);

    let t = sign("RS256", RSA_A, Some("a"), &claims(json!({})));
    assert_eq!(get_with_token(gw.addr, "/", &t).await.status, 200);
    assert_eq!(server.fetches(), 1);
    // Cached: more requests, no more fetches.
    assert_eq!(get_with_token(gw.addr, "/", &t).await.status, 200);
    assert_eq!(server.fetches(), 1);

    // The issuer rotates in key "b" (and Ed25519 and P-256 keys); after the rate-limit window, a
    // token signed with "b" makes the gateway refetch, and is accepted.
    server.rotate(vec![
        jwt::jwk(RSA_A, "a"),
        jwt::jwk(RSA_B, "b"),
        jwt::jwk(jwt::ED25519, "e"),
        jwt::jwk(jwt::P256, "p"),
    ]);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let tb = sign("RS256", RSA_B, Some("b"), &claims(json!({})));
    let reply = get_with_token(gw.addr, "/", &tb).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(server.fetches(), 2);
    let te = sign("EdDSA", jwt::ED25519, Some("e"), &claims(json!({})));
    assert_eq!(get_with_token(gw.addr, "/", &te).await.status, 200);
    let tp = sign("ES256", jwt::P256, Some("p"), &claims(json!({})));
    assert_eq!(get_with_token(gw.addr, "/", &tp).await.status, 200);
    assert_eq!(server.fetches(), 2);

    // Key "a" retired: its tokens fail once the gateway refetches.
    server.rotate(vec![jwt::jwk(RSA_B, "b")]);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let tc = sign("RS256", RSA_A, Some("c"), &claims(json!({})));
    assert_eq!(get_with_token(gw.addr, "/", &tc).await.status, 401);
    assert_eq!(server.fetches(), 3);
    assert_eq!(get_with_token(gw.addr, "/", &t).await.status, 401);
}

#[tokio::test]
async fn unknown_kids_cannot_make_the_gateway_refetch_more_than_once_per_interval() {
    let server = JwksServer::start(vec![jwt::jwk(RSA_A, "a")]);
    // A long interval: everything below happens well inside it.
    let (gw, _up) = jwks_gateway(
        &format!("http://{}/jwks.json", server.up.addr()),
        600_000,
        5000,
    );
    let t = sign("RS256", RSA_A, Some("a"), &claims(json!({})));
    assert_eq!(get_with_token(gw.addr, "/", &t).await.status, 200);
    assert_eq!(server.fetches(), 1);
    for i in 0..5 {
        let kid = format!("unknown-{i}");
        let bogus = sign("RS256", RSA_A, Some(&kid), &claims(json!({})));
        let reply = get_with_token(gw.addr, "/", &bogus).await;
        assert_eq!(reply.status, 401);
        assert!(reply.header("www-authenticate").contains("no key matches"));
    }
    // Even a real rotation waits for the interval: the rate limit holds.
    server.rotate(vec![jwt::jwk(RSA_A, "a"), jwt::jwk(RSA_B, "b")]);
    let tb = sign("RS256", RSA_B, Some("b"), &claims(json!({})));
    assert_eq!(get_with_token(gw.addr, "/", &tb).await.status, 401);
    assert_eq!(
        server.fetches(),
        1,
        "unknown kids never caused a second fetch"
    );
    assert_eq!(get_with_token(gw.addr, "/", &t).await.status, 200);
}

#[tokio::test]
async fn a_hanging_or_broken_jwks_server_gives_a_clear_503() {
    let silent = RawUpstream::silent();
    let (gw, _up) = jwks_gateway(&format!("http://{}/jwks.json", silent.addr()), 60_000, 300);
    let t = sign("RS256", RSA_A, Some("a"), &claims(json!({})));
    let reply = get_with_token(gw.addr, "/", &t).await;
    assert_eq!(reply.status, 503);
    assert_eq!(reply.json()["error"], "unavailable");
    assert!(reply.json()["message"]
        .as_str()
        .unwrap()
        .contains("signing keys"));

    let broken =
        Upstream::start(|_: Seen| async { http::Response::new(full("<html>not json</html>")) });
    let (gw, _up) = jwks_gateway(&format!("http://{}/jwks.json", broken.addr()), 60_000, 2000);
    let reply = get_with_token(gw.addr, "/", &t).await;
    assert_eq!(reply.status, 503);
    // The failed fetch is not repeated for every request inside the interval.
    assert_eq!(get_with_token(gw.addr, "/", &t).await.status, 503);
    assert_eq!(broken.requests().len(), 1);

    // A server error, and a document over `max_bytes` (1 MiB by default).
    let failing = Upstream::start(|_: Seen| async {
        http::Response::builder()
            .status(500)
            .body(full("oops"))
            .unwrap()
    });
    let huge_doc = json!({"keys": [jwt::jwk(RSA_A, "a")], "pad": "x".repeat(2 << 20)});
    let huge = Upstream::start(move |_: Seen| {
        let body = huge_doc.to_string();
        async move { http::Response::new(full(body)) }
    });
    for server in [&failing, &huge] {
        let (gw, _up) = jwks_gateway(&format!("http://{}/jwks.json", server.addr()), 60_000, 5000);
        let reply = get_with_token(gw.addr, "/", &t).await;
        assert_eq!(reply.status, 503, "{}", reply.text());
    }
}

#[tokio::test]
async fn lua_scripts_read_the_verified_claims() {
    let up = Upstream::echo();
    let secrets = jwt::secret_dir();
    let gw = Config::new(
        r#"
secrets: {jwt_hs: {file: "{{secrets}}/hs"}}
upstreams: [{name: app, targets: ["{{app}}"]}]
routes:
  - name: api
    upstream: app
    plugins:
      - name: jwt
        config: {keys: [{secret: "${secret:jwt_hs}"}], optional: true}
      - name: lua
        config:
          name: plans
          phase: access
          code: |
            local claims = sluicegate.jwt.claims()
            if not claims then
              ngx.req.set_header("X-Anonymous", "1")
              return
            end
            if claims.plan ~= "pro" then return ngx.exit(403) end
            ngx.req.set_header("X-Plan", claims.plan .. ":" .. claims.org.name .. ":" .. #claims.roles)
      - name: lua
        config:
          name: tag
          phase: header_filter
          code: |
            local c = sluicegate.jwt.claims()
            ngx.header["X-Subject"] = c and c.sub or "none"
"#,
    )
    .var("app", up.addr())
    .var("secrets", secrets.path().display())
    .start();

    let pro = claims(json!({"plan": "pro", "org": {"name": "acme"}, "roles": ["a", "b"]}));
    let reply = get_with_token(gw.addr, "/", &sign("HS256", SECRET, None, &pro)).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.header("x-subject"), "alice");
    assert_eq!(up.only_request().header("x-plan"), "pro:acme:2");

    let free = claims(json!({"plan": "free"}));
    let reply = get_with_token(gw.addr, "/", &sign("HS256", SECRET, None, &free)).await;
    assert_eq!(reply.status, 403);

    let reply = gw.get("/").await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("x-subject"), "none");
    assert_eq!(up.requests().last().unwrap().header("x-anonymous"), "1");
}

#[tokio::test]
async fn configured_keys_without_a_kid_do_not_hide_published_ones() {
    let server = JwksServer::start(vec![jwt::jwk(RSA_A, "a")]);
    let up = Upstream::echo();
    let b_pub = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/keys/rsa-b.pub.pem"
    ))
    .unwrap();
    let gw = Config::new(&format!(
        r#"
upstreams: [{{name: app, targets: ["{{{{app}}}}"]}}]
routes:
  - name: api
    upstream: app
    plugins:
      - name: jwt
        config:
          keys: [{{pem: {b_pub:?}}}]
          jwks: {{url: "http://{{{{jwks}}}}/jwks.json"}}
"#
    ))
    .var("app", up.addr())
    .var("jwks", server.up.addr())
    .start();
    let from_jwks = sign("RS256", RSA_A, Some("a"), &claims(json!({})));
    assert_eq!(get_with_token(gw.addr, "/", &from_jwks).await.status, 200);
    let from_config = sign("RS256", RSA_B, Some("any"), &claims(json!({})));
    assert_eq!(get_with_token(gw.addr, "/", &from_config).await.status, 200);
    let neither = sign("RS256", jwt::RSA_A, Some("b"), &claims(json!({})));
    let reply = get_with_token(gw.addr, "/", &neither).await;
    assert_eq!(reply.status, 401);
    assert!(reply
        .header("www-authenticate")
        .contains("signature is invalid"));
}

#[tokio::test]
async fn jwks_is_fetched_over_https_with_a_private_ca() {
    let certs = tempfile::tempdir().unwrap();
    let cert = crate::support::tls::SelfSigned::write_to(certs.path());
    let doc = json!({"keys": [jwt::jwk(RSA_A, "a")]}).to_string();
    let server = Upstream::start_tls(cert.server_config(&[b"http/1.1"]), move |_: Seen| {
        let body = doc.clone();
        async move { http::Response::new(full(body)) }
    });
    let up = Upstream::echo();
    let config = |tls: &str| {
        Config::new(&format!(
            r#"
upstreams: [{{name: app, targets: ["{{{{app}}}}"]}}]
routes:
  - name: api
    upstream: app
    plugins:
      - name: jwt
        config:
          jwks:
            url: "https://127.0.0.1:{{{{port}}}}/jwks.json"
            tls: {tls}
"#
        ))
        .var("app", up.addr())
        .var("port", server.addr().port())
        .var("certs", certs.path().display())
        .start()
    };
    let t = sign("RS256", RSA_A, Some("a"), &claims(json!({})));
    let trusted = config("{ca_file: \"{{certs}}/cert.pem\", sni: localhost}");
    assert_eq!(get_with_token(trusted.addr, "/", &t).await.status, 200);
    // The web roots do not know the test CA: the fetch fails, the request gets 503.
    let untrusted = config("{sni: localhost, verify: true}");
    assert_eq!(get_with_token(untrusted.addr, "/", &t).await.status, 503);
}

#[tokio::test]
async fn a_reload_keeps_the_fetched_jwks() {
    let server = JwksServer::start(vec![jwt::jwk(RSA_A, "a")]);
    let up = Upstream::echo();
    let config = |realm: &str| {
        Config::new(&format!(
            r#"
upstreams: [{{name: app, targets: ["{{{{app}}}}"]}}]
routes:
  - name: api
    upstream: app
    plugins:
      - name: jwt
        config:
          realm: {realm}
          jwks: {{url: "http://{{{{jwks}}}}/jwks.json"}}
"#
        ))
        .var("app", up.addr())
        .var("jwks", server.up.addr())
    };
    let gw = config("one").start();
    let t = sign("RS256", RSA_A, Some("a"), &claims(json!({})));
    assert_eq!(get_with_token(gw.addr, "/", &t).await.status, 200);
    assert_eq!(server.fetches(), 1);
    gw.rewrite_config(&config("two"));
    assert_eq!(gw.admin_post("/reload").await.status, 200);
    assert_eq!(
        gw.get("/").await.header("www-authenticate"),
        "Bearer realm=\"two\""
    );
    assert_eq!(get_with_token(gw.addr, "/", &t).await.status, 200);
    assert_eq!(
        server.fetches(),
        1,
        "the new configuration used the cached keys"
    );
}

#[tokio::test]
async fn a_request_waiting_for_the_jwks_does_not_hold_up_its_worker() {
    let silent = RawUpstream::silent();
    let up = Upstream::echo();
    // One worker: if the wait blocked it, the second request could not be served.
    let gw = Config::new(
        r#"
upstreams: [{name: app, targets: ["{{app}}"]}]
routes:
  - name: open
    match: {paths: /open}
    upstream: app
  - name: api
    upstream: app
    plugins:
      - name: jwt
        config:
          jwks: {url: "http://{{jwks}}/jwks.json", timeout_ms: 30000}
"#,
    )
    .var("app", up.addr())
    .var("jwks", silent.addr())
    .start();
    let t = sign("RS256", RSA_A, Some("a"), &claims(json!({})));
    let addr = gw.addr;
    let waiting = tokio::spawn(async move { get_with_token(addr, "/api", &t).await });
    // Let the first request reach the gateway and start waiting for the JWKS.
    crate::support::eventually("the JWKS fetch started", || async { silent.accepted() > 0 }).await;
    assert_eq!(gw.get("/open").await.status, 200);
    assert!(
        !waiting.is_finished(),
        "the open route was served while the token request still waited"
    );
    // The JWKS never answers: the waiting request would get 503 after `timeout_ms`.
    waiting.abort();
}
