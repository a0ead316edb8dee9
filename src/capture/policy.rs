//! `RetryPolicy`: when and how long to wait before sending a batch again.

use std::time::Duration;

use tokio::time::Sleep;
use tower::retry::Policy;

use super::{EncodedBatch, StatsRecorder};
use crate::{error::BoxError, net::UnexpectedStatus};

/// The capture retry policy, for `tower::retry::Retry`.
///
/// - **What is retried**: transport errors (connection refused or reset, TLS, DNS), timeouts
///   (`tower::timeout::error::Elapsed`), and the statuses 408, 429 and 5xx. Every other 4xx is
///   final: the request was understood and will not succeed by repetition (a 413 is handled
///   by the [`Batch`](super::Batch) worker, which splits the batch).
/// - **How long to wait**: exponential backoff from 1 s, doubling each attempt, capped at
///   30 s, with up to 25 % random jitter added (still capped at 30 s). A `Retry-After` from the
///   server is a floor, itself capped at 30 s.
/// - **How often**: `max_retries` retries after the first attempt (3 by default: 4 attempts).
///
/// The policy is cloned for every batch (as `tower::retry` does), so the attempt count is per
/// batch. The request is an [`EncodedBatch`], so every attempt sends the same events with the
/// same uuids and timestamps.
///
/// # Example
///
/// ```
/// use std::time::Duration;
/// use posthog_tower::capture::RetryPolicy;
///
/// let policy = RetryPolicy::new(5)
///     .base_delay(Duration::from_millis(200))
///     .max_delay(Duration::from_secs(10));
/// # let _ = policy;
/// ```
#[derive(Clone, Debug)]
pub struct RetryPolicy {
    pub(in crate::capture) max_retries: usize,
    attempt: usize,
    base: Duration,
    cap: Duration,
    pub(in crate::capture) stats: Option<StatsRecorder>,
}

impl RetryPolicy {
    /// A policy allowing `max_retries` retries.
    pub fn new(max_retries: usize) -> Self {
        RetryPolicy {
            max_retries,
            attempt: 0,
            base: Duration::from_secs(1),
            cap: Duration::from_secs(30),
            stats: None,
        }
    }

    /// The first delay (1 s by default).
    pub fn base_delay(mut self, base: Duration) -> Self {
        self.base = base;
        self
    }

    /// The largest delay, for backoff and for `Retry-After` (30 s by default).
    pub fn max_delay(mut self, cap: Duration) -> Self {
        self.cap = cap;
        self
    }

    /// Counts every retry in `stats`.
    pub fn stats(mut self, stats: StatsRecorder) -> Self {
        self.stats = Some(stats);
        self
    }

    /// The delay before retry number `retry` (0-based) with the given jitter in `[0, 1)`,
    /// honouring a `Retry-After` floor.
    pub(in crate::capture) fn delay(
        &self,
        retry: usize,
        jitter: f64,
        retry_after: Option<Duration>,
    ) -> Duration {
        let exp = self
            .base
            .saturating_mul(1u32.checked_shl(retry.min(31) as u32).unwrap_or(u32::MAX));
        let backoff = exp
            .mul_f64(1.0 + 0.25 * jitter.clamp(0.0, 1.0))
            .min(self.cap);
        let floor = retry_after.unwrap_or(Duration::ZERO).min(self.cap);
        backoff.max(floor)
    }
}

/// Whether `error` is worth retrying, and the server's `Retry-After` if it sent one.
///
/// `None`: final. `Some(retry_after)`: retry, no sooner than `retry_after`.
pub(crate) fn classify(error: &BoxError) -> Option<Option<Duration>> {
    if let Some(status) = error.downcast_ref::<UnexpectedStatus>() {
        let code = status.status().as_u16();
        return match code {
            408 | 429 | 500..=599 => Some(status.retry_after()),
            _ => None,
        };
    }
    // Timeouts, connection errors, TLS and DNS failures, and anything else from below the
    // transport are transient as far as we can tell.
    Some(None)
}

impl<Res> Policy<EncodedBatch, Res, BoxError> for RetryPolicy {
    type Future = Sleep;

    fn retry(
        &mut self,
        req: &mut EncodedBatch,
        result: &mut Result<Res, BoxError>,
    ) -> Option<Self::Future> {
        let error = result.as_ref().err()?;
        if self.attempt >= self.max_retries {
            return None;
        }
        let retry_after = classify(error)?;
        let jitter = (crate::id::random_u64() >> 11) as f64 / (1u64 << 53) as f64;
        let delay = self.delay(self.attempt, jitter, retry_after);
        diag!(
            attempt = self.attempt + 1,
            ?delay,
            error = %error,
            "posthog: retrying batch"
        );
        self.attempt += 1;
        req.next_attempt();
        if let Some(stats) = &self.stats {
            stats.retry(1);
        }
        Some(tokio::time::sleep(delay))
    }

    fn clone_request(&mut self, req: &EncodedBatch) -> Option<EncodedBatch> {
        Some(req.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::StatusCode;

    fn status(code: u16, retry_after: Option<u64>) -> BoxError {
        Box::new(UnexpectedStatus::new(
            StatusCode::from_u16(code).unwrap(),
            retry_after.map(Duration::from_secs),
        ))
    }

    #[test]
    fn what_is_retried() {
        for code in [408, 429, 500, 502, 503, 504, 599] {
            assert!(classify(&status(code, None)).is_some(), "{code} retried");
        }
        for code in [400, 401, 403, 404, 413, 422] {
            assert!(classify(&status(code, None)).is_none(), "{code} final");
        }
        let elapsed: BoxError = Box::new(tower::timeout::error::Elapsed::new());
        assert_eq!(classify(&elapsed), Some(None));
        assert_eq!(
            classify(&status(429, Some(7))),
            Some(Some(Duration::from_secs(7)))
        );
    }

    #[test]
    fn backoff_doubles_with_jitter_and_caps() {
        let p = RetryPolicy::new(10);
        assert_eq!(p.delay(0, 0.0, None), Duration::from_secs(1));
        assert_eq!(p.delay(1, 0.0, None), Duration::from_secs(2));
        assert_eq!(p.delay(2, 0.0, None), Duration::from_secs(4));
        assert_eq!(p.delay(0, 0.999, None), Duration::from_secs_f64(1.24975));
        assert_eq!(p.delay(5, 0.0, None), Duration::from_secs(30));
        assert_eq!(p.delay(60, 1.0, None), Duration::from_secs(30));
    }

    #[test]
    fn retry_after_is_a_capped_floor() {
        let p = RetryPolicy::new(3);
        assert_eq!(
            p.delay(0, 0.0, Some(Duration::from_secs(3))),
            Duration::from_secs(3)
        );
        assert_eq!(
            p.delay(2, 0.0, Some(Duration::from_secs(1))),
            Duration::from_secs(4)
        );
        assert_eq!(
            p.delay(0, 0.0, Some(Duration::from_secs(3600))),
            Duration::from_secs(30)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn stops_after_max_retries() {
        let mut p = RetryPolicy::new(2);
        let mut batch = EncodedBatch::from_json_objects(&[], &[]);
        let mut res: Result<(), BoxError> = Err(status(503, None));
        assert!(p.retry(&mut batch, &mut res).is_some());
        assert!(p.retry(&mut batch, &mut res).is_some());
        assert!(p.retry(&mut batch, &mut res).is_none());
        let mut ok: Result<(), BoxError> = Ok(());
        assert!(RetryPolicy::new(2).retry(&mut batch, &mut ok).is_none());
    }
}
