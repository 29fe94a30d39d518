//! The CPU budget of script calls.
//!
//! Every thread that runs Lua owns one [`BudgetState`] (a deadline and a "tripped" flag). A
//! call arms the deadline ([`arm`]) for as long as Lua code runs on the CPU: async calls
//! re-arm on every poll with what is left, so time spent awaiting I/O does not count. One
//! process-wide watchdog thread wakes at least every 20 ms, and at the deadline of any call
//! it sees running, and trips the flag of every thread whose deadline has passed. Luau calls the VM's interrupt callback at every loop
//! back-edge, call and pattern-matcher step; the callback ([`interrupt`]) only loads the flag
//! and, once the deadline really has passed, raises an error. Because it raises at *every*
//! interrupt from then on, `pcall` cannot swallow it: the next back-edge outside the pcall
//! raises again. The same callback stops a call whose heap passed its soft limit; it reads
//! the heap size at the first safepoint after each collection step (allocation drives
//! those) and every few safepoints otherwise, since reading it is most of the callback's
//! cost.
//!
//! Invariants: the flag is only ever a hint; the callback re-checks the deadline against the
//! clock before raising, so a flag left over from an earlier call never stops a later one.
//! The callback is the only `unsafe` code of the crate (a raw Luau callback: mlua's
//! closure-based `set_interrupt` costs about 5× more on tight loops, see LUA.md).

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, Weak};
use std::time::{Duration, Instant};

/// No deadline armed.
const NONE: u64 = u64::MAX;

/// The message of the error raised when a call runs out of CPU time. `vm.rs` recognises
/// over-budget failures by it.
pub const OVER_BUDGET: &str = "CPU budget exceeded";

/// The message of the error raised when the VM's heap passes its soft memory limit.
pub const OVER_MEMORY: &str = "memory limit reached";

/// Longest the watchdog sleeps. A call seen running when it wakes is watched until its own
/// deadline, so a runaway call is stopped within about a millisecond of its deadline when
/// the budget is longer than this, and within this much otherwise. Each wake-up costs a
/// context switch on a worker's core (expensive in VMs), so it is not shorter.
const TICK: Duration = Duration::from_millis(20);
/// Shortest sleep, so a deadline just passed does not make the watchdog spin.
const MIN_SLEEP: Duration = Duration::from_micros(500);

/// Per-thread budget state, shared with the watchdog.
#[derive(Debug)]
pub struct BudgetState {
    /// Nanoseconds since [`epoch`] after which the running call must stop; [`NONE`] if idle.
    deadline: AtomicU64,
    /// Set by the watchdog once `deadline` has passed.
    tripped: AtomicBool,
}

impl BudgetState {
    fn new() -> Self {
        BudgetState {
            deadline: AtomicU64::new(NONE),
            tripped: AtomicBool::new(false),
        }
    }

    /// Whether the armed deadline has passed (checked against the clock).
    fn over(&self) -> bool {
        self.tripped.load(Ordering::Relaxed) && {
            let over = now_ns() >= self.deadline.load(Ordering::Relaxed);
            if !over {
                self.tripped.store(false, Ordering::Relaxed);
            }
            over
        }
    }
}

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn now_ns() -> u64 {
    u64::try_from(epoch().elapsed().as_nanos()).unwrap_or(NONE - 1)
}

fn registry() -> &'static Mutex<Vec<Weak<BudgetState>>> {
    static REGISTRY: OnceLock<Mutex<Vec<Weak<BudgetState>>>> = OnceLock::new();
    REGISTRY.get_or_init(|| {
        let spawned = std::thread::Builder::new()
            .name("sluicegate-lua-watchdog".into())
            .spawn(watchdog);
        if let Err(e) = spawned {
            tracing::error!(error = %e, "Cannot start the Lua watchdog; CPU budgets are not enforced.");
        }
        Mutex::new(Vec::new())
    })
}

fn watchdog() {
    loop {
        let now = now_ns();
        let mut next = now.saturating_add(TICK.as_nanos() as u64);
        let mut states = registry().lock().unwrap_or_else(PoisonError::into_inner);
        states.retain(|w| match w.upgrade() {
            Some(s) => {
                let deadline = s.deadline.load(Ordering::Relaxed);
                if deadline <= now {
                    s.tripped.store(true, Ordering::Relaxed);
                } else if deadline != NONE {
                    // A call is running: wake up at its deadline.
                    next = next.min(deadline);
                }
                true
            }
            None => false,
        });
        drop(states);
        let sleep = Duration::from_nanos(next.saturating_sub(now_ns())).max(MIN_SLEEP);
        std::thread::sleep(sleep);
    }
}

thread_local! {
    static STATE: Arc<BudgetState> = {
        let s = Arc::new(BudgetState::new());
        registry().lock().unwrap_or_else(PoisonError::into_inner).push(Arc::downgrade(&s));
        s
    };
    /// What the interrupt reads on every safepoint besides the deadline, in one place.
    static LOCAL: Local = const {
        Local {
            soft_kb: Cell::new(i32::MAX),
            exiting: Cell::new(false),
            heap_in: Cell::new(0),
        }
    };
}

/// How many safepoints pass between two reads of the heap size when no collection step
/// ran in between. A loop that allocates runs collection steps, and the safepoint after
/// each one reads the heap; this bounds the rest (a few iterations of a loop).
const HEAP_EVERY: u8 = 8;

/// The per-thread state of the interrupt.
struct Local {
    /// Heap size (KiB) above which the running call is stopped at its next safepoint.
    soft_kb: Cell<i32>,
    /// Set by `ngx.exit` in a call that cannot yield: every later safepoint raises, so a
    /// `pcall` around `ngx.exit` cannot keep the script running.
    exiting: Cell<bool>,
    /// Safepoints left before the heap size is read again (0: at the next one).
    heap_in: Cell<u8>,
}

/// The message of the error that unwinds a non-yielding call after `ngx.exit`.
pub const EXITING_MESSAGE: &str = "ngx.exit";

/// Marks the running call as exiting (see `Local::exiting`); cleared when its budget is
/// disarmed.
pub fn set_exiting() {
    LOCAL.with(|l| l.exiting.set(true));
}

/// Restores the previous deadline when dropped.
#[must_use = "the budget is disarmed when the guard drops"]
pub struct Armed {
    previous: u64,
    previous_kb: i32,
    started: Instant,
}

impl Armed {
    /// CPU time used since arming.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }
}

impl Drop for Armed {
    fn drop(&mut self) {
        STATE.with(|s| {
            s.deadline.store(self.previous, Ordering::Relaxed);
            s.tripped.store(false, Ordering::Relaxed);
        });
        LOCAL.with(|l| {
            l.soft_kb.set(self.previous_kb);
            l.exiting.set(false);
        });
    }
}

/// Arms this thread's deadline `remaining` from now, and the heap limit `soft_bytes`, until
/// the guard drops. A nested call (a spec driving a script in another VM) gets the earlier
/// of its own and the outer deadline.
pub fn arm(remaining: Duration, soft_bytes: usize) -> Armed {
    let started = Instant::now();
    let now = u64::try_from(started.duration_since(epoch()).as_nanos()).unwrap_or(NONE - 1);
    let wanted = now.saturating_add(u64::try_from(remaining.as_nanos()).unwrap_or(NONE));
    let previous = STATE.with(|s| {
        let previous = s.deadline.load(Ordering::Relaxed);
        s.deadline.store(wanted.min(previous), Ordering::Relaxed);
        previous
    });
    let kb = i32::try_from(soft_bytes / 1024).unwrap_or(i32::MAX);
    let previous_kb = LOCAL.with(|l| {
        l.heap_in.set(0);
        l.soft_kb.replace(kb)
    });
    Armed {
        previous,
        previous_kb,
        started,
    }
}

/// Whether this thread's armed deadline has passed.
pub fn over() -> bool {
    STATE.with(|s| {
        s.deadline.load(Ordering::Relaxed) != NONE && now_ns() >= s.deadline.load(Ordering::Relaxed)
    })
}

/// Installs the interrupt callback on `lua` (all its threads share it).
#[allow(unsafe_code)]
pub fn install(lua: &mlua::Lua) {
    // SAFETY: `lua_callbacks` returns the VM's global callback table, valid for the VM's
    // lifetime; we only store a function pointer in it, on the VM's own thread.
    unsafe {
        let callbacks = mlua::ffi::lua_callbacks(lua.state());
        (*callbacks).interrupt = Some(interrupt);
    }
}

/// The raw Luau interrupt: raises [`OVER_BUDGET`] once this thread's deadline has passed,
/// and [`OVER_MEMORY`] once the heap passes the soft limit (so that an allocation bomb in a
/// loop is stopped with a line number; a single huge allocation hits mlua's hard cap
/// instead). `gc >= 0` marks the interrupts of collection steps, which must not raise:
/// they only make the next safepoint read the heap size, which is otherwise read every
/// [`HEAP_EVERY`] safepoints.
#[allow(unsafe_code)]
unsafe extern "C-unwind" fn interrupt(state: *mut mlua::ffi::lua_State, gc: std::os::raw::c_int) {
    if gc >= 0 {
        LOCAL.with(|l| l.heap_in.set(0));
        return;
    }
    let tripped = STATE.with(|s| s.tripped.load(Ordering::Relaxed));
    let (exiting, check_heap) = LOCAL.with(|l| {
        let n = l.heap_in.get();
        l.heap_in.set(n.wrapping_sub(1) % HEAP_EVERY);
        (l.exiting.get(), n == 0 && l.soft_kb.get() != i32::MAX)
    });
    if tripped || exiting || check_heap {
        // SAFETY: as this function's.
        unsafe { stop_if_due(state) }
    }
}

/// The interrupt's rare part, out of its way: raises the error a flag or the heap calls for.
#[cold]
#[inline(never)]
#[allow(unsafe_code)]
unsafe fn stop_if_due(state: *mut mlua::ffi::lua_State) {
    if STATE.with(|s| s.over()) {
        // SAFETY: called by Luau at a safepoint of a running (non-GC) interrupt, where raising
        // an error is allowed; no Rust value with a destructor is alive in this frame.
        unsafe { mlua::ffi::luaL_error(state, c"CPU budget exceeded".as_ptr()) }
    }
    if LOCAL.with(|l| l.exiting.get()) {
        // SAFETY: as above.
        unsafe { mlua::ffi::luaL_error(state, c"ngx.exit".as_ptr()) }
    }
    let soft = LOCAL.with(|l| l.soft_kb.get());
    // SAFETY: `lua_gc(COUNT)` only reads the heap size of the running state.
    if soft != i32::MAX && unsafe { mlua::ffi::lua_gc(state, mlua::ffi::LUA_GCCOUNT, 0) } > soft {
        // Over the limit, every safepoint reads the heap again and raises, past any `pcall`.
        LOCAL.with(|l| l.heap_in.set(0));
        // SAFETY: as above.
        unsafe { mlua::ffi::luaL_error(state, c"memory limit reached".as_ptr()) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arming_sets_and_restores_the_deadline() {
        {
            let _outer = arm(Duration::from_secs(10), usize::MAX);
            {
                let _inner = arm(Duration::from_millis(1), usize::MAX);
                std::thread::sleep(Duration::from_millis(3));
                assert!(over());
            }
            assert!(!over());
        }
        assert!(!over());
    }
}
