//! Per-call cost of `AiLayer`, without a network: a `service_fn` that answers a chat
//! completion at once, called bare and behind the layer; the answer's body is read to its end
//! in every case (the event is captured there).
//!
//! ```text
//! cargo bench --bench ai_layer
//! ```
//!
//! - `ai_layer/bare`, `ai_layer/bare_stream`: the inner service alone, a JSON answer and a
//!   server-sent event stream of 20 chunks.
//! - `ai_layer/layer_disabled`, `ai_layer/layer_disabled_stream`: behind the layer, on a
//!   disabled client: recognizing the call, reading the request and the answer, building the
//!   `$ai_generation` event; not encoding or queueing it.
//! - `ai_layer/layer`, `ai_layer/layer_stream`: the same on a working client: the event is
//!   also validated, encoded and queued (the worker drains the queue between timed chunks into
//!   a `service_fn` that acknowledges batches at once).
//! - `ai_layer/read_only`: what the layer reads of the JSON call alone (the request's model,
//!   parameters and messages, the answer's model, usage, stop reason and choices), without
//!   the event.
//! - `ai_layer/read_and_event`: the same, and the `$ai_generation` built from it and captured
//!   on the disabled client: less `read_only`, the event itself; `layer_disabled` less `bare`
//!   less that is what the layer adds besides the event.

use std::{
    convert::Infallible,
    hint::black_box,
    time::{Duration, Instant},
};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion};
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use posthog_tower::{
    capture::EncodedBatch,
    integrations::llm::{AiBody, AiLayer},
    PostHog,
};
use tower::{util::BoxCloneSyncService, Layer, Service, ServiceExt};

const CHUNK: u64 = 1024;

fn request(stream: bool) -> Request<Full<Bytes>> {
    let body = format!(
        r#"{{"model":"gpt-4o-mini","temperature":0.2,"stream":{stream},"messages":[{{"role":"system","content":"You are a helpful assistant."}},{{"role":"user","content":"What is the capital of France?"}}]}}"#
    );
    Request::post("https://api.openai.com/v1/chat/completions")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .expect("valid request")
}

const ANSWER: &str = r#"{"id":"chatcmpl-1","object":"chat.completion","model":"gpt-4o-mini-2024-07-18","choices":[{"index":0,"message":{"role":"assistant","content":"The capital of France is Paris."},"finish_reason":"stop"}],"usage":{"prompt_tokens":24,"completion_tokens":8,"total_tokens":32}}"#;

fn stream_answer() -> Bytes {
    let mut body = String::new();
    for i in 0..20 {
        body.push_str(&format!(
            "data: {{\"id\":\"chatcmpl-1\",\"model\":\"gpt-4o-mini\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"word{i} \"}},\"finish_reason\":null}}]}}\n\n"
        ));
    }
    body.push_str("data: {\"choices\":[],\"usage\":{\"prompt_tokens\":24,\"completion_tokens\":20}}\n\ndata: [DONE]\n\n");
    Bytes::from(body)
}

async fn llm(request: Request<Full<Bytes>>) -> Result<Response<Full<Bytes>>, Infallible> {
    let stream = request.headers().get("x-stream").is_some();
    Ok(if stream {
        Response::builder()
            .header("content-type", "text/event-stream")
            .body(Full::new(stream_answer()))
            .expect("valid response")
    } else {
        Response::builder()
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from_static(ANSWER.as_bytes())))
            .expect("valid response")
    })
}

type Llm = BoxCloneSyncService<Request<Full<Bytes>>, Response<Full<Bytes>>, Infallible>;
/// The answer of every case: bare, or through the layer.
type Answer = http_body_util::Either<Full<Bytes>, AiBody<Full<Bytes>>>;
type Case = BoxCloneSyncService<Request<Full<Bytes>>, Response<Answer>, Infallible>;

fn ai_layer(c: &mut Criterion) {
    let worker_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let sink = || tower::service_fn(|_batch: EncodedBatch| async { Ok::<_, Infallible>(()) });
    let (posthog, worker) = PostHog::builder("phc_bench")
        .host("http://127.0.0.1:9")
        .max_queue_size(100_000)
        .capture_stack(sink())
        .ai_capture_stack(sink())
        .build_pair()
        .expect("client");
    worker_rt.spawn(worker);
    let disabled = PostHog::builder("phc_bench")
        .disabled(true)
        .build()
        .expect("client");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");

    let mut group = c.benchmark_group("ai_layer");
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(3));

    let mut run = |name: &str, stream: bool, svc: Case| {
        let posthog = posthog.clone();
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let mut timed = Duration::ZERO;
                let mut left = iters;
                while left > 0 {
                    let n = left.min(CHUNK);
                    left -= n;
                    let requests: Vec<_> = (0..n)
                        .map(|_| {
                            let mut request = request(stream);
                            if stream {
                                request
                                    .headers_mut()
                                    .insert("x-stream", "1".parse().unwrap());
                            }
                            request
                        })
                        .collect();
                    let ph = posthog.clone();
                    worker_rt.block_on(async move { ph.flush().await });
                    let mut svc = svc.clone();
                    let start = Instant::now();
                    rt.block_on(async {
                        for req in requests {
                            let svc = svc.ready().await.expect("ready");
                            let response: Response<_> = svc.call(req).await.expect("infallible");
                            black_box(response.into_body().collect().await.map(|b| b.to_bytes()))
                                .ok();
                        }
                    });
                    timed += start.elapsed();
                }
                timed
            })
        });
    };

    let bare: Llm = BoxCloneSyncService::new(tower::service_fn(llm));
    let plain: Case = BoxCloneSyncService::new(
        bare.clone()
            .map_response(|r| r.map(http_body_util::Either::Left)),
    );
    run("bare", false, plain.clone());
    run("bare_stream", true, plain);
    for (name, client) in [("layer_disabled", &disabled), ("layer", &posthog)] {
        let layered: Case = BoxCloneSyncService::new(
            AiLayer::new(client.clone())
                .layer(bare.clone())
                .map_response(|r| r.map(http_body_util::Either::Right)),
        );
        run(name, false, layered.clone());
        run(&format!("{name}_stream"), true, layered);
    }
    // What the layer reads of a JSON call (its request and answer), without the event: the
    // rest of `layer_disabled` over `bare` is building and checking the event.
    let request_body = request(false).into_body();
    let request_body = rt.block_on(async { request_body.collect().await.map(|b| b.to_bytes()) });
    let request_body = request_body.expect("in memory");
    let answer = Bytes::from_static(ANSWER.as_bytes());
    group.bench_function("read_only", |b| {
        b.iter(|| {
            black_box(posthog_tower::integrations::llm::bench_read_chat_call(
                black_box(&request_body),
                black_box(&answer),
            ))
        })
    });
    // The same, and the `$ai_generation` the layer builds from it, captured on the disabled
    // client as in `layer_disabled`: less `read_only`, this is the event itself, which the
    // layer's own cost (`layer_disabled` less `bare`) is measured without.
    group.bench_function("read_and_event", |b| {
        b.iter(|| {
            black_box(posthog_tower::integrations::llm::bench_chat_call_event(
                &disabled,
                black_box(&request_body),
                black_box(&answer),
            ))
        })
    });
    group.finish();

    let stats = posthog.stats();
    assert_eq!(
        stats.dropped.total(),
        0,
        "no event may be refused: {stats:?}"
    );
    worker_rt.block_on(async move { posthog.shutdown(Duration::from_secs(30)).await });
}

criterion_group!(benches, ai_layer);
criterion_main!(benches);
