//! The shared HTTPS client: hyper 1 through hyper-util's pooled client, TLS by rustls.

use std::{
    fmt,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{ready, Context, Poll},
    time::{Duration, SystemTime},
};

use bytes::Bytes;
use http::{header, HeaderValue, Request, Response, StatusCode, Uri};
use http_body::Body;
use http_body_util::{combinators::BoxBody, combinators::Collect, BodyExt, Full, Limited};
use pin_project_lite::pin_project;
use tower::{util::BoxCloneSyncService, ServiceExt};

use crate::BoxError;

/// The `User-Agent` of every request: `posthog-tower/<version>`.
pub const USER_AGENT: &str = concat!("posthog-tower/", env!("CARGO_PKG_VERSION"));

/// The response body of an [`HttpClient`].
pub type ResponseBody = BoxBody<Bytes, BoxError>;

/// A type-erased HTTP client, the bottom of every stack in this crate.
///
/// Anything that is a `Service<http::Request<Full<Bytes>>>` returning an `http::Response` can
/// be turned into one with [`into_http_client`]: wrap it in your own layers (headers, tracing,
/// a proxy) and hand it to [`PostHogBuilder::http_client`](crate::PostHogBuilder::http_client).
pub type HttpClient = BoxCloneSyncService<Request<Full<Bytes>>, Response<ResponseBody>, BoxError>;

/// The default client: HTTP/1.1 and HTTP/2 (negotiated by ALPN), connection reuse, TLS by
/// rustls with the `webpki-roots` (default feature) or `native-roots` trust store. Plain
/// `http://` is allowed too, for a local PostHog or the mock server.
///
/// Creating it needs no runtime; using it needs tokio.
pub fn default_client() -> HttpClient {
    let connector = hyper_rustls::HttpsConnectorBuilder::new();
    #[cfg(feature = "webpki-roots")]
    let connector = connector.with_webpki_roots();
    #[cfg(not(feature = "webpki-roots"))]
    let connector = match connector.with_native_roots() {
        Ok(c) => c,
        Err(e) => {
            // No trust anchors: every TLS handshake fails and is reported as a delivery error.
            tracing::error!(error = %e, "posthog: could not load the system's root certificates");
            hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(
                rustls::ClientConfig::builder()
                    .with_root_certificates(rustls::RootCertStore::empty())
                    .with_no_client_auth(),
            )
        }
    };
    let connector = connector
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .build();
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .pool_timer(hyper_util::rt::TokioTimer::new())
        .build(connector);
    into_http_client(client)
}

/// Erases any HTTP client service into an [`HttpClient`].
///
/// # Example
///
/// ```
/// use bytes::Bytes;
/// use http_body_util::Full;
/// use posthog_tower::net::{into_http_client, HttpClient};
///
/// // A client that answers 200 to everything, for a test.
/// let client: HttpClient = into_http_client(tower::service_fn(|_req: http::Request<Full<Bytes>>| async {
///     Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(Bytes::from_static(b"{}"))))
/// }));
/// ```
pub fn into_http_client<C, B>(client: C) -> HttpClient
where
    C: tower_service::Service<Request<Full<Bytes>>, Response = Response<B>>
        + Clone
        + Send
        + Sync
        + 'static,
    C::Error: Into<BoxError>,
    C::Future: Send + 'static,
    B: http_body::Body<Data = Bytes> + Send + Sync + 'static,
    B::Error: Into<BoxError>,
{
    BoxCloneSyncService::new(
        client
            .map_err(Into::into)
            .map_response(|res: Response<B>| res.map(|b| b.map_err(Into::into).boxed())),
    )
}

pin_project! {
    /// Sends a request through an HTTP client and reads the whole (size-limited) response.
    ///
    /// Shared by every leaf service of the crate: reading the body lets the connection be
    /// reused, and keeps what an error message needs.
    ///
    /// By default a 2xx whose body runs past the limit, or breaks off midway, is an error: the
    /// caller parses that body, and a cut one must not pass for an answer. Answers whose status
    /// says it all opt out with [`acknowledged_by_status`](Self::acknowledged_by_status).
    pub(crate) struct ReadResponse<F, B>
    where
        B: Body,
        B::Error: Into<BoxError>,
    {
        #[pin]
        state: State<F, B>,
        limit: usize,
        acknowledged_by_status: bool,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F, B>
    where
        B: Body,
        B::Error: Into<BoxError>,
    {
        Failed { error: Option<BoxError> },
        Sending { #[pin] future: F },
        Reading {
            #[pin]
            body: Collect<Limited<B>>,
            parts: Option<http::response::Parts>,
        },
    }
}

impl<F, B> ReadResponse<F, B>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    pub(crate) fn new(future: F, limit: usize) -> Self {
        ReadResponse {
            state: State::Sending { future },
            limit,
            acknowledged_by_status: false,
        }
    }

    pub(crate) fn failed(error: BoxError) -> Self {
        ReadResponse {
            state: State::Failed { error: Some(error) },
            limit: 0,
            acknowledged_by_status: false,
        }
    }

    /// A 2xx succeeds on its status alone: a body over the limit, or one the connection cuts
    /// short, leaves [`FullResponse::body`] empty instead of failing the exchange.
    ///
    /// For answers whose body the caller does not need, like `/batch/`'s. Error statuses are
    /// read as usual (the start of their body feeds the error message).
    pub(crate) fn acknowledged_by_status(mut self) -> Self {
        self.acknowledged_by_status = true;
        self
    }
}

/// A response read in full.
#[derive(Debug)]
pub(crate) struct FullResponse {
    pub(crate) status: StatusCode,
    pub(crate) headers: http::HeaderMap,
    pub(crate) body: Bytes,
}

impl FullResponse {
    /// `Ok(self)` for a 2xx status, otherwise an [`UnexpectedStatus`] error quoting the start
    /// of the body, with every occurrence of `secret` replaced by `[redacted]` (a server or a
    /// proxy may echo the request, and the request carries the API key).
    pub(crate) fn into_result(self, secret: Option<&str>) -> Result<Self, BoxError> {
        if self.status.is_success() {
            return Ok(self);
        }
        let retry_after = self
            .headers
            .get(header::RETRY_AFTER)
            .and_then(|v| parse_retry_after(v, SystemTime::now()));
        Err(Box::new(UnexpectedStatus {
            status: self.status,
            retry_after,
            body: snippet(&self.body, secret),
        }))
    }
}

impl<F, E, B> Future for ReadResponse<F, B>
where
    F: Future<Output = Result<Response<B>, E>>,
    E: Into<BoxError>,
    B: Body,
    B::Error: Into<BoxError>,
{
    type Output = Result<FullResponse, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Failed { error } => {
                    let e = error
                        .take()
                        .unwrap_or_else(|| "polled after completion".into());
                    return Poll::Ready(Err(e));
                }
                StateProj::Sending { future } => {
                    let (parts, body) = ready!(future.poll(cx)).map_err(Into::into)?.into_parts();
                    let body = Limited::new(body, *this.limit).collect();
                    this.state.set(State::Reading {
                        body,
                        parts: Some(parts),
                    });
                }
                StateProj::Reading { body, parts } => {
                    let acknowledged = *this.acknowledged_by_status
                        && parts.as_ref().is_some_and(|p| p.status.is_success());
                    let read = match body.poll(cx) {
                        Poll::Ready(read) => read,
                        // The status is the answer: what of the body has not arrived yet is
                        // not waited for (a slow body must not run into the request timeout
                        // and have the batch sent again). A small body usually comes with
                        // the head and is read, which keeps the connection reusable.
                        Poll::Pending if acknowledged => Err("the body is still arriving".into()),
                        Poll::Pending => return Poll::Pending,
                    };
                    let Some(parts) = parts.take() else {
                        return Poll::Ready(Err("polled after completion".into()));
                    };
                    // Drops the body now, not when the caller drops this future. What is left
                    // of an over-limit body is never read: draining it would let a server
                    // hold us for as long as it streams. Hyper closes an HTTP/1 connection
                    // whose body is dropped unread (and resets only the stream on HTTP/2), so
                    // nothing stale can reach the next request.
                    this.state.set(State::Failed { error: None });
                    let body = match read {
                        Ok(collected) => collected.to_bytes(),
                        Err(e) if acknowledged => {
                            // The status line is the acknowledgement; the body adds nothing.
                            tracing::debug!(
                                status = %parts.status,
                                error = %e,
                                "posthog: 2xx body not read to its end; the status stands",
                            );
                            Bytes::new()
                        }
                        // A 2xx whose body cannot be read is a failed exchange; for an error
                        // status the body only feeds the message.
                        Err(e) if parts.status.is_success() => return Poll::Ready(Err(e)),
                        Err(_) => Bytes::new(),
                    };
                    return Poll::Ready(Ok(FullResponse {
                        status: parts.status,
                        headers: parts.headers,
                        body,
                    }));
                }
            }
        }
    }
}

pin_project! {
    /// Response future of the crate's leaf services ([`CaptureTransport`] and
    /// [`RemoteFlags`]): sends the request, reads the response, and turns it into the
    /// service's answer (a non-2xx status is an [`UnexpectedStatus`] error).
    ///
    /// [`CaptureTransport`]: crate::capture::CaptureTransport
    /// [`RemoteFlags`]: crate::flags::RemoteFlags
    pub struct ResponseFuture<F, B, T>
    where
        B: Body,
        B::Error: Into<BoxError>,
    {
        #[pin]
        inner: ReadResponse<F, B>,
        answer: fn(FullResponse) -> Result<T, BoxError>,
        // The API key the request carried, kept out of error messages.
        secret: Option<Arc<str>>,
    }
}

impl<F, B, T> ResponseFuture<F, B, T>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    /// `answer` turns a 2xx response into the service's response.
    pub(crate) fn new(
        inner: ReadResponse<F, B>,
        answer: fn(FullResponse) -> Result<T, BoxError>,
    ) -> Self {
        ResponseFuture {
            inner,
            answer,
            secret: None,
        }
    }

    /// Redacts `secret` from the body quoted by an [`UnexpectedStatus`].
    pub(crate) fn redact(mut self, secret: &Arc<str>) -> Self {
        self.secret = Some(secret.clone());
        self
    }
}

impl<F, B, T> fmt::Debug for ResponseFuture<F, B, T>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<F, E, B, T> Future for ResponseFuture<F, B, T>
where
    F: Future<Output = Result<Response<B>, E>>,
    E: Into<BoxError>,
    B: Body,
    B::Error: Into<BoxError>,
{
    type Output = Result<T, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let response = ready!(this.inner.poll(cx))?.into_result(this.secret.as_deref())?;
        Poll::Ready((this.answer)(response))
    }
}

/// PostHog answered with a status other than 2xx.
///
/// Downcast an error to it to read the status:
///
/// ```
/// # use posthog_tower::{net::UnexpectedStatus, BoxError};
/// fn status(err: &BoxError) -> Option<u16> {
///     err.downcast_ref::<UnexpectedStatus>().map(|e| e.status().as_u16())
/// }
/// ```
#[derive(Debug, Clone)]
pub struct UnexpectedStatus {
    status: StatusCode,
    retry_after: Option<Duration>,
    body: String,
}

impl UnexpectedStatus {
    /// A status error, for custom transports and tests.
    pub fn new(status: StatusCode, retry_after: Option<Duration>) -> Self {
        UnexpectedStatus {
            status,
            retry_after,
            body: String::new(),
        }
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The delay the server asked for in `Retry-After`, if any.
    pub fn retry_after(&self) -> Option<Duration> {
        self.retry_after
    }

    /// The start of the response body (at most 256 characters), with the API key the request
    /// carried replaced by `[redacted]` should the server have echoed it.
    pub fn body(&self) -> &str {
        &self.body
    }
}

impl fmt::Display for UnexpectedStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PostHog answered {}", self.status)?;
        if !self.body.is_empty() {
            write!(f, ": {}", self.body)?;
        }
        Ok(())
    }
}

impl std::error::Error for UnexpectedStatus {}

fn snippet(body: &[u8], secret: Option<&str>) -> String {
    let mut text = String::from_utf8_lossy(body);
    // Redacted before truncating, so that no part of the secret survives the cut.
    if let Some(secret) = secret.filter(|s| !s.is_empty()) {
        if text.contains(secret) {
            text = text.replace(secret, "[redacted]").into();
        }
    }
    let text = text.trim();
    match text.char_indices().nth(256) {
        Some((i, _)) => format!("{}…", &text[..i]),
        None => text.to_owned(),
    }
}

/// Parses `Retry-After`: delta-seconds (fractions accepted) or an HTTP date, relative to
/// `now`. A date in the past is zero; anything unparseable, negative or absurd is `None`.
pub(crate) fn parse_retry_after(value: &HeaderValue, now: SystemTime) -> Option<Duration> {
    let text = value.to_str().ok()?.trim();
    if text.is_empty() {
        return None;
    }
    if text.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        let secs: f64 = text.parse().ok()?;
        // One day is far beyond any cap we apply; larger values are nonsense.
        return (secs.is_finite() && secs <= 86_400.0).then(|| Duration::from_secs_f64(secs));
    }
    let when = httpdate::parse_http_date(text).ok()?;
    Some(when.duration_since(now).unwrap_or(Duration::ZERO))
}

/// `POST uri` with a JSON `body` and the crate's `User-Agent`: the request every PostHog
/// endpoint that takes a body gets, before its own headers.
pub(crate) fn post_json(uri: &Uri, body: Bytes) -> Request<Full<Bytes>> {
    let mut request = Request::new(Full::new(body));
    *request.method_mut() = http::Method::POST;
    *request.uri_mut() = uri.clone();
    let headers = request.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(header::USER_AGENT, HeaderValue::from_static(USER_AGENT));
    request
}

/// `{host}{path}` as a URI, checking the host is an absolute http(s) URL.
pub(crate) fn endpoint(host: &str, path: &str) -> Result<Uri, crate::BuildError> {
    let host = host.trim().trim_end_matches('/');
    let uri: Uri = format!("{host}{path}")
        .parse()
        .map_err(|_| crate::BuildError::InvalidHost(host.to_owned()))?;
    match (uri.scheme_str(), uri.authority()) {
        (Some("http" | "https"), Some(_)) => Ok(uri),
        _ => Err(crate::BuildError::InvalidHost(host.to_owned())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snippets_redact_the_secret_before_truncating() {
        let secret = "phc_secret_key_0123456789";
        // The key straddles the 256-character cut: no part of it may survive.
        let body = format!("{}{secret} tail", "x".repeat(250));
        let text = snippet(body.as_bytes(), Some(secret));
        assert!(!text.contains("phc_se"), "{text}");
        assert!(text.starts_with(&"x".repeat(250)), "{text}");
        assert!(text.contains("[red"), "{text}");

        let text = snippet(
            format!(" bad key {secret}, again {secret} ").as_bytes(),
            Some(secret),
        );
        assert_eq!(text, "bad key [redacted], again [redacted]");
        // No secret, or an empty one: quoted as is.
        assert_eq!(snippet(b" plain ", None), "plain");
        assert_eq!(snippet(b"plain", Some("")), "plain");
    }

    #[test]
    fn status_errors_quote_the_body_without_the_secret() {
        let response = FullResponse {
            status: StatusCode::BAD_REQUEST,
            headers: http::HeaderMap::new(),
            body: Bytes::from_static(br#"{"detail":"invalid api_key phc_k"}"#),
        };
        let error = response.into_result(Some("phc_k")).unwrap_err();
        assert_eq!(
            error.to_string(),
            r#"PostHog answered 400 Bad Request: {"detail":"invalid api_key [redacted]"}"#
        );
    }

    /// A body of the given chunks, then its end, or a connection error when `broken`.
    #[derive(Clone)]
    struct Chunks {
        chunks: std::collections::VecDeque<Bytes>,
        broken: bool,
    }

    impl Chunks {
        fn new(chunks: impl IntoIterator<Item = Bytes>, broken: bool) -> Self {
            Chunks {
                chunks: chunks.into_iter().collect(),
                broken,
            }
        }

        /// `count` chunks of `size` spaces.
        fn spaces(count: usize, size: usize, broken: bool) -> Self {
            Self::new((0..count).map(|_| Bytes::from(vec![b' '; size])), broken)
        }
    }

    impl Body for Chunks {
        type Data = Bytes;
        type Error = std::io::Error;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
            Poll::Ready(match self.chunks.pop_front() {
                Some(chunk) => Some(Ok(http_body::Frame::data(chunk))),
                None if self.broken => Some(Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "connection closed before the body's end",
                ))),
                None => None,
            })
        }
    }

    type Answer = std::future::Ready<Result<Response<Chunks>, std::convert::Infallible>>;

    fn answer(status: u16, body: Chunks) -> Answer {
        let mut response = Response::new(body);
        *response.status_mut() = StatusCode::from_u16(status).unwrap();
        std::future::ready(Ok(response))
    }

    #[tokio::test]
    async fn a_2xx_body_over_the_limit_or_cut_short_fails_a_plain_read() {
        let over = ReadResponse::new(answer(200, Chunks::spaces(3, 10, false)), 25).await;
        let error = over.unwrap_err();
        assert!(
            error
                .downcast_ref::<http_body_util::LengthLimitError>()
                .is_some(),
            "{error}"
        );
        let cut = ReadResponse::new(answer(200, Chunks::spaces(1, 10, true)), 25).await;
        assert!(cut.unwrap_err().to_string().contains("closed"));
        // Within the limit and whole: read in full.
        let whole = ReadResponse::new(answer(200, Chunks::spaces(2, 10, false)), 25).await;
        assert_eq!(whole.unwrap().body.len(), 20);
    }

    #[tokio::test]
    async fn a_2xx_acknowledged_by_its_status_succeeds_whatever_its_body() {
        let read = |body| ReadResponse::new(answer(202, body), 25).acknowledged_by_status();
        for (body, expected) in [
            (Chunks::spaces(2, 10, false), 20),
            // Over the limit: not read past it, and the body is left empty.
            (Chunks::spaces(3, 10, false), 0),
            (Chunks::spaces(10_000, 10, false), 0),
            // Cut short by the connection.
            (Chunks::spaces(1, 10, true), 0),
        ] {
            let response = read(body).await.unwrap();
            assert_eq!(response.status, StatusCode::ACCEPTED);
            assert_eq!(response.body.len(), expected);
        }
    }

    #[tokio::test]
    async fn an_error_status_acknowledged_by_status_is_still_an_error() {
        let fail = |body| async move {
            let read = ReadResponse::new(answer(503, body), 25).acknowledged_by_status();
            ResponseFuture::new(read, |r| Ok(r.status))
                .await
                .unwrap_err()
        };
        let quoted = fail(Chunks::new([Bytes::from_static(b"busy")], false)).await;
        let quoted = quoted.downcast_ref::<UnexpectedStatus>().unwrap();
        assert_eq!((quoted.status().as_u16(), quoted.body()), (503, "busy"));
        for body in [Chunks::spaces(3, 10, false), Chunks::spaces(1, 10, true)] {
            let error = fail(body).await;
            let error = error.downcast_ref::<UnexpectedStatus>().unwrap();
            assert_eq!((error.status().as_u16(), error.body()), (503, ""));
        }
    }

    /// `/flags` bodies are parsed: one over the limit or cut short is an error, never a
    /// truncated answer taken for a whole one.
    #[tokio::test]
    async fn remote_flags_reject_a_2xx_body_over_the_limit_or_cut_short() {
        use crate::flags::{FlagsRequest, RemoteFlags};

        async fn evaluate(body: Chunks) -> Result<crate::flags::FlagsResponse, BoxError> {
            let client =
                tower::service_fn(move |_req: Request<Full<Bytes>>| answer(200, body.clone()));
            RemoteFlags::with_client(client, "http://127.0.0.1:1", "phc_k")
                .unwrap()
                .oneshot(FlagsRequest::new("u"))
                .await
        }
        let json = Bytes::from_static(br#"{"flags":{},"errorsWhileComputingFlags":false}"#);
        let mib = Bytes::from(vec![b' '; 1 << 20]);
        // Trailing whitespace is valid JSON: only the limit (16 MiB) can refuse these.
        let padded = |mibs: usize| [json.clone()].into_iter().chain(vec![mib.clone(); mibs]);
        assert!(evaluate(Chunks::new(padded(1), false)).await.is_ok());
        let over = evaluate(Chunks::new(padded(17), false)).await.unwrap_err();
        assert!(
            over.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some(),
            "{over}"
        );
        // A whole document whose connection then breaks is no answer either.
        assert!(evaluate(Chunks::new([json.clone()], true)).await.is_err());
    }
}
