//! Counts heap allocations made while evaluating flags locally.
//!
//! A measurement tool, not an example to copy: `BENCHMARKS.md` has the method and the
//! current figures, and the README lists the examples to start from.
//!
//! ```text
//! cargo run --release --example local_eval_allocs
//! ```
//!
//! A counting global allocator wraps the system one (this is why it is an example: the
//! library itself forbids `unsafe`). Properties are built first; only `LocalFlags::evaluate`
//! runs while counting.

use std::{
    alloc::{GlobalAlloc, Layout, System},
    sync::atomic::{AtomicUsize, Ordering},
};

use posthog_tower::flags::{FlagsRequest, LocalFlags};

struct Counting;

static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is forwarded unchanged to the system allocator; we only count.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn main() {
    let flags = LocalFlags::from_definitions(
        br#"{"flags": [
            {"id": 1, "key": "simple-rollout", "active": true,
             "filters": {"groups": [{"properties": [], "rollout_percentage": 45}]}},
            {"id": 2, "key": "pro-users", "active": true,
             "filters": {"groups": [{"properties": [
                 {"key": "plan", "value": "pro", "operator": "exact", "type": "person"},
                 {"key": "email", "value": "example\\.com$", "operator": "regex", "type": "person"}],
                 "rollout_percentage": 100}]}},
            {"id": 3, "key": "variant", "active": true,
             "filters": {"groups": [{"properties": [], "rollout_percentage": 100}],
                         "multivariate": {"variants": [{"key": "control", "rollout_percentage": 100}]}}}
        ], "group_type_mapping": {}, "cohorts": {}}"#,
    )
    .expect("definitions");
    let request = FlagsRequest::new("user-1")
        .person_property("plan", "pro")
        .person_property("email", "ada@example.com");
    println!(
        "{:<16} {:>12} {:>22}",
        "flag", "evaluations", "allocations per call"
    );
    for key in ["simple-rollout", "pro-users", "variant"] {
        let calls = 100_000;
        let before = ALLOCATIONS.load(Ordering::Relaxed);
        for _ in 0..calls {
            std::hint::black_box(flags.evaluate(key, &request).ok());
        }
        let made = ALLOCATIONS.load(Ordering::Relaxed) - before;
        println!("{key:<16} {calls:>12} {:>22.2}", made as f64 / calls as f64);
    }
    println!("(a variant answer allocates once: the variant's name in the returned FlagValue)");
}
