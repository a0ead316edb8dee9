//! The optional fallback cache: the last good value of each (distinct id, flag).

use std::{collections::HashMap, sync::Mutex, time::Duration};

use tokio::time::Instant;

use super::FeatureFlagResult;

/// Remembers the last good single-flag result per (distinct id, flag) and serves it, for at
/// most `max_age`, when `/flags` fails. Never consulted when `/flags` answers.
///
/// Bounded to `capacity` distinct ids: when a new one arrives on a full cache, the fifth of
/// distinct ids written least recently is evicted.
#[derive(Debug)]
pub(crate) struct FallbackCache {
    max_age: Duration,
    capacity: usize,
    /// Per distinct id: when it was last written, and its flags with their write times.
    entries: Mutex<HashMap<String, PerUser>>,
}

type PerUser = (Instant, HashMap<String, (FeatureFlagResult, Instant)>);

impl FallbackCache {
    pub(crate) fn new(max_age: Duration, capacity: usize) -> Self {
        FallbackCache {
            max_age,
            capacity: capacity.max(1),
            entries: Mutex::default(),
        }
    }

    pub(crate) fn put(&self, distinct_id: &str, result: &FeatureFlagResult) {
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

    pub(crate) fn get(&self, distinct_id: &str, key: &str) -> Option<FeatureFlagResult> {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let (result, at) = entries.get(distinct_id)?.1.get(key)?;
        (at.elapsed() <= self.max_age).then(|| result.clone())
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
        let cache = FallbackCache::new(Duration::from_secs(3600), 10);
        cache.put("u", &result("f"));
        assert!(cache.get("u", "f").is_some());
        assert!(cache.get("u", "g").is_none());
        assert!(cache.get("v", "f").is_none());
        tokio::time::advance(Duration::from_secs(3599)).await;
        assert!(cache.get("u", "f").is_some());
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(cache.get("u", "f").is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn bounded() {
        let cache = FallbackCache::new(Duration::from_secs(3600), 10);
        for i in 0..100 {
            cache.put(&format!("u{i}"), &result("f"));
            tokio::time::advance(Duration::from_millis(1)).await;
        }
        assert!(cache.entries.lock().unwrap().len() <= 10);
        assert!(cache.get("u99", "f").is_some());
        assert!(cache.get("u0", "f").is_none());
    }
}
