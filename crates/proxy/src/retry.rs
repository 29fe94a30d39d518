//! Retries of a route (`retry:`): which failures are retried on another target (timeouts,
//! resets, chosen statuses), for which methods, how large a body may be buffered to be
//! replayed byte for byte, and the retry budget that keeps retries from multiplying the load
//! on an upstream that is already failing.
//!
//! Connect failures are always tried on the next target, route policy or not: nothing was
//! sent, so nothing can be duplicated.
//!
//! The budget is a token bucket: each request adds `budget_ratio` of a token, each retry
//! takes one, and `min_retries_per_second` tokens trickle in so low-traffic routes can still
//! retry. Unused budget accumulates up to ten seconds' worth.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use http::Method;

use sluicegate_config::retry::{RetryConfig, RetryOn};
use sluicegate_core::diag::{Diags, Path};
use sluicegate_upstream::live::now_ms;

/// Defaults (also in docs/upstreams.md).
pub mod defaults {
    /// Retries after the first try.
    pub const ATTEMPTS: u32 = 2;
    /// 64 KiB: most API bodies fit; larger uploads stream instead.
    pub const MAX_BODY_BYTES: u64 = 64 * 1024;
    /// linkerd's default retry budget adds at most 20 % load.
    pub const BUDGET_RATIO: f64 = 0.2;
    /// linkerd's default minimum is 10 retries per second.
    pub const MIN_RETRIES_PER_SECOND: u32 = 10;
}

/// A route's validated retry policy.
#[derive(Debug)]
pub struct RetryPolicy {
    /// Retries after the first try.
    pub attempts: u32,
    /// Statuses retried.
    pub statuses: Vec<u16>,
    /// Retry when the upstream does not answer in time.
    pub on_timeout: bool,
    /// Retry when the connection breaks before a response.
    pub on_reset: bool,
    /// Retry POST, PATCH and other non-idempotent methods.
    pub non_idempotent: bool,
    /// Largest body buffered for replay.
    pub max_body_bytes: u64,
    budget: Budget,
}

#[derive(Debug)]
struct Budget {
    /// Thousandths of a token added per request.
    per_request: i64,
    /// Thousandths of a token added per millisecond.
    per_ms_milli: i64,
    /// Cap, in thousandths.
    cap: i64,
    tokens: AtomicI64,
    last_refill: AtomicU64,
}

impl RetryPolicy {
    /// Whether `method` may be retried after it was sent.
    pub fn allows(&self, method: &Method) -> bool {
        self.non_idempotent
            || matches!(
                *method,
                Method::GET
                    | Method::HEAD
                    | Method::OPTIONS
                    | Method::TRACE
                    | Method::PUT
                    | Method::DELETE
            )
    }

    /// Counts a request toward the budget.
    #[inline]
    pub fn deposit(&self) {
        let b = &self.budget;
        if b.tokens.load(Ordering::Relaxed) < b.cap {
            b.tokens.fetch_add(b.per_request, Ordering::Relaxed);
        }
    }

    /// Takes one retry from the budget; false when it is spent.
    pub fn withdraw(&self) -> bool {
        let b = &self.budget;
        let now = now_ms();
        let last = b.last_refill.swap(now, Ordering::Relaxed);
        if last != 0 && now > last {
            let add = (now - last) as i64 * b.per_ms_milli;
            let t = b.tokens.fetch_add(add, Ordering::Relaxed) + add;
            if t > b.cap {
                b.tokens.fetch_min(b.cap, Ordering::Relaxed);
            }
        }
        let mut current = b.tokens.load(Ordering::Relaxed);
        while current >= 1000 {
            match b.tokens.compare_exchange_weak(
                current,
                current - 1000,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return true,
                Err(v) => current = v,
            }
        }
        false
    }
}

/// Validates `retry:`.
pub fn policy(cfg: RetryConfig, path: &Path, diags: &mut Diags) -> RetryPolicy {
    let attempts = cfg.attempts.unwrap_or(defaults::ATTEMPTS);
    if !(1..=10).contains(&attempts) {
        diags.push(&path.key("attempts"), "must be between 1 and 10");
    }
    let mut statuses = Vec::new();
    let (mut on_timeout, mut on_reset) = (false, false);
    match cfg.on {
        None => statuses.extend([502, 503, 504]),
        Some(list) => {
            if list.is_empty() {
                diags.push(&path.key("on"), "list at least one condition");
            }
            for (i, on) in list.iter().enumerate() {
                match on {
                    RetryOn::Status(s) if (100..=599).contains(s) => statuses.push(*s),
                    RetryOn::Event(e) if e == "timeout" => on_timeout = true,
                    RetryOn::Event(e) if e == "reset" => on_reset = true,
                    _ => diags.push(
                        &path.key("on").index(i),
                        "expected `timeout`, `reset` or a status code (100-599)",
                    ),
                }
            }
        }
    }
    let ratio = cfg.budget_ratio.unwrap_or(defaults::BUDGET_RATIO);
    if !(0.0..=10.0).contains(&ratio) {
        diags.push(&path.key("budget_ratio"), "must be between 0 and 10");
    }
    let min = cfg
        .min_retries_per_second
        .unwrap_or(defaults::MIN_RETRIES_PER_SECOND);
    if min > 100_000 {
        diags.push(
            &path.key("min_retries_per_second"),
            "must be at most 100000",
        );
    }
    let max_body_bytes = cfg.max_body_bytes.unwrap_or(defaults::MAX_BODY_BYTES);
    if max_body_bytes > 64 * 1024 * 1024 {
        diags.push(
            &path.key("max_body_bytes"),
            "must be at most 67108864 (64 MiB)",
        );
    }
    let min = i64::from(min.min(100_000));
    let per_request = (ratio.clamp(0.0, 10.0) * 1000.0) as i64;
    RetryPolicy {
        attempts: attempts.clamp(1, 10),
        statuses,
        on_timeout,
        on_reset,
        non_idempotent: cfg.non_idempotent,
        max_body_bytes,
        budget: Budget {
            per_request,
            per_ms_milli: min,
            // Ten seconds of the minimum, or ten retries, whichever is more.
            cap: (min * 10).max(10) * 1000,
            tokens: AtomicI64::new((min * 1000).max(1000)),
            last_refill: AtomicU64::new(0),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(ratio: f64, min: u32) -> RetryConfig {
        RetryConfig {
            attempts: None,
            on: None,
            non_idempotent: false,
            max_body_bytes: None,
            budget_ratio: Some(ratio),
            min_retries_per_second: Some(min),
        }
    }

    #[test]
    fn the_budget_allows_a_ratio_of_the_requests() {
        let mut diags = Diags::default();
        let p = policy(cfg(0.5, 0), &Path::root(), &mut diags);
        assert!(diags.is_empty());
        // One token to start with.
        assert!(p.withdraw());
        assert!(!p.withdraw());
        for _ in 0..10 {
            p.deposit();
        }
        let granted = (0..10).filter(|_| p.withdraw()).count();
        assert_eq!(granted, 5);
    }

    #[test]
    fn only_idempotent_methods_unless_opted_in() {
        let mut diags = Diags::default();
        let p = policy(cfg(0.2, 10), &Path::root(), &mut diags);
        assert!(p.allows(&Method::GET) && p.allows(&Method::PUT));
        assert!(!p.allows(&Method::POST) && !p.allows(&Method::PATCH));
        let mut c = cfg(0.2, 10);
        c.non_idempotent = true;
        assert!(policy(c, &Path::root(), &mut diags).allows(&Method::POST));
    }

    #[test]
    fn rejects_unknown_conditions_with_their_path() {
        let mut diags = Diags::default();
        let mut c = cfg(0.2, 10);
        c.on = Some(vec![
            RetryOn::Event("timeout".into()),
            RetryOn::Event("weather".into()),
        ]);
        let p = policy(c, &Path::root().key("retry"), &mut diags);
        assert!(p.on_timeout);
        assert_eq!(diags.0[0].path, "retry.on[1]");
    }
}
