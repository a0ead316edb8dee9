//! [`PostHogTracingLayer`]: a [`tracing_subscriber::Layer`] that captures `tracing` events
//! as PostHog events: errors as `$exception` events for error tracking, and the events you
//! choose as ordinary events.
//!
//! Add it to your subscriber next to the layers that print or export your logs:
//!
//! ```no_run
//! use posthog_tower::{integrations::tracing::PostHogTracingLayer, PostHog};
//! use tracing_subscriber::layer::SubscriberExt;
//! use tracing_subscriber::util::SubscriberInitExt;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let posthog = PostHog::builder("phc_project_key").build()?;
//! tracing_subscriber::registry()
//!     .with(
//!         PostHogTracingLayer::new(posthog.clone())
//!             // Audit events become PostHog events, named by their message.
//!             .capture_events(|meta| meta.target().starts_with("my_app::audit")),
//!     )
//!     .init();
//!
//! // An `$exception` (type `my_app::payments`, value "payment failed") with the stack here.
//! tracing::error!(target: "my_app::payments", order_id = 42, "payment failed");
//! # Ok(())
//! # }
//! ```
//!
//! # `$exception` events
//!
//! An event at [`exception_level`](PostHogTracingLayer::exception_level) (default `ERROR`) or
//! more severe is captured as a handled `$exception`:
//!
//! - its first `$exception_list` entry has the event's **target** as its `type` (the module
//!   path unless the event sets `target:`) and the event's **message** as its `value`. PostHog
//!   groups an exception that has a stack by its type and frames, so each `error!` call site
//!   is an issue of its own, titled by its module, whatever varies in its message;
//! - when the event carries an error recorded as one
//!   (`error = &err as &dyn std::error::Error`), that error and its `source()` chain follow as
//!   `chained` entries, outermost first, named `Error` (the layer sees them as
//!   `dyn Error`). An event without a message takes the error's message as its value;
//! - the stack is the one at the `error!` call (with the `error-tracking` feature): the
//!   `tracing` dispatch frames and this layer's are left out;
//! - `$exception_level` follows the event's level: `ERROR` → `error`, `WARN` → `warning`,
//!   `INFO` → `info`, `DEBUG` and `TRACE` → `debug`.
//!
//! Exceptions go through the client's per-type rate limit
//! ([`PostHogBuilder::exception_rate_limit`](crate::PostHogBuilder::exception_rate_limit), by
//! the target here): one refused is counted in `stats().dropped.rate_limited` and passed to
//! `on_error`, before its stack is captured.
//!
//! # Properties
//!
//! Both kinds of events carry:
//!
//! - the event's fields, under their own names, without a prefix (`order_id = 42` is
//!   `order_id: 42`): integers, floats and booleans as JSON numbers and booleans (a float that
//!   is not finite, or an integer beyond 64 bits, as a string), errors as their message,
//!   everything else as its `Debug` text (so `%value` gives its `Display` text), each text cut
//!   at [`MAX_VALUE_CHARS`] characters. The `message` field is the value or the name, not a
//!   property;
//! - `$tracing_target` (`my_app::payments`), `$tracing_level` (`ERROR`, `WARN`, `INFO`, `DEBUG`
//!   or `TRACE`, as `tracing` spells it) and `$tracing_spans`, the names of the spans the event
//!   is in, outermost first;
//! - `$trace_id` and `$span_id` when [`trace_ids`](PostHogTracingLayer::trace_ids) finds them.
//!
//! The layer's own properties win over a field of the same name.
//!
//! # Which events it sees
//!
//! The layer sees the events the subscriber's filters let through: a filter on the whole
//! subscriber (`.with(EnvFilter::from_default_env())`) that hides errors of a target hides
//! them from PostHog too. Give the other layers a filter of their own
//! ([`Layer::with_filter`]) to keep errors for PostHog whatever they print.
//!
//! # Who the events are for
//!
//! As [`Event::named`] events, they are the current
//! [`RequestContext`](crate::context::RequestContext)'s caller's (inside a request handled
//! behind [`PostHogLayer`](crate::http::PostHogLayer), or a scope you set), personless
//! otherwise, with the request's session and URL.
//!
//! # Never a loop, never a panic
//!
//! The crate logs through `tracing` too, for example when it refuses an event. The layer
//! ignores every event whose target is `posthog_tower` or under it, and every event emitted
//! while it is capturing on the same thread (from a `before_send` hook, an `on_error`
//! callback or the `capture_events` filter, say), so a capture can never capture again. It
//! does not panic: a filter or `trace_ids` closure that panics counts as `false` or `None`, a
//! `Debug` implementation that panics gives a placeholder text. It never waits for room or
//! for delivery: capturing queues the event without waiting, and fails (counted and passed to
//! `on_error`) when the queue is full.
//!
//! # Cost
//!
//! An event below the exception level that `capture_events` does not choose costs a
//! comparison or the filter's call. An `$exception` costs its stack (about 90 µs, see
//! `benches/capture.rs`), once admitted by the rate limit.

use std::{
    cell::Cell,
    error::Error as StdError,
    fmt,
    panic::{catch_unwind, AssertUnwindSafe},
    sync::Arc,
};

use ::tracing::{
    field::{Field, Visit},
    Level as TracingLevel, Metadata, Subscriber,
};
use serde_json::Value;
use tracing_subscriber::{layer::Context, registry::LookupSpan, Layer};

use crate::{
    exception::{Causes, Exception, Level, MAX_VALUE_CHARS},
    Event, PostHog,
};

type Filter = dyn Fn(&Metadata<'_>) -> bool + Send + Sync;
type TraceIds = dyn Fn() -> Option<(String, String)> + Send + Sync;

/// A [`Layer`] that captures `tracing` events through a [`PostHog`] client: those at
/// [`exception_level`](Self::exception_level) or more severe as `$exception` events, and
/// those [`capture_events`](Self::capture_events) chooses as ordinary events. See the
/// [module docs](self) for what the events hold.
///
/// # Clone
///
/// Cheap: the client and the closures are shared.
///
/// # Example
///
/// ```
/// use posthog_tower::{integrations::tracing::PostHogTracingLayer, PostHog};
/// use tracing_subscriber::layer::SubscriberExt;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let mock = posthog_tower::testing::MockPostHog::start().await?;
/// let posthog = PostHog::builder("phc_project_key").host(mock.url()).build()?;
/// let layer = PostHogTracingLayer::new(posthog.clone())
///     .exception_level(tracing::Level::WARN)
///     .capture_events(|meta| meta.target().starts_with("my_app::audit"));
/// let subscriber = tracing_subscriber::registry().with(layer);
/// tracing::subscriber::with_default(subscriber, || {
///     tracing::warn!(attempts = 3, "retries exhausted"); // an `$exception`, level warning
///     tracing::info!(target: "my_app::audit", user = "ada", "export downloaded"); // an event
///     tracing::info!("cache warmed"); // neither
/// });
/// posthog.flush().await;
///
/// let events = mock.events();
/// assert_eq!(events[0]["event"], "$exception");
/// assert_eq!(events[0]["properties"]["attempts"], 3);
/// assert_eq!(events[1]["event"], "export downloaded");
/// assert_eq!(events[1]["properties"]["user"], "ada");
/// assert_eq!(events.len(), 2);
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct PostHogTracingLayer {
    /// `None`: the process-wide client, looked up per event ([`global`](Self::global)).
    posthog: Option<PostHog>,
    exception_level: TracingLevel,
    capture_events: Option<Arc<Filter>>,
    trace_ids: Option<Arc<TraceIds>>,
}

impl PostHogTracingLayer {
    /// A layer capturing through `posthog`: `ERROR` events as `$exception` events, nothing
    /// else until [`capture_events`](Self::capture_events) chooses more.
    ///
    /// ```
    /// # fn f(posthog: posthog_tower::PostHog) {
    /// use posthog_tower::integrations::tracing::PostHogTracingLayer;
    ///
    /// let layer = PostHogTracingLayer::new(posthog.clone());
    /// # }
    /// ```
    pub fn new(posthog: PostHog) -> Self {
        PostHogTracingLayer {
            posthog: Some(posthog),
            exception_level: TracingLevel::ERROR,
            capture_events: None,
            trace_ids: None,
        }
    }

    /// A layer capturing through the process-wide client ([`posthog_tower::global`](crate::global)),
    /// looked up for each event it captures: for a subscriber set up before the client (at
    /// the start of `main`, say, while the client waits for its configuration), or in a
    /// library with no client to name. An event it would capture while no client is set
    /// (before [`init`](crate::init)) is not captured: it is counted in
    /// [`missed_without_global`](crate::missed_without_global), the first one logged.
    ///
    /// ```
    /// use posthog_tower::integrations::tracing::PostHogTracingLayer;
    /// use tracing_subscriber::layer::SubscriberExt;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), posthog_tower::BuildError> {
    /// let subscriber = tracing_subscriber::registry().with(PostHogTracingLayer::global());
    /// # drop(subscriber);
    /// // Later:
    /// let posthog = posthog_tower::PostHog::builder("phc_project_key").disabled(true).build()?;
    /// posthog_tower::init(posthog);
    /// # Ok(())
    /// # }
    /// ```
    pub fn global() -> Self {
        PostHogTracingLayer {
            posthog: None,
            exception_level: TracingLevel::ERROR,
            capture_events: None,
            trace_ids: None,
        }
    }

    /// Events at `level` or more severe become `$exception` events (default
    /// [`ERROR`](TracingLevel::ERROR)): `WARN` takes warnings too.
    ///
    /// ```
    /// # fn f(posthog: posthog_tower::PostHog) {
    /// use posthog_tower::integrations::tracing::PostHogTracingLayer;
    ///
    /// let layer = PostHogTracingLayer::new(posthog).exception_level(tracing::Level::WARN);
    /// # }
    /// ```
    #[must_use]
    pub fn exception_level(mut self, level: TracingLevel) -> Self {
        self.exception_level = level;
        self
    }

    /// Also captures the events `filter` chooses, by their metadata (target, level, name,
    /// fields), as PostHog events named by their message (an event without one is named by
    /// its metadata's name, `event src/file.rs:12`). Keep messages constant and put what
    /// varies in fields, or every message is an event name of its own.
    ///
    /// An event at the [exception level](Self::exception_level) is an `$exception` whatever
    /// `filter` says. `filter` runs for every event below it that reaches the layer, so keep
    /// it cheap; one that panics counts as `false`. Calling this again replaces the filter.
    ///
    /// ```
    /// # fn f(posthog: posthog_tower::PostHog) {
    /// use posthog_tower::integrations::tracing::PostHogTracingLayer;
    ///
    /// // By target prefix:
    /// let layer = PostHogTracingLayer::new(posthog.clone())
    ///     .capture_events(|meta| meta.target().starts_with("my_app::audit"));
    /// // Events that carry an `analytics` field, at INFO or above:
    /// let layer = PostHogTracingLayer::new(posthog).capture_events(|meta| {
    ///     *meta.level() <= tracing::Level::INFO && meta.fields().field("analytics").is_some()
    /// });
    /// # }
    /// ```
    #[must_use]
    pub fn capture_events(
        mut self,
        filter: impl Fn(&Metadata<'_>) -> bool + Send + Sync + 'static,
    ) -> Self {
        self.capture_events = Some(Arc::new(filter));
        self
    }

    /// Where to find the trace and span an event belongs to: `ids` returns the OpenTelemetry
    /// trace and span ids (hex), sent as `$trace_id` and `$span_id` (as posthog-python does),
    /// so PostHog can link to the trace.
    ///
    /// It is called on the thread that emits the event, so it reads the current context:
    /// `tracing-opentelemetry`'s layer makes a span's OpenTelemetry context current while
    /// the span is entered (unless told not to with `with_context_activation(false)`). A
    /// closure rather than a dependency: it is compiled against your `opentelemetry`, so
    /// versions never have to match. One that panics counts as `None`. Calling this again
    /// replaces it.
    ///
    /// ```
    /// # fn f(posthog: posthog_tower::PostHog) {
    /// use opentelemetry::trace::TraceContextExt;
    /// use posthog_tower::integrations::tracing::PostHogTracingLayer;
    ///
    /// let layer = PostHogTracingLayer::new(posthog).trace_ids(|| {
    ///     let cx = opentelemetry::Context::current();
    ///     let span = cx.span();
    ///     let ids = span.span_context();
    ///     ids.is_valid()
    ///         .then(|| (ids.trace_id().to_string(), ids.span_id().to_string()))
    /// });
    /// # }
    /// ```
    #[must_use]
    pub fn trace_ids(
        mut self,
        ids: impl Fn() -> Option<(String, String)> + Send + Sync + 'static,
    ) -> Self {
        self.trace_ids = Some(Arc::new(ids));
        self
    }

    /// Whether `filter` chooses the event.
    fn chosen(&self, meta: &Metadata<'_>) -> bool {
        self.capture_events
            .as_ref()
            .is_some_and(|filter| catch_unwind(AssertUnwindSafe(|| filter(meta))).unwrap_or(false))
    }

    /// What `trace_ids` finds.
    fn find_trace_ids(&self) -> Option<(String, String)> {
        let ids = self.trace_ids.as_ref()?;
        catch_unwind(AssertUnwindSafe(|| ids())).unwrap_or(None)
    }

    /// Captures the event as an `$exception` (the rate limit admitted it).
    #[inline(never)]
    fn capture_exception(posthog: &PostHog, meta: &Metadata<'_>, fields: Fields, common: Common) {
        let (value, causes) = match (fields.message, fields.error) {
            (Some(message), causes) => (message, causes),
            (None, Some(causes)) => (causes.message().to_owned(), Some(causes.sources())),
            (None, None) => (meta.name().to_owned(), None),
        };
        let mut exception = Exception::from_message(exception_type(meta), value)
            .level(exception_level(meta.level()))
            .handled(true);
        if let Some(causes) = causes {
            exception = exception.caused_by(causes);
        }
        for (key, value) in fields.properties {
            exception = exception.property(key, value);
        }
        for (key, value) in common.properties(meta) {
            exception = exception.property(key, value);
        }
        // A refused event was counted and passed to `on_error` by the client.
        let _ = posthog.capture_exception_event(exception.into_event());
    }

    /// Captures the event as an ordinary PostHog event, named by its message.
    fn capture_event(posthog: &PostHog, meta: &Metadata<'_>, fields: Fields, common: Common) {
        let name = fields.message.as_deref().unwrap_or(meta.name());
        let mut event = Event::named(name);
        for (key, value) in fields.properties {
            event = event.property(key, value);
        }
        for (key, value) in common.properties(meta) {
            event = event.property(key, value);
        }
        // A refused event was counted and passed to `on_error` by the client.
        let _ = posthog.capture(event);
    }
}

impl<S> Layer<S> for PostHogTracingLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_event(&self, event: &::tracing::Event<'_>, ctx: Context<'_, S>) {
        let meta = event.metadata();
        if is_own(meta.target()) {
            return;
        }
        let as_exception = *meta.level() <= self.exception_level;
        if (!as_exception && self.capture_events.is_none())
            || self.posthog.as_ref().is_some_and(PostHog::is_disabled)
        {
            return;
        }
        // Before the filter, which is the application's code and may log too.
        let Some(_capturing) = Capturing::enter() else {
            return;
        };
        if !as_exception && !self.chosen(meta) {
            return;
        }
        let global;
        let posthog = match &self.posthog {
            Some(posthog) => posthog,
            None => match crate::integrations::global::global_or_count("tracing event") {
                Some(client) if !client.is_disabled() => {
                    global = client;
                    &global
                }
                _ => return,
            },
        };
        // Before anything is built: a refused exception costs a lookup.
        if as_exception && posthog.admit_autocaptured(exception_type(meta)).is_err() {
            return;
        }
        let mut fields = Fields::default();
        event.record(&mut fields);
        let common = Common {
            spans: ctx
                .event_scope(event)
                .map(|scope| scope.from_root().map(|span| span.name()).collect())
                .unwrap_or_default(),
            trace_ids: self.find_trace_ids(),
        };
        if as_exception {
            Self::capture_exception(posthog, meta, fields, common);
        } else {
            Self::capture_event(posthog, meta, fields, common);
        }
    }
}

impl fmt::Debug for PostHogTracingLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostHogTracingLayer")
            .field(
                "posthog",
                match &self.posthog {
                    Some(posthog) => posthog as &dyn fmt::Debug,
                    None => &"global",
                },
            )
            .field("exception_level", &self.exception_level)
            .field("capture_events", &self.capture_events.is_some())
            .field("trace_ids", &self.trace_ids.is_some())
            .finish()
    }
}

/// Whether `target` is this crate's: its own logs are never captured.
fn is_own(target: &str) -> bool {
    target
        .strip_prefix("posthog_tower")
        .is_some_and(|rest| rest.is_empty() || rest.starts_with("::"))
}

/// An `$exception`'s type: the event's target.
fn exception_type<'a>(meta: &Metadata<'a>) -> &'a str {
    match meta.target().trim() {
        "" => "Error",
        target => target,
    }
}

fn exception_level(level: &TracingLevel) -> Level {
    match *level {
        TracingLevel::ERROR => Level::Error,
        TracingLevel::WARN => Level::Warning,
        TracingLevel::INFO => Level::Info,
        _ => Level::Debug,
    }
}

thread_local! {
    /// Set while this thread captures an event: an event emitted meanwhile (by the crate, a
    /// `before_send` hook, an `on_error` callback) is not captured.
    static CAPTURING: Cell<bool> = const { Cell::new(false) };
}

/// This thread's capture in progress; ends when dropped.
struct Capturing;

impl Capturing {
    /// `None` when this thread is capturing already (or is being torn down).
    fn enter() -> Option<Capturing> {
        let entered = CAPTURING.try_with(|flag| !flag.replace(true)).ok()?;
        // Not `then_some(Capturing)`: the value it drops when not entered would end the
        // capture in progress.
        entered.then(|| Capturing)
    }
}

impl Drop for Capturing {
    fn drop(&mut self) {
        let _ = CAPTURING.try_with(|flag| flag.set(false));
    }
}

/// What both kinds of events carry besides the fields.
struct Common {
    /// Outermost first.
    spans: Vec<&'static str>,
    trace_ids: Option<(String, String)>,
}

impl Common {
    fn properties(self, meta: &Metadata<'_>) -> Vec<(&'static str, Value)> {
        let mut properties = vec![
            ("$tracing_target", Value::from(meta.target())),
            ("$tracing_level", Value::from(meta.level().as_str())),
            ("$tracing_spans", Value::from(self.spans)),
        ];
        if let Some((trace_id, span_id)) = self.trace_ids {
            properties.push(("$trace_id", trace_id.into()));
            properties.push(("$span_id", span_id.into()));
        }
        properties
    }
}

/// An event's fields, as the layer sends them.
#[derive(Default)]
struct Fields {
    message: Option<String>,
    properties: Vec<(&'static str, Value)>,
    /// The chain of the first field recorded as an error.
    error: Option<Causes>,
}

impl Fields {
    fn text(&mut self, field: &Field, text: String) {
        if field.name() == "message" {
            self.message = Some(text).filter(|text| !text.trim().is_empty());
        } else {
            self.properties.push((field.name(), text.into()));
        }
    }
}

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        let text = catch_unwind(AssertUnwindSafe(|| format!("{value:?}")))
            .unwrap_or_else(|_| "<the value's Debug implementation panicked>".to_owned());
        self.text(field, cut(&text));
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.text(field, cut(value));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.properties.push((field.name(), value.into()));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.properties.push((field.name(), value.into()));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.properties.push((field.name(), value.into()));
    }

    fn record_i128(&mut self, field: &Field, value: i128) {
        let value = i64::try_from(value).map_or_else(|_| value.to_string().into(), Value::from);
        self.properties.push((field.name(), value));
    }

    fn record_u128(&mut self, field: &Field, value: u128) {
        let value = u64::try_from(value).map_or_else(|_| value.to_string().into(), Value::from);
        self.properties.push((field.name(), value));
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        // JSON has no NaN or infinity, and an event with one would be refused whole.
        let value = match serde_json::Number::from_f64(value) {
            Some(number) => Value::Number(number),
            None => value.to_string().into(),
        };
        self.properties.push((field.name(), value));
    }

    fn record_error(&mut self, field: &Field, value: &(dyn StdError + 'static)) {
        let causes = Causes::of(value);
        self.text(field, causes.message().to_owned());
        if self.error.is_none() {
            self.error = Some(causes);
        }
    }
}

/// At most [`MAX_VALUE_CHARS`] characters of `text`.
fn cut(text: &str) -> String {
    match text.char_indices().nth(MAX_VALUE_CHARS) {
        Some((at, _)) => text[..at].to_owned(),
        None => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_this_crates_targets_are_its_own() {
        assert!(is_own("posthog_tower"));
        assert!(is_own("posthog_tower::capture::batch"));
        assert!(!is_own("posthog_tower_ext"));
        assert!(!is_own("my_app::posthog_tower"));
    }

    #[test]
    fn the_guard_is_held_once_per_thread() {
        let first = Capturing::enter().expect("not capturing yet");
        assert!(Capturing::enter().is_none(), "re-entered");
        assert!(Capturing::enter().is_none(), "a refused entry ends nothing");
        std::thread::spawn(|| assert!(Capturing::enter().is_some()))
            .join()
            .unwrap();
        drop(first);
        assert!(Capturing::enter().is_some(), "released when dropped");
    }

    #[test]
    fn levels_map_to_exception_levels() {
        assert_eq!(exception_level(&TracingLevel::ERROR), Level::Error);
        assert_eq!(exception_level(&TracingLevel::WARN), Level::Warning);
        assert_eq!(exception_level(&TracingLevel::INFO), Level::Info);
        assert_eq!(exception_level(&TracingLevel::DEBUG), Level::Debug);
        assert_eq!(exception_level(&TracingLevel::TRACE), Level::Debug);
    }
}
