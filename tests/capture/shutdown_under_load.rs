//! An axum server capturing one event per request, shut down gracefully while requests are
//! in flight, then `PostHog::shutdown`: every event whose `capture` returned `Ok` reaches
//! PostHog exactly once, and the counters add up.
//!
//! The order of events is forced with channels, a barrier and a watch, never with sleeps:
//!
//! 1. loaders (several tasks, keep-alive connections) hammer `/hit` until the server goes
//!    away; each waits at a barrier after its first requests, so the load is flowing;
//! 2. requests to `/slow` capture an event, say so, and wait for a release signal: they are
//!    in flight when the graceful shutdown starts;
//! 3. graceful shutdown starts (the loaders keep going); then the slow handlers are released,
//!    capture a second event each (after the shutdown started) and answer;
//! 4. the server finishes once every connection closed; then `PostHog::shutdown` drains.

use std::{
    collections::{HashMap, HashSet},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use axum::{extract::State, http::StatusCode, routing::get, Router};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::{client::legacy::Client, rt::TokioExecutor};
use posthog_tower::{testing::MockPostHog, CaptureError, Event, PostHog, Uuid};
use tokio::sync::{mpsc, oneshot, watch, Barrier};

/// Concurrent loader tasks hammering `/hit`.
const LOADERS: usize = 6;
/// Requests each loader completes before the barrier.
const WARMUP: usize = 200;
/// Requests to `/slow`, in flight when the shutdown starts.
const SLOW: usize = 4;

#[derive(Clone)]
struct App {
    posthog: PostHog,
    /// Every uuid `capture` returned, in the handlers.
    accepted: Arc<Mutex<Vec<Uuid>>>,
    /// `QueueFull` answers seen by the handlers.
    queue_full: Arc<AtomicU64>,
    /// A `/slow` handler captured its first event and is about to wait (or failed to).
    entered: mpsc::UnboundedSender<Result<Uuid, String>>,
    release: watch::Receiver<bool>,
}

fn event(name: &str, n: u64) -> Event {
    Event::new(name, format!("user-{}", n % 50)).property("n", n)
}

impl App {
    /// `capture`: refused when the queue is full.
    fn capture(&self, name: &str, n: u64) -> Result<Uuid, CaptureError> {
        self.record(self.posthog.capture(event(name, n)))
    }

    /// `capture_wait`: waits for room.
    async fn capture_wait(&self, name: &str, n: u64) -> Result<Uuid, CaptureError> {
        self.record(self.posthog.capture_wait(event(name, n)).await)
    }

    fn record(&self, result: Result<Uuid, CaptureError>) -> Result<Uuid, CaptureError> {
        match &result {
            Ok(uuid) => self.accepted.lock().unwrap().push(*uuid),
            Err(CaptureError::QueueFull { .. }) => {
                self.queue_full.fetch_add(1, Ordering::Relaxed);
            }
            Err(_) => {}
        }
        result
    }
}

fn answer(result: Result<Uuid, CaptureError>) -> (StatusCode, String) {
    match result {
        Ok(uuid) => (StatusCode::OK, uuid.to_string()),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
}

async fn hit(State(app): State<App>) -> (StatusCode, String) {
    static N: AtomicU64 = AtomicU64::new(0);
    answer(app.capture("hit", N.fetch_add(1, Ordering::Relaxed)))
}

/// Captures with `capture_wait` (the queue may be full of the loaders' events), then waits
/// for the release and captures again.
async fn slow(State(app): State<App>) -> (StatusCode, String) {
    let first = app.capture_wait("slow before shutdown", 0).await;
    let _ = app.entered.send(first.clone().map_err(|e| e.to_string()));
    let Ok(first) = first else {
        return answer(first);
    };
    let mut release = app.release.clone();
    // The sender lives until the test ends.
    release.wait_for(|go| *go).await.unwrap();
    match app.capture_wait("slow during shutdown", 1).await {
        Ok(second) => (StatusCode::OK, format!("{first} {second}")),
        Err(e) => answer(Err(e)),
    }
}

type HttpClient = Client<hyper_util::client::legacy::connect::HttpConnector, Empty<Bytes>>;

/// GET `url`; `Ok((status, body))`, or `Err` once the server is gone.
async fn get_text(client: &HttpClient, url: &str) -> Result<(StatusCode, String), String> {
    let response = client
        .get(url.parse().unwrap())
        .await
        .map_err(|e| e.to_string())?;
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok((status, String::from_utf8(body.to_vec()).unwrap()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn graceful_shutdown_under_load_delivers_every_accepted_event_once() {
    let mock = MockPostHog::start().await.unwrap();
    let posthog = PostHog::builder("phc_shutdown_under_load")
        .host(mock.url())
        // Small batches and a small queue: many requests to the mock, and a queue that can
        // fill up under the load (each refusal must then be counted).
        .flush_at(10)
        .max_queue_size(16)
        .max_in_flight(4)
        .build()
        .unwrap();

    let (entered_tx, mut entered_rx) = mpsc::unbounded_channel();
    let (release_tx, release_rx) = watch::channel(false);
    let app = App {
        posthog: posthog.clone(),
        accepted: Arc::default(),
        queue_full: Arc::default(),
        entered: entered_tx,
        release: release_rx,
    };
    let router = Router::new()
        .route("/hit", get(hit))
        .route("/slow", get(slow))
        .with_state(app.clone());

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let (stopping_tx, stopping_rx) = oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        axum::serve(listener, router)
            .with_graceful_shutdown(async move {
                let _ = stop_rx.await;
                // axum starts its graceful shutdown as soon as this future completes.
                let _ = stopping_tx.send(());
            })
            .await
    });

    // 1. The load.
    let barrier = Arc::new(Barrier::new(LOADERS + 1));
    let mut loaders = Vec::new();
    for _ in 0..LOADERS {
        let barrier = barrier.clone();
        let url = format!("{base}/hit");
        loaders.push(tokio::spawn(async move {
            let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
            let mut received = Vec::new();
            let mut refused = 0u64;
            let mut done = 0;
            // Until the server is gone.
            while let Ok((status, body)) = get_text(&client, &url).await {
                match status {
                    StatusCode::OK => received.push(body.parse::<Uuid>().unwrap()),
                    StatusCode::SERVICE_UNAVAILABLE => {
                        assert!(body.starts_with("queue full"), "{body}");
                        refused += 1;
                    }
                    other => panic!("unexpected {other}: {body}"),
                }
                done += 1;
                if done == WARMUP {
                    barrier.wait().await;
                }
            }
            assert!(done >= WARMUP, "the server went away during the warm-up");
            (received, refused)
        }));
    }
    barrier.wait().await;

    // 2. Requests in flight: each captured an event and waits for the release.
    let mut slow_requests = Vec::new();
    for _ in 0..SLOW {
        let url = format!("{base}/slow");
        slow_requests.push(tokio::spawn(async move {
            let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
            get_text(&client, &url).await
        }));
    }
    for _ in 0..SLOW {
        // A safety net against a hang, not a synchronisation: this is answered at once.
        let entered = tokio::time::timeout(Duration::from_secs(30), entered_rx.recv()).await;
        entered
            .expect("every /slow handler reports")
            .unwrap()
            .expect("the /slow handler captured");
    }

    // 3. Graceful shutdown while those (and the loaders' requests) are in flight.
    stop_tx.send(()).unwrap();
    stopping_rx.await.unwrap();
    release_tx.send(true).unwrap();

    let mut slow_uuids = Vec::new();
    for request in slow_requests {
        let (status, body) = request.await.unwrap().expect("in-flight request completed");
        assert_eq!(status, StatusCode::OK, "{body}");
        let uuids: Vec<Uuid> = body.split(' ').map(|u| u.parse().unwrap()).collect();
        assert_eq!(uuids.len(), 2, "{body}");
        slow_uuids.extend(uuids);
    }
    // 4. Every connection closed, the server is done; the loaders saw it go away.
    server.await.unwrap().unwrap();
    let mut received = HashSet::new();
    let mut refused_answers = 0;
    for loader in loaders {
        let (uuids, refused) = loader.await.unwrap();
        refused_answers += refused;
        for uuid in uuids {
            assert!(received.insert(uuid), "uuid {uuid} answered twice");
        }
    }
    for uuid in &slow_uuids {
        assert!(received.insert(*uuid), "uuid {uuid} answered twice");
    }

    let report = posthog.shutdown(Duration::from_secs(10)).await;
    let stats = posthog.stats();

    let accepted: Vec<Uuid> = app.accepted.lock().unwrap().clone();
    let accepted_set: HashSet<Uuid> = accepted.iter().copied().collect();
    assert_eq!(
        accepted_set.len(),
        accepted.len(),
        "capture returned a uuid twice"
    );
    // What the clients got back is what the handlers captured (a response lost with its
    // connection would show here; graceful shutdown loses none).
    assert_eq!(received, accepted_set);
    let queue_full = app.queue_full.load(Ordering::Relaxed);
    assert_eq!(refused_answers, queue_full);

    // On the wire: every accepted event, exactly once.
    let events = mock
        .wait_for_events(accepted.len(), Duration::from_secs(10))
        .await
        .unwrap();
    let mut arrived: HashMap<Uuid, usize> = HashMap::new();
    for event in &events {
        let uuid: Uuid = event["uuid"].as_str().unwrap().parse().unwrap();
        *arrived.entry(uuid).or_default() += 1;
    }
    let duplicated: Vec<_> = arrived.iter().filter(|(_, &n)| n > 1).collect();
    assert!(
        duplicated.is_empty(),
        "arrived more than once: {duplicated:?}"
    );
    assert_eq!(
        arrived.keys().copied().collect::<HashSet<_>>(),
        accepted_set
    );
    let during_shutdown = events
        .iter()
        .filter(|e| e["event"] == "slow during shutdown")
        .count();
    assert_eq!(during_shutdown, SLOW);

    // The counters add up.
    let n = accepted.len() as u64;
    assert_eq!(stats.captured, n, "{stats:?}");
    assert_eq!(stats.delivered, n, "{stats:?}");
    assert_eq!(stats.failed, 0, "{stats:?}");
    assert_eq!(stats.dropped.queue_full, queue_full, "{stats:?}");
    assert_eq!(
        stats.dropped.total(),
        queue_full,
        "nothing else refused or dropped: {stats:?}"
    );
    assert_eq!(stats.captured, stats.delivered + stats.failed);
    assert_eq!((stats.queue_depth, stats.batches_in_flight), (0, 0));
    assert_eq!(
        (report.delivered, report.failed, report.dropped),
        (n, 0, 0),
        "{report:?}"
    );
    let hits = events.iter().filter(|e| e["event"] == "hit").count();
    assert!(hits > 0, "no load: {stats:?}");
    eprintln!(
        "{n} events accepted ({hits} from the loaders), {queue_full} refused (queue full), \
         {} requests to /batch/",
        stats.requests
    );

    // After shutdown, capture is refused and counted.
    assert!(matches!(
        posthog.capture(Event::new("late", "u")),
        Err(CaptureError::Closed)
    ));
    assert_eq!(posthog.stats().dropped.closed, 1);
    mock.shutdown().await;
}
