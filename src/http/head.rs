//! [`RequestHead`]: what the layer's callbacks see of a request, with the identity headers
//! found in one pass.

use std::{cell::OnceCell, fmt};

use http::{
    header::{HeaderName, COOKIE, HOST, REFERER, USER_AGENT},
    Extensions, HeaderMap, HeaderValue, Method, Request, Uri,
};

use super::{
    cookie::PostHogCookie,
    sanitize::{cleaned, header},
};

/// The header posthog-js (and any client) can use to say who is calling.
pub const DISTINCT_ID_HEADER: &str = "x-posthog-distinct-id";

/// The header carrying the posthog-js session id.
pub const SESSION_ID_HEADER: &str = "x-posthog-session-id";

/// [`DISTINCT_ID_HEADER`] as a `HeaderName`: looking a header up by `&str` parses and
/// validates the name on every call, by `HeaderName` it does not (every request reads these).
static DISTINCT_ID_NAME: HeaderName = HeaderName::from_static(DISTINCT_ID_HEADER);

/// [`SESSION_ID_HEADER`] as a `HeaderName`.
static SESSION_ID_NAME: HeaderName = HeaderName::from_static(SESSION_ID_HEADER);

/// The header carrying posthog-js's window id (`$window_id`).
pub const WINDOW_ID_HEADER: &str = "x-posthog-window-id";

/// [`WINDOW_ID_HEADER`] as a `HeaderName`.
static WINDOW_ID_NAME: HeaderName = HeaderName::from_static(WINDOW_ID_HEADER);

/// The identity headers of a request (posthog-js's two headers, and whether it has a cookie),
/// and its `Host` (which the request context needs), found once.
#[derive(Clone, Copy, Default, Debug, PartialEq)]
struct IdentityHeaders<'h> {
    distinct_id: Option<&'h HeaderValue>,
    session_id: Option<&'h HeaderValue>,
    cookie: bool,
    host: Option<&'h HeaderValue>,
    user_agent: Option<&'h HeaderValue>,
    window_id: Option<&'h HeaderValue>,
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
            user_agent: headers.get(USER_AGENT),
            window_id: headers.get(&WINDOW_ID_NAME),
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
            } else if *name == USER_AGENT {
                found.user_agent.get_or_insert(value);
            } else if *name == SESSION_ID_NAME {
                found.session_id.get_or_insert(value);
            } else if *name == WINDOW_ID_NAME {
                found.window_id.get_or_insert(value);
            }
        }
        found
    }
}

/// The first `User-Agent` and `Referer` of `headers`, for a pageview whose request context
/// does not hold the user agent: one pass over a short header map, as
/// [`IdentityHeaders::find`] does, instead of two hashed lookups.
pub(crate) fn user_agent_and_referer(
    headers: &HeaderMap,
) -> (Option<&HeaderValue>, Option<&HeaderValue>) {
    if headers.keys_len() > SCAN_MAX_NAMES {
        return (headers.get(USER_AGENT), headers.get(REFERER));
    }
    let (mut user_agent, mut referer) = (None, None);
    for (name, value) in headers {
        if *name == USER_AGENT {
            user_agent.get_or_insert(value);
        } else if *name == REFERER {
            referer.get_or_insert(value);
        }
    }
    (user_agent, referer)
}

/// What [`MakeDistinctId`](super::MakeDistinctId) and [`ShouldCapture`](super::ShouldCapture) see of a request: its
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

    /// [`new`](Self::new) with the identity headers found at once: for a caller that reads
    /// them anyway (building a request context does), filling the cells here costs less than
    /// their lazy initialisation (about 60 instructions a request).
    pub(crate) fn with_identity<B>(request: &'a Request<B>, cookie_name: &'a str) -> Self {
        let identity = IdentityHeaders::find(request.headers());
        // Without a `Cookie` header there is no cookie to parse later either.
        let cookie = if identity.cookie {
            OnceCell::new()
        } else {
            OnceCell::from(None)
        };
        RequestHead {
            identity: OnceCell::from(identity),
            cookie,
            ..RequestHead::new(request, cookie_name)
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
    /// removed, trimmed, at most [`MAX_ID_CHARS`](super::MAX_ID_CHARS) characters.
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

    /// The first `User-Agent` header, as it is.
    #[inline]
    pub(crate) fn user_agent_header(&self) -> Option<&'a HeaderValue> {
        self.identity().user_agent
    }

    /// The `X-POSTHOG-WINDOW-ID` header, cleaned.
    #[inline]
    pub(crate) fn window_id(&self) -> Option<String> {
        cleaned(self.identity().window_id)
    }

    /// The `X-POSTHOG-DISTINCT-ID` header, cleaned.
    #[inline]
    pub(super) fn distinct_id_header(&self) -> Option<String> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::{DefaultMakeDistinctId, MakeDistinctId};

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
        let read = |head: RequestHead<'_>| {
            (
                DefaultMakeDistinctId.make_distinct_id(&head),
                head.session_id(),
                head.posthog_cookie().is_some(),
                head.host_header().cloned(),
                head.user_agent_header().cloned(),
                head.window_id(),
            )
        };
        // Found lazily or at once, a head reads the same.
        let lazy = read(RequestHead::new(&req, "ph_k_posthog"));
        assert_eq!(
            lazy,
            read(RequestHead::with_identity(&req, "ph_k_posthog")),
            "{pairs:?}"
        );
        (lazy.0, lazy.1, lazy.2)
    }

    #[test]
    fn user_agent_and_referer_in_one_pass_or_two_lookups() {
        let found = |pairs: &[(&str, &str)], filler: usize| {
            let mut headers = HeaderMap::new();
            for i in 0..filler {
                headers.append(
                    HeaderName::try_from(format!("x-filler-{i}")).unwrap(),
                    HeaderValue::from_static("1"),
                );
            }
            for (k, v) in pairs {
                headers.append(HeaderName::try_from(*k).unwrap(), v.parse().unwrap());
            }
            let (ua, referer) = user_agent_and_referer(&headers);
            let text = |v: Option<&HeaderValue>| v.map(|v| v.to_str().unwrap().to_owned());
            (text(ua), text(referer))
        };
        type Found<'a> = (Option<&'a str>, Option<&'a str>);
        let cases: &[(&[(&str, &str)], Found<'_>)] = &[
            (&[], (None, None)),
            (&[("host", "a.example")], (None, None)),
            (&[("User-Agent", "ua")], (Some("ua"), None)),
            (
                &[("referer", "https://r.example/")],
                (None, Some("https://r.example/")),
            ),
            (
                &[
                    ("referer", "r1"),
                    ("user-agent", "u1"),
                    ("user-agent", "u2"),
                    ("referer", "r2"),
                ],
                (Some("u1"), Some("r1")),
            ),
        ];
        for (pairs, (ua, referer)) in cases {
            let expected = (ua.map(str::to_owned), referer.map(str::to_owned));
            for filler in [0, SCAN_MAX_NAMES - 3, SCAN_MAX_NAMES + 1] {
                assert_eq!(
                    found(pairs, filler),
                    expected,
                    "{pairs:?}, {filler} more names"
                );
            }
        }
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
            &[
                ("host", "h.example"),
                ("user-agent", "ua"),
                (WINDOW_ID_HEADER, "w"),
                ("cookie", cookie),
            ],
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
