//! The sink shared by the benchmark examples (`bench_capture`, `bench_load`, `bench_http`): a
//! PostHog stand-in in a separate process, so that neither its CPU nor its memory counts as
//! the client's.
//!
//! The sink is the example's own binary re-executed with `--sink` (the example's `main` calls
//! [`run`] then). It serves HTTP/1.1 on `127.0.0.1:<free port>` (printed on its stdout),
//! answers `POST /batch/` with 200 `{"status":1}` once it read the body (gunzipped when
//! `Content-Encoding: gzip`, or deflate, br, zstd), counts the events by their `"uuid":` keys,
//! answers capture v1 (`POST /i/v1/analytics/events`) with every event's `ok` result, reports its totals
//! and its own CPU time on `GET /count`, and exits when its stdin closes.
//!
//! Included by each example with `#[path = "support/sink.rs"] mod sink;`; it is not an
//! example itself (cargo only takes `examples/<name>.rs` and `examples/<name>/main.rs`).

use std::{
    convert::Infallible,
    io::{BufRead, BufReader, Read, Write},
    net::TcpStream,
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicU64, Ordering},
};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::{body::Incoming, server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

static EVENTS: AtomicU64 = AtomicU64::new(0);
static REQUESTS: AtomicU64 = AtomicU64::new(0);
static WIRE_BYTES: AtomicU64 = AtomicU64::new(0);
static JSON_BYTES: AtomicU64 = AtomicU64::new(0);

/// The sink process, seen from the client. Dropping it closes the sink's stdin, which makes
/// it exit, and waits for it.
pub struct Process {
    child: Child,
    pub port: u16,
}

/// The sink's totals, from `GET /count`.
pub struct Counters {
    /// Events counted (by their `"uuid":` keys).
    pub events: u64,
    /// `POST /batch/` requests answered with 200.
    pub requests: u64,
    /// Request body bytes as received (gzipped or not).
    pub wire_bytes: u64,
    /// Request body bytes once gunzipped (the JSON).
    pub json_bytes: u64,
    /// The sink's CPU time so far (utime + stime), in ns.
    pub cpu_ns: u64,
}

impl Process {
    /// Starts the sink: this executable with `--sink`.
    pub fn start() -> Result<Process, BoxError> {
        Process::start_with(Command::new(std::env::current_exe()?))
    }

    /// Starts the sink from `cmd`, a command that runs this executable (e.g. behind
    /// `taskset -c <cpus>`); `--sink` is appended to its arguments.
    pub fn start_with(mut cmd: Command) -> Result<Process, BoxError> {
        let mut child = cmd
            .arg("--sink")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        let port = match line.trim().parse() {
            Ok(port) => port,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("the sink said {line:?} instead of its port").into());
            }
        };
        Ok(Process { child, port })
    }

    pub fn counters(&self) -> Result<Counters, BoxError> {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port))?;
        stream.write_all(b"GET /count HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\n\r\n")?;
        let mut response = String::new();
        stream.read_to_string(&mut response)?;
        let body = response
            .split_once("\r\n\r\n")
            .map(|(_, body)| body)
            .ok_or("bad /count response")?;
        let mut values = body.split_whitespace().map(|v| v.parse::<u64>());
        let mut next =
            || -> Result<u64, BoxError> { Ok(values.next().ok_or("short /count response")??) };
        Ok(Counters {
            events: next()?,
            requests: next()?,
            wire_bytes: next()?,
            json_bytes: next()?,
            cpu_ns: next()?,
        })
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        // Closing stdin tells the sink to exit.
        drop(self.child.stdin.take());
        if self.child.wait().is_err() {
            let _ = self.child.kill();
        }
    }
}

/// The sink's main: serve until stdin closes.
pub fn run() -> Result<(), BoxError> {
    std::thread::spawn(|| {
        let mut buf = [0u8; 64];
        while matches!(std::io::stdin().read(&mut buf), Ok(n) if n > 0) {}
        std::process::exit(0);
    });
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let mut stdout = std::io::stdout();
        writeln!(stdout, "{}", listener.local_addr()?.port())?;
        stdout.flush()?;
        loop {
            let (stream, _) = listener.accept().await?;
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service_fn(handle))
                    .await;
            });
        }
    })
}

async fn handle(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = req.uri().path().trim_end_matches('/');
    match (req.method(), path) {
        (&Method::POST, "/batch" | "/i/v1/analytics/events") => {
            let v1 = path != "/batch";
            let encoding = req
                .headers()
                .get(http::header::CONTENT_ENCODING)
                .map(|v| v.as_bytes().to_ascii_lowercase());
            let body = match req.into_body().collect().await {
                Ok(body) => body.to_bytes(),
                Err(_) => return Ok(reply(StatusCode::BAD_REQUEST, "unreadable body")),
            };
            let wire = body.len() as u64;
            let json = match decode(encoding.as_deref(), body) {
                Ok(json) => json,
                Err(e) => return Ok(reply(StatusCode::BAD_REQUEST, e)),
            };
            let Ok(text) = std::str::from_utf8(&json) else {
                return Ok(reply(StatusCode::BAD_REQUEST, "not UTF-8"));
            };
            let mut events = 0u64;
            // Capture v1 answers every event's result, as PostHog does.
            let mut results = String::from(r#"{"results":{"#);
            for (at, _) in text.match_indices("\"uuid\":\"") {
                events += 1;
                if v1 {
                    let uuid = &text[at + 8..(at + 8 + 36).min(text.len())];
                    if events > 1 {
                        results.push(',');
                    }
                    results.push('"');
                    results.push_str(uuid);
                    results.push_str(r#"":{"result":"ok"}"#);
                }
            }
            results.push_str("}}");
            EVENTS.fetch_add(events, Ordering::Relaxed);
            REQUESTS.fetch_add(1, Ordering::Relaxed);
            WIRE_BYTES.fetch_add(wire, Ordering::Relaxed);
            JSON_BYTES.fetch_add(json.len() as u64, Ordering::Relaxed);
            if v1 {
                Ok(reply(StatusCode::OK, results))
            } else {
                Ok(reply(StatusCode::OK, r#"{"status":1}"#))
            }
        }
        (&Method::GET, "/count") => {
            let text = format!(
                "{} {} {} {} {}",
                EVENTS.load(Ordering::Relaxed),
                REQUESTS.load(Ordering::Relaxed),
                WIRE_BYTES.load(Ordering::Relaxed),
                JSON_BYTES.load(Ordering::Relaxed),
                own_cpu_ns(),
            );
            Ok(reply(StatusCode::OK, text))
        }
        _ => Ok(reply(StatusCode::NOT_FOUND, r#"{"error":"not found"}"#)),
    }
}

/// The body as sent with `Content-Encoding: encoding` (lowercased), decoded.
fn decode(encoding: Option<&[u8]>, body: Bytes) -> Result<Bytes, &'static str> {
    let mut out = Vec::with_capacity(body.len() * 8);
    let read = match encoding {
        None => return Ok(body),
        Some(b"gzip") => flate2::read::MultiGzDecoder::new(&body[..]).read_to_end(&mut out),
        Some(b"deflate") => flate2::read::ZlibDecoder::new(&body[..]).read_to_end(&mut out),
        #[cfg(feature = "brotli")]
        Some(b"br") => brotli::Decompressor::new(&body[..], 4096).read_to_end(&mut out),
        #[cfg(feature = "zstd")]
        Some(b"zstd") => {
            zstd::stream::read::Decoder::new(&body[..]).and_then(|mut d| d.read_to_end(&mut out))
        }
        Some(_) => return Err("unknown content encoding"),
    };
    match read {
        Ok(_) => Ok(Bytes::from(out)),
        Err(_) => Err("bad body encoding"),
    }
}

fn reply(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut res = Response::new(Full::new(body.into()));
    *res.status_mut() = status;
    res.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    res
}

/// The sink's own CPU time (utime + stime of all its threads) in ns, from
/// `/proc/self/stat`, whose times are in clock ticks of `getconf CLK_TCK` (asked once; 100 Hz
/// if that fails). 0 where `/proc` is missing.
fn own_cpu_ns() -> u64 {
    static HZ: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    let hz = *HZ.get_or_init(|| {
        let out = Command::new("getconf").arg("CLK_TCK").output();
        let hz = out
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok());
        hz.filter(|&hz: &u64| hz > 0).unwrap_or(100)
    });
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // After the command name (which may hold spaces) come fields 3 (state) on; utime and
    // stime are fields 14 and 15, so the 12th and 13th of these.
    let after_name = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let ticks: u64 = after_name
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|f| f.parse::<u64>().ok())
        .sum();
    ticks * (1_000_000_000 / hz)
}
