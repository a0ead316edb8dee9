//! Evaluation environments in local evaluation: which flags a client configured with
//! [`PostHogBuilder::evaluation_environments`](crate::PostHogBuilder::evaluation_environments)
//! may decide in-process.
//!
//! PostHog evaluates, for a `/flags` request naming environments, only the flags with no
//! evaluation tags or with at least one tag among those environments; the others are left out
//! of the answer (posthog-js PR #2369, posthog-node PR #2417). The definitions say which tags a
//! flag has in `evaluation_tags`. Locally:
//!
//! * no `evaluation_tags` (absent, `null` or `[]`): the flag is evaluated;
//! * a list of tag names: evaluated when one of them is a configured environment, otherwise
//!   left out, as PostHog would;
//! * anything else (the definitions say the flag is restricted but not to which
//!   environments in a form we can read): inconclusive, so `/flags` decides.
//!
//! A client without environments evaluates every flag, as PostHog does for a request without
//! them.

use serde_json::Value;

/// A flag's evaluation tags, as compiled from its definition.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) enum EvaluationTags {
    /// No restriction.
    #[default]
    Untagged,
    /// Evaluated only for clients with one of these environments.
    Tags(Box<[String]>),
    /// Restricted, but the definitions do not say to which environments in a readable form.
    Unknown,
}

/// What a client's environments make of one flag.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Admission {
    /// Evaluate it.
    Evaluate,
    /// PostHog would leave it out of the answer.
    Excluded,
    /// Ask PostHog.
    Inconclusive,
}

impl EvaluationTags {
    /// The tags of the definition's raw `evaluation_tags`.
    pub(crate) fn compile(raw: &Value) -> Self {
        match raw {
            Value::Null => EvaluationTags::Untagged,
            Value::Array(items) if items.is_empty() => EvaluationTags::Untagged,
            Value::Array(items) => items
                .iter()
                .map(|item| item.as_str().map(str::to_owned))
                .collect::<Option<Box<[String]>>>()
                .map_or(EvaluationTags::Unknown, EvaluationTags::Tags),
            _ => EvaluationTags::Unknown,
        }
    }

    /// Whether a client with `environments` (none configured: `None` or empty) evaluates
    /// the flag.
    pub(crate) fn admits(&self, environments: Option<&[String]>) -> Admission {
        let environments = match environments {
            Some(environments) if !environments.is_empty() => environments,
            _ => return Admission::Evaluate,
        };
        match self {
            EvaluationTags::Untagged => Admission::Evaluate,
            EvaluationTags::Tags(tags) if tags.iter().any(|t| environments.contains(t)) => {
                Admission::Evaluate
            }
            EvaluationTags::Tags(_) => Admission::Excluded,
            EvaluationTags::Unknown => Admission::Inconclusive,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn envs(names: &[&str]) -> Vec<String> {
        names.iter().map(|n| (*n).to_owned()).collect()
    }

    #[test]
    fn tags_decide_only_when_they_are_readable_and_environments_are_set() {
        let production = envs(&["production", "backend"]);
        let tagged = EvaluationTags::compile(&json!(["production", "web"]));
        assert_eq!(tagged.admits(Some(&production)), Admission::Evaluate);
        assert_eq!(
            tagged.admits(Some(&envs(&["staging"]))),
            Admission::Excluded
        );
        // No environments: every flag, as PostHog evaluates them all.
        assert_eq!(tagged.admits(None), Admission::Evaluate);
        assert_eq!(tagged.admits(Some(&[])), Admission::Evaluate);

        for untagged in [json!(null), json!([])] {
            let tags = EvaluationTags::compile(&untagged);
            assert_eq!(tags, EvaluationTags::Untagged);
            assert_eq!(tags.admits(Some(&production)), Admission::Evaluate);
        }
        for unreadable in [json!(true), json!("production"), json!([1]), json!({})] {
            let tags = EvaluationTags::compile(&unreadable);
            assert_eq!(tags, EvaluationTags::Unknown, "{unreadable}");
            assert_eq!(tags.admits(Some(&production)), Admission::Inconclusive);
            assert_eq!(tags.admits(None), Admission::Evaluate);
        }
        // Tag names compare exactly, as PostHog's do.
        let upper = EvaluationTags::compile(&json!(["Production"]));
        assert_eq!(upper.admits(Some(&production)), Admission::Excluded);
    }
}
