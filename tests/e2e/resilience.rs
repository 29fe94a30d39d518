//! Upstreams that fail and heal: passive ejection and recovery, active health checks,
//! retries of statuses on another target with byte-identical bodies, non-idempotent methods,
//! the all-unhealthy behaviour and circuit breaking.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::Full;

use crate::support::client::full;
use crate::support::upstream::Seen;
use crate::support::{eventually, request, send, Config, TestGateway, Upstream};

/// An upstream that answers 503 while `failing` is set, else 200 with `name` (or the echo
/// of the body for a PUT/POST).
fn switchable(name: &'static str, failing: Arc<AtomicBool>) -> Upstream {
    Upstream::start(move |seen: Seen| {
        let failing = failing.clone();
        async move {
            if failing.load(Ordering::SeqCst) {
                let mut r = Response::new(Full::new(Bytes::from_static(b"down")));
                *r.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
                return r;
            }
            let body = if seen.body.is_empty() {
                Bytes::from_static(name.as_bytes())
            } else {
                seen.body.clone()
            };
            Response::new(Full::new(body))
        }
    })
}

fn two_targets(a: &Upstream, b: &Upstream, upstream_extra: &str, route_extra: &str) -> TestGateway {
    Config::new(&format!(
        "upstreams:\n  - {{name: app, targets: [\"{}\", \"{}\"]{upstream_extra}}}\nroutes:\n  - {{name: all, upstream: app{route_extra}}}\n",
        a.addr(),
        b.addr()
    ))
    .start()
}

#[tokio::test]
async fn a_503_is_retried_on_the_other_target_with_a_byte_identical_body() {
    let bad = switchable("bad", Arc::new(AtomicBool::new(true)));
    let good = switchable("good", Arc::new(AtomicBool::new(false)));
    let gw = two_targets(&bad, &good, "", ", retry: {attempts: 2}");
    let payload: Vec<u8> = (0..20_000u32).map(|i| (i * 7 % 251) as u8).collect();
    for _ in 0..4 {
        let req = request("PUT", "/data").body(full(payload.clone())).unwrap();
        let reply = send(gw.addr, req).await;
        assert_eq!(reply.status, 200);
        assert_eq!(
            reply.body, payload,
            "the client gets the good target's echo"
        );
    }
    let bad_seen = bad.requests();
    assert!(
        !bad_seen.is_empty(),
        "round-robin sent some first tries to the bad target"
    );
    for seen in bad_seen.iter().chain(good.requests().iter()) {
        assert_eq!(seen.body, payload, "every try carried the same bytes");
    }
    assert_eq!(
        bad.connections(),
        1,
        "the retried 503s were read to the end, so their connection was reused"
    );
    let metrics = gw.admin_get("/metrics").await.text();
    assert!(
        crate::support::metric(
            &metrics,
            r#"sluicegate_upstream_retries_total{upstream="app"}"#
        )
        .unwrap()
            >= 1.0
    );
}

#[tokio::test]
async fn a_post_is_not_retried_unless_the_route_opts_in() {
    let bad = switchable("bad", Arc::new(AtomicBool::new(true)));
    let good = switchable("good", Arc::new(AtomicBool::new(false)));
    let gw = two_targets(&bad, &good, "", ", retry: {attempts: 2}");
    let mut statuses = Vec::new();
    for _ in 0..2 {
        let req = request("POST", "/orders").body(full("order")).unwrap();
        statuses.push(send(gw.addr, req).await.status);
    }
    statuses.sort();
    assert_eq!(
        statuses,
        vec![200, 503],
        "the POST that hit the bad target is not retried"
    );
    assert_eq!(bad.requests().len(), 1);

    let gw = two_targets(
        &bad,
        &good,
        "",
        ", retry: {attempts: 2, non_idempotent: true}",
    );
    for _ in 0..2 {
        let req = request("POST", "/orders").body(full("order")).unwrap();
        let reply = send(gw.addr, req).await;
        assert_eq!(reply.status, 200);
        assert_eq!(reply.text(), "order");
    }
}

#[tokio::test]
async fn a_failing_target_is_ejected_without_client_errors_and_comes_back() {
    let failing = Arc::new(AtomicBool::new(false));
    let flaky = switchable("flaky", failing.clone());
    let steady = switchable("steady", Arc::new(AtomicBool::new(false)));
    let gw = two_targets(
        &flaky,
        &steady,
        ", health: {passive: {max_failures: 2, backoff_ms: 4000}}",
        ", retry: {attempts: 1}",
    );
    for _ in 0..4 {
        assert_eq!(gw.get("/").await.status, 200);
    }
    failing.store(true, Ordering::SeqCst);
    let before = flaky.requests().len();
    for _ in 0..20 {
        assert_eq!(gw.get("/").await.status, 200, "no client-visible error");
    }
    assert_eq!(
        flaky.requests().len() - before,
        2,
        "ejected after exactly max_failures failures"
    );
    let status = gw.admin_get("/status").await.json();
    let targets = status["upstreams"][0]["targets"]
        .as_array()
        .unwrap()
        .clone();
    assert!(
        targets.iter().any(|t| t["health"] == "ejected"),
        "{targets:?}"
    );

    failing.store(false, Ordering::SeqCst);
    eventually("the recovered target gets requests again", || async {
        let before = flaky.requests().len();
        gw.get("/").await;
        gw.get("/").await;
        flaky.requests().len() > before
    })
    .await;
}

#[tokio::test]
async fn active_checks_take_a_target_out_and_bring_it_back() {
    let healthy = Arc::new(AtomicBool::new(true));
    let served = Arc::new(AtomicUsize::new(0));
    let (h, s) = (healthy.clone(), served.clone());
    let checked = Upstream::start(move |seen: Seen| {
        let (h, s) = (h.clone(), s.clone());
        async move {
            if seen.uri.path() == "/healthz" {
                let mut r = Response::new(Full::new(Bytes::new()));
                if !h.load(Ordering::SeqCst) {
                    *r.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
                }
                return r;
            }
            s.fetch_add(1, Ordering::SeqCst);
            Response::new(Full::new(Bytes::from_static(b"checked")))
        }
    });
    let other = switchable("other", Arc::new(AtomicBool::new(false)));
    let gw = two_targets(
        &checked,
        &other,
        ", health: {active: {path: /healthz, interval_ms: 100, timeout_ms: 1000, healthy_threshold: 2, unhealthy_threshold: 2}}",
        "",
    );
    healthy.store(false, Ordering::SeqCst);
    eventually("the failing target is marked unhealthy", || async {
        let status = gw.admin_get("/status").await.json();
        status["upstreams"][0]["targets"][0]["health"] == "unhealthy"
    })
    .await;
    let before = served.load(Ordering::SeqCst);
    for _ in 0..6 {
        assert_eq!(gw.get("/").await.text(), "other");
    }
    assert_eq!(served.load(Ordering::SeqCst), before);

    healthy.store(true, Ordering::SeqCst);
    eventually("the target is healthy again", || async {
        let status = gw.admin_get("/status").await.json();
        status["upstreams"][0]["targets"][0]["health"] == "healthy"
    })
    .await;
    for _ in 0..4 {
        gw.get("/").await;
    }
    assert!(served.load(Ordering::SeqCst) > before);
}

#[tokio::test]
async fn every_target_unhealthy_fails_closed_with_503_json_when_configured() {
    let a = switchable("a", Arc::new(AtomicBool::new(true)));
    let b = switchable("b", Arc::new(AtomicBool::new(true)));
    let gw = two_targets(
        &a,
        &b,
        ", health: {passive: {max_failures: 1, backoff_ms: 60000}, all_unhealthy: fail_closed}",
        "",
    );
    // One failure each ejects both.
    assert_eq!(gw.get("/").await.status, 503);
    assert_eq!(gw.get("/").await.status, 503);
    let reply = gw.get("/").await;
    assert_eq!(reply.status, 503);
    assert_eq!(reply.json()["error"], "unavailable");
    assert!(reply.json()["message"]
        .as_str()
        .unwrap()
        .contains("unhealthy"));
    assert_eq!(a.requests().len() + b.requests().len(), 2);
}

#[tokio::test]
async fn every_target_unhealthy_fails_open_by_default() {
    let a = switchable("a", Arc::new(AtomicBool::new(false)));
    let gw = Config::new(&format!(
        "upstreams: [{{name: app, targets: [\"{}\"], health: {{passive: {{max_failures: 1, failure_statuses: [200], backoff_ms: 60000}}}}}}]\nroutes: [{{name: all, upstream: app}}]\n",
        a.addr()
    ))
    .start();
    for _ in 0..3 {
        assert_eq!(gw.get("/").await.status, 200);
    }
    assert_eq!(a.requests().len(), 3);
}

#[tokio::test]
async fn a_full_circuit_breaker_answers_503_json() {
    let slow = Upstream::slow(Duration::from_millis(800));
    let gw = Config::new(&format!(
        "upstreams: [{{name: app, targets: [\"{}\"], circuit_breaker: {{max_connections: 1}}}}]\nroutes: [{{name: all, upstream: app}}]\n",
        slow.addr()
    ))
    .start();
    let (first, second) = tokio::join!(gw.get("/"), async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        gw.get("/").await
    });
    // Whichever got the slot first (the machine may be slow), the other one is refused.
    let (ok, refused) = if first.status == 200 {
        (first, second)
    } else {
        (second, first)
    };
    assert_eq!(ok.status, 200);
    assert_eq!(refused.status, 503);
    assert_eq!(refused.json()["error"], "unavailable");
    // The slot is free again once the first response is done.
    assert_eq!(gw.get("/").await.status, 200);
    let metrics = gw.admin_get("/metrics").await.text();
    assert_eq!(
        crate::support::metric(
            &metrics,
            r#"sluicegate_upstream_circuit_open_total{upstream="app"}"#
        ),
        Some(1.0)
    );
}

fn fixed(name: &'static str) -> Upstream {
    Upstream::start(move |_: Seen| async move {
        Response::new(Full::new(Bytes::from_static(name.as_bytes())))
    })
}

#[tokio::test]
async fn a_script_chooses_the_upstream_and_a_target() {
    let a = fixed("a");
    let (b1, b2) = (fixed("b1"), fixed("b2"));
    let gw = Config::new(
        r#"
upstreams:
  - {name: a, targets: ["{{a}}"]}
  - {name: b, targets: ["{{b1}}", "{{b2}}"]}
routes:
  - name: all
    upstream: a
    plugins:
      - name: lua
        config:
          name: pick
          phase: access
          code: |
            local pool = ngx.var.http_x_pool
            if pool then
              local ok, err = sluicegate.upstream.set(pool, ngx.var.http_x_target)
              if not ok then
                ngx.status = 400
                ngx.say(err)
                return ngx.exit(400)
              end
            end
"#,
    )
    .var("a", a.addr())
    .var("b1", b1.addr())
    .var("b2", b2.addr())
    .start();
    let ask = |headers: Vec<(&'static str, String)>| {
        let mut req = request("GET", "/");
        for (k, v) in headers {
            req = req.header(k, v);
        }
        send(gw.addr, req.body(full("")).unwrap())
    };
    assert_eq!(ask(vec![]).await.text(), "a");
    let mut seen = std::collections::HashSet::new();
    for _ in 0..4 {
        seen.insert(ask(vec![("x-pool", "b".into())]).await.text());
    }
    assert_eq!(seen.len(), 2, "both targets of b: {seen:?}");
    for _ in 0..3 {
        let reply = ask(vec![
            ("x-pool", "b".into()),
            ("x-target", b2.addr().to_string()),
        ])
        .await;
        assert_eq!(reply.text(), "b2");
    }
    let unknown = ask(vec![("x-pool", "nope".into())]).await;
    assert_eq!(unknown.status, 400);
    assert!(unknown.text().contains("unknown upstream `nope`"));
    let no_target = ask(vec![
        ("x-pool", "b".into()),
        ("x-target", a.addr().to_string()),
    ])
    .await;
    assert_eq!(no_target.status, 400);
    assert!(no_target.text().contains("has no target"));
}

#[tokio::test]
async fn a_request_waits_for_a_circuit_breaker_slot_when_pending_is_allowed() {
    let slow = Upstream::slow(Duration::from_millis(300));
    let gw = Config::new(&format!(
        "upstreams: [{{name: app, targets: [\"{}\"], circuit_breaker: {{max_connections: 1, max_pending: 1, pending_timeout_ms: 5000}}}}]\nroutes: [{{name: all, upstream: app}}]\n",
        slow.addr()
    ))
    .start();
    let (first, second) = tokio::join!(gw.get("/"), async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        gw.get("/").await
    });
    assert_eq!(first.status, 200);
    assert_eq!(
        second.status, 200,
        "the second request waited for the first one's slot"
    );
    assert_eq!(slow.requests().len(), 2);
}

#[test]
fn check_reports_bad_dns_health_retry_and_breaker_settings_with_paths_and_lines() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.yaml");
    std::fs::write(
        &file,
        "listeners: [{address: '127.0.0.1:0'}]\n\
         dns:\n\
         \x20 nameservers: [dns.example]\n\
         \x20 family: ipv5\n\
         upstreams:\n\
         \x20 - name: app\n\
         \x20   targets: [\"api.internal:80\", {srv: '_http._tcp.x', address: '10.0.0.1:80'}]\n\
         \x20   balance: consistent_hash\n\
         \x20   health:\n\
         \x20     active: {path: healthz, expected_statuses: [\"7xx\"]}\n\
         \x20     passive: {max_failures: 0}\n\
         \x20   circuit_breaker: {max_connections: 0}\n\
         routes:\n\
         \x20 - upstream: app\n\
         \x20   retry: {on: [weather], attempts: 0}\n",
    )
    .unwrap();
    let out = crate::support::bin::run_cli(&["check", "-c", file.to_str().unwrap()], &[]);
    assert_eq!(out.code, 2, "stderr: {}", out.stderr);
    let name = file.display().to_string();
    for (line, path) in [
        (3, "dns.nameservers[0]"),
        (4, "dns.family"),
        (7, "upstreams[0].targets[1]"),
        (8, "upstreams[0].balance"),
        (10, "upstreams[0].health.active.path"),
        (10, "upstreams[0].health.active.expected_statuses[0]"),
        (11, "upstreams[0].health.passive.max_failures"),
        (12, "upstreams[0].circuit_breaker.max_connections"),
        (15, "routes[0].retry.on[0]"),
        (15, "routes[0].retry.attempts"),
    ] {
        let expected = format!("{name}:{line}: {path}: ");
        assert!(
            out.stderr.lines().any(|l| l.starts_with(&expected)),
            "no line starting with {expected:?} in:\n{}",
            out.stderr
        );
    }
    // Unknown keys inside the new sections are errors too.
    std::fs::write(
        &file,
        "listeners: [{address: '127.0.0.1:0'}]\n\
         upstreams: [{name: app, targets: ['127.0.0.1:1'], health: {passive: {colour: red}}}]\n",
    )
    .unwrap();
    let out = crate::support::bin::run_cli(&["check", "-c", file.to_str().unwrap()], &[]);
    assert_eq!(out.code, 2);
    assert!(
        out.stderr
            .contains("upstreams[0].health.passive.colour: unknown field"),
        "{}",
        out.stderr
    );
}

#[tokio::test]
async fn runs_the_four_target_bench_config() {
    let up = Upstream::echo();
    let config = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/plain-4targets.yaml");
    let upstream = up.addr().to_string();
    let process = crate::support::bin::Process::start_with_env(
        &config,
        &[("PORT", "0"), ("BENCH_UPSTREAM", &upstream)],
    );
    for _ in 0..8 {
        assert_eq!(crate::support::get(process.addr, "/").await.status, 200);
    }
    // Active checks (GET /) reach the origin too.
    eventually("active checks reach the origin", || async {
        up.requests()
            .iter()
            .any(|r| r.header("user-agent") == "sluicegate-health-check")
    })
    .await;
}

#[tokio::test]
async fn an_ejected_target_stays_ejected_across_a_reload() {
    let bad = switchable("bad", Arc::new(AtomicBool::new(true)));
    let good = switchable("good", Arc::new(AtomicBool::new(false)));
    let upstreams = format!(
        "upstreams:\n  - {{name: app, targets: [\"{}\", \"{}\"], health: {{passive: {{max_failures: 1, backoff_ms: 60000}}}}}}\n",
        bad.addr(),
        good.addr()
    );
    let gw = Config::new(&format!(
        "{upstreams}routes:\n  - {{name: all, upstream: app}}\n"
    ))
    .start();
    // The first request goes to `bad` (round-robin starts there) and ejects it.
    assert_eq!(gw.get("/").await.status, 503);
    gw.rewrite_config(&Config::new(&format!(
        "{upstreams}routes:\n  - {{name: all, upstream: app}}\n  - {{name: extra, match: {{paths: /extra}}, upstream: app}}\n"
    )));
    assert_eq!(gw.admin_post("/reload").await.status, 200);
    let status = gw.admin_get("/status").await.json();
    assert_eq!(status["upstreams"][0]["targets"][0]["health"], "ejected");
    for _ in 0..4 {
        assert_eq!(gw.get("/").await.text(), "good");
    }
    assert_eq!(bad.requests().len(), 1);
}

#[tokio::test]
async fn consistent_hashing_keeps_each_user_on_one_target() {
    let a = fixed("a");
    let b = fixed("b");
    let gw = Config::new(&format!(
        "upstreams: [{{name: app, targets: [\"{}\", \"{}\"], balance: consistent_hash, hash_on: {{header: x-user}}}}]\nroutes: [{{name: all, upstream: app}}]\n",
        a.addr(),
        b.addr()
    ))
    .start();
    let mut used = std::collections::HashSet::new();
    for user in 0..12 {
        let ask = || {
            let req = request("GET", "/")
                .header("x-user", format!("user-{user}"))
                .body(full(""))
                .unwrap();
            send(gw.addr, req)
        };
        let first = ask().await.text();
        for _ in 0..3 {
            assert_eq!(ask().await.text(), first, "user-{user} moved");
        }
        used.insert(first);
    }
    assert_eq!(used.len(), 2, "keys spread over both targets");
}

#[tokio::test]
async fn timeouts_and_resets_are_retried_when_the_route_asks() {
    use crate::support::RawUpstream;
    let silent = RawUpstream::silent();
    // Reads the request head, then closes without answering.
    let resetting = RawUpstream::start(|mut stream| async move {
        use tokio::io::AsyncReadExt;
        let mut buf = [0u8; 4096];
        let _ = stream.read(&mut buf).await;
    });
    let good = fixed("good");
    let gw = Config::new(&format!(
        "upstreams:\n  - {{name: app, targets: [\"{}\", \"{}\", \"{}\"], read_timeout_ms: 300}}\nroutes:\n  - {{name: all, upstream: app, retry: {{attempts: 2, on: [timeout, reset]}}}}\n",
        silent.addr(),
        resetting.addr(),
        good.addr()
    ))
    .start();
    for _ in 0..3 {
        let reply = gw.get("/").await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        assert_eq!(reply.text(), "good");
    }
    assert!(silent.accepted() >= 1 && resetting.accepted() >= 1);

    // Without `timeout` in `on`, a silent target's timeout reaches the client.
    let gw = Config::new(&format!(
        "upstreams:\n  - {{name: app, targets: [\"{}\", \"{}\"], read_timeout_ms: 300}}\nroutes:\n  - {{name: all, upstream: app, retry: {{attempts: 2, on: [503]}}}}\n",
        silent.addr(),
        good.addr()
    ))
    .start();
    assert_eq!(gw.get("/").await.status, 504);
}

#[tokio::test]
async fn peak_ewma_sends_most_requests_to_the_fast_target() {
    // Much slower than any stall of a loaded test machine, so the order never flips.
    let slow = Upstream::slow(Duration::from_millis(1000));
    let fast = fixed("fast");
    let gw = Config::new(&format!(
        "upstreams: [{{name: app, targets: [\"{}\", \"{}\"], balance: peak_ewma}}]\nroutes: [{{name: all, upstream: app}}]\n",
        slow.addr(),
        fast.addr()
    ))
    .start();
    for _ in 0..20 {
        assert_eq!(gw.get("/").await.status, 200);
    }
    // Each target is tried while it has no latency sample; after that the slow one only
    // gets a request when its latency estimate has decayed (10 s time constant).
    assert!(
        slow.requests().len() <= 2,
        "slow got {}",
        slow.requests().len()
    );
    assert!(fast.requests().len() >= 18);
    let status = gw.admin_get("/status").await.json();
    let targets = status["upstreams"][0]["targets"]
        .as_array()
        .unwrap()
        .clone();
    assert!(
        targets
            .iter()
            .all(|t| t["latency_ewma_ms"].as_f64().is_some()),
        "{targets:?}"
    );
}
