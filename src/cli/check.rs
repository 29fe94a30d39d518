//! `sluicegate check -c FILE`: validates a configuration without binding anything.

use std::path::Path;

use super::{EXIT_OK, EXIT_USAGE};
use sluicegate_telemetry::Metrics;

/// Validates `config`; prints every error (path and line) and returns 2, or returns 0.
pub fn check(config: &Path) -> i32 {
    match crate::config::load_snapshot(config, 1, 1, &Metrics::default()) {
        Ok(s) => {
            println!(
                "{}: ok ({} listeners, {} routes, {} upstreams)",
                config.display(),
                s.listeners.len(),
                s.routes.len(),
                s.upstreams.len()
            );
            EXIT_OK
        }
        Err(e) => {
            eprintln!("{e}");
            EXIT_USAGE
        }
    }
}
