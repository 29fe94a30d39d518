//! The delivery thread: one OS thread (`sluicegate-delivery`) with its own single-threaded
//! runtime and `LocalSet`, running one delivery loop per open queue. It lives as long as
//! the [`Queues`](super::Queues) registry, not a configuration snapshot: each loop reads
//! its queue's current settings and target on every turn, so a reload applies live.
//!
//! A loop keeps up to `concurrency` attempts in flight. It reads pending messages from the
//! backend in id order (a cursor past everything it has started), retries failed ones
//! after their backoff, and resolves each message exactly once in this process: acked
//! after a 2xx, or dead-lettered. In `fifo` ordering a message waiting for its retry holds
//! back every later message (head-of-line); in `unordered` it does not.
//!
//! Nothing here can lose a message: if an ack or dead-letter write fails, the message
//! stays pending in storage and is delivered again after a restart (at-least-once).

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::rc::Rc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::backend::StoredMessage;
use super::client::{Client, Outgoing};
use super::config::Ordering;
use super::journal::{Journal, Mark};
use super::metrics::QueueMetrics;
use super::retry::{now_ms, Jitter, Verdict};
use super::{
    record, DeliveryTarget, Queue, QueueError, ATTEMPT_HEADER, MESSAGE_ID_HEADER, QUEUE_HEADER,
};

/// Most pending messages read from storage at once.
const READ_BATCH: usize = 64;
/// Read-ahead budget in bytes: with large messages fewer are read at once, so the
/// read-ahead buffer stays around this size (a single larger message is still read).
const READ_AHEAD_BYTES: usize = 4 << 20;
/// In `unordered` mode, messages waiting for a retry are tracked in memory (ids and times
/// only); past this many, new messages wait too, so memory stays bounded in an outage.
const MAX_WAITING: usize = 10_000;
/// Acks written but not yet durable; past this, new deliveries wait for the disk.
const MAX_OUTSTANDING_ACKS: usize = 4096;
/// Pause after a storage read error before reading again.
const READ_ERROR_PAUSE: Duration = Duration::from_secs(1);

/// One attempt asked for by a push playback (a message an engine pushed to the gateway):
/// sent like a delivery of `queue`, its outcome classified by the queue's retry policy.
pub struct Play {
    /// The queue whose target and policy apply.
    pub queue: Arc<Queue>,
    /// The request.
    pub request: record::QueuedRequest,
    /// The message id sent upstream (`X-Sluicegate-Message-Id`).
    pub id: u64,
    /// The attempt number sent upstream.
    pub attempt: u32,
    /// Where the outcome goes.
    pub done: tokio::sync::oneshot::Sender<Verdict>,
}

/// The running delivery thread.
pub struct Handle {
    add: mpsc::UnboundedSender<Arc<Queue>>,
    play: mpsc::UnboundedSender<Play>,
    stop: watch::Sender<bool>,
    thread: Option<JoinHandle<()>>,
}

impl Handle {
    /// Starts delivering `queue` too.
    pub fn add(&self, queue: Arc<Queue>) {
        let _ = self.add.send(queue);
    }

    /// Sends one pushed message upstream on the delivery thread; `false` when the thread
    /// is gone.
    pub fn play(&self, play: Play) -> bool {
        self.play.send(play).is_ok()
    }

    /// Stops every loop (attempts in flight are abandoned, their messages stay pending)
    /// and waits for the thread.
    pub fn stop(mut self) {
        let _ = self.stop.send(true);
        if let Some(t) = self.thread.take() {
            if t.join().is_err() {
                tracing::error!("The delivery thread panicked.");
            }
        }
    }
}

/// Starts the delivery thread with `queues`.
pub fn start(queues: Vec<Arc<Queue>>) -> std::io::Result<Handle> {
    let (add, mut added) = mpsc::unbounded_channel::<Arc<Queue>>();
    let (play, mut plays) = mpsc::unbounded_channel::<Play>();
    for q in queues {
        let _ = add.send(q);
    }
    let (stop, stopped) = watch::channel(false);
    let thread = std::thread::Builder::new()
        .name("sluicegate-delivery".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(rt) => rt,
                Err(e) => {
                    tracing::error!(error = %e, "Cannot start the delivery runtime; queued messages wait for a restart.");
                    return;
                }
            };
            let local = tokio::task::LocalSet::new();
            local.block_on(&rt, async move {
                let client = Client::default();
                let mut loops = JoinSet::new();
                let mut stop_rx = stopped.clone();
                loop {
                    tokio::select! {
                        q = added.recv() => match q {
                            Some(q) => {
                                loops.spawn_local(run(q, client.clone(), stopped.clone()));
                            }
                            None => break,
                        },
                        p = plays.recv() => if let Some(p) = p {
                            tokio::task::spawn_local(play_one(p, client.clone()));
                        },
                        _ = stop_rx.changed() => break,
                    }
                }
                while loops.join_next().await.is_some() {}
            });
        })?;
    Ok(Handle {
        add,
        play,
        stop,
        thread: Some(thread),
    })
}

/// One push playback's attempt, counted in the queue's metrics like a delivery.
async fn play_one(p: Play, client: Client) {
    let Play {
        queue,
        request,
        id,
        attempt,
        done,
    } = p;
    let verdict = match queue.target() {
        None => Verdict::Retry {
            reason: format!("queue `{}` has no route to deliver to", queue.name()),
            retry_after: None,
        },
        Some(target) => match outgoing(&request, &target, queue.name(), id, attempt) {
            Err(reason) => Verdict::Dead { reason },
            Ok(out) => match client.send(&target.upstream, &out).await {
                Ok(answer) => queue.settings().retry.classify(
                    answer.status,
                    &answer.excerpt,
                    answer.retry_after,
                ),
                Err(e) => Verdict::Retry {
                    reason: e.to_string(),
                    retry_after: None,
                },
            },
        },
    };
    let metrics = queue.metrics();
    match &verdict {
        Verdict::Delivered => QueueMetrics::inc(&metrics.delivered),
        Verdict::Retry { .. } => QueueMetrics::inc(&metrics.retried),
        Verdict::Dead { .. } => {}
    }
    let _ = done.send(verdict);
}

/// A message waiting for its next attempt.
#[derive(Debug, Clone, Copy)]
struct Waiting {
    /// Attempts made so far.
    attempts: u32,
    due: Instant,
}

/// What a finished attempt reports back to its loop.
struct Done {
    id: u64,
    appended_at_ms: u64,
    attempt: u32,
    verdict: Verdict,
}

/// State of one queue's delivery loop.
struct Loop {
    queue: Arc<Queue>,
    client: Client,
    journal: Rc<RefCell<Journal>>,
    jitter: Jitter,
    /// Next id to read from storage: everything below was started already.
    cursor: u64,
    /// Read, not started yet.
    fresh: VecDeque<StoredMessage>,
    /// Waiting for a retry, by id (FIFO head first).
    waiting: BTreeMap<u64, Waiting>,
    /// The same messages by due time.
    timers: BTreeSet<(Instant, u64)>,
    inflight: JoinSet<Done>,
    /// Task id → (message id, attempt, appended_at) to recover from a panicked attempt.
    tasks: HashMap<tokio::task::Id, (u64, u32, u64)>,
    outstanding_acks: Rc<std::cell::Cell<usize>>,
    read_paused_until: Option<Instant>,
    /// Mean payload size of the last batch read, to size the next one.
    mean_payload: usize,
}

async fn run(queue: Arc<Queue>, client: Client, mut stop: watch::Receiver<bool>) {
    if !queue.backend().delivers() {
        // The engine pushes the messages to a route of their own.
        return;
    }
    let arrivals = queue.backend().arrivals();
    let journal = Journal::open(&queue.dir().join("delivery.journal"));
    let salt = Arc::as_ptr(&queue) as usize as u64;
    let mut l = Loop {
        queue,
        client,
        journal: Rc::new(RefCell::new(journal)),
        jitter: Jitter::new(salt),
        cursor: 0,
        fresh: VecDeque::new(),
        waiting: BTreeMap::new(),
        timers: BTreeSet::new(),
        inflight: JoinSet::new(),
        tasks: HashMap::new(),
        outstanding_acks: Rc::default(),
        read_paused_until: None,
        mean_payload: 0,
    };
    loop {
        if *stop.borrow_and_update() {
            break;
        }
        let target = l.queue.target();
        if let Some(target) = &target {
            l.fill(target).await;
        }
        l.tidy_journal();
        let wake_at = l.next_wake(target.is_some());
        tokio::select! {
            _ = stop.changed() => break,
            done = l.inflight.join_next_with_id(), if !l.inflight.is_empty() => {
                if let Some(done) = done {
                    l.finished(done);
                }
                while let Some(done) = l.inflight.try_join_next_with_id() {
                    l.finished(done);
                }
            }
            _ = l.queue.notified() => {}
            _ = arrived(arrivals.as_deref()) => {}
            _ = sleep_until(wake_at) => {}
        }
    }
    l.journal.borrow_mut().flush();
}

async fn arrived(arrivals: Option<&tokio::sync::Notify>) {
    match arrivals {
        Some(n) => n.notified().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

impl Loop {
    fn name(&self) -> &str {
        self.queue.name()
    }

    /// Writes the journal notes of this turn (before any attempt started in it runs) and
    /// compacts the journal once it is mostly obsolete.
    fn tidy_journal(&mut self) {
        let mut journal = self.journal.borrow_mut();
        journal.flush();
        if journal.wants_compaction() {
            journal.maybe_compact(self.queue.backend().stats().oldest_pending_id);
        }
    }

    /// When to look again without being woken: the next retry, the end of a read pause,
    /// or a periodic check while the queue has no route.
    fn next_wake(&self, configured: bool) -> Option<Instant> {
        let retry = match self.queue.settings().ordering {
            Ordering::Fifo => self.waiting.values().next().map(|w| w.due),
            Ordering::Unordered => self.timers.first().map(|(due, _)| *due),
        };
        let idle = (!configured).then(|| Instant::now() + Duration::from_secs(1));
        [retry, self.read_paused_until, idle]
            .into_iter()
            .flatten()
            .min()
    }

    /// Starts attempts until `concurrency` are in flight or nothing is ready.
    async fn fill(&mut self, target: &Arc<DeliveryTarget>) {
        let settings = self.queue.settings();
        while self.inflight.len() < settings.concurrency
            && self.outstanding_acks.get() < MAX_OUTSTANDING_ACKS
        {
            let now = Instant::now();
            let retry = match settings.ordering {
                Ordering::Fifo => match self.waiting.first_key_value() {
                    Some((&id, w)) if w.due <= now => Some(id),
                    // The head of the line is not due: nothing after it may start.
                    Some(_) => break,
                    None => None,
                },
                Ordering::Unordered => self
                    .timers
                    .first()
                    .filter(|(due, _)| *due <= now)
                    .map(|(_, id)| *id),
            };
            if let Some(id) = retry {
                if let Some(w) = self.waiting.remove(&id) {
                    self.timers.remove(&(w.due, id));
                    self.retry(id, w.attempts, target).await;
                }
                continue;
            }
            if settings.ordering == Ordering::Unordered && self.waiting.len() >= MAX_WAITING {
                break;
            }
            let room = settings.concurrency - self.inflight.len();
            let Some(msg) = self.next_fresh(room).await else {
                break;
            };
            let attempts = if self.queue.backend().redelivers() {
                msg.attempts
            } else {
                self.journal.borrow().attempts(msg.id)
            };
            self.start(msg, attempts, target);
        }
    }

    /// The next message to start; `room`: attempts that may start now. An engine that
    /// hands messages to several gateways is asked for no more than that, so that none
    /// waits here while its ack timer runs.
    async fn next_fresh(&mut self, room: usize) -> Option<StoredMessage> {
        if self.fresh.is_empty() {
            if self.read_paused_until.is_some_and(|t| Instant::now() < t) {
                return None;
            }
            self.read_paused_until = None;
            let mut max = (READ_AHEAD_BYTES / self.mean_payload.max(1)).clamp(1, READ_BATCH);
            if self.queue.backend().redelivers() {
                max = max.min(room.max(1));
            }
            match self.queue.backend().read_pending(self.cursor, max).await {
                Ok(batch) => {
                    if !batch.is_empty() {
                        let total: usize = batch.iter().map(|m| m.payload.len()).sum();
                        self.mean_payload = total / batch.len();
                    }
                    if let Some(last) = batch.last() {
                        self.cursor = last.id.saturating_add(1);
                    }
                    self.fresh.extend(batch);
                }
                Err(QueueError::Unreadable { id, message, .. }) => {
                    // A damaged record must not stall the queue: dead-letter it and move on.
                    tracing::error!(queue = self.name(), id, error = %message, "Stored message is unreadable; moving it to the dead letters.");
                    self.cursor = self.cursor.max(id.saturating_add(1));
                    self.dead_letter(id, 0, format!("unreadable in storage: {message}"));
                    return None;
                }
                Err(e) => {
                    tracing::error!(queue = self.name(), error = %e, "Cannot read pending messages; trying again shortly.");
                    self.read_paused_until = Some(Instant::now() + READ_ERROR_PAUSE);
                    return None;
                }
            }
        }
        self.fresh.pop_front()
    }

    /// Re-reads a message whose retry is due and starts it.
    async fn retry(&mut self, id: u64, attempts: u32, target: &Arc<DeliveryTarget>) {
        match self.queue.backend().get(id).await {
            Ok(Some(msg)) if msg.dead.is_none() => self.start(msg, attempts, target),
            // Resolved meanwhile (an operator acted on it): nothing to do.
            Ok(_) => self.journal.borrow_mut().mark(id, attempts, Mark::Resolved),
            Err(e) => {
                tracing::error!(queue = self.name(), id, error = %e, "Stored message is unreadable; moving it to the dead letters.");
                self.dead_letter(id, attempts, format!("unreadable in storage: {e}"));
            }
        }
    }

    /// Starts attempt `attempts + 1` of `msg`.
    fn start(&mut self, msg: StoredMessage, attempts: u32, target: &Arc<DeliveryTarget>) {
        let id = msg.id;
        let attempt = attempts.saturating_add(1);
        let request = match record::decode(msg.payload) {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(queue = self.name(), id, error = %e, "Stored message cannot be decoded; moving it to the dead letters.");
                self.dead_letter(id, attempts, format!("undecodable message: {e}"));
                return;
            }
        };
        self.journal.borrow_mut().mark(id, attempt, Mark::Started);
        let out = outgoing(&request, target, self.name(), id, attempt);
        let client = self.client.clone();
        let target = target.clone();
        let policy = self.queue.settings().retry.clone();
        let appended_at_ms = msg.appended_at_ms;
        let handle = self.inflight.spawn_local(async move {
            let verdict = match out {
                Err(reason) => Verdict::Dead { reason },
                Ok(out) => match client.send(&target.upstream, &out).await {
                    Ok(answer) => {
                        policy.classify(answer.status, &answer.excerpt, answer.retry_after)
                    }
                    Err(e) => Verdict::Retry {
                        reason: e.to_string(),
                        retry_after: None,
                    },
                },
            };
            Done {
                id,
                appended_at_ms,
                attempt,
                verdict,
            }
        });
        self.tasks
            .insert(handle.id(), (id, attempt, appended_at_ms));
    }

    fn finished(&mut self, result: Result<(tokio::task::Id, Done), tokio::task::JoinError>) {
        let done = match result {
            Ok((task, done)) => {
                self.tasks.remove(&task);
                done
            }
            Err(e) => {
                let Some((id, attempt, appended_at_ms)) = self.tasks.remove(&e.id()) else {
                    return;
                };
                tracing::error!(queue = self.name(), id, error = %e, "Delivery attempt panicked; it will be retried.");
                Done {
                    id,
                    appended_at_ms,
                    attempt,
                    verdict: Verdict::Retry {
                        reason: "internal error during delivery".into(),
                        retry_after: None,
                    },
                }
            }
        };
        let Done {
            id,
            appended_at_ms,
            attempt,
            verdict,
        } = done;
        let metrics = self.queue.metrics();
        match verdict {
            Verdict::Delivered => {
                QueueMetrics::inc(&metrics.delivered);
                let age = Duration::from_millis(now_ms().saturating_sub(appended_at_ms));
                metrics.delivery_latency.observe(age);
                let duplicate = self.journal.borrow().possibly_delivered_before(id);
                if duplicate {
                    QueueMetrics::inc(&metrics.duplicates);
                }
                self.journal.borrow_mut().mark(id, attempt, Mark::Delivered);
                self.ack(id, attempt);
            }
            Verdict::Retry {
                reason,
                retry_after,
            } => {
                self.journal.borrow_mut().mark(id, attempt, Mark::Failed);
                let policy = self.queue.settings().retry.clone();
                if let Some(why) = policy.exhausted(attempt, appended_at_ms, now_ms()) {
                    self.dead_letter(id, attempt, format!("{why}; last error: {reason}"));
                    return;
                }
                let delay = policy.delay(attempt, retry_after, &mut self.jitter);
                tracing::debug!(queue = self.name(), id, attempt, delay_ms = delay.as_millis() as u64, error = %reason, "Delivery failed; retrying later.");
                QueueMetrics::inc(&metrics.retried);
                if self.queue.backend().redelivers() {
                    // The engine redelivers it after the delay, here or on another gateway.
                    let pending = self.queue.backend().retry_later(id, delay);
                    let queue = self.queue.clone();
                    tokio::task::spawn_local(async move {
                        if let Err(e) = pending.await {
                            tracing::warn!(queue = queue.name(), id, error = %e, "Could not hand a failed message back to the engine; it is redelivered after the ack wait.");
                        }
                    });
                    return;
                }
                let due = Instant::now() + delay;
                self.waiting.insert(
                    id,
                    Waiting {
                        attempts: attempt,
                        due,
                    },
                );
                self.timers.insert((due, id));
            }
            Verdict::Dead { reason } => {
                self.journal.borrow_mut().mark(id, attempt, Mark::Failed);
                self.dead_letter(id, attempt, reason);
            }
        }
    }

    /// Acks `id` in the background: the slot is free as soon as the upstream said 2xx.
    fn ack(&mut self, id: u64, attempt: u32) {
        let pending = self.queue.backend().ack(id);
        let queue = self.queue.clone();
        let journal = self.journal.clone();
        let outstanding = self.outstanding_acks.clone();
        outstanding.set(outstanding.get() + 1);
        tokio::task::spawn_local(async move {
            match pending.await {
                Ok(()) => journal.borrow_mut().mark(id, attempt, Mark::Resolved),
                Err(e) => {
                    tracing::error!(queue = queue.name(), id, error = %e, "Delivered message could not be acked; it will be delivered again after a restart.");
                }
            }
            outstanding.set(outstanding.get().saturating_sub(1));
            if outstanding.get() + 1 == MAX_OUTSTANDING_ACKS {
                queue.wake();
            }
        });
    }

    /// Moves `id` to the dead letters in the background.
    fn dead_letter(&mut self, id: u64, attempt: u32, reason: String) {
        let pending = self.queue.backend().dead_letter(id, &reason);
        let queue = self.queue.clone();
        let journal = self.journal.clone();
        tokio::task::spawn_local(async move {
            match pending.await {
                Ok(()) => {
                    QueueMetrics::inc(&queue.metrics().dead_lettered);
                    journal.borrow_mut().mark(id, attempt, Mark::Resolved);
                    tracing::warn!(queue = queue.name(), id, attempts = attempt, reason = %reason, "Message moved to the dead letters.");
                }
                Err(e) => {
                    tracing::error!(queue = queue.name(), id, error = %e, reason = %reason, "Message could not be dead-lettered; it stays pending until a restart.");
                }
            }
        });
    }
}

/// The request for attempt `attempt` of message `id`: the route's rewrite applied, hop-by-hop
/// headers removed, the message headers added. `Err` holds a dead-letter reason.
fn outgoing(
    req: &record::QueuedRequest,
    target: &DeliveryTarget,
    queue: &str,
    id: u64,
    attempt: u32,
) -> Result<Outgoing, String> {
    use http::{header, HeaderValue};
    let path = match &target.rewrite {
        Some(r) => r.apply(req.path()),
        None => req.path().to_string(),
    };
    let path_and_query = match req.query() {
        Some(q) => format!("{path}?{q}"),
        None => path,
    };
    if path_and_query.parse::<http::uri::PathAndQuery>().is_err() {
        return Err(format!(
            "the rewritten path `{path_and_query}` is not a valid URI"
        ));
    }
    let mut headers = req.headers.clone();
    sluicegate_http1::hop::strip_hop_by_hop(&mut headers, false);
    headers.remove(header::EXPECT);
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(req.body.len()));
    headers.insert(MESSAGE_ID_HEADER.clone(), HeaderValue::from(id));
    headers.insert(ATTEMPT_HEADER.clone(), HeaderValue::from(attempt));
    if let Ok(v) = HeaderValue::from_str(queue) {
        headers.insert(QUEUE_HEADER.clone(), v);
    }
    if !req.request_id.is_empty() {
        if let Ok(v) = HeaderValue::from_str(&req.request_id) {
            headers.insert(sluicegate_core::context::X_REQUEST_ID.clone(), v);
        }
    }
    Ok(Outgoing {
        method: req.method.clone(),
        path_and_query,
        headers,
        body: req.body.clone(),
    })
}
