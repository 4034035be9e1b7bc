//! How many tokens to reserve for a request before the provider says what it cost.

use serde_json::Value;

/// The reservation for one LLM call: the completion cap the request sets (`max_tokens`,
/// `max_completion_tokens` or `max_output_tokens`; `default_completion` when it sets none)
/// plus the prompt text's characters divided by four, rounded up, plus the chat framing
/// OpenAI documents for its models (about 4 tokens per message and 3 to prime the reply).
///
/// Chars/4 is the rule of thumb for English with GPT-style tokenizers; it needs no tokenizer
/// per model and errs high for code and low for some scripts. The estimate only has to be
/// close: the reservation is replaced by the reported usage when the response ends. The
/// provider caps the completion at the requested maximum, so only the prompt part can be
/// under-estimated; a limit can be overshot by at most that error per concurrent request,
/// which is why a low `max_tokens` makes budgets both tight and exact. With no
/// JSON body (`None`) the estimate is `default_completion`.
pub fn estimate_tokens(body: Option<&Value>, default_completion: u64) -> u64 {
    let Some(body) = body else {
        return default_completion;
    };
    let completion = ["max_completion_tokens", "max_tokens", "max_output_tokens"]
        .iter()
        .find_map(|k| body.get(*k).and_then(Value::as_u64))
        .unwrap_or(default_completion);
    let mut chars = 0usize;
    for key in ["messages", "prompt", "input", "system", "instructions"] {
        if let Some(v) = body.get(key) {
            chars += text_chars(v);
        }
    }
    let framing = match body.get("messages").and_then(Value::as_array) {
        Some(m) => MESSAGE_OVERHEAD * m.len() as u64 + REPLY_PRIMING,
        None => 0,
    };
    completion
        .saturating_add(chars.div_ceil(4) as u64)
        .saturating_add(framing)
}

/// Tokens a chat message costs beyond its text (role and separators).
const MESSAGE_OVERHEAD: u64 = 4;
/// Tokens that start the assistant's reply in a chat prompt.
const REPLY_PRIMING: u64 = 3;

/// Characters of prompt text in `v`: strings, and the `content` / `text` of nested objects.
fn text_chars(v: &Value) -> usize {
    match v {
        Value::String(s) => s.chars().count(),
        Value::Array(items) => items.iter().map(text_chars).sum(),
        Value::Object(o) => ["content", "text"]
            .iter()
            .filter_map(|k| o.get(*k))
            .map(text_chars)
            .sum(),
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn estimates() {
        let cases = [
            (None, 1000),
            (Some(json!({})), 1000),
            (Some(json!({"max_tokens": 10})), 10),
            (
                Some(json!({"max_completion_tokens": 5, "max_tokens": 10})),
                5,
            ),
            (
                Some(
                    json!({"max_tokens": 10, "messages": [{"role": "user", "content": "message 0"}]}),
                ),
                20, // 10 + ceil(9/4) + 4 per message + 3
            ),
            (
                Some(
                    json!({"max_tokens": 0, "messages": [{"content": [{"type": "text", "text": "abcdefgh"}]}]}),
                ),
                9,
            ),
            (Some(json!({"max_tokens": 1, "prompt": "abcde"})), 3),
            (
                Some(json!({"max_output_tokens": 1, "input": ["abcd", "abcd"]})),
                3,
            ),
            (Some(json!({"max_tokens": "x", "messages": []})), 1003),
        ];
        for (body, want) in cases {
            assert_eq!(estimate_tokens(body.as_ref(), 1000), want, "{body:?}");
        }
    }
}
