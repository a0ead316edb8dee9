//! The client in a program without tokio: its worker on a thread of its own, `flush` and
//! `shutdown` without `.await`. Plain `#[test]`s: no runtime around the client's calls (the
//! mock runs on a runtime of its own, on other threads).

use std::time::Duration;

use posthog_tower::{testing::MockPostHog, Event, PostHog};

use crate::support::KEY;

/// A mock on a multi-thread runtime that keeps serving while the test's thread blocks.
fn mock() -> (tokio::runtime::Runtime, MockPostHog) {
    let runtime = tokio::runtime::Runtime::new().expect("a runtime for the mock");
    let mock = runtime
        .block_on(MockPostHog::start())
        .expect("the mock starts");
    (runtime, mock)
}

#[test]
fn a_synchronous_program_captures_flushes_and_shuts_down() {
    let (_runtime, mock) = mock();
    assert!(
        tokio::runtime::Handle::try_current().is_err(),
        "no runtime here"
    );
    let posthog = PostHog::builder(KEY)
        .host(mock.url())
        .build_with_own_runtime()
        .expect("a client without a runtime");
    posthog
        .capture(Event::new("cli command run", "user-1").property("command", "sync"))
        .expect("queued");
    let report = posthog.flush_blocking();
    assert_eq!(report.delivered, 1, "{report:?}");
    assert_eq!(mock.events()[0]["event"], "cli command run");

    posthog
        .capture(Event::new("cli command finished", "user-1"))
        .expect("queued");
    let report = posthog.shutdown_blocking(Duration::from_secs(5));
    assert_eq!(report.delivered, 1, "{report:?}");
    assert_eq!(mock.events().len(), 2);
    assert!(
        posthog.capture(Event::new("late", "user-1")).is_err(),
        "shut down"
    );
}

#[test]
fn blocking_calls_work_from_inside_a_multi_thread_runtime_too() {
    let (runtime, mock) = mock();
    let posthog = PostHog::builder(KEY)
        .host(mock.url())
        .build_with_own_runtime()
        .expect("client");
    posthog
        .capture(Event::new("from async code", "user-2"))
        .expect("queued");
    // Inside a runtime, the wait runs on a thread of its own instead of panicking.
    let report = runtime.block_on(async { posthog.flush_blocking() });
    assert_eq!(report.delivered, 1, "{report:?}");
}
