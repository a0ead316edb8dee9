//! The process-wide client (`posthog_tower::init` / `global`), over real HTTP to
//! `MockPostHog`. A binary of its own: the handle is process-wide.

#[path = "../support/mod.rs"]
mod support;

use posthog_tower::Event;
use serde_json::Value;

use support::*;

/// Held by every test that sets or reads the process-wide client: one at a time.
static GLOBAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test]
async fn the_global_handle_is_the_same_client_as_the_explicit_one() {
    let _one_at_a_time = GLOBAL.lock().await;
    assert!(posthog_tower::global().is_none(), "nothing until init");
    let mock = start_mock().await;
    let posthog = builder(&mock).build().expect("client");
    assert!(posthog_tower::init(posthog.clone()).is_none());

    posthog_tower::global()
        .expect("set")
        .capture(Event::new("through the global handle", "user-1"))
        .expect("queued");
    posthog
        .capture(Event::new("through the explicit handle", "user-1"))
        .expect("queued");
    // One client, one queue: flushing either delivers both.
    let report = posthog_tower::global().expect("set").flush().await;
    assert_eq!(report.delivered, 2, "{report:?}");
    let names: Vec<Value> = mock.events().iter().map(|e| e["event"].clone()).collect();
    assert_eq!(
        names,
        ["through the global handle", "through the explicit handle"]
    );
    assert_eq!(posthog.stats().delivered, 2);

    // Replacing returns the previous client; taking leaves none.
    let other = builder(&mock).disabled(true).build().expect("client");
    let previous = posthog_tower::init(other).expect("the first client");
    assert!(!previous.is_disabled());
    assert!(posthog_tower::global().expect("set").is_disabled());
    assert!(posthog_tower::take_global().is_some());
    assert!(posthog_tower::global().is_none());
}

/// Records the level and target of every event the crate logs.
#[derive(Clone, Default)]
struct Recorder(std::sync::Arc<std::sync::Mutex<Vec<(tracing::Level, String, String)>>>);

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Recorder {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        struct Message(String);
        impl tracing::field::Visit for Message {
            fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
                if field.name() == "message" {
                    self.0 = format!("{value:?}");
                }
            }
        }
        let mut message = Message(String::new());
        event.record(&mut message);
        let meta = event.metadata();
        self.0
            .lock()
            .unwrap()
            .push((*meta.level(), meta.target().to_owned(), message.0));
    }
}

#[test]
fn the_debug_switch_raises_the_crates_diagnostics_to_info() {
    use tracing_subscriber::layer::SubscriberExt;

    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    let mock = runtime.block_on(start_mock());
    let recorder = Recorder::default();
    // Global: the batch is sent on the worker's thread. (The switch is process-wide too.)
    tracing::subscriber::set_global_default(tracing_subscriber::registry().with(recorder.clone()))
        .expect("the only subscriber of this binary");
    let sent = |recorder: &Recorder| {
        recorder
            .0
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, _, message)| message.contains("sending batch"))
            .map(|(level, target, _)| (*level, target.clone()))
            .collect::<Vec<_>>()
    };
    let run = |debug: bool| {
        let posthog = builder(&mock)
            .debug(debug)
            .build_with_own_runtime()
            .expect("client");
        posthog.capture(Event::new("e", "u")).expect("queued");
        posthog.flush_blocking();
    };
    run(false);
    let before = sent(&recorder);
    assert!(!before.is_empty(), "the batch was logged");
    assert!(
        before
            .iter()
            .all(|(level, target)| *level == tracing::Level::DEBUG
                && target.starts_with("posthog_tower::capture")),
        "{before:?}"
    );
    recorder.0.lock().unwrap().clear();
    run(true);
    let after = sent(&recorder);
    assert!(!after.is_empty(), "the batch was logged");
    assert!(
        after
            .iter()
            .all(|(level, target)| *level == tracing::Level::INFO
                && target == "posthog_tower::debug"),
        "{after:?}"
    );
}

/// Panics on a thread of their own (not `main`: the hook would wait for delivery), caught.
fn panic_on_a_thread(message: &'static str) {
    let outcome = std::thread::Builder::new()
        .name("worker".into())
        .spawn(move || panic!("{message}"))
        .expect("a thread")
        .join();
    assert!(outcome.is_err(), "it panicked");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_global_panic_hook_captures_through_whichever_client_is_set() {
    let _one_at_a_time = GLOBAL.lock().await;
    let mock = start_mock().await;
    posthog_tower::capture_panics();
    posthog_tower::capture_panics(); // installed once: no panic is captured twice

    // No client yet: counted, not captured.
    let missed = posthog_tower::missed_without_global();
    panic_on_a_thread("before init");
    assert_eq!(posthog_tower::missed_without_global(), missed + 1);

    let posthog = builder(&mock).build().expect("client");
    posthog_tower::init(posthog.clone());
    panic_on_a_thread("after init");
    posthog
        .capture(Event::new("through the explicit handle", "user-1"))
        .expect("queued");
    let report = posthog.flush().await;
    assert_eq!(report.delivered, 2, "{report:?}");
    let events = mock.events();
    let exceptions: Vec<&Value> = events
        .iter()
        .filter(|e| e["event"] == "$exception")
        .collect();
    assert_eq!(exceptions.len(), 1, "{events:#?}");
    let entry = &exceptions[0]["properties"]["$exception_list"][0];
    assert_eq!(entry["value"], "after init");
    assert_eq!(entry["mechanism"]["type"], "panic");
    assert!(events
        .iter()
        .any(|e| e["event"] == "through the explicit handle"));
    // One client: its counters have both.
    assert_eq!(posthog.stats().delivered, 2);
    assert_eq!(posthog_tower::missed_without_global(), missed + 1);
    posthog_tower::take_global();
}

#[tokio::test]
async fn the_global_tracing_layer_captures_through_whichever_client_is_set() {
    use posthog_tower::integrations::tracing::PostHogTracingLayer;
    use tracing_subscriber::layer::SubscriberExt;

    let _one_at_a_time = GLOBAL.lock().await;
    let mock = start_mock().await;
    let subscriber = tracing_subscriber::registry()
        .with(PostHogTracingLayer::global().capture_events(|meta| meta.target() == "audit"));
    let dispatch = tracing::Dispatch::new(subscriber);
    let log = |message: &'static str| {
        tracing::dispatcher::with_default(&dispatch, || {
            tracing::error!(target: "billing", "payment failed {message}");
            tracing::info!(target: "audit", who = "ada", "export downloaded");
            tracing::info!(target: "other", "not chosen");
        })
    };

    // No client yet: the two events it would capture are counted.
    let missed = posthog_tower::missed_without_global();
    log("before init");
    assert_eq!(posthog_tower::missed_without_global(), missed + 2);

    let posthog = builder(&mock).build().expect("client");
    posthog_tower::init(posthog.clone());
    log("after init");
    posthog
        .capture(Event::new("through the explicit handle", "user-1"))
        .expect("queued");
    let report = posthog.flush().await;
    assert_eq!(report.delivered, 3, "{report:?}");
    let events = mock.events();
    let names: Vec<&str> = events
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "$exception",
            "export downloaded",
            "through the explicit handle"
        ]
    );
    assert_eq!(
        events[0]["properties"]["$exception_list"][0]["value"],
        "payment failed after init"
    );
    assert_eq!(events[1]["properties"]["who"], "ada");
    assert_eq!(posthog_tower::missed_without_global(), missed + 2);

    // Taken away again: counted again, the client gets nothing more.
    posthog_tower::take_global();
    log("after take");
    assert_eq!(posthog_tower::missed_without_global(), missed + 4);
    assert_eq!(posthog.flush().await.delivered, 0);
}
