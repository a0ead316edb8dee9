//! `RedisFallbackStore`: one instance's good `/flags` answer serves another's failed lookup,
//! within the age bound; and nothing the fleet writes to Redis contains the personal API key.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use posthog_tower::{
    flags::{FlagError, FlagValue, FlagsRequest, RedisFallbackStore},
    testing::{MockPostHog, MockResponse},
    PostHog,
};
use redis::AsyncCommands;
use serde_json::json;

use super::*;

const FALLBACK_KEY: &str = "posthog:flag_fallback:phc_fleet_project:user-1";
const WAIT: Duration = Duration::from_secs(20);

fn client(mock: &MockPostHog, redis: &RedisServer) -> PostHog {
    PostHog::builder(PROJECT)
        .host(mock.url())
        .flag_fallback_store(RedisFallbackStore::open(&redis.url(), PROJECT).unwrap())
        .feature_flags_request_timeout(Duration::from_secs(2))
        .build()
        .expect("client")
}

async fn mock_answering() -> MockPostHog {
    let mock = MockPostHog::start().await.expect("mock");
    mock.set_default(
        "/flags/",
        MockResponse::json(
            200,
            json!({"flags": {"beta": {"key": "beta", "enabled": true, "variant": "blue",
                   "reason": {"description": "Matched condition set 1"},
                   "metadata": {"id": 7, "version": 3, "payload": "{\"n\": 1}"}}},
                   "requestId": "r-1"}),
        ),
    );
    mock
}

async fn mock_failing() -> MockPostHog {
    let mock = MockPostHog::start().await.expect("mock");
    mock.set_default("/flags/", MockResponse::status(500));
    mock
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_instances_good_answer_serves_anothers_failed_lookup_for_an_hour() {
    let redis = RedisServer::start();
    let (up, down) = (mock_answering().await, mock_failing().await);
    let healthy = client(&up, &redis);
    let failing = client(&down, &redis);

    assert!(
        matches!(
            failing
                .get_feature_flag("beta", FlagsRequest::new("user-1"))
                .await,
            Err(FlagError::Status(500))
        ),
        "no value before anyone had one"
    );
    let good = healthy
        .get_feature_flag_result("beta", FlagsRequest::new("user-1"))
        .await
        .unwrap();
    assert_eq!(good.record.value, FlagValue::Variant("blue".into()));

    let mut conn = redis.connection().await;
    eventually(WAIT, "the value is written to Redis", || {
        let mut conn = conn.clone();
        async move {
            let v: Option<String> = conn.hget(FALLBACK_KEY, "beta").await.unwrap();
            v.is_some()
        }
    })
    .await;

    let stale = failing
        .get_feature_flag_result("beta", FlagsRequest::new("user-1"))
        .await
        .expect("the other instance's value");
    assert_eq!(stale.record.value, FlagValue::Variant("blue".into()));
    assert_eq!(stale.record.payload, Some(json!({"n": 1})));
    assert_eq!(stale.record.id, Some(7));
    assert!(stale.stale_because.is_some(), "marked stale");
    assert!(
        failing
            .get_feature_flag("beta", FlagsRequest::new("user-2"))
            .await
            .is_err(),
        "another person has no value"
    );

    // The age bound counts from the time stored with the value (not Redis's expiry): a value
    // put an hour and a second ago is not served; one put 59 minutes ago is.
    let stored: String = conn.hget(FALLBACK_KEY, "beta").await.unwrap();
    let mut stored: serde_json::Value = serde_json::from_str(&stored).unwrap();
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    stored["at_ms"] = json!(now_ms - 59 * 60 * 1000);
    let _: () = conn
        .hset(FALLBACK_KEY, "beta", stored.to_string())
        .await
        .unwrap();
    assert!(failing
        .get_feature_flag("beta", FlagsRequest::new("user-1"))
        .await
        .is_ok());
    stored["at_ms"] = json!(now_ms - 3601 * 1000);
    let _: () = conn
        .hset(FALLBACK_KEY, "beta", stored.to_string())
        .await
        .unwrap();
    assert!(
        failing
            .get_feature_flag("beta", FlagsRequest::new("user-1"))
            .await
            .is_err(),
        "older than an hour: not served"
    );
    // Redis collects the garbage after an hour.
    let ttl: i64 = conn.pttl(FALLBACK_KEY).await.unwrap();
    assert!(ttl > 0 && ttl <= 3_600_000, "{ttl}");

    // An unreadable value reads as none, never as a panic.
    let _: () = conn.hset(FALLBACK_KEY, "beta", "{garbage").await.unwrap();
    assert!(failing
        .get_feature_flag("beta", FlagsRequest::new("user-1"))
        .await
        .is_err());
    healthy.shutdown(Duration::from_secs(5)).await;
    failing.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lookup_with_redis_down_fails_in_bounded_time() {
    let mut redis = RedisServer::start();
    let down = mock_failing().await;
    let failing = client(&down, &redis);
    redis.kill();
    let started = std::time::Instant::now();
    assert!(failing
        .get_feature_flag("beta", FlagsRequest::new("user-1"))
        .await
        .is_err());
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    failing.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_personal_api_key_is_never_written_to_redis() {
    let redis = RedisServer::start();
    let mock = mock_answering().await;
    mock.set_default(
        "/flags/definitions",
        MockResponse::json(200, defs(&["f"])).with_header("etag", "\"e\""),
    );
    let fleet: Vec<PostHog> = (0..3)
        .map(|n| {
            let cache =
                posthog_tower::flags::RedisDefinitionsCache::open(&redis.url(), PROJECT).unwrap();
            let store = RedisFallbackStore::open(&redis.url(), PROJECT).unwrap();
            PostHog::builder(PROJECT)
                .host(mock.url())
                .personal_api_key(personal_key(n))
                .poll_interval(Duration::from_millis(200))
                .flag_definitions_cache(cache)
                .flag_fallback_store(store)
                .build()
                .unwrap()
        })
        .collect();
    for (n, client) in fleet.iter().enumerate() {
        assert!(client.wait_for_flag_definitions(WAIT).await);
        // A flag decided locally and one from /flags: both put in the fallback store.
        client
            .get_feature_flag("f", FlagsRequest::new(format!("user-{n}")))
            .await
            .unwrap();
        client
            .get_feature_flag("beta", FlagsRequest::new(format!("user-{n}")))
            .await
            .unwrap();
    }
    let mut conn = redis.connection().await;
    eventually(WAIT, "the fallback values are written", || {
        let mut conn = conn.clone();
        async move {
            let keys: Vec<String> = conn.keys("posthog:flag_fallback:*").await.unwrap();
            keys.len() == 3
        }
    })
    .await;
    let keys: Vec<String> = conn.keys("*").await.unwrap();
    assert!(keys.len() >= 5, "{keys:?}");
    let mut everything = String::new();
    for key in &keys {
        everything.push_str(key);
        let kind: String = redis::cmd("TYPE")
            .arg(key)
            .query_async(&mut conn)
            .await
            .unwrap();
        match kind.as_str() {
            "string" => {
                let v: Vec<u8> = conn.get(key).await.unwrap();
                everything.push_str(&String::from_utf8_lossy(&v));
            }
            "hash" => {
                let v: Vec<(Vec<u8>, Vec<u8>)> = conn.hgetall(key).await.unwrap();
                for (f, v) in v {
                    everything.push_str(&String::from_utf8_lossy(&f));
                    everything.push_str(&String::from_utf8_lossy(&v));
                }
            }
            other => panic!("unexpected key type {other} for {key}"),
        }
    }
    assert!(
        everything.contains("rollout_percentage"),
        "the scan sees the definitions"
    );
    assert!(
        !everything.contains("phx_secret_personal_key"),
        "a personal key reached Redis"
    );
    for client in &fleet {
        client.shutdown(Duration::from_secs(5)).await;
    }
}
