//! A worker without sockets, for running scripts against made-up requests: what
//! `sluicegate test` specs (and unit tests) use. The request context, the worker, its VM and
//! the plugin are the real ones; only the client connection is missing.

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue};

use super::{LuaSettings, Runtime, WorkerLua};
use crate::proxy::context::{RequestBody, RequestCtx};
use crate::server::worker::Worker;
use crate::state::{Shared, Snapshot};
use crate::telemetry::Metrics;

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

/// A worker and snapshot to run scripts on.
pub struct Harness {
    /// The worker (its `lua` VM runs the scripts).
    pub worker: Rc<Worker>,
    /// The snapshot requests start with.
    pub snapshot: Arc<Snapshot>,
}

const MINIMAL: &str =
    "listeners: [{address: '127.0.0.1:0'}]\nadmin: {enabled: false}\naccess_log: {target: 'off'}\n";

impl Harness {
    /// A one-worker harness with `settings`; `capture_logs` collects `ngx.log` lines.
    pub fn new(settings: LuaSettings) -> Result<Harness, String> {
        let metrics = Arc::new(Metrics::default());
        let mut snapshot = crate::config::load_snapshot_from_str(
            MINIMAL,
            "<spec>",
            std::path::Path::new("."),
            1,
            1,
            &metrics,
        )
        .map_err(|e| e.to_string())?;
        snapshot.lua = Arc::new(settings.clone());
        let snapshot = Arc::new(snapshot);
        let (reload_tx, _) = tokio::sync::mpsc::unbounded_channel();
        let (shutdown, _) = tokio::sync::watch::channel(false);
        let shared = Arc::new(Shared {
            snapshot: ArcSwap::new(snapshot.clone()),
            metrics: metrics.clone(),
            started: Instant::now(),
            workers: 1,
            reload_tx,
            shutdown,
            swapped: tokio::sync::watch::Sender::new(snapshot.version),
            lua_dicts: Arc::default(),
            code: Arc::default(),
        });
        let settings = Arc::new(settings);
        let rt = Runtime {
            dicts: shared.lua_dicts.clone(),
            metrics,
            settings: Arc::new(move || settings.clone()),
            worker_id: 0,
            worker_count: 1,
            queues: Arc::new(|| None),
            upstreams: {
                let snapshot = snapshot.clone();
                Arc::new(move |name| snapshot.upstreams.get(name).cloned())
            },
        };
        let worker = Worker::new(0, shared, WorkerLua::new(rt));
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
            vars.insert(crate::plugins::jwt::Claims(Arc::new(claims)));
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
            conn_state: Arc::default(),
            response_headers: http::HeaderMap::new(),
            grpc: false,
        }
    }
}
