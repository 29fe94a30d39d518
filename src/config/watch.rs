//! `watch_config: true`: reloads when the configuration file changes.
//!
//! The file is polled every 250 ms and its content hashed; a different hash sends one
//! reload request (trigger `watch`) to the one reloader, which validates the new file and
//! swaps it in or keeps the running configuration and reports why. Polling the content
//! (not inotify, not only the modification time) catches editors that replace the file,
//! symlink swaps (Kubernetes ConfigMaps) and network filesystems alike, and never reloads
//! for a `touch`. A rejected file is not retried until its content changes again.

use std::sync::Arc;
use std::time::Duration;

use crate::state::Shared;

/// How often the file is read.
pub const POLL: Duration = Duration::from_millis(250);

/// SHA-256 of a configuration text.
pub fn digest(bytes: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).into()
}

/// Watches the running configuration's file for as long as the process runs.
pub async fn watch(shared: Arc<Shared>) {
    // Subscribed before the first look at the snapshot, so no swap goes unnoticed.
    let mut swapped = shared.swapped.subscribe();
    // The last content a reload was asked for (so a rejected file is not retried).
    let mut attempted: Option<[u8; 32]> = None;
    loop {
        if !shared.snapshot.load().watch_config {
            // Not watched: nothing to do until a reload (by signal or the admin API)
            // turns watching on.
            attempted = None;
            let _ = swapped.changed().await;
            continue;
        }
        tokio::time::sleep(POLL).await;
        let snapshot = shared.snapshot.load_full();
        if !snapshot.watch_config {
            continue;
        }
        let Ok(bytes) = std::fs::read(&snapshot.source) else {
            // Mid-replacement or gone: the next round looks again.
            continue;
        };
        let hash = digest(&bytes);
        if hash == snapshot.source_digest || attempted == Some(hash) {
            continue;
        }
        attempted = Some(hash);
        tracing::info!(file = %snapshot.source.display(), "Configuration file changed; reloading.");
        let _ = shared.reload("watch").await;
    }
}
