//! The process-wide client (`posthog_tower::init` / `global`), over real HTTP to
//! `MockPostHog`. A binary of its own: the handle is process-wide.

#[path = "../support/mod.rs"]
mod support;

use posthog_tower::Event;
use serde_json::Value;

use support::*;

#[tokio::test]
async fn the_global_handle_is_the_same_client_as_the_explicit_one() {
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
