//! Remote feature flags over real HTTP to `MockPostHog`: the `POST /flags/?v=4` request, the
//! retry policy, errors and `$feature_flag_error`, the `$feature_flag_called` event (its
//! properties, deduplication and minimization), payload decoding, snapshots
//! (`evaluate_flags`), the bulk getters, request coalescing, the fallback cache and a disabled
//! client.

use std::collections::BTreeSet;
use std::time::Duration;

use posthog_tower::flags::{FlagError, FlagValue, FlagsRequest};
use posthog_tower::testing::{MockPostHog, MockResponse, RecordedRequest};
use posthog_tower::{Event, PostHog, PostHogBuilder, VERSION};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::time::Instant;

// ===== helpers =====

/// The project key every client here uses.
const KEY: &str = "phc_flags_test";

async fn start_mock() -> MockPostHog {
    MockPostHog::start()
        .await
        .expect("the mock binds a port of 127.0.0.1")
}

/// A builder pointed at `mock`.
fn builder(mock: &MockPostHog) -> PostHogBuilder {
    PostHog::builder(KEY).host(mock.url())
}

fn client(mock: &MockPostHog) -> PostHog {
    builder(mock).build().expect("client builds")
}

/// A 200 `/flags` answer with this body.
fn ok(body: Value) -> MockResponse {
    MockResponse::json(200, body)
}

/// A v2 body with these flags, a request id and an evaluation time.
fn v2(flags: Value) -> Value {
    json!({
        "flags": flags,
        "errorsWhileComputingFlags": false,
        "requestId": "req-1",
        "evaluatedAt": 1_640_995_200_000_i64,
    })
}

/// A boolean flag as the server sends it.
fn on(key: &str) -> Value {
    json!({"key": key, "enabled": true, "variant": null})
}

fn off(key: &str) -> Value {
    json!({"key": key, "enabled": false, "variant": null})
}

/// A multivariate flag with every detail the server can send.
fn rich_variant(key: &str, variant: &str, payload: &str, has_experiment: Option<bool>) -> Value {
    let mut metadata = json!({
        "id": 23,
        "version": 42,
        "payload": payload,
        "description": "the checkout experiment",
    });
    if let Some(h) = has_experiment {
        metadata["has_experiment"] = json!(h);
    }
    json!({
        "key": key,
        "enabled": true,
        "variant": variant,
        "reason": {
            "code": "condition_match",
            "condition_index": 0,
            "description": "Matched condition set 1"
        },
        "metadata": metadata,
    })
}

/// A flag that is on with this payload text.
fn with_payload(key: &str, enabled: bool, payload: &str) -> Value {
    json!({"key": key, "enabled": enabled, "variant": null, "metadata": {"id": 1, "version": 1, "payload": payload}})
}

fn flags_requests(mock: &MockPostHog) -> Vec<RecordedRequest> {
    mock.requests_to("/flags")
}

/// The JSON body of a request (panics with the raw body when it is not JSON).
fn body_of(req: &RecordedRequest) -> Value {
    req.json().unwrap_or_else(|| {
        panic!(
            "request body is not JSON: {:?}",
            String::from_utf8_lossy(&req.body)
        )
    })
}

/// Flushes, then returns the `$feature_flag_called` events that reached `/batch/`.
async fn called_events(ph: &PostHog, mock: &MockPostHog) -> Vec<Value> {
    ph.flush().await;
    mock.events()
        .into_iter()
        .filter(|e| e["event"] == "$feature_flag_called")
        .collect()
}

/// The property names of an event.
fn prop_keys(event: &Value) -> BTreeSet<String> {
    event["properties"]
        .as_object()
        .unwrap_or_else(|| panic!("event without properties: {event}"))
        .keys()
        .cloned()
        .collect()
}

fn set(keys: &[&str]) -> BTreeSet<String> {
    keys.iter().map(|k| (*k).to_owned()).collect()
}

/// `set(keys)` plus the system properties every event carries, minimal ones included:
/// `$is_server`, `$os`, and `$os_version` where the machine's is known (Linux here).
fn with_system(keys: &[&str]) -> BTreeSet<String> {
    let mut keys = set(keys);
    keys.extend(["$is_server".to_owned(), "$os".to_owned()]);
    if cfg!(target_os = "linux") {
        keys.insert("$os_version".to_owned());
    }
    keys
}

/// The `$feature_flag_error` of an event, if any.
fn flag_error(event: &Value) -> Option<&str> {
    event["properties"]["$feature_flag_error"].as_str()
}

/// The time between two recorded requests, on tokio's (paused) clock.
fn gap(a: &RecordedRequest, b: &RecordedRequest) -> Duration {
    b.received_at.duration_since(a.received_at)
}

// ===== the request =====

#[tokio::test(start_paused = true)]
async fn single_flag_request_fields_and_headers() {
    let mock = start_mock().await;
    mock.enqueue("/flags/", ok(v2(json!({"beta": on("beta")}))));
    let ph = client(&mock);

    let request = FlagsRequest::new("user-1")
        .person_property("plan", "pro")
        .group("company", "acme")
        .group_property("company", "employees", 40)
        .group_property("team", "ignored", true)
        .device_id("device-9");
    let value = ph.get_feature_flag("beta", request).await;
    assert_eq!(value, Ok(FlagValue::Bool(true)));

    let reqs = flags_requests(&mock);
    assert_eq!(reqs.len(), 1);
    let req = &reqs[0];
    assert_eq!(req.method, http::Method::POST);
    assert_eq!(req.path, "/flags/", "the /flags endpoint, not /decide");
    assert_eq!(req.query.as_deref(), Some("v=4"));
    assert!(mock.requests_to("/decide").is_empty());
    assert_eq!(req.header("content-type"), Some("application/json"));
    let user_agent = format!("posthog-tower/{VERSION}");
    assert_eq!(req.header("user-agent"), Some(user_agent.as_str()));
    assert!(
        req.headers.get("authorization").is_none(),
        "the token goes in the body, never in Authorization"
    );
    assert!(!req.gzip, "flags requests are not compressed");

    let body = body_of(req);
    let sent_at = body["sent_at"]
        .as_str()
        .unwrap_or_else(|| panic!("sent_at missing or not a string: {body}"));
    assert!(sent_at.ends_with('Z'), "sent_at is UTC: {sent_at}");
    assert_eq!(
        body,
        json!({
            "token": KEY,
            "api_key": KEY,
            "distinct_id": "user-1",
            "groups": {"company": "acme"},
            "person_properties": {"plan": "pro"},
            "group_properties": {"company": {"employees": 40, "$group_key": "acme"}},
            "geoip_disable": true,
            "device_id": "device-9",
            "flag_keys_to_evaluate": ["beta"],
            "sent_at": sent_at,
        }),
        "group types that were not passed are dropped"
    );
}

#[tokio::test(start_paused = true)]
async fn minimal_request_has_empty_maps_and_no_optional_fields() {
    let mock = start_mock().await;
    let ph = client(&mock);

    let all = ph.get_all_flags("user-2").await;
    assert_eq!(all, Ok(Default::default()));

    let reqs = flags_requests(&mock);
    assert_eq!(reqs.len(), 1);
    let body = body_of(&reqs[0]);
    assert_eq!(body["token"], KEY);
    assert_eq!(body["api_key"], KEY);
    assert_eq!(body["distinct_id"], "user-2");
    assert_eq!(body["groups"], json!({}), "groups is {{}} when none");
    assert_eq!(body["person_properties"], json!({}));
    assert_eq!(body["group_properties"], json!({}));
    assert_eq!(body["geoip_disable"], true, "geoip is disabled by default");
    assert!(body.get("device_id").is_none(), "device_id only when set");
    assert!(
        body.get("flag_keys_to_evaluate").is_none(),
        "no key list when none was given: {body}"
    );
}

#[tokio::test(start_paused = true)]
async fn group_properties_without_groups_are_dropped() {
    let mock = start_mock().await;
    let ph = client(&mock);
    let _ = ph
        .get_all_flags(FlagsRequest::new("u").group_property("company", "size", 5))
        .await;
    let body = body_of(&flags_requests(&mock)[0]);
    assert_eq!(body["groups"], json!({}));
    assert_eq!(body["group_properties"], json!({}));
}

/// Spec: `group_properties[type] = {"$group_key": key, ...caller props}`; the caller's own
/// `$group_key` wins.
#[tokio::test(start_paused = true)]
async fn caller_group_key_property_wins_over_the_injected_one() {
    let mock = start_mock().await;
    let ph = client(&mock);
    let _ = ph
        .get_all_flags(
            FlagsRequest::new("u")
                .group("company", "acme")
                .group_property("company", "$group_key", "acme-override"),
        )
        .await;
    let body = body_of(&flags_requests(&mock)[0]);
    assert_eq!(
        body["group_properties"],
        json!({"company": {"$group_key": "acme-override"}}),
        "caller-supplied properties are merged on top of $group_key"
    );
}

#[tokio::test(start_paused = true)]
async fn geoip_disable_follows_the_client_and_the_request() {
    let mock = start_mock().await;
    let default = client(&mock);
    let geoip_on = builder(&mock).disable_geoip(false).build().unwrap();

    let _ = default.get_all_flags("a").await;
    let _ = geoip_on.get_all_flags("b").await;
    let _ = geoip_on
        .get_all_flags(FlagsRequest::new("c").disable_geoip(true))
        .await;
    let _ = default
        .get_all_flags(FlagsRequest::new("d").disable_geoip(false))
        .await;
    let _ = default
        .get_feature_flag("f", FlagsRequest::new("e").disable_geoip(false))
        .await;

    let sent: Vec<(Value, Value)> = flags_requests(&mock)
        .iter()
        .map(|r| {
            let b = body_of(r);
            (b["distinct_id"].clone(), b["geoip_disable"].clone())
        })
        .collect();
    assert_eq!(
        sent,
        vec![
            (json!("a"), json!(true)),
            (json!("b"), json!(false)),
            (json!("c"), json!(true)),
            (json!("d"), json!(false)),
            (json!("e"), json!(false)),
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn flag_keys_to_evaluate_per_method() {
    let mock = start_mock().await;
    let ph = client(&mock);

    // Single-flag calls ask for exactly their key, whatever keys the request carried.
    let _ = ph.get_feature_flag("one", "u").await;
    let _ = ph.is_feature_enabled("two", "u").await;
    let _ = ph.get_feature_flag_payload("three", "u").await;
    let _ = ph
        .get_feature_flag_result("four", FlagsRequest::new("u").flag_keys(["x", "y"]))
        .await;
    // Bulk calls send the request's keys.
    let _ = ph
        .get_all_flags(FlagsRequest::new("u").flag_keys(["a", "b"]))
        .await;
    let _ = ph
        .get_all_flags_and_payloads(FlagsRequest::new("u").flag_keys(["c"]))
        .await;
    let _ = ph
        .evaluate_flags(FlagsRequest::new("u").flag_keys(["d", "e"]))
        .await;
    // None given: absent.
    let _ = ph.evaluate_flags("u").await;
    let _ = ph.get_all_flags_and_payloads("u").await;

    let keys: Vec<Option<Value>> = flags_requests(&mock)
        .iter()
        .map(|r| body_of(r).get("flag_keys_to_evaluate").cloned())
        .collect();
    assert_eq!(
        keys,
        vec![
            Some(json!(["one"])),
            Some(json!(["two"])),
            Some(json!(["three"])),
            Some(json!(["four"])),
            Some(json!(["a", "b"])),
            Some(json!(["c"])),
            Some(json!(["d", "e"])),
            None,
            None,
        ]
    );
}

// ===== retries =====

#[tokio::test(start_paused = true)]
async fn bad_gateway_and_gateway_timeout_are_retried_once_after_300ms() {
    for status in [502, 504] {
        let mock = start_mock().await;
        mock.enqueue("/flags/", MockResponse::status(status));
        mock.enqueue("/flags/", ok(v2(json!({"f": on("f")}))));
        let ph = client(&mock);

        let value = ph.get_feature_flag("f", "u").await;
        assert_eq!(value, Ok(FlagValue::Bool(true)), "{status}");

        let reqs = flags_requests(&mock);
        assert_eq!(reqs.len(), 2, "{status}: one retry");
        assert_eq!(reqs[0].status, status);
        assert_eq!(reqs[1].status, 200);
        let waited = gap(&reqs[0], &reqs[1]);
        assert!(
            waited >= Duration::from_millis(300) && waited < Duration::from_millis(600),
            "{status}: retried after {waited:?}, expected 0.3 s"
        );
        assert_eq!(
            body_of(&reqs[0])["distinct_id"],
            body_of(&reqs[1])["distinct_id"]
        );
        assert_eq!(
            body_of(&reqs[0])["flag_keys_to_evaluate"],
            body_of(&reqs[1])["flag_keys_to_evaluate"]
        );

        // The retry leaves no trace on the event.
        let events = called_events(&ph, &mock).await;
        assert_eq!(events.len(), 1);
        assert_eq!(flag_error(&events[0]), None, "{status}");
        assert_eq!(events[0]["properties"]["$feature_flag_response"], true);
    }
}

#[tokio::test(start_paused = true)]
async fn other_statuses_are_not_retried() {
    for status in [500, 503, 408, 429, 400, 401] {
        let mock = start_mock().await;
        mock.enqueue("/flags/", MockResponse::status(status));
        mock.enqueue("/flags/", ok(v2(json!({"f": on("f")}))));
        let ph = client(&mock);

        let value = ph.get_feature_flag("f", "u").await;
        assert_eq!(value, Err(FlagError::Status(status)), "{status}");
        assert_eq!(flags_requests(&mock).len(), 1, "{status}: not retried");

        let events = called_events(&ph, &mock).await;
        assert_eq!(events.len(), 1);
        let expected = format!("api_error_{status}");
        assert_eq!(flag_error(&events[0]), Some(expected.as_str()));
        assert_eq!(
            events[0]["properties"]["$feature_flag_response"],
            Value::Null
        );
    }
}

#[tokio::test(start_paused = true)]
async fn retry_delays_double() {
    let mock = start_mock().await;
    mock.enqueue("/flags/", MockResponse::status(502));
    mock.enqueue("/flags/", MockResponse::status(504));
    mock.enqueue("/flags/", ok(v2(json!({"f": on("f")}))));
    let ph = builder(&mock).feature_flags_max_retries(2).build().unwrap();

    assert_eq!(
        ph.get_feature_flag("f", "u").await,
        Ok(FlagValue::Bool(true))
    );
    let reqs = flags_requests(&mock);
    assert_eq!(reqs.len(), 3);
    let first = gap(&reqs[0], &reqs[1]);
    let second = gap(&reqs[1], &reqs[2]);
    assert!(
        first >= Duration::from_millis(300) && first < Duration::from_millis(600),
        "{first:?}"
    );
    assert!(
        second >= Duration::from_millis(600) && second < Duration::from_millis(1200),
        "{second:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn retry_budget_is_bounded() {
    let mock = start_mock().await;
    mock.set_default("/flags/", MockResponse::status(502));
    let ph = client(&mock);
    assert_eq!(
        ph.get_feature_flag("f", "u").await,
        Err(FlagError::Status(502))
    );
    assert_eq!(flags_requests(&mock).len(), 2, "1 retry by default");
    let events = called_events(&ph, &mock).await;
    assert_eq!(flag_error(&events[0]), Some("api_error_502"));
}

#[tokio::test(start_paused = true)]
async fn a_reset_connection_is_retried() {
    let mock = start_mock().await;
    mock.enqueue("/flags/", MockResponse::reset_connection());
    mock.enqueue("/flags/", ok(v2(json!({"f": on("f")}))));
    let ph = client(&mock);

    assert_eq!(
        ph.get_feature_flag("f", "u").await,
        Ok(FlagValue::Bool(true))
    );
    let reqs = flags_requests(&mock);
    assert_eq!(reqs.len(), 2);
    assert!(reqs[0].reset);
    assert!(
        gap(&reqs[0], &reqs[1]) >= Duration::from_millis(300),
        "the retry policy's delay applies"
    );
}

#[tokio::test(start_paused = true)]
async fn a_reset_connection_without_retries_is_a_connection_error() {
    let mock = start_mock().await;
    mock.enqueue("/flags/", MockResponse::reset_connection());
    let ph = builder(&mock).feature_flags_max_retries(0).build().unwrap();

    let result = ph.get_feature_flag("f", "u").await;
    assert!(
        matches!(result, Err(FlagError::Connection(_))),
        "{result:?}"
    );
    assert_eq!(flags_requests(&mock).len(), 1);
    let events = called_events(&ph, &mock).await;
    assert_eq!(events.len(), 1);
    assert_eq!(flag_error(&events[0]), Some("connection_error"));
}

#[tokio::test(start_paused = true)]
async fn a_timeout_is_retried_then_reported() {
    let mock = start_mock().await;
    mock.set_default(
        "/flags/",
        ok(v2(json!({"f": on("f")}))).delay(Duration::from_secs(10)),
    );
    let ph = builder(&mock)
        .feature_flags_request_timeout(Duration::from_secs(1))
        .build()
        .unwrap();

    let started = Instant::now();
    let result = ph.get_feature_flag("f", "u").await;
    let took = started.elapsed();
    assert_eq!(result, Err(FlagError::Timeout));
    let reqs = flags_requests(&mock);
    assert_eq!(reqs.len(), 2, "one retry after the timeout");
    let waited = gap(&reqs[0], &reqs[1]);
    assert!(
        waited >= Duration::from_millis(1300) && waited < Duration::from_millis(1600),
        "timeout (1 s) + delay (0.3 s), got {waited:?}"
    );
    assert!(
        took < Duration::from_secs(10),
        "the client gave up before the mock answered: {took:?}"
    );

    let events = called_events(&ph, &mock).await;
    assert_eq!(events.len(), 1);
    assert_eq!(flag_error(&events[0]), Some("timeout"));
    assert_eq!(
        events[0]["properties"]["$feature_flag_response"],
        Value::Null
    );
}

#[tokio::test(start_paused = true)]
async fn a_slow_answer_within_the_timeout_is_used() {
    let mock = start_mock().await;
    mock.enqueue(
        "/flags/",
        ok(v2(json!({"f": on("f")}))).delay(Duration::from_millis(2900)),
    );
    let ph = client(&mock);
    assert_eq!(
        ph.get_feature_flag("f", "u").await,
        Ok(FlagValue::Bool(true)),
        "the default timeout is 3 s"
    );
    assert_eq!(flags_requests(&mock).len(), 1);
}

#[tokio::test(start_paused = true)]
async fn zero_max_retries_disables_retries() {
    let mock = start_mock().await;
    mock.enqueue("/flags/", MockResponse::status(502));
    mock.enqueue("/flags/", ok(v2(json!({"f": on("f")}))));
    let ph = builder(&mock).feature_flags_max_retries(0).build().unwrap();
    assert_eq!(
        ph.get_feature_flag("f", "u").await,
        Err(FlagError::Status(502))
    );
    assert_eq!(flags_requests(&mock).len(), 1);

    // A timeout is not retried either.
    let mock = start_mock().await;
    mock.set_default(
        "/flags/",
        ok(v2(json!({"f": on("f")}))).delay(Duration::from_secs(10)),
    );
    let ph = builder(&mock)
        .feature_flags_max_retries(0)
        .feature_flags_request_timeout(Duration::from_secs(1))
        .build()
        .unwrap();
    assert_eq!(ph.get_feature_flag("f", "v").await, Err(FlagError::Timeout));
    assert_eq!(flags_requests(&mock).len(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_refused_connection_fails_at_once() {
    // A port nobody listens on.
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let ph = PostHog::builder(KEY)
        .host(format!("http://127.0.0.1:{port}"))
        .send_feature_flag_events(false)
        .build()
        .unwrap();
    let started = Instant::now();
    let result = ph.get_feature_flag("f", "u").await;
    assert!(
        matches!(result, Err(FlagError::Connection(_))),
        "{result:?}"
    );
    assert!(
        started.elapsed() < Duration::from_millis(300),
        "a refused connection is not retried (no 0.3 s back-off): {:?}",
        started.elapsed()
    );
}

// ===== errors and $feature_flag_error =====

#[tokio::test(start_paused = true)]
async fn quota_limited_is_an_error_and_not_retried() {
    let mock = start_mock().await;
    mock.set_default(
        "/flags/",
        ok(json!({
            "flags": {"f": on("f")},
            "errorsWhileComputingFlags": false,
            "quotaLimited": ["feature_flags"],
            "requestId": "req-q",
        })),
    );
    let ph = client(&mock);

    assert_eq!(
        ph.get_feature_flag("f", "u").await,
        Err(FlagError::QuotaLimited),
        "flags in a quota-limited body are ignored"
    );
    assert_eq!(flags_requests(&mock).len(), 1, "not retried");
    let events = called_events(&ph, &mock).await;
    assert_eq!(events.len(), 1);
    assert_eq!(flag_error(&events[0]), Some("quota_limited"));
    assert_eq!(
        events[0]["properties"]["$feature_flag_response"],
        Value::Null
    );

    assert_eq!(
        ph.get_all_flags("u").await,
        Err(FlagError::QuotaLimited),
        "bulk calls too"
    );
    // Another resource being limited is not a flags quota limit.
    mock.enqueue(
        "/flags/",
        ok(json!({"flags": {"f": on("f")}, "quotaLimited": ["recordings"]})),
    );
    assert_eq!(
        ph.get_feature_flag("f", "w").await,
        Ok(FlagValue::Bool(true))
    );
}

#[tokio::test(start_paused = true)]
async fn errors_while_computing_with_the_flag_present() {
    let mock = start_mock().await;
    mock.enqueue(
        "/flags/",
        ok(json!({
            "flags": {"f": {"key": "f", "enabled": true, "variant": "blue"}},
            "errorsWhileComputingFlags": true,
        })),
    );
    let ph = client(&mock);
    assert_eq!(
        ph.get_feature_flag("f", "u").await,
        Ok(FlagValue::Variant("blue".into()))
    );
    let events = called_events(&ph, &mock).await;
    assert_eq!(events.len(), 1);
    assert_eq!(flag_error(&events[0]), Some("errors_while_computing_flags"));
    assert_eq!(events[0]["properties"]["$feature_flag_response"], "blue");
}

#[tokio::test(start_paused = true)]
async fn missing_flag() {
    let mock = start_mock().await;
    mock.enqueue("/flags/", ok(v2(json!({"other": on("other")}))));
    mock.enqueue(
        "/flags/",
        ok(json!({"flags": {}, "errorsWhileComputingFlags": true})),
    );
    let ph = client(&mock);

    assert_eq!(
        ph.get_feature_flag("nope", "u").await,
        Err(FlagError::Missing)
    );
    assert_eq!(
        ph.get_feature_flag("nope", "v").await,
        Err(FlagError::Missing)
    );

    let events = called_events(&ph, &mock).await;
    assert_eq!(events.len(), 2);
    let u = events.iter().find(|e| e["distinct_id"] == "u").unwrap();
    let v = events.iter().find(|e| e["distinct_id"] == "v").unwrap();
    assert_eq!(flag_error(u), Some("flag_missing"));
    assert_eq!(u["properties"]["$feature_flag"], "nope");
    assert_eq!(u["properties"]["$feature_flag_response"], Value::Null);
    assert_eq!(u["properties"]["$feature/nope"], Value::Null);
    assert_eq!(u["properties"]["locally_evaluated"], false);
    assert_eq!(u["properties"]["$feature_flag_request_id"], "req-1");
    assert_eq!(
        flag_error(v),
        Some("errors_while_computing_flags,flag_missing")
    );
}

#[tokio::test(start_paused = true)]
async fn a_disabled_flag_is_a_value_not_an_error() {
    let mock = start_mock().await;
    mock.set_default("/flags/", ok(v2(json!({"f": off("f")}))));
    let ph = client(&mock);
    assert_eq!(
        ph.get_feature_flag("f", "u").await,
        Ok(FlagValue::Bool(false))
    );
    assert_eq!(ph.is_feature_enabled("f", "v").await, Ok(false));
    let events = called_events(&ph, &mock).await;
    assert_eq!(events.len(), 2);
    assert!(events.iter().all(|e| flag_error(e).is_none()));
    assert!(events
        .iter()
        .all(|e| e["properties"]["$feature_flag_response"] == false));
}

#[tokio::test(start_paused = true)]
async fn api_error_reports_its_status() {
    let mock = start_mock().await;
    mock.enqueue(
        "/flags/",
        MockResponse::json(500, json!({"detail": "boom"})),
    );
    let ph = client(&mock);
    assert_eq!(
        ph.get_feature_flag_result("f", "u").await,
        Err(FlagError::Status(500))
    );
    let events = called_events(&ph, &mock).await;
    assert_eq!(flag_error(&events[0]), Some("api_error_500"));
}

#[tokio::test(start_paused = true)]
async fn malformed_bodies_are_invalid_responses_never_panics() {
    let bodies: [&'static [u8]; 6] = [
        b"{\"flags\": {",
        b"not json at all",
        b"",
        b"[1, 2]",
        b"{\"flags\": 3}",
        b"{\"featureFlags\": {\"a\": [1]}}",
    ];
    for body in bodies {
        let mock = start_mock().await;
        mock.enqueue(
            "/flags/",
            MockResponse::status(200)
                .with_raw_body(body)
                .with_header("content-type", "application/json"),
        );
        let ph = client(&mock);
        let shown = String::from_utf8_lossy(body);
        let result = ph.get_feature_flag("f", "u").await;
        assert!(
            matches!(result, Err(FlagError::InvalidResponse(_))),
            "{shown}: {result:?}"
        );
        assert_eq!(flags_requests(&mock).len(), 1, "{shown}: not retried");
        let events = called_events(&ph, &mock).await;
        assert_eq!(events.len(), 1, "{shown}");
        assert_eq!(flag_error(&events[0]), Some("unknown_error"), "{shown}");
    }

    // The other entry points too.
    let mock = start_mock().await;
    mock.set_default("/flags/", MockResponse::status(200).with_raw_body("{"));
    let ph = client(&mock);
    assert!(matches!(
        ph.get_all_flags_and_payloads("u").await,
        Err(FlagError::InvalidResponse(_))
    ));
    let snapshot = ph.evaluate_flags("u").await;
    assert!(snapshot.is_empty());
    assert!(matches!(
        snapshot.error(),
        Some(FlagError::InvalidResponse(_))
    ));
}

#[tokio::test(start_paused = true)]
async fn legacy_v1_response_is_understood() {
    let mock = start_mock().await;
    mock.set_default(
        "/flags/",
        ok(json!({
            "featureFlags": {"a": true, "b": "variant-x", "c": false},
            "featureFlagPayloads": {"a": "{\"k\": 1}", "b": "\"hello\""},
            "errorsWhileComputingFlags": false,
            "minimalFlagCalledEvents": true,
        })),
    );
    let ph = client(&mock);

    let b = ph.get_feature_flag_result("b", "u").await.unwrap();
    assert_eq!(b.record.value, FlagValue::Variant("variant-x".into()));
    assert_eq!(b.record.payload, Some(json!("hello")));
    assert_eq!(
        ph.get_feature_flag("a", "u").await,
        Ok(FlagValue::Bool(true))
    );
    assert_eq!(
        ph.get_feature_flag("c", "u").await,
        Ok(FlagValue::Bool(false))
    );
    assert_eq!(
        ph.get_feature_flag_payload("a", "u").await,
        Ok(Some(json!({"k": 1})))
    );
    assert_eq!(ph.get_feature_flag("z", "u").await, Err(FlagError::Missing));

    let all = ph.get_all_flags_and_payloads("u").await.unwrap();
    assert_eq!(all.flags.len(), 3);
    assert_eq!(all.payloads.get("a"), Some(&json!({"k": 1})));

    // Legacy metadata knows nothing about experiments: never minimized.
    let events = called_events(&ph, &mock).await;
    let b_event = events
        .iter()
        .find(|e| e["properties"]["$feature_flag"] == "b")
        .unwrap();
    assert_eq!(b_event["properties"]["$feature/b"], "variant-x");
    assert_eq!(b_event["properties"]["$feature_flag_payload"], "hello");
}

/// Spec §2: "treat a missing or non-bool `enabled` as `false`".
#[tokio::test(start_paused = true)]
async fn missing_or_null_enabled_is_false() {
    let mock = start_mock().await;
    mock.set_default(
        "/flags/",
        ok(json!({
            "flags": {
                "no-enabled": {"key": "no-enabled"},
                "null-enabled": {"key": "null-enabled", "enabled": null},
                "fine": on("fine"),
            },
            "errorsWhileComputingFlags": false,
        })),
    );
    let ph = client(&mock);
    let all = ph.get_all_flags("u").await;
    let all = all.unwrap_or_else(|e| panic!("the response is readable: {e:?}"));
    assert_eq!(all.get("no-enabled"), Some(&FlagValue::Bool(false)));
    assert_eq!(all.get("null-enabled"), Some(&FlagValue::Bool(false)));
    assert_eq!(all.get("fine"), Some(&FlagValue::Bool(true)));
}

/// Spec §2: `has_experiment` is "kept only if it is a real bool, otherwise unknown/None".
#[tokio::test(start_paused = true)]
async fn non_bool_has_experiment_is_unknown() {
    let mock = start_mock().await;
    mock.set_default(
        "/flags/",
        ok(json!({
            "flags": {
                "odd": {"key": "odd", "enabled": true,
                        "metadata": {"id": 3, "version": 1, "has_experiment": "yes"}},
            },
            "minimalFlagCalledEvents": true,
        })),
    );
    let ph = client(&mock);
    let result = ph.get_feature_flag_result("odd", "u").await;
    let result = result.unwrap_or_else(|e| panic!("the response is readable: {e:?}"));
    assert_eq!(result.record.value, FlagValue::Bool(true));
    // Unknown means never minimized.
    let events = called_events(&ph, &mock).await;
    assert_eq!(events[0]["properties"]["$feature/odd"], true);
    assert!(events[0]["properties"]
        .get("$feature_flag_has_experiment")
        .is_none());
}

/// Spec §3: `evaluated_at = evaluatedAt` "only if it is an integer"; anything else is ignored.
#[tokio::test(start_paused = true)]
async fn non_integer_evaluated_at_is_ignored() {
    let mock = start_mock().await;
    mock.set_default(
        "/flags/",
        ok(json!({
            "flags": {"f": on("f")},
            "evaluatedAt": "yesterday",
        })),
    );
    let ph = client(&mock);
    let value = ph.get_feature_flag("f", "u").await;
    assert_eq!(value, Ok(FlagValue::Bool(true)));
    let events = called_events(&ph, &mock).await;
    assert!(events[0]["properties"]
        .get("$feature_flag_evaluated_at")
        .is_none());
}

// ===== the $feature_flag_called event =====

#[tokio::test(start_paused = true)]
async fn feature_flag_called_full_property_set() {
    let mock = start_mock().await;
    mock.enqueue(
        "/flags/",
        ok(json!({
            "flags": {"checkout": rich_variant("checkout", "blue", "{\"color\": \"blue\", \"n\": 3}", Some(true))},
            "errorsWhileComputingFlags": false,
            "requestId": "req-789",
            "evaluatedAt": 1_640_995_200_000_i64,
        })),
    );
    let ph = client(&mock);

    let value = ph
        .get_feature_flag(
            "checkout",
            FlagsRequest::new("user-7").group("company", "acme"),
        )
        .await;
    assert_eq!(value, Ok(FlagValue::Variant("blue".into())));

    let events = called_events(&ph, &mock).await;
    assert_eq!(events.len(), 1);
    let e = &events[0];
    assert_eq!(e["event"], "$feature_flag_called");
    assert_eq!(e["distinct_id"], "user-7");
    let p = &e["properties"];
    assert_eq!(p["$feature_flag"], "checkout");
    assert_eq!(p["$feature_flag_response"], "blue");
    assert_eq!(p["locally_evaluated"], false);
    assert_eq!(p["$feature/checkout"], "blue");
    assert_eq!(p["$feature_flag_payload"], json!({"color": "blue", "n": 3}));
    assert_eq!(p["$feature_flag_request_id"], "req-789");
    assert_eq!(p["$feature_flag_evaluated_at"], 1_640_995_200_000_i64);
    assert_eq!(p["$feature_flag_reason"], "Matched condition set 1");
    assert_eq!(p["$feature_flag_id"], 23);
    assert_eq!(p["$feature_flag_version"], 42);
    assert_eq!(p["$feature_flag_has_experiment"], true);
    assert_eq!(p["$groups"], json!({"company": "acme"}));
    assert_eq!(p["$lib"], "posthog-tower");
    assert_eq!(p["$lib_version"], VERSION);
    assert_eq!(p["$geoip_disable"], true);
    assert_eq!(
        prop_keys(e),
        with_system(&[
            "$feature_flag",
            "$feature_flag_response",
            "locally_evaluated",
            "$feature/checkout",
            "$feature_flag_payload",
            "$feature_flag_request_id",
            "$feature_flag_evaluated_at",
            "$feature_flag_reason",
            "$feature_flag_id",
            "$feature_flag_version",
            "$feature_flag_has_experiment",
            "$groups",
            "$lib",
            "$lib_version",
            "$geoip_disable",
        ]),
        "no $feature_flag_error on success, nothing unexpected"
    );
}

#[tokio::test(start_paused = true)]
async fn feature_flag_called_without_details_has_only_the_basics() {
    let mock = start_mock().await;
    mock.enqueue("/flags/", ok(json!({"flags": {"f": on("f")}})));
    let ph = builder(&mock).disable_geoip(false).build().unwrap();
    assert_eq!(
        ph.get_feature_flag("f", "u").await,
        Ok(FlagValue::Bool(true))
    );
    let events = called_events(&ph, &mock).await;
    assert_eq!(
        prop_keys(&events[0]),
        with_system(&[
            "$feature_flag",
            "$feature_flag_response",
            "locally_evaluated",
            "$feature/f",
            "$lib",
            "$lib_version",
        ]),
        "no groups, no payload, no metadata, geoip on: {}",
        events[0]
    );
}

#[tokio::test(start_paused = true)]
async fn is_feature_enabled_and_result_report_too() {
    let mock = start_mock().await;
    mock.set_default("/flags/", ok(v2(json!({"f": on("f")}))));
    let ph = client(&mock);
    assert_eq!(ph.is_feature_enabled("f", "a").await, Ok(true));
    assert!(ph.get_feature_flag_result("f", "b").await.is_ok());
    let events = called_events(&ph, &mock).await;
    let ids: BTreeSet<String> = events
        .iter()
        .map(|e| e["distinct_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids, set(&["a", "b"]));
}

// ===== payloads =====

#[derive(Debug, Deserialize, PartialEq)]
struct Banner {
    title: String,
    discount: u32,
}

#[tokio::test(start_paused = true)]
async fn payloads_are_decoded_and_silent_by_default() {
    let mock = start_mock().await;
    mock.set_default(
        "/flags/",
        ok(v2(json!({
            "banner": with_payload("banner", true, "{\"title\": \"Sale\", \"discount\": 20}"),
            "number": with_payload("number", true, "300"),
            "text": with_payload("text", true, "\"hello\""),
            "list": with_payload("list", true, "[1, 2, 3]"),
            "bare": on("bare"),
        }))),
    );
    let ph = client(&mock);

    assert_eq!(
        ph.get_feature_flag_payload("banner", "u").await,
        Ok(Some(json!({"title": "Sale", "discount": 20})))
    );
    assert_eq!(
        ph.get_feature_flag_payload_as::<Banner>("banner", "u")
            .await,
        Ok(Some(Banner {
            title: "Sale".into(),
            discount: 20
        }))
    );
    assert_eq!(
        ph.get_feature_flag_payload("number", "u").await,
        Ok(Some(json!(300)))
    );
    assert_eq!(
        ph.get_feature_flag_payload("text", "u").await,
        Ok(Some(json!("hello"))),
        "decoded once, not twice"
    );
    assert_eq!(
        ph.get_feature_flag_payload("list", "u").await,
        Ok(Some(json!([1, 2, 3])))
    );
    assert_eq!(ph.get_feature_flag_payload("bare", "u").await, Ok(None));
    assert_eq!(
        ph.get_feature_flag_payload_as::<Banner>("bare", "u").await,
        Ok(None)
    );
    assert_eq!(
        ph.get_feature_flag_payload("missing", "u").await,
        Err(FlagError::Missing)
    );
    // The payload does not fit the type.
    assert!(matches!(
        ph.get_feature_flag_payload_as::<Banner>("number", "u")
            .await,
        Err(FlagError::InvalidPayload(_))
    ));

    assert_eq!(flags_requests(&mock).len(), 9, "one request per call");
    assert!(
        called_events(&ph, &mock).await.is_empty(),
        "payload lookups send no event by default"
    );

    // Asked for, the event is sent.
    assert!(ph
        .get_feature_flag_payload(
            "banner",
            FlagsRequest::new("u").send_feature_flag_events(true)
        )
        .await
        .is_ok());
    let events = called_events(&ph, &mock).await;
    assert_eq!(events.len(), 1);
    assert_eq!(
        events[0]["properties"]["$feature_flag_payload"],
        json!({"title": "Sale", "discount": 20})
    );
}

#[tokio::test(start_paused = true)]
async fn invalid_payloads_are_no_payload() {
    let mock = start_mock().await;
    mock.set_default(
        "/flags/",
        ok(v2(json!({
            "broken": with_payload("broken", true, "{not json"),
            "empty": with_payload("empty", true, ""),
            "blank": with_payload("blank", true, "   "),
            "nan": with_payload("nan", true, "NaN"),
        }))),
    );
    let ph = client(&mock);
    for key in ["broken", "empty", "blank", "nan"] {
        assert_eq!(
            ph.get_feature_flag_payload(key, "u").await,
            Ok(None),
            "{key}"
        );
        assert_eq!(
            ph.get_feature_flag_payload_as::<Banner>(key, "u").await,
            Ok(None),
            "{key}"
        );
        // The value is untouched.
        let result = ph.get_feature_flag_result(key, "u").await.unwrap();
        assert_eq!(result.record.value, FlagValue::Bool(true), "{key}");
        assert_eq!(result.record.payload, None, "{key}");
    }
    let events = called_events(&ph, &mock).await;
    assert_eq!(events.len(), 4);
    for e in &events {
        assert!(
            e["properties"].get("$feature_flag_payload").is_none(),
            "no raw payload on the event: {e}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn feature_flag_result_has_value_payload_and_reason_from_one_request() {
    let mock = start_mock().await;
    mock.enqueue(
        "/flags/",
        ok(json!({
            "flags": {"checkout": rich_variant("checkout", "blue", "{\"a\": 1}", None)},
            "requestId": "req-r",
        })),
    );
    let ph = client(&mock);
    let result = ph.get_feature_flag_result("checkout", "u").await.unwrap();
    assert_eq!(flags_requests(&mock).len(), 1);
    assert_eq!(result.key, "checkout");
    assert_eq!(result.record.value, FlagValue::Variant("blue".into()));
    assert!(result.is_enabled());
    assert_eq!(result.variant(), Some("blue"));
    assert_eq!(result.record.payload, Some(json!({"a": 1})));
    assert_eq!(
        result.record.reason.as_deref(),
        Some("Matched condition set 1")
    );
    assert_eq!(result.record.id, Some(23));
    assert_eq!(result.record.version, Some(42));
    assert_eq!(result.request_id.as_deref(), Some("req-r"));
    assert!(!result.record.locally_evaluated);
    assert_eq!(result.stale_because, None);
    assert_eq!(called_events(&ph, &mock).await.len(), 1);
}

// ===== deduplication =====

#[tokio::test(start_paused = true)]
async fn dedup_same_user_and_value_reports_once() {
    let mock = start_mock().await;
    mock.set_default("/flags/", ok(v2(json!({"f": on("f")}))));
    let ph = client(&mock);
    for _ in 0..3 {
        assert_eq!(
            ph.get_feature_flag("f", "u").await,
            Ok(FlagValue::Bool(true))
        );
    }
    assert_eq!(ph.is_feature_enabled("f", "u").await, Ok(true));
    assert!(ph.get_feature_flag_result("f", "u").await.is_ok());
    assert_eq!(flags_requests(&mock).len(), 5, "every call asks PostHog");
    assert_eq!(called_events(&ph, &mock).await.len(), 1);
}

#[tokio::test(start_paused = true)]
async fn dedup_new_value_groups_or_user_report_again() {
    let mock = start_mock().await;
    let ph = client(&mock);
    let on_body = ok(v2(json!({"f": on("f")})));

    mock.enqueue("/flags/", on_body.clone());
    let _ = ph.get_feature_flag("f", "u").await;
    // Another value.
    mock.enqueue(
        "/flags/",
        ok(v2(
            json!({"f": {"key": "f", "enabled": true, "variant": "b"}}),
        )),
    );
    let _ = ph.get_feature_flag("f", "u").await;
    // Back to the first value: already reported.
    mock.enqueue("/flags/", on_body.clone());
    let _ = ph.get_feature_flag("f", "u").await;
    // Other groups.
    mock.enqueue("/flags/", on_body.clone());
    let _ = ph
        .get_feature_flag("f", FlagsRequest::new("u").group("company", "acme"))
        .await;
    mock.enqueue("/flags/", on_body.clone());
    let _ = ph
        .get_feature_flag("f", FlagsRequest::new("u").group("company", "acme"))
        .await;
    mock.enqueue("/flags/", on_body.clone());
    let _ = ph
        .get_feature_flag("f", FlagsRequest::new("u").group("company", "other"))
        .await;
    // Another user.
    mock.enqueue("/flags/", on_body.clone());
    let _ = ph.get_feature_flag("f", "v").await;
    // A failure (null response) is its own combination, reported once.
    mock.enqueue("/flags/", MockResponse::status(500));
    let _ = ph.get_feature_flag("f", "u").await;
    mock.enqueue("/flags/", MockResponse::status(500));
    let _ = ph.get_feature_flag("f", "u").await;

    let events = called_events(&ph, &mock).await;
    let seen: Vec<(Value, Value, Value)> = events
        .iter()
        .map(|e| {
            (
                e["distinct_id"].clone(),
                e["properties"]["$feature_flag_response"].clone(),
                e["properties"]
                    .get("$groups")
                    .cloned()
                    .unwrap_or(Value::Null),
            )
        })
        .collect();
    assert_eq!(
        seen,
        vec![
            (json!("u"), json!(true), Value::Null),
            (json!("u"), json!("b"), Value::Null),
            (json!("u"), json!(true), json!({"company": "acme"})),
            (json!("u"), json!(true), json!({"company": "other"})),
            (json!("v"), json!(true), Value::Null),
            (json!("u"), Value::Null, Value::Null),
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn dedup_group_order_does_not_matter() {
    let mock = start_mock().await;
    mock.set_default("/flags/", ok(v2(json!({"f": on("f")}))));
    let ph = client(&mock);
    let _ = ph
        .get_feature_flag(
            "f",
            FlagsRequest::new("u")
                .group("company", "acme")
                .group("team", "red"),
        )
        .await;
    let _ = ph
        .get_feature_flag(
            "f",
            FlagsRequest::new("u")
                .group("team", "red")
                .group("company", "acme"),
        )
        .await;
    assert_eq!(called_events(&ph, &mock).await.len(), 1);
}

/// After more than N distinct users, the oldest is forgotten: its repeat call reports again.
/// Repeated over many rounds so that an eviction that only happens by chance (hashing) fails.
#[tokio::test(start_paused = true)]
async fn dedup_capacity_forgets_the_oldest_user() {
    const CAPACITY: usize = 3;
    const ROUNDS: usize = 20;
    let mock = start_mock().await;
    mock.set_default("/flags/", ok(v2(json!({"f": on("f")}))));
    let ph = builder(&mock)
        .flag_called_dedup_capacity(CAPACITY)
        .build()
        .unwrap();

    for round in 0..ROUNDS {
        for user in 0..=CAPACITY {
            let _ = ph.get_feature_flag("f", format!("r{round}-u{user}")).await;
        }
        // CAPACITY + 1 users since r{round}-u0: it was forgotten.
        let _ = ph.get_feature_flag("f", format!("r{round}-u0")).await;
    }
    let events = called_events(&ph, &mock).await;
    let mut missing = Vec::new();
    for round in 0..ROUNDS {
        let first = format!("r{round}-u0");
        let n = events.iter().filter(|e| e["distinct_id"] == first).count();
        if n != 2 {
            missing.push(round);
        }
    }
    assert!(
        missing.is_empty(),
        "with capacity {CAPACITY}, the first user's repeat after {} other users reported again \
         in only {} of {ROUNDS} rounds (rounds without it: {missing:?})",
        CAPACITY,
        ROUNDS - missing.len()
    );
}

/// Up to N distinct users are all remembered: none is forgotten early.
#[tokio::test(start_paused = true)]
async fn dedup_capacity_remembers_up_to_capacity_users() {
    const CAPACITY: usize = 32;
    let mock = start_mock().await;
    mock.set_default("/flags/", ok(v2(json!({"f": on("f")}))));
    let ph = builder(&mock)
        .flag_called_dedup_capacity(CAPACITY)
        .build()
        .unwrap();
    for pass in 0..2 {
        for user in 0..CAPACITY {
            let _ = ph.get_feature_flag("f", format!("user-{user}")).await;
        }
        let events = called_events(&ph, &mock).await;
        assert_eq!(
            events.len(),
            CAPACITY,
            "pass {pass}: {CAPACITY} users fit in a dedup of capacity {CAPACITY}, \
             so the second pass reports nothing"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn events_switched_off_for_the_client() {
    let mock = start_mock().await;
    mock.set_default("/flags/", ok(v2(json!({"f": on("f")}))));
    let ph = builder(&mock)
        .send_feature_flag_events(false)
        .build()
        .unwrap();

    assert_eq!(
        ph.get_feature_flag("f", "u").await,
        Ok(FlagValue::Bool(true))
    );
    assert_eq!(ph.is_feature_enabled("f", "u").await, Ok(true));
    assert!(ph.get_feature_flag_result("f", "u").await.is_ok());
    let _ = ph.get_feature_flag("missing", "u").await;
    let snapshot = ph.evaluate_flags("u").await;
    assert!(snapshot.is_enabled("f"));
    assert_eq!(snapshot.get_flag("g"), None);
    assert!(called_events(&ph, &mock).await.is_empty());

    // A call can still ask for it.
    let _ = ph
        .get_feature_flag("f", FlagsRequest::new("u").send_feature_flag_events(true))
        .await;
    assert_eq!(called_events(&ph, &mock).await.len(), 1);
}

#[tokio::test(start_paused = true)]
async fn events_switched_off_per_call() {
    let mock = start_mock().await;
    mock.set_default("/flags/", ok(v2(json!({"f": on("f")}))));
    let ph = client(&mock);

    let quiet = || FlagsRequest::new("u").send_feature_flag_events(false);
    assert_eq!(
        ph.get_feature_flag("f", quiet()).await,
        Ok(FlagValue::Bool(true))
    );
    assert_eq!(ph.is_feature_enabled("f", quiet()).await, Ok(true));
    assert!(ph.get_feature_flag_result("f", quiet()).await.is_ok());
    let snapshot = ph.evaluate_flags(quiet()).await;
    assert!(snapshot.is_enabled("f"));
    assert!(called_events(&ph, &mock).await.is_empty());

    // A silent call does not count as reported: the next normal call reports.
    let _ = ph.get_feature_flag("f", "u").await;
    assert_eq!(called_events(&ph, &mock).await.len(), 1);
    // The field is never sent to PostHog.
    for req in flags_requests(&mock) {
        assert!(body_of(&req).get("send_feature_flag_events").is_none());
    }
}

// ===== minimization =====

fn minimal_body(has_experiment: Option<bool>) -> Value {
    json!({
        "flags": {"exp": rich_variant("exp", "test", "{\"big\": true}", has_experiment)},
        "errorsWhileComputingFlags": false,
        "requestId": "req-m",
        "evaluatedAt": 1_700_000_000_000_i64,
        "minimalFlagCalledEvents": true,
    })
}

const MINIMAL_KEYS: &[&str] = &[
    "$feature_flag",
    "$feature_flag_response",
    "$feature_flag_has_experiment",
    "$feature_flag_id",
    "$feature_flag_version",
    "$feature_flag_reason",
    "$feature_flag_request_id",
    "$feature_flag_evaluated_at",
    "locally_evaluated",
    "$groups",
    "$lib",
    "$lib_version",
    "$geoip_disable",
];

#[tokio::test(start_paused = true)]
async fn minimal_events_keep_only_the_allow_list() {
    let mock = start_mock().await;
    mock.enqueue("/flags/", ok(minimal_body(Some(false))));
    let ph = builder(&mock)
        .super_property("tier", "gold")
        .build()
        .unwrap();

    let value = ph
        .get_feature_flag("exp", FlagsRequest::new("u").group("company", "acme"))
        .await;
    assert_eq!(value, Ok(FlagValue::Variant("test".into())));
    let events = called_events(&ph, &mock).await;
    assert_eq!(events.len(), 1);
    let e = &events[0];
    assert_eq!(
        prop_keys(e),
        with_system(MINIMAL_KEYS),
        "no $feature/exp, no payload, no super property: {e}"
    );
    let p = &e["properties"];
    assert_eq!(p["$feature_flag"], "exp");
    assert_eq!(p["$feature_flag_response"], "test");
    assert_eq!(p["$feature_flag_has_experiment"], false);
    assert_eq!(p["$feature_flag_request_id"], "req-m");
    assert_eq!(p["$groups"], json!({"company": "acme"}));
    assert_eq!(e["distinct_id"], "u");

    // Regular events keep the super property.
    ph.capture(Event::new("other", "u")).unwrap();
    ph.flush().await;
    let other = mock
        .events()
        .into_iter()
        .find(|e| e["event"] == "other")
        .unwrap();
    assert_eq!(other["properties"]["tier"], "gold");
}

/// Spec §4: minimization runs "after all enrichment ... and before `before_send`", so what
/// the hook adds is kept.
#[tokio::test(start_paused = true)]
async fn before_send_sees_and_keeps_its_changes_on_minimal_events() {
    let mock = start_mock().await;
    mock.enqueue("/flags/", ok(minimal_body(Some(false))));
    let ph = builder(&mock)
        .before_send(|mut event| {
            event.insert("hook_added", true).unwrap();
            Some(event)
        })
        .build()
        .unwrap();
    let _ = ph.get_feature_flag("exp", "u").await;
    let events = called_events(&ph, &mock).await;
    assert_eq!(events.len(), 1);
    let p = &events[0]["properties"];
    assert!(
        p.get("$feature/exp").is_none(),
        "still minimized: {}",
        events[0]
    );
    assert_eq!(
        p["hook_added"], true,
        "a property added by before_send survives minimization: {}",
        events[0]
    );
}

#[tokio::test(start_paused = true)]
async fn experiments_and_unknown_flags_are_never_minimized() {
    for has_experiment in [Some(true), None] {
        let mock = start_mock().await;
        mock.enqueue("/flags/", ok(minimal_body(has_experiment)));
        let ph = builder(&mock)
            .super_property("tier", "gold")
            .build()
            .unwrap();
        let _ = ph.get_feature_flag("exp", "u").await;
        let events = called_events(&ph, &mock).await;
        assert_eq!(events.len(), 1);
        let p = &events[0]["properties"];
        assert_eq!(p["$feature/exp"], "test", "{has_experiment:?}");
        assert_eq!(p["$feature_flag_payload"], json!({"big": true}));
        assert_eq!(p["tier"], "gold", "{has_experiment:?}");
    }

    // Without the server's gate, has_experiment=false is a full event too.
    let mock = start_mock().await;
    let mut body = minimal_body(Some(false));
    body.as_object_mut()
        .unwrap()
        .remove("minimalFlagCalledEvents");
    mock.enqueue("/flags/", ok(body));
    let ph = builder(&mock)
        .super_property("tier", "gold")
        .build()
        .unwrap();
    let _ = ph.get_feature_flag("exp", "u").await;
    let events = called_events(&ph, &mock).await;
    assert_eq!(events[0]["properties"]["tier"], "gold");
    assert_eq!(events[0]["properties"]["$feature/exp"], "test");
}

#[tokio::test(start_paused = true)]
async fn snapshot_events_are_minimized_by_the_snapshot_gate() {
    let mock = start_mock().await;
    mock.enqueue(
        "/flags/",
        ok(json!({
            "flags": {
                "plain": rich_variant("plain", "a", "1", Some(false)),
                "exp": rich_variant("exp", "b", "2", Some(true)),
            },
            "requestId": "req-s",
            "minimalFlagCalledEvents": true,
        })),
    );
    let ph = builder(&mock)
        .super_property("tier", "gold")
        .build()
        .unwrap();
    let flags = ph.evaluate_flags("u").await;
    // A later response without the gate does not change the snapshot's.
    let _ = ph.get_all_flags("u").await;
    assert!(flags.is_enabled("plain"));
    assert!(flags.is_enabled("exp"));
    let events = called_events(&ph, &mock).await;
    let plain = events
        .iter()
        .find(|e| e["properties"]["$feature_flag"] == "plain")
        .unwrap();
    let exp = events
        .iter()
        .find(|e| e["properties"]["$feature_flag"] == "exp")
        .unwrap();
    assert!(plain["properties"].get("tier").is_none(), "{plain}");
    assert!(plain["properties"].get("$feature/plain").is_none());
    assert!(plain["properties"].get("$feature_flag_payload").is_none());
    assert_eq!(plain["properties"]["$feature_flag_response"], "a");
    assert_eq!(exp["properties"]["tier"], "gold");
    assert_eq!(exp["properties"]["$feature/exp"], "b");
}

// ===== snapshots =====

fn snapshot_body() -> Value {
    json!({
        "flags": {
            "variant-flag": rich_variant("variant-flag", "variant-value", "{\"p\": 1}", Some(false)),
            "boolean-flag": with_payload("boolean-flag", true, "[1, 2]"),
            "disabled-flag": off("disabled-flag"),
            "bad-payload": with_payload("bad-payload", true, "not json"),
        },
        "errorsWhileComputingFlags": false,
        "requestId": "req-snap",
        "evaluatedAt": 1_700_000_000_123_i64,
    })
}

#[tokio::test(start_paused = true)]
async fn snapshot_reads_make_no_further_requests() {
    let mock = start_mock().await;
    mock.enqueue("/flags/", ok(snapshot_body()));
    let ph = client(&mock);

    let flags = ph
        .evaluate_flags(FlagsRequest::new("u").group("company", "acme"))
        .await;
    assert_eq!(flags_requests(&mock).len(), 1);
    assert_eq!(flags.error(), None);
    assert_eq!(flags.distinct_id(), "u");
    assert_eq!(flags.len(), 4);

    assert!(flags.is_enabled("variant-flag"));
    assert!(flags.is_enabled("boolean-flag"));
    assert!(!flags.is_enabled("disabled-flag"));
    assert!(!flags.is_enabled("nope"), "missing keys are off");
    assert_eq!(
        flags.get_flag("variant-flag"),
        Some(FlagValue::Variant("variant-value".into()))
    );
    assert_eq!(flags.get_flag("boolean-flag"), Some(FlagValue::Bool(true)));
    assert_eq!(
        flags.get_flag("disabled-flag"),
        Some(FlagValue::Bool(false))
    );
    assert_eq!(flags.get_flag("nope"), None);
    assert_eq!(flags.get_payload("variant-flag"), Some(&json!({"p": 1})));
    assert_eq!(flags.get_payload("boolean-flag"), Some(&json!([1, 2])));
    assert_eq!(
        flags.get_payload("bad-payload"),
        None,
        "invalid JSON is no payload"
    );
    assert_eq!(flags.get_payload("nope"), None);
    let keys: BTreeSet<&str> = flags.keys().collect();
    assert_eq!(
        keys,
        [
            "bad-payload",
            "boolean-flag",
            "disabled-flag",
            "variant-flag"
        ]
        .into_iter()
        .collect()
    );
    let record = flags.record("variant-flag").unwrap();
    assert_eq!(record.reason.as_deref(), Some("Matched condition set 1"));
    assert_eq!((record.id, record.version), (Some(23), Some(42)));
    assert_eq!(record.has_experiment, Some(false));
    assert!(!record.locally_evaluated);

    assert_eq!(flags_requests(&mock).len(), 1, "reading is free");
}

#[tokio::test(start_paused = true)]
async fn snapshot_evaluation_sends_the_request_fields() {
    let mock = start_mock().await;
    let ph = client(&mock);
    let _ = ph
        .evaluate_flags(
            FlagsRequest::new("u")
                .person_property("email", "a@b.c")
                .group("company", "acme")
                .device_id("dev")
                .disable_geoip(false),
        )
        .await;
    let body = body_of(&flags_requests(&mock)[0]);
    assert_eq!(body["distinct_id"], "u");
    assert_eq!(body["person_properties"], json!({"email": "a@b.c"}));
    assert_eq!(body["groups"], json!({"company": "acme"}));
    assert_eq!(
        body["group_properties"],
        json!({"company": {"$group_key": "acme"}})
    );
    assert_eq!(body["device_id"], "dev");
    assert_eq!(body["geoip_disable"], false);
    assert!(body.get("flag_keys_to_evaluate").is_none());
}

#[tokio::test(start_paused = true)]
async fn snapshot_keeps_only_the_requested_keys() {
    let mock = start_mock().await;
    // The server answers with more than was asked for.
    mock.enqueue("/flags/", ok(snapshot_body()));
    let ph = client(&mock);
    let flags = ph
        .evaluate_flags(FlagsRequest::new("u").flag_keys(["boolean-flag", "absent"]))
        .await;
    assert_eq!(flags.keys().collect::<Vec<_>>(), ["boolean-flag"]);
}

#[tokio::test(start_paused = true)]
async fn snapshot_first_access_reports_once() {
    let mock = start_mock().await;
    mock.enqueue("/flags/", ok(snapshot_body()));
    let ph = client(&mock);

    let flags = ph
        .evaluate_flags(FlagsRequest::new("u").group("company", "acme"))
        .await;
    assert!(
        called_events(&ph, &mock).await.is_empty(),
        "evaluating is silent"
    );
    // Silent reads.
    let _ = flags.get_payload("variant-flag");
    let _ = flags.get_payload("nope");
    let _ = flags.keys().count();
    let _ = flags.record("boolean-flag");
    let _ = Event::new("e", "u").flags(&flags);
    assert!(
        called_events(&ph, &mock).await.is_empty(),
        "payload and keys reads are silent"
    );
    assert!(flags.only_accessed().is_empty(), "and are not accesses");

    assert!(flags.is_enabled("variant-flag"));
    assert!(flags.is_enabled("variant-flag"));
    let _ = flags.get_flag("variant-flag");
    let events = called_events(&ph, &mock).await;
    assert_eq!(events.len(), 1, "is_enabled twice + get_flag = one event");
    let e = &events[0];
    assert_eq!(e["distinct_id"], "u");
    let p = &e["properties"];
    assert_eq!(p["$feature_flag"], "variant-flag");
    assert_eq!(p["$feature_flag_response"], "variant-value");
    assert_eq!(p["$feature/variant-flag"], "variant-value");
    assert_eq!(p["locally_evaluated"], false);
    assert_eq!(p["$feature_flag_payload"], json!({"p": 1}));
    assert_eq!(p["$feature_flag_request_id"], "req-snap");
    assert_eq!(p["$feature_flag_evaluated_at"], 1_700_000_000_123_i64);
    assert_eq!(p["$feature_flag_reason"], "Matched condition set 1");
    assert_eq!(p["$feature_flag_id"], 23);
    assert_eq!(p["$feature_flag_version"], 42);
    assert_eq!(p["$groups"], json!({"company": "acme"}));
    assert!(p.get("$feature_flag_error").is_none());

    // The single-flag path shares the dedup: same user, value and groups.
    mock.enqueue("/flags/", ok(snapshot_body()));
    let _ = ph
        .get_feature_flag(
            "variant-flag",
            FlagsRequest::new("u").group("company", "acme"),
        )
        .await;
    assert_eq!(called_events(&ph, &mock).await.len(), 1);

    // A disabled flag reports false.
    assert!(!flags.is_enabled("disabled-flag"));
    let events = called_events(&ph, &mock).await;
    assert_eq!(events.len(), 2);
    assert_eq!(events[1]["properties"]["$feature_flag_response"], false);
}

#[tokio::test(start_paused = true)]
async fn snapshot_missing_key_reports_flag_missing() {
    let mock = start_mock().await;
    mock.enqueue("/flags/", ok(snapshot_body()));
    let ph = client(&mock);
    let flags = ph.evaluate_flags("u").await;
    assert_eq!(flags.get_flag("nope"), None);
    let events = called_events(&ph, &mock).await;
    assert_eq!(events.len(), 1);
    let p = &events[0]["properties"];
    assert_eq!(p["$feature_flag_error"], "flag_missing");
    assert_eq!(p["$feature_flag_response"], Value::Null);
    assert_eq!(p["$feature/nope"], Value::Null);
    assert_eq!(p["locally_evaluated"], false);
    assert_eq!(
        p["$feature_flag_request_id"], "req-snap",
        "kept for missing keys"
    );
    assert_eq!(p["$feature_flag_evaluated_at"], 1_700_000_000_123_i64);
}

#[tokio::test(start_paused = true)]
async fn snapshot_errors_while_computing_are_reported_on_access() {
    let mock = start_mock().await;
    let mut body = snapshot_body();
    body["errorsWhileComputingFlags"] = json!(true);
    mock.enqueue("/flags/", ok(body));
    let ph = client(&mock);
    let flags = ph.evaluate_flags("u").await;
    assert!(flags.is_enabled("boolean-flag"));
    assert!(!flags.is_enabled("nope"));
    let events = called_events(&ph, &mock).await;
    let present = events
        .iter()
        .find(|e| e["properties"]["$feature_flag"] == "boolean-flag")
        .unwrap();
    let missing = events
        .iter()
        .find(|e| e["properties"]["$feature_flag"] == "nope")
        .unwrap();
    assert_eq!(flag_error(present), Some("errors_while_computing_flags"));
    assert_eq!(
        flag_error(missing),
        Some("errors_while_computing_flags,flag_missing")
    );
}

#[tokio::test(start_paused = true)]
async fn snapshot_of_a_failed_evaluation_is_empty_with_the_error() {
    let mock = start_mock().await;
    mock.enqueue("/flags/", MockResponse::status(500));
    let ph = client(&mock);
    let flags = ph.evaluate_flags("u").await;
    assert!(flags.is_empty());
    assert_eq!(flags.len(), 0);
    assert_eq!(flags.error(), Some(&FlagError::Status(500)));
    assert!(!flags.is_enabled("f"));
    assert_eq!(flags.get_flag("f"), None);
    assert_eq!(flags_requests(&mock).len(), 1);
    let events = called_events(&ph, &mock).await;
    assert_eq!(
        events.len(),
        1,
        "is_enabled + get_flag of one key: one event"
    );
    assert_eq!(flag_error(&events[0]), Some("flag_missing"));

    // Quota limited.
    mock.enqueue(
        "/flags/",
        ok(json!({"flags": {"f": on("f")}, "quotaLimited": ["feature_flags"]})),
    );
    let flags = ph.evaluate_flags("v").await;
    assert!(flags.is_empty());
    assert_eq!(flags.error(), Some(&FlagError::QuotaLimited));
    assert!(!flags.is_enabled("f"));
    let events = called_events(&ph, &mock).await;
    let v = events.iter().find(|e| e["distinct_id"] == "v").unwrap();
    assert_eq!(flag_error(v), Some("quota_limited,flag_missing"));

    // Timeout (after its retry).
    mock.set_default(
        "/flags/",
        ok(v2(json!({"f": on("f")}))).delay(Duration::from_secs(60)),
    );
    let flags = ph.evaluate_flags("w").await;
    assert_eq!(flags.error(), Some(&FlagError::Timeout));
    assert!(flags.is_empty());
}

#[tokio::test(start_paused = true)]
async fn snapshot_with_explicitly_no_keys_makes_no_request() {
    let mock = start_mock().await;
    let ph = client(&mock);
    let flags = ph
        .evaluate_flags(FlagsRequest::new("u").flag_keys(Vec::<String>::new()))
        .await;
    assert!(flags.is_empty());
    assert_eq!(flags.error(), None);
    assert!(flags_requests(&mock).is_empty(), "no request");
    // The distinct id is known, so an access still reports the missing flag.
    assert!(!flags.is_enabled("f"));
    let events = called_events(&ph, &mock).await;
    assert_eq!(events.len(), 1);
    assert_eq!(flag_error(&events[0]), Some("flag_missing"));
}

#[tokio::test(start_paused = true)]
async fn snapshot_without_distinct_id_is_empty_and_silent() {
    let mock = start_mock().await;
    let ph = client(&mock);
    let flags = ph.evaluate_flags("").await;
    assert!(flags.is_empty());
    assert!(!flags.is_enabled("f"));
    assert_eq!(flags.get_flag("f"), None);
    assert!(flags_requests(&mock).is_empty());
    assert!(called_events(&ph, &mock).await.is_empty());
}

#[tokio::test(start_paused = true)]
async fn snapshot_only_and_only_accessed() {
    let mock = start_mock().await;
    mock.enqueue("/flags/", ok(snapshot_body()));
    let ph = client(&mock);
    let flags = ph.evaluate_flags("u").await;

    assert!(
        flags.only_accessed().is_empty(),
        "nothing accessed yet: empty, not everything"
    );
    let some = flags.only(["boolean-flag", "disabled-flag", "unknown"]);
    let some_keys: BTreeSet<&str> = some.keys().collect();
    assert_eq!(
        some_keys,
        ["boolean-flag", "disabled-flag"].into_iter().collect(),
        "unknown keys are dropped"
    );
    assert_eq!(some.get_payload("boolean-flag"), Some(&json!([1, 2])));

    let _ = flags.get_flag("variant-flag");
    assert!(flags.is_enabled("boolean-flag"));
    let accessed = flags.only_accessed();
    let accessed_keys: BTreeSet<&str> = accessed.keys().collect();
    assert_eq!(
        accessed_keys,
        ["boolean-flag", "variant-flag"].into_iter().collect()
    );
    // Missing keys accessed are not in it.
    let _ = flags.get_flag("nope");
    assert_eq!(flags.only_accessed().len(), 2);

    // A child's accesses do not leak into the parent.
    let child = flags.only(["disabled-flag"]);
    assert!(!child.is_enabled("disabled-flag"));
    assert!(!flags.only_accessed().keys().any(|k| k == "disabled-flag"));

    // Filtering makes no request.
    assert_eq!(flags_requests(&mock).len(), 1);
    // Accesses through copies are deduplicated with the parent's.
    let _ = some.is_enabled("boolean-flag");
    let events = called_events(&ph, &mock).await;
    let boolean = events
        .iter()
        .filter(|e| e["properties"]["$feature_flag"] == "boolean-flag")
        .count();
    assert_eq!(boolean, 1);
}

/// Spec (and posthog-python `_clone_with`): a filtered copy starts with a copy of the
/// parent's accessed set, then tracks further access on its own.
#[tokio::test(start_paused = true)]
async fn snapshot_only_copies_the_accessed_set() {
    let mock = start_mock().await;
    mock.enqueue("/flags/", ok(snapshot_body()));
    let ph = client(&mock);
    let flags = ph.evaluate_flags("u").await;
    assert!(flags.is_enabled("boolean-flag"));
    let child = flags.only(["boolean-flag", "variant-flag"]);
    assert_eq!(
        child.only_accessed().keys().collect::<Vec<_>>(),
        ["boolean-flag"],
        "the child knows what the parent accessed before it was made"
    );
}

#[tokio::test(start_paused = true)]
async fn event_flags_attaches_the_snapshot_without_a_request() {
    let mock = start_mock().await;
    mock.enqueue("/flags/", ok(snapshot_body()));
    let ph = client(&mock);
    let flags = ph.evaluate_flags("u").await;

    ph.capture(
        Event::new("checkout", "u")
            .property("$feature/bad-payload", "mine")
            .flags(&flags),
    )
    .unwrap();
    ph.flush().await;
    assert_eq!(flags_requests(&mock).len(), 1, "no extra request");
    let events = mock.events();
    assert_eq!(events.len(), 1, "no $feature_flag_called either");
    let p = &events[0]["properties"];
    assert_eq!(p["$feature/variant-flag"], "variant-value");
    assert_eq!(p["$feature/boolean-flag"], true);
    assert_eq!(p["$feature/disabled-flag"], false);
    assert_eq!(
        p["$feature/bad-payload"], "mine",
        "the event's own value wins"
    );
    assert_eq!(
        p["$active_feature_flags"],
        json!(["bad-payload", "boolean-flag", "variant-flag"]),
        "enabled keys, sorted"
    );

    // Filtered snapshots attach only their flags; none enabled: no $active_feature_flags.
    ph.capture(Event::new("narrow", "u").flags(&flags.only(["disabled-flag"])))
        .unwrap();
    ph.flush().await;
    let narrow = mock
        .events()
        .into_iter()
        .find(|e| e["event"] == "narrow")
        .unwrap();
    assert_eq!(narrow["properties"]["$feature/disabled-flag"], false);
    assert!(narrow["properties"].get("$feature/boolean-flag").is_none());
    assert!(narrow["properties"].get("$active_feature_flags").is_none());
}

#[tokio::test(start_paused = true)]
async fn capture_with_flags_makes_one_request_and_attaches() {
    let mock = start_mock().await;
    mock.enqueue("/flags/", ok(snapshot_body()));
    let ph = client(&mock);
    ph.capture_with_flags(
        Event::new("purchase", "user-5")
            .group("company", "acme")
            .property("amount", 3),
    )
    .await
    .unwrap();
    ph.flush().await;

    let reqs = flags_requests(&mock);
    assert_eq!(reqs.len(), 1);
    let body = body_of(&reqs[0]);
    assert_eq!(body["distinct_id"], "user-5");
    assert_eq!(body["groups"], json!({"company": "acme"}));
    let events = mock.events();
    assert_eq!(events.len(), 1, "only the event, no $feature_flag_called");
    let p = &events[0]["properties"];
    assert_eq!(events[0]["event"], "purchase");
    assert_eq!(p["amount"], 3);
    assert_eq!(p["$feature/variant-flag"], "variant-value");
    assert_eq!(p["$feature/disabled-flag"], false);
    assert_eq!(
        p["$active_feature_flags"],
        json!(["bad-payload", "boolean-flag", "variant-flag"])
    );
}

// ===== bulk getters =====

#[tokio::test(start_paused = true)]
async fn get_all_flags_and_payloads() {
    let mock = start_mock().await;
    mock.set_default(
        "/flags/",
        ok(v2(json!({
            "on-with-payload": with_payload("on-with-payload", true, "{\"x\": 1}"),
            "off-with-payload": with_payload("off-with-payload", false, "{\"y\": 2}"),
            "variant": rich_variant("variant", "v1", "\"text\"", None),
            "broken": with_payload("broken", true, "{"),
            "plain": on("plain"),
        }))),
    );
    let ph = client(&mock);

    let values = ph.get_all_flags("u").await.unwrap();
    assert_eq!(values.len(), 5);
    assert_eq!(values["on-with-payload"], FlagValue::Bool(true));
    assert_eq!(values["off-with-payload"], FlagValue::Bool(false));
    assert_eq!(values["variant"], FlagValue::Variant("v1".into()));
    assert_eq!(values["broken"], FlagValue::Bool(true));
    assert_eq!(values["plain"], FlagValue::Bool(true));

    let all = ph.get_all_flags_and_payloads("u").await.unwrap();
    assert_eq!(all.flags, values);
    assert_eq!(all.payloads.len(), 2, "{:?}", all.payloads);
    assert_eq!(all.payloads["on-with-payload"], json!({"x": 1}));
    assert_eq!(all.payloads["variant"], json!("text"));
    assert!(
        !all.payloads.contains_key("off-with-payload"),
        "disabled flags' payloads are left out"
    );
    assert!(
        !all.payloads.contains_key("broken"),
        "a malformed payload is left out, its siblings kept"
    );

    assert_eq!(flags_requests(&mock).len(), 2, "one request each");
    assert!(called_events(&ph, &mock).await.is_empty(), "no events");
}

#[tokio::test(start_paused = true)]
async fn get_all_flags_errors() {
    let mock = start_mock().await;
    mock.enqueue("/flags/", MockResponse::status(500));
    let ph = client(&mock);
    assert_eq!(ph.get_all_flags("u").await, Err(FlagError::Status(500)));
    assert!(called_events(&ph, &mock).await.is_empty());
}

// ===== coalescing =====

#[tokio::test(start_paused = true)]
async fn concurrent_identical_calls_share_one_request() {
    const N: usize = 20;
    let mock = start_mock().await;
    mock.set_default(
        "/flags/",
        ok(v2(
            json!({"f": {"key": "f", "enabled": true, "variant": "blue"}}),
        ))
        .delay(Duration::from_millis(200)),
    );
    let ph = client(&mock);

    let tasks: Vec<_> = (0..N)
        .map(|_| {
            let ph = ph.clone();
            tokio::spawn(async move { ph.get_feature_flag("f", "u").await })
        })
        .collect();
    for task in tasks {
        assert_eq!(task.await.unwrap(), Ok(FlagValue::Variant("blue".into())));
    }
    assert_eq!(flags_requests(&mock).len(), 1, "{N} callers, one request");
    let events = called_events(&ph, &mock).await;
    assert_eq!(events.len(), 1, "and one event");

    // Once answered, nothing is cached: the next call asks again.
    assert!(ph.get_feature_flag("f", "u").await.is_ok());
    assert_eq!(flags_requests(&mock).len(), 2);
}

#[tokio::test(start_paused = true)]
async fn concurrent_calls_with_tokio_join_share_one_request() {
    let mock = start_mock().await;
    mock.set_default(
        "/flags/",
        ok(v2(json!({"f": on("f")}))).delay(Duration::from_millis(200)),
    );
    let ph = client(&mock);
    let (a, b, c, d) = tokio::join!(
        ph.get_feature_flag("f", "u"),
        ph.is_feature_enabled("f", "u"),
        ph.get_feature_flag_result("f", "u"),
        ph.get_feature_flag_payload("f", "u"),
    );
    assert_eq!(a, Ok(FlagValue::Bool(true)));
    assert_eq!(b, Ok(true));
    assert!(c.is_ok());
    assert_eq!(d, Ok(None));
    assert_eq!(flags_requests(&mock).len(), 1);
}

#[tokio::test(start_paused = true)]
async fn concurrent_different_requests_are_not_shared() {
    let mock = start_mock().await;
    mock.set_default(
        "/flags/",
        ok(v2(json!({"f": on("f"), "g": on("g")}))).delay(Duration::from_millis(200)),
    );
    let ph = client(&mock);
    let tasks: Vec<_> = (0..30)
        .map(|i| {
            let ph = ph.clone();
            tokio::spawn(async move {
                match i % 3 {
                    0 => ph.get_feature_flag("f", "u1").await,
                    1 => ph.get_feature_flag("f", "u2").await,
                    _ => ph.get_feature_flag("g", "u1").await,
                }
            })
        })
        .collect();
    for task in tasks {
        assert_eq!(task.await.unwrap(), Ok(FlagValue::Bool(true)));
    }
    let reqs = flags_requests(&mock);
    assert_eq!(reqs.len(), 3, "one per distinct (user, keys)");
    let seen: BTreeSet<(String, String)> = reqs
        .iter()
        .map(|r| {
            let b = body_of(r);
            (
                b["distinct_id"].as_str().unwrap().to_owned(),
                b["flag_keys_to_evaluate"][0].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [("u1", "f"), ("u2", "f"), ("u1", "g")]
            .into_iter()
            .map(|(a, b)| (a.to_owned(), b.to_owned()))
            .collect()
    );
}

#[tokio::test(start_paused = true)]
async fn concurrent_calls_share_the_error_too() {
    let mock = start_mock().await;
    mock.enqueue(
        "/flags/",
        MockResponse::status(500).delay(Duration::from_millis(200)),
    );
    let ph = client(&mock);
    let tasks: Vec<_> = (0..10)
        .map(|_| {
            let ph = ph.clone();
            tokio::spawn(async move { ph.get_feature_flag("f", "u").await })
        })
        .collect();
    for task in tasks {
        assert_eq!(task.await.unwrap(), Err(FlagError::Status(500)));
    }
    assert_eq!(flags_requests(&mock).len(), 1);
}

// ===== fallback cache =====

#[tokio::test(start_paused = true)]
async fn fallback_cache_serves_the_last_good_value_for_an_hour() {
    let mock = start_mock().await;
    let ph = builder(&mock).flag_fallback_cache(true).build().unwrap();

    // A good answer, without an event, so the fallback's own event is not deduplicated away.
    mock.enqueue(
        "/flags/",
        ok(json!({
            "flags": {"f": rich_variant("f", "blue", "{\"p\": 1}", None)},
            "requestId": "req-good",
        })),
    );
    let good = ph
        .get_feature_flag_result("f", FlagsRequest::new("u").send_feature_flag_events(false))
        .await
        .unwrap();
    assert_eq!(good.record.value, FlagValue::Variant("blue".into()));

    // Then a failure: the cached value, marked stale.
    mock.enqueue("/flags/", MockResponse::status(500));
    let stale = ph.get_feature_flag_result("f", "u").await.unwrap();
    assert_eq!(stale.record.value, FlagValue::Variant("blue".into()));
    assert_eq!(stale.record.payload, Some(json!({"p": 1})));
    assert_eq!(stale.stale_because, Some(FlagError::Status(500)));
    let events = called_events(&ph, &mock).await;
    assert_eq!(events.len(), 1);
    let p = &events[0]["properties"];
    assert_eq!(p["$feature_flag_error"], "api_error_500");
    assert_eq!(p["$feature_flag_response"], "blue");
    assert_eq!(p["$feature_flag_payload"], json!({"p": 1}));

    // Other users and other flags have nothing cached.
    mock.enqueue("/flags/", MockResponse::status(500));
    assert_eq!(
        ph.get_feature_flag("f", "someone-else").await,
        Err(FlagError::Status(500))
    );
    mock.enqueue("/flags/", MockResponse::status(500));
    assert_eq!(
        ph.get_feature_flag("g", "u").await,
        Err(FlagError::Status(500))
    );

    // Other failures are served from the cache too.
    mock.enqueue(
        "/flags/",
        ok(json!({"flags": {}, "quotaLimited": ["feature_flags"]})),
    );
    let quota = ph.get_feature_flag_result("f", "u").await.unwrap();
    assert_eq!(quota.stale_because, Some(FlagError::QuotaLimited));
    mock.enqueue(
        "/flags/",
        ok(v2(json!({"f": on("f")}))).delay(Duration::from_secs(60)),
    );
    mock.enqueue(
        "/flags/",
        ok(v2(json!({"f": on("f")}))).delay(Duration::from_secs(60)),
    );
    let timed_out = ph.get_feature_flag_result("f", "u").await.unwrap();
    assert_eq!(timed_out.stale_because, Some(FlagError::Timeout));

    // A missing flag is not a failure: no fallback (the mock's default answer has no `f`).
    assert_eq!(ph.get_feature_flag("f", "u").await, Err(FlagError::Missing));

    // Over an hour later, the cached value is too old.
    tokio::time::advance(Duration::from_secs(3601)).await;
    mock.enqueue("/flags/", MockResponse::status(500));
    assert_eq!(
        ph.get_feature_flag_result("f", "u").await,
        Err(FlagError::Status(500))
    );
}

#[tokio::test(start_paused = true)]
async fn fallback_value_shares_the_dedup_key_of_the_good_one() {
    let mock = start_mock().await;
    let ph = builder(&mock).flag_fallback_cache(true).build().unwrap();
    mock.enqueue("/flags/", ok(v2(json!({"f": on("f")}))));
    assert_eq!(
        ph.get_feature_flag("f", "u").await,
        Ok(FlagValue::Bool(true))
    );
    mock.enqueue("/flags/", MockResponse::status(503));
    assert_eq!(
        ph.get_feature_flag("f", "u").await,
        Ok(FlagValue::Bool(true))
    );
    let events = called_events(&ph, &mock).await;
    assert_eq!(
        events.len(),
        1,
        "the stale value is the same combination as the reported good one"
    );
}

#[tokio::test(start_paused = true)]
async fn fallback_cache_is_fresh_within_the_hour() {
    let mock = start_mock().await;
    let ph = builder(&mock).flag_fallback_cache(true).build().unwrap();
    mock.enqueue("/flags/", ok(v2(json!({"f": on("f")}))));
    assert!(ph.get_feature_flag("f", "u").await.is_ok());
    tokio::time::advance(Duration::from_secs(3500)).await;
    mock.enqueue("/flags/", MockResponse::status(500));
    let stale = ph.get_feature_flag_result("f", "u").await.unwrap();
    assert_eq!(stale.record.value, FlagValue::Bool(true));
    assert_eq!(stale.stale_because, Some(FlagError::Status(500)));
}

#[tokio::test(start_paused = true)]
async fn without_the_fallback_cache_a_failure_is_an_error() {
    let mock = start_mock().await;
    let ph = client(&mock);
    mock.enqueue("/flags/", ok(v2(json!({"f": on("f")}))));
    assert!(ph.get_feature_flag("f", "u").await.is_ok());
    mock.enqueue("/flags/", MockResponse::status(500));
    assert_eq!(
        ph.get_feature_flag_result("f", "u").await,
        Err(FlagError::Status(500))
    );
}

// ===== disabled client =====

#[tokio::test(start_paused = true)]
async fn disabled_client_makes_no_request() {
    let mock = start_mock().await;
    mock.set_default("/flags/", ok(v2(json!({"f": on("f")}))));
    let ph = builder(&mock).disabled(true).build().unwrap();

    assert_eq!(
        ph.get_feature_flag("f", "u").await,
        Err(FlagError::Disabled)
    );
    assert_eq!(
        ph.is_feature_enabled("f", "u").await,
        Err(FlagError::Disabled)
    );
    assert_eq!(
        ph.get_feature_flag_payload("f", "u").await,
        Err(FlagError::Disabled)
    );
    assert_eq!(
        ph.get_feature_flag_payload_as::<Banner>("f", "u").await,
        Err(FlagError::Disabled)
    );
    assert_eq!(
        ph.get_feature_flag_result("f", "u").await,
        Err(FlagError::Disabled)
    );
    assert_eq!(ph.get_all_flags("u").await, Err(FlagError::Disabled));
    assert_eq!(
        ph.get_all_flags_and_payloads("u").await,
        Err(FlagError::Disabled)
    );
    let flags = ph.evaluate_flags("u").await;
    assert!(flags.is_empty());
    assert!(!flags.is_enabled("f"));
    assert_eq!(flags.get_flag("f"), None);
    assert!(ph.capture_with_flags(Event::new("e", "u")).await.is_ok());
    ph.flush().await;
    assert!(
        mock.requests().is_empty(),
        "nothing reached the mock: {:?}",
        mock.requests()
    );
}
