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
    /// An event its producer already wrote as JSON with the pipeline's encoder (see
    /// [`Batch::try_capture_encoded`](super::Batch::try_capture_encoded)): the worker copies
    /// it into the batch as it is.
    Encoded { json: Vec<u8>, uuid: Uuid },
    /// A [`flush`](super::Batch::flush): answered once every event queued before it is
    /// settled. It takes no slot in the queue.
    Flush(oneshot::Sender<FlushReport>),
}

impl Message {
    /// Whether it holds an event (which took a slot in the queue).
    pub(crate) fn is_event(&self) -> bool {
        !matches!(self, Message::Flush(_))
    }

    /// The uuid of the event, for reporting it lost; `None` for a flush request.
    pub(crate) fn uuid(&self) -> Option<Uuid> {
        match self {
            Message::Event { event, .. } => event.inner.uuid,
            Message::Encoded { uuid, .. } => Some(*uuid),
            Message::Flush(_) => None,
        }
    }
}

/// What a [`flush`](super::Batch::flush) or [`shutdown`](super::Batch::shutdown) settled.
///
/// It counts the events accepted since the previous flush (or since the start) up to the
/// flush: how many PostHog acknowledged, how many failed definitively (each also reported to
/// `on_error`), and how many were dropped before sending (by the `before_send` hook, or too
/// large once enriched).
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
