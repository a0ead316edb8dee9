//! 64 producers on a multi-threaded runtime, flushing from several of them, with a shutdown
//! racing them, against `MockPostHog` (real time: a multi-threaded runtime cannot pause its
//! clock).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use posthog_tower::{capture::FlushReport, CaptureError, PostHog};
use tokio::sync::Notify;

use crate::support::*;
use crate::{account_mock, add_report, no_lost_answers, Produced};

const PRODUCERS: usize = 64;
/// Events each producer captures before the shutdown may start.
const BEFORE: u64 = 500;
/// Every 8th producer flushes after every this many captures.
const FLUSH_EVERY: u64 = 100;
/// A producer that never sees `Closed` after this many captures fails the test.
const MAX_TRIES: u64 = 1_000_000;
/// Bounds each flush and the shutdown, to turn a hang into a failure.
const GUARD: Duration = Duration::from_secs(60);

/// What one producer did.
struct Done {
    produced: Produced,
    reports: Vec<FlushReport>,
}

/// Captures [`BEFORE`] events, tells `halfway`, then goes on until `capture` answers
/// `Closed` (the shutdown started), yielding every 10 captures like a request handler
/// between requests. Every 8th producer flushes every [`FLUSH_EVERY`] captures, and once more
/// after `Closed` (which must return at once, with an empty report).
async fn produce(ph: PostHog, index: usize, halfway: Arc<(AtomicUsize, Notify)>) -> Done {
    let flusher = index % 8 == 0;
    let mut done = Done {
        produced: Produced::real_time(),
        reports: Vec::new(),
    };
    loop {
        let i = done.produced.tried;
        let result = done
            .produced
            .capture(&ph, index as u64 * MAX_TRIES + i, false);
        if i + 1 == BEFORE && halfway.0.fetch_add(1, Ordering::SeqCst) + 1 == PRODUCERS {
            halfway.1.notify_one();
        }
        if matches!(result, Err(CaptureError::Closed)) && i + 1 >= BEFORE {
            break;
        }
        assert!(i < MAX_TRIES, "producer {index} never saw the shutdown");
        if flusher && (i + 1) % FLUSH_EVERY == 0 {
            done.reports.push(flush(&ph).await);
        }
        if i % 10 == 9 {
            tokio::task::yield_now().await;
        }
    }
    if flusher {
        let last = flush(&ph).await;
        assert_eq!(last, FlushReport::default(), "a flush after shutdown");
        done.reports.push(last);
    }
    done
}

/// `flush`, bounded by [`GUARD`].
async fn flush(ph: &PostHog) -> FlushReport {
    tokio::time::timeout(GUARD, ph.flush())
        .await
        .expect("a flush never returned")
}

/// Every producer gets to [`BEFORE`] events, then the shutdown starts while all of them keep
/// capturing (and the flushers flushing) until they see `Closed`. Every flush returns, the
/// shutdown returns, and the flush and shutdown reports add up to the client's counters:
/// each event is counted in exactly one report. Every accepted event arrives exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn producers_flushes_and_a_racing_shutdown() {
    let mock = start_mock().await;
    let errors = ErrorLog::new();
    let ph = builder(&mock).on_error(errors.callback()).build().unwrap();
    let halfway = Arc::new((AtomicUsize::new(0), Notify::new()));
    let tasks: Vec<_> = (0..PRODUCERS)
        .map(|i| tokio::spawn(produce(ph.clone(), i, halfway.clone())))
        .collect();

    tokio::time::timeout(GUARD, halfway.1.notified())
        .await
        .expect("the producers never got halfway");
    let shutdown = tokio::time::timeout(GUARD, ph.shutdown(Duration::from_secs(30)))
        .await
        .expect("shutdown never returned");

    let mut produced = Produced::real_time();
    let mut report = shutdown;
    let mut flushes = 0;
    for task in tasks {
        let done = task.await.unwrap();
        produced.merge(done.produced);
        flushes += done.reports.len();
        for r in done.reports {
            add_report(&mut report, r);
        }
    }
    let row = account_mock(&ph, report, &produced, &errors, &mock, no_lost_answers);
    let s = ph.stats();
    eprintln!("{flushes} flushes; {s:?}");
    assert_eq!(
        (row.failed, row.duplicates, row.before_send),
        (0, 0, 0),
        "{row:?}"
    );
    assert_eq!(
        row.tried,
        row.delivered + row.queue_full + row.closed,
        "{row:?}"
    );
    // Every producer saw `Closed` at least once; every flusher flushed at least
    // BEFORE / FLUSH_EVERY times before the shutdown, and once after it.
    assert!(row.closed >= PRODUCERS as u64, "{row:?}");
    assert!(
        flushes >= 8 * (BEFORE / FLUSH_EVERY + 1) as usize,
        "{flushes}"
    );
}
