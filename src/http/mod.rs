//! The HTTP layer for axum, tonic and any tower HTTP server: who is calling, a pageview per
//! request, the caller's feature flags in the request extensions, and an `$exception` for each
//! request that fails.
//!
//! [`PostHogLayer`] (from [`PostHog::layer`](crate::PostHog::layer)) does it all; its parts also work alone:
//!
//! | middleware | what it does |
//! |---|---|
//! | [`SetRequestContext`] | resolves the caller ([`MakeDistinctId`]) and session, puts a [`RequestContext`](crate::context::RequestContext) in the extensions and makes it current for the handler, so `capture` inherits it |
//! | [`InjectFlags`] | puts a [`RequestFlags`] handle, which carries the request context, in the extensions (lazy, or eager for listed keys) |
//! | [`CapturePageviews`] | captures a `$pageview` when the response is ready, for the requests a [`ShouldCapture`] predicate selects |
//!
//! Each is generic over the request and response bodies and keeps the inner service's error
//! type, response and `poll_ready`; analytics fail open: nothing here changes a response,
//! returns an error, or waits for PostHog. Header and cookie values are untrusted: control
//! characters are removed, values are trimmed and cut to 1 000 characters, and invalid UTF-8
//! or malformed cookies are ignored.
//!
//! # Failed requests
//!
//! [`PostHogLayer`] captures one `$exception` per failed request
//! ([`capture_exceptions`](PostHogLayer::capture_exceptions), on by default): a handler that
//! panics (reported while the panic unwinds through the layer, which lets it go on, to
//! tower-http's `CatchPanic` or to the server), an inner service error (its `source()` chain
//! when it is a `BoxError`), a response whose status counts (5xx by default,
//! [`exception_statuses`](PostHogLayer::exception_statuses)), or, over HTTP/2, a trailers-only
//! gRPC response with a failing `grpc-status` (`UNKNOWN`, `INTERNAL`, `UNAVAILABLE`,
//! `DATA_LOSS` by default). A failing status is an `HttpServerError` (or `HttpClientError`,
//! `GrpcError`) whose value names the method, the route (or path) and the status, so PostHog
//! groups the failures of one route. An exception captured while handling the request (by hand
//! or by the panic hook, which has the panic's stack) is the request's: the layer adds none.
//! The request's pageview refers to it (`$exception_event_id`). This needs the service's error
//! type to be `Display` (axum's `Infallible`, tower's `BoxError` and tonic's are).
//!
//! # Who is calling
//!
//! By default ([`DefaultMakeDistinctId`]): the `X-POSTHOG-DISTINCT-ID` header, else the
//! `distinct_id` in posthog-js's cookie `ph_<project key>_posthog`, else nobody (an anonymous
//! caller, whose events are personless and whose flags are all off). The session id comes from
//! `X-POSTHOG-SESSION-ID` or the cookie. Use your own authentication with a closure:
//! `layer.distinct_id(|req: &RequestHead<'_>| ...)`. When it knows no caller and the
//! posthog-js cookie is present, [`PostHogLayer`] takes the cookie's anonymous distinct id
//! (and its `$device_id` for device-bucketed flags), as posthog-js's own events do.
//! [`PostHogLayer::flag_properties`] adds person properties and groups to the caller's flags.
//!
//! # Spawned tasks
//!
//! The request context is task-local: it follows the handler across `.await`s but not into
//! `tokio::spawn`ed tasks. Take it with [`RequestContext::current`](crate::context::RequestContext::current) (or
//! [`RequestContext::from_extensions`](crate::context::RequestContext::from_extensions)) and run the task inside [`RequestContext::scope`](crate::context::RequestContext::scope).
//!
//! # One extension entry
//!
//! [`PostHogLayer`] inserts one entry per request: the [`RequestFlags`], which carry the
//! request's [`RequestContext`](crate::context::RequestContext). Read the context with [`RequestContext::from_extensions`](crate::context::RequestContext::from_extensions) (or
//! the axum extractor), which finds it there or as an entry of its own
//! ([`SetRequestContext`]'s, or one you insert before the layer, which the layer then uses);
//! `extensions().get::<RequestContext>()` only finds the latter. Each entry costs an
//! allocation, and behind axum's router, which has already put two entries in the map, a second
//! one would also make the map grow.
//!
//! A context you insert yourself should be made for that request: the layers also record in
//! it that the request's pageview is taken (so stacked layers capture one), and a context
//! shared by several requests would give the first of them a pageview and the others none.
//!
//! # With axum
//!
//! ```
//! use axum::{routing::get, Router};
//! use posthog_tower::{http::RequestFlags, Event, PostHog};
//!
//! async fn home(flags: RequestFlags) -> &'static str {
//!     if flags.is_enabled("new-home").await {
//!         "new home"
//!     } else {
//!         "home"
//!     }
//! }
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let rt = tokio::runtime::Runtime::new()?;
//! # let _guard = rt.enter();
//! let posthog = PostHog::builder("phc_project_key").build()?;
//! let app: Router = Router::new()
//!     .route("/", get(home))
//!     .layer(posthog.layer().eager_flags(["new-home"]));
//! # Ok(())
//! # }
//! ```
//!
//! `Router::layer` wraps every route, after routing: pageviews get the matched route template
//! (`$route`), and axum boxes and clones the layered route for each request (two allocations,
//! whatever the layer). Wrapped around the whole `Router` instead, the layer runs before
//! routing, for every request including those no route matches, without that per-route cost
//! and without `$route`:
//!
//! ```
//! use axum::{routing::get, Router, ServiceExt};
//! use posthog_tower::PostHog;
//! use tower::Layer;
//!
//! # async fn serve() -> Result<(), Box<dyn std::error::Error>> {
//! let posthog = PostHog::builder("phc_project_key").build()?;
//! let app = posthog
//!     .layer()
//!     .capture_pageviews(false)
//!     .layer(Router::new().route("/", get(|| async { "home" })));
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! # let _ = async move {
//! axum::serve(listener, ServiceExt::<axum::extract::Request>::into_make_service(app)).await?;
//! # Ok::<(), std::io::Error>(()) };
//! # Ok(())
//! # }
//! ```
//!
//! # With tonic
//!
//! ```
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let rt = tokio::runtime::Runtime::new()?;
//! # let _guard = rt.enter();
//! let posthog = posthog_tower::PostHog::builder("phc_project_key").build()?;
//! let (_, health) = tonic_health::server::health_reporter();
//! let server = tonic::transport::Server::builder()
//!     // gRPC calls are not pageviews by default: name them as API requests.
//!     .layer(
//!         posthog
//!             .layer()
//!             .event_name("$grpc_request")
//!             .should_capture(|_: &posthog_tower::http::RequestHead<'_>| true)
//!             // tonic keeps the peer address in its own type.
//!             .capture_ip(true)
//!             .client_ip_from(|ext| {
//!                 let info = ext.get::<tonic::transport::server::TcpConnectInfo>()?;
//!                 info.remote_addr().map(|addr| addr.ip())
//!             }),
//!     )
//!     .add_service(health);
//! # drop(server);
//! # Ok(())
//! # }
//! ```
//!
//! Handlers read [`RequestFlags`] ([`RequestFlags::from_extensions`]) and [`RequestContext`](crate::context::RequestContext)
//! ([`RequestContext::from_extensions`](crate::context::RequestContext::from_extensions)) from `request.extensions()` (take them out before an
//! `.await`). Every gRPC call has HTTP status `200`; a call that fails
//! before answering also gets `$grpc_status`. `examples/tonic.rs` runs all of it.

mod capture_pageviews;
mod cookie;
mod exceptions;
#[cfg(feature = "axum")]
mod extract;
mod flag_inputs;
mod flush;
mod head;
mod identity;
mod inject_flags;
mod layer;
mod predicate;
mod propagate;
mod request_flags;
mod sanitize;
mod set_context;
mod url;

pub use capture_pageviews::{CapturePageviews, CapturePageviewsFuture, CapturePageviewsLayer};
pub use cookie::PostHogCookie;
#[cfg(feature = "axum")]
pub use extract::MissingPostHogLayer;
pub use flag_inputs::{FlagInputs, MakeFlagInputs};
pub use flush::{Flush, FlushFuture, FlushLayer};
pub use head::{RequestHead, DISTINCT_ID_HEADER, SESSION_ID_HEADER, WINDOW_ID_HEADER};
pub use identity::{DefaultMakeDistinctId, MakeDistinctId, Or};
pub use inject_flags::{InjectFlags, InjectFlagsLayer};
pub use layer::{PostHogFuture, PostHogLayer, PostHogService};
pub use predicate::{And, DefaultShouldCapture, ShouldCapture};
pub use propagate::{PropagateContext, PropagateContextLayer};
pub use request_flags::RequestFlags;
pub use sanitize::MAX_ID_CHARS;
pub use set_context::{SetRequestContext, SetRequestContextFuture, SetRequestContextLayer};
