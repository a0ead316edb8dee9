//! The `/flags` response: [`FlagsResponse`] and the records it holds (`/flags?v=4` records
//! with a typed `value`, v2 records with `enabled` and `variant`, and the legacy v1 shape).

use std::{collections::HashMap, fmt};

use serde::Deserialize;
use serde_json::Value;

use super::FlagValue;

/// Why the server gave a flag its value.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[non_exhaustive]
pub struct FlagReason {
    /// A machine-readable code, e.g. `condition_match`.
    #[serde(default)]
    pub code: Option<String>,
    /// The index of the condition that matched.
    #[serde(default)]
    pub condition_index: Option<i64>,
    /// A human-readable description, e.g. `Matched condition set 1`.
    #[serde(default)]
    pub description: Option<String>,
}

/// What the server says about a flag besides its value.
///
/// `/flags?v=4` adds the configuration version and the rule that produced the result
/// (`config_version`, `rule_id`, `rule_type`, `variant_key`, `forced_variant`,
/// `experiment_id`); older responses leave them `None`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[non_exhaustive]
pub struct FlagMetadata {
    /// The flag's id.
    #[serde(default)]
    pub id: Option<i64>,
    /// The flag's version.
    #[serde(default)]
    pub version: Option<i64>,
    /// The payload, as the JSON text PostHog stores.
    #[serde(default, deserialize_with = "payload_text")]
    pub payload: Option<String>,
    /// The flag's description.
    #[serde(default)]
    pub description: Option<String>,
    /// Whether the flag belongs to an experiment (when the server said so with a boolean).
    #[serde(default, deserialize_with = "lenient_opt_bool")]
    pub has_experiment: Option<bool>,
    /// The flag's configuration format: `2` for a flag whose records name their rule,
    /// `1` for the older format (and for every record of a server before `/flags?v=4`).
    #[serde(skip)]
    pub config_version: Option<i64>,
    /// The id (a UUID) of the rule that produced the result.
    #[serde(skip)]
    pub rule_id: Option<String>,
    /// The kind of that rule: `targeted_release`, `percentage_rollout` or `experiment`.
    #[serde(skip)]
    pub rule_type: Option<String>,
    /// The variant the rule assigned, by key.
    #[serde(skip)]
    pub variant_key: Option<String>,
    /// Whether the variant was forced (by an override) rather than split.
    #[serde(skip)]
    pub forced_variant: Option<bool>,
    /// The experiment's id, for a flag in the older format that belongs to one.
    #[serde(skip)]
    pub experiment_id: Option<i64>,
}

/// One flag of a `/flags` response.
///
/// A `/flags?v=4` record carries a typed `value` (a boolean, a variant string, or a
/// number or object, which is an enabled flag whose payload is that value); an older
/// record carries `enabled` and `variant`. Either way the record is read into `enabled`,
/// `variant` and the metadata's payload.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct FlagDetail {
    /// The flag's key.
    pub key: String,
    /// Whether the flag is on.
    pub enabled: bool,
    /// The variant, for a multivariate flag.
    pub variant: Option<String>,
    /// Why it has this value.
    pub reason: Option<FlagReason>,
    /// Id, version, payload, and the `/flags?v=4` rule attribution.
    pub metadata: FlagMetadata,
    /// The server could not evaluate this flag (`failed: true`), or the record could not be
    /// read (a known field of the wrong type): the flag has no value, and reads as off. A
    /// record that could not be read is reported as `unknown_error` by a single-flag lookup
    /// (which then serves the fallback cache's value, if any) and as a plain off flag by a
    /// snapshot, as posthog-python 7.91.1 does.
    pub failed: bool,
    /// The record had no `metadata` object (then it names no rule).
    pub(crate) has_metadata: bool,
    /// `failed` because the record could not be read, not because the server said so.
    pub(crate) malformed: bool,
}

impl FlagDetail {
    /// The flag's value: the variant if there is one, else whether it is enabled.
    pub fn value(&self) -> FlagValue {
        match (&self.variant, self.enabled) {
            (Some(v), true) if !v.is_empty() => FlagValue::Variant(v.clone()),
            (_, enabled) => FlagValue::Bool(enabled),
        }
    }

    /// A record whose known field `field` has the wrong JSON type: failed, off.
    fn malformed(key: String, field: &str) -> Self {
        tracing::warn!(flag = %key, field, "posthog: a /flags record could not be read; the flag reads as failed");
        FlagDetail {
            key,
            enabled: false,
            variant: None,
            reason: None,
            metadata: FlagMetadata::default(),
            failed: true,
            has_metadata: false,
            malformed: true,
        }
    }

    /// Reads one record, `/flags?v=4` (with `value`) or older.
    fn from_raw(key: String, raw: RawFlag) -> Self {
        match read_record(&raw) {
            Ok(Read {
                enabled,
                variant,
                reason,
                metadata,
                failed,
                has_metadata,
            }) => FlagDetail {
                key,
                enabled,
                variant,
                reason,
                has_metadata,
                metadata: metadata.unwrap_or_default(),
                failed,
                malformed: false,
            },
            Err(Malformed(field)) => FlagDetail::malformed(key, field),
        }
    }
}

/// A parsed `/flags` response (v4 or v2 records, or the legacy v1 shape normalized to them).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct FlagsResponse {
    /// The flags, by key.
    pub flags: HashMap<String, FlagDetail>,
    /// The server could not compute some flags; those may be missing or wrong.
    pub errors_while_computing_flags: bool,
    /// Resources the project is quota limited on (`feature_flags` means no values).
    pub quota_limited: Vec<String>,
    /// The request id, sent on `$feature_flag_called`.
    pub request_id: Option<String>,
    /// When the server evaluated the flags (milliseconds since the epoch).
    pub evaluated_at: Option<i64>,
    /// The server asks for minimal `$feature_flag_called` events.
    pub minimal_flag_called_events: bool,
}

impl FlagsResponse {
    /// `true` when the project's feature flags are quota limited: no flag has a value.
    pub fn is_quota_limited(&self) -> bool {
        self.quota_limited.iter().any(|q| q == "feature_flags")
    }

    /// Parses a response body.
    ///
    /// A part read as JSON (a v1 value or payload, a v2 payload) nested more than 128 levels
    /// deep is an error (serde_json's recursion limit); a field nobody reads is skipped
    /// without recursing, however deep.
    pub fn from_json(body: &[u8]) -> Result<Self, InvalidFlagsResponse> {
        let raw: RawResponse =
            serde_json::from_slice(body).map_err(|e| InvalidFlagsResponse(e.to_string()))?;
        let mut flags = HashMap::new();
        match (raw.flags, raw.feature_flags) {
            (Some(v2), _) => {
                for (key, flag) in v2 {
                    let detail = match flag {
                        MaybeRecord::Record(raw) => FlagDetail::from_raw(key.clone(), *raw),
                        MaybeRecord::NotAnObject => FlagDetail::malformed(key.clone(), "record"),
                    };
                    flags.insert(key, detail);
                }
            }
            (None, Some(v1)) => {
                let mut payloads = raw.feature_flag_payloads.unwrap_or_default();
                for (key, value) in v1 {
                    let (enabled, variant) = match value {
                        Value::Bool(b) => (b, None),
                        Value::String(s) => (true, Some(s)),
                        Value::Null => (false, None),
                        other => {
                            return Err(InvalidFlagsResponse(format!(
                                "flag `{key}` has the value {other}, expected a boolean or a string"
                            )))
                        }
                    };
                    let payload = payloads.remove(&key).and_then(|p| match p {
                        Value::Null => None,
                        Value::String(s) => Some(s),
                        other => Some(other.to_string()),
                    });
                    flags.insert(
                        key.clone(),
                        FlagDetail {
                            key,
                            enabled,
                            variant,
                            reason: None,
                            metadata: FlagMetadata {
                                payload,
                                ..FlagMetadata::default()
                            },
                            failed: false,
                            has_metadata: false,
                            malformed: false,
                        },
                    );
                }
            }
            (None, None) => {}
        }
        Ok(FlagsResponse {
            flags,
            errors_while_computing_flags: raw.errors_while_computing_flags,
            quota_limited: raw.quota_limited.unwrap_or_default(),
            request_id: raw.request_id,
            evaluated_at: raw.evaluated_at,
            minimal_flag_called_events: raw.minimal_flag_called_events,
        })
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawResponse {
    #[serde(default)]
    flags: Option<HashMap<String, MaybeRecord>>,
    #[serde(default)]
    feature_flags: Option<HashMap<String, Value>>,
    #[serde(default)]
    feature_flag_payloads: Option<HashMap<String, Value>>,
    #[serde(default, deserialize_with = "lenient_bool")]
    errors_while_computing_flags: bool,
    #[serde(default)]
    quota_limited: Option<Vec<String>>,
    #[serde(default)]
    request_id: Option<String>,
    #[serde(default, deserialize_with = "lenient_i64")]
    evaluated_at: Option<i64>,
    #[serde(default, deserialize_with = "lenient_bool")]
    minimal_flag_called_events: bool,
}

/// One record of `flags`: an object, or anything else (which fails only that record).
enum MaybeRecord {
    Record(Box<RawFlag>),
    NotAnObject,
}

impl<'de> Deserialize<'de> for MaybeRecord {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = MaybeRecord;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a flag record")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<MaybeRecord, A::Error> {
                RawFlag::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    .map(|raw| MaybeRecord::Record(Box::new(raw)))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<MaybeRecord, A::Error> {
                while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
                Ok(MaybeRecord::NotAnObject)
            }
            fn visit_bool<E>(self, _: bool) -> Result<MaybeRecord, E> {
                Ok(MaybeRecord::NotAnObject)
            }
            fn visit_i64<E>(self, _: i64) -> Result<MaybeRecord, E> {
                Ok(MaybeRecord::NotAnObject)
            }
            fn visit_u64<E>(self, _: u64) -> Result<MaybeRecord, E> {
                Ok(MaybeRecord::NotAnObject)
            }
            fn visit_f64<E>(self, _: f64) -> Result<MaybeRecord, E> {
                Ok(MaybeRecord::NotAnObject)
            }
            fn visit_str<E>(self, _: &str) -> Result<MaybeRecord, E> {
                Ok(MaybeRecord::NotAnObject)
            }
            fn visit_unit<E>(self) -> Result<MaybeRecord, E> {
                Ok(MaybeRecord::NotAnObject)
            }
            fn visit_none<E>(self) -> Result<MaybeRecord, E> {
                Ok(MaybeRecord::NotAnObject)
            }
        }
        d.deserialize_any(Visit)
    }
}

/// A record's known fields, as sent; their types are checked by [`read_record`].
#[derive(Deserialize)]
struct RawFlag {
    #[serde(default)]
    key: Option<Value>,
    /// `Some(Value::Null)` for `"value": null` (a `/flags?v=4` record with no value),
    /// `None` when the member is absent (an older record).
    #[serde(default, deserialize_with = "present")]
    value: Option<Value>,
    #[serde(default)]
    enabled: Option<Value>,
    #[serde(default)]
    variant: Option<Value>,
    #[serde(default)]
    failed: Option<Value>,
    #[serde(default)]
    reason: Option<Value>,
    #[serde(default)]
    metadata: Option<RawMetadata>,
}

/// The known fields of a record's `metadata` (an object, or something else, which fails
/// the record).
#[derive(Default)]
struct RawMetadata {
    not_an_object: bool,
    fields: HashMap<String, Value>,
}

/// The metadata fields read; others are skipped without being parsed.
const METADATA_FIELDS: &[&str] = &[
    "id",
    "version",
    "payload",
    "description",
    "has_experiment",
    "config_version",
    "rule_id",
    "rule_type",
    "variant_key",
    "forced_variant",
    "experiment_id",
];

impl<'de> Deserialize<'de> for RawMetadata {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = RawMetadata;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("flag metadata")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<RawMetadata, A::Error> {
                let mut fields = HashMap::new();
                while let Some(name) = map.next_key::<String>()? {
                    if METADATA_FIELDS.contains(&name.as_str()) {
                        fields.insert(name, map.next_value::<Value>()?);
                    } else {
                        map.next_value::<serde::de::IgnoredAny>()?;
                    }
                }
                Ok(RawMetadata {
                    not_an_object: false,
                    fields,
                })
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<RawMetadata, A::Error> {
                while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
                Ok(RawMetadata {
                    not_an_object: true,
                    ..RawMetadata::default()
                })
            }
            fn visit_bool<E>(self, _: bool) -> Result<RawMetadata, E> {
                Ok(RawMetadata {
                    not_an_object: true,
                    ..RawMetadata::default()
                })
            }
            fn visit_i64<E>(self, _: i64) -> Result<RawMetadata, E> {
                Ok(RawMetadata {
                    not_an_object: true,
                    ..RawMetadata::default()
                })
            }
            fn visit_u64<E>(self, _: u64) -> Result<RawMetadata, E> {
                Ok(RawMetadata {
                    not_an_object: true,
                    ..RawMetadata::default()
                })
            }
            fn visit_f64<E>(self, _: f64) -> Result<RawMetadata, E> {
                Ok(RawMetadata {
                    not_an_object: true,
                    ..RawMetadata::default()
                })
            }
            fn visit_str<E>(self, _: &str) -> Result<RawMetadata, E> {
                Ok(RawMetadata {
                    not_an_object: true,
                    ..RawMetadata::default()
                })
            }
        }
        d.deserialize_any(Visit)
    }
}

/// A known field of a record had the wrong JSON type (the field's wire path).
struct Malformed(&'static str);

/// What a record says, once its types are checked.
struct Read {
    enabled: bool,
    variant: Option<String>,
    reason: Option<FlagReason>,
    metadata: Option<FlagMetadata>,
    failed: bool,
    /// The record had a `metadata` object.
    has_metadata: bool,
}

/// `null` or absent reads as `None`; a value of another type is [`Malformed`].
fn typed<'a, T>(
    value: Option<&'a Value>,
    field: &'static str,
    read: impl FnOnce(&'a Value) -> Option<T>,
) -> Result<Option<T>, Malformed> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(v) => read(v).map(Some).ok_or(Malformed(field)),
    }
}

fn string(v: &Value) -> Option<String> {
    v.as_str().map(str::to_owned)
}

fn boolean(v: &Value) -> Option<bool> {
    v.as_bool()
}

/// An integer; JSON has one number type, so an integral float such as `2.0` counts.
fn integer(v: &Value) -> Option<i64> {
    if let Some(i) = v.as_i64() {
        return Some(i);
    }
    let f = v.as_f64()?;
    #[allow(clippy::cast_possible_truncation)]
    (f.is_finite() && f.fract() == 0.0 && f.abs() < 9.0e18).then_some(f as i64)
}

fn read_reason(raw: Option<&Value>) -> Result<Option<FlagReason>, Malformed> {
    let Some(reason) = typed(raw, "reason", Value::as_object)? else {
        return Ok(None);
    };
    Ok(Some(FlagReason {
        code: typed(reason.get("code"), "reason.code", string)?,
        condition_index: typed(
            reason.get("condition_index"),
            "reason.condition_index",
            integer,
        )?,
        description: typed(reason.get("description"), "reason.description", string)?,
    }))
}

fn read_record(raw: &RawFlag) -> Result<Read, Malformed> {
    typed(raw.key.as_ref(), "key", string)?;
    let failed = typed(raw.failed.as_ref(), "failed", boolean)? == Some(true);
    let reason = read_reason(raw.reason.as_ref())?;
    let metadata_fields = match &raw.metadata {
        Some(m) if m.not_an_object => return Err(Malformed("metadata")),
        Some(m) => Some(&m.fields),
        None => None,
    };
    let field = |name: &str| metadata_fields.and_then(|m| m.get(name));
    let mut metadata = match metadata_fields {
        None => None,
        Some(_) => Some(FlagMetadata {
            id: typed(field("id"), "metadata.id", integer)?,
            version: typed(field("version"), "metadata.version", integer)?,
            payload: None,
            description: typed(field("description"), "metadata.description", string)?,
            // A v2 record's non-boolean `has_experiment` is unknown (the SDK specification);
            // a `/flags?v=4` record's fails the record (posthog-python 7.91.1).
            has_experiment: if raw.value.is_some() {
                typed(field("has_experiment"), "metadata.has_experiment", boolean)?
            } else {
                field("has_experiment").and_then(Value::as_bool)
            },
            ..FlagMetadata::default()
        }),
    };
    let raw_payload = || match field("payload") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(other) => Some(other.to_string()),
    };
    let Some(value) = &raw.value else {
        // An older record: `enabled` and `variant`, config version 1.
        // A missing or non-boolean `enabled` is off (the SDK specification).
        let enabled = raw
            .enabled
            .as_ref()
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let variant = typed(raw.variant.as_ref(), "variant", string)?;
        if let Some(m) = &mut metadata {
            if !failed {
                m.payload = raw_payload();
            }
            if metadata_fields.is_some_and(|f| !f.is_empty()) {
                m.config_version = Some(1);
            }
        }
        return Ok(Read {
            enabled,
            variant,
            reason,
            has_metadata: metadata.is_some(),
            metadata,
            failed,
        });
    };
    // A `/flags?v=4` record: a typed value.
    let value = match value {
        Value::Array(_) => return Err(Malformed("value")),
        _ if failed => &Value::Null,
        v => v,
    };
    let (enabled, variant, value_payload) = match value {
        Value::Null => (false, None, None),
        Value::Bool(b) => (*b, None, None),
        Value::String(s) => (true, Some(s.clone()), None),
        other => (true, None, Some(other.to_string())),
    };
    if let Some(m) = &mut metadata {
        m.payload = value_payload.or_else(|| if failed { None } else { raw_payload() });
        m.config_version = typed(field("config_version"), "metadata.config_version", integer)?;
        m.rule_type = typed(field("rule_type"), "metadata.rule_type", string)?;
        m.rule_id = typed(field("rule_id"), "metadata.rule_id", string)?;
        m.variant_key = typed(field("variant_key"), "metadata.variant_key", string)?;
        m.forced_variant = typed(field("forced_variant"), "metadata.forced_variant", boolean)?;
        m.experiment_id = typed(field("experiment_id"), "metadata.experiment_id", integer)?;
    } else if value_payload.is_some() {
        metadata = Some(FlagMetadata {
            payload: value_payload,
            ..FlagMetadata::default()
        });
    }
    Ok(Read {
        enabled,
        variant,
        reason,
        metadata,
        failed,
        has_metadata: metadata_fields.is_some(),
    })
}

fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(d).map(Some)
}

fn lenient_bool<'de, D: serde::Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    Ok(matches!(
        Option::<Value>::deserialize(d)?,
        Some(Value::Bool(true))
    ))
}

fn lenient_opt_bool<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<bool>, D::Error> {
    Ok(Option::<Value>::deserialize(d)?.and_then(|v| v.as_bool()))
}

fn lenient_i64<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    Ok(Option::<Value>::deserialize(d)?.and_then(|v| v.as_i64()))
}

fn payload_text<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(match Option::<Value>::deserialize(d)? {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s),
        Some(other) => Some(other.to_string()),
    })
}

/// A `/flags` response body could not be parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InvalidFlagsResponse(pub(crate) String);

impl fmt::Display for InvalidFlagsResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid /flags response: {}", self.0)
    }
}

impl std::error::Error for InvalidFlagsResponse {}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_v2() {
        let body = json!({
            "flags": {
                "beta": {"key": "beta", "enabled": true, "variant": null,
                         "reason": {"code": "condition_match", "condition_index": 0, "description": "Matched condition set 1"},
                         "metadata": {"id": 23, "version": 42, "payload": "{\"a\":1}"}},
                "exp": {"key": "exp", "enabled": true, "variant": "test", "metadata": {"id": 2}},
                "off": {"key": "off", "enabled": false}
            },
            "errorsWhileComputingFlags": false,
            "requestId": "req-1",
            "evaluatedAt": 1234567890,
            "quotaLimited": []
        });
        let r = FlagsResponse::from_json(body.to_string().as_bytes()).unwrap();
        assert_eq!(r.flags["beta"].value(), FlagValue::Bool(true));
        assert_eq!(
            r.flags["beta"].metadata.payload.as_deref(),
            Some("{\"a\":1}")
        );
        assert_eq!(r.flags["beta"].metadata.version, Some(42));
        assert_eq!(r.flags["exp"].value(), FlagValue::Variant("test".into()));
        assert_eq!(r.flags["off"].value(), FlagValue::Bool(false));
        assert_eq!(r.request_id.as_deref(), Some("req-1"));
        assert_eq!(r.evaluated_at, Some(1234567890));
        assert!(!r.is_quota_limited());
    }

    #[test]
    fn parses_v1_and_prefers_v2() {
        let body = json!({
            "featureFlags": {"a": true, "b": "variant-a", "c": false},
            "featureFlagPayloads": {"a": "{\"x\":1}", "b": {"y": 2}},
            "errorsWhileComputingFlags": true,
            "quotaLimited": ["feature_flags"]
        });
        let r = FlagsResponse::from_json(body.to_string().as_bytes()).unwrap();
        assert_eq!(r.flags["a"].value(), FlagValue::Bool(true));
        assert_eq!(r.flags["b"].value(), FlagValue::Variant("variant-a".into()));
        assert_eq!(r.flags["c"].value(), FlagValue::Bool(false));
        assert_eq!(r.flags["b"].metadata.payload.as_deref(), Some("{\"y\":2}"));
        assert!(r.errors_while_computing_flags);
        assert!(r.is_quota_limited());

        let both = json!({"featureFlags": {}, "flags": {"z": {"enabled": true}}});
        let r = FlagsResponse::from_json(both.to_string().as_bytes()).unwrap();
        assert_eq!(r.flags.len(), 1);
        assert_eq!(r.flags["z"].key, "z");
    }

    #[test]
    fn malformed_bodies_are_errors() {
        for body in [
            "",
            "null",
            "[1]",
            "{\"flags\": 3}",
            "{\"featureFlags\": {\"a\": 3}}",
            "{",
        ] {
            assert!(FlagsResponse::from_json(body.as_bytes()).is_err(), "{body}");
        }
        assert!(FlagsResponse::from_json(b"{}").unwrap().flags.is_empty());
    }

    #[test]
    fn parses_v4_records() {
        let rule = "0f8e6a52-5b8e-4f4c-9a39-5d3c2c8f6b21";
        let body = json!({
            "flags": {
                "split": {"key": "split", "value": "test", "failed": false,
                    "reason": {"code": "experiment_split", "condition_index": 2, "description": "Assigned"},
                    "metadata": {"id": 7, "version": 3.0, "config_version": 2, "rule_id": rule,
                                 "rule_type": "experiment", "variant_key": "test",
                                 "forced_variant": false, "experiment_id": 11,
                                 "has_experiment": true, "payload": "{\"a\":1}",
                                 "future": {"deep": [1, 2, 3]}}},
                "number": {"value": 42, "metadata": {"payload": "\"ignored\""}},
                "object": {"value": {"x": 1}},
                "none": {"value": null, "metadata": {"config_version": 2}},
                "failed": {"value": true, "failed": true, "metadata": {"payload": "1", "config_version": 2}},
                "wrong_type": {"value": true, "metadata": {"rule_id": 5}},
                "array_value": {"value": [1]},
                "not_an_object": 3,
                "v2": {"enabled": true, "variant": "b", "metadata": {"id": 1}}
            },
            "requestId": "req", "evaluatedAt": 1700000000000_i64
        });
        let r = FlagsResponse::from_json(body.to_string().as_bytes()).unwrap();
        let split = &r.flags["split"];
        assert_eq!(split.value(), FlagValue::Variant("test".into()));
        assert!(!split.failed);
        let m = &split.metadata;
        assert_eq!(
            (m.id, m.version, m.config_version),
            (Some(7), Some(3), Some(2))
        );
        assert_eq!(m.rule_id.as_deref(), Some(rule));
        assert_eq!(m.rule_type.as_deref(), Some("experiment"));
        assert_eq!(m.variant_key.as_deref(), Some("test"));
        assert_eq!((m.forced_variant, m.experiment_id), (Some(false), Some(11)));
        assert_eq!(m.has_experiment, Some(true));
        assert_eq!(m.payload.as_deref(), Some("{\"a\":1}"));
        assert_eq!(
            split.reason.as_ref().unwrap().code.as_deref(),
            Some("experiment_split")
        );
        // A number or object value is an enabled flag whose payload is the value.
        assert_eq!(r.flags["number"].value(), FlagValue::Bool(true));
        assert_eq!(r.flags["number"].metadata.payload.as_deref(), Some("42"));
        assert_eq!(
            r.flags["object"].metadata.payload.as_deref(),
            Some("{\"x\":1}")
        );
        assert!(!r.flags["object"].has_metadata);
        assert_eq!(r.flags["none"].value(), FlagValue::Bool(false));
        // A failed record has no value and no payload, whatever it carries.
        let failed = &r.flags["failed"];
        assert!(failed.failed);
        assert_eq!(failed.value(), FlagValue::Bool(false));
        assert_eq!(failed.metadata.payload, None);
        assert_eq!(failed.metadata.config_version, Some(2));
        // A known field of the wrong type fails only its record.
        for key in ["wrong_type", "array_value", "not_an_object"] {
            assert!(r.flags[key].failed, "{key}");
            assert_eq!(r.flags[key].value(), FlagValue::Bool(false), "{key}");
            assert_eq!(r.flags[key].metadata.config_version, None, "{key}");
        }
        // An older record is config version 1.
        assert_eq!(r.flags["v2"].value(), FlagValue::Variant("b".into()));
        assert_eq!(r.flags["v2"].metadata.config_version, Some(1));
        assert_eq!(r.request_id.as_deref(), Some("req"));
    }
}
