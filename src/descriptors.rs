//! File descriptors: every client connection, upstream connection, queue segment and log
//! file takes one, and a gateway that runs out stops accepting. At start the soft
//! `RLIMIT_NOFILE` is raised to the hard limit (systemd and most shells start services at
//! a soft limit of 1024), and `/metrics` shows how many are open against the limit.

use std::fmt::Write as _;

use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};

/// Raises the soft descriptor limit to the hard one and logs both; a failure is logged
/// and leaves the limit as it was.
pub fn raise_limit() {
    let before = getrlimit(Resource::Nofile);
    if before.current == before.maximum {
        tracing::info!(soft = %shown(before.current), hard = %shown(before.maximum), "File descriptor limit.");
        return;
    }
    let raised = Rlimit {
        current: before.maximum,
        maximum: before.maximum,
    };
    match setrlimit(Resource::Nofile, raised) {
        Ok(()) => tracing::info!(
            was = %shown(before.current),
            soft = %shown(raised.current),
            hard = %shown(raised.maximum),
            "Raised the file descriptor limit to the hard limit."
        ),
        Err(e) => tracing::warn!(
            soft = %shown(before.current),
            hard = %shown(before.maximum),
            error = %e,
            "Cannot raise the file descriptor limit; it stays as it was."
        ),
    }
}

/// A limit as logged: its number, or `unlimited`.
fn shown(limit: Option<u64>) -> String {
    limit.map_or_else(|| "unlimited".to_owned(), |n| n.to_string())
}

/// Descriptors this process has open (entries of `/proc/self/fd`, minus the one reading it).
fn open_count() -> Option<u64> {
    let entries = std::fs::read_dir("/proc/self/fd").ok()?;
    Some((entries.count() as u64).saturating_sub(1))
}

/// Appends `sluicegate_process_open_fds` and `sluicegate_process_max_fds` (the soft limit)
/// in the Prometheus text format.
pub fn render_metrics(out: &mut String) {
    if let Some(open) = open_count() {
        let _ = writeln!(
            out,
            "# HELP sluicegate_process_open_fds File descriptors the process has open.\n\
             # TYPE sluicegate_process_open_fds gauge\n\
             sluicegate_process_open_fds {open}"
        );
    }
    if let Some(max) = getrlimit(Resource::Nofile).current {
        let _ = writeln!(
            out,
            "# HELP sluicegate_process_max_fds The soft limit on open file descriptors.\n\
             # TYPE sluicegate_process_max_fds gauge\n\
             sluicegate_process_max_fds {max}"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_open_descriptors_and_the_limit() {
        let mut out = String::new();
        render_metrics(&mut out);
        let value = |name: &str| -> u64 {
            out.lines()
                .find_map(|l| l.strip_prefix(&format!("{name} ")))
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("{name} missing in {out}"))
        };
        let open = value("sluicegate_process_open_fds");
        // stdin, stdout and stderr at least, and the file just opened is gone again.
        assert!(open >= 3, "{out}");
        assert!(value("sluicegate_process_max_fds") >= open, "{out}");
    }

    #[test]
    fn raising_the_limit_leaves_the_soft_limit_at_the_hard_one() {
        raise_limit();
        let now = getrlimit(Resource::Nofile);
        assert_eq!(now.current, now.maximum);
    }
}
