//! Dynamic code: the code API (lua-resty-dynacode's document as is, ETags, offline start,
//! bad answers), the watched directory, admin pushes, and reloads under load.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::{Empty, Full};

use crate::support::client::{full, Conn};
use crate::support::{eventually, metric, request, send, Config, TestGateway, Upstream};

/// lua-resty-dynacode's README example, byte for byte.
const README_DOC: &str = include_str!("../../examples/dynacode/response.json");

#[derive(Clone)]
struct ApiState {
    doc: String,
    etag: bool,
    status: u16,
    delay: Option<Duration>,
}

/// A code API: serves one document (with ETags unless turned off), can fail or hang.
struct CodeApi {
    up: Upstream,
    state: Arc<Mutex<ApiState>>,
}

impl CodeApi {
    fn start(doc: &str) -> CodeApi {
        let state = Arc::new(Mutex::new(ApiState {
            doc: doc.to_string(),
            etag: true,
            status: 200,
            delay: None,
        }));
        let shared = state.clone();
        let up = Upstream::start(move |seen| {
            let st = shared.lock().unwrap().clone();
            async move {
                if let Some(d) = st.delay {
                    tokio::time::sleep(d).await;
                }
                let tag = format!(
                    "\"{}\"",
                    st.doc.len() * 31 + st.doc.bytes().map(usize::from).sum::<usize>()
                );
                let mut resp = Response::builder().status(st.status);
                if st.etag && st.status == 200 {
                    if seen.header("if-none-match") == tag {
                        return Response::builder()
                            .status(304)
                            .body(Full::new(Bytes::new()))
                            .unwrap();
                    }
                    resp = resp.header("etag", tag);
                }
                resp.header("content-type", "application/json")
                    .body(Full::new(Bytes::from(st.doc)))
                    .unwrap()
            }
        });
        CodeApi { up, state }
    }

    fn set(&self, doc: &str) {
        self.state.lock().unwrap().doc = doc.to_string();
    }

    fn edit(&self, f: impl FnOnce(&mut ApiState)) {
        f(&mut self.state.lock().unwrap());
    }

    fn url(&self) -> String {
        format!("http://{}/code.json", self.up.addr())
    }

    fn polls(&self) -> usize {
        self.up.requests().len()
    }
}

/// A gateway polling `api` every `interval` seconds, with `extra` lines in `code:`.
fn gateway(api_url: &str, interval: f64, extra: &str, data_dir: &str) -> TestGateway {
    Config::new(&format!(
        r#"
data_dir: {data_dir}
code:
  api:
    url: {api_url}
    interval_secs: {interval}
    timeout_ms: 1000
    headers: {{Authorization: "Bearer s3cret"}}
{extra}
routes:
  - name: dynamic
"#
    ))
    .start()
}

fn host_get(host: &str, path: &str) -> http::Request<Empty<Bytes>> {
    request("GET", path)
        .header("host", host)
        .body(Empty::new())
        .unwrap()
}

async fn get_host(addr: SocketAddr, host: &str, path: &str) -> crate::support::client::Reply {
    send(addr, host_get(host, path)).await
}

/// A document with one script per (domain, name, phase, code).
fn doc(status: &str, scripts: &[(&str, &str, &str, &str)]) -> String {
    let domains: Vec<serde_json::Value> = scripts
        .iter()
        .map(|(domain, name, phase, code)| {
            serde_json::json!({"name": domain, "plugins": [{"name": name, "phase": phase, "code": code}]})
        })
        .collect();
    serde_json::json!({"general": {"status": status, "skip_domains": []}, "domains": domains})
        .to_string()
}

async fn metrics(gw: &TestGateway) -> String {
    gw.admin_get("/metrics").await.text()
}

async fn wait_for_body(addr: SocketAddr, host: &str, want: &'static str) {
    let host = host.to_string();
    eventually(&format!("`{want}` is served"), || {
        let host = host.clone();
        async move { get_host(addr, &host, "/").await.text() == want }
    })
    .await;
}

#[tokio::test]
async fn serves_lua_resty_dynacodes_readme_document_unchanged() {
    let api = CodeApi::start(README_DOC);
    let gw = gateway(&api.url(), 0.2, "", "{{dir}}/data");
    let addr = gw.addr;
    eventually("the document is loaded", || async move {
        get_host(addr, "dynamic.local.com", "/?token=token")
            .await
            .status
            == 200
    })
    .await;

    let ok = get_host(addr, "dynamic.local.com", "/?token=token").await;
    assert_eq!(ok.text(), "olá mundo!\nhello world!\n");
    assert_eq!(
        ok.header("access-control-allow-origin"),
        "http://dynamic.local.com"
    );
    assert_eq!(ok.header("set-cookie"), "superstition=token");

    let cookie = send(
        addr,
        request("GET", "/")
            .header("host", "dynamic.local.com")
            .header("cookie", "superstition=token")
            .body(Empty::<Bytes>::new())
            .unwrap(),
    )
    .await;
    assert_eq!(cookie.status, 200);

    let denied = get_host(addr, "dynamic.local.com", "/").await;
    assert_eq!(denied.status, StatusCode::FORBIDDEN);
    assert_eq!(
        denied.header("access-control-allow-origin"),
        "http://dynamic.local.com",
        "header_filter scripts run on the access phase's answer too"
    );

    // skip_domains: `[\w\d\.\-]*server.local.com` hosts run no script at all.
    let skipped = get_host(addr, "api.server.local.com", "/?token=token").await;
    assert_eq!(skipped.status, 404);
    assert_eq!(skipped.json()["error"], "no_route");
    // A host no domain matches.
    assert_eq!(get_host(addr, "other.example", "/").await.status, 404);

    let seen = api.up.requests();
    assert_eq!(seen[0].header("authorization"), "Bearer s3cret");
    let scripts = gw.admin_get("/scripts").await.json();
    let list = scripts["scripts"].as_array().unwrap();
    assert_eq!(list.len(), 3, "{scripts}");
    assert!(list
        .iter()
        .all(|s| s["status"] == "active" && s["source"] == "api"));
    let status = gw.admin_get("/status").await.json();
    let source = &status["code"]["sources"]["api"];
    assert_eq!(source["location"], api.url().as_str());
    assert!(source["last_check_at"].is_string(), "{status}");
}

#[tokio::test]
async fn a_change_is_live_within_an_interval_and_unchanged_documents_are_not_recompiled() {
    let api = CodeApi::start(&doc(
        "enabled",
        &[
            ("*", "body", "content", "ngx.say('v1')"),
            ("*", "tag", "header_filter", "ngx.header['X-Tag'] = 'a'"),
        ],
    ));
    let gw = gateway(&api.url(), 0.2, "", "{{dir}}/data");
    wait_for_body(gw.addr, "any.host", "v1\n").await;
    let compiled = |m: &str| metric(m, "sluicegate_code_compiles_total{result=\"ok\"}").unwrap();
    assert_eq!(compiled(&metrics(&gw).await), 2.0);

    api.set(&doc(
        "enabled",
        &[
            ("*", "body", "content", "ngx.say('v2')"),
            ("*", "tag", "header_filter", "ngx.header['X-Tag'] = 'a'"),
        ],
    ));
    wait_for_body(gw.addr, "any.host", "v2\n").await;
    assert_eq!(
        compiled(&metrics(&gw).await),
        3.0,
        "only the changed script is compiled"
    );

    // With ETags, an unchanged document is one 304.
    let polls = api.polls();
    let admin = gw.admin;
    eventually("a few more polls", || async move {
        let m = crate::support::get(admin, "/metrics").await.text();
        metric(&m, "sluicegate_code_fetches_total{result=\"not_modified\"}").unwrap() >= 3.0
    })
    .await;
    assert!(api.polls() > polls);
    let last = api.up.requests().pop().unwrap();
    assert!(last.header("if-none-match").starts_with('"'), "{last:?}");

    // Without ETags, the same body is recognised and nothing is compiled either.
    api.edit(|s| s.etag = false);
    eventually("unchanged documents are counted", || async move {
        let m = crate::support::get(admin, "/metrics").await.text();
        metric(&m, "sluicegate_code_unchanged_total").unwrap() >= 2.0
    })
    .await;
    let m = metrics(&gw).await;
    assert_eq!(compiled(&m), 3.0, "{m}");
    assert_eq!(
        metric(&m, "sluicegate_code_compiles_total{result=\"failed\"}"),
        Some(0.0)
    );
    assert!(metric(&m, "sluicegate_code_api_last_success_timestamp_seconds").unwrap() > 1.6e9);
    let r = get_host(gw.addr, "any.host", "/").await;
    assert_eq!((r.text().as_str(), r.header("x-tag")), ("v2\n", "a"));
}

#[tokio::test]
async fn compile_errors_are_skipped_and_reported_while_the_others_load() {
    let api = CodeApi::start(&doc(
        "enabled",
        &[
            ("*", "broken", "access", "local a = 1\nif a then\n"),
            ("*", "body", "content", "ngx.say('still here')"),
        ],
    ));
    let gw = gateway(&api.url(), 0.2, "", "{{dir}}/data");
    wait_for_body(gw.addr, "h", "still here\n").await;

    let scripts = gw.admin_get("/scripts").await.json();
    let broken = scripts["scripts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "*/broken")
        .cloned()
        .unwrap();
    assert_eq!(broken["status"], "failed");
    assert_eq!(broken["version"], serde_json::Value::Null);
    assert_eq!(broken["last_error"]["line"], 3, "{broken}");
    let m = metrics(&gw).await;
    assert_eq!(
        metric(&m, "sluicegate_code_compiles_total{result=\"failed\"}"),
        Some(1.0)
    );
    let status = gw.admin_get("/status").await.json();
    let error = status["code"]["sources"]["api"]["last_error"]
        .as_str()
        .unwrap_or("")
        .to_string();
    assert!(error.contains("*/broken"), "{status}");

    // A broken new version of a running script keeps the running one (never fail open).
    api.set(&doc(
        "enabled",
        &[
            ("*", "broken", "access", "local a = 1\nif a then\n"),
            ("*", "body", "content", "ngx.say('still here')\nif"),
        ],
    ));
    let admin = gw.admin;
    eventually("the second failure is reported", || async move {
        let m = crate::support::get(admin, "/metrics").await.text();
        metric(&m, "sluicegate_code_compiles_total{result=\"failed\"}") == Some(2.0)
    })
    .await;
    assert_eq!(get_host(gw.addr, "h", "/").await.text(), "still here\n");
    let scripts = gw.admin_get("/scripts").await.json();
    assert!(scripts["scripts"]
        .as_array()
        .unwrap()
        .iter()
        .any(|s| s["name"] == "*/body" && s["status"] == "stale"));
}

#[tokio::test]
async fn status_disabled_turns_the_scripts_off() {
    let scripts = [("*", "body", "content", "ngx.say('on')")];
    let api = CodeApi::start(&doc("enabled", &scripts));
    let gw = gateway(&api.url(), 0.2, "", "{{dir}}/data");
    wait_for_body(gw.addr, "h", "on\n").await;

    api.set(&doc("disabled", &scripts));
    let addr = gw.addr;
    eventually("scripts are off", || async move {
        get_host(addr, "h", "/").await.status == 404
    })
    .await;
    let list = gw.admin_get("/scripts").await.json();
    assert_eq!(list["scripts"][0]["status"], "disabled");

    api.set(&doc("enabled", &scripts));
    wait_for_body(gw.addr, "h", "on\n").await;
}

#[tokio::test]
async fn domains_are_regexes_searched_in_the_host_and_star_matches_every_host() {
    let api = CodeApi::start(&doc(
        "enabled",
        &[
            ("^api\\.", "api", "content", "ngx.say('api')"),
            ("*", "tag", "header_filter", "ngx.header['X-All'] = '1'"),
            ("example", "ex", "access", "ngx.header['X-Ex'] = '1'"),
        ],
    ));
    let gw = gateway(&api.url(), 0.2, "", "{{dir}}/data");
    wait_for_body(gw.addr, "api.example.com", "api\n").await;
    let r = get_host(gw.addr, "api.example.com:8080", "/").await;
    assert_eq!(
        (r.header("x-all"), r.header("x-ex")),
        ("1", "1"),
        "{:?}",
        r.headers
    );
    let other = get_host(gw.addr, "www.other.org", "/").await;
    assert_eq!(other.status, 404);
    assert_eq!(other.header("x-all"), "1");
    assert_eq!(other.header("x-ex"), "");
}

#[tokio::test]
async fn the_last_good_document_is_served_when_the_code_api_is_down_at_start() {
    let data = tempfile::tempdir().unwrap();
    let data_dir = data.path().display().to_string();
    let api = CodeApi::start(&doc("enabled", &[("*", "b", "content", "ngx.say('kept')")]));
    let url = api.url();
    {
        let gw = gateway(&url, 0.2, "", &data_dir);
        wait_for_body(gw.addr, "h", "kept\n").await;
        // Persisted once applied.
        let file = data.path().join("code/api.json");
        eventually("the document is persisted", || {
            let file = file.clone();
            async move { file.exists() }
        })
        .await;
    }
    drop(api);

    let gw = gateway(&url, 0.2, "", &data_dir);
    assert_eq!(get_host(gw.addr, "h", "/").await.text(), "kept\n");
    let admin = gw.admin;
    eventually("the failed poll is reported", || async move {
        let s = crate::support::get(admin, "/status").await.json();
        s["code"]["sources"]["api"]["last_result"] == "error"
    })
    .await;
    let status = gw.admin_get("/status").await.json();
    let api_state = &status["code"]["sources"]["api"];
    assert_eq!(api_state["offline"], true, "{status}");
    assert!(api_state["last_error"]
        .as_str()
        .unwrap()
        .contains("connect"));
    assert_eq!(get_host(gw.addr, "h", "/").await.text(), "kept\n");
}

#[tokio::test]
async fn bad_code_api_answers_never_disturb_the_running_version() {
    let api = CodeApi::start(&doc("enabled", &[("*", "b", "content", "ngx.say('good')")]));
    let gw = Config::new(&format!(
        "data_dir: '{{{{dir}}}}/data'\ncode:\n  api: {{url: '{}', interval_secs: 0.1, timeout_ms: 300, max_bytes: 2048}}\nroutes: [{{name: dynamic}}]\n",
        api.url()
    ))
    .start();
    wait_for_body(gw.addr, "h", "good\n").await;
    let admin = gw.admin;
    let result = |want: &'static str| async move {
        eventually(&format!("last_result {want}"), || async move {
            let s = crate::support::get(admin, "/status").await.json();
            s["code"]["sources"]["api"]["last_result"] == want
        })
        .await;
    };

    api.set("{\"domains\": 7}");
    result("rejected").await;
    assert_eq!(get_host(gw.addr, "h", "/").await.text(), "good\n");

    api.set(&format!("{{\"pad\": \"{}\"}}", "x".repeat(4096)));
    result("error").await;
    let status = gw.admin_get("/status").await.json();
    assert!(
        status["code"]["sources"]["api"]["last_error"]
            .as_str()
            .unwrap()
            .contains("max_bytes"),
        "{status}"
    );
    assert_eq!(get_host(gw.addr, "h", "/").await.text(), "good\n");

    api.set(&doc(
        "enabled",
        &[("*", "b", "content", "ngx.say('better')")],
    ));
    api.edit(|s| s.delay = Some(Duration::from_secs(5)));
    eventually("the hanging poll times out", || async move {
        let s = crate::support::get(admin, "/status").await.json();
        s["code"]["sources"]["api"]["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("timeout_ms"))
    })
    .await;
    assert_eq!(get_host(gw.addr, "h", "/").await.text(), "good\n");

    api.edit(|s| {
        s.delay = None;
        s.status = 500;
    });
    result("error").await;
    api.edit(|s| s.status = 200);
    wait_for_body(gw.addr, "h", "better\n").await;
    let m = metrics(&gw).await;
    assert!(metric(&m, "sluicegate_code_fetches_total{result=\"error\"}").unwrap() >= 2.0);
    assert!(metric(&m, "sluicegate_code_updates_rejected_total").unwrap() >= 1.0);
}

#[tokio::test]
async fn all_or_nothing_rejects_an_update_with_a_broken_script() {
    let api = CodeApi::start(&doc("enabled", &[("*", "b", "content", "ngx.say('one')")]));
    let gw = gateway(&api.url(), 0.2, "  all_or_nothing: true", "{{dir}}/data");
    wait_for_body(gw.addr, "h", "one\n").await;
    api.set(&doc(
        "enabled",
        &[
            ("*", "b", "content", "ngx.say('two')"),
            ("*", "bad", "access", "if"),
        ],
    ));
    let admin = gw.admin;
    eventually("the update is rejected", || async move {
        let s = crate::support::get(admin, "/status").await.json();
        s["code"]["sources"]["api"]["last_result"] == "rejected"
    })
    .await;
    assert_eq!(get_host(gw.addr, "h", "/").await.text(), "one\n");
}

#[tokio::test]
async fn a_watched_directory_applies_changes_within_a_second() {
    let dir = tempfile::tempdir().unwrap();
    let scripts = dir.path().join("scripts");
    std::fs::create_dir(&scripts).unwrap();
    std::fs::write(scripts.join("hello.content.lua"), "ngx.say('from a file')").unwrap();
    let gw = Config::new(&format!(
        "data_dir: '{{{{dir}}}}/data'\ncode:\n  directory: {{path: '{}'}}\nroutes: [{{name: dynamic}}]\n",
        scripts.display()
    ))
    .start();
    // Loaded at start, before the first request.
    assert_eq!(get_host(gw.addr, "h", "/").await.text(), "from a file\n");

    std::fs::write(
        scripts.join("hello.content.lua"),
        "-- domain: ^only\\.\nngx.say('changed')",
    )
    .unwrap();
    wait_for_body(gw.addr, "only.example", "changed\n").await;
    assert_eq!(get_host(gw.addr, "h", "/").await.status, 404);

    std::fs::write(scripts.join("deny.access.lua"), "return ngx.exit(403)").unwrap();
    let addr = gw.addr;
    eventually("a new file applies", || async move {
        get_host(addr, "only.example", "/").await.status == 403
    })
    .await;
    std::fs::remove_file(scripts.join("deny.access.lua")).unwrap();
    wait_for_body(gw.addr, "only.example", "changed\n").await;

    std::fs::write(scripts.join("oops.access.lua"), "if").unwrap();
    let admin = gw.admin;
    eventually("the broken file is reported", || async move {
        let s = crate::support::get(admin, "/scripts").await.json();
        s["scripts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["name"] == "oops.access.lua" && s["status"] == "failed")
    })
    .await;
    assert_eq!(
        get_host(gw.addr, "only.example", "/").await.text(),
        "changed\n"
    );
}

#[tokio::test]
async fn admin_pushes_list_and_delete_scripts() {
    let gw = Config::new("data_dir: '{{dir}}/data'\ncode: {}\nroutes: [{name: dynamic}]\n").start();
    let put = |name: &str, body: &str, query: &str| {
        request("PUT", &format!("/scripts/{name}{query}"))
            .body(full(body.to_string()))
            .unwrap()
    };
    let r = send(
        gw.admin,
        put("hello", "ngx.say('pushed')", "?phase=content"),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["script"]["status"], "active");
    assert_eq!(get_host(gw.addr, "h", "/").await.text(), "pushed\n");

    let json = request("PUT", "/scripts/tag")
        .header("content-type", "application/json")
        .body(full(
            r#"{"phase": "header_filter", "code": "ngx.header['X-Pushed'] = 'yes'", "domain": "^h$"}"#,
        ))
        .unwrap();
    assert_eq!(send(gw.admin, json).await.status, 200);
    assert_eq!(get_host(gw.addr, "h", "/").await.header("x-pushed"), "yes");

    // A broken version is refused whole; the running one keeps serving.
    let bad = send(gw.admin, put("hello", "ngx.say('x')\nif", "?phase=content")).await;
    assert_eq!(bad.status, 422);
    let body = bad.json();
    assert_eq!(
        (body["error"].as_str(), body["line"].as_u64()),
        (Some("script_error"), Some(2)),
        "{body}"
    );
    assert_eq!(get_host(gw.addr, "h", "/").await.text(), "pushed\n");

    let bad_phase = send(gw.admin, put("x", "return", "?phase=nope")).await;
    assert_eq!(bad_phase.status, 400);

    let list = gw.admin_get("/scripts").await.json();
    let names: Vec<&str> = list["scripts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["hello", "tag"]);
    assert!(list["scripts"][0]["version"].as_str().unwrap().len() == 16);

    let del = request("DELETE", "/scripts/hello")
        .body(Empty::<Bytes>::new())
        .unwrap();
    assert_eq!(send(gw.admin, del).await.status, 200);
    assert_eq!(get_host(gw.addr, "h", "/").await.status, 404);
    let again = request("DELETE", "/scripts/hello")
        .body(Empty::<Bytes>::new())
        .unwrap();
    assert_eq!(send(gw.admin, again).await.status, 404);
    assert!(gw.dir.path().join("data/code/admin.json").exists());
}

#[tokio::test]
async fn pushed_scripts_require_user_modules_and_a_reload_swaps_them() {
    let gw = Config::new(
        "data_dir: '{{dir}}/data'\nlua: {package_path: .}\ncode: {}\nroutes: [{name: dynamic}]\n",
    )
    .file("greeting.lua", "return { text = 'from v1' }")
    .start();
    let push = request("PUT", "/scripts/hello?phase=content")
        .body(full("ngx.say(require('greeting').text)"))
        .unwrap();
    assert_eq!(send(gw.admin, push).await.status, 200);
    assert_eq!(get_host(gw.addr, "h", "/").await.text(), "from v1\n");
    std::fs::write(
        gw.dir.path().join("greeting.lua"),
        "return { text = 'from v2' }",
    )
    .unwrap();
    assert_eq!(gw.admin_post("/reload").await.status, 200);
    assert_eq!(get_host(gw.addr, "h", "/").await.text(), "from v2\n");
    // A module that no longer compiles is a rejected reload: v2 keeps serving.
    std::fs::write(gw.dir.path().join("greeting.lua"), "return {").unwrap();
    let refused = gw.admin_post("/reload").await;
    assert_ne!(refused.status, 200);
    assert!(
        refused.text().contains("greeting.lua"),
        "{}",
        refused.text()
    );
    assert_eq!(get_host(gw.addr, "h", "/").await.text(), "from v2\n");
}

#[tokio::test]
async fn admin_pushes_need_a_code_section() {
    let gw = Config::new(
        "routes: [{name: r, plugins: [{name: request_termination, config: {status: 200}}]}]\n",
    )
    .start();
    let r = send(
        gw.admin,
        request("PUT", "/scripts/x?phase=access")
            .body(full("return"))
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 409);
    assert_eq!(r.json()["error"], "code_disabled");
}

/// Routes: `/lua` answered by a configured script whose text changes with `n`, everything
/// else proxied to `up`.
fn under_load_config(n: usize) -> String {
    format!(
        r#"workers: 2
drain_timeout_ms: 2000
listeners: [{{address: '127.0.0.1:0'}}]
admin: {{address: '127.0.0.1:0'}}
access_log: {{target: 'off'}}
upstreams: [{{name: app, targets: ['{{{{up}}}}']}}]
routes:
  - name: lua
    match: {{paths: '= /lua'}}
    plugins: [{{name: lua, config: {{phase: content, code: "ngx.say('v{n}')"}}}}]
  - name: app
    upstream: app
"#
    )
}

#[tokio::test]
async fn fifty_reloads_under_keep_alive_load_fail_no_request() {
    let up = Upstream::echo();
    let gw = Config::new("routes: [{name: placeholder, plugins: [{name: request_termination}]}]")
        .start();
    let render = |n| under_load_config(n).replace("{{up}}", &up.addr().to_string());
    gw.write_config_text(&render(0));
    assert_eq!(gw.admin_post("/reload").await.status, 200);

    let addr = gw.addr;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut clients = Vec::new();
    for path in ["/lua", "/proxied"] {
        let stop = stop.clone();
        clients.push(tokio::spawn(async move {
            let mut conn: Conn<Empty<Bytes>> = Conn::h1(addr).await;
            let (mut ok, mut failed) = (0usize, Vec::new());
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let req = request("GET", path).body(Empty::new()).unwrap();
                match conn.try_send(req).await {
                    Ok(r) if r.status == 200 => ok += 1,
                    Ok(r) => failed.push(format!("{} {}", r.status, r.text())),
                    Err(e) => {
                        failed.push(e);
                        break;
                    }
                }
            }
            (ok, failed)
        }));
    }
    for n in 1..=50 {
        gw.write_config_text(&render(n));
        let r = gw.admin_post("/reload").await;
        assert_eq!(r.status, 200, "{}", r.text());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for c in clients {
        let (ok, failed) = c.await.unwrap();
        assert!(failed.is_empty(), "failed requests: {failed:?}");
        assert!(ok > 0);
    }
    assert_eq!(gw.get("/lua").await.text(), "v50\n");
    assert_eq!(
        gw.admin_get("/status").await.json()["config"]["version"],
        52
    );
}

#[tokio::test]
async fn a_watched_config_file_reloads_itself_and_a_bad_one_is_rejected() {
    let config = |body: &str| {
        Config::new(&format!(
            "watch_config: true\nroutes: [{{name: r, plugins: [{{name: request_termination, config: {{status: 200, body: {body}}}}}]}}]\n"
        ))
    };
    let gw = config("one").start();
    assert_eq!(gw.get("/").await.text(), "one");
    gw.rewrite_config(&config("two"));
    let addr = gw.addr;
    eventually("the edited file applies", || async move {
        crate::support::get(addr, "/").await.text() == "two"
    })
    .await;

    gw.write_config_text("watch_config: true\nlisteners: [{address: '127.0.0.1:0'}]\nroutes: [{name: r, upstream: missing}]\n");
    let admin = gw.admin;
    eventually("the bad file is rejected", || async move {
        let m = crate::support::get(admin, "/metrics").await.text();
        metric(&m, "sluicegate_config_reload_failures_total") == Some(1.0)
    })
    .await;
    assert_eq!(gw.get("/").await.text(), "two");
    let status = gw.admin_get("/status").await.json();
    assert_eq!(status["config"]["version"], 2);
}

#[tokio::test]
async fn a_reload_that_turns_on_watch_config_starts_watching() {
    let config = |watch: bool, body: &str| {
        Config::new(&format!(
            "watch_config: {watch}\nroutes: [{{name: r, plugins: [{{name: request_termination, config: {{status: 200, body: {body}}}}}]}}]\n"
        ))
    };
    let gw = config(false, "one").start();
    assert_eq!(gw.get("/").await.text(), "one");
    gw.rewrite_config(&config(true, "two"));
    let reload = gw.admin_post("/reload").await;
    assert_eq!(reload.status, 200, "{}", reload.text());
    assert_eq!(gw.get("/").await.text(), "two");
    // Only the watcher applies this edit: nothing else asks for a reload.
    gw.rewrite_config(&config(true, "three"));
    let addr = gw.addr;
    eventually("the watched file applies", || async move {
        crate::support::get(addr, "/").await.text() == "three"
    })
    .await;
}

#[tokio::test]
async fn restart_only_changes_are_reported_by_a_reload() {
    let gw = Config::new("routes: [{name: r, plugins: [{name: request_termination}]}]").start();
    gw.write_config_text(
        "workers: 3\nlisteners: [{address: '127.0.0.1:0'}, {address: '127.0.0.1:0'}]\nadmin: {address: '127.0.0.1:0'}\nroutes: [{name: r, plugins: [{name: request_termination}]}]\n",
    );
    let r = gw.admin_post("/reload").await;
    assert_eq!(r.status, 200);
    let changes = r.json()["needs_restart"].to_string();
    assert!(
        changes.contains("listeners") && changes.contains("workers"),
        "{changes}"
    );
}

#[tokio::test]
async fn runs_the_dynacode_example_as_documented() {
    let api = CodeApi::start(README_DOC);
    let data = tempfile::tempdir().unwrap();
    let example = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/dynacode.yaml");
    let url = api.url();
    let data_dir = data.path().display().to_string();
    let process = crate::support::bin::Process::start_with_env(
        &example,
        &[
            ("PORT", "0"),
            ("ADMIN_PORT", "0"),
            ("WORKERS", "1"),
            ("CODE_API_URL", &url),
            ("DATA_DIR", &data_dir),
        ],
    );
    let addr = process.addr;
    eventually("the README document answers", || async move {
        get_host(addr, "dynamic.local.com", "/?token=token")
            .await
            .text()
            == "olá mundo!\nhello world!\n"
    })
    .await;
    let file = data.path().join("code/api.json");
    eventually("the document is persisted in DATA_DIR", || {
        let file = file.clone();
        async move { file.exists() }
    })
    .await;
}

#[tokio::test]
async fn a_failing_dynamic_script_gets_a_500_like_any_script_and_is_counted() {
    let gw = Config::new(
        "data_dir: '{{dir}}/data'\ncode: {admin_scripts: true}\nroutes: [{name: dynamic}]\n",
    )
    .start();
    let push = request("PUT", "/scripts/boom?phase=access")
        .body(full("local t = nil\nreturn t.x"))
        .unwrap();
    assert_eq!(send(gw.admin, push).await.status, 200);
    let r = get_host(gw.addr, "h", "/").await;
    assert_eq!(r.status, 500);
    assert_eq!(r.json()["request_id"], r.header("x-request-id"));
    let m = metrics(&gw).await;
    assert_eq!(
        metric(
            &m,
            "sluicegate_script_failures_total{script=\"boom\",kind=\"error\"}"
        ),
        Some(1.0),
        "{m}"
    );
}

#[tokio::test]
async fn a_reload_that_narrows_code_phases_takes_those_scripts_out_without_recompiling() {
    let config = |phases: &str| {
        Config::new(&format!(
            "data_dir: '{{{{dir}}}}/data'\ncode: {{phases: [{phases}]}}\nroutes: [{{name: dynamic}}]\n"
        ))
    };
    let gw = config("access, content, header_filter").start();
    for (name, phase, code) in [
        ("body", "content", "ngx.say('hi')"),
        ("tag", "header_filter", "ngx.header['X-Tag'] = '1'"),
    ] {
        let push = request("PUT", &format!("/scripts/{name}?phase={phase}"))
            .body(full(code))
            .unwrap();
        assert_eq!(send(gw.admin, push).await.status, 200);
    }
    assert_eq!(get_host(gw.addr, "h", "/").await.header("x-tag"), "1");

    gw.rewrite_config(&config("access, content"));
    assert_eq!(gw.admin_post("/reload").await.status, 200);
    let r = get_host(gw.addr, "h", "/").await;
    assert_eq!((r.text().as_str(), r.header("x-tag")), ("hi\n", ""));
    let list = gw.admin_get("/scripts").await.json();
    let tag = list["scripts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "tag")
        .cloned()
        .unwrap();
    assert_eq!(tag["status"], "failed");
    assert!(tag["last_error"]["message"]
        .as_str()
        .unwrap()
        .contains("code.phases"));
    let m = metrics(&gw).await;
    assert_eq!(
        metric(&m, "sluicegate_code_compiles_total{result=\"ok\"}"),
        Some(2.0)
    );
}

#[tokio::test]
async fn dynamic_scripts_filter_proxied_responses_of_the_hosts_they_match() {
    let up = Upstream::start(|_| async { Response::new(Full::new(Bytes::from("hello body"))) });
    let gw = Config::new(
        "data_dir: '{{dir}}/data'\ncode: {}\nupstreams: [{name: app, targets: ['{{app}}']}]\nroutes: [{name: all, upstream: app}]\n",
    )
    .var("app", up.addr())
    .start();
    let push = request("PUT", "/scripts/shout?phase=body_filter&domain=%5Eloud%24")
        .body(full("ngx.arg[1] = string.upper(ngx.arg[1])"))
        .unwrap();
    assert_eq!(send(gw.admin, push).await.status, 200);

    let quiet = get_host(gw.addr, "quiet", "/path").await;
    assert_eq!(quiet.status, 200);
    assert!(
        !quiet.header("content-length").is_empty(),
        "no body filter applies: the length is kept"
    );
    assert_eq!(quiet.text(), "hello body");

    let loud = get_host(gw.addr, "loud", "/path").await;
    assert_eq!(loud.status, 200);
    assert_eq!(loud.text(), "HELLO BODY");
    assert_eq!(loud.header("content-length"), "");
}

async fn push_script(admin: SocketAddr, name: &str, phase: &str, code: &str) {
    let req = request("PUT", &format!("/scripts/{name}?phase={phase}"))
        .body(full(code.to_string()))
        .unwrap();
    let r = send(admin, req).await;
    assert_eq!(r.status, 200, "{}", r.text());
}

#[tokio::test]
async fn a_request_in_flight_finishes_on_the_code_it_started_with() {
    // The access script waits on an upstream the test releases: the request is certainly
    // in flight (its code pinned) when the new version is pushed.
    let release = Arc::new(tokio::sync::Semaphore::new(0));
    let gate = release.clone();
    let hold = Upstream::start(move |_| {
        let gate = gate.clone();
        async move {
            let _ = gate.acquire().await.unwrap();
            Response::new(Full::new(Bytes::from("go")))
        }
    });
    let gw = Config::new("data_dir: '{{dir}}/data'\ncode: {}\nroutes: [{name: dynamic}]\n").start();
    let wait = format!(
        "if ngx.var.http_x_wait then sluicegate.http.request('http://{}/') end",
        hold.addr()
    );
    push_script(gw.admin, "wait", "access", &wait).await;
    push_script(gw.admin, "body", "content", "ngx.say('v1')").await;

    let addr = gw.addr;
    let in_flight = tokio::spawn(async move {
        let req = request("GET", "/")
            .header("host", "h")
            .header("x-wait", "1")
            .body(Empty::<Bytes>::new())
            .unwrap();
        send(addr, req).await.text()
    });
    eventually("the access script is waiting", || {
        let n = hold.requests().len();
        async move { n == 1 }
    })
    .await;
    push_script(gw.admin, "body", "content", "ngx.say('v2')").await;
    assert_eq!(get_host(addr, "h", "/").await.text(), "v2\n");
    release.add_permits(1);
    assert_eq!(in_flight.await.unwrap(), "v1\n");
}

#[tokio::test]
async fn fifty_code_swaps_under_keep_alive_load_fail_no_request() {
    let gw = Config::new("data_dir: '{{dir}}/data'\ncode: {}\nroutes: [{name: dynamic}]\n")
        .workers(2)
        .start();
    push_script(gw.admin, "body", "content", "ngx.say('v0')").await;
    let addr = gw.addr;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut clients = Vec::new();
    for _ in 0..2 {
        let stop = stop.clone();
        clients.push(tokio::spawn(async move {
            let mut conn: Conn<Empty<Bytes>> = Conn::h1(addr).await;
            let (mut ok, mut failed) = (0usize, Vec::new());
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                match conn.try_send(host_get("h", "/")).await {
                    Ok(r) if r.status == 200 && r.text().starts_with('v') => ok += 1,
                    Ok(r) => failed.push(format!("{} {}", r.status, r.text())),
                    Err(e) => {
                        failed.push(e);
                        break;
                    }
                }
            }
            (ok, failed)
        }));
    }
    for n in 1..=50 {
        push_script(gw.admin, "body", "content", &format!("ngx.say('v{n}')")).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for c in clients {
        let (ok, failed) = c.await.unwrap();
        assert!(failed.is_empty(), "failed requests: {failed:?}");
        assert!(ok > 0);
    }
    assert_eq!(get_host(addr, "h", "/").await.text(), "v50\n");
}

#[tokio::test]
async fn an_https_code_api_is_verified_against_the_configured_ca() {
    let certs = tempfile::tempdir().unwrap();
    let cert = crate::support::tls::SelfSigned::write_to(certs.path());
    let document = doc("enabled", &[("*", "b", "content", "ngx.say('over tls')")]);
    let api = Upstream::start_tls(cert.server_config(&[b"http/1.1"]), move |_| {
        let body = document.clone();
        async move { Response::new(Full::new(Bytes::from(body))) }
    });
    let url = format!("https://localhost:{}/code.json", api.addr().port());
    let ca = certs.path().join("cert.pem").display().to_string();

    // The built-in web roots do not trust a self-signed certificate.
    let untrusted = Config::new(&format!(
        "data_dir: '{{{{dir}}}}/data'\ncode:\n  api: {{url: '{url}', interval_secs: 0.2}}\nroutes: [{{name: dynamic}}]\n"
    ))
    .start();
    let admin = untrusted.admin;
    eventually("the certificate is refused", || async move {
        let s = crate::support::get(admin, "/status").await.json();
        s["code"]["sources"]["api"]["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("TLS"))
    })
    .await;
    assert_eq!(get_host(untrusted.addr, "h", "/").await.status, 404);

    let trusted = Config::new(&format!(
        "data_dir: '{{{{dir}}}}/data'\ncode:\n  api: {{url: '{url}', interval_secs: 0.2, ca_file: '{ca}'}}\nroutes: [{{name: dynamic}}]\n"
    ))
    .start();
    wait_for_body(trusted.addr, "h", "over tls\n").await;
}

#[test]
fn check_reports_bad_code_settings_with_their_lines() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.yaml");
    std::fs::write(
        &file,
        "listeners: [{address: '127.0.0.1:0'}]\n\
         code:\n\
         \x20 api:\n\
         \x20   url: ftp://example.com/x\n\
         \x20   interval_secs: 0\n\
         \x20   ca_file: missing.pem\n\
         \x20 phases: [acces]\n\
         \x20 colour: blue\n\
         routes: [{name: r}]\n",
    )
    .unwrap();
    let out = crate::support::bin::run_cli(&["check", "-c", file.to_str().unwrap()], &[]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    for expected in [
        "bad.yaml:8: code.colour",
        "code.api.url",
        "code.api.interval_secs",
        "code.api.ca_file",
        "code.phases[0]",
    ] {
        assert!(
            out.stderr.contains(expected),
            "no {expected:?} in:\n{}",
            out.stderr
        );
    }
}

#[tokio::test]
async fn poll_now_applies_a_published_change_without_waiting_for_the_interval() {
    let api = CodeApi::start(README_DOC);
    let gw = gateway(&api.url(), 3600.0, "", "{{dir}}/data");
    let addr = gw.addr;
    eventually("the first poll", || async move {
        get_host(addr, "dynamic.local.com", "/?token=token")
            .await
            .status
            == 200
    })
    .await;

    api.set(&doc(
        "enabled",
        &[("*", "body", "content", "ngx.say('now')")],
    ));
    let polled = send(
        gw.admin,
        request("POST", "/code/poll")
            .body(Empty::<Bytes>::new())
            .unwrap(),
    )
    .await;
    assert_eq!(polled.status, 200, "{}", polled.text());
    assert_eq!(polled.json()["api"]["last_result"], "updated");
    assert_eq!(get_host(addr, "h", "/").await.text(), "now\n");

    // The running source of a script, by name (names of code-API scripts contain `/`).
    let shown = gw.admin_get("/scripts/*/body").await;
    assert_eq!(shown.status, 200, "{}", shown.text());
    assert_eq!(shown.json()["scripts"][0]["code"], "ngx.say('now')");
    assert_eq!(gw.admin_get("/scripts/nope").await.status, 404);
}

#[tokio::test]
async fn poll_now_needs_a_code_api() {
    let gw = Config::new("data_dir: '{{dir}}/data'\ncode: {}\nroutes: [{name: dynamic}]\n").start();
    let r = send(
        gw.admin,
        request("POST", "/code/poll")
            .body(Empty::<Bytes>::new())
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 409);
}

#[tokio::test]
async fn a_reload_that_adds_a_code_section_serves_its_scripts_when_it_returns() {
    let gw = Config::new(
        "routes: [{name: r, upstream: app}]\nupstreams: [{name: app, targets: ['{{app}}']}]\n",
    )
    .var("app", crate::support::upstream::dead_address())
    .start();
    let scripts = gw.dir.path().join("scripts");
    std::fs::create_dir(&scripts).unwrap();
    std::fs::write(scripts.join("hi.content.lua"), "ngx.say('added')").unwrap();
    gw.write_config_text(
        "listeners: [{address: '127.0.0.1:0'}]\nadmin: {address: '127.0.0.1:0'}\naccess_log: {target: 'off'}\ndata_dir: data\ncode: {directory: {path: scripts}}\nroutes: [{name: r}]\n",
    );
    let r = gw.admin_post("/reload").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(get_host(gw.addr, "h", "/").await.text(), "added\n");
}

#[test]
fn check_code_validates_documents_directories_and_files_before_publishing() {
    use crate::support::bin::run_cli;
    let readme = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/dynacode/response.json"
    );
    let ok = run_cli(&["check-code", readme], &[]);
    assert_eq!(ok.code, 0, "{}", ok.stderr);
    assert!(ok.stdout.contains("ok (3 scripts)"), "{}", ok.stdout);

    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("fine.content.lua"), "ngx.say('x')").unwrap();
    std::fs::write(
        dir.path().join("typo.access.lua"),
        "local a = 1\nif a then\n",
    )
    .unwrap();
    let document = dir.path().join("doc.json");
    let text = doc(
        "enabled",
        &[
            ("*", "bad", "log", "x = = 1"),
            ("*", "good", "log", "return"),
        ],
    );
    std::fs::write(&document, text).unwrap();
    let out = run_cli(
        &[
            "check-code",
            dir.path().to_str().unwrap(),
            document.to_str().unwrap(),
            dir.path().join("fine.content.lua").to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(
        out.stderr.contains("typo.access.lua:3: syntax error"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("*/bad:1: syntax error"),
        "{}",
        out.stderr
    );
    assert!(
        out.stdout.contains("fine.content.lua: ok (1 script)"),
        "{}",
        out.stdout
    );

    let missing = run_cli(&["check-code", "/nonexistent/doc.json"], &[]);
    assert_eq!(missing.code, 1);
}
