//! The directory watcher: rescans the configured directory when its listing changes and
//! submits the scripts it holds.

use std::path::Path;
use std::sync::Arc;

use sluicegate_code::build::now;
use sluicegate_code::directory::{listing, scan, Listing, POLL, RESCAN_ROUNDS};
use sluicegate_code::{Change, Source, SourceDoc};

use crate::state::Shared;

/// Watches the configured directory for as long as the process runs.
pub async fn watch(shared: Arc<Shared>) {
    let mut last: Option<(std::path::PathBuf, Listing)> = None;
    let mut last_doc: Option<SourceDoc> = None;
    let mut last_error: Option<String> = None;
    let mut had_dir = false;
    let mut rounds: u32 = 0;
    // Subscribed before the first look at the snapshot, so no swap goes unnoticed.
    let mut swapped = shared.swapped.subscribe();
    loop {
        if had_dir || configured(&shared) {
            tokio::time::sleep(POLL).await;
        } else {
            // No directory: nothing to do until a reload configures one.
            let _ = swapped.changed().await;
        }
        rounds = rounds.wrapping_add(1);
        let snapshot = shared.snapshot.load_full();
        let Some(dir) = snapshot.code.as_ref().and_then(|c| c.directory.clone()) else {
            if had_dir {
                // The directory was removed from the configuration: so are its scripts.
                let _ = super::submit(
                    &shared,
                    Change::Replace(Source::Directory, None),
                    "directory",
                )
                .await;
                shared
                    .code
                    .with_sources(|s| s[Source::Directory.index()] = Default::default());
                had_dir = false;
            }
            last = None;
            last_doc = None;
            continue;
        };
        had_dir = true;
        let current = match listing(&dir) {
            Ok(l) => l,
            Err(e) => {
                let e = format!("cannot read the directory {}: {e}", dir.display());
                if last_error.as_deref() != Some(e.as_str()) {
                    tracing::error!(error = %e, "Script directory unreadable; its running scripts keep serving.");
                }
                record(&shared, &dir, "error", Some(e.clone()));
                last_error = Some(e);
                continue;
            }
        };
        last_error = None;
        let same_dir = last.as_ref().is_some_and(|(d, _)| *d == dir);
        if same_dir
            && last.as_ref().is_some_and(|(_, l)| *l == current)
            && !rounds.is_multiple_of(RESCAN_ROUNDS)
        {
            continue;
        }
        // The first round after start submits what start-up loaded already: the reloader
        // finds it identical and swaps nothing.
        last = Some((dir.clone(), current));
        match scan(&dir) {
            Ok(doc) if same_dir && last_doc.as_ref() == Some(&doc) => {}
            Ok(doc) => {
                last_doc = Some(doc.clone());
                let outcome = super::submit(
                    &shared,
                    Change::Replace(Source::Directory, Some(doc)),
                    "directory",
                )
                .await;
                let (result, error) = match outcome {
                    Some(o) if o.rejected.is_some() => ("rejected", o.rejected),
                    Some(o) if !o.errors.is_empty() => (
                        "updated",
                        Some(format!("{} script(s) not loaded", o.errors.len())),
                    ),
                    Some(o) if o.set.is_none() => ("unchanged", None),
                    Some(_) => ("updated", None),
                    None => ("error", Some("the reloader has stopped".to_string())),
                };
                record(&shared, &dir, result, error);
                if result == "updated" {
                    shared.code.with_sources(|s| {
                        s[Source::Directory.index()].last_change_at = Some(now())
                    });
                }
            }
            Err(e) => record(&shared, &dir, "error", Some(e.to_string())),
        }
    }
}

/// Whether the running configuration names a script directory.
fn configured(shared: &Shared) -> bool {
    shared
        .snapshot
        .load()
        .code
        .as_ref()
        .is_some_and(|c| c.directory.is_some())
}

fn record(shared: &Shared, dir: &Path, result: &str, error: Option<String>) {
    shared.code.with_sources(|s| {
        let d = &mut s[Source::Directory.index()];
        d.configured = true;
        d.location = Some(dir.display().to_string());
        d.last_check_at = Some(now());
        d.last_result = Some(result.to_string());
        d.last_error = error;
    });
}
