//! The process-wide client, for code that cannot be handed one.

use std::sync::{
    atomic::{AtomicU64, Ordering},
    Once, RwLock,
};

use crate::PostHog;

/// The client [`init`] set, if any.
static GLOBAL: RwLock<Option<PostHog>> = RwLock::new(None);

/// Events the integrations that use the process-wide client could not capture for want of
/// one: see [`missed_without_global`].
static MISSED: AtomicU64 = AtomicU64::new(0);

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
    let previous = GLOBAL
        .write()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .replace(client);
    let missed = MISSED.load(Ordering::Relaxed);
    if previous.is_none() && missed > 0 {
        tracing::warn!(
            missed,
            "posthog: events were not captured before posthog_tower::init set a client \
             (panics, tracing events; see posthog_tower::missed_without_global)"
        );
    }
    previous
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

/// The process-wide client for an integration that captures through it, or `None`, having
/// counted the miss (see [`missed_without_global`]): `what` names what was not captured.
pub(crate) fn global_or_count(what: &'static str) -> Option<PostHog> {
    let client = global();
    if client.is_none() {
        let before = MISSED.fetch_add(1, Ordering::Relaxed);
        if before == 0 {
            tracing::warn!(
                what,
                "posthog: not captured: no process-wide client yet (posthog_tower::init); \
                 counted in posthog_tower::missed_without_global"
            );
        } else {
            tracing::debug!(what, "posthog: not captured: no process-wide client");
        }
    }
    client
}

/// How many events the integrations that capture through the process-wide client (the panic
/// hook of [`capture_panics`], [`PostHogTracingLayer::global`](crate::integrations::tracing::PostHogTracingLayer::global))
/// could not capture because no client was set: before [`init`], or after
/// [`take_global`]. Nothing is held back for a client set later; each such event is counted
/// here, the first logged at `WARN` (target `posthog_tower`) and the others at `DEBUG`, and
/// [`init`] logs the count at `WARN` when it finds some. Events they capture while a client is
/// set are that client's, counted in its [`stats`](PostHog::stats) like any other.
///
/// ```
/// let before = posthog_tower::missed_without_global();
/// // … no client set: a panic the hook sees is counted here.
/// assert!(posthog_tower::missed_without_global() >= before);
/// ```
pub fn missed_without_global() -> u64 {
    MISSED.load(Ordering::Relaxed)
}

/// Captures every panic as an unhandled `$exception`, through the process-wide client
/// ([`global`]) as it is when the panic happens, like
/// [`PostHogBuilder::capture_panics`](crate::PostHogBuilder::capture_panics) does through one
/// client: for a program that sets its client up later than its panic hook (or replaces it),
/// or a library that has no client to name. The hook is installed once, however many times
/// this is called, and calls the hook installed before it.
///
/// A panic while no client is set is not captured: it is counted in
/// [`missed_without_global`] and logged. Use this or the builder's `capture_panics`, not
/// both, or each panic is captured twice.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), posthog_tower::BuildError> {
/// posthog_tower::capture_panics();
/// // Later, once the configuration is read:
/// let posthog = posthog_tower::PostHog::builder("phc_project_key").disabled(true).build()?;
/// posthog_tower::init(posthog);
/// # Ok(())
/// # }
/// ```
pub fn capture_panics() {
    static INSTALLED: Once = Once::new();
    INSTALLED.call_once(|| {
        crate::exception::install_panic_hook(|exception| {
            if let Some(posthog) = global_or_count("panic") {
                posthog.capture_panic(exception);
            }
        });
    });
}
