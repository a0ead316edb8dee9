//! [`AiLayer`] and its service [`Ai`], the future of a call, and what records the call.

use std::{
    convert::Infallible,
    fmt,
    future::Future,
    mem,
    pin::Pin,
    sync::Arc,
    task::{ready, Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use http::{header, HeaderValue, Request, Response};
use http_body::Body;
use pin_project_lite::pin_project;
use serde_json::Value;
use tokio::time::Instant;
use tower_layer::Layer;
use tower_service::Service;

use super::{
    body::AiBody,
    parse::{assistant_message, read_request, recognize, Answer, AnswerReader, Api, RequestInfo},
};
use crate::{
    ai::{Embedding, Generation},
    context::RequestContext,
    Event, PostHog,
};

/// `$ai_lib` of the events [`AiLayer`] captures: the library that captured them, as
/// posthog-python's wrappers send `posthog-ai` (events built with [`crate::ai`] and sent with
/// `capture_ai` carry none, as posthog-python's `capture_ai` adds none).
const AI_LIB: &str = "posthog-tower";
/// `$ai_lib_version`: this crate's version.
const AI_LIB_VERSION: &str = env!("CARGO_PKG_VERSION");

/// The `$ai_trace_id` of one LLM call: put it in the request's extensions to group the call
/// with others (the default is a new random id per call).
///
/// ```
/// use posthog_tower::integrations::llm::TraceId;
///
/// let request = http::Request::post("https://api.openai.com/v1/chat/completions")
///     .extension(TraceId::new("support-chat-42"))
///     .body(())
///     .unwrap();
/// assert_eq!(request.extensions().get::<TraceId>().map(TraceId::as_str), Some("support-chat-42"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceId(Arc<str>);

impl TraceId {
    /// A trace id.
    pub fn new(trace_id: impl AsRef<str>) -> Self {
        TraceId(Arc::from(trace_id.as_ref()))
    }

    /// The trace id.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[derive(Clone)]
struct Config {
    posthog: PostHog,
    privacy_mode: bool,
    include_usage: bool,
}

/// Captures one `$ai_generation` (or `$ai_embedding`) event per LLM call made through the
/// HTTP client it wraps: see the [module](super) docs.
///
/// A plain, cheap-to-clone config holder.
///
/// ```
/// use posthog_tower::{integrations::llm::AiLayer, PostHog};
/// use tower::ServiceBuilder;
///
/// # fn f(posthog: PostHog) {
/// let client = ServiceBuilder::new()
///     .layer(AiLayer::new(posthog).privacy_mode(true))
///     .service(posthog_tower::net::default_client());
/// # let _ = client;
/// # }
/// ```
#[derive(Clone)]
pub struct AiLayer {
    config: Arc<Config>,
}

impl AiLayer {
    /// Captures through `posthog` (with [`PostHog::capture_ai`]).
    pub fn new(posthog: PostHog) -> Self {
        AiLayer {
            config: Arc::new(Config {
                posthog,
                privacy_mode: false,
                include_usage: false,
            }),
        }
    }

    /// Leaves the calls' inputs and outputs out of their events (off).
    pub fn privacy_mode(mut self, enabled: bool) -> Self {
        Arc::make_mut(&mut self.config).privacy_mode = enabled;
        self
    }

    /// Asks OpenAI chat streams for their token usage (off): a streamed
    /// `…/chat/completions` request without `stream_options.include_usage` gets
    /// `"stream_options": {"include_usage": true}`, as posthog-python's wrapper does. The
    /// stream then ends with one more chunk, with `usage` and no `choices`. Without it the
    /// request is never changed, and such a stream's usage is unknown (left out).
    pub fn include_stream_usage(mut self, enabled: bool) -> Self {
        Arc::make_mut(&mut self.config).include_usage = enabled;
        self
    }
}

impl fmt::Debug for AiLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AiLayer")
            .field("privacy_mode", &self.config.privacy_mode)
            .field("include_stream_usage", &self.config.include_usage)
            .finish_non_exhaustive()
    }
}

impl<S> Layer<S> for AiLayer {
    type Service = Ai<S>;

    fn layer(&self, inner: S) -> Ai<S> {
        Ai {
            inner,
            config: self.config.clone(),
        }
    }
}

/// The service of [`AiLayer`]: the user's HTTP client, with its LLM calls recorded.
#[derive(Clone)]
pub struct Ai<S> {
    inner: S,
    config: Arc<Config>,
}

impl<S> Ai<S> {
    /// Wraps `inner`, capturing through `posthog`.
    pub fn new(inner: S, posthog: PostHog) -> Self {
        AiLayer::new(posthog).layer(inner)
    }

    /// An [`AiLayer`] capturing through `posthog`.
    pub fn layer(posthog: PostHog) -> AiLayer {
        AiLayer::new(posthog)
    }

    define_inner_service_accessors!();
}

impl<S: fmt::Debug> fmt::Debug for Ai<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ai")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S, ReqB, ResB> Service<Request<ReqB>> for Ai<S>
where
    S: Service<Request<ReqB>, Response = Response<ResB>> + Clone,
    S::Error: fmt::Display,
    ReqB: Body<Data = Bytes, Error = Infallible> + From<Bytes>,
    ResB: Body<Data = Bytes>,
{
    type Response = Response<AiBody<ResB>>;
    type Error = S::Error;
    type Future = ResponseFuture<S, ReqB>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqB>) -> Self::Future {
        let Some((api, base_url)) = recognize(request.method(), request.uri()) else {
            return ResponseFuture {
                state: State::Calling {
                    future: self.inner.call(request),
                    call: None,
                },
            };
        };
        let call = Call {
            config: self.config.clone(),
            context: RequestContext::current(),
            trace_id: request.extensions().get::<TraceId>().cloned(),
            api,
            base_url,
            started: Instant::now(),
            request: RequestInfo::default(),
        };
        // The ready service is the one to call (later, once the body is read); a clone
        // takes its place here.
        let clone = self.inner.clone();
        let inner = mem::replace(&mut self.inner, clone);
        let (parts, body) = request.into_parts();
        ResponseFuture {
            state: State::Reading {
                body,
                first: None,
                more: Vec::new(),
                rest: Some((parts, inner, Box::new(call))),
            },
        }
    }
}

/// What is known of a recognized call before its answer.
struct Call {
    config: Arc<Config>,
    context: Option<RequestContext>,
    trace_id: Option<TraceId>,
    api: Api,
    base_url: String,
    started: Instant,
    request: RequestInfo,
}

pin_project! {
    /// The future of [`Ai`]: reads a recognized call's request body (in memory already, so
    /// at once), calls the inner service, and wraps the answer's body.
    pub struct ResponseFuture<S, ReqB>
    where
        S: Service<Request<ReqB>>,
        ReqB: Body,
    {
        #[pin]
        state: State<S, ReqB>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S, ReqB>
    where
        S: Service<Request<ReqB>>,
        ReqB: Body,
    {
        Reading {
            #[pin]
            body: ReqB,
            // The body's one frame, kept as it came (no copy)...
            first: Option<Bytes>,
            // ...or its frames so far, copied, when it has more.
            more: Vec<u8>,
            rest: Option<(http::request::Parts, S, Box<Call>)>,
        },
        Calling {
            #[pin]
            future: S::Future,
            call: Option<Box<Call>>,
        },
    }
}

impl<S, ReqB, ResB> Future for ResponseFuture<S, ReqB>
where
    S: Service<Request<ReqB>, Response = Response<ResB>>,
    S::Error: fmt::Display,
    ReqB: Body<Data = Bytes, Error = Infallible> + From<Bytes>,
    ResB: Body<Data = Bytes>,
{
    type Output = Result<Response<AiBody<ResB>>, S::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Reading {
                    mut body,
                    first,
                    more,
                    rest,
                } => {
                    // The body is read here rather than with `BodyExt::collect`: its one frame
                    // is kept as it is, without a list of buffers (about 600 instructions).
                    while let Some(frame) = ready!(body.as_mut().poll_frame(cx)) {
                        let data = match frame {
                            Ok(frame) => match frame.into_data() {
                                Ok(data) => data,
                                // Trailers: dropped, as the collected body's bytes drop them.
                                Err(_) => continue,
                            },
                            Err(never) => match never {},
                        };
                        if data.is_empty() {
                            continue;
                        }
                        match first.take() {
                            None if more.is_empty() => *first = Some(data),
                            earlier => {
                                if let Some(earlier) = earlier {
                                    more.extend_from_slice(&earlier);
                                }
                                more.extend_from_slice(&data);
                            }
                        }
                    }
                    let Some((mut parts, mut inner, mut call)) = rest.take() else {
                        // `rest` is set when `Reading` is created and taken only here, and the
                        // state becomes `Calling` right below: `Reading` never sees it empty.
                        unreachable!("the request is read once");
                    };
                    let bytes = match first.take() {
                        Some(first) => first,
                        None => Bytes::from(mem::take(more)),
                    };
                    let config = &call.config;
                    let (info, rewritten) =
                        read_request(call.api, &bytes, config.include_usage, config.privacy_mode);
                    call.request = info;
                    let bytes = match rewritten {
                        Some(rewritten) => {
                            if parts.headers.contains_key(header::CONTENT_LENGTH) {
                                parts.headers.insert(
                                    header::CONTENT_LENGTH,
                                    HeaderValue::from(rewritten.len()),
                                );
                            }
                            rewritten
                        }
                        None => bytes,
                    };
                    let future = inner.call(Request::from_parts(parts, ReqB::from(bytes)));
                    this.state.set(State::Calling {
                        future,
                        call: Some(call),
                    });
                }
                StateProj::Calling { future, call } => {
                    let result = ready!(future.poll(cx));
                    let call = call.take();
                    return Poll::Ready(match result {
                        Ok(response) => {
                            let recorder = call.map(|call| Recorder::new(*call, &response));
                            Ok(response.map(|body| AiBody::new(body, recorder)))
                        }
                        Err(error) => {
                            if let Some(call) = call {
                                // Dropped at once: captured with the error.
                                drop(Recorder::failed(*call, error.to_string()));
                            }
                            Err(error)
                        }
                    });
                }
            }
        }
    }
}

impl<S, ReqB> fmt::Debug for ResponseFuture<S, ReqB>
where
    S: Service<Request<ReqB>>,
    ReqB: Body,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

/// Records one call while its answer passes, and captures its event when dropped.
pub(crate) struct Recorder {
    call: Call,
    status: u16,
    reader: AnswerReader,
    failure: Option<String>,
}

impl Recorder {
    fn new<B>(call: Call, response: &Response<B>) -> Box<Self> {
        let event_stream = response
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .is_some_and(|value| value.starts_with("text/event-stream"));
        let keep_output = !call.config.privacy_mode;
        Box::new(Recorder {
            reader: AnswerReader::new(call.api, event_stream, keep_output),
            status: response.status().as_u16(),
            call,
            failure: None,
        })
    }

    fn failed(call: Call, error: String) -> Box<Self> {
        let api = call.api;
        Box::new(Recorder {
            call,
            status: 0,
            reader: AnswerReader::new(api, false, false),
            failure: Some(error),
        })
    }

    pub(crate) fn feed(&mut self, data: &Bytes) {
        self.reader.feed(data);
    }

    pub(crate) fn body_failed(&mut self) {
        self.failure
            .get_or_insert_with(|| "the response body failed".to_owned());
    }

    fn capture(&mut self) {
        let call = &mut self.call;
        let is_error = self.status >= 400 || self.failure.is_some();
        self.reader.finish(self.status >= 400);
        let answer = mem::take(&mut self.reader.answer);
        let request = mem::take(&mut call.request);
        let mut uuid_text = [0; uuid::fmt::Hyphenated::LENGTH];
        let trace_id = call.trace_id.take();
        let trace_id = match &trace_id {
            Some(trace_id) => trace_id.as_str(),
            None => crate::id::new_v4()
                .hyphenated()
                .encode_lower(&mut uuid_text),
        };
        let latency = call.started.elapsed();
        let error = self.failure.take().map(Value::String);
        let event = llm_event(
            &EventInputs {
                api: call.api,
                base_url: &call.base_url,
                privacy_mode: call.config.privacy_mode,
                status: self.status,
                is_error,
                latency,
                trace_id,
            },
            request,
            answer,
            error,
        );
        let posthog = &call.config.posthog;
        // A refused event is counted in `stats()` and reported to `on_error` by the client.
        let _ = match call.context.take() {
            Some(context) => context.sync_scope(|| posthog.capture_ai(event)),
            None => posthog.capture_ai(event),
        };
    }
}

/// What an LLM call's event is made of besides its request and answer.
pub(crate) struct EventInputs<'a> {
    pub(crate) api: Api,
    pub(crate) base_url: &'a str,
    pub(crate) privacy_mode: bool,
    /// The answer's status, 0 when there was none.
    pub(crate) status: u16,
    pub(crate) is_error: bool,
    pub(crate) latency: Duration,
    pub(crate) trace_id: &'a str,
}

/// The `$ai_generation` or `$ai_embedding` of a call, from what was read of its request and
/// answer; `failure` is why the call failed without an answer, if it did.
pub(crate) fn llm_event(
    inputs: &EventInputs<'_>,
    request: RequestInfo,
    answer: Answer,
    failure: Option<Value>,
) -> Event {
    let model = answer.model.or(request.model);
    let error = answer.error.or(failure);
    if inputs.api.is_embedding() {
        let mut event = Embedding::new(inputs.trace_id)
            .provider(inputs.api.provider())
            .base_url(inputs.base_url)
            .latency(inputs.latency)
            .is_error(inputs.is_error)
            .privacy_mode(inputs.privacy_mode)
            .property("$ai_lib", AI_LIB)
            .property("$ai_lib_version", AI_LIB_VERSION);
        if let Some(model) = model {
            event = event.model(model);
        }
        if inputs.status != 0 {
            event = event.http_status(inputs.status);
        }
        if let Some(tokens) = answer.input_tokens {
            event = event.input_tokens(tokens);
        }
        if let Some(input) = request.input {
            event = event.input_json(input);
        }
        if let Some(error) = error {
            event = event.error(error);
        }
        event.into_event()
    } else {
        let mut event = Generation::new(inputs.trace_id)
            .provider(inputs.api.provider())
            .base_url(inputs.base_url)
            .latency(inputs.latency)
            .is_error(inputs.is_error)
            .privacy_mode(inputs.privacy_mode)
            .property("$ai_lib", AI_LIB)
            .property("$ai_lib_version", AI_LIB_VERSION)
            .property("$ai_stream", request.stream);
        if let Some(model) = model {
            event = event.model(model);
        }
        if inputs.status != 0 {
            event = event.http_status(inputs.status);
        }
        if let Some(tokens) = answer.input_tokens {
            event = event.input_tokens(tokens);
        }
        if let Some(tokens) = answer.output_tokens {
            event = event.output_tokens(tokens);
        }
        if let Some(reason) = answer.stop_reason {
            event = event.stop_reason(reason);
        }
        if let Some(parameters) = &request.parameters {
            event = event.model_parameters_json(parameters);
        }
        if let Some(input) = request.input {
            event = event.input_json(input);
        }
        if let Some(output) = answer.output {
            event = event.output_choices_json(output);
        } else if !answer.text.is_empty() {
            event = event.output_choices_json(assistant_message(&answer.text));
        }
        if let Some(error) = error {
            event = event.error(error);
        }
        event.into_event()
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.capture();
    }
}

/// Not public API: lets `benches/ai_layer.rs` time what [`AiLayer`] reads of a chat call (its
/// request, and its JSON answer) and the `$ai_generation` it builds from that, captured on
/// `posthog` (a disabled client in the bench, as in its `layer_disabled` case).
#[cfg(feature = "__bench")]
#[doc(hidden)]
pub fn bench_chat_call_event(posthog: &PostHog, request: &Bytes, answer: &Bytes) -> bool {
    let (info, _) = read_request(Api::ChatCompletions, request, false, false);
    let mut reader = AnswerReader::new(Api::ChatCompletions, false, true);
    reader.feed(answer);
    reader.finish(false);
    let inputs = EventInputs {
        api: Api::ChatCompletions,
        base_url: "https://api.openai.com/v1",
        privacy_mode: false,
        status: 200,
        is_error: false,
        latency: Duration::from_millis(420),
        trace_id: "0192f7c4-6f8e-7d3a-9b1c-2e4f6a8b0c1d",
    };
    let event = llm_event(&inputs, info, reader.answer, None);
    posthog.capture_ai(event).is_ok()
}
