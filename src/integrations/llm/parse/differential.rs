//! The scanner's readers against serde's derive: many generated JSON documents, valid and
//! not, read both ways. Where the scanner reads a document, serde must read it too and the
//! event's fields must be the same; where serde refuses one, the scanner must refuse it too.
//! The scanner may decline what serde reads (a repeated field, a key with escapes, nesting
//! deeper than 128, a number that is no plain `u64` where one is read, invalid UTF-8 in a
//! skipped value): serde then reads it, as before.

use bytes::Bytes;

use super::{stream, Answer, Api, RequestFields};

#[cfg(test)]
/// A small deterministic generator (xorshift64*), so a failure is reproduced by its seed.
struct Gen(u64);

#[cfg(test)]
impl Gen {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len())]
    }

    fn whitespace(&mut self, out: &mut String) {
        while self.chance(15) {
            out.push_str(self.pick(&[" ", "\t", "\n", "\r"]));
        }
    }

    fn string(&mut self, out: &mut String) {
        out.push('"');
        for _ in 0..self.below(6) {
            let piece = self.pick(&[
                "a",
                "stop",
                "gpt-4o",
                "é",
                "😀",
                " ",
                "\\\"",
                "\\\\",
                "\\/",
                "\\b",
                "\\f",
                "\\n",
                "\\r",
                "\\t",
                "\\u00e9",
                "\\u0041",
                "\\ud83d\\ude00",
                "\\uD83D\\uDE00",
                "\\u0000",
                "\\ud800",
                "\\udc00",
                "\\ud800\\u0041",
                "\\ud800x",
                "a long piece of text, longer than a word",
                "\u{1}",
                "\u{1f}",
                "\u{7f}",
                "\t",
            ]);
            out.push_str(piece);
        }
        out.push('"');
    }

    fn number(&mut self, out: &mut String) {
        out.push_str(self.pick(&[
            "0",
            "-0",
            "7",
            "42",
            "-45",
            "1.5",
            "0.25",
            "1e5",
            "1E-3",
            "2.5e+10",
            "-0.0e0",
            "18446744073709551615",
            "18446744073709551616",
            "99999999999999999999999",
            "1e400",
            "3.0",
        ]));
    }

    /// A value for the member `key`: shaped like what the readers want most of the time.
    fn member_value(&mut self, key: &str, out: &mut String, depth: usize) {
        let shaped = self.chance(75);
        match key {
            "prompt_tokens" | "completion_tokens" | "input_tokens" | "output_tokens" if shaped => {
                if self.chance(80) {
                    out.push_str(&self.below(100_000).to_string());
                } else {
                    self.number(out);
                }
            }
            "model" | "finish_reason" | "stop_reason" | "status" | "text" | "role" if shaped => {
                self.string(out)
            }
            "content" if shaped && self.chance(50) => self.string(out),
            "type" if shaped => out.push_str(&format!(
                "\"{}\"",
                self.pick(&[
                    "message_start",
                    "content_block_delta",
                    "message_delta",
                    "ping"
                ])
            )),
            "usage" | "message" | "delta" if shaped => self.object(out, depth + 1),
            "choices" | "content" | "messages" | "output" if shaped => {
                out.push('[');
                for i in 0..self.below(4) {
                    if i > 0 {
                        out.push(',');
                    }
                    self.whitespace(out);
                    self.object(out, depth + 2);
                    self.whitespace(out);
                }
                out.push(']');
            }
            _ => self.value(out, depth + 1),
        }
    }

    fn object(&mut self, out: &mut String, depth: usize) {
        const KEYS: [&str; 34] = [
            "model",
            "usage",
            "choices",
            "message",
            "finish_reason",
            "delta",
            "content",
            "text",
            "type",
            "stop_reason",
            "status",
            "output",
            "messages",
            "input",
            "instructions",
            "system",
            "temperature",
            "max_tokens",
            "top_p",
            "stream",
            "n",
            "stop",
            "prompt_tokens",
            "completion_tokens",
            "input_tokens",
            "output_tokens",
            "id",
            "role",
            "index",
            "logprobs",
            "x",
            "mod\\u0065l",
            "é",
            "",
        ];
        out.push('{');
        let mut used = Vec::new();
        for i in 0..self.below(if depth > 4 { 2 } else { 7 }) {
            if i > 0 {
                out.push(',');
            }
            self.whitespace(out);
            // A repeated key now and then.
            // Top-level objects often start with a type, as Anthropic's events do.
            let key = if i == 0 && depth == 0 && self.chance(40) {
                "type"
            } else if !used.is_empty() && self.chance(5) {
                used[self.below(used.len())]
            } else {
                self.pick(&KEYS)
            };
            used.push(key);
            out.push('"');
            out.push_str(key);
            out.push('"');
            self.whitespace(out);
            out.push(':');
            self.whitespace(out);
            self.member_value(key, out, depth);
            self.whitespace(out);
        }
        out.push('}');
    }

    fn value(&mut self, out: &mut String, depth: usize) {
        let kinds = if depth > 6 { 5 } else { 7 };
        match self.below(kinds) {
            0 => out.push_str(self.pick(&["null", "true", "false"])),
            1 | 2 => self.number(out),
            3 | 4 => self.string(out),
            5 => {
                out.push('[');
                for i in 0..self.below(4) {
                    if i > 0 {
                        out.push(',');
                    }
                    self.whitespace(out);
                    self.value(out, depth + 1);
                    self.whitespace(out);
                }
                out.push(']');
            }
            _ => self.object(out, depth + 1),
        }
    }

    /// A top-level document: an object, now and then deeply nested or something else.
    fn document(&mut self) -> Vec<u8> {
        let mut out = String::new();
        self.whitespace(&mut out);
        match self.below(40) {
            0 => self.value(&mut out, 0),
            1 => {
                let depth = 120 + self.below(20);
                out.push_str("{\"messages\":");
                out.push_str(&"[".repeat(depth));
                out.push_str(&"]".repeat(depth));
                out.push('}');
            }
            _ => self.object(&mut out, 0),
        }
        self.whitespace(&mut out);
        let mut bytes = out.into_bytes();
        // A third of them spoiled (or not: a change can leave it valid).
        match self.below(12) {
            0 => {
                let at = self.below(bytes.len() + 1);
                bytes.truncate(at);
            }
            1 => {
                let at = self.below(bytes.len() + 1);
                let bytes_to_insert = b"{}[],:\"\\0-.eE tnx\x01\xff";
                let byte = bytes_to_insert[self.below(bytes_to_insert.len())];
                bytes.insert(at, byte);
            }
            2 if !bytes.is_empty() => {
                let at = self.below(bytes.len());
                bytes.remove(at);
            }
            3 => bytes.extend_from_slice(self.pick(&["x", "}", ",", " {}", "\0"]).as_bytes()),
            _ => {}
        }
        bytes
    }
}

/// What [`check`] counts, per reader: request, document, summary, chat chunk, anthropic event.
pub(crate) type Tallies = [Tally; 5];

const APIS: [Api; 4] = [
    Api::ChatCompletions,
    Api::Responses,
    Api::Embeddings,
    Api::AnthropicMessages,
];

/// How often the scanner read, declined (serde read it) and refused (serde refused it too).
#[derive(Debug, Default)]
pub(crate) struct Tally {
    read: usize,
    declined: usize,
    refused: usize,
}

impl Tally {
    fn count(&mut self, name: &str, doc: &[u8], scanned: bool, parsed: bool) {
        let text = String::from_utf8_lossy(doc);
        assert!(
            parsed || !scanned,
            "{name}: the scanner read what serde refuses: {text}"
        );
        match (scanned, parsed) {
            (true, _) => self.read += 1,
            (false, true) => self.declined += 1,
            (false, false) => self.refused += 1,
        }
    }
}

fn same_answer(a: &Answer, b: &Answer) -> bool {
    a.model == b.model
        && a.input_tokens == b.input_tokens
        && a.output_tokens == b.output_tokens
        && a.stop_reason == b.stop_reason
        && a.output == b.output
        && a.text == b.text
        && a.error == b.error
}

/// Reads `doc` both ways with every reader and panics where they disagree.
pub(crate) fn check(doc: &[u8], tallies: &mut Tallies) {
    let text = String::from_utf8_lossy(doc);

    let scanned = RequestFields::scan(doc);
    let parsed = RequestFields::parse(doc);
    tallies[0].count("request", doc, scanned.is_some(), parsed.is_some());
    if let (Some(s), Some(p)) = (&scanned, &parsed) {
        assert_eq!(s, p, "request: {text}");
    }

    let body = Bytes::copy_from_slice(doc);
    let serde_document = serde_json::from_slice::<stream::Document<'_>>(doc);
    let mut document_read = false;
    for api in APIS {
        for keep_output in [true, false] {
            let mut scanned = Answer::default();
            let read = stream::scan_document(api, &body, &mut scanned, keep_output);
            document_read |= read;
            if read {
                let mut parsed = Answer::default();
                let document = serde_json::from_slice::<stream::Document<'_>>(doc)
                    .unwrap_or_else(|e| panic!("document: serde refuses ({e}) {text}"));
                document.read(api, &body, &mut parsed, keep_output);
                assert!(
                    same_answer(&scanned, &parsed),
                    "document {api:?}: {scanned:?} != {parsed:?}: {text}"
                );
            } else {
                assert_eq!(scanned.model, None, "untouched when declined");
            }
        }
    }
    tallies[1].count("document", doc, document_read, serde_document.is_ok());

    let scanned = stream::Summary::scan(doc);
    let parsed = serde_json::from_slice::<stream::Summary<'_>>(doc);
    tallies[2].count("summary", doc, scanned.is_some(), parsed.is_ok());
    if let (Some(s), Ok(p)) = (scanned, parsed) {
        let (mut a, mut b) = (Answer::default(), Answer::default());
        s.read(&mut a);
        p.read(&mut b);
        assert!(same_answer(&a, &b), "summary: {a:?} != {b:?}: {text}");
    }

    let parsed = serde_json::from_slice::<stream::ChatChunk<'_>>(doc).is_ok();
    let mut chunk_read = false;
    for keep_output in [true, false] {
        // Read onto an answer that holds something already, as in a stream.
        let start = || Answer {
            model: Some("before".to_owned()),
            text: "so far ".to_owned(),
            ..Answer::default()
        };
        let mut a = start();
        let read = stream::ChatChunk::scan(doc, &mut a, keep_output);
        chunk_read |= read;
        if read {
            let mut b = start();
            serde_json::from_slice::<stream::ChatChunk<'_>>(doc)
                .unwrap_or_else(|e| panic!("chunk: serde refuses ({e}) {text}"))
                .read(&mut b, keep_output);
            assert!(same_answer(&a, &b), "chat chunk: {a:?} != {b:?}: {text}");
        } else {
            assert!(same_answer(&a, &start()), "untouched when declined");
        }
    }
    tallies[3].count("chat chunk", doc, chunk_read, parsed);

    let scanned = stream::AnthropicEvent::scan(doc).is_some();
    let parsed = serde_json::from_slice::<stream::AnthropicEvent<'_>>(doc).is_ok();
    tallies[4].count("anthropic event", doc, scanned, parsed);
    if scanned {
        for keep_output in [true, false] {
            let (mut a, mut b) = (Answer::default(), Answer::default());
            let scan = stream::AnthropicEvent::scan(doc);
            let parse = serde_json::from_slice::<stream::AnthropicEvent<'_>>(doc);
            let (Some(scan), Ok(parse)) = (scan, parse) else {
                panic!("anthropic event: read once, refused later: {text}");
            };
            scan.read(&mut a, keep_output);
            parse.read(&mut b, keep_output);
            assert!(
                same_answer(&a, &b),
                "anthropic event: {a:?} != {b:?}: {text}"
            );
        }
    }
}

#[cfg(test)]
#[test]
fn the_scanner_reads_what_serde_reads_and_refuses_what_it_refuses() {
    let mut tallies = Tallies::default();
    let mut generator = Gen(0x9e37_79b9_7f4a_7c15);
    for _ in 0..20_000 {
        let doc = generator.document();
        check(&doc, &mut tallies);
    }
    for (name, tally) in [
        "request",
        "document",
        "summary",
        "chat chunk",
        "anthropic event",
    ]
    .iter()
    .zip(&tallies)
    {
        // The comparison means something only if both ways read many documents, and the
        // invalid ones are many too.
        assert!(
            tally.read > 5 * tally.declined && tally.read > 2_000 && tally.refused > 2_000,
            "{name}: {tally:?}"
        );
    }
}

#[cfg(test)]
#[test]
fn hand_picked_documents_agree() {
    let mut tallies = Tallies::default();
    for doc in [
        r#"{"model":"m","model":"n"}"#,
        r#"{"model":null,"model":"n"}"#,
        r#"{"mod\u0065l":"m"}"#,
        r#"{"model":"\ud800"}"#,
        r#"{"x":"\ud800"}"#,
        r#"{"model":"a\ud83d\ude00b\u00e9","usage":{"prompt_tokens":1,"prompt_tokens":2}}"#,
        r#"{"usage":{"prompt_tokens":1.0}}"#,
        r#"{"usage":{"prompt_tokens":-1}}"#,
        r#"{"usage":{"prompt_tokens":18446744073709551616}}"#,
        r#"{"usage":[1,2,3,4]}"#,
        r#"{"choices":[null]}"#,
        r#"{"choices":[["stop",{"role":"assistant"}]]}"#,
        r#"{"choices":[{"message":null,"finish_reason":"stop"},{"message":{"a":1}}]}"#,
        r#"{"choices":[]}"#,
        r#"{"choices":null,"output":null,"content":null}"#,
        r#"{"type":null}"#,
        r#"{"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":7}}"#,
        "{\"x\":\"\u{1}\"}",
        "{\"x\":\"\\u00\"}",
        "{\"x\":1}x",
        "{\"x\":1} ",
        "{\"x\":1}\u{c}",
        "\u{c}{\"x\":1}",
        "{\"x\":01}",
        "{\"x\":[1,]}",
        "{\"x\":1,}",
        "{}",
        "[]",
        "",
        "{",
    ] {
        check(doc.as_bytes(), &mut tallies);
    }
    check(b"{\"x\":\"\xff\"}", &mut tallies);
    check(b"{\"model\":\"\xff\"}", &mut tallies);
}
