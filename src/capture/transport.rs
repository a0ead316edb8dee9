//! `CaptureTransport`: sends an [`EncodedBatch`] as `POST {host}/batch/`.

use std::{
    fmt,
    sync::Arc,
    task::{Context, Poll},
    time::SystemTime,
};

use bytes::Bytes;
use http::{header, HeaderValue, Request, Response, StatusCode, Uri};
use http_body::Body;
use http_body_util::Full;
use tower_service::Service;

use super::{Compression, EncodedBatch, StatsRecorder};
use crate::{
    net::{endpoint, FullResponse, HttpClient, ReadResponse, ResponseFuture},
    time::Timestamp,
    BoxError,
};

/// The path of PostHog's AI lane, where [`PostHog::capture_ai`](crate::PostHog::capture_ai)
/// sends LLM analytics events.
pub const AI_BATCH_PATH: &str = "/i/v0/ai/batch/";

/// Most of a response body the transport reads (to reuse the connection and to quote errors).
/// A 2xx body past it is left unread, and the batch delivered all the same.
const MAX_RESPONSE_BODY: usize = 64 * 1024;

/// The leaf service of the capture stack: turns an [`EncodedBatch`] into
/// `POST {host}/batch/` with the body `{api_key, batch, historical_migration, sent_at}`.
///
/// `sent_at` is stamped on every attempt, as PostHog expects; the events themselves (uuids and
/// timestamps included) are the same bytes on every attempt. With gzip on, the body is
/// compressed and sent with `Content-Encoding: gzip`.
///
/// A 2xx answer is success, whatever its body: what of it came with the head is read (at most
/// 64 KiB), the rest is not waited for, and one the connection cuts short is no error either
/// (the status line is PostHog's acknowledgement; sending the batch again would only
/// duplicate it). Any other status is an
/// [`UnexpectedStatus`](crate::net::UnexpectedStatus) error carrying the `Retry-After` delay when
/// the server sent one; transport failures are the HTTP client's own errors.
/// [`RetryPolicy`](super::RetryPolicy) decides what to retry.
///
/// `C` is the HTTP client; by default the shared hyper/rustls client of
/// [`net::default_client`](crate::net::default_client).
///
/// # Example
///
/// ```
/// use std::time::Duration;
/// use posthog_tower::capture::{CaptureTransport, RetryPolicy};
/// use tower::ServiceBuilder;
///
/// let transport = CaptureTransport::new("https://us.i.posthog.com", "phc_project_key")
///     .unwrap()
///     .gzip(true);
/// let stack = ServiceBuilder::new()
///     .retry(RetryPolicy::new(3))
///     .timeout(Duration::from_secs(15))
///     .service(transport);
/// # let _ = stack;
/// ```
#[derive(Clone)]
pub struct CaptureTransport<C = HttpClient> {
    client: C,
    uri: Uri,
    /// `{"api_key":"…","batch":[`
    prefix: Bytes,
    /// Redacted from the error answers quoted in errors and logs.
    api_key: Arc<str>,
    historical_migration: bool,
    gzip: bool,
    stats: Option<StatsRecorder>,
}

impl CaptureTransport<HttpClient> {
    /// A transport to `host` (for example `https://eu.i.posthog.com`) with the default client.
    ///
    /// Fails when `host` is not an absolute http(s) URL.
    pub fn new(host: &str, api_key: &str) -> Result<Self, crate::BuildError> {
        Self::with_client(crate::net::default_client(), host, api_key)
    }
}

impl<C> CaptureTransport<C> {
    /// A transport that sends through `client`.
    pub fn with_client(client: C, host: &str, api_key: &str) -> Result<Self, crate::BuildError> {
        let uri = endpoint(host, "/batch/")?;
        let mut prefix = Vec::with_capacity(api_key.len() + 32);
        prefix.extend_from_slice(br#"{"api_key":"#);
        crate::event::write_json(&mut prefix, api_key);
        prefix.extend_from_slice(br#","batch":["#);
        Ok(CaptureTransport {
            client,
            uri,
            prefix: prefix.into(),
            api_key: api_key.into(),
            historical_migration: false,
            gzip: false,
            stats: None,
        })
    }

    /// A transport to PostHog's AI lane, `POST {host}/i/v0/ai/batch/` ([`AI_BATCH_PATH`]),
    /// sending through `client`: the same body, headers and answers as `/batch/`, for the
    /// LLM analytics events of [`PostHog::capture_ai`](crate::PostHog::capture_ai).
    ///
    /// ```
    /// use posthog_tower::capture::CaptureTransport;
    ///
    /// let client = posthog_tower::net::default_client();
    /// let transport = CaptureTransport::ai_with_client(client, "https://eu.i.posthog.com", "phc_key")?;
    /// assert_eq!(transport.uri().path(), "/i/v0/ai/batch/");
    /// # Ok::<(), posthog_tower::BuildError>(())
    /// ```
    pub fn ai_with_client(client: C, host: &str, api_key: &str) -> Result<Self, crate::BuildError> {
        let mut transport = Self::with_client(client, host, api_key)?;
        transport.uri = endpoint(host, AI_BATCH_PATH)?;
        Ok(transport)
    }

    /// Compresses bodies with gzip (`Content-Encoding: gzip`). Off by default.
    pub fn gzip(mut self, enabled: bool) -> Self {
        self.gzip = enabled;
        self
    }

    /// Sets `historical_migration: true` in every body (for imports of past events).
    pub fn historical_migration(mut self, enabled: bool) -> Self {
        self.historical_migration = enabled;
        self
    }

    /// Counts every request in `stats`.
    pub fn stats(mut self, stats: StatsRecorder) -> Self {
        self.stats = Some(stats);
        self
    }

    /// The URL batches are sent to.
    pub fn uri(&self) -> &Uri {
        &self.uri
    }

    define_client_accessors!();

    fn body(&self, batch: &EncodedBatch) -> Result<(Bytes, bool), std::io::Error> {
        let events = batch.events_json();
        let mut suffix = Vec::with_capacity(72);
        suffix.extend_from_slice(br#"],"historical_migration":"#);
        suffix.extend_from_slice(if self.historical_migration {
            b"true"
        } else {
            b"false"
        });
        suffix.extend_from_slice(br#","sent_at":""#);
        Timestamp::from(SystemTime::now()).write_rfc3339(&mut suffix);
        suffix.extend_from_slice(br#""}"#);
        let len = self.prefix.len() + events.len() + suffix.len();
        let compression = if self.gzip {
            Compression::Gzip
        } else {
            Compression::None
        };
        let body = compression.encode(&[&self.prefix, events, &suffix], len)?;
        Ok((body.into(), self.gzip))
    }
}

impl<C> fmt::Debug for CaptureTransport<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The body prefix holds the API key: never print it.
        f.debug_struct("CaptureTransport")
            .field("uri", &self.uri)
            .field("historical_migration", &self.historical_migration)
            .field("gzip", &self.gzip)
            .finish_non_exhaustive()
    }
}

impl<C, B> Service<EncodedBatch> for CaptureTransport<C>
where
    C: Service<Request<Full<Bytes>>, Response = Response<B>>,
    C::Error: Into<BoxError>,
    B: Body,
    B::Error: Into<BoxError>,
{
    type Response = StatusCode;
    type Error = BoxError;
    type Future = TransportFuture<C::Future, B>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.client.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, batch: EncodedBatch) -> Self::Future {
        let (body, gzipped) = match self.body(&batch) {
            Ok(b) => b,
            Err(e) => return ResponseFuture::new(ReadResponse::failed(e.into()), status),
        };
        let mut req = crate::net::post_json(&self.uri, body);
        let headers = req.headers_mut();
        if gzipped {
            headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        }
        if let Some(stats) = &self.stats {
            stats.request(1);
        }
        diag!(events = batch.len(), uri = %self.uri, "posthog: sending batch");
        ResponseFuture::new(
            ReadResponse::new(self.client.call(req), MAX_RESPONSE_BODY).acknowledged_by_status(),
            status,
        )
        .redact(&self.api_key)
    }
}

/// Response future of [`CaptureTransport`]: the status on 2xx, [`UnexpectedStatus`](crate::net::UnexpectedStatus)
/// otherwise.
pub type TransportFuture<F, B> = ResponseFuture<F, B, StatusCode>;

fn status(response: FullResponse) -> Result<StatusCode, BoxError> {
    Ok(response.status)
}
#[cfg(test)]
mod tests {
    use super::*;

    use crate::net::parse_retry_after;
    use std::time::Duration;

    #[test]
    fn retry_after_forms() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let p = |s: &str| parse_retry_after(&HeaderValue::from_str(s).unwrap(), now);
        assert_eq!(p("3"), Some(Duration::from_secs(3)));
        assert_eq!(p(" 2 "), Some(Duration::from_secs(2)));
        assert_eq!(p("0.5"), Some(Duration::from_millis(500)));
        assert_eq!(p("-1"), None);
        assert_eq!(p("soon"), None);
        assert_eq!(p("1e400"), None);
        assert_eq!(p("999999999999"), None);
        let later = httpdate::fmt_http_date(now + Duration::from_secs(7));
        assert_eq!(p(&later), Some(Duration::from_secs(7)));
        let earlier = httpdate::fmt_http_date(now - Duration::from_secs(7));
        assert_eq!(p(&earlier), Some(Duration::ZERO));
    }

    #[test]
    fn endpoints() {
        assert_eq!(
            endpoint("https://eu.i.posthog.com/", "/batch/")
                .unwrap()
                .to_string(),
            "https://eu.i.posthog.com/batch/"
        );
        assert!(endpoint("eu.i.posthog.com", "/batch/").is_err());
        assert!(endpoint("ftp://x", "/batch/").is_err());
        assert!(endpoint("", "/batch/").is_err());
    }
}
