//! Health of targets. Passive: requests report their outcome ([`record_failure`],
//! [`record_success`]); enough consecutive failures eject the target for a backoff that grows
//! with each ejection in a row, after which it gets requests again (and a success resets the
//! backoff). Active: one task per upstream ([`run_active`]) sends `GET path` to every
//! target each interval and takes a target out after `unhealthy_threshold` failures in a row,
//! back in after `healthy_threshold` successes.
//!
//! Both only write atomics in [`TargetState`]; the balancer reads them.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::config::{ActiveCheck, Passive};
use super::live::{now_ms, TargetState};
use super::{Protocol, Target, Upstream};

/// Records a failed request to a target; returns true when this failure ejected it.
pub fn record_failure(state: &TargetState, passive: &Passive) -> bool {
    let n = state.failures.fetch_add(1, Ordering::Relaxed) + 1;
    if n < passive.max_failures {
        return false;
    }
    state.failures.store(0, Ordering::Relaxed);
    let round = state.ejections.fetch_add(1, Ordering::Relaxed) + 1;
    let backoff = passive
        .backoff
        .saturating_mul(round)
        .min(passive.max_backoff);
    state
        .ejected_until
        .store(now_ms() + backoff.as_millis() as u64, Ordering::Relaxed);
    state.ejections_total.fetch_add(1, Ordering::Relaxed);
    true
}

/// Records a successful request to a target (cheap when nothing needs resetting).
#[inline]
pub fn record_success(state: &TargetState) {
    if state.failures.load(Ordering::Relaxed) != 0 {
        state.failures.store(0, Ordering::Relaxed);
    }
    let until = state.ejected_until.load(Ordering::Relaxed);
    if until != 0 && now_ms() >= until {
        // Back after an ejection and answering: the next ejection starts from the base.
        state.ejected_until.store(0, Ordering::Relaxed);
        state.ejections.store(0, Ordering::Relaxed);
    }
}

/// Checks every target of `upstream` every interval until the task is aborted (a reload
/// replaces the upstream and its task).
pub async fn run_active(upstream: Arc<Upstream>, check: ActiveCheck) {
    let mut every = tokio::time::interval(check.interval);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let set = upstream.live.load_full();
        // One check per address, even when two configured targets share it.
        let mut seen = std::collections::HashSet::new();
        let checks = set
            .targets
            .iter()
            .filter(|t| seen.insert(Arc::as_ptr(&t.state) as usize))
            .map(|t| check_one(&upstream, &check, t));
        futures_util::future::join_all(checks).await;
    }
}

async fn check_one(upstream: &Upstream, check: &ActiveCheck, target: &Target) {
    let outcome = match tokio::time::timeout(check.timeout, probe(upstream, check, target)).await {
        Ok(Ok(status)) if check.expects(status) => Ok(status),
        Ok(Ok(status)) => Err(format!("unexpected status {status}")),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(format!("no answer within {} ms", check.timeout.as_millis())),
    };
    let state = &target.state;
    let was_down = state.active_down.load(Ordering::Relaxed);
    match &outcome {
        Ok(status) => {
            state.check_fail_streak.store(0, Ordering::Relaxed);
            let ok = state.check_ok_streak.fetch_add(1, Ordering::Relaxed) + 1;
            if was_down && ok >= check.healthy_threshold {
                state.active_down.store(false, Ordering::Relaxed);
                tracing::info!(upstream = %upstream.name, target = %target.address, status, "Target is healthy again.");
            }
        }
        Err(e) => {
            state.check_ok_streak.store(0, Ordering::Relaxed);
            let failed = state.check_fail_streak.fetch_add(1, Ordering::Relaxed) + 1;
            if !was_down && failed >= check.unhealthy_threshold {
                state.active_down.store(true, Ordering::Relaxed);
                tracing::warn!(upstream = %upstream.name, target = %target.address, error = %e, "Target failed its health checks; taken out.");
            }
        }
    }
    let text = match outcome {
        Ok(status) => format!("ok: status {status}"),
        Err(e) => format!("failed: {e}"),
    };
    *state
        .last_check
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(text);
}

/// One check: a new connection, `GET path`, the status.
async fn probe(upstream: &Upstream, check: &ActiveCheck, target: &Target) -> Result<u16, String> {
    let tcp = TcpStream::connect(target.addr)
        .await
        .map_err(|e| format!("cannot connect: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let host = check
        .host
        .clone()
        .unwrap_or_else(|| authority(&target.host, target.port));
    let req = http::Request::get(check.path.as_str())
        .header(http::header::HOST, host.as_str())
        .header(http::header::USER_AGENT, "sluicegate-health-check")
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    match &upstream.tls {
        None => send(TokioIo::new(tcp), req, upstream.protocol, &host).await,
        Some(tls) => {
            let server_name = super::tls::server_name(tls, &target.host)?;
            let stream = tokio_rustls::TlsConnector::from(tls.config.clone())
                .connect(server_name.clone(), tcp)
                .await
                .map_err(|e| super::tls::handshake_error(&e, &server_name))?;
            send(TokioIo::new(stream), req, upstream.protocol, &host).await
        }
    }
}

async fn send<I>(
    io: TokioIo<I>,
    mut req: http::Request<Empty<Bytes>>,
    protocol: Protocol,
    host: &str,
) -> Result<u16, String>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let response = match protocol {
        Protocol::Http1 => {
            let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
                .await
                .map_err(|e| format!("handshake failed: {e}"))?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            sender.send_request(req).await
        }
        Protocol::Http2 => {
            let uri = format!("http://{host}{}", req.uri());
            if let Ok(uri) = uri.parse() {
                *req.uri_mut() = uri;
            }
            req.headers_mut().remove(http::header::HOST);
            let (mut sender, conn) =
                hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io)
                    .await
                    .map_err(|e| format!("HTTP/2 handshake failed: {e}"))?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            sender.send_request(req).await
        }
    };
    response
        .map(|r| r.status().as_u16())
        .map_err(|e| format!("request failed: {e}"))
}

fn authority(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// How long until `state`'s ejection ends, if it is ejected.
pub fn ejected_for(state: &TargetState) -> Option<Duration> {
    let until = state.ejected_until.load(Ordering::Relaxed);
    let now = now_ms();
    (until != 0 && now < until).then(|| Duration::from_millis(until - now))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn passive() -> Passive {
        Passive {
            max_failures: 3,
            failure_statuses: vec![503],
            backoff: Duration::from_secs(10),
            max_backoff: Duration::from_secs(25),
        }
    }

    #[test]
    fn consecutive_failures_eject_and_a_success_resets_the_count() {
        let s = TargetState::default();
        let p = passive();
        assert!(!record_failure(&s, &p));
        assert!(!record_failure(&s, &p));
        record_success(&s);
        assert!(!record_failure(&s, &p));
        assert!(!record_failure(&s, &p));
        assert!(s.available());
        assert!(record_failure(&s, &p));
        assert!(!s.available());
        let left = ejected_for(&s).unwrap();
        assert!(left <= Duration::from_secs(10) && left > Duration::from_secs(5));
    }

    #[test]
    fn ejections_in_a_row_back_off_longer_up_to_the_cap() {
        let s = TargetState::default();
        let p = passive();
        for round in 1..=3u64 {
            for _ in 0..3 {
                record_failure(&s, &p);
            }
            let left = ejected_for(&s).unwrap().as_secs();
            let expected = (10 * round).min(25);
            assert!(
                left + 1 >= expected && left <= expected,
                "round {round}: {left}"
            );
        }
    }
}
