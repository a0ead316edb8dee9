//! Local evaluation: flag definitions polled from PostHog, compiled once, evaluated in-process.

pub(crate) mod compiled;
pub(crate) mod definitions;
pub(crate) mod environments;
pub(crate) mod hash;
pub(crate) mod matcher;
pub(crate) mod operators;
pub(crate) mod poller;

/// The matcher's input for `request`: who, and the properties and groups it carries.
pub(crate) fn eval_context(request: &super::FlagsRequest) -> matcher::EvalContext<'_> {
    matcher::EvalContext {
        distinct_id: &request.distinct_id,
        device_id: request.device_id.as_deref(),
        person_properties: &request.person_properties,
        groups: &request.groups,
        group_properties: &request.group_properties,
    }
}

/// Local evaluation cannot decide this flag exactly: ask the server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Inconclusive(pub(crate) &'static str);

/// A property value as the matcher sees it: a JSON value from the caller's properties, or a
/// string the context supplies (the distinct id, a group key) without allocating.
#[derive(Clone, Copy, Debug)]
pub(crate) enum PropRef<'a> {
    Json(&'a serde_json::Value),
    Str(&'a str),
}

impl poller::Compile for compiled::CompiledFlags {
    fn compile(body: &[u8]) -> Result<Self, String> {
        compiled::CompiledFlags::from_json(body).map_err(|e| e.to_string())
    }

    fn empty() -> Self {
        compiled::CompiledFlags::compile(&definitions::Definitions::default())
    }
}
