//! Logs and metrics. Metrics live in one process-wide [`Metrics`] registry that outlives
//! configuration snapshots (so counters do not reset on reload); snapshots hold `Arc`s to
//! the per-route and per-upstream entries they need, so the hot path only does relaxed
//! atomic adds. [`Metrics::render`] writes the Prometheus text format.
//!
//! The access log writes one JSON line per request with a single `write` call on an
//! `O_APPEND` file descriptor, so lines from different workers never interleave.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs::File;
use std::io::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

/// Upper bounds (seconds) of the request-duration histogram buckets.
pub const DURATION_BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

/// A histogram with fixed buckets.
#[derive(Debug, Default)]
pub struct Histogram {
    buckets: [AtomicU64; DURATION_BUCKETS.len()],
    count: AtomicU64,
    sum_us: AtomicU64,
}

impl Histogram {
    /// Records one observation.
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        if let Some(i) = DURATION_BUCKETS.iter().position(|b| secs <= *b) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(
            d.as_micros().min(u64::MAX as u128) as u64,
            Ordering::Relaxed,
        );
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let mut cumulative = 0;
        for (i, bound) in DURATION_BUCKETS.iter().enumerate() {
            cumulative += self.buckets[i].load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{bound}\"}} {cumulative}");
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {count}");
        let sum = self.sum_us.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum{{{labels}}} {sum}");
        let _ = writeln!(out, "{name}_count{{{labels}}} {count}");
    }
}

/// Counters of one route.
#[derive(Debug)]
pub struct RouteMetrics {
    /// Requests by status code (index = status - 100).
    by_status: Box<[AtomicU64]>,
    /// Total request duration.
    pub duration: Histogram,
}

impl Default for RouteMetrics {
    fn default() -> Self {
        RouteMetrics {
            by_status: (100..600).map(|_| AtomicU64::new(0)).collect(),
            duration: Histogram::default(),
        }
    }
}

impl RouteMetrics {
    /// Counts a finished request.
    pub fn record(&self, status: u16, took: Duration) {
        if let Some(c) = self.by_status.get(usize::from(status).wrapping_sub(100)) {
            c.fetch_add(1, Ordering::Relaxed);
        }
        self.duration.observe(took);
    }
}

/// Counters of one upstream.
#[derive(Debug, Default)]
pub struct UpstreamMetrics {
    /// Errors by kind (`connect`, `timeout`, `protocol`, `body`).
    errors: Mutex<BTreeMap<&'static str, u64>>,
    /// Requests retried on another target (route `retry:` policies).
    pub retries: AtomicU64,
    /// Retries refused because the route's retry budget was spent.
    pub retry_budget_exhausted: AtomicU64,
    /// Requests refused with 503 because every target was at its circuit-breaker limit.
    pub circuit_open: AtomicU64,
}

impl UpstreamMetrics {
    /// Counts an upstream error of `kind` (rare, so a mutex is fine).
    pub fn error(&self, kind: &'static str) {
        let mut m = self.errors.lock().unwrap_or_else(PoisonError::into_inner);
        *m.entry(kind).or_insert(0) += 1;
    }
}

/// The process-wide metrics registry.
#[derive(Debug, Default)]
pub struct Metrics {
    routes: Mutex<BTreeMap<String, Arc<RouteMetrics>>>,
    upstreams: Mutex<BTreeMap<String, Arc<UpstreamMetrics>>>,
    /// Client connections open now.
    pub active_connections: AtomicI64,
    /// Client connections accepted since start.
    pub accepted_connections: AtomicU64,
    /// Requests hyper rejected as malformed before they reached a route (400/431).
    pub malformed_requests: AtomicU64,
    /// Successful configuration reloads.
    pub reloads_ok: AtomicU64,
    /// Rejected configuration reloads.
    pub reloads_failed: AtomicU64,
    /// Script failures by (script, kind).
    scripts: Mutex<BTreeMap<(String, &'static str), u64>>,
}

impl Metrics {
    /// The entry for route `name`, created on first use.
    pub fn route(&self, name: &str) -> Arc<RouteMetrics> {
        let mut m = self.routes.lock().unwrap_or_else(PoisonError::into_inner);
        m.entry(name.to_string()).or_default().clone()
    }

    /// The entry for upstream `name`, created on first use.
    pub fn upstream(&self, name: &str) -> Arc<UpstreamMetrics> {
        let mut m = self
            .upstreams
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        m.entry(name.to_string()).or_default().clone()
    }

    /// Counts a script failure of `kind` (`error` or `budget`).
    pub fn script_failure(&self, script: &str, kind: &'static str) {
        let mut m = self.scripts.lock().unwrap_or_else(PoisonError::into_inner);
        *m.entry((script.to_string(), kind)).or_insert(0) += 1;
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        out.push_str("# HELP sluicegate_requests_total Requests by route and status.\n");
        out.push_str("# TYPE sluicegate_requests_total counter\n");
        let routes: Vec<(String, Arc<RouteMetrics>)> = self
            .routes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        for (name, m) in &routes {
            for (i, c) in m.by_status.iter().enumerate() {
                let n = c.load(Ordering::Relaxed);
                if n > 0 {
                    let _ = writeln!(
                        out,
                        "sluicegate_requests_total{{route=\"{}\",status=\"{}\"}} {n}",
                        escape(name),
                        i + 100
                    );
                }
            }
        }
        out.push_str("# HELP sluicegate_request_duration_seconds Time from request head to end of response body.\n");
        out.push_str("# TYPE sluicegate_request_duration_seconds histogram\n");
        for (name, m) in &routes {
            let labels = format!("route=\"{}\"", escape(name));
            m.duration
                .render(&mut out, "sluicegate_request_duration_seconds", &labels);
        }
        out.push_str(
            "# HELP sluicegate_upstream_errors_total Upstream failures by upstream and kind.\n",
        );
        out.push_str("# TYPE sluicegate_upstream_errors_total counter\n");
        for (name, m) in self
            .upstreams
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
        {
            for (kind, n) in m
                .errors
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .iter()
            {
                let _ = writeln!(
                    out,
                    "sluicegate_upstream_errors_total{{upstream=\"{}\",kind=\"{kind}\"}} {n}",
                    escape(name)
                );
            }
        }
        out.push_str(
            "# HELP sluicegate_script_failures_total Lua script failures by script and kind.\n",
        );
        out.push_str("# TYPE sluicegate_script_failures_total counter\n");
        for ((script, kind), n) in self
            .scripts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
        {
            let _ = writeln!(
                out,
                "sluicegate_script_failures_total{{script=\"{}\",kind=\"{kind}\"}} {n}",
                escape(script)
            );
        }
        let gauges = [
            (
                "sluicegate_active_connections",
                "gauge",
                "Client connections open now.",
                self.active_connections.load(Ordering::Relaxed).to_string(),
            ),
            (
                "sluicegate_accepted_connections_total",
                "counter",
                "Client connections accepted.",
                self.accepted_connections
                    .load(Ordering::Relaxed)
                    .to_string(),
            ),
            (
                "sluicegate_malformed_requests_total",
                "counter",
                "Requests rejected as malformed HTTP before routing.",
                self.malformed_requests.load(Ordering::Relaxed).to_string(),
            ),
            (
                "sluicegate_config_reloads_total",
                "counter",
                "Configuration reloads applied.",
                self.reloads_ok.load(Ordering::Relaxed).to_string(),
            ),
            (
                "sluicegate_config_reload_failures_total",
                "counter",
                "Configuration reloads rejected.",
                self.reloads_failed.load(Ordering::Relaxed).to_string(),
            ),
        ];
        for (name, kind, help, value) in gauges {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        }
        out
    }
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Where access-log lines go.
#[derive(Debug)]
pub enum AccessLog {
    /// No access log.
    Off,
    /// A file descriptor opened for appending (a file, or a duplicate of stdout/stderr).
    File(File),
    /// A log file that does not exist yet: created on the first line, so validating a
    /// configuration (`sluicegate check`) never creates files.
    Deferred {
        /// Where the file goes.
        path: std::path::PathBuf,
        /// The file once opened (`None` if creating it failed; that is logged once).
        file: std::sync::OnceLock<Option<File>>,
    },
}

/// One access-log record.
pub struct AccessRecord<'a> {
    /// When the request head arrived.
    pub time: SystemTime,
    /// Request id.
    pub request_id: &'a str,
    /// Client address.
    pub client: std::net::SocketAddr,
    /// Method.
    pub method: &'a str,
    /// Path as received.
    pub path: &'a str,
    /// Matched route.
    pub route: &'a str,
    /// Upstream target.
    pub upstream: Option<&'a str>,
    /// Status sent.
    pub status: u16,
    /// Request body bytes.
    pub bytes_in: u64,
    /// Response body bytes.
    pub bytes_out: u64,
    /// Total duration.
    pub duration: Duration,
    /// Time to the upstream's response head.
    pub upstream_duration: Option<Duration>,
    /// Whether the response body was cut short.
    pub aborted: bool,
    /// For gRPC calls, the `grpc-status` the call ended with (written only when known).
    pub grpc_status: Option<u16>,
}

impl AccessLog {
    /// Opens the log for `target` (`stdout`, `stderr`, `file`, `off`).
    pub fn open(target: &str, path: Option<&str>) -> std::io::Result<AccessLog> {
        use std::os::fd::AsFd;
        Ok(match target {
            "off" => AccessLog::Off,
            "stdout" => {
                AccessLog::File(File::from(std::io::stdout().as_fd().try_clone_to_owned()?))
            }
            "stderr" => {
                AccessLog::File(File::from(std::io::stderr().as_fd().try_clone_to_owned()?))
            }
            _ => {
                let path = std::path::PathBuf::from(path.unwrap_or("access.log"));
                if path.exists() {
                    AccessLog::File(std::fs::OpenOptions::new().append(true).open(&path)?)
                } else {
                    let dir = path
                        .parent()
                        .filter(|d| !d.as_os_str().is_empty())
                        .unwrap_or(std::path::Path::new("."));
                    if !dir.is_dir() {
                        return Err(std::io::Error::new(
                            std::io::ErrorKind::NotFound,
                            format!("directory `{}` does not exist", dir.display()),
                        ));
                    }
                    AccessLog::Deferred {
                        path,
                        file: std::sync::OnceLock::new(),
                    }
                }
            }
        })
    }

    /// Whether lines are written at all.
    pub fn enabled(&self) -> bool {
        !matches!(self, AccessLog::Off)
    }

    fn file(&self) -> Option<&File> {
        match self {
            AccessLog::Off => None,
            AccessLog::File(f) => Some(f),
            AccessLog::Deferred { path, file } => file
                .get_or_init(|| {
                    let opened = std::fs::OpenOptions::new().create(true).append(true).open(path);
                    match opened {
                        Ok(f) => Some(f),
                        Err(e) => {
                            tracing::error!(path = %path.display(), error = %e, "Cannot create the access log; access lines are dropped.");
                            None
                        }
                    }
                })
                .as_ref(),
        }
    }

    /// Writes one line for `rec`.
    pub fn write(&self, rec: &AccessRecord<'_>) {
        let Some(file) = self.file() else { return };
        let time = httpdate_rfc3339(rec.time);
        let mut line = serde_json::json!({
            "time": time,
            "request_id": rec.request_id,
            "client": rec.client.to_string(),
            "method": rec.method,
            "path": rec.path,
            "route": rec.route,
            "upstream": rec.upstream,
            "status": rec.status,
            "bytes_in": rec.bytes_in,
            "bytes_out": rec.bytes_out,
            "duration_ms": rec.duration.as_secs_f64() * 1000.0,
            "upstream_duration_ms": rec.upstream_duration.map(|d| d.as_secs_f64() * 1000.0),
            "aborted": rec.aborted,
        });
        if let Some(status) = rec.grpc_status {
            line["grpc_status"] = status.into();
        }
        let mut buf = line.to_string().into_bytes();
        buf.push(b'\n');
        let _ = (&*file).write_all(&buf);
    }
}

/// RFC 3339 UTC time with milliseconds, without pulling in a date crate.
pub fn httpdate_rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (h, m, s) = (rem / 3600, rem % 3600 / 60, rem % 60);
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{s:02}.{:03}Z",
        d.subsec_millis()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opening_a_new_log_file_creates_it_only_on_the_first_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("access.log");
        let log = AccessLog::open("file", path.to_str()).unwrap();
        assert!(!path.exists(), "validating a config must not create files");
        log.write(&AccessRecord {
            time: SystemTime::UNIX_EPOCH,
            request_id: "id-1",
            client: "127.0.0.1:1".parse().unwrap(),
            method: "GET",
            path: "/",
            route: "r",
            upstream: None,
            status: 200,
            bytes_in: 0,
            bytes_out: 2,
            duration: Duration::from_millis(1),
            upstream_duration: None,
            aborted: false,
            grpc_status: None,
        });
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("\"request_id\":\"id-1\""), "{text}");
        assert!(
            !text.contains("grpc_status"),
            "only gRPC calls have it: {text}"
        );
        let missing = dir.path().join("nope").join("access.log");
        assert!(AccessLog::open("file", missing.to_str()).is_err());
    }

    #[test]
    fn formats_rfc3339_dates() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        assert_eq!(httpdate_rfc3339(t), "2023-11-14T22:13:20.123Z");
    }

    #[test]
    fn renders_requests_by_route_and_status() {
        let m = Metrics::default();
        m.route("api").record(200, Duration::from_millis(3));
        m.route("api").record(502, Duration::from_millis(3));
        let text = m.render();
        assert!(text.contains("sluicegate_requests_total{route=\"api\",status=\"200\"} 1"));
        assert!(text.contains("sluicegate_requests_total{route=\"api\",status=\"502\"} 1"));
        assert!(text.contains("sluicegate_request_duration_seconds_count{route=\"api\"} 2"));
    }
}
