//! Local evaluation through the client: definitions polled from the mock, flags answered
//! in-process, `/flags` asked only for what local evaluation cannot decide.

use std::time::Duration;

use posthog_tower::{
    flags::{FlagError, FlagValue, FlagsRequest},
    testing::{MockPostHog, MockResponse},
    PostHog,
};
use serde_json::{json, Value};

fn definitions() -> Value {
    json!({
        "flags": [
            {"id": 11, "key": "everyone", "active": true,
             "filters": {"groups": [{"properties": [], "rollout_percentage": 100}],
                         "payloads": {"true": "{\"color\": \"blue\"}"}}},
            {"id": 12, "key": "pro-only", "active": true,
             "filters": {"groups": [{"properties": [
                 {"key": "plan", "value": "pro", "operator": "exact", "type": "person"}],
                 "rollout_percentage": 100}]}},
            {"id": 13, "key": "continuity", "active": true, "ensure_experience_continuity": true,
             "filters": {"groups": [{"properties": [], "rollout_percentage": 100}]}}
        ],
        "group_type_mapping": {},
        "cohorts": {}
    })
}

async fn setup() -> (MockPostHog, PostHog) {
    let mock = MockPostHog::start().await.expect("mock");
    mock.set_default("/flags/definitions", MockResponse::json(200, definitions()));
    mock.set_default(
        "/flags/",
        MockResponse::json(
            200,
            json!({"flags": {"continuity": {"key": "continuity", "enabled": true,
                   "reason": {"description": "Matched condition set 1"}, "metadata": {"id": 13}}},
                   "requestId": "remote-1"}),
        ),
    );
    let posthog = PostHog::builder("phc_project")
        .host(mock.url())
        .personal_api_key("phx_personal_secret")
        .build()
        .expect("client");
    assert!(
        posthog
            .wait_for_flag_definitions(Duration::from_secs(5))
            .await
    );
    (mock, posthog)
}

fn called_events(mock: &MockPostHog) -> Vec<Value> {
    mock.events()
        .into_iter()
        .filter(|e| e["event"] == "$feature_flag_called")
        .collect()
}

#[tokio::test]
async fn local_answers_make_no_flags_request_and_say_so() {
    let (mock, posthog) = setup().await;
    let result = posthog
        .get_feature_flag_result("everyone", "user-1")
        .await
        .expect("decided locally");
    assert_eq!(result.record.value, FlagValue::Bool(true));
    assert!(result.record.locally_evaluated);
    assert_eq!(result.record.payload, Some(json!({"color": "blue"})));
    let pro = FlagsRequest::new("user-2").person_property("plan", "pro");
    assert_eq!(
        posthog.get_feature_flag("pro-only", pro).await,
        Ok(FlagValue::Bool(true))
    );
    let free = FlagsRequest::new("user-3").person_property("plan", "free");
    assert_eq!(
        posthog.get_feature_flag("pro-only", free).await,
        Ok(FlagValue::Bool(false))
    );
    posthog.flush().await;
    assert!(mock.requests_to("/flags/").is_empty(), "no /flags request");
    let events = called_events(&mock);
    assert_eq!(events.len(), 3);
    let p = &events[0]["properties"];
    assert_eq!(p["locally_evaluated"], true);
    assert_eq!(p["$feature_flag_reason"], "Evaluated locally");
    assert_eq!(p["$feature_flag_id"], 11);
    assert!(p.get("$feature_flag_request_id").is_none());
}

#[tokio::test]
async fn inconclusive_flags_go_to_the_server_for_that_key_only() {
    let (mock, posthog) = setup().await;
    // Missing `plan`: inconclusive locally.
    let value = posthog.get_feature_flag("pro-only", "user-1").await;
    assert!(
        value.is_err(),
        "the mock's /flags does not know pro-only: {value:?}"
    );
    let value = posthog.get_feature_flag("continuity", "user-1").await;
    assert_eq!(value, Ok(FlagValue::Bool(true)));
    let requests = mock.requests_to("/flags/");
    assert_eq!(requests.len(), 2);
    assert_eq!(
        requests[0].json().unwrap()["flag_keys_to_evaluate"],
        json!(["pro-only"])
    );
    assert_eq!(
        requests[1].json().unwrap()["flag_keys_to_evaluate"],
        json!(["continuity"])
    );
}

#[tokio::test]
async fn snapshots_merge_local_and_one_remote_call() {
    let (mock, posthog) = setup().await;
    let flags = posthog
        .evaluate_flags(FlagsRequest::new("user-1").person_property("plan", "pro"))
        .await;
    assert_eq!(mock.requests_to("/flags/").len(), 1, "one request");
    let body = mock.requests_to("/flags/")[0].json().unwrap();
    assert_eq!(
        body["flag_keys_to_evaluate"],
        json!(["continuity"]),
        "only what is undecided"
    );
    assert!(flags.record("everyone").unwrap().locally_evaluated);
    assert!(flags.record("pro-only").unwrap().locally_evaluated);
    assert!(!flags.record("continuity").unwrap().locally_evaluated);
    assert!(flags.is_enabled("continuity"));

    let all = posthog
        .get_all_flags(FlagsRequest::new("user-1").person_property("plan", "pro"))
        .await
        .unwrap();
    assert_eq!(all.len(), 3, "merged: {all:?}");
}

#[tokio::test]
async fn only_evaluate_locally_never_touches_the_network() {
    let (mock, posthog) = setup().await;
    let request = FlagsRequest::new("user-1").only_evaluate_locally(true);
    assert_eq!(
        posthog
            .get_feature_flag("continuity", request.clone())
            .await,
        Err(FlagError::Inconclusive)
    );
    assert_eq!(
        posthog.get_feature_flag("everyone", request.clone()).await,
        Ok(FlagValue::Bool(true))
    );
    let all = posthog.get_all_flags(request.clone()).await.unwrap();
    assert!(all.contains_key("everyone") && !all.contains_key("continuity"));
    let snapshot = posthog.evaluate_flags(request).await;
    assert!(snapshot.record("everyone").is_some() && snapshot.record("continuity").is_none());
    assert!(mock.requests_to("/flags/").is_empty());
}

#[tokio::test]
async fn the_personal_key_goes_to_the_definitions_endpoint_only() {
    let (mock, posthog) = setup().await;
    posthog
        .get_feature_flag("continuity", "user-1")
        .await
        .unwrap();
    posthog
        .capture(posthog_tower::Event::new("e", "user-1"))
        .unwrap();
    posthog.flush().await;
    let requests = mock.requests();
    assert!(requests.len() >= 3);
    for request in requests {
        let auth = request.header("authorization");
        if request.path == "/flags/definitions" {
            assert_eq!(auth, Some("Bearer phx_personal_secret"));
        } else {
            assert_eq!(auth, None, "{}", request.path);
            assert!(!String::from_utf8_lossy(&request.body).contains("phx_personal_secret"));
        }
    }
    assert!(!format!("{posthog:?}").contains("phx_personal_secret"));
}

#[tokio::test(start_paused = true)]
async fn definitions_are_refreshed_and_shutdown_stops_the_poller() {
    let mock = MockPostHog::start().await.expect("mock");
    mock.set_default("/flags/definitions", MockResponse::json(200, definitions()));
    let posthog = PostHog::builder("phc_project")
        .host(mock.url())
        .personal_api_key("phx_personal_secret")
        .poll_interval(Duration::from_secs(10))
        .build()
        .expect("client");
    assert!(
        posthog
            .wait_for_flag_definitions(Duration::from_secs(5))
            .await
    );
    mock.wait_for_requests("/flags/definitions", 3, Duration::from_secs(60))
        .await
        .expect("polled every 10 s");
    posthog.shutdown(Duration::from_secs(1)).await;
    let polled = mock.requests_to("/flags/definitions").len();
    tokio::time::sleep(Duration::from_secs(120)).await;
    assert_eq!(
        mock.requests_to("/flags/definitions").len(),
        polled,
        "no poll after shutdown"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_evaluate_while_new_definitions_are_swapped_in() {
    let version = |active: bool| {
        json!({"flags": [{"id": 1, "key": "x", "active": active,
                          "filters": {"groups": [{"properties": [], "rollout_percentage": 100}]}}],
               "group_type_mapping": {}, "cohorts": {}})
    };
    let mock = MockPostHog::start().await.expect("mock");
    for i in 0..40 {
        mock.enqueue(
            "/flags/definitions",
            MockResponse::json(200, version(i % 2 == 0)),
        );
    }
    mock.set_default("/flags/definitions", MockResponse::json(200, version(true)));
    let posthog = PostHog::builder("phc_project")
        .host(mock.url())
        .personal_api_key("phx_personal_secret")
        .poll_interval(Duration::from_millis(100))
        .send_feature_flag_events(false)
        .build()
        .expect("client");
    assert!(
        posthog
            .wait_for_flag_definitions(Duration::from_secs(5))
            .await
    );
    let readers: Vec<_> = (0..4)
        .map(|_| {
            let posthog = posthog.clone();
            tokio::spawn(async move {
                let (mut on, mut off) = (0u32, 0u32);
                // Read until the poller has swapped the definitions several times.
                while on == 0 || off == 0 || on + off < 2_000 {
                    let request = FlagsRequest::new("user-1").only_evaluate_locally(true);
                    match posthog.get_feature_flag("x", request).await {
                        Ok(FlagValue::Bool(true)) => on += 1,
                        Ok(FlagValue::Bool(false)) => off += 1,
                        other => panic!("a reader saw {other:?} during a swap"),
                    }
                    tokio::task::yield_now().await;
                }
                (on, off)
            })
        })
        .collect();
    for reader in readers {
        let (on, off) = tokio::time::timeout(Duration::from_secs(30), reader)
            .await
            .expect("readers finish")
            .expect("reader did not panic");
        assert!(on > 0 && off > 0);
    }
    assert!(mock.requests_to("/flags/").is_empty());
    // At least one swap happened while the readers ran (they saw both versions).
    assert!(mock.requests_to("/flags/definitions").len() >= 2);
}

#[tokio::test]
async fn force_remote_skips_local_evaluation() {
    let (mock, posthog) = setup().await;
    let request = FlagsRequest::new("user-1").force_remote(true);
    let result = posthog
        .get_feature_flag_result("continuity", request.clone())
        .await;
    assert!(!result.unwrap().record.locally_evaluated);
    // `everyone` is decided locally otherwise; forced, it is asked of the server (which does
    // not know it here).
    assert_eq!(
        posthog.get_feature_flag("everyone", request).await,
        Err(FlagError::Missing)
    );
    assert_eq!(mock.requests_to("/flags/").len(), 2);
}
