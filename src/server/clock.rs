//! A coarse per-thread clock. Reading the system clock costs a system call on some virtual
//! machines (no vDSO clocksource), and a request used to read it about ten times. Timeouts
//! (keep-alive, header, upstream read, pool idle) do not need better than [`TICK`]
//! precision, so they use [`coarse_now`], which a worker refreshes every tick. Request
//! durations (metrics, logs) still read the real clock.

use std::cell::Cell;
use std::time::Duration;

use tokio::time::Instant;

/// How often a worker refreshes its coarse clock (the precision of timeouts).
pub const TICK: Duration = Duration::from_millis(20);

thread_local! {
    static NOW: Cell<Option<Instant>> = const { Cell::new(None) };
}

/// The current time, at most [`TICK`] old on worker threads (exact elsewhere).
pub fn coarse_now() -> Instant {
    NOW.with(|c| c.get()).unwrap_or_else(Instant::now)
}

/// Keeps this thread's coarse clock fresh and fires its due deadlines
/// ([`super::deadline`]); runs for the life of the worker.
pub async fn run_ticker() {
    let _sweeping = super::deadline::SweepGuard::new();
    let _ticking = Ticking;
    let mut interval = tokio::time::interval(TICK);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let now = interval.tick().await;
        // `tick` returns the scheduled instant; the real one is what timeouts need.
        let _ = now;
        let now = Instant::now();
        NOW.with(|c| c.set(Some(now)));
        super::deadline::sweep(now);
    }
}

/// Clears the coarse clock when the ticker stops, so a stopped ticker never leaves a stale
/// clock behind (reads fall back to the real clock).
struct Ticking;

impl Drop for Ticking {
    fn drop(&mut self) {
        let _ = NOW.try_with(|c| c.set(None));
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
}
