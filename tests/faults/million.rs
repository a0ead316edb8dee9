//! One million events captured while the host refuses every connection: the queue stays
//! bounded, `capture` stays quick, and every event is accounted for.
//!
//! The capture runs in a process of its own (this test binary run again, like
//! [`crate::process`]), so that the peak memory it reads (`VmHWM`, the process's high-water
//! mark of resident memory) is its own and not that of the tests running beside it.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use posthog_tower::{CaptureError, ErrorReport, Event, PostHog, Uuid};
use tokio::sync::watch;

use crate::support::*;
use crate::{account, Produced, Reported, Row};

/// Set in the child process: run [`child`].
const CHILD_ENV: &str = "POSTHOG_FAULTS_MILLION";
/// The libtest name of [`child`].
const CHILD_TEST: &str = "million::child";
/// Marks the child's figures among libtest's own output.
const MARK: &str = "POSTHOG_FAULTS ";

const EVENTS: u64 = 1_000_000;
const PRODUCERS: u64 = 4;
/// The default `max_queue_size`.
const QUEUE: u64 = 10_000;

/// The peak memory the child may reach above its resident memory before the client was built.
///
/// RELIABILITY.md ("Load and memory") measures about 1 to 1.4 KB per queued event and bounds
/// the peak at `threads × queue × 1.4 KB + batches + 10 MiB`, because glibc may keep a
/// queue's worth of freed events in the arena of each runtime thread that built them. Here:
/// 4 × 10 000 × 1.4 KB ≈ 53 MiB, 8 batches of 100 events (about 1 MiB) and 10 MiB, that is
/// 64 MiB, and half as much again for slack in a debug build: 96 MiB. Keeping the million
/// events (or a million refusals) would take about 1 GiB, so the bound tells a bounded queue
/// from a leak with a wide margin either side.
const BOUND_MIB: f64 = 96.0;

/// A field of `/proc/self/status`, in KiB.
fn status_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().strip_suffix("kB"))
        .map(|v| v.trim().parse().unwrap())
        .unwrap_or_else(|| panic!("no {field} in /proc/self/status"))
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// Runs [`child`] in a process of its own and prints its figures.
#[test]
fn a_million_events_while_the_host_refuses_connections() {
    if !std::path::Path::new("/proc/self/status").exists() {
        eprintln!("skipped: no /proc/self/status to read the peak memory from");
        return;
    }
    let output = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", CHILD_TEST, "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, "1")
        .output()
        .expect("the test binary runs again");
    let stdout = String::from_utf8_lossy(&output.stdout);
    for line in stdout.lines() {
        if let Some(at) = line.find(MARK) {
            eprintln!("{}", &line[at + MARK.len()..]);
        }
    }
    assert!(
        output.status.success(),
        "the child failed ({}):\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains(&format!("{MARK}ok")),
        "the child did not run:\n{stdout}"
    );
}

/// The wall time of `capture` calls, in power-of-two buckets of nanoseconds (a million
/// samples kept would weigh on the memory being measured).
struct Latency {
    buckets: [u64; 64],
    over_1ms: u64,
    slowest: Duration,
}

impl Default for Latency {
    fn default() -> Self {
        Latency {
            buckets: [0; 64],
            over_1ms: 0,
            slowest: Duration::ZERO,
        }
    }
}

impl Latency {
    fn record(&mut self, took: Duration) {
        let nanos = took.as_nanos().max(1) as u64;
        self.buckets[63 - nanos.leading_zeros() as usize] += 1;
        if took > Duration::from_millis(1) {
            self.over_1ms += 1;
        }
        self.slowest = self.slowest.max(took);
    }

    fn merge(&mut self, other: &Latency) {
        for (a, b) in self.buckets.iter_mut().zip(other.buckets) {
            *a += b;
        }
        self.over_1ms += other.over_1ms;
        self.slowest = self.slowest.max(other.slowest);
    }

    /// An upper bound (a power of two nanoseconds) of the `q` quantile.
    fn quantile(&self, q: f64) -> Duration {
        let total: u64 = self.buckets.iter().sum();
        let mut seen = 0;
        for (i, n) in self.buckets.iter().enumerate() {
            seen += n;
            if seen as f64 >= q * total as f64 {
                return Duration::from_nanos(2u64 << i);
            }
        }
        self.slowest
    }
}

/// What `on_error` heard, counted without keeping a million errors.
#[derive(Default)]
struct Heard {
    queue_full: AtomicU64,
    closed: AtomicU64,
    other: AtomicU64,
    failed: Mutex<Vec<Uuid>>,
}

/// The scenario itself: a no-op unless [`CHILD_ENV`] is set.
#[test]
fn child() {
    if std::env::var(CHILD_ENV).is_err() {
        return;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(PRODUCERS as usize)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(capture_a_million());
    println!("{MARK}ok");
}

async fn capture_a_million() {
    let hwm_before = status_kib("VmHWM");
    let rss_before = status_kib("VmRSS");
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let heard = Arc::new(Heard::default());
    let (failed_tx, mut failed_rx) = watch::channel(0usize);
    let on_error = {
        let heard = heard.clone();
        move |e: &ErrorReport| match e {
            ErrorReport::Rejected(CaptureError::QueueFull { .. }) => {
                heard.queue_full.fetch_add(1, Ordering::Relaxed);
            }
            ErrorReport::Rejected(CaptureError::Closed) => {
                heard.closed.fetch_add(1, Ordering::Relaxed);
            }
            ErrorReport::Delivery(d) => {
                let mut failed = heard.failed.lock().unwrap();
                failed.extend_from_slice(d.uuids());
                let n = failed.len();
                failed_tx.send_replace(n);
            }
            _ => {
                heard.other.fetch_add(1, Ordering::Relaxed);
            }
        }
    };
    let ph = PostHog::builder(KEY)
        .host(format!("http://127.0.0.1:{port}"))
        .on_error(on_error)
        .build()
        .unwrap();

    let start = std::time::Instant::now();
    let producers: Vec<_> = (0..PRODUCERS)
        .map(|p| {
            let ph = ph.clone();
            tokio::spawn(async move {
                let mut produced = Produced::real_time();
                let mut latency = Latency::default();
                for i in 0..EVENTS / PRODUCERS {
                    let event = Event::new("million", format!("user-{}", i % 1000))
                        .property("i", p * EVENTS + i);
                    let t = std::time::Instant::now();
                    let result = ph.capture(event);
                    latency.record(t.elapsed());
                    produced.record(&result, false);
                    if i % 100 == 99 {
                        tokio::task::yield_now().await;
                    }
                }
                (produced, latency)
            })
        })
        .collect();
    let mut produced = Produced::real_time();
    let mut latency = Latency::default();
    for task in producers {
        let (p, l) = task.await.unwrap();
        produced.merge(p);
        latency.merge(&l);
    }
    let captured_in = start.elapsed();
    let hwm_captured = status_kib("VmHWM");

    // Whatever is queued or being retried fails when the deadline passes.
    let report = ph.shutdown(Duration::from_secs(1)).await;
    // `on_error` hears of the events failed by the deadline just after `shutdown` returns.
    let failed = ph.stats().failed as usize;
    tokio::time::timeout(
        Duration::from_secs(30),
        failed_rx.wait_for(|n| *n >= failed),
    )
    .await
    .expect("on_error never heard of every failed event")
    .unwrap();
    let hwm_after = status_kib("VmHWM");

    let reported = Reported {
        failed: heard.failed.lock().unwrap().clone(),
        queue_full: heard.queue_full.load(Ordering::Relaxed),
        closed: heard.closed.load(Ordering::Relaxed),
    };
    assert_eq!(heard.other.load(Ordering::Relaxed), 0);
    let row = account(&ph, report, &produced, &reported, &[]);
    let accepted = EVENTS - row.queue_full;
    assert_eq!(
        row,
        Row {
            tried: EVENTS,
            delivered: 0,
            failed: accepted,
            failed_but_ingested: 0,
            queue_full: EVENTS - accepted,
            closed: 0,
            before_send: 0,
            duplicates: 0,
            lost: 0,
        }
    );
    // The queue bounds what is accepted while nothing can be sent: the 10 000 it holds, plus
    // what the worker took out into batches of at most 100 (each sent at least once, but
    // for the one being filled and one waiting for a sending slot).
    let s = ph.stats();
    assert!(
        accepted >= QUEUE && accepted <= QUEUE + 100 * (s.requests + 2),
        "{accepted} accepted: {s:?}"
    );
    let failed: HashSet<Uuid> = reported.failed.iter().copied().collect();
    assert_eq!(failed.len() as u64, accepted);

    let say = |line: String| println!("{MARK}{line}");
    say(format!(
        "1 000 000 captures in {captured_in:.2?} ({:.0} /s); capture() wall time: median < {:?}, 99.9 % < {:?}, {} over 1 ms, slowest {:.2?}",
        EVENTS as f64 / captured_in.as_secs_f64(),
        latency.quantile(0.5),
        latency.quantile(0.999),
        latency.over_1ms,
        latency.slowest,
    ));
    say(format!(
        "accepted {accepted}, queue_full {}, failed {} ({} requests, {} retries)",
        row.queue_full, row.failed, s.requests, s.retries
    ));
    say(format!(
        "VmHWM before {:.1} MiB (VmRSS {:.1}), after capturing {:.1} MiB, after shutdown {:.1} MiB: +{:.1} MiB (bound +{BOUND_MIB} MiB)",
        mib(hwm_before),
        mib(rss_before),
        mib(hwm_captured),
        mib(hwm_after),
        mib(hwm_after.saturating_sub(rss_before)),
    ));
    assert!(
        mib(hwm_after.saturating_sub(rss_before)) <= BOUND_MIB,
        "peak memory grew by more than {BOUND_MIB} MiB"
    );
}
