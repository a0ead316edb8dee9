//! The PostHog SDK compliance harness adapter for `posthog-tower`.
//!
//! PostHog's harness (`PostHog/posthog-sdk-test-harness`) drives an SDK through a small
//! HTTP/JSON server, this one, and checks what reaches its mock PostHog. The protocol:
//!
//! | endpoint | what it does |
//! |---|---|
//! | `GET /health` | names the SDK and its capabilities (`capture_v0` and `capture_ai_v0`, or `capture_v1`, and the one `encoding_*` of [`Options`]) |
//! | `POST /init` | builds a client: `api_key`, `host`, `flush_at`, `flush_interval_ms`, `max_retries`, `enable_compression`, `disable_geoip`, `historical_migration`; our extensions `personal_api_key` (local evaluation) and `poll_interval_ms` |
//! | `POST /capture` | `distinct_id`, `event`, `properties` (object or null), `timestamp` (RFC 3339 or null), `uuid` (optional), `options` (capture v1's `cookieless_mode`, `disable_skew_correction`, `process_person_profile`, `product_tour_id`; optional) |
//! | `POST /capture_ai` | as `/capture`, through `PostHog::capture_ai` to `/i/v0/ai/batch/` |
//! | `POST /flush` | delivers everything captured, waiting through retries |
//! | `POST /get_feature_flag` | `key`, `distinct_id`, `person_properties`, `groups`, `group_properties`, `disable_geoip`, `force_remote`, `only_evaluate_locally`: one flag, then a flush |
//! | `POST /get_all_flags` | `distinct_id`, `person_properties`, `groups`, `group_properties`, `disable_geoip`, `only_evaluate_locally`: every flag |
//! | `GET /state` | counters and every capture attempt, as observed by a tower layer |
//! | `POST /reset` | drops the client without sending anything more |
//!
//! `/get_feature_flag` answers `{"success": true, "value": …, "payload": …,
//! "locally_evaluated": …}`: `value` is `true`/`false`/`"variant"`, or `null` with an `error`
//! code (`flag_missing`, `api_error_502`, `inconclusive`, …) when the flag is unknown or could
//! not be evaluated; `payload` is the decoded JSON payload or `null`; `locally_evaluated` is
//! the SDK's own [`FeatureFlagResult::locally_evaluated`]. It flushes the client before
//! answering, so the `$feature_flag_called` event the lookup reported reaches the mock within
//! the call, never after the next test's reset. `/get_all_flags` answers `{"success": true,
//! "value": {key: value, …}}` (`{}` and an `error` code when `/flags` failed).
//!
//! Local evaluation (our extension of the protocol): `/init` with a `personal_api_key` builds
//! the client with it, polling `{host}/flags/definitions` every `poll_interval_ms` (the SDK's
//! 30 s by default), and answers only once the first load settled (at most 5 s), with
//! `"flag_definitions_loaded": true|false`. Lookups then evaluate locally first and ask
//! `/flags` only for what local evaluation cannot decide.
//!
//! * `only_evaluate_locally: true` never asks `/flags`: a flag local evaluation cannot decide
//!   (or does not know) answers `"success": true, "value": null, "error": "inconclusive"`, and
//!   `/get_all_flags` leaves such flags out. Without a personal API key nothing can be decided
//!   locally: the answer is `"success": false` with a `null` value (`{}` for all flags).
//! * `force_remote: true` bypasses local evaluation (`FlagsRequest::force_remote`): the lookup
//!   always makes a fresh `/flags` request.
//! * `/reset` (and a new `/init`) shuts the clients down, which stops the definitions poller.
//!
//! In parallel mode the harness appends `?test_id=…` to every call but `/health`: each test id
//! gets its own client, which sends `X-Test-Id: <test id>` on every request to the mock,
//! `/flags` and `/flags/definitions` included. Without a test id the calls go to one global client.
//!
//! One adapter speaks one capture protocol with one encoding ([`Options`], the command line's
//! `--protocol v0|v1` and `--compression none|gzip|deflate|br|zstd`): the harness's `/init`
//! chooses neither, and its v0 and v1 suites contradict each other. `enable_compression: true`
//! turns that encoding on.
//!
//! Every answer is JSON with `Content-Type: application/json`. Only genuine adapter errors
//! (a malformed request, a capture the SDK refused, a call before `/init`) are non-2xx:
//! `400 {"success": false, "error": "…"}`.

use std::{
    collections::HashMap,
    convert::Infallible,
    future::Future,
    pin::Pin,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex, MutexGuard,
    },
    task::{Context, Poll},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::{body::Incoming, service::service_fn};
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};
use posthog_tower::{
    capture::CaptureProtocol, capture::CaptureTransport, capture::Compression,
    capture::EncodedBatch, capture::EventResults, capture::RetryPolicy, capture::V1RetryPolicy,
    capture::V1Transport, flags::FeatureFlagResult, flags::FlagError, flags::FlagsRequest, net,
    net::HttpClient, net::UnexpectedStatus, BoxError, Event, PostHog, Timestamp, Uuid,
};
use serde::Deserialize;
use serde_json::{json, Map, Value};
use tokio::net::TcpListener;
use tower::{util::BoxCloneSyncService, Layer, Service, ServiceBuilder, ServiceExt};

/// The adapter's own version, reported by `/health`.
const ADAPTER_VERSION: &str = "1.0.0";
/// The contract's default `flush_interval_ms` when `/init` does not set one.
const DEFAULT_FLUSH_INTERVAL: Duration = Duration::from_millis(500);
/// Retries when `/init` does not set `max_retries`: the SDK's default.
const DEFAULT_MAX_RETRIES: usize = 3;
/// Timeout of one HTTP attempt: the SDK's default.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a client replaced by a new `/init` may take to stop.
const REPLACE_DEADLINE: Duration = Duration::from_millis(100);
/// Largest request body the adapter reads.
const MAX_BODY: usize = 8 * 1024 * 1024;
/// How long `/init` waits for the first flag definitions when given a personal API key.
const DEFINITIONS_WAIT: Duration = Duration::from_secs(5);
/// The `error` of a lookup local evaluation could not decide (`FlagError::code` has no code
/// for it).
const INCONCLUSIVE: &str = "inconclusive";

/// The capture protocol and the encoding of every client the adapter builds.
#[derive(Clone, Copy, Debug)]
pub struct Options {
    pub protocol: CaptureProtocol,
    /// Used when `/init` sets `enable_compression: true`.
    pub compression: Compression,
}

impl Default for Options {
    /// Capture v0 with gzip: what the adapter has always been.
    fn default() -> Self {
        Options {
            protocol: CaptureProtocol::V0,
            compression: Compression::Gzip,
        }
    }
}

impl Options {
    /// Reads `--protocol v0|v1` and `--compression none|gzip|deflate|br|zstd` (the next
    /// argument after `flag`), or says why it cannot. (Unused by the tests, which include
    /// this file.)
    #[allow(dead_code)]
    pub fn set(&mut self, flag: &str, value: &str) -> Result<(), String> {
        match (flag, value) {
            ("--protocol", "v0") => self.protocol = CaptureProtocol::V0,
            ("--protocol", "v1") => self.protocol = CaptureProtocol::V1,
            ("--compression", "none") => self.compression = Compression::None,
            ("--compression", "gzip") => self.compression = Compression::Gzip,
            ("--compression", "deflate") => self.compression = Compression::Deflate,
            ("--compression", "br") => self.compression = Compression::Brotli,
            ("--compression", "zstd") => self.compression = Compression::Zstd,
            _ => return Err(format!("invalid {flag} {value:?}")),
        }
        Ok(())
    }

    /// What `/health` declares.
    fn capabilities(&self) -> Vec<&'static str> {
        let protocol = match self.protocol {
            CaptureProtocol::V1 => "capture_v1",
            _ => "capture_v0",
        };
        let encoding = match self.compression {
            Compression::Gzip => Some("encoding_gzip"),
            Compression::Deflate => Some("encoding_deflate"),
            Compression::Brotli => Some("encoding_br"),
            Compression::Zstd => Some("encoding_zstd"),
            _ => None,
        };
        // The AI lane speaks v0 whatever the protocol: its suite runs with the v0 runs.
        let ai = (protocol == "capture_v0").then_some("capture_ai_v0");
        std::iter::once(protocol)
            .chain(ai)
            .chain(encoding)
            .collect()
    }
}

/// Serves the adapter on `listener` until the task is dropped or aborted: capture v0 with gzip.
/// (Unused by `main.rs`, which always passes its options.)
#[allow(dead_code)]
pub async fn serve(listener: TcpListener) {
    serve_with(listener, Options::default()).await
}

/// Serves the adapter on `listener` with `options` until the task is dropped or aborted.
pub async fn serve_with(listener: TcpListener, options: Options) {
    let adapter = Arc::new(Adapter {
        options,
        ..Adapter::default()
    });
    loop {
        let (stream, _peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Typically out of file descriptors: back off a little and keep serving.
                eprintln!("sdk_adapter: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let adapter = adapter.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let adapter = adapter.clone();
                async move { Ok::<_, Infallible>(adapter.handle(req).await) }
            });
            let builder = auto::Builder::new(TokioExecutor::new());
            // A client going away mid-request is not the adapter's problem.
            let _ = builder
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

// ===== the HTTP side =====

/// A failed adapter call: answered `400 {"success": false, "error": …}`.
struct Fail(String);

impl<E: std::fmt::Display> From<E> for Fail {
    fn from(e: E) -> Self {
        Fail(e.to_string())
    }
}

type Answer = Result<Value, Fail>;

fn respond(status: StatusCode, body: &Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// `test_id` from the query string, percent-decoded.
fn test_id(query: Option<&str>) -> Option<String> {
    query?
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(key, _)| *key == "test_id")
        .map(|(_, value)| percent_decode(value))
        .filter(|id| !id.is_empty())
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                match std::str::from_utf8(&bytes[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn parse_json<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<T, Fail> {
    serde_json::from_slice(body).map_err(|e| Fail(format!("invalid request body: {e}")))
}

// ===== the adapter =====

/// Every client, by test id (`""` for the global one).
#[derive(Default)]
struct Adapter {
    instances: Mutex<HashMap<String, Instance>>,
    options: Options,
}

impl Adapter {
    fn instances(&self) -> MutexGuard<'_, HashMap<String, Instance>> {
        self.instances.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn instance(&self, test_id: Option<&str>) -> Option<Instance> {
        self.instances().get(test_id.unwrap_or_default()).cloned()
    }

    async fn handle(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let (parts, body) = req.into_parts();
        let test_id = test_id(parts.uri.query());
        let body = match Limited::new(body, MAX_BODY).collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(e) => {
                return respond(
                    StatusCode::BAD_REQUEST,
                    &json!({"success": false, "error": format!("cannot read the body: {e}")}),
                )
            }
        };
        let test_id = test_id.as_deref();
        let answer = match (&parts.method, parts.uri.path()) {
            (&Method::GET, "/health") => Ok(health(&self.options)),
            (&Method::POST, "/init") => self.init(test_id, &body).await,
            (&Method::POST, "/capture") => self.capture(test_id, &body, Lane::Analytics),
            (&Method::POST, "/capture_ai") => self.capture(test_id, &body, Lane::Ai),
            (&Method::POST, "/flush") => self.flush(test_id).await,
            (&Method::POST, "/get_feature_flag") => self.get_feature_flag(test_id, &body).await,
            (&Method::POST, "/get_all_flags") => self.get_all_flags(test_id, &body).await,
            (&Method::GET, "/state") => Ok(self.state(test_id)),
            (&Method::POST, "/reset") => self.reset(test_id).await,
            (method, path) => {
                return respond(
                    StatusCode::NOT_FOUND,
                    &json!({"success": false, "error": format!("no endpoint {method} {path}")}),
                )
            }
        };
        match answer {
            Ok(value) => respond(StatusCode::OK, &value),
            Err(Fail(error)) => respond(
                StatusCode::BAD_REQUEST,
                &json!({"success": false, "error": error}),
            ),
        }
    }

    async fn init(&self, test_id: Option<&str>, body: &[u8]) -> Answer {
        let request: InitRequest = parse_json(body)?;
        let key = test_id.unwrap_or_default().to_owned();
        // Stop the previous client first, so none of its events can reach the mock later.
        let previous = self.instances().remove(&key);
        if let Some(previous) = previous {
            previous.retire(REPLACE_DEADLINE).await;
        }
        let instance = Instance::build(&request, test_id, self.options)?;
        // Registered before waiting for definitions, so a `/reset` meanwhile still stops it.
        let displaced = self.instances().insert(key, instance.clone());
        // A concurrent `/init` for the same test id may have won the race: retire its client.
        if let Some(displaced) = displaced {
            displaced.retire(REPLACE_DEADLINE).await;
        }
        if !instance.local_evaluation {
            return Ok(json!({"success": true}));
        }
        // Tests expect local answers from their first lookup on.
        let loaded = instance
            .client
            .wait_for_flag_definitions(DEFINITIONS_WAIT)
            .await;
        Ok(json!({"success": true, "flag_definitions_loaded": loaded}))
    }

    /// `/capture` (`PostHog::capture`, to `/batch/`) or `/capture_ai` (`PostHog::capture_ai`,
    /// to `/i/v0/ai/batch/`): the same request, and the uuid of the event sent.
    fn capture(&self, test_id: Option<&str>, body: &[u8], lane: Lane) -> Answer {
        let request: CaptureRequest = parse_json(body)?;
        let instance = self
            .instance(test_id)
            .ok_or_else(|| Fail("no client: call /init first".to_owned()))?;
        let mut event = Event::new(request.event, request.distinct_id);
        if let Some(properties) = request.properties {
            event = event.properties_from(properties);
        }
        if let Some(timestamp) = request.timestamp.as_deref() {
            let timestamp = Timestamp::parse(timestamp)
                .map_err(|e| Fail(format!("invalid timestamp {timestamp:?}: {e}")))?;
            event = event.timestamp(timestamp);
        }
        if let Some(uuid) = request.uuid.as_deref() {
            let uuid =
                Uuid::parse_str(uuid).map_err(|e| Fail(format!("invalid uuid {uuid:?}: {e}")))?;
            event = event.uuid(uuid);
        }
        let options = request.options.unwrap_or_default();
        if let Some(on) = options.cookieless_mode {
            event = event.cookieless_mode(on);
        }
        if let Some(off) = options.disable_skew_correction {
            event = event.disable_skew_correction(off);
        }
        if let Some(on) = options.process_person_profile {
            event = event.process_person_profile(on);
        }
        if let Some(id) = options.product_tour_id {
            event = event.product_tour_id(id);
        }
        let uuid = match lane {
            Lane::Analytics => instance.client.capture(event)?,
            Lane::Ai => instance.client.capture_ai(event)?,
        };
        Ok(json!({"success": true, "uuid": uuid.to_string()}))
    }

    async fn flush(&self, test_id: Option<&str>) -> Answer {
        let delivered = match self.instance(test_id) {
            Some(instance) => instance.flush().await,
            None => 0,
        };
        Ok(json!({"success": true, "events_flushed": delivered}))
    }

    fn require(&self, test_id: Option<&str>) -> Result<Instance, Fail> {
        self.instance(test_id)
            .ok_or_else(|| Fail("no client: call /init first".to_owned()))
    }

    /// One flag (local evaluation first when on, `/flags` for the rest); then a flush, so the
    /// `$feature_flag_called` event is delivered before the answer.
    async fn get_feature_flag(&self, test_id: Option<&str>, body: &[u8]) -> Answer {
        let request: GetFlagRequest = parse_json(body)?;
        let only_locally = request.only_evaluate_locally.unwrap_or(false);
        let force_remote = request.force_remote.unwrap_or(false);
        if only_locally && force_remote {
            return Err(Fail(
                "force_remote and only_evaluate_locally cannot both be true".to_owned(),
            ));
        }
        let instance = self.require(test_id)?;
        let flags_request = request
            .person
            .flags_request(request.distinct_id)?
            .only_evaluate_locally(only_locally)
            .force_remote(force_remote);
        let client = &instance.client;
        let outcome = client
            .get_feature_flag_result(&request.key, flags_request)
            .await;
        let answer = flag_answer(outcome, instance.local_evaluation)?;
        client.flush().await;
        Ok(answer)
    }

    /// Every flag (local evaluation first when on; no events).
    async fn get_all_flags(&self, test_id: Option<&str>, body: &[u8]) -> Answer {
        let request: GetAllFlagsRequest = parse_json(body)?;
        let instance = self.require(test_id)?;
        let flags_request = request
            .person
            .flags_request(request.distinct_id)?
            .only_evaluate_locally(request.only_evaluate_locally.unwrap_or(false));
        Ok(match instance.client.get_all_flags(flags_request).await {
            Ok(flags) => json!({"success": true, "value": serde_json::to_value(&flags)?}),
            Err(FlagError::Inconclusive) => json!({
                "success": instance.local_evaluation,
                "value": {},
                "error": INCONCLUSIVE,
            }),
            Err(error) => json!({"success": true, "value": {}, "error": error.code()}),
        })
    }

    fn state(&self, test_id: Option<&str>) -> Value {
        let Some(instance) = self.instance(test_id) else {
            return json!({
                "pending_events": 0,
                "total_events_captured": 0,
                "total_events_sent": 0,
                "total_retries": 0,
                "last_error": null,
                "requests_made": [],
            });
        };
        // Both clients' counters (the companion only sends `force_remote` lookups' events).
        let (mut captured, mut delivered, mut settled, mut retries) = (0, 0, 0, 0);
        for client in instance.clients() {
            let stats = client.stats();
            captured += stats.captured;
            delivered += stats.delivered;
            // Accepted events not yet delivered, failed or dropped: queued, batching or in
            // flight.
            settled += stats.delivered
                + stats.failed
                + stats.dropped.before_send
                + stats.dropped.hook_panicked;
            retries += stats.retries;
        }
        json!({
            "pending_events": captured.saturating_sub(settled),
            "total_events_captured": captured,
            "total_events_sent": delivered,
            "total_retries": retries,
            "last_error": *lock(&instance.last_error),
            "requests_made": instance.observer.attempts(),
        })
    }

    /// Drops the client of `test_id`, or every client without one, sending nothing more.
    async fn reset(&self, test_id: Option<&str>) -> Answer {
        let retired: Vec<Instance> = {
            let mut instances = self.instances();
            match test_id {
                Some(id) => instances.remove(id).into_iter().collect(),
                None => instances.drain().map(|(_, instance)| instance).collect(),
            }
        };
        for instance in retired {
            instance.retire(Duration::ZERO).await;
        }
        Ok(json!({"success": true}))
    }
}

fn health(options: &Options) -> Value {
    json!({
        "sdk_name": "posthog-tower",
        "sdk_version": posthog_tower::VERSION,
        "adapter_version": ADAPTER_VERSION,
        "supports_parallel": true,
        "capabilities": options.capabilities(),
    })
}

/// The `/get_feature_flag` answer for a lookup's outcome.
fn flag_answer(
    outcome: Result<FeatureFlagResult, FlagError>,
    local_evaluation: bool,
) -> Result<Value, Fail> {
    Ok(match outcome {
        Ok(result) => json!({
            "success": true,
            "value": serde_json::to_value(&result.record.value)?,
            "payload": result.record.payload,
            "locally_evaluated": result.record.locally_evaluated,
        }),
        // Without local evaluation nothing can ever be decided locally: a failed call.
        Err(FlagError::Inconclusive) => json!({
            "success": local_evaluation,
            "value": null,
            "payload": null,
            "locally_evaluated": false,
            "error": INCONCLUSIVE,
        }),
        Err(error) => json!({
            "success": true,
            "value": null,
            "payload": null,
            "locally_evaluated": false,
            "error": error.code(),
        }),
    })
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

#[derive(Deserialize)]
struct InitRequest {
    api_key: String,
    host: String,
    flush_at: Option<usize>,
    flush_interval_ms: Option<u64>,
    max_retries: Option<usize>,
    enable_compression: Option<bool>,
    disable_geoip: Option<bool>,
    historical_migration: Option<bool>,
    /// Our extension: turns local evaluation on against `host`.
    #[serde(default)]
    personal_api_key: Option<String>,
    /// Our extension: how often the definitions are fetched (the SDK's 30 s by default).
    #[serde(default)]
    poll_interval_ms: Option<u64>,
}

/// Which capture method an adapter call goes to.
#[derive(Clone, Copy)]
enum Lane {
    Analytics,
    Ai,
}

#[derive(Deserialize)]
struct CaptureRequest {
    distinct_id: String,
    event: String,
    #[serde(default)]
    properties: Option<Map<String, Value>>,
    #[serde(default)]
    timestamp: Option<String>,
    #[serde(default)]
    uuid: Option<String>,
    /// Capture v1's per-event options.
    #[serde(default)]
    options: Option<CaptureOptions>,
}

#[derive(Deserialize, Default)]
struct CaptureOptions {
    cookieless_mode: Option<bool>,
    disable_skew_correction: Option<bool>,
    process_person_profile: Option<bool>,
    product_tour_id: Option<String>,
}

#[derive(Deserialize)]
struct GetFlagRequest {
    key: String,
    distinct_id: String,
    #[serde(flatten)]
    person: FlagContext,
    #[serde(default)]
    force_remote: Option<bool>,
    #[serde(default)]
    only_evaluate_locally: Option<bool>,
}

#[derive(Deserialize)]
struct GetAllFlagsRequest {
    distinct_id: String,
    #[serde(flatten)]
    person: FlagContext,
    #[serde(default)]
    only_evaluate_locally: Option<bool>,
}

/// What a flag call says about the person, its groups and geoip; `null` counts as absent.
#[derive(Deserialize)]
struct FlagContext {
    #[serde(default)]
    person_properties: Option<Map<String, Value>>,
    /// Group type to group key: a string, or a number taken as its decimal text.
    #[serde(default)]
    groups: Option<Map<String, Value>>,
    /// Group type to that group's properties.
    #[serde(default)]
    group_properties: Option<Map<String, Value>>,
    #[serde(default)]
    disable_geoip: Option<bool>,
}

impl FlagContext {
    fn flags_request(self, distinct_id: String) -> Result<FlagsRequest, Fail> {
        let mut request = FlagsRequest::new(distinct_id);
        if let Some(properties) = self.person_properties {
            request = request.person_properties(properties);
        }
        for (group_type, key) in self.groups.unwrap_or_default() {
            let key = match key {
                Value::String(key) => key,
                Value::Number(n) => n.to_string(),
                Value::Null => continue,
                other => {
                    return Err(Fail(format!(
                        "groups.{group_type} must be a string, not {other}"
                    )))
                }
            };
            request = request.group(group_type, key);
        }
        for (group_type, properties) in self.group_properties.unwrap_or_default() {
            match properties {
                Value::Object(properties) => {
                    request = request.group_properties(group_type, properties);
                }
                Value::Null => {}
                other => {
                    return Err(Fail(format!(
                        "group_properties.{group_type} must be an object, not {other}"
                    )))
                }
            }
        }
        if let Some(disabled) = self.disable_geoip {
            request = request.disable_geoip(disabled);
        }
        Ok(request)
    }
}

/// One client with what `/state` reports about it.
#[derive(Clone)]
struct Instance {
    client: PostHog,
    /// Whether `client` was given a personal API key.
    local_evaluation: bool,
    observer: Arc<Observer>,
    last_error: Arc<Mutex<Option<String>>>,
}

impl Instance {
    fn build(
        request: &InitRequest,
        test_id: Option<&str>,
        options: Options,
    ) -> Result<Instance, Fail> {
        let observer = Arc::new(Observer::default());
        let last_error = Arc::new(Mutex::new(None));
        let http_client = http_client(test_id)?;
        let personal_key = request
            .personal_api_key
            .as_deref()
            .map(str::trim)
            .filter(|key| !key.is_empty());
        let parts = ClientParts {
            request,
            http_client: &http_client,
            observer: &observer,
            last_error: &last_error,
            options,
        };
        let client = parts.build(personal_key)?;
        Ok(Instance {
            client,
            local_evaluation: personal_key.is_some(),
            observer,
            last_error,
        })
    }

    /// The clients of this instance (one).
    fn clients(&self) -> impl Iterator<Item = &PostHog> {
        std::iter::once(&self.client)
    }

    /// Flushes every client; the events delivered.
    async fn flush(&self) -> u64 {
        let mut delivered = 0;
        for client in self.clients() {
            delivered += client.flush().await.delivered;
        }
        delivered
    }

    /// Closes the gate (no request starts from now on) and shuts the clients down, which stops
    /// the definitions poller: whatever cannot be settled within `deadline` is reported failed
    /// instead of sent.
    async fn retire(self, deadline: Duration) {
        self.observer.open.store(false, Ordering::Release);
        self.client.shutdown(deadline).await;
    }
}

/// What every client of one `/init` is built from.
struct ClientParts<'a> {
    request: &'a InitRequest,
    /// The SDK's HTTP client with `X-Test-Id` in parallel mode.
    http_client: &'a HttpClient,
    observer: &'a Arc<Observer>,
    last_error: &'a Arc<Mutex<Option<String>>>,
    options: Options,
}

impl ClientParts<'_> {
    /// A client as `/init` asked for, evaluating flags locally with `personal_key`.
    fn build(&self, personal_key: Option<&str>) -> Result<PostHog, Fail> {
        let request = self.request;
        let api_key = request.api_key.trim();
        let host = request.host.trim().trim_end_matches('/');
        let errors = self.last_error.clone();
        let mut builder = PostHog::builder(api_key)
            .host(host)
            // `/flags` and `/flags/definitions` go through this client (the capture stack below
            // has its own transport): it carries `X-Test-Id` and stops once the client is
            // retired.
            .http_client(gated(self.http_client.clone(), self.observer.clone()))
            .flush_interval(
                request
                    .flush_interval_ms
                    .map_or(DEFAULT_FLUSH_INTERVAL, Duration::from_millis),
            )
            // Absent means geoip enabled: the contract expects `geoip_disable: false` then.
            .disable_geoip(request.disable_geoip.unwrap_or(false))
            .on_error(move |e| *lock(&errors) = Some(e.to_string()));
        if let Some(flush_at) = request.flush_at {
            builder = builder.flush_at(flush_at);
        }
        if let Some(key) = personal_key {
            builder = builder.personal_api_key(key);
            if let Some(ms) = request.poll_interval_ms {
                builder = builder.poll_interval(Duration::from_millis(ms));
            }
        }
        let recorder = builder.stats_recorder();
        let compress = request.enable_compression.unwrap_or(false);
        let historical = request.historical_migration.unwrap_or(false);
        let max_retries = request.max_retries.unwrap_or(DEFAULT_MAX_RETRIES);
        let client = self.http_client.clone();
        let observe = ObserveLayer(self.observer.clone());
        // A v0 stack: `/batch/`, or `/i/v0/ai/batch/` for `capture_ai` (the AI lane is v0 in
        // every run).
        let gzip = compress && self.options.compression == Compression::Gzip;
        let v0_stack = |transport: CaptureTransport| {
            let transport = transport
                .gzip(gzip)
                .historical_migration(historical)
                .stats(recorder.clone());
            ServiceBuilder::new()
                .retry(RetryPolicy::new(max_retries).stats(recorder.clone()))
                .timeout(REQUEST_TIMEOUT)
                .layer(observe.clone())
                .service(transport)
        };
        let ai = v0_stack(CaptureTransport::ai_with_client(
            client.clone(),
            host,
            api_key,
        )?);
        let builder = builder.ai_capture_stack(ai);
        let builder = match self.options.protocol {
            CaptureProtocol::V1 => {
                let compression = if compress {
                    self.options.compression
                } else {
                    Compression::None
                };
                let transport = V1Transport::with_client(client, host, api_key)?
                    .compression(compression)
                    .historical_migration(historical)
                    .stats(recorder.clone());
                builder.capture_stack(
                    ServiceBuilder::new()
                        .retry(V1RetryPolicy::new(max_retries).stats(recorder.clone()))
                        .timeout(REQUEST_TIMEOUT)
                        .layer(observe)
                        .service(transport),
                )
            }
            _ => builder.capture_stack(v0_stack(CaptureTransport::with_client(
                client, host, api_key,
            )?)),
        };
        Ok(builder.build()?)
    }
}

/// The SDK's default HTTP client, adding `X-Test-Id` to every request in parallel mode.
fn http_client(test_id: Option<&str>) -> Result<HttpClient, Fail> {
    let client = net::default_client();
    let Some(test_id) = test_id else {
        return Ok(client);
    };
    let value = HeaderValue::from_str(test_id)
        .map_err(|_| Fail(format!("test_id {test_id:?} is not a valid header value")))?;
    Ok(net::into_http_client(
        ServiceBuilder::new()
            .map_request(move |mut req: Request<Full<Bytes>>| {
                req.headers_mut().insert("x-test-id", value.clone());
                req
            })
            .service(client),
    ))
}

/// `client`, refusing every request once `observer` is closed (the client was retired), so a
/// `/flags` retry still pending after `/reset` never reaches the mock.
fn gated(client: HttpClient, observer: Arc<Observer>) -> HttpClient {
    BoxCloneSyncService::new(tower::service_fn(move |request| {
        let client = client.clone();
        let open = observer.open.load(Ordering::Acquire);
        async move {
            if !open {
                return Err(BoxError::from(
                    "the adapter reset this client: nothing more is sent",
                ));
            }
            client.oneshot(request).await
        }
    }))
}

// ===== the observing layer =====

/// What `/state` lists per HTTP attempt.
#[derive(Clone, Debug, serde::Serialize)]
struct Attempt {
    /// When the attempt started, in Unix milliseconds.
    timestamp_ms: u64,
    /// The HTTP status, or 0 when no answer came (connection error, timeout).
    status_code: u16,
    /// 0 for a batch's first attempt, 1 for its first retry, and so on.
    retry_attempt: u32,
    event_count: usize,
    uuid_list: Vec<String>,
}

/// Sees every HTTP attempt of one client (below retry and timeout), and can stop them all.
struct Observer {
    /// `false` once the client is retired: no attempt starts any more.
    open: AtomicBool,
    finished: Mutex<Vec<Attempt>>,
}

impl Default for Observer {
    fn default() -> Self {
        Observer {
            open: AtomicBool::new(true),
            finished: Mutex::new(Vec::new()),
        }
    }
}

impl Observer {
    fn start(&self, batch: &EncodedBatch) -> Attempt {
        let uuids = batch.uuids();
        // The retry policies number the attempts at one request (a batch split on 413 is
        // two new requests; a v1 partial retry is the same request).
        let retry_attempt = batch.attempt().saturating_sub(1);
        Attempt {
            timestamp_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
            status_code: 0,
            retry_attempt,
            event_count: uuids.len(),
            uuid_list: uuids.iter().map(Uuid::to_string).collect(),
        }
    }

    /// Every finished attempt, in the order they started.
    fn attempts(&self) -> Vec<Attempt> {
        let mut attempts = lock(&self.finished).clone();
        attempts.sort_by_key(|a| a.timestamp_ms);
        attempts
    }
}

/// Records an attempt when it ends; one dropped unfinished (timed out, aborted) records 0.
struct Recording {
    observer: Arc<Observer>,
    attempt: Option<Attempt>,
}

impl Recording {
    fn finish(mut self, status_code: u16) {
        if let Some(mut attempt) = self.attempt.take() {
            attempt.status_code = status_code;
            lock(&self.observer.finished).push(attempt);
        }
    }
}

impl Drop for Recording {
    fn drop(&mut self) {
        if let Some(attempt) = self.attempt.take() {
            lock(&self.observer.finished).push(attempt);
        }
    }
}

#[derive(Clone)]
struct ObserveLayer(Arc<Observer>);

impl<S> Layer<S> for ObserveLayer {
    type Service = Observe<S>;

    fn layer(&self, inner: S) -> Observe<S> {
        Observe {
            inner,
            observer: self.0.clone(),
        }
    }
}

/// The service of [`ObserveLayer`], wrapping the transport.
#[derive(Clone)]
struct Observe<S> {
    inner: S,
    observer: Arc<Observer>,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// The HTTP status behind a transport's answer.
trait AnswerStatus {
    fn status_code(&self) -> u16;
}

impl AnswerStatus for StatusCode {
    fn status_code(&self) -> u16 {
        self.as_u16()
    }
}

impl AnswerStatus for EventResults {
    /// Capture v1 answers its per-event results with a 200.
    fn status_code(&self) -> u16 {
        200
    }
}

impl<S> Service<EncodedBatch> for Observe<S>
where
    S: Service<EncodedBatch, Error = BoxError>,
    S::Response: AnswerStatus + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = BoxFuture<Result<S::Response, BoxError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, batch: EncodedBatch) -> Self::Future {
        if !self.observer.open.load(Ordering::Acquire) {
            return Box::pin(std::future::ready(Err(BoxError::from(
                "the adapter reset this client: nothing more is sent",
            ))));
        }
        let recording = Recording {
            attempt: Some(self.observer.start(&batch)),
            observer: self.observer.clone(),
        };
        let future = self.inner.call(batch);
        Box::pin(async move {
            let result = future.await;
            let status = match &result {
                Ok(answer) => answer.status_code(),
                Err(e) => e
                    .downcast_ref::<UnexpectedStatus>()
                    .map_or(0, |s| s.status().as_u16()),
            };
            recording.finish(status);
            result
        })
    }
}
