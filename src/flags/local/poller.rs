//! The definitions poller: fetches flag definitions, compiles them, swaps the snapshot in.

use std::{
    fmt,
    future::Future,
    pin::Pin,
    sync::{
        atomic::{AtomicU64, Ordering::Relaxed},
        Arc,
    },
    time::Duration,
};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, StatusCode, Uri};
use http_body_util::Full;
use tokio::sync::watch;
use tower::{util::Oneshot, ServiceExt};

use crate::{
    flags::cache::{CachedDefinitions, DefinitionsCache},
    net::{FullResponse, HttpClient, ReadResponse, ResponseBody, USER_AGENT},
    BoxError,
};

/// Largest definitions response read.
const MAX_DEFINITIONS: usize = 64 * 1024 * 1024;

/// Longest wait between fetches while PostHog keeps failing.
const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// Longest a definitions cache operation may take before the poll goes to PostHog directly.
pub(crate) const CACHE_TIMEOUT: Duration = Duration::from_secs(5);

/// What a leader stores after PostHog refused the key (401) or the quota (402): no flags, so
/// that the whole fleet stops evaluating locally, as the leader does.
const EMPTY_DEFINITIONS: &[u8] = br#"{"flags":[],"group_type_mapping":{},"cohorts":{}}"#;

/// What can be built from a definitions response body.
pub(crate) trait Compile: Sized + Send + Sync + 'static {
    /// Compiles a `/flags/definitions` body.
    fn compile(body: &[u8]) -> Result<Self, String>;
    /// The compiled form of "no definitions" (after 401 or 402).
    fn empty() -> Self;
}

/// The current definitions, as readers see them.
#[derive(Debug)]
pub(crate) struct Snapshot<T> {
    /// `None` until the first successful load.
    pub(crate) flags: Option<Arc<T>>,
}

/// Settings of the poller.
#[derive(Clone)]
pub(crate) struct PollerConfig {
    pub(crate) client: HttpClient,
    pub(crate) uri: Uri,
    /// `Bearer <personal or project secret key>`: sent to this endpoint only.
    pub(crate) authorization: HeaderValue,
    pub(crate) interval: Duration,
    pub(crate) timeout: Duration,
}

impl fmt::Debug for PollerConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The URI carries the project key and the header the personal key: print neither.
        f.debug_struct("PollerConfig")
            .field("host", &self.uri.host())
            .field("interval", &self.interval)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl PollerConfig {
    pub(crate) fn new(
        client: HttpClient,
        host: &str,
        project_key: &str,
        secret_key: &str,
        interval: Duration,
    ) -> Result<Self, crate::BuildError> {
        let token: String = form_urlencode(project_key);
        let uri = crate::net::endpoint(
            host,
            &format!("/flags/definitions?token={token}&send_cohorts"),
        )?;
        let mut authorization = HeaderValue::from_str(&format!("Bearer {}", secret_key.trim()))
            .map_err(|_| {
                crate::BuildError::InvalidConfig("the personal API key is not a valid header value")
            })?;
        authorization.set_sensitive(true);
        Ok(PollerConfig {
            client,
            uri,
            authorization,
            interval,
            timeout: Duration::from_secs(10),
        })
    }
}

fn form_urlencode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.trim().bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The shared state: the snapshot readers load without locks, and the load signal.
pub(crate) struct Current<T> {
    pub(crate) snapshot: ArcSwap<Snapshot<T>>,
    loaded: watch::Sender<bool>,
    /// Polls that went to PostHog directly because the definitions cache failed.
    pub(crate) cache_fallbacks: AtomicU64,
    /// Set when the poller stopped (after its cache's shutdown).
    stopped: watch::Sender<bool>,
}

impl<T> fmt::Debug for Current<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Current").finish_non_exhaustive()
    }
}

impl<T: Compile> Current<T> {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Current {
            snapshot: ArcSwap::from_pointee(Snapshot { flags: None }),
            loaded: watch::channel(false).0,
            cache_fallbacks: AtomicU64::new(0),
            stopped: watch::channel(false).0,
        })
    }

    /// The current definitions (`None` before the first load). Lock-free.
    pub(crate) fn current(&self) -> Option<Arc<T>> {
        self.snapshot.load().flags.clone()
    }

    /// Waits until the first load attempt settled (loaded, or refused with 401/402), at most
    /// `timeout`. `true` when definitions are available.
    pub(crate) async fn wait_loaded(&self, timeout: Duration) -> bool {
        let mut rx = self.loaded.subscribe();
        let _ = tokio::time::timeout(timeout, rx.wait_for(|done| *done)).await;
        self.current().is_some()
    }

    /// Waits until the poller stopped, at most `timeout`.
    pub(crate) async fn wait_stopped(&self, timeout: Duration) {
        let mut rx = self.stopped.subscribe();
        let _ = tokio::time::timeout(timeout, rx.wait_for(|done| *done)).await;
    }

    pub(crate) fn install(&self, flags: T) {
        self.snapshot.store(Arc::new(Snapshot {
            flags: Some(Arc::new(flags)),
        }));
        self.loaded.send_replace(true);
    }
}

/// What one fetch did.
#[derive(Debug, PartialEq, Eq)]
enum Fetched {
    /// New definitions, installed: the body as PostHog sent it.
    Installed(Bytes),
    NotModified,
    Cleared,
    Failed,
}

/// Fetches definitions every `interval` until stopped. One fetch at a time: the next starts
/// only after the previous one ended, so fetches never overlap.
pub(crate) struct Poller<T> {
    config: PollerConfig,
    shared: Arc<Current<T>>,
    etag: Option<HeaderValue>,
    stop: watch::Receiver<bool>,
    cache: Option<Arc<dyn DefinitionsCache>>,
    /// The cache version last read or stored (compiled once, whether it compiled or not).
    cache_version: Option<String>,
    /// The last cache operation failed: polls go to PostHog directly.
    degraded: bool,
}

impl<T: Compile> Poller<T> {
    pub(crate) fn new(
        config: PollerConfig,
        shared: Arc<Current<T>>,
        stop: watch::Receiver<bool>,
    ) -> Self {
        Poller {
            config,
            shared,
            etag: None,
            stop,
            cache: None,
            cache_version: None,
            degraded: false,
        }
    }

    /// Consults `cache` before every fetch (see [`DefinitionsCache`]).
    pub(crate) fn with_cache(mut self, cache: Option<Arc<dyn DefinitionsCache>>) -> Self {
        self.cache = cache;
        self
    }

    /// Runs until `stop` is set (or its sender dropped).
    pub(crate) async fn run(mut self) {
        let mut failures: u32 = 0;
        let mut woken = false;
        loop {
            let fetched = match self.cache.clone() {
                Some(cache) if woken => {
                    // A change notification: read the cache, fetch nothing.
                    self.read_cache(&*cache).await;
                    None
                }
                Some(cache) => self.poll_with_cache(&*cache).await,
                None => Some(self.fetch_once().await),
            };
            match fetched {
                Some(Fetched::Failed) => failures = failures.saturating_add(1),
                Some(_) => failures = 0,
                None => {}
            }
            let wait = next_wait(self.config.interval, failures, crate::id::random_u64());
            let changed = async {
                match &self.cache {
                    Some(cache) => cache.changed().await,
                    None => std::future::pending().await,
                }
            };
            woken = false;
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = changed => woken = true,
                _ = self.stop.wait_for(|stop| *stop) => break,
            }
        }
        if let Some(cache) = &self.cache {
            if tokio::time::timeout(CACHE_TIMEOUT, cache.shutdown())
                .await
                .is_err()
            {
                tracing::warn!("posthog: the flag definitions cache did not shut down in time");
            }
        }
        self.shared.stopped.send_replace(true);
        tracing::debug!("posthog: definitions poller stopped");
    }

    /// One poll through the cache: read it, then fetch from PostHog if the cache says this
    /// instance should (storing what is new), or directly if the cache failed. `None` when
    /// nothing was fetched.
    async fn poll_with_cache(&mut self, cache: &dyn DefinitionsCache) -> Option<Fetched> {
        if !self.read_cache(cache).await {
            return Some(self.fetch_directly().await);
        }
        match tokio::time::timeout(CACHE_TIMEOUT, cache.should_fetch()).await {
            Ok(Ok(true)) => {}
            Ok(Ok(false)) => {
                self.cache_ok();
                return None;
            }
            Ok(Err(e)) => {
                self.cache_failed(&e.to_string());
                return Some(self.fetch_directly().await);
            }
            Err(_) => {
                self.cache_failed("timed out");
                return Some(self.fetch_directly().await);
            }
        }
        self.cache_ok();
        let fetched = self.fetch_once().await;
        let body = match &fetched {
            Fetched::Installed(body) => body.clone(),
            Fetched::Cleared => Bytes::from_static(EMPTY_DEFINITIONS),
            _ => return Some(fetched),
        };
        let etag = self
            .etag
            .as_ref()
            .and_then(|e| e.to_str().ok())
            .map(str::to_owned);
        match tokio::time::timeout(CACHE_TIMEOUT, cache.store(etag, body)).await {
            Ok(Ok(Some(version))) => {
                diag!(version = %version, "posthog: stored new flag definitions in the cache");
                self.cache_version = Some(version);
            }
            Ok(Ok(None)) => {
                tracing::debug!("posthog: the definitions cache did not take this instance's definitions (lease lost)");
            }
            Ok(Err(e)) => self.cache_failed(&e.to_string()),
            Err(_) => self.cache_failed("timed out"),
        }
        Some(fetched)
    }

    /// Reads the cache and installs what is new in it. `false` when the cache failed.
    async fn read_cache(&mut self, cache: &dyn DefinitionsCache) -> bool {
        let read = tokio::time::timeout(CACHE_TIMEOUT, cache.read(self.cache_version.as_deref()));
        match read.await {
            Ok(Ok(Some(stored))) => {
                self.cache_ok();
                self.install_cached(stored);
                true
            }
            Ok(Ok(None)) => {
                self.cache_ok();
                true
            }
            Ok(Err(e)) => {
                self.cache_failed(&e.to_string());
                false
            }
            Err(_) => {
                self.cache_failed("timed out");
                false
            }
        }
    }

    /// Compiles definitions read from the cache, like a PostHog response: a body that does
    /// not compile is reported and ignored (its version is not read again).
    fn install_cached(&mut self, stored: CachedDefinitions) {
        self.cache_version = Some(stored.version.clone());
        match T::compile(&stored.body) {
            Ok(flags) => {
                self.etag = stored
                    .etag
                    .as_deref()
                    .and_then(|e| HeaderValue::from_str(e).ok());
                self.shared.install(flags);
                diag!(version = %stored.version, "posthog: flag definitions loaded from the cache");
            }
            Err(e) => {
                tracing::error!(error = %e, version = %stored.version, "posthog: the cached flag definitions could not be read; keeping the last ones");
            }
        }
    }

    /// A fetch from PostHog because the cache failed, counted.
    async fn fetch_directly(&mut self) -> Fetched {
        self.shared.cache_fallbacks.fetch_add(1, Relaxed);
        self.fetch_once().await
    }

    fn cache_failed(&mut self, error: &str) {
        if !self.degraded {
            self.degraded = true;
            tracing::warn!(error, "posthog: the flag definitions cache failed; polling PostHog directly until it answers again");
        }
    }

    fn cache_ok(&mut self) {
        if self.degraded {
            self.degraded = false;
            // The cache may have lost its contents (a restarted Redis): without an ETag, the
            // next fetch brings a full body to store.
            self.etag = None;
            self.cache_version = None;
            tracing::info!("posthog: the flag definitions cache answers again; using it");
        }
    }

    async fn fetch_once(&mut self) -> Fetched {
        let result = tokio::time::timeout(self.config.timeout, self.request()).await;
        let response = match result {
            Ok(Ok(response)) => response,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "posthog: could not load flag definitions; keeping the last ones");
                self.settle_first_attempt();
                return Fetched::Failed;
            }
            Err(_) => {
                tracing::warn!(timeout = ?self.config.timeout, "posthog: loading flag definitions timed out; keeping the last ones");
                self.settle_first_attempt();
                return Fetched::Failed;
            }
        };
        match response.status {
            StatusCode::NOT_MODIFIED => {
                if let Some(etag) = response.headers.get(header::ETAG) {
                    self.etag = Some(etag.clone());
                }
                self.settle_first_attempt();
                Fetched::NotModified
            }
            StatusCode::UNAUTHORIZED | StatusCode::PAYMENT_REQUIRED => {
                if response.status == StatusCode::UNAUTHORIZED {
                    tracing::error!("posthog: the personal API key was refused (401); local evaluation is off until it is accepted");
                } else {
                    tracing::warn!(
                        "posthog: feature flags are quota limited (402); local evaluation is off"
                    );
                }
                self.etag = None;
                self.shared.install(T::empty());
                Fetched::Cleared
            }
            status if status.is_success() => match T::compile(&response.body) {
                Ok(flags) => {
                    self.etag = response.headers.get(header::ETAG).cloned();
                    self.shared.install(flags);
                    Fetched::Installed(response.body)
                }
                Err(e) => {
                    tracing::error!(error = %e, "posthog: flag definitions could not be read; keeping the last ones");
                    self.settle_first_attempt();
                    Fetched::Failed
                }
            },
            status => {
                tracing::warn!(%status, "posthog: loading flag definitions failed; keeping the last ones");
                self.settle_first_attempt();
                Fetched::Failed
            }
        }
    }

    /// After the first attempt, whatever its outcome, waiters stop waiting.
    fn settle_first_attempt(&self) {
        self.shared.loaded.send_replace(true);
    }

    /// One fetch every poll interval: boxing it costs nothing noticeable, and keeps the
    /// poller's future plainly `Send`.
    fn request(&self) -> Pin<Box<dyn Future<Output = Result<FullResponse, BoxError>> + Send>> {
        let mut req = Request::new(Full::new(Bytes::new()));
        *req.method_mut() = Method::GET;
        *req.uri_mut() = self.config.uri.clone();
        let headers = req.headers_mut();
        headers.insert(header::AUTHORIZATION, self.config.authorization.clone());
        headers.insert(header::USER_AGENT, HeaderValue::from_static(USER_AGENT));
        if let Some(etag) = &self.etag {
            headers.insert(header::IF_NONE_MATCH, etag.clone());
        }
        let read: ReadResponse<Oneshot<HttpClient, Request<Full<Bytes>>>, ResponseBody> =
            ReadResponse::new(self.config.client.clone().oneshot(req), MAX_DEFINITIONS);
        Box::pin(read)
    }
}

impl<T> fmt::Debug for Poller<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Poller")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// The pause before the next fetch: the interval, or after failures an exponential backoff
/// from it (capped at 5 minutes), with up to 10 % jitter so a fleet does not fetch in step.
fn next_wait(interval: Duration, failures: u32, random: u64) -> Duration {
    let base = if failures == 0 {
        interval
    } else {
        interval
            .saturating_mul(1u32 << failures.min(10))
            .min(MAX_BACKOFF.max(interval))
    };
    let jitter = (random >> 11) as f64 / (1u64 << 53) as f64;
    base.mul_f64(1.0 + 0.1 * jitter)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{MockPostHog, MockResponse};
    use serde_json::json;

    /// Definitions "compiled" to their flag keys.
    #[derive(Debug, PartialEq)]
    struct Keys(Vec<String>);

    impl Compile for Keys {
        fn compile(body: &[u8]) -> Result<Self, String> {
            let v: serde_json::Value = serde_json::from_slice(body).map_err(|e| e.to_string())?;
            let flags = v["flags"].as_array().ok_or("no flags")?;
            Ok(Keys(
                flags
                    .iter()
                    .filter_map(|f| f["key"].as_str().map(str::to_owned))
                    .collect(),
            ))
        }
        fn empty() -> Self {
            Keys(Vec::new())
        }
    }

    const PATH: &str = "/flags/definitions";

    fn defs(keys: &[&str]) -> serde_json::Value {
        json!({"flags": keys.iter().map(|k| json!({"key": k})).collect::<Vec<_>>(),
               "group_type_mapping": {}, "cohorts": {}})
    }

    async fn start(mock: &MockPostHog) -> (Arc<Current<Keys>>, watch::Sender<bool>) {
        let config = PollerConfig::new(
            crate::net::default_client(),
            &mock.url(),
            "phc_project",
            "phx_personal",
            Duration::from_secs(30),
        )
        .unwrap();
        let shared = Current::<Keys>::new();
        let (stop, stop_rx) = watch::channel(false);
        tokio::spawn(Poller::new(config, shared.clone(), stop_rx).run());
        (shared, stop)
    }

    fn keys(shared: &Current<Keys>) -> Option<Vec<String>> {
        shared.current().map(|k| k.0.clone())
    }

    #[tokio::test(start_paused = true)]
    async fn loads_with_the_personal_key_and_revalidates_with_etag() {
        let mock = MockPostHog::start().await.unwrap();
        mock.enqueue(
            PATH,
            MockResponse::json(200, defs(&["a"])).with_header("etag", "\"v1\""),
        );
        mock.enqueue(
            PATH,
            MockResponse::status(304).with_header("etag", "\"v1\""),
        );
        mock.enqueue(
            PATH,
            MockResponse::json(200, defs(&["a", "b"])).with_header("etag", "\"v2\""),
        );
        let (shared, stop) = start(&mock).await;
        assert!(shared.wait_loaded(Duration::from_secs(5)).await);
        assert_eq!(keys(&shared), Some(vec!["a".to_owned()]));
        let first = &mock.requests_to(PATH)[0];
        assert_eq!(first.header("authorization"), Some("Bearer phx_personal"));
        assert_eq!(
            first.query.as_deref(),
            Some("token=phc_project&send_cohorts")
        );
        assert_eq!(first.header("if-none-match"), None);

        mock.wait_for_requests(PATH, 2, Duration::from_secs(40))
            .await
            .unwrap();
        assert_eq!(
            mock.requests_to(PATH)[1].header("if-none-match"),
            Some("\"v1\"")
        );
        assert_eq!(
            keys(&shared),
            Some(vec!["a".to_owned()]),
            "304 keeps the definitions"
        );

        mock.wait_for_requests(PATH, 3, Duration::from_secs(40))
            .await
            .unwrap();
        tokio::task::yield_now().await;
        assert_eq!(
            mock.requests_to(PATH)[2].header("if-none-match"),
            Some("\"v1\"")
        );
        let reqs = mock.requests_to(PATH);
        let gap = reqs[1].received_at - reqs[0].received_at;
        assert!(
            gap >= Duration::from_secs(30) && gap <= Duration::from_secs(33),
            "{gap:?}"
        );
        stop.send_replace(true);
    }

    #[tokio::test(start_paused = true)]
    async fn unauthorized_and_quota_limited_clear_the_definitions() {
        for status in [401, 402] {
            let mock = MockPostHog::start().await.unwrap();
            mock.enqueue(PATH, MockResponse::json(200, defs(&["a"])));
            mock.enqueue(PATH, MockResponse::status(status));
            let (shared, stop) = start(&mock).await;
            assert!(shared.wait_loaded(Duration::from_secs(5)).await);
            assert_eq!(keys(&shared), Some(vec!["a".to_owned()]));
            mock.wait_for_requests(PATH, 2, Duration::from_secs(40))
                .await
                .unwrap();
            tokio::task::yield_now().await;
            assert_eq!(keys(&shared), Some(vec![]), "{status} clears");
            stop.send_replace(true);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn failures_keep_the_last_set_back_off_and_recover() {
        let mock = MockPostHog::start().await.unwrap();
        mock.enqueue(PATH, MockResponse::json(200, defs(&["a"])));
        mock.enqueue(PATH, MockResponse::status(500));
        mock.enqueue(PATH, MockResponse::status(200).with_raw_body("{not json"));
        mock.enqueue(PATH, MockResponse::json(200, defs(&["b"])));
        let (shared, stop) = start(&mock).await;
        assert!(shared.wait_loaded(Duration::from_secs(5)).await);
        mock.wait_for_requests(PATH, 3, Duration::from_secs(200))
            .await
            .unwrap();
        assert_eq!(
            keys(&shared),
            Some(vec!["a".to_owned()]),
            "failures keep the last good set"
        );
        mock.wait_for_requests(PATH, 4, Duration::from_secs(400))
            .await
            .unwrap();
        tokio::task::yield_now().await;
        assert_eq!(keys(&shared), Some(vec!["b".to_owned()]), "recovers");
        let reqs = mock.requests_to(PATH);
        let after_first_failure = reqs[2].received_at - reqs[1].received_at;
        let after_second_failure = reqs[3].received_at - reqs[2].received_at;
        assert!(
            after_first_failure >= Duration::from_secs(60),
            "{after_first_failure:?}"
        );
        assert!(
            after_second_failure >= Duration::from_secs(120),
            "{after_second_failure:?}"
        );
        stop.send_replace(true);
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_server_times_out_and_fetches_never_overlap() {
        let mock = MockPostHog::start().await.unwrap();
        mock.enqueue(
            PATH,
            MockResponse::json(200, defs(&["a"])).delay(Duration::from_secs(60)),
        );
        mock.enqueue(PATH, MockResponse::json(200, defs(&["b"])));
        let (shared, stop) = start(&mock).await;
        assert!(
            !shared.wait_loaded(Duration::from_secs(20)).await,
            "timed out after 10 s"
        );
        assert_eq!(
            mock.requests_to(PATH).len(),
            1,
            "no second fetch while the first runs"
        );
        mock.wait_for_requests(PATH, 2, Duration::from_secs(100))
            .await
            .unwrap();
        tokio::task::yield_now().await;
        assert_eq!(keys(&shared), Some(vec!["b".to_owned()]));
        stop.send_replace(true);
    }

    /// A cache whose every operation hangs, or fails, as the test says.
    struct BrokenCache {
        hang: bool,
    }

    impl DefinitionsCache for BrokenCache {
        fn read<'a>(
            &'a self,
            _known: Option<&'a str>,
        ) -> crate::flags::BoxFuture<'a, Result<Option<CachedDefinitions>, BoxError>> {
            let hang = self.hang;
            Box::pin(async move {
                if hang {
                    std::future::pending::<()>().await;
                }
                Err("connection refused".into())
            })
        }
        fn should_fetch(&self) -> crate::flags::BoxFuture<'_, Result<bool, BoxError>> {
            Box::pin(async { Ok(false) })
        }
        fn store(
            &self,
            _etag: Option<String>,
            _body: Bytes,
        ) -> crate::flags::BoxFuture<'_, Result<Option<String>, BoxError>> {
            Box::pin(async { Ok(None) })
        }
        fn shutdown(&self) -> crate::flags::BoxFuture<'_, ()> {
            Box::pin(async {})
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_failing_or_hanging_cache_is_bypassed_and_counted() {
        for hang in [false, true] {
            let mock = MockPostHog::start().await.unwrap();
            mock.set_default(PATH, MockResponse::json(200, defs(&["a"])));
            let config = PollerConfig::new(
                crate::net::default_client(),
                &mock.url(),
                "phc_project",
                "phx_personal",
                Duration::from_secs(30),
            )
            .unwrap();
            let shared = Current::<Keys>::new();
            let (stop, stop_rx) = watch::channel(false);
            let poller = Poller::new(config, shared.clone(), stop_rx)
                .with_cache(Some(Arc::new(BrokenCache { hang })));
            tokio::spawn(poller.run());
            assert!(
                shared.wait_loaded(Duration::from_secs(20)).await,
                "hang: {hang}"
            );
            assert_eq!(keys(&shared), Some(vec!["a".to_owned()]));
            mock.wait_for_requests(PATH, 2, Duration::from_secs(80))
                .await
                .unwrap();
            assert_eq!(shared.cache_fallbacks.load(Relaxed), 2, "hang: {hang}");
            if hang {
                let reqs = mock.requests_to(PATH);
                let gap = reqs[1].received_at - reqs[0].received_at;
                assert!(
                    gap >= Duration::from_secs(35),
                    "waited for the bound: {gap:?}"
                );
            }
            stop.send_replace(true);
        }
    }

    #[test]
    fn backoff_grows_caps_and_jitters() {
        let i = Duration::from_secs(30);
        assert_eq!(next_wait(i, 0, 0), i);
        assert_eq!(next_wait(i, 1, 0), Duration::from_secs(60));
        assert_eq!(next_wait(i, 2, 0), Duration::from_secs(120));
        assert_eq!(next_wait(i, 9, 0), MAX_BACKOFF);
        assert!(next_wait(i, 0, u64::MAX) <= Duration::from_secs(33));
        assert!(next_wait(i, 0, u64::MAX) > i);
        // An interval longer than the cap is never shortened.
        assert_eq!(
            next_wait(Duration::from_secs(600), 3, 0),
            Duration::from_secs(600)
        );
    }

    #[test]
    fn token_is_url_encoded() {
        assert_eq!(form_urlencode("phc_abc-12"), "phc_abc-12");
        assert_eq!(form_urlencode("a b&c"), "a%20b%26c");
    }
}
