//! LLM analytics: `AiLayer` on the HTTP client that calls an OpenAI-compatible API, and the
//! typed events of `posthog_tower::ai` sent by hand.
//!
//! ```text
//! cargo run --example ai
//! ```
//!
//! Runs offline: a fake OpenAI server on loopback answers one chat completion as JSON and one
//! as a stream of server-sent events, and the crate's mock PostHog receives the events. Prints
//! what the application got and what PostHog received.

use std::{convert::Infallible, time::Duration};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use posthog_tower::{
    ai::{Span, Trace},
    context::RequestContext,
    integrations::llm::{AiLayer, TraceId},
    testing::MockPostHog,
    PostHog,
};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tower::{ServiceBuilder, ServiceExt};

/// A fake OpenAI: answers `/v1/chat/completions` as JSON, or as a stream when asked.
async fn fake_openai() -> std::io::Result<String> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}/v1", listener.local_addr()?);
    let app = tower::service_fn(|request: Request<axum::body::Body>| async move {
        let body = request.into_body().collect().await.map(|b| b.to_bytes());
        let body: Value = body
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        let response = if body["stream"] == true {
            let mut stream = String::new();
            for (i, word) in ["Bonjour", " le", " monde"].iter().enumerate() {
                let chunk = json!({"model": "gpt-4o-mini", "choices": [{"index": 0, "delta": {"content": word},
                    "finish_reason": if i == 2 { json!("stop") } else { Value::Null }}]});
                stream.push_str(&format!("data: {chunk}\n\n"));
            }
            if body["stream_options"]["include_usage"] == true {
                let usage =
                    json!({"choices": [], "usage": {"prompt_tokens": 12, "completion_tokens": 3}});
                stream.push_str(&format!("data: {usage}\n\n"));
            }
            stream.push_str("data: [DONE]\n\n");
            Response::builder()
                .header("content-type", "text/event-stream")
                .body(axum::body::Body::from(stream))
        } else {
            let answer = json!({
                "model": "gpt-4o-mini",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello world"},
                             "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 10, "completion_tokens": 2}
            });
            Response::builder()
                .header("content-type", "application/json")
                .body(axum::body::Body::from(answer.to_string()))
        };
        Ok::<_, Infallible>(response.unwrap_or_default())
    });
    tokio::spawn(async move {
        let _ = axum::serve(listener, tower::make::Shared::new(app)).await;
    });
    Ok(base)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let mock = MockPostHog::start().await?;
    let posthog = PostHog::builder("phc_example").host(mock.url()).build()?;
    let base = fake_openai().await?;

    // The application's HTTP client for the LLM API, with the layer on it.
    let openai = ServiceBuilder::new()
        .layer(AiLayer::new(posthog.clone()).include_stream_usage(true))
        .service(posthog_tower::net::default_client());

    for stream in [false, true] {
        let body = json!({
            "model": "gpt-4o-mini",
            "stream": stream,
            "messages": [{"role": "user", "content": "Say hello in French"}],
        });
        let request = Request::post(format!("{base}/chat/completions"))
            .header("content-type", "application/json")
            .extension(TraceId::new("example-trace"))
            .body(Full::new(Bytes::from(body.to_string())))?;
        // Inside a request context (as behind `PostHogLayer`), the caller is its distinct id.
        let response = RequestContext::new(Some("user-42".into()))
            .scope(openai.clone().oneshot(request))
            .await?;
        let answer = response.into_body().collect().await?.to_bytes();
        let answer = String::from_utf8_lossy(&answer);
        if stream {
            let events = answer.lines().filter(|l| l.starts_with("data:")).count();
            println!("application got a stream of {events} server-sent events, unchanged");
        } else {
            println!("application got: {answer}");
        }
    }

    // The typed events, by hand.
    posthog.capture_ai(
        Span::new("example-trace")
            .distinct_id("user-42")
            .name("pick a greeting")
            .latency(Duration::from_millis(3)),
    )?;
    posthog.capture_ai(
        Trace::new("example-trace")
            .distinct_id("user-42")
            .name("hello"),
    )?;

    let report = posthog.shutdown(Duration::from_secs(5)).await;
    println!(
        "\n{} events delivered; PostHog's AI endpoint received:",
        report.delivered
    );
    for event in mock.ai_events() {
        let p = &event["properties"];
        println!(
            "  {} by {}: model {}, tokens {}/{}, output {}",
            event["event"],
            event["distinct_id"],
            p["$ai_model"],
            p["$ai_input_tokens"],
            p["$ai_output_tokens"],
            p["$ai_output_choices"],
        );
    }
    Ok(())
}
