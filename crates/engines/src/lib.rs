//! Queue backends on distributed engines, behind `sluicegate-queue`'s
//! [`QueueBackend`](sluicegate_queue::QueueBackend): [`nats`] (a JetStream stream and one
//! durable pull consumer shared by every gateway) and [`pubsub`] (a Google Pub/Sub topic,
//! delivered by a push subscription to the `pubsub_push` plugin).
//!
//! Each engine's client runs on one small runtime of its own ([`runtime`]), so a backend's
//! futures can be awaited from any of the gateway's runtimes and a slow engine never
//! holds a worker.

pub mod nats;
pub mod pubsub;
mod runtime;

use std::path::Path;
use std::sync::Arc;

use sluicegate_queue::{Engine, Engines, QueueBackend, QueueError, RouteQueue};

/// The engines this build can open.
#[derive(Debug, Default)]
pub struct Available;

impl Engines for Available {
    fn open(&self, queue: &RouteQueue, dir: &Path) -> Result<Arc<dyn QueueBackend>, QueueError> {
        match &*queue.engine {
            Engine::Nats(settings) => Ok(Arc::new(nats::NatsBackend::open(
                &queue.name,
                settings.clone(),
                queue.settings.max_bytes,
            )?)),
            Engine::PubSub(settings) => Ok(Arc::new(pubsub::PubSubBackend::open(
                &queue.name,
                settings.clone(),
                dir,
                queue.settings.max_bytes,
            )?)),
            other => Err(QueueError::Unsupported {
                queue: queue.name.clone(),
                what: "opening a queue".into(),
                backend: other.name(),
            }),
        }
    }
}
