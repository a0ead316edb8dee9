//! [`PropagateContext`]: the caller's identity carried to the application's own services.

use std::{
    fmt,
    sync::Arc,
    task::{Context, Poll},
};

use http::{header::HOST, HeaderMap, HeaderName, HeaderValue, Request};
use tower_layer::Layer;
use tower_service::Service;

use super::head::{DISTINCT_ID_HEADER, SESSION_ID_HEADER, WINDOW_ID_HEADER};
use crate::context::RequestContext;

/// Applies [`PropagateContext`] to an outbound HTTP client. See [`PropagateContext`].
///
/// ```
/// use posthog_tower::http::PropagateContextLayer;
///
/// // Only the application's own services get the caller's ids.
/// let layer = PropagateContextLayer::new()
///     .allow_host("orders.internal")
///     .allow_host("*.svc.cluster.local");
/// ```
#[derive(Clone, Default)]
pub struct PropagateContextLayer {
    hosts: Arc<[HostRule]>,
}

/// One allowed host: exact (`orders.internal`, any port; `orders.internal:8080`, that port) or
/// a suffix (`*.svc.cluster.local`).
#[derive(Clone, Debug, PartialEq, Eq)]
enum HostRule {
    Exact { host: String, port: Option<u16> },
    Suffix(String),
}

impl PropagateContextLayer {
    /// A layer that propagates to no host until some are allowed: ids never reach a third
    /// party by accident.
    pub fn new() -> Self {
        Self::default()
    }

    /// Also propagates to `host`: `api.internal` (any port), `api.internal:8080` (that port
    /// only) or `*.svc.cluster.local` (every subdomain of it, not itself). Hosts compare
    /// without regard to case; an empty or malformed rule allows nothing.
    #[must_use]
    pub fn allow_host(mut self, host: impl AsRef<str>) -> Self {
        if let Some(rule) = HostRule::parse(host.as_ref()) {
            let mut hosts = self.hosts.to_vec();
            hosts.push(rule);
            self.hosts = hosts.into();
        }
        self
    }
}

impl HostRule {
    fn parse(text: &str) -> Option<HostRule> {
        let text = text.trim().to_ascii_lowercase();
        if let Some(suffix) = text.strip_prefix("*.") {
            return (!suffix.is_empty() && !suffix.contains([':', '/', '*']))
                .then(|| HostRule::Suffix(format!(".{suffix}")));
        }
        let (host, port) = match text.rsplit_once(':') {
            Some((host, port)) if !host.contains(':') => (host, Some(port.parse().ok()?)),
            _ => (text.as_str(), None),
        };
        (!host.is_empty() && !host.contains(['/', '*', '@'])).then(|| HostRule::Exact {
            host: host.to_owned(),
            port,
        })
    }

    fn allows(&self, host: &str, port: Option<u16>) -> bool {
        match self {
            HostRule::Exact { host: h, port: p } => {
                h.eq_ignore_ascii_case(host) && (p.is_none() || *p == port)
            }
            HostRule::Suffix(suffix) => {
                host.len() > suffix.len()
                    && host.is_char_boundary(host.len() - suffix.len())
                    && host[host.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
            }
        }
    }
}

impl fmt::Debug for PropagateContextLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PropagateContextLayer")
            .field("hosts", &self.hosts)
            .finish()
    }
}

impl<S> Layer<S> for PropagateContextLayer {
    type Service = PropagateContext<S>;

    fn layer(&self, inner: S) -> Self::Service {
        PropagateContext {
            inner,
            hosts: self.hosts.clone(),
        }
    }
}

/// Middleware for an outbound HTTP client (any `Service<http::Request<B>>`: hyper-util's
/// client, a tonic channel, the crate's own [`HttpClient`](crate::net::HttpClient)) that
/// carries the current [request context](crate::context::RequestContext)'s caller to the
/// application's other services: requests to an allowed host get `X-POSTHOG-DISTINCT-ID`,
/// `X-POSTHOG-SESSION-ID` and `X-POSTHOG-WINDOW-ID` (those the context has), which
/// [`PostHogLayer`](super::PostHogLayer)'s default resolver reads there, so their events and
/// flags are the same person's.
///
/// Nothing is added outside a request context, for an anonymous caller (no distinct id), to a
/// host not on the allow-list (empty by default), or where the request already carries the
/// header. The request is otherwise unchanged, and `poll_ready` and errors pass through.
///
/// With the `reqwest` feature it also wraps a `reqwest::Client` (a `Service<reqwest::Request>`),
/// with the same allow-list:
///
/// ```no_run
/// # #[cfg(feature = "reqwest")]
/// # async fn f() -> Result<(), reqwest::Error> {
/// use posthog_tower::http::PropagateContextLayer;
/// use tower::{Layer, ServiceExt};
///
/// let http = reqwest::Client::new();
/// let orders = PropagateContextLayer::new()
///     .allow_host("orders.internal")
///     .layer(http.clone());
/// // Inside a handler behind `PostHogLayer`:
/// let request = http.get("http://orders.internal/v1/orders").build()?;
/// let response = orders.oneshot(request).await?;
/// # drop(response);
/// # Ok(())
/// # }
/// ```
///
/// A job queue carries the context the same way: put the two headers' values in the job
/// when it is enqueued, and on the worker run the job inside
/// [`RequestContext::new(distinct_id).with_session_id(..).scope(job)`](crate::context::RequestContext::scope).
///
/// ```
/// use http_body_util::Empty;
/// use hyper_util::{client::legacy::Client, rt::TokioExecutor};
/// use posthog_tower::http::PropagateContextLayer;
/// use tower::ServiceBuilder;
///
/// # fn f() {
/// let http = Client::builder(TokioExecutor::new()).build_http::<Empty<bytes::Bytes>>();
/// let client = ServiceBuilder::new()
///     .layer(PropagateContextLayer::new().allow_host("orders.internal"))
///     .service(http);
/// // Inside a handler behind `PostHogLayer`: `client.oneshot(request)` to
/// // http://orders.internal/... carries the caller.
/// # drop(client);
/// # }
/// ```
#[derive(Clone)]
pub struct PropagateContext<S> {
    inner: S,
    hosts: Arc<[HostRule]>,
}

impl<S> PropagateContext<S> {
    /// Wraps `inner`, propagating to the hosts `layer` allows.
    pub fn new(inner: S, layer: &PropagateContextLayer) -> Self {
        layer.layer(inner)
    }

    define_inner_service_accessors!();

    /// Adds the current context's ids to `request` when its host is allowed.
    fn propagate<B>(&self, request: &mut Request<B>) {
        if self.hosts.is_empty() {
            return;
        }
        if let Some(authority) = request.uri().authority() {
            let (host, port) = (authority.host(), authority.port_u16());
            if allowed(&self.hosts, host, port) {
                add_ids(request.headers_mut());
            }
            return;
        }
        let Some(authority) = request
            .headers()
            .get(HOST)
            .and_then(|host| host.to_str().ok())
            .and_then(|host| host.parse::<http::uri::Authority>().ok())
        else {
            return;
        };
        if allowed(&self.hosts, authority.host(), authority.port_u16()) {
            add_ids(request.headers_mut());
        }
    }
}

/// Whether a request to `host` (and `port`, when the URL names one) may carry the ids.
fn allowed(hosts: &[HostRule], host: &str, port: Option<u16>) -> bool {
    hosts.iter().any(|rule| rule.allows(host, port))
}

/// Adds the current context's distinct id, session id and window id to `headers`, each
/// unless `headers` has it already; nothing outside a context or for an anonymous caller.
fn add_ids(headers: &mut HeaderMap) {
    let Some(ctx) = RequestContext::current() else {
        return;
    };
    let Some(distinct_id) = ctx.distinct_id() else {
        return;
    };
    for (name, value) in [
        (DISTINCT_ID_HEADER, Some(distinct_id)),
        (SESSION_ID_HEADER, ctx.session_id()),
        (WINDOW_ID_HEADER, ctx.window_id()),
    ] {
        let (Some(value), name) = (value, HeaderName::from_static(name)) else {
            continue;
        };
        // Ids are cleaned of control characters when read; any other byte is allowed in
        // a header value.
        if let (false, Ok(value)) = (
            headers.contains_key(&name),
            HeaderValue::from_bytes(value.as_bytes()),
        ) {
            headers.insert(name, value);
        }
    }
}

impl<S: fmt::Debug> fmt::Debug for PropagateContext<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PropagateContext")
            .field("inner", &self.inner)
            .field("hosts", &self.hosts)
            .finish()
    }
}

impl<S, B> Service<Request<B>> for PropagateContext<S>
where
    S: Service<Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        self.propagate(&mut request);
        self.inner.call(request)
    }
}

/// `reqwest::Client` is a `Service<reqwest::Request>`, not of `http::Request`: the same
/// middleware serves it (feature `reqwest`), with the same allow-list.
#[cfg(feature = "reqwest")]
#[cfg_attr(docsrs, doc(cfg(feature = "reqwest")))]
impl<S> Service<reqwest::Request> for PropagateContext<S>
where
    S: Service<reqwest::Request>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: reqwest::Request) -> Self::Future {
        if !self.hosts.is_empty() {
            let url = request.url();
            if let Some(host) = url.host_str() {
                if allowed(&self.hosts, host, url.port()) {
                    add_ids(request.headers_mut());
                }
            }
        }
        self.inner.call(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_rules() {
        let exact = HostRule::parse("Orders.Internal").unwrap();
        assert!(exact.allows("orders.internal", None));
        assert!(exact.allows("orders.internal", Some(8080)));
        assert!(!exact.allows("evil-orders.internal", None));
        let port = HostRule::parse("orders.internal:8080").unwrap();
        assert!(port.allows("orders.internal", Some(8080)));
        assert!(!port.allows("orders.internal", Some(8081)));
        assert!(!port.allows("orders.internal", None));
        let suffix = HostRule::parse("*.svc.cluster.local").unwrap();
        assert!(suffix.allows("orders.svc.cluster.local", Some(80)));
        assert!(!suffix.allows("svc.cluster.local", None));
        assert!(!suffix.allows("orders.svc.cluster.local.evil.com", None));
        for bad in ["", "*.", "a/b", "host:notaport", "*", "user@host"] {
            assert_eq!(HostRule::parse(bad), None, "{bad}");
        }
    }
}
