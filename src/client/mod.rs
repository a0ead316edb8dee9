//! The [`PostHog`] client: the whole API in one cheap-to-clone handle.

mod blocking;
mod builder;
mod flags;
mod system;

use std::{fmt, sync::Arc, time::Duration};

use serde::Serialize;
use uuid::Uuid;

pub use builder::{PostHogBuilder, DEFAULT_HOST};

use crate::{
    capture::{Batch, FlushReport, Stats, StatsRecorder},
    CaptureError, Event,
};

/// A PostHog client.
///
/// Cloning is cheap (an `Arc` inside) and every clone feeds the same pipeline. `capture` and
/// the other event methods are synchronous and never block: they validate the event, stamp it
/// and queue it, or return an error the caller can act on.
///
/// # Example
///
/// ```no_run
/// use std::time::Duration;
/// use posthog_tower::{Event, PostHog};
///
/// # #[tokio::main]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let posthog = PostHog::builder("phc_project_key")
///     .host("https://eu.i.posthog.com")
///     .build()?;
///
/// posthog.capture(Event::new("signed up", "user-42").property("plan", "pro"))?;
/// posthog.set("user-42", serde_json::json!({"email": "ada@example.com"}))?;
///
/// // Before the process exits: deliver what is queued.
/// posthog.shutdown(Duration::from_secs(10)).await;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct PostHog {
    inner: Arc<Inner>,
}

struct Inner {
    /// `None` when disabled.
    batch: Option<Batch>,
    /// The AI lane (`/i/v0/ai/batch/`) of [`PostHog::capture_ai`]; `None` when disabled.
    ai_batch: Option<Batch>,
    /// [`PostHogBuilder::ai_privacy_mode`]: `capture_ai` removes inputs and outputs.
    ai_privacy_mode: bool,
    /// `None` when disabled.
    flags: Option<flags::FlagsClient>,
    sync_mode: bool,
    host: String,
    /// posthog-js's cookie for this project: `ph_<project key>_posthog`.
    cookie_name: Arc<str>,
    stats: StatsRecorder,
    max_event_size: usize,
    /// The per-type limit on exceptions captured on the application's behalf.
    exception_limit: crate::exception::RateLimit,
    /// The API keys, redacted from `$exception` events.
    secrets: Box<[Box<str>]>,
}

impl PostHog {
    /// Starts configuring a client for the project with this API key (`phc_…`).
    pub fn builder(project_api_key: impl Into<String>) -> PostHogBuilder {
        PostHogBuilder::new(project_api_key.into())
    }

    /// Queues an event and returns its uuid. Never blocks.
    ///
    /// Errors: an empty name or distinct id, a property JSON cannot represent, an event over
    /// 900 KiB, a full queue, or a shut-down client. Each is also counted in
    /// [`stats`](Self::stats) and passed to `on_error`.
    pub fn capture(&self, mut event: Event) -> Result<Uuid, CaptureError> {
        crate::context::apply_current(&mut event);
        self.enqueue(event)
    }

    /// Queues an LLM analytics event on the AI lane, which sends it to PostHog's AI
    /// endpoint (`POST {host}/i/v0/ai/batch/`), and returns its uuid. Never blocks.
    ///
    /// The lane has batches of its own, with the client's batching, queue bound
    /// ([`max_queue_size`](PostHogBuilder::max_queue_size), for this lane's queue), retries,
    /// `before_send` hook and accounting: its events count in [`stats`](Self::stats), and
    /// [`flush`](Self::flush) and [`shutdown`](Self::shutdown) cover both lanes. The event is
    /// any [`Event`] (its name need not start with `$ai_`), or one of the typed events of
    /// [`ai`](crate::ai). [`capture`](Self::capture) never reroutes `$ai_*` events here.
    ///
    /// With [`ai_privacy_mode`](PostHogBuilder::ai_privacy_mode) on, the event's inputs and
    /// outputs (`$ai_input`, `$ai_output_choices`, `$ai_input_state`, `$ai_output_state`,
    /// `$ai_instructions`) are removed before it is queued.
    ///
    /// Errors: those of [`capture`](Self::capture), but for the size limit: an event may be up
    /// to 8 MiB here (posthog-python's limit for this lane), where `/batch/` takes 900 KiB.
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// use posthog_tower::{ai::Generation, PostHog};
    ///
    /// # async fn f(posthog: PostHog) -> Result<(), posthog_tower::CaptureError> {
    /// posthog.capture_ai(
    ///     Generation::new("trace-1")
    ///         .distinct_id("user-42")
    ///         .provider("openai")
    ///         .model("gpt-4o-mini")
    ///         .input_tokens(12)
    ///         .output_tokens(40)
    ///         .latency(Duration::from_millis(830)),
    /// )?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn capture_ai(&self, event: impl Into<Event>) -> Result<Uuid, CaptureError> {
        let event = self.ai_event(event.into());
        match &self.inner.ai_batch {
            Some(batch) => batch.try_capture(event),
            None => self.disabled_capture(event, crate::event::MAX_AI_EVENT_BYTES),
        }
    }

    /// [`capture_ai`](Self::capture_ai), waiting for room when the AI lane's queue is full
    /// instead of failing: the AI lane's [`capture_wait`](Self::capture_wait).
    ///
    /// In [sync mode](PostHogBuilder::sync_mode) it resolves only once PostHog acknowledged the
    /// event, or fails with [`CaptureError::Delivery`].
    ///
    /// ```no_run
    /// use posthog_tower::{ai::Generation, PostHog};
    ///
    /// # async fn f(posthog: PostHog) -> Result<(), posthog_tower::CaptureError> {
    /// posthog
    ///     .capture_ai_wait(Generation::new("trace-1").model("gpt-4o-mini").input_tokens(12))
    ///     .await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn capture_ai_wait(&self, event: impl Into<Event>) -> Result<Uuid, CaptureError> {
        let event = self.ai_event(event.into());
        match &self.inner.ai_batch {
            Some(batch) if self.inner.sync_mode => batch.deliver(event).await,
            Some(batch) => batch.capture_wait(event).await,
            None => self.disabled_capture(event, crate::event::MAX_AI_EVENT_BYTES),
        }
    }

    /// An event for the AI lane: the current context applied, and privacy mode.
    fn ai_event(&self, mut event: Event) -> Event {
        crate::context::apply_current(&mut event);
        if self.inner.ai_privacy_mode {
            crate::ai::remove_content(&mut event);
        }
        event
    }

    /// Queues an event the current context was applied to.
    fn enqueue(&self, event: Event) -> Result<Uuid, CaptureError> {
        match &self.inner.batch {
            Some(batch) => batch.try_capture(event),
            None => self.disabled_capture(event, self.inner.max_event_size),
        }
    }

    /// Queues an event, waiting for room when the queue is full instead of failing.
    ///
    /// In [sync mode](PostHogBuilder::sync_mode) it resolves only once PostHog acknowledged the
    /// event, or fails with [`CaptureError::Delivery`]: use it in serverless functions.
    pub async fn capture_wait(&self, mut event: Event) -> Result<Uuid, CaptureError> {
        crate::context::apply_current(&mut event);
        match &self.inner.batch {
            Some(batch) if self.inner.sync_mode => batch.deliver(event).await,
            Some(batch) => batch.capture_wait(event).await,
            None => self.disabled_capture(event, self.inner.max_event_size),
        }
    }

    /// Captures `error` (and its `source()` chain) as an `$exception` event, with the stack at
    /// this call (feature `error-tracking`), for the current request context's caller (or
    /// personless), and returns its uuid. [`capture_exception_with`](Self::capture_exception_with)
    /// takes an [`Exception`](crate::exception::Exception) with more options.
    ///
    /// ```no_run
    /// # fn f(posthog: posthog_tower::PostHog) {
    /// if let Err(error) = std::fs::read("config.toml") {
    ///     let _ = posthog.capture_exception(&error);
    /// }
    /// # }
    /// ```
    #[inline(never)]
    pub fn capture_exception<E: std::error::Error + ?Sized + 'static>(
        &self,
        error: &E,
    ) -> Result<Uuid, CaptureError> {
        self.capture_exception_event(crate::exception::Exception::new(error).into_event())
    }

    /// Captures an `anyhow::Error` (its chain, and the stack where it arose when anyhow
    /// captured one, else at this call) as an `$exception` event, like
    /// [`capture_exception`](Self::capture_exception); see
    /// [`Exception::from_anyhow`](crate::exception::Exception::from_anyhow).
    ///
    /// ```no_run
    /// # fn f(posthog: posthog_tower::PostHog) {
    /// use anyhow::Context;
    ///
    /// if let Err(error) = std::fs::read("config.toml").context("reading the configuration") {
    ///     let _ = posthog.capture_anyhow(&error);
    /// }
    /// # }
    /// ```
    #[cfg(feature = "anyhow")]
    #[cfg_attr(docsrs, doc(cfg(feature = "anyhow")))]
    #[inline(never)]
    pub fn capture_anyhow(&self, error: &anyhow::Error) -> Result<Uuid, CaptureError> {
        self.capture(crate::exception::Exception::from_anyhow(error).into_event())
    }

    /// Captures an `eyre::Report` as an `$exception` event, like
    /// [`capture_exception`](Self::capture_exception); see
    /// [`Exception::from_eyre`](crate::exception::Exception::from_eyre).
    ///
    /// ```no_run
    /// # fn f(posthog: posthog_tower::PostHog) {
    /// use eyre::WrapErr;
    ///
    /// if let Err(report) = std::fs::read("config.toml").wrap_err("reading the configuration") {
    ///     let _ = posthog.capture_eyre(&report);
    /// }
    /// # }
    /// ```
    #[cfg(feature = "eyre")]
    #[cfg_attr(docsrs, doc(cfg(feature = "eyre")))]
    #[inline(never)]
    pub fn capture_eyre(&self, report: &eyre::Report) -> Result<Uuid, CaptureError> {
        self.capture(crate::exception::Exception::from_eyre(report).into_event())
    }

    /// Captures an [`Exception`](crate::exception::Exception) built with its options (level,
    /// fingerprint, distinct id, properties).
    pub fn capture_exception_with(
        &self,
        exception: crate::exception::Exception,
    ) -> Result<Uuid, CaptureError> {
        self.capture_exception_event(exception.into_event())
    }

    /// Captures an `$exception` event and records it in the current request context (the
    /// HTTP layer reports one exception per request, and the pageview refers to it).
    ///
    /// An error's message (or a logged field, or the request's URL) can hold an API key: the
    /// client's keys are replaced with `[redacted]` wherever they appear in the event's
    /// properties.
    pub(crate) fn capture_exception_event(&self, mut event: Event) -> Result<Uuid, CaptureError> {
        crate::context::apply_current(&mut event);
        redact(&mut event, &self.inner.secrets);
        let uuid = self.enqueue(event)?;
        crate::context::record_current_exception(uuid);
        Ok(uuid)
    }

    /// Captures an exception the crate caught on the application's behalf (a panic, a failed
    /// request, a `tracing` error): like [`capture_exception_with`](Self::capture_exception_with),
    /// within [`PostHogBuilder::exception_rate_limit`].
    pub(crate) fn capture_autocaptured(
        &self,
        exception: crate::exception::Exception,
    ) -> Result<Uuid, CaptureError> {
        self.admit_autocaptured(exception.type_name())?;
        self.capture_exception_event(exception.into_event())
    }

    /// The rate limit of [`capture_autocaptured`](Self::capture_autocaptured) alone, for a
    /// caller that builds the exception only once it is admitted (capturing its stack is most
    /// of the cost) and then captures it with [`capture`](Self::capture).
    pub(crate) fn admit_autocaptured(&self, exception_type: &str) -> Result<(), CaptureError> {
        if !self.inner.exception_limit.admit(exception_type) {
            return Err(self.reject(CaptureError::RateLimited {
                exception_type: exception_type.to_owned(),
            }));
        }
        Ok(())
    }

    /// Sets person properties (`$set`): the latest value wins. `properties` is a map or a
    /// struct.
    pub fn set(
        &self,
        distinct_id: impl Into<String>,
        properties: impl Serialize,
    ) -> Result<Uuid, CaptureError> {
        self.capture(Event::person_update(false, distinct_id.into(), properties))
    }

    /// Sets person properties only where they have no value yet (`$set_once`).
    pub fn set_once(
        &self,
        distinct_id: impl Into<String>,
        properties: impl Serialize,
    ) -> Result<Uuid, CaptureError> {
        self.capture(Event::person_update(true, distinct_id.into(), properties))
    }

    /// Links `previous_id` (for example an anonymous id) to `distinct_id` (`$create_alias`).
    pub fn alias(
        &self,
        previous_id: impl Into<String>,
        distinct_id: impl Into<String>,
    ) -> Result<Uuid, CaptureError> {
        let previous_id = previous_id.into();
        let distinct_id = distinct_id.into();
        if distinct_id.trim().is_empty() {
            return Err(self.reject(CaptureError::EmptyDistinctId));
        }
        self.capture(Event::alias(previous_id, distinct_id))
    }

    /// Sets a group's properties (`$groupidentify`), e.g. a company's name and plan.
    pub fn group_identify(
        &self,
        group_type: impl Into<String>,
        group_key: impl Into<String>,
        properties: impl Serialize,
    ) -> Result<Uuid, CaptureError> {
        let group_type = group_type.into();
        let group_key = group_key.into();
        if group_type.trim().is_empty() {
            return Err(self.reject(CaptureError::InvalidArgument("group type is empty")));
        }
        if group_key.trim().is_empty() {
            return Err(self.reject(CaptureError::InvalidArgument("group key is empty")));
        }
        self.capture(Event::group_identify(
            group_type, group_key, properties, None,
        ))
    }

    /// Captures a backend `$pageview` of `url`.
    pub fn pageview(
        &self,
        distinct_id: impl AsRef<str>,
        url: impl AsRef<str>,
    ) -> Result<Uuid, CaptureError> {
        self.capture(Event::pageview(distinct_id, url))
    }

    /// Sends everything captured before this call and resolves once all of it was delivered
    /// or definitively failed, with the counts. Flushing an empty queue sends nothing.
    pub async fn flush(&self) -> FlushReport {
        match (&self.inner.batch, &self.inner.ai_batch) {
            (Some(batch), Some(ai)) => {
                let (main, ai) = tokio::join!(batch.flush(), ai.flush());
                main.add(ai)
            }
            (Some(batch), None) => batch.flush().await,
            _ => FlushReport::default(),
        }
    }

    /// Stops accepting events, delivers what is queued (giving up, and reporting, whatever is
    /// left when `deadline` passes), and stops the background work. Idempotent: later calls
    /// return the same report.
    pub async fn shutdown(&self, deadline: Duration) -> FlushReport {
        if let Some(flags) = &self.inner.flags {
            flags.reporter.dedup.clear();
            flags.reporter.exposures.clear();
            flags.decide.stop_polling();
        }
        let delivered = async {
            match (&self.inner.batch, &self.inner.ai_batch) {
                (Some(batch), Some(ai)) => {
                    let (main, ai) = tokio::join!(batch.shutdown(deadline), ai.shutdown(deadline));
                    main.add(ai)
                }
                (Some(batch), None) => batch.shutdown(deadline).await,
                _ => FlushReport::default(),
            }
        };
        // Meanwhile the poller stops and shuts its definitions cache down (a Redis lease is
        // released), within the same deadline.
        let poller_stopped = async {
            if let Some(flags) = &self.inner.flags {
                flags.decide.polling_stopped(deadline).await;
            }
        };
        tokio::join!(delivered, poller_stopped).0
    }

    /// The pipeline's counters: captured, delivered, failed, dropped by reason, retries,
    /// requests, batches in flight and queue depth.
    pub fn stats(&self) -> Stats {
        let mut stats = self.capture_stats();
        if let Some(flags) = &self.inner.flags {
            stats.definitions_cache_fallbacks = flags.decide.definitions_cache_fallbacks();
        }
        stats
    }

    fn capture_stats(&self) -> Stats {
        match &self.inner.batch {
            Some(batch) => {
                // Both lanes record into one recorder; only the queue depths are their own.
                let mut stats = batch.stats();
                if let Some(ai) = &self.inner.ai_batch {
                    stats.queue_depth += ai.stats().queue_depth;
                }
                stats
            }
            None => self.inner.stats.snapshot(),
        }
    }

    /// `true` when the client was built [disabled](PostHogBuilder::disabled).
    pub fn is_disabled(&self) -> bool {
        self.inner.batch.is_none()
    }

    /// The host events are sent to, after normalization.
    pub fn host(&self) -> &str {
        &self.inner.host
    }

    /// The recorder behind [`stats`](Self::stats).
    pub(crate) fn stats_recorder(&self) -> &StatsRecorder {
        &self.inner.stats
    }

    /// The name of posthog-js's cookie for this project.
    pub(crate) fn cookie_name(&self) -> &Arc<str> {
        &self.inner.cookie_name
    }

    /// The encoder of the capture pipeline, for producers that write an event's JSON
    /// themselves (see [`capture_encoded`](Self::capture_encoded)); `None` when events must
    /// be built as [`Event`]s (a disabled client, a `before_send` hook).
    pub(crate) fn event_encoder(&self) -> Option<&crate::event::Encoder> {
        self.inner.batch.as_ref()?.encoder()
    }

    /// An empty buffer of at least `capacity` bytes to write an event's JSON into with
    /// [`event_encoder`](Self::event_encoder) (a recycled one when one is at hand).
    pub(crate) fn event_buffer(&self, capacity: usize) -> Vec<u8> {
        match &self.inner.batch {
            Some(batch) => batch.event_buffer(capacity),
            None => Vec::with_capacity(capacity),
        }
    }

    /// [`capture`](Self::capture) for an event written with
    /// [`event_encoder`](Self::event_encoder), with its `uuid`.
    pub(crate) fn capture_encoded(&self, json: Vec<u8>, uuid: Uuid) -> Result<Uuid, CaptureError> {
        match &self.inner.batch {
            Some(batch) => batch.try_capture_encoded(json, uuid),
            None => Ok(uuid),
        }
    }

    /// A disabled client checks the event as an enabled one would, and sends nothing.
    fn disabled_capture(&self, mut event: Event, limit: usize) -> Result<Uuid, CaptureError> {
        crate::event::validate(&event, limit, limit)?;
        Ok(event.stamp().0)
    }

    fn reject(&self, error: CaptureError) -> CaptureError {
        if let Some(batch) = &self.inner.batch {
            batch.report_rejection(&error);
        }
        error
    }
}

/// Replaces each of `secrets` in `event`'s property values (at any depth) with `[redacted]`.
/// Looks for them in the properties' JSON first: an event without them is not rebuilt.
fn redact(event: &mut Event, secrets: &[Box<str>]) {
    let json = event.properties().as_json();
    let found: Vec<&str> = secrets
        .iter()
        .map(|s| &**s)
        .filter(|secret| json.windows(secret.len()).any(|w| w == secret.as_bytes()))
        .collect();
    if found.is_empty() {
        return;
    }
    let entries: Vec<(String, serde_json::Value)> = event.properties().iter().collect();
    for (key, mut value) in entries {
        if replace_secrets(&mut value, &found) {
            event.insert_value(&key, value);
        }
    }
}

/// Replaces `secrets` in the strings of `value`; `true` if any was. Properties are at most 100
/// levels deep (`Event::property` refuses deeper values), which bounds the recursion.
fn replace_secrets(value: &mut serde_json::Value, secrets: &[&str]) -> bool {
    use serde_json::Value;
    match value {
        Value::String(text) => {
            let mut changed = false;
            for secret in secrets {
                if text.contains(secret) {
                    *text = text.replace(secret, "[redacted]");
                    changed = true;
                }
            }
            changed
        }
        Value::Array(items) => items.iter_mut().fold(false, |changed, item| {
            replace_secrets(item, secrets) | changed
        }),
        Value::Object(map) => map.values_mut().fold(false, |changed, item| {
            replace_secrets(item, secrets) | changed
        }),
        _ => false,
    }
}

impl fmt::Debug for PostHog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the API key.
        f.debug_struct("PostHog")
            .field("host", &self.inner.host)
            .field("disabled", &self.is_disabled())
            .field("sync_mode", &self.inner.sync_mode)
            .finish_non_exhaustive()
    }
}
