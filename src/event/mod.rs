//! Events: what `capture` takes, with typed property setters and the person and group helpers.
//!
//! An [`Event`] is a name, a distinct id (or none, for an anonymous event), properties, and
//! optionally a timestamp and a uuid. Everything else PostHog needs (`$lib`, `$lib_version`,
//! `$geoip_disable`, super properties, the uuid and timestamp when not given) is added when the
//! event is captured and sent.
//!
//! # Example
//!
//! ```
//! use posthog_tower::Event;
//!
//! let event = Event::new("order placed", "user-42")
//!     .property("amount", 31.5)
//!     .property("items", vec!["book", "pen"])
//!     .group("company", "acme")
//!     .set("plan", "pro");
//! assert_eq!(event.name(), "order placed");
//! assert_eq!(event.properties().get("amount"), Some(31.5.into()));
//! ```

mod convert;
mod encode;
mod json;
mod properties;

use serde::Serialize;
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::{error::PropertyError, time::Timestamp};

pub(crate) use encode::{
    write_json, EncodeDefaults, Encoder, EventName, EventWriter, StaticKey, SystemProperties,
    WriterState,
};
pub(crate) use json::{thousandths_f64, write_str as write_json_str};
pub use properties::Properties;

/// The most PostHog accepts for one event, serialized: 900 KiB.
pub(crate) const MAX_EVENT_BYTES: usize = 900 * 1024;
/// The most PostHog's AI endpoint (`/i/v0/ai/batch/`) accepts for one event, serialized:
/// 8 MiB, posthog-python's `AI_MAX_MSG_SIZE` (LLM inputs and outputs are large).
pub(crate) const MAX_AI_EVENT_BYTES: usize = 8 * 1024 * 1024;

/// Bytes an event takes besides its properties: the keys, uuid, timestamp and lib properties.
const ENVELOPE_OVERHEAD: usize = 192;

/// Where `$set` / `$set_once` go for the person helpers: posthog-python puts them at the top
/// level of `$set` and `$set_once` events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TopLevel {
    None,
    Set,
    SetOnce,
}

/// An analytics event.
///
/// Build it with [`Event::new`] (or [`Event::anonymous`]) and the chainable setters, then hand
/// it to [`PostHog::capture`](crate::PostHog::capture). A setter that receives a value JSON
/// cannot represent (for example `f64::NAN`, or a value nested more than 100 levels deep)
/// remembers the error, and `capture` returns it.
///
/// Each setter serializes its value at once: the event holds its properties as the JSON
/// PostHog receives ([`Properties`]), so building, queueing and sending it is cheap.
#[derive(Debug, Clone)]
pub struct Event {
    /// Boxed, so that an event moves through the setters and waits in the queue as a pointer.
    pub(crate) inner: Box<Inner>,
}

/// What an [`Event`] holds.
#[derive(Debug, Clone)]
pub(crate) struct Inner {
    /// The name, then the distinct id if there is one: one allocation for both.
    text: String,
    name_len: usize,
    has_distinct_id: bool,
    pub(crate) properties: Properties,
    pub(crate) timestamp: Option<Timestamp>,
    pub(crate) uuid: Option<Uuid>,
    pub(crate) top_level: TopLevel,
    /// Overrides the client's `disable_geoip` for this event.
    pub(crate) disable_geoip: Option<bool>,
    /// Keep only PostHog's allow-list of properties (minimized `$feature_flag_called`).
    pub(crate) minimal: bool,
    /// Properties super properties may not set on this event (flag events with rule
    /// attribution).
    pub(crate) pinned: Pinned,
    /// The first property that could not be set, and why (boxed: it is rare).
    pub(crate) error: Option<Box<(String, PropertyError)>>,
    /// Made with [`Event::named`]: the distinct id comes from the request context.
    pub(crate) inherits_distinct_id: bool,
    /// Capture v1's per-event `options` (boxed: rarely set).
    pub(crate) options: Option<Box<EventOptions>>,
}

/// Capture v1's per-event `options` object: overrides of how PostHog processes the event.
/// Unset fields are left out, so PostHog's defaults apply.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct EventOptions {
    pub(crate) cookieless_mode: Option<bool>,
    pub(crate) disable_skew_correction: Option<bool>,
    pub(crate) process_person_profile: Option<bool>,
    pub(crate) product_tour_id: Option<String>,
}

impl EventOptions {
    /// Appends `,"options":{…}` (nothing when no option is set).
    pub(crate) fn write(&self, out: &mut Vec<u8>) {
        let mut first = true;
        let mut key = |out: &mut Vec<u8>, name: &[u8]| {
            out.extend_from_slice(if first { br#","options":{""# } else { br#",""# });
            first = false;
            out.extend_from_slice(name);
            out.extend_from_slice(br#"":"#);
        };
        for (name, value) in [
            (&b"cookieless_mode"[..], self.cookieless_mode),
            (b"disable_skew_correction", self.disable_skew_correction),
            (b"process_person_profile", self.process_person_profile),
        ] {
            if let Some(value) = value {
                key(out, name);
                out.extend_from_slice(if value { b"true" } else { b"false" });
            }
        }
        if let Some(id) = &self.product_tour_id {
            key(out, b"product_tour_id");
            write_json(out, id.as_str());
        }
        if !first {
            out.push(b'}');
        }
    }

    fn len(&self) -> usize {
        // Generous: the keys, the values and the braces.
        100 + self.product_tour_id.as_ref().map_or(0, |id| id.len() + 2)
    }
}

impl Event {
    /// An event done by `distinct_id`.
    pub fn new(name: impl AsRef<str>, distinct_id: impl AsRef<str>) -> Self {
        Event::with_texts(name.as_ref(), Some(distinct_id.as_ref()))
    }

    fn with_texts(name: &str, distinct_id: Option<&str>) -> Self {
        let mut text = String::with_capacity(name.len() + distinct_id.map_or(0, str::len));
        text.push_str(name);
        text.push_str(distinct_id.unwrap_or_default());
        let inner = Inner {
            text,
            name_len: name.len(),
            has_distinct_id: distinct_id.is_some(),
            properties: Properties::default(),
            timestamp: None,
            uuid: None,
            top_level: TopLevel::None,
            disable_geoip: None,
            minimal: false,
            pinned: Pinned::None,
            error: None,
            inherits_distinct_id: false,
            options: None,
        };
        Event {
            inner: Box::new(inner),
        }
    }

    /// An event done by whoever the current request comes from.
    ///
    /// Inside a request handled behind [`PostHogLayer`](crate::http::PostHogLayer) (or any
    /// [`RequestContext`](crate::context::RequestContext) scope), `capture` gives it the
    /// caller's distinct id, session id and request properties. Outside one, or for an
    /// anonymous caller, it is sent like [`Event::anonymous`]: personless.
    ///
    /// ```
    /// use posthog_tower::Event;
    ///
    /// let event = Event::named("report exported").property("rows", 120);
    /// assert_eq!(event.distinct_id(), None);
    /// ```
    pub fn named(name: impl AsRef<str>) -> Self {
        let mut event = Event::with_texts(name.as_ref(), None);
        event.inner.inherits_distinct_id = true;
        event
    }

    /// An event with no person behind it: it is sent with a random distinct id and
    /// `$process_person_profile: false`, so PostHog creates no person profile for it.
    pub fn anonymous(name: impl AsRef<str>) -> Self {
        let mut event = Event::with_texts(name.as_ref(), None);
        event.insert_value("$process_person_profile", Value::Bool(false));
        event
    }

    /// A backend `$pageview` of `url` (sent as `$current_url`).
    pub fn pageview(distinct_id: impl AsRef<str>, url: impl AsRef<str>) -> Self {
        let mut event = Event::new("$pageview", distinct_id);
        let _ = event.inner.properties.insert("$current_url", url.as_ref());
        event
    }

    /// Sets a property. `value` is anything serde can serialize; a value JSON cannot represent
    /// (`NaN`, infinity, a map with non-string keys, nesting more than 100 levels deep) makes
    /// `capture` return [`CaptureError::InvalidProperty`](crate::CaptureError::InvalidProperty).
    ///
    /// Setting a key twice keeps the last value. The value is serialized now; pass a reference
    /// (`&value`) to keep it. A value refused for its nesting is not dropped (dropping it could
    /// overflow the stack) but leaked, so pass a value that may be that deep by reference.
    #[must_use]
    pub fn property(mut self, key: impl AsRef<str>, value: impl Serialize) -> Self {
        let key = key.as_ref();
        let result = self.inner.properties.insert(key, &value);
        convert::give_up(value, &result);
        if let Err(e) = result {
            self.inner
                .error
                .get_or_insert(Box::new((key.to_owned(), e)));
        }
        self
    }

    /// Sets a property in place, returning the error instead of remembering it.
    pub fn insert(
        &mut self,
        key: impl AsRef<str>,
        value: impl Serialize,
    ) -> Result<(), PropertyError> {
        let result = self.inner.properties.insert(key.as_ref(), &value);
        convert::give_up(value, &result);
        result
    }

    /// Sets every entry of `properties`, which must serialize to a JSON object (a map or a
    /// struct).
    #[must_use]
    pub fn properties_from(mut self, properties: impl Serialize) -> Self {
        let result = to_object(&properties);
        convert::give_up(properties, &result);
        match result {
            Ok(map) => {
                for (k, v) in map {
                    self.insert_value(k, v);
                }
            }
            Err(e) => {
                self.inner
                    .error
                    .get_or_insert(Box::new(("(properties)".to_owned(), e)));
            }
        }
        self
    }

    /// Removes a property, returning its value.
    pub fn remove(&mut self, key: &str) -> Option<Value> {
        self.inner.properties.remove(key)
    }

    /// Sets when the event happened. Any offset is accepted; it is sent in UTC. Defaults to
    /// the moment of `capture`.
    #[must_use]
    pub fn timestamp(mut self, timestamp: impl Into<Timestamp>) -> Self {
        self.inner.timestamp = Some(timestamp.into());
        self
    }

    /// [`timestamp`](Self::timestamp) in place, for an event kept in a `Box`.
    pub(crate) fn set_timestamp(&mut self, timestamp: Timestamp) {
        self.inner.timestamp = Some(timestamp);
    }

    /// Sets the event's uuid (PostHog deduplicates on it). Defaults to a new UUIDv7.
    #[must_use]
    pub fn uuid(mut self, uuid: Uuid) -> Self {
        self.inner.uuid = Some(uuid);
        self
    }

    /// Associates the event with a group (sent in `$groups`), e.g. `group("company", "acme")`.
    #[must_use]
    pub fn group(mut self, group_type: impl Into<String>, group_key: impl Into<String>) -> Self {
        self.update_object(
            "$groups",
            group_type.into(),
            Value::String(group_key.into()),
        );
        self
    }

    /// Sets a person property (`$set`): the latest value wins.
    #[must_use]
    pub fn set(self, key: impl Into<String>, value: impl Serialize) -> Self {
        self.person_property("$set", key.into(), value)
    }

    /// Sets a person property only if it has no value yet (`$set_once`).
    #[must_use]
    pub fn set_once(self, key: impl Into<String>, value: impl Serialize) -> Self {
        self.person_property("$set_once", key.into(), value)
    }

    /// Overrides the client's `disable_geoip` for this event: `true` adds
    /// `$geoip_disable: true`, `false` leaves it out so PostHog resolves the location.
    #[must_use]
    pub fn disable_geoip(mut self, disabled: bool) -> Self {
        self.inner.disable_geoip = Some(disabled);
        self
    }

    /// Marks the event as anonymous: `$process_person_profile: false`.
    #[must_use]
    pub fn without_person_profile(mut self) -> Self {
        self.insert_value("$process_person_profile", Value::Bool(false));
        self
    }

    /// Capture v1: sets the event's `cookieless_mode` option (PostHog's cookieless
    /// tracking for this event). Capture v0 (`/batch/`) does not send options.
    ///
    /// ```
    /// use posthog_tower::Event;
    ///
    /// let event = Event::new("signed up", "user-1")
    ///     .cookieless_mode(true)
    ///     .disable_skew_correction(true)
    ///     .process_person_profile(false)
    ///     .product_tour_id("tour_123");
    /// # let _ = event;
    /// ```
    #[must_use]
    pub fn cookieless_mode(mut self, enabled: bool) -> Self {
        self.options_mut().cookieless_mode = Some(enabled);
        self
    }

    /// Capture v1: sets the event's `disable_skew_correction` option (`true`: PostHog keeps
    /// the timestamp as sent instead of correcting it for the client's clock skew).
    #[must_use]
    pub fn disable_skew_correction(mut self, disabled: bool) -> Self {
        self.options_mut().disable_skew_correction = Some(disabled);
        self
    }

    /// Capture v1: sets the event's `process_person_profile` option (`false`: the event
    /// creates or updates no person profile).
    #[must_use]
    pub fn process_person_profile(mut self, enabled: bool) -> Self {
        self.options_mut().process_person_profile = Some(enabled);
        self
    }

    /// Capture v1: sets the event's `product_tour_id` option.
    #[must_use]
    pub fn product_tour_id(mut self, id: impl Into<String>) -> Self {
        self.options_mut().product_tour_id = Some(id.into());
        self
    }

    fn options_mut(&mut self) -> &mut EventOptions {
        self.inner.options.get_or_insert_with(Default::default)
    }

    /// The event's name.
    pub fn name(&self) -> &str {
        self.inner.name()
    }

    /// The distinct id, or `None` for an anonymous event.
    pub fn distinct_id(&self) -> Option<&str> {
        self.inner.distinct_id()
    }

    /// The properties set so far (without what is added at capture).
    pub fn properties(&self) -> &Properties {
        &self.inner.properties
    }

    /// The timestamp, if one was set.
    pub fn timestamp_value(&self) -> Option<Timestamp> {
        self.inner.timestamp
    }

    /// The uuid, if one was set (after `capture` the worker's copy always has one).
    pub fn uuid_value(&self) -> Option<Uuid> {
        self.inner.uuid
    }

    /// The serialized size of the event in bytes, as `capture` estimates it.
    pub fn estimated_size(&self) -> usize {
        // Name and distinct id by their length: escaping can only add a little, and the
        // worker checks the exact size again after encoding.
        ENVELOPE_OVERHEAD
            + self.inner.properties.as_json().len()
            + self.inner.name_len
            + self.inner.distinct_id().map_or(38, str::len)
            + self.inner.options.as_ref().map_or(0, |o| o.len())
    }

    // ===== internals =====

    /// The serialized size of the properties' entries (what [`Event::estimated_size`] adds
    /// up); the fuzz targets check it against the real size.
    #[cfg(any(test, fuzzing))]
    pub(crate) fn tracked_properties_len(&self) -> usize {
        self.inner.properties.as_json().len()
    }

    /// Keeps only the properties a minimized event may carry.
    pub(crate) fn strip_to_minimal(&mut self) {
        // A `$feature_flag_called` with rule attribution keeps its attribution too.
        let extra: &[&str] = if self.inner.pinned == Pinned::FlagCalledV2 {
            MINIMAL_V2_EXTRA
        } else {
            &[]
        };
        self.inner.properties.retain_json_keys(|key| {
            MINIMAL_ALLOWED.iter().chain(extra).any(|allowed| {
                key.len() == allowed.len() + 2 && key[1..key.len() - 1] == *allowed.as_bytes()
            })
        });
    }

    /// Sets a property to a value that is known to be valid JSON (built by the crate, or
    /// parsed from JSON); a value nested too deep is left out, with a log line.
    pub(crate) fn insert_value(&mut self, key: impl AsRef<str>, value: Value) {
        let key = key.as_ref();
        if let Err(e) = self.inner.properties.insert(key, &value) {
            tracing::warn!(key, error = %e, "posthog: property left out");
        }
    }

    /// Sets a property to the JSON text `json`, known to be valid JSON (parsed by
    /// `serde_json`, or written by the crate), copied without whitespace and no value built;
    /// refused when nested too deep. See [`Properties::insert_json`].
    pub(crate) fn insert_json(&mut self, key: &str, json: &[u8]) -> Result<(), PropertyError> {
        self.inner.properties.insert_json(key, json)
    }

    /// [`insert_plain`](Self::insert_plain) for a builder that knows `key` is a constant not
    /// set yet, needing no JSON escaping (see `Properties::insert_new`).
    pub(crate) fn insert_new<T: Serialize + ?Sized>(&mut self, key: &str, value: &T) {
        if let Err(e) = self.inner.properties.insert_new(key, value) {
            tracing::warn!(key, error = %e, "posthog: property left out");
        }
    }

    /// [`insert_value`](Self::insert_value) for a value the crate builds (a string, a
    /// number, a boolean), serialized without an intermediate `Value`.
    pub(crate) fn insert_plain<T: Serialize + ?Sized>(&mut self, key: &str, value: &T) {
        if let Err(e) = self.inner.properties.insert(key, value) {
            tracing::warn!(key, error = %e, "posthog: property left out");
        }
    }

    fn update_object(&mut self, property: &str, key: String, value: Value) {
        let mut object = match self.remove(property) {
            Some(Value::Object(map)) => map,
            _ => Map::new(),
        };
        object.insert(key, value);
        self.insert_value(property, Value::Object(object));
    }

    fn person_property(mut self, property: &str, key: String, value: impl Serialize) -> Self {
        let result = convert::to_value(&value);
        convert::give_up(value, &result);
        match result {
            Ok(value) => self.update_object(property, key, value),
            Err(e) => {
                self.inner.error.get_or_insert(Box::new((key, e)));
            }
        }
        self
    }

    /// A `$set` / `$set_once` event shaped as posthog-python sends it: the person properties at
    /// the top level of the event.
    pub(crate) fn person_update(
        set_once: bool,
        distinct_id: String,
        properties: impl Serialize,
    ) -> Self {
        let (name, property, top) = if set_once {
            ("$set_once", "$set_once", TopLevel::SetOnce)
        } else {
            ("$set", "$set", TopLevel::Set)
        };
        let mut event = Event::new(name, distinct_id);
        event.inner.top_level = top;
        let result = to_object(&properties);
        convert::give_up(properties, &result);
        match result {
            Ok(map) => event.insert_value(property, Value::Object(map)),
            Err(e) => event.inner.error = Some(Box::new(("(properties)".to_owned(), e))),
        }
        event
    }

    /// `$create_alias`, shaped as posthog-python sends it.
    pub(crate) fn alias(previous_id: String, distinct_id: String) -> Self {
        let mut event = Event::new("$create_alias", previous_id.clone());
        event.insert_value("distinct_id", Value::String(previous_id));
        event.insert_value("alias", Value::String(distinct_id));
        event
    }

    /// `$groupidentify`, shaped as posthog-python sends it. Without a distinct id the event is
    /// attributed to `$<type>_<key>`, as PostHog's Node SDK does, so no random person is made.
    pub(crate) fn group_identify(
        group_type: String,
        group_key: String,
        properties: impl Serialize,
        distinct_id: Option<String>,
    ) -> Self {
        let distinct_id = distinct_id.unwrap_or_else(|| format!("${group_type}_{group_key}"));
        let mut event = Event::new("$groupidentify", distinct_id);
        let result = to_object(&properties);
        convert::give_up(properties, &result);
        match result {
            Ok(map) => event.insert_value("$group_set", Value::Object(map)),
            Err(e) => event.inner.error = Some(Box::new(("(properties)".to_owned(), e))),
        }
        event.insert_value("$group_type", Value::String(group_type));
        event.insert_value("$group_key", Value::String(group_key));
        event
    }
}

impl Inner {
    pub(crate) fn name(&self) -> &str {
        // `name_len` is where the name ends within `text`: a char boundary.
        self.text.get(..self.name_len).unwrap_or_default()
    }

    pub(crate) fn distinct_id(&self) -> Option<&str> {
        self.has_distinct_id
            .then(|| self.text.get(self.name_len..).unwrap_or_default())
    }

    /// Sets or clears the distinct id.
    pub(crate) fn set_distinct_id(&mut self, distinct_id: Option<&str>) {
        self.text.truncate(self.name_len);
        self.text.push_str(distinct_id.unwrap_or_default());
        self.has_distinct_id = distinct_id.is_some();
    }
}

/// Converts a property value to JSON, refusing what JSON cannot represent (`NaN`, infinity).
/// Takes `value` by value: one refused for its nesting is leaked rather than dropped (see
/// [`Event::property`]).
pub(crate) fn to_property_value(value: impl Serialize) -> Result<Value, PropertyError> {
    let result = convert::to_value(&value);
    convert::give_up(value, &result);
    result
}

/// Appends `value` as a property's JSON, with the checks of [`Event::property`] (finite
/// numbers, nesting); on error `out` is as it was.
pub(crate) fn write_property<T: Serialize + ?Sized>(
    out: &mut Vec<u8>,
    value: &T,
) -> Result<(), PropertyError> {
    let start = out.len();
    let result = convert::write(out, value);
    if result.is_err() {
        out.truncate(start);
    }
    result
}

/// The deepest nesting of arrays and objects a property value may have.
pub(crate) use convert::MAX_DEPTH as MAX_PROPERTY_DEPTH;

/// A uuid (v7) of `timestamp`, and the timestamp.
#[inline]
pub(crate) fn stamp_at(timestamp: Timestamp) -> (Uuid, Timestamp) {
    let millis = timestamp.as_unix_millis().max(0) as u64;
    (crate::id::new_v7_from(millis), timestamp)
}

impl Event {
    /// Sets the uuid and timestamp unless the event has them (a uuid made here is a v7 of the
    /// event's timestamp), and returns them: what every capture path stamps an event with.
    #[inline]
    pub(crate) fn stamp(&mut self) -> (Uuid, Timestamp) {
        let inner = &mut *self.inner;
        let timestamp = *inner.timestamp.get_or_insert_with(Timestamp::now);
        let uuid = *inner.uuid.get_or_insert_with(|| stamp_at(timestamp).0);
        (uuid, timestamp)
    }
}

/// The checks `capture` makes before queueing: name, distinct id, properties, size.
/// `max_size` is the limit for [`Event::estimated_size`].
/// `limit` is the lane's limit on the whole event, which a refusal reports.
pub(crate) fn validate(
    event: &Event,
    max_size: usize,
    limit: usize,
) -> Result<(), crate::CaptureError> {
    use crate::CaptureError;
    if is_blank(event.inner.name()) {
        return Err(CaptureError::EmptyEventName);
    }
    if matches!(event.inner.distinct_id(), Some(id) if is_blank(id)) {
        return Err(CaptureError::EmptyDistinctId);
    }
    if let Some(error) = &event.inner.error {
        let (key, e) = &**error;
        return Err(CaptureError::InvalidProperty {
            key: key.clone(),
            reason: e.message().to_owned(),
        });
    }
    let size = event.estimated_size();
    if size > max_size {
        return Err(CaptureError::EventTooLarge { size, limit });
    }
    Ok(())
}

/// The only properties a minimized `$feature_flag_called` event keeps (besides `$lib`,
/// `$lib_version` and `$geoip_disable`, which the encoder writes), as PostHog defines them.
pub(crate) const MINIMAL_ALLOWED: &[&str] = &[
    "$feature_flag",
    "$feature_flag_response",
    "$feature_flag_has_experiment",
    "$feature_flag_id",
    "$feature_flag_version",
    "$feature_flag_reason",
    "$feature_flag_request_id",
    "$feature_flag_evaluated_at",
    "$feature_flag_error",
    "locally_evaluated",
    "$groups",
    "$process_person_profile",
    "$session_id",
    "$is_server",
    "$os",
    "$os_version",
];

/// What a minimized `$feature_flag_called` with rule attribution keeps besides
/// [`MINIMAL_ALLOWED`].
pub(crate) const MINIMAL_V2_EXTRA: &[&str] = &[
    "$feature_flag_config_version",
    "$feature_flag_reason_code",
    "$feature_flag_rule_id",
    "$feature_flag_rule_type",
    "$feature_flag_variant_key",
];

/// Which properties of an event its own values decide, whatever the super properties say:
/// super properties never add to or change them (posthog-python pins them the same way).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) enum Pinned {
    /// Super properties apply to every property.
    #[default]
    None,
    /// A `$feature_flag_called` with rule attribution (config version 2): [`PINNED_FLAG_CALLED`].
    FlagCalledV2,
    /// An `$experiment_exposure`: [`PINNED_EXPOSURE`].
    Exposure,
}

impl Pinned {
    /// The property names super properties may not set.
    pub(crate) fn keys(self) -> &'static [&'static str] {
        match self {
            Pinned::None => &[],
            Pinned::FlagCalledV2 => PINNED_FLAG_CALLED,
            Pinned::Exposure => PINNED_EXPOSURE,
        }
    }
}

/// The attribution of a config version 2 `$feature_flag_called`, the fields it never
/// carries (`$feature_flag_reason`, `$feature_flag_forced_variant`,
/// `$feature_flag_experiment_id`), and the identity of the read.
pub(crate) const PINNED_FLAG_CALLED: &[&str] = &[
    "$feature_flag_config_version",
    "$feature_flag_reason_code",
    "$feature_flag_rule_id",
    "$feature_flag_rule_type",
    "$feature_flag_variant_key",
    "$feature_flag_reason",
    "$feature_flag_forced_variant",
    "$feature_flag_experiment_id",
    "$feature_flag",
    "$feature_flag_response",
    "locally_evaluated",
];

/// What an `$experiment_exposure` never carries, and the identity of its read.
pub(crate) const PINNED_EXPOSURE: &[&str] = &[
    "$feature_flag_config_version",
    "$feature_flag_reason_code",
    "$feature_flag_rule_type",
    "$experiment_exposure_source",
    "$feature_flag_experiment_id",
    "$feature_flag_forced_variant",
    "$feature_flag",
    "$feature_flag_response",
    "locally_evaluated",
    "$feature_flag_variant_key",
    "$feature_flag_rule_id",
];

/// Whether `text` holds a control character ([`char::is_control`]: U+0000 – U+001F and
/// U+007F – U+009F). Judged on bytes first: those below U+0080 are single bytes, and each of
/// the others is encoded as 0xC2 and a second byte, so text without such bytes (nearly all:
/// paths, user agents, ids) is cleared by one pass over its bytes, without decoding a
/// character, and only text holding a 0xC2 byte is decoded.
pub(crate) fn has_control(text: &str) -> bool {
    let suspect = text.bytes().fold(false, |found, b| {
        found | (b < 0x20 || b == 0x7f || b == 0xc2)
    });
    suspect && text.chars().any(char::is_control)
}

/// Empty or only whitespace; the common case (a leading visible ASCII character) costs one
/// comparison.
pub(crate) fn is_blank(text: &str) -> bool {
    match text.as_bytes().first() {
        None => true,
        Some(b) if b.is_ascii_graphic() => false,
        Some(_) => text.trim().is_empty(),
    }
}

fn to_object(value: &impl Serialize) -> Result<Map<String, Value>, PropertyError> {
    match convert::to_value(value)? {
        Value::Object(map) => Ok(map),
        Value::Null => Ok(Map::new()),
        other => Err(PropertyError::new(format!(
            "properties must serialize to a JSON object, not {}",
            kind(&other)
        ))),
    }
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn control_characters_are_found_by_bytes_or_by_decoding() {
        for (text, control) in [
            ("", false),
            ("/products/42?ref=home", false),
            ("a\tb", true),
            ("\u{7f}", true),
            ("caf\u{e9} \u{a0}nbsp", false),
            ("next\u{85}line", true),
            ("\u{9f}", true),
            ("\u{80}", true),
            ("\u{c2}\u{a0}", false),
        ] {
            assert_eq!(has_control(text), control, "{text:?}");
        }
    }

    proptest::proptest! {
        /// Any text, rich in characters near the control blocks and in those whose UTF-8
        /// starts with 0xC2 (U+0080 - U+00BF), is judged as `char::is_control` judges it.
        #[test]
        fn has_control_agrees_with_char_is_control(
            chars in proptest::collection::vec(
                proptest::prop_oneof![
                    proptest::char::any(),
                    proptest::char::range('\u{0}', '\u{bf}'),
                    proptest::char::range('\u{7e}', '\u{a1}'),
                ],
                0..40,
            )
        ) {
            let text: String = chars.into_iter().collect();
            proptest::prop_assert_eq!(has_control(&text), text.chars().any(char::is_control));
        }
    }

    /// The size of the properties' entries as `serde_json` writes them, commas included.
    fn exact_props_len(event: &Event) -> usize {
        serde_json::to_string(&event.inner.properties.to_map())
            .expect("serializes")
            .len()
            - 2
    }

    #[test]
    fn setters_track_size_exactly() {
        let mut e = Event::new("e", "u")
            .property("a", 1)
            .property("b", "text \"quoted\"\n")
            .property("a", vec![1.5, 2.0])
            .group("company", "acme")
            .group("team", "core")
            .set("plan", "pro")
            .set_once("first", true);
        assert_eq!(e.tracked_properties_len(), exact_props_len(&e));
        e.remove("b");
        assert_eq!(e.tracked_properties_len(), exact_props_len(&e));
        assert_eq!(
            e.inner.properties.to_map()["$groups"],
            json!({"company": "acme", "team": "core"})
        );
        assert_eq!(e.inner.properties.to_map()["$set"], json!({"plan": "pro"}));
        assert_eq!(
            e.inner.properties.to_map()["$set_once"],
            json!({"first": true})
        );
    }

    #[test]
    fn non_finite_values_are_remembered() {
        let e = Event::new("e", "u")
            .property("ok", 1)
            .property("bad", f64::NAN);
        let (key, err) = *e.inner.error.clone().expect("error recorded");
        assert_eq!(key, "bad");
        assert!(err.message().contains("finite"), "{}", err.message());
        assert!(!e.inner.properties.contains_key("bad"));
        let e = Event::new("e", "u").set("inf", f64::INFINITY);
        assert!(e.inner.error.is_some());
    }

    #[test]
    fn anonymous_events_skip_person_processing() {
        let e = Event::anonymous("e");
        assert_eq!(e.distinct_id(), None);
        assert_eq!(
            e.inner.properties.to_map()["$process_person_profile"],
            json!(false)
        );
    }

    #[test]
    fn helpers_have_python_shapes() {
        let e = Event::person_update(false, "u".into(), json!({"name": "Ada"}));
        assert_eq!(e.name(), "$set");
        assert_eq!(e.inner.top_level, TopLevel::Set);
        let e = Event::alias("old".into(), "new".into());
        assert_eq!(e.distinct_id(), Some("old"));
        assert_eq!(e.inner.properties.to_map()["alias"], "new");
        assert_eq!(e.inner.properties.to_map()["distinct_id"], "old");
        let e = Event::group_identify("company".into(), "acme".into(), json!({"n": 1}), None);
        assert_eq!(e.distinct_id(), Some("$company_acme"));
        assert_eq!(e.inner.properties.to_map()["$group_set"], json!({"n": 1}));
        let e = Event::person_update(true, "u".into(), json!([1]));
        assert!(e.inner.error.is_some());
    }
}
