//! Counters for everything the capture pipeline does, readable at any time.

use std::sync::{
    atomic::{AtomicU64, Ordering::Relaxed},
    Arc,
};

/// A snapshot of the capture pipeline's counters, from
/// [`PostHog::stats`](crate::PostHog::stats) or [`Batch::stats`](super::Batch::stats).
///
/// Every event `capture` accepted ends up `delivered`, `failed`, `spooled` or in one of the
/// worker's `dropped` reasons (or is still queued or in flight); every event it refused is
/// counted in one of the rejection reasons. Nothing disappears without a count.
///
/// # The spool
///
/// With a spool (`PostHogBuilder::spool`, feature `spool`), an event that would have failed
/// in an outage (or was still undelivered at the shutdown deadline) is written to disk and
/// counted in `spooled` instead of `failed`: for the events this client captured,
/// `tried = delivered + failed + dropped + spooled` holds at every flush report.
///
/// Events read back from the spool (written by this client or by an earlier one) are a
/// separate flow with counters of their own: each ends in `spool_replayed` (PostHog
/// acknowledged it) or `spool_failed` (PostHog refused it for good; reported to `on_error`),
/// or stays on disk. They are never counted in `delivered` or `failed`, so the two flows add
/// up separately: events found on disk at open + `spooled` = `spool_replayed` +
/// `spool_failed` + events still on disk. Records found damaged on disk are counted in
/// `spool_damaged` (one per damaged region, which is usually one record).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Events accepted by `capture`.
    pub captured: u64,
    /// Events PostHog acknowledged.
    pub delivered: u64,
    /// Accepted events whose delivery failed definitively (reported to `on_error`).
    pub failed: u64,
    /// Of the `failed` events, those PostHog answered with a per-event result other than
    /// `ok` (capture v1), by result.
    pub refused: Refused,
    /// Events that were refused or dropped, by reason.
    pub dropped: Dropped,
    /// Retried HTTP attempts.
    pub retries: u64,
    /// HTTP requests sent (first attempts and retries).
    pub requests: u64,
    /// Batches being sent right now.
    pub batches_in_flight: u64,
    /// Events waiting in the queue.
    pub queue_depth: u64,
    /// Accepted events written to the spool instead of failing (see above); 0 without one.
    pub spooled: u64,
    /// Of the `failed` events, those that would have been spooled but did not fit the spool's
    /// size bound (or could not be written).
    pub spool_full: u64,
    /// Events read back from the spool and acknowledged by PostHog.
    pub spool_replayed: u64,
    /// Events read back from the spool that PostHog refused for good (reported to
    /// `on_error`).
    pub spool_failed: u64,
    /// Damaged regions (a torn or corrupt record) skipped while reading the spool.
    pub spool_damaged: u64,
    /// Flag evaluations for HTTP requests ([`RequestFlags`](crate::http::RequestFlags)) that
    /// failed and answered "off".
    pub flag_errors: u64,
    /// Flag definitions polls that went to PostHog directly because the
    /// [definitions cache](crate::flags::DefinitionsCache) (e.g. Redis) failed or timed out.
    /// Filled in by [`PostHog::stats`](crate::PostHog::stats); zero without a cache.
    pub definitions_cache_fallbacks: u64,
}

/// Events refused by `capture` or dropped by the worker, by reason.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Dropped {
    /// Refused: the queue was full.
    pub queue_full: u64,
    /// Refused: empty name or distinct id, or an invalid property.
    pub invalid: u64,
    /// Refused or dropped: larger than the limit serialized (900 KiB; 8 MiB on the AI lane).
    pub too_large: u64,
    /// Refused: the client was shut down.
    pub closed: u64,
    /// Dropped on purpose by the `before_send` hook (not an error).
    pub before_send: u64,
    /// Dropped because the `before_send` hook panicked.
    pub hook_panicked: u64,
    /// Refused: an exception captured on the application's behalf over its type's rate limit.
    pub rate_limited: u64,
}

/// Events a capture v1 answer refused one by one (each is also counted in
/// [`Stats::failed`]), by the result PostHog gave.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Refused {
    /// `drop`: PostHog will never accept the event.
    pub drop: u64,
    /// `limited`: the project is over a quota or rate limit.
    pub limited: u64,
    /// `retry` on the last attempt allowed, or a result this version does not know.
    pub other: u64,
}

impl Refused {
    /// All events counted here.
    pub fn total(&self) -> u64 {
        self.drop + self.limited + self.other
    }
}

impl Dropped {
    /// All events counted here.
    pub fn total(&self) -> u64 {
        self.queue_full
            + self.invalid
            + self.too_large
            + self.closed
            + self.before_send
            + self.hook_panicked
            + self.rate_limited
    }
}

#[derive(Debug, Default)]
struct Counters {
    captured: AtomicU64,
    delivered: AtomicU64,
    failed: AtomicU64,
    refused_drop: AtomicU64,
    refused_limited: AtomicU64,
    refused_other: AtomicU64,
    queue_full: AtomicU64,
    invalid: AtomicU64,
    too_large: AtomicU64,
    closed: AtomicU64,
    before_send: AtomicU64,
    hook_panicked: AtomicU64,
    rate_limited: AtomicU64,
    retries: AtomicU64,
    requests: AtomicU64,
    in_flight: AtomicU64,
    flag_errors: AtomicU64,
    spooled: AtomicU64,
    spool_full: AtomicU64,
    spool_replayed: AtomicU64,
    spool_failed: AtomicU64,
    spool_damaged: AtomicU64,
}

/// A shared handle to the pipeline's counters. Cheap to clone; give the same recorder to the
/// [`Batch`](super::Batch) config, the [`RetryPolicy`](super::RetryPolicy) and the
/// [`CaptureTransport`](super::CaptureTransport) of a hand-built stack to get complete
/// [`Stats`].
#[derive(Debug, Clone, Default)]
pub struct StatsRecorder(Arc<Counters>);

macro_rules! bump {
    ($($name:ident => $field:ident),* $(,)?) => {
        $(
            /// Adds `n`, returning the new total.
            pub(crate) fn $name(&self, n: u64) -> u64 {
                self.0.$field.fetch_add(n, Relaxed) + n
            }
        )*
    };
}

impl StatsRecorder {
    /// A recorder with every counter at zero.
    pub fn new() -> Self {
        Self::default()
    }

    bump! {
        captured => captured,
        delivered => delivered,
        failed => failed,
        refused_drop => refused_drop,
        refused_limited => refused_limited,
        refused_other => refused_other,
        queue_full => queue_full,
        invalid => invalid,
        too_large => too_large,
        closed => closed,
        before_send => before_send,
        hook_panicked => hook_panicked,
        rate_limited => rate_limited,
        retry => retries,
        request => requests,
        flag_error => flag_errors,
        spooled => spooled,
        spool_full => spool_full,
    }

    #[cfg(feature = "spool")]
    bump! {
        spool_replayed => spool_replayed,
        spool_failed => spool_failed,
        spool_damaged => spool_damaged,
    }

    pub(crate) fn batch_started(&self) {
        self.0.in_flight.fetch_add(1, Relaxed);
    }

    pub(crate) fn batch_finished(&self) {
        self.0.in_flight.fetch_sub(1, Relaxed);
    }

    /// Reads every counter (each one atomically; the set is not one atomic snapshot).
    pub fn snapshot(&self) -> Stats {
        let c = &self.0;
        Stats {
            captured: c.captured.load(Relaxed),
            delivered: c.delivered.load(Relaxed),
            failed: c.failed.load(Relaxed),
            refused: Refused {
                drop: c.refused_drop.load(Relaxed),
                limited: c.refused_limited.load(Relaxed),
                other: c.refused_other.load(Relaxed),
            },
            dropped: Dropped {
                queue_full: c.queue_full.load(Relaxed),
                invalid: c.invalid.load(Relaxed),
                too_large: c.too_large.load(Relaxed),
                closed: c.closed.load(Relaxed),
                before_send: c.before_send.load(Relaxed),
                hook_panicked: c.hook_panicked.load(Relaxed),
                rate_limited: c.rate_limited.load(Relaxed),
            },
            retries: c.retries.load(Relaxed),
            requests: c.requests.load(Relaxed),
            batches_in_flight: c.in_flight.load(Relaxed),
            queue_depth: 0,
            flag_errors: c.flag_errors.load(Relaxed),
            spooled: c.spooled.load(Relaxed),
            spool_full: c.spool_full.load(Relaxed),
            spool_replayed: c.spool_replayed.load(Relaxed),
            spool_failed: c.spool_failed.load(Relaxed),
            spool_damaged: c.spool_damaged.load(Relaxed),
            definitions_cache_fallbacks: 0,
        }
    }
}
