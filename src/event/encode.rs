//! Serializes events into `/batch/` JSON, adding the library and super properties.
//!
//! This runs on the batch worker for every event, so it writes straight into the batch buffer:
//! no intermediate `Value`s, no per-event allocation. Precedence follows posthog-python: user
//! properties, then `$lib`/`$lib_version`/`$geoip_disable` over them, then super properties over
//! everything.

use std::{fmt, sync::Arc};

use serde_json::{Map, Value};
use uuid::Uuid;

use super::{
    json::{write_simple, write_str, write_str_parts, write_thousandths},
    Event, Pinned, TopLevel,
};
use crate::time::Timestamp;

const GEOIP_FRAGMENT: &[u8] = br#","$geoip_disable":true"#;

/// What the encoder adds to every event.
#[derive(Debug, Clone, Default)]
pub(crate) struct EncodeDefaults {
    /// Adds `$geoip_disable: true` to every event.
    pub(crate) disable_geoip: bool,
    /// Merged over every event's properties.
    pub(crate) super_properties: Map<String, Value>,
    /// Who sends the events: `$is_server`, `$os`, `$os_version`, `$release_id`, `$app_version`.
    pub(crate) system: SystemProperties,
}

/// The properties describing the sender that the encoder adds to every event besides `$lib`
/// and `$lib_version`, with posthog-python's precedence:
///
/// - `$os` and `$os_version` (when known) are written over the event's own values, and under
///   the super properties, like `$lib`; minimal events keep them.
/// - `$release_id` and `$app_version` (when set) are defaults: the event's own value and a
///   super property win; minimal events leave them out.
/// - `$is_server: true` (when on) is written over everything, super properties included.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct SystemProperties {
    pub(crate) is_server: bool,
    pub(crate) os: Option<String>,
    pub(crate) os_version: Option<String>,
    pub(crate) release_id: Option<String>,
    pub(crate) app_version: Option<String>,
}

/// The default keys (`SystemProperties::release_id`, `app_version`) as serialized entry
/// prefixes, with the bit an event that sets one gets in `EventWriter::own_defaults`.
const DEFAULT_KEYS: [(&str, &[u8], u8); 2] = [
    ("$release_id", br#""$release_id":"#, 1),
    ("$app_version", br#""$app_version":"#, 2),
];

const IS_SERVER_FRAGMENT: &[u8] = br#","$is_server":true"#;

/// Encodes events with a fixed set of defaults. Cheap to clone.
///
/// Every key is written once: a key the super properties set is left out of the library
/// fragments, so the super property's value is the only one (JSON objects with repeated keys
/// are read differently by different parsers).
///
/// An [`Event`] holds its properties as JSON already, so encoding one copies them, in one
/// piece unless the library or the super properties override some of them.
#[derive(Debug, Clone)]
pub(crate) struct Encoder {
    /// `,"$lib":"posthog-tower","$lib_version":"…"`, then `$os` and `$os_version` when known,
    /// for minimal events (no super properties).
    lib_fragment: Vec<u8>,
    /// `lib_fragment` without the keys the super properties set.
    lib_under_super: Vec<u8>,
    /// Whether the super properties set `$geoip_disable` (then they alone write it).
    super_sets_geoip: bool,
    /// `,"k":v,…` for the super properties (empty when there are none).
    super_fragment: Vec<u8>,
    super_properties: Map<String, Value>,
    /// The super properties' keys as serialized, with their quotes and a colon (`"k":`).
    super_keys: Vec<Vec<u8>>,
    /// The super properties a flag event with pinned properties gets: `super_fragment` and
    /// `super_keys` without the pinned keys, for [`Pinned::FlagCalledV2`] then
    /// [`Pinned::Exposure`] (empty when there are no super properties).
    pinned_supers: [(Vec<u8>, Vec<Vec<u8>>); 2],
    disable_geoip: bool,
    /// The encoder writes `$os` and `$os_version` (over the event's own values).
    writes_os: bool,
    writes_os_version: bool,
    /// `,"$is_server":true` when on, written last, over everything; else empty.
    is_server_fragment: &'static [u8],
    /// `,"$release_id":"…"` and `,"$app_version":"…"` (in [`DEFAULT_KEYS`]' order), each empty
    /// when unset or set by a super property: written unless the event sets the key.
    default_fragments: [Vec<u8>; 2],
}

impl Encoder {
    pub(crate) fn new(mut defaults: EncodeDefaults) -> Self {
        let system = std::mem::take(&mut defaults.system);
        if system.is_server {
            // `$is_server` is written after the super properties, over them: one entry only.
            defaults.super_properties.remove("$is_server");
        }
        let supers = &defaults.super_properties;
        let os_entries = [("$os", &system.os), ("$os_version", &system.os_version)];
        let lib_entries = |skip_super: bool| {
            let mut fragment = Vec::with_capacity(64);
            if !(skip_super && supers.contains_key("$lib")) {
                fragment.extend_from_slice(br#","$lib":"posthog-tower""#);
            }
            if !(skip_super && supers.contains_key("$lib_version")) {
                fragment.extend_from_slice(br#","$lib_version":""#);
                fragment.extend_from_slice(crate::VERSION.as_bytes());
                fragment.push(b'"');
            }
            for (key, value) in os_entries {
                if let Some(value) = value {
                    if !(skip_super && supers.contains_key(key)) {
                        fragment.push(b',');
                        write_str(&mut fragment, key);
                        fragment.push(b':');
                        write_str(&mut fragment, value);
                    }
                }
            }
            fragment
        };
        let default_fragments = [&system.release_id, &system.app_version]
            .into_iter()
            .zip(DEFAULT_KEYS)
            .map(|(value, (key, _, _))| match value {
                Some(value) if !supers.contains_key(key) => {
                    let mut fragment = vec![b','];
                    write_str(&mut fragment, key);
                    fragment.push(b':');
                    write_str(&mut fragment, value);
                    fragment
                }
                _ => Vec::new(),
            });
        let default_fragments = {
            let mut fragments = default_fragments;
            // `DEFAULT_KEYS` has two entries, so the iterator yields exactly two.
            [
                fragments.next().unwrap_or_default(),
                fragments.next().unwrap_or_default(),
            ]
        };
        let lib_fragment = lib_entries(false);
        let lib_under_super = lib_entries(true);
        let super_sets_geoip = supers.contains_key("$geoip_disable");
        let mut super_fragment = Vec::new();
        let mut super_keys = Vec::new();
        for (k, v) in &defaults.super_properties {
            let mut key = Vec::with_capacity(k.len() + 3);
            write_json(&mut key, k);
            key.push(b':');
            super_fragment.push(b',');
            super_fragment.extend_from_slice(&key);
            write_json(&mut super_fragment, v);
            super_keys.push(key);
        }
        let pinned = |pinned: Pinned| {
            let mut fragment = Vec::new();
            let mut keys = Vec::new();
            for (k, v) in supers
                .iter()
                .filter(|(k, _)| !pinned.keys().contains(&k.as_str()))
            {
                let mut key = Vec::with_capacity(k.len() + 3);
                write_json(&mut key, k);
                key.push(b':');
                fragment.push(b',');
                fragment.extend_from_slice(&key);
                write_json(&mut fragment, v);
                keys.push(key);
            }
            (fragment, keys)
        };
        let pinned_supers = [pinned(Pinned::FlagCalledV2), pinned(Pinned::Exposure)];
        Encoder {
            lib_fragment,
            lib_under_super,
            super_sets_geoip,
            pinned_supers,
            super_fragment,
            super_properties: defaults.super_properties,
            super_keys,
            disable_geoip: defaults.disable_geoip,
            writes_os: system.os.is_some(),
            writes_os_version: system.os_version.is_some(),
            is_server_fragment: if system.is_server {
                IS_SERVER_FRAGMENT
            } else {
                b""
            },
            default_fragments,
        }
    }

    /// The bit of `DEFAULT_KEYS` an entry (a serialized `"key":value`) sets, if any; 0 when
    /// the encoder writes no defaults.
    #[inline]
    fn default_bit(&self, entry: &[u8]) -> u8 {
        if self.default_fragments.iter().all(Vec::is_empty) {
            return 0;
        }
        DEFAULT_KEYS
            .iter()
            .find(|(_, prefix, _)| entry.starts_with(prefix))
            .map_or(0, |(_, _, bit)| *bit)
    }

    /// [`default_bit`](Self::default_bit) for a key.
    #[inline]
    fn default_key_bit(&self, key: &str) -> u8 {
        if self.default_fragments.iter().all(Vec::is_empty) {
            return 0;
        }
        DEFAULT_KEYS
            .iter()
            .find(|(name, _, _)| *name == key)
            .map_or(0, |(_, _, bit)| *bit)
    }

    /// Bytes the library and super properties add to an event.
    pub(crate) fn added_len(&self) -> usize {
        self.lib_fragment.len()
            + GEOIP_FRAGMENT.len()
            + self.super_fragment.len()
            + self.is_server_fragment.len()
            + self.default_fragments.iter().map(Vec::len).sum::<usize>()
    }

    /// Whether the super properties set `key`.
    #[inline]
    fn super_sets(&self, key: &str) -> bool {
        !self.super_properties.is_empty() && self.super_properties.contains_key(key)
    }

    /// Whether the encoder writes `key` itself (so the event's own value is skipped).
    fn overridden(&self, key: &str, geoip_disabled: bool, minimal: bool) -> bool {
        if key.starts_with('$')
            && (key == "$lib"
                || key == "$lib_version"
                || (geoip_disabled && key == "$geoip_disable")
                || (self.writes_os && key == "$os")
                || (self.writes_os_version && key == "$os_version")
                || (!self.is_server_fragment.is_empty() && key == "$is_server"))
        {
            return true;
        }
        // A minimal event was already cut down to the allow-list (before `before_send`); super
        // properties do not apply to it.
        !minimal && self.super_sets(key)
    }

    /// Whether the encoder writes the key of `entry` (a serialized `"key":value`) itself, or
    /// moves it out of the properties (`top`), so the event's own entry is left out.
    fn skips(
        &self,
        entry: &[u8],
        geoip_disabled: bool,
        minimal: bool,
        top: &[u8],
        pinned: Pinned,
    ) -> bool {
        if entry.get(1) == Some(&b'$')
            && (entry.starts_with(br#""$lib":"#)
                || entry.starts_with(br#""$lib_version":"#)
                || (geoip_disabled && entry.starts_with(br#""$geoip_disable":"#))
                || (self.writes_os && entry.starts_with(br#""$os":"#))
                || (self.writes_os_version && entry.starts_with(br#""$os_version":"#))
                || (!self.is_server_fragment.is_empty() && entry.starts_with(br#""$is_server":"#))
                || (!top.is_empty() && entry.starts_with(top)))
        {
            return true;
        }
        !minimal
            && self
                .supers(pinned)
                .1
                .iter()
                .any(|key| entry.starts_with(key))
    }

    /// The super properties' fragment and keys for an event with `pinned` properties.
    fn supers(&self, pinned: Pinned) -> (&[u8], &[Vec<u8>]) {
        match pinned {
            Pinned::None => (&self.super_fragment, &self.super_keys),
            Pinned::FlagCalledV2 => (&self.pinned_supers[0].0, &self.pinned_supers[0].1),
            Pinned::Exposure => (&self.pinned_supers[1].0, &self.pinned_supers[1].1),
        }
    }

    /// Turns `event` into its JSON object, in the event's own buffer: the properties' entries
    /// are there already, the head (`{"event":…,"properties":{`) is written after them and
    /// rotated in front, and the library and super properties, the timestamp and the uuid
    /// follow. The setters keep room for all that, so this allocates nothing for a usual
    /// event, and the event's other memory is freed here, on the caller's thread.
    pub(crate) fn encode_owned(
        &self,
        mut event: Event,
        uuid: Uuid,
        timestamp: Timestamp,
    ) -> Vec<u8> {
        let inner = &mut *event.inner;
        let top: &[u8] = match inner.top_level {
            TopLevel::None => b"",
            TopLevel::Set => br#""$set":"#,
            TopLevel::SetOnce => br#""$set_once":"#,
        };
        let geoip_disabled = inner.disable_geoip.unwrap_or(self.disable_geoip);
        let minimal = inner.minimal;
        let pinned = inner.pinned;
        // The entries the encoder writes itself, or moves to the top level, leave the
        // properties (rare: usually nothing is removed).
        let mut top_value = None;
        let mut own_defaults = 0;
        let mut i = 0;
        while i < inner.properties.len() {
            let entry = inner.properties.entry_json(i);
            if entry.get(1) == Some(&b'$') {
                own_defaults |= self.default_bit(entry);
            }
            if self.skips(entry, geoip_disabled, minimal, top, pinned) {
                if !top.is_empty() && entry.starts_with(top) {
                    top_value = Some(entry[top.len()..].to_vec());
                }
                inner.properties.remove_at(i);
            } else {
                i += 1;
            }
        }
        let mut out = inner.properties.take_json();
        let entries = out.len();
        self.write_head(&mut out, inner.name(), inner.distinct_id());
        let head = out.len() - entries;
        out.rotate_right(head);
        let writer = EventWriter {
            encoder: self,
            out: &mut out,
            first: entries == 0,
            geoip_disabled,
            minimal,
            own_defaults,
            pinned,
        };
        writer.finish_raw(
            timestamp,
            uuid,
            top_value
                .as_deref()
                .map(|value| (&top[..top.len() - 1], value)),
        );
        if let Some(options) = &inner.options {
            // Reopen the object closed by `finish_raw` (its last byte is its `}`).
            out.pop();
            options.write(&mut out);
            out.push(b'}');
        }
        out
    }

    /// Appends `event` as one JSON object to `out` (a copy of what
    /// [`encode_owned`](Self::encode_owned) makes of it).
    #[cfg(any(test, fuzzing))]
    pub(crate) fn encode(
        &self,
        out: &mut Vec<u8>,
        event: &Event,
        uuid: Uuid,
        timestamp: Timestamp,
    ) {
        out.extend_from_slice(&self.encode_owned(event.clone(), uuid, timestamp));
    }

    /// `{"event":…,"distinct_id":…,"properties":{`.
    fn write_head(&self, out: &mut Vec<u8>, name: &str, distinct_id: Option<&str>) {
        out.extend_from_slice(br#"{"event":"#);
        write_str(out, name);
        self.write_head_after_name(out, distinct_id);
    }

    /// `,"distinct_id":…,"properties":{`.
    fn write_head_after_name(&self, out: &mut Vec<u8>, distinct_id: Option<&str>) {
        out.extend_from_slice(br#","distinct_id":"#);
        match distinct_id {
            Some(id) => write_str(out, id),
            None => write_uuid(out, crate::id::new_v4()),
        }
        out.extend_from_slice(br#","properties":{"#);
    }

    /// Starts appending an event to `out` (`{"event":…,"distinct_id":…,"properties":{`), for
    /// callers that write its properties from borrowed values instead of building an
    /// [`Event`]. [`EventWriter::finish`] completes it; the bytes are those [`encode`]
    /// writes for an `Event` with the same fields and properties (`None` as the distinct id:
    /// a random one, as for [`Event::anonymous`]).
    ///
    /// [`encode`]: Self::encode
    #[cfg(test)]
    pub(crate) fn writer<'a>(
        &'a self,
        out: &'a mut Vec<u8>,
        name: &str,
        distinct_id: Option<&str>,
        disable_geoip: Option<bool>,
        minimal: bool,
    ) -> EventWriter<'a> {
        self.write_head(out, name, distinct_id);
        EventWriter {
            encoder: self,
            out,
            first: true,
            geoip_disabled: disable_geoip.unwrap_or(self.disable_geoip),
            minimal,
            own_defaults: 0,
            pinned: Pinned::None,
        }
    }
}

/// An event name many events share (a layer's pageviews), with the start of their JSON
/// (`{"event":"…"`) written once.
#[derive(Clone)]
pub(crate) struct EventName {
    name: Arc<str>,
    head: Arc<[u8]>,
}

impl EventName {
    pub(crate) fn new(name: &str) -> Self {
        let mut head = br#"{"event":"#.to_vec();
        write_str(&mut head, name);
        EventName {
            name: Arc::from(name),
            head: Arc::from(head),
        }
    }

    pub(crate) fn as_str(&self) -> &str {
        &self.name
    }
}

impl fmt::Debug for EventName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.name, f)
    }
}

impl Encoder {
    /// [`writer`](Self::writer) for an event named `name`, whose head is copied whole.
    pub(crate) fn writer_named<'a>(
        &'a self,
        out: &'a mut Vec<u8>,
        name: &EventName,
        distinct_id: Option<&str>,
    ) -> EventWriter<'a> {
        out.extend_from_slice(&name.head);
        self.write_head_after_name(out, distinct_id);
        EventWriter {
            encoder: self,
            out,
            first: true,
            geoip_disabled: self.disable_geoip,
            minimal: false,
            own_defaults: 0,
            pinned: Pinned::None,
        }
    }
}

/// Where an [`EventWriter`] stopped, to [resume](Encoder::resume) it later on the same
/// buffer.
#[derive(Debug, Clone, Copy)]
pub(crate) struct WriterState {
    first: bool,
    geoip_disabled: bool,
    minimal: bool,
    own_defaults: u8,
}

impl Encoder {
    /// Continues an event [paused](EventWriter::pause) on `out`, which must hold what was
    /// written until then (and nothing after it).
    pub(crate) fn resume<'a>(
        &'a self,
        out: &'a mut Vec<u8>,
        state: WriterState,
    ) -> EventWriter<'a> {
        EventWriter {
            encoder: self,
            out,
            first: state.first,
            geoip_disabled: state.geoip_disabled,
            minimal: state.minimal,
            own_defaults: state.own_defaults,
            pinned: Pinned::None,
        }
    }
}

/// A property key known when the crate is compiled, with its entry's prefix (`,"key":`)
/// spelled out then: writing it is one copy, with no escaping to look for. Made by
/// `static_key!`, which checks at compile time that the key needs no
/// escaping.
#[derive(Clone, Copy, Debug)]
pub(crate) struct StaticKey {
    pub(crate) name: &'static str,
    /// `,"name":`.
    entry: &'static str,
    /// One of the keys the library writes itself (`$lib`, `$lib_version`, `$geoip_disable`,
    /// and the [`SystemProperties`]).
    library: bool,
}

impl StaticKey {
    /// `entry` must be `,"name":`; `static_key!` builds both.
    pub(crate) const fn new(name: &'static str, entry: &'static str) -> Self {
        let bytes = name.as_bytes();
        let mut i = 0;
        while i < bytes.len() {
            assert!(
                bytes[i] >= 0x20 && bytes[i] != b'"' && bytes[i] != b'\\',
                "a static key needs no JSON escaping"
            );
            i += 1;
        }
        assert!(entry.len() == name.len() + 4, "entry is `,\"name\":`");
        let library = const_eq(name, "$lib")
            || const_eq(name, "$lib_version")
            || const_eq(name, "$geoip_disable")
            || const_eq(name, "$os")
            || const_eq(name, "$os_version")
            || const_eq(name, "$is_server")
            || const_eq(name, "$release_id")
            || const_eq(name, "$app_version");
        StaticKey {
            name,
            entry,
            library,
        }
    }
}

/// `a == b`, in a `const fn`.
const fn const_eq(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i < a.len() {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}

/// An event being appended to a buffer: see [`Encoder::writer`].
pub(crate) struct EventWriter<'a> {
    encoder: &'a Encoder,
    out: &'a mut Vec<u8>,
    /// No property written yet (the next one has no leading comma).
    first: bool,
    geoip_disabled: bool,
    minimal: bool,
    /// The bits of the [`DEFAULT_KEYS`] the event wrote itself (then the encoder does not).
    own_defaults: u8,
    /// Only for events encoded whole ([`Encoder::encode_owned`]); a writer's own
    /// properties are never pinned.
    pinned: Pinned,
}

impl EventWriter<'_> {
    /// Writes one property, unless the library or the super properties set `key` (they win).
    /// Each key must be written at most once.
    pub(crate) fn property<T: serde::Serialize + ?Sized>(&mut self, key: &str, value: &T) {
        if self.key(key) && !write_simple(self.out, value) {
            write_json(self.out, value);
        }
    }

    /// [`property`](Self::property) for a string.
    pub(crate) fn property_str(&mut self, key: &str, value: &str) {
        if self.key(key) {
            write_str(self.out, value);
        }
    }

    /// [`property`](Self::property) for a string made of `parts`, without building it.
    pub(crate) fn property_str_parts(&mut self, key: &str, parts: &[&str]) {
        if self.key(key) {
            write_str_parts(self.out, parts);
        }
    }

    /// [`property`](Self::property) for a boolean.
    pub(crate) fn property_bool(&mut self, key: &str, value: bool) {
        if self.key(key) {
            self.out
                .extend_from_slice(if value { b"true" } else { b"false" });
        }
    }

    /// [`property_str`](Self::property_str) for a key known at compile time.
    #[inline]
    pub(crate) fn static_str(&mut self, key: StaticKey, value: &str) {
        if self.static_key(key) {
            write_str(self.out, value);
        }
    }

    /// [`property_str_parts`](Self::property_str_parts) for a key known at compile time.
    #[inline]
    pub(crate) fn static_str_parts(&mut self, key: StaticKey, parts: &[&str]) {
        if self.static_key(key) {
            write_str_parts(self.out, parts);
        }
    }

    /// [`property_bool`](Self::property_bool) for a key known at compile time.
    #[inline]
    pub(crate) fn static_bool(&mut self, key: StaticKey, value: bool) {
        if self.static_key(key) {
            self.out
                .extend_from_slice(if value { b"true" } else { b"false" });
        }
    }

    /// [`property`](Self::property) for an integer, with a key known at compile time.
    pub(crate) fn static_u64(&mut self, key: StaticKey, value: u64) {
        if self.static_key(key) {
            // The digits `serde_json` writes for a `u64` (it uses `itoa` too), without its
            // serializer around them.
            self.out
                .extend_from_slice(itoa::Buffer::new().format(value).as_bytes());
        }
    }

    /// [`property`](Self::property) for the float `thousandths as f64 / 1000.0` (a duration
    /// in milliseconds counted in microseconds), with a key known at compile time.
    pub(crate) fn static_thousandths(&mut self, key: StaticKey, thousandths: u64) {
        if self.static_key(key) {
            write_thousandths(self.out, thousandths);
        }
    }

    /// [`property`](Self::property) for a key known at compile time.
    pub(crate) fn static_property<T: serde::Serialize + ?Sized>(
        &mut self,
        key: StaticKey,
        value: &T,
    ) {
        if self.static_key(key) && !write_simple(self.out, value) {
            write_json(self.out, value);
        }
    }

    /// [`key`](Self::key) for a key known at compile time: its entry's prefix is copied whole.
    #[inline(always)]
    fn static_key(&mut self, key: StaticKey) -> bool {
        // What `Encoder::overridden` checks, with the library keys known at compile time.
        if key.library {
            if self
                .encoder
                .overridden(key.name, self.geoip_disabled, self.minimal)
            {
                return false;
            }
            self.own_defaults |= self.encoder.default_key_bit(key.name);
        }
        if !self.minimal && self.encoder.super_sets(key.name) {
            return false;
        }
        let entry = key.entry.as_bytes();
        // `entry` starts with the comma, one byte.
        self.out
            .extend_from_slice(if self.first { &entry[1..] } else { entry });
        self.first = false;
        true
    }

    /// Writes `"key":` (after a comma unless it is the first), unless the library or the
    /// super properties set `key`: then `false`, and the value is not to be written.
    fn key(&mut self, key: &str) -> bool {
        if self
            .encoder
            .overridden(key, self.geoip_disabled, self.minimal)
        {
            return false;
        }
        if key.starts_with('$') {
            self.own_defaults |= self.encoder.default_key_bit(key);
        }
        if !self.first {
            self.out.push(b',');
        }
        self.first = false;
        write_str(self.out, key);
        self.out.push(b':');
        true
    }

    /// Stops writing, to [resume](Encoder::resume) later.
    pub(crate) fn pause(self) -> WriterState {
        WriterState {
            first: self.first,
            geoip_disabled: self.geoip_disabled,
            minimal: self.minimal,
            own_defaults: self.own_defaults,
        }
    }

    /// Adds the library and super properties, the timestamp and the uuid, and closes the
    /// event.
    pub(crate) fn finish(self, timestamp: Timestamp, uuid: Uuid) {
        self.finish_raw(timestamp, uuid, None);
    }

    /// [`finish`](Self::finish), with `top` (the serialized key and value of the person
    /// helpers' top-level `$set`/`$set_once`) after the uuid.
    fn finish_raw(self, timestamp: Timestamp, uuid: Uuid, top: Option<(&[u8], &[u8])>) {
        let encoder = self.encoder;
        let out = self.out;
        let mut first = self.first;
        let (lib, geoip, supers): (&[u8], bool, &[u8]) = if self.minimal {
            (&encoder.lib_fragment, self.geoip_disabled, &[])
        } else {
            (
                &encoder.lib_under_super,
                self.geoip_disabled && !encoder.super_sets_geoip,
                encoder.supers(self.pinned).0,
            )
        };
        let default = |i: usize| -> &[u8] {
            let (_, _, bit) = DEFAULT_KEYS[i];
            if self.minimal || self.own_defaults & bit != 0 {
                &[]
            } else {
                &encoder.default_fragments[i]
            }
        };
        for fragment in [
            lib,
            if geoip { GEOIP_FRAGMENT } else { &[] },
            supers,
            default(0),
            default(1),
            encoder.is_server_fragment,
        ] {
            if let Some(rest) = fragment.strip_prefix(b",") {
                out.extend_from_slice(if first { rest } else { fragment });
                first = false;
            }
        }
        out.extend_from_slice(br#"},"timestamp":""#);
        timestamp.write_rfc3339(out);
        out.extend_from_slice(br#"","uuid":"#);
        write_uuid(out, uuid);
        if let Some((key, value)) = top {
            out.push(b',');
            out.extend_from_slice(key);
            out.push(b':');
            out.extend_from_slice(value);
        }
        out.push(b'}');
    }
}

/// Every byte's two lowercase hex digits.
static HEX_PAIRS: [[u8; 2]; 256] = {
    let digits = b"0123456789abcdef";
    let mut pairs = [[0; 2]; 256];
    let mut i = 0;
    while i < 256 {
        pairs[i] = [digits[i >> 4], digits[i & 15]];
        i += 1;
    }
    pairs
};

/// Appends `uuid` as a quoted, hyphenated, lowercase JSON string (what `uuid`'s `Display`
/// writes), a byte pair at a time: a third of the instructions of `uuid`'s encoder, which
/// goes a nibble at a time, and twice per anonymous pageview.
fn write_uuid(out: &mut Vec<u8>, uuid: Uuid) {
    let mut text = [b'-'; 38];
    text[0] = b'"';
    text[37] = b'"';
    // Where each byte's two digits go, after the opening quote and around the hyphens.
    const AT: [usize; 16] = [1, 3, 5, 7, 10, 12, 15, 17, 20, 22, 25, 27, 29, 31, 33, 35];
    for (byte, at) in uuid.as_bytes().iter().zip(AT) {
        text[at..at + 2].copy_from_slice(&HEX_PAIRS[usize::from(*byte)]);
    }
    out.extend_from_slice(&text);
}

/// Writes `value` as compact JSON. Writing into a `Vec` cannot fail, and every value here is a
/// `String` or a `serde_json::Value`, whose serialization cannot fail either.
pub(crate) fn write_json<T: serde::Serialize + ?Sized>(out: &mut Vec<u8>, value: &T) {
    if let Err(e) = serde_json::to_writer(&mut *out, value) {
        // Unreachable for strings and `Value`s; keep the output valid JSON regardless.
        tracing::error!(error = %e, "posthog: could not serialize a value; sent null");
        out.extend_from_slice(b"null");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn uuids_are_written_as_their_display() {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..1000 {
            seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            let uuid = Uuid::from_u64_pair(seed, seed.rotate_left(29) ^ 0xa5a5);
            let mut out = Vec::new();
            write_uuid(&mut out, uuid);
            assert_eq!(out, format!("\"{uuid}\"").into_bytes());
        }
        let mut out = Vec::new();
        write_uuid(&mut out, Uuid::max());
        assert_eq!(out, b"\"ffffffff-ffff-ffff-ffff-ffffffffffff\"");
    }

    fn encode(encoder: &Encoder, event: &Event) -> Value {
        let mut out = Vec::new();
        let uuid = Uuid::from_u128(0x0192_0000_0000_7000_8000_0000_0000_0001);
        encoder.encode(
            &mut out,
            event,
            uuid,
            Timestamp::from_unix_millis(1_700_000_000_123).unwrap(),
        );
        serde_json::from_slice(&out).expect("valid JSON")
    }

    #[test]
    fn event_fields_and_precedence() {
        let mut super_properties = Map::new();
        super_properties.insert("env".into(), json!("prod"));
        let encoder = Encoder::new(EncodeDefaults {
            disable_geoip: true,
            super_properties,
            ..Default::default()
        });
        let event = Event::new("clicked \"buy\"", "user-1")
            .property("env", "dev")
            .property("$lib", "mine")
            .property("n", 1);
        let v = encode(&encoder, &event);
        assert_eq!(v["event"], "clicked \"buy\"");
        assert_eq!(v["distinct_id"], "user-1");
        assert_eq!(v["uuid"], "01920000-0000-7000-8000-000000000001");
        assert_eq!(v["timestamp"], "2023-11-14T22:13:20.123000Z");
        let p = &v["properties"];
        assert_eq!(p["env"], "prod", "super properties win");
        assert_eq!(
            p["$lib"], "posthog-tower",
            "lib properties win over user ones"
        );
        assert_eq!(p["$lib_version"], crate::VERSION);
        assert_eq!(p["$geoip_disable"], true);
        assert_eq!(p["n"], 1);
    }

    /// Found by `fuzz/` (`event_properties`): a super property named like a library property
    /// (`$lib`, `$lib_version`, `$geoip_disable`) was written a second time after the library's
    /// own, giving an object with repeated keys.
    #[test]
    fn super_properties_replace_library_keys_without_repeating_them() {
        let mut super_properties = Map::new();
        super_properties.insert("$lib".into(), json!("wrapper"));
        super_properties.insert("$lib_version".into(), json!(7));
        super_properties.insert("$geoip_disable".into(), json!(false));
        let encoder = Encoder::new(EncodeDefaults {
            disable_geoip: true,
            super_properties,
            ..Default::default()
        });
        for event in [Event::new("e", "u"), Event::new("e", "u").property("n", 1)] {
            let mut out = Vec::new();
            encoder.encode(&mut out, &event, Uuid::nil(), Timestamp::UNIX_EPOCH);
            let text = String::from_utf8(out).unwrap();
            for key in ["\"$lib\"", "\"$lib_version\"", "\"$geoip_disable\""] {
                assert_eq!(text.matches(key).count(), 1, "{key} in {text}");
            }
            let v: Value = serde_json::from_str(&text).expect("valid JSON");
            assert_eq!(v["properties"]["$lib"], "wrapper");
            assert_eq!(v["properties"]["$lib_version"], 7);
            assert_eq!(v["properties"]["$geoip_disable"], false);
            assert!(text.len() <= event.estimated_size() + encoder.added_len());
        }
        // A minimal event carries no super properties, so it keeps the library's own.
        let mut event = Event::new("e", "u").property("$feature_flag", "f");
        event.inner.minimal = true;
        let v = encode(&encoder, &event);
        assert_eq!(v["properties"]["$lib"], "posthog-tower");
        assert_eq!(v["properties"]["$geoip_disable"], true);
        assert_eq!(v["properties"]["$feature_flag"], "f");
    }

    /// Writing properties one by one (paused and resumed half way) gives the bytes
    /// `encode` gives for the `Event` with the same properties, written in its order.
    #[test]
    fn a_writer_writes_what_encode_writes() {
        let mut super_properties = Map::new();
        super_properties.insert("b".into(), json!("super"));
        let encoder = Encoder::new(EncodeDefaults {
            disable_geoip: true,
            super_properties,
            ..Default::default()
        });
        let event = Event::new("e \"1\"", "u\n")
            .property("$lib", "mine")
            .property("a", 1.5)
            .property("b", "overridden")
            .property("c", json!({"x": [1, "y"]}));
        let (uuid, ts) = (
            Uuid::from_u128(7),
            Timestamp::from_unix_millis(1_700_000_000_123).unwrap(),
        );
        let mut expected = Vec::new();
        encoder.encode(&mut expected, &event, uuid, ts);

        let mut out = Vec::new();
        let mut writer = encoder.writer(&mut out, "e \"1\"", Some("u\n"), None, false);
        writer.property("$lib", "mine");
        writer.property("a", &1.5);
        let state = writer.pause();
        let mut writer = encoder.resume(&mut out, state);
        writer.property("b", "overridden");
        writer.property("c", &json!({"x": [1, "y"]}));
        writer.finish(ts, uuid);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            String::from_utf8(expected).unwrap()
        );
    }

    /// A key known at compile time writes the bytes the same key written at run time does,
    /// first or not, and is left out the same way when a super property sets it.
    #[test]
    fn static_keys_write_what_run_time_keys_write() {
        let mut super_properties = Map::new();
        super_properties.insert("$host".into(), json!("super"));
        let encoder = Encoder::new(EncodeDefaults {
            disable_geoip: false,
            super_properties,
            ..Default::default()
        });
        let (uuid, ts) = (Uuid::from_u128(7), Timestamp::UNIX_EPOCH);
        let mut dynamic = Vec::new();
        let mut writer = encoder.writer(&mut dynamic, "e", Some("u"), None, false);
        writer.property_str("$pathname", "/a");
        writer.property_str("$host", "h");
        writer.property_bool("$ok", true);
        writer.property("$n", &3);
        writer.property_str_parts("$url", &["a", "b"]);
        writer.finish(ts, uuid);
        let mut fixed = Vec::new();
        let mut writer = encoder.writer(&mut fixed, "e", Some("u"), None, false);
        writer.static_str(static_key!("$pathname"), "/a");
        writer.static_str(static_key!("$host"), "h");
        writer.static_bool(static_key!("$ok"), true);
        writer.static_property(static_key!("$n"), &3);
        writer.static_str_parts(static_key!("$url"), &["a", "b"]);
        writer.finish(ts, uuid);
        assert_eq!(
            String::from_utf8(fixed).unwrap(),
            String::from_utf8(dynamic).unwrap()
        );
    }

    #[test]
    #[should_panic(expected = "no JSON escaping")]
    fn a_static_key_that_needs_escaping_is_refused() {
        // In a `const`, as `static_key!` builds it, this fails the build instead.
        let _ = StaticKey::new("a\"b", ",\"a\"b\":");
    }

    fn system() -> SystemProperties {
        SystemProperties {
            is_server: true,
            os: Some("Linux".into()),
            os_version: Some("6.1.0".into()),
            release_id: Some("rel-1".into()),
            app_version: Some("2.0.0".into()),
        }
    }

    /// `$os`/`$os_version` win over the event like `$lib`; `$release_id`/`$app_version` are
    /// defaults under the event's own values; `$is_server` wins over everything; each key
    /// appears once.
    #[test]
    fn system_properties_follow_posthog_python_precedence() {
        let encoder = Encoder::new(EncodeDefaults {
            system: system(),
            ..Default::default()
        });
        let plain = encode(&encoder, &Event::new("e", "u"));
        let p = &plain["properties"];
        assert_eq!(p["$os"], "Linux");
        assert_eq!(p["$os_version"], "6.1.0");
        assert_eq!(p["$is_server"], true);
        assert_eq!(p["$release_id"], "rel-1");
        assert_eq!(p["$app_version"], "2.0.0");

        let event = Event::new("e", "u")
            .property("$os", "Plan 9")
            .property("$is_server", false)
            .property("$release_id", "mine")
            .property("n", 1);
        let mut out = Vec::new();
        encoder.encode(&mut out, &event, Uuid::nil(), Timestamp::UNIX_EPOCH);
        let text = String::from_utf8(out).unwrap();
        for key in [
            "\"$os\"",
            "\"$is_server\"",
            "\"$release_id\"",
            "\"$app_version\"",
        ] {
            assert_eq!(text.matches(key).count(), 1, "{key} in {text}");
        }
        assert!(text.len() <= event.estimated_size() + encoder.added_len());
        let v: Value = serde_json::from_str(&text).unwrap();
        let p = &v["properties"];
        assert_eq!(p["$os"], "Linux", "the library's $os wins");
        assert_eq!(p["$is_server"], true, "$is_server wins");
        assert_eq!(p["$release_id"], "mine", "the event's release id wins");
        assert_eq!(p["$app_version"], "2.0.0");

        // Super properties win over `$os` and the defaults, never over `$is_server`.
        let mut super_properties = Map::new();
        super_properties.insert("$os".into(), json!("custom"));
        super_properties.insert("$app_version".into(), json!("super"));
        super_properties.insert("$is_server".into(), json!(false));
        let encoder = Encoder::new(EncodeDefaults {
            super_properties,
            system: system(),
            ..Default::default()
        });
        let mut out = Vec::new();
        let event = Event::new("e", "u").property("$app_version", "own");
        encoder.encode(&mut out, &event, Uuid::nil(), Timestamp::UNIX_EPOCH);
        let text = String::from_utf8(out).unwrap();
        for key in ["\"$os\"", "\"$is_server\"", "\"$app_version\""] {
            assert_eq!(text.matches(key).count(), 1, "{key} in {text}");
        }
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["properties"]["$os"], "custom");
        assert_eq!(v["properties"]["$app_version"], "super");
        assert_eq!(v["properties"]["$is_server"], true);

        // Minimal events keep `$os`, `$os_version` and `$is_server`, not the defaults.
        let mut event = Event::new("e", "u").property("$feature_flag", "f");
        event.inner.minimal = true;
        let v = encode(&encoder, &event);
        let p = v["properties"].as_object().unwrap();
        assert_eq!(p["$os"], "Linux");
        assert_eq!(p["$is_server"], true);
        assert!(!p.contains_key("$release_id") && !p.contains_key("$app_version"));

        // Off: no `$is_server`, and the event's own passes.
        let encoder = Encoder::new(EncodeDefaults {
            system: SystemProperties {
                is_server: false,
                ..system()
            },
            ..Default::default()
        });
        let v = encode(&encoder, &Event::new("e", "u"));
        assert!(v["properties"].get("$is_server").is_none());
        let v = encode(
            &encoder,
            &Event::new("e", "u").property("$is_server", false),
        );
        assert_eq!(v["properties"]["$is_server"], false);
    }

    /// The writer (the layer's pageviews) leaves the defaults to a static or run-time key the
    /// event wrote, as `encode` does.
    #[test]
    fn a_writer_keeps_its_own_release_id() {
        let encoder = Encoder::new(EncodeDefaults {
            system: system(),
            ..Default::default()
        });
        let mut out = Vec::new();
        let mut writer = encoder.writer(&mut out, "e", Some("u"), None, false);
        writer.static_str(static_key!("$release_id"), "own");
        writer.property_str("$app_version", "own too");
        writer.property_str("$os", "ignored");
        writer.finish(Timestamp::UNIX_EPOCH, Uuid::nil());
        let text = String::from_utf8(out).unwrap();
        for key in ["\"$os\"", "\"$release_id\"", "\"$app_version\""] {
            assert_eq!(text.matches(key).count(), 1, "{key} in {text}");
        }
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["properties"]["$release_id"], "own");
        assert_eq!(v["properties"]["$app_version"], "own too");
        assert_eq!(v["properties"]["$os"], "Linux");
    }

    #[test]
    fn encodes_an_event_without_properties() {
        let encoder = Encoder::new(EncodeDefaults::default());
        let v = encode(&encoder, &Event::new("e", "u"));
        assert_eq!(v["properties"]["$lib"], "posthog-tower");
    }

    #[test]
    fn geoip_key_absent_when_enabled_and_set_top_level() {
        let encoder = Encoder::new(EncodeDefaults::default());
        let event = Event::person_update(false, "u".into(), json!({"name": "Ada"}));
        let v = encode(&encoder, &event);
        assert!(v["properties"].get("$geoip_disable").is_none());
        assert_eq!(v["$set"], json!({"name": "Ada"}));
        assert!(v["properties"].get("$set").is_none());
        assert_eq!(v["event"], "$set");
    }

    #[test]
    fn anonymous_events_get_a_random_distinct_id() {
        let encoder = Encoder::new(EncodeDefaults::default());
        let v = encode(&encoder, &Event::anonymous("e"));
        let id = v["distinct_id"].as_str().expect("string id");
        assert_eq!(Uuid::parse_str(id).map(|u| u.get_version_num()), Ok(4));
        assert_eq!(v["properties"]["$process_person_profile"], false);
    }
}
