//! When and how often a delivery is tried again: status sets (`429`, `"5xx"`), the retry
//! policy (exponential backoff with jitter, `Retry-After`, attempt and age limits) and the
//! classification of one attempt's result into delivered / retry / dead letter.
//!
//! Classification order: 2xx is delivered; a status in `retry.on_status` is retried; a
//! status in `dead_letter_on` goes straight to the dead letters; any other status is
//! retried (never drop what might succeed later). Connection errors and timeouts are always
//! retried. A retry that would be attempt number `max_attempts + 1`, or whose message is
//! older than `max_age`, becomes a dead letter with the last error instead.

use std::time::{Duration, SystemTime};

/// A `Retry-After` longer than this is cut to it, so one upstream answer cannot park a
/// message for days (the message's `max_age` still applies).
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// A set of HTTP status codes, written as codes (`429`) and classes (`"5xx"`).
#[derive(Clone, PartialEq, Eq)]
pub struct StatusSet {
    bits: [u64; 10],
}

impl std::fmt::Debug for StatusSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set()
            .entries((100..600u16).filter(|c| self.contains(*c)))
            .finish()
    }
}

impl StatusSet {
    /// The empty set.
    pub fn empty() -> Self {
        StatusSet { bits: [0; 10] }
    }

    /// Adds one code (100..=599; others are ignored).
    pub fn insert(&mut self, code: u16) {
        if (100..600).contains(&code) {
            self.bits[usize::from(code / 64)] |= 1 << (code % 64);
        }
    }

    /// Adds a class: `4` adds 400..=499 (classes other than 1 to 5 are ignored).
    pub fn insert_class(&mut self, class: u16) {
        if !(1..=5).contains(&class) {
            return;
        }
        for code in class * 100..class * 100 + 100 {
            self.insert(code);
        }
    }

    /// Parses one pattern: a code (`"429"`) or a class (`"5xx"`).
    pub fn insert_pattern(&mut self, pattern: &str) -> Result<(), String> {
        let p = pattern.trim().to_ascii_lowercase();
        if let Some(class) = p.strip_suffix("xx") {
            match class.parse::<u16>() {
                Ok(c) if (1..=5).contains(&c) => {
                    self.insert_class(c);
                    Ok(())
                }
                _ => Err(format!("`{pattern}` is not a status class (1xx to 5xx)")),
            }
        } else {
            match p.parse::<u16>() {
                Ok(c) if (100..600).contains(&c) => {
                    self.insert(c);
                    Ok(())
                }
                _ => Err(format!(
                    "`{pattern}` is not a status code (100 to 599) or class (`5xx`)"
                )),
            }
        }
    }

    /// Whether `code` is in the set.
    pub fn contains(&self, code: u16) -> bool {
        code < 640 && self.bits[usize::from(code / 64)] & (1 << (code % 64)) != 0
    }

    /// The set as compact patterns, for status output (`["429", "5xx"]`).
    pub fn patterns(&self) -> Vec<String> {
        let mut out = Vec::new();
        for class in 1..=5u16 {
            let codes: Vec<u16> = (class * 100..class * 100 + 100)
                .filter(|c| self.contains(*c))
                .collect();
            if codes.len() == 100 {
                out.push(format!("{class}xx"));
            } else {
                out.extend(codes.iter().map(u16::to_string));
            }
        }
        out
    }
}

/// Defaults of the retry policy (documented in docs/queue.md).
pub mod defaults {
    /// First retry after about this long.
    pub const INITIAL_BACKOFF_MS: u64 = 500;
    /// Backoff never grows past this (a `Retry-After` may ask for longer).
    pub const MAX_BACKOFF_MS: u64 = 60_000;
    /// Each retry waits this many times longer than the one before.
    pub const MULTIPLIER: f64 = 2.0;
    /// Attempts before a message becomes a dead letter. With the defaults above the 14
    /// waits add up to 0.5 + 1 + 2 + ... + 32 + 7 × 60 s: about 8 minutes of trying.
    pub const MAX_ATTEMPTS: u32 = 15;
    /// One day: older messages that fail become dead letters.
    pub const MAX_AGE_MS: u64 = 24 * 3600 * 1000;
}

/// A validated retry policy.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// Statuses that are retried.
    pub on_status: StatusSet,
    /// Statuses (not in `on_status`) that go straight to the dead letters.
    pub dead_letter_on: StatusSet,
    /// Backoff before the first retry.
    pub initial_backoff: Duration,
    /// Largest computed backoff.
    pub max_backoff: Duration,
    /// Growth factor per retry (>= 1).
    pub multiplier: f64,
    /// Attempts in total, the first one included (>= 1).
    pub max_attempts: u32,
    /// Messages older than this are not retried (`None`: no limit).
    pub max_age: Option<Duration>,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        let mut on_status = StatusSet::empty();
        on_status.insert(429);
        on_status.insert_class(5);
        let mut dead_letter_on = StatusSet::empty();
        dead_letter_on.insert_class(4);
        RetryPolicy {
            on_status,
            dead_letter_on,
            initial_backoff: Duration::from_millis(defaults::INITIAL_BACKOFF_MS),
            max_backoff: Duration::from_millis(defaults::MAX_BACKOFF_MS),
            multiplier: defaults::MULTIPLIER,
            max_attempts: defaults::MAX_ATTEMPTS,
            max_age: Some(Duration::from_millis(defaults::MAX_AGE_MS)),
        }
    }
}

/// What one delivery attempt amounted to.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// 2xx: done.
    Delivered,
    /// Try again (after at least `retry_after`, when the upstream said so).
    Retry {
        /// The error, for the log and an eventual dead letter.
        reason: String,
        /// The upstream's `Retry-After`, if any.
        retry_after: Option<Duration>,
    },
    /// Never going to work: dead letter now.
    Dead {
        /// The error.
        reason: String,
    },
}

impl RetryPolicy {
    /// Classifies an answer with `status`; `detail` describes it for the reason text.
    pub fn classify(&self, status: u16, detail: &str, retry_after: Option<Duration>) -> Verdict {
        if (200..300).contains(&status) {
            return Verdict::Delivered;
        }
        let reason = if detail.is_empty() {
            format!("upstream answered {status}")
        } else {
            format!("upstream answered {status}: {detail}")
        };
        if !self.on_status.contains(status) && self.dead_letter_on.contains(status) {
            return Verdict::Dead { reason };
        }
        Verdict::Retry {
            reason,
            retry_after,
        }
    }

    /// The backoff after failed attempt number `attempt` (1-based), before jitter.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let exp = i32::try_from(attempt.saturating_sub(1))
            .unwrap_or(i32::MAX)
            .min(1000);
        let secs = self.initial_backoff.as_secs_f64() * self.multiplier.max(1.0).powi(exp);
        let max = self.max_backoff.as_secs_f64();
        Duration::from_secs_f64(if secs.is_finite() { secs.min(max) } else { max })
    }

    /// The wait before the next attempt: the backoff with "equal jitter" (uniformly between
    /// half and all of it, so retries of many messages spread out but never come sooner than
    /// half the backoff), and at least the upstream's `Retry-After` (capped).
    pub fn delay(
        &self,
        attempt: u32,
        retry_after: Option<Duration>,
        jitter: &mut Jitter,
    ) -> Duration {
        let base = self.backoff(attempt);
        let half = base / 2;
        let jittered = half + half.mul_f64(jitter.unit());
        match retry_after {
            Some(ra) => jittered.max(ra.min(MAX_RETRY_AFTER)),
            None => jittered,
        }
    }

    /// Whether a message that failed attempt `attempt` and was appended at `appended_at_ms`
    /// has run out of attempts or age; returns why.
    pub fn exhausted(&self, attempt: u32, appended_at_ms: u64, now_ms: u64) -> Option<String> {
        if attempt >= self.max_attempts {
            return Some(format!("gave up after {attempt} attempts"));
        }
        if let Some(max_age) = self.max_age {
            let age = Duration::from_millis(now_ms.saturating_sub(appended_at_ms));
            if age >= max_age {
                return Some(format!("gave up after {} ms (max_age)", age.as_millis()));
            }
        }
        None
    }
}

/// Parses a `Retry-After` value: delay-seconds or an HTTP date.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let v = value.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let when = httpdate::parse_http_date(v).ok()?;
    Some(when.duration_since(now).unwrap_or(Duration::ZERO))
}

/// A small xorshift generator for jitter: not for secrets, just to spread retries.
#[derive(Debug, Clone)]
pub struct Jitter(u64);

impl Jitter {
    /// A generator seeded from the clock and `salt`.
    pub fn new(salt: u64) -> Self {
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        Jitter((nanos ^ salt.rotate_left(32)) | 1)
    }

    /// A number in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn status_sets_take_codes_and_classes() {
        let mut s = StatusSet::empty();
        s.insert_pattern("429").unwrap();
        s.insert_pattern("5xx").unwrap();
        assert!(s.contains(429) && s.contains(500) && s.contains(599));
        assert!(!s.contains(404) && !s.contains(200));
        assert_eq!(s.patterns(), vec!["429", "5xx"]);
        assert!(s.insert_pattern("6xx").is_err());
        assert!(s.insert_pattern("99").is_err());
        assert!(s.insert_pattern("abc").is_err());
    }

    #[test]
    fn classifies_by_the_default_policy() {
        let p = RetryPolicy::default();
        assert_eq!(p.classify(204, "", None), Verdict::Delivered);
        assert!(matches!(p.classify(500, "", None), Verdict::Retry { .. }));
        assert!(matches!(p.classify(429, "", None), Verdict::Retry { .. }));
        assert!(
            matches!(p.classify(400, "bad", None), Verdict::Dead { reason } if reason.contains("400"))
        );
        // Neither list: retried, never dropped.
        assert!(matches!(p.classify(302, "", None), Verdict::Retry { .. }));
    }

    #[test]
    fn backoff_grows_by_the_multiplier_up_to_the_cap() {
        let p = RetryPolicy {
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(1000),
            multiplier: 2.0,
            ..RetryPolicy::default()
        };
        assert_eq!(p.backoff(1), Duration::from_millis(100));
        assert_eq!(p.backoff(2), Duration::from_millis(200));
        assert_eq!(p.backoff(4), Duration::from_millis(800));
        assert_eq!(p.backoff(5), Duration::from_millis(1000));
        assert_eq!(p.backoff(u32::MAX), Duration::from_millis(1000));
    }

    #[test]
    fn jittered_delays_stay_between_half_and_all_of_the_backoff_unless_retry_after_says_more() {
        let p = RetryPolicy {
            initial_backoff: Duration::from_millis(100),
            ..RetryPolicy::default()
        };
        let mut j = Jitter::new(7);
        for _ in 0..1000 {
            let d = p.delay(1, None, &mut j);
            assert!(
                d >= Duration::from_millis(50) && d <= Duration::from_millis(100),
                "{d:?}"
            );
        }
        assert_eq!(
            p.delay(1, Some(Duration::from_secs(3)), &mut j),
            Duration::from_secs(3)
        );
        assert_eq!(
            p.delay(1, Some(Duration::from_secs(1 << 40)), &mut j),
            MAX_RETRY_AFTER
        );
    }

    #[test]
    fn gives_up_on_attempts_or_age() {
        let p = RetryPolicy {
            max_attempts: 3,
            max_age: Some(Duration::from_secs(10)),
            ..RetryPolicy::default()
        };
        assert!(p.exhausted(2, 1_000, 2_000).is_none());
        assert!(p.exhausted(3, 1_000, 2_000).unwrap().contains("3 attempts"));
        assert!(p.exhausted(1, 1_000, 11_000).unwrap().contains("max_age"));
    }

    #[test]
    fn parses_retry_after_seconds_and_dates() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(parse_retry_after("5", now), Some(Duration::from_secs(5)));
        let later = httpdate::fmt_http_date(now + Duration::from_secs(30));
        assert_eq!(
            parse_retry_after(&later, now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(parse_retry_after("soon", now), None);
    }
}
