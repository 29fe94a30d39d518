//! Envoy Lua filters (`envoy_lua`) and user modules end to end: the two shipped examples
//! run by the real binary (seed 003's egress filter verbatim, seed 004's edge router as a
//! module behind `cluster_header`), then the stream-handle API one area per test against a
//! recording upstream: headers and pseudo-headers, bodies, metadata and stream info,
//! `respond`, `httpCall`, Envoy's error behaviour, handles used out of scope, the `json`
//! and `jwt` modules, and signature verification.

use bytes::Bytes;
use http_body_util::Empty;
use serde_json::json;

use crate::edge::{call_at, example};
use crate::support::bin::Process;
use crate::support::client::full;
use crate::support::jwt;
use crate::support::upstream::Upstream;
use crate::support::{get, request, send, Config};

fn empty() -> Empty<Bytes> {
    Empty::new()
}

/// An unsigned token (`alg: none`) carrying `claims`, as the edge post sends it.
fn raw_token(claims: serde_json::Value) -> String {
    use base64::Engine as _;
    let b = |v: &serde_json::Value| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string().as_bytes())
    };
    format!("{}.{}.sig", b(&json!({"alg": "none"})), b(&claims))
}

#[tokio::test]
async fn envoy_egress_example_runs_the_talk_s_filter_unchanged() {
    let up = Upstream::echo();
    let data = tempfile::tempdir().unwrap();
    let upstream = up.addr().to_string();
    let data_dir = data.path().to_str().unwrap();
    let mut env = vec![
        ("PORT", "0"),
        ("ADMIN_PORT", "0"),
        ("DATA_DIR", data_dir),
        ("UPSTREAM", upstream.as_str()),
        ("PROXY_KEY", "new-key"),
        ("PROXY_KEY_PREVIOUS", "old-key"),
    ];
    let process = Process::start_with_env(&example("examples/envoy-egress.yaml"), &env);
    let health = get(process.addr, "/healthcheck").await;
    assert_eq!(health.status, 200);
    assert_eq!(health.header("content-type"), "application/json");
    assert_eq!(health.text(), "{\"healthy\": \"yep\"}\n");

    let call = |key: &'static str| {
        let addr = process.addr;
        async move {
            let req = request("POST", "/v1/charges?x=1")
                .header("x-proxy-auth", key)
                .header("authorization", "Bearer upstream-token")
                .body(full("amount=1"))
                .unwrap();
            send(addr, req).await
        }
    };
    assert_eq!(call("Basic new-key").await.status, 200);
    assert_eq!(call("Basic old-key").await.status, 200, "previous key");
    let refused = call("Basic wrong").await;
    assert_eq!(refused.status, 403);
    assert_eq!(refused.text(), "{\"allowed\": \"nope\"}\n");
    assert_eq!(
        call("new-key").await.status,
        403,
        "the `Basic ` prefix is part of it"
    );
    let seen = up.requests();
    assert_eq!(seen.len(), 2, "refused requests never reach the upstream");
    for s in &seen {
        assert_eq!(s.uri.to_string(), "/v1/charges?x=1");
        assert!(s.headers.get("x-proxy-auth").is_none(), "key removed");
        assert_eq!(s.header("authorization"), "Bearer upstream-token");
        assert_eq!(s.body, "amount=1");
    }
    drop(process);

    // Without a previous key, the second placeholder is the current key: `Basic ` alone
    // (an empty previous key) must not open the door.
    env.retain(|(k, _)| *k != "PROXY_KEY_PREVIOUS");
    let process = Process::start_with_env(&example("examples/envoy-egress.yaml"), &env);
    assert_eq!(call_at(process.addr, "Basic ").await, 403);
    assert_eq!(call_at(process.addr, "Basic old-key").await, 403);
    assert_eq!(call_at(process.addr, "Basic new-key").await, 200);
}

#[tokio::test]
async fn envoy_edge_example_routes_by_the_token_s_region_through_cluster_header() {
    let (eu, us, ap) = (Upstream::echo(), Upstream::echo(), Upstream::echo());
    let data = tempfile::tempdir().unwrap();
    let (eu_addr, us_addr, ap_addr) = (
        eu.addr().to_string(),
        us.addr().to_string(),
        ap.addr().to_string(),
    );
    let env = |region: &'static str| {
        vec![
            ("PORT", "0"),
            ("ADMIN_PORT", "0"),
            ("DATA_DIR", data.path().to_str().unwrap()),
            ("HELLO_EU", eu_addr.as_str()),
            ("EDGE_US", us_addr.as_str()),
            ("EDGE_AP", ap_addr.as_str()),
            ("REGION", region),
        ]
    };
    let process = Process::start_with_env(&example("examples/envoy-edge.yaml"), &env("eu"));
    let hello = |region: &str| {
        let addr = process.addr;
        let token = raw_token(json!({"sub": "u1", "region": region}));
        async move {
            let req = request("GET", "/hello")
                .header("authorization", token)
                .body(empty())
                .unwrap();
            send(addr, req).await
        }
    };
    assert_eq!(hello("eu").await.status, 200);
    assert_eq!(hello("us").await.status, 200);
    assert_eq!(hello("ap").await.status, 200);
    assert_eq!(hello("ap").await.status, 200);
    let unknown = hello("mars").await;
    assert_eq!(
        unknown.status, 503,
        "an unknown cluster is 503, as in Envoy"
    );
    assert!(
        unknown.text().contains("edge-router-mars"),
        "{}",
        unknown.text()
    );
    // No token: the script fails (logged, counted), the request goes on, and without a
    // `region` header there is no upstream.
    assert_eq!(get(process.addr, "/hello").await.status, 503);
    assert_eq!(eu.requests().len(), 1);
    assert_eq!(us.requests().len(), 1);
    assert_eq!(ap.requests().len(), 2);
    assert_eq!(eu.only_request().header("region"), "hello-eu");
    assert_eq!(ap.requests()[0].header("region"), "edge-router-ap");
    drop(process);

    // The same module at the US edge: US users go to `hello-us`, which this edge does not
    // have (503), EU users to the EU edge router, which it does not have either.
    let process = Process::start_with_env(&example("examples/envoy-edge.yaml"), &env("us"));
    let token = raw_token(json!({"region": "us"}));
    let req = request("GET", "/hello")
        .header("authorization", token)
        .body(empty())
        .unwrap();
    let r = send(process.addr, req).await;
    assert_eq!(r.status, 503);
    assert!(r.text().contains("hello-us"), "{}", r.text());
}

/// A gateway whose `/` route runs `script` as an `envoy_lua` filter in front of `up`.
fn filter(up: &Upstream, script: &str, extra_route: &str) -> Config {
    let indented: String = script
        .lines()
        .map(|l| format!("            {l}\n"))
        .collect();
    Config::new(&format!(
        r#"
lua:
  package_path: "."
upstreams:
  - {{name: app, targets: ["{{{{app}}}}"]}}
  - {{name: side, targets: ["{{{{app}}}}"]}}
routes:
  - name: all
    upstream: app
    metadata: {{api: hello, limits: {{rps: 5}}}}
{extra_route}    plugins:
      - name: envoy_lua
        config:
          name: filter
          code: |
{indented}"#
    ))
    .var("app", up.addr())
}

#[tokio::test]
async fn headers_pseudo_headers_and_iteration_follow_envoy() {
    let up = Upstream::echo();
    let gw = filter(
        &up,
        r#"
function envoy_on_request(h)
  local hs = h:headers()
  hs:add("x-list", hs:get(":method") .. " " .. hs:get(":path") .. " " .. hs:get(":scheme") .. " " .. hs:get(":authority"))
  hs:add("x-multi-count", tostring(hs:getNumValues("x-multi")))
  hs:add("x-multi-second", hs:getAtIndex("x-multi", 1))
  hs:add("x-multi-joined", hs:get("x-multi"))
  hs:replace("x-replace", "new")
  hs:replace("x-absent", "added")
  hs:remove("x-drop")
  hs:replace(":path", "/rewritten?q=1")
  hs:replace(":method", "PUT")
  local names = {}
  for k, v in pairs(hs) do names[#names + 1] = k end
  hs:add("x-names", table.concat(names, ","))
  if hs:get("x-none") == nil and hs:getAtIndex("x-multi", 5) == nil then hs:add("x-nil", "ok") end
end
function envoy_on_response(h)
  local hs = h:headers()
  hs:add("x-upstream-status", hs:get(":status"))
  hs:replace(":status", "203")
  hs:replace("x-resp", "set")
end
"#,
        "",
    )
    .start();
    let req = request("POST", "/orig")
        .header("x-multi", "a")
        .header("x-multi", "b")
        .header("x-replace", "old")
        .header("x-drop", "1")
        .body(full("x"))
        .unwrap();
    let r = send(gw.addr, req).await;
    assert_eq!(r.status, 203);
    assert_eq!(r.header("x-upstream-status"), "200");
    assert_eq!(r.header("x-resp"), "set");
    let s = up.only_request();
    assert_eq!(s.method, "PUT");
    assert_eq!(s.uri.to_string(), "/rewritten?q=1");
    let list = s.header("x-list");
    assert_eq!(list, "POST /orig http localhost");
    assert_eq!(s.header("x-multi-count"), "2");
    assert_eq!(s.header("x-multi-second"), "b");
    assert_eq!(s.header("x-multi-joined"), "a,b");
    assert_eq!(s.header("x-replace"), "new");
    assert_eq!(s.header("x-absent"), "added");
    assert!(s.headers.get("x-drop").is_none());
    assert_eq!(s.header("x-nil"), "ok");
    let names = s.header("x-names");
    assert!(
        names.starts_with(":authority,:path,:method,:scheme,") && names.contains("x-multi"),
        "{names}"
    );
}

#[tokio::test]
async fn bodies_metadata_stream_info_and_dynamic_metadata() {
    let up = Upstream::echo();
    let gw = filter(
        &up,
        r#"
function envoy_on_request(h)
  local body = h:body()
  local hs = h:headers()
  hs:add("x-len", tostring(body:length()))
  hs:add("x-bytes", body:getBytes(0, 5))
  body:setBytes(string.upper(body:getBytes(0, body:length())) .. "!")
  local md = h:metadata()
  hs:add("x-api", md:get("api"))
  hs:add("x-rps", tostring(md:get("limits").rps))
  hs:add("x-missing", tostring(md:get("nothing")))
  local info = h:streamInfo()
  hs:add("x-proto", info:protocol())
  hs:add("x-remote", info:downstreamRemoteAddress())
  hs:add("x-ssl", tostring(h:connection():ssl()))
  info:dynamicMetadata():set("my.filter", "user", "alice")
  local ok = pcall(function() return h:getBytes() end)
  hs:add("x-b64", h:base64Escape("hi?"))
  hs:add("x-ts", tostring(h:timestamp() > 1700000000000))
end
function envoy_on_response(h)
  local dm = h:streamInfo():dynamicMetadata():get("my.filter")
  h:headers():add("x-dyn", dm and dm.user or "none")
  local ok, err = pcall(function() return h:respond({[":status"] = "500"}, "no") end)
  h:headers():add("x-respond", tostring(ok) .. ":" .. tostring(err):match("response path") )
end
"#,
        "",
    )
    .start();
    let req = request("POST", "/b").body(full("hello world")).unwrap();
    let r = send(gw.addr, req).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-dyn"), "alice", "dynamic metadata crosses hooks");
    assert_eq!(r.header("x-respond"), "false:response path");
    let s = up.only_request();
    assert_eq!(s.body, "HELLO WORLD!");
    assert_eq!(s.header("content-length"), "12");
    assert_eq!(s.header("x-len"), "11");
    assert_eq!(s.header("x-bytes"), "hello");
    assert_eq!(s.header("x-api"), "hello");
    assert_eq!(s.header("x-rps"), "5");
    assert_eq!(s.header("x-missing"), "nil");
    assert_eq!(s.header("x-proto"), "HTTP/1.1");
    assert!(s.header("x-remote").starts_with("127.0.0.1:"));
    assert_eq!(s.header("x-ssl"), "nil");
    assert_eq!(s.header("x-b64"), "aGk/");
    assert_eq!(s.header("x-ts"), "true");
}

#[tokio::test]
async fn errors_go_on_with_the_edits_made_and_misuse_raises() {
    let up = Upstream::echo();
    // A module keeps the handle of one request; the next request uses it.
    let gw = filter(
        &up,
        r#"
local keep = require "keep"
function envoy_on_request(h)
  h:headers():add("x-before", "1")
  if keep.old then
    local ok, err = pcall(function() return keep.old:headers() end)
    h:headers():add("x-old", tostring(err):match("object used outside of proper scope") or tostring(err))
  end
  keep.old = h
  if h:headers():get("x-boom") then error("boom") end
  h:headers():add("x-after", "1")
end
"#,
        "",
    )
    .file("keep.lua", "return {}")
    .start();
    let boom = request("GET", "/1")
        .header("x-boom", "1")
        .body(empty())
        .unwrap();
    assert_eq!(
        send(gw.addr, boom).await.status,
        200,
        "Envoy lets the request go on"
    );
    assert_eq!(get(gw.addr, "/2").await.status, 200);
    let seen = up.requests();
    assert_eq!(seen[0].header("x-before"), "1");
    assert!(
        seen[0].headers.get("x-after").is_none(),
        "edits after the error are not made"
    );
    // Workers each have their own module state: the second request may land on the
    // other worker, which has no old handle; when it shares one, the handle is refused.
    if let Some(v) = seen[1].headers.get("x-old") {
        assert_eq!(v, "object used outside of proper scope");
    }
    assert_eq!(seen[1].header("x-after"), "1");
    let metrics = gw.admin_get("/metrics").await.text();
    assert!(
        metrics.contains("sluicegate_script_failures_total{script=\"filter\",kind=\"error\"} 1"),
        "script errors are counted: {metrics}"
    );

    // `on_error: fail` answers 500 instead.
    let up2 = Upstream::echo();
    let gw = Config::new(
        r#"
upstreams: [{name: app, targets: ["{{app}}"]}]
routes:
  - upstream: app
    plugins:
      - name: envoy_lua
        config:
          on_error: fail
          code: |
            function envoy_on_request(h) error("strict") end
"#,
    )
    .var("app", up2.addr())
    .start();
    assert_eq!(get(gw.addr, "/").await.status, 500);
    assert!(up2.requests().is_empty());
}

#[tokio::test]
async fn http_call_reaches_a_configured_upstream_synchronously_and_fire_and_forget() {
    let up = Upstream::echo();
    let gw = filter(
        &up,
        r#"
function envoy_on_request(h)
  if h:headers():get(":path") == "/side" then return end
  local headers, body = h:httpCall("side", {[":method"] = "POST", [":path"] = "/side", [":authority"] = "side.local", ["x-from"] = "filter"}, "ping", 2000)
  h:headers():add("x-side-status", headers[":status"])
  h:headers():add("x-side-body-has-ping", tostring(string.find(body, "ping", 1, true) ~= nil))
  h:httpCall("side", {[":method"] = "GET", [":path"] = "/side", [":authority"] = "side.local"}, nil, 2000, true)
  local ok, err = pcall(function() return h:httpCall("nowhere", {[":method"] = "GET", [":path"] = "/", [":authority"] = "x"}, nil, 100) end)
  h:headers():add("x-bad-cluster", tostring(err):match("cluster invalid") or tostring(err))
  local ok2, err2 = pcall(function() return h:httpCall("side", {[":path"] = "/"}, nil, 100) end)
  h:headers():add("x-bad-headers", tostring(err2):match("must include") or tostring(err2))
end
"#,
        "",
    )
    .start();
    assert_eq!(get(gw.addr, "/main").await.status, 200);
    crate::support::eventually("the fire-and-forget call", || {
        let n = up.requests().len();
        async move { n >= 3 }
    })
    .await;
    let seen = up.requests();
    let side: Vec<_> = seen.iter().filter(|s| s.uri.path() == "/side").collect();
    assert_eq!(side.len(), 2, "one synchronous call, one fire-and-forget");
    assert!(side
        .iter()
        .any(|s| s.header("x-from") == "filter" && s.body == "ping"));
    assert!(side.iter().all(|s| s.header("host") == "side.local"));
    let main = seen.iter().find(|s| s.uri.path() == "/main").unwrap();
    assert_eq!(main.header("x-side-status"), "200");
    assert_eq!(main.header("x-side-body-has-ping"), "true");
    assert_eq!(main.header("x-bad-cluster"), "cluster invalid");
    assert_eq!(main.header("x-bad-headers"), "must include");
}

#[tokio::test]
async fn json_and_jwt_modules_and_signature_verification() {
    use base64::Engine as _;
    let up = Upstream::echo();
    let pub_der: String = jwt::RSA_A_PUB
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect();
    let signed = jwt::sign(
        "RS256",
        jwt::RSA_A,
        None,
        &jwt::claims(json!({"region": "ap"})),
    );
    let hs = jwt::sign(
        "HS256",
        jwt::SECRET,
        None,
        &jwt::claims(json!({"plan": "pro"})),
    );
    let (data, sig) = signed.rsplit_once('.').unwrap();
    let sig_std = base64::engine::general_purpose::STANDARD.encode(
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(sig)
            .unwrap(),
    );
    let script = format!(
        r#"
local json = require "json"
local jwt = require "jwt"
function envoy_on_request(h)
  local hs = h:headers()
  local t = json.decode('{{"a": [1, 2, null], "b": null, "c": "x"}}')
  hs:add("x-json", tostring(t.b) .. "," .. #t.a .. "," .. t.c .. "," .. json.encode({{n = 1}}))
  local ok = pcall(json.decode, "{{bad")
  hs:add("x-json-bad", tostring(ok))
  local claims = jwt.decode(hs:get("x-rs"))
  hs:add("x-unverified", claims.region)
  local good = jwt.decode(hs:get("x-hs"), "{secret}")
  local bad, err = jwt.decode(hs:get("x-hs"), string.rep("w", 40))
  hs:add("x-verified", tostring(good and good.plan) .. "," .. tostring(bad) .. "," .. tostring(err ~= nil))
  local der = ngx.decode_base64("{pub_der}")
  local key = h:importPublicKey(der, #der)
  local sig = ngx.decode_base64("{sig_std}")
  local data = "{data}"
  local v1 = h:verifySignature("sha256", key, sig, #sig, data, #data)
  local v2, e2 = h:verifySignature("sha256", key, sig, #sig, data .. "x", #data + 1)
  hs:add("x-sig", tostring(v1) .. "," .. tostring(v2) .. "," .. tostring(e2 ~= nil))
end
"#,
        secret = jwt::SECRET
    );
    let gw = filter(&up, &script, "").start();
    let req = request("GET", "/")
        .header("x-rs", format!("Bearer {signed}"))
        .header("x-hs", hs)
        .body(empty())
        .unwrap();
    assert_eq!(send(gw.addr, req).await.status, 200);
    let s = up.only_request();
    assert_eq!(s.header("x-json"), "nil,2,x,{\"n\":1}");
    assert_eq!(s.header("x-json-bad"), "false");
    assert_eq!(s.header("x-unverified"), "ap");
    assert_eq!(s.header("x-verified"), "pro,nil,true");
    assert_eq!(s.header("x-sig"), "true,false,true");
}

#[tokio::test]
async fn cluster_header_and_module_errors_are_checked_at_load() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("broken.lua"),
        "local M = {}\nfunction M.f(\nreturn M\n",
    )
    .unwrap();
    let config = dir.path().join("gw.yaml");
    std::fs::write(
        &config,
        "listeners: [{address: 127.0.0.1:0}]\nlua: {package_path: .}\nupstreams: [{name: a, targets: [127.0.0.1:1]}]\nroutes:\n  - upstream: a\n    cluster_header: region\n    metadata: [1]\n",
    )
    .unwrap();
    let out = crate::support::bin::run_cli(&["check", "-c", config.to_str().unwrap()], &[]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(
        out.stderr.contains("broken.lua") && out.stderr.contains(":3"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("routes[0].cluster_header"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("routes[0].metadata"), "{}", out.stderr);
}
