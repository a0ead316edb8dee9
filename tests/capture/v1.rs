//! Capture v1 over real HTTP to `MockPostHog`, on tokio's paused clock: the endpoint, its
//! headers and body, retries (attempt numbering, stable request id, renewed timestamp,
//! backoff from 100 ms), partial retries of the events PostHog asks for, per-event refusals
//! in the accounting, and every encoding round-tripped.

use std::time::Duration;

use posthog_tower::capture::{CaptureProtocol, Compression, EventRefused};
use posthog_tower::net::UnexpectedStatus;
use posthog_tower::testing::{MockPostHog, MockResponse, RecordedRequest};
use posthog_tower::{BuildError, ErrorReport, Event, PostHogBuilder, Timestamp, Uuid};
use serde_json::json;

use crate::support::*;

const PATH: &str = "/i/v1/analytics/events";

fn v1(mock: &MockPostHog) -> PostHogBuilder {
    builder(mock).capture_protocol(CaptureProtocol::V1)
}

fn header<'a>(req: &'a RecordedRequest, name: &str) -> &'a str {
    req.header(name)
        .unwrap_or_else(|| panic!("no {name} header in {:?}", req.headers))
}

fn attempt(req: &RecordedRequest) -> u32 {
    header(req, "posthog-attempt").parse().expect("an integer")
}

fn request_id(req: &RecordedRequest) -> Uuid {
    header(req, "posthog-request-id").parse().expect("a uuid")
}

/// The gap between two recorded requests.
fn gap(reqs: &[RecordedRequest], i: usize) -> Duration {
    reqs[i + 1].received_at - reqs[i].received_at
}

/// Is `text` canonical RFC 3339 UTC (`…T…Z`), as the harness checks it?
fn assert_rfc3339_utc(text: &str) {
    assert!(text.ends_with('Z') && text.contains('T'), "{text}");
    text.parse::<Timestamp>().expect("parses as RFC 3339");
}

/// Events refused one by one, with PostHog's result.
type Refused = Vec<(Uuid, String)>;
/// Events failed with an HTTP status.
type Failed = Vec<(Uuid, u16)>;

/// The refusal reported for each uuid, and the HTTP statuses of the other failures.
fn refusals(errors: &ErrorLog) -> (Refused, Failed) {
    let mut refused = Vec::new();
    let mut statuses = Vec::new();
    for report in errors.all() {
        let ErrorReport::Delivery(d) = report else {
            panic!("unexpected report {report:?}");
        };
        for uuid in d.uuids() {
            if let Some(r) = d.error().downcast_ref::<EventRefused>() {
                refused.push((*uuid, r.result().to_owned()));
            } else if let Some(s) = d.error().downcast_ref::<UnexpectedStatus>() {
                statuses.push((*uuid, s.status().as_u16()));
            } else {
                panic!("unexpected error {}", d.error());
            }
        }
    }
    refused.sort();
    statuses.sort();
    (refused, statuses)
}

#[tokio::test(start_paused = true)]
async fn sends_the_v1_request() {
    let mock = start_mock().await;
    let ph = v1(&mock).build().unwrap();
    let id = ph
        .capture(Event::new("signed up", "user-1").property("plan", "pro"))
        .unwrap();
    let report = ph.flush().await;
    assert_eq!((report.delivered, report.failed), (1, 0));

    assert!(mock.requests_to("/batch").is_empty(), "nothing to v0");
    let reqs = mock.requests_to(PATH);
    assert_eq!(reqs.len(), 1);
    let req = &reqs[0];
    assert_eq!(req.path, PATH);
    assert_eq!(header(req, "authorization"), format!("Bearer {KEY}"));
    assert_eq!(header(req, "content-type"), "application/json");
    assert!(header(req, "posthog-sdk-info").starts_with("posthog-tower/"));
    assert!(!header(req, "user-agent").is_empty());
    assert_eq!(attempt(req), 1);
    request_id(req);
    assert_rfc3339_utc(header(req, "posthog-request-timestamp"));
    assert!(req.header("content-encoding").is_none());

    let body = body_json(req);
    let root: Vec<&str> = body
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(root.len(), 2, "only created_at and batch: {root:?}");
    assert_rfc3339_utc(body["created_at"].as_str().unwrap());
    let raw = String::from_utf8_lossy(&req.body);
    assert!(!raw.contains(KEY), "the key is in the header only");
    let event = &body["batch"][0];
    assert_eq!(event["event"], "signed up");
    assert_eq!(event["distinct_id"], "user-1");
    assert_eq!(uuid_of(event), id);
    assert_rfc3339_utc(event["timestamp"].as_str().unwrap());
    assert_eq!(event["properties"]["plan"], "pro");
    assert!(event["properties"].get("distinct_id").is_none());
    assert!(event.get("options").is_none(), "unset options are left out");
    assert_delivered_once(&mock.events(), &[id]);
}

#[tokio::test(start_paused = true)]
async fn event_options_and_historical_migration() {
    let mock = start_mock().await;
    let ph = v1(&mock).historical_migration(true).build().unwrap();
    ph.capture(
        Event::new("e", "u")
            .cookieless_mode(true)
            .disable_skew_correction(true)
            .process_person_profile(false)
            .product_tour_id("tour_\"123"),
    )
    .unwrap();
    ph.capture(Event::new("e", "u").process_person_profile(true))
        .unwrap();
    ph.flush().await;
    let req = &mock.requests_to(PATH)[0];
    let body = body_json(req);
    assert_eq!(body["historical_migration"], true);
    assert_eq!(
        body["batch"][0]["options"],
        json!({
            "cookieless_mode": true,
            "disable_skew_correction": true,
            "process_person_profile": false,
            "product_tour_id": "tour_\"123",
        })
    );
    assert_eq!(
        body["batch"][1]["options"],
        json!({"process_person_profile": true})
    );
}

#[tokio::test(start_paused = true)]
async fn retries_number_attempts_keep_the_request_id_and_renew_the_timestamp() {
    let mock = start_mock().await;
    mock.enqueue(PATH, MockResponse::status(503));
    mock.enqueue(PATH, MockResponse::status(500));
    let ph = v1(&mock).build().unwrap();
    let id = ph.capture(Event::new("e", "u")).unwrap();
    let report = ph.flush().await;
    assert_eq!((report.delivered, report.failed), (1, 0));

    let reqs = mock.requests_to(PATH);
    assert_eq!(reqs.len(), 3);
    assert_eq!(reqs.iter().map(attempt).collect::<Vec<_>>(), [1, 2, 3]);
    assert!(reqs.iter().all(|r| request_id(r) == request_id(&reqs[0])));
    let stamps: Vec<&str> = reqs
        .iter()
        .map(|r| header(r, "posthog-request-timestamp"))
        .collect();
    assert!(
        stamps[0] != stamps[1] && stamps[1] != stamps[2],
        "{stamps:?}"
    );
    // The same events (uuids and timestamps) on every attempt.
    assert!(reqs.iter().all(|r| batch_of(r) == batch_of(&reqs[0])));
    // Backoff from 100 ms, doubling, with up to 25 % jitter.
    assert!(gap(&reqs, 0) >= Duration::from_millis(100));
    assert!(gap(&reqs, 0) <= Duration::from_millis(130));
    assert!(gap(&reqs, 1) >= Duration::from_millis(200));
    assert!(gap(&reqs, 1) <= Duration::from_millis(255));
    assert_delivered_once(&mock.events(), &[id]);

    // The next batch is a new request.
    ph.capture(Event::new("e", "u")).unwrap();
    ph.flush().await;
    let reqs = mock.requests_to(PATH);
    assert_eq!(reqs.len(), 4);
    assert_ne!(request_id(&reqs[3]), request_id(&reqs[0]));
    assert_eq!(attempt(&reqs[3]), 1);
}

#[tokio::test(start_paused = true)]
async fn retryable_statuses_honor_retry_after() {
    for code in [408, 429, 500, 502, 503, 504] {
        let mock = start_mock().await;
        mock.enqueue(PATH, MockResponse::status(code).retry_after("3"));
        let ph = v1(&mock).build().unwrap();
        ph.capture(Event::new("e", "u")).unwrap();
        let report = ph.flush().await;
        assert_eq!((report.delivered, report.failed), (1, 0), "{code}");
        let reqs = mock.requests_to(PATH);
        assert_eq!(reqs.len(), 2, "{code} is retried");
        assert!(gap(&reqs, 0) >= Duration::from_secs(3), "{code}");
        assert!(gap(&reqs, 0) < Duration::from_millis(3100), "{code}");
    }
}

#[tokio::test(start_paused = true)]
async fn final_statuses_are_not_retried_and_413_is_not_split() {
    for code in [400, 401, 402, 403, 413, 415] {
        let mock = start_mock().await;
        mock.enqueue(PATH, MockResponse::status(code));
        let errors = ErrorLog::new();
        let ph = v1(&mock).on_error(errors.callback()).build().unwrap();
        let a = ph.capture(Event::new("e", "u")).unwrap();
        let b = ph.capture(Event::new("e", "u")).unwrap();
        let report = ph.flush().await;
        assert_eq!((report.delivered, report.failed), (0, 2), "{code}");
        assert_eq!(mock.requests_to(PATH).len(), 1, "{code} is final");
        let mut expected = vec![(a, code), (b, code)];
        expected.sort();
        assert_eq!(refusals(&errors), (vec![], expected), "{code}");
    }
}

#[tokio::test(start_paused = true)]
async fn partial_retry_sends_only_the_retry_events_as_the_same_request() {
    let mock = start_mock().await;
    let errors = ErrorLog::new();
    let ph = v1(&mock).on_error(errors.callback()).build().unwrap();
    let ok = ph.capture(Event::new("e", "u").property("i", 0)).unwrap();
    let dropped = ph.capture(Event::new("e", "u").property("i", 1)).unwrap();
    let retried = ph.capture(Event::new("e", "u").property("i", 2)).unwrap();
    let limited = ph.capture(Event::new("e", "u").property("i", 3)).unwrap();
    mock.enqueue_event_result(dropped, "drop");
    mock.enqueue_event_result(retried, "retry");
    mock.enqueue_event_result(limited, "limited");
    mock.enqueue(PATH, MockResponse::status(200).retry_after("3"));

    let report = ph.flush().await;
    assert_eq!((report.delivered, report.failed), (2, 2));

    let reqs = mock.requests_to(PATH);
    assert_eq!(reqs.len(), 2);
    assert_eq!(
        uuids_of(&batch_of(&reqs[0])),
        [ok, dropped, retried, limited]
    );
    assert_eq!(
        uuids_of(&batch_of(&reqs[1])),
        [retried],
        "only the retry event"
    );
    assert_eq!(
        batch_of(&reqs[1])[0],
        batch_of(&reqs[0])[2],
        "the same event"
    );
    assert_eq!(request_id(&reqs[1]), request_id(&reqs[0]));
    assert_eq!(attempt(&reqs[1]), 2);
    assert_ne!(
        header(&reqs[1], "posthog-request-timestamp"),
        header(&reqs[0], "posthog-request-timestamp")
    );
    assert!(
        gap(&reqs, 0) >= Duration::from_secs(3),
        "Retry-After honored"
    );
    assert!(gap(&reqs, 0) < Duration::from_millis(3100));
    assert_delivered_once(&mock.events(), &[ok, retried]);

    let mut expected = vec![
        (dropped, "drop".to_owned()),
        (limited, "limited".to_owned()),
    ];
    expected.sort();
    assert_eq!(refusals(&errors), (expected, vec![]));
    let stats = ph.stats();
    assert_eq!((stats.delivered, stats.failed), (2, 2));
    assert_eq!(
        (
            stats.refused.drop,
            stats.refused.limited,
            stats.refused.other
        ),
        (1, 1, 0)
    );
    assert_eq!((stats.requests, stats.retries), (2, 1));
    assert_eq!(
        stats.captured,
        stats.delivered + stats.failed + stats.dropped.total()
    );
}

#[tokio::test(start_paused = true)]
async fn unknown_results_are_final_and_retry_runs_out() {
    let mock = start_mock().await;
    let errors = ErrorLog::new();
    let ph = v1(&mock)
        .max_retries(1)
        .on_error(errors.callback())
        .build()
        .unwrap();
    let novel = ph.capture(Event::new("e", "u")).unwrap();
    let stubborn = ph.capture(Event::new("e", "u")).unwrap();
    let ok = ph.capture(Event::new("e", "u")).unwrap();
    mock.enqueue_event_result(novel, "unknown_future_result");
    mock.enqueue_event_result(stubborn, "retry");
    mock.enqueue_event_result(stubborn, "retry");

    let report = ph.flush().await;
    assert_eq!((report.delivered, report.failed), (1, 2));
    let reqs = mock.requests_to(PATH);
    assert_eq!(reqs.len(), 2, "one retry allowed");
    assert_eq!(uuids_of(&batch_of(&reqs[1])), [stubborn]);
    let mut expected = vec![
        (novel, "unknown_future_result".to_owned()),
        (stubborn, "retry".to_owned()),
    ];
    expected.sort();
    assert_eq!(refusals(&errors), (expected, vec![]));
    assert_delivered_once(&mock.events(), &[ok]);
    let stats = ph.stats();
    assert_eq!(stats.refused.other, 2);
    assert_eq!(
        stats.captured,
        stats.delivered + stats.failed + stats.dropped.total()
    );
}

#[tokio::test(start_paused = true)]
async fn a_failed_partial_retry_keeps_what_was_settled() {
    let mock = start_mock().await;
    let errors = ErrorLog::new();
    let ph = v1(&mock).on_error(errors.callback()).build().unwrap();
    let ok = ph.capture(Event::new("e", "u")).unwrap();
    let dropped = ph.capture(Event::new("e", "u")).unwrap();
    let retried = ph.capture(Event::new("e", "u")).unwrap();
    mock.enqueue_event_result(dropped, "drop");
    mock.enqueue_event_result(retried, "retry");
    mock.enqueue(PATH, MockResponse::status(200));
    mock.enqueue(PATH, MockResponse::status(400));

    let report = ph.flush().await;
    assert_eq!((report.delivered, report.failed), (1, 2));
    assert_eq!(mock.requests_to(PATH).len(), 2);
    assert_eq!(
        refusals(&errors),
        (vec![(dropped, "drop".to_owned())], vec![(retried, 400)])
    );
    assert_delivered_once(&mock.events(), &[ok]);
    let stats = ph.stats();
    assert_eq!(
        (stats.delivered, stats.failed, stats.refused.drop),
        (1, 2, 1)
    );
    assert_eq!(
        stats.captured,
        stats.delivered + stats.failed + stats.dropped.total()
    );
}

#[tokio::test(start_paused = true)]
async fn capture_wait_reports_a_refusal() {
    let mock = start_mock().await;
    let ph = v1(&mock).sync_mode(true).build().unwrap();
    let event = Event::new("e", "u").uuid(Uuid::from_u128(42));
    mock.enqueue_event_result(Uuid::from_u128(42), "limited");
    let error = ph.capture_wait(event).await.expect_err("refused");
    let text = error.to_string();
    assert!(text.contains("limited"), "{text}");
    let ok = ph
        .capture_wait(Event::new("e", "u"))
        .await
        .expect("delivered");
    assert_delivered_once(&mock.events(), &[ok]);
}

#[tokio::test(start_paused = true)]
async fn every_encoding_round_trips() {
    let encodings = [
        (Compression::None, None),
        (Compression::Gzip, Some("gzip")),
        (Compression::Deflate, Some("deflate")),
        (Compression::Brotli, Some("br")),
        (Compression::Zstd, Some("zstd")),
    ];
    for (compression, header_value) in encodings {
        let mock = start_mock().await;
        let ph = v1(&mock).compression(compression).build().unwrap();
        let ids: Vec<Uuid> = (0..20)
            .map(|i| {
                ph.capture(Event::new("e", "u").property("text", "x".repeat(i * 50)))
                    .unwrap()
            })
            .collect();
        let report = ph.flush().await;
        assert_eq!(report.delivered, 20, "{compression:?}");
        let req = &mock.requests_to(PATH)[0];
        assert_eq!(req.header("content-encoding"), header_value);
        assert_eq!(req.content_encoding.as_deref(), header_value);
        assert!(!req.gzip_decode_failed, "{compression:?}");
        if header_value.is_some() {
            assert!(
                req.raw_len < req.body.len() / 2,
                "{compression:?} compresses"
            );
        }
        let events = batch_of(req);
        assert_eq!(uuids_of(&events), ids);
        assert_eq!(events[7]["properties"]["text"], "x".repeat(350));
        assert_delivered_once(&mock.events(), &ids);
    }
}

#[tokio::test]
async fn gzip_true_still_works_and_v0_refuses_other_encodings() {
    let mock = start_mock().await;
    let ph = v1(&mock).gzip(true).build().unwrap();
    ph.capture(Event::new("e", "u")).unwrap();
    ph.flush().await;
    assert_eq!(
        mock.requests_to(PATH)[0].header("content-encoding"),
        Some("gzip")
    );
    for compression in [Compression::Deflate, Compression::Brotli, Compression::Zstd] {
        let built = builder(&mock).compression(compression).build();
        assert!(
            matches!(built, Err(BuildError::InvalidConfig(_))),
            "{compression:?} on v0"
        );
    }
    let ph = builder(&mock)
        .compression(Compression::Gzip)
        .build()
        .unwrap();
    ph.capture(Event::new("e", "u")).unwrap();
    ph.flush().await;
    assert_eq!(
        mock.requests_to("/batch")[0].header("content-encoding"),
        Some("gzip")
    );
}
