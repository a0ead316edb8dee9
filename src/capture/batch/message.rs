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
}

impl Message {
    /// The uuid of the event, for reporting it lost.
    pub(crate) fn uuid(&self) -> Uuid {
        match self {
            Message::Event { event, .. } => event.uuid.unwrap_or_else(crate::uuid7::new_v7),
            Message::Encoded { uuid, .. } => *uuid,
        }
    }
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
