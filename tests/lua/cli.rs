//! The binary: syntax errors at `check` time, `sluicegate test`, the shipped configurations,
//! and the error log of a failing script.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};

use crate::support::{bin, get, repo, Upstream};

fn write_config(dir: &std::path::Path, text: &str) -> std::path::PathBuf {
    let path = dir.join("sluicegate.yaml");
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn check_reports_a_syntax_error_with_script_name_and_line_and_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        "listeners: [{address: '127.0.0.1:0'}]\nroutes:\n  - name: r\n    plugins:\n      - name: lua\n        config:\n          name: auth\n          phase: access\n          code: |\n            local key = ngx.var.http_x_api_key\n            if key == then\n              return ngx.exit(401)\n            end\n",
    );
    let out = Command::new(bin())
        .args(["check", "-c"])
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("routes[0].plugins[0].config.code"), "{err}");
    assert!(
        err.contains("script `auth`: syntax error at line 2"),
        "{err}"
    );
    // Load time too: the gateway refuses to start with it.
    assert!(sluicegate::gateway::Gateway::start(&config).is_err());
}

#[test]
fn check_reports_a_missing_script_file() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "listeners: [{address: '127.0.0.1:0'}]\nroutes:\n  - plugins:\n      - name: lua\n        config: {phase: access, file: nope.lua}\n");
    let out = Command::new(bin())
        .args(["check", "-c"])
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains("routes[0].plugins[0].config.file: cannot read"));
}

#[test]
fn sluicegate_test_passes_the_conformance_specs() {
    let out = Command::new(bin())
        .arg("test")
        .arg(repo("tests/lua/specs"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains(" passed, 0 failed"), "{text}");
    assert!(!text.contains("FAIL"), "{text}");
}

#[test]
fn sluicegate_test_reports_failures_readably_and_as_tap_and_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("auth.lua"),
        "if ngx.var.http_x_api_key ~= 'k' then return ngx.exit(401) end\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("auth_spec.lua"),
        r#"local t = require "sluicegate.test"
local auth = t.script { phase = "access", file = "auth.lua" }
describe("auth", function()
  before_each(function() _G.calls = (_G.calls or 0) + 1 end)
  it("rejects a missing key", function()
    assert.are.equal(401, auth:run({ uri = "/" }).status)
  end)
  it("is wrong on purpose", function()
    assert.equal(200, auth:run({ uri = "/" }).status)
  end)
  it("errors on purpose", function() error("boom") end)
  pending("something for later")
end)
"#,
    )
    .unwrap();
    let out = Command::new(bin())
        .arg("test")
        .arg(dir.path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("PASS  auth rejects a missing key"), "{text}");
    assert!(text.contains("FAIL  auth is wrong on purpose"), "{text}");
    assert!(
        text.contains("auth_spec.lua:9: Expected objects to be equal."),
        "{text}"
    );
    assert!(text.contains("boom"), "{text}");
    assert!(text.contains("PEND  auth something for later"), "{text}");
    assert!(text.contains("1 passed, 2 failed, 1 pending"), "{text}");

    let tap = Command::new(bin())
        .args(["test", "--tap"])
        .arg(dir.path())
        .output()
        .unwrap();
    let tap_text = String::from_utf8_lossy(&tap.stdout);
    assert_eq!(tap.status.code(), Some(1));
    assert!(tap_text.starts_with("TAP version 13\n1..4\n"), "{tap_text}");
    assert!(tap_text.contains("not ok 2 - "), "{tap_text}");
    assert!(tap_text.contains("# SKIP pending"), "{tap_text}");

    let none = Command::new(bin())
        .args(["test", "/nonexistent/dir"])
        .output()
        .unwrap();
    assert_eq!(none.status.code(), Some(2));
}

/// `sluicegate run` as a child on ephemeral ports; reads the bound address from the log.
struct Running {
    child: Child,
    addr: SocketAddr,
    log: std::sync::mpsc::Receiver<String>,
}

impl Running {
    fn start(config: &std::path::Path, envs: &[(&str, String)]) -> Running {
        let mut cmd = Command::new(bin());
        cmd.args(["run", "-c"])
            .arg(config)
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap();
        let stderr = child.stderr.take();
        let (tx, rx) = std::sync::mpsc::channel();
        // Owned by `Running` from here on, so a failing test still kills the child.
        let mut running = Running {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            log: rx,
        };
        let stderr = stderr.unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
        loop {
            let line = running
                .log
                .recv_timeout(deadline.saturating_duration_since(std::time::Instant::now()))
                .expect("no Listening. log line");
            let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
            if v["message"] == "Listening." {
                running.addr = v["address"].as_str().unwrap().parse().unwrap();
                return running;
            }
        }
    }

    fn logs(&self) -> Vec<serde_json::Value> {
        self.log
            .try_iter()
            .filter_map(|l| serde_json::from_str(&l).ok())
            .collect()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn the_bench_auth_lua_config_rejects_bad_keys_and_marks_responses() {
    let up = Upstream::start();
    let envs = [
        ("PORT", "0".to_string()),
        ("BENCH_UPSTREAM", up.addr.to_string()),
        ("BENCH_API_KEY", "bench-secret-key".to_string()),
    ];
    let running = Running::start(&repo("bench/auth-lua.yaml"), &envs);
    assert_eq!(get(running.addr, "/", &[]).await.status, 401);
    assert_eq!(
        get(running.addr, "/", &[("x-api-key", "wrong")])
            .await
            .status,
        401
    );
    let ok = get(running.addr, "/", &[("x-api-key", "bench-secret-key")]).await;
    assert_eq!(ok.status, 200);
    assert_eq!(ok.header("x-gateway"), "lua");
    assert_eq!(ok.header("x-upstream"), "yes");
}

#[tokio::test]
async fn the_lua_content_example_runs_as_is() {
    let envs = [
        ("PORT", "0".to_string()),
        ("ADMIN_PORT", "0".to_string()),
        ("WORKERS", "1".to_string()),
    ];
    let running = Running::start(&repo("examples/lua-content.yaml"), &envs);
    let r = get(running.addr, "/hello?name=Ada%20L", &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "hello, Ada L! (1 requests so far)\n");
}

#[tokio::test]
async fn failing_scripts_are_logged_with_script_name_line_and_request_id() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        "workers: 1\nlisteners: [{address: '127.0.0.1:0'}]\nadmin: {enabled: false}\naccess_log: {target: 'off'}\nlua: {cpu_budget_ms: 20}\nroutes:\n  - name: r\n    plugins:\n      - name: lua\n        config:\n          name: spin\n          phase: access\n          code: |\n            local n = 0\n            while true do n = n + 1 end\n",
    );
    let running = Running::start(&config, &[]);
    let r = get(running.addr, "/", &[]).await;
    assert_eq!(r.status, 500);
    let id = r.header("x-request-id");
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let logs = running.logs();
    let failed = logs
        .iter()
        .find(|l| l["message"] == "Script failed.")
        .unwrap_or_else(|| panic!("no failure log in {logs:?}"));
    assert_eq!(failed["script"], "spin");
    assert_eq!(failed["request_id"], id.as_str());
    assert_eq!(failed["phase"], "access");
    assert!(
        failed["error"]
            .as_str()
            .unwrap()
            .starts_with("spin:2: CPU budget exceeded"),
        "{failed}"
    );
}
