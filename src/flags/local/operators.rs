//! Person and group property filters: compiled once per definitions change, matched per
//! evaluation.
//!
//! The semantics are posthog-python 7.91.1's `match_property` (`posthog/feature_flags.py`),
//! operator by operator:
//!
//! * The operator defaults to `exact` when absent or falsy (`null`, `""`, `false`, `0`); an
//!   unknown operator is inconclusive, before anything else.
//! * A key missing from the properties is inconclusive (`is_set` / `is_not_set` too). A present
//!   key, even with a null value, makes `is_set` true and `is_not_set` false.
//! * `gt` / `gte` / `lt` / `lte` compare numbers only: the filter must be a finite number or a
//!   strict numeric string (`[+-]?(digits[.digits*]|.digits)([eE][+-]?digits)?`), else the
//!   filter is inconclusive, whatever the value; a value that is not such a number (bools,
//!   null, lists, `" 7"`) does not match.
//! * Any other operator but `exact`, `is_not` and the string family (`icontains`,
//!   `starts_with`, `ends_with`, `regex` and their negations) does not match a null value.
//! * `exact` / `is_not` compare the Unicode-lowercased (Python `str.lower`, not `casefold`)
//!   JSON-style text of both sides (a list filter matches any of its items). A filter of `[]`
//!   tests the value's truthiness; under `property_matching_version` other than 2, a filter
//!   made of booleans or `"true"`/`"false"` strings (or a list of them) compares truthiness.
//! * The string family lowercases ASCII letters only and compares JSON-style text (null is
//!   `null`). Regexes run locally only in the syntax Python and the service's Rust engine read
//!   alike; an invalid pattern matches nothing (`regex` and `not_regex` alike); the empty
//!   pattern matches everything.
//! * Dates: the filter is relative (`-?N[hdwmy]`, N < 10000, calendar months and years) or
//!   an ISO date; the value must be a date string.
//! * Semver: `(major, minor, patch)` tuples; an unparseable value is inconclusive.
//!
//! `negation` is not applied here: posthog-python honours it only for entries of cohort
//! property groups, which the caller evaluates ([`CompiledProperty::negation`]).

mod dates;
mod pattern;
mod semver;
mod text;

use std::collections::HashSet;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::Value;

use self::dates::{DateFilter, Micros};
use self::pattern::Pattern;
use self::semver::Version;
use self::text::{
    ascii_contains, ascii_ends_with, ascii_lower, ascii_starts_with, json_text, lower_eq,
    prop_text, python_str, StackBuf, Text,
};
use super::{Inconclusive, PropRef};

/// Inconclusive because the filter itself cannot be evaluated locally, whatever the
/// properties (posthog-python's `UNSUPPORTED_DEFINITION`). Every such reason starts with
/// `"unsupported definition"`.
const UNKNOWN_OPERATOR: &str = "unsupported definition: unknown operator";
const BAD_NUMBER_FILTER: &str = "unsupported definition: numeric filter is not a finite number";
const BAD_DATE_FILTER: &str = "unsupported definition: date filter is not a valid date";
const DATE_OUT_OF_RANGE: &str = "unsupported definition: date filter is out of range";
const BAD_SEMVER_FILTER: &str = "unsupported definition: semver filter is not a valid version";
const BAD_REGEX_FILTER: &str = "unsupported definition: regex filter is a list or an object";

/// Inconclusive because of the properties given (posthog-python's `MISSING_CONTEXT`). Every
/// such reason starts with `"missing context"`.
const MISSING_PROPERTY: &str = "missing context: property not given";
const BAD_DATE_VALUE: &str = "missing context: property is not a date string";
const BAD_SEMVER_VALUE: &str = "missing context: property is not a valid semver";

/// Whether an inconclusive filter result is due to the properties given rather than the
/// definition (posthog-python's `MISSING_CONTEXT` versus `UNSUPPORTED_DEFINITION`).
#[allow(dead_code)] // for logs that tell missing context from unsupported definitions
pub(crate) fn is_missing_context(reason: &Inconclusive) -> bool {
    reason.0.starts_with("missing context")
}

/// Definitions-wide settings that change how filters match.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct CompileOptions {
    /// `property_matching_version` from the definitions response (1 when absent). Only 2
    /// selects explicit boolean matching; every other value is the legacy behaviour.
    pub(crate) property_matching_version: u32,
}

/// A compiled person or group property filter.
#[derive(Debug)]
pub(crate) struct CompiledProperty {
    /// The property the filter reads.
    pub(crate) key: String,
    /// The entry's `negation` flag. posthog-python applies it only to entries of cohort
    /// property groups (inverting a conclusive result); it is not applied by
    /// [`match_property`].
    #[allow(dead_code)] // applied by cohort groups, not by the filter itself
    pub(crate) negation: bool,
    /// Whether `key` was a string in the definition (otherwise nothing can match).
    key_is_string: bool,
    op: Op,
}

#[derive(Debug)]
enum Op {
    /// An unknown operator: always inconclusive.
    Unknown,
    IsSet,
    IsNotSet,
    Exact {
        negated: bool,
        filter: ExactFilter,
    },
    Text {
        kind: TextKind,
        negated: bool,
        /// The filter's text with ASCII letters lowered.
        needle: Box<str>,
    },
    Regex {
        negated: bool,
        pattern: Result<Pattern, &'static str>,
    },
    Numeric {
        cmp: Cmp,
        filter: Result<f64, &'static str>,
    },
    Date {
        before: bool,
        filter: Result<DateFilter, &'static str>,
    },
    Semver {
        cmp: SemverCmp,
        filter: Result<SemverFilter, &'static str>,
    },
}

#[derive(Debug)]
enum ExactFilter {
    /// `[]`: the value's truthiness.
    Truthy,
    /// A boolean-like filter (legacy matching): the value's truthiness equals this.
    Truthiness(bool),
    /// The lowered text of a scalar filter.
    One(Box<str>),
    /// The lowered texts of a list filter's items (a set too when the list is long).
    AnyOf(Vec<Box<str>>, Option<HashSet<Box<str>>>),
}

#[derive(Clone, Copy, Debug)]
enum TextKind {
    Contains,
    StartsWith,
    EndsWith,
}

#[derive(Clone, Copy, Debug)]
enum Cmp {
    Gt,
    Gte,
    Lt,
    Lte,
}

#[derive(Clone, Copy, Debug)]
enum SemverCmp {
    Eq,
    Neq,
    Gt,
    Gte,
    Lt,
    Lte,
    /// Tilde, caret and wildcard: within the filter's bounds.
    Range,
}

#[derive(Clone, Copy, Debug)]
enum SemverFilter {
    Version(Version),
    Bounds(Version, Version),
}

/// Lists longer than this are matched through a hash set.
const ANY_OF_SET_THRESHOLD: usize = 16;

/// Python truthiness of a JSON value: `false`, `null`, `0`, `""`, `[]`, `{}` are falsy.
fn python_truthy(value: &Value) -> bool {
    match value {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64() != Some(0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
    }
}

/// `_is_truthy_or_falsy_property_value`: a boolean, `"true"`/`"false"` in any case, or a list
/// of them. Recursive, over filter values, which nest at most 128 levels (the definitions'
/// parser limit).
fn is_boolean_like(value: &Value) -> bool {
    match value {
        Value::Bool(_) => true,
        Value::String(s) => s.eq_ignore_ascii_case("true") || s.eq_ignore_ascii_case("false"),
        Value::Array(items) => items.iter().all(is_boolean_like),
        _ => false,
    }
}

/// `_is_truthy_property_value`: `true`, `"true"` in any case, or a list of only those (so `[]`
/// is truthy); anything else is not. Recursive, over filter values (at most 128 levels deep)
/// and property values (at most 100: `FlagsRequest` leaves deeper ones out).
fn is_truthy(value: PropRef<'_>) -> bool {
    fn json(value: &Value) -> bool {
        match value {
            Value::Bool(b) => *b,
            Value::String(s) => s.eq_ignore_ascii_case("true"),
            Value::Array(items) => items.iter().all(json),
            _ => false,
        }
    }
    match value {
        PropRef::Str(s) => s.eq_ignore_ascii_case("true"),
        PropRef::Json(v) => json(v),
    }
}

fn lowered(value: &Value) -> Box<str> {
    json_text(value).to_lowercase().into_boxed_str()
}

fn compile_exact(value: &Value, options: CompileOptions) -> ExactFilter {
    if matches!(value, Value::Array(items) if items.is_empty()) {
        return ExactFilter::Truthy;
    }
    if options.property_matching_version != 2 && is_boolean_like(value) {
        return ExactFilter::Truthiness(is_truthy(PropRef::Json(value)));
    }
    match value {
        Value::Array(items) => {
            let texts: Vec<Box<str>> = items.iter().map(lowered).collect();
            let set = (texts.len() > ANY_OF_SET_THRESHOLD).then(|| texts.iter().cloned().collect());
            ExactFilter::AnyOf(texts, set)
        }
        scalar => ExactFilter::One(lowered(scalar)),
    }
}

/// `_parse_numeric_value`: a finite number, or a string of the strict numeric form.
fn parse_number(value: PropRef<'_>) -> Option<f64> {
    let parsed = match value {
        PropRef::Json(Value::Number(n)) => n.as_f64()?,
        PropRef::Json(Value::String(s)) => parse_numeric_str(s)?,
        PropRef::Str(s) => parse_numeric_str(s)?,
        PropRef::Json(_) => return None,
    };
    parsed.is_finite().then_some(parsed)
}

/// `[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?`, then Python's `float`.
fn parse_numeric_str(s: &str) -> Option<f64> {
    let b = s.as_bytes();
    let digits = |from: usize| b[from..].iter().take_while(|c| c.is_ascii_digit()).count();
    let mut i = usize::from(matches!(b.first(), Some(b'+' | b'-')));
    let int = digits(i);
    i += int;
    let mut frac = 0;
    if b.get(i) == Some(&b'.') {
        frac = digits(i + 1);
        i += 1 + frac;
    }
    if int == 0 && frac == 0 {
        return None;
    }
    if matches!(b.get(i), Some(b'e' | b'E')) {
        let sign = usize::from(matches!(b.get(i + 1), Some(b'+' | b'-')));
        let exp = digits(i + 1 + sign);
        if exp == 0 {
            return None;
        }
        i += 1 + sign + exp;
    }
    if i != b.len() {
        return None;
    }
    s.parse().ok()
}

/// Python's `str()` of a filter value, for the operators that read it that way (regex, date,
/// semver); `None` for lists and objects.
fn filter_text(value: &Value) -> Option<Text<'_>> {
    python_str(value)
}

fn compile_semver(operator: &str, value: &Value) -> Result<SemverFilter, &'static str> {
    let text = filter_text(value).ok_or(BAD_SEMVER_FILTER)?;
    let filter = match operator {
        "semver_tilde" => semver::tilde_bounds(&text).map(|(l, u)| SemverFilter::Bounds(l, u)),
        "semver_caret" => semver::caret_bounds(&text).map(|(l, u)| SemverFilter::Bounds(l, u)),
        "semver_wildcard" => {
            semver::wildcard_bounds(&text).map(|(l, u)| SemverFilter::Bounds(l, u))
        }
        _ => semver::parse(&text).map(SemverFilter::Version),
    };
    filter.ok_or(BAD_SEMVER_FILTER)
}

fn compile_date(value: &Value) -> Result<DateFilter, &'static str> {
    let text = filter_text(value).ok_or(BAD_DATE_FILTER)?;
    dates::parse_filter(&text).ok_or(BAD_DATE_FILTER)
}

fn compile_op(operator: &str, value: &Value, options: CompileOptions) -> Op {
    let text_op = |kind, negated| Op::Text {
        kind,
        negated,
        needle: ascii_lower(&json_text(value)).into_boxed_str(),
    };
    let numeric = |cmp| Op::Numeric {
        cmp,
        filter: parse_number(PropRef::Json(value)).ok_or(BAD_NUMBER_FILTER),
    };
    let semver = |cmp| Op::Semver {
        cmp,
        filter: compile_semver(operator, value),
    };
    match operator {
        "exact" | "is_not" => Op::Exact {
            negated: operator == "is_not",
            filter: compile_exact(value, options),
        },
        "is_set" => Op::IsSet,
        "is_not_set" => Op::IsNotSet,
        "icontains" => text_op(TextKind::Contains, false),
        "not_icontains" => text_op(TextKind::Contains, true),
        "starts_with" => text_op(TextKind::StartsWith, false),
        "not_starts_with" => text_op(TextKind::StartsWith, true),
        "ends_with" => text_op(TextKind::EndsWith, false),
        "not_ends_with" => text_op(TextKind::EndsWith, true),
        "regex" | "not_regex" => Op::Regex {
            negated: operator == "not_regex",
            pattern: filter_text(value)
                .map(|text| pattern::compile(&text))
                .ok_or(BAD_REGEX_FILTER),
        },
        "gt" => numeric(Cmp::Gt),
        "gte" => numeric(Cmp::Gte),
        "lt" => numeric(Cmp::Lt),
        "lte" => numeric(Cmp::Lte),
        "is_date_before" | "is_date_after" => Op::Date {
            before: operator == "is_date_before",
            filter: compile_date(value),
        },
        "semver_eq" => semver(SemverCmp::Eq),
        "semver_neq" => semver(SemverCmp::Neq),
        "semver_gt" => semver(SemverCmp::Gt),
        "semver_gte" => semver(SemverCmp::Gte),
        "semver_lt" => semver(SemverCmp::Lt),
        "semver_lte" => semver(SemverCmp::Lte),
        "semver_tilde" | "semver_caret" | "semver_wildcard" => semver(SemverCmp::Range),
        _ => Op::Unknown,
    }
}

/// Compiles one property filter (`{"key", "value", "operator", "type", "negation"}`) from the
/// definitions. Never fails: a filter that cannot be evaluated locally compiles to one that
/// answers inconclusive (or no match, where posthog-python says so).
pub(crate) fn compile_property(raw: &Value, options: CompileOptions) -> CompiledProperty {
    let key = raw.get("key").and_then(Value::as_str);
    let value = raw.get("value").unwrap_or(&Value::Null);
    // `property.get("operator") or "exact"`: any falsy operator means `exact`.
    let op = match raw.get("operator") {
        None => compile_op("exact", value, options),
        Some(Value::String(operator)) if !operator.is_empty() => {
            compile_op(operator, value, options)
        }
        Some(operator) if !python_truthy(operator) => compile_op("exact", value, options),
        Some(_) => Op::Unknown,
    };
    CompiledProperty {
        key: key.unwrap_or_default().to_owned(),
        negation: raw.get("negation").is_some_and(python_truthy),
        key_is_string: key.is_some(),
        op,
    }
}

impl CompiledProperty {
    /// The reason the filter is inconclusive whatever the properties, if it is (a relative or
    /// bare-year date filter depends on the time).
    fn unsupported_at(&self, now: impl Fn() -> Micros) -> Option<&'static str> {
        match &self.op {
            Op::Date {
                filter: Ok(filter), ..
            } if !matches!(filter, DateFilter::Parsed(dates::Parsed::At(_))) => {
                dates::resolve_filter(*filter, now())
                    .is_none()
                    .then_some(DATE_OUT_OF_RANGE)
            }
            Op::Unknown => Some(UNKNOWN_OPERATOR),
            Op::Numeric { filter: Err(e), .. }
            | Op::Date { filter: Err(e), .. }
            | Op::Semver { filter: Err(e), .. }
            | Op::Regex {
                pattern: Err(e), ..
            } => Some(e),
            Op::Regex {
                pattern: Ok(Pattern::Deferred(e)),
                ..
            } => Some(e),
            _ => None,
        }
    }
}

fn now_micros() -> Micros {
    match SystemTime::now().duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_micros()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_micros()).unwrap_or(i64::MAX),
    }
}

/// Matches a compiled filter against the property value (`None`: the key is missing from the
/// properties). Relative dates are computed from the current UTC time.
pub(crate) fn match_property(
    property: &CompiledProperty,
    value: Option<PropRef<'_>>,
) -> Result<bool, Inconclusive> {
    match_with_clock(property, value, now_micros)
}

/// [`match_property`] with the current time given, in nanoseconds since the Unix epoch.
#[cfg_attr(not(test), allow(dead_code))]
pub(crate) fn match_property_at(
    property: &CompiledProperty,
    value: Option<PropRef<'_>>,
    now_unix_nanos: i128,
) -> Result<bool, Inconclusive> {
    // Python's clock has microsecond resolution.
    let micros = now_unix_nanos.div_euclid(1000);
    let micros = i64::try_from(micros).unwrap_or(if micros < 0 { i64::MIN } else { i64::MAX });
    match_with_clock(property, value, || micros)
}

fn match_with_clock(
    property: &CompiledProperty,
    value: Option<PropRef<'_>>,
    now: impl Fn() -> Micros,
) -> Result<bool, Inconclusive> {
    if let Op::Unknown = property.op {
        return Err(Inconclusive(UNKNOWN_OPERATOR));
    }
    // A key that is not a string is never among the properties.
    let Some(value) = value.filter(|_| property.key_is_string) else {
        // A filter that cannot be evaluated outranks the missing property.
        return Err(Inconclusive(
            property.unsupported_at(now).unwrap_or(MISSING_PROPERTY),
        ));
    };
    match match_value(&property.op, value, &now) {
        // An unusable filter outranks a value it cannot read.
        Err(reason) if reason.starts_with("missing context") => {
            Err(property.unsupported_at(now).unwrap_or(reason))
        }
        other => other,
    }
    .map_err(Inconclusive)
}

fn is_null(value: PropRef<'_>) -> bool {
    matches!(value, PropRef::Json(Value::Null))
}

fn match_value(
    op: &Op,
    value: PropRef<'_>,
    now: &impl Fn() -> Micros,
) -> Result<bool, &'static str> {
    match op {
        Op::Unknown => Err(UNKNOWN_OPERATOR),
        Op::IsSet => Ok(true),
        Op::IsNotSet => Ok(false),
        Op::Numeric { cmp, filter } => {
            let filter = (*filter)?;
            let Some(value) = parse_number(value) else {
                return Ok(false);
            };
            Ok(match cmp {
                Cmp::Gt => value > filter,
                Cmp::Gte => value >= filter,
                Cmp::Lt => value < filter,
                Cmp::Lte => value <= filter,
            })
        }
        Op::Exact { negated, filter } => Ok(match_exact(filter, value) != *negated),
        Op::Text {
            kind,
            negated,
            needle,
        } => {
            let text = prop_text(value);
            let matched = match kind {
                TextKind::Contains => ascii_contains(&text, needle),
                TextKind::StartsWith => ascii_starts_with(&text, needle),
                TextKind::EndsWith => ascii_ends_with(&text, needle),
            };
            Ok(matched != *negated)
        }
        Op::Regex { negated, pattern } => match pattern.as_ref().map_err(|e| *e)? {
            Pattern::Empty => Ok(!negated),
            Pattern::Invalid => Ok(false),
            Pattern::Deferred(reason) => Err(reason),
            Pattern::Compiled(regex) => Ok(regex.search(&prop_text(value))? != *negated),
        },
        // The remaining operators do not match a null value.
        _ if is_null(value) => Ok(false),
        Op::Date { before, filter } => {
            let filter = (*filter)?;
            // Python reads the filter's date first: a filter out of range is the definition's
            // fault, whatever the value.
            let parsed = match value {
                PropRef::Str(s) => dates::parse_datetime(s),
                PropRef::Json(Value::String(s)) => dates::parse_datetime(s),
                PropRef::Json(_) => None,
            };
            let needs_clock = !matches!(filter, DateFilter::Parsed(dates::Parsed::At(_)))
                || matches!(parsed, Some(dates::Parsed::YearOnly(_)));
            let now = if needs_clock { now() } else { 0 };
            let filter = dates::resolve_filter(filter, now).ok_or(DATE_OUT_OF_RANGE)?;
            let value = parsed
                .and_then(|parsed| dates::resolve(parsed, now))
                .ok_or(BAD_DATE_VALUE)?;
            Ok(if *before {
                value < filter
            } else {
                value > filter
            })
        }
        Op::Semver { cmp, filter } => {
            let filter = (*filter)?;
            let version = semver_value(value).ok_or(BAD_SEMVER_VALUE)?;
            Ok(match (cmp, filter) {
                (SemverCmp::Range, SemverFilter::Bounds(lower, upper)) => {
                    lower <= version && version < upper
                }
                (SemverCmp::Eq, SemverFilter::Version(f)) => version == f,
                (SemverCmp::Neq, SemverFilter::Version(f)) => version != f,
                (SemverCmp::Gt, SemverFilter::Version(f)) => version > f,
                (SemverCmp::Gte, SemverFilter::Version(f)) => version >= f,
                (SemverCmp::Lt, SemverFilter::Version(f)) => version < f,
                (SemverCmp::Lte, SemverFilter::Version(f)) => version <= f,
                _ => return Err(BAD_SEMVER_FILTER),
            })
        }
    }
}

/// `parse_semver(str(value))` of a property value.
fn semver_value(value: PropRef<'_>) -> Option<Version> {
    match value {
        PropRef::Str(s) => semver::parse(s),
        PropRef::Json(v) => semver::parse(&python_str(v)?),
    }
}

fn match_exact(filter: &ExactFilter, value: PropRef<'_>) -> bool {
    match filter {
        ExactFilter::Truthy => is_truthy(value),
        ExactFilter::Truthiness(want) => is_truthy(value) == *want,
        ExactFilter::One(lowered) => lower_eq(&prop_text(value), lowered),
        ExactFilter::AnyOf(items, set) => {
            let text = prop_text(value);
            match set {
                None => items.iter().any(|item| lower_eq(&text, item)),
                Some(set) => {
                    if text.is_ascii() {
                        let mut buf = StackBuf::<64>::new();
                        if std::fmt::Write::write_str(&mut buf, &text).is_ok() {
                            buf.make_ascii_lowercase();
                            return set.contains(buf.as_str());
                        }
                    }
                    set.contains(text.to_lowercase().as_str())
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
