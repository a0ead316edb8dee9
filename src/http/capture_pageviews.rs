//! [`CapturePageviews`]: one `$pageview` per request, captured when the response is ready.

use std::{
    fmt,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{ready, Context, Poll},
};

use http::{header::REFERER, HeaderMap, Request, Response};
use serde::Serialize;
use serde_json::Value;
use tower_layer::Layer;
use tower_service::Service;

use super::{
    head::{self, RequestHead},
    identity::DefaultMakeDistinctId,
    predicate::{DefaultShouldCapture, ShouldCapture},
    request_flags,
    sanitize::{cleaned_borrowed, header_text},
    set_context::ContextConfig,
    url,
};
use crate::{
    context::RequestContext,
    event::{EventName, EventWriter, StaticKey, WriterState},
    flags::FlagValue,
    time::Timestamp,
    Event, PostHog,
};

/// Applies [`CapturePageviews`]. See the [module docs](super).
#[derive(Clone)]
pub struct CapturePageviewsLayer<P = DefaultShouldCapture> {
    posthog: PostHog,
    predicate: P,
    event_name: EventName,
    config: Arc<ContextConfig>,
}

impl CapturePageviewsLayer {
    /// `$pageview`s for the requests [`DefaultShouldCapture`] selects.
    pub fn new(posthog: &PostHog) -> Self {
        CapturePageviewsLayer {
            posthog: posthog.clone(),
            predicate: DefaultShouldCapture,
            event_name: EventName::new("$pageview"),
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
        self.event_name = EventName::new(&name.into());
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
/// `axum` feature), `$session_id`, `$ip` (only when asked for), the flags evaluated while
/// handling the request (`$feature/<key>`, `$active_feature_flags`), and the uuid of the
/// `$exception` captured while handling it (`$exception_event_id`), if any. An anonymous
/// caller's pageview is personless.
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
    type Future = CapturePageviewsFuture<S::Future>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<ReqBody>) -> Self::Future {
        let layer = &self.layer;
        let selected = layer
            .predicate
            .should_capture(&RequestHead::new(&request, &layer.config.cookie_name));
        let pending = selected
            .then(|| {
                let context = layer
                    .config
                    .ensure(&mut DefaultMakeDistinctId, &mut request);
                context
                    .claim_pageview()
                    .then(|| Pending::new(&layer.posthog, &layer.event_name, &context, &request))
            })
            .flatten();
        CapturePageviewsFuture::new(self.inner.call(request), pending)
    }
}

/// Whether this layer captures the pageview of the request of `context`: `predicate` selects
/// it and no outer layer claimed it already (one pageview per request, even when the layer is
/// applied twice). A selected request is claimed in its context, which every layer of the
/// request shares; nothing is added to its extensions.
pub(crate) fn claim<B, P: ShouldCapture>(
    predicate: &P,
    cookie_name: &str,
    context: &RequestContext,
    request: &Request<B>,
) -> bool {
    predicate.should_capture(&RequestHead::new(request, cookie_name)) && context.claim_pageview()
}

/// A pageview being built: its request half is written when the request arrives, the rest
/// when the response is ready.
pub(crate) struct Pending {
    posthog: PostHog,
    draft: Draft,
    /// The request's context, whose flag evaluations the pageview reports.
    context: RequestContext,
    /// When the request arrived (the wall clock, which also stamps the event: one clock read
    /// at each end of the request, not two at the end).
    start: Timestamp,
    /// Whether the response may carry a gRPC status (`$grpc_status`): gRPC runs over HTTP/2
    /// only, and looking the header up costs about 300 instructions.
    grpc: bool,
}

/// The event so far.
enum Draft {
    /// Its JSON, written with the pipeline's encoder: at capture it is queued as it is, with
    /// no [`Event`] built (one allocation per pageview instead of one per property).
    Json { json: Vec<u8>, state: WriterState },
    /// An [`Event`], for a pipeline that needs one (a `before_send` hook, a disabled client).
    Event(Box<Event>),
}

/// Bytes a pageview's JSON takes besides its variable values and the library properties:
/// keys, punctuation, a random distinct id, the timestamp, the uuid and the numbers (about
/// 480), and some room. Only sizes the first allocation, which should hold the whole
/// pageview (no reallocation when the response half is written) and stay small enough for
/// the allocator's per-thread cache (glibc's takes up to 1 KiB): a pageview with a browser's
/// user agent is 700-900 bytes.
const PAGEVIEW_FIXED_LEN: usize = 512;

impl Pending {
    pub(crate) fn new<B>(
        posthog: &PostHog,
        event_name: &EventName,
        context: &RequestContext,
        request: &Request<B>,
    ) -> Self {
        let headers = request.headers();
        // The context has the user agent, unless the request has none or an outer layer (or
        // the application) made the context.
        let (user_agent, referer) = match context.user_agent_header() {
            Some(user_agent) => (Some(user_agent), headers.get(REFERER)),
            None => head::user_agent_and_referer(headers),
        };
        let user_agent = cleaned_borrowed(user_agent);
        let referrer = cleaned_borrowed(referer);
        let route = matched_route(request);
        let campaign = request
            .uri()
            .query()
            .map(url::campaign_params)
            .unwrap_or_default();
        let request_props = RequestProperties {
            context,
            host: context.host(),
            user_agent: user_agent.as_deref(),
            referrer: referrer.as_deref(),
            route,
            campaign: &campaign,
        };
        let id = context.distinct_id();
        let draft = match posthog.event_encoder() {
            Some(encoder) if !crate::event::is_blank(event_name.as_str()) => {
                let len = PAGEVIEW_FIXED_LEN
                    + encoder.added_len()
                    + event_name.as_str().len()
                    + request_props.values_len();
                let mut json = posthog.event_buffer(len);
                let mut writer = encoder.writer_named(&mut json, event_name, id);
                request_props.write(&mut writer);
                let state = writer.pause();
                Draft::Json { json, state }
            }
            _ => {
                // `RequestProperties` sets `$process_person_profile` again for an anonymous
                // caller, to the same value: the JSON path needs it written.
                let mut event = match id {
                    Some(id) => Event::new(event_name.as_str(), id),
                    None => Event::anonymous(event_name.as_str()),
                };
                request_props.write(&mut event);
                Draft::Event(Box::new(event))
            }
        };
        Pending {
            posthog: posthog.clone(),
            draft,
            context: context.clone(),
            start: Timestamp::now(),
            grpc: request.version() == http::Version::HTTP_2,
        }
    }

    /// Captures the pageview of a request answered with `response`.
    #[inline]
    pub(crate) fn answered<B>(self, response: &Response<B>) {
        let grpc = self.grpc.then(|| grpc_status(response.headers())).flatten();
        self.capture(response.status().as_u16(), grpc);
    }

    fn capture(self, status: u16, grpc_status: Option<u32>) {
        // A refusal (full queue, shut down) is counted and reported by the client itself.
        let _ = match self.finish(status, grpc_status) {
            (posthog, Finished::Json { json, uuid }) => posthog.capture_encoded(json, uuid),
            (posthog, Finished::Event(event)) => posthog.capture(*event),
        };
    }

    /// Completes the event with what the response tells.
    fn finish(self, status: u16, grpc_status: Option<u32>) -> (PostHog, Finished) {
        let now = Timestamp::now();
        // A wall clock set back during the request gives 0, not a negative duration.
        let nanos = u64::try_from(now.as_unix_nanos() - self.start.as_unix_nanos()).unwrap_or(0);
        let response = ResponseProperties {
            status,
            grpc_status,
            duration_us: (nanos + 500) / 1000,
            flags: &self.context,
        };
        let finished = match self.draft {
            Draft::Json { mut json, state } => match self.posthog.event_encoder() {
                Some(encoder) => {
                    let mut writer = encoder.resume(&mut json, state);
                    response.write(&mut writer);
                    let (uuid, now) = crate::event::stamp_at(now);
                    writer.finish(now, uuid);
                    Finished::Json { json, uuid }
                }
                // The encoder is the client's for its whole life: unreachable. Were it reached,
                // the pageview would be refused and counted (an empty name), not queued
                // half-written.
                None => Finished::Event(Box::new(Event::new("", ""))),
            },
            Draft::Event(mut event) => {
                event.set_timestamp(now);
                response.write(&mut *event);
                Finished::Event(event)
            }
        };
        (self.posthog, finished)
    }
}

/// A complete pageview, ready to queue.
enum Finished {
    Json { json: Vec<u8>, uuid: uuid::Uuid },
    Event(Box<Event>),
}

/// Where a pageview's properties go: an [`Event`], or the JSON of one being written.
trait Properties {
    /// A property whose key is known at compile time (nearly all of them).
    fn put(&mut self, key: StaticKey, value: Prop<'_>);
    /// A property whose key is built at run time (`$feature/<key>`).
    fn put_dynamic(&mut self, key: &str, value: Prop<'_>);
}

/// A property value, borrowed.
#[derive(Clone, Copy)]
enum Prop<'a> {
    Str(&'a str),
    Bool(bool),
    Int(u64),
    /// The float `n as f64 / 1000.0`, for a whole number `n` of thousandths (a duration in
    /// milliseconds counted in microseconds).
    Thousandths(u64),
    Keys(&'a [&'a str]),
    /// A string made of these pieces.
    Parts(&'a [&'a str]),
    /// Any JSON value (a tag).
    Json(&'a Value),
}

impl Serialize for Prop<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match *self {
            Prop::Str(s) => serializer.serialize_str(s),
            Prop::Bool(b) => serializer.serialize_bool(b),
            Prop::Int(n) => serializer.serialize_u64(n),
            Prop::Thousandths(n) => serializer.serialize_f64(crate::event::thousandths_f64(n)),
            Prop::Keys(keys) => keys.serialize(serializer),
            Prop::Parts(parts) => serializer.serialize_str(&parts.concat()),
            Prop::Json(value) => value.serialize(serializer),
        }
    }
}

impl From<Prop<'_>> for Value {
    fn from(prop: Prop<'_>) -> Value {
        match prop {
            Prop::Str(s) => Value::String(s.to_owned()),
            Prop::Bool(b) => Value::Bool(b),
            Prop::Int(n) => Value::from(n),
            Prop::Thousandths(n) => Value::from(crate::event::thousandths_f64(n)),
            Prop::Keys(keys) => keys.iter().map(|k| Value::from(*k)).collect(),
            Prop::Parts(parts) => Value::String(parts.concat()),
            Prop::Json(value) => value.clone(),
        }
    }
}

impl Properties for EventWriter<'_> {
    // Inlined where it is called with a constant key: the key's bytes are then copied with
    // their length known at compile time (no `memcpy` call), about 30 instructions a property.
    #[inline(always)]
    fn put(&mut self, key: StaticKey, value: Prop<'_>) {
        match value {
            Prop::Str(s) => self.static_str(key, s),
            Prop::Bool(b) => self.static_bool(key, b),
            Prop::Parts(parts) => self.static_str_parts(key, parts),
            Prop::Int(n) => self.static_u64(key, n),
            Prop::Thousandths(n) => self.static_thousandths(key, n),
            other => self.static_property(key, &other),
        }
    }

    fn put_dynamic(&mut self, key: &str, value: Prop<'_>) {
        match value {
            Prop::Str(s) => self.property_str(key, s),
            Prop::Bool(b) => self.property_bool(key, b),
            Prop::Parts(parts) => self.property_str_parts(key, parts),
            other => self.property(key, &other),
        }
    }
}

impl Properties for Event {
    fn put(&mut self, key: StaticKey, value: Prop<'_>) {
        self.insert_value(key.name, value.into());
    }

    fn put_dynamic(&mut self, key: &str, value: Prop<'_>) {
        self.insert_value(key, value.into());
    }
}

/// The pageview's properties known when the request arrives.
struct RequestProperties<'a> {
    context: &'a RequestContext,
    /// The context's host, checked once.
    host: Option<&'a str>,
    user_agent: Option<&'a str>,
    referrer: Option<&'a str>,
    route: Option<&'a str>,
    /// The campaign parameters of the URL's query (`utm_source`, `gclid`, ...).
    campaign: &'a [(&'static str, String)],
}

impl RequestProperties<'_> {
    /// Length of the values, to size the buffer.
    fn values_len(&self) -> usize {
        let ctx = self.context;
        let strings = [
            self.user_agent,
            self.user_agent,
            self.referrer,
            self.route,
            self.host,
            ctx.session_id(),
            ctx.ip(),
            ctx.distinct_id(),
            ctx.window_id(),
            ctx.device_id(),
        ];
        let campaign: usize = self
            .campaign
            .iter()
            .map(|(k, v)| k.len() + v.len() + 6)
            .sum();
        let path = ctx.path().map_or(0, str::len);
        // The path appears as `$pathname`, `$request_path` and in `$current_url`, the host in
        // `$host` and `$current_url`, the referrer in `$referrer` and maybe
        // `$referring_domain`. Escaping rarely adds anything.
        strings.iter().flatten().map(|s| s.len()).sum::<usize>()
            + campaign
            + path * 3
            + self.host.map_or(0, str::len)
            + self.referrer.map_or(0, str::len)
    }

    fn write(&self, out: &mut impl Properties) {
        let ctx = self.context;
        if ctx.distinct_id().is_none() {
            out.put(static_key!("$process_person_profile"), Prop::Bool(false));
        }
        if let Some(host) = self.host {
            out.put(static_key!("$host"), Prop::Str(host));
        }
        if let Some(path) = ctx.path() {
            out.put(static_key!("$pathname"), Prop::Str(path));
        }
        if let Some(ua) = self.user_agent {
            out.put(static_key!("$raw_user_agent"), Prop::Str(ua));
            out.put(static_key!("$user_agent"), Prop::Str(ua));
        }
        if let Some(window) = ctx.window_id() {
            out.put(static_key!("$window_id"), Prop::Str(window));
        }
        if let Some(device) = ctx.device_id() {
            out.put(static_key!("$device_id"), Prop::Str(device));
        }
        for (key, value) in self.campaign {
            out.put_dynamic(key, Prop::Str(value));
        }
        let (referrer, domain) = match self.referrer {
            Some(r) => (r, url::url_host(r).unwrap_or("$direct")),
            None => ("$direct", "$direct"),
        };
        out.put(static_key!("$referrer"), Prop::Str(referrer));
        out.put(static_key!("$referring_domain"), Prop::Str(domain));
        if let Some(route) = self.route {
            out.put(static_key!("$route"), Prop::Str(route));
        }
        for (key, value) in ctx.properties_but_url() {
            if let Some(value) = value {
                out.put(key, Prop::Str(value));
            }
        }
        if let Some(parts) = ctx.current_url_parts(self.host) {
            out.put(static_key!("$current_url"), Prop::Parts(&parts));
        }
    }
}

/// The pageview's properties known when the response is ready.
struct ResponseProperties<'a> {
    status: u16,
    grpc_status: Option<u32>,
    /// The time to the response, in microseconds (`$duration_ms` to three decimals).
    duration_us: u64,
    /// The context whose flag evaluations (and first exception) are reported.
    flags: &'a RequestContext,
}

impl ResponseProperties<'_> {
    fn write(&self, out: &mut impl Properties) {
        out.put(
            static_key!("$response_status"),
            Prop::Int(self.status.into()),
        );
        if let Some(code) = self.grpc_status {
            out.put(static_key!("$grpc_status"), Prop::Int(code.into()));
        }
        out.put(
            static_key!("$duration_ms"),
            Prop::Thousandths(self.duration_us),
        );
        if let Some(uuid) = self.flags.exception() {
            let mut buf = uuid::Uuid::encode_buffer();
            let id = uuid.hyphenated().encode_lower(&mut buf);
            out.put(static_key!("$exception_event_id"), Prop::Str(id));
        }
        // Every flag evaluated during the request; a key in several snapshots (the eager
        // keys are also in the full evaluation) is written once, from the first.
        let snapshots = request_flags::evaluated_in(self.flags);
        let mut active = Vec::new();
        for (i, snapshot) in snapshots.iter().enumerate() {
            for (key, record) in snapshot.records() {
                if snapshots[..i].iter().any(|s| s.record(key).is_some()) {
                    continue;
                }
                let name = format!("$feature/{key}");
                match &record.value {
                    FlagValue::Bool(b) => out.put_dynamic(&name, Prop::Bool(*b)),
                    FlagValue::Variant(v) => out.put_dynamic(&name, Prop::Str(v)),
                }
                if record.value.is_enabled() {
                    active.push(key);
                }
            }
        }
        if !active.is_empty() {
            active.sort_unstable();
            out.put(static_key!("$active_feature_flags"), Prop::Keys(&active));
        }
        // The request's tags, set while it was handled, except where the pageview says.
        self.flags.with_tags(|tags| {
            for (key, value) in tags {
                if !pageview_sets(key) {
                    out.put_dynamic(key, Prop::Json(value));
                }
            }
        });
    }
}

/// Whether the pageview itself sets property `key` (a tag does not replace it).
fn pageview_sets(key: &str) -> bool {
    const KEYS: &[&str] = &[
        "$process_person_profile",
        "$host",
        "$pathname",
        "$raw_user_agent",
        "$user_agent",
        "$window_id",
        "$device_id",
        "$referrer",
        "$referring_domain",
        "$route",
        "$session_id",
        "$request_method",
        "$request_path",
        "$ip",
        "$current_url",
        "$response_status",
        "$grpc_status",
        "$duration_ms",
        "$exception_event_id",
        "$active_feature_flags",
    ];
    KEYS.contains(&key) || key.starts_with("$feature/") || url::is_campaign_param(key)
}

/// The `grpc-status` header of a trailers-only gRPC response, if valid.
pub(crate) fn grpc_status(headers: &HeaderMap) -> Option<u32> {
    let text = headers.get("grpc-status").and_then(header_text)?;
    text.trim().parse().ok()
}

/// The route template axum matched (`/users/{id}`), if any.
fn matched_route<B>(request: &Request<B>) -> Option<&str> {
    #[cfg(feature = "axum")]
    if let Some(path) = request.extensions().get::<axum::extract::MatchedPath>() {
        return Some(path.as_str());
    }
    let _ = request;
    None
}

pin_project_lite::pin_project! {
    /// Response future of [`CapturePageviews`]: captures the pageview when the inner future
    /// resolves with a response.
    pub struct CapturePageviewsFuture<F> {
        #[pin]
        inner: F,
        pending: Option<Pending>,
    }
}

impl<F> CapturePageviewsFuture<F> {
    pub(crate) fn new(inner: F, pending: Option<Pending>) -> Self {
        CapturePageviewsFuture { inner, pending }
    }
}

impl<F, B, E> Future for CapturePageviewsFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = ready!(this.inner.poll(cx));
        if let (Some(pending), Ok(response)) = (this.pending.take(), &result) {
            pending.answered(response);
        }
        Poll::Ready(result)
    }
}

impl<F> fmt::Debug for CapturePageviewsFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CapturePageviewsFuture")
            .field("captures", &self.pending.is_some())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;
    use proptest::prelude::*;

    /// A client whose worker never runs (nothing is sent): with `hook`, a `before_send` hook
    /// makes it build pageviews as `Event`s.
    fn client(hook: bool) -> PostHog {
        let mut builder = PostHog::builder("phc_pageview")
            .host("http://127.0.0.1:9")
            .super_property("$raw_user_agent", "from super")
            .super_property("plan", "pro");
        if hook {
            builder = builder.before_send(Some);
        }
        builder.build_pair().expect("client builds").0
    }

    /// The JSON the pipeline would send for this request's pageview: written straight to JSON
    /// (`direct`) or built as an `Event` and encoded by the same encoder, with the direct
    /// one's uuid and timestamp. The duration and an anonymous caller's random id, which
    /// differ from run to run, are replaced.
    fn pageview(direct: &PostHog, built: &PostHog, request: &mut Request<()>) -> (Value, Value) {
        let encoder = direct.event_encoder().expect("no hook, an encoder");
        assert!(built.event_encoder().is_none());
        let ctx = ContextConfig::new(direct).ensure(&mut DefaultMakeDistinctId, request);
        let (_, Finished::Json { json, uuid }) =
            Pending::new(direct, &EventName::new("$pageview"), &ctx, request).finish(503, Some(14))
        else {
            panic!("written as JSON");
        };
        let mut a: Value = serde_json::from_slice(&json).expect("valid JSON");
        let (_, Finished::Event(event)) =
            Pending::new(built, &EventName::new("$pageview"), &ctx, request).finish(503, Some(14))
        else {
            panic!("built as an Event");
        };
        let timestamp = a["timestamp"].as_str().expect("a timestamp");
        let timestamp = Timestamp::parse(timestamp).expect("RFC 3339");
        let mut out = Vec::new();
        encoder.encode(&mut out, &event, uuid, timestamp);
        let mut b: Value = serde_json::from_slice(&out).expect("valid JSON");
        for v in [&mut a, &mut b] {
            v["properties"]["$duration_ms"] = Value::from("<duration>");
            if ctx.distinct_id().is_none() {
                v["distinct_id"] = Value::from("<random>");
            }
        }
        (a, b)
    }

    /// Header bytes a client may send: visible ASCII, spaces, tabs and obs-text.
    fn header_bytes() -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(prop_oneof![Just(b'\t'), 0x20u8..0x7f, 0x80u8..=0xff], 0..60)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Whatever the request carries, a pageview written straight to JSON is valid JSON
        /// and the same as the one built as an `Event`.
        #[test]
        fn written_and_built_pageviews_agree(
            id in proptest::option::of(header_bytes()),
            session in proptest::option::of(header_bytes()),
            host in header_bytes(),
            user_agent in header_bytes(),
            referrer in proptest::option::of(header_bytes()),
            path in "(/[a-zA-Z0-9%._~!$&'()*+,;=:@-]{0,12}){1,3}(\\?[a-zA-Z0-9=&%\"{}|^`-]{0,20})?",
        ) {
            // Some of these characters are refused by `http` in some places: skip those paths.
            prop_assume!(path.parse::<http::Uri>().is_ok());
            let (direct, built) = (client(false), client(true));
            let mut request = Request::get(path.as_str()).body(()).expect("a valid path");
            let headers = request.headers_mut();
            let mut put = |name: &'static str, value: &[u8]| {
                if let Ok(value) = HeaderValue::from_bytes(value) {
                    headers.insert(name, value);
                }
            };
            if let Some(id) = &id {
                put("x-posthog-distinct-id", id);
            }
            if let Some(session) = &session {
                put("x-posthog-session-id", session);
            }
            put("host", &host);
            put("user-agent", &user_agent);
            if let Some(referrer) = &referrer {
                put("referer", referrer);
            }
            let (a, b) = pageview(&direct, &built, &mut request);
            prop_assert_eq!(&a, &b);
            prop_assert_eq!(&a["properties"]["$raw_user_agent"], "from super");
            prop_assert_eq!(&a["properties"]["$response_status"], 503);
            prop_assert_eq!(&a["properties"]["$grpc_status"], 14);
        }
    }

    #[test]
    fn user_agent_and_referrer_come_from_the_request_whoever_made_the_context() {
        let posthog = PostHog::builder("phc_pageview")
            .host("http://127.0.0.1:9")
            .build_pair()
            .expect("client builds")
            .0;
        let request = |headers: &[(&str, &str)]| {
            let mut b = Request::get("/p");
            for (k, v) in headers {
                b = b.header(*k, *v);
            }
            b.body(()).expect("a valid request")
        };
        let properties = |ctx: &RequestContext, request: &Request<()>| -> Value {
            let (_, Finished::Json { json, .. }) =
                Pending::new(&posthog, &EventName::new("$pageview"), ctx, request)
                    .finish(200, None)
            else {
                panic!("written as JSON");
            };
            let event: Value = serde_json::from_slice(&json).expect("valid JSON");
            event["properties"].clone()
        };
        let both = [("user-agent", "curl/8"), ("referer", "https://r.example/x")];
        let cases = [
            (
                &both[..],
                Some("curl/8"),
                "https://r.example/x",
                "r.example",
            ),
            (&both[..1], Some("curl/8"), "$direct", "$direct"),
            (&both[1..], None, "https://r.example/x", "r.example"),
            (&[][..], None, "$direct", "$direct"),
        ];
        for (headers, ua, referrer, domain) in cases {
            let mut req = request(headers);
            // A context the layer made from the request, and one the application made.
            let made = ContextConfig::new(&posthog).ensure(&mut DefaultMakeDistinctId, &mut req);
            for ctx in [made, RequestContext::new(Some("app-user".into()))] {
                let p = properties(&ctx, &req);
                assert_eq!(p["$raw_user_agent"].as_str(), ua, "{headers:?}");
                assert_eq!(p["$user_agent"].as_str(), ua, "{headers:?}");
                assert_eq!(p["$referrer"], referrer, "{headers:?}");
                assert_eq!(p["$referring_domain"], domain, "{headers:?}");
            }
        }
    }

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
