//! Middleware that makes concurrent identical `/flags` requests share one call.

use std::{
    collections::HashMap,
    fmt,
    future::Future,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{ready, Context, Poll},
};

use tokio::sync::oneshot;
use tower::ServiceExt;
use tower_layer::Layer;
use tower_service::Service;

use super::{FlagsRequest, FlagsResponse};
use crate::BoxError;

type SharedAnswer = Result<Arc<FlagsResponse>, SharedError>;
type Waiters = Arc<Mutex<HashMap<String, Vec<oneshot::Sender<SharedAnswer>>>>>;

/// Shares one inner call among concurrent identical requests (same distinct id, properties,
/// groups, keys and options): the first caller's request is sent, the others wait for its
/// answer. Requests that arrive after the answer start a new call; nothing is cached.
///
/// The call runs on its own tokio task, so a caller that gives up (its future is dropped) does
/// not cancel it for the others. Errors are shared as [`SharedError`].
///
/// # Example
///
/// ```
/// use posthog_tower::flags::{CoalesceLayer, RemoteFlags};
/// use tower::ServiceBuilder;
///
/// let flags = ServiceBuilder::new()
///     .layer(CoalesceLayer::new())
///     .service(RemoteFlags::new("https://eu.i.posthog.com", "phc_key").unwrap());
/// # let _ = flags;
/// ```
#[derive(Clone)]
pub struct Coalesce<S> {
    inner: S,
    waiters: Waiters,
}

impl<S> Coalesce<S> {
    /// Wraps `inner`.
    pub fn new(inner: S) -> Self {
        Coalesce {
            inner,
            waiters: Arc::default(),
        }
    }

    /// A layer for this middleware.
    pub fn layer() -> CoalesceLayer {
        CoalesceLayer::new()
    }

    define_inner_service_accessors!();
}

impl<S> fmt::Debug for Coalesce<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Coalesce").finish_non_exhaustive()
    }
}

/// Applies [`Coalesce`].
#[derive(Clone, Copy, Debug, Default)]
pub struct CoalesceLayer(());

impl CoalesceLayer {
    /// A new layer.
    pub const fn new() -> Self {
        CoalesceLayer(())
    }
}

impl<S> Layer<S> for CoalesceLayer {
    type Service = Coalesce<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Coalesce::new(inner)
    }
}

impl<S> Service<FlagsRequest> for Coalesce<S>
where
    S: Service<FlagsRequest, Response = FlagsResponse> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
{
    type Response = Arc<FlagsResponse>;
    type Error = BoxError;
    type Future = CoalesceFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Followers never touch the inner service, and the leader's call runs on its own task
        // and waits for readiness there (`oneshot`).
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: FlagsRequest) -> Self::Future {
        let key = request.coalesce_key();
        let (tx, rx) = oneshot::channel();
        {
            let mut waiters = self.waiters.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(list) = waiters.get_mut(&key) {
                list.push(tx);
                return CoalesceFuture { rx };
            }
            waiters.insert(key.clone(), vec![tx]);
        }
        let inner = self.inner.clone();
        let waiters = self.waiters.clone();
        tokio::spawn(async move {
            let result = inner
                .oneshot(request)
                .await
                .map(Arc::new)
                .map_err(|e| SharedError(Arc::new(e.into())));
            let list = waiters
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&key)
                .unwrap_or_default();
            for tx in list {
                let _ = tx.send(result.clone());
            }
        });
        CoalesceFuture { rx }
    }
}

/// Response future of [`Coalesce`].
pub struct CoalesceFuture {
    rx: oneshot::Receiver<SharedAnswer>,
}

impl fmt::Debug for CoalesceFuture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CoalesceFuture").finish_non_exhaustive()
    }
}

impl Future for CoalesceFuture {
    type Output = Result<Arc<FlagsResponse>, BoxError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Poll::Ready(match ready!(Pin::new(&mut self.rx).poll(cx)) {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(shared)) => Err(Box::new(shared)),
            Err(_) => Err("the /flags call was dropped (runtime shutting down)".into()),
        })
    }
}

/// An error shared by every caller of a coalesced request. [`SharedError::inner`] is the
/// original error (downcast it as usual).
#[derive(Clone, Debug)]
pub struct SharedError(Arc<BoxError>);

impl SharedError {
    /// The original error.
    pub fn inner(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        &**self.0
    }
}

impl fmt::Display for SharedError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl std::error::Error for SharedError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&**self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test(start_paused = true)]
    async fn concurrent_identical_requests_share_one_call() {
        let calls = Arc::new(AtomicUsize::new(0));
        let counter = calls.clone();
        let inner = tower::service_fn(move |_req: FlagsRequest| {
            counter.fetch_add(1, Ordering::SeqCst);
            async {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                Ok::<_, BoxError>(FlagsResponse::default())
            }
        });
        let svc = Coalesce::new(inner);
        let same = (0..10).map(|_| svc.clone().oneshot(FlagsRequest::new("u")));
        let results = futures_join_all(same.collect()).await;
        assert!(results.iter().all(|r| r.is_ok()));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        // A different request is its own call; a later identical one is a new call.
        svc.clone().oneshot(FlagsRequest::new("v")).await.unwrap();
        svc.clone().oneshot(FlagsRequest::new("u")).await.unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn errors_are_shared() {
        let inner = tower::service_fn(|_req: FlagsRequest| async {
            Err::<FlagsResponse, BoxError>("boom".into())
        });
        let err = Coalesce::new(inner)
            .oneshot(FlagsRequest::new("u"))
            .await
            .unwrap_err();
        let shared = err.downcast_ref::<SharedError>().unwrap();
        assert_eq!(shared.inner().to_string(), "boom");
    }

    async fn futures_join_all<F>(futures: Vec<F>) -> Vec<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let handles: Vec<_> = futures.into_iter().map(tokio::spawn).collect();
        let mut out = Vec::new();
        for h in handles {
            out.push(h.await.unwrap());
        }
        out
    }
}
