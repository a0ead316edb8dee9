//! [`FlagsRequest`]: who and what to evaluate flags for, and the `/flags` body it becomes.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::{Map, Value};

// The deepest nesting of arrays and objects a request property may have, as for event
// properties: the `/flags` body around it stays within the 128 levels JSON parsers accept,
// and the local matcher's walks over property values stay this shallow.
use crate::event::MAX_PROPERTY_DEPTH;

/// `properties` without the values nested more than [`MAX_PROPERTY_DEPTH`] levels deep.
fn within_depth(properties: Map<String, Value>) -> Map<String, Value> {
    if !properties
        .values()
        .any(|v| nests_deeper_than(v, MAX_PROPERTY_DEPTH))
    {
        return properties;
    }
    let mut kept = Map::new();
    for (key, value) in properties {
        if nests_deeper_than(&value, MAX_PROPERTY_DEPTH) {
            tracing::warn!(
                property = %key,
                "posthog: a flag request property nested more than {MAX_PROPERTY_DEPTH} levels deep was left out"
            );
            drop_flat(value);
        } else {
            kept.insert(key, value);
        }
    }
    kept
}

/// Whether `value` nests arrays and objects more than `limit` levels deep. It stops as soon
/// as it knows, so it never recurses more than `limit + 1` levels.
fn nests_deeper_than(value: &Value, limit: usize) -> bool {
    match value {
        Value::Array(items) => limit == 0 || items.iter().any(|v| nests_deeper_than(v, limit - 1)),
        Value::Object(map) => limit == 0 || map.values().any(|v| nests_deeper_than(v, limit - 1)),
        _ => false,
    }
}

/// Drops `value` without recursing: `serde_json::Value`'s own `Drop` recurses as deep as the
/// value nests (serde-rs/json#440), which overflows a 2 MiB stack a few thousand levels down.
fn drop_flat(value: Value) {
    let mut pending = vec![value];
    while let Some(value) = pending.pop() {
        match value {
            Value::Array(items) => pending.extend(items),
            Value::Object(map) => pending.extend(map.into_iter().map(|(_, v)| v)),
            _ => {}
        }
    }
}

/// Who and what to evaluate flags for: the request of the flag services.
///
/// # Example
///
/// ```
/// use posthog_tower::flags::FlagsRequest;
///
/// let request = FlagsRequest::new("user-42")
///     .person_property("plan", "pro")
///     .group("company", "acme")
///     .group_property("company", "employees", 40)
///     .flag_keys(["new-checkout"]);
/// assert_eq!(request.distinct_id(), "user-42");
/// ```
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FlagsRequest {
    pub(crate) distinct_id: String,
    pub(crate) groups: BTreeMap<String, String>,
    pub(crate) person_properties: Map<String, Value>,
    pub(crate) group_properties: BTreeMap<String, Map<String, Value>>,
    pub(crate) disable_geoip: Option<bool>,
    pub(crate) device_id: Option<String>,
    pub(crate) flag_keys: Option<Vec<String>>,
    pub(crate) send_feature_flag_events: Option<bool>,
    pub(crate) only_evaluate_locally: bool,
    pub(crate) force_remote: bool,
}

impl From<&str> for FlagsRequest {
    fn from(distinct_id: &str) -> Self {
        FlagsRequest::new(distinct_id)
    }
}

impl From<String> for FlagsRequest {
    fn from(distinct_id: String) -> Self {
        FlagsRequest::new(distinct_id)
    }
}

impl From<&String> for FlagsRequest {
    fn from(distinct_id: &String) -> Self {
        FlagsRequest::new(distinct_id.as_str())
    }
}

impl FlagsRequest {
    /// Flags for `distinct_id`.
    pub fn new(distinct_id: impl Into<String>) -> Self {
        FlagsRequest {
            distinct_id: distinct_id.into(),
            ..FlagsRequest::default()
        }
    }

    /// Evaluates group flags for this group (e.g. `company` = `acme`).
    #[must_use]
    pub fn group(mut self, group_type: impl Into<String>, group_key: impl Into<String>) -> Self {
        self.groups.insert(group_type.into(), group_key.into());
        self
    }

    /// A person property the conditions may use (the server also knows stored ones).
    /// Values JSON cannot represent (`NaN`, nesting more than 100 levels deep) are left out;
    /// a value refused for its nesting is leaked rather than dropped, as in
    /// [`Event::property`](crate::Event::property).
    #[must_use]
    pub fn person_property(mut self, key: impl Into<String>, value: impl Serialize) -> Self {
        if let Ok(value) = crate::event::to_property_value(value) {
            self.person_properties.insert(key.into(), value);
        }
        self
    }

    /// Replaces all person properties. Values nested more than 100 levels deep (arrays and
    /// objects) are left out, as PostHog could not read them.
    #[must_use]
    pub fn person_properties(mut self, properties: Map<String, Value>) -> Self {
        self.person_properties = within_depth(properties);
        self
    }

    /// A property of a group the conditions may use. Values JSON cannot represent are left
    /// out, as for [`person_property`](Self::person_property).
    #[must_use]
    pub fn group_property(
        mut self,
        group_type: impl Into<String>,
        key: impl Into<String>,
        value: impl Serialize,
    ) -> Self {
        put_group_property(&mut self.group_properties, group_type, key, value);
        self
    }

    /// Replaces one group type's properties. Values nested more than 100 levels deep
    /// (arrays and objects) are left out, as PostHog could not read them.
    #[must_use]
    pub fn group_properties(
        mut self,
        group_type: impl Into<String>,
        properties: Map<String, Value>,
    ) -> Self {
        self.group_properties
            .insert(group_type.into(), within_depth(properties));
        self
    }

    /// Overrides the client's `disable_geoip` for this request.
    #[must_use]
    pub fn disable_geoip(mut self, disabled: bool) -> Self {
        self.disable_geoip = Some(disabled);
        self
    }

    /// The device id, for flags bucketed by device.
    #[must_use]
    pub fn device_id(mut self, device_id: impl Into<String>) -> Self {
        self.device_id = Some(device_id.into());
        self
    }

    /// Evaluates only these flags (`flag_keys_to_evaluate`).
    #[must_use]
    pub fn flag_keys<I, K>(mut self, keys: I) -> Self
    where
        I: IntoIterator<Item = K>,
        K: Into<String>,
    {
        self.flag_keys = Some(keys.into_iter().map(Into::into).collect());
        self
    }

    /// Whether the client's flag methods report `$feature_flag_called` for this call
    /// (overrides the client setting; never sent to PostHog).
    #[must_use]
    pub fn send_feature_flag_events(mut self, send: bool) -> Self {
        self.send_feature_flag_events = Some(send);
        self
    }

    /// Uses only the locally evaluated definitions (a personal API key is needed): a flag
    /// local evaluation cannot decide is reported as
    /// [`FlagError::Inconclusive`](super::FlagError::Inconclusive) instead of asking PostHog.
    #[must_use]
    pub fn only_evaluate_locally(mut self, only: bool) -> Self {
        self.only_evaluate_locally = only;
        self
    }

    /// Skips local evaluation and asks PostHog's `/flags` even when the definitions could
    /// decide (never sent to PostHog).
    #[must_use]
    pub fn force_remote(mut self, force: bool) -> Self {
        self.force_remote = force;
        self
    }

    /// The distinct id.
    pub fn distinct_id(&self) -> &str {
        &self.distinct_id
    }

    /// The groups, by type.
    pub fn groups(&self) -> &BTreeMap<String, String> {
        &self.groups
    }

    /// The person properties.
    pub fn person_properties_map(&self) -> &Map<String, Value> {
        &self.person_properties
    }

    /// The group properties, by group type.
    pub fn group_properties_map(&self) -> &BTreeMap<String, Map<String, Value>> {
        &self.group_properties
    }

    /// The flags asked for, if restricted.
    pub fn flag_keys_list(&self) -> Option<&[String]> {
        self.flag_keys.as_deref()
    }

    /// The device id.
    pub fn device_id_value(&self) -> Option<&str> {
        self.device_id.as_deref()
    }

    /// Identifies requests that would get the same answer (for coalescing).
    pub(crate) fn coalesce_key(&self) -> String {
        let key = (
            &self.distinct_id,
            &self.groups,
            &self.person_properties,
            &self.group_properties,
            self.disable_geoip,
            &self.device_id,
            &self.flag_keys,
        );
        // Serializing strings, maps and options into a String cannot fail.
        serde_json::to_string(&key).unwrap_or_default()
    }

    /// The `/flags` body for this request.
    pub(crate) fn to_body(&self, api_key: &str, default_disable_geoip: bool) -> Value {
        let mut group_properties = Map::new();
        for (group_type, key) in &self.groups {
            // The caller's properties go over the injected `$group_key`.
            let mut props = Map::new();
            props.insert("$group_key".to_owned(), Value::String(key.clone()));
            if let Some(given) = self.group_properties.get(group_type) {
                props.extend(given.iter().map(|(k, v)| (k.clone(), v.clone())));
            }
            group_properties.insert(group_type.clone(), Value::Object(props));
        }
        let mut body = Map::new();
        body.insert("token".into(), Value::String(api_key.to_owned()));
        body.insert("api_key".into(), Value::String(api_key.to_owned()));
        body.insert(
            "distinct_id".into(),
            Value::String(self.distinct_id.clone()),
        );
        body.insert(
            "groups".into(),
            Value::Object(
                self.groups
                    .iter()
                    .map(|(k, v)| (k.clone(), Value::String(v.clone())))
                    .collect(),
            ),
        );
        body.insert(
            "person_properties".into(),
            Value::Object(self.person_properties.clone()),
        );
        body.insert("group_properties".into(), Value::Object(group_properties));
        body.insert(
            "geoip_disable".into(),
            Value::Bool(self.disable_geoip.unwrap_or(default_disable_geoip)),
        );
        if let Some(device_id) = &self.device_id {
            body.insert("device_id".into(), Value::String(device_id.clone()));
        }
        let mut sent_at = Vec::with_capacity(32);
        crate::time::Timestamp::now().write_rfc3339(&mut sent_at);
        body.insert(
            "sent_at".into(),
            Value::String(String::from_utf8_lossy(&sent_at).into_owned()),
        );
        if let Some(keys) = self.flag_keys.as_ref().filter(|k| !k.is_empty()) {
            body.insert(
                "flag_keys_to_evaluate".into(),
                Value::Array(keys.iter().cloned().map(Value::String).collect()),
            );
        }
        Value::Object(body)
    }
}

/// Adds `key: value` to `group_type`'s properties in `map`: a value that is not valid as a
/// property (a NaN, nesting deeper than 100 levels) is left out, as PostHog could not read it.
pub(crate) fn put_group_property(
    map: &mut BTreeMap<String, Map<String, Value>>,
    group_type: impl Into<String>,
    key: impl Into<String>,
    value: impl Serialize,
) {
    if let Ok(value) = crate::event::to_property_value(value) {
        map.entry(group_type.into())
            .or_default()
            .insert(key.into(), value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn request_properties_nested_over_100_deep_are_left_out() {
        let nested = |depth: usize| {
            (0..depth).fold(json!(1), |inner, i| {
                if i % 2 == 0 {
                    json!([inner])
                } else {
                    json!({ "k": inner })
                }
            })
        };
        let mut properties = Map::new();
        properties.insert("ok".into(), nested(MAX_PROPERTY_DEPTH));
        properties.insert("deep".into(), nested(MAX_PROPERTY_DEPTH + 1));
        properties.insert("flat".into(), json!("x"));
        let request = FlagsRequest::new("u")
            .person_properties(properties.clone())
            .group_properties("company", properties);
        let keys = |map: &Map<String, Value>| map.keys().cloned().collect::<Vec<_>>();
        assert_eq!(keys(request.person_properties_map()), ["flat", "ok"]);
        assert_eq!(
            keys(&request.group_properties_map()["company"]),
            ["flat", "ok"]
        );
        assert!(!nests_deeper_than(&json!([[]]), 2));
        assert!(nests_deeper_than(&json!([[[]]]), 2));
        assert!(nests_deeper_than(&json!({"a": 1, "b": [{}]}), 1));
    }

    #[test]
    fn request_body() {
        let request = FlagsRequest::new("u")
            .group("company", "acme")
            .group_property("company", "size", 5)
            .group_property("team", "ignored", 1)
            .flag_keys(["k"]);
        let body = request.to_body("phc_key", true);
        assert_eq!(
            body,
            json!({
                "token": "phc_key", "api_key": "phc_key", "distinct_id": "u",
                "groups": {"company": "acme"}, "person_properties": {},
                "group_properties": {"company": {"size": 5, "$group_key": "acme"}},
                "geoip_disable": true, "flag_keys_to_evaluate": ["k"],
                "sent_at": body["sent_at"].clone()
            })
        );
        assert!(body["sent_at"].as_str().unwrap().ends_with('Z'));
        let body = FlagsRequest::new("u")
            .disable_geoip(false)
            .to_body("k", true);
        assert_eq!(body["geoip_disable"], false);
        assert_eq!(body["groups"], json!({}));
        assert!(body.get("flag_keys_to_evaluate").is_none());
        assert!(body.get("device_id").is_none());
    }
}
