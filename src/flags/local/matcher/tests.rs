use serde_json::json;

use super::*;

fn compile(defs: Value) -> CompiledFlags {
    CompiledFlags::from_json(defs.to_string().as_bytes()).unwrap()
}

/// A flag with the given filters, active.
fn flag(key: &str, filters: Value) -> Value {
    json!({"id": 1, "key": key, "active": true, "filters": filters})
}

fn defs(flags: Vec<Value>) -> CompiledFlags {
    compile(json!({"flags": flags, "group_type_mapping": {"0": "company", "1": "team"}}))
}

/// An `exact` person property filter.
fn prop(key: &str, value: &str) -> Value {
    json!({"key": key, "value": value, "operator": "exact", "type": "person"})
}

fn on() -> Result<FlagValue, Inconclusive> {
    Ok(FlagValue::Bool(true))
}

fn off() -> Result<FlagValue, Inconclusive> {
    Ok(FlagValue::Bool(false))
}

fn variant(name: &str) -> Result<FlagValue, Inconclusive> {
    Ok(FlagValue::Variant(name.to_owned()))
}

#[derive(Default)]
struct Caller {
    distinct_id: String,
    device_id: Option<String>,
    person: Map<String, Value>,
    groups: BTreeMap<String, String>,
    group_properties: BTreeMap<String, Map<String, Value>>,
}

impl Caller {
    fn new(distinct_id: &str) -> Caller {
        Caller {
            distinct_id: distinct_id.to_owned(),
            ..Caller::default()
        }
    }

    fn person(mut self, props: Value) -> Caller {
        self.person = props.as_object().unwrap().clone();
        self
    }

    fn device(mut self, device_id: &str) -> Caller {
        self.device_id = Some(device_id.to_owned());
        self
    }

    fn group(mut self, group_type: &str, key: &str) -> Caller {
        self.groups.insert(group_type.to_owned(), key.to_owned());
        self
    }

    fn group_props(mut self, group_type: &str, props: Value) -> Caller {
        self.group_properties
            .insert(group_type.to_owned(), props.as_object().unwrap().clone());
        self
    }

    fn eval<'f>(
        &self,
        flags: &'f CompiledFlags,
        key: &str,
    ) -> Result<LocalMatch<'f>, Inconclusive> {
        let ctx = EvalContext {
            distinct_id: &self.distinct_id,
            device_id: self.device_id.as_deref(),
            person_properties: &self.person,
            groups: &self.groups,
            group_properties: &self.group_properties,
        };
        flags.evaluate(key, &ctx)
    }

    fn value(&self, flags: &CompiledFlags, key: &str) -> Result<FlagValue, Inconclusive> {
        self.eval(flags, key).map(|m| m.value)
    }
}

/// The first of `candidates` whose rollout hash for `key` is on the given side of `pct`.
fn id_with(key: &str, prefix: &str, pct: f64, inside: bool) -> String {
    (0..10_000)
        .map(|i| format!("{prefix}{i}"))
        .find(|id| (hash(key, id, "") <= pct / 100.0) == inside)
        .unwrap()
}

// --- consistency with posthog-python -------------------------------------------------

fn consistency_table(json_text: &str) -> (CompiledFlags, Vec<Value>) {
    let data: Value = serde_json::from_str(json_text).unwrap();
    let flags = compile(data["definitions"].clone());
    let results = data["results"].as_array().unwrap().clone();
    assert_eq!(results.len(), 1000);
    (flags, results)
}

#[test]
fn simple_flag_consistency() {
    let (flags, results) = consistency_table(include_str!(
        "../../../../tests/data/local_eval/simple_flag_consistency.json"
    ));
    for (i, expected) in results.iter().enumerate() {
        let got = Caller::new(&format!("distinct_id_{i}")).value(&flags, "simple-flag");
        assert_eq!(
            got,
            Ok(FlagValue::Bool(expected.as_bool().unwrap())),
            "id {i}"
        );
    }
}

#[test]
fn multivariate_flag_consistency() {
    let (flags, results) = consistency_table(include_str!(
        "../../../../tests/data/local_eval/multivariate_flag_consistency.json"
    ));
    for (i, expected) in results.iter().enumerate() {
        let got = Caller::new(&format!("distinct_id_{i}")).value(&flags, "multivariate-flag");
        let expected = match expected {
            Value::Bool(b) => FlagValue::Bool(*b),
            Value::String(s) => FlagValue::Variant(s.clone()),
            other => panic!("unexpected {other}"),
        };
        assert_eq!(got, Ok(expected), "id {i}");
    }
}

// --- flag level --------------------------------------------------------------------

#[test]
fn unknown_flag_is_inconclusive() {
    let flags = defs(vec![]);
    assert!(Caller::new("u").value(&flags, "nope").is_err());
}

#[test]
fn inactive_is_false_before_experience_continuity() {
    let flags = compile(json!({"flags": [
        {"key": "off", "active": false, "ensure_experience_continuity": true,
         "filters": {"groups": [{"rollout_percentage": 100}]}},
        {"key": "continuity", "active": true, "ensure_experience_continuity": true,
         "filters": {"groups": [{"rollout_percentage": 100}]}},
        {"key": "no-active-field", "filters": {"groups": [{"rollout_percentage": 100}]}},
        {"key": "truthy-active", "active": 1, "filters": {"groups": [{"rollout_percentage": 100}]}}
    ]}));
    let u = Caller::new("u");
    assert_eq!(u.value(&flags, "off"), off());
    assert!(u.value(&flags, "continuity").is_err());
    assert_eq!(u.value(&flags, "no-active-field"), off());
    assert_eq!(u.value(&flags, "truthy-active"), on());
}

#[test]
fn match_reports_id_and_has_experiment() {
    let flags = compile(json!({"flags": [
        {"id": 42, "key": "f", "active": true, "has_experiment": false,
         "filters": {"groups": [{"rollout_percentage": 100}]}},
        {"id": "x", "key": "g", "active": true, "has_experiment": "yes", "filters": {}}
    ]}));
    let m = Caller::new("u").eval(&flags, "f").unwrap();
    assert_eq!(m.id, Some(42));
    assert_eq!(m.has_experiment, Some(false));
    let m = Caller::new("u").eval(&flags, "g").unwrap();
    assert_eq!((m.id, m.has_experiment), (None, None));
    // No condition at all: false.
    assert_eq!(m.value, FlagValue::Bool(false));
}

#[test]
fn distinct_id_is_a_person_property_unless_given() {
    let flags = defs(vec![flag(
        "f",
        json!({"groups": [{"properties": [prop("distinct_id", "alice")]}]}),
    )]);
    assert_eq!(Caller::new("alice").value(&flags, "f"), on());
    assert_eq!(Caller::new("bob").value(&flags, "f"), off());
    let given = Caller::new("bob").person(json!({"distinct_id": "alice"}));
    assert_eq!(given.value(&flags, "f"), on());
}

#[test]
fn group_key_is_a_group_property_unless_given() {
    let flags = defs(vec![flag(
        "g",
        json!({"aggregation_group_type_index": 0,
               "groups": [{"properties": [prop("$group_key", "acme")]}]}),
    )]);
    // Passed without properties: the group still has `$group_key`.
    assert_eq!(
        Caller::new("u").group("company", "acme").value(&flags, "g"),
        on()
    );
    assert_eq!(
        Caller::new("u")
            .group("company", "other")
            .value(&flags, "g"),
        off()
    );
    let given = Caller::new("u")
        .group("company", "other")
        .group_props("company", json!({"$group_key": "acme"}));
    assert_eq!(given.value(&flags, "g"), on());
}

#[test]
fn group_flags() {
    let flags = compile(json!({
        "flags": [
            flag("company", json!({"aggregation_group_type_index": 0,
                "groups": [{"properties": [prop("plan", "pro")], "rollout_percentage": 100}]})),
            flag("unknown-index", json!({"aggregation_group_type_index": 9,
                "groups": [{"rollout_percentage": 100}]})),
            flag("odd-name", json!({"aggregation_group_type_index": 2,
                "groups": [{"rollout_percentage": 100}]}))
        ],
        "group_type_mapping": {"0": "company", "2": 5}
    }));
    let pro = json!({"plan": "pro"});
    // The group was not passed: off, no server call.
    assert_eq!(Caller::new("u").value(&flags, "company"), off());
    // Passed but without the property: undecided.
    assert!(Caller::new("u")
        .group("company", "acme")
        .value(&flags, "company")
        .is_err());
    let acme = Caller::new("u")
        .group("company", "acme")
        .group_props("company", pro.clone());
    assert_eq!(acme.value(&flags, "company"), on());
    // Person properties do not count for a group flag.
    let person_only = Caller::new("u").person(pro).group("company", "acme");
    assert!(person_only.value(&flags, "company").is_err());
    // Group properties of a group that was not passed are ignored.
    let not_passed = Caller::new("u").group_props("company", json!({"plan": "pro"}));
    assert_eq!(not_passed.value(&flags, "company"), off());
    assert!(acme.value(&flags, "unknown-index").is_err());
    assert_eq!(acme.value(&flags, "odd-name"), off());
}

#[test]
fn group_flags_bucket_by_group_key() {
    let key = "bucketed";
    let flags = defs(vec![flag(
        key,
        json!({"aggregation_group_type_index": 0, "groups": [{"rollout_percentage": 50}]}),
    )]);
    let inside = id_with(key, "g", 50.0, true);
    let outside = id_with(key, "g", 50.0, false);
    // The distinct id is irrelevant; the group key decides.
    for person in [&inside, &outside] {
        assert_eq!(
            Caller::new(person)
                .group("company", &inside)
                .value(&flags, key),
            on()
        );
        assert_eq!(
            Caller::new(person)
                .group("company", &outside)
                .value(&flags, key),
            off()
        );
    }
}

#[test]
fn mixed_targeting_per_condition() {
    let key = "mixed";
    let flags = defs(vec![flag(
        key,
        json!({"groups": [
            {"aggregation_group_type_index": 0,
             "properties": [{"key": "plan", "value": "pro", "operator": "exact", "type": "group", "group_type_index": 0}],
             "rollout_percentage": 50},
            {"properties": [prop("email", "a@b.c")], "rollout_percentage": 100}
        ]}),
    )]);
    let inside = id_with(key, "g", 50.0, true);
    let outside = id_with(key, "g", 50.0, false);
    let person = json!({"email": "x@y.z"});
    // Group condition buckets by the group key.
    let c = Caller::new(&outside)
        .person(person.clone())
        .group("company", &inside)
        .group_props("company", json!({"plan": "pro"}));
    assert_eq!(c.value(&flags, key), on());
    let c = Caller::new(&inside)
        .person(person.clone())
        .group("company", &outside)
        .group_props("company", json!({"plan": "pro"}));
    assert_eq!(c.value(&flags, key), off());
    // Group not passed: that condition is skipped; the person condition decides.
    let c = Caller::new("u").person(json!({"email": "a@b.c"}));
    assert_eq!(c.value(&flags, key), on());
    let c = Caller::new("u").person(person);
    assert_eq!(c.value(&flags, key), off());
    // Person properties do not reach the group condition.
    let c = Caller::new("u")
        .person(json!({"plan": "pro", "email": "x"}))
        .group("company", &inside);
    assert!(c.value(&flags, key).is_err());
}

#[test]
fn mixed_targeting_group_condition_on_group_flag_and_unknown_types() {
    let flags = compile(json!({
        "flags": [flag("g", json!({"aggregation_group_type_index": 0, "groups": [
            {"aggregation_group_type_index": 1, "properties": [prop("size", "big")]},
            {"aggregation_group_type_index": 7, "rollout_percentage": 100},
            {"aggregation_group_type_index": null, "properties": [prop("plan", "pro")]}
        ]}))],
        "group_type_mapping": {"0": "company", "1": "team"}
    }));
    let c = Caller::new("u")
        .group("company", "acme")
        .group_props("company", json!({"plan": "free", "size": "small"}))
        .group("team", "t1")
        .group_props("team", json!({"size": "big"}));
    assert_eq!(c.value(&flags, "g"), on());
    let c = Caller::new("u")
        .group("company", "acme")
        .group_props("company", json!({"plan": "pro"}));
    // Team not passed: skipped; unknown type 7: skipped; `null` uses the flag's group.
    assert_eq!(c.value(&flags, "g"), on());
    let c = Caller::new("u")
        .group("company", "acme")
        .group_props("company", json!({"plan": "free"}));
    assert_eq!(c.value(&flags, "g"), off());
}

// --- holdouts, enrollment, device id --------------------------------------------------

fn holdout_flag(exclusion: Value, rollout: u32) -> CompiledFlags {
    defs(vec![flag(
        "experiment-flag",
        json!({
            "multivariate": {"variants": [
                {"key": "control", "rollout_percentage": 50},
                {"key": "test", "rollout_percentage": 50}
            ]},
            "groups": [{"properties": [], "rollout_percentage": rollout}],
            "holdout": {"id": 727, "exclusion_percentage": exclusion},
            "payloads": {"holdout-727": "{\"held\": true}", "control": "1"}
        }),
    )])
}

#[test]
fn holdout_at_100_percent_holds_out_everyone() {
    let flags = holdout_flag(json!(100), 100);
    for i in 1..=20 {
        let m = Caller::new(&format!("user_{i}"))
            .eval(&flags, "experiment-flag")
            .unwrap();
        assert_eq!(m.value, FlagValue::Variant("holdout-727".into()));
        assert_eq!(m.payload, Some("{\"held\": true}"));
    }
}

#[test]
fn holdout_at_0_percent_holds_out_nobody() {
    let flags = holdout_flag(json!(0), 100);
    for i in 1..=20 {
        let got = Caller::new(&format!("user_{i}")).value(&flags, "experiment-flag");
        assert!(
            got == variant("control") || got == variant("test"),
            "{got:?}"
        );
    }
}

#[test]
fn holdout_comes_before_release_conditions() {
    let flags = holdout_flag(json!(100), 0);
    assert_eq!(
        Caller::new("user_1").value(&flags, "experiment-flag"),
        variant("holdout-727")
    );
}

#[test]
fn holdout_membership_matches_server_bucketing() {
    let flags = holdout_flag(json!(20), 100);
    let mut held = 0;
    for i in 1..=200 {
        let id = format!("user_{i}");
        let expected = holdout_hash(&id) <= 0.2;
        let got = Caller::new(&id).value(&flags, "experiment-flag").unwrap();
        assert_eq!(
            got == FlagValue::Variant("holdout-727".into()),
            expected,
            "{id}"
        );
        held += usize::from(expected);
    }
    assert!(held > 10 && held < 80, "{held}");
}

#[test]
fn holdout_clamps_and_parses_like_python() {
    let flags = holdout_flag(json!("150"), 100);
    assert_eq!(
        Caller::new("user_1").value(&flags, "experiment-flag"),
        variant("holdout-727")
    );
    let flags = holdout_flag(json!("not a number"), 100);
    assert!(Caller::new("user_1")
        .value(&flags, "experiment-flag")
        .is_err());
}

fn enrollment_flag(group: bool) -> CompiledFlags {
    defs(vec![flag(
        "beta-feature",
        json!({
            "groups": [{"properties": [], "rollout_percentage": 0}],
            "feature_enrollment": true,
            "aggregation_group_type_index": if group { json!(0) } else { json!(null) }
        }),
    )])
}

#[test]
fn feature_enrollment() {
    let flags = enrollment_flag(false);
    let key = "$feature_enrollment/beta-feature";
    let with = |v: Value| {
        Caller::new("u")
            .person(json!({ key: v }))
            .value(&flags, "beta-feature")
    };
    assert!(Caller::new("u").value(&flags, "beta-feature").is_err());
    assert_eq!(with(json!("true")), on());
    assert_eq!(with(json!(true)), on());
    assert_eq!(with(json!(false)), off());
    assert_eq!(with(json!(1)), off());
    assert_eq!(with(json!("True")), off());
    let flags = enrollment_flag(true);
    let c = Caller::new("u")
        .person(json!({ key: false }))
        .group("company", "acme")
        .group_props("company", json!({ key: "true" }));
    assert!(c.value(&flags, "beta-feature").is_err());
    // Only literal `true` turns enrollment on.
    let flags = defs(vec![flag(
        "f",
        json!({"feature_enrollment": "true", "groups": [{"rollout_percentage": 100}]}),
    )]);
    assert_eq!(Caller::new("u").value(&flags, "f"), on());
}

#[test]
fn device_id_bucketing() {
    let key = "device-flag";
    let top = compile(json!({"flags": [{
        "key": key, "active": true, "bucketing_identifier": "device_id",
        "filters": {"groups": [{"rollout_percentage": 50}]}
    }]}));
    let nested = defs(vec![flag(
        key,
        json!({"bucketing_identifier": "device_id", "groups": [{"rollout_percentage": 50}]}),
    )]);
    let inside = id_with(key, "d", 50.0, true);
    let outside = id_with(key, "d", 50.0, false);
    for flags in [&top, &nested] {
        assert!(Caller::new(&inside).value(flags, key).is_err());
        assert!(Caller::new(&inside).device("").value(flags, key).is_err());
        assert_eq!(
            Caller::new(&outside).device(&inside).value(flags, key),
            on()
        );
        assert_eq!(
            Caller::new(&inside).device(&outside).value(flags, key),
            off()
        );
    }
    // A group flag buckets by its group key whatever the identifier says.
    let group = defs(vec![flag(
        key,
        json!({"bucketing_identifier": "device_id", "aggregation_group_type_index": 0,
               "groups": [{"rollout_percentage": 50}]}),
    )]);
    assert_eq!(
        Caller::new("u")
            .group("company", &inside)
            .value(&group, key),
        on()
    );
}

// --- conditions ----------------------------------------------------------------------

fn early_exit_flag(early_exit: Option<bool>) -> CompiledFlags {
    let mut filters = json!({"groups": [
        {"properties": [prop("region", "USA")], "rollout_percentage": 0},
        {"properties": [prop("region", "USA")], "rollout_percentage": 100}
    ]});
    if let Some(e) = early_exit {
        filters["early_exit"] = json!(e);
    }
    defs(vec![flag("early-exit-flag", filters)])
}

#[test]
fn early_exit() {
    let usa = Caller::new("some-distinct-id").person(json!({"region": "USA"}));
    assert_eq!(
        usa.value(&early_exit_flag(Some(true)), "early-exit-flag"),
        off()
    );
    assert_eq!(usa.value(&early_exit_flag(None), "early-exit-flag"), on());
    assert_eq!(
        usa.value(&early_exit_flag(Some(false)), "early-exit-flag"),
        on()
    );
    // Rollout-only groups exit early too.
    let flags = defs(vec![flag(
        "f",
        json!({"early_exit": true, "groups": [{"rollout_percentage": 0}, {"rollout_percentage": 100}]}),
    )]);
    assert_eq!(Caller::new("u").value(&flags, "f"), off());
    // Filters that do not match are no exit.
    let flags = defs(vec![flag(
        "f",
        json!({"early_exit": true, "groups": [
            {"properties": [prop("region", "EU")], "rollout_percentage": 0},
            {"rollout_percentage": 100}
        ]}),
    )]);
    assert_eq!(usa.value(&flags, "f"), on());
    // After an undecided condition, the exit keeps the flag undecided.
    let flags = defs(vec![flag(
        "f",
        json!({"early_exit": true, "groups": [
            {"properties": [prop("missing", "x")]},
            {"rollout_percentage": 0},
            {"rollout_percentage": 100}
        ]}),
    )]);
    assert!(usa.value(&flags, "f").is_err());
}

#[test]
fn rollout_boundaries() {
    let flags = defs(vec![
        flag("zero", json!({"groups": [{"rollout_percentage": 0}]})),
        flag("all", json!({"groups": [{"rollout_percentage": 100}]})),
        flag("unbounded", json!({"groups": [{"properties": []}]})),
        flag("fraction", json!({"groups": [{"rollout_percentage": 0.5}]})),
        flag("bad", json!({"groups": [{"rollout_percentage": "50"}]})),
    ]);
    for i in 0..50 {
        let c = Caller::new(&format!("id-{i}"));
        assert_eq!(c.value(&flags, "zero"), off());
        assert_eq!(c.value(&flags, "all"), on());
        assert_eq!(c.value(&flags, "unbounded"), on());
        assert!(c.value(&flags, "bad").is_err());
    }
    let inside = id_with("fraction", "id-", 0.5, true);
    assert_eq!(Caller::new(&inside).value(&flags, "fraction"), on());
    let outside = id_with("fraction", "id-", 0.5, false);
    assert_eq!(Caller::new(&outside).value(&flags, "fraction"), off());
}

#[test]
fn conditions_in_definition_order() {
    let flags = defs(vec![flag(
        "ordered",
        json!({
            "multivariate": {"variants": [
                {"key": "first", "rollout_percentage": 50},
                {"key": "second", "rollout_percentage": 50}
            ]},
            "groups": [
                {"properties": [prop("email", "a@b.c")], "rollout_percentage": 100, "variant": "first"},
                {"properties": [], "rollout_percentage": 100, "variant": "second"}
            ]
        }),
    )]);
    let c = Caller::new("u").person(json!({"email": "a@b.c"}));
    assert_eq!(c.value(&flags, "ordered"), variant("first"));
    let c = Caller::new("u").person(json!({"email": "x@y.z"}));
    assert_eq!(c.value(&flags, "ordered"), variant("second"));
    // A condition without an override that comes first still wins.
    let flags = defs(vec![flag(
        "ordered",
        json!({
            "multivariate": {"variants": [
                {"key": "first", "rollout_percentage": 100},
                {"key": "second", "rollout_percentage": 0}
            ]},
            "groups": [
                {"properties": [], "rollout_percentage": 100},
                {"properties": [], "rollout_percentage": 100, "variant": "second"}
            ]
        }),
    )]);
    assert_eq!(Caller::new("u").value(&flags, "ordered"), variant("first"));
}

#[test]
fn variant_overrides_valid_and_invalid() {
    let flags = defs(vec![
        flag(
            "valid",
            json!({
                "multivariate": {"variants": [
                    {"key": "a", "rollout_percentage": 100},
                    {"key": "b", "rollout_percentage": 0}
                ]},
                "groups": [{"rollout_percentage": 100, "variant": "b"}]
            }),
        ),
        flag(
            "invalid",
            json!({
                "multivariate": {"variants": [
                    {"key": "a", "rollout_percentage": 100},
                    {"key": "b", "rollout_percentage": 0}
                ]},
                "groups": [{"rollout_percentage": 100, "variant": "B"}]
            }),
        ),
        flag(
            "no-variants",
            json!({"groups": [{"rollout_percentage": 100, "variant": "a"}]}),
        ),
    ]);
    let c = Caller::new("u");
    assert_eq!(c.value(&flags, "valid"), variant("b"));
    assert_eq!(c.value(&flags, "invalid"), variant("a"));
    assert_eq!(c.value(&flags, "no-variants"), on());
}

#[test]
fn splits_under_100_can_leave_no_variant() {
    let key = "partial";
    let flags = defs(vec![flag(
        key,
        json!({
            "multivariate": {"variants": [
                {"key": "a", "rollout_percentage": 10},
                {"key": "", "rollout_percentage": 10}
            ]},
            "groups": [{"rollout_percentage": 100}]
        }),
    )]);
    let (mut saw_a, mut saw_true) = (false, false);
    for i in 0..200 {
        let id = format!("u{i}");
        let h = hash(key, &id, VARIANT_SALT);
        let got = Caller::new(&id).value(&flags, key);
        if h < 0.1 {
            assert_eq!(got, variant("a"));
            saw_a = true;
        } else {
            // The empty-named variant and no variant at all both give `true`.
            assert_eq!(got, on());
            saw_true = true;
        }
    }
    assert!(saw_a && saw_true);
}

#[test]
fn undecided_filters_within_a_condition() {
    let flags = defs(vec![
        flag(
            "later-mismatch",
            json!({"groups": [{"properties": [prop("missing", "x"), prop("plan", "pro")]}]}),
        ),
        flag(
            "later-condition",
            json!({"groups": [
                {"properties": [prop("missing", "x")]},
                {"properties": [prop("plan", "free")]}
            ]}),
        ),
    ]);
    let free = Caller::new("u").person(json!({"plan": "free"}));
    let pro = Caller::new("u").person(json!({"plan": "pro"}));
    assert_eq!(free.value(&flags, "later-mismatch"), off());
    assert!(pro.value(&flags, "later-mismatch").is_err());
    assert_eq!(free.value(&flags, "later-condition"), on());
    assert!(pro.value(&flags, "later-condition").is_err());
}

#[test]
fn malformed_filter_entries() {
    let flags = defs(vec![
        flag(
            "first",
            json!({"groups": [{"properties": [7]}, {"rollout_percentage": 100}]}),
        ),
        flag(
            "after-undecided",
            json!({"groups": [
                {"properties": [prop("missing", "x"), 7]},
                {"rollout_percentage": 100}
            ]}),
        ),
        flag(
            "properties-object",
            json!({"groups": [{"properties": {"a": 1}}, {"rollout_percentage": 100}]}),
        ),
        flag(
            "condition-not-object",
            json!({"groups": [{"rollout_percentage": 0}, 5, {"rollout_percentage": 100}]}),
        ),
    ]);
    let c = Caller::new("u");
    // A malformed filter with nothing undecided before it sends the flag to the server.
    assert!(c.value(&flags, "first").is_err());
    // After an undecided filter it only leaves its condition undecided.
    assert_eq!(c.value(&flags, "after-undecided"), on());
    assert!(c.value(&flags, "properties-object").is_err());
    assert!(c.value(&flags, "condition-not-object").is_err());
}

// --- cohorts ------------------------------------------------------------------------

fn cohort_flags(cohorts: Value, conditions: Value) -> CompiledFlags {
    compile(json!({
        "flags": [flag("c", json!({"groups": conditions}))],
        "cohorts": cohorts
    }))
}

fn cohort(id: Value) -> Value {
    json!({"key": "id", "value": id, "type": "cohort"})
}

#[test]
fn cohort_and_or() {
    let cohorts = json!({
        "1": {"type": "AND", "values": [prop("plan", "pro"), prop("region", "EU")]},
        "2": {"type": "OR", "values": [prop("plan", "pro"), prop("region", "EU")]}
    });
    let flags = |id: u32| {
        cohort_flags(
            cohorts.clone(),
            json!([{"properties": [cohort(json!(id))]}]),
        )
    };
    let (and, or) = (flags(1), flags(2));
    let who = |props: Value| Caller::new("u").person(props);
    assert_eq!(
        who(json!({"plan": "pro", "region": "EU"})).value(&and, "c"),
        on()
    );
    assert_eq!(
        who(json!({"plan": "pro", "region": "US"})).value(&and, "c"),
        off()
    );
    assert_eq!(
        who(json!({"plan": "free", "region": "EU"})).value(&or, "c"),
        on()
    );
    assert_eq!(
        who(json!({"plan": "free", "region": "US"})).value(&or, "c"),
        off()
    );
    // A decisive entry wins over an undecided one.
    assert_eq!(who(json!({"region": "US"})).value(&and, "c"), off());
    assert_eq!(who(json!({"region": "EU"})).value(&or, "c"), on());
    assert!(who(json!({"region": "EU"})).value(&and, "c").is_err());
    assert!(who(json!({"region": "US"})).value(&or, "c").is_err());
}

#[test]
fn cohort_nesting_negation_and_references() {
    let cohorts = json!({
        "1": {"type": "OR", "values": [
            {"type": "AND", "values": [prop("plan", "pro"), prop("region", "EU")]},
            {"type": "AND", "values": [
                prop("plan", "enterprise"),
                {"key": "region", "value": "EU", "operator": "exact", "type": "person", "negation": true}
            ]}
        ]},
        "2": {"type": "AND", "values": [
            {"key": "id", "value": 1, "type": "cohort", "negation": true}
        ]},
        "3": {"type": "AND", "values": [{"key": "id", "value": "1", "type": "cohort"}]}
    });
    let flags = |id: u32| {
        cohort_flags(
            cohorts.clone(),
            json!([{"properties": [cohort(json!(id))]}]),
        )
    };
    let (nested, negated, referenced) = (flags(1), flags(2), flags(3));
    let who = |props: Value| Caller::new("u").person(props);
    let pro_eu = who(json!({"plan": "pro", "region": "EU"}));
    let ent_us = who(json!({"plan": "enterprise", "region": "US"}));
    let ent_eu = who(json!({"plan": "enterprise", "region": "EU"}));
    assert_eq!(pro_eu.value(&nested, "c"), on());
    assert_eq!(ent_us.value(&nested, "c"), on());
    assert_eq!(ent_eu.value(&nested, "c"), off());
    assert_eq!(pro_eu.value(&negated, "c"), off());
    assert_eq!(ent_eu.value(&negated, "c"), on());
    assert_eq!(ent_us.value(&referenced, "c"), on());
    assert_eq!(ent_eu.value(&referenced, "c"), off());
}

#[test]
fn cohort_not_in_and_operators() {
    let cohorts = json!({"1": {"type": "AND", "values": [prop("plan", "pro")]}});
    let with_op = |op: Value| {
        let mut filter = cohort(json!(1));
        filter["operator"] = op;
        cohort_flags(cohorts.clone(), json!([{"properties": [filter]}]))
    };
    let pro = Caller::new("u").person(json!({"plan": "pro"}));
    let free = Caller::new("u").person(json!({"plan": "free"}));
    assert_eq!(pro.value(&with_op(json!("not_in")), "c"), off());
    assert_eq!(free.value(&with_op(json!("not_in")), "c"), on());
    assert_eq!(pro.value(&with_op(json!("in")), "c"), on());
    assert_eq!(pro.value(&with_op(json!("exact")), "c"), on());
    assert_eq!(pro.value(&with_op(json!(null)), "c"), on());
    assert!(pro.value(&with_op(json!("gt")), "c").is_err());
    // A negation on a condition's cohort filter is not read (only inside cohorts).
    let mut negated = cohort(json!(1));
    negated["negation"] = json!(true);
    let flags = cohort_flags(cohorts.clone(), json!([{"properties": [negated]}]));
    assert_eq!(pro.value(&flags, "c"), on());
}

#[test]
fn empty_cohorts_match() {
    let flags = |group: Value| {
        cohort_flags(
            json!({"1": group}),
            json!([{"properties": [cohort(json!(1))]}]),
        )
    };
    let u = Caller::new("u");
    assert_eq!(u.value(&flags(json!({})), "c"), on());
    assert_eq!(
        u.value(&flags(json!({"type": "AND", "values": []})), "c"),
        on()
    );
    assert_eq!(
        u.value(&flags(json!({"type": "OR", "values": []})), "c"),
        on()
    );
    assert_eq!(
        u.value(&flags(json!({"type": "OR", "values": [{}]})), "c"),
        on()
    );
    assert!(u
        .value(&flags(json!({"type": "XOR", "values": []})), "c")
        .is_err());
    assert!(u.value(&flags(json!({"type": "AND"})), "c").is_err());
    assert!(u.value(&flags(json!([])), "c").is_err());
    assert!(u
        .value(&flags(json!({"type": "AND", "values": [5]})), "c")
        .is_err());
}

#[test]
fn missing_cohort_sends_the_flag_to_the_server() {
    let flags = cohort_flags(
        json!({}),
        json!([
            {"properties": [cohort(json!(99))]},
            {"rollout_percentage": 100}
        ]),
    );
    // A later condition that matches does not help.
    assert!(Caller::new("u").value(&flags, "c").is_err());
    // ...but a later filter of the same condition that rules it out does.
    let flags = cohort_flags(
        json!({}),
        json!([{"properties": [cohort(json!(99)), prop("plan", "pro")]}]),
    );
    let free = Caller::new("u").person(json!({"plan": "free"}));
    assert_eq!(free.value(&flags, "c"), off());
    let pro = Caller::new("u").person(json!({"plan": "pro"}));
    assert!(pro.value(&flags, "c").is_err());
    // After an undecided filter it only leaves its condition undecided.
    let flags = cohort_flags(
        json!({}),
        json!([
            {"properties": [prop("missing", "x"), cohort(json!(99))]},
            {"rollout_percentage": 100}
        ]),
    );
    assert_eq!(Caller::new("u").value(&flags, "c"), on());
    // Inside a cohort, even after the group is decided.
    let flags = cohort_flags(
        json!({"1": {"type": "AND", "values": [prop("plan", "pro"), cohort(json!(99))]}}),
        json!([{"properties": [cohort(json!(1))]}, {"rollout_percentage": 100}]),
    );
    assert!(free.value(&flags, "c").is_err());
}

#[test]
fn cyclic_cohorts_are_inconclusive() {
    let flags = cohort_flags(
        json!({
            "1": {"type": "AND", "values": [cohort(json!(2))]},
            "2": {"type": "OR", "values": [cohort(json!(1))]}
        }),
        json!([{"properties": [cohort(json!(1))]}]),
    );
    assert!(Caller::new("u").value(&flags, "c").is_err());
}

/// Cohorts `1..=len`, each `make(id)`.
fn cohort_chain(len: usize, make: impl Fn(usize) -> Value) -> Value {
    Value::Object((1..=len).map(|id| (id.to_string(), make(id))).collect())
}

fn nest_groups(levels: usize, inner: Value) -> Value {
    (0..levels).fold(inner, |inner, _| json!({"type": "AND", "values": [inner]}))
}

#[test]
fn cohorts_and_dependencies_nest_within_one_bound() {
    // Each kind alone stays within its own limit; together they nest without end.
    let cohorts = cohort_chain(150, |id| match id {
        150 => json!({"type": "AND", "values": [
            {"type": "flag", "key": "c", "operator": "flag_evaluates_to", "value": true,
             "dependency_chain": ["c"]}
        ]}),
        _ => json!({"type": "AND", "values": [cohort(json!(id + 1))]}),
    });
    let conditions = json!([{"properties": [cohort(json!(1))]}, {"rollout_percentage": 100}]);
    let flags = cohort_flags(cohorts, conditions);
    // Inconclusive, although the second condition matches.
    assert_eq!(
        Caller::new("u").value(&flags, "c"),
        Err(Inconclusive(NESTED_TOO_DEEP))
    );
}

#[test]
fn groups_nested_in_chained_cohorts_count_towards_the_bound() {
    // Each cohort nests its groups 60 deep around the next one: 5 cohorts open exactly
    // MAX_NESTING groups.
    let flags = |len: usize| {
        let cohorts = cohort_chain(len, |id| {
            let inner = if id == len {
                prop("plan", "pro")
            } else {
                cohort(json!(id + 1))
            };
            nest_groups(60, inner)
        });
        cohort_flags(cohorts, json!([{"properties": [cohort(json!(1))]}]))
    };
    let pro = Caller::new("u").person(json!({"plan": "pro"}));
    assert_eq!(MAX_NESTING, 5 * 60);
    assert_eq!(pro.value(&flags(5), "c"), on());
    assert_eq!(
        pro.value(&flags(6), "c"),
        Err(Inconclusive(NESTED_TOO_DEEP))
    );
}

#[test]
fn cohort_work_is_bounded() {
    // Cohort `i` is "`i + 1` OR `i + 1`": the last one is evaluated 2^(len - 1) times.
    let flags = |len: usize| {
        let cohorts = cohort_chain(len, |id| {
            let next = || cohort(json!(id + 1));
            if id == len {
                json!({"type": "AND", "values": [prop("plan", "pro")]})
            } else {
                json!({"type": "OR", "values": [next(), next()]})
            }
        });
        cohort_flags(cohorts, json!([{"properties": [cohort(json!(1))]}]))
    };
    let free = Caller::new("u").person(json!({"plan": "free"}));
    assert_eq!(free.value(&flags(10), "c"), off());
    assert_eq!(
        free.value(&flags(40), "c"),
        Err(Inconclusive(TOO_MANY_COHORT_STEPS))
    );
}

// --- flag dependencies ----------------------------------------------------------------

fn depends(key: &str, value: Value, chain: Value) -> Value {
    json!({"key": key, "type": "flag", "operator": "flag_evaluates_to",
           "value": value, "dependency_chain": chain})
}

fn dependency_flags(extra: Vec<Value>) -> CompiledFlags {
    let mut flags = vec![
        flag(
            "base",
            json!({"groups": [{"properties": [prop("plan", "pro")], "rollout_percentage": 100}]}),
        ),
        flag(
            "mv",
            json!({
                "multivariate": {"variants": [
                    {"key": "Blue", "rollout_percentage": 100},
                    {"key": "red", "rollout_percentage": 0}
                ]},
                "groups": [{"properties": [prop("plan", "pro")], "rollout_percentage": 100}]
            }),
        ),
        json!({"key": "inactive", "active": false, "filters": {"groups": [{"rollout_percentage": 100}]}}),
        flag(
            "middle",
            json!({"groups": [{"properties": [depends("base", json!(true), json!(["base"]))]}]}),
        ),
    ];
    flags.extend(extra);
    defs(flags)
}

fn dep_flag(key: &str, filters: Vec<Value>) -> Value {
    flag(key, json!({"groups": [{"properties": filters}]}))
}

#[test]
fn dependency_values_and_variants() {
    let flags = dependency_flags(vec![
        dep_flag("on", vec![depends("base", json!(true), json!(["base"]))]),
        dep_flag("off", vec![depends("base", json!(false), json!(["base"]))]),
        dep_flag("blue", vec![depends("mv", json!("Blue"), json!(["mv"]))]),
        dep_flag(
            "lower-blue",
            vec![depends("mv", json!("blue"), json!(["mv"]))],
        ),
        dep_flag(
            "any-variant",
            vec![depends("mv", json!(true), json!(["mv"]))],
        ),
        dep_flag(
            "no-variant",
            vec![depends("mv", json!(false), json!(["mv"]))],
        ),
        dep_flag(
            "string-true",
            vec![depends("base", json!("true"), json!(["base"]))],
        ),
        dep_flag(
            "chain",
            vec![depends("middle", json!(true), json!(["base", "middle"]))],
        ),
    ]);
    let pro = Caller::new("u").person(json!({"plan": "pro"}));
    let free = Caller::new("u").person(json!({"plan": "free"}));
    assert_eq!(pro.value(&flags, "on"), on());
    assert_eq!(free.value(&flags, "on"), off());
    assert_eq!(pro.value(&flags, "off"), off());
    assert_eq!(free.value(&flags, "off"), on());
    assert_eq!(pro.value(&flags, "blue"), on());
    assert_eq!(pro.value(&flags, "lower-blue"), off());
    assert_eq!(pro.value(&flags, "any-variant"), on());
    assert_eq!(pro.value(&flags, "no-variant"), off());
    assert_eq!(free.value(&flags, "no-variant"), on());
    assert_eq!(pro.value(&flags, "string-true"), off());
    assert_eq!(pro.value(&flags, "chain"), on());
    assert_eq!(free.value(&flags, "chain"), off());
    // An undecided dependency leaves the flag undecided.
    assert!(Caller::new("u").value(&flags, "on").is_err());
    assert!(Caller::new("u").value(&flags, "chain").is_err());
}

#[test]
fn inactive_missing_circular_and_malformed_dependencies() {
    let flags = dependency_flags(vec![
        dep_flag(
            "on-inactive",
            vec![depends("inactive", json!(true), json!(["inactive"]))],
        ),
        dep_flag(
            "off-inactive",
            vec![depends("inactive", json!(false), json!(["inactive"]))],
        ),
        dep_flag(
            "missing",
            vec![depends("ghost", json!(true), json!(["ghost"]))],
        ),
        dep_flag("circular", vec![depends("base", json!(true), json!([]))]),
        dep_flag(
            "no-chain",
            vec![
                json!({"key": "base", "type": "flag", "operator": "flag_evaluates_to", "value": true}),
            ],
        ),
        dep_flag(
            "not-in-chain",
            vec![depends("base", json!(true), json!(["mv"]))],
        ),
        flag(
            "malformed",
            json!({"groups": [
                {"properties": [json!({"key": "base", "type": "flag", "operator": "exact", "value": true, "dependency_chain": ["base"]})]},
                {"properties": [json!({"key": "base", "type": "flag", "value": true, "dependency_chain": ["base"]})]},
                {"properties": [depends("base", json!(null), json!(["base"]))]},
                {"properties": [depends("", json!(true), json!(["base"]))]},
                {"properties": [prop("plan", "free")]}
            ]}),
        ),
    ]);
    let pro = Caller::new("u").person(json!({"plan": "pro"}));
    let free = Caller::new("u").person(json!({"plan": "free"}));
    assert_eq!(pro.value(&flags, "on-inactive"), off());
    assert_eq!(pro.value(&flags, "off-inactive"), on());
    assert!(pro.value(&flags, "missing").is_err());
    assert!(pro.value(&flags, "circular").is_err());
    assert!(pro.value(&flags, "no-chain").is_err());
    assert!(pro.value(&flags, "not-in-chain").is_err());
    // Malformed dependencies are definite no-matches: the last condition decides.
    assert_eq!(pro.value(&flags, "malformed"), off());
    assert_eq!(free.value(&flags, "malformed"), on());
}

#[test]
fn missing_dependency_is_remembered_for_the_evaluation() {
    // posthog-python caches a missing chain member as undecided, and a later filter with the
    // same chain skips it and compares the referenced flag alone.
    let filter = depends("base", json!(true), json!(["ghost", "base"]));
    let flags = dependency_flags(vec![dep_flag("f", vec![filter.clone(), filter])]);
    let free = Caller::new("u").person(json!({"plan": "free"}));
    assert_eq!(free.value(&flags, "f"), off());
    let pro = Caller::new("u").person(json!({"plan": "pro"}));
    assert!(pro.value(&flags, "f").is_err());
}

#[test]
fn dependency_cycles_in_the_definitions_are_inconclusive() {
    let flags = dependency_flags(vec![
        dep_flag("x", vec![depends("y", json!(true), json!(["y"]))]),
        dep_flag("y", vec![depends("x", json!(true), json!(["x"]))]),
        dep_flag("self", vec![depends("self", json!(true), json!(["self"]))]),
    ]);
    let u = Caller::new("u");
    assert!(u.value(&flags, "x").is_err());
    assert!(u.value(&flags, "y").is_err());
    assert!(u.value(&flags, "self").is_err());
}

#[test]
fn a_flag_met_again_as_its_own_dependency_is_evaluated_afresh() {
    // posthog-python never caches the flag being evaluated. Here the first evaluation of `z`
    // is undecided, so `x` asks for itself; by then `z` is cached and the inner `x` is a
    // definite false, which rules the outer condition out: false, not undecided.
    let flags = dependency_flags(vec![
        dep_flag(
            "x",
            vec![
                depends("inactive", json!(true), json!(["z", "inactive"])),
                depends("x", json!(true), json!(["x"])),
            ],
        ),
        dep_flag("z", vec![prop("nope", "x")]),
    ]);
    assert_eq!(Caller::new("u").value(&flags, "x"), off());
}

#[test]
fn dependencies_need_their_device_id_and_continuity() {
    let flags = dependency_flags(vec![
        json!({"key": "device", "active": true, "bucketing_identifier": "device_id",
               "filters": {"groups": [{"rollout_percentage": 100}]}}),
        json!({"key": "continuity", "active": true, "ensure_experience_continuity": true,
               "filters": {"groups": [{"rollout_percentage": 100}]}}),
        dep_flag(
            "on-device",
            vec![depends("device", json!(true), json!(["device"]))],
        ),
        dep_flag(
            "on-continuity",
            vec![depends("continuity", json!(true), json!(["continuity"]))],
        ),
    ]);
    assert!(Caller::new("u").value(&flags, "on-device").is_err());
    assert_eq!(
        Caller::new("u").device("d").value(&flags, "on-device"),
        on()
    );
    assert!(Caller::new("u").value(&flags, "on-continuity").is_err());
}

#[test]
fn dependencies_inside_cohorts() {
    let flags = compile(json!({
        "flags": [
            flag("base", json!({"groups": [{"properties": [prop("plan", "pro")]}]})),
            flag("c", json!({"groups": [{"properties": [cohort(json!(1))]}]}))
        ],
        "cohorts": {"1": {"type": "OR", "values": [
            depends("base", json!(true), json!(["base"])),
            prop("region", "EU")
        ]}}
    }));
    let c = |props: Value| Caller::new("u").person(props).value(&flags, "c");
    assert_eq!(c(json!({"plan": "pro", "region": "US"})), on());
    assert_eq!(c(json!({"plan": "free", "region": "EU"})), on());
    assert_eq!(c(json!({"plan": "free", "region": "US"})), off());
    assert_eq!(c(json!({"region": "EU"})), on());
    assert!(c(json!({"region": "US"})).is_err());
}

// --- payloads -------------------------------------------------------------------------

#[test]
fn payloads_follow_the_value() {
    let flags = defs(vec![
        flag(
            "bool",
            json!({
                "groups": [{"properties": [prop("plan", "pro")]}],
                "payloads": {"true": "{\"on\": 1}", "false": "\"off\""}
            }),
        ),
        json!({"key": "inactive", "active": false,
               "filters": {"payloads": {"false": "[1]", "true": "[2]"}}}),
        flag(
            "mv",
            json!({
                "multivariate": {"variants": [{"key": "a", "rollout_percentage": 100}]},
                "groups": [{"properties": []}],
                "payloads": {"a": {"raw": true}, "true": "\"not me\""}
            }),
        ),
    ]);
    let pro = Caller::new("u").person(json!({"plan": "pro"}));
    let free = Caller::new("u").person(json!({"plan": "free"}));
    assert_eq!(
        pro.eval(&flags, "bool").unwrap().payload,
        Some("{\"on\": 1}")
    );
    let m = free.eval(&flags, "bool").unwrap();
    assert_eq!(
        (m.value, m.payload),
        (FlagValue::Bool(false), Some("\"off\""))
    );
    assert_eq!(pro.eval(&flags, "inactive").unwrap().payload, Some("[1]"));
    let m = pro.eval(&flags, "mv").unwrap();
    assert_eq!(m.value, FlagValue::Variant("a".into()));
    assert_eq!(m.payload, Some("{\"raw\":true}"));
    let flag = flags.flag("bool").unwrap();
    assert_eq!(flag.payload(&FlagValue::Bool(false)), Some("\"off\""));
}

// --- robustness and cost ----------------------------------------------------------------

/// A definitions document touching every part of the schema.
fn rich_definitions() -> Value {
    json!({
        "flags": [
            {"id": 1, "key": "rich", "active": true, "bucketing_identifier": null,
             "filters": {
                "aggregation_group_type_index": null,
                "early_exit": false,
                "holdout": {"id": 3, "exclusion_percentage": 10},
                "multivariate": {"variants": [
                    {"key": "a", "rollout_percentage": 60},
                    {"key": "b", "rollout_percentage": 40}
                ]},
                "payloads": {"a": "1", "true": "2"},
                "groups": [
                    {"properties": [prop("plan", "pro"), cohort(json!(1)),
                                    depends("dep", json!(true), json!(["dep"]))],
                     "rollout_percentage": 80, "variant": "b"},
                    {"aggregation_group_type_index": 0,
                     "properties": [{"key": "size", "value": "big", "operator": "exact", "type": "group"}],
                     "rollout_percentage": 50}
                ]
             }},
            {"id": 2, "key": "dep", "active": true,
             "filters": {"groups": [{"properties": [prop("region", "EU")], "rollout_percentage": 100}]}},
            {"id": 3, "key": "grp", "active": true,
             "filters": {"aggregation_group_type_index": 0, "feature_enrollment": false,
                         "groups": [{"properties": [cohort(json!(2))], "rollout_percentage": 100}]}}
        ],
        "group_type_mapping": {"0": "company"},
        "cohorts": {
            "1": {"type": "OR", "values": [
                {"type": "AND", "values": [prop("region", "EU"),
                    {"key": "plan", "value": "free", "operator": "exact", "type": "person", "negation": true}]}
            ]},
            "2": {"type": "AND", "values": [cohort(json!(1))]}
        },
        "property_matching_version": 2
    })
}

/// Every path into `value`, paired with a mutable visit.
fn for_each_node(value: &Value, path: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
    out.push(path.clone());
    match value {
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                path.push(i.to_string());
                for_each_node(item, path, out);
                path.pop();
            }
        }
        Value::Object(map) => {
            for (k, item) in map {
                path.push(k.clone());
                for_each_node(item, path, out);
                path.pop();
            }
        }
        _ => {}
    }
}

fn node_mut<'v>(value: &'v mut Value, path: &[String]) -> &'v mut Value {
    path.iter().fold(value, |v, step| match v {
        Value::Array(items) => &mut items[step.parse::<usize>().unwrap()],
        Value::Object(map) => map.get_mut(step).unwrap(),
        _ => unreachable!(),
    })
}

#[test]
fn malformed_definitions_never_panic() {
    let base = rich_definitions();
    let mut paths = Vec::new();
    for_each_node(&base, &mut Vec::new(), &mut paths);
    let junk = [
        json!(null),
        json!(true),
        json!(false),
        json!(0),
        json!(-1.5),
        json!(1e300),
        json!(""),
        json!("x"),
        json!([]),
        json!([1, "a", null]),
        json!({}),
        json!({"type": "AND"}),
        json!({"key": "k", "values": 3}),
    ];
    let callers = [
        Caller::new("u"),
        Caller::new("u")
            .person(json!({"plan": "pro", "region": "EU"}))
            .device("d"),
        Caller::new("u")
            .person(json!({"plan": "free", "region": "US"}))
            .group("company", "acme")
            .group_props("company", json!({"size": "big"})),
    ];
    let mut evaluated = 0;
    for path in &paths {
        for replacement in &junk {
            let mut defs = base.clone();
            *node_mut(&mut defs, path) = replacement.clone();
            let Ok(flags) = CompiledFlags::from_json(defs.to_string().as_bytes()) else {
                continue;
            };
            for caller in &callers {
                for key in ["rich", "dep", "grp", "absent"] {
                    let _ = caller.eval(&flags, key);
                    evaluated += 1;
                }
            }
        }
    }
    assert!(evaluated > 5_000, "{evaluated}");
    // The unmodified document evaluates.
    let flags = compile(base);
    let _ = callers[1].eval(&flags, "rich");
}

#[test]
fn agrees_with_posthog_python_on_random_definitions() {
    // Generated by tests/data/local_eval/differential.py with posthog-python 7.91.1.
    let corpus = include_str!("../../../../tests/data/local_eval/differential.jsonl");
    let mut checked = 0;
    for (line_number, line) in corpus.lines().enumerate() {
        let doc: Value = serde_json::from_str(line).unwrap();
        let flags = compile(doc["definitions"].clone());
        let contexts = doc["contexts"].as_array().unwrap();
        for result in doc["results"].as_array().unwrap() {
            let c = &contexts[result["context"].as_u64().unwrap() as usize];
            let caller = Caller {
                distinct_id: c["distinct_id"].as_str().unwrap().to_owned(),
                device_id: c["device_id"].as_str().map(str::to_owned),
                person: c["person_properties"].as_object().unwrap().clone(),
                groups: serde_json::from_value(c["groups"].clone()).unwrap(),
                group_properties: serde_json::from_value(c["group_properties"].clone()).unwrap(),
            };
            let key = result["key"].as_str().unwrap();
            let got = caller
                .eval(&flags, key)
                .ok()
                .map(|m| (m.value.to_json(), m.payload.map(str::to_owned)));
            let want = if result.get("inconclusive").is_some() {
                None
            } else {
                let payload = result["payload"].as_str().map(str::to_owned);
                Some((result["value"].clone(), payload))
            };
            assert_eq!(
                got,
                want,
                "line {}, flag {key}, context {c}",
                line_number + 1
            );
            checked += 1;
        }
    }
    assert!(checked > 2000, "{checked}");
}
