//! [`CapturePageviews`]: one `$pageview` per request, captured when the response is ready.

use std::{
    fmt,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{ready, Context, Poll},
};

use http::{header::USER_AGENT, HeaderMap, Request, Response};
use serde_json::Value;
use tokio::time::Instant;
use tower_layer::Layer;
use tower_service::Service;

use super::{
    identity::{header_text, sanitize, DefaultMakeDistinctId, RequestHead},
    predicate::{DefaultShouldCapture, ShouldCapture},
    set_context::ContextConfig,
    url, RequestFlags,
};
use crate::{context::RequestContext, Event, PostHog};

/// Applies [`CapturePageviews`]. See the [module docs](super).
#[derive(Clone)]
pub struct CapturePageviewsLayer<P = DefaultShouldCapture> {
    posthog: PostHog,
    predicate: P,
    event_name: Arc<str>,
    config: Arc<ContextConfig>,
}

impl CapturePageviewsLayer {
    /// `$pageview`s for the requests [`DefaultShouldCapture`] selects.
    pub fn new(posthog: &PostHog) -> Self {
        CapturePageviewsLayer {
            posthog: posthog.clone(),
            predicate: DefaultShouldCapture,
            event_name: Arc::from("$pageview"),
            config: Arc::new(ContextConfig::new(posthog)),
        }
    }
}

impl<P> CapturePageviewsLayer<P> {
    /// Captures for the requests `predicate` selects instead.
    pub fn should_capture<P2: ShouldCapture>(self, predicate: P2) -> CapturePageviewsLayer<P2> {
        CapturePageviewsLayer {
            posthog: self.posthog,
            predicate,
            event_name: self.event_name,
            config: self.config,
        }
    }

    /// The event's name (default `$pageview`; `$http_request` suits APIs).
    #[must_use]
    pub fn event_name(mut self, name: impl Into<String>) -> Self {
        self.event_name = Arc::from(name.into());
        self
    }
}

impl<P: fmt::Debug> fmt::Debug for CapturePageviewsLayer<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CapturePageviewsLayer")
            .field("predicate", &self.predicate)
            .field("event_name", &self.event_name)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl<S, P: Clone> Layer<S> for CapturePageviewsLayer<P> {
    type Service = CapturePageviews<S, P>;

    fn layer(&self, inner: S) -> Self::Service {
        CapturePageviews {
            inner,
            layer: Arc::new(self.clone()),
        }
    }
}

/// Captures a pageview event for each request the [`ShouldCapture`] predicate selects, when
/// the inner service's response is ready. The response and any error pass through unchanged;
/// a request whose future is dropped before it completes (the client went away) or that ends
/// in an error gets no pageview.
///
/// Properties: `$current_url`, `$host`, `$pathname`, `$request_method`, `$request_path`,
/// `$raw_user_agent`, `$referrer` and `$referring_domain` (`$direct` without a `Referer`),
/// `$response_status`, `$duration_ms`, `$route` (axum's matched route template, with the
/// `axum` feature), `$session_id`, `$ip` (only when asked for), and the flags evaluated while
/// handling the request (`$feature/<key>`, `$active_feature_flags`). An anonymous caller's
/// pageview is personless.
///
/// For gRPC, whose HTTP status is `200` even when the call fails, `$grpc_status` is the gRPC
/// status code when the response carries it in its headers: a trailers-only response, which
/// is how tonic answers a call that fails before sending a message (a unary handler returning
/// an error, an unknown service or method). A status sent in trailers, as for a call that
/// succeeds, is not read.
///
/// See the [module docs](super).
#[derive(Clone)]
pub struct CapturePageviews<S, P = DefaultShouldCapture> {
    inner: S,
    // Behind one `Arc`: servers such as axum clone the service for every request, and a clone
    // then costs one reference count instead of one per shared field.
    layer: Arc<CapturePageviewsLayer<P>>,
}

impl<S> CapturePageviews<S> {
    /// Wraps `inner`.
    pub fn new(inner: S, posthog: &PostHog) -> Self {
        CapturePageviewsLayer::new(posthog).layer(inner)
    }

    /// A layer for this middleware.
    pub fn layer(posthog: &PostHog) -> CapturePageviewsLayer {
        CapturePageviewsLayer::new(posthog)
    }
}

impl<S, P> CapturePageviews<S, P> {
    define_inner_service_accessors!();
}

impl<S: fmt::Debug, P: fmt::Debug> fmt::Debug for CapturePageviews<S, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CapturePageviews")
            .field("inner", &self.inner)
            .field("layer", &self.layer)
            .finish()
    }
}

impl<S, P, ReqBody, ResBody> Service<Request<ReqBody>> for CapturePageviews<S, P>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    P: ShouldCapture,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<ReqBody>) -> Self::Future {
        let layer = &self.layer;
        let pending = claim(&layer.predicate, &layer.config.cookie_name, &mut request).then(|| {
            let context = layer
                .config
                .ensure(&mut DefaultMakeDistinctId, &mut request);
            Pending::new(&layer.posthog, &layer.event_name, context, &request)
        });
        ResponseFuture::new(self.inner.call(request), pending)
    }
}

/// Marks a request whose pageview an outer layer captures.
#[derive(Clone, Copy)]
struct Claimed;

/// Whether this layer captures `request`'s pageview: `predicate` selects it and no outer layer
/// claimed it already (one pageview per request, even when the layer is applied twice). A
/// selected request is marked as claimed.
pub(crate) fn claim<B, P: ShouldCapture>(
    predicate: &P,
    cookie_name: &str,
    request: &mut Request<B>,
) -> bool {
    let selected = request.extensions().get::<Claimed>().is_none()
        && predicate.should_capture(&RequestHead::new(request, cookie_name));
    if selected {
        request.extensions_mut().insert(Claimed);
    }
    selected
}

/// What a pageview needs from the request, kept until the response is ready.
pub(crate) struct Pending {
    posthog: PostHog,
    event_name: Arc<str>,
    context: RequestContext,
    user_agent: Option<String>,
    referrer: Option<String>,
    route: Option<String>,
    flags: Option<RequestFlags>,
    start: Instant,
}

impl Pending {
    pub(crate) fn new<B>(
        posthog: &PostHog,
        event_name: &Arc<str>,
        context: RequestContext,
        request: &Request<B>,
    ) -> Self {
        let headers = request.headers();
        Pending {
            posthog: posthog.clone(),
            event_name: event_name.clone(),
            context,
            user_agent: headers
                .get(USER_AGENT)
                .and_then(header_text)
                .and_then(sanitize),
            referrer: url::referrer(headers),
            route: matched_route(request),
            flags: request.extensions().get::<RequestFlags>().cloned(),
            start: Instant::now(),
        }
    }

    fn capture(self, status: u16, grpc_status: Option<u32>) {
        let ctx = &self.context;
        let mut event = match ctx.distinct_id() {
            Some(id) => Event::new(&*self.event_name, id),
            None => Event::anonymous(&*self.event_name),
        };
        let mut set = |key: &str, value: Value| event.insert_value(key.to_owned(), value);
        if let Some(host) = ctx.host() {
            set("$host", Value::String(host.to_owned()));
        }
        if let Some(path) = ctx.path() {
            set("$pathname", Value::String(path.to_owned()));
        }
        if let Some(ua) = self.user_agent {
            set("$raw_user_agent", Value::String(ua));
        }
        let (referrer, domain) = match self.referrer {
            Some(r) => {
                let domain = url::url_host(&r).map_or_else(|| "$direct".to_owned(), str::to_owned);
                (r, domain)
            }
            None => ("$direct".to_owned(), "$direct".to_owned()),
        };
        set("$referrer", Value::String(referrer));
        set("$referring_domain", Value::String(domain));
        set("$response_status", Value::from(status));
        if let Some(code) = grpc_status {
            set("$grpc_status", Value::from(code));
        }
        let ms = self.start.elapsed().as_secs_f64() * 1000.0;
        set("$duration_ms", Value::from((ms * 1000.0).round() / 1000.0));
        if let Some(route) = self.route {
            set("$route", Value::String(route));
        }
        ctx.apply(&mut event);
        if let Some(flags) = &self.flags {
            for snapshot in flags.evaluated() {
                event = event.flags(&snapshot);
            }
        }
        // A refusal (full queue, shut down) is counted and reported by the client itself.
        let _ = self.posthog.capture(event);
    }
}

/// The `grpc-status` header of a trailers-only gRPC response, if valid.
fn grpc_status(headers: &HeaderMap) -> Option<u32> {
    let text = headers.get("grpc-status").and_then(header_text)?;
    text.trim().parse().ok()
}

/// The route template axum matched (`/users/{id}`), if any.
fn matched_route<B>(request: &Request<B>) -> Option<String> {
    #[cfg(feature = "axum")]
    if let Some(path) = request.extensions().get::<axum::extract::MatchedPath>() {
        return Some(path.as_str().to_owned());
    }
    let _ = request;
    None
}

pin_project_lite::pin_project! {
    /// Response future of [`CapturePageviews`]: captures the pageview when the inner future
    /// resolves with a response.
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        pending: Option<Pending>,
    }
}

impl<F> ResponseFuture<F> {
    pub(crate) fn new(inner: F, pending: Option<Pending>) -> Self {
        ResponseFuture { inner, pending }
    }
}

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = ready!(this.inner.poll(cx));
        if let (Some(pending), Ok(response)) = (this.pending.take(), &result) {
            pending.capture(response.status().as_u16(), grpc_status(response.headers()));
        }
        Poll::Ready(result)
    }
}

impl<F> fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("captures", &self.pending.is_some())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn grpc_status_from_trailers_only_responses() {
        let mut headers = HeaderMap::new();
        assert_eq!(grpc_status(&headers), None);
        headers.insert("grpc-status", HeaderValue::from_static("5"));
        assert_eq!(grpc_status(&headers), Some(5));
        headers.insert("grpc-status", HeaderValue::from_static("0"));
        assert_eq!(grpc_status(&headers), Some(0));
        for bad in ["", "ok", "-1", "1.5"] {
            headers.insert("grpc-status", HeaderValue::from_static(bad));
            assert_eq!(grpc_status(&headers), None, "{bad:?}");
        }
        headers.insert("grpc-status", HeaderValue::from_bytes(b"\xff").unwrap());
        assert_eq!(grpc_status(&headers), None);
    }
}
