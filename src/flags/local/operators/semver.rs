//! Semantic versions as posthog-python 7.91.1 reads them (`parse_semver` and the
//! tilde/caret/wildcard bounds): `(major, minor, patch)` tuples compared lexicographically.

use super::text::python_strip;

pub(super) type Version = [u64; 3];

/// A numeric identifier: ASCII digits without a leading zero. (Python's `isdigit` also takes
/// other Unicode digits; those, and values past `u64`, are left to the server.)
fn identifier(part: &str) -> Option<u64> {
    if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if part.len() > 1 && part.starts_with('0') {
        return None;
    }
    part.parse().ok()
}

fn strip_v(text: &str) -> &str {
    python_strip(text).trim_start_matches(['v', 'V'])
}

/// `parse_semver`: strip whitespace and every leading `v`/`V`, cut at the first `-` then the
/// first `+`, split on `.`; the first part is required, an absent or empty second or third
/// part is 0, and parts after the third are ignored.
pub(super) fn parse(text: &str) -> Option<Version> {
    let text = strip_v(text);
    let text = text.split('-').next().unwrap_or_default();
    let text = text.split('+').next().unwrap_or_default();
    let mut parts = text.split('.');
    let major = identifier(parts.next().unwrap_or_default())?;
    let mut optional = || match parts.next() {
        None | Some("") => Some(0),
        Some(part) => identifier(part),
    };
    let minor = optional()?;
    let patch = optional()?;
    Some([major, minor, patch])
}

/// `~1.2.3`: `>=1.2.3 <1.3.0`.
pub(super) fn tilde_bounds(text: &str) -> Option<(Version, Version)> {
    let [major, minor, patch] = parse(text)?;
    Some(([major, minor, patch], [major, minor.checked_add(1)?, 0]))
}

/// `^1.2.3`: `<2.0.0`; `^0.2.3`: `<0.3.0`; `^0.0.3`: `<0.0.4`.
pub(super) fn caret_bounds(text: &str) -> Option<(Version, Version)> {
    let lower = parse(text)?;
    let upper = match lower {
        [major, _, _] if major > 0 => [major.checked_add(1)?, 0, 0],
        [0, minor, _] if minor > 0 => [0, minor.checked_add(1)?, 0],
        [_, _, patch] => [0, 0, patch.checked_add(1)?],
    };
    Some((lower, upper))
}

/// `1.*`: `[1.0.0, 2.0.0)`; `1.2.*`: `[1.2.0, 1.3.0)`; three or more parts: `[1.2.3, 1.2.4)`.
/// The `*`s are removed (wherever they are), trailing dots dropped and empty parts skipped;
/// a pre-release suffix is not cut here.
pub(super) fn wildcard_bounds(text: &str) -> Option<(Version, Version)> {
    let cleaned = strip_v(text).replace('*', "");
    let cleaned = cleaned.trim_end_matches('.');
    let mut parts = cleaned.split('.').filter(|p| !p.is_empty());
    let major = identifier(parts.next()?)?;
    let Some(minor) = parts.next() else {
        return Some(([major, 0, 0], [major.checked_add(1)?, 0, 0]));
    };
    let minor = identifier(minor)?;
    let Some(patch) = parts.next() else {
        return Some(([major, minor, 0], [major, minor.checked_add(1)?, 0]));
    };
    let patch = identifier(patch)?;
    Some(([major, minor, patch], [major, minor, patch.checked_add(1)?]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_like_posthog_python() {
        for (text, want) in [
            ("1.2.3", Some([1, 2, 3])),
            ("v1.2.3", Some([1, 2, 3])),
            ("vV1.2", Some([1, 2, 0])),
            (" 1.2.3 ", Some([1, 2, 3])),
            ("\u{a0}1.2.3\u{1c}", Some([1, 2, 3])),
            ("1", Some([1, 0, 0])),
            ("1.", Some([1, 0, 0])),
            ("1..3", Some([1, 0, 3])),
            ("1.2.3.4", Some([1, 2, 3])),
            ("1.2.3.x", Some([1, 2, 3])),
            ("1.2.3-alpha.1", Some([1, 2, 3])),
            ("1.2.3+build.5", Some([1, 2, 3])),
            ("1.2-rc+3", Some([1, 2, 0])),
            ("0.0.0", Some([0, 0, 0])),
            ("10.20.30", Some([10, 20, 30])),
            ("", None),
            ("v", None),
            (".1.2.3", None),
            ("abc", None),
            ("1.x", None),
            ("01.2.3", None),
            ("1.02.3", None),
            ("1.2.03", None),
            ("-1.2.3", None),
            ("1 .2", None),
            ("+1", None),
            ("1.2.3 beta", None),
            ("99999999999999999999", None),
        ] {
            assert_eq!(parse(text), want, "{text:?}");
        }
    }

    #[test]
    fn range_bounds() {
        assert_eq!(tilde_bounds("1.2.3"), Some(([1, 2, 3], [1, 3, 0])));
        assert_eq!(caret_bounds("1.2.3"), Some(([1, 2, 3], [2, 0, 0])));
        assert_eq!(caret_bounds("0.2.3"), Some(([0, 2, 3], [0, 3, 0])));
        assert_eq!(caret_bounds("0.0.3"), Some(([0, 0, 3], [0, 0, 4])));
        assert_eq!(caret_bounds("0.0.0"), Some(([0, 0, 0], [0, 0, 1])));
        assert_eq!(wildcard_bounds("1.*"), Some(([1, 0, 0], [2, 0, 0])));
        assert_eq!(wildcard_bounds("1.2.*"), Some(([1, 2, 0], [1, 3, 0])));
        assert_eq!(wildcard_bounds("v1.2.*"), Some(([1, 2, 0], [1, 3, 0])));
        assert_eq!(wildcard_bounds("1.2.3.*"), Some(([1, 2, 3], [1, 2, 4])));
        assert_eq!(wildcard_bounds("1"), Some(([1, 0, 0], [2, 0, 0])));
        assert_eq!(wildcard_bounds("1*2"), Some(([12, 0, 0], [13, 0, 0])));
        assert_eq!(wildcard_bounds("1..2.*"), Some(([1, 2, 0], [1, 3, 0])));
        assert_eq!(wildcard_bounds("*"), None);
        assert_eq!(wildcard_bounds("01.*"), None);
        assert_eq!(wildcard_bounds("1x.*"), None);
        assert_eq!(wildcard_bounds("1.2-beta.*"), None);
        assert_eq!(tilde_bounds("1.07.0"), None);
        assert_eq!(caret_bounds("x"), None);
        assert_eq!(tilde_bounds(&format!("1.{}.0", u64::MAX)), None);
    }
}
