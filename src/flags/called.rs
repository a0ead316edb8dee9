//! The flag events of a read: `$feature_flag_called` and `$experiment_exposure`.

use std::{
    collections::BTreeMap,
    hash::{Hash, Hasher},
    sync::Arc,
};

use serde_json::Value;

use super::{FeatureFlagResult, FlagError, FlagRecord, FlagValue, FlagsRequest};
use crate::{event::Pinned, Event};

/// What a config version 2 record (`/flags?v=4`) reports about the rule behind its result,
/// read as posthog-python 7.91.1 reads it. `S` is `&str` for dedup checks on a borrowed
/// record, `String` inside an event.
///
/// The reason code is always reported. The rule id and type only come together, for a
/// reason code that names a rule (see [`rule_types`]) with a rule type that code allows and
/// a rule id that is a UUID, and never for a failed record. The variant key only comes with
/// a complete experiment split (reason `experiment_split`, rule type `experiment`, a rule
/// id and a variant key), the one outcome that sends `$experiment_exposure`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub(crate) struct Attribution<S> {
    pub(crate) reason_code: Option<S>,
    pub(crate) rule_id: Option<S>,
    pub(crate) rule_type: Option<S>,
    pub(crate) variant_key: Option<S>,
}

/// The rule types a reason code may report, or `None` for a code that reports no rule
/// (unknown codes included).
fn rule_types(reason_code: &str) -> Option<&'static [&'static str]> {
    Some(match reason_code {
        "targeting_match" => &["targeted_release", "percentage_rollout"],
        "experiment_split" => &["experiment"],
        "rollout_miss" => &["percentage_rollout", "experiment"],
        "experiment_paused" | "holdout" => &["experiment"],
        _ => return None,
    })
}

/// A hyphenated UUID (8-4-4-4-12 hex digits, either case).
fn is_uuid(text: &str) -> bool {
    let bytes = text.as_bytes();
    bytes.len() == 36
        && bytes.iter().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => *b == b'-',
            _ => b.is_ascii_hexdigit(),
        })
}

impl<'a> Attribution<&'a str> {
    /// The attribution of a record, or `None` when it has none: evaluated locally (local
    /// definitions name no rule), from a server before `/flags?v=4`, or config version 1.
    pub(crate) fn of(record: &'a FlagRecord) -> Option<Self> {
        if record.config_version != Some(2) || record.locally_evaluated {
            return None;
        }
        let reason_code = record.reason_code.as_deref().filter(|c| !c.is_empty());
        let only_reason = Attribution {
            reason_code,
            ..Attribution::default()
        };
        let Some(allowed) = reason_code.and_then(rule_types) else {
            return Some(only_reason);
        };
        let (Some(rule_id), Some(rule_type)) =
            (record.rule_id.as_deref(), record.rule_type.as_deref())
        else {
            return Some(only_reason);
        };
        if record.failed || !is_uuid(rule_id) || !allowed.contains(&rule_type) {
            return Some(only_reason);
        }
        let rule = Attribution {
            rule_id: Some(rule_id),
            rule_type: Some(rule_type),
            ..only_reason
        };
        if reason_code != Some("experiment_split") {
            return Some(rule);
        }
        match record.variant_key.as_deref() {
            // A split without a variant is malformed: it reports no rule.
            None => Some(only_reason),
            variant_key => Some(Attribution {
                variant_key,
                ..rule
            }),
        }
    }

    pub(crate) fn to_owned(&self) -> Attribution<String> {
        Attribution {
            reason_code: self.reason_code.map(str::to_owned),
            rule_id: self.rule_id.map(str::to_owned),
            rule_type: self.rule_type.map(str::to_owned),
            variant_key: self.variant_key.map(str::to_owned),
        }
    }
}

/// A record's attribution, worked out once when the record is read from `/flags`, with the
/// fingerprints its two dedups use (so a repeated read hashes eight bytes, not the strings).
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct ReadAttribution {
    pub(crate) attribution: Attribution<String>,
    /// Fingerprint of the whole attribution (part of the `$feature_flag_called` dedup key).
    pub(crate) called_key: u64,
    /// Fingerprint of the rule id and variant key, for an experiment split (the
    /// `$experiment_exposure` dedup key with the flag key and groups).
    pub(crate) exposure_key: Option<u64>,
}

impl ReadAttribution {
    /// The attribution of `record` (see [`Attribution::of`]).
    pub(crate) fn of(record: &FlagRecord) -> Option<Arc<Self>> {
        let attribution = Attribution::of(record)?;
        // A fixed-key hasher: these fingerprints are hashed again, with each dedup's random
        // keys, so they need only be well spread.
        let mut h = std::hash::DefaultHasher::new();
        attribution.hash(&mut h);
        let called_key = h.finish();
        let exposure_key = attribution.exposure().map(|exposure| {
            let mut h = std::hash::DefaultHasher::new();
            exposure.hash(&mut h);
            h.finish()
        });
        Some(Arc::new(ReadAttribution {
            attribution: attribution.to_owned(),
            called_key,
            exposure_key,
        }))
    }
}

impl<S: AsRef<str>> Attribution<S> {
    /// The rule id and variant of an experiment split: what `$experiment_exposure` reports
    /// and is deduplicated on.
    pub(crate) fn exposure(&self) -> Option<(&str, &str)> {
        Some((
            self.rule_id.as_ref()?.as_ref(),
            self.variant_key.as_ref()?.as_ref(),
        ))
    }

    fn as_str(&self) -> Attribution<&str> {
        Attribution {
            reason_code: self.reason_code.as_ref().map(AsRef::as_ref),
            rule_id: self.rule_id.as_ref().map(AsRef::as_ref),
            rule_type: self.rule_type.as_ref().map(AsRef::as_ref),
            variant_key: self.variant_key.as_ref().map(AsRef::as_ref),
        }
    }
}

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
    /// The rule attribution of a config version 2 record (`/flags?v=4`).
    pub(crate) attribution: Option<Arc<ReadAttribution>>,
}

/// Where flag accesses are reported (the client: dedup, then capture).
pub(crate) trait ReportFlagCalled: Send + Sync {
    /// Records the `$feature_flag_called` combination; `true` when it was not reported
    /// before, so the caller builds the event only then. A read with rule attribution is
    /// its own combination (so successive experiments of one flag are each reported).
    fn first_time(
        &self,
        distinct_id: &str,
        key: &str,
        value: Option<&FlagValue>,
        groups: &BTreeMap<String, String>,
        attribution: Option<&ReadAttribution>,
    ) -> bool;

    /// Records the `$experiment_exposure` combination (distinct id, flag, groups, and the
    /// rule and variant `exposure_key` stands for) in its own dedup; `true` when it is new.
    fn first_exposure(
        &self,
        distinct_id: &str,
        key: &str,
        groups: &BTreeMap<String, String>,
        exposure_key: u64,
    ) -> bool;

    /// Sends a flag event (already deduplicated): `false` when it could not be queued (a
    /// full or closed queue, a disabled client). An event `before_send` drops counts as sent.
    fn report(&self, event: Event) -> bool;

    /// Forgets a `$feature_flag_called` combination with attribution whose event could not
    /// be queued, so a later read tries again (combinations without attribution are kept, as
    /// posthog-python keeps them).
    fn forget(
        &self,
        distinct_id: &str,
        key: &str,
        value: Option<&FlagValue>,
        groups: &BTreeMap<String, String>,
        attribution: &ReadAttribution,
    ) {
        let _ = (distinct_id, key, value, groups, attribution);
    }

    /// Forgets an `$experiment_exposure` combination whose event could not be queued.
    fn forget_exposure(
        &self,
        distinct_id: &str,
        key: &str,
        groups: &BTreeMap<String, String>,
        exposure_key: u64,
    ) {
        let _ = (distinct_id, key, groups, exposure_key);
    }
}

/// Reports one read: `$feature_flag_called` unless this combination was reported, then
/// `$experiment_exposure` for an experiment split unless this assignment was. `build`
/// makes the read's [`FlagCalled`], only when an event is sent.
pub(crate) fn report_read(
    reporter: &dyn ReportFlagCalled,
    distinct_id: &str,
    key: &str,
    value: Option<&FlagValue>,
    groups: &BTreeMap<String, String>,
    attribution: Option<&ReadAttribution>,
    build: impl FnOnce() -> FlagCalled,
) {
    diag!(key, value = ?value, distinct_id, "posthog: flag read");
    let called = reporter.first_time(distinct_id, key, value, groups, attribution);
    let exposed = attribution
        .and_then(|a| a.exposure_key)
        .is_some_and(|exposure| reporter.first_exposure(distinct_id, key, groups, exposure));
    if !called && !exposed {
        return;
    }
    let read = build();
    let exposure = exposed.then(|| read.exposure_event()).flatten();
    // Each event is attempted on its own; one that could not be queued gives its
    // combination back (for attributed reads), so a later read sends it.
    if called && !reporter.report(read.into_event_after(exposure.as_ref())) {
        if let Some(attribution) = attribution {
            reporter.forget(distinct_id, key, value, groups, attribution);
        }
    }
    if let Some(exposure) = exposure {
        if !reporter.report(exposure) {
            if let Some(exposure_key) = attribution.and_then(|a| a.exposure_key) {
                reporter.forget_exposure(distinct_id, key, groups, exposure_key);
            }
        }
    }
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
    /// A single-flag lookup, which reads an empty variant as `true` (a snapshot reads it as
    /// the empty variant), as posthog-python does.
    pub(crate) single: bool,
}

/// Bytes of properties reserved for a flag event at once (a `$feature_flag_called` with
/// attribution takes about 500), so that building it never grows the buffer.
const FLAG_EVENT_BYTES: usize = 640;

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
            if record.is_some_and(|r| r.failed) {
                "evaluation_failed"
            } else {
                ""
            },
            if record.is_none() { "flag_missing" } else { "" },
        ]);
        // A failed flag has no value.
        let response = match record {
            Some(r) if r.failed => None,
            Some(r) if ctx.single => Some(r.single_value()),
            r => r.map(|r| r.value.clone()),
        };
        FlagCalled {
            distinct_id: ctx.distinct_id.to_owned(),
            key: key.to_owned(),
            response,
            payload: record.and_then(|r| r.payload.clone()),
            locally_evaluated: record.is_some_and(|r| r.locally_evaluated),
            request_id: ctx.request_id.map(str::to_owned),
            evaluated_at: ctx.evaluated_at,
            // A read with attribution reports the reason code instead.
            reason: record
                .filter(|r| r.attribution.is_none())
                .and_then(|r| r.reason.clone()),
            id: record.and_then(|r| r.id),
            version: record.and_then(|r| r.version),
            error,
            has_experiment: record.and_then(|r| r.has_experiment),
            minimal_gate: ctx.minimal_gate,
            groups: ctx.groups.clone(),
            disable_geoip: ctx.disable_geoip,
            attribution: record.and_then(|r| r.attribution.clone()),
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
            // A stale value reports no rule: the rule was the old evaluation's.
            attribution: None,
            ..FlagCalled::undecided(request, key)
        }
    }

    /// The `$experiment_exposure` of this read, for an experiment split (`None` otherwise):
    /// the flag, value and evaluation source, the rule and variant, and the flag's id,
    /// version, request id and evaluation time when `$feature_flag_called` has them.
    pub(crate) fn exposure_event(&self) -> Option<Event> {
        let (rule_id, variant_key) = self.attribution.as_ref()?.attribution.exposure()?;
        let mut event = Event::new("$experiment_exposure", &self.distinct_id);
        // Its properties, and room for those `$feature_flag_called` adds to a copy of them.
        event.inner.properties.reserve(FLAG_EVENT_BYTES);
        event.insert_new("$feature_flag", self.key.as_str());
        event.insert_new("$feature_flag_response", &self.response);
        event.insert_new("locally_evaluated", &self.locally_evaluated);
        event.insert_new("$feature_flag_variant_key", variant_key);
        event.insert_new("$feature_flag_rule_id", rule_id);
        if let Some(id) = self.id.filter(|id| *id != 0) {
            event.insert_new("$feature_flag_id", &id);
        }
        if let Some(version) = self.version.filter(|v| *v != 0) {
            event.insert_new("$feature_flag_version", &version);
        }
        if let Some(id) = self.request_id.as_deref().filter(|r| !r.is_empty()) {
            event.insert_new("$feature_flag_request_id", id);
        }
        if let Some(at) = self
            .evaluated_at
            .filter(|at| !self.locally_evaluated && *at != 0)
        {
            event.insert_new("$feature_flag_evaluated_at", &at);
        }
        for (group_type, group_key) in &self.groups {
            event = event.group(group_type, group_key);
        }
        event.inner.disable_geoip = self.disable_geoip;
        event.inner.pinned = Pinned::Exposure;
        Some(event)
    }

    /// The event, with the properties posthog-python sends.
    #[cfg(test)]
    pub(crate) fn into_event(self) -> Event {
        self.into_event_after(None)
    }

    /// The event, with the properties posthog-python sends, starting from the properties of this read's
    /// `$experiment_exposure` when there is one: they are a subset of this event's (the flag,
    /// response, evaluation source, rule id, variant key, id, version, request id, evaluation
    /// time and groups, with the same values), so they are copied as JSON instead of
    /// serialized a second time.
    pub(crate) fn into_event_after(self, exposure: Option<&Event>) -> Event {
        let mut event = Event::new("$feature_flag_called", &self.distinct_id);
        let shared = match exposure {
            Some(exposure) => {
                event.inner.properties =
                    exposure.inner.properties.clone_with_room(FLAG_EVENT_BYTES);
                true
            }
            None => {
                event.inner.properties.reserve(FLAG_EVENT_BYTES);
                false
            }
        };
        if !shared {
            event.insert_new("$feature_flag", self.key.as_str());
            event.insert_new("$feature_flag_response", &self.response);
            event.insert_new("locally_evaluated", &self.locally_evaluated);
        }
        event.insert_plain(&format!("$feature/{}", self.key), &self.response);
        if let Some(payload) = self.payload.filter(|p| !p.is_null()) {
            event.insert_value("$feature_flag_payload", payload);
        }
        if !shared {
            if let Some(id) = self.request_id.as_deref().filter(|r| !r.is_empty()) {
                event.insert_new("$feature_flag_request_id", id);
            }
            if let Some(at) = self
                .evaluated_at
                .filter(|at| !self.locally_evaluated && *at != 0)
            {
                event.insert_new("$feature_flag_evaluated_at", &at);
            }
        }
        match &self.attribution {
            // The reason code replaces the human-readable reason.
            Some(attribution) => {
                let a = attribution.attribution.as_str();
                event.insert_new("$feature_flag_config_version", &2);
                let mut named = [
                    ("$feature_flag_reason_code", a.reason_code),
                    ("$feature_flag_rule_id", a.rule_id),
                    ("$feature_flag_rule_type", a.rule_type),
                    ("$feature_flag_variant_key", a.variant_key),
                ];
                if shared {
                    // The exposure has the rule id and the variant key.
                    named[1].1 = None;
                    named[3].1 = None;
                }
                for (name, value) in named {
                    if let Some(value) = value {
                        event.insert_new(name, value);
                    }
                }
                event.inner.pinned = Pinned::FlagCalledV2;
            }
            None => {
                if let Some(reason) = self.reason.filter(|r| !r.is_empty()) {
                    event.insert_new("$feature_flag_reason", &reason);
                }
            }
        }
        if !shared {
            if let Some(id) = self.id.filter(|id| *id != 0) {
                event.insert_new("$feature_flag_id", &id);
            }
            if let Some(version) = self.version.filter(|v| *v != 0) {
                event.insert_new("$feature_flag_version", &version);
            }
        }
        if let Some(error) = self.error {
            event.insert_new("$feature_flag_error", &error);
        }
        if let Some(has_experiment) = self.has_experiment {
            event.insert_new("$feature_flag_has_experiment", &has_experiment);
        }
        if !shared {
            for (group_type, group_key) in self.groups {
                event = event.group(group_type, group_key);
            }
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

    fn v4(code: &str, rule_id: &str, rule_type: &str, variant: Option<&str>) -> FlagRecord {
        FlagRecord {
            config_version: Some(2),
            reason_code: Some(code.into()),
            rule_id: Some(rule_id.into()),
            rule_type: Some(rule_type.into()),
            variant_key: variant.map(Into::into),
            ..FlagRecord::new(FlagValue::Bool(true), false)
        }
    }

    #[test]
    fn attribution_follows_the_reason_code() {
        let uuid = "0F8E6A52-5b8e-4f4c-9a39-5d3c2c8f6b21";
        let rule = |code, rule_type| {
            Attribution::of(&v4(code, uuid, rule_type, Some("v"))).map(|a| a.to_owned())
        };
        let full = rule("experiment_split", "experiment").unwrap();
        assert_eq!(full.exposure(), Some((uuid, "v")));
        let paused = rule("experiment_paused", "experiment").unwrap();
        assert_eq!(paused.rule_id.as_deref(), Some(uuid));
        assert_eq!(paused.variant_key, None, "only a split reports its variant");
        let wrong = rule("holdout", "targeted_release").unwrap();
        assert_eq!(wrong.reason_code.as_deref(), Some("holdout"));
        assert_eq!(wrong.rule_id, None);
        assert_eq!(rule("", "experiment").unwrap(), Attribution::default());
        let not_uuid = v4(
            "targeting_match",
            "0f8e6a52-5b8e-4f4c-9a39-5d3c2c8f6b2",
            "targeted_release",
            None,
        );
        assert_eq!(Attribution::of(&not_uuid).unwrap().rule_id, None);
        let mut failed = v4("experiment_split", uuid, "experiment", Some("v"));
        failed.failed = true;
        assert_eq!(Attribution::of(&failed).unwrap().rule_id, None);
        let mut v1 = v4("experiment_split", uuid, "experiment", Some("v"));
        v1.config_version = Some(1);
        assert!(Attribution::of(&v1).is_none());
        let mut local = v4("experiment_split", uuid, "experiment", Some("v"));
        local.locally_evaluated = true;
        assert!(
            Attribution::of(&local).is_none(),
            "local definitions name no rule"
        );
    }

    /// Real dedups, and a queue that refuses the first `refuse` events.
    struct Flaky {
        called: super::super::FlagCalledDedup,
        exposures: super::super::FlagCalledDedup,
        refuse: std::sync::atomic::AtomicUsize,
        sent: std::sync::Mutex<Vec<String>>,
    }

    impl ReportFlagCalled for Flaky {
        fn first_time(
            &self,
            distinct_id: &str,
            key: &str,
            value: Option<&FlagValue>,
            groups: &BTreeMap<String, String>,
            attribution: Option<&ReadAttribution>,
        ) -> bool {
            self.called
                .first_time(distinct_id, key, value, groups, attribution)
        }

        fn first_exposure(
            &self,
            distinct_id: &str,
            key: &str,
            groups: &BTreeMap<String, String>,
            exposure_key: u64,
        ) -> bool {
            self.exposures
                .first_exposure(distinct_id, key, groups, exposure_key)
        }

        fn report(&self, event: Event) -> bool {
            use std::sync::atomic::Ordering;
            let refused = self
                .refuse
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok();
            if !refused {
                self.sent.lock().unwrap().push(event.name().to_owned());
            }
            !refused
        }

        fn forget(
            &self,
            distinct_id: &str,
            key: &str,
            value: Option<&FlagValue>,
            groups: &BTreeMap<String, String>,
            attribution: &ReadAttribution,
        ) {
            self.called
                .forget(distinct_id, key, value, groups, Some(attribution));
        }

        fn forget_exposure(
            &self,
            distinct_id: &str,
            key: &str,
            groups: &BTreeMap<String, String>,
            exposure_key: u64,
        ) {
            self.exposures
                .forget_exposure(distinct_id, key, groups, exposure_key);
        }
    }

    #[test]
    fn events_that_could_not_be_queued_are_sent_by_a_later_read() {
        let uuid = "0f8e6a52-5b8e-4f4c-9a39-5d3c2c8f6b21";
        let split = v4("experiment_split", uuid, "experiment", Some("v")).with_attribution();
        let plain = FlagRecord::new(FlagValue::Bool(true), false);
        let reporter = Flaky {
            called: super::super::FlagCalledDedup::new(10),
            exposures: super::super::FlagCalledDedup::new(10),
            refuse: 3.into(),
            sent: Default::default(),
        };
        let groups = BTreeMap::new();
        let read = |record: &FlagRecord| {
            report_read(
                &reporter,
                "u",
                "k",
                Some(&record.value),
                &groups,
                record.attribution.as_deref(),
                || FlagCalled {
                    distinct_id: "u".into(),
                    key: "k".into(),
                    response: Some(record.value.clone()),
                    attribution: record.attribution.clone(),
                    ..FlagCalled::default()
                },
            )
        };
        // Both events of the split are refused, then the plain flag's.
        read(&split);
        read(&plain);
        assert!(reporter.sent.lock().unwrap().is_empty());
        read(&split);
        read(&plain);
        read(&split);
        // The split's two events are sent on the next read and never again; the plain
        // flag's combination was kept, as posthog-python keeps it.
        assert_eq!(
            *reporter.sent.lock().unwrap(),
            ["$feature_flag_called", "$experiment_exposure"]
        );
    }
}
