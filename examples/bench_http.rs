//! Load benchmark of the HTTP layer: a trivial axum server without the layer, with it (no
//! pageviews), and with a pageview captured on every request, driven by `wrk`.
//!
//! A measurement tool, not an example to copy: `BENCHMARKS.md` has the method and the
//! current figures, and the README lists the examples to start from.
//!
//! ```text
//! cargo run --release --features axum --example bench_http -- [--mode all|MODE[,MODE...]]
//!     [--rounds N] [--duration S] [--warmup S] [--persistent] [--shared] [--connections N]
//!     [--wrk-threads N] [--server-threads N] [--server-cpus LIST] [--load-cpus LIST]
//!     [--burn-ns N] [--baseline PATH]
//! ```
//!
//! Three processes, besides this one (which only orchestrates and sleeps):
//!
//! - the server: this binary re-executed with `--serve MODE`, an axum 0.8 server on
//!   `127.0.0.1:<free port>` on a multi-thread tokio runtime (`--server-threads` workers,
//!   default one per CPU it may run on), answering `GET /` with a 13-byte static string and
//!   counting its responses in an `AtomicU64`. Modes:
//!   - `bare`: no layer;
//!   - `noop`: a pass-through tower layer (`MapRequestLayer` with `identity`), for what any
//!     layer costs on an axum `Router` (axum boxes and clones the layered route per request);
//!   - `layer`: `posthog.layer().capture_pageviews(false)` (request context, lazy flags and
//!     failed requests watched for exceptions), applied with `Router::layer`;
//!   - `layer_no_exceptions`: the same with `.capture_exceptions(false)`, for what watching
//!     for failed requests costs the requests that do not fail;
//!   - `outer`: the same layer around the whole `Router` (`layer.layer(router)`, served with
//!     `into_make_service`): no per-route boxing, as for a middleware that runs before routing;
//!   - `pageviews`: `posthog.layer().should_capture(|_: &RequestHead<'_>| true)`, a `$pageview`
//!     for every request;
//!   - `burn` (not in `all`): a pass-through layer that waits busily for `--burn-ns`
//!     nanoseconds (default 1 000) on every request, for how much throughput a fixed amount
//!     of added work costs on this machine, whatever the work is.
//!
//!   Its PostHog client (`flush_at(500)`, the default queue of 10 000 events) sends to the
//!   sink.
//!   The client runs in the server's process: its CPU (queueing, encoding, HTTP) is counted
//!   against the server, as in production.
//! - the sink: this binary re-executed with `--sink`, a PostHog stand-in that answers
//!   `POST /batch/` with 200 and counts the events (`"uuid":` keys), so its CPU is not the
//!   server's;
//! - `wrk -t<wrk-threads> -c<connections> -d<duration>s --latency http://127.0.0.1:<port>/`.
//!
//! By default, on a machine with at least 2 CPUs, the server has CPU 0 to itself (one tokio
//! worker thread) and `wrk` (one thread, 128 connections) and the sink run on the other CPUs
//! (`taskset -c`): the load generator does not take CPU from the server, 128 connections keep
//! the server's CPU busy, and the throughput is the server's. With `--shared` nothing is pinned
//! and `wrk -t2 -c64`, the server (one worker thread per CPU) and the sink share every CPU:
//! throughput then depends on how the scheduler splits the CPUs between `wrk` and the server,
//! and varies more. `--server-cpus`, `--load-cpus`, `--wrk-threads` and `--connections`
//! override either. Each run prints the busy share of every CPU.
//!
//! At the start and at the end, the bench prints the host's speed: what a system call costs
//! (`getpid`) and a step of dependent integer arithmetic, best of three passes. Machines of
//! one kind differ: `bare` has taken 6 µs of server CPU a request on one and 15 – 26 µs on
//! another (where a system call took 500 – 700 ns), and the layer's ratios move with the
//! host. These two figures say which kind of host a set of runs came from.
//!
//! With `--baseline PATH` (another build of this example, say of the commit before a change),
//! every mode runs a second time in each round, served by that binary, and is reported as
//! `MODE@baseline`, its ratios also to this binary's `bare` of the same round: two builds
//! compared run by run, in one bench, as the machine's speed drifts under both alike.
//!
//! Each round runs every mode once, in an order rotated each round; each run is a fresh
//! server: `--warmup` seconds of `wrk` (not measured), then `--duration` seconds measured.
//! Reported per run: `wrk`'s requests/s and latency percentiles, the server's and the sink's
//! CPU time per request during the measured part (from `/proc/<pid>/stat`), and each CPU's
//! busy share (from `/proc/stat`). Then the server stops accepting connections and shuts its
//! PostHog client down; it reports its responses and the client's stats. Per mode: median and
//! range of requests/s, the ratio of the medians to `bare`, the median (and range) of the
//! per-round ratios to the `bare` run of the same round, which cancels slow drifts of the
//! machine's speed (and the same for the server's CPU time per request, bare's over the
//! mode's: the throughput ratio of a saturated server), the best run's ratio to the best `bare` run (interference only ever
//! slows a run down), and the same for the mean of the fastest quarter of each mode's runs,
//! the steadiest of these over many short rounds (`--rounds 20 --duration 5 --warmup 1`).
//! Defaults: 3 rounds, 10 s measured after 2 s of warm-up.
//!
//! With `--persistent`, every mode's server starts once, before the first round (each warmed
//! up with `--warmup` seconds of `wrk`), and stays up to the end; the rounds then measure them
//! in turn without restarting them, so runs can be short and many
//! (`--persistent --rounds 40 --duration 1 --warmup 1`): a shared virtual machine's speed
//! can change from one second to the next, and only many pairs of adjacent runs average that
//! out. The idle
//! servers wait in `epoll` on the same CPU; the `pageviews` one may send its last partial
//! batch while another is measured (at most one batch, under a millisecond of CPU, per run).
//! Its events are accounted for at the end, when every server stops: the sink must then have
//! counted exactly one event per `pageviews` response, and every client's stats must add up as
//! below.
//!
//! The run fails (exit code 1) unless, for every server: the sink counted exactly one event
//! per response the server sent (`pageviews`; none for the other modes), the client's stats say
//! `captured == delivered`, nothing failed and nothing was dropped (`dropped.queue_full`
//! included), and `wrk` saw no errors.

use std::{
    io::{BufRead, BufReader, Read, Write},
    process::{Child, ChildStdout, Command, ExitCode, Stdio},
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

use axum::{routing::get, Router, ServiceExt};
use posthog_tower::{http::RequestHead, PostHog};
use tower::Layer as _;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    Bare,
    Noop,
    Layer,
    LayerNoExceptions,
    Outer,
    Pageviews,
    Burn,
}

impl Mode {
    const ALL: [Mode; 6] = [
        Mode::Bare,
        Mode::Noop,
        Mode::Layer,
        Mode::LayerNoExceptions,
        Mode::Outer,
        Mode::Pageviews,
    ];

    fn name(self) -> &'static str {
        match self {
            Mode::Bare => "bare",
            Mode::Noop => "noop",
            Mode::Layer => "layer",
            Mode::LayerNoExceptions => "layer_no_exceptions",
            Mode::Outer => "outer",
            Mode::Pageviews => "pageviews",
            Mode::Burn => "burn",
        }
    }

    fn parse(s: &str) -> Option<Mode> {
        Mode::ALL
            .into_iter()
            .chain([Mode::Burn])
            .find(|m| m.name() == s)
    }
}

/// A server to measure: a mode, served by this binary or by the `--baseline` one.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct Variant {
    mode: Mode,
    baseline: bool,
}

impl Variant {
    /// What every ratio is to: this binary's `bare`.
    const BARE: Variant = Variant {
        mode: Mode::Bare,
        baseline: false,
    };

    fn label(self) -> String {
        if self.baseline {
            format!("{}@baseline", self.mode.name())
        } else {
            self.mode.name().to_owned()
        }
    }
}

struct Args {
    modes: Vec<Mode>,
    /// Another build of this example, whose servers are measured beside this one's.
    baseline: Option<String>,
    /// Everything shares every CPU (no pinning).
    shared: bool,
    /// One server per mode for the whole bench, measured in turn.
    persistent: bool,
    rounds: usize,
    duration: u64,
    warmup: u64,
    connections: u64,
    wrk_threads: u64,
    server_threads: Option<usize>,
    server_cpus: Option<String>,
    /// The busy wait of `burn`, in nanoseconds a request.
    burn_ns: u64,
    load_cpus: Option<String>,
}

const USAGE: &str = "usage: bench_http [--mode all|MODE[,MODE...]] [--rounds N] \
                     [--duration S] [--warmup S] [--persistent] [--shared] [--connections N] \
                     [--wrk-threads N] [--server-threads N] [--server-cpus LIST] \
                     [--load-cpus LIST] [--burn-ns N] [--baseline PATH]";

impl Args {
    /// The servers to measure: every mode, then, with `--baseline`, every mode again served by
    /// the baseline binary.
    fn variants(&self) -> Vec<Variant> {
        let builds: &[bool] = if self.baseline.is_some() {
            &[false, true]
        } else {
            &[false]
        };
        builds
            .iter()
            .flat_map(|&baseline| {
                self.modes
                    .iter()
                    .map(move |&mode| Variant { mode, baseline })
            })
            .collect()
    }
}

fn parse_args(args: &[String]) -> Result<Args, String> {
    let mut parsed = Args {
        modes: Mode::ALL.to_vec(),
        baseline: None,
        shared: false,
        persistent: false,
        rounds: 3,
        duration: 10,
        warmup: 2,
        connections: 0,
        wrk_threads: 0,
        server_threads: None,
        server_cpus: None,
        burn_ns: 1000,
        load_cpus: None,
    };
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let mut text = |name: &str| -> Result<String, String> {
            it.next()
                .cloned()
                .ok_or_else(|| format!("{name} needs a value"))
        };
        let number = |name: &str, v: String, min: u64| -> Result<u64, String> {
            let n: u64 = v
                .parse()
                .map_err(|_| format!("{name}: not a number: {v}"))?;
            if n < min {
                return Err(format!("{name} must be at least {min}"));
            }
            Ok(n)
        };
        match arg.as_str() {
            "--mode" => {
                let v = text("--mode")?;
                parsed.modes = if v == "all" {
                    Mode::ALL.to_vec()
                } else {
                    v.split(',')
                        .map(|m| Mode::parse(m).ok_or_else(|| format!("unknown mode {m}\n{USAGE}")))
                        .collect::<Result<_, _>>()?
                };
            }
            "--rounds" => parsed.rounds = number(arg, text(arg)?, 1)? as usize,
            "--duration" => parsed.duration = number(arg, text(arg)?, 1)?,
            "--warmup" => parsed.warmup = number(arg, text(arg)?, 0)?,
            "--shared" => parsed.shared = true,
            "--persistent" => parsed.persistent = true,
            "--connections" => parsed.connections = number(arg, text(arg)?, 1)?,
            "--wrk-threads" => parsed.wrk_threads = number(arg, text(arg)?, 1)?,
            "--server-threads" => {
                parsed.server_threads = Some(number(arg, text(arg)?, 1)? as usize)
            }
            "--server-cpus" => parsed.server_cpus = Some(text(arg)?),
            "--burn-ns" => parsed.burn_ns = number(arg, text(arg)?, 0)?,
            "--load-cpus" => parsed.load_cpus = Some(text(arg)?),
            "--baseline" => parsed.baseline = Some(text(arg)?),
            "-h" | "--help" => return Err(USAGE.to_owned()),
            other => return Err(format!("unknown argument {other}\n{USAGE}")),
        }
    }
    // Defaults. Dedicated CPUs: the server on CPU 0 (one tokio worker thread), `wrk` (one
    // thread, 128 connections: enough to keep the server's CPU busy) and the sink on the
    // others. Shared (or a single CPU): nothing pinned, `wrk -t2 -c64`.
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let dedicated = !parsed.shared && cpus >= 2;
    if dedicated && parsed.server_cpus.is_none() && parsed.load_cpus.is_none() {
        parsed.server_cpus = Some("0".to_owned());
        parsed.load_cpus = Some(if cpus == 2 {
            "1".to_owned()
        } else {
            format!("1-{}", cpus - 1)
        });
    }
    if parsed.wrk_threads == 0 {
        parsed.wrk_threads = if dedicated { 1 } else { 2 };
    }
    if parsed.connections == 0 {
        parsed.connections = if dedicated { 128 } else { 64 };
    }
    if parsed.connections < parsed.wrk_threads {
        return Err("--connections must be at least --wrk-threads".to_owned());
    }
    Ok(parsed)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let outcome = match args.first().map(String::as_str) {
        Some("--sink") => sink::run().map(|()| true),
        Some("--serve") => server::run(&args[1..]).map(|()| true),
        _ => match parse_args(&args) {
            Ok(args) => bench(&args),
            Err(e) => {
                eprintln!("{e}");
                return ExitCode::from(2);
            }
        },
    };
    match outcome {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("bench_http: {e}");
            ExitCode::FAILURE
        }
    }
}

// ===== orchestration =====

/// One measured run.
struct Run {
    round: usize,
    mode: Variant,
    req_per_s: f64,
    wrk_requests: u64,
    p50: String,
    p99: String,
    cpu_us_per_req: f64,
    sink_cpu_us_per_req: f64,
    /// Busy share of each CPU during the measured part, in %.
    busy: Vec<f64>,
    /// The server's report, when it stopped after this run (not with `--persistent`).
    server: Option<server::Report>,
    events: u64,
    ok: bool,
}

/// `cmd`, under `taskset -c cpus` when given.
fn pinned(cpus: Option<&str>, program: &str) -> Command {
    match cpus {
        Some(cpus) => {
            let mut cmd = Command::new("taskset");
            cmd.args(["-c", cpus, program]);
            cmd
        }
        None => Command::new(program),
    }
}

fn bench(args: &Args) -> Result<bool, BoxError> {
    let exe = std::env::current_exe()?;
    let exe = exe.to_str().ok_or("the executable's path is not UTF-8")?;
    let sink = sink::Process::start_with(pinned(args.load_cpus.as_deref(), exe))?;
    let wrk_version = Command::new("wrk")
        .arg("-v")
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .unwrap_or("")
                .to_owned()
        })
        .map_err(|e| format!("cannot run wrk ({e}): apt-get install -y wrk"))?;
    let server_threads = args
        .server_threads
        .unwrap_or_else(|| match &args.server_cpus {
            Some(cpus) => cpu_count(cpus),
            None => std::thread::available_parallelism().map_or(1, |n| n.get()),
        });
    println!(
        "bench_http: {} round(s) of {}; wrk -t{} -c{} -d{}s (after {} s of warm-up), {}",
        args.rounds,
        args.modes
            .iter()
            .map(|m| m.name())
            .collect::<Vec<_>>()
            .join(", "),
        args.wrk_threads,
        args.connections,
        args.duration,
        args.warmup,
        wrk_version.trim(),
    );
    println!(
        "  server: {server_threads} tokio worker thread(s), CPUs {}; wrk and sink: CPUs {}",
        args.server_cpus.as_deref().unwrap_or("any"),
        args.load_cpus.as_deref().unwrap_or("any"),
    );
    if let Some(baseline) = &args.baseline {
        println!("  baseline: {baseline} serves every mode again, as MODE@baseline");
    }
    println!("  load: {}", loadavg());
    println!("  host: {}", host_speed());

    let mut runs = Vec::new();
    let mut ok = true;
    let sink_before = sink.counters()?;
    let variants = args.variants();
    let mut persistent = Vec::new();
    if args.persistent {
        for &mode in &variants {
            let server = start_server(args, exe, &sink, mode, server_threads)?;
            persistent.push((mode, server));
        }
    }
    for round in 0..args.rounds {
        let n = variants.len();
        for i in 0..n {
            let mode = variants[(i + round) % n];
            let run = match persistent.iter().find(|(m, _)| *m == mode) {
                Some((_, server)) => measure(args, &sink, round, mode, server)?,
                None => run_one(args, exe, &sink, round, mode, server_threads)?,
            };
            let report = run.server.as_ref().map_or_else(String::new, |r| {
                format!(
                    " responses={} captured={} delivered={} failed={} dropped={} queue_full={}",
                    r.responses, r.captured, r.delivered, r.failed, r.dropped, r.queue_full
                )
            });
            println!(
                "RUN round={} mode={} req_per_s={:.0} wrk_requests={} p50={} p99={} \
                 server_cpu_us_per_req={:.2} sink_cpu_us_per_req={:.2} cpu_busy={}{} \
                 sink_events={} lost={} ok={} load={}",
                round + 1,
                mode.label(),
                run.req_per_s,
                run.wrk_requests,
                run.p50,
                run.p99,
                run.cpu_us_per_req,
                run.sink_cpu_us_per_req,
                run.busy
                    .iter()
                    .map(|b| format!("{b:.0}%"))
                    .collect::<Vec<_>>()
                    .join(","),
                report,
                run.events,
                lost(&run),
                run.ok,
                loadavg(),
            );
            ok &= run.ok;
            runs.push(run);
        }
    }
    // The persistent servers' accounts, settled now that they stop.
    let mut settled = Vec::new();
    for (mode, server) in persistent {
        let report = server.stop()?;
        let expected = expected_events(mode.mode, &report);
        let good = report_adds_up(&report, expected);
        println!(
            "SERVER mode={} responses={} captured={} delivered={} failed={} dropped={} \
             queue_full={} ok={good}",
            mode.label(),
            report.responses,
            report.captured,
            report.delivered,
            report.failed,
            report.dropped,
            report.queue_full,
        );
        ok &= good;
        settled.push((mode, expected));
    }
    if !settled.is_empty() {
        let sink_events = sink.counters()?.events - sink_before.events;
        let expected: u64 = settled.iter().map(|(_, e)| e).sum();
        println!("SINK events={sink_events} expected={expected}");
        ok &= sink_events == expected;
    }
    drop(sink);

    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        let n = v.len();
        if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        }
    };
    let summary: Vec<Summary> = variants
        .iter()
        .map(|&mode| {
            let of_mode: Vec<&Run> = runs.iter().filter(|r| r.mode == mode).collect();
            let mut rps: Vec<f64> = of_mode.iter().map(|r| r.req_per_s).collect();
            let mut cpu: Vec<f64> = of_mode.iter().map(|r| r.cpu_us_per_req).collect();
            let mut sink_cpu: Vec<f64> = of_mode.iter().map(|r| r.sink_cpu_us_per_req).collect();
            let med = median(&mut rps);
            let (min, max) = (rps[0], rps[rps.len() - 1]);
            // The mean of the fastest quarter of the runs (at least one): less at the mercy of
            // one lucky run than the best, and free of the slow runs that interference makes.
            let quarter = rps.len().div_ceil(4);
            let top = rps[rps.len() - quarter..].iter().sum::<f64>() / quarter as f64;
            let (events, lost) = match settled.iter().find(|(m, _)| *m == mode) {
                // Accounted for at the end: the sink's count is checked against all the
                // servers' responses above.
                Some(&(_, expected)) => (expected, 0),
                None => (
                    of_mode.iter().map(|r| r.events).sum(),
                    of_mode.iter().map(|r| lost(r)).sum(),
                ),
            };
            // The ratio to the bare run of the same round (run minutes apart at most), so
            // slow drifts of the machine's speed cancel out; and the same for the server's CPU
            // time per request (bare's over this mode's: the throughput ratio of a server whose
            // CPU is saturated, as it is here).
            let same_round = |r: &Run| {
                runs.iter()
                    .find(|b| b.mode == Variant::BARE && b.round == r.round)
            };
            let mut paired: Vec<f64> = of_mode
                .iter()
                .filter_map(|r| Some(r.req_per_s / same_round(r)?.req_per_s * 100.0))
                .collect();
            let mut paired_cpu: Vec<f64> = of_mode
                .iter()
                .filter_map(|r| Some(same_round(r)?.cpu_us_per_req / r.cpu_us_per_req * 100.0))
                .filter(|ratio| ratio.is_finite())
                .collect();
            let paired_cpu = (!paired_cpu.is_empty()).then(|| median(&mut paired_cpu));
            let paired = (!paired.is_empty()).then(|| {
                let (lo, hi) = (
                    paired.iter().copied().fold(f64::INFINITY, f64::min),
                    paired.iter().copied().fold(f64::NEG_INFINITY, f64::max),
                );
                (median(&mut paired), lo, hi)
            });
            Summary {
                mode,
                paired,
                paired_cpu,
                med,
                min,
                max,
                top,
                cpu: median(&mut cpu),
                sink_cpu: median(&mut sink_cpu),
                events,
                lost,
            }
        })
        .collect();
    let bare_summary = summary.iter().find(|s| s.mode == Variant::BARE);
    let bare = bare_summary.map(|s| (s.med, s.cpu));
    println!();
    println!(
        "| mode | req/s median | range | ratio to bare | per-round ratio, median (range) \
         | per-round CPU ratio, median | best run to best bare | fastest quarter to bare's \
         | server CPU µs/req (median) | sink CPU µs/req | events delivered / lost |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    let best_bare = bare_summary.map(|s| s.max);
    let top_bare = bare_summary.map(|s| s.top);
    for Summary {
        mode,
        paired,
        paired_cpu,
        med,
        min,
        max,
        top,
        cpu,
        sink_cpu,
        events,
        lost,
    } in &summary
    {
        let ratio = bare.map_or_else(
            || "–".to_owned(),
            |(b, bcpu)| format!("{:.1} % (CPU ×{:.2})", med / b * 100.0, cpu / bcpu),
        );
        let paired = paired.map_or_else(
            || "–".to_owned(),
            |(m, lo, hi)| format!("{m:.1} % ({lo:.1} – {hi:.1})"),
        );
        let paired_cpu = paired_cpu.map_or_else(|| "–".to_owned(), |m| format!("{m:.1} %"));
        // Noise on this kind of machine only slows runs down: the best runs compare what each
        // mode costs when nothing else interferes.
        let best =
            best_bare.map_or_else(|| "–".to_owned(), |b| format!("{:.1} %", max / b * 100.0));
        let top = top_bare.map_or_else(|| "–".to_owned(), |b| format!("{:.1} %", top / b * 100.0));
        println!(
            "| {} | {med:.0} | {min:.0} – {max:.0} | {ratio} | {paired} | {paired_cpu} | {best} \
             | {top} | {cpu:.2} | {sink_cpu:.2} | {events} / {lost} |",
            mode.label()
        );
    }
    println!("load at the end: {}", loadavg());
    println!("host at the end: {}", host_speed());
    if ok {
        println!("OK: no event lost, none dropped, no wrk errors");
    } else {
        eprintln!("FAILED: see the runs with ok=false above");
    }
    Ok(ok)
}

/// One mode's figures over its runs: req/s median and range, medians of the CPU times per
/// request, events delivered and lost.
struct Summary {
    mode: Variant,
    /// Median, lowest and highest of the per-round ratios to bare, in %.
    paired: Option<(f64, f64, f64)>,
    /// Median of the per-round ratios of bare's server CPU time per request to this mode's,
    /// in %.
    paired_cpu: Option<f64>,
    med: f64,
    min: f64,
    max: f64,
    /// Mean requests/s of the fastest quarter of the runs.
    top: f64,
    cpu: f64,
    sink_cpu: f64,
    events: u64,
    lost: u64,
}

/// Events the sink should have received but did not (or received in excess), for a run whose
/// server stopped after it.
fn lost(run: &Run) -> u64 {
    let Some(report) = &run.server else {
        return 0;
    };
    expected_events(run.mode.mode, report).abs_diff(run.events)
}

/// The events a server's client should have delivered: one per response with pageviews.
fn expected_events(mode: Mode, report: &server::Report) -> u64 {
    match mode {
        Mode::Pageviews => report.responses,
        _ => 0,
    }
}

/// Whether a stopped server's client captured and delivered `expected` events, with nothing
/// failed or dropped.
fn report_adds_up(report: &server::Report, expected: u64) -> bool {
    report.captured == expected
        && report.delivered == report.captured
        && report.failed == 0
        && report.dropped == 0
        && report.queue_full == 0
}

/// Starts `mode`'s server and warms it up.
fn start_server(
    args: &Args,
    exe: &str,
    sink: &sink::Process,
    mode: Variant,
    threads: usize,
) -> Result<server::Process, BoxError> {
    let exe = match (&args.baseline, mode.baseline) {
        (Some(baseline), true) => baseline.as_str(),
        _ => exe,
    };
    let mut cmd = pinned(args.server_cpus.as_deref(), exe);
    cmd.args([
        "--serve",
        mode.mode.name(),
        &sink.port.to_string(),
        &threads.to_string(),
        &args.burn_ns.to_string(),
    ]);
    let server = server::Process::start(cmd)?;
    if args.warmup > 0 {
        wrk(args, &server.url(), args.warmup)?;
    }
    Ok(server)
}

fn run_one(
    args: &Args,
    exe: &str,
    sink: &sink::Process,
    round: usize,
    mode: Variant,
    threads: usize,
) -> Result<Run, BoxError> {
    let before = sink.counters()?;
    let server = start_server(args, exe, sink, mode, threads)?;
    let mut run = measure(args, sink, round, mode, &server)?;
    let report = server.stop()?;
    // Every event of the server's life, warm-up included, has reached the sink now.
    run.events = sink.counters()?.events - before.events;
    let expected = expected_events(mode.mode, &report);
    run.ok &= run.events == expected
        && report_adds_up(&report, expected)
        && run.wrk_requests <= report.responses;
    run.server = Some(report);
    Ok(run)
}

/// `--duration` seconds of `wrk` against a running server; `ok` says whether `wrk` saw no
/// errors, and `events` counts what the sink received meanwhile.
fn measure(
    args: &Args,
    sink: &sink::Process,
    round: usize,
    mode: Variant,
    server: &server::Process,
) -> Result<Run, BoxError> {
    let sink_start = sink.counters()?;
    let busy_start = cpu_times();
    let cpu_start = cpu_ns(server.pid);
    let out = wrk(args, &server.url(), args.duration)?;
    let cpu = cpu_ns(server.pid).saturating_sub(cpu_start);
    let busy_end = cpu_times();
    let sink_end = sink.counters()?;
    let busy: Vec<f64> = busy_start
        .iter()
        .zip(&busy_end)
        .map(|((b0, t0), (b1, t1))| (b1 - b0) as f64 / (t1 - t0).max(1) as f64 * 100.0)
        .collect();

    let req_per_s = field_after(&out, "Requests/sec:")
        .and_then(|v| v.parse::<f64>().ok())
        .ok_or_else(|| format!("no Requests/sec in wrk's output:\n{out}"))?;
    let wrk_requests = out
        .lines()
        .find(|l| l.contains(" requests in "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|v| v.parse::<u64>().ok())
        .ok_or_else(|| format!("no request count in wrk's output:\n{out}"))?;
    let percentile = |p: &str| {
        out.lines()
            .map(str::trim)
            .find(|l| l.starts_with(p))
            .and_then(|l| l.split_whitespace().nth(1))
            .unwrap_or("?")
            .to_owned()
    };
    let wrk_errors = out.contains("Socket errors") || out.contains("Non-2xx");
    if wrk_errors {
        eprintln!("wrk reported errors:\n{out}");
    }
    // Per request wrk completed in the measured part.
    let cpu_us_per_req = cpu as f64 / 1000.0 / wrk_requests.max(1) as f64;
    let sink_cpu_us_per_req =
        (sink_end.cpu_ns - sink_start.cpu_ns) as f64 / 1000.0 / wrk_requests.max(1) as f64;
    Ok(Run {
        round,
        mode,
        req_per_s,
        wrk_requests,
        p50: percentile("50%"),
        p99: percentile("99%"),
        cpu_us_per_req,
        sink_cpu_us_per_req,
        busy,
        server: None,
        events: sink_end.events - sink_start.events,
        ok: !wrk_errors,
    })
}

fn wrk(args: &Args, url: &str, seconds: u64) -> Result<String, BoxError> {
    let output = pinned(args.load_cpus.as_deref(), "wrk")
        .args([
            &format!("-t{}", args.wrk_threads),
            &format!("-c{}", args.connections),
            &format!("-d{seconds}s"),
            "--latency",
            url,
        ])
        .stderr(Stdio::inherit())
        .output()?;
    if !output.status.success() {
        return Err(format!("wrk failed: {}", output.status).into());
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

fn field_after<'a>(text: &'a str, label: &str) -> Option<&'a str> {
    text.lines()
        .find_map(|l| l.trim().strip_prefix(label))
        .map(str::trim)
}

/// How many CPUs a `taskset -c` list names (`0`, `0,1`, `0-3`).
fn cpu_count(list: &str) -> usize {
    list.split(',')
        .map(|part| match part.split_once('-') {
            Some((a, b)) => match (a.trim().parse::<usize>(), b.trim().parse::<usize>()) {
                (Ok(a), Ok(b)) if b >= a => b - a + 1,
                _ => 1,
            },
            None => 1,
        })
        .sum::<usize>()
        .max(1)
}

/// (busy, total) jiffies of each CPU, from `/proc/stat`.
fn cpu_times() -> Vec<(u64, u64)> {
    let Ok(stat) = std::fs::read_to_string("/proc/stat") else {
        return Vec::new();
    };
    stat.lines()
        .filter(|l| l.starts_with("cpu") && !l.starts_with("cpu "))
        .map(|l| {
            let v: Vec<u64> = l
                .split_whitespace()
                .skip(1)
                .filter_map(|f| f.parse().ok())
                .collect();
            let total: u64 = v.iter().take(8).sum();
            // idle + iowait
            let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
            (total - idle, total)
        })
        .collect()
}

/// How fast this host is right now, on the CPU this process may use: what one system call
/// costs (`getpid`, which glibc does not cache) and one step of a chain of dependent integer
/// operations (an xorshift), best of three passes each (interference only ever slows a pass
/// down). See the module docs for why.
fn host_speed() -> String {
    let best_ns = |pass: &dyn Fn() -> u64, count: u64| {
        (0..3)
            .map(|_| {
                let start = std::time::Instant::now();
                std::hint::black_box(pass());
                start.elapsed().as_nanos() as f64 / count as f64
            })
            .fold(f64::INFINITY, f64::min)
    };
    const CALLS: u64 = 100_000;
    const STEPS: u64 = 20_000_000;
    let syscall = best_ns(
        &|| (0..CALLS).map(|_| u64::from(std::process::id())).sum(),
        CALLS,
    );
    let step = best_ns(
        &|| {
            let mut x = std::hint::black_box(0x9e37_79b9_7f4a_7c15_u64);
            for _ in 0..STEPS {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
            }
            x
        },
        STEPS,
    );
    format!("{syscall:.0} ns a system call (getpid), {step:.2} ns an xorshift step")
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// CPU time (utime + stime, all threads) of a process, in ns, from `/proc/<pid>/stat`.
fn cpu_ns(pid: u32) -> u64 {
    stat_ns(&format!("/proc/{pid}/stat"))
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

/// utime + stime in ns from a `/proc/.../stat` file.
fn stat_ns(path: &str) -> u64 {
    let Ok(stat) = std::fs::read_to_string(path) else {
        return 0;
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
    (field(11) + field(12)) * tick_ns()
}

/// Reads the first line of a child's stdout: its port.
fn read_port(child: &mut Child) -> Result<(u16, BufReader<ChildStdout>), BoxError> {
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let mut reader = BufReader::new(stdout);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    match line.trim().parse() {
        Ok(port) => Ok((port, reader)),
        Err(_) => {
            let _ = child.kill();
            let _ = child.wait();
            Err(format!("the child said {line:?} instead of its port").into())
        }
    }
}

// ===== the server =====

mod server {
    use super::*;

    static RESPONSES: AtomicU64 = AtomicU64::new(0);

    async fn hello() -> &'static str {
        RESPONSES.fetch_add(1, Ordering::Relaxed);
        "Hello, World!"
    }

    /// What a server reports when it stops.
    #[derive(Default)]
    pub(super) struct Report {
        pub(super) responses: u64,
        pub(super) captured: u64,
        pub(super) delivered: u64,
        pub(super) failed: u64,
        pub(super) dropped: u64,
        pub(super) queue_full: u64,
    }

    /// A server process, seen from the orchestrator.
    pub(super) struct Process {
        child: Child,
        stdout: BufReader<ChildStdout>,
        pub(super) port: u16,
        pub(super) pid: u32,
    }

    impl Process {
        pub(super) fn url(&self) -> String {
            format!("http://127.0.0.1:{}/", self.port)
        }

        pub(super) fn start(mut cmd: Command) -> Result<Process, BoxError> {
            let mut child = cmd
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()?;
            // `taskset` execs the program: the pid is the server's.
            let pid = child.id();
            let (port, stdout) = read_port(&mut child)?;
            Ok(Process {
                child,
                stdout,
                port,
                pid,
            })
        }

        /// Closes the server's stdin (it stops serving and shuts its client down) and reads
        /// its report.
        pub(super) fn stop(mut self) -> Result<Report, BoxError> {
            drop(self.child.stdin.take());
            let mut line = String::new();
            self.stdout.read_line(&mut line)?;
            self.child.wait()?;
            let mut report = Report::default();
            for kv in line.split_whitespace() {
                let Some((k, v)) = kv.split_once('=') else {
                    continue;
                };
                let v: u64 = v.parse()?;
                match k {
                    "responses" => report.responses = v,
                    "captured" => report.captured = v,
                    "delivered" => report.delivered = v,
                    "failed" => report.failed = v,
                    "dropped" => report.dropped = v,
                    "queue_full" => report.queue_full = v,
                    _ => {}
                }
            }
            if !line.starts_with("REPORT") {
                return Err(format!("the server said {line:?} instead of its report").into());
            }
            Ok(report)
        }
    }

    /// `--serve MODE SINK_PORT THREADS BURN_NS`: serve until stdin closes, then shut the client
    /// down and print the report.
    pub(super) fn run(args: &[String]) -> Result<(), BoxError> {
        let [mode, sink_port, threads, burn_ns] = args else {
            return Err("--serve MODE SINK_PORT THREADS BURN_NS".into());
        };
        let burn = Duration::from_nanos(burn_ns.parse()?);
        let mode = Mode::parse(mode).ok_or("unknown mode")?;
        let sink_port: u16 = sink_port.parse()?;
        let threads: usize = threads.parse()?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()?;
        runtime.block_on(async move {
            let posthog = PostHog::builder("phc_bench_http")
                .host(format!("http://127.0.0.1:{sink_port}"))
                .flush_at(500)
                .build()?;
            let app = Router::new().route("/", get(hello));
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
            let mut stdout = std::io::stdout();
            writeln!(stdout, "{}", listener.local_addr()?.port())?;
            stdout.flush()?;

            let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
            std::thread::spawn(move || {
                let mut buf = [0u8; 64];
                while matches!(std::io::stdin().read(&mut buf), Ok(n) if n > 0) {}
                let _ = stop_tx.send(());
            });
            let stop = async move {
                let _ = stop_rx.await;
            };
            match mode {
                Mode::Outer => {
                    let service = posthog.layer().capture_pageviews(false).layer(app);
                    axum::serve(
                        listener,
                        ServiceExt::<axum::extract::Request>::into_make_service(service),
                    )
                    .with_graceful_shutdown(stop)
                    .await?;
                }
                _ => {
                    let app = match mode {
                        // What any tower layer costs on a `Router`: axum boxes and clones it
                        // per route.
                        Mode::Noop => app.layer(tower::util::MapRequestLayer::new(
                            std::convert::identity::<axum::extract::Request>,
                        )),
                        Mode::Layer => app.layer(posthog.layer().capture_pageviews(false)),
                        Mode::LayerNoExceptions => app.layer(
                            posthog
                                .layer()
                                .capture_pageviews(false)
                                .capture_exceptions(false),
                        ),
                        // A pass-through layer with a fixed amount of work per request: what
                        // any added work costs the throughput on this machine.
                        Mode::Burn => app.layer(tower::util::MapRequestLayer::new(
                            move |r: axum::extract::Request| {
                                let t = std::time::Instant::now();
                                while t.elapsed() < burn {
                                    std::hint::spin_loop();
                                }
                                r
                            },
                        )),
                        Mode::Pageviews => {
                            app.layer(posthog.layer().should_capture(|_: &RequestHead<'_>| true))
                        }
                        _ => app,
                    };
                    axum::serve(listener, app)
                        .with_graceful_shutdown(stop)
                        .await?;
                }
            }

            posthog.shutdown(Duration::from_secs(30)).await;
            let stats = posthog.stats();
            writeln!(
                stdout,
                "REPORT responses={} captured={} delivered={} failed={} dropped={} queue_full={}",
                RESPONSES.load(Ordering::Relaxed),
                stats.captured,
                stats.delivered,
                stats.failed,
                stats.dropped.total(),
                stats.dropped.queue_full,
            )?;
            stdout.flush()?;
            Ok::<_, BoxError>(())
        })
    }
}

// ===== the sink =====

// bench_http reads only the sink's event count and CPU time (not its requests or bytes), and
// starts it pinned with `start_with`, so `start` goes unused.
#[allow(dead_code)]
#[path = "support/sink.rs"]
mod sink;
