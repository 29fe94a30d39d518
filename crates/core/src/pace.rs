//! Pacing of background work that shares CPUs with the workers.
//!
//! Building a snapshot of a large configuration, writing the cluster copy or freeing a
//! replaced routing table takes milliseconds of CPU. The kernel lets a running thread
//! go on for its time slice (milliseconds) before a worker woken by a request gets the
//! CPU, whatever the two threads' nice values: with a cluster change building at nice +10
//! on the worker's CPU, the worker still waited up to 2.5 ms for it (a scheduler trace,
//! Linux 6.18). A thread marked [`background`] pauses at its [`point`]s once it used
//! [`SLICE`] of CPU time since it last did, so a waiting worker runs within about a
//! slice. It pauses by sleeping: offering the CPU with `sched_yield` instead (at nice 0
//! or +10) stalled a three-node cluster sharing one CPU for seconds now and then, every
//! node's store queries unanswered at once; with the sleep, and without pacing, it did
//! not. The thread keeps the workers' priority.
//!
//! Points sit in the loops of that work (one per route, entity or table entry); on any
//! other thread (the workers, tests, `sluicegate check`) a point only reads a
//! thread-local.

use std::cell::Cell;
use std::time::{Duration, Instant};

use rustix::time::{clock_gettime, ClockId};

/// How much CPU time a background thread uses between two pauses.
pub const SLICE: Duration = Duration::from_micros(200);

/// How long a background thread sleeps at a pause; the timer's slack makes it about
/// 70 µs: a 5 ms build, 25 slices, ends under 2 ms later.
const PAUSE: Duration = Duration::from_micros(20);

/// Points between two reads of the clock: a point is a few instructions, a clock read
/// some tens of nanoseconds (a point's unit of work, one route built, microseconds).
const CLOCK_EVERY: u32 = 16;

/// A background thread's pacing state.
#[derive(Clone, Copy)]
struct Paced {
    /// The thread's CPU time when it last paused (or was marked): time spent
    /// blocked or waiting for the CPU does not count.
    cpu: Duration,
    /// When the CPU time was last read. The CPU clock is a system call; it is read only
    /// once a slice passed on this clock (the vDSO's, much cheaper), which bounds it.
    read: Instant,
}

/// The calling thread's CPU time.
fn cpu_time() -> Duration {
    let t = clock_gettime(ClockId::ThreadCPUTime);
    Duration::new(
        u64::try_from(t.tv_sec).unwrap_or(0),
        u32::try_from(t.tv_nsec).unwrap_or(0),
    )
}

thread_local! {
    static PACED: Cell<Option<Paced>> = const { Cell::new(None) };
    /// Points until the next clock read on a background thread; on any other thread it
    /// only counts down from `u32::MAX`, and a point costs a decrement.
    static COUNTDOWN: Cell<u32> = const { Cell::new(u32::MAX) };
}

/// Marks the calling thread as background work: its [`point`]s pace it from now on.
pub fn background() {
    PACED.set(Some(Paced {
        cpu: cpu_time(),
        read: Instant::now(),
    }));
    COUNTDOWN.set(CLOCK_EVERY);
}

/// A point in a loop of background work: on a [`background`] thread that used a
/// [`SLICE`] of CPU since its last pause, pauses ([`PAUSE`]); elsewhere nothing.
#[inline]
pub fn point() {
    let n = COUNTDOWN.get();
    if n > 1 {
        COUNTDOWN.set(n - 1);
    } else {
        tick();
    }
}

#[inline(never)]
fn tick() {
    let Some(mut p) = PACED.get() else {
        COUNTDOWN.set(u32::MAX);
        return;
    };
    COUNTDOWN.set(CLOCK_EVERY);
    let now = Instant::now();
    if now.duration_since(p.read) >= SLICE {
        // A slice passed; the CPU time tells whether this thread used it.
        let cpu = cpu_time();
        if cpu.saturating_sub(p.cpu) >= SLICE {
            std::thread::sleep(PAUSE);
            p.cpu = cpu_time();
        }
        p.read = Instant::now();
        PACED.set(Some(p));
    }
}

/// Drops `items` one by one with a [`point`] after each: freeing a large table is as much
/// background work as building it.
pub fn drop_paced<T>(items: impl IntoIterator<Item = T>) {
    for item in items {
        drop(item);
        point();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_background_thread_is_paced() {
        std::thread::spawn(|| {
            point();
            assert!(PACED.get().is_none(), "a thread is not paced until marked");
            background();
            assert!(PACED.get().is_some());
            let marked = PACED.get().map(|p| p.cpu);
            // Sleeping uses no CPU time: no pause.
            std::thread::sleep(SLICE * 2);
            for _ in 0..CLOCK_EVERY {
                point();
            }
            assert_eq!(PACED.get().map(|p| p.cpu), marked);
            // Past a slice of CPU, the clock read after CLOCK_EVERY points pauses and
            // restarts the slice.
            let until = cpu_time() + SLICE * 2;
            while cpu_time() < until {
                std::hint::spin_loop();
            }
            for _ in 0..CLOCK_EVERY {
                point();
            }
            let after = PACED.get().map(|p| p.cpu);
            assert!(after > marked, "the slice restarts after a pause");
            // Within a slice, points only count down.
            let before = PACED.get().map(|p| (p.cpu, p.read));
            for _ in 0..CLOCK_EVERY - 1 {
                point();
            }
            assert_eq!(PACED.get().map(|p| (p.cpu, p.read)), before);
            assert_eq!(COUNTDOWN.get(), 1);
        })
        .join()
        .unwrap_or_else(|e| std::panic::resume_unwind(e));
    }
}
