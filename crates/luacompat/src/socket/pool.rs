//! The worker's keepalive pool of cosocket connections (`setkeepalive`), keyed by pool
//! name. One per worker thread, as OpenResty has one per worker process: each worker owns
//! its VM and its connections. Idle connections expire lazily (when their key is used
//! again) and the pool is bounded per key and in all.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use super::Conn;

/// Idle connections kept per key unless `setkeepalive` says otherwise (OpenResty's
/// `lua_socket_pool_size`).
pub const DEFAULT_SIZE: usize = 30;
/// Idle connections kept per worker in all.
const MAX_IDLE: usize = 4096;
/// Keys kept per worker before those without idle connections are forgotten.
const MAX_KEYS: usize = 1024;

struct Idle {
    conn: Conn,
    until: Instant,
}

#[derive(Default)]
struct Pool {
    keys: HashMap<String, VecDeque<Idle>>,
}

impl Pool {
    fn count(&self) -> usize {
        self.keys.values().map(VecDeque::len).sum()
    }
}

thread_local! {
    static POOL: RefCell<Pool> = RefCell::new(Pool::default());
}

/// An idle connection for `key` that is still open, counted as reused.
pub(crate) fn take(key: &str) -> Option<Conn> {
    POOL.with(|p| {
        let mut p = p.borrow_mut();
        let now = Instant::now();
        let mut found = None;
        if let Some(list) = p.keys.get_mut(key) {
            // Newest first: the most recently used connection is the likeliest alive.
            while let Some(idle) = list.pop_back() {
                if idle.until > now && !idle.conn.stream.is_stale() {
                    found = Some(idle.conn);
                    break;
                }
            }
            list.retain(|i| i.until > now);
        }
        // An emptied list stays, with its buffer, for the `put` that usually follows
        // (connect, one query, `setkeepalive`): `put` forgets empty lists past
        // [`MAX_KEYS`].
        found.map(|mut c| {
            c.reused += 1;
            c
        })
    })
}

/// Keeps `conn` for `key` for `idle`, at most `size` per key (the oldest goes first).
pub(crate) fn put(key: &str, conn: Conn, idle: Duration, size: usize) {
    POOL.with(|p| {
        let mut p = p.borrow_mut();
        let now = Instant::now();
        let keep = |list: &mut VecDeque<Idle>| {
            list.retain(|i| i.until > now);
            while list.len() >= size.max(1) {
                list.pop_front();
            }
            list.push_back(Idle {
                conn,
                until: now + idle,
            });
        };
        // The key is usually there (its list emptied by the `take` of this connection):
        // one lookup, no allocation.
        if let Some(list) = p.keys.get_mut(key) {
            keep(list);
        } else {
            if p.keys.len() >= MAX_KEYS {
                p.keys.retain(|_, l| !l.is_empty());
            }
            let mut list = VecDeque::new();
            keep(&mut list);
            p.keys.insert(key.to_owned(), list);
        }
        if p.count() > MAX_IDLE {
            // Over the worker's bound: drop the longest-idle connection of the fullest key.
            if let Some(list) = p.keys.values_mut().max_by_key(|l| l.len()) {
                list.pop_front();
            }
        }
    })
}

/// Idle connections of this worker (for tests and `/status`).
pub fn idle_count() -> usize {
    POOL.with(|p| p.borrow().count())
}
