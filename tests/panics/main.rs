//! Panics captured as `$exception` events over real HTTP to `MockPostHog`. A binary of its own:
//! the panic hook is process-wide.

#[path = "../support/mod.rs"]
mod support;

use std::sync::{
    atomic::{AtomicUsize, Ordering},
    Arc,
};

use posthog_tower::context::RequestContext;
use serde_json::Value;
use tower::{Layer, ServiceExt};

use support::*;

/// A function of the application that panics, so its frame is on the panic's stack.
#[inline(never)]
fn checkout(cart: &[u32]) -> u32 {
    cart[3]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_in_a_request_is_the_callers_unhandled_fatal_exception() {
    // A hook installed before the client's is still called, once per panic.
    let previous = Arc::new(AtomicUsize::new(0));
    let counted = previous.clone();
    std::panic::set_hook(Box::new(move |info| {
        counted.fetch_add(1, Ordering::SeqCst);
        eprintln!("{info}");
    }));

    let mock = start_mock().await;
    let ph = builder(&mock).capture_panics(true).build().unwrap();
    let ctx = RequestContext::new(Some("user-3".into()));
    let task = tokio::spawn(ctx.scope(async { checkout(&[1, 2]) }));
    assert!(task.await.unwrap_err().is_panic());
    ph.flush().await;

    let events: Vec<Value> = mock
        .events()
        .into_iter()
        .filter(|e| e["event"] == "$exception")
        .collect();
    assert_eq!(events.len(), 1, "{events:?}");
    let event = &events[0];
    assert_eq!(event["distinct_id"], "user-3");
    let p = &event["properties"];
    assert_eq!(p["$exception_level"], "fatal");
    assert_eq!(p["$exception_panic_file"], "tests/panics/main.rs");
    assert!(p["$exception_panic_line"].as_u64().is_some());
    let entry = &p["$exception_list"][0];
    assert_eq!(entry["type"], "Panic");
    assert!(
        entry["value"]
            .as_str()
            .is_some_and(|v| v.contains("index out of bounds")),
        "{entry}"
    );
    assert_eq!(
        entry["mechanism"],
        serde_json::json!({"type": "panic", "handled": false, "synthetic": false})
    );
    // The stack starts in the application: the function that panicked, no panic machinery.
    let frames = entry["stacktrace"]["frames"].as_array().expect("frames");
    let innermost_app = frames
        .iter()
        .rev()
        .find(|f| f["in_app"] == true)
        .expect("an in-app frame");
    let names: Vec<String> = frames
        .iter()
        .map(|f| format!("{} {}", f["function"], f["in_app"]))
        .collect();
    assert!(
        innermost_app["function"]
            .as_str()
            .is_some_and(|f| f.contains("checkout")),
        "{innermost_app} in {names:#?}"
    );
    assert!(frames.iter().all(|f| {
        let name = f["function"].as_str().unwrap_or_default();
        !name.contains("core::panicking::") && !name.contains("rust_panic_with_hook")
    }));
    assert_eq!(previous.load(Ordering::SeqCst), 1);

    // A panic in a handler behind the layer, seen by both the hook and the layer: reported
    // once, by the hook (with the stack and the location).
    let service = ph
        .layer()
        .layer(tower::service_fn(|_: http::Request<()>| async {
            if true {
                panic!("the handler gave up");
            }
            Ok::<_, std::convert::Infallible>(http::Response::new(()))
        }));
    let request = http::Request::get("/checkout")
        .header("x-posthog-distinct-id", "user-4")
        .body(())
        .unwrap();
    let task = tokio::spawn(service.oneshot(request));
    assert!(task.await.unwrap_err().is_panic(), "the panic goes on");
    ph.flush().await;
    let events: Vec<Value> = mock
        .events()
        .into_iter()
        .filter(|e| e["event"] == "$exception" && e["distinct_id"] == "user-4")
        .collect();
    assert_eq!(events.len(), 1, "{events:#?}");
    let p = &events[0]["properties"];
    assert_eq!(p["$exception_list"][0]["value"], "the handler gave up");
    assert_eq!(p["$exception_panic_file"], "tests/panics/main.rs");
    assert_eq!(p["$request_path"], "/checkout");
    assert!(p["$exception_list"][0]["stacktrace"]["frames"].is_array());
    assert_eq!(previous.load(Ordering::SeqCst), 2);
}
