//! Deduplication of `$feature_flag_called` events.

use std::{
    collections::{hash_map::RandomState, HashMap, HashSet, VecDeque},
    hash::{BuildHasher, Hash, Hasher},
    sync::Mutex,
};

use super::FlagValue;

const SHARDS: usize = 16;

/// Remembers which `(flag key, value, groups)` each distinct id was already reported with, so
/// `$feature_flag_called` is sent once per combination.
///
/// Bounded: it holds at most `capacity` distinct ids. It is split into 16 shards by distinct
/// id, each holding `capacity / 16` ids and evicting its **oldest distinct id** (first
/// inserted) when a new one arrives on a full shard, as posthog-python's size-limited map does.
/// An evicted user may get one more event for a combination already reported. Each check is
/// one hash and one short lock on one shard.
#[derive(Debug)]
pub(crate) struct FlagCalledDedup {
    shards: Box<[Mutex<Shard>]>,
    per_shard: usize,
    hasher: RandomState,
}

#[derive(Debug, Default)]
struct Shard {
    seen: HashMap<String, HashSet<u64>>,
    order: VecDeque<String>,
}

impl FlagCalledDedup {
    pub(crate) fn new(capacity: usize) -> Self {
        let per_shard = capacity.div_ceil(SHARDS).max(1);
        FlagCalledDedup {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            per_shard,
            hasher: RandomState::new(),
        }
    }

    /// Records the combination; `true` if it is new (the event should be sent).
    pub(crate) fn first_time<'a>(
        &self,
        distinct_id: &str,
        key: &str,
        value: Option<&FlagValue>,
        groups: impl IntoIterator<Item = (&'a String, &'a String)>,
    ) -> bool {
        let mut h = self.hasher.build_hasher();
        key.hash(&mut h);
        value.hash(&mut h);
        // Groups come from a BTreeMap, so the order is already sorted.
        for (t, k) in groups {
            t.hash(&mut h);
            k.hash(&mut h);
        }
        let combination = h.finish();
        let shard_index = (self.hasher.hash_one(distinct_id) as usize) % self.shards.len();
        let mut shard = self.shards[shard_index]
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(set) = shard.seen.get_mut(distinct_id) {
            return set.insert(combination);
        }
        if shard.order.len() >= self.per_shard {
            if let Some(oldest) = shard.order.pop_front() {
                shard.seen.remove(&oldest);
            }
        }
        shard.order.push_back(distinct_id.to_owned());
        shard
            .seen
            .insert(distinct_id.to_owned(), HashSet::from([combination]));
        true
    }

    /// Forgets everything (on shutdown).
    pub(crate) fn clear(&self) {
        for shard in self.shards.iter() {
            let mut shard = shard
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            shard.seen.clear();
            shard.order.clear();
        }
    }

    /// Distinct ids remembered.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).seen.len())
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn dedups_on_key_value_and_groups() {
        let d = FlagCalledDedup::new(1000);
        let none = BTreeMap::new();
        let on = FlagValue::Bool(true);
        assert!(d.first_time("u", "f", Some(&on), &none));
        assert!(!d.first_time("u", "f", Some(&on), &none));
        assert!(d.first_time("u", "f", Some(&FlagValue::Bool(false)), &none));
        assert!(d.first_time("u", "f", None, &none));
        assert!(d.first_time("u", "g", Some(&on), &none));
        assert!(d.first_time("v", "f", Some(&on), &none));
        let mut groups = BTreeMap::new();
        groups.insert("company".to_owned(), "acme".to_owned());
        assert!(d.first_time("u", "f", Some(&on), &groups));
        assert!(!d.first_time("u", "f", Some(&on), &groups));
        groups.insert("company".to_owned(), "other".to_owned());
        assert!(d.first_time("u", "f", Some(&on), &groups));
        d.clear();
        assert!(d.first_time("u", "f", Some(&on), &none));
    }

    #[test]
    fn bound_is_enforced_oldest_first() {
        let d = FlagCalledDedup::new(160);
        let none = BTreeMap::new();
        let on = FlagValue::Bool(true);
        for i in 0..10_000 {
            d.first_time(&format!("user-{i}"), "f", Some(&on), &none);
        }
        assert!(d.len() <= 160, "{}", d.len());
        // The most recent users are still remembered; the first ones were evicted.
        assert!(!d.first_time("user-9999", "f", Some(&on), &none));
        assert!(d.first_time("user-0", "f", Some(&on), &none));
    }
}
