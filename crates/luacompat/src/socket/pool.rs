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
    /// The connections in all lists (kept, not summed: emptied lists stay).
    idle: usize,
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
        let Pool { keys, idle: count } = &mut *p;
        if let Some(list) = keys.get_mut(key) {
            let before = list.len();
            // Newest first: the most recently used connection is the likeliest alive.
            while let Some(idle) = list.pop_back() {
                if idle.until > now && !idle.conn.stream.is_stale() {
                    found = Some(idle.conn);
                    break;
                }
            }
            list.retain(|i| i.until > now);
            *count = count.saturating_sub(before - list.len());
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
        // Returns the list's length before and after.
        let keep = |list: &mut VecDeque<Idle>| {
            let before = list.len();
            list.retain(|i| i.until > now);
            while list.len() >= size.max(1) {
                list.pop_front();
            }
            list.push_back(Idle {
                conn,
                until: now + idle,
            });
            (before, list.len())
        };
        let Pool { keys, idle: count } = &mut *p;
        // The key is usually there (its list emptied by the `take` of this connection):
        // one lookup, no allocation.
        let (before, after) = if let Some(list) = keys.get_mut(key) {
            keep(list)
        } else {
            if keys.len() >= MAX_KEYS {
                keys.retain(|_, l| !l.is_empty());
            }
            let mut list = VecDeque::new();
            let lengths = keep(&mut list);
            keys.insert(key.to_owned(), list);
            lengths
        };
        *count = (*count + after).saturating_sub(before);
        if *count > MAX_IDLE {
            // Over the worker's bound: drop the longest-idle connection of the fullest key.
            if let Some(list) = keys.values_mut().max_by_key(|l| l.len()) {
                if list.pop_front().is_some() {
                    *count -= 1;
                }
            }
        }
    })
}

/// Idle connections of this worker (for tests and `/status`).
pub fn idle_count() -> usize {
    POOL.with(|p| p.borrow().idle)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::super::Stream;
    use super::*;

    #[test]
    fn idle_connections_are_counted_and_keys_without_any_are_forgotten_past_the_bound() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let connect = || async move {
                Conn {
                    stream: Stream::Tcp(tokio::net::TcpStream::connect(addr).await.unwrap()),
                    buf: bytes::BytesMut::new(),
                    reused: 0,
                    host: String::new(),
                }
            };
            let idle = Duration::from_secs(60);
            put("a", connect().await, idle, 30);
            put("a", connect().await, idle, 30);
            assert_eq!(idle_count(), 2);
            let one = take("a").unwrap();
            assert_eq!(one.reused, 1);
            assert_eq!(idle_count(), 1);
            assert!(take("a").is_some());
            assert!(take("a").is_none());
            assert_eq!(idle_count(), 0);
            // The emptied key stays for the next `put`, up to the bound on keys.
            let mut conn = one;
            for i in 0..MAX_KEYS + 10 {
                let key = format!("k{i}");
                put(&key, conn, idle, 30);
                assert_eq!(idle_count(), 1);
                conn = take(&key).unwrap();
            }
            let keys = POOL.with(|p| p.borrow().keys.len());
            assert!(keys <= MAX_KEYS + 1, "{keys} keys kept");
            // A list over its size drops its oldest connection, and the count follows.
            put("b", conn, idle, 1);
            put("b", connect().await, idle, 1);
            assert_eq!(idle_count(), 1);
        });
    }
}
