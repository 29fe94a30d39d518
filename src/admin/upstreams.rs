//! What `/status` and `/metrics` show about upstreams: configured targets with their DNS
//! state (addresses, TTL left, stale or not, last error, refresh counts), and resolved
//! targets with their health (active check, passive ejection, requests in flight).

use std::fmt::Write as _;
use std::sync::atomic::Ordering;

use serde_json::{json, Value};

use crate::state::Snapshot;
use sluicegate_upstream::health::ejected_for;
use sluicegate_upstream::live::SpecKind;
use sluicegate_upstream::Upstream;

/// The `upstreams` array of `/status`, sorted by name.
pub fn status(snapshot: &Snapshot) -> Vec<Value> {
    let mut out: Vec<Value> = snapshot
        .upstreams
        .values()
        .map(|u| upstream_status(snapshot, u))
        .collect();
    out.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
    out
}

fn upstream_status(snapshot: &Snapshot, u: &Upstream) -> Value {
    let runtime = &snapshot.upstream_runtime;
    let settings = runtime.settings();
    let set = u.live.load_full();
    let specs: Vec<Value> = u
        .specs
        .iter()
        .map(|spec| {
            let mut v = json!({"target": spec.written, "weight": spec.weight});
            match &spec.kind {
                SpecKind::Static(a) => {
                    v["kind"] = json!("static");
                    v["addresses"] = json!([a.to_string()]);
                }
                key => {
                    v["kind"] = json!(if matches!(key, SpecKind::Srv { .. }) { "srv" } else { "dns" });
                    let r = runtime.resolution(key);
                    v["dns"] = match r {
                        None => json!({"state": "pending"}),
                        Some(r) => {
                            let usable = r.usable(settings.stale).is_some();
                            let state = match (usable, r.is_stale(), r.attempted) {
                                (true, false, _) => "ok",
                                (true, true, _) => "stale",
                                (false, _, true) => "failed",
                                (false, _, false) => "pending",
                            };
                            let ttl_left = r.valid_until.map(|v| {
                                v.saturating_duration_since(std::time::Instant::now()).as_millis() as u64
                            });
                            json!({
                                "state": state,
                                "source": r.answer.as_ref().map(|a| a.source),
                                "addresses": r.answer.as_ref().map(|a| a.addrs.iter().map(|(addr, w)| json!({"address": addr.to_string(), "weight": w})).collect::<Vec<_>>()).unwrap_or_default(),
                                "ttl_ms": r.answer.as_ref().map(|a| a.ttl.as_millis() as u64),
                                "expires_in_ms": ttl_left,
                                "last_ok": r.last_ok.map(sluicegate_telemetry::httpdate_rfc3339),
                                "last_error": r.last_error.as_ref().map(|(_, e)| e.clone()),
                                "last_error_at": r.last_error.as_ref().map(|(t, _)| sluicegate_telemetry::httpdate_rfc3339(*t)),
                                "refreshes_ok": r.ok_total,
                                "refreshes_failed": r.failed_total,
                            })
                        }
                    };
                }
            }
            v
        })
        .collect();
    let targets: Vec<Value> = set
        .targets
        .iter()
        .map(|t| {
            let s = &t.state;
            let health = if s.active_down.load(Ordering::Relaxed) {
                "unhealthy"
            } else if s.ejected() {
                "ejected"
            } else {
                "healthy"
            };
            json!({
                "address": &*t.address,
                "host": t.host,
                "weight": t.weight,
                "health": health,
                "active_check": s.last_check.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone(),
                "ejected_for_ms": ejected_for(s).map(|d| d.as_millis() as u64),
                "consecutive_failures": s.failures.load(Ordering::Relaxed),
                "ejections": s.ejections_total.load(Ordering::Relaxed),
                "in_flight": s.in_flight.load(Ordering::Relaxed),
                "latency_ewma_ms": Some(s.latency_us() / 1000.0).filter(|v| *v > 0.0),
            })
        })
        .collect();
    json!({
        "name": u.name,
        "policy": u.policy.name(),
        "active_health_checks": u.health.active.is_some(),
        "passive_health_checks": u.health.passive.is_some(),
        "all_unhealthy": if u.health.fail_closed { "fail_closed" } else { "fail_open" },
        "configured": specs,
        "targets": targets,
        "resolved": set.complete,
    })
}

/// Appends the upstream gauges and counters in the Prometheus text format.
pub fn render_metrics(snapshot: &Snapshot, out: &mut String) {
    let mut upstreams: Vec<&std::sync::Arc<Upstream>> = snapshot.upstreams.values().collect();
    upstreams.sort_by(|a, b| a.name.cmp(&b.name));
    let esc = |s: &str| {
        s.replace('\\', "\\\\")
            .replace('"', "\\\"")
            .replace('\n', "\\n")
    };
    out.push_str("# HELP sluicegate_upstream_target_healthy Whether a resolved target takes requests (1) or is down or ejected (0).\n");
    out.push_str("# TYPE sluicegate_upstream_target_healthy gauge\n");
    for u in &upstreams {
        for t in &u.live.load().targets {
            let _ = writeln!(
                out,
                "sluicegate_upstream_target_healthy{{upstream=\"{}\",target=\"{}\"}} {}",
                esc(&u.name),
                t.address,
                u8::from(t.state.available())
            );
        }
    }
    out.push_str(
        "# HELP sluicegate_upstream_target_ejections_total Passive-check ejections of a target.\n",
    );
    out.push_str("# TYPE sluicegate_upstream_target_ejections_total counter\n");
    for u in &upstreams {
        for t in &u.live.load().targets {
            let _ = writeln!(
                out,
                "sluicegate_upstream_target_ejections_total{{upstream=\"{}\",target=\"{}\"}} {}",
                esc(&u.name),
                t.address,
                t.state.ejections_total.load(Ordering::Relaxed)
            );
        }
    }
    out.push_str("# HELP sluicegate_upstream_targets Resolved targets of an upstream.\n");
    out.push_str("# TYPE sluicegate_upstream_targets gauge\n");
    for u in &upstreams {
        let _ = writeln!(
            out,
            "sluicegate_upstream_targets{{upstream=\"{}\"}} {}",
            esc(&u.name),
            u.live.load().len()
        );
    }
    type Counter = fn(&sluicegate_telemetry::UpstreamMetrics) -> u64;
    let counters: [(&str, &str, Counter); 3] = [
        (
            "sluicegate_upstream_retries_total",
            "Requests retried on another target.",
            |m| m.retries.load(Ordering::Relaxed),
        ),
        (
            "sluicegate_upstream_retry_budget_exhausted_total",
            "Retries refused because the route's retry budget was spent.",
            |m| m.retry_budget_exhausted.load(Ordering::Relaxed),
        ),
        (
            "sluicegate_upstream_circuit_open_total",
            "Requests refused with 503 because every target was at its connection limit.",
            |m| m.circuit_open.load(Ordering::Relaxed),
        ),
    ];
    for (name, help, get) in counters {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
        for u in &upstreams {
            let _ = writeln!(
                out,
                "{name}{{upstream=\"{}\"}} {}",
                esc(&u.name),
                get(&u.metrics)
            );
        }
    }
    out.push_str(
        "# HELP sluicegate_dns_refreshes_total DNS refreshes of upstream names by result.\n",
    );
    out.push_str("# TYPE sluicegate_dns_refreshes_total counter\n");
    let mut names = std::collections::BTreeMap::new();
    for u in &upstreams {
        for spec in &u.specs {
            if let Some(key) = spec.dns_key() {
                if let Some(r) = snapshot.upstream_runtime.resolution(key) {
                    names.insert(crate::supervisor::key_name(key), r);
                }
            }
        }
    }
    let stale = snapshot.upstream_runtime.settings().stale;
    for (name, r) in &names {
        let _ = writeln!(
            out,
            "sluicegate_dns_refreshes_total{{name=\"{}\",result=\"ok\"}} {}",
            esc(name),
            r.ok_total
        );
        let _ = writeln!(
            out,
            "sluicegate_dns_refreshes_total{{name=\"{}\",result=\"error\"}} {}",
            esc(name),
            r.failed_total
        );
    }
    out.push_str("# HELP sluicegate_dns_stale Whether a name is served from an expired answer because DNS fails (1).\n");
    out.push_str("# TYPE sluicegate_dns_stale gauge\n");
    for (name, r) in &names {
        let stale_now = r.usable(stale).is_some() && r.is_stale();
        let _ = writeln!(
            out,
            "sluicegate_dns_stale{{name=\"{}\"}} {}",
            esc(name),
            u8::from(stale_now)
        );
    }
    out.push_str("# HELP sluicegate_dns_addresses Addresses a name resolves to now.\n");
    out.push_str("# TYPE sluicegate_dns_addresses gauge\n");
    for (name, r) in &names {
        let n = r.usable(stale).map_or(0, |a| a.addrs.len());
        let _ = writeln!(
            out,
            "sluicegate_dns_addresses{{name=\"{}\"}} {n}",
            esc(name)
        );
    }
}
