//! PostHog's SDK compliance harness, `capture` suite, reimplemented in Rust.
//!
//! The harness (`PostHog/posthog-sdk-test-harness`, a Python program) drives an SDK through an HTTP
//! adapter and checks what reaches its mock PostHog. It cannot run here, so these tests do what it
//! does: they start our adapter (`examples/sdk_adapter/adapter.rs`, included by
//! [`harness`](crate::harness)) in-process on `127.0.0.1:0`, start [`MockPostHog`] as the mock, and
//! talk to the adapter over real HTTP with exactly the calls the harness makes (`/reset`, `/init`,
//! `/capture` with `"properties": null` and `"timestamp": null` when unset, `/flush` with no body),
//! including its waits. Then they check what the mock recorded with the harness's own assertions.
//!
//! Every harness test of the `capture` suite that runs for a server SDK has a test of the same
//! name here (30 of them). The tests prefixed `adapter_` check the adapter itself: `/health`,
//! parallel mode (`?test_id=` and `X-Test-Id`), `/state`, and that `/reset` leaks nothing.
//!
//! Where the harness waits for retries and then asserts *at least* N requests, the tests wait
//! for N requests with the same time limit (`MockPostHog::wait_for_requests`), which passes and
//! fails exactly when the harness would. Where it asserts an exact count after a wait, they
//! wait the whole time too, so a late extra request would be seen.
//!
//! Every test whose outcome depends on time (retries and their backoff, `Retry-After`, flush
//! intervals, the harness's waits) runs on tokio's paused clock (`start_paused`). The client,
//! the adapter and the mock all run on that clock, in the test's runtime: a wait lets every
//! timer due within it fire, in order, and what they send reaches the mock before the wait
//! ends, without any real time passing. The gaps between attempts are then exact, and a wait
//! is a statement about the client's timers, never a hope that a busy machine kept up.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{Method, StatusCode};
use posthog_tower::testing::{MockPostHog, MockResponse, RecordedRequest};
use serde_json::{json, Value};

// ===== the harness side: driving the adapter (shared with the feature_flags suite) =====

use crate::harness::{Harness, Reply};

/// The steps of this suite, on top of the shared [`Harness`]. A trait rather than an inherent
/// `impl Harness`, so the `feature_flags` suite, in the same binary, can name its own steps
/// the same way (`capture`, `flush`, `queue`).
trait CaptureSteps {
    /// `CAP(d, e, props, ts)`: all four keys always sent, unset ones as JSON null.
    async fn capture(
        &self,
        distinct_id: &str,
        event: &str,
        properties: Value,
        timestamp: Value,
    ) -> Value;

    /// `CAP` without arguments: `CAP("test_user", "test_event")`.
    async fn cap(&self) -> Value;

    /// `capture_multiple`: `count` sequential captures of `test_event_{index}`.
    async fn capture_multiple(&self, count: usize);

    async fn flush(&self) -> Value;

    async fn state(&self) -> Value;

    /// `Q[...]`: scripts the mock's answers to `/batch/`, in order.
    fn queue(&self, responses: impl IntoIterator<Item = MockResponse>);

    /// A `wait` step followed by a check of at least `n` recordings: resolves as soon as
    /// they are there, or when the wait is over.
    async fn wait_for_at_least(&self, n: usize, wait_ms: u64);
}

impl CaptureSteps for Harness {
    async fn capture(
        &self,
        distinct_id: &str,
        event: &str,
        properties: Value,
        timestamp: Value,
    ) -> Value {
        let body = json!({
            "distinct_id": distinct_id,
            "event": event,
            "properties": properties,
            "timestamp": timestamp,
        });
        let answer = self.call(Method::POST, "/capture", Some(&body)).await;
        assert_eq!(answer["success"], true, "/capture: {answer}");
        answer
    }

    async fn cap(&self) -> Value {
        self.capture("test_user", "test_event", Value::Null, Value::Null)
            .await
    }

    async fn capture_multiple(&self, count: usize) {
        for index in 0..count {
            self.capture(
                "test_user",
                &format!("test_event_{index}"),
                Value::Null,
                Value::Null,
            )
            .await;
        }
    }

    async fn flush(&self) -> Value {
        let answer = self.call(Method::POST, "/flush", None).await;
        assert_eq!(answer["success"], true);
        answer
    }

    async fn state(&self) -> Value {
        self.call(Method::GET, "/state", None).await
    }

    fn queue(&self, responses: impl IntoIterator<Item = MockResponse>) {
        for response in responses {
            self.mock().enqueue("/batch/", response);
        }
    }

    async fn wait_for_at_least(&self, n: usize, wait_ms: u64) {
        let _ = self
            .mock()
            .wait_for_requests("/batch", n, Duration::from_millis(wait_ms))
            .await;
    }
}

/// A fresh mock and adapter, reset the way the harness starts every test.
async fn begin() -> Harness {
    let h = Harness::start().await;
    h.reset().await;
    h
}

/// A `wait` step, in full, on tokio's paused clock.
///
/// # Panics
///
/// If the clock is not paused: in real time a wait would only hope to be long enough.
async fn wait(ms: u64) {
    // `advance` refuses to run unless the clock is paused; by zero it changes nothing.
    tokio::time::advance(Duration::ZERO).await;
    tokio::time::sleep(Duration::from_millis(ms)).await;
}

/// A scripted error with the harness's body string, e.g. `503('{"error": "…"}')`.
fn error(status: u16, message: &str) -> MockResponse {
    MockResponse::json(status, json!({ "error": message }))
}

/// A scripted status without a body: the harness's mock answers `{"error": "Server error"}`
/// for a non-2xx one, and the endpoint's default for 200.
fn bare(status: u16) -> MockResponse {
    if status == 200 {
        MockResponse::status(200)
    } else {
        error(status, "Server error")
    }
}

// ===== the harness's assertions =====

/// `parsed_events`: a JSON list as is, an object's `batch`, an object's `data` list, any other
/// object as one event; `None` when the body is not JSON.
fn parsed_events(request: &RecordedRequest) -> Option<Vec<Value>> {
    let body: Value = serde_json::from_slice(&request.body).ok()?;
    Some(match body {
        Value::Array(events) => events,
        Value::Object(ref root) => match (root.get("batch"), root.get("data")) {
            (Some(batch), _) => batch.as_array().cloned().unwrap_or_default(),
            (None, Some(Value::Array(data))) => data.clone(),
            _ => vec![body],
        },
        _ => return None,
    })
}

fn events_of(request: &RecordedRequest) -> Vec<Value> {
    parsed_events(request).unwrap_or_default()
}

/// `E0`: the first event of the first recording.
fn first_event(recordings: &[RecordedRequest]) -> Value {
    let first = recordings.first().expect("no request was recorded");
    events_of(first)
        .into_iter()
        .next()
        .expect("the first request holds no event")
}

fn assert_request_count(recordings: &[RecordedRequest], expected: usize) {
    assert_eq!(
        recordings.len(),
        expected,
        "request count; statuses: {:?}",
        statuses(recordings)
    );
}

fn assert_request_count_gte(recordings: &[RecordedRequest], expected: usize) {
    assert!(
        recordings.len() >= expected,
        "expected at least {expected} requests, got {}; statuses: {:?}",
        recordings.len(),
        statuses(recordings)
    );
}

fn statuses(recordings: &[RecordedRequest]) -> Vec<u16> {
    recordings.iter().map(|r| r.status.as_u16()).collect()
}

/// `assert_final_success`: some recording was answered 200.
fn assert_final_success(recordings: &[RecordedRequest]) {
    assert!(
        recordings.iter().any(|r| r.status == StatusCode::OK),
        "no request was answered 200; statuses: {:?}",
        statuses(recordings)
    );
}

/// The time between the first two recordings (`assert_retry_delay`,
/// `assert_backoff_implemented`).
fn first_gap(recordings: &[RecordedRequest]) -> Duration {
    assert!(recordings.len() >= 2, "Need at least 2 requests");
    recordings[1]
        .received_at
        .saturating_duration_since(recordings[0].received_at)
}

/// The values of `field` of the events of one recording that have it, in order.
fn field_list(request: &RecordedRequest, field: &str) -> Vec<Value> {
    events_of(request)
        .iter()
        .filter_map(|e| e.get(field).cloned())
        .collect()
}

/// `assert_uuid_preserved_on_retry` / `assert_timestamp_preserved_on_retry`.
fn assert_preserved_on_retry(recordings: &[RecordedRequest], field: &str) {
    assert!(recordings.len() >= 2, "Need at least 2 requests");
    let first = field_list(&recordings[0], field);
    assert!(!first.is_empty(), "the first request has no {field}");
    assert_eq!(
        first,
        field_list(&recordings[1], field),
        "{field}s of the first two requests"
    );
}

/// `assert_no_duplicate_events_in_batch`.
fn assert_no_duplicate_events_in_batch(recordings: &[RecordedRequest]) {
    assert!(!recordings.is_empty(), "Need at least 1 request");
    for request in recordings {
        let uuids = field_list(request, "uuid");
        let mut unique = uuids.clone();
        unique.sort_by_key(Value::to_string);
        unique.dedup();
        assert_eq!(unique.len(), uuids.len(), "duplicate uuids in {uuids:?}");
    }
}

/// Every event uuid of every recording, in order.
fn all_uuids(recordings: &[RecordedRequest]) -> Vec<Value> {
    recordings
        .iter()
        .flat_map(|r| field_list(r, "uuid"))
        .collect()
}

/// `assert_event_field_is_rfc3339`'s rule: `^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|\+00:00)$`,
/// compared by (date and time, fraction without trailing zeros). `None` when it does not match.
fn rfc3339_utc_key(text: &str) -> Option<(String, String)> {
    let body = text
        .strip_suffix('Z')
        .or_else(|| text.strip_suffix("+00:00"))?;
    let (main, fraction) = match body.split_once('.') {
        Some((main, fraction)) => (main, fraction),
        None => (body, ""),
    };
    if body.contains('.') && (fraction.is_empty() || !fraction.bytes().all(|b| b.is_ascii_digit()))
    {
        return None;
    }
    let shape_ok = main.len() == 19
        && main.bytes().enumerate().all(|(i, b)| match i {
            4 | 7 => b == b'-',
            10 => b == b'T',
            13 | 16 => b == b':',
            _ => b.is_ascii_digit(),
        });
    shape_ok.then(|| (main.to_owned(), fraction.trim_end_matches('0').to_owned()))
}

// ===== the `capture` suite: format_validation =====

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_has_required_fields() {
    let h = begin().await;
    h.init(json!({"flush_at": 1})).await;
    h.cap().await;
    h.flush().await;
    let r = h.recordings();
    assert_request_count(&r, 1);
    let e0 = first_event(&r);
    assert_eq!(e0.get("event"), Some(&json!("test_event")));
    assert_eq!(e0.get("distinct_id"), Some(&json!("test_user")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_has_uuid() {
    let h = begin().await;
    h.init(json!({})).await;
    h.cap().await;
    h.flush().await;
    let e0 = first_event(&h.recordings());
    let uuid = e0["uuid"].as_str().expect("uuid is a string");
    assert!(!uuid.is_empty());
    posthog_tower::Uuid::parse_str(uuid).expect("uuid is a valid UUID");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_has_lib_properties() {
    let h = begin().await;
    h.init(json!({})).await;
    h.cap().await;
    h.flush().await;
    let e0 = first_event(&h.recordings());
    assert!(e0["properties"].get("$lib").is_some(), "{e0}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn distinct_id_is_string() {
    let h = begin().await;
    h.init(json!({})).await;
    h.capture("test_user_123", "test_event", Value::Null, Value::Null)
        .await;
    h.flush().await;
    let e0 = first_event(&h.recordings());
    assert_eq!(e0.get("distinct_id"), Some(&json!("test_user_123")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_is_present() {
    let h = begin().await;
    h.init(json!({"api_key": "phc_test_key"})).await;
    h.cap().await;
    h.flush().await;
    let r = h.recordings();
    let first = r.first().expect("a request was recorded");
    let root = first.json().expect("the body is JSON");
    let in_event = events_of(first)
        .iter()
        .any(|e| e.get("token") == Some(&json!("phc_test_key")));
    let at_root = root.get("api_key") == Some(&json!("phc_test_key"))
        || root.get("token") == Some(&json!("phc_test_key"));
    assert!(in_event || at_root, "no token in {root}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn custom_properties_preserved() {
    let h = begin().await;
    h.init(json!({})).await;
    h.capture(
        "test_user",
        "test_event",
        json!({"custom_string": "hello", "custom_number": 42, "custom_bool": true}),
        Value::Null,
    )
    .await;
    h.flush().await;
    let props = first_event(&h.recordings())["properties"].clone();
    // Strict JSON equality: stricter than Python's `42 == 42.0`, `True == 1`.
    assert_eq!(props.get("custom_string"), Some(&json!("hello")));
    assert_eq!(props.get("custom_number"), Some(&json!(42)));
    assert_eq!(props.get("custom_bool"), Some(&json!(true)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_has_timestamp() {
    let h = begin().await;
    h.init(json!({})).await;
    h.cap().await;
    h.flush().await;
    let e0 = first_event(&h.recordings());
    assert!(e0.get("timestamp").is_some(), "{e0}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_utc_event_timestamp_is_converted_to_utc() {
    let h = begin().await;
    h.init(json!({"flush_at": 1})).await;
    h.capture(
        "test_user",
        "test_event",
        json!({"timestamp_like": "2025-01-02T08:34:05+05:30"}),
        json!("2025-01-02T08:34:05+05:30"),
    )
    .await;
    h.flush().await;
    let r = h.recordings();
    let first = r.first().expect("a request was recorded");
    let expected = rfc3339_utc_key("2025-01-02T03:04:05Z");
    let events = events_of(first);
    assert!(!events.is_empty());
    for event in &events {
        let timestamp = event["timestamp"].as_str().expect("timestamp is a string");
        let key = rfc3339_utc_key(timestamp);
        assert!(key.is_some(), "{timestamp:?} is not RFC 3339 in UTC");
        assert_eq!(key, expected, "{timestamp:?} is not 2025-01-02T03:04:05Z");
    }
    assert_eq!(
        first_event(&r)["properties"].get("timestamp_like"),
        Some(&json!("2025-01-02T08:34:05+05:30"))
    );
}

// ===== retry_behavior =====

#[tokio::test(start_paused = true)]
async fn retries_on_503() {
    let h = begin().await;
    h.queue([error(503, "Service unavailable"), bare(503), bare(200)]);
    h.init(json!({})).await;
    h.cap().await;
    h.flush().await;
    h.wait_for_at_least(3, 5000).await;
    let r = h.recordings();
    assert_request_count_gte(&r, 3);
    assert_final_success(&r);
}

/// Shared by the tests where a status must not be retried: exactly one request after a
/// 2 s wait.
async fn does_not_retry(status: u16, message: &str) {
    let h = begin().await;
    h.queue([error(status, message)]);
    h.init(json!({})).await;
    h.cap().await;
    h.flush().await;
    wait(2000).await;
    assert_request_count(&h.recordings(), 1);
}

#[tokio::test(start_paused = true)]
async fn does_not_retry_on_400() {
    does_not_retry(400, "Bad request").await;
}

#[tokio::test(start_paused = true)]
async fn does_not_retry_on_401() {
    does_not_retry(401, "Unauthorized").await;
}

#[tokio::test(start_paused = true)]
async fn respects_retry_after_header() {
    let h = begin().await;
    h.queue([
        error(429, "Rate limited").with_header("Retry-After", "3"),
        bare(200),
    ]);
    h.init(json!({})).await;
    h.cap().await;
    h.flush().await;
    h.wait_for_at_least(2, 5000).await;
    let r = h.recordings();
    assert_request_count_gte(&r, 2);
    let gap = first_gap(&r);
    assert!(gap >= Duration::from_millis(2500), "retried after {gap:?}");
}

#[tokio::test(start_paused = true)]
async fn implements_backoff() {
    let h = begin().await;
    h.queue([bare(503), bare(503), bare(503), bare(200)]);
    h.init(json!({})).await;
    h.cap().await;
    h.flush().await;
    h.wait_for_at_least(3, 15000).await;
    let r = h.recordings();
    assert_request_count_gte(&r, 3);
    let gap = first_gap(&r);
    assert!(
        gap >= Duration::from_millis(100),
        "first retry after {gap:?}"
    );
}

/// Shared by the tests where one error then a 200 must end in success.
async fn retries_then_succeeds(status: u16, message: &str) {
    let h = begin().await;
    h.queue([error(status, message), bare(200)]);
    h.init(json!({})).await;
    h.cap().await;
    h.flush().await;
    h.wait_for_at_least(2, 5000).await;
    let r = h.recordings();
    assert_request_count_gte(&r, 2);
    assert_final_success(&r);
}

#[tokio::test(start_paused = true)]
async fn retries_on_500() {
    retries_then_succeeds(500, "Internal server error").await;
}

#[tokio::test(start_paused = true)]
async fn retries_on_502() {
    retries_then_succeeds(502, "Bad gateway").await;
}

#[tokio::test(start_paused = true)]
async fn retries_on_504() {
    retries_then_succeeds(504, "Gateway timeout").await;
}

#[tokio::test(start_paused = true)]
async fn max_retries_respected() {
    let h = begin().await;
    h.queue([bare(503), bare(503), bare(503), bare(503), bare(503)]);
    h.init(json!({"max_retries": 3})).await;
    h.cap().await;
    h.flush().await;
    wait(15000).await;
    assert_request_count(&h.recordings(), 4);
}

// ===== deduplication =====

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generates_unique_uuids() {
    let h = begin().await;
    h.init(json!({})).await;
    h.capture_multiple(5).await;
    h.flush().await;
    let uuids = all_uuids(&h.recordings());
    // The harness passes trivially on no events; ours must have sent them.
    assert_eq!(uuids.len(), 5, "{uuids:?}");
    let mut unique = uuids.clone();
    unique.sort_by_key(Value::to_string);
    unique.dedup();
    assert_eq!(unique.len(), uuids.len(), "duplicate uuids in {uuids:?}");
}

#[tokio::test(start_paused = true)]
async fn preserves_uuid_on_retry() {
    let h = begin().await;
    h.queue([bare(503), bare(200)]);
    h.init(json!({})).await;
    h.cap().await;
    h.flush().await;
    h.wait_for_at_least(2, 5000).await;
    let r = h.recordings();
    assert_request_count_gte(&r, 2);
    assert_preserved_on_retry(&r, "uuid");
}

#[tokio::test(start_paused = true)]
async fn preserves_uuid_and_timestamp_on_retry() {
    let h = begin().await;
    h.queue([bare(503), bare(503), bare(200)]);
    h.init(json!({})).await;
    h.cap().await;
    h.flush().await;
    h.wait_for_at_least(3, 10000).await;
    let r = h.recordings();
    assert_request_count_gte(&r, 3);
    assert_preserved_on_retry(&r, "uuid");
    assert_preserved_on_retry(&r, "timestamp");
}

#[tokio::test(start_paused = true)]
async fn preserves_uuid_and_timestamp_on_batch_retry() {
    let h = begin().await;
    h.queue([bare(503), bare(200)]);
    h.init(json!({"flush_at": 10})).await;
    h.capture_multiple(3).await;
    h.flush().await;
    h.wait_for_at_least(2, 5000).await;
    let r = h.recordings();
    assert_request_count_gte(&r, 2);
    assert_preserved_on_retry(&r, "uuid");
    assert_preserved_on_retry(&r, "timestamp");
    assert_no_duplicate_events_in_batch(&r);
    // In effect: the three events went in one batch, retried as they were.
    assert_eq!(field_list(&r[0], "uuid").len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_duplicate_events_in_batch() {
    let h = begin().await;
    h.init(json!({"flush_at": 10})).await;
    h.capture_multiple(5).await;
    h.flush().await;
    let r = h.recordings();
    assert_request_count_gte(&r, 1);
    assert_no_duplicate_events_in_batch(&r);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn different_events_have_different_uuids() {
    let h = begin().await;
    h.init(json!({})).await;
    for _ in 0..2 {
        h.capture(
            "test_user",
            "test_event",
            json!({"key": "value"}),
            Value::Null,
        )
        .await;
    }
    h.flush().await;
    let uuids = all_uuids(&h.recordings());
    assert!(uuids.len() >= 2, "{uuids:?}");
    assert_ne!(uuids[0], uuids[1]);
}

// ===== compression =====

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sends_gzip_when_enabled() {
    let h = begin().await;
    h.init(json!({"enable_compression": true})).await;
    h.cap().await;
    h.flush().await;
    let r = h.recordings();
    assert!(
        r.iter()
            .any(|req| req.header("content-encoding") == Some("gzip")),
        "no request with Content-Encoding: gzip"
    );
}

// ===== batch_format =====

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uses_proper_batch_structure() {
    let h = begin().await;
    h.init(json!({})).await;
    h.cap().await;
    h.flush().await;
    let r = h.recordings();
    let root = r
        .first()
        .and_then(RecordedRequest::json)
        .expect("a JSON request was recorded");
    assert!(root.get("api_key").is_some(), "{root}");
    assert!(root["batch"].is_array(), "{root}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flush_with_no_events_sends_nothing() {
    let h = begin().await;
    h.init(json!({})).await;
    h.flush().await;
    assert_request_count(&h.recordings(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multiple_events_batched_together() {
    let h = begin().await;
    h.init(json!({"flush_at": 10})).await;
    h.capture_multiple(5).await;
    h.flush().await;
    let r = h.recordings();
    assert_request_count(&r, 1);
    let root = r[0].json().expect("the body is JSON");
    assert!(root["batch"].is_array(), "{root}");
}

// ===== error_handling =====

#[tokio::test(start_paused = true)]
async fn does_not_retry_on_403() {
    does_not_retry(403, "Forbidden").await;
}

#[tokio::test(start_paused = true)]
async fn does_not_retry_on_413() {
    does_not_retry(413, "Payload too large").await;
}

#[tokio::test(start_paused = true)]
async fn retries_on_408() {
    retries_then_succeeds(408, "Request timeout").await;
}

// ===== the adapter itself =====

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adapter_health_declares_the_sdk() {
    let h = Harness::start().await;
    // `/health` is never scoped, even in parallel mode.
    let h = h.with_test_id("t-health");
    assert_eq!(h.url("/health"), format!("{}/health", h.shared.base));
    let health = h.call(Method::GET, "/health", None).await;
    assert_eq!(
        health,
        json!({
            "sdk_name": "posthog-tower",
            "sdk_version": posthog_tower::VERSION,
            "adapter_version": "1.0.0",
            "supports_parallel": true,
            "capabilities": ["capture_v0", "capture_ai_v0", "encoding_gzip"],
        })
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adapter_errors_are_json_400s() {
    let h = begin().await;
    let expect_400 = |reply: Reply, what: &str| {
        assert_eq!(
            reply.status,
            StatusCode::BAD_REQUEST,
            "{what}: {}",
            reply.body
        );
        assert_eq!(reply.content_type.as_deref(), Some("application/json"));
        assert_eq!(reply.body["success"], false, "{what}");
        assert!(reply.body["error"].is_string(), "{what}: {}", reply.body);
    };
    let capture = json!({"distinct_id": "u", "event": "e", "properties": null, "timestamp": null});

    let before_init = h
        .send(Method::POST, "/capture", Some(capture.to_string().into()))
        .await;
    expect_400(before_init, "capture before init");
    let bad_json = h
        .send(
            Method::POST,
            "/init",
            Some(Bytes::from_static(b"{not json")),
        )
        .await;
    expect_400(bad_json, "bad JSON");
    let no_host = h
        .send(Method::POST, "/init", Some(r#"{"api_key":"k"}"#.into()))
        .await;
    expect_400(no_host, "init without host");

    h.init(json!({})).await;
    let bad_properties =
        json!({"distinct_id": "u", "event": "e", "properties": [1], "timestamp": null});
    let reply = h
        .send(
            Method::POST,
            "/capture",
            Some(bad_properties.to_string().into()),
        )
        .await;
    expect_400(reply, "properties not an object");
    let bad_timestamp =
        json!({"distinct_id": "u", "event": "e", "properties": null, "timestamp": "yesterday"});
    let reply = h
        .send(
            Method::POST,
            "/capture",
            Some(bad_timestamp.to_string().into()),
        )
        .await;
    expect_400(reply, "invalid timestamp");
    let empty_name =
        json!({"distinct_id": "u", "event": " ", "properties": null, "timestamp": null});
    let reply = h
        .send(
            Method::POST,
            "/capture",
            Some(empty_name.to_string().into()),
        )
        .await;
    expect_400(reply, "the SDK refuses an empty event name");

    let unknown = h.send(Method::GET, "/nope", None).await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    assert_eq!(unknown.content_type.as_deref(), Some("application/json"));

    // Nothing reached the mock, and the adapter still works.
    h.flush().await;
    assert_request_count(&h.recordings(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adapter_capture_answers_the_event_uuid_and_keeps_a_given_one() {
    let h = begin().await;
    h.init(json!({})).await;
    let answer = h.cap().await;
    let generated = answer["uuid"].as_str().expect("a uuid").to_owned();
    let given = "0191d6c8-7b3a-7c44-9d2e-5f3a1b2c4d5e";
    let body = json!({"distinct_id": "u", "event": "e", "properties": null, "timestamp": null, "uuid": given});
    let answer = h.call(Method::POST, "/capture", Some(&body)).await;
    assert_eq!(answer, json!({"success": true, "uuid": given}));
    let flushed = h.flush().await;
    assert_eq!(flushed["events_flushed"], 2);
    assert_eq!(
        all_uuids(&h.recordings()),
        vec![json!(generated), json!(given)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adapter_init_options_reach_the_wire() {
    let h = begin().await;
    // Defaults: geoip left on (no `$geoip_disable`), no historical migration, no gzip, and
    // the SDK's User-Agent.
    h.init(json!({})).await;
    h.cap().await;
    h.flush().await;
    let r = h.recordings();
    assert_request_count(&r, 1);
    let root = r[0].json().expect("JSON");
    assert_eq!(root["historical_migration"], false);
    assert_eq!(root["api_key"], "phc_test_key");
    assert!(root["batch"][0]["properties"]
        .get("$geoip_disable")
        .is_none());
    assert_eq!(
        r[0].header("user-agent"),
        Some(posthog_tower::net::USER_AGENT)
    );
    assert_eq!(r[0].header("content-encoding"), None);
    assert_eq!(r[0].header("x-test-id"), None, "no test id, no header");

    // Everything set.
    h.reset().await;
    h.init(json!({
        "api_key": "phc_other",
        "disable_geoip": true,
        "historical_migration": true,
        "enable_compression": true,
        "flush_at": 2,
    }))
    .await;
    h.capture_multiple(2).await;
    // flush_at 2: the batch goes without a flush.
    let r = h
        .mock()
        .wait_for_requests("/batch", 1, Duration::from_secs(5))
        .await
        .expect("flush_at sends the batch");
    assert!(r[0].gzip && !r[0].gzip_decode_failed);
    let root = r[0].json().expect("JSON");
    assert_eq!(root["historical_migration"], true);
    assert_eq!(root["api_key"], "phc_other");
    assert_eq!(root["batch"][0]["properties"]["$geoip_disable"], true);
    assert_eq!(root["batch"].as_array().map(Vec::len), Some(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adapter_flush_interval_sends_without_flush() {
    let h = begin().await;
    h.init(json!({"flush_interval_ms": 50})).await;
    h.cap().await;
    let r = h
        .mock()
        .wait_for_requests("/batch", 1, Duration::from_secs(5))
        .await
        .expect("the interval sends the batch");
    assert_eq!(events_of(&r[0]).len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adapter_state_reports_real_retry_figures() {
    let h = begin().await;
    h.queue([bare(503), bare(200)]);
    h.init(json!({})).await;
    let uuid = h.cap().await["uuid"].clone();
    let before = h.state().await;
    assert_eq!(before["total_events_captured"], 1);
    assert_eq!(before["pending_events"], 1);
    assert_eq!(before["requests_made"], json!([]));

    let flushed = h.flush().await;
    assert_eq!(flushed["events_flushed"], 1);
    let state = h.state().await;
    assert_eq!(state["total_events_captured"], 1, "{state}");
    assert_eq!(state["total_events_sent"], 1, "{state}");
    assert_eq!(state["pending_events"], 0, "{state}");
    assert_eq!(state["total_retries"], 1, "{state}");
    assert_eq!(state["last_error"], Value::Null, "{state}");
    let made = state["requests_made"].as_array().expect("requests_made");
    assert_eq!(made.len(), 2, "{state}");
    for (i, (attempt, status)) in made.iter().zip([503, 200]).enumerate() {
        assert_eq!(attempt["retry_attempt"], i, "{attempt}");
        assert_eq!(attempt["status_code"], status, "{attempt}");
        assert_eq!(attempt["event_count"], 1, "{attempt}");
        assert_eq!(attempt["uuid_list"], json!([uuid]), "{attempt}");
    }
    let gap = made[1]["timestamp_ms"].as_u64().unwrap() - made[0]["timestamp_ms"].as_u64().unwrap();
    assert!(gap >= 900, "backoff of {gap} ms");
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    assert!(made[1]["timestamp_ms"].as_u64().unwrap() <= now_ms);
    // The mock agrees.
    assert_eq!(statuses(&h.recordings()), vec![503, 200]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adapter_state_reports_the_last_error() {
    let h = begin().await;
    h.queue([error(400, "Bad request")]);
    h.init(json!({})).await;
    h.cap().await;
    h.flush().await;
    let state = h.state().await;
    assert_eq!(state["total_events_captured"], 1, "{state}");
    assert_eq!(state["total_events_sent"], 0, "{state}");
    assert_eq!(state["pending_events"], 0, "{state}");
    assert_eq!(state["total_retries"], 0, "{state}");
    let last_error = state["last_error"].as_str().expect("last_error is set");
    assert!(last_error.contains("400"), "{last_error}");
    assert_eq!(state["requests_made"][0]["status_code"], 400, "{state}");
    assert_eq!(state["requests_made"][0]["retry_attempt"], 0, "{state}");

    // After /reset, /state describes no client.
    h.reset().await;
    let state = h.state().await;
    assert_eq!(state["total_events_captured"], 0);
    assert_eq!(state["last_error"], Value::Null);
    assert_eq!(state["requests_made"], json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adapter_parallel_test_ids_get_their_own_clients() {
    let h = Harness::start().await;
    let a = h.with_test_id("t-0c5e8a52-8f3e-4a51-9d55-8f1f2a3b4c5d");
    let b = h.with_test_id("t-7d1b6f40-2c9a-4e7b-8a61-3e2d1c0b9a87");
    a.reset().await;
    b.reset().await;
    a.init(json!({"api_key": "phc_a"})).await;
    b.init(json!({"api_key": "phc_b", "enable_compression": true}))
        .await;
    // The global client is a third one, without a test id.
    h.init(json!({"api_key": "phc_global"})).await;

    let run = |s: Harness, prefix: &'static str| async move {
        for i in 0..3 {
            s.capture("user", &format!("{prefix}_{i}"), Value::Null, Value::Null)
                .await;
        }
        s.flush().await
    };
    let (fa, fb, fg) = tokio::join!(
        run(a.clone(), "a"),
        run(b.clone(), "b"),
        run(h.clone(), "g")
    );
    for flushed in [fa, fb, fg] {
        assert_eq!(flushed["events_flushed"], 3);
    }

    let r = h.recordings();
    assert_request_count(&r, 3);
    for (session, prefix, key) in [
        (&a, "a", "phc_a"),
        (&b, "b", "phc_b"),
        (&h, "g", "phc_global"),
    ] {
        let mine: Vec<&RecordedRequest> = r
            .iter()
            .filter(|req| req.header("x-test-id") == session.test_id.as_deref())
            .collect();
        assert_eq!(mine.len(), 1, "requests for {prefix}");
        let root = mine[0].json().expect("JSON");
        assert_eq!(root["api_key"], key);
        let names: Vec<Value> = events_of(mine[0])
            .iter()
            .map(|e| e["event"].clone())
            .collect();
        assert_eq!(
            names,
            vec![
                json!(format!("{prefix}_0")),
                json!(format!("{prefix}_1")),
                json!(format!("{prefix}_2"))
            ]
        );
        assert_eq!(mine[0].gzip, prefix == "b");
        let state = session.state().await;
        assert_eq!(state["total_events_captured"], 3, "{prefix}: {state}");
        assert_eq!(state["total_events_sent"], 3, "{prefix}: {state}");
    }

    // Resetting one test id leaves the others alone.
    a.reset().await;
    assert_eq!(a.state().await["total_events_captured"], 0);
    assert_eq!(b.state().await["total_events_captured"], 3);
    let capture = json!({"distinct_id": "u", "event": "e", "properties": null, "timestamp": null});
    let reply = a
        .send(Method::POST, "/capture", Some(capture.to_string().into()))
        .await;
    assert_eq!(
        reply.status,
        StatusCode::BAD_REQUEST,
        "a has no client any more"
    );
    b.cap().await;
    b.flush().await;
    let last = h.recordings().pop().expect("b's request");
    assert_eq!(last.header("x-test-id"), b.test_id.as_deref());

    // The global reset drops every client.
    h.reset().await;
    for session in [&a, &b, &h] {
        assert_eq!(session.state().await["total_events_captured"], 0);
    }
}

#[tokio::test(start_paused = true)]
async fn adapter_reset_drops_queued_events() {
    let h = begin().await;
    // flush_at 100, flush interval 500 ms: the events wait in the batch.
    h.init(json!({})).await;
    h.capture_multiple(3).await;
    h.reset().await;
    // Three flush intervals later, nothing arrived.
    wait(1500).await;
    assert_request_count(&h.recordings(), 0);
}

#[tokio::test(start_paused = true)]
async fn adapter_reset_cancels_pending_retries() {
    let h = begin().await;
    h.queue([bare(503), bare(503), bare(503)]);
    h.init(json!({"flush_at": 1})).await;
    h.cap().await;
    h.mock()
        .wait_for_requests("/batch", 1, Duration::from_secs(5))
        .await
        .expect("the first attempt");
    // The harness's reset: the mock is cleared, then the adapter reset.
    h.reset().await;
    // The first retry was due 1 to 1.25 s after the first attempt: it must never come.
    wait(2600).await;
    assert_request_count(&h.recordings(), 0);
}

#[tokio::test(start_paused = true)]
async fn adapter_init_replaces_the_client_without_leaking() {
    let h = begin().await;
    h.init(json!({})).await;
    h.capture_multiple(2).await;
    // A second /init replaces the client; its queued events are dropped, not sent.
    h.init(json!({})).await;
    wait(1500).await;
    assert_request_count(&h.recordings(), 0);
    h.cap().await;
    h.flush().await;
    let r = h.recordings();
    assert_request_count(&r, 1);
    assert_eq!(events_of(&r[0]).len(), 1);
}

// ===== the crate behaviour `/reset` would like to rely on =====

/// Not a harness test. `PostHog::shutdown` with a zero deadline should report what is queued
/// as failed without sending it; it sends it. The adapter therefore also closes a gate in its
/// observing layer before shutting a client down (see `Instance::retire`), which is what makes
/// the `adapter_reset_*` tests pass.
#[tokio::test(start_paused = true)]
async fn sdk_shutdown_with_zero_deadline_sends_nothing() {
    let mock = MockPostHog::start().await.expect("the mock starts");
    let posthog = posthog_tower::PostHog::builder("phc_test_key")
        .host(mock.url())
        .flush_interval(Duration::from_secs(60))
        .build()
        .expect("the client builds");
    for i in 0..3 {
        posthog
            .capture(posthog_tower::Event::new(format!("event_{i}"), "user"))
            .expect("captured");
    }
    // The clock only moves once every task is idle: the worker has taken the events into its
    // batch by the end of this wait.
    wait(50).await;
    assert_eq!(
        posthog.stats().queue_depth,
        0,
        "the events are in the batch"
    );
    let report = posthog.shutdown(Duration::ZERO).await;
    wait(500).await;
    assert_eq!(statuses(&mock.requests()), Vec::<u16>::new(), "{report:?}");
    assert_eq!((report.delivered, report.failed), (0, 3));
}
