//! Building a new [`CodeSet`] from the sources' documents: the reloader's half of dynamic
//! code. Owned by [`CodeRegistry`](super::CodeRegistry) and only changed by the reloader
//! (and once at start, before workers serve).
//!
//! Invariants:
//! - a script is compiled only when its source text differs from the version in the running
//!   set, and a script that failed is not compiled again until its text changes;
//! - a script whose new version fails keeps running its last good version (`stale`, never
//!   fail open: an auth script must not vanish because its update had a typo); a new script
//!   that fails is skipped; both are reported with name, line and error;
//! - with `all_or_nothing`, an update with any failure in the changed source is rejected
//!   whole and nothing changes;
//! - the running set is replaced only by a complete, successfully built one.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::SystemTime;

use serde::Serialize;

use super::document::{ScriptSpec, SourceDoc};
use super::{CodeMetrics, CodeSet, CodeSettings, Domain, Entry, Group, Source};
use sluicegate_core::phase::Phase;
use sluicegate_lua::Script;

/// A change to the sources.
#[derive(Debug, Clone)]
pub enum Change {
    /// A source's whole document (`None`: the source is gone).
    Replace(Source, Option<SourceDoc>),
    /// An admin push of one script.
    Put(ScriptSpec),
    /// An admin deletion.
    Delete(String),
    /// Rebuild with new settings (after a configuration reload).
    Rebuild,
}

impl Change {
    fn source(&self) -> Option<Source> {
        match self {
            Change::Replace(s, _) => Some(*s),
            Change::Put(_) | Change::Delete(_) => Some(Source::Admin),
            Change::Rebuild => None,
        }
    }
}

/// A script that could not be loaded.
#[derive(Debug, Clone, Serialize)]
pub struct ScriptError {
    /// Script name.
    pub name: String,
    /// Its source.
    pub source: &'static str,
    /// Line in the script, when known.
    pub line: Option<usize>,
    /// What is wrong.
    pub message: String,
    /// Whether an older version keeps running.
    pub stale: bool,
}

/// What applying a change did.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    /// The new set, when one was swapped in.
    pub set: Option<Arc<CodeSet>>,
    /// The running set's version afterwards.
    pub version: u64,
    /// Scripts compiled for this change.
    pub compiled: usize,
    /// Scripts not loaded (or kept at their last good version).
    pub errors: Vec<ScriptError>,
    /// Why the whole change was refused, if it was.
    pub rejected: Option<String>,
    /// Set for a deletion of a script that does not exist.
    pub not_found: bool,
}

/// A script's state, as `GET /scripts` lists it.
#[derive(Debug, Clone, Serialize)]
pub struct ScriptStatus {
    /// Name.
    pub name: String,
    /// `api`, `directory` or `admin`.
    pub source: &'static str,
    /// Phase, when known.
    pub phase: Option<&'static str>,
    /// `*` or the host regex.
    pub domain: String,
    /// Version (hash) of the running code, if any version runs.
    pub version: Option<String>,
    /// `active`, `stale` (an older version runs; the new one failed), `failed` (not
    /// loaded) or `disabled` (its source is switched off).
    pub status: &'static str,
    /// The last error, if the latest version failed.
    pub last_error: Option<ErrorReport>,
    /// When this script last changed (RFC 3339).
    pub updated_at: String,
}

/// A compile or load error.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ErrorReport {
    /// Line in the script, when known.
    pub line: Option<usize>,
    /// The message.
    pub message: String,
}

/// What a source last did, as `/status` shows it.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SourceStatus {
    /// Whether the source is configured.
    pub configured: bool,
    /// The URL or directory.
    pub location: Option<String>,
    /// When it was last checked (RFC 3339).
    pub last_check_at: Option<String>,
    /// When it last changed the running set.
    pub last_change_at: Option<String>,
    /// `updated`, `not_modified`, `unchanged`, `error`, `rejected`, `loaded_from_disk`.
    pub last_result: Option<String>,
    /// The last error, cleared by the next success.
    pub last_error: Option<String>,
    /// Serving the persisted last good document because the code API has not answered
    /// since start.
    pub offline: bool,
    /// Version (hash) of the document in use.
    pub document_version: Option<String>,
    /// ETag of the document in use.
    pub etag: Option<String>,
    /// Scripts the source provides.
    pub scripts: usize,
}

#[derive(Debug, Clone)]
struct Good {
    script: Arc<Script>,
    /// `version_of` the source, computed once.
    version: String,
    phase: Phase,
    domain: Domain,
    domain_text: String,
}

/// The reloader's bookkeeping.
#[derive(Debug, Default)]
pub struct CodeState {
    docs: [Option<SourceDoc>; 3],
    good: HashMap<(Source, String), Good>,
    failed: HashMap<(Source, String), (String, ErrorReport)>,
    statuses: BTreeMap<(Source, String), ScriptStatus>,
    version: u64,
}

/// The current time as RFC 3339.
pub fn now() -> String {
    sluicegate_telemetry::httpdate_rfc3339(SystemTime::now())
}

impl CodeState {
    /// Statuses of every known script, by source then name.
    pub fn statuses(&self) -> Vec<ScriptStatus> {
        self.statuses.values().cloned().collect()
    }

    /// The document a source currently provides.
    pub fn doc(&self, source: Source) -> Option<&SourceDoc> {
        self.docs[source.index()].as_ref()
    }

    /// The running set's version.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Applies `change`; `outcome.set` is the new set to swap in, if any.
    pub fn apply(
        &mut self,
        change: Change,
        settings: Option<&CodeSettings>,
        metrics: &CodeMetrics,
    ) -> Outcome {
        let changed = change.source();
        // An admin push is one script: it is refused whole when it does not compile.
        let pushed = match &change {
            Change::Put(spec) => Some(spec.name.clone()),
            _ => None,
        };
        let mut docs = self.docs.clone();
        let mut not_found = false;
        match change {
            Change::Replace(source, doc) => docs[source.index()] = doc,
            Change::Put(spec) => {
                let doc = docs[Source::Admin.index()]
                    .get_or_insert_with(|| SourceDoc::enabled(Vec::new()));
                match doc.specs.iter_mut().find(|s| s.name == spec.name) {
                    Some(s) => *s = spec,
                    None => {
                        doc.specs.push(spec);
                        doc.specs.sort_by(|a, b| a.name.cmp(&b.name));
                    }
                }
            }
            Change::Delete(name) => {
                let doc = docs[Source::Admin.index()]
                    .get_or_insert_with(|| SourceDoc::enabled(Vec::new()));
                let before = doc.specs.len();
                doc.specs.retain(|s| s.name != name);
                not_found = doc.specs.len() == before;
            }
            Change::Rebuild => {}
        }
        if not_found {
            return Outcome {
                version: self.version,
                not_found: true,
                ..Outcome::default()
            };
        }
        if changed.is_some() && docs == self.docs {
            metrics.unchanged.fetch_add(1, Ordering::Relaxed);
            return Outcome {
                version: self.version,
                ..Outcome::default()
            };
        }
        let built = self.build(&docs, settings, metrics);
        let reject = built.errors.iter().any(|(source, e)| {
            Some(*source) == changed
                && (settings.is_some_and(|s| s.all_or_nothing)
                    || pushed.as_deref() == Some(e.name.as_str()))
        });
        let errors: Vec<ScriptError> = built.errors.iter().map(|(_, e)| e.clone()).collect();
        if reject {
            let names: Vec<&str> = errors.iter().map(|e| e.name.as_str()).collect();
            return Outcome {
                version: self.version,
                compiled: built.compiled,
                rejected: Some(format!(
                    "all_or_nothing: {} script(s) failed ({}); nothing was changed",
                    errors.len(),
                    names.join(", ")
                )),
                errors,
                ..Outcome::default()
            };
        }
        self.version += 1;
        self.docs = docs;
        self.good = built.good;
        self.statuses = built.statuses;
        let set = Arc::new(CodeSet::new(self.version, built.groups, built.entries));
        Outcome {
            set: Some(set),
            version: self.version,
            compiled: built.compiled,
            errors,
            rejected: None,
            not_found: false,
        }
    }

    fn build(
        &mut self,
        docs: &[Option<SourceDoc>; 3],
        settings: Option<&CodeSettings>,
        metrics: &CodeMetrics,
    ) -> Built {
        let mut out = Built::default();
        let Some(settings) = settings else {
            return out;
        };
        for source in Source::ALL {
            let Some(doc) = &docs[source.index()] else {
                continue;
            };
            // A source taken out of the configuration keeps its document (for when it
            // comes back) but runs nothing.
            let active = match source {
                Source::Api => settings.api.is_some(),
                Source::Directory => settings.directory.is_some(),
                Source::Admin => settings.admin_scripts,
            };
            if !active {
                for (key, g) in self.good.iter().filter(|(k, _)| k.0 == source) {
                    out.good.insert(key.clone(), g.clone());
                }
                continue;
            }
            out.groups[source.index()] = Group {
                enabled: doc.enabled,
                skip: doc
                    .skip_domains
                    .iter()
                    .filter_map(|r| regex::Regex::new(r).ok())
                    .collect(),
            };
            for spec in &doc.specs {
                let key = (source, spec.name.clone());
                let result = self.load(source, spec, settings, metrics, &mut out.compiled);
                let prev = self.statuses.get(&key);
                let (good, error) = match result {
                    Ok(g) => (Some(g), None),
                    Err(report) => (
                        self.good
                            .get(&key)
                            .filter(|g| settings.phases.contains(g.phase))
                            .cloned(),
                        Some(report),
                    ),
                };
                let status = match (&good, &error) {
                    (Some(_), None) if !doc.enabled => "disabled",
                    (Some(_), None) => "active",
                    (Some(_), Some(_)) => "stale",
                    (None, _) => "failed",
                };
                let version = good.as_ref().map(|g| g.version.clone());
                let same = prev.is_some_and(|p| {
                    p.version == version && p.status == status && p.last_error == error
                });
                let updated_at = match prev {
                    Some(p) if same => p.updated_at.clone(),
                    _ => now(),
                };
                if let Some(e) = &error {
                    out.errors.push((
                        source,
                        ScriptError {
                            name: spec.name.clone(),
                            source: source.as_str(),
                            line: e.line,
                            message: e.message.clone(),
                            stale: good.is_some(),
                        },
                    ));
                }
                out.statuses.insert(
                    key.clone(),
                    ScriptStatus {
                        name: spec.name.clone(),
                        source: source.as_str(),
                        phase: good
                            .as_ref()
                            .map(|g| g.phase)
                            .or(spec.phase)
                            .map(Phase::as_str),
                        domain: good
                            .as_ref()
                            .map_or(spec.domain.clone(), |g| g.domain_text.clone()),
                        version,
                        status,
                        last_error: error,
                        updated_at,
                    },
                );
                if let Some(g) = good {
                    out.entries.push((
                        g.phase,
                        Entry {
                            source,
                            domain: g.domain.clone(),
                            script: g.script.clone(),
                        },
                    ));
                    out.good.insert(key, g);
                }
            }
        }
        out
    }

    /// The loaded form of `spec`: reused when its code is unchanged, compiled otherwise.
    fn load(
        &mut self,
        source: Source,
        spec: &ScriptSpec,
        settings: &CodeSettings,
        metrics: &CodeMetrics,
        compiled: &mut usize,
    ) -> Result<Good, ErrorReport> {
        let plain = |message: String| ErrorReport {
            line: None,
            message,
        };
        if let Some(p) = &spec.problem {
            return Err(plain(p.clone()));
        }
        let Some(phase) = spec.phase else {
            return Err(plain("no phase given".to_string()));
        };
        if !settings.phases.contains(phase) {
            return Err(plain(format!(
                "phase `{}` is not enabled for dynamic scripts (code.phases)",
                phase.as_str()
            )));
        }
        let key = (source, spec.name.clone());
        let prev = self.good.get(&key);
        // Compiled regexes are reused too: compiling a thousand of them is not free.
        let domain = match prev.filter(|g| g.domain_text == spec.domain) {
            Some(g) => g.domain.clone(),
            None => Domain::parse(&spec.domain).map_err(plain)?,
        };
        if let Some(g) = prev {
            let same_modules =
                g.script.modules.as_ref().map_or(0, |m| m.id) == settings.lua_modules.id;
            if g.script.source == spec.code && same_modules {
                return Ok(Good {
                    script: g.script.clone(),
                    version: g.version.clone(),
                    phase,
                    domain,
                    domain_text: spec.domain.clone(),
                });
            }
        }
        if let Some((code, report)) = self.failed.get(&key) {
            if *code == spec.code {
                return Err(report.clone());
            }
        }
        *compiled += 1;
        match sluicegate_lua::compile(&spec.name, &spec.code) {
            Ok(script) => {
                metrics.compiles_ok.fetch_add(1, Ordering::Relaxed);
                self.failed.remove(&key);
                Ok(Good {
                    version: super::version_of(script.source.as_bytes()),
                    script: Arc::new(script.using(&settings.lua_modules)),
                    phase,
                    domain,
                    domain_text: spec.domain.clone(),
                })
            }
            Err(e) => {
                metrics.compiles_failed.fetch_add(1, Ordering::Relaxed);
                let report = ErrorReport {
                    line: e.line,
                    message: format!("syntax error: {}", e.message),
                };
                self.failed.insert(key, (spec.code.clone(), report.clone()));
                Err(report)
            }
        }
    }
}

#[derive(Default)]
struct Built {
    groups: [Group; 3],
    entries: Vec<(Phase, Entry)>,
    good: HashMap<(Source, String), Good>,
    statuses: BTreeMap<(Source, String), ScriptStatus>,
    errors: Vec<(Source, ScriptError)>,
    compiled: usize,
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluicegate_core::phase::PhaseSet;

    fn settings(all_or_nothing: bool) -> CodeSettings {
        CodeSettings {
            api: None,
            directory: Some("scripts".into()),
            admin_scripts: true,
            phases: PhaseSet::of(&Phase::ALL),
            all_or_nothing,
            priority: 900,
            lua_modules: sluicegate_lua::Modules::empty(),
        }
    }

    fn spec(name: &str, code: &str) -> ScriptSpec {
        ScriptSpec {
            name: name.into(),
            phase: Some(Phase::Access),
            domain: "*".into(),
            code: code.into(),
            problem: None,
        }
    }

    fn replace(specs: Vec<ScriptSpec>) -> Change {
        Change::Replace(Source::Directory, Some(SourceDoc::enabled(specs)))
    }

    #[test]
    fn only_changed_scripts_are_compiled() {
        let (mut st, m, s) = (
            CodeState::default(),
            CodeMetrics::default(),
            settings(false),
        );
        let o = st.apply(
            replace(vec![spec("a", "return 1"), spec("b", "return 2")]),
            Some(&s),
            &m,
        );
        assert_eq!((o.compiled, o.set.unwrap().len()), (2, 2));
        let o = st.apply(
            replace(vec![spec("a", "return 1"), spec("b", "return 3")]),
            Some(&s),
            &m,
        );
        assert_eq!(o.compiled, 1);
        let o = st.apply(
            replace(vec![spec("a", "return 1"), spec("b", "return 3")]),
            Some(&s),
            &m,
        );
        assert!(o.set.is_none(), "an identical document swaps nothing");
        assert_eq!(m.unchanged.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn a_failing_update_keeps_the_last_good_version_and_a_new_failing_script_is_skipped() {
        let (mut st, m, s) = (
            CodeState::default(),
            CodeMetrics::default(),
            settings(false),
        );
        st.apply(replace(vec![spec("auth", "return 1")]), Some(&s), &m);
        let o = st.apply(
            replace(vec![
                spec("auth", "if then"),
                spec("new", "local = 1"),
                spec("ok", "return"),
            ]),
            Some(&s),
            &m,
        );
        let set = o.set.unwrap();
        assert_eq!(set.len(), 2, "auth (stale) and ok");
        assert_eq!(o.errors.len(), 2);
        assert!(o
            .errors
            .iter()
            .any(|e| e.name == "auth" && e.stale && e.line == Some(1)));
        let statuses = st.statuses();
        let status = |n: &str| statuses.iter().find(|s| s.name == n).unwrap().status;
        assert_eq!(
            (status("auth"), status("new"), status("ok")),
            ("stale", "failed", "active")
        );
        // The same failing text is not compiled again.
        let before = m.compiles_failed.load(Ordering::Relaxed);
        st.apply(
            replace(vec![
                spec("auth", "if then"),
                spec("new", "local = 1"),
                spec("ok", "return 2"),
            ]),
            Some(&s),
            &m,
        );
        assert_eq!(m.compiles_failed.load(Ordering::Relaxed), before);
    }

    #[test]
    fn an_invalid_domain_regex_takes_out_only_its_script() {
        let (mut st, m, s) = (
            CodeState::default(),
            CodeMetrics::default(),
            settings(false),
        );
        let mut bad = spec("bad", "return");
        bad.domain = "(".into();
        let o = st.apply(replace(vec![bad, spec("ok", "return")]), Some(&s), &m);
        assert_eq!(o.set.unwrap().len(), 1);
        assert!(
            o.errors[0].message.contains("not a valid regex"),
            "{:?}",
            o.errors
        );
    }

    #[test]
    fn all_or_nothing_rejects_the_whole_update() {
        let (mut st, m, s) = (CodeState::default(), CodeMetrics::default(), settings(true));
        st.apply(replace(vec![spec("a", "return 1")]), Some(&s), &m);
        let o = st.apply(
            replace(vec![spec("a", "return 2"), spec("b", "if")]),
            Some(&s),
            &m,
        );
        assert!(o.set.is_none());
        assert!(o.rejected.unwrap().contains("b"));
        assert_eq!(st.version(), 1);
        assert_eq!(st.doc(Source::Directory).unwrap().specs[0].code, "return 1");
    }

    #[test]
    fn a_source_taken_out_of_the_configuration_runs_nothing() {
        let (mut st, m, s) = (
            CodeState::default(),
            CodeMetrics::default(),
            settings(false),
        );
        st.apply(replace(vec![spec("a", "return 1")]), Some(&s), &m);
        let off = CodeSettings {
            directory: None,
            ..settings(false)
        };
        let o = st.apply(Change::Rebuild, Some(&off), &m);
        assert!(o.set.unwrap().is_empty());
        let o = st.apply(Change::Rebuild, Some(&s), &m);
        assert_eq!((o.set.unwrap().len(), o.compiled), (1, 0));
    }

    #[test]
    fn admin_pushes_and_deletes_one_script_at_a_time() {
        let (mut st, m, s) = (
            CodeState::default(),
            CodeMetrics::default(),
            settings(false),
        );
        st.apply(Change::Put(spec("x", "return")), Some(&s), &m);
        st.apply(Change::Put(spec("y", "return")), Some(&s), &m);
        assert_eq!(st.doc(Source::Admin).unwrap().specs.len(), 2);
        let o = st.apply(Change::Delete("x".into()), Some(&s), &m);
        assert_eq!(o.set.unwrap().len(), 1);
        assert!(st.apply(Change::Delete("x".into()), Some(&s), &m).not_found);
    }
}
