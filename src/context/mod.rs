//! The request context: who is calling and where, inherited by events captured while a request
//! is handled.
//!
//! [`PostHogLayer`](crate::http::PostHogLayer) (or
//! [`SetRequestContext`](crate::http::SetRequestContext)) builds a [`RequestContext`] for each
//! request, puts it in the request's extensions (read it with
//! [`RequestContext::from_extensions`]) and makes it the *current* context of the task that
//! runs the handler. While it is current, [`PostHog::capture`](crate::PostHog::capture)
//! fills in what an event leaves out:
//!
//! - an event made with [`Event::named`] gets the caller's distinct id (or, for an anonymous
//!   caller, stays personless);
//! - an event without a distinct id, or with the caller's own, gets `$session_id`,
//!   `$current_url`, `$request_method`, `$request_path` (and `$ip` when the layer captures it)
//!   unless it already has them.
//!
//! The context is task-local: it follows the handler across `.await`s but **not** into tasks it
//! spawns. Carry it there with [`RequestContext::current`] and [`RequestContext::scope`]. It is
//! current while the response future runs (where a handler's code runs); a middleware's
//! synchronous `call` inside the layer finds it in the request's extensions instead
//! ([`RequestContext::from_extensions`]).
//! Outside a request you can make one yourself, for example for a background job acting for a
//! user.
//!
//! # Example
//!
//! ```
//! use posthog_tower::{context::RequestContext, Event};
//!
//! # async fn handler(posthog: posthog_tower::PostHog) {
//! // Inside a handler behind `PostHogLayer`: the event gets the caller's distinct id.
//! posthog.capture(Event::named("report exported")).ok();
//!
//! // Spawned tasks do not inherit the context: hand it over.
//! let ctx = RequestContext::current();
//! tokio::spawn(async move {
//!     let work = async {
//!         posthog.capture(Event::named("export finished")).ok();
//!     };
//!     match ctx {
//!         Some(ctx) => ctx.scope(work).await,
//!         None => work.await,
//!     }
//! });
//! # }
//! ```

use std::{
    any::Any,
    fmt,
    future::Future,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex, OnceLock,
    },
};

use http::{uri::PathAndQuery, HeaderValue, Method, Uri};
use serde_json::{Map, Value};

use crate::{event::StaticKey, Event};

mod current;
pub(crate) mod host;
pub(crate) mod tag;

pub use current::Scoped;
pub(crate) use current::{drop_in_scope, Enter};

use host::Host;

/// Who is calling and where: a distinct id (or none for an anonymous caller), a session id, and
/// the request's URL, method and path.
///
/// Cheap to clone (an `Arc` inside). See the [module docs](self).
#[derive(Clone)]
pub struct RequestContext {
    inner: Arc<Data>,
}

#[derive(Clone, Default)]
struct Data {
    /// Per-request state the HTTP layer attaches (the request's flag evaluations), created on
    /// first use. See [`RequestContext::attached`].
    attached: PerRequest<OnceLock<Arc<dyn Any + Send + Sync>>>,
    /// State shared by every request of the layer that handles this one (where its flags come
    /// from), given when the context is built. See [`RequestContext::attach_layer_state`].
    layer_state: PerRequest<Option<Arc<dyn Any + Send + Sync>>>,
    /// The same, attached later to a context built without it (by an outer layer).
    layer_state_later: PerRequest<OnceLock<Arc<dyn Any + Send + Sync>>>,
    /// Whether a layer captures this request's pageview. See
    /// [`RequestContext::claim_pageview`].
    pageview_claimed: PerRequest<AtomicBool>,
    /// The first `$exception` captured while handling the request. See
    /// [`RequestContext::record_exception`].
    exception: PerRequest<OnceLock<uuid::Uuid>>,
    distinct_id: Option<String>,
    session_id: Option<String>,
    method: Option<Method>,
    /// The request's path and query (its path is `$request_path`), or a path set by hand.
    path: Option<Path>,
    /// `$current_url`: set by hand, or built from the request on first use.
    current_url: Url,
    ip: Option<String>,
    /// The request's `User-Agent` (a clone of the request's header value: no copy of its
    /// bytes), checked when read.
    user_agent: Option<HeaderValue>,
    /// posthog-js's `X-POSTHOG-WINDOW-ID`.
    window_id: Option<String>,
    /// posthog-js's device id, from its cookie.
    device_id: Option<String>,
    /// Properties every event captured in this context gets. See [`RequestContext::tag`].
    tags: Tags,
}

/// A context's tags: nothing allocated until the first one, and no lock taken to find there
/// are none.
#[derive(Default)]
struct Tags {
    /// Set once a tag is (the map is then never empty).
    any: AtomicBool,
    map: Mutex<Option<Map<String, Value>>>,
}

impl Tags {
    fn new(tags: Option<Map<String, Value>>) -> Self {
        let tags = tags.filter(|t| !t.is_empty());
        Tags {
            any: AtomicBool::new(tags.is_some()),
            map: Mutex::new(tags),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Map<String, Value>>> {
        // Every update is one map insertion: a poisoned lock still holds a valid map.
        self.map
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn insert(&self, key: String, value: Value) {
        self.lock().get_or_insert_with(Map::new).insert(key, value);
        self.any.store(true, Ordering::Release);
    }

    fn snapshot(&self) -> Option<Map<String, Value>> {
        if !self.any.load(Ordering::Acquire) {
            return None;
        }
        self.lock().clone()
    }
}

impl Clone for Tags {
    /// A copy of the tags set so far: a context derived from another inherits them, and
    /// tags set on either later stay its own.
    fn clone(&self) -> Self {
        Tags::new(self.snapshot())
    }
}

/// What the HTTP layer builds a request's context from.
pub(crate) struct RequestParts<'a> {
    pub(crate) distinct_id: Option<String>,
    pub(crate) session_id: Option<String>,
    pub(crate) method: &'a Method,
    /// Gives the path and query (`$request_path`, and `$current_url` with `scheme` and `host`).
    pub(crate) uri: &'a Uri,
    pub(crate) scheme: &'static str,
    /// With its port, if any.
    pub(crate) host: Host,
    pub(crate) ip: Option<String>,
    /// As the request has it.
    pub(crate) user_agent: Option<HeaderValue>,
    pub(crate) window_id: Option<String>,
    pub(crate) device_id: Option<String>,
    /// Tags every event of the request gets (`PostHogLayer::properties`).
    pub(crate) tags: Option<Map<String, Value>>,
    /// See [`RequestContext::attach_layer_state`].
    pub(crate) layer_state: Option<Arc<dyn Any + Send + Sync>>,
}

/// State that belongs to one request: a context changed with a `with_*` method (a copy of the
/// data) starts with a fresh one.
#[derive(Default)]
struct PerRequest<T>(T);

impl<T: Default> Clone for PerRequest<T> {
    fn clone(&self) -> Self {
        PerRequest::default()
    }
}

#[derive(Clone)]
enum Path {
    /// The request's path and query (`/` when its URI has none).
    Uri(PathAndQuery),
    Text(String),
    /// A request target holding control characters (`http` accepts some non-ASCII bytes):
    /// kept with those characters percent-encoded.
    Escaped {
        path: String,
        path_and_query: String,
    },
}

/// `value` with every control character percent-encoded (its UTF-8 bytes).
fn escape_controls(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 8);
    for c in value.chars() {
        if c.is_control() {
            let mut buf = [0u8; 4];
            for b in c.encode_utf8(&mut buf).bytes() {
                out.push_str(&format!("%{b:02X}"));
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[derive(Clone, Default)]
enum Url {
    #[default]
    None,
    Text(String),
    /// Built from these parts the first time it is needed (most requests never need it).
    Parts {
        scheme: &'static str,
        host: Host,
        built: OnceLock<String>,
    },
}

impl RequestContext {
    /// A context for `distinct_id` (`None`: an anonymous caller) with nothing else set.
    ///
    /// ```
    /// use posthog_tower::context::RequestContext;
    ///
    /// let ctx = RequestContext::new(Some("user-42".into())).with_session_id("s-1");
    /// assert_eq!(ctx.distinct_id(), Some("user-42"));
    /// assert!(!ctx.is_anonymous());
    /// ```
    pub fn new(distinct_id: Option<String>) -> Self {
        RequestContext {
            inner: Arc::new(Data {
                distinct_id: distinct_id.filter(|id| !id.trim().is_empty()),
                ..Data::default()
            }),
        }
    }

    /// The context of an HTTP request: what the HTTP layer builds.
    #[inline]
    pub(crate) fn for_request(parts: RequestParts<'_>) -> Self {
        RequestContext {
            inner: Arc::new(Data {
                attached: PerRequest::default(),
                // Not a `OnceLock` set here: setting one synchronises, which a context that
                // no other thread can see yet does not need (about 80 instructions a request).
                layer_state: PerRequest(parts.layer_state),
                layer_state_later: PerRequest::default(),
                pageview_claimed: PerRequest::default(),
                exception: PerRequest::default(),
                distinct_id: parts.distinct_id,
                session_id: parts.session_id,
                method: Some(parts.method.clone()),
                path: Some(path_of(parts.uri)),
                current_url: Url::Parts {
                    scheme: parts.scheme,
                    host: parts.host,
                    built: OnceLock::new(),
                },
                ip: parts.ip,
                user_agent: parts.user_agent,
                window_id: parts.window_id,
                device_id: parts.device_id,
                tags: Tags::new(parts.tags),
            }),
        }
    }

    /// Sets the session id (`$session_id` of the events captured in this context).
    #[must_use]
    pub fn with_session_id(mut self, session_id: impl Into<String>) -> Self {
        Arc::make_mut(&mut self.inner).session_id = Some(session_id.into());
        self
    }

    /// Sets the request's full URL (`$current_url`).
    #[must_use]
    pub fn with_current_url(mut self, url: impl Into<String>) -> Self {
        Arc::make_mut(&mut self.inner).current_url = Url::Text(url.into());
        self
    }

    /// Sets the request's method (`$request_method`) and path (`$request_path`). A method
    /// that is not a valid HTTP method is ignored.
    #[must_use]
    pub fn with_request(mut self, method: impl AsRef<str>, path: impl Into<String>) -> Self {
        let data = Arc::make_mut(&mut self.inner);
        data.method = Method::from_bytes(method.as_ref().as_bytes()).ok();
        data.path = Some(Path::Text(path.into()));
        self
    }

    /// Sets the caller's IP address (`$ip`, used by PostHog for geolocation).
    #[must_use]
    pub fn with_ip(mut self, ip: impl Into<String>) -> Self {
        Arc::make_mut(&mut self.inner).ip = Some(ip.into());
        self
    }

    /// The caller's distinct id, `None` for an anonymous caller.
    pub fn distinct_id(&self) -> Option<&str> {
        self.inner.distinct_id.as_deref()
    }

    /// `true` when the caller could not be identified: events are personless.
    pub fn is_anonymous(&self) -> bool {
        self.inner.distinct_id.is_none()
    }

    /// The session id, if the caller sent one.
    pub fn session_id(&self) -> Option<&str> {
        self.inner.session_id.as_deref()
    }

    /// The request's full URL (`$current_url`): `scheme://host/path?query`, or only the path
    /// and query when the request named no valid host.
    pub fn current_url(&self) -> Option<&str> {
        match &self.inner.current_url {
            Url::None => None,
            Url::Text(url) => Some(url),
            Url::Parts { host, built, .. } => Some(built.get_or_init(|| {
                self.current_url_parts(host.get())
                    .unwrap_or_default()
                    .concat()
            })),
        }
    }

    /// [`current_url`](Self::current_url) as the pieces it is made of (scheme, `://`, host,
    /// path and query), for writing it without building it; `host` is [`host`](Self::host),
    /// which the caller has already read.
    pub(crate) fn current_url_parts<'a>(&'a self, host: Option<&'a str>) -> Option<[&'a str; 4]> {
        match &self.inner.current_url {
            Url::None => None,
            Url::Text(url) => Some([url, "", "", ""]),
            Url::Parts { built, .. } if built.get().is_some() => {
                built.get().map(|url| [url.as_str(), "", "", ""])
            }
            Url::Parts { scheme, .. } => {
                let pq = match &self.inner.path {
                    Some(Path::Uri(pq)) => pq.as_str(),
                    Some(Path::Text(path)) => path,
                    Some(Path::Escaped { path_and_query, .. }) => path_and_query,
                    None => "/",
                };
                Some(match host {
                    Some(host) => [scheme, "://", host, pq],
                    None => [pq, "", "", ""],
                })
            }
        }
    }

    /// The host of [`current_url`](Self::current_url) (with its port), when known.
    pub fn host(&self) -> Option<&str> {
        match &self.inner.current_url {
            Url::Parts { host, .. } => host.get(),
            _ => None,
        }
    }

    /// The request's method.
    pub fn method(&self) -> Option<&str> {
        self.inner.method.as_ref().map(Method::as_str)
    }

    /// The request's path.
    pub fn path(&self) -> Option<&str> {
        match self.inner.path.as_ref()? {
            Path::Uri(pq) => Some(pq.path()),
            Path::Text(path) | Path::Escaped { path, .. } => Some(path),
        }
    }

    /// The caller's IP address, when the layer was asked to capture it.
    pub fn ip(&self) -> Option<&str> {
        self.inner.ip.as_deref()
    }

    /// The request's `User-Agent`, trimmed; `None` when it is not UTF-8 or holds control
    /// characters (which no browser sends).
    pub fn user_agent(&self) -> Option<&str> {
        let value = self.inner.user_agent.as_ref()?;
        let text = std::str::from_utf8(value.as_bytes()).ok()?.trim();
        (!text.is_empty() && !crate::event::has_control(text)).then_some(text)
    }

    /// The request's `User-Agent` as it came.
    pub(crate) fn user_agent_header(&self) -> Option<&HeaderValue> {
        self.inner.user_agent.as_ref()
    }

    /// posthog-js's window id (`X-POSTHOG-WINDOW-ID`), for `$window_id`.
    pub fn window_id(&self) -> Option<&str> {
        self.inner.window_id.as_deref()
    }

    /// posthog-js's device id, from its cookie, for `$device_id`.
    pub fn device_id(&self) -> Option<&str> {
        self.inner.device_id.as_deref()
    }

    /// Tags every event captured in this context from now on (this request's pageview and
    /// exceptions included) with the property `key`: posthog-python's `tag()`. An event that
    /// sets `key` itself keeps its own value. Fails, changing nothing, for a value JSON cannot
    /// represent (`NaN`).
    ///
    /// A context derived from this one ([`nested`](Self::nested), the `with_*` methods) starts
    /// with a copy of its tags; tags set on either afterwards are its own.
    ///
    /// ```
    /// use posthog_tower::context::RequestContext;
    ///
    /// let ctx = RequestContext::new(Some("user-42".into()));
    /// ctx.tag("plan", "pro").unwrap();
    /// ctx.tag("seats", 12).unwrap();
    /// assert!(ctx.tag("ratio", f64::NAN).is_err());
    /// assert_eq!(ctx.tags()["plan"], "pro");
    /// ```
    pub fn tag(
        &self,
        key: impl Into<String>,
        value: impl serde::Serialize,
    ) -> Result<(), crate::PropertyError> {
        let value = crate::event::to_property_value(value)?;
        self.inner.tags.insert(key.into(), value);
        Ok(())
    }

    /// The tags set so far (see [`tag`](Self::tag)).
    pub fn tags(&self) -> Map<String, Value> {
        self.inner.tags.snapshot().unwrap_or_default()
    }

    /// Runs `f` on the tags, if any are set (one atomic load when none is).
    pub(crate) fn with_tags<R>(&self, f: impl FnOnce(&Map<String, Value>) -> R) -> Option<R> {
        let tags = &self.inner.tags;
        if !tags.any.load(Ordering::Acquire) {
            return None;
        }
        tags.lock().as_ref().map(f)
    }

    /// A context for a part of this request's work (a job, a batch of events) that inherits
    /// everything this one has (caller, session, URL, tags) but keeps the tags set in it to
    /// itself: posthog-python's `new_context()`. For a fresh one, as `new_context(fresh=True)`,
    /// make a [`new`](Self::new) context.
    ///
    /// ```
    /// use posthog_tower::context::RequestContext;
    ///
    /// let request = RequestContext::new(Some("user-42".into()));
    /// request.tag("plan", "pro").unwrap();
    /// let job = request.nested();
    /// job.tag("job", "export").unwrap();
    /// assert_eq!(job.tags().len(), 2);
    /// assert_eq!(request.tags().len(), 1, "the job's tags stay its own");
    /// assert_eq!(job.distinct_id(), Some("user-42"));
    /// ```
    pub fn nested(&self) -> RequestContext {
        RequestContext {
            inner: Arc::new((*self.inner).clone()),
        }
    }

    /// The context of the request this task is handling, if any.
    pub fn current() -> Option<RequestContext> {
        current::current()
    }

    /// The request context in a request's extensions: the `RequestContext` entry that
    /// [`PostHogLayer`](crate::http::PostHogLayer) (or
    /// [`SetRequestContext`](crate::http::SetRequestContext)) inserts, or one you insert
    /// yourself. The layer puts nothing else there: the request's flags hang off its context
    /// (one entry, one allocation, per request). The axum extractor for `RequestContext` reads
    /// it this way too.
    ///
    /// ```
    /// use posthog_tower::context::RequestContext;
    ///
    /// let mut request = http::Request::new(());
    /// assert!(RequestContext::from_extensions(request.extensions()).is_none());
    ///
    /// request
    ///     .extensions_mut()
    ///     .insert(RequestContext::new(Some("user-42".into())));
    /// let ctx = RequestContext::from_extensions(request.extensions());
    /// assert_eq!(ctx.and_then(RequestContext::distinct_id), Some("user-42"));
    /// ```
    #[inline]
    pub fn from_extensions(extensions: &http::Extensions) -> Option<&RequestContext> {
        extensions.get::<RequestContext>()
    }

    /// Runs `future` with this context as the current one (across its `.await`s).
    pub fn scope<F: Future>(self, future: F) -> Scoped<F> {
        Scoped::new(self, future)
    }

    /// Runs `f` with this context as the current one.
    pub fn sync_scope<R>(self, f: impl FnOnce() -> R) -> R {
        current::sync_scope(self, f)
    }

    /// Fills in what `event` leaves out (see the [module docs](self)).
    /// The state of type `T` attached to this context (and its clones), created by `init` on
    /// first use: lets the HTTP layer keep per-request state without an allocation for the
    /// requests that never use it. `None` if state of another type was attached.
    pub(crate) fn attached<T: Any + Send + Sync>(&self, init: impl FnOnce() -> T) -> Option<&T> {
        self.inner
            .attached
            .0
            .get_or_init(|| Arc::new(init()))
            .downcast_ref()
    }

    /// Claims the request's pageview for the calling layer: `true` the first time (for this
    /// context and its clones), so a request whose layers share its context has one pageview
    /// even when the layer is applied twice.
    #[inline]
    pub(crate) fn claim_pageview(&self) -> bool {
        !self.inner.pageview_claimed.0.swap(true, Ordering::Relaxed)
    }

    /// Records that `$exception` `uuid` was captured while handling this request, unless one
    /// was already: the HTTP layer reports one exception per request, and its pageview refers
    /// to the first.
    pub(crate) fn record_exception(&self, uuid: uuid::Uuid) {
        let _ = self.inner.exception.0.set(uuid);
    }

    /// The first `$exception` captured while handling this request, if any.
    pub(crate) fn exception(&self) -> Option<uuid::Uuid> {
        self.inner.exception.0.get().copied()
    }

    /// Attaches the state every request of one layer shares (an `Arc` clone: no allocation),
    /// unless some was attached already: `true` when this call attached it.
    pub(crate) fn attach_layer_state(&self, state: Arc<dyn Any + Send + Sync>) -> bool {
        self.inner.layer_state.0.is_none() && self.inner.layer_state_later.0.set(state).is_ok()
    }

    /// The layer state of type `T` attached to this context, if any.
    pub(crate) fn layer_state<T: Any + Send + Sync>(&self) -> Option<Arc<T>> {
        let data = &*self.inner;
        let state = data
            .layer_state
            .0
            .as_ref()
            .or(data.layer_state_later.0.get())?;
        state.clone().downcast().ok()
    }

    /// The state of type `T` attached so far, without creating it.
    pub(crate) fn attached_if_any<T: Any + Send + Sync>(&self) -> Option<&T> {
        self.inner.attached.0.get()?.downcast_ref()
    }

    /// The properties this context gives the caller's events.
    pub(crate) fn properties(&self) -> [(StaticKey, Option<&str>); 5] {
        let [session, method, path, ip] = self.properties_but_url();
        [
            session,
            (static_key!("$current_url"), self.current_url()),
            method,
            path,
            ip,
        ]
    }

    /// [`properties`](Self::properties) without `$current_url` (which a pageview writes from
    /// [`current_url_parts`](Self::current_url_parts), without building it).
    pub(crate) fn properties_but_url(&self) -> [(StaticKey, Option<&str>); 4] {
        [
            (static_key!("$session_id"), self.session_id()),
            (static_key!("$request_method"), self.method()),
            (static_key!("$request_path"), self.path()),
            (static_key!("$ip"), self.ip()),
        ]
    }

    pub(crate) fn apply(&self, event: &mut Event) {
        let data = &*self.inner;
        if event.inner.distinct_id().is_none() && event.inner.inherits_distinct_id {
            if let Some(id) = &data.distinct_id {
                event.inner.set_distinct_id(Some(id));
            }
        }
        let own = match (event.inner.distinct_id(), &data.distinct_id) {
            (None, _) => true,
            (Some(a), Some(b)) => a == b,
            (Some(_), None) => false,
        };
        if !own {
            return;
        }
        for (key, value) in self.properties() {
            if let Some(value) = value {
                event.inner.properties.insert_str_if_absent(key.name, value);
            }
        }
        let request = [
            ("$user_agent", self.user_agent()),
            ("$raw_user_agent", self.user_agent()),
            ("$host", self.host()),
            ("$pathname", self.path()),
            ("$window_id", self.window_id()),
            ("$device_id", self.device_id()),
        ];
        for (key, value) in request {
            if let Some(value) = value {
                event.inner.properties.insert_str_if_absent(key, value);
            }
        }
        self.with_tags(|tags| {
            for (key, value) in tags {
                if !event.inner.properties.contains_key(key) {
                    event.insert_value(key, value.clone());
                }
            }
        });
    }
}

/// The URI as a path, escaped if a client slipped control characters into it.
#[inline]
fn path_of(uri: &Uri) -> Path {
    match uri.path_and_query() {
        Some(pq) if crate::event::has_control(pq.as_str()) => Path::Escaped {
            path: escape_controls(uri.path()),
            path_and_query: escape_controls(pq.as_str()),
        },
        Some(pq) => Path::Uri(pq.clone()),
        None => Path::Uri(PathAndQuery::from_static("/")),
    }
}

/// Records `$exception` `uuid` in the current context, if any (see
/// [`RequestContext::record_exception`]).
pub(crate) fn record_current_exception(uuid: uuid::Uuid) {
    if let Some(ctx) = current::current() {
        ctx.record_exception(uuid);
    }
}

/// Applies the current request context, if any, to `event`; an [`Event::named`] left without
/// a distinct id becomes personless.
pub(crate) fn apply_current(event: &mut Event) {
    if let Some(ctx) = current::current() {
        ctx.apply(event);
    }
    if event.inner.distinct_id().is_none() && event.inner.inherits_distinct_id {
        event.inner.inherits_distinct_id = false;
        event.insert_value("$process_person_profile", Value::Bool(false));
    }
}

impl fmt::Debug for RequestContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = &*self.inner;
        f.debug_struct("RequestContext")
            .field("distinct_id", &d.distinct_id)
            .field("session_id", &d.session_id)
            .field("current_url", &self.current_url())
            .field("method", &self.method())
            .field("path", &self.path())
            .field("ip", &d.ip.as_ref().map(|_| "<set>"))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attached_state_is_shared_by_clones_and_not_by_copies() {
        let ctx = RequestContext::new(Some("u".into()));
        assert!(
            ctx.attached_if_any::<u32>().is_none(),
            "created on first use only"
        );
        assert_eq!(ctx.attached(|| 7u32), Some(&7));
        let clone = ctx.clone();
        assert_eq!(clone.attached(|| 8u32), Some(&7), "clones share it");
        assert_eq!(clone.attached_if_any::<String>(), None, "another type");
        let changed = clone.with_session_id("s");
        assert!(
            changed.attached_if_any::<u32>().is_none(),
            "a changed copy starts without"
        );
        assert_eq!(ctx.attached_if_any::<u32>(), Some(&7));
    }

    /// The context of an anonymous `GET` of `uri` over HTTPS from the checked `host`.
    fn https_get(uri: &Uri, host: &str) -> RequestContext {
        RequestContext::for_request(RequestParts {
            distinct_id: None,
            session_id: None,
            method: &Method::GET,
            uri,
            scheme: "https",
            host: Host::checked(Some(host)),
            ip: None,
            user_agent: None,
            window_id: None,
            device_id: None,
            tags: None,
            layer_state: None,
        })
    }

    #[test]
    fn hosts_short_and_long_are_kept_whole() {
        let uri: Uri = "/p?q=1".parse().unwrap();
        for host in [
            "a.example".to_owned(),
            "h".repeat(host::SHORT),
            "h".repeat(host::SHORT + 1),
            format!("{}.example:8080", "é".repeat(40)),
            "x".repeat(300),
        ] {
            let ctx = https_get(&uri, &host);
            assert_eq!(ctx.host(), Some(host.as_str()));
            assert_eq!(
                ctx.current_url(),
                Some(format!("https://{host}/p?q=1").as_str())
            );
        }
    }

    #[tokio::test]
    async fn named_events_inherit_the_callers_id_across_awaits() {
        let ctx = RequestContext::new(Some("user-1".into()))
            .with_session_id("s-1")
            .with_current_url("https://example.com/a?b=1")
            .with_request("GET", "/a");
        let event = ctx
            .scope(async {
                tokio::task::yield_now().await;
                let mut e = Event::named("clicked");
                apply_current(&mut e);
                e
            })
            .await;
        assert_eq!(event.distinct_id(), Some("user-1"));
        assert_eq!(event.properties().to_map()["$session_id"], "s-1");
        assert_eq!(
            event.properties().to_map()["$current_url"],
            "https://example.com/a?b=1"
        );
        assert_eq!(event.properties().to_map()["$request_method"], "GET");
        assert_eq!(event.properties().to_map()["$request_path"], "/a");
        assert!(!event.properties().contains_key("$process_person_profile"));
    }

    #[test]
    fn named_events_outside_a_request_are_personless() {
        let mut e = Event::named("job ran");
        apply_current(&mut e);
        assert_eq!(e.distinct_id(), None);
        assert_eq!(e.properties().to_map()["$process_person_profile"], false);
    }

    #[test]
    fn anonymous_callers_leave_named_events_personless_with_request_properties() {
        let ctx = RequestContext::new(None).with_session_id("s-9");
        let e = ctx.sync_scope(|| {
            let mut e = Event::named("viewed");
            apply_current(&mut e);
            e
        });
        assert_eq!(e.distinct_id(), None);
        assert_eq!(e.properties().to_map()["$process_person_profile"], false);
        assert_eq!(e.properties().to_map()["$session_id"], "s-9");
    }

    #[test]
    fn events_for_someone_else_are_left_alone_and_own_properties_win() {
        let ctx = RequestContext::new(Some("user-1".into())).with_session_id("s-1");
        let (other, own) = ctx.sync_scope(|| {
            let mut other = Event::new("granted", "user-2");
            apply_current(&mut other);
            let mut own = Event::new("saved", "user-1").property("$session_id", "mine");
            apply_current(&mut own);
            (other, own)
        });
        assert!(!other.properties().contains_key("$session_id"));
        assert_eq!(own.properties().to_map()["$session_id"], "mine");
    }

    #[test]
    fn explicitly_anonymous_events_do_not_take_the_callers_id() {
        let ctx = RequestContext::new(Some("user-1".into()));
        let e = ctx.sync_scope(|| {
            let mut e = Event::anonymous("ping");
            apply_current(&mut e);
            e
        });
        assert_eq!(e.distinct_id(), None);
    }

    #[test]
    fn control_characters_in_the_request_target_are_escaped() {
        let uri: Uri = "/a\u{87}b?q=\u{85}"
            .parse()
            .expect("http accepts these bytes");
        let ctx = https_get(&uri, "h");
        assert_eq!(ctx.path(), Some("/a%C2%87b"));
        assert_eq!(ctx.current_url(), Some("https://h/a%C2%87b?q=%C2%85"));
    }

    #[test]
    fn blank_ids_are_anonymous() {
        assert!(RequestContext::new(Some("  ".into())).is_anonymous());
    }
}
