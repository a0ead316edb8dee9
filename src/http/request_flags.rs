//! [`RequestFlags`]: the feature flags of the caller of one request.

use std::{fmt, sync::Arc};

use serde_json::Value;
use tokio::sync::OnceCell;

use super::flag_inputs::{FlagInputs, SharedFlagInputs};
use crate::{
    context::RequestContext,
    flags::{FlagEvaluations, FlagValue, FlagsRequest},
    PostHog,
};

/// The caller's feature flags, for every request that went through
/// [`InjectFlags`](super::InjectFlags) (part of [`PostHogLayer`](super::PostHogLayer)): an axum
/// extractor, or [`RequestFlags::from_extensions`] elsewhere (tonic).
///
/// Cheap to clone (two reference counts, no allocation); every clone shares one evaluation.
/// By default nothing is evaluated (or allocated) until a flag is read. With local
/// definitions loaded, a read evaluates only the flag read (and the flags it depends on),
/// once per request, so a request's cost grows with the flags it reads, not with the
/// project's flag count. A flag local evaluation cannot decide (or every flag, without
/// definitions) is asked of `/flags` in one request for every flag of the caller, whose
/// answer later reads (from any clone) use. The pageview carries the flags read. With
/// [eager keys](super::PostHogLayer::eager_flags) those keys are evaluated as soon as the
/// request arrives, concurrently with the handler.
///
/// Reads never fail: a flag that could not be evaluated (PostHog unreachable, an anonymous
/// caller, flags disabled) is off, and the failure is logged and counted in
/// [`Stats::flag_errors`](crate::capture::Stats::flag_errors). Reading a flag reports
/// `$feature_flag_called` as [`PostHog::get_feature_flag`] does.
///
/// # Example
///
/// ```
/// use posthog_tower::http::RequestFlags;
///
/// async fn checkout(flags: RequestFlags) -> &'static str {
///     if flags.is_enabled("new-checkout").await {
///         "new"
///     } else {
///         "old"
///     }
/// }
/// ```
#[derive(Clone)]
pub struct RequestFlags {
    /// Whose flags (an anonymous caller's are all off); the evaluations are attached to it,
    /// created on the first read.
    context: RequestContext,
    source: Arc<FlagSource>,
}

/// Where a layer's [`RequestFlags`] get their answers: shared by every request.
pub(crate) struct FlagSource {
    posthog: PostHog,
    /// Keys evaluated eagerly.
    eager_keys: Option<Arc<[String]>>,
    /// Makes each request's person properties and groups.
    inputs: Option<SharedFlagInputs>,
}

impl FlagSource {
    pub(crate) fn new(posthog: PostHog, eager_keys: Option<Arc<[String]>>) -> Arc<Self> {
        FlagSource::with_inputs(posthog, eager_keys, None)
    }

    pub(crate) fn with_inputs(
        posthog: PostHog,
        eager_keys: Option<Arc<[String]>>,
        inputs: Option<SharedFlagInputs>,
    ) -> Arc<Self> {
        Arc::new(FlagSource {
            posthog,
            eager_keys,
            inputs,
        })
    }

    /// The maker of each request's inputs, if the layer has one.
    pub(crate) fn inputs(&self) -> Option<&SharedFlagInputs> {
        self.inputs.as_ref()
    }

    pub(crate) fn eager_keys(&self) -> Option<&Arc<[String]>> {
        self.eager_keys.as_ref()
    }

    /// The client the flags (and the layer's pageviews) go through.
    pub(crate) fn posthog(&self) -> &PostHog {
        &self.posthog
    }
}

/// One request's evaluations, attached to its context on first use.
#[derive(Default)]
struct Evaluated {
    /// The eager keys' snapshot.
    eager: OnceCell<FlagEvaluations>,
    /// Every flag, evaluated on first use.
    all: OnceCell<FlagEvaluations>,
    /// Flags decided locally one at a time, in the order they were first read.
    keys: std::sync::Mutex<Vec<(Box<str>, FlagEvaluations)>>,
    /// The layer's [`FlagInputs`] for this request, made when it arrived.
    inputs: Option<FlagInputs>,
}

impl RequestFlags {
    /// A lazy handle for `distinct_id` (`None`: an anonymous caller, whose flags are all off).
    pub fn new(posthog: PostHog, distinct_id: Option<String>) -> Self {
        RequestFlags::with_source(
            FlagSource::new(posthog, None),
            RequestContext::new(distinct_id),
        )
    }

    /// The flags of the request whose extensions these are: those [`PostHogLayer`] (or
    /// [`InjectFlags`](super::InjectFlags)) attached to its [`RequestContext`]. `None` when the
    /// request did not go through the layer. Every handle of one request shares one
    /// evaluation.
    ///
    /// [`PostHogLayer`]: super::PostHogLayer
    ///
    /// ```
    /// use posthog_tower::http::RequestFlags;
    ///
    /// fn handler(request: &http::Request<()>) -> Option<bool> {
    ///     let flags = RequestFlags::from_extensions(request.extensions())?;
    ///     Some(flags.distinct_id().is_some())
    /// }
    /// assert_eq!(handler(&http::Request::new(())), None);
    /// ```
    pub fn from_extensions(extensions: &http::Extensions) -> Option<RequestFlags> {
        RequestContext::from_extensions(extensions).and_then(RequestFlags::of_context)
    }

    /// The flags a layer attached to `context`, if any.
    pub(crate) fn of_context(context: &RequestContext) -> Option<RequestFlags> {
        let source = context.layer_state::<FlagSource>()?;
        Some(RequestFlags::with_source(source, context.clone()))
    }

    /// A handle for the caller of `context`, sharing the evaluations already attached to it.
    #[inline]
    pub(crate) fn with_source(source: Arc<FlagSource>, context: RequestContext) -> Self {
        RequestFlags { context, source }
    }

    /// This request's evaluations, attached to the context on first use.
    fn evaluated_state(&self) -> Option<&Evaluated> {
        self.context.attached(Evaluated::default)
    }

    /// Attaches the request's inputs (before any read; the first state attached wins).
    pub(crate) fn attach_inputs(&self, inputs: FlagInputs) {
        let inputs = (!inputs.is_empty()).then_some(inputs);
        self.context.attached(|| Evaluated {
            inputs,
            ..Evaluated::default()
        });
    }

    /// Starts evaluating the eager keys, if any: synchronously when local definitions decide
    /// them all, otherwise on a spawned task (whose answer the handler's reads wait for,
    /// without a second request).
    #[inline]
    pub(crate) fn prefetch(&self) {
        if let Some(keys) = &self.source.eager_keys {
            self.prefetch_keys(keys.clone());
        }
    }

    fn prefetch_keys(&self, keys: Arc<[String]>) {
        let Some(request) = self.request(Some(&keys)) else {
            return;
        };
        let Some(state) = self.evaluated_state() else {
            return;
        };
        if let Some(local) = self.source.posthog.try_evaluate_locally(&request) {
            let _ = state.eager.set(local);
            return;
        }
        if tokio::runtime::Handle::try_current().is_err() {
            return;
        }
        let this = self.clone();
        tokio::spawn(async move {
            if let Some(state) = this.evaluated_state() {
                state.eager.get_or_init(|| this.evaluate(request)).await;
            }
        });
    }

    /// The distinct id the flags are evaluated for (`None` for an anonymous caller).
    pub fn distinct_id(&self) -> Option<&str> {
        self.context.distinct_id()
    }

    /// The request context these flags belong to (the caller, session and URL).
    ///
    /// Behind [`PostHogLayer`](super::PostHogLayer) it is the request's context, the one
    /// [`RequestContext::from_extensions`] finds.
    ///
    /// ```
    /// # fn f(posthog: posthog_tower::PostHog) {
    /// use posthog_tower::http::RequestFlags;
    ///
    /// let flags = RequestFlags::new(posthog, Some("user-42".into()));
    /// assert_eq!(flags.context().distinct_id(), Some("user-42"));
    /// # }
    /// ```
    #[inline]
    pub fn context(&self) -> &RequestContext {
        &self.context
    }

    /// Whether the flag is on (a variant counts as on); `false` when it is unknown or could
    /// not be evaluated.
    pub async fn is_enabled(&self, key: &str) -> bool {
        match self.snapshot_for(key).await {
            Some(snapshot) => snapshot.is_enabled(key),
            None => false,
        }
    }

    /// The flag's value; `None` when it is unknown or could not be evaluated.
    pub async fn get_flag(&self, key: &str) -> Option<FlagValue> {
        self.snapshot_for(key).await?.get_flag(key)
    }

    /// The flag's decoded payload (does not report `$feature_flag_called`).
    pub async fn get_payload(&self, key: &str) -> Option<Value> {
        self.snapshot_for(key).await?.get_payload(key).cloned()
    }

    /// Every flag for the caller, as a snapshot (evaluated on first use, like a read).
    pub async fn evaluations(&self) -> FlagEvaluations {
        match self.all().await {
            Some(all) => all.clone(),
            None => FlagEvaluations::failed(&FlagsRequest::new(String::new()), None, None),
        }
    }

    /// What was evaluated so far, without evaluating anything: every flag if a read needed
    /// them, the eager keys if they are ready, and each flag decided locally on its own.
    pub fn evaluated(&self) -> Vec<FlagEvaluations> {
        evaluated_in(&self.context)
    }

    async fn snapshot_for(&self, key: &str) -> Option<FlagEvaluations> {
        if let Some(keys) = &self.source.eager_keys {
            if keys.iter().any(|k| k == key) {
                let request = self.request(Some(keys))?;
                let state = self.evaluated_state()?;
                return Some(
                    state
                        .eager
                        .get_or_init(|| self.evaluate(request))
                        .await
                        .clone(),
                );
            }
        }
        if let Some(local) = self.local_key(key) {
            return Some(local);
        }
        self.all().await.cloned()
    }

    /// `key` decided locally for this request (evaluated on its first read), unless every
    /// flag was evaluated already or local evaluation cannot decide it.
    fn local_key(&self, key: &str) -> Option<FlagEvaluations> {
        let id = self.context.distinct_id()?;
        let state = self.evaluated_state()?;
        // Held while the flag is evaluated (synchronously, without I/O): each key once.
        let mut keys = state.keys.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, snapshot)) = keys.iter().find(|(k, _)| &**k == key) {
            return Some(snapshot.clone());
        }
        if state.all.initialized() {
            return None;
        }
        let request = self.request_for(id, state, Some(std::slice::from_ref(&key)));
        let snapshot = self.source.posthog.try_evaluate_locally(&request)?;
        keys.push((key.into(), snapshot.clone()));
        Some(snapshot)
    }

    async fn all(&self) -> Option<&FlagEvaluations> {
        let request = self.request(None)?;
        let state = self.evaluated_state()?;
        Some(state.all.get_or_init(|| self.evaluate(request)).await)
    }

    /// The request for the caller: its distinct id, the posthog-js device id (for flags
    /// bucketed by device), and the layer's inputs.
    fn request(&self, keys: Option<&[String]>) -> Option<FlagsRequest> {
        let id = self.context.distinct_id()?;
        let state = self.evaluated_state()?;
        let request = self.request_for(id, state, None);
        Some(match keys {
            Some(keys) => request.flag_keys(keys.iter()),
            None => request,
        })
    }

    /// [`request`](Self::request) for `keys`, with the state at hand.
    fn request_for(&self, id: &str, state: &Evaluated, keys: Option<&[&str]>) -> FlagsRequest {
        let mut request = FlagsRequest::new(id);
        if let Some(device_id) = self.context.device_id() {
            request = request.device_id(device_id);
        }
        if let Some(inputs) = &state.inputs {
            request = inputs.apply(request);
        }
        match keys {
            Some(keys) => request.flag_keys(keys.iter().copied()),
            None => request,
        }
    }

    async fn evaluate(&self, request: FlagsRequest) -> FlagEvaluations {
        let snapshot = self.source.posthog.evaluate_flags(request).await;
        if let Some(error) = snapshot.error() {
            self.source.posthog.stats_recorder().flag_error(1);
            tracing::warn!(%error, "posthog: request flags fell back to off");
        }
        snapshot
    }
}

/// [`RequestFlags::evaluated`] for the flags of `context`, if any were attached to it.
pub(crate) fn evaluated_in(context: &RequestContext) -> Vec<FlagEvaluations> {
    let Some(state) = context.attached_if_any::<Evaluated>() else {
        return Vec::new();
    };
    let mut evaluated: Vec<FlagEvaluations> = state
        .all
        .get()
        .into_iter()
        .chain(state.eager.get())
        .cloned()
        .collect();
    let keys = state.keys.lock().unwrap_or_else(|e| e.into_inner());
    evaluated.extend(keys.iter().map(|(_, snapshot)| snapshot.clone()));
    evaluated
}

impl fmt::Debug for RequestFlags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RequestFlags")
            .field("distinct_id", &self.distinct_id())
            .field("eager_keys", &self.source.eager_keys)
            .field(
                "evaluated",
                &self
                    .context
                    .attached_if_any::<Evaluated>()
                    .is_some_and(|state| state.all.initialized()),
            )
            .finish()
    }
}
