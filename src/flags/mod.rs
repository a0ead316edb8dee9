//! Feature flags: values, the `/flags` service, and what the client builds on them.
//!
//! [`RemoteFlags`] is a `Service<FlagsRequest>` that asks PostHog's `/flags` endpoint; the
//! [`PostHog`](crate::PostHog) client puts it behind `tower::retry` (with
//! [`FlagsRetryPolicy`]) and `tower::timeout`.

mod cache;
mod called;
mod coalesce;
mod decide;
mod dedup;
mod error;
mod evaluations;
mod fallback;
mod local;
mod local_flags;
#[cfg(feature = "redis")]
mod redis;
mod remote;
mod remote_config;
mod request;
mod response;
mod result;
mod value;

pub(crate) use called::{ReadAttribution, ReportFlagCalled};
pub(crate) use decide::{Decide, DecideConfig, PolledDefinitions, RemoteStack};
#[cfg(feature = "__bench")]
#[doc(hidden)]
pub use evaluations::FlagCalledBench;
pub use evaluations::{FlagEvaluations, FlagRecord};
pub use result::{AllFlags, FeatureFlagResult};

pub use cache::{BoxFuture, CachedDefinitions, DefinitionsCache};
pub use fallback::{FallbackStore, MemoryFallbackStore};
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use redis::{RedisDefinitionsCache, RedisFallbackStore};

pub use coalesce::{Coalesce, CoalesceFuture, CoalesceLayer, SharedError};
pub(crate) use dedup::FlagCalledDedup;
pub use error::FlagError;
pub use local_flags::LocalFlags;
// The fuzz targets drive the compiled definitions directly.
#[cfg(fuzzing)]
pub(crate) use local::{compiled::CompiledFlags, eval_context};

pub(crate) use remote::error_code;
pub use remote::{FlagsRetryPolicy, RemoteFlags, RemoteFuture};
pub(crate) use remote_config::RemoteConfig;
pub use remote_config::RemoteConfigError;
pub(crate) use request::put_group_property;
pub use request::FlagsRequest;
pub use response::{FlagDetail, FlagMetadata, FlagReason, FlagsResponse, InvalidFlagsResponse};
pub use value::FlagValue;
