//! Errors: what `capture` returns, what `on_error` receives, and why a build fails.
//!
//! Inside service stacks the error type is [`BoxError`], as everywhere in tower; the tiny structs
//! in [`crate::capture`] (for example [`UnexpectedStatus`](crate::net::UnexpectedStatus)) can
//! be recovered with `downcast_ref`. At the facade, errors are small `#[non_exhaustive]` enums
//! whose messages say what to do.

use std::{borrow::Cow, fmt, sync::Arc, time::Duration};

use uuid::Uuid;

/// Alias for a type-erased error type, as in tower.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Why an event was not accepted by `capture`.
///
/// Every rejection is also counted in [`Stats`](crate::capture::Stats) and reported to the `on_error`
/// callback, so nothing is lost silently.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CaptureError {
    /// The event name is empty or only whitespace.
    EmptyEventName,
    /// The distinct id is empty or only whitespace.
    EmptyDistinctId,
    /// A property could not be turned into JSON (for example `NaN` or infinity).
    InvalidProperty {
        /// The property's key.
        key: String,
        /// What was wrong with it.
        reason: String,
    },
    /// Some other argument was invalid (for example an empty group type).
    InvalidArgument(&'static str),
    /// The event serializes to more than the per-event limit PostHog accepts.
    EventTooLarge {
        /// The event's serialized size in bytes (an estimate at capture time).
        size: usize,
        /// The limit in bytes: 900 KiB, or 8 MiB on the AI lane
        /// ([`PostHog::capture_ai`](crate::PostHog::capture_ai)).
        limit: usize,
    },
    /// The queue is full: the worker cannot keep up or PostHog is unreachable.
    QueueFull {
        /// The queue's capacity in events (`max_queue_size`).
        capacity: usize,
    },
    /// The client was shut down (or its worker is gone): no new events are accepted.
    Closed,
    /// An exception captured on the application's behalf (a panic, a failed request, a
    /// `tracing` error) was over the per-type rate limit
    /// ([`PostHogBuilder::exception_rate_limit`](crate::PostHogBuilder::exception_rate_limit)).
    RateLimited {
        /// The exception's type (its `$exception_list` entry's `type`).
        exception_type: String,
    },
    /// The event was accepted but its delivery failed (only from the waiting capture methods).
    Delivery(DeliveryError),
}

impl fmt::Display for CaptureError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CaptureError::EmptyEventName => f.write_str("event name is empty"),
            CaptureError::EmptyDistinctId => f.write_str("distinct id is empty"),
            CaptureError::InvalidProperty { key, reason } => {
                write!(f, "property `{key}` is invalid: {reason}")
            }
            CaptureError::InvalidArgument(what) => write!(f, "invalid argument: {what}"),
            CaptureError::EventTooLarge { size, limit } => write!(
                f,
                "event too large: {size} bytes serialized, PostHog accepts at most {limit}"
            ),
            CaptureError::QueueFull { capacity } => write!(
                f,
                "queue full: {capacity} events pending; the event was not captured"
            ),
            CaptureError::Closed => f.write_str("client is shut down: the event was not captured"),
            CaptureError::RateLimited { exception_type } => write!(
                f,
                "too many `{exception_type}` exceptions captured automatically: this one was dropped"
            ),
            CaptureError::Delivery(e) => fmt::Display::fmt(e, f),
        }
    }
}

impl std::error::Error for CaptureError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            CaptureError::Delivery(e) => Some(e),
            _ => None,
        }
    }
}

impl CaptureError {
    /// The reason label used in [`Stats`](crate::capture::Stats) and logs.
    pub fn reason(&self) -> &'static str {
        match self {
            CaptureError::EmptyEventName
            | CaptureError::EmptyDistinctId
            | CaptureError::InvalidProperty { .. }
            | CaptureError::InvalidArgument(_) => "invalid",
            CaptureError::EventTooLarge { .. } => "too_large",
            CaptureError::QueueFull { .. } => "queue_full",
            CaptureError::Closed => "closed",
            CaptureError::RateLimited { .. } => "rate_limited",
            CaptureError::Delivery(_) => "delivery",
        }
    }
}

/// A batch of events could not be delivered after every retry.
#[derive(Debug, Clone)]
pub struct DeliveryError {
    pub(crate) uuids: Arc<[Uuid]>,
    pub(crate) source: Arc<BoxError>,
}

impl DeliveryError {
    pub(crate) fn new(uuids: Arc<[Uuid]>, source: Arc<BoxError>) -> Self {
        DeliveryError { uuids, source }
    }

    /// The uuids of the events that were not delivered.
    pub fn uuids(&self) -> &[Uuid] {
        &self.uuids
    }

    /// The last error seen; downcast it to
    /// [`UnexpectedStatus`](crate::net::UnexpectedStatus) to read an HTTP status.
    pub fn error(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        &**self.source
    }
}

impl PartialEq for DeliveryError {
    fn eq(&self, other: &Self) -> bool {
        self.uuids == other.uuids && Arc::ptr_eq(&self.source, &other.source)
    }
}

impl Eq for DeliveryError {}

impl fmt::Display for DeliveryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} event(s) not delivered: {}",
            self.uuids.len(),
            self.source
        )
    }
}

impl std::error::Error for DeliveryError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&**self.source)
    }
}

/// What the `on_error` callback receives.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum ErrorReport {
    /// `capture` rejected an event; the same error was returned to the caller.
    Rejected(CaptureError),
    /// A batch failed definitively (retries exhausted, a non-retryable status, or the shutdown
    /// deadline passed).
    Delivery(DeliveryError),
    /// An accepted event was dropped by the worker before it was sent.
    Dropped {
        /// The event's uuid.
        uuid: Uuid,
        /// Why it was dropped.
        reason: DropReason,
    },
}

impl fmt::Display for ErrorReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ErrorReport::Rejected(e) => write!(f, "event rejected: {e}"),
            ErrorReport::Delivery(e) => fmt::Display::fmt(e, f),
            ErrorReport::Dropped { uuid, reason } => write!(f, "event {uuid} dropped: {reason}"),
        }
    }
}

impl std::error::Error for ErrorReport {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ErrorReport::Rejected(e) => Some(e),
            ErrorReport::Delivery(e) => Some(e),
            ErrorReport::Dropped { .. } => None,
        }
    }
}

/// Why the worker dropped an event it had accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum DropReason {
    /// After `before_send` and enrichment the event exceeded the per-event size limit.
    TooLarge {
        /// Its serialized size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// The `before_send` hook panicked.
    HookPanicked,
    /// The `before_send` hook returned an event `capture` would refuse (an empty name or
    /// distinct id, an invalid property): sent, it would make PostHog refuse its whole batch.
    /// (One it made too large is [`DropReason::TooLarge`].)
    Invalid(CaptureError),
    /// The event could not be serialized.
    Serialize(String),
}

impl fmt::Display for DropReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DropReason::TooLarge { size, limit } => {
                write!(
                    f,
                    "{size} bytes serialized, more than the {limit} byte limit"
                )
            }
            DropReason::HookPanicked => f.write_str("the before_send hook panicked"),
            DropReason::Invalid(e) => {
                write!(f, "the before_send hook returned an invalid event: {e}")
            }
            DropReason::Serialize(e) => write!(f, "could not serialize: {e}"),
        }
    }
}

/// Why [`PostHogBuilder::build`](crate::PostHogBuilder::build) failed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum BuildError {
    /// The project API key is empty or only whitespace. No longer returned: a blank key
    /// gives a disabled client (see [`PostHogBuilder::build`](crate::PostHogBuilder::build)).
    EmptyApiKey,
    /// The host is not an absolute `http://` or `https://` URL.
    InvalidHost(String),
    /// A setting is out of range.
    InvalidConfig(&'static str),
    /// `build()` was called outside a tokio runtime; use `build_pair()` or call it inside one.
    NoRuntime,
    /// The [spool](crate::PostHogBuilder::spool) could not be opened: another client holds
    /// it, or its directory cannot be used.
    #[cfg(feature = "spool")]
    #[cfg_attr(docsrs, doc(cfg(feature = "spool")))]
    Spool(SpoolError),
}

impl fmt::Display for BuildError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BuildError::EmptyApiKey => f.write_str("project API key is empty"),
            BuildError::InvalidHost(h) => {
                write!(f, "host `{h}` is not an absolute http:// or https:// URL")
            }
            BuildError::InvalidConfig(what) => write!(f, "invalid configuration: {what}"),
            BuildError::NoRuntime => f.write_str(
                "no tokio runtime: call build() inside a runtime, or use build_pair() and run the worker yourself",
            ),
            #[cfg(feature = "spool")]
            BuildError::Spool(e) => fmt::Display::fmt(e, f),
        }
    }
}

impl std::error::Error for BuildError {}

/// The time allowed for an operation elapsed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct DeadlineElapsed(pub(crate) Duration);

impl fmt::Display for DeadlineElapsed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "deadline of {:?} elapsed before delivery", self.0)
    }
}

impl std::error::Error for DeadlineElapsed {}

/// A property value that cannot be turned into JSON.
///
/// Returned when a value contains a floating-point NaN or infinity (JSON has
/// no representation for them), when it nests arrays and objects more than 100 levels deep,
/// when a map key is not something JSON can use as an object key, or when the value's
/// `Serialize` implementation fails.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PropertyError {
    message: Cow<'static, str>,
    too_deep: bool,
}

impl PropertyError {
    /// An error with the given message.
    pub(crate) fn new(message: impl Into<Cow<'static, str>>) -> PropertyError {
        PropertyError {
            message: message.into(),
            too_deep: false,
        }
    }

    /// The value nests arrays and objects more than `max_depth` levels deep.
    pub(crate) fn too_deep(max_depth: usize) -> PropertyError {
        PropertyError {
            message: Cow::Owned(format!(
                "property is nested more than {max_depth} levels deep (JSON parsers, PostHog's among them, refuse such documents)"
            )),
            too_deep: true,
        }
    }

    /// Whether the value was refused for its depth (the conversion stopped part way).
    pub(crate) fn is_too_deep(&self) -> bool {
        self.too_deep
    }

    /// What went wrong, in words; the same text as the `Display` output.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for PropertyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for PropertyError {}

/// Why a spool could not be opened.
#[cfg(feature = "spool")]
#[cfg_attr(docsrs, doc(cfg(feature = "spool")))]
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SpoolError {
    /// Another client (in this process or another) holds the spool's lock.
    Locked {
        /// The spool's directory.
        path: std::path::PathBuf,
    },
    /// The directory or one of its files could not be created, read or locked.
    Io {
        /// The spool's directory.
        path: std::path::PathBuf,
        /// What failed, with the operating system's message.
        message: String,
    },
}

#[cfg(feature = "spool")]
impl fmt::Display for SpoolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SpoolError::Locked { path } => write!(
                f,
                "spool {} is in use by another client (its lock is held); give each client its own spool directory",
                path.display()
            ),
            SpoolError::Io { path, message } => {
                write!(f, "spool {}: {message}", path.display())
            }
        }
    }
}

#[cfg(feature = "spool")]
impl std::error::Error for SpoolError {}
