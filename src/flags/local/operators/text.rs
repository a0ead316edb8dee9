//! How posthog-python turns values into text: the JSON-style rendering the flags service uses
//! (`_value_to_string`), Python's `str()` (for regex, date and semver filters), lowercasing and
//! ASCII case-insensitive search. Hot paths write into stack buffers.

use std::fmt::{self, Write as _};
use std::ops::Deref;

use serde_json::{Number, Value};

use super::super::PropRef;

/// A small string built on the stack; writes past its capacity fail.
pub(super) struct StackBuf<const N: usize> {
    buf: [u8; N],
    len: usize,
}

impl<const N: usize> StackBuf<N> {
    pub(super) const fn new() -> Self {
        StackBuf {
            buf: [0; N],
            len: 0,
        }
    }

    pub(super) fn make_ascii_lowercase(&mut self) {
        self.buf[..self.len].make_ascii_lowercase();
    }

    pub(super) fn as_str(&self) -> &str {
        // Only whole `&str`s are ever copied in, so the bytes are valid UTF-8.
        std::str::from_utf8(&self.buf[..self.len]).unwrap_or_default()
    }
}

impl<const N: usize> fmt::Write for StackBuf<N> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let end = self.len + s.len();
        if end > N {
            return Err(fmt::Error);
        }
        self.buf[self.len..end].copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

/// Text of a property value: borrowed, on the stack (numbers) or owned (lists and objects).
pub(super) enum Text<'a> {
    Borrowed(&'a str),
    Stack(StackBuf<40>),
    Owned(String),
}

impl Deref for Text<'_> {
    type Target = str;

    fn deref(&self) -> &str {
        match self {
            Text::Borrowed(s) => s,
            Text::Stack(buf) => buf.as_str(),
            Text::Owned(s) => s,
        }
    }
}

/// The decimal digits and exponent of the shortest representation that round-trips.
struct Digits {
    negative: bool,
    digits: StackBuf<24>,
    /// The value is `d.ddd × 10^exponent`.
    exponent: i32,
}

fn parse_sci(text: &str) -> Digits {
    let (negative, text) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (mantissa, exponent) = text.split_once('e').unwrap_or((text, "0"));
    let mut digits = StackBuf::<24>::new();
    let significant = mantissa.trim_end_matches(['0', '.']);
    let significant = if significant.is_empty() {
        "0"
    } else {
        significant
    };
    for c in significant.chars().filter(char::is_ascii_digit) {
        let _ = digits.write_char(c);
    }
    Digits {
        negative,
        digits,
        exponent: exponent.parse().unwrap_or(0),
    }
}

/// The digits Python's `repr` picks: the fewest that round-trip and, among those, the closest
/// to the exact value, ties to even.
fn shortest_digits(value: f64) -> Digits {
    let mut sci = StackBuf::<40>::new();
    // `{:e}` prints the fewest round-tripping digits, but breaks an exact tie between two
    // candidates upwards. Ties need 16 or more digits; there, round the exact value to that
    // many digits (`{:.Ne}` rounds half to even).
    let _ = write!(sci, "{value:e}");
    let digits = parse_sci(sci.as_str());
    if digits.digits.len < 16 {
        return digits;
    }
    let mut exact = StackBuf::<40>::new();
    let _ = write!(exact, "{value:.*e}", digits.digits.len - 1);
    parse_sci(exact.as_str())
}

fn write_fixed(out: &mut impl fmt::Write, d: &Digits) -> fmt::Result {
    let digits = d.digits.as_str();
    if d.negative {
        out.write_char('-')?;
    }
    if d.exponent < 0 {
        out.write_str("0.")?;
        for _ in 0..(-d.exponent - 1) {
            out.write_char('0')?;
        }
        return out.write_str(digits);
    }
    let int_len = d.exponent as usize + 1;
    if digits.len() <= int_len {
        out.write_str(digits)?;
        for _ in digits.len()..int_len {
            out.write_char('0')?;
        }
        out.write_str(".0")
    } else {
        out.write_str(&digits[..int_len])?;
        out.write_char('.')?;
        out.write_str(&digits[int_len..])
    }
}

fn write_mantissa(out: &mut impl fmt::Write, d: &Digits) -> fmt::Result {
    let digits = d.digits.as_str();
    if d.negative {
        out.write_char('-')?;
    }
    out.write_str(&digits[..1])?;
    if digits.len() > 1 {
        out.write_char('.')?;
        out.write_str(&digits[1..])?;
    }
    Ok(())
}

/// Python's `repr(float)` for a finite value: fixed notation for exponents -4 to 15, else
/// `1.5e-05` / `1e+16` (the exponent has a sign and at least two digits).
pub(super) fn write_python_float(out: &mut impl fmt::Write, value: f64) -> fmt::Result {
    let d = shortest_digits(value);
    if (-4..16).contains(&d.exponent) {
        return write_fixed(out, &d);
    }
    write_mantissa(out, &d)?;
    let sign = if d.exponent < 0 { '-' } else { '+' };
    write!(out, "e{sign}{:02}", d.exponent.unsigned_abs())
}

/// posthog-python's `_format_json_float`: Python's `repr`, except that exponent -5 is written
/// in fixed notation and other exponents drop the zero padding (`1e-7`, `1e+16`).
pub(super) fn write_json_float(out: &mut impl fmt::Write, value: f64) -> fmt::Result {
    let d = shortest_digits(value);
    if (-5..16).contains(&d.exponent) {
        return write_fixed(out, &d);
    }
    write_mantissa(out, &d)?;
    if d.exponent < 0 {
        write!(out, "e{}", d.exponent)
    } else {
        write!(out, "e+{}", d.exponent)
    }
}

fn write_json_number(out: &mut impl fmt::Write, n: &Number) -> fmt::Result {
    if let Some(u) = n.as_u64() {
        write!(out, "{u}")
    } else if let Some(i) = n.as_i64() {
        write!(out, "{i}")
    } else {
        // serde_json numbers are always finite.
        write_json_float(out, n.as_f64().unwrap_or_default())
    }
}

/// `json.dumps(s, ensure_ascii=False)`: quotes, backslash escapes, `\u00XX` (lowercase hex)
/// for the other control characters; everything else verbatim.
fn write_json_quoted(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// posthog-python's `_json_value_to_string` (strings nested in lists and objects are quoted;
/// object keys are sorted; no spaces).
///
/// It recurses as deep as `value` nests, which is bounded: a filter value at most 128
/// levels (serde_json's recursion limit on the definitions), a property value at most 100
/// (`FlagsRequest` leaves deeper ones out).
fn write_json_nested(out: &mut String, value: &Value) {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => {
            let _ = write_json_number(out, n);
        }
        Value::String(s) => write_json_quoted(out, s),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_json_nested(out, item);
            }
            out.push(']');
        }
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
            out.push('{');
            for (i, (key, item)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_json_quoted(out, key);
                out.push(':');
                write_json_nested(out, item);
            }
            out.push('}');
        }
    }
}

/// posthog-python's `_value_to_string`: a string as it is, anything else JSON-style.
pub(super) fn json_text(value: &Value) -> Text<'_> {
    match value {
        Value::String(s) => Text::Borrowed(s),
        Value::Null => Text::Borrowed("null"),
        Value::Bool(true) => Text::Borrowed("true"),
        Value::Bool(false) => Text::Borrowed("false"),
        Value::Number(n) => {
            let mut buf = StackBuf::new();
            if write_json_number(&mut buf, n).is_ok() {
                return Text::Stack(buf);
            }
            let mut s = String::new();
            let _ = write_json_number(&mut s, n);
            Text::Owned(s)
        }
        Value::Array(_) | Value::Object(_) => {
            let mut s = String::new();
            write_json_nested(&mut s, value);
            Text::Owned(s)
        }
    }
}

/// [`json_text`] for a property value.
pub(super) fn prop_text<'a>(value: PropRef<'a>) -> Text<'a> {
    match value {
        PropRef::Str(s) => Text::Borrowed(s),
        PropRef::Json(v) => json_text(v),
    }
}

/// Python's `str()` of a JSON value, or `None` for lists and objects (whose Python `repr` we
/// do not reproduce).
pub(super) fn python_str(value: &Value) -> Option<Text<'_>> {
    Some(match value {
        Value::String(s) => Text::Borrowed(s),
        Value::Null => Text::Borrowed("None"),
        Value::Bool(true) => Text::Borrowed("True"),
        Value::Bool(false) => Text::Borrowed("False"),
        Value::Number(n) => {
            let mut buf = StackBuf::new();
            let written = if let Some(u) = n.as_u64() {
                write!(buf, "{u}")
            } else if let Some(i) = n.as_i64() {
                write!(buf, "{i}")
            } else {
                write_python_float(&mut buf, n.as_f64().unwrap_or_default())
            };
            written.ok()?;
            Text::Stack(buf)
        }
        Value::Array(_) | Value::Object(_) => return None,
    })
}

/// Python's `str.strip()` whitespace: Unicode `White_Space` plus U+001C..U+001F.
pub(super) fn is_python_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

pub(super) fn python_strip(s: &str) -> &str {
    s.trim_matches(is_python_space)
}

/// Whether Python's `text.lower()` equals `lowered` (already lowered with `str::to_lowercase`,
/// whose mappings, final sigma included, are Python's). No allocation unless `text` has a
/// capital sigma, whose lowercase depends on its neighbours.
pub(super) fn lower_eq(text: &str, lowered: &str) -> bool {
    if text.is_ascii() {
        return text.len() == lowered.len()
            && text
                .bytes()
                .zip(lowered.bytes())
                .all(|(a, b)| a.to_ascii_lowercase() == b);
    }
    if text.contains('\u{3a3}') {
        return text.to_lowercase() == lowered;
    }
    text.chars()
        .flat_map(char::to_lowercase)
        .eq(lowered.chars())
}

/// Lowercases ASCII letters only (`_ascii_lower`).
pub(super) fn ascii_lower(text: &str) -> String {
    text.to_ascii_lowercase()
}

fn eq_lowered(haystack: &[u8], needle: &[u8]) -> bool {
    haystack
        .iter()
        .zip(needle)
        .all(|(h, n)| h.to_ascii_lowercase() == *n)
}

/// `needle` (already ASCII-lowered) is a prefix of `haystack` with ASCII letters lowered.
pub(super) fn ascii_starts_with(haystack: &str, needle: &str) -> bool {
    let (h, n) = (haystack.as_bytes(), needle.as_bytes());
    h.len() >= n.len() && eq_lowered(&h[..n.len()], n)
}

pub(super) fn ascii_ends_with(haystack: &str, needle: &str) -> bool {
    let (h, n) = (haystack.as_bytes(), needle.as_bytes());
    h.len() >= n.len() && eq_lowered(&h[h.len() - n.len()..], n)
}

/// `needle` (already ASCII-lowered) occurs in `haystack` with ASCII letters lowered. Byte-wise
/// matching is char-wise matching for UTF-8, since the needle is whole characters.
pub(super) fn ascii_contains(haystack: &str, needle: &str) -> bool {
    let (h, n) = (haystack.as_bytes(), needle.as_bytes());
    let Some((&first, rest)) = n.split_first() else {
        return true;
    };
    if h.len() < n.len() {
        return false;
    }
    if h.len() > 512 && n.len() > 8 {
        // Long texts: the standard library's two-way search keeps the worst case linear.
        return haystack.to_ascii_lowercase().contains(needle);
    }
    (0..=h.len() - n.len())
        .any(|i| h[i].to_ascii_lowercase() == first && eq_lowered(&h[i + 1..i + n.len()], rest))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn py(v: f64) -> String {
        let mut s = String::new();
        write_python_float(&mut s, v).unwrap();
        s
    }

    fn js(v: f64) -> String {
        let mut s = String::new();
        write_json_float(&mut s, v).unwrap();
        s
    }

    #[test]
    fn python_float_repr() {
        for (v, want) in [
            (0.0, "0.0"),
            (-0.0, "-0.0"),
            (1.0, "1.0"),
            (323.0, "323.0"),
            (0.1, "0.1"),
            (1.5, "1.5"),
            (0.0001, "0.0001"),
            (0.00012, "0.00012"),
            (1e-5, "1e-05"),
            (1.5e-5, "1.5e-05"),
            (1e-7, "1e-07"),
            (1e15, "1000000000000000.0"),
            (1e16, "1e+16"),
            (1.2345e100, "1.2345e+100"),
            (123456789.125, "123456789.125"),
            (-2.5e-300, "-2.5e-300"),
            (f64::MAX, "1.7976931348623157e+308"),
            (5e-324, "5e-324"),
        ] {
            assert_eq!(py(v), want, "{v}");
        }
    }

    #[test]
    fn json_float_rendering() {
        for (v, want) in [
            (323.0, "323.0"),
            (-0.0, "-0.0"),
            (1e-7, "1e-7"),
            (1e16, "1e+16"),
            (1e-5, "0.00001"),
            (9.9e-5, "0.000099"),
            (-1.5e-5, "-0.000015"),
            (0.0001, "0.0001"),
            (1.5e300, "1.5e+300"),
            (1e15, "1000000000000000.0"),
        ] {
            assert_eq!(js(v), want, "{v}");
        }
    }

    #[test]
    fn json_text_of_values() {
        let cases = [
            (json!("Plain \"text\""), "Plain \"text\""),
            (json!(null), "null"),
            (json!(true), "true"),
            (json!(42), "42"),
            (json!(-42), "-42"),
            (json!(42.0), "42.0"),
            (
                json!(["a", 1, 2.5, null, false]),
                r#"["a",1,2.5,null,false]"#,
            ),
            (json!({"b": [null], "a": 1}), r#"{"a":1,"b":[null]}"#),
            (
                json!(["é\n\u{1}\"\\/\u{7f}"]),
                "[\"é\\n\\u0001\\\"\\\\/\u{7f}\"]",
            ),
            (
                json!({"z": [{"b": 1, "a": 2}], "a": "x"}),
                r#"{"a":"x","z":[{"a":2,"b":1}]}"#,
            ),
        ];
        for (value, want) in cases {
            assert_eq!(&*json_text(&value), want);
        }
    }

    #[test]
    fn python_str_of_values() {
        assert_eq!(python_str(&json!(true)).as_deref(), Some("True"));
        assert_eq!(python_str(&json!(null)).as_deref(), Some("None"));
        assert_eq!(python_str(&json!(1e-5)).as_deref(), Some("1e-05"));
        assert_eq!(python_str(&json!(4)).as_deref(), Some("4"));
        assert!(python_str(&json!([1])).is_none());
    }

    #[test]
    fn lowercase_comparison() {
        assert!(lower_eq("VALUE", "value"));
        assert!(!lower_eq("VALUE2", "value"));
        assert!(lower_eq("Ä", "ä"));
        assert!(lower_eq("ΟΔΟΣ", &"ΟΔΟΣ".to_lowercase()));
        assert!(lower_eq("ΟΔΟΣ", "οδος"));
        assert!(!lower_eq("ΟΔΟΣ", "οδοσ"));
        assert!(!lower_eq("Σ", "ς"));
        assert!(lower_eq("İ", "i\u{307}"));
        assert!(!lower_eq("Straße", "strasse"));
        assert!(!lower_eq("ab", "é"));
    }

    #[test]
    fn ascii_search() {
        assert!(ascii_contains("343tfVALUE5", "value"));
        assert!(ascii_contains("x", ""));
        assert!(!ascii_contains("prefixÄsuffix", "ä"));
        assert!(ascii_contains("prefixäsuffix", "ä"));
        assert!(ascii_starts_with("Value", "val"));
        assert!(ascii_ends_with("VALUE", "lue"));
        assert!(!ascii_ends_with("ue", "lue"));
        let long = format!("{}NEEDLE-in-haystack", "ab".repeat(400));
        assert!(ascii_contains(&long, "needle-in-"));
        assert!(!ascii_contains(&long, "needle-out"));
    }
}
