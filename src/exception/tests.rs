use std::fmt;

use super::*;
#[cfg(all(feature = "error-tracking", any(feature = "anyhow", feature = "eyre")))]
use super::{backtrace_text, stack};

#[derive(Debug)]
struct Outer(Middle);
#[derive(Debug)]
struct Middle(std::io::Error);

impl fmt::Display for Outer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("request failed")
    }
}
impl StdError for Outer {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        Some(&self.0)
    }
}
impl fmt::Display for Middle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("query failed")
    }
}
impl StdError for Middle {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        Some(&self.0)
    }
}

fn list(event: &Event) -> Vec<Value> {
    match event.properties().get("$exception_list") {
        Some(Value::Array(list)) => list,
        other => panic!("no list: {other:?}"),
    }
}

#[test]
fn a_chain_is_listed_outermost_first_and_linked() {
    let error = Outer(Middle(std::io::Error::other("connection refused")));
    let event = Exception::new(&error).into_event();
    assert_eq!(event.name(), "$exception");
    let list = list(&event);
    assert_eq!(list.len(), 3);
    assert_eq!(list[0]["type"], "posthog_tower::exception::tests::Outer");
    assert_eq!(list[1]["type"], "Error");
    let values: Vec<&Value> = list.iter().map(|e| &e["value"]).collect();
    assert_eq!(
        values,
        ["request failed", "query failed", "connection refused"]
    );
    assert_eq!(
        list[0]["mechanism"],
        json!({"type": "generic", "handled": true, "synthetic": false, "exception_id": 0})
    );
    assert_eq!(
        list[2]["mechanism"],
        json!({"type": "chained", "handled": true, "synthetic": false, "exception_id": 2, "parent_id": 1})
    );
    assert!(list[1].get("stacktrace").is_none(), "only the first entry");
    assert_eq!(
        event.properties().get("$exception_level"),
        Some(json!("error"))
    );
}

#[test]
fn a_single_error_has_no_ids_and_options_are_written() {
    let error = std::io::Error::other("disk full");
    let event = Exception::without_stack(&error)
        .level(Level::Warning)
        .handled(false)
        .fingerprint("disk")
        .distinct_id("user-1")
        .property("volume", "/data")
        .into_event();
    assert_eq!(event.distinct_id(), Some("user-1"));
    let p = event.properties();
    assert_eq!(p.get("$exception_level"), Some(json!("warning")));
    assert_eq!(p.get("$exception_fingerprint"), Some(json!("disk")));
    assert_eq!(p.get("volume"), Some(json!("/data")));
    assert!(p.get("$debug_images").is_none());
    let list = list(&event);
    assert_eq!(
        list[0]["mechanism"],
        json!({"type": "generic", "handled": false, "synthetic": false})
    );
    assert!(list[0].get("stacktrace").is_none());
}

#[test]
fn long_cyclic_empty_and_panicking_errors_are_bounded() {
    #[derive(Debug)]
    struct Cycle;
    impl fmt::Display for Cycle {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(&"x".repeat(MAX_VALUE_CHARS + 10))
        }
    }
    impl StdError for Cycle {
        fn source(&self) -> Option<&(dyn StdError + 'static)> {
            Some(self)
        }
    }
    let list_ = list(&Exception::without_stack(&Cycle).into_event());
    assert_eq!(list_.len(), MAX_CHAIN);
    assert_eq!(
        list_[0]["value"].as_str().map(|v| v.chars().count()),
        Some(MAX_VALUE_CHARS)
    );

    #[derive(Debug)]
    struct Hostile;
    impl fmt::Display for Hostile {
        fn fmt(&self, _: &mut fmt::Formatter<'_>) -> fmt::Result {
            panic!("Display panics")
        }
    }
    impl StdError for Hostile {}
    let list_ = list(&Exception::new(&Hostile).into_event());
    assert!(list_[0]["value"].as_str().unwrap().contains("panicked"));

    #[derive(Debug)]
    struct Empty;
    impl fmt::Display for Empty {
        fn fmt(&self, _: &mut fmt::Formatter<'_>) -> fmt::Result {
            Ok(())
        }
    }
    impl StdError for Empty {}
    assert_eq!(
        list(&Exception::new(&Empty).into_event())[0]["value"],
        "Error"
    );
}

#[test]
fn type_names_are_simplified() {
    assert_eq!(
        simple_type_name("&my_app::ApiError<u8>"),
        "my_app::ApiError"
    );
    assert_eq!(simple_type_name("dyn core::error::Error"), "Error");
    assert_eq!(
        simple_type_name("std::io::error::Error"),
        "std::io::error::Error"
    );
    // posthog-rs 0.30 sends `core::error::Error + core::marker::Send + core::marker::Sync`.
    assert_eq!(
        simple_type_name(type_name::<dyn StdError + Send + Sync>()),
        "Error"
    );
    let boxed: Box<dyn StdError + Send + Sync> = "oops".into();
    let list_ = list(&Exception::without_stack(&*boxed).into_event());
    assert_eq!(list_[0]["value"], "oops");
    assert_eq!(list_[0]["type"], "Error");
}

/// The stack trace starts at the caller (no frame of the capture itself), ends with the
/// outermost frame first, and marks this crate's test function in-app... except that this
/// crate is `posthog_tower`, whose frames are library frames: the integration tests check
/// in-app frames from a user's crate.
#[cfg(feature = "error-tracking")]
#[test]
fn the_stack_trace_starts_at_the_caller() {
    let error = std::io::Error::other("e");
    let event = Exception::new(&error).into_event();
    let list = list(&event);
    let frames = list[0]["stacktrace"]["frames"]
        .as_array()
        .expect("frames")
        .clone();
    assert!(!frames.is_empty() && frames.len() <= MAX_FRAMES);
    let last = frames.last().unwrap();
    assert!(
        last["function"]
            .as_str()
            .is_some_and(|f| f.contains("the_stack_trace_starts_at_the_caller")),
        "{last}"
    );
    for frame in &frames {
        assert_eq!(frame["lang"], "rust");
        assert!(frame["instruction_addr"]
            .as_str()
            .unwrap()
            .starts_with("0x"));
    }
    let images = event
        .properties()
        .get("$debug_images")
        .expect("debug images");
    assert!(images.as_array().is_some_and(|i| !i.is_empty()));
}

#[test]
fn causes_follow_the_entry_within_the_chain_bound() {
    let error = Outer(Middle(std::io::Error::other("connection refused")));
    let causes = Causes::of(&error);
    assert_eq!(causes.message(), "request failed");
    let event = Exception::message_only("my_app::orders", "could not save")
        .caused_by(causes)
        .into_event();
    let list = list(&event);
    let shape: Vec<(&Value, &Value)> = list.iter().map(|e| (&e["type"], &e["value"])).collect();
    assert_eq!(
        shape,
        [
            (&json!("my_app::orders"), &json!("could not save")),
            (&json!("Error"), &json!("request failed")),
            (&json!("Error"), &json!("query failed")),
            (&json!("Error"), &json!("connection refused")),
        ]
    );
    assert_eq!(list[3]["mechanism"]["parent_id"], 2);

    let sources = Causes::of(&error).sources();
    assert_eq!(sources.message(), "query failed");
    let mut long = Exception::message_only("T", "m");
    for _ in 0..MAX_CHAIN {
        long = long.caused_by(Causes::of(&error));
    }
    assert_eq!(list_len(long.into_event()), MAX_CHAIN);
}

fn list_len(event: Event) -> usize {
    list(&event).len()
}

/// The frames of a standard library backtrace, read from its text on this toolchain: from the
/// function that took it, with instruction and image addresses and the images behind them.
#[cfg(all(feature = "error-tracking", any(feature = "anyhow", feature = "eyre")))]
#[test]
fn a_std_backtrace_is_read_with_its_addresses() {
    #[inline(never)]
    fn arise() -> std::backtrace::Backtrace {
        std::backtrace::Backtrace::force_capture()
    }
    let text = format!("{:#}", arise());
    let frames = backtrace_text::parse(&text).unwrap_or_else(|| panic!("not read: {text}"));
    let stack = stack::Stack::from_frames(frames);
    let (frames, images) = stack.to_json(&InAppCrates::default());
    let frames = frames.expect("frames");
    let frames = frames.as_array().expect("an array");
    let last = frames.last().expect("a frame");
    assert!(
        last["function"]
            .as_str()
            .is_some_and(|f| f.ends_with("::arise")),
        "{last}"
    );
    assert!(last["filename"]
        .as_str()
        .is_some_and(|f| f.ends_with("tests.rs")));
    assert!(last["instruction_addr"]
        .as_str()
        .is_some_and(|a| a.starts_with("0x")));
    assert!(last.get("image_addr").is_some());
    assert!(last.get("symbol_addr").is_none(), "the text has none");
    assert!(!images.is_empty());
}

/// An exception's own in-app crates: included, the test's frame is in-app (this crate's
/// frames are otherwise a library's), excluded it is not; std's frames stay out.
#[cfg(feature = "error-tracking")]
#[test]
fn an_exception_names_its_in_app_crates() {
    let error = std::io::Error::other("e");
    let frames = |exception: Exception| -> Vec<Value> {
        let event = exception.into_event();
        list(&event)[0]["stacktrace"]["frames"]
            .as_array()
            .expect("frames")
            .clone()
    };
    let included = frames(Exception::new(&error).in_app_include(["posthog_tower"]));
    let last = included.last().expect("a frame");
    assert!(
        last["function"]
            .as_str()
            .is_some_and(|f| f.ends_with("an_exception_names_its_in_app_crates")),
        "{last}"
    );
    assert_eq!(last["in_app"], true);
    for frame in &included {
        if frame["function"]
            .as_str()
            .is_some_and(|f| f.starts_with("std::"))
        {
            assert_eq!(frame["in_app"], false, "{frame}");
        }
    }
    let excluded = frames(
        Exception::new(&error)
            .in_app_include(["posthog_tower"])
            .in_app_exclude(["posthog_tower::exception::tests"]),
    );
    assert_eq!(excluded.last().expect("a frame")["in_app"], false);
}
