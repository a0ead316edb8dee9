//! The `$feature_flag_called` event.

use std::collections::BTreeMap;

use serde_json::Value;

use super::{FeatureFlagResult, FlagError, FlagRecord, FlagValue, FlagsRequest};
use crate::Event;

/// What a flag access reports: everything `$feature_flag_called` carries. The flags module
/// builds it; the client deduplicates it and turns it into an event.
#[derive(Clone, Debug, Default)]
pub(crate) struct FlagCalled {
    pub(crate) distinct_id: String,
    pub(crate) key: String,
    pub(crate) response: Option<FlagValue>,
    pub(crate) payload: Option<Value>,
    pub(crate) locally_evaluated: bool,
    pub(crate) request_id: Option<String>,
    pub(crate) evaluated_at: Option<i64>,
    pub(crate) reason: Option<String>,
    pub(crate) id: Option<i64>,
    pub(crate) version: Option<i64>,
    pub(crate) error: Option<String>,
    pub(crate) has_experiment: Option<bool>,
    /// The server asked for minimal events (`minimalFlagCalledEvents`), pinned to the
    /// evaluation that produced the value.
    pub(crate) minimal_gate: bool,
    pub(crate) groups: BTreeMap<String, String>,
    pub(crate) disable_geoip: Option<bool>,
}

/// Where flag accesses are reported (the client: dedup, then capture).
pub(crate) trait ReportFlagCalled: Send + Sync {
    /// Records the combination; `true` when it was not reported before, so the caller builds
    /// the event only then.
    fn first_time(
        &self,
        distinct_id: &str,
        key: &str,
        value: Option<&FlagValue>,
        groups: &BTreeMap<String, String>,
    ) -> bool;

    /// Sends the event (already deduplicated).
    fn report(&self, called: FlagCalled);
}

/// What a read from an evaluation knows besides the flag's record: who, and what the
/// evaluation said about itself.
pub(crate) struct ReadContext<'a> {
    pub(crate) distinct_id: &'a str,
    pub(crate) groups: &'a BTreeMap<String, String>,
    pub(crate) disable_geoip: Option<bool>,
    pub(crate) request_id: Option<&'a str>,
    pub(crate) evaluated_at: Option<i64>,
    pub(crate) errors_while_computing: bool,
    pub(crate) quota_limited: bool,
    /// The minimal-events setting of the evaluation that produced the values.
    pub(crate) minimal_gate: bool,
}

/// Every `$feature_flag_called` is assembled here, from one of three situations.
impl FlagCalled {
    /// A read of `key` from an evaluation (local or `/flags`), whose `record` is `None` when
    /// the evaluation does not have the flag.
    pub(crate) fn read(ctx: ReadContext<'_>, key: &str, record: Option<&FlagRecord>) -> Self {
        let error = join_errors(&[
            if ctx.errors_while_computing {
                "errors_while_computing_flags"
            } else {
                ""
            },
            if ctx.quota_limited {
                "quota_limited"
            } else {
                ""
            },
            if record.is_none() { "flag_missing" } else { "" },
        ]);
        FlagCalled {
            distinct_id: ctx.distinct_id.to_owned(),
            key: key.to_owned(),
            response: record.map(|r| r.value.clone()),
            payload: record.and_then(|r| r.payload.clone()),
            locally_evaluated: record.is_some_and(|r| r.locally_evaluated),
            request_id: ctx.request_id.map(str::to_owned),
            evaluated_at: ctx.evaluated_at,
            reason: record.and_then(|r| r.reason.clone()),
            id: record.and_then(|r| r.id),
            version: record.and_then(|r| r.version),
            error,
            has_experiment: record.and_then(|r| r.has_experiment),
            minimal_gate: ctx.minimal_gate,
            groups: ctx.groups.clone(),
            disable_geoip: ctx.disable_geoip,
        }
    }

    /// A single-flag read that only local evaluation could answer, and could not: no value
    /// and no error code, as posthog-python reports it.
    pub(crate) fn undecided(request: &FlagsRequest, key: &str) -> Self {
        FlagCalled {
            distinct_id: request.distinct_id.clone(),
            key: key.to_owned(),
            groups: request.groups.clone(),
            disable_geoip: request.disable_geoip,
            ..FlagCalled::default()
        }
    }

    /// A single-flag read whose `/flags` request failed with `error`, answered with the
    /// fallback cache's `stale` value if there is one.
    pub(crate) fn failed(
        request: &FlagsRequest,
        key: &str,
        error: &FlagError,
        stale: Option<&FeatureFlagResult>,
    ) -> Self {
        FlagCalled {
            error: Some(error.code()),
            response: stale.map(|r| r.record.value.clone()),
            payload: stale.and_then(|r| r.record.payload.clone()),
            reason: stale.and_then(|r| r.record.reason.clone()),
            id: stale.and_then(|r| r.record.id),
            version: stale.and_then(|r| r.record.version),
            ..FlagCalled::undecided(request, key)
        }
    }

    /// The event, with the properties posthog-python sends.
    pub(crate) fn into_event(self) -> Event {
        let response = self
            .response
            .as_ref()
            .map_or(Value::Null, FlagValue::to_json);
        let mut event = Event::new("$feature_flag_called", self.distinct_id);
        event.insert_value("$feature_flag", Value::String(self.key.clone()));
        event.insert_value("$feature_flag_response", response.clone());
        event.insert_value("locally_evaluated", Value::Bool(self.locally_evaluated));
        event.insert_value(format!("$feature/{}", self.key), response);
        if let Some(payload) = self.payload.filter(|p| !p.is_null()) {
            event.insert_value("$feature_flag_payload", payload);
        }
        if let Some(id) = self.request_id.filter(|r| !r.is_empty()) {
            event.insert_value("$feature_flag_request_id", Value::String(id));
        }
        if let Some(at) = self.evaluated_at.filter(|_| !self.locally_evaluated) {
            event.insert_value("$feature_flag_evaluated_at", Value::from(at));
        }
        if let Some(reason) = self.reason.filter(|r| !r.is_empty()) {
            event.insert_value("$feature_flag_reason", Value::String(reason));
        }
        if let Some(id) = self.id.filter(|id| *id != 0) {
            event.insert_value("$feature_flag_id", Value::from(id));
        }
        if let Some(version) = self.version.filter(|v| *v != 0) {
            event.insert_value("$feature_flag_version", Value::from(version));
        }
        if let Some(error) = self.error {
            event.insert_value("$feature_flag_error", Value::String(error));
        }
        if let Some(has_experiment) = self.has_experiment {
            event.insert_value("$feature_flag_has_experiment", Value::Bool(has_experiment));
        }
        for (group_type, group_key) in self.groups {
            event = event.group(group_type, group_key);
        }
        event.inner.disable_geoip = self.disable_geoip;
        // Minimized only when the server asked and the flag is known not to be in an
        // experiment.
        event.inner.minimal = self.minimal_gate && self.has_experiment == Some(false);
        event
    }
}

/// Joins `$feature_flag_error` codes in PostHog's order.
pub(crate) fn join_errors(codes: &[&str]) -> Option<String> {
    let codes: Vec<&str> = codes.iter().copied().filter(|c| !c.is_empty()).collect();
    (!codes.is_empty()).then(|| codes.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn remote_event_properties() {
        let event = FlagCalled {
            distinct_id: "u".into(),
            key: "flags-flag".into(),
            response: Some(FlagValue::Variant("flags-variant".into())),
            reason: Some("Matched condition set 1".into()),
            id: Some(23),
            version: Some(42),
            request_id: Some("18043bf7".into()),
            evaluated_at: Some(1234567890),
            payload: Some(json!(300)),
            ..FlagCalled::default()
        }
        .into_event();
        let p = event.properties().to_map();
        assert_eq!(event.name(), "$feature_flag_called");
        assert_eq!(p["$feature_flag"], "flags-flag");
        assert_eq!(p["$feature_flag_response"], "flags-variant");
        assert_eq!(p["$feature/flags-flag"], "flags-variant");
        assert_eq!(p["locally_evaluated"], false);
        assert_eq!(p["$feature_flag_reason"], "Matched condition set 1");
        assert_eq!(p["$feature_flag_id"], 23);
        assert_eq!(p["$feature_flag_version"], 42);
        assert_eq!(p["$feature_flag_request_id"], "18043bf7");
        assert_eq!(p["$feature_flag_evaluated_at"], 1234567890);
        assert_eq!(p["$feature_flag_payload"], 300);
        assert!(p.get("$feature_flag_error").is_none());
        assert!(!event.inner.minimal);
    }

    #[test]
    fn missing_flag_and_minimization() {
        let event = FlagCalled {
            distinct_id: "u".into(),
            key: "nope".into(),
            error: join_errors(&["errors_while_computing_flags", "flag_missing"]),
            groups: BTreeMap::from([("company".to_owned(), "acme".to_owned())]),
            minimal_gate: true,
            has_experiment: Some(false),
            ..FlagCalled::default()
        }
        .into_event();
        let p = event.properties().to_map();
        assert_eq!(p["$feature_flag_response"], Value::Null);
        assert_eq!(
            p["$feature_flag_error"],
            "errors_while_computing_flags,flag_missing"
        );
        assert_eq!(p["$groups"], json!({"company": "acme"}));
        assert!(event.inner.minimal);
        let gated_unknown = FlagCalled {
            minimal_gate: true,
            has_experiment: None,
            ..FlagCalled::default()
        }
        .into_event();
        assert!(!gated_unknown.inner.minimal);
    }
}
