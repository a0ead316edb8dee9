//! Who is calling: [`MakeDistinctId`], the posthog-js cookie, and how untrusted header values
//! are cleaned.

use std::{borrow::Cow, cell::OnceCell, fmt};

use http::{
    header::{AsHeaderName, HeaderName, COOKIE, HOST},
    Extensions, HeaderMap, HeaderValue, Method, Request, Uri,
};
use serde::Deserialize;

/// The most characters kept of an identity value (a distinct id or session id) taken from a
/// header or cookie; longer values are cut.
pub const MAX_ID_CHARS: usize = 1000;

/// Cookie values longer than this are ignored without being decoded.
const MAX_COOKIE_BYTES: usize = 16 * 1024;

/// The header posthog-js (and any client) can use to say who is calling.
pub const DISTINCT_ID_HEADER: &str = "x-posthog-distinct-id";

/// The header carrying the posthog-js session id.
pub const SESSION_ID_HEADER: &str = "x-posthog-session-id";

/// [`DISTINCT_ID_HEADER`] as a `HeaderName`: looking a header up by `&str` parses and
/// validates the name on every call, by `HeaderName` it does not (every request reads these).
static DISTINCT_ID_NAME: HeaderName = HeaderName::from_static(DISTINCT_ID_HEADER);

/// [`SESSION_ID_HEADER`] as a `HeaderName`.
static SESSION_ID_NAME: HeaderName = HeaderName::from_static(SESSION_ID_HEADER);

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
    let needs_work = value.chars().any(char::is_control)
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
    let clean = !value.is_empty()
        && value.len() <= MAX_ID_CHARS
        && !value.chars().any(char::is_control)
        && value.trim().len() == value.len();
    if clean {
        Some(value)
    } else {
        sanitize(&value)
    }
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
fn cleaned(value: Option<&HeaderValue>) -> Option<String> {
    value.and_then(header_text).and_then(sanitize)
}

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
fn percent_decode(input: &[u8]) -> Option<Vec<u8>> {
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

/// The identity headers of a request (posthog-js's two headers, and whether it has a cookie),
/// and its `Host` (which the request context needs), found once.
#[derive(Clone, Copy, Default, Debug, PartialEq)]
struct IdentityHeaders<'h> {
    distinct_id: Option<&'h HeaderValue>,
    session_id: Option<&'h HeaderValue>,
    cookie: bool,
    host: Option<&'h HeaderValue>,
}

/// Up to this many header names, one pass comparing names (a byte or a length for most)
/// finds the identity headers and `Host` for less than the four hashed lookups (hashing a
/// custom name reads every byte of it); above it, the lookups are cheaper.
const SCAN_MAX_NAMES: usize = 8;

impl<'h> IdentityHeaders<'h> {
    #[inline]
    fn find(headers: &'h HeaderMap) -> Self {
        if headers.keys_len() > SCAN_MAX_NAMES {
            Self::look_up(headers)
        } else {
            Self::scan(headers)
        }
    }

    fn look_up(headers: &'h HeaderMap) -> Self {
        IdentityHeaders {
            distinct_id: headers.get(&DISTINCT_ID_NAME),
            session_id: headers.get(&SESSION_ID_NAME),
            cookie: headers.contains_key(COOKIE),
            host: headers.get(HOST),
        }
    }

    fn scan(headers: &'h HeaderMap) -> Self {
        let mut found = IdentityHeaders::default();
        // A name's values come one after the other, its first value first.
        for (name, value) in headers {
            if *name == HOST {
                found.host.get_or_insert(value);
            } else if *name == COOKIE {
                found.cookie = true;
            } else if *name == DISTINCT_ID_NAME {
                found.distinct_id.get_or_insert(value);
            } else if *name == SESSION_ID_NAME {
                found.session_id.get_or_insert(value);
            }
        }
        found
    }
}

/// What [`MakeDistinctId`] and [`ShouldCapture`](super::ShouldCapture) see of a request: its
/// method, URI, headers and extensions, and the posthog-js cookie decoded on first use.
pub struct RequestHead<'a> {
    method: &'a Method,
    uri: &'a Uri,
    headers: &'a HeaderMap,
    extensions: &'a Extensions,
    cookie_name: &'a str,
    identity: OnceCell<IdentityHeaders<'a>>,
    cookie: OnceCell<Option<PostHogCookie>>,
}

impl<'a> RequestHead<'a> {
    /// The head of `request`; `cookie_name` is the posthog-js cookie to read
    /// (`ph_<project key>_posthog`).
    pub fn new<B>(request: &'a Request<B>, cookie_name: &'a str) -> Self {
        RequestHead {
            method: request.method(),
            uri: request.uri(),
            headers: request.headers(),
            extensions: request.extensions(),
            cookie_name,
            identity: OnceCell::new(),
            cookie: OnceCell::new(),
        }
    }

    /// The request method.
    pub fn method(&self) -> &'a Method {
        self.method
    }

    /// The request URI.
    pub fn uri(&self) -> &'a Uri {
        self.uri
    }

    /// The request headers (untrusted: use [`header`](Self::header) for a cleaned value).
    pub fn headers(&self) -> &'a HeaderMap {
        self.headers
    }

    /// The request extensions, for example a user inserted by an authentication layer.
    pub fn extensions(&self) -> &'a Extensions {
        self.extensions
    }

    /// The first value of header `name`, cleaned: valid UTF-8 only, control characters
    /// removed, trimmed, at most [`MAX_ID_CHARS`] characters.
    pub fn header(&self, name: &str) -> Option<String> {
        header(self.headers, name)
    }

    #[inline]
    fn identity(&self) -> &IdentityHeaders<'a> {
        self.identity
            .get_or_init(|| IdentityHeaders::find(self.headers))
    }

    /// The first `Host` header, as it is.
    #[inline]
    pub(crate) fn host_header(&self) -> Option<&'a HeaderValue> {
        self.identity().host
    }

    /// The `X-POSTHOG-DISTINCT-ID` header, cleaned.
    #[inline]
    fn distinct_id_header(&self) -> Option<String> {
        cleaned(self.identity().distinct_id)
    }

    /// The decoded posthog-js cookie, if the request carries a valid one. Parsed once.
    #[inline]
    pub fn posthog_cookie(&self) -> Option<&PostHogCookie> {
        self.cookie
            .get_or_init(|| {
                if self.identity().cookie {
                    PostHogCookie::from_headers(self.headers, self.cookie_name)
                } else {
                    None
                }
            })
            .as_ref()
    }

    /// The session id: the `X-POSTHOG-SESSION-ID` header, else the cookie's.
    #[inline]
    pub fn session_id(&self) -> Option<String> {
        cleaned(self.identity().session_id).or_else(|| {
            self.posthog_cookie()
                .and_then(|c| c.session_id().map(str::to_owned))
        })
    }
}

impl fmt::Debug for RequestHead<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RequestHead")
            .field("method", self.method)
            .field("uri", self.uri)
            .finish_non_exhaustive()
    }
}

/// Decides who a request comes from.
///
/// Return `None` for an anonymous caller: their events are personless. Implemented for
/// closures `FnMut(&RequestHead<'_>) -> Option<String>`; the result is cleaned like header
/// values. Combine resolvers with [`or`](MakeDistinctId::or).
///
/// # Example
///
/// Take the id from the application's own authentication (a `User` an earlier layer put in
/// the extensions), else from the posthog-js header or cookie:
///
/// ```
/// use posthog_tower::http::{DefaultMakeDistinctId, MakeDistinctId, RequestHead};
///
/// #[derive(Clone)]
/// struct User {
///     id: u64,
/// }
///
/// let from_auth = |req: &RequestHead<'_>| req.extensions().get::<User>().map(|u| u.id.to_string());
/// let make = from_auth.or(DefaultMakeDistinctId);
/// # fn check(_: impl MakeDistinctId) {}
/// # check(make);
/// ```
pub trait MakeDistinctId {
    /// The caller's distinct id, or `None` when it is unknown.
    fn make_distinct_id(&mut self, request: &RequestHead<'_>) -> Option<String>;

    /// Asks `self` first, then `other`.
    fn or<M: MakeDistinctId>(self, other: M) -> Or<Self, M>
    where
        Self: Sized,
    {
        Or {
            first: self,
            second: other,
        }
    }
}

impl<F> MakeDistinctId for F
where
    F: FnMut(&RequestHead<'_>) -> Option<String>,
{
    fn make_distinct_id(&mut self, request: &RequestHead<'_>) -> Option<String> {
        self(request)
    }
}

/// The default resolver: the `X-POSTHOG-DISTINCT-ID` header, else the `distinct_id` of the
/// posthog-js cookie `ph_<project key>_posthog`, else anonymous.
#[derive(Clone, Copy, Debug, Default)]
pub struct DefaultMakeDistinctId;

impl MakeDistinctId for DefaultMakeDistinctId {
    #[inline]
    fn make_distinct_id(&mut self, request: &RequestHead<'_>) -> Option<String> {
        request.distinct_id_header().or_else(|| {
            request
                .posthog_cookie()
                .and_then(|c| c.distinct_id().map(str::to_owned))
        })
    }
}

/// Two resolvers, asked in order. See [`MakeDistinctId::or`].
#[derive(Clone, Copy, Debug)]
pub struct Or<A, B> {
    first: A,
    second: B,
}

impl<A: MakeDistinctId, B: MakeDistinctId> MakeDistinctId for Or<A, B> {
    fn make_distinct_id(&mut self, request: &RequestHead<'_>) -> Option<String> {
        self.first
            .make_distinct_id(request)
            .and_then(sanitize_owned)
            .or_else(|| self.second.make_distinct_id(request))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cookie(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(COOKIE, HeaderValue::from_str(value).unwrap());
        h
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
    fn header_wins_over_cookie_and_or_falls_through() {
        let req = Request::builder()
            .header(DISTINCT_ID_HEADER, " from-header ")
            .header(
                COOKIE,
                "ph_k_posthog=%7B%22distinct_id%22%3A%22from-cookie%22%7D",
            )
            .body(())
            .unwrap();
        let head = RequestHead::new(&req, "ph_k_posthog");
        assert_eq!(
            DefaultMakeDistinctId.make_distinct_id(&head),
            Some("from-header".into())
        );
        let mut none_then_default = (|_: &RequestHead<'_>| None).or(DefaultMakeDistinctId);
        assert_eq!(
            none_then_default.make_distinct_id(&head),
            Some("from-header".into())
        );
        let mut blank_then_default =
            (|_: &RequestHead<'_>| Some(" \n ".to_owned())).or(DefaultMakeDistinctId);
        assert_eq!(
            blank_then_default.make_distinct_id(&head),
            Some("from-header".into())
        );

        let req = Request::builder()
            .header(
                COOKIE,
                "ph_k_posthog=%7B%22distinct_id%22%3A%22from-cookie%22%7D",
            )
            .body(())
            .unwrap();
        let head = RequestHead::new(&req, "ph_k_posthog");
        assert_eq!(
            DefaultMakeDistinctId.make_distinct_id(&head),
            Some("from-cookie".into())
        );
    }

    /// What the default resolver reads of `pairs`, with `filler` unrelated headers before them.
    fn resolved(pairs: &[(&str, &str)], filler: usize) -> (Option<String>, Option<String>, bool) {
        let mut b = Request::builder();
        for i in 0..filler {
            b = b.header(format!("x-filler-{i}"), "1");
        }
        for (k, v) in pairs {
            b = b.header(*k, *v);
        }
        let req = b.body(()).unwrap();
        let head = RequestHead::new(&req, "ph_k_posthog");
        (
            DefaultMakeDistinctId.make_distinct_id(&head),
            head.session_id(),
            head.posthog_cookie().is_some(),
        )
    }

    #[test]
    fn one_pass_and_lookups_find_the_same_identity_headers() {
        let cookie = "ph_k_posthog=%7B%22distinct_id%22%3A%22c%22%2C%22%24sesid%22%3A%5B1%2C%22cs%22%2C1%5D%7D";
        let cases: &[&[(&str, &str)]] = &[
            &[],
            &[("host", "a.example")],
            &[(DISTINCT_ID_HEADER, "d1"), (DISTINCT_ID_HEADER, "d2")],
            &[(SESSION_ID_HEADER, " s1 "), (SESSION_ID_HEADER, "s2")],
            &[("cookie", "x=1"), ("cookie", cookie)],
            &[("cookie", cookie), (DISTINCT_ID_HEADER, "d")],
            &[("cookie", cookie), (SESSION_ID_HEADER, " \t ")],
            &[("X-PostHog-Distinct-Id", "mixed-case")],
        ];
        for pairs in cases {
            let one_pass = resolved(pairs, 0);
            assert_eq!(one_pass, resolved(pairs, SCAN_MAX_NAMES + 1), "{pairs:?}");
            assert_eq!(one_pass, resolved(pairs, SCAN_MAX_NAMES - 3), "{pairs:?}");
        }
        assert_eq!(
            resolved(cases[2], 0),
            (Some("d1".into()), None, false),
            "the first value wins"
        );
        assert_eq!(resolved(cases[3], 0), (None, Some("s1".into()), false));
        assert_eq!(
            resolved(cases[4], 0),
            (Some("c".into()), Some("cs".into()), true),
            "every Cookie header is searched"
        );
        assert_eq!(resolved(cases[5], 0).0, Some("d".into()));
        assert_eq!(resolved(cases[6], 0).1, Some("cs".into()));
        assert_eq!(resolved(cases[7], 0).0, Some("mixed-case".into()));
    }

    proptest::proptest! {
        /// Whatever the headers (names from a pool that includes the identity headers in any
        /// case, repeated or not, values of any bytes a header may hold), the one-pass scan
        /// finds exactly what the hashed lookups find.
        #[test]
        fn scan_and_look_up_agree(
            pairs in proptest::collection::vec(
                (0usize..8, proptest::collection::vec(
                    proptest::prop_oneof![0x20u8..0x7f, 0x80u8..=0xff, proptest::strategy::Just(b'\t')],
                    0..12,
                )),
                0..14,
            )
        ) {
            const NAMES: [&str; 8] = [
                "X-PostHog-Distinct-Id", "x-posthog-distinct-id", "x-posthog-session-id",
                "Cookie", "host", "x-posthog-distinct", "user-agent", "x-other",
            ];
            let mut headers = HeaderMap::new();
            for (name, value) in &pairs {
                let value = HeaderValue::from_bytes(value).unwrap();
                headers.append(HeaderName::from_bytes(NAMES[*name].as_bytes()).unwrap(), value);
            }
            proptest::prop_assert_eq!(
                IdentityHeaders::scan(&headers),
                IdentityHeaders::look_up(&headers)
            );
        }
    }
}
