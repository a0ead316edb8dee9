//! `EncodedBatch`: serialized events on their way to `/batch/`.

use std::sync::Arc;

use bytes::Bytes;
use uuid::Uuid;

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
    }
}
