//! Cleaning untrusted header and cookie values before they become ids.

use std::borrow::Cow;

use http::{header::AsHeaderName, HeaderMap, HeaderValue};

/// The most characters kept of an identity value (a distinct id or session id) taken from a
/// header or cookie; longer values are cut.
pub const MAX_ID_CHARS: usize = 1000;

/// Cleans an untrusted value: control characters removed, whitespace trimmed, at most
/// [`MAX_ID_CHARS`] characters. `None` when nothing is left.
pub(crate) fn sanitize(value: &str) -> Option<String> {
    sanitize_borrowed(value).map(Cow::into_owned)
}

/// [`sanitize`] without copying a value that is already clean.
pub(crate) fn sanitize_borrowed(value: &str) -> Option<Cow<'_, str>> {
    if is_clean_ascii(value.as_bytes()) {
        // Nearly every value: visible ASCII and spaces, no space at either end.
        return Some(Cow::Borrowed(value));
    }
    let needs_work = crate::event::has_control(value)
        || value.len() > MAX_ID_CHARS
        || value.trim().len() != value.len();
    if !needs_work {
        return (!value.is_empty()).then_some(Cow::Borrowed(value));
    }
    let out: String = value
        .trim()
        .chars()
        .filter(|c| !c.is_control())
        .take(MAX_ID_CHARS)
        .collect();
    let trimmed = out.trim();
    if trimmed.is_empty() {
        None
    } else if trimmed.len() == out.len() {
        Some(Cow::Owned(out))
    } else {
        Some(Cow::Owned(trimmed.to_owned()))
    }
}

/// Whether `value` is already what [`sanitize_borrowed`] would make of it, judged on bytes
/// alone: 1 to [`MAX_ID_CHARS`] of them, all visible ASCII or spaces (no control character,
/// nothing beyond ASCII), and no space at either end. A plain loop over the bytes, which the
/// compiler vectorizes, instead of decoding characters and looking each up in Unicode's
/// tables.
#[inline]
fn is_clean_ascii(value: &[u8]) -> bool {
    match (value.first(), value.last()) {
        (Some(&first), Some(&last)) => {
            value.len() <= MAX_ID_CHARS
                && first != b' '
                && last != b' '
                && value.iter().all(|&b| (b' '..=b'~').contains(&b))
        }
        _ => false,
    }
}

/// [`sanitize`] for an owned value: the same string back when it is already clean.
pub(crate) fn sanitize_owned(value: String) -> Option<String> {
    let cleaned = match sanitize_borrowed(&value)? {
        Cow::Borrowed(_) => None,
        Cow::Owned(cleaned) => Some(cleaned),
    };
    Some(cleaned.unwrap_or(value))
}

/// A header value as text, if it is valid UTF-8 (obs-text bytes that are not UTF-8 are
/// ignored).
pub(crate) fn header_text(value: &HeaderValue) -> Option<&str> {
    std::str::from_utf8(value.as_bytes()).ok()
}

/// The first value of `name`, cleaned.
pub(crate) fn header(headers: &HeaderMap, name: impl AsHeaderName) -> Option<String> {
    cleaned(headers.get(name))
}

/// A header value as cleaned text (see [`sanitize`]); `None` for invalid UTF-8.
#[inline]
pub(super) fn cleaned(value: Option<&HeaderValue>) -> Option<String> {
    value.and_then(header_text).and_then(sanitize)
}

/// [`cleaned`] without copying a value that is already clean.
#[inline]
pub(super) fn cleaned_borrowed(value: Option<&HeaderValue>) -> Option<Cow<'_, str>> {
    value.and_then(header_text).and_then(sanitize_borrowed)
}

#[cfg(test)]
mod tests {
    use proptest::strategy::Strategy as _;

    use super::*;
    use crate::http::DISTINCT_ID_HEADER;

    #[test]
    fn invalid_utf8_headers_are_ignored() {
        let mut h = HeaderMap::new();
        h.insert(
            DISTINCT_ID_HEADER,
            HeaderValue::from_bytes(b"\xff\xfeuser").unwrap(),
        );
        assert_eq!(header(&h, DISTINCT_ID_HEADER), None);
    }

    #[test]
    fn sanitize_strips_trims_and_caps() {
        assert_eq!(sanitize("  user-1 \t"), Some("user-1".into()));
        assert_eq!(sanitize("us\u{0}er\r\n-1"), Some("user-1".into()));
        assert_eq!(sanitize(" \u{7f} "), None);
        assert_eq!(sanitize(""), None);
        let long = "é".repeat(5000);
        let cut = sanitize(&long).unwrap();
        assert_eq!(cut.chars().count(), MAX_ID_CHARS);
        assert_eq!(sanitize("plain"), Some("plain".into()));
        assert_eq!(sanitize_owned("plain".into()), Some("plain".into()));
        assert_eq!(sanitize_owned(" a\u{0}b ".into()), Some("ab".into()));
        assert_eq!(
            sanitize_owned("é".repeat(1001)).map(|s| s.chars().count()),
            Some(1000)
        );
    }

    proptest::proptest! {
        /// An owned value comes out as a borrowed one does, whichever path judges it: ASCII
        /// with spaces, tabs and controls at either end or inside, and any characters.
        #[test]
        fn owned_and_borrowed_values_are_cleaned_alike(
            value in proptest::prop_oneof![
                "[ -~\t\u{0}\u{7f}]{0,12}",
                proptest::collection::vec(proptest::char::any(), 0..12)
                    .prop_map(|c| c.into_iter().collect::<String>()),
                "[a-z]{990,1010}",
            ]
        ) {
            proptest::prop_assert_eq!(sanitize_owned(value.clone()), sanitize(&value));
        }
    }
}
