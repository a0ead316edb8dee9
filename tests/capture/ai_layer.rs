//! `AiLayer` over real HTTP on both sides: a fake OpenAI-compatible server on loopback (its
//! answers streamed chunk by chunk when asked), the crate's HTTP client wrapped in the layer,
//! and `MockPostHog` receiving the `$ai_generation` events on the AI lane.

use std::{
    convert::Infallible,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
};

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame};
use http_body_util::{BodyExt, Full};
use posthog_tower::{
    context::RequestContext,
    integrations::llm::{AiLayer, TraceId},
};
use serde_json::{json, Value};
use tokio::{net::TcpListener, sync::mpsc};
use tower::{Layer, ServiceBuilder, ServiceExt};

use crate::support::*;

/// A body fed by a channel: each message is one frame, sent when it is sent.
struct ChannelBody(mpsc::UnboundedReceiver<Bytes>);

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0
            .poll_recv(cx)
            .map(|next| next.map(|b| Ok(Frame::data(b))))
    }
}

/// A fake OpenAI: `/v1/chat/completions` answers JSON, or with `"stream": true` an SSE stream
/// whose chunks the test sends through the returned channel (the usage chunk only when the
/// request asked for it, as OpenAI does). It keeps the request bodies it got.
struct FakeOpenAi {
    base: String,
    requests: Arc<Mutex<Vec<Value>>>,
}

async fn fake_openai() -> (FakeOpenAi, mpsc::UnboundedSender<Bytes>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}/v1", listener.local_addr().unwrap());
    let requests = Arc::new(Mutex::new(Vec::new()));
    let (tx, rx) = mpsc::unbounded_channel();
    let chunks = Arc::new(Mutex::new(Some(rx)));
    let (seen, stream) = (requests.clone(), chunks.clone());
    let app = tower::service_fn(move |request: Request<axum::body::Body>| {
        let (seen, stream) = (seen.clone(), stream.clone());
        async move {
            let body = request.into_body().collect().await.unwrap().to_bytes();
            let body: Value = serde_json::from_slice(&body).unwrap();
            seen.lock().unwrap().push(body.clone());
            let response = if body["model"] == "overloaded" {
                Response::builder()
                    .status(429)
                    .header("content-type", "application/json")
                    .body(axum::body::Body::from(
                        json!({"error": {"message": "Rate limit reached", "type": "rate_limit"}})
                            .to_string(),
                    ))
            } else if body["stream"] == true {
                let rx = stream.lock().unwrap().take().expect("one stream per test");
                Response::builder()
                    .header("content-type", "text/event-stream")
                    .body(axum::body::Body::new(ChannelBody(rx)))
            } else {
                let answer = json!({
                    "id": "chatcmpl-1",
                    "model": "gpt-4o-mini-2024-07-18",
                    "choices": [{
                        "index": 0,
                        "message": {"role": "assistant", "content": "Paris."},
                        "finish_reason": "stop"
                    }],
                    "usage": {"prompt_tokens": 14, "completion_tokens": 2, "total_tokens": 16}
                });
                Response::builder()
                    .header("content-type", "application/json")
                    .body(axum::body::Body::from(answer.to_string()))
            };
            Ok::<_, Infallible>(response.unwrap())
        }
    });
    tokio::spawn(async move {
        axum::serve(listener, tower::make::Shared::new(app))
            .await
            .unwrap();
    });
    (FakeOpenAi { base, requests }, tx)
}

fn chat_request(base: &str, body: Value) -> Request<Full<Bytes>> {
    Request::post(format!("{base}/chat/completions"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap()
}

fn sse(chunk: Value) -> Bytes {
    Bytes::from(format!("data: {chunk}\n\n"))
}

#[tokio::test]
async fn a_non_streamed_call_is_one_generation_for_the_caller() {
    let mock = start_mock().await;
    let posthog = builder(&mock).build().unwrap();
    let (openai, _chunks) = fake_openai().await;
    let client = ServiceBuilder::new()
        .layer(AiLayer::new(posthog.clone()))
        .service(posthog_tower::net::default_client());

    let mut request = chat_request(
        &openai.base,
        json!({
            "model": "gpt-4o-mini",
            "temperature": 0.2,
            "messages": [{"role": "user", "content": "Capital of France?"}]
        }),
    );
    request.extensions_mut().insert(TraceId::new("trace-9"));
    let response = RequestContext::new(Some("user-5".into()))
        .scope(client.oneshot(request))
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let answer: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        answer["choices"][0]["message"]["content"], "Paris.",
        "unchanged"
    );
    assert!(openai.requests.lock().unwrap()[0]
        .get("stream_options")
        .is_none());

    assert_eq!(posthog.flush().await.delivered, 1);
    let events = mock.ai_events();
    assert_eq!(events.len(), 1);
    let e = &events[0];
    assert_eq!(e["event"], "$ai_generation");
    assert_eq!(e["distinct_id"], "user-5", "the request context's caller");
    let p = &e["properties"];
    assert_eq!(p["$ai_trace_id"], "trace-9");
    assert_eq!(
        p["$ai_lib"], "posthog-tower",
        "as posthog-python's wrappers send theirs"
    );
    assert_eq!(p["$ai_lib_version"], posthog_tower::VERSION);
    assert_eq!(p["$ai_provider"], "openai");
    assert_eq!(
        p["$ai_model"], "gpt-4o-mini-2024-07-18",
        "the model that answered"
    );
    assert_eq!(p["$ai_base_url"], openai.base);
    assert_eq!(p["$ai_http_status"], 200);
    assert_eq!(p["$ai_input_tokens"], 14);
    assert_eq!(p["$ai_output_tokens"], 2);
    assert_eq!(p["$ai_stop_reason"], "stop");
    assert_eq!(p["$ai_is_error"], false);
    assert_eq!(p["$ai_stream"], false);
    assert_eq!(p["$ai_model_parameters"], json!({"temperature": 0.2}));
    assert_eq!(
        p["$ai_input"],
        json!([{"role": "user", "content": "Capital of France?"}])
    );
    assert_eq!(
        p["$ai_output_choices"],
        json!([{"role": "assistant", "content": "Paris."}])
    );
    assert!(p["$ai_latency"].as_f64().unwrap() > 0.0);
    assert!(mock.events().is_empty(), "nothing on the main lane");
}

#[tokio::test]
async fn a_streamed_call_passes_chunk_by_chunk_and_is_read_on_its_way() {
    let mock = start_mock().await;
    let posthog = builder(&mock).build().unwrap();
    let (openai, chunks) = fake_openai().await;
    let client = ServiceBuilder::new()
        .layer(AiLayer::new(posthog.clone()).include_stream_usage(true))
        .service(posthog_tower::net::default_client());

    let request = chat_request(
        &openai.base,
        json!({
            "model": "gpt-4o-mini",
            "stream": true,
            "messages": [{"role": "user", "content": "Count to two"}]
        }),
    );
    let first = sse(json!({"model": "gpt-4o-mini", "choices": [{"delta": {"content": "One,"}}]}));
    chunks.send(first.clone()).unwrap();
    let response = client.oneshot(request).await.unwrap();
    assert_eq!(response.status(), 200);
    let mut body = response.into_body();

    // The first chunk reaches the caller while the server has not sent the rest yet.
    let frame = body.frame().await.unwrap().unwrap();
    assert_eq!(frame.into_data().unwrap(), first);
    assert!(
        mock.ai_events().is_empty(),
        "no event before the stream ends"
    );

    let asked = openai.requests.lock().unwrap()[0].clone();
    assert_eq!(asked["stream_options"], json!({"include_usage": true}));
    let rest = [
        sse(json!({"choices": [{"delta": {"content": " two."}, "finish_reason": "stop"}]})),
        sse(json!({"choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 3}})),
        Bytes::from_static(b"data: [DONE]\n\n"),
    ];
    // A line split across two frames.
    let (a, b) = rest[0].split_at(11);
    chunks.send(Bytes::copy_from_slice(a)).unwrap();
    chunks.send(Bytes::copy_from_slice(b)).unwrap();
    chunks.send(rest[1].clone()).unwrap();
    chunks.send(rest[2].clone()).unwrap();
    drop(chunks);
    let mut received = Vec::new();
    while let Some(frame) = body.frame().await {
        received.extend_from_slice(&frame.unwrap().into_data().unwrap());
    }
    assert_eq!(received, rest.concat(), "the stream is passed on unchanged");

    assert_eq!(posthog.flush().await.delivered, 1);
    let events = mock.ai_events();
    let p = &events[0]["properties"];
    assert_eq!(p["$ai_stream"], true);
    assert_eq!(p["$ai_input_tokens"], 9);
    assert_eq!(p["$ai_output_tokens"], 3);
    assert_eq!(p["$ai_stop_reason"], "stop");
    assert_eq!(
        p["$ai_output_choices"],
        json!([{"role": "assistant", "content": "One, two."}])
    );
    assert_eq!(
        events[0]["properties"]["$process_person_profile"], false,
        "no caller"
    );
}

#[tokio::test]
async fn privacy_mode_sends_usage_without_inputs_or_outputs() {
    let mock = start_mock().await;
    let posthog = builder(&mock).build().unwrap();
    let (openai, chunks) = fake_openai().await;
    let client = ServiceBuilder::new()
        .layer(AiLayer::new(posthog.clone()).privacy_mode(true))
        .service(posthog_tower::net::default_client());

    let secret = json!({"model": "m", "messages": [{"role": "user", "content": "my secret"}]});
    let response = client
        .clone()
        .oneshot(chat_request(&openai.base, secret))
        .await
        .unwrap();
    response.into_body().collect().await.unwrap();

    // A stream without usage: the request is not changed, and the usage is unknown.
    chunks
        .send(sse(
            json!({"choices": [{"delta": {"content": "secret answer"}}]}),
        ))
        .unwrap();
    drop(chunks);
    let streamed = json!({"model": "m", "stream": true, "messages": [{"role": "user", "content": "my secret"}]});
    let response = client
        .oneshot(chat_request(&openai.base, streamed))
        .await
        .unwrap();
    response.into_body().collect().await.unwrap();
    assert!(openai.requests.lock().unwrap()[1]
        .get("stream_options")
        .is_none());

    assert_eq!(posthog.flush().await.delivered, 2);
    let reqs = mock.requests_to("/i/v0/ai/batch/");
    let raw: String = reqs
        .iter()
        .map(|r| String::from_utf8(raw_events(r).to_vec()).unwrap())
        .collect();
    assert!(!raw.contains("secret"), "{raw}");
    assert!(!raw.contains("$ai_input\""), "{raw}");
    assert!(!raw.contains("$ai_output_choices"), "{raw}");
    let events = mock.ai_events();
    assert_eq!(events[0]["properties"]["$ai_input_tokens"], 14);
    let streamed = &events[1]["properties"];
    assert!(
        streamed.get("$ai_input_tokens").is_none(),
        "unknown: {streamed}"
    );
    assert_eq!(streamed["$ai_http_status"], 200);
}

#[tokio::test]
async fn an_anthropic_stream_is_read_too() {
    let mock = start_mock().await;
    let posthog = builder(&mock).build().unwrap();
    let (fake, chunks) = fake_openai().await;
    let client = ServiceBuilder::new()
        .layer(AiLayer::new(posthog.clone()).include_stream_usage(true))
        .service(posthog_tower::net::default_client());
    let body = json!({
        "model": "claude-sonnet-4",
        "stream": true,
        "max_tokens": 64,
        "system": "Be brief.",
        "messages": [{"role": "user", "content": "Hi"}]
    });
    let request = Request::post(format!("{}/messages", fake.base))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap();
    for chunk in [
        json!({"type": "message_start", "message": {"model": "claude-sonnet-4-20250514", "usage": {"input_tokens": 21, "output_tokens": 1}}}),
        json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hello"}}),
        json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "!"}}),
        json!({"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 4}}),
        json!({"type": "message_stop"}),
    ] {
        let event = chunk["type"].as_str().unwrap().to_owned();
        chunks
            .send(Bytes::from(format!("event: {event}\ndata: {chunk}\n\n")))
            .unwrap();
    }
    drop(chunks);
    let response = client.oneshot(request).await.unwrap();
    response.into_body().collect().await.unwrap();
    let sent = fake.requests.lock().unwrap()[0].clone();
    assert!(
        sent.get("stream_options").is_none(),
        "only OpenAI chat streams are changed"
    );

    assert_eq!(posthog.flush().await.delivered, 1);
    let p = mock.ai_events()[0]["properties"].clone();
    assert_eq!(p["$ai_provider"], "anthropic");
    assert_eq!(p["$ai_base_url"], fake.base.trim_end_matches("/v1"));
    assert_eq!(p["$ai_model"], "claude-sonnet-4-20250514");
    assert_eq!(
        (
            p["$ai_input_tokens"].clone(),
            p["$ai_output_tokens"].clone()
        ),
        (json!(21), json!(4))
    );
    assert_eq!(p["$ai_stop_reason"], "end_turn");
    assert_eq!(
        p["$ai_output_choices"],
        json!([{"role": "assistant", "content": "Hello!"}])
    );
    assert_eq!(
        p["$ai_input"],
        json!([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}])
    );
    assert_eq!(
        p["$ai_model_parameters"],
        json!({"max_tokens": 64, "stream": true})
    );
}

#[tokio::test]
async fn failed_calls_are_captured_as_errors_and_answered_unchanged() {
    let mock = start_mock().await;
    let posthog = builder(&mock).build().unwrap();
    let (fake, _chunks) = fake_openai().await;
    let client = ServiceBuilder::new()
        .layer(AiLayer::new(posthog.clone()))
        .service(posthog_tower::net::default_client());

    // An error answer reaches the caller as it was.
    let request = chat_request(&fake.base, json!({"model": "overloaded", "messages": []}));
    let response = client.clone().oneshot(request).await.unwrap();
    assert_eq!(response.status(), 429);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(
        serde_json::from_slice::<Value>(&body).unwrap()["error"]["type"],
        "rate_limit"
    );

    // A client error is returned as it was.
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dead = format!("http://{}/v1", closed.local_addr().unwrap());
    drop(closed);
    let request = chat_request(&dead, json!({"model": "m", "messages": []}));
    assert!(client.oneshot(request).await.is_err());

    assert_eq!(posthog.flush().await.delivered, 2);
    let events = mock.ai_events();
    let answered = &events[0]["properties"];
    assert_eq!(answered["$ai_http_status"], 429);
    assert_eq!(answered["$ai_is_error"], true);
    assert_eq!(answered["$ai_error"]["message"], "Rate limit reached");
    let unanswered = &events[1]["properties"];
    assert_eq!(unanswered["$ai_is_error"], true);
    assert!(unanswered.get("$ai_http_status").is_none(), "{unanswered}");
    assert!(unanswered["$ai_error"]
        .as_str()
        .is_some_and(|e| !e.is_empty()));
    assert_eq!(unanswered["$ai_model"], "m", "the model asked for");
}

/// A request body of several frames (and an empty one): `Frames::from(bytes)` is one frame.
struct Frames(std::collections::VecDeque<Bytes>);

impl From<Bytes> for Frames {
    fn from(bytes: Bytes) -> Self {
        Frames([bytes].into())
    }
}

impl Body for Frames {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(self.0.pop_front().map(|b| Ok(Frame::data(b))))
    }
}

#[tokio::test]
async fn a_request_body_in_several_frames_is_read_whole_and_passed_on_whole() {
    let mock = start_mock().await;
    let posthog = builder(&mock).build().unwrap();
    let received = Arc::new(Mutex::new(Vec::new()));
    let seen = received.clone();
    let llm = tower::service_fn(move |request: Request<Frames>| {
        let seen = seen.clone();
        async move {
            let body = request.into_body().collect().await.unwrap().to_bytes();
            seen.lock().unwrap().push(body);
            let answer = json!({"model": "m", "choices": [{"message": {"role": "assistant", "content": "Yes"}, "finish_reason": "stop"}]});
            Ok::<_, Infallible>(
                Response::builder()
                    .header("content-type", "application/json")
                    .body(Full::new(Bytes::from(answer.to_string())))
                    .unwrap(),
            )
        }
    });
    let client = AiLayer::new(posthog.clone()).layer(llm);
    let body =
        json!({"model": "m", "top_p": 0.5, "messages": [{"role": "user", "content": "Sure?"}]})
            .to_string();
    let (a, rest) = body.split_at(7);
    let (b, c) = rest.split_at(20);
    let frames = [a, "", b, c].map(|part| Bytes::copy_from_slice(part.as_bytes()));
    let request = Request::post("https://llm.test/v1/chat/completions")
        .body(Frames(frames.into()))
        .unwrap();
    let response = client.oneshot(request).await.unwrap();
    response.into_body().collect().await.unwrap();
    assert_eq!(
        received.lock().unwrap().as_slice(),
        [Bytes::from(body)],
        "the whole body, passed on"
    );

    assert_eq!(posthog.flush().await.delivered, 1);
    let events = mock.ai_events();
    let p = &events[0]["properties"];
    assert_eq!(p["$ai_model"], "m");
    assert_eq!(p["$ai_model_parameters"], json!({"top_p": 0.5}));
    assert_eq!(
        p["$ai_input"],
        json!([{"role": "user", "content": "Sure?"}])
    );
    assert_eq!(
        p["$ai_output_choices"],
        json!([{"role": "assistant", "content": "Yes"}])
    );
}
