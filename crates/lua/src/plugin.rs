//! The `lua` plugin: one compiled script in one phase, for every host or for the hosts its
//! rules match. The proxy core sees scripts only as one more [`Plugin`]; the `lua` entry of
//! the built-in plugin list builds it from its configuration.

use std::sync::Arc;

use bytes::Bytes;
use regex::Regex;
use sluicegate_core::context::{RequestCtx, ResponseHead};
use sluicegate_core::diag::{Diags, Path};
use sluicegate_core::phase::{Phase, PhaseSet, Plugin, PluginError, Step};
use sluicegate_http1::raw::RawHeaders;

use crate::Script;

/// A host condition of a script: an exact name, `*.suffix` or `~regex`.
#[derive(Debug)]
pub enum HostRule {
    Exact(String),
    /// `*.example.com`, stored as `.example.com`: any subdomain, not the apex.
    Suffix(String),
    Regex(Regex),
}

impl HostRule {
    /// Whether `host` (lower-cased, without port) meets the rule.
    pub fn matches(&self, host: &str) -> bool {
        match self {
            HostRule::Exact(h) => h == host,
            HostRule::Suffix(s) => host.ends_with(s.as_str()),
            HostRule::Regex(r) => r.is_match(host),
        }
    }
}

/// The `lua` plugin: one script in one phase.
#[derive(Debug)]
pub struct Lua {
    script: Arc<Script>,
    phase: Phase,
    hosts: Vec<HostRule>,
}

/// Parses the `hosts` patterns of a script, recording bad ones at `path`.
pub fn host_rules(hosts: &[String], path: &Path, diags: &mut Diags) -> Vec<HostRule> {
    let mut out = Vec::new();
    for (i, h) in hosts.iter().enumerate() {
        if let Some(re) = h.strip_prefix('~') {
            match Regex::new(re.trim()) {
                Ok(r) => out.push(HostRule::Regex(r)),
                Err(e) => diags.push(&path.index(i), format!("invalid regex: {e}")),
            }
        } else if let Some(suffix) = h.strip_prefix("*.") {
            out.push(HostRule::Suffix(format!(
                ".{}",
                suffix.to_ascii_lowercase()
            )));
        } else if h.contains('*') {
            diags.push(
                &path.index(i),
                "a wildcard is only allowed as the first label (`*.example.com`)",
            );
        } else {
            out.push(HostRule::Exact(h.to_ascii_lowercase()));
        }
    }
    out
}

impl Lua {
    /// A plugin running `script` in `phase` for every host (the spec runner's way in).
    pub fn new(script: Arc<Script>, phase: Phase) -> Self {
        Lua::for_hosts(script, phase, Vec::new())
    }

    /// A plugin running `script` in `phase` for the hosts `hosts` match (all when empty).
    pub fn for_hosts(script: Arc<Script>, phase: Phase, hosts: Vec<HostRule>) -> Self {
        Lua {
            script,
            phase,
            hosts,
        }
    }

    /// The compiled script.
    pub fn script(&self) -> &Arc<Script> {
        &self.script
    }

    fn applies(&self, ctx: &RequestCtx) -> bool {
        self.hosts.is_empty() || {
            let host = ctx.host();
            self.hosts.iter().any(|r| r.matches(&host))
        }
    }

    /// The header filter, on the upstream's raw lines when `raw` has them.
    fn run_header_filter(
        &self,
        ctx: &mut RequestCtx,
        resp: &mut ResponseHead,
        raw: Option<&mut RawHeaders>,
    ) -> Result<(), PluginError> {
        if self.phase != Phase::HeaderFilter || !self.applies(ctx) {
            return Ok(());
        }
        crate::phase::header_filter(&self.script, ctx, resp, raw)
    }

    fn request_phase<'a>(&'a self, phase: Phase, ctx: &'a mut RequestCtx) -> Step<'a> {
        if self.phase != phase || !self.applies(ctx) {
            return Step::next();
        }
        crate::phase::run_request(&self.script, phase, ctx)
    }
}

impl Plugin for Lua {
    fn name(&self) -> &'static str {
        "lua"
    }

    /// Rewrite, access and content scripts may answer (`ngx.exit`, `ngx.say`).
    fn answers(&self) -> bool {
        matches!(self.phase, Phase::Rewrite | Phase::Access | Phase::Content)
    }

    fn phases(&self) -> PhaseSet {
        PhaseSet::of(&[self.phase])
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
        self.run_header_filter(ctx, resp, None)
    }

    /// Scripts read response headers through `ngx.header` and `ngx.var.sent_http_*`,
    /// which merge raw upstream lines in on first use; writes only drop them.
    fn filters_raw_headers(&self) -> bool {
        true
    }

    fn header_filter_raw(
        &self,
        ctx: &mut RequestCtx,
        resp: &mut ResponseHead,
        raw: &mut RawHeaders,
    ) -> Result<(), PluginError> {
        self.run_header_filter(ctx, resp, Some(raw))
    }

    fn body_filter(
        &self,
        ctx: &mut RequestCtx,
        chunk: &mut Bytes,
        eof: bool,
    ) -> Result<(), PluginError> {
        if !self.applies(ctx) {
            return Ok(());
        }
        crate::phase::body_filter(&self.script, ctx, chunk, eof)
    }

    fn log(&self, ctx: &RequestCtx) {
        if self.applies(ctx) {
            crate::phase::log(&self.script, ctx);
        }
    }
}
