//! The system properties on every event, over real HTTP: `$is_server`, `$os`, `$os_version`,
//! `$release_id` and `$app_version`, with posthog-python's names, values and precedence.

use posthog_tower::{Event, VERSION};
use serde_json::json;

use crate::support::*;

/// `$os` as posthog-python names this machine's operating system.
fn expected_os() -> &'static str {
    match std::env::consts::OS {
        "linux" => "Linux",
        "macos" => "Mac OS X",
        "windows" => "Windows",
        other => panic!("no expectation for {other}"),
    }
}

/// The bytes an entry `"key":value` takes in the event's JSON.
fn entry(key: &str, value: serde_json::Value) -> String {
    format!("{}:{}", json!(key), value)
}

#[tokio::test(start_paused = true)]
async fn every_event_says_who_sent_it() {
    let mock = start_mock().await;
    let ph = builder(&mock)
        .release_id("rel-2026-12")
        .app_version("3.1.4")
        .build()
        .unwrap();
    ph.capture(Event::new("signed up", "user-1").property("plan", "pro"))
        .unwrap();
    ph.set("user-1", json!({"email": "ada@example.com"}))
        .unwrap();
    assert_eq!(ph.flush().await.delivered, 2);

    let reqs = mock.requests_to("/batch");
    assert_eq!(reqs.len(), 1);
    let raw = String::from_utf8(raw_events(&reqs[0]).to_vec()).unwrap();
    let mut expected = vec![
        entry("$lib", json!("posthog-tower")),
        entry("$lib_version", json!(VERSION)),
        entry("$os", json!(expected_os())),
        entry("$is_server", json!(true)),
        entry("$release_id", json!("rel-2026-12")),
        entry("$app_version", json!("3.1.4")),
    ];
    if cfg!(target_os = "linux") {
        let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
        expected.push(entry("$os_version", json!(release.trim())));
    }
    for entry in &expected {
        assert_eq!(raw.matches(entry.as_str()).count(), 2, "{entry} in {raw}");
    }
    for key in ["$is_server", "$os", "$os_version", "$release_id"] {
        assert_eq!(
            raw.matches(&format!("\"{key}\":")).count(),
            2,
            "{key} once per event: {raw}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn is_server_can_be_turned_off_and_the_defaults_yield_to_the_event() {
    let mock = start_mock().await;
    let ph = builder(&mock)
        .is_server(false)
        .app_version("1.0.0")
        .build()
        .unwrap();
    ph.capture(Event::new("plain", "u")).unwrap();
    ph.capture(
        Event::new("own", "u")
            .property("$app_version", "2.0.0-beta")
            .property("$os", "Plan 9"),
    )
    .unwrap();
    assert_eq!(ph.flush().await.delivered, 2);
    let events = mock.events();
    assert_eq!(events.len(), 2);
    let (plain, own) = (&events[0]["properties"], &events[1]["properties"]);
    assert!(plain.get("$is_server").is_none(), "{plain}");
    assert!(plain.get("$release_id").is_none() || std::env::var("POSTHOG_RELEASE_ID").is_ok());
    assert_eq!(plain["$app_version"], "1.0.0");
    assert_eq!(own["$app_version"], "2.0.0-beta", "the event's own wins");
    assert_eq!(
        own["$os"],
        expected_os(),
        "the library's $os wins, as in posthog-python"
    );
}

#[tokio::test(start_paused = true)]
async fn super_properties_cannot_unset_is_server() {
    let mock = start_mock().await;
    let ph = builder(&mock)
        .super_property("$is_server", false)
        .super_property("$app_version", "super")
        .app_version("builder")
        .build()
        .unwrap();
    ph.capture(Event::new("e", "u").property("$is_server", false))
        .unwrap();
    assert_eq!(ph.flush().await.delivered, 1);
    let reqs = mock.requests_to("/batch");
    let raw = String::from_utf8(raw_events(&reqs[0]).to_vec()).unwrap();
    assert_eq!(raw.matches("\"$is_server\"").count(), 1, "{raw}");
    assert_eq!(raw.matches("\"$app_version\"").count(), 1, "{raw}");
    let p = &mock.events()[0]["properties"];
    assert_eq!(p["$is_server"], true);
    assert_eq!(p["$app_version"], "super");
}
