//! An in-process mock of PostHog's HTTP API, for tests.
//!
//! [`MockPostHog::start`] listens on a free port of `127.0.0.1` and serves
//! HTTP/1.1 and HTTP/2 without TLS (prior knowledge) from a task of the
//! current tokio runtime, so it works under
//! `#[tokio::test(start_paused = true)]` and measures waits on tokio's clock.
//! It records every request ([`RecordedRequest`]) and answers each path from
//! a script of [`MockResponse`]s, falling back to the path's default:
//!
//! | path | default answer |
//! | --- | --- |
//! | `/batch/` | 200 `{"status": 1}` |
//! | `/i/v0/ai/batch/` | 200 `{"status": 1}` (the AI lane; see [`MockPostHog::ai_events`]) |
//! | `/i/v1/analytics/events` | 200 `{"results": {"<uuid>": {"result": "ok"}, …}}` (see [`MockPostHog::enqueue_event_result`]), echoing `PostHog-Request-Id` |
//! | `/flags/` | 200 `{"flags": {}, "errorsWhileComputingFlags": false, "requestId": "mock"}` |
//! | `/flags/definitions` | 200 `{"flags": [], "group_type_mapping": {}, "cohorts": {}}` |
//! | anything else | 404 `{"error": "not found"}` |
//!
//! [`MockResponse::flags_v4`] builds a `/flags?v=4` answer from [`V4Flag`] records (every
//! reason code, rule type, failed records, experiment splits).
//!
//! Paths are matched exactly, ignoring the query and one trailing slash:
//! `/batch` and `/batch/` are the same path, `/flags/definitions` is not
//! `/flags/`. Encoded request bodies (`Content-Encoding` gzip, deflate, and br
//! and zstd with the `brotli` and `zstd` features) are decoded before they are
//! recorded. Bodies over 32 MiB are answered 413.
//!
//! # Examples
//!
//! ```
//! use std::time::Duration;
//!
//! use bytes::Bytes;
//! use http_body_util::Full;
//! use hyper_util::client::legacy::Client;
//! use hyper_util::rt::TokioExecutor;
//! use posthog_tower::testing::{MockPostHog, MockResponse};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let mock = MockPostHog::start().await?;
//! // The first batch is refused, the retry goes through.
//! mock.enqueue("/batch/", MockResponse::status(503).retry_after("1"));
//!
//! let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
//! let body = r#"{"api_key":"phc_test","batch":[{"event":"signup","distinct_id":"u1"}]}"#;
//! for expected in [503, 200] {
//!     let request = http::Request::post(format!("{}/batch/", mock.url()))
//!         .header("content-type", "application/json")
//!         .body(Full::new(Bytes::from(body)))?;
//!     let response = client.request(request).await?;
//!     assert_eq!(response.status(), expected);
//! }
//!
//! // Both attempts were recorded; only the accepted one counts as events.
//! assert_eq!(mock.requests_to("/batch").len(), 2);
//! let events = mock.wait_for_events(1, Duration::from_secs(5)).await?;
//! assert_eq!(events.len(), 1);
//! assert_eq!(events[0]["event"], "signup");
//! mock.shutdown().await;
//! # Ok(())
//! # }
//! ```

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

mod flags;
mod request;
mod response;
mod server;
#[cfg(test)]
mod tests;

pub use flags::{remote_config_path, V4Flag};
pub use request::RecordedRequest;
pub use response::MockResponse;

/// The routing key of a path: the path without one trailing slash (`"/"` stays `"/"`).
fn route_key(path: &str) -> &str {
    if path.len() > 1 {
        path.strip_suffix('/').unwrap_or(path)
    } else {
        path
    }
}

/// The routing key of the AI lane's endpoint, `/i/v0/ai/batch/`.
const AI_BATCH: &str = "/i/v0/ai/batch";

/// The answer a path gets when nothing was set or queued for it.
/// Capture v1's path (as a route key).
const V1_PATH: &str = "/i/v1/analytics/events";

/// The uuids of the events in a capture v1 body, in order.
fn v1_uuids(body: &[u8]) -> Vec<String> {
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(body) else {
        return Vec::new();
    };
    value
        .get("batch")
        .and_then(serde_json::Value::as_array)
        .map(|events| {
            events
                .iter()
                .filter_map(|e| e.get("uuid")?.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

fn builtin_default(key: &str) -> MockResponse {
    use serde_json::json;
    match key {
        "/batch" | AI_BATCH => MockResponse::json(200, json!({"status": 1})),
        V1_PATH => MockResponse::status(200),
        "/flags" => MockResponse::json(
            200,
            json!({"flags": {}, "errorsWhileComputingFlags": false, "requestId": "mock"}),
        ),
        "/flags/definitions" => MockResponse::json(
            200,
            json!({"flags": [], "group_type_mapping": {}, "cohorts": {}}),
        ),
        _ => MockResponse::json(404, json!({"error": "not found"})),
    }
}

/// The 2xx JSON body of a response, if it has one.
fn success_json(response: &MockResponse) -> Option<serde_json::Value> {
    match &response.body {
        response::ResponseBody::Json(value) if response.status.is_success() => Some(value.clone()),
        _ => None,
    }
}

/// A recorded request, with the batch document when it counts as accepted.
struct Entry {
    request: RecordedRequest,
    /// The parsed body of a 2xx-answered request to `/batch/`, if it is JSON.
    accepted_batch: Option<serde_json::Value>,
    /// The same for `/i/v0/ai/batch/`.
    accepted_ai_batch: Option<serde_json::Value>,
}

impl Entry {
    fn events(&self) -> &[serde_json::Value] {
        self.accepted_batch
            .as_ref()
            .and_then(|batch| batch.get("batch"))
            .and_then(serde_json::Value::as_array)
            .map_or(&[], Vec::as_slice)
    }

    fn ai_events(&self) -> &[serde_json::Value] {
        self.accepted_ai_batch
            .as_ref()
            .and_then(|batch| batch.get("batch"))
            .and_then(serde_json::Value::as_array)
            .map_or(&[], Vec::as_slice)
    }
}

#[derive(Default)]
struct State {
    entries: Vec<Entry>,
    /// Capture v1: the results scripted for each event uuid, next first.
    event_results: HashMap<String, VecDeque<String>>,
    scripts: HashMap<String, VecDeque<MockResponse>>,
    defaults: HashMap<String, MockResponse>,
}

impl State {
    /// Pops the front of the path's script, or clones its default.
    fn next_response(&mut self, key: &str) -> MockResponse {
        if let Some(response) = self.scripts.get_mut(key).and_then(VecDeque::pop_front) {
            return response;
        }
        self.defaults
            .get(key)
            .cloned()
            .unwrap_or_else(|| builtin_default(key))
    }

    /// The body of a 2xx [`MockResponse::status`] on this path.
    fn ok_body(&self, key: &str) -> serde_json::Value {
        self.defaults
            .get(key)
            .and_then(success_json)
            .or_else(|| success_json(&builtin_default(key)))
            .unwrap_or_else(|| serde_json::json!({}))
    }

    /// The 200 answer to a capture v1 request carrying `uuids`: each event's next scripted
    /// result, `ok` when none is left.
    fn v1_results(&mut self, uuids: &[String]) -> serde_json::Value {
        let mut results = serde_json::Map::new();
        for uuid in uuids {
            let result = self
                .event_results
                .get_mut(uuid)
                .and_then(VecDeque::pop_front)
                .unwrap_or_else(|| "ok".to_owned());
            results.insert(uuid.clone(), serde_json::json!({ "result": result }));
        }
        serde_json::json!({ "results": results })
    }

    fn record(&mut self, request: RecordedRequest, response_body: &[u8]) {
        // A plain reset is recorded as 499; a lost response (`lose_response`)
        // keeps its 2xx status and counts, as the server did ingest it.
        let key = route_key(&request.path);
        let accepted_batch = if key == "/batch" && request.status.is_success() {
            request.json()
        } else if key == V1_PATH && request.status.is_success() {
            // Only the events the answer did not refuse (or ask again) were taken.
            request.json().map(|mut body| {
                let results = serde_json::from_slice::<serde_json::Value>(response_body)
                    .ok()
                    .and_then(|v| v.get("results").cloned());
                let taken = |event: &serde_json::Value| {
                    let uuid = event.get("uuid").and_then(serde_json::Value::as_str);
                    let result =
                        uuid.and_then(|u| results.as_ref()?.get(u)?.get("result")?.as_str());
                    result.map_or(true, |r| r == "ok")
                };
                if let Some(events) = body
                    .get_mut("batch")
                    .and_then(serde_json::Value::as_array_mut)
                {
                    events.retain(taken);
                }
                body
            })
        } else {
            None
        };
        let accepted_ai_batch =
            if route_key(&request.path) == AI_BATCH && request.status.is_success() {
                request.json()
            } else {
                None
            };
        self.entries.push(Entry {
            request,
            accepted_batch,
            accepted_ai_batch,
        });
    }

    fn event_count(&self) -> usize {
        self.entries.iter().map(|e| e.events().len()).sum()
    }

    fn ai_event_count(&self) -> usize {
        self.entries.iter().map(|e| e.ai_events().len()).sum()
    }

    fn count_to(&self, key: &str) -> usize {
        self.entries
            .iter()
            .filter(|e| route_key(&e.request.path) == key)
            .count()
    }
}

/// What the handle and the server tasks share.
struct MockState {
    state: Mutex<State>,
    /// Bumped after every recorded request; waiters watch it.
    changes: watch::Sender<u64>,
}

impl MockState {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave `State` half-updated in
        // a way that matters to a test helper: keep going with what is there.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn notify(&self) {
        self.changes.send_modify(|n| *n = n.wrapping_add(1));
    }
}

struct Inner {
    shared: Arc<MockState>,
    addr: SocketAddr,
    /// Set to `true` by `shutdown`; dropping it (with the last handle) also
    /// stops the server.
    shutdown: watch::Sender<bool>,
    accept_task: Mutex<Option<JoinHandle<()>>>,
}

/// An in-process PostHog: records requests, answers from a script.
///
/// Cloning gives another handle to the same server. The server stops when
/// [`shutdown`](Self::shutdown) is called or the last handle is dropped.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
///
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
///
/// let request = http::Request::post(format!("{}/flags/definitions", mock.url()))
///     .body(Full::new(Bytes::new()))?;
/// let response = client.request(request).await?;
/// assert_eq!(response.status(), 200);
///
/// let recorded = mock.wait_for_requests("/flags/definitions", 1, Duration::from_secs(5)).await?;
/// assert_eq!(recorded[0].method, http::Method::POST);
/// assert!(mock.requests_to("/flags/").is_empty());
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct MockPostHog {
    inner: Arc<Inner>,
}

impl fmt::Debug for MockPostHog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.inner.shared.lock();
        f.debug_struct("MockPostHog")
            .field("addr", &self.inner.addr)
            .field("requests", &state.entries.len())
            .field(
                "scripted",
                &state.scripts.values().map(VecDeque::len).sum::<usize>(),
            )
            .finish()
    }
}

impl MockPostHog {
    /// Binds a free port of `127.0.0.1` and starts serving from a task of the
    /// current tokio runtime.
    ///
    /// # Errors
    ///
    /// If the port cannot be bound.
    ///
    /// # Panics
    ///
    /// If called outside a tokio runtime.
    pub async fn start() -> std::io::Result<MockPostHog> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let addr = listener.local_addr()?;
        let (changes, _) = watch::channel(0);
        let shared = Arc::new(MockState {
            state: Mutex::new(State::default()),
            changes,
        });
        let (shutdown, shutdown_rx) = watch::channel(false);
        let accept_task = tokio::spawn(server::accept_loop(listener, shared.clone(), shutdown_rx));
        tracing::debug!(%addr, "MockPostHog: listening");
        Ok(MockPostHog {
            inner: Arc::new(Inner {
                shared,
                addr,
                shutdown,
                accept_task: Mutex::new(Some(accept_task)),
            }),
        })
    }

    /// The base URL, `http://127.0.0.1:PORT`, without a trailing slash.
    pub fn url(&self) -> String {
        format!("http://{}", self.inner.addr)
    }

    /// The address the mock listens on.
    pub fn addr(&self) -> SocketAddr {
        self.inner.addr
    }

    /// Every request received since the start (or the last [`clear`](Self::clear)),
    /// in arrival order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        let state = self.inner.shared.lock();
        state.entries.iter().map(|e| e.request.clone()).collect()
    }

    /// The requests to `path`, in arrival order. The query is ignored, and so
    /// is one trailing slash: `"/batch"` matches `/batch` and `/batch/`.
    pub fn requests_to(&self, path: &str) -> Vec<RecordedRequest> {
        let key = route_key(path);
        let state = self.inner.shared.lock();
        state
            .entries
            .iter()
            .filter(|e| route_key(&e.request.path) == key)
            .map(|e| e.request.clone())
            .collect()
    }

    /// The JSON bodies of the requests to `/batch/` answered with a 2xx
    /// status, in arrival order. Refused attempts (a 503 that the client
    /// retries, a reset) are left out; bodies that are not JSON too. A 2xx
    /// answer that was [lost](MockResponse::lose_response) counts.
    pub fn batches(&self) -> Vec<serde_json::Value> {
        let state = self.inner.shared.lock();
        state
            .entries
            .iter()
            .filter_map(|e| e.accepted_batch.clone())
            .collect()
    }

    /// The events of [`batches`](Self::batches): their `"batch"` arrays, concatenated.
    ///
    /// A request counts from its arrival, even when its answer is
    /// [delayed](MockResponse::delay) and the client gives up waiting, as the
    /// real service would have ingested it.
    pub fn events(&self) -> Vec<serde_json::Value> {
        let state = self.inner.shared.lock();
        state
            .entries
            .iter()
            .flat_map(|e| e.events().iter().cloned())
            .collect()
    }

    /// The events of the AI lane: the `"batch"` arrays of the requests to
    /// `/i/v0/ai/batch/` answered with a 2xx status, concatenated, in arrival
    /// order. [`events`](Self::events) never includes them.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> std::io::Result<()> {
    /// let mock = posthog_tower::testing::MockPostHog::start().await?;
    /// assert!(mock.ai_events().is_empty());
    /// # Ok(())
    /// # }
    /// ```
    pub fn ai_events(&self) -> Vec<serde_json::Value> {
        let state = self.inner.shared.lock();
        state
            .entries
            .iter()
            .flat_map(|e| e.ai_events().iter().cloned())
            .collect()
    }

    /// [`wait_for_events`](Self::wait_for_events) for the
    /// [AI lane's events](Self::ai_events).
    ///
    /// # Errors
    ///
    /// [`WaitTimeout`] if fewer than `n` AI events arrived within `timeout`.
    pub async fn wait_for_ai_events(
        &self,
        n: usize,
        timeout: Duration,
    ) -> Result<Vec<serde_json::Value>, WaitTimeout> {
        let reached = self
            .wait_until(timeout, || self.inner.shared.lock().ai_event_count() >= n)
            .await;
        if reached {
            Ok(self.ai_events())
        } else {
            Err(WaitTimeout {
                what: "AI events".to_owned(),
                expected: n,
                arrived: self.inner.shared.lock().ai_event_count(),
                waited: timeout,
            })
        }
    }

    /// Waits until at least `n` [`events`](Self::events) have arrived, and
    /// returns them all.
    ///
    /// Resolves as soon as the request that brings the count to `n` is
    /// recorded; the wait uses tokio's clock.
    ///
    /// # Errors
    ///
    /// [`WaitTimeout`] if fewer than `n` events arrived within `timeout`.
    pub async fn wait_for_events(
        &self,
        n: usize,
        timeout: Duration,
    ) -> Result<Vec<serde_json::Value>, WaitTimeout> {
        let reached = self
            .wait_until(timeout, || self.inner.shared.lock().event_count() >= n)
            .await;
        if reached {
            Ok(self.events())
        } else {
            Err(WaitTimeout {
                what: "events".to_owned(),
                expected: n,
                arrived: self.inner.shared.lock().event_count(),
                waited: timeout,
            })
        }
    }

    /// Waits until at least `n` requests to `path` (matched as in
    /// [`requests_to`](Self::requests_to)) have arrived, and returns them all.
    ///
    /// # Errors
    ///
    /// [`WaitTimeout`] if fewer than `n` requests arrived within `timeout`.
    pub async fn wait_for_requests(
        &self,
        path: &str,
        n: usize,
        timeout: Duration,
    ) -> Result<Vec<RecordedRequest>, WaitTimeout> {
        let key = route_key(path);
        let reached = self
            .wait_until(timeout, || self.inner.shared.lock().count_to(key) >= n)
            .await;
        if reached {
            Ok(self.requests_to(path))
        } else {
            Err(WaitTimeout {
                what: format!("requests to {path}"),
                expected: n,
                arrived: self.inner.shared.lock().count_to(key),
                waited: timeout,
            })
        }
    }

    /// Whether `done` became true within `timeout`, checked after each request.
    async fn wait_until(&self, timeout: Duration, done: impl Fn() -> bool) -> bool {
        // Subscribing before the first check means no request can slip
        // between the check and the wait.
        let mut changes = self.inner.shared.changes.subscribe();
        let wait = async {
            while !done() {
                if changes.changed().await.is_err() {
                    // Cannot happen: `self` keeps the sender alive. Never resolve.
                    std::future::pending::<()>().await;
                }
            }
        };
        tokio::time::timeout(timeout, wait).await.is_ok()
    }

    /// Queues `response` for the next request to `path` (ignoring one
    /// trailing slash). Queued answers are used first in, first out; when
    /// none is left the path's default answers.
    pub fn enqueue(&self, path: &str, response: MockResponse) {
        let mut state = self.inner.shared.lock();
        state
            .scripts
            .entry(route_key(path).to_owned())
            .or_default()
            .push_back(response);
    }

    /// Capture v1: queues `result` (`"retry"`, `"drop"`, `"limited"`, or any
    /// other string) as the per-event result of the event `uuid` in the next
    /// 200 answer to `/i/v1/analytics/events` that carries it. Results are
    /// used first in, first out; an event with none left is `"ok"`. (A queued
    /// [`MockResponse`] with its own JSON body answers as given instead; one
    /// made with [`MockResponse::status`]`(200)` gets these results, and can
    /// add a `Retry-After`.)
    ///
    /// The events a v1 answer did not call `"ok"` are recorded in
    /// [`requests`](Self::requests) but not counted in [`events`](Self::events).
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use posthog_tower::testing::{MockPostHog, MockResponse};
    ///
    /// let mock = MockPostHog::start().await?;
    /// let uuid = uuid::Uuid::from_u128(7);
    /// mock.enqueue_event_result(uuid, "retry");
    /// mock.enqueue("/i/v1/analytics/events", MockResponse::status(200).retry_after("3"));
    /// # mock.shutdown().await;
    /// # Ok(())
    /// # }
    /// ```
    pub fn enqueue_event_result(&self, uuid: uuid::Uuid, result: &str) {
        let mut state = self.inner.shared.lock();
        state
            .event_results
            .entry(uuid.hyphenated().to_string())
            .or_default()
            .push_back(result.to_owned());
    }

    /// Makes `response` the answer of `path` (ignoring one trailing slash)
    /// whenever nothing is queued for it.
    pub fn set_default(&self, path: &str, response: MockResponse) {
        let mut state = self.inner.shared.lock();
        state.defaults.insert(route_key(path).to_owned(), response);
    }

    /// Forgets the recorded requests, the queued answers and the queued per-event results.
    /// Defaults set with
    /// [`set_default`](Self::set_default) stay.
    pub fn clear(&self) {
        {
            let mut state = self.inner.shared.lock();
            state.entries.clear();
            state.scripts.clear();
            state.event_results.clear();
        }
        self.inner.shared.notify();
    }

    /// Stops accepting connections and waits until the listener is closed.
    ///
    /// Requests in flight are answered; idle connections are closed. Other
    /// handles to this mock stay usable to read what was recorded.
    pub async fn shutdown(self) {
        self.inner.shutdown.send_replace(true);
        let task = self
            .inner
            .accept_task
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(task) = task {
            if let Err(e) = task.await {
                tracing::warn!(error = %e, "MockPostHog: accept task failed");
            }
        }
    }
}

/// The error of [`MockPostHog::wait_for_events`] and
/// [`MockPostHog::wait_for_requests`]: too few arrived in time.
///
/// Its message reads like `waited 5s for 10 events, 3 arrived`.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use posthog_tower::testing::MockPostHog;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> std::io::Result<()> {
/// let mock = MockPostHog::start().await?;
/// let err = mock.wait_for_events(2, Duration::from_millis(10)).await.unwrap_err();
/// assert_eq!(err.to_string(), "waited 10ms for 2 events, 0 arrived");
/// assert_eq!((err.expected(), err.arrived()), (2, 0));
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WaitTimeout {
    what: String,
    expected: usize,
    arrived: usize,
    waited: Duration,
}

impl WaitTimeout {
    /// How many were waited for.
    pub fn expected(&self) -> usize {
        self.expected
    }

    /// How many had arrived when the wait ended.
    pub fn arrived(&self) -> usize {
        self.arrived
    }

    /// How long the wait lasted.
    pub fn waited(&self) -> Duration {
        self.waited
    }
}

impl fmt::Display for WaitTimeout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "waited {:?} for {} {}, {} arrived",
            self.waited, self.expected, self.what, self.arrived
        )
    }
}

impl std::error::Error for WaitTimeout {}
