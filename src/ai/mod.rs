//! LLM analytics: typed `$ai_generation`, `$ai_embedding`, `$ai_span` and `$ai_trace` events
//! for [`PostHog::capture_ai`](crate::PostHog::capture_ai).
//!
//! PostHog's LLM analytics reads a fixed set of properties (`$ai_trace_id`, `$ai_model`,
//! `$ai_provider`, `$ai_input_tokens`, `$ai_latency`, …; the names and units are those of
//! posthog-python's `ai` package). Each type here writes them from typed setters, so a
//! misspelt key or a latency in the wrong unit cannot happen:
//!
//! | type | event | for |
//! |---|---|---|
//! | [`Generation`] | `$ai_generation` | one call to a model that generates (chat, completion, responses) |
//! | [`Embedding`] | `$ai_embedding` | one call to an embedding model |
//! | [`Span`] | `$ai_span` | one step of a trace (a tool call, a retrieval, an agent step) |
//! | [`Trace`] | `$ai_trace` | a whole trace: the request the generations and spans belong to |
//!
//! Every event belongs to a trace (`$ai_trace_id`, given to `new`) and is done by its
//! [`distinct_id`](Generation::distinct_id), or else by the current request context's
//! caller, like [`Event::named`] (personless outside a request).
//!
//! # Privacy mode
//!
//! Inputs and outputs (`$ai_input`, `$ai_output_choices`, `$ai_input_state`,
//! `$ai_output_state`) can hold personal data. [`Generation::privacy_mode`] (on each type)
//! leaves them out of one event;
//! [`PostHogBuilder::ai_privacy_mode`](crate::PostHogBuilder::ai_privacy_mode) leaves them
//! out of every event `capture_ai` sends.
//!
//! # Example
//!
//! ```no_run
//! use std::time::Duration;
//! use posthog_tower::{ai::{Generation, Trace}, PostHog};
//! use serde_json::json;
//!
//! # async fn f(posthog: PostHog) -> Result<(), posthog_tower::CaptureError> {
//! posthog.capture_ai(
//!     Generation::new("trace-7")
//!         .distinct_id("user-42")
//!         .provider("openai")
//!         .model("gpt-4o-mini")
//!         .base_url("https://api.openai.com/v1")
//!         .input(json!([{"role": "user", "content": "Hello"}]))
//!         .output_choices(json!([{"role": "assistant", "content": "Hi!"}]))
//!         .input_tokens(9)
//!         .output_tokens(3)
//!         .latency(Duration::from_millis(420))
//!         .http_status(200),
//! )?;
//! posthog.capture_ai(Trace::new("trace-7").distinct_id("user-42").name("greeting"))?;
//! # Ok(())
//! # }
//! ```

use std::time::Duration;

use bytes::Bytes;
use serde::Serialize;

use crate::Event;

/// The properties privacy mode leaves out: the inputs and outputs of LLM calls and spans.
pub(crate) const CONTENT_KEYS: [&str; 5] = [
    "$ai_input",
    "$ai_output_choices",
    "$ai_input_state",
    "$ai_output_state",
    "$ai_instructions",
];

/// Removes the [`CONTENT_KEYS`] from `event`.
pub(crate) fn remove_content(event: &mut Event) {
    for key in CONTENT_KEYS {
        event.remove(key);
    }
}

/// What every typed AI event holds: the event being built, its distinct id, its content
/// (kept apart until the end, for privacy mode), and privacy mode.
#[derive(Debug, Clone)]
struct Parts {
    event: Event,
    distinct_id: Option<String>,
    content: Vec<(&'static str, Content)>,
    privacy_mode: bool,
}

/// An input or output, serialized already (set only if privacy mode allows).
#[derive(Debug, Clone)]
enum Content {
    /// Written by the property writer, with its checks.
    Checked(Vec<u8>),
    /// JSON text `serde_json` parsed (a slice of an LLM call's body), not yet compacted.
    Raw(Bytes),
}

impl Parts {
    fn new(name: &str, trace_id: &str) -> Self {
        Parts {
            event: Event::named(name).property("$ai_trace_id", trace_id),
            distinct_id: None,
            content: Vec::new(),
            privacy_mode: false,
        }
    }

    /// Sets a property; a value JSON cannot represent is remembered as the event's error,
    /// which `capture_ai` returns, as [`Event::property`] does.
    fn set(&mut self, key: &str, value: impl Serialize) {
        if let Err(e) = self.event.insert(key, value) {
            self.event
                .inner
                .error
                .get_or_insert(Box::new((key.to_owned(), e)));
        }
    }

    fn content(&mut self, key: &'static str, value: impl Serialize) {
        let mut json = Vec::new();
        let result = crate::event::write_property(&mut json, &value);
        match result {
            Ok(()) => self.set_content(key, Content::Checked(json)),
            // Recorded as the event's error (content or not, the event is refused).
            Err(_) => self.set(key, value),
        }
    }

    fn set_content(&mut self, key: &'static str, content: Content) {
        self.content.retain(|(k, _)| *k != key);
        self.content.push((key, content));
    }

    fn into_event(self) -> Event {
        let mut event = self.event;
        if let Some(id) = &self.distinct_id {
            event.inner.set_distinct_id(Some(id));
            event.inner.inherits_distinct_id = false;
        }
        if !self.privacy_mode {
            for (key, content) in self.content {
                let json = match &content {
                    Content::Checked(json) => json.as_slice(),
                    Content::Raw(json) => json,
                };
                if let Err(e) = event.insert_json(key, json) {
                    event
                        .inner
                        .error
                        .get_or_insert(Box::new((key.to_owned(), e)));
                }
            }
        }
        event
    }
}

/// The setters all four types share.
macro_rules! common_setters {
    ($ty:ident) => {
        impl $ty {
            /// Who made the call; without it, the current request context's caller (or
            /// personless outside a request).
            pub fn distinct_id(mut self, distinct_id: impl Into<String>) -> Self {
                self.0.distinct_id = Some(distinct_id.into());
                self
            }

            /// `$ai_span_id`: this event's id within its trace.
            pub fn span_id(mut self, span_id: impl AsRef<str>) -> Self {
                self.0.set("$ai_span_id", span_id.as_ref());
                self
            }

            /// `$ai_parent_id`: the span (or trace) this event belongs to.
            pub fn parent_id(mut self, parent_id: impl AsRef<str>) -> Self {
                self.0.set("$ai_parent_id", parent_id.as_ref());
                self
            }

            /// `$ai_latency`, sent in seconds.
            pub fn latency(mut self, latency: Duration) -> Self {
                self.0.set("$ai_latency", latency.as_secs_f64());
                self
            }

            /// `$ai_is_error`: whether the call or step failed.
            pub fn is_error(mut self, is_error: bool) -> Self {
                self.0.set("$ai_is_error", is_error);
                self
            }

            /// `$ai_error` (the error, as text or structured), and `$ai_is_error: true`.
            pub fn error(mut self, error: impl Serialize) -> Self {
                self.0.set("$ai_error", error);
                self.0.set("$ai_is_error", true);
                self
            }

            /// Any other property, e.g. `$ai_session_id` or one of your own.
            pub fn property(mut self, key: impl AsRef<str>, value: impl Serialize) -> Self {
                self.0.set(key.as_ref(), value);
                self
            }

            /// Leaves this event's inputs and outputs out (off).
            pub fn privacy_mode(mut self, enabled: bool) -> Self {
                self.0.privacy_mode = enabled;
                self
            }

            /// The [`Event`] this becomes (what `capture_ai` sends).
            pub fn into_event(self) -> Event {
                self.0.into_event()
            }
        }

        impl From<$ty> for Event {
            fn from(event: $ty) -> Event {
                event.into_event()
            }
        }
    };
}

/// The setters of calls to a model ([`Generation`], [`Embedding`]).
macro_rules! call_setters {
    ($ty:ident) => {
        impl $ty {
            /// `$ai_provider`, e.g. `openai`, `anthropic`.
            pub fn provider(mut self, provider: impl AsRef<str>) -> Self {
                self.0.set("$ai_provider", provider.as_ref());
                self
            }

            /// `$ai_model`, e.g. `gpt-4o-mini`.
            pub fn model(mut self, model: impl AsRef<str>) -> Self {
                self.0.set("$ai_model", model.as_ref());
                self
            }

            /// `$ai_input_tokens`. Leave it unset when the provider did not report it:
            /// absent means unknown, 0 means none.
            pub fn input_tokens(mut self, tokens: u64) -> Self {
                self.0.set("$ai_input_tokens", tokens);
                self
            }

            /// `$ai_http_status` of the provider's answer.
            pub fn http_status(mut self, status: u16) -> Self {
                self.0.set("$ai_http_status", status);
                self
            }

            /// `$ai_base_url`: the API the call went to, e.g. `https://api.openai.com/v1`.
            pub fn base_url(mut self, base_url: impl AsRef<str>) -> Self {
                self.0.set("$ai_base_url", base_url.as_ref());
                self
            }

            /// `$ai_input`: what the model was given (for chat, the messages). Left out in
            /// privacy mode.
            pub fn input(mut self, input: impl Serialize) -> Self {
                self.0.content("$ai_input", input);
                self
            }

            /// [`input`](Self::input) from JSON text `serde_json` parsed (validated), copied
            /// as it is into the event.
            pub(crate) fn input_json(mut self, input: Bytes) -> Self {
                self.0.set_content("$ai_input", Content::Raw(input));
                self
            }
        }
    };
}

/// An `$ai_generation` event: one call to a generative model.
///
/// ```
/// use std::time::Duration;
/// use posthog_tower::ai::Generation;
///
/// let event = Generation::new("trace-1")
///     .provider("anthropic")
///     .model("claude-sonnet-4")
///     .input_tokens(120)
///     .output_tokens(310)
///     .latency(Duration::from_millis(1500))
///     .into_event();
/// assert_eq!(event.name(), "$ai_generation");
/// assert_eq!(event.properties().get("$ai_latency"), Some(serde_json::json!(1.5)));
/// ```
#[derive(Debug, Clone)]
#[must_use]
pub struct Generation(Parts);

impl Generation {
    /// A generation in the trace `trace_id` (`$ai_trace_id`).
    pub fn new(trace_id: impl AsRef<str>) -> Self {
        Generation(Parts::new("$ai_generation", trace_id.as_ref()))
    }

    /// `$ai_output_tokens`. Leave it unset when the provider did not report it.
    pub fn output_tokens(mut self, tokens: u64) -> Self {
        self.0.set("$ai_output_tokens", tokens);
        self
    }

    /// `$ai_output_choices`: what the model answered (for chat, the messages). Left out in
    /// privacy mode.
    pub fn output_choices(mut self, output: impl Serialize) -> Self {
        self.0.content("$ai_output_choices", output);
        self
    }

    /// `$ai_model_parameters`: temperature, max tokens, streaming, …
    pub fn model_parameters(mut self, parameters: impl Serialize) -> Self {
        self.0.set("$ai_model_parameters", parameters);
        self
    }

    /// [`output_choices`](Self::output_choices) from JSON text `serde_json` parsed or the
    /// crate wrote.
    pub(crate) fn output_choices_json(mut self, output: Bytes) -> Self {
        self.0
            .set_content("$ai_output_choices", Content::Raw(output));
        self
    }

    /// [`model_parameters`](Self::model_parameters) from a JSON object the crate wrote.
    pub(crate) fn model_parameters_json(mut self, parameters: &[u8]) -> Self {
        if let Err(e) = self.0.event.insert_json("$ai_model_parameters", parameters) {
            self.0
                .event
                .inner
                .error
                .get_or_insert(Box::new(("$ai_model_parameters".to_owned(), e)));
        }
        self
    }

    /// `$ai_stop_reason`, e.g. `stop`, `length`, `end_turn`.
    pub fn stop_reason(mut self, reason: impl AsRef<str>) -> Self {
        self.0.set("$ai_stop_reason", reason.as_ref());
        self
    }

    /// `$ai_span_name`: what this generation was for.
    pub fn span_name(mut self, name: impl AsRef<str>) -> Self {
        self.0.set("$ai_span_name", name.as_ref());
        self
    }
}

common_setters!(Generation);
call_setters!(Generation);

/// An `$ai_embedding` event: one call to an embedding model.
///
/// ```
/// use posthog_tower::ai::Embedding;
///
/// let event = Embedding::new("trace-1")
///     .provider("openai")
///     .model("text-embedding-3-small")
///     .input("The quick brown fox")
///     .input_tokens(5)
///     .into_event();
/// assert_eq!(event.name(), "$ai_embedding");
/// ```
#[derive(Debug, Clone)]
#[must_use]
pub struct Embedding(Parts);

impl Embedding {
    /// An embedding call in the trace `trace_id` (`$ai_trace_id`).
    pub fn new(trace_id: impl AsRef<str>) -> Self {
        Embedding(Parts::new("$ai_embedding", trace_id.as_ref()))
    }
}

common_setters!(Embedding);
call_setters!(Embedding);

/// The setters of the steps of a trace ([`Span`], [`Trace`]).
macro_rules! state_setters {
    ($ty:ident) => {
        impl $ty {
            /// `$ai_input_state`: what the step started from. Left out in privacy mode.
            pub fn input_state(mut self, state: impl Serialize) -> Self {
                self.0.content("$ai_input_state", state);
                self
            }

            /// `$ai_output_state`: what the step produced. Left out in privacy mode.
            pub fn output_state(mut self, state: impl Serialize) -> Self {
                self.0.content("$ai_output_state", state);
                self
            }
        }
    };
}

/// An `$ai_span` event: one step of a trace (a tool call, a retrieval, an agent step).
///
/// ```
/// use std::time::Duration;
/// use posthog_tower::ai::Span;
///
/// let event = Span::new("trace-1")
///     .span_id("span-2")
///     .parent_id("trace-1")
///     .name("search documents")
///     .input_state(serde_json::json!({"query": "refund policy"}))
///     .latency(Duration::from_millis(35))
///     .into_event();
/// assert_eq!(event.name(), "$ai_span");
/// ```
#[derive(Debug, Clone)]
#[must_use]
pub struct Span(Parts);

impl Span {
    /// A span in the trace `trace_id` (`$ai_trace_id`).
    pub fn new(trace_id: impl AsRef<str>) -> Self {
        Span(Parts::new("$ai_span", trace_id.as_ref()))
    }

    /// `$ai_span_name`: what the step does.
    pub fn name(mut self, name: impl AsRef<str>) -> Self {
        self.0.set("$ai_span_name", name.as_ref());
        self
    }
}

common_setters!(Span);
state_setters!(Span);

/// An `$ai_trace` event: the whole of a trace, which its generations and spans refer to by
/// `$ai_trace_id`.
///
/// ```
/// use posthog_tower::ai::Trace;
///
/// let event = Trace::new("trace-1").name("support chat").into_event();
/// assert_eq!(event.name(), "$ai_trace");
/// ```
#[derive(Debug, Clone)]
#[must_use]
pub struct Trace(Parts);

impl Trace {
    /// The trace `trace_id` (`$ai_trace_id`).
    pub fn new(trace_id: impl AsRef<str>) -> Self {
        Trace(Parts::new("$ai_trace", trace_id.as_ref()))
    }

    /// `$ai_trace_name` (and `$ai_span_name`, which PostHog also reads for traces).
    pub fn name(mut self, name: impl AsRef<str>) -> Self {
        self.0.set("$ai_trace_name", name.as_ref());
        self.0.set("$ai_span_name", name.as_ref());
        self
    }
}

common_setters!(Trace);
state_setters!(Trace);

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_generation_has_posthogs_property_names() {
        let event = Generation::new("t-1")
            .distinct_id("u")
            .provider("openai")
            .model("gpt-4o-mini")
            .base_url("https://api.openai.com/v1")
            .input(json!([{"role": "user", "content": "hi"}]))
            .output_choices(json!([{"role": "assistant", "content": "hello"}]))
            .input_tokens(3)
            .output_tokens(2)
            .latency(Duration::from_millis(250))
            .http_status(200)
            .is_error(false)
            .into_event();
        assert_eq!(event.name(), "$ai_generation");
        assert_eq!(event.distinct_id(), Some("u"));
        let p = event.properties().to_map();
        assert_eq!(p["$ai_trace_id"], "t-1");
        assert_eq!(p["$ai_provider"], "openai");
        assert_eq!(p["$ai_model"], "gpt-4o-mini");
        assert_eq!(p["$ai_base_url"], "https://api.openai.com/v1");
        assert_eq!(p["$ai_input"], json!([{"role": "user", "content": "hi"}]));
        assert_eq!(p["$ai_output_choices"][0]["content"], "hello");
        assert_eq!(p["$ai_input_tokens"], 3);
        assert_eq!(p["$ai_output_tokens"], 2);
        assert_eq!(p["$ai_latency"], 0.25);
        assert_eq!(p["$ai_http_status"], 200);
        assert_eq!(p["$ai_is_error"], false);
    }

    #[test]
    fn privacy_mode_leaves_inputs_and_outputs_out() {
        let event = Generation::new("t")
            .input("secret prompt")
            .output_choices("secret answer")
            .model("m")
            .privacy_mode(true)
            .into_event();
        let p = event.properties().to_map();
        assert!(!p.contains_key("$ai_input") && !p.contains_key("$ai_output_choices"));
        assert_eq!(p["$ai_model"], "m");
        let span = Span::new("t")
            .input_state("in")
            .output_state("out")
            .privacy_mode(true)
            .into_event();
        assert!(!span.properties().contains_key("$ai_input_state"));
        assert!(!span.properties().contains_key("$ai_output_state"));
        let mut event = Event::new("$ai_generation", "u")
            .property("$ai_input", "x")
            .property("$ai_model", "m");
        remove_content(&mut event);
        assert_eq!(event.properties().keys().collect::<Vec<_>>(), ["$ai_model"]);
    }

    #[test]
    fn without_a_distinct_id_the_context_decides() {
        let event = Span::new("t").name("step").into_event();
        assert_eq!(event.distinct_id(), None);
        assert!(event.inner.inherits_distinct_id);
        let event = Trace::new("t").name("n").error("boom").into_event();
        let p = event.properties().to_map();
        assert_eq!(p["$ai_trace_name"], "n");
        assert_eq!(p["$ai_is_error"], true);
        assert_eq!(p["$ai_error"], "boom");
    }

    #[test]
    fn a_value_json_cannot_hold_is_an_error_at_capture() {
        let event = Generation::new("t").input(f64::NAN).into_event();
        assert!(event.inner.error.is_some());
    }
}
