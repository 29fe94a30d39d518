use std::sync::Arc;

use sluicegate_core::context::{Consumer, RequestCtx};
use sluicegate_lua::harness::FakeRequest;
use sluicegate_ratelimit::ScriptKey;

use super::{address_key, build};
use crate::testing::{self, access, responded};
use crate::{Flow, Plugin};

/// Every test counts in a bucket of its own: the node's tables are process-wide.
fn plugin(bucket: &str, rest: &str) -> Arc<dyn Plugin> {
    testing::plugin(build, &format!("bucket: {bucket}\n{rest}"), &[])
}

fn from(peer: &str, headers: &[(&str, &str)]) -> RequestCtx {
    let h = testing::harness();
    let mut req = FakeRequest {
        client_addr: std::net::SocketAddr::new(peer.parse().unwrap(), 5000),
        ..FakeRequest::default()
    };
    for (k, v) in headers {
        req.headers.append(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    h.request(req)
}

fn header<'a>(ctx: &'a RequestCtx, name: &str) -> &'a str {
    ctx.response_headers
        .get(name)
        .map_or("", |v| v.to_str().unwrap())
}

/// How many of `n` requests from `peer` get through.
fn admitted(p: &dyn Plugin, n: usize, make: impl Fn() -> RequestCtx) -> usize {
    (0..n)
        .filter(|_| matches!(access(p, &mut make()), Flow::Continue))
        .count()
}

#[test]
fn a_client_over_its_limit_gets_429_with_retry_after() {
    let p = plugin("t429", "limits: [{rate: 3, per: minute}]");
    for left in (0..3).rev() {
        let mut ctx = from("10.0.0.1", &[]);
        assert!(matches!(access(&*p, &mut ctx), Flow::Continue));
        assert_eq!(header(&ctx, "ratelimit-limit"), "3");
        assert_eq!(header(&ctx, "ratelimit-remaining"), left.to_string());
        assert_eq!(header(&ctx, "ratelimit-policy"), "3;w=60");
    }
    let mut ctx = from("10.0.0.1", &[]);
    let flow = access(&*p, &mut ctx);
    let Flow::Respond(r) = &flow else {
        panic!("expected 429")
    };
    assert_eq!(r.headers["retry-after"], "20");
    assert_eq!(header(&ctx, "ratelimit-remaining"), "0");
    assert_eq!(header(&ctx, "ratelimit-reset"), "60");
    let (status, body) = responded(flow);
    assert_eq!(status, 429);
    assert_eq!(body["error"], "rate_limited");
    assert_eq!(body["request_id"], ctx.request_id_str());
    // Another client is not affected.
    assert_eq!(admitted(&*p, 3, || from("10.0.0.2", &[])), 3);
}

#[test]
fn headers_can_be_turned_off() {
    let p = plugin(
        "tnoheaders",
        "limits: [{rate: 1, per: hour}]\nheaders: false",
    );
    let mut ctx = from("10.0.0.1", &[]);
    assert!(matches!(access(&*p, &mut ctx), Flow::Continue));
    assert!(ctx.response_headers.is_empty());
    let Flow::Respond(r) = access(&*p, &mut from("10.0.0.1", &[])) else {
        panic!("expected 429")
    };
    assert!(
        r.headers.contains_key("retry-after"),
        "Retry-After is always sent"
    );
}

#[test]
fn several_limits_report_the_one_closest_to_running_out() {
    let p = plugin(
        "tmulti",
        "limits: [{rate: 100, per: second}, {rate: 5, per: minute, burst: 2}]",
    );
    let mut ctx = from("10.0.0.1", &[]);
    access(&*p, &mut ctx);
    assert_eq!(header(&ctx, "ratelimit-limit"), "2");
    assert_eq!(header(&ctx, "ratelimit-remaining"), "1");
    assert_eq!(header(&ctx, "ratelimit-policy"), "100;w=1, 5;w=60;burst=2");
    assert_eq!(admitted(&*p, 5, || from("10.0.0.1", &[])), 1);
}

#[test]
fn a_header_key_counts_each_value_and_falls_back_to_the_address() {
    let p = plugin(
        "theader",
        "limits: [{rate: 2, per: minute}]\nkey: {header: X-Tenant}",
    );
    assert_eq!(
        admitted(&*p, 5, || from("10.0.0.1", &[("x-tenant", "a")])),
        2
    );
    // Same tenant from another address: the same count.
    assert_eq!(
        admitted(&*p, 5, || from("10.0.0.9", &[("x-tenant", "a")])),
        0
    );
    assert_eq!(
        admitted(&*p, 5, || from("10.0.0.1", &[("x-tenant", "b")])),
        2
    );
    // Without the header: by address, apart from any tenant.
    assert_eq!(admitted(&*p, 5, || from("10.0.0.1", &[])), 2);
    // A huge value is counted by its digest, the same as itself.
    let big = "x".repeat(5000);
    assert_eq!(
        admitted(&*p, 5, || from("10.0.0.3", &[("x-tenant", &big)])),
        2
    );
}

#[test]
fn consumer_claim_and_script_keys_read_what_earlier_plugins_left() {
    let consumer = plugin(
        "tconsumer",
        "limits: [{rate: 1, per: minute}]\nkey: consumer",
    );
    let as_consumer = |name: &str| {
        let mut ctx = from("10.0.0.1", &[]);
        ctx.vars.insert(Consumer(Arc::from(name)));
        ctx
    };
    assert_eq!(admitted(&*consumer, 3, || as_consumer("PARTNER_A")), 1);
    assert_eq!(admitted(&*consumer, 3, || as_consumer("PARTNER_B")), 1);

    let claim = plugin(
        "tclaim",
        "limits: [{rate: 1, per: minute}]\nkey: {claim: org.id}",
    );
    let with_org = |org: serde_json::Value| {
        let h = testing::harness();
        let claims = serde_json::json!({"org": {"id": org}});
        h.request(FakeRequest {
            jwt_claims: claims.as_object().cloned(),
            ..FakeRequest::default()
        })
    };
    assert_eq!(
        admitted(&*claim, 3, || with_org(serde_json::json!("acme"))),
        1
    );
    assert_eq!(admitted(&*claim, 3, || with_org(serde_json::json!(42))), 1);

    let script = plugin("tscript", "limits: [{rate: 2, per: minute}]\nkey: script");
    let keyed = |k: &str| {
        let mut ctx = from("10.0.0.1", &[]);
        ctx.vars.insert(ScriptKey(k.to_string()));
        ctx
    };
    assert_eq!(admitted(&*script, 3, || keyed("tenant-1")), 2);
    assert_eq!(admitted(&*script, 3, || keyed("tenant-2")), 2);
}

#[test]
fn the_client_address_comes_through_trusted_proxies_only() {
    let p = plugin(
        "txff",
        "limits: [{rate: 1, per: minute}]\ntrusted_proxies: [10.0.0.0/8]",
    );
    let via_proxy = |client: &str| from("10.1.1.1", &[("x-forwarded-for", client)]);
    assert_eq!(admitted(&*p, 2, || via_proxy("203.0.113.7")), 1);
    assert_eq!(admitted(&*p, 2, || via_proxy("203.0.113.8")), 1);
    // An untrusted peer's header is ignored: counted by the peer.
    let direct = || from("198.51.100.1", &[("x-forwarded-for", "203.0.113.99")]);
    assert_eq!(admitted(&*p, 2, direct), 1);
    let (status, body) = responded(access(&*p, &mut via_proxy("not-an-ip")));
    assert_eq!(status, 400);
    assert!(body["message"]
        .as_str()
        .unwrap()
        .contains("X-Forwarded-For"));
}

#[test]
fn counts_survive_rebuilding_the_plugin() {
    let config = "limits: [{rate: 2, per: minute}]";
    let first = plugin("treload", config);
    assert_eq!(admitted(&*first, 1, || from("10.0.0.1", &[])), 1);
    // A reload builds the new plugin before the old one goes.
    let second = plugin("treload", config);
    drop(first);
    assert_eq!(admitted(&*second, 5, || from("10.0.0.1", &[])), 1);
    // A changed limit is a new count.
    let changed = plugin("treload", "limits: [{rate: 3, per: minute}]");
    assert_eq!(admitted(&*changed, 5, || from("10.0.0.1", &[])), 3);
}

#[test]
fn bad_configs_name_the_path() {
    let cases: &[(&str, &str, &str)] = &[
        ("{}", "", "missing field `limits`"),
        ("limits: []", "limits", "give 1 to 8 limits"),
        (
            "limits: [{rate: 0, per: second}]",
            "limits[0]",
            "`rate` must be",
        ),
        (
            "limits: [{rate: 1, per: week}]",
            "limits[0].per",
            "unknown period `week`",
        ),
        (
            "limits: [{rate: 1, per: second, burst: 0}]",
            "limits[0]",
            "`burst` must be",
        ),
        (
            "limits: [{rate: 1, per: second}, {rate: 1, per: s}]",
            "limits[1]",
            "the same limit twice",
        ),
        (
            "limits: [{rate: 1, per: second}]\nkey: ip",
            "key",
            "unknown key `ip`",
        ),
        (
            "limits: [{rate: 1, per: second}]\nkey: {cookie: a}",
            "key",
            "unknown key source",
        ),
        (
            "limits: [{rate: 1, per: second}]\nkey: {header: 'a b'}",
            "key.header",
            "invalid header name",
        ),
        (
            "limits: [{rate: 1, per: second}]\nkey: {claim: 'a..b'}",
            "key.claim",
            "",
        ),
        (
            "limits: [{rate: 1, per: second}]\npolicy: redis",
            "policy",
            "needs `redis.url`",
        ),
        (
            "limits: [{rate: 1, per: second}]\nredis: {url: 'http://x'}",
            "redis.url",
            "redis://",
        ),
        (
            "limits: [{rate: 1, per: second}]\nredis: {url: 'redis://h', timeout_ms: 0}",
            "redis.timeout_ms",
            "1..=60000",
        ),
        (
            "limits: [{rate: 1, per: second}]\nredis: {url: 'redis://h', on_error: ignore}",
            "redis.on_error",
            "fail_open",
        ),
        (
            "limits: [{rate: 1, per: second}]\nmax_keys: 0",
            "max_keys",
            "at least 1",
        ),
        (
            "limits: [{rate: 1, per: second}]\nbucket: 'a|b'",
            "bucket",
            "without",
        ),
        (
            "limits: [{rate: 1, per: second}]\ntrusted_proxies: [nope]",
            "trusted_proxies[0]",
            "",
        ),
    ];
    for (text, path, message) in cases {
        let errors = testing::errors(build, text, &[]);
        assert!(
            errors.iter().any(|(p, m)| p == path && m.contains(message)),
            "{text}: {errors:?}"
        );
    }
}

#[test]
fn an_empty_redis_url_means_the_local_policy() {
    // What `url: ${REDIS_URL:-}` gives when the variable is unset.
    let p = plugin(
        "tempty",
        "limits: [{rate: 1, per: minute}]\nredis: {url: ''}",
    );
    assert_eq!(admitted(&*p, 2, || from("10.0.0.1", &[])), 1);
}

/// A loopback port nobody listens on.
fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn run_access(p: &dyn Plugin, ctx: &mut RequestCtx) -> Flow {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(p.access(ctx).run()).unwrap()
}

#[test]
fn an_unreachable_redis_fails_open_by_default_and_closed_when_asked() {
    let port = closed_port();
    let open = plugin(
        "tfailopen",
        &format!("limits: [{{rate: 1, per: minute}}]\nredis: {{url: 'redis://127.0.0.1:{port}'}}"),
    );
    for _ in 0..3 {
        let mut ctx = from("10.0.0.1", &[]);
        assert!(matches!(run_access(&*open, &mut ctx), Flow::Continue));
        assert!(ctx.response_headers.is_empty(), "no count, no headers");
    }
    let closed = plugin(
        "tfailclosed",
        &format!(
            "limits: [{{rate: 1, per: minute}}]\nredis: {{url: 'redis://127.0.0.1:{port}', on_error: fail_closed}}"
        ),
    );
    let (status, body) = responded(run_access(&*closed, &mut from("10.0.0.1", &[])));
    assert_eq!(status, 503);
    assert_eq!(body["error"], "unavailable");
    let c = sluicegate_ratelimit::metrics::counters("tfailopen");
    assert_eq!(c.failed_open.load(std::sync::atomic::Ordering::Relaxed), 3);
    let mut text = String::new();
    sluicegate_ratelimit::metrics::render(&mut text);
    assert!(
        text.contains(
            "sluicegate_rate_limit_store_errors_total{bucket=\"tfailopen\",kind=\"connect\"} 1"
        ),
        "one connect error, then the backoff: {text}"
    );
}

#[test]
fn addresses_are_written_as_text() {
    for text in [
        "0.0.0.0",
        "9.10.99.100",
        "255.255.255.255",
        "127.0.0.1",
        "2001:db8::1",
        "::",
    ] {
        let key = address_key(text.parse().unwrap());
        assert_eq!(key.as_slice(), format!("ip:{text}").as_bytes());
    }
}
