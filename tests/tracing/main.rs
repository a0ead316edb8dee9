//! `PostHogTracingLayer` over real HTTP to `MockPostHog`: `tracing` errors as `$exception`
//! events, chosen events as ordinary events, the request context's caller, the rate limit,
//! trace ids from `tracing-opentelemetry`, and no loop when a capture logs.
//!
//! Each test installs its subscriber for its own thread (`set_default`); the tests run on
//! tokio's current-thread runtime, so the client's worker and the mock log on that thread too
//! (and the layer ignores the crate's own logs). The one scenario that needs a global
//! subscriber runs in a child process ([`global_child`]).
//!
//! The test crate is named `tracing` (after its folder, as the other test binaries are), so
//! its events' default target is `tracing` and its frames are not in-app (the `tracing`
//! crate's name): the tests give targets of their own where it matters and read frames by
//! function name.

#[path = "../support/mod.rs"]
mod support;

use std::{error::Error as StdError, fmt, time::Duration};

use posthog_tower::{
    context::RequestContext, integrations::tracing::PostHogTracingLayer, CaptureError, ErrorReport,
    Event,
};
use serde_json::{json, Value};
use tracing::{dispatcher::DefaultGuard, Level};
use tracing_subscriber::layer::SubscriberExt;

use support::*;

/// Installs `layer` as this thread's subscriber until the guard is dropped.
fn install(layer: PostHogTracingLayer) -> DefaultGuard {
    tracing::subscriber::set_default(tracing_subscriber::registry().with(layer))
}

fn named<'a>(events: &'a [Value], name: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["event"] == name).collect()
}

/// `(type, value, mechanism type)` of each `$exception_list` entry.
fn entries(event: &Value) -> Vec<(String, String, String)> {
    event["properties"]["$exception_list"]
        .as_array()
        .expect("an $exception_list")
        .iter()
        .map(|e| {
            (
                e["type"].as_str().unwrap().to_owned(),
                e["value"].as_str().unwrap().to_owned(),
                e["mechanism"]["type"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// An application function that logs an error, so its frame is on the stack.
#[inline(never)]
fn charge(order_id: u64) {
    tracing::error!(target: "shop::payments", order_id, retry = true, ratio = f64::NAN, "payment failed");
}

#[tokio::test]
async fn an_error_is_one_exception_with_its_message_fields_spans_and_stack() {
    let mock = start_mock().await;
    let ph = builder(&mock).build().unwrap();
    let _guard = install(PostHogTracingLayer::new(ph.clone()));

    tracing::info_span!("request", path = "/checkout").in_scope(|| {
        tracing::info_span!("checkout").in_scope(|| charge(42));
    });
    ph.flush().await;

    let events = mock.events();
    assert_eq!(events.len(), 1, "{events:#?}");
    let event = &events[0];
    assert_eq!(event["event"], "$exception");
    assert_eq!(
        entries(event),
        [(
            "shop::payments".to_owned(),
            "payment failed".to_owned(),
            "generic".to_owned()
        )]
    );
    let p = &event["properties"];
    assert_eq!(p["$exception_level"], "error");
    assert_eq!(p["$exception_list"][0]["mechanism"]["handled"], true);
    assert_eq!(p["order_id"], 42);
    assert_eq!(p["retry"], true);
    assert_eq!(p["ratio"], "NaN", "JSON has no NaN: sent as text");
    assert!(p.get("message").is_none(), "the message is the value");
    assert_eq!(p["$tracing_target"], "shop::payments");
    assert_eq!(p["$tracing_level"], "ERROR");
    assert_eq!(p["$tracing_spans"], json!(["request", "checkout"]));
    assert_eq!(p["$process_person_profile"], false, "personless");

    // The stack ends at the `error!` call: no dispatch frames, none of the layer's.
    let frames = p["$exception_list"][0]["stacktrace"]["frames"]
        .as_array()
        .expect("frames");
    let functions: Vec<&str> = frames
        .iter()
        .map(|f| f["function"].as_str().unwrap_or_default())
        .collect();
    let innermost = functions.last().unwrap();
    assert!(innermost.contains("charge"), "{functions:#?}");
    assert!(
        !functions
            .iter()
            .any(|f| f.contains("tracing_core::") || f.contains("integrations::tracing")),
        "{functions:#?}"
    );
}

#[tokio::test]
async fn events_below_the_level_are_not_captured() {
    let mock = start_mock().await;
    let ph = builder(&mock).build().unwrap();
    let _guard = install(PostHogTracingLayer::new(ph.clone()));

    tracing::warn!(attempts = 3, "retries exhausted");
    tracing::info!("cache warmed");
    tracing::debug!("details");
    tracing::error!("the only one");
    ph.flush().await;

    let events = mock.events();
    assert_eq!(events.len(), 1, "{events:#?}");
    assert_eq!(entries(&events[0])[0].1, "the only one");
}

#[tokio::test]
async fn a_lower_exception_level_takes_warnings_at_their_level() {
    let mock = start_mock().await;
    let ph = builder(&mock).build().unwrap();
    let _guard = install(PostHogTracingLayer::new(ph.clone()).exception_level(Level::WARN));

    tracing::warn!("retries exhausted");
    tracing::info!("cache warmed");
    ph.flush().await;

    let events = mock.events();
    assert_eq!(events.len(), 1, "{events:#?}");
    assert_eq!(events[0]["properties"]["$exception_level"], "warning");
    assert_eq!(events[0]["properties"]["$tracing_level"], "WARN");
}

#[derive(Debug)]
struct Layer(&'static str, Option<Box<Layer>>);

impl fmt::Display for Layer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

impl StdError for Layer {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.1.as_deref().map(|e| e as &(dyn StdError + 'static))
    }
}

/// "request failed", caused by "database query failed", caused by "connection refused".
fn chain() -> Layer {
    Layer(
        "request failed",
        Some(Box::new(Layer(
            "database query failed",
            Some(Box::new(Layer("connection refused", None))),
        ))),
    )
}

#[tokio::test]
async fn an_error_field_brings_its_source_chain_in_order() {
    let mock = start_mock().await;
    let ph = builder(&mock).build().unwrap();
    let _guard = install(PostHogTracingLayer::new(ph.clone()));

    let error = chain();
    tracing::error!(target: "shop::orders", error = &error as &dyn StdError, "could not save the order");
    tracing::error!(target: "shop::stock", error = &error as &dyn StdError);
    ph.flush().await;

    let events = mock.events();
    assert_eq!(events.len(), 2, "{events:#?}");
    let with_message = events
        .iter()
        .find(|e| e["properties"]["$tracing_target"] == "shop::orders")
        .unwrap();
    let text = |t: &str, v: &str, m: &str| (t.to_owned(), v.to_owned(), m.to_owned());
    assert_eq!(
        entries(with_message),
        [
            text("shop::orders", "could not save the order", "generic"),
            text("Error", "request failed", "chained"),
            text("Error", "database query failed", "chained"),
            text("Error", "connection refused", "chained"),
        ]
    );
    let list = &with_message["properties"]["$exception_list"];
    assert_eq!(list[3]["mechanism"]["parent_id"], 2);
    assert_eq!(with_message["properties"]["error"], "request failed");

    // Without a message, the error's message is the value and its sources follow.
    let without = events
        .iter()
        .find(|e| e["properties"]["$tracing_target"] == "shop::stock")
        .unwrap();
    assert_eq!(
        entries(without),
        [
            text("shop::stock", "request failed", "generic"),
            text("Error", "database query failed", "chained"),
            text("Error", "connection refused", "chained"),
        ]
    );
}

#[tokio::test]
async fn chosen_events_are_ordinary_events_named_by_their_message() {
    let mock = start_mock().await;
    let ph = builder(&mock).build().unwrap();
    let _guard = install(
        PostHogTracingLayer::new(ph.clone())
            .capture_events(|meta| meta.target().starts_with("shop::audit")),
    );

    tracing::info_span!("export").in_scope(|| {
        tracing::info!(target: "shop::audit", user = "ada", rows = 120_u64, big = u128::MAX, "export downloaded");
    });
    tracing::info!(target: "shop::cache", "cache warmed");
    tracing::warn!(target: "shop::audit::login", "login refused");
    tracing::info!(target: "shop::audit", "");
    ph.flush().await;

    let events = mock.events();
    assert_eq!(events.len(), 3, "{events:#?}");
    let event = named(&events, "export downloaded")[0];
    let p = &event["properties"];
    assert_eq!(p["user"], "ada");
    assert_eq!(p["rows"], 120);
    assert_eq!(p["big"], u128::MAX.to_string(), "beyond 64 bits: text");
    assert_eq!(p["$tracing_target"], "shop::audit");
    assert_eq!(p["$tracing_level"], "INFO");
    assert_eq!(p["$tracing_spans"], json!(["export"]));
    assert!(p.get("$exception_list").is_none());
    let warning = named(&events, "login refused")[0];
    assert_eq!(warning["properties"]["$tracing_level"], "WARN");
    let unnamed = events.iter().find(|e| {
        e["event"]
            .as_str()
            .unwrap()
            .starts_with("event tests/tracing/main.rs:")
    });
    assert!(unnamed.is_some(), "without a message: the metadata's name");
}

#[tokio::test]
async fn inside_a_request_context_the_events_are_the_callers() {
    let mock = start_mock().await;
    let ph = builder(&mock).build().unwrap();
    let _guard = install(
        PostHogTracingLayer::new(ph.clone()).capture_events(|meta| meta.target() == "audit"),
    );

    RequestContext::new(Some("user-1".into()))
        .with_session_id("session-1")
        .scope(async {
            tracing::error!("checkout failed");
            tracing::info!(target: "audit", "checkout started");
        })
        .await;
    ph.flush().await;

    let events = mock.events();
    assert_eq!(events.len(), 2, "{events:#?}");
    for event in &events {
        assert_eq!(event["distinct_id"], "user-1", "{event:#}");
        assert_eq!(event["properties"]["$session_id"], "session-1");
        assert!(event["properties"].get("$process_person_profile").is_none());
    }
}

#[tokio::test]
async fn the_crates_own_logs_are_never_captured() {
    let mock = start_mock().await;
    let errors = ErrorLog::new();
    let ph = builder(&mock)
        .on_error(errors.callback())
        // A hook and callback that log errors while the layer captures: on this thread's
        // scoped subscriber, `tracing` drops them itself (the global case: `global_child`).
        .before_send(|event| {
            tracing::error!(target: "shop::hooks", name = event.name(), "before_send ran");
            Some(event)
        })
        .build()
        .unwrap();
    let _guard = install(PostHogTracingLayer::new(ph.clone()).exception_level(Level::WARN));

    tracing::error!(target: "posthog_tower", "the crate's own error");
    tracing::warn!(target: "posthog_tower::capture::batch", "the crate's own warning");
    // An event the client refuses: the crate logs a warning while refusing it.
    assert!(matches!(
        ph.capture(Event::new("", "user-1")),
        Err(CaptureError::EmptyEventName)
    ));
    tracing::error!(target: "posthog_tower_ext", "another crate's error");
    ph.flush().await;

    let events = mock.events();
    assert_eq!(events.len(), 1, "{events:#?}");
    assert_eq!(
        events[0]["properties"]["$tracing_target"],
        "posthog_tower_ext"
    );
    assert_eq!(errors.len(), 1, "only the refused event");
}

#[tokio::test]
async fn the_rate_limit_drops_and_counts_exceptions_per_target() {
    let mock = start_mock().await;
    let errors = ErrorLog::new();
    let ph = builder(&mock)
        .exception_rate_limit(2, Duration::from_secs(3600))
        .on_error(errors.callback())
        .build()
        .unwrap();
    let _guard = install(PostHogTracingLayer::new(ph.clone()));

    for attempt in 0..3 {
        tracing::error!(target: "shop::payments", attempt, "payment failed");
    }
    tracing::error!(target: "shop::orders", "order failed");
    ph.flush().await;

    let events = mock.events();
    let attempts: Vec<&Value> = events
        .iter()
        .filter(|e| e["properties"]["$tracing_target"] == "shop::payments")
        .map(|e| &e["properties"]["attempt"])
        .collect();
    assert_eq!(attempts, [0, 1], "the third was over the limit");
    assert_eq!(events.len(), 3, "another target has its own count");
    assert_eq!(ph.stats().dropped.rate_limited, 1);
    let reports = errors.all();
    assert!(
        matches!(
            &reports[..],
            [ErrorReport::Rejected(CaptureError::RateLimited { exception_type })]
                if exception_type == "shop::payments"
        ),
        "{reports:?}"
    );
}

#[tokio::test]
async fn trace_ids_come_from_the_closure() {
    let mock = start_mock().await;
    let ph = builder(&mock).build().unwrap();
    let _guard = install(
        PostHogTracingLayer::new(ph.clone())
            .capture_events(|meta| meta.target() == "audit")
            .trace_ids(|| {
                Some((
                    "4bf92f3577b34da6a3ce929d0e0e4736".into(),
                    "00f067aa0ba902b7".into(),
                ))
            }),
    );

    tracing::error!("checkout failed");
    tracing::info!(target: "audit", "checkout started");
    ph.flush().await;

    let events = mock.events();
    assert_eq!(events.len(), 2, "{events:#?}");
    for event in &events {
        assert_eq!(
            event["properties"]["$trace_id"],
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(event["properties"]["$span_id"], "00f067aa0ba902b7");
    }
}

#[tokio::test]
async fn trace_ids_of_the_span_tracing_opentelemetry_makes_current() {
    use opentelemetry::trace::{
        SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState,
    };
    use tracing_opentelemetry::OpenTelemetrySpanExt;

    let mock = start_mock().await;
    let ph = builder(&mock).build().unwrap();
    // The closure the `trace_ids` docs show.
    let layer = PostHogTracingLayer::new(ph.clone()).trace_ids(|| {
        let cx = opentelemetry::Context::current();
        let span = cx.span();
        let ids = span.span_context();
        ids.is_valid()
            .then(|| (ids.trace_id().to_string(), ids.span_id().to_string()))
    });
    let _guard = tracing::subscriber::set_default(
        tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer())
            .with(layer),
    );

    // A request that arrived with a W3C `traceparent`: its span continues that trace.
    let trace_id = TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap();
    let span_id = SpanId::from_hex("00f067aa0ba902b7").unwrap();
    let remote = SpanContext::new(
        trace_id,
        span_id,
        TraceFlags::SAMPLED,
        true,
        TraceState::default(),
    );
    let span = tracing::info_span!("request");
    span.set_parent(opentelemetry::Context::new().with_remote_span_context(remote))
        .unwrap();
    span.in_scope(|| tracing::error!("checkout failed"));
    tracing::error!("outside every span");
    ph.flush().await;

    let events = mock.events();
    assert_eq!(events.len(), 2, "{events:#?}");
    let inside = events
        .iter()
        .find(|e| e["properties"]["$tracing_spans"] == json!(["request"]))
        .unwrap();
    assert_eq!(
        inside["properties"]["$trace_id"],
        "4bf92f3577b34da6a3ce929d0e0e4736"
    );
    let span_id = inside["properties"]["$span_id"].as_str().unwrap();
    assert_eq!(span_id.len(), 16, "{span_id}");
    let outside = events
        .iter()
        .find(|e| e["properties"]["$tracing_spans"] == json!([]))
        .unwrap();
    assert!(outside["properties"].get("$trace_id").is_none());
}

/// A `Debug` that panics.
struct Explosive;

impl fmt::Debug for Explosive {
    fn fmt(&self, _: &mut fmt::Formatter<'_>) -> fmt::Result {
        panic!("Debug exploded")
    }
}

#[tokio::test]
async fn panicking_closures_and_fields_do_not_escape_the_layer() {
    let mock = start_mock().await;
    let ph = builder(&mock).build().unwrap();
    let _guard = install(
        PostHogTracingLayer::new(ph.clone())
            .capture_events(|_| panic!("filter exploded"))
            .trace_ids(|| panic!("trace ids exploded")),
    );

    tracing::info!("not chosen: the filter panicked");
    tracing::error!(value = ?Explosive, "still captured");
    ph.flush().await;

    let events = mock.events();
    assert_eq!(events.len(), 1, "{events:#?}");
    let p = &events[0]["properties"];
    assert_eq!(p["value"], "<the value's Debug implementation panicked>");
    assert!(p.get("$trace_id").is_none());
}

/// Set in the child process of [`a_capture_that_logs_never_loops_under_a_global_subscriber`].
const GLOBAL_CHILD_ENV: &str = "POSTHOG_TRACING_GLOBAL_CHILD";

/// Under a global subscriber, what a capture logs reaches the layer again (a scoped one drops
/// it): only the layer's own guard stops the loop. A binary may set the global subscriber once,
/// and any scoped one elsewhere in the process changes the dispatch, so this runs alone in a
/// child process: this binary again, running only [`global_child`].
#[test]
fn a_capture_that_logs_never_loops_under_a_global_subscriber() {
    let output = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["global_child", "--exact", "--nocapture", "--test-threads=1"])
        .env(GLOBAL_CHILD_ENV, "1")
        .output()
        .expect("the test binary runs again");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && stdout.contains("1 passed"),
        "child failed: {:?}\n{stdout}\n{stderr}",
        output.status
    );
    assert!(stdout.contains("global child done"), "{stdout}");
}

/// The child's scenario; returns at once in a normal run.
#[test]
fn global_child() {
    if std::env::var_os(GLOBAL_CHILD_ENV).is_none() {
        return;
    }
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            let mock = start_mock().await;
            let ph = builder(&mock)
                .exception_rate_limit(1, Duration::from_secs(3600))
                .before_send(|event| {
                    tracing::error!(target: "shop::hooks", name = event.name(), "before_send ran");
                    Some(event)
                })
                .on_error(|report| tracing::error!(target: "shop::hooks", %report, "on_error ran"))
                .build()
                .unwrap();
            // A filter that logs too.
            let layer = PostHogTracingLayer::new(ph.clone())
                .exception_level(Level::WARN)
                .capture_events(|meta| {
                    tracing::info!(target: "shop::filter", "filter ran");
                    meta.target() == "shop::audit"
                });
            tracing::subscriber::set_global_default(tracing_subscriber::registry().with(layer))
                .unwrap();

            tracing::error!(target: "shop::payments", "payment failed");
            // Over the limit: refused, which calls `on_error` and logs a warning.
            tracing::error!(target: "shop::payments", "payment failed again");
            tracing::warn!(target: "posthog_tower::capture", "the crate's own warning");
            tracing::info!(target: "shop::audit", "checkout started");
            ph.flush().await;

            let events = mock.events();
            assert_eq!(events.len(), 2, "{events:#?}");
            assert_eq!(named(&events, "checkout started").len(), 1);
            let exceptions = named(&events, "$exception");
            assert_eq!(
                entries(exceptions[0])[0],
                (
                    "shop::payments".to_owned(),
                    "payment failed".to_owned(),
                    "generic".to_owned()
                )
            );
            assert_eq!(ph.stats().dropped.rate_limited, 1);
        });
    println!("global child done");
}
