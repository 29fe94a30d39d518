//! `ngx.shared.DICT` storage: named dictionaries shared by every worker thread, with a size
//! limit, per-entry TTLs and least-recently-used eviction when full — OpenResty's
//! `lua_shared_dict` semantics. No Lua in here: `api/shared.rs` is the Lua face.
//!
//! Invariants: `used` is the sum of [`entry_size`] over live slots and never exceeds
//! `capacity` after an operation returns; the LRU list links exactly the live slots, most
//! recently used at `head`. One mutex per dictionary: operations are short and never await.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Bytes counted per entry on top of key and value, like the node overhead of OpenResty's slab
/// allocator (about 60 bytes per node on 64-bit builds).
pub const ENTRY_OVERHEAD: usize = 64;

/// A value stored in a dictionary.
#[derive(Debug, Clone, PartialEq)]
pub enum DictValue {
    /// A string (bytes).
    Str(Vec<u8>),
    /// A number.
    Num(f64),
    /// A boolean.
    Bool(bool),
}

impl DictValue {
    fn size(&self) -> usize {
        match self {
            DictValue::Str(s) => s.len(),
            _ => 8,
        }
    }
}

/// Why a write did not happen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DictError {
    /// `add` on a live key.
    Exists,
    /// `replace`, `incr` without init, `expire` on a missing key.
    NotFound,
    /// `incr` on a value that is not a number.
    NotANumber,
    /// The entry cannot fit (or `safe_*` would have to evict).
    NoMemory,
}

impl DictError {
    /// OpenResty's error string.
    pub fn as_str(self) -> &'static str {
        match self {
            DictError::Exists => "exists",
            DictError::NotFound => "not found",
            DictError::NotANumber => "not a number",
            DictError::NoMemory => "no memory",
        }
    }
}

#[derive(Debug)]
struct Slot {
    key: Vec<u8>,
    value: DictValue,
    flags: u32,
    expires: Option<Instant>,
    prev: usize,
    next: usize,
}

const NIL: usize = usize::MAX;

/// The entries of one dictionary.
#[derive(Debug, Default)]
struct Store {
    map: HashMap<Vec<u8>, usize>,
    slots: Vec<Option<Slot>>,
    free: Vec<usize>,
    head: usize,
    tail: usize,
    used: usize,
    capacity: usize,
}

/// How a write treats existing entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetMode {
    /// `set`: always write.
    Set,
    /// `add`: only if missing (or expired).
    Add,
    /// `replace`: only if present.
    Replace,
}

/// The size an entry counts for.
pub fn entry_size(key: &[u8], value: &DictValue) -> usize {
    key.len() + value.size() + ENTRY_OVERHEAD
}

fn expired(slot: &Slot, now: Instant) -> bool {
    slot.expires.is_some_and(|e| e <= now)
}

impl Store {
    fn slot(&self, i: usize) -> Option<&Slot> {
        self.slots.get(i).and_then(Option::as_ref)
    }

    fn slot_mut(&mut self, i: usize) -> Option<&mut Slot> {
        self.slots.get_mut(i).and_then(Option::as_mut)
    }

    fn unlink(&mut self, i: usize) {
        let (prev, next) = match self.slot(i) {
            Some(s) => (s.prev, s.next),
            None => return,
        };
        match self.slot_mut(prev) {
            Some(p) => p.next = next,
            None => self.head = next,
        }
        match self.slot_mut(next) {
            Some(n) => n.prev = prev,
            None => self.tail = prev,
        }
    }

    fn push_front(&mut self, i: usize) {
        let old = self.head;
        if let Some(s) = self.slot_mut(i) {
            s.prev = NIL;
            s.next = old;
        }
        match self.slot_mut(old) {
            Some(h) => h.prev = i,
            None => self.tail = i,
        }
        self.head = i;
    }

    fn touch(&mut self, i: usize) {
        if self.head != i {
            self.unlink(i);
            self.push_front(i);
        }
    }

    fn remove_slot(&mut self, i: usize) {
        self.unlink(i);
        if let Some(slot) = self.slots.get_mut(i).and_then(Option::take) {
            self.used -= entry_size(&slot.key, &slot.value);
            self.map.remove(&slot.key);
            self.free.push(i);
        }
    }

    /// The live slot of `key`, dropping it if expired.
    fn live(&mut self, key: &[u8], now: Instant) -> Option<usize> {
        let i = *self.map.get(key)?;
        if self.slot(i).is_some_and(|s| expired(s, now)) {
            self.remove_slot(i);
            return None;
        }
        Some(i)
    }

    /// Frees room for `need` more bytes: expired entries first, then from the LRU tail.
    /// Returns whether live entries were evicted, or `None` if it cannot fit.
    fn make_room(&mut self, need: usize, allow_evict: bool, now: Instant) -> Option<bool> {
        if need > self.capacity {
            return None;
        }
        if self.used + need <= self.capacity {
            return Some(false);
        }
        // Expired entries anywhere go first (bounded scan from the cold end).
        let mut i = self.tail;
        let mut scanned = 0;
        while i != NIL && scanned < 64 && self.used + need > self.capacity {
            let prev = self.slot(i).map_or(NIL, |s| s.prev);
            if self.slot(i).is_some_and(|s| expired(s, now)) {
                self.remove_slot(i);
            }
            i = prev;
            scanned += 1;
        }
        let mut forced = false;
        while self.used + need > self.capacity {
            if !allow_evict || self.tail == NIL {
                return None;
            }
            let tail = self.tail;
            forced |= self.slot(tail).is_some_and(|s| !expired(s, now));
            self.remove_slot(tail);
        }
        Some(forced)
    }

    fn insert(&mut self, key: Vec<u8>, value: DictValue, flags: u32, expires: Option<Instant>) {
        self.used += entry_size(&key, &value);
        let slot = Slot {
            key: key.clone(),
            value,
            flags,
            expires,
            prev: NIL,
            next: NIL,
        };
        let i = match self.free.pop() {
            Some(i) => {
                self.slots[i] = Some(slot);
                i
            }
            None => {
                self.slots.push(Some(slot));
                self.slots.len() - 1
            }
        };
        self.map.insert(key, i);
        self.push_front(i);
    }
}

/// One shared dictionary.
#[derive(Debug)]
pub struct Dict {
    name: String,
    store: Mutex<Store>,
}

/// What `get` found.
#[derive(Debug, Clone, PartialEq)]
pub struct Found {
    /// The value.
    pub value: DictValue,
    /// User flags stored with it.
    pub flags: u32,
    /// Whether it had expired (only `get_stale` returns expired entries).
    pub stale: bool,
}

fn deadline(ttl: Option<Duration>, now: Instant) -> Option<Instant> {
    ttl.filter(|t| !t.is_zero()).map(|t| now + t)
}

impl Dict {
    /// A dictionary holding at most `capacity` bytes (see [`entry_size`]).
    pub fn new(name: &str, capacity: usize) -> Self {
        Dict {
            name: name.to_string(),
            store: Mutex::new(Store {
                capacity,
                head: NIL,
                tail: NIL,
                ..Store::default()
            }),
        }
    }

    /// The dictionary's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The value of `key` (`stale` also returns an expired entry not yet removed).
    pub fn get(&self, key: &[u8], stale: bool) -> Option<Found> {
        let now = Instant::now();
        let mut s = self.lock();
        let i = *s.map.get(key)?;
        let slot = s.slot(i)?;
        let is_expired = expired(slot, now);
        if is_expired && !stale {
            s.remove_slot(i);
            return None;
        }
        let found = Found {
            value: slot.value.clone(),
            flags: slot.flags,
            stale: is_expired,
        };
        s.touch(i);
        Some(found)
    }

    /// Writes `key` (a `None` value deletes). Returns whether live entries were evicted.
    pub fn set(
        &self,
        key: &[u8],
        value: Option<DictValue>,
        ttl: Option<Duration>,
        flags: u32,
        mode: SetMode,
        allow_evict: bool,
    ) -> Result<bool, DictError> {
        let now = Instant::now();
        let mut s = self.lock();
        let existing = s.live(key, now);
        match (mode, existing) {
            (SetMode::Add, Some(_)) => return Err(DictError::Exists),
            (SetMode::Replace, None) => return Err(DictError::NotFound),
            _ => {}
        }
        if let Some(i) = existing {
            s.remove_slot(i);
        }
        let Some(value) = value else { return Ok(false) };
        let need = entry_size(key, &value);
        let forced = s
            .make_room(need, allow_evict, now)
            .ok_or(DictError::NoMemory)?;
        s.insert(key.to_vec(), value, flags, deadline(ttl, now));
        Ok(forced)
    }

    /// Adds `by` to the number at `key`; a missing key starts from `init` (with `init_ttl`).
    pub fn incr(
        &self,
        key: &[u8],
        by: f64,
        init: Option<f64>,
        init_ttl: Option<Duration>,
    ) -> Result<(f64, bool), DictError> {
        let now = Instant::now();
        let mut s = self.lock();
        if let Some(i) = s.live(key, now) {
            let slot = s.slot_mut(i).ok_or(DictError::NotFound)?;
            let DictValue::Num(n) = slot.value else {
                return Err(DictError::NotANumber);
            };
            slot.value = DictValue::Num(n + by);
            s.touch(i);
            return Ok((n + by, false));
        }
        let start = init.ok_or(DictError::NotFound)?;
        let value = DictValue::Num(start + by);
        let forced = s
            .make_room(entry_size(key, &value), true, now)
            .ok_or(DictError::NoMemory)?;
        s.insert(key.to_vec(), value, 0, deadline(init_ttl, now));
        Ok((start + by, forced))
    }

    /// Removes `key`.
    pub fn delete(&self, key: &[u8]) {
        let mut s = self.lock();
        if let Some(i) = s.map.get(key).copied() {
            s.remove_slot(i);
        }
    }

    /// Remaining time to live of `key` (`Some(None)` = never expires).
    pub fn ttl(&self, key: &[u8]) -> Option<Option<Duration>> {
        let now = Instant::now();
        let mut s = self.lock();
        let i = s.live(key, now)?;
        Some(s.slot(i)?.expires.map(|e| e.saturating_duration_since(now)))
    }

    /// Sets a new TTL on `key` (zero = never expires). False if the key is missing.
    pub fn expire(&self, key: &[u8], ttl: Duration) -> bool {
        let now = Instant::now();
        let mut s = self.lock();
        match s.live(key, now).and_then(|i| s.slot_mut(i)) {
            Some(slot) => {
                slot.expires = deadline(Some(ttl), now);
                true
            }
            None => false,
        }
    }

    /// Marks every entry expired (`flush_all`).
    pub fn flush_all(&self) {
        let now = Instant::now();
        let mut s = self.lock();
        for slot in s.slots.iter_mut().flatten() {
            slot.expires = Some(now);
        }
    }

    /// Removes up to `max` expired entries (0 = all); returns how many.
    pub fn flush_expired(&self, max: usize) -> usize {
        let now = Instant::now();
        let mut s = self.lock();
        let victims: Vec<usize> = s
            .slots
            .iter()
            .enumerate()
            .filter(|(_, slot)| slot.as_ref().is_some_and(|x| expired(x, now)))
            .map(|(i, _)| i)
            .take(if max == 0 { usize::MAX } else { max })
            .collect();
        for &i in &victims {
            s.remove_slot(i);
        }
        victims.len()
    }

    /// Up to `max` live keys (0 = all).
    pub fn keys(&self, max: usize) -> Vec<Vec<u8>> {
        let now = Instant::now();
        let s = self.lock();
        s.slots
            .iter()
            .flatten()
            .filter(|x| !expired(x, now))
            .map(|x| x.key.clone())
            .take(if max == 0 { usize::MAX } else { max })
            .collect()
    }

    /// The size limit in bytes.
    pub fn capacity(&self) -> usize {
        self.lock().capacity
    }

    /// Bytes not yet used.
    pub fn free_space(&self) -> usize {
        let s = self.lock();
        s.capacity.saturating_sub(s.used)
    }

    /// Changes the size limit, evicting from the LRU end if needed.
    pub fn resize(&self, capacity: usize) {
        let mut s = self.lock();
        s.capacity = capacity;
        while s.used > s.capacity && s.tail != NIL {
            let tail = s.tail;
            s.remove_slot(tail);
        }
    }
}

/// Every dictionary of the process, by name; outlives configuration reloads.
#[derive(Debug, Default)]
pub struct SharedDicts {
    dicts: Mutex<HashMap<String, Arc<Dict>>>,
}

impl SharedDicts {
    /// The dictionary `name`, created with `capacity` on first use (a changed capacity in a
    /// reloaded configuration resizes it; its entries survive).
    pub fn get(&self, name: &str, capacity: usize) -> Arc<Dict> {
        let mut m = self.dicts.lock().unwrap_or_else(PoisonError::into_inner);
        let d = m
            .entry(name.to_string())
            .or_insert_with(|| Arc::new(Dict::new(name, capacity)))
            .clone();
        drop(m);
        if d.capacity() != capacity {
            d.resize(capacity);
        }
        d
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &str) -> Option<DictValue> {
        Some(DictValue::Str(v.as_bytes().to_vec()))
    }

    #[test]
    fn add_refuses_live_keys_and_replace_refuses_missing_ones() {
        let d = Dict::new("d", 4096);
        assert_eq!(d.set(b"k", s("1"), None, 0, SetMode::Add, true), Ok(false));
        assert_eq!(
            d.set(b"k", s("2"), None, 0, SetMode::Add, true),
            Err(DictError::Exists)
        );
        assert_eq!(
            d.set(b"x", s("2"), None, 0, SetMode::Replace, true),
            Err(DictError::NotFound)
        );
        assert_eq!(d.get(b"k", false).map(|f| f.value), s("1"));
    }

    #[test]
    fn entries_expire_after_their_ttl() {
        let d = Dict::new("d", 4096);
        d.set(
            b"k",
            s("v"),
            Some(Duration::from_millis(20)),
            7,
            SetMode::Set,
            true,
        )
        .unwrap();
        assert_eq!(d.get(b"k", false).map(|f| f.flags), Some(7));
        std::thread::sleep(Duration::from_millis(30));
        assert!(d.get(b"k", true).is_some_and(|f| f.stale));
        assert!(d.get(b"k", false).is_none());
    }

    #[test]
    fn evicts_the_least_recently_used_entry_when_full() {
        let one = entry_size(b"a", &DictValue::Str(vec![b'x'; 10]));
        let d = Dict::new("d", one * 3);
        for k in [b"a", b"b", b"c"] {
            d.set(
                k,
                Some(DictValue::Str(vec![b'x'; 10])),
                None,
                0,
                SetMode::Set,
                true,
            )
            .unwrap();
        }
        d.get(b"a", false);
        let forced = d
            .set(
                b"d",
                Some(DictValue::Str(vec![b'x'; 10])),
                None,
                0,
                SetMode::Set,
                true,
            )
            .unwrap();
        assert!(forced);
        assert!(
            d.get(b"b", false).is_none(),
            "b was the least recently used"
        );
        assert!(d.get(b"a", false).is_some());
        assert_eq!(
            d.set(
                b"e",
                Some(DictValue::Str(vec![b'x'; 10])),
                None,
                0,
                SetMode::Set,
                false
            ),
            Err(DictError::NoMemory)
        );
    }

    #[test]
    fn incr_starts_from_init_and_rejects_strings() {
        let d = Dict::new("d", 4096);
        assert_eq!(d.incr(b"n", 1.0, None, None), Err(DictError::NotFound));
        assert_eq!(d.incr(b"n", 1.0, Some(10.0), None), Ok((11.0, false)));
        assert_eq!(d.incr(b"n", -2.0, None, None), Ok((9.0, false)));
        d.set(b"s", s("x"), None, 0, SetMode::Set, true).unwrap();
        assert_eq!(d.incr(b"s", 1.0, None, None), Err(DictError::NotANumber));
    }

    #[test]
    fn used_bytes_return_to_zero_after_deletes() {
        let d = Dict::new("d", 4096);
        for i in 0..20u8 {
            d.set(&[i], s("value"), None, 0, SetMode::Set, true)
                .unwrap();
        }
        for i in 0..20u8 {
            d.delete(&[i]);
        }
        assert_eq!(d.free_space(), 4096);
    }
}
