//! A worker without sockets, for running scripts against made-up requests: what
//! `sluicegate test` specs (and unit tests) use. The request context, the VM and the plugin
//! are the real ones; the worker and configuration are the small [`TestWorker`] and
//! [`TestConfig`] views, and there is no client connection.

use std::any::{Any, TypeId};
use std::cell::Cell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue};
use sluicegate_core::context::{
    ConfigView, RequestBody, RequestCtx, ScriptLimits, UpstreamRef, WorkerView,
};
use sluicegate_telemetry::Metrics;

use super::{LuaSettings, Runtime, WorkerLua};

/// A made-up request.
#[derive(Debug, Clone)]
pub struct FakeRequest {
    /// Method.
    pub method: http::Method,
    /// Path and query.
    pub uri: http::Uri,
    /// Headers.
    pub headers: HeaderMap,
    /// Body (buffered, as if already read).
    pub body: Option<Bytes>,
    /// Client address.
    pub client_addr: SocketAddr,
    /// Whether it came over TLS.
    pub tls: bool,
    /// Request id.
    pub request_id: HeaderValue,
    /// Claims of a JWT as if the `jwt` plugin had verified it (`sluicegate.jwt.claims()`).
    pub jwt_claims: Option<serde_json::Map<String, serde_json::Value>>,
}

impl Default for FakeRequest {
    fn default() -> Self {
        FakeRequest {
            method: http::Method::GET,
            uri: http::Uri::from_static("/"),
            headers: HeaderMap::new(),
            body: None,
            client_addr: SocketAddr::from(([127, 0, 0, 1], 40000)),
            tls: false,
            request_id: HeaderValue::from_static("test-request-id"),
            jwt_claims: None,
        }
    }
}

/// The worker of a [`Harness`]: its VM, and what the gateway's worker would tell a plugin.
pub struct TestWorker {
    /// The VM the scripts run on.
    pub lua: WorkerLua,
    /// What [`WorkerView::draining`] answers.
    pub draining: Cell<bool>,
    /// Where failed script calls are counted.
    pub metrics: Arc<Metrics>,
}

impl WorkerView for TestWorker {
    fn id(&self) -> usize {
        0
    }

    fn draining(&self) -> bool {
        self.draining.get()
    }

    fn script_failed(&self, script: &str, kind: &'static str) {
        self.metrics.script_failure(script, kind);
    }

    fn service_of(&self, ty: TypeId) -> Option<&dyn Any> {
        (ty == TypeId::of::<WorkerLua>()).then_some(&self.lua as &dyn Any)
    }
}

/// The configuration of a [`Harness`]: the script budget and the upstreams scripts and
/// plugins may choose.
pub struct TestConfig {
    /// The `lua:` settings.
    pub lua: Arc<LuaSettings>,
    /// Upstreams by name, as the upstream layer's values.
    pub upstreams: HashMap<String, UpstreamRef>,
}

impl ConfigView for TestConfig {
    fn route_name(&self, _index: usize) -> Option<&str> {
        None
    }

    fn upstream(&self, name: &str) -> Option<UpstreamRef> {
        self.upstreams.get(name).cloned()
    }

    fn script_limits(&self) -> ScriptLimits {
        self.lua.limits()
    }
}

/// A worker and configuration to run scripts on.
pub struct Harness {
    /// The worker (its `lua` VM runs the scripts).
    pub worker: Rc<TestWorker>,
    /// The configuration requests start with.
    pub snapshot: Arc<TestConfig>,
}

impl Harness {
    /// A one-worker harness with `settings` and no upstreams.
    pub fn new(settings: LuaSettings) -> Result<Harness, String> {
        let metrics = Arc::new(Metrics::default());
        let settings = Arc::new(settings);
        let snapshot = Arc::new(TestConfig {
            lua: settings.clone(),
            upstreams: HashMap::new(),
        });
        let rt = Runtime {
            dicts: Arc::default(),
            metrics: metrics.clone(),
            settings: Arc::new(move || settings.clone()),
            worker_id: 0,
            worker_count: 1,
            queues: Arc::new(|| None),
            http_tls: crate::standalone_http_tls,
            upstreams: {
                let snapshot = snapshot.clone();
                Arc::new(move |name, _target| {
                    snapshot
                        .upstream(name)
                        .ok_or_else(|| format!("unknown upstream `{name}`"))
                })
            },
        };
        let worker = Rc::new(TestWorker {
            lua: WorkerLua::new(rt),
            draining: Cell::new(false),
            metrics,
        });
        Ok(Harness { worker, snapshot })
    }

    /// Starts collecting `ngx.log` lines instead of logging them.
    pub fn capture_logs(&self) -> Result<(), String> {
        let vm = self.worker.lua.vm().map_err(|f| f.message)?;
        *vm.host.captured_logs.borrow_mut() = Some(Vec::new());
        Ok(())
    }

    /// The `ngx.log` lines collected since the last call.
    pub fn take_logs(&self) -> Vec<String> {
        self.worker
            .lua
            .created()
            .and_then(|vm| {
                vm.host
                    .captured_logs
                    .borrow_mut()
                    .as_mut()
                    .map(std::mem::take)
            })
            .unwrap_or_default()
    }

    /// A request context for `req`, as the driver would create it.
    pub fn request(&self, req: FakeRequest) -> RequestCtx {
        let mut head = http::Request::new(()).into_parts().0;
        head.method = req.method;
        head.uri = req.uri;
        head.headers = req.headers;
        let body = match req.body {
            Some(b) => RequestBody::Buffered(b),
            None => RequestBody::Empty,
        };
        let mut vars = http::Extensions::new();
        if let Some(claims) = req.jwt_claims {
            vars.insert(sluicegate_jwt::Claims(Arc::new(claims)));
        }
        RequestCtx {
            original_uri: head.uri.clone(),
            head,
            body,
            request_id: req.request_id,
            client_addr: req.client_addr,
            client_ip: HeaderValue::from_str(&req.client_addr.ip().to_string())
                .unwrap_or(HeaderValue::from_static("127.0.0.1")),
            tls: req.tls,
            listener: 0,
            snapshot: self.snapshot.clone(),
            route: None,
            started: Instant::now(),
            vars,
            upstream: Default::default(),
            upstream_override: None,
            upstream_target: None,
            upstream_in_flight: None,
            traffic: Rc::default(),
            worker: self.worker.clone(),
            status: 0,
            response_headers: http::HeaderMap::new(),
            grpc: false,
        }
    }
}
