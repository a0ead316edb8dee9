//! Helpers shared by the integration tests: a mock, a builder pointed at it, an `on_error`
//! recorder, and readers for what arrived on the wire.

// Each test binary uses a different subset of these helpers.
#![allow(dead_code)]

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use posthog_tower::testing::{MockPostHog, RecordedRequest};
use posthog_tower::{ErrorReport, PostHog, PostHogBuilder, Uuid};
use serde_json::Value;

/// The project key every test client uses.
pub const KEY: &str = "phc_integration_test";

/// A generous bound for waits on the mock. Under paused time it is virtual, so it costs
/// nothing; it only turns a hang into a clear failure.
pub const WAIT: Duration = Duration::from_secs(600);

pub async fn start_mock() -> MockPostHog {
    MockPostHog::start()
        .await
        .expect("the mock binds a port of 127.0.0.1")
}

/// A builder pointed at `mock`.
pub fn builder(mock: &MockPostHog) -> PostHogBuilder {
    PostHog::builder(KEY).host(mock.url())
}

/// Records every error passed to `on_error`.
#[derive(Clone, Default)]
pub struct ErrorLog(Arc<Mutex<Vec<ErrorReport>>>);

impl ErrorLog {
    pub fn new() -> Self {
        Self::default()
    }

    /// The callback to give to `PostHogBuilder::on_error`.
    pub fn callback(&self) -> impl Fn(&ErrorReport) + Send + Sync + 'static {
        let log = self.clone();
        move |e: &ErrorReport| log.0.lock().unwrap().push(e.clone())
    }

    pub fn all(&self) -> Vec<ErrorReport> {
        self.0.lock().unwrap().clone()
    }

    pub fn len(&self) -> usize {
        self.0.lock().unwrap().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The uuids of every `ErrorReport::Delivery` reported, in order.
    pub fn delivery_uuids(&self) -> Vec<Uuid> {
        self.all()
            .iter()
            .filter_map(|e| match e {
                ErrorReport::Delivery(d) => Some(d.uuids().to_vec()),
                _ => None,
            })
            .flatten()
            .collect()
    }

    /// How many reports were `ErrorReport::Delivery`.
    pub fn deliveries(&self) -> usize {
        self.all()
            .iter()
            .filter(|e| matches!(e, ErrorReport::Delivery(_)))
            .count()
    }
}

/// The request body parsed as JSON (panics with the raw body when it is not).
pub fn body_json(req: &RecordedRequest) -> Value {
    req.json().unwrap_or_else(|| {
        panic!(
            "request body is not JSON: {:?}",
            String::from_utf8_lossy(&req.body)
        )
    })
}

/// The `batch` array of a `/batch/` request.
pub fn batch_of(req: &RecordedRequest) -> Vec<Value> {
    body_json(req)["batch"]
        .as_array()
        .cloned()
        .unwrap_or_else(|| panic!("no batch array in {}", body_json(req)))
}

/// How many events each request carried.
pub fn batch_sizes(reqs: &[RecordedRequest]) -> Vec<usize> {
    reqs.iter().map(|r| batch_of(r).len()).collect()
}

/// The raw bytes of the events of a `/batch/` request: what sits between `"batch":[` and the
/// closing `]` before `"historical_migration"`.
pub fn raw_events(req: &RecordedRequest) -> &[u8] {
    let body = &req.body[..];
    let open = br#""batch":["#;
    let close = br#"],"historical_migration""#;
    let start = find(body, open).expect("a batch array") + open.len();
    let end = rfind(body, close).expect("the end of the batch array");
    &body[start..end]
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn rfind(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).rposition(|w| w == needle)
}

/// The uuid of an event as sent.
pub fn uuid_of(event: &Value) -> Uuid {
    let text = event["uuid"]
        .as_str()
        .unwrap_or_else(|| panic!("event without a string uuid: {event}"));
    Uuid::parse_str(text).unwrap_or_else(|e| panic!("bad uuid {text:?}: {e}"))
}

pub fn uuids_of(events: &[Value]) -> Vec<Uuid> {
    events.iter().map(uuid_of).collect()
}

/// Asserts `events` holds exactly the uuids `expected`, each exactly once.
pub fn assert_delivered_once(events: &[Value], expected: &[Uuid]) {
    let got = uuids_of(events);
    let unique: HashSet<Uuid> = got.iter().copied().collect();
    assert_eq!(unique.len(), got.len(), "an event arrived twice: {got:?}");
    let want: HashSet<Uuid> = expected.iter().copied().collect();
    assert_eq!(want.len(), expected.len(), "expected uuids are not unique");
    assert_eq!(
        unique, want,
        "delivered events differ from the expected ones"
    );
}

/// The event with this uuid among `events`.
pub fn find_event(events: &[Value], uuid: Uuid) -> Value {
    events
        .iter()
        .find(|e| uuid_of(e) == uuid)
        .cloned()
        .unwrap_or_else(|| panic!("event {uuid} did not arrive"))
}

/// Reads one `POST /batch/` request with a plain body from `conn`, for the tests' hand-written
/// servers (which give answers `MockPostHog` cannot: endless or dripped bodies, garbage);
/// `buf` keeps what was read past it. `None` once the client has closed.
pub async fn read_batch_request(
    conn: &mut tokio::net::TcpStream,
    buf: &mut Vec<u8>,
) -> Option<Vec<u8>> {
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        read_more(conn, buf).await?;
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    assert!(
        head.starts_with("post /batch/ "),
        "unexpected request: {head}"
    );
    assert!(
        !head.contains("content-encoding"),
        "the bare servers read plain bodies only: {head}"
    );
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .expect("a Content-Length")
        .trim()
        .parse()
        .expect("a numeric Content-Length");
    while buf.len() < head_end + len {
        read_more(conn, buf).await?;
    }
    let body = buf[head_end..head_end + len].to_vec();
    buf.drain(..head_end + len);
    Some(body)
}

async fn read_more(conn: &mut tokio::net::TcpStream, buf: &mut Vec<u8>) -> Option<()> {
    use tokio::io::AsyncReadExt;
    let mut chunk = [0u8; 16 * 1024];
    match conn.read(&mut chunk).await {
        Ok(0) | Err(_) => None,
        Ok(n) => {
            buf.extend_from_slice(&chunk[..n]);
            Some(())
        }
    }
}
