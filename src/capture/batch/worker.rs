use std::{
    any::Any,
    collections::{HashMap, HashSet, VecDeque},
    fmt,
    future::Future,
    pin::Pin,
    sync::{atomic::Ordering, Arc, Mutex},
    task::{Context, Poll},
    time::Duration,
};

use tokio::{
    sync::{oneshot, watch},
    task::{Id, JoinSet},
    time::{sleep_until, Instant},
};
use tower::ServiceExt;
use tower_service::Service;
use uuid::Uuid;

use super::{
    message::{Message, Notify},
    queue::{Consumer, Taken},
    BatchConfig, FlushReport,
};
use crate::{
    capture::{
        policy::classify, spool::Spool, EncodedBatch, EventRefused, EventResults, StatsRecorder,
        V1Failure,
    },
    error::{DeadlineElapsed, DropReason},
    net::UnexpectedStatus,
    BoxError, DeliveryError, ErrorReport,
};

/// Most messages taken from the queue at once.
const RECV_CHUNK: usize = 256;

/// How often an armed worker looks at the queue: every millisecond under load, down to every
/// 100 ms when events are sparse.
const MIN_POLL: Duration = Duration::from_millis(1);
const MAX_POLL: Duration = Duration::from_millis(100);

/// How long the worker keeps looking at the queue after the last event before it waits to be
/// woken again (so steady traffic, however sparse, never wakes it from `capture`).
const IDLE_GRACE: Duration = Duration::from_secs(2);

/// The background half of a [`Batch`](super::Batch): a future that turns queued events into
/// batches and sends them. Returned by [`Batch::pair`](super::Batch::pair); spawn it on tokio.
///
/// It completes once every [`Batch`](super::Batch) handle is dropped (or the pipeline is shut
/// down) and everything queued was delivered or reported failed.
#[must_use = "the worker does nothing unless polled"]
pub struct Worker {
    future: Pin<Box<dyn Future<Output = ()> + Send>>,
}

impl fmt::Debug for Worker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Worker").finish_non_exhaustive()
    }
}

impl Worker {
    /// Runs `other` (the definitions poller) alongside the batch worker.
    pub(crate) fn join(self, other: impl Future<Output = ()> + Send + 'static) -> Worker {
        let batch = self.future;
        Worker {
            future: Box::pin(async move {
                tokio::join!(batch, other);
            }),
        }
    }

    /// A worker with nothing to do (for a disabled client).
    pub(crate) fn finished() -> Self {
        Worker {
            future: Box::pin(std::future::ready(())),
        }
    }
}

impl Future for Worker {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        self.future.as_mut().poll(cx)
    }
}

pub(super) fn spawnable<S>(
    service: S,
    queue: Consumer,
    config: BatchConfig,
    channels: ShutdownChannels,
) -> Worker
where
    S: Service<EncodedBatch> + Clone + Send + 'static,
    S::Error: Into<BoxError> + Send,
    S::Future: Send + 'static,
    S::Response: Send + 'static,
{
    let state = State {
        reporter: Reporter {
            stats: config.stats.clone(),
            on_error: config.on_error.clone(),
            spool: config.spool.clone(),
        },
        current: Building::new(),
        ready: VecDeque::new(),
        in_flight: JoinSet::new(),
        in_flight_info: HashMap::new(),
        epochs: Epochs::new(),
        config,
        batch_deadline: None,
        polling: None,
        taken_since_tick: 0,
    };
    Worker {
        future: Box::pin(run(service, queue, state, channels)),
    }
}

/// Counts and reports outcomes.
#[derive(Clone)]
pub(super) struct Reporter {
    pub(super) stats: StatsRecorder,
    pub(super) on_error: Option<super::OnError>,
    /// Where events go instead of failing in an outage, if the client has a spool.
    pub(super) spool: Option<Arc<Spool>>,
}

impl Reporter {
    /// Counts and logs a delivery failure, and returns what `on_error` must be told.
    fn fail(&self, uuids: Arc<[Uuid]>, source: Arc<BoxError>) -> ErrorReport {
        self.stats.failed(uuids.len() as u64);
        let error = DeliveryError::new(uuids, source);
        tracing::error!(error = %error, "posthog: batch not delivered");
        ErrorReport::Delivery(error)
    }

    /// Settles `events`, which failed with `source`: when `outage` (PostHog unreachable or a
    /// retryable answer, or the shutdown deadline) and the client has a spool, as many as fit
    /// are written to it and counted spooled; the rest are counted failed. Returns how many
    /// were spooled, and the report `on_error` must get for the rest.
    fn spill_or_fail(
        &self,
        events: &[(Uuid, &[u8])],
        source: Arc<BoxError>,
        outage: bool,
    ) -> (u64, Option<ErrorReport>) {
        let mut spooled = 0;
        if let (true, Some(spool)) = (outage, &self.spool) {
            spooled = spool.append(events.iter().copied()).unwrap_or(0);
            if spooled > 0 {
                self.stats.spooled(spooled as u64);
                tracing::warn!(
                    events = spooled,
                    error = %source,
                    "posthog: events kept in the spool; they are sent when PostHog answers again"
                );
            }
            let unwritten = events.len() - spooled;
            if unwritten > 0 {
                self.stats.spool_full(unwritten as u64);
                tracing::error!(
                    events = unwritten,
                    "posthog: the spool is full (or cannot be written); events reported failed"
                );
            }
        }
        let rest: Vec<Uuid> = events[spooled..].iter().map(|(uuid, _)| *uuid).collect();
        let report = (!rest.is_empty()).then(|| self.fail(rest.into(), source));
        (spooled as u64, report)
    }

    /// Counts, logs and reports events a capture v1 answer refused, one report per reason.
    fn refused(&self, refused: &[(Uuid, EventRefused)]) {
        let mut done = vec![false; refused.len()];
        for i in 0..refused.len() {
            if done[i] {
                continue;
            }
            let reason = &refused[i].1;
            let mut uuids = Vec::new();
            for j in i..refused.len() {
                if !done[j] && refused[j].1 == *reason {
                    done[j] = true;
                    uuids.push(refused[j].0);
                }
            }
            let n = uuids.len() as u64;
            match reason.result() {
                "drop" => self.stats.refused_drop(n),
                "limited" => self.stats.refused_limited(n),
                _ => self.stats.refused_other(n),
            };
            let error = self.fail(uuids.into(), Arc::new(Box::new(reason.clone())));
            self.tell(&error);
        }
    }

    /// Counts and logs an accepted event dropped before sending, and returns what `on_error`
    /// must be told.
    pub(super) fn drop_event(&self, uuid: Uuid, reason: DropReason) -> ErrorReport {
        match &reason {
            DropReason::TooLarge { .. } => self.stats.too_large(1),
            DropReason::HookPanicked => self.stats.hook_panicked(1),
            DropReason::Invalid(_) | DropReason::Serialize(_) => self.stats.invalid(1),
        };
        tracing::error!(%uuid, reason = %reason, "posthog: event dropped");
        ErrorReport::Dropped { uuid, reason }
    }

    /// Tells `on_error`, if there is one.
    pub(super) fn tell(&self, error: &ErrorReport) {
        if let Some(on_error) = &self.on_error {
            on_error(error);
        }
    }
}

/// The batch being filled.
struct Building {
    buf: Vec<u8>,
    ends: Vec<u32>,
    uuids: Vec<Uuid>,
    notify: Vec<(Uuid, Notify)>,
}

impl Building {
    fn new() -> Self {
        Building {
            buf: Vec::new(),
            ends: Vec::new(),
            uuids: Vec::new(),
            notify: Vec::new(),
        }
    }

    fn is_empty(&self) -> bool {
        self.uuids.is_empty()
    }

    fn take(&mut self) -> (EncodedBatch, Vec<(Uuid, Notify)>) {
        // The next batch is sized like this one, with an eighth more: events of one kind vary a
        // little in length, and a batch one byte over its capacity would copy itself whole.
        let capacity = (self.buf.len() + self.buf.len() / 8).max(1024);
        let count = self.uuids.len();
        let buf = std::mem::replace(&mut self.buf, Vec::with_capacity(capacity));
        let ends = std::mem::replace(&mut self.ends, Vec::with_capacity(count));
        let uuids = std::mem::replace(&mut self.uuids, Vec::with_capacity(count));
        let notify = std::mem::take(&mut self.notify);
        (EncodedBatch::from_parts(buf.into(), ends, uuids), notify)
    }
}

/// A closed batch waiting for a sending slot.
struct Ready {
    batch: EncodedBatch,
    notify: Vec<(Uuid, Notify)>,
    epoch: u64,
}

/// Events between two flushes. A flush resolves when its epoch and every earlier one have
/// nothing outstanding.
#[derive(Default)]
struct Epoch {
    outstanding: usize,
    report: FlushReport,
    waiters: Vec<oneshot::Sender<FlushReport>>,
    closed: bool,
}

struct Epochs {
    /// Id of `list[0]`.
    base: u64,
    list: VecDeque<Epoch>,
}

impl Epochs {
    fn new() -> Self {
        let mut list = VecDeque::new();
        list.push_back(Epoch::default());
        Epochs { base: 0, list }
    }

    fn current_id(&self) -> u64 {
        self.base + self.list.len() as u64 - 1
    }

    fn get(&mut self, id: u64) -> Option<&mut Epoch> {
        let index = id.checked_sub(self.base)? as usize;
        self.list.get_mut(index)
    }

    fn current(&mut self) -> &mut Epoch {
        let id = self.current_id();
        // The list always holds the open epoch.
        self.get(id)
            .unwrap_or_else(|| unreachable!("the open epoch is always present"))
    }

    /// Closes the open epoch with `waiter`, counting `dropped` events in it, and opens a new
    /// one.
    fn close(&mut self, waiter: Option<oneshot::Sender<FlushReport>>, dropped: u64) {
        let epoch = self.current();
        epoch.waiters.extend(waiter);
        epoch.report.dropped += dropped;
        epoch.closed = true;
        self.list.push_back(Epoch::default());
        self.settle();
    }

    /// Answers the flushes whose events are all settled, oldest first.
    fn settle(&mut self) {
        while self.list.len() > 1 {
            let front = &self.list[0];
            if !front.closed || front.outstanding > 0 {
                break;
            }
            if let Some(epoch) = self.list.pop_front() {
                self.base += 1;
                for waiter in epoch.waiters {
                    let _ = waiter.send(epoch.report);
                }
            }
        }
    }

    /// A batch of epoch `id` ended with these counts.
    fn batch_done(&mut self, id: u64, counts: Counts) {
        if let Some(epoch) = self.get(id) {
            epoch.outstanding = epoch.outstanding.saturating_sub(1);
            epoch.report.delivered += counts.delivered;
            epoch.report.failed += counts.failed;
            epoch.report.spooled += counts.spooled;
        }
    }
}

/// The worker's schedule for looking at the queue while it is armed.
struct Polling {
    period: Duration,
    next: Instant,
    last_tick: Instant,
    /// When an event was last taken.
    last_event: Instant,
}

struct State {
    reporter: Reporter,
    current: Building,
    ready: VecDeque<Ready>,
    in_flight: JoinSet<()>,
    in_flight_info: HashMap<Id, InFlight>,
    epochs: Epochs,
    config: BatchConfig,
    /// When the open batch must be closed (`flush_interval` after its first event).
    batch_deadline: Option<Instant>,
    /// Set while the worker is armed.
    polling: Option<Polling>,
    /// Events taken since the last poll, to pace the next one.
    taken_since_tick: usize,
}

/// How the events of one batch were settled.
#[derive(Debug, Default, Clone, Copy)]
struct Counts {
    delivered: u64,
    failed: u64,
    spooled: u64,
}

/// A batch being sent, as the worker tracks it.
struct InFlight {
    epoch: u64,
    batch: EncodedBatch,
    claims: Arc<Claims>,
}

/// Who settled which events of one batch: its sending task (delivered or failed, half by half
/// after a 413) or the worker (failed, when the shutdown deadline passes while the task still
/// runs). Each event is settled, counted and reported exactly once, by whoever claims it
/// first; the reporting itself happens after the claim, outside the lock.
#[derive(Default)]
struct Claims(Mutex<Claimed>);

#[derive(Default)]
struct Claimed {
    /// The worker gave up on the batch: nothing more can be claimed.
    abandoned: bool,
    counts: Counts,
    /// The task claimed the whole batch at once (it was not split).
    whole: bool,
    /// The uuids claimed part by part, once the batch was split.
    parts: HashSet<Uuid>,
}

impl Claims {
    /// Claims `uuids` (all of the batch when `whole`) for the sending task, settling them
    /// with `settle` (which may write to the spool) while the claim is held; `false` when the
    /// worker abandoned the batch first (it reported them).
    fn claim(&self, uuids: &[Uuid], whole: bool, settle: impl FnOnce() -> Counts) -> bool {
        let mut c = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if c.abandoned {
            return false;
        }
        if whole {
            c.whole = true;
        } else {
            c.parts.extend(uuids.iter().copied());
        }
        let counts = settle();
        c.counts.delivered += counts.delivered;
        c.counts.failed += counts.failed;
        c.counts.spooled += counts.spooled;
        true
    }

    /// Abandons the batch: returns what its task settled and the uuids nobody claimed, which
    /// the caller settles.
    fn abandon(&self, all: &[Uuid]) -> (Counts, Vec<Uuid>) {
        let mut c = self.0.lock().unwrap_or_else(|p| p.into_inner());
        c.abandoned = true;
        let rest: Vec<Uuid> = if c.whole {
            Vec::new()
        } else if c.parts.is_empty() {
            all.to_vec()
        } else {
            all.iter()
                .copied()
                .filter(|u| !c.parts.contains(u))
                .collect()
        };
        (c.counts, rest)
    }

    fn counts(&self) -> Counts {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).counts
    }
}

impl State {
    fn close_current(&mut self) {
        self.batch_deadline = None;
        if self.current.is_empty() {
            return;
        }
        let (batch, notify) = self.current.take();
        let epoch = self.epochs.current_id();
        self.epochs.current().outstanding += 1;
        self.ready.push_back(Ready {
            batch,
            notify,
            epoch,
        });
    }

    /// Adds one event, encoded by `capture`, to the open batch.
    fn add(&mut self, json: &[u8], uuid: Uuid, notify: Option<Notify>) {
        let start = self.open_slot();
        self.current.buf.extend_from_slice(json);
        self.close_slot(start, uuid, notify);
    }

    /// Makes room for one more event in the open batch: returns where the batch ended (the
    /// event's JSON goes after the separator, if any).
    fn open_slot(&mut self) -> usize {
        let start = self.current.buf.len();
        if !self.current.is_empty() {
            self.current.buf.push(b',');
        }
        start
    }

    /// Accounts for the event just written after `start` (see [`open_slot`](Self::open_slot)):
    /// closes batches that are full, starts the batch's timer. (Its size was checked when it
    /// was captured.)
    fn close_slot(&mut self, start: usize, uuid: Uuid, notify: Option<Notify>) {
        let was_empty = self.current.is_empty();
        let event_start = if was_empty { start } else { start + 1 };
        let mut started = was_empty;
        if !was_empty && self.current.buf.len() > self.config.max_batch_bytes {
            // This event would push the batch over the byte limit: close the batch without
            // it and start the next one with it.
            let tail = self.current.buf.split_off(event_start);
            self.current.buf.truncate(start);
            self.close_current();
            self.current.buf = tail;
            started = true;
        }
        self.current.ends.push(self.current.buf.len() as u32);
        self.current.uuids.push(uuid);
        if let Some(notify) = notify {
            self.current.notify.push((uuid, notify));
        }
        if self.current.uuids.len() >= self.config.flush_at
            || self.current.buf.len() >= self.config.max_batch_bytes
        {
            self.close_current();
        } else if started && !self.config.send_immediately {
            self.batch_deadline = Some(Instant::now() + self.config.flush_interval);
        }
    }

    /// Closes the open epoch at a flush request, with the events the hook dropped at capture
    /// since the last one.
    fn close_epoch(&mut self, queue: &Consumer, waiter: Option<oneshot::Sender<FlushReport>>) {
        self.close_current();
        let dropped = queue.signal.dropped_at_capture.swap(0, Ordering::Relaxed);
        self.epochs.close(waiter, dropped);
    }

    fn dispatch<S>(&mut self, service: &S)
    where
        S: Service<EncodedBatch> + Clone + Send + 'static,
        S::Error: Into<BoxError> + Send,
        S::Future: Send + 'static,
        S::Response: Send + 'static,
    {
        while self.in_flight.len() < self.config.max_in_flight {
            let Some(ready) = self.ready.pop_front() else {
                break;
            };
            let batch = ready.batch.clone();
            let claims = Arc::new(Claims::default());
            self.reporter.stats.batch_started();
            let handle = self.in_flight.spawn(send(
                service.clone(),
                ready.batch,
                ready.notify,
                self.reporter.clone(),
                claims.clone(),
            ));
            self.in_flight_info.insert(
                handle.id(),
                InFlight {
                    epoch: ready.epoch,
                    batch,
                    claims,
                },
            );
        }
    }

    /// A sending task ended; `error` is set when it panicked, and then whatever it had not
    /// settled is reported failed with it.
    fn finished(&mut self, id: Id, error: Option<Arc<BoxError>>) {
        let Some(info) = self.in_flight_info.remove(&id) else {
            return;
        };
        self.reporter.stats.batch_finished();
        let counts = match error {
            None => info.claims.counts(),
            Some(source) => {
                let (mut counts, rest) = info.claims.abandon(info.batch.uuids());
                if !rest.is_empty() {
                    counts.failed += rest.len() as u64;
                    let error = self.reporter.fail(rest.into(), source);
                    self.reporter.tell(&error);
                }
                counts
            }
        };
        self.epochs.batch_done(info.epoch, counts);
        self.epochs.settle();
    }

    /// The shutdown deadline passed: nothing more is sent, everything not yet settled is
    /// spooled (with a spool, as far as it fits) or counted failed, and every waiting flush
    /// is answered. Returns what `on_error` must be
    /// told, for after the report is published: a slow callback must not stretch the
    /// deadline.
    fn abandon(&mut self, queue: &mut Consumer, deadline: Duration) -> Vec<ErrorReport> {
        let source: Arc<BoxError> = Arc::new(Box::new(DeadlineElapsed(deadline)));
        let mut reports = Vec::new();
        // A task in the middle of a poll on another thread finishes that poll; whatever it
        // settles after this is refused by its claims.
        self.in_flight.abort_all();
        for (_, info) in std::mem::take(&mut self.in_flight_info) {
            self.reporter.stats.batch_finished();
            let (mut counts, rest) = info.claims.abandon(info.batch.uuids());
            if !rest.is_empty() {
                let rest: HashSet<Uuid> = rest.into_iter().collect();
                let events: Vec<(Uuid, &[u8])> = info
                    .batch
                    .events()
                    .filter(|(uuid, _)| rest.contains(uuid))
                    .collect();
                let (spooled, report) = self.reporter.spill_or_fail(&events, source.clone(), true);
                counts.spooled += spooled;
                counts.failed += events.len() as u64 - spooled;
                reports.extend(report);
            }
            self.epochs.batch_done(info.epoch, counts);
        }
        self.close_current();
        for ready in std::mem::take(&mut self.ready) {
            let events: Vec<(Uuid, &[u8])> = ready.batch.events().collect();
            let (spooled, report) = self.reporter.spill_or_fail(&events, source.clone(), true);
            reports.extend(report);
            let counts = Counts {
                delivered: 0,
                failed: events.len() as u64 - spooled,
                spooled,
            };
            self.epochs.batch_done(ready.epoch, counts);
        }
        queue.close();
        let mut leftover = Vec::new();
        let mut messages = Vec::new();
        while let Taken::Some(n) = queue.take(&mut messages, RECV_CHUNK) {
            if n == 0 {
                break;
            }
            for message in messages.drain(..) {
                match message {
                    Message::Flush(reply) => self.epochs.current().waiters.push(reply),
                    Message::Event { uuid, json, .. } => leftover.push((uuid, json)),
                }
            }
        }
        if !leftover.is_empty() {
            let events: Vec<(Uuid, &[u8])> = leftover
                .iter()
                .map(|(uuid, json)| (*uuid, json.as_slice()))
                .collect();
            let (spooled, report) = self.reporter.spill_or_fail(&events, source, true);
            reports.extend(report);
            let report = &mut self.epochs.current().report;
            report.failed += events.len() as u64 - spooled;
            report.spooled += spooled;
        }
        let dropped = queue.signal.dropped_at_capture.swap(0, Ordering::Relaxed);
        self.epochs.current().report.dropped += dropped;
        // Close every epoch so each waiter gets its answer.
        for epoch in &mut self.epochs.list {
            epoch.closed = true;
            epoch.outstanding = 0;
        }
        self.epochs.list.push_back(Epoch::default());
        self.epochs.settle();
        reports
    }

    /// Paces the next look at the queue from how many events the last interval brought:
    /// about half a batch per look, between [`MIN_POLL`] and [`MAX_POLL`].
    fn schedule_poll(&mut self, now: Instant) {
        let taken = std::mem::take(&mut self.taken_since_tick);
        let flush_at = u32::try_from(self.config.flush_at).unwrap_or(u32::MAX);
        let polling = self.polling.get_or_insert(Polling {
            period: MIN_POLL,
            next: now,
            last_tick: now,
            last_event: now,
        });
        let elapsed = now.saturating_duration_since(polling.last_tick);
        polling.period = if taken == 0 {
            (polling.period * 2).min(MAX_POLL)
        } else {
            polling.last_event = now;
            (elapsed * flush_at / (2 * taken as u32).max(1)).clamp(MIN_POLL, MAX_POLL)
        };
        polling.last_tick = now;
        polling.next = now + polling.period;
    }

    /// When the worker must next wake on its own: the open batch's deadline or the next poll.
    fn next_tick(&self) -> Option<Instant> {
        let poll = self.polling.as_ref().map(|p| p.next);
        match (self.batch_deadline, poll) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

/// The worker's side of shutdown: when it must end, and where it publishes the final report.
pub(super) struct ShutdownChannels {
    pub(super) deadline: watch::Receiver<Option<(Instant, Duration)>>,
    pub(super) report: watch::Sender<Option<FlushReport>>,
}

#[derive(Debug, PartialEq, Eq)]
enum Intake {
    /// The queue is empty for now.
    Idle,
    /// There is more to take once a sending slot frees (or a producer finishes queueing).
    More,
    /// Nothing will ever arrive again.
    Finished,
}

/// Takes what the queue holds into batches, in order, answering flush requests on the way.
/// The worker's room for a chunk of the queue, kept between chunks.
struct Chunk {
    messages: Vec<Message>,
    /// The events' buffers once copied into their batch, handed back a chunk at a time.
    spent: Vec<Vec<u8>>,
}

impl Chunk {
    fn new() -> Self {
        Chunk {
            messages: Vec::with_capacity(RECV_CHUNK),
            spent: Vec::with_capacity(RECV_CHUNK),
        }
    }
}

fn intake(state: &mut State, queue: &mut Consumer, chunk: &mut Chunk) -> Intake {
    loop {
        if !state.ready.is_empty() {
            // Every sending slot is busy and a closed batch waits: leave the rest queued
            // (the queue's bound is the backpressure) and come back when a slot frees.
            return Intake::More;
        }
        match queue.take(&mut chunk.messages, RECV_CHUNK) {
            Taken::Finished => return Intake::Finished,
            Taken::Some(0) => {
                if queue.closed_and_drained() {
                    return Intake::Finished;
                }
                if queue.signal.permits.is_closed() {
                    // Shutting down, and a producer is between reserving a slot and queueing.
                    return Intake::More;
                }
                return Intake::Idle;
            }
            Taken::Some(_) => {
                for message in chunk.messages.drain(..) {
                    match message {
                        Message::Event { json, uuid, notify } => {
                            state.taken_since_tick += 1;
                            state.add(&json, uuid, notify);
                            chunk.spent.push(json);
                        }
                        Message::Flush(reply) => state.close_epoch(queue, Some(reply)),
                    }
                }
                queue.signal.buffers.give_back(&mut chunk.spent);
                if state.config.send_immediately {
                    state.close_current();
                }
            }
        }
    }
}

async fn run<S>(service: S, mut queue: Consumer, mut state: State, mut channels: ShutdownChannels)
where
    S: Service<EncodedBatch> + Clone + Send + 'static,
    S::Error: Into<BoxError> + Send,
    S::Future: Send + 'static,
    S::Response: Send + 'static,
{
    let signal = queue.signal.clone();
    // With a spool: the task that sends what it holds once PostHog answers.
    #[cfg(feature = "spool")]
    let replay = state.reporter.spool.clone().map(|spool| {
        let sizes = super::replay::Sizes {
            events: state.config.flush_at,
            bytes: state.config.max_batch_bytes,
            in_flight: state.config.max_in_flight,
        };
        super::replay::Replay::start(service.clone(), spool, state.reporter.clone(), sizes)
    });
    let mut chunk = Chunk::new();
    let mut receiving = true;
    // Look at the queue on the next turn of the loop.
    let mut take = false;
    // Set by `Batch::shutdown` through a watch channel, not the queue, so a full queue or a
    // backlog of closed batches cannot delay it.
    let mut shutdown: Option<(Instant, Duration)> = None;
    let mut deadline_open = true;
    // What `on_error` must still be told once the report is out (the deadline passed).
    let mut late_reports = Vec::new();
    // Answered with the events settled since the last flush, when the worker ends.
    let (final_tx, mut final_rx) = oneshot::channel();
    let mut final_tx = Some(final_tx);

    loop {
        if let Some((at, budget)) = shutdown {
            if Instant::now() >= at {
                // The deadline passed: send nothing more, report what is left.
                if let Some(tx) = final_tx.take() {
                    state.epochs.current().waiters.push(tx);
                }
                late_reports = state.abandon(&mut queue, budget);
                break;
            }
        }
        state.dispatch(&service);
        if receiving && take && state.ready.is_empty() {
            take = false;
            match intake(&mut state, &mut queue, &mut chunk) {
                Intake::Idle => {
                    let now = Instant::now();
                    let quiet = state.polling.as_ref().map_or(true, |p| {
                        now.saturating_duration_since(p.last_event) >= IDLE_GRACE
                    });
                    if quiet && state.current.is_empty() {
                        if queue.disarm() {
                            state.polling = None;
                        } else {
                            // An event slipped in: take it.
                            take = true;
                        }
                    }
                }
                Intake::More => {
                    take = true;
                    if state.ready.is_empty() {
                        // A producer is finishing a push during shutdown: let it run.
                        tokio::task::yield_now().await;
                    }
                }
                Intake::Finished => {
                    receiving = false;
                    state.polling = None;
                    state.close_epoch(&queue, final_tx.take());
                }
            }
            continue;
        }
        if !receiving
            && state.current.is_empty()
            && state.ready.is_empty()
            && state.in_flight.is_empty()
        {
            break;
        }
        let deadline = shutdown.map(|(at, _)| at);
        let tick = if receiving { state.next_tick() } else { None };
        tokio::select! {
            biased;
            changed = channels.deadline.changed(), if deadline_open && shutdown.is_none() => {
                match changed {
                    Ok(()) => {
                        if let Some(at) = *channels.deadline.borrow_and_update() {
                            shutdown = Some(at);
                            // Stop admission; what is already queued is still taken.
                            queue.close();
                            take = true;
                        }
                    }
                    // Every handle is gone: the queue finishing ends the worker.
                    Err(_) => deadline_open = false,
                }
            }
            Some(done) = state.in_flight.join_next_with_id(), if !state.in_flight.is_empty() => {
                match done {
                    Ok((id, ())) => state.finished(id, None),
                    Err(e) => {
                        let id = e.id();
                        let source: Arc<BoxError> =
                            Arc::new(format!("sending task failed: {e}").into());
                        state.finished(id, Some(source));
                    }
                }
                // A slot freed: take what waits behind the backlog.
                take = true;
            }
            () = sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => {
                // Handled at the top of the loop.
            }
            () = signal.wait(), if receiving && state.ready.is_empty() => {
                // Woken by a producer: the first event after a quiet spell, a half-full queue,
                // a flush request, or the last handle gone.
                queue.arm();
                if state.polling.is_none() {
                    state.schedule_poll(Instant::now());
                }
                take = true;
            }
            () = sleep_until(tick.unwrap_or_else(Instant::now)), if tick.is_some() => {
                let now = Instant::now();
                if state.ready.is_empty() {
                    // Take what is queued first, so the closing batch holds all it can.
                    if intake(&mut state, &mut queue, &mut chunk) == Intake::Finished {
                        receiving = false;
                        state.polling = None;
                        state.close_epoch(&queue, final_tx.take());
                    }
                }
                if state.batch_deadline.is_some_and(|at| at <= now) {
                    state.close_current();
                }
                if state.polling.as_ref().is_some_and(|p| p.next <= now) {
                    state.schedule_poll(now);
                    take = true;
                }
            }
        }
    }
    state.epochs.settle();
    #[cfg(feature = "spool")]
    if let Some(replay) = replay {
        // Finish sending the spool while PostHog answers, within the shutdown deadline.
        replay.finish(shutdown.map(|(at, _)| at)).await;
    }
    if let Some(spool) = &state.reporter.spool {
        // Nothing is spooled or replayed by this client any more: free the directory.
        spool.close();
    }
    let report = final_rx.try_recv().unwrap_or_default();
    channels.report.send_replace(Some(report));
    for error in &late_reports {
        state.reporter.tell(error);
    }
    tracing::debug!("posthog: batch worker stopped");
}

/// What became of the events of one request (after its retries).
struct Settled {
    /// Refused one by one by a capture v1 answer (events of the batch only).
    refused: Vec<(Uuid, EventRefused)>,
    /// Failed as a whole, with why.
    failed: Option<(Arc<[Uuid]>, Arc<BoxError>)>,
}

impl Settled {
    fn failed_count(&self) -> usize {
        self.refused.len() + self.failed.as_ref().map_or(0, |(uuids, _)| uuids.len())
    }

    /// How `uuid` ended: delivered, or the error to answer its waiter with.
    fn outcome(&self, uuid: &Uuid) -> Result<(), Arc<BoxError>> {
        if let Some((uuids, source)) = &self.failed {
            if uuids.contains(uuid) {
                return Err(source.clone());
            }
        }
        match self.refused.iter().find(|(u, _)| u == uuid) {
            Some((_, refused)) => Err(Arc::new(Box::new(refused.clone()))),
            None => Ok(()),
        }
    }
}

/// The per-event results in a response, when the service below answers capture v1's
/// [`EventResults`] (any other response means "all delivered").
pub(super) fn refusals<R: 'static>(response: R) -> Vec<(Uuid, EventRefused)> {
    let mut response = Some(response);
    (&mut response as &mut dyn Any)
        .downcast_mut::<Option<EventResults>>()
        .and_then(Option::take)
        .map(|results| results.refused)
        .unwrap_or_default()
}

/// Keeps the refusals of events of `batch` (a server may name others), each once.
pub(super) fn of_batch(
    mut refused: Vec<(Uuid, EventRefused)>,
    batch: &EncodedBatch,
) -> Vec<(Uuid, EventRefused)> {
    if refused.is_empty() {
        return refused;
    }
    let mut members: HashSet<Uuid> = batch.uuids().iter().copied().collect();
    refused.retain(|(uuid, _)| members.remove(uuid));
    refused
}

/// Sends one batch (splitting it on a v0 413), settling each part through `claims`.
async fn send<S>(
    service: S,
    batch: EncodedBatch,
    mut notify: Vec<(Uuid, Notify)>,
    reporter: Reporter,
    claims: Arc<Claims>,
) where
    S: Service<EncodedBatch> + Clone + Send + 'static,
    S::Error: Into<BoxError> + Send,
    S::Future: Send + 'static,
    S::Response: Send + 'static,
{
    let whole = batch.len();
    let mut todo = vec![batch];
    while let Some(batch) = todo.pop() {
        let result = service
            .clone()
            .oneshot(batch.clone())
            .await
            .map_err(Into::into);
        let settled = match result {
            Ok(response) => Settled {
                refused: of_batch(refusals(response), &batch),
                failed: None,
            },
            Err(error) => match error.downcast::<V1Failure>() {
                Ok(failure) => {
                    let V1Failure {
                        refused,
                        failed,
                        source,
                    } = *failure;
                    Settled {
                        refused: of_batch(refused, &batch),
                        failed: Some((failed, Arc::new(source))),
                    }
                }
                Err(error) => {
                    let too_large = error
                        .downcast_ref::<UnexpectedStatus>()
                        .is_some_and(|s| s.status() == http::StatusCode::PAYLOAD_TOO_LARGE);
                    if too_large {
                        if let Some((left, right)) = batch.split() {
                            tracing::warn!(
                                events = batch.len(),
                                "posthog: 413, sending the batch in two halves"
                            );
                            todo.push(right);
                            todo.push(left);
                            continue;
                        }
                    }
                    Settled {
                        refused: Vec::new(),
                        failed: Some((batch.uuids().clone(), Arc::new(error))),
                    }
                }
            },
        };
        let failed = settled.failed_count().min(batch.len());
        let delivered = batch.len() - failed;
        // PostHog unreachable or answering a retryable failure (after the retries): with a
        // spool, the failed events go to disk instead. Definitive refusals stay failed.
        let outage = reporter.spool.is_some()
            && settled
                .failed
                .as_ref()
                .is_some_and(|(_, source)| classify(source).is_some());
        if failed > 0 && reporter.on_error.is_some() {
            // `on_error`, told below, may block this thread for as long as it likes, and a
            // task woken on this thread waits in its LIFO slot, where no other thread can
            // steal it: let it (the worker, at a shutdown deadline) run first. Before the
            // claim, so that a task cancelled here (its runtime shutting down) leaves its
            // events to the worker, which reports them.
            tokio::task::yield_now().await;
        }
        let mut unspooled = None;
        // The per-event refusals to report: with a spool, those left at `retry` after the
        // last attempt (PostHog asking for the event later) are spooled instead.
        let mut to_refuse = settled.refused.clone();
        let claimed = claims.claim(batch.uuids(), batch.len() == whole, || {
            let mut counts = Counts {
                delivered: delivered as u64,
                failed: failed as u64,
                spooled: 0,
            };
            if let (true, Some((uuids, source))) = (outage, &settled.failed) {
                // Written while the claim is held, so the worker abandoning the batch at the
                // deadline cannot settle these events too.
                let events: Vec<(Uuid, &[u8])> = if uuids.len() == batch.len() {
                    batch.events().collect()
                } else {
                    let failed: HashSet<&Uuid> = uuids.iter().collect();
                    batch
                        .events()
                        .filter(|(uuid, _)| failed.contains(uuid))
                        .collect()
                };
                let (spooled, report) = reporter.spill_or_fail(&events, source.clone(), true);
                counts.spooled = spooled;
                counts.failed -= spooled;
                unspooled = Some(report);
            }
            if let Some(spool) = &reporter.spool {
                let retry: HashSet<Uuid> = to_refuse
                    .iter()
                    .filter(|(_, refused)| refused.result() == "retry")
                    .map(|(uuid, _)| *uuid)
                    .collect();
                if !retry.is_empty() {
                    let events: Vec<(Uuid, &[u8])> = batch
                        .events()
                        .filter(|(uuid, _)| retry.contains(uuid))
                        .collect();
                    let n = spool.append(events.iter().copied()).unwrap_or(0);
                    if n > 0 {
                        reporter.stats.spooled(n as u64);
                        tracing::warn!(
                            events = n,
                            "posthog: events PostHog asked to retry kept in the spool"
                        );
                    }
                    if events.len() > n {
                        reporter.stats.spool_full((events.len() - n) as u64);
                    }
                    let spooled: HashSet<Uuid> = events[..n].iter().map(|(u, _)| *u).collect();
                    to_refuse.retain(|(uuid, _)| !spooled.contains(uuid));
                    counts.failed -= n as u64;
                    counts.spooled += n as u64;
                }
            }
            counts
        });
        if !claimed {
            // The shutdown deadline passed and the worker settled the rest.
            return;
        }
        if delivered > 0 {
            reporter.stats.delivered(delivered as u64);
            if let Some(spool) = &reporter.spool {
                // PostHog answers: send what the spool holds.
                spool.wake_if_pending();
            }
        }
        reporter.refused(&to_refuse);
        match unspooled {
            // Spooled, or counted failed (and reported) as far as the spool had no room.
            Some(report) => {
                if let Some(error) = report {
                    reporter.tell(&error);
                }
            }
            None => {
                if let Some((uuids, source)) = &settled.failed {
                    let error = reporter.fail(uuids.clone(), source.clone());
                    reporter.tell(&error);
                }
            }
        }
        if !notify.is_empty() {
            let uuids = batch.uuids();
            let mut i = 0;
            while i < notify.len() {
                if uuids.contains(&notify[i].0) {
                    let (uuid, tx) = notify.swap_remove(i);
                    let _ = tx.send(match settled.outcome(&uuid) {
                        Ok(()) => Ok(uuid),
                        Err(source) => Err(DeliveryError::new(Arc::new([uuid]), source)),
                    });
                } else {
                    i += 1;
                }
            }
        }
    }
}
