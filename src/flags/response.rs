//! The `/flags` response: [`FlagsResponse`] and the records it holds.

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
}

/// One flag of a `/flags` response.
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
    /// Id, version, payload.
    pub metadata: FlagMetadata,
}

impl FlagDetail {
    /// The flag's value: the variant if there is one, else whether it is enabled.
    pub fn value(&self) -> FlagValue {
        match (&self.variant, self.enabled) {
            (Some(v), true) if !v.is_empty() => FlagValue::Variant(v.clone()),
            (_, enabled) => FlagValue::Bool(enabled),
        }
    }
}

/// A parsed `/flags` response (v2, or the legacy v1 shape normalized to it).
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
                    flags.insert(
                        key.clone(),
                        FlagDetail {
                            key,
                            enabled: flag.enabled,
                            variant: flag.variant,
                            reason: flag.reason,
                            metadata: flag.metadata.unwrap_or_default(),
                        },
                    );
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
    flags: Option<HashMap<String, RawFlag>>,
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

#[derive(Deserialize)]
struct RawFlag {
    #[serde(default, deserialize_with = "lenient_bool")]
    enabled: bool,
    #[serde(default)]
    variant: Option<String>,
    #[serde(default)]
    reason: Option<FlagReason>,
    #[serde(default)]
    metadata: Option<FlagMetadata>,
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
}
