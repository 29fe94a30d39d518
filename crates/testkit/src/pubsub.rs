//! Google's Pub/Sub emulator (from the Google Cloud CLI, `gcloud beta emulators pubsub
//! start`; it runs on Java) on a free loopback port with its data in a temporary
//! directory, and a small blocking client of its REST API for topics, subscriptions,
//! publishing and pulling. The emulator runs in a process group of its own, killed whole
//! on drop (gcloud starts a JVM child).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{json, Value};

/// How long the emulator (a JVM) gets to answer.
const START: Duration = Duration::from_secs(60);

/// A running emulator.
pub struct PubSubEmulator {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl PubSubEmulator {
    /// Starts the emulator and waits until its REST API answers.
    pub fn start() -> PubSubEmulator {
        let gcloud = super::require(
            "gcloud",
            "google-cloud-cli (with `gcloud components install pubsub-emulator beta`)",
        );
        let dir = tempfile::tempdir().expect("temp dir");
        let log_path = dir.path().join("emulator.log");
        let port = super::free_port();
        let log = std::fs::File::create(&log_path).expect("emulator log");
        let child = {
            use std::os::unix::process::CommandExt;
            Command::new(&gcloud)
                .args(["beta", "emulators", "pubsub", "start"])
                .arg(format!("--host-port=127.0.0.1:{port}"))
                .arg(format!("--data-dir={}", dir.path().display()))
                .arg("--quiet")
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("log"))
                .stderr(log)
                .process_group(0)
                .spawn()
                .expect("spawn gcloud")
        };
        let mut emulator = PubSubEmulator {
            child,
            port,
            _dir: dir,
        };
        let deadline = Instant::now() + START;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = emulator.child.try_wait() {
                break;
            }
            if emulator
                .call("GET", "/v1/projects/probe/topics", None)
                .is_some_and(|(s, _)| s == 200)
            {
                return emulator;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let log = std::fs::read_to_string(&log_path).unwrap_or_default();
        emulator.stop();
        panic!("the Pub/Sub emulator did not start; its log:\n{log}");
    }

    /// `host:port`, the value of `PUBSUB_EMULATOR_HOST`.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Creates topic `topic` in `project`.
    pub fn create_topic(&self, project: &str, topic: &str) {
        let (s, b) = self
            .call(
                "PUT",
                &format!("/v1/projects/{project}/topics/{topic}"),
                Some(json!({})),
            )
            .expect("emulator answers");
        assert_eq!(s, 200, "create topic: {b}");
    }

    /// Creates a push subscription of `topic` sending to `endpoint`.
    pub fn create_push_subscription(
        &self,
        project: &str,
        topic: &str,
        subscription: &str,
        endpoint: &str,
        ack_deadline_secs: u32,
    ) {
        let body = json!({
            "topic": format!("projects/{project}/topics/{topic}"),
            "pushConfig": {"pushEndpoint": endpoint},
            "ackDeadlineSeconds": ack_deadline_secs,
            "retryPolicy": {"minimumBackoff": "1s", "maximumBackoff": "2s"},
        });
        let (s, b) = self
            .call(
                "PUT",
                &format!("/v1/projects/{project}/subscriptions/{subscription}"),
                Some(body),
            )
            .expect("emulator answers");
        assert_eq!(s, 200, "create push subscription: {b}");
    }

    /// Creates a pull subscription of `topic`.
    pub fn create_pull_subscription(&self, project: &str, topic: &str, subscription: &str) {
        let body = json!({"topic": format!("projects/{project}/topics/{topic}"), "ackDeadlineSeconds": 10});
        let (s, b) = self
            .call(
                "PUT",
                &format!("/v1/projects/{project}/subscriptions/{subscription}"),
                Some(body),
            )
            .expect("emulator answers");
        assert_eq!(s, 200, "create pull subscription: {b}");
    }

    /// Up to `max` messages of a pull subscription (acknowledged): each `message` object,
    /// with `data` decoded into a `data_bytes` array.
    pub fn pull(&self, project: &str, subscription: &str, max: usize) -> Vec<Value> {
        let path = format!("/v1/projects/{project}/subscriptions/{subscription}");
        let (s, b) = self
            .call(
                "POST",
                &format!("{path}:pull"),
                Some(json!({"maxMessages": max, "returnImmediately": true})),
            )
            .expect("emulator answers");
        assert_eq!(s, 200, "pull: {b}");
        let doc: Value = serde_json::from_str(&b).unwrap_or(Value::Null);
        let received = doc["receivedMessages"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let ack_ids: Vec<Value> = received.iter().map(|m| m["ackId"].clone()).collect();
        if !ack_ids.is_empty() {
            let (s, b) = self
                .call(
                    "POST",
                    &format!("{path}:acknowledge"),
                    Some(json!({"ackIds": ack_ids})),
                )
                .expect("emulator answers");
            assert_eq!(s, 200, "acknowledge: {b}");
        }
        received
            .into_iter()
            .map(|m| {
                let mut msg = m["message"].clone();
                let data = base64::engine::general_purpose::STANDARD
                    .decode(msg["data"].as_str().unwrap_or(""))
                    .unwrap_or_default();
                msg["data_bytes"] = json!(data);
                msg
            })
            .collect()
    }

    /// Publishes one message; returns its id.
    pub fn publish(
        &self,
        project: &str,
        topic: &str,
        data: &[u8],
        attributes: &[(&str, &str)],
    ) -> String {
        let attrs: serde_json::Map<String, Value> = attributes
            .iter()
            .map(|(k, v)| (k.to_string(), json!(v)))
            .collect();
        let body = json!({"messages": [{
            "data": base64::engine::general_purpose::STANDARD.encode(data),
            "attributes": attrs,
        }]});
        let (s, b) = self
            .call(
                "POST",
                &format!("/v1/projects/{project}/topics/{topic}:publish"),
                Some(body),
            )
            .expect("emulator answers");
        assert_eq!(s, 200, "publish: {b}");
        let doc: Value = serde_json::from_str(&b).expect("publish answer");
        doc["messageIds"][0]
            .as_str()
            .expect("message id")
            .to_string()
    }

    /// One REST call: status and body.
    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Option<(u16, String)> {
        let mut s = TcpStream::connect_timeout(
            &std::net::SocketAddr::from(([127, 0, 0, 1], self.port)),
            Duration::from_millis(500),
        )
        .ok()?;
        s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            self.host(),
            body.len()
        )
        .ok()?;
        read_response(&mut s)
    }

    fn stop(&mut self) {
        let pgid = self.child.id() as i32;
        // The whole group: gcloud and the JVM it started.
        if let Some(pid) = rustix::process::Pid::from_raw(pgid) {
            let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Reads one HTTP/1.1 response (`Content-Length` or chunked): status and body.
fn read_response(s: &mut TcpStream) -> Option<(u16, String)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p + 4;
        }
        let n = s.read(&mut chunk).ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    let length = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok());
    let chunked = head.contains("transfer-encoding: chunked");
    let mut body = buf[head_end..].to_vec();
    let complete = |b: &[u8]| match (length, chunked) {
        (Some(n), _) => b.len() >= n,
        (None, true) => b.ends_with(b"0\r\n\r\n"),
        (None, false) => false,
    };
    while !complete(&body) {
        let n = s.read(&mut chunk).ok()?;
        if n == 0 {
            break;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    if chunked {
        let mut out = Vec::new();
        let mut rest = &body[..];
        while let Some(p) = rest.windows(2).position(|w| w == b"\r\n") {
            let size =
                usize::from_str_radix(String::from_utf8_lossy(&rest[..p]).trim(), 16).ok()?;
            if size == 0 {
                break;
            }
            let start = p + 2;
            out.extend_from_slice(rest.get(start..start + size)?);
            rest = rest.get(start + size + 2..)?;
        }
        body = out;
    } else if let Some(n) = length {
        body.truncate(n);
    }
    Some((status, String::from_utf8_lossy(&body).into_owned()))
}

impl Drop for PubSubEmulator {
    fn drop(&mut self) {
        self.stop();
    }
}
