//! Internals for the fuzz targets in `fuzz/`. **Not public API**: hidden from the docs, exempt
//! from semver, and free to change in any release.
//!
//! Each item is a thin wrapper over a crate-private function, so the targets exercise the code
//! the client runs, not a copy of it.

use std::time::{Duration, SystemTime};

use http::HeaderValue;
use serde::Serialize;
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::event::{EncodeDefaults, Encoder};
use crate::flags::{eval_context, CompiledFlags};
use crate::flags::{FlagEvaluations, FlagValue, FlagsRequest, FlagsResponse};
use crate::{CaptureError, Event, Timestamp};

/// `Retry-After` parsing, as the HTTP client applies it (relative to `now`).
pub fn parse_retry_after(value: &HeaderValue, now: SystemTime) -> Option<Duration> {
    crate::net::parse_retry_after(value, now)
}

/// Reads an LLM request, answer or stream chunk with `AiLayer`'s scanner and with serde's
/// derive: panics where they disagree.
pub fn llm_scan_differential(doc: &[u8]) {
    crate::integrations::llm::differential_check(doc);
}

/// The checks `capture` makes before queueing an event, with `max_size` the limit for
/// [`Event::estimated_size`].
pub fn validate(event: &Event, max_size: usize) -> Result<(), CaptureError> {
    crate::event::validate(event, max_size, crate::event::MAX_EVENT_BYTES)
}

/// The properties' serialized size as the event's setters tracked it.
pub fn tracked_properties_len(event: &Event) -> usize {
    event.tracked_properties_len()
}

/// Cuts an event down to the properties a minimal `$feature_flag_called` event keeps.
pub fn strip_to_minimal(event: &mut Event) {
    event.inner.minimal = true;
    event.strip_to_minimal();
}

/// A `$set` (or `$set_once`) event as `PostHog::set` builds it.
pub fn person_update(set_once: bool, distinct_id: String, properties: &impl Serialize) -> Event {
    Event::person_update(set_once, distinct_id, properties)
}

/// A `$groupidentify` event as `PostHog::group_identify` builds it.
pub fn group_identify(
    group_type: String,
    group_key: String,
    properties: &impl Serialize,
    distinct_id: Option<String>,
) -> Event {
    Event::group_identify(group_type, group_key, properties, distinct_id)
}

/// A `$create_alias` event as `PostHog::alias` builds it.
pub fn alias(previous_id: String, distinct_id: String) -> Event {
    Event::alias(previous_id, distinct_id)
}

/// The batch worker's event encoder.
#[derive(Debug, Clone)]
pub struct EventEncoder(Encoder);

impl EventEncoder {
    /// An encoder adding `$lib`, optionally `$geoip_disable`, and the super properties.
    pub fn new(disable_geoip: bool, super_properties: Map<String, Value>) -> Self {
        EventEncoder(Encoder::new(EncodeDefaults {
            disable_geoip,
            super_properties,
            ..Default::default()
        }))
    }

    /// Bytes the library and super properties add to an event, at most.
    pub fn added_len(&self) -> usize {
        self.0.added_len()
    }

    /// Appends `event` as one JSON object to `out`.
    pub fn encode(&self, out: &mut Vec<u8>, event: &Event, uuid: Uuid, timestamp: Timestamp) {
        self.0.encode(out, event, uuid, timestamp);
    }
}

/// The snapshot the client builds from a `/flags` response.
pub fn flag_evaluations(request: &FlagsRequest, response: &FlagsResponse) -> FlagEvaluations {
    FlagEvaluations::from_response(request, response, None)
}

/// Compiled `/flags/definitions`, evaluated as the client does (value and payload).
#[derive(Debug)]
pub struct Definitions(CompiledFlags);

impl Definitions {
    /// Parses and compiles a definitions body; the error is the poller's message.
    pub fn from_json(body: &[u8]) -> Result<Self, String> {
        CompiledFlags::from_json(body)
            .map(Definitions)
            .map_err(|e| e.to_string())
    }

    /// The flag keys, in definition order.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.0.keys()
    }

    /// Whether the definitions ask for minimal `$feature_flag_called` events.
    pub fn minimal_flag_called_events(&self) -> bool {
        self.0.minimal_flag_called_events()
    }

    /// Evaluates `key` for `request`: the value and its payload text, or why local evaluation
    /// is inconclusive.
    pub fn evaluate(
        &self,
        key: &str,
        request: &FlagsRequest,
    ) -> Result<(FlagValue, Option<&str>), &'static str> {
        let ctx = eval_context(request);
        self.0
            .evaluate(key, &ctx)
            .map(|m| (m.value, m.payload))
            .map_err(|e| e.0)
    }
}
