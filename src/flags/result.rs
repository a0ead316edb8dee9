//! What the single-flag and all-flags calls return.

use std::collections::HashMap;

use serde_json::Value;

use super::{FlagError, FlagRecord, FlagValue};

/// One flag from one evaluation: its [record](FlagRecord) (value, payload, attribution) as a
/// snapshot holds it, and what a single-flag lookup adds.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct FeatureFlagResult {
    /// The flag's key.
    pub key: String,
    /// Its value, payload and attribution.
    pub record: FlagRecord,
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
            record: record.clone(),
            request_id: request_id.map(str::to_owned),
            stale_because: None,
        }
    }

    /// Whether the flag is on (a variant counts as on).
    pub fn is_enabled(&self) -> bool {
        self.record.value.is_enabled()
    }

    /// The variant, for a multivariate flag.
    pub fn variant(&self) -> Option<&str> {
        self.record.value.variant()
    }

    /// Decodes the payload into `T`.
    pub fn payload_as<T: serde::de::DeserializeOwned>(&self) -> Result<Option<T>, FlagError> {
        self.record
            .payload
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
