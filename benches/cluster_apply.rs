//! What one change of the store costs a following node at many routes, in process and by
//! stage (docs/benchmarks.md#cluster-mode): the follower's copy of the entity set with the
//! change applied, the configuration build (only the changed route, when only routes
//! changed), and the copy on disk. `bench/cluster-propagation.py` measures the same on
//! real nodes, with PostgreSQL and the admin API in the way.
//!
//! `cargo bench --bench cluster_apply` (`ROUTES=10000 CHANGES=20` are the defaults).

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use sluicegate::config;
use sluicegate_cluster::{disk, Change, Entities, Kind};
use sluicegate_telemetry::Metrics;

// The gateway's allocator (src/main.rs): building and dropping snapshots is allocation-bound.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn change(kind: Kind, name: &str, ord: i64, revision: i64, body: serde_json::Value) -> Change {
    Change {
        kind,
        name: name.into(),
        ord,
        revision,
        body: Some(body),
    }
}

fn route(i: usize, path: &str) -> serde_json::Value {
    json!({"name": format!("r{i}"), "match": {"paths": path}, "upstream": "origin"})
}

fn summary(label: &str, mut took: Vec<Duration>) {
    took.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "  {label:<28} p50 {:6.2} ms   max {:6.2} ms",
        ms(took[took.len() / 2]),
        ms(took[took.len() - 1])
    );
}

fn main() {
    let routes = env("ROUTES", 10_000);
    let changes = env("CHANGES", 20);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("node.yaml");
    std::fs::write(
        &file,
        "listeners: [{address: \"127.0.0.1:0\"}]\nadmin: {enabled: false}\ndata_dir: data\n\
         cluster: {store: \"postgresql://u@127.0.0.1:1/db\", node_name: b}\n",
    )
    .unwrap();
    let data_dir = dir.path().join("data");
    std::fs::create_dir_all(&data_dir).unwrap();

    let mut all = vec![change(
        Kind::Upstreams,
        "origin",
        1,
        1,
        json!({"name": "origin", "targets": ["127.0.0.1:9"]}),
    )];
    all.extend((0..routes).map(|i| {
        change(
            Kind::Routes,
            &format!("r{i}"),
            i as i64 + 1,
            1,
            route(i, &format!("/r{i}/")),
        )
    }));
    let mut entities = Entities::empty("bench");
    entities.apply(all, 1);
    let mut entities = Arc::new(entities);

    let metrics = Metrics::default();
    let started = Instant::now();
    let mut current = config::load_snapshot_with(&file, 1, 1, &metrics, Some(&entities)).unwrap();
    let mut last = None;
    current =
        config::load_cluster_snapshot(&current, 1, &metrics, &entities, &mut last, true).unwrap();
    let mut writer = disk::Writer::new();
    writer.write(&data_dir, &entities).unwrap();
    println!(
        "{routes} routes: first build and copy on disk {:.0} ms; then {changes} changes of one route each:",
        started.elapsed().as_secs_f64() * 1e3
    );

    let (mut copy, mut build, mut write, mut total) = (vec![], vec![], vec![], vec![]);
    for k in 0..changes {
        let i = 2 + k % (routes - 2);
        let t0 = Instant::now();
        let mut next = entities.successor();
        let revision = next.revision + 1;
        next.apply(
            vec![change(
                Kind::Routes,
                &format!("r{i}"),
                i as i64 + 1,
                revision,
                route(i, &format!("/moved{k}/")),
            )],
            revision,
        );
        let next = Arc::new(next);
        let t1 = Instant::now();
        current =
            config::load_cluster_snapshot(&current, 1, &metrics, &next, &mut last, true).unwrap();
        let t2 = Instant::now();
        writer.write(&data_dir, &next).unwrap();
        let t3 = Instant::now();
        entities = next;
        copy.push(t1 - t0);
        build.push(t2 - t1);
        write.push(t3 - t2);
        total.push(t3 - t0);
    }
    summary("entity set copy + change", copy);
    summary("configuration build", build);
    summary("copy on disk", write);
    summary("total", total);
}
