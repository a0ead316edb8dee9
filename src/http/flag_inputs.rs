//! What a request's flags are evaluated with besides the caller: [`FlagInputs`] from
//! [`PostHogLayer::flag_properties`](super::PostHogLayer::flag_properties), and the anonymous
//! visitor's identity from the posthog-js cookie.

use std::{collections::BTreeMap, fmt};

use serde::Serialize;
use serde_json::{Map, Value};

use super::{identity::MakeDistinctId, RequestHead};
use crate::flags::FlagsRequest;

/// Person properties, groups and group properties for one request's
/// [`RequestFlags`](super::RequestFlags), so that local evaluation can decide flags that
/// target a plan, a country or a company without asking `/flags`. Made per request by
/// [`PostHogLayer::flag_properties`](super::PostHogLayer::flag_properties).
///
/// ```
/// use posthog_tower::http::FlagInputs;
///
/// let inputs = FlagInputs::new()
///     .person_property("plan", "pro")
///     .group("company", "acme")
///     .group_property("company", "employees", 40);
/// assert!(!inputs.is_empty());
/// assert!(FlagInputs::new().is_empty());
/// ```
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FlagInputs {
    person_properties: Map<String, Value>,
    groups: BTreeMap<String, String>,
    group_properties: BTreeMap<String, Map<String, Value>>,
}

impl FlagInputs {
    /// No properties and no groups.
    pub fn new() -> Self {
        FlagInputs::default()
    }

    /// Adds a person property (a value JSON cannot represent, such as `NaN`, is left out).
    #[must_use]
    pub fn person_property(mut self, key: impl Into<String>, value: impl Serialize) -> Self {
        if let Ok(value) = crate::event::to_property_value(value) {
            self.person_properties.insert(key.into(), value);
        }
        self
    }

    /// Puts the caller in group `group_key` of type `group_type`.
    #[must_use]
    pub fn group(mut self, group_type: impl Into<String>, group_key: impl Into<String>) -> Self {
        self.groups.insert(group_type.into(), group_key.into());
        self
    }

    /// Adds a property of the caller's group of type `group_type` (a value JSON cannot
    /// represent is left out).
    #[must_use]
    pub fn group_property(
        mut self,
        group_type: impl Into<String>,
        key: impl Into<String>,
        value: impl Serialize,
    ) -> Self {
        crate::flags::put_group_property(&mut self.group_properties, group_type, key, value);
        self
    }

    /// Whether there is nothing to add.
    pub fn is_empty(&self) -> bool {
        self.person_properties.is_empty()
            && self.groups.is_empty()
            && self.group_properties.is_empty()
    }

    /// `request` with these inputs added.
    pub(crate) fn apply(&self, mut request: FlagsRequest) -> FlagsRequest {
        if !self.person_properties.is_empty() {
            request = request.person_properties(self.person_properties.clone());
        }
        for (group_type, key) in &self.groups {
            request = request.group(group_type.clone(), key.clone());
        }
        for (group_type, properties) in &self.group_properties {
            request = request.group_properties(group_type.clone(), properties.clone());
        }
        request
    }
}

/// Makes the [`FlagInputs`] of each request, for
/// [`PostHogLayer::flag_properties`](super::PostHogLayer::flag_properties). Implemented for
/// closures `Fn(&RequestHead<'_>) -> FlagInputs`; called once per request that goes through
/// the layer, before the handler runs, so keep it cheap (read what earlier middleware put in
/// the extensions, a header; no I/O).
///
/// ```
/// use posthog_tower::http::{FlagInputs, MakeFlagInputs, RequestHead};
///
/// #[derive(Clone)]
/// struct Account {
///     plan: &'static str,
///     company: &'static str,
/// }
///
/// struct FromAccount;
///
/// impl MakeFlagInputs for FromAccount {
///     fn make_flag_inputs(&self, request: &RequestHead<'_>) -> FlagInputs {
///         match request.extensions().get::<Account>() {
///             Some(account) => FlagInputs::new()
///                 .person_property("plan", account.plan)
///                 .group("company", account.company),
///             None => FlagInputs::new(),
///         }
///     }
/// }
/// # fn check(_: impl MakeFlagInputs) {}
/// # check(FromAccount);
/// ```
pub trait MakeFlagInputs: Send + Sync + 'static {
    /// The inputs of the flags of `request`'s caller.
    fn make_flag_inputs(&self, request: &RequestHead<'_>) -> FlagInputs;
}

impl<F> MakeFlagInputs for F
where
    F: Fn(&RequestHead<'_>) -> FlagInputs + Send + Sync + 'static,
{
    fn make_flag_inputs(&self, request: &RequestHead<'_>) -> FlagInputs {
        self(request)
    }
}

/// The layer's maker of inputs, shared by every request.
#[derive(Clone)]
pub(crate) struct SharedFlagInputs(pub(crate) std::sync::Arc<dyn MakeFlagInputs>);

impl fmt::Debug for SharedFlagInputs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MakeFlagInputs")
    }
}

/// The layer's resolver, falling back to the anonymous distinct id of the posthog-js cookie
/// when it knows no caller: a logged-out visitor of an app whose resolver knows only its
/// users is then the same anonymous person for the app's flags and events as for
/// posthog-js (and its device id buckets device-bucketed flags, as in the browser).
pub(crate) struct OrAnonymousCookie<'m, M>(pub(crate) &'m mut M);

impl<M: MakeDistinctId> MakeDistinctId for OrAnonymousCookie<'_, M> {
    #[inline]
    fn make_distinct_id(&mut self, request: &RequestHead<'_>) -> Option<String> {
        self.0.make_distinct_id(request).or_else(|| {
            request
                .posthog_cookie()
                .and_then(|cookie| cookie.distinct_id().map(str::to_owned))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn inputs_are_added_to_the_request() {
        let inputs = FlagInputs::new()
            .person_property("plan", "pro")
            .person_property("bad", f64::NAN)
            .group("company", "acme")
            .group_property("company", "employees", 40);
        let request = inputs.apply(FlagsRequest::new("u").device_id("d"));
        assert_eq!(
            request.person_properties_map().get("plan"),
            Some(&json!("pro"))
        );
        assert!(request.person_properties_map().get("bad").is_none());
        assert_eq!(
            request.groups().get("company").map(String::as_str),
            Some("acme")
        );
        assert_eq!(
            request.group_properties_map()["company"].get("employees"),
            Some(&json!(40))
        );
        assert_eq!(request.device_id_value(), Some("d"));
    }

    #[test]
    fn the_cookie_names_a_caller_the_resolver_does_not_know() {
        let cookie = "ph_phc_k_posthog=%7B%22distinct_id%22%3A%22anon-1%22%2C%22%24device_id%22%3A%22dev-1%22%7D";
        let request = http::Request::builder()
            .header("cookie", cookie)
            .body(())
            .unwrap();
        let head = RequestHead::new(&request, "ph_phc_k_posthog");
        let mut nobody = |_: &RequestHead<'_>| None::<String>;
        assert_eq!(
            OrAnonymousCookie(&mut nobody).make_distinct_id(&head),
            Some("anon-1".to_owned())
        );
        let mut user = |_: &RequestHead<'_>| Some("user-7".to_owned());
        assert_eq!(
            OrAnonymousCookie(&mut user).make_distinct_id(&head),
            Some("user-7".to_owned())
        );
        let bare = http::Request::new(());
        let head = RequestHead::new(&bare, "ph_phc_k_posthog");
        assert_eq!(OrAnonymousCookie(&mut nobody).make_distinct_id(&head), None);
    }
}
