use std::{
    collections::{HashMap, HashSet, VecDeque},
    fmt,
    future::Future,
    panic::AssertUnwindSafe,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use tokio::{
    sync::{mpsc, oneshot, watch},
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
    capture::{EncodedBatch, StatsRecorder, UnexpectedStatus},
    error::{DeadlineElapsed, DropReason},
    event::{Encoder, MAX_EVENT_BYTES},
    BoxError, DeliveryError, Error, Event,
};

/// Most messages taken from the queue at once.
const RECV_CHUNK: usize = 256;

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
    encoder: Encoder,
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
        },
        current: Building::new(),
        ready: VecDeque::new(),
        in_flight: JoinSet::new(),
        in_flight_info: HashMap::new(),
        epochs: Epochs::new(),
        encoder,
        config,
    };
    Worker {
        future: Box::pin(run(service, queue, state, channels)),
    }
}

/// Counts and reports outcomes.
#[derive(Clone)]
struct Reporter {
    stats: StatsRecorder,
    on_error: Option<super::OnError>,
}

impl Reporter {
    fn failed(&self, uuids: Arc<[Uuid]>, source: Arc<BoxError>) {
        self.stats.failed(uuids.len() as u64);
        let error = DeliveryError::new(uuids, source);
        tracing::error!(error = %error, "posthog: batch not delivered");
        if let Some(on_error) = &self.on_error {
            on_error(&Error::Delivery(error));
        }
    }

    fn dropped(&self, uuid: Uuid, reason: DropReason) {
        match reason {
            DropReason::TooLarge { .. } => self.stats.too_large(1),
            DropReason::HookPanicked => self.stats.hook_panicked(1),
            DropReason::Serialize(_) => self.stats.invalid(1),
        };
        tracing::error!(%uuid, reason = %reason, "posthog: event dropped");
        if let Some(on_error) = &self.on_error {
            on_error(&Error::Dropped { uuid, reason });
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
        let capacity = self.buf.len().max(1024);
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

    /// Closes the open epoch with `waiter` and opens a new one.
    fn close(&mut self, waiter: oneshot::Sender<FlushReport>) {
        let epoch = self.current();
        epoch.waiters.push(waiter);
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
}

struct State {
    reporter: Reporter,
    current: Building,
    ready: VecDeque<Ready>,
    in_flight: JoinSet<()>,
    in_flight_info: HashMap<Id, InFlight>,
    epochs: Epochs,
    encoder: Encoder,
    config: BatchConfig,
}

/// A batch being sent, as the worker tracks it.
struct InFlight {
    epoch: u64,
    uuids: Arc<[Uuid]>,
    progress: Arc<Progress>,
}

/// What a sending task has settled so far. A 413 splits a batch, so part of it may be
/// delivered when the task is aborted (shutdown deadline) or panics.
#[derive(Default)]
struct Progress(std::sync::Mutex<Settled>);

#[derive(Default)]
struct Settled {
    delivered: usize,
    failed: usize,
    uuids: HashSet<Uuid>,
}

impl Progress {
    fn settle(&self, uuids: &[Uuid], delivered: bool) {
        let mut s = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if delivered {
            s.delivered += uuids.len();
        } else {
            s.failed += uuids.len();
        }
        s.uuids.extend(uuids.iter().copied());
    }

    /// Counts, after reporting every event not settled yet as failed with `source`.
    fn finish(
        &self,
        all: &[Uuid],
        source: Option<Arc<BoxError>>,
        reporter: &Reporter,
    ) -> (u64, u64) {
        let mut s = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(source) = source {
            let rest: Vec<Uuid> = all
                .iter()
                .copied()
                .filter(|u| !s.uuids.contains(u))
                .collect();
            if !rest.is_empty() {
                s.failed += rest.len();
                reporter.failed(rest.into(), source);
            }
        }
        (s.delivered as u64, s.failed as u64)
    }
}

impl State {
    fn close_current(&mut self) {
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

    /// Adds one event; returns `true` when it started a new batch (the timer should start).
    fn add(&mut self, event: Event, notify: Option<Notify>) -> bool {
        let uuid = event.uuid.unwrap_or_else(crate::uuid7::new_v7);
        let timestamp = event
            .timestamp
            .unwrap_or_else(crate::timestamp::Timestamp::now);
        let mut event = event;
        if event.minimal {
            // Minimized before the hook, so what the hook adds is kept.
            event.strip_to_minimal();
        }
        let event = match &self.config.before_send {
            None => event,
            Some(hook) => match std::panic::catch_unwind(AssertUnwindSafe(|| hook(event))) {
                Ok(Some(event)) => event,
                Ok(None) => {
                    self.reporter.stats.before_send(1);
                    self.epochs.current().report.dropped += 1;
                    if let Some(notify) = notify {
                        let _ = notify.send(Ok(uuid));
                    }
                    return false;
                }
                Err(_) => {
                    self.drop_event(uuid, DropReason::HookPanicked, notify);
                    return false;
                }
            },
        };
        let start = self.open_slot();
        self.encoder
            .encode(&mut self.current.buf, &event, uuid, timestamp);
        self.close_slot(start, uuid, notify)
    }

    /// Adds an event its producer already encoded; like [`add`](Self::add).
    fn add_encoded(&mut self, json: &[u8], uuid: Uuid) -> bool {
        let start = self.open_slot();
        self.current.buf.extend_from_slice(json);
        self.close_slot(start, uuid, None)
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
    /// drops it if too large, closes batches that are full. Returns `true` when the event
    /// started a new batch (the timer should start).
    fn close_slot(&mut self, start: usize, uuid: Uuid, notify: Option<Notify>) -> bool {
        let was_empty = self.current.is_empty();
        let event_start = if was_empty { start } else { start + 1 };
        let size = self.current.buf.len() - event_start;
        if size > MAX_EVENT_BYTES {
            self.current.buf.truncate(start);
            let reason = DropReason::TooLarge {
                size,
                limit: MAX_EVENT_BYTES,
            };
            self.drop_event(uuid, reason, notify);
            return false;
        }
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
            started = false;
        }
        started
    }

    /// Drops an accepted event: counted, reported, and its waiter (if any) told why.
    fn drop_event(&mut self, uuid: Uuid, reason: DropReason, notify: Option<Notify>) {
        self.reporter.dropped(uuid, reason.clone());
        self.epochs.current().report.dropped += 1;
        if let Some(notify) = notify {
            let error: BoxError = Box::new(Error::Dropped { uuid, reason });
            let _ = notify.send(Err(DeliveryError::new(Arc::new([uuid]), Arc::new(error))));
        }
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
            let uuids = ready.batch.uuids().clone();
            let reporter = self.reporter.clone();
            let progress = Arc::new(Progress::default());
            reporter.stats.batch_started();
            let handle = self.in_flight.spawn(send(
                service.clone(),
                ready.batch,
                ready.notify,
                reporter,
                progress.clone(),
            ));
            self.in_flight_info.insert(
                handle.id(),
                InFlight {
                    epoch: ready.epoch,
                    uuids,
                    progress,
                },
            );
        }
    }

    /// A sending task ended (`error` is set when it panicked or was aborted).
    fn finished(&mut self, id: Id, error: Option<Arc<BoxError>>) {
        let Some(info) = self.in_flight_info.remove(&id) else {
            return;
        };
        self.reporter.stats.batch_finished();
        let (delivered, failed) = info.progress.finish(&info.uuids, error, &self.reporter);
        if let Some(epoch) = self.epochs.get(info.epoch) {
            epoch.outstanding = epoch.outstanding.saturating_sub(1);
            epoch.report.delivered += delivered;
            epoch.report.failed += failed;
        }
        self.epochs.settle();
    }

    /// The shutdown deadline passed: nothing more is sent, everything not yet delivered is
    /// reported failed, and every waiting flush is answered.
    fn abandon(
        &mut self,
        queue: &mut Consumer,
        flushes: &mut mpsc::UnboundedReceiver<oneshot::Sender<FlushReport>>,
        deadline: std::time::Duration,
    ) {
        let source: Arc<BoxError> = Arc::new(Box::new(DeadlineElapsed(deadline)));
        self.in_flight.abort_all();
        let ids: Vec<Id> = self.in_flight_info.keys().copied().collect();
        for id in ids {
            self.finished(id, Some(source.clone()));
        }
        self.close_current();
        for ready in std::mem::take(&mut self.ready) {
            let count = ready.batch.len() as u64;
            self.reporter
                .failed(ready.batch.uuids().clone(), source.clone());
            if let Some(e) = self.epochs.get(ready.epoch) {
                e.outstanding = e.outstanding.saturating_sub(1);
                e.report.failed += count;
            }
        }
        queue.close();
        let mut leftover = Vec::new();
        let mut messages = Vec::new();
        while queue.take(&mut messages, RECV_CHUNK) != Taken::Some(0) {
            if messages.is_empty() {
                break;
            }
            leftover.extend(messages.drain(..).map(|message| message.uuid()));
        }
        flushes.close();
        while let Ok(reply) = flushes.try_recv() {
            self.epochs.current().waiters.push(reply);
        }
        if !leftover.is_empty() {
            self.epochs.current().report.failed += leftover.len() as u64;
            self.reporter.failed(leftover.into(), source);
        }
        // Close every epoch so each waiter gets its answer.
        for epoch in &mut self.epochs.list {
            epoch.closed = true;
            epoch.outstanding = 0;
        }
        self.epochs.list.push_back(Epoch::default());
        self.epochs.settle();
    }
}

/// The worker's side of flush and shutdown: flush requests, when it must end, and where it
/// publishes the final report.
pub(super) struct ShutdownChannels {
    pub(super) flushes: mpsc::UnboundedReceiver<oneshot::Sender<FlushReport>>,
    pub(super) deadline: watch::Receiver<Option<(Instant, std::time::Duration)>>,
    pub(super) report: watch::Sender<Option<FlushReport>>,
}

/// Takes what the queue holds into batches; `false` once the queue is finished (every
/// producer gone, or admission closed and everything taken).
fn intake(
    state: &mut State,
    queue: &mut Consumer,
    messages: &mut Vec<Message>,
    timer: &mut Timer,
) -> Intake {
    loop {
        if !state.ready.is_empty() {
            // Every sending slot is busy and a closed batch waits: leave the rest queued
            // (the queue's bound is the backpressure) and come back when a slot frees.
            return Intake::More;
        }
        match queue.take(messages, RECV_CHUNK) {
            Taken::Finished => return Intake::Finished,
            Taken::Some(0) => {
                if queue.closed_and_drained() {
                    return Intake::Finished;
                }
                if queue.signal.permits.is_closed() {
                    // Shutting down, and a producer is between reserving a slot and queueing.
                    return Intake::More;
                }
                if state.current.is_empty() && !queue.disarm() {
                    continue;
                }
                return Intake::Idle;
            }
            Taken::Some(_) => {
                for message in messages.drain(..) {
                    let started = match message {
                        Message::Event { event, notify } => state.add(event, notify),
                        Message::Encoded { json, uuid } => state.add_encoded(&json, uuid),
                    };
                    if started && !state.config.send_immediately {
                        timer.reset(state.config.flush_interval);
                    }
                    if state.current.is_empty() {
                        timer.armed = false;
                    }
                }
                if state.config.send_immediately {
                    state.close_current();
                }
            }
        }
    }
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

/// The open batch's timer.
struct Timer {
    sleep: std::pin::Pin<Box<tokio::time::Sleep>>,
    armed: bool,
}

impl Timer {
    fn reset(&mut self, after: std::time::Duration) {
        self.sleep.as_mut().reset(Instant::now() + after);
        self.armed = true;
    }
}

async fn run<S>(service: S, mut queue: Consumer, mut state: State, mut channels: ShutdownChannels)
where
    S: Service<EncodedBatch> + Clone + Send + 'static,
    S::Error: Into<BoxError> + Send,
    S::Future: Send + 'static,
    S::Response: Send + 'static,
{
    let mut flushes = channels.flushes;
    let signal = queue.signal.clone();
    let mut timer = Timer {
        sleep: Box::pin(sleep_until(Instant::now())),
        armed: false,
    };
    let mut messages = Vec::with_capacity(RECV_CHUNK);
    let mut receiving = true;
    let mut more = false;
    // Set by `Batch::shutdown` through a watch channel, not the queue, so a full queue or a
    // backlog of closed batches cannot delay it.
    let mut shutdown: Option<(Instant, std::time::Duration)> = None;
    let mut deadline_open = true;
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
                state.abandon(&mut queue, &mut flushes, budget);
                break;
            }
        }
        state.dispatch(&service);
        if receiving && more && state.ready.is_empty() {
            more = false;
            match intake(&mut state, &mut queue, &mut messages, &mut timer) {
                Intake::Idle => {}
                Intake::More => {
                    more = true;
                    if state.ready.is_empty() {
                        // A producer is finishing a push during shutdown: let it run.
                        tokio::task::yield_now().await;
                    }
                }
                Intake::Finished => {
                    receiving = false;
                    timer.armed = false;
                    state.close_current();
                    if let Some(tx) = final_tx.take() {
                        state.epochs.close(tx);
                    }
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
        tokio::select! {
            biased;
            changed = channels.deadline.changed(), if deadline_open && shutdown.is_none() => {
                match changed {
                    Ok(()) => {
                        if let Some(at) = *channels.deadline.borrow_and_update() {
                            shutdown = Some(at);
                            // Stop admission; what is already queued is still taken.
                            queue.close();
                            more = true;
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
            }
            () = sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => {
                // Handled at the top of the loop.
            }
            Some(reply) = flushes.recv(), if receiving && state.ready.is_empty() => {
                // Everything queued before the flush is taken first.
                let finished = intake(&mut state, &mut queue, &mut messages, &mut timer);
                if finished == Intake::More {
                    more = true;
                }
                state.close_current();
                timer.armed = false;
                state.epochs.close(reply);
                if finished == Intake::Finished {
                    receiving = false;
                    if let Some(tx) = final_tx.take() {
                        state.epochs.close(tx);
                    }
                }
            }
            () = signal.wait(), if receiving && state.ready.is_empty() => {
                more = true;
            }
            () = timer.sleep.as_mut(), if timer.armed => {
                timer.armed = false;
                more = true;
                // Take what arrived without waking us, then close the batch.
                if intake(&mut state, &mut queue, &mut messages, &mut timer) == Intake::Finished {
                    receiving = false;
                    if let Some(tx) = final_tx.take() {
                        state.close_current();
                        state.epochs.close(tx);
                    }
                }
                state.close_current();
                timer.armed = false;
            }
        }
    }
    state.epochs.settle();
    let report = final_rx.try_recv().unwrap_or_default();
    channels.report.send_replace(Some(report));
    tracing::debug!("posthog: batch worker stopped");
}

/// Sends one batch (splitting it on 413), recording what it settles in `progress`.
async fn send<S>(
    service: S,
    batch: EncodedBatch,
    mut notify: Vec<(Uuid, Notify)>,
    reporter: Reporter,
    progress: Arc<Progress>,
) where
    S: Service<EncodedBatch> + Clone + Send + 'static,
    S::Error: Into<BoxError> + Send,
    S::Future: Send + 'static,
{
    let mut todo = vec![batch];
    while let Some(batch) = todo.pop() {
        let result = service
            .clone()
            .oneshot(batch.clone())
            .await
            .map_err(Into::into);
        let outcome = match result {
            Ok(_) => Ok(()),
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
                Err(Arc::new(error))
            }
        };
        match &outcome {
            Ok(()) => {
                reporter.stats.delivered(batch.len() as u64);
            }
            Err(source) => reporter.failed(batch.uuids().clone(), source.clone()),
        }
        progress.settle(batch.uuids(), outcome.is_ok());
        if !notify.is_empty() {
            let uuids = batch.uuids();
            let mut i = 0;
            while i < notify.len() {
                if uuids.contains(&notify[i].0) {
                    let (uuid, tx) = notify.swap_remove(i);
                    let _ = tx.send(match &outcome {
                        Ok(()) => Ok(uuid),
                        Err(source) => Err(DeliveryError::new(Arc::new([uuid]), source.clone())),
                    });
                } else {
                    i += 1;
                }
            }
        }
    }
}
