//! Throughput benchmark: how many events per second the client delivers to a loopback
//! PostHog, and how much CPU it spends per event.
//!
//! A measurement tool, not an example to copy: `BENCHMARKS.md` has the method and the
//! current figures, and the README lists the examples to start from.
//!
//! ```text
//! cargo run --release --example bench_capture -- [--events N] [--gzip] [--flush-at N]
//!     [--producers N] [--max-in-flight N] [--max-queue-size N] [--threads N] [--mode wait|retry]
//!     [--prebuild]
//! cargo run --release --example bench_capture -- --burst [--events N] [--gzip] [--flush-at N]
//! ```
//!
//! Both take `--protocol v0|v1` (v0 by default) and `--compression none|gzip|deflate|br|zstd`
//! (over `--gzip`; anything but gzip needs v1), to compare the protocols and the encodings,
//! and `--spool`, which gives the client an on-disk spool (in a fresh temporary directory):
//! with PostHog up nothing is written to it, so the figures show what the spool costs the
//! capture path.
//!
//! ```text
//! cargo run --release --example bench_capture -- --replay [--events N] [--flush-at N]
//! ```
//!
//! `--replay` measures sending a spool: a first client, whose PostHog refuses connections
//! (a closed loopback port), spools `--events` events (default 100 000) and shuts down; then
//! a second client opens the spool against the sink and sends it. Reported: events replayed
//! per second (over the wall time from building the second client to the end of its
//! shutdown, which waits for the replay) and the client's CPU time per replayed event.
//!
//! `--burst` is what a user's script or a serverless function does: one loop on the main
//! thread (inside `block_on` of a multi-thread runtime, one worker thread per core) builds
//! `--events` events (default 200 000) and `capture()`s each, into a queue of that size, then
//! `flush()` and `shutdown()`. It reports delivered events per second (events over the wall
//! time from the first capture to the end of the shutdown), the process's CPU time per
//! delivered event (building the events included), the latency of each `capture()` call
//! (p50, p99, p99.9 and the slowest, timed one by one with `Instant`, whose own cost of about
//! 20-40 ns is included), and the peak RSS (`VmHWM`) against a bound of twice the events'
//! JSON plus 20 MiB.
//!
//! The sink is this same binary re-executed with `--sink`, in a separate process, so the CPU
//! time measured here is the client's only. It serves HTTP/1.1 on `127.0.0.1:<free port>`
//! (printed on its stdout), answers `POST /batch/` with 200 `{"status":1}` once it read the
//! body (gunzipped when `Content-Encoding: gzip`), counts the events by their `"uuid":` keys,
//! reports its totals and its own CPU time on `GET /count`, and exits when its stdin closes.
//!
//! The client captures `--events` events (default 1 000 000) with 10 properties each from
//! `--producers` tokio tasks (default 2) on a multi-thread runtime (`--threads`, default one
//! per core), as fast as it can, then `flush()`es. Two ways to handle a full queue:
//!
//! - `--mode wait` (default): `capture_wait`, which waits for room in the queue. The client's
//!   CPU time then counts the SDK's work, not producers spinning on a full queue.
//! - `--mode retry`: `capture`; on `QueueFull` the producer `yield_now()`s and retries the
//!   same event (rebuilt, since `capture` consumed it). The retries are counted.
//!
//! Producers build each event just before capturing it, unless `--prebuild`: then every event
//! is built before the clock starts (about 1.2 KB of memory per event), so the client's CPU
//! time is the SDK's alone (queueing, encoding, dropping the events, HTTP).
//!
//! Measured: wall time from the first capture to the end of the flush (the last delivery),
//! delivered events per second, the client process's CPU time (utime + stime of all its
//! threads, from `/proc/self/stat`, in clock ticks of `getconf CLK_TCK`, usually 10 ms) and
//! CPU per delivered event. Unless `--prebuild`, building the events is part of the client's
//! CPU time; its cost is measured beforehand on one thread (wall time of building 10 000
//! events, median of 20 rounds) and subtracted to estimate the SDK's own share. That estimate
//! leans high: building costs more while another thread frees the previous events (glibc's
//! allocator), and the difference lands on the SDK's side; `--prebuild` measures it directly.
//! On loopback the kernel's receive path of the sink's socket mostly runs in the client's
//! `writev` (softirq), so the client's CPU time includes part of the sink's TCP work.
//!
//! The run fails (exit code 1) unless the sink counted exactly `--events` events and the
//! flush reported them all delivered.
//!
//! Settings not given are the client's defaults; the output says which were used.

use std::{
    process::{Command, ExitCode},
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, Instant},
};

use posthog_tower::capture::{CaptureProtocol, Compression};
use posthog_tower::{CaptureError, Event, PostHog, PostHogBuilder};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// An event with 10 typical properties: strings, integers, floats and booleans (the same as
/// in `benches/capture.rs`).
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
    Wait,
    Retry,
}

struct Args {
    events: u64,
    gzip: bool,
    protocol: CaptureProtocol,
    compression: Option<Compression>,
    flush_at: Option<usize>,
    max_in_flight: Option<usize>,
    max_queue_size: Option<usize>,
    producers: usize,
    threads: Option<usize>,
    mode: Mode,
    prebuild: bool,
    burst: bool,
    spool: bool,
    replay: bool,
}

const USAGE: &str = "usage: bench_capture [--events N] [--gzip] [--flush-at N] [--producers N] \
                     [--max-in-flight N] [--max-queue-size N] [--threads N] [--mode wait|retry] \
                     [--prebuild] | --burst [--events N] [--gzip] [--flush-at N]; both with \
                     [--protocol v0|v1] [--compression none|gzip|deflate|br|zstd] [--spool] \
                     | --replay [--events N] [--flush-at N]";

/// A fresh directory for a spool, removed when dropped.
struct SpoolDir(std::path::PathBuf);

impl SpoolDir {
    fn new(name: &str) -> SpoolDir {
        let dir = std::env::temp_dir().join(format!(
            "posthog-bench-{name}-{}-{}",
            std::process::id(),
            Instant::now().elapsed().as_nanos()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        SpoolDir(dir)
    }
}

impl Drop for SpoolDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Args {
    /// The builder's protocol and encoding (`--compression` over `--gzip`), and the spool.
    fn wire(&self, builder: PostHogBuilder, spool: &SpoolDir) -> PostHogBuilder {
        let builder = builder.capture_protocol(self.protocol).gzip(self.gzip);
        let builder = if self.spool {
            builder.spool(&spool.0)
        } else {
            builder
        };
        match self.compression {
            Some(compression) => builder.compression(compression),
            None => builder,
        }
    }

    /// `v0 gzip` and the like, for the reports.
    fn wire_name(&self) -> String {
        let protocol = if self.protocol == CaptureProtocol::V1 {
            "v1"
        } else {
            "v0"
        };
        let compression = match (self.compression, self.gzip) {
            (Some(c), _) => c.content_encoding().unwrap_or("none"),
            (None, true) => "gzip",
            (None, false) => "none",
        };
        format!(
            "protocol={protocol} compression={compression} spool={}",
            if self.spool { "on" } else { "off" }
        )
    }
}

fn parse_args(args: &[String]) -> Result<Args, String> {
    let mut parsed = Args {
        events: 1_000_000,
        gzip: false,
        protocol: CaptureProtocol::V0,
        compression: None,
        flush_at: None,
        max_in_flight: None,
        max_queue_size: None,
        producers: 2,
        threads: None,
        mode: Mode::Wait,
        prebuild: false,
        burst: false,
        spool: false,
        replay: false,
    };
    let mut events_given = false;
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
            "--events" => {
                parsed.events = value("--events")?;
                events_given = true;
            }
            "--burst" => parsed.burst = true,
            "--spool" => parsed.spool = true,
            "--replay" => parsed.replay = true,
            "--gzip" => parsed.gzip = true,
            "--protocol" => {
                parsed.protocol = match it.next().map(String::as_str) {
                    Some("v0") => CaptureProtocol::V0,
                    Some("v1") => CaptureProtocol::V1,
                    other => return Err(format!("--protocol v0|v1, not {other:?}")),
                }
            }
            "--compression" => {
                parsed.compression = Some(match it.next().map(String::as_str) {
                    Some("none") => Compression::None,
                    Some("gzip") => Compression::Gzip,
                    Some("deflate") => Compression::Deflate,
                    Some("br") => Compression::Brotli,
                    Some("zstd") => Compression::Zstd,
                    other => {
                        return Err(format!(
                            "--compression none|gzip|deflate|br|zstd, not {other:?}"
                        ))
                    }
                })
            }
            "--prebuild" => parsed.prebuild = true,
            "--flush-at" => parsed.flush_at = Some(value("--flush-at")? as usize),
            "--max-in-flight" => parsed.max_in_flight = Some(value("--max-in-flight")? as usize),
            "--max-queue-size" => parsed.max_queue_size = Some(value("--max-queue-size")? as usize),
            "--producers" => parsed.producers = value("--producers")? as usize,
            "--threads" => parsed.threads = Some(value("--threads")? as usize),
            "--mode" => {
                parsed.mode = match it.next().map(String::as_str) {
                    Some("wait") => Mode::Wait,
                    Some("retry") => Mode::Retry,
                    other => return Err(format!("--mode wait|retry, not {other:?}")),
                }
            }
            "-h" | "--help" => return Err(USAGE.to_owned()),
            other => return Err(format!("unknown argument {other}\n{USAGE}")),
        }
    }
    if parsed.burst && !events_given {
        parsed.events = 200_000;
    }
    if parsed.replay && !events_given {
        parsed.events = 100_000;
    }
    Ok(parsed)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--sink") {
        return match sink::run() {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("sink: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let args = match parse_args(&args) {
        Ok(args) => args,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let run = if args.replay {
        replay
    } else if args.burst {
        burst
    } else {
        client
    };
    match run(&args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("bench_capture: {e}");
            ExitCode::FAILURE
        }
    }
}

// ===== client side =====

/// What the producers did.
#[derive(Default)]
struct Produced {
    accepted: u64,
    retries: u64,
    errors: u64,
}

fn client(args: &Args) -> Result<bool, BoxError> {
    let sink = sink::Process::start()?;
    let before = sink.counters()?;

    let build_ns = build_cost_ns();

    let threads = args.threads.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()?;

    let builder =
        PostHog::builder("phc_bench_capture").host(format!("http://127.0.0.1:{}", sink.port));
    let spool_dir = SpoolDir::new("capture");
    let mut builder = args.wire(builder, &spool_dir);
    if let Some(n) = args.flush_at {
        builder = builder.flush_at(n);
    }
    if let Some(n) = args.max_in_flight {
        builder = builder.max_in_flight(n);
    }
    if let Some(n) = args.max_queue_size {
        builder = builder.max_queue_size(n);
    }
    let settings = format!("{builder:?}");

    let n = args.events;
    let producers = args.producers as u64;
    let mode = args.mode;
    // Producer p captures events p, p + P, p + 2P, ...
    let mut prebuilt: Vec<Option<Vec<Event>>> = (0..producers)
        .map(|p| {
            args.prebuild.then(|| {
                (p..n)
                    .step_by(producers as usize)
                    .map(event_10_props)
                    .collect()
            })
        })
        .collect();
    let (produced, capture_time, wall, cpu, report, stats) = runtime.block_on(async move {
        let posthog = builder.build()?;
        let cpu_start = Cpu::now();
        let start = Instant::now();
        let mut tasks = Vec::new();
        for (p, prebuilt) in (0..producers).zip(prebuilt.iter_mut().map(Option::take)) {
            let posthog = posthog.clone();
            tasks.push(tokio::spawn(async move {
                let mut done = Produced::default();
                let mut prebuilt = prebuilt.map(Vec::into_iter);
                let mut i = p;
                while i < n {
                    let event = match &mut prebuilt {
                        Some(events) => events.next().unwrap_or_else(|| event_10_props(i)),
                        None => event_10_props(i),
                    };
                    match mode {
                        Mode::Wait => match posthog.capture_wait(event).await {
                            Ok(_) => done.accepted += 1,
                            Err(_) => done.errors += 1,
                        },
                        Mode::Retry => {
                            let mut event = event;
                            loop {
                                match posthog.capture(event) {
                                    Ok(_) => {
                                        done.accepted += 1;
                                        break;
                                    }
                                    Err(CaptureError::QueueFull { .. }) => {
                                        done.retries += 1;
                                        tokio::task::yield_now().await;
                                        // `capture` consumed the event: build it again.
                                        event = event_10_props(i);
                                    }
                                    Err(_) => {
                                        done.errors += 1;
                                        break;
                                    }
                                }
                            }
                        }
                    }
                    i += producers;
                }
                done
            }));
        }
        let mut produced = Produced::default();
        for task in tasks {
            let done = task.await?;
            produced.accepted += done.accepted;
            produced.retries += done.retries;
            produced.errors += done.errors;
        }
        let capture_time = start.elapsed();
        let report = posthog.flush().await;
        let wall = start.elapsed();
        let cpu = Cpu::now().since(&cpu_start);
        let stats = posthog.stats();
        posthog.shutdown(Duration::from_secs(30)).await;
        Ok::<_, BoxError>((produced, capture_time, wall, cpu, report, stats))
    })?;
    drop(runtime);

    let after = sink.counters()?;
    drop(sink);
    let counted = after.events - before.events;
    let requests = after.requests - before.requests;
    let sink_cpu_ns = after.cpu_ns - before.cpu_ns;

    let secs = wall.as_secs_f64();
    let delivered = report.delivered;
    let per_event = |ns: f64| ns / delivered.max(1) as f64 / 1000.0;
    let cpu_us = per_event(cpu.total_ns() as f64);
    // With prebuilt events, building is not in the measured CPU time.
    let build_us = if args.prebuild {
        0.0
    } else {
        build_ns / 1000.0
    };
    println!(
        "bench_capture: {n} events with 10 properties, {producers} producers ({}), \
         {threads} runtime threads, events {}",
        match mode {
            Mode::Wait => "capture_wait",
            Mode::Retry => "capture + yield_now/retry on QueueFull",
        },
        if args.prebuild {
            "built before the clock starts"
        } else {
            "built by the producers"
        }
    );
    println!(
        "settings: flush_at={} max_in_flight={} max_queue_size={} {} \
         (defaults 100 / 8 / 10000 / v0 none unless given)",
        args.flush_at
            .map_or_else(|| "100 (default)".to_owned(), |v| v.to_string()),
        args.max_in_flight
            .map_or_else(|| "8 (default)".to_owned(), |v| v.to_string()),
        args.max_queue_size
            .map_or_else(|| "10000 (default)".to_owned(), |v| v.to_string()),
        args.wire_name(),
    );
    println!("  builder: {settings}");
    let rows = [
        (
            "wall time, first capture → last delivery",
            format!("{:.3} s", secs),
        ),
        (
            "all captured (queued) after",
            format!(
                "{:.3} s ({:.0} events/s)",
                capture_time.as_secs_f64(),
                n as f64 / capture_time.as_secs_f64()
            ),
        ),
        (
            "delivered (flush report / sink count)",
            format!(
                "{delivered} / {counted}, failed {}, dropped {}",
                report.failed, report.dropped
            ),
        ),
        (
            "requests (sink / client stats), retries",
            format!("{requests} / {}, {}", stats.requests, stats.retries),
        ),
        (
            "THROUGHPUT",
            format!("{:.0} delivered events/s", delivered as f64 / secs),
        ),
        (
            "client CPU (user + sys)",
            format!(
                "{:.2} s = {:.2} + {:.2} ({:.0}% of one core)",
                cpu.total_ns() as f64 / 1e9,
                cpu.user_ns as f64 / 1e9,
                cpu.sys_ns as f64 / 1e9,
                cpu.total_ns() as f64 / 1e9 / secs * 100.0,
            ),
        ),
        (
            "CLIENT CPU per delivered event",
            if args.prebuild {
                format!("{cpu_us:.3} µs (SDK only: events were prebuilt)")
            } else {
                format!(
                    "{cpu_us:.3} µs (building the event: {build_us:.3} µs → SDK ≈ {:.3} µs)",
                    cpu_us - build_us
                )
            },
        ),
        (
            "sink CPU per event (other process)",
            format!("{:.3} µs", per_event(sink_cpu_ns as f64)),
        ),
        (
            "request body per event (wire / JSON)",
            format!(
                "{:.0} B / {:.0} B",
                (after.wire_bytes - before.wire_bytes) as f64 / counted.max(1) as f64,
                (after.json_bytes - before.json_bytes) as f64 / counted.max(1) as f64
            ),
        ),
        (
            "QueueFull retries / capture errors",
            format!("{} / {}", produced.retries, produced.errors),
        ),
    ];
    for (name, value) in rows {
        println!("  {name:<42} {value}");
    }
    println!(
        "RESULT events={n} {} flush_at={} producers={producers} mode={} prebuild={} \
         wall_s={secs:.4} \
         events_per_s={:.0} cpu_us_per_event={cpu_us:.3} build_us={build_us:.3} \
         sdk_us_per_event={:.3} sink_us_per_event={:.3} retries={}",
        args.wire_name(),
        args.flush_at.unwrap_or(100),
        match mode {
            Mode::Wait => "wait",
            Mode::Retry => "retry",
        },
        args.prebuild,
        delivered as f64 / secs,
        cpu_us - build_us,
        per_event(sink_cpu_ns as f64),
        produced.retries,
    );

    let ok = counted == n
        && delivered == n
        && report.failed == 0
        && produced.accepted == n
        && produced.errors == 0;
    if !ok {
        eprintln!(
            "FAILED: sink counted {counted}, flush delivered {delivered}, failed {}, \
             accepted {}, capture errors {} (expected {n})",
            report.failed, produced.accepted, produced.errors
        );
    }
    Ok(ok)
}

// ===== replay =====

/// `--replay`: spools `--events` events while PostHog is unreachable, then measures a second
/// client sending them to the sink.
fn replay(args: &Args) -> Result<bool, BoxError> {
    let n = args.events;
    let dir = SpoolDir::new("replay");
    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()?;
    // A loopback port nobody listens on: every connection is refused.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let fill_start = Instant::now();
    let spooled = runtime.block_on(async {
        let mut builder = PostHog::builder("phc_bench_capture")
            .host(format!("http://127.0.0.1:{closed}"))
            .max_retries(0)
            .max_queue_size(n as usize)
            .spool(&dir.0)
            .spool_max_bytes(u64::MAX);
        if let Some(flush_at) = args.flush_at {
            builder = builder.flush_at(flush_at);
        }
        let posthog = builder.build()?;
        for i in 0..n {
            posthog.capture(event_10_props(i))?;
        }
        let report = posthog.flush().await;
        posthog.shutdown(Duration::from_secs(60)).await;
        Ok::<_, BoxError>(report.spooled)
    })?;
    let fill = fill_start.elapsed();
    let on_disk: u64 = std::fs::read_dir(&dir.0)?
        .filter_map(Result::ok)
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum();

    let sink = sink::Process::start()?;
    let before = sink.counters()?;
    let (wall, cpu, stats) = runtime.block_on(async {
        let mut builder = PostHog::builder("phc_bench_capture")
            .host(format!("http://127.0.0.1:{}", sink.port))
            .spool(&dir.0);
        if let Some(flush_at) = args.flush_at {
            builder = builder.flush_at(flush_at);
        }
        let cpu_start = Cpu::now();
        let start = Instant::now();
        let posthog = builder.build()?;
        // The shutdown lets the replay finish while PostHog answers.
        posthog.shutdown(Duration::from_secs(600)).await;
        let wall = start.elapsed();
        let cpu = Cpu::now().since(&cpu_start);
        Ok::<_, BoxError>((wall, cpu, posthog.stats()))
    })?;
    drop(runtime);
    let after = sink.counters()?;
    drop(sink);
    let counted = after.events - before.events;
    let requests = after.requests - before.requests;
    let secs = wall.as_secs_f64();
    let replayed = stats.spool_replayed;
    println!(
        "bench_capture --replay: {n} events with 10 properties spooled while PostHog refused \
         connections ({:.3} s, {:.1} MiB on disk), then sent by a new client, {threads} runtime \
         threads, flush_at={}",
        fill.as_secs_f64(),
        on_disk as f64 / (1024.0 * 1024.0),
        args.flush_at.unwrap_or(100),
    );
    let rows = [
        ("spooled by the first client", format!("{spooled}")),
        (
            "replayed (stats / sink count), failed, damaged",
            format!(
                "{replayed} / {counted}, {}, {}",
                stats.spool_failed, stats.spool_damaged
            ),
        ),
        ("requests (sink)", format!("{requests}")),
        ("wall time, build → shutdown done", format!("{secs:.3} s")),
        (
            "REPLAYED events/s",
            format!("{:.0}", replayed as f64 / secs),
        ),
        (
            "client CPU per replayed event",
            format!(
                "{:.3} µs",
                cpu.total_ns() as f64 / replayed.max(1) as f64 / 1000.0
            ),
        ),
    ];
    for (name, value) in rows {
        println!("  {name:<46} {value}");
    }
    println!(
        "RESULT replay events={n} wall_s={secs:.4} events_per_s={:.0} cpu_us_per_event={:.3}",
        replayed as f64 / secs,
        cpu.total_ns() as f64 / replayed.max(1) as f64 / 1000.0
    );
    let ok = spooled == n && replayed == n && counted == n && stats.spool_failed == 0;
    if !ok {
        eprintln!(
            "FAILED: spooled {spooled}, replayed {replayed}, sink counted {counted} (expected {n})"
        );
    }
    Ok(ok)
}

// ===== burst =====

/// `--burst`: one loop on the main thread captures `--events` events into a queue that holds
/// them all, then flushes and shuts down.
fn burst(args: &Args) -> Result<bool, BoxError> {
    let sink = sink::Process::start()?;
    let before = sink.counters()?;
    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()?;
    let n = args.events;
    let rss_before = proc_status_bytes("VmRSS");
    let builder = PostHog::builder("phc_bench_capture")
        .host(format!("http://127.0.0.1:{}", sink.port))
        .max_queue_size(n as usize);
    let spool_dir = SpoolDir::new("capture");
    let mut builder = args.wire(builder, &spool_dir);
    if let Some(flush_at) = args.flush_at {
        builder = builder.flush_at(flush_at);
    }
    let mut latencies: Vec<u32> = Vec::with_capacity(n as usize);
    let (wall, cpu, report, stats, errors, captured_after) = runtime.block_on(async {
        let posthog = builder.build()?;
        let cpu_start = Cpu::now();
        let start = Instant::now();
        let mut errors = 0u64;
        for i in 0..n {
            let event = event_10_props(i);
            let t = Instant::now();
            let result = posthog.capture(event);
            latencies.push(t.elapsed().as_nanos().min(u32::MAX as u128) as u32);
            errors += u64::from(result.is_err());
        }
        let captured_after = start.elapsed();
        let flushed = posthog.flush().await;
        let stats = posthog.stats();
        let last = posthog.shutdown(Duration::from_secs(60)).await;
        let wall = start.elapsed();
        let cpu = Cpu::now().since(&cpu_start);
        let report = FlushReport {
            delivered: flushed.delivered + last.delivered,
            failed: flushed.failed + last.failed,
        };
        Ok::<_, BoxError>((wall, cpu, report, stats, errors, captured_after))
    })?;
    let switches = context_switches();
    drop(runtime);
    let peak = proc_status_bytes("VmHWM");
    let after = sink.counters()?;
    drop(sink);
    let counted = after.events - before.events;
    let json_bytes = after.json_bytes - before.json_bytes;

    latencies.sort_unstable();
    let at = |q: f64| latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)];
    let (p50, p99, p999, max) = (at(0.50), at(0.99), at(0.999), at(1.0));
    let secs = wall.as_secs_f64();
    let cpu_us = cpu.total_ns() as f64 / report.delivered.max(1) as f64 / 1000.0;
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    let bound = 2 * json_bytes + 20 * 1024 * 1024;
    println!(
        "bench_capture --burst: {n} events with 10 properties built and captured in one loop \
         on the main thread, queue of {n}, {threads} runtime threads, then flush and shutdown"
    );
    let rows = [
        (
            "wall time, first capture → shutdown done",
            format!("{secs:.3} s"),
        ),
        (
            "the loop (build + capture) done after",
            format!(
                "{:.3} s ({:.0} ns per event)",
                captured_after.as_secs_f64(),
                captured_after.as_nanos() as f64 / n as f64
            ),
        ),
        (
            "delivered (reports / sink count), failed",
            format!("{} / {counted}, {}", report.delivered, report.failed),
        ),
        (
            "DELIVERED events/s",
            format!("{:.0}", report.delivered as f64 / secs),
        ),
        (
            "process CPU (user + sys)",
            format!(
                "{:.3} s = {:.3} + {:.3}",
                cpu.total_ns() as f64 / 1e9,
                cpu.user_ns as f64 / 1e9,
                cpu.sys_ns as f64 / 1e9
            ),
        ),
        (
            "CPU per delivered event",
            format!("{cpu_us:.3} µs (building it included)"),
        ),
        (
            "capture() p50 / p99 / p99.9 / max",
            format!("{p50} / {p99} / {p999} / {max} ns"),
        ),
        (
            "PEAK RSS (VmHWM), RSS before the client",
            format!("{:.1} MiB, {:.1} MiB", mib(peak), mib(rss_before)),
        ),
        (
            "bound: 2 × events' JSON + 20 MiB",
            format!(
                "2 × {:.1} + 20 = {:.1} MiB ({})",
                mib(json_bytes),
                mib(bound),
                if peak <= bound { "within" } else { "EXCEEDED" }
            ),
        ),
        (
            "requests, capture errors",
            format!("{}, {errors}", stats.requests),
        ),
        (
            "context switches, voluntary / involuntary",
            format!(
                "{} / {} (every thread of the process)",
                switches.0, switches.1
            ),
        ),
    ];
    for (name, value) in rows {
        println!("  {name:<42} {value}");
    }
    println!(
        "RESULT burst events={n} {} events_per_s={:.0} cpu_us_per_event={cpu_us:.3} \
         p50_ns={p50} p99_ns={p99} p999_ns={p999} max_ns={max} peak_rss_mib={:.1} \
         bound_mib={:.1}",
        args.wire_name(),
        report.delivered as f64 / secs,
        mib(peak),
        mib(bound),
    );
    let ok = counted == n && report.delivered == n && report.failed == 0 && errors == 0;
    if !ok {
        eprintln!(
            "FAILED: sink counted {counted}, reports delivered {}, failed {}, capture errors \
             {errors} (expected {n})",
            report.delivered, report.failed
        );
    }
    Ok(ok)
}

/// Context switches of every live thread of this process so far (voluntary, involuntary),
/// from `/proc/self/task/*/status`.
fn context_switches() -> (u64, u64) {
    let mut total = (0, 0);
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return total;
    };
    for task in tasks.flatten() {
        let status = std::fs::read_to_string(task.path().join("status")).unwrap_or_default();
        let field = |name: &str| {
            status
                .lines()
                .find_map(|line| line.strip_prefix(name)?.trim().parse::<u64>().ok())
                .unwrap_or(0)
        };
        total.0 += field("voluntary_ctxt_switches:");
        total.1 += field("nonvoluntary_ctxt_switches:");
    }
    total
}

/// What the flush and the shutdown reported together.
struct FlushReport {
    delivered: u64,
    failed: u64,
}

/// A `kB` field of `/proc/self/status` (`VmRSS`, `VmHWM`), in bytes; 0 without `/proc`.
fn proc_status_bytes(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|rest| {
            rest.trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<u64>()
                .ok()
        })
        .map_or(0, |kb| kb * 1024)
}

/// Nanoseconds one thread takes to build an event (and nothing else): the median, over 20
/// rounds, of the wall time of building 10 000 events on this thread while nothing else of
/// this process runs. The events are dropped outside the measurement.
fn build_cost_ns() -> f64 {
    const CHUNK: u64 = 10_000;
    const ROUNDS: u64 = 20;
    let mut rounds: Vec<f64> = (0..=ROUNDS)
        .map(|r| {
            let start = Instant::now();
            let events: Vec<Event> = (r * CHUNK..(r + 1) * CHUNK).map(event_10_props).collect();
            let ns = start.elapsed().as_nanos() as f64 / CHUNK as f64;
            drop(std::hint::black_box(events));
            ns
        })
        // The first round warms the allocator up.
        .skip(1)
        .collect();
    rounds.sort_by(f64::total_cmp);
    rounds[rounds.len() / 2]
}

/// The process's CPU time, all threads (dead ones included), from `/proc/self/stat`.
///
/// Not `/proc/self/task/*/schedstat`: a running thread's figure there can lag by hundreds of
/// milliseconds, while reading `/proc/self/stat` brings the reading thread's up to date.
#[derive(Clone, Copy)]
struct Cpu {
    /// utime, in ns (clock-tick precision).
    user_ns: u64,
    /// stime, likewise.
    sys_ns: u64,
}

impl Cpu {
    fn now() -> Cpu {
        let (user_ns, sys_ns) = process_stat_ns();
        Cpu { user_ns, sys_ns }
    }

    fn since(&self, start: &Cpu) -> Cpu {
        Cpu {
            user_ns: self.user_ns.saturating_sub(start.user_ns),
            sys_ns: self.sys_ns.saturating_sub(start.sys_ns),
        }
    }

    fn total_ns(&self) -> u64 {
        self.user_ns + self.sys_ns
    }
}

/// Nanoseconds per clock tick (`getconf CLK_TCK`, usually 100 Hz).
fn tick_ns() -> u64 {
    static TICK_NS: AtomicU64 = AtomicU64::new(0);
    let cached = TICK_NS.load(Ordering::Relaxed);
    if cached != 0 {
        return cached;
    }
    let hz = Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok()?.trim().parse::<u64>().ok())
        .filter(|&hz| hz > 0)
        .unwrap_or(100);
    let ns = 1_000_000_000 / hz;
    TICK_NS.store(ns, Ordering::Relaxed);
    ns
}

/// (utime, stime) of the whole process in ns, from `/proc/self/stat`.
fn process_stat_ns() -> (u64, u64) {
    let tick = tick_ns();
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return (0, 0);
    };
    // Fields after the command name (which may hold spaces), from field 3 (state) on:
    // utime is field 14, stime field 15.
    let rest = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    (field(11) * tick, field(12) * tick)
}

// ===== the sink =====

#[path = "support/sink.rs"]
mod sink;
