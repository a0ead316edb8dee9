//! Fast UUIDv7 / UUIDv4 generation and random numbers from a per-thread PRNG.
//!
//! # Randomness
//!
//! Each thread owns a [`fastrand`] generator (wyrand: 64-bit state, one
//! 128-bit multiply per output). It is this module's own, not `fastrand`'s
//! thread-local one, so that another crate calling `fastrand::seed` cannot
//! make threads repeat each other's ids. It is seeded lazily, on the thread's
//! first use, from a fresh [`RandomState`] (whose SipHash keys the standard
//! library draws from the OS once per thread) hashing a global counter, the
//! current time and the address of the thread's state. That makes ids
//! unpredictable enough for event ids and jitter, and distinct across
//! threads, but this is **not** a cryptographic generator: never use it for
//! secrets or tokens.
//!
//! # UUIDv7 layout and ordering (RFC 9562 §5.7, "Method 1" counter)
//!
//! ```text
//!  48 bits unix_ts_ms | ver=0111 | 12 bits rand_a | var=10 | 62 bits rand_b
//! ```
//!
//! [`uuid::Builder`] sets the version and variant. [`new_v7`] uses `rand_a` as
//! a per-thread counter: when the millisecond changes, it restarts at a random
//! value below 2048 (so at least 2048 ids fit before it rolls over); within
//! the same millisecond it increments. If it would pass 4095, the timestamp
//! is moved one millisecond ahead of the last one used and the counter
//! restarts. If the clock goes backwards by up to 10 s, the last timestamp
//! keeps being used (with the counter) until the clock catches up; a larger
//! backwards jump is accepted as is. So ids from one thread are strictly
//! increasing unless the clock steps back more than 10 s, and their
//! timestamp may run slightly ahead of the clock only when a thread makes
//! more than ~2048 ids per millisecond or the clock stepped back. `rand_b` is
//! always 62 fresh random bits, which is what keeps ids from different
//! threads (or processes) apart.
//!
//! The counter is per thread so that `capture()` takes no lock for its id:
//! `uuid::Uuid::now_v7` orders ids across the process behind a mutex and asks
//! the OS for its random bits, and costs about ten times as much
//! (`benches/id.rs`).
//!
//! [`new_v7_at`] takes an explicit timestamp (e.g. an event's own time), has
//! no counter (`rand_a` is random) and no ordering guarantee.

use std::cell::Cell;
use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use fastrand::Rng;
use uuid::{Builder, Uuid, Variant, Version};

/// How far back the clock may step while `new_v7` keeps its ordering by
/// reusing the last timestamp.
const MAX_CLOCK_STEP_BACK_MS: u64 = 10_000;

/// The largest value of the 12-bit `rand_a` counter.
const COUNTER_MAX: u16 = 0x0FFF;

/// Per-thread state. Const-initialized and without `Drop`, so access is a
/// plain TLS load, with no lazy-init check or destructor registration.
struct ThreadState {
    /// The generator's state ([`Rng::get_seed`]); 0 means "not seeded yet".
    rng: Cell<u64>,
    /// Timestamp of the last `new_v7`, in Unix ms.
    last_ms: Cell<u64>,
    /// `rand_a` of the last `new_v7`.
    counter: Cell<u16>,
}

thread_local! {
    static STATE: ThreadState = const {
        ThreadState {
            rng: Cell::new(0),
            last_ms: Cell::new(0),
            counter: Cell::new(0),
        }
    };
}

/// Runs `f` with the thread's generator, seeding it on first use.
#[inline]
fn with_rng<R>(state: &Cell<u64>, f: impl FnOnce(&mut Rng) -> R) -> R {
    let mut seed = state.get();
    if seed == 0 {
        // First use on this thread. (wyrand's state also passes through 0
        // once every 2^64 steps; reseeding then is harmless.)
        seed = fresh_seed(state);
    }
    let mut rng = Rng::with_seed(seed);
    let out = f(&mut rng);
    state.set(rng.get_seed());
    out
}

/// A non-zero seed from OS-seeded SipHash keys, a process-wide counter, the
/// time and the address of this thread's state.
#[cold]
#[inline(never)]
fn fresh_seed(state: &Cell<u64>) -> u64 {
    static SEEDS: AtomicU64 = AtomicU64::new(0);
    let mut hasher = RandomState::new().build_hasher();
    hasher.write_u64(SEEDS.fetch_add(1, Ordering::Relaxed));
    if let Ok(since_epoch) = SystemTime::now().duration_since(UNIX_EPOCH) {
        hasher.write_u128(since_epoch.as_nanos());
    }
    // Distinct per live thread (and randomized by ASLR).
    hasher.write_usize(state as *const Cell<u64> as usize);
    match hasher.finish() {
        0 => 0x9E37_79B9_7F4A_7C15,
        seed => seed,
    }
}

/// 64 random bits from the calling thread's generator (for retry jitter and
/// the like; not cryptographically secure).
#[inline]
pub(crate) fn random_u64() -> u64 {
    STATE.with(|state| with_rng(&state.rng, |rng| rng.u64(..)))
}

/// A UUIDv7 for the current time; strictly increasing within a thread (see
/// the module docs for the exact guarantee).
// The capture paths stamp an event's uuid from its timestamp's clock reading
// (`new_v7_from`); this one is for the tests and `benches/id.rs`.
#[allow(dead_code)]
pub(crate) fn new_v7() -> Uuid {
    let now_ms = match SystemTime::now().duration_since(UNIX_EPOCH) {
        // Avoids `as_millis`, a 128-bit division; saturates (never in practice).
        Ok(since_epoch) => since_epoch
            .as_secs()
            .saturating_mul(1000)
            .saturating_add(u64::from(since_epoch.subsec_millis())),
        Err(_) => 0,
    };
    new_v7_from(now_ms)
}

/// Like [`new_v7`] for a clock reading the caller already has (one read serves both the
/// event's timestamp and its uuid).
pub(crate) fn new_v7_from(now_ms: u64) -> Uuid {
    STATE.with(|state| {
        with_rng(&state.rng, |rng| {
            let last_ms = state.last_ms.get();
            let (ms, counter) = if now_ms > last_ms || last_ms - now_ms > MAX_CLOCK_STEP_BACK_MS {
                (now_ms, fresh_counter(rng))
            } else {
                // Same millisecond, or the clock stepped back a little.
                match state.counter.get() {
                    c if c < COUNTER_MAX => (last_ms, c + 1),
                    _ => (last_ms.wrapping_add(1), fresh_counter(rng)),
                }
            };
            state.last_ms.set(ms);
            state.counter.set(counter);
            v7_from_parts(ms, counter, rng.u64(..))
        })
    })
}

/// A v7 UUID: `ms` (its low 48 bits), 12 bits of `rand_a` and the low 62 bits of `rand_b`,
/// under the version and variant that [`Builder`] sets.
#[inline]
fn v7_from_parts(ms: u64, rand_a: u16, rand_b: u64) -> Uuid {
    // The layout of `Builder::from_unix_timestamp_millis` (a test checks it), built as one
    // u128: that function's helpers are not inlined across crates, which doubled the cost of
    // `new_v7_from` (`benches/id.rs`: 17-19 ns against 8-10 ns).
    let bits = (u128::from(ms & 0xFFFF_FFFF_FFFF) << 80)
        | (u128::from(rand_a & COUNTER_MAX) << 64)
        | u128::from(rand_b);
    Builder::from_u128(bits)
        .with_version(Version::SortRand)
        .with_variant(Variant::RFC4122)
        .into_uuid()
}

/// A random counter start in `0..2048`, leaving room for 2048 increments.
#[inline]
fn fresh_counter(rng: &mut Rng) -> u16 {
    rng.u16(..2048)
}

/// A UUIDv7 carrying `unix_millis` (only its low 48 bits, per RFC 9562; that
/// covers dates up to the year 10889) and 74 random bits. No ordering is
/// promised between ids with the same timestamp.
#[cfg(test)]
pub(crate) fn new_v7_at(unix_millis: u64) -> Uuid {
    let mut bytes = [0; 10];
    STATE.with(|state| with_rng(&state.rng, |rng| rng.fill(&mut bytes)));
    Builder::from_unix_timestamp_millis(unix_millis, &bytes).into_uuid()
}

/// A random (version 4, RFC 9562 variant) UUID, with 122 bits from the
/// thread's generator.
pub(crate) fn new_v4() -> Uuid {
    let mut bytes = [0; 16];
    STATE.with(|state| with_rng(&state.rng, |rng| rng.fill(&mut bytes)));
    Builder::from_random_bytes(bytes).into_uuid()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    fn ms_of(id: Uuid) -> u64 {
        let b = id.as_bytes();
        b[..6].iter().fold(0, |acc, &x| (acc << 8) | u64::from(x))
    }

    fn now_ms() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64
    }

    #[test]
    fn v7_version_and_variant() {
        for _ in 0..10_000 {
            for id in [new_v7(), new_v7_at(1_735_787_045_000)] {
                assert_eq!(id.get_version(), Some(Version::SortRand));
                assert_eq!(id.get_version_num(), 7);
                assert_eq!(id.get_variant(), Variant::RFC4122);
                assert_eq!(id.as_bytes()[6] >> 4, 7);
                assert_eq!(id.as_bytes()[8] >> 6, 0b10);
                assert_eq!(id.to_string().as_bytes()[14], b'7');
            }
        }
    }

    #[test]
    fn v7_layout_is_the_builders() {
        for _ in 0..10_000 {
            let (ms, rand_a, rand_b) = (random_u64(), random_u64() as u16, random_u64());
            let mut bytes = [0; 10];
            bytes[..2].copy_from_slice(&rand_a.to_be_bytes());
            bytes[2..].copy_from_slice(&rand_b.to_be_bytes());
            assert_eq!(
                v7_from_parts(ms, rand_a, rand_b),
                Builder::from_unix_timestamp_millis(ms, &bytes).into_uuid()
            );
        }
    }

    #[test]
    fn v4_version_and_variant() {
        let mut seen = HashSet::new();
        for _ in 0..10_000 {
            let id = new_v4();
            assert_eq!(id.get_version(), Some(Version::Random));
            assert_eq!(id.get_variant(), Variant::RFC4122);
            assert!(seen.insert(id));
        }
    }

    #[test]
    fn v7_at_timestamp_round_trip() {
        for ms in [
            0,
            1,
            1_735_787_045_123,
            253_402_300_799_999, // 9999-12-31T23:59:59.999Z
            0xFFFF_FFFF_FFFF,
        ] {
            let id = new_v7_at(ms);
            assert_eq!(ms_of(id), ms);
            let text = id.to_string();
            let hex = format!("{ms:012x}");
            assert_eq!(&text[..8], &hex[..8]);
            assert_eq!(&text[9..13], &hex[8..]);
        }
        // Only the low 48 bits are kept.
        assert_eq!(ms_of(new_v7_at(0x1_0000_0000_0005)), 5);
        assert_eq!(ms_of(new_v7_at(u64::MAX)), 0xFFFF_FFFF_FFFF);
    }

    #[test]
    fn v7_timestamp_is_the_clock() {
        // A fresh test thread: its first id has no counter history.
        std::thread::spawn(|| {
            let before = now_ms();
            let id = new_v7();
            let after = now_ms();
            let ms = ms_of(id);
            assert!(before <= ms && ms <= after, "{before} <= {ms} <= {after}");
        })
        .join()
        .unwrap();
    }

    #[test]
    fn v7_ordered_within_a_thread() {
        let start = now_ms();
        let mut previous = new_v7();
        let count = 200_000;
        for _ in 0..count {
            let id = new_v7();
            assert!(id > previous, "{id} after {previous}");
            assert_eq!(id.as_u128() > previous.as_u128(), id > previous);
            previous = id;
        }
        let end = now_ms();
        // It may run ahead of the clock by at most one ms per 2048 ids.
        let ms = ms_of(previous);
        assert!(ms >= start);
        assert!(ms <= end + count / 2048 + 1, "{ms} vs {end}");
    }

    #[test]
    fn v7_counter_rollover_and_clock_step_back() {
        std::thread::spawn(|| {
            let t = now_ms();
            STATE.with(|state| {
                state.last_ms.set(t + 5);
                state.counter.set(COUNTER_MAX - 1);
            });
            // Clock is behind the last timestamp by ~5 ms: keep counting.
            let a = new_v7();
            assert_eq!(ms_of(a), t + 5);
            assert_eq!(a.as_u128() >> 64 & 0xFFF, u128::from(COUNTER_MAX));
            // Counter full: borrow the next millisecond.
            let b = new_v7();
            assert_eq!(ms_of(b), t + 6);
            assert!(b > a);
            assert!((b.as_u128() >> 64 & 0xFFF) < 2048);

            // A big step back is accepted.
            STATE.with(|state| state.last_ms.set(t + 60_000));
            let c = new_v7();
            assert!(ms_of(c) < t + 1000);
        })
        .join()
        .unwrap();
    }

    #[test]
    fn unique_across_threads() {
        let threads: Vec<_> = (0..4)
            .map(|_| {
                std::thread::spawn(|| {
                    (0..25_000)
                        .map(|i| match i % 3 {
                            0 => new_v7(),
                            1 => new_v7_at(1_700_000_000_000),
                            _ => new_v4(),
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let mut all = HashSet::new();
        for thread in threads {
            for id in thread.join().unwrap() {
                assert!(all.insert(id), "duplicate {id}");
            }
        }
        assert_eq!(all.len(), 100_000);
    }

    #[test]
    fn v7_unique_across_threads() {
        let threads: Vec<_> = (0..4)
            .map(|_| std::thread::spawn(|| (0..25_000).map(|_| new_v7()).collect::<Vec<_>>()))
            .collect();
        let mut all = HashSet::new();
        for thread in threads {
            for id in thread.join().unwrap() {
                assert!(all.insert(id), "duplicate {id}");
            }
        }
        assert_eq!(all.len(), 100_000);
    }

    #[test]
    fn random_u64_is_spread_and_differs_per_thread() {
        let here: Vec<u64> = (0..64).map(|_| random_u64()).collect();
        let there: Vec<u64> = std::thread::spawn(|| (0..64).map(|_| random_u64()).collect())
            .join()
            .unwrap();
        assert_ne!(here, there);
        let distinct: HashSet<_> = here.iter().chain(&there).collect();
        assert_eq!(distinct.len(), 128);
        // Each bit is set in roughly half of 10k draws.
        let mut ones = [0u32; 64];
        for _ in 0..10_000 {
            let x = random_u64();
            for (bit, count) in ones.iter_mut().enumerate() {
                *count += (x >> bit & 1) as u32;
            }
        }
        for (bit, count) in ones.iter().enumerate() {
            assert!((4_500..=5_500).contains(count), "bit {bit}: {count}");
        }
    }

    #[test]
    fn reseeds_from_zero_state() {
        std::thread::spawn(|| {
            STATE.with(|state| state.rng.set(0));
            let a = random_u64();
            STATE.with(|state| assert_ne!(state.rng.get(), 0));
            STATE.with(|state| state.rng.set(0));
            let b = random_u64();
            assert_ne!(a, b);
        })
        .join()
        .unwrap();
    }
}
