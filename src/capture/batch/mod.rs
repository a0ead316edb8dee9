//! Middleware that queues events and sends them in batches: a bounded queue in front, a
//! background worker behind.
//!
//! [`Batch`] is the handle producers use: [`Batch::try_capture`] never blocks (a full queue is
//! an error the caller sees), and as a `Service<Event>` it applies backpressure in `poll_ready`
//! and resolves when the event's batch was delivered. The [`Worker`] serializes events, closes
//! a batch at `flush_at` events, after `flush_interval`, at `max_batch_bytes`, or on
//! [`Batch::flush`], and sends it through the inner `Service<EncodedBatch>` (retry, timeout,
//! transport). Up to `max_in_flight` batches are sent at once, so one slow request never stalls
//! the others.
//!
//! Like tower's `Buffer`, [`Batch::new`] spawns the worker on the current tokio runtime and
//! [`Batch::pair`] hands it back to run yourself. The worker stops once every handle is gone
//! and the queue is delivered; dropping a handle never blocks.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use posthog_tower::{capture::{BatchConfig, BatchLayer, EncodedBatch}, Event};
//! use tower::{Layer, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! // The inner service gets whole batches; here it just counts them.
//! let sink = service_fn(|batch: EncodedBatch| async move {
//!     Ok::<_, std::convert::Infallible>(batch.len())
//! });
//! let batch = BatchLayer::new(BatchConfig::new().flush_at(10)).layer(sink);
//! for i in 0..25 {
//!     batch.try_capture(Event::new("tick", "worker-1").property("i", i)).unwrap();
//! }
//! let report = batch.flush().await;
//! assert_eq!(report.delivered, 25);
//! # }
//! ```

mod config;
mod layer;
mod message;
mod service;
mod worker;

pub use config::{BatchConfig, BeforeSend, OnError};
pub use layer::BatchLayer;
pub use message::FlushReport;
pub use service::{Batch, ResponseFuture};
pub use worker::Worker;
