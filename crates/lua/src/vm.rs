//! One Luau VM per worker thread: the host state API functions share ([`Host`]), the cache of
//! loaded scripts ([`Instance`]), and the two ways to call a script — synchronously (filter
//! and log phases, and request scripts that name no waiting function) and as a future
//! ([`AsyncCall`]: scripts that may wait, timers), both under the CPU budget and memory cap.
//!
//! Invariants: `Host::cur` holds the state of the call whose Lua code is running, and is
//! empty between polls; globals a script assigns live in its environment table only while
//! a call of that script is in progress on this worker (the table is cleared when the last
//! one ends), so memory cannot grow with requests through globals.

use std::cell::{Cell, OnceCell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::rc::Weak;
use std::sync::Arc;
use std::time::Duration;

use mlua::{Function, Lua, Table};

use sluicegate_core::context::WorkerView;

use super::call::{classify, AsyncCall};
use super::state::ReqState;
use super::{budget, convert, Failure, FailureKind, Kind, Kinds, Modules, Runtime, Script};

/// A script loaded into this VM.
pub struct Instance {
    /// Script name.
    pub name: Rc<str>,
    func: Function,
    env: Table,
    script: std::sync::Weak<Script>,
    active: Cell<u32>,
    /// For scripts whose top-level code runs once ([`Script::load_once`]): the table the
    /// chunk defines its globals in, and the metatable that seals it once the chunk ran.
    prelude: Option<(Table, Table)>,
    /// Whether the prelude is sealed (the chunk ran).
    sealed: Cell<bool>,
    /// Functions an extension keeps for this instance, by slot ([`Instance::kept`]).
    kept: RefCell<[Option<Function>; 2]>,
}

impl Instance {
    /// Counts a call of the script as running (its globals live until the last one ends).
    fn enter(&self) {
        self.active.set(self.active.get() + 1);
    }

    /// The loaded chunk.
    pub fn function(&self) -> Function {
        self.func.clone()
    }

    /// Whether a configuration still uses the script (timers stop once none does).
    pub fn alive(&self) -> bool {
        self.script.strong_count() > 0
    }

    /// The script's globals (cleared when no call of it runs).
    pub fn env(&self) -> &Table {
        &self.env
    }

    /// For a [`Script::load_once`] script: the table its top-level code defines globals
    /// in (the chunk's environment; reading a name looks there first, then in the
    /// per-call globals) and whether the chunk has run (the table is then sealed: new
    /// names assigned by later code go to the per-call globals, [`Instance::env`]).
    pub fn prelude(&self) -> Option<(&Table, bool)> {
        self.prelude.as_ref().map(|(p, _)| (p, self.sealed.get()))
    }

    /// Seals the prelude after the chunk ran (see [`Instance::prelude`]).
    pub fn seal(&self) -> mlua::Result<()> {
        if let Some((p, sealed)) = &self.prelude {
            p.set_metatable(Some(sealed.clone()))?;
            self.sealed.set(true);
        }
        Ok(())
    }

    /// The function an extension keeps in `slot` (0 or 1) for this instance, made by
    /// `make` on first use and dropped with the instance (the Envoy filter's caller of
    /// each hook, made once its prelude is sealed).
    pub fn kept(
        &self,
        slot: usize,
        make: impl FnOnce() -> mlua::Result<Function>,
    ) -> mlua::Result<Function> {
        if let Some(Some(f)) = self.kept.borrow().get(slot) {
            return Ok(f.clone());
        }
        let f = make()?;
        if let Some(entry) = self.kept.borrow_mut().get_mut(slot) {
            *entry = Some(f.clone());
        }
        Ok(f)
    }

    /// The script, while a configuration still uses it.
    pub fn script_arc(&self) -> Option<Arc<Script>> {
        self.script.upgrade()
    }
}

/// State every API function of one VM shares.
pub struct Host {
    /// Context of the running call.
    pub kind: Cell<Kind>,
    /// Request state of the running call.
    pub cur: RefCell<Option<Box<ReqState>>>,
    /// The running script.
    pub instance: RefCell<Option<Rc<Instance>>>,
    /// Process handles.
    pub rt: Runtime,
    /// When set (specs), `ngx.log` lines are collected here instead of logged.
    pub captured_logs: RefCell<Option<Vec<String>>>,
    /// When set (the spec VM), `ngx.log` and `print` write plain lines to stderr.
    pub plain_logs: Cell<bool>,
    /// Timers pending and running on this worker.
    pub timers: Cell<(usize, usize)>,
    /// The VM this host belongs to (timers start calls through it).
    pub vm: RefCell<Weak<Vm>>,
    /// Recently returned short strings (`ngx.var` values repeat across requests).
    pub strings: StringCache,
    /// Whether the running call is a coroutine that can wait (false for calls made
    /// without one: filter and log phases, and scripts that name no waiting function).
    pub in_async: Cell<bool>,
    /// User modules loaded in this VM.
    pub modules: RefCell<ModuleCache>,
}

/// The user modules a VM loaded, per module set: each set's modules are loaded once, on
/// their first `require`, and dropped with the last script that uses the set.
#[derive(Default)]
pub struct ModuleCache {
    sets: Vec<LoadedSet>,
}

struct LoadedSet {
    set: std::sync::Weak<Modules>,
    loaded: HashMap<String, Loaded>,
}

enum Loaded {
    /// Its chunk is running: a `require` of it now is a loop.
    Loading,
    /// What its chunk returned (`true` for nothing), as `package.loaded` holds it.
    Done(mlua::Value),
}

impl ModuleCache {
    fn of(&mut self, set: &Arc<Modules>) -> &mut HashMap<String, Loaded> {
        self.sets.retain(|s| s.set.strong_count() > 0);
        let i = match self
            .sets
            .iter()
            .position(|s| std::ptr::eq(s.set.as_ptr(), Arc::as_ptr(set)))
        {
            Some(i) => i,
            None => {
                self.sets.push(LoadedSet {
                    set: Arc::downgrade(set),
                    loaded: HashMap::new(),
                });
                self.sets.len() - 1
            }
        };
        &mut self.sets[i].loaded
    }
}

impl Host {
    fn new(rt: Runtime) -> Self {
        Host {
            kind: Cell::new(Kind::Init),
            cur: RefCell::new(None),
            instance: RefCell::new(None),
            rt,
            captured_logs: RefCell::new(None),
            plain_logs: Cell::new(false),
            timers: Cell::new((0, 0)),
            vm: RefCell::new(Weak::new()),
            in_async: Cell::new(false),
            strings: StringCache::default(),
            modules: RefCell::default(),
        }
    }

    /// Fails with a clear message unless the running call's context is in `allowed`.
    pub fn check(&self, lua: &Lua, name: &str, allowed: Kinds) -> mlua::Result<Kind> {
        let kind = self.kind.get();
        if allowed.has(kind) {
            Ok(kind)
        } else {
            Err(convert::error(
                lua,
                format!(
                    "{name} is not allowed in the {} phase (allowed in: {})",
                    kind.name(),
                    allowed.names()
                ),
            ))
        }
    }

    /// Fails unless the running call can wait (a function that yields was reached through a
    /// computed name from a script that names no waiting function).
    pub fn check_async(&self, lua: &Lua, name: &str) -> mlua::Result<()> {
        if self.in_async.get() {
            Ok(())
        } else {
            Err(convert::error(
                lua,
                format!("{name} cannot wait in this call: name it directly in the script (scripts that name no waiting function run without a coroutine)"),
            ))
        }
    }

    /// Runs `f` on the running call's request after checking the context.
    pub fn with_req<R>(
        &self,
        lua: &Lua,
        name: &str,
        allowed: Kinds,
        f: impl FnOnce(&mut ReqState) -> mlua::Result<R>,
    ) -> mlua::Result<R> {
        self.check(lua, name, allowed)?;
        let mut cur = self
            .cur
            .try_borrow_mut()
            .map_err(|_| convert::error(lua, format!("{name} cannot be called from here")))?;
        match cur.as_deref_mut() {
            Some(state) => f(state),
            None => Err(convert::error(
                lua,
                format!("{name}: no request in this context"),
            )),
        }
    }

    /// The running script's name, or `-`.
    pub fn script_name(&self) -> Rc<str> {
        match &*self.instance.borrow() {
            Some(i) => i.name.clone(),
            None => Rc::from("-"),
        }
    }
}

/// Lua strings recently handed to scripts, by content: a hit hands out the same string
/// again instead of creating (hashing, interning, allocating under the memory guard) a new
/// one. Header values, hosts and URIs repeat from one request to the next.
#[derive(Default)]
pub struct StringCache {
    map: RefCell<HashMap<Box<[u8]>, mlua::LuaString>>,
}

impl StringCache {
    /// Strings longer than this are not cached.
    const MAX_LEN: usize = 128;
    /// Entries kept before the cache starts over.
    const MAX_ENTRIES: usize = 256;

    /// The Lua string with these bytes.
    pub fn get(&self, lua: &Lua, bytes: &[u8]) -> mlua::Result<mlua::LuaString> {
        if bytes.len() > Self::MAX_LEN {
            return lua.create_string(bytes);
        }
        if let Some(s) = self.map.borrow().get(bytes) {
            return Ok(s.clone());
        }
        let s = lua.create_string(bytes)?;
        let mut map = self.map.borrow_mut();
        if map.len() >= Self::MAX_ENTRIES {
            map.clear();
        }
        map.insert(bytes.into(), s.clone());
        Ok(s)
    }
}

/// One VM with its host state and loaded scripts.
pub struct Vm {
    /// The Lua state.
    pub lua: Lua,
    /// Shared with every API function.
    pub host: Rc<Host>,
    globals: Table,
    /// `__newindex` of script environments: refuses to shadow built-in globals.
    env_newindex: Function,
    /// Makes the `__newindex` of a sealed prelude: refuses built-in names and writes new
    /// names into the per-call table it is given.
    sealed_newindex: Function,
    /// By script id (already a hash).
    instances: RefCell<sluicegate_core::prehashed::PrehashedMap<Rc<Instance>>>,
    /// Boxed: a state moves between the pool, the running slot and call futures by pointer.
    #[allow(clippy::vec_box)]
    pool: RefCell<Vec<Box<ReqState>>>,
    memory_limit: Cell<usize>,
}

/// The outcome of a call and the state it ran with (to be returned to the pool).
pub struct Done {
    /// Ok, or why the call failed.
    pub result: Result<(), Failure>,
    /// The request state as the script left it.
    pub state: Box<ReqState>,
}

impl Vm {
    /// A sandboxed VM with the whole API registered.
    pub fn new(rt: Runtime) -> mlua::Result<Rc<Vm>> {
        Self::with_extras(rt, None)
    }

    /// A VM with `extras` registered before it is frozen (see [`sandbox::install`](super::sandbox::install)).
    pub fn with_extras(
        rt: Runtime,
        extras: Option<super::sandbox::Extras<'_>>,
    ) -> mlua::Result<Rc<Vm>> {
        let lua = super::sandbox::new_lua()?;
        let host = Rc::new(Host::new(rt));
        let globals = super::sandbox::install(&lua, &host, extras)?;
        // Imports of built-in names are resolved once at load time, so assigning to one
        // would be silently ignored: refuse it with a clear error instead.
        let env_newindex: Function = lua
            .load(
                "local builtins = ... return function(t, k, v) \
                   if rawget(builtins, k) ~= nil then \
                     error(\"cannot assign to the built-in global '\" .. tostring(k) .. \"' (use a local variable)\", 2) \
                   end rawset(t, k, v) end",
            )
            .set_name("=sandbox")
            .call(&globals)?;
        let sealed_newindex: Function = lua
            .load(
                "local builtins = ... return function(call) return function(t, k, v) \
                   if rawget(builtins, k) ~= nil then \
                     error(\"cannot assign to the built-in global '\" .. tostring(k) .. \"' (use a local variable)\", 2) \
                   end rawset(call, k, v) end end",
            )
            .set_name("=sandbox")
            .call(&globals)?;
        let vm = Rc::new(Vm {
            lua,
            host,
            globals,
            env_newindex,
            sealed_newindex,
            instances: RefCell::default(),
            pool: RefCell::new(Vec::new()),
            memory_limit: Cell::new(0),
        });
        *vm.host.vm.borrow_mut() = Rc::downgrade(&vm);
        vm.apply_memory_limit((vm.host.rt.settings)().memory_limit);
        Ok(vm)
    }

    /// Sets the memory cap when it changed.
    pub fn apply_memory_limit(&self, limit: usize) {
        if self.memory_limit.get() != limit {
            let floor = self.lua.used_memory() + 1024 * 1024;
            if self.lua.set_memory_limit(limit.max(floor)).is_ok() {
                self.memory_limit.set(limit);
            }
        }
    }

    /// Heap size at which running code is stopped: 13/16 of the cap, measured by Luau's own
    /// count, which runs about 10% below mlua's (that one also counts the VM's internals).
    /// Loops are then stopped at a safepoint, with a line number, before the hard cap.
    pub(super) fn soft_limit(&self) -> usize {
        match self.memory_limit.get() {
            0 => usize::MAX,
            l => l / 16 * 13,
        }
    }

    /// The loaded copy of `script`, loading its bytecode on first use.
    pub fn instance(&self, script: &Arc<Script>) -> Result<Rc<Instance>, Failure> {
        if let Some(i) = self.instances.borrow().get(&script.id) {
            return Ok(i.clone());
        }
        let inst = Rc::new(self.load(script).map_err(|e| classify(&e, &script.name))?);
        let mut map = self.instances.borrow_mut();
        // A new script usually means a reload: drop the ones no snapshot uses any more.
        map.retain(|_, i| i.script.strong_count() > 0 || i.active.get() > 0);
        map.insert(script.id, inst.clone());
        Ok(inst)
    }

    /// A fresh environment: its own globals (`_G` included) → the frozen built-ins, which
    /// it cannot shadow.
    fn environment(&self) -> mlua::Result<Table> {
        // env (own globals) → proxy {_G = env} → frozen globals.
        let env = self.lua.create_table()?;
        let proxy = self.lua.create_table()?;
        proxy.raw_set("_G", &env)?;
        let proxy_meta = self.lua.create_table()?;
        proxy_meta.raw_set("__index", &self.globals)?;
        proxy.set_metatable(Some(proxy_meta))?;
        let env_meta = self.lua.create_table()?;
        env_meta.raw_set("__index", proxy)?;
        env_meta.raw_set("__newindex", &self.env_newindex)?;
        env.set_metatable(Some(env_meta))?;
        env.set_safeenv(true);
        Ok(env)
    }

    fn load(&self, script: &Arc<Script>) -> mlua::Result<Instance> {
        // The script's globals are cleared when no call of it runs (see `leave`).
        let env = self.environment()?;
        let (chunk_env, prelude) = if script.load_once {
            // prelude (what the chunk defined) → env (per-call globals) → built-ins.
            let prelude = self.lua.create_table()?;
            let open = self.lua.create_table()?;
            open.raw_set("__index", &env)?;
            open.raw_set("__newindex", &self.env_newindex)?;
            prelude.set_metatable(Some(open))?;
            let sealed = self.lua.create_table()?;
            sealed.raw_set("__index", &env)?;
            sealed.raw_set("__newindex", self.sealed_newindex.call::<Function>(&env)?)?;
            prelude.set_safeenv(true);
            // `_G` is the prelude: `_G.helper` finds what the chunk defined, and new
            // names written through it still land in the per-call globals.
            if let Some(meta) = env.metatable() {
                if let Ok(proxy) = meta.raw_get::<Table>("__index") {
                    proxy.raw_set("_G", &prelude)?;
                }
            }
            (prelude.clone(), Some((prelude, sealed)))
        } else {
            (env.clone(), None)
        };
        let func = self
            .lua
            .load(&script.bytecode[..])
            .set_name(format!("={}", script.name))
            .set_mode(mlua::chunk::ChunkMode::Binary)
            .set_environment(chunk_env)
            .into_function()?;
        Ok(Instance {
            name: Rc::from(script.name.as_str()),
            func,
            env,
            script: Arc::downgrade(script),
            active: Cell::new(0),
            prelude,
            sealed: Cell::new(false),
            kept: RefCell::default(),
        })
    }

    /// `require(name)` of a user module, from the module set of the running script:
    /// loaded on first use into an environment of its own that lives as long as the set,
    /// then the cached value. `None` when the set has no such module.
    pub fn require_module(&self, name: &str) -> mlua::Result<Option<mlua::Value>> {
        let running = self
            .host
            .instance
            .borrow()
            .as_ref()
            .and_then(|i| i.script.upgrade());
        let Some(set) = running.and_then(|s| s.modules.clone()) else {
            return Ok(None);
        };
        let Some(module) = set.get(name).cloned() else {
            return Ok(None);
        };
        match self.host.modules.borrow_mut().of(&set).get(name) {
            Some(Loaded::Done(v)) => return Ok(Some(v.clone())),
            Some(Loaded::Loading) => {
                return Err(convert::error(
                    &self.lua,
                    format!("loop or previous error loading module '{name}'"),
                ))
            }
            None => {}
        }
        self.host
            .modules
            .borrow_mut()
            .of(&set)
            .insert(name.to_string(), Loaded::Loading);
        // The cache is not borrowed while the chunk runs: it may require other modules.
        let loaded = self.environment().and_then(|env| {
            self.lua
                .load(&module.bytecode[..])
                .set_name(format!("={}", module.name))
                .set_mode(mlua::chunk::ChunkMode::Binary)
                .set_environment(env)
                .into_function()?
                .call::<mlua::Value>(name)
        });
        let mut cache = self.host.modules.borrow_mut();
        let entries = cache.of(&set);
        match loaded {
            Ok(v) => {
                let v = if v.is_nil() {
                    mlua::Value::Boolean(true)
                } else {
                    v
                };
                entries.insert(name.to_string(), Loaded::Done(v.clone()));
                Ok(Some(v))
            }
            Err(e) => {
                // Unlike Lua 5.1, a failed load is not remembered: the next `require`
                // tries again (a transient failure must not break a worker for good).
                entries.remove(name);
                Err(e)
            }
        }
    }

    /// A request state from the pool.
    pub fn take_state(&self) -> Box<ReqState> {
        self.pool.borrow_mut().pop().unwrap_or_default()
    }

    /// Returns a state to the pool.
    pub fn put_state(&self, mut state: Box<ReqState>) {
        state.reset();
        let mut pool = self.pool.borrow_mut();
        if pool.len() < 64 {
            pool.push(state);
        }
    }

    pub(super) fn swap_in(
        &self,
        kind: Kind,
        state: Option<Box<ReqState>>,
        inst: &Rc<Instance>,
        is_async: bool,
    ) -> Saved {
        Saved {
            in_async: self.host.in_async.replace(is_async),
            kind: self.host.kind.replace(kind),
            state: self.host.cur.replace(state),
            instance: self.host.instance.replace(Some(inst.clone())),
        }
    }

    pub(super) fn swap_out(&self, saved: Saved) -> Option<Box<ReqState>> {
        self.host.in_async.set(saved.in_async);
        self.host.kind.set(saved.kind);
        self.host.instance.replace(saved.instance);
        self.host.cur.replace(saved.state)
    }

    /// Calls `inst` synchronously (filter and log phases: nothing may wait there).
    pub fn call_sync(
        &self,
        inst: &Rc<Instance>,
        kind: Kind,
        state: Box<ReqState>,
        budget: Duration,
    ) -> Done {
        self.call_entry_sync(inst, kind, None, state, budget)
    }

    /// Calls `entry` (a function and its arguments; `None`: the script's chunk)
    /// synchronously, in `inst`'s name and with its globals.
    pub fn call_entry_sync(
        &self,
        inst: &Rc<Instance>,
        kind: Kind,
        entry: Option<(Function, mlua::MultiValue)>,
        state: Box<ReqState>,
        budget: Duration,
    ) -> Done {
        inst.enter();
        let saved = self.swap_in(kind, Some(state), inst, false);
        let armed = budget::arm(budget, self.soft_limit());
        let r = match entry {
            None => inst.func.call::<()>(()),
            Some((f, args)) => f.call::<()>(args),
        };
        drop(armed);
        let state = self.swap_out(saved).unwrap_or_default();
        let result = match r {
            Ok(()) => Ok(()),
            // `ngx.exit` in a call without a coroutine unwinds with an error after recording
            // the exit.
            Err(_) if state.out.exit.is_some() => Ok(()),
            Err(e) => Err(classify(&e, &inst.name)),
        };
        self.leave(inst, &result);
        Done { result, state }
    }

    /// Calls `inst` as a future: awaiting inside (sleep, HTTP, body reads) suspends it.
    pub fn call_async(
        self: &Rc<Self>,
        inst: Rc<Instance>,
        kind: Kind,
        state: Box<ReqState>,
        budget: Duration,
    ) -> AsyncCall {
        self.call_entry_async(inst, kind, None, state, budget)
    }

    /// Calls `entry` (`None`: the script's chunk) as a future, in `inst`'s name.
    pub fn call_entry_async(
        self: &Rc<Self>,
        inst: Rc<Instance>,
        kind: Kind,
        entry: Option<(Function, mlua::MultiValue)>,
        state: Box<ReqState>,
        budget: Duration,
    ) -> AsyncCall {
        inst.enter();
        let fut = match entry {
            None => inst.func.call_async::<()>(()),
            Some((f, args)) => f.call_async::<()>(args),
        };
        AsyncCall {
            vm: self.clone(),
            inst,
            kind,
            fut,
            state: Some(state),
            remaining: budget,
            done: false,
        }
    }

    /// Calls a Lua function (timer callbacks, spec files) as a future in `inst`'s name.
    pub fn call_function_async(
        self: &Rc<Self>,
        inst: Rc<Instance>,
        kind: Kind,
        func: &Function,
        args: mlua::MultiValue,
        budget: Duration,
    ) -> AsyncCall {
        inst.enter();
        let fut = func.call_async::<()>(args);
        let mut state = self.take_state();
        state.kind = kind;
        AsyncCall {
            vm: self.clone(),
            inst,
            kind,
            fut,
            state: Some(state),
            remaining: budget,
            done: false,
        }
    }

    /// Bookkeeping after a call of `inst` ended (successfully or not).
    pub(super) fn leave(&self, inst: &Instance, result: &Result<(), Failure>) {
        let active = inst.active.get().saturating_sub(1);
        inst.active.set(active);
        if active == 0 {
            // Unconditionally: clearing an empty table costs less than asking whether it
            // is empty (`next` through mlua's reference thread).
            let _ = inst.env.clear();
        }
        if matches!(result, Err(f) if f.kind == FailureKind::MemoryLimit) {
            // Give the memory back now: the next call must not start at the cap.
            let _ = self.lua.gc_collect();
            let _ = self.lua.gc_collect();
        }
    }

    /// Number of scripts loaded (for tests and the admin listing).
    pub fn loaded_scripts(&self) -> usize {
        self.instances.borrow().len()
    }

    /// Memory used by the VM.
    pub fn used_memory(&self) -> usize {
        self.lua.used_memory()
    }
}

pub(super) struct Saved {
    in_async: bool,
    kind: Kind,
    state: Option<Box<ReqState>>,
    instance: Option<Rc<Instance>>,
}

/// A worker's VM, created on first use (configurations without scripts never pay for it).
pub struct WorkerLua {
    rt: Runtime,
    vm: OnceCell<Result<Rc<Vm>, String>>,
}

impl WorkerLua {
    /// A lazily created VM for a worker with these process handles.
    pub fn new(rt: Runtime) -> Self {
        WorkerLua {
            rt,
            vm: OnceCell::new(),
        }
    }

    /// The VM (created now if needed).
    pub fn vm(&self) -> Result<&Rc<Vm>, Failure> {
        let vm = self.vm.get_or_init(|| {
            Vm::new(self.rt.clone()).map_err(|e| {
                tracing::error!(worker = self.rt.worker_id, error = %e, "Cannot create the Lua VM.");
                e.to_string()
            })
        });
        vm.as_ref().map_err(|e| Failure {
            kind: FailureKind::Error,
            message: format!("the Lua VM could not be created: {e}"),
        })
    }

    /// The VM of the worker `worker` (created now if needed).
    pub fn of(worker: &dyn WorkerView) -> Result<&Rc<Vm>, Failure> {
        worker
            .service::<WorkerLua>()
            .ok_or_else(|| Failure {
                kind: FailureKind::Error,
                message: "this worker has no Lua VM".into(),
            })?
            .vm()
    }

    /// The VM if it was created.
    pub fn created(&self) -> Option<&Rc<Vm>> {
        self.vm.get().and_then(|r| r.as_ref().ok())
    }
}
