//! Error tracking under process-wide settings, over real HTTP to `MockPostHog`. A binary of its
//! own: the in-app crates named on the builder hold for the whole process. The tests take
//! turns (`serial`).

#[path = "../support/mod.rs"]
mod support;

use std::sync::{Mutex, MutexGuard, PoisonError};

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
