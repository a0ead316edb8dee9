use std::{
    fmt,
    future::Future,
    panic::AssertUnwindSafe,
    pin::Pin,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    task::{ready, Context, Poll},
    time::Duration,
};

use pin_project_lite::pin_project;
use tokio::sync::{oneshot, watch, OwnedSemaphorePermit};
use tokio_util::sync::PollSemaphore;
use tower_service::Service;
use uuid::Uuid;

use super::{
    message::{Message, Notify},
    queue::{self, Producer, PushError},
    worker::{self, Reporter, ShutdownChannels, Worker},
    BatchConfig, BeforeSend, FlushReport,
};
use crate::{
    capture::{EncodedBatch, Stats},
    error::DropReason,
    BoxError, CaptureError, DeliveryError, ErrorReport, Event, Timestamp,
};

/// Middleware that queues events and sends them in batches: the producer side of a batching
/// pipeline. Cheap to clone; every clone feeds the same worker.
///
/// [`Batch`] is the handle producers use: [`Batch::try_capture`] never blocks (a full queue is
/// an error the caller sees), and as a `Service<Event>` it applies backpressure in `poll_ready`
/// and resolves when the event's batch was delivered. Admission (validation, stamping and the
/// `before_send` hook) runs in the caller. The [`Worker`] serializes events, closes a batch at
/// `flush_at` events, after `flush_interval`, at `max_batch_bytes`, or on [`Batch::flush`],
/// and sends it through the inner `Service<EncodedBatch>` (retry, timeout, transport). Up to
/// `max_in_flight` batches are sent at once, so one slow request never stalls the others.
///
/// Like tower's `Buffer`, [`Batch::new`] spawns the worker on the current tokio runtime and
/// [`Batch::pair`] hands it back to run yourself. The worker stops once every handle is gone
/// and the queue is delivered; dropping a handle never blocks.
///
/// # Example
///
/// ```
/// use std::time::Duration;
/// use posthog_tower::{capture::{BatchConfig, BatchLayer, EncodedBatch}, Event};
/// use tower::{Layer, service_fn};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// // The inner service gets whole batches; here it just counts them.
/// let sink = service_fn(|batch: EncodedBatch| async move {
///     Ok::<_, std::convert::Infallible>(batch.len())
/// });
/// let batch = BatchLayer::new(BatchConfig::new().flush_at(10)).layer(sink);
/// for i in 0..25 {
///     batch.try_capture(Event::new("tick", "worker-1").property("i", i)).unwrap();
/// }
/// let report = batch.flush().await;
/// assert_eq!(report.delivered, 25);
/// # }
/// ```
pub struct Batch {
    producer: Arc<Producer>,
    /// Reserves a queue slot in `poll_ready`.
    poll: PollSemaphore,
    permit: Option<OwnedSemaphorePermit>,
    shared: Arc<Pipeline>,
}

pub(crate) struct Pipeline {
    closed: AtomicBool,
    capacity: usize,
    /// Largest `Event::estimated_size` accepted: the limit (`max_event_bytes`, 900 KiB by
    /// default) less what the encoder adds.
    max_event_size: usize,
    /// `max_event_bytes`, the limit a refusal reports.
    event_limit: usize,
    /// Turns admitted events into the JSON the worker batches.
    encoder: crate::event::Encoder,
    before_send: Option<BeforeSend>,
    reporter: Reporter,
    /// Set once by `shutdown`: when the worker must give up, and the budget it was given.
    deadline: watch::Sender<Option<(tokio::time::Instant, Duration)>>,
    /// Published by the worker when it ends.
    report: watch::Receiver<Option<FlushReport>>,
}

/// What admission made of an event.
enum Admitted {
    /// To be queued, encoded.
    Queue(Vec<u8>, Uuid),
    /// Dropped by the `before_send` hook (already counted and reported): on purpose (`None`),
    /// or because the hook panicked or returned an invalid event.
    Dropped(Uuid, Option<DropReason>),
}

impl Batch {
    /// Wraps `service` (which receives whole batches) and spawns the worker on the current
    /// tokio runtime.
    ///
    /// # Panics
    ///
    /// Panics when called outside a tokio runtime, like `tokio::spawn`; use [`Batch::pair`]
    /// to run the worker yourself.
    pub fn new<S>(service: S, config: BatchConfig) -> Batch
    where
        S: Service<EncodedBatch> + Clone + Send + 'static,
        S::Error: Into<BoxError> + Send,
        S::Future: Send + 'static,
        S::Response: Send + 'static,
    {
        let (batch, worker) = Batch::pair(service, config);
        tokio::spawn(worker);
        batch
    }

    /// Like [`Batch::new`], but returns the worker instead of spawning it. The worker must be
    /// polled on a tokio runtime (it uses tokio's timers and spawns one task per batch sent).
    pub fn pair<S>(service: S, config: BatchConfig) -> (Batch, Worker)
    where
        S: Service<EncodedBatch> + Clone + Send + 'static,
        S::Error: Into<BoxError> + Send,
        S::Future: Send + 'static,
        S::Response: Send + 'static,
    {
        let (producer, consumer) = queue::queue(config.max_queue_size, config.send_immediately);
        let encoder = crate::event::Encoder::new(crate::event::EncodeDefaults {
            disable_geoip: config.disable_geoip,
            super_properties: config.super_properties.clone(),
            system: config.system.clone(),
        });
        let (deadline, deadline_rx) = watch::channel(None);
        let (report_tx, report) = watch::channel(None);
        let shared = Arc::new(Pipeline {
            closed: AtomicBool::new(false),
            capacity: config.max_queue_size,
            max_event_size: config.max_event_bytes.saturating_sub(encoder.added_len()),
            event_limit: config.max_event_bytes,
            encoder,
            before_send: config.before_send.clone(),
            reporter: Reporter {
                stats: config.stats.clone(),
                on_error: config.on_error.clone(),
                spool: config.spool.clone(),
            },
            deadline,
            report,
        });
        let channels = ShutdownChannels {
            deadline: deadline_rx,
            report: report_tx,
        };
        let worker = worker::spawnable(service, consumer, config, channels);
        let batch = Batch {
            poll: PollSemaphore::new(producer.signal.permits.clone()),
            permit: None,
            producer: Arc::new(producer),
            shared,
        };
        (batch, worker)
    }

    /// Queues `event` without waiting and returns its uuid.
    ///
    /// Validates the event (name, distinct id, properties, size), stamps the uuid (a new
    /// UUIDv7 unless set) and timestamp (now unless set), runs the `before_send` hook and
    /// validates what it returned, and queues it. A full queue is an error, never a silent
    /// drop: [`CaptureError::QueueFull`]. Every rejection is counted and reported to
    /// `on_error`. An event the hook drops returns `Ok`; when the hook panicked or returned an
    /// event `capture` would refuse, the drop is counted and reported to `on_error`
    /// ([`ErrorReport::Dropped`]).
    pub fn try_capture(&self, event: Event) -> Result<Uuid, CaptureError> {
        match self.admit(event)? {
            Admitted::Queue(json, uuid) => self.try_push(
                Message::Event {
                    json,
                    uuid,
                    notify: None,
                },
                uuid,
            ),
            Admitted::Dropped(uuid, _) => Ok(uuid),
        }
    }

    /// Queues an admitted event without waiting: counted as captured, or refused (counted and
    /// reported) when the queue is full or closed.
    fn try_push(&self, message: Message, uuid: Uuid) -> Result<Uuid, CaptureError> {
        match self.producer.try_push(message) {
            Ok(()) => {
                self.shared.reporter.stats.captured(1);
                Ok(uuid)
            }
            Err(PushError::Full) => Err(self.reject(CaptureError::QueueFull {
                capacity: self.shared.capacity,
            })),
            Err(PushError::Closed) => Err(self.reject(CaptureError::Closed)),
        }
    }

    /// The encoder the worker serializes events with, for a producer that writes an event's
    /// JSON itself and queues it with [`try_capture_encoded`](Self::try_capture_encoded).
    /// `None` when a `before_send` hook is configured: it must see every event as an [`Event`].
    pub(crate) fn encoder(&self) -> Option<&crate::event::Encoder> {
        self.shared
            .before_send
            .is_none()
            .then_some(&self.shared.encoder)
    }

    /// An empty buffer of at least `capacity` bytes for an event's JSON, recycled from the
    /// events the worker has copied into batches when one is at hand.
    pub(crate) fn event_buffer(&self, capacity: usize) -> Vec<u8> {
        self.producer.signal.buffers.take(capacity)
    }

    /// Queues an event already written as JSON with [`encoder`](Self::encoder) (one object,
    /// with its `uuid`), without waiting: [`try_capture`](Self::try_capture) for producers
    /// that skip building an [`Event`]. The caller guarantees a non-blank name and distinct id
    /// and valid JSON; the size is checked here.
    pub(crate) fn try_capture_encoded(
        &self,
        json: Vec<u8>,
        uuid: Uuid,
    ) -> Result<Uuid, CaptureError> {
        if self.shared.closed.load(Ordering::Relaxed) {
            return Err(self.reject(CaptureError::Closed));
        }
        if json.len() > self.shared.event_limit {
            return Err(self.reject(CaptureError::EventTooLarge {
                size: json.len(),
                limit: self.shared.event_limit,
            }));
        }
        self.try_push(
            Message::Event {
                json,
                uuid,
                notify: None,
            },
            uuid,
        )
    }

    /// Queues `event`, waiting for room in the queue instead of failing when it is full.
    /// Resolves once the event is queued (not delivered).
    pub async fn capture_wait(&self, event: Event) -> Result<Uuid, CaptureError> {
        let (json, uuid) = match self.admit(event)? {
            Admitted::Queue(json, uuid) => (json, uuid),
            Admitted::Dropped(uuid, _) => return Ok(uuid),
        };
        match self
            .producer
            .push_wait(Message::Event {
                json,
                uuid,
                notify: None,
            })
            .await
        {
            Ok(()) => {
                self.shared.reporter.stats.captured(1);
                Ok(uuid)
            }
            Err(_) => Err(self.reject(CaptureError::Closed)),
        }
    }

    /// Queues `event` (waiting for room) and resolves once its batch was delivered, or with
    /// [`CaptureError::Delivery`] once it definitively failed (or was dropped as too large,
    /// or by a panicking `before_send`). An event the `before_send` hook drops on purpose
    /// resolves `Ok`: it was handled as configured.
    pub async fn deliver(&self, event: Event) -> Result<Uuid, CaptureError> {
        let (json, uuid) = match self.admit(event)? {
            Admitted::Queue(json, uuid) => (json, uuid),
            Admitted::Dropped(uuid, reason) => return dropped_result(uuid, reason),
        };
        let (notify, rx) = oneshot::channel();
        if self
            .producer
            .push_wait(Message::Event {
                json,
                uuid,
                notify: Some(notify),
            })
            .await
            .is_err()
        {
            return Err(self.reject(CaptureError::Closed));
        }
        self.shared.reporter.stats.captured(1);
        wait_delivery(rx, uuid)
            .await
            .map_err(CaptureError::Delivery)
    }

    /// Sends everything queued before this call and resolves once all of it was delivered or
    /// definitively failed. Flushing an empty queue sends nothing.
    ///
    /// The request waits in the queue behind the events captured before it, in a slot of its
    /// own, so a full queue does not delay it and steady traffic after it cannot starve it.
    ///
    /// After [`shutdown`](Batch::shutdown) it returns an empty report at once.
    pub async fn flush(&self) -> FlushReport {
        if self.shared.closed.load(Ordering::Acquire) {
            return FlushReport::default();
        }
        let (reply, rx) = oneshot::channel();
        if !self.producer.push_flush(Message::Flush(reply)).await {
            return FlushReport::default();
        }
        rx.await.unwrap_or_default()
    }

    /// Stops accepting events, delivers everything queued, and stops the worker.
    ///
    /// Whatever is not delivered when `deadline` passes is reported failed (to `on_error`,
    /// and in the report and stats). Calling it again, or from several handles at once,
    /// waits for the same shutdown and returns the same report.
    pub async fn shutdown(&self, deadline: Duration) -> FlushReport {
        self.shared.closed.store(true, Ordering::Release);
        let at = tokio::time::Instant::now() + deadline;
        // The first shutdown's deadline wins.
        self.shared.deadline.send_if_modified(|current| {
            if current.is_some() {
                return false;
            }
            *current = Some((at, deadline));
            true
        });
        let mut report = self.shared.report.clone();
        let done = match report.wait_for(Option::is_some).await {
            Ok(done) => done.unwrap_or_default(),
            // The worker is gone without a report (its runtime stopped).
            Err(_) => FlushReport::default(),
        };
        done
    }

    /// `true` once [`shutdown`](Batch::shutdown) was called or the worker is gone.
    pub fn is_closed(&self) -> bool {
        self.shared.closed.load(Ordering::Acquire) || self.shared.deadline.is_closed()
    }

    /// The pipeline's counters, with the current queue depth.
    pub fn stats(&self) -> Stats {
        let mut stats = self.shared.reporter.stats.snapshot();
        stats.queue_depth = self.producer.depth() as u64;
        stats
    }

    /// Checks and stamps an event, runs the `before_send` hook, and encodes the event as the
    /// JSON it is sent as; on failure counts and reports it.
    fn admit(&self, mut event: Event) -> Result<Admitted, CaptureError> {
        if let Err(e) = self.validate(&event) {
            return Err(self.reject(e));
        }
        let (uuid, timestamp) = event.stamp();
        if event.inner.minimal {
            // Minimized before the hook, so what the hook adds is kept.
            event.strip_to_minimal();
        }
        let (event, hooked) = match &self.shared.before_send {
            None => (event, false),
            Some(hook) => match self.run_hook(hook, event, uuid, timestamp) {
                Ok(event) => (event, true),
                Err(reason) => return Ok(self.dropped(uuid, reason)),
            },
        };
        let json = self.shared.encoder.encode_owned(event, uuid, timestamp);
        if json.len() > self.shared.event_limit {
            let (size, limit) = (json.len(), self.shared.event_limit);
            if hooked {
                let reason = DropReason::TooLarge { size, limit };
                return Ok(self.dropped(uuid, Some(reason)));
            }
            return Err(self.reject(CaptureError::EventTooLarge { size, limit }));
        }
        Ok(Admitted::Queue(json, uuid))
    }

    /// Runs the hook on an admitted event and checks what it returns as `capture` checks its
    /// input: one bad event must not make PostHog refuse the batch it would travel in. `Err`
    /// with why it was dropped (`None`: on purpose).
    fn run_hook(
        &self,
        hook: &BeforeSend,
        event: Event,
        uuid: Uuid,
        timestamp: Timestamp,
    ) -> Result<Event, Option<DropReason>> {
        match std::panic::catch_unwind(AssertUnwindSafe(|| hook(event))) {
            Ok(Some(mut event)) => {
                // The uuid and timestamp stay those `capture` returned and stamped.
                event.inner.uuid = Some(uuid);
                event.inner.timestamp = Some(timestamp);
                match crate::event::validate(
                    &event,
                    self.shared.max_event_size,
                    self.shared.event_limit,
                ) {
                    Ok(()) => Ok(event),
                    Err(CaptureError::EventTooLarge { size, limit }) => {
                        Err(Some(DropReason::TooLarge { size, limit }))
                    }
                    Err(e) => Err(Some(DropReason::Invalid(e))),
                }
            }
            Ok(None) => Err(None),
            Err(_) => Err(Some(DropReason::HookPanicked)),
        }
    }

    /// Counts and reports an accepted event the hook dropped (`reason` is `None` when it
    /// meant to).
    fn dropped(&self, uuid: Uuid, reason: Option<DropReason>) -> Admitted {
        let reporter = &self.shared.reporter;
        reporter.stats.captured(1);
        self.producer
            .signal
            .dropped_at_capture
            .fetch_add(1, Ordering::Relaxed);
        match &reason {
            None => {
                reporter.stats.before_send(1);
            }
            Some(reason) => {
                let error = reporter.drop_event(uuid, reason.clone());
                reporter.tell(&error);
            }
        }
        Admitted::Dropped(uuid, reason)
    }

    fn validate(&self, event: &Event) -> Result<(), CaptureError> {
        if self.shared.closed.load(Ordering::Relaxed) {
            return Err(CaptureError::Closed);
        }
        crate::event::validate(event, self.shared.max_event_size, self.shared.event_limit)
    }

    /// Counts and reports a rejection made outside `try_capture` (by the client facade).
    pub(crate) fn report_rejection(&self, error: &CaptureError) {
        self.shared.reject(error);
    }

    fn reject(&self, error: CaptureError) -> CaptureError {
        self.shared.reject(&error);
        error
    }
}

impl Pipeline {
    pub(crate) fn reject(&self, error: &CaptureError) {
        let stats = &self.reporter.stats;
        let count = match error {
            CaptureError::QueueFull { .. } => stats.queue_full(1),
            CaptureError::EventTooLarge { .. } => stats.too_large(1),
            CaptureError::Closed => stats.closed(1),
            CaptureError::RateLimited { .. } => stats.rate_limited(1),
            CaptureError::Delivery(_) => return,
            _ => stats.invalid(1),
        };
        // The caller got the error and `on_error` hears of every one; the log only samples
        // (1st, 2nd, 4th, 8th, ...) so a burst of rejections cannot flood it, unless debugging.
        if crate::debug_on() {
            diag!(error = %error, rejected = count, reason = error.reason(), "posthog: event not captured");
        } else if count.is_power_of_two() {
            tracing::warn!(error = %error, rejected = count, reason = error.reason(), "posthog: event not captured");
        }
        self.reporter.tell(&ErrorReport::Rejected(error.clone()));
    }
}

/// What a waiting capture resolves with for an event the hook dropped: `Ok` when it meant
/// to, the reason otherwise.
fn dropped_result(uuid: Uuid, reason: Option<DropReason>) -> Result<Uuid, CaptureError> {
    match reason {
        None => Ok(uuid),
        Some(reason) => {
            let error: BoxError = Box::new(ErrorReport::Dropped { uuid, reason });
            Err(CaptureError::Delivery(DeliveryError::new(
                Arc::new([uuid]),
                Arc::new(error),
            )))
        }
    }
}

async fn wait_delivery(
    rx: oneshot::Receiver<Result<Uuid, crate::DeliveryError>>,
    uuid: Uuid,
) -> Result<Uuid, crate::DeliveryError> {
    match rx.await {
        Ok(result) => result,
        // The worker dropped the notifier without answering: it was aborted at the shutdown
        // deadline or its runtime stopped.
        Err(_) => Err(crate::DeliveryError::new(
            Arc::new([uuid]),
            Arc::new("the worker stopped before the event was delivered".into()),
        )),
    }
}

impl Clone for Batch {
    fn clone(&self) -> Self {
        // A fresh `PollSemaphore` and no permit: readiness reserved by `self` is not shared.
        Batch {
            producer: self.producer.clone(),
            poll: self.poll.clone(),
            permit: None,
            shared: self.shared.clone(),
        }
    }
}

impl fmt::Debug for Batch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Batch")
            .field("capacity", &self.shared.capacity)
            .field("closed", &self.is_closed())
            .finish_non_exhaustive()
    }
}

/// `Batch` as a tower service: `poll_ready` waits for room in the queue (real backpressure),
/// and the response future resolves with the event's uuid once its batch was delivered.
impl Service<Event> for Batch {
    type Response = Uuid;
    type Error = BoxError;
    type Future = BatchFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        if self.permit.is_none() {
            match ready!(self.poll.poll_acquire(cx)) {
                Some(permit) => self.permit = Some(permit),
                None => return Poll::Ready(Err(Box::new(CaptureError::Closed))),
            }
        }
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, event: Event) -> Self::Future {
        // Reserved in `poll_ready`; without it (a caller that skipped `poll_ready`) try now.
        let permit = match self.permit.take() {
            Some(permit) => permit,
            None => match self.producer.signal.permits.clone().try_acquire_owned() {
                Ok(permit) => permit,
                Err(tokio::sync::TryAcquireError::NoPermits) => {
                    return BatchFuture::done(Err(self.reject(CaptureError::QueueFull {
                        capacity: self.shared.capacity,
                    })))
                }
                Err(tokio::sync::TryAcquireError::Closed) => {
                    return BatchFuture::done(Err(self.reject(CaptureError::Closed)))
                }
            },
        };
        // On an early return, dropping the permit frees the slot.
        let (json, uuid) = match self.admit(event) {
            Ok(Admitted::Queue(json, uuid)) => (json, uuid),
            Ok(Admitted::Dropped(uuid, reason)) => {
                return BatchFuture::done(dropped_result(uuid, reason))
            }
            Err(e) => return BatchFuture::done(Err(e)),
        };
        let (notify, rx): (Notify, _) = oneshot::channel();
        self.producer.push_reserved(
            permit,
            Message::Event {
                json,
                uuid,
                notify: Some(notify),
            },
        );
        self.shared.reporter.stats.captured(1);
        BatchFuture {
            state: State::Waiting { rx, uuid },
        }
    }
}

pin_project! {
    /// Response future of [`Batch`] as a `Service<Event>`: resolves once the event's batch
    /// was delivered.
    pub struct BatchFuture {
        state: State,
    }
}

enum State {
    /// Decided at the call: refused, or dropped by the hook.
    Done(Option<Result<Uuid, CaptureError>>),
    Waiting {
        rx: oneshot::Receiver<Result<Uuid, crate::DeliveryError>>,
        uuid: Uuid,
    },
}

impl BatchFuture {
    fn done(result: Result<Uuid, CaptureError>) -> Self {
        BatchFuture {
            state: State::Done(Some(result)),
        }
    }
}

impl fmt::Debug for BatchFuture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BatchFuture").finish_non_exhaustive()
    }
}

impl Future for BatchFuture {
    type Output = Result<Uuid, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut self.project().state {
            State::Done(result) => match result.take() {
                Some(Ok(uuid)) => Poll::Ready(Ok(uuid)),
                Some(Err(e)) => Poll::Ready(Err(Box::new(e))),
                // Polled again after it completed.
                None => Poll::Ready(Err(Box::new(CaptureError::Closed))),
            },
            State::Waiting { rx, uuid } => match ready!(Pin::new(rx).poll(cx)) {
                Ok(Ok(uuid)) => Poll::Ready(Ok(uuid)),
                Ok(Err(e)) => Poll::Ready(Err(Box::new(e))),
                Err(_) => Poll::Ready(Err(Box::new(crate::DeliveryError::new(
                    Arc::new([*uuid]),
                    Arc::new("the worker stopped before the event was delivered".into()),
                )))),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::event::MAX_EVENT_BYTES;
    use crate::time::Timestamp;

    /// A batch whose inner service keeps every batch's JSON.
    fn recording() -> (Batch, Arc<Mutex<Vec<String>>>) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = seen.clone();
        let service = tower::service_fn(move |batch: EncodedBatch| {
            let sink = sink.clone();
            async move {
                let text = String::from_utf8(batch.events_json().to_vec()).expect("utf-8");
                sink.lock().expect("lock").push(text);
                Ok::<_, std::convert::Infallible>(())
            }
        });
        (Batch::new(service, BatchConfig::new()), seen)
    }

    #[tokio::test]
    async fn encoded_events_are_sent_as_written_and_checked_for_size() {
        let (batch, seen) = recording();
        let encoder = batch.encoder().expect("no before_send hook").clone();
        let uuid = crate::id::new_v7();
        let mut json = Vec::new();
        let mut writer = encoder.writer(&mut json, "$pageview", Some("u"), None, false);
        writer.property("$host", "a.example");
        writer.finish(Timestamp::UNIX_EPOCH, uuid);
        let text = String::from_utf8(json.clone()).expect("utf-8");
        assert_eq!(batch.try_capture_encoded(json, uuid).expect("queued"), uuid);

        let too_large = vec![b' '; MAX_EVENT_BYTES + 1];
        let err = batch
            .try_capture_encoded(too_large, crate::id::new_v7())
            .unwrap_err();
        assert!(
            matches!(err, CaptureError::EventTooLarge { size, .. } if size == MAX_EVENT_BYTES + 1)
        );

        let report = batch.flush().await;
        assert_eq!(report.delivered, 1);
        assert_eq!(seen.lock().expect("lock").as_slice(), [text]);
        let stats = batch.stats();
        assert_eq!((stats.captured, stats.dropped.too_large), (1, 1));

        batch.shutdown(Duration::from_secs(5)).await;
        let err = batch.try_capture_encoded(b"{}".to_vec(), uuid).unwrap_err();
        assert!(matches!(err, CaptureError::Closed));
    }

    #[tokio::test]
    async fn no_encoder_when_a_hook_must_see_every_event() {
        let service =
            tower::service_fn(|_: EncodedBatch| async { Ok::<_, std::convert::Infallible>(()) });
        let batch = Batch::new(service, BatchConfig::new().before_send(Some));
        assert!(batch.encoder().is_none());
    }
}
