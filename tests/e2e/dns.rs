//! Upstream targets named by DNS, against a real authoritative DNS server the tests control
//! ([`TestDns`]): TTL expiry picks up a new address, an outage keeps the last good answer,
//! recovery moves traffic without a restart, SRV weights are respected, a hosts file
//! overrides DNS, and a reload keeps resolved targets.

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use http::Response;
use http_body_util::Full;

use crate::support::bin::Process;
use crate::support::dns::TestDns;
use crate::support::upstream::Seen;
use crate::support::{eventually, get, Config, TestGateway, Upstream};

/// An upstream on `bind` that answers with `name` as its body.
fn named(bind: &str, name: &'static str) -> Upstream {
    Upstream::start_on(bind, move |_: Seen| async move {
        Response::new(Full::new(Bytes::from_static(name.as_bytes())))
    })
}

/// Two upstreams on the same port: `one` on 127.0.0.1, `two` on 127.0.0.2.
fn pair() -> (Upstream, Upstream, u16) {
    let one = named("127.0.0.1:0", "one");
    let port = one.addr().port();
    let two = named(&format!("127.0.0.2:{port}"), "two");
    (one, two, port)
}

fn gateway(dns: &TestDns, target: &str, extra_dns: &str) -> TestGateway {
    Config::new(
        r#"
dns: {nameservers: ["{{dns}}"], hosts_file: "", min_ttl_ms: 1000, error_retry_ms: 200, timeout_ms: 300, attempts: 1 {{extra}}}
upstreams:
  - name: app
    targets: ["{{target}}"]
    connect_timeout_ms: 1000
routes: [{name: all, upstream: app}]
"#,
    )
    .var("dns", dns.addr())
    .var("target", target)
    .var("extra", extra_dns)
    .start()
}

async fn body(gw: &TestGateway) -> String {
    let r = gw.get("/").await;
    assert_eq!(r.status, 200, "{}", r.text());
    r.text()
}

#[tokio::test]
async fn a_new_address_is_used_once_the_ttl_expires() {
    let (_one, _two, port) = pair();
    let dns = TestDns::start();
    dns.set_a("app.test", &["127.0.0.1"], 1);
    let gw = gateway(&dns, &format!("app.test:{port}"), "");
    assert_eq!(body(&gw).await, "one");

    dns.set_a("app.test", &["127.0.0.2"], 1);
    eventually("traffic moves to the new address", || async {
        body(&gw).await == "two"
    })
    .await;
    for _ in 0..5 {
        assert_eq!(body(&gw).await, "two");
    }
    let status = gw.admin_get("/status").await.json();
    let app = &status["upstreams"][0];
    assert_eq!(app["targets"][0]["address"], format!("127.0.0.2:{port}"));
    assert_eq!(app["configured"][0]["dns"]["state"], "ok");
}

#[tokio::test]
async fn an_outage_keeps_the_last_good_address_and_recovery_moves_traffic() {
    let (_one, _two, port) = pair();
    let mut dns = TestDns::start();
    dns.set_a("app.test", &["127.0.0.1"], 1);
    let gw = gateway(&dns, &format!("app.test:{port}"), "");
    assert_eq!(body(&gw).await, "one");

    dns.stop();
    // Past the 1 s TTL, DNS is gone: the last good answer keeps serving, marked stale.
    eventually("the answer goes stale", || async {
        let status = gw.admin_get("/status").await.json();
        status["upstreams"][0]["configured"][0]["dns"]["state"] == "stale"
    })
    .await;
    for _ in 0..10 {
        assert_eq!(body(&gw).await, "one");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let series =
        format!("sluicegate_dns_refreshes_total{{name=\"app.test:{port}\",result=\"error\"}}");
    eventually("failed refreshes are counted", || async {
        let metrics = gw.admin_get("/metrics").await.text();
        crate::support::metric(&metrics, &series).unwrap_or(0.0) >= 1.0
    })
    .await;
    assert_eq!(body(&gw).await, "one");

    // DNS comes back with a new address: traffic follows, no restart.
    dns.set_a("app.test", &["127.0.0.2"], 1);
    dns.restart();
    eventually("traffic moves after DNS recovers", || async {
        body(&gw).await == "two"
    })
    .await;
    let status = gw.admin_get("/status").await.json();
    assert_eq!(
        status["upstreams"][0]["configured"][0]["dns"]["state"],
        "ok"
    );
}

#[tokio::test]
async fn srv_records_give_targets_ports_and_weights() {
    let heavy = named("127.0.0.1:0", "heavy");
    let light = named("127.0.0.1:0", "light");
    let backup = named("127.0.0.1:0", "backup");
    let dns = TestDns::start();
    dns.set_a("a.test", &["127.0.0.1"], 60);
    dns.set_srv(
        "_http._tcp.app.test",
        &[
            (10, 3, heavy.addr().port(), "a.test"),
            (10, 1, light.addr().port(), "a.test"),
            // A higher priority value is a fallback: unused while the others resolve.
            (20, 1, backup.addr().port(), "a.test"),
        ],
        60,
    );
    let gw = Config::new(
        r#"
dns: {nameservers: ["{{dns}}"], hosts_file: ""}
upstreams: [{name: app, targets: [{srv: _http._tcp.app.test}]}]
routes: [{name: all, upstream: app}]
"#,
    )
    .var("dns", dns.addr())
    .start();
    let mut counts = std::collections::HashMap::new();
    for _ in 0..40 {
        *counts.entry(body(&gw).await).or_insert(0) += 1;
    }
    assert_eq!(counts.get("heavy"), Some(&30), "{counts:?}");
    assert_eq!(counts.get("light"), Some(&10), "{counts:?}");
    assert_eq!(counts.get("backup"), None, "{counts:?}");
    let status = gw.admin_get("/status").await.json();
    let targets = status["upstreams"][0]["targets"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(targets.len(), 2, "{targets:?}");
    assert!(
        targets.iter().all(|t| t["host"] == "a.test"),
        "SRV targets keep their record's name (TLS SNI): {targets:?}"
    );
}

#[tokio::test]
async fn a_hosts_file_overrides_dns_and_its_edits_apply_while_running() {
    let (_one, _two, port) = pair();
    let dns = TestDns::start();
    dns.set_a("app.test", &["127.0.0.1"], 1);
    let dir = tempfile::tempdir().unwrap();
    let hosts = dir.path().join("hosts");
    std::fs::write(&hosts, "# test hosts file\n127.0.0.2 app.test other.test\n").unwrap();
    let gw = Config::new(
        r#"
dns: {nameservers: ["{{dns}}"], hosts_file: "{{hosts}}", min_ttl_ms: 1000}
upstreams: [{name: app, targets: ["app.test:{{port}}"]}]
routes: [{name: all, upstream: app}]
"#,
    )
    .var("dns", dns.addr())
    .var("hosts", hosts.display())
    .var("port", port)
    .start();
    for _ in 0..3 {
        assert_eq!(body(&gw).await, "two");
    }
    let status = gw.admin_get("/status").await.json();
    assert_eq!(
        status["upstreams"][0]["configured"][0]["dns"]["source"],
        "hosts"
    );

    // The name leaves the hosts file: DNS answers from then on.
    std::fs::write(&hosts, "127.0.0.2 other.test\n").unwrap();
    eventually("DNS answers once the hosts entry is gone", || async {
        body(&gw).await == "one"
    })
    .await;
}

#[tokio::test]
async fn a_reload_keeps_resolved_targets_while_dns_is_down() {
    let (_one, _two, port) = pair();
    let mut dns = TestDns::start();
    dns.set_a("app.test", &["127.0.0.1"], 1);
    let dns_addr = dns.addr();
    let config = |extra: &str| {
        Config::new(&format!(
            r#"
dns: {{nameservers: ["{{{{dns}}}}"], hosts_file: "", error_retry_ms: 200}}
upstreams: [{{name: app, targets: ["app.test:{{{{port}}}}"]}}]
routes: [{{name: all, upstream: app}}{extra}]
"#
        ))
        .var("dns", dns_addr)
        .var("port", port)
    };
    let gw = config("").start();
    assert_eq!(body(&gw).await, "one");
    dns.stop();
    gw.rewrite_config(&config(
        ", {name: other, match: {paths: /other}, upstream: app}",
    ));
    let reload = gw.admin_post("/reload").await;
    assert_eq!(reload.status, 200, "{}", reload.text());
    for _ in 0..5 {
        assert_eq!(body(&gw).await, "one");
        assert_eq!(get(gw.addr, "/other").await.text(), "one");
    }
}

#[tokio::test]
async fn a_reload_that_names_a_host_has_it_resolved() {
    // At start every target is an address, so the resolver has nothing to do (and waits
    // for a reload instead of waking on a timer).
    let (_one, _two, port) = pair();
    let dns = TestDns::start();
    dns.set_a("app.test", &["127.0.0.2"], 1);
    let dns_addr = dns.addr();
    let config = |target: String| {
        Config::new(
            r#"
dns: {nameservers: ["{{dns}}"], hosts_file: "", error_retry_ms: 200}
upstreams: [{name: app, targets: ["{{target}}"]}]
routes: [{name: all, upstream: app}]
"#,
        )
        .var("dns", dns_addr)
        .var("target", target)
    };
    let gw = config(format!("127.0.0.1:{port}")).start();
    assert_eq!(body(&gw).await, "one");
    gw.rewrite_config(&config(format!("app.test:{port}")));
    let reload = gw.admin_post("/reload").await;
    assert_eq!(reload.status, 200, "{}", reload.text());
    let addr = gw.addr;
    eventually("the new name is resolved and used", || async move {
        get(addr, "/").await.text() == "two"
    })
    .await;
}

#[tokio::test]
async fn runs_the_dns_example_as_documented() {
    let up = named("127.0.0.1:0", "from-dns");
    let dns = TestDns::start();
    dns.set_a("app.test", &["127.0.0.1"], 1);
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/dns.yaml");
    let port = up.addr().port().to_string();
    let server = dns.addr().to_string();
    let process = Process::start_with_env(
        &example,
        &[
            ("PORT", "0"),
            ("ADMIN_PORT", "0"),
            ("UPSTREAM_NAME", "app.test"),
            ("UPSTREAM_PORT", &port),
            ("DNS_SERVER", &server),
        ],
    );
    let reply = get(process.addr, "/anything").await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.text(), "from-dns");
    assert!(dns.queries() >= 1);
}

#[tokio::test]
async fn a_higher_srv_priority_is_used_when_the_lowest_does_not_resolve() {
    let backup = named("127.0.0.1:0", "backup");
    let dns = TestDns::start();
    dns.set_a("b.test", &["127.0.0.1"], 60);
    dns.set_srv(
        "_http._tcp.app.test",
        &[
            // `gone.test` has no records: the priority-10 group resolves to nothing.
            (10, 1, 1, "gone.test"),
            (20, 1, backup.addr().port(), "b.test"),
        ],
        60,
    );
    let gw = Config::new(
        r#"
dns: {nameservers: ["{{dns}}"], hosts_file: ""}
upstreams: [{name: app, targets: [{srv: _http._tcp.app.test}]}]
routes: [{name: all, upstream: app}]
"#,
    )
    .var("dns", dns.addr())
    .start();
    for _ in 0..3 {
        assert_eq!(body(&gw).await, "backup");
    }
}

#[tokio::test]
async fn search_domains_and_ndots_come_from_the_resolv_conf_file() {
    let up = named("127.0.0.1:0", "searched");
    let dns = TestDns::start();
    dns.set_a("app.svc.test", &["127.0.0.1"], 60);
    let dir = tempfile::tempdir().unwrap();
    let resolv = dir.path().join("resolv.conf");
    // The nameserver line is replaced by `nameservers` (it cannot name a port); search and
    // ndots still apply.
    std::fs::write(
        &resolv,
        "nameserver 192.0.2.1\nsearch svc.test\noptions ndots:2\n",
    )
    .unwrap();
    let gw = Config::new(
        r#"
dns: {nameservers: ["{{dns}}"], resolv_conf: "{{resolv}}", hosts_file: ""}
upstreams: [{name: app, targets: ["app:{{port}}"]}]
routes: [{name: all, upstream: app}]
"#,
    )
    .var("dns", dns.addr())
    .var("resolv", resolv.display())
    .var("port", up.addr().port())
    .start();
    assert_eq!(body(&gw).await, "searched");
}
