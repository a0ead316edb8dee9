//! The queue between producers and the worker.
//!
//! A lock-free channel carries the events, a semaphore counts the free slots (so the queue is
//! bounded and producers can also wait for room), and producers wake the worker only when it
//! has something to do: the first event of a batch (so it can start the batch's timer), every
//! `threshold` events (a full batch), or every event in send-immediately mode. The worker
//! otherwise sleeps on its timer, so a `capture` usually costs no system call.

use std::sync::{
    atomic::{AtomicBool, AtomicUsize, Ordering},
    mpsc, Arc,
};

use tokio::sync::{AcquireError, Notify, OwnedSemaphorePermit, Semaphore, TryAcquireError};

use super::message::Message;

/// What producers and the worker share.
#[derive(Debug)]
pub(crate) struct Signal {
    pub(crate) permits: Arc<Semaphore>,
    pub(crate) capacity: usize,
    notify: Notify,
    /// The worker knows events are coming (a batch is open, its timer running): producers
    /// need not wake it for each one.
    armed: AtomicBool,
    /// Events queued and not yet taken by the worker.
    pending: AtomicUsize,
    /// Wake the worker every this many pending events.
    threshold: usize,
    wake_every: bool,
}

/// The producer side, shared by every handle. Dropping the last one wakes the worker.
#[derive(Debug)]
pub(crate) struct Producer {
    tx: mpsc::Sender<Message>,
    pub(crate) signal: Arc<Signal>,
}

/// The worker side.
#[derive(Debug)]
pub(crate) struct Consumer {
    rx: mpsc::Receiver<Message>,
    pub(crate) signal: Arc<Signal>,
}

pub(crate) fn queue(capacity: usize, flush_at: usize, wake_every: bool) -> (Producer, Consumer) {
    let (tx, rx) = mpsc::channel();
    let signal = Arc::new(Signal {
        permits: Arc::new(Semaphore::new(capacity)),
        capacity,
        notify: Notify::new(),
        armed: AtomicBool::new(false),
        pending: AtomicUsize::new(0),
        threshold: flush_at.min((capacity / 2).max(1)).max(1),
        wake_every,
    });
    (
        Producer {
            tx,
            signal: signal.clone(),
        },
        Consumer { rx, signal },
    )
}

/// Why a push failed.
pub(crate) enum PushError {
    Full,
    Closed,
}

impl Producer {
    /// Queues without waiting.
    pub(crate) fn try_push(&self, message: Message) -> Result<(), PushError> {
        let permit = self.signal.permits.try_acquire().map_err(|e| match e {
            TryAcquireError::NoPermits => PushError::Full,
            TryAcquireError::Closed => PushError::Closed,
        })?;
        permit.forget();
        self.push(message);
        Ok(())
    }

    /// Queues, waiting for room.
    pub(crate) async fn push_wait(&self, message: Message) -> Result<(), AcquireError> {
        self.signal.permits.acquire().await?.forget();
        self.push(message);
        Ok(())
    }

    /// Queues with a slot reserved earlier (the permit is consumed).
    pub(crate) fn push_reserved(&self, permit: OwnedSemaphorePermit, message: Message) {
        permit.forget();
        self.push(message);
    }

    fn push(&self, message: Message) {
        // The receiver lives as long as the worker; if the worker is gone the event is lost
        // with it, which only happens when its runtime was dropped.
        if self.tx.send(message).is_err() {
            tracing::error!("posthog: the batch worker is gone; an event was not queued");
            return;
        }
        let s = &*self.signal;
        // With `Consumer::disarm` this is a Dekker pair over two SeqCst locations: in the
        // single order of SeqCst operations either the worker's `armed = false` comes before
        // our load (we see it and wake the worker), or our increment comes before its store and
        // its `pending` load sees the event (it stays armed and takes it).
        //
        // The worker may take the message between our `send` and this increment, so its
        // `fetch_sub` can come first and `pending` can briefly wrap below zero: add with
        // wrapping (a plain `+ 1` overflows and panics in debug builds). Meanwhile the
        // worker's `disarm` sees a non-zero count and looks again until the increment lands;
        // the wrapped value may also wake the worker once for nothing. Both are harmless.
        let pending = s.pending.fetch_add(1, Ordering::SeqCst).wrapping_add(1);
        let first = !s.armed.load(Ordering::SeqCst) && !s.armed.swap(true, Ordering::SeqCst);
        if first || s.wake_every || pending % s.threshold == 0 {
            s.notify.notify_one();
        }
    }

    /// Events waiting in the queue.
    pub(crate) fn depth(&self) -> usize {
        self.signal
            .capacity
            .saturating_sub(self.signal.permits.available_permits())
    }
}

impl Drop for Producer {
    fn drop(&mut self) {
        // The sender is dropped right after this: wake the worker so it sees the queue end.
        self.signal.notify.notify_one();
    }
}

/// What `Consumer::take` found.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Taken {
    /// Some messages (maybe none).
    Some(usize),
    /// The queue is empty and will stay so: every producer is gone.
    Finished,
}

impl Signal {
    /// Waits until a producer signals work (or the last producer leaves).
    pub(crate) async fn wait(&self) {
        self.notify.notified().await;
    }
}

impl Consumer {
    /// Takes up to `max` messages without waiting, freeing their slots.
    pub(crate) fn take(&mut self, out: &mut Vec<Message>, max: usize) -> Taken {
        let mut n = 0;
        while n < max {
            match self.rx.try_recv() {
                Ok(message) => {
                    out.push(message);
                    n += 1;
                }
                Err(mpsc::TryRecvError::Empty) => break,
                Err(mpsc::TryRecvError::Disconnected) => {
                    if n == 0 {
                        return Taken::Finished;
                    }
                    break;
                }
            }
        }
        if n > 0 {
            self.signal.pending.fetch_sub(n, Ordering::SeqCst);
            self.signal.permits.add_permits(n);
        }
        Taken::Some(n)
    }

    /// The worker has no open batch: the next event must wake it. Returns `false` when an
    /// event slipped in meanwhile (the worker stays armed and must take it).
    pub(crate) fn disarm(&mut self) -> bool {
        self.signal.armed.store(false, Ordering::SeqCst);
        if self.signal.pending.load(Ordering::SeqCst) == 0 {
            return true;
        }
        // Someone queued after our last take; whoever set `armed` again woke us (or will).
        self.signal.armed.store(true, Ordering::SeqCst);
        false
    }

    /// Stops admission: producers get `Closed` from now on.
    pub(crate) fn close(&self) {
        self.signal.permits.close();
    }

    /// `true` once admission is closed and every accepted event was taken (no producer is
    /// between reserving a slot and queueing).
    pub(crate) fn closed_and_drained(&self) -> bool {
        self.signal.permits.is_closed()
            && self.signal.permits.available_permits() == self.signal.capacity
    }
}
