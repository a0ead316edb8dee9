//! Faults `MockPostHog` cannot script, from the bare server of [`crate::raw`] on tokio's paused
//! clock: black holes, answers dripped one byte per 200 ms, a 2xx with a 50 MB body,
//! redirects to another port, and answers that are not HTTP.
//!
//! Each scenario is ten bursts of 50 events, 20 s apart, with `flush_at(50)` and one batch in
//! flight ([`scripted_bursts`]), so scripted answers map to requests in order.

use std::collections::HashMap;
use std::time::Duration;

use posthog_tower::net::UnexpectedStatus;
use posthog_tower::DeadlineElapsed;
use posthog_tower::{ErrorReport, Uuid};

use crate::raw::{Answer, RawRequest, RawServer, DRIP};
use crate::support::*;
use crate::{account, scripted_bursts, scripted_bursts_until, Arrival, Row};

/// The requests `server` read, for [`account`]: a 2xx answer means the server took the batch
/// in; `acknowledged` tells whether the client heard it.
fn arrivals(server: &RawServer, acknowledged: impl Fn(&RawRequest) -> bool) -> Vec<Arrival> {
    server
        .requests()
        .iter()
        .map(|r| Arrival {
            events: r.events.clone(),
            ingested: r.answer.is_2xx(),
            acknowledged: r.answer.is_2xx() && acknowledged(r),
        })
        .collect()
}

/// How many times each batch (by its first uuid) was sent, in order of first arrival.
fn attempts_per_batch(requests: &[RawRequest]) -> Vec<usize> {
    let mut order: Vec<Uuid> = Vec::new();
    let mut count: HashMap<Uuid, usize> = HashMap::new();
    for r in requests {
        let first = uuid_of(&r.events[0]);
        let n = count.entry(first).or_default();
        if *n == 0 {
            order.push(first);
        }
        *n += 1;
    }
    order.iter().map(|u| count[u]).collect()
}

/// The events reported failed because the shutdown deadline passed.
fn failed_by_deadline(errors: &ErrorLog) -> usize {
    errors
        .all()
        .iter()
        .filter_map(|e| match e {
            ErrorReport::Delivery(d) if d.error().downcast_ref::<DeadlineElapsed>().is_some() => {
                Some(d.uuids().len())
            }
            _ => None,
        })
        .sum()
}

/// The status of each delivery failure that was an HTTP status, in order.
fn failed_statuses(errors: &ErrorLog) -> Vec<u16> {
    errors
        .all()
        .iter()
        .filter_map(|e| match e {
            ErrorReport::Delivery(d) => d
                .error()
                .downcast_ref::<UnexpectedStatus>()
                .map(|s| s.status().as_u16()),
            _ => None,
        })
        .collect()
}

// ===== black holes =====

/// A request timeout of 2 s against a server that never answers: each of the first nine
/// batches times out four times (4 × 2 s plus backoffs of 1, 2 and 4 s with up to 25 %
/// jitter: at most 16.75 s, before the next burst) and fails. The tenth, closed by the
/// shutdown at 180 s, is in its second attempt (181.0 to 183.25 s after its timeout and
/// first backoff) when the 4 s deadline passes at 184 s: it is reported failed by the
/// deadline, and `shutdown` returns exactly then.
async fn black_hole(server: &RawServer) -> (ErrorLog, posthog_tower::capture::Stats) {
    let errors = ErrorLog::new();
    let deadline = Duration::from_secs(4);
    let (ph, produced, report, took) = scripted_bursts_until(
        server.url(),
        &errors,
        |b| b.request_timeout(Duration::from_secs(2)),
        deadline,
    )
    .await;
    assert_eq!(took, deadline, "shutdown did not return at its deadline");
    let row = account(
        &ph,
        report,
        &produced,
        &(&errors).into(),
        &arrivals(server, |_| false),
    );
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
    assert_eq!(failed_by_deadline(&errors), 50);
    let s = ph.stats();
    assert_eq!((s.requests, s.retries), (9 * 4 + 2, 9 * 3 + 1), "{s:?}");
    (errors, s)
}

/// The server reads each request and never answers.
#[tokio::test(start_paused = true)]
async fn a_black_hole_that_never_answers() {
    let server = RawServer::start(Answer::Silent).await;
    black_hole(&server).await;
    let requests = server.requests();
    let mut expected = vec![4; 9];
    expected.push(2);
    assert_eq!(attempts_per_batch(&requests), expected);
    // The request timeout runs from the start of each attempt: 2 s, then the first backoff.
    let gap = requests[1].received_at - requests[0].received_at;
    assert!(
        gap >= Duration::from_secs(3) && gap <= Duration::from_millis(3250),
        "{gap:?}"
    );
}

/// The server accepts connections and never reads from them: the request sits in the socket
/// buffers, and the client waits for an answer just the same.
#[tokio::test(start_paused = true)]
async fn a_black_hole_that_never_reads() {
    let server = RawServer::deaf().await;
    let (_, s) = black_hole(&server).await;
    assert!(server.requests().is_empty());
    // A timed-out connection is not reused: one connection per attempt.
    assert_eq!(server.connections() as u64, s.requests);
}

// ===== answers dripped one byte per 200 ms =====

/// A whole answer (status line, headers, body: 51 bytes) dripped one byte per 200 ms: the
/// status line and headers are in within the default 15 s request timeout, so every batch is
/// delivered at its first attempt (the body, still dripping then, is not waited for).
#[tokio::test(start_paused = true)]
async fn a_dripped_answer_within_the_request_timeout_is_delivered() {
    let server = RawServer::start(Answer::DripAll).await;
    let errors = ErrorLog::new();
    let (ph, produced, report) = scripted_bursts(server.url(), &errors, |b| b).await;
    let row = account(
        &ph,
        report,
        &produced,
        &(&errors).into(),
        &arrivals(&server, |_| true),
    );
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
    // The body was still dripping when the status line and headers were in: it is not waited
    // for, so each answer's connection is closed and the next batch opens a new one.
    let connections: Vec<usize> = server.requests().iter().map(|r| r.connection).collect();
    assert_eq!(connections, (1..=10).collect::<Vec<_>>());
}

/// The same drip against a 2 s request timeout: the timeout bounds the whole answer, not the
/// wait for each byte, so the attempt ends 2 s after the request, mid status line. The
/// server took the batch in (it was answering 200), so the re-send is a duplicate with the
/// same uuids, as documented for answers later than the timeout. Batch 1 meets the drip four
/// times (failed, yet ingested four times); batches 2 to 10 once, then a prompt 200.
#[tokio::test(start_paused = true)]
async fn an_answer_dripped_past_the_request_timeout_is_resent() {
    let server = RawServer::start(Answer::Ok).await;
    for _ in 0..4 {
        server.enqueue(Answer::DripAll);
    }
    for _ in 0..9 {
        server.enqueue(Answer::DripAll);
        server.enqueue(Answer::Ok);
    }
    let errors = ErrorLog::new();
    let (ph, produced, report) = scripted_bursts(server.url(), &errors, |b| {
        b.request_timeout(Duration::from_secs(2))
    })
    .await;
    let row = account(
        &ph,
        report,
        &produced,
        &(&errors).into(),
        &arrivals(&server, |r| r.answer == Answer::Ok),
    );
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
            duplicates: 3 * 50 + 9 * 50,
            lost: 0,
        }
    );
    let requests = server.requests();
    assert_eq!(requests.len(), 4 + 9 * 2);
    // 2 s (the timeout, 10 bytes into the status line), then the first backoff.
    let gap = requests[1].received_at - requests[0].received_at;
    assert!(
        gap >= Duration::from_secs(3) && gap <= Duration::from_millis(3250),
        "{gap:?}"
    );
    assert!(DRIP * 51 > Duration::from_secs(2));
}

/// A `200 OK` whose status line and headers arrive at once and whose 12-byte body then drips
/// one byte per 200 ms (2.4 s), against a 2 s request timeout: delivered at once, since the
/// status is the acknowledgement and the body still on its way is not waited for.
///
/// This found a broken promise: the request timeout wrapped the reading of the body too, so
/// every attempt ended in `Elapsed` 2 s in although its `200 OK` had arrived; the batch was
/// sent four times and reported failed while the server took it in four times over (40
/// requests, 30 retries, 1 500 duplicates).
#[tokio::test(start_paused = true)]
async fn a_200_whose_body_drips_past_the_request_timeout_is_delivered() {
    let server = RawServer::start(Answer::DripBody).await;
    let errors = ErrorLog::new();
    let (ph, produced, report) = scripted_bursts(server.url(), &errors, |b| {
        b.request_timeout(Duration::from_secs(2))
    })
    .await;
    let s = ph.stats();
    assert_eq!((s.requests, s.retries), (10, 0), "{s:?}");
    let row = account(
        &ph,
        report,
        &produced,
        &(&errors).into(),
        &arrivals(&server, |_| true),
    );
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
}

// ===== a 2xx with a 50 MB body =====

/// `200 OK` with a 50 MB body: the client reads 64 KiB of it, closes the connection, and
/// counts the batch delivered at once (the status is the acknowledgement). No retry, no
/// duplicate.
#[tokio::test(start_paused = true)]
async fn a_200_with_a_50_mb_body_is_delivered_once() {
    let server = RawServer::start(Answer::Huge).await;
    let errors = ErrorLog::new();
    let (ph, produced, report) = scripted_bursts(server.url(), &errors, |b| b).await;
    let row = account(
        &ph,
        report,
        &produced,
        &(&errors).into(),
        &arrivals(&server, |_| true),
    );
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
    // Each of the 10 answers was cut short by the client: one connection per batch.
    let connections: Vec<usize> = server.requests().iter().map(|r| r.connection).collect();
    assert_eq!(connections, (1..=10).collect::<Vec<_>>());
}

// ===== redirects =====

/// Every `/batch/` is redirected to `MockPostHog` on another port (301, 302, 303, 307 and
/// 308, twice each). The client follows no redirect: a 3xx is not a 2xx, and
/// `RetryPolicy` retries only 408, 429, 5xx and transport errors, so each batch fails at
/// its first attempt with the redirect's status, and the other port receives nothing.
#[tokio::test(start_paused = true)]
async fn a_redirect_to_another_port_is_not_followed_and_fails_the_batch() {
    let elsewhere = start_mock().await;
    let location = format!("{}/batch/", elsewhere.url());
    let statuses = [301, 302, 303, 307, 308];
    let server = RawServer::start(Answer::Ok).await;
    for i in 0..10 {
        server.enqueue(Answer::Redirect {
            status: statuses[i % 5],
            location: location.clone(),
        });
    }
    let errors = ErrorLog::new();
    let (ph, produced, report) = scripted_bursts(server.url(), &errors, |b| b).await;
    let row = account(
        &ph,
        report,
        &produced,
        &(&errors).into(),
        &arrivals(&server, |_| false),
    );
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
    let s = ph.stats();
    assert_eq!((s.requests, s.retries), (10, 0), "{s:?}");
    assert_eq!(
        failed_statuses(&errors),
        (0..10).map(|i| statuses[i % 5]).collect::<Vec<_>>()
    );
    assert!(elsewhere.requests().is_empty(), "a redirect was followed");
}

// ===== answers that are not HTTP =====

/// Not HTTP: a line of text, an HTTP/0.9-style bare body, bytes of no protocol, and a status
/// line cut short; each is followed by the server closing the connection.
const GARBAGE: [&[u8]; 4] = [
    b"hello\r\n",
    br#"{"status":1}"#,
    &[
        0x8f, 0x00, 0xff, 0x13, 0x37, 0xc3, 0x28, 0x0a, 0x0d, 0x00, 0x7f, 0xfe,
    ],
    b"HTTP/1.1 2",
];

/// The server reads each request and answers with one of [`GARBAGE`], then closes: the
/// client sees a connection error and retries. Batch 1 gets garbage four times and fails;
/// batches 2 to 10 get it once, then a 200. The server never answered a 2xx to garbage, so
/// the re-sends are no duplicates (they carried the same events, which `account` checks).
#[tokio::test(start_paused = true)]
async fn answers_that_are_not_http_are_retried_then_fail() {
    let server = RawServer::start(Answer::Ok).await;
    for g in GARBAGE {
        server.enqueue(Answer::Garbage(g));
    }
    for i in 0..9 {
        server.enqueue(Answer::Garbage(GARBAGE[i % 4]));
        server.enqueue(Answer::Ok);
    }
    let errors = ErrorLog::new();
    let (ph, produced, report) = scripted_bursts(server.url(), &errors, |b| b).await;
    let row = account(
        &ph,
        report,
        &produced,
        &(&errors).into(),
        &arrivals(&server, |_| true),
    );
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
    let s = ph.stats();
    assert_eq!((s.requests, s.retries), (4 + 9 * 2, 3 + 9), "{s:?}");
    let mut expected = vec![4];
    expected.extend([2; 9]);
    assert_eq!(attempts_per_batch(&server.requests()), expected);
    // The failure is a transport error, not a status.
    assert!(failed_statuses(&errors).is_empty());
    assert_eq!(errors.deliveries(), 1);
}
