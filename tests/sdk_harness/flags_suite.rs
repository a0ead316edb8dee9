//! PostHog's SDK compliance harness, `feature_flags` suite, reimplemented in Rust.
//!
//! Like [`capture_suite`](crate::capture_suite) (the `capture` suite), these tests start our
//! adapter (`examples/sdk_adapter/adapter.rs`, included by [`harness`](crate::harness)) in-process
//! on `127.0.0.1:0`, start [`MockPostHog`] as the mock, and drive the adapter over real HTTP with
//! exactly the calls the harness makes: `/reset` (after clearing the mock), `/init`,
//! `/get_feature_flag` with the step's keys only (`"force_remote": true` in every call of the
//! suite), `/capture` and `/flush`. Then they check what the mock recorded with the harness's own
//! assertions.
//!
//! Every harness test of the `feature_flags` suite that runs for a server SDK has a test of the
//! same name here (17 of them). The tests prefixed `adapter_` check the adapter's flag endpoints
//! themselves: errors, payloads, `/get_all_flags`, `X-Test-Id` on `/flags` in parallel mode,
//! and that `/reset` stops a pending `/flags` retry. The tests prefixed `adapter_local_` check
//! our local-evaluation extensions (`personal_api_key`, `poll_interval_ms`,
//! `only_evaluate_locally`, `force_remote` with local evaluation on) against [`MockPostHog`]
//! serving `/flags/definitions`, which the harness's own mock does not have (it answers 404 and
//! records nothing there).
//!
//! The harness's mock differs from [`MockPostHog`] in two ways that matter here, and the tests
//! reproduce what the SDK would receive from it:
//!
//! * its `/flags` answers the legacy `{"featureFlags": {}, "featureFlagPayloads": {},
//!   "errorsWhileComputingFlags": false}` by default, and a scripted 2xx body is shallow-merged
//!   over that default (see [`scripted`]);
//! * it has one response queue shared by every path. In this suite every scripted answer is
//!   consumed by a `/flags` request (the `$feature_flag_called` batch can only follow the
//!   successful `/flags` answer), so the tests queue them on `/flags` and check that the first
//!   recordings were indeed `/flags` requests ([`assert_queue_went_to_flags`]).
//!
//! There is no `wait` step in this suite: every assertion runs as soon as the last call
//! returned, as the harness's do.

use std::time::Duration;

use http::{Method, StatusCode};
use posthog_tower::testing::{MockResponse, RecordedRequest};
use serde_json::{json, Map, Value};

// ===== the harness side: driving the adapter (shared with the capture suite) =====

use crate::harness::Harness;

/// The steps of this suite, on top of the shared [`Harness`] (a trait, as the `capture`
/// suite's steps in the same binary use the same names).
trait FlagSteps {
    /// `CAP(d, e)`: all four keys always sent, unset ones as JSON null.
    async fn capture(&self, distinct_id: &str, event: &str) -> Value;

    async fn flush(&self) -> Value;

    /// `GFF{body}`: `POST /get_feature_flag` with exactly these keys. The answer is the
    /// harness's `last_action_result`.
    async fn gff(&self, body: Value) -> Value;

    /// `Q[...]`: the harness's `configure_mock_responses` (see the module docs: every entry
    /// of this suite is consumed by a `/flags` request).
    fn queue(&self, entries: impl IntoIterator<Item = (u16, Option<&'static str>)>);
}

impl FlagSteps for Harness {
    async fn capture(&self, distinct_id: &str, event: &str) -> Value {
        let body = json!({
            "distinct_id": distinct_id,
            "event": event,
            "properties": null,
            "timestamp": null,
        });
        let answer = self.call(Method::POST, "/capture", Some(&body)).await;
        assert_eq!(answer["success"], true, "/capture: {answer}");
        answer
    }

    async fn flush(&self) -> Value {
        let answer = self.call(Method::POST, "/flush", None).await;
        assert_eq!(answer["success"], true);
        answer
    }

    async fn gff(&self, body: Value) -> Value {
        self.call(Method::POST, "/get_feature_flag", Some(&body))
            .await
    }

    fn queue(&self, entries: impl IntoIterator<Item = (u16, Option<&'static str>)>) {
        for (status, body) in entries {
            self.mock().enqueue("/flags", scripted(status, body));
        }
    }
}

/// A fresh mock and adapter, reset the way the harness starts every test.
async fn begin() -> Harness {
    let h = start().await;
    h.reset().await;
    h
}

/// The shared harness plus the harness mock's `/flags` default: the legacy shape, whatever
/// the `v` query parameter says.
async fn start() -> Harness {
    let h = Harness::start().await;
    h.mock()
        .set_default("/flags", MockResponse::json(200, flags_default()));
    h
}

/// The harness mock's default `/flags` body, also the base its scripted 2xx bodies merge over.
fn flags_default() -> Value {
    json!({"featureFlags": {}, "featureFlagPayloads": {}, "errorsWhileComputingFlags": false})
}

/// What the harness's mock answers to `/flags` for a scripted entry `{status_code, body}`:
/// a status other than 200, or any body, is a custom answer (no body: `{"error": "Server
/// error"}`; a 2xx object body shallow-merged over [`flags_default`]); a bare 200 is the
/// endpoint's default.
fn scripted(status: u16, body: Option<&str>) -> MockResponse {
    if body.is_none() && status == 200 {
        return MockResponse::json(200, flags_default());
    }
    if status == 204 && body.unwrap_or_default().is_empty() {
        return MockResponse::status(204);
    }
    let mut value = match body {
        Some(text) => serde_json::from_str(text).expect("a scripted body is JSON"),
        None => json!({"error": "Server error"}),
    };
    if (200..300).contains(&status) {
        if let Value::Object(overlay) = value {
            let mut merged = match flags_default() {
                Value::Object(base) => base,
                _ => Map::new(),
            };
            merged.extend(overlay);
            value = Value::Object(merged);
        }
    }
    MockResponse::json(status, value)
}

// ===== the harness's assertions =====

fn is_flags(request: &RecordedRequest) -> bool {
    request.path.contains("/flags")
}

/// The recordings of `/flags` (the harness matches paths that contain `/flags`).
fn flags_requests(recordings: &[RecordedRequest]) -> Vec<&RecordedRequest> {
    recordings.iter().filter(|r| is_flags(r)).collect()
}

fn paths(recordings: &[RecordedRequest]) -> Vec<String> {
    recordings
        .iter()
        .map(|r| format!("{} {} -> {}", r.method, r.path, r.status.as_u16()))
        .collect()
}

/// `assert_flags_request_count {expected}`.
fn assert_flags_request_count(recordings: &[RecordedRequest], expected: usize) {
    assert_eq!(
        flags_requests(recordings).len(),
        expected,
        "/flags requests; recorded: {:?}",
        paths(recordings)
    );
}

/// `assert_flags_request_field {field, expected}`: a dotted path into the first `/flags` body;
/// a missing top-level `token` falls back to `api_key`.
fn assert_flags_request_field(recordings: &[RecordedRequest], field: &str, expected: Value) {
    let first = flags_requests(recordings)
        .into_iter()
        .next()
        .expect("no /flags request was recorded");
    let body = first.json().expect("the /flags body is JSON");
    let mut segments = field.split('.');
    let head = segments.next().unwrap_or_default();
    let mut value = match body.get(head) {
        None if head == "token" => body.get("api_key"),
        found => found,
    };
    for segment in segments {
        value = value.and_then(|v| v.get(segment));
    }
    assert_eq!(value, Some(&expected), "/flags body field {field}: {body}");
}

/// `assert_flags_request_query_param {param, expected}`: the first value of the query
/// parameter of the first `/flags` request.
fn assert_flags_request_query_param(recordings: &[RecordedRequest], param: &str, expected: &str) {
    let first = flags_requests(recordings)
        .into_iter()
        .next()
        .expect("no /flags request was recorded");
    let value = first.query.as_deref().and_then(|query| {
        query
            .split('&')
            .filter_map(|pair| pair.split_once('=').or(Some((pair, ""))))
            .find(|(key, _)| *key == param)
            .map(|(_, value)| value)
    });
    assert_eq!(value, Some(expected), "query of {}", first.path);
}

/// `assert_no_requests_to_paths {paths}`, ignoring trailing slashes.
fn assert_no_requests_to_paths(recordings: &[RecordedRequest], forbidden: &[&str]) {
    for request in recordings {
        let path = request.path.trim_end_matches('/');
        assert!(
            !forbidden.iter().any(|p| p.trim_end_matches('/') == path),
            "a request went to {}",
            request.path
        );
    }
}

/// `assert_header_absent {header}`: on the first recording, whatever its path.
fn assert_header_absent(recordings: &[RecordedRequest], name: &str) {
    let first = recordings.first().expect("no request was recorded");
    assert!(
        first.headers.get(name).is_none(),
        "{} {} has a {name} header",
        first.method,
        first.path
    );
}

/// `parsed_events`: a JSON list as is, an object's `batch`, an object's `data` list, any other
/// object as one event; nothing when the body is not JSON.
fn events_of(request: &RecordedRequest) -> Vec<Value> {
    let Ok(body) = serde_json::from_slice::<Value>(&request.body) else {
        return Vec::new();
    };
    match body {
        Value::Array(events) => events,
        Value::Object(ref root) => match (root.get("batch"), root.get("data")) {
            (Some(batch), _) => batch.as_array().cloned().unwrap_or_default(),
            (None, Some(Value::Array(data))) => data.clone(),
            _ => vec![body],
        },
        _ => Vec::new(),
    }
}

/// The events of every recording that is not a `/flags` request.
fn captured_events(recordings: &[RecordedRequest]) -> Vec<Value> {
    recordings
        .iter()
        .filter(|r| !is_flags(r))
        .flat_map(events_of)
        .collect()
}

/// `assert_event_count_with_name {name, expected}`.
fn assert_event_count_with_name(recordings: &[RecordedRequest], name: &str, expected: usize) {
    let events = captured_events(recordings);
    let count = events.iter().filter(|e| e["event"] == name).count();
    assert_eq!(count, expected, "{name} events among {events:?}");
}

/// `assert_event_property_in_named_event {event_name, property, expected}`.
fn assert_event_property_in_named_event(
    recordings: &[RecordedRequest],
    event_name: &str,
    property: &str,
    expected: Value,
) {
    let events = captured_events(recordings);
    let event = events
        .iter()
        .find(|e| e["event"] == event_name)
        .unwrap_or_else(|| panic!("no {event_name} event among {events:?}"));
    let properties = event["properties"]
        .as_object()
        .unwrap_or_else(|| panic!("{event_name} has no properties object: {event}"));
    assert_eq!(
        properties.get(property),
        Some(&expected),
        "{event_name}.{property}"
    );
}

/// `assert_action_result {field, expected}` on the last `/get_feature_flag` answer.
fn assert_action_result(result: &Value, field: &str, expected: Value) {
    let result = result
        .as_object()
        .expect("the last action result is a dict");
    assert_eq!(result.get(field), Some(&expected), "{field} of {result:?}");
}

/// The shared queue's entries went where [`Harness::queue`] put them: the first `n`
/// recordings are the `/flags` requests that consumed them.
fn assert_queue_went_to_flags(recordings: &[RecordedRequest], n: usize) {
    assert!(recordings.len() >= n, "recorded: {:?}", paths(recordings));
    assert!(
        recordings[..n].iter().all(is_flags),
        "the harness's shared queue would have answered another path first: {:?}",
        paths(recordings)
    );
}

// ===== the `feature_flags` suite: request_payload =====

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_with_person_properties_device_id() {
    let h = begin().await;
    h.init(json!({"api_key": "phc_test_key"})).await;
    h.gff(json!({
        "key": "signup-aa-test",
        "distinct_id": "test_user_123",
        "person_properties": {"$device_id": "device_abc_123"},
        "groups": {},
        "group_properties": {},
        "disable_geoip": true,
        "force_remote": true,
    }))
    .await;
    let r = h.recordings();
    assert_flags_request_count(&r, 1);
    assert_flags_request_field(&r, "token", json!("phc_test_key"));
    assert_flags_request_field(&r, "distinct_id", json!("test_user_123"));
    assert_flags_request_field(&r, "person_properties.$device_id", json!("device_abc_123"));
    assert_flags_request_field(&r, "groups", json!({}));
    assert_flags_request_field(&r, "group_properties", json!({}));
    assert_flags_request_field(&r, "geoip_disable", json!(true));
    assert_flags_request_field(&r, "flag_keys_to_evaluate", json!(["signup-aa-test"]));
}

/// `GFF{"key":"any-flag","distinct_id":"user_1","force_remote":true}`, used by most tests.
fn any_flag() -> Value {
    json!({"key": "any-flag", "distinct_id": "user_1", "force_remote": true})
}

/// The one harness test expected to fail (issue 17, point 8). The harness's contract
/// (August 2026) asserts `?v=2`, written to catch downgrades before `/flags?v=4` existed;
/// the crate now speaks `POST /flags/?v=4`, as posthog-python 7.91.1 does, and 7.91.1
/// fails this test for the same reason. `should_panic` makes the runner expect exactly this
/// failure: the test fails (and the run goes red) if the request ever says `v=2` again, or
/// fails for any other reason than the `v` query parameter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[should_panic(expected = "query of /flags/")]
async fn flags_request_uses_v2_query_param() {
    let h = begin().await;
    h.init(json!({})).await;
    h.gff(any_flag()).await;
    let r = h.recordings();
    assert_flags_request_count(&r, 1);
    assert_flags_request_query_param(&r, "v", "2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flags_request_hits_flags_path_not_decide() {
    let h = begin().await;
    h.init(json!({})).await;
    h.gff(any_flag()).await;
    let r = h.recordings();
    assert_flags_request_count(&r, 1);
    // Our mock records every path (the harness's only its routes), so this is stricter.
    assert_no_requests_to_paths(&r, &["/decide", "/decide/"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flags_request_omits_authorization_header() {
    let h = begin().await;
    h.init(json!({})).await;
    h.gff(any_flag()).await;
    let r = h.recordings();
    assert_flags_request_count(&r, 1);
    assert_header_absent(&r, "authorization");
    assert!(is_flags(&r[0]), "the first request is the /flags call");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_in_flags_body_matches_init() {
    let h = begin().await;
    h.init(json!({"api_key": "phc_specific_key_12345"})).await;
    h.gff(any_flag()).await;
    assert_flags_request_field(&h.recordings(), "token", json!("phc_specific_key_12345"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_round_trip() {
    let h = begin().await;
    h.init(json!({})).await;
    h.gff(json!({
        "key": "any-flag",
        "distinct_id": "user_1",
        "groups": {"company": "acme"},
        "group_properties": {"company": {"plan": "enterprise"}},
        "force_remote": true,
    }))
    .await;
    let r = h.recordings();
    assert_flags_request_field(&r, "groups.company", json!("acme"));
    assert_flags_request_field(&r, "group_properties.company.plan", json!("enterprise"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_default_to_empty_object() {
    let h = begin().await;
    h.init(json!({})).await;
    h.gff(any_flag()).await;
    let r = h.recordings();
    assert_flags_request_field(&r, "groups", json!({}));
    assert_flags_request_field(&r, "group_properties", json!({}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disable_geoip_false_propagates_as_geoip_disable_false() {
    let h = begin().await;
    h.init(json!({})).await;
    h.gff(json!({
        "key": "any-flag",
        "distinct_id": "user_1",
        "disable_geoip": false,
        "force_remote": true,
    }))
    .await;
    assert_flags_request_field(&h.recordings(), "geoip_disable", json!(false));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disable_geoip_omitted_defaults_to_false() {
    let h = begin().await;
    h.init(json!({})).await;
    h.gff(any_flag()).await;
    assert_flags_request_field(&h.recordings(), "geoip_disable", json!(false));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flag_keys_to_evaluate_contains_only_requested_key() {
    let h = begin().await;
    h.init(json!({})).await;
    h.gff(json!({"key": "my-specific-flag", "distinct_id": "user_1", "force_remote": true}))
        .await;
    assert_flags_request_field(
        &h.recordings(),
        "flag_keys_to_evaluate",
        json!(["my-specific-flag"]),
    );
}

// ===== request_lifecycle =====

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_flags_request_on_init_alone() {
    let h = begin().await;
    h.init(json!({})).await;
    let r = h.recordings();
    assert_flags_request_count(&r, 0);
    // Nothing at all, in fact.
    assert!(r.is_empty(), "recorded: {:?}", paths(&r));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_flags_request_on_normal_capture() {
    let h = begin().await;
    h.init(json!({})).await;
    h.capture("user_1", "regular_event").await;
    h.flush().await;
    let r = h.recordings();
    assert_flags_request_count(&r, 0);
    // The capture itself did go out.
    assert_eq!(captured_events(&r).len(), 1, "recorded: {:?}", paths(&r));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_flag_calls_produce_two_remote_requests() {
    let h = begin().await;
    h.init(json!({})).await;
    h.gff(any_flag()).await;
    h.gff(any_flag()).await;
    assert_flags_request_count(&h.recordings(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mock_response_value_is_returned_to_caller() {
    let h = begin().await;
    h.queue([(
        200,
        Some(r#"{"featureFlags": {"signup-aa-test": "variant-a"}}"#),
    )]);
    h.init(json!({})).await;
    let result = h
        .gff(json!({"key": "signup-aa-test", "distinct_id": "user_1", "force_remote": true}))
        .await;
    assert_action_result(&result, "value", json!("variant-a"));
    assert_queue_went_to_flags(&h.recordings(), 1);
}

// ===== retry_behavior =====

/// `Q[status (no body), 200 {flag: true}]`, one lookup: retried within the call.
async fn retries_flags_on(status: u16, flag: &'static str) {
    let h = begin().await;
    let body: &'static str = match status {
        502 => r#"{"featureFlags": {"transient-502-flag": true}}"#,
        _ => r#"{"featureFlags": {"transient-504-flag": true}}"#,
    };
    h.queue([(status, None), (200, Some(body))]);
    h.init(json!({})).await;
    let result = h
        .gff(json!({"key": flag, "distinct_id": "user_1", "force_remote": true}))
        .await;
    let r = h.recordings();
    assert_flags_request_count(&r, 2);
    assert_action_result(&result, "value", json!(true));
    assert_queue_went_to_flags(&r, 2);
    assert_eq!(
        flags_requests(&r)
            .iter()
            .map(|req| req.status.as_u16())
            .collect::<Vec<_>>(),
        vec![status, 200]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_flags_on_502() {
    retries_flags_on(502, "transient-502-flag").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_flags_on_504() {
    retries_flags_on(504, "transient-504-flag").await;
}

// ===== side_effect_events =====

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_feature_flag_captures_feature_flag_called_event() {
    let h = begin().await;
    h.queue([(200, Some(r#"{"featureFlags": {"my-flag": true}}"#))]);
    h.init(json!({})).await;
    h.gff(json!({"key": "my-flag", "distinct_id": "user_1", "force_remote": true}))
        .await;
    h.flush().await;
    let r = h.recordings();
    assert_event_count_with_name(&r, "$feature_flag_called", 1);
    assert_event_property_in_named_event(
        &r,
        "$feature_flag_called",
        "$feature_flag",
        json!("my-flag"),
    );
    assert_event_property_in_named_event(
        &r,
        "$feature_flag_called",
        "$feature_flag_response",
        json!(true),
    );
    assert_queue_went_to_flags(&r, 1);
}

// ===== the adapter itself =====

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adapter_health_is_unchanged_by_flags() {
    let h = start().await;
    let health = h.call(Method::GET, "/health", None).await;
    assert_eq!(
        health["capabilities"],
        json!(["capture_v0", "capture_ai_v0", "encoding_gzip"])
    );
    assert_eq!(health["supports_parallel"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adapter_missing_flag_is_null_and_success() {
    let h = begin().await;
    h.init(json!({})).await;
    // The default body knows no flag.
    let result = h
        .gff(json!({"key": "no-such-flag", "distinct_id": "user_1", "force_remote": true}))
        .await;
    assert_eq!(
        result,
        json!({
            "success": true,
            "value": null,
            "payload": null,
            "locally_evaluated": false,
            "error": "flag_missing",
        })
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adapter_get_feature_flag_answers_value_and_payload() {
    let h = begin().await;
    h.queue([
        (
            200,
            Some(r#"{"featureFlags": {"pay": "variant-b"}, "featureFlagPayloads": {"pay": "{\"discount\": 10}"}}"#),
        ),
        (200, Some(r#"{"featureFlags": {"off-flag": false}}"#)),
    ]);
    h.init(json!({})).await;
    let result = h
        .gff(json!({"key": "pay", "distinct_id": "user_1", "force_remote": true}))
        .await;
    assert_eq!(
        result,
        json!({
            "success": true,
            "value": "variant-b",
            "payload": {"discount": 10},
            "locally_evaluated": false,
        })
    );
    let result = h
        .gff(json!({"key": "off-flag", "distinct_id": "user_1"}))
        .await;
    assert_eq!(result["value"], false, "{result}");
    assert_eq!(result["payload"], Value::Null, "{result}");
    assert_flags_request_count(&h.recordings(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adapter_get_feature_flag_delivers_the_event_before_answering() {
    let h = begin().await;
    h.queue([(200, Some(r#"{"featureFlags": {"my-flag": "v1"}}"#))]);
    h.init(json!({})).await;
    h.gff(json!({"key": "my-flag", "distinct_id": "user_1", "force_remote": true}))
        .await;
    // No /flush: the adapter flushed before answering.
    let r = h.recordings();
    assert_event_count_with_name(&r, "$feature_flag_called", 1);
    assert_event_property_in_named_event(
        &r,
        "$feature_flag_called",
        "$feature_flag_response",
        json!("v1"),
    );
    let batch = r.iter().find(|req| !is_flags(req)).expect("the batch");
    assert_eq!(
        batch.json().expect("JSON")["batch"][0]["distinct_id"],
        "user_1"
    );
    // A missing flag reports its lookup too (response null), and it is delivered as well.
    h.gff(json!({"key": "gone", "distinct_id": "user_1", "force_remote": true}))
        .await;
    let r = h.recordings();
    assert_event_count_with_name(&r, "$feature_flag_called", 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adapter_get_feature_flag_errors() {
    let h = begin().await;
    // Before /init there is no client.
    let reply = h
        .send_json(Method::POST, "/get_feature_flag", &any_flag())
        .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{}", reply.body);
    assert_eq!(reply.body["success"], false);

    h.init(json!({})).await;
    // A 500 is final (not retried): value null, one request.
    h.queue([(500, Some(r#"{"error": "Internal server error"}"#))]);
    let result = h.gff(any_flag()).await;
    assert_eq!(result["success"], true, "{result}");
    assert_eq!(result["value"], Value::Null, "{result}");
    assert_eq!(result["error"], "api_error_500", "{result}");
    assert_flags_request_count(&h.recordings(), 1);

    // Malformed calls are 400s and reach nothing.
    for body in [
        json!({"distinct_id": "user_1"}),
        json!({"key": "k"}),
        json!({"key": "k", "distinct_id": "user_1", "groups": {"company": ["acme"]}}),
        json!({"key": "k", "distinct_id": "user_1", "group_properties": {"company": 3}}),
        json!({"key": "k", "distinct_id": "user_1", "force_remote": true, "only_evaluate_locally": true}),
    ] {
        let reply = h.send_json(Method::POST, "/get_feature_flag", &body).await;
        assert_eq!(
            reply.status,
            StatusCode::BAD_REQUEST,
            "{body}: {}",
            reply.body
        );
        assert_eq!(reply.content_type.as_deref(), Some("application/json"));
    }

    // Without a personal API key only_evaluate_locally asks nothing and decides nothing.
    let result = h
        .gff(json!({"key": "k", "distinct_id": "user_1", "only_evaluate_locally": true}))
        .await;
    assert_eq!(result["success"], false, "{result}");
    assert_eq!(result["value"], Value::Null, "{result}");
    assert_eq!(result["locally_evaluated"], false, "{result}");
    assert_flags_request_count(&h.recordings(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adapter_flag_context_reaches_the_flags_body() {
    let h = begin().await;
    // disable_geoip at /init is the default of every lookup; a lookup may override it.
    h.init(json!({"disable_geoip": true})).await;
    h.gff(json!({
        "key": "k",
        "distinct_id": "user_1",
        "person_properties": {"plan": "pro", "age": 42},
        "groups": {"company": "acme", "project": 7, "ignored": null},
        "group_properties": {"company": {"size": 5}, "unused": null},
        "force_remote": false,
    }))
    .await;
    h.gff(json!({"key": "k", "distinct_id": "user_2", "disable_geoip": false, "person_properties": null, "groups": null, "group_properties": null}))
        .await;
    let r = h.recordings();
    let bodies: Vec<Value> = flags_requests(&r)
        .iter()
        .map(|req| req.json().expect("JSON"))
        .collect();
    assert_eq!(bodies.len(), 2, "force_remote false still asks /flags");
    assert_eq!(bodies[0]["geoip_disable"], true);
    assert_eq!(
        bodies[0]["person_properties"],
        json!({"plan": "pro", "age": 42})
    );
    assert_eq!(
        bodies[0]["groups"],
        json!({"company": "acme", "project": "7"})
    );
    assert_eq!(bodies[0]["group_properties"]["company"]["size"], 5);
    assert_eq!(bodies[1]["geoip_disable"], false);
    assert_eq!(bodies[1]["distinct_id"], "user_2");
    assert_eq!(bodies[1]["groups"], json!({}));
    assert_eq!(bodies[1]["person_properties"], json!({}));
    for body in &bodies {
        assert_eq!(body["token"], "phc_test_key");
        assert_eq!(body["flag_keys_to_evaluate"], json!(["k"]));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adapter_get_all_flags() {
    let h = begin().await;
    h.queue([
        (
            200,
            Some(r#"{"featureFlags": {"a": true, "b": "variant-b", "c": false}, "featureFlagPayloads": {"a": "{\"x\": 1}"}}"#),
        ),
        (500, None),
    ]);
    h.init(json!({})).await;
    let body = json!({
        "distinct_id": "user_1",
        "person_properties": {"plan": "pro"},
        "groups": {"company": "acme"},
        "group_properties": {"company": {"plan": "enterprise"}},
        "only_evaluate_locally": false,
    });
    let result = h.call(Method::POST, "/get_all_flags", Some(&body)).await;
    assert_eq!(
        result,
        json!({"success": true, "value": {"a": true, "b": "variant-b", "c": false}})
    );
    let r = h.recordings();
    assert_flags_request_count(&r, 1);
    assert_flags_request_field(&r, "distinct_id", json!("user_1"));
    assert_flags_request_field(&r, "person_properties.plan", json!("pro"));
    assert_flags_request_field(&r, "groups.company", json!("acme"));
    assert_flags_request_field(&r, "group_properties.company.plan", json!("enterprise"));
    let flags_body = r[0].json().expect("JSON");
    assert!(
        flags_body.get("flag_keys_to_evaluate").is_none(),
        "every flag is asked for: {flags_body}"
    );

    // An error answers no flags; all-flags lookups report no events.
    let result = h
        .call(
            Method::POST,
            "/get_all_flags",
            Some(&json!({"distinct_id": "user_1"})),
        )
        .await;
    assert_eq!(
        result,
        json!({"success": true, "value": {}, "error": "api_error_500"})
    );
    h.flush().await;
    let r = h.recordings();
    assert_flags_request_count(&r, 2);
    assert_eq!(r.len(), 2, "recorded: {:?}", paths(&r));

    // Local only: no request, nothing decided.
    let result = h
        .call(
            Method::POST,
            "/get_all_flags",
            Some(&json!({"distinct_id": "user_1", "only_evaluate_locally": true})),
        )
        .await;
    assert_eq!(result["success"], false, "{result}");
    assert_eq!(result["value"], json!({}), "{result}");
    assert_eq!(h.recordings().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adapter_parallel_flags_carry_the_test_id() {
    let h = start().await;
    let a = h.with_test_id("t-6a1f0e52-1c2d-4e3f-8a9b-0c1d2e3f4a5b");
    let b = h.with_test_id("t-9b8c7d6e-5f4a-4b3c-9d2e-1f0a9b8c7d6e");
    a.reset().await;
    b.reset().await;
    a.init(json!({"api_key": "phc_a"})).await;
    b.init(json!({"api_key": "phc_b"})).await;
    h.init(json!({"api_key": "phc_global"})).await;

    let lookup = |s: Harness, user: &'static str| async move {
        s.gff(json!({"key": "any-flag", "distinct_id": user, "force_remote": true}))
            .await
    };
    let (ra, rb, rg) = tokio::join!(
        lookup(a.clone(), "user_a"),
        lookup(b.clone(), "user_b"),
        lookup(h.clone(), "user_g"),
    );
    for result in [ra, rb, rg] {
        assert_eq!(result["success"], true, "{result}");
    }

    let r = h.recordings();
    assert_flags_request_count(&r, 3);
    for (session, user, key) in [
        (&a, "user_a", "phc_a"),
        (&b, "user_b", "phc_b"),
        (&h, "user_g", "phc_global"),
    ] {
        let mine: Vec<&RecordedRequest> = r
            .iter()
            .filter(|req| req.header("x-test-id") == session.test_id.as_deref())
            .collect();
        let flags: Vec<&&RecordedRequest> = mine.iter().filter(|req| is_flags(req)).collect();
        assert_eq!(flags.len(), 1, "/flags requests of {user}: {:?}", paths(&r));
        let body = flags[0].json().expect("JSON");
        assert_eq!(body["distinct_id"], user);
        assert_eq!(body["token"], key);
        // The lookup's `$feature_flag_called` went out with the same test id.
        let events: Vec<Value> = mine
            .iter()
            .filter(|req| !is_flags(req))
            .flat_map(|req| events_of(req))
            .collect();
        assert_eq!(events.len(), 1, "events of {user}: {events:?}");
        assert_eq!(events[0]["event"], "$feature_flag_called");
        assert_eq!(events[0]["distinct_id"], user);
    }
}

// On tokio's paused clock: the 500 ms answer, the 300 ms backoff and the 500 ms watch after
// the lookup cost no real time, and a retry due within them would be recorded before they end.
#[tokio::test(start_paused = true)]
async fn adapter_reset_stops_a_pending_flags_retry() {
    let h = begin().await;
    // The 502 is answered 500 ms after it arrives; the retry would follow 300 ms later.
    h.mock().enqueue(
        "/flags",
        scripted(502, None).delay(Duration::from_millis(500)),
    );
    h.init(json!({})).await;
    let lookup = {
        let h = h.clone();
        tokio::spawn(async move { h.gff(any_flag()).await })
    };
    h.mock()
        .wait_for_requests("/flags", 1, Duration::from_secs(5))
        .await
        .expect("the first attempt");
    // The harness's reset: the mock is cleared, then the adapter reset.
    h.reset().await;
    let result = lookup.await.expect("the lookup ends");
    assert_eq!(result["success"], true, "{result}");
    assert_eq!(result["value"], Value::Null, "{result}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let r = h.recordings();
    assert!(r.is_empty(), "recorded after the reset: {:?}", paths(&r));
}

// ===== our local-evaluation extensions =====

/// The personal API key the local-evaluation tests give `/init`.
const PERSONAL_KEY: &str = "phx_personal_secret";

/// Definitions as `/flags/definitions` serves them: `everyone` (on for all, with a payload),
/// `pro-only` (needs the `plan` person property: inconclusive without it) and `continuity`
/// (experience continuity: never decided locally).
fn definitions() -> Value {
    json!({
        "flags": [
            {"id": 11, "key": "everyone", "active": true,
             "filters": {"groups": [{"properties": [], "rollout_percentage": 100}],
                         "payloads": {"true": "{\"color\": \"blue\"}"}}},
            {"id": 12, "key": "pro-only", "active": true,
             "filters": {"groups": [{"properties": [
                 {"key": "plan", "value": "pro", "operator": "exact", "type": "person"}],
                 "rollout_percentage": 100}]}},
            {"id": 13, "key": "continuity", "active": true, "ensure_experience_continuity": true,
             "filters": {"groups": [{"properties": [], "rollout_percentage": 100}]}}
        ],
        "group_type_mapping": {},
        "cohorts": {}
    })
}

/// A fresh mock (serving [`definitions`]) and adapter, reset as the harness does.
async fn begin_local() -> Harness {
    let h = begin().await;
    h.mock()
        .set_default("/flags/definitions", MockResponse::json(200, definitions()));
    h
}

/// `/init` with the personal API key (plus `extra`); the definitions are loaded when it answers.
async fn init_local(h: &Harness, extra: Value) {
    let mut body = json!({"personal_api_key": PERSONAL_KEY});
    if let (Some(body), Value::Object(extra)) = (body.as_object_mut(), extra) {
        body.extend(extra);
    }
    let answer = h.init(body).await;
    assert_eq!(
        answer,
        json!({"success": true, "flag_definitions_loaded": true})
    );
}

/// The `/flags` requests proper (not `/flags/definitions`, which [`is_flags`] also matches).
fn remote_flags_requests(h: &Harness) -> Vec<RecordedRequest> {
    h.mock().requests_to("/flags")
}

fn definitions_requests(h: &Harness) -> Vec<RecordedRequest> {
    h.mock().requests_to("/flags/definitions")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adapter_local_init_loads_definitions_with_the_personal_key() {
    let h = begin_local().await;
    init_local(&h, json!({})).await;
    let requests = definitions_requests(&h);
    assert_eq!(requests.len(), 1, "one load before /init answered");
    let first = &requests[0];
    assert_eq!(first.method, Method::GET);
    assert_eq!(
        first.header("authorization"),
        Some(format!("Bearer {PERSONAL_KEY}").as_str())
    );
    let query = first.query.as_deref().unwrap_or_default();
    assert!(
        query.split('&').any(|pair| pair == "token=phc_test_key"),
        "query {query:?}"
    );
    assert!(first.header("x-test-id").is_none());
    // Loading definitions is not a lookup: no /flags request, no event.
    assert!(remote_flags_requests(&h).is_empty());
    assert_eq!(h.recordings().len(), 1, "{:?}", paths(&h.recordings()));

    // In parallel mode the definitions requests carry the test id like every other request.
    let t = h.with_test_id("t-3c2b1a09-8f7e-4d6c-9b5a-4f3e2d1c0b9a");
    t.reset().await;
    init_local(&t, json!({"api_key": "phc_t"})).await;
    let requests = definitions_requests(&h);
    assert_eq!(requests.len(), 1);
    assert_eq!(
        requests[0].header("x-test-id"),
        Some("t-3c2b1a09-8f7e-4d6c-9b5a-4f3e2d1c0b9a")
    );
    assert!(requests[0]
        .query
        .as_deref()
        .unwrap_or_default()
        .contains("token=phc_t"));

    // Definitions the mock does not serve (like the harness's mock, which answers 404): /init
    // still succeeds, says so, and lookups go to /flags.
    let h = begin().await;
    h.mock().set_default(
        "/flags/definitions",
        MockResponse::json(404, json!({"error": "not found"})),
    );
    let answer = h.init(json!({"personal_api_key": PERSONAL_KEY})).await;
    assert_eq!(
        answer,
        json!({"success": true, "flag_definitions_loaded": false})
    );
    let result = h
        .gff(json!({"key": "everyone", "distinct_id": "user_1"}))
        .await;
    assert_eq!(result["locally_evaluated"], false, "{result}");
    assert_eq!(remote_flags_requests(&h).len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adapter_local_lookups_make_no_flags_request() {
    let h = begin_local().await;
    init_local(&h, json!({})).await;
    let result = h
        .gff(json!({"key": "everyone", "distinct_id": "user_1"}))
        .await;
    assert_eq!(
        result,
        json!({
            "success": true,
            "value": true,
            "payload": {"color": "blue"},
            "locally_evaluated": true,
        })
    );
    let result = h
        .gff(json!({
            "key": "pro-only",
            "distinct_id": "user_2",
            "person_properties": {"plan": "pro"},
            "force_remote": false,
        }))
        .await;
    assert_eq!(result["value"], true, "{result}");
    assert_eq!(result["locally_evaluated"], true, "{result}");
    let result = h
        .gff(json!({
            "key": "pro-only",
            "distinct_id": "user_3",
            "person_properties": {"plan": "free"},
        }))
        .await;
    assert_eq!(result["value"], false, "{result}");
    assert_eq!(result["payload"], Value::Null, "{result}");
    assert_eq!(result["locally_evaluated"], true, "{result}");

    assert!(remote_flags_requests(&h).is_empty(), "no /flags request");
    // Each lookup's `$feature_flag_called` was delivered before its answer, marked local.
    let r = h.recordings();
    assert_event_count_with_name(&r, "$feature_flag_called", 3);
    assert_event_property_in_named_event(
        &r,
        "$feature_flag_called",
        "locally_evaluated",
        json!(true),
    );
    assert_event_property_in_named_event(
        &r,
        "$feature_flag_called",
        "$feature_flag_reason",
        json!("Evaluated locally"),
    );
    // The personal key never leaves the definitions endpoint.
    for request in &r {
        if request.path != "/flags/definitions" {
            assert!(
                request.header("authorization").is_none(),
                "{}",
                request.path
            );
            assert!(!String::from_utf8_lossy(&request.body).contains(PERSONAL_KEY));
        }
    }

    // What local evaluation cannot decide still goes to /flags, for that key only.
    h.queue([(200, Some(r#"{"featureFlags": {"continuity": "v2"}}"#))]);
    let result = h
        .gff(json!({"key": "continuity", "distinct_id": "user_1"}))
        .await;
    assert_eq!(result["value"], "v2", "{result}");
    assert_eq!(result["locally_evaluated"], false, "{result}");
    let remote = remote_flags_requests(&h);
    assert_eq!(remote.len(), 1);
    let body = remote[0].json().expect("JSON");
    assert_eq!(body["flag_keys_to_evaluate"], json!(["continuity"]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adapter_local_only_evaluate_locally_inconclusive_is_null() {
    let h = begin_local().await;
    init_local(&h, json!({})).await;
    for (key, person_properties) in [
        // `plan` missing: inconclusive.
        ("pro-only", json!({})),
        // Never decided locally.
        ("continuity", json!({"plan": "pro"})),
        // Unknown to the definitions.
        ("no-such-flag", json!({})),
    ] {
        let result = h
            .gff(json!({
                "key": key,
                "distinct_id": "user_1",
                "person_properties": person_properties,
                "only_evaluate_locally": true,
            }))
            .await;
        assert_eq!(
            result,
            json!({
                "success": true,
                "value": null,
                "payload": null,
                "locally_evaluated": false,
                "error": "inconclusive",
            }),
            "{key}"
        );
    }
    // What local evaluation decides is answered as usual.
    let result = h
        .gff(json!({
            "key": "pro-only",
            "distinct_id": "user_1",
            "person_properties": {"plan": "pro"},
            "only_evaluate_locally": true,
        }))
        .await;
    assert_eq!(result["value"], true, "{result}");
    assert_eq!(result["locally_evaluated"], true, "{result}");
    assert!(
        remote_flags_requests(&h).is_empty(),
        "recorded: {:?}",
        paths(&h.recordings())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adapter_local_get_all_flags() {
    let h = begin_local().await;
    init_local(&h, json!({})).await;
    // Only locally: `pro-only` (no `plan`) and `continuity` are left out, nothing is asked.
    let result = h
        .call(
            Method::POST,
            "/get_all_flags",
            Some(&json!({
                "distinct_id": "user_1",
                "person_properties": {},
                "groups": {},
                "group_properties": {},
                "only_evaluate_locally": true,
            })),
        )
        .await;
    assert_eq!(
        result,
        json!({"success": true, "value": {"everyone": true}})
    );
    let result = h
        .call(
            Method::POST,
            "/get_all_flags",
            Some(&json!({
                "distinct_id": "user_1",
                "person_properties": {"plan": "free"},
                "only_evaluate_locally": true,
            })),
        )
        .await;
    assert_eq!(
        result,
        json!({"success": true, "value": {"everyone": true, "pro-only": false}})
    );
    assert!(remote_flags_requests(&h).is_empty());

    // Otherwise one /flags request for what is undecided, merged with the local answers.
    h.queue([(200, Some(r#"{"featureFlags": {"continuity": true}}"#))]);
    let result = h
        .call(
            Method::POST,
            "/get_all_flags",
            Some(&json!({"distinct_id": "user_1", "person_properties": {"plan": "pro"}})),
        )
        .await;
    assert_eq!(
        result,
        json!({"success": true, "value": {"everyone": true, "pro-only": true, "continuity": true}})
    );
    let remote = remote_flags_requests(&h);
    assert_eq!(remote.len(), 1);
    assert_eq!(
        remote[0].json().expect("JSON")["flag_keys_to_evaluate"],
        json!(["continuity"])
    );
    // All-flags lookups report no events.
    h.flush().await;
    assert_event_count_with_name(&h.recordings(), "$feature_flag_called", 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adapter_local_force_remote_bypasses_local_evaluation() {
    let h = begin_local().await;
    init_local(&h, json!({})).await;
    // Locally `everyone` is on; PostHog says otherwise.
    h.queue([(200, Some(r#"{"featureFlags": {"everyone": false}}"#))]);
    let result = h
        .gff(json!({"key": "everyone", "distinct_id": "user_1", "force_remote": true}))
        .await;
    assert_eq!(
        result,
        json!({
            "success": true,
            "value": false,
            "payload": null,
            "locally_evaluated": false,
        })
    );
    let remote = remote_flags_requests(&h);
    assert_eq!(remote.len(), 1, "a fresh /flags request");
    assert!(remote[0].header("authorization").is_none());
    let body = remote[0].json().expect("JSON");
    assert_eq!(body["token"], "phc_test_key");
    assert_eq!(body["flag_keys_to_evaluate"], json!(["everyone"]));
    // Its `$feature_flag_called` was delivered before the answer, as a remote one.
    let r = h.recordings();
    assert_event_count_with_name(&r, "$feature_flag_called", 1);
    assert_event_property_in_named_event(
        &r,
        "$feature_flag_called",
        "$feature_flag_response",
        json!(false),
    );
    let events = captured_events(&r);
    assert_ne!(
        events[0]["properties"]["locally_evaluated"], true,
        "{events:?}"
    );

    // The next lookup without force_remote is local again.
    let result = h
        .gff(json!({"key": "everyone", "distinct_id": "user_1"}))
        .await;
    assert_eq!(result["value"], true, "{result}");
    assert_eq!(result["locally_evaluated"], true, "{result}");
    assert_eq!(remote_flags_requests(&h).len(), 1);
    // /state counts both clients' events.
    let state = h.call(Method::GET, "/state", None).await;
    assert_eq!(state["total_events_captured"], 2, "{state}");
    assert_eq!(state["total_events_sent"], 2, "{state}");
    assert_eq!(state["pending_events"], 0, "{state}");
}

// On tokio's paused clock, which the poller runs on: the waits below cost no real time, every
// poll due within them happens, and the count of polls is exact.
#[tokio::test(start_paused = true)]
async fn adapter_local_reset_stops_the_poller() {
    let h = begin_local().await;
    init_local(&h, json!({"poll_interval_ms": 100})).await;
    h.mock()
        .wait_for_requests("/flags/definitions", 3, Duration::from_secs(5))
        .await
        .expect("polled every 100 ms");
    h.reset().await;
    // A fetch already on its way when the reset came may still arrive.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let polled = definitions_requests(&h).len();
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        definitions_requests(&h).len(),
        polled,
        "no definitions request after /reset"
    );

    // A new /init replaces the client: only the new one polls.
    init_local(&h, json!({"poll_interval_ms": 100})).await;
    init_local(&h, json!({"poll_interval_ms": 100})).await;
    h.mock().clear();
    // The new client's first load ended just now. A poller waits 100 ms plus up to 10 % jitter
    // between fetches, so its n-th poll from here comes between 100·n and 110·n ms: within
    // 575 ms exactly 5 (the 5th before 550 ms, the 6th at 600 ms or later). Two pollers would
    // make 10.
    tokio::time::sleep(Duration::from_millis(575)).await;
    let count = definitions_requests(&h).len();
    assert_eq!(count, 5, "one poller at 100 ms for 575 ms, not two");
    h.reset().await;
}
