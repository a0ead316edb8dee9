//! A panic that ends the process (on the main thread) waits for its `$exception` to be
//! delivered, at most 2 s. A binary without the test harness, which runs itself as a child
//! process: the parent starts `MockPostHog`, the child panics on its main thread, and the
//! parent checks what arrived and how long the child took to die.
//!
//! `cargo test --test panic_exit` runs the parent; the child is this binary again with
//! `POSTHOG_PANIC_CHILD` set to the mock's URL.

use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use posthog_tower::{
    testing::{MockPostHog, MockResponse},
    PostHog,
};

const CHILD: &str = "POSTHOG_PANIC_CHILD";

fn main() {
    match std::env::var(CHILD) {
        Ok(url) => child(&url),
        Err(_) => parent(),
    }
}

/// Builds a client with the panic hook, then panics on the main thread while the runtime's
/// workers (which run the client's worker) are still alive.
fn child(url: &str) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    let _posthog = runtime.block_on(async {
        PostHog::builder("phc_panic_exit")
            .host(url)
            .capture_panics(true)
            .build()
            .expect("a client")
    });
    let _enter = runtime.enter();
    panic!("the configuration is unreadable");
}

fn parent() {
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    let mock = runtime
        .block_on(MockPostHog::start())
        .expect("the mock starts");

    // PostHog answers at once: the event is delivered before the process dies.
    let (status, took) = run_child(&mock.url());
    assert!(!status.success(), "the child panicked");
    let exceptions: Vec<_> = mock
        .events()
        .into_iter()
        .filter(|e| e["event"] == "$exception")
        .collect();
    assert_eq!(
        exceptions.len(),
        1,
        "delivered before the end: {exceptions:?}"
    );
    let entry = &exceptions[0]["properties"]["$exception_list"][0];
    assert_eq!(entry["value"], "the configuration is unreadable");
    assert_eq!(exceptions[0]["properties"]["$exception_level"], "fatal");
    eprintln!("delivered; the child ended after {took:?}");

    // PostHog answers after 10 s: the process still ends after about 2 s.
    mock.clear();
    mock.set_default(
        "/batch/",
        MockResponse::status(200).delay(Duration::from_secs(10)),
    );
    let (status, took) = run_child(&mock.url());
    assert!(!status.success(), "the child panicked");
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(8),
        "waited at most 2 s for the delivery: the child ended after {took:?}"
    );
    assert_eq!(
        mock.requests_to("/batch/").len(),
        1,
        "the event was on its way"
    );
    eprintln!("bounded: the child ended after {took:?}");
}

fn run_child(url: &str) -> (std::process::ExitStatus, Duration) {
    let started = Instant::now();
    let status = Command::new(std::env::current_exe().expect("this binary"))
        .env(CHILD, url)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("the child runs");
    (status, started.elapsed())
}
