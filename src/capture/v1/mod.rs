//! Capture v1: `POST /i/v1/analytics/events`, with per-event results and partial retries.
//!
//! [`V1Transport`] sends an [`EncodedBatch`](super::EncodedBatch) with the v1 headers
//! (`Authorization: Bearer`, `PostHog-Sdk-Info`, `PostHog-Attempt`, `PostHog-Request-Id`,
//! `PostHog-Request-Timestamp`) and answers with the [`EventResults`] PostHog gave;
//! [`V1RetryPolicy`] sends again only the events whose result was `retry`, in a smaller
//! request with the same request id, and settles the others. The
//! [`Batch`](super::Batch) worker counts `drop`, `limited` and any other refusal as failed
//! ([`EventRefused`], [`Stats::refused`](super::Stats::refused)).
//!
//! # Example
//!
//! ```no_run
//! use std::time::Duration;
//! use posthog_tower::capture::{BatchConfig, BatchLayer, Compression, V1RetryPolicy, V1Transport};
//! use tower::ServiceBuilder;
//!
//! # #[tokio::main]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let batch = ServiceBuilder::new()
//!     .layer(BatchLayer::new(BatchConfig::new()))
//!     .retry(V1RetryPolicy::new(3))
//!     .timeout(Duration::from_secs(15))
//!     .service(V1Transport::new("https://eu.i.posthog.com", "phc_key")?.compression(Compression::Gzip));
//! batch.try_capture(posthog_tower::Event::new("job finished", "worker-7"))?;
//! batch.shutdown(Duration::from_secs(10)).await;
//! # Ok(())
//! # }
//! ```

mod policy;
mod results;
mod transport;

pub use policy::V1RetryPolicy;
pub use results::{EventRefused, EventResults, V1Failure};
pub use transport::{V1Transport, V1TransportFuture};

/// The capture protocol a [`PostHog`](crate::PostHog) client speaks.
///
/// # Example
///
/// ```
/// use posthog_tower::capture::CaptureProtocol;
///
/// let client = posthog_tower::PostHog::builder("phc_project_key")
///     .capture_protocol(CaptureProtocol::V1)
///     .disabled(true)
///     .build()
///     .unwrap();
/// # let _ = client;
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CaptureProtocol {
    /// `POST /batch/` with the API key in the body (the default; every PostHog supports it).
    #[default]
    V0,
    /// `POST /i/v1/analytics/events`: the key in `Authorization`, per-event results, partial
    /// retries, and every [`Compression`](super::Compression).
    V1,
}
