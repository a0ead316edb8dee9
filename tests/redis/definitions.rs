//! `RedisDefinitionsCache`: one fetcher per fleet, followers fed by Redis, lease renewal and
//! takeover, ETags, new versions, corrupt values, Redis outages.

use std::time::Duration;

use posthog_tower::{
    flags::{FlagValue, FlagsRequest},
    testing::{MockPostHog, MockResponse},
    PostHog,
};
use redis::AsyncCommands;

use super::*;

const DEFS: &str = "/flags/definitions";
const DEFS_KEY: &str = "posthog:flag_definitions:phc_fleet_project:definitions";
const LEASE_KEY: &str = "posthog:flag_definitions:phc_fleet_project:lease";
const CHANNEL: &str = "posthog:flag_definitions:phc_fleet_project:changed";
const WAIT: Duration = Duration::from_secs(20);

async fn mock_with(keys: &[&str], etag: &str) -> MockPostHog {
    let mock = MockPostHog::start().await.expect("mock");
    mock.set_default(
        DEFS,
        MockResponse::json(200, defs(keys)).with_header("etag", etag),
    );
    mock
}

/// Writes definitions into Redis as a leader would (new version, announced).
async fn write_definitions(redis: &RedisServer, version: &str, body: &[u8]) {
    let mut conn = redis.connection().await;
    let _: () = conn
        .hset_multiple(
            DEFS_KEY,
            &[
                ("version", version.as_bytes()),
                ("etag", b"".as_slice()),
                ("body", body),
            ],
        )
        .await
        .unwrap();
    let _: i64 = conn.publish(CHANNEL, version).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_member_fetches_for_the_fleet_and_the_others_evaluate_from_redis() {
    let redis = RedisServer::start();
    let mock = mock_with(&["shared-flag"], "\"v1\"").await;
    let interval = Duration::from_millis(300);
    let fleet: Vec<PostHog> = (0..5)
        .map(|n| member(&mock, &redis, n, interval, Duration::from_secs(30)))
        .collect();
    for client in &fleet {
        assert!(client.wait_for_flag_definitions(WAIT).await);
        assert_eq!(local_keys(client), ["shared-flag"]);
        assert_eq!(
            client
                .get_feature_flag("shared-flag", FlagsRequest::new("user-1"))
                .await,
            Ok(FlagValue::Bool(true))
        );
    }
    // Five polls of the fleet: still one fetcher, about one request per interval.
    mock.wait_for_requests(DEFS, 5, WAIT).await.unwrap();
    let who = fetchers(&mock);
    assert!(
        who.iter().all(|n| *n == who[0]),
        "only the lease holder fetches: {who:?}"
    );
    assert!(mock.requests_to("/flags/").is_empty(), "evaluated locally");
    // Every fetch after the first revalidates with the ETag.
    for request in &mock.requests_to(DEFS)[1..] {
        assert_eq!(request.header("if-none-match"), Some("\"v1\""));
    }
    for client in &fleet {
        assert_eq!(client.stats().definitions_cache_fallbacks, 0);
        client.shutdown(Duration::from_secs(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_instance_evaluates_from_redis_before_any_request_to_posthog() {
    let redis = RedisServer::start();
    let mock = mock_with(&["from-the-leader"], "\"v1\"").await;
    let leader = member(
        &mock,
        &redis,
        0,
        Duration::from_secs(60),
        Duration::from_secs(120),
    );
    assert!(leader.wait_for_flag_definitions(WAIT).await);
    // The newcomer talks to another PostHog, which would answer something else: everything it
    // knows must come from Redis.
    let other = mock_with(&["from-posthog"], "\"other\"").await;
    let newcomer = member(
        &other,
        &redis,
        1,
        Duration::from_secs(60),
        Duration::from_secs(120),
    );
    assert!(newcomer.wait_for_flag_definitions(WAIT).await);
    assert_eq!(local_keys(&newcomer), ["from-the-leader"]);
    assert_eq!(
        newcomer
            .get_feature_flag("from-the-leader", FlagsRequest::new("u"))
            .await,
        Ok(FlagValue::Bool(true))
    );
    assert!(
        other.requests().is_empty(),
        "no request to PostHog: {:?}",
        other.requests()
    );
    newcomer.shutdown(Duration::from_secs(5)).await;
    leader.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_version_reaches_followers_without_them_fetching() {
    let redis = RedisServer::start();
    let mock = MockPostHog::start().await.expect("mock");
    mock.enqueue(
        DEFS,
        MockResponse::json(200, defs(&["old"])).with_header("etag", "\"a\""),
    );
    mock.set_default(DEFS, MockResponse::status(304).with_header("etag", "\"a\""));
    // Followers poll rarely: the new version reaches them by pub/sub.
    let leader = member(
        &mock,
        &redis,
        0,
        Duration::from_millis(200),
        Duration::from_secs(30),
    );
    assert!(leader.wait_for_flag_definitions(WAIT).await);
    let followers: Vec<PostHog> = (1..4)
        .map(|n| {
            member(
                &mock,
                &redis,
                n,
                Duration::from_secs(3600),
                Duration::from_secs(30),
            )
        })
        .collect();
    for f in &followers {
        assert!(f.wait_for_flag_definitions(WAIT).await);
        assert_eq!(local_keys(f), ["old"]);
    }
    let before = mock.requests_to(DEFS).len();
    mock.wait_for_requests(DEFS, before + 1, WAIT)
        .await
        .unwrap();
    assert_eq!(
        mock.requests_to(DEFS)[before].header("if-none-match"),
        Some("\"a\""),
        "the leader revalidates with the ETag"
    );
    assert_eq!(local_keys(&leader), ["old"], "304 keeps the definitions");

    mock.enqueue(
        DEFS,
        MockResponse::json(200, defs(&["new"])).with_header("etag", "\"b\""),
    );
    for f in &followers {
        eventually(WAIT, "a follower picks up the new version", || async {
            local_keys(f) == ["new"]
        })
        .await;
    }
    assert!(
        fetchers(&mock).iter().all(|n| *n == 0),
        "{:?}",
        fetchers(&mock)
    );
    let mut conn = redis.connection().await;
    let etag: String = conn.hget(DEFS_KEY, "etag").await.unwrap();
    assert_eq!(etag, "\"b\"");
    for f in &followers {
        f.shutdown(Duration::from_secs(5)).await;
    }
    leader.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lease_is_renewed_while_polling_and_taken_over_after_shutdown() {
    let redis = RedisServer::start();
    let mock = mock_with(&["f"], "\"e1\"").await;
    let interval = Duration::from_millis(200);
    let lease = Duration::from_millis(600);
    let first = member(&mock, &redis, 0, interval, lease);
    assert!(first.wait_for_flag_definitions(WAIT).await);
    let second = member(&mock, &redis, 1, interval, lease);
    assert!(second.wait_for_flag_definitions(WAIT).await);
    // Well past several lease lifetimes, the first still holds it (renewed at each poll).
    let start = mock.requests_to(DEFS).len();
    mock.wait_for_requests(DEFS, start + 8, WAIT).await.unwrap();
    let who = fetchers(&mock);
    assert!(who.iter().all(|n| *n == 0), "renewed, never lost: {who:?}");

    first.shutdown(Duration::from_secs(5)).await;
    eventually(WAIT, "the lease is released", || async {
        let mut conn = redis.connection().await;
        let holder: Option<String> = conn.get(LEASE_KEY).await.unwrap();
        // Released, or already taken by the second member.
        fetchers(&mock).contains(&1) || holder.is_none()
    })
    .await;
    eventually(WAIT, "the second member takes over", || async {
        fetchers(&mock).contains(&1)
    })
    .await;
    let takeover = mock
        .requests_to(DEFS)
        .into_iter()
        .find(|r| r.header("authorization") == Some(&*format!("Bearer {}", personal_key(1))))
        .unwrap();
    assert_eq!(
        takeover.header("if-none-match"),
        Some("\"e1\""),
        "the new holder uses the ETag it read from Redis"
    );
    second.shutdown(Duration::from_secs(5)).await;
}

#[test]
fn a_dead_leader_is_replaced_once_its_lease_expires() {
    let redis = RedisServer::start();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mock = rt.block_on(mock_with(&["f"], "\"e1\""));
    let interval = Duration::from_millis(200);
    let lease = Duration::from_millis(800);
    // The leader lives in a runtime of its own, which is then dropped: its tasks stop where
    // they are, as in a process that was killed (no shutdown, no release).
    let doomed = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let leader = doomed.block_on(async {
        let leader = member(&mock, &redis, 0, interval, lease);
        assert!(leader.wait_for_flag_definitions(WAIT).await);
        leader
    });
    rt.block_on(async {
        let survivor = member(&mock, &redis, 1, interval, lease);
        assert!(survivor.wait_for_flag_definitions(WAIT).await);
        let n = mock.requests_to(DEFS).len();
        mock.wait_for_requests(DEFS, n + 2, WAIT).await.unwrap();
        assert!(fetchers(&mock).iter().all(|n| *n == 0));
        doomed.shutdown_background();
        std::mem::forget(leader);
        let killed_at = tokio::time::Instant::now();
        eventually(WAIT, "the survivor takes over", || async {
            fetchers(&mock).contains(&1)
        })
        .await;
        let waited = killed_at.elapsed();
        assert!(
            waited <= lease + interval * 2 + Duration::from_secs(2),
            "took over after {waited:?}"
        );
        survivor.shutdown(Duration::from_secs(5)).await;
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_definitions_in_redis_never_replace_good_ones() {
    let redis = RedisServer::start();
    let mock = mock_with(&["good"], "\"g\"").await;
    mock.set_default(DEFS, MockResponse::status(304).with_header("etag", "\"g\""));
    mock.enqueue(
        DEFS,
        MockResponse::json(200, defs(&["good"])).with_header("etag", "\"g\""),
    );
    let leader = member(
        &mock,
        &redis,
        0,
        Duration::from_millis(200),
        Duration::from_secs(30),
    );
    assert!(leader.wait_for_flag_definitions(WAIT).await);
    let follower = member(
        &mock,
        &redis,
        1,
        Duration::from_millis(200),
        Duration::from_secs(30),
    );
    assert!(follower.wait_for_flag_definitions(WAIT).await);
    assert_eq!(local_keys(&follower), ["good"]);

    for (version, body) in [
        ("bad-1", b"{not json".as_slice()),
        ("bad-2", b"{\"flags\": 7}".as_slice()),
        ("bad-3", b"".as_slice()),
        ("bad-4", &[0xff, 0xfe, 0x00][..]),
    ] {
        let mut conn = redis.connection().await;
        let reads = hmget_calls(&mut conn).await;
        write_definitions(&redis, version, body).await;
        // Both clients read the bad version (one HMGET each).
        eventually(WAIT, "both clients read the corrupt version", || {
            let mut conn = conn.clone();
            async move { hmget_calls(&mut conn).await >= reads + 2 }
        })
        .await;
        assert_eq!(local_keys(&follower), ["good"], "{version} ignored");
        assert_eq!(local_keys(&leader), ["good"], "{version} ignored");
        assert_eq!(
            follower
                .get_feature_flag("good", FlagsRequest::new("u"))
                .await,
            Ok(FlagValue::Bool(true))
        );
    }
    // A good version after them is still picked up: nothing panicked.
    let body = serde_json::to_vec(&defs(&["better"])).unwrap();
    write_definitions(&redis, "good-2", &body).await;
    eventually(WAIT, "the next good version is loaded", || async {
        local_keys(&follower) == ["better"]
    })
    .await;
    follower.shutdown(Duration::from_secs(5)).await;
    leader.shutdown(Duration::from_secs(5)).await;
}

/// How many `HMGET`s the server ran (the cache reads a new version's body with one).
async fn hmget_calls(conn: &mut redis::aio::MultiplexedConnection) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(conn)
        .await
        .unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix("cmdstat_hmget:calls="))
        .and_then(|rest| rest.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_means_polling_posthog_directly_until_it_is_back() {
    let mut redis = RedisServer::start();
    let mock = mock_with(&["f"], "\"e1\"").await;
    let interval = Duration::from_millis(200);
    let leader = member(&mock, &redis, 0, interval, Duration::from_secs(30));
    assert!(leader.wait_for_flag_definitions(WAIT).await);
    let follower = member(&mock, &redis, 1, interval, Duration::from_secs(30));
    assert!(follower.wait_for_flag_definitions(WAIT).await);
    assert_eq!(follower.stats().definitions_cache_fallbacks, 0);

    redis.kill();
    // Both poll PostHog themselves now, and count it.
    eventually(WAIT, "the follower fetches from PostHog", || async {
        fetchers(&mock).contains(&1)
    })
    .await;
    eventually(WAIT, "both count the fallback", || async {
        leader.stats().definitions_cache_fallbacks > 0
            && follower.stats().definitions_cache_fallbacks > 0
    })
    .await;
    assert_eq!(local_keys(&follower), ["f"], "evaluation goes on");

    mock.set_default(
        DEFS,
        MockResponse::json(200, defs(&["after"])).with_header("etag", "\"e2\""),
    );
    let at_restart = mock.requests_to(DEFS).len();
    redis.restart();
    // Back on Redis: one fetcher stores the definitions again, the fallbacks stop. The
    // restarted Redis is empty, so the first fetch after it returns is a full one (no
    // If-None-Match), whose body is stored.
    eventually(WAIT, "definitions are in Redis again", || async {
        let Ok(mut conn) = redis.client().get_multiplexed_async_connection().await else {
            return false;
        };
        let body: Option<Vec<u8>> = conn.hget(DEFS_KEY, "body").await.unwrap_or(None);
        body.is_some()
    })
    .await;
    eventually(WAIT, "both use Redis again", || async {
        let (a, b) = (
            leader.stats().definitions_cache_fallbacks,
            follower.stats().definitions_cache_fallbacks,
        );
        // Four more polls each without a new fallback.
        let n = mock.requests_to(DEFS).len();
        let _ = mock.wait_for_requests(DEFS, n + 4, WAIT).await;
        a == leader.stats().definitions_cache_fallbacks
            && b == follower.stats().definitions_cache_fallbacks
    })
    .await;
    assert!(
        mock.requests_to(DEFS)[at_restart..]
            .iter()
            .any(|r| r.header("if-none-match").is_none()),
        "a full fetch after Redis came back"
    );
    let n = mock.requests_to(DEFS).len();
    mock.wait_for_requests(DEFS, n + 4, WAIT).await.unwrap();
    let recent = &fetchers(&mock)[n..];
    assert!(
        recent.iter().all(|m| *m == recent[0]),
        "one fetcher again: {recent:?}"
    );
    assert_eq!(local_keys(&follower), ["after"]);
    follower.shutdown(Duration::from_secs(5)).await;
    leader.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_projects_on_one_redis_do_not_mix() {
    let redis = RedisServer::start();
    let a = mock_with(&["project-a"], "\"a\"").await;
    let b = mock_with(&["project-b"], "\"b\"").await;
    let client_a = member(
        &a,
        &redis,
        0,
        Duration::from_secs(60),
        Duration::from_secs(60),
    );
    let client_b = PostHog::builder("phc_other_project")
        .host(b.url())
        .personal_api_key(personal_key(1))
        .flag_definitions_cache(
            posthog_tower::flags::RedisDefinitionsCache::open(&redis.url(), "phc_other_project")
                .unwrap(),
        )
        .build()
        .unwrap();
    assert!(client_a.wait_for_flag_definitions(WAIT).await);
    assert!(client_b.wait_for_flag_definitions(WAIT).await);
    assert_eq!(local_keys(&client_a), ["project-a"]);
    assert_eq!(local_keys(&client_b), ["project-b"]);
    assert_eq!(
        b.requests_to(DEFS).len(),
        1,
        "each project has its own leader"
    );
    client_a.shutdown(Duration::from_secs(5)).await;
    client_b.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_redis_is_bypassed_within_the_operation_bound() {
    let redis = RedisServer::start();
    let mock = mock_with(&["f"], "\"e1\"").await;
    let interval = Duration::from_millis(200);
    let leader = member(&mock, &redis, 0, interval, Duration::from_secs(30));
    assert!(leader.wait_for_flag_definitions(WAIT).await);
    let follower = member(&mock, &redis, 1, interval, Duration::from_secs(30));
    assert!(follower.wait_for_flag_definitions(WAIT).await);
    assert!(fetchers(&mock).iter().all(|n| *n == 0));

    // The server stops answering for 3 s: each operation gives up after 500 ms, and the
    // follower polls PostHog itself meanwhile.
    let config = redis::AsyncConnectionConfig::new().set_response_timeout(None);
    let mut conn = redis
        .client()
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .unwrap();
    let sleeping = tokio::spawn(async move {
        let _: () = redis::cmd("DEBUG")
            .arg("SLEEP")
            .arg(3)
            .query_async(&mut conn)
            .await
            .unwrap();
    });
    eventually(
        Duration::from_secs(3),
        "the follower fetches from PostHog while Redis is slow",
        || async { fetchers(&mock).contains(&1) },
    )
    .await;
    assert!(follower.stats().definitions_cache_fallbacks > 0);
    sleeping.await.unwrap();
    // Answering again: the follower goes back to reading Redis.
    let fallbacks = follower.stats().definitions_cache_fallbacks;
    let n = mock.requests_to(DEFS).len();
    mock.wait_for_requests(DEFS, n + 6, WAIT).await.unwrap();
    let now = follower.stats().definitions_cache_fallbacks;
    let m = mock.requests_to(DEFS).len();
    mock.wait_for_requests(DEFS, m + 6, WAIT).await.unwrap();
    assert_eq!(
        follower.stats().definitions_cache_fallbacks,
        now,
        "no more fallbacks once Redis answers (after {fallbacks})"
    );
    follower.shutdown(Duration::from_secs(5)).await;
    leader.shutdown(Duration::from_secs(5)).await;
}
