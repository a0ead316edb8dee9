//! LLM calls captured from the HTTP client that makes them: [`AiLayer`] wraps your outbound
//! HTTP client (any `Service<http::Request<_>>`) and captures one `$ai_generation` (or
//! `$ai_embedding`) event per call to an LLM API, on the AI lane
//! ([`PostHog::capture_ai`](crate::PostHog::capture_ai)).
//!
//! Recognized calls (any host, so OpenAI-compatible servers and gateways too):
//!
//! | request | API | `$ai_provider` |
//! |---|---|---|
//! | `POST …/chat/completions` | OpenAI chat completions | `openai` |
//! | `POST …/responses` | OpenAI responses | `openai` |
//! | `POST …/embeddings` | OpenAI embeddings (`$ai_embedding`) | `openai` |
//! | `POST …/v1/messages` | Anthropic messages | `anthropic` |
//!
//! The event has the model, `$ai_base_url` (the URL before the endpoint), `$ai_http_status`,
//! `$ai_latency` (from the call to the end of the answer's body), the token usage the answer
//! reports (`$ai_input_tokens`, `$ai_output_tokens`; left out when unknown), `$ai_stop_reason`,
//! `$ai_model_parameters`, `$ai_stream`, `$ai_is_error` (and `$ai_error`: the error answer's
//! `error`, or the client's error) and, unless in [privacy mode](AiLayer::privacy_mode),
//! `$ai_input` (the messages) and `$ai_output_choices`.
//!
//! Streamed answers (server-sent events) are read line by line as they pass: nothing is held
//! back, and only the current line and the text so far are kept. OpenAI chat streams report
//! their usage only when asked; [`AiLayer::include_stream_usage`] asks for it.
//!
//! The caller is the current [request context](crate::context)'s distinct id when the call is
//! made (personless outside a request); [`TraceId`] in the request's extensions sets
//! `$ai_trace_id`.
//!
//! It never changes the answer (its body is [`AiBody`], the same frames as they come) nor the
//! request (but for `include_stream_usage`), and fails open: an answer it cannot read gives an
//! event with what is known. The request body must be in memory (`Full<Bytes>`, the body of
//! [`net::HttpClient`](crate::net::HttpClient)); the answer's is read as `Bytes` frames.
//!
//! # Example
//!
//! ```no_run
//! use bytes::Bytes;
//! use http_body_util::{BodyExt, Full};
//! use posthog_tower::{integrations::llm::{AiLayer, TraceId}, PostHog};
//! use tower::{ServiceBuilder, ServiceExt};
//!
//! # async fn f(posthog: PostHog) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! let openai = ServiceBuilder::new()
//!     .layer(AiLayer::new(posthog).include_stream_usage(true))
//!     .service(posthog_tower::net::default_client());
//!
//! let body = r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Hi"}]}"#;
//! let request = http::Request::post("https://api.openai.com/v1/chat/completions")
//!     .header("authorization", "Bearer sk-...")
//!     .header("content-type", "application/json")
//!     .extension(TraceId::new("chat-42"))
//!     .body(Full::new(Bytes::from(body)))?;
//! let response = openai.oneshot(request).await?;
//! let answer = response.into_body().collect().await?.to_bytes();
//! # let _ = answer;
//! # Ok(())
//! # }
//! ```

mod body;
mod parse;
mod scan;
mod service;

pub use body::AiBody;
#[cfg(feature = "__bench")]
#[doc(hidden)]
pub use parse::bench_read_chat_call;
#[cfg(fuzzing)]
pub(crate) use parse::differential_check;
#[cfg(feature = "__bench")]
#[doc(hidden)]
pub use service::bench_chat_call_event;
pub use service::{Ai, AiLayer, ResponseFuture, TraceId};
