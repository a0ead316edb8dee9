//! [`FlagValue`]: a flag's value.

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A flag's value: on or off for a boolean flag, or the variant of a multivariate flag.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(untagged)]
pub enum FlagValue {
    /// A boolean flag (or a multivariate flag that matched no variant): on or off.
    Bool(bool),
    /// The variant a multivariate flag chose.
    Variant(String),
}

impl FlagValue {
    /// `true` unless the flag is off (`Bool(false)`): a variant counts as enabled.
    pub fn is_enabled(&self) -> bool {
        !matches!(self, FlagValue::Bool(false))
    }

    /// The variant, if this is a multivariate value.
    pub fn variant(&self) -> Option<&str> {
        match self {
            FlagValue::Variant(v) => Some(v),
            FlagValue::Bool(_) => None,
        }
    }

    pub(crate) fn to_json(&self) -> Value {
        match self {
            FlagValue::Bool(b) => Value::Bool(*b),
            FlagValue::Variant(v) => Value::String(v.clone()),
        }
    }
}

impl fmt::Display for FlagValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FlagValue::Bool(b) => write!(f, "{b}"),
            FlagValue::Variant(v) => f.write_str(v),
        }
    }
}

impl From<bool> for FlagValue {
    fn from(b: bool) -> Self {
        FlagValue::Bool(b)
    }
}

impl From<&str> for FlagValue {
    fn from(v: &str) -> Self {
        FlagValue::Variant(v.to_owned())
    }
}
