//! Fault injection over real HTTP on 127.0.0.1: outages, resets, slow and lost answers, 429
//! storms and an unreachable host (against `MockPostHog`, [`mock`]); black holes, answers
//! dripped byte by byte, a 50 MB body, redirects and answers that are not HTTP (against the
//! bare server of [`raw`], [`wire`]); a server process killed with SIGKILL and restarted
//! ([`process`]); 64 producers with flushes and a racing shutdown ([`producers`]); and a
//! million events against a host that refuses connections ([`million`]).
//!
//! Every scenario captures events, shuts the client down, and checks that the accounting
//! adds up exactly ([`account`]), from the client's counters, the flush and shutdown
//! reports, `on_error`, and the uuids that reached the servers:
//!
//! - `tried == delivered + failed + dropped` (by reason), and every accepted uuid is either
//!   delivered (acknowledged by a server exactly once) or failed (named by `on_error`) or
//!   dropped on purpose by `before_send`; none is unaccounted for ("lost"). The flush and
//!   shutdown reports add up to the same counts: each event is in exactly one report.
//! - A uuid reaches a server more than once only when an earlier copy was taken in and its
//!   answer lost (reset after reading, an answer slower than the request timeout, a server
//!   killed before answering), and every copy is the very same event. PostHog deduplicates
//!   events on uuid, so such re-sends are harmless; without them a lost answer would lose the
//!   events. Requests answered with an error, a redirect, garbage or nothing are not taken in;
//!   their copies are only checked to be the same events.
//! - `capture()` never waits: it returns `Ok` or a refusal at once, even during an outage.
//!
//! Paused tokio time unless the row says "real time" (another process, or a multi-threaded
//! runtime). What each scenario tried and what became of it (events; "ingested" counts
//! failed events that a server did take in before their answer was lost; "lost" is always 0):
//!
//! | scenario | tried | delivered | failed | of which ingested | dropped | duplicates | lost |
//! |---|---|---|---|---|---|---|---|
//! | (a) 60 s of 503, then recovery (defaults: 3 retries) | 750 | 318 | 417 | 0 | 15 `before_send` | 0 | 0 |
//! | (a) the same ridden out: 8 retries, 2 in flight, queue of 200 | 750 | 470-514 | 0 | 0 | 236-280 `queue_full` (sum 750) | 0 | 0 |
//! | (b) connection reset before the server processed the batch (13 of 22 requests) | 500 | 450 | 50 | 0 | 0 | 0 | 0 |
//! | (b) answers lost after the server ingested the batch (13 of 22) | 500 | 450 | 50 | 50 | 0 | 600 | 0 |
//! | (c) answers slower than the request timeout (13 of 22) | 500 | 450 | 50 | 50 | 0 | 350 | 0 |
//! | (d) 60 s of 429 with `Retry-After: 10` | 750 | 495 | 255 | 0 | 0 | 0 | 0 |
//! | (e) unreachable host (port bound, then closed), 5 s shutdown deadline | 500 | 0 | 500 (33 by the deadline) | 0 | 0 | 0 | 0 |
//! | (f) 200 with a malformed body (HTML, truncated JSON, empty) | 500 | 500 | 0 | 0 | 0 | 0 | 0 |
//! | (g) server process killed (SIGKILL) with 4 batches in flight, 50 events while down, restarted on the same port; real time | 500 | 500 | 0 | 0 | 0 | 200 | 0 |
//! | (h) black hole that reads and never answers; 2 s request timeout, 4 s shutdown deadline | 500 | 0 | 500 (50 by the deadline) | 0 | 0 | 0 | 0 |
//! | (h) black hole that never reads; the same | 500 | 0 | 500 (50 by the deadline) | 0 | 0 | 0 | 0 |
//! | (i) 200 dripped one byte per 200 ms (head in 7.8 s), default 15 s timeout | 500 | 500 | 0 | 0 | 0 | 0 | 0 |
//! | (i) the same drip against a 2 s timeout (13 of 22 requests) | 500 | 450 | 50 | 50 | 0 | 600 | 0 |
//! | (i) 200 at once, its 12-byte body dripped (2.4 s), 2 s timeout | 500 | 500 | 0 | 0 | 0 | 0 | 0 |
//! | (j) 200 with a 50 MB body | 500 | 500 | 0 | 0 | 0 | 0 | 0 |
//! | (k) 301, 302, 303, 307 and 308 to `MockPostHog` on another port | 500 | 0 | 500 (first attempt, not retried) | 0 | 0 | 0 | 0 |
//! | (l) answers that are not HTTP, then close (13 of 22 requests) | 500 | 450 | 50 | 0 | 0 | 0 | 0 |
//! | (m) 64 producers, 8 of them flushing, shutdown racing them; real time | 68 088-163 804 | 57 544-78 069 | 0 | 0 | 10 480-92 980 `queue_full` + 64 `closed` | 0 | 0 |
//! | (n) 1 000 000 events, host refusing connections, 1 s shutdown deadline; real time | 1 000 000 | 0 | 10 900-11 145 | 0 | 988 855-989 100 `queue_full` | 0 | 0 |
//!
//! Every number is exact and asserted, except where a range is given: the ridden-out
//! outage's split between delivered and refused depends on the backoff jitter (range over
//! 12 runs; the sum is asserted); in (m) and (n) the number of events tried, accepted and
//! refused depends on thread scheduling (ranges over 20 runs, 2 of them pinned to one core;
//! the identity, `failed == 0`, `duplicates == 0` and `closed == 64` in (m), and
//! `delivered == 0` with `failed == 1 000 000 - queue_full` in (n) are asserted).

#[path = "../support/mod.rs"]
mod support;

mod million;
mod mock;
mod process;
mod producers;
mod raw;
mod wire;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use posthog_tower::testing::{MockPostHog, RecordedRequest};
use posthog_tower::{
    capture::FlushReport, CaptureError, ErrorReport, Event, PostHog, PostHogBuilder, Uuid,
};
use serde_json::Value;
use tokio::time::Instant;

use support::*;

/// Generous: every scenario settles well before it, so shutdown never cuts delivery short
/// unless a scenario says so.
const SHUTDOWN: Duration = Duration::from_secs(300);

/// What the producer saw.
#[derive(Debug, Default)]
struct Produced {
    /// `capture` calls.
    tried: u64,
    /// uuids `capture` returned.
    accepted: Vec<Uuid>,
    /// Accepted uuids that `before_send` drops on purpose.
    hook_dropped: HashSet<Uuid>,
    /// `capture` answered `QueueFull`.
    queue_full: u64,
    /// `capture` answered `Closed` (the client was shutting down).
    closed: u64,
    /// The clock runs (a multi-threaded runtime, or another process in the scenario), so
    /// `capture` is not checked against a paused clock.
    real_time: bool,
}

impl Produced {
    /// A producer on a running clock.
    fn real_time() -> Self {
        Produced {
            real_time: true,
            ..Produced::default()
        }
    }

    /// Captures one event and checks that `capture` did not wait: it is synchronous, and on
    /// a single-threaded runtime with a paused clock the worker and the server only run when
    /// the test task yields, so a `capture` waiting for room, for the worker or for the
    /// network would hang there; the paused clock must not have moved either.
    ///
    /// Returns the answer, so that a producer can stop once the client is closed.
    fn capture(&mut self, ph: &PostHog, i: u64, drop_it: bool) -> Result<Uuid, CaptureError> {
        let before = Instant::now();
        let result = ph.capture(
            Event::new("fault", format!("user-{}", i % 7))
                .property("i", i)
                .property("drop", drop_it),
        );
        if !self.real_time {
            assert_eq!(Instant::now(), before, "capture waited");
        }
        self.record(&result, drop_it);
        result
    }

    /// Records what `capture` answered.
    fn record(&mut self, result: &Result<Uuid, CaptureError>, drop_it: bool) {
        self.tried += 1;
        match result {
            Ok(uuid) => {
                self.accepted.push(*uuid);
                if drop_it {
                    self.hook_dropped.insert(*uuid);
                }
            }
            Err(CaptureError::QueueFull { .. }) => self.queue_full += 1,
            Err(CaptureError::Closed) => self.closed += 1,
            Err(e) => panic!("capture: unexpected error {e}"),
        }
    }

    /// `n` events, one every `spacing` from `start`.
    async fn spread(&mut self, ph: &PostHog, start: Instant, n: u64, spacing: Duration) {
        for i in 0..n {
            tokio::time::sleep_until(start + spacing * i as u32).await;
            let _ = self.capture(ph, self.tried, false);
        }
    }

    /// `bursts` bursts of `size` events, `gap` apart from `start`.
    async fn bursts(
        &mut self,
        ph: &PostHog,
        start: Instant,
        bursts: u32,
        size: u64,
        gap: Duration,
    ) {
        for b in 0..bursts {
            tokio::time::sleep_until(start + gap * b).await;
            self.burst(ph, size);
        }
    }

    /// `size` events at once.
    fn burst(&mut self, ph: &PostHog, size: u64) {
        for _ in 0..size {
            let _ = self.capture(ph, self.tried, false);
        }
    }

    /// Adds what another producer saw.
    fn merge(&mut self, other: Produced) {
        self.tried += other.tried;
        self.accepted.extend(other.accepted);
        self.hook_dropped.extend(other.hook_dropped);
        self.queue_full += other.queue_full;
        self.closed += other.closed;
    }
}

/// A scenario's outcome, checked.
#[derive(Debug, PartialEq, Eq)]
struct Row {
    tried: u64,
    delivered: u64,
    failed: u64,
    /// Failed for the client, yet ingested by the server (every answer lost).
    failed_but_ingested: u64,
    queue_full: u64,
    closed: u64,
    before_send: u64,
    /// Arrivals beyond the first of each uuid, at servers that ingested them.
    duplicates: u64,
    /// Accepted events neither delivered, failed nor dropped.
    lost: u64,
}

/// What `on_error` reported, as [`account`] needs it.
#[derive(Debug, Default)]
struct Reported {
    /// The uuids of every `ErrorReport::Delivery`, in order.
    failed: Vec<Uuid>,
    /// `ErrorReport::Rejected(QueueFull)` reports.
    queue_full: u64,
    /// `ErrorReport::Rejected(Closed)` reports.
    closed: u64,
}

impl From<&ErrorLog> for Reported {
    fn from(errors: &ErrorLog) -> Self {
        let all = errors.all();
        let count = |f: fn(&ErrorReport) -> bool| all.iter().filter(|e| f(e)).count() as u64;
        Reported {
            failed: errors.delivery_uuids(),
            queue_full: count(|e| {
                matches!(e, ErrorReport::Rejected(CaptureError::QueueFull { .. }))
            }),
            closed: count(|e| matches!(e, ErrorReport::Rejected(CaptureError::Closed))),
        }
    }
}

/// A request that reached a server, as the server saw it.
#[derive(Debug, Clone)]
struct Arrival {
    /// The events of its batch, as sent.
    events: Vec<Value>,
    /// The server took the batch in (it answered, or was about to answer, a 2xx), so its
    /// events count as arrived. A request answered with an error (or garbage, a redirect, or
    /// nothing) is only checked for carrying the same events as every other copy.
    ingested: bool,
    /// The client heard that 2xx (it was not lost with the connection, nor later than the
    /// request timeout).
    acknowledged: bool,
}

/// Checks the accounting of a finished scenario and returns its row.
///
/// `report` is the sum of every flush and shutdown report of the scenario; `arrivals` are
/// the requests the servers read, in any order.
fn account(
    ph: &PostHog,
    report: FlushReport,
    produced: &Produced,
    reported: &Reported,
    arrivals: &[Arrival],
) -> Row {
    let s = ph.stats();
    // Everything settled.
    assert_eq!((s.queue_depth, s.batches_in_flight), (0, 0), "{s:?}");

    // The client's counters.
    assert_eq!(s.captured, produced.accepted.len() as u64, "{s:?}");
    assert_eq!(s.dropped.queue_full, produced.queue_full, "{s:?}");
    assert_eq!(s.dropped.closed, produced.closed, "{s:?}");
    assert_eq!(
        s.dropped.before_send,
        produced.hook_dropped.len() as u64,
        "{s:?}"
    );
    assert_eq!(
        produced.tried,
        s.delivered + s.failed + s.dropped.total(),
        "tried != delivered + failed + dropped: {s:?}"
    );
    assert_eq!(
        (report.delivered, report.failed, report.dropped),
        (
            s.delivered,
            s.failed,
            s.dropped.before_send + s.dropped.hook_panicked + s.dropped.too_large
        ),
        "the reports cover every event exactly once: {report:?} vs {s:?}"
    );

    // The uuids: accepted = delivered + failed + dropped by the hook, disjoint.
    let accepted: HashSet<Uuid> = produced.accepted.iter().copied().collect();
    assert_eq!(
        accepted.len(),
        produced.accepted.len(),
        "capture returned a uuid twice"
    );
    let failed: HashSet<Uuid> = reported.failed.iter().copied().collect();
    assert_eq!(
        failed.len(),
        reported.failed.len(),
        "an event was reported failed twice"
    );
    assert_eq!(failed.len() as u64, s.failed, "on_error and stats disagree");
    assert!(
        failed.is_subset(&accepted),
        "on_error named an event never accepted"
    );
    assert!(failed.is_disjoint(&produced.hook_dropped));
    assert_eq!(reported.queue_full, produced.queue_full);
    assert_eq!(reported.closed, produced.closed);
    let delivered: HashSet<Uuid> = accepted
        .iter()
        .copied()
        .filter(|u| !failed.contains(u) && !produced.hook_dropped.contains(u))
        .collect();
    assert_eq!(delivered.len() as u64, s.delivered, "{s:?}");

    // What reached the wire.
    let mut acked: HashMap<Uuid, u64> = HashMap::new();
    let mut unacked: HashMap<Uuid, u64> = HashMap::new();
    let mut first_copy: HashMap<Uuid, &Value> = HashMap::new();
    for arrival in arrivals {
        for event in &arrival.events {
            let uuid = uuid_of(event);
            assert!(
                accepted.contains(&uuid),
                "an unknown event arrived: {event}"
            );
            assert!(
                !produced.hook_dropped.contains(&uuid),
                "an event dropped by before_send was sent"
            );
            // Every copy of a uuid is the very same event.
            let first = *first_copy.entry(uuid).or_insert(event);
            assert_eq!(first, event, "a re-send changed the event");
            if arrival.ingested {
                *if arrival.acknowledged {
                    &mut acked
                } else {
                    &mut unacked
                }
                .entry(uuid)
                .or_default() += 1;
            }
        }
    }
    for uuid in &delivered {
        assert_eq!(
            acked.get(uuid).copied().unwrap_or(0),
            1,
            "delivered event {uuid} was not acknowledged exactly once"
        );
    }
    for uuid in &failed {
        assert_eq!(
            acked.get(uuid).copied().unwrap_or(0),
            0,
            "failed event {uuid} was acknowledged"
        );
    }
    let failed_but_ingested = failed.iter().filter(|u| unacked.contains_key(u)).count() as u64;
    let arrived: u64 = acked.values().sum::<u64>() + unacked.values().sum::<u64>();
    let unique: HashSet<&Uuid> = acked.keys().chain(unacked.keys()).collect();
    let duplicates = arrived - unique.len() as u64;
    let lost = accepted
        .iter()
        .filter(|u| {
            !delivered.contains(u) && !failed.contains(u) && !produced.hook_dropped.contains(u)
        })
        .count() as u64;

    let row = Row {
        tried: produced.tried,
        delivered: s.delivered,
        failed: s.failed,
        failed_but_ingested,
        queue_full: s.dropped.queue_full,
        closed: s.dropped.closed,
        before_send: s.dropped.before_send,
        duplicates,
        lost,
    };
    assert_eq!(row.lost, 0, "{row:?}");
    eprintln!("{row:?}");
    row
}

/// [`account`] for a scenario against `MockPostHog`.
///
/// `ack_lost(i, request)` tells whether the `i`-th request to `/batch/` was ingested by the
/// mock (2xx) but its answer never reached the client (a lost response, or an answer slower
/// than the request timeout). Everywhere else the client heard every 2xx.
fn account_mock(
    ph: &PostHog,
    report: FlushReport,
    produced: &Produced,
    errors: &ErrorLog,
    mock: &MockPostHog,
    ack_lost: impl Fn(usize, &RecordedRequest) -> bool,
) -> Row {
    let requests = mock.requests_to("/batch");
    let arrivals: Vec<Arrival> = requests
        .iter()
        .enumerate()
        .filter(|(_, req)| req.status.is_success())
        .map(|(i, req)| Arrival {
            events: batch_of(req),
            ingested: true,
            acknowledged: !ack_lost(i, req),
        })
        .collect();
    // The mock's own view of accepted batches agrees.
    let events: usize = arrivals.iter().map(|a| a.events.len()).sum();
    assert_eq!(mock.events().len(), events);
    account(ph, report, produced, &errors.into(), &arrivals)
}

/// No answer was lost: no uuid may arrive twice.
fn no_lost_answers(_: usize, _: &RecordedRequest) -> bool {
    false
}

/// Ten bursts of 50 events, 20 s apart, to `host`: with `flush_at(50)` and one batch in
/// flight, each burst is one batch, settled before the next burst, and scripted answers map
/// to requests in order.
async fn scripted_bursts(
    host: &str,
    errors: &ErrorLog,
    configure: impl FnOnce(PostHogBuilder) -> PostHogBuilder,
) -> (PostHog, Produced, FlushReport) {
    let (ph, produced, report, _) = scripted_bursts_until(host, errors, configure, SHUTDOWN).await;
    (ph, produced, report)
}

/// [`scripted_bursts`] with a shutdown `deadline`; also returns how long the shutdown took.
async fn scripted_bursts_until(
    host: &str,
    errors: &ErrorLog,
    configure: impl FnOnce(PostHogBuilder) -> PostHogBuilder,
    deadline: Duration,
) -> (PostHog, Produced, FlushReport, Duration) {
    let ph = configure(
        PostHog::builder(KEY)
            .host(host)
            .flush_at(50)
            .max_in_flight(1)
            .on_error(errors.callback()),
    )
    .build()
    .unwrap();
    let mut produced = Produced::default();
    produced
        .bursts(&ph, Instant::now(), 10, 50, Duration::from_secs(20))
        .await;
    let start = Instant::now();
    let report = ph.shutdown(deadline).await;
    let took = Instant::now() - start;
    (ph, produced, report, took)
}

/// Adds `more` to `total`.
fn add_report(total: &mut FlushReport, more: FlushReport) {
    total.delivered += more.delivered;
    total.failed += more.failed;
    total.dropped += more.dropped;
}
