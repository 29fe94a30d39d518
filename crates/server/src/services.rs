//! The services scripts call, implemented over the layers that own them: the Lua bridge
//! defines what it needs (`sluicegate_lua::Runtime`), and this is where a worker's runtime
//! gets the durable queues and the TLS roots of `sluicegate.http`.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};

use sluicegate_config::file::UpstreamTlsConfig;
use sluicegate_lua::{QueueService, ScriptMessage};
use sluicegate_upstream::Protocol;

use sluicegate_queue::{QueuedRequest, Queues};

/// The process's durable queues, as `sluicegate.queue.enqueue` sees them.
pub struct ScriptQueues(pub Arc<Queues>);

impl QueueService for ScriptQueues {
    fn enqueue(
        self: Arc<Self>,
        queue: String,
        message: ScriptMessage,
    ) -> Pin<Box<dyn Future<Output = Result<u64, String>>>> {
        Box::pin(async move {
            let mut req = QueuedRequest::new(message.method, message.target);
            req.headers = message.headers;
            req.body = message.body;
            req.request_id = message.request_id;
            self.0.enqueue(&queue, req).await.map_err(|e| e.to_string())
        })
    }
}

/// The client TLS configuration for `sluicegate.http` (built-in roots, or no verification),
/// built once per process: building one parses every root certificate.
pub fn http_tls(verify: bool) -> Result<Arc<rustls::ClientConfig>, String> {
    static CONFIGS: [OnceLock<Result<Arc<rustls::ClientConfig>, String>>; 2] =
        [OnceLock::new(), OnceLock::new()];
    CONFIGS[usize::from(verify)]
        .get_or_init(|| {
            let tls = UpstreamTlsConfig {
                verify: Some(verify),
                ..Default::default()
            };
            sluicegate_upstream::tls::client_config(
                &tls,
                std::path::Path::new("."),
                Protocol::Http1,
            )
        })
        .clone()
}
