//! The configuration format: the serde types of the YAML file as it is written, section by
//! section, with `deny_unknown_fields` so a misspelt key is an error with its path and line
//! (read through the vocabulary crate's [`yaml`](sluicegate_core::yaml) nodes).
//!
//! Invariant: this crate describes and checks shapes; it builds nothing. Turning a checked
//! file into a running snapshot (routes, plugin chains, scripts, upstream runtimes, TLS)
//! is the application crate's job, which knows all of them.

pub mod file;
pub mod queue;
pub mod retry;
pub mod upstream;

/// Splits `host:port` (IPv6 as `[::1]:80`).
pub fn split_host_port(addr: &str) -> Option<(String, u16)> {
    let (host, port) = addr.rsplit_once(':')?;
    let port: u16 = port.parse().ok()?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    (!host.is_empty()).then(|| (host.to_string(), port))
}
