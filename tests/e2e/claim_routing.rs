//! `claim_routing` end to end (the edge-routing pattern): this gateway serves region `eu`;
//! a token whose `region` claim is `eu` goes to the regional API, any other region goes
//! sideways to the edge that owns it, and regions without an upstream take the fallback or
//! get a 421.

use bytes::Bytes;
use http_body_util::Empty;
use serde_json::json;

use crate::support::jwt::{claims, sign, SECRET};
use crate::support::{request, send, Config, Upstream};

#[tokio::test]
async fn claim_routing_sends_each_region_to_its_upstream_or_the_fallback() {
    let api_eu = Upstream::echo();
    let edge_us = Upstream::echo();
    let secrets = crate::support::jwt::secret_dir();
    let gw = Config::new(
        r#"
secrets: {jwt_hs: {file: "{{secrets}}/hs"}}
upstreams:
  - {name: api-eu, targets: ["{{eu}}"]}
  - {name: edge-us, targets: ["{{us}}"]}
plugins:
  - name: jwt
    config:
      keys: [{secret: "${secret:jwt_hs}"}]
      claims_to_headers: {region: X-User-Region}
routes:
  - name: api
    match: {paths: /api/}
    plugins:
      - name: claim_routing
        config:
          rules:
            - when: {region: "${REGION:-eu}"}
              upstream: "api-${claims.region}"
            - upstream: "edge-${claims.region}"
          fallback: api-eu
  - name: strict
    match: {paths: /strict/}
    plugins:
      - name: claim_routing
        config:
          rules:
            - when: {region: eu}
              upstream: "api-${claims.region}"
            - upstream: "edge-${claims.region}"
"#,
    )
    .var("eu", api_eu.addr())
    .var("us", edge_us.addr())
    .var("secrets", secrets.path().display())
    .start();

    let get = |path: &'static str, region: &'static str| {
        let token = sign("HS256", SECRET, None, &claims(json!({"region": region})));
        let req = request("GET", path)
            .header("authorization", format!("Bearer {token}"))
            .body(Empty::<Bytes>::new())
            .unwrap();
        send(gw.addr, req)
    };

    assert_eq!(get("/api/orders", "eu").await.status, 200);
    assert_eq!(get("/api/orders", "us").await.status, 200);
    let eu_seen = api_eu.requests();
    let us_seen = edge_us.requests();
    assert_eq!(eu_seen.len(), 1);
    assert_eq!(eu_seen[0].header("x-user-region"), "eu");
    assert_eq!(us_seen.len(), 1);
    assert_eq!(us_seen[0].header("x-user-region"), "us");

    // No `edge-ap`: the fallback serves it.
    assert_eq!(get("/api/orders", "ap").await.status, 200);
    assert_eq!(api_eu.requests().len(), 2);
    assert_eq!(api_eu.requests()[1].header("x-user-region"), "ap");

    // Without a fallback: 421 JSON with the request id, and no upstream sees it.
    let reply = get("/strict/orders", "ap").await;
    assert_eq!(reply.status, 421);
    let body = reply.json();
    assert_eq!(body["error"], "misdirected_request");
    assert_eq!(body["request_id"], reply.header("x-request-id"));
    assert_eq!(get("/strict/orders", "us").await.status, 200);
    assert_eq!(api_eu.requests().len(), 2);
    assert_eq!(edge_us.requests().len(), 2);

    // Unauthenticated requests never reach routing.
    assert_eq!(gw.get("/api/orders").await.status, 401);
}
