//! What the single-flag and all-flags calls return.

use std::collections::HashMap;

use serde_json::Value;

use super::{FlagError, FlagRecord, FlagValue};

/// A flag's value, payload and reason, from one evaluation.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct FeatureFlagResult {
    /// The flag's key.
    pub key: String,
    /// Its value.
    pub value: FlagValue,
    /// The decoded payload for this value, if any.
    pub payload: Option<Value>,
    /// Why it has this value (e.g. `Matched condition set 1`, or `Evaluated locally`).
    pub reason: Option<String>,
    /// The flag's id.
    pub id: Option<i64>,
    /// The flag's version.
    pub version: Option<i64>,
    /// Evaluated in-process from polled definitions.
    pub locally_evaluated: bool,
    /// The server's request id.
    pub request_id: Option<String>,
    /// `Some` when `/flags` failed and this is the last good value from the fallback cache
    /// (at most an hour old); it says why the fresh evaluation failed.
    pub stale_because: Option<FlagError>,
}

impl FeatureFlagResult {
    /// The result of `key` from its record in an evaluation (`request_id`: the server's).
    pub(crate) fn from_record(key: &str, record: &FlagRecord, request_id: Option<&str>) -> Self {
        FeatureFlagResult {
            key: key.to_owned(),
            value: record.value.clone(),
            payload: record.payload.clone(),
            reason: record.reason.clone(),
            id: record.id,
            version: record.version,
            locally_evaluated: record.locally_evaluated,
            request_id: request_id.map(str::to_owned),
            stale_because: None,
        }
    }

    /// Whether the flag is on (a variant counts as on).
    pub fn is_enabled(&self) -> bool {
        self.value.is_enabled()
    }

    /// The variant, for a multivariate flag.
    pub fn variant(&self) -> Option<&str> {
        self.value.variant()
    }

    /// Decodes the payload into `T`.
    pub fn payload_as<T: serde::de::DeserializeOwned>(&self) -> Result<Option<T>, FlagError> {
        self.payload
            .clone()
            .map(serde_json::from_value)
            .transpose()
            .map_err(|e| FlagError::InvalidPayload(e.to_string()))
    }
}

/// Every flag's value, and the payloads of the enabled ones (decoded).
#[derive(Clone, Debug, Default, PartialEq)]
#[non_exhaustive]
pub struct AllFlags {
    /// Values by key.
    pub flags: HashMap<String, FlagValue>,
    /// Decoded payloads by key, for enabled flags that have one.
    pub payloads: HashMap<String, Value>,
}
