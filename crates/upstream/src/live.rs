//! The targets an upstream has right now: its configured [`TargetSpec`]s (static addresses,
//! host names, SRV names) turn into a [`TargetSet`] of resolved addresses, published through
//! `ArcSwap` so workers read it without locks. The resolver task replaces the set when DNS
//! answers change; a request keeps the set it loaded.
//!
//! Per-address state ([`TargetState`]: health, ejection, requests in flight) lives in the
//! process-wide [`Runtime`] registry keyed by (upstream name, address), so it survives both
//! DNS refreshes and configuration reloads; so do resolved answers (keyed by name), which is
//! why a reload that keeps a target definition serves the same addresses at once.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;

use super::balance::{Policy, Ring};
use super::dns::{Answer, DnsSettings};
use super::{Target, Upstream};

/// A target as configured.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum SpecKind {
    /// An IP address and port: no DNS.
    Static(SocketAddr),
    /// A host name and port: A/AAAA records (or the hosts file).
    Host {
        /// The name as written (search domains apply unless it ends with a dot).
        name: String,
        /// The port.
        port: u16,
    },
    /// An SRV name: targets, ports and weights from the records.
    Srv {
        /// e.g. `_http._tcp.api.example`.
        name: String,
    },
}

/// One configured target.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TargetSpec {
    /// As written, for status and logs.
    pub written: String,
    /// What it names.
    pub kind: SpecKind,
    /// Relative weight (multiplies SRV weights).
    pub weight: u32,
}

impl TargetSpec {
    /// The DNS question this target needs, if any.
    pub fn dns_key(&self) -> Option<&SpecKind> {
        match self.kind {
            SpecKind::Static(_) => None,
            _ => Some(&self.kind),
        }
    }

    /// The host name connections to this target's addresses use for TLS SNI.
    fn host(&self) -> String {
        match &self.kind {
            SpecKind::Static(a) => a.ip().to_string(),
            SpecKind::Host { name, .. } => name.trim_end_matches('.').to_string(),
            SpecKind::Srv { .. } => String::new(),
        }
    }
}

/// Milliseconds since the process started: cheap, comparable across threads.
pub fn now_ms() -> u64 {
    static EPOCH: std::sync::LazyLock<Instant> = std::sync::LazyLock::new(Instant::now);
    let now = sluicegate_core::clock::coarse_now().into_std();
    // Never 0, so 0 can mean "not set".
    now.saturating_duration_since(*EPOCH).as_millis() as u64 + 1
}

/// Time constant of the peak-EWMA latency (Finagle's default decay time, 10 s).
const LATENCY_TAU_MS: f64 = 10_000.0;

/// Live state of one resolved address of one upstream.
#[derive(Debug, Default)]
pub struct TargetState {
    /// Requests in flight to it (counted when the policy or a circuit breaker needs it).
    pub in_flight: AtomicUsize,
    /// Consecutive passive failures.
    pub failures: AtomicU32,
    /// Ejected by passive checks until this [`now_ms`] instant; 0 when never ejected.
    pub ejected_until: AtomicU64,
    /// Ejections in a row (the backoff grows with it); reset by a success after one.
    pub ejections: AtomicU32,
    /// Ejections since start.
    pub ejections_total: AtomicU64,
    /// Marked down by the active health check.
    pub active_down: AtomicBool,
    /// Consecutive active check successes / failures (written by the check task only).
    pub check_ok_streak: AtomicU32,
    /// See `check_ok_streak`.
    pub check_fail_streak: AtomicU32,
    /// The last active check's outcome, for `/status`.
    pub last_check: Mutex<Option<String>>,
    /// Peak-EWMA of response-head latency in microseconds (`f64` bits; 0 = no sample).
    pub latency_ewma: AtomicU64,
    /// When `latency_ewma` was last updated ([`now_ms`]).
    pub latency_stamp: AtomicU64,
}

impl TargetState {
    /// Whether requests may go to this target (not down, not ejected).
    #[inline]
    pub fn available(&self) -> bool {
        if self.active_down.load(Ordering::Relaxed) {
            return false;
        }
        let until = self.ejected_until.load(Ordering::Relaxed);
        until == 0 || now_ms() >= until
    }

    /// Adds a latency sample to the peak-EWMA: a slower sample replaces the average at
    /// once (the "peak"), faster ones pull it down with a 10 s time constant (Finagle's
    /// default decay). Races between workers lose a sample at worst.
    pub fn observe_latency(&self, latency: Duration) {
        let now = now_ms();
        let sample = latency.as_secs_f64() * 1e6;
        let old = f64::from_bits(self.latency_ewma.load(Ordering::Relaxed));
        let elapsed = now.saturating_sub(self.latency_stamp.swap(now, Ordering::Relaxed)) as f64;
        let next = if old == 0.0 || sample > old {
            sample
        } else {
            let w = (-elapsed / LATENCY_TAU_MS).exp();
            old * w + sample * (1.0 - w)
        };
        self.latency_ewma.store(next.to_bits(), Ordering::Relaxed);
    }

    /// The peak-EWMA latency in microseconds now (0 before any sample). It decays toward
    /// zero while the target gets no requests, so a target that was slow once is tried
    /// again after a while instead of being avoided for good.
    pub fn latency_us(&self) -> f64 {
        let value = f64::from_bits(self.latency_ewma.load(Ordering::Relaxed));
        if value == 0.0 {
            return 0.0;
        }
        let elapsed = now_ms().saturating_sub(self.latency_stamp.load(Ordering::Relaxed)) as f64;
        value * (-elapsed / LATENCY_TAU_MS).exp()
    }

    /// Whether the passive checks have it ejected now.
    pub fn ejected(&self) -> bool {
        let until = self.ejected_until.load(Ordering::Relaxed);
        until != 0 && now_ms() < until
    }
}

/// The resolved targets of an upstream at one moment, with the balancing data built for them.
pub struct TargetSet {
    /// Resolved targets.
    pub targets: Vec<Target>,
    /// Weighted round-robin schedule (target indexes).
    pub(super) schedule: Vec<usize>,
    /// One cursor per worker.
    pub(super) cursors: Box<[super::balance::PaddedCursor]>,
    /// The hash ring, for consistent hashing.
    pub(super) ring: Option<Ring>,
    /// False while a DNS target has never resolved (requests then get 503, not 502).
    pub complete: bool,
}

impl TargetSet {
    /// A set of `targets` for `workers` workers balanced with `policy`.
    pub fn new(targets: Vec<Target>, workers: usize, policy: &Policy, complete: bool) -> Self {
        let schedule = super::balance::smooth_schedule(&targets);
        let ring = matches!(policy, Policy::Hash(_)).then(|| Ring::new(&targets));
        TargetSet {
            schedule,
            cursors: super::balance::cursors(workers),
            ring,
            targets,
            complete,
        }
    }

    /// Number of targets.
    pub fn len(&self) -> usize {
        self.targets.len()
    }

    /// Whether there is no target.
    pub fn is_empty(&self) -> bool {
        self.targets.is_empty()
    }

    fn same_addresses(&self, other: &[(SocketAddr, u32, String)]) -> bool {
        self.targets.len() == other.len()
            && self
                .targets
                .iter()
                .zip(other)
                .all(|(t, (a, w, h))| t.addr == *a && t.weight == *w && t.host == *h)
    }
}

/// What the resolver knows about one DNS question.
#[derive(Debug, Clone)]
pub struct Resolution {
    /// The last good answer.
    pub answer: Option<Answer>,
    /// When the last good answer expires (TTL), after which it is stale.
    pub valid_until: Option<Instant>,
    /// When the last good answer was received.
    pub last_ok: Option<SystemTime>,
    /// When the last refresh failed, and why (cleared by a success).
    pub last_error: Option<(SystemTime, String)>,
    /// When to ask again.
    pub next_refresh: Instant,
    /// Whether a refresh is running.
    pub in_progress: bool,
    /// Whether it was asked at least once.
    pub attempted: bool,
    /// Whether the outcome of a first question reached the upstreams' target sets.
    pub published: bool,
    /// Successful refreshes.
    pub ok_total: u64,
    /// Failed refreshes.
    pub failed_total: u64,
}

impl Resolution {
    fn new() -> Self {
        Resolution {
            answer: None,
            valid_until: None,
            last_ok: None,
            last_error: None,
            next_refresh: Instant::now(),
            in_progress: false,
            attempted: false,
            published: false,
            ok_total: 0,
            failed_total: 0,
        }
    }

    /// The answer to use now: the last good one until its TTL plus the stale period.
    pub fn usable(&self, stale: Duration) -> Option<&Answer> {
        let until = self.valid_until? + stale;
        (Instant::now() < until).then_some(self.answer.as_ref()?)
    }

    /// Whether the answer in use is past its TTL (served because DNS fails).
    pub fn is_stale(&self) -> bool {
        self.valid_until.is_some_and(|v| Instant::now() >= v)
    }
}

/// The resolved targets of one upstream: the published set, read lock-free.
pub struct LiveTargets {
    set: ArcSwap<TargetSet>,
    /// Wakes requests waiting for a circuit breaker slot.
    pub(super) released: tokio::sync::Notify,
    /// Requests waiting for a circuit breaker slot.
    pub(super) pending: AtomicUsize,
}

impl LiveTargets {
    /// Live targets starting with `set`.
    pub fn new(set: TargetSet) -> Self {
        LiveTargets {
            set: ArcSwap::from_pointee(set),
            released: tokio::sync::Notify::new(),
            pending: AtomicUsize::new(0),
        }
    }

    /// The current set (no lock, no allocation).
    #[inline]
    pub fn load(&self) -> arc_swap::Guard<Arc<TargetSet>> {
        self.set.load()
    }

    /// The current set as an owned `Arc`.
    pub fn load_full(&self) -> Arc<TargetSet> {
        self.set.load_full()
    }

    fn store(&self, set: TargetSet) {
        self.set.store(Arc::new(set));
    }
}

/// Process-wide upstream state carried from one configuration snapshot to the next:
/// resolved answers, per-address state, and the DNS settings in force.
pub struct Runtime {
    settings: ArcSwap<DnsSettings>,
    resolutions: Mutex<HashMap<SpecKind, Resolution>>,
    states: Mutex<HashMap<(String, SocketAddr), Weak<TargetState>>>,
}

impl Runtime {
    /// A runtime with `settings` and nothing resolved yet.
    pub fn new(settings: DnsSettings) -> Self {
        Runtime {
            settings: ArcSwap::from_pointee(settings),
            resolutions: Mutex::default(),
            states: Mutex::default(),
        }
    }

    /// The DNS settings in force.
    pub fn settings(&self) -> Arc<DnsSettings> {
        self.settings.load_full()
    }

    /// The state of `addr` in upstream `upstream`, shared with earlier sets.
    pub fn state(&self, upstream: &str, addr: SocketAddr) -> Arc<TargetState> {
        let mut states = self.states.lock().unwrap_or_else(PoisonError::into_inner);
        let key = (upstream.to_string(), addr);
        if let Some(s) = states.get(&key).and_then(Weak::upgrade) {
            return s;
        }
        if states.len() > 64 {
            states.retain(|_, w| w.strong_count() > 0);
        }
        let s = Arc::new(TargetState::default());
        states.insert(key, Arc::downgrade(&s));
        s
    }

    /// A copy of what is known about `key`.
    pub fn resolution(&self, key: &SpecKind) -> Option<Resolution> {
        self.resolutions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(key)
            .cloned()
    }

    /// Runs `f` on the resolution of `key` (created when missing).
    pub fn with_resolution<T>(&self, key: &SpecKind, f: impl FnOnce(&mut Resolution) -> T) -> T {
        let mut map = self
            .resolutions
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        f(map.entry(key.clone()).or_insert_with(Resolution::new))
    }

    /// Forgets resolutions no upstream needs any more.
    pub fn retain_resolutions(&self, needed: &std::collections::HashSet<SpecKind>) {
        self.resolutions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|k, _| needed.contains(k));
    }

    /// Whether every question in `keys` was answered (or failed) once and the outcome
    /// published (gateway start waits for that).
    pub fn all_published(&self, keys: &[SpecKind]) -> bool {
        let map = self
            .resolutions
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        keys.iter().all(|k| map.get(k).is_some_and(|r| r.published))
    }

    /// The targets `upstream` has now: static addresses plus usable DNS answers.
    fn resolved(&self, upstream: &Upstream) -> (Vec<(SocketAddr, u32, String)>, bool) {
        let stale = self.settings.load().stale;
        let map = self
            .resolutions
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let mut out: Vec<(SocketAddr, u32, String)> = Vec::new();
        let mut complete = true;
        for spec in &upstream.specs {
            let host = spec.host();
            // Two configured targets with one address stay two targets (like two nginx
            // `server` lines); they share that address's state and pool.
            let mut add = |addr: SocketAddr, weight: u32, host: String| {
                out.push((addr, weight.clamp(1, 1000), host));
            };
            match &spec.kind {
                SpecKind::Static(a) => add(*a, spec.weight, host),
                key => match map.get(key).and_then(|r| r.usable(stale)) {
                    Some(answer) => {
                        for (addr, w) in &answer.addrs {
                            // SRV targets are named by their records; others by the spec.
                            let host = if host.is_empty() {
                                answer
                                    .names
                                    .iter()
                                    .find(|(a, _)| a == addr)
                                    .map_or_else(|| addr.ip().to_string(), |(_, n)| n.clone())
                            } else {
                                host.clone()
                            };
                            add(*addr, w.saturating_mul(spec.weight), host);
                        }
                    }
                    None => complete &= map.get(key).is_some_and(|r| r.attempted),
                },
            }
        }
        (out, complete)
    }

    /// Builds `upstream`'s set from what is resolved now and publishes it if it differs.
    pub fn rebuild(&self, upstream: &Upstream) {
        let (resolved, complete) = self.resolved(upstream);
        let current = upstream.live.load();
        if current.same_addresses(&resolved) && current.complete == complete {
            return;
        }
        drop(current);
        upstream
            .live
            .store(self.set_for(upstream, resolved, complete));
    }

    /// Builds and publishes `upstream`'s set unconditionally (a new snapshot's upstream
    /// takes its states from this runtime).
    pub fn publish(&self, upstream: &Upstream) {
        let (resolved, complete) = self.resolved(upstream);
        upstream
            .live
            .store(self.set_for(upstream, resolved, complete));
    }

    fn set_for(
        &self,
        upstream: &Upstream,
        resolved: Vec<(SocketAddr, u32, String)>,
        complete: bool,
    ) -> TargetSet {
        let targets = resolved
            .into_iter()
            .map(|(addr, weight, host)| Target {
                address: Arc::from(addr.to_string().as_str()),
                pool_key: pool_key(upstream.pool_seed, addr, &host),
                host,
                port: addr.port(),
                addr,
                weight,
                state: self.state(&upstream.name, addr),
            })
            .collect();
        TargetSet::new(targets, upstream.workers, &upstream.policy, complete)
    }

    /// Takes over the running runtime `current` for the next snapshot, whose own runtime
    /// is `next` and whose upstreams are `upstreams`: `next`'s DNS settings replace the
    /// running ones, and every upstream's set is rebuilt from the running answers and states.
    pub fn carry_over<'a>(
        current: &Arc<Runtime>,
        next: &mut Arc<Runtime>,
        upstreams: impl IntoIterator<Item = &'a Arc<Upstream>>,
    ) {
        let fresh = std::mem::replace(next, current.clone());
        next.settings.store(fresh.settings());
        for upstream in upstreams {
            next.publish(upstream);
        }
    }
}

fn pool_key(seed: u64, addr: SocketAddr, host: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (seed, addr, host).hash(&mut h);
    h.finish()
}

/// A request's slot at a target (requests in flight, circuit breaker); released on drop.
pub struct InFlight {
    state: Arc<TargetState>,
    live: Arc<LiveTargets>,
}

impl InFlight {
    /// Takes a slot at `state` if it has fewer than `max` requests in flight (0 = no limit).
    pub fn acquire(state: &Arc<TargetState>, live: &Arc<LiveTargets>, max: usize) -> Option<Self> {
        let previous = state.in_flight.fetch_add(1, Ordering::AcqRel);
        if max > 0 && previous >= max {
            state.in_flight.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(InFlight {
            state: state.clone(),
            live: live.clone(),
        })
    }

    /// Waits up to `timeout` for some slot of the upstream to be released; false when the
    /// wait queue is full (`max_pending`) or nothing was released in time.
    pub async fn wait_for_slot(live: &LiveTargets, max_pending: usize, timeout: Duration) -> bool {
        if live.pending.fetch_add(1, Ordering::AcqRel) >= max_pending {
            live.pending.fetch_sub(1, Ordering::AcqRel);
            return false;
        }
        let woken = tokio::time::timeout(timeout, live.released.notified())
            .await
            .is_ok();
        live.pending.fetch_sub(1, Ordering::AcqRel);
        woken
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.state.in_flight.fetch_sub(1, Ordering::AcqRel);
        if self.live.pending.load(Ordering::Acquire) > 0 {
            self.live.released.notify_one();
        }
    }
}
