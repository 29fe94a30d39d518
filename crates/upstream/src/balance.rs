//! Load-balancing policies over a [`TargetSet`]: weighted round-robin (nginx's smooth
//! variant, unrolled into a schedule with one cursor per worker), least-connections,
//! random-two-choices, and consistent hashing on a header, a cookie or the client IP (a
//! hash ring with many points per target, so adding or removing a target moves only the
//! keys of that target).
//!
//! Choosing never allocates and never locks: it reads atomics of the targets' states.
//! Targets that are down, ejected, or already tried by this request are skipped.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};

use http::HeaderName;

use super::live::TargetSet;
use super::Target;

/// How an upstream spreads requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Policy {
    /// Smooth weighted round-robin (the default).
    RoundRobin,
    /// The target with the fewest requests in flight per unit of weight.
    LeastConnections,
    /// Two targets at random, the less loaded of them (power of two choices).
    RandomTwoChoices,
    /// Two targets at random, the one with the lower peak-EWMA latency × requests in flight.
    PeakEwma,
    /// The same key always goes to the same target while it is available.
    Hash(HashOn),
}

impl Policy {
    /// Whether choosing needs requests in flight counted.
    pub fn counts_in_flight(&self) -> bool {
        matches!(
            self,
            Policy::LeastConnections | Policy::RandomTwoChoices | Policy::PeakEwma
        )
    }

    /// The name used in the configuration and `/status`.
    pub fn name(&self) -> &'static str {
        match self {
            Policy::RoundRobin => "round_robin",
            Policy::LeastConnections => "least_connections",
            Policy::RandomTwoChoices => "random_two_choices",
            Policy::PeakEwma => "peak_ewma",
            Policy::Hash(_) => "consistent_hash",
        }
    }
}

/// What consistent hashing hashes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashOn {
    /// A request header's value.
    Header(HeaderName),
    /// A cookie's value.
    Cookie(String),
    /// The client's IP address.
    ClientIp,
}

/// Targets a request already tried (first 64 targets; more are rare and may repeat).
#[derive(Debug, Default, Clone, Copy)]
pub struct Tried(pub u64);

impl Tried {
    /// Marks target `i`.
    pub fn add(&mut self, i: usize) {
        if i < 64 {
            self.0 |= 1 << i;
        }
    }

    /// Whether target `i` was tried.
    pub fn has(&self, i: usize) -> bool {
        i < 64 && self.0 & (1 << i) != 0
    }
}

#[repr(align(64))]
pub(super) struct PaddedCursor(AtomicUsize);

pub(super) fn cursors(workers: usize) -> Box<[PaddedCursor]> {
    (0..workers.max(1))
        .map(|w| PaddedCursor(AtomicUsize::new(w)))
        .collect()
}

/// nginx's smooth weighted round-robin, unrolled into a schedule: weights 5,1,1 give
/// a a b a c a a rather than a a a a a b c. Weights are divided by their greatest common
/// divisor first, so equal weights make a schedule as long as the target list.
pub(super) fn smooth_schedule(targets: &[Target]) -> Vec<usize> {
    let divisor = targets.iter().fold(0u32, |g, t| gcd(g, t.weight)).max(1);
    let weights: Vec<i64> = targets
        .iter()
        .map(|t| i64::from(t.weight / divisor))
        .collect();
    let total: i64 = weights.iter().sum();
    let mut current = vec![0i64; targets.len()];
    let mut out = Vec::with_capacity(total as usize);
    for _ in 0..total {
        let mut best = 0;
        for (i, w) in weights.iter().enumerate() {
            current[i] += w;
            if current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= total;
        out.push(best);
    }
    out
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// Points on the ring per unit of weight (ketama uses 160 per server; weights here go to
/// 1000, so fewer points per unit keep the ring small while spreading keys evenly).
const POINTS_PER_WEIGHT: u32 = 40;
/// Cap on the points of one target.
const MAX_POINTS: u32 = 4_000;

/// A consistent-hash ring: sorted (point, target index) pairs. A target's points depend
/// only on its address, so a target keeps its keys when others come and go.
pub struct Ring {
    points: Vec<(u64, usize)>,
}

impl Ring {
    /// The ring of `targets`.
    pub fn new(targets: &[Target]) -> Ring {
        let mut points = Vec::new();
        for (i, t) in targets.iter().enumerate() {
            let n = (t.weight * POINTS_PER_WEIGHT).clamp(POINTS_PER_WEIGHT, MAX_POINTS);
            for p in 0..n {
                points.push((point_of(t.addr, p), i));
            }
        }
        points.sort_unstable();
        Ring { points }
    }

    /// The first acceptable target at or after `key` on the ring.
    fn find(&self, key: u64, ok: impl Fn(usize) -> bool) -> Option<usize> {
        if self.points.is_empty() {
            return None;
        }
        let start = self.points.partition_point(|(p, _)| *p < key);
        let n = self.points.len();
        (0..n)
            .map(|k| self.points[(start + k) % n].1)
            .find(|&i| ok(i))
    }
}

fn point_of(addr: SocketAddr, replica: u32) -> u64 {
    let mut h = Fnv::default();
    match addr.ip() {
        std::net::IpAddr::V4(v4) => h.write(&v4.octets()),
        std::net::IpAddr::V6(v6) => h.write(&v6.octets()),
    }
    h.write(&addr.port().to_be_bytes());
    h.write(&replica.to_be_bytes());
    mix(h.0)
}

/// Hashes a request key (header value, cookie, client IP) onto the ring.
pub fn key_hash(bytes: &[u8]) -> u64 {
    let mut h = Fnv::default();
    h.write(bytes);
    mix(h.0)
}

/// FNV-1a: stable across processes and versions (a key keeps its target after a restart).
struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv {
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }
}

/// A final avalanche (splitmix64's), so nearby inputs land far apart on the ring.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

thread_local! {
    static RNG: std::cell::Cell<u64> = std::cell::Cell::new(seed());
}

fn seed() -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let local = 0u8;
    mix(t ^ (&local as *const u8 as u64)) | 1
}

/// xorshift64*: a per-thread generator, plenty for picking two targets.
fn random() -> u64 {
    RNG.with(|r| {
        let mut x = r.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        r.set(x);
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    })
}

/// Load of target `t` per unit of weight (comparable across weights).
fn load(t: &Target) -> u64 {
    (t.state.in_flight.load(Ordering::Relaxed) as u64 + 1) * 1_000_000 / u64::from(t.weight)
}

/// Expected cost of sending to `t` (peak-EWMA): latency × (requests in flight + 1) per unit
/// of weight. A target without a sample costs 0, so new targets get tried.
fn cost(t: &Target) -> u64 {
    let latency = t.state.latency_us().max(0.0) as u64;
    latency.saturating_mul(t.state.in_flight.load(Ordering::Relaxed) as u64 + 1)
        / u64::from(t.weight)
}

impl TargetSet {
    /// Chooses a target for a request: an index into `targets`, skipping `tried` ones and,
    /// unless `ignore_health`, unavailable ones. `key` is the request's hash for
    /// consistent hashing.
    pub fn select(
        &self,
        policy: &Policy,
        worker: usize,
        key: u64,
        tried: Tried,
        ignore_health: bool,
    ) -> Option<usize> {
        let n = self.targets.len();
        if n == 0 {
            return None;
        }
        let ok = |i: usize| !tried.has(i) && (ignore_health || self.targets[i].state.available());
        match policy {
            Policy::RoundRobin => {
                let len = self.schedule.len();
                let cursor = &self.cursors[worker % self.cursors.len()].0;
                // A retry continues from where its first choice left the cursor, so one
                // request moves the cursor once and the next request still gets the next
                // target.
                let base = if tried.0 == 0 {
                    cursor.fetch_add(1, Ordering::Relaxed)
                } else {
                    cursor.load(Ordering::Relaxed)
                };
                let first = self.schedule[base % len];
                if ok(first) {
                    return Some(first);
                }
                (1..len)
                    .map(|k| self.schedule[(base + k) % len])
                    .find(|&i| ok(i))
            }
            Policy::LeastConnections => {
                let cursor = &self.cursors[worker % self.cursors.len()].0;
                // Start somewhere else each time, so ties rotate instead of piling up.
                let start = cursor.fetch_add(1, Ordering::Relaxed);
                (0..n)
                    .map(|k| (start + k) % n)
                    .filter(|&i| ok(i))
                    .min_by_key(|&i| load(&self.targets[i]))
            }
            Policy::RandomTwoChoices | Policy::PeakEwma => {
                let measure = if *policy == Policy::PeakEwma {
                    cost
                } else {
                    load
                };
                let a = (random() % n as u64) as usize;
                let b = if n > 1 {
                    (a + 1 + (random() % (n as u64 - 1)) as usize) % n
                } else {
                    a
                };
                match (ok(a), ok(b)) {
                    (true, true) => {
                        Some(if measure(&self.targets[b]) < measure(&self.targets[a]) {
                            b
                        } else {
                            a
                        })
                    }
                    (true, false) => Some(a),
                    (false, true) => Some(b),
                    (false, false) => (0..n)
                        .filter(|&i| ok(i))
                        .min_by_key(|&i| measure(&self.targets[i])),
                }
            }
            Policy::Hash(_) => self.ring.as_ref().and_then(|r| r.find(key, ok)),
        }
    }

    /// The index of the target whose address (`ip:port`) or host and port (`host:port`)
    /// is `hint`.
    pub fn find(&self, hint: &str) -> Option<usize> {
        self.targets.iter().position(|t| {
            &*t.address == hint
                || hint.rsplit_once(':').is_some_and(|(h, p)| {
                    h.eq_ignore_ascii_case(&t.host) && p.parse() == Ok(t.port)
                })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn target(addr: &str, weight: u32) -> Target {
        let addr: SocketAddr = addr.parse().unwrap();
        Target {
            address: Arc::from(addr.to_string().as_str()),
            host: addr.ip().to_string(),
            port: addr.port(),
            addr,
            weight,
            pool_key: 0,
            state: Arc::default(),
        }
    }

    fn set(targets: Vec<Target>, policy: &Policy) -> TargetSet {
        TargetSet::new(targets, 1, policy, true)
    }

    #[test]
    fn smooth_weighted_round_robin_interleaves() {
        let t = [
            target("10.0.0.1:80", 5),
            target("10.0.0.2:80", 1),
            target("10.0.0.3:80", 1),
        ];
        assert_eq!(smooth_schedule(&t), vec![0, 0, 1, 0, 2, 0, 0]);
        let equal = [target("10.0.0.1:80", 100), target("10.0.0.2:80", 100)];
        assert_eq!(smooth_schedule(&equal), vec![0, 1]);
    }

    #[test]
    fn round_robin_skips_unavailable_and_tried_targets() {
        let s = set(
            vec![
                target("10.0.0.1:80", 1),
                target("10.0.0.2:80", 1),
                target("10.0.0.3:80", 1),
            ],
            &Policy::RoundRobin,
        );
        s.targets[1]
            .state
            .active_down
            .store(true, Ordering::Relaxed);
        for _ in 0..10 {
            let i = s
                .select(&Policy::RoundRobin, 0, 0, Tried::default(), false)
                .unwrap();
            assert_ne!(i, 1);
        }
        let mut tried = Tried::default();
        tried.add(0);
        tried.add(2);
        assert_eq!(s.select(&Policy::RoundRobin, 0, 0, tried, false), None);
        assert_eq!(s.select(&Policy::RoundRobin, 0, 0, tried, true), Some(1));
    }

    #[test]
    fn least_connections_prefers_the_idle_target() {
        let s = set(
            vec![target("10.0.0.1:80", 1), target("10.0.0.2:80", 1)],
            &Policy::LeastConnections,
        );
        s.targets[0].state.in_flight.store(5, Ordering::Relaxed);
        for _ in 0..5 {
            assert_eq!(
                s.select(&Policy::LeastConnections, 0, 0, Tried::default(), false),
                Some(1)
            );
        }
    }

    #[test]
    fn random_two_choices_avoids_the_busiest_of_two() {
        let s = set(
            vec![target("10.0.0.1:80", 1), target("10.0.0.2:80", 1)],
            &Policy::RandomTwoChoices,
        );
        s.targets[1].state.in_flight.store(9, Ordering::Relaxed);
        for _ in 0..20 {
            assert_eq!(
                s.select(&Policy::RandomTwoChoices, 0, 0, Tried::default(), false),
                Some(0)
            );
        }
    }

    #[test]
    fn peak_ewma_avoids_the_slow_target_and_reacts_to_a_spike_at_once() {
        let s = set(
            vec![target("10.0.0.1:80", 1), target("10.0.0.2:80", 1)],
            &Policy::PeakEwma,
        );
        s.targets[0]
            .state
            .observe_latency(std::time::Duration::from_millis(50));
        s.targets[1]
            .state
            .observe_latency(std::time::Duration::from_millis(2));
        for _ in 0..20 {
            assert_eq!(
                s.select(&Policy::PeakEwma, 0, 0, Tried::default(), false),
                Some(1)
            );
        }
        // A slower sample replaces the average at once (the peak).
        s.targets[1]
            .state
            .observe_latency(std::time::Duration::from_millis(200));
        assert!(s.targets[1].state.latency_us() >= 200_000.0);
        assert_eq!(
            s.select(&Policy::PeakEwma, 0, 0, Tried::default(), false),
            Some(0)
        );
    }

    /// Which target each of `keys` maps to, as addresses.
    fn assignment(targets: &[&str], keys: u32) -> Vec<String> {
        let policy = Policy::Hash(HashOn::ClientIp);
        let s = set(targets.iter().map(|a| target(a, 1)).collect(), &policy);
        (0..keys)
            .map(|k| {
                let i = s
                    .select(
                        &policy,
                        0,
                        key_hash(format!("user-{k}").as_bytes()),
                        Tried::default(),
                        false,
                    )
                    .unwrap();
                s.targets[i].address.to_string()
            })
            .collect()
    }

    #[test]
    fn consistent_hashing_moves_only_the_keys_of_a_removed_or_added_target() {
        let four = ["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80", "10.0.0.4:80"];
        let keys = 10_000;
        let before = assignment(&four, keys);
        // Spread: each of four targets gets a fair share (±40 %).
        for t in four {
            let n = before.iter().filter(|a| *a == t).count();
            assert!((1500..3500).contains(&n), "{t} got {n} of {keys} keys");
        }
        // Removing one target moves exactly its keys; everyone else keeps theirs.
        let three = assignment(&four[..3], keys);
        for (b, a) in before.iter().zip(&three) {
            if b != "10.0.0.4:80" {
                assert_eq!(a, b, "a key of a remaining target moved");
            }
        }
        // Adding a fifth target moves about a fifth of the keys, all of them to it.
        let five = assignment(
            &[
                "10.0.0.1:80",
                "10.0.0.2:80",
                "10.0.0.3:80",
                "10.0.0.4:80",
                "10.0.0.5:80",
            ],
            keys,
        );
        let moved: Vec<_> = before.iter().zip(&five).filter(|(b, a)| b != a).collect();
        assert!(moved.iter().all(|(_, a)| *a == "10.0.0.5:80"));
        let share = moved.len() as f64 / f64::from(keys);
        assert!((0.1..0.3).contains(&share), "moved {share} of the keys");
    }

    #[test]
    fn consistent_hashing_skips_an_unavailable_target_and_comes_back() {
        let policy = Policy::Hash(HashOn::ClientIp);
        let s = set(
            vec![target("10.0.0.1:80", 1), target("10.0.0.2:80", 1)],
            &policy,
        );
        let key = key_hash(b"client-a");
        let home = s.select(&policy, 0, key, Tried::default(), false).unwrap();
        s.targets[home]
            .state
            .active_down
            .store(true, Ordering::Relaxed);
        let other = s.select(&policy, 0, key, Tried::default(), false).unwrap();
        assert_ne!(home, other);
        s.targets[home]
            .state
            .active_down
            .store(false, Ordering::Relaxed);
        assert_eq!(
            s.select(&policy, 0, key, Tried::default(), false),
            Some(home)
        );
    }

    #[test]
    fn hints_name_a_target_by_address_or_host() {
        let mut t = target("10.0.0.1:8080", 1);
        t.host = "api.internal".into();
        let s = set(vec![target("10.0.0.2:80", 1), t], &Policy::RoundRobin);
        assert_eq!(s.find("10.0.0.1:8080"), Some(1));
        assert_eq!(s.find("API.internal:8080"), Some(1));
        assert_eq!(s.find("api.internal:9"), None);
    }
}
