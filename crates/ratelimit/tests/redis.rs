//! The Redis store against a real `redis-server`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use sluicegate_ratelimit::redis::{Endpoint, RedisLimiter, RedisSettings, StoreError};
use sluicegate_ratelimit::{Limit, Period};
use sluicegate_testkit::redis::RedisServer;

fn limiter(url: &str, scope: &str, limits: &[Limit], backoff: Duration) -> RedisLimiter {
    RedisLimiter::new(
        scope,
        limits,
        RedisSettings {
            endpoint: Endpoint::parse(url).unwrap(),
            timeout: Duration::from_millis(500),
            backoff,
            prefix: "test".into(),
        },
    )
    .unwrap()
}

fn per_minute(rate: u64) -> Limit {
    Limit::new(rate, Period::Minute, None).unwrap()
}

#[tokio::test]
async fn two_limiters_on_one_server_share_the_count() {
    let redis = RedisServer::start();
    let a = limiter(&redis.url(), "shared", &[per_minute(5)], Duration::ZERO);
    let b = limiter(&redis.url(), "shared", &[per_minute(5)], Duration::ZERO);
    let mut admitted = 0;
    for i in 0..10 {
        let l = if i % 2 == 0 { &a } else { &b };
        let v = l.check(b"client").await.unwrap();
        if v.admitted {
            admitted += 1;
            assert_eq!(v.limit, 5);
            assert_eq!(v.remaining, 5 - admitted);
        } else {
            assert!(v.retry_after > Duration::from_secs(11), "{v:?}");
            assert!(v.retry_after <= Duration::from_secs(12), "{v:?}");
        }
    }
    assert_eq!(admitted, 5);
    // Another key and another scope count apart.
    assert!(a.check(b"other").await.unwrap().admitted);
    let c = limiter(&redis.url(), "elsewhere", &[per_minute(5)], Duration::ZERO);
    assert!(c.check(b"client").await.unwrap().admitted);
    // The keys carry a TTL, so Redis forgets idle clients by itself.
    let ttl = redis.command(&["PTTL", "test:{shared|client}:5/minute"]);
    let ms: i64 = ttl.trim().trim_start_matches(':').parse().unwrap();
    assert!(ms > 0 && ms <= 60_001, "{ttl}");
}

#[tokio::test]
async fn a_refusal_by_one_limit_counts_in_none() {
    let redis = RedisServer::start();
    let l = limiter(
        &redis.url(),
        "multi",
        &[per_minute(100), per_minute(2)],
        Duration::ZERO,
    );
    assert!(l.check(b"k").await.unwrap().admitted);
    assert!(l.check(b"k").await.unwrap().admitted);
    for _ in 0..5 {
        let v = l.check(b"k").await.unwrap();
        assert!(!v.admitted);
        assert_eq!(v.limit, 2, "the limit that refused is reported");
    }
    let only_first = limiter(&redis.url(), "multi", &[per_minute(100)], Duration::ZERO);
    assert_eq!(only_first.check(b"k").await.unwrap().remaining, 97);
}

#[tokio::test]
async fn the_script_is_sent_again_when_the_server_forgot_it() {
    let redis = RedisServer::start();
    let l = limiter(&redis.url(), "flush", &[per_minute(3)], Duration::ZERO);
    assert_eq!(l.check(b"k").await.unwrap().remaining, 2);
    assert!(redis.command(&["SCRIPT", "FLUSH"]).starts_with("+OK"));
    assert_eq!(l.check(b"k").await.unwrap().remaining, 1);
}

#[tokio::test]
async fn a_password_and_a_database_are_used() {
    let redis = RedisServer::start_with(Some("s3cret"));
    let url = format!("{}/3", redis.url());
    let l = limiter(&url, "auth", &[per_minute(3)], Duration::ZERO);
    assert!(l.check(b"k").await.unwrap().admitted);
    let in_db3 = redis.commands(&[&["SELECT", "3"], &["EXISTS", "test:{auth|k}:3/minute"]]);
    assert_eq!(in_db3.trim(), ":1");
    assert_eq!(
        redis.command(&["EXISTS", "test:{auth|k}:3/minute"]).trim(),
        ":0"
    );
    let wrong = limiter(
        &format!("redis://:wrong@127.0.0.1:{}", redis.port()),
        "auth",
        &[per_minute(3)],
        Duration::ZERO,
    );
    match wrong.check(b"k").await {
        Err(StoreError::Refused(e)) => assert!(e.contains("AUTH"), "{e}"),
        other => panic!("{other:?}"),
    } // A password of the same length never borrows the right one's pooled connection.
    let same_length = limiter(
        &format!("redis://:s3cre7@127.0.0.1:{}/3", redis.port()),
        "auth",
        &[per_minute(3)],
        Duration::ZERO,
    );
    assert!(matches!(
        same_length.check(b"k").await,
        Err(StoreError::Refused(_))
    ));
}

#[tokio::test]
async fn a_killed_server_fails_then_recovers_after_the_backoff() {
    let mut redis = RedisServer::start();
    let l = limiter(
        &redis.url(),
        "crash",
        &[per_minute(100)],
        Duration::from_millis(300),
    );
    assert!(l.check(b"k").await.unwrap().admitted);
    redis.kill();
    let first = l.check(b"k").await;
    assert!(
        matches!(first, Err(StoreError::Protocol(_) | StoreError::Connect(_))),
        "{first:?}"
    );
    assert_eq!(l.check(b"k").await, Err(StoreError::Backoff));
    redis.restart();
    tokio::time::sleep(Duration::from_millis(350)).await;
    let v = l.check(b"k").await.unwrap();
    assert!(v.admitted);
    assert_eq!(
        v.remaining, 99,
        "a restarted Redis without persistence starts over"
    );
}
