use super::*;
use serde::Serialize;
use serde_json::json;
use std::collections::{BTreeMap, HashMap};

fn nested(levels: usize) -> serde_json::Value {
    let mut v = json!(1);
    for i in 0..levels {
        v = if i % 2 == 0 {
            json!([v])
        } else {
            json!({ "k": v })
        };
    }
    v
}

#[test]
fn nesting_is_limited() {
    assert!(to_value(&nested(MAX_DEPTH)).is_ok());
    let err = to_value(&nested(MAX_DEPTH + 1)).unwrap_err();
    assert!(err.to_string().contains("nested"), "{err}");
    // Deep nesting elsewhere does not matter, only the deepest branch.
    assert!(to_value(&json!([[1], nested(MAX_DEPTH - 1)])).is_ok());
}

#[derive(Serialize)]
struct Inner {
    ratio: f64,
    label: &'static str,
}

#[derive(Serialize)]
struct Outer {
    id: u32,
    inner: Inner,
    scores: Vec<f32>,
    maybe: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    skipped: Option<f64>,
}

#[derive(Serialize)]
struct Newtype(f64);

#[derive(Serialize)]
struct TupleStruct(i8, f64);

#[derive(Serialize)]
struct Unit;

#[derive(Serialize)]
enum Shape {
    Empty,
    Circle(f64),
    Rect(f64, f64),
    Named { width: f64, height: f32 },
}

#[derive(Serialize)]
#[serde(tag = "kind")]
enum Tagged {
    A { x: f64 },
}

#[derive(Serialize)]
#[serde(untagged)]
enum Untagged {
    Num(f64),
}

#[derive(Serialize)]
struct Flattened {
    a: u8,
    #[serde(flatten)]
    rest: HashMap<String, f64>,
}

fn assert_same<T: Serialize + ?Sized>(value: &T) {
    let ours = to_value(value).unwrap_or_else(|e| panic!("unexpected error: {e}"));
    let theirs = serde_json::to_value(value).unwrap();
    assert_eq!(ours, theirs);
    // Byte-for-byte too (e.g. f32 widening, integer kinds).
    assert_eq!(
        serde_json::to_string(&ours).unwrap(),
        serde_json::to_string(&theirs).unwrap()
    );
}

fn assert_non_finite<T: Serialize + ?Sized>(value: &T) {
    let err = to_value(value).unwrap_err();
    assert_eq!(err.message(), NON_FINITE);
    assert_eq!(err.to_string(), NON_FINITE);
}

fn finite_outer() -> Outer {
    Outer {
        id: 7,
        inner: Inner {
            ratio: 0.25,
            label: "x",
        },
        scores: vec![1.5, -2.0, 0.1],
        maybe: Some(1e300),
        skipped: None,
    }
}

#[test]
fn top_level_non_finite() {
    for v in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY, -f64::NAN] {
        assert_non_finite(&v);
    }
    for v in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
        assert_non_finite(&v);
    }
}

#[test]
fn nested_non_finite() {
    for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
        assert_non_finite(&vec![1.0, bad]);
        assert_non_finite(&[vec![1.0], vec![2.0, bad]]);
        assert_non_finite(&HashMap::from([("a", 1.0), ("b", bad)]));
        assert_non_finite(&BTreeMap::from([("a", vec![Some(bad)])]));
        assert_non_finite(&Some(bad));
        assert_non_finite(&Some(Some(bad)));
        assert_non_finite(&(1, "two", bad));
        assert_non_finite(&Newtype(bad));
        assert_non_finite(&TupleStruct(1, bad));
        assert_non_finite(&Shape::Circle(bad));
        assert_non_finite(&Shape::Rect(1.0, bad));
        assert_non_finite(&Shape::Named {
            width: 1.0,
            height: bad as f32,
        });
        assert_non_finite(&Shape::Named {
            width: bad,
            height: 1.0,
        });
        assert_non_finite(&Tagged::A { x: bad });
        assert_non_finite(&Untagged::Num(bad));
        assert_non_finite(&Flattened {
            a: 1,
            rest: HashMap::from([("z".to_owned(), bad)]),
        });

        let mut o = finite_outer();
        o.inner.ratio = bad;
        assert_non_finite(&o);
        let mut o = finite_outer();
        o.scores.push(bad as f32);
        assert_non_finite(&o);
        let mut o = finite_outer();
        o.maybe = Some(bad);
        assert_non_finite(&o);
        let mut o = finite_outer();
        o.skipped = Some(bad);
        assert_non_finite(&o);

        // As a map key too (serde_json would refuse it anyway).
        let mut keyed = BTreeMap::new();
        keyed.insert(OrdF64(bad), 1);
        assert_non_finite(&keyed);
    }
}

/// An f64 usable as a map key, for the key path.
#[derive(Serialize)]
struct OrdF64(f64);
impl PartialEq for OrdF64 {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other).is_eq()
    }
}
impl Eq for OrdF64 {}
impl PartialOrd for OrdF64 {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for OrdF64 {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&other.0)
    }
}

#[test]
fn finite_values_match_serde_json() {
    assert_same(&finite_outer());
    assert_same(&Shape::Empty);
    assert_same(&Shape::Circle(2.5));
    assert_same(&Shape::Rect(1.0, -0.0));
    assert_same(&Shape::Named {
        width: f64::MAX,
        height: f32::MIN_POSITIVE,
    });
    assert_same(&Tagged::A { x: 5e-324 });
    assert_same(&Untagged::Num(0.1));
    assert_same(&Flattened {
        a: 1,
        rest: HashMap::from([("z".to_owned(), 3.25)]),
    });
    assert_same(&Newtype(1.0));
    assert_same(&TupleStruct(-1, 2.0));
    assert_same(&Unit);
    assert_same(&());
    assert_same(&None::<f64>);
    assert_same(&Some(1.1f32));
    assert_same(&1.1f32);
    assert_same(&(1u8, -2i16, 3u32, -4i64, u64::MAX, i64::MIN, true, 'c', "s"));
    assert_same(&(i128::MAX >> 70, u128::from(u64::MAX)));
    assert_same(&"quote\" backslash\\ newline\n \u{1} é 😀");
    assert_same(&String::from("owned"));
    assert_same(&vec![Some(1), None]);
    assert_same(&serde_json::Value::Null);
    assert_same(&json!({"a": [1, 2.5, {"b": null}], "c": "d", "e": -0.0}));
    assert_same(&HashMap::from([("k", vec![0.5f64; 3])]));
    assert_same(&serde_bytes_like());
    assert_same(&std::net::Ipv4Addr::LOCALHOST); // collect_str / Display path
    assert_same(&std::time::Duration::from_millis(1500)); // struct with u64 + u32
    let nested: Vec<Vec<Option<(f64, Shape)>>> = vec![vec![Some((1.0, Shape::Circle(2.0))), None]];
    assert_same(&nested);
    let dynamic: &dyn erased::Dyn = &3.5f64;
    assert_same(&erased::Wrapper(dynamic));
}

/// A `&[u8]` serialized through `serialize_bytes`.
fn serde_bytes_like() -> impl Serialize {
    struct Bytes;
    impl Serialize for Bytes {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            s.serialize_bytes(&[0, 1, 255])
        }
    }
    Bytes
}

/// An unsized value behind `?Sized` bounds.
mod erased {
    use serde::{Serialize, Serializer};

    pub(super) trait Dyn {
        fn get(&self) -> f64;
    }
    impl Dyn for f64 {
        fn get(&self) -> f64 {
            *self
        }
    }
    pub(super) struct Wrapper<'a>(pub(super) &'a dyn Dyn);
    impl Serialize for Wrapper<'_> {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            s.serialize_f64(self.0.get())
        }
    }
}

#[test]
fn unsized_input() {
    let slice: &[f64] = &[1.0, 2.0];
    assert_eq!(to_value(slice).unwrap(), json!([1.0, 2.0]));
    let bad: &[f64] = &[1.0, f64::NAN];
    assert_non_finite(bad);
    let s: &str = "text";
    assert_eq!(to_value(s).unwrap(), json!("text"));
}

#[test]
fn map_keys() {
    let tuple_keys = HashMap::from([((1, 2), "a")]);
    let err = to_value(&tuple_keys).unwrap_err();
    assert_eq!(
        err.message(),
        "property could not be serialized: key must be a string"
    );
    assert!(serde_json::to_value(&tuple_keys).is_err());

    let vec_keys = BTreeMap::from([(vec![1], 1)]);
    assert!(to_value(&vec_keys)
        .unwrap_err()
        .message()
        .starts_with("property could not be serialized: "));

    assert_same(&BTreeMap::from([(1, "one"), (-2, "minus two")]));
    assert_same(&BTreeMap::from([(u64::MAX, 1.5)]));
    assert_same(&BTreeMap::from([(true, 1)]));
    assert_same(&BTreeMap::from([('c', 1)]));
    assert_same(&BTreeMap::from([(OrdF64(1.5), 1)]));
    assert_eq!(
        to_value(&BTreeMap::from([(1, "one")])).unwrap(),
        json!({"1": "one"})
    );
}

#[test]
fn serialize_errors_propagate() {
    struct Failing;
    impl Serialize for Failing {
        fn serialize<S: Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
            Err(ser::Error::custom("nope"))
        }
    }
    let err = to_value(&vec![Failing]).unwrap_err();
    assert_eq!(err.message(), "property could not be serialized: nope");
    assert_eq!(err.clone(), err);
    let _: &dyn std::error::Error = &err;
    assert_eq!(PropertyError::new("m").to_string(), "m");
}

#[test]
fn swallowed_element_error_still_succeeds() {
    // A Serialize impl that recovers from a failed element leaves no NaN
    // behind, so the conversion stands.
    struct Recovering;
    impl Serialize for Recovering {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            use serde::ser::SerializeSeq;
            let mut seq = s.serialize_seq(None)?;
            if seq.serialize_element(&f64::NAN).is_err() {
                seq.serialize_element(&0)?;
            }
            seq.end()
        }
    }
    assert_eq!(to_value(&Recovering).unwrap(), json!([0]));
}
