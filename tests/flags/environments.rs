//! Evaluation environments over real HTTP to `MockPostHog`: `evaluation_environments` in every
//! `/flags` body (and nowhere without them), and local evaluation deciding a tagged flag only
//! when the definitions list its tags: tagged for one of the client's environments →
//! evaluated locally, for others → left out (missing, as PostHog's answer would), tags that
//! cannot be read → `/flags`.

use std::time::Duration;

use posthog_tower::flags::{FlagError, FlagValue, FlagsRequest};
use posthog_tower::testing::{MockPostHog, MockResponse};
use posthog_tower::{PostHog, PostHogBuilder};
use serde_json::{json, Value};

const KEY: &str = "phc_environments_test";

async fn start_mock() -> MockPostHog {
    MockPostHog::start()
        .await
        .expect("the mock binds a port of 127.0.0.1")
}

fn builder(mock: &MockPostHog) -> PostHogBuilder {
    PostHog::builder(KEY).host(mock.url())
}

/// Every flag on for everybody, differing only in their evaluation tags.
fn definitions() -> Value {
    let flag = |id: i64, key: &str, tags: Value| {
        let mut flag = json!({"id": id, "key": key, "active": true,
            "filters": {"groups": [{"properties": [], "rollout_percentage": 100}]}});
        if !tags.is_null() {
            flag["evaluation_tags"] = tags;
        }
        flag
    };
    json!({
        "flags": [
            flag(1, "untagged", Value::Null),
            flag(2, "empty-tags", json!([])),
            flag(3, "backend-only", json!(["backend", "production"])),
            flag(4, "web-only", json!(["web"])),
            flag(5, "unreadable-tags", json!(true)),
        ],
        "group_type_mapping": {},
        "cohorts": {}
    })
}

/// `/flags` answers every asked key as on, with a reason local evaluation never gives.
fn remote_answer(keys: &[&str]) -> MockResponse {
    let flags: serde_json::Map<String, Value> = keys
        .iter()
        .map(|k| {
            (
                (*k).to_owned(),
                json!({"key": k, "enabled": true, "reason": {"code": "condition_match",
                       "description": "Matched condition set 1"}, "metadata": {"id": 9}}),
            )
        })
        .collect();
    MockResponse::json(200, json!({"flags": flags, "requestId": "remote"}))
}

fn flags_bodies(mock: &MockPostHog) -> Vec<Value> {
    mock.requests_to("/flags")
        .iter()
        .map(|r| r.json().expect("a JSON /flags body"))
        .collect()
}

#[tokio::test]
async fn every_flags_request_carries_the_environments() {
    let mock = start_mock().await;
    mock.set_default("/flags/", remote_answer(&["beta"]));
    let ph = builder(&mock)
        .evaluation_environments(["production", " ", "backend"])
        .build()
        .unwrap();

    assert_eq!(
        ph.get_feature_flag("beta", "user-1").await,
        Ok(FlagValue::Bool(true))
    );
    let _ = ph.evaluate_flags("user-2").await;
    let _ = ph.get_all_flags("user-3").await;

    let bodies = flags_bodies(&mock);
    assert_eq!(bodies.len(), 3);
    for body in &bodies {
        assert_eq!(
            body["evaluation_environments"],
            json!(["production", "backend"])
        );
    }
}

#[tokio::test]
async fn without_environments_none_are_sent() {
    let mock = start_mock().await;
    mock.set_default("/flags/", remote_answer(&["beta"]));
    for ph in [
        builder(&mock).build().unwrap(),
        builder(&mock)
            .evaluation_environments(Vec::<String>::new())
            .build()
            .unwrap(),
    ] {
        assert_eq!(
            ph.get_feature_flag("beta", "user-1").await,
            Ok(FlagValue::Bool(true))
        );
    }
    let bodies = flags_bodies(&mock);
    assert_eq!(bodies.len(), 2);
    for body in &bodies {
        assert!(body.get("evaluation_environments").is_none(), "{body}");
    }
}

async fn local_client(mock: &MockPostHog, environments: &[&str]) -> PostHog {
    mock.set_default("/flags/definitions", MockResponse::json(200, definitions()));
    let ph = builder(mock)
        .personal_api_key("phx_environments_secret")
        .evaluation_environments(environments.iter().copied())
        .build()
        .unwrap();
    assert!(ph.wait_for_flag_definitions(Duration::from_secs(5)).await);
    ph
}

#[tokio::test]
async fn local_evaluation_decides_tagged_flags_from_the_definitions() {
    let mock = start_mock().await;
    mock.set_default("/flags/", remote_answer(&["unreadable-tags"]));
    let ph = local_client(&mock, &["backend"]).await;

    for key in ["untagged", "empty-tags", "backend-only"] {
        let result = ph.get_feature_flag_result(key, "user-1").await.unwrap();
        assert_eq!(result.record.value, FlagValue::Bool(true), "{key}");
        assert!(result.record.locally_evaluated, "{key}");
    }
    // Tagged for another environment: PostHog would leave it out, so it is missing.
    assert_eq!(
        ph.get_feature_flag("web-only", "user-1").await,
        Err(FlagError::Missing)
    );
    assert!(
        mock.requests_to("/flags").is_empty(),
        "decided without /flags"
    );

    // Tags local evaluation cannot read: PostHog decides, told the environments.
    let result = ph
        .get_feature_flag_result("unreadable-tags", "user-1")
        .await
        .unwrap();
    assert!(!result.record.locally_evaluated);
    let bodies = flags_bodies(&mock);
    assert_eq!(bodies.len(), 1);
    assert_eq!(
        bodies[0]["flag_keys_to_evaluate"],
        json!(["unreadable-tags"])
    );
    assert_eq!(bodies[0]["evaluation_environments"], json!(["backend"]));
}

#[tokio::test]
async fn a_snapshot_leaves_out_flags_of_other_environments_and_asks_once_for_the_rest() {
    let mock = start_mock().await;
    mock.set_default("/flags/", remote_answer(&["unreadable-tags"]));
    let ph = local_client(&mock, &["web"]).await;

    let snapshot = ph.evaluate_flags(FlagsRequest::new("user-1")).await;
    let mut keys: Vec<&str> = snapshot.keys().collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        ["empty-tags", "unreadable-tags", "untagged", "web-only"],
        "backend-only is left out"
    );
    let bodies = flags_bodies(&mock);
    assert_eq!(bodies.len(), 1, "one /flags request for the undecided flag");
    assert_eq!(
        bodies[0]["flag_keys_to_evaluate"],
        json!(["unreadable-tags"])
    );
}

#[tokio::test]
async fn without_environments_every_tagged_flag_is_evaluated_locally() {
    let mock = start_mock().await;
    let ph = local_client(&mock, &[]).await;
    let snapshot = ph.evaluate_flags(FlagsRequest::new("user-1")).await;
    assert_eq!(snapshot.keys().count(), 5);
    for key in ["backend-only", "web-only", "unreadable-tags"] {
        assert!(snapshot.is_enabled(key), "{key}");
    }
    assert!(mock.requests_to("/flags").is_empty());
}
