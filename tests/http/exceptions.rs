//! `$exception`s from requests behind the layer: a 5xx, a panic, an inner service error, an
//! exception captured by hand, in a real axum server on loopback (or called in-process where
//! axum cannot produce the failure), with `MockPostHog` recording what arrived.

use std::{convert::Infallible, net::SocketAddr, time::Duration};

use axum::{http::StatusCode, routing::get, routing::post, Router};
use http::{Request, Response};
use posthog_tower::{http::RequestHead, testing::MockPostHog, BoxError, PostHog};
use serde_json::Value;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};
use tower::{service_fn, Layer, ServiceExt};

use crate::support::{start_mock, KEY};

fn client(mock: &MockPostHog) -> PostHog {
    PostHog::builder(KEY)
        .host(mock.url())
        .build()
        .expect("client builds")
}

async fn serve(app: Router) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await.expect("server runs") });
    addr
}

/// Sends one request and returns the raw response (empty when the server closed the
/// connection without answering).
async fn send(addr: SocketAddr, method: &str, path: &str, caller: &str) -> String {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: app.example\r\nX-POSTHOG-DISTINCT-ID: {caller}\r\n\
         Connection: close\r\nContent-Length: 0\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.expect("write");
    let mut response = Vec::new();
    // A server that drops the connection may reset it: what was read so far is the answer.
    let _ = stream.read_to_end(&mut response).await;
    String::from_utf8_lossy(&response).into_owned()
}

async fn delivered(posthog: &PostHog, mock: &MockPostHog) -> Vec<Value> {
    posthog.flush().await;
    mock.events()
}

fn named<'a>(events: &'a [Value], name: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["event"] == name).collect()
}

fn app(posthog: &PostHog) -> Router {
    let ph = posthog.clone();
    Router::new()
        .route("/ok", get(|| async { "fine" }))
        .route(
            "/orders/{id}",
            get(|| async { (StatusCode::INTERNAL_SERVER_ERROR, "sorry") }),
        )
        .route(
            "/busy",
            post(|| async { (StatusCode::SERVICE_UNAVAILABLE, "later") }),
        )
        .route(
            "/missing",
            get(|| async { (StatusCode::NOT_FOUND, "no such thing") }),
        )
        .route(
            "/panics",
            get(|| async {
                if true {
                    panic!("the handler gave up");
                }
                "unreachable"
            }),
        )
        .route(
            "/by-hand",
            get(move || {
                let ph = ph.clone();
                async move {
                    let error = std::io::Error::other("disk full");
                    ph.capture_exception(&error).expect("captured");
                    (StatusCode::INTERNAL_SERVER_ERROR, "failed")
                }
            }),
        )
}

#[tokio::test]
async fn a_5xx_is_one_exception_and_the_pageview_refers_to_it() {
    let mock = start_mock().await;
    let posthog = client(&mock);
    let addr = serve(app(&posthog).layer(posthog.layer())).await;

    let response = send(addr, "GET", "/orders/42?tab=items", "user-1").await;
    assert!(response.starts_with("HTTP/1.1 500"), "{response}");
    assert!(
        response.ends_with("sorry"),
        "the response is unchanged: {response}"
    );
    let ok = send(addr, "GET", "/ok", "user-1").await;
    assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");

    let events = delivered(&posthog, &mock).await;
    let exceptions = named(&events, "$exception");
    assert_eq!(exceptions.len(), 1, "{events:#?}");
    let exception = exceptions[0];
    assert_eq!(exception["distinct_id"], "user-1");
    let p = &exception["properties"];
    let entry = &p["$exception_list"][0];
    assert_eq!(entry["type"], "HttpServerError");
    assert_eq!(
        entry["value"],
        "GET /orders/{id} answered 500 Internal Server Error"
    );
    assert_eq!(entry["mechanism"]["handled"], true);
    assert!(entry.get("stacktrace").is_none(), "no stack: {entry}");
    assert_eq!(p["$route"], "/orders/{id}");
    assert_eq!(p["$response_status"], 500);
    assert_eq!(p["$request_method"], "GET");
    assert_eq!(p["$request_path"], "/orders/42");
    assert_eq!(p["$current_url"], "http://app.example/orders/42?tab=items");

    let pageviews = named(&events, "$pageview");
    assert_eq!(pageviews.len(), 2, "{events:#?}");
    let failed = pageviews
        .iter()
        .find(|e| e["properties"]["$response_status"] == 500)
        .expect("the failed request's pageview");
    assert_eq!(
        failed["properties"]["$exception_event_id"],
        exception["uuid"]
    );
    let fine = pageviews
        .iter()
        .find(|e| e["properties"]["$response_status"] == 200)
        .expect("the other pageview");
    assert!(fine["properties"].get("$exception_event_id").is_none());
}

#[tokio::test]
async fn a_request_without_a_pageview_still_reports_its_failure() {
    let mock = start_mock().await;
    let posthog = client(&mock);
    let addr = serve(app(&posthog).layer(posthog.layer())).await;

    // The default predicate captures no pageview for a POST.
    let response = send(addr, "POST", "/busy", "user-2").await;
    assert!(response.starts_with("HTTP/1.1 503"), "{response}");

    let events = delivered(&posthog, &mock).await;
    assert!(named(&events, "$pageview").is_empty(), "{events:#?}");
    let exceptions = named(&events, "$exception");
    assert_eq!(exceptions.len(), 1, "{events:#?}");
    assert_eq!(exceptions[0]["distinct_id"], "user-2");
    assert_eq!(
        exceptions[0]["properties"]["$exception_list"][0]["value"],
        "POST /busy answered 503 Service Unavailable"
    );
}

#[tokio::test]
async fn an_exception_captured_by_hand_is_the_requests_only_one() {
    let mock = start_mock().await;
    let posthog = client(&mock);
    let addr = serve(app(&posthog).layer(posthog.layer())).await;

    let response = send(addr, "GET", "/by-hand", "user-3").await;
    assert!(response.starts_with("HTTP/1.1 500"), "{response}");

    let events = delivered(&posthog, &mock).await;
    let exceptions = named(&events, "$exception");
    assert_eq!(exceptions.len(), 1, "the 500 adds none: {events:#?}");
    let exception = exceptions[0];
    assert_eq!(
        exception["properties"]["$exception_list"][0]["value"],
        "disk full"
    );
    assert_eq!(exception["distinct_id"], "user-3");
    let pageview = named(&events, "$pageview")[0];
    assert_eq!(
        pageview["properties"]["$exception_event_id"],
        exception["uuid"]
    );
}

#[tokio::test]
async fn a_panicking_handler_is_reported_and_the_panic_goes_on() {
    let mock = start_mock().await;
    let posthog = client(&mock);
    let addr = serve(app(&posthog).layer(posthog.layer())).await;

    // axum lets the panic unwind to the server, which drops the connection: no response.
    let response = send(addr, "GET", "/panics", "user-4").await;
    assert_eq!(response, "", "the panic was not turned into a response");
    // The server goes on serving.
    assert!(send(addr, "GET", "/ok", "user-4")
        .await
        .starts_with("HTTP/1.1 200"));

    let events = delivered(&posthog, &mock).await;
    let exceptions = named(&events, "$exception");
    assert_eq!(exceptions.len(), 1, "{events:#?}");
    let exception = exceptions[0];
    assert_eq!(exception["distinct_id"], "user-4");
    let p = &exception["properties"];
    let entry = &p["$exception_list"][0];
    assert_eq!(entry["type"], "Panic");
    assert_eq!(entry["value"], "the handler gave up");
    assert_eq!(
        entry["mechanism"],
        serde_json::json!({"type": "panic", "handled": false, "synthetic": false})
    );
    assert_eq!(p["$exception_level"], "fatal");
    assert_eq!(p["$route"], "/panics");
    // Only the successful request has a pageview: the panicked one has no response.
    assert_eq!(named(&events, "$pageview").len(), 1, "{events:#?}");
}

#[tokio::test]
async fn the_user_chooses_which_statuses_count_or_turns_it_off() {
    let mock = start_mock().await;
    let posthog = client(&mock);
    let counting_404 = posthog.layer().exception_statuses([404], []);
    let addr = serve(app(&posthog).layer(counting_404)).await;
    let off = serve(app(&posthog).layer(posthog.layer().capture_exceptions(false))).await;

    assert!(send(addr, "GET", "/missing", "u").await.contains(" 404 "));
    assert!(send(addr, "GET", "/orders/1", "u").await.contains(" 500 "));
    assert!(send(off, "GET", "/orders/2", "u").await.contains(" 500 "));
    assert_eq!(send(off, "GET", "/panics", "u").await, "");

    let events = delivered(&posthog, &mock).await;
    let exceptions = named(&events, "$exception");
    assert_eq!(exceptions.len(), 1, "{events:#?}");
    let entry = &exceptions[0]["properties"]["$exception_list"][0];
    assert_eq!(entry["type"], "HttpClientError");
    assert_eq!(entry["value"], "GET /missing answered 404 Not Found");
}

/// An error with a source, as an inner service (or a middleware such as a timeout) returns.
#[derive(Debug)]
struct Upstream(std::io::Error);

impl std::fmt::Display for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the upstream call failed")
    }
}

impl std::error::Error for Upstream {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.0)
    }
}

#[tokio::test]
async fn an_inner_service_error_is_reported_with_its_chain_and_passed_on() {
    let mock = start_mock().await;
    let posthog = client(&mock);
    let service = posthog.layer().layer(service_fn(|_: Request<()>| async {
        let error: BoxError = Box::new(Upstream(std::io::Error::other("connection reset")));
        Err::<Response<()>, BoxError>(error)
    }));
    let request = Request::post("/pay")
        .header("x-posthog-distinct-id", "user-5")
        .body(())
        .unwrap();
    let error = service.oneshot(request).await.expect_err("passed on");
    assert_eq!(error.to_string(), "the upstream call failed");

    let events = delivered(&posthog, &mock).await;
    let exceptions = named(&events, "$exception");
    assert_eq!(exceptions.len(), 1, "{events:#?}");
    assert_eq!(exceptions[0]["distinct_id"], "user-5");
    let list = exceptions[0]["properties"]["$exception_list"]
        .as_array()
        .expect("a list");
    let values: Vec<&str> = list.iter().filter_map(|e| e["value"].as_str()).collect();
    assert_eq!(values, ["the upstream call failed", "connection reset"]);
    assert_eq!(list[0]["type"], "Error");
    assert_eq!(list[0]["mechanism"]["handled"], false);
    assert_eq!(list[1]["mechanism"]["type"], "chained");

    // An error that is only `Display` is one entry named after its type.
    let service = posthog.layer().layer(service_fn(|_: Request<()>| async {
        Err::<Response<()>, String>("plain text failure".to_owned())
    }));
    let _ = service.oneshot(Request::new(())).await;
    let events = delivered(&posthog, &mock).await;
    let exceptions = named(&events, "$exception");
    assert_eq!(exceptions.len(), 2, "{events:#?}");
    let entry = &exceptions[1]["properties"]["$exception_list"][0];
    assert_eq!(entry["type"], "alloc::string::String");
    assert_eq!(entry["value"], "plain text failure");
}

#[tokio::test]
async fn failures_beyond_the_rate_limit_are_dropped_and_counted() {
    let mock = start_mock().await;
    let posthog = PostHog::builder(KEY)
        .host(mock.url())
        .exception_rate_limit(2, Duration::from_secs(3600))
        .build()
        .expect("client builds");
    let layer = posthog.layer().should_capture(|_: &RequestHead<'_>| false);
    let service = layer.layer(service_fn(|_: Request<()>| async {
        let mut response = Response::new(());
        *response.status_mut() = http::StatusCode::BAD_GATEWAY;
        Ok::<_, Infallible>(response)
    }));
    for _ in 0..5 {
        let response = service.clone().oneshot(Request::new(())).await.unwrap();
        assert_eq!(response.status(), 502);
    }
    let events = delivered(&posthog, &mock).await;
    assert_eq!(named(&events, "$exception").len(), 2, "{events:#?}");
    assert_eq!(posthog.stats().dropped.rate_limited, 3);
}

#[tokio::test]
async fn under_tower_https_catch_panic_the_panic_is_reported_once_and_answered_500() {
    let mock = start_mock().await;
    let posthog = client(&mock);
    let app = app(&posthog)
        .layer(posthog.layer())
        .layer(tower_http::catch_panic::CatchPanicLayer::new());
    let addr = serve(app).await;

    let response = send(addr, "GET", "/panics", "user-6").await;
    assert!(response.starts_with("HTTP/1.1 500"), "{response}");

    let events = delivered(&posthog, &mock).await;
    let exceptions = named(&events, "$exception");
    assert_eq!(exceptions.len(), 1, "{events:#?}");
    assert_eq!(exceptions[0]["distinct_id"], "user-6");
    assert_eq!(
        exceptions[0]["properties"]["$exception_list"][0]["value"],
        "the handler gave up"
    );
}
