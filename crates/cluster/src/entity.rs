//! The shared configuration as a node holds it: every entity of every kind, by name, at one
//! cluster revision. Entities are the YAML file's entries with the same field names; the
//! set renders back into the file's sections ([`Entities::sections`]), which is what the
//! node validates and builds its snapshot from.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The kinds of shared entity, each a section of the configuration file and a collection
/// of the admin API (`/v1/<section>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// `upstreams:` entries.
    Upstreams,
    /// `routes:` entries (with their own `plugins`).
    Routes,
    /// Global `plugins:` entries.
    Plugins,
    /// `consumers:` entries (with their credentials).
    Consumers,
    /// `scripts:` entries (named Lua scripts on every route).
    Scripts,
    /// `certificates:` entries (served by SNI on TLS listeners).
    Certificates,
}

impl Kind {
    /// Every kind, in the order sections are rendered.
    pub const ALL: [Kind; 6] = [
        Kind::Upstreams,
        Kind::Routes,
        Kind::Plugins,
        Kind::Consumers,
        Kind::Scripts,
        Kind::Certificates,
    ];

    /// The section (and collection) name.
    pub fn section(self) -> &'static str {
        match self {
            Kind::Upstreams => "upstreams",
            Kind::Routes => "routes",
            Kind::Plugins => "plugins",
            Kind::Consumers => "consumers",
            Kind::Scripts => "scripts",
            Kind::Certificates => "certificates",
        }
    }

    /// The kind whose section is `name`.
    pub fn from_section(name: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.section() == name)
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.section())
    }
}

/// One stored entity.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    /// Creation order: entities render in it (routes and global plugins keep the order in
    /// which they were created, or given in `PUT /v1/config`).
    pub ord: i64,
    /// The cluster revision that last wrote it (its `ETag`).
    pub revision: i64,
    /// The entry as the YAML file would carry it, `name` included (shared: a new
    /// revision copies the set, not the bodies).
    pub body: Arc<Value>,
}

impl Entry {
    /// Whether `other` is the same write of the entity: the same order, revision and body
    /// (the body compared by pointer first: revisions that did not write it share it).
    pub fn same_write(&self, other: &Entry) -> bool {
        self.revision == other.revision
            && self.ord == other.ord
            && (Arc::ptr_eq(&self.body, &other.body) || self.body == other.body)
    }
}

/// One row of what changed since a revision: `body` is `None` for a deletion.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Change {
    /// The entity's kind.
    pub kind: Kind,
    /// The entity's name.
    pub name: String,
    /// Its creation order.
    pub ord: i64,
    /// The revision of this write.
    pub revision: i64,
    /// The new body, or `None` when the entity was deleted.
    pub body: Option<Value>,
}

/// Every entity at one revision of one cluster.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Entities {
    /// The store's identity: a replaced database has another, and a node that sees it
    /// resyncs from scratch.
    pub cluster_id: String,
    /// The revision these entities are at.
    pub revision: i64,
    /// The entities by kind and name.
    pub kinds: BTreeMap<Kind, imbl::HashMap<String, Entry>>,
    /// Which entities the last applies wrote or deleted, so that what consumes a revision
    /// (the routes-only build, the copy on disk) need not compare the two whole sets.
    #[serde(skip)]
    delta: Delta,
}

/// The entities written or deleted from revision `from` to `to`, in the order applied
/// (a name may come more than once). Bookkeeping, not content: two sets with the same
/// entities are equal whatever their deltas.
#[derive(Debug, Clone, Default)]
struct Delta {
    from: i64,
    to: i64,
    names: Vec<(Kind, String)>,
}

impl PartialEq for Delta {
    fn eq(&self, _: &Delta) -> bool {
        true
    }
}

impl Entities {
    /// An empty set of cluster `cluster_id` at revision 0.
    pub fn empty(cluster_id: &str) -> Entities {
        Entities {
            cluster_id: cluster_id.to_string(),
            ..Entities::default()
        }
    }

    /// A copy to apply the next revision to: its [`Entities::changed_since`] then answers
    /// for this set's revision.
    pub fn successor(&self) -> Entities {
        Entities {
            cluster_id: self.cluster_id.clone(),
            revision: self.revision,
            kinds: self.kinds.clone(),
            delta: Delta {
                from: self.revision,
                to: self.revision,
                names: Vec::new(),
            },
        }
    }

    /// The entities written or deleted since `revision`, when this set was derived from
    /// one at `revision` by [`Entities::apply`] (after [`Entities::successor`]); `None`
    /// when that is not known (compare the two sets instead).
    pub fn changed_since(&self, revision: i64) -> Option<&[(Kind, String)]> {
        (self.delta.from == revision && self.delta.to == self.revision)
            .then_some(self.delta.names.as_slice())
    }

    /// Applies `changes` (in any order: each row is the latest write of its entity) and
    /// moves to `revision`.
    pub fn apply(&mut self, changes: Vec<Change>, revision: i64) {
        if self.delta.to != self.revision {
            self.delta = Delta {
                from: self.revision,
                to: self.revision,
                names: Vec::new(),
            };
        }
        self.delta
            .names
            .extend(changes.iter().map(|c| (c.kind, c.name.clone())));
        for c in changes {
            let of_kind = self.kinds.entry(c.kind).or_default();
            match c.body {
                Some(body) => {
                    of_kind.insert(
                        c.name,
                        Entry {
                            ord: c.ord,
                            revision: c.revision,
                            body: Arc::new(body),
                        },
                    );
                }
                None => {
                    of_kind.remove(&c.name);
                }
            }
        }
        self.revision = self.revision.max(revision);
        self.delta.to = self.revision;
    }

    /// Entity `name` of `kind`.
    pub fn get(&self, kind: Kind, name: &str) -> Option<&Entry> {
        self.kinds.get(&kind)?.get(name)
    }

    /// The entities of `kind` in their order.
    pub fn ordered(&self, kind: Kind) -> Vec<(&str, &Entry)> {
        let mut out: Vec<(&str, &Entry)> = self
            .kinds
            .get(&kind)
            .map(|m| m.iter().map(|(n, e)| (n.as_str(), e)).collect())
            .unwrap_or_default();
        out.sort_by(|a, b| a.1.ord.cmp(&b.1.ord).then_with(|| a.0.cmp(b.0)));
        out
    }

    /// How many entities of `kind` there are.
    pub fn count(&self, kind: Kind) -> usize {
        self.kinds.get(&kind).map_or(0, imbl::HashMap::len)
    }

    /// The configuration file's sections (`upstreams`, `routes`, `plugins`), each a list in
    /// entity order; a kind without entities is left out.
    pub fn sections(&self) -> serde_json::Map<String, Value> {
        let mut out = serde_json::Map::new();
        for kind in Kind::ALL {
            let list: Vec<Value> = self
                .ordered(kind)
                .into_iter()
                .map(|(_, e)| Value::clone(&e.body))
                .collect();
            if !list.is_empty() {
                out.insert(kind.section().to_string(), Value::Array(list));
            }
        }
        out
    }

    /// Where entity `name` of `kind` sits in its section (the index `sluicegate check`
    /// would name in a path).
    pub fn index_of(&self, kind: Kind, name: &str) -> Option<usize> {
        self.ordered(kind).iter().position(|(n, _)| *n == name)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    fn change(kind: Kind, name: &str, ord: i64, revision: i64, body: Option<Value>) -> Change {
        Change {
            kind,
            name: name.into(),
            ord,
            revision,
            body,
        }
    }

    #[test]
    fn a_successor_knows_what_changed_since_its_base_and_a_copy_does_not() {
        let row = |name: &str, revision: i64| Change {
            kind: Kind::Routes,
            name: name.into(),
            ord: revision,
            revision,
            body: Some(serde_json::json!({"name": name})),
        };
        let mut e = Entities::empty("c");
        e.apply(vec![row("a", 1)], 1);
        let mut next = e.successor();
        next.apply(vec![row("b", 2)], 2);
        next.apply(vec![row("c", 3)], 3);
        let names = |v: &[(Kind, String)]| v.iter().map(|(_, n)| n.clone()).collect::<Vec<_>>();
        assert_eq!(
            next.changed_since(1).map(names),
            Some(vec!["b".to_string(), "c".into()])
        );
        assert_eq!(
            next.changed_since(2),
            None,
            "only from the base it was made from"
        );
        // A plain copy applied to goes on from the copy's base, so it cannot say what
        // changed since the copy's own revision.
        let mut copy = next.clone();
        copy.apply(vec![row("d", 4)], 4);
        assert_eq!(copy.changed_since(3), None);
        assert_eq!(copy.changed_since(1).map(names).map(|v| v.len()), Some(3));
        assert_eq!(copy, {
            let mut whole = Entities::empty("c");
            whole.apply(vec![row("a", 1), row("b", 2), row("c", 3), row("d", 4)], 4);
            whole
        });
    }

    #[test]
    fn changes_upsert_and_delete_and_sections_keep_creation_order() {
        let mut e = Entities::empty("c1");
        e.apply(
            vec![
                change(Kind::Routes, "b", 2, 1, Some(json!({"name": "b"}))),
                change(Kind::Routes, "a", 1, 1, Some(json!({"name": "a"}))),
                change(Kind::Upstreams, "u", 3, 1, Some(json!({"name": "u"}))),
            ],
            1,
        );
        assert_eq!(e.index_of(Kind::Routes, "b"), Some(1));
        e.apply(
            vec![
                change(Kind::Routes, "a", 1, 2, None),
                change(Kind::Routes, "b", 2, 2, Some(json!({"name": "b", "x": 1}))),
            ],
            2,
        );
        assert_eq!(e.revision, 2);
        assert_eq!(
            Value::Object(e.sections()),
            json!({"upstreams": [{"name": "u"}], "routes": [{"name": "b", "x": 1}]})
        );
        assert_eq!(e.get(Kind::Routes, "b").unwrap().revision, 2);
    }

    #[test]
    fn kinds_name_their_sections() {
        for k in Kind::ALL {
            assert_eq!(Kind::from_section(k.section()), Some(k));
        }
        assert_eq!(Kind::from_section("listeners"), None);
    }
}
