//! `EncodedBatch`: serialized events on their way to `/batch/`.

use std::sync::Arc;

use bytes::Bytes;
use uuid::Uuid;

use crate::time::Timestamp;

/// A batch of events, already serialized, as the [`Batch`](super::Batch) worker hands it to
/// the service below it.
///
/// It holds the events' JSON objects joined by commas (the inside of the `batch` array), so a
/// transport only adds the envelope. Cloning is cheap (reference counted), which is what
/// `tower::retry` needs: the same bytes, uuids and timestamps go out on every attempt.
#[derive(Clone, Debug)]
pub struct EncodedBatch {
    events: Bytes,
    /// End offset of each event in `events`.
    ends: Arc<[u32]>,
    uuids: Arc<[Uuid]>,
    /// Names the request on the wire (capture v1's `PostHog-Request-Id`): new for every
    /// batch, kept by its retries.
    request_id: Uuid,
    /// 1 for the first attempt, raised by the retry policy for each retry.
    attempt: u32,
    /// When the batch was closed (capture v1's `created_at`).
    created_at: Timestamp,
}

impl EncodedBatch {
    /// Builds a batch from events already encoded as JSON objects.
    ///
    /// `events` are the objects joined by single commas; `ends[i]` is the offset just past
    /// event `i`. Used by custom batchers and tests; the worker builds batches itself.
    ///
    /// # Example
    ///
    /// ```
    /// use posthog_tower::capture::EncodedBatch;
    ///
    /// let a = r#"{"event":"a"}"#;
    /// let b = r#"{"event":"b"}"#;
    /// let batch = EncodedBatch::from_json_objects(&[a, b], &[uuid::Uuid::nil(), uuid::Uuid::max()]);
    /// assert_eq!(batch.len(), 2);
    /// assert_eq!(&batch.events_json()[..], br#"{"event":"a"},{"event":"b"}"#);
    /// ```
    pub fn from_json_objects(objects: &[&str], uuids: &[Uuid]) -> Self {
        let mut buf = Vec::new();
        let mut ends = Vec::with_capacity(objects.len());
        for (i, o) in objects.iter().enumerate() {
            if i > 0 {
                buf.push(b',');
            }
            buf.extend_from_slice(o.as_bytes());
            ends.push(buf.len() as u32);
        }
        EncodedBatch::from_parts(Bytes::from(buf), ends, uuids.to_vec())
    }

    pub(crate) fn from_parts(events: Bytes, ends: Vec<u32>, uuids: Vec<Uuid>) -> Self {
        debug_assert_eq!(ends.len(), uuids.len());
        EncodedBatch {
            events,
            ends: ends.into(),
            uuids: uuids.into(),
            request_id: crate::id::new_v4(),
            attempt: 1,
            created_at: Timestamp::from(std::time::SystemTime::now()),
        }
    }

    /// The request's id, sent by capture v1 as `PostHog-Request-Id`: new for every batch
    /// (and for each half of a split one), the same on every retry of it.
    pub fn request_id(&self) -> Uuid {
        self.request_id
    }

    /// Which attempt at sending this batch the next request is: 1 at first, then 2, 3, …
    /// (the retry policies raise it). Sent by capture v1 as `PostHog-Attempt`.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// When the batch was closed, sent by capture v1 as the body's `created_at`.
    pub fn created_at(&self) -> Timestamp {
        self.created_at
    }

    /// Marks the batch as the next attempt (for retry policies).
    /// Each event's uuid and JSON object, in order.
    pub(crate) fn events(&self) -> impl Iterator<Item = (Uuid, &[u8])> + '_ {
        let mut start = 0usize;
        self.uuids
            .iter()
            .zip(self.ends.iter())
            .map(move |(uuid, &end)| {
                let end = end as usize;
                let json = &self.events[start..end];
                // Skip the comma after this event.
                start = end + 1;
                (*uuid, json)
            })
    }

    pub(crate) fn next_attempt(&mut self) {
        self.attempt = self.attempt.saturating_add(1);
    }

    /// The events of this batch whose uuid `keep` accepts, in order, as the same request (same
    /// request id and attempt count): what a capture v1 partial retry sends again.
    ///
    /// # Example
    ///
    /// ```
    /// use posthog_tower::capture::EncodedBatch;
    /// use uuid::Uuid;
    ///
    /// let (a, b) = (Uuid::from_u128(1), Uuid::from_u128(2));
    /// let batch = EncodedBatch::from_json_objects(&[r#"{"e":1}"#, r#"{"e":2}"#], &[a, b]);
    /// let rest = batch.retain(|uuid| uuid == &b);
    /// assert_eq!(&rest.events_json()[..], br#"{"e":2}"#);
    /// assert_eq!(rest.request_id(), batch.request_id());
    /// ```
    pub fn retain(&self, mut keep: impl FnMut(&Uuid) -> bool) -> EncodedBatch {
        let mut events = Vec::with_capacity(self.events.len());
        let mut ends = Vec::new();
        let mut uuids = Vec::new();
        let mut start = 0usize;
        for (uuid, &end) in self.uuids.iter().zip(self.ends.iter()) {
            let end = end as usize;
            if keep(uuid) {
                if !events.is_empty() {
                    events.push(b',');
                }
                events.extend_from_slice(&self.events[start..end]);
                ends.push(events.len() as u32);
                uuids.push(*uuid);
            }
            // Skip the comma after this event.
            start = end + 1;
        }
        EncodedBatch {
            events: events.into(),
            ends: ends.into(),
            uuids: uuids.into(),
            request_id: self.request_id,
            attempt: self.attempt,
            created_at: self.created_at,
        }
    }

    /// Number of events.
    pub fn len(&self) -> usize {
        self.uuids.len()
    }

    /// `true` when the batch holds no event.
    pub fn is_empty(&self) -> bool {
        self.uuids.is_empty()
    }

    /// The events' JSON objects joined by commas.
    pub fn events_json(&self) -> &Bytes {
        &self.events
    }

    /// The events' uuids, in order.
    pub fn uuids(&self) -> &Arc<[Uuid]> {
        &self.uuids
    }

    /// Splits the batch into two halves (the first gets the smaller half), or returns `None`
    /// for a batch of fewer than two events. Used when PostHog answers `413 Payload Too Large`.
    pub fn split(&self) -> Option<(EncodedBatch, EncodedBatch)> {
        let n = self.len();
        if n < 2 {
            return None;
        }
        let mid = n / 2;
        let cut = self.ends[mid - 1] as usize;
        let left = EncodedBatch::from_parts(
            self.events.slice(..cut),
            self.ends[..mid].to_vec(),
            self.uuids[..mid].to_vec(),
        );
        // Skip the comma after the left half.
        let start = cut + 1;
        let right = EncodedBatch::from_parts(
            self.events.slice(start..),
            self.ends[mid..].iter().map(|e| e - start as u32).collect(),
            self.uuids[mid..].to_vec(),
        );
        Some((left, right))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_keeps_every_event_once() {
        let objects = [
            r#"{"a":1}"#,
            r#"{"b":22}"#,
            r#"{"c":333}"#,
            r#"{"d":4}"#,
            r#"{"e":5}"#,
        ];
        let uuids: Vec<Uuid> = (0..5u128).map(Uuid::from_u128).collect();
        let batch = EncodedBatch::from_json_objects(&objects, &uuids);
        let (l, r) = batch.split().expect("splits");
        assert_eq!(&l.events_json()[..], br#"{"a":1},{"b":22}"#);
        assert_eq!(&r.events_json()[..], br#"{"c":333},{"d":4},{"e":5}"#);
        assert_eq!(&l.uuids()[..], &uuids[..2]);
        assert_eq!(&r.uuids()[..], &uuids[2..]);
        let (rl, rr) = r.split().expect("splits again");
        assert_eq!(&rl.events_json()[..], br#"{"c":333}"#);
        assert_eq!(&rr.events_json()[..], br#"{"d":4},{"e":5}"#);
        assert!(rl.split().is_none());
        assert_ne!(l.request_id(), r.request_id());
    }

    #[test]
    fn retain_keeps_the_request() {
        let objects = [r#"{"a":1}"#, r#"{"b":22}"#, r#"{"c":333}"#];
        let uuids: Vec<Uuid> = (0..3u128).map(Uuid::from_u128).collect();
        let mut batch = EncodedBatch::from_json_objects(&objects, &uuids);
        batch.next_attempt();
        let odd = batch.retain(|u| u.as_u128() != 1);
        assert_eq!(&odd.events_json()[..], br#"{"a":1},{"c":333}"#);
        assert_eq!(&odd.uuids()[..], &[uuids[0], uuids[2]]);
        assert_eq!((odd.request_id(), odd.attempt()), (batch.request_id(), 2));
        let last = odd.retain(|u| u.as_u128() == 2);
        assert_eq!(&last.events_json()[..], br#"{"c":333}"#);
        assert!(batch.retain(|_| false).is_empty());
    }
}
