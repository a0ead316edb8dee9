//! Error tracking, every path: an error captured by hand, a panic, failed requests behind the
//! HTTP layer, and a `tracing` error, each arriving as one `$exception`.
//!
//! ```text
//! cargo run --example errors
//! ```
//!
//! Offline: it starts the crate's mock PostHog on 127.0.0.1 and prints each `$exception` it
//! received (who, the entries of `$exception_list`, and where the stack starts in the
//! application).

use std::time::Duration;

use axum::{http::StatusCode, routing::get, Router};
use posthog_tower::{
    context::RequestContext,
    exception::{Exception, Level},
    integrations::tracing::PostHogTracingLayer,
    testing::MockPostHog,
    PostHog,
};
use serde_json::Value;
use tracing_subscriber::layer::SubscriberExt;

/// An application error with a source, as most are.
#[derive(Debug)]
struct PaymentError {
    order: u32,
    source: std::io::Error,
}

impl std::fmt::Display for PaymentError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "payment of order {} failed", self.order)
    }
}

impl std::error::Error for PaymentError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

fn charge(order: u32) -> Result<(), PaymentError> {
    Err(PaymentError {
        order,
        source: std::io::Error::new(std::io::ErrorKind::TimedOut, "the card network timed out"),
    })
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mock = MockPostHog::start().await?;
    let posthog = PostHog::builder("phc_errors_example")
        .host(mock.url())
        .capture_panics(true)
        .in_app_include(["errors"])
        .build()?;

    // 1. By hand: the error and its `source()` chain, the stack at the call, for the caller.
    if let Err(error) = charge(17) {
        posthog.capture_exception_with(
            Exception::new(&error)
                .distinct_id("user-1")
                .level(Level::Warning)
                .property("order", 17),
        )?;
    }

    // 2. A panic in a spawned task, inside a request context: the caller's unhandled, fatal
    //    exception, with the panic's location and stack.
    let ctx = RequestContext::new(Some("user-2".into()));
    let task = tokio::spawn(ctx.scope(async {
        let prices: Vec<u32> = Vec::new();
        prices[0]
    }));
    let _ = task.await;

    // 3. Behind the layer: a handler answering 500, and one that panics. One exception per
    //    request, the response unchanged.
    let app = Router::new()
        .route(
            "/orders/{id}",
            get(|| async { (StatusCode::INTERNAL_SERVER_ERROR, "try again") }),
        )
        .route(
            "/crash",
            get(|| async {
                if true {
                    panic!("the inventory is inconsistent");
                }
                "unreachable"
            }),
        )
        .layer(posthog.layer());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, app).await });
    for path in ["/orders/17", "/crash"] {
        let answer = get_status(addr, path, "user-3").await;
        println!("GET {path} -> {answer}");
    }

    // 4. `tracing`: an `error!` (here with an error field) becomes an exception.
    let subscriber = tracing_subscriber::registry().with(PostHogTracingLayer::new(posthog.clone()));
    tracing::subscriber::with_default(subscriber, || {
        if let Err(error) = charge(18) {
            tracing::error!(
                order = 18,
                error = &error as &dyn std::error::Error,
                "could not charge the order"
            );
        }
    });

    posthog.flush().await;
    println!();
    for event in mock.events() {
        if event["event"] == "$exception" {
            print_exception(&event);
        }
    }
    posthog.shutdown(Duration::from_secs(5)).await;
    Ok(())
}

/// Sends a GET over a fresh connection and returns the status line, or what happened.
async fn get_status(addr: std::net::SocketAddr, path: &str, caller: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut stream) = tokio::net::TcpStream::connect(addr).await else {
        return "no connection".into();
    };
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: shop.example\r\nX-POSTHOG-DISTINCT-ID: {caller}\r\n\
         Connection: close\r\n\r\n"
    );
    if stream.write_all(request.as_bytes()).await.is_err() {
        return "not sent".into();
    }
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response).await;
    let text = String::from_utf8_lossy(&response);
    match text.lines().next() {
        Some(line) if !line.is_empty() => line.to_owned(),
        _ => "no response (the panic closed the connection)".into(),
    }
}

fn print_exception(event: &Value) {
    let p = &event["properties"];
    println!(
        "$exception for {} (level {}{})",
        event["distinct_id"],
        p["$exception_level"],
        p["$route"]
            .as_str()
            .map(|r| format!(", route {r}"))
            .unwrap_or_default()
    );
    for entry in p["$exception_list"].as_array().into_iter().flatten() {
        println!(
            "    {} {}: {}",
            entry["mechanism"]["type"], entry["type"], entry["value"]
        );
        let frames = entry["stacktrace"]["frames"].as_array();
        // Frames are outermost first: the innermost in-app one is where it happened.
        if let Some(frame) = frames.and_then(|f| f.iter().rev().find(|f| f["in_app"] == true)) {
            println!(
                "        at {} ({}:{})",
                frame["function"].as_str().unwrap_or("?"),
                frame["filename"].as_str().unwrap_or("?"),
                frame["lineno"]
            );
        }
    }
}
