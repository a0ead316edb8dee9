//! The HTTP layer for axum, tonic and any tower HTTP server: who is calling, a pageview per
//! request, and the caller's feature flags in the request extensions.
//!
//! [`PostHogLayer`] (from [`PostHog::layer`]) does it all; its parts also work alone:
//!
//! | middleware | what it does |
//! |---|---|
//! | [`SetRequestContext`] | resolves the caller ([`MakeDistinctId`]) and session, puts a [`RequestContext`] in the extensions and makes it current for the handler, so `capture` inherits it |
//! | [`InjectFlags`] | puts a [`RequestFlags`] handle, which carries the request context, in the extensions (lazy, or eager for listed keys) |
//! | [`CapturePageviews`] | captures a `$pageview` when the response is ready, for the requests a [`ShouldCapture`] predicate selects |
//!
//! Each is generic over the request and response bodies and keeps the inner service's error
//! type, response and `poll_ready`; analytics fail open: nothing here changes a response,
//! returns an error, or waits for PostHog. Header and cookie values are untrusted: control
//! characters are removed, values are trimmed and cut to 1 000 characters, and invalid UTF-8
//! or malformed cookies are ignored.
//!
//! # Who is calling
//!
//! By default ([`DefaultMakeDistinctId`]): the `X-POSTHOG-DISTINCT-ID` header, else the
//! `distinct_id` in posthog-js's cookie `ph_<project key>_posthog`, else nobody (an anonymous
//! caller, whose events are personless and whose flags are all off). The session id comes from
//! `X-POSTHOG-SESSION-ID` or the cookie. Use your own authentication with a closure:
//! `layer.distinct_id(|req: &RequestHead<'_>| ...)`.
//!
//! # Spawned tasks
//!
//! The request context is task-local: it follows the handler across `.await`s but not into
//! `tokio::spawn`ed tasks. Take it with [`RequestContext::current`] (or
//! [`RequestContext::from_extensions`]) and run the task inside [`RequestContext::scope`].
//!
//! # One extension entry
//!
//! [`PostHogLayer`] inserts one entry per request: the [`RequestFlags`], which carry the
//! request's [`RequestContext`]. Read the context with [`RequestContext::from_extensions`] (or
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
//! Handlers read [`RequestFlags`] ([`RequestFlags::from_extensions`]) and [`RequestContext`]
//! ([`RequestContext::from_extensions`]) from `request.extensions()` (take them out before an
//! `.await`). Every gRPC call has HTTP status `200`; a call that fails
//! before answering also gets `$grpc_status`. `examples/tonic.rs` runs all of it.

mod capture_pageviews;
#[cfg(feature = "axum")]
mod extract;
mod identity;
mod inject_flags;
mod predicate;
mod request_flags;
mod set_context;
mod url;

use std::{
    fmt,
    future::Future,
    net::IpAddr,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use http::{Extensions, Request, Response};
use tower_layer::Layer;
use tower_service::Service;

pub use capture_pageviews::{CapturePageviews, CapturePageviewsLayer};
#[cfg(feature = "axum")]
pub use extract::MissingPostHogLayer;
pub use identity::{
    DefaultMakeDistinctId, MakeDistinctId, Or, PostHogCookie, RequestHead, DISTINCT_ID_HEADER,
    MAX_ID_CHARS, SESSION_ID_HEADER,
};
pub use inject_flags::{InjectFlags, InjectFlagsLayer};
pub use predicate::{And, DefaultShouldCapture, ShouldCapture};
use request_flags::FlagSource;
pub use request_flags::RequestFlags;
pub use set_context::{SetRequestContext, SetRequestContextLayer};

use set_context::ContextConfig;

pub use crate::context::RequestContext;
use crate::context::Scoped;
use crate::PostHog;

/// Response futures of the middlewares, by middleware.
pub mod future {
    pub use super::capture_pageviews::ResponseFuture as CapturePageviewsFuture;
    pub use super::set_context::ResponseFuture as SetRequestContextFuture;
    pub use super::PostHogFuture;
}

impl PostHog {
    /// The HTTP layer for this client, with its defaults: callers resolved by
    /// [`DefaultMakeDistinctId`], a `$pageview` for each request [`DefaultShouldCapture`]
    /// selects, lazy [`RequestFlags`]. See the [`http`](crate::http) module.
    pub fn layer(&self) -> PostHogLayer {
        PostHogLayer::new(self)
    }
}

/// Everything the HTTP layer does, in one layer: the [request context](SetRequestContext),
/// [flags in the extensions](InjectFlags) and [pageviews](CapturePageviews).
///
/// A cheap, `Clone` configuration; build it with [`PostHog::layer`] and its methods. See the
/// [module docs](self).
#[derive(Clone)]
pub struct PostHogLayer<M = DefaultMakeDistinctId, P = DefaultShouldCapture> {
    posthog: PostHog,
    make: M,
    predicate: P,
    pageviews: bool,
    event_name: Arc<str>,
    eager: Option<Arc<[String]>>,
    config: ContextConfig,
}

impl PostHogLayer {
    /// The layer with its defaults (same as [`PostHog::layer`]).
    pub fn new(posthog: &PostHog) -> Self {
        PostHogLayer {
            posthog: posthog.clone(),
            make: DefaultMakeDistinctId,
            predicate: DefaultShouldCapture,
            pageviews: true,
            event_name: Arc::from("$pageview"),
            eager: None,
            config: ContextConfig::new(posthog),
        }
    }
}

impl<M, P> PostHogLayer<M, P> {
    /// Resolves callers with `make` (a closure `FnMut(&RequestHead<'_>) -> Option<String>` or
    /// any [`MakeDistinctId`]). Chain [`DefaultMakeDistinctId`] with
    /// [`or`](MakeDistinctId::or) to fall back to the posthog-js header and cookie.
    ///
    /// ```
    /// # fn f(posthog: posthog_tower::PostHog) {
    /// use posthog_tower::http::{DefaultMakeDistinctId, MakeDistinctId, RequestHead};
    ///
    /// #[derive(Clone)]
    /// struct UserId(String);
    ///
    /// let layer = posthog.layer().distinct_id(
    ///     (|req: &RequestHead<'_>| req.extensions().get::<UserId>().map(|u| u.0.clone()))
    ///         .or(DefaultMakeDistinctId),
    /// );
    /// # }
    /// ```
    pub fn distinct_id<M2>(self, make: M2) -> PostHogLayer<M2, P>
    where
        M2: MakeDistinctId + Clone,
    {
        PostHogLayer {
            posthog: self.posthog,
            make,
            predicate: self.predicate,
            pageviews: self.pageviews,
            event_name: self.event_name,
            eager: self.eager,
            config: self.config,
        }
    }

    /// Captures pageviews for the requests `predicate` selects (a closure
    /// `Fn(&RequestHead<'_>) -> bool` or any [`ShouldCapture`]) instead of
    /// [`DefaultShouldCapture`]'s.
    pub fn should_capture<P2>(self, predicate: P2) -> PostHogLayer<M, P2>
    where
        P2: ShouldCapture + Clone,
    {
        PostHogLayer {
            posthog: self.posthog,
            make: self.make,
            predicate,
            pageviews: self.pageviews,
            event_name: self.event_name,
            eager: self.eager,
            config: self.config,
        }
    }

    /// Whether to capture pageviews at all (default `true`). Without them the layer still
    /// sets the request context and the flags.
    #[must_use]
    pub fn capture_pageviews(mut self, enabled: bool) -> Self {
        self.pageviews = enabled;
        self
    }

    /// The pageview event's name (default `$pageview`; `$http_request` suits APIs).
    #[must_use]
    pub fn event_name(mut self, name: impl Into<String>) -> Self {
        self.event_name = Arc::from(name.into());
        self
    }

    /// Evaluates these flags as soon as each request arrives, concurrently with the handler
    /// (locally and synchronously when definitions decide them). Other keys stay lazy.
    #[must_use]
    pub fn eager_flags<I, K>(mut self, keys: I) -> Self
    where
        I: IntoIterator<Item = K>,
        K: Into<String>,
    {
        let keys: Vec<String> = keys.into_iter().map(Into::into).collect();
        self.eager = (!keys.is_empty()).then(|| keys.into());
        self
    }

    /// Trusts `X-Forwarded-Proto`, `X-Forwarded-Host`, `X-Forwarded-For`, `X-Real-IP` and
    /// `Forwarded` (default `false`). Turn it on only behind a proxy you control that sets
    /// them: otherwise any client can forge its URL and address.
    #[must_use]
    pub fn trust_proxy_headers(mut self, trust: bool) -> Self {
        self.config.trust_proxy = trust;
        self
    }

    /// Sends the caller's IP address as `$ip` (default `false`): from a trusted forwarding
    /// header, else the peer address (axum's `ConnectInfo`, a `SocketAddr` extension, or
    /// [`client_ip_from`](Self::client_ip_from)). PostHog uses it for geolocation; the
    /// client's [`disable_geoip`](crate::PostHogBuilder::disable_geoip) still applies.
    #[must_use]
    pub fn capture_ip(mut self, capture: bool) -> Self {
        self.config.capture_ip = capture;
        self
    }

    /// Where to find the peer address in the extensions when the server stores it in its own
    /// type (tonic's `TcpConnectInfo`, for example).
    #[must_use]
    pub fn client_ip_from(mut self, f: fn(&Extensions) -> Option<IpAddr>) -> Self {
        self.config.client_ip = Some(f);
        self
    }
}

impl<M: fmt::Debug, P: fmt::Debug> fmt::Debug for PostHogLayer<M, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostHogLayer")
            .field("make", &self.make)
            .field("predicate", &self.predicate)
            .field("pageviews", &self.pageviews)
            .field("event_name", &self.event_name)
            .field("eager", &self.eager)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl<S, M, P> Layer<S> for PostHogLayer<M, P>
where
    M: Clone,
    P: Clone,
{
    type Service = PostHogService<S, M, P>;

    fn layer(&self, inner: S) -> Self::Service {
        PostHogService {
            inner,
            make: self.make.clone(),
            shared: Arc::new(Shared {
                predicate: self.predicate.clone(),
                pageviews: self.pageviews,
                event_name: self.event_name.clone(),
                flags: FlagSource::new(self.posthog.clone(), self.eager.clone()),
                config: self.config.clone(),
            }),
        }
    }
}

/// What every clone of a [`PostHogService`] shares: one reference count per clone (axum clones
/// the service for every request).
struct Shared<P> {
    predicate: P,
    pageviews: bool,
    event_name: Arc<str>,
    /// Where the flags come from; its client also takes the pageviews.
    flags: Arc<FlagSource>,
    config: ContextConfig,
}

/// The service [`PostHogLayer`] produces: in one pass, what [`SetRequestContext`],
/// [`InjectFlags`] and [`CapturePageviews`] do, around your service.
///
/// See the [module docs](self).
pub struct PostHogService<S, M = DefaultMakeDistinctId, P = DefaultShouldCapture> {
    inner: S,
    make: M,
    shared: Arc<Shared<P>>,
}

impl<S: Clone, M: Clone, P> Clone for PostHogService<S, M, P> {
    fn clone(&self) -> Self {
        PostHogService {
            inner: self.inner.clone(),
            make: self.make.clone(),
            shared: self.shared.clone(),
        }
    }
}

impl<S, M, P> PostHogService<S, M, P> {
    define_inner_service_accessors!();
}

impl<S: fmt::Debug, M: fmt::Debug, P: fmt::Debug> fmt::Debug for PostHogService<S, M, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shared = &*self.shared;
        f.debug_struct("PostHogService")
            .field("inner", &self.inner)
            .field("make", &self.make)
            .field("predicate", &shared.predicate)
            .field("pageviews", &shared.pageviews)
            .field("event_name", &shared.event_name)
            .field("eager", &shared.flags.eager_keys())
            .field("config", &shared.config)
            .finish()
    }
}

impl<S, M, P, ReqBody, ResBody> Service<Request<ReqBody>> for PostHogService<S, M, P>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    M: MakeDistinctId,
    P: ShouldCapture,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = PostHogFuture<S::Future>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<ReqBody>) -> Self::Future {
        let shared = &*self.shared;
        let ctx = inject_flags::ensure(&shared.flags, &shared.config, &mut self.make, &mut request);
        let selected = shared.pageviews
            && capture_pageviews::claim(
                &shared.predicate,
                &shared.config.cookie_name,
                &ctx,
                &request,
            );
        let pending = selected.then(|| {
            capture_pageviews::Pending::new(
                shared.flags.posthog(),
                &shared.event_name,
                &ctx,
                &request,
            )
        });
        // The context is current while the inner future runs (where handlers run); the inner
        // service's synchronous `call` finds it in the request's extensions (in its flags).
        let future = self.inner.call(request);
        PostHogFuture {
            inner: ctx.scope(capture_pageviews::ResponseFuture::new(future, pending)),
        }
    }
}

pin_project_lite::pin_project! {
    /// Response future of [`PostHogService`]: the inner future, run with the request context
    /// as the current one, capturing the pageview when it resolves with a response.
    pub struct PostHogFuture<F> {
        #[pin]
        inner: Scoped<capture_pageviews::ResponseFuture<F>>,
    }
}

impl<F, B, E> Future for PostHogFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = F::Output;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.project().inner.poll(cx)
    }
}

impl<F> fmt::Debug for PostHogFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostHogFuture").finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use std::{
        convert::Infallible,
        sync::{
            atomic::{AtomicBool, Ordering},
            Arc,
        },
        task::{Context, Poll},
    };

    use http::{Request, Response, StatusCode};
    use tower::{service_fn, Service, ServiceExt};

    use super::*;

    fn disabled() -> PostHog {
        PostHog::builder("phc_test")
            .disabled(true)
            .build()
            .expect("client")
    }

    #[tokio::test]
    async fn errors_and_responses_pass_through_unchanged() {
        let posthog = disabled();
        let failing = posthog.layer().layer(service_fn(|_: Request<()>| async {
            Err::<Response<()>, _>("boom")
        }));
        let err = failing.oneshot(Request::new(())).await.unwrap_err();
        assert_eq!(err, "boom");

        let answering = posthog.layer().layer(service_fn(|_: Request<()>| async {
            let mut r = Response::new("body");
            *r.status_mut() = StatusCode::IM_A_TEAPOT;
            r.headers_mut().insert("x-app", "1".parse().unwrap());
            Ok::<_, Infallible>(r)
        }));
        let response = answering
            .oneshot(
                Request::get("/")
                    .header(DISTINCT_ID_HEADER, "u")
                    .body(())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::IM_A_TEAPOT);
        assert_eq!(response.headers().len(), 1);
        assert_eq!(response.headers()["x-app"], "1");
        assert_eq!(*response.body(), "body");
    }

    #[derive(Clone)]
    struct Gate(Arc<AtomicBool>);

    impl Service<Request<()>> for Gate {
        type Response = Response<()>;
        type Error = Infallible;
        type Future = std::future::Ready<Result<Response<()>, Infallible>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            if self.0.load(Ordering::SeqCst) {
                Poll::Ready(Ok(()))
            } else {
                Poll::Pending
            }
        }

        fn call(&mut self, _: Request<()>) -> Self::Future {
            std::future::ready(Ok(Response::new(())))
        }
    }

    #[test]
    fn poll_ready_is_delegated() {
        let open = Arc::new(AtomicBool::new(false));
        let mut svc = disabled().layer().layer(Gate(open.clone()));
        let mut cx = Context::from_waker(futures_noop_waker());
        assert!(svc.poll_ready(&mut cx).is_pending());
        open.store(true, Ordering::SeqCst);
        assert!(svc.poll_ready(&mut cx).is_ready());
    }

    fn futures_noop_waker() -> &'static std::task::Waker {
        struct Noop;
        impl std::task::Wake for Noop {
            fn wake(self: Arc<Self>) {}
        }
        static WAKER: std::sync::OnceLock<std::task::Waker> = std::sync::OnceLock::new();
        WAKER.get_or_init(|| std::task::Waker::from(Arc::new(Noop)))
    }

    #[tokio::test]
    async fn the_context_is_in_the_extensions_and_current_in_the_future_and_kept_if_present() {
        let posthog = disabled();
        let svc = posthog.layer().layer(service_fn(|req: Request<()>| {
            // In the inner service's synchronous `call`: in the extensions (the scope covers
            // the response future).
            let at_call = RequestContext::from_extensions(req.extensions()).cloned();
            let at_call = at_call.expect("in the extensions at call");
            async move {
                let current = crate::context::RequestContext::current().expect("current");
                assert_eq!(current.distinct_id(), at_call.distinct_id());
                let ext = RequestContext::from_extensions(req.extensions())
                    .cloned()
                    .expect("extension");
                // One entry, the context, which carries the flags (a preset context is that
                // entry).
                let flags = RequestFlags::from_extensions(req.extensions()).expect("flags");
                assert_eq!(flags.distinct_id(), ext.distinct_id());
                assert_eq!(req.extensions().len(), 1);
                Ok::<_, Infallible>(Response::new((
                    current.distinct_id().map(str::to_owned),
                    ext.distinct_id().map(str::to_owned),
                )))
            }
        }));
        let mut request = Request::get("/")
            .header(DISTINCT_ID_HEADER, "from-header")
            .body(())
            .unwrap();
        let response = svc.clone().oneshot(request).await.unwrap();
        assert_eq!(
            response.into_body(),
            (
                Some("from-header".to_owned()),
                Some("from-header".to_owned())
            )
        );
        // A context an earlier layer inserted wins.
        request = Request::get("/")
            .header(DISTINCT_ID_HEADER, "from-header")
            .body(())
            .unwrap();
        request
            .extensions_mut()
            .insert(RequestContext::new(Some("preset".into())));
        let response = svc.oneshot(request).await.unwrap();
        assert_eq!(response.into_body().0.as_deref(), Some("preset"));
    }
}
