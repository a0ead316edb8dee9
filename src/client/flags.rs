//! The client's feature-flag API: sugar over the flag decision ([`Decide`]).

use std::collections::{BTreeMap, HashMap};

use serde::de::DeserializeOwned;
use serde_json::Value;
use uuid::Uuid;

use super::PostHog;
use crate::{
    capture::Batch,
    error::CaptureError,
    event::Event,
    flags::{
        AllFlags, Decide, FeatureFlagResult, FlagCalledDedup, FlagError, FlagEvaluations,
        FlagValue, FlagsRequest, ReadAttribution, ReportFlagCalled,
    },
};

/// Deduplicates `$feature_flag_called` and `$experiment_exposure` (each in its own bounded
/// dedup) and captures them.
pub(crate) struct FlagCalledReporter {
    pub(crate) batch: Option<Batch>,
    pub(crate) dedup: FlagCalledDedup,
    pub(crate) exposures: FlagCalledDedup,
}

impl ReportFlagCalled for FlagCalledReporter {
    fn first_time(
        &self,
        distinct_id: &str,
        key: &str,
        value: Option<&FlagValue>,
        groups: &BTreeMap<String, String>,
        attribution: Option<&ReadAttribution>,
    ) -> bool {
        !distinct_id.trim().is_empty()
            && self
                .dedup
                .first_time(distinct_id, key, value, groups, attribution)
    }

    fn first_exposure(
        &self,
        distinct_id: &str,
        key: &str,
        groups: &BTreeMap<String, String>,
        exposure_key: u64,
    ) -> bool {
        !distinct_id.trim().is_empty()
            && self
                .exposures
                .first_exposure(distinct_id, key, groups, exposure_key)
    }

    fn report(&self, event: Event) -> bool {
        // A refusal (full queue, shut down) is counted and reported by the batch itself.
        self.batch
            .as_ref()
            .is_some_and(|batch| batch.try_capture(event).is_ok())
    }

    fn forget(
        &self,
        distinct_id: &str,
        key: &str,
        value: Option<&FlagValue>,
        groups: &BTreeMap<String, String>,
        attribution: &ReadAttribution,
    ) {
        self.dedup
            .forget(distinct_id, key, value, groups, Some(attribution));
    }

    fn forget_exposure(
        &self,
        distinct_id: &str,
        key: &str,
        groups: &BTreeMap<String, String>,
        exposure_key: u64,
    ) {
        self.exposures
            .forget_exposure(distinct_id, key, groups, exposure_key);
    }
}

/// What the client needs for flags: the decision, and the reporter it clears at shutdown.
pub(crate) struct FlagsClient {
    pub(crate) decide: Decide,
    pub(crate) reporter: std::sync::Arc<FlagCalledReporter>,
    /// Remote config payloads: `None` without a personal API key.
    pub(crate) remote_config: Option<crate::flags::RemoteConfig>,
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
            .map(|r| r.record.value)
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
            .map(|r| r.record.payload)
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

    /// The payload of the remote config flag `key`, as PostHog serves it decrypted:
    /// `GET {host}/api/projects/@current/feature_flags/{key}/remote_config`, authenticated
    /// with the [personal API key or project secret key](crate::PostHogBuilder::personal_api_key)
    /// (the project key goes along only as the `token` query parameter). Waits at most the
    /// [flags request timeout](crate::PostHogBuilder::feature_flags_request_timeout).
    ///
    /// `Ok(None)` when the flag has no payload. A payload PostHog serves as JSON text is
    /// decoded (`"{\"a\":1}"` becomes `{"a": 1}`); text that is not JSON stays a string.
    /// Errors: [`RemoteConfigError::MissingSecretKey`](crate::flags::RemoteConfigError::MissingSecretKey)
    /// without a secret key, [`Status`](crate::flags::RemoteConfigError::Status) for an
    /// unknown flag (404) or a refused key (401, 403), and the transport's failures. Reports
    /// no event and is not retried.
    ///
    /// ```no_run
    /// # async fn f() -> Result<(), Box<dyn std::error::Error>> {
    /// let posthog = posthog_tower::PostHog::builder("phc_project_key")
    ///     .personal_api_key("phs_project_secret_key")
    ///     .build()?;
    /// if let Some(config) = posthog.get_remote_config_payload("checkout-config").await? {
    ///     println!("max items: {}", config["max_items"]);
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub async fn get_remote_config_payload(
        &self,
        key: &str,
    ) -> Result<Option<Value>, crate::flags::RemoteConfigError> {
        use crate::flags::RemoteConfigError;
        let flags = self
            .inner
            .flags
            .as_ref()
            .ok_or(RemoteConfigError::Disabled)?;
        let remote = flags
            .remote_config
            .as_ref()
            .ok_or(RemoteConfigError::MissingSecretKey)?;
        remote.payload(key).await
    }

    /// Like [`get_remote_config_payload`](Self::get_remote_config_payload), decoded into `T`
    /// ([`RemoteConfigError::InvalidPayload`](crate::flags::RemoteConfigError::InvalidPayload)
    /// when it does not fit).
    ///
    /// ```no_run
    /// # async fn f(posthog: posthog_tower::PostHog) -> Result<(), Box<dyn std::error::Error>> {
    /// #[derive(serde::Deserialize)]
    /// struct Checkout {
    ///     max_items: u32,
    /// }
    /// let checkout: Option<Checkout> = posthog.get_remote_config_payload_as("checkout-config").await?;
    /// # let _ = checkout.map(|c| c.max_items);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn get_remote_config_payload_as<T: DeserializeOwned>(
        &self,
        key: &str,
    ) -> Result<Option<T>, crate::flags::RemoteConfigError> {
        match self.get_remote_config_payload(key).await? {
            None => Ok(None),
            Some(value) => serde_json::from_value(value)
                .map(Some)
                .map_err(|e| crate::flags::RemoteConfigError::InvalidPayload(e.to_string())),
        }
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
        let snapshot = flags.decide.evaluate_silently(request.into()).await;
        if let Some(error) = snapshot.error() {
            return Err(error.clone());
        }
        let mut all = AllFlags::default();
        for (key, record) in snapshot.records() {
            if record.value.is_enabled() {
                if let Some(payload) = &record.payload {
                    all.payloads.insert(key.to_owned(), payload.clone());
                }
            }
            // Each value as a single-flag lookup reads it (posthog-python's `get_value`).
            all.flags.insert(key.to_owned(), record.single_value());
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
        if request.distinct_id.trim().is_empty()
            || request.flag_keys.as_ref().is_some_and(|k| k.is_empty())
        {
            // Nothing to ask: an empty snapshot whose reads report as usual.
            return FlagEvaluations::failed(&request, None, flags.decide.reporter_for(&request));
        }
        flags.decide.evaluate(request).await
    }

    /// [`evaluate_flags`](Self::evaluate_flags) without I/O: `Some` when the loaded definitions
    /// decide every requested flag, `None` when the server would have to be asked.
    pub(crate) fn try_evaluate_locally(&self, request: &FlagsRequest) -> Option<FlagEvaluations> {
        self.flags_client()
            .ok()?
            .decide
            .try_evaluate_locally(request)
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
        match self.flags_client() {
            Ok(flags) => flags.decide.wait_for_definitions(timeout).await,
            Err(_) => false,
        }
    }

    /// The flag definitions currently used for local evaluation (`None` without a personal
    /// API key or before they are loaded). A cheap handle on an immutable snapshot.
    pub fn local_flags(&self) -> Option<crate::flags::LocalFlags> {
        self.flags_client().ok()?.decide.local_flags()
    }

    fn flags_client(&self) -> Result<&FlagsClient, FlagError> {
        self.inner.flags.as_ref().ok_or(FlagError::Disabled)
    }

    /// The single-flag path shared by every single-flag method.
    async fn flag_result(
        &self,
        key: &str,
        request: FlagsRequest,
        sends_event_by_default: bool,
    ) -> Result<FeatureFlagResult, FlagError> {
        self.flags_client()?
            .decide
            .one(key, request, sends_event_by_default)
            .await
    }
}
