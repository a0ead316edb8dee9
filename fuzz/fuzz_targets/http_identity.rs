//! Request headers from the fuzzer (any names, any visible or obs-text bytes, posthog-js cookies
//! with arbitrary JSON) → the HTTP layer: identity, session, URL, referrer, client address and
//! the pageview. Never panics, and whatever reaches an event is clean: no control characters,
//! trimmed, at most 1 000 characters.
#![no_main]

use std::{
    convert::Infallible,
    future::Future,
    pin::pin,
    sync::{Arc, Mutex, OnceLock},
    task::{Context, Poll, Wake, Waker},
};

use arbitrary::Arbitrary;
use http::{HeaderName, HeaderValue, Request, Response};
use libfuzzer_sys::fuzz_target;
use posthog_tower::{
    context::RequestContext,
    http::{PostHogCookie, RequestHead, MAX_ID_CHARS},
    PostHog,
};
use tower::{Layer, Service};

#[derive(Arbitrary, Debug)]
struct Input {
    /// Header name choices: known ones mostly, so the interesting paths are reached.
    headers: Vec<(u8, Vec<u8>)>,
    /// A cookie value built from JSON-ish text, percent-encoded or not.
    cookie_json: Option<String>,
    encode_cookie: bool,
    path: String,
    trust_proxy: bool,
}

const NAMES: &[&str] = &[
    "x-posthog-distinct-id",
    "x-posthog-session-id",
    "cookie",
    "host",
    "forwarded",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-proto",
    "x-real-ip",
    "referer",
    "user-agent",
    "content-type",
];

const COOKIE: &str = "ph_phc_fuzz_posthog";

fn clean(what: &str, value: Option<&str>) {
    if let Some(v) = value {
        assert!(!v.is_empty(), "{what}: empty");
        assert_eq!(v, v.trim(), "{what}: not trimmed");
        assert!(!v.chars().any(char::is_control), "{what}: control character");
        assert!(v.chars().count() <= MAX_ID_CHARS, "{what}: too long");
    }
}

fn posthog() -> &'static PostHog {
    static CLIENT: OnceLock<PostHog> = OnceLock::new();
    CLIENT.get_or_init(|| {
        PostHog::builder("phc_fuzz")
            .disabled(true)
            .build()
            .expect("a disabled client builds")
    })
}

struct Noop;
impl Wake for Noop {
    fn wake(self: Arc<Self>) {}
}

fuzz_target!(|input: Input| {
    let uri = format!("/{}", input.path);
    let mut builder = Request::builder().uri(uri.as_str());
    if uri.parse::<http::Uri>().is_err() {
        builder = Request::builder().uri("/");
    }
    let mut request = builder.body(()).expect("a valid request");
    for (name, value) in input.headers.iter().take(32) {
        let name = HeaderName::from_static(NAMES[*name as usize % NAMES.len()]);
        if let Ok(value) = HeaderValue::from_bytes(value) {
            request.headers_mut().append(name, value);
        }
    }
    if let Some(json) = &input.cookie_json {
        let value = if input.encode_cookie {
            json.bytes().map(|b| format!("%{b:02X}")).collect::<String>()
        } else {
            json.clone()
        };
        if let Ok(v) = HeaderValue::from_str(&format!("a=b; {COOKIE}={value}")) {
            request.headers_mut().append("cookie", v);
        }
    }

    // The cookie and the head, directly.
    if let Some(c) = PostHogCookie::from_headers(request.headers(), COOKIE) {
        clean("cookie distinct_id", c.distinct_id());
        clean("cookie session_id", c.session_id());
        clean("cookie device_id", c.device_id());
    }
    let head = RequestHead::new(&request, COOKIE);
    clean("head session", head.session_id().as_deref());

    // The whole layer, pageview included, around a service that reports the context.
    let seen: Arc<Mutex<Option<RequestContext>>> = Arc::default();
    let record = seen.clone();
    let layer = posthog()
        .layer()
        .trust_proxy_headers(input.trust_proxy)
        .capture_ip(true)
        .should_capture(|_: &RequestHead<'_>| true);
    let mut svc = layer.layer(tower::service_fn(move |req: Request<()>| {
        let ctx = RequestContext::from_extensions(req.extensions()).cloned();
        *record.lock().unwrap() = ctx;
        std::future::ready(Ok::<_, Infallible>(Response::new(())))
    }));
    let waker = Waker::from(Arc::new(Noop));
    let mut cx = Context::from_waker(&waker);
    assert!(svc.poll_ready(&mut cx).is_ready());
    let future = pin!(svc.call(request));
    match future.poll(&mut cx) {
        Poll::Ready(Ok(_)) => {}
        other => panic!("the layer must answer at once: {other:?}"),
    }
    let ctx = seen.lock().unwrap().take().expect("a context for every request");
    clean("distinct_id", ctx.distinct_id());
    clean("session_id", ctx.session_id());
    for text in [ctx.current_url(), ctx.path(), ctx.host()].into_iter().flatten() {
        assert!(!text.chars().any(char::is_control), "control character in {text:?}");
    }
    if let Some(ip) = ctx.ip() {
        assert!(ip.parse::<std::net::IpAddr>().is_ok(), "{ip:?}");
    }
});
