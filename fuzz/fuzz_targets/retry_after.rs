//! `Retry-After` header bytes → `parse_retry_after`: never panics, and the result stays within
//! what the parser documents (delta-seconds at most one day; a date is its distance from `now`,
//! zero when in the past).
#![no_main]

use std::time::{Duration, SystemTime};

use http::HeaderValue;
use libfuzzer_sys::fuzz_target;
use posthog_tower::__fuzz::parse_retry_after;

/// Latest instant an HTTP date can name: 9999-12-31T23:59:59Z.
const MAX_HTTP_DATE_SECS: u64 = 253_402_300_799;

fuzz_target!(|data: &[u8]| {
    // The first 5 bytes pick `now` (0 to ~35k years after the epoch); the rest is the header.
    let (now_bytes, header) = data.split_at(data.len().min(5));
    let mut secs = [0u8; 8];
    secs[..now_bytes.len()].copy_from_slice(now_bytes);
    let now_secs = u64::from_le_bytes(secs);
    let Some(now) = SystemTime::UNIX_EPOCH.checked_add(Duration::from_secs(now_secs)) else {
        return;
    };
    // `HeaderValue::from_bytes` is what hyper hands us: any visible ASCII, obs-text, tabs.
    let Ok(value) = HeaderValue::from_bytes(header) else {
        return;
    };
    let fixed = parse_retry_after(
        &value,
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000),
    );
    let result = parse_retry_after(&value, now);

    let text = value.to_str().ok().map(str::trim);
    match (text, result) {
        (None, r) | (Some(""), r) => assert_eq!(r, None, "non-text or empty header gave {r:?}"),
        (Some(t), r) if t.bytes().all(|b| b.is_ascii_digit() || b == b'.') => {
            // Delta-seconds do not depend on `now`, and are capped at a day.
            assert_eq!(r, fixed, "delta-seconds depend on now: {t:?}");
            if let Some(d) = r {
                assert!(d <= Duration::from_secs(86_400), "{t:?} gave {d:?}");
                let secs: f64 = t.parse().unwrap();
                assert_eq!(d, Duration::from_secs_f64(secs));
            }
        }
        (Some(t), Some(d)) => {
            // An HTTP date: never further away than the last date HTTP can name.
            let bound = MAX_HTTP_DATE_SECS.saturating_sub(now_secs);
            assert!(
                d <= Duration::from_secs(bound + 1),
                "{t:?} at {now_secs} gave {d:?}"
            );
            // A later `now` never makes the wait longer.
            let later = now + Duration::from_secs(1);
            let d_later = parse_retry_after(&value, later).unwrap();
            assert!(d_later <= d, "{t:?}: {d_later:?} > {d:?}");
        }
        (Some(_), None) => {}
    }
});
