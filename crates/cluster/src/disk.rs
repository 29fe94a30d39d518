//! The last good configuration on disk, so a node started while the store is down serves
//! the revision it last applied: `data_dir/cluster/last-good.json` holds every entity at
//! one revision (written to a temporary file, fsynced, renamed), and
//! `data_dir/cluster/last-good.log` the revisions applied since, one line each with only
//! the entities that changed (appended, fsynced).
//!
//! A follower keeps a [`Writer`]: after one change among 10,000 routes it appends one line
//! of one entity, not the whole set. Once the log outgrows the copy, the writer writes the
//! whole set again (each unchanged entity's bytes reused) and empties the log. A line cut
//! short by a crash is ignored when the copy is read: the copy is then the revision before.

use std::collections::HashMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::entity::{Change, Entities, Entry, Kind};

/// The copy's path under `data_dir`.
pub fn path(data_dir: &Path) -> PathBuf {
    data_dir.join("cluster").join("last-good.json")
}

/// The log of the revisions applied since the copy, next to it.
fn log_path(data_dir: &Path) -> PathBuf {
    data_dir.join("cluster").join("last-good.log")
}

/// Writes `entities` atomically: a reader sees the old copy or the new one, never a part.
pub fn write(data_dir: &Path, entities: &Entities) -> std::io::Result<()> {
    // Serialized whole first: to a file directly, each JSON token would be a write(2).
    let bytes = serde_json::to_vec(entities)?;
    replace(data_dir, &bytes)
}

/// One line of the log: the entities revision `revision` of cluster `cluster_id` wrote or
/// deleted.
#[derive(Serialize, Deserialize)]
struct LogLine {
    cluster_id: String,
    revision: i64,
    changes: Vec<Change>,
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

/// Writes the copy after each applied revision: one line of what changed appended to the
/// log, or, once the log is larger than the copy (or the cluster changed), the whole set,
/// serializing only the entities that changed since it last did.
#[derive(Default)]
pub struct Writer {
    cache: HashMap<Kind, HashMap<String, Serialized>>,
    /// What the copy and the log hold together, and their sizes in bytes.
    written: Option<(Arc<Entities>, usize, usize)>,
}

/// The log is rewritten into the copy once it is larger than this or than the copy.
const LOG_MIN_BYTES: usize = 64 * 1024;

impl Writer {
    /// A writer that has written nothing yet.
    pub fn new() -> Writer {
        Writer::default()
    }

    /// Keeps `entities` under `data_dir`: [`read`] then returns them.
    pub fn write(&mut self, data_dir: &Path, entities: &Arc<Entities>) -> std::io::Result<()> {
        if let Some((before, copy_bytes, log_bytes)) = &self.written {
            if before.cluster_id == entities.cluster_id && before.revision < entities.revision {
                let line = LogLine {
                    cluster_id: entities.cluster_id.clone(),
                    revision: entities.revision,
                    changes: changes(before, entities),
                };
                let mut bytes = serde_json::to_vec(&line)?;
                bytes.push(b'\n');
                let logged = log_bytes + bytes.len();
                if logged <= LOG_MIN_BYTES.max(*copy_bytes) {
                    let first = *log_bytes == 0;
                    let copy_bytes = *copy_bytes;
                    // After a failed append the log may end in part of a line: the next
                    // write replaces the copy and starts the log over.
                    self.written = None;
                    append(data_dir, &bytes, first)?;
                    self.written = Some((entities.clone(), copy_bytes, logged));
                    return Ok(());
                }
            }
        }
        let bytes = self.serialize(entities)?;
        replace(data_dir, &bytes)?;
        self.written = Some((entities.clone(), bytes.len(), 0));
        Ok(())
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
                sluicegate_core::pace::point();
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

/// What turns `before` into `after`: each entity written since (or otherwise different)
/// and each one deleted.
fn changes(before: &Entities, after: &Entities) -> Vec<Change> {
    if let Some(names) = after.changed_since(before.revision) {
        // Each entity named once, as it now is.
        let mut seen = std::collections::HashSet::new();
        return names
            .iter()
            .filter(|n| seen.insert(*n))
            .map(|(kind, name)| change_of(after, *kind, name))
            .collect();
    }
    let written = after.kinds.iter().flat_map(|(kind, of_kind)| {
        of_kind
            .iter()
            .filter(|(name, e)| !before.get(*kind, name).is_some_and(|b| b.same_write(e)))
            .map(move |(name, _)| (*kind, name))
    });
    let deleted = before.kinds.iter().flat_map(|(kind, of_kind)| {
        of_kind
            .keys()
            .filter(|name| after.get(*kind, name).is_none())
            .map(move |name| (*kind, name))
    });
    written
        .chain(deleted)
        .map(|(kind, name)| change_of(after, kind, name))
        .collect()
}

/// Entity `name` of `kind` as `after` holds it: its write, or its deletion.
fn change_of(after: &Entities, kind: Kind, name: &str) -> Change {
    match after.get(kind, name) {
        Some(e) => Change {
            kind,
            name: name.to_string(),
            ord: e.ord,
            revision: e.revision,
            body: Some(Value::clone(&e.body)),
        },
        None => Change {
            kind,
            name: name.to_string(),
            ord: 0,
            revision: after.revision,
            body: None,
        },
    }
}

/// Appends one line to the log and fsyncs it (and the directory, when the line starts the
/// log: the file may be new).
fn append(data_dir: &Path, line: &[u8], first: bool) -> std::io::Result<()> {
    let log = log_path(data_dir);
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)?;
    f.write_all(line)?;
    f.sync_data()?;
    if first {
        if let Some(dir) = log.parent() {
            std::fs::File::open(dir)?.sync_all()?;
        }
    }
    Ok(())
}

/// Replaces the copy with `bytes` (a temporary file, fsynced, renamed, the directory
/// fsynced), then empties the log: until then its lines are of revisions the new copy
/// already holds, which [`read`] skips.
fn replace(data_dir: &Path, bytes: &[u8]) -> std::io::Result<()> {
    replace_copy(data_dir, bytes)?;
    match std::fs::remove_file(log_path(data_dir)) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

fn replace_copy(data_dir: &Path, bytes: &[u8]) -> std::io::Result<()> {
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

/// The copy with the revisions logged since, if there is one; an unreadable or damaged
/// copy or log is an error (never silently an empty configuration). A last line cut short
/// (a crash while it was appended) is left out: that revision was not kept.
pub fn read(data_dir: &Path) -> Result<Option<Entities>, String> {
    let p = path(data_dir);
    let mut entities: Entities = match std::fs::read(&p) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| format!("{}: {e}", p.display()))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("{}: {e}", p.display())),
    };
    let log = log_path(data_dir);
    let bytes = match std::fs::read(&log) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Some(entities)),
        Err(e) => return Err(format!("{}: {e}", log.display())),
    };
    let complete = bytes
        .iter()
        .rposition(|b| *b == b'\n')
        .map_or(&[][..], |end| &bytes[..end]);
    for (i, line) in complete.split(|b| *b == b'\n').enumerate() {
        if line.is_empty() {
            continue;
        }
        let line: LogLine = serde_json::from_slice(line)
            .map_err(|e| format!("{}: line {}: {e}", log.display(), i + 1))?;
        if line.cluster_id == entities.cluster_id && line.revision > entities.revision {
            entities.apply(line.changes, line.revision);
        }
    }
    Ok(Some(entities))
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
    fn the_changes_a_revision_names_are_those_a_comparison_of_the_sets_finds() {
        let body = |n: &str, t: &str| Some(serde_json::json!({"name": n, "targets": [t]}));
        let mut before = Entities::empty("c");
        before.apply(
            vec![
                change(Kind::Upstreams, "a", 1, body("a", "127.0.0.1:1")),
                change(Kind::Upstreams, "b", 1, body("b", "127.0.0.1:2")),
                change(Kind::Routes, "r", 1, Some(serde_json::json!({"name": "r"}))),
            ],
            1,
        );
        let mut after = before.successor();
        after.apply(
            vec![
                change(Kind::Upstreams, "a", 2, body("a", "127.0.0.1:3")),
                change(Kind::Upstreams, "b", 2, None),
                change(Kind::Upstreams, "n", 2, body("n", "127.0.0.1:4")),
            ],
            2,
        );
        after.apply(
            vec![change(Kind::Upstreams, "a", 3, body("a", "127.0.0.1:5"))],
            3,
        );
        assert!(after.changed_since(1).is_some());
        // The same set without its record of what changed: compared whole.
        let compared: Entities =
            serde_json::from_slice(&serde_json::to_vec(&after).unwrap()).unwrap();
        assert!(compared.changed_since(1).is_none());
        let sorted = |mut v: Vec<Change>| {
            v.sort_by(|x, y| (x.kind, &x.name).cmp(&(y.kind, &y.name)));
            v
        };
        let named = sorted(changes(&before, &after));
        assert_eq!(named, sorted(changes(&before, &compared)));
        assert_eq!(
            named.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(),
            ["a", "b", "n"]
        );
    }

    #[test]
    fn the_writer_writes_what_serde_writes_as_entities_change() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = Writer::new();
        let mut e = Entities::empty("c\"1");
        w.write(dir.path(), &Arc::new(e.clone())).unwrap();
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
            // Appended to the log (the set is small: the log stays under its floor) ...
            w.write(dir.path(), &Arc::new(e.clone())).unwrap();
            assert!(log_path(dir.path()).exists(), "revision {revision}");
            assert_eq!(
                read(dir.path()).unwrap(),
                Some(e.clone()),
                "revision {revision}"
            );
            // ... and, written whole by a fresh writer, the bytes serde writes.
            Writer::new()
                .write(dir.path(), &Arc::new(e.clone()))
                .unwrap();
            assert!(!log_path(dir.path()).exists());
            assert_eq!(
                std::fs::read(path(dir.path())).unwrap(),
                serde_json::to_vec(&e).unwrap(),
                "revision {revision}"
            );
            w = Writer::new();
            w.write(dir.path(), &Arc::new(e.clone())).unwrap();
        }
    }

    /// `e` with route `name` written at the next revision.
    fn next_route(e: &Entities, name: &str, body: serde_json::Value) -> Arc<Entities> {
        let mut next = e.clone();
        let revision = e.revision + 1;
        next.apply(
            vec![change(Kind::Routes, name, revision, Some(body))],
            revision,
        );
        Arc::new(next)
    }

    #[test]
    fn the_log_grows_by_the_change_and_is_folded_into_the_copy_once_larger() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = Writer::new();
        let mut e = Arc::new(Entities::empty("c"));
        for i in 0..100 {
            e = next_route(
                &e,
                &format!("r{i}"),
                serde_json::json!({"name": format!("r{i}")}),
            );
        }
        w.write(dir.path(), &e).unwrap();
        let copy = std::fs::read(path(dir.path())).unwrap();
        // One change: one line with one entity; the copy is untouched.
        e = next_route(&e, "r7", serde_json::json!({"name": "r7", "x": 1}));
        w.write(dir.path(), &e).unwrap();
        let log = std::fs::read_to_string(log_path(dir.path())).unwrap();
        assert_eq!(log.lines().count(), 1);
        assert_eq!(log.matches("\"name\"").count(), 2, "{log}"); // the key and the body's
        assert_eq!(std::fs::read(path(dir.path())).unwrap(), copy);
        assert_eq!(read(dir.path()).unwrap().as_ref(), Some(&*e));
        // Until the log outgrows its floor: then the copy holds everything, the log is gone.
        let mut folded = false;
        for k in 0..2000 {
            e = next_route(&e, "r8", serde_json::json!({"name": "r8", "k": k}));
            w.write(dir.path(), &e).unwrap();
            if !log_path(dir.path()).exists() {
                folded = true;
                break;
            }
        }
        assert!(folded, "the log was never folded into the copy");
        assert_eq!(
            std::fs::read(path(dir.path())).unwrap(),
            serde_json::to_vec(&*e).unwrap()
        );
        // A deletion is logged too.
        let mut gone = Entities::clone(&e);
        let revision = gone.revision + 1;
        gone.apply(vec![change(Kind::Routes, "r9", revision, None)], revision);
        let gone = Arc::new(gone);
        w.write(dir.path(), &gone).unwrap();
        assert_eq!(read(dir.path()).unwrap().as_ref(), Some(&*gone));
    }

    #[test]
    fn a_line_cut_short_is_left_out_and_a_damaged_one_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = Writer::new();
        let e1 = next_route(&Entities::empty("c"), "a", serde_json::json!({"name": "a"}));
        w.write(dir.path(), &e1).unwrap();
        let e2 = next_route(&e1, "b", serde_json::json!({"name": "b"}));
        w.write(dir.path(), &e2).unwrap();
        let e3 = next_route(&e2, "c", serde_json::json!({"name": "c"}));
        w.write(dir.path(), &e3).unwrap();
        let log = std::fs::read(log_path(dir.path())).unwrap();
        // The last line cut anywhere: the revision before it.
        let second = log.iter().position(|b| *b == b'\n').unwrap() + 1;
        for cut in [second, second + 1, log.len() - 1] {
            std::fs::write(log_path(dir.path()), &log[..cut]).unwrap();
            assert_eq!(
                read(dir.path()).unwrap().as_ref(),
                Some(&*e2),
                "cut at {cut}"
            );
        }
        // A complete line that does not parse is damage, reported with the log's name.
        let mut damaged = b"{\"cluster_id\": 1}\n".to_vec();
        damaged.extend_from_slice(&log);
        std::fs::write(log_path(dir.path()), &damaged).unwrap();
        let err = read(dir.path()).unwrap_err();
        assert!(err.contains("last-good.log: line 1"), "{err}");
        // Lines of another cluster, or of revisions the copy holds, are skipped.
        let mut other = Writer::new();
        let x = next_route(
            &Entities::empty("other"),
            "x",
            serde_json::json!({"name": "x"}),
        );
        std::fs::write(log_path(dir.path()), &log).unwrap();
        std::fs::write(path(dir.path()), serde_json::to_vec(&*e3).unwrap()).unwrap();
        assert_eq!(read(dir.path()).unwrap().as_ref(), Some(&*e3));
        other.write(dir.path(), &x).unwrap();
        std::fs::write(log_path(dir.path()), &log).unwrap();
        assert_eq!(read(dir.path()).unwrap().as_ref(), Some(&*x));
    }
}
