//! The process-wide client, for code that cannot be handed one.

use std::sync::RwLock;

use crate::PostHog;

/// The client [`init`] set, if any.
static GLOBAL: RwLock<Option<PostHog>> = RwLock::new(None);

/// Makes `client` the process-wide client that [`global`] returns, and returns the one it
/// replaces. For code that cannot be handed a client (a library's callback, a logging
/// hook); everywhere else, pass the [`PostHog`] handle itself: both are the same cheap clone
/// of one client, so events captured through either go through one queue.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), posthog_tower::BuildError> {
/// use posthog_tower::{Event, PostHog};
///
/// let posthog = PostHog::builder("phc_project_key").disabled(true).build()?;
/// posthog_tower::init(posthog.clone());
///
/// // Anywhere else in the process:
/// if let Some(posthog) = posthog_tower::global() {
///     let _ = posthog.capture(Event::new("report generated", "user-42"));
/// }
/// # Ok(())
/// # }
/// ```
pub fn init(client: PostHog) -> Option<PostHog> {
    // Every write replaces the value whole: a poisoned lock still holds a valid one.
    let mut slot = GLOBAL
        .write()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    slot.replace(client)
}

/// The process-wide client [`init`] set, if any (a cheap clone).
///
/// ```
/// use posthog_tower::Event;
///
/// fn on_export_finished(user: &str) {
///     // Nothing to do when the application has not set a client up.
///     if let Some(posthog) = posthog_tower::global() {
///         let _ = posthog.capture(Event::new("export finished", user));
///     }
/// }
/// # on_export_finished("user-42");
/// ```
pub fn global() -> Option<PostHog> {
    GLOBAL
        .read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone()
}

/// Removes the process-wide client (before the process exits, say, after its
/// [`shutdown`](PostHog::shutdown)), returning it.
///
/// ```
/// let previous = posthog_tower::take_global();
/// assert!(posthog_tower::global().is_none());
/// # drop(previous);
/// ```
pub fn take_global() -> Option<PostHog> {
    GLOBAL
        .write()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .take()
}
