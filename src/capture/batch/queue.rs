//! The queue between producers and the worker.
//!
//! A lock-free ring carries the events, in order, with the flush requests between them; a
//! semaphore counts the free slots (so the queue is bounded and producers can also wait for
//! room). The ring is allocated once, at its full size, so queueing an event never allocates
//! (allocating fresh memory in the middle of a burst costs page faults, which used to put
//! `capture()`'s p99 at several microseconds). An event waits in it as a pointer and a few
//! words. A flush request takes none of the events' slots (it has a reserve of its own), so a
//! full queue never delays it, and it is answered once everything queued before it is
//! settled.
//!
//! Producers almost never wake the worker. While events come, the worker is *armed*: it looks
//! at the queue on its own schedule (every millisecond under load, less often when events are
//! sparse), so a `capture` costs no wake-up and no system call. A producer wakes it only when
//! it is not armed (the first event after a quiet spell), when the queue is half full (the
//! worker fell behind its schedule), in send-immediately mode, and for a flush.

use std::sync::{
    atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    mpsc, Arc,
};

/// Ring slots reserved for flush requests on top of the events' (a flush waits for one when
/// this many are queued already).
const FLUSH_SLOTS: usize = 64;

use tokio::sync::{AcquireError, Notify, OwnedSemaphorePermit, Semaphore, TryAcquireError};

use super::{buffers::Buffers, message::Message};

/// What producers and the worker share.
#[derive(Debug)]
pub(crate) struct Signal {
    pub(crate) permits: Arc<Semaphore>,
    /// The flush requests' slots.
    flush_permits: Semaphore,
    pub(crate) capacity: usize,
    notify: Notify,
    /// The worker looks at the queue on its own: producers need not wake it.
    armed: AtomicBool,
    /// Events queued and not yet taken by the worker.
    pending: AtomicUsize,
    /// Wake the worker every this many pending events even when it is armed.
    threshold: usize,
    wake_every: bool,
    /// Events the `before_send` hook dropped at capture, not yet counted in a flush report.
    pub(crate) dropped_at_capture: AtomicU64,
    /// Spent event buffers, for producers that write their event's JSON.
    pub(crate) buffers: Buffers,
}

/// The producer side, shared by every handle. Dropping the last one wakes the worker.
#[derive(Debug)]
pub(crate) struct Producer {
    tx: mpsc::SyncSender<Message>,
    pub(crate) signal: Arc<Signal>,
}

/// The worker side.
#[derive(Debug)]
pub(crate) struct Consumer {
    rx: mpsc::Receiver<Message>,
    pub(crate) signal: Arc<Signal>,
}

pub(crate) fn queue(capacity: usize, wake_every: bool) -> (Producer, Consumer) {
    let (tx, rx) = mpsc::sync_channel(capacity + FLUSH_SLOTS);
    let signal = Arc::new(Signal {
        permits: Arc::new(Semaphore::new(capacity)),
        flush_permits: Semaphore::new(FLUSH_SLOTS),
        capacity,
        notify: Notify::new(),
        armed: AtomicBool::new(false),
        pending: AtomicUsize::new(0),
        threshold: (capacity / 2).max(1),
        wake_every,
        dropped_at_capture: AtomicU64::new(0),
        buffers: Buffers::default(),
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

    /// Queues a flush request behind every event queued so far, in a slot of its own, and
    /// wakes the worker. `false` when the worker is gone.
    pub(crate) async fn push_flush(&self, message: Message) -> bool {
        match self.signal.flush_permits.acquire().await {
            Ok(permit) => permit.forget(),
            Err(_) => return false,
        }
        if self.tx.try_send(message).is_err() {
            return false;
        }
        self.signal.notify.notify_one();
        true
    }

    fn push(&self, message: Message) {
        let s = &*self.signal;
        // Counted before the message is in the ring, not after: the increment is a locked
        // instruction, which waits for every store before it to complete, and writing the
        // message into its slot (a cache line not touched for a whole turn of the ring) is the
        // slowest of those; after the increment, that store completes while we go on. So
        // `pending` is never below the number of messages in the ring.
        //
        // With `Consumer::disarm` this is a Dekker pair over two SeqCst locations: in the
        // single order of SeqCst operations either the worker's `armed = false` comes before
        // our load (we see it and wake the worker), or our increment comes before its store and
        // its `pending` load sees the event (it stays armed, and looks again until the message
        // is in the ring).
        let pending = s.pending.fetch_add(1, Ordering::SeqCst) + 1;
        let first = !s.armed.load(Ordering::SeqCst) && !s.armed.swap(true, Ordering::SeqCst);
        // The permits keep the ring from filling (events and flush requests each have their
        // slots), so this fails only when the worker is gone: the event is lost with it, which
        // only happens when its runtime was dropped.
        if self.tx.try_send(message).is_err() {
            tracing::error!("posthog: the batch worker is gone; an event was not queued");
            return;
        }
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
    /// Takes up to `max` messages without waiting, freeing the slots of the events among them.
    pub(crate) fn take(&mut self, out: &mut Vec<Message>, max: usize) -> Taken {
        let mut n = 0;
        let mut events = 0;
        while n < max {
            match self.rx.try_recv() {
                Ok(message) => {
                    if message.is_event() {
                        events += 1;
                    } else {
                        self.signal.flush_permits.add_permits(1);
                    }
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
        if events > 0 {
            self.signal.pending.fetch_sub(events, Ordering::SeqCst);
            self.signal.permits.add_permits(events);
        }
        Taken::Some(n)
    }

    /// The worker stops looking at the queue on its own: the next event must wake it. Returns
    /// `false` when an event slipped in meanwhile (the worker stays armed and must take it).
    pub(crate) fn disarm(&mut self) -> bool {
        self.signal.armed.store(false, Ordering::SeqCst);
        if self.signal.pending.load(Ordering::SeqCst) == 0 {
            return true;
        }
        // Someone queued after our last take; whoever set `armed` again woke us (or will).
        self.signal.armed.store(true, Ordering::SeqCst);
        false
    }

    /// The worker looks at the queue on its own from now on (it was woken).
    pub(crate) fn arm(&mut self) {
        self.signal.armed.store(true, Ordering::SeqCst);
    }

    /// Stops admission: producers get `Closed` from now on, and so do flush requests still
    /// waiting for a slot.
    pub(crate) fn close(&self) {
        self.signal.permits.close();
        self.signal.flush_permits.close();
    }

    /// `true` once admission is closed and every accepted event was taken (no producer is
    /// between reserving a slot and queueing).
    pub(crate) fn closed_and_drained(&self) -> bool {
        self.signal.permits.is_closed()
            && self.signal.permits.available_permits() == self.signal.capacity
    }
}
