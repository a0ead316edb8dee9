//! Heap allocations per request in a real axum server (hyper parsing included), without the
//! layer, with a pass-through layer, with `PostHogLayer` (by `Router::layer`, and around the
//! whole `Router`) and with a pageview per request.
//!
//! A measurement tool, not an example to copy: `BENCHMARKS.md` has the method and the
//! current figures, and the README lists the examples to start from.
//!
//! ```text
//! cargo run --release --features axum --example http_allocs [-- --only MODE --requests N]
//! ```
//!
//! `--only MODE` (`bare`, `noop`, `layer`, `layer_no_exceptions`, `outer`, `pageviews`)
//! measures one mode, and `--requests N` sets how many requests are measured (default
//! 20 000). Run under callgrind with two values of N, the difference of the instruction
//! totals divided by the difference of N is the instructions per request, client included
//! (the same in every mode); unlike time, it does not depend on what else the machine is
//! doing (`BENCHMARKS.md` has the commands).
//!
//! One process: the server and a client on one keep-alive loopback connection, on a
//! current-thread runtime. A counting global allocator counts every allocation (and
//! reallocation) made while 20 000 requests are answered, after 2 000 unmeasured ones; the
//! client's own allocations are the same in every mode, so the differences to `bare` are the
//! layers'. Pageviews are queued (the client's `flush_at` and `flush_interval` are larger than
//! the run) so the figure is the request path's; delivering a batch adds a few allocations
//! per batch, not per event.

use std::{
    alloc::{GlobalAlloc, Layout, System},
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

use axum::{routing::get, Router, ServiceExt};
use posthog_tower::{http::RequestHead, PostHog};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};
use tower::Layer;

struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

// SAFETY: every call is forwarded unchanged to the system allocator; we only count.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const WARMUP: u64 = 2_000;
const REQUESTS: u64 = 20_000;
const MODES: [&str; 6] = [
    "bare",
    "noop",
    "layer",
    "layer_no_exceptions",
    "outer",
    "pageviews",
];
const REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: app.example\r\nUser-Agent: wrk\r\n\r\n";

type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), BoxError> {
    let mut only = None;
    let mut requests = REQUESTS;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match (arg.as_str(), args.next()) {
            ("--only", Some(mode)) if MODES.contains(&mode.as_str()) => only = Some(mode),
            ("--requests", Some(n)) => requests = n.parse()?,
            _ => return Err("usage: http_allocs [--only MODE] [--requests N]".into()),
        }
    }
    let posthog = PostHog::builder("phc_allocs")
        .host("http://127.0.0.1:9")
        .flush_at(1_000_000)
        .flush_interval(Duration::from_secs(3600))
        .max_queue_size(1_000_000)
        .build()?;
    let mut bare = None;
    println!("| mode | allocations per request | more than bare |");
    println!("|---|---|---|");
    let mut pageviews = 0;
    for name in MODES {
        if only.as_deref().is_some_and(|m| m != name) {
            continue;
        }
        let app = Router::new().route("/", get(|| async { "Hello, World!" }));
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let server = match name {
            "outer" => {
                let service = posthog.layer().capture_pageviews(false).layer(app);
                let make = ServiceExt::<axum::extract::Request>::into_make_service(service);
                tokio::spawn(async move { axum::serve(listener, make).await })
            }
            _ => {
                let router = match name {
                    "noop" => app.layer(tower::util::MapRequestLayer::new(
                        std::convert::identity::<axum::extract::Request>,
                    )),
                    "layer" => app.layer(posthog.layer().capture_pageviews(false)),
                    "layer_no_exceptions" => app.layer(
                        posthog
                            .layer()
                            .capture_pageviews(false)
                            .capture_exceptions(false),
                    ),
                    "pageviews" => {
                        pageviews += WARMUP + requests;
                        app.layer(posthog.layer().should_capture(|_: &RequestHead<'_>| true))
                    }
                    _ => app,
                };
                tokio::spawn(async move { axum::serve(listener, router).await })
            }
        };
        let per_request = measure(addr, requests).await?;
        server.abort();
        let base = *bare.get_or_insert(per_request);
        println!("| {name} | {per_request:.2} | {:+.2} |", per_request - base);
    }
    let stats = posthog.stats();
    assert_eq!(stats.captured, pageviews, "one pageview per request");
    Ok(())
}

/// Allocations per request with the server at `addr` serving one keep-alive connection.
async fn measure(addr: std::net::SocketAddr, requests: u64) -> Result<f64, BoxError> {
    let mut stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let mut buf = vec![0u8; 4096];
    let mut one = async |stream: &mut TcpStream| -> Result<(), BoxError> {
        stream.write_all(REQUEST).await?;
        // The response ends with the 13-byte body; read until it has arrived.
        let mut got = Vec::new();
        while !got.ends_with(b"Hello, World!") {
            let n = stream.read(&mut buf).await?;
            if n == 0 {
                return Err("the server closed the connection".into());
            }
            got.extend_from_slice(&buf[..n]);
        }
        Ok(())
    };
    for _ in 0..WARMUP {
        one(&mut stream).await?;
    }
    let start = ALLOCATIONS.load(Ordering::Relaxed);
    for _ in 0..requests {
        one(&mut stream).await?;
    }
    let count = ALLOCATIONS.load(Ordering::Relaxed) - start;
    Ok(count as f64 / requests.max(1) as f64)
}
