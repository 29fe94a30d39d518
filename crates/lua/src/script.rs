//! Compiling scripts: source → Luau bytecode, once per configuration version (never per
//! request). The bytecode only ever comes from this compiler, never from outside, because
//! Luau does not verify bytecode it loads.

use std::hash::{Hash, Hasher};

/// A compiled script, shared by every worker (each loads the bytecode into its own VM).
#[derive(Debug)]
pub struct Script {
    /// Name in logs, metrics and error messages (`name:line: message`).
    pub name: String,
    /// Identity in each worker's cache of loaded scripts: a hash of name and source.
    pub id: u64,
    /// The bytecode.
    pub(crate) bytecode: Vec<u8>,
    /// The source text (kept for `sluicegate test` reports and the admin listing).
    pub source: String,
    /// Whether the script may wait (names a function that yields). Scripts that cannot are
    /// called without a coroutine, which is cheaper.
    pub may_yield: bool,
    /// The user modules `require` finds (`lua.package_path`), swapped with the script.
    pub modules: Option<std::sync::Arc<crate::modules::Modules>>,
    /// Whether the top-level code runs once per worker VM instead of on every call (Envoy
    /// filters: it defines the hooks). What it defines stays; globals assigned by later
    /// code still live for one call. See `vm::Instance::prelude`.
    pub load_once: bool,
}

impl Script {
    /// This script with its top-level code run once per worker ([`Script::load_once`]);
    /// a different script to the worker's cache than the same source run every call.
    pub fn load_once(mut self) -> Script {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (self.id, "load_once").hash(&mut h);
        self.id = h.finish();
        self.load_once = true;
        self
    }

    /// This script, requiring from `modules`: the set becomes part of its identity (a
    /// worker then loads it afresh, with the new modules), and a script that requires
    /// modules which wait runs in a coroutine.
    pub fn using(mut self, modules: &std::sync::Arc<crate::modules::Modules>) -> Script {
        if modules.is_empty() {
            return self;
        }
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (self.id, modules.id).hash(&mut h);
        self.id = h.finish();
        self.may_yield |= self.source.contains("require") && modules.may_yield();
        self.modules = Some(modules.clone());
        self
    }
}

/// Words that name the API functions that wait. A script whose source contains none of
/// them cannot reach one except through a computed name, which is refused with a clear
/// error (see `Host::in_async`).
const YIELDING: &[&str] = &[
    "sleep",
    "read_body",
    "http.request",
    "request_uri",
    "sluicegate.http",
    "socket",
    "semaphore",
    "ngx.thread",
    "wait",
    "enqueue",
];

/// A syntax error: the line in the script and the compiler's message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompileError {
    /// 1-based line in the script, when the compiler gave one.
    pub line: Option<usize>,
    /// What is wrong.
    pub message: String,
}

impl std::fmt::Display for CompileError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.line {
            Some(l) => write!(f, "line {l}: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

fn compiler() -> mlua::chunk::Compiler {
    // Level 2 inlines and unrolls; debug level 1 keeps line info for error messages.
    // Fields read through `_G` are not cached as imports (`_G` is the script's environment).
    mlua::chunk::Compiler::new()
        .set_optimization_level(2)
        .set_debug_level(1)
        .set_mutable_globals(["_G"])
}

/// Compiles `source`; `name` appears in runtime error messages as `name:line:`.
pub fn compile(name: &str, source: &str) -> Result<Script, CompileError> {
    let bytecode = compiler().compile(source).map_err(|e| syntax_error(&e))?;
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (name, source).hash(&mut h);
    Ok(Script {
        name: name.to_string(),
        id: h.finish(),
        bytecode,
        source: source.to_string(),
        may_yield: YIELDING.iter().any(|w| source.contains(w)),
        modules: None,
        load_once: false,
    })
}

/// Luau reports `:LINE: message` (or `[string "..."]:LINE: message`).
fn syntax_error(e: &mlua::Error) -> CompileError {
    let raw = match e {
        mlua::Error::SyntaxError { message, .. } => message.clone(),
        other => other.to_string(),
    };
    parse_located(&raw)
}

/// Splits `prefix:LINE: message` into line and message.
pub fn parse_located(raw: &str) -> CompileError {
    let text = raw.lines().next().unwrap_or(raw);
    let bytes = text.as_bytes();
    // Luau's compiler reports `LINE: message`; loaders `name:LINE: message`.
    let lead = bytes.iter().take_while(|b| b.is_ascii_digit()).count();
    if lead > 0 && bytes.get(lead) == Some(&b':') {
        return CompileError {
            line: text[..lead].parse().ok(),
            message: text[lead + 1..].trim().to_string(),
        };
    }
    // Otherwise find the first `:digits:` group.
    let mut i = 0;
    while let Some(off) = text[i..].find(':') {
        let start = i + off + 1;
        let digits = bytes[start..]
            .iter()
            .take_while(|b| b.is_ascii_digit())
            .count();
        if digits > 0 && bytes.get(start + digits) == Some(&b':') {
            let line = text[start..start + digits].parse().ok();
            let message = text[start + digits + 1..].trim().to_string();
            return CompileError { line, message };
        }
        i = start;
        if i >= text.len() {
            break;
        }
    }
    CompileError {
        line: None,
        message: text.trim().to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_syntax_errors_with_their_line() {
        let e = compile("auth", "local a = 1\nif a then\n  x = = 2\nend\n").unwrap_err();
        assert_eq!(e.line, Some(3), "{e:?}");
        assert!(!e.message.is_empty());
    }

    #[test]
    fn the_same_source_under_another_name_is_another_script() {
        let a = compile("a", "return 1").unwrap();
        let b = compile("b", "return 1").unwrap();
        assert_ne!(a.id, b.id);
        assert_eq!(a.id, compile("a", "return 1").unwrap().id);
    }

    #[test]
    fn only_scripts_naming_a_waiting_function_may_yield() {
        let auth =
            "if ngx.var.http_x_api_key ~= 'k' then return ngx.exit(ngx.HTTP_UNAUTHORIZED) end";
        assert!(!compile("a", auth).unwrap().may_yield);
        assert!(compile("b", "ngx.sleep(1)").unwrap().may_yield);
        assert!(
            compile("c", "local r = sluicegate.http.request('http://x/')")
                .unwrap()
                .may_yield
        );
        assert!(compile("d", "ngx.req.read_body()").unwrap().may_yield);
    }

    #[test]
    fn parses_located_messages() {
        let e = parse_located("[string \"x\"]:12: unexpected symbol");
        assert_eq!(
            (e.line, e.message.as_str()),
            (Some(12), "unexpected symbol")
        );
        assert_eq!(parse_located("no line").line, None);
        assert_eq!(parse_located("3: Expected identifier").line, Some(3));
    }
}
