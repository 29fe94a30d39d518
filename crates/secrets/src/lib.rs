//! Secrets: values such as signing keys and API keys that plugins need but that must never be
//! written into a configuration file, a log line, `/status`, an error body or `Debug` output.
//!
//! A configuration declares each secret once under the top-level `secrets:` mapping, naming
//! where its current value (and, during a rotation, its previous value) comes from: an
//! environment variable or a file. Plugins refer to a secret with the string
//! `${secret:NAME}`, which deserializes into a [`SecretRef`]; while the plugin is built,
//! [`SecretStore::resolve`] turns the reference into a [`Secret`] holding the values.
//!
//! Invariants: values are read once per configuration load (so a reload re-reads the
//! files), never logged, and only reachable through [`SecretValue::expose`]; a reference to
//! an undeclared secret, or to one whose current value is unset or unreadable, is a
//! configuration error at the reference's path and line.

pub mod config;

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path as FsPath;
use std::sync::Arc;

use serde::Deserialize;

use config::SecretConfig;
use sluicegate_core::diag::{Diags, Path};
use sluicegate_core::yaml::{Env, Node, NodeKind, ProcessEnv};

/// One secret value (bytes). Its `Debug` output never shows the value.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretValue(Arc<[u8]>);

impl SecretValue {
    /// Wraps a value.
    pub fn new(bytes: impl Into<Arc<[u8]>>) -> Self {
        SecretValue(bytes.into())
    }

    /// The value's bytes, for the code that signs, verifies or compares with it.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    /// Whether `candidate` equals the value, in time that does not depend on where the
    /// two differ (only on their lengths).
    pub fn ct_eq(&self, candidate: &[u8]) -> bool {
        use subtle::ConstantTimeEq;
        self.0.len() == candidate.len() && bool::from(self.0.ct_eq(candidate))
    }
}

impl fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretValue(<redacted>)")
    }
}

/// A resolved secret: its current value and, during a rotation, the previous one.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret {
    name: Arc<str>,
    current: SecretValue,
    previous: Option<SecretValue>,
}

impl Secret {
    /// A secret with the given values (tests and programmatic configs).
    pub fn new(name: &str, current: SecretValue, previous: Option<SecretValue>) -> Self {
        Secret {
            name: name.into(),
            current,
            previous,
        }
    }

    /// The secret's declared name (safe to log).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The current value: the one to sign with.
    pub fn current(&self) -> &SecretValue {
        &self.current
    }

    /// The previous value, still accepted while a rotation is under way.
    pub fn previous(&self) -> Option<&SecretValue> {
        self.previous.as_ref()
    }

    /// Every value to accept when verifying: the current one first, then the previous.
    pub fn values(&self) -> impl Iterator<Item = &SecretValue> {
        std::iter::once(&self.current).chain(self.previous.as_ref())
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Secret")
            .field("name", &self.name)
            .field("previous", &self.previous.is_some())
            .finish_non_exhaustive()
    }
}

/// A reference to a declared secret, written `${secret:NAME}` in a plugin's config.
///
/// Use it as the type of a config field; resolve it with [`SecretStore::resolve`] when the
/// plugin is built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretRef {
    name: String,
}

impl SecretRef {
    /// The referenced secret's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Parses `${secret:NAME}`.
    pub fn parse(text: &str) -> Result<SecretRef, String> {
        let name = text
            .trim()
            .strip_prefix("${secret:")
            .and_then(|rest| rest.strip_suffix('}'))
            .ok_or_else(|| {
                "expected a secret reference `${secret:NAME}` (declare the secret under the \
                 top-level `secrets:`; secret values are never written in the configuration)"
                    .to_string()
            })?;
        if !valid_name(name) {
            return Err(format!(
                "invalid secret name `{name}`: use letters, digits, `_` and `-`"
            ));
        }
        Ok(SecretRef {
            name: name.to_string(),
        })
    }
}

impl<'de> Deserialize<'de> for SecretRef {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        SecretRef::parse(&text).map_err(serde::de::Error::custom)
    }
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// The secrets a configuration declares, read when the configuration is loaded.
#[derive(Debug, Default)]
pub struct SecretStore {
    /// Each declared secret, or why its value could not be read.
    entries: BTreeMap<String, Result<Secret, String>>,
    /// The config paths whose references were resolved (to find references written where
    /// nothing resolves them).
    resolved: std::sync::Mutex<std::collections::HashSet<String>>,
}

impl SecretStore {
    /// A store with no secrets (for building plugins outside a configuration file).
    pub fn empty() -> &'static SecretStore {
        static EMPTY: std::sync::LazyLock<SecretStore> =
            std::sync::LazyLock::new(SecretStore::default);
        &EMPTY
    }

    /// A store holding the given secrets (tests and programmatic configs).
    pub fn from_secrets(secrets: impl IntoIterator<Item = Secret>) -> Self {
        SecretStore {
            entries: secrets
                .into_iter()
                .map(|s| (s.name().to_string(), Ok(s)))
                .collect(),
            resolved: Default::default(),
        }
    }

    /// Reads the top-level `secrets:` node (absent means none) with values from the
    /// process environment; relative file names resolve against `base_dir`.
    pub fn load(node: Option<&Node>, base_dir: &FsPath, diags: &mut Diags) -> Self {
        Self::load_with_env(node, base_dir, &ProcessEnv, diags)
    }

    /// [`load`](Self::load) with values from `env`.
    pub fn load_with_env(
        node: Option<&Node>,
        base_dir: &FsPath,
        env: &dyn Env,
        diags: &mut Diags,
    ) -> Self {
        let path = Path::root().key("secrets");
        let mut store = SecretStore::default();
        let entries = match node.map(|n| (&n.kind, n)) {
            None | Some((NodeKind::Null, _)) => return store,
            Some((NodeKind::Map(entries), _)) => entries,
            Some((_, n)) => {
                diags.push(
                    &path,
                    format!(
                        "expected a mapping of secret names to sources, found {}",
                        n.type_name()
                    ),
                );
                return store;
            }
        };
        for (name, decl) in entries {
            let p = path.key(name);
            if !valid_name(name) {
                diags.push(
                    &p,
                    format!("invalid secret name `{name}`: use letters, digits, `_` and `-`"),
                );
                continue;
            }
            let cfg: SecretConfig = match sluicegate_core::de::from_node(decl, &p) {
                Ok(c) => c,
                Err(d) => {
                    diags.0.push(d);
                    continue;
                }
            };
            if let Some(entry) = read_declared(name, &cfg, &p, base_dir, env, diags) {
                store.entries.insert(name.clone(), entry);
            }
        }
        store
    }

    /// Resolves `r`, recording at `path` why it cannot be (undeclared, unset, unreadable).
    pub fn resolve(&self, r: &SecretRef, path: &Path, diags: &mut Diags) -> Option<Secret> {
        if let Ok(mut seen) = self.resolved.lock() {
            seen.insert(path.to_string());
        }
        match self.entries.get(&r.name) {
            Some(Ok(s)) => Some(s.clone()),
            Some(Err(why)) => {
                diags.push(path, format!("secret `{}`: {why}", r.name));
                None
            }
            None => {
                diags.push(
                    path,
                    format!(
                        "secret `{}` is not declared; add it under the top-level `secrets:`",
                        r.name
                    ),
                );
                None
            }
        }
    }

    /// The values of a field that holds secret material: a `${secret:NAME}` reference's
    /// current then previous value; or, where the field comes from no file (`line` 0: an
    /// entity of the cluster store, which holds such values itself), the text as it is. In
    /// a file anything but a reference is an error at `path`: files name their secrets.
    pub fn resolve_material(
        &self,
        text: &str,
        line: usize,
        path: &Path,
        diags: &mut Diags,
    ) -> Vec<SecretValue> {
        if line == 0 && !text.trim_start().starts_with("${secret:") {
            return vec![SecretValue::new(text.as_bytes().to_vec())];
        }
        match SecretRef::parse(text) {
            Ok(r) => self
                .resolve(&r, path, diags)
                .map(|s| s.values().cloned().collect())
                .unwrap_or_default(),
            Err(e) => {
                diags.push(path, e);
                Vec::new()
            }
        }
    }

    /// Reports every `${secret:...}` in `root` that no plugin option resolved: written in an
    /// option that does not take a secret (a header value, Lua code, an address), it would
    /// otherwise be used as the literal text. Call it after every plugin was built.
    pub fn check_unresolved(&self, root: &Node, diags: &mut Diags) {
        let Ok(seen) = self.resolved.lock() else {
            return;
        };
        walk(root, &mut Path::root(), &mut |node, path| {
            if let NodeKind::Str(s) = &node.kind {
                if s.contains("${secret:") && !seen.contains(path.as_str()) {
                    diags.push(
                        path,
                        "`${secret:...}` is resolved only where a secret is taken (plugin \
                         options, `admin.tokens`, consumers' credentials, certificate keys; \
                         see docs/secrets.md); here it would be used as literal text",
                    );
                }
            }
        });
    }

    /// The names of the declared secrets (safe to show).
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.entries.keys().map(String::as_str)
    }
}

fn walk(node: &Node, path: &mut Path, f: &mut dyn FnMut(&Node, &Path)) {
    sluicegate_core::pace::point();
    f(node, path);
    let len = path.len();
    match &node.kind {
        NodeKind::Seq(items) => {
            for (i, item) in items.iter().enumerate() {
                path.push_index(i);
                walk(item, path, f);
                path.truncate(len);
            }
        }
        NodeKind::Map(entries) => {
            for (k, v) in entries {
                path.push_key(k);
                walk(v, path, f);
                path.truncate(len);
            }
        }
        _ => {}
    }
}

/// Checks one declaration's shape (recording problems) and reads its values; a value that
/// cannot be read is kept as an error, reported where the secret is referenced.
fn read_declared(
    name: &str,
    cfg: &SecretConfig,
    path: &Path,
    base_dir: &FsPath,
    env: &dyn Env,
    diags: &mut Diags,
) -> Option<Result<Secret, String>> {
    let current = match (&cfg.env, &cfg.file) {
        (Some(var), None) => Source::Env(var),
        (None, Some(file)) => Source::File(file),
        (Some(_), Some(_)) => {
            diags.push(path, "give either `env` or `file`, not both");
            return None;
        }
        (None, None) => {
            diags.push(
                path,
                "give the source of the value: `env: VARIABLE` or `file: PATH`",
            );
            return None;
        }
    };
    let previous = match (&cfg.previous_env, &cfg.previous_file) {
        (Some(var), None) => Some(Source::Env(var)),
        (None, Some(file)) => Some(Source::File(file)),
        (None, None) => None,
        (Some(_), Some(_)) => {
            diags.push(
                path,
                "give either `previous_env` or `previous_file`, not both",
            );
            return None;
        }
    };
    for (key, src) in [("env", &cfg.env), ("previous_env", &cfg.previous_env)] {
        if let Some(var) = src {
            if var.is_empty() || !var.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                diags.push(&path.key(key), format!("invalid variable name `{var}`"));
                return None;
            }
        }
    }
    let current = match current.read(base_dir, env) {
        Ok(Some(v)) => v,
        Ok(None) => return Some(Err(current.missing())),
        Err(e) => return Some(Err(e)),
    };
    let previous = match previous.map(|p| p.read(base_dir, env)) {
        None | Some(Ok(None)) => None,
        Some(Ok(Some(v))) => Some(v),
        Some(Err(e)) => return Some(Err(format!("previous value: {e}"))),
    };
    Some(Ok(Secret::new(name, current, previous)))
}

enum Source<'a> {
    Env(&'a str),
    File(&'a str),
}

impl Source<'_> {
    /// The value, `None` when unset (variable unset or empty, file absent or empty).
    fn read(&self, base_dir: &FsPath, env: &dyn Env) -> Result<Option<SecretValue>, String> {
        match self {
            Source::Env(var) => Ok(env
                .var(var)
                .filter(|v| !v.is_empty())
                .map(|v| SecretValue::new(v.into_bytes()))),
            Source::File(file) => {
                let full = base_dir.join(file);
                match std::fs::read(&full) {
                    Ok(mut bytes) => {
                        // Files written by editors and `echo` end in a newline that is not
                        // part of the key.
                        if bytes.ends_with(b"\n") {
                            bytes.pop();
                            if bytes.ends_with(b"\r") {
                                bytes.pop();
                            }
                        }
                        Ok((!bytes.is_empty()).then(|| SecretValue::new(bytes)))
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                    Err(e) => Err(format!("cannot read `{}`: {e}", full.display())),
                }
            }
        }
    }

    fn missing(&self) -> String {
        match self {
            Source::Env(var) => format!("environment variable `{var}` is not set or empty"),
            Source::File(file) => format!("file `{file}` does not exist or is empty"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluicegate_core::yaml::parse;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn store(text: &str, vars: &[(&str, &str)], dir: &FsPath) -> (SecretStore, Diags) {
        let root = parse(text, &HashMap::new()).unwrap();
        let mut diags = Diags::default();
        let s = SecretStore::load_with_env(root.get("secrets"), dir, &env(vars), &mut diags);
        (s, diags)
    }

    fn resolve(s: &SecretStore, name: &str) -> Result<Secret, String> {
        let mut diags = Diags::default();
        let r = SecretRef::parse(&format!("${{secret:{name}}}")).unwrap();
        s.resolve(&r, &Path::root().key("x"), &mut diags)
            .ok_or_else(|| diags.0[0].message.clone())
    }

    #[test]
    fn resolves_current_and_previous_values_from_the_environment() {
        let (s, d) = store(
            "secrets:\n  k: {env: KEY, previous_env: KEY_OLD}\n",
            &[("KEY", "new"), ("KEY_OLD", "old")],
            FsPath::new("."),
        );
        assert!(d.is_empty(), "{d:?}");
        let k = resolve(&s, "k").unwrap();
        assert_eq!(k.current().expose(), b"new");
        let all: Vec<&[u8]> = k.values().map(SecretValue::expose).collect();
        assert_eq!(all, [b"new".as_slice(), b"old".as_slice()]);
    }

    #[test]
    fn an_unset_previous_value_means_no_rotation_in_progress() {
        let (s, _) = store(
            "secrets:\n  k: {env: KEY, previous_env: KEY_OLD}\n",
            &[("KEY", "new")],
            FsPath::new("."),
        );
        assert_eq!(resolve(&s, "k").unwrap().values().count(), 1);
    }

    #[test]
    fn reads_files_without_their_trailing_newline() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("cur"), "s3cret\n").unwrap();
        std::fs::write(dir.path().join("old"), "older\r\n").unwrap();
        let (s, d) = store(
            "secrets:\n  k: {file: cur, previous_file: old}\n",
            &[],
            dir.path(),
        );
        assert!(d.is_empty(), "{d:?}");
        let k = resolve(&s, "k").unwrap();
        assert_eq!(k.current().expose(), b"s3cret");
        assert_eq!(k.previous().unwrap().expose(), b"older");
    }

    #[test]
    fn an_unset_or_undeclared_secret_is_an_error_where_it_is_referenced() {
        let (s, d) = store(
            "secrets:\n  k: {env: KEY}\n  f: {file: nope}\n",
            &[],
            FsPath::new("."),
        );
        assert!(d.is_empty());
        assert!(resolve(&s, "k").unwrap_err().contains("`KEY` is not set"));
        assert!(resolve(&s, "f").unwrap_err().contains("does not exist"));
        assert!(resolve(&s, "other").unwrap_err().contains("not declared"));
    }

    #[test]
    fn rejects_malformed_declarations_with_their_path() {
        let (_, d) = store(
            "secrets:\n  a: {env: X, file: y}\n  b: {}\n  c: {env: X, colour: red}\n  d e: {env: X}\n",
            &[("X", "1")],
            FsPath::new("."),
        );
        let paths: Vec<&str> = d.0.iter().map(|d| d.path.as_str()).collect();
        assert_eq!(
            paths,
            ["secrets.a", "secrets.b", "secrets.c.colour", "secrets.d e"]
        );
    }

    #[test]
    fn reports_references_that_nothing_resolved() {
        let root = parse(
            "a: '${secret:k}'\nb: ['x', 'Bearer ${secret:k}']\n",
            &HashMap::new(),
        )
        .unwrap();
        let s = SecretStore::default();
        let mut diags = Diags::default();
        let r = SecretRef::parse("${secret:k}").unwrap();
        s.resolve(&r, &Path::root().key("a"), &mut diags);
        let mut diags = Diags::default();
        s.check_unresolved(&root, &mut diags);
        let paths: Vec<&str> = diags.0.iter().map(|d| d.path.as_str()).collect();
        assert_eq!(paths, ["b[1]"]);
    }

    #[test]
    fn references_must_use_the_secret_syntax() {
        assert_eq!(SecretRef::parse("${secret:slack}").unwrap().name(), "slack");
        assert!(SecretRef::parse("hunter2").is_err());
        assert!(SecretRef::parse("${secret:}").is_err());
        assert!(SecretRef::parse("${secret:a b}").is_err());
    }

    #[test]
    fn debug_output_never_shows_a_value() {
        let s = Secret::new(
            "k",
            SecretValue::new(b"topsecret".to_vec()),
            Some(SecretValue::new(b"oldsecret".to_vec())),
        );
        let shown = format!("{s:?} {:?} {:?}", s.current(), s.previous());
        assert!(
            !shown.contains("topsecret") && !shown.contains("oldsecret"),
            "{shown}"
        );
    }

    #[test]
    fn compares_in_constant_time_and_rejects_other_lengths() {
        let v = SecretValue::new(b"abc".to_vec());
        assert!(v.ct_eq(b"abc"));
        assert!(!v.ct_eq(b"abd"));
        assert!(!v.ct_eq(b"ab"));
    }
}
