//! The client's life over real HTTP to `MockPostHog`: flush reports, shutdown (with
//! concurrent producers and with a deadline), dropping the last handle, a full queue, sync
//! mode and a disabled client.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use posthog_tower::net::UnexpectedStatus;
use posthog_tower::testing::MockResponse;
use posthog_tower::{CaptureError, ErrorReport, Event, PostHog, Uuid};
use tokio::time::Instant;

use crate::support::*;

// ===== flush =====

#[tokio::test(start_paused = true)]
async fn flush_report_counts_delivered_failed_and_dropped() {
    let mock = start_mock().await;
    // Whichever batch arrives first is refused for good.
    mock.enqueue("/batch/", MockResponse::status(400));
    let errors = ErrorLog::new();
    let ph = builder(&mock)
        .flush_at(2)
        .on_error(errors.callback())
        .before_send(|e| if e.name() == "skip" { None } else { Some(e) })
        .build()
        .unwrap();

    let mut ids = Vec::new();
    for i in 0..6 {
        ids.push(ph.capture(Event::new("e", "u").property("i", i)).unwrap());
        if i == 2 {
            ph.capture(Event::new("skip", "u")).unwrap();
        }
    }
    let report = ph.flush().await;
    assert_eq!(
        (report.delivered, report.failed, report.dropped),
        (4, 2, 1),
        "{report:?}"
    );

    let reqs = mock.requests_to("/batch");
    assert_eq!(batch_sizes(&reqs), vec![2, 2, 2]);
    let refused: Vec<_> = reqs.iter().filter(|r| r.status == 400).collect();
    assert_eq!(refused.len(), 1);
    let refused_ids = uuids_of(&batch_of(refused[0]));
    assert_eq!(
        errors.delivery_uuids(),
        refused_ids,
        "on_error names the failed events"
    );
    let delivered: Vec<Uuid> = ids
        .iter()
        .copied()
        .filter(|id| !refused_ids.contains(id))
        .collect();
    assert_eq!(delivered.len(), 4);
    assert_delivered_once(&mock.events(), &delivered);

    let s = ph.stats();
    assert_eq!(
        (s.captured, s.delivered, s.failed, s.dropped.before_send),
        (7, 4, 2, 1),
        "{s:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn each_flush_reports_the_events_since_the_previous_one() {
    let mock = start_mock().await;
    let ph = builder(&mock).build().unwrap();
    for _ in 0..3 {
        ph.capture(Event::new("e", "u")).unwrap();
    }
    let first = ph.flush().await;
    assert_eq!((first.delivered, first.failed, first.dropped), (3, 0, 0));
    for _ in 0..2 {
        ph.capture(Event::new("e", "u")).unwrap();
    }
    let second = ph.flush().await;
    assert_eq!((second.delivered, second.failed, second.dropped), (2, 0, 0));
    assert_eq!(mock.events().len(), 5);
    assert_eq!(mock.requests_to("/batch").len(), 2);
}

/// Producers that outrun the server kept the worker busy with closed batches, and it read a
/// flush request only when none waited: `flush()` did not return until the producers stopped.
/// Now the request waits in the queue behind what was captured before it, and is answered
/// once exactly that is delivered, however much keeps coming after it. Shutdown, under the
/// same load, is not starved either.
#[tokio::test(start_paused = true)]
async fn flush_and_shutdown_return_while_producers_outrun_the_server() {
    let mock = start_mock().await;
    // 8 batches of 100 in flight, 200 ms each: about 4 000 events/s.
    mock.set_default(
        "/batch/",
        MockResponse::status(200).delay(Duration::from_millis(200)),
    );
    let ph = builder(&mock).build().unwrap();
    let accepted = Arc::new(Mutex::new(Vec::new()));
    let running = Arc::new(AtomicBool::new(true));
    let mut producers = Vec::new();
    // 8 producers, one event a millisecond each: 8 000 events/s.
    for p in 0..8 {
        let (ph, accepted, running) = (ph.clone(), accepted.clone(), running.clone());
        producers.push(tokio::spawn(async move {
            let mut tried = 0u64;
            while running.load(Ordering::Relaxed) {
                tried += 1;
                if let Ok(uuid) = ph.capture(Event::new("e", "u").property("p", p)) {
                    accepted.lock().unwrap().push(uuid);
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            tried
        }));
    }
    let start = Instant::now();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(ph.stats().dropped.queue_full > 0, "the queue filled up");

    // On this single-threaded runtime nothing runs between the snapshot and the flush request.
    let before: Vec<Uuid> = accepted.lock().unwrap().clone();
    let report = tokio::time::timeout(Duration::from_secs(60), ph.flush())
        .await
        .expect("flush returns while the producers keep going");
    let flushed_at = Instant::now() - start;
    assert!(running.load(Ordering::Relaxed));
    // 10 000 queued at 4 000/s: about 2.5 s after the request.
    assert!(flushed_at < Duration::from_secs(7), "{flushed_at:?}");
    assert_eq!(
        (report.delivered, report.failed, report.dropped),
        (before.len() as u64, 0, 0)
    );
    let arrived: HashSet<Uuid> = uuids_of(&mock.events()).into_iter().collect();
    assert!(before.iter().all(|u| arrived.contains(u)));

    // Shutdown with the producers still at it: admission closes, the queue drains.
    let report = tokio::time::timeout(
        Duration::from_secs(60),
        ph.shutdown(Duration::from_secs(30)),
    )
    .await
    .expect("shutdown returns while the producers keep going");
    running.store(false, Ordering::Relaxed);
    let mut tried = 0;
    for producer in producers {
        tried += producer.await.unwrap();
    }
    let accepted = accepted.lock().unwrap().len() as u64;
    let s = ph.stats();
    assert_eq!(s.delivered, accepted, "{s:?}");
    assert_eq!(report.delivered, accepted - before.len() as u64);
    assert_eq!(tried, s.delivered + s.failed + s.dropped.total(), "{s:?}");
    assert_delivered_once(&mock.events(), &accepted_uuids(&mock));
}

/// The uuids that arrived, deduplicated (for `assert_delivered_once` against themselves).
fn accepted_uuids(mock: &posthog_tower::testing::MockPostHog) -> Vec<Uuid> {
    uuids_of(&mock.events())
}

/// `flush()` closed its epoch as soon as one batch filled, so with a backlog beyond one chunk
/// of the queue (256 events) it returned before what was captured before it was delivered.
#[tokio::test(start_paused = true)]
async fn flush_covers_a_backlog_far_larger_than_a_chunk() {
    let mock = start_mock().await;
    let ph = builder(&mock).max_queue_size(1_000_000).build().unwrap();
    for n in [1_000u64, 10_000] {
        let ids: Vec<Uuid> = (0..n)
            .map(|i| ph.capture(Event::new("e", "u").property("i", i)).unwrap())
            .collect();
        let report = ph.flush().await;
        assert_eq!((report.delivered, report.failed), (n, 0), "{report:?}");
        let arrived: HashSet<Uuid> = uuids_of(&mock.events()).into_iter().collect();
        assert!(ids.iter().all(|u| arrived.contains(u)));
    }
    assert_eq!(ph.shutdown(Duration::from_secs(5)).await.delivered, 0);
}

/// The same on a multi-threaded runtime, where the worker runs beside the producer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flush_covers_a_backlog_on_a_multi_threaded_runtime() {
    let mock = start_mock().await;
    let ph = builder(&mock).max_queue_size(1_000_000).build().unwrap();
    let n = 50_000u64;
    for i in 0..n {
        ph.capture(Event::new("e", "u").property("i", i)).unwrap();
    }
    let report = ph.flush().await;
    assert_eq!((report.delivered, report.failed), (n, 0), "{report:?}");
    assert_eq!(
        mock.events().len() as u64,
        n,
        "all of it arrived before flush returned"
    );
    ph.shutdown(Duration::from_secs(5)).await;
}

/// Every batch refused, an `on_error` that takes 2 s per call (a slow synchronous logger), a
/// 100 ms shutdown deadline on 6 threads. The send path reported a failure before recording
/// the events as settled, and the deadline reported the unsettled ones again (a task in the
/// middle of a poll on another thread cannot be aborted): events were reported twice and
/// counted failed twice. And the worker called `on_error` itself while giving up, so the
/// deadline stretched by each call. Now each event is settled and reported exactly once,
/// whoever gets there first, and the deadline bounds the wait while callbacks finish later.
#[test]
fn a_slow_on_error_neither_doubles_reports_nor_stretches_the_deadline() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(6)
        .enable_all()
        .build()
        .unwrap();
    let told = Arc::new(Mutex::new(Vec::new()));
    let log = told.clone();
    let (ids, report, took, stats) = runtime.block_on(async move {
        let mock = start_mock().await;
        mock.set_default("/batch/", MockResponse::status(400));
        let ph = builder(&mock)
            .on_error(move |e| {
                if let ErrorReport::Delivery(d) = e {
                    log.lock().unwrap().extend_from_slice(d.uuids());
                }
                std::thread::sleep(Duration::from_secs(2));
            })
            .build()
            .unwrap();
        let ids: Vec<Uuid> = (0..300)
            .map(|i| ph.capture(Event::new("e", "u").property("i", i)).unwrap())
            .collect();
        let start = std::time::Instant::now();
        let report = ph.shutdown(Duration::from_millis(100)).await;
        (ids, report, start.elapsed(), ph.stats())
    });
    // Dropping the runtime waits for the callbacks still running.
    drop(runtime);
    assert!(took < Duration::from_millis(1500), "shutdown took {took:?}");
    assert_eq!(
        (report.delivered, report.failed, report.dropped),
        (0, 300, 0),
        "{report:?}"
    );
    assert_eq!((stats.delivered, stats.failed), (0, 300), "{stats:?}");
    let told = told.lock().unwrap();
    assert_eq!(told.len(), 300, "each failed event is reported once");
    let told: HashSet<Uuid> = told.iter().copied().collect();
    assert_eq!(told, ids.into_iter().collect::<HashSet<_>>());
}

// ===== shutdown =====

#[tokio::test(start_paused = true)]
async fn shutdown_delivers_the_queue_and_stops_admission() {
    let mock = start_mock().await;
    let errors = ErrorLog::new();
    let ph = builder(&mock)
        .flush_interval(Duration::from_secs(3600))
        .on_error(errors.callback())
        .build()
        .unwrap();
    let other_handle = ph.clone();

    let ids: Vec<Uuid> = (0..3)
        .map(|_| ph.capture(Event::new("e", "u")).unwrap())
        .collect();
    let report = ph.shutdown(Duration::from_secs(10)).await;
    assert_eq!(
        (report.delivered, report.failed, report.dropped),
        (3, 0, 0),
        "{report:?}"
    );
    assert_delivered_once(&mock.events(), &ids);

    // Admission is closed, through every handle and helper.
    assert_eq!(
        ph.capture(Event::new("late", "u")),
        Err(CaptureError::Closed)
    );
    assert_eq!(
        other_handle.capture(Event::new("late", "u")),
        Err(CaptureError::Closed)
    );
    assert_eq!(
        ph.set("u", serde_json::json!({"a": 1})),
        Err(CaptureError::Closed)
    );
    assert_eq!(
        ph.capture_wait(Event::new("late", "u")).await,
        Err(CaptureError::Closed)
    );
    assert_eq!(ph.stats().dropped.closed, 4);
    let closed_reports = errors
        .all()
        .iter()
        .filter(|e| matches!(e, ErrorReport::Rejected(CaptureError::Closed)))
        .count();
    assert_eq!(closed_reports, 4);

    // Idempotent: the same report again, from any handle, and nothing more is sent.
    let again = ph.shutdown(Duration::from_secs(10)).await;
    assert_eq!(again, report);
    assert_eq!(other_handle.shutdown(Duration::from_secs(1)).await, report);
    let flushed = ph.flush().await;
    assert_eq!((flushed.delivered, flushed.failed), (0, 0));
    assert_eq!(mock.requests_to("/batch").len(), 1);
    assert_eq!(mock.events().len(), 3);
}

#[tokio::test(start_paused = true)]
async fn concurrent_shutdowns_get_the_same_report() {
    let mock = start_mock().await;
    let ph = builder(&mock).build().unwrap();
    let other = ph.clone();
    for _ in 0..5 {
        ph.capture(Event::new("e", "u")).unwrap();
    }
    let (a, b) = tokio::join!(
        ph.shutdown(Duration::from_secs(10)),
        other.shutdown(Duration::from_secs(10))
    );
    assert_eq!(a, b);
    assert_eq!((a.delivered, a.failed), (5, 0));
    assert_eq!(mock.events().len(), 5);
}

#[tokio::test(start_paused = true)]
async fn shutdown_drains_while_producers_keep_capturing() {
    let mock = start_mock().await;
    let ph = builder(&mock).flush_at(10).build().unwrap();

    struct Produced {
        attempts: u64,
        closed: u64,
        accepted: Vec<Uuid>,
    }
    let producers: Vec<_> = (0..4)
        .map(|p| {
            let ph = ph.clone();
            tokio::spawn(async move {
                let mut out = Produced {
                    attempts: 0,
                    closed: 0,
                    accepted: Vec::new(),
                };
                loop {
                    out.attempts += 1;
                    let event =
                        Event::new("produced", format!("producer-{p}")).property("n", out.attempts);
                    match ph.capture(event) {
                        Ok(uuid) => out.accepted.push(uuid),
                        Err(CaptureError::Closed) => {
                            out.closed += 1;
                            break;
                        }
                        Err(e) => panic!("producer {p}: unexpected error {e}"),
                    }
                    tokio::task::yield_now().await;
                }
                out
            })
        })
        .collect();

    // Let the pipeline run with the producers going: some batches are already delivered.
    mock.wait_for_events(50, WAIT).await.unwrap();
    let report = ph.shutdown(Duration::from_secs(60)).await;

    let mut attempts = 0;
    let mut closed = 0;
    let mut accepted = Vec::new();
    for producer in producers {
        let out = producer.await.expect("producer task");
        assert_eq!(out.closed, 1, "each producer stops at its first Closed");
        attempts += out.attempts;
        closed += out.closed;
        accepted.extend(out.accepted);
    }
    assert!(accepted.len() >= 50);
    assert_eq!(report.failed, 0, "{report:?}");
    assert_eq!(report.delivered, accepted.len() as u64, "{report:?}");
    assert_eq!(report.delivered + closed, attempts);
    assert_delivered_once(&mock.events(), &accepted);
    let s = ph.stats();
    assert_eq!(s.captured, accepted.len() as u64, "{s:?}");
    assert_eq!(s.delivered, accepted.len() as u64, "{s:?}");
    assert_eq!(s.dropped.closed, closed, "{s:?}");
}

/// The same on several threads, with producers that wait for room in the queue: a capture
/// racing the shutdown is either delivered or told `Closed`, never lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn shutdown_drains_while_producers_on_other_threads_keep_capturing() {
    let mock = start_mock().await;
    let ph = builder(&mock)
        .flush_at(50)
        .max_queue_size(500)
        .build()
        .unwrap();

    let producers: Vec<_> = (0..6)
        .map(|p| {
            let ph = ph.clone();
            tokio::spawn(async move {
                let mut attempts = 0u64;
                let mut accepted = Vec::new();
                loop {
                    attempts += 1;
                    let event = Event::new("produced", format!("producer-{p}"));
                    match ph.capture_wait(event).await {
                        Ok(uuid) => accepted.push(uuid),
                        Err(CaptureError::Closed) => break,
                        Err(e) => panic!("producer {p}: unexpected error {e}"),
                    }
                    tokio::task::yield_now().await;
                }
                (attempts, accepted)
            })
        })
        .collect();

    mock.wait_for_events(500, WAIT).await.unwrap();
    let report = ph.shutdown(Duration::from_secs(120)).await;

    let mut attempts = 0;
    let mut accepted = Vec::new();
    for producer in producers {
        let (a, ids) = producer.await.expect("producer task");
        attempts += a;
        accepted.extend(ids);
    }
    let closed = 6;
    assert_eq!(report.failed, 0, "{report:?}");
    assert_eq!(report.delivered, accepted.len() as u64, "{report:?}");
    assert_eq!(report.delivered + closed, attempts);
    assert_delivered_once(&mock.events(), &accepted);
    let s = ph.stats();
    assert_eq!(
        (s.captured, s.delivered),
        (attempts - closed, attempts - closed),
        "{s:?}"
    );
    assert_eq!(s.dropped.closed, closed, "{s:?}");
}

#[tokio::test(start_paused = true)]
async fn shutdown_deadline_reports_what_was_not_delivered() {
    let mock = start_mock().await;
    // The server never answers in time.
    mock.set_default(
        "/batch/",
        MockResponse::status(200).delay(Duration::from_secs(3600)),
    );
    let errors = ErrorLog::new();
    let (ph, worker) = builder(&mock)
        .flush_at(1)
        .max_in_flight(1)
        .on_error(errors.callback())
        .build_pair()
        .unwrap();
    let worker = tokio::spawn(worker);

    // One batch in flight, the others waiting for a sending slot.
    let ids: Vec<Uuid> = (0..3)
        .map(|i| ph.capture(Event::new("e", "u").property("i", i)).unwrap())
        .collect();
    let deadline = Duration::from_secs(5);
    let start = Instant::now();
    let report = ph.shutdown(deadline).await;
    let took = Instant::now() - start;
    assert!(took >= deadline, "shutdown returned after {took:?}");
    assert!(
        took < Duration::from_secs(15),
        "shutdown ignored its deadline: {took:?}"
    );
    assert_eq!(
        (report.delivered, report.failed, report.dropped),
        (0, 3, 0),
        "{report:?}"
    );

    // Each event reported failed exactly once, nothing lost.
    let mut failed = errors.delivery_uuids();
    failed.sort();
    let mut expected = ids.clone();
    expected.sort();
    assert_eq!(failed, expected);
    let s = ph.stats();
    assert_eq!((s.delivered, s.failed), (0, 3), "{s:?}");
    assert_eq!(s.batches_in_flight, 0, "{s:?}");

    // The worker is done.
    tokio::time::timeout(WAIT, worker)
        .await
        .expect("the worker stops after shutdown")
        .unwrap();
    assert_eq!(ph.shutdown(deadline).await, report);
}

#[tokio::test(start_paused = true)]
async fn shutdown_deadline_holds_while_every_sending_slot_is_busy() {
    let mock = start_mock().await;
    // The server never answers in time; the request timeout is longer than the deadline.
    mock.set_default(
        "/batch/",
        MockResponse::status(200).delay(Duration::from_secs(3600)),
    );
    let request_timeout = Duration::from_secs(60);
    let errors = ErrorLog::new();
    let (ph, worker) = builder(&mock)
        .flush_at(1)
        .max_in_flight(1)
        .request_timeout(request_timeout)
        .on_error(errors.callback())
        .build_pair()
        .unwrap();
    let worker = tokio::spawn(worker);

    let mut ids: Vec<Uuid> = (0..3)
        .map(|i| ph.capture(Event::new("e", "u").property("i", i)).unwrap())
        .collect();
    // The worker has taken the events: one batch is at the server, two wait for the slot.
    mock.wait_for_requests("/batch", 1, WAIT).await.unwrap();
    // And two more wait in the queue.
    for i in 3..5 {
        ids.push(ph.capture(Event::new("e", "u").property("i", i)).unwrap());
    }

    let deadline = Duration::from_secs(5);
    let start = Instant::now();
    let report = ph.shutdown(deadline).await;
    let took = Instant::now() - start;
    assert!(
        took < request_timeout,
        "shutdown({deadline:?}) returned only after {took:?}"
    );
    assert_eq!(
        (report.delivered, report.failed, report.dropped),
        (0, 5, 0),
        "{report:?}"
    );
    let s = ph.stats();
    assert_eq!((s.delivered, s.failed), (0, 5), "{s:?}");
    assert_eq!(mock.requests_to("/batch").len(), 1, "{s:?}");
    let mut failed = errors.delivery_uuids();
    failed.sort();
    let mut expected = ids.clone();
    expected.sort();
    assert_eq!(failed, expected);
    tokio::time::timeout(WAIT, worker)
        .await
        .expect("the worker stops after shutdown")
        .unwrap();
}

#[tokio::test(start_paused = true)]
async fn shutdown_deadline_during_a_413_split_fails_only_the_undelivered_half() {
    let mock = start_mock().await;
    // The batch is too large; its first half goes through; the second half gets stuck.
    mock.enqueue("/batch/", MockResponse::status(413));
    mock.enqueue("/batch/", MockResponse::status(200));
    mock.enqueue(
        "/batch/",
        MockResponse::status(200).delay(Duration::from_secs(3600)),
    );
    let errors = ErrorLog::new();
    let ph = builder(&mock)
        .request_timeout(Duration::from_secs(60))
        .on_error(errors.callback())
        .build()
        .unwrap();
    let ids: Vec<Uuid> = (0..4)
        .map(|i| ph.capture(Event::new("e", "u").property("i", i)).unwrap())
        .collect();
    // Sent, split, first half delivered, second half at the server.
    mock.wait_for_requests("/batch", 3, WAIT).await.unwrap();

    let report = ph.shutdown(Duration::from_secs(5)).await;
    let reqs = mock.requests_to("/batch");
    assert_eq!(batch_sizes(&reqs), vec![4, 2, 2]);
    let delivered = uuids_of(&batch_of(&reqs[1]));
    let stuck = uuids_of(&batch_of(&reqs[2]));
    assert_eq!(delivered, ids[..2].to_vec());
    assert_eq!(stuck, ids[2..].to_vec());

    // The delivered half is not reported failed.
    assert_eq!(
        errors.delivery_uuids(),
        stuck,
        "on_error reported delivered events as failed"
    );
    let s = ph.stats();
    assert_eq!((s.delivered, s.failed), (2, 2), "{s:?}");
    assert_eq!(
        (report.delivered, report.failed, report.dropped),
        (2, 2, 0),
        "{report:?}"
    );
}

// ===== dropping the client =====

#[tokio::test(start_paused = true)]
async fn dropping_the_last_handle_still_delivers_the_queue() {
    let mock = start_mock().await;
    let ph = builder(&mock)
        .flush_interval(Duration::from_secs(3600))
        .build()
        .unwrap();
    let clone = ph.clone();
    let ids: Vec<Uuid> = (0..3)
        .map(|_| ph.capture(Event::new("e", "u")).unwrap())
        .collect();
    drop(ph);
    let last = clone.capture(Event::new("e", "u")).unwrap();
    drop(clone);

    let start = Instant::now();
    let events = mock.wait_for_events(4, WAIT).await.unwrap();
    assert!(
        Instant::now() - start < Duration::from_secs(3600),
        "the queue waited for flush_interval"
    );
    let mut all = ids.clone();
    all.push(last);
    assert_delivered_once(&events, &all);
}

#[tokio::test(start_paused = true)]
async fn the_worker_finishes_once_the_handles_are_gone() {
    let mock = start_mock().await;
    let (ph, worker) = builder(&mock).build_pair().unwrap();
    let worker = tokio::spawn(worker);
    let ids: Vec<Uuid> = (0..3)
        .map(|_| ph.capture(Event::new("e", "u")).unwrap())
        .collect();
    drop(ph);
    tokio::time::timeout(WAIT, worker)
        .await
        .expect("the worker finishes")
        .unwrap();
    // Finished means delivered: no waiting needed.
    assert_delivered_once(&mock.events(), &ids);
}

// ===== queue full =====

#[tokio::test(start_paused = true)]
async fn a_full_queue_refuses_events_with_queue_full() {
    let mock = start_mock().await;
    let errors = ErrorLog::new();
    // The worker is not running yet: nothing leaves the queue.
    let (ph, worker) = builder(&mock)
        .max_queue_size(5)
        .on_error(errors.callback())
        .build_pair()
        .unwrap();

    let ids: Vec<Uuid> = (0..5)
        .map(|i| ph.capture(Event::new("e", "u").property("i", i)).unwrap())
        .collect();
    let error = ph.capture(Event::new("sixth", "u")).unwrap_err();
    assert_eq!(error, CaptureError::QueueFull { capacity: 5 });
    let message = error.to_string();
    assert!(
        message.contains('5'),
        "the message names the limit: {message}"
    );

    let s = ph.stats();
    assert_eq!(s.dropped.queue_full, 1, "{s:?}");
    assert_eq!(s.captured, 5, "{s:?}");
    assert_eq!(s.queue_depth, 5, "{s:?}");
    assert!(matches!(
        errors.all().as_slice(),
        [ErrorReport::Rejected(CaptureError::QueueFull {
            capacity: 5
        })]
    ));

    // Once the worker runs, the five accepted events are delivered, not the sixth.
    tokio::spawn(worker);
    let report = ph.flush().await;
    assert_eq!((report.delivered, report.failed), (5, 0));
    assert_delivered_once(&mock.events(), &ids);
    assert_eq!(ph.stats().queue_depth, 0);
}

#[tokio::test(start_paused = true)]
async fn a_slow_server_fills_the_queue() {
    let mock = start_mock().await;
    // Slow, but within the request timeout.
    let slow = Duration::from_secs(10);
    mock.set_default("/batch/", MockResponse::status(200).delay(slow));
    let errors = ErrorLog::new();
    let ph = builder(&mock)
        .request_timeout(Duration::from_secs(30))
        .max_queue_size(5)
        .flush_at(1)
        .max_in_flight(1)
        .on_error(errors.callback())
        .build()
        .unwrap();

    let first = ph.capture(Event::new("e", "u")).unwrap();
    // The first batch is stuck at the server.
    mock.wait_for_requests("/batch", 1, WAIT).await.unwrap();
    let mut ids = vec![first];
    for _ in 0..5 {
        ids.push(ph.capture(Event::new("e", "u")).unwrap());
    }
    assert_eq!(
        ph.capture(Event::new("e", "u")),
        Err(CaptureError::QueueFull { capacity: 5 })
    );
    assert_eq!(ph.stats().dropped.queue_full, 1);
    assert_eq!(errors.len(), 1);

    // Nothing accepted is lost once the server catches up.
    let report = ph.flush().await;
    assert_eq!((report.delivered, report.failed), (6, 0));
    assert_delivered_once(&mock.events(), &ids);
    assert_eq!(ph.stats().retries, 0);
}

#[tokio::test(start_paused = true)]
async fn capture_wait_waits_for_room_instead_of_failing() {
    let mock = start_mock().await;
    let (ph, worker) = builder(&mock).max_queue_size(2).build_pair().unwrap();
    ph.capture(Event::new("e", "u")).unwrap();
    ph.capture(Event::new("e", "u")).unwrap();
    let waiting = {
        let ph = ph.clone();
        tokio::spawn(async move { ph.capture_wait(Event::new("third", "u")).await })
    };
    tokio::spawn(worker);
    let third = waiting.await.unwrap().expect("queued once there was room");
    assert_eq!(ph.flush().await.delivered, 3);
    assert!(uuids_of(&mock.events()).contains(&third));
    assert_eq!(ph.stats().dropped.queue_full, 0);
}

// ===== sync mode =====

#[tokio::test(start_paused = true)]
async fn sync_mode_capture_wait_returns_after_the_server_received_the_event() {
    let mock = start_mock().await;
    let ph = builder(&mock).sync_mode(true).build().unwrap();

    let id = ph
        .capture_wait(Event::new("invoked", "lambda"))
        .await
        .unwrap();
    // No waiting: the event is already there.
    assert_eq!(uuids_of(&mock.events()), vec![id]);
    assert_eq!(ph.stats().delivered, 1);

    let id = ph
        .capture_wait(Event::new("invoked", "lambda"))
        .await
        .unwrap();
    assert_eq!(uuids_of(&mock.events())[1], id);
    assert_eq!(mock.requests_to("/batch").len(), 2);
}

#[tokio::test(start_paused = true)]
async fn sync_mode_capture_wait_waits_for_the_answer() {
    let mock = start_mock().await;
    let slow = Duration::from_secs(5);
    mock.enqueue("/batch/", MockResponse::status(200).delay(slow));
    let ph = builder(&mock).sync_mode(true).build().unwrap();
    let start = Instant::now();
    ph.capture_wait(Event::new("invoked", "lambda"))
        .await
        .unwrap();
    assert!(
        Instant::now() - start >= slow,
        "capture_wait resolved before PostHog answered"
    );
    assert_eq!(mock.events().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn sync_mode_sends_without_waiting_for_the_interval() {
    let mock = start_mock().await;
    let interval = Duration::from_secs(60);
    let ph = builder(&mock)
        .sync_mode(true)
        .flush_interval(interval)
        .build()
        .unwrap();
    let start = Instant::now();
    let id = ph.capture(Event::new("invoked", "lambda")).unwrap();
    let events = mock.wait_for_events(1, WAIT).await.unwrap();
    assert_eq!(uuids_of(&events), vec![id]);
    let reqs = mock.requests_to("/batch");
    assert!(reqs[0].received_at - start < interval);
}

#[tokio::test(start_paused = true)]
async fn sync_mode_capture_wait_reports_a_refused_event() {
    let mock = start_mock().await;
    mock.enqueue("/batch/", MockResponse::status(400));
    let errors = ErrorLog::new();
    let ph = builder(&mock)
        .sync_mode(true)
        .on_error(errors.callback())
        .build()
        .unwrap();

    let id = Uuid::parse_str("6ba7b810-9dad-11d1-80b4-00c04fd430c8").unwrap();
    let result = ph
        .capture_wait(Event::new("invoked", "lambda").uuid(id))
        .await;
    match result {
        Err(CaptureError::Delivery(e)) => {
            assert_eq!(e.uuids(), &[id]);
            let status = e
                .error()
                .downcast_ref::<UnexpectedStatus>()
                .map(|s| s.status().as_u16());
            assert_eq!(status, Some(400), "{e}");
        }
        other => panic!("expected CaptureError::Delivery, got {other:?}"),
    }
    assert_eq!(mock.requests_to("/batch").len(), 1, "a 400 is not retried");
    assert!(mock.events().is_empty());
    assert_eq!(errors.delivery_uuids(), vec![id]);
    assert_eq!(ph.stats().failed, 1);

    // The next event goes through.
    let ok = ph
        .capture_wait(Event::new("invoked", "lambda"))
        .await
        .unwrap();
    assert_delivered_once(&mock.events(), &[ok]);
}

// ===== disabled =====

#[tokio::test(start_paused = true)]
async fn a_disabled_client_sends_nothing() {
    let mock = start_mock().await;
    let ph: PostHog = builder(&mock).disabled(true).build().unwrap();
    assert!(ph.is_disabled());

    let id = ph.capture(Event::new("e", "u")).unwrap();
    assert_eq!(id.get_version_num(), 7);
    let chosen = Uuid::parse_str("0f8fad5b-d9cb-469f-a165-70867728950e").unwrap();
    assert_eq!(
        ph.capture(Event::new("e", "u").uuid(chosen)).unwrap(),
        chosen
    );
    ph.set("u", serde_json::json!({"a": 1})).unwrap();
    ph.alias("a", "b").unwrap();
    ph.pageview("u", "https://example.com").unwrap();
    ph.group_identify("company", "acme", serde_json::json!({}))
        .unwrap();
    ph.capture_wait(Event::new("e", "u")).await.unwrap();
    // Still validated.
    assert_eq!(
        ph.capture(Event::new("", "u")),
        Err(CaptureError::EmptyEventName)
    );

    let report = ph.flush().await;
    assert_eq!((report.delivered, report.failed, report.dropped), (0, 0, 0));
    tokio::time::sleep(Duration::from_secs(60)).await;
    let report = ph.shutdown(Duration::from_secs(5)).await;
    assert_eq!((report.delivered, report.failed, report.dropped), (0, 0, 0));
    assert!(
        mock.requests().is_empty(),
        "a disabled client made a request"
    );
    let s = ph.stats();
    assert_eq!((s.requests, s.delivered), (0, 0));
}

#[tokio::test(start_paused = true)]
async fn a_disabled_clients_worker_has_nothing_to_do() {
    let mock = start_mock().await;
    let (ph, worker) = builder(&mock).disabled(true).build_pair().unwrap();
    ph.capture(Event::new("e", "u")).unwrap();
    tokio::time::timeout(WAIT, worker)
        .await
        .expect("the worker of a disabled client is already done");
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert!(mock.requests().is_empty());
}
