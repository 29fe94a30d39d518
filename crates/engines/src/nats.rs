//! The `nats` backend: a queue is a JetStream stream with work-queue retention (a message
//! is removed once acknowledged), published to with `Nats-Msg-Id` set so that a publish
//! retried after a lost PubAck is stored once, and delivered through one durable pull
//! consumer that every gateway on the queue shares: the server hands each message to one
//! of them, redelivers it after a NAK's delay (the route's retry policy) or after the ack
//! wait when a gateway died holding it, and counts the attempts. A message that exhausts
//! its attempts is published to the dead-letter stream (`STREAM_dead`, subject
//! `DEAD_SUBJECT.ID`, the reason and times in headers) and terminated.
//!
//! Invariants:
//! - The caller's ack is sent only after the PubAck, i.e. once a quorum of the stream's
//!   replicas stored the message; a publish is bounded by `publish_timeout`, retried with
//!   the same message id within it, and answered 503 when the engine stays unreachable.
//! - Every client call runs on the engines' runtime ([`crate::runtime`]); what the request
//!   path reads synchronously (the stats, the fetched buffer) is kept in memory.
//! - A message id is the stream sequence, so ids increase in publish order and stay the
//!   same on every gateway.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_nats::jetstream::{self, consumer, stream, AckKind, Message};
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::Notify;

use sluicegate_queue::backend::{
    BackendStats, BoxFuture, DeadInfo, DeadLetterInfo, QueueBackend, StoredMessage,
};
use sluicegate_queue::config::NatsSettings;
use sluicegate_queue::QueueError;

use crate::runtime;

/// How long one pull request waits for messages before it is renewed.
const PULL_EXPIRES: Duration = Duration::from_secs(5);
/// Pause after a failed pull or setup step.
const RETRY_PAUSE: Duration = Duration::from_millis(500);
/// Pause between two publish tries within the publish timeout.
const PUBLISH_RETRY: Duration = Duration::from_millis(100);
/// How often the counters are refreshed from the server.
const STATS_EVERY: Duration = Duration::from_secs(1);
/// Most messages this gateway holds from the consumer without resolving them.
const MAX_ACK_PENDING: i64 = 20_000;

const REASON_HEADER: &str = "Sluicegate-Reason";
const APPENDED_HEADER: &str = "Sluicegate-Appended-At";
const DEAD_AT_HEADER: &str = "Sluicegate-Dead-At";
const ID_HEADER: &str = "Sluicegate-Id";

/// A JetStream-backed queue.
pub struct NatsBackend {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for NatsBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsBackend")
            .field("queue", &self.inner.name)
            .field("stream", &self.inner.settings.stream)
            .finish()
    }
}

/// The client objects, once the streams and the consumer exist.
struct Ready {
    client: async_nats::Client,
    js: jetstream::Context,
    stream: stream::Stream,
    dead: stream::Stream,
    consumer: consumer::PullConsumer,
}

/// A message this gateway received from the consumer and has not resolved yet.
struct Held {
    message: Message,
    appended_at_ms: u64,
}

struct Inner {
    name: String,
    settings: NatsSettings,
    max_bytes: u64,
    ready: RwLock<Option<Arc<Ready>>>,
    /// Why the engine is not ready (for the 503's log line).
    not_ready: Mutex<String>,
    /// Fetched, not yet handed to the delivery loop.
    buffer: Mutex<VecDeque<StoredMessage>>,
    /// Handed out, not yet acked, NAKed or dead-lettered, by stream sequence.
    held: Mutex<HashMap<u64, Held>>,
    pulling: AtomicBool,
    arrivals: Arc<Notify>,
    stats: Mutex<BackendStats>,
    closed: AtomicBool,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn unix_ms(t: async_nats::datetime::DateTime) -> u64 {
    let nanos = t.unix_timestamp_nanos();
    if nanos <= 0 {
        0
    } else {
        (nanos / 1_000_000) as u64
    }
}

impl NatsBackend {
    /// Opens queue `name` on the servers in `settings`: returns at once and connects,
    /// creates the streams and the consumer in the background (appends meanwhile answer
    /// [`QueueError::Unavailable`]).
    pub fn open(
        name: &str,
        settings: NatsSettings,
        max_bytes: u64,
    ) -> Result<NatsBackend, QueueError> {
        let handle = runtime::handle().map_err(|message| QueueError::Io {
            queue: name.to_string(),
            message,
        })?;
        let inner = Arc::new(Inner {
            name: name.to_string(),
            settings,
            max_bytes,
            ready: RwLock::new(None),
            not_ready: Mutex::new("connecting".into()),
            buffer: Mutex::new(VecDeque::new()),
            held: Mutex::new(HashMap::new()),
            pulling: AtomicBool::new(false),
            arrivals: Arc::new(Notify::new()),
            stats: Mutex::new(BackendStats {
                max_bytes,
                ..BackendStats::default()
            }),
            closed: AtomicBool::new(false),
        });
        handle.spawn(setup(inner.clone()));
        Ok(NatsBackend { inner })
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Inner {
    fn ready(&self) -> Result<Arc<Ready>, QueueError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(QueueError::Closed(self.name.clone()));
        }
        self.ready
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or_else(|| self.unavailable(lock(&self.not_ready).clone()))
    }

    fn unavailable(&self, message: impl Into<String>) -> QueueError {
        QueueError::Unavailable {
            queue: self.name.clone(),
            backend: "nats",
            message: message.into(),
        }
    }

    fn io(&self, message: impl std::fmt::Display) -> QueueError {
        QueueError::Io {
            queue: self.name.clone(),
            message: message.to_string(),
        }
    }

    fn dead_subject(&self, id: u64) -> String {
        format!("{}.{id}", self.settings.dead_subject)
    }
}

/// Connects, then creates (or finds) the streams and the consumer, retrying until it
/// works or the queue is closed; then keeps the counters fresh.
async fn setup(inner: Arc<Inner>) {
    let s = &inner.settings;
    let mut options = async_nats::ConnectOptions::new()
        .name(format!("sluicegate queue {}", inner.name))
        .retry_on_initial_connect()
        .connection_timeout(Duration::from_secs(2))
        .max_reconnects(None)
        .event_callback({
            let queue = inner.name.clone();
            move |event| {
                let queue = queue.clone();
                async move {
                    match event {
                        async_nats::Event::Connected => {
                            tracing::info!(queue = %queue, "Connected to NATS.")
                        }
                        async_nats::Event::Disconnected => {
                            tracing::warn!(queue = %queue, "Disconnected from NATS; reconnecting.")
                        }
                        other => tracing::debug!(queue = %queue, event = %other, "NATS event."),
                    }
                }
            }
        });
    if let Some((user, password)) = &s.user {
        options = options.user_and_password(user.clone(), password.clone());
    }
    if let Some(token) = &s.token {
        options = options.token(token.clone());
    }
    let urls: Vec<async_nats::ServerAddr> = s.urls.iter().filter_map(|u| u.parse().ok()).collect();
    let client = match options.connect(urls).await {
        Ok(c) => c,
        Err(e) => {
            *lock(&inner.not_ready) = format!("cannot connect: {e}");
            tracing::error!(queue = %inner.name, error = %e, "Cannot connect to NATS; the queue answers 503 until a restart.");
            return;
        }
    };
    let js = jetstream::ContextBuilder::new()
        .timeout(s.publish_timeout.min(Duration::from_secs(5)))
        .build(client.clone());
    let mut warned = false;
    let ready = loop {
        if inner.closed.load(Ordering::Acquire) {
            return;
        }
        match declare(&inner, &client, &js).await {
            Ok(r) => break r,
            Err(e) => {
                if !warned {
                    tracing::warn!(queue = %inner.name, stream = %s.stream, error = %e, "JetStream is not reachable yet; the queue answers 503 and keeps trying.");
                    warned = true;
                }
                *lock(&inner.not_ready) = e;
                tokio::time::sleep(RETRY_PAUSE).await;
            }
        }
    };
    tracing::info!(queue = %inner.name, stream = %s.stream, replicas = s.replicas, consumer = %s.consumer, "Queue opened on NATS JetStream.");
    *inner.ready.write().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(ready));
    inner.arrivals.notify_one();
    while !inner.closed.load(Ordering::Acquire) {
        refresh_stats(&inner).await;
        tokio::time::sleep(STATS_EVERY).await;
    }
}

async fn declare(
    inner: &Inner,
    client: &async_nats::Client,
    js: &jetstream::Context,
) -> Result<Ready, String> {
    let s = &inner.settings;
    let max_bytes = i64::try_from(inner.max_bytes).unwrap_or(i64::MAX);
    let stream = js
        .get_or_create_stream(stream::Config {
            name: s.stream.clone(),
            subjects: vec![s.subject.clone()],
            retention: stream::RetentionPolicy::WorkQueue,
            discard: stream::DiscardPolicy::New,
            max_bytes,
            storage: stream::StorageType::File,
            num_replicas: s.replicas,
            description: Some(format!("sluicegate queue `{}`", inner.name)),
            ..Default::default()
        })
        .await
        .map_err(|e| format!("stream `{}`: {e}", s.stream))?;
    let dead = js
        .get_or_create_stream(stream::Config {
            name: s.dead_stream.clone(),
            subjects: vec![format!("{}.>", s.dead_subject)],
            retention: stream::RetentionPolicy::Limits,
            discard: stream::DiscardPolicy::New,
            max_bytes,
            storage: stream::StorageType::File,
            num_replicas: s.replicas,
            description: Some(format!("dead letters of sluicegate queue `{}`", inner.name)),
            ..Default::default()
        })
        .await
        .map_err(|e| format!("stream `{}`: {e}", s.dead_stream))?;
    let consumer: consumer::PullConsumer = stream
        .get_or_create_consumer(
            &s.consumer,
            consumer::pull::Config {
                durable_name: Some(s.consumer.clone()),
                description: Some(format!("sluicegate delivery of queue `{}`", inner.name)),
                ack_policy: consumer::AckPolicy::Explicit,
                ack_wait: s.ack_wait,
                max_deliver: -1,
                max_ack_pending: MAX_ACK_PENDING,
                filter_subject: s.subject.clone(),
                ..Default::default()
            },
        )
        .await
        .map_err(|e| format!("consumer `{}`: {e}", s.consumer))?;
    Ok(Ready {
        client: client.clone(),
        js: js.clone(),
        stream,
        dead,
        consumer,
    })
}

async fn refresh_stats(inner: &Inner) {
    let Ok(ready) = inner.ready() else {
        return;
    };
    let connected = matches!(
        ready.client.connection_state(),
        async_nats::connection::State::Connected
    );
    let (main, dead) = tokio::join!(ready.stream.get_info(), ready.dead.get_info());
    let mut stats = lock(&inner.stats);
    stats.healthy = connected;
    if let Ok(info) = main {
        let st = &info.state;
        stats.pending = st.messages;
        stats.oldest_pending_id = (st.messages > 0).then_some(st.first_sequence);
        stats.oldest_pending_appended_at_ms =
            (st.messages > 0).then(|| unix_ms(st.first_timestamp));
        stats.next_id = st.last_sequence + 1;
        stats.bytes_on_disk = st.bytes + dead.as_ref().map_or(0, |d| d.state.bytes);
    } else {
        stats.healthy = false;
    }
    if let Ok(d) = dead {
        stats.dead = d.state.messages;
    }
}

fn is_full(text: &str) -> bool {
    let t = text.to_ascii_lowercase();
    t.contains("maximum bytes")
        || t.contains("maximum messages")
        || t.contains("resources exceeded")
}

/// Publishes `payload` to `subject` (with `headers`) under message id `msg_id`, retrying
/// within `timeout` (the same id: the stream keeps one copy); resolves to the sequence.
async fn publish(
    inner: &Inner,
    ready: &Ready,
    subject: String,
    headers: async_nats::HeaderMap,
    payload: Bytes,
    msg_id: &str,
) -> Result<u64, QueueError> {
    let deadline = tokio::time::Instant::now() + inner.settings.publish_timeout;
    let max_payload = ready.client.server_info().max_payload;
    if max_payload > 0 && payload.len() > max_payload {
        return Err(QueueError::TooLarge {
            queue: inner.name.clone(),
            len: payload.len() as u64,
            max: max_payload as u64,
        });
    }
    loop {
        let msg = jetstream::message::PublishMessage::build()
            .payload(payload.clone())
            .headers(headers.clone())
            .message_id(msg_id);
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if !matches!(
            ready.client.connection_state(),
            async_nats::connection::State::Connected
        ) {
            // Not handed to the client while it is disconnected: its buffer would send it
            // after the caller was told 503.
            if tokio::time::Instant::now() + PUBLISH_RETRY >= deadline {
                return Err(inner.unavailable("not connected to any NATS server"));
            }
            tokio::time::sleep(PUBLISH_RETRY).await;
            continue;
        }
        let attempt = async {
            // The server's reason is in the error's source, not its display.
            let ack = ready
                .js
                .send_publish(subject.clone(), msg)
                .await
                .map_err(|e| format!("{e} ({e:?})"))?;
            ack.await.map_err(|e| format!("{e} ({e:?})"))
        };
        let last = match tokio::time::timeout(left, attempt).await {
            Ok(Ok(ack)) => return Ok(ack.sequence),
            Ok(Err(e)) if is_full(&e) => {
                let used = lock(&inner.stats).bytes_on_disk;
                return Err(QueueError::Full {
                    queue: inner.name.clone(),
                    used,
                    needed: payload.len() as u64,
                    max: inner.max_bytes,
                });
            }
            Ok(Err(e)) => e,
            Err(_) => "no PubAck in time".to_string(),
        };
        if tokio::time::Instant::now() + PUBLISH_RETRY >= deadline {
            tracing::warn!(queue = %inner.name, error = %last, "Publish to JetStream not acknowledged in time; the caller gets 503.");
            return Err(inner.unavailable(format!(
                "publish not acknowledged within {} ms: {last}",
                inner.settings.publish_timeout.as_millis()
            )));
        }
        tokio::time::sleep(PUBLISH_RETRY).await;
    }
}

/// Pulls up to `max` messages into the buffer (one long poll), then lets the delivery
/// loop know.
async fn pull(inner: Arc<Inner>, max: usize) {
    let result = async {
        let ready = inner.ready()?;
        let mut batch = ready
            .consumer
            .batch()
            .max_messages(max)
            .expires(PULL_EXPIRES)
            .messages()
            .await
            .map_err(|e| inner.io(format!("pull: {e}")))?;
        while let Some(next) = batch.next().await {
            let message = next.map_err(|e| inner.io(format!("pull: {e}")))?;
            let Ok(info) = message.info() else {
                continue;
            };
            let id = info.stream_sequence;
            let appended_at_ms = unix_ms(info.published);
            let attempts = u32::try_from(info.delivered.saturating_sub(1)).unwrap_or(u32::MAX);
            let stored = StoredMessage {
                id,
                appended_at_ms,
                payload: message.payload.clone(),
                dead: None,
                attempts,
            };
            lock(&inner.held).insert(
                id,
                Held {
                    message,
                    appended_at_ms,
                },
            );
            lock(&inner.buffer).push_back(stored);
            inner.arrivals.notify_one();
        }
        Ok::<(), QueueError>(())
    }
    .await;
    if let Err(e) = result {
        if !inner.closed.load(Ordering::Acquire) {
            tracing::debug!(queue = %inner.name, error = %e, "Pull from JetStream failed; trying again.");
            tokio::time::sleep(RETRY_PAUSE).await;
        }
    }
    inner.pulling.store(false, Ordering::Release);
    inner.arrivals.notify_one();
}

fn ready_now<T: Send + 'static>(r: Result<T, QueueError>) -> BoxFuture<T> {
    Box::pin(std::future::ready(r))
}

fn dead_info(headers: &async_nats::HeaderMap) -> (DeadInfo, u64, Option<u64>) {
    let get = |name: &str| headers.get(name).map(|v| v.as_str().to_string());
    let num = |name: &str| get(name).and_then(|v| v.parse::<u64>().ok());
    (
        DeadInfo {
            reason: get(REASON_HEADER).unwrap_or_default(),
            dead_at_ms: num(DEAD_AT_HEADER).unwrap_or(0),
        },
        num(APPENDED_HEADER).unwrap_or(0),
        num(ID_HEADER),
    )
}

/// Whether a stream lookup failed because there is no such message.
fn no_message(e: &impl std::fmt::Display) -> bool {
    let t = e.to_string().to_ascii_lowercase();
    t.contains("no message found") || t.contains("not found")
}

impl QueueBackend for NatsBackend {
    fn kind(&self) -> &'static str {
        "nats"
    }

    fn durability(&self) -> &'static str {
        "stored by a quorum of the stream's JetStream replicas"
    }

    fn redelivers(&self) -> bool {
        true
    }

    fn arrivals(&self) -> Option<Arc<Notify>> {
        Some(self.inner.arrivals.clone())
    }

    fn retry_later(&self, id: u64, delay: Duration) -> BoxFuture<()> {
        let inner = self.inner.clone();
        let held = lock(&inner.held).remove(&id);
        runtime::spawn(&self.inner.name, async move {
            let Some(held) = held else {
                return Err(QueueError::NotFound {
                    queue: inner.name.clone(),
                    id,
                });
            };
            held.message
                .ack_with(AckKind::Nak(Some(delay)))
                .await
                .map_err(|e| inner.io(format!("NAK of {id}: {e}")))
        })
    }

    fn record_dead(&self, _payload: Vec<u8>, _reason: &str) -> BoxFuture<u64> {
        ready_now(Err(QueueError::Unsupported {
            queue: self.inner.name.clone(),
            what: "recording a dead letter outside delivery".into(),
            backend: "nats",
        }))
    }

    fn append(&self, payload: Vec<u8>) -> BoxFuture<u64> {
        let inner = self.inner.clone();
        let ready = match inner.ready() {
            Ok(r) => r,
            Err(e) => return ready_now(Err(e)),
        };
        runtime::spawn(&self.inner.name, async move {
            let msg_id = uuid::Uuid::new_v4().to_string();
            publish(
                &inner,
                &ready,
                inner.settings.subject.clone(),
                async_nats::HeaderMap::new(),
                Bytes::from(payload),
                &msg_id,
            )
            .await
        })
    }

    fn read_pending(&self, _from_id: u64, max: usize) -> BoxFuture<Vec<StoredMessage>> {
        let inner = &self.inner;
        if inner.closed.load(Ordering::Acquire) {
            return ready_now(Err(QueueError::Closed(inner.name.clone())));
        }
        let out: Vec<StoredMessage> = {
            let mut buf = lock(&inner.buffer);
            let n = buf.len().min(max);
            buf.drain(..n).collect()
        };
        if out.is_empty()
            && max > 0
            && inner.ready().is_ok()
            && !inner.pulling.swap(true, Ordering::AcqRel)
        {
            if let Ok(h) = runtime::handle() {
                h.spawn(pull(inner.clone(), max));
            } else {
                inner.pulling.store(false, Ordering::Release);
            }
        }
        ready_now(Ok(out))
    }

    fn browse(&self, from_id: u64, max: usize) -> BoxFuture<Vec<StoredMessage>> {
        let inner = self.inner.clone();
        let ready = match inner.ready() {
            Ok(r) => r,
            Err(e) => return ready_now(Err(e)),
        };
        runtime::spawn(&self.inner.name, async move {
            let info = ready
                .stream
                .get_info()
                .await
                .map_err(|e| inner.io(format!("stream info: {e}")))?;
            let mut out = Vec::new();
            let mut seq = from_id.max(info.state.first_sequence).max(1);
            while seq <= info.state.last_sequence && out.len() < max {
                match ready.stream.get_raw_message(seq).await {
                    Ok(m) => out.push(StoredMessage {
                        id: seq,
                        appended_at_ms: unix_ms(m.time),
                        payload: m.payload,
                        dead: None,
                        attempts: 0,
                    }),
                    Err(e) if no_message(&e) => {}
                    Err(e) => return Err(inner.io(format!("get {seq}: {e}"))),
                }
                seq += 1;
            }
            Ok(out)
        })
    }

    fn get(&self, id: u64) -> BoxFuture<Option<StoredMessage>> {
        let inner = self.inner.clone();
        if let Some(h) = lock(&inner.held).get(&id) {
            let msg = StoredMessage {
                id,
                appended_at_ms: h.appended_at_ms,
                payload: h.message.payload.clone(),
                dead: None,
                attempts: h.message.info().map_or(0, |i| {
                    u32::try_from(i.delivered.saturating_sub(1)).unwrap_or(0)
                }),
            };
            return ready_now(Ok(Some(msg)));
        }
        let ready = match inner.ready() {
            Ok(r) => r,
            Err(e) => return ready_now(Err(e)),
        };
        runtime::spawn(&self.inner.name, async move {
            match ready.stream.get_raw_message(id).await {
                Ok(m) => {
                    return Ok(Some(StoredMessage {
                        id,
                        appended_at_ms: unix_ms(m.time),
                        payload: m.payload,
                        dead: None,
                        attempts: 0,
                    }))
                }
                Err(e) if no_message(&e) => {}
                Err(e) => return Err(inner.io(format!("get {id}: {e}"))),
            }
            match ready
                .dead
                .get_last_raw_message_by_subject(&inner.dead_subject(id))
                .await
            {
                Ok(m) => {
                    let (dead, appended_at_ms, _) = dead_info(&m.headers);
                    Ok(Some(StoredMessage {
                        id,
                        appended_at_ms,
                        payload: m.payload,
                        dead: Some(dead),
                        attempts: 0,
                    }))
                }
                Err(e) if no_message(&e) => Ok(None),
                Err(e) => Err(inner.io(format!("get dead letter {id}: {e}"))),
            }
        })
    }

    fn ack(&self, id: u64) -> BoxFuture<()> {
        let inner = self.inner.clone();
        let held = lock(&inner.held).remove(&id);
        let ready = inner.ready();
        runtime::spawn(&self.inner.name, async move {
            match held {
                Some(h) => h
                    .message
                    .double_ack()
                    .await
                    .map_err(|e| inner.io(format!("ack of {id}: {e}"))),
                // Not received here (an operator's ack): removing it is the ack of a
                // work-queue stream.
                None => match ready?.stream.delete_message(id).await {
                    Ok(_) => Ok(()),
                    Err(e) if no_message(&e) => Err(QueueError::NotFound {
                        queue: inner.name.clone(),
                        id,
                    }),
                    Err(e) => Err(inner.io(format!("delete {id}: {e}"))),
                },
            }
        })
    }

    fn dead_letter(&self, id: u64, reason: &str) -> BoxFuture<()> {
        let inner = self.inner.clone();
        let held = lock(&inner.held).remove(&id);
        let reason = reason.to_string();
        let ready = match inner.ready() {
            Ok(r) => r,
            Err(e) => return ready_now(Err(e)),
        };
        runtime::spawn(&self.inner.name, async move {
            let (payload, appended_at_ms) = match &held {
                Some(h) => (h.message.payload.clone(), h.appended_at_ms),
                None => match ready.stream.get_raw_message(id).await {
                    Ok(m) => (m.payload, unix_ms(m.time)),
                    Err(e) if no_message(&e) => {
                        return Err(QueueError::NotFound {
                            queue: inner.name.clone(),
                            id,
                        })
                    }
                    Err(e) => return Err(inner.io(format!("get {id}: {e}"))),
                },
            };
            let mut headers = async_nats::HeaderMap::new();
            // Header values are one line.
            let one_line: String = reason
                .chars()
                .map(|c| if c.is_control() { ' ' } else { c })
                .collect();
            headers.insert(REASON_HEADER, one_line.as_str());
            headers.insert(APPENDED_HEADER, appended_at_ms.to_string().as_str());
            headers.insert(DEAD_AT_HEADER, now_ms().to_string().as_str());
            headers.insert(ID_HEADER, id.to_string().as_str());
            let msg_id = format!("{}-dead-{id}", inner.settings.stream);
            publish(
                &inner,
                &ready,
                inner.dead_subject(id),
                headers,
                payload,
                &msg_id,
            )
            .await?;
            if let Some(h) = held {
                h.message
                    .ack_with(AckKind::Term)
                    .await
                    .map_err(|e| inner.io(format!("terminate {id}: {e}")))?;
            }
            match ready.stream.delete_message(id).await {
                Ok(_) => Ok(()),
                Err(e) if no_message(&e) => Ok(()),
                Err(e) => Err(inner.io(format!("delete {id}: {e}"))),
            }
        })
    }

    fn dead_letters(&self) -> BoxFuture<Vec<DeadLetterInfo>> {
        let inner = self.inner.clone();
        let ready = match inner.ready() {
            Ok(r) => r,
            Err(e) => return ready_now(Err(e)),
        };
        runtime::spawn(&self.inner.name, async move {
            let info = ready
                .dead
                .get_info()
                .await
                .map_err(|e| inner.io(format!("dead letters: {e}")))?;
            let mut out = Vec::with_capacity(info.state.messages as usize);
            let mut seq = info.state.first_sequence.max(1);
            while seq <= info.state.last_sequence && (out.len() as u64) < info.state.messages {
                match ready.dead.get_raw_message(seq).await {
                    Ok(m) => {
                        let (dead, appended_at_ms, id) = dead_info(&m.headers);
                        let id = id.or_else(|| {
                            m.subject
                                .rsplit('.')
                                .next()
                                .and_then(|t| t.parse::<u64>().ok())
                        });
                        if let Some(id) = id {
                            out.push(DeadLetterInfo {
                                id,
                                appended_at_ms,
                                dead_at_ms: dead.dead_at_ms,
                                reason: dead.reason,
                                payload_len: m.payload.len() as u64,
                            });
                        }
                    }
                    Err(e) if no_message(&e) => {}
                    Err(e) => return Err(inner.io(format!("dead letter at {seq}: {e}"))),
                }
                seq += 1;
            }
            out.sort_by_key(|d| d.id);
            Ok(out)
        })
    }

    fn replay(&self, id: u64) -> BoxFuture<u64> {
        let inner = self.inner.clone();
        let ready = match inner.ready() {
            Ok(r) => r,
            Err(e) => return ready_now(Err(e)),
        };
        runtime::spawn(&self.inner.name, async move {
            let m = match ready
                .dead
                .get_last_raw_message_by_subject(&inner.dead_subject(id))
                .await
            {
                Ok(m) => m,
                Err(e) if no_message(&e) => {
                    // Still pending in the main stream, or unknown.
                    return match ready.stream.get_raw_message(id).await {
                        Ok(_) => Err(QueueError::NotDead {
                            queue: inner.name.clone(),
                            id,
                        }),
                        Err(_) => Err(QueueError::NotFound {
                            queue: inner.name.clone(),
                            id,
                        }),
                    };
                }
                Err(e) => return Err(inner.io(format!("dead letter {id}: {e}"))),
            };
            let msg_id = format!("{}-replay-{id}-{}", inner.settings.stream, m.sequence);
            let new_id = publish(
                &inner,
                &ready,
                inner.settings.subject.clone(),
                async_nats::HeaderMap::new(),
                m.payload,
                &msg_id,
            )
            .await?;
            ready
                .dead
                .delete_message(m.sequence)
                .await
                .map_err(|e| inner.io(format!("remove replayed dead letter {id}: {e}")))?;
            Ok(new_id)
        })
    }

    fn purge_dead(&self) -> BoxFuture<u64> {
        let inner = self.inner.clone();
        let ready = match inner.ready() {
            Ok(r) => r,
            Err(e) => return ready_now(Err(e)),
        };
        runtime::spawn(&self.inner.name, async move {
            let purged = ready
                .dead
                .purge()
                .await
                .map_err(|e| inner.io(format!("purge dead letters: {e}")))?;
            lock(&inner.stats).dead = 0;
            Ok(purged.purged)
        })
    }

    fn stats(&self) -> BackendStats {
        let mut s = lock(&self.inner.stats).clone();
        if self.inner.ready().is_err() {
            s.healthy = false;
        }
        s
    }

    fn close(&self) {
        let inner = &self.inner;
        if inner.closed.swap(true, Ordering::AcqRel) {
            return;
        }
        let ready = inner
            .ready
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        // Messages held but not resolved are redelivered after the ack wait; handing them
        // back now lets another gateway take them at once.
        let held: Vec<Held> = lock(&inner.held).drain().map(|(_, h)| h).collect();
        lock(&inner.buffer).clear();
        if let (Some(ready), Ok(h)) = (ready, runtime::handle()) {
            h.spawn(async move {
                for m in held {
                    let _ = m.message.ack_with(AckKind::Nak(None)).await;
                }
                let _ = tokio::time::timeout(Duration::from_secs(2), ready.client.flush()).await;
            });
        }
        inner.arrivals.notify_one();
    }
}
