//! Route matching precedence over real requests. Every route answers with its own name
//! (`request_termination`), and routes are listed in the reverse of their precedence so
//! configuration order cannot be what makes a test pass.

use bytes::Bytes;
use http::header::HOST;
use http_body_util::Empty;

use crate::support::{request, send, Config, TestGateway};

/// A route named `name` with `matcher` that answers 200 with its name.
fn route(name: &str, matcher: &str) -> String {
    format!(
        "  - name: {name}\n    match: {matcher}\n    plugins: [{{name: request_termination, config: {{status: 200, body: {name}}}}}]\n"
    )
}

fn gateway(routes: &[String]) -> TestGateway {
    Config::new(&format!("routes:\n{}", routes.concat())).start()
}

/// The name of the route that answered, or `404`.
async fn answered_by(
    gw: &TestGateway,
    method: &str,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> String {
    let mut req = request(method, path).header(HOST, host);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let reply = send(gw.addr, req.body(Empty::<Bytes>::new()).unwrap()).await;
    match reply.status.as_u16() {
        200 => reply.text(),
        404 => "404".to_string(),
        other => panic!("unexpected status {other}: {}", reply.text()),
    }
}

#[tokio::test]
async fn prefers_exact_host_over_wildcard_over_regex() {
    let gw = gateway(&[
        route("regex-host", r#"{hosts: "~^(api|www)\\."}"#),
        route("wildcard-host", r#"{hosts: "*.example.com"}"#),
        route("exact-host", "{hosts: api.example.com}"),
    ]);
    let by = |host: &'static str| answered_by(&gw, "GET", host, "/", &[]);

    assert_eq!(by("api.example.com").await, "exact-host");
    assert_eq!(by("API.Example.com:8080").await, "exact-host");
    assert_eq!(by("www.example.com").await, "wildcard-host");
    assert_eq!(by("deep.www.example.com").await, "wildcard-host");
    assert_eq!(by("www.other.org").await, "regex-host");
    // `*.example.com` does not take the apex.
    assert_eq!(by("example.com").await, "404");
}

#[tokio::test]
async fn prefers_exact_path_over_longest_prefix_over_regex() {
    let gw = gateway(&[
        route("regex-path", r#"{paths: "~/v[0-9]+/health$"}"#),
        route("short-prefix", "{paths: /api/}"),
        route("long-prefix", "{paths: /api/v2/}"),
        route("exact-path", r#"{paths: "= /api/v2/health"}"#),
    ]);
    let by = |path: &'static str| answered_by(&gw, "GET", "localhost", path, &[]);

    assert_eq!(by("/api/v2/health").await, "exact-path");
    assert_eq!(by("/api/v2/health?verbose=1").await, "exact-path");
    assert_eq!(by("/api/v2/healthz").await, "long-prefix");
    assert_eq!(by("/api/v1/health").await, "short-prefix");
    assert_eq!(by("/v3/health").await, "regex-path");
    assert_eq!(by("/other").await, "404");
}

#[tokio::test]
async fn matches_on_methods_and_headers() {
    let gw = gateway(&[
        route(
            "json-any-method",
            r#"{paths: /items, headers: {content-type: "~^application/json"}}"#,
        ),
        route("write", "{paths: /items, methods: [POST]}"),
        route("read", "{paths: /items, methods: [GET, HEAD]}"),
        route(
            "beta-read",
            r#"{paths: /items, methods: GET, headers: {x-beta: "on"}}"#,
        ),
    ]);
    let by = |method: &'static str, headers: &'static [(&'static str, &'static str)]| {
        answered_by(&gw, method, "localhost", "/items", headers)
    };

    assert_eq!(by("GET", &[]).await, "read");
    assert_eq!(by("GET", &[("x-beta", "on")]).await, "beta-read");
    assert_eq!(by("GET", &[("x-beta", "off")]).await, "read");
    assert_eq!(by("POST", &[]).await, "write");
    assert_eq!(
        by(
            "PUT",
            &[("content-type", "application/json; charset=utf-8")]
        )
        .await,
        "json-any-method"
    );
    assert_eq!(by("PUT", &[("content-type", "text/plain")]).await, "404");
    assert_eq!(by("DELETE", &[]).await, "404");
}

#[tokio::test]
async fn answers_404_json_with_the_request_id_when_no_route_matches() {
    let gw = gateway(&[route("only", r#"{paths: "= /only"}"#)]);
    let reply = gw.get("/nothing/here").await;

    assert_eq!(reply.status, 404);
    assert_eq!(reply.header("content-type"), "application/json");
    let body = reply.json();
    assert_eq!(body["error"], "no_route");
    assert!(
        body["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    assert_eq!(body["request_id"], reply.header("x-request-id"));
    assert!(crate::support::is_uuid(reply.header("x-request-id")));
}
