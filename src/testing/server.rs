//! The accept loop, the per-connection tasks and the request handler.

use std::fmt;
use std::io::Read;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use flate2::read::MultiGzDecoder;
use http::header::{CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE};
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::Instant;

use super::request::RecordedRequest;
use super::response::{MockResponse, ResponseBody};
use super::{route_key, v1_uuids, MockState, V1_PATH};

/// Largest request body the mock reads, before and after gzip decoding.
pub(crate) const MAX_BODY: usize = 32 * 1024 * 1024;

/// Returned by the service to make hyper drop the connection without answering.
#[derive(Debug)]
struct ResetConnection;

impl fmt::Display for ResetConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MockResponse::reset_connection")
    }
}

impl std::error::Error for ResetConnection {}

/// Accepts connections until `shutdown` changes or its sender is dropped.
pub(crate) async fn accept_loop(
    listener: TcpListener,
    shared: Arc<MockState>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            biased;
            // Ok: `shutdown()` was called; Err: every MockPostHog handle is gone.
            _ = shutdown.changed() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    tokio::spawn(serve_connection(stream, peer, shared.clone(), shutdown.clone()));
                }
                Err(e) => {
                    // Typically running out of file descriptors: back off a little.
                    tracing::warn!(error = %e, "MockPostHog: accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
        }
    }
    tracing::debug!("MockPostHog: stopped accepting connections");
}

async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    shared: Arc<MockState>,
    mut shutdown: watch::Receiver<bool>,
) {
    let _ = stream.set_nodelay(true);
    let service = service_fn(move |req| handle(shared.clone(), req));
    let builder = auto::Builder::new(TokioExecutor::new());
    let conn = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    let result = tokio::select! {
        result = conn.as_mut() => result,
        _ = shutdown.changed() => {
            // Finish the request in flight, if any, then close.
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    match result {
        Ok(()) => tracing::trace!(%peer, "MockPostHog: connection closed"),
        // Includes the connections dropped on purpose by `reset_connection`.
        Err(e) => tracing::debug!(%peer, error = %e, "MockPostHog: connection ended with an error"),
    }
}

/// How reading a request body went.
enum BodyRead {
    Complete(Bytes),
    TooLarge { read: usize },
    Failed { partial: Bytes, error: hyper::Error },
}

async fn read_body(headers: &HeaderMap, mut body: Incoming) -> BodyRead {
    let declared = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|len| len > MAX_BODY as u64) {
        return BodyRead::TooLarge { read: 0 };
    }
    let mut buf = BytesMut::new();
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => {
                if let Ok(data) = frame.into_data() {
                    buf.extend_from_slice(&data);
                    if buf.len() > MAX_BODY {
                        return BodyRead::TooLarge { read: buf.len() };
                    }
                }
            }
            Err(error) => {
                return BodyRead::Failed {
                    partial: buf.freeze(),
                    error,
                }
            }
        }
    }
    BodyRead::Complete(buf.freeze())
}

/// The request's `Content-Encoding`, lowercased, if it has one (other than `identity`).
fn content_encoding(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(CONTENT_ENCODING)?.to_str().ok()?.trim();
    let value = value.to_ascii_lowercase();
    (!value.is_empty() && value != "identity").then_some(value)
}

enum Decoded {
    Ok(Bytes),
    TooLarge,
    Failed,
}

/// Decodes a body sent with `encoding`: gzip, deflate (zlib, or raw deflate), and br and
/// zstd with the crate's `brotli` and `zstd` features. An unknown encoding fails.
fn decode(encoding: &str, raw: &[u8]) -> Decoded {
    fn read(mut reader: impl Read) -> Decoded {
        let mut out = Vec::new();
        // One byte more than allowed tells "exactly at the limit" from "beyond it".
        match (&mut reader)
            .take(MAX_BODY as u64 + 1)
            .read_to_end(&mut out)
        {
            Ok(_) if out.len() > MAX_BODY => Decoded::TooLarge,
            Ok(_) => Decoded::Ok(Bytes::from(out)),
            Err(_) => Decoded::Failed,
        }
    }
    match encoding {
        "gzip" | "x-gzip" => read(MultiGzDecoder::new(raw)),
        "deflate" => match read(flate2::read::ZlibDecoder::new(raw)) {
            Decoded::Failed => read(flate2::read::DeflateDecoder::new(raw)),
            other => other,
        },
        #[cfg(feature = "brotli")]
        "br" => read(brotli::Decompressor::new(raw, 4096)),
        #[cfg(feature = "zstd")]
        "zstd" => match zstd::stream::read::Decoder::new(raw) {
            Ok(decoder) => read(decoder),
            Err(_) => Decoded::Failed,
        },
        _ => Decoded::Failed,
    }
}

/// An answer decided under the state lock, sent after it is released.
struct Plan {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
    delay: Option<Duration>,
    reset: bool,
}

fn json_bytes(value: &serde_json::Value) -> Bytes {
    // Serializing a `Value` to a Vec cannot fail (its map keys are strings).
    Bytes::from(serde_json::to_vec(value).unwrap_or_default())
}

fn plan(response: MockResponse, ok_body: impl FnOnce() -> serde_json::Value) -> Plan {
    let MockResponse {
        status,
        body,
        headers: user_headers,
        delay,
        reset,
    } = response;
    let mut headers = HeaderMap::new();
    let no_body = status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
        || status.is_informational();
    let body = if no_body {
        Bytes::new()
    } else {
        match body {
            ResponseBody::Raw(bytes) => bytes,
            ResponseBody::Json(value) => {
                headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
                json_bytes(&value)
            }
            ResponseBody::Auto => {
                headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
                if status.is_success() {
                    json_bytes(&ok_body())
                } else {
                    json_bytes(&serde_json::json!({"error": "mock error"}))
                }
            }
        }
    };
    for name in user_headers.keys() {
        headers.remove(name);
    }
    for (name, value) in &user_headers {
        headers.append(name.clone(), value.clone());
    }
    Plan {
        status,
        headers,
        body,
        delay,
        reset,
    }
}

fn error_plan(status: StatusCode, message: &str) -> Plan {
    plan(
        MockResponse::json(status.as_u16(), serde_json::json!({ "error": message })),
        || serde_json::json!({}),
    )
}

async fn handle(
    shared: Arc<MockState>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, ResetConnection> {
    let received_at = Instant::now();
    let (parts, body) = req.into_parts();
    let encoding = content_encoding(&parts.headers);
    let gzip = matches!(encoding.as_deref(), Some("gzip" | "x-gzip"));

    let mut gzip_decode_failed = false;
    let (body, raw_len, fixed) = match read_body(&parts.headers, body).await {
        BodyRead::Complete(raw) => {
            let raw_len = raw.len();
            if let Some(encoding) = &encoding {
                match decode(encoding, &raw) {
                    Decoded::Ok(decoded) => (decoded, raw_len, None),
                    Decoded::TooLarge => (
                        Bytes::new(),
                        raw_len,
                        Some(error_plan(
                            StatusCode::PAYLOAD_TOO_LARGE,
                            "decoded body too large",
                        )),
                    ),
                    Decoded::Failed => {
                        gzip_decode_failed = true;
                        (raw, raw_len, None)
                    }
                }
            } else {
                (raw, raw_len, None)
            }
        }
        BodyRead::TooLarge { read } => (
            Bytes::new(),
            read,
            Some(error_plan(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload too large",
            )),
        ),
        BodyRead::Failed { partial, error } => {
            tracing::debug!(error = %error, "MockPostHog: failed to read a request body");
            let len = partial.len();
            (
                partial,
                len,
                Some(error_plan(
                    StatusCode::BAD_REQUEST,
                    "failed to read the request body",
                )),
            )
        }
    };

    let path = parts.uri.path().to_owned();
    let plan = {
        let mut state = shared.lock();
        let plan = match fixed {
            Some(plan) => plan,
            None => {
                let key = route_key(&path);
                let response = state.next_response(key);
                if key == V1_PATH {
                    let uuids = v1_uuids(&body);
                    let mut plan = plan(response, || state.v1_results(&uuids));
                    if let Some(id) = parts.headers.get("posthog-request-id") {
                        if !plan.headers.contains_key("posthog-request-id") {
                            plan.headers.insert("posthog-request-id", id.clone());
                        }
                    }
                    plan
                } else {
                    plan(response, || state.ok_body(key))
                }
            }
        };
        let request = RecordedRequest {
            method: parts.method,
            path,
            query: parts.uri.query().map(str::to_owned),
            headers: parts.headers,
            body,
            raw_len,
            gzip,
            content_encoding: encoding,
            gzip_decode_failed,
            received_at,
            // 499 for `reset_connection`, the planned status for `lose_response`.
            status: plan.status,
            reset: plan.reset,
            response_headers: plan.headers.clone(),
            response_body: plan.body.clone(),
        };
        tracing::debug!(
            method = %request.method,
            path = %request.path,
            status = request.status.as_u16(),
            reset = request.reset,
            body_len = request.body.len(),
            "MockPostHog: request"
        );
        state.record(request, &plan.body);
        plan
    };
    shared.notify();

    if let Some(delay) = plan.delay {
        tokio::time::sleep(delay).await;
    }
    if plan.reset {
        return Err(ResetConnection);
    }
    let mut response = Response::new(Full::new(plan.body));
    *response.status_mut() = plan.status;
    *response.headers_mut() = plan.headers;
    Ok(response)
}
