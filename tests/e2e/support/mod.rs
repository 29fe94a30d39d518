//! Test harness: in-process upstreams ([`upstream`]), a configuration builder that starts the
//! real gateway on ephemeral ports ([`gateway`]), HTTP clients over real sockets
//! ([`client`]), self-signed certificates ([`tls`]) and helpers for the real binary ([`bin`]).

pub mod bin;
pub mod client;
pub mod dns;
pub mod gateway;
pub mod h2server;
pub mod jwt;
pub mod pki;
pub mod tls;
pub mod upstream;

use std::future::Future;
use std::time::Duration;

pub use client::{get, request, send};
pub use gateway::{Config, TestGateway};
pub use upstream::{RawUpstream, Upstream};

/// How long any single network step may take before the test fails instead of hanging.
/// Generous on purpose: it only turns a hang into a failure, it measures nothing.
pub const STEP: Duration = Duration::from_secs(15);

/// Awaits `fut`, failing the test with `what` if it takes longer than [`STEP`].
pub async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(STEP, fut).await {
        Ok(v) => v,
        Err(_) => panic!("timed out after {STEP:?}: {what}"),
    }
}

/// Sends gateway logs to the test output when `RUST_LOG` is set (e.g. `RUST_LOG=debug`).
pub fn init_logs() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        if std::env::var_os("RUST_LOG").is_some() {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
                .with_test_writer()
                .try_init();
        }
    });
}

/// Whether `s` is a hyphenated UUID.
pub fn is_uuid(s: &str) -> bool {
    uuid::Uuid::parse_str(s).is_ok() && s.len() == 36
}

/// The value of the Prometheus sample `series` (`name{labels}` exactly as rendered), if present.
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)
                .and_then(|rest| rest.strip_prefix(' '))
        })
        .and_then(|v| v.trim().parse().ok())
}

/// Polls `check` every 20 ms until it returns true; fails the test with `what` after [`STEP`].
/// For effects that land just after the client has its answer (metrics, log lines).
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let until = tokio::time::Instant::now() + STEP;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < until,
            "never happened: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
