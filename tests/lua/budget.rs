//! CPU budget and memory cap over real HTTP: runaway scripts answer 500 (JSON, request id)
//! within budget + 20 ms, a concurrent client on the same worker keeps getting 200s, the
//! failures are counted in `/metrics`, and the VM keeps serving afterwards.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::support::{get, start, Conn};

const RUNAWAY: &[(&str, &str)] = &[
    ("spin", "local n = 0\nwhile true do n = n + 1 end"),
    ("trap", "while true do\n  pcall(function() while true do end end)\nend"),
    ("gsub", "local s = string.rep(\"a\", 20000)\nwhile true do s = string.gsub(s, \"(a*)*b\", \"x\") end"),
    ("coro", "local co = coroutine.wrap(function() while true do coroutine.yield() end end)\nwhile true do co() end"),
];

fn routes(budget_ms: u64, memory: Option<usize>) -> String {
    let mut out = format!("lua:\n  cpu_budget_ms: {budget_ms}\n");
    if let Some(m) = memory {
        out.push_str(&format!("  memory_limit_bytes: {m}\n"));
    }
    out.push_str("routes:\n  - name: ok\n    match: {paths: \"= /ok\"}\n    plugins:\n      - name: lua\n        config: {name: ok, phase: content, code: \"ngx.say('ok')\"}\n");
    for (name, code) in RUNAWAY {
        let code: String = code.lines().map(|l| format!("            {l}\n")).collect();
        out.push_str(&format!(
            "  - name: {name}\n    match: {{paths: \"= /{name}\"}}\n    plugins:\n      - name: lua\n        config:\n          name: {name}\n          phase: access\n          code: |\n{code}"
        ));
    }
    out.push_str(
        "  - name: bomb\n    match: {paths: \"= /bomb\"}\n    plugins:\n      - name: lua\n        config:\n          name: bomb\n          phase: content\n          code: |\n            hoard = {}\n            for i = 1, 1e9 do hoard[i] = string.rep(\"x\", 4096) .. i end\n",
    );
    out
}

/// A client that keeps requesting `/ok` on its own connection until stopped; counts replies.
fn background_client(
    addr: std::net::SocketAddr,
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicUsize>,
    bad: Arc<AtomicUsize>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut conn = Conn::open(addr).await;
        while !stop.load(Ordering::Relaxed) {
            let r = conn.send("GET", "/ok", &[], "").await;
            if r.status == 200 && r.text() == "ok\n" {
                ok.fetch_add(1, Ordering::Relaxed);
            } else {
                bad.fetch_add(1, Ordering::Relaxed);
            }
        }
    })
}

#[tokio::test]
async fn runaway_scripts_answer_500_within_budget_while_others_get_200() {
    let budget = 50u64;
    let gw = start(&routes(budget, None), &[]);
    let addr = gw.addr();
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, bad) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let client = background_client(addr, stop.clone(), ok.clone(), bad.clone());
    for (name, _) in RUNAWAY {
        let mut conn = Conn::open(addr).await;
        let mut best = Duration::MAX;
        for _ in 0..3 {
            let started = Instant::now();
            let r = conn.send("GET", &format!("/{name}"), &[], "").await;
            best = best.min(started.elapsed());
            assert_eq!(r.status, 500, "{name}: {}", r.text());
            let body = r.json();
            assert_eq!(body["error"], "script_over_budget", "{name}");
            assert_eq!(
                body["request_id"].as_str().unwrap(),
                r.header("x-request-id")
            );
        }
        // The best of three, so a busy machine does not fail the test; the bar is the issue's.
        assert!(
            best < Duration::from_millis(budget + 20),
            "{name} took {best:?}"
        );
    }
    stop.store(true, Ordering::Relaxed);
    client.await.unwrap();
    assert_eq!(
        bad.load(Ordering::Relaxed),
        0,
        "the concurrent client saw failures"
    );
    assert!(
        ok.load(Ordering::Relaxed) > 0,
        "the concurrent client got no answer"
    );
    let metrics = get(gw.admin(), "/metrics", &[]).await.text();
    for (name, _) in RUNAWAY {
        assert!(
            metrics.contains(&format!(
                "sluicegate_script_failures_total{{script=\"{name}\",kind=\"budget\"}} 3"
            )),
            "{name} not counted:\n{metrics}"
        );
    }
    assert_eq!(get(addr, "/ok", &[]).await.text(), "ok\n");
}

#[tokio::test]
async fn an_allocation_bomb_hits_the_memory_cap_and_the_vm_keeps_serving() {
    let gw = start(&routes(2000, Some(16 * 1024 * 1024)), &[]);
    let addr = gw.addr();
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, bad) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let client = background_client(addr, stop.clone(), ok.clone(), bad.clone());
    for _ in 0..5 {
        let r = get(addr, "/bomb", &[]).await;
        assert_eq!(r.status, 500, "{}", r.text());
        assert_eq!(r.json()["error"], "script_over_budget");
        assert_eq!(get(addr, "/ok", &[]).await.text(), "ok\n");
    }
    stop.store(true, Ordering::Relaxed);
    client.await.unwrap();
    assert_eq!(bad.load(Ordering::Relaxed), 0);
    let metrics = get(gw.admin(), "/metrics", &[]).await.text();
    assert!(
        metrics.contains("sluicegate_script_failures_total{script=\"bomb\",kind=\"budget\"} 5"),
        "{metrics}"
    );
}

#[tokio::test]
async fn script_errors_answer_500_and_are_counted() {
    let gw = start(
        "routes:\n  - name: e\n    plugins:\n      - name: lua\n        config:\n          name: broken\n          phase: access\n          code: |\n            local t = nil\n            return t.field\n",
        &[],
    );
    let r = get(gw.addr(), "/", &[]).await;
    assert_eq!(r.status, 500);
    assert_eq!(r.json()["error"], "plugin_error");
    let metrics = get(gw.admin(), "/metrics", &[]).await.text();
    assert!(
        metrics.contains("sluicegate_script_failures_total{script=\"broken\",kind=\"error\"} 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_runaway_timer_is_stopped_counted_and_the_worker_keeps_serving() {
    let gw = start(
        "lua: {cpu_budget_ms: 20}\nroutes:\n  - name: t\n    plugins:\n      - name: lua\n        config:\n          name: spawner\n          phase: content\n          code: |\n            local ok = ngx.timer.at(0, function()\n              while true do end\n            end)\n            ngx.say(ok)\n",
        &[],
    );
    assert_eq!(get(gw.addr(), "/", &[]).await.text(), "true\n");
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(get(gw.addr(), "/", &[]).await.text(), "true\n");
    tokio::time::sleep(Duration::from_millis(150)).await;
    let metrics = get(gw.admin(), "/metrics", &[]).await.text();
    assert!(
        metrics.contains("sluicegate_script_failures_total{script=\"spawner\",kind=\"budget\"} 2"),
        "{metrics}"
    );
}

#[tokio::test]
async fn waiting_does_not_count_but_running_after_the_wait_does() {
    let gw = start(
        "lua: {cpu_budget_ms: 30}\nroutes:\n  - name: w\n    plugins:\n      - name: lua\n        config:\n          name: waiter\n          phase: access\n          code: |\n            ngx.sleep(0.1)\n            if ngx.var.arg_spin then while true do end end\n            ngx.say('rested')\n",
        &[],
    );
    let started = Instant::now();
    let rested = get(gw.addr(), "/", &[]).await;
    assert_eq!(
        rested.text(),
        "rested\n",
        "100 ms of sleep is not 100 ms of CPU"
    );
    assert!(started.elapsed() >= Duration::from_millis(100));
    let spun = get(gw.addr(), "/?spin=1", &[]).await;
    assert_eq!(spun.status, 500);
    assert_eq!(spun.json()["error"], "script_over_budget");
}
