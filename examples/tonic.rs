//! gRPC with tonic: the PostHog layer on a tonic server, one event per RPC, the caller's
//! flags in the request extensions.
//!
//! ```text
//! cargo run --example tonic
//! ```
//!
//! It serves the standard gRPC health service (`tonic-health`, no code generation) on
//! 127.0.0.1 behind `posthog.layer()`, calls `Check` a few times with a tonic client, with and
//! without `x-posthog-distinct-id` metadata, and prints what PostHog received. Offline by
//! default: it starts the crate's mock PostHog. With `POSTHOG_API_KEY` set (and optionally
//! `POSTHOG_HOST`) the events go to that PostHog instead.
//!
//! # Reading flags in a handler
//!
//! The layer puts a [`RequestFlags`] and a [`RequestContext`] in the `http::Request`
//! extensions, and tonic hands them to your handler in `tonic::Request::extensions()`:
//!
//! ```ignore
//! #[tonic::async_trait]
//! impl Checkout for MyCheckout {
//!     async fn pay(&self, request: Request<PayRequest>) -> Result<Response<PayReply>, Status> {
//!         let flags = RequestFlags::from_extensions(request.extensions());
//!         let new_flow = match flags {
//!             Some(flags) => flags.is_enabled("new-payment-flow").await,
//!             None => false, // the layer is not installed
//!         };
//!         // Events captured here inherit the caller (the request context is current).
//!         self.posthog.capture(Event::named("payment started")).ok();
//!         // ...
//!     }
//! }
//! ```
//!
//! The health service is generated code we cannot edit, so this example reads them in
//! `LogCaller`, a small tower service wrapped around it. Clone what you need out of the
//! extensions before an `.await`: `tonic::body::Body` is not `Sync`, so a borrow of the request
//! held across an await makes the future `!Send`.

use std::{
    convert::Infallible,
    future::Future,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use http::{Extensions, Request};
use posthog_tower::{
    context::RequestContext,
    http::{RequestFlags, RequestHead},
    testing::{MockPostHog, MockResponse},
    PostHog,
};
use serde_json::json;
use tonic::{
    body::Body,
    server::NamedService,
    transport::{
        server::{TcpConnectInfo, TcpIncoming},
        Channel, Server,
    },
};
use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};
use tower::Service;

/// The flag the server reads for each caller.
const FLAG: &str = "grpc-beta";

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let real_key = std::env::var("POSTHOG_API_KEY")
        .ok()
        .filter(|k| !k.trim().is_empty());
    let mock = match real_key {
        Some(_) => None,
        None => Some(MockPostHog::start().await?),
    };
    let (api_key, host) = match (&real_key, &mock) {
        (Some(key), _) => (
            key.clone(),
            std::env::var("POSTHOG_HOST").unwrap_or_else(|_| posthog_tower::DEFAULT_HOST.into()),
        ),
        (None, Some(mock)) => ("phc_demo_project_key".to_owned(), mock.url()),
        (None, None) => unreachable!("a mock is started when no key is set"),
    };
    match &mock {
        Some(mock) => {
            // The mock's /flags turns the flag on for everyone.
            mock.set_default(
                "/flags/",
                MockResponse::json(
                    200,
                    json!({
                        "flags": {FLAG: {"key": FLAG, "enabled": true, "variant": null}},
                        "errorsWhileComputingFlags": false,
                        "requestId": "mock",
                    }),
                ),
            );
            println!("sending to the mock PostHog at {}\n", mock.url());
        }
        None => println!("sending to {host}\n"),
    }

    let posthog = PostHog::builder(api_key)
        .host(host)
        .on_error(|error| eprintln!("posthog error: {error}"))
        .build()?;

    // gRPC calls are not pageviews by default (the default predicate skips
    // `application/grpc`): capture every RPC, as `$grpc_request`.
    let layer = posthog
        .layer()
        .event_name("$grpc_request")
        .should_capture(|_: &RequestHead<'_>| true)
        .eager_flags([FLAG])
        .capture_ip(true)
        .client_ip_from(tonic_peer_ip);

    let (_reporter, health) = tonic_health::server::health_reporter();
    let incoming = TcpIncoming::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))?;
    let addr = incoming.local_addr()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(
        Server::builder()
            .layer(layer)
            .add_service(LogCaller { inner: health })
            .serve_with_incoming_shutdown(incoming, async {
                let _ = stopped.await;
            }),
    );
    println!("gRPC health service on {addr}");

    let channel = Channel::from_shared(format!("http://{addr}"))?
        .connect()
        .await?;
    let mut client = HealthClient::new(channel);
    for (caller, session) in [
        (Some("user-42"), Some("session-1")),
        (Some("user-7"), None),
        (None, None),
    ] {
        let mut request = tonic::Request::new(HealthCheckRequest {
            service: String::new(),
        });
        if let Some(caller) = caller {
            request
                .metadata_mut()
                .insert("x-posthog-distinct-id", caller.parse()?);
        }
        if let Some(session) = session {
            request
                .metadata_mut()
                .insert("x-posthog-session-id", session.parse()?);
        }
        let status = client.check(request).await?.into_inner().status();
        println!(
            "[client] Check as {}: {status:?}",
            caller.unwrap_or("anonymous")
        );
    }

    let _ = stop.send(());
    server.await??;
    let report = posthog.flush().await;
    println!(
        "\nflush: {} delivered, {} failed, {} dropped",
        report.delivered, report.failed, report.dropped
    );

    if let Some(mock) = &mock {
        let events = mock.events();
        println!("PostHog received {} event(s):", events.len());
        for event in &events {
            println!(
                "{:<22} distinct_id={}",
                event["event"].as_str().unwrap_or("?"),
                event["distinct_id"]
            );
            let mut shown = serde_json::Map::new();
            if let Some(properties) = event["properties"].as_object() {
                for (key, value) in properties {
                    if !matches!(key.as_str(), "$lib" | "$lib_version" | "$geoip_disable") {
                        shown.insert(key.clone(), value.clone());
                    }
                }
            }
            println!("    {}", serde_json::Value::Object(shown));
        }
        println!(
            "/flags requests: {} (eager `{FLAG}`, one per identified caller)",
            mock.requests_to("/flags/").len()
        );
    }

    posthog.shutdown(Duration::from_secs(5)).await;
    Ok(())
}

/// tonic records the peer of a TCP connection as `TcpConnectInfo`, which the layer does not
/// know: tell it where to look.
fn tonic_peer_ip(extensions: &Extensions) -> Option<IpAddr> {
    extensions
        .get::<TcpConnectInfo>()?
        .remote_addr()
        .map(|addr| addr.ip())
}

/// Logs who called and whether [`FLAG`] is on for them, then calls the wrapped gRPC service.
#[derive(Clone)]
struct LogCaller<S> {
    inner: S,
}

/// Keeps the wrapped service's route (`/grpc.health.v1.Health/*`).
impl<S: NamedService> NamedService for LogCaller<S> {
    const NAME: &'static str = S::NAME;
}

impl<S> Service<Request<Body>> for LogCaller<S>
where
    S: Service<Request<Body>, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        // Call the instance that was polled ready; keep a fresh clone for the next request.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        // Owned copies: nothing borrowed from the request lives across the `.await`.
        let context = RequestContext::from_extensions(request.extensions()).cloned();
        let flags = RequestFlags::from_extensions(request.extensions());
        let method = request.uri().path().to_owned();
        Box::pin(async move {
            let caller = context
                .as_ref()
                .and_then(|c| c.distinct_id())
                .unwrap_or("anonymous")
                .to_owned();
            let beta = match &flags {
                Some(flags) => flags.is_enabled(FLAG).await,
                None => false,
            };
            println!("[server] {method} from {caller}: {FLAG} is {beta}");
            inner.call(request).await
        })
    }
}
