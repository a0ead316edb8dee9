use std::{fmt, sync::Arc, time::Duration};

use serde_json::{Map, Value};

use crate::{capture::StatsRecorder, ErrorReport, Event};

/// A hook that sees every event before it is sent and may change it, or drop it by returning
/// `None`. It runs in `capture`, on the caller's thread, so keep it fast. What it returns is
/// validated like `capture`'s input; an invalid event is dropped and reported.
pub type BeforeSend = Arc<dyn Fn(Event) -> Option<Event> + Send + Sync>;

/// A callback told about every event that is refused, dropped or not delivered. It runs on the
/// thread where that happened (the caller of `capture` for refusals and hook drops, the task
/// sending a batch for delivery failures), so keep it fast. Events abandoned at a shutdown
/// deadline are reported after the shutdown report is out, so the callback may still run
/// shortly after `shutdown` returned.
pub type OnError = Arc<dyn Fn(&ErrorReport) + Send + Sync>;

/// Settings of a [`Batch`](super::Batch). Defaults follow posthog-python.
///
/// | setting | default |
/// |---|---|
/// | `flush_at` | 100 events |
/// | `flush_interval` | 5 s |
/// | `max_queue_size` | 10 000 events |
/// | `max_batch_bytes` | 5 MiB |
/// | `max_in_flight` | 8 batches |
/// | `send_immediately` | off |
/// | `disable_geoip` | on |
#[derive(Clone)]
pub struct BatchConfig {
    pub(crate) flush_at: usize,
    pub(crate) flush_interval: Duration,
    pub(crate) max_queue_size: usize,
    pub(crate) max_batch_bytes: usize,
    pub(crate) max_event_bytes: usize,
    pub(crate) max_in_flight: usize,
    pub(crate) send_immediately: bool,
    pub(crate) disable_geoip: bool,
    pub(crate) super_properties: Map<String, Value>,
    /// `$is_server`, `$os`, … (none for a bare `Batch`; the client sets them).
    pub(crate) system: crate::event::SystemProperties,
    pub(crate) before_send: Option<BeforeSend>,
    pub(crate) on_error: Option<OnError>,
    pub(crate) stats: StatsRecorder,
    /// Where events go instead of failing in an outage (set by the client builder).
    pub(crate) spool: Option<Arc<crate::capture::spool::Spool>>,
}

impl Default for BatchConfig {
    fn default() -> Self {
        BatchConfig {
            flush_at: 100,
            flush_interval: Duration::from_secs(5),
            max_queue_size: 10_000,
            max_batch_bytes: 5 * 1024 * 1024,
            max_event_bytes: crate::event::MAX_EVENT_BYTES,
            max_in_flight: 8,
            send_immediately: false,
            disable_geoip: true,
            super_properties: Map::new(),
            system: crate::event::SystemProperties::default(),
            before_send: None,
            on_error: None,
            stats: StatsRecorder::new(),
            spool: None,
        }
    }
}

impl BatchConfig {
    /// The defaults.
    pub fn new() -> Self {
        Self::default()
    }

    /// Closes a batch when it holds this many events (at least 1).
    pub fn flush_at(mut self, events: usize) -> Self {
        self.flush_at = events.max(1);
        self
    }

    /// Closes a non-empty batch this long after the worker took its first event (within
    /// 100 ms of its capture).
    pub fn flush_interval(mut self, interval: Duration) -> Self {
        self.flush_interval = interval;
        self
    }

    /// How many events may wait in the queue (at least 1). `try_capture` fails beyond that.
    pub fn max_queue_size(mut self, events: usize) -> Self {
        self.max_queue_size = events.max(1);
        self
    }

    /// Closes a batch before it would exceed this many bytes of events.
    pub fn max_batch_bytes(mut self, bytes: usize) -> Self {
        self.max_batch_bytes = bytes.max(1);
        self
    }

    /// Refuses an event whose JSON would exceed this many bytes (at least 1 KiB; default
    /// 900 KiB, what PostHog's `/batch/` endpoint accepts). The client's AI lane uses 8 MiB,
    /// what PostHog's AI endpoint accepts. A batch with one event over
    /// [`max_batch_bytes`](Self::max_batch_bytes) holds that event alone.
    ///
    /// ```
    /// use posthog_tower::capture::BatchConfig;
    ///
    /// let config = BatchConfig::new().max_event_bytes(8 * 1024 * 1024);
    /// # drop(config);
    /// ```
    pub fn max_event_bytes(mut self, bytes: usize) -> Self {
        self.max_event_bytes = bytes.max(1024);
        self
    }

    /// How many batches may be sent at once (at least 1).
    pub fn max_in_flight(mut self, batches: usize) -> Self {
        self.max_in_flight = batches.max(1);
        self
    }

    /// Sends whatever arrived as soon as it arrived, without waiting for `flush_at` or
    /// `flush_interval` (serverless mode).
    pub fn send_immediately(mut self, enabled: bool) -> Self {
        self.send_immediately = enabled;
        self
    }

    /// Adds `$geoip_disable: true` to every event (default), so PostHog does not set location
    /// properties from the server's IP address.
    pub fn disable_geoip(mut self, disabled: bool) -> Self {
        self.disable_geoip = disabled;
        self
    }

    /// Properties merged over every event's own.
    pub fn super_properties(mut self, properties: Map<String, Value>) -> Self {
        self.super_properties = properties;
        self
    }

    /// See [`BeforeSend`].
    pub fn before_send(
        mut self,
        hook: impl Fn(Event) -> Option<Event> + Send + Sync + 'static,
    ) -> Self {
        self.before_send = Some(Arc::new(hook));
        self
    }

    /// See [`OnError`].
    pub fn on_error(mut self, callback: impl Fn(&ErrorReport) + Send + Sync + 'static) -> Self {
        self.on_error = Some(Arc::new(callback));
        self
    }

    /// Where counters are kept; share it with the retry policy and the transport.
    pub fn stats(mut self, stats: StatsRecorder) -> Self {
        self.stats = stats;
        self
    }

    /// The counters this config records into.
    pub fn stats_recorder(&self) -> &StatsRecorder {
        &self.stats
    }
}

impl fmt::Debug for BatchConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BatchConfig")
            .field("flush_at", &self.flush_at)
            .field("flush_interval", &self.flush_interval)
            .field("max_queue_size", &self.max_queue_size)
            .field("max_batch_bytes", &self.max_batch_bytes)
            .field("max_event_bytes", &self.max_event_bytes)
            .field("max_in_flight", &self.max_in_flight)
            .field("send_immediately", &self.send_immediately)
            .field("disable_geoip", &self.disable_geoip)
            .field("super_properties", &self.super_properties.len())
            .field("before_send", &self.before_send.is_some())
            .field("on_error", &self.on_error.is_some())
            .finish()
    }
}
