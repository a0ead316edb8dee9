//! Deduplication of flag events: `$feature_flag_called` and, in an instance of its own,
//! `$experiment_exposure`.

use std::{
    collections::{hash_map::RandomState, HashMap, HashSet, VecDeque},
    hash::{BuildHasher, Hash, Hasher},
    sync::Mutex,
};

use super::{called::ReadAttribution, FlagValue};

/// Remembers which `(flag key, value, groups)` each distinct id was already reported with
/// (plus the rule attribution of a `/flags?v=4` read), so `$feature_flag_called` is sent once
/// per combination; a second instance remembers `(flag key, groups, rule, variant)` for
/// `$experiment_exposure`.
///
/// Bounded: it holds at most `capacity` distinct ids and, when a new one arrives on a full
/// tracker, forgets the **oldest distinct id** (the first inserted), as posthog-python's
/// size-limited map does, one at a time rather than all at once. A forgotten user may get one
/// more event for a combination already reported. Check and insert happen under one lock, so
/// concurrent calls never report the same combination twice.
#[derive(Debug)]
pub(crate) struct FlagCalledDedup {
    state: Mutex<State>,
    capacity: usize,
    hasher: RandomState,
}

#[derive(Debug, Default)]
struct State {
    seen: HashMap<String, HashSet<u64>>,
    order: VecDeque<String>,
}

impl FlagCalledDedup {
    pub(crate) fn new(capacity: usize) -> Self {
        FlagCalledDedup {
            state: Mutex::default(),
            capacity: capacity.max(1),
            hasher: RandomState::new(),
        }
    }

    /// Records the `$feature_flag_called` combination; `true` if it is new (the event should
    /// be sent).
    pub(crate) fn first_time<'a>(
        &self,
        distinct_id: &str,
        key: &str,
        value: Option<&FlagValue>,
        groups: impl IntoIterator<Item = (&'a String, &'a String)>,
        attribution: Option<&ReadAttribution>,
    ) -> bool {
        let combination = self.called_combination(key, value, groups, attribution);
        self.first_combination(distinct_id, combination)
    }

    /// Forgets a `$feature_flag_called` combination whose event could not be queued, so a
    /// later read tries again.
    pub(crate) fn forget<'a>(
        &self,
        distinct_id: &str,
        key: &str,
        value: Option<&FlagValue>,
        groups: impl IntoIterator<Item = (&'a String, &'a String)>,
        attribution: Option<&ReadAttribution>,
    ) {
        let combination = self.called_combination(key, value, groups, attribution);
        self.forget_combination(distinct_id, combination);
    }

    fn called_combination<'a>(
        &self,
        key: &str,
        value: Option<&FlagValue>,
        groups: impl IntoIterator<Item = (&'a String, &'a String)>,
        attribution: Option<&ReadAttribution>,
    ) -> u64 {
        let mut h = self.hasher.build_hasher();
        key.hash(&mut h);
        value.hash(&mut h);
        // Groups come from a BTreeMap, so the order is already sorted.
        for (t, k) in groups {
            t.hash(&mut h);
            k.hash(&mut h);
        }
        attribution.map(|a| a.called_key).hash(&mut h);
        h.finish()
    }

    /// Records the `$experiment_exposure` combination (`exposure_key` stands for the rule and
    /// variant); `true` if it is new. The value, request id and evaluation time are left out:
    /// one assignment is one exposure however often it is read.
    pub(crate) fn first_exposure<'a>(
        &self,
        distinct_id: &str,
        key: &str,
        groups: impl IntoIterator<Item = (&'a String, &'a String)>,
        exposure_key: u64,
    ) -> bool {
        let combination = self.exposure_combination(key, groups, exposure_key);
        self.first_combination(distinct_id, combination)
    }

    /// Forgets an `$experiment_exposure` combination whose event could not be queued.
    pub(crate) fn forget_exposure<'a>(
        &self,
        distinct_id: &str,
        key: &str,
        groups: impl IntoIterator<Item = (&'a String, &'a String)>,
        exposure_key: u64,
    ) {
        let combination = self.exposure_combination(key, groups, exposure_key);
        self.forget_combination(distinct_id, combination);
    }

    fn exposure_combination<'a>(
        &self,
        key: &str,
        groups: impl IntoIterator<Item = (&'a String, &'a String)>,
        exposure_key: u64,
    ) -> u64 {
        let mut h = self.hasher.build_hasher();
        key.hash(&mut h);
        for (t, k) in groups {
            t.hash(&mut h);
            k.hash(&mut h);
        }
        exposure_key.hash(&mut h);
        h.finish()
    }

    fn forget_combination(&self, distinct_id: &str, combination: u64) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(set) = state.seen.get_mut(distinct_id) {
            set.remove(&combination);
        }
    }

    fn first_combination(&self, distinct_id: &str, combination: u64) -> bool {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(set) = state.seen.get_mut(distinct_id) {
            return set.insert(combination);
        }
        if state.order.len() >= self.capacity {
            if let Some(oldest) = state.order.pop_front() {
                state.seen.remove(&oldest);
            }
        }
        state.order.push_back(distinct_id.to_owned());
        state
            .seen
            .insert(distinct_id.to_owned(), HashSet::from([combination]));
        true
    }

    /// Forgets everything (on shutdown).
    pub(crate) fn clear(&self) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.seen.clear();
        state.order.clear();
    }

    /// Distinct ids remembered.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .seen
            .len()
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
        assert!(d.first_time("u", "f", Some(&on), &none, None));
        assert!(!d.first_time("u", "f", Some(&on), &none, None));
        assert!(d.first_time("u", "f", Some(&FlagValue::Bool(false)), &none, None));
        assert!(d.first_time("u", "f", None, &none, None));
        assert!(d.first_time("u", "g", Some(&on), &none, None));
        assert!(d.first_time("v", "f", Some(&on), &none, None));
        let mut groups = BTreeMap::new();
        groups.insert("company".to_owned(), "acme".to_owned());
        assert!(d.first_time("u", "f", Some(&on), &groups, None));
        assert!(!d.first_time("u", "f", Some(&on), &groups, None));
        groups.insert("company".to_owned(), "other".to_owned());
        assert!(d.first_time("u", "f", Some(&on), &groups, None));
        d.clear();
        assert!(d.first_time("u", "f", Some(&on), &none, None));
    }

    #[test]
    fn bound_is_enforced_oldest_first() {
        let d = FlagCalledDedup::new(160);
        let none = BTreeMap::new();
        let on = FlagValue::Bool(true);
        for i in 0..10_000 {
            d.first_time(&format!("user-{i}"), "f", Some(&on), &none, None);
        }
        assert_eq!(d.len(), 160);
        // Exactly the last 160 users are remembered.
        assert!(!d.first_time("user-9840", "f", Some(&on), &none, None));
        // The most recent users are still remembered; the first ones were evicted.
        assert!(!d.first_time("user-9999", "f", Some(&on), &none, None));
        assert!(d.first_time("user-0", "f", Some(&on), &none, None));
    }
}
