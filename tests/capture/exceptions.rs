//! `$exception` events over real HTTP to `MockPostHog`: an error chain in order, the stack at
//! the call with the application's frames in-app, the images behind `$debug_images`, the
//! caller from the request context, `anyhow` and `eyre` chains, and the shape posthog-rs
//! 0.30.0 gives the same chain (`tests/fixtures/posthog_rs_exception.json`).

use std::{collections::BTreeSet, error::Error as StdError, fmt};

use posthog_tower::{context::RequestContext, exception::Exception, Event};
use serde_json::Value;

use crate::support::*;

#[derive(Debug)]
struct ApiError(DbError);

#[derive(Debug)]
struct DbError(std::io::Error);

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("request failed")
    }
}

impl StdError for ApiError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        Some(&self.0)
    }
}

impl fmt::Display for DbError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("database query failed")
    }
}

impl StdError for DbError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        Some(&self.0)
    }
}

fn error() -> ApiError {
    ApiError(DbError(std::io::Error::new(
        std::io::ErrorKind::ConnectionRefused,
        "connection refused",
    )))
}

/// A function of this (the application's) crate that captures, so its frame is on the stack.
#[inline(never)]
fn handle_request(posthog: &posthog_tower::PostHog) -> posthog_tower::Uuid {
    posthog.capture_exception(&error()).expect("captured")
}

#[tokio::test]
async fn a_three_level_chain_arrives_in_order_with_the_stack_at_the_call() {
    let mock = start_mock().await;
    let ph = builder(&mock).build().unwrap();
    let uuid = handle_request(&ph);
    ph.flush().await;
    let events = mock.events();
    let event = find_event(&events, uuid);
    assert_eq!(event["event"], "$exception");
    let p = &event["properties"];
    assert_eq!(p["$exception_level"], "error");
    assert_eq!(
        p["$process_person_profile"], false,
        "personless without a caller"
    );
    let list = p["$exception_list"].as_array().expect("a list");
    let shape: Vec<(&str, &str, &str)> = list
        .iter()
        .map(|e| {
            (
                e["type"].as_str().unwrap(),
                e["value"].as_str().unwrap(),
                e["mechanism"]["type"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        shape,
        [
            ("capture::exceptions::ApiError", "request failed", "generic"),
            ("Error", "database query failed", "chained"),
            ("Error", "connection refused", "chained"),
        ]
    );
    assert_eq!(list[2]["mechanism"]["parent_id"], 1);

    let frames = list[0]["stacktrace"]["frames"].as_array().expect("frames");
    let function = |f: &Value| f["function"].as_str().unwrap_or_default().to_owned();
    // The call site is the last frame: the capture's own frames are left out.
    let last = frames.last().unwrap();
    assert!(function(last).contains("handle_request"), "{last}");
    assert_eq!(last["in_app"], true, "the application's frame is in-app");
    for frame in frames {
        let name = function(frame);
        let library = ["std::", "core::", "tokio::", "posthog_tower::", "alloc::"]
            .iter()
            .any(|c| name.trim_start_matches('<').starts_with(c));
        if library {
            assert_eq!(frame["in_app"], false, "{frame}");
        }
        assert_eq!(frame["platform"], "native");
        assert!(frame["instruction_addr"]
            .as_str()
            .unwrap()
            .starts_with("0x"));
    }
    // Every frame's image is described in `$debug_images`.
    let images = p["$debug_images"].as_array().expect("debug images");
    let bases: Vec<&str> = images
        .iter()
        .map(|i| i["image_addr"].as_str().unwrap())
        .collect();
    for frame in frames {
        if let Some(image) = frame["image_addr"].as_str() {
            assert!(bases.contains(&image), "{image} not in {bases:?}");
        }
    }
    assert!(images
        .iter()
        .all(|i| i["debug_id"].as_str().is_some_and(|d| d.len() >= 36)));
}

#[tokio::test]
async fn an_exception_in_a_request_context_is_the_callers() {
    let mock = start_mock().await;
    let ph = builder(&mock).build().unwrap();
    let ctx = RequestContext::new(Some("user-9".into()));
    let uuid = ctx
        .scope(async { ph.capture_exception(&error()).unwrap() })
        .await;
    let other = ph
        .capture_exception_with(
            Exception::without_stack(&error())
                .distinct_id("user-7")
                .fingerprint("db-down"),
        )
        .unwrap();
    ph.capture(Event::new("after", "user-9")).unwrap();
    ph.flush().await;
    let events = mock.events();
    let event = find_event(&events, uuid);
    assert_eq!(event["distinct_id"], "user-9");
    assert!(event["properties"].get("$process_person_profile").is_none());
    let other = find_event(&events, other);
    assert_eq!(other["distinct_id"], "user-7");
    assert_eq!(other["properties"]["$exception_fingerprint"], "db-down");
    assert!(other["properties"]["$exception_list"][0]
        .get("stacktrace")
        .is_none());
}

/// The `type`, `value` and `mechanism.type` of each entry of `$exception_list`.
fn entries(list: &[Value]) -> Vec<(String, String, String)> {
    list.iter()
        .map(|e| {
            let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
            (
                text(&e["type"]),
                text(&e["value"]),
                text(&e["mechanism"]["type"]),
            )
        })
        .collect()
}

/// Where `anyhow` and `eyre` errors arise here: a three-level chain.
#[inline(never)]
fn read_config() -> Result<Vec<u8>, std::io::Error> {
    Err(std::io::Error::new(
        std::io::ErrorKind::NotFound,
        "no such file",
    ))
}

#[inline(never)]
fn load_config_anyhow() -> anyhow::Result<Vec<u8>> {
    use anyhow::Context;
    read_config().context("reading config.toml")
}

#[inline(never)]
fn start_anyhow() -> anyhow::Result<Vec<u8>> {
    use anyhow::Context;
    load_config_anyhow().context("starting the server")
}

#[inline(never)]
fn load_config_eyre() -> eyre::Result<Vec<u8>> {
    use eyre::WrapErr;
    read_config().wrap_err("reading config.toml")
}

#[inline(never)]
fn start_eyre() -> eyre::Result<Vec<u8>> {
    use eyre::WrapErr;
    load_config_eyre().wrap_err("starting the server")
}

/// The application's function that captures.
#[inline(never)]
fn report_anyhow(posthog: &posthog_tower::PostHog, error: &anyhow::Error) -> posthog_tower::Uuid {
    posthog.capture_anyhow(error).expect("captured")
}

#[inline(never)]
fn report_eyre(posthog: &posthog_tower::PostHog, report: &eyre::Report) -> posthog_tower::Uuid {
    posthog.capture_eyre(report).expect("captured")
}

/// The function of the last (innermost) frame of an entry's stack trace.
fn innermost_function(entry: &Value) -> String {
    let frames = entry["stacktrace"]["frames"].as_array().expect("frames");
    let last = frames.last().expect("a frame");
    assert_eq!(last["in_app"], true, "{last}");
    last["function"].as_str().unwrap_or_default().to_owned()
}

#[tokio::test]
async fn an_anyhow_context_chain_arrives_as_three_entries_in_order() {
    let mock = start_mock().await;
    let ph = builder(&mock).build().unwrap();
    let error = start_anyhow().unwrap_err();
    let uuid = report_anyhow(&ph, &error);
    ph.flush().await;
    let event = find_event(&mock.events(), uuid);
    let list = event["properties"]["$exception_list"]
        .as_array()
        .expect("a list")
        .clone();
    assert_eq!(
        entries(&list),
        [
            (
                "anyhow::Error".into(),
                "starting the server".into(),
                "generic".into()
            ),
            (
                "Error".into(),
                "reading config.toml".into(),
                "chained".into()
            ),
            ("Error".into(), "no such file".into(), "chained".into()),
        ]
    );
    assert_eq!(list[2]["mechanism"]["parent_id"], 1);
    // Where the error arose when anyhow captured a backtrace (RUST_BACKTRACE or
    // RUST_LIB_BACKTRACE set for this run; `tests/error_tracking` sets it), else at the call.
    let innermost = innermost_function(&list[0]);
    if error.backtrace().status() == std::backtrace::BacktraceStatus::Captured {
        assert!(innermost.ends_with("load_config_anyhow"), "{innermost}");
    } else {
        assert!(innermost.ends_with("report_anyhow"), "{innermost}");
    }
}

#[tokio::test]
async fn an_eyre_chain_arrives_as_three_entries_in_order() {
    let mock = start_mock().await;
    let ph = builder(&mock).build().unwrap();
    let report = start_eyre().unwrap_err();
    let uuid = report_eyre(&ph, &report);
    ph.flush().await;
    let event = find_event(&mock.events(), uuid);
    let list = event["properties"]["$exception_list"]
        .as_array()
        .expect("a list")
        .clone();
    assert_eq!(
        entries(&list),
        [
            (
                "eyre::Report".into(),
                "starting the server".into(),
                "generic".into()
            ),
            (
                "Error".into(),
                "reading config.toml".into(),
                "chained".into()
            ),
            ("Error".into(), "no such file".into(), "chained".into()),
        ]
    );
    let innermost = innermost_function(&list[0]);
    if format!("{report:?}").contains("Stack backtrace:") {
        assert!(innermost.ends_with("load_config_eyre"), "{innermost}");
    } else {
        assert!(innermost.ends_with("report_eyre"), "{innermost}");
    }
}

/// Our `$exception` for the chain `tools/posthog-rs-fixture` gives posthog-rs 0.30.0 (an
/// `ApiError` whose sources are a `DbError` and an `io::Error`, captured by a function of the
/// application) has the shape of posthog-rs's: the same entries in the same order with the
/// same keys, the same mechanisms, a `raw` stack trace on the first entry only whose frames
/// have posthog-rs's keys, and `$debug_images` entries with posthog-rs's keys. Addresses,
/// paths and the frames themselves differ (another binary, another stack).
///
/// The one deliberate difference is in-app: posthog-rs marks glibc's
/// `__libc_start_call_main` and `__libc_start_main_impl` (process start-up, with a source file)
/// in-app; we do not. `in_app` values are compared only for the application's frame.
#[tokio::test]
async fn the_shape_is_posthog_rs_s() {
    let fixture: Value =
        serde_json::from_str(include_str!("../fixtures/posthog_rs_exception.json")).unwrap();
    let mock = start_mock().await;
    let ph = builder(&mock).build().unwrap();
    let uuid = handle_request(&ph);
    ph.flush().await;
    let ours = find_event(&mock.events(), uuid)["properties"].clone();

    for key in ["$exception_level", "$process_person_profile"] {
        assert_eq!(ours[key], fixture[key], "{key}");
    }
    let theirs_list = fixture["$exception_list"].as_array().unwrap();
    let ours_list = ours["$exception_list"].as_array().unwrap();
    assert_eq!(ours_list.len(), theirs_list.len());
    for (i, (ours, theirs)) in ours_list.iter().zip(theirs_list).enumerate() {
        assert_eq!(keys(ours), keys(theirs), "entry {i}'s keys");
        // The first type is the captured error's path in each binary: the same type's.
        let last_segment = |v: &Value| v.as_str().unwrap().rsplit("::").next().unwrap().to_owned();
        assert_eq!(
            last_segment(&ours["type"]),
            last_segment(&theirs["type"]),
            "entry {i}"
        );
        if i > 0 {
            assert_eq!(ours["type"], theirs["type"], "entry {i}");
        }
        assert_eq!(ours["value"], theirs["value"], "entry {i}");
        assert_eq!(ours["mechanism"], theirs["mechanism"], "entry {i}");
    }

    let theirs_trace = &theirs_list[0]["stacktrace"];
    let ours_trace = &ours_list[0]["stacktrace"];
    assert_eq!(keys(ours_trace), keys(theirs_trace));
    assert_eq!(ours_trace["type"], theirs_trace["type"]);
    let frames = |trace: &Value| trace["frames"].as_array().unwrap().clone();
    let (ours_frames, theirs_frames) = (frames(ours_trace), frames(theirs_trace));
    // Every key set one of our frames has, posthog-rs's frames have too (theirs has more: its
    // stack starts at `_start`, whose frames have no file); the application's frame (the
    // last) has the same keys and is in-app in both.
    let shapes = |frames: &[Value]| frames.iter().map(keys).collect::<BTreeSet<_>>();
    let theirs_shapes = shapes(&theirs_frames);
    for shape in shapes(&ours_frames) {
        assert!(
            theirs_shapes.contains(&shape),
            "{shape:?} not in {theirs_shapes:?}"
        );
    }
    let (ours_last, theirs_last) = (ours_frames.last().unwrap(), theirs_frames.last().unwrap());
    assert_eq!(keys(ours_last), keys(theirs_last));
    assert!(ours_last["function"]
        .as_str()
        .unwrap()
        .ends_with("::handle_request"));
    assert!(theirs_last["function"]
        .as_str()
        .unwrap()
        .ends_with("::handle_request"));
    assert_eq!(ours_last["in_app"], theirs_last["in_app"]);

    let images = |p: &Value| {
        p["$debug_images"]
            .as_array()
            .unwrap()
            .iter()
            .map(keys)
            .collect::<BTreeSet<_>>()
    };
    assert_eq!(images(&ours), images(&fixture));
}

fn keys(value: &Value) -> Vec<String> {
    let mut keys: Vec<String> = value
        .as_object()
        .expect("an object")
        .keys()
        .cloned()
        .collect();
    keys.sort();
    keys
}

#[tokio::test]
async fn api_keys_never_leave_in_an_exception() {
    let mock = start_mock().await;
    let personal = "phx_personal_secret_key_123";
    let posthog = builder(&mock)
        .personal_api_key(personal)
        .build()
        .expect("client");
    // The definitions poll may fail against the mock: only the exception matters here.
    let error = std::io::Error::other(format!(
        "GET https://eu.i.posthog.com/decide/?token={KEY} failed (auth {personal})"
    ));
    let ctx = RequestContext::new(Some("user-1".into()))
        .with_current_url(format!("https://app.example/hook?key={KEY}"));
    let uuid = ctx
        .scope(async {
            posthog.capture_exception_with(
                Exception::without_stack(&error).property("detail", [format!("nested {KEY}")]),
            )
        })
        .await
        .expect("captured");
    // Other events are the application's own: left as they are.
    posthog
        .capture(Event::new("note", "user-1").property("text", KEY))
        .expect("captured");
    posthog.flush().await;

    let events = mock.events();
    let exception = find_event(&events, uuid);
    let text = exception.to_string();
    assert!(!text.contains(KEY) && !text.contains(personal), "{text}");
    let p = &exception["properties"];
    assert_eq!(
        p["$exception_list"][0]["value"],
        "GET https://eu.i.posthog.com/decide/?token=[redacted] failed (auth [redacted])"
    );
    assert_eq!(p["$current_url"], "https://app.example/hook?key=[redacted]");
    assert_eq!(p["detail"][0], "nested [redacted]");
    let note = events.iter().find(|e| e["event"] == "note").expect("note");
    assert_eq!(note["properties"]["text"], KEY);
}
