//! The client outside tokio: its worker on a runtime of its own thread, and `flush` and
//! `shutdown` without `.await`.

use std::{future::Future, time::Duration};

use super::{PostHog, PostHogBuilder};
use crate::{capture::FlushReport, BuildError};

impl PostHogBuilder {
    /// Builds the client with its worker on a thread of its own (`posthog-worker`, a
    /// single-threaded tokio runtime), for programs that do not run tokio: a CLI tool, a
    /// synchronous service. `capture` is synchronous already; deliver with
    /// [`PostHog::flush_blocking`] and [`PostHog::shutdown_blocking`]. The thread ends when
    /// the client is shut down (or every handle to it is dropped).
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// use posthog_tower::{Event, PostHog};
    ///
    /// fn main() -> Result<(), Box<dyn std::error::Error>> {
    ///     let posthog = PostHog::builder("phc_project_key").build_with_own_runtime()?;
    ///     posthog.capture(Event::new("cli command run", "user-42").property("command", "sync"))?;
    ///     posthog.shutdown_blocking(Duration::from_secs(5));
    ///     Ok(())
    /// }
    /// ```
    pub fn build_with_own_runtime(self) -> Result<PostHog, BuildError> {
        let (client, worker) = self.build_pair()?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|_| BuildError::InvalidConfig("could not start the worker's runtime"))?;
        std::thread::Builder::new()
            .name("posthog-worker".into())
            .spawn(move || runtime.block_on(worker))
            .map_err(|_| BuildError::InvalidConfig("could not start the worker's thread"))?;
        Ok(client)
    }
}

impl PostHog {
    /// [`flush`](Self::flush) for synchronous code: blocks until everything captured before
    /// it was delivered or definitively failed.
    ///
    /// Call it where no tokio runtime runs (with a client from
    /// [`build_with_own_runtime`](PostHogBuilder::build_with_own_runtime), or whose worker
    /// runs on a multi-thread runtime). From async code, use `flush().await`: blocking a
    /// single-threaded runtime that runs the client's worker would wait forever.
    ///
    /// ```no_run
    /// # fn f(posthog: posthog_tower::PostHog) {
    /// let report = posthog.flush_blocking();
    /// eprintln!("{} delivered, {} failed", report.delivered, report.failed);
    /// # }
    /// ```
    pub fn flush_blocking(&self) -> FlushReport {
        let posthog = self.clone();
        block_on(async move { posthog.flush().await })
    }

    /// [`shutdown`](Self::shutdown) for synchronous code: delivers what is queued, waiting at
    /// most `deadline`, and stops the worker (and its thread, for a client from
    /// [`build_with_own_runtime`](PostHogBuilder::build_with_own_runtime)). See
    /// [`flush_blocking`](Self::flush_blocking) for where to call it.
    ///
    /// ```no_run
    /// # fn f(posthog: posthog_tower::PostHog) {
    /// posthog.shutdown_blocking(std::time::Duration::from_secs(5));
    /// # }
    /// ```
    pub fn shutdown_blocking(&self, deadline: Duration) -> FlushReport {
        let posthog = self.clone();
        block_on(async move { posthog.shutdown(deadline).await })
    }
}

/// Runs `future` to completion on a runtime of its own: on this thread, or, inside a runtime
/// (where blocking on another one is not allowed), on a thread of its own.
fn block_on<F>(future: F) -> FlushReport
where
    F: Future<Output = FlushReport> + Send,
{
    let run = move || match tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
    {
        Ok(runtime) => runtime.block_on(future),
        Err(error) => {
            tracing::error!(%error, "posthog: no runtime to wait for delivery on");
            FlushReport::default()
        }
    };
    if tokio::runtime::Handle::try_current().is_err() {
        return run();
    }
    std::thread::scope(|scope| {
        std::thread::Builder::new()
            .name("posthog-flush".into())
            .spawn_scoped(scope, run)
            .ok()
            .and_then(|thread| thread.join().ok())
            .unwrap_or_default()
    })
}
