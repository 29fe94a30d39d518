//! Real `nats-server`s (Debian's package) with JetStream: one server, or a cluster of
//! several on loopback, each with its own store in a temporary directory; stopped (and
//! the directory removed) on drop. Readiness is the monitoring port's `/healthz`, which
//! answers 200 once the server's JetStream is up (in a cluster: a meta leader is known).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a node gets to become healthy.
const START: Duration = Duration::from_secs(30);

struct Node {
    name: String,
    client: u16,
    monitor: u16,
    config: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

/// A running JetStream server or cluster.
pub struct NatsCluster {
    nodes: Vec<Node>,
    binary: PathBuf,
    _dir: tempfile::TempDir,
}

impl NatsCluster {
    /// Starts `n` nodes (1: a single JetStream server; more: a cluster with routes between
    /// all of them) and waits until every one is healthy.
    pub fn start(n: usize) -> NatsCluster {
        assert!(n >= 1, "at least one node");
        let binary = super::require("nats-server", "nats-server");
        let dir = tempfile::tempdir().expect("temp dir");
        let ports: Vec<(u16, u16, u16)> = (0..n)
            .map(|_| (super::free_port(), super::free_port(), super::free_port()))
            .collect();
        let mut nodes = Vec::new();
        for (i, (client, monitor, cluster)) in ports.iter().enumerate() {
            let name = format!("n{i}");
            let store = dir.path().join(&name);
            let mut text = format!(
                "server_name: {name}\nlisten: 127.0.0.1:{client}\nhttp: 127.0.0.1:{monitor}\njetstream {{\n  store_dir: \"{}\"\n}}\n",
                store.display()
            );
            if n > 1 {
                let routes: Vec<String> = ports
                    .iter()
                    .enumerate()
                    .filter(|(j, _)| *j != i)
                    .map(|(_, (_, _, c))| format!("nats-route://127.0.0.1:{c}"))
                    .collect();
                text.push_str(&format!(
                    "cluster {{\n  name: sluicegate-test\n  listen: 127.0.0.1:{cluster}\n  routes: [{}]\n}}\n",
                    routes.join(", ")
                ));
            }
            let config = dir.path().join(format!("{name}.conf"));
            std::fs::write(&config, text).expect("write nats config");
            nodes.push(Node {
                log: dir.path().join(format!("{name}.log")),
                name,
                client: *client,
                monitor: *monitor,
                config,
                child: None,
            });
        }
        let mut cluster = NatsCluster {
            nodes,
            binary,
            _dir: dir,
        };
        for i in 0..n {
            cluster.spawn(i);
        }
        for i in 0..n {
            cluster.wait_healthy(i);
        }
        cluster
    }

    fn spawn(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log)
            .expect("nats log");
        let child = Command::new(&self.binary)
            .arg("-c")
            .arg(&node.config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn nats-server");
        node.child = Some(child);
    }

    /// Waits until node `i` answers `/healthz` with 200.
    pub fn wait_healthy(&mut self, i: usize) {
        let deadline = Instant::now() + START;
        loop {
            if let Some(c) = self.nodes[i].child.as_mut() {
                if let Ok(Some(status)) = c.try_wait() {
                    panic!(
                        "nats-server {} exited ({status}); its log:\n{}",
                        self.nodes[i].name,
                        self.log(i)
                    );
                }
            }
            if http_get(self.nodes[i].monitor, "/healthz").is_some_and(|(s, _)| s == 200) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "nats-server {} did not become healthy; its log:\n{}",
                self.nodes[i].name,
                self.log(i)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn log(&self, i: usize) -> String {
        std::fs::read_to_string(&self.nodes[i].log).unwrap_or_default()
    }

    /// Node `i`'s client URL.
    pub fn url(&self, i: usize) -> String {
        format!("nats://127.0.0.1:{}", self.nodes[i].client)
    }

    /// Every node's client URL, comma-separated.
    pub fn urls(&self) -> String {
        (0..self.nodes.len())
            .map(|i| self.url(i))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Node `i`'s client port.
    pub fn client_port(&self, i: usize) -> u16 {
        self.nodes[i].client
    }

    /// Kills node `i` with SIGKILL (its store stays for [`NatsCluster::restart`]).
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.nodes[i].child.take() {
            super::proc::stop(&mut c);
        }
    }

    /// Starts node `i` again on its ports and store, and waits until it is healthy.
    pub fn restart(&mut self, i: usize) {
        self.kill(i);
        self.spawn(i);
        self.wait_healthy(i);
    }

    /// The node that leads stream `stream`'s replicas (a single server leads all): the
    /// running node whose own `/jsz?streams=true` names itself the stream's leader. `None`
    /// while none does (no such stream, or an election under way). Only a node's word about
    /// itself is taken: after the leader is killed, the others keep naming it for seconds
    /// (nats-server 2.9), until they elect a new one.
    pub fn stream_leader(&self, stream: &str) -> Option<usize> {
        if self.nodes.len() == 1 {
            return Some(0);
        }
        self.nodes.iter().position(|node| {
            node.child.is_some()
                && http_get(node.monitor, "/jsz?accounts=true&streams=true")
                    .filter(|(status, _)| *status == 200)
                    .and_then(|(_, body)| serde_json::from_str::<serde_json::Value>(&body).ok())
                    .and_then(|doc| find_leader(&doc, stream))
                    .is_some_and(|leader| leader == node.name)
        })
    }
}

/// The `cluster.leader` of the stream named `stream` anywhere in a `/jsz` document.
fn find_leader(v: &serde_json::Value, stream: &str) -> Option<String> {
    match v {
        serde_json::Value::Object(m) => {
            if m.get("name").and_then(|n| n.as_str()) == Some(stream) {
                if let Some(l) = m
                    .get("cluster")
                    .and_then(|c| c.get("leader"))
                    .and_then(|l| l.as_str())
                {
                    return Some(l.to_string());
                }
            }
            m.values().find_map(|x| find_leader(x, stream))
        }
        serde_json::Value::Array(a) => a.iter().find_map(|x| find_leader(x, stream)),
        _ => None,
    }
}

/// A plain `GET` on the monitoring port: status and body.
fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect_timeout(
        &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_millis(500),
    )
    .ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut out = Vec::new();
    s.read_to_end(&mut out).ok()?;
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string())?;
    Some((status, body))
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill(i);
        }
    }
}
