//! [`PostHogCookie`]: the posthog-js cookie, decoded from an untrusted `Cookie` header.

use std::fmt;

use http::{header::COOKIE, HeaderMap};
use serde::Deserialize;

use super::sanitize::{header_text, sanitize_owned};

/// Cookie values longer than this are ignored without being decoded.
const MAX_COOKIE_BYTES: usize = 16 * 1024;

/// What posthog-js keeps in its `ph_<project key>_posthog` cookie, as far as the server cares.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct PostHogCookie {
    distinct_id: Option<String>,
    session_id: Option<String>,
    device_id: Option<String>,
}

impl PostHogCookie {
    /// The browser's distinct id (anonymous or identified).
    pub fn distinct_id(&self) -> Option<&str> {
        self.distinct_id.as_deref()
    }

    /// The current session id (`$sesid`).
    pub fn session_id(&self) -> Option<&str> {
        self.session_id.as_deref()
    }

    /// The browser's device id (`$device_id`).
    pub fn device_id(&self) -> Option<&str> {
        self.device_id.as_deref()
    }

    /// Finds the cookie named `name` in `headers` and decodes it. `None` when it is missing,
    /// too long, not UTF-8 after decoding, or not the JSON posthog-js writes. Never panics.
    ///
    /// ```
    /// use http::HeaderMap;
    /// use posthog_tower::http::PostHogCookie;
    ///
    /// let mut headers = HeaderMap::new();
    /// headers.insert(
    ///     "cookie",
    ///     "theme=dark; ph_phc_key_posthog=%7B%22distinct_id%22%3A%22user-42%22%7D".parse()?,
    /// );
    /// let cookie = PostHogCookie::from_headers(&headers, "ph_phc_key_posthog").unwrap();
    /// assert_eq!(cookie.distinct_id(), Some("user-42"));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn from_headers(headers: &HeaderMap, name: &str) -> Option<PostHogCookie> {
        let raw = find_cookie(headers, name)?;
        PostHogCookie::parse(raw)
    }

    /// Decodes a cookie value (URL-encoded JSON).
    pub(crate) fn parse(raw: &str) -> Option<PostHogCookie> {
        if raw.len() > MAX_COOKIE_BYTES {
            return None;
        }
        let raw = raw.trim().trim_matches('"');
        let decoded = percent_decode(raw.as_bytes())?;
        // Bounded: the fields read as JSON nest at most 128 levels (serde_json's recursion
        // limit; deeper is an error and the cookie is ignored), and the others are skipped
        // without recursing.
        let parsed: RawCookie = serde_json::from_slice(&decoded).ok()?;
        let text = |v: Option<serde_json::Value>| match v {
            Some(serde_json::Value::String(s)) => sanitize_owned(s),
            _ => None,
        };
        let session_id = match parsed.sesid {
            // posthog-js writes `[last activity ms, session id, session start ms]`.
            Some(serde_json::Value::Array(mut parts)) if parts.len() >= 2 => {
                text(Some(parts.swap_remove(1)))
            }
            _ => None,
        };
        Some(PostHogCookie {
            distinct_id: text(parsed.distinct_id),
            session_id,
            device_id: text(parsed.device_id),
        })
    }
}

impl fmt::Debug for PostHogCookie {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostHogCookie")
            .field("distinct_id", &self.distinct_id)
            .field("session_id", &self.session_id)
            .field("device_id", &self.device_id)
            .finish()
    }
}

#[derive(Deserialize)]
struct RawCookie {
    distinct_id: Option<serde_json::Value>,
    #[serde(rename = "$sesid")]
    sesid: Option<serde_json::Value>,
    #[serde(rename = "$device_id")]
    device_id: Option<serde_json::Value>,
}

/// The raw value of the first cookie called `name`, across every `Cookie` header.
fn find_cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    for value in headers.get_all(COOKIE) {
        let Some(text) = header_text(value) else {
            continue;
        };
        for pair in text.split(';') {
            let Some((key, value)) = pair.split_once('=') else {
                continue;
            };
            if key.trim() == name {
                return Some(value);
            }
        }
    }
    None
}

/// `%XX` decoding (and `+` kept as is, as cookies do). `None` for a broken escape or bytes
/// that are not UTF-8.
pub(super) fn percent_decode(input: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(input.len());
    let mut i = 0;
    while i < input.len() {
        let b = input[i];
        if b == b'%' {
            let hi = hex(*input.get(i + 1)?)?;
            let lo = hex(*input.get(i + 2)?)?;
            out.push(hi << 4 | lo);
            i += 3;
        } else {
            out.push(b);
            i += 1;
        }
    }
    std::str::from_utf8(&out).ok()?;
    Some(out)
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn cookie(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(COOKIE, HeaderValue::from_str(value).unwrap());
        h
    }

    #[test]
    fn reads_the_posthog_js_cookie() {
        let json = r#"{"distinct_id":"user-42","$sesid":[1700000000000,"sess-1",1699999990000],"$device_id":"dev-1"}"#;
        let encoded: String = json
            .bytes()
            .map(|b| match b {
                b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' => (b as char).to_string(),
                _ => format!("%{b:02X}"),
            })
            .collect();
        let h = cookie(&format!("a=1; ph_phc_k_posthog={encoded}; b=2"));
        let c = PostHogCookie::from_headers(&h, "ph_phc_k_posthog").unwrap();
        assert_eq!(c.distinct_id(), Some("user-42"));
        assert_eq!(c.session_id(), Some("sess-1"));
        assert_eq!(c.device_id(), Some("dev-1"));
    }

    #[test]
    fn broken_cookies_are_ignored() {
        let name = "ph_k_posthog";
        for bad in [
            "ph_k_posthog=%7B%22distinct_id",           // truncated JSON
            "ph_k_posthog=%ZZ",                         // broken escape
            "ph_k_posthog=%FF%FE",                      // not UTF-8
            "ph_k_posthog=%7B%22distinct_id%22%3A5%7D", // not a string
            "ph_k_posthog=[]",
            "other=1",
        ] {
            let parsed = PostHogCookie::from_headers(&cookie(bad), name);
            assert!(
                parsed.as_ref().and_then(|c| c.distinct_id()).is_none(),
                "{bad}: {parsed:?}"
            );
        }
        let huge = format!("{name}={}", "a".repeat(MAX_COOKIE_BYTES + 1));
        assert_eq!(PostHogCookie::from_headers(&cookie(&huge), name), None);
    }
}
