//! An AWS Lambda function (through `lambda_http`, a tower service) that captures events for
//! its caller and delivers them before each invocation returns, with `FlushLayer`.
//!
//! ```text
//! cargo run --example lambda
//! ```
//!
//! In Lambda (`AWS_LAMBDA_RUNTIME_API` set) it serves invocations with `lambda_http::run`.
//! Anywhere else it runs offline: it calls the same handler service with two API Gateway
//! requests, against the crate's mock PostHog, and prints what PostHog had received by the
//! time each invocation returned.

use std::{collections::HashMap, time::Duration};

use lambda_http::{service_fn, Body, Error, Request, RequestExt, Response};
use posthog_tower::{testing::MockPostHog, Event, PostHog};
use tower::{Service, ServiceBuilder, ServiceExt};

/// The function: an order lookup that captures one event for whoever calls it.
async fn handle(posthog: PostHog, request: Request) -> Result<Response<Body>, Error> {
    let order = request
        .query_string_parameters_ref()
        .and_then(|q| q.first("order"))
        .unwrap_or("unknown")
        .to_owned();
    // The caller comes from the request context `PostHogLayer` set (X-POSTHOG-DISTINCT-ID).
    posthog.capture(Event::named("order looked up").property("order", &order))?;
    Ok(Response::new(Body::from(format!("order {order}"))))
}

/// The handler service: the layer for the caller and a pageview-like event per invocation,
/// and the flush after each response.
fn handler(
    posthog: &PostHog,
) -> impl Service<Request, Response = Response<Body>, Error = Error, Future: Send> + Clone + Send {
    let ph = posthog.clone();
    ServiceBuilder::new()
        .layer(posthog.flush_layer().timeout(Duration::from_secs(2)))
        .layer(
            posthog
                .layer()
                .event_name("$http_request")
                .should_capture(|_: &posthog_tower::http::RequestHead<'_>| true),
        )
        .service(service_fn(move |request| handle(ph.clone(), request)))
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    if std::env::var_os("AWS_LAMBDA_RUNTIME_API").is_some() {
        let key = std::env::var("POSTHOG_API_KEY").unwrap_or_default();
        let posthog = PostHog::builder(key).build()?;
        return lambda_http::run(handler(&posthog)).await;
    }

    let mock = MockPostHog::start().await?;
    let posthog = PostHog::builder("phc_lambda_example")
        .host(mock.url())
        .build()?;
    let service = handler(&posthog);
    for (caller, order) in [("user-1", "A-17"), ("user-2", "B-3")] {
        let request = http::Request::get(format!("https://api.example.com/orders?order={order}"))
            .header("x-posthog-distinct-id", caller)
            .body(Body::Empty)?
            .with_query_string_parameters(HashMap::from([("order".to_owned(), order.to_owned())]));
        let response = service.clone().oneshot(request).await?;
        let body = String::from_utf8_lossy(response.body().as_ref()).into_owned();
        println!("invocation for {caller} answered {:?}", body);
        println!("  PostHog had received by then:");
        for event in mock.events() {
            println!(
                "    {} for {} ({})",
                event["event"], event["distinct_id"], event["properties"]["order"]
            );
        }
    }
    posthog.shutdown(Duration::from_secs(5)).await;
    Ok(())
}
