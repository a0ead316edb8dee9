use tokio::sync::oneshot;
use uuid::Uuid;

use crate::DeliveryError;

/// Tells a waiting producer what became of its event.
pub(crate) type Notify = oneshot::Sender<Result<Uuid, DeliveryError>>;

pub(crate) enum Message {
    /// An event, encoded by `capture` as the JSON object the batch carries (see
    /// [`Encoder::encode_owned`](crate::event::Encoder::encode_owned)): the worker copies it
    /// in as it is.
    Event {
        json: Vec<u8>,
        uuid: Uuid,
        notify: Option<Notify>,
    },
    /// A [`flush`](super::Batch::flush): answered once every event queued before it is
    /// settled. It takes none of the events' slots in the queue.
    Flush(oneshot::Sender<FlushReport>),
}

impl Message {
    /// Whether it holds an event (which took a slot in the queue).
    pub(crate) fn is_event(&self) -> bool {
        matches!(self, Message::Event { .. })
    }
}

/// What a [`flush`](super::Batch::flush) or [`shutdown`](super::Batch::shutdown) settled.
///
/// It counts the events accepted since the previous flush (or since the start) up to the
/// flush: how many PostHog acknowledged, how many failed definitively (each also reported to
/// `on_error`), how many were dropped before sending (by the `before_send` hook, or too
/// large once enriched), and how many were written to the spool (`PostHogBuilder::spool`,
/// feature `spool`) instead of failing: `delivered + failed + dropped + spooled` is every
/// event settled.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct FlushReport {
    /// Events PostHog acknowledged.
    pub delivered: u64,
    /// Events whose delivery failed definitively.
    pub failed: u64,
    /// Events dropped before sending.
    pub dropped: u64,
    /// Events written to the spool instead of failing (an outage, or the shutdown deadline).
    pub spooled: u64,
}

impl FlushReport {
    /// The counts of two flushes together (the client's two lanes).
    pub(crate) fn add(self, other: FlushReport) -> FlushReport {
        FlushReport {
            delivered: self.delivered + other.delivered,
            failed: self.failed + other.failed,
            dropped: self.dropped + other.dropped,
            spooled: self.spooled + other.spooled,
        }
    }
}
