//! Running a script for a request phase: moving the request into the VM's call state,
//! calling the script under the budget, moving it back, and turning what the script did
//! into a [`Flow`]:
//!
//! - `ngx.exit(status >= 200)` or `ngx.redirect` → respond with that status (and the output
//!   or a short default body); once output was produced, the status is the one in force
//!   when the first `ngx.say` ran, as in OpenResty;
//! - output (`ngx.say`/`ngx.print`) without exit → respond with it;
//! - `ngx.exit(ngx.OK)`, `ngx.exit(ngx.DECLINED)` or the end of the script → continue
//!   (the content phase answers with an empty 200 instead);
//! - `ngx.exit(ngx.ERROR)` → 500.

use std::rc::Rc;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, StatusCode};

use super::state::ReqState;
use super::vm::{Done, Vm};
use super::{Failure, FailureKind, Kind, Script, WorkerLua};
use sluicegate_core::context::{RequestCtx, ResponseHead};
use sluicegate_core::phase::{Flow, LocalResponse, Phase, PluginError, Step};
use sluicegate_http1::raw::RawHeaders;

/// Set once a body filter set `ngx.arg[2] = true`: later chunks are dropped.
#[derive(Clone)]
struct Truncated;

fn prepare(
    script: &Arc<Script>,
    ctx: &RequestCtx,
) -> Result<(Rc<Vm>, Rc<super::vm::Instance>), PluginError> {
    let vm = WorkerLua::of(&*ctx.worker)
        .map_err(|f| f.into_plugin_error(&script.name))?
        .clone();
    vm.apply_memory_limit(ctx.snapshot.script_limits().memory_limit);
    let inst = vm
        .instance(script)
        .map_err(|f| f.into_plugin_error(&script.name))?;
    Ok((vm, inst))
}

/// Runs `script` for a phase that may wait (rewrite, access, content).
pub fn run_request<'a>(script: &'a Arc<Script>, phase: Phase, ctx: &'a mut RequestCtx) -> Step<'a> {
    run_request_entry(script, phase, ctx, None, script.may_yield)
}

/// What a call runs instead of a script's chunk: given the VM and the script's loaded
/// instance, a function, its arguments and the call's [`ReqState::binding`] (the Envoy
/// filter calls `envoy_on_request` with a handle bound to the call).
pub type Entry<'e> = &'e dyn Fn(
    &Vm,
    &Rc<super::vm::Instance>,
) -> mlua::Result<(mlua::Function, mlua::MultiValue, u64)>;

/// An entry's function and arguments, and its binding (0 without an entry).
fn split_entry(
    call: Option<(mlua::Function, mlua::MultiValue, u64)>,
) -> (Option<(mlua::Function, mlua::MultiValue)>, u64) {
    match call {
        Some((f, args, binding)) => (Some((f, args)), binding),
        None => (None, 0),
    }
}

/// Runs `entry` (or the chunk) of `script` for a phase that may wait; `may_yield` says
/// whether the call needs a coroutine.
pub fn run_request_entry<'a>(
    script: &'a Arc<Script>,
    phase: Phase,
    ctx: &'a mut RequestCtx,
    entry: Option<Entry<'_>>,
    may_yield: bool,
) -> Step<'a> {
    let (vm, inst) = match prepare(script, ctx) {
        Ok(x) => x,
        Err(e) => return Step::Ready(Err(e)),
    };
    let call = match entry.map(|e| e(&vm, &inst)).transpose() {
        Ok(c) => c,
        Err(e) => {
            return Step::Ready(Err(
                super::call::classify(&e, &script.name).into_plugin_error(&script.name)
            ))
        }
    };
    let (call, binding) = split_entry(call);
    let kind = Kind::of(phase);
    let mut state = vm.take_state();
    state.enter(kind, ctx);
    state.binding = binding;
    let budget = ctx.snapshot.script_limits().cpu_budget;
    if !may_yield {
        let done = vm.call_entry_sync(&inst, kind, call, state, budget);
        return Step::Ready(finish_request(&vm, ctx, script, kind, done));
    }
    let mut call = vm.call_entry_async(inst, kind, call, state, budget);
    match call.poll_now() {
        Some(done) => Step::Ready(finish_request(&vm, ctx, script, kind, done)),
        None => Step::Wait(Box::pin(async move {
            let done = call.await;
            finish_request(&vm, ctx, script, kind, done)
        })),
    }
}

fn finish_request(
    vm: &Vm,
    ctx: &mut RequestCtx,
    script: &Script,
    kind: Kind,
    done: Done,
) -> Result<Flow, PluginError> {
    let Done { result, mut state } = done;
    let outcome = match result {
        Err(f) => Err(f.into_plugin_error(&script.name)),
        Ok(()) => match state.body_error.take() {
            Some(e) => Err(PluginError::Body(e)),
            None => Ok(flow(&mut state, kind)),
        },
    };
    if matches!(outcome, Ok(Flow::Continue)) && state.out.headers_set {
        // The driver applies these to the response, whichever answers.
        let set = std::mem::take(&mut state.out.headers);
        sluicegate_core::context::replace_headers(set, &mut ctx.response_headers);
    }
    state.leave(ctx);
    vm.put_state(state);
    outcome
}

/// A short body for a status chosen by `ngx.exit` without output.
fn default_body(status: StatusCode, headers: &mut HeaderMap) -> Bytes {
    if status.as_u16() < 300 || status == StatusCode::NOT_MODIFIED {
        return Bytes::new();
    }
    let reason = status.canonical_reason().unwrap_or("Error");
    if !headers.contains_key(http::header::CONTENT_TYPE) {
        headers.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("text/html"),
        );
    }
    // nginx's special response page, as OpenResty sends it.
    Bytes::from(format!(
        "<html>\r\n<head><title>{code} {reason}</title></head>\r\n<body>\r\n<center><h1>{code} {reason}</h1></center>\r\n<hr><center>sluicegate</center>\r\n</body>\r\n</html>\r\n",
        code = status.as_u16()
    ))
}

fn respond(state: &mut ReqState, status: StatusCode, with_output: bool) -> Flow {
    let mut headers = std::mem::take(&mut state.out.headers);
    state.out.headers_set = false;
    let body = if with_output {
        if !headers.contains_key(http::header::CONTENT_TYPE) {
            headers.insert(
                http::header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain"),
            );
        }
        std::mem::take(&mut state.out.body).freeze()
    } else {
        default_body(status, &mut headers)
    };
    Flow::Respond(LocalResponse {
        status,
        headers,
        body,
    })
}

fn flow(state: &mut ReqState, kind: Kind) -> Flow {
    let output = state.out.sent || state.out.eof;
    let status = state.out.status;
    match state.out.exit {
        Some(-1) => Flow::Respond(LocalResponse::json_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "script_error",
            "the script ended the request with ngx.ERROR",
        )),
        Some(code) if code >= 200 => {
            if output {
                respond(state, status.unwrap_or(StatusCode::OK), true)
            } else {
                let code = u16::try_from(code)
                    .ok()
                    .and_then(|c| StatusCode::from_u16(c).ok())
                    .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                respond(state, code, false)
            }
        }
        _ if output => respond(state, status.unwrap_or(StatusCode::OK), true),
        _ if kind == Kind::Content => respond(state, status.unwrap_or(StatusCode::OK), true),
        _ => Flow::Continue,
    }
}

/// Runs a `header_filter` script on the response head. With `raw`, the upstream's lines
/// stay raw unless the script reads the response headers (see [`RawHeaders`]).
pub fn header_filter(
    script: &Arc<Script>,
    ctx: &mut RequestCtx,
    resp: &mut ResponseHead,
    raw: Option<&mut RawHeaders>,
) -> Result<(), PluginError> {
    header_filter_entry(script, ctx, resp, raw, None)
}

/// Runs `entry` (or the chunk) of `script` on the response head.
pub fn header_filter_entry(
    script: &Arc<Script>,
    ctx: &mut RequestCtx,
    resp: &mut ResponseHead,
    mut raw: Option<&mut RawHeaders>,
    entry: Option<Entry<'_>>,
) -> Result<(), PluginError> {
    let (vm, inst) = prepare(script, ctx)?;
    let call = entry
        .map(|e| e(&vm, &inst))
        .transpose()
        .map_err(|e| super::call::classify(&e, &script.name).into_plugin_error(&script.name))?;
    let (call, binding) = split_entry(call);
    let mut state = vm.take_state();
    state.enter(Kind::HeaderFilter, ctx);
    state.binding = binding;
    std::mem::swap(&mut state.resp, resp);
    state.raw = raw.as_deref_mut().map(std::mem::take);
    let Done { result, mut state } = vm.call_entry_sync(
        &inst,
        Kind::HeaderFilter,
        call,
        state,
        ctx.snapshot.script_limits().cpu_budget,
    );
    std::mem::swap(&mut state.resp, resp);
    if let Some(r) = raw {
        // Merged into `resp.headers` by a read: no raw lines are left.
        *r = state.raw.take().unwrap_or_default();
    }
    state.leave(ctx);
    vm.put_state(state);
    result.map_err(|f| f.into_plugin_error(&script.name))
}

/// Runs a `body_filter` script on one chunk (`ngx.arg[1]`, `ngx.arg[2]`).
pub fn body_filter(
    script: &Arc<Script>,
    ctx: &mut RequestCtx,
    chunk: &mut Bytes,
    eof: bool,
) -> Result<(), PluginError> {
    if ctx.vars.get::<Truncated>().is_some() {
        *chunk = Bytes::new();
        return Ok(());
    }
    let (vm, inst) = prepare(script, ctx)?;
    let mut state = vm.take_state();
    state.enter(Kind::BodyFilter, ctx);
    state.resp.status = StatusCode::from_u16(ctx.status).unwrap_or(StatusCode::OK);
    state.chunk = std::mem::take(chunk);
    state.eof = eof;
    let Done { result, mut state } = vm.call_sync(
        &inst,
        Kind::BodyFilter,
        state,
        ctx.snapshot.script_limits().cpu_budget,
    );
    *chunk = std::mem::take(&mut state.chunk);
    let truncated = state.eof && !eof;
    state.leave(ctx);
    vm.put_state(state);
    if truncated {
        ctx.vars.insert(Truncated);
    }
    result.map_err(|f| f.into_plugin_error(&script.name))
}

/// Runs a `log` script; failures are logged and counted here (the log phase cannot fail).
pub fn log(script: &Arc<Script>, ctx: &RequestCtx) {
    if let Err(Failure { kind, message }) = log_result(script, ctx) {
        let k = if kind == FailureKind::Error {
            "error"
        } else {
            "budget"
        };
        ctx.worker.script_failed(&script.name, k);
        tracing::error!(request_id = ctx.request_id_str(), script = %script.name, phase = "log", error = %message, "Script failed.");
    }
}

/// Runs a `log` script and returns how it went.
pub fn log_result(script: &Arc<Script>, ctx: &RequestCtx) -> Result<(), Failure> {
    WorkerLua::of(&*ctx.worker).cloned().and_then(|vm| {
        vm.apply_memory_limit(ctx.snapshot.script_limits().memory_limit);
        let inst = vm.instance(script)?;
        let mut state = vm.take_state();
        state.enter_readonly(Kind::Log, ctx);
        let Done { result, state } = vm.call_sync(
            &inst,
            Kind::Log,
            state,
            ctx.snapshot.script_limits().cpu_budget,
        );
        vm.put_state(state);
        result
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::harness::{FakeRequest, Harness};
    use crate::LuaSettings;
    use sluicegate_core::phase::Plugin;

    fn plugin(name: &str, phase: Phase, code: &str) -> crate::plugin::Lua {
        crate::plugin::Lua::new(Arc::new(crate::compile(name, code).unwrap()), phase)
    }

    fn run<F: std::future::Future>(f: F) -> F::Output {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        tokio::task::LocalSet::new().block_on(&rt, f)
    }

    #[test]
    fn globals_assigned_every_request_do_not_grow_the_vm() {
        run(async {
            let h = Harness::new(LuaSettings::default()).unwrap();
            let p = plugin(
                "leak",
                Phase::Access,
                "_G['k' .. math.random()] = { n = 1 }\nleaked = (leaked or 0) + 1",
            );
            let mut ctx = h.request(FakeRequest::default());
            for _ in 0..2_000 {
                assert!(matches!(p.access(&mut ctx).run().await, Ok(Flow::Continue)));
            }
            let vm = h.worker.lua.vm().unwrap().clone();
            vm.lua.gc_collect().unwrap();
            let after_warmup = vm.used_memory();
            for _ in 0..20_000 {
                assert!(matches!(p.access(&mut ctx).run().await, Ok(Flow::Continue)));
            }
            vm.lua.gc_collect().unwrap();
            let grown = vm.used_memory().saturating_sub(after_warmup);
            assert!(grown < 64 * 1024, "the VM grew by {grown} bytes");
        });
    }

    #[test]
    fn waiting_scripts_give_the_request_back_after_resuming() {
        run(async {
            let h = Harness::new(LuaSettings::default()).unwrap();
            let p = plugin(
                "sleepy",
                Phase::Access,
                "ngx.sleep(0.01)\nngx.req.set_header('X-Seen', ngx.var.uri)",
            );
            let mut ctx = h.request(FakeRequest {
                uri: http::Uri::from_static("/a"),
                ..FakeRequest::default()
            });
            let step = p.access(&mut ctx);
            assert!(matches!(step, Step::Wait(_)), "a sleeping script must wait");
            assert!(matches!(step.run().await, Ok(Flow::Continue)));
            assert_eq!(ctx.head.headers["x-seen"], "/a");
            assert_eq!(ctx.head.uri, "/a");
        });
    }

    #[test]
    fn an_allocation_loop_is_stopped_at_the_soft_limit_with_its_line_past_any_pcall() {
        run(async {
            let settings = LuaSettings {
                memory_limit: 8 * 1024 * 1024,
                cpu_budget: std::time::Duration::from_secs(5),
                ..LuaSettings::default()
            };
            let h = Harness::new(settings).unwrap();
            let p = plugin(
                "hoard",
                Phase::Access,
                "local kept = {}\nlocal ok = pcall(function()\n  for i = 1, 1e9 do kept[i] = string.rep('x', 200) .. i end\nend)\nfor i = 1, 100 do kept[#kept + 1] = i end\nngx.req.set_header('X-Escaped', tostring(ok))",
            );
            let mut ctx = h.request(FakeRequest::default());
            match p.access(&mut ctx).run().await {
                Err(PluginError::Script { message, .. }) => {
                    assert!(message.contains("memory limit reached"), "{message}");
                    assert!(
                        message.starts_with("hoard:3:") || message.starts_with("hoard:5:"),
                        "stopped at a line of the script: {message}"
                    );
                }
                other => panic!("expected the memory limit, got {other:?}"),
            }
            assert!(
                ctx.head.headers.get("x-escaped").is_none(),
                "the pcall was escaped"
            );
        });
    }

    #[test]
    fn over_budget_calls_fail_as_budget_errors_with_the_line() {
        run(async {
            let settings = LuaSettings {
                cpu_budget: std::time::Duration::from_millis(10),
                ..LuaSettings::default()
            };
            let h = Harness::new(settings).unwrap();
            let p = plugin(
                "spin",
                Phase::Access,
                "local n = 0\nwhile true do n = n + 1 end",
            );
            let mut ctx = h.request(FakeRequest::default());
            let started = std::time::Instant::now();
            match p.access(&mut ctx).run().await {
                Err(PluginError::Script {
                    script,
                    message,
                    over_budget,
                }) => {
                    assert_eq!(script, "spin");
                    assert!(over_budget);
                    assert!(
                        message.starts_with("spin:2: CPU budget exceeded"),
                        "{message}"
                    );
                }
                other => panic!("unexpected {other:?}"),
            }
            assert!(started.elapsed() < std::time::Duration::from_millis(500));
            let ok = plugin("ok", Phase::Access, "ngx.req.set_header('X-Ok', '1')");
            assert!(matches!(
                ok.access(&mut ctx).run().await,
                Ok(Flow::Continue)
            ));
        });
    }
}
