//! [`DefinitionsCache`]: flag definitions shared by a fleet, so that one instance fetches them
//! from PostHog and the others read them from a shared store.

use std::{fmt, future::Future, pin::Pin, sync::Arc};

use bytes::Bytes;

use crate::BoxError;

/// The boxed, `Send` future the cache traits return (object safe, so a client can hold any
/// implementation as `Arc<dyn DefinitionsCache>`).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// One stored set of flag definitions: the `/flags/definitions` body exactly as PostHog sent
/// it, its `ETag`, and the version the store gave it.
///
/// The body is compiled and validated by each reader like a response from PostHog: a body
/// that does not compile is logged and ignored, and the definitions already loaded stay.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct CachedDefinitions {
    /// Changes whenever the stored definitions change; opaque to the client.
    pub version: String,
    /// PostHog's `ETag` for `body`, sent as `If-None-Match` by whichever instance fetches next.
    pub etag: Option<String>,
    /// The `/flags/definitions` response body (JSON).
    pub body: Bytes,
}

impl CachedDefinitions {
    /// Definitions stored under `version`.
    ///
    /// ```
    /// use posthog_tower::flags::CachedDefinitions;
    ///
    /// let stored = CachedDefinitions::new("7", Some("\"abc\"".into()), r#"{"flags":[]}"#);
    /// assert_eq!(stored.version, "7");
    /// ```
    pub fn new(version: impl Into<String>, etag: Option<String>, body: impl Into<Bytes>) -> Self {
        CachedDefinitions {
            version: version.into(),
            etag,
            body: body.into(),
        }
    }
}

impl fmt::Debug for CachedDefinitions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CachedDefinitions")
            .field("version", &self.version)
            .field("etag", &self.etag)
            .field("body_len", &self.body.len())
            .finish()
    }
}

/// A shared cache of flag definitions, consulted by the definitions poller before every
/// fetch (posthog-python's `FlagDefinitionCacheProvider`, with the same four operations).
///
/// Install one with
/// [`PostHogBuilder::flag_definitions_cache`](crate::PostHogBuilder::flag_definitions_cache).
/// Each poll, the poller:
///
/// 1. [`read`](Self::read)s the cache and compiles what it holds if it is newer than what the
///    client has (a new client therefore evaluates locally before any request to PostHog);
/// 2. asks [`should_fetch`](Self::should_fetch) whether this instance fetches from PostHog
///    (with the `ETag`) this time;
/// 3. if it did and got new definitions, [`store`](Self::store)s them for the others.
///
/// Between polls it also wakes when [`changed`](Self::changed) resolves, and reads.
/// [`shutdown`](Self::shutdown) runs once when the client shuts down.
///
/// **Fail-safe**: an error (or an operation slower than the poller's bound of 5 s) makes
/// that poll fetch from PostHog directly, as without a cache; the switch is logged once, each
/// such poll is counted in
/// [`Stats::definitions_cache_fallbacks`](crate::capture::Stats::definitions_cache_fallbacks),
/// and the next poll tries the cache again.
///
/// Use one cache value per client: an implementation may identify the instance by it (the
/// Redis one holds its lease token).
///
/// # Example
///
/// A cache in which every instance fetches, and nothing is shared (the behaviour without one):
///
/// ```
/// use posthog_tower::flags::{BoxFuture, CachedDefinitions, DefinitionsCache};
/// use posthog_tower::BoxError;
///
/// struct Nothing;
///
/// impl DefinitionsCache for Nothing {
///     fn read<'a>(
///         &'a self,
///         _known: Option<&'a str>,
///     ) -> BoxFuture<'a, Result<Option<CachedDefinitions>, BoxError>> {
///         Box::pin(async { Ok(None) })
///     }
///     fn should_fetch(&self) -> BoxFuture<'_, Result<bool, BoxError>> {
///         Box::pin(async { Ok(true) })
///     }
///     fn store(
///         &self,
///         _etag: Option<String>,
///         _body: bytes::Bytes,
///     ) -> BoxFuture<'_, Result<Option<String>, BoxError>> {
///         Box::pin(async { Ok(None) })
///     }
///     fn shutdown(&self) -> BoxFuture<'_, ()> {
///         Box::pin(async {})
///     }
/// }
///
/// let client = posthog_tower::PostHog::builder("phc_project_key")
///     .personal_api_key("phx_personal_key")
///     .flag_definitions_cache(Nothing);
/// ```
pub trait DefinitionsCache: Send + Sync + 'static {
    /// The stored definitions, if the cache holds some whose version is not `known` (the
    /// version this client last read); `None` when it holds nothing or nothing newer.
    fn read<'a>(
        &'a self,
        known: Option<&'a str>,
    ) -> BoxFuture<'a, Result<Option<CachedDefinitions>, BoxError>>;

    /// Whether this instance fetches from PostHog now (for example: it holds, or just took,
    /// the fleet's lease). Called once per poll, so it can renew a lease.
    fn should_fetch(&self) -> BoxFuture<'_, Result<bool, BoxError>>;

    /// Stores definitions this instance fetched (the body as PostHog sent it, and its `ETag`),
    /// returning the version they were stored under (`None` if they were not stored, e.g.
    /// because the lease was lost meanwhile). The body never contains an API key.
    fn store(
        &self,
        etag: Option<String>,
        body: Bytes,
    ) -> BoxFuture<'_, Result<Option<String>, BoxError>>;

    /// Releases what this instance holds (its lease). Called once, when the client shuts down.
    fn shutdown(&self) -> BoxFuture<'_, ()>;

    /// Resolves when the cache may hold a new version (a push notification, e.g. Redis
    /// pub/sub), so the client reads at once instead of at its next poll. Never, by default.
    fn changed(&self) -> BoxFuture<'_, ()> {
        Box::pin(std::future::pending())
    }
}

impl<C: DefinitionsCache + ?Sized> DefinitionsCache for Arc<C> {
    fn read<'a>(
        &'a self,
        known: Option<&'a str>,
    ) -> BoxFuture<'a, Result<Option<CachedDefinitions>, BoxError>> {
        (**self).read(known)
    }
    fn should_fetch(&self) -> BoxFuture<'_, Result<bool, BoxError>> {
        (**self).should_fetch()
    }
    fn store(
        &self,
        etag: Option<String>,
        body: Bytes,
    ) -> BoxFuture<'_, Result<Option<String>, BoxError>> {
        (**self).store(etag, body)
    }
    fn shutdown(&self) -> BoxFuture<'_, ()> {
        (**self).shutdown()
    }
    fn changed(&self) -> BoxFuture<'_, ()> {
        (**self).changed()
    }
}
