//! [`Decide`]: the one place a flag is decided. Local definitions first, `/flags` for only
//! what they leave undecided, the fallback cache when `/flags` fails, and the
//! `$feature_flag_called` report of each read.

use std::{
    collections::BTreeMap,
    convert::Infallible,
    fmt,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use tokio::sync::watch;
use tower::{util::BoxCloneSyncService, ServiceExt};
use tower_service::Service;

use super::{
    cache::DefinitionsCache,
    called::{report_read, FlagCalled, ReadAttribution, ReportFlagCalled},
    evaluations::{decode_payload, FlagEvaluations, FlagRecord},
    fallback::{FallbackStore, MemoryFallbackStore},
    local::{
        compiled::CompiledFlags,
        environments::Admission,
        eval_context,
        poller::{Current, Poller, PollerConfig},
    },
    FeatureFlagResult, FlagError, FlagsRequest, FlagsResponse, LocalFlags,
};
use crate::{
    error::{BoxError, BuildError},
    net::HttpClient,
};

/// The remote half of the decision, type-erased: coalesce, retry, timeout, `RemoteFlags`.
pub(crate) type RemoteStack = BoxCloneSyncService<FlagsRequest, Arc<FlagsResponse>, BoxError>;

/// The reason recorded for flags decided in-process.
const EVALUATED_LOCALLY: &str = "Evaluated locally";

/// How many distinct ids the fallback cache remembers.
const FALLBACK_CAPACITY: usize = 10_000;

/// Flag definitions kept current by a poller, for local evaluation.
pub(crate) struct PolledDefinitions {
    shared: Arc<Current<CompiledFlags>>,
    stop: watch::Sender<bool>,
    /// A definitions cache is installed (its shutdown is awaited at the client's).
    cached: bool,
}

impl PolledDefinitions {
    /// The definitions and the poller that fetches them (`/flags/definitions` every
    /// `interval`, with the personal API key `secret`), which the caller runs until shutdown.
    pub(crate) fn start(
        client: HttpClient,
        host: &str,
        api_key: &str,
        secret: &str,
        interval: Duration,
        cache: Option<Arc<dyn DefinitionsCache>>,
    ) -> Result<(Self, impl Future<Output = ()> + Send + 'static), BuildError> {
        let config = PollerConfig::new(client, host, api_key, secret, interval)?;
        let shared = Current::<CompiledFlags>::new();
        let (stop, stop_rx) = watch::channel(false);
        let cached = cache.is_some();
        let poller = Poller::new(config, shared.clone(), stop_rx).with_cache(cache);
        Ok((
            PolledDefinitions {
                shared,
                stop,
                cached,
            },
            poller.run(),
        ))
    }
}

/// What [`Decide`] is built from.
pub(crate) struct DecideConfig {
    pub(crate) remote: RemoteStack,
    /// Where reads report `$feature_flag_called` (the client: dedup, then capture).
    pub(crate) reporter: Arc<dyn ReportFlagCalled>,
    /// Whether reads report `$feature_flag_called` unless a request says otherwise.
    pub(crate) send_events: bool,
    /// Serve the last good value of a flag for this long when `/flags` fails.
    pub(crate) fallback_max_age: Option<Duration>,
    /// Where those values live (in memory when `None`).
    pub(crate) fallback_store: Option<Arc<dyn FallbackStore>>,
    pub(crate) local: Option<PolledDefinitions>,
    /// The client's evaluation environments: flags tagged for none of them are left out
    /// locally, as PostHog leaves them out of `/flags` answers.
    pub(crate) environments: Option<Arc<[String]>>,
}

/// The flag decision, a `Service<FlagsRequest, Response = FlagEvaluations>` that never
/// fails: local definitions decide what they can, one `/flags` request asks for the rest (only
/// the undecided keys), and a failure is recorded in the snapshot. The client's flag methods
/// and the HTTP layer's `RequestFlags` all go through it. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Decide {
    inner: Arc<Inner>,
}

struct Inner {
    remote: RemoteStack,
    reporter: Arc<dyn ReportFlagCalled>,
    send_events: bool,
    /// The store of last good values and how long they serve.
    fallback: Option<(Arc<dyn FallbackStore>, Duration)>,
    local: Option<PolledDefinitions>,
    environments: Option<Arc<[String]>>,
}

/// Where a request stands after local evaluation.
enum LocalPart {
    /// Decided without `/flags` (every key, or all that local evaluation may decide).
    Done(FlagEvaluations),
    /// `/flags` is asked `remote` (the undecided keys); `decided` joins its answer.
    Ask {
        remote: FlagsRequest,
        decided: BTreeMap<String, FlagRecord>,
        minimal_gate: bool,
    },
}

impl Decide {
    pub(crate) fn new(config: DecideConfig) -> Self {
        Decide {
            inner: Arc::new(Inner {
                remote: config.remote,
                reporter: config.reporter,
                send_events: config.send_events,
                fallback: config.fallback_max_age.map(|age| {
                    let store = config
                        .fallback_store
                        .unwrap_or_else(|| Arc::new(MemoryFallbackStore::new(FALLBACK_CAPACITY)));
                    (store, age)
                }),
                local: config.local,
                environments: config.environments,
            }),
        }
    }

    /// The current local definitions, if local evaluation is on and they are loaded.
    fn definitions(&self) -> Option<Arc<CompiledFlags>> {
        self.inner.local.as_ref()?.shared.current()
    }

    /// The definitions to evaluate `request` with, unless it asks for the server.
    fn definitions_for(&self, request: &FlagsRequest) -> Option<Arc<CompiledFlags>> {
        if request.force_remote {
            return None;
        }
        self.definitions()
    }

    /// The loaded definitions as [`LocalFlags`].
    pub(crate) fn local_flags(&self) -> Option<LocalFlags> {
        self.definitions().map(LocalFlags::from_compiled)
    }

    /// Waits until the first fetch of definitions settled, at most `timeout`; `true` when
    /// they are loaded. `false` at once without local evaluation.
    pub(crate) async fn wait_for_definitions(&self, timeout: Duration) -> bool {
        match &self.inner.local {
            Some(local) => local.shared.wait_loaded(timeout).await,
            None => false,
        }
    }

    /// Polls that went to PostHog directly because the definitions cache failed.
    pub(crate) fn definitions_cache_fallbacks(&self) -> u64 {
        self.inner.local.as_ref().map_or(0, |local| {
            local
                .shared
                .cache_fallbacks
                .load(std::sync::atomic::Ordering::Relaxed)
        })
    }

    /// With a definitions cache, waits until the poller stopped and shut the cache down (a
    /// lease released), at most `timeout`.
    pub(crate) async fn polling_stopped(&self, timeout: Duration) {
        if let Some(local) = self.inner.local.as_ref().filter(|l| l.cached) {
            local.shared.wait_stopped(timeout).await;
        }
    }

    /// Stops the definitions poller, if any.
    pub(crate) fn stop_polling(&self) {
        if let Some(local) = &self.inner.local {
            local.stop.send_replace(true);
        }
    }

    /// The reporter for reads of `request`'s answers, unless it or the defaults say not to
    /// report.
    pub(crate) fn reporter_for(&self, request: &FlagsRequest) -> Option<Arc<dyn ReportFlagCalled>> {
        request
            .send_feature_flag_events
            .unwrap_or(self.inner.send_events)
            .then(|| self.inner.reporter.clone())
    }

    /// Evaluates `request` (every flag, or its keys), reporting reads as the request and the
    /// defaults say.
    pub(crate) async fn evaluate(&self, request: FlagsRequest) -> FlagEvaluations {
        let reporter = self.reporter_for(&request);
        self.evaluate_with(request, reporter).await
    }

    /// [`evaluate`](Self::evaluate), whose reads report nothing.
    pub(crate) async fn evaluate_silently(&self, request: FlagsRequest) -> FlagEvaluations {
        self.evaluate_with(request, None).await
    }

    /// [`evaluate`](Self::evaluate) without I/O: `Some` when the loaded definitions decide
    /// every requested flag (or the request allows only local evaluation), `None` when
    /// `/flags` would have to be asked.
    pub(crate) fn try_evaluate_locally(&self, request: &FlagsRequest) -> Option<FlagEvaluations> {
        self.definitions_for(request)?;
        match self.local_part(request, self.reporter_for(request)) {
            LocalPart::Done(snapshot) => Some(snapshot),
            LocalPart::Ask { .. } => None,
        }
    }

    async fn evaluate_with(
        &self,
        request: FlagsRequest,
        reporter: Option<Arc<dyn ReportFlagCalled>>,
    ) -> FlagEvaluations {
        let (remote, decided, minimal_gate) = match self.local_part(&request, reporter.clone()) {
            LocalPart::Done(snapshot) => return snapshot,
            LocalPart::Ask {
                remote,
                decided,
                minimal_gate,
            } => (remote, decided, minimal_gate),
        };
        let snapshot = match self.call(remote.clone()).await {
            Ok(response) => FlagEvaluations::from_response(&remote, &response, reporter),
            Err(error) => {
                tracing::warn!(error = %error, "posthog: flags could not be evaluated");
                FlagEvaluations::failed(&request, Some(error), reporter)
            }
        };
        snapshot.with_local(decided, minimal_gate, true)
    }

    /// Evaluates what the local definitions can decide.
    fn local_part(
        &self,
        request: &FlagsRequest,
        reporter: Option<Arc<dyn ReportFlagCalled>>,
    ) -> LocalPart {
        let Some(defs) = self.definitions_for(request) else {
            if request.only_evaluate_locally {
                let error = Some(FlagError::Inconclusive);
                return LocalPart::Done(FlagEvaluations::failed(request, error, reporter));
            }
            return LocalPart::Ask {
                remote: request.clone(),
                decided: BTreeMap::new(),
                minimal_gate: false,
            };
        };
        let (decided, undecided) =
            evaluate_locally(&defs, request, self.inner.environments.as_deref());
        let minimal_gate = defs.minimal_flag_called_events();
        if undecided.is_empty() || request.only_evaluate_locally {
            return LocalPart::Done(FlagEvaluations::failed(request, None, reporter).with_local(
                decided,
                minimal_gate,
                false,
            ));
        }
        // One request, for only what local evaluation left undecided.
        let mut remote = request.clone();
        remote.flag_keys = Some(undecided);
        LocalPart::Ask {
            remote,
            decided,
            minimal_gate,
        }
    }

    /// One flag, with what a single-flag read tells: the value and its attribution, the last
    /// good value when `/flags` fails and the fallback cache has one, and one
    /// `$feature_flag_called` (when `send` allows it).
    pub(crate) async fn one(
        &self,
        key: &str,
        mut request: FlagsRequest,
        sends_by_default: bool,
    ) -> Result<FeatureFlagResult, FlagError> {
        let send = request
            .send_feature_flag_events
            .unwrap_or(sends_by_default && self.inner.send_events);
        request.flag_keys = Some(vec![key.to_owned()]);
        let snapshot = match self.local_part(&request, None) {
            LocalPart::Done(snapshot)
                if snapshot.record(key).is_some() || self.excluded_locally(&request, key) =>
            {
                // An excluded flag reads as PostHog would answer: missing.
                snapshot
            }
            LocalPart::Done(_) | LocalPart::Ask { .. } if request.only_evaluate_locally => {
                // posthog-python reports the lookup even then, with no value and no error.
                self.report(send, &request, key, None, None, || {
                    FlagCalled::undecided(&request, key)
                });
                return Err(FlagError::Inconclusive);
            }
            _ => match self.call(request.clone()).await {
                Ok(response) => FlagEvaluations::from_response(&request, &response, None),
                Err(error) => return self.failed_one(send, &request, key, error).await,
            },
        };
        let outcome = match snapshot.record(key) {
            Some(record) if record.malformed => {
                return Ok(self.malformed_one(send, &request, key, record).await);
            }
            // No value, no fallback: posthog-python answers `None`.
            Some(record) if record.failed => Err(FlagError::EvaluationFailed),
            Some(record) => {
                let mut result = FeatureFlagResult::from_record(key, record, snapshot.request_id());
                result.record.value = record.single_value();
                if let Some((store, _)) = &self.inner.fallback {
                    store.put(&request.distinct_id, &result);
                }
                Ok(result)
            }
            None => Err(FlagError::Missing),
        };
        let value = outcome.as_ref().ok().map(|r| &r.record.value);
        let attribution = snapshot.record(key).and_then(|r| r.attribution.as_deref());
        self.report(send, &request, key, value, attribution, || {
            snapshot.called(key, true)
        });
        outcome
    }

    /// A single-flag read whose `/flags` record could not be read: like a failed request
    /// (`unknown_error`, no request id, the last good value if the fallback cache has one),
    /// except that without one the flag reads as off.
    async fn malformed_one(
        &self,
        send: bool,
        request: &FlagsRequest,
        key: &str,
        record: &FlagRecord,
    ) -> FeatureFlagResult {
        let stale = self.stale(&request.distinct_id, key).await;
        let result = match stale {
            Some(mut stale) => {
                stale.stale_because = Some(FlagError::InvalidResponse(format!(
                    "the /flags record of `{key}` could not be read"
                )));
                stale
            }
            None => FeatureFlagResult::from_record(key, record, None),
        };
        let value = result.record.value.clone();
        self.report(send, request, key, Some(&value), None, || FlagCalled {
            error: Some("unknown_error".to_owned()),
            response: Some(value.clone()),
            payload: result.record.payload.clone(),
            ..FlagCalled::undecided(request, key)
        });
        result
    }

    /// The fallback store's last good value of `key` for `distinct_id`, if young enough.
    async fn stale(&self, distinct_id: &str, key: &str) -> Option<FeatureFlagResult> {
        let (store, max_age) = self.inner.fallback.as_ref()?;
        match store.get(distinct_id, key, *max_age).await {
            Ok(found) => found,
            Err(error) => {
                tracing::warn!(flag = key, error = %error, "posthog: the flag fallback store failed; no last good value");
                None
            }
        }
    }

    /// A single-flag read whose `/flags` request failed: the last good value if the fallback
    /// cache has one, else the error.
    async fn failed_one(
        &self,
        send: bool,
        request: &FlagsRequest,
        key: &str,
        error: FlagError,
    ) -> Result<FeatureFlagResult, FlagError> {
        let stale = self.stale(&request.distinct_id, key).await;
        let value = stale.as_ref().map(|r| &r.record.value);
        self.report(send, request, key, value, None, || {
            FlagCalled::failed(request, key, &error, stale.as_ref())
        });
        match stale {
            Some(mut stale) => {
                tracing::warn!(flag = key, error = %error, "posthog: /flags failed; serving the last good value");
                stale.stale_because = Some(error);
                Ok(stale)
            }
            None => Err(error),
        }
    }

    /// Reports the read's flag events (`called()` builds them) unless `send` is off or they
    /// were reported before.
    fn report(
        &self,
        send: bool,
        request: &FlagsRequest,
        key: &str,
        value: Option<&super::FlagValue>,
        attribution: Option<&ReadAttribution>,
        called: impl FnOnce() -> FlagCalled,
    ) {
        if send {
            report_read(
                &*self.inner.reporter,
                &request.distinct_id,
                key,
                value,
                &request.groups,
                attribution,
                called,
            );
        }
    }

    /// Whether the local definitions leave `key` out for the client's evaluation
    /// environments (PostHog would not evaluate it either).
    fn excluded_locally(&self, request: &FlagsRequest, key: &str) -> bool {
        self.definitions_for(request)
            .and_then(|defs| {
                let flag = defs.flag(key)?;
                Some(
                    flag.evaluation_tags
                        .admits(self.inner.environments.as_deref())
                        == Admission::Excluded,
                )
            })
            .unwrap_or(false)
    }

    /// Calls the remote stack, turning a quota-limited answer into an error.
    async fn call(&self, request: FlagsRequest) -> Result<Arc<FlagsResponse>, FlagError> {
        let response = self
            .inner
            .remote
            .clone()
            .oneshot(request)
            .await
            .map_err(|e| FlagError::from_service(&e))?;
        if response.is_quota_limited() {
            tracing::warn!("posthog: feature flags are quota limited");
            return Err(FlagError::QuotaLimited);
        }
        Ok(response)
    }
}

impl Service<FlagsRequest> for Decide {
    type Response = FlagEvaluations;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<FlagEvaluations, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // The remote stack is cloned per call and made ready there.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: FlagsRequest) -> Self::Future {
        let this = self.clone();
        Box::pin(async move { Ok(this.evaluate(request).await) })
    }
}

impl fmt::Debug for Decide {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Decide")
            .field("local", &self.inner.local.is_some())
            .field("fallback", &self.inner.fallback.is_some())
            .field("send_events", &self.inner.send_events)
            .finish_non_exhaustive()
    }
}

/// Evaluates the request's keys (or every defined flag) locally: the answers, and the keys
/// left undecided.
fn evaluate_locally(
    defs: &CompiledFlags,
    request: &FlagsRequest,
    environments: Option<&[String]>,
) -> (BTreeMap<String, FlagRecord>, Vec<String>) {
    let ctx = eval_context(request);
    let mut decided = BTreeMap::new();
    let mut undecided = Vec::new();
    let mut one = |key: &str| match admission(defs, key, environments) {
        Admission::Excluded => {}
        Admission::Inconclusive => undecided.push(key.to_owned()),
        Admission::Evaluate => evaluate_one(defs, key, &ctx, &mut decided, &mut undecided),
    };
    match &request.flag_keys {
        Some(keys) => keys.iter().for_each(|k| one(k)),
        None => defs.keys().for_each(&mut one),
    }
    (decided, undecided)
}

/// What the client's evaluation environments make of flag `key` (a flag not in the
/// definitions is evaluated, which finds it inconclusive).
#[inline]
fn admission(defs: &CompiledFlags, key: &str, environments: Option<&[String]>) -> Admission {
    match (environments, defs.flag(key)) {
        (Some(environments), Some(flag)) => flag.evaluation_tags.admits(Some(environments)),
        _ => Admission::Evaluate,
    }
}

fn evaluate_one(
    defs: &CompiledFlags,
    key: &str,
    ctx: &super::local::matcher::EvalContext<'_>,
    decided: &mut BTreeMap<String, FlagRecord>,
    undecided: &mut Vec<String>,
) {
    match defs.evaluate(key, ctx) {
        Ok(m) => {
            let record = FlagRecord {
                payload: decode_payload(key, m.payload),
                reason: Some(EVALUATED_LOCALLY.to_owned()),
                id: m.id,
                has_experiment: m.has_experiment,
                ..FlagRecord::new(m.value, true)
            };
            decided.insert(key.to_owned(), record);
        }
        Err(_) => undecided.push(key.to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use tower::service_fn;

    use super::*;
    use crate::{flags::FlagValue, Event};

    /// Reports nothing.
    struct Silent;

    impl ReportFlagCalled for Silent {
        fn first_time(
            &self,
            _: &str,
            _: &str,
            _: Option<&FlagValue>,
            _: &BTreeMap<String, String>,
            _: Option<&ReadAttribution>,
        ) -> bool {
            false
        }

        fn first_exposure(&self, _: &str, _: &str, _: &BTreeMap<String, String>, _: u64) -> bool {
            false
        }

        fn report(&self, _: Event) -> bool {
            true
        }
    }

    const DEFINITIONS: &str = r#"{"flags": [
        {"id": 1, "key": "everyone", "active": true,
         "filters": {"groups": [{"properties": [], "rollout_percentage": 100}]}},
        {"id": 2, "key": "needs-plan", "active": true,
         "filters": {"groups": [{"properties": [
            {"key": "plan", "value": "pro", "operator": "exact", "type": "person"}],
            "rollout_percentage": 100}]}}
    ], "group_type_mapping": {}, "cohorts": {}}"#;

    /// A `Decide` whose remote stack answers every key it is asked for as enabled and records
    /// the keys of each request.
    fn decide(asked: Arc<Mutex<Vec<Option<Vec<String>>>>>) -> Decide {
        let remote = service_fn(move |request: FlagsRequest| {
            let asked = asked.clone();
            async move {
                let keys = request.flag_keys.clone().unwrap_or_default();
                asked.lock().unwrap().push(request.flag_keys);
                let flags: serde_json::Map<String, serde_json::Value> = keys
                    .into_iter()
                    .map(|k| (k.clone(), serde_json::json!({"key": k, "enabled": true})))
                    .collect();
                let body = serde_json::json!({ "flags": flags }).to_string();
                Ok::<_, BoxError>(Arc::new(FlagsResponse::from_json(body.as_bytes())?))
            }
        });
        let current = Current::<CompiledFlags>::new();
        current.install(CompiledFlags::from_json(DEFINITIONS.as_bytes()).unwrap());
        Decide::new(DecideConfig {
            remote: BoxCloneSyncService::new(remote),
            reporter: Arc::new(Silent),
            send_events: false,
            fallback_max_age: None,
            fallback_store: None,
            local: Some(PolledDefinitions {
                shared: current,
                stop: watch::channel(false).0,
                cached: false,
            }),
            environments: None,
        })
    }

    /// As a `Service`: the local definitions decide what they can and `/flags` is asked for
    /// only the rest, in one request; the snapshot holds both.
    #[tokio::test]
    async fn only_the_keys_local_evaluation_leaves_undecided_go_remote() {
        let asked = Arc::new(Mutex::new(Vec::new()));
        let snapshot = decide(asked.clone())
            .oneshot(FlagsRequest::new("u"))
            .await
            .unwrap();
        assert_eq!(
            *asked.lock().unwrap(),
            vec![Some(vec!["needs-plan".to_owned()])]
        );
        let everyone = snapshot.record("everyone").expect("decided locally");
        assert!(everyone.locally_evaluated);
        let remote = snapshot.record("needs-plan").expect("asked remotely");
        assert!(!remote.locally_evaluated);
        assert_eq!(snapshot.error(), None);

        // With the property the definitions need, nothing goes remote.
        let with_plan = FlagsRequest::new("u").person_property("plan", "pro");
        let snapshot = decide(asked.clone()).oneshot(with_plan).await.unwrap();
        assert_eq!(asked.lock().unwrap().len(), 1, "no second request");
        assert!(snapshot.record("needs-plan").unwrap().locally_evaluated);
    }

    /// A single-flag read decided locally makes no request; one left undecided asks for that
    /// key alone.
    #[tokio::test]
    async fn one_flag_goes_remote_only_when_undecided() {
        let asked = Arc::new(Mutex::new(Vec::new()));
        let decide = decide(asked.clone());
        let local = decide.one("everyone", FlagsRequest::new("u"), true).await;
        assert!(local.unwrap().record.locally_evaluated);
        assert!(asked.lock().unwrap().is_empty());
        let remote = decide.one("needs-plan", FlagsRequest::new("u"), true).await;
        assert_eq!(remote.unwrap().record.value, FlagValue::Bool(true));
        assert_eq!(
            *asked.lock().unwrap(),
            vec![Some(vec!["needs-plan".to_owned()])]
        );
    }
}
