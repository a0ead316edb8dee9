//! Fleets on a real Redis (feature `redis`): flag definitions shared through
//! `RedisDefinitionsCache` ([`definitions`]) and the `/flags` fallback values through
//! `RedisFallbackStore` ([`fallback`]). Every test starts its own `redis-server` on a free
//! loopback port ([`server`]); run them with `tools/test.sh --test redis`, which installs
//! Redis when it is missing.

mod definitions;
mod fallback;
mod server;

use std::{future::Future, time::Duration};

use posthog_tower::{flags::RedisDefinitionsCache, testing::MockPostHog, PostHog};
use serde_json::{json, Value};

pub use server::RedisServer;

/// The project of every test client.
pub const PROJECT: &str = "phc_fleet_project";

/// Definitions with one always-on flag per key.
pub fn defs(keys: &[&str]) -> Value {
    json!({
        "flags": keys.iter().enumerate().map(|(i, k)| json!({
            "id": i + 1, "key": k, "active": true,
            "filters": {"groups": [{"properties": [], "rollout_percentage": 100}]}
        })).collect::<Vec<_>>(),
        "group_type_mapping": {},
        "cohorts": {}
    })
}

/// The personal API key of fleet member `n` (so the mock tells who fetched).
pub fn personal_key(n: usize) -> String {
    format!("phx_secret_personal_key_{n}")
}

/// A client of the fleet: member `n`, polling every `interval`, sharing definitions in
/// `redis`.
pub fn member(
    mock: &MockPostHog,
    redis: &RedisServer,
    n: usize,
    interval: Duration,
    lease: Duration,
) -> PostHog {
    let cache = RedisDefinitionsCache::open(&redis.url(), PROJECT)
        .expect("redis url")
        .lease_ttl(lease);
    PostHog::builder(PROJECT)
        .host(mock.url())
        .personal_api_key(personal_key(n))
        .poll_interval(interval)
        .flag_definitions_cache(cache)
        .build()
        .expect("client")
}

/// The flag keys a client evaluates locally now.
pub fn local_keys(client: &PostHog) -> Vec<String> {
    let mut keys: Vec<String> = client
        .local_flags()
        .map(|l| l.keys().map(str::to_owned).collect())
        .unwrap_or_default();
    keys.sort();
    keys
}

/// Which fleet members fetched definitions from the mock, request by request.
pub fn fetchers(mock: &MockPostHog) -> Vec<usize> {
    mock.requests_to("/flags/definitions")
        .iter()
        .map(|r| {
            let auth = r.header("authorization").unwrap_or_default();
            auth.rsplit('_')
                .next()
                .and_then(|n| n.parse().ok())
                .unwrap_or(usize::MAX)
        })
        .collect()
}

/// Waits until `condition` holds, checking every 10 ms, at most `timeout`; panics with
/// `what` otherwise.
pub async fn eventually<F, Fut>(timeout: Duration, what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if condition().await {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {timeout:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
