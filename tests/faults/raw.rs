//! A bare HTTP/1.1 server on 127.0.0.1, for answers `MockPostHog` cannot give: silence,
//! answers dripped byte by byte, a 50 MB body, redirects, and bytes that are not HTTP.
//!
//! It runs as tasks of the test's runtime on a tokio `TcpListener`, so it works on the paused
//! clock (drips wait on tokio's timer). It reads each `POST /batch/` whole, records the
//! events it carried, and answers from a script, falling back to a default answer.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

/// The pace of a dripped answer: one byte every 200 ms.
pub(crate) const DRIP: Duration = Duration::from_millis(200);

/// The body of every `200 OK` this server sends whole.
const OK_BODY: &[u8] = br#"{"status":1}"#;

/// The head of a `200 OK` carrying [`OK_BODY`]: 39 bytes.
const OK_HEAD: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 12\r\n\r\n";

/// The size of the [`Answer::Huge`] body.
pub(crate) const HUGE: usize = 50 * 1024 * 1024;
const CHUNK: usize = 64 * 1024;

/// How the server answers one request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Answer {
    /// `200 OK` with `{"status":1}`, at once.
    Ok,
    /// Nothing, ever: the request is read and the connection stays open.
    Silent,
    /// `200 OK` with `{"status":1}`, one byte every [`DRIP`], status line and headers
    /// included: 51 bytes, the last one 10.2 s after the request (the head ends at 7.8 s).
    DripAll,
    /// The status line and headers of a `200 OK` at once, then its 12-byte body
    /// `{"status":1}` one byte every [`DRIP`]: the last one 2.4 s after the request.
    DripBody,
    /// `200 OK` with a 50 MB body (`Content-Length`), written 64 KiB at a time for as long as
    /// the client reads.
    Huge,
    /// A redirect with this status to `location`, with an empty body.
    Redirect { status: u16, location: String },
    /// These bytes, then the connection is closed.
    Garbage(&'static [u8]),
}

impl Answer {
    /// Whether the answer is a 2xx: the server took the batch in, whether or not the answer
    /// reaches the client.
    pub(crate) fn is_2xx(&self) -> bool {
        matches!(
            self,
            Answer::Ok | Answer::DripAll | Answer::DripBody | Answer::Huge
        )
    }
}

/// A request the server read.
#[derive(Clone, Debug)]
pub(crate) struct RawRequest {
    /// The events of its batch.
    pub(crate) events: Vec<Value>,
    /// How it was answered.
    pub(crate) answer: Answer,
    /// When its last byte was read.
    pub(crate) received_at: Instant,
    /// The connection it came on, numbered from 1 in order of acceptance.
    pub(crate) connection: usize,
}

#[derive(Debug)]
struct State {
    script: VecDeque<Answer>,
    default: Answer,
    requests: Vec<RawRequest>,
    connections: usize,
}

/// The bare server. Dropping it does not stop it: its tasks end with the test's runtime.
pub(crate) struct RawServer {
    url: String,
    state: Arc<Mutex<State>>,
}

impl RawServer {
    /// A server answering every request `default`, unless [`enqueue`](Self::enqueue)d
    /// answers come first.
    pub(crate) async fn start(default: Answer) -> Self {
        Self::bind(default, false).await
    }

    /// A black hole that accepts connections and never reads from them (nor writes).
    pub(crate) async fn deaf() -> Self {
        Self::bind(Answer::Silent, true).await
    }

    async fn bind(default: Answer, deaf: bool) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let state = Arc::new(Mutex::new(State {
            script: VecDeque::new(),
            default,
            requests: Vec::new(),
            connections: 0,
        }));
        let shared = Arc::clone(&state);
        tokio::spawn(async move {
            // Connections held open without being read, when deaf.
            let mut held = Vec::new();
            while let Ok((conn, _)) = listener.accept().await {
                let id = {
                    let mut state = shared.lock().unwrap();
                    state.connections += 1;
                    state.connections
                };
                if deaf {
                    held.push(conn);
                } else {
                    tokio::spawn(serve(conn, id, Arc::clone(&shared)));
                }
            }
        });
        RawServer { url, state }
    }

    pub(crate) fn url(&self) -> &str {
        &self.url
    }

    /// Answers the next request not yet scripted with `answer`.
    pub(crate) fn enqueue(&self, answer: Answer) {
        self.state.lock().unwrap().script.push_back(answer);
    }

    /// Every request read, in order of arrival.
    pub(crate) fn requests(&self) -> Vec<RawRequest> {
        self.state.lock().unwrap().requests.clone()
    }

    /// Connections accepted.
    pub(crate) fn connections(&self) -> usize {
        self.state.lock().unwrap().connections
    }
}

/// Serves one connection until the client or the answer closes it.
async fn serve(mut conn: TcpStream, id: usize, state: Arc<Mutex<State>>) {
    // Without it, Nagle's algorithm holds each dripped byte until the client's (delayed)
    // acknowledgement of the previous one: a wait in real time, which tokio's paused clock
    // cannot see, so the client's timers would fire while the bytes sit in the kernel.
    conn.set_nodelay(true).unwrap();
    let mut buf = Vec::new();
    while let Some(body) = crate::support::read_batch_request(&mut conn, &mut buf).await {
        let json: Value = serde_json::from_slice(&body).expect("a JSON batch");
        let events = json["batch"].as_array().expect("a batch array").clone();
        let answer = {
            let mut state = state.lock().unwrap();
            let answer = state
                .script
                .pop_front()
                .unwrap_or_else(|| state.default.clone());
            state.requests.push(RawRequest {
                events,
                answer: answer.clone(),
                received_at: Instant::now(),
                connection: id,
            });
            answer
        };
        if !respond(&mut conn, &answer).await {
            return;
        }
    }
}

/// Writes `bytes` one at a time, each after a [`DRIP`]; `false` once the client is gone.
async fn drip(conn: &mut TcpStream, bytes: &[u8]) -> bool {
    for byte in bytes {
        tokio::time::sleep(DRIP).await;
        if conn.write_all(&[*byte]).await.is_err() {
            return false;
        }
    }
    true
}

/// Answers one request; `false` when the connection is over.
async fn respond(conn: &mut TcpStream, answer: &Answer) -> bool {
    match answer {
        Answer::Ok => {
            let whole = [OK_HEAD, OK_BODY].concat();
            conn.write_all(&whole).await.is_ok()
        }
        Answer::Silent => std::future::pending::<bool>().await,
        Answer::DripAll => drip(conn, &[OK_HEAD, OK_BODY].concat()).await,
        Answer::DripBody => conn.write_all(OK_HEAD).await.is_ok() && drip(conn, OK_BODY).await,
        Answer::Huge => {
            let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {HUGE}\r\n\r\n");
            if conn.write_all(head.as_bytes()).await.is_err() {
                return false;
            }
            let filler = vec![b' '; CHUNK];
            for _ in 0..HUGE / CHUNK {
                // The client stops reading and closes: the rest is never sent.
                if conn.write_all(&filler).await.is_err() {
                    return false;
                }
            }
            true
        }
        Answer::Redirect { status, location } => {
            let head = format!(
                "HTTP/1.1 {status} Redirect\r\nlocation: {location}\r\ncontent-length: 0\r\n\r\n"
            );
            conn.write_all(head.as_bytes()).await.is_ok()
        }
        Answer::Garbage(bytes) => {
            let _ = conn.write_all(bytes).await;
            // Dropping the connection closes it.
            false
        }
    }
}
