//! `LocalFlags`: flag definitions compiled for in-process evaluation.

use std::{fmt, sync::Arc};

use super::{
    local::{compiled::CompiledFlags, eval_context},
    FlagError, FlagValue, FlagsRequest,
};

/// Flag definitions (the body of PostHog's `/flags/definitions`), compiled once and evaluated
/// in-process without I/O, locks or (for boolean flags) allocation.
///
/// The [`PostHog`](crate::PostHog) client builds and refreshes this itself when given a
/// [personal API key](crate::PostHogBuilder::personal_api_key); use it directly for tests,
/// for definitions you fetch yourself, or to measure evaluation. Cloning is cheap.
///
/// # Example
///
/// ```
/// use posthog_tower::flags::{FlagError, FlagValue, FlagsRequest, LocalFlags};
///
/// let flags = LocalFlags::from_definitions(br#"{
///     "flags": [{"id": 1, "key": "beta", "active": true, "filters": {"groups": [
///         {"properties": [{"key": "plan", "value": "pro", "operator": "exact", "type": "person"}],
///          "rollout_percentage": 100}]}}],
///     "group_type_mapping": {}, "cohorts": {}
/// }"#).unwrap();
///
/// let pro = FlagsRequest::new("user-1").person_property("plan", "pro");
/// assert_eq!(flags.evaluate("beta", &pro), Ok(FlagValue::Bool(true)));
/// // Without `plan` the answer depends on what PostHog knows: local evaluation cannot decide.
/// assert_eq!(flags.evaluate("beta", &FlagsRequest::new("user-1")), Err(FlagError::Inconclusive));
/// ```
#[derive(Clone)]
pub struct LocalFlags {
    compiled: Arc<CompiledFlags>,
}

impl LocalFlags {
    /// Compiles a `/flags/definitions` response body.
    pub fn from_definitions(json: &[u8]) -> Result<Self, FlagError> {
        CompiledFlags::from_json(json)
            .map(|compiled| LocalFlags {
                compiled: Arc::new(compiled),
            })
            .map_err(|e| FlagError::InvalidResponse(e.to_string()))
    }

    pub(crate) fn from_compiled(compiled: Arc<CompiledFlags>) -> Self {
        LocalFlags { compiled }
    }

    /// Evaluates one flag for the request's person, groups and properties.
    /// [`FlagError::Inconclusive`] when it cannot be decided exactly in-process (the server
    /// must be asked), including for a key not in the definitions.
    pub fn evaluate(&self, key: &str, request: &FlagsRequest) -> Result<FlagValue, FlagError> {
        let ctx = eval_context(request);
        self.compiled
            .evaluate(key, &ctx)
            .map(|m| m.value)
            .map_err(|_| FlagError::Inconclusive)
    }

    /// The keys of every defined flag.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.compiled.keys()
    }
}

impl fmt::Debug for LocalFlags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalFlags")
            .field("flags", &self.compiled.keys().count())
            .finish()
    }
}
