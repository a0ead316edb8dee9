//! What both harness suites share: the mock, our adapter in-process, and an HTTP client that
//! drives the adapter as PostHog's SDK test harness does.

#[path = "../../examples/sdk_adapter/adapter.rs"]
pub mod adapter;

use std::{net::Ipv4Addr, sync::Arc};

use bytes::Bytes;
use http::{header, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::{
    client::legacy::{connect::HttpConnector, Client},
    rt::TokioExecutor,
};
use posthog_tower::testing::{MockPostHog, RecordedRequest};
use serde_json::{json, Value};
use tokio::{net::TcpListener, task::JoinHandle};

// ===== the harness side: driving the adapter =====

pub struct Shared {
    pub mock: MockPostHog,
    /// `http://127.0.0.1:PORT` of the adapter.
    pub base: String,
    pub http: Client<HttpConnector, Full<Bytes>>,
    pub server: JoinHandle<()>,
}

impl Drop for Shared {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// The harness: a mock PostHog, our adapter, and an HTTP client to drive it. A harness with a
/// test id appends `?test_id=…` to every adapter call but `/health`, as in parallel mode.
#[derive(Clone)]
pub struct Harness {
    pub shared: Arc<Shared>,
    pub test_id: Option<String>,
}

/// What an adapter call answered.
pub struct Reply {
    pub status: StatusCode,
    pub content_type: Option<String>,
    pub body: Value,
}

impl Harness {
    pub async fn start() -> Harness {
        Harness::start_with(adapter::Options::default()).await
    }

    /// A harness whose adapter runs with `options` (as with `--protocol` and `--compression`).
    pub async fn start_with(options: adapter::Options) -> Harness {
        let mock = MockPostHog::start().await.expect("the mock starts");
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .expect("the adapter binds");
        let base = format!("http://{}", listener.local_addr().expect("local address"));
        let server = tokio::spawn(adapter::serve_with(listener, options));
        let http = Client::builder(TokioExecutor::new()).build_http();
        Harness {
            shared: Arc::new(Shared {
                mock,
                base,
                http,
                server,
            }),
            test_id: None,
        }
    }

    /// The same mock and adapter, with calls scoped to `test_id`.
    pub fn with_test_id(&self, test_id: &str) -> Harness {
        Harness {
            shared: self.shared.clone(),
            test_id: Some(test_id.to_owned()),
        }
    }

    /// `send` with a JSON body.
    pub async fn send_json(&self, method: Method, path: &str, body: &Value) -> Reply {
        self.send(method, path, Some(Bytes::from(body.to_string())))
            .await
    }

    pub fn mock(&self) -> &MockPostHog {
        &self.shared.mock
    }

    /// `R`: every request the mock recorded, in arrival order.
    pub fn recordings(&self) -> Vec<RecordedRequest> {
        self.mock().requests()
    }

    pub fn url(&self, path: &str) -> String {
        match (&self.test_id, path) {
            (Some(id), p) if p != "/health" => format!("{}{p}?test_id={id}", self.shared.base),
            _ => format!("{}{path}", self.shared.base),
        }
    }

    /// One adapter call; `body` `None` sends no body at all (no `Content-Type`), like the
    /// harness's `/flush` and `/reset`.
    pub async fn send(&self, method: Method, path: &str, body: Option<Bytes>) -> Reply {
        let mut request = Request::builder().method(method).uri(self.url(path));
        if body.is_some() {
            request = request.header(header::CONTENT_TYPE, "application/json");
        }
        let request = request
            .body(Full::new(body.unwrap_or_default()))
            .expect("a valid request");
        let response = self
            .shared
            .http
            .request(request)
            .await
            .unwrap_or_else(|e| panic!("adapter call {path} failed: {e}"));
        let status = response.status();
        let content_type = response
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let bytes = response
            .into_body()
            .collect()
            .await
            .expect("the adapter's answer is read")
            .to_bytes();
        let body = serde_json::from_slice(&bytes).unwrap_or_else(|e| {
            panic!(
                "{path}: the answer is not JSON ({e}): {}",
                String::from_utf8_lossy(&bytes)
            )
        });
        Reply {
            status,
            content_type,
            body,
        }
    }

    /// A call as the harness makes it: any non-2xx fails the test (`raise_for_status`), and
    /// the answer must be JSON with `Content-Type: application/json` (aiohttp's `json()`).
    pub async fn call(&self, method: Method, path: &str, body: Option<&Value>) -> Value {
        let reply = self
            .send(method, path, body.map(|b| Bytes::from(b.to_string())))
            .await;
        assert!(
            reply.status.is_success(),
            "{path} answered {}: {}",
            reply.status,
            reply.body
        );
        assert_eq!(
            reply.content_type.as_deref(),
            Some("application/json"),
            "{path}: content type"
        );
        reply.body
    }

    /// The harness's per-test reset: the mock first, then the adapter.
    pub async fn reset(&self) {
        self.mock().clear();
        let answer = self.call(Method::POST, "/reset", None).await;
        assert_eq!(answer["success"], true);
    }

    /// `INIT{extra}`: `api_key` (default `phc_test_key`) and `host` plus the test's keys.
    pub async fn init(&self, extra: Value) -> Value {
        let mut body = json!({"api_key": "phc_test_key", "host": self.mock().url()});
        if let (Some(body), Value::Object(extra)) = (body.as_object_mut(), extra) {
            body.extend(extra);
        }
        self.call(Method::POST, "/init", Some(&body)).await
    }
}
