//! GCRA, the one decision both stores make. Times are nanoseconds on any clock that only
//! moves forward; the stored state is the key's theoretical arrival time (TAT), 0 for a
//! key never seen.
//!
//! With emission interval `e = period / rate` and tolerance `τ = burst · e`, a request at
//! `now` moves the TAT to `max(TAT, now) + e` and is admitted when that is at most `τ`
//! ahead of `now`. A refused request changes nothing. The Redis script
//! (`redis/gcra.lua`) is the same arithmetic in microseconds.

use std::time::Duration;

use super::{Limit, Verdict};

/// A limit's numbers in the form the decision uses, computed once per limit (the
/// emission interval is a 128-bit division).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rates {
    /// `period / rate`, in nanoseconds.
    pub emission: u64,
    /// `burst · emission`, in nanoseconds.
    pub tolerance: u64,
    /// The burst, as the headers report it.
    pub burst: u64,
}

impl From<&Limit> for Rates {
    fn from(l: &Limit) -> Rates {
        Rates {
            emission: l.emission_ns(),
            tolerance: l.tolerance_ns(),
            burst: l.burst,
        }
    }
}

/// What one limit decided for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    /// The TAT to store when admitted; `None` when refused (nothing changes).
    pub new_tat: Option<u64>,
    /// The answer in header terms.
    pub verdict: Verdict,
}

/// Decides a request at `now` against a limit for a key whose TAT is `tat`.
pub fn decide(tat: u64, now: u64, rates: &Rates) -> Outcome {
    let Rates {
        emission,
        tolerance,
        burst,
    } = *rates;
    let base = tat.max(now);
    let next = base.saturating_add(emission);
    let ahead = next - now;
    if ahead > tolerance {
        return Outcome {
            new_tat: None,
            verdict: Verdict {
                admitted: false,
                limit: burst,
                remaining: 0,
                reset: Duration::from_nanos(base - now),
                retry_after: Duration::from_nanos(ahead - tolerance),
            },
        };
    }
    Outcome {
        new_tat: Some(next),
        verdict: Verdict {
            admitted: true,
            limit: burst,
            remaining: (tolerance - ahead) / emission,
            reset: Duration::from_nanos(ahead),
            retry_after: Duration::ZERO,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Period;
    use proptest::prelude::*;

    const SEC: u64 = 1_000_000_000;

    fn limit(rate: u64, period: Period, burst: u64) -> Limit {
        Limit::new(rate, period, Some(burst)).unwrap()
    }

    /// Runs requests at `times` through one key; returns how many were admitted.
    fn admitted(limit: &Limit, times: impl IntoIterator<Item = u64>) -> u64 {
        let mut tat = 0;
        let mut n = 0;
        for now in times {
            let o = decide(tat, now, &limit.into());
            if let Some(t) = o.new_tat {
                tat = t;
                n += 1;
            }
        }
        n
    }

    #[test]
    fn a_burst_then_the_rate() {
        let l = limit(10, Period::Second, 10);
        let now = 5 * SEC;
        let mut tat = 0;
        for i in 0..10 {
            let o = decide(tat, now, &(&l).into());
            assert!(o.verdict.admitted, "request {i} of the burst");
            assert_eq!(o.verdict.remaining, 9 - i);
            tat = o.new_tat.unwrap();
        }
        let refused = decide(tat, now, &(&l).into());
        assert_eq!(refused.new_tat, None);
        assert!(!refused.verdict.admitted);
        assert_eq!(refused.verdict.retry_after, Duration::from_millis(100));
        assert_eq!(refused.verdict.reset, Duration::from_secs(1));
        // One emission interval later, one more.
        let later = decide(tat, now + SEC / 10, &(&l).into());
        assert!(later.verdict.admitted);
        assert_eq!(later.verdict.remaining, 0);
    }

    #[test]
    fn a_key_left_alone_is_whole_again() {
        let l = limit(5, Period::Minute, 5);
        let mut tat = 0;
        for _ in 0..5 {
            tat = decide(tat, 0, &(&l).into()).new_tat.unwrap();
        }
        assert!(!decide(tat, 0, &(&l).into()).verdict.admitted);
        let o = decide(tat, 60 * SEC, &(&l).into());
        assert!(o.verdict.admitted);
        assert_eq!(o.verdict.remaining, 4);
    }

    #[test]
    fn a_burst_smaller_than_the_rate_spaces_requests() {
        let l = limit(100, Period::Second, 1);
        assert_eq!(admitted(&l, [0, 0, 0]), 1);
        assert_eq!(admitted(&l, (0..100).map(|i| i * SEC / 100)), 100);
    }

    #[test]
    fn offered_ten_times_the_rate_admits_the_rate_plus_the_burst() {
        let l = limit(100, Period::Second, 100);
        // 1,000 req/s for 30 s, evenly spaced: the last one at 29.999 s.
        let n = admitted(&l, (0..30_000).map(|i| i * SEC / 1000));
        assert_eq!(
            n,
            100 + 2_999,
            "one burst, then one every 10 ms after the first"
        );
    }

    proptest! {
        /// Over any span, no schedule of requests gets more than `burst + rate · span`.
        #[test]
        fn never_more_than_the_burst_plus_the_rate(
            rate in 1u64..1000,
            burst in 1u64..100,
            gaps in proptest::collection::vec(0u64..50_000_000, 1..400),
        ) {
            let l = limit(rate, Period::Second, burst);
            let mut now = 0;
            let times: Vec<u64> = gaps.iter().map(|g| { now += g; now }).collect();
            let span = times.last().copied().unwrap_or(0) - times[0];
            let n = admitted(&l, times);
            let bound = burst + (u128::from(rate) * u128::from(span) / u128::from(SEC)) as u64;
            prop_assert!(n <= bound, "{n} admitted, bound {bound}");
        }

        /// The remaining count never exceeds the burst, and a refusal always says when to
        /// come back.
        #[test]
        fn verdicts_are_consistent(
            rate in 1u64..10_000,
            burst in 1u64..1000,
            tat in 0u64..10 * SEC,
            now in 0u64..10 * SEC,
        ) {
            let l = limit(rate, Period::Second, burst);
            let o = decide(tat, now, &(&l).into());
            prop_assert!(o.verdict.remaining < burst);
            prop_assert_eq!(o.verdict.admitted, o.new_tat.is_some());
            if !o.verdict.admitted {
                prop_assert!(o.verdict.retry_after > Duration::ZERO);
                let later = now + o.verdict.retry_after.as_nanos() as u64;
                prop_assert!(decide(tat, later, &(&l).into()).verdict.admitted);
            }
        }
    }
}
