//! The real binary: `check` on every shipped config and on a broken one, `version`,
//! `--help` on every subcommand, and `run` draining an in-flight request on SIGTERM.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::support::bin::{run_cli, Process};
use crate::support::{get, within, Upstream};

/// Every configuration file shipped in `examples/` and `bench/`.
fn shipped_configs() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut out = Vec::new();
    for dir in ["examples", "bench"] {
        let Ok(entries) = std::fs::read_dir(root.join(dir)) else {
            continue;
        };
        for entry in entries {
            let path = entry.unwrap().path();
            let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
            if matches!(ext, "yaml" | "yml" | "json") {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

#[test]
fn check_accepts_every_shipped_config() {
    let configs = shipped_configs();
    assert!(
        configs.len() >= 2,
        "expected the quick start and the bench config, found {configs:?}"
    );
    let env = [
        ("PORT", "0"),
        ("ADMIN_PORT", "0"),
        ("UPSTREAM", "127.0.0.1:9"),
        ("BENCH_UPSTREAM", "127.0.0.1:9"),
        ("BENCH_API_KEY", "e2e-test-key"),
        ("CODE_API_URL", "http://127.0.0.1:9/code.json"),
        ("UPSTREAM_NAME", "api.internal"),
        ("UPSTREAM_PORT", "8000"),
        ("DNS_SERVER", "127.0.0.1:53"),
        // The secrets the examples declare, as their users would export them.
        ("SLACK_SIGNING_SECRET", "e2e-slack-secret"),
        ("PROXY_KEY", "e2e-proxy-key"),
        ("PG_URL", "postgresql://sluicegate@127.0.0.1:9/sluicegate"),
        ("ADMIN_TOKEN", "e2e-admin-token-0123456789"),
        ("OIDC_ISSUER", "https://idp.example.com"),
        ("OIDC_CLIENT_ID", "gateway"),
        ("OIDC_CLIENT_SECRET", "e2e-client-secret"),
        ("SESSION_SECRET", "e2e-session-secret-of-at-least-32-bytes"),
        ("ALLOWED_DOMAINS", "example.com,example.org"),
        ("PUBLIC_URL", "http://127.0.0.1:8080"),
        ("NATS_URL", "nats://127.0.0.1:9,nats://127.0.0.1:10"),
        ("NATS_REPLICAS", "3"),
        ("PUBSUB_EMULATOR_HOST", "127.0.0.1:9"),
        ("PUBSUB_PROJECT", "e2e-project"),
        ("PUBSUB_TOPIC", "wal"),
        ("PUSH_AUDIENCE", "http://127.0.0.1:8080/wal-playback"),
        (
            "PUSH_SERVICE_ACCOUNT",
            "pusher@e2e-project.iam.gserviceaccount.com",
        ),
    ];
    for config in configs {
        let out = run_cli(&["check", "-c", config.to_str().unwrap()], &env);
        assert_eq!(
            out.code,
            0,
            "{} failed the check:\n{}",
            config.display(),
            out.stderr
        );
        assert!(
            out.stdout.contains("ok"),
            "{}: {}",
            config.display(),
            out.stdout
        );
    }
}

#[test]
fn check_lists_every_error_with_its_path_and_line_and_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("broken.yaml");
    std::fs::write(
        &file,
        "listeners:\n\
         \x20 - address: 127.0.0.1:0\n\
         \x20   colour: blue\n\
         upstreams:\n\
         \x20 - name: app\n\
         \x20   targets: [\"127.0.0.1:1\"]\n\
         routes:\n\
         \x20 - upstream: app\n\
         \x20 - match: {paths: [\"~(\"]}\n\
         \x20   upstream: app\n\
         \x20 - upstream: missing\n\
         bogus: 1\n",
    )
    .unwrap();
    let out = run_cli(&["check", "-c", file.to_str().unwrap()], &[]);

    assert_eq!(out.code, 2, "stderr: {}", out.stderr);
    let lines: Vec<&str> = out.stderr.lines().collect();
    let name = file.display().to_string();
    for (line, path) in [
        (3, "listeners[0].colour"),
        (9, "routes[1].match.paths[0]"),
        (11, "routes[2].upstream"),
        (12, "bogus"),
    ] {
        let expected = format!("{name}:{line}: {path}: ");
        assert!(
            lines.iter().any(|l| l.starts_with(&expected)),
            "no line starting with {expected:?} in:\n{}",
            out.stderr
        );
    }
    assert!(
        out.stdout.is_empty(),
        "nothing on stdout for a bad config: {}",
        out.stdout
    );
}

#[test]
fn check_exits_2_for_a_missing_file() {
    let out = run_cli(&["check", "-c", "/nonexistent/sluicegate.yaml"], &[]);
    assert_eq!(out.code, 2);
    assert!(
        out.stderr.contains("/nonexistent/sluicegate.yaml"),
        "{}",
        out.stderr
    );
}

#[test]
fn version_prints_the_package_version() {
    let out = run_cli(&["version"], &[]);
    assert_eq!(out.code, 0);
    assert_eq!(
        out.stdout.trim(),
        format!("sluicegate {}", env!("CARGO_PKG_VERSION"))
    );
    let flag = run_cli(&["--version"], &[]);
    assert_eq!(flag.code, 0);
    assert!(flag.stdout.contains(env!("CARGO_PKG_VERSION")));
}

#[test]
fn help_exits_0_for_the_binary_and_every_subcommand() {
    let top = run_cli(&["--help"], &[]);
    assert_eq!(top.code, 0);
    // The subcommands listed under `Commands:` (so new ones are covered without editing).
    let commands: Vec<String> = top
        .stdout
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .map(str::to_string)
        .collect();
    for expected in ["run", "check", "reload", "stop", "version"] {
        assert!(
            commands.iter().any(|c| c == expected),
            "`{expected}` missing from:\n{}",
            top.stdout
        );
    }
    for command in &commands {
        let out = run_cli(&[command, "--help"], &[]);
        assert_eq!(out.code, 0, "`{command} --help`: {}", out.stderr);
        assert!(
            out.stdout.contains(&format!("Usage: sluicegate {command}")),
            "{}",
            out.stdout
        );
    }
    let bad = run_cli(&["no-such-command"], &[]);
    assert_eq!(bad.code, 2, "bad usage exits 2");
}

#[tokio::test]
async fn sigterm_lets_an_in_flight_request_finish_and_exits_0() {
    let up = Upstream::slow(Duration::from_millis(500));
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("sluicegate.yaml");
    std::fs::write(
        &config,
        format!(
            "workers: 1\nlisteners: [{{address: '127.0.0.1:0'}}]\nadmin: {{enabled: false}}\naccess_log: {{target: 'off'}}\n\
             upstreams: [{{name: app, targets: ['{}']}}]\nroutes: [{{name: all, upstream: app}}]\n",
            up.addr()
        ),
    )
    .unwrap();
    let mut process = Process::start(&config);
    let addr = process.addr;
    let in_flight = tokio::spawn(async move { get(addr, "/slow").await });
    // The upstream records the request when it starts its 500 ms wait.
    crate::support::eventually("the request reached the upstream", || async {
        !up.requests().is_empty()
    })
    .await;
    process.signal("TERM");

    let reply = within("the in-flight response", in_flight).await.unwrap();
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("x-upstream-path"), "/slow");
    let status = process.wait_exit(Duration::from_secs(15));
    assert_eq!(
        status.code(),
        Some(0),
        "stderr: {:#?}",
        process.stderr.lock().unwrap()
    );
    assert!(
        process
            .stderr
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains("Stopped.")),
        "the process logs that it stopped"
    );
}

#[tokio::test]
async fn reload_and_stop_commands_talk_to_the_admin_api() {
    let gw = crate::support::Config::new(
        "routes: [{name: hi, plugins: [{name: request_termination, config: {status: 200, body: hi}}]}]",
    )
    .start();
    let admin = gw.admin.to_string();
    let reload = tokio::task::spawn_blocking({
        let admin = admin.clone();
        move || run_cli(&["reload", "--admin", &admin], &[])
    })
    .await
    .unwrap();
    assert_eq!(reload.code, 0, "{}", reload.stderr);
    assert!(reload.stdout.contains("\"reloaded\""), "{}", reload.stdout);
    assert_eq!(gw.admin_get("/status").await.json()["config"]["version"], 2);

    let stop = tokio::task::spawn_blocking(move || run_cli(&["stop", "--admin", &admin], &[]))
        .await
        .unwrap();
    assert_eq!(stop.code, 0, "{}", stop.stderr);
    assert_eq!(
        gw.admin_get("/healthz").await.status,
        503,
        "a stopping gateway reports draining"
    );

    let unreachable = run_cli(
        &[
            "reload",
            "--admin",
            &crate::support::upstream::dead_address().to_string(),
        ],
        &[],
    );
    assert_eq!(unreachable.code, 1);
}

#[tokio::test]
async fn runs_the_quickstart_example_as_documented() {
    let up = Upstream::echo();
    let quickstart = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/quickstart.yaml");
    let upstream = up.addr().to_string();
    let process = Process::start_with_env(
        &quickstart,
        &[
            ("PORT", "0"),
            ("ADMIN_PORT", "0"),
            ("WORKERS", "1"),
            ("UPSTREAM", &upstream),
        ],
    );

    let hello = get(process.addr, "/hello").await;
    assert_eq!(hello.status, 200);
    assert_eq!(hello.json()["message"], "hello from sluicegate");
    assert_eq!(hello.header("x-served-by"), "sluicegate");

    let app = get(process.addr, "/app/page").await;
    assert_eq!(app.status, 200);
    assert_eq!(app.header("x-served-by"), "sluicegate");
    assert_eq!(up.only_request().uri, "/page");
}

#[tokio::test]
async fn sighup_reloads_the_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("sluicegate.yaml");
    let base = "workers: 1\nlisteners: [{address: '127.0.0.1:0'}]\nadmin: {enabled: false}\naccess_log: {target: 'off'}\n";
    let answer = |name: &str| {
        format!("  - {{name: {name}, match: {{paths: '= /{name}'}}, plugins: [{{name: request_termination, config: {{status: 200, body: {name}}}}}]}}\n")
    };
    std::fs::write(&config, format!("{base}routes:\n{}", answer("old"))).unwrap();
    let process = Process::start(&config);
    assert_eq!(get(process.addr, "/new").await.status, 404);

    std::fs::write(
        &config,
        format!("{base}routes:\n{}{}", answer("old"), answer("new")),
    )
    .unwrap();
    process.signal("HUP");
    let addr = process.addr;
    crate::support::eventually("the new route answers after SIGHUP", || async move {
        get(addr, "/new").await.status == 200
    })
    .await;
    assert_eq!(get(addr, "/old").await.text(), "old");
}

#[test]
fn run_exits_2_for_a_bad_config_and_1_when_the_port_is_taken() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "listeners: [{address: '127.0.0.1:0', colour: blue}]\n",
    )
    .unwrap();
    let out = run_cli(&["run", "-c", bad.to_str().unwrap()], &[]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(out.stderr.contains("listeners[0].colour"), "{}", out.stderr);

    // A plain socket (no SO_REUSEPORT) holds the port.
    let holder = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = dir.path().join("taken.yaml");
    std::fs::write(
        &taken,
        format!(
            "listeners: [{{address: '{}'}}]\nadmin: {{enabled: false}}\nroutes: [{{name: r, plugins: [{{name: request_termination}}]}}]\n",
            holder.local_addr().unwrap()
        ),
    )
    .unwrap();
    let out = run_cli(&["run", "-c", taken.to_str().unwrap()], &[]);
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(out.stderr.contains("cannot bind"), "{}", out.stderr);
}
