//! The request's URL, host, referrer and client address, from untrusted headers.

use std::net::{IpAddr, SocketAddr};

use http::{header, HeaderMap, HeaderValue, Uri};

use super::sanitize::header_text;
use crate::context::host::{valid_host, Host};

/// The first element of a comma-separated header value.
fn first_item(value: &str) -> &str {
    value.split(',').next().unwrap_or_default().trim()
}

/// A parameter (`proto`, `host`, `for`) of the first element of a `Forwarded` header.
fn forwarded_param<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    let value = header_text(headers.get(header::FORWARDED)?)?;
    first_item(value).split(';').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        k.trim()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim().trim_matches('"'))
    })
}

fn forwarded_header<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    let value = header_text(headers.get(name)?)?;
    Some(first_item(value))
}

/// `http` or `https`.
#[inline]
pub(crate) fn scheme(uri: &Uri, headers: &HeaderMap, trust_proxy: bool) -> &'static str {
    let from_proxy = trust_proxy
        .then(|| {
            forwarded_param(headers, "proto")
                .or_else(|| forwarded_header(headers, "x-forwarded-proto"))
        })
        .flatten();
    let proto = from_proxy.or_else(|| uri.scheme_str());
    match proto {
        Some(p) if p.eq_ignore_ascii_case("https") => "https",
        _ => "http",
    }
}

/// The host the client asked for (with port, if any): from a trusted proxy's headers, else
/// from `host_header` (the request's first `Host`) or the URI (checked when first read).
#[inline]
pub(crate) fn host(
    uri: &Uri,
    headers: &HeaderMap,
    host_header: Option<&HeaderValue>,
    trust_proxy: bool,
) -> Host {
    if trust_proxy {
        let forwarded = forwarded_param(headers, "host")
            .or_else(|| forwarded_header(headers, "x-forwarded-host"))
            .and_then(valid_host);
        if forwarded.is_some() {
            return Host::checked(forwarded);
        }
    }
    Host::of_request(uri, host_header)
}

/// The host part of a URL (`https://a.example:8080/x` gives `a.example:8080`).
pub(crate) fn url_host(url: &str) -> Option<&str> {
    // The scheme ends at the first `:`, which must open `://` (a byte search, where
    // `split_once("://")` sets up a substring searcher for every referrer).
    let colon = url.find(':')?;
    let rest = url.get(colon..)?.strip_prefix("://")?;
    let authority = rest.split(['/', '?', '#']).next()?;
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    valid_host(host)
}

fn parse_ip(text: &str) -> Option<IpAddr> {
    let text = text.trim().trim_matches('"');
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Some(addr.ip());
    }
    // `[v6]` without a port, or `v4:port`.
    let text = text.trim_start_matches('[').trim_end_matches(']');
    text.parse().ok()
}

/// The client address a trusted proxy reported: `Forwarded: for=`, `X-Forwarded-For` (the
/// first, client-most entry) or `X-Real-IP`.
pub(crate) fn forwarded_ip(headers: &HeaderMap) -> Option<IpAddr> {
    forwarded_param(headers, "for")
        .and_then(parse_ip)
        .or_else(|| forwarded_header(headers, "x-forwarded-for").and_then(parse_ip))
        .or_else(|| forwarded_header(headers, "x-real-ip").and_then(parse_ip))
}

/// The campaign parameters posthog-js reads from a page's URL: UTM parameters and ad click ids.
const CAMPAIGN_PARAMS: &[&str] = &[
    "utm_source",
    "utm_medium",
    "utm_campaign",
    "utm_content",
    "utm_name",
    "utm_term",
    "gclid",
    "gad_source",
    "gclsrc",
    "dclid",
    "gbraid",
    "wbraid",
    "fbclid",
    "msclkid",
    "twclid",
    "li_fat_id",
    "mc_cid",
    "igshid",
    "ttclid",
    "rdt_cid",
];

/// Whether `key` is one of posthog-js's campaign parameters.
pub(crate) fn is_campaign_param(key: &str) -> bool {
    CAMPAIGN_PARAMS.contains(&key)
}

/// The campaign parameters in a URL's `query`, decoded (`+` is a space, `%XX` escapes) and
/// cleaned: the first of each name, none that is empty or not UTF-8. Nothing is allocated for
/// a query without them.
pub(crate) fn campaign_params(query: &str) -> Vec<(&'static str, String)> {
    let mut found: Vec<(&'static str, String)> = Vec::new();
    for pair in query.split('&') {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let Some(&name) = CAMPAIGN_PARAMS.iter().find(|name| **name == key) else {
            continue;
        };
        if value.is_empty() || found.iter().any(|(seen, _)| *seen == name) {
            continue;
        }
        let spaced = value.replace('+', " ");
        let Some(decoded) = super::cookie::percent_decode(spaced.as_bytes())
            .and_then(|bytes| String::from_utf8(bytes).ok())
            .and_then(super::sanitize::sanitize_owned)
        else {
            continue;
        };
        found.push((name, decoded));
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The host as the request context gets it (the resolver finds the first `Host`).
    fn host_of(uri: &Uri, headers: &HeaderMap, trust_proxy: bool) -> Host {
        host(uri, headers, headers.get(header::HOST), trust_proxy)
    }

    /// `$current_url` as the request context builds it from these parts.
    fn current_url(uri: &Uri, headers: &HeaderMap, trust_proxy: bool) -> String {
        let ctx = crate::context::RequestContext::for_request(crate::context::RequestParts {
            distinct_id: None,
            session_id: None,
            method: &http::Method::GET,
            uri,
            scheme: scheme(uri, headers, trust_proxy),
            host: host_of(uri, headers, trust_proxy),
            ip: None,
            user_agent: None,
            window_id: None,
            device_id: None,
            tags: None,
            layer_state: None,
        });
        ctx.current_url().unwrap_or_default().to_owned()
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn current_url_uses_host_and_ignores_untrusted_forwarding() {
        let uri: Uri = "/a/b?c=1".parse().unwrap();
        let h = headers(&[
            ("host", "app.example:8080"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "evil.example"),
        ]);
        assert_eq!(
            current_url(&uri, &h, false),
            "http://app.example:8080/a/b?c=1"
        );
        assert_eq!(current_url(&uri, &h, true), "https://evil.example/a/b?c=1");
    }

    #[test]
    fn forwarded_header_is_read_when_trusted() {
        let uri: Uri = "/x".parse().unwrap();
        let h = headers(&[
            ("host", "internal:3000"),
            (
                "forwarded",
                r#"for="[2001:db8::1]:4711";proto=https;host=shop.example, for=10.0.0.1"#,
            ),
        ]);
        assert_eq!(current_url(&uri, &h, true), "https://shop.example/x");
        assert_eq!(forwarded_ip(&h), Some("2001:db8::1".parse().unwrap()));
    }

    #[test]
    fn hostile_hosts_are_rejected() {
        let uri: Uri = "/".parse().unwrap();
        let h = headers(&[("host", "a b/../c")]);
        assert_eq!(current_url(&uri, &h, false), "/");
        let long = "a".repeat(300);
        let h = headers(&[("host", &long)]);
        assert_eq!(host_of(&uri, &h, false).get(), None);
        // An invalid `Host` falls back to the URI's authority, a valid one wins over it.
        let absolute: Uri = "http://origin.example/p".parse().unwrap();
        let h = headers(&[("host", "a b")]);
        assert_eq!(host_of(&absolute, &h, false).get(), Some("origin.example"));
        let h = headers(&[("host", " hdr.example ")]);
        assert_eq!(host_of(&absolute, &h, false).get(), Some("hdr.example"));
    }

    #[test]
    fn http2_authority_is_used_without_host() {
        let uri: Uri = "https://h2.example/p".parse().unwrap();
        assert_eq!(
            current_url(&uri, &HeaderMap::new(), false),
            "https://h2.example/p"
        );
    }

    #[test]
    fn referring_domain() {
        assert_eq!(
            url_host("https://user@www.google.com:443/search?q=x"),
            Some("www.google.com:443")
        );
        assert_eq!(url_host("android-app://com.x"), Some("com.x"));
        assert_eq!(url_host("not a url"), None);
    }

    #[test]
    fn client_ip_from_forwarding_headers() {
        let h = headers(&[("x-forwarded-for", "203.0.113.7, 10.0.0.2")]);
        assert_eq!(forwarded_ip(&h), Some("203.0.113.7".parse().unwrap()));
        let h = headers(&[("x-forwarded-for", "garbage")]);
        assert_eq!(forwarded_ip(&h), None);
        let h = headers(&[("x-real-ip", "198.51.100.1:1234")]);
        assert_eq!(forwarded_ip(&h), Some("198.51.100.1".parse().unwrap()));
    }

    #[test]
    fn campaign_parameters_first_of_each_decoded_none_invented() {
        let found = campaign_params(
            "utm_source=a%20b&utm_source=second&gclid=x+y&utm_term=&fbclid=%FF&utm_medium=%0Aemail&other=1&utm_campaign",
        );
        assert_eq!(
            found,
            [
                ("utm_source", "a b".to_owned()),
                ("gclid", "x y".to_owned()),
                ("utm_medium", "email".to_owned()),
            ]
        );
        assert!(campaign_params("").is_empty());
        assert!(campaign_params("page=2&sort=asc").is_empty());
    }
}
