//! A server *process* killed with SIGKILL while batches are in flight, then restarted on the
//! same port.
//!
//! The server is this test binary run again (`std::env::current_exe()`) with
//! [`SERVER_ENV`] set and libtest told to run only [`child_server`], which returns at once
//! in a normal test run. It serves `POST /batch/` with hyper and prints one line per request
//! it reads, with the events of the batch, before answering; the parent waits on those lines
//! (and on the child's "listening" line), never on a sleep. Real time is unavoidable with
//! another process; the scenario takes about 1.5 s.

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use posthog_tower::{capture::FlushReport, PostHog};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

use crate::support::*;
use crate::{account, add_report, Arrival, Produced, Row};

/// Set in the child: the port to listen on (0 for any).
const SERVER_ENV: &str = "POSTHOG_FAULTS_SERVER";
/// Set in the child: answer only the first this many requests, and hold every later one
/// unanswered (until the process dies). Unset: answer every request.
const ANSWER_FIRST_ENV: &str = "POSTHOG_FAULTS_ANSWER_FIRST";
/// The libtest name of [`child_server`].
const CHILD_TEST: &str = "process::child_server";
/// How long the child waits before answering a request it answers.
const ANSWER_DELAY: Duration = Duration::from_millis(100);
/// Marks the child's protocol lines among libtest's own output.
const MARK: &str = "POSTHOG_FAULTS ";
/// Bounds every wait on the child, to turn a hang into a failure; nothing waits this long.
const GUARD: Duration = Duration::from_secs(30);

/// The server process. A no-op unless [`SERVER_ENV`] is set (by [`ServerProcess::spawn`]).
#[test]
fn child_server() {
    let Ok(port) = std::env::var(SERVER_ENV) else {
        return;
    };
    let port: u16 = port.parse().expect("a port number");
    let answer_first: u64 = std::env::var(ANSWER_FIRST_ENV)
        .map(|n| n.parse().expect("a request count"))
        .unwrap_or(u64::MAX);
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(serve(port, answer_first));
}

/// Prints one protocol line to stdout, at once.
fn say(line: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{MARK}{line}").unwrap();
    out.flush().unwrap();
}

async fn serve(port: u16, answer_first: u64) {
    // tokio sets SO_REUSEADDR, so the port of a killed server binds again at once.
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .unwrap_or_else(|e| panic!("the child server cannot bind port {port}: {e}"));
    say(&format!(
        "listening {}",
        listener.local_addr().unwrap().port()
    ));
    let seen = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    loop {
        let (conn, _) = listener.accept().await.unwrap();
        let seen = seen.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<Incoming>| {
                let seen = seen.clone();
                async move {
                    let body = req.into_body().collect().await.unwrap().to_bytes();
                    let json: Value = serde_json::from_slice(&body).expect("a JSON batch");
                    let n = seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
                    // Compact JSON holds no newline: one line per request.
                    say(&format!("recv {n} {}", json["batch"]));
                    if n > answer_first {
                        std::future::pending::<()>().await;
                    }
                    tokio::time::sleep(ANSWER_DELAY).await;
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(
                        br#"{"status":1}"#,
                    ))))
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(conn), service)
                .await;
        });
    }
}

/// A line from the child.
#[derive(Debug)]
enum Line {
    Listening(u16),
    /// The `n`-th request it read (from 1), with the events of its batch.
    Received(u64, Vec<Value>),
}

/// The parent's handle on a child server.
struct ServerProcess {
    child: Child,
    lines: mpsc::UnboundedReceiver<Line>,
    port: u16,
}

impl ServerProcess {
    /// Starts a server on `port` (0: any) and waits until it listens.
    async fn spawn(port: u16, answer_first: Option<u64>) -> Self {
        let mut command = Command::new(std::env::current_exe().unwrap());
        command
            .args(["--exact", CHILD_TEST, "--nocapture", "--test-threads=1"])
            .env(SERVER_ENV, port.to_string())
            .env_remove(ANSWER_FIRST_ENV)
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true);
        if let Some(n) = answer_first {
            command.env(ANSWER_FIRST_ENV, n.to_string());
        }
        let mut child = command.spawn().expect("the test binary runs again");
        let stdout = child.stdout.take().unwrap();
        let (tx, mut lines) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut reader = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = reader.next_line().await {
                // libtest may print on the same line before ours.
                let Some(at) = line.find(MARK) else { continue };
                let line = &line[at + MARK.len()..];
                let parsed = if let Some(port) = line.strip_prefix("listening ") {
                    Line::Listening(port.parse().unwrap())
                } else if let Some(rest) = line.strip_prefix("recv ") {
                    let (n, batch) = rest.split_once(' ').unwrap();
                    let batch: Value = serde_json::from_str(batch).unwrap();
                    Line::Received(n.parse().unwrap(), batch.as_array().unwrap().clone())
                } else {
                    panic!("unexpected line from the child: {line}");
                };
                if tx.send(parsed).is_err() {
                    return;
                }
            }
        });
        let port = match next_line(&mut lines).await {
            Some(Line::Listening(p)) => p,
            other => panic!("the child server did not start: {other:?}"),
        };
        ServerProcess { child, lines, port }
    }

    /// Waits for the next request line.
    async fn received(&mut self) -> (u64, Vec<Value>) {
        match next_line(&mut self.lines).await {
            Some(Line::Received(n, events)) => (n, events),
            other => panic!("expected a request line, got {other:?}"),
        }
    }

    /// Kills the process (SIGKILL) and returns the requests it reported that were not taken
    /// with [`received`](Self::received) yet.
    async fn kill(mut self) -> Vec<(u64, Vec<Value>)> {
        self.child.kill().await.unwrap();
        self.rest().await
    }

    /// Every request line until the child's output ends.
    async fn rest(&mut self) -> Vec<(u64, Vec<Value>)> {
        let mut rest = Vec::new();
        while let Some(line) = next_line(&mut self.lines).await {
            match line {
                Line::Received(n, events) => rest.push((n, events)),
                other => panic!("unexpected line {other:?}"),
            }
        }
        rest
    }
}

async fn next_line(lines: &mut mpsc::UnboundedReceiver<Line>) -> Option<Line> {
    tokio::time::timeout(GUARD, lines.recv())
        .await
        .expect("the child server went quiet")
}

/// Waits until the client has scheduled `n` retries. The client's counters offer no
/// notification, so this looks at them every millisecond (bounded by [`GUARD`]); it waits for
/// the condition, not for a time that hopes to be enough.
async fn retries_reach(ph: &PostHog, n: u64) {
    tokio::time::timeout(GUARD, async {
        while ph.stats().retries < n {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("retries stuck at {:?}", ph.stats()));
}

/// `flush_at(50)`, up to 8 batches in flight, the default 3 retries from 1 s.
///
/// 1. The first server answers the first 2 requests (after 100 ms) and holds every later one.
///    100 events are captured and flushed: delivered.
/// 2. 200 events: 4 batches go out at once. Once the server has printed all 4 (it holds
///    them), it is killed with SIGKILL: 4 batches in flight, read by the server, unanswered.
///    The client sees the connections close and schedules 4 retries (1 to 1.25 s later).
/// 3. While nothing listens, 50 more events: the batch is refused and scheduled for a retry.
/// 4. A second server process binds the same port; the 5 retries reach it, then 150 more
///    events; shutdown.
///
/// The 200 events the first server read but never answered arrive a second time, at the
/// second server, with the same uuids (PostHog would deduplicate them); nothing else arrives
/// twice, nothing fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_process_killed_with_batches_in_flight_and_restarted() {
    let first = ServerProcess::spawn(0, Some(2)).await;
    let port = first.port;
    let mut first = first;
    let errors = ErrorLog::new();
    let ph = PostHog::builder(KEY)
        .host(format!("http://127.0.0.1:{port}"))
        .flush_at(50)
        .on_error(errors.callback())
        .build()
        .unwrap();
    let mut produced = Produced::real_time();
    let mut report = FlushReport::default();
    let mut arrivals = Vec::new();
    let mut arrived = |events: Vec<Value>, acknowledged: bool| {
        arrivals.push(Arrival {
            events,
            ingested: true,
            acknowledged,
        })
    };

    // 1. Answered.
    produced.burst(&ph, 100);
    add_report(&mut report, ph.flush().await);
    assert_eq!((report.delivered, report.failed), (100, 0));
    for _ in 0..2 {
        let (n, events) = first.received().await;
        assert!(n <= 2);
        arrived(events, true);
    }

    // 2. In flight when the server dies.
    produced.burst(&ph, 200);
    for _ in 0..4 {
        let (n, events) = first.received().await;
        assert!(n > 2, "request {n} was answered");
        arrived(events, false);
    }
    let rest = first.kill().await;
    assert!(rest.is_empty(), "more requests than batches: {rest:?}");
    retries_reach(&ph, 4).await;

    // 3. Refused.
    produced.burst(&ph, 50);
    retries_reach(&ph, 5).await;

    // 4. Back on the same port.
    let second = ServerProcess::spawn(port, None).await;
    assert_eq!(second.port, port);
    produced.burst(&ph, 150);
    add_report(&mut report, ph.shutdown(Duration::from_secs(20)).await);
    let rest = second.kill().await;
    for (_, events) in rest {
        arrived(events, true);
    }

    let row = account(&ph, report, &produced, &(&errors).into(), &arrivals);
    assert_eq!(
        row,
        Row {
            tried: 500,
            delivered: 500,
            failed: 0,
            failed_but_ingested: 0,
            queue_full: 0,
            closed: 0,
            before_send: 0,
            duplicates: 200,
            lost: 0,
        }
    );
    // 2 + 4 + 1 first attempts, 5 retries, 3 more batches: unless the second server took
    // longer than the first backoff to start, which would add refused retries.
    let s = ph.stats();
    eprintln!("{s:?}");
    assert!(s.retries >= 5 && s.requests == 10 + s.retries, "{s:?}");
    assert!(errors.is_empty(), "{:?}", errors.all());
}
