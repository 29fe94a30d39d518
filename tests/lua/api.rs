//! The `ngx` API over real HTTP.

use crate::support::{get, start, Conn, Upstream};

fn proxied(upstream: &Upstream, plugins: &str) -> String {
    format!(
        "upstreams:\n  - name: app\n    targets: [\"{}\"]\nroutes:\n  - name: all\n    upstream: app\n    plugins:\n{plugins}",
        upstream.addr
    )
}

fn lua(phase: &str, name: &str, code: &str) -> String {
    let code: String = code.lines().map(|l| format!("            {l}\n")).collect();
    format!("      - name: lua\n        config:\n          name: {name}\n          phase: {phase}\n          code: |\n{code}")
}

#[tokio::test]
async fn access_exit_without_a_body_answers_the_status_and_with_a_key_proxies() {
    let up = Upstream::start();
    let gw = start(
        &proxied(
            &up,
            &(lua("access", "auth", "if ngx.var.http_x_api_key ~= \"s3cret\" then\n  return ngx.exit(ngx.HTTP_UNAUTHORIZED)\nend")
                + &lua("header_filter", "mark", "ngx.header[\"X-Gateway\"] = \"lua\"")),
        ),
        &[],
    );
    let denied = get(gw.addr(), "/", &[]).await;
    assert_eq!(denied.status, 401);
    assert!(denied.text().contains("401 Unauthorized"));
    assert_eq!(
        denied.header("x-gateway"),
        "lua",
        "header_filter runs for local responses too"
    );
    assert_eq!(
        get(gw.addr(), "/", &[("x-api-key", "wrong")]).await.status,
        401
    );
    let ok = get(gw.addr(), "/", &[("x-api-key", "s3cret")]).await;
    assert_eq!(ok.status, 200);
    assert_eq!(ok.header("x-gateway"), "lua");
    assert_eq!(ok.header("x-upstream"), "yes");
}

#[tokio::test]
async fn access_exit_with_a_body_sends_the_output_and_headers() {
    let up = Upstream::start();
    let gw = start(
        &proxied(&up, &lua("access", "deny", "ngx.status = 403\nngx.header[\"Content-Type\"] = \"application/json\"\nngx.say('{\"denied\":true}')\nreturn ngx.exit(403)")),
        &[],
    );
    let r = get(gw.addr(), "/", &[]).await;
    assert_eq!(r.status, 403);
    assert_eq!(r.header("content-type"), "application/json");
    assert_eq!(r.json()["denied"], true);
}

#[tokio::test]
async fn redirects_with_location() {
    let up = Upstream::start();
    let gw = start(
        &proxied(
            &up,
            &lua(
                "rewrite",
                "go",
                "if ngx.var.uri == \"/old\" then return ngx.redirect(\"/new?from=old\", 301) end",
            ),
        ),
        &[],
    );
    let r = get(gw.addr(), "/old", &[]).await;
    assert_eq!(r.status, 301);
    assert_eq!(r.header("location"), "/new?from=old");
    assert_eq!(get(gw.addr(), "/other", &[]).await.status, 200);
}

#[tokio::test]
async fn multi_value_headers_cookies_and_args_round_trip() {
    let up = Upstream::start();
    let code = r#"
local args = ngx.req.get_uri_args()
ngx.header["Set-Cookie"] = { "x=1; Path=/", "y=2; Path=/" }
ngx.header["X-Multi"] = ngx.req.get_headers()["x-multi"]
ngx.say(ngx.var.cookie_session, "|", ngx.var.arg_q, "|", args.q, "|", table.concat(args.tag, ","), "|", ngx.var.http_x_multi)
"#;
    let gw = start(
        &format!(
            "routes:\n  - name: c\n    plugins:\n{}",
            lua("content", "echo", code)
        ),
        &[],
    );
    let _ = up;
    let r = get(
        gw.addr(),
        "/?q=a%20b+c&tag=1&tag=2",
        &[
            ("cookie", "theme=dark; session=abc"),
            ("x-multi", "one"),
            ("x-multi", "two"),
        ],
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "abc|a%20b+c|a b c|1,2|one, two\n");
    assert_eq!(
        r.header_all("set-cookie"),
        vec!["x=1; Path=/", "y=2; Path=/"]
    );
    assert_eq!(r.header_all("x-multi"), vec!["one", "two"]);
}

#[tokio::test]
async fn request_changes_reach_the_upstream_and_access_headers_reach_the_client() {
    let up = Upstream::start();
    let code = r#"
ngx.req.set_header("X-User", "alice")
ngx.req.clear_header("X-Secret")
ngx.req.set_uri_args({ page = 2 })
ngx.req.read_body()
ngx.req.set_body_data(string.upper(ngx.req.get_body_data() or ""))
ngx.header["X-From-Access"] = "1"
ngx.ctx.started = "yes"
"#;
    let filter =
        "ngx.header[\"X-Ctx\"] = ngx.ctx.started\nngx.header[\"X-Up-Status\"] = ngx.status";
    let gw = start(
        &proxied(
            &up,
            &(lua("access", "shape", code) + &lua("header_filter", "after", filter)),
        ),
        &[],
    );
    let mut conn = Conn::open(gw.addr()).await;
    let r = conn
        .send("POST", "/path?x=1", &[("x-secret", "no")], "hello")
        .await;
    assert_eq!(r.status, 200);
    let seen = r.json();
    assert_eq!(seen["headers"]["x-user"], "alice");
    assert!(seen["headers"].get("x-secret").is_none());
    assert_eq!(seen["uri"], "/path?page=2");
    assert_eq!(seen["body"], "HELLO");
    assert_eq!(r.header("x-from-access"), "1");
    assert_eq!(
        r.header("x-ctx"),
        "yes",
        "ngx.ctx is shared between the phases of one request"
    );
    assert_eq!(r.header("x-up-status"), "200");
    assert_eq!(
        r.header_all("set-cookie").len(),
        2,
        "upstream multi-value headers survive"
    );
}

#[tokio::test]
async fn content_scripts_call_upstreams_without_blocking_the_worker() {
    let up = Upstream::start();
    let code = format!(
        r#"
local res, err = sluicegate.http.request("http://{}/api?sleep_ms=" .. (ngx.var.arg_ms or "0"), {{ method = "POST", body = ngx.var.arg_id, headers = {{ ["X-Via"] = "lua" }} }})
if not res then ngx.status = 502 ngx.say(err) return end
local seen = require("cjson").decode(res.body)
ngx.say(res.status, " ", seen.body, " ", seen.headers["x-via"], " ", res.headers["x-upstream"])
"#,
        up.addr
    );
    let gw = start(
        &format!(
            "routes:\n  - name: c\n    plugins:\n{}",
            lua("content", "fetch", &code)
        ),
        &[],
    );
    let addr = gw.addr();
    // Two slow calls overlap on the one worker: both take ~300 ms, together well under 600.
    let started = std::time::Instant::now();
    let (a, b) = tokio::join!(
        get(addr, "/?id=a&ms=300", &[]),
        get(addr, "/?id=b&ms=300", &[])
    );
    let took = started.elapsed();
    assert_eq!(a.text(), "200 a lua yes\n");
    assert_eq!(b.text(), "200 b lua yes\n");
    assert!(
        took < std::time::Duration::from_millis(580),
        "calls did not overlap: {took:?}"
    );
    let failed = get(addr, "/?id=c", &[]).await;
    assert_eq!(failed.status, 200);
}

#[tokio::test]
async fn concurrent_requests_each_see_their_own_request_across_sleeps() {
    let code = "local id = ngx.var.arg_id\nngx.ctx.id = id\nmine = id\nngx.sleep(0.05)\nngx.say(id, \" \", ngx.var.arg_id, \" \", ngx.ctx.id)";
    let gw = start(
        &format!(
            "routes:\n  - name: c\n    plugins:\n{}",
            lua("content", "sleepy", code)
        ),
        &[],
    );
    let addr = gw.addr();
    let replies = futures_util::future::join_all(
        (0..20).map(|i| async move { (i, get(addr, &format!("/?id={i}"), &[]).await) }),
    )
    .await;
    for (i, r) in replies {
        assert_eq!(r.text(), format!("{i} {i} {i}\n"));
    }
}

#[tokio::test]
async fn shared_dicts_are_shared_by_all_workers_and_survive_reloads() {
    let body = format!(
        "lua:\n  shared_dicts: {{counters: 65536}}\nroutes:\n  - name: c\n    plugins:\n{}",
        lua(
            "content",
            "count",
            "local n = ngx.shared.counters:incr(\"n\", 1, 0)\nngx.say(n)"
        )
    );
    let gw = start(&format!("workers: 2\n{body}"), &[]);
    let mut last = 0;
    for _ in 0..10 {
        let r = get(gw.addr(), "/", &[]).await;
        last = r
            .text()
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{} {}", r.status, r.text()));
    }
    assert_eq!(last, 10, "both workers count into one dictionary");
    gw.gateway.shared.reload("test").await.unwrap();
    assert_eq!(get(gw.addr(), "/", &[]).await.text(), "11\n");
}

#[tokio::test]
async fn host_restricted_global_scripts_only_run_for_their_hosts() {
    let up = Upstream::start();
    let body = format!(
        "upstreams:\n  - name: app\n    targets: [\"{}\"]\nplugins:\n  - name: lua\n    config:\n      phase: access\n      hosts: [\"*.internal\"]\n      code: return ngx.exit(403)\nroutes:\n  - name: all\n    upstream: app\n",
        up.addr
    );
    let gw = start(&body, &[]);
    assert_eq!(
        get(gw.addr(), "/", &[("host", "api.internal")])
            .await
            .status,
        403
    );
    assert_eq!(
        get(gw.addr(), "/", &[("host", "example.com")]).await.status,
        200
    );
}

#[tokio::test]
async fn scripts_load_from_files_next_to_the_config() {
    let gw = start(
        "routes:\n  - name: f\n    plugins:\n      - name: lua\n        config: {phase: content, file: hello.lua}\n",
        &[("hello.lua", "local cjson = require \"cjson\"\nngx.header.content_type = \"application/json\"\nngx.say(cjson.encode({ hello = \"file\" }))\n")],
    );
    let r = get(gw.addr(), "/", &[]).await;
    assert_eq!(r.header("content-type"), "application/json");
    assert_eq!(r.json()["hello"], "file");
}

#[tokio::test]
async fn scripts_enqueue_into_durable_queues() {
    let up = Upstream::start();
    let code = "local id, err = sluicegate.queue.enqueue(\"hooks\", { method = \"POST\", path = \"/from-lua\", headers = { [\"X-Src\"] = \"lua\" }, body = \"payload\" })\nlocal none, err2 = sluicegate.queue.enqueue(\"nope\", { path = \"/\" })\nngx.say(type(id), \" \", tostring(err), \" \", tostring(none), \" \", err2)";
    let body = format!(
        "data_dir: data\nupstreams:\n  - name: app\n    targets: [\"{}\"]\nroutes:\n  - name: hooks\n    match: {{paths: /hooks/}}\n    upstream: app\n    queue: {{name: hooks}}\n  - name: lua\n    match: {{paths: = /enqueue}}\n    plugins:\n{}",
        up.addr,
        lua("content", "enqueue", code)
    );
    let gw = start(&body, &[]);
    let r = get(gw.addr(), "/enqueue", &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.text(),
        "number nil nil no queue named `nope` is configured\n"
    );
}

#[tokio::test]
async fn access_headers_reach_the_client_whatever_the_script_text_and_keep_every_value() {
    let up = Upstream::start();
    // No literal `header` in the source: the driver, not the script text, decides.
    let code = "local h = ngx[\"head\" .. \"er\"]\nh[\"X-Multi\"] = {\"a\", \"b\"}\n";
    let gw = start(&proxied(&up, &lua("access", "computed", code)), &[]);
    let mut conn = Conn::open(gw.addr()).await;
    let r = conn.send("GET", "/", &[], "").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header_all("x-multi"), vec!["a", "b"]);
}

#[tokio::test]
async fn header_filter_sees_the_upstream_headers_and_replaces_them() {
    let up = Upstream::start();
    // Writes only: the upstream's lines pass as they came, minus the replaced one.
    let writer = start(
        &proxied(
            &up,
            &lua(
                "header_filter",
                "write",
                "ngx.header[\"X-Upstream\"] = \"replaced\"\nngx.header[\"X-Gateway\"] = \"lua\"",
            ),
        ),
        &[],
    );
    let r = get(writer.addr(), "/", &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header_all("x-upstream"), ["replaced"]);
    assert_eq!(r.header_all("set-cookie").len(), 2);
    assert_eq!(r.header("x-gateway"), "lua");

    // A read sees the upstream's values, and later writes and removals still apply.
    let reader = start(
        &proxied(
            &up,
            &lua(
                "header_filter",
                "read",
                "ngx.header[\"X-Gateway\"] = \"lua\"\n\
                 ngx.header[\"X-Seen\"] = ngx.header[\"X-Upstream\"] or \"none\"\n\
                 ngx.header[\"X-Sent\"] = ngx.var.sent_http_x_gateway or \"none\"\n\
                 local cookies = ngx.header[\"Set-Cookie\"]\n\
                 ngx.header[\"X-Cookies\"] = type(cookies) == \"table\" and #cookies or 0\n\
                 ngx.header[\"X-Upstream\"] = nil",
            ),
        ),
        &[],
    );
    let r = get(reader.addr(), "/", &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-seen"), "yes");
    assert_eq!(r.header("x-sent"), "lua");
    assert_eq!(r.header("x-cookies"), "2");
    assert!(r.header_all("x-upstream").is_empty());
    assert_eq!(r.header_all("x-gateway"), ["lua"]);
    assert_eq!(r.header_all("set-cookie").len(), 2);
}

#[tokio::test]
async fn scripts_check_rate_limits_themselves() {
    let up = Upstream::start();
    let code = "local ok, info = sluicegate.ratelimit.check(\"login:\" .. (ngx.var.arg_user or \"\"), {rate = 2, per = \"minute\"})\nngx.say(tostring(ok), \" \", info.limit, \" \", info.remaining, \" \", info.retry_after > 0)";
    let gw = start(&proxied(&up, &lua("content", "login", code)), &[]);
    let mut seen = Vec::new();
    for _ in 0..3 {
        seen.push(get(gw.addr(), "/?user=ann", &[]).await.text());
    }
    assert_eq!(
        seen,
        ["true 2 1 false\n", "true 2 0 false\n", "false 2 0 true\n"]
    );
    assert_eq!(
        get(gw.addr(), "/?user=bob", &[]).await.text(),
        "true 2 1 false\n"
    );
    // A bad spec is the script's error: a 500, with the reason in the log.
    let bad = start(
        &proxied(
            &up,
            &lua(
                "content",
                "bad",
                "sluicegate.ratelimit.check(\"k\", {rate = 1, per = \"week\"})",
            ),
        ),
        &[],
    );
    assert_eq!(get(bad.addr(), "/", &[]).await.status, 500);
}

#[tokio::test]
async fn a_script_chooses_the_key_the_rate_limit_plugin_counts() {
    let up = Upstream::start();
    let plugins = lua(
        "access",
        "tenant",
        "sluicegate.ratelimit.set_key(ngx.var.http_x_tenant or \"anonymous\")",
    ) + "      - name: rate_limit\n        config:\n          limits: [{rate: 2, per: minute}]\n          key: script\n";
    let gw = start(&proxied(&up, &plugins), &[]);
    let mut statuses = Vec::new();
    for tenant in ["a", "a", "a", "b", "b", "b"] {
        statuses.push(
            get(gw.addr(), "/", &[("x-tenant", tenant)])
                .await
                .status
                .as_u16(),
        );
    }
    assert_eq!(statuses, [200, 200, 429, 200, 200, 429]);
    let r = get(gw.addr(), "/", &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("ratelimit-remaining"), "1");
}

#[tokio::test]
async fn access_headers_replace_the_upstream_headers_of_the_same_name() {
    let up = Upstream::start();
    // No filter reads the response: the upstream's lines pass raw, minus the replaced one.
    let code =
        "ngx.header[\"X-Upstream\"] = \"from-access\"\nngx.header[\"X-Added\"] = {\"1\", \"2\"}";
    let gw = start(&proxied(&up, &lua("access", "set", code)), &[]);
    let mut conn = Conn::open(gw.addr()).await;
    for _ in 0..2 {
        let r = conn.send("GET", "/", &[], "").await;
        assert_eq!(r.status, 200);
        assert_eq!(r.header_all("x-upstream"), ["from-access"]);
        assert_eq!(r.header_all("x-added"), ["1", "2"]);
        assert_eq!(r.header_all("set-cookie").len(), 2, "the other lines pass");
        assert_eq!(r.header_all("x-request-id").len(), 1);
        assert!(
            r.json().is_object(),
            "the body is framed as the upstream sent it"
        );
    }
    // A framing header set early would describe another body: the upstream's framing wins.
    let code = "ngx.header[\"Content-Length\"] = \"9999\"\nngx.header[\"Transfer-Encoding\"] = \"chunked\"";
    let gw = start(&proxied(&up, &lua("access", "framing", code)), &[]);
    let r = get(gw.addr(), "/", &[]).await;
    assert_eq!(r.status, 200);
    assert!(r.json().is_object());
}
