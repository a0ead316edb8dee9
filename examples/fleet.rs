//! A fleet of 100 clients sharing flag definitions through one real Redis: how often PostHog is
//! asked, how fast a change reaches every client, and what a Redis outage changes.
//!
//! ```text
//! cargo run --release --example fleet
//! ```
//!
//! Starts the crate's mock PostHog and a `redis-server` of its own (on a free loopback port,
//! no persistence; `tools/test.sh` installs Redis when it is missing), then 100 clients in this
//! process, each with its own `RedisDefinitionsCache`, polling every second. The definitions at
//! the mock change every 3 s; Redis is killed for a while and restarted mid-run. Printed: the
//! definitions requests PostHog saw per poll interval, for each change the time until the
//! leader stored it in Redis and until every client evaluated it, and the fallback counter.

use std::{
    net::{TcpListener, TcpStream},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use posthog_tower::{
    flags::{FlagsRequest, RedisDefinitionsCache},
    testing::{MockPostHog, MockResponse},
    PostHog,
};
use redis::{aio::ConnectionManagerConfig, PushKind};
use serde_json::{json, Value};

const CLIENTS: usize = 100;
const PROJECT: &str = "phc_fleet_example";
const POLL: Duration = Duration::from_secs(1);
const CHANGE_EVERY: Duration = Duration::from_secs(3);
const CHANNEL: &str = "posthog:flag_definitions:phc_fleet_example:changed";

fn definitions(version: u32) -> Value {
    json!({
        "flags": [{"id": 1, "key": format!("version-{version}"), "active": true,
                   "filters": {"groups": [{"properties": [], "rollout_percentage": 100}]}}],
        "group_type_mapping": {}, "cohorts": {}
    })
}

/// A `redis-server` on a free loopback port, no persistence; killed on drop.
struct Redis {
    child: Option<Child>,
    port: u16,
    dir: std::path::PathBuf,
}

impl Redis {
    fn start() -> Redis {
        let dir = std::env::temp_dir().join(format!("posthog-fleet-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temporary directory");
        for _ in 0..10 {
            let port = TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("a free port")
                .port();
            let mut redis = Redis {
                child: None,
                port,
                dir: dir.clone(),
            };
            if redis.spawn() {
                return redis;
            }
        }
        panic!("could not start redis-server");
    }

    fn spawn(&mut self) -> bool {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--maxclients", "10000"])
            .arg("--dir")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        let mut child = match child {
            Ok(child) => child,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                panic!("redis-server is not installed: run tools/test.sh once (it installs Redis)")
            }
            Err(e) => panic!("could not run redis-server: {e}"),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return false;
            }
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                self.child = Some(child);
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = child.kill();
        false
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The moment a version was announced on the change channel (the leader's store).
async fn announcements(url: String) -> tokio::sync::mpsc::UnboundedReceiver<Instant> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let (push_tx, mut push_rx) = tokio::sync::mpsc::unbounded_channel();
    let client = redis::Client::open(format!("{url}?protocol=resp3")).expect("url");
    let config = ConnectionManagerConfig::new()
        .set_push_sender(push_tx)
        .set_automatic_resubscription();
    let mut conn = redis::aio::ConnectionManager::new_with_config(client, config)
        .await
        .expect("connect");
    conn.subscribe(CHANNEL).await.expect("subscribe");
    tokio::spawn(async move {
        let _conn = conn;
        while let Some(push) = push_rx.recv().await {
            if push.kind == PushKind::Message {
                let _ = tx.send(Instant::now());
            }
        }
    });
    rx
}

struct Fleet {
    clients: Vec<PostHog>,
}

impl Fleet {
    fn on_version(&self, version: u32) -> usize {
        let key = format!("version-{version}");
        self.clients
            .iter()
            .filter(|c| c.local_flags().is_some_and(|l| l.keys().any(|k| k == key)))
            .count()
    }

    fn fallbacks(&self) -> u64 {
        self.clients
            .iter()
            .map(|c| c.stats().definitions_cache_fallbacks)
            .sum()
    }

    /// Every client evaluates the flag of `version` locally, for a user.
    async fn all_evaluate(&self, version: u32) -> bool {
        let key = format!("version-{version}");
        for c in &self.clients {
            let request = FlagsRequest::new("user-1").only_evaluate_locally(true);
            if c.is_feature_enabled(&key, request).await != Ok(true) {
                return false;
            }
        }
        true
    }
}

struct Change {
    version: u32,
    redis_up: bool,
    stored_after: Option<Duration>,
    everyone_after_store: Option<Duration>,
    everyone_after_change: Duration,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut redis = Redis::start();
    let mock = MockPostHog::start().await?;
    let mut version = 1;
    mock.set_default(
        "/flags/definitions",
        MockResponse::json(200, definitions(version)).with_header("etag", "\"v1\""),
    );
    let mut announced = announcements(redis.url()).await;

    let clients = (0..CLIENTS)
        .map(|n| {
            let cache = RedisDefinitionsCache::open(&redis.url(), PROJECT)?
                .lease_ttl(POLL * 3)
                .timeout(Duration::from_millis(250));
            Ok(PostHog::builder(PROJECT)
                .host(mock.url())
                .personal_api_key(format!("phx_fleet_{n}"))
                .poll_interval(POLL)
                .flag_definitions_cache(cache)
                .build()?)
        })
        .collect::<Result<Vec<_>, Box<dyn std::error::Error>>>()?;
    let fleet = Fleet { clients };
    let started = Instant::now();
    for c in &fleet.clients {
        c.wait_for_flag_definitions(Duration::from_secs(10)).await;
    }
    println!(
        "{CLIENTS} clients evaluating locally {:?} after start; definitions requests so far: {}",
        started.elapsed(),
        mock.requests_to("/flags/definitions").len()
    );

    let mut changes = Vec::new();
    let mut windows: Vec<(bool, f64)> = Vec::new();
    // 5 changes with Redis up, 2 with it down, 4 after it restarted.
    for step in 0..11 {
        let redis_up = !(5..7).contains(&step);
        if step == 5 {
            redis.kill();
            println!("-- Redis killed");
        }
        if step == 7 {
            redis.spawn();
            println!("-- Redis restarted (empty)");
        }
        // Settle, then count requests over whole poll intervals before the change.
        let before = mock.requests_to("/flags/definitions").len();
        tokio::time::sleep(CHANGE_EVERY).await;
        let after = mock.requests_to("/flags/definitions").len();
        let per_interval =
            (after - before) as f64 * POLL.as_secs_f64() / CHANGE_EVERY.as_secs_f64();
        println!(
            "   the {CHANGE_EVERY:?} before it: {per_interval:.1} definitions requests per poll interval"
        );
        // The first window after the restart is a transition: left out of the summary.
        if step != 7 {
            windows.push((redis_up, per_interval));
        }
        while announced.try_recv().is_ok() {}
        version += 1;
        let changed_at = Instant::now();
        mock.set_default(
            "/flags/definitions",
            MockResponse::json(200, definitions(version))
                .with_header("etag", format!("\"v{version}\"")),
        );
        let mut stored_at = None;
        let everyone_at = loop {
            if stored_at.is_none() {
                if let Ok(at) = announced.try_recv() {
                    stored_at = Some(at);
                }
            }
            if fleet.on_version(version) == CLIENTS {
                break Instant::now();
            }
            if changed_at.elapsed() > Duration::from_secs(30) {
                panic!("the fleet did not pick up version {version} within 30 s");
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        };
        assert!(fleet.all_evaluate(version).await);
        let change = Change {
            version,
            redis_up,
            stored_after: stored_at.map(|s| s.saturating_duration_since(changed_at)),
            everyone_after_store: stored_at.map(|s| everyone_at.saturating_duration_since(s)),
            everyone_after_change: everyone_at - changed_at,
        };
        println!(
            "version {:>2} (Redis {}): stored in Redis {:>9} after the change; every client evaluating it {:>9} after the store, {:>7.0?} after the change; fallbacks so far {}",
            change.version,
            if change.redis_up { "up  " } else { "down" },
            change.stored_after.map_or("-".into(), |d| format!("{d:.0?}")),
            change.everyone_after_store.map_or("-".into(), |d| format!("{d:.1?}")),
            change.everyone_after_change,
            fleet.fallbacks(),
        );
        changes.push(change);
    }

    let up: Vec<f64> = windows.iter().filter(|w| w.0).map(|w| w.1).collect();
    let down: Vec<f64> = windows.iter().filter(|w| !w.0).map(|w| w.1).collect();
    let max = |v: &[f64]| v.iter().copied().fold(0.0, f64::max);
    let with_redis: Vec<&Change> = changes.iter().filter(|c| c.redis_up).collect();
    let pickup = with_redis
        .iter()
        .filter_map(|c| c.everyone_after_store)
        .max()
        .unwrap_or_default();
    let worst = changes
        .iter()
        .map(|c| c.everyone_after_change)
        .max()
        .unwrap_or_default();
    println!();
    println!(
        "definitions requests per {POLL:?} poll interval, {CLIENTS} clients: Redis up {:.1} (max {:.1}), Redis down {:.1} (max {:.1})",
        up.iter().sum::<f64>() / up.len().max(1) as f64,
        max(&up),
        down.iter().sum::<f64>() / down.len().max(1) as f64,
        max(&down),
    );
    println!(
        "pick-up after the leader stored (pub/sub), worst of {} changes: {pickup:.1?}",
        with_redis.len()
    );
    println!("every client evaluating a change, worst of all {} changes: {worst:.0?} (poll interval {POLL:?})", changes.len());
    println!(
        "definitions cache fallbacks (summed over the fleet): {}",
        fleet.fallbacks()
    );
    let flag_requests = mock.requests_to("/flags/").len();
    println!("/flags requests (anything not evaluated locally): {flag_requests}");
    for c in &fleet.clients {
        c.shutdown(Duration::from_secs(5)).await;
    }
    Ok(())
}
