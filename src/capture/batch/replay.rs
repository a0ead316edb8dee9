//! Sends what the spool holds once PostHog answers again: the replayer, a task the worker
//! starts when the client has a spool.

use std::{collections::HashSet, sync::Arc, time::Duration};

use bytes::Bytes;
use tokio::{
    sync::watch,
    task::JoinSet,
    time::{sleep_until, Instant},
};
use tower::ServiceExt;
use tower_service::Service;
use uuid::Uuid;

use super::worker::{of_batch, refusals, Reporter};
use crate::{
    capture::{
        policy::classify,
        spool::{SegmentData, Spool},
        EncodedBatch, EventRefused, V1Failure,
    },
    BoxError, DeliveryError, ErrorReport,
};

/// The first wait before trying the spool again after PostHog failed to take it, doubled
/// after every failed try up to [`PROBE_MAX`].
const PROBE_FIRST: Duration = Duration::from_secs(1);
const PROBE_MAX: Duration = Duration::from_secs(60);

/// How a replay is sized: as the worker's batches.
#[derive(Clone, Copy)]
pub(super) struct Sizes {
    pub(super) events: usize,
    pub(super) bytes: usize,
    pub(super) in_flight: usize,
}

/// `None` while the worker runs; `Some(deadline)` once it ended (with the shutdown deadline,
/// if there is one).
type Stop = Option<Option<Instant>>;

/// The running replayer.
pub(super) struct Replay {
    stop: watch::Sender<Stop>,
    task: tokio::task::JoinHandle<()>,
}

impl Replay {
    pub(super) fn start<S>(
        service: S,
        spool: Arc<Spool>,
        reporter: Reporter,
        sizes: Sizes,
    ) -> Replay
    where
        S: Service<EncodedBatch> + Clone + Send + 'static,
        S::Error: Into<BoxError> + Send,
        S::Future: Send + 'static,
        S::Response: Send + 'static,
    {
        let (stop, rx) = watch::channel(None);
        let task = tokio::spawn(run(service, spool, reporter, sizes, rx));
        Replay { stop, task }
    }

    /// The worker ended: finish what can still be sent (until `deadline`, and only while
    /// PostHog answers), then stop.
    pub(super) async fn finish(self, deadline: Option<Instant>) {
        self.stop.send_replace(Some(deadline));
        let _ = self.task.await;
    }
}

enum Outcome {
    /// The spool is empty.
    Drained,
    /// PostHog did not take a batch (an outage): what was not sent stays on disk.
    Outage,
    /// The shutdown deadline passed.
    Stopped,
}

async fn run<S>(
    mut service: S,
    spool: Arc<Spool>,
    reporter: Reporter,
    sizes: Sizes,
    mut stop: watch::Receiver<Stop>,
) where
    S: Service<EncodedBatch> + Clone + Send + 'static,
    S::Error: Into<BoxError> + Send,
    S::Future: Send + 'static,
    S::Response: Send + 'static,
{
    let mut backoff = PROBE_FIRST;
    // Set after a failed try: when to try again.
    let mut probe: Option<Instant> = None;
    let mut in_outage = false;
    // What an earlier run left is sent first.
    let mut attempt = spool.has_pending();
    loop {
        let stopping = *stop.borrow_and_update();
        if let Some(deadline) = stopping {
            let late = deadline.is_some_and(|at| Instant::now() >= at);
            if in_outage || late || !spool.has_pending() {
                return;
            }
            attempt = true;
        }
        if attempt {
            attempt = false;
            match drain(&mut service, &spool, &reporter, sizes, &mut stop).await {
                Outcome::Drained => {
                    backoff = PROBE_FIRST;
                    probe = None;
                    in_outage = false;
                }
                Outcome::Outage => {
                    in_outage = true;
                    probe = Some(Instant::now() + backoff);
                    backoff = (backoff * 2).min(PROBE_MAX);
                }
                Outcome::Stopped => return,
            }
            continue;
        }
        if probe.is_none() && spool.has_pending() {
            // Events were spooled since the last try: probe PostHog in a while even if no
            // batch of new events succeeds first.
            probe = Some(Instant::now() + backoff);
        }
        tokio::select! {
            () = spool.wake.notified() => attempt = spool.has_pending(),
            () = spool.spilled.notified() => {
                // Probed by the check above on the next turn.
            }
            () = sleep_until(probe.unwrap_or_else(Instant::now)), if probe.is_some() => {
                probe = None;
                attempt = spool.has_pending();
            }
            changed = stop.changed() => {
                if changed.is_err() {
                    return;
                }
            }
        }
    }
}

/// What became of one replayed batch.
struct Sent {
    index: usize,
    /// Events to keep on disk (PostHog was unreachable or answered a retryable failure).
    keep: Vec<Uuid>,
}

/// Sends segments, oldest first, until the spool is empty, PostHog fails to take a batch, or
/// the shutdown deadline passes.
async fn drain<S>(
    // `&mut`: `&S` would need `S: Sync` to be held across an await.
    service: &mut S,
    spool: &Arc<Spool>,
    reporter: &Reporter,
    sizes: Sizes,
    stop: &mut watch::Receiver<Stop>,
) -> Outcome
where
    S: Service<EncodedBatch> + Clone + Send + 'static,
    S::Error: Into<BoxError> + Send,
    S::Future: Send + 'static,
    S::Response: Send + 'static,
{
    loop {
        let Some(segment) = spool.take() else {
            return Outcome::Drained;
        };
        let read = {
            let spool = spool.clone();
            tokio::task::spawn_blocking(move || spool.read(segment)).await
        };
        let data = match read {
            Ok(Ok(data)) => data,
            Ok(Err(e)) => {
                tracing::error!(error = %e, "posthog: cannot read a spool segment; will try again");
                spool.untake(segment);
                return Outcome::Outage;
            }
            Err(e) => {
                tracing::error!(error = %e, "posthog: reading a spool segment failed; will try again");
                spool.untake(segment);
                return Outcome::Outage;
            }
        };
        if data.damaged > 0 {
            reporter.stats.spool_damaged(data.damaged);
        }
        let batches = batches(&data, sizes);
        let mut started = vec![false; batches.len()];
        let mut done = vec![false; batches.len()];
        let mut keep: HashSet<Uuid> = HashSet::new();
        let mut tasks = JoinSet::new();
        let mut next = 0;
        let mut outage = false;
        let mut stopped = false;
        loop {
            while !outage && tasks.len() < sizes.in_flight && next < batches.len() {
                let batch = batches[next].clone();
                started[next] = true;
                tasks.spawn(send(service.clone(), batch, reporter.clone(), next));
                next += 1;
            }
            if tasks.is_empty() {
                break;
            }
            let deadline = stop.borrow().flatten();
            tokio::select! {
                joined = tasks.join_next() => match joined {
                    Some(Ok(sent)) => {
                        done[sent.index] = true;
                        if !sent.keep.is_empty() {
                            outage = true;
                            keep.extend(sent.keep);
                        }
                    }
                    // A panicked sending task: keep its batch (not marked done).
                    Some(Err(_)) => outage = true,
                    None => {}
                },
                () = sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => {
                    tasks.abort_all();
                    // A task that finished before the abort counted its batch: keep its
                    // outcome, so its events are not kept on disk as well.
                    while let Some(joined) = tasks.join_next().await {
                        if let Ok(sent) = joined {
                            done[sent.index] = true;
                            keep.extend(sent.keep);
                        }
                    }
                    stopped = true;
                    break;
                }
                _ = stop.changed() => {}
            }
        }
        if !outage && !stopped {
            spool.remove(segment);
            continue;
        }
        // Keep what was not settled: rewrite it into a new segment, then delete this one (a
        // crash between the two may send those events twice; PostHog dedups by uuid).
        for (i, batch) in batches.iter().enumerate() {
            if !started[i] || !done[i] {
                keep.extend(batch.uuids().iter().copied());
            }
        }
        let kept = data
            .records
            .iter()
            .filter(|r| keep.contains(&r.uuid))
            .map(|r| (r.uuid, data.json(r)));
        match spool.append_unbounded(kept) {
            Ok(_) => spool.remove(segment),
            // The segment stays as it is: what it holds is sent again later.
            Err(_) => spool.untake(segment),
        }
        return if stopped {
            Outcome::Stopped
        } else {
            Outcome::Outage
        };
    }
}

/// The segment's records in batches of the worker's size.
fn batches(data: &SegmentData, sizes: Sizes) -> Vec<EncodedBatch> {
    let mut out = Vec::new();
    let mut buf = Vec::new();
    let mut ends = Vec::new();
    let mut uuids = Vec::new();
    for record in &data.records {
        let json = data.json(record);
        if !uuids.is_empty()
            && (uuids.len() >= sizes.events || buf.len() + 1 + json.len() > sizes.bytes)
        {
            out.push(EncodedBatch::from_parts(
                Bytes::from(std::mem::take(&mut buf)),
                std::mem::take(&mut ends),
                std::mem::take(&mut uuids),
            ));
        }
        if !uuids.is_empty() {
            buf.push(b',');
        }
        buf.extend_from_slice(json);
        ends.push(buf.len() as u32);
        uuids.push(record.uuid);
    }
    if !uuids.is_empty() {
        out.push(EncodedBatch::from_parts(Bytes::from(buf), ends, uuids));
    }
    out
}

type Refusals = Vec<(Uuid, EventRefused)>;

/// Sends one replayed batch (through the worker's stack: retries, timeout, transport) and
/// counts what became of it.
async fn send<S>(service: S, batch: EncodedBatch, reporter: Reporter, index: usize) -> Sent
where
    S: Service<EncodedBatch> + Clone + Send + 'static,
    S::Error: Into<BoxError> + Send,
    S::Future: Send + 'static,
    S::Response: Send + 'static,
{
    let result = service.oneshot(batch.clone()).await.map_err(Into::into);
    let (refused, failed): (Refusals, Option<(Vec<Uuid>, BoxError)>) = match result {
        Ok(response) => (of_batch(refusals(response), &batch), None),
        Err(error) => match error.downcast::<V1Failure>() {
            Ok(failure) => {
                let V1Failure {
                    refused,
                    failed,
                    source,
                } = *failure;
                (of_batch(refused, &batch), Some((failed.to_vec(), source)))
            }
            Err(error) => (Vec::new(), Some((batch.uuids().to_vec(), error))),
        },
    };
    // A `retry` left after the last attempt: PostHog wants the event later; it stays.
    let (retry, refused): (Refusals, Refusals) = refused
        .into_iter()
        .partition(|(_, reason)| reason.result() == "retry");
    let mut keep: Vec<Uuid> = retry.into_iter().map(|(uuid, _)| uuid).collect();
    let mut given_up = refused.len();
    for (uuid, reason) in refused {
        let error = DeliveryError::new(Arc::new([uuid]), Arc::new(Box::new(reason)));
        tracing::error!(error = %error, "posthog: spooled event refused");
        reporter.tell(&ErrorReport::Delivery(error));
    }
    if let Some((uuids, source)) = failed {
        if classify(&source).is_some() {
            keep.extend(uuids);
        } else {
            given_up += uuids.len();
            let error = DeliveryError::new(uuids.into(), Arc::new(source));
            tracing::error!(error = %error, "posthog: spooled events not delivered");
            reporter.tell(&ErrorReport::Delivery(error));
        }
    }
    let delivered = batch
        .len()
        .saturating_sub(given_up)
        .saturating_sub(keep.len());
    if given_up > 0 {
        reporter.stats.spool_failed(given_up as u64);
    }
    if delivered > 0 {
        reporter.stats.spool_replayed(delivered as u64);
    }
    Sent { index, keep }
}
