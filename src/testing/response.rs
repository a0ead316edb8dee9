//! Scripted answers: [`MockResponse`].

use std::fmt;
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, RETRY_AFTER};
use http::{HeaderMap, StatusCode};

/// What a response body is made of.
#[derive(Clone, Debug)]
pub(crate) enum ResponseBody {
    /// Chosen when answering: the path's default body for 2xx, `{"error":"mock error"}` otherwise.
    Auto,
    /// A JSON document, sent with `Content-Type: application/json`.
    Json(serde_json::Value),
    /// Bytes sent as they are, with no `Content-Type` unless one was set.
    Raw(Bytes),
}

/// One scripted answer of [`MockPostHog`](super::MockPostHog), built in builder style.
///
/// Queue it for the next request to a path with
/// [`MockPostHog::enqueue`](super::MockPostHog::enqueue), or make it the path's
/// answer whenever nothing is queued with
/// [`MockPostHog::set_default`](super::MockPostHog::set_default).
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use posthog_tower::testing::{MockPostHog, MockResponse};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> std::io::Result<()> {
/// let mock = MockPostHog::start().await?;
/// // The first request to /batch/ is throttled, the second one is slow, then
/// // the default answer (200 {"status": 1}) is back.
/// mock.enqueue("/batch/", MockResponse::status(429).retry_after("3"));
/// mock.enqueue("/batch/", MockResponse::status(200).delay(Duration::from_secs(2)));
/// // Every flags request now answers with an enabled flag.
/// mock.set_default(
///     "/flags/",
///     MockResponse::json(200, serde_json::json!({
///         "flags": {"beta": {"key": "beta", "enabled": true}},
///         "errorsWhileComputingFlags": false,
///     }))
///     .with_header("x-request-id", "abc"),
/// );
/// // The next definitions request is read and then left unanswered.
/// mock.enqueue("/flags/definitions", MockResponse::reset_connection());
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct MockResponse {
    pub(crate) status: StatusCode,
    pub(crate) body: ResponseBody,
    pub(crate) headers: HeaderMap,
    pub(crate) delay: Option<Duration>,
    pub(crate) reset: bool,
}

impl fmt::Debug for MockResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("MockResponse");
        if self.reset && self.status == reset_status() {
            d.field("reset_connection", &true);
        } else {
            d.field("status", &self.status.as_u16());
            match &self.body {
                ResponseBody::Auto => d.field("body", &"<default>"),
                ResponseBody::Json(v) => d.field("body", v),
                ResponseBody::Raw(b) => d.field("body", b),
            };
        }
        if self.reset && self.status != reset_status() {
            d.field("lose_response", &true);
        }
        if !self.headers.is_empty() {
            d.field("headers", &self.headers);
        }
        if let Some(delay) = self.delay {
            d.field("delay", &delay);
        }
        d.finish()
    }
}

/// The status recorded for a request answered by [`MockResponse::reset_connection`].
pub(crate) fn reset_status() -> StatusCode {
    // 499 is within 100..=999, so `from_u16` cannot fail; the fallback only
    // keeps this free of `unwrap`.
    StatusCode::from_u16(499).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

impl MockResponse {
    /// An answer with status `code`.
    ///
    /// The body is chosen when the request is answered: for a 2xx status, the
    /// JSON body of the path's default answer (for example `{"status": 1}` on
    /// `/batch/`, `{}` on a path without a 2xx default); for any other status,
    /// `{"error":"mock error"}`. 204 and 304 answers have no body.
    ///
    /// # Panics
    ///
    /// If `code` is not a valid HTTP status code (100 to 999).
    ///
    /// # Examples
    ///
    /// ```
    /// use posthog_tower::testing::MockResponse;
    ///
    /// let unavailable = MockResponse::status(503);
    /// let accepted = MockResponse::status(200);
    /// # let _ = (unavailable, accepted);
    /// ```
    pub fn status(code: u16) -> Self {
        Self::with_body(code, ResponseBody::Auto)
    }

    /// An answer with status `code` and the JSON document `body`.
    ///
    /// # Panics
    ///
    /// If `code` is not a valid HTTP status code (100 to 999).
    ///
    /// # Examples
    ///
    /// ```
    /// use posthog_tower::testing::MockResponse;
    ///
    /// let invalid_key = MockResponse::json(401, serde_json::json!({
    ///     "type": "authentication_error",
    ///     "detail": "Project API key invalid.",
    /// }));
    /// # let _ = invalid_key;
    /// ```
    pub fn json(code: u16, body: serde_json::Value) -> Self {
        Self::with_body(code, ResponseBody::Json(body))
    }

    /// Reads the request, then closes the connection without answering.
    ///
    /// The client sees a connection error (over HTTP/2, the stream is reset
    /// instead). The request is still recorded, with [`reset`] set and a
    /// status of 499.
    ///
    /// [`reset`]: super::RecordedRequest::reset
    ///
    /// # Examples
    ///
    /// ```
    /// use posthog_tower::testing::{MockPostHog, MockResponse};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> std::io::Result<()> {
    /// let mock = MockPostHog::start().await?;
    /// mock.enqueue("/batch/", MockResponse::reset_connection());
    /// # Ok(())
    /// # }
    /// ```
    pub fn reset_connection() -> Self {
        Self {
            status: reset_status(),
            body: ResponseBody::Auto,
            headers: HeaderMap::new(),
            delay: None,
            reset: true,
        }
    }

    /// Processes the request as this answer says, then closes the connection
    /// instead of sending the answer: the response is lost *after* the server
    /// accepted the request.
    ///
    /// This is the fault behind duplicate deliveries. With a 2xx status on
    /// `/batch/`, the batch counts in [`events`](super::MockPostHog::events)
    /// and [`batches`](super::MockPostHog::batches), as the real service would
    /// have ingested it, while the client sees a connection error (over
    /// HTTP/2, a reset stream) and sends the batch again. The request is
    /// recorded with this answer's status and with [`reset`] set. Combined with
    /// [`delay`](Self::delay), the connection is closed after the wait. On a
    /// [`reset_connection`](Self::reset_connection) answer it changes nothing.
    ///
    /// [`reset`]: super::RecordedRequest::reset
    ///
    /// # Examples
    ///
    /// ```
    /// use posthog_tower::testing::{MockPostHog, MockResponse};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> std::io::Result<()> {
    /// let mock = MockPostHog::start().await?;
    /// // The next batch is ingested, but the client never hears so.
    /// mock.enqueue("/batch/", MockResponse::status(200).lose_response());
    /// # Ok(())
    /// # }
    /// ```
    pub fn lose_response(mut self) -> Self {
        self.reset = true;
        self
    }

    /// Adds a response header. Headers added this way replace the mock's own
    /// `Content-Type`; adding the same name twice sends both values.
    ///
    /// # Panics
    ///
    /// If `name` is not a valid header name or `value` not a valid header value.
    ///
    /// # Examples
    ///
    /// ```
    /// use posthog_tower::testing::MockResponse;
    ///
    /// let answer = MockResponse::status(200)
    ///     .with_header("x-request-id", "abc")
    ///     .with_header(http::header::CACHE_CONTROL, "no-store");
    /// # let _ = answer;
    /// ```
    pub fn with_header<K, V>(mut self, name: K, value: V) -> Self
    where
        K: TryInto<HeaderName>,
        K::Error: fmt::Display,
        V: TryInto<HeaderValue>,
        V::Error: fmt::Display,
    {
        let name = match name.try_into() {
            Ok(name) => name,
            Err(e) => panic!("MockResponse::with_header: invalid header name: {e}"),
        };
        let value = match value.try_into() {
            Ok(value) => value,
            Err(e) => panic!("MockResponse::with_header: invalid value for {name}: {e}"),
        };
        self.headers.append(name, value);
        self
    }

    /// Sets the `Retry-After` header, in seconds (`"30"`) or as an HTTP date.
    ///
    /// # Panics
    ///
    /// If `value` is not a valid header value (for example, holds a newline).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::{Duration, SystemTime};
    /// use posthog_tower::testing::MockResponse;
    ///
    /// let in_seconds = MockResponse::status(429).retry_after("30");
    /// let at_date = MockResponse::status(503)
    ///     .retry_after(httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(60)));
    /// # let _ = (in_seconds, at_date);
    /// ```
    pub fn retry_after(mut self, value: impl Into<String>) -> Self {
        let value = value.into();
        match HeaderValue::try_from(value) {
            Ok(value) => {
                self.headers.insert(RETRY_AFTER, value);
            }
            Err(e) => panic!("MockResponse::retry_after: invalid value: {e}"),
        }
        self
    }

    /// Waits `d` (with [`tokio::time::sleep`], so paused test time applies)
    /// before answering or, with [`reset_connection`](Self::reset_connection),
    /// before closing the connection.
    ///
    /// The request is recorded when it arrives, before the wait.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use posthog_tower::testing::MockResponse;
    ///
    /// let slow = MockResponse::status(200).delay(Duration::from_secs(30));
    /// # let _ = slow;
    /// ```
    pub fn delay(mut self, d: Duration) -> Self {
        self.delay = Some(d);
        self
    }

    /// Replaces the body with `body`, sent as it is (no `Content-Type` unless
    /// set with [`with_header`](Self::with_header)). Useful to feed a client
    /// a malformed answer.
    ///
    /// # Examples
    ///
    /// ```
    /// use posthog_tower::testing::MockResponse;
    ///
    /// let truncated = MockResponse::status(200)
    ///     .with_raw_body(r#"{"flags": {"#)
    ///     .with_header("content-type", "application/json");
    /// # let _ = truncated;
    /// ```
    pub fn with_raw_body(mut self, body: impl Into<Bytes>) -> Self {
        self.body = ResponseBody::Raw(body.into());
        self
    }

    fn with_body(code: u16, body: ResponseBody) -> Self {
        let status = match StatusCode::from_u16(code) {
            Ok(status) => status,
            Err(_) => panic!("MockResponse: {code} is not a valid HTTP status code"),
        };
        Self {
            status,
            body,
            headers: HeaderMap::new(),
            delay: None,
            reset: false,
        }
    }
}
