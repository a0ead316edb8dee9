//! Scenarios against `MockPostHog` on tokio's paused clock: a long outage, connection resets
//! (before and after the server ingested the batch), a server slower than the request timeout,
//! 429 storms with `Retry-After`, an unreachable host, and 200 answers with a malformed body.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use posthog_tower::testing::{MockResponse, RecordedRequest};
use posthog_tower::DeadlineElapsed;
use posthog_tower::{ErrorReport, PostHog, Uuid};
use serde_json::Value;
use tokio::time::Instant;

use crate::support::*;
use crate::{account, account_mock, no_lost_answers, scripted_bursts, Produced, Row, SHUTDOWN};

// ===== (a) outage =====

/// 750 events over 90 s, one every 120 ms (never at the same instant as a batch timer: 5 s
/// is not a multiple of 120 ms), every 50th dropped by `before_send`. `/batch/` answers 503
/// for the first 60 s.
///
/// With the defaults (`flush_interval` 5 s, 3 retries after 1, 2 and 4 s plus up to 25 %
/// jitter), the batches closed at 5 s, 10.04 s, ..., 50.36 s make their last attempt before
/// the recovery (50.36 + 8.75 < 60) and fail (420 events, 8 of them dropped by the hook
/// first); the one closed at 55.4 s makes its last
/// attempt at 62.4 s at the earliest and goes through, as does everything after. No batch
/// sits close enough to the boundary for the jitter to decide, so the numbers are exact.
#[tokio::test(start_paused = true)]
async fn a_60_second_outage_then_recovery() {
    let mock = start_mock().await;
    mock.set_default("/batch/", MockResponse::status(503));
    let errors = ErrorLog::new();
    let ph = builder(&mock)
        .gzip(true)
        .on_error(errors.callback())
        .before_send(|e| {
            if e.properties().get("drop") == Some(Value::Bool(true)) {
                None
            } else {
                Some(e)
            }
        })
        .build()
        .unwrap();

    let start = Instant::now();
    let recovery = {
        let mock = mock.clone();
        tokio::spawn(async move {
            tokio::time::sleep_until(start + Duration::from_secs(60)).await;
            mock.set_default("/batch/", MockResponse::status(200));
        })
    };
    let mut produced = Produced::default();
    for i in 0..750u64 {
        tokio::time::sleep_until(start + Duration::from_millis(120) * i as u32).await;
        let _ = produced.capture(&ph, i, i % 50 == 49);
    }
    recovery.await.unwrap();
    let report = ph.shutdown(SHUTDOWN).await;

    let row = account_mock(&ph, report, &produced, &errors, &mock, no_lost_answers);
    assert_eq!(
        row,
        Row {
            tried: 750,
            delivered: 318,
            failed: 417,
            failed_but_ingested: 0,
            queue_full: 0,
            closed: 0,
            before_send: 15,
            duplicates: 0,
            lost: 0,
        }
    );
    // Every failure is the outage's 503, after the full 4 attempts.
    let s = ph.stats();
    assert_eq!(errors.deliveries(), 10, "one report per failed batch");
    assert!(s.retries >= 10 * 3, "{s:?}");
    // The gzip bodies were decoded by the mock (otherwise `batch_of` would have panicked).
    assert!(mock.requests_to("/batch").iter().all(|r| r.gzip));
}

/// The same outage ridden out: 8 retries reach past 60 s (1 + 2 + 4 + 8 + 16 + 30 s), but
/// only 2 batches may be in flight and the queue holds 200 events, so the queue fills up and
/// `capture` answers `QueueFull` at once instead of waiting; every accepted event is
/// delivered. (How many are refused depends on when the retries, with their jitter, free a
/// sending slot, so only the sum is exact.)
#[tokio::test(start_paused = true)]
async fn a_60_second_outage_ridden_out_with_more_retries_and_a_full_queue() {
    let mock = start_mock().await;
    mock.set_default("/batch/", MockResponse::status(503));
    let errors = ErrorLog::new();
    let ph = builder(&mock)
        .max_retries(8)
        .max_in_flight(2)
        .max_queue_size(200)
        .on_error(errors.callback())
        .build()
        .unwrap();

    let start = Instant::now();
    let recovery = {
        let mock = mock.clone();
        tokio::spawn(async move {
            tokio::time::sleep_until(start + Duration::from_secs(60)).await;
            mock.set_default("/batch/", MockResponse::status(200));
        })
    };
    let mut produced = Produced::default();
    produced
        .spread(&ph, start, 750, Duration::from_millis(120))
        .await;
    recovery.await.unwrap();
    let report = ph.shutdown(SHUTDOWN).await;

    let row = account_mock(&ph, report, &produced, &errors, &mock, no_lost_answers);
    assert_eq!((row.failed, row.duplicates), (0, 0), "{row:?}");
    assert!(row.queue_full > 0, "the queue never filled: {row:?}");
    assert_eq!(row.delivered + row.queue_full, 750, "{row:?}");
}

// ===== (b) connection resets =====

/// The connection is reset after the request was read but before it was processed: the
/// client retries, nothing arrives twice. The first batch meets four resets and fails; every
/// other batch meets one and goes through on the retry.
#[tokio::test(start_paused = true)]
async fn connection_resets_before_the_batch_is_processed() {
    let mock = start_mock().await;
    for _ in 0..4 {
        mock.enqueue("/batch/", MockResponse::reset_connection());
    }
    for _ in 0..9 {
        mock.enqueue("/batch/", MockResponse::reset_connection());
        mock.enqueue("/batch/", MockResponse::status(200));
    }
    let errors = ErrorLog::new();
    let (ph, produced, report) = scripted_bursts(&mock.url(), &errors, |b| b.gzip(true)).await;

    let row = account_mock(&ph, report, &produced, &errors, &mock, no_lost_answers);
    assert_eq!(
        row,
        Row {
            tried: 500,
            delivered: 450,
            failed: 50,
            failed_but_ingested: 0,
            queue_full: 0,
            closed: 0,
            before_send: 0,
            duplicates: 0,
            lost: 0,
        }
    );
    let reqs = mock.requests_to("/batch");
    assert_eq!(reqs.len(), 4 + 9 * 2);
    assert_eq!(reqs.iter().filter(|r| r.reset).count(), 4 + 9);
    assert_eq!(ph.stats().retries, 3 + 9);
}

/// The server ingests the batch, then the connection drops before the answer is sent
/// (`lose_response`): the client cannot tell this from a reset and sends the batch again.
/// The re-sends carry the same uuids and events; PostHog deduplicates on uuid, so they are
/// stored once. Batch 1 loses every answer: failed for the client, yet ingested four times.
/// Batches 2 to 10 lose their first answer: delivered, each event arriving twice.
#[tokio::test(start_paused = true)]
async fn answers_lost_after_the_batch_was_ingested_are_resent_with_the_same_uuids() {
    let mock = start_mock().await;
    for _ in 0..4 {
        mock.enqueue("/batch/", MockResponse::status(200).lose_response());
    }
    for _ in 0..9 {
        mock.enqueue("/batch/", MockResponse::status(200).lose_response());
        mock.enqueue("/batch/", MockResponse::status(200));
    }
    let errors = ErrorLog::new();
    let (ph, produced, report) = scripted_bursts(&mock.url(), &errors, |b| b.gzip(true)).await;

    let row = account_mock(&ph, report, &produced, &errors, &mock, |_, r| r.reset);
    assert_eq!(
        row,
        Row {
            tried: 500,
            delivered: 450,
            failed: 50,
            failed_but_ingested: 50,
            queue_full: 0,
            closed: 0,
            before_send: 0,
            // Batch 1: 3 extra copies of 50 events; batches 2-10: 1 extra copy of 50.
            duplicates: 3 * 50 + 9 * 50,
            lost: 0,
        }
    );
}

// ===== (c) a server slower than the request timeout =====

/// `request_timeout(2 s)` against answers that take 10 s. The mock records a request when it
/// arrives, as PostHog would ingest it, so a 2xx answered too late is a lost answer: the
/// client retries and the events arrive again (same uuids; PostHog deduplicates). Batch 1:
/// four slow 200s, failed for the client but ingested four times. Batches 2 to 5: one slow
/// 200, then a prompt one. Batches 6 to 10: one slow 503 (not ingested), then a prompt 200.
#[tokio::test(start_paused = true)]
async fn a_server_slower_than_the_request_timeout() {
    let mock = start_mock().await;
    let slow = Duration::from_secs(10);
    let mut lost_answers = HashSet::new();
    let mut index = 0usize;
    let mut script = |response: MockResponse, lost: bool| {
        if lost {
            lost_answers.insert(index);
        }
        index += 1;
        mock.enqueue("/batch/", response);
    };
    for _ in 0..4 {
        script(MockResponse::status(200).delay(slow), true);
    }
    for _ in 0..4 {
        script(MockResponse::status(200).delay(slow), true);
        script(MockResponse::status(200), false);
    }
    for _ in 0..5 {
        script(MockResponse::status(503).delay(slow), false);
        script(MockResponse::status(200), false);
    }
    let errors = ErrorLog::new();
    let (ph, produced, report) = scripted_bursts(&mock.url(), &errors, |b| {
        b.request_timeout(Duration::from_secs(2))
    })
    .await;

    let row = account_mock(&ph, report, &produced, &errors, &mock, |i, _| {
        lost_answers.contains(&i)
    });
    assert_eq!(
        row,
        Row {
            tried: 500,
            delivered: 450,
            failed: 50,
            failed_but_ingested: 50,
            queue_full: 0,
            closed: 0,
            before_send: 0,
            duplicates: 3 * 50 + 4 * 50,
            lost: 0,
        }
    );
    assert_eq!(mock.requests_to("/batch").len(), 4 + 4 * 2 + 5 * 2);
}

// ===== (d) 429 storm =====

/// `/batch/` answers 429 with `Retry-After: 10` from 10 s to 70 s; 750 events over 90 s, one
/// every 120 ms. The floor of 10 s is above every backoff (at most 5 s), so the attempts of a
/// batch closed at `t` are at exactly `t`, `t + 10`, `t + 20` and `t + 30`: the batches
/// closed at 10.04 s to 35.24 s spend all four inside the storm and fail; the others get
/// through. Nothing arrives twice: a 429 is not ingested.
#[tokio::test(start_paused = true)]
async fn a_429_storm_with_retry_after() {
    let mock = start_mock().await;
    let errors = ErrorLog::new();
    let ph = builder(&mock).on_error(errors.callback()).build().unwrap();
    let start = Instant::now();
    let storm = {
        let mock = mock.clone();
        tokio::spawn(async move {
            tokio::time::sleep_until(start + Duration::from_secs(10)).await;
            mock.set_default("/batch/", MockResponse::status(429).retry_after("10"));
            tokio::time::sleep_until(start + Duration::from_secs(70)).await;
            mock.set_default("/batch/", MockResponse::status(200));
        })
    };
    let mut produced = Produced::default();
    produced
        .spread(&ph, start, 750, Duration::from_millis(120))
        .await;
    storm.await.unwrap();
    let report = ph.shutdown(SHUTDOWN).await;

    let row = account_mock(&ph, report, &produced, &errors, &mock, no_lost_answers);
    assert_eq!(
        row,
        Row {
            tried: 750,
            delivered: 495,
            failed: 255,
            failed_but_ingested: 0,
            queue_full: 0,
            closed: 0,
            before_send: 0,
            duplicates: 0,
            lost: 0,
        }
    );
    // Every retry after a 429 waited exactly its `Retry-After: 10` (paused time: no slack).
    let reqs = mock.requests_to("/batch");
    let mut by_batch: HashMap<Uuid, Vec<&RecordedRequest>> = HashMap::new();
    for r in &reqs {
        by_batch
            .entry(uuid_of(&batch_of(r)[0]))
            .or_default()
            .push(r);
    }
    let mut throttled = 0;
    for attempts in by_batch.values() {
        for w in attempts.windows(2) {
            assert_eq!(w[0].status, 429, "only a 429 is followed by a retry");
            assert_eq!(w[1].received_at - w[0].received_at, Duration::from_secs(10));
            throttled += 1;
        }
    }
    assert_eq!(throttled, ph.stats().retries);
}

// ===== (e) unreachable host =====

/// A port that was bound, then closed: every attempt is refused. 500 events over 60 s; every
/// batch fails after its 4 attempts, and whatever is still being retried when the 5 s
/// shutdown deadline passes is reported failed too. Nothing is delivered and nothing is lost.
#[tokio::test(start_paused = true)]
async fn an_unreachable_host() {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let errors = ErrorLog::new();
    let ph = PostHog::builder(KEY)
        .host(format!("http://127.0.0.1:{port}"))
        .on_error(errors.callback())
        .build()
        .unwrap();
    let mut produced = Produced::default();
    produced
        .spread(&ph, Instant::now(), 500, Duration::from_millis(120))
        .await;
    let report = ph.shutdown(Duration::from_secs(5)).await;

    let row = account(&ph, report, &produced, &(&errors).into(), &[]);
    assert_eq!(
        row,
        Row {
            tried: 500,
            delivered: 0,
            failed: 500,
            failed_but_ingested: 0,
            queue_full: 0,
            closed: 0,
            before_send: 0,
            duplicates: 0,
            lost: 0,
        }
    );
    // The earlier batches ran out of retries (4 refused connections each) before the
    // deadline; the 33 events of the batch closed by the shutdown at 59.88 s were still being
    // retried when the deadline passed at 64.88 s.
    let by_deadline: usize = errors
        .all()
        .iter()
        .filter_map(|e| match e {
            ErrorReport::Delivery(d) if d.error().downcast_ref::<DeadlineElapsed>().is_some() => {
                Some(d.uuids().len())
            }
            _ => None,
        })
        .sum();
    assert_eq!(by_deadline, 33);
    let s = ph.stats();
    // Retries are counted when scheduled: the last batch's third retry was waiting out its
    // backoff when the deadline passed, so it counts without a request.
    assert_eq!((s.requests, s.retries), (11 * 4 + 3, 11 * 3 + 3), "{s:?}");
}

// ===== (f) 200 with a malformed body =====

/// A 2xx is PostHog's acknowledgement whatever its body says: HTML, truncated JSON and an
/// empty body all count as delivered, without a retry and without a duplicate.
#[tokio::test(start_paused = true)]
async fn a_200_with_a_malformed_body_is_delivered() {
    let mock = start_mock().await;
    let bodies: [&'static str; 3] = ["<html>oops</html>", r#"{"status": "#, ""];
    for i in 0..10 {
        mock.enqueue(
            "/batch/",
            MockResponse::status(200)
                .with_raw_body(bodies[i % 3])
                .with_header("content-type", "application/json"),
        );
    }
    let errors = ErrorLog::new();
    let (ph, produced, report) = scripted_bursts(&mock.url(), &errors, |b| b.gzip(true)).await;

    let row = account_mock(&ph, report, &produced, &errors, &mock, no_lost_answers);
    assert_eq!(
        row,
        Row {
            tried: 500,
            delivered: 500,
            failed: 0,
            failed_but_ingested: 0,
            queue_full: 0,
            closed: 0,
            before_send: 0,
            duplicates: 0,
            lost: 0,
        }
    );
    let s = ph.stats();
    assert_eq!((s.requests, s.retries), (10, 0), "{s:?}");
    assert!(errors.is_empty(), "{:?}", errors.all());
}
