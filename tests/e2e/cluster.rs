//! Cluster mode end to end: a real PostgreSQL (`sluicegate-testkit`), `migrations up` and
//! three `sluicegate run -c examples/cluster.yaml` processes sharing it, driven through the
//! `/v1` admin API as a user would with curl.
//!
//! "Applied" is always proven by the node itself (`/v1/cluster/wait` for the revision a
//! write returned), then by traffic: the route answers, or stops answering, on every node.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use serde_json::{json, Value};
use sluicegate_testkit::postgres::PostgresServer;

use crate::support::bin::{run_cli, Process};
use crate::support::client::{full, Reply};
use crate::support::{eventually, get, request, send, Upstream, STEP};

const TOKEN: &str = "cluster-e2e-admin-token-0123456789";

fn example() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/cluster.yaml")
}

/// One `sluicegate run` node.
struct Node {
    name: String,
    process: Process,
    admin: SocketAddr,
}

impl Node {
    fn addr(&self) -> SocketAddr {
        self.process.addr
    }
}

/// PostgreSQL with the schema migrated, an echo upstream, and the nodes' data directories.
struct Cluster {
    pg: PostgresServer,
    upstream: Upstream,
    dir: tempfile::TempDir,
}

impl Cluster {
    fn start() -> Cluster {
        let pg = PostgresServer::start();
        let cluster = Cluster {
            pg,
            upstream: Upstream::echo(),
            dir: tempfile::tempdir().unwrap(),
        };
        cluster.migrate();
        cluster
    }

    fn migrate(&self) {
        let url = self.pg.url();
        let out = run_cli(
            &["migrations", "up", "-c", example().to_str().unwrap()],
            &[("PG_URL", &url), ("ADMIN_TOKEN", TOKEN)],
        );
        assert_eq!(out.code, 0, "migrations up: {}{}", out.stdout, out.stderr);
    }

    fn data_dir(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn env(&self, name: &str) -> Vec<(String, String)> {
        vec![
            ("PG_URL".into(), self.pg.url()),
            ("ADMIN_TOKEN".into(), TOKEN.into()),
            ("NODE_NAME".into(), name.into()),
            (
                "DATA_DIR".into(),
                self.data_dir(name).to_string_lossy().into_owned(),
            ),
            ("PORT".into(), "0".into()),
            ("ADMIN_PORT".into(), "0".into()),
        ]
    }

    fn node(&self, name: &str) -> Node {
        self.node_from(&example(), name)
    }

    fn node_from(&self, config: &Path, name: &str) -> Node {
        let env = self.env(name);
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let process = Process::start_with_env(config, &env);
        let admin = admin_address(&process);
        Node {
            name: name.into(),
            process,
            admin,
        }
    }

    fn nodes(&self) -> Vec<Node> {
        ["a", "b", "c"].iter().map(|n| self.node(n)).collect()
    }

    fn upstream_body(&self, name: &str) -> Value {
        json!({"name": name, "targets": [self.upstream.addr().to_string()]})
    }
}

/// The admin listener's address, from the node's `Admin API listening.` log line.
fn admin_address(process: &Process) -> SocketAddr {
    let until = std::time::Instant::now() + STEP;
    loop {
        for line in process.stderr.lock().unwrap().iter() {
            let Ok(v) = serde_json::from_str::<Value>(line) else {
                continue;
            };
            if v["message"] == "Admin API listening." {
                return v["address"].as_str().unwrap().parse().unwrap();
            }
        }
        assert!(
            std::time::Instant::now() < until,
            "no `Admin API listening.` line: {:#?}",
            process.stderr.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// An admin API call with the token.
async fn call(node: &Node, method: &str, path: &str, body: Option<Value>) -> Reply {
    call_as(node.admin, Some(TOKEN), method, path, body).await
}

async fn call_as(
    admin: SocketAddr,
    token: Option<&str>,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> Reply {
    let mut req = request(method, path).header("content-type", "application/json");
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let bytes = body.map_or_else(Bytes::new, |b| Bytes::from(b.to_string()));
    send(admin, req.body(Full::new(bytes)).unwrap()).await
}

/// The revision a write answered with.
fn revision_of(reply: &Reply) -> i64 {
    reply
        .header("x-sluicegate-revision")
        .parse()
        .unwrap_or_else(|_| panic!("no revision header: {reply:?}"))
}

/// Waits until every node applied `revision` (the node answers 200 only then).
async fn all_applied(nodes: &[Node], revision: i64) {
    for n in nodes {
        let r = call(
            n,
            "GET",
            &format!("/v1/cluster/wait?revision={revision}&timeout_ms=10000"),
            None,
        )
        .await;
        assert_eq!(r.status, 200, "node {} at {revision}: {}", n.name, r.text());
        assert!(r.json()["revision"].as_i64().unwrap() >= revision);
    }
}

async fn status_on(addr: SocketAddr, path: &str) -> u16 {
    get(addr, path).await.status.as_u16()
}

async fn cluster_state(node: &Node) -> Value {
    call(node, "GET", "/v1/cluster", None).await.json()
}

fn route(name: &str, path: &str, upstream: &str) -> Value {
    json!({"name": name, "match": {"paths": path}, "upstream": upstream})
}

/// A counter or gauge from the node's `/metrics`.
async fn metric(node: &Node, name: &str) -> f64 {
    let text = call(node, "GET", "/metrics", None).await.text();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no metric {name} in:\n{text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_update_and_delete_propagate_to_every_node() {
    let c = Cluster::start();
    let nodes = c.nodes();
    let (a, b) = (&nodes[0], &nodes[1]);

    let up = call(a, "POST", "/v1/upstreams", Some(c.upstream_body("app"))).await;
    assert_eq!(up.status, 201, "{}", up.text());
    let created = call(a, "POST", "/v1/routes", Some(route("r", "/x/", "app"))).await;
    assert_eq!(created.status, 201, "{}", created.text());
    assert_eq!(created.json()["upstream"], "app");
    all_applied(&nodes, revision_of(&created)).await;
    for n in &nodes {
        let reply = get(n.addr(), "/x/1").await;
        assert_eq!(reply.status, 200, "node {}", n.name);
        assert_eq!(reply.header("x-upstream-path"), "/x/1");
    }

    // A name taken, a stale If-Match, an entity that does not exist.
    let taken = call(a, "POST", "/v1/routes", Some(route("r", "/z/", "app"))).await;
    assert_eq!(taken.status, 409, "{}", taken.text());
    let etag = call(b, "GET", "/v1/routes/r", None).await;
    assert_eq!(etag.status, 200);
    assert_eq!(etag.json()["match"]["paths"], "/x/");
    let etag = etag.header("etag").to_string();
    assert!(!etag.is_empty());

    // PUT on node b replaces the whole route.
    let put = send(
        b.admin,
        request("PUT", "/v1/routes/r")
            .header("authorization", format!("Bearer {TOKEN}"))
            .header("if-match", &etag)
            .body(full(route("r", "/y/", "app").to_string()))
            .unwrap(),
    )
    .await;
    assert_eq!(put.status, 200, "{}", put.text());
    all_applied(&nodes, revision_of(&put)).await;
    for n in &nodes {
        assert_eq!(status_on(n.addr(), "/y/1").await, 200, "node {}", n.name);
        assert_eq!(status_on(n.addr(), "/x/1").await, 404, "node {}", n.name);
    }
    let stale = send(
        a.admin,
        request("PUT", "/v1/routes/r")
            .header("authorization", format!("Bearer {TOKEN}"))
            .header("if-match", &etag)
            .body(full(route("r", "/w/", "app").to_string()))
            .unwrap(),
    )
    .await;
    assert_eq!(stale.status, 412, "{}", stale.text());

    // PATCH merges; DELETE removes.
    let patched = call(
        &nodes[2],
        "PATCH",
        "/v1/routes/r",
        Some(json!({"match": {"paths": "/p/"}})),
    )
    .await;
    assert_eq!(patched.status, 200, "{}", patched.text());
    assert_eq!(patched.json()["upstream"], "app");
    all_applied(&nodes, revision_of(&patched)).await;
    for n in &nodes {
        assert_eq!(status_on(n.addr(), "/p/1").await, 200, "node {}", n.name);
    }
    // The same PATCH again writes nothing; its ETag is still the entity's.
    let again = call(
        a,
        "PATCH",
        "/v1/routes/r",
        Some(json!({"match": {"paths": "/p/"}})),
    )
    .await;
    assert_eq!(again.status, 200);
    assert_eq!(again.header("etag"), patched.header("etag"));
    assert_eq!(revision_of(&again), revision_of(&patched));
    let bad_query = call(a, "GET", "/v1/routes?size=many", None).await;
    assert_eq!(bad_query.status, 400);
    assert_eq!(bad_query.json()["errors"][0]["path"], "query");

    let deleted = call(a, "DELETE", "/v1/routes/r", None).await;
    assert_eq!(deleted.status, 204);
    all_applied(&nodes, revision_of(&deleted)).await;
    for n in &nodes {
        assert_eq!(status_on(n.addr(), "/p/1").await, 404, "node {}", n.name);
    }
    assert_eq!(call(a, "DELETE", "/v1/routes/r", None).await.status, 404);
    assert_eq!(call(a, "GET", "/v1/routes/r", None).await.status, 404);

    // Every node reports itself at the last revision.
    let last = revision_of(&deleted);
    eventually("every node reports the last revision", || async {
        let r = call(b, "GET", "/v1/cluster/nodes", None).await;
        assert_eq!(r.status, 200);
        let nodes = r.json()["nodes"].as_array().unwrap().clone();
        nodes.len() == 3
            && nodes
                .iter()
                .all(|n| n["revision"] == last && n["state"] == "online")
    })
    .await;
    let reported = call(b, "GET", "/v1/cluster/nodes", None).await.json()["nodes"]
        .as_array()
        .unwrap()
        .clone();
    let names: Vec<&str> = reported
        .iter()
        .map(|n| n["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["a", "b", "c"]);

    // The collection reads back what was written, paged.
    for i in 0..3 {
        let r = call(
            a,
            "POST",
            "/v1/upstreams",
            Some(c.upstream_body(&format!("u{i}"))),
        )
        .await;
        assert_eq!(r.status, 201);
    }
    let page = call(a, "GET", "/v1/upstreams?size=2", None).await.json();
    assert_eq!(page["total"], 4);
    assert_eq!(page["data"].as_array().unwrap().len(), 2);
    assert!(page["next"].is_string(), "{page}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_admin_endpoint_needs_the_token() {
    let c = Cluster::start();
    let a = c.node("a");
    for (method, path, body) in [
        ("POST", "/v1/upstreams", Some(c.upstream_body("app"))),
        ("POST", "/v1/routes", Some(route("r", "/x/", "app"))),
        ("PUT", "/v1/routes/r", Some(route("r", "/x/", "app"))),
        ("DELETE", "/v1/routes/r", None),
        ("GET", "/v1/cluster/nodes", None),
        ("GET", "/v1/config", None),
        ("GET", "/status", None),
        ("POST", "/reload", None),
    ] {
        for token in [None, Some("not-the-admin-token-at-all-0000")] {
            let r = call_as(a.admin, token, method, path, body.clone()).await;
            assert_eq!(
                r.status,
                401,
                "{method} {path} with {token:?}: {}",
                r.text()
            );
            assert_eq!(r.json()["error"], "unauthorized");
        }
    }
    // The example leaves these open, by choice.
    assert_eq!(
        call_as(a.admin, None, "GET", "/healthz", None).await.status,
        200
    );
    assert_eq!(
        call_as(a.admin, None, "GET", "/metrics", None).await.status,
        200
    );
    // Nothing was written by the refused calls.
    assert_eq!(cluster_state(&a).await["store_revision"], 0);

    // The commands that talk to a running node send the file's token.
    let port = a.admin.port().to_string();
    let url = c.pg.url();
    let env = [
        ("PG_URL", url.as_str()),
        ("ADMIN_TOKEN", TOKEN),
        ("ADMIN_PORT", &port),
    ];
    let config = example();
    let reload =
        tokio::task::block_in_place(|| run_cli(&["reload", "-c", config.to_str().unwrap()], &env));
    assert_eq!(reload.code, 0, "{}{}", reload.stdout, reload.stderr);
    let wal = tokio::task::block_in_place(|| {
        run_cli(
            &["wal", "--admin", &format!("127.0.0.1:{port}"), "stats"],
            &[("SLUICEGATE_ADMIN_TOKEN", TOKEN)],
        )
    });
    assert_eq!(wal.code, 0, "{}{}", wal.stdout, wal.stderr);
    let refused = tokio::task::block_in_place(|| {
        run_cli(&["reload", "--admin", &format!("127.0.0.1:{port}")], &[])
    });
    assert_eq!(refused.code, 1);
    assert!(
        refused.stderr.contains("SLUICEGATE_ADMIN_TOKEN"),
        "{}",
        refused.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_change_is_refused_and_no_node_changes() {
    let c = Cluster::start();
    let nodes = c.nodes();
    let a = &nodes[0];
    let up = call(a, "POST", "/v1/upstreams", Some(c.upstream_body("app"))).await;
    assert_eq!(up.status, 201);
    let before = revision_of(&up);
    all_applied(&nodes, before).await;

    // The same messages and paths as `sluicegate check`.
    let bad = call(a, "POST", "/v1/routes", Some(route("bad", "x", "missing"))).await;
    assert_eq!(bad.status, 400, "{}", bad.text());
    let errors = bad.json()["errors"].as_array().unwrap().clone();
    let paths: Vec<&str> = errors.iter().map(|e| e["path"].as_str().unwrap()).collect();
    assert!(paths.contains(&"routes[0].upstream"), "{errors:?}");
    assert!(paths.contains(&"routes[0].match.paths[0]"), "{errors:?}");
    assert!(errors.iter().all(|e| e["message"].is_string()));

    // A Lua plugin that does not compile never reaches the store either.
    let lua = call(
        a,
        "POST",
        "/v1/plugins",
        Some(json!({"name": "lua", "config": {"name": "broken", "phase": "access", "code": "if then"}})),
    )
    .await;
    assert_eq!(lua.status, 400, "{}", lua.text());
    assert!(lua.text().contains("plugins[0]"), "{}", lua.text());

    // A whole configuration with one bad entry is refused whole; dry_run only validates.
    let config = json!({
        "upstreams": [c.upstream_body("app")],
        "routes": [route("ok", "/ok/", "app"), route("bad", "/bad/", "nope")],
    });
    let replaced = call(a, "PUT", "/v1/config", Some(config)).await;
    assert_eq!(replaced.status, 400, "{}", replaced.text());
    let dry = call(
        a,
        "PUT",
        "/v1/config?dry_run=true",
        Some(
            json!({"upstreams": [c.upstream_body("app")], "routes": [route("ok", "/ok/", "app")]}),
        ),
    )
    .await;
    assert_eq!(dry.status, 200, "{}", dry.text());

    for n in &nodes {
        let s = cluster_state(n).await;
        assert_eq!(s["store_revision"], before, "node {}: {s}", n.name);
        assert_eq!(s["revision"], before, "node {}: {s}", n.name);
        assert_eq!(s["rejected_revision"], Value::Null);
        assert_eq!(status_on(n.addr(), "/ok/").await, 404);
    }
    assert_eq!(
        c.pg.sql("sluicegate", "SELECT revision FROM sluicegate_cluster"),
        before.to_string()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_restarting_while_changes_are_made_loses_none() {
    let mut c = Cluster::start();
    let nodes = c.nodes();
    let up = call(
        &nodes[0],
        "POST",
        "/v1/upstreams",
        Some(c.upstream_body("app")),
    )
    .await;
    assert_eq!(up.status, 201);

    // A client writing 30 routes through node a, retrying on 503 as a client should (a
    // retry after a lost answer may find its route there already: 409).
    let admin = nodes[0].admin;
    let writer = tokio::spawn(async move {
        for i in 0..30 {
            loop {
                let body = route(&format!("r{i}"), &format!("/r{i}/"), "app");
                let r = call_as(admin, Some(TOKEN), "POST", "/v1/routes", Some(body)).await;
                match r.status.as_u16() {
                    201 | 409 => break,
                    503 => {
                        assert!(r.header("retry-after").parse::<u64>().is_ok(), "{r:?}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    s => panic!("route {i}: {s} {}", r.text()),
                }
            }
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
    });
    // The store goes down once node b serves the first of them.
    eventually("node b serves the first route", || async {
        status_on(nodes[1].addr(), "/r0/").await == 200
    })
    .await;
    tokio::task::block_in_place(|| c.pg.stop());

    // Down: reads of the node's own state work, writes answer 503, traffic is served.
    let s = cluster_state(&nodes[1]).await;
    eventually("node b sees the store down", || async {
        cluster_state(&nodes[1]).await["store"] == "offline"
    })
    .await;
    assert!(s["revision"].as_i64().unwrap() >= 1);
    assert_eq!(call(&nodes[1], "GET", "/v1/routes", None).await.status, 200);
    assert_eq!(status_on(nodes[1].addr(), "/r0/").await, 200);
    let nodes_down = call(&nodes[1], "GET", "/v1/cluster/nodes", None).await;
    assert_eq!(nodes_down.status, 503);
    // A write now is refused at once, with a hint when to retry. (The writer's own
    // writes may all miss the outage: one committed just before it waits, up to a few
    // seconds, for its node to apply it, and that can span the whole outage.)
    let refused = call(
        &nodes[0],
        "POST",
        "/v1/routes",
        Some(route("down", "/down/", "app")),
    )
    .await;
    assert_eq!(refused.status, 503, "{refused:?}");
    assert!(refused.header("retry-after").parse::<u64>().is_ok());
    tokio::time::sleep(Duration::from_millis(700)).await;
    tokio::task::block_in_place(|| c.pg.start_again());

    crate::support::within("the writer", writer).await.unwrap();
    let head: i64 =
        c.pg.sql("sluicegate", "SELECT revision FROM sluicegate_cluster")
            .parse()
            .unwrap();
    all_applied(&nodes, head).await;
    for n in &nodes {
        let routes = call(n, "GET", "/v1/routes?size=100", None).await.json();
        assert_eq!(routes["total"], 30, "node {}", n.name);
        assert_eq!(status_on(n.addr(), "/r29/").await, 200, "node {}", n.name);
        assert_eq!(cluster_state(n).await["store"], "online");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_started_while_the_store_is_down_serves_its_copy_then_catches_up() {
    let mut c = Cluster::start();
    let mut nodes = c.nodes();
    let up = call(
        &nodes[0],
        "POST",
        "/v1/upstreams",
        Some(c.upstream_body("app")),
    )
    .await;
    assert_eq!(up.status, 201);
    let r = call(
        &nodes[0],
        "POST",
        "/v1/routes",
        Some(route("r", "/x/", "app")),
    )
    .await;
    let copied = revision_of(&r);
    all_applied(&nodes, copied).await;
    // A node writes its copy just after it applies a revision.
    let data_dir = c.data_dir("c");
    crate::support::eventually("node c's copy of the revision", || {
        let written = sluicegate_cluster::disk::read(&data_dir)
            .ok()
            .flatten()
            .is_some_and(|e| e.revision == copied);
        async move { written }
    })
    .await;

    // Node c stops; the store goes down; c starts again from its copy on disk.
    nodes.pop();
    tokio::task::block_in_place(|| c.pg.stop());
    let c_node = c.node("c");
    assert_eq!(status_on(c_node.addr(), "/x/1").await, 200);
    let s = cluster_state(&c_node).await;
    assert_eq!(s["state"], "offline", "{s}");
    assert_eq!(s["revision"], copied, "{s}");
    assert!(s["since"].is_string(), "{s}");
    let status = call(&c_node, "GET", "/status", None).await.json();
    assert_eq!(status["cluster"]["state"], "offline");

    // A node with no copy refuses to start rather than serve nothing.
    let env = c.env("fresh");
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let refused = run_cli(&["run", "-c", example().to_str().unwrap()], &env);
    assert_ne!(refused.code, 0);
    assert!(
        refused.stderr.contains("no copy of an earlier revision"),
        "{}",
        refused.stderr
    );

    // The store returns; a change made on node a reaches c.
    tokio::task::block_in_place(|| c.pg.start_again());
    eventually("node a reconnects", || async {
        cluster_state(&nodes[0]).await["store"] == "online"
    })
    .await;
    let changed = call(
        &nodes[0],
        "PATCH",
        "/v1/routes/r",
        Some(json!({"match": {"paths": "/y/"}})),
    )
    .await;
    assert_eq!(changed.status, 200, "{}", changed.text());
    nodes.push(c_node);
    all_applied(&nodes, revision_of(&changed)).await;
    assert_eq!(status_on(nodes[2].addr(), "/y/1").await, 200);
    assert_eq!(cluster_state(&nodes[2]).await["state"], "online");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_restarts_at_the_latest_revision() {
    let c = Cluster::start();
    let mut nodes = c.nodes();
    let up = call(
        &nodes[0],
        "POST",
        "/v1/upstreams",
        Some(c.upstream_body("app")),
    )
    .await;
    all_applied(&nodes, revision_of(&up)).await;

    let mut b = nodes.remove(1);
    b.process.signal("KILL");
    b.process.wait_exit(STEP);
    let r = call(
        &nodes[0],
        "POST",
        "/v1/routes",
        Some(route("r", "/x/", "app")),
    )
    .await;
    assert_eq!(r.status, 201);

    let b = c.node("b");
    assert_eq!(cluster_state(&b).await["revision"], revision_of(&r));
    assert_eq!(status_on(b.addr(), "/x/").await, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replaced_database_makes_every_node_resync() {
    let c = Cluster::start();
    let nodes = c.nodes();
    let up = call(
        &nodes[0],
        "POST",
        "/v1/upstreams",
        Some(c.upstream_body("app")),
    )
    .await;
    assert_eq!(up.status, 201);
    let old = call(
        &nodes[0],
        "POST",
        "/v1/routes",
        Some(route("old", "/old/", "app")),
    )
    .await;
    all_applied(&nodes, revision_of(&old)).await;
    let old_id = cluster_state(&nodes[0]).await["cluster_id"].clone();

    c.pg.drop_database("sluicegate");
    c.pg.create_database("sluicegate");
    c.migrate();
    // The new database starts at revision 1 again, lower than the nodes': only its new
    // cluster id tells them apart.
    let up = call(
        &nodes[1],
        "POST",
        "/v1/upstreams",
        Some(c.upstream_body("app")),
    )
    .await;
    assert_eq!(up.status, 201, "{}", up.text());
    let new = call(
        &nodes[1],
        "POST",
        "/v1/routes",
        Some(route("new", "/new/", "app")),
    )
    .await;
    assert_eq!(new.status, 201, "{}", new.text());
    for n in &nodes {
        eventually("the node resyncs", || async {
            let s = cluster_state(n).await;
            s["cluster_id"] != old_id && s["revision"] == revision_of(&new)
        })
        .await;
        assert_eq!(status_on(n.addr(), "/new/").await, 200, "node {}", n.name);
        assert_eq!(status_on(n.addr(), "/old/").await, 404, "node {}", n.name);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_writing_at_once_are_totally_ordered() {
    let c = Cluster::start();
    let nodes = c.nodes();
    let mut tasks = Vec::new();
    for (i, n) in nodes.iter().take(2).enumerate() {
        for j in 0..15 {
            let admin = n.admin;
            let body = c.upstream_body(&format!("n{i}-{j}"));
            tasks.push(tokio::spawn(async move {
                call_as(admin, Some(TOKEN), "POST", "/v1/upstreams", Some(body)).await
            }));
        }
    }
    let mut revisions = Vec::new();
    for t in tasks {
        let r = t.await.unwrap();
        assert_eq!(r.status, 201, "{}", r.text());
        revisions.push(revision_of(&r));
    }
    revisions.sort_unstable();
    assert_eq!(
        revisions,
        (1..=30).collect::<Vec<i64>>(),
        "one revision per write"
    );
    all_applied(&nodes, 30).await;
    for n in &nodes {
        let page = call(n, "GET", "/v1/upstreams?size=100", None).await.json();
        assert_eq!(page["total"], 30, "node {}", n.name);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_change_among_a_thousand_routes_reads_only_that_change() {
    let c = Cluster::start();
    let nodes = c.nodes();
    let routes: Vec<Value> = (0..1000)
        .map(|i| route(&format!("r{i}"), &format!("/r{i}/"), "app"))
        .collect();
    let replaced = call(
        &nodes[0],
        "PUT",
        "/v1/config",
        Some(json!({"upstreams": [c.upstream_body("app")], "routes": routes})),
    )
    .await;
    assert_eq!(replaced.status, 200, "{}", replaced.text());
    all_applied(&nodes, revision_of(&replaced)).await;
    for n in &nodes {
        assert_eq!(status_on(n.addr(), "/r999/").await, 200);
    }

    let before: Vec<f64> = futures_read(&nodes).await;
    let one = call(
        &nodes[0],
        "PATCH",
        "/v1/routes/r500",
        Some(json!({"match": {"paths": "/moved/"}})),
    )
    .await;
    assert_eq!(one.status, 200, "{}", one.text());
    all_applied(&nodes, revision_of(&one)).await;
    let after: Vec<f64> = futures_read(&nodes).await;
    for (i, n) in nodes.iter().enumerate() {
        assert_eq!(
            after[i] - before[i],
            1.0,
            "node {} read more than the change",
            n.name
        );
        assert_eq!(status_on(n.addr(), "/moved/").await, 200);
        assert_eq!(status_on(n.addr(), "/r500/").await, 404);
        assert_eq!(status_on(n.addr(), "/r501/").await, 200);
    }
}

async fn futures_read(nodes: &[Node]) -> Vec<f64> {
    let mut out = Vec::new();
    for n in nodes {
        out.push(metric(n, "sluicegate_cluster_rows_read_total").await);
    }
    out
}

#[test]
fn migrations_run_twice_at_once_both_succeed() {
    let pg = PostgresServer::start();
    let url = pg.url();
    let config = example();
    let runs: Vec<_> = (0..3)
        .map(|_| {
            let url = url.clone();
            let config = config.clone();
            std::thread::spawn(move || {
                run_cli(
                    &["migrations", "up", "-c", config.to_str().unwrap()],
                    &[("PG_URL", &url), ("ADMIN_TOKEN", TOKEN)],
                )
            })
        })
        .collect();
    for r in runs {
        let out = r.join().unwrap();
        assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    }
    let status = run_cli(
        &["migrations", "status", "-c", config.to_str().unwrap()],
        &[("PG_URL", &url), ("ADMIN_TOKEN", TOKEN)],
    );
    assert_eq!(status.code, 0, "{}", status.stderr);
    assert_eq!(
        pg.sql(
            "sluicegate",
            "SELECT count(*) FROM sluicegate_schema_migrations"
        ),
        "1"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumers_and_their_credentials_admit_clients_on_every_node() {
    let c = Cluster::start();
    let nodes = c.nodes();
    let a = &nodes[0];
    let up = call(a, "POST", "/v1/upstreams", Some(c.upstream_body("app"))).await;
    assert_eq!(up.status, 201);
    let guarded = json!({
        "name": "api", "match": {"paths": "/api/"}, "upstream": "app",
        "plugins": [{"name": "key_auth", "config": {"consumers": true}}],
    });
    assert_eq!(
        call(a, "POST", "/v1/routes", Some(guarded)).await.status,
        201
    );
    let made = call(
        a,
        "POST",
        "/v1/consumers",
        Some(json!({"name": "partner-a"})),
    )
    .await;
    assert_eq!(made.status, 201, "{}", made.text());

    // A credential is added under its consumer; the id is made when none is given.
    let cred = call(
        a,
        "POST",
        "/v1/consumers/partner-a/credentials",
        Some(json!({"type": "key_auth", "key": "key-of-partner-a-0001"})),
    )
    .await;
    assert_eq!(cred.status, 201, "{}", cred.text());
    let id = cred.json()["id"].as_str().unwrap().to_string();
    assert!(cred.header("location").ends_with(&id));
    all_applied(&nodes, revision_of(&cred)).await;
    let with_key = |n: &Node| {
        let addr = n.addr();
        async move {
            send(
                addr,
                request("GET", "/api/x")
                    .header("x-api-key", "key-of-partner-a-0001")
                    .body(full(""))
                    .unwrap(),
            )
            .await
            .status
        }
    };
    for n in &nodes {
        assert_eq!(with_key(n).await, 200, "node {}", n.name);
        assert_eq!(status_on(n.addr(), "/api/x").await, 401, "node {}", n.name);
    }
    let listed = call(
        &nodes[1],
        "GET",
        "/v1/consumers/partner-a/credentials",
        None,
    )
    .await;
    assert_eq!(listed.json()["total"], 1);
    assert_eq!(
        call(
            &nodes[1],
            "GET",
            &format!("/v1/consumers/partner-a/credentials/{id}"),
            None
        )
        .await
        .json()["type"],
        "key_auth"
    );

    // The same credential again writes nothing.
    let same = call(
        a,
        "PUT",
        &format!("/v1/consumers/partner-a/credentials/{id}"),
        Some(json!({"type": "key_auth", "key": "key-of-partner-a-0001"})),
    )
    .await;
    assert_eq!(same.status, 200, "{}", same.text());
    assert_eq!(revision_of(&same), revision_of(&cred));
    assert_eq!(same.header("etag"), cred.header("etag"));

    // Refused before the store: an unknown type, the same key twice, a missing consumer.
    let bad = call(
        a,
        "POST",
        "/v1/consumers/partner-a/credentials",
        Some(json!({"type": "ldap"})),
    )
    .await;
    assert_eq!(bad.status, 400, "{}", bad.text());
    assert_eq!(
        bad.json()["errors"][0]["path"],
        "consumers[0].credentials[1].type"
    );
    let twice = call(a, "POST", "/v1/consumers", Some(json!({"name": "b", "credentials": [{"type": "key_auth", "key": "key-of-partner-a-0001"}]}))).await;
    assert_eq!(twice.status, 400, "{}", twice.text());
    let nobody = call(
        a,
        "POST",
        "/v1/consumers/nobody/credentials",
        Some(json!({"type": "key_auth", "key": "k"})),
    )
    .await;
    assert_eq!(nobody.status, 404);

    // Deleting the credential locks the client out everywhere.
    let gone = call(
        a,
        "DELETE",
        &format!("/v1/consumers/partner-a/credentials/{id}"),
        None,
    )
    .await;
    assert_eq!(gone.status, 204);
    all_applied(&nodes, revision_of(&gone)).await;
    for n in &nodes {
        assert_eq!(with_key(n).await, 401, "node {}", n.name);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_exported_configuration_loads_as_a_file() {
    let c = Cluster::start();
    let a = c.node("a");
    let config = json!({
        "upstreams": [c.upstream_body("app")],
        "routes": [route("api", "/api/", "app"), route("yes", "/yes/", "app")],
        "plugins": [{"name": "lua", "config": {"name": "tag", "phase": "header_filter",
            "code": "-- two lines: \"quoted\", 'single'\nngx.header[\"X-Tag\"] = \"yes: no\"\n"}}],
        "consumers": [{"name": "partner-a", "credentials": [{"id": "k", "type": "key_auth", "key": "0123"}]}],
    });
    let put = call(&a, "PUT", "/v1/config", Some(config.clone())).await;
    assert_eq!(put.status, 200, "{}", put.text());

    let json_export = call(&a, "GET", "/v1/config", None).await.json();
    let mut expected = config.clone();
    expected["scripts"] = json!([]);
    expected["certificates"] = json!([]);
    assert_eq!(json_export, expected, "every section, the empty ones too");
    let yaml = call(&a, "GET", "/v1/config?format=yaml", None).await;
    assert_eq!(yaml.status, 200);
    assert_eq!(yaml.header("content-type"), "application/yaml");
    let text = yaml.text();
    assert!(text.contains("code: |"), "{text}");

    // The export plus a listener is a file `check` accepts as it stands, the store's inline
    // credential aside (a file names secrets): drop the consumers for the check.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("exported.yaml");
    assert!(!text.starts_with("consumers:"), "{text}");
    let kept = text.split("\nconsumers:").next().unwrap();
    std::fs::write(
        &file,
        format!("listeners:\n  - address: 127.0.0.1:0\n{kept}"),
    )
    .unwrap();
    let out = run_cli(&["check", "-c", file.to_str().unwrap()], &[]);
    assert_eq!(
        out.code,
        0,
        "{}\n{}",
        out.stderr,
        std::fs::read_to_string(&file).unwrap()
    );
    assert!(out.stdout.contains("2 routes"), "{}", out.stdout);
    let bad = call(&a, "GET", "/v1/config?format=toml", None).await;
    assert_eq!(bad.status, 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scripts_run_on_every_node_and_a_broken_one_never_reaches_the_store() {
    let c = Cluster::start();
    let nodes = c.nodes();
    let a = &nodes[0];
    assert_eq!(
        call(a, "POST", "/v1/upstreams", Some(c.upstream_body("app")))
            .await
            .status,
        201
    );
    assert_eq!(
        call(a, "POST", "/v1/routes", Some(route("r", "/x/", "app")))
            .await
            .status,
        201
    );
    for (name, header) in [("tag-one", "X-One"), ("tag-two", "X-Two")] {
        let script = json!({"name": name, "phase": "header_filter",
            "code": format!("ngx.header[\"{header}\"] = \"on\"")});
        let r = call(a, "POST", "/v1/scripts", Some(script)).await;
        assert_eq!(r.status, 201, "{}", r.text());
        all_applied(&nodes, revision_of(&r)).await;
    }
    for n in &nodes {
        let reply = get(n.addr(), "/x/").await;
        assert_eq!(reply.status, 200);
        assert_eq!(reply.header("x-one"), "on", "node {}", n.name);
        assert_eq!(reply.header("x-two"), "on", "node {}", n.name);
    }

    let before = cluster_state(a).await["store_revision"].clone();
    let broken = json!({"name": "broken", "phase": "access", "code": "if then end"});
    let r = call(&nodes[1], "POST", "/v1/scripts", Some(broken)).await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(
        r.json()["errors"][0]["path"]
            .as_str()
            .unwrap()
            .starts_with("scripts[2]"),
        "{}",
        r.text()
    );
    assert_eq!(r.json()["errors"][0]["entity"], "scripts/broken");
    assert_eq!(cluster_state(a).await["store_revision"], before);

    let gone = call(a, "DELETE", "/v1/scripts/tag-one", None).await;
    assert_eq!(gone.status, 204);
    all_applied(&nodes, revision_of(&gone)).await;
    for n in &nodes {
        let reply = get(n.addr(), "/x/").await;
        assert_eq!(reply.header("x-one"), "", "node {}", n.name);
        assert_eq!(reply.header("x-two"), "on", "node {}", n.name);
    }
}

/// Without a store, the same sections live in the file.
#[test]
fn a_file_carries_scripts_and_consumers_with_their_paths_in_errors() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("file.yaml");
    let base = "listeners:\n  - address: 127.0.0.1:0\n\
                secrets:\n  partner_key: {env: PARTNER_KEY}\n\
                consumers:\n  - name: partner-a\n    credentials:\n      - {type: key_auth, key: \"${secret:partner_key}\"}\n";
    std::fs::write(
        &file,
        format!("{base}scripts:\n  - {{name: tag, phase: header_filter, code: \"ngx.header['X-Tag'] = 'on'\"}}\n"),
    )
    .unwrap();
    let env = [("PARTNER_KEY", "partner-key-0123")];
    let ok = run_cli(&["check", "-c", file.to_str().unwrap()], &env);
    assert_eq!(ok.code, 0, "{}", ok.stderr);

    std::fs::write(
        &file,
        format!(
            "{base}  - name: partner-b\n    credentials:\n      - {{type: key_auth, key: plain-text}}\n\
             scripts:\n  - {{name: tag, phase: access, code: \"return\"}}\n  - {{name: tag, phase: access, code: \"return\"}}\n  - {{phase: access, code: \"if then\"}}\n"
        ),
    )
    .unwrap();
    let bad = run_cli(&["check", "-c", file.to_str().unwrap()], &env);
    assert_eq!(bad.code, 2, "{}", bad.stderr);
    for path in [
        "consumers[1].credentials[0].key",
        "scripts[1].name",
        "scripts[2].name",
    ] {
        assert!(bad.stderr.contains(path), "no {path} in:\n{}", bad.stderr);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_from_the_store_are_served_by_sni_on_every_node() {
    use crate::support::pki::Ca;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let c = Cluster::start();
    // A node whose only listener is TLS, with no certificate of its own.
    let config = c.dir.path().join("tls-node.yaml");
    std::fs::write(
        &config,
        "listeners:\n  - address: 127.0.0.1:${PORT}\n    tls: {}\n\
         admin:\n  address: 127.0.0.1:${ADMIN_PORT}\n  tokens: [\"${secret:admin_token}\"]\n\
         data_dir: ${DATA_DIR}\n\
         secrets:\n  admin_token: {env: ADMIN_TOKEN}\n\
         cluster:\n  store: ${PG_URL}\n  node_name: ${NODE_NAME}\n",
    )
    .unwrap();
    let nodes = vec![c.node_from(&config, "a"), c.node_from(&config, "b")];
    let ca = Ca::new("cluster e2e ca");
    let site_a = ca.server(&["a.example.test"]);
    let site_b = ca.server(&["api.b.example.test"]);
    let a = &nodes[0];
    assert_eq!(
        call(a, "POST", "/v1/upstreams", Some(c.upstream_body("app")))
            .await
            .status,
        201
    );
    assert_eq!(
        call(a, "POST", "/v1/routes", Some(route("r", "/x/", "app")))
            .await
            .status,
        201
    );
    for (name, sni, leaf) in [
        ("a", "a.example.test", &site_a),
        ("b", "*.b.example.test", &site_b),
    ] {
        let r = call(
            a,
            "POST",
            "/v1/certificates",
            Some(json!({"name": name, "snis": [sni], "cert": leaf.cert_pem, "key": leaf.key_pem})),
        )
        .await;
        assert_eq!(r.status, 201, "{}", r.text());
        all_applied(&nodes, revision_of(&r)).await;
    }

    let client = {
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(ca.roots())
            .with_no_client_auth();
        tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
    };
    let fetch = |addr: SocketAddr, host: &'static str| {
        let client = client.clone();
        async move {
            let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            let name = rustls::pki_types::ServerName::try_from(host).unwrap();
            let mut tls = client.connect(name, tcp).await.map_err(|e| e.to_string())?;
            let served = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
            tls.write_all(
                format!("GET /x/ HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
            )
            .await
            .unwrap();
            let mut answer = Vec::new();
            let _ = tls.read_to_end(&mut answer).await;
            Ok::<_, String>((served, String::from_utf8_lossy(&answer).into_owned()))
        }
    };
    for n in &nodes {
        for (host, leaf) in [("a.example.test", &site_a), ("api.b.example.test", &site_b)] {
            let (served, answer) = crate::support::within("TLS request", fetch(n.addr(), host))
                .await
                .unwrap_or_else(|e| panic!("node {} {host}: {e}", n.name));
            assert_eq!(
                served, leaf.der,
                "node {} served another certificate for {host}",
                n.name
            );
            assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        }
        // No certificate for this name and none of the listener's own: no handshake.
        let unknown =
            crate::support::within("TLS handshake", fetch(n.addr(), "c.example.test")).await;
        assert!(unknown.is_err(), "node {}", n.name);
    }

    // A key that is not the certificate's never reaches the store.
    let mismatched = call(
        a,
        "POST",
        "/v1/certificates",
        Some(json!({"name": "c", "snis": ["c.example.test"], "cert": site_a.cert_pem, "key": site_b.key_pem})),
    )
    .await;
    assert_eq!(mismatched.status, 400, "{}", mismatched.text());
    assert_eq!(mismatched.json()["errors"][0]["path"], "certificates[2]");
    let taken = call(
        a,
        "POST",
        "/v1/certificates",
        Some(json!({"name": "d", "snis": ["a.example.test"], "cert": site_a.cert_pem, "key": site_a.key_pem})),
    )
    .await;
    assert_eq!(taken.status, 400, "{}", taken.text());
    assert_eq!(taken.json()["errors"][0]["path"], "certificates[2].snis[0]");
}
