//! `/flags?v=4` over real HTTP to `MockPostHog`: for every reason code and rule type, the
//! exact `$feature_flag_called` properties and whether (and with which properties) an
//! `$experiment_exposure` is sent, as posthog-python 7.91.1 sends them; both events'
//! deduplication (repeated reads, groups, successive rules), super properties that may not
//! change the attribution, `send_feature_flag_events`, and every read path (single-flag
//! getters, a snapshot's first read).

use posthog_tower::flags::{FlagError, FlagValue, FlagsRequest};
use posthog_tower::testing::{MockPostHog, MockResponse, V4Flag};
use posthog_tower::{PostHog, PostHogBuilder};
use serde_json::{json, Map, Value};

const KEY: &str = "phc_test_key";
const RULE: &str = "0f8e6a52-5b8e-4f4c-9a39-5d3c2c8f6b21";
const OTHER_RULE: &str = "7d1c2b3a-4e5f-4a6b-8c7d-9e0f1a2b3c4d";
const REQUEST_ID: &str = "mock-v4";
const EVALUATED_AT: i64 = 1_700_000_000_000;

async fn start_mock() -> MockPostHog {
    MockPostHog::start()
        .await
        .expect("the mock binds a port of 127.0.0.1")
}

fn builder(mock: &MockPostHog) -> PostHogBuilder {
    PostHog::builder(KEY).host(mock.url())
}

fn client(mock: &MockPostHog) -> PostHog {
    builder(mock).build().expect("client builds")
}

/// The flag events delivered so far (`$feature_flag_called` and `$experiment_exposure`), in
/// the order they were sent, as `(name, properties without the library's own)`.
async fn flag_events(ph: &PostHog, mock: &MockPostHog) -> Vec<(String, Map<String, Value>)> {
    ph.flush().await;
    mock.events()
        .into_iter()
        .filter(|e| e["event"] == "$feature_flag_called" || e["event"] == "$experiment_exposure")
        .map(|e| {
            let mut p = e["properties"].as_object().cloned().unwrap_or_default();
            // The library's and the system's properties are on every event.
            for library in [
                "$lib",
                "$lib_version",
                "$geoip_disable",
                "$is_server",
                "$os",
                "$os_version",
            ] {
                p.remove(library);
            }
            (e["event"].as_str().unwrap_or_default().to_owned(), p)
        })
        .collect()
}

fn object(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map,
        other => panic!("not an object: {other}"),
    }
}

/// What every remote `$feature_flag_called` of flag `k` with this response carries.
fn base(response: Value) -> Map<String, Value> {
    object(json!({
        "$feature_flag": "k",
        "$feature_flag_response": response,
        "locally_evaluated": false,
        "$feature/k": response,
        "$feature_flag_request_id": REQUEST_ID,
        "$feature_flag_evaluated_at": EVALUATED_AT,
        "$feature_flag_id": 1,
        "$feature_flag_version": 1,
    }))
}

/// `base` plus `extra`.
fn called(response: Value, extra: Value) -> Map<String, Value> {
    let mut p = base(response);
    p.extend(object(extra));
    p
}

/// The `$experiment_exposure` of flag `k` for this variant of `RULE`.
fn exposure(response: Value, variant: &str) -> Map<String, Value> {
    object(json!({
        "$feature_flag": "k",
        "$feature_flag_response": response,
        "locally_evaluated": false,
        "$feature_flag_variant_key": variant,
        "$feature_flag_rule_id": RULE,
        "$feature_flag_id": 1,
        "$feature_flag_version": 1,
        "$feature_flag_request_id": REQUEST_ID,
        "$feature_flag_evaluated_at": EVALUATED_AT,
    }))
}

/// The attribution of a config version 2 record.
fn v2(reason_code: &str) -> Value {
    json!({"$feature_flag_config_version": 2, "$feature_flag_reason_code": reason_code})
}

fn v2_rule(reason_code: &str, rule_type: &str) -> Value {
    json!({
        "$feature_flag_config_version": 2,
        "$feature_flag_reason_code": reason_code,
        "$feature_flag_rule_id": RULE,
        "$feature_flag_rule_type": rule_type,
    })
}

struct Case {
    name: &'static str,
    record: Value,
    value: FlagValue,
    called: Map<String, Value>,
    exposure: Option<Map<String, Value>>,
}

/// One row per reason code and rule type, written from posthog-python 7.91.1's behaviour
/// (`_RULE_TYPES_BY_REASON_CODE`, `_rule_attribution`, `_capture_experiment_exposure`).
fn cases() -> Vec<Case> {
    let split = || V4Flag::experiment_split("k", "test", RULE);
    let with = |code: &str, value: Value, rule_type: &str| {
        V4Flag::new("k", value)
            .reason(code, "described")
            .rule(RULE, rule_type)
    };
    vec![
        Case {
            name: "targeting_match / targeted_release reports the rule",
            record: V4Flag::targeting_match("k", true, RULE, "targeted_release").to_json(),
            value: FlagValue::Bool(true),
            called: called(json!(true), v2_rule("targeting_match", "targeted_release")),
            exposure: None,
        },
        Case {
            name: "targeting_match / percentage_rollout reports the rule",
            record: V4Flag::targeting_match("k", true, RULE, "percentage_rollout").to_json(),
            value: FlagValue::Bool(true),
            called: called(
                json!(true),
                v2_rule("targeting_match", "percentage_rollout"),
            ),
            exposure: None,
        },
        Case {
            name: "targeting_match / experiment is not a rule targeting reports",
            record: V4Flag::targeting_match("k", true, RULE, "experiment").to_json(),
            value: FlagValue::Bool(true),
            called: called(json!(true), v2("targeting_match")),
            exposure: None,
        },
        Case {
            name: "experiment_split / experiment: the variant and one exposure",
            record: split().to_json(),
            value: FlagValue::Variant("test".into()),
            called: called(
                json!("test"),
                json!({
                    "$feature_flag_has_experiment": true,
                    "$feature_flag_config_version": 2,
                    "$feature_flag_reason_code": "experiment_split",
                    "$feature_flag_rule_id": RULE,
                    "$feature_flag_rule_type": "experiment",
                    "$feature_flag_variant_key": "test",
                }),
            ),
            exposure: Some(exposure(json!("test"), "test")),
        },
        Case {
            name: "experiment_split: forced variant and experiment id are never sent",
            record: split().forced_variant(true).experiment_id(99).to_json(),
            value: FlagValue::Variant("test".into()),
            called: called(
                json!("test"),
                json!({
                    "$feature_flag_has_experiment": true,
                    "$feature_flag_config_version": 2,
                    "$feature_flag_reason_code": "experiment_split",
                    "$feature_flag_rule_id": RULE,
                    "$feature_flag_rule_type": "experiment",
                    "$feature_flag_variant_key": "test",
                }),
            ),
            exposure: Some(exposure(json!("test"), "test")),
        },
        Case {
            name: "experiment_split with an empty variant key is still a split",
            record: V4Flag::experiment_split("k", "", RULE).to_json(),
            value: FlagValue::Bool(true),
            called: called(
                json!(true),
                json!({
                    "$feature_flag_has_experiment": true,
                    "$feature_flag_config_version": 2,
                    "$feature_flag_reason_code": "experiment_split",
                    "$feature_flag_rule_id": RULE,
                    "$feature_flag_rule_type": "experiment",
                    "$feature_flag_variant_key": "",
                }),
            ),
            exposure: Some(exposure(json!(true), "")),
        },
        Case {
            name: "experiment_split without a variant key is malformed: no rule, no exposure",
            record: split().without_metadata_field("variant_key").to_json(),
            value: FlagValue::Variant("test".into()),
            called: called(
                json!("test"),
                json!({"$feature_flag_has_experiment": true, "$feature_flag_config_version": 2,
                       "$feature_flag_reason_code": "experiment_split"}),
            ),
            exposure: None,
        },
        Case {
            name: "experiment_split with a rule id that is not a UUID: no rule, no exposure",
            record: split().rule("rule-1", "experiment").to_json(),
            value: FlagValue::Variant("test".into()),
            called: called(
                json!("test"),
                json!({"$feature_flag_has_experiment": true, "$feature_flag_config_version": 2,
                       "$feature_flag_reason_code": "experiment_split"}),
            ),
            exposure: None,
        },
        Case {
            name: "experiment_split / percentage_rollout is not a split",
            record: split().rule(RULE, "percentage_rollout").to_json(),
            value: FlagValue::Variant("test".into()),
            called: called(
                json!("test"),
                json!({"$feature_flag_has_experiment": true, "$feature_flag_config_version": 2,
                       "$feature_flag_reason_code": "experiment_split"}),
            ),
            exposure: None,
        },
        Case {
            name: "rollout_miss / percentage_rollout reports the rule",
            record: with("rollout_miss", json!(false), "percentage_rollout").to_json(),
            value: FlagValue::Bool(false),
            called: called(json!(false), v2_rule("rollout_miss", "percentage_rollout")),
            exposure: None,
        },
        Case {
            name: "rollout_miss / experiment reports the rule",
            record: with("rollout_miss", json!(false), "experiment").to_json(),
            value: FlagValue::Bool(false),
            called: called(json!(false), v2_rule("rollout_miss", "experiment")),
            exposure: None,
        },
        Case {
            name: "rollout_miss / targeted_release reports no rule",
            record: with("rollout_miss", json!(false), "targeted_release").to_json(),
            value: FlagValue::Bool(false),
            called: called(json!(false), v2("rollout_miss")),
            exposure: None,
        },
        Case {
            name: "experiment_paused / experiment: the rule, no variant, no exposure",
            record: with("experiment_paused", json!("control"), "experiment")
                .variant_key("control")
                .to_json(),
            value: FlagValue::Variant("control".into()),
            called: called(json!("control"), v2_rule("experiment_paused", "experiment")),
            exposure: None,
        },
        Case {
            name: "holdout / experiment: the rule, no exposure",
            record: with("holdout", json!(false), "experiment")
                .variant_key("holdout")
                .to_json(),
            value: FlagValue::Bool(false),
            called: called(json!(false), v2_rule("holdout", "experiment")),
            exposure: None,
        },
        Case {
            name: "holdout / percentage_rollout reports no rule",
            record: with("holdout", json!(false), "percentage_rollout").to_json(),
            value: FlagValue::Bool(false),
            called: called(json!(false), v2("holdout")),
            exposure: None,
        },
        Case {
            name: "no_condition_match names no rule",
            record: with("no_condition_match", json!(false), "targeted_release").to_json(),
            value: FlagValue::Bool(false),
            called: called(json!(false), v2("no_condition_match")),
            exposure: None,
        },
        Case {
            name: "an unknown reason code names no rule",
            record: with("future_reason", json!(true), "targeted_release").to_json(),
            value: FlagValue::Bool(true),
            called: called(json!(true), v2("future_reason")),
            exposure: None,
        },
        Case {
            name: "no reason: only the config version",
            record: V4Flag::new("k", true)
                .rule(RULE, "targeted_release")
                .to_json(),
            value: FlagValue::Bool(true),
            called: called(json!(true), json!({"$feature_flag_config_version": 2})),
            exposure: None,
        },
        Case {
            name: "a failed split keeps its reason code, has no value, no rule, no exposure",
            record: split().failed().to_json(),
            value: FlagValue::Bool(false),
            called: called(
                Value::Null,
                json!({"$feature_flag_has_experiment": true, "$feature_flag_config_version": 2,
                       "$feature_flag_reason_code": "experiment_split",
                       "$feature_flag_error": "evaluation_failed"}),
            ),
            exposure: None,
        },
        Case {
            name: "config version 1: the older shape, with the reason's description",
            record: V4Flag::targeting_match("k", true, RULE, "targeted_release")
                .config_version(1)
                .to_json(),
            value: FlagValue::Bool(true),
            called: called(
                json!(true),
                json!({"$feature_flag_reason": "Matched condition set 1"}),
            ),
            exposure: None,
        },
        Case {
            name: "a v2 record (no typed value) is config version 1 whatever it names",
            record: json!({"key": "k", "enabled": true, "variant": "test",
                "reason": {"code": "experiment_split", "description": "Assigned"},
                "metadata": {"id": 1, "version": 1, "config_version": 2, "rule_id": RULE,
                             "rule_type": "experiment", "variant_key": "test"}}),
            value: FlagValue::Variant("test".into()),
            called: called(json!("test"), json!({"$feature_flag_reason": "Assigned"})),
            exposure: None,
        },
        Case {
            name: "a number value is an enabled flag whose payload is the number",
            record: V4Flag::new("k", 42).to_json(),
            value: FlagValue::Bool(true),
            called: called(
                json!(true),
                json!({"$feature_flag_config_version": 2, "$feature_flag_payload": 42}),
            ),
            exposure: None,
        },
    ]
}

fn answer(record: &Value) -> MockResponse {
    MockResponse::json(
        200,
        json!({"flags": {"k": record}, "requestId": REQUEST_ID, "evaluatedAt": EVALUATED_AT}),
    )
}

#[tokio::test(start_paused = true)]
async fn each_reason_code_and_rule_type_reports_as_the_reference() {
    for case in cases() {
        let mock = start_mock().await;
        mock.set_default("/flags/", answer(&case.record));
        let ph = client(&mock);
        let value = ph.get_feature_flag("k", "user-1").await;
        if case.record["failed"] == true {
            assert_eq!(value, Err(FlagError::EvaluationFailed), "{}", case.name);
        } else {
            assert_eq!(value, Ok(case.value.clone()), "{}", case.name);
        }
        let events = flag_events(&ph, &mock).await;
        let expected_len = 1 + usize::from(case.exposure.is_some());
        assert_eq!(events.len(), expected_len, "{}: {events:?}", case.name);
        assert_eq!(events[0].0, "$feature_flag_called", "{}", case.name);
        assert_eq!(events[0].1, case.called, "{}", case.name);
        if let Some(exposure) = &case.exposure {
            assert_eq!(events[1].0, "$experiment_exposure", "{}", case.name);
            assert_eq!(&events[1].1, exposure, "{}", case.name);
        }
        let flags = mock.requests_to("/flags");
        assert_eq!(flags[0].query.as_deref(), Some("v=4"), "{}", case.name);
        ph.shutdown(std::time::Duration::from_secs(5)).await;
        mock.shutdown().await;
    }
}

/// The same table through a snapshot's first read: the same events, except that a snapshot
/// reads a failed flag as having no value.
#[tokio::test(start_paused = true)]
async fn a_snapshots_first_read_reports_as_the_single_flag_getters() {
    for case in cases() {
        let mock = start_mock().await;
        mock.set_default("/flags/", answer(&case.record));
        let ph = client(&mock);
        let snapshot = ph.evaluate_flags("user-1").await;
        let failed = snapshot.record("k").is_some_and(|r| r.failed);
        let read = snapshot.get_flag("k");
        assert_eq!(snapshot.get_flag("k"), read, "{}", case.name);
        let mut expected = case.called.clone();
        if failed {
            assert_eq!(read, None, "{}", case.name);
        } else if case.record["value"] == "" {
            // A snapshot keeps an empty variant; a single-flag lookup reads it as `true`.
            assert_eq!(
                read,
                Some(FlagValue::Variant(String::new())),
                "{}",
                case.name
            );
            expected.insert("$feature_flag_response".into(), json!(""));
            expected.insert("$feature/k".into(), json!(""));
        } else {
            assert_eq!(read, Some(case.value.clone()), "{}", case.name);
        }
        let events = flag_events(&ph, &mock).await;
        assert_eq!(
            events.len(),
            1 + usize::from(case.exposure.is_some()),
            "{}: two reads, one of each event: {events:?}",
            case.name
        );
        assert_eq!(events[0].1, expected, "{}", case.name);
        if let Some(exposure) = &case.exposure {
            let mut exposure = exposure.clone();
            if case.record["value"] == "" {
                exposure.insert("$feature_flag_response".into(), json!(""));
            }
            assert_eq!(events[1].1, exposure, "{}", case.name);
        }
        ph.shutdown(std::time::Duration::from_secs(5)).await;
        mock.shutdown().await;
    }
}

#[tokio::test(start_paused = true)]
async fn exposures_are_deduplicated_per_person_groups_rule_and_variant() {
    let mock = start_mock().await;
    mock.set_default(
        "/flags/",
        MockResponse::flags_v4([V4Flag::experiment_split("k", "test", RULE)]),
    );
    let ph = client(&mock);
    // Repeated reads through every getter: one of each event.
    for _ in 0..3 {
        ph.get_feature_flag("k", "user-1").await.ok();
        ph.is_feature_enabled("k", "user-1").await.ok();
        ph.get_feature_flag_result("k", "user-1").await.ok();
        ph.evaluate_flags("user-1").await.get_flag("k");
    }
    let names = |events: &[(String, Map<String, Value>)]| {
        events.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>()
    };
    let events = flag_events(&ph, &mock).await;
    assert_eq!(
        names(&events),
        ["$feature_flag_called", "$experiment_exposure"]
    );

    // Another person, and the same person in two groups: one more pair each.
    ph.get_feature_flag("k", "user-2").await.ok();
    for company in ["acme", "globex", "acme"] {
        ph.get_feature_flag("k", FlagsRequest::new("user-1").group("company", company))
            .await
            .ok();
    }
    let events = flag_events(&ph, &mock).await;
    let exposures: Vec<_> = events
        .iter()
        .filter(|(n, _)| n == "$experiment_exposure")
        .map(|(_, p)| p.get("$groups").cloned().unwrap_or(Value::Null))
        .collect();
    assert_eq!(
        exposures,
        [
            Value::Null,
            Value::Null,
            json!({"company": "acme"}),
            json!({"company": "globex"})
        ]
    );
    assert_eq!(events.len(), 8);

    // A new experiment rule on the same flag, then a new variant: each is a new
    // assignment.
    mock.set_default(
        "/flags/",
        MockResponse::flags_v4([V4Flag::experiment_split("k", "test", OTHER_RULE)]),
    );
    ph.get_feature_flag("k", "user-1").await.ok();
    mock.set_default(
        "/flags/",
        MockResponse::flags_v4([V4Flag::experiment_split("k", "control", OTHER_RULE)]),
    );
    ph.get_feature_flag("k", "user-1").await.ok();
    ph.get_feature_flag("k", "user-1").await.ok();
    let events = flag_events(&ph, &mock).await;
    let tail: Vec<_> = events[8..]
        .iter()
        .map(|(n, p)| {
            (
                n.clone(),
                p["$feature_flag_rule_id"].clone(),
                p["$feature_flag_response"].clone(),
            )
        })
        .collect();
    assert_eq!(
        tail,
        [
            (
                "$feature_flag_called".to_owned(),
                json!(OTHER_RULE),
                json!("test")
            ),
            (
                "$experiment_exposure".to_owned(),
                json!(OTHER_RULE),
                json!("test")
            ),
            (
                "$feature_flag_called".to_owned(),
                json!(OTHER_RULE),
                json!("control")
            ),
            (
                "$experiment_exposure".to_owned(),
                json!(OTHER_RULE),
                json!("control")
            ),
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn both_dedups_are_bounded() {
    // Each dedup holds at most `flag_called_dedup_capacity` people, oldest forgotten first.
    let mock = start_mock().await;
    mock.set_default(
        "/flags/",
        MockResponse::flags_v4([V4Flag::experiment_split("k", "test", RULE)]),
    );
    let ph = builder(&mock)
        .flag_called_dedup_capacity(1)
        .build()
        .expect("client builds");
    ph.get_feature_flag("k", "a").await.ok();
    ph.get_feature_flag("k", "b").await.ok();
    ph.get_feature_flag("k", "a").await.ok();
    let events = flag_events(&ph, &mock).await;
    let names: Vec<_> = events.iter().map(|(n, _)| n.as_str()).collect();
    // With room for one person, `a` is forgotten when `b` arrives: both events again.
    assert_eq!(
        names,
        [
            "$feature_flag_called",
            "$experiment_exposure",
            "$feature_flag_called",
            "$experiment_exposure",
            "$feature_flag_called",
            "$experiment_exposure"
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn send_feature_flag_events_switches_both_events() {
    let mock = start_mock().await;
    mock.set_default(
        "/flags/",
        MockResponse::flags_v4([V4Flag::experiment_split("k", "test", RULE)]),
    );
    let ph = builder(&mock)
        .send_feature_flag_events(false)
        .build()
        .expect("client builds");
    assert_eq!(
        ph.get_feature_flag("k", "user-1").await,
        Ok(FlagValue::Variant("test".into()))
    );
    ph.evaluate_flags("user-1").await.get_flag("k");
    assert!(flag_events(&ph, &mock).await.is_empty());

    // Per call, on a client that sends them.
    let ph = client(&mock);
    let quiet = FlagsRequest::new("user-1").send_feature_flag_events(false);
    ph.get_feature_flag("k", quiet).await.ok();
    assert!(flag_events(&ph, &mock).await.is_empty());
    ph.get_feature_flag("k", "user-1").await.ok();
    assert_eq!(flag_events(&ph, &mock).await.len(), 2);
}

#[tokio::test(start_paused = true)]
async fn super_properties_cannot_change_the_attribution() {
    let mock = start_mock().await;
    mock.set_default(
        "/flags/",
        MockResponse::flags_v4([
            V4Flag::experiment_split("k", "test", RULE),
            V4Flag::new("plain", true).config_version(1),
        ]),
    );
    let ph = builder(&mock)
        .super_property("$feature_flag_rule_id", "super-rule")
        .super_property("$feature_flag_rule_type", "super-type")
        .super_property("$feature_flag_reason", "super-reason")
        .super_property("$feature_flag_forced_variant", true)
        .super_property("$feature_flag_experiment_id", 5)
        .super_property("$experiment_exposure_source", "super")
        .super_property("$feature_flag", "super-flag")
        .super_property("$feature_flag_response", "super-response")
        .super_property("$feature_flag_id", 999)
        .super_property("team", "growth")
        .build()
        .expect("client builds");
    ph.get_feature_flag("k", "user-1").await.ok();
    ph.get_feature_flag("plain", "user-1").await.ok();
    let events = flag_events(&ph, &mock).await;
    assert_eq!(events.len(), 3, "{events:?}");
    let (called, exposure, plain) = (&events[0].1, &events[1].1, &events[2].1);
    assert_eq!(called["$feature_flag"], "k");
    assert_eq!(called["$feature_flag_response"], "test");
    assert_eq!(called["$feature_flag_rule_id"], RULE);
    assert_eq!(called["$feature_flag_rule_type"], "experiment");
    for never in [
        "$feature_flag_reason",
        "$feature_flag_forced_variant",
        "$feature_flag_experiment_id",
    ] {
        assert!(called.get(never).is_none(), "{never} on {called:?}");
    }
    // Other properties take super properties as any event does.
    assert_eq!(called["$feature_flag_id"], 999);
    assert_eq!(called["$experiment_exposure_source"], "super");
    assert_eq!(called["team"], "growth");

    assert_eq!(exposure["$feature_flag"], "k");
    assert_eq!(exposure["$feature_flag_response"], "test");
    assert_eq!(exposure["$feature_flag_rule_id"], RULE);
    assert_eq!(exposure["$feature_flag_variant_key"], "test");
    for never in [
        "$feature_flag_rule_type",
        "$feature_flag_forced_variant",
        "$feature_flag_experiment_id",
        "$experiment_exposure_source",
        "$feature_flag_config_version",
        "$feature_flag_reason_code",
    ] {
        assert!(exposure.get(never).is_none(), "{never} on {exposure:?}");
    }
    assert_eq!(exposure["$feature_flag_reason"], "super-reason");
    assert_eq!(exposure["$feature_flag_id"], 999);
    assert_eq!(exposure["team"], "growth");

    // A config version 1 event keeps the old precedence: super properties win.
    assert_eq!(plain["$feature_flag"], "super-flag");
    assert_eq!(plain["$feature_flag_rule_id"], "super-rule");
}

#[tokio::test(start_paused = true)]
async fn minimized_events_keep_their_attribution() {
    let mock = start_mock().await;
    let mut body = json!({
        "flags": {
            "k": V4Flag::targeting_match("k", true, RULE, "targeted_release")
                .has_experiment(false)
                .to_json(),
        },
        "requestId": REQUEST_ID,
        "evaluatedAt": EVALUATED_AT,
        "minimalFlagCalledEvents": true,
    });
    mock.set_default("/flags/", MockResponse::json(200, body.clone()));
    let ph = builder(&mock)
        .super_property("team", "growth")
        .build()
        .expect("client builds");
    ph.get_feature_flag("k", "user-1").await.ok();
    let events = flag_events(&ph, &mock).await;
    let p = &events[0].1;
    assert_eq!(p["$feature_flag_rule_id"], RULE);
    assert_eq!(p["$feature_flag_reason_code"], "targeting_match");
    assert_eq!(p["$feature_flag_config_version"], 2);
    assert!(p.get("team").is_none(), "minimized: {p:?}");
    assert!(p.get("$feature/k").is_none(), "minimized: {p:?}");

    // A config version 1 event is trimmed to the narrower list.
    body["flags"]["k"]["metadata"]["config_version"] = json!(1);
    mock.set_default("/flags/", MockResponse::json(200, body));
    ph.get_feature_flag("k", "user-2").await.ok();
    let events = flag_events(&ph, &mock).await;
    assert!(events[1].1.get("$feature_flag_rule_id").is_none());
}

#[tokio::test(start_paused = true)]
async fn an_unreadable_record_is_an_unknown_error_for_a_lookup_and_off_in_a_snapshot() {
    let mock = start_mock().await;
    // `rule_id` must be a string: only this record fails.
    let broken = V4Flag::experiment_split("k", "test", RULE).metadata_field("rule_id", 5);
    mock.set_default(
        "/flags/",
        MockResponse::flags_v4([broken, V4Flag::new("fine", true)]),
    );
    let ph = client(&mock);
    let result = ph
        .get_feature_flag_result("k", "user-1")
        .await
        .unwrap_or_else(|e| panic!("an unreadable record reads as off: {e:?}"));
    assert_eq!(result.record.value, FlagValue::Bool(false));
    assert!(!result.record.failed);
    assert_eq!(result.request_id, None);
    assert_eq!(
        ph.get_feature_flag("fine", "user-1").await,
        Ok(FlagValue::Bool(true))
    );
    let events = flag_events(&ph, &mock).await;
    assert_eq!(
        events[0].1,
        object(json!({
            "$feature_flag": "k",
            "$feature_flag_response": false,
            "locally_evaluated": false,
            "$feature/k": false,
            "$feature_flag_error": "unknown_error",
        }))
    );
    assert_eq!(events.len(), 2, "no exposure: {events:?}");

    let snapshot = ph.evaluate_flags("user-2").await;
    assert_eq!(snapshot.get_flag("k"), Some(FlagValue::Bool(false)));
    let events = flag_events(&ph, &mock).await;
    let p = &events[2].1;
    assert_eq!(p["$feature_flag_response"], false);
    assert!(p.get("$feature_flag_error").is_none(), "{p:?}");
    assert!(p.get("$feature_flag_config_version").is_none(), "{p:?}");
}
