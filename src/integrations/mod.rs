//! Integrations: what captures on the application's behalf, through the [`PostHog`](crate::PostHog)
//! client, from another crate's hooks and events. Each that needs another crate sits behind the
//! cargo feature of that crate's name.
//!
//! - [`tracing`] (feature `tracing`): a `tracing-subscriber` layer that captures `tracing`
//!   errors as `$exception` events, and the events you choose as PostHog events.
//! - [`sentry`] (feature `sentry`): Sentry events tagged with the PostHog person, and Sentry's
//!   errors as `$exception` events.
//! - [`llm`]: [`AiLayer`](llm::AiLayer), a layer for your outbound HTTP client that captures
//!   one `$ai_generation` per call to an OpenAI-compatible or Anthropic API.
//! - [`init`](crate::init) / [`global`](crate::global): a process-wide client for code that
//!   cannot be handed one.
//!
//! What the crate captures by itself needs no integration: panics
//! ([`PostHogBuilder::capture_panics`](crate::PostHogBuilder::capture_panics)) and failed
//! requests ([`http`](crate::http)).
//!
//! # Example
//!
//! ```
//! # #[cfg(feature = "tracing")]
//! # fn f(posthog: posthog_tower::PostHog) {
//! use posthog_tower::integrations::tracing::PostHogTracingLayer;
//! use tracing_subscriber::layer::SubscriberExt;
//!
//! let subscriber = tracing_subscriber::registry().with(PostHogTracingLayer::new(posthog));
//! # drop(subscriber);
//! # }
//! ```

pub(crate) mod global;
pub mod llm;
#[cfg(feature = "sentry")]
#[cfg_attr(docsrs, doc(cfg(feature = "sentry")))]
pub mod sentry;
#[cfg(feature = "tracing")]
#[cfg_attr(docsrs, doc(cfg(feature = "tracing")))]
pub mod tracing;
