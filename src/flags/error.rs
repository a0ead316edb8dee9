use std::fmt;

use crate::BoxError;

/// Why a flag has no value: the caller decides the fallback.
///
/// "Flag off" is not an error (it is `Ok(FlagValue::Bool(false))`); "flag unknown" is
/// [`FlagError::Missing`]; every other variant means the flag could not be evaluated.
///
/// ```
/// # use posthog_tower::flags::{FlagError, FlagValue};
/// fn show_new_checkout(result: Result<bool, FlagError>) -> bool {
///     match result {
///         Ok(enabled) => enabled,
///         Err(FlagError::Missing) => false, // no such flag
///         Err(_) => false,                  // PostHog unreachable: fail closed
///     }
/// }
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum FlagError {
    /// PostHog does not know this flag (or did not evaluate it).
    Missing,
    /// The project's feature flags are quota limited.
    QuotaLimited,
    /// The `/flags` request timed out.
    Timeout,
    /// PostHog could not be reached.
    Connection(String),
    /// PostHog answered with an unexpected status.
    Status(u16),
    /// PostHog's answer could not be understood.
    InvalidResponse(String),
    /// Local evaluation could not decide and the caller asked not to go to the network.
    Inconclusive,
    /// The client is disabled.
    Disabled,
    /// PostHog answered for the flag but could not evaluate it (its `/flags?v=4` record says
    /// `failed`).
    EvaluationFailed,
    /// A payload could not be decoded into the requested type.
    InvalidPayload(String),
    /// Something else went wrong.
    Other(String),
}

impl FlagError {
    /// The `$feature_flag_error` code: `flag_missing`, `quota_limited`, `timeout`,
    /// `connection_error`, `api_error_<status>`, `evaluation_failed` or `unknown_error`.
    pub fn code(&self) -> String {
        match self {
            FlagError::Missing => "flag_missing".to_owned(),
            FlagError::QuotaLimited => "quota_limited".to_owned(),
            FlagError::Timeout => "timeout".to_owned(),
            FlagError::Connection(_) => "connection_error".to_owned(),
            FlagError::Status(status) => format!("api_error_{status}"),
            FlagError::EvaluationFailed => "evaluation_failed".to_owned(),
            _ => "unknown_error".to_owned(),
        }
    }

    /// Classifies an error from the flags stack.
    pub(crate) fn from_service(error: &BoxError) -> Self {
        match super::error_code(error).as_str() {
            "timeout" => FlagError::Timeout,
            "connection_error" => FlagError::Connection(error.to_string()),
            code if code.starts_with("api_error_") => code["api_error_".len()..]
                .parse()
                .map(FlagError::Status)
                .unwrap_or_else(|_| FlagError::Other(error.to_string())),
            _ if find::<super::InvalidFlagsResponse>(error) => {
                FlagError::InvalidResponse(error.to_string())
            }
            _ => FlagError::Other(error.to_string()),
        }
    }
}

fn find<T: std::error::Error + 'static>(error: &BoxError) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&**error);
    while let Some(e) = source {
        if e.is::<T>() {
            return true;
        }
        source = e.source();
    }
    false
}

impl fmt::Display for FlagError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FlagError::Missing => f.write_str("flag not found"),
            FlagError::QuotaLimited => f.write_str("feature flags are quota limited"),
            FlagError::Timeout => f.write_str("the /flags request timed out"),
            FlagError::Connection(e) => write!(f, "could not reach PostHog: {e}"),
            FlagError::Status(s) => write!(f, "PostHog answered {s} to /flags"),
            FlagError::InvalidResponse(e) => write!(f, "invalid /flags response: {e}"),
            FlagError::Inconclusive => f.write_str(
                "local evaluation was inconclusive and remote evaluation was not allowed",
            ),
            FlagError::Disabled => f.write_str("the client is disabled"),
            FlagError::EvaluationFailed => f.write_str("PostHog could not evaluate the flag"),
            FlagError::InvalidPayload(e) => write!(f, "payload could not be decoded: {e}"),
            FlagError::Other(e) => write!(f, "flag evaluation failed: {e}"),
        }
    }
}

impl std::error::Error for FlagError {}
