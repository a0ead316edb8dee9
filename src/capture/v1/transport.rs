//! `V1Transport`: sends an [`EncodedBatch`] as `POST {host}/i/v1/analytics/events`.

use std::{
    fmt,
    sync::Arc,
    task::{Context, Poll},
    time::SystemTime,
};

use bytes::Bytes;
use http::{header, HeaderName, HeaderValue, Request, Response, Uri};
use http_body::Body;
use http_body_util::Full;
use tower_service::Service;

use super::EventResults;
use crate::{
    capture::{Compression, EncodedBatch, StatsRecorder},
    net::USER_AGENT,
    net::{endpoint, parse_retry_after, FullResponse, HttpClient, ReadResponse, ResponseFuture},
    time::Timestamp,
    BoxError,
};

/// Most of a response body the transport reads: the per-event results (about 60 bytes per
/// event) of the largest batch `max_batch_bytes` allows, many times over. A 2xx over it is an
/// error (retried), so it must never be reached in practice.
const MAX_RESPONSE_BODY: usize = 16 * 1024 * 1024;

const SDK_INFO: HeaderName = HeaderName::from_static("posthog-sdk-info");
const ATTEMPT: HeaderName = HeaderName::from_static("posthog-attempt");
const REQUEST_ID: HeaderName = HeaderName::from_static("posthog-request-id");
const REQUEST_TIMESTAMP: HeaderName = HeaderName::from_static("posthog-request-timestamp");

/// The capture v1 leaf service: turns an [`EncodedBatch`] into
/// `POST {host}/i/v1/analytics/events` with the body `{created_at, batch}` (and
/// `historical_migration: true` when set) and answers with the per-event [`EventResults`].
///
/// Headers: `Authorization: Bearer <project key>` (the key is never in the body),
/// `PostHog-Sdk-Info: posthog-tower/<version>`, `PostHog-Attempt` (the batch's
/// [`attempt`](EncodedBatch::attempt)), `PostHog-Request-Id` (its
/// [`request_id`](EncodedBatch::request_id)), `PostHog-Request-Timestamp` (now, renewed on
/// every attempt), and `Content-Encoding` for a [`Compression`]. `created_at` is when the
/// batch was closed. A non-2xx status is an
/// [`UnexpectedStatus`](crate::net::UnexpectedStatus) error; [`V1RetryPolicy`](super::V1RetryPolicy)
/// decides what to send again.
///
/// # Example
///
/// ```
/// use posthog_tower::capture::{Compression, V1Transport};
///
/// let transport = V1Transport::new("https://us.i.posthog.com", "phc_project_key")
///     .unwrap()
///     .compression(Compression::Gzip);
/// assert_eq!(transport.uri().path(), "/i/v1/analytics/events");
/// ```
#[derive(Clone)]
pub struct V1Transport<C = HttpClient> {
    client: C,
    uri: Uri,
    authorization: HeaderValue,
    /// Redacted from the error answers quoted in errors and logs.
    api_key: Arc<str>,
    historical_migration: bool,
    compression: Compression,
    stats: Option<StatsRecorder>,
}

impl V1Transport<HttpClient> {
    /// A transport to `host` (for example `https://eu.i.posthog.com`) with the default client.
    ///
    /// Fails when `host` is not an absolute http(s) URL or the key cannot be a header value.
    pub fn new(host: &str, api_key: &str) -> Result<Self, crate::BuildError> {
        Self::with_client(crate::net::default_client(), host, api_key)
    }
}

impl<C> V1Transport<C> {
    /// A transport that sends through `client`.
    pub fn with_client(client: C, host: &str, api_key: &str) -> Result<Self, crate::BuildError> {
        let uri = endpoint(host, "/i/v1/analytics/events")?;
        let mut authorization = HeaderValue::try_from(format!("Bearer {api_key}"))
            .map_err(|_| crate::BuildError::InvalidConfig("the API key is not a valid header"))?;
        authorization.set_sensitive(true);
        Ok(V1Transport {
            client,
            uri,
            authorization,
            api_key: api_key.into(),
            historical_migration: false,
            compression: Compression::None,
            stats: None,
        })
    }

    /// Encodes bodies with `compression` (none by default).
    pub fn compression(mut self, compression: Compression) -> Self {
        self.compression = compression;
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

    fn body(&self, batch: &EncodedBatch) -> Result<Bytes, std::io::Error> {
        let mut prefix = Vec::with_capacity(64);
        prefix.extend_from_slice(br#"{"created_at":""#);
        batch.created_at().write_rfc3339(&mut prefix);
        prefix.extend_from_slice(br#"","#);
        if self.historical_migration {
            prefix.extend_from_slice(br#""historical_migration":true,"#);
        }
        prefix.extend_from_slice(br#""batch":["#);
        let events = batch.events_json();
        let len = prefix.len() + events.len() + 2;
        Ok(self
            .compression
            .encode(&[&prefix, events, b"]}"], len)?
            .into())
    }
}

impl<C> fmt::Debug for V1Transport<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The authorization header holds the API key: never print it.
        f.debug_struct("V1Transport")
            .field("uri", &self.uri)
            .field("historical_migration", &self.historical_migration)
            .field("compression", &self.compression)
            .finish_non_exhaustive()
    }
}

impl<C, B> Service<EncodedBatch> for V1Transport<C>
where
    C: Service<Request<Full<Bytes>>, Response = Response<B>>,
    C::Error: Into<BoxError>,
    B: Body,
    B::Error: Into<BoxError>,
{
    type Response = EventResults;
    type Error = BoxError;
    type Future = V1TransportFuture<C::Future, B>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.client.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, batch: EncodedBatch) -> Self::Future {
        let body = match self.body(&batch) {
            Ok(b) => b,
            Err(e) => return ResponseFuture::new(ReadResponse::failed(e.into()), results),
        };
        let mut req = crate::net::post_json(&self.uri, body);
        let headers = req.headers_mut();
        headers.insert(SDK_INFO, HeaderValue::from_static(USER_AGENT));
        headers.insert(header::AUTHORIZATION, self.authorization.clone());
        headers.insert(ATTEMPT, HeaderValue::from(batch.attempt()));
        let mut id = [0u8; uuid::fmt::Hyphenated::LENGTH];
        let id = batch.request_id().hyphenated().encode_lower(&mut id);
        // A hyphenated uuid is ASCII hex and dashes: always a valid header value.
        if let Ok(value) = HeaderValue::from_str(id) {
            headers.insert(REQUEST_ID, value);
        }
        let mut now = Vec::with_capacity(32);
        Timestamp::from(SystemTime::now()).write_rfc3339(&mut now);
        // RFC 3339 is ASCII digits and punctuation: always a valid header value.
        if let Ok(value) = HeaderValue::from_bytes(&now) {
            headers.insert(REQUEST_TIMESTAMP, value);
        }
        if let Some(encoding) = self.compression.content_encoding() {
            headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static(encoding));
        }
        if let Some(stats) = &self.stats {
            stats.request(1);
        }
        diag!(
            events = batch.len(),
            attempt = batch.attempt(),
            uri = %self.uri,
            "posthog: sending v1 batch"
        );
        ResponseFuture::new(
            ReadResponse::new(self.client.call(req), MAX_RESPONSE_BODY),
            results,
        )
        .redact(&self.api_key)
    }
}

/// Response future of [`V1Transport`]: the [`EventResults`] on 2xx,
/// [`UnexpectedStatus`](crate::net::UnexpectedStatus) otherwise.
pub type V1TransportFuture<F, B> = ResponseFuture<F, B, EventResults>;

fn results(response: FullResponse) -> Result<EventResults, BoxError> {
    let retry_after = response
        .headers
        .get(header::RETRY_AFTER)
        .and_then(|v| parse_retry_after(v, SystemTime::now()));
    Ok(EventResults::parse(&response.body, retry_after))
}
