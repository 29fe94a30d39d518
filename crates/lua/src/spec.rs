//! `sluicegate test PATH...`: busted-style spec files run inside the real Lua runtime.
//!
//! A spec file runs in a *spec VM* (the same sandbox and `ngx` API as workers, plus
//! `describe`/`it`/`assert` from `spec.lua`). The scripts it tests run in a separate worker
//! VM behind a socket-less [`Harness`]: the real plugin, request context and phase driver
//! code, against requests the spec makes up:
//!
//! ```lua
//! local t = require "sluicegate.test"
//! local auth = t.script { phase = "access", file = "../scripts/auth.lua" }
//! describe("auth", function()
//!   it("rejects a missing key", function()
//!     local res = auth:run { uri = "/", headers = { ["X-Api-Key"] = "nope" } }
//!     assert.equal(401, res.status)
//!   end)
//! end)
//! ```

use std::cell::RefCell;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue};
use mlua::{Lua, Table, UserData, UserDataMethods, Value};

use super::harness::{FakeRequest, Harness};
use super::vm::Vm;
use super::{Kind, LuaSettings, Runtime};
use sluicegate_core::phase::{Flow, Phase, Plugin, PluginError};

/// CPU time one spec file may use in its own code (scripts under test keep their budget).
const SPEC_BUDGET: Duration = Duration::from_secs(60);

/// The outcome of one test.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestResult {
    /// The spec file.
    pub file: String,
    /// `describe` names and the `it` name.
    pub name: String,
    /// `pass`, `fail` or `pending`.
    pub status: String,
    /// Why it failed.
    pub message: Option<String>,
}

/// Spec files under `paths` (`*_spec.lua` in directories, any file given by name).
pub fn collect(paths: &[PathBuf]) -> Result<Vec<PathBuf>, String> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        entries.sort();
        for p in entries {
            if p.is_dir() {
                walk(&p, out)?;
            } else if p
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.ends_with("_spec.lua"))
            {
                out.push(p);
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    for p in paths {
        if p.is_dir() {
            walk(p, &mut out).map_err(|e| format!("{}: {e}", p.display()))?;
        } else if p.is_file() {
            out.push(p.clone());
        } else {
            return Err(format!("{}: no such file or directory", p.display()));
        }
    }
    if out.is_empty() {
        return Err("no spec files found (looked for *_spec.lua)".to_string());
    }
    Ok(out)
}

/// State shared by the `sluicegate.test` functions of one run.
struct TestEnv {
    harness: RefCell<Rc<Harness>>,
    dir: RefCell<PathBuf>,
}

impl TestEnv {
    fn reset(&self, settings: LuaSettings) -> Result<(), String> {
        let h = Harness::new(settings)?;
        h.capture_logs()?;
        *self.harness.borrow_mut() = Rc::new(h);
        Ok(())
    }
}

/// A script under test (`t.script{...}`).
struct SpecScript {
    plugin: Arc<crate::plugin::Lua>,
    phase: Phase,
    env: Rc<TestEnv>,
}

fn header_map(lua: &Lua, t: Option<Table>) -> mlua::Result<HeaderMap> {
    let mut headers = HeaderMap::new();
    if let Some(t) = t {
        for kv in t.pairs::<mlua::LuaString, Value>() {
            let (k, v) = kv?;
            super::api::req::set_header(lua, &mut headers, &k.as_bytes(), &v, false)?;
        }
    }
    Ok(headers)
}

fn fake_request(lua: &Lua, t: &Table) -> mlua::Result<FakeRequest> {
    let mut req = FakeRequest::default();
    if let Some(m) = t.get::<Option<String>>("method")? {
        req.method = http::Method::from_bytes(m.as_bytes())
            .map_err(|_| mlua::Error::runtime(format!("bad method {m}")))?;
    }
    let uri = t
        .get::<Option<String>>("uri")?
        .unwrap_or_else(|| "/".to_string());
    req.uri = uri
        .parse()
        .map_err(|e| mlua::Error::runtime(format!("bad uri `{uri}`: {e}")))?;
    req.headers = header_map(lua, t.get("headers")?)?;
    if let Some(host) = t.get::<Option<String>>("host")? {
        if let Ok(v) = HeaderValue::from_str(&host) {
            req.headers.insert(http::header::HOST, v);
        }
    }
    if !req.headers.contains_key(http::header::HOST) {
        req.headers
            .insert(http::header::HOST, HeaderValue::from_static("localhost"));
    }
    if let Some(b) = t.get::<Option<mlua::LuaString>>("body")? {
        req.body = Some(Bytes::copy_from_slice(&b.as_bytes()));
    }
    if let Some(addr) = t.get::<Option<String>>("remote_addr")? {
        req.client_addr = addr
            .parse()
            .or_else(|_| {
                addr.parse::<std::net::IpAddr>()
                    .map(|ip| (ip, 40000).into())
            })
            .map_err(|_| mlua::Error::runtime(format!("bad remote_addr `{addr}`")))?;
    }
    req.tls = t.get::<Option<String>>("scheme")?.as_deref() == Some("https");
    if let Some(claims) = t.get::<Option<Table>>("jwt_claims")? {
        let text = super::api::cjson::encode_value(lua, &Value::Table(claims))
            .map_err(|e| mlua::Error::runtime(format!("bad jwt_claims: {e}")))?;
        match serde_json::from_slice(&text) {
            Ok(serde_json::Value::Object(map)) => req.jwt_claims = Some(map),
            _ => return Err(mlua::Error::runtime("jwt_claims must be a table of claims")),
        }
    }
    if let Some(id) = t.get::<Option<String>>("request_id")? {
        req.request_id =
            HeaderValue::from_str(&id).map_err(|_| mlua::Error::runtime("bad request_id"))?;
    }
    Ok(req)
}

fn headers_out(lua: &Lua, headers: &HeaderMap) -> mlua::Result<Table> {
    super::api::req::headers_table(lua, headers, 0, None).map(|(t, _)| t)
}

/// What one `:run` did, ready to become a Lua table.
#[derive(Default)]
struct Outcome {
    continued: bool,
    status: Option<u16>,
    headers: HeaderMap,
    body: Option<Bytes>,
    error: Option<String>,
    over_budget: bool,
    logs: Vec<String>,
}

impl SpecScript {
    async fn run(
        &self,
        req: FakeRequest,
        response: Option<(u16, HeaderMap, Vec<Bytes>)>,
    ) -> (Outcome, sluicegate_core::context::RequestCtx) {
        let harness = self.env.harness.borrow().clone();
        let mut ctx = harness.request(req);
        let mut out = Outcome::default();
        let fail = |out: &mut Outcome, e: PluginError| {
            let proxy: sluicegate_core::error::ProxyError = match e {
                PluginError::Script {
                    message,
                    over_budget,
                    ..
                } => {
                    out.error = Some(message);
                    out.over_budget = over_budget;
                    sluicegate_core::error::ProxyError::new(
                        sluicegate_core::error::Source::Script,
                        sluicegate_core::error::Kind::PluginFailure,
                        "",
                    )
                }
                other => other.into(),
            };
            out.status = Some(proxy.status().as_u16());
        };
        match self.phase {
            Phase::Rewrite | Phase::Access | Phase::Content => {
                let step = match self.phase {
                    Phase::Rewrite => self.plugin.rewrite(&mut ctx),
                    Phase::Access => self.plugin.access(&mut ctx),
                    _ => self.plugin.content(&mut ctx),
                };
                match step.run().await {
                    Ok(Flow::Continue) => out.continued = true,
                    Ok(Flow::Respond(r)) => {
                        out.status = Some(r.status.as_u16());
                        out.headers = r.headers;
                        out.body = Some(r.body);
                    }
                    Err(e) => fail(&mut out, e),
                }
            }
            Phase::HeaderFilter | Phase::BodyFilter | Phase::Log => {
                let (status, headers, chunks) =
                    response.unwrap_or((200, HeaderMap::new(), Vec::new()));
                let mut resp = http::Response::new(()).into_parts().0;
                resp.status = http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::OK);
                resp.headers = headers;
                ctx.status = status;
                let result = match self.phase {
                    Phase::HeaderFilter => self.plugin.header_filter(&mut ctx, &mut resp),
                    Phase::BodyFilter => {
                        let mut body = Vec::new();
                        let mut r = Ok(());
                        let n = chunks.len();
                        for (i, mut chunk) in chunks
                            .into_iter()
                            .chain(std::iter::once(Bytes::new()))
                            .enumerate()
                        {
                            r = self.plugin.body_filter(&mut ctx, &mut chunk, i == n);
                            body.extend_from_slice(&chunk);
                            if r.is_err() {
                                break;
                            }
                        }
                        out.body = Some(Bytes::from(body));
                        r
                    }
                    _ => super::phase::log_result(self.plugin.script(), &ctx)
                        .map_err(|f| f.into_plugin_error(&self.plugin.script().name)),
                };
                out.status = Some(resp.status.as_u16());
                out.headers = resp.headers;
                if let Err(e) = result {
                    fail(&mut out, e);
                }
            }
        }
        out.logs = harness.take_logs();
        (out, ctx)
    }
}

fn outcome_table(
    lua: &Lua,
    out: Outcome,
    ctx: &sluicegate_core::context::RequestCtx,
) -> mlua::Result<Table> {
    let t = lua.create_table()?;
    t.set("continued", out.continued)?;
    t.set("status", out.status)?;
    t.set("headers", headers_out(lua, &out.headers)?)?;
    if let Some(b) = out.body {
        t.set("body", lua.create_string(&b)?)?;
    }
    t.set("error", out.error)?;
    t.set("over_budget", out.over_budget)?;
    t.set("logs", lua.create_sequence_from(out.logs)?)?;
    let req = lua.create_table()?;
    req.set("method", ctx.head.method.as_str())?;
    req.set(
        "uri",
        ctx.head.uri.path_and_query().map_or("/", |p| p.as_str()),
    )?;
    req.set("path", ctx.head.uri.path())?;
    req.set("query", ctx.head.uri.query())?;
    req.set("headers", headers_out(lua, &ctx.head.headers)?)?;
    if let sluicegate_core::context::RequestBody::Buffered(b) = &ctx.body {
        req.set("body", lua.create_string(b)?)?;
    }
    t.set("request", req)?;
    Ok(t)
}

impl UserData for SpecScript {
    fn add_methods<M: UserDataMethods<Self>>(methods: &mut M) {
        methods.add_async_method("run", |lua, this, req: Option<Table>| async move {
            let req_t = match req {
                Some(t) => t,
                None => lua.create_table()?,
            };
            let fake = fake_request(&lua, &req_t)?;
            let response = match req_t.get::<Option<Table>>("response")? {
                Some(r) => {
                    let status = r.get::<Option<u16>>("status")?.unwrap_or(200);
                    let headers = header_map(&lua, r.get("headers")?)?;
                    let chunks = match r.get::<Value>("body")? {
                        Value::Table(list) => list
                            .sequence_values::<mlua::LuaString>()
                            .map(|c| c.map(|c| Bytes::copy_from_slice(&c.as_bytes())))
                            .collect::<mlua::Result<Vec<_>>>()?,
                        Value::String(s) => vec![Bytes::copy_from_slice(&s.as_bytes())],
                        _ => Vec::new(),
                    };
                    Some((status, headers, chunks))
                }
                None => None,
            };
            let (out, ctx) = this.run(fake, response).await;
            outcome_table(&lua, out, &ctx)
        });
    }
}

fn settings_from(t: &Table) -> mlua::Result<LuaSettings> {
    let mut s = LuaSettings::default();
    if let Some(ms) = t.get::<Option<u64>>("cpu_budget_ms")? {
        s.cpu_budget = Duration::from_millis(ms.max(1));
    }
    if let Some(b) = t.get::<Option<usize>>("memory_limit_bytes")? {
        s.memory_limit = b;
    }
    if let Some(d) = t.get::<Option<Table>>("shared_dicts")? {
        for kv in d.pairs::<String, usize>() {
            s.shared_dicts.push(kv?);
        }
    }
    Ok(s)
}

/// The `sluicegate.test` module.
fn test_module(lua: &Lua, env: &Rc<TestEnv>) -> mlua::Result<Table> {
    let m = lua.create_table()?;
    let e = env.clone();
    m.set(
        "script",
        lua.create_function(move |lua, opts: Table| {
            let phase_name: String = opts.get("phase")?;
            let phase = Phase::parse(&phase_name).ok_or_else(|| {
                super::convert::error(lua, format!("unknown phase `{phase_name}`"))
            })?;
            let (source, default_name) = match (
                opts.get::<Option<String>>("code")?,
                opts.get::<Option<String>>("file")?,
            ) {
                (Some(code), None) => (code, "spec-script".to_string()),
                (None, Some(file)) => {
                    let full = e.dir.borrow().join(&file);
                    let text = std::fs::read_to_string(&full).map_err(|err| {
                        super::convert::error(
                            lua,
                            format!("cannot read `{}`: {err}", full.display()),
                        )
                    })?;
                    (text, file)
                }
                _ => {
                    return Err(super::convert::error(
                        lua,
                        "give exactly one of `code` and `file`",
                    ))
                }
            };
            let name = opts.get::<Option<String>>("name")?.unwrap_or(default_name);
            let script = super::compile(&name, &source).map_err(|err| {
                super::convert::error(lua, format!("script `{name}`: syntax error at {err}"))
            })?;
            // `package_path`: module directories relative to the spec, as `lua.package_path`.
            let dirs: Vec<PathBuf> = match opts.get::<Value>("package_path")? {
                Value::Nil => Vec::new(),
                Value::String(d) => vec![e.dir.borrow().join(d.to_str()?.to_string())],
                Value::Table(t) => t
                    .sequence_values::<String>()
                    .map(|d| d.map(|d| e.dir.borrow().join(d)))
                    .collect::<mlua::Result<_>>()?,
                other => {
                    return Err(super::convert::error(
                        lua,
                        format!(
                            "package_path: a directory or a list of them, got {}",
                            other.type_name()
                        ),
                    ))
                }
            };
            let modules = super::Modules::load(&dirs).map_err(|errs| {
                let text: Vec<String> = errs
                    .iter()
                    .map(|m| format!("{}: {}", dirs[m.dir].join(&m.file).display(), m.message))
                    .collect();
                super::convert::error(lua, text.join("; "))
            })?;
            let script = script.using(&Arc::new(modules));
            Ok(SpecScript {
                plugin: Arc::new(crate::plugin::Lua::new(Arc::new(script), phase)),
                phase,
                env: e.clone(),
            })
        })?,
    )?;
    let e = env.clone();
    m.set(
        "configure",
        lua.create_function(move |lua, opts: Table| {
            let settings = settings_from(&opts)?;
            e.reset(settings)
                .map_err(|err| super::convert::error(lua, err))
        })?,
    )?;
    Ok(m)
}

/// Runs every spec file under `paths`; writes the report to `out`; returns the results.
pub fn run(paths: &[PathBuf]) -> Result<Vec<TestResult>, String> {
    let files = collect(paths)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async move {
        let env = Rc::new(TestEnv {
            harness: RefCell::new(Rc::new(Harness::new(LuaSettings::default())?)),
            dir: RefCell::new(PathBuf::from(".")),
        });
        let runner_slot: Rc<RefCell<Option<Table>>> = Rc::default();
        let slot = runner_slot.clone();
        let env2 = env.clone();
        let extras = move |lua: &Lua, modules: &Table, _globals: &Table| -> mlua::Result<()> {
            let runner: Table = lua
                .load(include_str!("spec.lua"))
                .set_name("=spec-runner")
                .eval()?;
            *slot.borrow_mut() = Some(runner);
            modules.raw_set("sluicegate.test", test_module(lua, &env2)?)?;
            Ok(())
        };
        let vm = Vm::with_extras(Runtime::standalone(LuaSettings::default()), Some(&extras))
            .map_err(|e| e.to_string())?;
        let runner = runner_slot
            .borrow_mut()
            .take()
            .ok_or("the spec runner did not load")?;
        vm.host.plain_logs.set(true);
        let mut results = Vec::new();
        for file in files {
            let display = file.display().to_string();
            env.reset(LuaSettings::default())?;
            *env.dir.borrow_mut() = file.parent().map(Path::to_path_buf).unwrap_or_default();
            results.extend(run_file(&vm, &runner, &file, &display).await);
        }
        Ok(results)
    })
}

async fn run_file(vm: &Rc<Vm>, runner: &Table, file: &Path, display: &str) -> Vec<TestResult> {
    let fail = |message: String| {
        vec![TestResult {
            file: display.to_string(),
            name: "(loading the spec file)".to_string(),
            status: "fail".to_string(),
            message: Some(message),
        }]
    };
    let source = match std::fs::read_to_string(file) {
        Ok(s) => s,
        Err(e) => return fail(format!("cannot read the file: {e}")),
    };
    let script = match super::compile(display, &source) {
        Ok(s) => Arc::new(s),
        Err(e) => return fail(format!("{display}: syntax error at {e}")),
    };
    let inst = match vm.instance(&script) {
        Ok(i) => i,
        Err(f) => return fail(f.message),
    };
    let run: mlua::Function = match runner.get("run") {
        Ok(f) => f,
        Err(e) => return fail(e.to_string()),
    };
    let chunk = inst.function();
    let mut args = mlua::MultiValue::new();
    args.push_back(Value::Function(chunk));
    let done = vm
        .call_function_async(inst, Kind::Init, &run, args, SPEC_BUDGET)
        .await;
    vm.put_state(done.state);
    if let Err(f) = done.result {
        return fail(f.message);
    }
    let results: Table = match runner.get("last") {
        Ok(t) => t,
        Err(e) => return fail(format!("the runner returned no results: {e}")),
    };
    results
        .sequence_values::<Table>()
        .filter_map(Result::ok)
        .map(|r| TestResult {
            file: display.to_string(),
            name: r.get("name").unwrap_or_default(),
            status: r.get("status").unwrap_or_default(),
            message: r.get("message").ok().flatten(),
        })
        .collect()
}

/// Writes the readable report; returns the exit code (1 if anything failed).
pub fn report(results: &[TestResult], tap: bool, out: &mut dyn Write) -> i32 {
    let failed = results.iter().filter(|r| r.status == "fail").count();
    let passed = results.iter().filter(|r| r.status == "pass").count();
    let pending = results.len() - failed - passed;
    if tap {
        let _ = writeln!(out, "TAP version 13\n1..{}", results.len());
        for (i, r) in results.iter().enumerate() {
            let n = i + 1;
            let name = format!("{} {}", r.file, r.name);
            match r.status.as_str() {
                "pass" => {
                    let _ = writeln!(out, "ok {n} - {name}");
                }
                "pending" => {
                    let _ = writeln!(out, "ok {n} - {name} # SKIP pending");
                }
                _ => {
                    let _ = writeln!(out, "not ok {n} - {name}\n  ---\n  message: |");
                    for line in r.message.as_deref().unwrap_or("").lines() {
                        let _ = writeln!(out, "    {line}");
                    }
                    let _ = writeln!(out, "  ...");
                }
            }
        }
        let _ = writeln!(out, "# {passed} passed, {failed} failed, {pending} pending");
    } else {
        let mut current = "";
        for r in results {
            if r.file != current {
                current = &r.file;
                let _ = writeln!(out, "{current}");
            }
            match r.status.as_str() {
                "pass" => {
                    let _ = writeln!(out, "  PASS  {}", r.name);
                }
                "pending" => {
                    let _ = writeln!(out, "  PEND  {}", r.name);
                }
                _ => {
                    let _ = writeln!(out, "  FAIL  {}", r.name);
                    for line in r.message.as_deref().unwrap_or("").lines() {
                        let _ = writeln!(out, "          {line}");
                    }
                }
            }
        }
        let _ = writeln!(out, "\n{passed} passed, {failed} failed, {pending} pending");
    }
    i32::from(failed > 0)
}
