//! PostHog's SDK compliance harness, `capture_v1` suite, run from its contract.
//!
//! `contracts/capture_analytics_v1_tests.json` is the harness's
//! `contracts/capture_analytics_v1_tests.yaml` at commit `16a62da` of
//! `PostHog/posthog-sdk-test-harness`, converted to JSON (PyYAML's `safe_load`, then
//! `json.dump`) and otherwise untouched: 98 tests in 13 categories. This file interprets it:
//! every step the contract uses (`init`, `capture`, `capture_multiple`, `flush`, `wait`,
//! `configure_mock_responses` and 50 assertions) is done as the harness does it
//! (`src/posthog_test_harness/actions.py` at that commit), against our adapter in-process and
//! [`MockPostHog`](posthog_tower::testing::MockPostHog) as the mock.
//!
//! The harness's mock answers v1 requests in a way ours reproduces here:
//! `configure_mock_responses` queues answers first in, first out; `v1_event_results` gives the
//! n-th event of the next request the n-th result (here: the n-th event captured, scripted
//! with `MockPostHog::enqueue_event_result` as soon as `/capture` names its uuid), with
//! `Retry-After: 1` when one is `retry`; 408, 500, 503 and 504 answers get `Retry-After: 1`.
//!
//! The harness runs one encoding per adapter process (its `/init` cannot choose one), so the
//! suite runs four times, as `--protocol v1 --compression X` for gzip, deflate, br and zstd;
//! each run declares `capture_v1` and its `encoding_X`, and a test that requires another
//! encoding is skipped, as the harness skips it. Together the runs pass all 98 tests.
//!
//! Every run is on tokio's paused clock: the harness's waits (up to 15 s per test) and the
//! client's backoff and `Retry-After` cost no real time, and gaps between requests are exact.

use std::collections::{HashSet, VecDeque};
use std::time::{Duration, SystemTime};

use http::Method;
use posthog_tower::capture::{CaptureProtocol, Compression};
use posthog_tower::testing::{MockResponse, RecordedRequest};
use posthog_tower::Timestamp;
use regex::Regex;
use serde_json::{json, Value};

use crate::harness::{adapter, Harness};

const CONTRACT: &str = include_str!("contracts/capture_analytics_v1_tests.json");
const PATH: &str = "/i/v1/analytics/events";

/// One test of the contract.
struct Test {
    name: String,
    requires: Option<String>,
    steps: Vec<Value>,
}

fn contract() -> Vec<Test> {
    let contract: Value = serde_json::from_str(CONTRACT).expect("the contract is JSON");
    assert_eq!(contract["requires"], "capture_v1");
    let mut tests = Vec::new();
    for (category, body) in contract["categories"].as_object().expect("categories") {
        for test in body["tests"].as_array().expect("tests") {
            tests.push(Test {
                name: format!("{category}.{}", test["name"].as_str().expect("a name")),
                requires: test["requires"].as_str().map(str::to_owned),
                steps: test["steps"].as_array().expect("steps").clone(),
            });
        }
    }
    tests
}

type Outcome = Result<(), String>;

fn fail<T>(message: impl Into<String>) -> Result<T, String> {
    Err(message.into())
}

/// Replaces `{index}` in every string of `value`.
fn substitute(value: &Value, index: usize) -> Value {
    match value {
        Value::String(s) => Value::String(s.replace("{index}", &index.to_string())),
        Value::Array(items) => Value::Array(items.iter().map(|v| substitute(v, index)).collect()),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| (k.clone(), substitute(v, index)))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// The harness's `_is_rfc3339`: canonical RFC 3339 in UTC.
fn is_rfc3339(value: &str) -> bool {
    let pattern = Regex::new(
        r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]+)?(?:Z|\+00:00)$",
    )
    .expect("a valid pattern");
    pattern.is_match(value) && value.parse::<Timestamp>().is_ok()
}

fn is_uuid(value: &str) -> bool {
    value.parse::<posthog_tower::Uuid>().is_ok()
}

/// The events the harness's mock parses out of a body (`batch` of a JSON object).
fn events(req: &RecordedRequest) -> Option<Vec<Value>> {
    let body = req.json()?;
    body.get("batch")?.as_array().cloned()
}

fn header(req: &RecordedRequest, name: &str) -> Option<String> {
    req.header(name).map(str::to_owned)
}

fn response_header(req: &RecordedRequest, name: &str) -> Option<String> {
    req.response_headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

fn response_json(req: &RecordedRequest) -> Result<Value, String> {
    if req.response_body.is_empty() {
        return fail("Response has no body");
    }
    serde_json::from_slice(&req.response_body).map_err(|e| format!("response not JSON: {e}"))
}

fn millis(d: Duration) -> u128 {
    d.as_millis()
}

/// One test being run: the harness, and the per-event results still to hand out.
struct Run<'a> {
    harness: &'a Harness,
    /// `v1_event_results` of the configured answers, in order; the first is given to the
    /// events as they are captured.
    event_results: VecDeque<VecDeque<String>>,
}

impl Run<'_> {
    fn requests(&self) -> Vec<RecordedRequest> {
        self.harness.mock().requests()
    }

    fn first(&self) -> Result<RecordedRequest, String> {
        self.requests()
            .into_iter()
            .next()
            .ok_or_else(|| "No requests recorded".to_owned())
    }

    fn at_least(&self, n: usize) -> Result<Vec<RecordedRequest>, String> {
        let requests = self.requests();
        if requests.len() < n {
            return fail(format!(
                "Need at least {n} requests, got {}",
                requests.len()
            ));
        }
        Ok(requests)
    }

    fn first_events(&self) -> Result<Vec<Value>, String> {
        match self.requests().first().and_then(events) {
            Some(events) if !events.is_empty() => Ok(events),
            _ => fail("No events found"),
        }
    }

    fn configure(&mut self, responses: &[Value]) {
        for response in responses {
            let headers = response["headers"].as_object().cloned().unwrap_or_default();
            let mut answer = if let Some(results) = response["v1_event_results"].as_array() {
                let results: VecDeque<String> = results
                    .iter()
                    .map(|r| match r {
                        Value::String(s) => s.clone(),
                        other => other["result"].as_str().unwrap_or("ok").to_owned(),
                    })
                    .collect();
                let retry = results.iter().any(|r| r == "retry");
                self.event_results.push_back(results);
                let answer = MockResponse::status(200);
                if retry && !headers.contains_key("Retry-After") {
                    answer.retry_after("1")
                } else {
                    answer
                }
            } else {
                let code = response["status_code"].as_u64().unwrap_or(200) as u16;
                let mut answer = MockResponse::status(code);
                if let Some(body) = response["body"].as_str() {
                    answer = answer
                        .with_raw_body(body.to_owned())
                        .with_header("content-type", "application/json");
                }
                if matches!(code, 408 | 500 | 503 | 504) && !headers.contains_key("Retry-After") {
                    answer = answer.retry_after("1");
                }
                answer
            };
            for (name, value) in &headers {
                answer = answer.with_header(name.as_str(), value.as_str().unwrap_or_default());
            }
            self.harness.mock().enqueue(PATH, answer);
        }
    }

    async fn capture(&mut self, params: &Value) -> Outcome {
        let mut body = json!({
            "distinct_id": params["distinct_id"],
            "event": params["event"],
            "properties": params.get("properties").cloned().unwrap_or(Value::Null),
            "timestamp": params.get("timestamp").cloned().unwrap_or(Value::Null),
        });
        if let Some(options) = params.get("options") {
            body["options"] = options.clone();
        }
        let answer = self
            .harness
            .call(Method::POST, "/capture", Some(&body))
            .await;
        let uuid = answer["uuid"].as_str().ok_or("no uuid from /capture")?;
        if let Some(results) = self.event_results.front_mut() {
            if let Some(result) = results.pop_front() {
                let uuid = uuid.parse().map_err(|_| "invalid uuid from /capture")?;
                self.harness.mock().enqueue_event_result(uuid, &result);
            }
        }
        Ok(())
    }

    async fn step(&mut self, step: &Value) -> Outcome {
        let action = step["action"].as_str().ok_or("a step without action")?;
        let p = step.get("params").cloned().unwrap_or_else(|| json!({}));
        match action {
            "configure_mock_responses" => {
                self.configure(p["responses"].as_array().ok_or("no responses")?);
            }
            "init" => {
                self.harness.init(p).await;
            }
            "capture" => self.capture(&p).await?,
            "capture_multiple" => {
                let count = p["count"].as_u64().ok_or("no count")? as usize;
                for index in 0..count {
                    self.capture(&substitute(&p["params"], index)).await?;
                }
            }
            "flush" => {
                self.harness.call(Method::POST, "/flush", None).await;
            }
            "wait" => {
                let ms = p["duration_ms"].as_u64().ok_or("no duration")?;
                tokio::time::sleep(Duration::from_millis(ms)).await;
            }
            _ => self.assertion(action, &p)?,
        }
        Ok(())
    }

    fn assertion(&self, action: &str, p: &Value) -> Outcome {
        let expected_u = || p["expected"].as_u64().unwrap_or_default() as usize;
        match action {
            "assert_request_count" => {
                let n = self.requests().len();
                if n != expected_u() {
                    return fail(format!("Expected {} requests, got {n}", expected_u()));
                }
            }
            "assert_request_count_gte" => {
                self.at_least(expected_u())?;
            }
            "assert_request_path" => {
                let path = self.first()?.path;
                if path.trim_end_matches('/') != p["expected"].as_str().unwrap_or_default() {
                    return fail(format!("path {path}"));
                }
            }
            "assert_no_requests_to_paths" => {
                for path in p["paths"].as_array().ok_or("no paths")? {
                    let path = path.as_str().unwrap_or_default();
                    if self
                        .requests()
                        .iter()
                        .any(|r| r.path.trim_end_matches('/') == path)
                    {
                        return fail(format!("a request to {path}"));
                    }
                }
            }
            "assert_authorization_bearer_token" => {
                let auth = header(&self.first()?, "authorization")
                    .ok_or("Authorization header is missing")?;
                let token = auth
                    .strip_prefix("Bearer ")
                    .ok_or(format!("not Bearer: {auth}"))?;
                if let Some(expected) = p["expected"].as_str() {
                    if token.trim() != expected {
                        return fail(format!("token {token} != {expected}"));
                    }
                }
            }
            "assert_header_value_matches" => {
                let name = p["header"].as_str().unwrap_or_default();
                let value = header(&self.first()?, name).ok_or(format!("no {name}"))?;
                let pattern = Regex::new(p["pattern"].as_str().unwrap_or_default())
                    .map_err(|e| e.to_string())?;
                if !pattern.is_match(&value) {
                    return fail(format!("{name}: {value:?} does not match"));
                }
            }
            "assert_header_is_integer" => {
                let name = p["header"].as_str().unwrap_or_default();
                let value = header(&self.first()?, name).ok_or(format!("no {name}"))?;
                let n: u64 = value.parse().map_err(|_| format!("{name} {value:?}"))?;
                if p.get("expected").is_some() && n != expected_u() as u64 {
                    return fail(format!("{name} = {n}"));
                }
            }
            "assert_header_is_uuid" => {
                let name = p["header"].as_str().unwrap_or_default();
                let value = header(&self.first()?, name).ok_or(format!("no {name}"))?;
                if !is_uuid(&value) {
                    return fail(format!("{name} {value:?} is no uuid"));
                }
            }
            "assert_header_is_rfc3339" => {
                let name = p["header"].as_str().unwrap_or_default();
                let value = header(&self.first()?, name).ok_or(format!("no {name}"))?;
                if !is_rfc3339(&value) {
                    return fail(format!("{name} {value:?} is not RFC 3339 UTC"));
                }
            }
            "assert_header_absent" => {
                let name = p["header"].as_str().unwrap_or_default();
                if let Some(value) = header(&self.first()?, name) {
                    return fail(format!("{name} should be absent but is {value:?}"));
                }
            }
            "assert_request_has_header" => {
                let name = p["header"].as_str().unwrap_or_default();
                let expected = p["expected"].as_str();
                let found = self
                    .requests()
                    .iter()
                    .any(|r| header(r, name).is_some_and(|v| expected.map_or(true, |e| v == e)));
                if !found {
                    return fail(format!("no request with {name}: {expected:?}"));
                }
            }
            "assert_v1_body_format" => {
                let body = self.first()?.json().ok_or("Body is not valid JSON")?;
                let created_at = body["created_at"].as_str().ok_or("no created_at")?;
                if !is_rfc3339(created_at) {
                    return fail(format!("created_at {created_at}"));
                }
                if !body["batch"].as_array().is_some_and(|b| !b.is_empty()) {
                    return fail("batch must be a non-empty array");
                }
            }
            "assert_v1_created_at_recent" => {
                let body = self.first()?.json().ok_or("Body is not valid JSON")?;
                let created_at: Timestamp = body["created_at"]
                    .as_str()
                    .ok_or("no created_at")?
                    .parse()
                    .map_err(|_| "created_at does not parse")?;
                let created_at = SystemTime::try_from(created_at).map_err(|e| e.to_string())?;
                let age = SystemTime::now()
                    .duration_since(created_at)
                    .unwrap_or_else(|e| e.duration());
                let max = p["max_age_seconds"].as_u64().unwrap_or(5);
                if age > Duration::from_secs(max) {
                    return fail(format!("created_at is {age:?} from now"));
                }
            }
            "assert_body_field_absent" => {
                let Some(body) = self.first()?.json() else {
                    return Ok(());
                };
                for field in p["fields"].as_array().ok_or("no fields")? {
                    let field = field.as_str().unwrap_or_default();
                    if body.get(field).is_some() {
                        return fail(format!("Body should not contain {field}"));
                    }
                }
            }
            "assert_body_field" => {
                let body = self.first()?.json().ok_or("Body is not valid JSON")?;
                let field = p["field"].as_str().unwrap_or_default();
                let value = body.get(field).ok_or(format!("Body missing {field}"))?;
                if p.get("expected").is_some_and(|e| e != value) {
                    return fail(format!("{field} = {value}"));
                }
            }
            "assert_v1_event_format" => {
                for (i, event) in self.first_events()?.iter().enumerate() {
                    for field in ["event", "uuid", "distinct_id", "timestamp"] {
                        if event.get(field).is_none() {
                            return fail(format!("Event {i} missing {field}"));
                        }
                    }
                }
            }
            "assert_uuid_format" | "assert_event_has_field" => {
                let field = p["field"].as_str().unwrap_or_default();
                for event in self.first_events()? {
                    let value = event.get(field).ok_or(format!("no {field}"))?;
                    if action == "assert_uuid_format" && !value.as_str().is_some_and(is_uuid) {
                        return fail(format!("{field} {value} is no uuid"));
                    }
                }
            }
            "assert_event_field_is_rfc3339" => {
                let field = p["field"].as_str().unwrap_or_default();
                let expected = p["expected"].as_str();
                for event in self.first_events()? {
                    let value = event[field].as_str().ok_or(format!("no {field}"))?;
                    if !is_rfc3339(value) {
                        return fail(format!("{field} {value} is not RFC 3339 UTC"));
                    }
                    if let Some(expected) = expected {
                        let (a, b): (Timestamp, Timestamp) = (
                            value.parse().map_err(|_| "unparsable")?,
                            expected.parse().map_err(|_| "unparsable")?,
                        );
                        if a != b {
                            return fail(format!("{field} {value} != {expected}"));
                        }
                    }
                }
            }
            "assert_event_field_is_string" => {
                let field = p["field"].as_str().unwrap_or_default();
                for event in self.first_events()? {
                    if !event[field].is_string() {
                        return fail(format!("{field} is not a string"));
                    }
                }
            }
            "assert_event_field_not_in_properties" => {
                let field = p["field"].as_str().unwrap_or_default();
                for event in self.first_events()? {
                    if event["properties"].get(field).is_some() {
                        return fail(format!("{field} is in properties"));
                    }
                }
            }
            "assert_event_property" => {
                let event = &self.first_events()?[0];
                let name = p["property"].as_str().unwrap_or_default();
                if p.get("expected")
                    .is_some_and(|e| event["properties"][name] != *e)
                {
                    return fail(format!("{name} = {}", event["properties"][name]));
                }
            }
            "assert_event_property_is_object" => {
                let event = &self.first_events()?[0];
                let name = p["property"].as_str().unwrap_or_default();
                if !event["properties"][name].is_object() {
                    return fail(format!("{name} is not an object"));
                }
            }
            "assert_event_option" => {
                let index = p["request_index"].as_i64().unwrap_or(0);
                let requests = self.requests();
                let at = if index < 0 {
                    requests.len() as i64 + index
                } else {
                    index
                };
                let request = requests
                    .get(at as usize)
                    .ok_or("request_index out of range")?;
                let events = events(request).ok_or("No events found")?;
                let options = events
                    .first()
                    .ok_or("No events found")?
                    .get("options")
                    .cloned()
                    .unwrap_or_else(|| json!({}));
                let name = p["option"].as_str().unwrap_or_default();
                if p["absent"] == true {
                    if options.get(name).is_some() {
                        return fail(format!("{name} should be absent: {options}"));
                    }
                } else if options.get(name) != p.get("expected") {
                    return fail(format!("{name}: {options}"));
                }
            }
            "assert_events_in_batch_count" => {
                let index = p["request_index"].as_i64().unwrap_or(0);
                let requests = self.requests();
                let at = if index < 0 {
                    requests.len() as i64 + index
                } else {
                    index
                };
                let request = requests
                    .get(at as usize)
                    .ok_or("request_index out of range")?;
                let n = events(request).map_or(0, |e| e.len());
                if n != expected_u() {
                    return fail(format!("{n} events in the batch, not {}", expected_u()));
                }
            }
            "assert_all_uuids_unique" | "assert_different_uuids" => {
                let uuids: Vec<Value> = self
                    .requests()
                    .iter()
                    .filter_map(events)
                    .flatten()
                    .filter_map(|e| e.get("uuid").cloned())
                    .collect();
                if action == "assert_different_uuids" {
                    if uuids.len() < 2 || uuids[0] == uuids[1] {
                        return fail("Different events should have different UUIDs");
                    }
                } else if uuids
                    .iter()
                    .map(Value::to_string)
                    .collect::<HashSet<_>>()
                    .len()
                    != uuids.len()
                {
                    return fail("UUIDs not unique");
                }
            }
            "assert_no_duplicate_events_in_batch" => {
                for request in self.requests() {
                    let mut seen = HashSet::new();
                    for event in events(&request).unwrap_or_default() {
                        if !seen.insert(event["uuid"].to_string()) {
                            return fail("Duplicate event uuid");
                        }
                    }
                }
            }
            "assert_uuid_preserved_on_retry" | "assert_timestamp_preserved_on_retry" => {
                let field = if action == "assert_uuid_preserved_on_retry" {
                    "uuid"
                } else {
                    "timestamp"
                };
                let requests = self.at_least(2)?;
                let of = |r: &RecordedRequest| -> Vec<Value> {
                    events(r)
                        .unwrap_or_default()
                        .iter()
                        .filter_map(|e| e.get(field).cloned())
                        .collect()
                };
                if of(&requests[0]) != of(&requests[1]) {
                    return fail(format!("{field}s changed on retry"));
                }
            }
            "assert_attempt_header_increments" => {
                for (i, request) in self.at_least(2)?.iter().enumerate() {
                    let value = header(request, "posthog-attempt").ok_or("no PostHog-Attempt")?;
                    if value != (i + 1).to_string() {
                        return fail(format!("request {i} PostHog-Attempt = {value}"));
                    }
                }
            }
            "assert_request_id_preserved_on_retry" => {
                let requests = self.at_least(2)?;
                let first = header(&requests[0], "posthog-request-id").ok_or("no request id")?;
                if requests
                    .iter()
                    .any(|r| header(r, "posthog-request-id").as_ref() != Some(&first))
                {
                    return fail("PostHog-Request-Id changed");
                }
            }
            "assert_different_request_ids" => {
                let requests = self.at_least(2)?;
                let a = header(&requests[0], "posthog-request-id");
                let b = header(&requests[1], "posthog-request-id");
                if a.is_none() || a == b {
                    return fail(format!("request ids {a:?} {b:?}"));
                }
            }
            "assert_request_timestamp_changes_on_retry" => {
                let requests = self.at_least(2)?;
                let a = header(&requests[0], "posthog-request-timestamp");
                let b = header(&requests[1], "posthog-request-timestamp");
                if a.is_none() || b.is_none() || a == b {
                    return fail(format!("request timestamps {a:?} {b:?}"));
                }
            }
            "assert_v1_response_status" => {
                let status = self.first()?.status.as_u16() as usize;
                if status != expected_u() {
                    return fail(format!("status {status}"));
                }
            }
            "assert_v1_response_has_results_map" => {
                let body = response_json(&self.first()?)?;
                let results = body["results"].as_object().ok_or("no results map")?;
                if results.keys().any(|k| !is_uuid(k)) {
                    return fail("results not keyed by uuid");
                }
            }
            "assert_v1_all_events_result" => {
                let body = response_json(&self.first()?)?;
                let expected = p["expected_result"].as_str().unwrap_or_default();
                for (uuid, entry) in body["results"].as_object().ok_or("no results")? {
                    if entry["result"] != expected {
                        return fail(format!("{uuid}: {entry}"));
                    }
                }
            }
            "assert_v1_response_results_count" => {
                let body = response_json(&self.first()?)?;
                let n = body["results"].as_object().map_or(0, |r| r.len());
                if n != expected_u() {
                    return fail(format!("{n} results"));
                }
            }
            "assert_v1_retry_after_absent" | "assert_v1_retry_after_present" => {
                let value = response_header(&self.first()?, "retry-after");
                if (action == "assert_v1_retry_after_absent") != value.is_none() {
                    return fail(format!("Retry-After {value:?}"));
                }
            }
            "assert_v1_response_echoes_request_id" => {
                let first = self.first()?;
                let sent = header(&first, "posthog-request-id");
                if sent.is_none() || sent != response_header(&first, "posthog-request-id") {
                    return fail("request id not echoed");
                }
            }
            "assert_partial_batch_retry_pruning" => {
                let requests = self.at_least(2)?;
                let body = response_json(&requests[0])?;
                let results = body["results"].as_object().ok_or("no results")?;
                let retried: HashSet<String> = events(&requests[1])
                    .unwrap_or_default()
                    .iter()
                    .filter_map(|e| e["uuid"].as_str().map(str::to_owned))
                    .collect();
                for (uuid, entry) in results {
                    let retry = entry["result"] == "retry";
                    if retry != retried.contains(uuid) {
                        return fail(format!("{uuid} ({entry}) retried: {}", !retry));
                    }
                }
            }
            "assert_final_success" => {
                let ok: Vec<u64> = p["success_statuses"]
                    .as_array()
                    .map(|s| s.iter().filter_map(Value::as_u64).collect())
                    .unwrap_or_else(|| vec![200]);
                if !self
                    .requests()
                    .iter()
                    .any(|r| ok.contains(&(r.status.as_u16() as u64)))
                {
                    return fail("No successful request");
                }
            }
            "assert_sdk_did_not_retry" => {
                let n = self.requests().len();
                if n != 1 {
                    return fail(format!("Expected exactly 1 capture request, got {n}"));
                }
            }
            "assert_retry_delay" | "assert_backoff_implemented" => {
                let requests = self.at_least(2)?;
                let delay = millis(requests[1].received_at - requests[0].received_at);
                let min = p["min_delay_ms"]
                    .as_u64()
                    .or(p["min_first_delay_ms"].as_u64())
                    .unwrap_or_default() as u128;
                if delay < min {
                    return fail(format!("Retry delay too short: {delay} ms < {min} ms"));
                }
            }
            "assert_compressed_body_decompressible" => {
                let first = self.first()?;
                if first.content_encoding.is_none() {
                    return fail("No Content-Encoding header found");
                }
                if first.gzip_decode_failed || events(&first).map_or(true, |e| e.is_empty()) {
                    return fail("the body could not be decompressed and parsed");
                }
            }
            other => return fail(format!("unknown action {other}")),
        }
        Ok(())
    }
}

/// Runs the whole contract against an adapter started as `--protocol v1 --compression
/// {compression}`: the names of the tests run and the failures.
async fn run(compression: Compression) -> (Vec<String>, Vec<String>) {
    let harness = Harness::start_with(adapter::Options {
        protocol: CaptureProtocol::V1,
        compression,
    })
    .await;
    let health = harness.call(Method::GET, "/health", None).await;
    let capabilities: Vec<String> = health["capabilities"]
        .as_array()
        .expect("capabilities")
        .iter()
        .filter_map(|c| c.as_str().map(str::to_owned))
        .collect();
    assert!(capabilities.contains(&"capture_v1".to_owned()));
    let mut ran = Vec::new();
    let mut failed = Vec::new();
    for test in contract() {
        if test
            .requires
            .as_ref()
            .is_some_and(|r| !capabilities.contains(r))
        {
            continue;
        }
        harness.reset().await;
        let mut run = Run {
            harness: &harness,
            event_results: VecDeque::new(),
        };
        for (i, step) in test.steps.iter().enumerate() {
            if let Err(e) = run.step(step).await {
                failed.push(format!("{} (step {i}, {}): {e}", test.name, step["action"]));
                break;
            }
        }
        ran.push(test.name);
    }
    harness.reset().await;
    (ran, failed)
}

/// Runs the suite with `compression`, checks every test that ran passed, and returns their
/// names.
async fn passes_with(compression: Compression, encoding_test: &str) -> Vec<String> {
    let (ran, failed) = run(compression).await;
    assert!(failed.is_empty(), "{compression:?}: {failed:#?}");
    assert!(ran.iter().any(|t| t.ends_with(encoding_test)), "{ran:?}");
    // 94 tests need no encoding; gzip's run adds its two, every other one its one.
    let expected = if compression == Compression::Gzip {
        95
    } else {
        94
    };
    assert_eq!(ran.len(), expected, "{compression:?}");
    ran
}

#[tokio::test(start_paused = true)]
async fn capture_v1_gzip() {
    passes_with(Compression::Gzip, "sends_gzip_content_encoding").await;
}

#[tokio::test(start_paused = true)]
async fn capture_v1_deflate() {
    passes_with(Compression::Deflate, "sends_deflate_content_encoding").await;
}

#[tokio::test(start_paused = true)]
async fn capture_v1_br() {
    passes_with(Compression::Brotli, "sends_br_content_encoding").await;
}

#[tokio::test(start_paused = true)]
async fn capture_v1_zstd() {
    passes_with(Compression::Zstd, "sends_zstd_content_encoding").await;
}

#[test]
fn the_four_runs_cover_the_contract() {
    let tests = contract();
    assert_eq!(tests.len(), 98);
    let encodings: HashSet<&str> = tests.iter().filter_map(|t| t.requires.as_deref()).collect();
    let expected: HashSet<&str> = [
        "encoding_gzip",
        "encoding_deflate",
        "encoding_br",
        "encoding_zstd",
    ]
    .into();
    assert_eq!(
        encodings, expected,
        "every test runs in one of the four runs"
    );
}
