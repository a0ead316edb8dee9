//! Evaluates a compiled flag for one caller context, exactly as posthog-python 7.91.1 does
//! locally, or says it cannot ([`Inconclusive`]: ask the server).
//!
//! Evaluating a flag borrows everything: properties are looked up in the caller's maps (the
//! distinct id and group keys are visible as properties by fallback, never by copying the maps),
//! hashes are fed in pieces, and the per-evaluation dependency cache is a vector that stays
//! unallocated unless the flag has dependencies. Only a variant answer allocates, for the
//! `String` inside [`FlagValue::Variant`].
//!
//! Definitions can make an evaluation recurse without end (cohorts and flags that need each
//! other) or repeat work exponentially (a cohort referring twice to the next). Limits in
//! [`super::compiled`] stop both before the stack or the clock runs out: cohorts nest at most
//! 200 deep, dependencies 100, property groups and dependencies together 300, and one
//! evaluation makes at most 10 000 dependency evaluations and 100 000 cohort steps. Past the
//! cohort limit evaluation fails as on a malformed cohort; past the others the flag is
//! inconclusive.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use super::compiled::{
    ChainItem, CohortFilter, CohortOperator, CompiledFlag, CompiledFlags, Condition,
    ConditionScope, EntryKind, Expected, Filter, FlagBody, FlagDependency, FlagScope, GroupEntry,
    GroupLookup, Holdout, Malformed, PropertyGroup, Rollout, Variants, MAX_COHORT_DEPTH,
    MAX_COHORT_STEPS, MAX_DEPENDENCY_DEPTH, MAX_DEPENDENCY_EVALUATIONS, MAX_NESTING,
};
use super::hash::{hash, holdout_hash, VARIANT_SALT};
use super::operators::match_property;
use super::{Inconclusive, PropRef};
use crate::flags::FlagValue;

/// Who a flag is evaluated for.
#[derive(Clone, Copy, Debug)]
pub(crate) struct EvalContext<'a> {
    pub(crate) distinct_id: &'a str,
    /// Bucketing value of flags with `bucketing_identifier: "device_id"`.
    pub(crate) device_id: Option<&'a str>,
    /// Person properties; `distinct_id` is visible among them unless given.
    pub(crate) person_properties: &'a Map<String, Value>,
    /// Group type name to group key.
    pub(crate) groups: &'a BTreeMap<String, String>,
    /// Group type name to the group's properties; `$group_key` is visible among them unless
    /// given, and a group passed in `groups` without properties has just `$group_key`.
    pub(crate) group_properties: &'a BTreeMap<String, Map<String, Value>>,
}

/// A flag decided locally.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct LocalMatch<'a> {
    pub(crate) value: FlagValue,
    /// The payload (JSON text) stored for this value: under the variant, or `"true"`/`"false"`.
    pub(crate) payload: Option<&'a str>,
    pub(crate) id: Option<i64>,
    pub(crate) has_experiment: Option<bool>,
}

impl CompiledFlags {
    /// Evaluates flag `key` for `ctx`.
    pub(crate) fn evaluate(
        &self,
        key: &str,
        ctx: &EvalContext<'_>,
    ) -> Result<LocalMatch<'_>, Inconclusive> {
        let Some(&index) = self.by_key.get(key) else {
            return Err(Inconclusive("the flag is not in the local definitions"));
        };
        let flag = &self.flags[index];
        let mut evaluation = Evaluation {
            defs: self,
            ctx,
            top: index,
            cache: Vec::new(),
            depth: 0,
            work: 0,
            nesting: 0,
            steps: 0,
            runaway: None,
        };
        let outcome = evaluation.top_level(flag);
        if let Some(reason) = evaluation.runaway {
            return Err(Inconclusive(reason));
        }
        let outcome = outcome.map_err(|fail| Inconclusive(fail.reason()))?;
        let (value, payload) = match outcome {
            Outcome::Bool(true) => (FlagValue::Bool(true), flag.payload_true.as_deref()),
            Outcome::Bool(false) => (FlagValue::Bool(false), flag.payload_false.as_deref()),
            Outcome::Variant(name, payload) => (FlagValue::Variant(name.to_owned()), payload),
        };
        Ok(LocalMatch {
            value,
            payload,
            id: flag.id,
            has_experiment: flag.has_experiment,
        })
    }
}

/// Why an evaluation stopped short, with posthog-python's three ways of stopping.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fail {
    /// `InconclusiveMatchError`: this condition is undecided; later conditions may decide.
    Inconclusive(&'static str),
    /// `RequiresServerEvaluation` (a static cohort, a malformed cohort): the flag goes to the
    /// server unless a later filter of the same condition rules the condition out.
    Server(&'static str),
    /// Any other exception (a malformed definition, runaway recursion): the flag goes to the
    /// server, unless an earlier filter of the same condition was already undecided.
    Unexpected(&'static str),
}

impl Fail {
    fn reason(self) -> &'static str {
        match self {
            Fail::Inconclusive(r) | Fail::Server(r) | Fail::Unexpected(r) => r,
        }
    }
}

fn unexpected(malformed: &Malformed) -> Fail {
    Fail::Unexpected(malformed.0)
}

// Why an evaluation ran away (see `Evaluation::runaway`).
const DEPENDENCIES_RUN_AWAY: &str = "flag dependencies recurse without end";
const NESTED_TOO_DEEP: &str = "cohorts and flag dependencies nest too deep";
const TOO_MANY_COHORT_STEPS: &str = "cohorts refer to each other too many times";

/// A flag's value before it leaves the matcher: borrowed, so dependencies cost nothing.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Outcome<'c> {
    Bool(bool),
    /// A variant (or holdout) name and its payload.
    Variant(&'c str, Option<&'c str>),
}

enum ConditionMatch<'c> {
    Match(Outcome<'c>),
    NoMatch,
    OutOfRollout,
}

/// The properties filters are matched against.
#[derive(Clone, Copy)]
enum Props<'x> {
    Person {
        properties: &'x Map<String, Value>,
        distinct_id: &'x str,
    },
    Group {
        properties: Option<&'x Map<String, Value>>,
        key: &'x str,
    },
}

impl<'x> Props<'x> {
    fn get(&self, name: &str) -> Option<PropRef<'x>> {
        match *self {
            Props::Person {
                properties,
                distinct_id,
            } => match properties.get(name) {
                Some(value) => Some(PropRef::Json(value)),
                None => (name == "distinct_id").then_some(PropRef::Str(distinct_id)),
            },
            Props::Group { properties, key } => match properties.and_then(|p| p.get(name)) {
                Some(value) => Some(PropRef::Json(value)),
                None => (name == "$group_key").then_some(PropRef::Str(key)),
            },
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum CacheKey<'c> {
    Flag(usize),
    Missing(&'c str),
}

/// One top-level evaluation.
struct Evaluation<'c, 'x> {
    defs: &'c CompiledFlags,
    ctx: &'x EvalContext<'x>,
    /// The flag asked for (never cached: as a dependency of itself it is evaluated afresh).
    top: usize,
    /// Dependency results (`None`: inconclusive), looked up linearly (chains are short).
    /// A flag being evaluated is not in it, as in posthog-python: meeting it again evaluates
    /// it afresh, with whatever the cache holds by then.
    cache: Vec<(CacheKey<'c>, Option<Outcome<'c>>)>,
    /// Nesting of dependency evaluations.
    depth: usize,
    /// Dependency evaluations so far (failed ones are not cached and can repeat).
    work: usize,
    /// Property groups and dependency evaluations open now, all kinds together: what bounds
    /// the stack ([`MAX_NESTING`]).
    nesting: usize,
    /// Cohort group entries evaluated so far ([`MAX_COHORT_STEPS`]).
    steps: usize,
    /// Set (with the reason) when a nesting or work limit stopped a runaway evaluation.
    /// posthog-python only escapes such definitions through its recursion limit, at a depth
    /// nothing here can reproduce, or not at all, so the flag is then inconclusive whatever
    /// the evaluation made of the error.
    runaway: Option<&'static str>,
}

impl<'c, 'x> Evaluation<'c, 'x> {
    /// Marks the evaluation as a runaway (the first reason stays) and fails.
    fn run_away(&mut self, reason: &'static str) -> Fail {
        self.runaway.get_or_insert(reason);
        Fail::Unexpected(reason)
    }

    /// Opens one more level of nesting (a property group or a dependency evaluation), unless
    /// [`MAX_NESTING`] are open already. The caller closes it (`nesting -= 1`).
    fn enter(&mut self) -> Result<(), Fail> {
        if self.nesting >= MAX_NESTING {
            return Err(self.run_away(NESTED_TOO_DEEP));
        }
        self.nesting += 1;
        Ok(())
    }

    fn top_level(&mut self, flag: &'c CompiledFlag) -> Result<Outcome<'c>, Fail> {
        if !flag.active {
            return Ok(Outcome::Bool(false));
        }
        if flag.ensure_experience_continuity {
            return Err(Fail::Inconclusive(
                "the flag has experience continuity enabled",
            ));
        }
        let body = flag.body.as_ref().map_err(unexpected)?;
        let ctx = self.ctx;
        match &body.scope {
            FlagScope::Group(lookup) => {
                let name = match lookup {
                    GroupLookup::Name(name) => name.as_str(),
                    GroupLookup::Unknown => {
                        return Err(Fail::Inconclusive("the flag's group type index is unknown"))
                    }
                    // No group of that type can have been passed.
                    GroupLookup::NeverPassed => return Ok(Outcome::Bool(false)),
                    GroupLookup::MappingMalformed => {
                        return Err(Fail::Unexpected("the group type mapping is not an object"))
                    }
                };
                // A group flag is off for a caller who passed no group of its type.
                let Some(group_key) = ctx.groups.get(name) else {
                    return Ok(Outcome::Bool(false));
                };
                let props = Props::Group {
                    properties: ctx.group_properties.get(name),
                    key: group_key,
                };
                self.match_flag(self.top, body, group_key, props, group_key, true)
            }
            FlagScope::Person => {
                let bucketing = self.person_bucketing(body, ctx.distinct_id)?;
                let props = Props::Person {
                    properties: ctx.person_properties,
                    distinct_id: ctx.distinct_id,
                };
                self.match_flag(self.top, body, ctx.distinct_id, props, bucketing, true)
            }
        }
    }

    fn person_bucketing(&self, body: &FlagBody, distinct_id: &'x str) -> Result<&'x str, Fail> {
        if !body.device_bucketing {
            return Ok(distinct_id);
        }
        match self.ctx.device_id {
            Some(device_id) if !device_id.is_empty() => Ok(device_id),
            _ => Err(Fail::Inconclusive(
                "the flag buckets by device id and none was given",
            )),
        }
    }

    /// posthog-python's `match_feature_flag_properties`: enrollment, holdout, conditions.
    /// `with_groups` is false for dependencies, which are evaluated without groups.
    fn match_flag(
        &mut self,
        index: usize,
        body: &'c FlagBody,
        distinct_id: &'x str,
        props: Props<'x>,
        bucketing: &'x str,
        with_groups: bool,
    ) -> Result<Outcome<'c>, Fail> {
        let flag = &self.defs.flags[index];
        if let Some(enrollment_key) = &body.enrollment {
            if !matches!(body.scope, FlagScope::Person) {
                return Err(Fail::Inconclusive(
                    "a group flag has feature enrollment, which reads person properties",
                ));
            }
            return match props.get(enrollment_key) {
                None => Err(Fail::Inconclusive(
                    "the flag has feature enrollment and its enrollment property was not given",
                )),
                Some(value) => Ok(Outcome::Bool(is_enrolled(value))),
            };
        }
        match &body.holdout {
            Holdout::None => {}
            Holdout::Malformed(m) => return Err(unexpected(m)),
            Holdout::Some {
                percentage,
                value,
                payload,
            } => {
                let excluded = *percentage != 100.0 && holdout_hash(bucketing) > percentage / 100.0;
                if !excluded {
                    return Ok(Outcome::Variant(value, payload.as_deref()));
                }
            }
        }
        let variants = body.variants.as_ref().map_err(unexpected)?;
        let conditions = body.conditions.as_ref().map_err(unexpected)?;
        let mut inconclusive = None;
        for condition in conditions {
            let condition = condition.as_ref().map_err(unexpected)?;
            match self.match_condition(
                flag,
                variants,
                condition,
                distinct_id,
                props,
                bucketing,
                with_groups,
            ) {
                Ok(ConditionMatch::Match(outcome)) => return Ok(outcome),
                Ok(ConditionMatch::OutOfRollout) if body.early_exit => break,
                Ok(_) => {}
                Err(Fail::Inconclusive(reason)) => {
                    inconclusive.get_or_insert(reason);
                }
                Err(fail) => return Err(fail),
            }
        }
        match inconclusive {
            Some(reason) => Err(Fail::Inconclusive(reason)),
            None => Ok(Outcome::Bool(false)),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn match_condition(
        &mut self,
        flag: &'c CompiledFlag,
        variants: &'c Variants,
        condition: &'c Condition,
        distinct_id: &'x str,
        props: Props<'x>,
        bucketing: &'x str,
        with_groups: bool,
    ) -> Result<ConditionMatch<'c>, Fail> {
        let (props, bucketing) = match &condition.scope {
            ConditionScope::Flag => (props, bucketing),
            ConditionScope::Group(lookup) => {
                // Dependencies are evaluated without groups: their group conditions are skipped.
                if !with_groups {
                    return Ok(ConditionMatch::NoMatch);
                }
                match lookup {
                    GroupLookup::Name(name) => {
                        let ctx = self.ctx;
                        let Some(key) = ctx.groups.get(name.as_str()) else {
                            return Ok(ConditionMatch::NoMatch);
                        };
                        let props = Props::Group {
                            properties: ctx.group_properties.get(name.as_str()),
                            key,
                        };
                        (props, key.as_str())
                    }
                    GroupLookup::Unknown | GroupLookup::NeverPassed => {
                        return Ok(ConditionMatch::NoMatch)
                    }
                    GroupLookup::MappingMalformed => {
                        return Err(Fail::Unexpected("the group type mapping is not an object"))
                    }
                }
            }
        };
        if !condition.filters.is_empty() {
            if !self.match_filters(&condition.filters, distinct_id, props)? {
                return Ok(ConditionMatch::NoMatch);
            }
            if let Rollout::All = condition.rollout {
                return Ok(ConditionMatch::Match(pick_variant(
                    flag, variants, condition, bucketing,
                )?));
            }
        }
        match &condition.rollout {
            Rollout::All => {}
            Rollout::Percentage(percentage) => {
                if hash(&flag.key, bucketing, "") > percentage / 100.0 {
                    return Ok(ConditionMatch::OutOfRollout);
                }
            }
            Rollout::Malformed(m) => return Err(unexpected(m)),
        }
        Ok(ConditionMatch::Match(pick_variant(
            flag, variants, condition, bucketing,
        )?))
    }

    /// All filters of a condition must match. An undecided filter does not stop the loop: a
    /// later definite mismatch still rules the condition out.
    fn match_filters(
        &mut self,
        filters: &'c [Filter],
        distinct_id: &'x str,
        props: Props<'x>,
    ) -> Result<bool, Fail> {
        let mut server = None;
        let mut undecided = None;
        for filter in filters {
            match self.match_filter(filter, distinct_id, props, 0) {
                Ok(true) => {}
                Ok(false) => return Ok(false),
                Err(Fail::Server(reason)) => {
                    if undecided.is_none() {
                        server = Some(reason);
                    }
                    undecided.get_or_insert(reason);
                }
                Err(Fail::Inconclusive(reason)) => {
                    undecided.get_or_insert(reason);
                }
                Err(Fail::Unexpected(reason)) => {
                    if undecided.is_none() {
                        return Err(Fail::Unexpected(reason));
                    }
                    break;
                }
            }
        }
        if let Some(reason) = server {
            return Err(Fail::Server(reason));
        }
        match undecided {
            Some(reason) => Err(Fail::Inconclusive(reason)),
            None => Ok(true),
        }
    }

    fn match_filter(
        &mut self,
        filter: &'c Filter,
        distinct_id: &'x str,
        props: Props<'x>,
        cohort_depth: usize,
    ) -> Result<bool, Fail> {
        match filter {
            Filter::Property {
                property,
                key_is_text,
            } => {
                let value = if *key_is_text {
                    props.get(&property.key)
                } else {
                    None
                };
                match_property(property, value).map_err(|i| Fail::Inconclusive(i.0))
            }
            Filter::Cohort(cohort) => self.match_cohort(cohort, distinct_id, props, cohort_depth),
            Filter::Flag(dependency) => self.match_dependency(dependency, distinct_id, props),
            Filter::Malformed(m) => Err(unexpected(m)),
        }
    }

    fn match_cohort(
        &mut self,
        cohort: &'c CohortFilter,
        distinct_id: &'x str,
        props: Props<'x>,
        depth: usize,
    ) -> Result<bool, Fail> {
        let Some(target) = cohort.target else {
            return Err(Fail::Server(
                "a cohort is not in the local definitions (a static cohort)",
            ));
        };
        if cohort.operator == CohortOperator::Unsupported {
            return Err(Fail::Inconclusive("unsupported cohort operator"));
        }
        if depth >= self.defs.cohorts.len().min(MAX_COHORT_DEPTH) {
            return Err(Fail::Unexpected("cohorts refer to each other in a cycle"));
        }
        let group = &self.defs.cohorts[target];
        let matched = self.match_group(group, distinct_id, props, depth + 1)?;
        Ok(matched != (cohort.operator == CohortOperator::NotIn))
    }

    /// AND/OR over a cohort's entries: a decisive entry (a miss in AND, a hit in OR) wins over
    /// undecided ones; a malformed part or static cohort anywhere sends the flag to the server.
    fn match_group(
        &mut self,
        group: &'c PropertyGroup,
        distinct_id: &'x str,
        props: Props<'x>,
        depth: usize,
    ) -> Result<bool, Fail> {
        let (and, entries) = match group {
            PropertyGroup::All => return Ok(true),
            PropertyGroup::Malformed(m) => return Err(Fail::Server(m.0)),
            PropertyGroup::Entries { and, entries } => (*and, entries),
        };
        self.enter()?;
        let result = self.match_entries(and, entries, distinct_id, props, depth);
        self.nesting -= 1;
        result
    }

    fn match_entries(
        &mut self,
        and: bool,
        entries: &'c [GroupEntry],
        distinct_id: &'x str,
        props: Props<'x>,
        depth: usize,
    ) -> Result<bool, Fail> {
        let mut decisive = None;
        let mut undecided = None;
        for entry in entries {
            // posthog-python evaluates every entry; once decided, only entries that can fail
            // harder or fill the dependency cache can still change anything.
            if decisive.is_some() && entry.pure {
                continue;
            }
            if self.steps >= MAX_COHORT_STEPS {
                return Err(self.run_away(TOO_MANY_COHORT_STEPS));
            }
            self.steps += 1;
            let result = match &entry.kind {
                EntryKind::Filter(filter) => self
                    .match_filter(filter, distinct_id, props, depth)
                    .map(|m| m != entry.negation),
                EntryKind::Group(group) => self.match_group(group, distinct_id, props, depth),
                EntryKind::Malformed(m) => Err(Fail::Server(m.0)),
            };
            match result {
                Ok(matched) => {
                    if matched != and {
                        decisive = Some(matched);
                    }
                }
                Err(Fail::Inconclusive(reason)) => {
                    undecided.get_or_insert(reason);
                }
                Err(fail) => return Err(fail),
            }
        }
        if let Some(decided) = decisive {
            return Ok(decided);
        }
        match undecided {
            Some(reason) => Err(Fail::Inconclusive(reason)),
            None => Ok(and),
        }
    }

    /// `Some(value)` when `key` is cached (`value` is `None` when it was inconclusive).
    fn cached(&self, key: CacheKey<'c>) -> Option<Option<Outcome<'c>>> {
        self.cache
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, cached)| *cached)
    }

    fn set_cached(&mut self, key: CacheKey<'c>, value: Option<Outcome<'c>>) {
        match self.cache.iter_mut().find(|(k, _)| *k == key) {
            Some(slot) => slot.1 = value,
            None => self.cache.push((key, value)),
        }
    }

    /// A `type: "flag"` filter: evaluates the dependency chain in order (caching each flag),
    /// then compares the referenced flag's value with the expected one.
    fn match_dependency(
        &mut self,
        dependency: &'c FlagDependency,
        distinct_id: &'x str,
        props: Props<'x>,
    ) -> Result<bool, Fail> {
        let (chain, target, expected) = match dependency {
            FlagDependency::Malformed => return Ok(false),
            FlagDependency::NoChain => {
                return Err(Fail::Inconclusive(
                    "a flag dependency has no usable dependency chain (circular or missing)",
                ))
            }
            FlagDependency::Chain {
                chain,
                target,
                expected,
            } => (chain, *target, expected),
        };
        // A dependency without a definition outranks one that is only undecided.
        for item in chain {
            match item {
                ChainItem::Flag(_) => {}
                ChainItem::Unhashable => {
                    return Err(Fail::Unexpected("a dependency chain entry is not a key"))
                }
                ChainItem::Missing(key) => {
                    let key = CacheKey::Missing(key);
                    if self.cached(key).is_none() {
                        self.set_cached(key, None);
                        return Err(Fail::Inconclusive(
                            "a flag dependency is not in the local definitions",
                        ));
                    }
                }
            }
        }
        for item in chain {
            let ChainItem::Flag(index) = *item else {
                continue;
            };
            if self.cached(CacheKey::Flag(index)).is_none() {
                self.evaluate_dependency(index, distinct_id, props)?;
            }
        }
        let actual = target.and_then(|i| self.cached(CacheKey::Flag(i)).flatten());
        match actual {
            Some(actual) => Ok(expected_matches(expected, actual)),
            None => Err(Fail::Inconclusive(
                "a flag dependency was inconclusive or not evaluated",
            )),
        }
    }

    fn evaluate_dependency(
        &mut self,
        index: usize,
        distinct_id: &'x str,
        props: Props<'x>,
    ) -> Result<(), Fail> {
        let key = CacheKey::Flag(index);
        let flag = &self.defs.flags[index];
        if !flag.active {
            self.set_cached(key, Some(Outcome::Bool(false)));
            return Ok(());
        }
        if flag.ensure_experience_continuity {
            self.set_cached(key, None);
            return Err(Fail::Inconclusive(
                "a flag dependency has experience continuity enabled",
            ));
        }
        if self.depth >= MAX_DEPENDENCY_DEPTH || self.work >= MAX_DEPENDENCY_EVALUATIONS {
            return Err(self.run_away(DEPENDENCIES_RUN_AWAY));
        }
        self.enter()?;
        self.work += 1;
        self.depth += 1;
        let result = self.dependency_value(index, distinct_id, props);
        self.depth -= 1;
        self.nesting -= 1;
        match result {
            Ok(value) => {
                self.set_cached(key, Some(value));
                Ok(())
            }
            Err(Fail::Inconclusive(reason)) => {
                self.set_cached(key, None);
                Err(Fail::Inconclusive(reason))
            }
            // Not cached: another filter on this dependency fails the same way.
            Err(fail) => Err(fail),
        }
    }

    fn dependency_value(
        &mut self,
        index: usize,
        distinct_id: &'x str,
        props: Props<'x>,
    ) -> Result<Outcome<'c>, Fail> {
        let flag = &self.defs.flags[index];
        let body = flag.body.as_ref().map_err(unexpected)?;
        // A group flag keeps bucketing by the current bucketing identity.
        let bucketing = match body.scope {
            FlagScope::Group(_) => distinct_id,
            FlagScope::Person => self.person_bucketing(body, distinct_id)?,
        };
        self.match_flag(index, body, distinct_id, props, bucketing, false)
    }
}

fn pick_variant<'c>(
    flag: &'c CompiledFlag,
    variants: &'c Variants,
    condition: &Condition,
    bucketing: &str,
) -> Result<Outcome<'c>, Fail> {
    let index = match condition.variant_override {
        Some(index) => Some(index),
        None => {
            let table = variants.table.as_ref().map_err(unexpected)?;
            if table.is_empty() {
                None
            } else {
                let h = hash(&flag.key, bucketing, VARIANT_SALT);
                table
                    .iter()
                    .find(|range| h >= range.min && h < range.max)
                    .map(|range| range.variant)
            }
        }
    };
    let variant = index.and_then(|i| variants.variants.get(i));
    Ok(match variant {
        Some(v) => match &v.key {
            Some(key) => Outcome::Variant(key, v.payload.as_deref()),
            None => Outcome::Bool(true),
        },
        None => Outcome::Bool(true),
    })
}

/// `$feature_enrollment/<key>` is `true` or `"true"`.
fn is_enrolled(value: PropRef<'_>) -> bool {
    match value {
        PropRef::Json(Value::Bool(b)) => *b,
        PropRef::Json(Value::String(s)) => s == "true",
        PropRef::Str(s) => s == "true",
        PropRef::Json(_) => false,
    }
}

/// `flag_evaluates_to`: a variant matches `true` or its exact name; a boolean its own value.
fn expected_matches(expected: &Expected, actual: Outcome<'_>) -> bool {
    match (actual, expected) {
        (Outcome::Variant(_, _), Expected::Bool(b)) => *b,
        (Outcome::Variant(name, _), Expected::Variant(want)) => name == want,
        (Outcome::Bool(value), Expected::Bool(want)) => value == *want,
        _ => false,
    }
}

#[cfg(test)]
mod tests;
