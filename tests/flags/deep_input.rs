//! Input nested or chained 10 000 deep, from PostHog (flag definitions, `/flags` answers,
//! payloads) and from callers (the posthog-js cookie, flag request properties), run on a
//! thread with a 2 MiB stack (a tokio worker's) in the test profile (debug): every recursion
//! over such input is bounded before it recurses, so each test ends with an answer (an error,
//! an inconclusive flag sent to the server, the input ignored) instead of a stack overflow.

use std::{convert::Infallible, future::Future, time::Duration};

use http::{Request, Response};
use posthog_tower::{
    context::RequestContext,
    flags::{FlagError, FlagValue, FlagsRequest, FlagsResponse, LocalFlags},
    http::PostHogCookie,
    testing::{MockPostHog, MockResponse},
    PostHog,
};
use serde_json::{json, Map, Value};
use tower::{service_fn, Layer, ServiceExt};

/// A tokio worker thread's stack.
const STACK: usize = 2 * 1024 * 1024;
/// How deep (or how long a chain) every input here is.
const DEPTH: usize = 10_000;
const WAIT: Duration = Duration::from_secs(10);

/// Runs `make()`'s future to completion on a fresh thread with a 2 MiB stack, in a
/// current-thread runtime: the mock PostHog, the definitions poller and the client's workers
/// all run on that stack too.
fn on_small_stack<F, Fut>(make: F)
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = ()>,
{
    std::thread::Builder::new()
        .name("deep-input".into())
        .stack_size(STACK)
        .spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime")
                .block_on(make());
        })
        .expect("thread spawns")
        .join()
        .expect("the test thread did not panic");
}

/// JSON text of arrays nested `depth` deep: `[[[...]]]`.
fn nested_arrays(depth: usize) -> String {
    let mut text = "[".repeat(depth);
    text.push_str(&"]".repeat(depth));
    text
}

/// JSON text of objects nested `depth` deep: `{"a":{"a":...1}}`.
fn nested_objects(depth: usize) -> String {
    let mut text = r#"{"a":"#.repeat(depth);
    text.push('1');
    text.push_str(&"}".repeat(depth));
    text
}

/// A 100 % flag whose one condition has these property filters.
fn flag(key: &str, properties: Value) -> Value {
    json!({"id": 1, "key": key, "active": true, "filters": {
        "groups": [{"properties": properties, "rollout_percentage": 100}]
    }})
}

fn cohort_filter(id: usize) -> Value {
    json!({"type": "cohort", "key": "id", "value": id})
}

fn flag_filter(key: &str) -> Value {
    json!({"type": "flag", "key": key, "operator": "flag_evaluates_to", "value": true,
           "dependency_chain": [key]})
}

fn plan_is_pro() -> Value {
    json!({"key": "plan", "value": "pro", "operator": "exact", "type": "person"})
}

/// Starts the mock serving `definitions` (raw JSON text) and `/flags` answering `remote`, and
/// a client with a personal API key. Returns whether the definitions loaded.
async fn local_client(definitions: String, remote: Value) -> (MockPostHog, PostHog, bool) {
    let mock = MockPostHog::start().await.expect("mock binds");
    mock.set_default(
        "/flags/definitions",
        MockResponse::status(200)
            .with_raw_body(definitions)
            .with_header("content-type", "application/json"),
    );
    mock.set_default("/flags/", MockResponse::json(200, remote));
    let posthog = PostHog::builder("phc_deep")
        .host(mock.url())
        .personal_api_key("phx_deep")
        .send_feature_flag_events(false)
        .build()
        .expect("client builds");
    let loaded = posthog.wait_for_flag_definitions(WAIT).await;
    (mock, posthog, loaded)
}

/// A `/flags` answer turning `key` on.
fn remote_on(key: &str) -> Value {
    json!({"flags": {key: {"key": key, "enabled": true}}, "requestId": "remote"})
}

fn pro(distinct_id: &str) -> FlagsRequest {
    FlagsRequest::new(distinct_id).person_property("plan", "pro")
}

/// `key` cannot be decided locally: alone it is inconclusive, and a normal evaluation asks
/// `/flags` for it (whose answer is on).
async fn assert_goes_to_the_server(mock: &MockPostHog, posthog: &PostHog, key: &str) {
    let before = mock.requests_to("/flags/").len();
    assert_eq!(
        posthog
            .get_feature_flag(key, pro("u").only_evaluate_locally(true))
            .await,
        Err(FlagError::Inconclusive),
        "{key} is inconclusive locally"
    );
    assert_eq!(mock.requests_to("/flags/").len(), before, "no request yet");
    let result = posthog
        .get_feature_flag_result(key, pro("u"))
        .await
        .expect("the server answers");
    assert_eq!(result.record.value, FlagValue::Bool(true));
    assert!(
        !result.record.locally_evaluated,
        "{key} came from the server"
    );
    let requests = mock.requests_to("/flags/");
    assert_eq!(requests.len(), before + 1);
    assert_eq!(
        requests[before].json().expect("JSON body")["flag_keys_to_evaluate"],
        json!([key])
    );
}

/// `key` is decided locally (the chains the deep tests build do work when short).
async fn assert_local(posthog: &PostHog, key: &str, want: bool) {
    let result = posthog
        .get_feature_flag_result(key, pro("u"))
        .await
        .expect("decided");
    assert_eq!(result.record.value, FlagValue::Bool(want), "{key}");
    assert!(result.record.locally_evaluated, "{key} was decided locally");
}

// ---------------------------------------------------------------------------------------
// Flag definitions (`GET /flags/definitions`)
// ---------------------------------------------------------------------------------------

#[test]
fn definitions_with_a_value_nested_10_000_deep_are_rejected() {
    for deep in [nested_arrays(DEPTH), nested_objects(DEPTH)] {
        on_small_stack(move || async move {
            let definitions = format!(
                r#"{{"flags": [{{"key": "deep", "active": true, "filters": {{"groups": [{{"properties": [{{"key": "plan", "type": "person", "value": {deep}}}], "rollout_percentage": 100}}]}}}}], "cohorts": {{}}}}"#
            );
            let error = LocalFlags::from_definitions(definitions.as_bytes())
                .expect_err("too deep to be definitions");
            assert!(
                matches!(&error, FlagError::InvalidResponse(m) if m.contains("recursion limit")),
                "{error:?}"
            );

            let (mock, posthog, loaded) = local_client(definitions, remote_on("deep")).await;
            assert!(!loaded, "the definitions are refused");
            assert!(posthog.local_flags().is_none());
            assert_eq!(mock.requests_to("/flags/definitions").len(), 1);
            // Without definitions, flags go to the server.
            assert_eq!(
                posthog.get_feature_flag("deep", "u").await,
                Ok(FlagValue::Bool(true))
            );
            assert_eq!(mock.requests_to("/flags/").len(), 1);
        });
    }
}

#[test]
fn definitions_with_an_unknown_field_nested_10_000_deep_are_rejected() {
    on_small_stack(|| async {
        let deep = nested_arrays(DEPTH);
        let definitions = format!(r#"{{"flags": [], "future": {deep}}}"#);
        assert!(LocalFlags::from_definitions(definitions.as_bytes()).is_err());
        let (_mock, posthog, loaded) = local_client(definitions, remote_on("x")).await;
        assert!(!loaded);
        assert!(posthog.local_flags().is_none());
    });
}

#[test]
fn cohorts_chained_10_000_deep_are_inconclusive() {
    on_small_stack(|| async {
        // Cohort i holds cohort i + 1; the last one holds `plan = pro`.
        let mut cohorts = Map::new();
        for id in 1..DEPTH {
            cohorts.insert(
                id.to_string(),
                json!({"type": "AND", "values": [cohort_filter(id + 1)]}),
            );
        }
        cohorts.insert(
            DEPTH.to_string(),
            json!({"type": "AND", "values": [plan_is_pro()]}),
        );
        let definitions = json!({
            "flags": [
                flag("deep-cohorts", json!([cohort_filter(1)])),
                flag("short-cohorts", json!([cohort_filter(DEPTH - 10)])),
            ],
            "cohorts": cohorts,
        });
        let (mock, posthog, loaded) =
            local_client(definitions.to_string(), remote_on("deep-cohorts")).await;
        assert!(loaded);
        assert_local(&posthog, "short-cohorts", true).await;
        assert_goes_to_the_server(&mock, &posthog, "deep-cohorts").await;
    });
}

#[test]
fn flag_dependencies_chained_10_000_deep_are_inconclusive() {
    on_small_stack(|| async {
        // Flag i depends on flag i + 1 being on; the last flag is on for everyone.
        let key = |i: usize| format!("dep-{i}");
        let mut flags: Vec<Value> = (0..DEPTH - 1)
            .map(|i| flag(&key(i), json!([flag_filter(&key(i + 1))])))
            .collect();
        flags.push(flag(&key(DEPTH - 1), json!([])));
        let definitions = json!({"flags": flags, "cohorts": {}});
        let (mock, posthog, loaded) =
            local_client(definitions.to_string(), remote_on("dep-0")).await;
        assert!(loaded);
        assert_local(&posthog, &key(DEPTH - 10), true).await;
        assert_goes_to_the_server(&mock, &posthog, "dep-0").await;

        // Every flag at once: the deep ones are asked of the server in one request.
        let before = mock.requests_to("/flags/").len();
        let all = posthog.evaluate_flags(pro("u")).await;
        assert_eq!(mock.requests_to("/flags/").len(), before + 1);
        let asked = mock.requests_to("/flags/")[before]
            .json()
            .expect("JSON body");
        let asked = asked["flag_keys_to_evaluate"].as_array().expect("keys");
        assert!(asked.contains(&json!("dep-0")));
        assert!(!asked.contains(&json!(key(DEPTH - 10))));
        assert!(
            all.record(&key(DEPTH - 10))
                .expect("local")
                .locally_evaluated
        );
        assert!(!all.record("dep-0").expect("remote").locally_evaluated);
    });
}

#[test]
fn cohorts_and_dependencies_interleaved_20_000_deep_are_inconclusive() {
    on_small_stack(|| async {
        // `loop` needs cohort 1; cohorts 1..199 each hold the next; cohort 199 needs `loop`
        // on: every dependency level goes through 199 cohort levels again.
        let cohorts_len = 199;
        let mut cohorts = Map::new();
        for id in 1..cohorts_len {
            cohorts.insert(
                id.to_string(),
                json!({"type": "AND", "values": [cohort_filter(id + 1)]}),
            );
        }
        cohorts.insert(
            cohorts_len.to_string(),
            json!({"type": "AND", "values": [flag_filter("loop")]}),
        );
        let definitions = json!({
            "flags": [flag("loop", json!([cohort_filter(1)]))],
            "cohorts": cohorts,
        });
        let (mock, posthog, loaded) =
            local_client(definitions.to_string(), remote_on("loop")).await;
        assert!(loaded);
        assert_goes_to_the_server(&mock, &posthog, "loop").await;
    });
}

#[test]
fn cohort_groups_nested_in_200_chained_cohorts_are_inconclusive() {
    on_small_stack(|| async {
        // Each cohort nests its groups 60 deep (as deep as JSON's 128 levels allow) around
        // a reference to the next cohort: 12 000 group levels in all.
        let cohorts_len = 200;
        let nest = |inner: Value| {
            (0..60).fold(inner, |inner, _| json!({"type": "AND", "values": [inner]}))
        };
        let mut cohorts = Map::new();
        for id in 1..cohorts_len {
            cohorts.insert(id.to_string(), nest(cohort_filter(id + 1)));
        }
        cohorts.insert(cohorts_len.to_string(), nest(plan_is_pro()));
        let definitions = json!({
            "flags": [
                flag("deep-groups", json!([cohort_filter(1)])),
                flag("short-groups", json!([cohort_filter(cohorts_len - 2)])),
            ],
            "cohorts": cohorts,
        });
        let (mock, posthog, loaded) =
            local_client(definitions.to_string(), remote_on("deep-groups")).await;
        assert!(loaded);
        assert_local(&posthog, "short-groups", true).await;
        assert_goes_to_the_server(&mock, &posthog, "deep-groups").await;
    });
}

#[test]
fn the_deepest_evaluation_the_limits_allow_fits() {
    // 100 nested dependencies (the most allowed), the last needing cohort 1 of 200 chained
    // cohorts (300 levels open: the most allowed), the last cohort comparing a person
    // property nested 100 deep (the most a request keeps) as text: every walk at its limit.
    for extra_level in [false, true] {
        on_small_stack(move || async move {
            let key = |i: usize| format!("d{i}");
            let mut flags: Vec<Value> = (0..100)
                .map(|i| flag(&key(i), json!([flag_filter(&key(i + 1))])))
                .collect();
            flags.push(flag(&key(100), json!([cohort_filter(1)])));
            let mut cohorts = Map::new();
            for id in 1..200 {
                cohorts.insert(
                    id.to_string(),
                    json!({"type": "AND", "values": [cohort_filter(id + 1)]}),
                );
            }
            let text = deep_value(100).to_string();
            let mut last = json!({"type": "AND", "values": [
                {"key": "nested", "value": text, "operator": "exact", "type": "person"}
            ]});
            if extra_level {
                last = json!({"type": "AND", "values": [last]});
            }
            cohorts.insert("200".into(), last);
            let definitions = json!({"flags": flags, "cohorts": cohorts});
            let (mock, posthog, loaded) =
                local_client(definitions.to_string(), remote_on("d0")).await;
            assert!(loaded);
            let mut person = Map::new();
            person.insert("plan".into(), json!("pro"));
            person.insert("nested".into(), deep_value(100));
            let request = FlagsRequest::new("u").person_properties(person);
            assert!(request.person_properties_map().contains_key("nested"));
            let local = posthog
                .get_feature_flag("d0", request.clone().only_evaluate_locally(true))
                .await;
            if extra_level {
                assert_eq!(local, Err(FlagError::Inconclusive));
                assert_goes_to_the_server(&mock, &posthog, "d0").await;
            } else {
                assert_eq!(local, Ok(FlagValue::Bool(true)));
            }
        });
    }
}

#[test]
fn cohorts_referring_twice_to_the_next_are_inconclusive_not_exponential() {
    on_small_stack(|| async {
        // Cohort i is "i + 1 OR i + 1": 2^199 evaluations of the last cohort if nothing
        // stopped it.
        let cohorts_len = 200;
        let mut cohorts = Map::new();
        for id in 1..cohorts_len {
            cohorts.insert(
                id.to_string(),
                json!({"type": "OR", "values": [cohort_filter(id + 1), cohort_filter(id + 1)]}),
            );
        }
        cohorts.insert(
            cohorts_len.to_string(),
            json!({"type": "AND", "values": [plan_is_pro()]}),
        );
        let definitions = json!({
            "flags": [
                flag("wide", json!([cohort_filter(1)])),
                flag("narrow", json!([cohort_filter(cohorts_len - 5)])),
            ],
            "cohorts": cohorts,
        });
        let (mock, posthog, loaded) =
            local_client(definitions.to_string(), remote_on("wide")).await;
        assert!(loaded);
        let free = || FlagsRequest::new("u").person_property("plan", "free");
        // Short enough to be decided: not in the cohort.
        assert_eq!(
            posthog.get_feature_flag("narrow", free()).await,
            Ok(FlagValue::Bool(false))
        );
        assert_eq!(
            posthog
                .get_feature_flag("wide", free().only_evaluate_locally(true))
                .await,
            Err(FlagError::Inconclusive)
        );
        assert!(mock.requests_to("/flags/").is_empty());
    });
}

#[test]
fn a_regex_filter_nested_10_000_deep_is_inconclusive() {
    on_small_stack(|| async {
        // Python reads it; the `regex` crate refuses to nest that deep: the server decides.
        let pattern = format!("{}pro{}", "(".repeat(DEPTH), ")".repeat(DEPTH));
        let definitions = json!({
            "flags": [
                flag("deep-regex", json!([
                    {"key": "plan", "value": pattern, "operator": "regex", "type": "person"}
                ])),
                flag("regex", json!([
                    {"key": "plan", "value": "((pro))", "operator": "regex", "type": "person"}
                ])),
            ],
            "cohorts": {},
        });
        let (mock, posthog, loaded) =
            local_client(definitions.to_string(), remote_on("deep-regex")).await;
        assert!(loaded);
        assert_local(&posthog, "regex", true).await;
        assert_goes_to_the_server(&mock, &posthog, "deep-regex").await;
    });
}

#[test]
fn a_payload_nested_10_000_deep_in_the_definitions_is_no_payload() {
    on_small_stack(|| async {
        let deep = nested_arrays(DEPTH);
        let definitions = json!({
            "flags": [{"id": 1, "key": "paid", "active": true, "filters": {
                "groups": [{"properties": [], "rollout_percentage": 100}],
                "payloads": {"true": deep},
            }}],
            "cohorts": {},
        });
        let (_mock, posthog, loaded) = local_client(definitions.to_string(), json!({})).await;
        assert!(loaded);
        let result = posthog
            .get_feature_flag_result("paid", "u")
            .await
            .expect("decided");
        assert_eq!(result.record.value, FlagValue::Bool(true));
        assert!(result.record.locally_evaluated);
        assert_eq!(
            result.record.payload, None,
            "a payload too deep to decode is none"
        );
    });
}

// ---------------------------------------------------------------------------------------
// `/flags` answers
// ---------------------------------------------------------------------------------------

/// A client without local evaluation whose `/flags` answers `body` (raw JSON text).
async fn remote_client(body: String) -> (MockPostHog, PostHog) {
    let mock = MockPostHog::start().await.expect("mock binds");
    mock.set_default(
        "/flags/",
        MockResponse::status(200)
            .with_raw_body(body)
            .with_header("content-type", "application/json"),
    );
    let posthog = PostHog::builder("phc_deep")
        .host(mock.url())
        .send_feature_flag_events(false)
        .feature_flags_max_retries(0)
        .build()
        .expect("client builds");
    (mock, posthog)
}

#[test]
fn a_flags_answer_nested_10_000_deep_is_invalid() {
    let deep = nested_arrays(DEPTH);
    let bodies = [
        // v2: in the payload, and in a field read as JSON.
        format!(
            r#"{{"flags": {{"f": {{"key": "f", "enabled": true, "metadata": {{"payload": {deep}}}}}}}}}"#
        ),
        format!(r#"{{"flags": {{"f": {{"key": "f", "enabled": {deep}}}}}}}"#),
        // v1: a flag value and a payload.
        format!(r#"{{"featureFlags": {{"f": {deep}}}}}"#),
        format!(r#"{{"featureFlags": {{"f": true}}, "featureFlagPayloads": {{"f": {deep}}}}}"#),
        format!(r#"{{"featureFlags": {{"f": {}}}}}"#, nested_objects(DEPTH)),
    ];
    for body in bodies {
        on_small_stack(move || async move {
            let error = FlagsResponse::from_json(body.as_bytes()).expect_err("too deep");
            assert!(error.to_string().contains("recursion limit"), "{error}");
            let (mock, posthog) = remote_client(body).await;
            let value = posthog.get_feature_flag("f", "u").await;
            assert!(
                matches!(&value, Err(FlagError::InvalidResponse(m)) if m.contains("recursion limit")),
                "{value:?}"
            );
            assert_eq!(mock.requests_to("/flags/").len(), 1);
        });
    }
}

#[test]
fn a_flags_answer_with_an_unknown_field_nested_10_000_deep_is_read() {
    // serde_json skips a field nobody reads without recursing (and without a depth limit).
    for deep in [nested_arrays(DEPTH), nested_objects(DEPTH)] {
        on_small_stack(move || async move {
            let body = format!(
                r#"{{"flags": {{"f": {{"key": "f", "enabled": true, "future": {deep}}}}}, "future": {deep}}}"#
            );
            let response = FlagsResponse::from_json(body.as_bytes()).expect("read");
            assert_eq!(response.flags["f"].value(), FlagValue::Bool(true));
            let (_mock, posthog) = remote_client(body).await;
            assert_eq!(
                posthog.get_feature_flag("f", "u").await,
                Ok(FlagValue::Bool(true))
            );
        });
    }
}

#[test]
fn a_flags_payload_text_nested_10_000_deep_is_no_payload() {
    on_small_stack(|| async {
        let body = json!({"flags": {"f": {"key": "f", "enabled": true,
                                           "metadata": {"payload": nested_arrays(DEPTH)}}}});
        let (_mock, posthog) = remote_client(body.to_string()).await;
        let result = posthog
            .get_feature_flag_result("f", "u")
            .await
            .expect("the value is fine");
        assert_eq!(result.record.value, FlagValue::Bool(true));
        assert_eq!(result.record.payload, None);
        let all = posthog.get_all_flags_and_payloads("u").await.expect("all");
        assert_eq!(all.flags.get("f"), Some(&FlagValue::Bool(true)));
        assert!(all.payloads.is_empty());
    });
}

// ---------------------------------------------------------------------------------------
// Caller input: the posthog-js cookie, flag request properties
// ---------------------------------------------------------------------------------------

const COOKIE: &str = "ph_phc_deep_posthog";

/// The distinct id and session id the layer resolves for a request with this `Cookie`.
async fn identity_from_cookie(cookie: String) -> (Option<String>, Option<String>) {
    let posthog = PostHog::builder("phc_deep")
        .disabled(true)
        .build()
        .expect("client builds");
    let svc = posthog
        .layer()
        .capture_pageviews(false)
        .layer(service_fn(|_: Request<()>| async {
            let ctx = RequestContext::current().expect("in the request's context");
            Ok::<_, Infallible>(Response::new((
                ctx.distinct_id().map(str::to_owned),
                ctx.session_id().map(str::to_owned),
            )))
        }));
    let request = Request::get("/")
        .header("cookie", format!("theme=dark; {COOKIE}={cookie}"))
        .body(())
        .expect("request");
    svc.oneshot(request).await.expect("infallible").into_body()
}

fn cookie_headers(cookie: &str) -> http::HeaderMap {
    let mut headers = http::HeaderMap::new();
    let value = format!("{COOKIE}={cookie}");
    headers.insert("cookie", value.parse().expect("header value"));
    headers
}

#[test]
fn a_cookie_nested_10_000_deep_is_ignored() {
    // The cookie decodes at most 16 KiB: 8 000 levels fit closed, 10 000 only unclosed.
    let cookies = [
        // In the fields the layer reads, so the parser's depth limit refuses them.
        format!(
            r#"{{"distinct_id":{},"$sesid":[1,"s",2]}}"#,
            nested_arrays(8_000)
        ),
        format!(
            r#"{{"distinct_id":"id","$sesid":{}}}"#,
            nested_arrays(8_000)
        ),
        format!(r#"{{"$device_id":{}"#, "[".repeat(DEPTH)),
        format!(
            r#"{{"distinct_id":"id","$sesid":{}"#,
            r#"{"a":"#.repeat(DEPTH / 5)
        ),
        // Anywhere, unclosed: the end of the text comes first.
        format!(
            r#"{{"distinct_id":"id","$sesid":[1,"s",2],"x":{}"#,
            "[".repeat(DEPTH)
        ),
        // Closed 10 000 deep, raw and URL-encoded as posthog-js writes it: too long to read.
        format!(r#"{{"distinct_id":"id","x":{}}}"#, nested_arrays(DEPTH)),
        format!(r#"{{"distinct_id":"id","x":{}}}"#, nested_arrays(DEPTH))
            .replace('[', "%5B")
            .replace(']', "%5D"),
    ];
    for cookie in cookies {
        on_small_stack(move || async move {
            assert_eq!(
                PostHogCookie::from_headers(&cookie_headers(&cookie), COOKIE),
                None
            );
            assert_eq!(identity_from_cookie(cookie).await, (None, None));
        });
    }
}

#[test]
fn a_cookie_with_an_unknown_field_nested_8_000_deep_is_read() {
    // A field the layer does not read is skipped without recursing.
    on_small_stack(|| async {
        let cookie = format!(
            r#"{{"distinct_id":"from-cookie","$sesid":[1,"session",2],"x":{}}}"#,
            nested_arrays(8_000)
        );
        let parsed = PostHogCookie::from_headers(&cookie_headers(&cookie), COOKIE);
        assert_eq!(
            parsed.as_ref().and_then(PostHogCookie::distinct_id),
            Some("from-cookie")
        );
        assert_eq!(
            identity_from_cookie(cookie).await,
            (Some("from-cookie".into()), Some("session".into()))
        );
    });
}

/// A JSON value nested `depth` arrays deep around `true`, built without recursion.
fn deep_value(depth: usize) -> Value {
    (0..depth).fold(Value::Bool(true), |inner, _| Value::Array(vec![inner]))
}

/// A JSON value nested `depth` objects deep (`{"a": {"a": ... true}}`), built without
/// recursion. Dropping it the usual way overflows a 2 MiB stack from about 5 000 levels.
fn deep_object(depth: usize) -> Value {
    (0..depth).fold(Value::Bool(true), |inner, _| {
        let mut map = Map::new();
        map.insert("a".into(), inner);
        Value::Object(map)
    })
}

#[test]
fn request_properties_nested_10_000_deep_are_left_out() {
    on_small_stack(|| async {
        let mut person = Map::new();
        person.insert("plan".into(), json!("pro"));
        person.insert("deep".into(), deep_value(DEPTH));
        let mut group = Map::new();
        group.insert("deep".into(), deep_object(DEPTH));
        let request = FlagsRequest::new("u")
            .person_properties(person)
            .group("company", "acme")
            .group_properties("company", group);
        assert_eq!(
            request.person_properties_map().keys().collect::<Vec<_>>(),
            ["plan"]
        );
        assert!(request.group_properties_map()["company"].is_empty());

        let definitions = json!({
            "flags": [
                flag("deep-exact", json!([{"key": "deep", "value": "[[true]]", "type": "person"}])),
                flag("deep-truthy", json!([{"key": "deep", "value": true, "type": "person"}])),
                flag("plan", json!([plan_is_pro()])),
            ],
            "cohorts": {},
        });
        let local =
            LocalFlags::from_definitions(definitions.to_string().as_bytes()).expect("definitions");
        assert_eq!(local.evaluate("plan", &request), Ok(FlagValue::Bool(true)));
        for key in ["deep-exact", "deep-truthy"] {
            assert_eq!(
                local.evaluate(key, &request),
                Err(FlagError::Inconclusive),
                "{key}: the property was left out"
            );
        }

        // Through the client: local evaluation, then `/flags` for the rest.
        let (mock, posthog, loaded) =
            local_client(definitions.to_string(), remote_on("deep-exact")).await;
        assert!(loaded);
        assert_eq!(
            posthog
                .get_feature_flag("deep-exact", request.clone())
                .await,
            Ok(FlagValue::Bool(true))
        );
        let sent = mock.requests_to("/flags/")[0].json().expect("JSON body");
        assert_eq!(sent["person_properties"], json!({"plan": "pro"}));
    });
}

#[test]
fn a_request_property_nested_10_000_deep_by_value_is_left_out() {
    on_small_stack(|| async {
        let deep = deep_object(DEPTH);
        let request = FlagsRequest::new("u")
            // By reference and by value: refused at the 101st level either way, and the
            // value passed by value is not dropped recursively.
            .person_property("by_ref", &deep)
            .person_property("by_value", deep_object(DEPTH))
            .group_property("company", "by_value", deep_value(DEPTH))
            .person_property("plan", "pro");
        assert_eq!(
            request.person_properties_map().keys().collect::<Vec<_>>(),
            ["plan"]
        );
        assert!(request
            .group_properties_map()
            .get("company")
            .map_or(true, Map::is_empty));
        // The test's own deep value, dropped without recursing.
        let mut pending = vec![deep];
        while let Some(value) = pending.pop() {
            match value {
                Value::Array(items) => pending.extend(items),
                Value::Object(map) => pending.extend(map.into_iter().map(|(_, v)| v)),
                _ => {}
            }
        }
    });
}
