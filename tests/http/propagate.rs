//! The caller's identity carried from one service to another: server A (behind
//! `PostHogLayer`) calls server B (behind `PostHogLayer` too) through a hyper-util client with
//! `PropagateContextLayer`, and B's events are the same person's, on loopback with
//! `MockPostHog` recording what arrived.

use std::net::SocketAddr;

use axum::{extract::State, routing::get, Router};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::{client::legacy::Client, rt::TokioExecutor};
use posthog_tower::{
    http::{PropagateContext, PropagateContextLayer},
    Event, PostHog,
};
use serde_json::Value;
use tokio::net::TcpListener;
use tower::{Layer, ServiceBuilder, ServiceExt};

/// The outbound client of server A.
type Outbound =
    PropagateContext<Client<hyper_util::client::legacy::connect::HttpConnector, Empty<Bytes>>>;

use crate::support::{start_mock, KEY};

async fn serve(app: Router) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await.expect("server runs") });
    addr
}

/// Server A: `/call` asks server B's `/lookup` through the propagating client, which allows
/// `allowed`.
async fn server_a(posthog: &PostHog, b: SocketAddr, allowed: &str) -> SocketAddr {
    let http = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let client = ServiceBuilder::new()
        .layer(PropagateContextLayer::new().allow_host(allowed))
        .service(http);
    let app = Router::new()
        .route(
            "/call",
            get(move |State(client): State<Outbound>| async move {
                let request = http::Request::get(format!("http://{b}/lookup"))
                    .body(Empty::<Bytes>::new())
                    .expect("request");
                let response = client.oneshot(request).await.expect("B answers");
                let body = response.into_body().collect().await.expect("body");
                String::from_utf8_lossy(&body.to_bytes()).into_owned()
            }),
        )
        .with_state(client)
        .layer(posthog.layer());
    serve(app).await
}

/// Server B: `/lookup` captures an event for whoever is calling, and says who that is.
async fn server_b(posthog: &PostHog) -> SocketAddr {
    let ph = posthog.clone();
    let app = Router::new()
        .route(
            "/lookup",
            get(move || {
                let ph = ph.clone();
                async move {
                    ph.capture(Event::named("order looked up")).expect("queued");
                    let ctx = posthog_tower::context::RequestContext::current();
                    format!("{:?}", ctx.as_ref().and_then(|c| c.distinct_id()))
                }
            }),
        )
        .layer(posthog.layer());
    serve(app).await
}

async fn call_a(a: SocketAddr) -> String {
    let http = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let request = http::Request::get(format!("http://{a}/call"))
        .header("x-posthog-distinct-id", "user-7")
        .header("x-posthog-session-id", "session-7")
        .header("x-posthog-window-id", "window-7")
        .body(Empty::new())
        .expect("request");
    let response = http.request(request).await.expect("A answers");
    let body = response.into_body().collect().await.expect("body");
    String::from_utf8_lossy(&body.to_bytes()).into_owned()
}

fn looked_up(events: &[Value]) -> Vec<&Value> {
    events
        .iter()
        .filter(|e| e["event"] == "order looked up")
        .collect()
}

#[tokio::test]
async fn an_allowed_service_sees_the_same_caller_and_session() {
    let mock = start_mock().await;
    let posthog = PostHog::builder(KEY)
        .host(mock.url())
        .build()
        .expect("client");
    let b = server_b(&posthog).await;
    let a = server_a(&posthog, b, "127.0.0.1").await;

    assert_eq!(call_a(a).await, "Some(\"user-7\")");
    posthog.flush().await;
    let events = mock.events();
    let found = looked_up(&events);
    assert_eq!(found.len(), 1, "{events:#?}");
    assert_eq!(found[0]["distinct_id"], "user-7");
    assert_eq!(found[0]["properties"]["$session_id"], "session-7");
    assert_eq!(found[0]["properties"]["$window_id"], "window-7");
}

#[tokio::test]
async fn a_host_not_allowed_gets_nothing() {
    let mock = start_mock().await;
    let posthog = PostHog::builder(KEY)
        .host(mock.url())
        .build()
        .expect("client");
    let b = server_b(&posthog).await;
    // Allowed: another port of the same host, and another host.
    let other_port = format!("127.0.0.1:{}", b.port().wrapping_add(1).max(1));
    let a = server_a(&posthog, b, &other_port).await;
    assert_eq!(call_a(a).await, "None");
    let a = server_a(&posthog, b, "localhost").await;
    assert_eq!(call_a(a).await, "None");

    posthog.flush().await;
    let events = mock.events();
    let found = looked_up(&events);
    assert_eq!(found.len(), 2, "{events:#?}");
    assert!(
        found.iter().all(|e| e["distinct_id"] != "user-7"),
        "{found:#?}"
    );
}

// ===== reqwest (feature `reqwest`) =====

/// Server A again, calling B with a `reqwest::Client` wrapped in `PropagateContext`.
async fn server_a_reqwest(posthog: &PostHog, b: SocketAddr, allowed: &str) -> SocketAddr {
    type Reqwest = PropagateContext<reqwest::Client>;
    let http = reqwest::Client::new();
    let client: Reqwest = PropagateContextLayer::new()
        .allow_host(allowed)
        .layer(http.clone());
    let app = Router::new()
        .route(
            "/call",
            get(
                move |State((http, client)): State<(reqwest::Client, Reqwest)>| async move {
                    let request = http
                        .get(format!("http://{b}/lookup"))
                        .build()
                        .expect("request");
                    let response = client.oneshot(request).await.expect("B answers");
                    response.text().await.expect("body")
                },
            ),
        )
        .with_state((http, client))
        .layer(posthog.layer());
    serve(app).await
}

#[tokio::test]
async fn reqwest_carries_the_caller_to_an_allowed_service() {
    let mock = start_mock().await;
    let posthog = PostHog::builder(KEY)
        .host(mock.url())
        .build()
        .expect("client");
    let b = server_b(&posthog).await;
    let a = server_a_reqwest(&posthog, b, "127.0.0.1").await;

    assert_eq!(call_a(a).await, "Some(\"user-7\")");
    posthog.flush().await;
    let events = mock.events();
    let found = looked_up(&events);
    assert_eq!(found.len(), 1, "{events:#?}");
    assert_eq!(
        found[0]["distinct_id"], "user-7",
        "B's event is A's caller's"
    );
    assert_eq!(found[0]["properties"]["$session_id"], "session-7");
    assert_eq!(found[0]["properties"]["$window_id"], "window-7");
}

#[tokio::test]
async fn reqwest_to_a_host_not_allowed_carries_nothing() {
    let mock = start_mock().await;
    let posthog = PostHog::builder(KEY)
        .host(mock.url())
        .build()
        .expect("client");
    // B records the headers it received.
    let (seen_tx, mut seen) = tokio::sync::mpsc::unbounded_channel();
    let app = Router::new().route(
        "/lookup",
        get(move |headers: http::HeaderMap| {
            let seen_tx = seen_tx.clone();
            async move {
                let ids: Vec<String> = headers
                    .keys()
                    .map(|name| name.as_str().to_owned())
                    .filter(|name| name.starts_with("x-posthog"))
                    .collect();
                let _ = seen_tx.send(ids);
                "ok"
            }
        }),
    );
    let b = serve(app).await;
    let a = server_a_reqwest(&posthog, b, "localhost").await;
    assert_eq!(call_a(a).await, "ok");
    let other_port = format!("127.0.0.1:{}", b.port().wrapping_add(1).max(1));
    let a = server_a_reqwest(&posthog, b, &other_port).await;
    assert_eq!(call_a(a).await, "ok");
    for _ in 0..2 {
        assert_eq!(
            seen.recv().await.expect("B was called"),
            Vec::<String>::new()
        );
    }
}
