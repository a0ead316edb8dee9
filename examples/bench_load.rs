//! Load benchmark: many producers capture as fast as they can, and we check that nothing is
//! lost, that the counters add up, and that memory stays within a bound set by the queue size.
//!
//! A measurement tool, not an example to copy: `BENCHMARKS.md` has the method and the
//! current figures, and the README lists the examples to start from.
//!
//! ```text
//! cargo run --release --example bench_load -- --mode error|wait [--events N] [--producers N]
//!     [--max-queue-size N] [--max-in-flight N] [--flush-at N] [--gzip] [--threads N]
//!     [--yield-every N]
//! ```
//!
//! `--producers` tokio tasks (default 8) capture `--events` events in total (default
//! 2 000 000, 10 properties each, built just before capture) on a multi-thread runtime
//! (`--threads`, default one per core). Each producer yields to the scheduler after every
//! `--yield-every` captures (default 1), as a request handler does between requests: 8 tasks
//! that never yield would keep both threads of a 2-core machine to themselves, and the worker
//! could not run until they finished. The two queue modes:
//!
//! - `--mode error`: `capture()`. A full queue is an error, `CaptureError::QueueFull`; the
//!   event is counted as rejected and the producer goes on with the next one.
//! - `--mode wait`: `capture_wait()`, which waits for room. Nothing is rejected.
//!
//! The events go to a sink on loopback that answers `POST /batch/` with 200 once it read the
//! body, and counts events by their `"uuid":` keys. As in `bench_capture`, the sink is this
//! binary re-executed with `--sink`, a separate process, so neither its CPU nor its memory is
//! counted here.
//!
//! # What it reports
//!
//! - delivered events/s: `stats().delivered` over the wall time from the first capture to the
//!   end of the `flush()` that follows the last one;
//! - events rejected (`QueueFull`), and the `stats()` accounting: `captured == delivered +
//!   failed + dropped` (dropped by the worker: `before_send`, hook panics, too large once
//!   encoded) and `rejected == dropped.queue_full`, and the sink's own count;
//! - memory: the peak RSS of the process (`VmHWM` in `/proc/self/status`), and that peak less
//!   the RSS read just before the client was built (`VmRSS`, with the runtime already up);
//! - with `--count-heap`, also the peak of live heap bytes (a counting global allocator: one
//!   shared atomic per allocation, so take throughput figures from runs without it).
//!
//! The run fails (exit code 1) unless every accepted event was delivered and counted by the
//! sink, the counters add up, and the peak stayed within the bound below.
//!
//! # The memory bound
//!
//! The client holds events in three places, each bounded by a setting:
//!
//! 1. the queue: at most `max_queue_size` events (Q), each encoded by `capture` as the JSON it
//!    is sent as: `h` bytes of heap each (its buffer), `e` bytes of RSS once the allocator's
//!    per-allocation overhead is added; and the ring they wait in, allocated when the client
//!    is built: `S = (Q + 64) × 64` bytes (a slot per event and per flush request);
//! 2. the worker's batches not yet sending: the open batch, and the closed batches waiting for
//!    a sending slot. The worker takes at most 256 events from the queue at a time and takes
//!    none while a closed batch waits, so at most `R = ceil((flush_at - 1 + 256) / flush_at)`
//!    wait (3 with `flush_at = 100`);
//! 3. the batches being sent: at most `max_in_flight` (M), each held twice while its request
//!    is in progress (the encoded events, and the request body: the same bytes inside the
//!    envelope, or gzipped).
//!
//! A batch holds `B = min(flush_at × (j + 21), max_batch_bytes + 20 × flush_at)` bytes, where
//! `j` is an event's JSON size (plus a comma; 20 bytes of uuid and offset per event on the
//! side). Live heap is therefore bounded by
//!
//! ```text
//! peak heap ≤ S + Q × h + (2 × M + R + 1) × B + F_heap      F_heap = 1 MiB + M × 128 KiB
//! ```
//!
//! where `F_heap` covers what does not grow with the load (tokio's tasks, one HTTP/1.1
//! connection per sending slot with hyper's buffers; about 0.4 MiB measured). The RSS adds
//! the allocator's behaviour: glibc gives each thread its own arena (up to 8 per core, or
//! `MALLOC_ARENA_MAX`), an event is freed into the arena of the thread that built it, and an
//! arena's footprint follows its own high-water mark. The queue is a moving window of events
//! built on every runtime thread, and each of the A arenas those threads use can come to
//! hold a whole queue's worth at some moment, so
//!
//! ```text
//! peak RSS ≤ baseline + S + A × Q × e + (2 × M + R + 1) × B + F   F = 8 MiB + M × 256 KiB
//! ```
//!
//! with A = the runtime threads (capped by `MALLOC_ARENA_MAX`), and `F` also covering the
//! runtime threads' stacks and the allocator's slack (2.5–3 MiB measured with a 100-event
//! queue). With `MALLOC_ARENA_MAX=1` the peak falls to about `Q × e` above baseline plus `F`.
//!
//! `e` and `h` are measured, not assumed: before the run, this binary is re-executed with
//! `--calibrate N` (a fresh process, so its allocations do not inflate this one's peak),
//! which builds a client whose worker is never polled, captures N = 50 000 events into its
//! queue, and reports the RSS growth and the live heap growth (counting global allocator) per
//! event. `j` is the sink's JSON bytes per event, measured during the run. Without measuring,
//! `B ≤ max_batch_bytes + 20 × flush_at` bounds any batch.

use std::{
    alloc::{GlobalAlloc, Layout, System},
    process::{Command, ExitCode, Stdio},
    sync::atomic::{AtomicBool, AtomicI64, Ordering},
    time::{Duration, Instant},
};

/// Bytes of one slot of the queue's ring (a queued message and the ring's stamp), and the
/// slots it has besides the events' (for flush requests).
const RING_SLOT_BYTES: f64 = 64.0;
const RING_EXTRA_SLOTS: f64 = 64.0;

use posthog_tower::{CaptureError, Event, PostHog};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

const MIB: f64 = 1024.0 * 1024.0;

/// Events the calibration process queues.
const CALIBRATION_EVENTS: u64 = 50_000;

/// The worker takes at most this many events from the queue at once (`RECV_CHUNK` in
/// `src/capture/batch/worker.rs`).
const WORKER_CHUNK: u64 = 256;

// ===== a counting allocator, on only in the calibration process =====

/// Counts live heap bytes when `COUNTING` is set; otherwise adds one relaxed load per call.
struct Counting;

static COUNTING: AtomicBool = AtomicBool::new(false);
static LIVE: AtomicI64 = AtomicI64::new(0);
static PEAK_LIVE: AtomicI64 = AtomicI64::new(0);

fn count(delta: i64) {
    if COUNTING.load(Ordering::Relaxed) {
        let live = LIVE.fetch_add(delta, Ordering::Relaxed) + delta;
        if delta > 0 {
            PEAK_LIVE.fetch_max(live, Ordering::Relaxed);
        }
    }
}

// SAFETY: every call is forwarded unchanged to the system allocator; we only count.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count(layout.size() as i64);
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        count(-(layout.size() as i64));
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count(new_size as i64 - layout.size() as i64);
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

// ===== the workload =====

/// An event with 10 typical properties (the same as in `bench_capture` and `benches/capture.rs`).
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

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Error,
    Wait,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Error => "error",
            Mode::Wait => "wait",
        }
    }
}

struct Args {
    mode: Mode,
    events: u64,
    producers: u64,
    threads: Option<usize>,
    max_queue_size: Option<usize>,
    max_in_flight: Option<usize>,
    flush_at: Option<usize>,
    gzip: bool,
    yield_every: u64,
    count_heap: bool,
}

const USAGE: &str = "usage: bench_load --mode error|wait [--events N] [--producers N] \
                     [--max-queue-size N] [--max-in-flight N] [--flush-at N] [--gzip] \
                     [--threads N] [--yield-every N] [--count-heap]";

fn parse_args(args: &[String]) -> Result<Args, String> {
    let mut parsed = Args {
        mode: Mode::Error,
        events: 2_000_000,
        producers: 8,
        threads: None,
        max_queue_size: None,
        max_in_flight: None,
        flush_at: None,
        gzip: false,
        yield_every: 1,
        count_heap: false,
    };
    let mut mode = None;
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let mut value = |name: &str| -> Result<u64, String> {
            let v = it.next().ok_or_else(|| format!("{name} needs a value"))?;
            let v: u64 = v
                .replace('_', "")
                .parse()
                .map_err(|_| format!("{name}: not a number: {v}"))?;
            if v == 0 {
                return Err(format!("{name} must be at least 1"));
            }
            Ok(v)
        };
        match arg.as_str() {
            "--events" => parsed.events = value("--events")?,
            "--producers" => parsed.producers = value("--producers")?,
            "--threads" => parsed.threads = Some(value("--threads")? as usize),
            "--max-queue-size" => parsed.max_queue_size = Some(value("--max-queue-size")? as usize),
            "--max-in-flight" => parsed.max_in_flight = Some(value("--max-in-flight")? as usize),
            "--flush-at" => parsed.flush_at = Some(value("--flush-at")? as usize),
            "--yield-every" => parsed.yield_every = value("--yield-every")?,
            "--gzip" => parsed.gzip = true,
            "--count-heap" => parsed.count_heap = true,
            "--mode" => {
                mode = Some(match it.next().map(String::as_str) {
                    Some("error") => Mode::Error,
                    Some("wait") => Mode::Wait,
                    other => return Err(format!("--mode error|wait, not {other:?}")),
                })
            }
            "-h" | "--help" => return Err(USAGE.to_owned()),
            other => return Err(format!("unknown argument {other}\n{USAGE}")),
        }
    }
    parsed.mode = mode.ok_or_else(|| format!("--mode is required\n{USAGE}"))?;
    Ok(parsed)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("--sink") => {
            return match sink::run() {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("sink: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Some("--calibrate") => {
            let n = args
                .get(1)
                .and_then(|n| n.parse().ok())
                .unwrap_or(CALIBRATION_EVENTS);
            return match calibrate(n) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("calibrate: {e}");
                    ExitCode::FAILURE
                }
            };
        }
        _ => {}
    }
    let args = match parse_args(&args) {
        Ok(args) => args,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    match client(&args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("bench_load: {e}");
            ExitCode::FAILURE
        }
    }
}

// ===== memory =====

/// A `kB` field of `/proc/self/status` (`VmRSS`, `VmHWM`), in bytes.
fn proc_status_bytes(field: &str) -> u64 {
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return 0;
    };
    status
        .lines()
        .find_map(|line| {
            let rest = line.strip_prefix(field)?.strip_prefix(':')?;
            rest.trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<u64>()
                .ok()
        })
        .map_or(0, |kb| kb * 1024)
}

/// Bytes per queued event, as measured by a `--calibrate` process.
struct PerEvent {
    /// RSS growth per event.
    rss: f64,
    /// Live heap bytes per event (requested sizes).
    heap: f64,
}

/// Fills the queue of a client whose worker never runs and prints `rss_bytes heap_bytes` per
/// event on stdout.
fn calibrate(n: u64) -> Result<(), BoxError> {
    COUNTING.store(true, Ordering::Relaxed);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        // Nothing listens there; nothing is sent anyway, since the worker is never polled.
        let (posthog, worker) = PostHog::builder("phc_bench_load")
            .host("http://127.0.0.1:9")
            .max_queue_size(n as usize)
            .build_pair()?;
        // One event first, so one-time allocations (the channel's first block, the clock)
        // are not counted.
        posthog.capture(event_10_props(n))?;
        let rss = proc_status_bytes("VmRSS");
        let heap = LIVE.load(Ordering::Relaxed);
        for i in 0..n - 1 {
            posthog.capture(event_10_props(i))?;
        }
        let rss = proc_status_bytes("VmRSS").saturating_sub(rss) as f64 / (n - 1) as f64;
        let heap = (LIVE.load(Ordering::Relaxed) - heap) as f64 / (n - 1) as f64;
        println!("{rss:.1} {heap:.1}");
        // The worker (holding the receiver) lives until here, so no event was refused.
        drop(worker);
        Ok::<_, BoxError>(())
    })
}

fn run_calibration() -> Result<PerEvent, BoxError> {
    let output = Command::new(std::env::current_exe()?)
        .args(["--calibrate", &CALIBRATION_EVENTS.to_string()])
        .stderr(Stdio::inherit())
        .output()?;
    if !output.status.success() {
        return Err("the calibration process failed".into());
    }
    let text = String::from_utf8(output.stdout)?;
    let mut values = text.split_whitespace().map(str::parse::<f64>);
    let mut next =
        || -> Result<f64, BoxError> { Ok(values.next().ok_or("short calibration output")??) };
    Ok(PerEvent {
        rss: next()?,
        heap: next()?,
    })
}

/// How many glibc malloc arenas the runtime threads allocate events from: one per thread,
/// up to `MALLOC_ARENA_MAX` (8 per core by default).
fn arenas(threads: usize) -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let max = std::env::var("MALLOC_ARENA_MAX")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|&m| m > 0)
        .unwrap_or(8 * cores);
    threads.min(max).max(1)
}

// ===== client side =====

/// The flush and shutdown reports together.
struct Report {
    delivered: u64,
    failed: u64,
    dropped: u64,
}

/// What one producer did.
#[derive(Default)]
struct Produced {
    accepted: u64,
    rejected: u64,
    errors: u64,
}

fn client(args: &Args) -> Result<bool, BoxError> {
    let sink = sink::Process::start()?;
    let per_event = run_calibration()?;

    let threads = args.threads.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()?;

    let queue_size = args.max_queue_size.unwrap_or(10_000);
    let in_flight = args.max_in_flight.unwrap_or(8);
    let flush_at = args.flush_at.unwrap_or(100);
    let max_batch_bytes: u64 = 5 * 1024 * 1024;
    let builder = PostHog::builder("phc_bench_load")
        .host(format!("http://127.0.0.1:{}", sink.port))
        .gzip(args.gzip)
        .max_queue_size(queue_size)
        .max_in_flight(in_flight)
        .flush_at(flush_at);

    let n = args.events;
    let producers = args.producers;
    let mode = args.mode;
    let yield_every = args.yield_every;
    if args.count_heap {
        COUNTING.store(true, Ordering::Relaxed);
    }
    let (baseline, live0, produced, wall, stats, report) = runtime.block_on(async move {
        let baseline = proc_status_bytes("VmRSS");
        let live0 = LIVE.load(Ordering::Relaxed);
        PEAK_LIVE.store(live0, Ordering::Relaxed);
        let posthog = builder.build()?;
        let start = Instant::now();
        let mut tasks = Vec::new();
        for p in 0..producers {
            let posthog = posthog.clone();
            tasks.push(tokio::spawn(async move {
                let mut done = Produced::default();
                let mut since_yield = 0;
                // Producer p captures events p, p + P, p + 2P, ...
                for i in (p..n).step_by(producers as usize) {
                    let event = event_10_props(i);
                    let result = match mode {
                        Mode::Error => posthog.capture(event),
                        Mode::Wait => posthog.capture_wait(event).await,
                    };
                    match result {
                        Ok(_) => done.accepted += 1,
                        Err(CaptureError::QueueFull { .. }) => done.rejected += 1,
                        Err(_) => done.errors += 1,
                    }
                    since_yield += 1;
                    if since_yield == yield_every {
                        since_yield = 0;
                        tokio::task::yield_now().await;
                    }
                }
                done
            }));
        }
        let mut produced = Produced::default();
        for task in tasks {
            let done = task.await?;
            produced.accepted += done.accepted;
            produced.rejected += done.rejected;
            produced.errors += done.errors;
        }
        let flushed = posthog.flush().await;
        let wall = start.elapsed();
        let last = posthog.shutdown(Duration::from_secs(30)).await;
        let stats = posthog.stats();
        let report = Report {
            delivered: flushed.delivered + last.delivered,
            failed: flushed.failed + last.failed,
            dropped: flushed.dropped + last.dropped,
        };
        Ok::<_, BoxError>((baseline, live0, produced, wall, stats, report))
    })?;
    drop(runtime);
    let peak = proc_status_bytes("VmHWM");
    // Counted from just before the client was built.
    let peak_heap = (PEAK_LIVE.load(Ordering::Relaxed) - live0).max(0) as f64;

    let sink_count = sink.counters()?;
    drop(sink);

    // The bound (see the module docs).
    let json_per_event = sink_count.json_bytes as f64 / sink_count.events.max(1) as f64;
    let flush_at = flush_at as u64;
    let batch_bytes =
        (flush_at as f64 * (json_per_event + 21.0)).min((max_batch_bytes + 20 * flush_at) as f64);
    let waiting = (flush_at - 1 + WORKER_CHUNK).div_ceil(flush_at);
    let batches = 2 * in_flight as u64 + waiting + 1;
    let fixed = 8.0 * MIB + in_flight as f64 * 256.0 * 1024.0;
    let arenas = arenas(threads);
    let queue_term = queue_size as f64 * per_event.rss;
    let batch_term = batches as f64 * batch_bytes;
    let ring = (queue_size as f64 + RING_EXTRA_SLOTS) * RING_SLOT_BYTES;
    let bound = baseline as f64 + ring + arenas as f64 * queue_term + batch_term + fixed;
    let within = (peak as f64) <= bound;
    // The same without the allocator: requested bytes only.
    let fixed_heap = MIB + in_flight as f64 * 128.0 * 1024.0;
    let heap_bound = ring + queue_size as f64 * per_event.heap + batch_term + fixed_heap;
    let heap_within = peak_heap <= heap_bound;

    let secs = wall.as_secs_f64();
    let worker_dropped = stats.dropped.before_send
        + stats.dropped.hook_panicked
        + stats.dropped.too_large
        + stats.dropped.invalid;
    let adds_up = stats.captured == stats.delivered + stats.failed + worker_dropped;
    let rejected_match = produced.rejected == stats.dropped.queue_full;

    println!(
        "bench_load: {n} events with 10 properties, {producers} producers ({}), {threads} runtime \
         threads, yield every {yield_every} capture(s)",
        match mode {
            Mode::Error => "capture(); QueueFull counted as rejected",
            Mode::Wait => "capture_wait()",
        }
    );
    println!(
        "settings: max_queue_size={queue_size} max_in_flight={in_flight} flush_at={flush_at} \
         gzip={} (defaults 10000 / 8 / 100 / off)",
        if args.gzip { "on" } else { "off" }
    );
    let mut rows = [
        ("wall time, first capture → flushed", format!("{secs:.3} s")),
        (
            "THROUGHPUT",
            format!("{:.0} delivered events/s", stats.delivered as f64 / secs),
        ),
        (
            "accepted / rejected (QueueFull) / other errors",
            format!(
                "{} / {} ({:.1}%) / {}",
                produced.accepted,
                produced.rejected,
                produced.rejected as f64 / n as f64 * 100.0,
                produced.errors
            ),
        ),
        (
            "stats: captured = delivered + failed + dropped",
            format!(
                "{} = {} + {} + {} ({})",
                stats.captured,
                stats.delivered,
                stats.failed,
                worker_dropped,
                if adds_up {
                    "adds up"
                } else {
                    "DOES NOT ADD UP"
                }
            ),
        ),
        (
            "stats: rejected = dropped.queue_full",
            format!(
                "{} = {} ({})",
                produced.rejected,
                stats.dropped.queue_full,
                if rejected_match { "ok" } else { "MISMATCH" }
            ),
        ),
        (
            "stats: requests, retries, final queue depth",
            format!(
                "{}, {}, {}",
                stats.requests, stats.retries, stats.queue_depth
            ),
        ),
        (
            "sink: events counted, requests",
            format!("{}, {}", sink_count.events, sink_count.requests),
        ),
        (
            "flush + shutdown reports",
            format!(
                "delivered {}, failed {}, dropped {}",
                report.delivered, report.failed, report.dropped
            ),
        ),
        (
            "RSS before the client was built",
            format!("{:.1} MiB", baseline as f64 / MIB),
        ),
        (
            "PEAK RSS (VmHWM)",
            format!(
                "{:.1} MiB, {:.1} MiB over the RSS before the client",
                peak as f64 / MIB,
                peak.saturating_sub(baseline) as f64 / MIB
            ),
        ),
        (
            "queued event: RSS / live heap (calibrated)",
            format!("{:.0} B / {:.0} B", per_event.rss, per_event.heap),
        ),
        (
            "batch: JSON per event, batch bytes B",
            format!("{json_per_event:.0} B, {:.0} KiB", batch_bytes / 1024.0),
        ),
        (
            "BOUND baseline + S + A×Q×e + (2M+R+1)×B + F",
            format!(
                "{:.1} + {:.1} MiB + {arenas}×{queue_size}×{:.0} B + {batches}×{:.0} KiB \
                 + {:.1} MiB = {:.1} MiB",
                baseline as f64 / MIB,
                ring / MIB,
                per_event.rss,
                batch_bytes / 1024.0,
                fixed / MIB,
                bound / MIB,
            ),
        ),
        (
            "peak RSS within the bound",
            format!(
                "{} (peak {:.1} MiB; over baseline: {:.0}% of the bound's)",
                if within { "yes" } else { "NO" },
                peak as f64 / MIB,
                (peak as f64 - baseline as f64) / (bound - baseline as f64) * 100.0
            ),
        ),
    ]
    .to_vec();
    if args.count_heap {
        rows.push((
            "PEAK LIVE HEAP (--count-heap)",
            format!("{:.1} MiB over the heap before the client", peak_heap / MIB),
        ));
        rows.push((
            "heap bound S + Q×h + (2M+R+1)×B + F_heap",
            format!(
                "{:.1} MiB + {queue_size}×{:.0} B + {:.1} MiB + {:.1} MiB = {:.1} MiB ({})",
                ring / MIB,
                per_event.heap,
                batch_term / MIB,
                fixed_heap / MIB,
                heap_bound / MIB,
                if heap_within { "within" } else { "OVER" }
            ),
        ));
    }
    for (name, value) in rows {
        println!("  {name:<50} {value}");
    }
    println!(
        "RESULT mode={} events={n} producers={producers} max_queue_size={queue_size} \
         max_in_flight={in_flight} flush_at={flush_at} gzip={} wall_s={secs:.3} \
         events_per_s={:.0} rejected={} baseline_mib={:.1} peak_mib={:.1} \
         peak_over_baseline_mib={:.1} bound_mib={:.1} within={within}",
        mode.name(),
        args.gzip,
        stats.delivered as f64 / secs,
        produced.rejected,
        baseline as f64 / MIB,
        peak as f64 / MIB,
        peak.saturating_sub(baseline) as f64 / MIB,
        bound / MIB,
    );

    let mut ok = true;
    let mut fail = |what: String| {
        eprintln!("FAILED: {what}");
        ok = false;
    };
    if produced.accepted + produced.rejected + produced.errors != n {
        fail(format!(
            "producers accounted for {} events, not {n}",
            produced.accepted + produced.rejected + produced.errors
        ));
    }
    if produced.errors != 0 {
        fail(format!(
            "{} captures failed other than QueueFull",
            produced.errors
        ));
    }
    if mode == Mode::Wait && produced.rejected != 0 {
        fail(format!(
            "capture_wait was refused {} times",
            produced.rejected
        ));
    }
    if stats.captured != produced.accepted {
        fail(format!(
            "stats.captured {} != accepted {}",
            stats.captured, produced.accepted
        ));
    }
    if stats.delivered != produced.accepted
        || stats.failed != 0
        || worker_dropped != 0
        || report.delivered != produced.accepted
    {
        fail(format!(
            "not every accepted event was delivered: accepted {}, delivered {} (reports: {}), \
             failed {}, dropped {worker_dropped}",
            produced.accepted, stats.delivered, report.delivered, stats.failed
        ));
    }
    if sink_count.events != stats.delivered {
        fail(format!(
            "the sink counted {} events, stats say {} delivered",
            sink_count.events, stats.delivered
        ));
    }
    if !adds_up {
        fail("captured != delivered + failed + dropped".to_owned());
    }
    if !rejected_match {
        fail("rejected != stats.dropped.queue_full".to_owned());
    }
    if args.count_heap && !heap_within {
        fail(format!(
            "peak live heap {:.1} MiB over the bound {:.1} MiB",
            peak_heap / MIB,
            heap_bound / MIB
        ));
    }
    if !within {
        fail(format!(
            "peak RSS {:.1} MiB over the bound {:.1} MiB",
            peak as f64 / MIB,
            bound / MIB
        ));
    }
    Ok(ok)
}

// ===== the sink =====

// The shared sink reports more than bench_load reads: its wire bytes and CPU time go unused.
#[allow(dead_code)]
#[path = "support/sink.rs"]
mod sink;
