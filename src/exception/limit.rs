//! The per-type rate limit on exceptions captured on the application's behalf.

use std::{collections::HashMap, sync::Mutex, time::Duration};

use tokio::time::Instant;

/// The most exception types tracked at once; a new type beyond them waits until a tracked
/// type's window ends.
const MAX_TYPES: usize = 1024;

/// At most `max` exceptions of one type per `window`, the window starting at the first one
/// (a fixed window per type, as posthog-python's exception autocapture limits).
#[derive(Debug)]
pub(crate) struct RateLimit {
    max: u32,
    window: Duration,
    types: Mutex<HashMap<Box<str>, Window>>,
}

#[derive(Debug, Clone, Copy)]
struct Window {
    start: Instant,
    count: u32,
}

impl RateLimit {
    pub(crate) fn new(max: u32, window: Duration) -> Self {
        RateLimit {
            max,
            window,
            types: Mutex::new(HashMap::new()),
        }
    }

    /// Whether one more exception of `exception_type` may be captured now (and counts it).
    pub(crate) fn admit(&self, exception_type: &str) -> bool {
        let now = Instant::now();
        // A panic while the lock was held cannot leave the map inconsistent (every update is
        // one assignment), so a poisoned lock is used as it is.
        let mut types = self
            .types
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(window) = types.get_mut(exception_type) {
            if now.duration_since(window.start) >= self.window {
                *window = Window {
                    start: now,
                    count: 0,
                };
            }
            window.count = window.count.saturating_add(1);
            return window.count <= self.max;
        }
        if types.len() >= MAX_TYPES {
            types.retain(|_, window| now.duration_since(window.start) < self.window);
            if types.len() >= MAX_TYPES {
                return false;
            }
        }
        types.insert(
            exception_type.into(),
            Window {
                start: now,
                count: 1,
            },
        );
        self.max >= 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn each_type_has_its_own_window() {
        let limit = RateLimit::new(2, Duration::from_secs(10));
        assert!(limit.admit("A"));
        assert!(limit.admit("A"));
        assert!(!limit.admit("A"));
        assert!(limit.admit("B"), "another type is not limited by A's count");
        tokio::time::advance(Duration::from_secs(9)).await;
        assert!(!limit.admit("A"), "A's window has not ended");
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(limit.admit("A"), "a new window starts after 10 s");
    }

    #[tokio::test(start_paused = true)]
    async fn the_number_of_types_tracked_is_bounded() {
        let limit = RateLimit::new(1, Duration::from_secs(10));
        for i in 0..MAX_TYPES {
            assert!(limit.admit(&format!("T{i}")));
        }
        assert!(
            !limit.admit("one too many"),
            "refused while every window is open"
        );
        tokio::time::advance(Duration::from_secs(10)).await;
        assert!(
            limit.admit("one too many"),
            "admitted once the windows ended"
        );
        assert_eq!(limit.types.lock().unwrap().len(), 1);
    }

    #[test]
    fn a_limit_of_zero_admits_nothing() {
        let limit = RateLimit::new(0, Duration::from_secs(10));
        assert!(!limit.admit("A"));
        assert!(!limit.admit("A"));
    }
}
