//! The engines' runtime: one thread (`sluicegate-engines`) with a multi-threaded tokio
//! runtime of one worker, started on first use and kept for the process's life.

use std::future::Future;
use std::sync::OnceLock;

use sluicegate_queue::backend::BoxFuture;
use sluicegate_queue::QueueError;

static RUNTIME: OnceLock<Result<tokio::runtime::Runtime, String>> = OnceLock::new();

/// The runtime's handle, or why it could not start.
pub fn handle() -> Result<tokio::runtime::Handle, String> {
    RUNTIME
        .get_or_init(|| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .thread_name("sluicegate-engines")
                .enable_all()
                .build()
                .map_err(|e| format!("cannot start the engines' runtime: {e}"))
        })
        .as_ref()
        .map(|rt| rt.handle().clone())
        .map_err(Clone::clone)
}

/// Runs `fut` on the engines' runtime; the result can be awaited anywhere.
pub fn spawn<T, F>(queue: &str, fut: F) -> BoxFuture<T>
where
    T: Send + 'static,
    F: Future<Output = Result<T, QueueError>> + Send + 'static,
{
    let name = queue.to_string();
    match handle() {
        Ok(h) => {
            let task = h.spawn(fut);
            Box::pin(async move {
                match task.await {
                    Ok(r) => r,
                    Err(e) => Err(QueueError::Io {
                        queue: name,
                        message: format!("engine task failed: {e}"),
                    }),
                }
            })
        }
        Err(message) => Box::pin(std::future::ready(Err(QueueError::Io {
            queue: name,
            message,
        }))),
    }
}
