//! `RemoteFlags`: evaluates flags on PostHog with `POST {host}/flags/?v=4`.

use std::{
    fmt,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use http::{Request, Response, Uri};
use http_body::Body;
use http_body_util::Full;
use tokio::time::Sleep;
use tower::retry::Policy;
use tower_service::Service;

use serde_json::Value;

use super::{FlagsRequest, FlagsResponse};
use crate::{
    net::{endpoint, FullResponse, HttpClient, ReadResponse, ResponseFuture, UnexpectedStatus},
    BoxError,
};

/// Largest `/flags` response read (payloads can be big).
const MAX_FLAGS_RESPONSE: usize = 16 * 1024 * 1024;

/// The leaf service of the flags stack: evaluates a [`FlagsRequest`] on PostHog.
///
/// It sends `POST {host}/flags/?v=4` with a JSON body carrying `token` and `api_key` (both the
/// project key), `distinct_id`, `groups`, `person_properties`, `group_properties` (every group
/// passed gets `$group_key`), `geoip_disable`, and when set `device_id` and
/// `flag_keys_to_evaluate` and `evaluation_environments`. There is no `Authorization` header: the personal API key never
/// goes here. It parses `/flags?v=4` records (typed `value`, `failed`, config version and rule), v2 records and the legacy v1 shape; a malformed body is an
/// [`InvalidFlagsResponse`](super::InvalidFlagsResponse) error, a non-2xx status an
/// [`UnexpectedStatus`].
///
/// The client puts it behind `tower::retry` with [`FlagsRetryPolicy`] and `tower::timeout`.
///
/// # Example
///
/// ```
/// use std::time::Duration;
/// use posthog_tower::flags::{FlagsRetryPolicy, RemoteFlags};
/// use tower::ServiceBuilder;
///
/// let flags = ServiceBuilder::new()
///     .retry(FlagsRetryPolicy::new(1))
///     .timeout(Duration::from_secs(3))
///     .service(RemoteFlags::new("https://eu.i.posthog.com", "phc_project_key").unwrap());
/// # let _ = flags;
/// ```
#[derive(Clone)]
pub struct RemoteFlags<C = HttpClient> {
    client: C,
    uri: Uri,
    /// Sent in the body; redacted from the error answers quoted in errors and logs.
    api_key: Arc<str>,
    disable_geoip: bool,
    /// Sent as `evaluation_environments` when set.
    environments: Option<Arc<[String]>>,
}

impl RemoteFlags<HttpClient> {
    /// Evaluates on `host` with the default HTTP client.
    pub fn new(host: &str, api_key: &str) -> Result<Self, crate::BuildError> {
        Self::with_client(crate::net::default_client(), host, api_key)
    }
}

impl<C> RemoteFlags<C> {
    /// Evaluates through `client`.
    pub fn with_client(client: C, host: &str, api_key: &str) -> Result<Self, crate::BuildError> {
        Ok(RemoteFlags {
            client,
            uri: endpoint(host, "/flags/?v=4")?,
            api_key: api_key.into(),
            disable_geoip: true,
            environments: None,
        })
    }

    /// The `geoip_disable` sent when a request does not say (on by default).
    pub fn disable_geoip(mut self, disabled: bool) -> Self {
        self.disable_geoip = disabled;
        self
    }

    /// The evaluation environments sent with every request as `evaluation_environments`
    /// (none by default; `None` or an empty list sends none): PostHog then evaluates only
    /// the flags with no evaluation tags or with a tag among them.
    ///
    /// ```
    /// use posthog_tower::flags::RemoteFlags;
    ///
    /// let flags = RemoteFlags::new("https://eu.i.posthog.com", "phc_project_key")?
    ///     .evaluation_environments(Some(["production".to_owned()].into()));
    /// # let _ = flags;
    /// # Ok::<(), posthog_tower::BuildError>(())
    /// ```
    pub fn evaluation_environments(mut self, environments: Option<Arc<[String]>>) -> Self {
        self.environments = environments.filter(|e| !e.is_empty());
        self
    }

    /// The URL requests go to.
    pub fn uri(&self) -> &Uri {
        &self.uri
    }

    define_client_accessors!();
}

impl<C> fmt::Debug for RemoteFlags<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the API key.
        f.debug_struct("RemoteFlags")
            .field("uri", &self.uri)
            .field("disable_geoip", &self.disable_geoip)
            .field("evaluation_environments", &self.environments)
            .finish_non_exhaustive()
    }
}

impl<C, B> Service<FlagsRequest> for RemoteFlags<C>
where
    C: Service<Request<Full<Bytes>>, Response = Response<B>>,
    C::Error: Into<BoxError>,
    B: Body,
    B::Error: Into<BoxError>,
{
    type Response = FlagsResponse;
    type Error = BoxError;
    type Future = RemoteFuture<C::Future, B>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.client.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: FlagsRequest) -> Self::Future {
        let mut body = request.to_body(&self.api_key, self.disable_geoip);
        if let (Some(environments), Value::Object(map)) = (&self.environments, &mut body) {
            map.insert(
                "evaluation_environments".into(),
                environments.iter().cloned().map(Value::String).collect(),
            );
        }
        let body = body.to_string();
        let req = crate::net::post_json(&self.uri, Bytes::from(body));
        ResponseFuture::new(
            ReadResponse::new(self.client.call(req), MAX_FLAGS_RESPONSE),
            parse,
        )
        .redact(&self.api_key)
    }
}

/// Response future of [`RemoteFlags`].
pub type RemoteFuture<F, B> = ResponseFuture<F, B, FlagsResponse>;

fn parse(response: FullResponse) -> Result<FlagsResponse, BoxError> {
    FlagsResponse::from_json(&response.body).map_err(Into::into)
}

/// The `/flags` retry policy, as posthog-python's: retry (once by default) on connection
/// errors, timeouts, 502 and 504 only, after 0.3 s (doubling for later retries). Other
/// statuses (408, 429, 500, 503, ...), malformed bodies and quota limits are final: a flag
/// lookup is on the caller's critical path.
#[derive(Clone, Debug)]
pub struct FlagsRetryPolicy {
    max_retries: usize,
    attempt: usize,
    base: Duration,
}

impl FlagsRetryPolicy {
    /// A policy allowing `max_retries` retries.
    pub fn new(max_retries: usize) -> Self {
        FlagsRetryPolicy {
            max_retries,
            attempt: 0,
            base: Duration::from_millis(300),
        }
    }

    /// The first delay (0.3 s).
    pub fn base_delay(mut self, base: Duration) -> Self {
        self.base = base;
        self
    }

    /// Whether the `/flags` error is worth retrying: timeouts, connection failures other
    /// than a refused connection, 502 and 504.
    pub fn is_retryable(error: &BoxError) -> bool {
        match classify(error) {
            Class::Status(status) => matches!(status, 502 | 504),
            Class::Timeout => true,
            Class::Connection { refused } => !refused,
            Class::Invalid | Class::Other => false,
        }
    }
}

impl Policy<FlagsRequest, FlagsResponse, BoxError> for FlagsRetryPolicy {
    type Future = Sleep;

    fn retry(
        &mut self,
        _req: &mut FlagsRequest,
        result: &mut Result<FlagsResponse, BoxError>,
    ) -> Option<Self::Future> {
        let error = result.as_ref().err()?;
        if self.attempt >= self.max_retries || !Self::is_retryable(error) {
            return None;
        }
        let delay = self.base.saturating_mul(
            1u32.checked_shl(self.attempt.min(31) as u32)
                .unwrap_or(u32::MAX),
        );
        self.attempt += 1;
        diag!(attempt = self.attempt, ?delay, error = %error, "posthog: retrying /flags");
        Some(tokio::time::sleep(delay))
    }

    fn clone_request(&mut self, req: &FlagsRequest) -> Option<FlagsRequest> {
        Some(req.clone())
    }
}

enum Class {
    Status(u16),
    Timeout,
    Connection { refused: bool },
    Invalid,
    Other,
}

/// Looks through the error and its sources (coalesced errors wrap the original).
fn classify(error: &BoxError) -> Class {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&**error);
    let mut connection = None;
    while let Some(e) = source {
        if e.is::<tower::timeout::error::Elapsed>() {
            return Class::Timeout;
        }
        if let Some(status) = e.downcast_ref::<UnexpectedStatus>() {
            return Class::Status(status.status().as_u16());
        }
        if e.is::<super::InvalidFlagsResponse>() {
            return Class::Invalid;
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::TimedOut {
                return Class::Timeout;
            }
            let refused = io.kind() == std::io::ErrorKind::ConnectionRefused;
            return Class::Connection { refused };
        }
        if e.is::<hyper_util::client::legacy::Error>() || e.is::<hyper::Error>() {
            connection.get_or_insert(Class::Connection { refused: false });
        }
        source = e.source();
    }
    connection.unwrap_or(Class::Other)
}

/// The `$feature_flag_error` code for a failed `/flags` call: `timeout`, `connection_error`,
/// `api_error_<status>` or `unknown_error`.
pub(crate) fn error_code(error: &BoxError) -> String {
    match classify(error) {
        Class::Timeout => "timeout".to_owned(),
        Class::Status(status) => format!("api_error_{status}"),
        Class::Connection { .. } => "connection_error".to_owned(),
        Class::Invalid | Class::Other => "unknown_error".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::StatusCode;

    fn status(code: u16) -> BoxError {
        Box::new(UnexpectedStatus::new(
            StatusCode::from_u16(code).unwrap(),
            None,
        ))
    }

    #[test]
    fn only_502_504_timeouts_and_connection_errors_are_retried() {
        assert!(FlagsRetryPolicy::is_retryable(&status(502)));
        assert!(FlagsRetryPolicy::is_retryable(&status(504)));
        for code in [400, 401, 408, 429, 500, 503] {
            assert!(!FlagsRetryPolicy::is_retryable(&status(code)), "{code}");
        }
        let elapsed: BoxError = Box::new(tower::timeout::error::Elapsed::new());
        assert!(FlagsRetryPolicy::is_retryable(&elapsed));
        let invalid: BoxError = Box::new(super::super::InvalidFlagsResponse("x".into()));
        assert!(!FlagsRetryPolicy::is_retryable(&invalid));
        let reset: BoxError = Box::new(std::io::Error::from(std::io::ErrorKind::ConnectionReset));
        assert!(FlagsRetryPolicy::is_retryable(&reset));
        let refused: BoxError =
            Box::new(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        assert!(!FlagsRetryPolicy::is_retryable(&refused));
    }

    #[test]
    fn error_codes() {
        assert_eq!(error_code(&status(500)), "api_error_500");
        let elapsed: BoxError = Box::new(tower::timeout::error::Elapsed::new());
        assert_eq!(error_code(&elapsed), "timeout");
        let io: BoxError = Box::new(std::io::Error::from(std::io::ErrorKind::ConnectionReset));
        assert_eq!(error_code(&io), "connection_error");
        let other: BoxError = "??".into();
        assert_eq!(error_code(&other), "unknown_error");
    }
}
