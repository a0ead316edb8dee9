//! `/flags` response bytes → `FlagsResponse::from_json`: never panics; when the body parses,
//! every accessor, the client's snapshot and `Event::flags` work on it without panicking, and
//! agree with each other.
#![no_main]

use libfuzzer_sys::fuzz_target;
use posthog_tower::__fuzz::{flag_evaluations, tracked_properties_len, validate};
use posthog_tower::flags::{FlagValue, FlagsRequest, FlagsResponse};
use posthog_tower::Event;

fuzz_target!(|data: &[u8]| {
    let Ok(response) = FlagsResponse::from_json(data) else {
        return;
    };
    let quota_limited = response.is_quota_limited();
    for (key, detail) in &response.flags {
        assert_eq!(key, &detail.key);
        let value = detail.value();
        match &value {
            FlagValue::Bool(b) => assert_eq!(*b, detail.enabled),
            FlagValue::Variant(v) => {
                assert!(detail.enabled && !v.is_empty());
                assert_eq!(detail.variant.as_deref(), Some(v.as_str()));
            }
        }
        assert_eq!(value.is_enabled(), detail.enabled);
        let _ = value.to_string();
        let _ = format!("{detail:?}");
    }

    let keys: Vec<String> = response.flags.keys().take(3).cloned().collect();
    for request in [
        FlagsRequest::new("user-1"),
        FlagsRequest::new("user-2").flag_keys(keys.iter().cloned()),
    ] {
        let evaluations = flag_evaluations(&request, &response);
        if quota_limited {
            assert!(evaluations.is_empty());
            assert!(evaluations.error().is_some());
        }
        assert_eq!(evaluations.distinct_id(), request.distinct_id());
        let listed: Vec<String> = evaluations.keys().map(str::to_owned).collect();
        assert_eq!(listed.len(), evaluations.len());
        for key in &listed {
            let detail = &response.flags[key];
            assert_eq!(evaluations.get_flag(key), Some(detail.value()));
            assert_eq!(evaluations.is_enabled(key), detail.enabled);
            let record = evaluations.record(key).unwrap();
            // A payload is kept only when it is JSON; it must be the JSON that was sent.
            if let Some(payload) = evaluations.get_payload(key) {
                let text = detail.metadata.payload.as_deref().unwrap();
                assert_eq!(
                    payload,
                    &serde_json::from_str::<serde_json::Value>(text).unwrap()
                );
            }
            let _ = format!("{record:?}");
        }
        assert_eq!(evaluations.get_flag("\u{0}not-a-flag"), None);
        let only = evaluations.only(keys.iter().map(String::as_str));
        assert!(only.len() <= keys.len());
        let _ = evaluations.only_accessed();
        let _ = format!("{evaluations:?}");

        // The snapshot recorded on an event keeps the event's size accounting exact.
        let event = Event::new("checkout", "user-1").flags(&evaluations);
        let count = event.properties().len();
        let real: usize = event
            .properties()
            .iter()
            .map(|(k, v)| {
                serde_json::to_vec(&k).unwrap().len() + serde_json::to_vec(&v).unwrap().len() + 1
            })
            .sum::<usize>()
            + count.saturating_sub(1);
        assert_eq!(tracked_properties_len(&event), real);
        let _ = validate(&event, usize::MAX);
    }
});
