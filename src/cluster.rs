//! Cluster mode in the application: the store's entities become the file's `upstreams`,
//! `routes` and `plugins` sections ([`merge`]), are validated exactly as `sluicegate check`
//! validates a file ([`check`]), and are swapped in through the one reloader ([`Applier`]).

use std::path::Path;
use std::sync::Arc;

use serde_json::Value;

use crate::config::validate::RouteSource;
use crate::state::{Route, Shared};
use sluicegate_cluster::{Cluster, Entities, Entry, Kind, StoreConfig};
use sluicegate_core::diag::{Diag, Diags, Path as DiagPath};
use sluicegate_core::yaml::{Node, NodeKind};
use sluicegate_proxy::settings::ClusterSettings;

/// With a `cluster:` section, fills the sections the store holds from `entities`; those
/// sections may not also be in the file (one source for each entity). Without one, leaves
/// `root` alone.
pub fn merge(root: &mut Node, entities: Option<&Entities>) -> Result<(), Vec<Diag>> {
    if root.get("cluster").is_none() {
        return Ok(());
    }
    let NodeKind::Map(entries) = &mut root.kind else {
        return Ok(());
    };
    let mut diags = Diags::default();
    for (key, node) in entries.iter() {
        if Kind::from_section(key).is_some() {
            diags.0.push(Diag {
                path: DiagPath::root().key(key).to_string(),
                line: Some(node.line),
                message: format!(
                    "with a `cluster:` section, {key} live in the cluster store: manage them through the admin API (`/v1/{key}`), not in the file"
                ),
            });
        }
    }
    if !diags.is_empty() {
        return Err(diags.0);
    }
    if let Some(e) = entities {
        for kind in Kind::ALL {
            let items: Vec<Node> = e
                .ordered(kind)
                .into_iter()
                .map(|(_, entry)| from_json(&entry.body))
                .collect();
            if !items.is_empty() {
                let list = Node {
                    kind: NodeKind::Seq(items),
                    line: 0,
                };
                entries.push((kind.section().to_string(), list));
            }
        }
    }
    Ok(())
}

/// Where each route of `next` comes from when it differs from `prev` (what `current`'s
/// routes were built from) in routes only: an unchanged route is `current`'s, a new or
/// changed one is built from its body. `None` when another kind or the cluster changed,
/// when most routes changed (a whole build costs no more), or when a changed route names a
/// secret (the secrets are resolved where they are taken, which a whole build tracks).
pub fn route_changes(
    prev: &Entities,
    next: &Entities,
    current: &[Arc<Route>],
) -> Option<Vec<RouteSource>> {
    if prev.cluster_id != next.cluster_id
        || next.revision < prev.revision
        || current.len() != prev.count(Kind::Routes)
    {
        return None;
    }
    // The routes written since `prev`: from what `next` says it was derived by, or else by
    // comparing the two sets (a route written since has a later revision; every other
    // entity must be the very write `prev` has).
    let mut written = Vec::new();
    if let Some(names) = next.changed_since(prev.revision) {
        let mut seen = std::collections::HashSet::new();
        for (kind, name) in names {
            if *kind != Kind::Routes {
                return None;
            }
            if !seen.insert(name.as_str()) {
                continue;
            }
            if let Some(e) = next.get(Kind::Routes, name) {
                if names_secret(&e.body) {
                    return None;
                }
                written.push((name.as_str(), e));
            }
        }
    } else {
        let same = |kind: Kind| {
            let (a, b) = (prev.kinds.get(&kind), next.kinds.get(&kind));
            a.map_or(0, |m| m.len()) == b.map_or(0, |m| m.len())
                && a.into_iter()
                    .flatten()
                    .all(|(name, e)| next.get(kind, name).is_some_and(|n| e.same_write(n)))
        };
        if !Kind::ALL
            .into_iter()
            .filter(|k| *k != Kind::Routes)
            .all(same)
        {
            return None;
        }
        for (name, e) in next.kinds.get(&Kind::Routes).into_iter().flatten() {
            if e.revision > prev.revision {
                if names_secret(&e.body) {
                    return None;
                }
                written.push((name.as_str(), e));
            } else if !prev
                .get(Kind::Routes, name)
                .is_some_and(|p| p.same_write(e))
            {
                return None;
            }
        }
    }
    let count = next.count(Kind::Routes);
    if written.len() > count / 2 {
        return None;
    }
    // Routes changed in place (none added, removed or moved): the order is `current`'s.
    if count == current.len()
        && written
            .iter()
            .all(|(name, e)| prev.get(Kind::Routes, name).is_some_and(|p| p.ord == e.ord))
    {
        // A few written routes are looked for by comparing names (cheaper, over every
        // route, than hashing each name).
        let by_name: Option<std::collections::HashMap<&str, &Entry>> =
            (written.len() > 8).then(|| written.iter().copied().collect());
        let find = |name: &str| match &by_name {
            Some(m) => m.get(name).copied(),
            None => written.iter().find(|(n, _)| *n == name).map(|(_, e)| *e),
        };
        let out: Vec<RouteSource> = current
            .iter()
            .enumerate()
            .map(|(j, r)| match find(r.name.as_str()) {
                Some(e) => RouteSource::Build(from_json(&e.body)),
                None => RouteSource::Keep(j),
            })
            .collect();
        // Each route written is one of `current`'s by name (not one a body renamed).
        let found = out
            .iter()
            .filter(|s| matches!(s, RouteSource::Build(_)))
            .count();
        return (found == written.len()).then_some(out);
    }
    // Otherwise `current`'s routes are `prev`'s in entity order, and so is `next`'s list:
    // one walk pairs each route of `next` with its earlier write, if it had one.
    let before = prev.ordered(Kind::Routes);
    let mut j = 0;
    let out = next
        .ordered(Kind::Routes)
        .into_iter()
        .map(|(name, entry)| {
            while before
                .get(j)
                .is_some_and(|b| (b.1.ord, b.0) < (entry.ord, name))
            {
                j += 1;
            }
            let kept = before
                .get(j)
                .filter(|(n, e)| *n == name && e.same_write(entry))
                .filter(|_| current.get(j).is_some_and(|r| r.name == name));
            match kept {
                Some(_) => RouteSource::Keep(j),
                None => RouteSource::Build(from_json(&entry.body)),
            }
        })
        .collect();
    Some(out)
}

/// Whether `v` holds a `${secret:...}` reference anywhere.
fn names_secret(v: &Value) -> bool {
    match v {
        Value::String(s) => s.contains("${secret:"),
        Value::Array(items) => items.iter().any(names_secret),
        Value::Object(map) => map.values().any(names_secret),
        _ => false,
    }
}

/// A JSON document as a configuration node (line 0: it has no file).
pub fn from_json(v: &Value) -> Node {
    let kind = match v {
        Value::Null => NodeKind::Null,
        Value::Bool(b) => NodeKind::Bool(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => NodeKind::Int(i),
            None => NodeKind::Float(n.as_f64().unwrap_or(f64::NAN)),
        },
        Value::String(s) => NodeKind::Str(s.clone()),
        Value::Array(items) => NodeKind::Seq(items.iter().map(from_json).collect()),
        Value::Object(map) => {
            NodeKind::Map(map.iter().map(|(k, v)| (k.clone(), from_json(v))).collect())
        }
    };
    Node { kind, line: 0 }
}

/// One problem with a candidate entity set, as the admin API reports it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Problem {
    /// The path `sluicegate check` would give on the exported configuration.
    pub path: String,
    /// The entity it is in (`routes/NAME`), when it is in one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub entity: Option<String>,
    /// What is wrong.
    pub message: String,
}

/// Validates `entities` with the running snapshot's file, as `sluicegate check` would
/// validate the whole configuration, and as this node would apply them: when only routes
/// changed since `last` (the reloader's build of `current`), only those are built. Nothing
/// is swapped in and no metric is registered.
pub fn check(
    current: &crate::state::Snapshot,
    workers: usize,
    entities: &Entities,
    last: Option<&crate::config::LastBuild>,
) -> Result<(), Vec<Problem>> {
    match crate::config::check_cluster(current, workers, entities, last) {
        Ok(_) => Ok(()),
        Err(e) => Err(e
            .diags
            .into_iter()
            .map(|d| Problem {
                entity: entity_of(entities, &d.path),
                path: d.path,
                message: d.message,
            })
            .collect()),
    }
}

/// `routes/NAME` for a path starting `routes[i]`.
fn entity_of(entities: &Entities, path: &str) -> Option<String> {
    let (section, rest) = path.split_once('[')?;
    let kind = Kind::from_section(section)?;
    let index: usize = rest.split_once(']')?.0.parse().ok()?;
    let ordered = entities.ordered(kind);
    let (name, _) = ordered.get(index)?;
    Some(format!("{section}/{name}"))
}

/// Fetches the entities to start with (the store's, else the copy on disk) on a runtime of
/// its own; the gateway has none yet.
pub fn initial(settings: &ClusterSettings, data_dir: &Path) -> anyhow::Result<Cluster> {
    let store = store_config(settings);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (entities, up) = rt
        .block_on(sluicegate_cluster::follow::initial(&store, data_dir))
        .map_err(|e| anyhow::anyhow!("cluster mode: {e}"))?;
    if up {
        if let Err(e) = sluicegate_cluster::disk::write(data_dir, &entities) {
            tracing::error!(error = %e, "Cannot keep the cluster revision on disk.");
        }
    }
    tracing::info!(node = %settings.node_name, revision = entities.revision, store = if up { "online" } else { "offline" }, "Cluster configuration loaded.");
    let revision = entities.revision;
    let cluster = Cluster::new(
        store,
        settings.node_name.clone(),
        settings.poll_interval,
        entities,
        up,
    );
    cluster.saw_store_revision(revision);
    Ok(cluster)
}

/// The store settings of a `cluster:` section.
pub fn store_config(settings: &ClusterSettings) -> StoreConfig {
    StoreConfig {
        url: settings.store.clone(),
        timeout: settings.store_timeout,
    }
}

/// Swaps a new entity set in through the reloader (so it is ordered with every other
/// reload, and built exactly as one).
pub struct Applier {
    /// The gateway's shared state.
    pub shared: Arc<Shared>,
    /// The node's cluster view.
    pub cluster: Arc<Cluster>,
}

impl sluicegate_cluster::follow::Apply for Applier {
    async fn apply(&self, next: Arc<Entities>) -> Result<(), String> {
        let before = self.cluster.applied();
        self.cluster.set_wanted(next);
        match self.shared.reload("cluster").await {
            Ok(_) => Ok(()),
            Err(e) => {
                self.cluster.set_wanted(before);
                Err(e.to_string())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    #[test]
    fn file_sections_the_store_holds_are_refused_in_cluster_mode() {
        let mut root = sluicegate_core::yaml::parse(
            "cluster: {store: x}\nroutes: []\n",
            &std::collections::HashMap::<String, String>::new(),
        )
        .unwrap();
        let err = merge(&mut root, None).unwrap_err();
        assert_eq!(err[0].path, "routes");
        assert!(err[0].message.contains("/v1/routes"), "{err:?}");
    }

    #[test]
    fn entities_become_sections_and_numbers_keep_their_type() {
        let mut root = sluicegate_core::yaml::parse(
            "cluster: {store: x}\n",
            &std::collections::HashMap::<String, String>::new(),
        )
        .unwrap();
        let mut e = Entities::empty("c");
        e.apply(
            vec![sluicegate_cluster::Change {
                kind: Kind::Upstreams,
                name: "a".into(),
                ord: 1,
                revision: 1,
                body: Some(json!({"name": "a", "targets": ["127.0.0.1:1"], "connect_timeout_ms": 5, "w": 0.5})),
            }],
            1,
        );
        merge(&mut root, Some(&e)).unwrap();
        let u = &root.get("upstreams").unwrap();
        let NodeKind::Seq(items) = &u.kind else {
            panic!()
        };
        assert_eq!(
            items[0].get("connect_timeout_ms").unwrap().kind,
            NodeKind::Int(5)
        );
        assert_eq!(items[0].get("w").unwrap().kind, NodeKind::Float(0.5));
        assert_eq!(
            entity_of(&e, "upstreams[0].targets"),
            Some("upstreams/a".into())
        );
        assert_eq!(entity_of(&e, "listeners[0]"), None);
    }
}
