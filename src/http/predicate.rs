//! Which requests get a pageview: [`ShouldCapture`] and its default.

use http::{header::CONTENT_TYPE, Method};

use super::{head::RequestHead, sanitize::header_text};

/// Decides whether a request gets a pageview event.
///
/// Implemented for closures `Fn(&RequestHead<'_>) -> bool`; combine with
/// [`and`](ShouldCapture::and).
///
/// # Example
///
/// Every API call, whatever its method, except under `/internal`:
///
/// ```
/// use posthog_tower::http::{RequestHead, ShouldCapture};
///
/// let predicate = |req: &RequestHead<'_>| !req.uri().path().starts_with("/internal");
/// # fn check(_: impl ShouldCapture) {}
/// # check(predicate);
/// ```
pub trait ShouldCapture {
    /// `true` to capture a pageview for this request.
    fn should_capture(&self, request: &RequestHead<'_>) -> bool;

    /// Captures only when both `self` and `other` say so.
    fn and<P: ShouldCapture>(self, other: P) -> And<Self, P>
    where
        Self: Sized,
    {
        And {
            first: self,
            second: other,
        }
    }
}

impl<F> ShouldCapture for F
where
    F: Fn(&RequestHead<'_>) -> bool,
{
    fn should_capture(&self, request: &RequestHead<'_>) -> bool {
        self(request)
    }
}

/// Both predicates. See [`ShouldCapture::and`].
#[derive(Clone, Copy, Debug)]
pub struct And<A, B> {
    first: A,
    second: B,
}

impl<A: ShouldCapture, B: ShouldCapture> ShouldCapture for And<A, B> {
    fn should_capture(&self, request: &RequestHead<'_>) -> bool {
        self.first.should_capture(request) && self.second.should_capture(request)
    }
}

/// The default predicate: `GET` and `HEAD` requests that are not gRPC, not static assets
/// (by extension, or under `/static/`, `/assets/`, `/_next/`), and not health or metrics
/// endpoints (`/health`, `/healthz`, `/livez`, `/readyz`, `/ready`, `/ping`, `/metrics`, also
/// as the last path segment).
#[derive(Clone, Copy, Debug, Default)]
pub struct DefaultShouldCapture;

const ASSET_EXTENSIONS: &[&str] = &[
    "js", "mjs", "css", "map", "png", "jpg", "jpeg", "gif", "svg", "ico", "webp", "avif", "woff",
    "woff2", "ttf", "otf", "eot", "mp4", "webm", "mp3", "wasm", "txt", "xml", "json",
];

const ASSET_PREFIXES: &[&str] = &["/static/", "/assets/", "/_next/", "/favicon"];

const PROBES: &[&str] = &[
    "health", "healthz", "livez", "readyz", "ready", "ping", "metrics", "_health",
];

impl DefaultShouldCapture {
    fn is_grpc(request: &RequestHead<'_>) -> bool {
        request
            .headers()
            .get(CONTENT_TYPE)
            .and_then(header_text)
            .is_some_and(|ct| ct.starts_with("application/grpc"))
    }

    fn is_asset(path: &str) -> bool {
        if ASSET_PREFIXES.iter().any(|p| path.starts_with(p)) {
            return true;
        }
        let last = path.rsplit('/').next().unwrap_or_default();
        match last.rsplit_once('.') {
            Some((_, ext)) => ASSET_EXTENSIONS
                .iter()
                .any(|known| ext.eq_ignore_ascii_case(known)),
            None => false,
        }
    }

    fn is_probe(path: &str) -> bool {
        let last = path
            .trim_end_matches('/')
            .rsplit('/')
            .next()
            .unwrap_or_default();
        PROBES.iter().any(|p| last.eq_ignore_ascii_case(p))
    }
}

impl ShouldCapture for DefaultShouldCapture {
    fn should_capture(&self, request: &RequestHead<'_>) -> bool {
        let method = request.method();
        if method != Method::GET && method != Method::HEAD {
            return false;
        }
        let path = request.uri().path();
        !Self::is_grpc(request) && !Self::is_asset(path) && !Self::is_probe(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Request;

    fn check(method: &str, path: &str, content_type: Option<&str>) -> bool {
        let mut b = Request::builder().method(method).uri(path);
        if let Some(ct) = content_type {
            b = b.header(CONTENT_TYPE, ct);
        }
        let req = b.body(()).unwrap();
        DefaultShouldCapture.should_capture(&RequestHead::new(&req, "ph"))
    }

    #[test]
    fn default_predicate() {
        assert!(check("GET", "/", None));
        assert!(check("HEAD", "/pricing", None));
        assert!(check("GET", "/blog/healthy-eating", None));
        assert!(!check("POST", "/signup", None));
        assert!(!check("GET", "/app.js", None));
        assert!(!check("GET", "/static/logo", None));
        assert!(!check("GET", "/img/Logo.PNG", None));
        assert!(!check("GET", "/healthz", None));
        assert!(!check("GET", "/api/v1/health/", None));
        assert!(!check("GET", "/metrics", None));
        assert!(!check(
            "GET",
            "/grpc.health.v1.Health/Check",
            Some("application/grpc+proto")
        ));
    }

    #[test]
    fn closures_and_combinators() {
        let not_admin = |r: &RequestHead<'_>| !r.uri().path().starts_with("/admin");
        let p = DefaultShouldCapture.and(not_admin);
        let req = Request::get("/admin/x").body(()).unwrap();
        assert!(!p.should_capture(&RequestHead::new(&req, "ph")));
        let req = Request::get("/x").body(()).unwrap();
        assert!(p.should_capture(&RequestHead::new(&req, "ph")));
    }
}
