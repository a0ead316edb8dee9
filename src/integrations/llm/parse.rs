//! What [`AiLayer`](super::AiLayer) reads of an LLM call: the API a request goes to, the
//! request's model, input and parameters, and the answer's model, usage, output and stop
//! reason, from a JSON body or from a server-sent event stream read as it passes.

use bytes::Bytes;
use http::{Method, Uri};
use serde_json::{Map, Value};

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
        (Some(scheme), Some(authority)) => format!("{scheme}://{authority}{prefix}"),
        _ => prefix.to_owned(),
    };
    Some((api, base_url))
}

/// What the request says.
#[derive(Debug, Default)]
pub(crate) struct RequestInfo {
    pub(crate) model: Option<String>,
    pub(crate) stream: bool,
    /// `$ai_input` (`None` in privacy mode).
    pub(crate) input: Option<Value>,
    /// `$ai_model_parameters`.
    pub(crate) parameters: Map<String, Value>,
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

/// Reads the request body of a call to `api`. With `include_usage`, an OpenAI chat stream that
/// does not ask for usage is made to (`stream_options.include_usage`): the rewritten body is
/// returned. A body that is not a JSON object gives an empty [`RequestInfo`] and is not
/// changed.
pub(crate) fn read_request(
    api: Api,
    body: &[u8],
    include_usage: bool,
    privacy_mode: bool,
) -> (RequestInfo, Option<Bytes>) {
    let Ok(Value::Object(mut request)) = serde_json::from_slice::<Value>(body) else {
        return (RequestInfo::default(), None);
    };
    let stream = request.get("stream") == Some(&Value::Bool(true));
    let mut info = RequestInfo {
        model: request
            .get("model")
            .and_then(Value::as_str)
            .map(str::to_owned),
        stream,
        input: None,
        parameters: PARAMETERS
            .iter()
            .filter_map(|key| Some(((*key).to_owned(), request.get(*key)?.clone())))
            .collect(),
    };
    let mut rewritten = None;
    if include_usage && stream && api == Api::ChatCompletions {
        let options = request
            .entry("stream_options")
            .or_insert_with(|| Value::Object(Map::new()));
        if let Value::Object(options) = options {
            if !options.contains_key("include_usage") {
                options.insert("include_usage".to_owned(), Value::Bool(true));
                rewritten = serde_json::to_vec(&request).ok().map(Bytes::from);
            }
        }
    }
    // After the rewrite: the input is moved out of the request, not copied.
    if !privacy_mode {
        info.input = match api {
            Api::ChatCompletions => request.remove("messages"),
            Api::Embeddings => request.remove("input"),
            Api::Responses => {
                let input = request.remove("input");
                match (request.remove("instructions"), input) {
                    (Some(instructions), Some(Value::String(text))) => Some(serde_json::json!([
                        {"role": "system", "content": instructions},
                        {"role": "user", "content": text},
                    ])),
                    (Some(instructions), Some(Value::Array(mut items))) => {
                        items.insert(
                            0,
                            serde_json::json!({"role": "system", "content": instructions}),
                        );
                        Some(Value::Array(items))
                    }
                    (_, Some(Value::String(text))) => {
                        Some(serde_json::json!([{"role": "user", "content": text}]))
                    }
                    (_, input) => input,
                }
            }
            Api::AnthropicMessages => {
                // posthog-python merges the system prompt in as the first message.
                let messages = request.remove("messages");
                match (request.remove("system"), messages) {
                    (Some(system), Some(Value::Array(mut items))) => {
                        items.insert(0, serde_json::json!({"role": "system", "content": system}));
                        Some(Value::Array(items))
                    }
                    (_, messages) => messages,
                }
            }
        };
    }
    (info, rewritten)
}

/// What the answer said, as far as it was read.
#[derive(Debug, Default)]
pub(crate) struct Answer {
    pub(crate) model: Option<String>,
    pub(crate) input_tokens: Option<u64>,
    pub(crate) output_tokens: Option<u64>,
    pub(crate) stop_reason: Option<String>,
    /// `$ai_output_choices` of a JSON answer.
    pub(crate) output: Option<Value>,
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
    /// The JSON document so far, or the current stream line.
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
            buffer: Vec::new(),
            overflowed: false,
            answer: Answer::default(),
        }
    }

    /// Reads the next piece of the body.
    pub(crate) fn feed(&mut self, mut data: &[u8]) {
        if !self.stream {
            if self.buffer.len() + data.len() > MAX_JSON_BODY {
                self.overflowed = true;
                self.buffer = Vec::new();
            }
            if !self.overflowed {
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
        if self.overflowed {
            return;
        }
        if self.stream {
            self.read_line(&buffer);
            return;
        }
        if self.api.is_embedding() && !is_error {
            // An embeddings answer is mostly its vectors: only the model and usage are read.
            if let Ok(summary) = serde_json::from_slice::<stream::Summary<'_>>(&buffer) {
                summary.read(&mut self.answer);
            }
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
        // The frequent streams are read into borrowed structs (what they do not name is
        // skipped unparsed); the others into a `Value`. A chunk that does not fit is skipped.
        match self.api {
            Api::ChatCompletions => {
                if let Ok(chunk) = serde_json::from_slice::<stream::ChatChunk<'_>>(data) {
                    chunk.read(&mut self.answer, self.keep_output);
                }
            }
            Api::AnthropicMessages => {
                if let Ok(event) = serde_json::from_slice::<stream::AnthropicEvent<'_>>(data) {
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

    /// A whole JSON answer.
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
                        Some(Value::Array(choices)) => Some(
                            choices
                                .into_iter()
                                .filter_map(|mut choice| choice.get_mut("message").map(Value::take))
                                .collect(),
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
                    answer.output = document.get_mut("output").map(Value::take);
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
                    answer.output = Some(serde_json::json!([
                        {"role": "assistant", "content": text}
                    ]));
                }
            }
        }
    }
}

/// The stream chunks read into borrowed structs: only the fields the event needs.
mod stream {
    use std::borrow::Cow;

    use serde::Deserialize;

    use super::{Answer, MAX_OUTPUT_TEXT};

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
        fn read(&self, answer: &mut Answer) {
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
                set(&mut answer.stop_reason, choice.finish_reason);
                if keep_output {
                    push(answer, choice.delta.and_then(|d| d.content));
                }
            }
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

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
        let (info, rewritten) = read_request(Api::ChatCompletions, body.as_bytes(), true, false);
        assert!(info.stream);
        let rewritten: Value = serde_json::from_slice(&rewritten.unwrap()).unwrap();
        assert_eq!(rewritten["stream_options"]["include_usage"], true);
        assert_eq!(rewritten["model"], "m");
        let (_, untouched) = read_request(Api::ChatCompletions, body.as_bytes(), false, false);
        assert!(untouched.is_none());
        let asked = json!({"stream": true, "stream_options": {"include_usage": false}});
        let (_, untouched) = read_request(
            Api::ChatCompletions,
            asked.to_string().as_bytes(),
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
            reader.feed(piece);
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
        reader.feed(b"event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"model\":\"claude\",\"usage\":{\"input_tokens\":11,\"output_tokens\":1}}}\n\n");
        reader.feed(b"data: {\"type\":\"content_block_delta\",\"delta\":{\"type\":\"text_delta\",\"text\":\"Hi\"}}\n\n");
        reader.feed(b"data: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":7}}\n");
        reader.finish(false);
        let answer = reader.answer;
        assert_eq!(
            (answer.input_tokens, answer.output_tokens),
            (Some(11), Some(7))
        );
        assert_eq!(answer.text, "Hi");
        assert_eq!(answer.stop_reason.as_deref(), Some("end_turn"));

        let mut reader = AnswerReader::new(Api::AnthropicMessages, false, true);
        reader.feed(json!({"model": "claude", "content": [{"type": "text", "text": "Yes"}], "stop_reason": "end_turn", "usage": {"input_tokens": 3, "output_tokens": 1}}).to_string().as_bytes());
        reader.finish(false);
        assert_eq!(
            reader.answer.output,
            Some(json!([{"role": "assistant", "content": "Yes"}]))
        );
        assert_eq!(reader.answer.input_tokens, Some(3));
    }

    #[test]
    fn a_responses_stream_and_document() {
        let mut reader = AnswerReader::new(Api::Responses, true, true);
        reader.feed(b"event: response.output_text.delta\ndata: {\"type\":\"response.output_text.delta\",\"delta\":\"Bon\"}\n\n");
        reader.feed(b"data: {\"type\":\"response.output_text.delta\",\"delta\":\"jour\"}\n\n");
        reader.feed(b"data: {\"type\":\"response.completed\",\"response\":{\"model\":\"gpt-4.1\",\"status\":\"completed\",\"usage\":{\"input_tokens\":6,\"output_tokens\":2}}}\n\n");
        reader.finish(false);
        let answer = reader.answer;
        assert_eq!(answer.text, "Bonjour");
        assert_eq!(answer.model.as_deref(), Some("gpt-4.1"));
        assert_eq!(
            (answer.input_tokens, answer.output_tokens),
            (Some(6), Some(2))
        );

        let mut reader = AnswerReader::new(Api::Embeddings, false, true);
        reader.feed(br#"{"model":"text-embedding-3-small","data":[{"embedding":[0.1]}],"usage":{"prompt_tokens":4,"total_tokens":4}}"#);
        reader.finish(false);
        assert_eq!(reader.answer.input_tokens, Some(4));
        assert_eq!(reader.answer.output, None, "embeddings have no output");
    }

    /// Chat chunks with escapes, nulls and unknown fields are read like any other.
    #[test]
    fn chat_chunks_with_escapes_and_nulls() {
        let mut reader = AnswerReader::new(Api::ChatCompletions, true, true);
        reader.feed(b"data: {\"id\":\"x\",\"model\":\"m\",\"system_fingerprint\":null,\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"say \\\"hi\\\"\\n\"},\"logprobs\":null,\"finish_reason\":null}],\"usage\":null}\n\n");
        reader.finish(false);
        assert_eq!(reader.answer.text, "say \"hi\"\n");
        assert_eq!(reader.answer.stop_reason, None);
    }

    #[test]
    fn an_error_answer_is_kept_for_ai_error() {
        let mut reader = AnswerReader::new(Api::ChatCompletions, false, true);
        reader.feed(br#"{"error":{"message":"Rate limit","type":"rate_limit"}}"#);
        reader.finish(true);
        assert_eq!(reader.answer.error.unwrap()["message"], "Rate limit");
    }
}
