//! The `code` chain entry: runs the dynamic scripts of the request's pinned
//! [`CodeSet`](super::CodeSet) that match its host, phase by phase, with the same runtime,
//! budgets, isolation and error reporting as configured `lua` scripts (it calls the same
//! `sluicegate_lua::phase` functions).
//!
//! When the `code:` section is present, validation puts one instance in every plugin chain
//! (global and per route) at `code.priority`. It declares the phases of `code.phases`
//! up front, because a chain's phases are fixed when the snapshot is built while the
//! scripts change under it.
//!
//! A content script answers the request. When none matches the host, a route with an
//! upstream proxies as usual and a route without one answers 404.

use std::sync::Arc;

use bytes::Bytes;

use super::{CodeRegistry, CodeSet, Pinned};
use sluicegate_core::context::{RequestCtx, ResponseHead};
use sluicegate_core::phase::{Flow, Phase, PhaseSet, Plugin, PluginError, Step};

/// Runs dynamic scripts.
#[derive(Debug)]
pub struct CodePlugin {
    phases: PhaseSet,
}

impl CodePlugin {
    /// An entry acting in `phases`.
    pub fn new(phases: PhaseSet) -> CodePlugin {
        CodePlugin { phases }
    }
}

/// The running code set of the worker's registry (an empty one on a worker without one).
fn current(ctx: &RequestCtx) -> Arc<CodeSet> {
    ctx.worker
        .service::<CodeRegistry>()
        .map(CodeRegistry::current)
        .unwrap_or_default()
}

/// The code set this request runs with: pinned on first use, kept to the end.
fn pinned(ctx: &mut RequestCtx) -> Arc<Pinned> {
    if let Some(p) = ctx.vars.get::<Arc<Pinned>>() {
        return p.clone();
    }
    let p = Arc::new(Pinned::new(current(ctx), ctx.host()));
    ctx.vars.insert(p.clone());
    p
}

fn pinned_readonly(ctx: &RequestCtx) -> Arc<Pinned> {
    match ctx.vars.get::<Arc<Pinned>>() {
        Some(p) => p.clone(),
        None => Arc::new(Pinned::new(current(ctx), ctx.host())),
    }
}

impl CodePlugin {
    fn request_phase<'a>(&'a self, phase: Phase, ctx: &'a mut RequestCtx) -> Step<'a> {
        let pinned = pinned(ctx);
        let scripts: Vec<_> = pinned.scripts(phase).cloned().collect();
        if scripts.is_empty() {
            return Step::next();
        }
        Step::Wait(Box::pin(async move {
            for script in &scripts {
                if let Flow::Respond(r) = sluicegate_lua::phase::run_request(script, phase, ctx)
                    .run()
                    .await?
                {
                    return Ok(Flow::Respond(r));
                }
            }
            Ok(Flow::Continue)
        }))
    }
}

impl Plugin for CodePlugin {
    fn name(&self) -> &'static str {
        "code"
    }

    fn phases(&self) -> PhaseSet {
        self.phases
    }

    fn rewrite<'a>(&'a self, ctx: &'a mut RequestCtx) -> Step<'a> {
        self.request_phase(Phase::Rewrite, ctx)
    }

    fn access<'a>(&'a self, ctx: &'a mut RequestCtx) -> Step<'a> {
        self.request_phase(Phase::Access, ctx)
    }

    fn content<'a>(&'a self, ctx: &'a mut RequestCtx) -> Step<'a> {
        self.request_phase(Phase::Content, ctx)
    }

    fn header_filter(
        &self,
        ctx: &mut RequestCtx,
        resp: &mut ResponseHead,
    ) -> Result<(), PluginError> {
        let pinned = pinned(ctx);
        for script in pinned.scripts(Phase::HeaderFilter) {
            sluicegate_lua::phase::header_filter(script, ctx, resp, None)?;
        }
        Ok(())
    }

    fn body_filter(
        &self,
        ctx: &mut RequestCtx,
        chunk: &mut Bytes,
        eof: bool,
    ) -> Result<(), PluginError> {
        let pinned = pinned(ctx);
        for script in pinned.scripts(Phase::BodyFilter) {
            sluicegate_lua::phase::body_filter(script, ctx, chunk, eof)?;
        }
        Ok(())
    }

    fn filters_body(&self, ctx: &RequestCtx) -> bool {
        self.phases.contains(Phase::BodyFilter)
            && pinned_readonly(ctx)
                .scripts(Phase::BodyFilter)
                .next()
                .is_some()
    }

    fn log(&self, ctx: &RequestCtx) {
        let pinned = pinned_readonly(ctx);
        for script in pinned.scripts(Phase::Log) {
            sluicegate_lua::phase::log(script, ctx);
        }
    }
}
