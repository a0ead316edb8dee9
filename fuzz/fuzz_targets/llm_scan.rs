//! Any bytes → `AiLayer`'s JSON readers: the hand-written scanner (request fields, a whole
//! answer, a chat chunk, an Anthropic event, an embeddings summary) against serde's derive.
//! Never panics; whatever the scanner reads, serde reads the same; whatever serde refuses,
//! the scanner refuses.
#![no_main]

use libfuzzer_sys::fuzz_target;
use posthog_tower::__fuzz::llm_scan_differential;

fuzz_target!(|data: &[u8]| {
    llm_scan_differential(data);
});
