//! [`PostHogLayer`]: the request context, the flags and the pageviews, in one layer.

use std::{
    fmt,
    future::Future,
    net::IpAddr,
    pin::Pin,
    sync::Arc,
    task::{ready, Context, Poll},
};

use http::{Extensions, Request, Response};
use tower_layer::Layer;
use tower_service::Service;

use super::{
    capture_pageviews::{self, Pending},
    exceptions::{ExceptionRules, Watch},
    identity::{DefaultMakeDistinctId, MakeDistinctId},
    inject_flags,
    predicate::{DefaultShouldCapture, ShouldCapture},
    request_flags::FlagSource,
    set_context::ContextConfig,
};
use crate::{
    context::{Enter, RequestContext},
    event::EventName,
    PostHog,
};

impl PostHog {
    /// The HTTP layer for this client, with its defaults: callers resolved by
    /// [`DefaultMakeDistinctId`], a `$pageview` for each request [`DefaultShouldCapture`]
    /// selects, lazy [`RequestFlags`](super::RequestFlags). See the [`http`](crate::http) module.
    pub fn layer(&self) -> PostHogLayer {
        PostHogLayer::new(self)
    }
}

/// Everything the HTTP layer does, in one layer: the [request context](super::SetRequestContext),
/// [flags in the extensions](super::InjectFlags) and [pageviews](super::CapturePageviews).
///
/// A cheap, `Clone` configuration; build it with [`PostHog::layer`] and its methods. See the
/// [module docs](super).
#[derive(Clone)]
pub struct PostHogLayer<M = DefaultMakeDistinctId, P = DefaultShouldCapture> {
    posthog: PostHog,
    make: M,
    predicate: P,
    pageviews: bool,
    event_name: EventName,
    eager: Option<Arc<[String]>>,
    /// `None`: exceptions are not captured.
    exceptions: Option<ExceptionRules>,
    config: ContextConfig,
    flag_inputs: Option<super::flag_inputs::SharedFlagInputs>,
}

impl PostHogLayer {
    /// The layer with its defaults (same as [`PostHog::layer`]).
    pub fn new(posthog: &PostHog) -> Self {
        PostHogLayer {
            posthog: posthog.clone(),
            make: DefaultMakeDistinctId,
            predicate: DefaultShouldCapture,
            pageviews: true,
            event_name: EventName::new("$pageview"),
            eager: None,
            exceptions: Some(ExceptionRules::default()),
            config: ContextConfig::new(posthog),
            flag_inputs: None,
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
            exceptions: self.exceptions,
            config: self.config,
            flag_inputs: self.flag_inputs,
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
            exceptions: self.exceptions,
            config: self.config,
            flag_inputs: self.flag_inputs,
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
        self.event_name = EventName::new(&name.into());
        self
    }

    /// Whether to capture an `$exception` for each request that fails (default `true`): its
    /// handler panics (the panic goes on unwinding: to tower-http's `CatchPanic`, or to the
    /// server), the inner service returns an error (its `source()` chain when it is a
    /// `BoxError`), or the response's status counts (see
    /// [`exception_statuses`](Self::exception_statuses)). One per request: an exception
    /// captured while handling the request (by hand with
    /// [`PostHog::capture_exception`](crate::PostHog::capture_exception), or by the
    /// [panic hook](crate::PostHogBuilder::capture_panics)) is the request's, and the layer adds
    /// none. The request's pageview refers to it (`$exception_event_id`). Captured for the
    /// caller, with the request's URL, method, `$route` and `$response_status`, within the
    /// client's [exception rate limit](crate::PostHogBuilder::exception_rate_limit). The
    /// response is never changed.
    #[must_use]
    pub fn capture_exceptions(mut self, enabled: bool) -> Self {
        self.exceptions = enabled.then(|| self.exceptions.unwrap_or_default());
        self
    }

    /// The HTTP statuses that count as a failed request (default `500..=599`; statuses
    /// outside `400..=599` are ignored) and, for gRPC, the status codes of trailers-only
    /// responses (how tonic answers a call that fails before sending a message) that do
    /// (default `UNKNOWN`, `INTERNAL`, `UNAVAILABLE`, `DATA_LOSS`; `tonic::Code as i32`).
    ///
    /// ```
    /// # fn f(posthog: posthog_tower::PostHog) {
    /// // 5xx and 429, and every gRPC INTERNAL.
    /// let layer = posthog
    ///     .layer()
    ///     .exception_statuses((500..=599).chain([429]), [13]);
    /// # }
    /// ```
    #[must_use]
    pub fn exception_statuses(
        mut self,
        statuses: impl IntoIterator<Item = u16>,
        grpc_codes: impl IntoIterator<Item = i32>,
    ) -> Self {
        let mut rules = ExceptionRules::default();
        rules.set_statuses(statuses);
        rules.set_grpc_codes(grpc_codes);
        self.exceptions = Some(rules);
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

    /// Adds the properties `f` returns for each request to every event captured while it is
    /// handled (its pageview and exceptions included), as tags of its
    /// [context](crate::context::RequestContext::tag): posthog-python's
    /// `POSTHOG_MW_EXTRA_PROPERTIES`. A value JSON cannot represent (`NaN`) is left out.
    ///
    /// ```
    /// # fn f(posthog: posthog_tower::PostHog) {
    /// use posthog_tower::http::RequestHead;
    ///
    /// let layer = posthog.layer().properties(|req: &RequestHead<'_>| {
    ///     [("tenant", req.header("x-tenant").unwrap_or_default())]
    /// });
    /// # }
    /// ```
    #[must_use]
    pub fn properties<F, I, K, V>(mut self, f: F) -> Self
    where
        F: Fn(&super::RequestHead<'_>) -> I + Send + Sync + 'static,
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: serde::Serialize,
    {
        self.config.properties = Some(Arc::new(move |head: &super::RequestHead<'_>| {
            let mut properties = serde_json::Map::new();
            for (key, value) in f(head) {
                let key = key.into();
                match crate::event::to_property_value(value) {
                    Ok(value) => {
                        properties.insert(key, value);
                    }
                    Err(error) => {
                        tracing::warn!(%key, %error, "posthog: request property left out");
                    }
                }
            }
            properties
        }));
        self
    }

    /// Gives each request's [`RequestFlags`](super::RequestFlags) person properties, groups
    /// and group properties: `make` (a closure `Fn(&RequestHead<'_>) -> FlagInputs` or any
    /// [`MakeFlagInputs`](super::MakeFlagInputs)) runs once per request as it arrives, and
    /// its inputs go with every evaluation of the request's flags, locally and to `/flags`.
    /// With them local evaluation decides flags that target a plan, a country or a company.
    ///
    /// ```
    /// # fn f(posthog: posthog_tower::PostHog) {
    /// use posthog_tower::http::{FlagInputs, RequestHead};
    ///
    /// let layer = posthog.layer().flag_properties(|req: &RequestHead<'_>| {
    ///     let inputs = FlagInputs::new();
    ///     match req.header("x-plan") {
    ///         Some(plan) => inputs.person_property("plan", plan),
    ///         None => inputs,
    ///     }
    /// });
    /// # }
    /// ```
    #[must_use]
    pub fn flag_properties(mut self, make: impl super::MakeFlagInputs) -> Self {
        self.flag_inputs = Some(super::flag_inputs::SharedFlagInputs(Arc::new(make)));
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
            .field("exceptions", &self.exceptions)
            .field("config", &self.config)
            .field("flag_inputs", &self.flag_inputs)
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
            shared: Arc::new(LayerState {
                predicate: self.predicate.clone(),
                pageviews: self.pageviews,
                event_name: self.event_name.clone(),
                flags: FlagSource::with_inputs(
                    self.posthog.clone(),
                    self.eager.clone(),
                    self.flag_inputs.clone(),
                ),
                exceptions: self.exceptions,
                config: self.config.clone(),
            }),
        }
    }
}

/// What every clone of a [`PostHogService`] shares: one reference count per clone (axum clones
/// the service for every request).
struct LayerState<P> {
    predicate: P,
    pageviews: bool,
    event_name: EventName,
    /// Where the flags come from; its client also takes the pageviews.
    flags: Arc<FlagSource>,
    exceptions: Option<ExceptionRules>,
    config: ContextConfig,
}

/// The service [`PostHogLayer`] produces: in one pass, what [`SetRequestContext`](super::SetRequestContext),
/// [`InjectFlags`](super::InjectFlags) and [`CapturePageviews`](super::CapturePageviews) do, around your service.
///
/// See the [module docs](super).
pub struct PostHogService<S, M = DefaultMakeDistinctId, P = DefaultShouldCapture> {
    inner: S,
    make: M,
    shared: Arc<LayerState<P>>,
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
            .field("exceptions", &shared.exceptions)
            .field("config", &shared.config)
            .finish()
    }
}

impl<S, M, P, ReqBody, ResBody> Service<Request<ReqBody>> for PostHogService<S, M, P>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    S::Error: fmt::Display + 'static,
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
        let watch = shared.exceptions.map(|rules| Watch::new(rules, &request));
        // The context is current while the inner future runs (where handlers run); the inner
        // service's synchronous `call` finds it in the request's extensions (in its flags).
        // One future, not one per job: nested, each would move the inner future once more
        // (about 60 instructions each for axum's).
        PostHogFuture {
            ctx: Some(ctx),
            inner: Some(self.inner.call(request)),
            pending,
            watch,
        }
    }
}

pin_project_lite::pin_project! {
    /// Response future of [`PostHogService`]: the inner future, run with the request context
    /// as the current one, capturing the request's exception if it fails and its pageview
    /// when it resolves with a response.
    pub struct PostHogFuture<F> {
        // The context while the future is not being polled (see `Scoped`).
        ctx: Option<RequestContext>,
        // `None` once it has completed: it is dropped then, with the context current, as it
        // is when the future is dropped before completing.
        #[pin]
        inner: Option<F>,
        pending: Option<Pending>,
        watch: Option<Watch>,
    }

    impl<F> PinnedDrop for PostHogFuture<F> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            crate::context::drop_in_scope(this.ctx, this.inner);
        }
    }
}

impl<F, B, E> Future for PostHogFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
    E: fmt::Display + 'static,
{
    type Output = F::Output;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let _enter = Enter::new(this.ctx);
        let Some(inner) = this.inner.as_mut().as_pin_mut() else {
            // A broken `Future` contract on the caller's side, as for any future.
            panic!("`PostHogFuture` polled after completion");
        };
        let result = match this.watch.as_ref() {
            Some(watch) => ready!(watch.poll(inner, cx)),
            None => ready!(inner.poll(cx)),
        };
        // In this order, as the separate layers do: the exception is recorded in the context
        // before the pageview, which names it, is captured; the inner future is dropped last.
        if let Some(watch) = this.watch.as_ref() {
            watch.outcome(&result);
        }
        if let (Some(pending), Ok(response)) = (this.pending.take(), &result) {
            pending.answered(response);
        }
        this.inner.set(None);
        Poll::Ready(result)
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
    use crate::{
        context::RequestContext,
        http::{RequestFlags, DISTINCT_ID_HEADER},
    };

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
