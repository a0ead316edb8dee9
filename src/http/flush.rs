//! [`Flush`]: deliver what a request captured before its response is handed back (serverless).

use std::{
    fmt,
    future::Future,
    pin::Pin,
    task::{ready, Context, Poll},
    time::Duration,
};

use tower_layer::Layer;
use tower_service::Service;

use crate::{capture::FlushReport, PostHog};

/// How long [`Flush`] waits for delivery by default.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(3);

impl PostHog {
    /// A layer that flushes this client after every response: see [`Flush`].
    pub fn flush_layer(&self) -> FlushLayer {
        FlushLayer::new(self)
    }
}

/// Applies [`Flush`]. Build it with [`PostHog::flush_layer`].
#[derive(Clone)]
pub struct FlushLayer {
    posthog: PostHog,
    timeout: Duration,
}

impl FlushLayer {
    /// Flushes `posthog` after every response, waiting at most 3 s.
    pub fn new(posthog: &PostHog) -> Self {
        FlushLayer {
            posthog: posthog.clone(),
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// The longest wait for delivery after a response (default 3 s). What is not delivered by
    /// then stays queued: the next invocation's flush (or the shutdown) sends it.
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }
}

impl fmt::Debug for FlushLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FlushLayer")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl<S> Layer<S> for FlushLayer {
    type Service = Flush<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Flush {
            inner,
            posthog: self.posthog.clone(),
            timeout: self.timeout,
        }
    }
}

/// Middleware for functions whose process may be frozen or ended as soon as they answer
/// (AWS Lambda through `lambda_http`, Google Cloud Run jobs, any per-invocation host): after
/// the inner service's response (or error), it awaits [`PostHog::flush`] (at most the
/// [timeout](FlushLayer::timeout)) before handing the response back, so what the invocation
/// captured is delivered while the process still runs.
///
/// The response and any error pass through unchanged; a flush that times out leaves the rest
/// queued and never fails the response. Works with any request type (an `http::Request`,
/// a `lambda_http::Request`, ...). The alternative, [sync mode](crate::PostHogBuilder::sync_mode),
/// sends each event as it is captured: it suits functions that capture one or two events;
/// `Flush` suits those that capture several (one request for all of them).
///
/// ```
/// use posthog_tower::PostHog;
/// use std::time::Duration;
/// use tower::{service_fn, ServiceBuilder};
///
/// # fn f(posthog: PostHog) {
/// let handler = ServiceBuilder::new()
///     .layer(posthog.flush_layer().timeout(Duration::from_secs(2)))
///     .layer(posthog.layer())
///     .service(service_fn(|_: http::Request<String>| async {
///         Ok::<_, std::convert::Infallible>(http::Response::new(String::from("done")))
///     }));
/// // With lambda_http: `lambda_http::run(handler).await`.
/// # drop(handler);
/// # }
/// ```
#[derive(Clone)]
pub struct Flush<S> {
    inner: S,
    posthog: PostHog,
    timeout: Duration,
}

impl<S> Flush<S> {
    define_inner_service_accessors!();
}

impl<S: fmt::Debug> fmt::Debug for Flush<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Flush")
            .field("inner", &self.inner)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl<S, R> Service<R> for Flush<S>
where
    S: Service<R>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = FlushFuture<S::Future, Result<S::Response, S::Error>>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: R) -> Self::Future {
        FlushFuture {
            state: State::Inner {
                future: self.inner.call(request),
                posthog: Some(self.posthog.clone()),
                timeout: self.timeout,
            },
        }
    }
}

/// The flush being awaited.
type Flushing = Pin<Box<dyn Future<Output = FlushReport> + Send>>;

pin_project_lite::pin_project! {
    /// Response future of [`Flush`]: the inner future, then the flush (one allocation).
    pub struct FlushFuture<F, O> {
        #[pin]
        state: State<F, O>,
    }
}

pin_project_lite::pin_project! {
    #[project = StateProj]
    enum State<F, O> {
        Inner {
            #[pin]
            future: F,
            posthog: Option<PostHog>,
            timeout: Duration,
        },
        Flushing {
            #[pin]
            flush: tokio::time::Timeout<Flushing>,
            output: Option<O>,
        },
    }
}

impl<F, T, E> Future for FlushFuture<F, Result<T, E>>
where
    F: Future<Output = Result<T, E>>,
{
    type Output = Result<T, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut state = self.project().state;
        loop {
            match state.as_mut().project() {
                StateProj::Inner {
                    future,
                    posthog,
                    timeout,
                } => {
                    let output = ready!(future.poll(cx));
                    let Some(posthog) = posthog.take() else {
                        // Taken only here, right before the state changes.
                        return Poll::Ready(output);
                    };
                    let flush: Flushing = Box::pin(async move { posthog.flush().await });
                    let timeout = *timeout;
                    state.set(State::Flushing {
                        flush: tokio::time::timeout(timeout, flush),
                        output: Some(output),
                    });
                }
                StateProj::Flushing { flush, output } => {
                    if ready!(flush.poll(cx)).is_err() {
                        tracing::warn!(
                            "posthog: the flush after the response timed out; \
                             the rest stays queued"
                        );
                    }
                    return match output.take() {
                        Some(output) => Poll::Ready(output),
                        // Polled again after it completed: a caller's bug, answered with a
                        // pending future rather than a panic.
                        None => Poll::Pending,
                    };
                }
            }
        }
    }
}

impl<F, O> fmt::Debug for FlushFuture<F, O> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FlushFuture").finish_non_exhaustive()
    }
}
