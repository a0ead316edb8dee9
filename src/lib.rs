//! PostHog for Rust, built the tower way: capture events, identify people and groups, evaluate
//! feature flags (remotely or locally), and give axum and tonic servers pageviews and per-request
//! flags, without slowing your application or losing data.
//!
//! Every moving part is a tower [`Service`](tower_service::Service): events go through a
//! bounded, non-blocking queue into a batching worker ([`capture::Batch`]), then
//! `tower::retry` with our [`RetryPolicy`](capture::RetryPolicy), `tower::timeout`, and an HTTP
//! transport ([`capture::CaptureTransport`]) that posts to PostHog's `/batch/` endpoint. The
//! [`PostHog`] client wires them together; you can also assemble them yourself.
//!
//! # Quick start
//!
//! ```no_run
//! use std::time::Duration;
//! use posthog_tower::{Event, PostHog};
//!
//! #[tokio::main]
//! async fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     let posthog = PostHog::builder("phc_your_project_key")
//!         .host("https://eu.i.posthog.com")
//!         .build()?;
//!
//!     // Synchronous, never blocks: the event is validated and queued, or you get an error.
//!     let uuid = posthog.capture(
//!         Event::new("checkout completed", "user-42")
//!             .property("amount", 49.90)
//!             .property("currency", "EUR")
//!             .group("company", "acme"),
//!     )?;
//!     println!("captured {uuid}");
//!
//!     posthog.set("user-42", serde_json::json!({"plan": "pro"}))?;
//!     posthog.group_identify("company", "acme", serde_json::json!({"employees": 40}))?;
//!
//!     // Deliver everything before exiting.
//!     let report = posthog.shutdown(Duration::from_secs(10)).await;
//!     println!("{} delivered, {} failed", report.delivered, report.failed);
//!     Ok(())
//! }
//! ```
//!
//! # Delivery guarantees
//!
//! Every event `capture` accepts is delivered, or its failure is reported: to the `on_error`
//! callback, in [`PostHog::stats`], and in the [`FlushReport`](capture::FlushReport) of the
//! flush or shutdown that covered it. Every event it refuses is an `Err` for the caller (and is
//! counted and reported too). Nothing is dropped with only a log line.
//!
//! # Feature flags (cargo features)
//!
//! - `webpki-roots` (default): trust the Mozilla roots bundled with the crate; without it the
//!   operating system's certificate store is used.
//! - `test-util`: [`testing::MockPostHog`], an in-process PostHog for your tests.
//! - `axum`: axum extractors for [`http::RequestFlags`] and [`context::RequestContext`], and
//!   the matched route and peer address on pageviews.
//! - `error-tracking` (default): the stack trace on `$exception` events ([`exception`]).
//! - `anyhow`, `eyre`: `$exception` events of `anyhow::Error` and `eyre::Report`
//!   (`PostHog::capture_anyhow`, `PostHog::capture_eyre`).
//! - `tracing`: [`integrations::tracing::PostHogTracingLayer`], a `tracing-subscriber` layer
//!   that captures `tracing` errors as `$exception` events.
//! - `sentry`: [`integrations::sentry::PostHogIntegration`], which tags Sentry events with the
//!   PostHog person and captures Sentry's errors in PostHog (`sentry-core` 0.49).
//! - `brotli`, `zstd`: capture v1 bodies encoded with Brotli or Zstandard
//!   ([`capture::Compression`]); gzip and deflate need no feature.
//! - `spool`: an on-disk spool (`PostHogBuilder::spool`) that keeps events through a PostHog
//!   outage and a restart, and sends them once PostHog answers (needs Rust 1.89).
//! - `reqwest`: [`http::PropagateContext`] around a `reqwest::Client`, carrying the caller's
//!   ids to your other services.
//! - `redis`: fleets on Redis: `flags::RedisDefinitionsCache` (one instance fetches the flag
//!   definitions, the others read them from Redis) and `flags::RedisFallbackStore` (the
//!   `/flags` fallback values shared by the fleet), on the `redis` crate (needs Rust 1.88).
//!
//! # Modules
//!
//! The client ([`PostHog`], [`PostHogBuilder`]), events ([`Event`], [`Properties`],
//! [`Timestamp`]) and the errors are at the crate root; the rest by area, each item under one
//! path:
//!
//! - [`capture`]: the batching pipeline as tower services, its [`Stats`](capture::Stats) and
//!   [`FlushReport`](capture::FlushReport).
//! - [`flags`]: feature flags, remote and local evaluation.
//! - [`http`]: the HTTP layer for axum, tonic and any tower HTTP server.
//! - [`context`]: the request context events inherit.
//! - [`exception`]: `$exception` events for error tracking.
//! - [`integrations`]: what captures on your behalf from other crates' hooks and events
//!   (`tracing`, Sentry).
//! - [`net`]: the outbound HTTP client underneath, and its errors.
//! - [`testing`]: the mock PostHog server (feature `test-util`).

#![deny(unsafe_code, unreachable_pub)]
#![warn(
    missing_docs,
    missing_debug_implementations,
    rust_2018_idioms,
    clippy::all,
    clippy::dbg_macro,
    clippy::todo,
    clippy::print_stdout,
    clippy::print_stderr
)]
#![cfg_attr(docsrs, feature(doc_cfg))]
#![cfg_attr(test, allow(clippy::float_cmp))]

/// `get_ref`, `get_mut` and `into_inner` for a middleware whose inner service is `self.inner`
/// (tower-http's convention).
macro_rules! define_inner_service_accessors {
    () => {
        /// Gets a reference to the inner service.
        pub fn get_ref(&self) -> &S {
            &self.inner
        }

        /// Gets a mutable reference to the inner service.
        pub fn get_mut(&mut self) -> &mut S {
            &mut self.inner
        }

        /// Consumes the middleware, returning the inner service.
        pub fn into_inner(self) -> S {
            self.inner
        }
    };
}

/// `get_ref`, `get_mut` and `into_inner` for a leaf service's HTTP client (a field `client`
/// of type `C`).
macro_rules! define_client_accessors {
    () => {
        /// Gets a reference to the HTTP client.
        pub fn get_ref(&self) -> &C {
            &self.client
        }

        /// Gets a mutable reference to the HTTP client.
        pub fn get_mut(&mut self) -> &mut C {
            &mut self.client
        }

        /// Consumes the service, returning the HTTP client.
        pub fn into_inner(self) -> C {
            self.client
        }
    };
}

/// Whether a client was built with [`PostHogBuilder::debug`]: process-wide.
static DEBUG: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether the crate's diagnostics are raised to `INFO` (see [`PostHogBuilder::debug`]).
#[inline]
pub(crate) fn debug_on() -> bool {
    DEBUG.load(std::sync::atomic::Ordering::Relaxed)
}

/// Turns the debug diagnostics on for the process.
pub(crate) fn set_debug(enabled: bool) {
    if enabled {
        DEBUG.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// A diagnostic of the crate's work (a request sent, a retry, a flag decision, an event
/// refused): `DEBUG` under the module's target normally, `INFO` under the target
/// `posthog_tower::debug` once a client is built with [`PostHogBuilder::debug`].
macro_rules! diag {
    ($($arg:tt)+) => {
        if crate::debug_on() {
            tracing::info!(target: "posthog_tower::debug", $($arg)+)
        } else {
            tracing::debug!($($arg)+)
        }
    };
}

/// A property key known at compile time (`crate::event::StaticKey`), checked (no JSON escaping
/// needed) and with its entry's prefix `,"key":` spelled out, at compile time.
macro_rules! static_key {
    ($name:literal) => {{
        const KEY: crate::event::StaticKey =
            crate::event::StaticKey::new($name, concat!(",\"", $name, "\":"));
        KEY
    }};
}

#[cfg(fuzzing)]
#[doc(hidden)]
#[path = "fuzz_api.rs"]
pub mod __fuzz;
pub mod ai;
pub mod capture;
mod client;
pub mod context;
mod error;
mod event;
pub mod exception;
pub mod flags;
pub mod http;
mod id;
pub mod integrations;
pub mod net;
#[cfg(feature = "test-util")]
#[cfg_attr(docsrs, doc(cfg(feature = "test-util")))]
pub mod testing;
mod time;

pub use client::{PostHog, PostHogBuilder, DEFAULT_HOST};
pub use context::tag::tag;
pub use error::{
    BoxError, BuildError, CaptureError, DeadlineElapsed, DeliveryError, DropReason, ErrorReport,
    PropertyError,
};
pub use event::{Event, Properties};
pub use integrations::global::{capture_panics, global, init, missed_without_global, take_global};
pub use time::{Timestamp, TimestampError};
pub use uuid::Uuid;

/// The README's examples, compiled as doctests so they stay true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

/// This crate's version, sent as `$lib_version`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

#[cfg(test)]
mod auto_traits {
    //! Compile-time checks that every public service, layer and future can cross threads
    //! (axum needs `Send + Sync` services; tokio needs `Send` futures).
    use super::*;
    use crate::capture::*;

    fn send_sync<T: Send + Sync>() {}
    fn send<T: Send>() {}

    #[test]
    fn public_types_are_send_and_sync() {
        send_sync::<PostHog>();
        send_sync::<PostHogBuilder>();
        send_sync::<Event>();
        send_sync::<Batch>();
        send_sync::<BatchLayer>();
        send_sync::<BatchConfig>();
        send_sync::<RetryPolicy>();
        send_sync::<EncodedBatch>();
        send_sync::<StatsRecorder>();
        send_sync::<CaptureTransport>();
        send_sync::<V1Transport>();
        send_sync::<V1RetryPolicy>();
        send_sync::<EventResults>();
        send_sync::<EventRefused>();
        send_sync::<V1Failure>();
        send_sync::<Compression>();
        send_sync::<CaptureProtocol>();
        send_sync::<net::HttpClient>();
        send_sync::<CaptureError>();
        send_sync::<ErrorReport>();
        send::<Worker>();
        send::<capture::BatchFuture>();
        send::<
            TransportFuture<
                <net::HttpClient as tower_service::Service<
                    ::http::Request<http_body_util::Full<bytes::Bytes>>,
                >>::Future,
                net::ResponseBody,
            >,
        >();
        send::<
            V1TransportFuture<
                <net::HttpClient as tower_service::Service<
                    ::http::Request<http_body_util::Full<bytes::Bytes>>,
                >>::Future,
                net::ResponseBody,
            >,
        >();
    }

    #[test]
    fn http_layer_types_are_send_and_sync() {
        use crate::http::*;
        type Body = http_body_util::Full<bytes::Bytes>;
        type Inner = tower::util::BoxCloneSyncService<
            ::http::Request<Body>,
            ::http::Response<Body>,
            std::convert::Infallible,
        >;
        type InnerFuture = <Inner as tower_service::Service<::http::Request<Body>>>::Future;
        send_sync::<PostHogLayer>();
        send_sync::<PostHogService<Inner>>();
        send_sync::<SetRequestContextLayer>();
        send_sync::<SetRequestContext<Inner>>();
        send_sync::<InjectFlagsLayer>();
        send_sync::<InjectFlags<Inner>>();
        send_sync::<CapturePageviewsLayer>();
        send_sync::<CapturePageviews<Inner>>();
        send_sync::<RequestFlags>();
        send_sync::<crate::context::RequestContext>();
        send_sync::<DefaultMakeDistinctId>();
        send_sync::<DefaultShouldCapture>();
        send::<SetRequestContextFuture<InnerFuture>>();
        send::<CapturePageviewsFuture<InnerFuture>>();
        send::<context::Scoped<InnerFuture>>();
        send::<<PostHogService<Inner> as tower_service::Service<::http::Request<Body>>>::Future>();
    }

    #[test]
    fn the_ai_layer_types_are_send_and_sync() {
        use crate::integrations::llm::*;
        type Client = crate::net::HttpClient;
        type Request = ::http::Request<http_body_util::Full<bytes::Bytes>>;
        send_sync::<AiLayer>();
        send_sync::<Ai<Client>>();
        send_sync::<TraceId>();
        send_sync::<AiBody<crate::net::ResponseBody>>();
        send::<<Ai<Client> as tower_service::Service<Request>>::Future>();
        send::<ResponseFuture<Client, http_body_util::Full<bytes::Bytes>>>();
    }

    #[cfg(feature = "sentry")]
    #[test]
    fn integration_types_are_send_and_sync() {
        send_sync::<crate::integrations::sentry::PostHogIntegration>();
    }

    #[cfg(feature = "tracing")]
    #[test]
    fn the_tracing_layer_is_send_and_sync() {
        send_sync::<crate::integrations::tracing::PostHogTracingLayer>();
    }
}
