//! `$exception` events over real HTTP to `MockPostHog`: an error chain in order, the stack at
//! the call with the application's frames in-app, the images behind `$debug_images`, and the
//! caller from the request context.

use std::{error::Error as StdError, fmt};

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
