//! Configuration loading: YAML (or JSON) text through `sluicegate_core::yaml` (line
//! numbers, `${VAR}` interpolation), the format of `sluicegate_config` and the whole
//! validation into a snapshot (`sluicegate::config::load_snapshot_from_str`), as
//! `sluicegate check` and every reload run it.
//!
//! Relative file names resolve against an empty directory. Invariants: no panic; a
//! rejected text has at least one diagnostic, and every line a diagnostic names lies
//! within the text.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use sluicegate_telemetry::Metrics;

fn empty_dir() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir =
            std::env::temp_dir().join(format!("sluicegate-fuzz-config-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        dir
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let metrics = Metrics::default();
    match sluicegate::config::load_snapshot_from_str(text, "<fuzz>", empty_dir(), 1, 1, &metrics) {
        Ok(_) => {}
        Err(e) => {
            assert!(
                !e.diags.is_empty(),
                "a rejected configuration without a diagnostic"
            );
            // YAML breaks lines at CR LF, CR and LF (YAML 1.2 §5.4), as the reader counts them.
            let breaks = text.replace("\r\n", "\n").matches(['\n', '\r']).count();
            let lines = breaks + 2;
            for d in &e.diags {
                if let Some(line) = d.line {
                    assert!(line <= lines, "line {line} of {lines}: {d:?}");
                }
            }
        }
    }
});
