//! `FlagEvaluations`: every flag for one person from one evaluation, read without further
//! requests.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    sync::{Arc, Mutex},
};

use serde_json::Value;

use super::{
    called::{report_read, FlagCalled, ReadAttribution, ReadContext, ReportFlagCalled},
    FlagError, FlagValue, FlagsResponse,
};
use crate::Event;

/// One flag of a [`FlagEvaluations`] snapshot.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct FlagRecord {
    /// The value.
    pub value: FlagValue,
    /// The decoded payload, if the flag has one for this value.
    pub payload: Option<Value>,
    /// Why it has this value (`Evaluated locally` for local answers).
    pub reason: Option<String>,
    /// The flag's id.
    pub id: Option<i64>,
    /// The flag's version.
    pub version: Option<i64>,
    /// Evaluated in-process from polled definitions.
    pub locally_evaluated: bool,
    /// Whether the flag belongs to an experiment, when known.
    pub has_experiment: Option<bool>,
    /// PostHog could not evaluate the flag (its record says `failed`): it has no value (a
    /// record that could not be read is not failed; it reads as off). A snapshot reads it as
    /// absent ([`FlagEvaluations::get_flag`] is `None`); a single-flag lookup answers
    /// [`FlagError::EvaluationFailed`]. A snapshot reads it as absent ([`FlagEvaluations::get_flag`] is `None`); a
    /// single-flag lookup reads it as off.
    pub failed: bool,
    /// The flag's configuration format (`/flags?v=4`): `2` when its records name the rule
    /// that produced the result.
    pub config_version: Option<i64>,
    /// The machine-readable reason, e.g. `targeting_match` or `experiment_split`.
    pub reason_code: Option<String>,
    /// The id of the rule that produced the result (`/flags?v=4`).
    pub rule_id: Option<String>,
    /// The kind of that rule: `targeted_release`, `percentage_rollout` or `experiment`.
    pub rule_type: Option<String>,
    /// The variant the rule assigned.
    pub variant_key: Option<String>,
    /// Whether the variant was forced by an override.
    pub forced_variant: Option<bool>,
    /// The experiment's id (older flag configurations).
    pub experiment_id: Option<i64>,
    /// What the flag events of a read report about the rule, worked out from the fields
    /// above when the record is read from `/flags`.
    pub(crate) attribution: Option<Arc<ReadAttribution>>,
    /// The `/flags` record could not be read (it reads as off, and `failed` is `false`).
    pub(crate) malformed: bool,
    /// What a single-flag lookup answers when it differs from `value` (posthog-python reads
    /// a record as its variant, or else `enabled`; a snapshot as off unless enabled).
    pub(crate) lookup_value: Option<FlagValue>,
}

impl FlagRecord {
    /// A record with only a value and where it was evaluated.
    pub(crate) fn new(value: FlagValue, locally_evaluated: bool) -> Self {
        FlagRecord {
            value,
            payload: None,
            reason: None,
            id: None,
            version: None,
            locally_evaluated,
            has_experiment: None,
            failed: false,
            config_version: None,
            reason_code: None,
            rule_id: None,
            rule_type: None,
            variant_key: None,
            forced_variant: None,
            experiment_id: None,
            attribution: None,
            malformed: false,
            lookup_value: None,
        }
    }

    /// The value a single-flag lookup answers: the variant if it is not empty, else
    /// `enabled` (a snapshot reads a disabled flag as off and keeps an empty variant), as
    /// posthog-python answers it.
    pub(crate) fn single_value(&self) -> FlagValue {
        self.lookup_value
            .clone()
            .unwrap_or_else(|| self.value.clone())
    }

    /// The record of one flag of a `/flags` response.
    pub(crate) fn from_detail(key: &str, flag: &super::FlagDetail) -> Self {
        let m = &flag.metadata;
        FlagRecord {
            payload: decode_payload(key, m.payload.as_deref()),
            // An enabled flag's variant, even an empty one, as posthog-python's snapshots
            // read it.
            value: match (&flag.variant, flag.enabled) {
                (Some(v), true) => FlagValue::Variant(v.clone()),
                (_, enabled) => FlagValue::Bool(enabled),
            },
            reason: flag.reason.as_ref().and_then(|r| r.description.clone()),
            id: m.id,
            version: m.version,
            locally_evaluated: false,
            has_experiment: m.has_experiment,
            // Only a record the server marked failed is; one that could not be read is off.
            failed: flag.failed && !flag.malformed,
            config_version: m.config_version,
            reason_code: flag.reason.as_ref().and_then(|r| r.code.clone()),
            rule_id: m.rule_id.clone(),
            rule_type: m.rule_type.clone(),
            variant_key: m.variant_key.clone(),
            forced_variant: m.forced_variant,
            experiment_id: m.experiment_id,
            attribution: None,
            malformed: flag.malformed,
            lookup_value: Some(match &flag.variant {
                Some(v) if !v.is_empty() => FlagValue::Variant(v.clone()),
                _ => FlagValue::Bool(flag.enabled),
            }),
        }
        .with_lookup_value()
        .with_attribution()
    }

    /// Keeps `lookup_value` only when it differs from `value`.
    fn with_lookup_value(mut self) -> Self {
        if self.lookup_value.as_ref() == Some(&self.value) {
            self.lookup_value = None;
        }
        self
    }

    /// Works out the record's attribution from its fields.
    pub(crate) fn with_attribution(mut self) -> Self {
        self.attribution = ReadAttribution::of(&self);
        self
    }
}

#[derive(Clone)]
struct Data {
    distinct_id: String,
    groups: BTreeMap<String, String>,
    disable_geoip: Option<bool>,
    records: BTreeMap<String, FlagRecord>,
    request_id: Option<String>,
    evaluated_at: Option<i64>,
    errors_while_computing: bool,
    quota_limited: bool,
    minimal_gate: bool,
    error: Option<FlagError>,
}

/// Every flag for one person, from one evaluation (one `/flags` request at most).
///
/// Reading it makes no request. The first [`is_enabled`](Self::is_enabled) or
/// [`get_flag`](Self::get_flag) of a key reports `$feature_flag_called` (deduplicated per
/// person, key, value and groups); [`get_payload`](Self::get_payload) and
/// [`keys`](Self::keys) are silent. Attach it to an event with [`Event::flags`] to record
/// `$feature/<key>` and `$active_feature_flags` without another request.
///
/// Cloning shares the record of which keys were accessed; [`only`](Self::only) makes an
/// independent copy.
#[derive(Clone)]
pub struct FlagEvaluations {
    data: Arc<Data>,
    accessed: Arc<Mutex<BTreeSet<String>>>,
    reporter: Option<Arc<dyn ReportFlagCalled>>,
}

impl FlagEvaluations {
    /// A snapshot from a `/flags` response.
    pub(crate) fn from_response(
        request: &super::FlagsRequest,
        response: &FlagsResponse,
        reporter: Option<Arc<dyn ReportFlagCalled>>,
    ) -> Self {
        let quota_limited = response.is_quota_limited();
        let mut records = BTreeMap::new();
        if !quota_limited {
            for (key, flag) in &response.flags {
                if let Some(keys) = &request.flag_keys {
                    if !keys.iter().any(|k| k == key) {
                        continue;
                    }
                }
                records.insert(key.clone(), FlagRecord::from_detail(key, flag));
            }
        }
        FlagEvaluations::new(
            Data {
                distinct_id: request.distinct_id.clone(),
                groups: request.groups.clone(),
                disable_geoip: request.disable_geoip,
                records,
                request_id: response.request_id.clone(),
                evaluated_at: response.evaluated_at,
                errors_while_computing: response.errors_while_computing_flags,
                quota_limited,
                minimal_gate: response.minimal_flag_called_events,
                error: quota_limited.then_some(FlagError::QuotaLimited),
            },
            reporter,
        )
    }

    /// An empty snapshot recording why evaluation failed.
    pub(crate) fn failed(
        request: &super::FlagsRequest,
        error: Option<FlagError>,
        reporter: Option<Arc<dyn ReportFlagCalled>>,
    ) -> Self {
        FlagEvaluations::new(
            Data {
                distinct_id: request.distinct_id.clone(),
                groups: request.groups.clone(),
                disable_geoip: request.disable_geoip,
                records: BTreeMap::new(),
                request_id: None,
                evaluated_at: None,
                errors_while_computing: false,
                quota_limited: error == Some(FlagError::QuotaLimited),
                minimal_gate: false,
                error,
            },
            reporter,
        )
    }

    /// Adds flags evaluated locally (they win over anything the server said about the same
    /// key). `remote_called` says whether the server was asked; when it was not, the local
    /// definitions' minimal-events setting applies.
    pub(crate) fn with_local(
        self,
        local: BTreeMap<String, FlagRecord>,
        local_minimal_gate: bool,
        remote_called: bool,
    ) -> Self {
        if local.is_empty() && remote_called {
            return self;
        }
        let mut data = Arc::try_unwrap(self.data).unwrap_or_else(|shared| (*shared).clone());
        data.records.extend(local);
        if !remote_called {
            data.minimal_gate = local_minimal_gate;
        }
        FlagEvaluations {
            data: Arc::new(data),
            accessed: self.accessed,
            reporter: self.reporter,
        }
    }

    fn new(data: Data, reporter: Option<Arc<dyn ReportFlagCalled>>) -> Self {
        FlagEvaluations {
            data: Arc::new(data),
            accessed: Arc::default(),
            reporter,
        }
    }

    /// Whether the flag is on (a variant counts as on). `false` for a key not in the snapshot.
    /// Reports `$feature_flag_called` the first time.
    pub fn is_enabled(&self, key: &str) -> bool {
        self.access(key).is_some_and(|v| v.is_enabled())
    }

    /// The flag's value, or `None` for a key not in the snapshot. Reports
    /// `$feature_flag_called` the first time.
    pub fn get_flag(&self, key: &str) -> Option<FlagValue> {
        self.access(key)
    }

    /// The flag's decoded payload. Silent: no event, not counted as an access.
    pub fn get_payload(&self, key: &str) -> Option<&Value> {
        self.data.records.get(key)?.payload.as_ref()
    }

    /// Every flag's record, by key (sorted). Silent.
    pub(crate) fn records(&self) -> impl Iterator<Item = (&str, &FlagRecord)> {
        self.data
            .records
            .iter()
            .filter(|(_, r)| !r.failed)
            .map(|(k, r)| (k.as_str(), r))
    }

    /// Everything known about one flag (a [failed](FlagRecord::failed) one included). Silent.
    pub fn record(&self, key: &str) -> Option<&FlagRecord> {
        self.data.records.get(key)
    }

    /// The keys in the snapshot, sorted (flags PostHog failed to evaluate are left out).
    /// Silent.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.records().map(|(k, _)| k)
    }

    /// Number of flags in the snapshot (as [`keys`](Self::keys) counts them).
    pub fn len(&self) -> usize {
        self.records().count()
    }

    /// `true` when the snapshot holds no flag (evaluation failed, or nothing matched the keys).
    pub fn is_empty(&self) -> bool {
        self.records().next().is_none()
    }

    /// Why evaluation failed, if it did (the snapshot is then empty).
    pub fn error(&self) -> Option<&FlagError> {
        self.data.error.as_ref()
    }

    /// The distinct id the flags were evaluated for.
    pub fn distinct_id(&self) -> &str {
        &self.data.distinct_id
    }

    /// A copy holding only these keys (unknown keys are ignored, with a warning). It tracks
    /// accesses on its own.
    pub fn only<I, K>(&self, keys: I) -> FlagEvaluations
    where
        I: IntoIterator<Item = K>,
        K: AsRef<str>,
    {
        let mut records = BTreeMap::new();
        let mut unknown = Vec::new();
        for key in keys {
            let key = key.as_ref();
            match self.data.records.get(key) {
                Some(record) => {
                    records.insert(key.to_owned(), record.clone());
                }
                None => unknown.push(key.to_owned()),
            }
        }
        if !unknown.is_empty() {
            tracing::warn!(
                ?unknown,
                "posthog: FlagEvaluations::only: keys not in the snapshot"
            );
        }
        self.filtered(records)
    }

    /// A copy holding only the flags read so far with `is_enabled` or `get_flag` (empty when
    /// none was).
    pub fn only_accessed(&self) -> FlagEvaluations {
        let accessed = self
            .accessed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let records = self
            .data
            .records
            .iter()
            .filter(|(k, _)| accessed.contains(*k))
            .map(|(k, r)| (k.clone(), r.clone()))
            .collect();
        self.filtered(records)
    }

    fn filtered(&self, records: BTreeMap<String, FlagRecord>) -> FlagEvaluations {
        let d = &self.data;
        // The copy starts with what was accessed so far, then tracks on its own.
        let accessed = self
            .accessed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|k| records.contains_key(*k))
            .cloned()
            .collect::<BTreeSet<_>>();
        let mut copy = FlagEvaluations::new(
            Data {
                distinct_id: d.distinct_id.clone(),
                groups: d.groups.clone(),
                disable_geoip: d.disable_geoip,
                records,
                request_id: d.request_id.clone(),
                evaluated_at: d.evaluated_at,
                errors_while_computing: d.errors_while_computing,
                quota_limited: d.quota_limited,
                minimal_gate: d.minimal_gate,
                error: d.error.clone(),
            },
            self.reporter.clone(),
        );
        copy.accessed = Arc::new(Mutex::new(accessed));
        copy
    }

    fn access(&self, key: &str) -> Option<FlagValue> {
        let record = self.data.records.get(key);
        {
            let mut accessed = self.accessed.lock().unwrap_or_else(|p| p.into_inner());
            if !accessed.contains(key) {
                accessed.insert(key.to_owned());
            }
        }
        // A failed flag has no value.
        let value = record.filter(|r| !r.failed).map(|r| &r.value);
        if let Some(reporter) = &self.reporter {
            let d = &self.data;
            // Dedup first: the events are only built when they will be sent.
            if !d.distinct_id.is_empty() {
                report_read(
                    &**reporter,
                    &d.distinct_id,
                    key,
                    value,
                    &d.groups,
                    record.and_then(|r| r.attribution.as_deref()),
                    || self.called(key, false),
                );
            }
        }
        value.cloned()
    }

    /// What a read of `key` reports (`single`: for a single-flag lookup, which reads an
    /// empty variant as `true`).
    pub(crate) fn called(&self, key: &str, single: bool) -> FlagCalled {
        let d = &self.data;
        FlagCalled::read(
            ReadContext {
                distinct_id: &d.distinct_id,
                groups: &d.groups,
                disable_geoip: d.disable_geoip,
                request_id: d.request_id.as_deref(),
                evaluated_at: d.evaluated_at,
                errors_while_computing: d.errors_while_computing,
                quota_limited: d.quota_limited,
                minimal_gate: d.minimal_gate,
                single,
            },
            key,
            d.records.get(key),
        )
    }

    /// The server's request id, when `/flags` answered.
    pub(crate) fn request_id(&self) -> Option<&str> {
        self.data.request_id.as_deref()
    }
}

impl fmt::Debug for FlagEvaluations {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FlagEvaluations")
            .field("distinct_id", &self.data.distinct_id)
            .field("flags", &self.data.records)
            .field("error", &self.data.error)
            .finish_non_exhaustive()
    }
}

/// Decodes a payload's JSON text. Invalid or empty JSON is no payload (logged), never the
/// raw string, as PostHog's SDK specification requires.
pub(crate) fn decode_payload(key: &str, text: Option<&str>) -> Option<Value> {
    let text = text?;
    match serde_json::from_str(text) {
        Ok(value) => Some(value),
        Err(e) => {
            tracing::warn!(flag = key, error = %e, "posthog: flag payload is not valid JSON; ignored");
            None
        }
    }
}

impl Event {
    /// Records the snapshot's flags on this event: `$feature/<key>` for every flag (its
    /// value, `false` when off) and `$active_feature_flags` (the enabled keys, sorted). No
    /// request is made. Properties the event already has win.
    ///
    /// ```
    /// # async fn f(posthog: posthog_tower::PostHog) -> Result<(), Box<dyn std::error::Error>> {
    /// use posthog_tower::Event;
    ///
    /// let flags = posthog.evaluate_flags("user-42").await;
    /// if flags.is_enabled("new-checkout") {
    ///     // ...
    /// }
    /// posthog.capture(Event::new("checkout completed", "user-42").flags(&flags))?;
    /// # Ok(())
    /// # }
    /// ```
    #[must_use]
    pub fn flags(mut self, flags: &FlagEvaluations) -> Self {
        let mut active = Vec::new();
        for (key, record) in flags.records() {
            let name = format!("$feature/{key}");
            if !self.inner.properties.contains_key(&name) {
                self.insert_value(name, record.value.to_json());
            }
            if record.value.is_enabled() {
                active.push(Value::from(key));
            }
        }
        if !active.is_empty() && !self.inner.properties.contains_key("$active_feature_flags") {
            self.insert_value("$active_feature_flags", Value::Array(active));
        }
        self
    }
}

#[cfg(feature = "__bench")]
/// Not public API: lets `benches/flags.rs` time a first flag access (the dedup check and the
/// `$feature_flag_called` event construction) without the capture queue and its worker.
#[doc(hidden)]
#[allow(missing_debug_implementations)]
pub struct FlagCalledBench {
    snapshot: FlagEvaluations,
}

#[cfg(feature = "__bench")]
struct BuildOnly(super::FlagCalledDedup, super::FlagCalledDedup);

#[cfg(feature = "__bench")]
impl ReportFlagCalled for BuildOnly {
    fn first_time(
        &self,
        distinct_id: &str,
        key: &str,
        value: Option<&FlagValue>,
        groups: &BTreeMap<String, String>,
        attribution: Option<&ReadAttribution>,
    ) -> bool {
        self.0
            .first_time(distinct_id, key, value, groups, attribution)
    }

    fn first_exposure(
        &self,
        distinct_id: &str,
        key: &str,
        groups: &BTreeMap<String, String>,
        exposure_key: u64,
    ) -> bool {
        self.1
            .first_exposure(distinct_id, key, groups, exposure_key)
    }

    fn report(&self, event: Event) -> bool {
        std::hint::black_box(event);
        true
    }
}

#[cfg(feature = "__bench")]
impl FlagCalledBench {
    /// A snapshot of `flags` enabled flags `flag-0`, `flag-1`, … for one person.
    pub fn new(person: &str, flags: usize) -> Self {
        let map: serde_json::Map<String, Value> = (0..flags)
            .map(|i| {
                (
                    format!("flag-{i}"),
                    serde_json::json!({"enabled": true,
                        "reason": {"description": "Matched condition set 1"},
                        "metadata": {"id": i, "version": 3}}),
                )
            })
            .collect();
        let body = serde_json::json!({"flags": map, "requestId": "bench"}).to_string();
        let response = FlagsResponse::from_json(body.as_bytes()).unwrap_or_default();
        let reporter = Arc::new(BuildOnly(
            super::FlagCalledDedup::new(50_000),
            super::FlagCalledDedup::new(50_000),
        ));
        FlagCalledBench {
            snapshot: FlagEvaluations::from_response(
                &super::FlagsRequest::new(person),
                &response,
                Some(reporter),
            ),
        }
    }

    /// A snapshot of `flags` experiment flags `flag-0`, `flag-1`, … for one person, as
    /// `/flags?v=4` sends them (an experiment split each): the first read of a key builds
    /// both `$feature_flag_called` and `$experiment_exposure`.
    pub fn new_experiments(person: &str, flags: usize) -> Self {
        let map: serde_json::Map<String, Value> = (0..flags)
            .map(|i| {
                (
                    format!("flag-{i}"),
                    serde_json::json!({"value": "test", "failed": false,
                        "reason": {"code": "experiment_split", "description": "Assigned"},
                        "metadata": {"id": i, "version": 3, "config_version": 2,
                            "rule_id": "0f8e6a52-5b8e-4f4c-9a39-5d3c2c8f6b21",
                            "rule_type": "experiment", "variant_key": "test",
                            "has_experiment": true}}),
                )
            })
            .collect();
        let body =
            serde_json::json!({"flags": map, "requestId": "bench", "evaluatedAt": 1}).to_string();
        let response = FlagsResponse::from_json(body.as_bytes()).unwrap_or_default();
        let reporter = Arc::new(BuildOnly(
            super::FlagCalledDedup::new(50_000),
            super::FlagCalledDedup::new(50_000),
        ));
        FlagCalledBench {
            snapshot: FlagEvaluations::from_response(
                &super::FlagsRequest::new(person),
                &response,
                Some(reporter),
            ),
        }
    }

    /// Reads one flag (the first read of a key builds its event).
    pub fn access(&self, key: &str) -> bool {
        self.snapshot.is_enabled(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flags::FlagsRequest;
    use serde_json::json;

    /// Reports every read (no dedup); keeps the events' names and properties.
    struct Collect(Mutex<Vec<(String, serde_json::Map<String, Value>)>>);

    impl ReportFlagCalled for Collect {
        fn first_time(
            &self,
            _: &str,
            _: &str,
            _: Option<&FlagValue>,
            _: &BTreeMap<String, String>,
            _: Option<&ReadAttribution>,
        ) -> bool {
            true
        }

        fn first_exposure(&self, _: &str, _: &str, _: &BTreeMap<String, String>, _: u64) -> bool {
            true
        }

        fn report(&self, event: Event) -> bool {
            let properties = event.properties().to_map();
            self.0
                .lock()
                .unwrap()
                .push((event.name().to_owned(), properties));
            true
        }
    }

    fn response() -> FlagsResponse {
        FlagsResponse::from_json(
            json!({
                "flags": {
                    "b": {"enabled": true, "metadata": {"id": 1, "payload": "{\"x\":1}"}},
                    "v": {"enabled": true, "variant": "blue", "reason": {"description": "Matched"}},
                    "off": {"enabled": false},
                    "bad": {"enabled": true, "metadata": {"payload": "not json"}}
                },
                "requestId": "r1",
                "evaluatedAt": 7
            })
            .to_string()
            .as_bytes(),
        )
        .unwrap()
    }

    #[test]
    fn snapshot_reads_and_reports() {
        let reporter = Arc::new(Collect(Mutex::default()));
        let flags = FlagEvaluations::from_response(
            &FlagsRequest::new("u"),
            &response(),
            Some(reporter.clone()),
        );
        assert!(flags.is_enabled("b"));
        assert!(flags.is_enabled("v"));
        assert!(!flags.is_enabled("off"));
        assert_eq!(flags.get_flag("v"), Some(FlagValue::Variant("blue".into())));
        assert_eq!(flags.get_flag("nope"), None);
        assert_eq!(flags.get_payload("b"), Some(&json!({"x": 1})));
        assert_eq!(flags.get_payload("bad"), None, "invalid JSON is no payload");
        assert_eq!(flags.keys().collect::<Vec<_>>(), ["b", "bad", "off", "v"]);
        let reported = reporter.0.lock().unwrap();
        assert_eq!(reported.len(), 5, "payload and keys reads are silent");
        let find = |key: &str| {
            &reported
                .iter()
                .find(|(_, p)| p["$feature_flag"] == key)
                .unwrap()
                .1
        };
        let missing = find("nope");
        assert_eq!(missing["$feature_flag_error"], "flag_missing");
        assert_eq!(missing["$feature_flag_request_id"], "r1");
        let v = find("v");
        assert_eq!(v["$feature_flag_reason"], "Matched");
        assert_eq!(v["$feature_flag_evaluated_at"], 7);
    }

    #[test]
    fn only_and_only_accessed() {
        let flags = FlagEvaluations::from_response(&FlagsRequest::new("u"), &response(), None);
        assert!(flags.only_accessed().is_empty());
        flags.get_flag("v");
        assert_eq!(flags.only_accessed().keys().collect::<Vec<_>>(), ["v"]);
        let some = flags.only(["b", "zzz"]);
        assert_eq!(some.keys().collect::<Vec<_>>(), ["b"]);
        assert!(
            some.only_accessed().is_empty(),
            "copies track access on their own"
        );
    }

    #[test]
    fn attaching_to_events() {
        let flags = FlagEvaluations::from_response(&FlagsRequest::new("u"), &response(), None);
        let event = Event::new("e", "u")
            .property("$feature/b", "mine")
            .flags(&flags);
        let p = event.properties().to_map();
        assert_eq!(p["$feature/b"], "mine");
        assert_eq!(p["$feature/v"], "blue");
        assert_eq!(p["$feature/off"], false);
        assert_eq!(p["$active_feature_flags"], json!(["b", "bad", "v"]));
        assert!(
            flags.only_accessed().is_empty(),
            "attaching is not an access"
        );
    }

    #[test]
    fn quota_limited_snapshots_are_empty() {
        let response = FlagsResponse::from_json(
            br#"{"flags": {"a": {"enabled": true}}, "quotaLimited": ["feature_flags"]}"#,
        )
        .unwrap();
        let flags = FlagEvaluations::from_response(&FlagsRequest::new("u"), &response, None);
        assert!(flags.is_empty());
        assert_eq!(flags.error(), Some(&FlagError::QuotaLimited));
    }
}
