//! [`tag`]: posthog-python's `tag()`, for the current context.

use super::RequestContext;
use crate::PropertyError;

/// Tags every event captured from now on in the current [request context](RequestContext)
/// (the request's pageview and exceptions included) with the property `key`, as
/// posthog-python's `tag()` does: `Ok(true)`, or `Ok(false)` outside a context (nothing to
/// tag). See [`RequestContext::tag`].
///
/// ```
/// # async fn handler() {
/// // In a handler behind `PostHogLayer`:
/// let _ = posthog_tower::tag("plan", "pro");
/// # }
/// ```
pub fn tag(key: impl Into<String>, value: impl serde::Serialize) -> Result<bool, PropertyError> {
    match RequestContext::current() {
        Some(ctx) => ctx.tag(key, value).map(|()| true),
        None => Ok(false),
    }
}
