//! Sessions a worker has already opened, by the whole cookie value, with what they let
//! through: a request with a session seen before skips base64, AES-GCM and JSON, the rules
//! and the building of the identity headers and claims.
//!
//! Invariants: an entry is made only from a cookie that opened with this plugin's keys and
//! is found only by the same cookie, compared in full; the session's times (its end, the
//! refresh due) are checked on every request, found or not; each plugin instance (each
//! configuration) has its own entries, so new keys or rules never meet an old entry; a
//! worker keeps at most [`CAPACITY`] entries. Sessions are stateless, so an entry holds
//! nothing a cookie does not: it accepts exactly the cookies that would open anyway.

use std::cell::RefCell;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use http::{HeaderName, HeaderValue};
use sluicegate_core::context::Consumer;
use sluicegate_jwt::Claims;
use sluicegate_oidc::session::Session;
use thread_local::ThreadLocal;

/// Entries per worker and plugin: a few MiB at most (a session is under 4 KiB).
pub(super) const CAPACITY: usize = 1024;

/// What an admitted identity puts on a request.
pub(super) struct Admitted {
    /// The identity headers, in order (the ID token's `Authorization` among them if chosen).
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub consumer: Consumer,
    pub claims: Claims,
}

/// An identity the rules refused: who, and why.
pub(super) struct Refused {
    pub user: String,
    pub reason: String,
}

/// A session cookie that opened.
pub(super) struct Known {
    pub session: Session,
    /// Whether the current key sealed it (if not, it is sealed again on the way out).
    pub current_key: bool,
    /// What it lets through while its tokens are fresh.
    pub admission: Result<Admitted, Refused>,
}

/// A cookie value as a map key. Only cookies that opened are stored and each ends with its
/// own AEAD tag (16 random-looking bytes), so hashing the tail spreads them as well as
/// hashing all of it would, at a fraction of the cost; equality still compares all of it.
#[derive(PartialEq, Eq)]
struct Cookie(String);

impl Hash for Cookie {
    fn hash<H: Hasher>(&self, state: &mut H) {
        let b = self.0.as_bytes();
        b[b.len().saturating_sub(24)..].hash(state);
    }
}

/// One plugin instance's opened sessions, per worker thread.
#[derive(Default)]
pub(super) struct KnownSessions {
    workers: ThreadLocal<RefCell<HashMap<Cookie, Arc<Known>>>>,
}

impl KnownSessions {
    /// The entry for `cookie`, or the one `open` makes from it (kept if it succeeds).
    pub fn get_or_open<E>(
        &self,
        cookie: String,
        open: impl FnOnce(&str) -> Result<Known, E>,
    ) -> Result<Arc<Known>, E> {
        let cell = self.workers.get_or_default();
        let key = Cookie(cookie);
        if let Some(k) = cell.borrow().get(&key) {
            return Ok(k.clone());
        }
        let known = Arc::new(open(&key.0)?);
        let mut map = cell.borrow_mut();
        if map.len() >= CAPACITY {
            // Full: forget one entry (the map's order is as good as random). A session
            // forgotten is opened again on its next request, nothing more.
            if let Some(k) = map.keys().next().map(|k| Cookie(k.0.clone())) {
                map.remove(&k);
            }
        }
        map.insert(key, known.clone());
        Ok(known)
    }

    /// Entries this worker holds.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.workers.get().map_or(0, |c| c.borrow().len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    fn known(sub: &str) -> Known {
        Known {
            session: Session {
                sub: sub.into(),
                email: None,
                groups: Vec::new(),
                claims: serde_json::Map::new(),
                expires_at: 0,
                ends_at: 0,
                refresh_token: None,
                id_token: None,
                sid: String::new(),
            },
            current_key: true,
            admission: Err(Refused {
                user: sub.into(),
                reason: "test".into(),
            }),
        }
    }

    #[test]
    fn a_cookie_opens_once_per_worker_and_failures_are_not_kept() {
        let cache = KnownSessions::default();
        let opens = Cell::new(0);
        let open = |text: &str| {
            opens.set(opens.get() + 1);
            if text.starts_with("bad") {
                Err("not a session")
            } else {
                Ok(known(text))
            }
        };
        for _ in 0..3 {
            let k = cache.get_or_open("cookie-one".into(), open).unwrap();
            assert_eq!(k.session.sub, "cookie-one");
        }
        assert_eq!(opens.get(), 1);
        for _ in 0..2 {
            assert!(cache.get_or_open("bad-cookie".into(), open).is_err());
        }
        assert_eq!(opens.get(), 3);
        assert_eq!(cache.len(), 1);
        // Same tail, different text: its own entry, never the other's.
        let k = cache.get_or_open("cookie-two-one".into(), open).unwrap();
        assert_eq!(k.session.sub, "cookie-two-one");
        assert_eq!(cache.len(), 2);
    }

    #[test]
    fn a_worker_keeps_at_most_capacity_entries() {
        let cache = KnownSessions::default();
        for i in 0..CAPACITY + 50 {
            let text = format!("cookie-{i:08}");
            let _ = cache.get_or_open(text, |t| Ok::<_, ()>(known(t)));
        }
        assert_eq!(cache.len(), CAPACITY);
    }

    #[test]
    fn each_worker_thread_has_its_own_entries() {
        let cache = KnownSessions::default();
        let _ = cache.get_or_open("cookie".into(), |t| Ok::<_, ()>(known(t)));
        std::thread::scope(|s| {
            s.spawn(|| assert_eq!(cache.len(), 0));
        });
        assert_eq!(cache.len(), 1);
    }
}
