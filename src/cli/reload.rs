//! `sluicegate reload` and `sluicegate stop`: ask a running gateway through its admin API.
//! The admin address comes from `--admin`, or from the configuration file given with `-c`.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::Duration;

use super::{EXIT_FAILURE, EXIT_OK, EXIT_USAGE};
use sluicegate_telemetry::Metrics;

/// POSTs to `path` on the admin API and prints the answer; returns the exit code.
pub fn admin_post(config: Option<&Path>, admin: Option<String>, path: &str) -> i32 {
    let address = match (admin, config) {
        (Some(a), _) => a,
        (None, Some(c)) => match crate::config::load_snapshot(c, 1, 1, &Metrics::default()) {
            Ok(s) => match s.settings.admin_address {
                Some(a) => a,
                None => {
                    eprintln!(
                        "{}: the admin listener is disabled; nothing to talk to",
                        c.display()
                    );
                    return EXIT_USAGE;
                }
            },
            Err(e) => {
                eprintln!("{e}");
                return EXIT_USAGE;
            }
        },
        (None, None) => {
            eprintln!("give -c FILE or --admin HOST:PORT");
            return EXIT_USAGE;
        }
    };
    match post(&address, path) {
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
            eprintln!("cannot reach the admin API at {address}: {e}");
            EXIT_FAILURE
        }
    }
}

fn post(address: &str, path: &str) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect(address)?;
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    write!(
        stream,
        "POST {path} HTTP/1.1\r\nHost: {address}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}
