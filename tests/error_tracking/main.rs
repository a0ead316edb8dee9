//! Error tracking under process-wide settings, over real HTTP to `MockPostHog`. A binary of its
//! own: the in-app crates named on the builder hold for the whole process, and the standard
//! library reads `RUST_LIB_BACKTRACE` once per process. The tests take turns (`serial`): one
//! sets an environment variable, which must not race another thread reading the environment.

#[path = "../support/mod.rs"]
mod support;

use std::{
    backtrace::BacktraceStatus,
    sync::{Mutex, MutexGuard, PoisonError},
};

use posthog_tower::{PostHog, Uuid};
use serde_json::Value;

use support::*;

fn serial() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL.lock().unwrap_or_else(PoisonError::into_inner)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime")
}

/// The frames of the first entry of an `$exception`, outermost first.
fn frames(event: &Value) -> Vec<Value> {
    event["properties"]["$exception_list"][0]["stacktrace"]["frames"]
        .as_array()
        .unwrap_or_else(|| panic!("no frames in {event}"))
        .clone()
}

fn function(frame: &Value) -> &str {
    frame["function"].as_str().unwrap_or_default()
}

#[inline(never)]
fn read_config() -> Result<Vec<u8>, std::io::Error> {
    Err(std::io::Error::new(
        std::io::ErrorKind::NotFound,
        "no such file",
    ))
}

/// Where the anyhow error arises.
#[inline(never)]
fn load_config_anyhow() -> anyhow::Result<Vec<u8>> {
    use anyhow::Context;
    read_config().context("reading config.toml")
}

/// Where the eyre report arises.
#[inline(never)]
fn load_config_eyre() -> eyre::Result<Vec<u8>> {
    use eyre::WrapErr;
    read_config().wrap_err("reading config.toml")
}

#[inline(never)]
fn report_anyhow(posthog: &PostHog, error: &anyhow::Error) -> Uuid {
    posthog.capture_anyhow(error).expect("captured")
}

#[inline(never)]
fn report_eyre(posthog: &PostHog, report: &eyre::Report) -> Uuid {
    posthog.capture_eyre(report).expect("captured")
}

/// With backtraces on, an anyhow error's stack is where it arose (with instruction and image
/// addresses, and the images in `$debug_images`), and an eyre report's too (from the text of
/// its default handler's backtrace: functions, files and lines, no addresses), not where they
/// were captured.
#[test]
fn anyhow_and_eyre_errors_carry_the_stack_where_they_arose() {
    let _serial = serial();
    // Before any backtrace of this process: the standard library reads it once.
    std::env::set_var("RUST_LIB_BACKTRACE", "1");
    runtime().block_on(async {
        let mock = start_mock().await;
        let ph = builder(&mock).build().unwrap();
        let error = load_config_anyhow().unwrap_err();
        assert_eq!(error.backtrace().status(), BacktraceStatus::Captured);
        let from_anyhow = report_anyhow(&ph, &error);
        let report = load_config_eyre().unwrap_err();
        assert!(format!("{report:?}").contains("Stack backtrace:"));
        let from_eyre = report_eyre(&ph, &report);
        ph.flush().await;
        let events = mock.events();

        let event = find_event(&events, from_anyhow);
        let list = &event["properties"]["$exception_list"];
        assert_eq!(list[0]["type"], "anyhow::Error");
        assert_eq!(list[0]["value"], "reading config.toml");
        assert_eq!(list[1]["value"], "no such file");
        let anyhow_frames = frames(&event);
        let last = anyhow_frames.last().unwrap();
        assert!(function(last).ends_with("::load_config_anyhow"), "{last}");
        assert_eq!(last["in_app"], true);
        assert!(last["filename"]
            .as_str()
            .is_some_and(|f| f.ends_with("main.rs")));
        assert!(!anyhow_frames
            .iter()
            .any(|f| function(f).contains("report_anyhow") || function(f).starts_with("anyhow::")));
        let images: Vec<&str> = event["properties"]["$debug_images"]
            .as_array()
            .expect("debug images")
            .iter()
            .map(|i| i["image_addr"].as_str().unwrap())
            .collect();
        for frame in &anyhow_frames {
            if let Some(image) = frame["image_addr"].as_str() {
                assert!(frame["instruction_addr"].is_string(), "{frame}");
                assert!(frame.get("symbol_addr").is_none(), "{frame}");
                assert!(images.contains(&image), "{image} not in {images:?}");
            }
        }
        assert!(last["instruction_addr"].is_string(), "{last}");

        let event = find_event(&events, from_eyre);
        assert_eq!(
            event["properties"]["$exception_list"][0]["type"],
            "eyre::Report"
        );
        let eyre_frames = frames(&event);
        let last = eyre_frames.last().unwrap();
        assert!(function(last).ends_with("::load_config_eyre"), "{last}");
        assert_eq!(last["in_app"], true);
        assert!(eyre_frames
            .iter()
            .all(|f| f.get("instruction_addr").is_none() && f["client_resolved"] == true));
        assert!(!eyre_frames
            .iter()
            .any(|f| function(f).contains("report_eyre") || function(f).starts_with("eyre::")));
        assert!(event["properties"].get("$debug_images").is_none());
    });
}

/// Code this application generated: excluded from its in-app frames.
mod generated {
    #[inline(never)]
    pub fn call<R>(f: impl FnOnce() -> R) -> R {
        let r = f();
        std::hint::black_box(r)
    }
}

#[inline(never)]
fn handle_request(posthog: &PostHog) -> Uuid {
    let error = std::io::Error::other("disk full");
    posthog.capture_exception(&error).expect("captured")
}

#[inline(never)]
fn checkout(cart: &[u32]) -> u32 {
    cart[std::hint::black_box(3)]
}

/// The builder's in-app crates hold for every exception of the process, captured or
/// autocaptured (a panic): the test crate's frames are in-app, std's are not, tokio's are
/// (included), and those of the excluded module are not.
#[test]
fn the_builders_in_app_crates_hold_for_every_exception() {
    let _serial = serial();
    runtime().block_on(async {
        let mock = start_mock().await;
        let ph = builder(&mock)
            .in_app_include(["tokio"])
            .in_app_exclude(["error_tracking::generated"])
            .capture_panics(true)
            .build()
            .unwrap();
        let captured = generated::call(|| handle_request(&ph));
        let task = tokio::spawn(async { generated::call(|| checkout(&[1, 2])) });
        assert!(task.await.unwrap_err().is_panic());
        ph.flush().await;
        let events = mock.events();
        let panic = events
            .iter()
            .find(|e| e["properties"]["$exception_list"][0]["type"] == "Panic")
            .expect("the panic's $exception");

        for (event, application) in [
            (
                &find_event(&events, captured),
                "error_tracking::handle_request",
            ),
            (panic, "error_tracking::checkout"),
        ] {
            let frames = frames(event);
            let in_app = |prefix: &str| -> Vec<bool> {
                frames
                    .iter()
                    .filter(|f| function(f).trim_start_matches('<').starts_with(prefix))
                    .map(|f| f["in_app"] == true)
                    .collect()
            };
            assert_eq!(in_app(application), [true], "{application}");
            assert_eq!(
                in_app("error_tracking::generated"),
                [false],
                "{application}"
            );
            let std = in_app("std::");
            assert!(!std.is_empty() && std.iter().all(|i| !i), "{application}");
            let tokio = in_app("tokio::");
            assert!(
                !tokio.is_empty() && tokio.iter().all(|i| *i),
                "{application}"
            );
        }
    });
}
