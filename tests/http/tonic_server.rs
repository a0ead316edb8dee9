//! The HTTP layer under a real tonic server, called by a real tonic client on 127.0.0.1: the
//! gRPC request event, the default predicate skipping gRPC, fail-open flags, the extensions an
//! inner service and a handler see, and the peer address from tonic's `TcpConnectInfo`.

use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::task::{Context, Poll};

use http::{Extensions, Request, Response};
use posthog_tower::context::RequestContext;
use posthog_tower::http::{MakeDistinctId, PostHogLayer, RequestFlags, RequestHead, ShouldCapture};
use posthog_tower::testing::{MockPostHog, MockResponse};
use posthog_tower::{Event, PostHog};
use serde_json::Value;
use tokio::sync::mpsc;
use tonic::body::Body;
use tonic::server::NamedService;
use tonic::transport::server::{TcpConnectInfo, TcpIncoming};
use tonic::transport::{Channel, Server};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::health_server::{Health, HealthServer};
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};

use crate::support::{start_mock, KEY, WAIT};

const CHECK_PATH: &str = "/grpc.health.v1.Health/Check";
const SERVING: i32 = ServingStatus::Serving as i32;

// ===== helpers =====

/// A client that sends every event as soon as it is captured.
fn client(mock: &MockPostHog) -> PostHog {
    PostHog::builder(KEY)
        .host(mock.url())
        .flush_at(1)
        .build()
        .unwrap()
}

/// Every RPC is an event.
fn every_rpc(_: &RequestHead<'_>) -> bool {
    true
}

/// The peer address tonic records for TCP connections.
fn tonic_peer_ip(ext: &Extensions) -> Option<IpAddr> {
    ext.get::<TcpConnectInfo>()?.remote_addr().map(|a| a.ip())
}

/// Serves `service` behind `layer` on a free port of 127.0.0.1 and returns a connected client.
///
/// Generic over the layer's resolver and predicate: this also proves that `PostHogLayer`
/// meets `Server::layer`'s bounds (error type, response body, `Clone`, `Send`) for any of them.
async fn serve<M, P, S>(layer: PostHogLayer<M, P>, service: S) -> HealthClient<Channel>
where
    M: MakeDistinctId + Clone + Send + Sync + 'static,
    P: ShouldCapture + Clone + Send + Sync + 'static,
    S: tower::Service<Request<Body>, Response = Response<Body>, Error = Infallible>
        + NamedService
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
{
    let incoming = TcpIncoming::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).unwrap();
    let addr = incoming.local_addr().unwrap();
    let server = Server::builder()
        .layer(layer)
        .add_service(service)
        .serve_with_incoming(incoming);
    tokio::spawn(async move { server.await.unwrap() });
    let channel = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    HealthClient::new(channel)
}

/// The standard health service (reports the server as serving).
fn health() -> HealthServer<impl Health> {
    tonic_health::server::health_reporter().1
}

/// Calls Check, with `x-posthog-distinct-id` metadata when `caller` is set, and returns the
/// serving status. A hang fails the test instead of waiting forever.
async fn check(client: &mut HealthClient<Channel>, caller: Option<&str>) -> i32 {
    let mut request = tonic::Request::new(HealthCheckRequest {
        service: String::new(),
    });
    if let Some(caller) = caller {
        request
            .metadata_mut()
            .insert("x-posthog-distinct-id", caller.parse().unwrap());
    }
    let response = tokio::time::timeout(WAIT, client.check(request))
        .await
        .expect("the RPC completes")
        .expect("the RPC succeeds");
    response.into_inner().status
}

/// Captures a marker event and flushes. The layer captures an RPC's event before its response
/// is sent, so once the marker (captured after the response arrived) is delivered, every
/// event of earlier RPCs has been delivered too. Returns the events before the marker.
async fn events_before_marker(posthog: &PostHog, mock: &MockPostHog) -> Vec<Value> {
    posthog
        .capture(Event::new("marker", "test-runner"))
        .unwrap();
    let report = posthog.flush().await;
    assert_eq!(report.failed, 0, "{report:?}");
    let mut events = mock.events();
    let marker = events.pop().expect("the marker arrived");
    assert_eq!(marker["event"], "marker", "the marker is the last event");
    events
}

/// What an inner service found in a request's extensions.
#[derive(Debug)]
struct Seen {
    context: Option<RequestContext>,
    flags: Option<RequestFlags>,
    current: Option<RequestContext>,
}

/// Wraps a gRPC service and reports what each request carries before delegating: a stand-in
/// for any tower middleware placed between the PostHog layer and the services.
#[derive(Clone)]
struct Inspect<S> {
    inner: S,
    seen: mpsc::UnboundedSender<Seen>,
}

impl<S: NamedService> NamedService for Inspect<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, B> tower::Service<Request<B>> for Inspect<S>
where
    S: tower::Service<Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let ext = request.extensions();
        let _ = self.seen.send(Seen {
            context: RequestContext::from_extensions(ext).cloned(),
            flags: RequestFlags::from_extensions(ext),
            current: RequestContext::current(),
        });
        self.inner.call(request)
    }
}

/// What a gRPC handler found in `tonic::Request::extensions()`.
#[derive(Debug)]
struct HandlerSaw {
    caller: Option<String>,
    flags_for: Option<String>,
    flag_x: Option<bool>,
    current_caller: Option<String>,
}

/// A hand-written health service whose handler reads the PostHog extensions, as an
/// application's own RPCs would.
#[derive(Clone)]
struct FlaggedHealth {
    seen: mpsc::UnboundedSender<HandlerSaw>,
}

#[tonic::async_trait]
impl Health for FlaggedHealth {
    async fn check(
        &self,
        request: tonic::Request<HealthCheckRequest>,
    ) -> Result<tonic::Response<HealthCheckResponse>, tonic::Status> {
        let flags = RequestFlags::from_extensions(request.extensions());
        let flag_x = match &flags {
            Some(flags) => Some(flags.is_enabled("x").await),
            None => None,
        };
        let _ = self.seen.send(HandlerSaw {
            caller: RequestContext::from_extensions(request.extensions())
                .and_then(|c| c.distinct_id().map(str::to_owned)),
            flags_for: flags.and_then(|f| f.distinct_id().map(str::to_owned)),
            flag_x,
            current_caller: RequestContext::current()
                .and_then(|c| c.distinct_id().map(str::to_owned)),
        });
        Ok(tonic::Response::new(HealthCheckResponse {
            status: SERVING,
        }))
    }

    type WatchStream =
        tonic::codegen::tokio_stream::Empty<Result<HealthCheckResponse, tonic::Status>>;

    async fn watch(
        &self,
        _: tonic::Request<HealthCheckRequest>,
    ) -> Result<tonic::Response<Self::WatchStream>, tonic::Status> {
        Err(tonic::Status::unimplemented("not in this test"))
    }
}

// ===== tests =====

#[tokio::test]
async fn an_rpc_is_one_event_for_the_caller() {
    let mock = start_mock().await;
    let posthog = client(&mock);
    let layer = posthog
        .layer()
        .event_name("$grpc_request")
        .should_capture(every_rpc);
    let mut grpc = serve(layer, health()).await;

    assert_eq!(check(&mut grpc, Some("user-1")).await, SERVING);

    let events = events_before_marker(&posthog, &mock).await;
    assert_eq!(events.len(), 1, "{events:#?}");
    let event = &events[0];
    assert_eq!(event["event"], "$grpc_request");
    assert_eq!(event["distinct_id"], "user-1");
    let props = &event["properties"];
    assert_eq!(props["$request_method"], "POST");
    assert_eq!(props["$pathname"], CHECK_PATH);
    assert_eq!(props["$request_path"], CHECK_PATH);
    assert_eq!(props["$response_status"], 200);
    assert!(props["$duration_ms"].is_number(), "{props}");
    assert!(
        props["$current_url"]
            .as_str()
            .is_some_and(|u| u.starts_with("http://127.0.0.1:") && u.ends_with(CHECK_PATH)),
        "{props}"
    );
    assert!(props.get("$ip").is_none(), "no $ip unless asked: {props}");
    assert!(
        props.get("$grpc_status").is_none(),
        "a success's status is in the trailers: {props}"
    );
}

#[tokio::test]
async fn a_failed_rpc_carries_its_grpc_status() {
    let mock = start_mock().await;
    let posthog = client(&mock);
    let layer = posthog
        .layer()
        .event_name("$grpc_request")
        .should_capture(every_rpc);
    let mut grpc = serve(layer, health()).await;

    let request = tonic::Request::new(HealthCheckRequest {
        service: "no.such.Service".into(),
    });
    let status = tokio::time::timeout(WAIT, grpc.check(request))
        .await
        .expect("the RPC completes")
        .expect_err("an unknown service is NOT_FOUND");
    assert_eq!(status.code(), tonic::Code::NotFound);

    let events = events_before_marker(&posthog, &mock).await;
    assert_eq!(events.len(), 1, "{events:#?}");
    let props = &events[0]["properties"];
    // HTTP says 200 for every gRPC call; the gRPC status tells the failure.
    assert_eq!(props["$response_status"], 200);
    assert_eq!(props["$grpc_status"], tonic::Code::NotFound as i32);
}

#[tokio::test]
async fn an_anonymous_rpc_is_personless() {
    let mock = start_mock().await;
    let posthog = client(&mock);
    let layer = posthog
        .layer()
        .event_name("$grpc_request")
        .should_capture(every_rpc);
    let mut grpc = serve(layer, health()).await;

    assert_eq!(check(&mut grpc, None).await, SERVING);

    let events = events_before_marker(&posthog, &mock).await;
    assert_eq!(events.len(), 1, "{events:#?}");
    assert_eq!(events[0]["event"], "$grpc_request");
    assert_eq!(events[0]["properties"]["$process_person_profile"], false);
}

#[tokio::test]
async fn the_default_predicate_skips_grpc() {
    let mock = start_mock().await;
    let posthog = client(&mock);
    let mut grpc = serve(posthog.layer(), health()).await;

    assert_eq!(check(&mut grpc, Some("user-1")).await, SERVING);
    assert_eq!(check(&mut grpc, None).await, SERVING);

    let events = events_before_marker(&posthog, &mock).await;
    assert!(
        events.is_empty(),
        "gRPC calls are not pageviews: {events:#?}"
    );
}

#[tokio::test]
async fn a_failing_flags_endpoint_does_not_affect_the_rpc() {
    let mock = start_mock().await;
    mock.set_default("/flags/", MockResponse::status(500));
    let posthog = client(&mock);
    let layer = posthog
        .layer()
        .event_name("$grpc_request")
        .should_capture(every_rpc)
        .eager_flags(["x"]);
    let (tx, mut rx) = mpsc::unbounded_channel();

    // The standard service: nobody reads the flag, the eager evaluation fails on its own.
    let mut grpc = serve(layer.clone(), health()).await;
    assert_eq!(check(&mut grpc, Some("user-1")).await, SERVING);
    mock.wait_for_requests("/flags/", 1, WAIT).await.unwrap();

    // A handler that reads the flag: it is off, and the RPC still succeeds.
    let mut grpc = serve(layer, HealthServer::new(FlaggedHealth { seen: tx })).await;
    assert_eq!(check(&mut grpc, Some("user-1")).await, SERVING);
    let saw = rx.recv().await.unwrap();
    assert_eq!(saw.flag_x, Some(false), "{saw:?}");

    let events = events_before_marker(&posthog, &mock).await;
    let rpcs: Vec<&Value> = events
        .iter()
        .filter(|e| e["event"] == "$grpc_request")
        .collect();
    assert_eq!(rpcs.len(), 2, "{events:#?}");
    for rpc in rpcs {
        assert_eq!(rpc["properties"]["$response_status"], 200);
    }
    assert!(posthog.stats().flag_errors >= 1);
}

#[tokio::test]
async fn an_inner_service_sees_the_context_and_flags() {
    let mock = start_mock().await;
    let posthog = client(&mock);
    let (tx, mut rx) = mpsc::unbounded_channel();
    let service = Inspect {
        inner: health(),
        seen: tx,
    };
    let mut grpc = serve(posthog.layer().capture_pageviews(false), service).await;

    assert_eq!(check(&mut grpc, Some("user-1")).await, SERVING);
    let seen = rx.recv().await.unwrap();
    let context = seen.context.expect("a RequestContext in the extensions");
    assert_eq!(context.distinct_id(), Some("user-1"));
    assert_eq!(context.method(), Some("POST"));
    assert_eq!(context.path(), Some(CHECK_PATH));
    let flags = seen.flags.expect("RequestFlags in the extensions");
    assert_eq!(flags.distinct_id(), Some("user-1"));
    let current = seen
        .current
        .expect("the context is current in the inner service");
    assert_eq!(current.distinct_id(), Some("user-1"));

    assert_eq!(check(&mut grpc, None).await, SERVING);
    let seen = rx.recv().await.unwrap();
    assert!(seen.context.expect("a context").is_anonymous());
    assert_eq!(seen.flags.expect("flags").distinct_id(), None);

    // Lazy flags, nobody read them, no pageviews: PostHog heard nothing.
    let events = events_before_marker(&posthog, &mock).await;
    assert!(events.is_empty(), "{events:#?}");
    assert!(mock.requests_to("/flags/").is_empty());
}

#[tokio::test]
async fn a_handler_reads_the_extensions_through_tonic_request() {
    let mock = start_mock().await;
    mock.set_default(
        "/flags/",
        MockResponse::json(
            200,
            serde_json::json!({
                "flags": {"x": {"key": "x", "enabled": true, "variant": null}},
                "errorsWhileComputingFlags": false,
                "requestId": "req-1",
            }),
        ),
    );
    let posthog = client(&mock);
    let (tx, mut rx) = mpsc::unbounded_channel();
    let layer = posthog
        .layer()
        .event_name("$grpc_request")
        .should_capture(every_rpc);
    let mut grpc = serve(layer, HealthServer::new(FlaggedHealth { seen: tx })).await;

    assert_eq!(check(&mut grpc, Some("user-1")).await, SERVING);
    let saw = rx.recv().await.unwrap();
    assert_eq!(saw.caller.as_deref(), Some("user-1"), "{saw:?}");
    assert_eq!(saw.flags_for.as_deref(), Some("user-1"), "{saw:?}");
    assert_eq!(saw.flag_x, Some(true), "{saw:?}");
    assert_eq!(saw.current_caller.as_deref(), Some("user-1"), "{saw:?}");

    // The flag read while handling the RPC is on its event.
    let events = events_before_marker(&posthog, &mock).await;
    let rpc = events
        .iter()
        .find(|e| e["event"] == "$grpc_request")
        .unwrap_or_else(|| panic!("no $grpc_request in {events:#?}"));
    assert_eq!(rpc["properties"]["$feature/x"], true, "{rpc}");
}

#[tokio::test]
async fn client_ip_from_tcp_connect_info() {
    let mock = start_mock().await;
    let posthog = client(&mock);
    let layer = posthog
        .layer()
        .event_name("$grpc_request")
        .should_capture(every_rpc)
        .capture_ip(true)
        .client_ip_from(tonic_peer_ip);
    let mut grpc = serve(layer, health()).await;

    assert_eq!(check(&mut grpc, Some("user-1")).await, SERVING);

    let events = events_before_marker(&posthog, &mock).await;
    assert_eq!(events.len(), 1, "{events:#?}");
    assert_eq!(events[0]["properties"]["$ip"], "127.0.0.1");
}

#[tokio::test]
async fn without_client_ip_from_tonic_peers_have_no_ip() {
    let mock = start_mock().await;
    let posthog = client(&mock);
    let layer = posthog
        .layer()
        .event_name("$grpc_request")
        .should_capture(every_rpc)
        .capture_ip(true);
    let mut grpc = serve(layer, health()).await;

    assert_eq!(check(&mut grpc, Some("user-1")).await, SERVING);

    let events = events_before_marker(&posthog, &mock).await;
    assert_eq!(events.len(), 1, "{events:#?}");
    assert!(events[0]["properties"].get("$ip").is_none());
}

/// A health service whose every check fails with `INTERNAL`.
#[derive(Clone)]
struct BrokenHealth;

#[tonic::async_trait]
impl Health for BrokenHealth {
    async fn check(
        &self,
        _: tonic::Request<HealthCheckRequest>,
    ) -> Result<tonic::Response<HealthCheckResponse>, tonic::Status> {
        Err(tonic::Status::internal("the database is gone"))
    }

    type WatchStream =
        tonic::codegen::tokio_stream::Empty<Result<HealthCheckResponse, tonic::Status>>;

    async fn watch(
        &self,
        _: tonic::Request<HealthCheckRequest>,
    ) -> Result<tonic::Response<Self::WatchStream>, tonic::Status> {
        Err(tonic::Status::unimplemented("not in this test"))
    }
}

#[tokio::test]
async fn a_failing_rpc_is_one_exception_and_a_not_found_is_none() {
    let mock = start_mock().await;
    let posthog = client(&mock);
    let layer = posthog
        .layer()
        .event_name("$grpc_request")
        .should_capture(every_rpc);
    let mut broken = serve(layer.clone(), HealthServer::new(BrokenHealth)).await;
    let mut healthy = serve(layer, health()).await;

    let mut request = tonic::Request::new(HealthCheckRequest {
        service: String::new(),
    });
    request
        .metadata_mut()
        .insert("x-posthog-distinct-id", "user-9".parse().unwrap());
    let status = tokio::time::timeout(WAIT, broken.check(request))
        .await
        .expect("the RPC completes")
        .expect_err("INTERNAL");
    assert_eq!(status.code(), tonic::Code::Internal);
    assert_eq!(status.message(), "the database is gone", "unchanged");
    // NOT_FOUND is not a failure of the server by default.
    let unknown = tonic::Request::new(HealthCheckRequest {
        service: "no.such.Service".into(),
    });
    let status = healthy.check(unknown).await.expect_err("NOT_FOUND");
    assert_eq!(status.code(), tonic::Code::NotFound);

    let events = events_before_marker(&posthog, &mock).await;
    let exceptions: Vec<&Value> = events
        .iter()
        .filter(|e| e["event"] == "$exception")
        .collect();
    assert_eq!(exceptions.len(), 1, "{events:#?}");
    let exception = exceptions[0];
    assert_eq!(exception["distinct_id"], "user-9");
    let p = &exception["properties"];
    assert_eq!(p["$grpc_status"], tonic::Code::Internal as i32);
    let entry = &p["$exception_list"][0];
    assert_eq!(entry["type"], "GrpcError");
    assert_eq!(
        entry["value"],
        format!("{CHECK_PATH} answered gRPC status 13 (INTERNAL)")
    );
    let request_event = events
        .iter()
        .find(|e| e["event"] == "$grpc_request" && e["properties"]["$grpc_status"] == 13)
        .expect("the failed RPC's event");
    assert_eq!(
        request_event["properties"]["$exception_event_id"],
        exception["uuid"]
    );
}
