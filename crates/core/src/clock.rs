//! A coarse per-thread clock. Reading the system clock costs a system call on some virtual
//! machines (no vDSO clocksource), and a request used to read it about ten times. Timeouts
//! (keep-alive, header, upstream read, pool idle) do not need better than [`TICK`]
//! precision, so they use [`coarse_now`], which a worker refreshes every tick. Request
//! durations (metrics, logs) still read the real clock.
//!
//! The ticker also keeps the `Date` header value of the current second, which every HTTP/1.1
//! response carries (RFC 9110 §6.6.1), so responses copy 29 bytes instead of formatting it.

use std::cell::{Cell, RefCell};
use std::time::Duration;

use tokio::time::Instant;

/// How often a worker refreshes its coarse clock (the precision of timeouts).
pub const TICK: Duration = Duration::from_millis(20);

/// Length of an IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`).
const DATE_LEN: usize = 29;

thread_local! {
    static NOW: Cell<Option<Instant>> = const { Cell::new(None) };
    /// A wall-clock reading and the monotonic instant it was taken at, refreshed by the
    /// ticker: wall times are derived from monotonic readings without another clock read.
    static WALL: Cell<Option<(std::time::SystemTime, std::time::Instant)>> = const { Cell::new(None) };
    /// The Unix second and its IMF-fixdate, refreshed by the ticker.
    static DATE: RefCell<Option<(u64, [u8; DATE_LEN])>> = const { RefCell::new(None) };
}

/// Appends the current time as an HTTP date (at most [`TICK`] old on worker threads).
pub fn write_http_date(out: &mut Vec<u8>) {
    let cached = DATE.with(|d| {
        d.borrow().as_ref().map(|(_, text)| {
            out.extend_from_slice(text);
        })
    });
    if cached.is_none() {
        out.extend_from_slice(httpdate::fmt_http_date(std::time::SystemTime::now()).as_bytes());
    }
}

fn refresh_date() {
    let now = std::time::SystemTime::now();
    let secs = now
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    DATE.with(|d| {
        let mut d = d.borrow_mut();
        if d.as_ref().is_some_and(|(s, _)| *s == secs) {
            return;
        }
        let text = httpdate::fmt_http_date(now);
        let mut bytes = [b' '; DATE_LEN];
        let n = text.len().min(DATE_LEN);
        bytes[..n].copy_from_slice(&text.as_bytes()[..n]);
        *d = Some((secs, bytes));
    });
}

/// The wall-clock time at monotonic instant `at` (within a clock tick's drift of a real
/// reading on worker threads; a real reading elsewhere).
pub fn wall_at(at: std::time::Instant) -> std::time::SystemTime {
    match WALL.with(Cell::get) {
        Some((wall, base)) if at >= base => wall + (at - base),
        Some((wall, base)) => wall - (base - at),
        None => std::time::SystemTime::now(),
    }
}

/// Whether this thread runs a ticker (a worker thread).
pub fn ticking() -> bool {
    NOW.with(|c| c.get().is_some())
}

/// The current time, at most [`TICK`] old on worker threads (exact elsewhere).
pub fn coarse_now() -> Instant {
    NOW.with(|c| c.get()).unwrap_or_else(Instant::now)
}

/// Keeps this thread's coarse clock fresh, fires its due deadlines ([`crate::deadline`])
/// and calls `on_tick` after each tick and once when the ticker stops (the worker writes
/// its queued access-log lines there); runs for the life of the worker.
pub async fn run_ticker(on_tick: fn()) {
    let _sweeping = crate::deadline::SweepGuard::new();
    let _ticking = Ticking(on_tick);
    let mut interval = tokio::time::interval(TICK);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let now = interval.tick().await;
        // `tick` returns the scheduled instant; the real one is what timeouts need.
        let _ = now;
        let now = Instant::now();
        NOW.with(|c| c.set(Some(now)));
        WALL.with(|c| c.set(Some((std::time::SystemTime::now(), now.into_std()))));
        refresh_date();
        crate::deadline::sweep(now);
        on_tick();
    }
}

/// Clears the coarse clock when the ticker stops, so a stopped ticker never leaves a stale
/// clock behind (reads fall back to the real clock).
struct Ticking(fn());

impl Drop for Ticking {
    fn drop(&mut self) {
        let _ = NOW.try_with(|c| c.set(None));
        let _ = WALL.try_with(|c| c.set(None));
        let _ = DATE.try_with(|d| d.borrow_mut().take());
        // Work queued for the next tick (access-log lines) is done now.
        (self.0)();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn falls_back_to_the_real_clock_off_worker_threads() {
        let before = Instant::now();
        assert!(coarse_now() >= before);
    }

    #[test]
    fn writes_the_date_as_an_imf_fixdate() {
        let mut out = Vec::new();
        write_http_date(&mut out);
        refresh_date();
        write_http_date(&mut out);
        let text = String::from_utf8(out).unwrap();
        assert_eq!(text.len(), 2 * DATE_LEN, "{text}");
        assert!(text.ends_with(" GMT"), "{text}");
        assert!(
            httpdate::parse_http_date(&text[DATE_LEN..]).is_ok(),
            "{text}"
        );
    }

    #[test]
    fn derives_wall_times_from_monotonic_readings() {
        let base = std::time::Instant::now();
        let wall = std::time::SystemTime::now();
        WALL.with(|c| c.set(Some((wall, base))));
        let later = base + Duration::from_millis(1500);
        assert_eq!(wall_at(later), wall + Duration::from_millis(1500));
        let earlier = base.checked_sub(Duration::from_millis(10)).unwrap_or(base);
        assert_eq!(wall_at(earlier), wall - (base - earlier));
        WALL.with(|c| c.set(None));
        assert!(wall_at(std::time::Instant::now()) >= wall);
    }
}
