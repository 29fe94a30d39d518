//! Rate limits for the gateway: the `rate_limit` plugin and `sluicegate.ratelimit.check`
//! both decide through this crate.
//!
//! The algorithm is GCRA, the generic cell rate algorithm ([`gcra`]): each key keeps one
//! number, its *theoretical arrival time* (TAT). A request is admitted when moving the TAT
//! one emission interval (`period / rate`) forward leaves it no further ahead of now than
//! the burst allows. That is a token bucket's behaviour (a burst of `burst` requests at
//! once, then `rate` per `period`, smoothly) with no refill timer and one word of state, so
//! the local table updates it with one compare-and-swap and Redis with one short script.
//! A fixed window would admit twice the rate across a window edge; a sliding log needs a
//! timestamp per request.
//!
//! Two stores keep the TATs:
//! - [`local`]: one table per node, shared by every worker through a lock-free hash map;
//!   tables live in a process-wide registry keyed by their scope and limit, so a reload
//!   that keeps a limit keeps its counts.
//! - [`redis`]: one count for every node that talks to the same Redis, in one round trip
//!   per request (a script that checks and updates every limit of the request atomically).

pub mod gcra;
pub mod local;
pub mod metrics;
pub mod redis;

use std::time::Duration;

/// The key a Lua script chose for the request (`sluicegate.ratelimit.set_key`), kept in
/// the request's variables for a `rate_limit` plugin with `key: script`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScriptKey(pub String);

/// The unit a rate is counted in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Period {
    /// Per second.
    Second,
    /// Per minute.
    Minute,
    /// Per hour.
    Hour,
    /// Per day.
    Day,
}

impl Period {
    /// Every period, for error messages.
    pub const NAMES: &'static str = "second, minute, hour, day";

    /// Parses `second`, `minute`, `hour`, `day` (also `s`, `m`, `h`, `d`).
    pub fn parse(text: &str) -> Option<Period> {
        match text {
            "second" | "s" | "sec" => Some(Period::Second),
            "minute" | "m" | "min" => Some(Period::Minute),
            "hour" | "h" => Some(Period::Hour),
            "day" | "d" => Some(Period::Day),
            _ => None,
        }
    }

    /// The period's length in seconds.
    pub fn seconds(self) -> u64 {
        match self {
            Period::Second => 1,
            Period::Minute => 60,
            Period::Hour => 3_600,
            Period::Day => 86_400,
        }
    }

    /// The name used in configuration and in Redis keys.
    pub fn as_str(self) -> &'static str {
        match self {
            Period::Second => "second",
            Period::Minute => "minute",
            Period::Hour => "hour",
            Period::Day => "day",
        }
    }
}

/// The largest `rate` and `burst` accepted: far beyond any real limit, and small enough
/// that no arithmetic on nanoseconds overflows.
pub const MAX_COUNT: u64 = 1_000_000_000;

/// One limit: `rate` requests per `period`, with bursts of up to `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Limit {
    /// Requests per period (1..=[`MAX_COUNT`]).
    pub rate: u64,
    /// The period the rate is counted over.
    pub period: Period,
    /// Requests that may arrive back to back (1..=[`MAX_COUNT`]); usually `rate`.
    pub burst: u64,
}

impl Limit {
    /// A limit, or why it is invalid.
    pub fn new(rate: u64, period: Period, burst: Option<u64>) -> Result<Limit, String> {
        if !(1..=MAX_COUNT).contains(&rate) {
            return Err(format!("`rate` must be 1..={MAX_COUNT}, not {rate}"));
        }
        let burst = burst.unwrap_or(rate);
        if !(1..=MAX_COUNT).contains(&burst) {
            return Err(format!("`burst` must be 1..={MAX_COUNT}, not {burst}"));
        }
        Ok(Limit {
            rate,
            period,
            burst,
        })
    }

    /// The emission interval: the time one request "costs", `period / rate`, in
    /// nanoseconds (at least 1).
    pub fn emission_ns(&self) -> u64 {
        (u128::from(self.period.seconds()) * 1_000_000_000 / u128::from(self.rate)).max(1) as u64
    }

    /// How far ahead of now the TAT may be after an admitted request: `burst` emission
    /// intervals, in nanoseconds.
    pub fn tolerance_ns(&self) -> u64 {
        self.emission_ns().saturating_mul(self.burst)
    }

    /// `10/second` (with `, burst 20` when the burst is not the rate): for logs and
    /// Redis keys.
    pub fn describe(&self) -> String {
        if self.burst == self.rate {
            format!("{}/{}", self.rate, self.period.as_str())
        } else {
            format!("{}/{}/{}", self.rate, self.period.as_str(), self.burst)
        }
    }
}

/// What a check decided, in the terms of the `RateLimit-*` headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    /// Whether the request may go on.
    pub admitted: bool,
    /// The quota the headers report: the burst of the limit that decided.
    pub limit: u64,
    /// Requests that could still be made at once, after this one.
    pub remaining: u64,
    /// Time until the quota is whole again.
    pub reset: Duration,
    /// When refused, the time until one request would be admitted; zero otherwise.
    pub retry_after: Duration,
}

impl Verdict {
    /// The verdict when there is nothing to check: admitted, nothing reported.
    pub const UNLIMITED: Verdict = Verdict {
        admitted: true,
        limit: 0,
        remaining: 0,
        reset: Duration::ZERO,
        retry_after: Duration::ZERO,
    };

    /// The verdict of several limits checked together: refused if any refuses; the
    /// reported limit is the refusing one with the longest wait, or, when all admit, the
    /// one with the fewest requests left (the one a client runs into first).
    pub fn combine(verdicts: &[Verdict]) -> Option<Verdict> {
        let refused = verdicts
            .iter()
            .filter(|v| !v.admitted)
            .max_by_key(|v| v.retry_after);
        refused.copied().or_else(|| {
            verdicts
                .iter()
                .min_by(|a, b| a.remaining.cmp(&b.remaining).then(b.reset.cmp(&a.reset)))
                .copied()
        })
    }

    /// `Retry-After` in whole seconds, rounded up (at least 1 when refused).
    pub fn retry_after_secs(&self) -> u64 {
        if self.admitted {
            0
        } else {
            ceil_secs(self.retry_after).max(1)
        }
    }

    /// `RateLimit-Reset` in whole seconds, rounded up.
    pub fn reset_secs(&self) -> u64 {
        ceil_secs(self.reset)
    }
}

fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_validate_their_numbers() {
        assert!(Limit::new(0, Period::Second, None).is_err());
        assert!(Limit::new(10, Period::Second, Some(0)).is_err());
        assert!(Limit::new(MAX_COUNT + 1, Period::Second, None).is_err());
        let l = Limit::new(10, Period::Second, None).unwrap();
        assert_eq!(l.burst, 10);
        assert_eq!(l.emission_ns(), 100_000_000);
        assert_eq!(l.tolerance_ns(), 1_000_000_000);
        assert_eq!(l.describe(), "10/second");
        let day = Limit::new(1, Period::Day, Some(MAX_COUNT)).unwrap();
        assert_eq!(day.emission_ns(), 86_400_000_000_000);
        assert_eq!(
            day.tolerance_ns(),
            u64::MAX,
            "saturates instead of wrapping"
        );
        assert_eq!(
            Limit::new(3, Period::Minute, Some(5)).unwrap().describe(),
            "3/minute/5"
        );
    }

    #[test]
    fn periods_parse_long_and_short_names() {
        for (text, p) in [
            ("second", Period::Second),
            ("s", Period::Second),
            ("minute", Period::Minute),
            ("m", Period::Minute),
            ("hour", Period::Hour),
            ("day", Period::Day),
        ] {
            assert_eq!(Period::parse(text), Some(p));
        }
        assert_eq!(Period::parse("week"), None);
    }

    fn v(admitted: bool, remaining: u64, reset_ms: u64, retry_ms: u64) -> Verdict {
        Verdict {
            admitted,
            limit: 10,
            remaining,
            reset: Duration::from_millis(reset_ms),
            retry_after: Duration::from_millis(retry_ms),
        }
    }

    #[test]
    fn combined_verdicts_report_the_limit_that_binds() {
        assert_eq!(Verdict::combine(&[]), None);
        let all_in = [v(true, 5, 100, 0), v(true, 2, 3000, 0), v(true, 2, 50, 0)];
        assert_eq!(Verdict::combine(&all_in), Some(all_in[1]));
        let one_out = [
            v(true, 5, 100, 0),
            v(false, 0, 900, 400),
            v(false, 0, 99, 20),
        ];
        assert_eq!(Verdict::combine(&one_out), Some(one_out[1]));
    }

    #[test]
    fn header_seconds_round_up() {
        assert_eq!(v(false, 0, 0, 1).retry_after_secs(), 1);
        assert_eq!(v(false, 0, 0, 1000).retry_after_secs(), 1);
        assert_eq!(v(false, 0, 0, 1001).retry_after_secs(), 2);
        assert_eq!(v(true, 0, 0, 0).retry_after_secs(), 0);
        assert_eq!(v(true, 0, 0, 0).reset_secs(), 0);
        assert_eq!(v(true, 0, 1, 0).reset_secs(), 1);
    }
}
