//! [`RequestFlags`]: the feature flags of the caller of one request.

use std::{fmt, sync::Arc};

use serde_json::Value;
use tokio::sync::OnceCell;

use crate::{
    context::RequestContext,
    flags::{FlagEvaluations, FlagValue, FlagsRequest},
    PostHog,
};

/// The caller's feature flags, in the extensions of every request that went through
/// [`InjectFlags`](super::InjectFlags) (part of [`PostHogLayer`](super::PostHogLayer)).
///
/// Cheap to clone (an `Arc` inside); every clone shares one evaluation. By default nothing is
/// evaluated until a flag is read: the first read evaluates every flag for the caller, locally
/// when definitions are loaded, otherwise with one `/flags` request, and later reads (from
/// any clone) use that answer. With [eager keys](super::PostHogLayer::eager_flags) those keys
/// are evaluated as soon as the request arrives, concurrently with the handler.
///
/// Reads never fail: a flag that could not be evaluated (PostHog unreachable, an anonymous
/// caller, flags disabled) is off, and the failure is logged and counted in
/// [`Stats::flag_errors`](crate::Stats::flag_errors). Reading a flag reports
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
    inner: Arc<State>,
}

struct State {
    posthog: PostHog,
    /// Whose flags: an anonymous caller's are all off.
    context: RequestContext,
    /// Keys evaluated eagerly, and their snapshot.
    eager_keys: Option<Arc<[String]>>,
    eager: OnceCell<FlagEvaluations>,
    /// Every flag, evaluated on first use.
    all: OnceCell<FlagEvaluations>,
}

impl RequestFlags {
    /// A lazy handle for `distinct_id` (`None`: an anonymous caller, whose flags are all off).
    pub fn new(posthog: PostHog, distinct_id: Option<String>) -> Self {
        RequestFlags::with_eager_keys(posthog, RequestContext::new(distinct_id), None)
    }

    pub(crate) fn with_eager_keys(
        posthog: PostHog,
        context: RequestContext,
        eager_keys: Option<Arc<[String]>>,
    ) -> Self {
        RequestFlags {
            inner: Arc::new(State {
                posthog,
                context,
                eager_keys,
                eager: OnceCell::new(),
                all: OnceCell::new(),
            }),
        }
    }

    /// Starts evaluating the eager keys: synchronously when local definitions decide them all,
    /// otherwise on a spawned task (whose answer the handler's reads wait for, without a second
    /// request).
    pub(crate) fn prefetch(&self) {
        let Some(keys) = self.inner.eager_keys.clone() else {
            return;
        };
        let Some(request) = self.request(Some(&keys)) else {
            return;
        };
        if let Some(local) = self.inner.posthog.try_evaluate_locally(&request) {
            let _ = self.inner.eager.set(local);
            return;
        }
        if tokio::runtime::Handle::try_current().is_err() {
            return;
        }
        let this = self.clone();
        tokio::spawn(async move {
            this.inner
                .eager
                .get_or_init(|| this.evaluate(request))
                .await;
        });
    }

    /// The distinct id the flags are evaluated for (`None` for an anonymous caller).
    pub fn distinct_id(&self) -> Option<&str> {
        self.inner.context.distinct_id()
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
    /// them, else the eager keys if they are ready.
    pub fn evaluated(&self) -> Vec<FlagEvaluations> {
        self.inner
            .all
            .get()
            .into_iter()
            .chain(self.inner.eager.get())
            .cloned()
            .collect()
    }

    async fn snapshot_for(&self, key: &str) -> Option<&FlagEvaluations> {
        if let Some(keys) = &self.inner.eager_keys {
            if keys.iter().any(|k| k == key) {
                let request = self.request(Some(keys))?;
                return Some(
                    self.inner
                        .eager
                        .get_or_init(|| self.evaluate(request))
                        .await,
                );
            }
        }
        self.all().await
    }

    async fn all(&self) -> Option<&FlagEvaluations> {
        let request = self.request(None)?;
        Some(self.inner.all.get_or_init(|| self.evaluate(request)).await)
    }

    fn request(&self, keys: Option<&[String]>) -> Option<FlagsRequest> {
        let id = self.inner.context.distinct_id()?;
        let request = FlagsRequest::new(id);
        Some(match keys {
            Some(keys) => request.flag_keys(keys.iter()),
            None => request,
        })
    }

    async fn evaluate(&self, request: FlagsRequest) -> FlagEvaluations {
        let snapshot = self.inner.posthog.evaluate_flags(request).await;
        if let Some(error) = snapshot.error() {
            self.inner.posthog.stats_recorder().flag_error(1);
            tracing::warn!(%error, "posthog: request flags fell back to off");
        }
        snapshot
    }
}

impl fmt::Debug for RequestFlags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RequestFlags")
            .field("distinct_id", &self.distinct_id())
            .field("eager_keys", &self.inner.eager_keys)
            .field("evaluated", &self.inner.all.initialized())
            .finish()
    }
}
