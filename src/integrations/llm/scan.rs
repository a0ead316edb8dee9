//! A small JSON scanner over borrowed bytes: walks an object's members and an array's items,
//! hands out each value as the text it is, decodes only the strings asked for, and skips the
//! rest while checking it as strictly as `serde_json` does.
//!
//! It is the fast path of what [`AiLayer`](super::AiLayer) reads; every reader built on it
//! answers `None` when in doubt (anything invalid, a key written with escapes, a repeated
//! field, nesting deeper than [`MAX_DEPTH`], a number that is not a plain `u64` where one is
//! read), and the caller then reads the body with `serde_json` as before. It never panics (no
//! indexing that can fail) and never recurses over the data: nesting is followed with a depth
//! counter and a bit per level.

use std::borrow::Cow;

/// Deepest nesting [`Scanner::skip_value`] follows; a deeper value gives `None`.
pub(super) const MAX_DEPTH: usize = 128;

/// A cursor over one JSON text.
#[derive(Debug)]
pub(super) struct Scanner<'a> {
    text: &'a str,
    pos: usize,
}

impl<'a> Scanner<'a> {
    /// A scanner at the start of `bytes`, if they are UTF-8 (`serde_json` checks less: a body
    /// with invalid UTF-8 inside a value it skips is left to it).
    pub(super) fn new(bytes: &'a [u8]) -> Option<Self> {
        let text = std::str::from_utf8(bytes).ok()?;
        Some(Scanner { text, pos: 0 })
    }

    #[inline]
    fn bytes(&self) -> &'a [u8] {
        self.text.as_bytes()
    }

    #[inline]
    fn peek(&self) -> Option<u8> {
        self.bytes().get(self.pos).copied()
    }

    #[inline]
    fn next(&mut self) -> Option<u8> {
        let byte = self.peek()?;
        self.pos += 1;
        Some(byte)
    }

    #[inline]
    fn eat(&mut self, byte: u8) -> Option<()> {
        (self.next()? == byte).then_some(())
    }

    #[inline]
    fn skip_whitespace(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.pos += 1;
        }
    }

    /// Whether nothing but whitespace is left.
    #[inline]
    pub(super) fn at_end(&mut self) -> bool {
        self.skip_whitespace();
        self.pos == self.text.len()
    }

    /// Whether the next value (after whitespace) is `null`, which is then consumed.
    #[inline]
    pub(super) fn null(&mut self) -> Option<bool> {
        self.skip_whitespace();
        if self.peek()? != b'n' {
            return Some(false);
        }
        self.literal(b"null")?;
        Some(true)
    }

    #[inline]
    fn literal(&mut self, word: &[u8]) -> Option<()> {
        let end = self.pos.checked_add(word.len())?;
        if self.bytes().get(self.pos..end)? != word {
            return None;
        }
        self.pos = end;
        Some(())
    }

    /// Walks the object that comes next: `member` gets each key (as written: a key with
    /// escapes gives `None`) and must consume its value.
    pub(super) fn object(
        &mut self,
        mut member: impl FnMut(&mut Self, &'a [u8]) -> Option<()>,
    ) -> Option<()> {
        self.skip_whitespace();
        self.eat(b'{')?;
        self.skip_whitespace();
        if self.peek()? == b'}' {
            self.pos += 1;
            return Some(());
        }
        loop {
            self.skip_whitespace();
            let (start, end, escaped) = self.string_span()?;
            if escaped {
                return None;
            }
            let key = self.bytes().get(start..end)?;
            self.skip_whitespace();
            self.eat(b':')?;
            self.skip_whitespace();
            member(self, key)?;
            self.skip_whitespace();
            match self.next()? {
                b',' => {}
                b'}' => return Some(()),
                _ => return None,
            }
        }
    }

    /// Walks the array that comes next: `item` must consume each item.
    pub(super) fn array(&mut self, mut item: impl FnMut(&mut Self) -> Option<()>) -> Option<()> {
        self.skip_whitespace();
        self.eat(b'[')?;
        self.skip_whitespace();
        if self.peek()? == b']' {
            self.pos += 1;
            return Some(());
        }
        loop {
            self.skip_whitespace();
            item(self)?;
            self.skip_whitespace();
            match self.next()? {
                b',' => {}
                b']' => return Some(()),
                _ => return None,
            }
        }
    }

    /// The next value as the JSON text it is (checked, not parsed).
    #[inline]
    pub(super) fn raw(&mut self) -> Option<&'a str> {
        self.skip_whitespace();
        let start = self.pos;
        self.skip_value()?;
        self.text.get(start..self.pos)
    }

    /// The next value, a string (decoded) or `null`; anything else gives `None`.
    #[inline]
    pub(super) fn string_or_null(&mut self) -> Option<Option<Cow<'a, str>>> {
        if self.null()? {
            return Some(None);
        }
        let (raw, escaped) = self.raw_string()?;
        if !escaped {
            return Some(Some(Cow::Borrowed(raw)));
        }
        decode(raw).map(|s| Some(Cow::Owned(s)))
    }

    /// The next value, a `u64` written as plain digits, or `null`; anything else (a sign, a
    /// fraction, an exponent, too large) gives `None`.
    #[inline]
    pub(super) fn u64_or_null(&mut self) -> Option<Option<u64>> {
        if self.null()? {
            return Some(None);
        }
        let first = self.next()?;
        let mut n = u64::from(first.checked_sub(b'0').filter(|d| *d <= 9)?);
        while let Some(digit @ b'0'..=b'9') = self.peek() {
            if n == 0 {
                return None;
            }
            n = n.checked_mul(10)?.checked_add(u64::from(digit - b'0'))?;
            self.pos += 1;
        }
        match self.peek() {
            Some(b'.' | b'e' | b'E') => None,
            _ => Some(Some(n)),
        }
    }

    /// A string's text between its quotes (escapes undecoded) and whether it has escapes. The
    /// escapes are checked as `serde_json` checks a string it skips: `\u` needs four hex
    /// digits, of any value.
    #[inline]
    fn raw_string(&mut self) -> Option<(&'a str, bool)> {
        let (start, end, escaped) = self.string_span()?;
        Some((self.text.get(start..end)?, escaped))
    }

    /// Where the text of the string that comes next starts and ends (between its quotes), and
    /// whether it has escapes; the cursor is left after it.
    #[inline]
    fn string_span(&mut self) -> Option<(usize, usize, bool)> {
        let bytes = self.bytes();
        if bytes.get(self.pos) != Some(&b'"') {
            return None;
        }
        let start = self.pos + 1;
        let mut at = start;
        let mut escaped = false;
        loop {
            at += special(bytes.get(at..)?)?;
            match bytes.get(at)? {
                b'"' => {
                    self.pos = at + 1;
                    return Some((start, at, escaped));
                }
                b'\\' => {
                    escaped = true;
                    match bytes.get(at + 1)? {
                        b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => at += 2,
                        b'u' => {
                            for &digit in bytes.get(at + 2..at + 6)? {
                                hex(digit)?;
                            }
                            at += 6;
                        }
                        _ => return None,
                    }
                }
                // A control character.
                _ => return None,
            }
        }
    }

    fn number(&mut self) -> Option<()> {
        if self.peek()? == b'-' {
            self.pos += 1;
        }
        match self.next()? {
            b'0' => {}
            b'1'..=b'9' => self.digits(),
            _ => return None,
        }
        if self.peek() == Some(b'.') {
            self.pos += 1;
            self.digits1()?;
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.pos += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.pos += 1;
            }
            self.digits1()?;
        }
        Some(())
    }

    fn digits(&mut self) {
        while let Some(b'0'..=b'9') = self.peek() {
            self.pos += 1;
        }
    }

    fn digits1(&mut self) -> Option<()> {
        if !self.peek()?.is_ascii_digit() {
            return None;
        }
        self.digits();
        Some(())
    }

    #[inline]
    fn key(&mut self) -> Option<()> {
        self.skip_whitespace();
        self.string_span()?;
        self.skip_whitespace();
        self.eat(b':')
    }

    /// Skips the next value, checking it; nesting deeper than [`MAX_DEPTH`] gives `None`.
    /// A loop, not recursion: bit `d` of `objects` says whether level `d` is an object.
    pub(super) fn skip_value(&mut self) -> Option<()> {
        let mut objects: u128 = 0;
        let mut depth = 0;
        loop {
            self.skip_whitespace();
            match self.peek()? {
                open @ (b'{' | b'[') => {
                    self.pos += 1;
                    if depth == MAX_DEPTH {
                        return None;
                    }
                    let object = open == b'{';
                    // `depth < MAX_DEPTH == u128::BITS`: the shift stays in range.
                    if object {
                        objects |= 1 << depth;
                    } else {
                        objects &= !(1 << depth);
                    }
                    depth += 1;
                    self.skip_whitespace();
                    let close = if object { b'}' } else { b']' };
                    if self.peek()? == close {
                        self.pos += 1;
                        depth -= 1;
                    } else {
                        if object {
                            self.key()?;
                        }
                        continue;
                    }
                }
                b'"' => {
                    self.string_span()?;
                }
                b't' => self.literal(b"true")?,
                b'f' => self.literal(b"false")?,
                b'n' => self.literal(b"null")?,
                b'-' | b'0'..=b'9' => self.number()?,
                _ => return None,
            }
            // A value ended: close what it ends, or go on to the next item or member.
            loop {
                if depth == 0 {
                    return Some(());
                }
                self.skip_whitespace();
                let object = objects >> (depth - 1) & 1 == 1;
                match (self.next()?, object) {
                    (b',', true) => {
                        self.key()?;
                        break;
                    }
                    (b',', false) => break,
                    (b'}', true) | (b']', false) => depth -= 1,
                    _ => return None,
                }
            }
        }
    }
}

/// Where the first `"`, `\` or control character of `bytes` is, looked for eight bytes at a
/// time (the bytes of a word that equal `c` are the zero bytes of `word ^ c * ONES`; a zero
/// byte, or one below `0x20`, is the one whose subtraction borrows where the byte had no high
/// bit; borrows only spread upwards, so the lowest flagged byte is a real one).
#[inline]
fn special(bytes: &[u8]) -> Option<usize> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let mut offset = 0;
    while let Some(chunk) = bytes.get(offset..offset + 8) {
        let word = u64::from_le_bytes(<[u8; 8]>::try_from(chunk).ok()?);
        let quote = word ^ (ONES * u64::from(b'"'));
        let backslash = word ^ (ONES * u64::from(b'\\'));
        let found = ((quote.wrapping_sub(ONES) & !quote)
            | (backslash.wrapping_sub(ONES) & !backslash)
            | (word.wrapping_sub(ONES * 0x20) & !word))
            & HIGH;
        if found != 0 {
            return Some(offset + found.trailing_zeros() as usize / 8);
        }
        offset += 8;
    }
    let at = bytes
        .get(offset..)?
        .iter()
        .position(|&b| b == b'"' || b == b'\\' || b < 0x20)?;
    Some(offset + at)
}

fn hex(digit: u8) -> Option<u8> {
    match digit {
        b'0'..=b'9' => Some(digit - b'0'),
        b'a'..=b'f' => Some(digit - b'a' + 10),
        b'A'..=b'F' => Some(digit - b'A' + 10),
        _ => None,
    }
}

/// The string whose checked text between quotes is `raw`, its escapes decoded; a surrogate
/// that is not half of a pair gives `None` (as `serde_json` refuses it in a string it reads).
fn decode(raw: &str) -> Option<String> {
    let mut out = String::with_capacity(raw.len());
    let mut rest = raw;
    while let Some(at) = rest.find('\\') {
        out.push_str(rest.get(..at)?);
        let mut chars = rest.get(at + 1..)?.chars();
        let c = match chars.next()? {
            '"' => '"',
            '\\' => '\\',
            '/' => '/',
            'b' => '\u{8}',
            'f' => '\u{c}',
            'n' => '\n',
            'r' => '\r',
            't' => '\t',
            'u' => {
                let (high, after) = hex4_at(chars.as_str())?;
                chars = after.chars();
                match high {
                    0xD800..=0xDBFF => {
                        let after = chars.as_str().strip_prefix("\\u")?;
                        let (low, after) = hex4_at(after)?;
                        if !(0xDC00..=0xDFFF).contains(&low) {
                            return None;
                        }
                        chars = after.chars();
                        let code = 0x10000
                            + ((u32::from(high) - 0xD800) << 10)
                            + (u32::from(low) - 0xDC00);
                        char::from_u32(code)?
                    }
                    0xDC00..=0xDFFF => return None,
                    n => char::from_u32(u32::from(n))?,
                }
            }
            _ => return None,
        };
        out.push(c);
        rest = chars.as_str();
    }
    out.push_str(rest);
    Some(out)
}

/// The four hex digits `text` starts with, and what follows them.
fn hex4_at(text: &str) -> Option<(u16, &str)> {
    let digits = text.as_bytes().get(..4)?;
    let mut n = 0u16;
    for &d in digits {
        n = n << 4 | u16::from(hex(d)?);
    }
    Some((n, text.get(4..)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn skip(text: &str) -> Option<()> {
        let mut scanner = Scanner::new(text.as_bytes())?;
        scanner.skip_value()?;
        scanner.at_end().then_some(())
    }

    #[test]
    fn values_are_checked_as_strictly_as_serde_json_skips_them() {
        for text in [
            r#"{"a":[1,-0.5e+3,true,false,null,"x\"\u00e9\ud800"],"b":{}}"#,
            " [ ] ",
            "0",
            r#""\/\b\f\n\r\t""#,
        ] {
            assert_eq!(skip(text), Some(()), "{text}");
            assert!(serde_json::from_str::<serde::de::IgnoredAny>(text).is_ok());
        }
        for text in [
            "01",
            "1.",
            "-",
            "1e",
            "[1,]",
            r#"{"a":1,}"#,
            r#"{"a"}"#,
            "[1 2]",
            "tru",
            "nul",
            r#""\x""#,
            r#""\u12""#,
            "\"\u{1}\"",
            "[}",
            "{]",
            "\"",
            "[",
            "1 x",
            "+1",
            ".5",
        ] {
            assert_eq!(skip(text), None, "{text}");
            assert!(serde_json::from_str::<serde::de::IgnoredAny>(text).is_err());
        }
    }

    #[test]
    fn strings_are_decoded_and_lone_surrogates_refused() {
        fn read(text: &str) -> Option<Option<Cow<'_, str>>> {
            Scanner::new(text.as_bytes())?.string_or_null()
        }
        assert_eq!(
            read(r#""a\"\\\/\b\f\n\r\t\u00e9\ud83d\ude00""#),
            Some(Some(Cow::Owned(
                "a\"\\/\u{8}\u{c}\n\r\t\u{e9}\u{1f600}".to_owned()
            )))
        );
        assert_eq!(read(r#""plain""#), Some(Some(Cow::Borrowed("plain"))));
        assert_eq!(read("null"), Some(None));
        for lone in [
            r#""\ud800""#,
            r#""\udc00""#,
            r#""\ud800\u0041""#,
            r#""\ud800x""#,
        ] {
            assert_eq!(read(lone), None, "{lone}");
            assert!(serde_json::from_str::<String>(lone).is_err());
        }
    }

    #[test]
    fn the_first_special_byte_is_found_in_any_position() {
        for len in 0..40 {
            for at in 0..len {
                for special_byte in [b'"', b'\\', 0, 0x1f] {
                    for filler in [b'a', 0x7f, 0x80, 0xff, b' ', b'!', b'#', b'[', b']'] {
                        let mut bytes = vec![filler; len];
                        bytes[at] = special_byte;
                        // A later special byte changes nothing.
                        if at + 1 < len {
                            bytes[len - 1] = b'"';
                        }
                        assert_eq!(special(&bytes), Some(at), "{bytes:?}");
                    }
                }
            }
            assert_eq!(special(&vec![b'x'; len]), None);
        }
    }

    #[test]
    fn u64_only_as_plain_digits() {
        let read = |text: &str| Scanner::new(text.as_bytes())?.u64_or_null();
        assert_eq!(read("0"), Some(Some(0)));
        assert_eq!(read("18446744073709551615"), Some(Some(u64::MAX)));
        assert_eq!(read("null"), Some(None));
        for other in ["18446744073709551616", "-1", "1.0", "1e2", "01", "\"1\""] {
            assert_eq!(read(other), None, "{other}");
        }
    }

    #[test]
    fn nesting_is_followed_to_max_depth_then_refused() {
        let nested = |depth: usize| format!("{}{}", "[".repeat(depth), "]".repeat(depth));
        assert_eq!(skip(&nested(MAX_DEPTH)), Some(()));
        assert_eq!(skip(&nested(MAX_DEPTH + 1)), None);
        let objects = format!("{}1{}", r#"{"a":"#.repeat(MAX_DEPTH), "}".repeat(MAX_DEPTH));
        assert_eq!(skip(&objects), Some(()));
    }
}
