//! Smoke tests of the queue engines' helpers: a JetStream cluster that survives killing a
//! node (and takes it back), and Google's Pub/Sub emulator round-tripping a message.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use sluicegate_testkit::nats::NatsCluster;
use sluicegate_testkit::pubsub::PubSubEmulator;

/// One request over the NATS client protocol to the server on `port`: the reply's payload.
fn nats_request(port: u16, subject: &str, payload: &str) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    assert!(line.starts_with("INFO "), "greeting: {line:?}");
    let inbox = format!("_INBOX.engines.{}", std::process::id());
    write!(
        s,
        "CONNECT {{\"verbose\":false,\"pedantic\":false}}\r\nSUB {inbox} 1\r\n\
         PUB {subject} {inbox} {}\r\n{payload}\r\n",
        payload.len()
    )
    .unwrap();
    loop {
        line.clear();
        r.read_line(&mut line).unwrap();
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["PING"] => s.write_all(b"PONG\r\n").unwrap(),
            ["MSG", _, _, len] => {
                let mut buf = vec![0; len.parse::<usize>().unwrap() + 2];
                r.read_exact(&mut buf).unwrap();
                buf.truncate(buf.len() - 2);
                return String::from_utf8(buf).unwrap();
            }
            _ if line.starts_with("-ERR") => panic!("nats: {line}"),
            _ => {}
        }
    }
}

/// Whether node `i` takes a connection on its client port.
fn accepts_clients(nats: &NatsCluster, i: usize) -> bool {
    TcpStream::connect(("127.0.0.1", nats.client_port(i))).is_ok()
}

#[test]
fn a_three_node_cluster_survives_killing_the_stream_leader_and_takes_it_back() {
    let mut nats = NatsCluster::start(3);
    for i in 0..3 {
        assert!(accepts_clients(&nats, i), "node {i}");
        assert_eq!(
            nats.url(i),
            format!("nats://127.0.0.1:{}", nats.client_port(i))
        );
    }
    assert_eq!(nats.urls().split(',').count(), 3);

    let created = nats_request(
        nats.client_port(0),
        "$JS.API.STREAM.CREATE.smoke",
        r#"{"name":"smoke","subjects":["smoke.>"],"num_replicas":3,"storage":"file"}"#,
    );
    assert!(created.contains("\"did_create\":true"), "{created}");
    let deadline = Instant::now() + Duration::from_secs(10);
    let leader = loop {
        if let Some(l) = nats.stream_leader("smoke") {
            break l;
        }
        assert!(Instant::now() < deadline, "the stream got no leader");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(leader < 3);

    // The two others keep the quorum: a new leader among them, never the dead one.
    nats.kill(leader);
    let deadline = Instant::now() + Duration::from_secs(30);
    let new_leader = loop {
        match nats.stream_leader("smoke") {
            Some(l) => {
                assert_ne!(l, leader, "the killed node named the stream's leader");
                break l;
            }
            None => {
                assert!(Instant::now() < deadline, "no new leader after the kill");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    };
    let survivor = (0..3).find(|&i| i != leader).unwrap();
    let published = nats_request(nats.client_port(survivor), "smoke.one", "hello");
    assert!(published.contains("\"stream\":\"smoke\""), "{published}");

    nats.restart(leader);
    for i in 0..3 {
        nats.wait_healthy(i);
        assert!(accepts_clients(&nats, i), "node {i}");
    }
    let info = nats_request(nats.client_port(leader), "$JS.API.STREAM.INFO.smoke", "");
    assert!(info.contains("\"messages\":1"), "{info}");
    let leader_now = nats.stream_leader("smoke");
    assert!(
        leader_now.is_some_and(|l| l < 3),
        "after {new_leader}: {leader_now:?}"
    );
}

#[test]
fn a_single_server_leads_its_streams() {
    let nats = NatsCluster::start(1);
    let created = nats_request(
        nats.client_port(0),
        "$JS.API.STREAM.CREATE.single",
        r#"{"name":"single","subjects":["single.>"],"storage":"file"}"#,
    );
    assert!(created.contains("\"did_create\":true"), "{created}");
    assert_eq!(nats.stream_leader("single"), Some(0));
    assert_eq!(nats.urls(), nats.url(0));
}

#[test]
fn the_pubsub_emulator_round_trips_data_and_attributes() {
    let started = Instant::now();
    let emulator = PubSubEmulator::start();
    eprintln!(
        "the Pub/Sub emulator answered after {:?}",
        started.elapsed()
    );
    let host = emulator.host();
    assert!(host.starts_with("127.0.0.1:"), "{host}");

    emulator.create_topic("smoke-project", "smoke-topic");
    emulator.create_pull_subscription("smoke-project", "smoke-topic", "smoke-pull");
    let data = b"\x00binary \xff payload";
    let id = emulator.publish(
        "smoke-project",
        "smoke-topic",
        data,
        &[("kind", "smoke"), ("n", "1")],
    );
    assert!(!id.is_empty());

    let deadline = Instant::now() + Duration::from_secs(10);
    let messages = loop {
        let m = emulator.pull("smoke-project", "smoke-pull", 10);
        if !m.is_empty() || Instant::now() >= deadline {
            break m;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(messages.len(), 1, "{messages:?}");
    let m = &messages[0];
    assert_eq!(m["messageId"], id.as_str());
    let bytes: Vec<u8> = m["data_bytes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b.as_u64().unwrap() as u8)
        .collect();
    assert_eq!(bytes, data);
    // The REST API carries the data in base64.
    assert_eq!(m["data"], STANDARD.encode(data).as_str());
    assert_eq!(m["attributes"]["kind"], "smoke");
    assert_eq!(m["attributes"]["n"], "1");
    // Acknowledged by the pull: nothing comes again.
    assert!(emulator.pull("smoke-project", "smoke-pull", 10).is_empty());
}
