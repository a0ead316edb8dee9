//! Feature flags: values, the `/flags` service, and what the client builds on them.
//!
//! [`RemoteFlags`] is a `Service<FlagsRequest>` that asks PostHog's `/flags` endpoint; the
//! [`PostHog`](crate::PostHog) client puts it behind `tower::retry` (with
//! [`FlagsRetryPolicy`]) and `tower::timeout`.

mod remote;
mod types;

pub use remote::{error_code, FlagsRetryPolicy, RemoteFlags, RemoteFuture};
pub use types::{
    FlagDetail, FlagMetadata, FlagReason, FlagValue, FlagsRequest, FlagsResponse,
    InvalidFlagsResponse,
};
