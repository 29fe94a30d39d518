//! `ngx.timer.at` / `ngx.timer.every`: background Lua code on the worker's event loop. Each
//! run is a call of the script that created the timer, under the same CPU budget as a phase
//! call; failures are logged with script and line and counted in `/metrics`. A timer stops
//! once no configuration uses its script any more (the equivalent of OpenResty's
//! "premature" expiry on reload). Limits: `lua.max_pending_timers` and
//! `lua.max_running_timers` per worker, as in OpenResty.

use std::rc::Rc;
use std::time::Duration;

use mlua::{Function, Lua, MultiValue, Table, Value};

use super::super::vm::{Host, Instance, Vm};
use super::super::{convert, FailureKind, Kinds};

fn result(lua: &Lua, err: Option<&str>) -> mlua::Result<MultiValue> {
    let mut out = MultiValue::new();
    match err {
        None => out.push_back(Value::Boolean(true)),
        Some(e) => {
            out.push_back(Value::Nil);
            out.push_back(Value::String(lua.create_string(e)?));
        }
    }
    Ok(out)
}

fn start(
    lua: &Lua,
    host: &Rc<Host>,
    name: &str,
    delay: f64,
    callback: Function,
    args: MultiValue,
    every: bool,
) -> mlua::Result<MultiValue> {
    host.check(lua, name, Kinds::REQUEST_OR_TIMER)?;
    if !(delay.is_finite() && delay >= 0.0) || (every && delay <= 0.0) {
        return Err(convert::error(
            lua,
            format!(
                "{name}: bad delay (must be {})",
                if every { "positive" } else { "non-negative" }
            ),
        ));
    }
    let Some(vm) = host.vm.borrow().upgrade() else {
        return result(lua, Some("no VM"));
    };
    let Some(inst) = host.instance.borrow().clone() else {
        return Err(convert::error(
            lua,
            format!("{name} can only be called from a script"),
        ));
    };
    let settings = (host.rt.settings)();
    let (pending, running) = host.timers.get();
    if pending >= settings.max_pending_timers {
        return result(lua, Some("too many pending timers"));
    }
    host.timers.set((pending + 1, running));
    let delay = Duration::from_secs_f64(delay);
    tokio::task::spawn_local(run(vm, inst, callback, args, delay, every));
    result(lua, None)
}

async fn run(
    vm: Rc<Vm>,
    inst: Rc<Instance>,
    callback: Function,
    args: MultiValue,
    delay: Duration,
    every: bool,
) {
    let host = vm.host.clone();
    tokio::time::sleep(delay).await;
    loop {
        let (pending, running) = host.timers.get();
        let settings = (host.rt.settings)();
        if !inst.alive() {
            host.timers.set((pending.saturating_sub(1), running));
            return;
        }
        if running >= settings.max_running_timers {
            host.timers.set((pending.saturating_sub(1), running));
            tracing::error!(script = %inst.name, "Timer dropped: too many running timers.");
            return;
        }
        host.timers.set((pending.saturating_sub(1), running + 1));
        let mut call_args = MultiValue::new();
        call_args.push_back(Value::Boolean(false));
        call_args.extend(args.iter().cloned());
        let done = vm
            .call_function_async(
                inst.clone(),
                super::super::Kind::Timer,
                &callback,
                call_args,
                settings.cpu_budget,
            )
            .await;
        let (pending, running) = host.timers.get();
        host.timers.set((pending, running.saturating_sub(1)));
        if let Err(f) = &done.result {
            let kind = if f.kind == FailureKind::Error {
                "error"
            } else {
                "budget"
            };
            host.rt.metrics.script_failure(&inst.name, kind);
            tracing::error!(script = %inst.name, phase = "timer", error = %f.message, "Script failed.");
        }
        vm.put_state(done.state);
        if !every {
            return;
        }
        let (pending, running) = host.timers.get();
        host.timers.set((pending + 1, running));
        tokio::time::sleep(delay).await;
    }
}

/// Registers `ngx.timer`.
pub fn register(lua: &Lua, host: &Rc<Host>, ngx: &Table) -> mlua::Result<()> {
    let timer = lua.create_table()?;
    for (name, every) in [("at", false), ("every", true)] {
        let h = host.clone();
        let full = format!("ngx.timer.{name}");
        timer.raw_set(
            name,
            lua.create_function(
                move |lua, (delay, callback, args): (f64, Function, MultiValue)| {
                    start(lua, &h, &full, delay, callback, args, every)
                },
            )?,
        )?;
    }
    let h = host.clone();
    timer.raw_set(
        "running_count",
        lua.create_function(move |_, ()| Ok(h.timers.get().1))?,
    )?;
    let h = host.clone();
    timer.raw_set(
        "pending_count",
        lua.create_function(move |_, ()| Ok(h.timers.get().0))?,
    )?;
    ngx.raw_set("timer", timer)?;
    Ok(())
}
