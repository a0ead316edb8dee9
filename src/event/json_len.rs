//! The exact length of compact JSON, computed without writing it.
//!
//! [`json_len`] equals `serde_json::to_vec(value).len()`; it is used to
//! check batch and event size limits before serializing.

use std::io;

use serde_json::{Number, Value};

/// Extra bytes `serde_json` writes for each byte of a string, beyond the
/// byte itself: `"` and `\` become `\"` and `\\` (+1); `\b \t \n \f \r`
/// likewise (+1); every other byte below 0x20 becomes `\u00XX` (+5); all
/// other bytes, 0x7F and non-ASCII UTF-8 included, are written as they are.
static ESCAPE_EXTRA: [u8; 256] = {
    let mut table = [0u8; 256];
    let mut b = 0;
    while b < 0x20 {
        table[b] = match b {
            0x08 | 0x09 | 0x0A | 0x0C | 0x0D => 1,
            _ => 5,
        };
        b += 1;
    }
    table[b'"' as usize] = 1;
    table[b'\\' as usize] = 1;
    table
};

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGHS: u64 = 0x8080_8080_8080_8080;

/// Whether any of the eight bytes in `word` is below 0x20, `"` or `\`.
///
/// Uses the exact "has a byte less than n" / "has a zero byte" bit tricks:
/// each term is non-zero if and only if some byte matches.
#[inline]
fn has_escapable(word: u64) -> bool {
    let control = word.wrapping_sub(ONES * 0x20) & !word;
    let quote = word ^ (ONES * u64::from(b'"'));
    let quote = quote.wrapping_sub(ONES) & !quote;
    let backslash = word ^ (ONES * u64::from(b'\\'));
    let backslash = backslash.wrapping_sub(ONES) & !backslash;
    (control | quote | backslash) & HIGHS != 0
}

/// The length of `s` as a JSON string, quotes and escapes included, exactly
/// as `serde_json` writes it.
pub(crate) fn json_str_len(s: &str) -> usize {
    let bytes = s.as_bytes();
    let mut extra = 0usize;
    let mut chunks = bytes.chunks_exact(8);
    for chunk in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        if has_escapable(u64::from_le_bytes(word)) {
            extra += chunk
                .iter()
                .map(|&b| usize::from(ESCAPE_EXTRA[usize::from(b)]))
                .sum::<usize>();
        }
    }
    extra += chunks
        .remainder()
        .iter()
        .map(|&b| usize::from(ESCAPE_EXTRA[usize::from(b)]))
        .sum::<usize>();
    2 + bytes.len() + extra
}

/// The length of `serde_json::to_vec(value)`, computed without allocating.
pub(crate) fn json_len(value: &Value) -> usize {
    match value {
        Value::Null | Value::Bool(true) => 4,
        Value::Bool(false) => 5,
        Value::Number(n) => number_len(n),
        Value::String(s) => json_str_len(s),
        Value::Array(items) => {
            let commas = items.len().saturating_sub(1);
            2 + commas + items.iter().map(json_len).sum::<usize>()
        }
        Value::Object(map) => {
            // `{` `}`, a `:` per entry and a `,` between entries.
            let commas = map.len().saturating_sub(1);
            2 + commas
                + map
                    .iter()
                    .map(|(k, v)| json_str_len(k) + 1 + json_len(v))
                    .sum::<usize>()
        }
    }
}

/// Integers by digit count; anything else (floats) by letting `serde_json`
/// format it into a byte counter, so the length always follows the float
/// formatter of whichever `serde_json` version is linked.
fn number_len(n: &Number) -> usize {
    if let Some(u) = n.as_u64() {
        decimal_digits(u)
    } else if let Some(i) = n.as_i64() {
        1 + decimal_digits(i.unsigned_abs())
    } else {
        let mut counter = ByteCounter(0);
        // Counting never fails and a `Number` always serializes, so there is
        // no error to handle; the count is right either way.
        let _ = serde_json::to_writer(&mut counter, n);
        counter.0
    }
}

fn decimal_digits(u: u64) -> usize {
    match u.checked_ilog10() {
        // ilog10 of a u64 is at most 19.
        Some(log) => log as usize + 1,
        None => 1,
    }
}

/// An `io::Write` that only counts the bytes written to it.
struct ByteCounter(usize);

impl io::Write for ByteCounter {
    #[inline]
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0 += buf.len();
        Ok(buf.len())
    }

    #[inline]
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.0 += buf.len();
        Ok(())
    }

    #[inline]
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn check(value: &Value) {
        let want = serde_json::to_vec(value).unwrap().len();
        assert_eq!(json_len(value), want, "{value}");
    }

    #[test]
    fn table() {
        let values = [
            json!(null),
            json!(true),
            json!(false),
            json!(0),
            json!(9),
            json!(10),
            json!(-1),
            json!(-10),
            json!(99),
            json!(100),
            json!(u64::MAX),
            json!(i64::MIN),
            json!(i64::MAX),
            json!(1_000_000_000_000_000_000u64),
            json!(999_999_999_999_999_999u64),
            json!(0.0),
            json!(-0.0),
            json!(1.0),
            json!(0.1),
            json!(-1.5),
            json!(1e21),
            json!(1e22),
            json!(1e-7),
            json!(123_456_789.123_456_79),
            json!(1e300),
            json!(-1e300),
            json!(5e-324),
            json!(f64::MAX),
            json!(f64::MIN_POSITIVE),
            json!(1.1f32),
            json!(9_007_199_254_740_993.0),
            json!(""),
            json!("a"),
            json!("\""),
            json!("\\"),
            json!("/"),
            json!("\u{7f}"),
            json!("\u{0}\u{1}\u{1f}\u{8}\u{9}\u{a}\u{b}\u{c}\u{d}\u{e}"),
            json!("é😀漢字"),
            json!("exactly8"),
            json!("sixteen bytes!!!"),
            json!("seventeen bytes!\""),
            json!("\"quoted\" \\path\\ in a longer string\n"),
            json!([]),
            json!({}),
            json!([1]),
            json!([1, 2, 3]),
            json!([[], {}, [[]]]),
            json!({"a": 1}),
            json!({"a": 1, "b": [true, false, null], "c\n": {"d\"": "e\\"}}),
        ];
        for value in &values {
            check(value);
        }
        assert_eq!(json_len(&json!(null)), 4);
        assert_eq!(json_len(&json!({"a": 1})), 7);
        assert_eq!(json_len(&json!("\u{1}")), 8);
    }

    #[test]
    fn str_len_matches_serde_json() {
        for s in [
            "",
            "plain",
            "tab\there",
            "\u{0}",
            "\u{1f}\u{20}\u{7f}\u{80}",
            "ünïcödé \u{2028}\u{2029}",
            "\"\\\"\\\"\\\"\\",
            "12345678\n2345678\"",
        ] {
            assert_eq!(
                json_str_len(s),
                serde_json::to_vec(s).unwrap().len(),
                "{s:?}"
            );
        }
        // Every single byte value / char below 0x100.
        for c in (0u32..0x100).filter_map(char::from_u32) {
            for pad in 0..9 {
                let s: String = std::iter::repeat('x').take(pad).chain([c]).collect();
                assert_eq!(
                    json_str_len(&s),
                    serde_json::to_vec(&s).unwrap().len(),
                    "{s:?}"
                );
            }
        }
    }

    #[test]
    fn has_escapable_is_exact() {
        // Every byte value in every lane, against a byte-wise check.
        for lane in 0..8 {
            for b in 0u8..=255 {
                let mut word = [b'a'; 8];
                word[lane] = b;
                let expected = b < 0x20 || b == b'"' || b == b'\\';
                assert_eq!(
                    has_escapable(u64::from_le_bytes(word)),
                    expected,
                    "{b:#x} in lane {lane}"
                );
                // Next to bytes that could cause borrows.
                let mut word = [0xFFu8; 8];
                word[lane] = b;
                assert_eq!(has_escapable(u64::from_le_bytes(word)), expected);
                let mut word = [0x20u8; 8];
                word[lane] = b;
                assert_eq!(has_escapable(u64::from_le_bytes(word)), expected);
            }
        }
    }

    /// splitmix64: deterministic, seeded pseudo-random numbers.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        }

        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }

        fn string(&mut self) -> String {
            const PIECES: &[&str] = &[
                "a",
                "Z",
                " ",
                "\"",
                "\\",
                "/",
                "\n",
                "\r",
                "\t",
                "\u{8}",
                "\u{c}",
                "\u{0}",
                "\u{1}",
                "\u{b}",
                "\u{1f}",
                "\u{7f}",
                "\u{80}",
                "é",
                "€",
                "😀",
                "\u{2028}",
                "\u{fffd}",
                "plain text",
                "0123456789",
            ];
            let len = self.below(40);
            (0..len)
                .map(|_| PIECES[self.below(PIECES.len() as u64) as usize])
                .collect()
        }

        fn number(&mut self) -> Value {
            match self.below(12) {
                0 => json!(self.next()),
                1 => json!(self.next() as i64),
                2 => json!(self.below(1000) as i64 - 500),
                3 => json!(u64::MAX - self.below(3)),
                4 => json!(i64::MIN + self.below(3) as i64),
                5 => json!(f64::from_bits(self.next())), // any finite bit pattern (NaN/inf become null)
                6 => json!((self.below(2_000_000) as f64 - 1e6) / 1000.0),
                7 => json!(
                    [0.1, 1e300, -0.0, 5e-324, 1e21, 1e-7, 0.5, 2.0, 1e16, 123.456]
                        [self.below(10) as usize]
                ),
                8 => json!(f32::from_bits(self.next() as u32)),
                9 => json!(self.next() as f64),
                10 => json!(10f64.powi(self.below(600) as i32 - 300)),
                _ => json!(self.next() >> self.below(64)),
            }
        }

        fn value(&mut self, depth: u32) -> Value {
            let kinds = if depth >= 4 { 5 } else { 7 };
            match self.below(kinds) {
                0 => Value::Null,
                1 => Value::Bool(self.below(2) == 0),
                2 | 3 => self.number(),
                4 => Value::String(self.string()),
                5 => {
                    let len = self.below(6);
                    Value::Array((0..len).map(|_| self.value(depth + 1)).collect())
                }
                _ => {
                    let len = self.below(6);
                    Value::Object(
                        (0..len)
                            .map(|_| (self.string(), self.value(depth + 1)))
                            .collect(),
                    )
                }
            }
        }
    }

    #[test]
    fn pseudo_random_values_match_serde_json() {
        let mut rng = Rng(0x5EED_1234_ABCD_0001);
        for _ in 0..20_000 {
            check(&rng.value(0));
        }
        for _ in 0..20_000 {
            check(&rng.number());
            let s = rng.string();
            assert_eq!(json_str_len(&s), serde_json::to_vec(&s).unwrap().len());
        }
    }
}
