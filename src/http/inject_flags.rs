//! [`InjectFlags`]: puts a [`RequestFlags`] handle in every request's extensions.

use std::{
    fmt,
    sync::Arc,
    task::{Context, Poll},
};

use http::Request;
use tower_layer::Layer;
use tower_service::Service;

use super::{
    flag_inputs::OrAnonymousCookie,
    identity::{DefaultMakeDistinctId, MakeDistinctId},
    request_flags::FlagSource,
    set_context::ContextConfig,
    RequestFlags,
};
use crate::{context::RequestContext, PostHog};

/// Applies [`InjectFlags`]. See the [module docs](super).
#[derive(Clone)]
pub struct InjectFlagsLayer {
    posthog: PostHog,
    config: Arc<ContextConfig>,
    eager: Option<Arc<[String]>>,
}

impl InjectFlagsLayer {
    /// Lazy flags for the callers of `posthog`'s project.
    pub fn new(posthog: &PostHog) -> Self {
        InjectFlagsLayer {
            posthog: posthog.clone(),
            config: Arc::new(ContextConfig::new(posthog)),
            eager: None,
        }
    }

    /// Evaluates these keys as soon as each request arrives (see
    /// [`PostHogLayer::eager_flags`](super::PostHogLayer::eager_flags)).
    #[must_use]
    pub fn eager<I, K>(mut self, keys: I) -> Self
    where
        I: IntoIterator<Item = K>,
        K: Into<String>,
    {
        let keys: Vec<String> = keys.into_iter().map(Into::into).collect();
        self.eager = (!keys.is_empty()).then(|| keys.into());
        self
    }
}

impl fmt::Debug for InjectFlagsLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InjectFlagsLayer")
            .field("eager", &self.eager)
            .finish_non_exhaustive()
    }
}

impl<S> Layer<S> for InjectFlagsLayer {
    type Service = InjectFlags<S>;

    fn layer(&self, inner: S) -> Self::Service {
        InjectFlags {
            inner,
            shared: Arc::new(FlagsState {
                config: self.config.clone(),
                source: FlagSource::new(self.posthog.clone(), self.eager.clone()),
            }),
        }
    }
}

/// Gives every request a [`RequestFlags`] handle for its caller
/// ([`RequestFlags::from_extensions`]): it attaches the flags to the request's context (the one
/// an outer layer inserted, else a new one it inserts), whose extension entry is the only one it
/// adds ([`RequestContext::from_extensions`]). It evaluates nothing unless a flag is read, or
/// [eager keys](InjectFlagsLayer::eager) are set; it never delays or fails the request.
///
/// The caller is the one of the request's [`RequestContext`](crate::context::RequestContext)
/// when an outer [`SetRequestContext`](super::SetRequestContext) set it, else resolved with
/// [`DefaultMakeDistinctId`]. See the [module docs](super).
#[derive(Clone)]
pub struct InjectFlags<S> {
    inner: S,
    // Behind one `Arc`: servers such as axum clone the service for every request, and a clone
    // then costs one reference count instead of one per shared field.
    shared: Arc<FlagsState>,
}

struct FlagsState {
    config: Arc<ContextConfig>,
    source: Arc<FlagSource>,
}

impl<S> InjectFlags<S> {
    /// Wraps `inner`.
    pub fn new(inner: S, posthog: &PostHog) -> Self {
        InjectFlagsLayer::new(posthog).layer(inner)
    }

    /// A layer for this middleware.
    pub fn layer(posthog: &PostHog) -> InjectFlagsLayer {
        InjectFlagsLayer::new(posthog)
    }

    define_inner_service_accessors!();
}

impl<S: fmt::Debug> fmt::Debug for InjectFlags<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InjectFlags")
            .field("inner", &self.inner)
            .field("eager", &self.shared.source.eager_keys())
            .finish()
    }
}

impl<S, ReqBody> Service<Request<ReqBody>> for InjectFlags<S>
where
    S: Service<Request<ReqBody>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<ReqBody>) -> Self::Future {
        let shared = &*self.shared;
        ensure(
            &shared.source,
            &shared.config,
            &mut DefaultMakeDistinctId,
            &mut request,
        );
        self.inner.call(request)
    }
}

/// The request's context, with its caller's flags attached: the context already in
/// `request`'s extensions, else a context resolved with `make` and inserted there (the one
/// extension entry the layer adds). The flags come from the first layer that attaches them;
/// attaching starts the eager keys' evaluation.
pub(crate) fn ensure<B, M: MakeDistinctId>(
    source: &Arc<FlagSource>,
    config: &ContextConfig,
    make: &mut M,
    request: &mut Request<B>,
) -> RequestContext {
    let eager = source.eager_keys().is_some();
    // The source is shared by every request: attaching it clones an `Arc`.
    if let Some(ctx) = RequestContext::from_extensions(request.extensions()) {
        let ctx = ctx.clone();
        if ctx.attach_layer_state(source.clone()) {
            attach_inputs(source, config, &ctx, request);
            if eager {
                RequestFlags::with_source(source.clone(), ctx.clone()).prefetch();
            }
        }
        return ctx;
    }
    let ctx = config.resolve(&mut OrAnonymousCookie(make), request, Some(source.clone()));
    attach_inputs(source, config, &ctx, request);
    if eager {
        RequestFlags::with_source(source.clone(), ctx.clone()).prefetch();
    }
    request.extensions_mut().insert(ctx.clone());
    ctx
}

/// Makes and attaches the request's [`FlagInputs`](super::FlagInputs), if the layer has a
/// maker.
#[inline]
fn attach_inputs<B>(
    source: &Arc<FlagSource>,
    config: &ContextConfig,
    ctx: &RequestContext,
    request: &Request<B>,
) {
    if let Some(make) = source.inputs() {
        let inputs = make
            .0
            .make_flag_inputs(&super::RequestHead::new(request, &config.cookie_name));
        RequestFlags::with_source(source.clone(), ctx.clone()).attach_inputs(inputs);
    }
}
