//! What a request's flags are evaluated with behind the layer, in a real axum server on
//! loopback with `MockPostHog`: the anonymous visitor of the posthog-js cookie when the
//! app's resolver knows no caller (device-bucketed variants as posthog-python computes them,
//! stored in `tests/data/anonymous_device/`), the person properties and groups of
//! `PostHogLayer::flag_properties`, locally and in the `/flags` body, and reads that evaluate
//! only the flags read (the pageview carrying those) while an undecided flag makes one
//! `/flags` call for the request.

use std::{net::SocketAddr, time::Duration};

use axum::{extract::Request, routing::get, Router};
use posthog_tower::{
    http::{FlagInputs, RequestFlags, RequestHead},
    testing::{MockPostHog, MockResponse},
    PostHog,
};
use serde_json::{json, Value};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

const KEY: &str = "phc_flag_inputs_test";
const COOKIE: &str = "ph_phc_flag_inputs_test_posthog";

async fn serve(app: Router) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        axum::serve(listener, app).await.expect("server runs");
    });
    addr
}

/// GET `path` with these headers; the response body.
async fn get_with(addr: SocketAddr, path: &str, headers: &[(&str, String)]) -> String {
    let mut head = format!("GET {path} HTTP/1.1\r\nHost: app.example");
    for (k, v) in headers {
        head.push_str(&format!("\r\n{k}: {v}"));
    }
    head.push_str("\r\nConnection: close\r\nContent-Length: 0\r\n\r\n");
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(head.as_bytes()).await.expect("write");
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.expect("read");
    let text = String::from_utf8_lossy(&response).into_owned();
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    text.split("\r\n\r\n").nth(1).unwrap_or_default().to_owned()
}

/// posthog-js's cookie for this JSON.
fn cookie(json: &Value) -> String {
    let encoded: String = json
        .to_string()
        .bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect();
    format!("{COOKIE}={encoded}")
}

async fn local_client(mock: &MockPostHog, definitions: Value) -> PostHog {
    mock.set_default("/flags/definitions", MockResponse::json(200, definitions));
    let posthog = PostHog::builder(KEY)
        .host(mock.url())
        .personal_api_key("phx_flag_inputs_secret")
        .build()
        .expect("client builds");
    assert!(
        posthog
            .wait_for_flag_definitions(Duration::from_secs(5))
            .await
    );
    posthog
}

/// The handler answers `<distinct id>|<flag value>` for the flag named in the path.
fn flag_route() -> Router {
    Router::new().route(
        "/flag/{key}",
        get(
            |axum::extract::Path(key): axum::extract::Path<String>, flags: RequestFlags| async move {
                let value = flags.get_flag(&key).await;
                format!(
                    "{}|{}",
                    flags.distinct_id().unwrap_or("-"),
                    value.map_or("-".to_owned(), |v| v.to_string())
                )
            },
        ),
    )
}

#[tokio::test]
async fn anonymous_cookie_visitors_get_the_device_bucketed_variant_posthog_python_computes() {
    let data: Value = serde_json::from_str(include_str!(
        "../data/anonymous_device/device_bucketing.json"
    ))
    .expect("the stored corpus is JSON");
    let mock = MockPostHog::start().await.expect("mock binds");
    let posthog = local_client(&mock, data["definitions"].clone()).await;
    // A resolver that knows only logged-in users: nobody here.
    let app = flag_route().layer(
        posthog
            .layer()
            .distinct_id(|req: &RequestHead<'_>| req.header("x-user")),
    );
    let addr = serve(app).await;

    let cases = data["cases"].as_array().expect("cases");
    let mut differs = 0;
    for case in cases {
        let (distinct_id, device_id) = (
            case["distinct_id"].as_str().unwrap(),
            case["device_id"].as_str().unwrap(),
        );
        let visitor = cookie(&json!({"distinct_id": distinct_id, "$device_id": device_id}));
        let body = get_with(addr, "/flag/device-experiment", &[("cookie", visitor)]).await;
        let expected = case["variant"].as_str().unwrap();
        assert_eq!(body, format!("{distinct_id}|{expected}"), "{case}");
        differs += usize::from(case["variant_by_distinct_id"] != case["variant"]);
    }
    assert!(
        differs > cases.len() / 2,
        "the corpus tells device from distinct id bucketing"
    );
    // Decided locally, every one.
    assert!(mock.requests_to("/flags").is_empty());

    // The request's events are the anonymous visitor's, with its device id.
    posthog.flush().await;
    let events = mock.events();
    let first = &cases[0];
    for name in ["$pageview", "$feature_flag_called"] {
        let event = events
            .iter()
            .find(|e| e["event"] == name && e["distinct_id"] == first["distinct_id"])
            .unwrap_or_else(|| panic!("a {name} of the first visitor in {events:#?}"));
        if name == "$feature_flag_called" {
            assert_eq!(
                event["properties"]["$feature_flag_response"],
                first["variant"]
            );
        }
    }
    let pageviews = events.iter().filter(|e| e["event"] == "$pageview").count();
    assert_eq!(pageviews, cases.len());

    // A logged-in caller keeps its own id (and without a device id the device-bucketed flag
    // is left to /flags, which the mock answers with nothing).
    let body = get_with(
        addr,
        "/flag/device-experiment",
        &[("x-user", "user-9".to_owned())],
    )
    .await;
    assert_eq!(body, "user-9|-");
    // Without the cookie and a user, the caller is anonymous: flags off, nothing asked.
    let before = mock.requests_to("/flags").len();
    assert_eq!(get_with(addr, "/flag/device-experiment", &[]).await, "-|-");
    assert_eq!(mock.requests_to("/flags").len(), before);
}

fn targeted_definitions() -> Value {
    json!({
        "flags": [
            {"id": 1, "key": "pro-only", "active": true,
             "filters": {"groups": [{"properties": [
                 {"key": "plan", "value": "pro", "operator": "exact", "type": "person"}],
                 "rollout_percentage": 100}]}},
            {"id": 2, "key": "big-companies", "active": true,
             "filters": {"aggregation_group_type_index": 0,
                         "groups": [{"properties": [
                 {"key": "employees", "value": 100, "operator": "gte", "type": "group",
                  "group_type_index": 0}],
                 "rollout_percentage": 100}]}}
        ],
        "group_type_mapping": {"0": "company"},
        "cohorts": {}
    })
}

/// Person and group inputs from the request's headers.
fn inputs_from_headers(req: &RequestHead<'_>) -> FlagInputs {
    let mut inputs = FlagInputs::new();
    if let Some(plan) = req.header("x-plan") {
        inputs = inputs.person_property("plan", plan);
    }
    if let Some(company) = req.header("x-company") {
        let employees: u32 = req
            .header("x-employees")
            .and_then(|e| e.parse().ok())
            .unwrap_or(0);
        inputs = inputs
            .group("company", company)
            .group_property("company", "employees", employees);
    }
    inputs
}

#[tokio::test]
async fn flag_properties_let_local_evaluation_decide_targeted_flags() {
    let mock = MockPostHog::start().await.expect("mock binds");
    let posthog = local_client(&mock, targeted_definitions()).await;
    let app = flag_route().layer(posthog.layer().flag_properties(inputs_from_headers));
    let addr = serve(app).await;
    let user = |id: &str| ("x-posthog-distinct-id", id.to_owned());

    let pro = get_with(
        addr,
        "/flag/pro-only",
        &[user("u1"), ("x-plan", "pro".into())],
    )
    .await;
    assert_eq!(pro, "u1|true");
    let free = get_with(
        addr,
        "/flag/pro-only",
        &[user("u2"), ("x-plan", "free".into())],
    )
    .await;
    assert_eq!(free, "u2|false");
    let big = [
        user("u3"),
        ("x-company", "acme".to_owned()),
        ("x-employees", "500".to_owned()),
    ];
    assert_eq!(get_with(addr, "/flag/big-companies", &big).await, "u3|true");
    let small = [
        user("u4"),
        ("x-company", "tiny".to_owned()),
        ("x-employees", "3".to_owned()),
    ];
    assert_eq!(
        get_with(addr, "/flag/big-companies", &small).await,
        "u4|false"
    );
    assert!(
        mock.requests_to("/flags").is_empty(),
        "decided locally with the inputs"
    );

    // Without the inputs the person property is unknown: local evaluation cannot decide, and
    // /flags is asked (the mock knows no flag).
    assert_eq!(
        get_with(addr, "/flag/pro-only", &[user("u5")]).await,
        "u5|-"
    );
    assert_eq!(mock.requests_to("/flags").len(), 1);
}

#[tokio::test]
async fn flag_properties_go_in_the_flags_body() {
    let mock = MockPostHog::start().await.expect("mock binds");
    mock.set_default(
        "/flags/",
        MockResponse::json(
            200,
            json!({"flags": {"pro-only": {"key": "pro-only", "enabled": true}}}),
        ),
    );
    let posthog = PostHog::builder(KEY)
        .host(mock.url())
        .build()
        .expect("client builds");
    let app = flag_route().layer(posthog.layer().flag_properties(inputs_from_headers));
    let addr = serve(app).await;
    let headers = [
        ("x-posthog-distinct-id", "u1".to_owned()),
        ("x-plan", "pro".to_owned()),
        ("x-company", "acme".to_owned()),
        ("x-employees", "40".to_owned()),
    ];
    assert_eq!(get_with(addr, "/flag/pro-only", &headers).await, "u1|true");

    let requests = mock.requests_to("/flags");
    assert_eq!(requests.len(), 1, "one /flags request");
    let body = requests[0].json().expect("JSON body");
    assert_eq!(body["distinct_id"], "u1");
    assert_eq!(body["person_properties"], json!({"plan": "pro"}));
    assert_eq!(body["groups"], json!({"company": "acme"}));
    assert_eq!(
        body["group_properties"],
        json!({"company": {"$group_key": "acme", "employees": 40}})
    );
}

#[tokio::test]
async fn the_maker_sees_each_request_once() {
    use std::sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    };
    let mock = MockPostHog::start().await.expect("mock binds");
    let posthog = local_client(&mock, targeted_definitions()).await;
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    let app = Router::new()
        .route(
            "/two-reads",
            get(|flags: RequestFlags, _req: Request| async move {
                let a = flags.is_enabled("pro-only").await;
                let b = flags.is_enabled("pro-only").await;
                format!("{a}{b}")
            }),
        )
        .layer(
            posthog
                .layer()
                .flag_properties(move |req: &RequestHead<'_>| {
                    counted.fetch_add(1, Ordering::Relaxed);
                    inputs_from_headers(req)
                }),
        );
    let addr = serve(app).await;
    let headers = [
        ("x-posthog-distinct-id", "u1".to_owned()),
        ("x-plan", "pro".to_owned()),
    ];
    assert_eq!(get_with(addr, "/two-reads", &headers).await, "truetrue");
    assert_eq!(calls.load(Ordering::Relaxed), 1);
}

/// The handler reads each comma-separated key of the path in turn (twice) and answers the
/// values, comma-separated.
fn reads_route() -> Router {
    Router::new().route(
        "/reads/{keys}",
        get(
            |axum::extract::Path(keys): axum::extract::Path<String>, flags: RequestFlags| async move {
                let mut values = Vec::new();
                for key in keys.split(',') {
                    let first = flags.get_flag(key).await;
                    assert_eq!(flags.get_flag(key).await, first, "{key} read twice");
                    values.push(first.map_or("-".to_owned(), |v| v.to_string()));
                }
                values.join(",")
            },
        ),
    )
}

#[tokio::test]
async fn a_read_evaluates_only_its_flag_and_the_pageview_carries_what_was_read() {
    let mut definitions = targeted_definitions();
    let flags = definitions["flags"].as_array_mut().unwrap();
    flags.push(json!({"id": 3, "key": "everyone", "active": true,
        "filters": {"groups": [{"properties": [], "rollout_percentage": 100}]}}));
    flags.push(json!({"id": 4, "key": "needs-pro", "active": true,
        "filters": {"groups": [{"properties": [
            {"key": "pro-only", "type": "flag", "value": true, "operator": "flag_evaluates_to",
             "dependency_chain": ["pro-only"]}], "rollout_percentage": 100}]}}));
    flags.push(json!({"id": 5, "key": "continuity", "active": true,
        "ensure_experience_continuity": true,
        "filters": {"groups": [{"properties": [], "rollout_percentage": 100}]}}));
    let mock = MockPostHog::start().await.expect("mock binds");
    mock.set_default(
        "/flags/",
        MockResponse::json(
            200,
            json!({"flags": {"continuity": {"key": "continuity", "enabled": true}}}),
        ),
    );
    let posthog = local_client(&mock, definitions).await;
    let app = reads_route().layer(posthog.layer().flag_properties(inputs_from_headers));
    let addr = serve(app).await;
    let pro = |id: &str| {
        [
            ("x-posthog-distinct-id", id.to_owned()),
            ("x-plan", "pro".to_owned()),
        ]
    };

    // Two flags, one depending on a third: decided locally, each evaluated once.
    assert_eq!(
        get_with(addr, "/reads/needs-pro,everyone", &pro("u1")).await,
        "true,true"
    );
    assert!(mock.requests_to("/flags").is_empty());
    posthog.flush().await;
    let events = mock.events();
    let pageview = events
        .iter()
        .find(|e| e["event"] == "$pageview" && e["distinct_id"] == "u1")
        .expect("u1's pageview");
    let feature_keys: Vec<&str> = pageview["properties"]
        .as_object()
        .unwrap()
        .keys()
        .filter_map(|k| k.strip_prefix("$feature/"))
        .collect();
    assert_eq!(feature_keys.len(), 2, "{pageview:#}");
    assert!(feature_keys.contains(&"needs-pro") && feature_keys.contains(&"everyone"));
    assert_eq!(
        pageview["properties"]["$active_feature_flags"],
        json!(["everyone", "needs-pro"])
    );
    let called: Vec<&Value> = events
        .iter()
        .filter(|e| e["event"] == "$feature_flag_called" && e["distinct_id"] == "u1")
        .collect();
    assert_eq!(called.len(), 2, "one event per flag read: {called:#?}");

    // A flag local evaluation cannot decide: one /flags request for the request, however many
    // flags are read after it.
    assert_eq!(
        get_with(addr, "/reads/everyone,continuity,pro-only", &pro("u2")).await,
        "true,true,true"
    );
    let requests = mock.requests_to("/flags");
    assert_eq!(requests.len(), 1);
    let body = requests[0].json().unwrap();
    assert_eq!(body["distinct_id"], "u2");
    assert_eq!(body["flag_keys_to_evaluate"], json!(["continuity"]));
}
