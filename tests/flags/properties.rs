//! Property tests for local flag evaluation: invariants that hold for every distinct id,
//! percentage and property value, checked through the public `LocalFlags`.

use posthog_tower::flags::{FlagError, FlagValue, FlagsRequest, LocalFlags};
use proptest::prelude::*;
use serde_json::{json, Value};

/// Definitions with one flag `key` and the given `filters`.
fn flags(key: &str, filters: Value) -> LocalFlags {
    let body = json!({
        "flags": [{"id": 1, "key": key, "active": true, "filters": filters}],
        "group_type_mapping": {},
        "cohorts": {}
    });
    LocalFlags::from_definitions(body.to_string().as_bytes()).expect("valid definitions")
}

/// A flag rolled out to `percentage` of everyone, without property filters.
fn rollout(key: &str, percentage: f64) -> LocalFlags {
    flags(
        key,
        json!({"groups": [{"properties": [], "rollout_percentage": percentage}]}),
    )
}

/// A flag on for everyone whose person property `prop` passes `operator value`.
fn filtered(operator: &str, value: Value) -> LocalFlags {
    flags(
        "filtered",
        json!({"groups": [{
            "properties": [{"key": "prop", "value": value, "operator": operator, "type": "person"}],
            "rollout_percentage": 100
        }]}),
    )
}

/// Whether the person with `prop = value` passes `operator filter` (must be decidable).
fn passes(operator: &str, filter: &Value, value: &Value) -> bool {
    let request = FlagsRequest::new("user").person_property("prop", value);
    match filtered(operator, filter.clone()).evaluate("filtered", &request) {
        Ok(FlagValue::Bool(b)) => b,
        other => panic!("{operator} {filter} on {value}: {other:?}"),
    }
}

fn is_on(flags: &LocalFlags, key: &str, distinct_id: &str) -> bool {
    let value = flags
        .evaluate(key, &FlagsRequest::new(distinct_id))
        .expect("decidable");
    value.is_enabled()
}

/// A flag key or distinct id: printable text, sometimes empty, sometimes non-ASCII.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z0-9_-]{0,24}",
        any::<String>(),
        (0u32..1_000_000).prop_map(|i| format!("distinct_id_{i}")),
    ]
}

/// Variant weights (integer percentages) summing to 100, zeros included.
fn weights() -> impl Strategy<Value = Vec<u32>> {
    prop::collection::vec(0u32..=100, 1..6).prop_map(|cuts| {
        let mut cuts: Vec<u32> = cuts.into_iter().collect();
        cuts.sort_unstable();
        let mut weights = Vec::with_capacity(cuts.len() + 1);
        let mut previous = 0;
        for cut in cuts {
            weights.push(cut - previous);
            previous = cut;
        }
        weights.push(100 - previous);
        weights
    })
}

fn multivariate(weights: &[u32]) -> LocalFlags {
    let variants: Vec<Value> = weights
        .iter()
        .enumerate()
        .map(|(i, w)| json!({"key": format!("v{i}"), "rollout_percentage": w}))
        .collect();
    flags(
        "split",
        json!({
            "groups": [{"properties": [], "rollout_percentage": 100}],
            "multivariate": {"variants": variants}
        }),
    )
}

fn variant_of(flags: &LocalFlags, distinct_id: &str) -> usize {
    match flags.evaluate("split", &FlagsRequest::new(distinct_id)) {
        Ok(FlagValue::Variant(v)) => v[1..].parse().expect("a configured variant"),
        other => panic!("{distinct_id:?} got {other:?}, expected a variant"),
    }
}

/// A finite number as JSON: integers and floats, small and large.
fn number() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<i64>().prop_map(Value::from),
        (-1e6f64..1e6).prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        (-5i64..5).prop_map(Value::from),
    ]
}

proptest! {
    /// Raising a rollout percentage never turns a user off.
    #[test]
    fn raising_the_rollout_keeps_users_on(
        key in text(),
        distinct_id in text(),
        a in 0.0f64..=100.0,
        b in 0.0f64..=100.0,
    ) {
        let (low, high) = if a <= b { (a, b) } else { (b, a) };
        let on_low = is_on(&rollout(&key, low), &key, &distinct_id);
        let on_high = is_on(&rollout(&key, high), &key, &distinct_id);
        prop_assert!(!on_low || on_high, "on at {low}% but off at {high}%");
    }

    /// The same, over whole percentages: the users on at p% are a subset of those at p+1%.
    #[test]
    fn whole_percentages_nest(key in "[a-z-]{1,12}", distinct_id in text(), p in 0u32..100) {
        let on_p = is_on(&rollout(&key, f64::from(p)), &key, &distinct_id);
        let on_next = is_on(&rollout(&key, f64::from(p + 1)), &key, &distinct_id);
        prop_assert!(!on_p || on_next);
    }

    /// 0 % is off and 100 % is on, for everyone (no property filters).
    #[test]
    fn zero_is_off_and_hundred_is_on(key in text(), distinct_id in text()) {
        prop_assert!(!is_on(&rollout(&key, 0.0), &key, &distinct_id));
        prop_assert!(is_on(&rollout(&key, 100.0), &key, &distinct_id));
    }

    /// Every user gets exactly one variant of a full split, never one weighted 0 %, and
    /// always the same one.
    #[test]
    fn a_split_gives_every_user_one_stable_variant(weights in weights(), distinct_id in text()) {
        let split = multivariate(&weights);
        let variant = variant_of(&split, &distinct_id);
        prop_assert!(variant < weights.len());
        prop_assert!(weights[variant] > 0, "got v{variant} weighted 0 % in {weights:?}");
        prop_assert_eq!(variant_of(&split, &distinct_id), variant);
        prop_assert_eq!(variant_of(&split.clone(), &distinct_id), variant);
    }

    /// Evaluation is deterministic: the same input gives the same output, from the same
    /// definitions, a clone, or the definitions compiled again.
    #[test]
    fn evaluation_is_deterministic(
        distinct_id in text(),
        plan in "[a-z]{0,6}",
        age in number(),
        percentage in 0.0f64..=100.0,
    ) {
        let body = json!({
            "flags": [
                {"id": 1, "key": "mixed", "active": true, "filters": {
                    "groups": [
                        {"properties": [{"key": "plan", "value": ["pro", "team"], "operator": "exact", "type": "person"}],
                         "rollout_percentage": percentage},
                        {"properties": [{"key": "age", "value": 30, "operator": "gte", "type": "person"}],
                         "rollout_percentage": 100, "variant": "b"}
                    ],
                    "multivariate": {"variants": [{"key": "a", "rollout_percentage": 50}, {"key": "b", "rollout_percentage": 50}]}
                }}
            ],
            "group_type_mapping": {},
            "cohorts": {}
        })
        .to_string();
        let request = FlagsRequest::new(distinct_id)
            .person_property("plan", plan)
            .person_property("age", age);
        let first = LocalFlags::from_definitions(body.as_bytes()).unwrap();
        let again = LocalFlags::from_definitions(body.as_bytes()).unwrap();
        let value = first.evaluate("mixed", &request);
        prop_assert!(value.is_ok(), "{value:?}");
        prop_assert_eq!(&first.evaluate("mixed", &request), &value);
        prop_assert_eq!(&first.clone().evaluate("mixed", &request), &value);
        prop_assert_eq!(&again.evaluate("mixed", &request), &value);
    }

    /// `exact` and `is_not` are complements for a present string value, against a string or a
    /// list of strings.
    #[test]
    fn exact_and_is_not_are_complements(
        value in "[a-zA-Z0-9 ]{0,8}",
        filter in prop_oneof![
            "[a-zA-Z0-9 ]{0,8}".prop_map(Value::from),
            prop::collection::vec("[a-zA-Z]{0,4}", 1..4).prop_map(Value::from),
        ],
    ) {
        let value = Value::from(value);
        prop_assert_ne!(passes("exact", &filter, &value), passes("is_not", &filter, &value));
        // `exact` ignores case (a `"true"`/`"false"` filter compares truthiness instead).
        let boolean_like = |f: &str| matches!(f.to_lowercase().as_str(), "true" | "false");
        if let Some(f) = filter.as_str().filter(|f| !boolean_like(f)) {
            let same = f.to_lowercase() == value.as_str().unwrap().to_lowercase();
            prop_assert_eq!(passes("exact", &filter, &value), same);
        }
    }

    /// `gt` and `lte` are complements for numbers, as are `lt` and `gte`; a number equals
    /// itself.
    #[test]
    fn numeric_operators_are_complements(value in number(), filter in number()) {
        prop_assert_ne!(passes("gt", &filter, &value), passes("lte", &filter, &value));
        prop_assert_ne!(passes("lt", &filter, &value), passes("gte", &filter, &value));
        let (v, f) = (value.as_f64().unwrap(), filter.as_f64().unwrap());
        prop_assert_eq!(passes("gt", &filter, &value), v > f);
        prop_assert_eq!(passes("lt", &filter, &value), v < f);
        prop_assert!(passes("gte", &value, &value) && passes("lte", &value, &value));
        prop_assert!(!passes("gt", &value, &value) && !passes("lt", &value, &value));
    }

    /// `icontains` / `not_icontains` (and the other text pairs) are complements for strings.
    #[test]
    fn text_operators_are_complements(value in "[a-zA-Z0-9]{0,10}", needle in "[a-zA-Z0-9]{0,3}") {
        let (v, f) = (Value::from(value.clone()), Value::from(needle.clone()));
        for (op, negated) in [
            ("icontains", "not_icontains"),
            ("starts_with", "not_starts_with"),
            ("ends_with", "not_ends_with"),
        ] {
            prop_assert_ne!(passes(op, &f, &v), passes(negated, &f, &v), "{}", op);
        }
        let contains = value.to_ascii_lowercase().contains(&needle.to_ascii_lowercase());
        prop_assert_eq!(passes("icontains", &f, &v), contains);
    }

    /// A present property is set, whatever its value; a missing one leaves every operator
    /// undecided locally.
    #[test]
    fn set_and_missing_properties(value in prop_oneof![number(), "[a-z]{0,5}".prop_map(Value::from), Just(Value::Null)]) {
        prop_assert!(passes("is_set", &json!(true), &value));
        prop_assert!(!passes("is_not_set", &json!(true), &value));
        for op in ["exact", "is_not", "gt", "lte", "icontains", "is_set", "is_not_set"] {
            let result = filtered(op, json!("1")).evaluate("filtered", &FlagsRequest::new("u"));
            prop_assert_eq!(result, Err(FlagError::Inconclusive), "{}", op);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(12))]

    /// Over many users, each variant's share is within 3.5 points of its configured
    /// percentage (5 standard deviations at 5000 users).
    #[test]
    fn a_split_matches_its_percentages(weights in weights()) {
        const USERS: usize = 5000;
        let split = multivariate(&weights);
        let mut counts = vec![0usize; weights.len()];
        for i in 0..USERS {
            counts[variant_of(&split, &format!("user-{i}"))] += 1;
        }
        prop_assert_eq!(counts.iter().sum::<usize>(), USERS);
        for (count, weight) in counts.iter().zip(&weights) {
            let share = *count as f64 * 100.0 / USERS as f64;
            prop_assert!(
                (share - f64::from(*weight)).abs() <= 3.5,
                "{share:.2}% for a {weight}% variant: {counts:?} from {weights:?}"
            );
        }
    }
}
