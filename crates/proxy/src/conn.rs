//! The phase of a client connection's request cycle, shared between the server's
//! connection I/O (which owns the idle and header timeouts) and the driver (which flips it
//! when a request head has been received and when the request is finished).

use std::sync::atomic::{AtomicU32, AtomicU8, Ordering};

/// Where a connection is in its request cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ConnPhase {
    /// Between requests.
    Idle = 0,
    /// Some bytes of a request head have arrived.
    InHead = 1,
    /// A request is being served.
    InRequest = 2,
    /// HTTP/2: no per-request phases.
    H2 = 3,
    /// Switched protocols after a `101` (WebSocket): no HTTP phases any more.
    Upgraded = 4,
    /// Idle long enough to be parked: the HTTP/1.1 loop hands the connection to the lot
    /// (or, when it cannot, goes back to `Idle`).
    Parking = 5,
}

/// The phase shared between the I/O wrapper and the driver, plus the HTTP/2 stream count
/// that the idle timeout of multiplexed connections needs.
#[derive(Debug)]
pub struct ConnState {
    phase: AtomicU8,
    /// Requests in flight on this connection.
    active: AtomicU32,
    /// Bumped on every request start: an idle window is "whole" when it did not change.
    generation: AtomicU32,
}

impl Default for ConnState {
    fn default() -> Self {
        ConnState {
            phase: AtomicU8::new(ConnPhase::Idle as u8),
            active: AtomicU32::new(0),
            generation: AtomicU32::new(0),
        }
    }
}

impl ConnState {
    /// The current phase.
    pub fn get(&self) -> ConnPhase {
        match self.phase.load(Ordering::Relaxed) {
            1 => ConnPhase::InHead,
            2 => ConnPhase::InRequest,
            3 => ConnPhase::H2,
            4 => ConnPhase::Upgraded,
            5 => ConnPhase::Parking,
            _ => ConnPhase::Idle,
        }
    }

    /// Sets the phase (HTTP/2 and upgraded connections keep their phase for good).
    pub fn set(&self, phase: ConnPhase) {
        // A connection and its requests live on one worker thread: plain loads and stores
        // suffice (no read-modify-write, which costs a locked instruction several times a
        // request). The atomics are only there because hyper wants the I/O type `Send`.
        let cur = self.phase.load(Ordering::Relaxed);
        if cur != ConnPhase::H2 as u8 && cur != ConnPhase::Upgraded as u8 && cur != phase as u8 {
            self.phase.store(phase as u8, Ordering::Relaxed);
        }
    }
}

impl ConnState {
    /// Requests in flight on this connection (HTTP/2 may have several).
    pub fn in_flight(&self) -> u32 {
        self.active.load(Ordering::Relaxed)
    }

    /// A counter bumped by every request start: an idle window is "whole" when it did not
    /// change across the window.
    pub fn generation(&self) -> u32 {
        self.generation.load(Ordering::Relaxed)
    }

    /// A request started on this connection (single-threaded; see [`ConnState::set`]).
    pub fn begin(&self) {
        let active = self.active.load(Ordering::Relaxed);
        self.active
            .store(active.saturating_add(1), Ordering::Relaxed);
        let generation = self.generation.load(Ordering::Relaxed);
        self.generation
            .store(generation.wrapping_add(1), Ordering::Relaxed);
    }

    /// A request on this connection finished.
    pub fn end(&self) {
        let active = self.active.load(Ordering::Relaxed);
        self.active
            .store(active.saturating_sub(1), Ordering::Relaxed);
    }
}
