//! An event's properties, kept as the JSON they are sent as.

use std::fmt;

use serde::Serialize;
use serde_json::{Map, Value};

use super::convert;
use crate::error::PropertyError;

/// An event's properties, held as the JSON object PostHog receives.
///
/// Each setter serializes its value once, when it is called, and checks it then (NaN,
/// infinities, nesting); the event keeps the JSON text, not a tree of values. An event with
/// ten properties is four allocations, and sending it copies its properties as they are.
/// Reading a property parses it back ([`get`](Properties::get)), which is for tests and hooks,
/// not for hot paths.
///
/// Keys are unique: setting a key again replaces its value in place.
///
/// # Example
///
/// ```
/// use posthog_tower::Event;
/// use serde_json::json;
///
/// let event = Event::new("order placed", "user-42")
///     .property("amount", 31.5)
///     .property("items", vec!["book", "pen"]);
/// let properties = event.properties();
/// assert_eq!(properties.len(), 2);
/// assert_eq!(properties.get("amount"), Some(json!(31.5)));
/// assert_eq!(properties.to_string(), r#"{"amount":31.5,"items":["book","pen"]}"#);
/// ```
#[derive(Clone, Default)]
pub struct Properties {
    /// `"key":value` entries separated by commas: a JSON object without its braces.
    json: Vec<u8>,
    /// Where each entry starts in `json` (its key's opening quote), in order.
    starts: Offsets,
    /// Bit `n % 64` is set when some key, serialized with its quotes and colon, is `n` bytes
    /// long (or was: removing a key leaves its bit). A key whose bit is clear is new, without
    /// a look at the others.
    lengths: u64,
}

/// Room the setters keep free after the entries for what encoding the event adds around them
/// (its head, the library properties, the timestamp and the uuid: about 200 bytes with a
/// short name and distinct id), so that `capture` encodes it in place, without allocating.
const ENCODING_ROOM: usize = 256;

/// The bit of [`Properties::lengths`] for a serialized key of `len` bytes.
fn length_bit(len: usize) -> u64 {
    1 << (len % 64)
}

impl PartialEq for Properties {
    fn eq(&self, other: &Self) -> bool {
        self.json == other.json
    }
}

impl Eq for Properties {}

impl Properties {
    /// The number of properties.
    pub fn len(&self) -> usize {
        self.starts.as_slice().len()
    }

    /// `true` when there are none.
    pub fn is_empty(&self) -> bool {
        self.starts.as_slice().is_empty()
    }

    /// `true` when `key` is set.
    pub fn contains_key(&self, key: &str) -> bool {
        self.find(key).is_some()
    }

    /// The value of `key`, parsed from its JSON.
    pub fn get(&self, key: &str) -> Option<Value> {
        let i = self.find(key)?;
        serde_json::from_slice(self.value_json(i)).ok()
    }

    /// The keys, in the order they were first set.
    pub fn keys(&self) -> impl Iterator<Item = String> + '_ {
        (0..self.len()).filter_map(|i| serde_json::from_slice(self.key_json(i)).ok())
    }

    /// Every property, parsed, in the order they were first set.
    pub fn iter(&self) -> impl Iterator<Item = (String, Value)> + '_ {
        (0..self.len()).filter_map(|i| {
            let key = serde_json::from_slice(self.key_json(i)).ok()?;
            let value = serde_json::from_slice(self.value_json(i)).ok()?;
            Some((key, value))
        })
    }

    /// Every property, parsed into a JSON object.
    pub fn to_map(&self) -> Map<String, Value> {
        self.iter().collect()
    }

    // ===== internals =====

    /// The entries as serialized (`"k":v,"k2":v2`), the inside of the JSON object.
    pub(crate) fn as_json(&self) -> &[u8] {
        &self.json
    }

    /// Entry `i`, without the comma that separates it from the next.
    pub(crate) fn entry_json(&self, i: usize) -> &[u8] {
        &self.json[self.start(i)..self.end(i)]
    }

    /// Sets `key` to `value`, serialized now with the checks of [`convert::write`]; on error
    /// nothing changes.
    pub(crate) fn insert<T: Serialize + ?Sized>(
        &mut self,
        key: &str,
        value: &T,
    ) -> Result<(), PropertyError> {
        self.insert_with(key, |out| convert::write(out, value))
    }

    /// Sets `key` to the JSON text `json`, which the caller knows to be valid JSON (parsed
    /// by `serde_json`, or written by the crate): copied without its whitespace, and refused,
    /// changing nothing, when nested deeper than [`convert::MAX_DEPTH`]. No value is built.
    pub(crate) fn insert_json(&mut self, key: &str, json: &[u8]) -> Result<(), PropertyError> {
        self.insert_with(key, |out| super::json::write_compact(out, json))
    }

    /// Sets `key` to what `write` appends (one JSON value); on error nothing changes.
    fn insert_with(
        &mut self,
        key: &str,
        write: impl FnOnce(&mut Vec<u8>) -> Result<(), PropertyError>,
    ) -> Result<(), PropertyError> {
        let start = self.json.len();
        if start > u32::MAX as usize - 1 {
            return Err(PropertyError::new(
                "too many properties: over 4 GiB of JSON",
            ));
        }
        if self.json.is_empty() {
            // Room for a typical event's properties at once, instead of growing four times,
            // and for what encoding adds around them.
            self.json.reserve(256 + ENCODING_ROOM);
        } else {
            self.json.push(b',');
        }
        let entry = self.json.len();
        super::json::write_str(&mut self.json, key);
        self.json.push(b':');
        let key_end = self.json.len();
        if let Err(e) = write(&mut self.json) {
            self.json.truncate(start);
            return Err(e);
        }
        let bit = length_bit(key_end - entry);
        let existing = if self.lengths & bit == 0 {
            None
        } else {
            self.position(&self.json[entry..key_end], self.len())
        };
        self.lengths |= bit;
        match existing {
            None => self.starts.push(entry as u32),
            Some(old) => {
                // Move the new value into the old entry's place; the key keeps its position.
                let value = self.json.split_off(key_end);
                self.json.truncate(start);
                let range = self.start(old) + (key_end - entry)..self.end(old);
                let grown = value.len() as isize - range.len() as isize;
                self.json.splice(range, value);
                for s in &mut self.starts.as_mut_slice()[old + 1..] {
                    *s = (*s as isize + grown) as u32;
                }
            }
        }
        // Growing here, while the event is built, keeps `capture` from having to.
        self.json.reserve(ENCODING_ROOM);
        Ok(())
    }

    /// [`insert`](Self::insert) for a builder that knows `key` is not set yet and is plain
    /// ASCII without characters JSON escapes (a constant such as `$feature_flag`): it is
    /// copied as it is and no other key is compared with it. Checked in debug builds.
    pub(crate) fn insert_new<T: Serialize + ?Sized>(
        &mut self,
        key: &str,
        value: &T,
    ) -> Result<(), PropertyError> {
        debug_assert!(
            !super::json::needs_escape(key.as_bytes()) && self.find(key).is_none(),
            "insert_new({key:?}): the key needs escaping or is set"
        );
        let start = self.json.len();
        if start > u32::MAX as usize - 1 {
            return Err(PropertyError::new(
                "too many properties: over 4 GiB of JSON",
            ));
        }
        self.json.reserve(key.len() + 4 + ENCODING_ROOM);
        if start > 0 {
            self.json.push(b',');
        }
        let entry = self.json.len();
        self.json.push(b'"');
        self.json.extend_from_slice(key.as_bytes());
        self.json.extend_from_slice(b"\":");
        let key_end = self.json.len();
        if let Err(e) = convert::write(&mut self.json, value) {
            self.json.truncate(start);
            return Err(e);
        }
        self.lengths |= length_bit(key_end - entry);
        self.starts.push(entry as u32);
        self.json.reserve(ENCODING_ROOM);
        Ok(())
    }

    /// Makes room at once for `bytes` more bytes of entries (and what encoding adds), for a
    /// builder that knows its event is large: the setters then never grow the buffer.
    pub(crate) fn reserve(&mut self, bytes: usize) {
        self.json.reserve(bytes + ENCODING_ROOM);
    }

    /// A copy with room for `bytes` more bytes of entries (and what encoding adds), where
    /// `clone` would allocate the exact length and the next setter grow it again.
    pub(crate) fn clone_with_room(&self, bytes: usize) -> Properties {
        let mut json = Vec::with_capacity(self.json.len() + bytes + ENCODING_ROOM);
        json.extend_from_slice(&self.json);
        Properties {
            json,
            starts: self.starts.clone(),
            lengths: self.lengths,
        }
    }

    /// Takes the entries out, leaving no property: the start of the event's encoding (see
    /// [`Encoder::encode_owned`](super::Encoder::encode_owned)).
    pub(crate) fn take_json(&mut self) -> Vec<u8> {
        self.starts = Offsets::default();
        self.lengths = 0;
        std::mem::take(&mut self.json)
    }

    /// Sets `key` to the JSON string `value` unless `key` is already set.
    pub(crate) fn insert_str_if_absent(&mut self, key: &str, value: &str) {
        if !self.contains_key(key) {
            // A string always serializes.
            let _ = self.insert(key, value);
        }
    }

    /// Removes `key`, returning its value.
    pub(crate) fn remove(&mut self, key: &str) -> Option<Value> {
        let i = self.find(key)?;
        let value = serde_json::from_slice(self.value_json(i)).ok();
        self.remove_at(i);
        value
    }

    /// Keeps only the properties whose key (as serialized, with its quotes) `keep` accepts.
    pub(crate) fn retain_json_keys(&mut self, mut keep: impl FnMut(&[u8]) -> bool) {
        let mut i = 0;
        while i < self.len() {
            if keep(self.key_json(i)) {
                i += 1;
            } else {
                self.remove_at(i);
            }
        }
    }

    /// Removes entry `i`.
    pub(crate) fn remove_at(&mut self, i: usize) {
        // The entry and the comma after it, or before it for the last entry.
        let (from, to) = if i + 1 < self.len() {
            (self.start(i), self.start(i + 1))
        } else if i > 0 {
            (self.end(i - 1), self.json.len())
        } else {
            (0, self.json.len())
        };
        self.json.drain(from..to);
        self.starts.remove(i);
        let removed = (to - from) as u32;
        for s in &mut self.starts.as_mut_slice()[i..] {
            *s -= removed;
        }
    }

    fn start(&self, i: usize) -> usize {
        self.starts.as_slice()[i] as usize
    }

    /// Where entry `i` ends (before the comma that follows it).
    fn end(&self, i: usize) -> usize {
        match self.starts.as_slice().get(i + 1) {
            Some(&next) => next as usize - 1,
            None => self.json.len(),
        }
    }

    /// The index of the entry whose serialized key and colon are `prefix` (`"key":`), among
    /// the first `n`.
    fn position(&self, prefix: &[u8], n: usize) -> Option<usize> {
        let len = prefix.len();
        self.starts.as_slice()[..n].iter().position(|&s| {
            let s = s as usize;
            // A key of another length rarely has `":` exactly there: a cheap first test.
            self.json.get(s + len - 2..s + len) == Some(b"\":") && self.json[s..s + len] == *prefix
        })
    }

    fn find(&self, key: &str) -> Option<usize> {
        if self.is_empty() {
            return None;
        }
        let mut prefix = Vec::with_capacity(key.len() + 3);
        super::json::write_str(&mut prefix, key);
        prefix.push(b':');
        if self.lengths & length_bit(prefix.len()) == 0 {
            return None;
        }
        self.position(&prefix, self.len())
    }

    /// Entry `i`'s key as serialized, with its quotes.
    fn key_json(&self, i: usize) -> &[u8] {
        let entry = self.entry_json(i);
        &entry[..key_len(entry)]
    }

    fn value_json(&self, i: usize) -> &[u8] {
        let entry = self.entry_json(i);
        &entry[key_len(entry) + 1..]
    }
}

/// How many entry offsets [`Offsets`] keeps without allocating.
const INLINE: usize = 15;

/// Entry offsets: inline up to [`INLINE`] of them (an event's properties then take one
/// allocation, not two), on the heap beyond.
#[derive(Clone, Debug)]
enum Offsets {
    Inline { len: u8, items: [u32; INLINE] },
    Heap(Vec<u32>),
}

impl Default for Offsets {
    fn default() -> Self {
        Offsets::Inline {
            len: 0,
            items: [0; INLINE],
        }
    }
}

impl Offsets {
    fn as_slice(&self) -> &[u32] {
        match self {
            Offsets::Inline { len, items } => &items[..usize::from(*len)],
            Offsets::Heap(items) => items,
        }
    }

    fn as_mut_slice(&mut self) -> &mut [u32] {
        match self {
            Offsets::Inline { len, items } => &mut items[..usize::from(*len)],
            Offsets::Heap(items) => items,
        }
    }

    fn push(&mut self, offset: u32) {
        match self {
            Offsets::Inline { len, items } if usize::from(*len) < INLINE => {
                items[usize::from(*len)] = offset;
                *len += 1;
            }
            Offsets::Inline { items, .. } => {
                let mut heap = Vec::with_capacity(INLINE * 2 + 2);
                heap.extend_from_slice(items);
                heap.push(offset);
                *self = Offsets::Heap(heap);
            }
            Offsets::Heap(items) => items.push(offset),
        }
    }

    fn remove(&mut self, i: usize) {
        match self {
            Offsets::Inline { len, items } => {
                items.copy_within(i + 1..usize::from(*len), i);
                *len -= 1;
            }
            Offsets::Heap(items) => {
                items.remove(i);
            }
        }
    }
}

/// The length of the serialized key (with its quotes) that `entry` starts with.
fn key_len(entry: &[u8]) -> usize {
    // Inside a JSON string a quote is either escaped (after an odd run of backslashes) or the
    // closing one.
    let mut escaped = false;
    for (i, &b) in entry.iter().enumerate().skip(1) {
        match b {
            b'\\' => escaped = !escaped,
            b'"' if !escaped => return i + 1,
            _ => escaped = false,
        }
    }
    entry.len()
}

impl fmt::Debug for Properties {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// The properties as one compact JSON object.
impl fmt::Display for Properties {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("{")?;
        f.write_str(&String::from_utf8_lossy(&self.json))?;
        f.write_str("}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parsed(p: &Properties) -> Value {
        serde_json::from_str(&p.to_string()).expect("valid JSON")
    }

    #[test]
    fn keys_are_unique_and_keep_their_place() {
        let mut p = Properties::default();
        p.insert("a", &1).unwrap();
        p.insert("b", "two").unwrap();
        p.insert("c", &[3]).unwrap();
        p.insert("b", &json!({"x": "longer than before"})).unwrap();
        p.insert("a", &0).unwrap();
        assert_eq!(
            p.to_string(),
            r#"{"a":0,"b":{"x":"longer than before"},"c":[3]}"#
        );
        assert_eq!(p.keys().collect::<Vec<_>>(), ["a", "b", "c"]);
        assert_eq!(p.remove("b"), Some(json!({"x": "longer than before"})));
        assert_eq!(p.to_string(), r#"{"a":0,"c":[3]}"#);
        assert_eq!(p.remove("c"), Some(json!([3])));
        assert_eq!(p.remove("c"), None);
        assert_eq!(p.remove("a"), Some(json!(0)));
        assert!(p.is_empty());
        assert_eq!(p.to_string(), "{}");
        p.insert("z", &true).unwrap();
        assert_eq!(p.to_string(), r#"{"z":true}"#);
    }

    #[test]
    fn keys_that_need_escaping_and_keys_that_contain_others() {
        let mut p = Properties::default();
        for key in [
            "q\"uote",
            "back\\slash",
            "a",
            "a\":",
            "\"a\"",
            "\u{1}",
            "é",
            "",
        ] {
            p.insert(key, key).unwrap();
        }
        p.insert("a\":", "again").unwrap();
        assert_eq!(p.len(), 8);
        for key in ["q\"uote", "back\\slash", "a", "\"a\"", "\u{1}", "é", ""] {
            assert_eq!(p.get(key), Some(json!(key)), "{key:?}");
        }
        assert_eq!(p.get("a\":"), Some(json!("again")));
        assert_eq!(parsed(&p).as_object().map(Map::len), Some(8));
        assert_eq!(p.to_map(), *parsed(&p).as_object().unwrap());
    }

    #[test]
    fn a_failed_insert_changes_nothing() {
        let mut p = Properties::default();
        p.insert("a", &1).unwrap();
        let before = p.clone();
        assert!(p.insert("b", &f64::NAN).is_err());
        assert!(p.insert("a", &vec![1.0, f64::INFINITY]).is_err());
        assert_eq!(p, before);
    }

    #[test]
    fn many_properties_spill_to_the_heap_and_stay_consistent() {
        let mut p = Properties::default();
        let mut expected = Map::new();
        for i in 0..40 {
            p.insert(&format!("key{i}"), &i).unwrap();
            expected.insert(format!("key{i}"), json!(i));
            assert_eq!(p.len(), expected.len());
        }
        for i in (0..40).step_by(3) {
            assert_eq!(p.remove(&format!("key{i}")), Some(json!(i)));
            expected.remove(&format!("key{i}"));
        }
        p.insert("key1", "replaced").unwrap();
        expected.insert("key1".into(), json!("replaced"));
        assert_eq!(p.to_map(), expected);
        assert_eq!(parsed(&p), Value::Object(expected));
        // And within the inline offsets: removals from the front, the middle and the end.
        let mut small = Properties::default();
        for i in 0..INLINE {
            small.insert(&i.to_string(), &i).unwrap();
        }
        for key in ["0", "7", "14"] {
            small.remove(key);
        }
        assert_eq!(small.len(), INLINE - 3);
        assert_eq!(small.get("13"), Some(json!(13)));
        assert_eq!(small.get("7"), None);
    }

    #[test]
    fn retain_removes_from_anywhere() {
        let mut p = Properties::default();
        for (i, key) in ["a", "b", "c", "d", "e"].iter().enumerate() {
            p.insert(key, &i).unwrap();
        }
        p.retain_json_keys(|k| k == b"\"b\"" || k == b"\"d\"");
        assert_eq!(p.to_string(), r#"{"b":1,"d":3}"#);
        p.retain_json_keys(|_| false);
        assert_eq!(p.to_string(), "{}");
    }
}
