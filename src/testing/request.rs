//! What the mock saw: [`RecordedRequest`].

use bytes::Bytes;
use http::{HeaderMap, Method, StatusCode};

/// One request received by [`MockPostHog`](super::MockPostHog), with the answer it got.
///
/// Every request is recorded, whatever its path and whatever the answer,
/// including connection resets and bodies too large to read.
///
/// # Examples
///
/// ```
/// use bytes::Bytes;
/// use http_body_util::Full;
/// use hyper_util::client::legacy::Client;
/// use hyper_util::rt::TokioExecutor;
/// use posthog_tower::testing::MockPostHog;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let mock = MockPostHog::start().await?;
/// let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
/// let request = http::Request::post(format!("{}/flags/?v=2", mock.url()))
///     .header("content-type", "application/json")
///     .body(Full::new(Bytes::from_static(br#"{"distinct_id":"u1"}"#)))?;
/// client.request(request).await?;
///
/// let seen = &mock.requests_to("/flags")[0];
/// assert_eq!(seen.method, http::Method::POST);
/// assert_eq!(seen.query.as_deref(), Some("v=2"));
/// assert_eq!(seen.header("content-type"), Some("application/json"));
/// assert_eq!(seen.json().unwrap()["distinct_id"], "u1");
/// assert_eq!(seen.status, 200);
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct RecordedRequest {
    /// The request method.
    pub method: Method,
    /// The URI path, as sent (`"/batch/"`).
    pub path: String,
    /// The URI query, without the `?`, if there was one.
    pub query: Option<String>,
    /// The request headers.
    pub headers: HeaderMap,
    /// The body, decoded when the request had a `Content-Encoding` the mock
    /// knows and decoding succeeded (otherwise as received, see
    /// [`gzip_decode_failed`](Self::gzip_decode_failed)). Empty when the
    /// body was too large (status 413).
    pub body: Bytes,
    /// The number of body bytes received on the wire (before decoding).
    pub raw_len: usize,
    /// Whether the request had `Content-Encoding: gzip`.
    pub gzip: bool,
    /// The request's `Content-Encoding` (lowercased), if it had one; the body above is
    /// decoded from it (gzip, deflate, and br and zstd with the crate's `brotli` and `zstd`
    /// features).
    pub content_encoding: Option<String>,
    /// Whether the request claimed an encoding (gzip or another) but its body
    /// could not be decoded;
    /// [`body`](Self::body) then holds the bytes as received.
    pub gzip_decode_failed: bool,
    /// When the request arrived, on tokio's clock (paused test time applies),
    /// before any [`delay`](super::MockResponse::delay).
    pub received_at: tokio::time::Instant,
    /// The status the mock answered with; 499 when it reset the connection
    /// without processing the request
    /// ([`MockResponse::reset_connection`](super::MockResponse::reset_connection)),
    /// the status it would have answered with when it processed the request
    /// and then lost the answer
    /// ([`MockResponse::lose_response`](super::MockResponse::lose_response)).
    pub status: StatusCode,
    /// Whether the mock closed the connection instead of answering
    /// ([`MockResponse::reset_connection`](super::MockResponse::reset_connection)
    /// or [`MockResponse::lose_response`](super::MockResponse::lose_response)).
    pub reset: bool,
    /// The headers of the mock's answer (empty for a reset connection).
    pub response_headers: HeaderMap,
    /// The body of the mock's answer.
    pub response_body: Bytes,
}

impl RecordedRequest {
    /// The body parsed as JSON, or `None` if it is not JSON.
    pub fn json(&self) -> Option<serde_json::Value> {
        serde_json::from_slice(&self.body).ok()
    }

    /// The first value of header `name` (case-insensitive), if present and
    /// visible ASCII.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}
