//! Fuzz-derived keys and values (any `Serialize` shape: NaN, huge integers, non-string map
//! keys, enums, nesting) → `Event` setters → `validate` → the batch encoder.
//!
//! Checks: a setter accepts a value exactly when JSON can represent it, and stores what
//! `serde_json::to_value` would; the size the setters track equals the real serialized size;
//! `validate` agrees with that size; the encoded event is JSON without duplicate keys that
//! round-trips through `serde_json`, carries every property with the documented precedence, and
//! is no larger than `estimated_size` plus what the encoder adds (plus the escaping of the name
//! and distinct id, which the estimate leaves out by design).
#![no_main]

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::time::{Duration, SystemTime};

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use posthog_tower::__fuzz::{self, EventEncoder};
use posthog_tower::{CaptureError, Event, Timestamp};
use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::ser::{Serialize, SerializeMap, Serializer};
use serde_json::{Map, Value};

/// A value as a Rust type would serialize it.
#[derive(Arbitrary, Debug, serde::Serialize)]
#[serde(untagged)]
enum Prop {
    Unit(()),
    None(Option<u8>),
    Bool(bool),
    I64(i64),
    U64(u64),
    I128(i128),
    U128(u128),
    F32(f32),
    F64(f64),
    Char(char),
    Str(String),
    Seq(Vec<Prop>),
    Map(BTreeMap<String, Prop>),
    IntKeys(BTreeMap<i16, Prop>),
    BoolKeys(BTreeMap<bool, Prop>),
    CharKeys(BTreeMap<char, Prop>),
    FloatKeys(FloatKeys),
    SeqKeys(BTreeMap<Vec<u8>, Prop>),
    Tagged(Box<Tagged>),
}

/// Externally tagged enum shapes.
#[derive(Arbitrary, Debug, serde::Serialize)]
enum Tagged {
    Unit,
    Newtype(Prop),
    Tuple(u8, Prop),
    Struct { x: Prop, y: f64 },
}

/// A map with float keys (which `serde_json` writes as strings when finite).
#[derive(Arbitrary, Debug)]
struct FloatKeys(Vec<(f64, Prop)>);

impl Serialize for FloatKeys {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in &self.0 {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

impl Prop {
    fn non_finite(&self) -> bool {
        match self {
            Prop::F32(f) => !f.is_finite(),
            Prop::F64(f) => !f.is_finite(),
            Prop::Seq(items) => items.iter().any(Prop::non_finite),
            Prop::Map(m) => m.values().any(Prop::non_finite),
            Prop::IntKeys(m) => m.values().any(Prop::non_finite),
            Prop::BoolKeys(m) => m.values().any(Prop::non_finite),
            Prop::CharKeys(m) => m.values().any(Prop::non_finite),
            Prop::SeqKeys(m) => m.values().any(Prop::non_finite),
            Prop::FloatKeys(m) => m.0.iter().any(|(k, v)| !k.is_finite() || v.non_finite()),
            Prop::Tagged(t) => match &**t {
                Tagged::Unit => false,
                Tagged::Newtype(p) | Tagged::Tuple(_, p) => p.non_finite(),
                Tagged::Struct { x, y } => x.non_finite() || !y.is_finite(),
            },
            _ => false,
        }
    }
}

#[derive(Arbitrary, Debug)]
enum Start {
    New(String, String),
    Anonymous(String),
    Pageview(String, String),
    PersonUpdate(bool, String, Prop),
    GroupIdentify(String, String, Prop, Option<String>),
    Alias(String, String),
}

#[derive(Arbitrary, Debug)]
enum Op {
    Property(String, Prop),
    Insert(String, Prop),
    PropertiesFrom(Prop),
    Remove(String),
    RemoveNth(u8),
    Group(String, String),
    Set(String, Prop),
    SetOnce(String, Prop),
    DisableGeoip(bool),
    WithoutPersonProfile,
    StripToMinimal,
}

#[derive(Arbitrary, Debug)]
struct Input {
    start: Start,
    ops: Vec<Op>,
    disable_geoip: bool,
    super_properties: Vec<(String, Prop)>,
    uuid: u128,
    timestamp_secs: u32,
    max_size: u32,
}

fuzz_target!(|input: Input| {
    let Input {
        start,
        ops,
        disable_geoip,
        super_properties,
        uuid,
        timestamp_secs,
        max_size,
    } = input;

    let mut top_key = None;
    let mut event = match start {
        Start::New(name, id) => Event::new(name, id),
        Start::Anonymous(name) => Event::anonymous(name),
        Start::Pageview(id, url) => Event::pageview(id, url),
        Start::PersonUpdate(once, id, props) => {
            top_key = Some(if once { "$set_once" } else { "$set" });
            __fuzz::person_update(once, id, &props)
        }
        Start::GroupIdentify(t, k, props, id) => __fuzz::group_identify(t, k, &props, id),
        Start::Alias(previous, id) => __fuzz::alias(previous, id),
    };
    check_sizes(&event);

    let mut minimal = false;
    let mut geoip_override = None;
    for op in ops.into_iter().take(64) {
        event = match op {
            Op::Property(key, value) => event.property(key, &value),
            Op::Insert(key, value) => {
                let result = event.insert(key.clone(), &value);
                let reference = serde_json::to_value(&value);
                if value.non_finite() {
                    assert!(result.is_err(), "non-finite {value:?} accepted");
                } else if reference.as_ref().is_ok_and(|v| depth(v) > 100) {
                    assert!(result.is_err(), "nested deeper than 100 levels, accepted");
                } else if result.is_err() && reference.is_ok() {
                    // Refused for its nesting as serialized, where a map type may repeat a
                    // key whose deeper branch the merged `Value` no longer holds.
                    let text = serde_json::to_string(&value).unwrap();
                    assert!(text_depth(&text) > 100, "{value:?}: {result:?}");
                } else {
                    assert_eq!(result.is_ok(), reference.is_ok(), "{value:?}: {result:?}");
                }
                if result.is_ok() {
                    assert_eq!(event.properties().get(&key), Some(reference.unwrap()));
                }
                event
            }
            Op::PropertiesFrom(value) => event.properties_from(&value),
            Op::Remove(key) => {
                event.remove(&key);
                event
            }
            Op::RemoveNth(n) => {
                let key = event.properties().keys().nth(usize::from(n));
                if let Some(key) = key {
                    assert!(event.remove(&key).is_some());
                }
                event
            }
            Op::Group(t, k) => event.group(t, k),
            Op::Set(key, value) => event.set(key, &value),
            Op::SetOnce(key, value) => event.set_once(key, &value),
            Op::DisableGeoip(d) => {
                geoip_override = Some(d);
                event.disable_geoip(d)
            }
            Op::WithoutPersonProfile => event.without_person_profile(),
            Op::StripToMinimal => {
                minimal = true;
                __fuzz::strip_to_minimal(&mut event);
                event
            }
        };
        check_sizes(&event);
    }

    // `validate` agrees with the tracked size.
    let max_size = max_size as usize;
    match __fuzz::validate(&event, max_size) {
        Ok(()) => assert!(event.estimated_size() <= max_size),
        Err(CaptureError::EventTooLarge { size, .. }) => {
            assert_eq!(size, event.estimated_size());
            assert!(size > max_size);
        }
        Err(_) => {}
    }
    let _ = __fuzz::validate(&event, usize::MAX);

    // Encode, as the batch worker does.
    let supers: Map<String, Value> = super_properties
        .into_iter()
        .take(8)
        .filter(|(_, v)| !v.non_finite())
        .filter_map(|(k, v)| Some((k, serde_json::to_value(&v).ok()?)))
        .collect();
    let encoder = EventEncoder::new(disable_geoip, supers.clone());
    let uuid = uuid::Uuid::from_u128(uuid);
    let timestamp =
        Timestamp::from(SystemTime::UNIX_EPOCH + Duration::from_secs(timestamp_secs.into()));
    let mut out = b"[".to_vec();
    let start = out.len();
    encoder.encode(&mut out, &event, uuid, timestamp);
    let encoded = &out[start..];

    let text = std::str::from_utf8(encoded).expect("UTF-8");
    if let Err(e) = serde_json::from_str::<NoDuplicateKeys>(text) {
        // Properties nested deeper than serde_json's default recursion limit (128) are
        // accepted and sent; reading them back needs a parser without that limit. Known,
        // reported; not what this target checks.
        if e.to_string().starts_with("recursion limit exceeded") {
            return;
        }
        panic!("invalid or duplicate-key JSON ({e}): {text}");
    }
    let parsed: Value = serde_json::from_str(text).unwrap();
    let again: Value = serde_json::from_slice(&serde_json::to_vec(&parsed).unwrap()).unwrap();
    assert_eq!(parsed, again, "does not round-trip");

    assert_eq!(parsed["event"], event.name());
    match event.distinct_id() {
        Some(id) => assert_eq!(parsed["distinct_id"], id),
        None => assert!(uuid::Uuid::parse_str(parsed["distinct_id"].as_str().unwrap()).is_ok()),
    }
    assert_eq!(parsed["uuid"], uuid.to_string());
    assert_eq!(parsed["timestamp"], timestamp.to_string());
    let props = parsed["properties"].as_object().unwrap();
    let geoip = geoip_override.unwrap_or(disable_geoip);
    for (k, v) in event.properties().iter() {
        if Some(k.as_str()) == top_key {
            assert_eq!(parsed[&k], v);
        } else if !minimal && supers.contains_key(&k) {
            assert_eq!(&props[&k], &supers[&k]);
        } else if k == "$lib" || k == "$lib_version" || (geoip && k == "$geoip_disable") {
            assert!(props.contains_key(&k));
        } else {
            assert_eq!(props.get(&k), Some(&v), "property {k:?}");
        }
    }
    if !minimal {
        for (k, v) in &supers {
            assert_eq!(props.get(k), Some(v), "super property {k:?}");
        }
    } else {
        assert!(props.contains_key("$lib"));
    }
    if geoip && !(!minimal && supers.contains_key("$geoip_disable")) {
        assert_eq!(props["$geoip_disable"], true);
    }

    // The estimate covers the encoding, up to the escaping of name and distinct id.
    let escapes = |s: &str| serde_json::to_string(s).unwrap().len() - 2 - s.len();
    let slack = escapes(event.name()) + event.distinct_id().map_or(0, escapes);
    assert!(
        encoded.len() <= event.estimated_size() + encoder.added_len() + slack,
        "encoded {} > estimated {} + added {} + escapes {slack}",
        encoded.len(),
        event.estimated_size(),
        encoder.added_len(),
    );
});

/// How many levels of arrays and objects `value` nests (without recursing).
fn depth(value: &Value) -> usize {
    let mut deepest = 0;
    let mut stack = vec![(value, 0)];
    while let Some((value, level)) = stack.pop() {
        let children: Vec<&Value> = match value {
            Value::Array(items) => items.iter().collect(),
            Value::Object(map) => map.values().collect(),
            _ => continue,
        };
        deepest = deepest.max(level + 1);
        stack.extend(children.into_iter().map(|v| (v, level + 1)));
    }
    deepest
}

/// How many levels of arrays and objects the JSON `text` nests (repeated keys included).
fn text_depth(text: &str) -> usize {
    let (mut level, mut deepest, mut in_string, mut escaped) = (0usize, 0, false, false);
    for b in text.bytes() {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                level += 1;
                deepest = deepest.max(level);
            }
            b']' | b'}' => level -= 1,
            _ => {}
        }
    }
    deepest
}

/// The properties' JSON is an object without repeated keys, holding what the accessors read,
/// and its size is the tracked one.
fn check_sizes(event: &Event) {
    let text = event.properties().to_string();
    if let Err(e) = serde_json::from_str::<NoDuplicateKeys>(&text) {
        panic!("properties JSON {text:?}: {e}");
    }
    let map: serde_json::Map<String, Value> = serde_json::from_str(&text).unwrap();
    assert_eq!(map, event.properties().to_map());
    assert_eq!(map.len(), event.properties().len());
    assert_eq!(__fuzz::tracked_properties_len(event), text.len() - 2);
}

/// Deserializes any JSON, failing on an object with a repeated key.
struct NoDuplicateKeys;

impl<'de> Deserialize<'de> for NoDuplicateKeys {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(NoDupVisitor)
    }
}

struct NoDupVisitor;

impl<'de> Visitor<'de> for NoDupVisitor {
    type Value = NoDuplicateKeys;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("JSON")
    }

    fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
        Ok(NoDuplicateKeys)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
        Ok(NoDuplicateKeys)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
        Ok(NoDuplicateKeys)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
        Ok(NoDuplicateKeys)
    }
    fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
        Ok(NoDuplicateKeys)
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(NoDuplicateKeys)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<NoDuplicateKeys>()?.is_some() {}
        Ok(NoDuplicateKeys)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut seen = HashSet::new();
        while let Some(key) = map.next_key::<String>()? {
            if !seen.insert(key.clone()) {
                return Err(de::Error::custom(format!("duplicate key {key:?}")));
            }
            map.next_value::<NoDuplicateKeys>()?;
        }
        Ok(NoDuplicateKeys)
    }
}
