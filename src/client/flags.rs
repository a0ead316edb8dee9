//! The client's feature-flag API.

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
};

use serde::de::DeserializeOwned;
use serde_json::Value;
use tower::{util::BoxCloneSyncService, ServiceExt};
use uuid::Uuid;

use super::PostHog;
use tokio::sync::watch;

use crate::{
    capture::Batch,
    flags::local::{
        compiled::CompiledFlags,
        matcher::{EvalContext, LocalMatch},
        poller::Shared,
    },
    flags::{
        decode_payload, AllFlags, FallbackCache, FeatureFlagResult, FlagCalled, FlagCalledDedup,
        FlagError, FlagEvaluations, FlagRecord, FlagValue, FlagsRequest, FlagsResponse,
        ReportFlagCalled,
    },
    BoxError, CaptureError, Event,
};

/// The type-erased flags stack: coalesce, retry, timeout, `RemoteFlags`.
pub(crate) type FlagsService = BoxCloneSyncService<FlagsRequest, Arc<FlagsResponse>, BoxError>;

/// What the client needs for flags.
pub(crate) struct FlagsClient {
    pub(crate) service: FlagsService,
    pub(crate) reporter: Arc<FlagCalledReporter>,
    pub(crate) fallback: Option<FallbackCache>,
    pub(crate) send_events: bool,
    /// Local evaluation: the definitions the poller keeps current.
    pub(crate) local: Option<Arc<Shared<CompiledFlags>>>,
    /// Stops the poller (dropping it does too).
    pub(crate) stop_poller: Option<watch::Sender<bool>>,
}

/// The reason sent for flags decided in-process.
const EVALUATED_LOCALLY: &str = "Evaluated locally";

impl FlagsClient {
    /// The current local definitions, if local evaluation is on and they are loaded.
    fn definitions(&self) -> Option<Arc<CompiledFlags>> {
        self.local.as_ref()?.current()
    }

    /// The definitions to evaluate `request` with, unless it asks for the server.
    fn definitions_for(&self, request: &FlagsRequest) -> Option<Arc<CompiledFlags>> {
        if request.force_remote {
            return None;
        }
        self.definitions()
    }
}

fn context(request: &FlagsRequest) -> EvalContext<'_> {
    EvalContext {
        distinct_id: &request.distinct_id,
        device_id: request.device_id.as_deref(),
        person_properties: &request.person_properties,
        groups: &request.groups,
        group_properties: &request.group_properties,
    }
}

/// A local answer as a snapshot record.
fn local_record(key: &str, m: &LocalMatch<'_>) -> FlagRecord {
    FlagRecord {
        payload: decode_payload(key, m.payload),
        value: m.value.clone(),
        reason: Some(EVALUATED_LOCALLY.to_owned()),
        id: m.id,
        version: None,
        locally_evaluated: true,
        has_experiment: m.has_experiment,
    }
}

/// Evaluates `keys` (or every defined flag) locally: the answers, and the keys left undecided.
fn evaluate_locally(
    defs: &CompiledFlags,
    request: &FlagsRequest,
) -> (BTreeMap<String, FlagRecord>, Vec<String>) {
    let ctx = context(request);
    let mut decided = BTreeMap::new();
    let mut undecided = Vec::new();
    let mut one = |key: &str| match defs.evaluate(key, &ctx) {
        Ok(m) => {
            decided.insert(key.to_owned(), local_record(key, &m));
        }
        Err(_) => undecided.push(key.to_owned()),
    };
    match &request.flag_keys {
        Some(keys) => keys.iter().for_each(|k| one(k)),
        None => defs.keys().for_each(&mut one),
    }
    (decided, undecided)
}

/// Deduplicates `$feature_flag_called` and captures it.
pub(crate) struct FlagCalledReporter {
    pub(crate) batch: Option<Batch>,
    pub(crate) dedup: FlagCalledDedup,
}

impl ReportFlagCalled for FlagCalledReporter {
    fn first_time(
        &self,
        distinct_id: &str,
        key: &str,
        value: Option<&FlagValue>,
        groups: &BTreeMap<String, String>,
    ) -> bool {
        !distinct_id.trim().is_empty() && self.dedup.first_time(distinct_id, key, value, groups)
    }

    fn report(&self, called: FlagCalled) {
        if let Some(batch) = &self.batch {
            // A refusal (full queue, shut down) is counted and reported by the batch itself.
            let _ = batch.try_capture(called.into_event());
        }
    }
}

impl PostHog {
    /// Evaluates one flag on PostHog and returns its value.
    ///
    /// `Ok(FlagValue::Bool(false))` means the flag is off; `Err(FlagError::Missing)` that
    /// PostHog does not know it; any other error that it could not be evaluated (the caller
    /// picks the fallback). Reports `$feature_flag_called` (once per person, value and groups)
    /// unless switched off for the client or the call.
    ///
    /// `request` is a distinct id, or a [`FlagsRequest`] with person and group properties.
    ///
    /// ```no_run
    /// # async fn f(posthog: posthog_tower::PostHog) {
    /// use posthog_tower::flags::{FlagValue, FlagsRequest};
    ///
    /// let variant = posthog
    ///     .get_feature_flag("checkout-layout", FlagsRequest::new("user-42").group("company", "acme"))
    ///     .await
    ///     .unwrap_or(FlagValue::Bool(false));
    /// # }
    /// ```
    pub async fn get_feature_flag(
        &self,
        key: &str,
        request: impl Into<FlagsRequest>,
    ) -> Result<FlagValue, FlagError> {
        self.flag_result(key, request.into(), true)
            .await
            .map(|r| r.value)
    }

    /// Whether one flag is on (a variant counts as on). See
    /// [`get_feature_flag`](Self::get_feature_flag) for the errors and the event.
    ///
    /// ```no_run
    /// # async fn f(posthog: posthog_tower::PostHog) {
    /// if posthog.is_feature_enabled("new-checkout", "user-42").await.unwrap_or(false) {
    ///     // new checkout
    /// }
    /// # }
    /// ```
    pub async fn is_feature_enabled(
        &self,
        key: &str,
        request: impl Into<FlagsRequest>,
    ) -> Result<bool, FlagError> {
        self.flag_result(key, request.into(), true)
            .await
            .map(|r| r.is_enabled())
    }

    /// One flag's payload for the person's value, decoded from JSON (`Ok(None)` when the flag
    /// has no payload for that value). Reports no event unless the request asks for it.
    pub async fn get_feature_flag_payload(
        &self,
        key: &str,
        request: impl Into<FlagsRequest>,
    ) -> Result<Option<Value>, FlagError> {
        self.flag_result(key, request.into(), false)
            .await
            .map(|r| r.payload)
    }

    /// Like [`get_feature_flag_payload`](Self::get_feature_flag_payload), decoded into `T`.
    pub async fn get_feature_flag_payload_as<T: DeserializeOwned>(
        &self,
        key: &str,
        request: impl Into<FlagsRequest>,
    ) -> Result<Option<T>, FlagError> {
        self.flag_result(key, request.into(), false)
            .await?
            .payload_as()
    }

    /// One flag's value, payload and reason from a single evaluation. Reports
    /// `$feature_flag_called` like [`get_feature_flag`](Self::get_feature_flag).
    ///
    /// With the fallback cache on, a failed evaluation returns the last good result (at most
    /// an hour old) with [`FeatureFlagResult::stale_because`] set.
    pub async fn get_feature_flag_result(
        &self,
        key: &str,
        request: impl Into<FlagsRequest>,
    ) -> Result<FeatureFlagResult, FlagError> {
        self.flag_result(key, request.into(), true).await
    }

    /// Every flag's value for the person (one request; no events).
    pub async fn get_all_flags(
        &self,
        request: impl Into<FlagsRequest>,
    ) -> Result<HashMap<String, FlagValue>, FlagError> {
        self.get_all_flags_and_payloads(request)
            .await
            .map(|all| all.flags)
    }

    /// Every flag's value and the decoded payloads of the enabled ones (one request; no
    /// events). Unlike posthog-python, payloads are decoded JSON, and a malformed one is left
    /// out without affecting the others.
    pub async fn get_all_flags_and_payloads(
        &self,
        request: impl Into<FlagsRequest>,
    ) -> Result<AllFlags, FlagError> {
        let flags = self.flags_client()?;
        let request = request.into();
        let mut all = AllFlags::default();
        let mut remote_request = request.clone();
        if let Some(defs) = flags.definitions_for(&request) {
            let (decided, undecided) = evaluate_locally(&defs, &request);
            for (key, record) in decided {
                if record.value.is_enabled() {
                    if let Some(payload) = record.payload {
                        all.payloads.insert(key.clone(), payload);
                    }
                }
                all.flags.insert(key, record.value);
            }
            if undecided.is_empty() || request.only_evaluate_locally {
                return Ok(all);
            }
            remote_request.flag_keys = Some(undecided);
        } else if request.only_evaluate_locally {
            return Err(FlagError::Inconclusive);
        }
        let response = call(&flags.service, remote_request).await?;
        for (key, flag) in &response.flags {
            if all.flags.contains_key(key) {
                continue;
            }
            let value = flag.value();
            if value.is_enabled() {
                if let Some(payload) = decode_payload(key, flag.metadata.payload.as_deref()) {
                    all.payloads.insert(key.clone(), payload);
                }
            }
            all.flags.insert(key.clone(), value);
        }
        Ok(all)
    }

    /// Evaluates every flag (or the request's [`flag_keys`](FlagsRequest::flag_keys)) for the
    /// person in one request and returns a snapshot to read them from.
    ///
    /// It never fails: on error the snapshot is empty and
    /// [`FlagEvaluations::error`] says why. An explicitly empty key list makes no request.
    /// Reading a flag from the snapshot reports `$feature_flag_called` once per key.
    ///
    /// ```no_run
    /// # async fn f(posthog: posthog_tower::PostHog) -> Result<(), Box<dyn std::error::Error>> {
    /// use posthog_tower::Event;
    ///
    /// let flags = posthog.evaluate_flags("user-42").await;
    /// let layout = flags.get_flag("checkout-layout");
    /// posthog.capture(Event::new("checkout viewed", "user-42").flags(&flags))?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn evaluate_flags(&self, request: impl Into<FlagsRequest>) -> FlagEvaluations {
        let request = request.into();
        let Ok(flags) = self.flags_client() else {
            return FlagEvaluations::failed(&request, Some(FlagError::Disabled), None);
        };
        let reporter = request
            .send_feature_flag_events
            .unwrap_or(flags.send_events)
            .then(|| flags.reporter.clone() as Arc<dyn ReportFlagCalled>);
        if request.distinct_id.trim().is_empty()
            || request.flag_keys.as_ref().is_some_and(|k| k.is_empty())
        {
            return FlagEvaluations::failed(&request, None, reporter);
        }
        let mut remote_request = request.clone();
        let mut local = BTreeMap::new();
        let mut local_gate = false;
        if let Some(defs) = flags.definitions_for(&request) {
            let (decided, undecided) = evaluate_locally(&defs, &request);
            local = decided;
            local_gate = defs.minimal_flag_called_events();
            if undecided.is_empty() || request.only_evaluate_locally {
                return FlagEvaluations::failed(&request, None, reporter)
                    .with_local(local, local_gate, false);
            }
            // One request, for only what local evaluation left undecided.
            remote_request.flag_keys = Some(undecided);
        } else if request.only_evaluate_locally {
            return FlagEvaluations::failed(&request, Some(FlagError::Inconclusive), reporter);
        }
        let snapshot = match call(&flags.service, remote_request.clone()).await {
            Ok(response) => FlagEvaluations::from_response(&remote_request, &response, reporter),
            Err(error) => {
                tracing::warn!(error = %error, "posthog: flags could not be evaluated");
                FlagEvaluations::failed(&request, Some(error), reporter)
            }
        };
        snapshot.with_local(local, local_gate, true)
    }

    /// [`evaluate_flags`](Self::evaluate_flags) without I/O: `Some` when the loaded definitions
    /// decide every requested flag, `None` when the server would have to be asked.
    pub(crate) fn try_evaluate_locally(&self, request: &FlagsRequest) -> Option<FlagEvaluations> {
        let flags = self.flags_client().ok()?;
        let defs = flags.definitions_for(request)?;
        let (decided, undecided) = evaluate_locally(&defs, request);
        if !undecided.is_empty() && !request.only_evaluate_locally {
            return None;
        }
        let reporter = request
            .send_feature_flag_events
            .unwrap_or(flags.send_events)
            .then(|| flags.reporter.clone() as Arc<dyn ReportFlagCalled>);
        Some(FlagEvaluations::failed(request, None, reporter).with_local(
            decided,
            defs.minimal_flag_called_events(),
            false,
        ))
    }

    /// Evaluates the event's flags (for its distinct id and `$groups`) and records them on it
    /// (`$feature/<key>`, `$active_feature_flags`) before capturing it.
    ///
    /// This costs one `/flags` request per call (unless flags are evaluated locally): prefer
    /// [`evaluate_flags`](Self::evaluate_flags) once and [`Event::flags`] on every event.
    pub async fn capture_with_flags(&self, event: Event) -> Result<Uuid, CaptureError> {
        let Some(distinct_id) = event.distinct_id().map(str::to_owned) else {
            return self.capture(event);
        };
        let mut request = FlagsRequest::new(distinct_id).send_feature_flag_events(false);
        if let Some(Value::Object(groups)) = event.properties().get("$groups") {
            for (group_type, key) in groups {
                if let Some(key) = key.as_str() {
                    request = request.group(group_type.clone(), key);
                }
            }
        }
        let flags = self.evaluate_flags(request).await;
        self.capture(event.flags(&flags))
    }

    /// Waits until the first fetch of flag definitions settled, at most `timeout`; `true` when
    /// definitions are loaded and flags can be evaluated locally. Always `false` without a
    /// [personal API key](super::PostHogBuilder::personal_api_key).
    pub async fn wait_for_flag_definitions(&self, timeout: std::time::Duration) -> bool {
        match self.inner.flags.as_ref().and_then(|f| f.local.as_ref()) {
            Some(local) => local.wait_loaded(timeout).await,
            None => false,
        }
    }

    /// The flag definitions currently used for local evaluation (`None` without a personal
    /// API key or before they are loaded). A cheap handle on an immutable snapshot.
    pub fn local_flags(&self) -> Option<crate::flags::LocalFlags> {
        let definitions = self.inner.flags.as_ref()?.definitions()?;
        Some(crate::flags::LocalFlags::from_compiled(definitions))
    }

    fn flags_client(&self) -> Result<&FlagsClient, FlagError> {
        self.inner.flags.as_ref().ok_or(FlagError::Disabled)
    }

    /// The single-flag path shared by every single-flag method.
    async fn flag_result(
        &self,
        key: &str,
        mut request: FlagsRequest,
        sends_event_by_default: bool,
    ) -> Result<FeatureFlagResult, FlagError> {
        let flags = self.flags_client()?;
        let send = request
            .send_feature_flag_events
            .unwrap_or(sends_event_by_default && flags.send_events);
        request.flag_keys = Some(vec![key.to_owned()]);
        if let Some(defs) = flags.definitions_for(&request) {
            if let Ok(m) = defs.evaluate(key, &context(&request)) {
                let record = local_record(key, &m);
                let result = FeatureFlagResult {
                    key: key.to_owned(),
                    value: record.value,
                    payload: record.payload,
                    reason: record.reason,
                    id: record.id,
                    version: None,
                    locally_evaluated: true,
                    request_id: None,
                    stale_because: None,
                };
                if let Some(cache) = &flags.fallback {
                    cache.put(&request.distinct_id, &result);
                }
                if send
                    && flags.reporter.first_time(
                        &request.distinct_id,
                        key,
                        Some(&result.value),
                        &request.groups,
                    )
                {
                    flags.reporter.report(FlagCalled {
                        distinct_id: request.distinct_id.clone(),
                        key: key.to_owned(),
                        response: Some(result.value.clone()),
                        payload: result.payload.clone(),
                        locally_evaluated: true,
                        reason: result.reason.clone(),
                        id: result.id,
                        has_experiment: m.has_experiment,
                        minimal_gate: defs.minimal_flag_called_events(),
                        groups: request.groups.clone(),
                        disable_geoip: request.disable_geoip,
                        ..FlagCalled::default()
                    });
                }
                return Ok(result);
            }
        }
        if request.only_evaluate_locally {
            // posthog-python reports the lookup even then, with no value and no error code.
            if send
                && flags
                    .reporter
                    .first_time(&request.distinct_id, key, None, &request.groups)
            {
                flags.reporter.report(FlagCalled {
                    distinct_id: request.distinct_id.clone(),
                    key: key.to_owned(),
                    groups: request.groups.clone(),
                    disable_geoip: request.disable_geoip,
                    ..FlagCalled::default()
                });
            }
            return Err(FlagError::Inconclusive);
        }
        let mut called = FlagCalled {
            distinct_id: request.distinct_id.clone(),
            key: key.to_owned(),
            groups: request.groups.clone(),
            disable_geoip: request.disable_geoip,
            ..FlagCalled::default()
        };
        let outcome = match call(&flags.service, request.clone()).await {
            Ok(response) => {
                called.request_id = response.request_id.clone();
                called.evaluated_at = response.evaluated_at;
                called.minimal_gate = response.minimal_flag_called_events;
                let computing = if response.errors_while_computing_flags {
                    "errors_while_computing_flags"
                } else {
                    ""
                };
                match response.flags.get(key) {
                    Some(flag) => {
                        let value = flag.value();
                        let result = FeatureFlagResult {
                            key: key.to_owned(),
                            payload: decode_payload(key, flag.metadata.payload.as_deref()),
                            value,
                            reason: flag.reason.as_ref().and_then(|r| r.description.clone()),
                            id: flag.metadata.id,
                            version: flag.metadata.version,
                            locally_evaluated: false,
                            request_id: response.request_id.clone(),
                            stale_because: None,
                        };
                        called.has_experiment = flag.metadata.has_experiment;
                        called.error = crate::flags::join_errors(&[computing]);
                        if let Some(cache) = &flags.fallback {
                            cache.put(&request.distinct_id, &result);
                        }
                        Ok(result)
                    }
                    None => {
                        called.error = crate::flags::join_errors(&[computing, "flag_missing"]);
                        Err(FlagError::Missing)
                    }
                }
            }
            Err(error) => {
                called.error = Some(error.code());
                match flags
                    .fallback
                    .as_ref()
                    .and_then(|cache| cache.get(&request.distinct_id, key))
                {
                    Some(mut stale) => {
                        tracing::warn!(flag = key, error = %error, "posthog: /flags failed; serving the last good value");
                        stale.stale_because = Some(error);
                        Ok(stale)
                    }
                    None => Err(error),
                }
            }
        };
        let value = outcome.as_ref().ok().map(|r| &r.value);
        if send
            && flags
                .reporter
                .first_time(&called.distinct_id, key, value, &called.groups)
        {
            if let Ok(result) = &outcome {
                called.response = Some(result.value.clone());
                called.payload = result.payload.clone();
                called.reason = result.reason.clone();
                called.id = result.id;
                called.version = result.version;
            }
            flags.reporter.report(called);
        }
        outcome
    }
}

/// Calls the flags stack, turning a quota-limited answer into an error.
async fn call(
    service: &FlagsService,
    request: FlagsRequest,
) -> Result<Arc<FlagsResponse>, FlagError> {
    let response = service
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
