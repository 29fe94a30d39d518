//! TLS toward upstreams: verification against a CA file (and its failure, as a 502 that
//! says why), SNI (the target host, an override, none for IP addresses), mutual TLS,
//! ALPN for HTTP/2, reloads that re-read the files, and load-time errors with their lines.

use bytes::Bytes;
use http::{Request, Response};
use hyper::body::Incoming;

use crate::support::bin::run_cli;
use crate::support::h2server::{AnyBody, H2Server};
use crate::support::pki::Ca;
use crate::support::{get, Config};

/// A TLS upstream answering 200 `ok <version>` to everything.
fn tls_upstream(config: std::sync::Arc<rustls::ServerConfig>) -> H2Server {
    H2Server::start_tls(config, |req: Request<Incoming>| async move {
        let text = format!("ok {:?}", req.version());
        Response::new(AnyBody::new(http_body_util::Full::new(Bytes::from(text))))
    })
}

/// A gateway with one `https` upstream `app` at `target`; `tls` is the YAML mapping of
/// its `tls:` key, `{{dir}}` the directory the test's PEM files are in.
fn gateway(target: &str, protocol: &str, tls: &str, dir: &std::path::Path) -> Config {
    Config::new(&format!(
        r#"
upstreams:
  - name: app
    targets: ["{target}"]
    scheme: https
    protocol: {protocol}
    tls: {tls}
routes: [{{name: all, upstream: app}}]
"#
    ))
    .var("pki", dir.display())
}

#[tokio::test]
async fn verifies_the_upstream_with_a_ca_file_and_sends_the_target_host_as_sni() {
    let pki = tempfile::tempdir().unwrap();
    let ca = Ca::new("test CA");
    ca.write(pki.path(), "ca.pem");
    let up = tls_upstream(
        ca.server(&["localhost"])
            .server_config(&[b"http/1.1"], None),
    );
    let target = format!("localhost:{}", up.addr().port());
    let gw = gateway(&target, "http1", "{ca_file: '{{pki}}/ca.pem'}", pki.path()).start();

    let reply = get(gw.addr, "/").await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.text(), "ok HTTP/1.1");
    let seen = up.tls_seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].sni.as_deref(), Some("localhost"));
    assert_eq!(seen[0].alpn.as_deref(), Some(&b"http/1.1"[..]));
    assert!(!seen[0].client_cert);
}

#[tokio::test]
async fn a_certificate_from_another_ca_is_refused_with_a_502_that_says_why() {
    let pki = tempfile::tempdir().unwrap();
    let (ca, other) = (Ca::new("real CA"), Ca::new("other CA"));
    other.write(pki.path(), "other.pem");
    let up = tls_upstream(
        ca.server(&["localhost", "127.0.0.1"])
            .server_config(&[], None),
    );
    let target = up.addr().to_string();
    let gw = gateway(
        &target,
        "http1",
        "{ca_file: '{{pki}}/other.pem'}",
        pki.path(),
    )
    .start();

    let reply = get(gw.addr, "/").await;
    assert_eq!(reply.status, 502);
    let body = reply.json();
    assert_eq!(body["error"], "upstream_unreachable");
    let message = body["message"].as_str().unwrap();
    assert!(message.contains("not signed by a trusted CA"), "{message}");
    assert!(message.contains("UnknownIssuer"), "{message}");
    assert_eq!(body["request_id"], reply.header("x-request-id"));
    assert!(up.tls_seen().is_empty(), "no handshake completed");
}

#[tokio::test]
async fn an_sni_override_is_sent_and_verified_instead_of_the_ip_target() {
    let pki = tempfile::tempdir().unwrap();
    let ca = Ca::new("test CA");
    ca.write(pki.path(), "ca.pem");
    let up = tls_upstream(ca.server(&["api.internal"]).server_config(&[b"h2"], None));
    let target = up.addr().to_string();

    let gw = gateway(
        &target,
        "http2",
        "{ca_file: '{{pki}}/ca.pem', sni: api.internal}",
        pki.path(),
    )
    .start();
    let reply = get(gw.addr, "/").await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.text(), "ok HTTP/2.0");
    let seen = up.tls_seen();
    assert_eq!(seen[0].sni.as_deref(), Some("api.internal"));
    assert_eq!(seen[0].alpn.as_deref(), Some(&b"h2"[..]));

    // Without the override the IP address is verified (and no SNI sent): the name does
    // not match.
    let gw = gateway(&target, "http2", "{ca_file: '{{pki}}/ca.pem'}", pki.path()).start();
    let reply = get(gw.addr, "/").await;
    assert_eq!(reply.status, 502);
    let message = reply.json()["message"].as_str().unwrap().to_string();
    assert!(message.contains("not valid for `127.0.0.1`"), "{message}");
}

#[tokio::test]
async fn mutual_tls_presents_the_client_certificate_only_when_configured() {
    let pki = tempfile::tempdir().unwrap();
    let ca = Ca::new("test CA");
    ca.write(pki.path(), "ca.pem");
    ca.client("gateway").write(pki.path(), "client");
    let up = tls_upstream(
        ca.server(&["localhost"])
            .server_config(&[b"http/1.1"], Some(&ca)),
    );
    let gw = Config::new(
        r#"
upstreams:
  - name: with
    targets: ["{{target}}"]
    scheme: https
    tls: {ca_file: '{{pki}}/ca.pem', client_cert: '{{pki}}/client.pem', client_key: '{{pki}}/client-key.pem'}
  - name: without
    targets: ["{{target}}"]
    scheme: https
    tls: {ca_file: '{{pki}}/ca.pem'}
routes:
  - {name: with, match: {paths: /with}, upstream: with}
  - {name: without, match: {paths: /without}, upstream: without}
"#,
    )
    .var("target", format!("localhost:{}", up.addr().port()))
    .var("pki", pki.path().display())
    .start();

    let reply = get(gw.addr, "/with").await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let seen = up.tls_seen();
    assert_eq!(seen.len(), 1);
    assert!(
        seen[0].client_cert,
        "the upstream saw the client certificate"
    );

    let reply = get(gw.addr, "/without").await;
    assert_eq!(reply.status, 502, "{}", reply.text());
    // TLS 1.3: the client finishes its handshake before the server checks the client's
    // certificate, so the refusal (an alert) arrives while the response is read.
    let message = reply.json()["message"].as_str().unwrap().to_string();
    assert!(message.contains("CertificateRequired"), "{message}");
    let failures = up.wait_for_handshake_failures(1).await;
    assert_eq!(failures.len(), 1, "{failures:?}");
    assert!(failures[0].contains("certificate"), "{failures:?}");
}

#[tokio::test]
async fn an_http2_upstream_must_agree_to_h2_by_alpn() {
    let pki = tempfile::tempdir().unwrap();
    let ca = Ca::new("test CA");
    ca.write(pki.path(), "ca.pem");
    // A server without ALPN: it would take the HTTP/2 preface for garbage.
    let up = tls_upstream(ca.server(&["localhost"]).server_config(&[], None));
    let target = format!("localhost:{}", up.addr().port());
    let gw = gateway(&target, "http2", "{ca_file: '{{pki}}/ca.pem'}", pki.path()).start();

    let reply = get(gw.addr, "/").await;
    assert_eq!(reply.status, 502);
    let message = reply.json()["message"].as_str().unwrap().to_string();
    assert!(message.contains("did not agree to HTTP/2"), "{message}");
}

#[tokio::test]
async fn a_reload_rereads_the_ca_file_and_stops_reusing_connections_made_with_the_old_one() {
    let pki = tempfile::tempdir().unwrap();
    let (ca, other) = (Ca::new("real CA"), Ca::new("other CA"));
    ca.write(pki.path(), "ca.pem");
    let up = tls_upstream(ca.server(&["localhost"]).server_config(&[b"h2"], None));
    let target = format!("localhost:{}", up.addr().port());
    let gw = gateway(&target, "http2", "{ca_file: '{{pki}}/ca.pem'}", pki.path()).start();
    assert_eq!(get(gw.addr, "/").await.status, 200);
    assert_eq!(get(gw.addr, "/").await.status, 200);
    assert_eq!(up.tls_seen().len(), 1, "one pooled HTTP/2 connection");

    // Same file name, another CA inside: after the reload the pooled connection (verified
    // with the old CA) is not used, and a new one fails verification.
    other.write(pki.path(), "ca.pem");
    let reply = gw.admin_post("/reload").await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let reply = get(gw.addr, "/").await;
    assert_eq!(reply.status, 502, "{}", reply.text());

    // And back: the real CA again works without a restart.
    ca.write(pki.path(), "ca.pem");
    assert_eq!(gw.admin_post("/reload").await.status, 200);
    assert_eq!(get(gw.addr, "/").await.status, 200);
}

#[test]
fn check_reports_each_tls_file_problem_with_its_path_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("test CA");
    ca.write(dir.path(), "ca.pem");
    let client = ca.client("gateway");
    client.write(dir.path(), "client");
    // A key from another certificate: does not fit `client.pem`.
    std::fs::write(dir.path().join("stranger-key.pem"), ca.client("x").key_pem).unwrap();
    std::fs::write(dir.path().join("not-pem.txt"), "hello").unwrap();
    let file = dir.path().join("tls.yaml");
    std::fs::write(
        &file,
        "upstreams:\n\
         \x20 - name: a\n\
         \x20   targets: [\"127.0.0.1:1\"]\n\
         \x20   scheme: https\n\
         \x20   tls:\n\
         \x20     ca_file: missing.pem\n\
         \x20     client_cert: client.pem\n\
         \x20     client_key: stranger-key.pem\n\
         \x20 - name: b\n\
         \x20   targets: [\"127.0.0.1:1\"]\n\
         \x20   scheme: https\n\
         \x20   tls:\n\
         \x20     ca_file: not-pem.txt\n\
         \x20     sni: \"not a name\"\n\
         \x20     client_cert: client.pem\n\
         \x20 - name: c\n\
         \x20   targets: [\"127.0.0.1:1\"]\n\
         \x20   tls: {ca_file: ca.pem}\n\
         \x20 - name: d\n\
         \x20   targets: [\"127.0.0.1:1\"]\n\
         \x20   scheme: https\n\
         \x20   tls: {verify: false, ca_file: ca.pem, roots: mozilla}\n\
         \x20 - name: e\n\
         \x20   targets: [\"127.0.0.1:1\"]\n\
         \x20   scheme: https\n\
         \x20   tls: {ca_file: ca.pem, client_cert: client.pem, client_key: client-key.pem, colour: blue}\n\
         routes:\n\
         \x20 - upstream: a\n",
    )
    .unwrap();
    let out = run_cli(&["check", "-c", file.to_str().unwrap()], &[]);

    assert_eq!(out.code, 2, "stderr: {}", out.stderr);
    let name = file.display().to_string();
    for (line, path, words) in [
        (6, "upstreams[0].tls.ca_file", "cannot read"),
        (8, "upstreams[0].tls.client_key", "does not fit"),
        (13, "upstreams[1].tls.ca_file", "no certificate"),
        (14, "upstreams[1].tls.sni", "not a valid"),
        (15, "upstreams[1].tls.client_cert", "needs `client_key`"),
        (18, "upstreams[2].tls", "scheme: https"),
        (22, "upstreams[3].tls.ca_file", "verify: false"),
        (22, "upstreams[3].tls.roots", "unknown roots `mozilla`"),
        (26, "upstreams[4].tls.colour", "unknown field"),
    ] {
        let prefix = format!("{name}:{line}: {path}: ");
        assert!(
            out.stderr
                .lines()
                .any(|l| l.starts_with(&prefix) && l.contains(words)),
            "no line starting with {prefix:?} and saying {words:?} in:\n{}",
            out.stderr
        );
    }
}

#[tokio::test]
async fn the_default_roots_are_the_system_store_which_ssl_cert_file_points_to() {
    // The real binary, so the environment variable touches no other test.
    let pki = tempfile::tempdir().unwrap();
    let ca = Ca::new("system CA");
    let bundle = ca.write(pki.path(), "system-bundle.pem");
    let up = tls_upstream(ca.server(&["localhost"]).server_config(&[b"h2"], None));
    let config = pki.path().join("sluicegate.yaml");
    std::fs::write(
        &config,
        format!(
            "listeners: [{{address: '127.0.0.1:0'}}]\n\
             admin: {{address: '127.0.0.1:0'}}\n\
             access_log: {{target: 'off'}}\n\
             upstreams:\n\
             \x20 - name: app\n\
             \x20   targets: ['localhost:{}']\n\
             \x20   scheme: https\n\
             \x20   protocol: http2\n\
             routes: [{{name: all, upstream: app}}]\n",
            up.addr().port()
        ),
    )
    .unwrap();
    let env = [
        ("SSL_CERT_FILE", bundle.to_str().unwrap()),
        ("SSL_CERT_DIR", pki.path().to_str().unwrap()),
    ];
    let process = crate::support::bin::Process::start_with_env(&config, &env);

    let reply = get(process.addr, "/").await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.text(), "ok HTTP/2.0");
    assert_eq!(up.tls_seen()[0].sni.as_deref(), Some("localhost"));

    // The same configuration with the built-in web roots does not trust the test CA.
    let builtin = std::fs::read_to_string(&config).unwrap().replace(
        "    protocol: http2\n",
        "    protocol: http2\n    tls: {roots: builtin}\n",
    );
    let check = pki.path().join("builtin.yaml");
    std::fs::write(&check, builtin).unwrap();
    let process = crate::support::bin::Process::start_with_env(&check, &env);
    let reply = get(process.addr, "/").await;
    assert_eq!(reply.status, 502, "{}", reply.text());
    assert!(reply.text().contains("UnknownIssuer"), "{}", reply.text());
}
