//! `FlushLayer`: what an invocation captured is delivered before its response is handed back,
//! and a slow PostHog delays the response by the timeout at most, over real HTTP to
//! `MockPostHog`.

use std::{convert::Infallible, time::Duration};

use http::{Request, Response};
use posthog_tower::{testing::MockResponse, Event, PostHog};
use serde_json::Value;
use tower::{service_fn, ServiceBuilder, ServiceExt};

use crate::support::{start_mock, KEY};

fn handler(
    posthog: &PostHog,
) -> impl tower::Service<Request<()>, Response = Response<&'static str>, Error = Infallible> + Clone
{
    let ph = posthog.clone();
    service_fn(move |_: Request<()>| {
        let ph = ph.clone();
        async move {
            ph.capture(Event::new("invoked", "user-1")).expect("queued");
            ph.capture(Event::new("invoked again", "user-1"))
                .expect("queued");
            Ok::<_, Infallible>(Response::new("done"))
        }
    })
}

#[tokio::test]
async fn the_response_comes_back_after_the_events_were_delivered() {
    let mock = start_mock().await;
    // A batch of 100 or 5 s: without the layer nothing would be sent yet.
    let posthog = PostHog::builder(KEY)
        .host(mock.url())
        .build()
        .expect("client");
    let service = ServiceBuilder::new()
        .layer(posthog.flush_layer())
        .service(handler(&posthog));

    let response = service.oneshot(Request::new(())).await.expect("answered");
    assert_eq!(*response.body(), "done");
    // Read at once: no flush here, the layer did it.
    let names: Vec<String> = mock
        .events()
        .iter()
        .map(|e| e["event"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(names, ["invoked", "invoked again"]);
    assert_eq!(mock.requests_to("/batch/").len(), 1, "one request for both");
}

#[tokio::test(start_paused = true)]
async fn a_slow_posthog_delays_the_response_by_the_timeout_at_most() {
    let mock = start_mock().await;
    mock.set_default(
        "/batch/",
        MockResponse::status(200).delay(Duration::from_secs(60)),
    );
    let posthog = PostHog::builder(KEY)
        .host(mock.url())
        .build()
        .expect("client");
    let service = ServiceBuilder::new()
        .layer(posthog.flush_layer().timeout(Duration::from_secs(2)))
        .service(handler(&posthog));

    let started = tokio::time::Instant::now();
    let response = service.oneshot(Request::new(())).await.expect("answered");
    let waited = started.elapsed();
    assert_eq!(*response.body(), "done", "the response is not failed");
    assert!(
        waited >= Duration::from_secs(2) && waited < Duration::from_secs(3),
        "waited {waited:?} (virtual time)"
    );
    assert_eq!(
        posthog.stats().delivered,
        0,
        "not delivered yet, still on its way"
    );
}

#[tokio::test]
async fn errors_pass_through_after_the_flush() {
    let mock = start_mock().await;
    let posthog = PostHog::builder(KEY)
        .host(mock.url())
        .build()
        .expect("client");
    let ph = posthog.clone();
    let failing = ServiceBuilder::new()
        .layer(posthog.flush_layer())
        .service(service_fn(move |_: Request<()>| {
            let ph = ph.clone();
            async move {
                ph.capture(Event::new("failed invocation", "user-1"))
                    .expect("queued");
                Err::<Response<()>, _>("boom")
            }
        }));
    let error = failing.oneshot(Request::new(())).await.expect_err("failed");
    assert_eq!(error, "boom");
    assert_eq!(
        mock.events().len(),
        1,
        "delivered before the error came back"
    );
}

/// The shape of `examples/lambda.rs`: a `lambda_http` handler behind `PostHogLayer` and
/// `FlushLayer`, driven as Lambda's runtime drives it (one request, then the response).
#[tokio::test]
async fn a_lambda_http_handler_delivers_before_its_invocation_returns() {
    use lambda_http::{service_fn as lambda_fn, Body, Error};

    let mock = start_mock().await;
    let posthog = PostHog::builder(KEY)
        .host(mock.url())
        .build()
        .expect("client");
    let ph = posthog.clone();
    let function = ServiceBuilder::new()
        .layer(posthog.flush_layer())
        .layer(posthog.layer())
        .service(lambda_fn(move |_: lambda_http::Request| {
            let ph = ph.clone();
            async move {
                ph.capture(Event::named("order looked up"))?;
                Ok::<_, Error>(Response::new(Body::from("order A-17")))
            }
        }));
    let request = http::Request::get("https://api.example.com/orders")
        .header("x-posthog-distinct-id", "user-1")
        .body(Body::Empty)
        .expect("request");
    let response = function.oneshot(request).await.expect("answered");
    assert_eq!(response.body().as_ref(), b"order A-17");
    // Read at once: the handler's event and the request's pageview arrived already.
    let events = mock.events();
    let names: Vec<&Value> = events.iter().map(|e| &e["event"]).collect();
    assert_eq!(names, ["order looked up", "$pageview"], "{events:#?}");
    assert!(events.iter().all(|e| e["distinct_id"] == "user-1"));
}
