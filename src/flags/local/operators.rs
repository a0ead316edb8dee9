//! Property filters: compiled once per definitions change, matched per evaluation.
//! (Stub: the exact operator semantics are being written.)

use serde_json::Value;

use super::{Inconclusive, PropRef};

/// A compiled person or group property filter.
#[derive(Debug)]
pub(crate) struct CompiledProperty {
    pub(crate) key: String,
    value: Value,
}

/// Definitions-wide settings that change how filters match.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct CompileOptions {
    /// `property_matching_version` from the definitions response (1 when absent).
    pub(crate) property_matching_version: u32,
}

/// Compiles one property filter (`{"key", "value", "operator", "type"}`) from the definitions.
/// Never fails: what cannot be compiled matches as inconclusive (or as no match where PostHog
/// says so).
pub(crate) fn compile_property(raw: &Value, _options: CompileOptions) -> CompiledProperty {
    CompiledProperty {
        key: raw
            .get("key")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned(),
        value: raw.get("value").cloned().unwrap_or(Value::Null),
    }
}

/// Matches a compiled filter against the property value (`None`: the key is missing).
pub(crate) fn match_property(
    property: &CompiledProperty,
    value: Option<PropRef<'_>>,
) -> Result<bool, Inconclusive> {
    let Some(value) = value else {
        return Err(Inconclusive("missing property"));
    };
    Ok(match value {
        PropRef::Json(v) => *v == property.value,
        PropRef::Str(s) => property.value.as_str() == Some(s),
    })
}
