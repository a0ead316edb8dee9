//! Assemble the capture pipeline yourself with `tower::ServiceBuilder`, adding your own layers.
//!
//! ```text
//! cargo run --example custom_stack
//! ```
//!
//! The stack the client builds by default is
//! `Batch ─▶ Retry<RetryPolicy> ─▶ Timeout ─▶ CaptureTransport`. Here we build it by hand and
//! slip two layers of our own in: one that logs every attempt, and tower's `ConcurrencyLimit`.
//! Runs offline against the crate's mock PostHog.

use std::{
    sync::atomic::{AtomicUsize, Ordering},
    sync::Arc,
    time::Duration,
};

use posthog_tower::{
    capture::{
        BatchConfig, BatchLayer, CaptureTransport, EncodedBatch, RetryPolicy, StatsRecorder,
    },
    testing::{MockPostHog, MockResponse},
    Event, PostHog,
};
use tower::{limit::ConcurrencyLimitLayer, ServiceBuilder};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mock = MockPostHog::start().await?;
    // The first request fails, to show the retry layer at work.
    mock.enqueue("/batch/", MockResponse::status(503));

    // One recorder shared by every piece, so the stats are complete.
    let stats = StatsRecorder::new();
    let attempts = Arc::new(AtomicUsize::new(0));
    let seen = attempts.clone();

    // 1. The pipeline on its own: Batch is a tower service like any other.
    let batch = ServiceBuilder::new()
        .layer(BatchLayer::new(
            BatchConfig::new().flush_at(20).stats(stats.clone()),
        ))
        .retry(
            RetryPolicy::new(3)
                .base_delay(Duration::from_millis(50))
                .stats(stats.clone()),
        )
        // Our layer: it sees every attempt (retries included).
        .map_request(move |batch: EncodedBatch| {
            let n = seen.fetch_add(1, Ordering::Relaxed) + 1;
            println!("attempt {n}: a batch of {} events", batch.len());
            batch
        })
        .timeout(Duration::from_secs(5))
        .layer(ConcurrencyLimitLayer::new(2))
        .service(CaptureTransport::new(&mock.url(), "phc_example")?.stats(stats.clone()));

    for i in 0..50 {
        batch.try_capture(Event::new("job processed", "worker-1").property("job", i))?;
    }
    let report = batch.flush().await;
    println!(
        "hand-built stack: {} delivered, {} failed; {} attempts; stats {:?}\n",
        report.delivered,
        report.failed,
        attempts.load(Ordering::Relaxed),
        batch.stats()
    );

    // 2. The same kind of stack under the `PostHog` client, which keeps its full API.
    let builder = PostHog::builder("phc_example")
        .host(mock.url())
        .flush_at(10);
    let recorder = builder.stats_recorder();
    let stack = ServiceBuilder::new()
        .retry(RetryPolicy::new(3).stats(recorder.clone()))
        .map_request(|batch: EncodedBatch| {
            println!("client stack: sending {} events", batch.len());
            batch
        })
        .timeout(Duration::from_secs(5))
        .service(CaptureTransport::new(&mock.url(), "phc_example")?.stats(recorder));
    let posthog = builder.capture_stack(stack).build()?;
    for i in 0..15 {
        posthog.capture(Event::new("page rendered", "user-1").property("n", i))?;
    }
    posthog.alias("anon-1", "user-1")?;
    let report = posthog.shutdown(Duration::from_secs(5)).await;
    println!(
        "client with a custom stack: {} delivered; the mock holds {} events in all",
        report.delivered,
        mock.events().len()
    );
    Ok(())
}
