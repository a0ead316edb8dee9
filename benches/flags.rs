//! Cost of the remote flag path and of `$feature_flag_called` bookkeeping.
//!
//! ```text
//! cargo bench --bench flags
//! ```
//!
//! - `flags/get_feature_flag_loopback`: `PostHog::get_feature_flag` end to end against the
//!   crate's mock PostHog on 127.0.0.1 (request body, HTTP/1.1 round trip, response parsing,
//!   dedup check; the same person every time, so after the first call no event is built).
//! - `flags/first_access`: `FlagEvaluations::is_enabled` on a flag not reported yet for the
//!   person: the dedup check, building the `$feature_flag_called` event and queueing it.
//! - `flags/first_access_event_build_only`: the same first reads with the event built but not
//!   queued (the dedup check and the event construction the issue budgets at 1 µs).
//! - `flags/first_access_experiment_build_only`: the same for experiment flags (a
//!   `/flags?v=4` experiment split): both dedup checks, `$feature_flag_called` with its
//!   attribution and `$experiment_exposure` built.
//! - `flags/repeat_access`: the same call once reported: the dedup check alone.
//! - `flags/repeat_access_experiment`: an experiment flag once reported: both dedup checks.
//!
//! Events go to a `capture_stack` that acknowledges every batch at once, so they cost only
//! the client side.

use std::{
    convert::Infallible,
    hint::black_box,
    time::{Duration, Instant},
};

use criterion::{criterion_group, criterion_main, Criterion};
use posthog_tower::{
    capture::EncodedBatch,
    flags::FlagsRequest,
    testing::{MockPostHog, MockResponse},
    PostHog,
};
use serde_json::json;

/// Flags in the snapshot used for the access benches: each access in a timed run uses a
/// flag not accessed before.
const FLAGS: usize = 20_000;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

fn client(rt: &tokio::runtime::Runtime, mock: &MockPostHog) -> PostHog {
    rt.block_on(async {
        PostHog::builder("phc_bench")
            .host(mock.url())
            .max_queue_size(1_000_000)
            .capture_stack(tower::service_fn(|_batch: EncodedBatch| async {
                Ok::<_, Infallible>(())
            }))
            .build()
            .expect("client")
    })
}

fn bench(c: &mut Criterion) {
    let rt = runtime();
    let mock = rt.block_on(MockPostHog::start()).expect("mock");
    let flags: serde_json::Map<String, serde_json::Value> = (0..FLAGS)
        .map(|i| {
            (
                format!("flag-{i}"),
                json!({"key": format!("flag-{i}"), "enabled": true,
                       "reason": {"description": "Matched condition set 1"},
                       "metadata": {"id": i, "version": 3, "payload": null}}),
            )
        })
        .collect();
    mock.set_default(
        "/flags/",
        MockResponse::json(200, json!({"flags": flags, "requestId": "bench"})),
    );
    let posthog = client(&rt, &mock);

    // A realistic single-flag answer for the end-to-end bench.
    let small = rt.block_on(MockPostHog::start()).expect("mock");
    small.set_default(
        "/flags/",
        MockResponse::json(
            200,
            json!({"flags": {"new-checkout": {"key": "new-checkout", "enabled": true, "variant": "blue",
                   "reason": {"code": "condition_match", "condition_index": 0, "description": "Matched condition set 1"},
                   "metadata": {"id": 12, "version": 4, "payload": "{\"color\":\"#00f\"}"}}},
                   "errorsWhileComputingFlags": false, "requestId": "bench", "evaluatedAt": 1764000000000i64}),
        ),
    );
    let remote = client(&rt, &small);

    let mut group = c.benchmark_group("flags");
    group.measurement_time(Duration::from_secs(5));
    group.bench_function("get_feature_flag_loopback", |b| {
        b.to_async(&rt).iter(|| async {
            black_box(remote.get_feature_flag("new-checkout", "user-1").await.ok());
        })
    });

    // One snapshot per timed run, evaluated outside the timing; each access is a new flag.
    let mut person = 0u64;
    group.bench_function("first_access", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            let mut done = 0;
            while done < iters {
                person += 1;
                let request = FlagsRequest::new(format!("person-{person}"));
                let snapshot = rt.block_on(posthog.evaluate_flags(request));
                let n = (iters - done).min(FLAGS as u64);
                let keys: Vec<String> = (0..n).map(|i| format!("flag-{i}")).collect();
                let start = Instant::now();
                for key in &keys {
                    black_box(snapshot.is_enabled(key));
                }
                total += start.elapsed();
                done += n;
            }
            total
        })
    });
    // The same first reads without the capture queue: the dedup check and building the
    // `$feature_flag_called` event only.
    let mut person = 0u64;
    group.bench_function("first_access_event_build_only", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            let mut done = 0;
            while done < iters {
                person += 1;
                let n = (iters - done).min(FLAGS as u64);
                let bench =
                    posthog_tower::flags::FlagCalledBench::new(&format!("p-{person}"), n as usize);
                let keys: Vec<String> = (0..n).map(|i| format!("flag-{i}")).collect();
                let start = Instant::now();
                for key in &keys {
                    black_box(bench.access(key));
                }
                total += start.elapsed();
                done += n;
            }
            total
        })
    });
    // The same for experiment flags: both events built.
    let mut person = 0u64;
    group.bench_function("first_access_experiment_build_only", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            let mut done = 0;
            while done < iters {
                person += 1;
                let n = (iters - done).min(FLAGS as u64);
                let bench = posthog_tower::flags::FlagCalledBench::new_experiments(
                    &format!("p-{person}"),
                    n as usize,
                );
                let keys: Vec<String> = (0..n).map(|i| format!("flag-{i}")).collect();
                let start = Instant::now();
                for key in &keys {
                    black_box(bench.access(key));
                }
                total += start.elapsed();
                done += n;
            }
            total
        })
    });
    let experiments = posthog_tower::flags::FlagCalledBench::new_experiments("p-repeat", 10);
    experiments.access("flag-7");
    group.bench_function("repeat_access_experiment", |b| {
        b.iter(|| black_box(experiments.access("flag-7")))
    });
    let snapshot = rt.block_on(posthog.evaluate_flags("person-repeat"));
    snapshot.is_enabled("flag-7");
    group.bench_function("repeat_access", |b| {
        b.iter(|| black_box(snapshot.is_enabled("flag-7")))
    });
    group.finish();
    rt.block_on(posthog.shutdown(Duration::from_secs(5)));
    let stats = posthog.stats();
    assert_eq!(
        stats.dropped.total(),
        0,
        "no event may be refused: {stats:?}"
    );
}

criterion_group!(benches, bench);
criterion_main!(benches);
