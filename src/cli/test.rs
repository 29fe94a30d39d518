//! `sluicegate test [--tap] PATH...`: runs busted-style Lua spec files inside the real Lua
//! runtime (see `sluicegate_lua::spec`). Exit code 0 when every test passed, 1 when one failed,
//! 2 when no spec file could be found.

use std::path::PathBuf;

use super::EXIT_USAGE;

/// Runs the specs under `paths`; prints a readable report (TAP with `tap`).
pub fn test(paths: &[PathBuf], tap: bool) -> i32 {
    // Scripts under test reach `https` URLs with the gateway's own roots.
    sluicegate_lua::provide_http_tls(sluicegate_server::services::http_tls);
    match sluicegate_lua::spec::run(paths) {
        Ok(results) => {
            let stdout = std::io::stdout();
            let mut out = stdout.lock();
            sluicegate_lua::spec::report(&results, tap, &mut out)
        }
        Err(e) => {
            eprintln!("sluicegate test: {e}");
            EXIT_USAGE
        }
    }
}
