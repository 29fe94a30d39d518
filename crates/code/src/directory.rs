//! The watched script directory: every `NAME.PHASE.lua` file directly in `code.directory.path`
//! is a script for that phase (`block-ip.access.lua`, `cors.header_filter.lua`), for every
//! host unless a comment line at the top says otherwise (`-- domain: ^api\.example\.com$`,
//! a regex searched in the host, like a code-API domain). Hidden files and other names are
//! ignored.
//!
//! Watching is polling: every 250 ms the directory's listing (name, size, modification
//! time) is compared with the last one, and only a difference reads the files (and every
//! 5 s, for filesystems with coarse modification times); only a changed set of scripts
//! goes to the reloader. Polling
//! was chosen over inotify-style notifications because it behaves the same on every
//! filesystem (network mounts, container volumes, Kubernetes ConfigMaps that swap a
//! symlink) and needs no extra dependency; a listing of a few hundred entries every 250 ms
//! costs nothing measurable, and a change applies within a second. A file caught half
//! written fails to compile, keeps the previous version running, and is picked up complete
//! on the next round.

use std::path::Path;
use std::time::{Duration, SystemTime};

use super::build::now;
use super::document::{ScriptSpec, SourceDoc};
use super::{Change, Source};
use sluicegate_core::phase::Phase;

/// How often the directory is listed.
pub const POLL: Duration = Duration::from_millis(250);

/// Every this many rounds (5 s) the files are read even when the listing looks the same:
/// on filesystems with coarse modification times, a rewrite of the same size within one
/// tick would otherwise go unnoticed.
pub const RESCAN_ROUNDS: u32 = 20;

/// Largest script file read (larger ones are reported, not loaded).
pub const MAX_FILE_BYTES: u64 = 1024 * 1024;

/// What a directory scan compares between two looks: each file's name, size and mtime.
pub type Listing = Vec<(String, u64, Option<SystemTime>)>;

/// The names, sizes and modification times of the directory's `*.lua` files.
pub fn listing(dir: &Path) -> std::io::Result<Listing> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') || !name.ends_with(".lua") {
            continue;
        }
        // `metadata` follows symlinks, so a swapped ConfigMap link counts as a change.
        let Ok(meta) = std::fs::metadata(entry.path()) else {
            continue;
        };
        if meta.is_file() {
            out.push((name, meta.len(), meta.modified().ok()));
        }
    }
    out.sort();
    Ok(out)
}

/// The phase in `NAME.PHASE.lua`.
fn phase_of(file: &str) -> Option<Phase> {
    let stem = file.strip_suffix(".lua")?;
    let (_, phase) = stem.rsplit_once('.')?;
    Phase::parse(phase)
}

/// The `-- domain: REGEX` line among the leading comment lines, if any.
fn domain_of(code: &str) -> String {
    for line in code.lines() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let Some(comment) = line.strip_prefix("--") else {
            break;
        };
        if let Some(d) = comment.trim().strip_prefix("domain:") {
            return d.trim().to_string();
        }
    }
    "*".to_string()
}

/// Reads every script file of `dir` into a source document.
pub fn scan(dir: &Path) -> std::io::Result<SourceDoc> {
    let mut specs = Vec::new();
    for (name, len, _) in listing(dir)? {
        let mut spec = ScriptSpec {
            name: name.clone(),
            phase: phase_of(&name),
            domain: "*".to_string(),
            code: String::new(),
            problem: None,
        };
        if spec.phase.is_none() {
            spec.problem = Some(format!(
                "the file name must be NAME.PHASE.lua with PHASE one of rewrite, access, content, header_filter, body_filter, log; got `{name}`"
            ));
        } else if len > MAX_FILE_BYTES {
            spec.problem = Some(format!(
                "the file is {len} bytes; scripts are limited to {MAX_FILE_BYTES}"
            ));
        } else {
            match std::fs::read(dir.join(&name)) {
                Ok(bytes) => match String::from_utf8(bytes) {
                    Ok(code) => {
                        spec.domain = domain_of(&code);
                        spec.code = code;
                    }
                    Err(_) => spec.problem = Some("the file is not UTF-8 text".to_string()),
                },
                Err(e) => spec.problem = Some(format!("cannot read the file: {e}")),
            }
        }
        specs.push(spec);
    }
    Ok(SourceDoc::enabled(specs))
}

/// Loads the directory once at start (before workers serve).
pub fn load_at_start(registry: &super::CodeRegistry, settings: &super::CodeSettings) {
    let Some(dir) = &settings.directory else {
        return;
    };
    registry.with_sources(|s| {
        let d = &mut s[Source::Directory.index()];
        d.configured = true;
        d.location = Some(dir.display().to_string());
        d.last_check_at = Some(now());
    });
    match scan(dir) {
        Ok(doc) => {
            registry.apply(
                Change::Replace(Source::Directory, Some(doc)),
                "start",
                Some(settings),
            );
            registry.with_sources(|s| {
                s[Source::Directory.index()].last_result = Some("updated".into())
            });
        }
        Err(e) => {
            let e = format!("cannot read the directory {}: {e}", dir.display());
            tracing::error!(error = %e, "Script directory unreadable.");
            registry.with_sources(|s| {
                let d = &mut s[Source::Directory.index()];
                d.last_result = Some("error".into());
                d.last_error = Some(e);
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_phase_from_the_name_and_domain_from_a_leading_comment() {
        assert_eq!(phase_of("block-ip.access.lua"), Some(Phase::Access));
        assert_eq!(phase_of("x.header_filter.lua"), Some(Phase::HeaderFilter));
        assert_eq!(phase_of("x.lua"), None);
        assert_eq!(
            domain_of("-- blocks\n-- domain: ^api\\.\nreturn"),
            "^api\\."
        );
        assert_eq!(domain_of("return\n-- domain: late"), "*");
    }

    #[test]
    fn scans_scripts_and_reports_badly_named_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.access.lua"), "return").unwrap();
        std::fs::write(dir.path().join("b.lua"), "return").unwrap();
        std::fs::write(dir.path().join(".hidden.access.lua"), "return").unwrap();
        std::fs::write(dir.path().join("notes.txt"), "x").unwrap();
        let doc = scan(dir.path()).unwrap();
        assert_eq!(doc.specs.len(), 2);
        assert!(doc.specs[0].problem.is_none());
        assert!(doc.specs[1]
            .problem
            .as_deref()
            .unwrap()
            .contains("NAME.PHASE.lua"));
    }
}
