//! Local flag evaluation on a representative set of 11 flags.
//!
//! ```text
//! cargo bench --bench local_eval
//! ```
//!
//! Each `local_eval/<flag>` evaluates one flag for one person with borrowed properties;
//! `local_eval/all_11` evaluates every flag for that person.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use posthog_tower::flags::{FlagsRequest, LocalFlags};
use serde_json::json;

fn definitions() -> serde_json::Value {
    let person = |key: &str, value: serde_json::Value, operator: &str| json!({"key": key, "value": value, "operator": operator, "type": "person"});
    json!({
        "flags": [
            {"id": 1, "key": "simple-rollout", "active": true,
             "filters": {"groups": [{"properties": [], "rollout_percentage": 45}]}},
            {"id": 2, "key": "multivariate", "active": true,
             "filters": {"groups": [{"properties": [], "rollout_percentage": 100}],
                         "multivariate": {"variants": [
                             {"key": "control", "rollout_percentage": 50},
                             {"key": "test-a", "rollout_percentage": 25},
                             {"key": "test-b", "rollout_percentage": 25}]}}},
            {"id": 3, "key": "icontains", "active": true,
             "filters": {"groups": [{"properties": [person("email", json!("@example.com"), "icontains")],
                                     "rollout_percentage": 100}]}},
            {"id": 4, "key": "three-filters", "active": true,
             "filters": {"groups": [{"properties": [
                 person("plan", json!(["pro", "enterprise"]), "exact"),
                 person("age", json!(18), "gte"),
                 person("email", json!("^[a-z.]+@example\\.com$"), "regex")],
                 "rollout_percentage": 100}]}},
            {"id": 5, "key": "five-filters", "active": true,
             "filters": {"groups": [{"properties": [
                 person("plan", json!("pro"), "exact"),
                 person("age", json!(65), "lt"),
                 person("country", json!(["FR", "DE", "ES"]), "exact"),
                 person("app_version", json!("2.0.0"), "semver_gte"),
                 person("email", json!("example\\.com$"), "regex")],
                 "rollout_percentage": 80}]}},
            {"id": 6, "key": "two-or-conditions", "active": true,
             "filters": {"groups": [
                 {"properties": [person("plan", json!("enterprise"), "exact")], "rollout_percentage": 100},
                 {"properties": [person("country", json!("FR"), "exact")], "rollout_percentage": 50}]}},
            {"id": 7, "key": "cohort", "active": true,
             "filters": {"groups": [{"properties": [
                 {"key": "id", "value": 99, "type": "cohort"}], "rollout_percentage": 100}]}},
            {"id": 8, "key": "group-flag", "active": true,
             "filters": {"aggregation_group_type_index": 0,
                         "groups": [{"properties": [
                             {"key": "employees", "value": 10, "operator": "gt", "type": "group",
                              "group_type_index": 0}], "rollout_percentage": 100}]}},
            {"id": 9, "key": "variant-override", "active": true,
             "filters": {"groups": [{"properties": [person("plan", json!("pro"), "exact")],
                                     "rollout_percentage": 100, "variant": "test-b"}],
                         "multivariate": {"variants": [
                             {"key": "control", "rollout_percentage": 50},
                             {"key": "test-b", "rollout_percentage": 50}]}}},
            {"id": 10, "key": "inactive", "active": false,
             "filters": {"groups": [{"properties": [], "rollout_percentage": 100}]}},
            {"id": 11, "key": "country-rollout", "active": true,
             "filters": {"groups": [{"properties": [person("country", json!("FR"), "exact")],
                                     "rollout_percentage": 30}]}}
        ],
        "group_type_mapping": {"0": "company"},
        "cohorts": {"99": {"type": "OR", "values": [{"type": "AND", "values": [
            {"key": "country", "value": ["FR", "BE"], "operator": "exact", "type": "person"},
            {"key": "age", "value": 30, "operator": "gt", "type": "person"}]}]}}
    })
}

fn bench(c: &mut Criterion) {
    let flags = LocalFlags::from_definitions(definitions().to_string().as_bytes())
        .expect("definitions compile");
    let request = FlagsRequest::new("user-4242")
        .person_property("email", "ada.lovelace@example.com")
        .person_property("plan", "pro")
        .person_property("age", 36)
        .person_property("country", "FR")
        .person_property("app_version", "2.4.1")
        .group("company", "acme")
        .group_property("company", "employees", 40);
    let keys: Vec<String> = flags.keys().map(str::to_owned).collect();
    assert_eq!(keys.len(), 11);
    for key in &keys {
        // Every flag is decided locally for this person (none falls back to the server).
        flags
            .evaluate(key, &request)
            .unwrap_or_else(|e| panic!("{key}: {e}"));
    }
    let mut group = c.benchmark_group("local_eval");
    for key in &keys {
        group.bench_function(key.as_str(), |b| {
            b.iter(|| black_box(flags.evaluate(black_box(key), black_box(&request))))
        });
    }
    group.bench_function("all_11", |b| {
        b.iter(|| {
            for key in &keys {
                let _ = black_box(flags.evaluate(key, &request));
            }
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
