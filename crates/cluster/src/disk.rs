//! The last good configuration on disk: after each applied revision the node writes its
//! entities to `data_dir/cluster/last-good.json` (written to a temporary file, fsynced,
//! renamed), so a node started while the store is down serves that revision.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use crate::entity::Entities;

/// The copy's path under `data_dir`.
pub fn path(data_dir: &Path) -> PathBuf {
    data_dir.join("cluster").join("last-good.json")
}

/// Writes `entities` atomically: a reader sees the old copy or the new one, never a part.
pub fn write(data_dir: &Path, entities: &Entities) -> std::io::Result<()> {
    let target = path(data_dir);
    let dir = target
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| data_dir.to_path_buf());
    std::fs::create_dir_all(&dir)?;
    let tmp = dir.join(".last-good.json.tmp");
    // Serialized whole first: to a file directly, each JSON token would be a write(2).
    let bytes = serde_json::to_vec(entities)?;
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, &target)?;
    std::fs::File::open(&dir)?.sync_all()
}

/// The copy, if there is one; an unreadable or damaged copy is an error (never silently
/// an empty configuration).
pub fn read(data_dir: &Path) -> Result<Option<Entities>, String> {
    let p = path(data_dir);
    match std::fs::read(&p) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| format!("{}: {e}", p.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("{}: {e}", p.display())),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::entity::{Change, Kind};

    #[test]
    fn round_trips_and_reports_a_damaged_copy() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read(dir.path()).unwrap(), None);
        let mut e = Entities::empty("c");
        e.apply(
            vec![Change {
                kind: Kind::Upstreams,
                name: "a".into(),
                ord: 1,
                revision: 4,
                body: Some(serde_json::json!({"name": "a", "targets": ["127.0.0.1:1"]})),
            }],
            4,
        );
        write(dir.path(), &e).unwrap();
        assert_eq!(read(dir.path()).unwrap(), Some(e));
        std::fs::write(path(dir.path()), b"{\"cluster_id\": ").unwrap();
        assert!(read(dir.path()).unwrap_err().contains("last-good.json"));
    }
}
