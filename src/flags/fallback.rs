//! The optional fallback cache: the last good value of each (distinct id, flag), in a
//! [`FallbackStore`] (in memory by default, or shared, e.g. in Redis).

use std::{collections::HashMap, sync::Mutex, time::Duration};

use tokio::time::Instant;

use super::{cache::BoxFuture, FeatureFlagResult};
use crate::BoxError;

/// Where the stale-value fallback cache of single-flag reads lives (see
/// [`PostHogBuilder::flag_fallback_cache`](crate::PostHogBuilder::flag_fallback_cache)):
/// every good single-flag result is [`put`](Self::put) in it, and when `/flags` fails the
/// last good value, if at most an hour old, is read back with [`get`](Self::get).
///
/// [`MemoryFallbackStore`] (the default) keeps them in this process; a shared store (the
/// `redis` feature's `RedisFallbackStore`) lets one instance's good answer serve another's
/// failed lookup.
///
/// # Example
///
/// ```
/// use posthog_tower::flags::MemoryFallbackStore;
///
/// let client = posthog_tower::PostHog::builder("phc_project_key")
///     .flag_fallback_store(MemoryFallbackStore::new(50_000));
/// ```
pub trait FallbackStore: Send + Sync + 'static {
    /// Remembers `result` as the last good value of its flag for `distinct_id`. Called on the
    /// flag read path: it must not block or wait (a remote store queues the write).
    fn put(&self, distinct_id: &str, result: &FeatureFlagResult);

    /// The last good value of `key` for `distinct_id`, if it was put at most `max_age` ago.
    /// Called only when `/flags` failed; an error counts as "none".
    fn get<'a>(
        &'a self,
        distinct_id: &'a str,
        key: &'a str,
        max_age: Duration,
    ) -> BoxFuture<'a, Result<Option<FeatureFlagResult>, BoxError>>;
}

/// The in-process [`FallbackStore`] (the default): bounded to `capacity` distinct ids; when a
/// new one arrives on a full store, the fifth of distinct ids written least recently is
/// evicted.
///
/// # Example
///
/// ```
/// use posthog_tower::flags::MemoryFallbackStore;
///
/// let store = MemoryFallbackStore::new(10_000);
/// # drop(store);
/// ```
#[derive(Debug)]
pub struct MemoryFallbackStore {
    capacity: usize,
    /// Per distinct id: when it was last written, and its flags with their write times.
    entries: Mutex<HashMap<String, PerUser>>,
}

type PerUser = (Instant, HashMap<String, (FeatureFlagResult, Instant)>);

impl MemoryFallbackStore {
    /// A store remembering at most `capacity` distinct ids (at least one).
    pub fn new(capacity: usize) -> Self {
        MemoryFallbackStore {
            capacity: capacity.max(1),
            entries: Mutex::default(),
        }
    }

    fn put_now(&self, distinct_id: &str, result: &FeatureFlagResult) {
        let now = Instant::now();
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if !entries.contains_key(distinct_id) && entries.len() >= self.capacity {
            let mut by_age: Vec<(Instant, String)> = entries
                .iter()
                .map(|(k, (at, _))| (*at, k.clone()))
                .collect();
            by_age.sort();
            let evict = (self.capacity / 5).max(1);
            for (_, key) in by_age.into_iter().take(evict) {
                entries.remove(&key);
            }
        }
        let (touched, flags) = entries
            .entry(distinct_id.to_owned())
            .or_insert_with(|| (now, HashMap::new()));
        *touched = now;
        let mut result = result.clone();
        result.stale_because = None;
        flags.insert(result.key.clone(), (result, now));
    }

    fn get_now(
        &self,
        distinct_id: &str,
        key: &str,
        max_age: Duration,
    ) -> Option<FeatureFlagResult> {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let (result, at) = entries.get(distinct_id)?.1.get(key)?;
        (at.elapsed() <= max_age).then(|| result.clone())
    }
}

impl FallbackStore for MemoryFallbackStore {
    fn put(&self, distinct_id: &str, result: &FeatureFlagResult) {
        self.put_now(distinct_id, result);
    }

    fn get<'a>(
        &'a self,
        distinct_id: &'a str,
        key: &'a str,
        max_age: Duration,
    ) -> BoxFuture<'a, Result<Option<FeatureFlagResult>, BoxError>> {
        let found = self.get_now(distinct_id, key, max_age);
        Box::pin(async move { Ok(found) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flags::{FlagRecord, FlagValue};

    fn result(key: &str) -> FeatureFlagResult {
        let record = FlagRecord::new(FlagValue::Bool(true), false);
        FeatureFlagResult::from_record(key, &record, None)
    }

    #[tokio::test(start_paused = true)]
    async fn serves_for_an_hour_then_forgets() {
        let cache = MemoryFallbackStore::new(10);
        let hour = Duration::from_secs(3600);
        cache.put("u", &result("f"));
        assert!(cache.get_now("u", "f", hour).is_some());
        assert!(cache.get_now("u", "g", hour).is_none());
        assert!(cache.get_now("v", "f", hour).is_none());
        tokio::time::advance(Duration::from_secs(3599)).await;
        assert!(cache.get("u", "f", hour).await.unwrap().is_some());
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(cache.get("u", "f", hour).await.unwrap().is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn bounded() {
        let hour = Duration::from_secs(3600);
        let cache = MemoryFallbackStore::new(10);
        for i in 0..100 {
            cache.put(&format!("u{i}"), &result("f"));
            tokio::time::advance(Duration::from_millis(1)).await;
        }
        assert!(cache.entries.lock().unwrap().len() <= 10);
        assert!(cache.get_now("u99", "f", hour).is_some());
        assert!(cache.get_now("u0", "f", hour).is_none());
    }
}
