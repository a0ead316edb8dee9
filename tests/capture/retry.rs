//! Retries over real HTTP to `MockPostHog`, on tokio's paused clock: which answers are
//! retried, the backoff between attempts, `Retry-After`, `max_retries`, request timeouts, and
//! the 413 split. Delays are measured with the `received_at` of the recorded requests.

use std::time::{Duration, SystemTime};

use posthog_tower::net::UnexpectedStatus;
use posthog_tower::testing::{MockResponse, RecordedRequest};
use posthog_tower::{ErrorReport, Event, Uuid};
use tokio::time::Instant;

use crate::support::*;

/// The gaps between consecutive requests.
fn gaps(reqs: &[RecordedRequest]) -> Vec<Duration> {
    reqs.windows(2)
        .map(|w| w[1].received_at - w[0].received_at)
        .collect()
}

/// Asserts `gap` is the backoff `base` plus at most 25 % jitter.
fn assert_backoff(gap: Duration, base: Duration) {
    // Paused time makes the gap exactly the computed delay; the slack only absorbs rounding.
    let slack = Duration::from_millis(5);
    assert!(
        gap >= base && gap <= base.mul_f64(1.25) + slack,
        "gap {gap:?} is not {base:?} + up to 25% jitter"
    );
}

/// What is left of `gap` once the request timeout that started it is taken off.
fn after_timeout(gap: Duration, timeout: Duration) -> Duration {
    gap.checked_sub(timeout)
        .unwrap_or_else(|| panic!("retried after {gap:?}, before the {timeout:?} timeout"))
}

/// Every attempt carried the same events: same uuids, timestamps and properties.
fn assert_same_events(reqs: &[RecordedRequest]) {
    let first = batch_of(&reqs[0]);
    for (i, r) in reqs.iter().enumerate().skip(1) {
        assert_eq!(batch_of(r), first, "attempt {i} sent different events");
    }
}

/// The status of the error behind a delivery failure, if it was an HTTP status.
fn delivery_status(error: &ErrorReport) -> Option<u16> {
    match error {
        ErrorReport::Delivery(d) => d
            .error()
            .downcast_ref::<UnexpectedStatus>()
            .map(|s| s.status().as_u16()),
        _ => None,
    }
}

// ===== what is retried =====

/// The first attempt gets `first`, the retry the default 200: everything is delivered once.
async fn retried_then_delivered(first: MockResponse) -> Vec<RecordedRequest> {
    let mock = start_mock().await;
    mock.enqueue("/batch/", first);
    let errors = ErrorLog::new();
    let ph = builder(&mock).on_error(errors.callback()).build().unwrap();

    let ids: Vec<Uuid> = (0..3)
        .map(|i| ph.capture(Event::new("e", "u").property("i", i)).unwrap())
        .collect();
    let report = ph.flush().await;
    assert_eq!((report.delivered, report.failed), (3, 0));

    let reqs = mock.requests_to("/batch");
    assert_eq!(reqs.len(), 2, "one failed attempt, one retry");
    assert_eq!(reqs[1].status, 200);
    assert_same_events(&reqs);
    assert_delivered_once(&mock.events(), &ids);
    // Without Retry-After, the first backoff: 1 s plus jitter.
    assert_backoff(
        reqs[1].received_at - reqs[0].received_at,
        Duration::from_secs(1),
    );

    let s = ph.stats();
    assert_eq!(
        (s.delivered, s.failed, s.retries, s.requests),
        (3, 0, 1, 2),
        "{s:?}"
    );
    assert!(errors.is_empty(), "{:?}", errors.all());
    reqs
}

async fn status_is_retried(code: u16) {
    let reqs = retried_then_delivered(MockResponse::status(code)).await;
    assert_eq!(reqs[0].status, code);
}

#[tokio::test(start_paused = true)]
async fn status_408_is_retried() {
    status_is_retried(408).await;
}

#[tokio::test(start_paused = true)]
async fn status_429_is_retried() {
    status_is_retried(429).await;
}

#[tokio::test(start_paused = true)]
async fn status_500_is_retried() {
    status_is_retried(500).await;
}

#[tokio::test(start_paused = true)]
async fn status_502_is_retried() {
    status_is_retried(502).await;
}

#[tokio::test(start_paused = true)]
async fn status_503_is_retried() {
    status_is_retried(503).await;
}

#[tokio::test(start_paused = true)]
async fn status_504_is_retried() {
    status_is_retried(504).await;
}

#[tokio::test(start_paused = true)]
async fn connection_reset_is_retried() {
    let reqs = retried_then_delivered(MockResponse::reset_connection()).await;
    assert!(reqs[0].reset);
}

/// The only attempt gets `code`: no retry, the events fail and `on_error` hears of it.
async fn status_is_final(code: u16) {
    let mock = start_mock().await;
    mock.enqueue("/batch/", MockResponse::status(code));
    let errors = ErrorLog::new();
    let ph = builder(&mock).on_error(errors.callback()).build().unwrap();

    let ids: Vec<Uuid> = (0..3)
        .map(|_| ph.capture(Event::new("e", "u")).unwrap())
        .collect();
    let report = ph.flush().await;
    assert_eq!((report.delivered, report.failed), (0, 3));
    // Definitive: nothing more is sent later either.
    tokio::time::sleep(Duration::from_secs(120)).await;
    let reqs = mock.requests_to("/batch");
    assert_eq!(reqs.len(), 1, "status {code} was retried");
    assert_eq!(reqs[0].status, code);

    let reported = errors.all();
    assert_eq!(reported.len(), 1, "{reported:?}");
    assert_eq!(delivery_status(&reported[0]), Some(code), "{reported:?}");
    assert_eq!(errors.delivery_uuids(), ids);
    let s = ph.stats();
    assert_eq!(
        (s.delivered, s.failed, s.retries, s.requests),
        (0, 3, 0, 1),
        "{s:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn status_400_is_not_retried() {
    status_is_final(400).await;
}

#[tokio::test(start_paused = true)]
async fn status_401_is_not_retried() {
    status_is_final(401).await;
}

#[tokio::test(start_paused = true)]
async fn status_403_is_not_retried() {
    status_is_final(403).await;
}

// ===== backoff and max_retries =====

#[tokio::test(start_paused = true)]
async fn backoff_doubles_and_max_retries_bounds_the_attempts() {
    let mock = start_mock().await;
    mock.set_default("/batch/", MockResponse::status(503));
    let errors = ErrorLog::new();
    let ph = builder(&mock)
        .max_retries(3)
        .on_error(errors.callback())
        .build()
        .unwrap();

    let ids: Vec<Uuid> = (0..2)
        .map(|i| ph.capture(Event::new("e", "u").property("i", i)).unwrap())
        .collect();
    let report = ph.flush().await;
    assert_eq!((report.delivered, report.failed), (0, 2));
    tokio::time::sleep(Duration::from_secs(120)).await;

    let reqs = mock.requests_to("/batch");
    assert_eq!(reqs.len(), 4, "max_retries(3): exactly 4 attempts");
    let gaps = gaps(&reqs);
    assert_backoff(gaps[0], Duration::from_secs(1));
    assert_backoff(gaps[1], Duration::from_secs(2));
    assert_backoff(gaps[2], Duration::from_secs(4));
    assert_same_events(&reqs);
    assert!(mock.events().is_empty());

    let reported = errors.all();
    assert_eq!(reported.len(), 1, "one report for the failed batch");
    assert_eq!(delivery_status(&reported[0]), Some(503));
    assert_eq!(errors.delivery_uuids(), ids);
    let s = ph.stats();
    assert_eq!(
        (s.delivered, s.failed, s.retries, s.requests),
        (0, 2, 3, 4),
        "{s:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn max_retries_sets_the_number_of_attempts() {
    for retries in [0usize, 1, 5] {
        let mock = start_mock().await;
        mock.set_default("/batch/", MockResponse::status(500));
        let ph = builder(&mock).max_retries(retries).build().unwrap();
        ph.capture(Event::new("e", "u")).unwrap();
        let report = ph.flush().await;
        assert_eq!((report.delivered, report.failed), (0, 1), "{retries}");
        tokio::time::sleep(Duration::from_secs(300)).await;
        let reqs = mock.requests_to("/batch");
        assert_eq!(reqs.len(), retries + 1, "max_retries({retries})");
        let mut base = Duration::from_secs(1);
        for gap in gaps(&reqs) {
            assert_backoff(gap, base);
            base *= 2;
        }
        assert_eq!(ph.stats().retries, retries as u64);
    }
}

#[tokio::test(start_paused = true)]
async fn retries_eventually_succeed_without_duplicates() {
    let mock = start_mock().await;
    mock.enqueue("/batch/", MockResponse::status(500));
    mock.enqueue("/batch/", MockResponse::reset_connection());
    mock.enqueue("/batch/", MockResponse::status(429));
    let ph = builder(&mock).flush_at(5).build().unwrap();
    let ids: Vec<Uuid> = (0..5)
        .map(|i| ph.capture(Event::new("e", "u").property("i", i)).unwrap())
        .collect();
    let report = ph.flush().await;
    assert_eq!((report.delivered, report.failed), (5, 0));
    let reqs = mock.requests_to("/batch");
    assert_eq!(reqs.len(), 4);
    assert_same_events(&reqs);
    assert_delivered_once(&mock.events(), &ids);
    let s = ph.stats();
    assert_eq!((s.retries, s.requests, s.delivered), (3, 4, 5), "{s:?}");
}

// ===== Retry-After =====

/// One refused attempt with `refusal`, then the retry; returns the gap between them.
async fn gap_after(refusal: MockResponse) -> Duration {
    let mock = start_mock().await;
    mock.enqueue("/batch/", refusal);
    let ph = builder(&mock).build().unwrap();
    let id = ph.capture(Event::new("e", "u")).unwrap();
    assert_eq!(ph.flush().await.delivered, 1);
    let reqs = mock.requests_to("/batch");
    assert_eq!(reqs.len(), 2);
    assert_same_events(&reqs);
    assert_delivered_once(&mock.events(), &[id]);
    reqs[1].received_at - reqs[0].received_at
}

#[tokio::test(start_paused = true)]
async fn retry_after_seconds_is_a_floor() {
    let gap = gap_after(MockResponse::status(503).retry_after("7")).await;
    assert!(
        gap >= Duration::from_secs(7) && gap < Duration::from_secs(8),
        "Retry-After: 7 but the retry came {gap:?} later"
    );
    let gap = gap_after(MockResponse::status(429).retry_after("3")).await;
    assert!(
        gap >= Duration::from_secs(3) && gap < Duration::from_secs(4),
        "Retry-After: 3 but the retry came {gap:?} later"
    );
}

#[tokio::test(start_paused = true)]
async fn retry_after_http_date_is_a_floor() {
    // HTTP dates have whole seconds: the wait is between 9 and 10 s from now.
    let date = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(10));
    let gap = gap_after(MockResponse::status(503).retry_after(date.clone())).await;
    assert!(
        gap >= Duration::from_secs(8) && gap <= Duration::from_secs(10),
        "Retry-After: {date} but the retry came {gap:?} later"
    );
    // A far date is capped like a long delay.
    let date = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(3600));
    let gap = gap_after(MockResponse::status(503).retry_after(date.clone())).await;
    assert!(
        gap >= Duration::from_secs(30) && gap < Duration::from_secs(31),
        "Retry-After: {date} should wait 30 s, waited {gap:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn retry_after_is_capped_at_30_seconds() {
    let gap = gap_after(MockResponse::status(503).retry_after("3600")).await;
    assert!(
        gap >= Duration::from_secs(30) && gap < Duration::from_secs(31),
        "Retry-After: 3600 should wait 30 s, waited {gap:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn retry_after_shorter_than_the_backoff_does_not_shorten_it() {
    let mock = start_mock().await;
    mock.enqueue("/batch/", MockResponse::status(503));
    mock.enqueue("/batch/", MockResponse::status(503));
    mock.enqueue("/batch/", MockResponse::status(503).retry_after("1"));
    let ph = builder(&mock).build().unwrap();
    ph.capture(Event::new("e", "u")).unwrap();
    assert_eq!(ph.flush().await.delivered, 1);
    let reqs = mock.requests_to("/batch");
    assert_eq!(reqs.len(), 4);
    assert_backoff(gaps(&reqs)[2], Duration::from_secs(4));
}

// ===== timeouts =====

#[tokio::test(start_paused = true)]
async fn a_request_timeout_triggers_a_retry() {
    let mock = start_mock().await;
    let timeout = Duration::from_secs(2);
    let stuck = Duration::from_secs(60);
    // The server would answer only after 60 s (and with an error the client never sees).
    mock.enqueue("/batch/", MockResponse::status(500).delay(stuck));
    let errors = ErrorLog::new();
    let ph = builder(&mock)
        .request_timeout(timeout)
        .on_error(errors.callback())
        .build()
        .unwrap();

    let start = Instant::now();
    let id = ph.capture(Event::new("e", "u")).unwrap();
    let report = ph.flush().await;
    assert_eq!((report.delivered, report.failed), (1, 0));
    assert!(
        Instant::now() - start < stuck,
        "the client waited for the stuck answer"
    );
    let reqs = mock.requests_to("/batch");
    assert_eq!(reqs.len(), 2);
    // The timeout, then the first backoff.
    assert_backoff(
        after_timeout(reqs[1].received_at - reqs[0].received_at, timeout),
        Duration::from_secs(1),
    );
    assert_same_events(&reqs);
    assert_delivered_once(&mock.events(), &[id]);
    let s = ph.stats();
    assert_eq!((s.retries, s.requests, s.delivered), (1, 2, 1), "{s:?}");
    assert!(errors.is_empty(), "{:?}", errors.all());
}

#[tokio::test(start_paused = true)]
async fn timeouts_exhaust_the_retries_and_fail() {
    let mock = start_mock().await;
    let timeout = Duration::from_secs(1);
    mock.set_default(
        "/batch/",
        MockResponse::status(503).delay(Duration::from_secs(3600)),
    );
    let errors = ErrorLog::new();
    let ph = builder(&mock)
        .request_timeout(timeout)
        .max_retries(2)
        .on_error(errors.callback())
        .build()
        .unwrap();
    let id = ph.capture(Event::new("e", "u")).unwrap();
    let report = ph.flush().await;
    assert_eq!((report.delivered, report.failed), (0, 1));
    let reqs = mock.requests_to("/batch");
    assert_eq!(reqs.len(), 3);
    let gaps = gaps(&reqs);
    assert_backoff(after_timeout(gaps[0], timeout), Duration::from_secs(1));
    assert_backoff(after_timeout(gaps[1], timeout), Duration::from_secs(2));
    assert_eq!(errors.delivery_uuids(), vec![id]);
    assert_eq!(errors.deliveries(), 1);
    let s = ph.stats();
    assert_eq!((s.failed, s.retries, s.requests), (1, 2, 3), "{s:?}");
}

// ===== 413 =====

#[tokio::test(start_paused = true)]
async fn payload_too_large_splits_the_batch_in_halves() {
    for n in [4usize, 6] {
        let mock = start_mock().await;
        mock.enqueue("/batch/", MockResponse::status(413));
        let errors = ErrorLog::new();
        let ph = builder(&mock).on_error(errors.callback()).build().unwrap();
        let ids: Vec<Uuid> = (0..n)
            .map(|i| ph.capture(Event::new("e", "u").property("i", i)).unwrap())
            .collect();
        let report = ph.flush().await;
        assert_eq!((report.delivered, report.failed), (n as u64, 0), "n = {n}");

        let reqs = mock.requests_to("/batch");
        assert_eq!(batch_sizes(&reqs), vec![n, n / 2, n / 2], "n = {n}");
        assert_eq!(reqs[0].status, 413);
        assert_eq!(uuids_of(&batch_of(&reqs[0])), ids);
        let mut halves: Vec<Vec<Uuid>> = reqs[1..].iter().map(|r| uuids_of(&batch_of(r))).collect();
        halves.sort();
        assert_eq!(halves, vec![ids[..n / 2].to_vec(), ids[n / 2..].to_vec()]);
        // The halves carry the very same events.
        let mut resent: Vec<serde_json::Value> = reqs[1..].iter().flat_map(batch_of).collect();
        resent.sort_by_key(|e| e["properties"]["i"].as_u64());
        assert_eq!(resent, batch_of(&reqs[0]));
        assert_delivered_once(&mock.events(), &ids);
        assert!(errors.is_empty(), "{:?}", errors.all());
        let s = ph.stats();
        assert_eq!(
            (s.delivered, s.failed, s.requests),
            (n as u64, 0, 3),
            "{s:?}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn payload_too_large_on_a_single_event_fails_it() {
    let mock = start_mock().await;
    mock.enqueue("/batch/", MockResponse::status(413));
    let errors = ErrorLog::new();
    let ph = builder(&mock).on_error(errors.callback()).build().unwrap();
    let id = ph.capture(Event::new("e", "u")).unwrap();
    let report = ph.flush().await;
    assert_eq!((report.delivered, report.failed), (0, 1));
    tokio::time::sleep(Duration::from_secs(120)).await;
    let reqs = mock.requests_to("/batch");
    assert_eq!(
        reqs.len(),
        1,
        "a single event cannot be split: no more requests"
    );
    let reported = errors.all();
    assert_eq!(reported.len(), 1);
    assert_eq!(delivery_status(&reported[0]), Some(413));
    assert_eq!(errors.delivery_uuids(), vec![id]);
    let s = ph.stats();
    assert_eq!((s.failed, s.retries, s.requests), (1, 0, 1), "{s:?}");
}

#[tokio::test(start_paused = true)]
async fn payload_too_large_everywhere_fails_each_event_once() {
    let mock = start_mock().await;
    mock.set_default("/batch/", MockResponse::status(413));
    let errors = ErrorLog::new();
    let ph = builder(&mock).on_error(errors.callback()).build().unwrap();
    let ids: Vec<Uuid> = (0..4)
        .map(|_| ph.capture(Event::new("e", "u")).unwrap())
        .collect();
    let report = ph.flush().await;
    assert_eq!((report.delivered, report.failed), (0, 4));
    // 4, then 2 and 2, then each of the four alone.
    let mut sizes = batch_sizes(&mock.requests_to("/batch"));
    sizes.sort_unstable();
    assert_eq!(sizes, vec![1, 1, 1, 1, 2, 2, 4]);
    let mut failed = errors.delivery_uuids();
    failed.sort();
    let mut expected = ids.clone();
    expected.sort();
    assert_eq!(failed, expected, "each event reported failed exactly once");
    assert_eq!(ph.stats().failed, 4);
}

// ===== 2xx answers whose body is not read to the end =====

/// A 2xx is PostHog's acknowledgement as soon as its status line arrives: a body far over what
/// the transport reads, one that never ends, or one cut off midway neither fails the batch nor
/// sends it again. `MockPostHog` cannot script such bodies, so these tests bring a bare
/// HTTP/1.1 server of their own.
mod acknowledged_by_the_status {
    use std::sync::{Arc, Mutex};

    use posthog_tower::{Event, PostHog, Uuid};
    use serde_json::Value;
    use tokio::io::AsyncWriteExt;
    use tokio::net::{TcpListener, TcpStream};

    use super::{uuids_of, ErrorLog, KEY};

    /// How the bare server answers every `POST /batch/`.
    #[derive(Clone, Copy, Debug)]
    enum Answer {
        /// `200 OK` with a 50 MB body (`Content-Length`), written 64 KiB at a time for as long
        /// as the client reads.
        Huge,
        /// `200 OK` with a chunked body that never ends.
        Endless,
        /// `200 OK` announcing 1000 bytes, sending 10, then closing the connection.
        CutOff,
    }

    const HUGE: usize = 50 * 1024 * 1024;
    const CHUNK: usize = 64 * 1024;

    /// A bare HTTP/1.1 server on 127.0.0.1: it reads each request, records the uuids of the
    /// events it carried, and answers with its [`Answer`].
    struct BareServer {
        url: String,
        /// The uuids of each request read, in order of arrival.
        requests: Arc<Mutex<Vec<Vec<Uuid>>>>,
    }

    impl BareServer {
        async fn start(answer: Answer) -> Self {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let url = format!("http://{}", listener.local_addr().unwrap());
            let requests = Arc::<Mutex<Vec<Vec<Uuid>>>>::default();
            let seen = Arc::clone(&requests);
            tokio::spawn(async move {
                while let Ok((conn, _)) = listener.accept().await {
                    tokio::spawn(serve(conn, answer, Arc::clone(&seen)));
                }
            });
            BareServer { url, requests }
        }

        fn requests(&self) -> Vec<Vec<Uuid>> {
            self.requests.lock().unwrap().clone()
        }
    }

    /// Serves one connection until the client or the answer closes it.
    async fn serve(mut conn: TcpStream, answer: Answer, seen: Arc<Mutex<Vec<Vec<Uuid>>>>) {
        let mut buf = Vec::new();
        while let Some(body) = super::read_batch_request(&mut conn, &mut buf).await {
            let json: Value = serde_json::from_slice(&body).expect("a JSON batch");
            let events = json["batch"].as_array().expect("a batch array");
            seen.lock().unwrap().push(uuids_of(events));
            if !respond(&mut conn, answer).await {
                return;
            }
        }
    }

    /// Answers one request; `false` when the connection is over.
    async fn respond(conn: &mut TcpStream, answer: Answer) -> bool {
        let filler = vec![b' '; CHUNK];
        match answer {
            Answer::Huge => {
                let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {HUGE}\r\n\r\n");
                if conn.write_all(head.as_bytes()).await.is_err() {
                    return false;
                }
                for _ in 0..HUGE / CHUNK {
                    // The client stops reading and closes: the rest is never sent.
                    if conn.write_all(&filler).await.is_err() {
                        return false;
                    }
                }
                true
            }
            Answer::Endless => {
                let head = "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n";
                if conn.write_all(head.as_bytes()).await.is_err() {
                    return false;
                }
                let mut chunk = format!("{CHUNK:x}\r\n").into_bytes();
                chunk.extend_from_slice(&filler);
                chunk.extend_from_slice(b"\r\n");
                // Until the client gives up: a client draining the body would wait forever.
                while conn.write_all(&chunk).await.is_ok() {}
                false
            }
            Answer::CutOff => {
                let head = "HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n{\"status\":";
                let _ = conn.write_all(head.as_bytes()).await;
                // Dropping the connection closes it 990 bytes short.
                false
            }
        }
    }

    /// Captures 20 events in batches of 5 against a server answering `answer`: every event is
    /// delivered at the first attempt and reaches the server exactly once.
    async fn delivered_once(answer: Answer) {
        let server = BareServer::start(answer).await;
        let errors = ErrorLog::new();
        let ph = PostHog::builder(KEY)
            .host(server.url.as_str())
            .gzip(false)
            .flush_at(5)
            .on_error(errors.callback())
            .build()
            .unwrap();
        let mut ids: Vec<Uuid> = (0..20)
            .map(|i| ph.capture(Event::new("e", "u").property("i", i)).unwrap())
            .collect();

        let report = ph.flush().await;
        assert_eq!((report.delivered, report.failed), (20, 0), "{answer:?}");
        let s = ph.stats();
        assert_eq!(
            (s.delivered, s.failed, s.retries, s.requests),
            (20, 0, 0, 4),
            "{answer:?}: {s:?}"
        );
        assert!(errors.is_empty(), "{answer:?}: {:?}", errors.all());

        let requests = server.requests();
        assert_eq!(requests.len(), 4, "{answer:?}: one request per batch");
        let mut seen: Vec<Uuid> = requests.concat();
        seen.sort();
        ids.sort();
        assert_eq!(seen, ids, "{answer:?}: each event exactly once");
    }

    #[tokio::test(start_paused = true)]
    async fn a_200_with_a_50_mb_body_is_delivered_once() {
        delivered_once(Answer::Huge).await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_200_with_an_endless_body_is_delivered_once() {
        delivered_once(Answer::Endless).await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_200_cut_off_midway_is_delivered_once() {
        delivered_once(Answer::CutOff).await;
    }
}
