//! PostHog's SDK compliance harness, `capture_ai` suite (`requires: capture_ai_v0`),
//! reimplemented in Rust as the `capture` suite is ([`capture_suite`](crate::capture_suite)):
//! our adapter in-process, driven over real HTTP with the harness's calls (`/capture_ai` with
//! `"properties": null` and `"timestamp": null` when unset), and the harness's assertions on
//! what [`MockPostHog`](posthog_tower::testing::MockPostHog) recorded.
//!
//! The suite's five tests (contract `contracts/capture_ai_tests.yaml` at commit `16a62da` of
//! `PostHog/posthog-sdk-test-harness`) have tests of the same name here.

use http::Method;
use posthog_tower::testing::RecordedRequest;
use serde_json::{json, Value};

use crate::harness::Harness;

async fn begin() -> Harness {
    let h = Harness::start().await;
    h.reset().await;
    h
}

/// `capture_ai` with every key sent, unset ones as JSON null, and `uuid` only when given.
async fn capture_ai(
    h: &Harness,
    event: &str,
    properties: Value,
    timestamp: Value,
    uuid: Option<&str>,
) -> Value {
    let mut body = json!({
        "distinct_id": "test_user",
        "event": event,
        "properties": properties,
        "timestamp": timestamp,
    });
    if let Some(uuid) = uuid {
        body["uuid"] = json!(uuid);
    }
    h.call(Method::POST, "/capture_ai", Some(&body)).await
}

async fn capture(h: &Harness, event: &str) -> Value {
    let body = json!({
        "distinct_id": "test_user",
        "event": event,
        "properties": null,
        "timestamp": null,
    });
    h.call(Method::POST, "/capture", Some(&body)).await
}

async fn flush(h: &Harness) {
    let answer = h.call(Method::POST, "/flush", None).await;
    assert_eq!(answer["success"], true);
}

/// The harness's `parsed_events` for a `{"batch": [...]}` body.
fn events_of(request: &RecordedRequest) -> Vec<Value> {
    request
        .json()
        .and_then(|body| body.get("batch").cloned())
        .and_then(|batch| batch.as_array().cloned())
        .unwrap_or_default()
}

/// `E0`: the first event of the first recording.
fn first_event(recordings: &[RecordedRequest]) -> Value {
    let first = recordings.first().expect("no request was recorded");
    events_of(first)
        .into_iter()
        .next()
        .expect("the first request holds no event")
}

/// `assert_request_path`: the first recording's path, compared without one trailing slash.
fn assert_request_path(recordings: &[RecordedRequest], expected: &str) {
    let first = recordings.first().expect("no request was recorded");
    assert_eq!(
        first.path.trim_end_matches('/'),
        expected.trim_end_matches('/'),
        "request path"
    );
}

/// `assert_action_result_uuid_matches_event`: the answer's uuid is the first event's.
fn assert_uuid_matches_event(answer: &Value, recordings: &[RecordedRequest]) {
    let event = first_event(recordings);
    assert_eq!(
        answer["uuid"], event["uuid"],
        "answer {answer}, event {event}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capture_ai_posts_to_ai_endpoint() {
    let h = begin().await;
    h.init(json!({"flush_at": 1})).await;
    capture_ai(&h, "$ai_generation", Value::Null, Value::Null, None).await;
    flush(&h).await;
    let r = h.recordings();
    assert_eq!(r.len(), 1, "request count");
    assert_request_path(&r, "/i/v0/ai/batch/");
    assert_eq!(first_event(&r)["event"], "$ai_generation");
    assert_eq!(h.mock().ai_events().len(), 1);
    assert!(h.mock().events().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capture_does_not_reroute_ai_named_events() {
    let h = begin().await;
    h.init(json!({"flush_at": 1})).await;
    capture(&h, "$ai_generation").await;
    flush(&h).await;
    let r = h.recordings();
    assert_eq!(r.len(), 1, "request count");
    assert_request_path(&r, "/batch");
    assert!(h.mock().requests_to("/i/v0/ai/batch/").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capture_ai_event_has_uuid() {
    let h = begin().await;
    h.init(json!({"flush_at": 1})).await;
    let answer = capture_ai(&h, "$ai_generation", Value::Null, Value::Null, None).await;
    assert_eq!(answer["success"], true);
    flush(&h).await;
    let r = h.recordings();
    let uuid = first_event(&r)["uuid"]
        .as_str()
        .expect("the event has a uuid")
        .to_owned();
    posthog_tower::Uuid::parse_str(&uuid).expect("a valid UUID");
    assert_uuid_matches_event(&answer, &r);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capture_ai_keeps_supplied_uuid() {
    let h = begin().await;
    h.init(json!({"flush_at": 1})).await;
    let supplied = "0198c0de-0000-7000-8000-000000000abc";
    let answer = capture_ai(
        &h,
        "$ai_generation",
        Value::Null,
        Value::Null,
        Some(supplied),
    )
    .await;
    assert_eq!(answer["success"], true);
    assert_eq!(answer["uuid"], supplied);
    flush(&h).await;
    let r = h.recordings();
    assert_eq!(first_event(&r)["uuid"], supplied);
    assert_uuid_matches_event(&answer, &r);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_utc_event_timestamp_is_converted_to_utc() {
    let h = begin().await;
    h.init(json!({"flush_at": 1})).await;
    capture_ai(
        &h,
        "$ai_generation",
        json!({"timestamp_like": "2025-01-02T08:34:05+05:30"}),
        json!("2025-01-02T08:34:05+05:30"),
        None,
    )
    .await;
    flush(&h).await;
    let e0 = first_event(&h.recordings());
    let timestamp = e0["timestamp"].as_str().expect("a string timestamp");
    let instant = timestamp
        .strip_suffix('Z')
        .or_else(|| timestamp.strip_suffix("+00:00"))
        .unwrap_or_else(|| panic!("{timestamp:?} is not in UTC"));
    let (main, fraction) = instant.split_once('.').unwrap_or((instant, ""));
    assert_eq!(main, "2025-01-02T03:04:05", "{timestamp}");
    assert!(fraction.bytes().all(|b| b == b'0'), "{timestamp}");
    assert_eq!(
        e0["properties"]["timestamp_like"],
        "2025-01-02T08:34:05+05:30"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adapter_capture_ai_in_parallel_mode_sends_the_test_id() {
    let h = begin().await.with_test_id("t-ai");
    h.init(json!({"flush_at": 1})).await;
    capture_ai(&h, "$ai_span", Value::Null, Value::Null, None).await;
    flush(&h).await;
    let r = h.mock().requests_to("/i/v0/ai/batch/");
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].header("x-test-id"), Some("t-ai"));
    let state = h.call(Method::GET, "/state", None).await;
    assert_eq!(state["total_events_sent"], 1, "{state}");
    assert_eq!(state["requests_made"].as_array().map(Vec::len), Some(1));
}
