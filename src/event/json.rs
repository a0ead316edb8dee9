//! Fast paths for writing JSON: strings that need no escaping, and values that are a single
//! string, number, boolean or null. Everything else goes through `serde_json`, so the bytes
//! are always those `serde_json::to_writer` writes.
//!
//! Building an event writes a dozen short strings (keys, names, ids, values); `serde_json`
//! looks each byte up in its escape table, this checks eight bytes at a time and copies the
//! string whole when none needs escaping (nearly always).

use std::fmt;

use serde::ser::{self, Impossible, Serialize, Serializer};

const ONES: u64 = u64::from_le_bytes([0x01; 8]);
const HIGHS: u64 = u64::from_le_bytes([0x80; 8]);

/// Whether some byte of `word` is below `n` (`n` at most 128). Exact: bytes of 128 and above
/// (UTF-8 beyond ASCII) never count.
#[inline]
fn has_byte_below(word: u64, n: u8) -> bool {
    word.wrapping_sub(ONES * u64::from(n)) & !word & HIGHS != 0
}

#[inline]
fn has_byte(word: u64, byte: u8) -> bool {
    has_byte_below(word ^ (ONES * u64::from(byte)), 1)
}

/// Whether JSON needs any byte of `text` escaped: a control character, `"` or `\`.
#[inline]
pub(crate) fn needs_escape(text: &[u8]) -> bool {
    let special =
        |word: u64| has_byte_below(word, 0x20) || has_byte(word, b'"') || has_byte(word, b'\\');
    let word_at = |at: usize| {
        let mut word = [0; 8];
        word.copy_from_slice(&text[at..at + 8]);
        u64::from_le_bytes(word)
    };
    if text.len() < 8 {
        // At most seven bytes: one by one is cheaper than building a padded word (a `memcpy`
        // call for a length known only at run time).
        return text.iter().any(|&b| b < 0x20 || b == b'"' || b == b'\\');
    }
    // Whole words, then the last eight bytes (overlapping the words before them): no loop
    // over single bytes.
    (0..text.len() / 8).any(|i| special(word_at(i * 8))) || special(word_at(text.len() - 8))
}

/// Appends `text` as a JSON string.
#[inline]
pub(crate) fn write_str(out: &mut Vec<u8>, text: &str) {
    if needs_escape(text.as_bytes()) {
        super::write_json(out, text);
    } else {
        out.reserve(text.len() + 2);
        out.push(b'"');
        out.extend_from_slice(text.as_bytes());
        out.push(b'"');
    }
}

/// Appends the JSON text `json`, known to be valid (parsed by `serde_json`, or written by the
/// crate); fails, leaving `out` as it was, when its arrays and objects nest deeper than
/// [`MAX_DEPTH`](super::convert::MAX_DEPTH). No value is built: the raw input and output of
/// an LLM call are copied this way. A value with few brackets is copied as it is; one with
/// many is scanned for its depth, and its whitespace between tokens left out on the way.
pub(crate) fn write_compact(
    out: &mut Vec<u8>,
    json: &[u8],
) -> Result<(), crate::error::PropertyError> {
    // The usual case, at memory speed: with no more opening brackets than the nesting
    // allowed (counting those inside strings too), the value cannot nest too deep, and it is
    // copied as it is, whitespace included (valid JSON all the same).
    if json.len() <= 2 * super::convert::MAX_DEPTH
        || json.iter().filter(|&&b| b == b'[' || b == b'{').count() <= super::convert::MAX_DEPTH
    {
        out.extend_from_slice(json);
        return Ok(());
    }
    let start = out.len();
    out.reserve(json.len());
    let mut depth = 0usize;
    let mut rest = json;
    while let Some(at) = rest.iter().position(|b| {
        matches!(
            b,
            b'"' | b'[' | b'{' | b']' | b'}' | b' ' | b'\t' | b'\n' | b'\r'
        )
    }) {
        out.extend_from_slice(&rest[..at]);
        let byte = rest[at];
        rest = &rest[at + 1..];
        match byte {
            b'"' => {
                // To the closing quote: the first `"` not escaped by an odd run of `\`.
                let mut end = 0;
                loop {
                    match rest[end..].iter().position(|&b| b == b'"' || b == b'\\') {
                        Some(i) if rest[end + i] == b'\\' => end += i + 2,
                        Some(i) => {
                            end += i;
                            break;
                        }
                        // Not valid JSON after all: copied as it is.
                        None => {
                            end = rest.len();
                            break;
                        }
                    }
                    if end >= rest.len() {
                        end = rest.len();
                        break;
                    }
                }
                out.push(b'"');
                out.extend_from_slice(&rest[..end]);
                if end < rest.len() {
                    out.push(b'"');
                    rest = &rest[end + 1..];
                } else {
                    rest = &[];
                }
            }
            b'[' | b'{' => {
                depth += 1;
                if depth > super::convert::MAX_DEPTH {
                    out.truncate(start);
                    return Err(crate::error::PropertyError::too_deep(
                        super::convert::MAX_DEPTH,
                    ));
                }
                out.push(byte);
            }
            b']' | b'}' => {
                depth = depth.saturating_sub(1);
                out.push(byte);
            }
            // Whitespace between tokens.
            _ => {}
        }
    }
    out.extend_from_slice(rest);
    Ok(())
}

/// Appends the concatenation of `parts` as one JSON string, without building it first.
pub(crate) fn write_str_parts(out: &mut Vec<u8>, parts: &[&str]) {
    if parts.iter().any(|part| needs_escape(part.as_bytes())) {
        // Rare: escape the whole, the way `serde_json` does.
        super::write_json(out, &parts.concat());
        return;
    }
    out.push(b'"');
    for part in parts {
        out.extend_from_slice(part.as_bytes());
    }
    out.push(b'"');
}

/// Below this many thousandths, `n as f64 / 1000.0` has no shorter decimal form than its
/// thousandths (the floats' spacing there is under a thousandth), and `serde_json` writes it
/// without an exponent: 2^42 thousands, about 140 years in microseconds.
const THOUSANDTHS_BELOW: u64 = 1000 << 42;

/// `n` thousandths as the float nearest `n / 1000`: `n` is exact as a float below 2^53 (any
/// duration in microseconds), and the division rounds correctly. What [`write_thousandths`]
/// writes, for a caller that needs the value itself (an [`Event`](crate::Event)'s property).
pub(crate) fn thousandths_f64(n: u64) -> f64 {
    n as f64 / 1000.0
}

/// Appends `thousandths / 1000` (a duration in milliseconds counted in microseconds) as
/// `serde_json` writes the float `thousandths as f64 / 1000.0` (`12.0`, `0.25`, `3.007`),
/// with integer arithmetic instead of its shortest-digits search.
pub(crate) fn write_thousandths(out: &mut Vec<u8>, thousandths: u64) {
    if thousandths >= THOUSANDTHS_BELOW {
        super::write_json(out, &thousandths_f64(thousandths));
        return;
    }
    let (whole, fraction) = (thousandths / 1000, thousandths % 1000);
    out.extend_from_slice(itoa::Buffer::new().format(whole).as_bytes());
    // The fraction's digits without their trailing zeros, at least one (`12.0`).
    let digits = [
        b'.',
        b'0' + (fraction / 100) as u8,
        b'0' + (fraction / 10 % 10) as u8,
        b'0' + (fraction % 10) as u8,
    ];
    let used = if fraction % 10 != 0 {
        4
    } else if fraction % 100 != 0 {
        3
    } else {
        2
    };
    out.extend_from_slice(&digits[..used]);
}

/// Appends `value` when it is a single string, integer, finite float, boolean, char or null
/// (through options and newtypes), as `serde_json::to_value` would represent it; returns
/// `false`, having written nothing, for anything else, which the caller serializes the
/// general way.
#[inline]
pub(crate) fn write_simple<T: Serialize + ?Sized>(out: &mut Vec<u8>, value: &T) -> bool {
    let start = out.len();
    if value.serialize(Simple { out }).is_ok() {
        return true;
    }
    out.truncate(start);
    false
}

/// The value is not one [`write_simple`] handles.
#[derive(Debug)]
struct NotSimple;

impl fmt::Display for NotSimple {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("not a simple value")
    }
}

impl std::error::Error for NotSimple {}

impl ser::Error for NotSimple {
    fn custom<T: fmt::Display>(_: T) -> Self {
        NotSimple
    }
}

struct Simple<'a> {
    out: &'a mut Vec<u8>,
}

impl Simple<'_> {
    /// A number, as `serde_json` writes it.
    #[inline]
    fn number<N: Serialize>(self, n: N) -> Result<(), NotSimple> {
        serde_json::to_writer(&mut *self.out, &n).map_err(|_| NotSimple)
    }
}

macro_rules! numbers {
    ($($method:ident($ty:ty);)*) => {
        $(
            #[inline]
            fn $method(self, v: $ty) -> Result<(), NotSimple> {
                self.number(v)
            }
        )*
    };
}

impl Serializer for Simple<'_> {
    type Ok = ();
    type Error = NotSimple;
    type SerializeSeq = Impossible<(), NotSimple>;
    type SerializeTuple = Impossible<(), NotSimple>;
    type SerializeTupleStruct = Impossible<(), NotSimple>;
    type SerializeTupleVariant = Impossible<(), NotSimple>;
    type SerializeMap = Impossible<(), NotSimple>;
    type SerializeStruct = Impossible<(), NotSimple>;
    type SerializeStructVariant = Impossible<(), NotSimple>;

    numbers! {
        serialize_i8(i8);
        serialize_i16(i16);
        serialize_i32(i32);
        serialize_i64(i64);
        serialize_u8(u8);
        serialize_u16(u16);
        serialize_u32(u32);
        serialize_u64(u64);
    }

    #[inline]
    fn serialize_i128(self, v: i128) -> Result<(), NotSimple> {
        // Beyond `i64` and `u64`, refused with its reason on the general path.
        match (i64::try_from(v), u64::try_from(v)) {
            (Ok(v), _) => self.number(v),
            (_, Ok(v)) => self.number(v),
            _ => Err(NotSimple),
        }
    }

    #[inline]
    fn serialize_u128(self, v: u128) -> Result<(), NotSimple> {
        u64::try_from(v).map_err(|_| NotSimple)?.serialize(self)
    }

    #[inline]
    fn serialize_f32(self, v: f32) -> Result<(), NotSimple> {
        // Widened, as `serde_json::to_value` does (the general path goes through it). NaN and
        // infinities are refused, with their own message, on the general path.
        self.serialize_f64(f64::from(v))
    }

    #[inline]
    fn serialize_f64(self, v: f64) -> Result<(), NotSimple> {
        if v.is_finite() {
            self.number(v)
        } else {
            Err(NotSimple)
        }
    }

    #[inline]
    fn serialize_bool(self, v: bool) -> Result<(), NotSimple> {
        self.out
            .extend_from_slice(if v { b"true" } else { b"false" });
        Ok(())
    }

    #[inline]
    fn serialize_char(self, v: char) -> Result<(), NotSimple> {
        write_str(self.out, v.encode_utf8(&mut [0; 4]));
        Ok(())
    }

    #[inline]
    fn serialize_str(self, v: &str) -> Result<(), NotSimple> {
        write_str(self.out, v);
        Ok(())
    }

    fn serialize_bytes(self, _: &[u8]) -> Result<(), NotSimple> {
        Err(NotSimple)
    }

    #[inline]
    fn serialize_none(self) -> Result<(), NotSimple> {
        self.serialize_unit()
    }

    #[inline]
    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result<(), NotSimple> {
        value.serialize(self)
    }

    #[inline]
    fn serialize_unit(self) -> Result<(), NotSimple> {
        self.out.extend_from_slice(b"null");
        Ok(())
    }

    fn serialize_unit_struct(self, _: &'static str) -> Result<(), NotSimple> {
        self.serialize_unit()
    }

    fn serialize_unit_variant(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
    ) -> Result<(), NotSimple> {
        self.serialize_str(variant)
    }

    #[inline]
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        value: &T,
    ) -> Result<(), NotSimple> {
        value.serialize(self)
    }

    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: &T,
    ) -> Result<(), NotSimple> {
        Err(NotSimple)
    }

    fn serialize_seq(self, _: Option<usize>) -> Result<Self::SerializeSeq, NotSimple> {
        Err(NotSimple)
    }

    fn serialize_tuple(self, _: usize) -> Result<Self::SerializeTuple, NotSimple> {
        Err(NotSimple)
    }

    fn serialize_tuple_struct(
        self,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleStruct, NotSimple> {
        Err(NotSimple)
    }

    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleVariant, NotSimple> {
        Err(NotSimple)
    }

    fn serialize_map(self, _: Option<usize>) -> Result<Self::SerializeMap, NotSimple> {
        Err(NotSimple)
    }

    fn serialize_struct(
        self,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeStruct, NotSimple> {
        Err(NotSimple)
    }

    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeStructVariant, NotSimple> {
        Err(NotSimple)
    }

    fn collect_str<T: fmt::Display + ?Sized>(self, value: &T) -> Result<(), NotSimple> {
        self.serialize_str(&value.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::collections::BTreeMap;

    #[test]
    fn compact_copies_drop_whitespace_outside_strings_and_refuse_deep_nesting() {
        let pretty =
            "{\n  \"a b\": [1, 2.5, {\"c\": \"x \\\" ] }\"}],\n  \"d\":\ttrue, \"e\": null }";
        let mut out = b"k:".to_vec();
        write_compact(&mut out, pretty.as_bytes()).unwrap();
        assert_eq!(
            &out[2..],
            pretty.as_bytes(),
            "few brackets: copied as it is"
        );
        // Many brackets: scanned, and compacted on the way.
        let padding = "[".repeat(60) + &"]".repeat(60);
        let pretty = format!("[{padding}, {padding}, {pretty}]");
        let mut out = b"k:".to_vec();
        write_compact(&mut out, pretty.as_bytes()).unwrap();
        let compact = String::from_utf8(out[2..].to_vec()).unwrap();
        let compact = compact
            .strip_prefix(&format!("[{padding},{padding},"))
            .and_then(|c| c.strip_suffix(']'))
            .unwrap();
        assert_eq!(
            compact,
            r#"{"a b":[1,2.5,{"c":"x \" ] }"}],"d":true,"e":null}"#
        );
        let escaped_backslash = format!(r#"[{padding}, {padding}, "a\\", "b"]"#);
        let mut out = Vec::new();
        write_compact(&mut out, escaped_backslash.as_bytes()).unwrap();
        assert_eq!(
            out,
            format!(r#"[{padding},{padding},"a\\","b"]"#).as_bytes()
        );

        let deep = "[".repeat(101) + &"]".repeat(101);
        let mut out = b"kept".to_vec();
        assert!(write_compact(&mut out, deep.as_bytes())
            .unwrap_err()
            .is_too_deep());
        assert_eq!(out, b"kept", "left as it was");
        let ok = "[".repeat(100) + &"]".repeat(100);
        assert!(write_compact(&mut Vec::new(), ok.as_bytes()).is_ok());
    }

    fn same_as_serde_json<T: Serialize + ?Sized>(value: &T) {
        let mut out = b"x".to_vec();
        assert!(write_simple(&mut out, value));
        assert_eq!(
            String::from_utf8(out[1..].to_vec()).unwrap(),
            serde_json::to_string(value).unwrap()
        );
    }

    #[test]
    fn strings_are_written_as_serde_json_writes_them() {
        let mut every_byte = String::new();
        for c in (0u8..=0x7f)
            .map(char::from)
            .chain(['é', '€', '😀', '\u{2028}'])
        {
            every_byte.push(c);
            // Every position within the 8-byte words, and the remainder.
            for prefix in 0..9 {
                let text = format!("{}{c}{}", "a".repeat(prefix), "b".repeat(prefix));
                let mut out = Vec::new();
                write_str(&mut out, &text);
                assert_eq!(out, serde_json::to_vec(&text).unwrap(), "{text:?}");
            }
        }
        same_as_serde_json(every_byte.as_str());
        same_as_serde_json("");
    }

    /// Exactly `serde_json`'s bytes for the float, on the fast path and off it.
    #[test]
    fn thousandths_are_written_as_serde_json_writes_their_float() {
        let mut values = vec![
            0,
            1,
            10,
            100,
            250,
            1000,
            3007,
            12_000,
            999_999,
            1_000_500,
            65_430,
            THOUSANDTHS_BELOW - 1,
            THOUSANDTHS_BELOW,
            THOUSANDTHS_BELOW + 1,
            1 << 53,
            u64::MAX,
        ];
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..200_000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            // Every size up to about 2^52 thousandths, past the fast path's bound.
            values.push(seed >> (seed % 52 + 12));
        }
        for value in values {
            let mut out = Vec::new();
            write_thousandths(&mut out, value);
            let expected = serde_json::to_vec(&(value as f64 / 1000.0)).unwrap();
            assert_eq!(out, expected, "{value}");
        }
    }

    #[test]
    fn parts_are_written_as_their_concatenation() {
        for parts in [
            &["https", "://", "a.example", "/p?q=1"][..],
            &["a\"", "b\n"],
            &[],
        ] {
            let mut out = Vec::new();
            write_str_parts(&mut out, parts);
            assert_eq!(out, serde_json::to_vec(&parts.concat()).unwrap());
        }
    }

    #[test]
    fn simple_values_match_serde_json_and_the_rest_is_left_alone() {
        same_as_serde_json(&true);
        same_as_serde_json(&-7i8);
        same_as_serde_json(&u64::MAX);
        same_as_serde_json(&i128::from(i64::MIN));
        same_as_serde_json(&u128::from(u64::MAX));
        same_as_serde_json(&49.90f64);
        same_as_serde_json(&1e300);
        same_as_serde_json(&'q');
        same_as_serde_json(&Some("x"));
        same_as_serde_json(&None::<u8>);
        same_as_serde_json(&());
        same_as_serde_json(&json!("v"));
        same_as_serde_json(&json!(null));
        same_as_serde_json(&json!(3.5));
        // An `f32` widened, as in a `Value`.
        let mut out = Vec::new();
        assert!(write_simple(&mut out, &0.1f32));
        assert_eq!(
            out,
            serde_json::to_vec(&serde_json::to_value(0.1f32).unwrap()).unwrap()
        );
        for value in [json!([1]), json!({"a": 1}), json!([])] {
            let mut out = b"x".to_vec();
            assert!(!write_simple(&mut out, &value));
            assert_eq!(out, b"x");
        }
        let mut out = Vec::new();
        assert!(!write_simple(&mut out, &f64::NAN));
        assert!(!write_simple(&mut out, &i128::MIN));
        assert!(!write_simple(&mut out, &u128::MAX));
        assert!(!write_simple(&mut out, &Some(vec![1])));
        assert!(!write_simple(&mut out, &BTreeMap::from([("k", 1)])));
        assert!(out.is_empty());
    }
}
