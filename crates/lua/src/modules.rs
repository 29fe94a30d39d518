//! User modules (`lua.package_path`): the `.lua` files under the configured directories,
//! found by OpenResty's `?.lua` and `?/init.lua` patterns, compiled once when the
//! configuration (or a code version) loads, so a syntax error is a configuration error
//! with file and line, never a failure on the request path.
//!
//! A [`Modules`] set is immutable and shared: every script compiled against it holds it
//! ([`Script::modules`]), so a reload swaps modules and the scripts that use them in one
//! step — a request started on the old configuration keeps requiring the old modules.
//! Each worker VM loads a module once per set, on its first `require`, into an environment
//! of its own that lives as long as the set (module-level caches and counters are per
//! worker, as in OpenResty); the VM's cache of loaded modules is `vm::ModuleCache`.

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::script::{compile, CompileError, Script};

/// Most files one set may hold: a package path pointing at a whole tree is a mistake.
const MAX_FILES: usize = 5_000;
/// Deepest directory level searched (`a/b/c/d.lua` is depth 4).
const MAX_DEPTH: usize = 16;

/// The compiled modules of one configuration, by module name (`a.b` for `a/b.lua`).
#[derive(Default)]
pub struct Modules {
    /// A hash of every module's name and source: part of each script's identity.
    pub id: u64,
    by_name: BTreeMap<String, Arc<Script>>,
    /// The searched directories, for "not found" messages.
    dirs: Vec<PathBuf>,
}

impl std::fmt::Debug for Modules {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Modules")
            .field("id", &self.id)
            .field("names", &self.by_name.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl PartialEq for Modules {
    fn eq(&self, other: &Self) -> bool {
        self.id == other.id
    }
}

/// A module that could not be loaded: which directory entry, which file, what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModuleError {
    /// Index of the directory in `lua.package_path`.
    pub dir: usize,
    /// The file, relative to that directory (empty when the directory itself is the
    /// problem).
    pub file: String,
    /// What is wrong, with the line for syntax errors.
    pub message: String,
}

impl Modules {
    /// The empty set (no `lua.package_path`).
    pub fn empty() -> Arc<Modules> {
        Arc::new(Modules::default())
    }

    /// Compiles every module under `dirs`, searched in order: a name found in an earlier
    /// directory hides the same name in a later one, as `package.path` does.
    pub fn load(dirs: &[PathBuf]) -> Result<Modules, Vec<ModuleError>> {
        let mut by_name = BTreeMap::new();
        let mut errors = Vec::new();
        for (i, dir) in dirs.iter().enumerate() {
            let mut files = Vec::new();
            if let Err(message) = walk(dir, dir, 0, &mut files) {
                errors.push(ModuleError {
                    dir: i,
                    file: String::new(),
                    message,
                });
                continue;
            }
            files.sort();
            for rel in files {
                if by_name.len() >= MAX_FILES {
                    errors.push(ModuleError {
                        dir: i,
                        file: String::new(),
                        message: format!("more than {MAX_FILES} modules: point `lua.package_path` at the directories that hold them"),
                    });
                    break;
                }
                let Some(name) = module_name(&rel) else {
                    continue;
                };
                if by_name.contains_key(&name) {
                    continue;
                }
                let text = match std::fs::read_to_string(dir.join(&rel)) {
                    Ok(t) => t,
                    Err(e) => {
                        errors.push(ModuleError {
                            dir: i,
                            file: rel,
                            message: format!("cannot read: {e}"),
                        });
                        continue;
                    }
                };
                match compile(&rel, &text) {
                    Ok(s) => {
                        by_name.insert(name, Arc::new(s));
                    }
                    Err(CompileError { line, message }) => errors.push(ModuleError {
                        dir: i,
                        message: match line {
                            Some(l) => format!("syntax error at {rel}:{l}: {message}"),
                            None => format!("syntax error in {rel}: {message}"),
                        },
                        file: rel,
                    }),
                }
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        let mut h = std::collections::hash_map::DefaultHasher::new();
        for (name, s) in &by_name {
            (name, &s.source).hash(&mut h);
        }
        Ok(Modules {
            id: if by_name.is_empty() { 0 } else { h.finish() },
            by_name,
            dirs: dirs.to_vec(),
        })
    }

    /// The module called `name`.
    pub fn get(&self, name: &str) -> Option<&Arc<Script>> {
        self.by_name.get(name)
    }

    /// Module names, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.by_name.keys().map(String::as_str)
    }

    /// Whether the set holds no module.
    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    /// Whether some module names a function that waits (a script requiring modules then
    /// runs in a coroutine, see [`Script::may_yield`]).
    pub fn may_yield(&self) -> bool {
        self.by_name.values().any(|s| s.may_yield)
    }

    /// Where a missing module was looked for, for the error message.
    pub fn searched(&self, name: &str) -> String {
        if self.dirs.is_empty() {
            return "no lua.package_path is configured".into();
        }
        let file = name.replace('.', "/");
        self.dirs
            .iter()
            .flat_map(|d| {
                [
                    format!("{}/{file}.lua", d.display()),
                    format!("{}/{file}/init.lua", d.display()),
                ]
            })
            .map(|p| format!("no file '{p}'"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// `a/b.lua` → `a.b`, `a/init.lua` → `a`, `init.lua` → none (a module needs a name).
fn module_name(rel: &str) -> Option<String> {
    let stem = rel.strip_suffix(".lua")?;
    let stem = match stem.strip_suffix("/init") {
        Some(dir) => dir,
        None if stem == "init" => return None,
        None => stem,
    };
    if stem.is_empty() || stem.split('/').any(|p| p.is_empty() || p.contains('.')) {
        return None;
    }
    Some(stem.replace('/', "."))
}

/// Collects `.lua` files under `dir` as paths relative to `root` with `/` separators.
fn walk(root: &Path, dir: &Path, depth: usize, out: &mut Vec<String>) -> Result<(), String> {
    if depth > MAX_DEPTH {
        return Ok(());
    }
    let entries =
        std::fs::read_dir(dir).map_err(|e| format!("cannot read `{}`: {e}", dir.display()))?;
    for entry in entries {
        let entry = entry.map_err(|e| format!("cannot read `{}`: {e}", dir.display()))?;
        let path = entry.path();
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.starts_with('.') {
            continue;
        }
        let ty = entry
            .file_type()
            .map_err(|e| format!("cannot read `{}`: {e}", path.display()))?;
        if ty.is_dir() || (ty.is_symlink() && path.is_dir()) {
            walk(root, &path, depth + 1, out)?;
        } else if name.ends_with(".lua") {
            if let Ok(rel) = path.strip_prefix(root) {
                let parts: Vec<&str> = rel.iter().filter_map(|p| p.to_str()).collect();
                out.push(parts.join("/"));
            }
        }
        if out.len() > MAX_FILES {
            return Ok(());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (path, text) in files {
            let p = dir.path().join(path);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        }
        dir
    }

    #[test]
    fn names_follow_the_question_mark_patterns() {
        assert_eq!(module_name("edge.lua").as_deref(), Some("edge"));
        assert_eq!(module_name("a/b.lua").as_deref(), Some("a.b"));
        assert_eq!(
            module_name("resty/redis/init.lua").as_deref(),
            Some("resty.redis")
        );
        assert_eq!(module_name("init.lua"), None);
        assert_eq!(module_name("a.b.lua"), None);
        assert_eq!(module_name("notes.txt"), None);
    }

    #[test]
    fn earlier_directories_win_and_the_set_has_an_identity() {
        let a = tree(&[("m.lua", "return 'a'"), ("x/init.lua", "return 1")]);
        let b = tree(&[("m.lua", "return 'b'"), ("n.lua", "return 2")]);
        let set = Modules::load(&[a.path().into(), b.path().into()]).unwrap();
        assert_eq!(set.names().collect::<Vec<_>>(), ["m", "n", "x"]);
        assert_eq!(set.get("m").unwrap().source, "return 'a'");
        let again = Modules::load(&[a.path().into(), b.path().into()]).unwrap();
        assert_eq!(set.id, again.id);
        std::fs::write(b.path().join("n.lua"), "return 3").unwrap();
        let changed = Modules::load(&[a.path().into(), b.path().into()]).unwrap();
        assert_ne!(set.id, changed.id);
    }

    #[test]
    fn syntax_errors_name_the_file_and_line() {
        let a = tree(&[
            ("ok.lua", "return {}"),
            ("lib/bad.lua", "local x = 1\nif x then\n"),
        ]);
        let errs = Modules::load(&[a.path().into()]).unwrap_err();
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert_eq!(errs[0].file, "lib/bad.lua");
        assert!(
            errs[0].message.starts_with("syntax error at lib/bad.lua:"),
            "{}",
            errs[0].message
        );
    }

    /// Runs `code` (access phase, requiring from `files`) `times` times on one worker and
    /// returns the `X-Out` header the last call set, or the error.
    fn run(files: &[(&str, &str)], code: &str, times: usize) -> Result<String, String> {
        use crate::harness::{FakeRequest, Harness};
        use sluicegate_core::phase::{Phase, Plugin};
        let dir = tree(files);
        let set = Arc::new(Modules::load(&[dir.path().into()]).map_err(|e| format!("{e:?}"))?);
        let script = Arc::new(compile("main", code).unwrap().using(&set));
        let plugin = crate::plugin::Lua::new(script, Phase::Access);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        tokio::task::LocalSet::new().block_on(&rt, async {
            let h = Harness::new(crate::LuaSettings::default()).unwrap();
            let mut out = Err("never ran".to_string());
            for _ in 0..times {
                let mut ctx = h.request(FakeRequest::default());
                out = match plugin.access(&mut ctx).run().await {
                    Ok(_) => Ok(ctx
                        .head
                        .headers
                        .get("x-out")
                        .map(|v| v.to_str().unwrap_or("").to_string())
                        .unwrap_or_default()),
                    Err(e) => Err(e.to_string()),
                };
            }
            out
        })
    }

    #[test]
    fn modules_load_once_per_worker_and_keep_their_state() {
        let files = [
            (
                "counter.lua",
                "local M = {}\nlocal n = 0\nfunction M.next() n = n + 1 return n end\nreturn M",
            ),
            (
                "lib/init.lua",
                "return { name = 'lib', helper = require('lib.helper') }",
            ),
            ("lib/helper.lua", "return function(x) return x .. '!' end"),
        ];
        let code = "local c = require 'counter'\nlocal lib = require 'lib'\nngx.req.set_header('X-Out', lib.helper(lib.name .. c.next()))";
        assert_eq!(run(&files, code, 1).unwrap(), "lib1!");
        assert_eq!(run(&files, code, 3).unwrap(), "lib3!");
    }

    #[test]
    fn a_module_required_in_a_loop_fails_with_lua_s_message() {
        let files = [
            ("a.lua", "return require 'b'"),
            ("b.lua", "return require 'a'"),
        ];
        let err = run(&files, "require 'a'", 1).unwrap_err();
        assert!(
            err.contains("loop or previous error loading module 'a'"),
            "{err}"
        );
    }

    #[test]
    fn modules_cannot_change_built_ins_or_the_script_s_globals() {
        let files = [
            ("evil.lua", "ngx = nil\nreturn {}"),
            (
                "tidy.lua",
                "shared = 'module'\nreturn { get = function() return shared end }",
            ),
        ];
        let err = run(&files, "require 'evil'", 1).unwrap_err();
        assert!(
            err.contains("cannot assign to the built-in global 'ngx'"),
            "{err}"
        );
        let code = "shared = 'script'\nlocal t = require 'tidy'\nngx.req.set_header('X-Out', shared .. '/' .. t.get())";
        assert_eq!(run(&files, code, 2).unwrap(), "script/module");
        let err = run(&files, "string.upper = nil", 1).unwrap_err();
        assert!(!err.is_empty());
    }

    #[test]
    fn a_failed_load_is_retried_and_a_missing_module_names_the_files_searched() {
        let files = [("flaky.lua", "error('not today')")];
        let err = run(&files, "require 'flaky'", 2).unwrap_err();
        assert!(err.contains("not today"), "{err}");
        let err = run(&files, "require 'resty.redis'", 1).unwrap_err();
        assert!(err.contains("module 'resty.redis' not found"), "{err}");
        assert!(
            err.contains("resty/redis.lua") && err.contains("resty/redis/init.lua"),
            "{err}"
        );
    }

    #[test]
    fn a_script_requiring_a_waiting_module_runs_in_a_coroutine() {
        let files = [(
            "nap.lua",
            "return function() ngx.sleep(0.001) return 'rested' end",
        )];
        let code = "local nap = require 'nap'\nngx.req.set_header('X-Out', nap())";
        assert_eq!(run(&files, code, 1).unwrap(), "rested");
    }

    #[test]
    fn a_missing_directory_is_an_error() {
        let errs = Modules::load(&[PathBuf::from("/nonexistent/lua")]).unwrap_err();
        assert!(errs[0].message.contains("cannot read"), "{errs:?}");
    }
}
