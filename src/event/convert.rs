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
mod tests;
