use std::{fmt, sync::Arc, time::Duration};

use serde::Serialize;
use serde_json::{Map, Value};
use tower::{util::BoxCloneSyncService, ServiceBuilder, ServiceExt};
use tower_service::Service;

use super::{
    flags::{FlagCalledReporter, FlagsClient},
    Inner, PostHog,
};
use crate::{
    capture::{
        Batch, BatchConfig, CaptureProtocol, CaptureTransport, Compression, EncodedBatch,
        EventResults, RetryPolicy, StatsRecorder, V1RetryPolicy, V1Transport, Worker,
    },
    exception::{InAppCrates, RateLimit},
    flags::{
        CoalesceLayer, Decide, DecideConfig, DefinitionsCache, FallbackStore, FlagCalledDedup,
        FlagsRetryPolicy, PolledDefinitions, RemoteConfig, RemoteFlags, RemoteStack,
    },
    net::HttpClient,
    BoxError, BuildError, ErrorReport, Event,
};

/// The default PostHog host (US cloud).
pub const DEFAULT_HOST: &str = "https://us.i.posthog.com";

type CaptureStack = BoxCloneSyncService<EncodedBatch, EventResults, BoxError>;

/// Configures a [`PostHog`] client. Start with [`PostHog::builder`].
///
/// | setting | default | |
/// |---|---|---|
/// | [`host`](Self::host) | `https://us.i.posthog.com` | `app.posthog.com`, `us.posthog.com` and `eu.posthog.com` map to the ingestion hosts |
/// | [`flush_at`](Self::flush_at) | 100 events | a batch is sent when it holds this many |
/// | [`flush_interval`](Self::flush_interval) | 5 s | or this long after its first event |
/// | [`max_queue_size`](Self::max_queue_size) | 10 000 events | `capture` fails with `QueueFull` beyond |
/// | [`max_batch_bytes`](Self::max_batch_bytes) | 5 MiB | or when it would exceed this size |
/// | [`max_in_flight`](Self::max_in_flight) | 8 batches | sent concurrently |
/// | [`max_retries`](Self::max_retries) | 3 | retries after the first attempt (4 attempts) |
/// | [`request_timeout`](Self::request_timeout) | 15 s | per attempt |
/// | [`capture_protocol`](Self::capture_protocol) | v0 | `/batch/`, or v1's `/i/v1/analytics/events` |
/// | [`compression`](Self::compression) / [`gzip`](Self::gzip) | none | `Content-Encoding` of batches |
/// | [`disable_geoip`](Self::disable_geoip) | on | `$geoip_disable: true` on events |
/// | [`historical_migration`](Self::historical_migration) | off | for imports of past events |
/// | [`sync_mode`](Self::sync_mode) | off | send at once; [`PostHog::capture_wait`] waits for delivery |
/// | [`disabled`](Self::disabled) | off | no network at all |
/// | [`is_server`](Self::is_server) | on | `$is_server: true` on events |
/// | [`release_id`](Self::release_id) | `POSTHOG_RELEASE_ID` | `$release_id` on events |
/// | [`app_version`](Self::app_version) | none | `$app_version` on events |
/// | [`ai_privacy_mode`](Self::ai_privacy_mode) | off | no inputs and outputs in [`PostHog::capture_ai`]'s events |
pub struct PostHogBuilder {
    api_key: String,
    host: String,
    config: BatchConfig,
    max_retries: usize,
    request_timeout: Duration,
    protocol: CaptureProtocol,
    compression: Compression,
    historical_migration: bool,
    disabled: bool,
    sync_mode: bool,
    capture_panics: bool,
    exception_rate_limit: (u32, Duration),
    in_app: Option<InAppCrates>,
    http_client: Option<HttpClient>,
    capture_stack: Option<CaptureStack>,
    property_error: Option<String>,
    flags_timeout: Duration,
    flags_max_retries: usize,
    send_feature_flag_events: bool,
    flag_called_dedup_capacity: usize,
    flag_fallback_max_age: Option<Duration>,
    evaluation_environments: Option<Arc<[String]>>,
    flag_fallback_store: Option<Arc<dyn FallbackStore>>,
    flag_definitions_cache: Option<Arc<dyn DefinitionsCache>>,
    personal_api_key: Option<String>,
    poll_interval: Duration,
    is_server: bool,
    release_id: Option<String>,
    app_version: Option<String>,
    ai_capture_stack: Option<CaptureStack>,
    ai_privacy_mode: bool,
    #[cfg(feature = "spool")]
    spool: Option<std::path::PathBuf>,
    #[cfg(feature = "spool")]
    spool_max_bytes: u64,
}

impl PostHogBuilder {
    pub(super) fn new(api_key: String) -> Self {
        PostHogBuilder {
            api_key,
            host: DEFAULT_HOST.to_owned(),
            config: BatchConfig::default(),
            max_retries: 3,
            request_timeout: Duration::from_secs(15),
            protocol: CaptureProtocol::V0,
            compression: Compression::None,
            historical_migration: false,
            disabled: false,
            sync_mode: false,
            capture_panics: false,
            exception_rate_limit: (10, Duration::from_secs(10)),
            in_app: None,
            http_client: None,
            capture_stack: None,
            property_error: None,
            flags_timeout: Duration::from_secs(3),
            flags_max_retries: 1,
            send_feature_flag_events: true,
            flag_called_dedup_capacity: 50_000,
            flag_fallback_max_age: None,
            evaluation_environments: None,
            flag_fallback_store: None,
            flag_definitions_cache: None,
            personal_api_key: None,
            poll_interval: Duration::from_secs(30),
            is_server: true,
            release_id: None,
            app_version: None,
            ai_capture_stack: None,
            ai_privacy_mode: false,
            #[cfg(feature = "spool")]
            spool: None,
            #[cfg(feature = "spool")]
            spool_max_bytes: crate::capture::spool::DEFAULT_MAX_BYTES,
        }
    }

    /// Leaves the inputs and outputs (prompts, completions, span states, instructions) out
    /// of every event [`PostHog::capture_ai`] sends (off): only the model, usage, latency,
    /// status and the other metadata reach PostHog.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), posthog_tower::BuildError> {
    /// let posthog = posthog_tower::PostHog::builder("phc_project_key")
    ///     .ai_privacy_mode(true)
    ///     .build()?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn ai_privacy_mode(mut self, enabled: bool) -> Self {
        self.ai_privacy_mode = enabled;
        self
    }

    /// [`capture_stack`](Self::capture_stack) for the AI lane of [`PostHog::capture_ai`]:
    /// replaces its retry, timeout and transport (by default those of the main lane, with a
    /// transport to `{host}/i/v0/ai/batch/`, see [`CaptureTransport::ai_with_client`]).
    /// A [`capture_stack`](Self::capture_stack) alone does not change the AI lane's.
    pub fn ai_capture_stack<S>(mut self, service: S) -> Self
    where
        S: Service<EncodedBatch> + Clone + Send + Sync + 'static,
        S::Error: Into<BoxError>,
        S::Future: Send + 'static,
    {
        self.ai_capture_stack = Some(BoxCloneSyncService::new(
            service
                .map_err(Into::into)
                .map_response(|_| EventResults::default()),
        ));
        self
    }

    /// Whether every event carries `$is_server: true` (on), which tells PostHog it came from
    /// a backend. It is written over the event's and the super properties' values.
    pub fn is_server(mut self, enabled: bool) -> Self {
        self.is_server = enabled;
        self
    }

    /// Adds `$release_id` to every event: the id `posthog-cli release` printed for this
    /// build, which ties the events (and the `$exception`s' stack traces) to the release.
    /// Without it, the `POSTHOG_RELEASE_ID` environment variable is used when set. An event's
    /// own `$release_id`, or a super property, wins.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), posthog_tower::BuildError> {
    /// let posthog = posthog_tower::PostHog::builder("phc_project_key")
    ///     .release_id("f6d1c3a0-4a0c-4d0e-9c43-0d7a1a0e5b11")
    ///     .app_version(env!("CARGO_PKG_VERSION"))
    ///     .build()?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn release_id(mut self, release_id: impl Into<String>) -> Self {
        self.release_id = Some(release_id.into());
        self
    }

    /// Adds `$app_version` to every event, e.g. `env!("CARGO_PKG_VERSION")`. An event's own
    /// `$app_version`, or a super property, wins.
    pub fn app_version(mut self, version: impl Into<String>) -> Self {
        self.app_version = Some(version.into());
        self
    }

    /// Turns on local evaluation: flag definitions are fetched with this personal API key (or
    /// project secret key) every [`poll_interval`](Self::poll_interval) and evaluated
    /// in-process, asking `/flags` only for what they cannot decide. It also authenticates
    /// [`PostHog::get_remote_config_payload`](crate::PostHog::get_remote_config_payload). The key is sent to `{host}/flags/definitions`
    /// and `{host}/api/projects/@current/feature_flags/{key}/remote_config` only.
    pub fn personal_api_key(mut self, key: impl Into<String>) -> Self {
        let key = key.into();
        self.personal_api_key = (!key.trim().is_empty()).then_some(key);
        self
    }

    /// How often flag definitions are fetched for local evaluation (30 s).
    pub fn poll_interval(mut self, interval: Duration) -> Self {
        self.poll_interval = interval.max(Duration::from_millis(100));
        self
    }

    /// Timeout of one `/flags` attempt (3 s).
    pub fn feature_flags_request_timeout(mut self, timeout: Duration) -> Self {
        self.flags_timeout = timeout;
        self
    }

    /// Retries of a `/flags` request after connection errors, timeouts, 502 and 504 (1).
    pub fn feature_flags_max_retries(mut self, retries: usize) -> Self {
        self.flags_max_retries = retries;
        self
    }

    /// Whether flag lookups report `$feature_flag_called` (on). Each call can override it
    /// with [`FlagsRequest::send_feature_flag_events`](crate::flags::FlagsRequest::send_feature_flag_events).
    pub fn send_feature_flag_events(mut self, send: bool) -> Self {
        self.send_feature_flag_events = send;
        self
    }

    /// How many distinct ids the `$feature_flag_called` deduplication remembers (50 000); the
    /// oldest are forgotten first. The `$experiment_exposure` deduplication is a separate
    /// structure with the same bound.
    pub fn flag_called_dedup_capacity(mut self, distinct_ids: usize) -> Self {
        self.flag_called_dedup_capacity = distinct_ids;
        self
    }

    /// Remembers the last good value of each (distinct id, flag) and serves it for up to an
    /// hour when `/flags` fails (off). The event still records the error.
    pub fn flag_fallback_cache(mut self, enabled: bool) -> Self {
        self.flag_fallback_max_age = enabled.then(|| Duration::from_secs(3600));
        self
    }

    /// The evaluation environments of this client (none by default), e.g.
    /// `["production", "backend"]`: sent as `evaluation_environments` with every `/flags`
    /// request, so PostHog evaluates only the flags with no evaluation tags or with a tag
    /// among them, as posthog-node's `evaluationEnvironments` does. Local evaluation follows
    /// the same rule when the definitions list a flag's `evaluation_tags`: a flag tagged for
    /// other environments is left out (reads answer [`FlagError::Missing`](crate::flags::FlagError::Missing),
    /// as PostHog's answer would), and a flag whose tags cannot be read goes to `/flags`.
    /// Blank names are ignored; an empty list is none.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), posthog_tower::BuildError> {
    /// let posthog = posthog_tower::PostHog::builder("phc_project_key")
    ///     .evaluation_environments(["production", "backend"])
    ///     .build()?;
    /// # let _ = posthog;
    /// # Ok(())
    /// # }
    /// ```
    pub fn evaluation_environments<I, S>(mut self, environments: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let environments: Vec<String> = environments
            .into_iter()
            .map(Into::into)
            .filter(|e| !e.trim().is_empty())
            .collect();
        self.evaluation_environments = (!environments.is_empty()).then(|| environments.into());
        self
    }

    /// Keeps the fallback cache's values in `store` instead of this process's memory, and
    /// turns the fallback cache on (as [`flag_fallback_cache(true)`](Self::flag_fallback_cache):
    /// values serve for up to an hour). With a shared store (the `redis` feature's
    /// [`RedisFallbackStore`](crate::flags::RedisFallbackStore)), one instance's good answer
    /// serves another's failed lookup.
    ///
    /// ```
    /// use posthog_tower::flags::MemoryFallbackStore;
    ///
    /// let builder = posthog_tower::PostHog::builder("phc_project_key")
    ///     .flag_fallback_store(MemoryFallbackStore::new(1_000));
    /// # drop(builder);
    /// ```
    pub fn flag_fallback_store(mut self, store: impl FallbackStore) -> Self {
        self.flag_fallback_store = Some(Arc::new(store));
        self.flag_fallback_max_age = Some(Duration::from_secs(3600));
        self
    }

    /// Shares flag definitions through `cache` (local evaluation, with a
    /// [`personal_api_key`](Self::personal_api_key)): the poller consults it before every
    /// fetch, so that one instance of a fleet fetches from PostHog and the others read the
    /// cache, and a new instance evaluates as soon as the cache has definitions. If the cache
    /// fails, polls go to PostHog directly, counted in
    /// [`Stats::definitions_cache_fallbacks`](crate::capture::Stats::definitions_cache_fallbacks).
    /// See [`DefinitionsCache`] and, with the `redis` feature,
    /// [`RedisDefinitionsCache`](crate::flags::RedisDefinitionsCache). One cache value per
    /// client.
    ///
    /// ```
    /// # use posthog_tower::flags::{BoxFuture, CachedDefinitions, DefinitionsCache};
    /// # struct MyCache;
    /// # impl DefinitionsCache for MyCache {
    /// #     fn read<'a>(&'a self, _: Option<&'a str>) -> BoxFuture<'a, Result<Option<CachedDefinitions>, posthog_tower::BoxError>> { Box::pin(async { Ok(None) }) }
    /// #     fn should_fetch(&self) -> BoxFuture<'_, Result<bool, posthog_tower::BoxError>> { Box::pin(async { Ok(true) }) }
    /// #     fn store(&self, _: Option<String>, _: bytes::Bytes) -> BoxFuture<'_, Result<Option<String>, posthog_tower::BoxError>> { Box::pin(async { Ok(None) }) }
    /// #     fn shutdown(&self) -> BoxFuture<'_, ()> { Box::pin(async {}) }
    /// # }
    /// let builder = posthog_tower::PostHog::builder("phc_project_key")
    ///     .personal_api_key("phx_personal_key")
    ///     .flag_definitions_cache(MyCache);
    /// # drop(builder);
    /// ```
    pub fn flag_definitions_cache(mut self, cache: impl DefinitionsCache) -> Self {
        self.flag_definitions_cache = Some(Arc::new(cache));
        self
    }

    /// The PostHog host, e.g. `https://eu.i.posthog.com` or your self-hosted URL. A trailing
    /// slash is trimmed.
    pub fn host(mut self, host: impl Into<String>) -> Self {
        self.host = host.into();
        self
    }

    /// Sends a batch when it holds this many events (100).
    pub fn flush_at(mut self, events: usize) -> Self {
        self.config = self.config.flush_at(events);
        self
    }

    /// Sends a non-empty batch this long after the worker took its first event (5 s; the
    /// worker takes events within 100 ms of their capture).
    pub fn flush_interval(mut self, interval: Duration) -> Self {
        self.config = self.config.flush_interval(interval);
        self
    }

    /// How many events may wait to be sent (10 000). Beyond it `capture` returns
    /// [`CaptureError::QueueFull`](crate::CaptureError::QueueFull).
    pub fn max_queue_size(mut self, events: usize) -> Self {
        self.config = self.config.max_queue_size(events);
        self
    }

    /// Largest batch body, in bytes of events (5 MiB).
    pub fn max_batch_bytes(mut self, bytes: usize) -> Self {
        self.config = self.config.max_batch_bytes(bytes);
        self
    }

    /// How many batches may be sent at once (8).
    pub fn max_in_flight(mut self, batches: usize) -> Self {
        self.config = self.config.max_in_flight(batches);
        self
    }

    /// Retries after the first attempt (3, so 4 attempts in all).
    pub fn max_retries(mut self, retries: usize) -> Self {
        self.max_retries = retries;
        self
    }

    /// Timeout of one HTTP attempt (15 s).
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// Compresses batch bodies with gzip (off): the same as
    /// [`compression`](Self::compression)`(Compression::Gzip)`, or `Compression::None` for
    /// `false`.
    pub fn gzip(mut self, enabled: bool) -> Self {
        self.compression = if enabled {
            Compression::Gzip
        } else {
            Compression::None
        };
        self
    }

    /// The protocol events are sent with: [`CaptureProtocol::V0`] (`POST /batch/`, the
    /// default) or [`CaptureProtocol::V1`] (`POST /i/v1/analytics/events`: per-event results,
    /// only the events PostHog asks for are sent again, every [`Compression`]).
    ///
    /// ```
    /// use posthog_tower::{capture::CaptureProtocol, PostHog};
    ///
    /// let client = PostHog::builder("phc_project_key")
    ///     .capture_protocol(CaptureProtocol::V1)
    ///     .disabled(true)
    ///     .build()
    ///     .unwrap();
    /// # let _ = client;
    /// ```
    pub fn capture_protocol(mut self, protocol: CaptureProtocol) -> Self {
        self.protocol = protocol;
        self
    }

    /// The `Content-Encoding` of batch bodies (none by default). Capture v0 accepts
    /// [`Compression::Gzip`] only: `build` fails with [`BuildError::InvalidConfig`] for
    /// another one unless [`capture_protocol`](Self::capture_protocol) is v1.
    ///
    /// ```
    /// use posthog_tower::{capture::{CaptureProtocol, Compression}, PostHog};
    ///
    /// let client = PostHog::builder("phc_project_key")
    ///     .capture_protocol(CaptureProtocol::V1)
    ///     .compression(Compression::Deflate)
    ///     .disabled(true)
    ///     .build()
    ///     .unwrap();
    /// # let _ = client;
    /// ```
    pub fn compression(mut self, compression: Compression) -> Self {
        self.compression = compression;
        self
    }

    /// Adds `$geoip_disable: true` to every event (on), so PostHog does not resolve the
    /// server's IP address to a location.
    pub fn disable_geoip(mut self, disabled: bool) -> Self {
        self.config = self.config.disable_geoip(disabled);
        self
    }

    /// Marks every batch as a historical migration (off).
    pub fn historical_migration(mut self, enabled: bool) -> Self {
        self.historical_migration = enabled;
        self
    }

    /// Adds a property to every event, over the event's own value.
    pub fn super_property(mut self, key: impl Into<String>, value: impl Serialize) -> Self {
        let key = key.into();
        match crate::event::to_property_value(value) {
            Ok(value) => {
                self.config.super_properties.insert(key, value);
            }
            Err(e) => {
                self.property_error
                    .get_or_insert(format!("super property `{key}`: {e}"));
            }
        }
        self
    }

    /// Adds every entry of `properties` (a map or struct) to every event.
    pub fn super_properties(mut self, properties: Map<String, Value>) -> Self {
        self.config.super_properties.extend(properties);
        self
    }

    /// A hook that sees every event before it is sent and may change it or drop it (`None`).
    ///
    /// It runs in `capture`, on the caller's thread, after the event was validated and
    /// stamped. What it returns is validated again: an event `capture` would refuse (an empty
    /// name or distinct id, a NaN, too large) is dropped and reported to `on_error`, as is the
    /// event when the hook panics; `capture` still returns its uuid. The uuid and timestamp
    /// cannot be changed by the hook.
    pub fn before_send(
        mut self,
        hook: impl Fn(Event) -> Option<Event> + Send + Sync + 'static,
    ) -> Self {
        self.config = self.config.before_send(hook);
        self
    }

    /// A callback told of every event refused, dropped or not delivered.
    pub fn on_error(mut self, callback: impl Fn(&ErrorReport) + Send + Sync + 'static) -> Self {
        self.config = self.config.on_error(callback);
        self
    }

    /// Raises the crate's diagnostics (each batch sent, each retry, each flag read, each event
    /// refused) from `DEBUG` to `INFO`, under the target `posthog_tower::debug`, so that a
    /// default `tracing` subscriber shows them: posthog-python's `debug=True`. Nothing is
    /// printed without a subscriber. Process-wide once any client turns it on. Without it,
    /// `RUST_LOG=posthog_tower=debug` (with `tracing-subscriber`'s `EnvFilter`) shows the same.
    ///
    /// ```
    /// let posthog = posthog_tower::PostHog::builder("phc_project_key")
    ///     .debug(true)
    ///     .disabled(true)
    ///     .build()
    ///     .unwrap();
    /// # drop(posthog);
    /// ```
    pub fn debug(self, enabled: bool) -> Self {
        crate::set_debug(enabled);
        self
    }

    /// Turns the client off: nothing is queued or sent and no background work starts;
    /// `capture` still validates events and returns uuids.
    pub fn disabled(mut self, disabled: bool) -> Self {
        self.disabled = disabled;
        self
    }

    /// Captures every panic as an unhandled `$exception` (level `fatal`, mechanism `panic`, the
    /// message, where it happened and the stack), for the request context's caller when the
    /// panic happened inside a request, through a panic hook installed by
    /// [`build`](Self::build) that calls the hook installed before it. A panic about to end
    /// the process (with `panic = "abort"`, or on the thread named `main`) waits up to 2 s for
    /// the event's delivery (which needs the client's worker to run on another thread: a
    /// multi-thread runtime). Off by default; the hook is process-wide.
    pub fn capture_panics(mut self, enabled: bool) -> Self {
        self.capture_panics = enabled;
        self
    }

    /// At most `max` exceptions of one type (the captured error's type, `Panic` for panics)
    /// captured on the application's behalf per `window`: by the panic hook, the HTTP layer
    /// and the `tracing` layer (not by [`PostHog::capture_exception`], which captures what it
    /// is given). The others are refused with [`CaptureError::RateLimited`](crate::CaptureError::RateLimited),
    /// counted in [`Stats::dropped`](crate::capture::Stats::dropped) (`rate_limited`) and
    /// passed to `on_error`. Default: 10 per 10 s; `u32::MAX` turns the limit off.
    pub fn exception_rate_limit(mut self, max: u32, window: Duration) -> Self {
        self.exception_rate_limit = (max, window);
        self
    }

    /// Marks the frames of these crates in-app (the application's) in every `$exception`'s
    /// stack trace, even crates the defaults take for libraries, unless excluded with
    /// [`in_app_exclude`](Self::in_app_exclude). A name is a crate (`my_app`; `my-app` works
    /// too) or a module path (`my_app::db`), matched against a frame's function by prefix.
    /// Without it, the defaults of [`Exception::in_app_include`](crate::exception::Exception::in_app_include)
    /// apply.
    ///
    /// **Process-wide**, like the panic hook: [`build`](Self::build) sets the crates (this
    /// list and [`in_app_exclude`](Self::in_app_exclude)'s) for every exception built in the
    /// process from then on, by any client, the panic hook and the `Exception` API alike; the
    /// last client built with either wins. [`Exception::in_app_include`](crate::exception::Exception::in_app_include)
    /// adds crates for one exception.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), posthog_tower::BuildError> {
    /// let posthog = posthog_tower::PostHog::builder("phc_project_key")
    ///     .in_app_include(["my_app", "my-shared-lib"])
    ///     .in_app_exclude(["my_app::generated"])
    ///     .build()?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn in_app_include<I, S>(mut self, crates: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        self.in_app
            .get_or_insert_with(Default::default)
            .include(crates);
        self
    }

    /// Never marks the frames of these crates (or module paths) in-app, whatever else says
    /// so. Process-wide, like [`in_app_include`](Self::in_app_include).
    pub fn in_app_exclude<I, S>(mut self, crates: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        self.in_app
            .get_or_insert_with(Default::default)
            .exclude(crates);
        self
    }

    /// Serverless mode: events are sent as soon as they are captured, and
    /// [`PostHog::capture_wait`] resolves only after PostHog acknowledged the event.
    pub fn sync_mode(mut self, enabled: bool) -> Self {
        self.sync_mode = enabled;
        self.config = self.config.send_immediately(enabled);
        self
    }

    /// Sends through this HTTP client instead of the default hyper/rustls one (for a proxy,
    /// extra headers, or tests). See [`net::into_http_client`](crate::net::into_http_client).
    ///
    /// It carries every request of the client: `/batch/` (unless
    /// [`capture_stack`](Self::capture_stack) replaces that stack, which then brings its own
    /// transport) and `/flags`.
    pub fn http_client(mut self, client: HttpClient) -> Self {
        self.http_client = Some(client);
        self
    }

    /// Replaces the whole stack below the batcher (retry, timeout, transport) with `service`.
    ///
    /// Build it from [`RetryPolicy`], `tower::timeout` and [`CaptureTransport`] plus your own
    /// layers; see `examples/custom_stack.rs`. Share [`stats_recorder`](Self::stats_recorder)
    /// with them to keep [`PostHog::stats`] complete.
    ///
    /// The stack is used as given: [`capture_protocol`](Self::capture_protocol),
    /// [`compression`](Self::compression), [`gzip`](Self::gzip),
    /// [`historical_migration`](Self::historical_migration), [`max_retries`](Self::max_retries)
    /// and [`request_timeout`](Self::request_timeout) configure the default stack only, so set
    /// them on your transport, policy and timeout instead.
    pub fn capture_stack<S>(mut self, service: S) -> Self
    where
        S: Service<EncodedBatch> + Clone + Send + Sync + 'static,
        S::Response: 'static,
        S::Error: Into<BoxError>,
        S::Future: Send + 'static,
    {
        self.capture_stack = Some(BoxCloneSyncService::new(
            service.map_err(Into::into).map_response(|response| {
                // A v1 stack's per-event results reach the worker; anything else means
                // "all delivered".
                let mut response = Some(response);
                (&mut response as &mut dyn std::any::Any)
                    .downcast_mut::<Option<EventResults>>()
                    .and_then(Option::take)
                    .unwrap_or_default()
            }),
        ));
        self
    }

    /// Keeps events that would fail during a PostHog outage in an on-disk spool in the
    /// directory `path` (created if missing), and sends them once PostHog answers again
    /// (cargo feature `spool`). Off by default.
    ///
    /// - **What is spooled**: events whose batch exhausted its retries on a transport error,
    ///   a timeout or a retryable status (408, 429, 5xx), capture v1 events PostHog still
    ///   answered `retry` for at the last attempt, and events still undelivered when a
    ///   [`shutdown`](PostHog::shutdown) deadline passes. PostHog's definitive refusals (a
    ///   400, a capture v1 `drop` or `limited`) are reported failed as without a spool. Each
    ///   write is `fsync`ed before the events count as [`spooled`](crate::capture::Stats::spooled).
    /// - **Bound**: [`spool_max_bytes`](Self::spool_max_bytes) (256 MiB by default); events
    ///   beyond it are reported failed (`on_error`, `stats().failed` and
    ///   [`spool_full`](crate::capture::Stats::spool_full)), never dropped silently.
    /// - **Sending it**: a client that opens a spool holding events starts sending them
    ///   as soon as it runs, before its first batch of new events is due (new events are not
    ///   held back for it); a running client sends what it spooled after its next batch
    ///   PostHog accepts, and otherwise tries again after 1 s, 2 s, 4 s, … up to 1 min.
    ///   Replayed events keep their uuids and timestamps, and are counted in
    ///   [`spool_replayed`](crate::capture::Stats::spool_replayed) or
    ///   [`spool_failed`](crate::capture::Stats::spool_failed). A shutdown lets the replay
    ///   finish within its deadline while PostHog answers; what is left stays on disk.
    /// - **Duplicates**: a crash (or a deadline) between sending a replayed batch and
    ///   deleting it from disk sends those events again later; PostHog deduplicates them by
    ///   uuid.
    /// - **One client per spool**: the directory is locked; a second client (in this process
    ///   or another) gets [`BuildError::Spool`] with [`SpoolError::Locked`](crate::capture::SpoolError::Locked).
    /// - Only the main capture lane is spooled; [AI events](PostHog::capture_ai) fail as
    ///   without a spool.
    /// - [`flush`](PostHog::flush) reports spooled events in
    ///   [`FlushReport::spooled`](crate::capture::FlushReport::spooled) and does not wait for
    ///   a replay. A future waiting for one spooled event's delivery
    ///   ([`capture_wait`](PostHog::capture_wait) in [sync mode](Self::sync_mode), `Batch` as
    ///   a `Service<Event>`) resolves with the delivery error: the event is on disk, not
    ///   delivered.
    /// - Disk writes happen on the failure path only, in the sending task (one `fsync` per
    ///   failed batch) or, at the shutdown deadline, in the worker before the report is
    ///   published: a shutdown may return later than its deadline by the time that write
    ///   takes.
    ///
    /// What is only in memory when the process is killed (queued events, batches being
    /// retried) is lost, as without a spool; see RELIABILITY.md.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let dir = std::env::temp_dir().join(format!("posthog-spool-doc-{}", std::process::id()));
    /// let posthog = posthog_tower::PostHog::builder("phc_project_key")
    ///     .spool(&dir)
    ///     .spool_max_bytes(64 * 1024 * 1024)
    ///     .build()?;
    /// # posthog.shutdown(std::time::Duration::from_secs(1)).await;
    /// # drop(posthog);
    /// # let _ = std::fs::remove_dir_all(&dir);
    /// # Ok(())
    /// # }
    /// ```
    #[cfg(feature = "spool")]
    #[cfg_attr(docsrs, doc(cfg(feature = "spool")))]
    pub fn spool(mut self, path: impl AsRef<std::path::Path>) -> Self {
        self.spool = Some(path.as_ref().to_owned());
        self
    }

    /// The most bytes the [spool](Self::spool) may hold on disk (256 MiB by default); events
    /// beyond it are reported failed.
    #[cfg(feature = "spool")]
    #[cfg_attr(docsrs, doc(cfg(feature = "spool")))]
    pub fn spool_max_bytes(mut self, bytes: u64) -> Self {
        self.spool_max_bytes = bytes;
        self
    }

    /// The counters the client will report in [`PostHog::stats`].
    pub fn stats_recorder(&self) -> StatsRecorder {
        self.config.stats_recorder().clone()
    }

    /// A blank project key turns the client off, with a warning.
    fn disable_if_keyless(&mut self) {
        if self.api_key.trim().is_empty() && !self.disabled {
            tracing::warn!(
                "posthog: the project API key is blank; the client is disabled and sends nothing"
            );
            self.disabled = true;
        }
    }

    /// Builds the client and spawns its worker on the current tokio runtime.
    ///
    /// Fails with [`BuildError::NoRuntime`] outside a runtime (unless disabled) and
    /// [`BuildError::InvalidHost`] for a bad host. A blank project key gives a
    /// [disabled](Self::disabled) client and one warning, as posthog-python and posthog-node
    /// do: an application whose key is not configured (in development, say) runs without
    /// sending anything.
    ///
    /// ```
    /// let posthog = posthog_tower::PostHog::builder("").build().unwrap();
    /// assert!(posthog.is_disabled());
    /// ```
    pub fn build(mut self) -> Result<PostHog, BuildError> {
        self.disable_if_keyless();
        if self.disabled {
            return self.build_pair().map(|(client, _)| client);
        }
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| BuildError::NoRuntime)?;
        let (client, worker) = self.build_pair()?;
        runtime.spawn(worker);
        Ok(client)
    }

    /// Builds the client and returns its worker instead of spawning it, like tower's
    /// `Buffer::pair`. Run the worker on a tokio runtime; events are sent only while it runs.
    pub fn build_pair(mut self) -> Result<(PostHog, Worker), BuildError> {
        self.disable_if_keyless();
        let api_key = self.api_key.trim().to_owned();
        if let Some(e) = self.property_error {
            tracing::error!(error = %e, "posthog: invalid super property");
            return Err(BuildError::InvalidConfig(
                "a super property cannot be represented in JSON",
            ));
        }
        let host = normalize_host(&self.host);
        let uri = crate::net::endpoint(&host, "/")?;
        if uri.scheme_str() == Some("http") && !is_loopback(uri.host().unwrap_or_default()) {
            tracing::warn!(%host, "posthog: host uses plain http; events and keys travel unencrypted");
        }
        if let Some(crates) = self.in_app {
            crates.set_process_wide();
        }
        let stats = self.config.stats_recorder().clone();
        let mut config = self.config;
        config.system =
            super::system::system_properties(self.is_server, self.release_id, self.app_version);
        if self.disabled {
            let client = PostHog {
                inner: Arc::new(Inner {
                    batch: None,
                    ai_batch: None,
                    ai_privacy_mode: self.ai_privacy_mode,
                    flags: None,
                    sync_mode: self.sync_mode,
                    host,
                    cookie_name: format!("ph_{api_key}_posthog").into(),
                    secrets: secrets(&api_key, self.personal_api_key.as_deref()),
                    stats,
                    max_event_size: crate::event::MAX_EVENT_BYTES,
                    exception_limit: RateLimit::new(
                        self.exception_rate_limit.0,
                        self.exception_rate_limit.1,
                    ),
                }),
            };
            return Ok((client, Worker::finished()));
        }
        let http_client = self.http_client.unwrap_or_else(crate::net::default_client);
        let poller_client = http_client.clone();
        let remote_config_client = http_client.clone();
        let flags_service: RemoteStack = BoxCloneSyncService::new(
            ServiceBuilder::new()
                .layer(CoalesceLayer::new())
                .retry(FlagsRetryPolicy::new(self.flags_max_retries))
                .timeout(self.flags_timeout)
                .service(
                    RemoteFlags::with_client(http_client.clone(), &host, &api_key)?
                        .disable_geoip(config.disable_geoip)
                        .evaluation_environments(self.evaluation_environments.clone()),
                ),
        );
        let ai_stack = match self.ai_capture_stack {
            Some(stack) => stack,
            None => {
                let transport =
                    CaptureTransport::ai_with_client(http_client.clone(), &host, &api_key)?
                        // The AI lane speaks v0, which has gzip only.
                        .gzip(self.compression == Compression::Gzip)
                        .historical_migration(self.historical_migration)
                        .stats(stats.clone());
                BoxCloneSyncService::new(
                    ServiceBuilder::new()
                        .retry(RetryPolicy::new(self.max_retries).stats(stats.clone()))
                        .timeout(self.request_timeout)
                        .service(transport)
                        .map_response(|_| EventResults::default()),
                )
            }
        };
        let stack = match self.capture_stack {
            Some(stack) => stack,
            None => {
                let client = http_client;
                match self.protocol {
                    CaptureProtocol::V0 => {
                        let gzip = match self.compression {
                            Compression::None => false,
                            Compression::Gzip => true,
                            // Reachable with the `brotli` or `zstd` feature.
                            #[allow(unreachable_patterns)]
                            _ => {
                                return Err(BuildError::InvalidConfig(
                                    "capture v0 accepts gzip compression only; use capture v1",
                                ))
                            }
                        };
                        let transport = CaptureTransport::with_client(client, &host, &api_key)?
                            .gzip(gzip)
                            .historical_migration(self.historical_migration)
                            .stats(stats.clone());
                        BoxCloneSyncService::new(
                            ServiceBuilder::new()
                                .retry(RetryPolicy::new(self.max_retries).stats(stats.clone()))
                                .timeout(self.request_timeout)
                                .service(transport)
                                .map_response(|_| EventResults::default()),
                        )
                    }
                    CaptureProtocol::V1 => {
                        let transport = V1Transport::with_client(client, &host, &api_key)?
                            .compression(self.compression)
                            .historical_migration(self.historical_migration)
                            .stats(stats.clone());
                        BoxCloneSyncService::new(
                            ServiceBuilder::new()
                                .retry(V1RetryPolicy::new(self.max_retries).stats(stats.clone()))
                                .timeout(self.request_timeout)
                                .service(transport),
                        )
                    }
                }
            }
        };
        // The AI lane: batches of its own, with the same settings and the same recorder (so
        // `stats()` adds both lanes up).
        // Its events may be larger: up to 8 MiB each, as PostHog's AI endpoint accepts.
        let ai_config = config
            .clone()
            .max_event_bytes(crate::event::MAX_AI_EVENT_BYTES);
        let (ai_batch, ai_worker) = Batch::pair(ai_stack, ai_config);
        #[cfg(feature = "spool")]
        let mut config = config;
        #[cfg(feature = "spool")]
        if let Some(dir) = &self.spool {
            let spool = crate::capture::spool::Spool::open(dir, self.spool_max_bytes)
                .map_err(BuildError::Spool)?;
            config.spool = Some(Arc::new(spool));
        }
        let (batch, worker) = Batch::pair(stack, config);
        let worker = worker.join(ai_worker);
        let (local, worker) = match &self.personal_api_key {
            Some(secret) => {
                let (definitions, poller) = PolledDefinitions::start(
                    poller_client,
                    &host,
                    &api_key,
                    secret,
                    self.poll_interval,
                    self.flag_definitions_cache.clone(),
                )?;
                (Some(definitions), worker.join(poller))
            }
            None => (None, worker),
        };
        let reporter = Arc::new(FlagCalledReporter {
            batch: Some(batch.clone()),
            dedup: FlagCalledDedup::new(self.flag_called_dedup_capacity),
            exposures: FlagCalledDedup::new(self.flag_called_dedup_capacity),
        });
        let flags = FlagsClient {
            decide: Decide::new(DecideConfig {
                remote: flags_service,
                reporter: reporter.clone(),
                send_events: self.send_feature_flag_events,
                fallback_max_age: self.flag_fallback_max_age,
                fallback_store: self.flag_fallback_store,
                local,
                environments: self.evaluation_environments.clone(),
            }),
            reporter,
            remote_config: match &self.personal_api_key {
                Some(secret) => Some(RemoteConfig::new(
                    remote_config_client,
                    &host,
                    &api_key,
                    secret,
                    self.flags_timeout,
                )?),
                None => None,
            },
        };
        let client = PostHog {
            inner: Arc::new(Inner {
                batch: Some(batch),
                ai_batch: Some(ai_batch),
                ai_privacy_mode: self.ai_privacy_mode,
                flags: Some(flags),
                sync_mode: self.sync_mode,
                host,
                cookie_name: format!("ph_{api_key}_posthog").into(),
                secrets: secrets(&api_key, self.personal_api_key.as_deref()),
                stats,
                max_event_size: crate::event::MAX_EVENT_BYTES,
                exception_limit: RateLimit::new(
                    self.exception_rate_limit.0,
                    self.exception_rate_limit.1,
                ),
            }),
        };
        if self.capture_panics {
            install_panic_capture(&client);
        }
        Ok((client, worker))
    }
}

/// The keys `$exception` events must never carry (see `PostHog::capture_exception_event`):
/// keys too short to be real ones are left out, so they never redact ordinary words.
fn secrets(api_key: &str, personal_api_key: Option<&str>) -> Box<[Box<str>]> {
    [Some(api_key), personal_api_key]
        .into_iter()
        .flatten()
        .map(str::trim)
        .filter(|key| key.len() >= 8)
        .map(Box::from)
        .collect()
}

/// How long a panic about to end the process waits for its `$exception` to be delivered.
const PANIC_DELIVERY_WAIT: Duration = Duration::from_secs(2);

/// Sends every panic's `$exception` through `client`, while it lives.
fn install_panic_capture(client: &PostHog) {
    let weak = Arc::downgrade(&client.inner);
    crate::exception::install_panic_hook(move |exception| {
        let Some(inner) = weak.upgrade() else {
            return;
        };
        PostHog { inner }.capture_panic(exception);
    });
}

impl PostHog {
    /// Captures a panic's `$exception` from the panic hook: when the panic is about to end the
    /// process, waits (a little) for its delivery.
    pub(crate) fn capture_panic(self, exception: crate::exception::Exception) {
        // A refusal (rate limit, full queue, shut down) is counted and reported by the client.
        if self.capture_autocaptured(exception).is_err() {
            return;
        }
        let ending = cfg!(panic = "abort") || std::thread::current().name() == Some("main");
        if ending {
            flush_from_a_dying_thread(self);
        }
    }
}

/// Flushes from a thread that may be inside a runtime (blocking on it there is not allowed):
/// on a thread of its own with a runtime of its own, at most [`PANIC_DELIVERY_WAIT`].
fn flush_from_a_dying_thread(posthog: PostHog) {
    let flusher = std::thread::spawn(move || {
        if let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
        {
            runtime.block_on(async {
                let _ = tokio::time::timeout(PANIC_DELIVERY_WAIT, posthog.flush()).await;
            });
        }
    });
    let _ = flusher.join();
}

impl fmt::Debug for PostHogBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the API key.
        let mut f = f.debug_struct("PostHogBuilder");
        f.field("host", &self.host)
            .field("config", &self.config)
            .field("max_retries", &self.max_retries)
            .field("request_timeout", &self.request_timeout)
            .field("capture_protocol", &self.protocol)
            .field("compression", &self.compression)
            .field("historical_migration", &self.historical_migration)
            .field("disabled", &self.disabled)
            .field("sync_mode", &self.sync_mode)
            .field("capture_panics", &self.capture_panics)
            .field("exception_rate_limit", &self.exception_rate_limit)
            .field("in_app", &self.in_app)
            .field("local_evaluation", &self.personal_api_key.is_some())
            .field("poll_interval", &self.poll_interval)
            .field(
                "flag_definitions_cache",
                &self.flag_definitions_cache.is_some(),
            )
            .field("flag_fallback_store", &self.flag_fallback_store.is_some())
            .field("is_server", &self.is_server)
            .field("release_id", &self.release_id)
            .field("app_version", &self.app_version)
            .field("ai_privacy_mode", &self.ai_privacy_mode);
        #[cfg(feature = "spool")]
        f.field("spool", &self.spool)
            .field("spool_max_bytes", &self.spool_max_bytes);
        f.finish_non_exhaustive()
    }
}

/// Maps PostHog's app hosts to its ingestion hosts and trims trailing slashes.
pub(crate) fn normalize_host(host: &str) -> String {
    let host = host.trim().trim_end_matches('/');
    match host {
        "" => DEFAULT_HOST.to_owned(),
        "https://app.posthog.com" | "https://us.posthog.com" => DEFAULT_HOST.to_owned(),
        "https://eu.posthog.com" => "https://eu.i.posthog.com".to_owned(),
        other => other.to_owned(),
    }
}

fn is_loopback(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_are_normalized() {
        assert_eq!(normalize_host("https://app.posthog.com/"), DEFAULT_HOST);
        assert_eq!(normalize_host("https://us.posthog.com"), DEFAULT_HOST);
        assert_eq!(
            normalize_host("https://eu.posthog.com"),
            "https://eu.i.posthog.com"
        );
        assert_eq!(
            normalize_host("https://ph.example.com//"),
            "https://ph.example.com"
        );
        assert_eq!(normalize_host(""), DEFAULT_HOST);
    }

    #[test]
    fn build_errors() {
        let (keyless, _) = PostHog::builder("  ")
            .build_pair()
            .expect("a disabled client");
        assert!(keyless.is_disabled());
        assert!(PostHog::builder("")
            .build()
            .expect("no runtime needed")
            .is_disabled());
        assert!(matches!(
            PostHog::builder("k").host("not a url").build_pair().err(),
            Some(BuildError::InvalidHost(_))
        ));
        assert_eq!(
            PostHog::builder("k").build().err(),
            Some(BuildError::NoRuntime)
        );
        assert!(PostHog::builder("k").disabled(true).build().is_ok());
        assert!(matches!(
            PostHog::builder("k")
                .super_property("x", f64::NAN)
                .build_pair()
                .err(),
            Some(BuildError::InvalidConfig(_))
        ));
    }

    #[test]
    fn loopback_detection() {
        assert!(is_loopback("127.0.0.1"));
        assert!(is_loopback("[::1]"));
        assert!(is_loopback("LOCALHOST"));
        assert!(!is_loopback("example.com"));
        assert!(!is_loopback("10.0.0.1"));
    }
}
