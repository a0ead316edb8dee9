//! Remote config payloads: `GET {host}/api/projects/@current/feature_flags/{key}/remote_config`.
//!
//! A remote config flag carries one payload for everybody, which PostHog may store encrypted.
//! This endpoint answers it decrypted, so it needs a secret: the personal API key or the
//! project secret key, sent as `Authorization: Bearer`. The project key goes along only as
//! the `token` query parameter, as posthog-python 7.91.1 sends it.

use std::{fmt, time::Duration};

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request};
use http_body_util::Full;
use serde_json::Value;
use tower::ServiceExt;

use crate::net::{HttpClient, ReadResponse, USER_AGENT};

/// Largest remote config answer read.
const MAX_REMOTE_CONFIG: usize = 4 * 1024 * 1024;

/// Why [`PostHog::get_remote_config_payload`](crate::PostHog::get_remote_config_payload)
/// has no answer.
///
/// ```
/// use posthog_tower::flags::RemoteConfigError;
///
/// let error = RemoteConfigError::MissingSecretKey;
/// assert!(error.to_string().contains("personal API key"));
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RemoteConfigError {
    /// The client has no personal API key (or project secret key): see
    /// [`PostHogBuilder::personal_api_key`](crate::PostHogBuilder::personal_api_key).
    MissingSecretKey,
    /// The flag key is empty.
    EmptyKey,
    /// The client is disabled.
    Disabled,
    /// PostHog did not answer within the flags request timeout.
    Timeout,
    /// PostHog could not be reached.
    Connection(String),
    /// PostHog answered with this status (404: no such flag, or not a remote config flag;
    /// 401/403: the key is not accepted), and the `detail` it gave, if any.
    Status(u16, Option<String>),
    /// The answer was not JSON.
    InvalidResponse(String),
    /// The payload does not have the type asked for (`get_remote_config_payload_as`).
    InvalidPayload(String),
}

impl fmt::Display for RemoteConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RemoteConfigError::MissingSecretKey => f.write_str(
                "remote config payloads need a personal API key or project secret key \
                 (PostHogBuilder::personal_api_key)",
            ),
            RemoteConfigError::EmptyKey => f.write_str("the remote config flag key is empty"),
            RemoteConfigError::Disabled => f.write_str("the client is disabled"),
            RemoteConfigError::Timeout => f.write_str("the remote config request timed out"),
            RemoteConfigError::Connection(e) => write!(f, "could not reach PostHog: {e}"),
            RemoteConfigError::Status(status, Some(detail)) => {
                write!(
                    f,
                    "PostHog answered {status} to the remote config request: {detail}"
                )
            }
            RemoteConfigError::Status(status, None) => {
                write!(f, "PostHog answered {status} to the remote config request")
            }
            RemoteConfigError::InvalidResponse(e) => {
                write!(f, "invalid remote config response: {e}")
            }
            RemoteConfigError::InvalidPayload(e) => {
                write!(f, "the remote config payload could not be decoded: {e}")
            }
        }
    }
}

impl std::error::Error for RemoteConfigError {}

/// Fetches remote config payloads; the client holds one when it has a secret key.
#[derive(Clone)]
pub(crate) struct RemoteConfig {
    client: HttpClient,
    /// `{host}` without a trailing slash.
    host: String,
    /// The project key, percent-encoded for the query.
    token: String,
    /// `Bearer <secret>`, marked sensitive.
    authorization: HeaderValue,
    timeout: Duration,
}

impl fmt::Debug for RemoteConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Neither key is printed.
        f.debug_struct("RemoteConfig")
            .field("host", &self.host)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl RemoteConfig {
    pub(crate) fn new(
        client: HttpClient,
        host: &str,
        project_key: &str,
        secret_key: &str,
        timeout: Duration,
    ) -> Result<Self, crate::BuildError> {
        // Checks the host once, as every other endpoint does.
        crate::net::endpoint(host, "/")?;
        let mut authorization = HeaderValue::from_str(&format!("Bearer {}", secret_key.trim()))
            .map_err(|_| {
                crate::BuildError::InvalidConfig("the personal API key is not a valid header value")
            })?;
        authorization.set_sensitive(true);
        Ok(RemoteConfig {
            client,
            host: host.trim_end_matches('/').to_owned(),
            token: percent_encode(project_key.trim()),
            authorization,
            timeout,
        })
    }

    /// The payload of remote config flag `key`: `None` when the flag has none.
    pub(crate) async fn payload(&self, key: &str) -> Result<Option<Value>, RemoteConfigError> {
        if key.trim().is_empty() {
            return Err(RemoteConfigError::EmptyKey);
        }
        let url = format!(
            "{}/api/projects/@current/feature_flags/{}/remote_config?token={}",
            self.host,
            percent_encode(key),
            self.token
        );
        let uri: http::Uri = url.parse().map_err(|e: http::uri::InvalidUri| {
            RemoteConfigError::InvalidResponse(e.to_string())
        })?;
        let mut request = Request::new(Full::new(Bytes::new()));
        *request.method_mut() = Method::GET;
        *request.uri_mut() = uri;
        let headers = request.headers_mut();
        headers.insert(header::AUTHORIZATION, self.authorization.clone());
        headers.insert(header::USER_AGENT, HeaderValue::from_static(USER_AGENT));
        let read = ReadResponse::new(self.client.clone().oneshot(request), MAX_REMOTE_CONFIG);
        let response = match tokio::time::timeout(self.timeout, read).await {
            Err(_) => return Err(RemoteConfigError::Timeout),
            Ok(Err(error)) => {
                let code = super::error_code(&error);
                return Err(if code == "timeout" {
                    RemoteConfigError::Timeout
                } else {
                    RemoteConfigError::Connection(error.to_string())
                });
            }
            Ok(Ok(response)) => response,
        };
        if !response.status.is_success() {
            let detail = serde_json::from_slice::<Value>(&response.body)
                .ok()
                .and_then(|v| v.get("detail")?.as_str().map(str::to_owned));
            tracing::warn!(
                flag = key,
                status = response.status.as_u16(),
                "posthog: remote config request failed"
            );
            return Err(RemoteConfigError::Status(response.status.as_u16(), detail));
        }
        decode(&response.body)
    }
}

/// The payload in a 200 answer. PostHog stores payloads as JSON text, so the answer is often
/// a JSON string holding JSON: such a string is decoded once more (a string that is not JSON
/// stays a string). An empty body or `null` is no payload.
fn decode(body: &[u8]) -> Result<Option<Value>, RemoteConfigError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| RemoteConfigError::InvalidResponse(e.to_string()))?;
    Ok(match value {
        Value::Null => None,
        Value::String(text) => match serde_json::from_str::<Value>(&text) {
            Ok(Value::Null) => None,
            Ok(inner) => Some(inner),
            Err(_) => Some(Value::String(text)),
        },
        other => Some(other),
    })
}

/// `text` with everything but unreserved characters percent-encoded (RFC 3986).
fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn payloads_stored_as_json_text_are_decoded_once_more() {
        assert_eq!(decode(br#""{\"a\":1}""#), Ok(Some(json!({"a": 1}))));
        assert_eq!(decode(br#"{"a":1}"#), Ok(Some(json!({"a": 1}))));
        assert_eq!(decode(br#""plain text""#), Ok(Some(json!("plain text"))));
        assert_eq!(decode(br#""42""#), Ok(Some(json!(42))));
        assert_eq!(decode(b"null"), Ok(None));
        assert_eq!(decode(br#""null""#), Ok(None));
        assert_eq!(decode(b""), Ok(None));
        assert!(matches!(
            decode(b"<html>"),
            Err(RemoteConfigError::InvalidResponse(_))
        ));
    }

    #[test]
    fn keys_are_percent_encoded() {
        assert_eq!(percent_encode("my-flag_1.x~"), "my-flag_1.x~");
        assert_eq!(percent_encode("a b/c?d"), "a%20b%2Fc%3Fd");
    }
}
