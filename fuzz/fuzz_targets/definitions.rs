//! `/flags/definitions` bytes → parse → compile → evaluate every flag for fixed persons and
//! for persons derived from the definitions themselves (so property filters both match and
//! miss). Must never panic; evaluation is deterministic and the public `LocalFlags` agrees with
//! the client's evaluator.
#![no_main]

use libfuzzer_sys::fuzz_target;
use posthog_tower::__fuzz::Definitions;
use posthog_tower::flags::{FlagError, FlagsRequest, LocalFlags};
use serde_json::{json, Map, Value};

fuzz_target!(|data: &[u8]| {
    let compiled = Definitions::from_json(data);
    let local = LocalFlags::from_definitions(data);
    assert_eq!(compiled.is_ok(), local.is_ok());
    let (Ok(compiled), Ok(local)) = (compiled, local) else {
        return;
    };
    let keys: Vec<&str> = compiled.keys().collect();
    assert!(keys.iter().copied().eq(local.keys()));
    let _ = compiled.minimal_flag_called_events();
    let _ = format!("{local:?}");

    let raw: Value = serde_json::from_slice(data).unwrap();
    let requests = requests(&raw);
    for request in &requests {
        for key in keys.iter().copied().chain(["\u{0}missing"]) {
            let first = compiled.evaluate(key, request);
            let again = compiled.evaluate(key, request);
            assert_eq!(first, again, "evaluation of {key:?} is not deterministic");
            let public = local.evaluate(key, request);
            match (&first, &public) {
                (Ok((value, _)), Ok(public)) => assert_eq!(value, public),
                (Err(_), Err(FlagError::Inconclusive)) => {}
                _ => panic!("{key:?}: client {first:?}, LocalFlags {public:?}"),
            }
        }
    }
});

/// Fixed persons, plus persons whose properties are the values the definitions' filters test
/// (as given, and perturbed), in every group the mapping names.
fn requests(raw: &Value) -> Vec<FlagsRequest> {
    let mut filters = Vec::new();
    collect_filters(raw, &mut filters, 0);
    let group_types: Vec<String> = raw
        .get("group_type_mapping")
        .and_then(Value::as_object)
        .map(|m| {
            m.values()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();

    let mut requests = vec![
        FlagsRequest::new("user-1"),
        FlagsRequest::new(""),
        FlagsRequest::new("distinct_id_42")
            .device_id("device-7")
            .person_property("email", "ada@example.com")
            .person_property("age", 36)
            .person_property("$browser", "Chrome")
            .group("company", "acme")
            .group_property("company", "plan", "enterprise"),
    ];
    for (variant, perturb) in [(0, false), (1, true)] {
        let mut person = Map::new();
        let mut group_props = Map::new();
        for (key, kind, value) in &filters {
            let value = if perturb {
                perturbed(value)
            } else {
                first(value)
            };
            match kind.as_str() {
                "group" => group_props.insert(key.clone(), value),
                _ => person.insert(key.clone(), value),
            };
        }
        let mut request = FlagsRequest::new(format!("derived-{variant}"))
            .device_id(format!("device-{variant}"))
            .person_properties(person);
        for group_type in &group_types {
            request = request
                .group(group_type.clone(), format!("{group_type}-{variant}"))
                .group_properties(group_type.clone(), group_props.clone());
        }
        requests.push(request);
    }
    requests
}

/// `(key, type, value)` of every object that looks like a property filter.
fn collect_filters(value: &Value, out: &mut Vec<(String, String, Value)>, depth: usize) {
    if depth > 64 || out.len() > 256 {
        return;
    }
    match value {
        Value::Object(map) => {
            if let (Some(Value::String(key)), Some(v)) = (map.get("key"), map.get("value")) {
                let kind = map.get("type").and_then(Value::as_str).unwrap_or("person");
                out.push((key.clone(), kind.to_owned(), v.clone()));
            }
            for v in map.values() {
                collect_filters(v, out, depth + 1);
            }
        }
        Value::Array(items) => {
            for v in items {
                collect_filters(v, out, depth + 1);
            }
        }
        _ => {}
    }
}

fn first(value: &Value) -> Value {
    match value {
        Value::Array(items) => items.first().cloned().unwrap_or(Value::Null),
        other => other.clone(),
    }
}

fn perturbed(value: &Value) -> Value {
    match first(value) {
        Value::Number(n) => match n.as_f64() {
            Some(f) if n.is_f64() => json!(f + 1.5),
            _ => json!(n.as_i64().unwrap_or(0).wrapping_add(1)),
        },
        Value::String(s) => Value::String(format!("{s}x")),
        Value::Bool(b) => Value::Bool(!b),
        Value::Null => json!("null"),
        other => other,
    }
}
