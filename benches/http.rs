//! Per-request cost of the HTTP layer, without a network: a `service_fn` that answers at once,
//! called bare and behind `PostHogLayer`.
//!
//! ```text
//! cargo bench --bench http
//! ```
//!
//! - `http/bare`: the inner service alone (building the request is not timed; driving the
//!   future on a current-thread runtime is, for every variant alike).
//! - `http/bare_anonymous`: the same with the request `wrk` sends (below).
//! - `http/layer_anonymous`: behind `posthog.layer().capture_pageviews(false)`, a request with
//!   only a `Host` header (what `wrk` sends in `examples/bench_http.rs`): an anonymous caller.
//! - `http/layer_header`: behind `posthog.layer().capture_pageviews(false)`, the caller named by
//!   `X-POSTHOG-DISTINCT-ID`: identity, request context, `RequestFlags` handle.
//! - `http/layer_cookie`: the same, the caller read from posthog-js's cookie (decoded JSON).
//! - `http/layer_pageview`: the full layer, a `$pageview` captured for every request. The
//!   client's worker drains the queue between timed chunks into a `service_fn` that
//!   acknowledges batches at once, so the figure is the request path's cost, not delivery's.
//!
//! The end-to-end throughput figures (a real axum server under load) come from
//! `examples/bench_http.rs`.

use std::{
    convert::Infallible,
    hint::black_box,
    time::{Duration, Instant},
};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion};
use http::{Request, Response};
use http_body_util::Full;
use posthog_tower::{capture::EncodedBatch, PostHog};
use tower::{Layer, Service, ServiceExt};

const CHUNK: u64 = 1024;

/// What `wrk` sends: a `Host` header and nothing else (an anonymous caller).
fn bare_request() -> Request<Full<Bytes>> {
    Request::get("/")
        .header("host", "127.0.0.1:8080")
        .body(Full::new(Bytes::new()))
        .expect("valid request")
}

fn request(cookie: bool) -> Request<Full<Bytes>> {
    let mut b = Request::get("/products/42?ref=home")
        .header("host", "shop.example")
        .header(
            "user-agent",
            "Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0",
        )
        .header("accept", "text/html")
        .header("referer", "https://www.google.com/");
    b = if cookie {
        b.header(
            "cookie",
            "theme=dark; ph_phc_bench_posthog=%7B%22distinct_id%22%3A%22019a-user-42%22%2C%22%24sesid%22%3A%5B1764064800000%2C%22019a-sess%22%2C1764064700000%5D%2C%22%24device_id%22%3A%22019a-dev%22%7D",
        )
    } else {
        b.header("x-posthog-distinct-id", "user-42")
    };
    b.body(Full::new(Bytes::new())).expect("valid request")
}

/// Which request a case sends.
#[derive(Clone, Copy)]
enum Kind {
    Anonymous,
    Header,
    Cookie,
}

async fn ok(_: Request<Full<Bytes>>) -> Result<Response<Full<Bytes>>, Infallible> {
    Ok(Response::new(Full::new(Bytes::from_static(b"ok"))))
}

fn http(c: &mut Criterion) {
    let worker_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let (posthog, worker) = PostHog::builder("phc_bench")
        .host("http://127.0.0.1:9")
        .max_queue_size(100_000)
        .capture_stack(tower::service_fn(|_batch: EncodedBatch| async {
            Ok::<_, Infallible>(())
        }))
        .build_pair()
        .expect("client");
    worker_rt.spawn(worker);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");

    let mut group = c.benchmark_group("http");
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(3));

    let mut run = |name: &str, kind: Kind, mut svc: tower::util::BoxCloneSyncService<_, _, _>| {
        let posthog = posthog.clone();
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let mut timed = Duration::ZERO;
                let mut left = iters;
                while left > 0 {
                    let n = left.min(CHUNK);
                    left -= n;
                    let requests: Vec<_> = (0..n)
                        .map(|_| match kind {
                            Kind::Anonymous => bare_request(),
                            Kind::Header => request(false),
                            Kind::Cookie => request(true),
                        })
                        .collect();
                    let ph = posthog.clone();
                    worker_rt.block_on(async move { ph.flush().await });
                    let start = Instant::now();
                    rt.block_on(async {
                        for req in requests {
                            let svc = svc.ready().await.expect("ready");
                            black_box(svc.call(req).await.expect("infallible"));
                        }
                    });
                    timed += start.elapsed();
                }
                timed
            })
        });
    };

    let bare = tower::util::BoxCloneSyncService::new(tower::service_fn(ok));
    run("bare", Kind::Header, bare.clone());
    run("bare_anonymous", Kind::Anonymous, bare);
    let layer = posthog.layer().capture_pageviews(false);
    run(
        "layer_anonymous",
        Kind::Anonymous,
        tower::util::BoxCloneSyncService::new(layer.layer(tower::service_fn(ok))),
    );
    run(
        "layer_header",
        Kind::Header,
        tower::util::BoxCloneSyncService::new(layer.layer(tower::service_fn(ok))),
    );
    run(
        "layer_cookie",
        Kind::Cookie,
        tower::util::BoxCloneSyncService::new(layer.layer(tower::service_fn(ok))),
    );
    let full = posthog
        .layer()
        .should_capture(|_: &posthog_tower::http::RequestHead<'_>| true);
    run(
        "layer_pageview",
        Kind::Header,
        tower::util::BoxCloneSyncService::new(full.layer(tower::service_fn(ok))),
    );
    group.finish();

    let stats = posthog.stats();
    assert_eq!(
        stats.dropped.total(),
        0,
        "no pageview may be refused: {stats:?}"
    );
    worker_rt.block_on(async move { posthog.shutdown(Duration::from_secs(30)).await });
}

criterion_group!(benches, http);
criterion_main!(benches);
