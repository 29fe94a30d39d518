//! The `envoy_lua` plugin: one Envoy filter script, its request hook in the access phase
//! and its response hook in the header filter. The plugins crate builds it from the
//! configuration; the proxy core sees one more [`Plugin`].

use std::rc::Rc;
use std::sync::Arc;

use mlua::IntoLuaMulti;
use sluicegate_core::context::{RequestCtx, ResponseHead, WorkerView};
use sluicegate_core::phase::{Flow, Phase, PhaseSet, Plugin, PluginError, Step};
use sluicegate_http1::raw::RawHeaders;
use sluicegate_lua::vm::{Instance, Vm};
use sluicegate_lua::Script;

use super::handle::Dir;
use super::Driver;

/// What a script error does to the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnError {
    /// Envoy's behaviour: logged and counted, the request goes on with the edits made so
    /// far.
    Continue,
    /// Answered 500, as a failing `lua` script is.
    Fail,
}

/// An Envoy Lua filter.
pub struct EnvoyLua {
    script: Arc<Script>,
    on_request: bool,
    on_response: bool,
    /// Whether the request hook needs a coroutine (`body()`, `httpCall`, waiting modules).
    may_yield: bool,
    on_error: OnError,
}

impl std::fmt::Debug for EnvoyLua {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EnvoyLua")
            .field("script", &self.script.name)
            .field("on_request", &self.on_request)
            .field("on_response", &self.on_response)
            .finish()
    }
}

/// Words that make a request hook wait, besides those of [`Script::may_yield`].
const WAITING: &[&str] = &["body", "bodyChunks", "httpCall"];

impl EnvoyLua {
    /// The filter for `script`; hooks the source does not name are not run. As in Envoy,
    /// the script's top-level code runs once per worker ([`Script::load_once`]).
    pub fn new(script: Script, on_error: OnError) -> Self {
        let script = Arc::new(script.load_once());
        let src = &script.source;
        EnvoyLua {
            on_request: src.contains("envoy_on_request"),
            on_response: src.contains("envoy_on_response"),
            may_yield: script.may_yield || WAITING.iter().any(|w| src.contains(w)),
            on_error,
            script,
        }
    }

    /// Whether the script defines a request hook, a response hook.
    pub fn hooks(&self) -> (bool, bool) {
        (self.on_request, self.on_response)
    }

    /// Applies [`OnError`] to a hook's outcome.
    fn tolerate(
        &self,
        r: Result<Flow, PluginError>,
        worker: &dyn WorkerView,
        request_id: &http::HeaderValue,
    ) -> Result<Flow, PluginError> {
        match r {
            Err(PluginError::Script {
                script,
                message,
                over_budget: false,
            }) if self.on_error == OnError::Continue => {
                worker.script_failed(&script, "error");
                let request_id = String::from_utf8_lossy(request_id.as_bytes());
                tracing::error!(request_id = %request_id, script = %script, error = %message, "Script failed; the request goes on (envoy_lua).");
                Ok(Flow::Continue)
            }
            other => other,
        }
    }

    fn response(
        &self,
        ctx: &mut RequestCtx,
        resp: &mut ResponseHead,
        raw: Option<&mut RawHeaders>,
    ) -> Result<(), PluginError> {
        if !self.on_response {
            return Ok(());
        }
        let (worker, id) = (ctx.worker.clone(), ctx.request_id.clone());
        let entry = entry(Dir::Response);
        let r =
            sluicegate_lua::phase::header_filter_entry(&self.script, ctx, resp, raw, Some(&entry));
        self.tolerate(r.map(|()| Flow::Continue), &*worker, &id)
            .map(|_| ())
    }
}

/// The call of `envoy_on_request` / `envoy_on_response` through the VM's driver: the
/// worker's first call runs the chunk first; later ones call the hook's kept caller.
fn entry(
    dir: Dir,
) -> impl Fn(&Vm, &Rc<Instance>) -> mlua::Result<(mlua::Function, mlua::MultiValue, u64)> {
    move |vm, inst| {
        let Some((globals, sealed)) = inst.prelude() else {
            return Err(mlua::Error::runtime(
                "an Envoy filter must be loaded once per worker",
            ));
        };
        // The handle the driver makes is bound to this token.
        let token = super::next_token();
        let code = f64::from(dir.code());
        if sealed {
            let caller = inst.kept(usize::from(dir.code()), || {
                let driver = driver(vm)?;
                driver.caller.call((globals, hook_of(&driver, dir), code))
            })?;
            return Ok((caller, mlua::MultiValue::new(), token));
        }
        let driver = driver(vm)?;
        let hook = hook_of(&driver, dir);
        // The worker's first call: run the chunk, then seal what it defined.
        let weak = Rc::downgrade(inst);
        let seal = vm.lua.create_function(move |_, ()| match weak.upgrade() {
            Some(i) => i.seal(),
            None => Ok(()),
        })?;
        let args = (code, globals, hook, inst.function(), seal).into_lua_multi(&vm.lua)?;
        Ok((driver.first.clone(), args, token))
    }
}

/// The VM's driver of Envoy hooks.
fn driver(vm: &Vm) -> mlua::Result<mlua::AppDataRef<'_, Driver>> {
    vm.lua
        .app_data_ref::<Driver>()
        .ok_or_else(|| mlua::Error::runtime("the Envoy filter API is not installed in this VM"))
}

/// The name of the hook of `dir`, as the driver keeps it.
fn hook_of(driver: &Driver, dir: Dir) -> &mlua::LuaString {
    match dir {
        Dir::Request => &driver.on_request,
        Dir::Response => &driver.on_response,
    }
}

impl Plugin for EnvoyLua {
    fn name(&self) -> &'static str {
        "envoy_lua"
    }

    fn phases(&self) -> PhaseSet {
        match (self.on_request, self.on_response) {
            (true, true) => PhaseSet::of(&[Phase::Access, Phase::HeaderFilter]),
            (false, true) => PhaseSet::of(&[Phase::HeaderFilter]),
            _ => PhaseSet::of(&[Phase::Access]),
        }
    }

    /// `respond()` answers requests, but a filter alone does not serve a route.
    fn answers(&self) -> bool {
        false
    }

    fn access<'a>(&'a self, ctx: &'a mut RequestCtx) -> Step<'a> {
        if !self.on_request {
            return Step::next();
        }
        let (worker, id) = (ctx.worker.clone(), ctx.request_id.clone());
        let entry = entry(Dir::Request);
        let step = sluicegate_lua::phase::run_request_entry(
            &self.script,
            Phase::Access,
            ctx,
            Some(&entry),
            self.may_yield,
        );
        match step {
            Step::Ready(r) => Step::Ready(self.tolerate(r, &*worker, &id)),
            Step::Wait(f) => Step::Wait(Box::pin(async move {
                let r = f.await;
                self.tolerate(r, &*worker, &id)
            })),
        }
    }

    fn header_filter(
        &self,
        ctx: &mut RequestCtx,
        resp: &mut ResponseHead,
    ) -> Result<(), PluginError> {
        self.response(ctx, resp, None)
    }

    /// The response hook reads headers through the handle, which merges raw upstream
    /// lines in on first use; writes only drop them.
    fn filters_raw_headers(&self) -> bool {
        true
    }

    fn header_filter_raw(
        &self,
        ctx: &mut RequestCtx,
        resp: &mut ResponseHead,
        raw: &mut RawHeaders,
    ) -> Result<(), PluginError> {
        self.response(ctx, resp, Some(raw))
    }
}
