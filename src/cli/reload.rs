//! `sluicegate reload` and `sluicegate stop`: ask a running gateway through its admin API.
//! The admin address comes from `--admin`, or from the configuration file given with `-c`.

use std::path::Path;

use super::admin_client::Admin;
use super::{EXIT_FAILURE, EXIT_OK, EXIT_USAGE};
use sluicegate_telemetry::Metrics;

/// POSTs to `path` on the admin API and prints the answer; returns the exit code.
pub fn admin_post(config: Option<&Path>, admin: Option<String>, path: &str) -> i32 {
    let settings = match config.map(|c| crate::config::load_snapshot(c, 1, 1, &Metrics::default()))
    {
        Some(Ok(s)) => Some(s.settings),
        Some(Err(e)) => {
            eprintln!("{e}");
            return EXIT_USAGE;
        }
        None => None,
    };
    let address = match (admin, config, &settings) {
        (Some(a), _, _) => a,
        (None, Some(c), Some(s)) => match s.admin_address.clone() {
            Some(a) => a,
            None => {
                eprintln!(
                    "{}: the admin listener is disabled; nothing to talk to",
                    c.display()
                );
                return EXIT_USAGE;
            }
        },
        _ => {
            eprintln!("give -c FILE or --admin HOST:PORT");
            return EXIT_USAGE;
        }
    };
    let admin = Admin::new(address, settings.as_ref());
    match admin.call("POST", path) {
        Ok((status, body)) => {
            println!("{body}");
            match status {
                200..=299 => EXIT_OK,
                // The gateway rejected the configuration: a bad-config outcome, like `check`.
                422 => EXIT_USAGE,
                _ => EXIT_FAILURE,
            }
        }
        Err(e) => {
            eprintln!("cannot reach the admin API at {}: {e}", admin.address);
            EXIT_FAILURE
        }
    }
}
