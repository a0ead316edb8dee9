//! Operator semantics, as tables. The expectations follow posthog-python 7.91.1's
//! `TestMatchProperties`, `test_feature_flags_regex.py` and `test_property_matching_version.py`
//! (written out here as data), plus the edge cases around them.

use serde_json::{json, Value};

use super::*;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum R {
    /// Matches.
    T,
    /// Does not match.
    F,
    /// Inconclusive.
    I,
}
use R::{F, I, T};

/// 2022-05-01T00:00:00Z, the time posthog-python's relative date tests freeze.
const MAY_1_2022: i128 = 1_651_363_200 * 1_000_000_000;

fn filter(operator: &str, value: Value) -> Value {
    json!({"key": "key", "value": value, "operator": operator, "type": "person"})
}

fn outcome(result: Result<bool, Inconclusive>) -> R {
    match result {
        Ok(true) => T,
        Ok(false) => F,
        Err(_) => I,
    }
}

fn run_at(raw: &Value, value: Option<&Value>, version: u32, now: i128) -> R {
    let options = CompileOptions {
        property_matching_version: version,
    };
    let compiled = compile_property(raw, options);
    outcome(match_property_at(&compiled, value.map(PropRef::Json), now))
}

fn run(raw: &Value, value: Option<&Value>) -> R {
    run_at(raw, value, 1, MAY_1_2022)
}

/// Checks `operator` with filter `value` against each `(property value, expected)`.
fn check(operator: &str, value: Value, cases: &[(Value, R)]) {
    let raw = filter(operator, value);
    for (property, want) in cases {
        assert_eq!(
            run(&raw, Some(property)),
            *want,
            "{operator} {} against {property}",
            raw["value"]
        );
    }
}

/// The negation of an operator gives the opposite answer (inconclusive stays inconclusive).
fn check_pair(operator: &str, negated: &str, value: Value, cases: &[(Value, R)]) {
    check(operator, value.clone(), cases);
    let flipped: Vec<(Value, R)> = cases
        .iter()
        .map(|(v, r)| {
            let r = match r {
                T => F,
                F => T,
                I => I,
            };
            (v.clone(), r)
        })
        .collect();
    check(negated, value, &flipped);
}

/// A filter value the operator can read.
fn sample_filter(operator: &str) -> Value {
    match operator {
        "gt" | "gte" | "lt" | "lte" => json!("1"),
        "is_date_before" | "is_date_after" => json!("2022-01-01"),
        _ => json!("1.0.0"),
    }
}

#[test]
fn missing_key_is_inconclusive_for_every_operator() {
    for operator in [
        "exact",
        "is_not",
        "is_set",
        "is_not_set",
        "icontains",
        "not_icontains",
        "regex",
        "not_regex",
        "starts_with",
        "not_starts_with",
        "ends_with",
        "not_ends_with",
        "gt",
        "gte",
        "lt",
        "lte",
        "is_date_before",
        "is_date_after",
        "semver_eq",
        "semver_neq",
        "semver_gt",
        "semver_gte",
        "semver_lt",
        "semver_lte",
        "semver_tilde",
        "semver_caret",
        "semver_wildcard",
        "bogus",
    ] {
        let raw = filter(operator, sample_filter(operator));
        assert_eq!(run(&raw, None), I, "{operator}");
        let compiled = compile_property(&raw, CompileOptions::default());
        let reason = match_property(&compiled, None).unwrap_err();
        assert_eq!(
            is_missing_context(&reason),
            operator != "bogus",
            "{operator}"
        );
    }
}

#[test]
fn every_known_operator_answers_for_a_present_value() {
    for operator in [
        "exact",
        "is_not",
        "is_set",
        "is_not_set",
        "icontains",
        "not_icontains",
        "regex",
        "not_regex",
        "starts_with",
        "not_starts_with",
        "ends_with",
        "not_ends_with",
        "gt",
        "gte",
        "lt",
        "lte",
        "semver_eq",
        "semver_neq",
        "semver_gt",
        "semver_gte",
        "semver_lt",
        "semver_lte",
        "semver_tilde",
        "semver_caret",
        "semver_wildcard",
    ] {
        let raw = filter(operator, sample_filter(operator));
        assert_ne!(run(&raw, Some(&json!("1.0.0"))), I, "{operator}");
    }
}

#[test]
fn reasons_say_whose_fault_it_is() {
    // (operator, filter, properties, missing context?) as in `test_inconclusive_match_reports_reason`.
    let cases = [
        ("bogus", json!("x"), Some(json!("x")), false),
        ("exact", json!("x"), None, true),
        (
            "is_date_before",
            json!("not-a-date"),
            Some(json!("2024-01-01")),
            false,
        ),
        (
            "is_date_before",
            json!("2024-01-01"),
            Some(json!("not-a-date")),
            true,
        ),
        ("semver_gt", json!("x.y"), Some(json!("1.2.3")), false),
        ("semver_gt", json!("1.2.3"), Some(json!("x.y")), true),
        ("semver_gt", json!("x.y"), Some(json!("a.b")), false),
        ("semver_gt", json!("x.y"), None, false),
        ("semver_wildcard", json!("1x.*"), Some(json!("a.b")), false),
        (
            "is_date_after",
            json!(true),
            Some(json!("2024-01-01")),
            false,
        ),
        ("is_date_after", json!("2024-01-01"), Some(json!(5)), true),
        ("gt", json!("abc"), Some(json!(5)), false),
        ("gt", json!("abc"), None, false),
        ("regex", json!(r"\bfoo"), Some(json!("foo")), false),
        ("regex", json!(r"\bfoo"), None, false),
        ("regex", json!(r"\w+"), Some(json!("e\u{301}")), false),
    ];
    for (operator, value, property, missing) in cases {
        let compiled = compile_property(&filter(operator, value), CompileOptions::default());
        let reason = match_property(&compiled, property.as_ref().map(PropRef::Json)).unwrap_err();
        assert_eq!(
            is_missing_context(&reason),
            missing,
            "{operator}: {}",
            reason.0
        );
    }
}

#[test]
fn date_filters_out_of_range_are_the_definitions_fault() {
    // At 2022-05-01, `2030y` is before year 1; at 2024-02-29, `2023` has no February 29.
    let leap_day: i128 = 1_709_164_800 * 1_000_000_000;
    for (value, now) in [("2030y", MAY_1_2022), ("2023", leap_day)] {
        let raw = filter("is_date_before", json!(value));
        let compiled = compile_property(&raw, CompileOptions::default());
        for property in [None, Some(json!("garbage")), Some(json!("2020-01-01"))] {
            let reason = match_property_at(&compiled, property.as_ref().map(PropRef::Json), now)
                .unwrap_err();
            assert!(!is_missing_context(&reason), "{value} {property:?}");
        }
        // A null value is still no match.
        let null = json!(null);
        assert_eq!(
            match_property_at(&compiled, Some(PropRef::Json(&null)), now),
            Ok(false)
        );
    }
    let compiled = compile_property(
        &filter("is_date_before", json!("2024")),
        CompileOptions::default(),
    );
    let value = json!("2024-02-28");
    assert_eq!(
        match_property_at(&compiled, Some(PropRef::Json(&value)), leap_day),
        Ok(true)
    );
}

#[test]
fn operator_defaults_to_exact_when_absent_or_falsy() {
    for operator in [Value::Null, json!(""), json!(false), json!(0), json!([])] {
        let raw = json!({"key": "key", "value": "value", "operator": operator});
        assert_eq!(run(&raw, Some(&json!("VALUE"))), T, "{operator}");
        assert_eq!(run(&raw, Some(&json!("other"))), F, "{operator}");
    }
    let raw = json!({"key": "key", "value": "value"});
    assert_eq!(run(&raw, Some(&json!("value"))), T);
    for operator in [json!("is_unknown"), json!(true), json!(1), json!("EXACT")] {
        let raw = json!({"key": "key", "value": "value", "operator": operator});
        assert_eq!(run(&raw, Some(&json!("value"))), I, "{operator}");
    }
}

#[test]
fn key_must_be_a_string() {
    let raw = json!({"key": 5, "value": "x", "operator": "is_set"});
    let compiled = compile_property(&raw, CompileOptions::default());
    assert_eq!(compiled.key, "");
    let reason = match_property(&compiled, Some(PropRef::Str("x"))).unwrap_err();
    assert!(is_missing_context(&reason));
    let raw = json!({"value": "x", "operator": "gt"});
    let reason =
        match_property(&compile_property(&raw, CompileOptions::default()), None).unwrap_err();
    assert!(!is_missing_context(&reason));
}

#[test]
fn negation_is_recorded_not_applied() {
    let raw = json!({"key": "key", "value": "x", "operator": "exact", "negation": true});
    let compiled = compile_property(&raw, CompileOptions::default());
    assert!(compiled.negation);
    assert_eq!(match_property(&compiled, Some(PropRef::Str("x"))), Ok(true));
    assert!(!compile_property(&filter("exact", json!("x")), CompileOptions::default()).negation);
}

#[test]
fn exact_and_is_not() {
    check_pair(
        "exact",
        "is_not",
        json!("value"),
        &[
            (json!("value"), T),
            (json!("VALUE"), T),
            (json!("value2"), F),
            (json!(""), F),
            (json!(null), F),
        ],
    );
    check_pair(
        "exact",
        "is_not",
        json!(["value1", "value2", "value3"]),
        &[
            (json!("value1"), T),
            (json!("value2"), T),
            (json!("Value3"), T),
            (json!("value4"), F),
            (json!(""), F),
            (json!(null), F),
        ],
    );
    // Null is compared as the text `null`.
    check(
        "exact",
        json!("null"),
        &[(json!(null), T), (json!("NULL"), T)],
    );
    check(
        "is_not",
        json!("none"),
        &[(json!(null), T), (json!("non"), T)],
    );
    // Numbers are compared as text.
    check(
        "exact",
        json!(42),
        &[
            (json!("42"), T),
            (json!(42), T),
            (json!(42.0), F),
            (json!("42.0"), F),
        ],
    );
    check("exact", json!("42.0"), &[(json!(42.0), T), (json!(42), F)]);
}

#[test]
fn exact_lowercases_like_python_str_lower() {
    for (filter_value, property, want) in [
        ("Ä", "ä", T),
        ("323.0", "323.0", T),
        ("ß", "ss", F),
        ("Straße", "strasse", F),
        ("STRASSE", "strasse", T),
        ("Σ", "ς", F),
        ("ΟΔΟΣ", "οδος", T),
        ("ΟΔΟΣ", "οδοσ", F),
        ("οδος", "ΟΔΟΣ", T),
        ("İ", "i\u{307}", T),
        ("İ", "i", F),
        ("i\u{307}", "İ", T),
        ("ss", "ß", F),
    ] {
        check_pair(
            "exact",
            "is_not",
            json!(filter_value),
            &[(json!(property), want)],
        );
    }
    check_pair(
        "exact",
        "is_not",
        json!(["free", "Ä"]),
        &[(json!("ä"), T), (json!("paid"), F)],
    );
    check("exact", json!(323.0), &[(json!("323.0"), T)]);
}

#[test]
fn exact_stringifies_like_the_flags_service() {
    for (filter_value, property, want) in [
        (json!("[1,2]"), json!([1, 2]), T),
        (json!("[1, 2]"), json!([1, 2]), F),
        (json!(r#"{"a":1,"b":2}"#), json!({"b": 2, "a": 1}), T),
        (
            json!(r#"{"a":"x","z":[{"a":2,"b":1}]}"#),
            json!({"z": [{"b": 1, "a": 2}], "a": "x"}),
            T,
        ),
        (json!(r#"["Ä"]"#), json!(["ä"]), T),
        (json!("323.0"), json!(323.0), T),
        (json!("-0.0"), json!(-0.0), T),
        (json!("1e-7"), json!(1e-7), T),
        (json!("1e+16"), json!(1e16), T),
        (json!("0.00001"), json!(1e-5), T),
        (json!("0.000099"), json!(9.9e-5), T),
        (json!("1e-07"), json!(1e-7), F),
        (json!("true"), json!(true), T),
    ] {
        check_pair("exact", "is_not", filter_value, &[(property, want)]);
    }
}

#[test]
fn exact_boolean_precedence_by_matching_version() {
    // (filter, property, legacy answer, version 2 answer)
    let rows = [
        (json!(false), json!("banana"), T, F),
        (json!(false), json!(0), T, F),
        (json!("false"), json!(0), T, F),
        (json!(["false"]), json!(null), T, F),
        (json!(["true", "false"]), json!("true"), F, T),
        (json!(["true", "false"]), json!("pro"), T, F),
        (json!([]), json!(true), T, T),
        (json!([]), json!([]), T, T),
        (json!(true), json!([true]), T, F),
        (json!(false), json!("FALSE"), T, T),
        (json!(false), json!(null), T, F),
        (json!(false), json!(""), T, F),
        (json!([]), json!([true, ["TRUE", []]]), T, T),
        (json!([]), json!([true, [false]]), F, F),
        (json!([]), json!(false), F, F),
        (json!([]), json!(null), F, F),
        (json!([]), json!(0), F, F),
        (json!([]), json!(1), F, F),
        (json!([]), json!("banana"), F, F),
        (json!([false, "PRO"]), json!("pro"), T, T),
        (json!([[true], "PRO"]), json!([true]), T, T),
        (json!([null, "PRO"]), json!("null"), T, T),
        (json!([1, "PRO"]), json!("1"), T, T),
        (json!("οδος"), json!("ΟΔΟΣ"), T, T),
        (json!("i\u{307}"), json!("İ"), T, T),
        (json!("ss"), json!("ß"), F, F),
        (json!(true), json!("True"), T, T),
        (json!("TRUE"), json!(true), T, T),
        (json!(true), json!(1), F, F),
        (json!(["FREE", "PRO"]), json!("pro"), T, T),
    ];
    for version in [0, 1, 2, 3] {
        for (filter_value, property, legacy, explicit) in &rows {
            let want = if version == 2 { *explicit } else { *legacy };
            let negated = match want {
                T => F,
                F => T,
                I => I,
            };
            let exact = filter("exact", filter_value.clone());
            let is_not = filter("is_not", filter_value.clone());
            let ctx = format!("v{version}: {filter_value} vs {property}");
            assert_eq!(
                run_at(&exact, Some(property), version, MAY_1_2022),
                want,
                "{ctx}"
            );
            assert_eq!(
                run_at(&is_not, Some(property), version, MAY_1_2022),
                negated,
                "{ctx}"
            );
            assert_eq!(run_at(&exact, None, version, MAY_1_2022), I, "{ctx}");
        }
    }
}

#[test]
fn exact_long_lists_use_a_set() {
    let items: Vec<String> = (0..40).map(|i| format!("User{i}@Example.com")).collect();
    let mut long = items.clone();
    long.push("Ä".into());
    check_pair(
        "exact",
        "is_not",
        json!(long),
        &[
            (json!("user7@example.com"), T),
            (json!("USER39@EXAMPLE.COM"), T),
            (json!("user40@example.com"), F),
            (json!("ä"), T),
            (json!(null), F),
            (json!(format!("{}@example.com", "x".repeat(100))), F),
        ],
    );
}

#[test]
fn presence_operators() {
    for property in [
        json!(null),
        json!(false),
        json!(0),
        json!(""),
        json!([]),
        json!({}),
        json!("x"),
    ] {
        check("is_set", json!("is_set"), &[(property.clone(), T)]);
        check("is_not_set", json!("is_not_set"), &[(property, F)]);
    }
}

#[test]
fn icontains_and_not_icontains() {
    check_pair(
        "icontains",
        "not_icontains",
        json!("valUe"),
        &[
            (json!("value"), T),
            (json!("value2"), T),
            (json!("vaLue4"), T),
            (json!("343tfvalue5"), T),
            (json!("Alakazam"), F),
            (json!(123), F),
        ],
    );
    check_pair(
        "icontains",
        "not_icontains",
        json!("3"),
        &[
            (json!("3"), T),
            (json!(323), T),
            (json!("val3"), T),
            (json!("three"), F),
        ],
    );
    check_pair(
        "icontains",
        "not_icontains",
        json!(""),
        &[(json!("x"), T), (json!(""), T)],
    );
    check("icontains", json!(3), &[(json!("a3"), T)]);
    check(
        "icontains",
        json!(true),
        &[(json!("TRUE!"), T), (json!(true), T)],
    );
    check("icontains", json!(["a"]), &[(json!(r#"x["A"]"#), T)]);
}

#[test]
fn starts_with_and_ends_with() {
    check_pair(
        "starts_with",
        "not_starts_with",
        json!("Val"),
        &[
            (json!("value"), T),
            (json!("VALUE"), T),
            (json!("vaLue4"), T),
            (json!("prevalue"), F),
            (json!("Alakazam"), F),
            (json!(123), F),
        ],
    );
    check_pair(
        "starts_with",
        "not_starts_with",
        json!("3"),
        &[
            (json!("3"), T),
            (json!(323), T),
            (json!(123), F),
            (json!("val3"), F),
        ],
    );
    check_pair(
        "ends_with",
        "not_ends_with",
        json!("lUe"),
        &[
            (json!("value"), T),
            (json!("VALUE"), T),
            (json!("343tfvalue"), T),
            (json!("value2"), F),
            (json!("Alakazam"), F),
            (json!(123), F),
        ],
    );
    check_pair(
        "ends_with",
        "not_ends_with",
        json!("3"),
        &[
            (json!("3"), T),
            (json!(323), T),
            (json!(13), T),
            (json!(321), F),
            (json!("3val"), F),
        ],
    );
}

#[test]
fn string_operators_lower_ascii_only() {
    check_pair(
        "icontains",
        "not_icontains",
        json!("ä"),
        &[(json!("prefixÄsuffix"), F)],
    );
    check_pair(
        "starts_with",
        "not_starts_with",
        json!("ä"),
        &[(json!("Äsuffix"), F)],
    );
    check_pair(
        "ends_with",
        "not_ends_with",
        json!("ä"),
        &[(json!("prefixÄ"), F)],
    );
    check(
        "icontains",
        json!("Ä"),
        &[(json!("xäx"), F), (json!("xÄx"), T)],
    );
    check("icontains", json!("STRASSE"), &[(json!("Straße"), F)]);
}

#[test]
fn string_operators_render_floats_like_the_flags_service() {
    check("icontains", json!(".0"), &[(json!(323.0), T)]);
    check("starts_with", json!("323"), &[(json!(323.0), T)]);
    check("ends_with", json!(".0"), &[(json!(323.0), T)]);
    check("ends_with", json!("e-7"), &[(json!(1e-7), T)]);
    check("starts_with", json!("0.00001"), &[(json!(1e-5), T)]);
    check("ends_with", json!("e+16"), &[(json!(1e16), T)]);
}

#[test]
fn string_operators_read_null_as_text() {
    let null = json!(null);
    for (operator, value, want) in [
        ("icontains", "nul", T),
        ("icontains", "x", F),
        ("not_icontains", "x", T),
        ("not_icontains", "nul", F),
        ("starts_with", "NU", T),
        ("starts_with", "x", F),
        ("not_starts_with", "x", T),
        ("not_starts_with", "nu", F),
        ("ends_with", "LL", T),
        ("ends_with", "x", F),
        ("not_ends_with", "x", T),
        ("not_ends_with", "ll", F),
        ("regex", "^nu", T),
        ("regex", "Nu", F),
        ("regex", "^None$", F),
        ("regex", "x", F),
        ("not_regex", "x", T),
        ("not_regex", "^nu", F),
        ("not_regex", "^None$", T),
        ("regex", "[", F),
        ("not_regex", "[", F),
        ("icontains", "no", F),
        ("regex", "No", F),
        ("regex", "no", F),
    ] {
        check(operator, json!(value), &[(null.clone(), want)]);
    }
}

#[test]
fn regex_operators() {
    check_pair(
        "regex",
        "not_regex",
        json!(r"\.com$"),
        &[
            (json!("value.com"), T),
            (json!("value2.com"), T),
            (json!("value2com"), F),
            (json!(".com343tfvalue5"), F),
            (json!("Alakazam"), F),
            (json!(123), F),
            (json!("valuecom"), F),
            (json!(r"value\com"), F),
        ],
    );
    check_pair(
        "regex",
        "not_regex",
        json!("3"),
        &[
            (json!("3"), T),
            (json!(323), T),
            (json!("val3"), T),
            (json!("three"), F),
        ],
    );
    // A non-string pattern is Python's `str()` of it.
    check_pair(
        "regex",
        "not_regex",
        json!(4),
        &[(json!("4"), T), (json!(4), T), (json!("value"), F)],
    );
    check_pair(
        "regex",
        "not_regex",
        json!(true),
        &[(json!("True"), T), (json!(true), F)],
    );
    check_pair(
        "regex",
        "not_regex",
        json!(1.5e-5),
        &[(json!("1.5e-05"), T)],
    );
    check(
        "regex",
        json!(null),
        &[(json!("None"), T), (json!(null), F)],
    );
    check("regex", json!(["a"]), &[(json!("a"), I)]);
    // Non-string values are matched as compact JSON.
    for (pattern, property, want) in [
        (r"\[1,2\]", json!([1, 2]), T),
        ("^true$", json!(true), T),
        ("True", json!(true), F),
        (
            r#"^\{"a":1,"b":\[null\]\}$"#,
            json!({"b": [null], "a": 1}),
            T,
        ),
        ("'a'", json!({"a": 1}), F),
    ] {
        check_pair("regex", "not_regex", json!(pattern), &[(property, want)]);
    }
    // Invalid patterns match nothing, for both operators.
    for pattern in ["[", "(", "*", "?*", "a{3,2}", "a**"] {
        for property in ["value", "é", "\r", "foo\n"] {
            check("regex", json!(pattern), &[(json!(property), F)]);
            check("not_regex", json!(pattern), &[(json!(property), F)]);
        }
    }
    for pattern in [r"*foo$", r"(a|b$"] {
        check("regex", json!(pattern), &[(json!("foo\n"), F)]);
        check("not_regex", json!(pattern), &[(json!("foo\n"), F)]);
    }
    // The empty pattern matches everything (so `not_regex` nothing).
    for property in [
        json!(""),
        json!("é"),
        json!("\n"),
        json!(null),
        json!("\u{301}"),
    ] {
        check("regex", json!(""), &[(property.clone(), T)]);
        check("not_regex", json!(""), &[(property, F)]);
    }
    // Server-only syntax, and values the engines read differently.
    for (pattern, property) in [
        (r"^\p{L}+$", json!("é")),
        (r"^\p{L}+$", json!(null)),
        (r"(?i)^foo$", json!("FOO")),
        (r"(a)\1", json!("aa")),
        (r".*\bbot\b.*", json!("a bot")),
        (r"^(a+)+$", json!("aa")),
        (r"^\w+$", json!("a\u{301}")),
        (r"^\s$", json!("\u{1c}")),
        (r"^a+$", json!("aa\n")),
        (r"foo|bar$", json!("foo\n")),
    ] {
        check("regex", json!(pattern), &[(property.clone(), I)]);
        check("not_regex", json!(pattern), &[(property, I)]);
    }
    // The same pattern, locally or on the server depending on the value.
    let word = [
        (json!("abc"), T),
        (json!("a\u{301}"), I),
        (json!("!"), F),
        (json!("é١"), T),
    ];
    check_pair("regex", "not_regex", json!(r"^\w+$"), &word);
    let space = [
        (json!(" "), T),
        (json!("\u{1c}"), I),
        (json!("\u{2003}"), T),
        (json!("\u{2003}\u{1c}"), I),
        (json!("\u{feff}"), F),
    ];
    check_pair("regex", "not_regex", json!(r"^\s+$"), &space);
    let end = [(json!("aa"), T), (json!("aa\n"), I), (json!("b"), F)];
    check_pair("regex", "not_regex", json!(r"^a+$"), &end);
    let any = [(json!("😀"), T), (json!("\n"), F), (json!("\r"), T)];
    check_pair("regex", "not_regex", json!(r"^.$"), &any);
}

#[test]
fn numeric_operators() {
    check(
        "gt",
        json!(1),
        &[
            (json!(2), T),
            (json!(3), T),
            (json!(0), F),
            (json!(-1), F),
            (json!("23"), T),
        ],
    );
    check(
        "lt",
        json!(1),
        &[
            (json!(0), T),
            (json!(-1), T),
            (json!(-3), T),
            (json!(1), F),
            (json!("1"), F),
            (json!("3"), F),
        ],
    );
    check(
        "gte",
        json!(1),
        &[
            (json!(1), T),
            (json!(2), T),
            (json!(0), F),
            (json!(-1), F),
            (json!("3"), T),
        ],
    );
    check(
        "lte",
        json!("43"),
        &[
            (json!("41"), T),
            (json!("42"), T),
            (json!("43"), T),
            (json!("44"), F),
            (json!(44), F),
            (json!(42), T),
        ],
    );
    // Numeric, not lexicographic.
    check(
        "lt",
        json!("30"),
        &[(json!("29"), T), (json!("100"), F), (json!(100), F)],
    );
    check(
        "gt",
        json!("123aloha"),
        &[(json!("123"), I), (json!(122), I), (json!(129), I)],
    );
    for (operator, property, filter_value, want) in [
        ("gt", json!("10"), json!(2), T),
        ("lt", json!("100"), json!(30), F),
        ("gte", json!("10"), json!("5"), T),
        ("lte", json!("10"), json!("5"), F),
        ("gt", json!("+1.e1"), json!("+.5e+1"), T),
        ("lt", json!("-1.25E+2"), json!("-12.5"), T),
        ("gte", json!("-.5"), json!("-5e-1"), T),
        ("lte", json!("1e-400"), json!(0), T),
        ("gte", json!("1.7976931348623157e308"), json!(1e308), T),
        (
            "gt",
            json!("9007199254740993"),
            json!("9007199254740992"),
            F,
        ),
        (
            "gt",
            json!(9007199254740993u64),
            json!(9007199254740992u64),
            F,
        ),
        ("gte", json!("0.1"), json!("0.1"), T),
        ("gt", json!(u64::MAX), json!(i64::MIN), T),
    ] {
        for version in [1, 2] {
            let raw = filter(operator, filter_value.clone());
            assert_eq!(
                run_at(&raw, Some(&property), version, MAY_1_2022),
                want,
                "{operator} {filter_value} against {property}"
            );
        }
    }
    for (operator, expected) in [
        ("gt", [F, F, T]),
        ("gte", [F, T, T]),
        ("lt", [T, F, F]),
        ("lte", [T, T, F]),
    ] {
        for condition in [json!(5), json!(5.0), json!("5")] {
            for (actuals, want) in [
                [json!(2), json!(2.0), json!("2")],
                [json!(5), json!(5.0), json!("5")],
                [json!(10), json!(10.0), json!("10")],
            ]
            .iter()
            .zip(expected)
            {
                let cases: Vec<(Value, R)> = actuals.iter().map(|a| (a.clone(), want)).collect();
                check(operator, condition.clone(), &cases);
            }
        }
    }
}

#[test]
fn numeric_operands_must_be_strict_numbers() {
    let invalid = [
        json!(""),
        json!("abc"),
        json!("10px"),
        json!(" 10"),
        json!("10 "),
        json!("10\n"),
        json!("1_0"),
        json!("1,0"),
        json!("1e"),
        json!("."),
        json!("+"),
        json!("e5"),
        json!("0x10"),
        json!("١٠"),
        json!("NaN"),
        json!("Infinity"),
        json!("-inf"),
        json!("1e309"),
        json!(true),
        json!(false),
        json!(null),
        json!([]),
        json!([10]),
        json!({}),
        json!({"value": 10}),
    ];
    for operator in ["gt", "gte", "lt", "lte"] {
        for bad in &invalid {
            // A bad value does not match; a bad filter is inconclusive, even for null.
            check(operator, json!(5), &[(bad.clone(), F)]);
            check(operator, json!("5"), &[(bad.clone(), F)]);
            check(
                operator,
                bad.clone(),
                &[(json!(10), I), (json!("10"), I), (json!(null), I)],
            );
        }
        let raw = json!({"key": "key", "operator": operator});
        assert_eq!(run(&raw, Some(&json!(10))), I);
    }
    for good in ["1e2", ".5", "5.", "+5", "-5", "1E+2", "00012", "-.5e-1"] {
        assert!(parse_numeric_str(good).is_some(), "{good}");
    }
    check(
        "gt",
        json!(".5"),
        &[(json!("5."), T), (json!("1e2"), T), (json!("0.25"), F)],
    );
}

#[test]
fn absolute_date_operators() {
    check(
        "is_date_before",
        json!("2022-05-01"),
        &[
            (json!("2022-03-01"), T),
            (json!("2022-04-30"), T),
            (json!("2022-04-30T01:02:03"), T),
            (json!("2022-04-30T01:02:03+02:00"), T),
            (json!("2022-05-30"), F),
            (json!("2022-05-01"), F),
            (json!(1), I),
            (json!("abcdef"), I),
            (json!(true), I),
            (json!(["2022-03-01"]), I),
            (json!(null), F),
        ],
    );
    check(
        "is_date_after",
        json!("2022-05-01"),
        &[
            (json!("2022-05-02"), T),
            (json!("2022-05-30"), T),
            (json!("2022-05-30T00:00:00"), T),
            (json!("2022-04-30"), F),
            (json!("abcdef"), I),
            (json!(null), F),
        ],
    );
    check("is_date_before", json!(1234), &[(json!(1), I)]);
    check(
        "is_date_before",
        json!("2022-04-05 12:34:12 +01:00"),
        &[
            (json!("2022-05-30"), F),
            (json!("2022-03-30"), T),
            (json!("2022-04-05 12:34:11 +01:00"), T),
            (json!("2022-04-05 12:34:13 +01:00"), F),
            (json!("2022-04-05 11:34:11 +00:00"), T),
            (json!("2022-04-05 11:34:13 +00:00"), F),
            (json!("2022-04-05T11:34:11Z"), T),
            (json!("2022-04-05 11:34:13 UTC"), F),
        ],
    );
    // A filter that is not a date: inconclusive, but a null value still does not match.
    for bad in [
        json!("not-a-date"),
        json!(true),
        json!(2024.0),
        json!(["2022-01-01"]),
    ] {
        check(
            "is_date_before",
            bad,
            &[(json!("2022-01-01"), I), (json!(null), F), (json!(5), I)],
        );
    }
}

/// `(operator, filter value, [(property value, expected)])`.
type DateRows<'a> = &'a [(&'a str, &'a str, &'a [(&'a str, R)])];

#[test]
fn relative_date_operators() {
    // Frozen at 2022-05-01T00:00:00Z.
    let cases: DateRows<'_> = &[
        (
            "is_date_before",
            "-6h",
            &[
                ("2022-03-01", T),
                ("2022-04-30", T),
                ("2022-04-30T01:02:03", T),
                ("2022-04-30T19:02:03", F),
                ("2022-04-30T01:02:03+02:00", T),
                ("2022-05-30", F),
                ("abcdef", I),
            ],
        ),
        (
            "is_date_after",
            "1h",
            &[
                ("2022-05-02", T),
                ("2022-05-30", T),
                ("2022-04-30", F),
                ("abcdef", I),
            ],
        ),
        // A bare year is that year on today's date.
        (
            "is_date_after",
            "1234",
            &[("2022-05-30", T), ("1234-05-01", F)],
        ),
        (
            "is_date_before",
            "12d",
            &[
                ("2022-05-30", F),
                ("2022-03-30", T),
                ("2022-04-05 12:34:11+01:00", T),
                ("2022-04-19 01:34:11+02:00", T),
                ("2022-04-19 02:00:01+02:00", F),
            ],
        ),
        (
            "is_date_before",
            "1h",
            &[("2022-05-01 00:00:00", F), ("2022-04-30 22:00:00", T)],
        ),
        (
            "is_date_before",
            "-1d",
            &[("2022-04-29 23:59:00", T), ("2022-04-30 00:00:01", F)],
        ),
        (
            "is_date_before",
            "1w",
            &[
                ("2022-04-23 00:00:00", T),
                ("2022-04-24 00:00:00", F),
                ("2022-04-24 00:00:01", F),
            ],
        ),
        (
            "is_date_before",
            "1m",
            &[("2022-03-01 00:00:00", T), ("2022-04-05 00:00:00", F)],
        ),
        (
            "is_date_before",
            "1y",
            &[("2021-04-28 00:00:00", T), ("2021-05-01 00:00:01", F)],
        ),
        (
            "is_date_after",
            "122h",
            &[("2022-05-01 00:00:00", T), ("2022-04-23 01:00:00", F)],
        ),
        (
            "is_date_after",
            "2d",
            &[
                ("2022-05-01 00:00:00", T),
                ("2022-04-29 00:00:01", T),
                ("2022-04-29 00:00:00", F),
            ],
        ),
        (
            "is_date_after",
            "-02w",
            &[("2022-05-01 00:00:00", T), ("2022-04-16 00:00:00", F)],
        ),
        (
            "is_date_after",
            "1m",
            &[("2022-04-01 00:00:01", T), ("2022-04-01 00:00:00", F)],
        ),
        (
            "is_date_after",
            "1y",
            &[
                ("2022-05-01 00:00:00", T),
                ("2021-05-01 00:00:01", T),
                ("2021-05-01 00:00:00", F),
                ("2021-04-30 00:00:00", F),
                ("2021-03-01 12:13:00", F),
            ],
        ),
        // Relative dates are not allowed as values; out-of-range filters are inconclusive.
        ("is_date_before", "1d", &[("2d", I), ("2022-01-01", T)]),
        ("is_date_before", "10000d", &[("2022-01-01", I)]),
        ("is_date_before", "2023y", &[("2022-01-01", I)]),
        ("is_date_after", "2021y", &[("2022-01-01", T)]),
        ("is_date_before", "1s", &[("2022-01-01", I)]),
    ];
    for (operator, value, rows) in cases {
        let owned: Vec<(Value, R)> = rows.iter().map(|(v, r)| (json!(v), *r)).collect();
        check(operator, json!(value), &owned);
    }
    // A relative filter reads the clock at match time.
    let raw = filter("is_date_after", json!("1d"));
    let compiled = compile_property(&raw, CompileOptions::default());
    let value = json!("2022-04-30T12:00:00Z");
    let at = |nanos| {
        outcome(match_property_at(
            &compiled,
            Some(PropRef::Json(&value)),
            nanos,
        ))
    };
    assert_eq!(at(MAY_1_2022), T);
    assert_eq!(at(MAY_1_2022 + 12 * 3_600_000_000_000), F);
    // And the real clock: well after 2022.
    let old = json!("2022-04-30T12:00:00Z");
    assert_eq!(
        outcome(match_property(&compiled, Some(PropRef::Json(&old)))),
        F
    );
}

#[test]
fn month_arithmetic_clamps_at_month_ends() {
    let nanos = |s: &str| {
        i128::from(crate::time::Timestamp::parse(s).unwrap().unix_seconds()) * 1_000_000_000
    };
    // (now, filter, the first instant that is not before the filter)
    for (now, value, boundary) in [
        ("2025-03-31T12:00:00Z", "2m", "2025-01-28T12:00:00Z"),
        ("2024-03-31T12:00:00Z", "2m", "2024-01-29T12:00:00Z"),
        ("2025-01-31T12:00:00Z", "11m", "2024-02-29T12:00:00Z"),
        ("2024-02-29T12:00:00Z", "4y", "2020-02-28T12:00:00Z"),
        ("2021-03-31T00:00:00Z", "1m", "2021-02-28T00:00:00Z"),
    ] {
        let raw = filter("is_date_before", json!(value));
        let compiled = compile_property(&raw, CompileOptions::default());
        let at = |v: &str| {
            outcome(match_property_at(
                &compiled,
                Some(PropRef::Str(v)),
                nanos(now),
            ))
        };
        let just_before = boundary
            .replace(":00Z", ":00.999Z")
            .replace("12:00:00.999", "11:59:59.999");
        let just_before = just_before.replace("T00:00:00.999Z", "T00:00:00Z");
        assert_eq!(at(boundary), F, "{now} - {value}");
        if just_before != boundary {
            assert_eq!(at(&just_before), T, "{now} - {value}: {just_before}");
        }
    }
}

#[test]
fn semver_comparisons() {
    check(
        "semver_eq",
        json!("1.2.3"),
        &[
            (json!("1.2.3"), T),
            (json!("1.2.4"), F),
            (json!("1.2.2"), F),
            (json!("2.0.0"), F),
            (json!("1.2.3-alpha.1"), T),
            (json!("v1.2.3"), T),
            (json!(" 1.2.3"), T),
            (json!("1.2.3 "), T),
            (json!("1.2.3.4"), T),
            (json!("abc"), I),
            (json!(""), I),
            (json!(".1.2.3"), I),
            (json!("not-a-version"), I),
            (json!(true), I),
            (json!([1, 2, 3]), I),
            (json!(null), F),
        ],
    );
    check(
        "semver_eq",
        json!("1.2"),
        &[(json!("1.2.0"), T), (json!("1.2.1"), F)],
    );
    check("semver_eq", json!("v1.2.3"), &[(json!("1.2.3"), T)]);
    check(
        "semver_eq",
        json!(1.2),
        &[(json!("1.2.0"), T), (json!(1.2), T)],
    );
    check(
        "semver_eq",
        json!(2),
        &[(json!("2.0.0"), T), (json!(2), T), (json!(2.0), T)],
    );
    check(
        "semver_eq",
        json!("1.0.0"),
        &[(json!(1e16), I), (json!(-1), I), (json!(1.05), I)],
    );
    for value in ["0.1.0", "1.0.0", "0.0.0"] {
        check("semver_eq", json!(value), &[(json!(value), T)]);
    }
    for bad in [
        "01.2.3", "1.02.3", "1.2.03", "01.02.03", "1.07.3", "001.2.3",
    ] {
        check("semver_eq", json!("1.2.3"), &[(json!(bad), I)]);
    }
    check(
        "semver_neq",
        json!("1.2.3"),
        &[
            (json!("1.2.3"), F),
            (json!("1.2.4"), T),
            (json!("2.0.0"), T),
        ],
    );
    check(
        "semver_gt",
        json!("1.2.3"),
        &[
            (json!("1.2.4"), T),
            (json!("1.3.0"), T),
            (json!("2.0.0"), T),
            (json!("1.2.3"), F),
            (json!("1.2.2"), F),
            (json!("0.9.0"), F),
            (json!("1.3.0-beta.1"), T),
            (json!("1.2.2-rc.1"), F),
        ],
    );
    check(
        "semver_gte",
        json!("1.2.3"),
        &[
            (json!("1.2.3"), T),
            (json!("1.2.4"), T),
            (json!("1.2.2"), F),
            (json!("0.9.0"), F),
        ],
    );
    check(
        "semver_gte",
        json!("1.2.3-alpha"),
        &[
            (json!("1.2.3"), T),
            (json!("2.0.0"), T),
            (json!("1.2.2"), F),
        ],
    );
    check(
        "semver_lt",
        json!("1.2.3"),
        &[
            (json!("1.2.2"), T),
            (json!("1.1.0"), T),
            (json!("1.2.3"), F),
            (json!("2.0.0"), F),
        ],
    );
    check(
        "semver_lte",
        json!("1.2.3"),
        &[
            (json!("1.2.3"), T),
            (json!("0.9.0"), T),
            (json!("1.2.4"), F),
        ],
    );
    check(
        "semver_gt",
        json!("0.0.0"),
        &[(json!("0.0.1"), T), (json!("0.0.0"), F)],
    );
    for (operator, bad) in [
        ("semver_gt", "not-valid"),
        ("semver_gt", "01.2.3"),
        ("semver_caret", "1.07.0"),
        ("semver_tilde", "1.07.0"),
        ("semver_wildcard", "01.*"),
        ("semver_gt", "x.y"),
    ] {
        check(
            operator,
            json!(bad),
            &[(json!("1.2.0"), I), (json!("x"), I), (json!(null), F)],
        );
    }
}

#[test]
fn semver_ranges() {
    check(
        "semver_tilde",
        json!("1.2.3"),
        &[
            (json!("1.2.3"), T),
            (json!("1.2.5"), T),
            (json!("1.2.99"), T),
            (json!("1.3.0"), F),
            (json!("1.2.2"), F),
            (json!("2.0.0"), F),
        ],
    );
    check(
        "semver_caret",
        json!("1.2.3"),
        &[
            (json!("1.2.3"), T),
            (json!("1.9.0"), T),
            (json!("1.99.99"), T),
            (json!("2.0.0"), F),
            (json!("1.2.2"), F),
            (json!("0.9.0"), F),
        ],
    );
    check(
        "semver_caret",
        json!("0.2.3"),
        &[
            (json!("0.2.3"), T),
            (json!("0.2.9"), T),
            (json!("0.3.0"), F),
            (json!("1.0.0"), F),
        ],
    );
    check(
        "semver_caret",
        json!("0.0.3"),
        &[
            (json!("0.0.3"), T),
            (json!("0.0.4"), F),
            (json!("0.1.0"), F),
        ],
    );
    check(
        "semver_caret",
        json!("v1.2.3"),
        &[(json!("1.5.0"), T), (json!("2.0.0"), F)],
    );
    check(
        "semver_wildcard",
        json!("1.2.*"),
        &[
            (json!("1.2.0"), T),
            (json!("1.2.5"), T),
            (json!("1.2.99"), T),
            (json!("1.3.0"), F),
            (json!("1.1.9"), F),
            (json!("2.0.0"), F),
            (json!("v1.2.5"), T),
            (json!("v1.3.0"), F),
        ],
    );
    check(
        "semver_wildcard",
        json!("1.*"),
        &[
            (json!("1.0.0"), T),
            (json!("1.99.99"), T),
            (json!("2.0.0"), F),
            (json!("0.9.0"), F),
        ],
    );
}

#[test]
fn string_values_from_the_context() {
    // A `PropRef::Str` (distinct id, group key) is a JSON string.
    let cases = [
        ("exact", json!("User-1"), "user-1", T),
        ("is_not", json!(["a", "b"]), "c", T),
        ("icontains", json!("SER"), "user-1", T),
        ("regex", json!(r"^user-\d$"), "user-1", T),
        ("gt", json!(5), "7", T),
        ("gt", json!(5), " 7", F),
        ("semver_gte", json!("1.0.0"), "v1.2", T),
        ("is_date_after", json!("2020-01-01"), "2021-01-01", T),
        ("is_date_after", json!("2020-01-01"), "later", I),
        ("exact", json!(true), "TRUE", T),
    ];
    for (operator, value, property, want) in cases {
        let compiled = compile_property(&filter(operator, value), CompileOptions::default());
        let got = outcome(match_property_at(
            &compiled,
            Some(PropRef::Str(property)),
            MAY_1_2022,
        ));
        assert_eq!(got, want, "{operator} against {property}");
    }
}
