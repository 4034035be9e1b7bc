//! LLM token accounting from OpenAI-shaped responses, fed chunk by chunk as the response
//! streams to the client, so streaming is never delayed or fully buffered for accounting.

use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Value;
use std::borrow::Cow;

/// Most bytes kept from a JSON response (or one SSE line) for accounting; larger bodies
/// still stream to the client but are not accounted.
const MAX_KEEP: usize = 1 << 20;

/// Tokens one LLM call consumed, as the provider reported them.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct Usage {
    /// Tokens in the request (`prompt_tokens`, or `input_tokens`).
    pub prompt_tokens: u64,
    /// Tokens generated (`completion_tokens`, or `output_tokens`).
    pub completion_tokens: u64,
    /// As reported, or the sum of the two when the provider leaves it out.
    pub total_tokens: u64,
}

enum Mode {
    /// `application/json`: keep the body (up to [`MAX_KEEP`]) and parse it at the end.
    Json { buf: Vec<u8>, overflow: bool },
    /// `text/event-stream`: parse `data:` lines as they complete.
    Sse { line: Vec<u8>, skipping: bool },
    /// Anything else: nothing to account.
    Ignore,
}

/// Extracts `model` and `usage` from a response body fed in chunks.
///
/// Exists so the access log can say which model answered and how many tokens it cost, for both
/// plain JSON completions and SSE streams (where usage arrives in the last chunk when the
/// client asked for `stream_options.include_usage`).
pub struct UsageParser {
    mode: Mode,
    model: Option<String>,
    usage: Option<Usage>,
    /// Characters of generated text seen (`choices[].delta.content` / `message.content`),
    /// for estimating usage when the provider reports none.
    completion_chars: u64,
}

impl UsageParser {
    /// Picks the parsing mode from the response's `Content-Type`; other types are ignored.
    pub fn new(content_type: Option<&str>) -> Self {
        let media = content_type
            .and_then(|c| c.split(';').next())
            .map(|m| m.trim().to_ascii_lowercase())
            .unwrap_or_default();
        let mode = match media.as_str() {
            "application/json" => Mode::Json {
                buf: Vec::new(),
                overflow: false,
            },
            "text/event-stream" => Mode::Sse {
                line: Vec::new(),
                skipping: false,
            },
            _ => Mode::Ignore,
        };
        Self {
            mode,
            model: None,
            usage: None,
            completion_chars: 0,
        }
    }

    /// Characters of generated content seen so far (valid once the body has been fed; the
    /// last unterminated SSE line is only counted by [`UsageParser::finish`]).
    pub fn completion_chars(&self) -> u64 {
        self.completion_chars
    }

    /// Like [`UsageParser::finish`], also returning the generated characters counted.
    pub fn finish_with_chars(mut self) -> (Option<String>, Option<Usage>, u64) {
        self.finish_mode();
        (self.model, self.usage, self.completion_chars)
    }

    /// Feeds the next chunk of the response body, in order.
    pub fn feed(&mut self, chunk: &[u8]) {
        match &mut self.mode {
            Mode::Ignore => {}
            Mode::Json { buf, overflow } => {
                if *overflow || buf.len() + chunk.len() > MAX_KEEP {
                    *overflow = true;
                    buf.clear();
                } else {
                    buf.extend_from_slice(chunk);
                }
            }
            Mode::Sse { line, skipping } => {
                let mut rest = chunk;
                let mut complete: Vec<Vec<u8>> = Vec::new();
                while let Some(i) = rest.iter().position(|&b| b == b'\n') {
                    if !*skipping && line.len() + i <= MAX_KEEP {
                        line.extend_from_slice(&rest[..i]);
                        complete.push(std::mem::take(line));
                    }
                    line.clear();
                    *skipping = false;
                    rest = &rest[i + 1..];
                }
                if !*skipping {
                    if line.len() + rest.len() > MAX_KEEP {
                        line.clear();
                        *skipping = true;
                    } else {
                        line.extend_from_slice(rest);
                    }
                }
                for l in complete {
                    self.sse_line(&l);
                }
            }
        }
    }

    /// Ends the body and returns the model and the usage seen, if any.
    pub fn finish(mut self) -> (Option<String>, Option<Usage>) {
        self.finish_mode();
        (self.model, self.usage)
    }

    fn finish_mode(&mut self) {
        match std::mem::replace(&mut self.mode, Mode::Ignore) {
            Mode::Json {
                buf,
                overflow: false,
            } => {
                self.observe(&buf);
            }
            Mode::Sse {
                line,
                skipping: false,
            } if !line.is_empty() => self.sse_line(&line),
            _ => {}
        }
    }

    fn sse_line(&mut self, line: &[u8]) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(data) = line.strip_prefix(b"data:") else {
            return;
        };
        let data = data.strip_prefix(b" ").unwrap_or(data);
        if data.trim_ascii() == b"[DONE]" {
            return;
        }
        self.observe(data);
    }

    /// Takes the model, usage and generated characters from one JSON document (a whole
    /// response or one SSE event). Only those three fields are decoded; the rest is skipped
    /// without building a tree, and a field of an unexpected shape is ignored on its own.
    fn observe(&mut self, json: &[u8]) {
        let Ok(doc) = serde_json::from_slice::<Document>(json) else {
            return;
        };
        if let Some(m) = doc
            .model
            .and_then(|m| serde_json::from_str::<Cow<str>>(m.get()).ok())
            .filter(|m| !m.is_empty())
        {
            self.model = Some(m.into_owned());
        }
        if let Some(u) = doc
            .usage
            .and_then(|u| serde_json::from_str::<Value>(u.get()).ok())
            .and_then(|u| parse_usage(&u))
        {
            self.usage = Some(u);
        }
        // Characters only matter for estimating usage the provider left out: once it has
        // reported usage, the generated text is not decoded again.
        if self.usage.is_some() {
            return;
        }
        let choices = doc
            .choices
            .and_then(|c| serde_json::from_str::<Vec<Choice>>(c.get()).ok());
        for c in choices.iter().flatten() {
            let content = c
                .delta
                .as_ref()
                .and_then(|d| d.content)
                .or_else(|| c.message.as_ref().and_then(|m| m.content));
            self.completion_chars += content.map_or(0, raw_content_chars);
        }
    }
}

/// The fields of a response or event that accounting reads, still undecoded.
#[derive(Deserialize)]
struct Document<'a> {
    #[serde(borrow, default)]
    model: Option<&'a RawValue>,
    #[serde(borrow, default)]
    usage: Option<&'a RawValue>,
    #[serde(borrow, default)]
    choices: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct Choice<'a> {
    #[serde(borrow, default)]
    delta: Option<Message<'a>>,
    #[serde(borrow, default)]
    message: Option<Message<'a>>,
}

#[derive(Deserialize)]
struct Message<'a> {
    #[serde(borrow, default)]
    content: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct TextPart<'a> {
    #[serde(borrow, default)]
    text: Option<Cow<'a, str>>,
}

/// [`content_chars`] of a still-encoded `content`.
fn raw_content_chars(content: &RawValue) -> u64 {
    if let Ok(s) = serde_json::from_str::<Cow<str>>(content.get()) {
        return s.chars().count() as u64;
    }
    serde_json::from_str::<Vec<TextPart>>(content.get())
        .map(|parts| {
            parts
                .iter()
                .filter_map(|p| p.text.as_ref())
                .map(|t| t.chars().count() as u64)
                .sum()
        })
        .unwrap_or(0)
}

/// Characters of an OpenAI `content`: a string, or an array of parts with `text`.
pub fn content_chars(content: Option<&Value>) -> u64 {
    match content {
        Some(Value::String(s)) => s.chars().count() as u64,
        Some(Value::Array(parts)) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .map(|t| t.chars().count() as u64)
            .sum(),
        _ => 0,
    }
}

/// Characters of the `messages[].content` of a chat request body.
pub fn prompt_chars(body: &Value) -> u64 {
    body.get("messages")
        .and_then(Value::as_array)
        .map(|msgs| msgs.iter().map(|m| content_chars(m.get("content"))).sum())
        .unwrap_or(0)
}

/// The usage to record for a response: what the provider reported, else (for a response
/// that named a model or carried generated text) an estimate, flagged by the `bool`.
pub fn account(
    reported: Option<Usage>,
    model_seen: bool,
    completion_chars: u64,
    prompt_chars: u64,
) -> (Option<Usage>, bool) {
    match reported {
        Some(u) => (Some(u), false),
        None if model_seen || completion_chars > 0 => {
            (Some(Usage::estimate(prompt_chars, completion_chars)), true)
        }
        None => (None, false),
    }
}

/// The metrics label for an upstream failure answered with `status`.
pub fn failure_kind(status: http::StatusCode) -> &'static str {
    match status.as_u16() {
        504 => "timeout",
        502 => "connect",
        503 => "unavailable",
        _ => "other",
    }
}

/// Tokens for `chars` characters by the common rule of thumb (about four per token).
pub fn estimate_tokens(chars: u64) -> u64 {
    chars.div_ceil(4)
}

impl Usage {
    /// Usage estimated from the characters sent and received.
    pub fn estimate(prompt_chars: u64, completion_chars: u64) -> Usage {
        let (p, c) = (
            estimate_tokens(prompt_chars),
            estimate_tokens(completion_chars),
        );
        Usage {
            prompt_tokens: p,
            completion_tokens: c,
            total_tokens: p + c,
        }
    }
}

/// Reads an OpenAI `usage` object; also accepts `input_tokens`/`output_tokens` spellings.
fn parse_usage(u: &Value) -> Option<Usage> {
    let obj = u.as_object()?;
    let num = |a: &str, b: &str| obj.get(a).or_else(|| obj.get(b)).and_then(Value::as_u64);
    let prompt = num("prompt_tokens", "input_tokens");
    let completion = num("completion_tokens", "output_tokens");
    let total = obj.get("total_tokens").and_then(Value::as_u64);
    if prompt.is_none() && completion.is_none() && total.is_none() {
        return None;
    }
    let (p, c) = (prompt.unwrap_or(0), completion.unwrap_or(0));
    Some(Usage {
        prompt_tokens: p,
        completion_tokens: c,
        total_tokens: total.unwrap_or(p + c),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usage(p: u64, c: u64, t: u64) -> Option<Usage> {
        Some(Usage {
            prompt_tokens: p,
            completion_tokens: c,
            total_tokens: t,
        })
    }

    #[test]
    fn json_body_split_across_chunks() {
        let body = br#"{"id":"x","model":"gpt-4o-mini","choices":[],"usage":{"prompt_tokens":12,"completion_tokens":30,"total_tokens":42}}"#;
        let mut p = UsageParser::new(Some("application/json; charset=utf-8"));
        for c in body.chunks(7) {
            p.feed(c);
        }
        assert_eq!(p.finish(), (Some("gpt-4o-mini".into()), usage(12, 30, 42)));
    }

    #[test]
    fn sse_lines_split_mid_line_and_crlf() {
        let stream = concat!(
            "data: {\"model\":\"gemini-2.0-flash\",\"choices\":[{\"delta\":{\"content\":\"Hi\"}}],\"usage\":null}\r\n\r\n",
            ": keep-alive comment\n\n",
            "data: {\"model\":\"gemini-2.0-flash\",\"choices\":[],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":7,\"total_tokens\":12}}\n\n",
            "data: [DONE]\n\n"
        );
        for size in [1, 3, 16, 1000] {
            let mut p = UsageParser::new(Some("text/event-stream"));
            for c in stream.as_bytes().chunks(size) {
                p.feed(c);
            }
            assert_eq!(
                p.finish(),
                (Some("gemini-2.0-flash".into()), usage(5, 7, 12)),
                "chunk size {size}"
            );
        }
    }

    #[test]
    fn sse_last_usage_wins_and_unterminated_last_line_counts() {
        let mut p = UsageParser::new(Some("text/event-stream"));
        p.feed(
            b"data: {\"model\":\"m\",\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":1}}\n",
        );
        p.feed(b"data: {\"usage\":{\"prompt_tokens\":2,\"completion_tokens\":3}}");
        assert_eq!(p.finish(), (Some("m".into()), usage(2, 3, 5)));
    }

    #[test]
    fn streaming_without_usage_still_reports_model() {
        let mut p = UsageParser::new(Some("text/event-stream"));
        p.feed(b"data: {\"model\":\"deepseek-chat\",\"usage\":null}\n\ndata: [DONE]\n\n");
        assert_eq!(p.finish(), (Some("deepseek-chat".into()), None));
    }

    #[test]
    fn oversized_or_foreign_bodies_are_not_accounted() {
        let mut p = UsageParser::new(Some("application/json"));
        p.feed(&vec![b' '; MAX_KEEP]);
        p.feed(br#"{"model":"m","usage":{"total_tokens":1}}"#);
        assert_eq!(p.finish(), (None, None));
        let mut p = UsageParser::new(Some("text/html"));
        p.feed(br#"{"model":"m"}"#);
        assert_eq!(p.finish(), (None, None));
        let mut p = UsageParser::new(None);
        p.feed(b"garbage");
        assert_eq!(p.finish(), (None, None));
    }

    #[test]
    fn sse_overlong_line_is_skipped_but_later_lines_parse() {
        let mut p = UsageParser::new(Some("text/event-stream"));
        p.feed(b"data: {\"model\":\"");
        p.feed(&vec![b'x'; MAX_KEEP + 10]);
        p.feed(b"\"}\ndata: {\"model\":\"ok\",\"usage\":{\"total_tokens\":9}}\n");
        assert_eq!(p.finish(), (Some("ok".into()), usage(0, 0, 9)));
    }

    #[test]
    fn counts_generated_characters_for_estimates() {
        let mut p = UsageParser::new(Some("text/event-stream"));
        p.feed(b"data: {\"model\":\"m\",\"choices\":[{\"delta\":{\"role\":\"assistant\"}}]}\n\n");
        p.feed(b"data: {\"choices\":[{\"delta\":{\"content\":\"Hello \"}}]}\n\n");
        p.feed(
            b"data: {\"choices\":[{\"delta\":{\"content\":\"w\xc3\xb6rld\"}}]}\n\ndata: [DONE]\n\n",
        );
        assert_eq!(p.finish_with_chars(), (Some("m".into()), None, 11));

        let mut p = UsageParser::new(Some("application/json"));
        p.feed(br#"{"model":"m","choices":[{"message":{"content":"abcde"}},{"message":{"content":[{"type":"text","text":"xy"}]}}]}"#);
        assert_eq!(p.finish_with_chars(), (Some("m".into()), None, 7));
    }

    #[test]
    fn estimates_round_up_per_four_characters() {
        assert_eq!(estimate_tokens(0), 0);
        assert_eq!(estimate_tokens(1), 1);
        assert_eq!(estimate_tokens(4), 1);
        assert_eq!(estimate_tokens(18), 5);
        let body = serde_json::json!({"messages":[{"role":"user","content":"message 0"},{"role":"user","content":[{"type":"text","text":"abc"}]}]});
        assert_eq!(prompt_chars(&body), 12);
        assert_eq!(
            Usage::estimate(12, 18),
            Usage {
                prompt_tokens: 3,
                completion_tokens: 5,
                total_tokens: 8
            }
        );
        assert_eq!(prompt_chars(&serde_json::json!({"input":"x"})), 0);
        assert_eq!(
            account(usage(1, 2, 3), true, 99, 99),
            (usage(1, 2, 3), false)
        );
        assert_eq!(account(None, true, 18, 9), (usage(3, 5, 8), true));
        assert_eq!(account(None, false, 0, 9), (None, false));
    }
}
