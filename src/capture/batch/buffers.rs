//! Spent event buffers, kept for the next events' JSON.
//!
//! An event's JSON is written into a buffer on the producer's side and freed by the worker
//! once copied into its batch, a chunk of up to 256 at a time. A chunk of frees overflows the
//! allocator's small per-thread cache (glibc's holds 7 blocks of a size), so each producer's
//! next allocation takes the allocator's slow path: about 500 instructions an event between
//! the `malloc` and the `free`. Producers that write their event's JSON themselves (the HTTP
//! layer's pageviews) take a buffer from here instead, and the worker hands the spent ones
//! back, one lock per chunk.

use std::sync::{
    atomic::{AtomicBool, Ordering},
    Mutex,
};

/// Buffers kept at most, and the largest capacity kept: at most 1 MiB held.
const KEPT: usize = 256;
const LARGEST: usize = 4096;

#[derive(Debug, Default)]
pub(crate) struct Buffers {
    free: Mutex<Vec<Vec<u8>>>,
    /// A producer has asked for a buffer: until then, none is kept (a client whose events
    /// all come from [`Event`](crate::Event)s holds no spare memory).
    wanted: AtomicBool,
}

impl Buffers {
    /// An empty buffer of at least `capacity` bytes: a spent one if one is at hand (the lock
    /// is free and a buffer waits), a new one otherwise.
    pub(crate) fn take(&self, capacity: usize) -> Vec<u8> {
        if !self.wanted.load(Ordering::Relaxed) {
            self.wanted.store(true, Ordering::Relaxed);
        }
        let spent = match self.free.try_lock() {
            Ok(mut free) => free.pop(),
            // Held by the worker or another producer (or poisoned): do not wait.
            Err(_) => None,
        };
        match spent {
            Some(mut buffer) => {
                buffer.reserve(capacity);
                buffer
            }
            None => Vec::with_capacity(capacity),
        }
    }

    /// Keeps what fits of `spent` (emptied) for [`take`](Self::take), and frees the rest.
    /// Leaves `spent` empty.
    pub(crate) fn give_back(&self, spent: &mut Vec<Vec<u8>>) {
        // A chunk of flush requests only spent nothing: no lock to take.
        if !spent.is_empty() && self.wanted.load(Ordering::Relaxed) {
            spent.retain_mut(|buffer| {
                buffer.clear();
                buffer.capacity() <= LARGEST
            });
            if let Ok(mut free) = self.free.lock() {
                let kept = KEPT.saturating_sub(free.len()).min(spent.len());
                free.extend(spent.drain(spent.len() - kept..));
            }
        }
        // What is not kept, freed outside the lock.
        spent.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_kept_once_wanted_and_within_bounds() {
        let buffers = Buffers::default();
        // Nobody asked yet: nothing kept.
        let mut spent = vec![Vec::with_capacity(100)];
        buffers.give_back(&mut spent);
        assert!(spent.is_empty());
        assert_eq!(buffers.free.lock().unwrap().len(), 0);

        let first = buffers.take(100);
        assert!(first.capacity() >= 100);
        let pointer = first.as_ptr();
        let mut large = Vec::with_capacity(LARGEST + 1);
        large.push(1);
        let mut spent = vec![large];
        spent.extend((0..KEPT + 10).map(|_| b"{}".to_vec()));
        spent.push(first);
        buffers.give_back(&mut spent);
        assert!(spent.is_empty());
        let free = buffers.free.lock().unwrap();
        assert_eq!(free.len(), KEPT);
        assert!(free.iter().all(|b| b.is_empty() && b.capacity() <= LARGEST));
        drop(free);

        // The last kept is taken first.
        let again = buffers.take(50);
        assert_eq!(again.as_ptr(), pointer);
        assert!(again.is_empty() && again.capacity() >= 100);
        // A small one grows to the capacity asked for.
        let small = buffers.take(300);
        assert!(small.is_empty() && small.capacity() >= 300);
    }
}
