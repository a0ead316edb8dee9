//! The project API key and the personal API key stay secret: they never show in the `Debug`
//! or `Display` output of a public type, nor in any log line at any level, through a whole
//! lifecycle with failures; and the personal key travels to PostHog's API paths only
//! (`/flags/definitions` and the remote config path), in their `Authorization` header.
//!
//! Logs are captured by a `tracing::Subscriber` written here (every level enabled, every field
//! formatted), installed with `tracing::subscriber::set_default` for the test's thread. The
//! tests run on tokio's current-thread runtime, so the client's worker, its poller, hyper's
//! connection tasks and the mock all run on that thread and log into it.
//!
//! This file stays a test binary of its own, apart from the grouped ones (`tests/capture/`,
//! `tests/flags/`, ...): `tracing` caches each callsite's interest for the whole process, worked
//! out once by whichever thread reaches the callsite first. A test of another area running
//! beside these, reaching the client's log lines on a thread without a subscriber, could switch
//! those lines off for the recorder here, and the checks that every level and message was
//! logged would fail now and then.

use std::fmt::{self, Write as _};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use posthog_tower::capture::CaptureTransport;
use posthog_tower::flags::{FlagsRequest, LocalFlags, RemoteFlags};
use posthog_tower::testing::{remote_config_path, MockPostHog, MockResponse};
use posthog_tower::{ErrorReport, Event, PostHog};
use serde_json::{json, Value};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::subscriber::Interest;
use tracing::{Level, Metadata, Subscriber};

const PROJECT_KEY: &str = "phc_Pr0jectSecretKeyForTests8472";
const PERSONAL_KEY: &str = "phx_PersonalSecretKeyForTests5519";

// ===== a recording subscriber =====

/// Every event and span, formatted as one line each: level, target, message and fields.
#[derive(Clone, Default)]
struct Recorder {
    lines: Arc<Mutex<Vec<String>>>,
    next_span: Arc<AtomicU64>,
}

impl Recorder {
    fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    fn push(&self, line: String) {
        self.lines.lock().unwrap().push(line);
    }

    /// Asserts that no recorded line holds either key, and returns how many there were.
    fn assert_no_secret(&self) -> usize {
        let lines = self.lines();
        for line in &lines {
            assert_no_secret("a log line", line);
        }
        lines.len()
    }
}

/// Formats every field, whatever its type, as ` name=value`.
struct Fields<'a>(&'a mut String);

impl Visit for Fields<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        let _ = write!(self.0, " {}={:?}", field.name(), value);
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        let _ = write!(self.0, " {}={}", field.name(), value);
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        let _ = write!(self.0, " {}={} ({:?})", field.name(), value, value);
        let mut source = value.source();
        while let Some(cause) = source {
            let _ = write!(self.0, " caused by: {cause} ({cause:?})");
            source = cause.source();
        }
    }
}

fn header(kind: &str, metadata: &Metadata<'_>) -> String {
    format!("{kind} {} {}:", metadata.level(), metadata.target())
}

impl Subscriber for Recorder {
    fn register_callsite(&self, _: &'static Metadata<'static>) -> Interest {
        Interest::always()
    }

    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }

    fn max_level_hint(&self) -> Option<tracing::level_filters::LevelFilter> {
        Some(tracing::level_filters::LevelFilter::TRACE)
    }

    fn new_span(&self, span: &Attributes<'_>) -> Id {
        let mut line = header("span", span.metadata());
        let _ = write!(line, " {}", span.metadata().name());
        span.record(&mut Fields(&mut line));
        self.push(line);
        Id::from_u64(self.next_span.fetch_add(1, Ordering::Relaxed) + 1)
    }

    fn record(&self, _: &Id, values: &Record<'_>) {
        let mut line = String::from("span record:");
        values.record(&mut Fields(&mut line));
        self.push(line);
    }

    fn record_follows_from(&self, _: &Id, _: &Id) {}

    fn event(&self, event: &tracing::Event<'_>) {
        let mut line = header("event", event.metadata());
        event.record(&mut Fields(&mut line));
        self.push(line);
    }

    fn enter(&self, _: &Id) {}

    fn exit(&self, _: &Id) {}
}

fn holds_a_key(text: &str) -> bool {
    text.contains(PROJECT_KEY) || text.contains(PERSONAL_KEY)
}

fn assert_no_secret(what: &str, text: &str) {
    assert!(
        !text.contains(PROJECT_KEY),
        "{what} holds the project API key: {text}"
    );
    assert!(
        !text.contains(PERSONAL_KEY),
        "{what} holds the personal API key: {text}"
    );
}

/// Both `Debug` (plain and pretty) and, when given, `Display`.
fn assert_debug_is_clean(what: &str, value: &impl fmt::Debug) {
    assert_no_secret(what, &format!("{value:?}"));
    assert_no_secret(what, &format!("{value:#?}"));
}

fn assert_display_is_clean(what: &str, value: &(impl fmt::Display + fmt::Debug)) {
    assert_debug_is_clean(what, value);
    assert_no_secret(what, &value.to_string());
}

/// The recorder itself: it sees every level, the message, every field (strings, `Display`,
/// `Debug`, errors and their sources) and span fields, so a key in any of them is caught.
#[test]
fn the_recorder_catches_a_key_anywhere() {
    #[derive(Debug)]
    struct Wrapped(std::io::Error);
    impl fmt::Display for Wrapped {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("wrapped")
        }
    }
    impl std::error::Error for Wrapped {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    let leaks: Vec<Box<dyn Fn()>> = vec![
        Box::new(|| tracing::trace!("message with {}", PROJECT_KEY)),
        Box::new(|| tracing::debug!(key = PERSONAL_KEY, "a str field")),
        Box::new(|| tracing::info!(key = %PROJECT_KEY, "a Display field")),
        Box::new(|| tracing::warn!(key = ?PERSONAL_KEY, "a Debug field")),
        Box::new(|| {
            let error = Wrapped(std::io::Error::other(PROJECT_KEY));
            let error: &(dyn std::error::Error + 'static) = &error;
            tracing::error!(error, "an error whose source holds it");
        }),
        Box::new(|| {
            let _span = tracing::trace_span!("span", key = PERSONAL_KEY).entered();
        }),
    ];
    for (i, leak) in leaks.iter().enumerate() {
        let recorder = Recorder::default();
        let _guard = tracing::subscriber::set_default(recorder.clone());
        leak();
        let caught = recorder.lines().iter().any(|l| holds_a_key(l));
        assert!(caught, "leak {i} went unnoticed: {:?}", recorder.lines());
    }
}

// ===== the lifecycle =====

fn definitions() -> Value {
    json!({
        "flags": [
            {"id": 1, "key": "local-beta", "active": true,
             "filters": {"groups": [{"properties": [], "rollout_percentage": 100}],
                         "payloads": {"true": "{\"tier\": 2}"}}},
            {"id": 2, "key": "needs-remote", "active": true, "ensure_experience_continuity": true,
             "filters": {"groups": [{"properties": [], "rollout_percentage": 100}]}}
        ],
        "group_type_mapping": {},
        "cohorts": {}
    })
}

fn remote_flags() -> MockResponse {
    MockResponse::json(
        200,
        json!({"flags": {"needs-remote": {"key": "needs-remote", "enabled": true,
               "reason": {"description": "Matched"}, "metadata": {"id": 2}}},
               "errorsWhileComputingFlags": false, "requestId": "r-1"}),
    )
}

#[tokio::test(start_paused = true)]
async fn keys_never_show_in_debug_display_or_logs_and_the_personal_key_goes_to_definitions_only() {
    let recorder = Recorder::default();
    let _guard = tracing::subscriber::set_default(recorder.clone());

    let mock = MockPostHog::start().await.unwrap();
    mock.set_default("/flags/definitions", MockResponse::json(200, definitions()));
    mock.set_default("/flags/", remote_flags());
    // Failures on every endpoint: refused keys, server errors, throttling.
    mock.enqueue("/batch/", MockResponse::status(500));
    mock.enqueue("/batch/", MockResponse::status(429).retry_after("2"));
    mock.enqueue("/batch/", MockResponse::reset_connection());
    mock.enqueue("/flags/", MockResponse::status(500));
    mock.enqueue("/flags/", MockResponse::status(429));
    mock.enqueue("/flags/", MockResponse::status(401));
    mock.enqueue("/flags/", MockResponse::status(502));
    mock.set_remote_config("remote-settings", Some(json!({"theme": "dark"})));
    mock.enqueue(
        &remote_config_path("remote-settings"),
        MockResponse::json(403, json!({"detail": "refused"})),
    );

    let errors: Arc<Mutex<Vec<ErrorReport>>> = Arc::default();
    let builder = PostHog::builder(PROJECT_KEY)
        .host(mock.url())
        .personal_api_key(PERSONAL_KEY)
        .poll_interval(Duration::from_secs(1))
        .flush_at(5)
        .gzip(true)
        .on_error({
            let errors = errors.clone();
            move |e| errors.lock().unwrap().push(e.clone())
        });
    assert_debug_is_clean("PostHogBuilder", &builder);
    let (ph, worker) = builder.build_pair().unwrap();
    assert_debug_is_clean("Worker", &worker);
    tokio::spawn(worker);
    assert_debug_is_clean("PostHog", &ph);

    // Local evaluation, with the personal key.
    assert!(ph.wait_for_flag_definitions(Duration::from_secs(5)).await);
    let local = ph.local_flags().expect("definitions loaded");
    assert_debug_is_clean("LocalFlags", &local);
    let request = FlagsRequest::new("user-1").person_property("plan", "pro");
    assert_debug_is_clean("FlagsRequest", &request);
    let result = ph
        .get_feature_flag_result("local-beta", request.clone())
        .await
        .unwrap();
    assert!(result.record.locally_evaluated);
    assert_debug_is_clean("FeatureFlagResult", &result);
    assert_debug_is_clean("AllFlags", &ph.get_all_flags_and_payloads("user-1").await);
    assert_debug_is_clean("FlagEvaluations", &ph.evaluate_flags("user-1").await);

    // Remote config, with the personal key: refused once, then served.
    let refused = ph.get_remote_config_payload("remote-settings").await;
    let error = refused.unwrap_err();
    assert_display_is_clean("RemoteConfigError", &error);
    assert_debug_is_clean("RemoteConfigError", &error);
    assert_eq!(
        ph.get_remote_config_payload("remote-settings").await,
        Ok(Some(json!({"theme": "dark"})))
    );

    // Remote evaluation, failing in every way first (500 and 401 are final, 502 retried).
    for _ in 0..4 {
        let outcome = ph.get_feature_flag("needs-remote", "user-2").await;
        if let Err(e) = &outcome {
            assert_display_is_clean("FlagError", e);
        }
        assert_debug_is_clean("flag outcome", &outcome);
    }
    assert!(ph
        .is_feature_enabled("needs-remote", "user-2")
        .await
        .unwrap());

    // The definitions endpoint refuses the key, then fails, then recovers.
    let seen = mock.requests_to("/flags/definitions").len();
    mock.enqueue("/flags/definitions", MockResponse::status(401));
    mock.enqueue("/flags/definitions", MockResponse::status(500));
    mock.enqueue(
        "/flags/definitions",
        MockResponse::status(200).with_raw_body("{not json"),
    );
    mock.wait_for_requests("/flags/definitions", seen + 4, Duration::from_secs(600))
        .await
        .unwrap();

    // Capture through the batch failures.
    for i in 0..20 {
        let uuid = ph.capture(Event::new("secret-test", "user-3").property("i", i));
        assert_debug_is_clean("capture result", &uuid);
    }
    // A rejected event, for the errors' output.
    let rejected = ph.capture(Event::new("", "user-3")).unwrap_err();
    assert_display_is_clean("CaptureError", &rejected);
    let report = ph.flush().await;
    assert_debug_is_clean("FlushReport", &report);
    assert_debug_is_clean("Stats", &ph.stats());

    // The project key refused on /batch/: final.
    mock.enqueue("/batch/", MockResponse::status(401));
    ph.capture(Event::new("refused", "user-3")).unwrap();
    let report = ph.flush().await;
    assert_eq!(report.failed, 1, "{report:?}");

    let report = ph.shutdown(Duration::from_secs(10)).await;
    assert_debug_is_clean("FlushReport", &report);
    assert_debug_is_clean("PostHog after shutdown", &ph);

    // Every error the client reported.
    let errors = errors.lock().unwrap().clone();
    assert!(
        errors.iter().any(|e| matches!(e, ErrorReport::Delivery(_))),
        "{errors:?}"
    );
    for e in &errors {
        assert_display_is_clean("Error", e);
        if let ErrorReport::Delivery(d) = e {
            assert_display_is_clean("DeliveryError", d);
            let mut source: Option<&(dyn std::error::Error + 'static)> = Some(d.error());
            while let Some(cause) = source {
                assert_no_secret("an error source", &format!("{cause} {cause:?}"));
                source = cause.source();
            }
        }
    }

    // What the logs said: something at every level the client uses, and never a key.
    let count = recorder.assert_no_secret();
    let lines = recorder.lines();
    if std::env::var_os("SECRETS_DUMP_LOGS").is_some() {
        for line in &lines {
            eprintln!("{line}");
        }
    }
    for needle in [
        "posthog: batch not delivered",
        "posthog: retrying batch",
        "posthog: the personal API key was refused",
        "posthog: event not captured",
    ] {
        assert!(
            lines.iter().any(|l| l.contains(needle)),
            "no log line says {needle:?}; {count} lines recorded"
        );
    }
    for level in [Level::ERROR, Level::WARN, Level::DEBUG] {
        let tag = format!(" {level} ");
        assert!(
            lines.iter().any(|l| l.contains(&tag)),
            "nothing logged at {level}"
        );
    }

    // On the wire: the personal key only in the Authorization header of /flags/definitions.
    let requests = mock.requests();
    assert!(requests.len() > 10);
    let mut definitions = 0;
    let mut remote_configs = 0;
    for r in &requests {
        let url = format!("{}?{}", r.path, r.query.as_deref().unwrap_or(""));
        assert!(!url.contains(PERSONAL_KEY), "personal key in the URL {url}");
        assert!(
            !String::from_utf8_lossy(&r.body).contains(PERSONAL_KEY),
            "personal key in the body of {}",
            r.path
        );
        for (name, value) in &r.headers {
            let value = String::from_utf8_lossy(value.as_bytes());
            if !value.contains(PERSONAL_KEY) {
                continue;
            }
            assert!(
                r.path == "/flags/definitions" || r.path == remote_config_path("remote-settings"),
                "personal key sent to {} in {name}",
                r.path
            );
            assert_eq!(name, http::header::AUTHORIZATION, "personal key in {name}");
            assert_eq!(value, format!("Bearer {PERSONAL_KEY}"));
        }
        if r.path == remote_config_path("remote-settings") {
            remote_configs += 1;
            // The project key only as the token parameter.
            assert_eq!(
                r.query.as_deref(),
                Some(format!("token={PROJECT_KEY}").as_str())
            );
            assert_eq!(
                r.header("authorization"),
                Some(format!("Bearer {PERSONAL_KEY}").as_str())
            );
        } else if r.path == "/flags/definitions" {
            definitions += 1;
            assert_eq!(
                r.header("authorization"),
                Some(format!("Bearer {PERSONAL_KEY}").as_str())
            );
        } else {
            assert!(r.header("authorization").is_none(), "{}", r.path);
        }
    }
    assert!(definitions >= 4);
    assert_eq!(remote_configs, 2);
    // The project key did travel, where PostHog expects it.
    assert!(mock.requests_to("/batch")[0]
        .json()
        .is_some_and(|b| b["api_key"] == PROJECT_KEY));
}

/// A server (or a proxy in front of it) that quotes the request in its error answers: the
/// errors and logs quote the answer, but not the key in it. (Before this was fixed, the 400's
/// `UnexpectedStatus`, the `DeliveryError` and the "batch not delivered" log line all held
/// the project key.) The personal key cannot be echoed this way: only `/flags/definitions`
/// receives it, and the poller logs the status of a failed load, never the body.
#[tokio::test(start_paused = true)]
async fn error_bodies_echoing_the_key_are_redacted() {
    let recorder = Recorder::default();
    let _guard = tracing::subscriber::set_default(recorder.clone());
    let mock = MockPostHog::start().await.unwrap();
    let echo = |code: u16| {
        MockResponse::json(
            code,
            json!({"detail": format!("invalid api_key {PROJECT_KEY}")}),
        )
    };
    mock.enqueue("/batch/", echo(503));
    mock.enqueue("/batch/", echo(400));
    mock.enqueue("/flags/", echo(500));
    mock.enqueue(
        "/flags/definitions",
        MockResponse::status(500).with_raw_body(format!("<pre>GET ?token={PROJECT_KEY}</pre>")),
    );
    let errors: Arc<Mutex<Vec<ErrorReport>>> = Arc::default();
    let ph = PostHog::builder(PROJECT_KEY)
        .host(mock.url())
        .personal_api_key(PERSONAL_KEY)
        .send_feature_flag_events(false)
        .on_error({
            let errors = errors.clone();
            move |e| errors.lock().unwrap().push(e.clone())
        })
        .build()
        .unwrap();
    mock.wait_for_requests("/flags/definitions", 1, Duration::from_secs(60))
        .await
        .unwrap();

    let flag = ph
        .get_feature_flag("anything", FlagsRequest::new("u").force_remote(true))
        .await;
    let error = flag.unwrap_err();
    assert_display_is_clean("FlagError", &error);
    ph.capture(Event::new("e", "u")).unwrap();
    assert_eq!(ph.flush().await.failed, 1);
    ph.shutdown(Duration::from_secs(5)).await;

    let errors = errors.lock().unwrap().clone();
    assert_eq!(errors.len(), 1, "{errors:?}");
    let ErrorReport::Delivery(d) = &errors[0] else {
        panic!("{errors:?}")
    };
    let status = d
        .error()
        .downcast_ref::<posthog_tower::net::UnexpectedStatus>()
        .expect("a status error");
    assert_eq!(status.status(), 400);
    // The rest of the answer is still quoted, for diagnosis.
    assert!(status.body().contains("invalid api_key"), "{status}");
    assert_display_is_clean("Error", &errors[0]);
    assert_display_is_clean("UnexpectedStatus", status);
    assert!(recorder
        .lines()
        .iter()
        .any(|l| l.contains("invalid api_key")));
    recorder.assert_no_secret();
}

#[test]
fn standalone_services_and_build_errors_do_not_print_keys() {
    let recorder = Recorder::default();
    let _guard = tracing::subscriber::set_default(recorder.clone());

    let transport = CaptureTransport::new("https://eu.i.posthog.com", PROJECT_KEY).unwrap();
    assert_debug_is_clean("CaptureTransport", &transport);
    let remote = RemoteFlags::new("https://eu.i.posthog.com", PROJECT_KEY).unwrap();
    assert_debug_is_clean("RemoteFlags", &remote);

    let local = LocalFlags::from_definitions(definitions().to_string().as_bytes()).unwrap();
    assert_debug_is_clean("LocalFlags", &local);

    // A personal key that cannot be a header value: the error names the problem, not the key.
    let bad_personal = format!("{PERSONAL_KEY}\u{7f}");
    let error = PostHog::builder(PROJECT_KEY)
        .host("https://eu.i.posthog.com")
        .personal_api_key(bad_personal)
        .build_pair()
        .unwrap_err();
    assert_display_is_clean("BuildError", &error);
    let error = PostHog::builder(PROJECT_KEY)
        .host("not a url")
        .build_pair()
        .unwrap_err();
    assert_display_is_clean("BuildError", &error);
    let error = PostHog::builder(PROJECT_KEY)
        .super_property("x", f64::NAN)
        .build_pair()
        .unwrap_err();
    assert_display_is_clean("BuildError", &error);

    // A disabled client holds the keys too.
    let disabled = PostHog::builder(PROJECT_KEY)
        .personal_api_key(PERSONAL_KEY)
        .disabled(true)
        .build_pair()
        .unwrap()
        .0;
    assert_debug_is_clean("PostHog", &disabled);

    recorder.assert_no_secret();
}

/// The HTTP layer knows the project key (posthog-js's cookie is `ph_<key>_posthog`): its
/// layers, services and request-scoped values never print it, nor do the logs of a request
/// whose flags fail.
#[tokio::test(start_paused = true)]
async fn the_http_layer_does_not_print_keys() {
    use posthog_tower::http::{CapturePageviews, InjectFlags, RequestFlags, SetRequestContext};
    use tower::{Layer, ServiceExt};

    let recorder = Recorder::default();
    let _guard = tracing::subscriber::set_default(recorder.clone());
    let mock = MockPostHog::start().await.unwrap();
    mock.set_default("/flags/", MockResponse::status(500));
    let ph = PostHog::builder(PROJECT_KEY)
        .host(mock.url())
        .feature_flags_max_retries(0)
        .build()
        .unwrap();
    let layer = ph.layer().eager_flags(["beta"]);
    assert_debug_is_clean("PostHogLayer", &layer);
    let inner = tower::service_fn(|req: http::Request<()>| async move {
        let flags = RequestFlags::from_extensions(req.extensions()).unwrap();
        assert_debug_is_clean("RequestFlags", &flags);
        assert!(!flags.is_enabled("beta").await);
        assert_debug_is_clean("RequestFlags after a failure", &flags);
        let ctx = posthog_tower::context::RequestContext::from_extensions(req.extensions())
            .cloned()
            .unwrap();
        assert_debug_is_clean("RequestContext", &ctx);
        Ok::<_, std::convert::Infallible>(http::Response::new(()))
    });
    let svc = layer.layer(inner);
    assert_debug_is_clean("PostHogService", &svc);
    let cookie = format!("ph_{PROJECT_KEY}_posthog=%7B%22distinct_id%22%3A%22u-1%22%7D");
    let request = http::Request::get("/")
        .header("cookie", cookie)
        .body(())
        .unwrap();
    svc.oneshot(request).await.unwrap();
    assert_debug_is_clean("SetRequestContext", &SetRequestContext::new((), &ph));
    assert_debug_is_clean("InjectFlags", &InjectFlags::new((), &ph));
    assert_debug_is_clean("CapturePageviews", &CapturePageviews::new((), &ph));
    ph.shutdown(Duration::from_secs(5)).await;
    assert!(
        recorder.assert_no_secret() > 0,
        "the flags failure was logged"
    );
}

// ===== plain http to a remote host =====

/// The warnings logged while building a client for `host`.
fn build_warnings(host: &str) -> Vec<String> {
    let recorder = Recorder::default();
    let _guard = tracing::subscriber::set_default(recorder.clone());
    let (ph, _worker) = PostHog::builder(PROJECT_KEY)
        .host(host)
        .personal_api_key(PERSONAL_KEY)
        .build_pair()
        .unwrap();
    drop(ph);
    recorder.assert_no_secret();
    recorder
        .lines()
        .into_iter()
        .filter(|l| l.starts_with("event WARN "))
        .collect()
}

#[test]
fn plain_http_to_a_remote_host_is_warned_about_at_build_time() {
    for host in [
        "http://posthog.example.com",
        "http://10.1.2.3:8000/",
        "http://[2001:db8::1]:8000",
        "HTTP://eu.i.posthog.com",
    ] {
        let warnings = build_warnings(host);
        assert_eq!(warnings.len(), 1, "{host}: {warnings:?}");
        assert!(warnings[0].contains("plain http"), "{warnings:?}");
    }
    for host in [
        "http://127.0.0.1:8000",
        "http://127.8.9.10",
        "http://localhost:8000",
        "http://LOCALHOST",
        "http://[::1]:8000",
        "https://posthog.example.com",
        "https://eu.i.posthog.com",
    ] {
        let warnings = build_warnings(host);
        assert!(warnings.is_empty(), "{host}: {warnings:?}");
    }
}
