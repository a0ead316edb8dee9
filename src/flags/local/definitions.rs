//! The `GET /flags/definitions` response, as served.
//!
//! Parsing is lenient: PostHog's own SDK reads the definitions as loose JSON and only trips over
//! a malformed part when an evaluation reaches it. So every part whose shape can be wrong is kept
//! as [`Lenient`]: the typed value when it has the expected shape, the raw JSON otherwise. The
//! compiler ([`super::compiled`]) decides what a malformed part means (skipped, false or
//! inconclusive), following posthog-python. Only a response that is not an object, or whose
//! `flags` is neither a list nor null, is rejected as a whole.

use std::fmt;

use serde::de::{DeserializeOwned, Deserializer};
use serde::Deserialize;
use serde_json::{Map, Value};

/// Why a definitions response was rejected as a whole (the previous definitions stay in use).
#[derive(Debug)]
pub(crate) enum DefinitionsError {
    /// The body is not JSON.
    Json(serde_json::Error),
    /// The JSON is not a definitions response.
    Shape(&'static str),
}

impl fmt::Display for DefinitionsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DefinitionsError::Json(e) => write!(f, "flag definitions are not valid JSON: {e}"),
            DefinitionsError::Shape(what) => write!(f, "invalid flag definitions: {what}"),
        }
    }
}

impl std::error::Error for DefinitionsError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            DefinitionsError::Json(e) => Some(e),
            DefinitionsError::Shape(_) => None,
        }
    }
}

/// A JSON type a [`Lenient`] part must have to be read as its typed form.
pub(crate) trait JsonShape {
    fn has_shape(value: &Value) -> bool;
}

impl<T> JsonShape for Vec<T> {
    fn has_shape(value: &Value) -> bool {
        value.is_array()
    }
}

impl JsonShape for Map<String, Value> {
    fn has_shape(value: &Value) -> bool {
        value.is_object()
    }
}

/// A part of the definitions: `Valid` when it has the expected shape, else the raw JSON
/// (`Invalid(Value::Null)` when it is absent or null).
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Lenient<T> {
    Valid(T),
    Invalid(Value),
}

impl<T> Default for Lenient<T> {
    fn default() -> Self {
        Lenient::Invalid(Value::Null)
    }
}

impl<T> Lenient<T> {
    pub(crate) fn valid(&self) -> Option<&T> {
        match self {
            Lenient::Valid(v) => Some(v),
            Lenient::Invalid(_) => None,
        }
    }
}

impl<'de, T: DeserializeOwned + JsonShape> Deserialize<'de> for Lenient<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = Value::deserialize(deserializer)?;
        Ok(Lenient::from_value(raw))
    }
}

impl<T: DeserializeOwned + JsonShape> Lenient<T> {
    pub(crate) fn from_value(raw: Value) -> Self {
        if !T::has_shape(&raw) {
            return Lenient::Invalid(raw);
        }
        match T::deserialize(&raw) {
            Ok(typed) => Lenient::Valid(typed),
            Err(_) => Lenient::Invalid(raw),
        }
    }
}

/// Python truthiness of a JSON value, which is how posthog-python reads most flag settings.
pub(crate) fn truthy(value: &Value) -> bool {
    match value {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
    }
}

/// Keeps a present field even when it is `null` (`Some(Value::Null)`); an absent field is `None`
/// through `#[serde(default)]`.
fn present<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(deserializer).map(Some)
}

/// `GET /flags/definitions?token=…&send_cohorts`.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
pub(crate) struct Definitions {
    /// The flag definitions, in the order served. Non-objects are kept as `Invalid`.
    #[serde(default)]
    pub(crate) flags: Lenient<Vec<Lenient<FlagDefinition>>>,
    /// Group type index (as a string) to group type name: `{"0": "company"}`.
    #[serde(default)]
    pub(crate) group_type_mapping: Lenient<Map<String, Value>>,
    /// Cohort id (as a string) to its property group.
    #[serde(default)]
    pub(crate) cohorts: Lenient<Map<String, Value>>,
    /// `2` selects explicit boolean matching; absent, `1` or anything else is legacy matching.
    #[serde(default)]
    pub(crate) property_matching_version: Value,
    /// `true` asks for minimal `$feature_flag_called` events.
    #[serde(default)]
    pub(crate) minimal_flag_called_events: Value,
}

impl Definitions {
    /// Parses a response body. Fails only when the body is not JSON, not an object, lacks
    /// `flags`, or has a `flags` that is neither a list nor null.
    ///
    /// The whole body is parsed as one [`Value`], so serde_json's recursion limit (128
    /// levels; nothing in the crate's dependency graph enables `unbounded_depth`) refuses a
    /// body nested deeper, wherever the nesting is. That bounds every later walk over the
    /// definitions' JSON: the typed pass below, the compiler's walk over nested property
    /// groups, the operators' walks over filter values, and `Drop`.
    pub(crate) fn from_json(bytes: &[u8]) -> Result<Definitions, DefinitionsError> {
        let raw: Value = serde_json::from_slice(bytes).map_err(DefinitionsError::Json)?;
        Definitions::from_value(raw)
    }

    /// As [`Definitions::from_json`], from parsed JSON.
    pub(crate) fn from_value(raw: Value) -> Result<Definitions, DefinitionsError> {
        let Value::Object(object) = &raw else {
            return Err(DefinitionsError::Shape("the response is not an object"));
        };
        match object.get("flags") {
            None => return Err(DefinitionsError::Shape("`flags` is missing")),
            Some(Value::Null | Value::Array(_)) => {}
            Some(_) => return Err(DefinitionsError::Shape("`flags` is not a list")),
        }
        Definitions::deserialize(raw).map_err(DefinitionsError::Json)
    }

    /// The flag definitions that are objects, in the order served.
    pub(crate) fn flag_definitions(&self) -> impl Iterator<Item = &FlagDefinition> {
        self.flags
            .valid()
            .into_iter()
            .flatten()
            .filter_map(Lenient::valid)
    }

    /// `property_matching_version` as a number: 2 for explicit matching, else the version
    /// given, else 1.
    pub(crate) fn property_matching_version(&self) -> u32 {
        let n = &self.property_matching_version;
        if n.as_f64() == Some(2.0) {
            return 2;
        }
        n.as_u64().and_then(|v| u32::try_from(v).ok()).unwrap_or(1)
    }

    /// Whether PostHog asks for minimal `$feature_flag_called` events (only literal `true`).
    pub(crate) fn minimal_flag_called_events(&self) -> bool {
        self.minimal_flag_called_events == Value::Bool(true)
    }
}

/// One flag definition. Scalar settings stay raw JSON: posthog-python reads them by
/// truthiness (`active`, `ensure_experience_continuity`) or by exact type (`id`,
/// `has_experiment`), and the compiler does the same.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
pub(crate) struct FlagDefinition {
    #[serde(default)]
    pub(crate) id: Value,
    /// The flag key; a flag whose key is not a string is not loaded.
    #[serde(default)]
    pub(crate) key: Value,
    #[serde(default)]
    pub(crate) active: Value,
    #[serde(default)]
    pub(crate) ensure_experience_continuity: Value,
    #[serde(default)]
    pub(crate) has_experiment: Value,
    /// `"device_id"` buckets by device id (also read from `filters`).
    #[serde(default)]
    pub(crate) bucketing_identifier: Value,
    #[serde(default)]
    pub(crate) filters: Lenient<FlagFilters>,
    /// The evaluation environments the flag is restricted to (see `super::environments`).
    #[serde(default)]
    pub(crate) evaluation_tags: Value,
}

impl JsonShape for FlagDefinition {
    fn has_shape(value: &Value) -> bool {
        value.is_object()
    }
}

/// A flag's `filters`.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
pub(crate) struct FlagFilters {
    /// Release conditions, in evaluation order.
    #[serde(default)]
    pub(crate) groups: Lenient<Vec<Lenient<ConditionDefinition>>>,
    #[serde(default)]
    pub(crate) multivariate: Lenient<MultivariateDefinition>,
    /// Value key (`"true"`, `"false"` or a variant) to the payload, a JSON string.
    #[serde(default)]
    pub(crate) payloads: Lenient<Map<String, Value>>,
    /// Set for a group flag: the group type index, looked up in `group_type_mapping`.
    #[serde(default)]
    pub(crate) aggregation_group_type_index: Value,
    #[serde(default)]
    pub(crate) early_exit: Value,
    #[serde(default)]
    pub(crate) bucketing_identifier: Value,
    #[serde(default)]
    pub(crate) holdout: Lenient<HoldoutDefinition>,
    /// Only literal `true` turns early-access enrollment on.
    #[serde(default)]
    pub(crate) feature_enrollment: Value,
}

impl JsonShape for FlagFilters {
    fn has_shape(value: &Value) -> bool {
        value.is_object()
    }
}

/// One release condition (a "condition set" in PostHog's UI).
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
pub(crate) struct ConditionDefinition {
    /// Property filters (person, group, cohort or flag), all of which must match. Kept raw:
    /// each is compiled on its own.
    #[serde(default)]
    pub(crate) properties: Value,
    #[serde(default)]
    pub(crate) rollout_percentage: Value,
    /// A variant override; used only when it names one of the flag's variants.
    #[serde(default)]
    pub(crate) variant: Value,
    /// Present (even `null`) on a mixed-targeting condition; absent means the flag's own.
    #[serde(default, deserialize_with = "present")]
    pub(crate) aggregation_group_type_index: Option<Value>,
}

impl JsonShape for ConditionDefinition {
    fn has_shape(value: &Value) -> bool {
        value.is_object()
    }
}

/// `filters.multivariate`.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
pub(crate) struct MultivariateDefinition {
    #[serde(default)]
    pub(crate) variants: Lenient<Vec<Lenient<VariantDefinition>>>,
}

impl JsonShape for MultivariateDefinition {
    fn has_shape(value: &Value) -> bool {
        value.is_object()
    }
}

/// One variant of a multivariate flag.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
pub(crate) struct VariantDefinition {
    /// Absent is malformed; present (even `null`) is kept.
    #[serde(default, deserialize_with = "present")]
    pub(crate) key: Option<Value>,
    #[serde(default)]
    pub(crate) rollout_percentage: Value,
}

impl JsonShape for VariantDefinition {
    fn has_shape(value: &Value) -> bool {
        value.is_object()
    }
}

/// `filters.holdout`: an experiment holdout group checked before the release conditions.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
pub(crate) struct HoldoutDefinition {
    #[serde(default)]
    pub(crate) id: Value,
    #[serde(default)]
    pub(crate) exclusion_percentage: Value,
}

impl JsonShape for HoldoutDefinition {
    fn has_shape(value: &Value) -> bool {
        value.is_object()
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn parses_a_full_response() {
        let body = json!({
            "flags": [{
                "id": 7,
                "key": "beta",
                "active": true,
                "ensure_experience_continuity": false,
                "has_experiment": true,
                "bucketing_identifier": "device_id",
                "filters": {
                    "groups": [{
                        "properties": [{"key": "plan", "value": "pro", "type": "person"}],
                        "rollout_percentage": 50,
                        "variant": "a",
                        "aggregation_group_type_index": null
                    }],
                    "multivariate": {"variants": [{"key": "a", "rollout_percentage": 100}]},
                    "payloads": {"a": "{\"x\":1}"},
                    "aggregation_group_type_index": 0,
                    "early_exit": true,
                    "holdout": {"id": 3, "exclusion_percentage": 10},
                    "feature_enrollment": true,
                    "some_future_field": [1, 2]
                }
            }],
            "group_type_mapping": {"0": "company"},
            "cohorts": {"5": {"type": "AND", "values": []}},
            "property_matching_version": 2,
            "minimal_flag_called_events": true
        });
        let defs = Definitions::from_json(body.to_string().as_bytes()).unwrap();
        let flag = defs.flag_definitions().next().unwrap();
        assert_eq!(flag.key, json!("beta"));
        assert_eq!(flag.id, json!(7));
        let filters = flag.filters.valid().unwrap();
        let conditions = filters.groups.valid().unwrap();
        let condition = conditions[0].valid().unwrap();
        assert_eq!(condition.aggregation_group_type_index, Some(Value::Null));
        assert_eq!(condition.rollout_percentage, json!(50));
        let variants = filters
            .multivariate
            .valid()
            .unwrap()
            .variants
            .valid()
            .unwrap();
        assert_eq!(variants[0].valid().unwrap().key, Some(json!("a")));
        assert_eq!(filters.holdout.valid().unwrap().id, json!(3));
        assert_eq!(defs.property_matching_version(), 2);
        assert!(defs.minimal_flag_called_events());
        assert_eq!(
            defs.group_type_mapping.valid().unwrap()["0"],
            json!("company")
        );
    }

    #[test]
    fn absent_condition_aggregation_differs_from_null() {
        let c: ConditionDefinition = serde_json::from_value(json!({})).unwrap();
        assert_eq!(c.aggregation_group_type_index, None);
        let c: ConditionDefinition =
            serde_json::from_value(json!({"aggregation_group_type_index": 1})).unwrap();
        assert_eq!(c.aggregation_group_type_index, Some(json!(1)));
    }

    #[test]
    fn malformed_parts_are_kept_raw() {
        let body = json!({
            "flags": [
                42,
                {"key": "a", "filters": [1, 2]},
                {"key": "b", "filters": {"groups": "nope", "multivariate": [1], "holdout": 5}},
                {"key": "c", "filters": {"groups": [7, {"properties": {"x": 1}}]}}
            ],
            "group_type_mapping": [],
            "cohorts": "x"
        });
        let defs = Definitions::from_json(body.to_string().as_bytes()).unwrap();
        let flags = defs.flags.valid().unwrap();
        assert_eq!(flags[0], Lenient::Invalid(json!(42)));
        assert_eq!(defs.flag_definitions().count(), 3);
        let a = flags[1].valid().unwrap();
        assert_eq!(a.filters, Lenient::Invalid(json!([1, 2])));
        let b = flags[2].valid().unwrap().filters.valid().unwrap();
        assert_eq!(b.groups, Lenient::Invalid(json!("nope")));
        assert_eq!(b.multivariate, Lenient::Invalid(json!([1])));
        assert_eq!(b.holdout, Lenient::Invalid(json!(5)));
        let c = flags[3].valid().unwrap().filters.valid().unwrap();
        let groups = c.groups.valid().unwrap();
        assert_eq!(groups[0], Lenient::Invalid(json!(7)));
        assert_eq!(groups[1].valid().unwrap().properties, json!({"x": 1}));
        assert_eq!(defs.group_type_mapping, Lenient::Invalid(json!([])));
        assert_eq!(defs.cohorts, Lenient::Invalid(json!("x")));
        assert_eq!(defs.property_matching_version(), 1);
        assert!(!defs.minimal_flag_called_events());
    }

    #[test]
    fn rejects_only_what_cannot_be_definitions() {
        assert!(matches!(
            Definitions::from_json(b"not json"),
            Err(DefinitionsError::Json(_))
        ));
        assert!(matches!(
            Definitions::from_json(b"[]"),
            Err(DefinitionsError::Shape(_))
        ));
        assert!(matches!(
            Definitions::from_json(b"{}"),
            Err(DefinitionsError::Shape(_))
        ));
        assert!(matches!(
            Definitions::from_json(br#"{"flags": {}}"#),
            Err(DefinitionsError::Shape(_))
        ));
        let defs = Definitions::from_json(br#"{"flags": null}"#).unwrap();
        assert_eq!(defs.flag_definitions().count(), 0);
        // Duplicate keys: the last one wins, as in Python's json module.
        let defs = Definitions::from_json(br#"{"flags": [{"key": "a", "key": "b"}]}"#).unwrap();
        assert_eq!(defs.flag_definitions().next().unwrap().key, json!("b"));
    }

    #[test]
    fn property_matching_version_reads_like_python() {
        for (raw, want) in [
            (json!(null), 1),
            (json!(1), 1),
            (json!(2), 2),
            (json!(2.0), 2),
            (json!(3), 3),
            (json!("2"), 1),
            (json!(-1), 1),
        ] {
            let defs = Definitions {
                property_matching_version: raw.clone(),
                ..Definitions::default()
            };
            assert_eq!(defs.property_matching_version(), want, "{raw}");
        }
    }

    #[test]
    fn truthiness_is_pythons() {
        for falsy in [
            json!(null),
            json!(false),
            json!(0),
            json!(0.0),
            json!(""),
            json!([]),
            json!({}),
        ] {
            assert!(!truthy(&falsy), "{falsy}");
        }
        for t in [
            json!(true),
            json!(1),
            json!(-0.5),
            json!("x"),
            json!([0]),
            json!({"a": null}),
        ] {
            assert!(truthy(&t), "{t}");
        }
    }
}
