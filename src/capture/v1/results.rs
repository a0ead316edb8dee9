//! What a capture v1 answer says about each event.

use std::{borrow::Cow, collections::HashMap, fmt, sync::Arc, time::Duration};

use serde::Deserialize;
use uuid::Uuid;

use crate::BoxError;

/// The answer of one capture v1 request (or, from [`V1RetryPolicy`](super::V1RetryPolicy),
/// of all the attempts at one batch): the events PostHog did not accept, and those it asked
/// to send again. Every other event of the batch was accepted (`ok`).
///
/// # Example
///
/// ```
/// use posthog_tower::capture::EventResults;
///
/// let results = EventResults::default();
/// assert!(results.refused().is_empty() && results.to_retry().is_empty());
/// ```
#[derive(Debug, Clone, Default)]
pub struct EventResults {
    pub(crate) refused: Vec<(Uuid, EventRefused)>,
    pub(crate) retry: Vec<Uuid>,
    pub(crate) retry_after: Option<Duration>,
}

impl EventResults {
    /// The events PostHog will not take (`drop`, `limited`, an unknown result, or `retry` once
    /// no retry is left), with why.
    pub fn refused(&self) -> &[(Uuid, EventRefused)] {
        &self.refused
    }

    /// The events PostHog asked to send again (`retry`).
    pub fn to_retry(&self) -> &[Uuid] {
        &self.retry
    }

    /// The answer's `Retry-After`, if it had one.
    pub fn retry_after(&self) -> Option<Duration> {
        self.retry_after
    }

    /// Parses a 200 answer's body: `{"results": {"<uuid>": {"result": "ok", …}, …}}`. A
    /// body that is not that shape, or an event it does not name, counts as accepted: the
    /// status is PostHog's acknowledgement.
    pub(crate) fn parse(body: &[u8], retry_after: Option<Duration>) -> EventResults {
        #[derive(Deserialize)]
        struct Answer<'a> {
            #[serde(borrow, default)]
            results: HashMap<Cow<'a, str>, Entry<'a>>,
        }
        #[derive(Deserialize)]
        struct Entry<'a> {
            #[serde(borrow)]
            result: Cow<'a, str>,
            #[serde(default)]
            details: Option<serde_json::Value>,
        }
        let mut out = EventResults {
            retry_after,
            ..EventResults::default()
        };
        if all_ok(body) {
            return out;
        }
        let answer: Answer<'_> = match serde_json::from_slice(body) {
            Ok(answer) => answer,
            Err(e) => {
                tracing::debug!(error = %e, "posthog: v1 answer without per-event results");
                return out;
            }
        };
        for (uuid, entry) in answer.results {
            if entry.result == "ok" {
                continue;
            }
            let Ok(uuid) = Uuid::parse_str(&uuid) else {
                continue;
            };
            if entry.result == "retry" {
                out.retry.push(uuid);
            } else {
                let details = entry.details.map(|d| match d {
                    serde_json::Value::String(s) => s,
                    other => other.to_string(),
                });
                out.refused
                    .push((uuid, EventRefused::new(&entry.result, details)));
            }
        }
        out
    }
}

/// Whether every `"result":` key of `body` is followed by `"ok"`: the usual answer, told
/// without parsing it. Inside a JSON string a quote is escaped, so the pattern can only be a
/// key; any other result (or one written with spaces) fails the test and the body is parsed.
fn all_ok(body: &[u8]) -> bool {
    const KEY: &str = r#""result":"#;
    let Ok(text) = std::str::from_utf8(body) else {
        return false;
    };
    text.match_indices(KEY)
        .all(|(at, _)| text[at + KEY.len()..].starts_with(r#""ok""#))
}

/// PostHog refused one event of a capture v1 batch: its per-event result was not `ok`. The
/// error [`on_error`](crate::PostHogBuilder::on_error) receives for such events.
///
/// # Example
///
/// ```
/// use posthog_tower::{capture::EventRefused, BoxError};
///
/// fn refused_as(error: &BoxError) -> Option<&str> {
///     error.downcast_ref::<EventRefused>().map(|e| e.result())
/// }
/// # let _ = refused_as;
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventRefused {
    result: Arc<str>,
    details: Option<Arc<str>>,
}

impl EventRefused {
    pub(crate) fn new(result: &str, details: Option<String>) -> Self {
        EventRefused {
            result: result.into(),
            details: details.map(Into::into),
        }
    }

    /// PostHog's result: `drop`, `limited`, `retry` (no retry was left), or a result this
    /// version does not know.
    pub fn result(&self) -> &str {
        &self.result
    }

    /// PostHog's `details`, if it gave any.
    pub fn details(&self) -> Option<&str> {
        self.details.as_deref()
    }
}

impl fmt::Display for EventRefused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PostHog refused the event: {}", self.result)?;
        if let Some(details) = &self.details {
            write!(f, " ({details})")?;
        }
        Ok(())
    }
}

impl std::error::Error for EventRefused {}

/// A capture v1 batch failed (`source`: a final status, a timeout, no retry left) after
/// PostHog had already settled some of its events on earlier attempts: the
/// [`Batch`](crate::capture::Batch) worker counts the events of `failed` as failed with
/// `source`, those of `refused` as refused, and the rest as delivered.
///
/// # Example
///
/// ```
/// use posthog_tower::{capture::V1Failure, BoxError};
///
/// fn failed_events(error: &BoxError) -> usize {
///     error.downcast_ref::<V1Failure>().map_or(0, |f| f.failed().len())
/// }
/// # let _ = failed_events;
/// ```
#[derive(Debug)]
pub struct V1Failure {
    pub(crate) refused: Vec<(Uuid, EventRefused)>,
    pub(crate) failed: Arc<[Uuid]>,
    pub(crate) source: BoxError,
}

impl V1Failure {
    /// The events refused one by one on earlier attempts.
    pub fn refused(&self) -> &[(Uuid, EventRefused)] {
        &self.refused
    }

    /// The events the last attempt carried, which failed with the source error.
    pub fn failed(&self) -> &Arc<[Uuid]> {
        &self.failed
    }
}

impl fmt::Display for V1Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.source, f)
    }
}

impl std::error::Error for V1Failure {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.source)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_per_event_results() {
        let (a, b, c, d) = (
            Uuid::from_u128(1),
            Uuid::from_u128(2),
            Uuid::from_u128(3),
            Uuid::from_u128(4),
        );
        let body = format!(
            r#"{{"results":{{"{a}":{{"result":"ok"}},"{b}":{{"result":"retry"}},"{c}":{{"result":"drop","details":"bad"}},"{d}":{{"result":"novel","details":{{"x":1}}}}}}}}"#
        );
        let mut r = EventResults::parse(body.as_bytes(), Some(Duration::from_secs(1)));
        r.refused.sort_by_key(|(u, _)| *u);
        assert_eq!(r.retry, vec![b]);
        assert_eq!(r.retry_after, Some(Duration::from_secs(1)));
        assert_eq!(
            r.refused[0],
            (c, EventRefused::new("drop", Some("bad".into())))
        );
        assert_eq!(r.refused[1].1.result(), "novel");
        assert_eq!(r.refused[1].1.details(), Some(r#"{"x":1}"#));
        assert_eq!(
            r.refused[0].1.to_string(),
            "PostHog refused the event: drop (bad)"
        );
        let empty = EventResults::parse(b"{\"status\":1}", None);
        assert!(empty.refused.is_empty() && empty.retry.is_empty());
        assert!(EventResults::parse(b"not json", None).refused.is_empty());
        assert!(all_ok(
            br#"{"results":{"a":{"result":"ok"},"b":{"result":"ok"}}}"#
        ));
        assert!(!all_ok(
            br#"{"results":{"a":{"result":"ok"},"b":{"result": "ok"}}}"#
        ));
        assert!(!all_ok(br#"{"results":{"a":{"result":"okay"}}}"#));
        assert!(!all_ok(
            br#"{"results":{"a":{"result":"drop","details":""result":"ok""}}}"#
        ));
    }
}
