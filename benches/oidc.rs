//! What the `oidc` plugin costs (`cargo bench --bench oidc`), against a real OpenID
//! provider (`tests/fixtures/oidc`, started by `sluicegate-testkit`; `scripts/test` installs
//! Node and the fixture's packages). Build the binary first: `cargo build --release`.
//!
//! 1. **CPU per request**: one `target/release/sluicegate` process with one worker and two
//!    routes that answer 200 themselves, `/open` without `oidc` and `/app` behind it. After
//!    a scripted login, 32 keep-alive connections send the session cookie to each route in
//!    turn for `OIDC_BENCH_SECS` (default 5) seconds; the gateway's CPU time (user + system,
//!    from `/proc`) divided by the requests it answered gives µs per request, and the
//!    difference is what `oidc` adds. Then the same with a bearer JWT from the provider
//!    instead of a session.
//! 2. **Network calls**: the provider's counters before and after: requests with a valid
//!    session or JWT make none.
//! 3. **Refresh under load**: a session whose tokens are due for refresh, 32 concurrent
//!    requests with it: the provider's token endpoint sees exactly one refresh.
//!
//! Without `--bench` (as under `cargo test --benches`) it is a short smoke run.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use serde_json::json;
use sluicegate_testkit::oidc::{OidcProvider, ProviderOptions};

type Sender = hyper::client::conn::http1::SendRequest<Empty<Bytes>>;

const SECRET: &str = "bench-client-secret";

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let secs = std::env::var("OIDC_BENCH_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let run = Duration::from_secs(if full { secs } else { 1 });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();

    let port = sluicegate_testkit::free_port();
    let ttl = 3600;
    let idp = provider(port, ttl);
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start(dir.path(), &idp, port, 60);
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let cookie = rt.block_on(login(addr, &idp, port));
    let t = now();
    let jwt = idp.sign(
        &json!({}),
        &json!({"iss": idp.issuer(), "aud": "gateway", "sub": "bench", "email": "bench@example.com",
                "email_verified": true, "iat": t, "exp": t + 3600}),
        "issuer",
    );
    let session = ("cookie", cookie.as_str());
    let bearer_value = format!("Bearer {jwt}");
    let bearer = ("authorization", bearer_value.as_str());
    // Warm up: discovery, keys, connections.
    for (path, h) in [("/open", session), ("/app", session), ("/app", bearer)] {
        let (_, ok) = rt.block_on(closed_loop(addr, path, h, 32, Duration::from_millis(300)));
        assert!(ok > 0, "{path} answered nothing");
    }
    let before = idp.stats();
    let mut per = BTreeMap::new();
    for round in 0..3 {
        for (name, path, h) in [
            ("no oidc", "/open", session),
            ("oidc, session cookie", "/app", session),
            ("oidc, bearer JWT", "/app", bearer),
        ] {
            let cpu0 = gw.cpu();
            let (answered, ok) = rt.block_on(closed_loop(addr, path, h, 32, run));
            let cpu = gw.cpu() - cpu0;
            assert_eq!(answered, ok, "{name}: every request answered 200");
            let us = cpu.as_secs_f64() * 1e6 / ok as f64;
            per.entry(name).or_insert_with(Vec::new).push(us);
            if round == 2 {
                let v = per.get_mut(name).unwrap();
                v.sort_by(f64::total_cmp);
                println!(
                    "{name}: {:.2} µs of gateway CPU per request (median of 3 runs of {} s, {ok} requests in the last)",
                    v[1],
                    run.as_secs()
                );
            }
        }
    }
    let open = per["no oidc"][1];
    println!(
        "oidc adds {:.2} µs per request with a session, {:.2} µs with a bearer JWT",
        per["oidc, session cookie"][1] - open,
        per["oidc, bearer JWT"][1] - open
    );
    let after = idp.stats();
    println!("provider calls during the runs: before {before}, after {after}");
    drop(gw);

    // Refresh: a session due for refresh, 32 requests at once.
    let port = sluicegate_testkit::free_port();
    let idp = provider(port, 4);
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start(dir.path(), &idp, port, 2);
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let cookie = rt.block_on(login(addr, &idp, port));
    std::thread::sleep(Duration::from_secs(3));
    let refreshes = idp.stats()["refresh_calls"].as_u64().unwrap();
    let statuses = rt.block_on(async {
        let mut all = Vec::new();
        for _ in 0..32 {
            let cookie = cookie.clone();
            all.push(tokio::spawn(async move {
                let mut s = connect(addr).await;
                get(&mut s, "/app", ("cookie", &cookie)).await
            }));
        }
        let mut out = Vec::new();
        for t in all {
            out.push(t.await.unwrap());
        }
        out
    });
    let made = idp.stats()["refresh_calls"].as_u64().unwrap() - refreshes;
    println!(
        "refresh under 32 concurrent requests of one session: {made} token call(s), statuses {:?}",
        statuses.iter().fold(BTreeMap::new(), |mut m, s| {
            *m.entry(*s).or_insert(0) += 1;
            m
        })
    );
    assert_eq!(made, 1);
    drop(gw);
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn provider(port: u16, ttl: u64) -> OidcProvider {
    OidcProvider::start(&ProviderOptions {
        clients: json!([{
            "client_id": "gateway", "client_secret": SECRET,
            "redirect_uris": [format!("http://127.0.0.1:{port}/login/callback")],
            "token_endpoint_auth_method": "client_secret_basic",
            "grant_types": ["authorization_code", "refresh_token"], "response_types": ["code"],
        }]),
        id_token_ttl: ttl,
        access_token_ttl: ttl,
    })
}

/// The release binary, run as its own process so its CPU time can be read.
struct Gateway(Child);

impl Gateway {
    fn start(dir: &Path, idp: &OidcProvider, port: u16, refresh_before: u64) -> Gateway {
        std::fs::write(dir.join("client"), SECRET).unwrap();
        std::fs::write(dir.join("session"), "bench-session-secret-0123456789abcdef").unwrap();
        let config = format!(
            r#"workers: 1
listeners: [{{address: "127.0.0.1:{port}", http2: false}}]
admin: {{enabled: false}}
access_log: {{target: 'off'}}
secrets:
  client: {{file: "{dir}/client"}}
  session: {{file: "{dir}/session"}}
routes:
  - name: open
    match: {{paths: /open}}
    plugins:
      - {{name: request_termination, config: {{status: 200, body: ok}}}}
  - name: app
    plugins:
      - name: oidc
        config:
          issuer: "{issuer}"
          client_id: gateway
          client_secret: "${{secret:client}}"
          public_url: "http://127.0.0.1:{port}"
          scopes: [openid, email, profile, groups, offline_access]
          session: {{secret: "${{secret:session}}", refresh_before_secs: {refresh_before}}}
          allow: {{domains: example.com}}
      - {{name: request_termination, config: {{status: 200, body: ok}}}}
"#,
            dir = dir.display(),
            issuer = idp.issuer(),
        );
        let path = dir.join("sluicegate.yaml");
        std::fs::write(&path, config).unwrap();
        let bin = binary();
        let child = Command::new(&bin)
            .args(["run", "-c"])
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("{}: {e} (run `cargo build --release` first)", bin.display())
            });
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "the gateway did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Gateway(child)
    }

    /// CPU time (user + system) the process used so far.
    fn cpu(&self) -> Duration {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.0.id())).unwrap();
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .unwrap()
            .1
            .split_whitespace()
            .collect();
        // Fields 14 and 15 of proc(5) (utime, stime), counted after the command name.
        let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
        Duration::from_secs_f64(ticks as f64 / 100.0)
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn binary() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("target/release/sluicegate")
}

/// Logs in as alice and returns the session's `Cookie` header value.
async fn login(addr: SocketAddr, idp: &OidcProvider, port: u16) -> String {
    let mut s = connect(addr).await;
    let resp = send(&mut s, "/login?rd=/app", None).await;
    let login_cookie = set_cookies(&resp);
    let auth = resp.headers()["location"].to_str().unwrap().to_string();
    let callback = idp.login(&auth, "alice@example.com", "pw");
    let path = callback
        .strip_prefix(&format!("http://127.0.0.1:{port}"))
        .unwrap()
        .to_string();
    let resp = send(&mut s, &path, Some(&login_cookie)).await;
    assert_eq!(resp.status(), 302, "login failed");
    set_cookies(&resp)
        .split("; ")
        .filter(|c| c.starts_with("sluicegate_session"))
        .collect::<Vec<_>>()
        .join("; ")
}

fn set_cookies(resp: &http::Response<Bytes>) -> String {
    resp.headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok()?.split(';').next().map(str::to_string))
        .filter(|c| !c.ends_with('='))
        .collect::<Vec<_>>()
        .join("; ")
}

async fn send(s: &mut Sender, path: &str, cookie: Option<&str>) -> http::Response<Bytes> {
    let mut req = Request::get(path)
        .header("host", "bench")
        .header("accept", "text/html");
    if let Some(c) = cookie {
        req = req.header("cookie", c);
    }
    s.ready().await.unwrap();
    let resp = s
        .send_request(req.body(Empty::new()).unwrap())
        .await
        .unwrap();
    let (head, body) = resp.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    http::Response::from_parts(head, body)
}

async fn connect(addr: SocketAddr) -> Sender {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.set_nodelay(true).unwrap();
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    sender
}

async fn get(sender: &mut Sender, path: &str, header: (&str, &str)) -> Option<u16> {
    let req = Request::get(path)
        .header("host", "bench")
        .header("accept", "application/json")
        .header(header.0, header.1)
        .body(Empty::new())
        .unwrap();
    sender.ready().await.ok()?;
    let resp = sender.send_request(req).await.ok()?;
    let status = resp.status().as_u16();
    let _ = resp.into_body().collect().await;
    Some(status)
}

/// Requests answered and answered 200 by `conns` closed-loop connections in `duration`.
async fn closed_loop(
    addr: SocketAddr,
    path: &'static str,
    header: (&'static str, &str),
    conns: usize,
    duration: Duration,
) -> (u64, u64) {
    let answered = Arc::new(AtomicU64::new(0));
    let ok = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let value = header.1.to_string();
    let mut tasks = Vec::new();
    for _ in 0..conns {
        let (answered, ok, value) = (answered.clone(), ok.clone(), value.clone());
        tasks.push(tokio::spawn(async move {
            let mut sender = connect(addr).await;
            while started.elapsed() < duration {
                match get(&mut sender, path, (header.0, &value)).await {
                    Some(200) => {
                        answered.fetch_add(1, Ordering::Relaxed);
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Some(_) => {
                        answered.fetch_add(1, Ordering::Relaxed);
                    }
                    None => break,
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    (answered.load(Ordering::Relaxed), ok.load(Ordering::Relaxed))
}
