//! Capture: events go through a bounded queue into a batching worker, then retry, timeout and
//! an HTTP transport (`POST /batch/`, or capture v1's `POST /i/v1/analytics/events` with
//! [`V1Transport`] and [`V1RetryPolicy`]).
//!
//! Every piece is a tower component, so the pipeline the [`PostHog`](crate::PostHog) client
//! builds can also be assembled by hand:
//!
//! ```text
//! Batch (queue + worker) ─▶ Retry<RetryPolicy> ─▶ Timeout ─▶ CaptureTransport ─▶ POST {host}/batch/
//! ```
//!
//! With the cargo feature `spool`, the client's worker can also keep events that would fail in
//! an outage on disk and send them later (`PostHogBuilder::spool`; errors in `SpoolError`).
//!
//! # Example
//!
//! ```no_run
//! use std::time::Duration;
//! use posthog_tower::{capture::{BatchConfig, BatchLayer, CaptureTransport, RetryPolicy, StatsRecorder}, Event};
//! use tower::ServiceBuilder;
//!
//! # #[tokio::main]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let stats = StatsRecorder::new();
//! let batch = ServiceBuilder::new()
//!     .layer(BatchLayer::new(BatchConfig::new().flush_at(50).stats(stats.clone())))
//!     .retry(RetryPolicy::new(3).stats(stats.clone()))
//!     .timeout(Duration::from_secs(15))
//!     .service(CaptureTransport::new("https://eu.i.posthog.com", "phc_key")?.stats(stats));
//! batch.try_capture(Event::new("job finished", "worker-7"))?;
//! batch.shutdown(Duration::from_secs(10)).await;
//! # Ok(())
//! # }
//! ```

mod batch;
mod compression;
mod encoded;
mod policy;
pub(crate) mod spool;
mod stats;
mod transport;
mod v1;

pub use batch::{
    Batch, BatchConfig, BatchFuture, BatchLayer, BeforeSend, FlushReport, OnError, Worker,
};
pub use compression::Compression;
pub use encoded::EncodedBatch;
pub use policy::RetryPolicy;
#[cfg(feature = "spool")]
pub use spool::SpoolError;
pub use stats::{Dropped, Refused, Stats, StatsRecorder};
pub use transport::{CaptureTransport, TransportFuture, AI_BATCH_PATH};
pub use v1::{
    CaptureProtocol, EventRefused, EventResults, V1Failure, V1RetryPolicy, V1Transport,
    V1TransportFuture,
};
