//! One flag read through `RequestFlags` (the HTTP layer's per-request flags) with local
//! definitions loaded: 11 flags, and the same 11 among 500.
//!
//! ```text
//! cargo bench --bench request_flags
//! ```
//!
//! - `request_flags/one_read_11` and `request_flags/one_read_500`: a new request's
//!   `RequestFlags` for a person, and one `get_flag` of a multivariate flag,
//!   decided locally. A read evaluates only the flag read, so the two should be within a few
//!   per cent of each other. The same person reads every time, so `$feature_flag_called` is
//!   built and queued once; later reads pay its dedup check only.

use std::{convert::Infallible, hint::black_box, time::Duration};

use criterion::{criterion_group, criterion_main, Criterion};
use posthog_tower::{
    capture::EncodedBatch,
    http::RequestFlags,
    testing::{MockPostHog, MockResponse},
    PostHog,
};
use serde_json::{json, Value};

/// The 11 flags of `benches/local_eval.rs` (person filters, a rollout, variants), then
/// `total - 11` more of the same shapes under other keys.
fn definitions(total: usize) -> Value {
    let person = |key: &str, value: Value, operator: &str| json!({"key": key, "value": value, "operator": operator, "type": "person"});
    let shapes = |suffix: &str| {
        vec![
            json!({"key": format!("simple-rollout{suffix}"), "active": true,
             "filters": {"groups": [{"properties": [], "rollout_percentage": 45}]}}),
            json!({"key": format!("multivariate{suffix}"), "active": true,
             "filters": {"groups": [{"properties": [], "rollout_percentage": 100}],
                         "multivariate": {"variants": [
                             {"key": "control", "rollout_percentage": 50},
                             {"key": "test-a", "rollout_percentage": 25},
                             {"key": "test-b", "rollout_percentage": 25}]}}}),
            json!({"key": format!("icontains{suffix}"), "active": true,
             "filters": {"groups": [{"properties": [person("email", json!("@example.com"), "icontains")],
                                     "rollout_percentage": 100}]}}),
            json!({"key": format!("three-filters{suffix}"), "active": true,
             "filters": {"groups": [{"properties": [
                 person("plan", json!(["pro", "enterprise"]), "exact"),
                 person("age", json!(18), "gte"),
                 person("email", json!("^[a-z.]+@example\\.com$"), "regex")],
                 "rollout_percentage": 100}]}}),
            json!({"key": format!("five-filters{suffix}"), "active": true,
             "filters": {"groups": [{"properties": [
                 person("plan", json!("pro"), "exact"),
                 person("age", json!(65), "lt"),
                 person("country", json!(["FR", "DE", "ES"]), "exact"),
                 person("app_version", json!("2.0.0"), "semver_gte"),
                 person("email", json!("example\\.com$"), "regex")],
                 "rollout_percentage": 80}]}}),
            json!({"key": format!("two-or-conditions{suffix}"), "active": true,
             "filters": {"groups": [
                 {"properties": [person("plan", json!("enterprise"), "exact")], "rollout_percentage": 100},
                 {"properties": [person("country", json!("FR"), "exact")], "rollout_percentage": 50}]}}),
            json!({"key": format!("cohort{suffix}"), "active": true,
             "filters": {"groups": [{"properties": [
                 {"key": "id", "value": 99, "type": "cohort"}], "rollout_percentage": 100}]}}),
            json!({"key": format!("variant-override{suffix}"), "active": true,
             "filters": {"groups": [{"properties": [person("plan", json!("pro"), "exact")],
                                     "rollout_percentage": 100, "variant": "test-b"}],
                         "multivariate": {"variants": [
                             {"key": "control", "rollout_percentage": 50},
                             {"key": "test-b", "rollout_percentage": 50}]}}}),
            json!({"key": format!("inactive{suffix}"), "active": false,
             "filters": {"groups": [{"properties": [], "rollout_percentage": 100}]}}),
            json!({"key": format!("country-rollout{suffix}"), "active": true,
             "filters": {"groups": [{"properties": [person("country", json!("FR"), "exact")],
                                     "rollout_percentage": 30}]}}),
            json!({"key": format!("semver{suffix}"), "active": true,
             "filters": {"groups": [{"properties": [person("app_version", json!("2.1.0"), "semver_gt")],
                                     "rollout_percentage": 100}]}}),
        ]
    };
    let mut flags = shapes("");
    let mut copy = 0;
    while flags.len() < total {
        copy += 1;
        flags.extend(shapes(&format!("-{copy}")));
    }
    flags.truncate(total);
    for (i, flag) in flags.iter_mut().enumerate() {
        flag["id"] = json!(i + 1);
    }
    json!({
        "flags": flags,
        "group_type_mapping": {},
        "cohorts": {"99": {"type": "OR", "values": [{"type": "AND", "values": [
            {"key": "country", "value": ["FR", "BE"], "operator": "exact", "type": "person"},
            {"key": "age", "value": 30, "operator": "gt", "type": "person"}]}]}}
    })
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let mut group = c.benchmark_group("request_flags");
    for total in [11, 500] {
        let (mock, posthog) = rt.block_on(async {
            let mock = MockPostHog::start().await.expect("mock");
            mock.set_default(
                "/flags/definitions",
                MockResponse::json(200, definitions(total)),
            );
            let posthog = PostHog::builder("phc_bench")
                .host(mock.url())
                .personal_api_key("phx_bench")
                .poll_interval(Duration::from_secs(3600))
                .max_queue_size(1_000_000)
                .capture_stack(tower::service_fn(|_batch: EncodedBatch| async {
                    Ok::<_, Infallible>(())
                }))
                .build()
                .expect("client");
            assert!(
                posthog
                    .wait_for_flag_definitions(Duration::from_secs(10))
                    .await
            );
            assert_eq!(posthog.local_flags().map(|f| f.keys().count()), Some(total));
            (mock, posthog)
        });
        let read = || async {
            let flags = RequestFlags::new(posthog.clone(), Some("user-4242".to_owned()));
            flags.get_flag(black_box("multivariate")).await
        };
        // Decided locally, without /flags.
        assert!(rt.block_on(read()).is_some());
        assert!(mock.requests_to("/flags").is_empty());
        group.bench_function(format!("one_read_{total}"), |b| {
            b.iter(|| black_box(rt.block_on(read())))
        });
        assert!(
            mock.requests_to("/flags").is_empty(),
            "every read was local"
        );
        rt.block_on(async {
            posthog.shutdown(Duration::from_secs(5)).await;
            mock.shutdown().await;
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
