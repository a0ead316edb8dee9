//! posthog-tower in an axum app: pageviews, the caller's identity from your own auth, flags
//! in handlers, events that inherit the request context, and a graceful shutdown that
//! delivers everything.
//!
//! ```text
//! cargo run --example axum            # offline: the mock PostHog, a few requests, then exit
//! cargo run --example axum -- --serve # keep serving on 127.0.0.1:3000 until Ctrl-C
//! ```
//!
//! With `POSTHOG_API_KEY` (and optionally `POSTHOG_HOST`) set, events go to that PostHog.

use std::{net::SocketAddr, time::Duration};

use axum::{
    extract::{Path, Request, State},
    middleware::{self, Next},
    routing::{get, post},
    Router,
};
use posthog_tower::{
    context::RequestContext,
    http::{DefaultMakeDistinctId, MakeDistinctId, RequestFlags, RequestHead},
    testing::{MockPostHog, MockResponse},
    Event, PostHog,
};
use serde_json::json;

/// The signed-in user, as an authentication layer of the application would insert it.
#[derive(Clone)]
struct User {
    id: String,
}

/// Stand-in for real authentication: `Authorization: Bearer <user id>`.
async fn authenticate(mut request: Request, next: Next) -> axum::response::Response {
    let user = request
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|id| User { id: id.to_owned() });
    if let Some(user) = user {
        request.extensions_mut().insert(user);
    }
    next.run(request).await
}

async fn home(flags: RequestFlags) -> String {
    // The first read evaluates the caller's flags (one /flags call, or none with local
    // evaluation); later reads in this request reuse the answer.
    match flags.get_flag("pricing-page").await {
        Some(variant) => format!("pricing page variant: {variant:?}"),
        None => "pricing page: default".to_owned(),
    }
}

async fn order(
    State(posthog): State<PostHog>,
    Path(id): Path<u32>,
    ctx: Option<RequestContext>,
) -> String {
    // `Event::named` takes the caller's distinct id, session id and URL from the request
    // context, across any `.await` in the handler.
    tokio::task::yield_now().await;
    let _ = posthog.capture(Event::named("order viewed").property("order_id", id));
    format!(
        "order {id} for {}",
        ctx.as_ref()
            .and_then(|c| c.distinct_id())
            .unwrap_or("an anonymous caller")
    )
}

async fn pay(State(posthog): State<PostHog>) -> &'static str {
    let _ = posthog.capture(Event::named("payment submitted"));
    "paid"
}

fn app(posthog: &PostHog) -> Router {
    let posthog_layer = posthog
        .layer()
        // Your own users first, then the posthog-js header or cookie.
        .distinct_id(
            (|req: &RequestHead<'_>| req.extensions().get::<User>().map(|u| u.id.clone()))
                .or(DefaultMakeDistinctId),
        )
        // Evaluated as soon as a request arrives, concurrently with the handler.
        .eager_flags(["pricing-page"]);
    Router::new()
        .route("/", get(home))
        .route("/orders/{id}", get(order))
        .route("/pay", post(pay))
        .with_state(posthog.clone())
        // Layers run bottom-up: authentication before PostHog.
        .layer(posthog_layer)
        .layer(middleware::from_fn(authenticate))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let serve_forever = std::env::args().any(|a| a == "--serve");
    let key = std::env::var("POSTHOG_API_KEY")
        .ok()
        .filter(|k| !k.trim().is_empty());
    let mock = match key {
        Some(_) => None,
        None => Some(MockPostHog::start().await?),
    };
    let builder = match (&key, &mock) {
        (Some(key), _) => PostHog::builder(key.as_str()).host(
            std::env::var("POSTHOG_HOST").unwrap_or_else(|_| posthog_tower::DEFAULT_HOST.into()),
        ),
        (None, Some(mock)) => {
            mock.set_default(
                "/flags/",
                MockResponse::json(
                    200,
                    json!({"flags": {"pricing-page": {"key": "pricing-page", "enabled": true, "variant": "annual-first"}}}),
                ),
            );
            PostHog::builder("phc_example").host(mock.url())
        }
        (None, None) => unreachable!("a mock is started when no key is set"),
    };
    let posthog = builder.build()?;

    let addr: SocketAddr = if serve_forever {
        ([127, 0, 0, 1], 3000).into()
    } else {
        ([127, 0, 0, 1], 0).into()
    };
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let app = app(&posthog);
    let server = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = stopped.await;
            })
            .await
    });
    println!("listening on http://{addr}");

    if serve_forever {
        tokio::signal::ctrl_c().await?;
    } else {
        for (method, path, auth) in [
            ("GET", "/", None),
            ("GET", "/", Some("user-42")),
            ("GET", "/orders/7", Some("user-42")),
            ("POST", "/pay", Some("user-42")),
            ("GET", "/orders/8", None),
        ] {
            let body = call(addr, method, path, auth).await?;
            println!("{method} {path} (user {auth:?}) -> {body}");
        }
    }

    // Stop taking requests, let in-flight ones finish, then deliver every event.
    let _ = stop.send(());
    server.await??;
    let report = posthog.shutdown(Duration::from_secs(10)).await;
    println!(
        "shutdown: {} delivered, {} failed, {} dropped",
        report.delivered, report.failed, report.dropped
    );
    if let Some(mock) = mock {
        for event in mock.events() {
            println!(
                "  {:<18} {:<40} {}",
                event["event"].as_str().unwrap_or("?"),
                event["distinct_id"],
                event["properties"]["$current_url"]
            );
        }
    }
    Ok(())
}

/// A minimal HTTP/1.1 client call.
async fn call(
    addr: SocketAddr,
    method: &str,
    path: &str,
    user: Option<&str>,
) -> Result<String, Box<dyn std::error::Error>> {
    use http_body_util::{BodyExt, Empty};
    use hyper_util::{client::legacy::Client, rt::TokioExecutor};

    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<bytes::Bytes>>();
    let mut request = http::Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"));
    if let Some(user) = user {
        request = request.header("authorization", format!("Bearer {user}"));
    }
    let response = client.request(request.body(Empty::new())?).await?;
    let body = response.into_body().collect().await?.to_bytes();
    Ok(String::from_utf8_lossy(&body).into_owned())
}
