//! `/flags?v=4` answers for [`MockPostHog`](super::MockPostHog): [`V4Flag`] records and
//! [`MockResponse::flags_v4`].

use serde_json::{json, Map, Value};

use super::MockResponse;

/// One flag record of a `/flags?v=4` answer, as PostHog sends it: a typed `value`, `failed`,
/// a `reason` with its `code` and `description`, and `metadata` with the flag's id, version,
/// payload, `has_experiment`, `config_version` and the rule that produced the result
/// (`rule_id`, `rule_type`, `variant_key`, `forced_variant`, `experiment_id`).
///
/// [`V4Flag::new`] starts a config version 2 record (id 1, version 1) with no reason; the
/// setters add what a test needs, and [`V4Flag::experiment_split`] and
/// [`V4Flag::targeting_match`] build the two common outcomes.
///
/// # Example
///
/// ```
/// use posthog_tower::testing::{MockResponse, V4Flag};
///
/// const RULE: &str = "0f8e6a52-5b8e-4f4c-9a39-5d3c2c8f6b21";
/// let answer = MockResponse::flags_v4([
///     V4Flag::experiment_split("checkout", "test", RULE),
///     V4Flag::targeting_match("beta", true, RULE, "targeted_release"),
///     V4Flag::new("off", false).reason("no_condition_match", "No matching condition"),
/// ]);
/// # let _ = answer;
/// let record = V4Flag::experiment_split("checkout", "test", RULE).to_json();
/// assert_eq!(record["value"], "test");
/// assert_eq!(record["metadata"]["rule_type"], "experiment");
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct V4Flag {
    key: String,
    record: Map<String, Value>,
    metadata: Map<String, Value>,
    reason: Option<Map<String, Value>>,
}

impl V4Flag {
    /// A config version 2 record of `key` with this value (`true`/`false`, a variant
    /// string, or a number or object, which PostHog sends for a flag whose value is its
    /// payload; `Value::Null` for no value).
    pub fn new(key: impl Into<String>, value: impl Into<Value>) -> Self {
        let key = key.into();
        let mut record = Map::new();
        record.insert("key".into(), Value::String(key.clone()));
        record.insert("value".into(), value.into());
        record.insert("failed".into(), Value::Bool(false));
        let mut metadata = Map::new();
        metadata.insert("id".into(), json!(1));
        metadata.insert("version".into(), json!(1));
        metadata.insert("config_version".into(), json!(2));
        V4Flag {
            key,
            record,
            metadata,
            reason: None,
        }
    }

    /// An experiment's variant: reason `experiment_split`, rule type `experiment`, the rule
    /// id, and the variant as both the value and `variant_key`, with `has_experiment`.
    pub fn experiment_split(key: impl Into<String>, variant: &str, rule_id: &str) -> Self {
        V4Flag::new(key, variant)
            .reason("experiment_split", "Assigned by experiment")
            .rule(rule_id, "experiment")
            .variant_key(variant)
            .has_experiment(true)
    }

    /// A release condition matched: reason `targeting_match` with this rule.
    pub fn targeting_match(
        key: impl Into<String>,
        value: impl Into<Value>,
        rule_id: &str,
        rule_type: &str,
    ) -> Self {
        V4Flag::new(key, value)
            .reason("targeting_match", "Matched condition set 1")
            .rule(rule_id, rule_type)
    }

    /// Sets `reason.code` and `reason.description`.
    pub fn reason(mut self, code: &str, description: &str) -> Self {
        let reason = self.reason.get_or_insert_with(Map::new);
        reason.insert("code".into(), json!(code));
        reason.insert("description".into(), json!(description));
        self
    }

    /// Sets `metadata.rule_id` and `metadata.rule_type`.
    pub fn rule(self, rule_id: &str, rule_type: &str) -> Self {
        self.metadata_field("rule_id", rule_id)
            .metadata_field("rule_type", rule_type)
    }

    /// Sets `metadata.variant_key`.
    pub fn variant_key(self, variant: &str) -> Self {
        self.metadata_field("variant_key", variant)
    }

    /// Marks the record failed (`failed: true`, no value).
    pub fn failed(mut self) -> Self {
        self.record.insert("failed".into(), Value::Bool(true));
        self.record.insert("value".into(), Value::Null);
        self
    }

    /// Sets `metadata.config_version` (`1` for the older configuration format).
    pub fn config_version(self, version: i64) -> Self {
        self.metadata_field("config_version", version)
    }

    /// Sets `metadata.has_experiment`.
    pub fn has_experiment(self, has: bool) -> Self {
        self.metadata_field("has_experiment", has)
    }

    /// Sets `metadata.forced_variant`.
    pub fn forced_variant(self, forced: bool) -> Self {
        self.metadata_field("forced_variant", forced)
    }

    /// Sets `metadata.experiment_id`.
    pub fn experiment_id(self, id: i64) -> Self {
        self.metadata_field("experiment_id", id)
    }

    /// Sets `metadata.payload` (the JSON text PostHog stores).
    pub fn payload(self, payload: &str) -> Self {
        self.metadata_field("payload", payload)
    }

    /// Sets `metadata.id` and `metadata.version`.
    pub fn id_version(self, id: i64, version: i64) -> Self {
        self.metadata_field("id", id)
            .metadata_field("version", version)
    }

    /// Sets any metadata field (or replaces one), for records PostHog may send in future or
    /// malformed ones.
    pub fn metadata_field(mut self, name: &str, value: impl Into<Value>) -> Self {
        self.metadata.insert(name.into(), value.into());
        self
    }

    /// Removes a metadata field.
    pub fn without_metadata_field(mut self, name: &str) -> Self {
        self.metadata.remove(name);
        self
    }

    /// The flag's key.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The record as PostHog sends it.
    pub fn to_json(&self) -> Value {
        let mut record = self.record.clone();
        if let Some(reason) = &self.reason {
            record.insert("reason".into(), Value::Object(reason.clone()));
        }
        record.insert("metadata".into(), Value::Object(self.metadata.clone()));
        Value::Object(record)
    }
}

impl MockResponse {
    /// A 200 `/flags?v=4` answer with these records, request id `mock-v4` and an evaluation
    /// time (`evaluatedAt`, 1 700 000 000 000 ms).
    ///
    /// ```
    /// use posthog_tower::testing::{MockResponse, V4Flag};
    ///
    /// let answer = MockResponse::flags_v4([V4Flag::new("beta", true)]);
    /// # let _ = answer;
    /// ```
    pub fn flags_v4(records: impl IntoIterator<Item = V4Flag>) -> Self {
        let flags: Map<String, Value> = records
            .into_iter()
            .map(|r| (r.key.clone(), r.to_json()))
            .collect();
        MockResponse::json(
            200,
            json!({
                "flags": flags,
                "errorsWhileComputingFlags": false,
                "requestId": "mock-v4",
                "evaluatedAt": 1_700_000_000_000_i64,
            }),
        )
    }
}

/// The path PostHog serves flag `key`'s remote config payload on (the query carries the
/// project token): `/api/projects/@current/feature_flags/{key}/remote_config`.
///
/// ```
/// use posthog_tower::testing::remote_config_path;
///
/// assert_eq!(
///     remote_config_path("checkout"),
///     "/api/projects/@current/feature_flags/checkout/remote_config"
/// );
/// ```
pub fn remote_config_path(key: &str) -> String {
    format!("/api/projects/@current/feature_flags/{key}/remote_config")
}

impl super::MockPostHog {
    /// Serves `payload` as flag `key`'s remote config, as PostHog does: a 200 answer whose
    /// body is the payload's JSON text as a JSON string (`null` for `None`). Requests are
    /// recorded like any other (see [`remote_config_path`]); the mock does not check the
    /// `Authorization` header, tests do.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use posthog_tower::testing::MockPostHog;
    ///
    /// let mock = MockPostHog::start().await?;
    /// mock.set_remote_config("checkout", Some(serde_json::json!({"max_items": 3})));
    /// # mock.shutdown().await;
    /// # Ok(())
    /// # }
    /// ```
    pub fn set_remote_config(&self, key: &str, payload: Option<Value>) {
        let body = match payload {
            Some(payload) => Value::String(payload.to_string()),
            None => Value::Null,
        };
        self.set_default(&remote_config_path(key), MockResponse::json(200, body));
    }
}
