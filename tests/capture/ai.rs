//! The AI lane over real HTTP to `MockPostHog`: `capture_ai` sends to `/i/v0/ai/batch/` in
//! batches of its own, with the typed events' properties, privacy mode, retries and the
//! shared accounting; `capture` never reroutes `$ai_*` events.

use std::time::Duration;

use posthog_tower::{
    ai::{Embedding, Generation, Span, Trace},
    context::RequestContext,
    testing::MockResponse,
    CaptureError, Event,
};
use serde_json::json;

use crate::support::*;

const AI_PATH: &str = "/i/v0/ai/batch/";

/// The raw events of the first request to the AI endpoint, as text.
fn raw_ai_events(mock: &posthog_tower::testing::MockPostHog) -> String {
    let reqs = mock.requests_to(AI_PATH);
    assert!(!reqs.is_empty(), "no request to {AI_PATH}");
    String::from_utf8(raw_events(&reqs[0]).to_vec()).unwrap()
}

#[tokio::test(start_paused = true)]
async fn capture_ai_sends_typed_events_to_the_ai_endpoint_in_batches_of_their_own() {
    let mock = start_mock().await;
    let ph = builder(&mock).build().unwrap();

    let generation = ph
        .capture_ai(
            Generation::new("trace-1")
                .distinct_id("user-1")
                .provider("openai")
                .model("gpt-4o-mini")
                .base_url("https://api.openai.com/v1")
                .input(json!([{"role": "user", "content": "Hi"}]))
                .output_choices(json!([{"role": "assistant", "content": "Hello!"}]))
                .input_tokens(8)
                .output_tokens(2)
                .latency(Duration::from_millis(1250))
                .http_status(200),
        )
        .unwrap();
    ph.capture_ai(
        Embedding::new("trace-1")
            .distinct_id("user-1")
            .model("text-embedding-3-small"),
    )
    .unwrap();
    ph.capture_ai(Span::new("trace-1").distinct_id("user-1").name("search"))
        .unwrap();
    ph.capture_ai(Trace::new("trace-1").distinct_id("user-1").name("chat"))
        .unwrap();
    ph.capture(Event::new("$ai_generation", "user-1")).unwrap();
    let report = ph.flush().await;
    assert_eq!((report.delivered, report.failed), (5, 0));

    let ai = mock.requests_to(AI_PATH);
    assert_eq!(ai.len(), 1, "one AI batch");
    assert_eq!(ai[0].path, AI_PATH);
    let body = body_json(&ai[0]);
    assert_eq!(body["api_key"], KEY);
    let names: Vec<_> = batch_of(&ai[0])
        .iter()
        .map(|e| e["event"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        names,
        ["$ai_generation", "$ai_embedding", "$ai_span", "$ai_trace"]
    );

    let raw = raw_ai_events(&mock);
    for entry in [
        r#""$ai_trace_id":"trace-1""#,
        r#""$ai_provider":"openai""#,
        r#""$ai_model":"gpt-4o-mini""#,
        r#""$ai_base_url":"https://api.openai.com/v1""#,
        // `json!` sorts the keys of the objects it builds.
        r#""$ai_input":[{"content":"Hi","role":"user"}]"#,
        r#""$ai_output_choices":[{"content":"Hello!","role":"assistant"}]"#,
        r#""$ai_input_tokens":8"#,
        r#""$ai_output_tokens":2"#,
        r#""$ai_latency":1.25"#,
        r#""$ai_http_status":200"#,
        r#""$lib":"posthog-tower""#,
        r#""$is_server":true"#,
    ] {
        assert!(raw.contains(entry), "{entry} in {raw}");
    }
    let events = mock.ai_events();
    assert_eq!(uuid_of(&events[0]), generation);
    assert_eq!(events[0]["distinct_id"], "user-1");

    // `capture` never reroutes: its `$ai_generation` went to `/batch/`.
    let main = mock.events();
    assert_eq!(main.len(), 1);
    assert_eq!(main[0]["event"], "$ai_generation");

    let stats = ph.stats();
    assert_eq!((stats.captured, stats.delivered, stats.requests), (5, 5, 2));
    assert_eq!(stats.queue_depth, 0);
}

#[tokio::test(start_paused = true)]
async fn privacy_mode_keeps_inputs_and_outputs_off_the_wire() {
    let mock = start_mock().await;
    let ph = builder(&mock).ai_privacy_mode(true).build().unwrap();
    ph.capture_ai(
        Generation::new("t")
            .distinct_id("u")
            .model("m")
            .input("my secret prompt")
            .output_choices("the secret answer"),
    )
    .unwrap();
    // A plain event with the same keys is stripped too.
    ph.capture_ai(
        Event::new("$ai_span", "u")
            .property("$ai_input_state", "secret state")
            .property("$ai_span_name", "step"),
    )
    .unwrap();
    assert_eq!(ph.flush().await.delivered, 2);
    let raw = raw_ai_events(&mock);
    assert!(!raw.contains("secret"), "{raw}");
    assert!(raw.contains(r#""$ai_model":"m""#), "{raw}");
    assert!(raw.contains(r#""$ai_span_name":"step""#), "{raw}");

    // Per event, without the client-wide setting.
    let mock = start_mock().await;
    let ph = builder(&mock).build().unwrap();
    ph.capture_ai(
        Generation::new("t")
            .distinct_id("u")
            .input("my secret prompt")
            .privacy_mode(true),
    )
    .unwrap();
    ph.capture_ai(Generation::new("t").distinct_id("u").input("visible"))
        .unwrap();
    assert_eq!(ph.flush().await.delivered, 2);
    let events = mock.ai_events();
    assert!(events[0]["properties"].get("$ai_input").is_none());
    assert_eq!(events[1]["properties"]["$ai_input"], "visible");
}

#[tokio::test(start_paused = true)]
async fn the_ai_lane_retries_and_accounts_like_the_main_one() {
    let mock = start_mock().await;
    mock.enqueue(AI_PATH, MockResponse::status(503).retry_after("1"));
    mock.enqueue(AI_PATH, MockResponse::status(200));
    mock.enqueue(AI_PATH, MockResponse::status(400));
    let ph = builder(&mock).flush_at(1).build().unwrap();
    let delivered = ph
        .capture_ai(Generation::new("t").distinct_id("u"))
        .unwrap();
    assert_eq!(ph.flush().await.delivered, 1, "delivered after a retry");
    let failed = ph
        .capture_ai(Generation::new("t").distinct_id("u"))
        .unwrap();
    let report = ph.flush().await;
    assert_eq!((report.delivered, report.failed), (0, 1), "400 is final");
    ph.capture(Event::new("e", "u")).unwrap();
    assert_eq!(ph.flush().await.delivered, 1);

    let ai = mock.requests_to(AI_PATH);
    assert_eq!(ai.len(), 3, "503, 200, then 400");
    assert_eq!(uuids_of(&batch_of(&ai[0])), [delivered]);
    assert_eq!(
        uuids_of(&batch_of(&ai[1])),
        [delivered],
        "the same uuid on retry"
    );
    assert_eq!(uuids_of(&batch_of(&ai[2])), [failed]);
    let stats = ph.stats();
    assert_eq!(stats.retries, 1);
    assert_eq!(
        stats.captured,
        stats.delivered + stats.failed + stats.dropped.total(),
        "{stats:?}"
    );
    assert_eq!((stats.delivered, stats.failed), (2, 1));
}

#[tokio::test(start_paused = true)]
async fn each_lane_has_its_own_queue_of_the_same_bound() {
    let mock = start_mock().await;
    // The worker is not run: nothing leaves the queues.
    let (ph, _worker) = builder(&mock).max_queue_size(1).build_pair().unwrap();
    ph.capture_ai(Generation::new("t").distinct_id("u"))
        .unwrap();
    assert!(matches!(
        ph.capture_ai(Generation::new("t").distinct_id("u")),
        Err(CaptureError::QueueFull { capacity: 1 })
    ));
    ph.capture(Event::new("e", "u")).unwrap();
    let stats = ph.stats();
    assert_eq!(stats.queue_depth, 2);
    assert_eq!(stats.dropped.queue_full, 1);
}

#[tokio::test(start_paused = true)]
async fn the_caller_comes_from_the_request_context() {
    let mock = start_mock().await;
    let ph = builder(&mock).build().unwrap();
    RequestContext::new(Some("caller-7".into())).sync_scope(|| {
        ph.capture_ai(Generation::new("t").model("m")).unwrap();
    });
    ph.capture_ai(Generation::new("t").model("m")).unwrap();
    assert_eq!(ph.flush().await.delivered, 2);
    let events = mock.ai_events();
    assert_eq!(events[0]["distinct_id"], "caller-7");
    assert_eq!(events[1]["properties"]["$process_person_profile"], false);
}

#[tokio::test(start_paused = true)]
async fn a_disabled_client_checks_ai_events_and_sends_nothing() {
    let mock = start_mock().await;
    let ph = builder(&mock).disabled(true).build().unwrap();
    assert!(ph.capture_ai(Generation::new("t").distinct_id("u")).is_ok());
    assert!(matches!(
        ph.capture_ai(
            Generation::new("t")
                .distinct_id("u")
                .latency(Duration::MAX)
                .input(f64::NAN)
        ),
        Err(CaptureError::InvalidProperty { .. })
    ));
    assert_eq!(ph.flush().await.delivered, 0);
    assert!(mock.requests().is_empty());
}

/// The AI lane takes events up to 8 MiB (posthog-python's `AI_MAX_MSG_SIZE`), the `/batch/`
/// lane 900 KiB: an event of about 1 MiB is delivered on the first and refused on the second.
#[tokio::test(start_paused = true)]
async fn the_ai_lane_takes_events_over_900_kib_that_the_batch_lane_refuses() {
    let mock = start_mock().await;
    let ph = builder(&mock).build().unwrap();
    let text = "x".repeat(1024 * 1024);

    let big = ph
        .capture_ai(Generation::new("t").distinct_id("u").input(&text))
        .expect("1 MiB fits the AI lane");
    let refused = ph.capture(Event::new("$ai_generation", "u").property("$ai_input", &text));
    assert!(
        matches!(
            refused,
            Err(CaptureError::EventTooLarge { size, limit }) if limit == 900 * 1024 && size > limit
        ),
        "{refused:?}"
    );
    let too_big = ph.capture_ai(
        Generation::new("t")
            .distinct_id("u")
            .input("y".repeat(8 * 1024 * 1024)),
    );
    assert!(
        matches!(
            too_big,
            Err(CaptureError::EventTooLarge { limit, .. }) if limit == 8 * 1024 * 1024
        ),
        "{too_big:?}"
    );
    assert_eq!(ph.flush().await.delivered, 1);

    let ai = mock.requests_to(AI_PATH);
    assert_eq!(ai.len(), 1);
    assert!(ai[0].body.len() > 1024 * 1024, "one request of over 1 MiB");
    let events = mock.ai_events();
    assert_eq!(uuids_of(&events), [big]);
    assert_eq!(
        events[0]["properties"]["$ai_input"].as_str().map(str::len),
        Some(text.len()),
        "delivered whole"
    );
    assert!(mock.events().is_empty(), "nothing on /batch/");
    let stats = ph.stats();
    assert_eq!(stats.dropped.too_large, 2);
    assert_eq!(stats.delivered, 1);
}

#[tokio::test(start_paused = true)]
async fn capture_ai_wait_waits_for_room_instead_of_failing() {
    let mock = start_mock().await;
    let (ph, worker) = builder(&mock).max_queue_size(1).build_pair().unwrap();
    ph.capture_ai(Generation::new("t").distinct_id("u"))
        .unwrap();
    let waiting = {
        let ph = ph.clone();
        tokio::spawn(async move {
            ph.capture_ai_wait(Generation::new("t").distinct_id("u").model("second"))
                .await
        })
    };
    tokio::task::yield_now().await;
    assert!(!waiting.is_finished(), "the AI queue is full");
    tokio::spawn(worker);
    let second = waiting.await.unwrap().expect("queued once there was room");
    assert_eq!(ph.flush().await.delivered, 2);
    assert!(uuids_of(&mock.ai_events()).contains(&second));
    assert_eq!(ph.stats().dropped.queue_full, 0);
}

#[tokio::test(start_paused = true)]
async fn sync_mode_capture_ai_wait_returns_after_the_ai_endpoint_received_the_event() {
    let mock = start_mock().await;
    let ph = builder(&mock).sync_mode(true).build().unwrap();
    let id = ph
        .capture_ai_wait(Generation::new("t").distinct_id("u").model("m"))
        .await
        .unwrap();
    // No flush: the event is there already.
    assert_eq!(uuids_of(&mock.ai_events()), [id]);
    assert_eq!(mock.requests_to(AI_PATH).len(), 1);
    assert!(mock.events().is_empty());
    assert_eq!(ph.stats().delivered, 1);
}
