//! `examples/queue-nats.yaml` and `examples/queue-pubsub.yaml` run as a user runs them: the
//! binary with the file unchanged and only the environment variables their comments name
//! (engines started by the test support).

use std::path::{Path, PathBuf};

use sluicegate_testkit::nats::NatsCluster;
use sluicegate_testkit::pubsub::PubSubEmulator;

use crate::support::{eventually, send, Process, Upstream};

fn example(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples")
        .join(name)
}

#[tokio::test]
async fn queue_nats_example_on_a_three_node_cluster() {
    let mut nats = NatsCluster::start(3);
    let up = Upstream::ok();
    let data = tempfile::tempdir().unwrap();
    let upstream = up.addr.to_string();
    let urls = nats.urls();
    let gw = Process::start_with_env(
        &example("queue-nats.yaml"),
        &[
            ("NATS_URL", &urls),
            ("NATS_REPLICAS", "3"),
            ("UPSTREAM", &upstream),
            ("PORT", "0"),
            ("ADMIN_PORT", "0"),
            ("DATA_DIR", data.path().to_str().unwrap()),
        ],
    );

    // The queue connects in the background; until JetStream answers, /wal/ says 503 and
    // stores nothing, so only the one accepted request may reach the upstream.
    let post = || {
        send(
            gw.addr,
            "POST",
            "/wal/hooks?x=1",
            &[("content-type", "application/json")],
            r#"{"event":"ping"}"#,
        )
    };
    let until = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut a = post().await;
    while a.status == 503 && std::time::Instant::now() < until {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        a = post().await;
    }
    assert_eq!(a.status, 202, "{}", a.text());
    let ack = a.json();
    assert_eq!(ack["queue"], "wal", "{ack}");
    assert!(ack["id"].is_u64(), "{ack}");
    let seen = up.wait_for(1).await;
    assert_eq!(seen[0].target, "/hooks?x=1", "prefix stripped, query kept");
    assert_eq!(seen[0].text(), r#"{"event":"ping"}"#);

    let q = send(gw.admin, "GET", "/queues/wal", &[], "").await;
    assert_eq!(q.status, 200, "{}", q.text());
    assert_eq!(q.json()["backend"], "nats", "{}", q.text());

    // NATS_REPLICAS=3: the stream outlives its leader (with one replica it would not).
    let leader = nats.stream_leader("wal").expect("the stream has a leader");
    nats.kill(leader);
    eventually("acknowledged again after a new leader", || async {
        send(gw.addr, "POST", "/wal/again", &[], "again")
            .await
            .status
            == 202
    })
    .await;
    eventually("delivered after the leader's death", || async {
        up.seen().iter().any(|s| s.text() == "again")
    })
    .await;
}

#[tokio::test]
async fn queue_pubsub_example_publishes_and_plays_back() {
    let emulator = PubSubEmulator::start();
    emulator.create_topic("demo-project", "hooks");
    let up = Upstream::ok();
    let data = tempfile::tempdir().unwrap();
    let upstream = up.addr.to_string();
    let host = emulator.host();
    let gw = Process::start_with_env(
        &example("queue-pubsub.yaml"),
        &[
            ("PUBSUB_EMULATOR_HOST", &host),
            ("PUBSUB_PROJECT", "demo-project"),
            ("PUBSUB_TOPIC", "hooks"),
            ("PUSH_VERIFY", "false"),
            ("UPSTREAM", &upstream),
            ("PORT", "0"),
            ("ADMIN_PORT", "0"),
            ("DATA_DIR", data.path().to_str().unwrap()),
        ],
    );
    assert!(
        gw.log()
            .iter()
            .any(|l| l.contains("WARN") && l.contains("without checking their token")),
        "PUSH_VERIFY=false is warned about at start: {:#?}",
        gw.log()
    );
    emulator.create_push_subscription(
        "demo-project",
        "hooks",
        "hooks-push",
        &format!("http://{}/wal-playback", gw.addr),
        10,
    );

    let a = send(
        gw.addr,
        "POST",
        "/wal/hooks?x=1",
        &[("content-type", "application/json"), ("x-event", "ping")],
        r#"{"event":"ping"}"#,
    )
    .await;
    assert_eq!(a.status, 202, "{}", a.text());
    let seen = up.wait_for(1).await;
    assert_eq!(seen[0].target, "/hooks?x=1", "prefix stripped, query kept");
    assert_eq!(seen[0].header("x-event"), "ping");
    assert_eq!(seen[0].text(), r#"{"event":"ping"}"#);
}

#[tokio::test]
async fn queue_pubsub_example_checks_push_tokens_by_default() {
    let emulator = PubSubEmulator::start();
    let up = Upstream::ok();
    let data = tempfile::tempdir().unwrap();
    let upstream = up.addr.to_string();
    let host = emulator.host();
    // No key set is fetched for a push without a token; a dead local URL keeps it so.
    let jwks = format!("http://127.0.0.1:{}/certs", sluicegate_testkit::free_port());
    let gw = Process::start_with_env(
        &example("queue-pubsub.yaml"),
        &[
            ("PUBSUB_EMULATOR_HOST", &host),
            (
                "PUSH_SERVICE_ACCOUNT",
                "pusher@demo.iam.gserviceaccount.com",
            ),
            ("PUSH_AUDIENCE", "https://gateway.example/wal-playback"),
            ("PUSH_JWKS_URL", &jwks),
            ("UPSTREAM", &upstream),
            ("PORT", "0"),
            ("ADMIN_PORT", "0"),
            ("DATA_DIR", data.path().to_str().unwrap()),
        ],
    );
    assert!(
        !gw.log()
            .iter()
            .any(|l| l.contains("without checking their token")),
        "no warning when the token is checked"
    );
    let push = r#"{"message":{"data":"e30=","messageId":"1","attributes":{"sluicegate_method":"POST","sluicegate_uri":"/wal/x","sluicegate_queue":"wal"}},"subscription":"projects/demo/subscriptions/s"}"#;
    let r = send(
        gw.addr,
        "POST",
        "/wal-playback",
        &[("content-type", "application/json")],
        push,
    )
    .await;
    assert_eq!(r.status, 401, "{}", r.text());
    assert_eq!(up.count(), 0, "no upstream call");
}
