//! What [`AiLayer`](super::AiLayer) reads of an LLM call: the API a request goes to, the
//! request's model, input and parameters, and the answer's model, usage, output and stop
//! reason, from a JSON body or from a server-sent event stream read as it passes.

use std::borrow::Cow;

use bytes::Bytes;
use http::{Method, Uri};
use serde::Deserialize;
use serde_json::{value::RawValue, Map, Value};

use super::scan::Scanner;

/// Most of a non-streamed answer kept to be parsed at its end; a longer one is passed on
/// unread (the event then has no usage and no output).
const MAX_JSON_BODY: usize = 4 * 1024 * 1024;
/// Longest server-sent event line read; a longer one is skipped.
const MAX_SSE_LINE: usize = 1024 * 1024;
/// Most of a streamed answer's text kept for `$ai_output_choices`.
const MAX_OUTPUT_TEXT: usize = 256 * 1024;

/// The LLM APIs recognized.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Api {
    /// OpenAI-compatible `POST …/chat/completions`.
    ChatCompletions,
    /// OpenAI `POST …/responses`.
    Responses,
    /// OpenAI-compatible `POST …/embeddings`.
    Embeddings,
    /// Anthropic `POST …/v1/messages`.
    AnthropicMessages,
}

impl Api {
    pub(crate) fn provider(self) -> &'static str {
        match self {
            Api::AnthropicMessages => "anthropic",
            _ => "openai",
        }
    }

    pub(crate) fn is_embedding(self) -> bool {
        self == Api::Embeddings
    }
}

/// The API `method` and `uri` call, and the base URL before its endpoint (`$ai_base_url`).
pub(crate) fn recognize(method: &Method, uri: &Uri) -> Option<(Api, String)> {
    if method != Method::POST {
        return None;
    }
    let path = uri.path().trim_end_matches('/');
    let (api, suffix) = [
        (Api::ChatCompletions, "/chat/completions"),
        (Api::Responses, "/responses"),
        (Api::Embeddings, "/embeddings"),
        // The Anthropic SDK's base URL is the host, `/v1` included in the endpoint.
        (Api::AnthropicMessages, "/v1/messages"),
    ]
    .into_iter()
    .find(|(_, suffix)| path.ends_with(suffix))?;
    let prefix = &path[..path.len() - suffix.len()];
    let base_url = match (uri.scheme_str(), uri.authority()) {
        // Pushed piece by piece: `format!` costs about 1 000 instructions a call here.
        (Some(scheme), Some(authority)) => {
            let authority = authority.as_str();
            let mut url = String::with_capacity(scheme.len() + 3 + authority.len() + prefix.len());
            url.push_str(scheme);
            url.push_str("://");
            url.push_str(authority);
            url.push_str(prefix);
            url
        }
        _ => prefix.to_owned(),
    };
    Some((api, base_url))
}

/// What the request says. Its input and parameters are JSON text: slices of the request's
/// body (no copy) or written here, never a tree of values.
#[derive(Debug, Default)]
pub(crate) struct RequestInfo {
    pub(crate) model: Option<String>,
    pub(crate) stream: bool,
    /// `$ai_input` (`None` in privacy mode).
    pub(crate) input: Option<Bytes>,
    /// `$ai_model_parameters`: a JSON object (`None` when the request sets none).
    pub(crate) parameters: Option<Vec<u8>>,
}

/// The parameters reported in `$ai_model_parameters`, as posthog-python picks them.
const PARAMETERS: [&str; 10] = [
    "temperature",
    "max_tokens",
    "max_completion_tokens",
    "max_output_tokens",
    "top_p",
    "frequency_penalty",
    "presence_penalty",
    "n",
    "stop",
    "stream",
];

/// The fields of a request body read for the event, borrowed from it: the input and the
/// parameters as the JSON text they are (validated, not parsed into values).
#[derive(Default)]
#[cfg_attr(any(test, fuzzing), derive(Debug, PartialEq))]
struct RequestFields<'a> {
    model: Option<Cow<'a, str>>,
    messages: Option<&'a str>,
    input: Option<&'a str>,
    instructions: Option<&'a str>,
    system: Option<&'a str>,
    /// The [`PARAMETERS`] set, in that order.
    parameters: [Option<&'a str>; 10],
}

impl<'a> RequestFields<'a> {
    /// Reads `body` with the [scanner](super::scan): `None` when it is not sure to read what
    /// `serde_json` reads (then [`SerdeRequestFields`] reads it).
    fn scan(body: &'a [u8]) -> Option<Self> {
        let mut scanner = Scanner::new(body)?;
        let mut fields = RequestFields::default();
        let mut seen = 0u16;
        scanner.object(|scanner, key| {
            // The field's bit in `seen`: a repeated field is an error for serde's derive.
            let field = match key {
                b"temperature" => 0,
                b"max_tokens" => 1,
                b"max_completion_tokens" => 2,
                b"max_output_tokens" => 3,
                b"top_p" => 4,
                b"frequency_penalty" => 5,
                b"presence_penalty" => 6,
                b"n" => 7,
                b"stop" => 8,
                b"stream" => 9,
                b"messages" => 10,
                b"input" => 11,
                b"instructions" => 12,
                b"system" => 13,
                b"model" => 14,
                _ => return scanner.skip_value(),
            };
            if seen & 1 << field != 0 {
                return None;
            }
            seen |= 1 << field;
            if field == 14 {
                fields.model = scanner.string_or_null()?;
                return Some(());
            }
            let value = if scanner.null()? {
                None
            } else {
                Some(scanner.raw()?)
            };
            match field {
                10 => fields.messages = value,
                11 => fields.input = value,
                12 => fields.instructions = value,
                13 => fields.system = value,
                _ => *fields.parameters.get_mut(field)? = value,
            }
            Some(())
        })?;
        scanner.at_end().then_some(fields)
    }

    /// Reads `body` with `serde_json`.
    fn parse(body: &'a [u8]) -> Option<Self> {
        let f = serde_json::from_slice::<SerdeRequestFields<'a>>(body).ok()?;
        let raw = |value: Option<&'a RawValue>| value.map(RawValue::get);
        Some(RequestFields {
            model: f.model,
            messages: raw(f.messages),
            input: raw(f.input),
            instructions: raw(f.instructions),
            system: raw(f.system),
            parameters: [
                raw(f.temperature),
                raw(f.max_tokens),
                raw(f.max_completion_tokens),
                raw(f.max_output_tokens),
                raw(f.top_p),
                raw(f.frequency_penalty),
                raw(f.presence_penalty),
                raw(f.n),
                raw(f.stop),
                raw(f.stream),
            ],
        })
    }
}

/// [`RequestFields`] as serde's derive reads them, everything else skipped unparsed: what a
/// body the scanner is not sure of is read with.
#[derive(Deserialize)]
struct SerdeRequestFields<'a> {
    #[serde(borrow)]
    model: Option<Cow<'a, str>>,
    #[serde(borrow)]
    messages: Option<&'a RawValue>,
    #[serde(borrow)]
    input: Option<&'a RawValue>,
    #[serde(borrow)]
    instructions: Option<&'a RawValue>,
    #[serde(borrow)]
    system: Option<&'a RawValue>,
    #[serde(borrow)]
    temperature: Option<&'a RawValue>,
    #[serde(borrow)]
    max_tokens: Option<&'a RawValue>,
    #[serde(borrow)]
    max_completion_tokens: Option<&'a RawValue>,
    #[serde(borrow)]
    max_output_tokens: Option<&'a RawValue>,
    #[serde(borrow)]
    top_p: Option<&'a RawValue>,
    #[serde(borrow)]
    frequency_penalty: Option<&'a RawValue>,
    #[serde(borrow)]
    presence_penalty: Option<&'a RawValue>,
    #[serde(borrow)]
    n: Option<&'a RawValue>,
    #[serde(borrow)]
    stop: Option<&'a RawValue>,
    #[serde(borrow)]
    stream: Option<&'a RawValue>,
}

/// `part` (a slice of `body`'s bytes, as `serde_json` borrows them) as a `Bytes` sharing
/// `body`'s memory; a copy if it is not inside `body` after all.
fn share(body: &Bytes, part: &str) -> Bytes {
    let (base, at) = (body.as_ptr() as usize, part.as_ptr() as usize);
    match at.checked_sub(base) {
        Some(offset) if offset + part.len() <= body.len() => {
            body.slice(offset..offset + part.len())
        }
        _ => Bytes::copy_from_slice(part.as_bytes()),
    }
}

/// `[{"role":"<role>","content":<content>}` followed by the items of the JSON array `items`
/// (or none), as one JSON array.
fn prepend_message(role: &str, content: &str, items: Option<&str>) -> Bytes {
    let rest = items
        .and_then(|items| items.strip_prefix('['))
        .map(str::trim_start);
    let mut out = Vec::with_capacity(32 + content.len() + rest.map_or(1, str::len));
    out.extend_from_slice(b"[{\"role\":\"");
    out.extend_from_slice(role.as_bytes());
    out.extend_from_slice(b"\",\"content\":");
    out.extend_from_slice(content.as_bytes());
    out.push(b'}');
    match rest {
        Some(rest) if !rest.starts_with(']') => {
            out.push(b',');
            out.extend_from_slice(rest.as_bytes());
        }
        Some(rest) => out.extend_from_slice(rest.as_bytes()),
        None => out.push(b']'),
    }
    Bytes::from(out)
}

/// Whether the JSON text `raw` is a string (`Some(false)`), an array (`Some(true)`), or
/// neither (`None`).
fn is_array(raw: &str) -> Option<bool> {
    match raw.as_bytes().first() {
        Some(b'[') => Some(true),
        Some(b'"') => Some(false),
        _ => None,
    }
}

/// Reads the request body of a call to `api`. With `include_usage`, an OpenAI chat stream that
/// does not ask for usage is made to (`stream_options.include_usage`): the rewritten body is
/// returned. A body that is not a JSON object gives an empty [`RequestInfo`] and is not
/// changed.
pub(crate) fn read_request(
    api: Api,
    body: &Bytes,
    include_usage: bool,
    privacy_mode: bool,
) -> (RequestInfo, Option<Bytes>) {
    if body.trim_ascii_start().first() != Some(&b'{') {
        return (RequestInfo::default(), None);
    }
    let Some(request) = RequestFields::scan(body).or_else(|| RequestFields::parse(body)) else {
        return (RequestInfo::default(), None);
    };
    let stream = request.parameters[9] == Some("true");
    let mut parameters = None;
    for (key, value) in PARAMETERS.iter().zip(request.parameters) {
        let Some(value) = value else { continue };
        let out = parameters.get_or_insert_with(|| Vec::with_capacity(96));
        out.push(if out.is_empty() { b'{' } else { b',' });
        crate::event::write_json_str(out, key);
        out.push(b':');
        out.extend_from_slice(value.as_bytes());
    }
    if let Some(out) = &mut parameters {
        out.push(b'}');
    }
    let mut info = RequestInfo {
        model: request.model.map(Cow::into_owned),
        stream,
        input: None,
        parameters,
    };
    if !privacy_mode {
        let raw = |value: &str| share(body, value);
        info.input = match api {
            Api::ChatCompletions => request.messages.map(raw),
            Api::Embeddings => request.input.map(raw),
            Api::Responses => match (request.instructions, request.input) {
                (Some(instructions), Some(input)) if is_array(input) == Some(false) => {
                    Some(prepend_message(
                        "system",
                        instructions,
                        Some(&format!("[{{\"role\":\"user\",\"content\":{input}}}]")),
                    ))
                }
                (Some(instructions), Some(input)) if is_array(input) == Some(true) => {
                    Some(prepend_message("system", instructions, Some(input)))
                }
                (_, Some(input)) if is_array(input) == Some(false) => {
                    Some(prepend_message("user", input, None))
                }
                (_, input) => input.map(raw),
            },
            // posthog-python merges the system prompt in as the first message.
            Api::AnthropicMessages => match (request.system, request.messages) {
                (Some(system), Some(messages)) if is_array(messages) == Some(true) => {
                    Some(prepend_message("system", system, Some(messages)))
                }
                (_, messages) => messages.map(raw),
            },
        };
    }
    let rewritten = if include_usage && stream && api == Api::ChatCompletions {
        with_stream_usage(body)
    } else {
        None
    };
    (info, rewritten)
}

/// The body of an OpenAI chat stream request asking for its usage, unless it says whether
/// it wants it already (rare and opt-in: through a `Value`).
fn with_stream_usage(body: &[u8]) -> Option<Bytes> {
    let Ok(Value::Object(mut request)) = serde_json::from_slice::<Value>(body) else {
        return None;
    };
    let options = request
        .entry("stream_options")
        .or_insert_with(|| Value::Object(Map::new()));
    let Value::Object(options) = options else {
        return None;
    };
    if options.contains_key("include_usage") {
        return None;
    }
    options.insert("include_usage".to_owned(), Value::Bool(true));
    serde_json::to_vec(&request).ok().map(Bytes::from)
}

/// What the answer said, as far as it was read.
#[derive(Debug, Default)]
pub(crate) struct Answer {
    pub(crate) model: Option<String>,
    pub(crate) input_tokens: Option<u64>,
    pub(crate) output_tokens: Option<u64>,
    pub(crate) stop_reason: Option<String>,
    /// `$ai_output_choices` of a JSON answer, as JSON text (a slice of the answer, or
    /// written from its parts).
    pub(crate) output: Option<Bytes>,
    /// The text a stream delivered, for `$ai_output_choices`.
    pub(crate) text: String,
    /// The body of an error answer, for `$ai_error`.
    pub(crate) error: Option<Value>,
}

/// Reads an answer's body as it passes, keeping only what the event needs.
#[derive(Debug)]
pub(crate) struct AnswerReader {
    api: Api,
    /// A server-sent event stream (else one JSON document).
    stream: bool,
    keep_output: bool,
    /// The JSON document's first piece, kept as it came (no copy): most answers are one.
    first: Option<Bytes>,
    /// The JSON document so far when it came in pieces, or the current stream line.
    buffer: Vec<u8>,
    /// The buffer outgrew its limit: the rest (of the document, or of the line) is skipped.
    overflowed: bool,
    pub(crate) answer: Answer,
}

impl AnswerReader {
    pub(crate) fn new(api: Api, stream: bool, keep_output: bool) -> Self {
        AnswerReader {
            api,
            stream,
            keep_output,
            first: None,
            buffer: Vec::new(),
            overflowed: false,
            answer: Answer::default(),
        }
    }

    /// Reads the next piece of the body.
    pub(crate) fn feed(&mut self, bytes: &Bytes) {
        let mut data: &[u8] = bytes;
        if !self.stream {
            let held = self.buffer.len() + self.first.as_ref().map_or(0, Bytes::len);
            if held + data.len() > MAX_JSON_BODY {
                self.overflowed = true;
                self.first = None;
                self.buffer = Vec::new();
            }
            if self.overflowed || data.is_empty() {
                return;
            }
            if held == 0 {
                self.first = Some(bytes.clone());
            } else {
                if let Some(first) = self.first.take() {
                    self.buffer.reserve(first.len() + data.len());
                    self.buffer.extend_from_slice(&first);
                }
                self.buffer.extend_from_slice(data);
            }
            return;
        }
        while let Some(end) = data.iter().position(|&b| b == b'\n') {
            if !self.overflowed && self.buffer.len() + end <= MAX_SSE_LINE {
                self.buffer.extend_from_slice(&data[..end]);
                let line = std::mem::take(&mut self.buffer);
                self.read_line(&line);
                self.buffer = line;
            }
            self.buffer.clear();
            self.overflowed = false;
            data = &data[end + 1..];
        }
        if self.buffer.len() + data.len() > MAX_SSE_LINE {
            self.overflowed = true;
            self.buffer.clear();
        } else if !self.overflowed {
            self.buffer.extend_from_slice(data);
        }
    }

    /// The body ended: reads what is left.
    pub(crate) fn finish(&mut self, is_error: bool) {
        let buffer = std::mem::take(&mut self.buffer);
        let first = self.first.take();
        if self.overflowed {
            return;
        }
        if self.stream {
            self.read_line(&buffer);
            return;
        }
        let buffer = match first {
            Some(first) => first,
            None => Bytes::from(buffer),
        };
        if self.api.is_embedding() && !is_error {
            // An embeddings answer is mostly its vectors: only the model and usage are read.
            if let Some(summary) = stream::Summary::scan(&buffer) {
                summary.read(&mut self.answer);
            } else if let Ok(summary) = serde_json::from_slice::<stream::Summary<'_>>(&buffer) {
                summary.read(&mut self.answer);
            }
            return;
        }
        // The usual answer is read by the scanner (else into borrowed structs), its output kept
        // as the text it is; one they do not fit (a field of an unexpected type) is read into a
        // `Value`.
        if !is_error && self.read_fields(&buffer) {
            return;
        }
        let Ok(document) = serde_json::from_slice::<Value>(&buffer) else {
            if is_error && !buffer.is_empty() {
                let text = String::from_utf8_lossy(&buffer[..buffer.len().min(4096)]);
                self.answer.error = Some(Value::String(text.into_owned()));
            }
            return;
        };
        if is_error {
            self.answer.error = Some(document.get("error").cloned().unwrap_or(document));
            return;
        }
        self.read_document(document);
    }

    /// One line of a server-sent event stream: its `data:` JSON, if any.
    fn read_line(&mut self, line: &[u8]) {
        let Some(data) = line.strip_prefix(b"data:") else {
            return;
        };
        let data = data.trim_ascii();
        if data.is_empty() || data == b"[DONE]" {
            return;
        }
        // The frequent streams are read by the scanner, else into borrowed structs (what they
        // do not name is skipped unparsed); the others into a `Value`. A chunk that does not
        // fit is skipped.
        match self.api {
            Api::ChatCompletions => {
                if !stream::ChatChunk::scan(data, &mut self.answer, self.keep_output) {
                    if let Ok(chunk) = serde_json::from_slice::<stream::ChatChunk<'_>>(data) {
                        chunk.read(&mut self.answer, self.keep_output);
                    }
                }
            }
            Api::AnthropicMessages => {
                if let Some(event) = stream::AnthropicEvent::scan(data) {
                    event.read(&mut self.answer, self.keep_output);
                } else if let Ok(event) = serde_json::from_slice::<stream::AnthropicEvent<'_>>(data)
                {
                    event.read(&mut self.answer, self.keep_output);
                }
            }
            _ => {
                if let Ok(chunk) = serde_json::from_slice::<Value>(data) {
                    self.read_chunk(&chunk);
                }
            }
        }
    }

    /// One event of a stream.
    /// One event of a stream read as a `Value` (OpenAI responses).
    fn read_chunk(&mut self, chunk: &Value) {
        let answer = &mut self.answer;
        set_str(&mut answer.model, chunk.get("model"));
        match self.api {
            // Chat streams are read by `stream::ChatChunk`; an embeddings answer is no stream.
            Api::ChatCompletions | Api::Embeddings => {
                read_openai_usage(answer, chunk.get("usage"));
                if let Some(choice) = chunk.pointer("/choices/0") {
                    set_str(&mut answer.stop_reason, choice.get("finish_reason"));
                    if self.keep_output {
                        push_text(answer, choice.pointer("/delta/content"));
                    }
                }
            }
            Api::Responses => match chunk.get("type").and_then(Value::as_str) {
                Some("response.output_text.delta") if self.keep_output => {
                    push_text(answer, chunk.get("delta"));
                }
                Some("response.completed" | "response.incomplete" | "response.failed") => {
                    if let Some(response) = chunk.get("response") {
                        set_str(&mut answer.model, response.get("model"));
                        read_openai_usage(answer, response.get("usage"));
                        set_str(&mut answer.stop_reason, response.get("status"));
                    }
                }
                _ => {}
            },
            // Read by `stream::AnthropicEvent`.
            Api::AnthropicMessages => {}
        }
    }

    /// A whole JSON answer, read by the scanner or into [`stream::Document`]: `false` when it
    /// does not fit.
    fn read_fields(&mut self, body: &Bytes) -> bool {
        if stream::scan_document(self.api, body, &mut self.answer, self.keep_output) {
            return true;
        }
        let Ok(document) = serde_json::from_slice::<stream::Document<'_>>(body) else {
            return false;
        };
        document.read(self.api, body, &mut self.answer, self.keep_output);
        true
    }

    /// A whole JSON answer, read as a `Value`.
    fn read_document(&mut self, mut document: Value) {
        let answer = &mut self.answer;
        set_str(&mut answer.model, document.get("model"));
        match self.api {
            Api::ChatCompletions => {
                read_openai_usage(answer, document.get("usage"));
                set_str(
                    &mut answer.stop_reason,
                    document.pointer("/choices/0/finish_reason"),
                );
                if self.keep_output {
                    answer.output = match document.get_mut("choices").map(Value::take) {
                        Some(Value::Array(choices)) => to_json(
                            &choices
                                .into_iter()
                                .filter_map(|mut choice| choice.get_mut("message").map(Value::take))
                                .collect::<Vec<_>>(),
                        ),
                        _ => None,
                    };
                }
            }
            Api::Embeddings => read_openai_usage(answer, document.get("usage")),
            Api::Responses => {
                read_openai_usage(answer, document.get("usage"));
                set_str(&mut answer.stop_reason, document.get("status"));
                if self.keep_output {
                    answer.output = document.get("output").and_then(to_json);
                }
            }
            Api::AnthropicMessages => {
                read_anthropic_usage(answer, document.get("usage"));
                set_str(&mut answer.stop_reason, document.get("stop_reason"));
                if self.keep_output {
                    let text: String = document
                        .get("content")
                        .and_then(Value::as_array)
                        .map(|blocks| {
                            blocks
                                .iter()
                                .filter_map(|b| b.get("text").and_then(Value::as_str))
                                .collect()
                        })
                        .unwrap_or_default();
                    answer.output = Some(assistant_message(&text));
                }
            }
        }
    }
}

/// `value` as JSON text.
fn to_json<T: serde::Serialize + ?Sized>(value: &T) -> Option<Bytes> {
    serde_json::to_vec(value).ok().map(Bytes::from)
}

/// `[{"role":"assistant","content":"<text>"}]`: the output of an answer read as text.
pub(crate) fn assistant_message(text: &str) -> Bytes {
    let mut out = Vec::with_capacity(text.len() + 40);
    out.extend_from_slice(b"[{\"role\":\"assistant\",\"content\":");
    crate::event::write_json_str(&mut out, text);
    out.extend_from_slice(b"}]");
    Bytes::from(out)
}

/// The answers and stream chunks read by the [scanner](super::scan), or when it declines
/// into borrowed structs: only the fields the event needs, the rest skipped unparsed.
mod stream {
    use std::{borrow::Cow, mem};

    use bytes::Bytes;
    use serde::Deserialize;
    use serde_json::value::RawValue;

    use super::{share, Answer, Api, Scanner, MAX_OUTPUT_TEXT};

    /// A whole (non-streamed) answer of any of the APIs.
    #[derive(Deserialize)]
    pub(super) struct Document<'a> {
        #[serde(borrow)]
        model: Option<Cow<'a, str>>,
        usage: Option<Usage>,
        /// Chat completions.
        #[serde(borrow)]
        choices: Option<Vec<DocumentChoice<'a>>>,
        /// Responses.
        #[serde(borrow)]
        status: Option<Cow<'a, str>>,
        #[serde(borrow)]
        output: Option<&'a RawValue>,
        /// Anthropic messages.
        #[serde(borrow)]
        stop_reason: Option<Cow<'a, str>>,
        #[serde(borrow)]
        content: Option<Vec<ContentBlock<'a>>>,
    }

    #[derive(Deserialize)]
    struct DocumentChoice<'a> {
        #[serde(borrow)]
        finish_reason: Option<Cow<'a, str>>,
        #[serde(borrow)]
        message: Option<&'a RawValue>,
    }

    #[derive(Deserialize)]
    struct ContentBlock<'a> {
        #[serde(borrow)]
        text: Option<Cow<'a, str>>,
    }

    impl Document<'_> {
        /// Reads the answer of a call to `api`, whose body is `body`.
        pub(super) fn read(self, api: Api, body: &Bytes, answer: &mut Answer, keep_output: bool) {
            set(&mut answer.model, self.model);
            if let Some(usage) = self.usage {
                usage.read(answer);
            }
            match api {
                Api::ChatCompletions => {
                    let Some(choices) = self.choices else {
                        return;
                    };
                    if let Some(choice) = choices.first() {
                        set(&mut answer.stop_reason, choice.finish_reason.clone());
                    }
                    if keep_output {
                        let messages = choices.iter().filter_map(|c| c.message);
                        let len: usize = messages.clone().map(|m| m.get().len() + 1).sum();
                        let mut out = Vec::with_capacity(len + 2);
                        out.push(b'[');
                        for message in messages {
                            if out.len() > 1 {
                                out.push(b',');
                            }
                            out.extend_from_slice(message.get().as_bytes());
                        }
                        out.push(b']');
                        answer.output = Some(Bytes::from(out));
                    }
                }
                Api::Embeddings => {}
                Api::Responses => {
                    set(&mut answer.stop_reason, self.status);
                    if keep_output {
                        answer.output = self.output.map(|o| share(body, o.get()));
                    }
                }
                Api::AnthropicMessages => {
                    set(&mut answer.stop_reason, self.stop_reason);
                    if keep_output {
                        let mut text = String::new();
                        for block in self.content.iter().flatten() {
                            if let Some(t) = &block.text {
                                text.push_str(t);
                            }
                        }
                        answer.output = Some(super::assistant_message(&text));
                    }
                }
            }
        }
    }

    /// Token counts, as OpenAI (`prompt_tokens`, `completion_tokens`; `input_tokens`,
    /// `output_tokens` for responses) and Anthropic (`input_tokens`, `output_tokens`) name them.
    #[derive(Deserialize)]
    pub(super) struct Usage {
        prompt_tokens: Option<u64>,
        completion_tokens: Option<u64>,
        input_tokens: Option<u64>,
        output_tokens: Option<u64>,
    }

    impl Usage {
        pub(super) fn read(&self, answer: &mut Answer) {
            if let Some(n) = self.prompt_tokens.or(self.input_tokens) {
                answer.input_tokens = Some(n);
            }
            if let Some(n) = self.completion_tokens.or(self.output_tokens) {
                answer.output_tokens = Some(n);
            }
        }
    }

    /// The model and usage of an answer, the rest skipped (embeddings).
    #[derive(Deserialize)]
    pub(super) struct Summary<'a> {
        #[serde(borrow)]
        model: Option<Cow<'a, str>>,
        usage: Option<Usage>,
    }

    impl Summary<'_> {
        pub(super) fn read(self, answer: &mut Answer) {
            set(&mut answer.model, self.model);
            if let Some(usage) = self.usage {
                usage.read(answer);
            }
        }
    }

    /// One chunk of an OpenAI chat completions stream.
    #[derive(Deserialize)]
    pub(super) struct ChatChunk<'a> {
        #[serde(borrow)]
        model: Option<Cow<'a, str>>,
        usage: Option<Usage>,
        #[serde(borrow)]
        choices: Option<Vec<ChatChoice<'a>>>,
    }

    #[derive(Deserialize)]
    struct ChatChoice<'a> {
        #[serde(borrow)]
        delta: Option<TextDelta<'a>>,
        #[serde(borrow)]
        finish_reason: Option<Cow<'a, str>>,
    }

    #[derive(Deserialize)]
    struct TextDelta<'a> {
        #[serde(borrow)]
        content: Option<Cow<'a, str>>,
    }

    impl ChatChunk<'_> {
        pub(super) fn read(self, answer: &mut Answer, keep_output: bool) {
            set(&mut answer.model, self.model);
            if let Some(usage) = self.usage {
                usage.read(answer);
            }
            if let Some(choice) = self.choices.and_then(|c| c.into_iter().next()) {
                choice.read(answer, keep_output);
            }
        }

        /// Reads the chunk `data` with the [scanner](super::super::scan) into `answer`, as
        /// [`ChatChunk`] reads it: `false` (and `answer` untouched) when it is not sure to.
        pub(super) fn scan(data: &[u8], answer: &mut Answer, keep_output: bool) -> bool {
            let Some(mut scanner) = Scanner::new(data) else {
                return false;
            };
            let (mut model, mut usage, mut first) = (None, None, None);
            let mut seen = 0u8;
            let read = scanner.object(|scanner, key| {
                let field = match key {
                    b"model" => 1,
                    b"usage" => 2,
                    b"choices" => 4,
                    _ => return scanner.skip_value(),
                };
                once(&mut seen, field)?;
                match field {
                    1 => model = scanner.string_or_null()?,
                    2 => usage = Usage::scan(scanner)?,
                    _ => {
                        if scanner.null()? {
                            return Some(());
                        }
                        let mut at_first = true;
                        scanner.array(|scanner| {
                            let choice = ChatChoice::scan(scanner)?;
                            if mem::take(&mut at_first) {
                                first = Some(choice);
                            }
                            Some(())
                        })?;
                    }
                }
                Some(())
            });
            if read.is_none() || !scanner.at_end() {
                return false;
            }
            set(&mut answer.model, model);
            if let Some(usage) = usage {
                usage.read(answer);
            }
            if let Some(choice) = first {
                choice.read(answer, keep_output);
            }
            true
        }
    }

    impl<'a> ChatChoice<'a> {
        fn read(self, answer: &mut Answer, keep_output: bool) {
            set(&mut answer.stop_reason, self.finish_reason);
            if keep_output {
                push(answer, self.delta.and_then(|d| d.content));
            }
        }

        fn scan(scanner: &mut Scanner<'a>) -> Option<Self> {
            let (mut delta, mut finish_reason) = (None, None);
            let mut seen = 0u8;
            scanner.object(|scanner, key| match key {
                b"delta" => {
                    once(&mut seen, 1)?;
                    if scanner.null()? {
                        return Some(());
                    }
                    let [content] = string_members(scanner, [b"content"])?;
                    delta = Some(TextDelta { content });
                    Some(())
                }
                b"finish_reason" => {
                    once(&mut seen, 2)?;
                    finish_reason = scanner.string_or_null()?;
                    Some(())
                }
                _ => scanner.skip_value(),
            })?;
            Some(ChatChoice {
                delta,
                finish_reason,
            })
        }
    }

    /// One event of an Anthropic messages stream.
    #[derive(Deserialize)]
    pub(super) struct AnthropicEvent<'a> {
        #[serde(rename = "type", borrow)]
        kind: Cow<'a, str>,
        #[serde(borrow)]
        message: Option<AnthropicMessage<'a>>,
        #[serde(borrow)]
        delta: Option<AnthropicDelta<'a>>,
        usage: Option<Usage>,
    }

    #[derive(Deserialize)]
    struct AnthropicMessage<'a> {
        #[serde(borrow)]
        model: Option<Cow<'a, str>>,
        usage: Option<Usage>,
    }

    #[derive(Deserialize)]
    struct AnthropicDelta<'a> {
        #[serde(borrow)]
        text: Option<Cow<'a, str>>,
        #[serde(borrow)]
        stop_reason: Option<Cow<'a, str>>,
    }

    impl AnthropicEvent<'_> {
        pub(super) fn read(self, answer: &mut Answer, keep_output: bool) {
            match &*self.kind {
                "message_start" => {
                    if let Some(message) = self.message {
                        set(&mut answer.model, message.model);
                        if let Some(usage) = message.usage {
                            usage.read(answer);
                        }
                    }
                }
                "content_block_delta" if keep_output => {
                    push(answer, self.delta.and_then(|d| d.text));
                }
                "message_delta" => {
                    set(
                        &mut answer.stop_reason,
                        self.delta.and_then(|d| d.stop_reason),
                    );
                    if let Some(usage) = self.usage {
                        usage.read(answer);
                    }
                }
                _ => {}
            }
        }
    }

    /// Sets `slot` to `value` when it says something new (no allocation when it repeats).
    fn set(slot: &mut Option<String>, value: Option<Cow<'_, str>>) {
        if let Some(value) = value {
            if slot.as_deref() != Some(&*value) {
                *slot = Some(value.into_owned());
            }
        }
    }

    fn push(answer: &mut Answer, text: Option<Cow<'_, str>>) {
        if let Some(text) = text {
            if answer.text.len() + text.len() <= MAX_OUTPUT_TEXT {
                answer.text.push_str(&text);
            }
        }
    }

    /// Marks `field` (a bit) of `seen` read: `None` when it was already (serde's derive
    /// refuses a repeated field).
    fn once<
        T: Copy + std::ops::BitAnd<Output = T> + std::ops::BitOrAssign + PartialEq + Default,
    >(
        seen: &mut T,
        field: T,
    ) -> Option<()> {
        if *seen & field != T::default() {
            return None;
        }
        *seen |= field;
        Some(())
    }

    /// Reads the object that comes next (not `null`), keeping its string (or `null`) members
    /// named `keys`, each at most once (`None` when one repeats, as serde's derive refuses it),
    /// and skipping the others.
    fn string_members<'a, const N: usize>(
        scanner: &mut Scanner<'a>,
        keys: [&[u8]; N],
    ) -> Option<[Option<Cow<'a, str>>; N]> {
        let mut values = std::array::from_fn(|_| None);
        let mut seen = 0u32;
        scanner.object(|scanner, key| match keys.iter().position(|k| *k == key) {
            Some(i) => {
                once(&mut seen, 1 << i)?;
                values[i] = scanner.string_or_null()?;
                Some(())
            }
            None => scanner.skip_value(),
        })?;
        Some(values)
    }

    /// The next value as a raw JSON text, `None` for `null`.
    fn raw_or_null<'a>(scanner: &mut Scanner<'a>) -> Option<Option<&'a str>> {
        if scanner.null()? {
            return Some(None);
        }
        scanner.raw().map(Some)
    }

    impl Usage {
        /// The usage object (or `null`) that comes next, as serde's derive reads it.
        fn scan(scanner: &mut Scanner<'_>) -> Option<Option<Self>> {
            if scanner.null()? {
                return Some(None);
            }
            let mut usage = Usage {
                prompt_tokens: None,
                completion_tokens: None,
                input_tokens: None,
                output_tokens: None,
            };
            let mut seen = 0u8;
            scanner.object(|scanner, key| {
                let (slot, field) = match key {
                    b"prompt_tokens" => (&mut usage.prompt_tokens, 1),
                    b"completion_tokens" => (&mut usage.completion_tokens, 2),
                    b"input_tokens" => (&mut usage.input_tokens, 4),
                    b"output_tokens" => (&mut usage.output_tokens, 8),
                    _ => return scanner.skip_value(),
                };
                once(&mut seen, field)?;
                *slot = scanner.u64_or_null()?;
                Some(())
            })?;
            Some(Some(usage))
        }
    }

    impl<'a> Summary<'a> {
        /// Reads `body` with the [scanner](super::super::scan): `None` when it is not sure to
        /// read what serde's derive reads.
        pub(super) fn scan(body: &'a [u8]) -> Option<Self> {
            let mut scanner = Scanner::new(body)?;
            let (mut model, mut usage) = (None, None);
            let mut seen = 0u8;
            scanner.object(|scanner, key| match key {
                b"model" => {
                    once(&mut seen, 1)?;
                    model = scanner.string_or_null()?;
                    Some(())
                }
                b"usage" => {
                    once(&mut seen, 2)?;
                    usage = Usage::scan(scanner)?;
                    Some(())
                }
                _ => scanner.skip_value(),
            })?;
            scanner.at_end().then_some(Summary { model, usage })
        }
    }

    impl<'a> AnthropicEvent<'a> {
        /// Reads `data` with the [scanner](super::super::scan): `None` when it is not sure to
        /// read what serde's derive reads.
        pub(super) fn scan(data: &'a [u8]) -> Option<Self> {
            let mut scanner = Scanner::new(data)?;
            let (mut kind, mut message, mut delta, mut usage) = (None, None, None, None);
            let mut seen = 0u8;
            scanner.object(|scanner, key| {
                match key {
                    b"type" => {
                        once(&mut seen, 1)?;
                        // A `null` type is refused by the derive, as a missing one is.
                        kind = Some(scanner.string_or_null()??);
                    }
                    b"message" => {
                        once(&mut seen, 2)?;
                        if scanner.null()? {
                            return Some(());
                        }
                        let (mut model, mut usage) = (None, None);
                        let mut seen = 0u8;
                        scanner.object(|scanner, key| {
                            match key {
                                b"model" => {
                                    once(&mut seen, 1)?;
                                    model = scanner.string_or_null()?;
                                }
                                b"usage" => {
                                    once(&mut seen, 2)?;
                                    usage = Usage::scan(scanner)?;
                                }
                                _ => return scanner.skip_value(),
                            }
                            Some(())
                        })?;
                        message = Some(AnthropicMessage { model, usage });
                    }
                    b"delta" => {
                        once(&mut seen, 4)?;
                        if scanner.null()? {
                            return Some(());
                        }
                        let [text, stop_reason] =
                            string_members(scanner, [b"text", b"stop_reason"])?;
                        delta = Some(AnthropicDelta { text, stop_reason });
                    }
                    b"usage" => {
                        once(&mut seen, 8)?;
                        usage = Usage::scan(scanner)?;
                    }
                    _ => return scanner.skip_value(),
                }
                Some(())
            })?;
            if !scanner.at_end() {
                return None;
            }
            Some(AnthropicEvent {
                kind: kind?,
                message,
                delta,
                usage,
            })
        }
    }

    /// Reads the whole answer `body` of a call to `api` with the
    /// [scanner](super::super::scan) into `answer`, as [`Document`] reads it: `false` (and
    /// `answer` untouched) when it is not sure to.
    pub(super) fn scan_document(
        api: Api,
        body: &Bytes,
        answer: &mut Answer,
        keep_output: bool,
    ) -> bool {
        let Some(mut scanner) = Scanner::new(body) else {
            return false;
        };
        let chat_output = keep_output && api == Api::ChatCompletions;
        let (mut model, mut usage, mut status, mut output, mut stop_reason) =
            (None, None, None, None, None);
        // Chat completions: whether `choices` is there, the first one's finish reason, and
        // the output (`[` and the messages so far, or nothing when there are none yet).
        let (mut choices, mut first_finish, mut messages) = (false, None, Vec::new());
        // Anthropic messages: the text of the content blocks.
        let mut text = String::new();
        let mut seen = 0u8;
        let read = scanner.object(|scanner, key| {
            match key {
                b"model" => {
                    once(&mut seen, 1)?;
                    model = scanner.string_or_null()?;
                }
                b"usage" => {
                    once(&mut seen, 2)?;
                    usage = Usage::scan(scanner)?;
                }
                b"choices" => {
                    once(&mut seen, 4)?;
                    if scanner.null()? {
                        return Some(());
                    }
                    choices = true;
                    let mut at_first = true;
                    scanner.array(|scanner| {
                        let (mut finish, mut message) = (None, None);
                        let mut seen = 0u8;
                        scanner.object(|scanner, key| {
                            match key {
                                b"finish_reason" => {
                                    once(&mut seen, 1)?;
                                    finish = scanner.string_or_null()?;
                                }
                                b"message" => {
                                    once(&mut seen, 2)?;
                                    message = raw_or_null(scanner)?;
                                }
                                _ => return scanner.skip_value(),
                            }
                            Some(())
                        })?;
                        if mem::take(&mut at_first) {
                            first_finish = finish;
                        }
                        if let (Some(message), true) = (message, chat_output) {
                            if messages.is_empty() {
                                // Exact for the usual single choice.
                                messages.reserve(message.len() + 2);
                                messages.push(b'[');
                            } else {
                                messages.push(b',');
                            }
                            messages.extend_from_slice(message.as_bytes());
                        }
                        Some(())
                    })?;
                }
                b"status" => {
                    once(&mut seen, 8)?;
                    status = scanner.string_or_null()?;
                }
                b"output" => {
                    once(&mut seen, 16)?;
                    output = raw_or_null(scanner)?;
                }
                b"stop_reason" => {
                    once(&mut seen, 32)?;
                    stop_reason = scanner.string_or_null()?;
                }
                b"content" => {
                    once(&mut seen, 64)?;
                    if scanner.null()? {
                        return Some(());
                    }
                    let keep_text = keep_output && api == Api::AnthropicMessages;
                    scanner.array(|scanner| {
                        let [block] = string_members(scanner, [b"text"])?;
                        if let (Some(block), true) = (block, keep_text) {
                            text.push_str(&block);
                        }
                        Some(())
                    })?;
                }
                _ => return scanner.skip_value(),
            }
            Some(())
        });
        if read.is_none() || !scanner.at_end() {
            return false;
        }
        set(&mut answer.model, model);
        if let Some(usage) = usage {
            usage.read(answer);
        }
        match api {
            Api::ChatCompletions => {
                if !choices {
                    return true;
                }
                set(&mut answer.stop_reason, first_finish);
                if keep_output {
                    if messages.is_empty() {
                        messages.push(b'[');
                    }
                    messages.push(b']');
                    answer.output = Some(Bytes::from(messages));
                }
            }
            Api::Embeddings => {}
            Api::Responses => {
                set(&mut answer.stop_reason, status);
                if keep_output {
                    answer.output = output.map(|o| share(body, o));
                }
            }
            Api::AnthropicMessages => {
                set(&mut answer.stop_reason, stop_reason);
                if keep_output {
                    answer.output = Some(super::assistant_message(&text));
                }
            }
        }
        true
    }
}

fn set_str(slot: &mut Option<String>, value: Option<&Value>) {
    if let Some(text) = value.and_then(Value::as_str) {
        *slot = Some(text.to_owned());
    }
}

fn push_text(answer: &mut Answer, value: Option<&Value>) {
    if let Some(text) = value.and_then(Value::as_str) {
        if answer.text.len() + text.len() <= MAX_OUTPUT_TEXT {
            answer.text.push_str(text);
        }
    }
}

/// OpenAI's usage: `prompt_tokens`/`completion_tokens` (chat, embeddings) or
/// `input_tokens`/`output_tokens` (responses).
fn read_openai_usage(answer: &mut Answer, usage: Option<&Value>) {
    let Some(usage) = usage.filter(|u| u.is_object()) else {
        return;
    };
    let input = usage
        .get("prompt_tokens")
        .or_else(|| usage.get("input_tokens"));
    if let Some(n) = input.and_then(Value::as_u64) {
        answer.input_tokens = Some(n);
    }
    let output = usage
        .get("completion_tokens")
        .or_else(|| usage.get("output_tokens"));
    if let Some(n) = output.and_then(Value::as_u64) {
        answer.output_tokens = Some(n);
    }
}

/// Anthropic's usage: `input_tokens` (with `message_start`), `output_tokens` (the last
/// `message_delta` holds the total).
fn read_anthropic_usage(answer: &mut Answer, usage: Option<&Value>) {
    let Some(usage) = usage else {
        return;
    };
    if let Some(n) = usage.get("input_tokens").and_then(Value::as_u64) {
        answer.input_tokens = Some(n);
    }
    if let Some(n) = usage.get("output_tokens").and_then(Value::as_u64) {
        answer.output_tokens = Some(n);
    }
}

/// Not public API: lets `benches/ai_layer.rs` time what [`AiLayer`](super::AiLayer) reads of a
/// call (its request, and its JSON answer), without building or capturing the event.
#[cfg(feature = "__bench")]
#[doc(hidden)]
pub fn bench_read_chat_call(request: &Bytes, answer: &Bytes) -> usize {
    let (info, _) = read_request(Api::ChatCompletions, request, false, false);
    let mut reader = AnswerReader::new(Api::ChatCompletions, false, true);
    reader.feed(answer);
    reader.finish(false);
    info.input.map_or(0, |i| i.len()) + reader.answer.output.map_or(0, |o| o.len())
}

#[cfg(any(test, fuzzing))]
mod differential;

/// Not public API: reads `doc` with the scanner's readers and with serde's derive, and panics
/// where they disagree (the `llm_scan` fuzz target).
#[cfg(fuzzing)]
pub(crate) fn differential_check(doc: &[u8]) {
    differential::check(doc, &mut Default::default());
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Nesting 10 000 deep in what is read, on a 2 MiB stack in a debug build: the scanner
    /// declines it (deeper than its 128 levels) and `serde_json` skips it without recursion,
    /// so the request's input and the answer's output are still read.
    #[test]
    fn nesting_ten_thousand_deep_on_a_small_stack() {
        let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
        let run = move || {
            let body = Bytes::from(format!(r#"{{"model":"m","messages":{deep}}}"#));
            let (info, _) = read_request(Api::ChatCompletions, &body, false, false);
            assert_eq!(info.input.as_deref(), Some(deep.as_bytes()));
            let answer = format!(r#"{{"model":"m","choices":[{{"message":{deep}}}]}}"#);
            for api in [
                Api::ChatCompletions,
                Api::Responses,
                Api::Embeddings,
                Api::AnthropicMessages,
            ] {
                let mut reader = AnswerReader::new(api, false, true);
                feed(&mut reader, answer.as_bytes());
                reader.finish(false);
                assert_eq!(reader.answer.model.as_deref(), Some("m"), "{api:?}");
                if api == Api::ChatCompletions {
                    assert_eq!(
                        reader.answer.output.as_deref().map(<[u8]>::len),
                        Some(deep.len() + 2)
                    );
                }
                let mut reader = AnswerReader::new(api, true, true);
                feed(
                    &mut reader,
                    format!(
                        "data: {{\"type\":\"message_start\",\"model\":\"m\",\"x\":{deep}}}\n\n"
                    )
                    .as_bytes(),
                );
                reader.finish(false);
                let mut reader = AnswerReader::new(api, false, true);
                feed(&mut reader, deep.as_bytes());
                reader.finish(true);
            }
        };
        std::thread::Builder::new()
            .stack_size(2 << 20)
            .spawn(run)
            .unwrap()
            .join()
            .unwrap();
    }

    fn feed(reader: &mut AnswerReader, data: &[u8]) {
        reader.feed(&Bytes::copy_from_slice(data));
    }

    fn parsed(json: &Option<Bytes>) -> Option<Value> {
        json.as_ref().map(|j| serde_json::from_slice(j).unwrap())
    }

    fn uri(text: &str) -> Uri {
        text.parse().unwrap()
    }

    #[test]
    fn recognizes_the_apis_and_their_base_urls() {
        let post = Method::POST;
        assert_eq!(
            recognize(&post, &uri("https://api.openai.com/v1/chat/completions")),
            Some((Api::ChatCompletions, "https://api.openai.com/v1".to_owned()))
        );
        assert_eq!(
            recognize(&post, &uri("http://127.0.0.1:8080/openai/v1/responses")).map(|r| r.0),
            Some(Api::Responses)
        );
        assert_eq!(
            recognize(&post, &uri("https://api.openai.com/v1/embeddings")).map(|r| r.0),
            Some(Api::Embeddings)
        );
        assert_eq!(
            recognize(&post, &uri("https://api.anthropic.com/v1/messages")),
            Some((
                Api::AnthropicMessages,
                "https://api.anthropic.com".to_owned()
            ))
        );
        assert_eq!(recognize(&post, &uri("https://x.com/chat/messages")), None);
        assert_eq!(
            recognize(&Method::GET, &uri("https://x.com/v1/responses")),
            None
        );
    }

    #[test]
    fn include_usage_is_added_only_when_asked_and_missing() {
        let body = json!({"model": "m", "stream": true, "messages": []}).to_string();
        let (info, rewritten) = read_request(
            Api::ChatCompletions,
            &Bytes::from(body.clone()),
            true,
            false,
        );
        assert!(info.stream);
        let rewritten: Value = serde_json::from_slice(&rewritten.unwrap()).unwrap();
        assert_eq!(rewritten["stream_options"]["include_usage"], true);
        assert_eq!(rewritten["model"], "m");
        let (_, untouched) = read_request(Api::ChatCompletions, &Bytes::from(body), false, false);
        assert!(untouched.is_none());
        let asked = json!({"stream": true, "stream_options": {"include_usage": false}});
        let (_, untouched) = read_request(
            Api::ChatCompletions,
            &Bytes::from(asked.to_string()),
            true,
            false,
        );
        assert!(untouched.is_none(), "the caller's own choice stands");
    }

    #[test]
    fn a_stream_is_read_across_split_chunks() {
        let mut reader = AnswerReader::new(Api::ChatCompletions, true, true);
        let stream = concat!(
            "data: {\"model\":\"gpt-x\",\"choices\":[{\"delta\":{\"content\":\"Hel\"}}]}\n\n",
            "data: {\"choices\":[{\"delta\":{\"content\":\"lo\"},\"finish_reason\":\"stop\"}]}\n\n",
            "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":2}}\n\n",
            "data: [DONE]\n\n"
        );
        for piece in stream.as_bytes().chunks(7) {
            feed(&mut reader, piece);
        }
        reader.finish(false);
        let answer = reader.answer;
        assert_eq!(answer.model.as_deref(), Some("gpt-x"));
        assert_eq!(answer.text, "Hello");
        assert_eq!(answer.stop_reason.as_deref(), Some("stop"));
        assert_eq!(
            (answer.input_tokens, answer.output_tokens),
            (Some(5), Some(2))
        );
    }

    #[test]
    fn an_anthropic_stream_and_document() {
        let mut reader = AnswerReader::new(Api::AnthropicMessages, true, true);
        feed(&mut reader, b"event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"model\":\"claude\",\"usage\":{\"input_tokens\":11,\"output_tokens\":1}}}\n\n");
        feed(&mut reader, b"data: {\"type\":\"content_block_delta\",\"delta\":{\"type\":\"text_delta\",\"text\":\"Hi\"}}\n\n");
        feed(&mut reader, b"data: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":7}}\n");
        reader.finish(false);
        let answer = reader.answer;
        assert_eq!(
            (answer.input_tokens, answer.output_tokens),
            (Some(11), Some(7))
        );
        assert_eq!(answer.text, "Hi");
        assert_eq!(answer.stop_reason.as_deref(), Some("end_turn"));

        let mut reader = AnswerReader::new(Api::AnthropicMessages, false, true);
        feed(&mut reader, json!({"model": "claude", "content": [{"type": "text", "text": "Yes"}], "stop_reason": "end_turn", "usage": {"input_tokens": 3, "output_tokens": 1}}).to_string().as_bytes());
        reader.finish(false);
        assert_eq!(
            parsed(&reader.answer.output),
            Some(json!([{"role": "assistant", "content": "Yes"}]))
        );
        assert_eq!(reader.answer.input_tokens, Some(3));
    }

    #[test]
    fn a_responses_stream_and_document() {
        let mut reader = AnswerReader::new(Api::Responses, true, true);
        feed(&mut reader, b"event: response.output_text.delta\ndata: {\"type\":\"response.output_text.delta\",\"delta\":\"Bon\"}\n\n");
        feed(
            &mut reader,
            b"data: {\"type\":\"response.output_text.delta\",\"delta\":\"jour\"}\n\n",
        );
        feed(&mut reader, b"data: {\"type\":\"response.completed\",\"response\":{\"model\":\"gpt-4.1\",\"status\":\"completed\",\"usage\":{\"input_tokens\":6,\"output_tokens\":2}}}\n\n");
        reader.finish(false);
        let answer = reader.answer;
        assert_eq!(answer.text, "Bonjour");
        assert_eq!(answer.model.as_deref(), Some("gpt-4.1"));
        assert_eq!(
            (answer.input_tokens, answer.output_tokens),
            (Some(6), Some(2))
        );

        let mut reader = AnswerReader::new(Api::Embeddings, false, true);
        feed(&mut reader, br#"{"model":"text-embedding-3-small","data":[{"embedding":[0.1]}],"usage":{"prompt_tokens":4,"total_tokens":4}}"#);
        reader.finish(false);
        assert_eq!(reader.answer.input_tokens, Some(4));
        assert_eq!(reader.answer.output, None, "embeddings have no output");
    }

    /// Chat chunks with escapes, nulls and unknown fields are read like any other.
    #[test]
    fn chat_chunks_with_escapes_and_nulls() {
        let mut reader = AnswerReader::new(Api::ChatCompletions, true, true);
        feed(&mut reader, b"data: {\"id\":\"x\",\"model\":\"m\",\"system_fingerprint\":null,\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"say \\\"hi\\\"\\n\"},\"logprobs\":null,\"finish_reason\":null}],\"usage\":null}\n\n");
        reader.finish(false);
        assert_eq!(reader.answer.text, "say \"hi\"\n");
        assert_eq!(reader.answer.stop_reason, None);
    }

    #[test]
    fn an_error_answer_is_kept_for_ai_error() {
        let mut reader = AnswerReader::new(Api::ChatCompletions, false, true);
        feed(
            &mut reader,
            br#"{"error":{"message":"Rate limit","type":"rate_limit"}}"#,
        );
        reader.finish(true);
        assert_eq!(reader.answer.error.unwrap()["message"], "Rate limit");
    }

    fn request(api: Api, body: Value) -> RequestInfo {
        read_request(api, &Bytes::from(body.to_string()), false, false).0
    }

    #[test]
    fn request_inputs_and_parameters_are_the_requests_json() {
        let info = request(
            Api::ChatCompletions,
            json!({"model": "m", "temperature": 0.5, "stream": false, "stop": ["x"], "user": "u",
                   "messages": [{"role": "user", "content": "Hi"}]}),
        );
        assert_eq!(info.model.as_deref(), Some("m"));
        assert!(!info.stream);
        assert_eq!(
            parsed(&info.input),
            Some(json!([{"role": "user", "content": "Hi"}]))
        );
        let parameters: Value =
            serde_json::from_slice(info.parameters.as_deref().unwrap()).unwrap();
        assert_eq!(
            parameters,
            json!({"temperature": 0.5, "stop": ["x"], "stream": false})
        );

        let info = request(
            Api::Responses,
            json!({"model": "m", "instructions": "Be brief.", "input": "Hi"}),
        );
        assert_eq!(
            parsed(&info.input),
            Some(
                json!([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}])
            )
        );
        let info = request(Api::Responses, json!({"input": "Hi"}));
        assert_eq!(
            parsed(&info.input),
            Some(json!([{"role": "user", "content": "Hi"}]))
        );
        assert!(info.parameters.is_none());
        let info = request(
            Api::Responses,
            json!({"instructions": "S", "input": [{"role": "user", "content": "Q"}]}),
        );
        assert_eq!(
            parsed(&info.input),
            Some(json!([{"role": "system", "content": "S"}, {"role": "user", "content": "Q"}]))
        );
        let info = request(
            Api::AnthropicMessages,
            json!({"system": [{"type": "text", "text": "S"}], "messages": []}),
        );
        assert_eq!(
            parsed(&info.input),
            Some(json!([{"role": "system", "content": [{"type": "text", "text": "S"}]}]))
        );
        let info = request(Api::Embeddings, json!({"input": ["a", "b"], "model": "e"}));
        assert_eq!(parsed(&info.input), Some(json!(["a", "b"])));
        // Privacy mode reads no input; a body that is no object gives nothing.
        let body = Bytes::from(json!({"messages": [1]}).to_string());
        assert!(read_request(Api::ChatCompletions, &body, false, true)
            .0
            .input
            .is_none());
        let (info, _) = read_request(Api::ChatCompletions, &Bytes::from("[1, 2]"), false, false);
        assert!(info.model.is_none() && info.input.is_none());
    }

    #[test]
    fn a_chat_answer_in_pieces_or_whole_and_one_that_does_not_fit_the_structs() {
        let answer = json!({"model": "gpt", "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "A"}, "finish_reason": "stop"},
            {"index": 1, "message": {"role": "assistant", "content": "B"}, "finish_reason": "length"}
        ], "usage": {"prompt_tokens": 3, "completion_tokens": 4, "prompt_tokens_details": {"cached_tokens": 0}}})
        .to_string();
        let expected =
            json!([{"role": "assistant", "content": "A"}, {"role": "assistant", "content": "B"}]);
        for pieces in [1, 5] {
            let mut reader = AnswerReader::new(Api::ChatCompletions, false, true);
            for piece in answer.as_bytes().chunks(answer.len().div_ceil(pieces)) {
                feed(&mut reader, piece);
            }
            reader.finish(false);
            let a = reader.answer;
            assert_eq!(parsed(&a.output), Some(expected.clone()), "{pieces} pieces");
            assert_eq!((a.input_tokens, a.output_tokens), (Some(3), Some(4)));
            assert_eq!(a.stop_reason.as_deref(), Some("stop"));
            assert_eq!(a.model.as_deref(), Some("gpt"));
        }
        // Token counts that are not integers: read through a `Value`, what fits is kept.
        let odd = json!({"model": "gpt", "usage": {"prompt_tokens": 2.5, "completion_tokens": 1},
                         "choices": [{"message": {"content": "C"}}]});
        let mut reader = AnswerReader::new(Api::ChatCompletions, false, true);
        feed(&mut reader, odd.to_string().as_bytes());
        reader.finish(false);
        assert_eq!(reader.answer.output_tokens, Some(1));
        assert_eq!(reader.answer.input_tokens, None);
        assert_eq!(
            parsed(&reader.answer.output),
            Some(json!([{"content": "C"}]))
        );
    }
}
