//! Cost of `PostHog::capture` and of building the event it takes.
//!
//! ```text
//! cargo bench --bench capture                    # everything
//! cargo bench --bench capture -- capture/        # one group
//! ```
//!
//! - `capture/10_props`: `PostHog::capture(event)` alone, for an event with 10 typical
//!   properties built outside the timed section. The client's worker runs on a one-thread
//!   tokio runtime and drains the queue into a `service_fn` that acknowledges every batch at
//!   once (the client-side pipeline without HTTP); before each timed chunk of
//!   [`CHUNK`] captures the bench waits until the queue is empty, so the queue never fills
//!   (checked at the end: any rejection panics).
//! - `capture/10_props_worker_paused`: the same, but the worker only runs between the timed
//!   chunks (driven by the bench thread on a current-thread runtime), so captures neither wake
//!   it nor share cache lines with it: the cost of validating, stamping and queueing alone.
//! - `event/build_10_props`: building that event, for context (its drop is not timed).
//! - `exception/chain_3` and `exception/chain_3_no_stack`: the `$exception` event of a
//!   three-error chain, with the stack at the call (walked and symbolized, about 20 frames
//!   here) and the loaded images, or without (what `capture_exception` builds before queueing);
//!   `exception/chain_3_deep`, the same with 10 more frames (about 30).
//!
//! After criterion, unless run with `--test`/`--list` or filtered to something else,
//! `capture/latency` times every call of a few hundred thousand captures one by one and
//! prints their percentiles (criterion's figures are means of many calls; the issue's
//! target is a p50).

use std::{
    convert::Infallible,
    hint::black_box,
    time::{Duration, Instant},
};

use criterion::{criterion_group, Criterion};
use posthog_tower::{
    capture::{EncodedBatch, Worker},
    Event, PostHog,
};

/// Captures per timed chunk: well below the default queue size (10 000).
const CHUNK: usize = 1024;

/// An event with 10 typical properties: strings, integers, floats and booleans.
fn event_10_props(i: u64) -> Event {
    Event::new("checkout completed", format!("user-{}", i % 10_000))
        .property("plan", "pro")
        .property("currency", "EUR")
        .property("$current_url", "https://shop.example.com/checkout/payment")
        .property("browser", "Firefox")
        .property("items", i % 7 + 1)
        .property("account_age_days", 412)
        .property("amount", 49.90)
        .property("discount", 0.15)
        .property("first_purchase", i % 3 == 0)
        .property("express_shipping", false)
}

/// A client whose worker runs on its own runtime thread and acknowledges every batch at once.
struct Bench {
    posthog: PostHog,
    runtime: tokio::runtime::Runtime,
}

impl Bench {
    fn new() -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("tokio runtime");
        let (posthog, worker) = PostHog::builder("phc_bench")
            .host("http://127.0.0.1:9")
            .capture_stack(tower::service_fn(|_batch: EncodedBatch| async {
                Ok::<_, Infallible>(())
            }))
            .build_pair()
            .expect("client");
        runtime.spawn(worker);
        Bench { posthog, runtime }
    }

    /// Waits (untimed) until the worker has taken everything out of the queue.
    fn wait_drained(&self) {
        // A flush takes everything out of the queue (the worker is not woken for each event).
        let posthog = self.posthog.clone();
        self.runtime.block_on(async move { posthog.flush().await });
    }

    /// Delivers what is left and stops the worker.
    fn finish(self) {
        let posthog = self.posthog;
        self.runtime
            .block_on(async move { posthog.shutdown(Duration::from_secs(30)).await });
    }

    /// Panics if any capture was refused (the queue must never fill during the bench).
    fn check(&self) {
        let stats = self.posthog.stats();
        assert_eq!(
            stats.dropped.total(),
            0,
            "captures were refused during the bench: {stats:?}"
        );
    }
}

fn capture(c: &mut Criterion) {
    let bench = Bench::new();
    let mut group = c.benchmark_group("capture");
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(3));
    let mut next = 0u64;
    group.bench_function("10_props", |b| {
        b.iter_custom(|iters| {
            let mut timed = Duration::ZERO;
            let mut left = iters;
            while left > 0 {
                let n = left.min(CHUNK as u64);
                let events: Vec<Event> = (next..next + n).map(event_10_props).collect();
                next += n;
                left -= n;
                bench.wait_drained();
                let start = Instant::now();
                for event in events {
                    // An error is counted in stats and checked below.
                    let _ = black_box(bench.posthog.capture(black_box(event)));
                }
                timed += start.elapsed();
            }
            timed
        });
    });
    group.bench_function("10_props_worker_paused", |b| {
        let mut paused = Paused::new();
        b.iter_custom(|iters| {
            let mut timed = Duration::ZERO;
            let mut left = iters;
            while left > 0 {
                let n = left.min(CHUNK as u64);
                let events: Vec<Event> = (next..next + n).map(event_10_props).collect();
                next += n;
                left -= n;
                paused.drain();
                let start = Instant::now();
                for event in events {
                    let _ = black_box(paused.posthog.capture(black_box(event)));
                }
                timed += start.elapsed();
            }
            timed
        });
        paused.finish();
    });
    group.finish();
    bench.check();
    bench.finish();
}

/// A client whose worker runs only inside [`Paused::drain`], on the calling thread.
struct Paused {
    posthog: PostHog,
    worker: Worker,
    runtime: tokio::runtime::Runtime,
}

impl Paused {
    fn new() -> Self {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        let (posthog, worker) = PostHog::builder("phc_bench")
            .host("http://127.0.0.1:9")
            .capture_stack(tower::service_fn(|_batch: EncodedBatch| async {
                Ok::<_, Infallible>(())
            }))
            .build_pair()
            .expect("client");
        Paused {
            posthog,
            worker,
            runtime,
        }
    }

    /// Runs the worker until it has taken everything out of the queue.
    fn drain(&mut self) {
        let Paused {
            posthog,
            worker,
            runtime,
        } = self;
        runtime.block_on(async {
            tokio::select! {
                () = worker => panic!("the worker stopped"),
                _ = posthog.flush() => {}
            }
        });
    }

    /// Checks nothing was refused, delivers what is left and stops the worker.
    fn finish(self) {
        let Paused {
            posthog,
            worker,
            runtime,
        } = self;
        let stats = posthog.stats();
        assert_eq!(
            stats.dropped.total(),
            0,
            "captures were refused during the bench: {stats:?}"
        );
        runtime.block_on(async move {
            let shutdown = posthog.shutdown(Duration::from_secs(30));
            let (_, ()) = tokio::join!(shutdown, worker);
        });
    }
}

fn event(c: &mut Criterion) {
    let mut group = c.benchmark_group("event");
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(3));
    let mut i = 0u64;
    group.bench_function("build_10_props", |b| {
        b.iter_with_large_drop(|| {
            i += 1;
            event_10_props(black_box(i))
        });
    });
    group.finish();
}

/// Per-call latency of `capture`: every call timed on its own, percentiles printed; with the
/// worker running on its own thread, then paused as in `capture/10_props_worker_paused`.
fn capture_latency() {
    const SAMPLES: usize = 300 * CHUNK;
    // The cost of the timer itself, to read the figures against.
    let mut overhead: Vec<u64> = (0..100_000)
        .map(|_| {
            let t = Instant::now();
            black_box(());
            t.elapsed().as_nanos() as u64
        })
        .collect();
    overhead.sort_unstable();
    let pct = |v: &[u64], p: f64| v[((v.len() - 1) as f64 * p).round() as usize];
    println!(
        "capture/latency: {SAMPLES} calls timed one by one, 10 properties \
         (timer overhead p50 {} ns, included below)",
        pct(&overhead, 0.5)
    );
    // Times the captures of one chunk, recording them after the first (warm-up) round.
    fn timed_chunk(posthog: &PostHog, events: Vec<Event>, record: bool, out: &mut Vec<u64>) {
        for event in events {
            let t = Instant::now();
            let _ = black_box(posthog.capture(black_box(event)));
            let ns = t.elapsed().as_nanos() as u64;
            if record {
                out.push(ns);
            }
        }
    }
    for paused in [false, true] {
        let mut latencies = Vec::with_capacity(SAMPLES);
        let mut next = 0u64;
        let mut chunk = || {
            let events: Vec<Event> = (next..next + CHUNK as u64).map(event_10_props).collect();
            next += CHUNK as u64;
            events
        };
        if paused {
            let mut bench = Paused::new();
            for round in 0..=SAMPLES / CHUNK {
                let events = chunk();
                bench.drain();
                timed_chunk(&bench.posthog, events, round > 0, &mut latencies);
            }
            bench.finish();
        } else {
            let bench = Bench::new();
            for round in 0..=SAMPLES / CHUNK {
                let events = chunk();
                bench.wait_drained();
                timed_chunk(&bench.posthog, events, round > 0, &mut latencies);
            }
            bench.check();
            bench.finish();
        }
        latencies.sort_unstable();
        let mean = latencies.iter().sum::<u64>() as f64 / latencies.len() as f64;
        println!(
            "  {:<14} p50 {} ns | p90 {} ns | p99 {} ns | p99.9 {} ns | max {} ns | mean {:.0} ns",
            if paused {
                "worker paused"
            } else {
                "worker running"
            },
            pct(&latencies, 0.5),
            pct(&latencies, 0.9),
            pct(&latencies, 0.99),
            pct(&latencies, 0.999),
            latencies[latencies.len() - 1],
            mean
        );
    }
}

/// A three-error chain: an outer error, its source, and that one's.
#[derive(Debug)]
struct Chain(u8);

impl std::fmt::Display for Chain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "level {} failed", self.0)
    }
}

impl std::error::Error for Chain {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        const LEVELS: [Chain; 3] = [Chain(0), Chain(1), Chain(2)];
        LEVELS.get(usize::from(self.0) + 1).map(|e| e as _)
    }
}

fn exception(c: &mut Criterion) {
    use posthog_tower::exception::Exception;
    let mut group = c.benchmark_group("exception");
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(3));
    let error = Chain(0);
    group.bench_function("chain_3", |b| {
        b.iter_with_large_drop(|| Exception::new(black_box(&error)).into_event());
    });
    // The same from 10 application frames deeper: a 30-frame stack, about what a handler's
    // error has behind a server.
    group.bench_function("chain_3_deep", |b| {
        b.iter_with_large_drop(|| deep(10, black_box(&error)).into_event());
    });
    group.bench_function("chain_3_no_stack", |b| {
        b.iter_with_large_drop(|| Exception::without_stack(black_box(&error)).into_event());
    });
    group.finish();
}

/// `Exception::new` `depth` frames further down the stack.
#[inline(never)]
fn deep(depth: u32, error: &Chain) -> posthog_tower::exception::Exception {
    if depth == 0 {
        return posthog_tower::exception::Exception::new(error);
    }
    let exception = deep(black_box(depth - 1), error);
    black_box(exception)
}

criterion_group!(benches, capture, event, exception);

fn main() {
    benches();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let listing_or_testing = args.iter().any(|a| a == "--test" || a == "--list");
    // A filter is an argument that is neither a flag nor the value of an option such as
    // `--measurement-time 5` (cargo itself passes the flag `--bench`).
    let filter = args.iter().enumerate().find_map(|(i, a)| {
        let after_option = i > 0 && args[i - 1].starts_with("--") && args[i - 1] != "--bench";
        (!a.starts_with('-') && !after_option).then_some(a.as_str())
    });
    let filtered_out = filter.is_some_and(|f| !"capture/latency".contains(f));
    if !listing_or_testing && !filtered_out {
        capture_latency();
    }
    Criterion::default().configure_from_args().final_summary();
}
