//! The `/flags?v=4` differential corpus (`tests/data/flags_v4/differential.jsonl`, made by
//! `differential.py` from posthog-python 7.91.1): random v4 answers, the reads made, and the
//! flag events posthog-python delivered. Each case is replayed here over real HTTP to
//! `MockPostHog` and the `$feature_flag_called` and `$experiment_exposure` events must match,
//! event by event and property by property.

use posthog_tower::flags::FlagsRequest;
use posthog_tower::testing::{MockPostHog, MockResponse};
use posthog_tower::PostHog;
use serde_json::{Map, Value};

const CORPUS: &str = include_str!("../data/flags_v4/differential.jsonl");

/// The properties the corpus records: what the flag events are about.
fn flag_properties(properties: &Map<String, Value>) -> Map<String, Value> {
    properties
        .iter()
        .filter(|(k, _)| {
            k.starts_with("$feature")
                || k.starts_with("$experiment")
                || matches!(k.as_str(), "locally_evaluated" | "$groups" | "team")
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

fn request(read: &Value) -> FlagsRequest {
    let mut request = FlagsRequest::new(read["distinct_id"].as_str().unwrap_or_default());
    for (group_type, key) in read["groups"].as_object().into_iter().flatten() {
        request = request.group(group_type.clone(), key.as_str().unwrap_or_default());
    }
    request
}

#[tokio::test(start_paused = true)]
async fn flag_events_match_posthog_python_on_the_corpus() {
    let mock = MockPostHog::start().await.expect("the mock binds");
    let mut failures = Vec::new();
    let mut cases = 0;
    for (line, text) in CORPUS.lines().enumerate() {
        let case: Value = serde_json::from_str(text).expect("a corpus line is JSON");
        cases += 1;
        mock.clear();
        mock.set_default("/flags/", MockResponse::json(200, case["flags"].clone()));
        let mut builder = PostHog::builder("phc_differential").host(mock.url());
        for (name, value) in case["super_properties"].as_object().into_iter().flatten() {
            builder = builder.super_property(name.clone(), value.clone());
        }
        let ph = builder.build().expect("client builds");
        for read in case["reads"].as_array().into_iter().flatten() {
            let key = read["key"].as_str().unwrap_or_default();
            if read["method"] == "snapshot" {
                ph.evaluate_flags(request(read)).await.get_flag(key);
            } else {
                let _ = ph.get_feature_flag(key, request(read)).await;
            }
        }
        ph.flush().await;
        let ours: Vec<Value> = mock
            .events()
            .into_iter()
            .filter(|e| e["event"] == "$feature_flag_called" || e["event"] == "$experiment_exposure")
            .map(|e| {
                serde_json::json!({
                    "event": e["event"],
                    "distinct_id": e["distinct_id"],
                    "properties": flag_properties(e["properties"].as_object().unwrap_or(&Map::new())),
                })
            })
            .collect();
        let theirs = case["events"].as_array().cloned().unwrap_or_default();
        if ours != theirs {
            failures.push(format!(
                "line {}: flags {}\n reads {}\n python {}\n ours   {}",
                line + 1,
                case["flags"],
                case["reads"],
                Value::Array(theirs),
                Value::Array(ours)
            ));
        }
        ph.shutdown(std::time::Duration::from_secs(5)).await;
    }
    assert!(cases >= 100, "the corpus has {cases} cases");
    assert!(
        failures.is_empty(),
        "{} of {cases} cases differ:\n{}",
        failures.len(),
        failures
            .iter()
            .take(5)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n\n")
    );
}
