use tokio::sync::oneshot;
use uuid::Uuid;

use crate::{DeliveryError, Event};

/// Tells a waiting producer what became of its event.
pub(crate) type Notify = oneshot::Sender<Result<Uuid, DeliveryError>>;

pub(crate) enum Message {
    Event {
        event: Event,
        notify: Option<Notify>,
    },
}

/// What a [`flush`](super::Batch::flush) or [`shutdown`](super::Batch::shutdown) settled.
///
/// It counts the events accepted since the previous flush (or since the start) up to the
/// flush: how many PostHog acknowledged, how many failed definitively (each also reported to
/// `on_error`), and how many the worker dropped (`before_send`, or too large once enriched).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct FlushReport {
    /// Events PostHog acknowledged.
    pub delivered: u64,
    /// Events whose delivery failed definitively.
    pub failed: u64,
    /// Events dropped before sending.
    pub dropped: u64,
}
