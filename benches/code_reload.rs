//! Hot-reload costs (docs/benchmarks.md#hot-reload):
//!
//! 1. **Swap time of a 1,000-script set**, through the same `CodeRegistry::apply` the
//!    reloader calls: the first build (1,000 compiles), an update that changes one script
//!    (1 compile + swap), and an identical document (nothing compiled, nothing swapped).
//! 2. **Code-API change → first request served by the new code**: a real gateway (one
//!    worker) polling an in-process code API every `INTERVAL_SECS` (default 1); the document
//!    is changed, and a keep-alive client asks until it sees the new answer. Expect about
//!    half an interval on average plus fetch + compile + swap; the minimum shows the
//!    machinery's own cost.
//! 3. **Admin push → first request served by it** (no polling in the way).
//!
//! `cargo bench --bench code_reload` (`ROUNDS=20 INTERVAL_SECS=0.2` to change the defaults).

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use sluicegate_code::{Change, CodeRegistry, CodeSettings, ScriptSpec, Source, SourceDoc};
use sluicegate_plugins::{Phase, PhaseSet};

fn env<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn script(i: usize, version: usize) -> ScriptSpec {
    ScriptSpec {
        name: format!("example.com/script-{i}"),
        phase: Some(Phase::Access),
        domain: format!("^host{i}\\.example\\.com$"),
        code: format!(
            "-- script {i}, version {version}\nlocal key = ngx.var.http_x_api_key\nif key ~= 'k{i}' then\n  return ngx.exit(ngx.HTTP_UNAUTHORIZED)\nend\nngx.req.set_header('X-Checked', '{i}')\n"
        ),
        problem: None,
    }
}

fn summary(name: &str, mut samples: Vec<Duration>) {
    samples.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let n = samples.len();
    println!(
        "{name}: n={n} min={:.2} ms median={:.2} ms p90={:.2} ms max={:.2} ms",
        ms(samples[0]),
        ms(samples[n / 2]),
        ms(samples[(n * 9 / 10).min(n - 1)]),
        ms(samples[n - 1])
    );
}

fn swap_times() {
    let settings = CodeSettings {
        api: None,
        directory: Some("scripts".into()),
        admin_scripts: true,
        phases: PhaseSet::of(&Phase::ALL),
        all_or_nothing: false,
        priority: 900,
        lua_modules: sluicegate_lua::Modules::empty(),
    };
    let rounds: usize = env("ROUNDS", 10);
    let (mut first, mut one, mut same) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..rounds {
        let registry = CodeRegistry::default();
        let doc = |changed: Option<usize>| {
            SourceDoc::enabled(
                (0..1000)
                    .map(|i| script(i, usize::from(changed == Some(i)) * (round + 1)))
                    .collect(),
            )
        };
        let apply = |d| {
            let started = Instant::now();
            let o = registry.apply(
                Change::Replace(Source::Directory, Some(d)),
                "bench",
                Some(&settings),
            );
            (started.elapsed(), o)
        };
        let (t, o) = apply(doc(None));
        assert_eq!(
            (o.compiled, o.set.as_ref().map(|s| s.len())),
            (1000, Some(1000))
        );
        first.push(t);
        let (t, o) = apply(doc(Some(round % 1000)));
        assert_eq!(o.compiled, 1);
        one.push(t);
        let (t, o) = apply(doc(Some(round % 1000)));
        assert!(o.set.is_none());
        same.push(t);
    }
    summary("1,000-script set, first build and swap", first);
    summary("1,000-script set, one script changed", one);
    summary("1,000-script set, identical document", same);
}

/// A code API on its own thread serving whatever `doc` holds.
fn code_api(doc: Arc<Mutex<String>>) -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                let doc = doc.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |_req| {
                        let body = doc.lock().unwrap().clone();
                        async move {
                            Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(
                                Bytes::from(body),
                            )))
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
    });
    addr
}

fn document(version: usize) -> String {
    serde_json::json!({
        "general": {"status": "enabled"},
        "domains": [{"name": "^bench$", "plugins": [
            {"name": "body", "phase": "content", "code": format!("ngx.say('v{version}')")}
        ]}]
    })
    .to_string()
}

struct Client(hyper::client::conn::http1::SendRequest<Empty<Bytes>>);

impl Client {
    async fn connect(addr: SocketAddr) -> Client {
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        Client(sender)
    }

    async fn get(&mut self) -> String {
        self.0.ready().await.unwrap();
        let req = hyper::Request::get("/")
            .header("host", "bench")
            .body(Empty::new())
            .unwrap();
        let resp = self.0.send_request(req).await.unwrap();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        String::from_utf8_lossy(&body).into_owned()
    }

    /// Asks until the answer is `want`; the time it took.
    async fn until(&mut self, want: &str, since: Instant) -> Duration {
        loop {
            if self.get().await == want {
                return since.elapsed();
            }
            if since.elapsed() > Duration::from_secs(30) {
                panic!("`{want}` never served");
            }
        }
    }
}

fn live_times() {
    let rounds: usize = env("ROUNDS", 10);
    let interval: f64 = env("INTERVAL_SECS", 1.0);
    let doc = Arc::new(Mutex::new(document(0)));
    let api = code_api(doc.clone());
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("sluicegate.yaml");
    std::fs::write(
        &config,
        format!(
            "workers: 1\nlisteners: [{{address: '127.0.0.1:0'}}]\nadmin: {{address: '127.0.0.1:0'}}\naccess_log: {{target: 'off'}}\ndata_dir: data\ncode:\n  api: {{url: 'http://{api}/code.json', interval_secs: {interval}}}\nroutes: [{{name: dynamic}}]\n"
        ),
    )
    .unwrap();
    let gateway = sluicegate::gateway::Gateway::start(&config).unwrap();
    let (addr, admin) = (gateway.listeners[0], gateway.admin.unwrap());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let mut client = Client::connect(addr).await;
        client.until("v0\n", Instant::now()).await;
        let mut polled = Vec::new();
        for v in 1..=rounds {
            // Publish at a spread of points within the poll cycle (not right after a poll).
            let phase = (v * 37 % 100) as f64 / 100.0;
            tokio::time::sleep(Duration::from_secs_f64(interval * phase)).await;
            *doc.lock().unwrap() = document(v);
            let changed = Instant::now();
            polled.push(client.until(&format!("v{v}\n"), changed).await);
        }
        summary(
            &format!("code-API change -> first request on the new code (interval {interval} s)"),
            polled,
        );
        let mut pushed = Vec::new();
        for v in 1..=rounds {
            let stream = tokio::net::TcpStream::connect(admin).await.unwrap();
            let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .unwrap();
            tokio::spawn(conn);
            let req = hyper::Request::put("/scripts/pushed?phase=content&domain=%5Epush%24")
                .header("host", "admin")
                .body(Full::new(Bytes::from(format!("ngx.say('p{v}')"))))
                .unwrap();
            let started = Instant::now();
            let resp = sender.send_request(req).await.unwrap();
            assert_eq!(resp.status(), 200);
            let mut c = Client::connect(addr).await;
            let want = format!("p{v}\n");
            let took = loop {
                let req = hyper::Request::get("/")
                    .header("host", "push")
                    .body(Empty::new())
                    .unwrap();
                c.0.ready().await.unwrap();
                let body =
                    c.0.send_request(req)
                        .await
                        .unwrap()
                        .into_body()
                        .collect()
                        .await
                        .unwrap()
                        .to_bytes();
                if body == want.as_bytes() {
                    break started.elapsed();
                }
            };
            pushed.push(took);
        }
        summary("admin push -> first request on the new code", pushed);
    });
    drop(gateway);
}

fn main() {
    swap_times();
    live_times();
}
