//! Flag definitions compiled once per definitions change, for evaluation by
//! [`super::matcher`].
//!
//! Compilation never fails and never panics. It resolves everything an evaluation would
//! otherwise look up or parse: flags by key, the group type of every group flag and
//! mixed-targeting condition, cohorts by id, flag dependencies by index, property filters
//! (through [`super::operators`]), variant ranges and payloads. A part that posthog-python would
//! trip over when it reaches it is compiled to a `Malformed` marker at the same place, so the
//! evaluation reaches the same answer (usually inconclusive) at the same point.

use std::collections::HashMap;
use std::fmt;

use serde_json::{Map, Value};

use super::definitions::{
    truthy, ConditionDefinition, Definitions, DefinitionsError, FlagDefinition, FlagFilters,
    HoldoutDefinition, Lenient, MultivariateDefinition,
};
use super::operators::{compile_property, CompileOptions, CompiledProperty};

/// Dependency evaluations nested deeper than this are treated as runaway recursion (Python's
/// recursion limit stops at roughly the same depth).
pub(super) const MAX_DEPENDENCY_DEPTH: usize = 100;
/// Dependency evaluations one flag evaluation may make: failed ones are not cached, so
/// pathological definitions could otherwise repeat them exponentially.
pub(super) const MAX_DEPENDENCY_EVALUATIONS: usize = 10_000;
/// Cohorts nested deeper than this (or than the number of cohorts: a cycle) likewise.
pub(super) const MAX_COHORT_DEPTH: usize = 200;
/// Property groups (a cohort's, or one nested in it) and dependency evaluations one flag
/// evaluation may have open at once, all kinds together. The limits above bound each kind
/// alone, not the mix: cohorts 199 deep whose last one needs a flag that needs the first
/// cohort nest 100 × 199 levels, and JSON's 128 levels let each of 200 chained cohorts nest
/// some 60 groups. A level of either kind is a few frames (in a debug build about 1.6 KiB of
/// stack for a group, 5 KiB for a dependency), so the deepest evaluation these limits allow
/// needs less than 1 MiB of stack in a debug build (`tests/flags/deep_input.rs` runs it on a
/// 2 MiB thread), a fraction of that optimized. posthog-python stops such definitions only
/// at its recursion limit; here the flag is inconclusive.
pub(super) const MAX_NESTING: usize = 300;
/// Cohort property group entries one flag evaluation may evaluate: a cohort referring twice
/// to the next one, 200 deep, would otherwise evaluate its last cohort 2^199 times.
pub(super) const MAX_COHORT_STEPS: usize = 100_000;

/// All flag definitions of a project, ready to evaluate. Immutable once compiled.
pub(crate) struct CompiledFlags {
    /// One per distinct key, in the order first served (a later duplicate replaces the
    /// definition in place, as the last definition wins in posthog-python).
    pub(super) flags: Vec<CompiledFlag>,
    pub(super) by_key: HashMap<String, usize>,
    /// Cohort property groups; filters refer to them by index.
    pub(super) cohorts: Vec<PropertyGroup>,
    property_matching_version: u32,
    minimal_flag_called_events: bool,
}

impl fmt::Debug for CompiledFlags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CompiledFlags")
            .field("flags", &self.keys().collect::<Vec<_>>())
            .field("cohorts", &self.cohorts.len())
            .field("property_matching_version", &self.property_matching_version)
            .field(
                "minimal_flag_called_events",
                &self.minimal_flag_called_events,
            )
            .finish()
    }
}

/// One compiled flag.
pub(crate) struct CompiledFlag {
    pub(crate) key: String,
    /// The definition's `id`, when it is an integer.
    pub(crate) id: Option<i64>,
    /// The definition's `has_experiment`, when it is a boolean.
    pub(crate) has_experiment: Option<bool>,
    pub(super) active: bool,
    pub(super) ensure_experience_continuity: bool,
    /// Payloads (JSON text) by value key: `"true"`, `"false"` or a variant.
    #[allow(dead_code)] // read by `payload`, for lookups by value
    payloads: HashMap<String, String>,
    pub(super) payload_true: Option<String>,
    pub(super) payload_false: Option<String>,
    /// Everything read from `filters`; `Err` when `filters` is not an object.
    pub(super) body: Result<FlagBody, Malformed>,
    /// The evaluation environments it is restricted to.
    pub(crate) evaluation_tags: super::environments::EvaluationTags,
}

impl CompiledFlag {
    /// The payload (JSON text) stored for `value`: under `"true"`/`"false"` for a boolean, under
    /// the variant's name for a variant.
    #[allow(dead_code)] // the local `match_value` payload lookup
    pub(crate) fn payload(&self, value: &crate::flags::FlagValue) -> Option<&str> {
        match value {
            crate::flags::FlagValue::Bool(true) => self.payload_true.as_deref(),
            crate::flags::FlagValue::Bool(false) => self.payload_false.as_deref(),
            crate::flags::FlagValue::Variant(v) => self.payloads.get(v).map(String::as_str),
        }
    }
}

/// A definition part that posthog-python would fail on when it reaches it; evaluation then
/// gives up on the flag (inconclusive).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Malformed(pub(crate) &'static str);

pub(super) struct FlagBody {
    pub(super) scope: FlagScope,
    /// `bucketing_identifier: "device_id"` (person flags only).
    pub(super) device_bucketing: bool,
    /// `filters.feature_enrollment: true`: the `$feature_enrollment/<key>` property to read.
    pub(super) enrollment: Option<String>,
    pub(super) holdout: Holdout,
    pub(super) early_exit: bool,
    pub(super) variants: Result<Variants, Malformed>,
    /// The release conditions in definition order; `Err` for one that is not an object.
    pub(super) conditions: Result<Vec<Result<Condition, Malformed>>, Malformed>,
}

/// Whose properties a flag matches, and what it buckets by.
pub(super) enum FlagScope {
    Person,
    /// A group flag (`aggregation_group_type_index` set).
    Group(GroupLookup),
}

/// A group type index resolved through `group_type_mapping`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum GroupLookup {
    Name(String),
    /// The index is not in the mapping (or maps to an empty name).
    Unknown,
    /// It maps to something no passed group can be called (a non-string name).
    NeverPassed,
    /// `group_type_mapping` is not an object.
    MappingMalformed,
}

pub(super) enum Holdout {
    None,
    /// Held out when `percentage` is 100 or the holdout hash is at most `percentage / 100`.
    Some {
        percentage: f64,
        value: String,
        payload: Option<String>,
    },
    Malformed(Malformed),
}

pub(super) struct Variants {
    pub(super) variants: Vec<Variant>,
    /// Cumulative `[min, max)` ranges in definition order; `Err` when a split is not a number.
    pub(super) table: Result<Vec<VariantRange>, Malformed>,
}

pub(super) struct Variant {
    /// `None` for a falsy key (`""`, `null`): choosing it gives `true`, as in posthog-python.
    pub(super) key: Option<String>,
    pub(super) payload: Option<String>,
}

#[derive(Clone, Copy, Debug)]
pub(super) struct VariantRange {
    pub(super) min: f64,
    pub(super) max: f64,
    pub(super) variant: usize,
}

pub(super) struct Condition {
    pub(super) scope: ConditionScope,
    pub(super) filters: Vec<Filter>,
    pub(super) rollout: Rollout,
    /// Index of the variant the condition overrides to (only a valid override is kept).
    pub(super) variant_override: Option<usize>,
}

pub(super) enum ConditionScope {
    /// The flag's own properties and bucketing value.
    Flag,
    /// Mixed targeting: this condition targets a group type of its own.
    Group(GroupLookup),
}

pub(super) enum Rollout {
    All,
    Percentage(f64),
    Malformed(Malformed),
}

/// One property filter of a condition or cohort.
pub(super) enum Filter {
    /// A person or group property, matched by [`super::operators`]. `key_is_text` is false
    /// when the filter's `key` is not a string: such a key is never among the properties.
    Property {
        property: CompiledProperty,
        key_is_text: bool,
    },
    Cohort(CohortFilter),
    Flag(FlagDependency),
    /// Not an object.
    Malformed(Malformed),
}

pub(super) struct CohortFilter {
    /// Index into [`CompiledFlags::cohorts`]; `None` when the cohort was not served (a static
    /// cohort: the server must evaluate).
    pub(super) target: Option<usize>,
    pub(super) operator: CohortOperator,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum CohortOperator {
    In,
    NotIn,
    Unsupported,
}

pub(super) enum FlagDependency {
    /// Wrong operator, missing key or missing value: a definite no-match.
    Malformed,
    /// `dependency_chain` missing, not a list, or empty (circular): inconclusive.
    NoChain,
    Chain {
        chain: Vec<ChainItem>,
        /// The flag whose value is compared (`None`: not among the definitions).
        target: Option<usize>,
        expected: Expected,
    },
}

pub(super) enum ChainItem {
    Flag(usize),
    /// A key without a definition (its cache key).
    Missing(String),
    /// A list or object, which Python cannot use as a key.
    Unhashable,
}

pub(super) enum Expected {
    Bool(bool),
    Variant(String),
    Other,
}

/// A cohort's property group (or one nested in it).
pub(super) enum PropertyGroup {
    /// `{}` or an empty group: matches.
    All,
    /// Not a valid group: the server must evaluate.
    Malformed(Malformed),
    Entries {
        and: bool,
        entries: Vec<GroupEntry>,
    },
}

impl PropertyGroup {
    fn is_pure(&self) -> bool {
        match self {
            PropertyGroup::All => true,
            PropertyGroup::Malformed(_) => false,
            PropertyGroup::Entries { entries, .. } => entries.iter().all(|e| e.pure),
        }
    }
}

pub(super) struct GroupEntry {
    pub(super) kind: EntryKind,
    pub(super) negation: bool,
    /// Only person/group property filters inside: evaluating it can neither fail beyond
    /// inconclusive nor touch the dependency cache, so it may be skipped once the group's
    /// result is decided.
    pub(super) pure: bool,
}

pub(super) enum EntryKind {
    Filter(Filter),
    Group(PropertyGroup),
    Malformed(Malformed),
}

impl CompiledFlags {
    /// Parses and compiles a definitions response body.
    pub(crate) fn from_json(bytes: &[u8]) -> Result<CompiledFlags, DefinitionsError> {
        Definitions::from_json(bytes).map(|defs| CompiledFlags::compile(&defs))
    }

    /// Compiles parsed definitions.
    pub(crate) fn compile(defs: &Definitions) -> CompiledFlags {
        let options = CompileOptions {
            property_matching_version: defs.property_matching_version(),
        };

        // Flags by key: the last definition of a key wins, at the place of the first.
        let mut by_key: HashMap<String, usize> = HashMap::new();
        let mut chosen: Vec<&FlagDefinition> = Vec::new();
        for def in defs.flag_definitions() {
            let Value::String(key) = &def.key else {
                continue;
            };
            match by_key.get(key.as_str()) {
                Some(&at) => chosen[at] = def,
                None => {
                    by_key.insert(key.clone(), chosen.len());
                    chosen.push(def);
                }
            }
        }

        let empty = Map::new();
        let cohorts_raw = defs.cohorts.valid().unwrap_or(&empty);
        let cohort_ids: HashMap<&str, usize> = cohorts_raw
            .keys()
            .enumerate()
            .map(|(i, id)| (id.as_str(), i))
            .collect();
        let mapping = match &defs.group_type_mapping {
            Lenient::Valid(map) => Mapping::Valid(map),
            Lenient::Invalid(raw) if !truthy(raw) => Mapping::Valid(&empty),
            Lenient::Invalid(_) => Mapping::Malformed,
        };

        let compiler = Compiler {
            by_key: &by_key,
            cohort_ids: &cohort_ids,
            mapping,
            options,
        };
        let cohorts = cohorts_raw
            .values()
            .map(|group| compiler.group(group))
            .collect();
        let flags = chosen.into_iter().map(|def| compiler.flag(def)).collect();

        CompiledFlags {
            flags,
            by_key,
            cohorts,
            property_matching_version: options.property_matching_version,
            minimal_flag_called_events: defs.minimal_flag_called_events(),
        }
    }

    /// The flag keys, in definition order.
    pub(crate) fn keys(&self) -> impl Iterator<Item = &str> + '_ {
        self.flags.iter().map(|f| f.key.as_str())
    }

    /// The compiled flag `key`.
    #[allow(dead_code)] // inspection helper, used by tests
    pub(crate) fn flag(&self, key: &str) -> Option<&CompiledFlag> {
        self.by_key.get(key).map(|&i| &self.flags[i])
    }

    #[allow(dead_code)] // inspection helper, used by tests
    pub(crate) fn len(&self) -> usize {
        self.flags.len()
    }

    #[allow(dead_code)] // inspection helper, used by tests
    pub(crate) fn is_empty(&self) -> bool {
        self.flags.is_empty()
    }

    #[allow(dead_code)] // inspection helper, used by tests
    pub(crate) fn property_matching_version(&self) -> u32 {
        self.property_matching_version
    }

    /// Whether PostHog asked for minimal `$feature_flag_called` events.
    pub(crate) fn minimal_flag_called_events(&self) -> bool {
        self.minimal_flag_called_events
    }
}

#[derive(Clone, Copy)]
enum Mapping<'d> {
    Valid(&'d Map<String, Value>),
    Malformed,
}

struct Compiler<'d> {
    by_key: &'d HashMap<String, usize>,
    cohort_ids: &'d HashMap<&'d str, usize>,
    mapping: Mapping<'d>,
    options: CompileOptions,
}

impl Compiler<'_> {
    fn flag(&self, def: &FlagDefinition) -> CompiledFlag {
        let key = def.key.as_str().unwrap_or_default().to_owned();
        let default_filters = FlagFilters::default();
        let filters = match &def.filters {
            Lenient::Valid(filters) => Ok(filters),
            Lenient::Invalid(raw) if !truthy(raw) => Ok(&default_filters),
            Lenient::Invalid(_) => Err(Malformed("the flag's filters are not an object")),
        };
        let payloads = filters.map(payloads).unwrap_or_default();
        let body = filters.map(|filters| self.body(&key, def, filters, &payloads));
        CompiledFlag {
            id: def.id.as_i64(),
            has_experiment: def.has_experiment.as_bool(),
            active: truthy(&def.active),
            ensure_experience_continuity: truthy(&def.ensure_experience_continuity),
            payload_true: payloads.get("true").cloned(),
            payload_false: payloads.get("false").cloned(),
            payloads,
            body,
            key,
            evaluation_tags: super::environments::EvaluationTags::compile(&def.evaluation_tags),
        }
    }

    fn body(
        &self,
        key: &str,
        def: &FlagDefinition,
        filters: &FlagFilters,
        payloads: &HashMap<String, String>,
    ) -> FlagBody {
        let flag_index = AggIndex::from_value(&filters.aggregation_group_type_index);
        let scope = match &flag_index {
            None => FlagScope::Person,
            Some(index) => FlagScope::Group(self.lookup(index)),
        };
        let bucketing_identifier = if truthy(&def.bucketing_identifier) {
            &def.bucketing_identifier
        } else {
            &filters.bucketing_identifier
        };
        let variants = variants(&filters.multivariate, payloads);
        let conditions = match &filters.groups {
            Lenient::Valid(conditions) => Ok(conditions
                .iter()
                .map(|c| match c {
                    Lenient::Valid(c) => Ok(self.condition(c, &flag_index, &variants)),
                    Lenient::Invalid(_) => Err(Malformed("a condition is not an object")),
                })
                .collect()),
            Lenient::Invalid(raw) if !truthy(raw) => Ok(Vec::new()),
            Lenient::Invalid(_) => Err(Malformed("the flag's conditions are not a list")),
        };
        FlagBody {
            scope,
            device_bucketing: bucketing_identifier.as_str() == Some("device_id"),
            enrollment: (filters.feature_enrollment == Value::Bool(true))
                .then(|| format!("$feature_enrollment/{key}")),
            holdout: holdout(&filters.holdout, payloads),
            early_exit: truthy(&filters.early_exit),
            variants,
            conditions,
        }
    }

    fn lookup(&self, index: &AggIndex) -> GroupLookup {
        let map = match self.mapping {
            Mapping::Valid(map) => map,
            Mapping::Malformed => return GroupLookup::MappingMalformed,
        };
        match index.text().and_then(|text| map.get(text)) {
            Some(Value::String(name)) if !name.is_empty() => GroupLookup::Name(name.clone()),
            Some(other) if truthy(other) => GroupLookup::NeverPassed,
            _ => GroupLookup::Unknown,
        }
    }

    fn condition(
        &self,
        def: &ConditionDefinition,
        flag_index: &Option<AggIndex>,
        variants: &Result<Variants, Malformed>,
    ) -> Condition {
        let index = match &def.aggregation_group_type_index {
            None => flag_index.clone(),
            Some(raw) => AggIndex::from_value(raw),
        };
        let scope = match &index {
            Some(own) if !AggIndex::py_eq(&index, flag_index) => {
                ConditionScope::Group(self.lookup(own))
            }
            _ => ConditionScope::Flag,
        };
        let filters = match &def.properties {
            Value::Array(items) => items.iter().map(|raw| self.filter(raw)).collect(),
            raw if !truthy(raw) => Vec::new(),
            _ => vec![Filter::Malformed(Malformed(
                "a condition's properties are not a list",
            ))],
        };
        let rollout = match &def.rollout_percentage {
            Value::Null => Rollout::All,
            Value::Number(n) => Rollout::Percentage(n.as_f64().unwrap_or(f64::NAN)),
            Value::Bool(b) => Rollout::Percentage(f64::from(u8::from(*b))),
            _ => Rollout::Malformed(Malformed("a rollout percentage is not a number")),
        };
        let variant_override = match (&def.variant, variants) {
            (Value::String(name), Ok(variants)) if !name.is_empty() => variants
                .variants
                .iter()
                .position(|v| v.key.as_deref() == Some(name.as_str())),
            _ => None,
        };
        Condition {
            scope,
            filters,
            rollout,
            variant_override,
        }
    }

    fn filter(&self, raw: &Value) -> Filter {
        let Some(object) = raw.as_object() else {
            return Filter::Malformed(Malformed("a property filter is not an object"));
        };
        match object.get("type").and_then(Value::as_str) {
            Some("cohort") => Filter::Cohort(self.cohort_filter(object)),
            Some("flag") => Filter::Flag(self.dependency(object)),
            _ => Filter::Property {
                property: compile_property(raw, self.options),
                key_is_text: object.get("key").is_some_and(Value::is_string),
            },
        }
    }

    fn cohort_filter(&self, object: &Map<String, Value>) -> CohortFilter {
        let id = py_str(object.get("value").unwrap_or(&Value::Null));
        let target = id.and_then(|id| self.cohort_ids.get(id.as_str()).copied());
        let operator = match object.get("operator") {
            None => CohortOperator::In,
            Some(op) if !truthy(op) => CohortOperator::In,
            Some(Value::String(op)) if op == "exact" || op == "in" => CohortOperator::In,
            Some(Value::String(op)) if op == "not_in" => CohortOperator::NotIn,
            Some(_) => CohortOperator::Unsupported,
        };
        CohortFilter { target, operator }
    }

    fn dependency(&self, object: &Map<String, Value>) -> FlagDependency {
        // An absent operator reads as "exact", which is not a dependency operator either.
        if object.get("operator").and_then(Value::as_str) != Some("flag_evaluates_to") {
            return FlagDependency::Malformed;
        }
        let key = object.get("key").unwrap_or(&Value::Null);
        let expected = object.get("value").unwrap_or(&Value::Null);
        if !truthy(key) || expected.is_null() {
            return FlagDependency::Malformed;
        }
        let chain = match object.get("dependency_chain") {
            Some(Value::Array(chain)) if !chain.is_empty() => chain,
            _ => return FlagDependency::NoChain,
        };
        let chain = chain
            .iter()
            .map(|item| match item {
                Value::String(k) => match self.by_key.get(k.as_str()) {
                    Some(&i) => ChainItem::Flag(i),
                    None => ChainItem::Missing(k.clone()),
                },
                Value::Array(_) | Value::Object(_) => ChainItem::Unhashable,
                // A non-string key never names a flag; keep it apart from string keys.
                other => ChainItem::Missing(format!("\u{0}{other}")),
            })
            .collect();
        FlagDependency::Chain {
            chain,
            target: key.as_str().and_then(|k| self.by_key.get(k).copied()),
            expected: match expected {
                Value::Bool(b) => Expected::Bool(*b),
                Value::String(s) => Expected::Variant(s.clone()),
                _ => Expected::Other,
            },
        }
    }

    /// Recurses through nested groups ([`Compiler::entry`]), at most 64 levels: each is an
    /// object and a list in the definitions, which nest at most 128 levels. References to
    /// other cohorts are indices, resolved at evaluation.
    fn group(&self, raw: &Value) -> PropertyGroup {
        let Some(object) = raw.as_object() else {
            return PropertyGroup::Malformed(Malformed("a cohort property group is not an object"));
        };
        if object.is_empty() {
            return PropertyGroup::All;
        }
        let and = match object.get("type").and_then(Value::as_str) {
            Some("AND") => true,
            Some("OR") => false,
            _ => {
                return PropertyGroup::Malformed(Malformed(
                    "a cohort property group's type is not AND or OR",
                ))
            }
        };
        let Some(Value::Array(values)) = object.get("values") else {
            return PropertyGroup::Malformed(Malformed(
                "a cohort property group's values are not a list",
            ));
        };
        if values.is_empty() {
            return PropertyGroup::All;
        }
        PropertyGroup::Entries {
            and,
            entries: values.iter().map(|v| self.entry(v)).collect(),
        }
    }

    fn entry(&self, raw: &Value) -> GroupEntry {
        let Some(object) = raw.as_object() else {
            return GroupEntry {
                kind: EntryKind::Malformed(Malformed("a cohort entry is not an object")),
                negation: false,
                pure: false,
            };
        };
        let nested = object.is_empty()
            || object.contains_key("values")
            || matches!(
                object.get("type").and_then(Value::as_str),
                Some("AND" | "OR")
            );
        if nested {
            let group = self.group(raw);
            return GroupEntry {
                pure: group.is_pure(),
                kind: EntryKind::Group(group),
                negation: false,
            };
        }
        let filter = self.filter(raw);
        GroupEntry {
            pure: matches!(filter, Filter::Property { .. }),
            kind: EntryKind::Filter(filter),
            negation: truthy(object.get("negation").unwrap_or(&Value::Null)),
        }
    }
}

/// Payloads as JSON text: strings as they are, other JSON serialized, `null` dropped.
fn payloads(filters: &FlagFilters) -> HashMap<String, String> {
    let Some(map) = filters.payloads.valid() else {
        return HashMap::new();
    };
    map.iter()
        .filter_map(|(key, payload)| {
            let text = match payload {
                Value::Null => return None,
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            Some((key.clone(), text))
        })
        .collect()
}

fn variants(
    multivariate: &Lenient<MultivariateDefinition>,
    payloads: &HashMap<String, String>,
) -> Result<Variants, Malformed> {
    let none = Variants {
        variants: Vec::new(),
        table: Ok(Vec::new()),
    };
    let list = match multivariate {
        Lenient::Valid(mv) => match &mv.variants {
            Lenient::Valid(list) => list,
            Lenient::Invalid(raw) if !truthy(raw) => return Ok(none),
            Lenient::Invalid(_) => return Err(Malformed("the variants are not a list")),
        },
        Lenient::Invalid(raw) if !truthy(raw) => return Ok(none),
        Lenient::Invalid(_) => return Err(Malformed("multivariate is not an object")),
    };
    let mut variants = Vec::with_capacity(list.len());
    let mut table = Ok(Vec::with_capacity(list.len()));
    let mut min = 0.0_f64;
    for (i, def) in list.iter().enumerate() {
        let Lenient::Valid(def) = def else {
            return Err(Malformed("a variant is not an object"));
        };
        let key = match &def.key {
            None => return Err(Malformed("a variant has no key")),
            Some(Value::String(key)) if !key.is_empty() => Some(key.clone()),
            Some(key) if !truthy(key) => None,
            Some(_) => return Err(Malformed("a variant key is not a string")),
        };
        let split = match &def.rollout_percentage {
            Value::Number(n) => n.as_f64(),
            Value::Bool(b) => Some(f64::from(u8::from(*b))),
            _ => None,
        };
        match (split, &mut table) {
            (Some(split), Ok(ranges)) => {
                let max = min + split / 100.0;
                ranges.push(VariantRange {
                    min,
                    max,
                    variant: i,
                });
                min = max;
            }
            (None, _) => table = Err(Malformed("a variant's rollout percentage is not a number")),
            (Some(_), Err(_)) => {}
        }
        variants.push(Variant {
            payload: key.as_ref().and_then(|k| payloads.get(k).cloned()),
            key,
        });
    }
    Ok(Variants { variants, table })
}

fn holdout(holdout: &Lenient<HoldoutDefinition>, payloads: &HashMap<String, String>) -> Holdout {
    let def = match holdout {
        Lenient::Valid(def) => def,
        Lenient::Invalid(raw) if !truthy(raw) => return Holdout::None,
        Lenient::Invalid(_) => {
            return Holdout::Malformed(Malformed("the holdout is not an object"))
        }
    };
    if def.id.is_null() || def.exclusion_percentage.is_null() {
        return Holdout::None;
    }
    let Some(percentage) = py_float(&def.exclusion_percentage) else {
        return Holdout::Malformed(Malformed(
            "the holdout's exclusion percentage is not a number",
        ));
    };
    let Some(id) = py_str(&def.id) else {
        return Holdout::Malformed(Malformed("the holdout's id is not a scalar"));
    };
    // Clamp to [0, 100] as Python's `min(max(p, 0.0), 100.0)` does (NaN stays NaN).
    let percentage = if 0.0 > percentage { 0.0 } else { percentage };
    let percentage = if 100.0 < percentage {
        100.0
    } else {
        percentage
    };
    let value = format!("holdout-{id}");
    Holdout::Some {
        percentage,
        payload: payloads.get(&value).cloned(),
        value,
    }
}

/// A group type index as Python sees it: its `str()` (looked up in the mapping) and its
/// equality (`0 == 0.0 == False`, `"0" != 0`).
#[derive(Clone, Debug, PartialEq)]
pub(super) enum AggIndex {
    Number(f64, String),
    Text(String),
    Other(Value),
}

impl AggIndex {
    fn from_value(raw: &Value) -> Option<AggIndex> {
        Some(match raw {
            Value::Null => return None,
            Value::Bool(b) => AggIndex::Number(f64::from(u8::from(*b)), py_str(raw)?),
            Value::Number(n) => AggIndex::Number(n.as_f64().unwrap_or(f64::NAN), py_str(raw)?),
            Value::String(s) => AggIndex::Text(s.clone()),
            other => AggIndex::Other(other.clone()),
        })
    }

    fn text(&self) -> Option<&str> {
        match self {
            AggIndex::Number(_, text) | AggIndex::Text(text) => Some(text),
            AggIndex::Other(_) => None,
        }
    }

    fn py_eq(a: &Option<AggIndex>, b: &Option<AggIndex>) -> bool {
        match (a, b) {
            (None, None) => true,
            (Some(AggIndex::Number(x, _)), Some(AggIndex::Number(y, _))) => x == y,
            (Some(AggIndex::Text(x)), Some(AggIndex::Text(y))) => x == y,
            (Some(AggIndex::Other(x)), Some(AggIndex::Other(y))) => x == y,
            _ => false,
        }
    }
}

/// Python's `str()` of a JSON scalar (`None`, `True`, `5`, `5.0`, text); `None` for a list or
/// object.
pub(super) fn py_str(value: &Value) -> Option<String> {
    Some(match value {
        Value::Null => "None".to_owned(),
        Value::Bool(true) => "True".to_owned(),
        Value::Bool(false) => "False".to_owned(),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                i.to_string()
            } else if let Some(u) = n.as_u64() {
                u.to_string()
            } else {
                py_float_str(n.as_f64().unwrap_or(f64::NAN))
            }
        }
        Value::String(s) => s.clone(),
        Value::Array(_) | Value::Object(_) => return None,
    })
}

fn py_float_str(f: f64) -> String {
    if f.is_nan() {
        "nan".to_owned()
    } else if f.is_infinite() {
        if f > 0.0 { "inf" } else { "-inf" }.to_owned()
    } else if f.fract() == 0.0 && f.abs() < 1e16 {
        format!("{f:.1}")
    } else {
        format!("{f}")
    }
}

/// Python's `float()` of a JSON value: numbers, booleans and numeric strings.
fn py_float(value: &Value) -> Option<f64> {
    match value {
        Value::Number(n) => n.as_f64(),
        Value::Bool(b) => Some(f64::from(u8::from(*b))),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn compile(defs: Value) -> CompiledFlags {
        CompiledFlags::from_json(defs.to_string().as_bytes()).unwrap()
    }

    #[test]
    fn compiled_flags_are_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<CompiledFlags>();
    }

    #[test]
    fn flags_by_key_last_definition_wins_in_first_place() {
        let flags = compile(json!({
            "flags": [
                {"key": "a", "id": 1, "active": true},
                {"key": "b", "id": 2},
                {"key": 5, "id": 3},
                {"id": 4},
                "junk",
                {"key": "a", "id": 5, "active": false, "has_experiment": true}
            ]
        }));
        assert_eq!(flags.keys().collect::<Vec<_>>(), ["a", "b"]);
        let a = flags.flag("a").unwrap();
        assert_eq!(a.id, Some(5));
        assert!(!a.active);
        assert_eq!(a.has_experiment, Some(true));
        assert_eq!(flags.flag("b").unwrap().has_experiment, None);
        assert!(flags.flag("5").is_none());
        assert_eq!(flags.len(), 2);
    }

    #[test]
    fn variant_table_is_cumulative_in_order() {
        let flags = compile(json!({"flags": [{
            "key": "mv", "active": true,
            "filters": {
                "multivariate": {"variants": [
                    {"key": "a", "rollout_percentage": 50},
                    {"key": "b", "rollout_percentage": 20},
                    {"key": "", "rollout_percentage": 30}
                ]},
                "payloads": {"a": "{\"n\": 1}", "b": 2, "true": "\"on\"", "false": null}
            }
        }]}));
        let flag = flags.flag("mv").unwrap();
        let body = flag.body.as_ref().unwrap();
        let variants = body.variants.as_ref().unwrap();
        let table = variants.table.as_ref().unwrap();
        let ranges: Vec<_> = table.iter().map(|r| (r.min, r.max, r.variant)).collect();
        assert_eq!(ranges, [(0.0, 0.5, 0), (0.5, 0.7, 1), (0.7, 0.7 + 0.3, 2)]);
        assert_eq!(variants.variants[0].payload.as_deref(), Some("{\"n\": 1}"));
        assert_eq!(variants.variants[1].payload.as_deref(), Some("2"));
        assert_eq!(variants.variants[2].key, None);
        assert_eq!(flag.payload_true.as_deref(), Some("\"on\""));
        assert_eq!(flag.payload_false, None);
        assert_eq!(
            flag.payload(&crate::flags::FlagValue::Variant("b".into())),
            Some("2")
        );
    }

    #[test]
    fn malformed_variants_and_splits() {
        let flags = compile(json!({"flags": [
            {"key": "no-key", "filters": {"multivariate": {"variants": [{"rollout_percentage": 10}]}}},
            {"key": "number-key", "filters": {"multivariate": {"variants": [{"key": 1, "rollout_percentage": 10}]}}},
            {"key": "bad-split", "filters": {"multivariate": {"variants": [{"key": "a", "rollout_percentage": "10"}]}}},
            {"key": "not-list", "filters": {"multivariate": {"variants": {"a": 1}}}},
            {"key": "empty", "filters": {"multivariate": {"variants": {}}}}
        ]}));
        let variants = |key: &str| {
            let flag = flags.flag(key).unwrap();
            let body = flag.body.as_ref().unwrap();
            match &body.variants {
                Ok(v) => Ok(v.table.is_ok()),
                Err(e) => Err(*e),
            }
        };
        assert!(variants("no-key").is_err());
        assert!(variants("number-key").is_err());
        assert_eq!(variants("bad-split"), Ok(false));
        assert!(variants("not-list").is_err());
        assert_eq!(variants("empty"), Ok(true));
    }

    #[test]
    fn group_lookups_and_mixed_targeting_scopes() {
        let flags = compile(json!({
            "flags": [{
                "key": "g", "active": true,
                "filters": {
                    "aggregation_group_type_index": 0,
                    "groups": [
                        {"rollout_percentage": 100},
                        {"aggregation_group_type_index": 0.0},
                        {"aggregation_group_type_index": null},
                        {"aggregation_group_type_index": 1},
                        {"aggregation_group_type_index": "0"},
                        {"aggregation_group_type_index": 2},
                        {"aggregation_group_type_index": 3}
                    ]
                }
            }],
            "group_type_mapping": {"0": "company", "1": "team", "2": "", "3": 7}
        }));
        let body = flags.flag("g").unwrap().body.as_ref().unwrap();
        assert!(matches!(&body.scope, FlagScope::Group(GroupLookup::Name(n)) if n == "company"));
        let scopes: Vec<Option<GroupLookup>> = body
            .conditions
            .as_ref()
            .unwrap()
            .iter()
            .map(|c| match &c.as_ref().unwrap().scope {
                ConditionScope::Flag => None,
                ConditionScope::Group(lookup) => Some(lookup.clone()),
            })
            .collect();
        assert_eq!(
            scopes,
            [
                None,
                None,
                None,
                Some(GroupLookup::Name("team".into())),
                Some(GroupLookup::Name("company".into())),
                Some(GroupLookup::Unknown),
                Some(GroupLookup::NeverPassed),
            ]
        );
    }

    #[test]
    fn malformed_mapping_and_filters() {
        let flags = compile(json!({
            "flags": [
                {"key": "g", "filters": {"aggregation_group_type_index": 0}},
                {"key": "bad-filters", "filters": [1]},
                {"key": "falsy-filters", "filters": []}
            ],
            "group_type_mapping": ["company"]
        }));
        let body = flags.flag("g").unwrap().body.as_ref().unwrap();
        assert!(matches!(
            body.scope,
            FlagScope::Group(GroupLookup::MappingMalformed)
        ));
        assert!(flags.flag("bad-filters").unwrap().body.is_err());
        let falsy = flags.flag("falsy-filters").unwrap().body.as_ref().unwrap();
        assert!(matches!(falsy.scope, FlagScope::Person));
    }

    #[test]
    fn holdouts_compile_like_python() {
        let holdout = |raw: Value| {
            let flags = compile(json!({"flags": [{
                "key": "h",
                "filters": {"holdout": raw, "payloads": {"holdout-7": "1"}}
            }]}));
            let flag = flags.flag("h").unwrap();
            match &flag.body.as_ref().unwrap().holdout {
                Holdout::None => "none".to_owned(),
                Holdout::Malformed(_) => "malformed".to_owned(),
                Holdout::Some {
                    percentage,
                    value,
                    payload,
                } => format!("{percentage} {value} {payload:?}"),
            }
        };
        assert_eq!(holdout(json!(null)), "none");
        assert_eq!(holdout(json!({})), "none");
        assert_eq!(holdout(json!({"id": 7})), "none");
        assert_eq!(holdout(json!(5)), "malformed");
        assert_eq!(
            holdout(json!({"id": 7, "exclusion_percentage": 10})),
            "10 holdout-7 Some(\"1\")"
        );
        assert_eq!(
            holdout(json!({"id": "x", "exclusion_percentage": "150"})),
            "100 holdout-x None"
        );
        assert_eq!(
            holdout(json!({"id": 7.0, "exclusion_percentage": -5})),
            "0 holdout-7.0 None"
        );
        assert_eq!(
            holdout(json!({"id": 7, "exclusion_percentage": "ten"})),
            "malformed"
        );
        assert_eq!(
            holdout(json!({"id": [7], "exclusion_percentage": 1})),
            "malformed"
        );
    }

    #[test]
    fn python_str_of_scalars() {
        assert_eq!(py_str(&json!(5)).as_deref(), Some("5"));
        assert_eq!(py_str(&json!(5.0)).as_deref(), Some("5.0"));
        assert_eq!(py_str(&json!(2.5)).as_deref(), Some("2.5"));
        assert_eq!(py_str(&json!(true)).as_deref(), Some("True"));
        assert_eq!(py_str(&json!(null)).as_deref(), Some("None"));
        assert_eq!(py_str(&json!("7")).as_deref(), Some("7"));
        assert_eq!(py_str(&json!([7])), None);
    }

    #[test]
    fn dependencies_and_cohorts_compile() {
        let flags = compile(json!({
            "flags": [
                {"key": "base"},
                {"key": "dep", "filters": {"groups": [{"properties": [
                    {"type": "flag", "key": "base", "operator": "flag_evaluates_to", "value": true, "dependency_chain": ["base", "gone", 3, ["x"]]},
                    {"type": "flag", "key": "base", "value": true, "dependency_chain": ["base"]},
                    {"type": "flag", "key": "base", "operator": "flag_evaluates_to", "value": false, "dependency_chain": []},
                    {"type": "flag", "key": "", "operator": "flag_evaluates_to", "value": true, "dependency_chain": ["base"]},
                    {"type": "cohort", "key": "id", "value": 1},
                    {"type": "cohort", "key": "id", "value": "2", "operator": "not_in"},
                    {"type": "cohort", "key": "id", "value": 1, "operator": "gt"},
                    7
                ]}]}}
            ],
            "cohorts": {"1": {}, "2": {"type": "OR", "values": [{"key": "a", "value": 1}]}}
        }));
        let body = flags.flag("dep").unwrap().body.as_ref().unwrap();
        let conditions = body.conditions.as_ref().unwrap();
        let filters = &conditions[0].as_ref().unwrap().filters;
        match &filters[0] {
            Filter::Flag(FlagDependency::Chain {
                chain,
                target,
                expected,
            }) => {
                assert!(matches!(chain[0], ChainItem::Flag(0)));
                assert!(matches!(&chain[1], ChainItem::Missing(k) if k == "gone"));
                assert!(matches!(&chain[2], ChainItem::Missing(k) if k == "\u{0}3"));
                assert!(matches!(chain[3], ChainItem::Unhashable));
                assert_eq!(*target, Some(0));
                assert!(matches!(expected, Expected::Bool(true)));
            }
            _ => panic!("expected a dependency"),
        }
        assert!(matches!(
            filters[1],
            Filter::Flag(FlagDependency::Malformed)
        ));
        assert!(matches!(filters[2], Filter::Flag(FlagDependency::NoChain)));
        assert!(matches!(
            filters[3],
            Filter::Flag(FlagDependency::Malformed)
        ));
        let cohort = |i: usize| match &filters[i] {
            Filter::Cohort(c) => (c.target.map(|t| flags.cohorts.len() > t), c.operator),
            _ => panic!("expected a cohort"),
        };
        assert_eq!(cohort(4), (Some(true), CohortOperator::In));
        assert_eq!(cohort(5), (Some(true), CohortOperator::NotIn));
        assert_eq!(cohort(6), (Some(true), CohortOperator::Unsupported));
        assert!(matches!(filters[7], Filter::Malformed(_)));
        assert_eq!(flags.cohorts.len(), 2);
    }
}
