//! Integrations: what captures on the application's behalf, through the [`PostHog`](crate::PostHog)
//! client, from another library's hooks. Each that needs another crate sits behind a cargo
//! feature of that crate's name.
//!
//! - [`sentry`] (feature `sentry`): Sentry events tagged with the PostHog person, and Sentry's
//!   errors as `$exception` events.
//!
//! # Example
//!
//! ```no_run
//! # #[cfg(feature = "sentry")]
//! # fn f(posthog: posthog_tower::PostHog) {
//! use posthog_tower::integrations::sentry::PostHogIntegration;
//!
//! let _guard = sentry::init(
//!     sentry::ClientOptions::new().add_integration(PostHogIntegration::new(posthog)),
//! );
//! # }
//! ```

#[cfg(feature = "sentry")]
#[cfg_attr(docsrs, doc(cfg(feature = "sentry")))]
pub mod sentry;
