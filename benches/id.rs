//! Cost of the UUIDv7 that `capture()` stamps on every event, against `uuid::Uuid::now_v7()`.
//!
//! ```text
//! cargo bench --bench id
//! cargo bench --bench id -- --warm-up-time 1 --measurement-time 3   # short
//! ```
//!
//! - `id/new_v7`: the crate's generator, reading the clock (per-thread counter, no lock).
//! - `id/new_v7_from`: the same with the clock reading given, as `capture()` calls it (one
//!   reading serves the event's timestamp and its uuid); the millisecond advances every 1024
//!   ids.
//! - `id/uuid_now_v7`: `uuid::Uuid::now_v7()`, reading the clock (one counter for the
//!   process behind a mutex, random bits from the OS).
//! - `id_2_threads/*`: `new_v7` and `Uuid::now_v7()` called on two threads at once; the time
//!   is the wall time for each thread to make one id.
//!
//! The crate's generator is private; this bench compiles its source file as a module of its
//! own, so it times the code `capture()` runs.

use std::{
    hint::black_box,
    time::{Duration, Instant},
};

use criterion::{criterion_group, criterion_main, Criterion};
use uuid::Uuid;

// The bench uses only the v7 generators, and the file's test module (compiled here, as
// benches build with `cfg(test)`) has no tests to run.
#[allow(dead_code, unused_imports)]
#[path = "../src/id.rs"]
mod id;

/// 2025-01-02T03:04:05Z, in Unix milliseconds.
const START_MS: u64 = 1_735_787_045_000;

fn single_thread(c: &mut Criterion) {
    let mut group = c.benchmark_group("id");
    group.bench_function("new_v7", |b| b.iter(id::new_v7));
    let mut i = 0u64;
    group.bench_function("new_v7_from", |b| {
        b.iter(|| {
            i += 1;
            id::new_v7_from(black_box(START_MS + (i >> 10)))
        })
    });
    group.bench_function("uuid_now_v7", |b| b.iter(Uuid::now_v7));
    group.finish();
}

/// The wall time for each of two threads to make `iters` ids with `make`.
fn on_two_threads(iters: u64, make: fn() -> Uuid) -> Duration {
    let start = Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..2 {
            scope.spawn(move || {
                for _ in 0..iters {
                    black_box(make());
                }
            });
        }
    });
    start.elapsed()
}

fn two_threads(c: &mut Criterion) {
    let mut group = c.benchmark_group("id_2_threads");
    group.bench_function("new_v7", |b| {
        b.iter_custom(|iters| on_two_threads(iters, id::new_v7))
    });
    group.bench_function("uuid_now_v7", |b| {
        b.iter_custom(|iters| on_two_threads(iters, Uuid::now_v7))
    });
    group.finish();
}

criterion_group!(benches, single_thread, two_threads);
criterion_main!(benches);
