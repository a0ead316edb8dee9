//! `V1RetryPolicy`: capture v1's retries, whole and partial.

use std::{collections::HashSet, time::Duration};

use tokio::time::Sleep;
use tower::retry::Policy;
use uuid::Uuid;

use super::{EventRefused, EventResults, V1Failure};
use crate::{
    capture::{policy::classify, EncodedBatch, RetryPolicy, StatsRecorder},
    BoxError,
};

/// The capture v1 retry policy, for `tower::retry::Retry` over a
/// [`V1Transport`](super::V1Transport).
///
/// - **Whole retries**: as [`RetryPolicy`]: transport errors, timeouts, 408, 429 and 5xx are
///   retried; every other status is final (on v1 a 413 is final too: the batch is not split).
/// - **Partial retries**: a 200 whose per-event results hold `retry` sends those events
///   again, and only those, as the same request (same `PostHog-Request-Id`, same uuids, next
///   `PostHog-Attempt`); `ok` events are delivered, `drop`, `limited` and unknown results are
///   refused for good.
/// - **Delays**: exponential backoff from 100 ms, doubling, capped at 30 s, with up to 25 %
///   jitter; the answer's `Retry-After` (on an error or on a partial 200) is a floor.
/// - **How often**: `max_retries` retries after the first attempt, whole and partial alike.
///   Events still `retry` when none is left are refused with the result `retry`.
///
/// The final answer carries what every attempt settled: [`EventResults`] on success, a
/// [`V1Failure`] error (with the events refused earlier) otherwise.
///
/// # Example
///
/// ```
/// use std::time::Duration;
/// use posthog_tower::capture::V1RetryPolicy;
///
/// let policy = V1RetryPolicy::new(3).max_delay(Duration::from_secs(10));
/// # let _ = policy;
/// ```
#[derive(Clone, Debug)]
pub struct V1RetryPolicy {
    backoff: RetryPolicy,
    attempt: usize,
    /// Refused on earlier attempts of this batch.
    refused: Vec<(Uuid, EventRefused)>,
}

impl V1RetryPolicy {
    /// A policy allowing `max_retries` retries (backoff from 100 ms).
    pub fn new(max_retries: usize) -> Self {
        V1RetryPolicy {
            backoff: RetryPolicy::new(max_retries).base_delay(Duration::from_millis(100)),
            attempt: 0,
            refused: Vec::new(),
        }
    }

    /// The first delay (100 ms by default).
    pub fn base_delay(mut self, base: Duration) -> Self {
        self.backoff = self.backoff.base_delay(base);
        self
    }

    /// The largest delay, for backoff and for `Retry-After` (30 s by default).
    pub fn max_delay(mut self, cap: Duration) -> Self {
        self.backoff = self.backoff.max_delay(cap);
        self
    }

    /// Counts every retry (whole or partial) in `stats`.
    pub fn stats(mut self, stats: StatsRecorder) -> Self {
        self.backoff = self.backoff.stats(stats);
        self
    }

    fn next(&mut self, req: &mut EncodedBatch, retry_after: Option<Duration>) -> Sleep {
        let jitter = (crate::id::random_u64() >> 11) as f64 / (1u64 << 53) as f64;
        let delay = self.backoff.delay(self.attempt, jitter, retry_after);
        self.attempt += 1;
        req.next_attempt();
        if let Some(stats) = &self.backoff.stats {
            stats.retry(1);
        }
        diag!(
            attempt = req.attempt(),
            events = req.len(),
            ?delay,
            "posthog: retrying v1 batch"
        );
        tokio::time::sleep(delay)
    }
}

impl Policy<EncodedBatch, EventResults, BoxError> for V1RetryPolicy {
    type Future = Sleep;

    fn retry(
        &mut self,
        req: &mut EncodedBatch,
        result: &mut Result<EventResults, BoxError>,
    ) -> Option<Self::Future> {
        let left = self.attempt < self.backoff.max_retries;
        match result {
            Ok(results) => {
                self.refused.append(&mut results.refused);
                if !results.retry.is_empty() {
                    if left {
                        let again: HashSet<Uuid> = results.retry.drain(..).collect();
                        *req = req.retain(|uuid| again.contains(uuid));
                        if !req.is_empty() {
                            return Some(self.next(req, results.retry_after));
                        }
                    } else {
                        let refused = EventRefused::new("retry", None);
                        self.refused
                            .extend(results.retry.drain(..).map(|u| (u, refused.clone())));
                    }
                }
                results.refused = std::mem::take(&mut self.refused);
                None
            }
            Err(error) => {
                if left {
                    if let Some(retry_after) = classify(error) {
                        return Some(self.next(req, retry_after));
                    }
                }
                let source = std::mem::replace(error, "taken".into());
                *error = Box::new(V1Failure {
                    refused: std::mem::take(&mut self.refused),
                    failed: req.uuids().clone(),
                    source,
                });
                None
            }
        }
    }

    fn clone_request(&mut self, req: &EncodedBatch) -> Option<EncodedBatch> {
        Some(req.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::UnexpectedStatus;
    use http::StatusCode;

    fn batch(n: u128) -> EncodedBatch {
        let uuids: Vec<Uuid> = (0..n).map(Uuid::from_u128).collect();
        let objects: Vec<String> = (0..n).map(|i| format!("{{\"e\":{i}}}")).collect();
        let objects: Vec<&str> = objects.iter().map(String::as_str).collect();
        EncodedBatch::from_json_objects(&objects, &uuids)
    }

    #[tokio::test(start_paused = true)]
    async fn partial_retry_keeps_the_request_and_settles_the_rest() {
        let mut p = V1RetryPolicy::new(3);
        let mut req = batch(3);
        let id = req.request_id();
        let mut res: Result<EventResults, BoxError> = Ok(EventResults {
            refused: vec![(Uuid::from_u128(1), EventRefused::new("drop", None))],
            retry: vec![Uuid::from_u128(2)],
            retry_after: Some(Duration::from_secs(3)),
        });
        let start = tokio::time::Instant::now();
        p.retry(&mut req, &mut res).expect("retries").await;
        assert!(start.elapsed() >= Duration::from_secs(3));
        assert_eq!(&req.uuids()[..], &[Uuid::from_u128(2)]);
        assert_eq!((req.request_id(), req.attempt()), (id, 2));
        assert_eq!(&req.events_json()[..], b"{\"e\":2}");
        // The retry fails for good: the earlier refusal travels with the error.
        let mut err: Result<EventResults, BoxError> = Err(Box::new(UnexpectedStatus::new(
            StatusCode::BAD_REQUEST,
            None,
        )));
        assert!(p.retry(&mut req, &mut err).is_none());
        let failure = err.unwrap_err();
        let failure = failure.downcast_ref::<V1Failure>().expect("wrapped");
        assert_eq!(&failure.failed()[..], &[Uuid::from_u128(2)]);
        assert_eq!(failure.refused()[0].1.result(), "drop");
    }

    #[tokio::test(start_paused = true)]
    async fn retry_events_left_at_the_end_are_refused() {
        let mut p = V1RetryPolicy::new(0);
        let mut req = batch(2);
        let mut res: Result<EventResults, BoxError> = Ok(EventResults {
            retry: vec![Uuid::from_u128(0)],
            ..Default::default()
        });
        assert!(p.retry(&mut req, &mut res).is_none());
        let results = res.unwrap();
        assert_eq!(results.refused()[0].1.result(), "retry");
        assert!(results.to_retry().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn whole_retries_back_off_from_100ms() {
        let mut p = V1RetryPolicy::new(3);
        let mut req = batch(1);
        let mut err: Result<EventResults, BoxError> = Err(Box::new(UnexpectedStatus::new(
            StatusCode::SERVICE_UNAVAILABLE,
            None,
        )));
        let start = tokio::time::Instant::now();
        p.retry(&mut req, &mut err).expect("retries").await;
        let waited = start.elapsed();
        assert!(waited >= Duration::from_millis(100) && waited <= Duration::from_millis(125));
        assert_eq!(req.attempt(), 2);
        let mut too_large: Result<EventResults, BoxError> = Err(Box::new(UnexpectedStatus::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            None,
        )));
        assert!(p.retry(&mut req, &mut too_large).is_none());
    }
}
