//! The one background task of the process that keeps upstreams current: it asks DNS again
//! before each answer expires (every name once, however many upstreams or workers use
//! it), keeps serving the last good answer for the stale period when DNS fails, publishes new
//! target sets when answers change, and runs one active health-check task per upstream.
//!
//! It follows the current snapshot: after a reload it resolves the new names and restarts
//! the health checks with the new settings; answers for names that stay are reused at once.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use crate::state::Shared;
use sluicegate_upstream::dns::Lookup;
use sluicegate_upstream::live::{Runtime, SpecKind};

/// How often the task looks for due refreshes and new upstreams. Bounds how late a refresh
/// can start (the 1 s TTLs of service-discovery records still refresh ahead of expiry).
const TICK: Duration = Duration::from_millis(100);
/// Refreshes start this share of a TTL after an answer (nginx Plus' resolver re-resolves
/// at expiry; starting earlier keeps an answer fresh while the query is in flight).
const REFRESH_AT: f64 = 0.75;

/// Runs until the control runtime stops.
pub async fn run(shared: Arc<Shared>) {
    let mut lookup: Option<Arc<Lookup>> = None;
    let mut checks: HashMap<usize, tokio::task::JoinHandle<()>> = HashMap::new();
    let mut version = 0;
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Subscribed before the first look at the snapshot, so no swap goes unnoticed.
    let mut swapped = shared.swapped.subscribe();
    let mut names = true;
    loop {
        if names {
            tick.tick().await;
        } else {
            // Static addresses only: nothing is due until a reload brings a host name.
            // (Health checks run in their own tasks.)
            let _ = swapped.changed().await;
        }
        let snapshot = shared.snapshot.load_full();
        let runtime = snapshot.upstream_runtime.clone();
        if snapshot.version != version {
            // A refresh that finished while a reload was being built updated the sets of
            // the snapshot it replaced: bring the new one up to date.
            version = snapshot.version;
            for u in snapshot.upstreams.values() {
                runtime.rebuild(u);
            }
        }
        sync_checks(&snapshot, &mut checks);
        let keys = dns_keys(&snapshot);
        runtime.retain_resolutions(&keys.iter().cloned().collect());
        names = !keys.is_empty();
        if !names {
            // Static addresses only: no resolver is needed (nor resolv.conf read).
            continue;
        }
        let settings = runtime.settings();
        if lookup.as_ref().is_none_or(|l| *l.settings() != *settings) {
            if lookup.is_some() {
                tracing::info!("DNS settings changed; resolving every name again.");
                for key in &keys {
                    runtime.with_resolution(key, |r| r.next_refresh = Instant::now());
                }
            }
            lookup = Some(Arc::new(Lookup::new((*settings).clone())));
        }
        let Some(lookup) = lookup.clone() else {
            continue;
        };
        let now = Instant::now();
        for key in keys {
            let due = runtime.with_resolution(&key, |r| {
                let due = !r.in_progress && r.next_refresh <= now;
                r.in_progress |= due;
                due
            });
            if due {
                tokio::spawn(refresh(
                    shared.clone(),
                    runtime.clone(),
                    lookup.clone(),
                    key,
                ));
            }
        }
    }
}

/// Every DNS question the snapshot's upstreams need.
fn dns_keys(snapshot: &crate::state::Snapshot) -> Vec<SpecKind> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for u in snapshot.upstreams.values() {
        for spec in &u.specs {
            if let Some(k) = spec.dns_key() {
                if seen.insert(k.clone()) {
                    out.push(k.clone());
                }
            }
        }
    }
    out
}

/// Starts a check task for each upstream with active checks, stops those of upstreams that
/// are gone (a reload builds new upstream objects, so checks restart with new settings;
/// their counters live in the targets' states and carry over).
fn sync_checks(
    snapshot: &crate::state::Snapshot,
    checks: &mut HashMap<usize, tokio::task::JoinHandle<()>>,
) {
    let mut current = HashSet::new();
    for u in snapshot.upstreams.values() {
        let Some(check) = &u.health.active else {
            continue;
        };
        let id = Arc::as_ptr(u) as usize;
        current.insert(id);
        checks.entry(id).or_insert_with(|| {
            tokio::spawn(sluicegate_upstream::health::run_active(
                u.clone(),
                check.clone(),
            ))
        });
    }
    checks.retain(|id, task| {
        let keep = current.contains(id);
        if !keep {
            task.abort();
        }
        keep
    });
}

async fn refresh(shared: Arc<Shared>, runtime: Arc<Runtime>, lookup: Arc<Lookup>, key: SpecKind) {
    let settings = lookup.settings();
    // hickory bounds each query; this bounds the whole refresh (SRV targets included).
    let limit = settings.timeout * (settings.attempts as u32 + 1) * 3 + Duration::from_secs(1);
    let asked = async {
        match &key {
            SpecKind::Host { name, port } => lookup.host(name, *port, 1).await,
            SpecKind::Srv { name } => lookup.srv(name).await,
            SpecKind::Static(_) => Err("a static address needs no DNS".to_string()),
        }
    };
    let result = match tokio::time::timeout(limit, asked).await {
        Ok(r) => r,
        Err(_) => Err(format!("no answer within {} ms", limit.as_millis())),
    };
    let name = key_name(&key);
    let error_retry = settings.error_retry;
    runtime.with_resolution(&key, |r| {
        r.in_progress = false;
        r.attempted = true;
        let now = Instant::now();
        match result {
            Ok(answer) => {
                if r.answer.as_ref().map(|a| &a.addrs) != Some(&answer.addrs) {
                    let addrs: Vec<String> =
                        answer.addrs.iter().map(|(a, _)| a.to_string()).collect();
                    tracing::info!(name = %name, addresses = ?addrs, ttl_ms = answer.ttl.as_millis() as u64, source = answer.source, "Resolved upstream name.");
                } else if r.last_error.is_some() {
                    tracing::info!(name = %name, "DNS answers again for upstream name.");
                }
                r.next_refresh = now + answer.ttl.mul_f64(REFRESH_AT).max(TICK);
                r.valid_until = Some(now + answer.ttl);
                r.answer = Some(answer);
                r.last_ok = Some(SystemTime::now());
                r.last_error = None;
                r.ok_total += 1;
            }
            Err(e) => {
                if r.last_error.is_none() {
                    let serving = if r.answer.is_some() {
                        "the last good answer keeps serving within the stale period"
                    } else {
                        "the name has no addresses yet"
                    };
                    tracing::warn!(name = %name, error = %e, "DNS refresh failed; {serving}.", serving = serving);
                } else {
                    tracing::debug!(name = %name, error = %e, "DNS refresh failed again.");
                }
                if r.answer.is_some() && r.usable(settings.stale).is_none() {
                    tracing::error!(name = %name, "The last good DNS answer is past its stale period; its addresses are dropped.");
                    r.answer = None;
                    r.valid_until = None;
                }
                r.last_error = Some((SystemTime::now(), e));
                r.failed_total += 1;
                r.next_refresh = now + error_retry;
            }
        }
    });
    let snapshot = shared.snapshot.load();
    for u in snapshot.upstreams.values() {
        if u.specs.iter().any(|s| s.dns_key() == Some(&key)) {
            snapshot.upstream_runtime.rebuild(u);
        }
    }
    runtime.with_resolution(&key, |r| r.published = true);
}

/// The name a DNS question is about, for logs and metrics.
pub fn key_name(key: &SpecKind) -> String {
    match key {
        SpecKind::Static(a) => a.to_string(),
        SpecKind::Host { name, port } => format!("{name}:{port}"),
        SpecKind::Srv { name } => name.clone(),
    }
}

/// Waits (up to the resolver's own time limit) until every name of the current snapshot
/// was asked once, so the first requests after start find their targets resolved.
pub fn wait_first_answers(shared: &Shared) {
    let snapshot = shared.snapshot.load_full();
    let keys = dns_keys(&snapshot);
    if keys.is_empty() {
        return;
    }
    let settings = snapshot.upstream_runtime.settings();
    let limit = (settings.timeout * (settings.attempts as u32 + 1)).min(Duration::from_secs(10));
    let until = Instant::now() + limit;
    while !snapshot.upstream_runtime.all_published(&keys) && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(5));
    }
}
