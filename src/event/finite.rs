//! Converting property values to JSON without silently losing NaN and infinities, and
//! without recursing into values nested deeper than PostHog can read.
//!
//! `serde_json::to_value` turns a non-finite `f32`/`f64` into `null`, which would quietly
//! corrupt an analytics property. The conversions here go through `serde_json`'s own
//! serializers (so results are identical), wrapped in [`Checked`], which rejects NaN and
//! ±infinity wherever they occur (struct fields, sequences, tuples, map keys and values,
//! options, newtypes and enum variants) and refuses to enter a 101st level of arrays and
//! objects: it stops there, so a value nested 10 000 levels deep costs 101 levels of stack,
//! never 10 000.

use std::cell::Cell;
use std::fmt;

use serde::ser::{self, Serialize, Serializer};

use crate::error::PropertyError;

/// The message of the error for NaN or an infinity.
const NON_FINITE: &str = "property value is not finite (NaN or infinity): JSON cannot represent it";

/// The deepest nesting of arrays and objects a property value may have: with the batch and
/// event around it, JSON parsers' usual limit of 128 levels stays out of reach.
pub(crate) const MAX_DEPTH: usize = 100;

/// Like [`serde_json::to_value`], but fails instead of writing `null` for a NaN or infinite
/// `f32`/`f64` anywhere inside `value`, and fails without going deeper when `value` nests
/// more than [`MAX_DEPTH`] levels.
///
/// Other failures (a map key that is not a string, number, bool or char; a `Serialize` impl
/// that errors) carry `serde_json`'s message. On success the result is exactly what
/// `serde_json::to_value` returns.
pub(crate) fn to_value<T: Serialize + ?Sized>(
    value: &T,
) -> Result<serde_json::Value, PropertyError> {
    let found = Found::default();
    let result = value.serialize(Checked::new(serde_json::value::Serializer, &found));
    found.result(result)
}

/// Appends `value` to `out` as the compact JSON of [`to_value`]'s result, with its checks.
/// A single string, number, boolean or null is written directly; an array or object goes
/// through a [`serde_json::Value`], which also merges repeated keys (a map type may yield
/// the same key twice, and parsers read such objects differently).
pub(crate) fn write<T: Serialize + ?Sized>(
    out: &mut Vec<u8>,
    value: &T,
) -> Result<(), PropertyError> {
    if super::json::write_simple(out, value) {
        return Ok(());
    }
    let value = to_value(value)?;
    super::write_json(out, &value);
    Ok(())
}

/// Gives up `value` after it was converted: dropped as usual, unless the conversion found it
/// nested too deep. Then it is leaked instead, since dropping it could recurse as deep as it
/// nests and overflow the stack (`serde_json::Value`'s `Drop` does, serde-rs/json#440); the
/// caller got the error, and a warning is logged. Values passed by reference are never
/// dropped here.
pub(crate) fn give_up<T, R>(value: T, result: &Result<R, PropertyError>) {
    if matches!(result, Err(e) if e.is_too_deep()) {
        tracing::warn!(
            "posthog: a property value nested more than {MAX_DEPTH} levels deep was refused and, \
             since dropping it could overflow the stack, leaked; pass such values by reference"
        );
        std::mem::forget(value);
    }
}

/// What a [`Checked`] serializer found, besides what the inner serializer reports.
#[derive(Default)]
struct Found {
    non_finite: Cell<bool>,
    too_deep: Cell<bool>,
}

impl Found {
    fn result<R, E: fmt::Display>(&self, result: Result<R, E>) -> Result<R, PropertyError> {
        match result {
            Ok(value) => Ok(value),
            Err(_) if self.too_deep.get() => Err(PropertyError::too_deep(MAX_DEPTH)),
            Err(_) if self.non_finite.get() => Err(PropertyError::new(NON_FINITE)),
            Err(err) => Err(PropertyError::new(format!(
                "property could not be serialized: {err}"
            ))),
        }
    }
}

/// A serializer that forwards everything to `inner`, except that a non-finite float, and an
/// array or object at a depth beyond [`MAX_DEPTH`], records what it found and fails (before
/// the inner serializer goes any deeper). Nested values are wrapped in [`Guarded`] so the
/// checks reach every level.
struct Checked<'a, S> {
    inner: S,
    found: &'a Found,
    /// Levels of arrays and objects around the value being serialized.
    depth: usize,
}

impl<'a, S: Serializer> Checked<'a, S> {
    fn new(inner: S, found: &'a Found) -> Self {
        Checked {
            inner,
            found,
            depth: 0,
        }
    }

    fn non_finite(&self) -> S::Error {
        self.found.non_finite.set(true);
        ser::Error::custom(NON_FINITE)
    }

    /// The depth of what a container opened here holds, or an error when `levels` more
    /// levels (1, or 2 for a variant wrapping an array or object) would be too deep.
    fn enter(&self, levels: usize) -> Result<usize, S::Error> {
        let depth = self.depth + levels;
        if depth > MAX_DEPTH {
            self.found.too_deep.set(true);
            return Err(ser::Error::custom("nested too deep"));
        }
        Ok(depth)
    }

    fn guard<'v, T: ?Sized>(&self, value: &'v T, depth: usize) -> Guarded<'v, T>
    where
        'a: 'v,
    {
        Guarded {
            value,
            found: self.found,
            depth,
        }
    }
}

/// A value to serialize through a [`Checked`] serializer, `depth` levels down.
struct Guarded<'a, T: ?Sized> {
    value: &'a T,
    found: &'a Found,
    depth: usize,
}

impl<T: Serialize + ?Sized> Serialize for Guarded<'_, T> {
    #[inline]
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.value.serialize(Checked {
            inner: serializer,
            found: self.found,
            depth: self.depth,
        })
    }
}

/// The compound-serializer side of [`Checked`]: its elements are `depth` levels down.
struct Compound<'a, C> {
    inner: C,
    found: &'a Found,
    depth: usize,
}

impl<'a, C> Compound<'a, C> {
    #[inline]
    fn guard<'v, T: ?Sized>(&self, value: &'v T) -> Guarded<'v, T>
    where
        'a: 'v,
    {
        Guarded {
            value,
            found: self.found,
            depth: self.depth,
        }
    }
}

macro_rules! forward {
    ($($method:ident($ty:ty);)*) => {
        $(
            #[inline]
            fn $method(self, v: $ty) -> Result<S::Ok, S::Error> {
                self.inner.$method(v)
            }
        )*
    };
}

impl<'a, S: Serializer> Serializer for Checked<'a, S> {
    type Ok = S::Ok;
    type Error = S::Error;
    type SerializeSeq = Compound<'a, S::SerializeSeq>;
    type SerializeTuple = Compound<'a, S::SerializeTuple>;
    type SerializeTupleStruct = Compound<'a, S::SerializeTupleStruct>;
    type SerializeTupleVariant = Compound<'a, S::SerializeTupleVariant>;
    type SerializeMap = Compound<'a, S::SerializeMap>;
    type SerializeStruct = Compound<'a, S::SerializeStruct>;
    type SerializeStructVariant = Compound<'a, S::SerializeStructVariant>;

    forward! {
        serialize_bool(bool);
        serialize_i8(i8);
        serialize_i16(i16);
        serialize_i32(i32);
        serialize_i64(i64);
        serialize_u8(u8);
        serialize_u16(u16);
        serialize_u32(u32);
        serialize_u64(u64);
        serialize_char(char);
        serialize_str(&str);
        serialize_bytes(&[u8]);
        serialize_unit_struct(&'static str);
    }

    /// Within `i64` or `u64` only, as `serde_json::Value` holds numbers (PostHog reads wider
    /// integers as floats, losing digits).
    #[inline]
    fn serialize_i128(self, v: i128) -> Result<S::Ok, S::Error> {
        if let Ok(v) = i64::try_from(v) {
            self.inner.serialize_i64(v)
        } else if let Ok(v) = u64::try_from(v) {
            self.inner.serialize_u64(v)
        } else {
            Err(ser::Error::custom("number out of range"))
        }
    }

    /// Within `u64` only, as [`serialize_i128`](Self::serialize_i128).
    #[inline]
    fn serialize_u128(self, v: u128) -> Result<S::Ok, S::Error> {
        match u64::try_from(v) {
            Ok(v) => self.inner.serialize_u64(v),
            Err(_) => Err(ser::Error::custom("number out of range")),
        }
    }

    #[inline]
    fn serialize_f32(self, v: f32) -> Result<S::Ok, S::Error> {
        if v.is_finite() {
            self.inner.serialize_f32(v)
        } else {
            Err(self.non_finite())
        }
    }

    #[inline]
    fn serialize_f64(self, v: f64) -> Result<S::Ok, S::Error> {
        if v.is_finite() {
            self.inner.serialize_f64(v)
        } else {
            Err(self.non_finite())
        }
    }

    #[inline]
    fn serialize_none(self) -> Result<S::Ok, S::Error> {
        self.inner.serialize_none()
    }

    #[inline]
    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result<S::Ok, S::Error> {
        let value = self.guard(value, self.depth);
        self.inner.serialize_some(&value)
    }

    #[inline]
    fn serialize_unit(self) -> Result<S::Ok, S::Error> {
        self.inner.serialize_unit()
    }

    #[inline]
    fn serialize_unit_variant(
        self,
        name: &'static str,
        variant_index: u32,
        variant: &'static str,
    ) -> Result<S::Ok, S::Error> {
        self.inner
            .serialize_unit_variant(name, variant_index, variant)
    }

    #[inline]
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        name: &'static str,
        value: &T,
    ) -> Result<S::Ok, S::Error> {
        let value = self.guard(value, self.depth);
        self.inner.serialize_newtype_struct(name, &value)
    }

    #[inline]
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        name: &'static str,
        variant_index: u32,
        variant: &'static str,
        value: &T,
    ) -> Result<S::Ok, S::Error> {
        // `{"variant": value}`: one level of object around the value.
        let depth = self.enter(1)?;
        let value = self.guard(value, depth);
        self.inner
            .serialize_newtype_variant(name, variant_index, variant, &value)
    }

    #[inline]
    fn serialize_seq(self, len: Option<usize>) -> Result<Self::SerializeSeq, S::Error> {
        let (found, depth) = (self.found, self.enter(1)?);
        let inner = self.inner.serialize_seq(len)?;
        Ok(Compound {
            inner,
            found,
            depth,
        })
    }

    #[inline]
    fn serialize_tuple(self, len: usize) -> Result<Self::SerializeTuple, S::Error> {
        let (found, depth) = (self.found, self.enter(1)?);
        let inner = self.inner.serialize_tuple(len)?;
        Ok(Compound {
            inner,
            found,
            depth,
        })
    }

    #[inline]
    fn serialize_tuple_struct(
        self,
        name: &'static str,
        len: usize,
    ) -> Result<Self::SerializeTupleStruct, S::Error> {
        let (found, depth) = (self.found, self.enter(1)?);
        let inner = self.inner.serialize_tuple_struct(name, len)?;
        Ok(Compound {
            inner,
            found,
            depth,
        })
    }

    #[inline]
    fn serialize_tuple_variant(
        self,
        name: &'static str,
        variant_index: u32,
        variant: &'static str,
        len: usize,
    ) -> Result<Self::SerializeTupleVariant, S::Error> {
        let (found, depth) = (self.found, self.enter(2)?);
        let inner = self
            .inner
            .serialize_tuple_variant(name, variant_index, variant, len)?;
        Ok(Compound {
            inner,
            found,
            depth,
        })
    }

    #[inline]
    fn serialize_map(self, len: Option<usize>) -> Result<Self::SerializeMap, S::Error> {
        let (found, depth) = (self.found, self.enter(1)?);
        let inner = self.inner.serialize_map(len)?;
        Ok(Compound {
            inner,
            found,
            depth,
        })
    }

    #[inline]
    fn serialize_struct(
        self,
        name: &'static str,
        len: usize,
    ) -> Result<Self::SerializeStruct, S::Error> {
        let (found, depth) = (self.found, self.enter(1)?);
        let inner = self.inner.serialize_struct(name, len)?;
        Ok(Compound {
            inner,
            found,
            depth,
        })
    }

    #[inline]
    fn serialize_struct_variant(
        self,
        name: &'static str,
        variant_index: u32,
        variant: &'static str,
        len: usize,
    ) -> Result<Self::SerializeStructVariant, S::Error> {
        let (found, depth) = (self.found, self.enter(2)?);
        let inner = self
            .inner
            .serialize_struct_variant(name, variant_index, variant, len)?;
        Ok(Compound {
            inner,
            found,
            depth,
        })
    }

    #[inline]
    fn collect_str<T: fmt::Display + ?Sized>(self, value: &T) -> Result<S::Ok, S::Error> {
        // Text has no floats in it: let the inner serializer do it its way.
        self.inner.collect_str(value)
    }

    #[inline]
    fn is_human_readable(&self) -> bool {
        self.inner.is_human_readable()
    }
}

impl<C: ser::SerializeSeq> ser::SerializeSeq for Compound<'_, C> {
    type Ok = C::Ok;
    type Error = C::Error;

    #[inline]
    fn serialize_element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), C::Error> {
        let value = self.guard(value);
        self.inner.serialize_element(&value)
    }

    #[inline]
    fn end(self) -> Result<C::Ok, C::Error> {
        self.inner.end()
    }
}

impl<C: ser::SerializeTuple> ser::SerializeTuple for Compound<'_, C> {
    type Ok = C::Ok;
    type Error = C::Error;

    #[inline]
    fn serialize_element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), C::Error> {
        let value = self.guard(value);
        self.inner.serialize_element(&value)
    }

    #[inline]
    fn end(self) -> Result<C::Ok, C::Error> {
        self.inner.end()
    }
}

impl<C: ser::SerializeTupleStruct> ser::SerializeTupleStruct for Compound<'_, C> {
    type Ok = C::Ok;
    type Error = C::Error;

    #[inline]
    fn serialize_field<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), C::Error> {
        let value = self.guard(value);
        self.inner.serialize_field(&value)
    }

    #[inline]
    fn end(self) -> Result<C::Ok, C::Error> {
        self.inner.end()
    }
}

impl<C: ser::SerializeTupleVariant> ser::SerializeTupleVariant for Compound<'_, C> {
    type Ok = C::Ok;
    type Error = C::Error;

    #[inline]
    fn serialize_field<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), C::Error> {
        let value = self.guard(value);
        self.inner.serialize_field(&value)
    }

    #[inline]
    fn end(self) -> Result<C::Ok, C::Error> {
        self.inner.end()
    }
}

impl<C: ser::SerializeMap> ser::SerializeMap for Compound<'_, C> {
    type Ok = C::Ok;
    type Error = C::Error;

    #[inline]
    fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> Result<(), C::Error> {
        let key = self.guard(key);
        self.inner.serialize_key(&key)
    }

    #[inline]
    fn serialize_value<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), C::Error> {
        let value = self.guard(value);
        self.inner.serialize_value(&value)
    }

    #[inline]
    fn serialize_entry<K: Serialize + ?Sized, V: Serialize + ?Sized>(
        &mut self,
        key: &K,
        value: &V,
    ) -> Result<(), C::Error> {
        let key = self.guard(key);
        let value = self.guard(value);
        self.inner.serialize_entry(&key, &value)
    }

    #[inline]
    fn end(self) -> Result<C::Ok, C::Error> {
        self.inner.end()
    }
}

impl<C: ser::SerializeStruct> ser::SerializeStruct for Compound<'_, C> {
    type Ok = C::Ok;
    type Error = C::Error;

    #[inline]
    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> Result<(), C::Error> {
        let value = self.guard(value);
        self.inner.serialize_field(key, &value)
    }

    #[inline]
    fn skip_field(&mut self, key: &'static str) -> Result<(), C::Error> {
        self.inner.skip_field(key)
    }

    #[inline]
    fn end(self) -> Result<C::Ok, C::Error> {
        self.inner.end()
    }
}

impl<C: ser::SerializeStructVariant> ser::SerializeStructVariant for Compound<'_, C> {
    type Ok = C::Ok;
    type Error = C::Error;

    #[inline]
    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> Result<(), C::Error> {
        let value = self.guard(value);
        self.inner.serialize_field(key, &value)
    }

    #[inline]
    fn skip_field(&mut self, key: &'static str) -> Result<(), C::Error> {
        self.inner.skip_field(key)
    }

    #[inline]
    fn end(self) -> Result<C::Ok, C::Error> {
        self.inner.end()
    }
}

#[cfg(test)]
mod tests {
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
        let nested: Vec<Vec<Option<(f64, Shape)>>> =
            vec![vec![Some((1.0, Shape::Circle(2.0))), None]];
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
}
