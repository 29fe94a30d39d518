//! The last good configuration on disk: after each applied revision the node writes its
//! entities to `data_dir/cluster/last-good.json` (written to a temporary file, fsynced,
//! renamed), so a node started while the store is down serves that revision.
//!
//! A follower keeps a [`Writer`]: each entity is serialized once, when it changes, so the
//! copy after one change among 10,000 routes costs one entity's serialization and a copy
//! of bytes, not the whole set's.

use std::collections::HashMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::Value;

use crate::entity::{Entities, Entry, Kind};

/// The copy's path under `data_dir`.
pub fn path(data_dir: &Path) -> PathBuf {
    data_dir.join("cluster").join("last-good.json")
}

/// Writes `entities` atomically: a reader sees the old copy or the new one, never a part.
pub fn write(data_dir: &Path, entities: &Entities) -> std::io::Result<()> {
    // Serialized whole first: to a file directly, each JSON token would be a write(2).
    let bytes = serde_json::to_vec(entities)?;
    replace(data_dir, &bytes)
}

/// One entity as last serialized: reused while the entity is the same (the same body,
/// shared by every revision that did not write it, and the same order and revision).
struct Serialized {
    body: Arc<Value>,
    ord: i64,
    revision: i64,
    /// `"name":{"ord":..,"revision":..,"body":..}`, as `Entities` serializes it.
    json: Vec<u8>,
}

impl Serialized {
    fn new(name: &str, entry: &Entry) -> std::io::Result<Serialized> {
        let mut json = serde_json::to_vec(name)?;
        json.push(b':');
        serde_json::to_writer(&mut json, entry)?;
        Ok(Serialized {
            body: entry.body.clone(),
            ord: entry.ord,
            revision: entry.revision,
            json,
        })
    }

    /// Whether these are `entry`'s bytes.
    fn is_of(&self, entry: &Entry) -> bool {
        Arc::ptr_eq(&self.body, &entry.body)
            && self.ord == entry.ord
            && self.revision == entry.revision
    }
}

/// Writes the copy after each applied revision, serializing only the entities that
/// changed since the last one it wrote. The bytes are those of [`write`] (what [`read`]
/// reads back).
#[derive(Default)]
pub struct Writer {
    cache: HashMap<Kind, HashMap<String, Serialized>>,
}

impl Writer {
    /// A writer that has serialized nothing yet.
    pub fn new() -> Writer {
        Writer::default()
    }

    /// Writes `entities` atomically under `data_dir`, like [`write`].
    pub fn write(&mut self, data_dir: &Path, entities: &Entities) -> std::io::Result<()> {
        let bytes = self.serialize(entities)?;
        replace(data_dir, &bytes)
    }

    /// `entities` as JSON, reusing each unchanged entity's bytes; forgets the entities
    /// that are gone.
    fn serialize(&mut self, entities: &Entities) -> std::io::Result<Vec<u8>> {
        let size: usize = self
            .cache
            .values()
            .flat_map(HashMap::values)
            .map(|s| s.json.len() + 1)
            .sum();
        let mut out = Vec::with_capacity(size + 64);
        out.extend_from_slice(b"{\"cluster_id\":");
        serde_json::to_writer(&mut out, &entities.cluster_id)?;
        out.extend_from_slice(b",\"revision\":");
        serde_json::to_writer(&mut out, &entities.revision)?;
        out.extend_from_slice(b",\"kinds\":{");
        self.cache
            .retain(|kind, _| entities.kinds.contains_key(kind));
        for (k, (kind, of_kind)) in entities.kinds.iter().enumerate() {
            if k > 0 {
                out.push(b',');
            }
            serde_json::to_writer(&mut out, kind)?;
            out.extend_from_slice(b":{");
            let cache = self.cache.entry(*kind).or_default();
            for (i, (name, entry)) in of_kind.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                if !cache.get(name.as_str()).is_some_and(|s| s.is_of(entry)) {
                    cache.insert(name.clone(), Serialized::new(name, entry)?);
                }
                if let Some(s) = cache.get(name.as_str()) {
                    out.extend_from_slice(&s.json);
                }
            }
            out.push(b'}');
            if cache.len() > of_kind.len() {
                cache.retain(|name, _| of_kind.contains_key(name));
            }
        }
        out.extend_from_slice(b"}}");
        Ok(out)
    }
}

/// Replaces the copy with `bytes`: a temporary file, fsynced, renamed, the directory
/// fsynced.
fn replace(data_dir: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let target = path(data_dir);
    let dir = target
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| data_dir.to_path_buf());
    std::fs::create_dir_all(&dir)?;
    let tmp = dir.join(".last-good.json.tmp");
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
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

    fn change(kind: Kind, name: &str, revision: i64, body: Option<serde_json::Value>) -> Change {
        Change {
            kind,
            name: name.into(),
            ord: revision,
            revision,
            body,
        }
    }

    #[test]
    fn the_writer_writes_what_serde_writes_as_entities_change() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = Writer::new();
        let mut e = Entities::empty("c\"1");
        w.write(dir.path(), &e).unwrap();
        assert_eq!(read(dir.path()).unwrap(), Some(e.clone()));
        let steps = vec![
            vec![
                change(
                    Kind::Upstreams,
                    "a",
                    1,
                    Some(serde_json::json!({"name": "a", "targets": ["127.0.0.1:1"]})),
                ),
                change(
                    Kind::Routes,
                    "r\u{e9}\"",
                    1,
                    Some(serde_json::json!({"name": "r\u{e9}\"", "upstream": "a"})),
                ),
                change(
                    Kind::Routes,
                    "s",
                    1,
                    Some(serde_json::json!({"name": "s", "upstream": "a"})),
                ),
            ],
            // One entity rewritten, one deleted, one kind appears.
            vec![
                change(
                    Kind::Routes,
                    "s",
                    2,
                    Some(serde_json::json!({"name": "s", "upstream": "a", "x": 1})),
                ),
                change(Kind::Routes, "r\u{e9}\"", 2, None),
                change(
                    Kind::Plugins,
                    "p",
                    2,
                    Some(serde_json::json!({"name": "p"})),
                ),
            ],
            // A kind emptied.
            vec![change(Kind::Plugins, "p", 3, None)],
            // A deleted name written again.
            vec![change(
                Kind::Routes,
                "r\u{e9}\"",
                4,
                Some(serde_json::json!({"name": "r\u{e9}\""})),
            )],
        ];
        for (revision, changes) in (1..).zip(steps) {
            e.apply(changes, revision);
            w.write(dir.path(), &e).unwrap();
            assert_eq!(
                read(dir.path()).unwrap(),
                Some(e.clone()),
                "revision {revision}"
            );
            assert_eq!(
                std::fs::read(path(dir.path())).unwrap(),
                serde_json::to_vec(&e).unwrap(),
                "revision {revision}"
            );
        }
    }
}
