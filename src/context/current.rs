//! The current request context: one thread-local slot that a [`Scoped`] future fills while it
//! is polled, and [`RequestContext::sync_scope`] while its closure runs.
//!
//! What `tokio::task_local!` does, with a `Cell` swap instead of its `RefCell` borrow and
//! error paths: the layer enters and leaves the scope on every poll of every request, and this
//! costs about 90 instructions a request less.

use std::{
    cell::Cell,
    fmt,
    future::Future,
    pin::Pin,
    task::{Context, Poll},
};

use super::RequestContext;

thread_local! {
    static SLOT: Cell<Option<RequestContext>> = const { Cell::new(None) };
}

/// A copy of the current context, if any.
#[inline]
pub(super) fn current() -> Option<RequestContext> {
    SLOT.try_with(|slot| {
        let ctx = slot.take();
        let copy = ctx.clone();
        slot.set(ctx);
        copy
    })
    .ok()
    .flatten()
}

/// Makes the context in `own` the current one until dropped (also when unwinding); meanwhile
/// `own` holds the one it replaced, which is current again afterwards. For futures that keep
/// their context themselves, as [`Scoped`] does (the HTTP layer's own future).
pub(crate) struct Enter<'a> {
    own: &'a mut Option<RequestContext>,
    entered: bool,
}

impl<'a> Enter<'a> {
    #[inline]
    pub(crate) fn new(own: &'a mut Option<RequestContext>) -> Self {
        // Fails only while the thread is being torn down: the code then runs without a
        // context, as it would outside any request.
        let entered = SLOT.try_with(|slot| swap(slot, own)).is_ok();
        Enter { own, entered }
    }
}

impl Drop for Enter<'_> {
    #[inline]
    fn drop(&mut self) {
        if self.entered {
            // The slot holds what `new` put there: every scope entered since has been left.
            let _ = SLOT.try_with(|slot| swap(slot, self.own));
        }
    }
}

#[inline]
fn swap(slot: &Cell<Option<RequestContext>>, own: &mut Option<RequestContext>) {
    let previous = slot.replace(own.take());
    *own = previous;
}

/// Drops a scoped future's `inner` future, unless it has completed, with the context in `own`
/// as the current one: what a future that keeps its context itself does when it is dropped
/// before completing ([`Scoped`], the HTTP layer's).
#[inline]
pub(crate) fn drop_in_scope<F>(own: &mut Option<RequestContext>, mut inner: Pin<&mut Option<F>>) {
    if inner.as_ref().as_pin_ref().is_some() {
        let _enter = Enter::new(own);
        inner.set(None);
    }
}

/// Runs `f` with `ctx` as the current context.
pub(super) fn sync_scope<R>(ctx: RequestContext, f: impl FnOnce() -> R) -> R {
    let mut own = Some(ctx);
    let _enter = Enter::new(&mut own);
    f()
}

pin_project_lite::pin_project! {
    /// A future run with a [`RequestContext`] as the current one. See
    /// [`RequestContext::scope`].
    pub struct Scoped<F> {
        // The context while the future is not being polled.
        ctx: Option<RequestContext>,
        // `None` once it has completed: it is dropped then, with the context current, as
        // it is when the `Scoped` is dropped before completing.
        #[pin]
        inner: Option<F>,
    }

    impl<F> PinnedDrop for Scoped<F> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            drop_in_scope(this.ctx, this.inner);
        }
    }
}

impl<F> Scoped<F> {
    pub(super) fn new(ctx: RequestContext, future: F) -> Self {
        Scoped {
            ctx: Some(ctx),
            inner: Some(future),
        }
    }
}

impl<F: Future> Future for Scoped<F> {
    type Output = F::Output;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let mut this = self.project();
        let _enter = Enter::new(this.ctx);
        let Some(inner) = this.inner.as_mut().as_pin_mut() else {
            // A broken `Future` contract on the caller's side, as for any future.
            panic!("`Scoped` polled after completion");
        };
        let output = inner.poll(cx);
        if output.is_ready() {
            this.inner.set(None);
        }
        output
    }
}

impl<F> fmt::Debug for Scoped<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Scoped").finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use std::{
        future::poll_fn,
        panic::{catch_unwind, AssertUnwindSafe},
    };

    use super::*;

    fn id() -> Option<String> {
        current().and_then(|ctx| ctx.distinct_id().map(str::to_owned))
    }

    #[test]
    fn scopes_nest_and_restore_what_they_replaced() {
        assert_eq!(id(), None);
        let outer = RequestContext::new(Some("outer".into()));
        let inner = RequestContext::new(Some("inner".into()));
        sync_scope(outer, || {
            assert_eq!(id().as_deref(), Some("outer"));
            sync_scope(inner, || assert_eq!(id().as_deref(), Some("inner")));
            assert_eq!(id().as_deref(), Some("outer"));
        });
        assert_eq!(id(), None);
    }

    #[test]
    fn a_panic_inside_leaves_the_scope() {
        let ctx = RequestContext::new(Some("u".into()));
        let result = catch_unwind(AssertUnwindSafe(|| sync_scope(ctx, || panic!("boom"))));
        assert!(result.is_err());
        assert_eq!(id(), None);
    }

    /// Current in every poll, not between polls, and in the future's destructor whether it
    /// completed or was dropped before.
    #[test]
    fn a_scoped_future_sees_its_context_only_while_polled_and_dropped() {
        struct SeesOnDrop(std::sync::Arc<std::sync::Mutex<Option<String>>>);
        impl Drop for SeesOnDrop {
            fn drop(&mut self) {
                *self.0.lock().unwrap() = id();
            }
        }
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        for complete in [true, false] {
            let seen = std::sync::Arc::new(std::sync::Mutex::new(None));
            let guard = SeesOnDrop(seen.clone());
            let mut polls = 0;
            let future = poll_fn(move |_| {
                let _keep = &guard;
                assert_eq!(id().as_deref(), Some("u"));
                polls += 1;
                if polls == 2 {
                    Poll::Ready(())
                } else {
                    Poll::Pending
                }
            });
            let mut scoped = Box::pin(RequestContext::new(Some("u".into())).scope(future));
            assert!(scoped.as_mut().poll(&mut cx).is_pending());
            assert_eq!(id(), None, "not current between polls");
            if complete {
                assert!(scoped.as_mut().poll(&mut cx).is_ready());
                assert_eq!(seen.lock().unwrap().as_deref(), Some("u"));
            }
            drop(scoped);
            assert_eq!(seen.lock().unwrap().as_deref(), Some("u"));
            assert_eq!(id(), None);
        }
    }
}
