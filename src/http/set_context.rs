//! [`SetRequestContext`]: resolves who is calling and makes it the handler's request context.

use std::{
    any::Any,
    fmt,
    future::Future,
    net::{IpAddr, SocketAddr},
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use http::{Extensions, Request};
use serde_json::{Map, Value};
use tower_layer::Layer;
use tower_service::Service;

use super::{
    head::RequestHead,
    identity::{DefaultMakeDistinctId, MakeDistinctId},
    url,
};
use crate::{
    context::{RequestContext, RequestParts, Scoped},
    PostHog,
};

/// Properties a layer adds to every event of a request (`PostHogLayer::properties`).
pub(crate) type RequestProperties =
    Arc<dyn Fn(&RequestHead<'_>) -> Map<String, Value> + Send + Sync>;

/// How a request's context is worked out, shared by the HTTP middlewares.
#[derive(Clone)]
pub(crate) struct ContextConfig {
    pub(crate) cookie_name: Arc<str>,
    pub(crate) trust_proxy: bool,
    pub(crate) capture_ip: bool,
    pub(crate) client_ip: Option<fn(&Extensions) -> Option<IpAddr>>,
    pub(crate) properties: Option<RequestProperties>,
}

impl ContextConfig {
    pub(crate) fn new(posthog: &PostHog) -> Self {
        ContextConfig {
            cookie_name: posthog.cookie_name().clone(),
            trust_proxy: false,
            capture_ip: false,
            client_ip: None,
            properties: None,
        }
    }

    /// The context already in `request`'s extensions ([`RequestContext::from_extensions`]),
    /// or a new one, inserted as a `RequestContext` entry.
    pub(crate) fn ensure<B, M: MakeDistinctId>(
        &self,
        make: &mut M,
        request: &mut Request<B>,
    ) -> RequestContext {
        if let Some(ctx) = RequestContext::from_extensions(request.extensions()) {
            return ctx.clone();
        }
        let ctx = self.resolve(make, request, None);
        request.extensions_mut().insert(ctx.clone());
        ctx
    }

    /// A new context for `request`'s caller, resolved with `make`, with `layer_state`
    /// attached.
    pub(crate) fn resolve<B, M: MakeDistinctId>(
        &self,
        make: &mut M,
        request: &Request<B>,
        layer_state: Option<Arc<dyn Any + Send + Sync>>,
    ) -> RequestContext {
        let head = RequestHead::with_identity(request, &self.cookie_name);
        let id = make
            .make_distinct_id(&head)
            .and_then(super::sanitize::sanitize_owned);
        let session = head.session_id();
        let host_header = head.host_header();
        // Shared with the request (no copy), checked when read.
        let user_agent = head.user_agent_header().cloned();
        let window_id = head.window_id();
        // Parsed already when the cookie named the caller or the session.
        let device_id = head
            .posthog_cookie()
            .and_then(|cookie| cookie.device_id())
            .map(str::to_owned);
        let tags = self.properties.as_ref().map(|f| f(&head));
        drop(head);
        let (uri, headers) = (request.uri(), request.headers());
        let ip = if self.capture_ip {
            self.client_ip(request).map(|ip| ip.to_string())
        } else {
            None
        };
        RequestContext::for_request(RequestParts {
            distinct_id: id,
            session_id: session,
            method: request.method(),
            uri,
            scheme: url::scheme(uri, headers, self.trust_proxy),
            host: url::host(uri, headers, host_header, self.trust_proxy),
            ip,
            user_agent,
            window_id,
            device_id,
            tags: tags.filter(|t| !t.is_empty()),
            layer_state,
        })
    }

    fn client_ip<B>(&self, request: &Request<B>) -> Option<IpAddr> {
        if self.trust_proxy {
            if let Some(ip) = url::forwarded_ip(request.headers()) {
                return Some(ip);
            }
        }
        let ext = request.extensions();
        if let Some(f) = self.client_ip {
            if let Some(ip) = f(ext) {
                return Some(ip);
            }
        }
        peer_ip(ext)
    }
}

/// The peer address a server put in the extensions: axum's `ConnectInfo<SocketAddr>` (with
/// the `axum` feature) or a plain `SocketAddr`.
fn peer_ip(ext: &Extensions) -> Option<IpAddr> {
    #[cfg(feature = "axum")]
    if let Some(info) = ext.get::<axum::extract::ConnectInfo<SocketAddr>>() {
        return Some(info.0.ip());
    }
    ext.get::<SocketAddr>().map(SocketAddr::ip)
}

impl fmt::Debug for ContextConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The cookie name contains the project key: leave it out.
        f.debug_struct("ContextConfig")
            .field("trust_proxy", &self.trust_proxy)
            .field("capture_ip", &self.capture_ip)
            .field("properties", &self.properties.is_some())
            .finish_non_exhaustive()
    }
}

/// Applies [`SetRequestContext`]. See the [module docs](super).
#[derive(Clone, Debug)]
pub struct SetRequestContextLayer<M = DefaultMakeDistinctId> {
    make: M,
    config: Arc<ContextConfig>,
}

impl SetRequestContextLayer {
    /// Resolves callers with [`DefaultMakeDistinctId`] (the posthog-js header or cookie of
    /// `posthog`'s project).
    pub fn new(posthog: &PostHog) -> Self {
        SetRequestContextLayer {
            make: DefaultMakeDistinctId,
            config: Arc::new(ContextConfig::new(posthog)),
        }
    }
}

impl<M> SetRequestContextLayer<M> {
    /// Resolves callers with `make` instead.
    pub fn distinct_id<M2: MakeDistinctId>(self, make: M2) -> SetRequestContextLayer<M2> {
        SetRequestContextLayer {
            make,
            config: self.config,
        }
    }
}

impl<S, M: Clone> Layer<S> for SetRequestContextLayer<M> {
    type Service = SetRequestContext<S, M>;

    fn layer(&self, inner: S) -> Self::Service {
        SetRequestContext {
            inner,
            make: self.make.clone(),
            config: self.config.clone(),
        }
    }
}

/// Works out who is calling ([`MakeDistinctId`]), puts a [`RequestContext`] in the request's
/// extensions (unless one is there) and runs the inner service with it as the current
/// context, so events captured by the handler inherit it.
///
/// See the [module docs](super).
#[derive(Clone)]
pub struct SetRequestContext<S, M = DefaultMakeDistinctId> {
    inner: S,
    make: M,
    config: Arc<ContextConfig>,
}

impl<S> SetRequestContext<S> {
    /// Wraps `inner`, resolving callers with [`DefaultMakeDistinctId`].
    pub fn new(inner: S, posthog: &PostHog) -> Self {
        SetRequestContextLayer::new(posthog).layer(inner)
    }

    /// A layer for this middleware.
    pub fn layer(posthog: &PostHog) -> SetRequestContextLayer {
        SetRequestContextLayer::new(posthog)
    }
}

impl<S, M> SetRequestContext<S, M> {
    define_inner_service_accessors!();
}

impl<S: fmt::Debug, M: fmt::Debug> fmt::Debug for SetRequestContext<S, M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SetRequestContext")
            .field("inner", &self.inner)
            .field("make", &self.make)
            .field("config", &self.config)
            .finish()
    }
}

impl<S, M, ReqBody> Service<Request<ReqBody>> for SetRequestContext<S, M>
where
    S: Service<Request<ReqBody>>,
    M: MakeDistinctId,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = SetRequestContextFuture<S::Future>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<ReqBody>) -> Self::Future {
        let ctx = self.config.ensure(&mut self.make, &mut request);
        // The context is current while the inner future runs (where handlers run); the inner
        // service's synchronous `call` finds it in the request's extensions.
        let future = self.inner.call(request);
        SetRequestContextFuture {
            inner: ctx.scope(future),
        }
    }
}

pin_project_lite::pin_project! {
    /// Response future of [`SetRequestContext`]: the inner future, run with the request
    /// context as the current one.
    pub struct SetRequestContextFuture<F> {
        #[pin]
        inner: Scoped<F>,
    }
}

impl<F: Future> Future for SetRequestContextFuture<F> {
    type Output = F::Output;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.project().inner.poll(cx)
    }
}

impl<F> fmt::Debug for SetRequestContextFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SetRequestContextFuture")
            .finish_non_exhaustive()
    }
}
