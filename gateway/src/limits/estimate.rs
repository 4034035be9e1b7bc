//! How many tokens to reserve for a request before the provider says what it cost.

use serde_json::Value;

/// The reservation for one LLM call: the completion cap the request sets (`max_tokens`,
/// `max_completion_tokens` or `max_output_tokens`; `default_completion` when it sets none)
/// plus the prompt text's characters divided by four, rounded up.
///
/// Chars/4 is the rule of thumb for English with GPT-style tokenizers; it needs no tokenizer
/// per model and errs high for code and low for some scripts. The estimate only has to be
/// close: the reservation is replaced by the reported usage when the response ends. With no
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
    completion.saturating_add(chars.div_ceil(4) as u64)
}

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
                13,
            ),
            (
                Some(
                    json!({"max_tokens": 0, "messages": [{"content": [{"type": "text", "text": "abcdefgh"}]}]}),
                ),
                2,
            ),
            (Some(json!({"max_tokens": 1, "prompt": "abcde"})), 3),
            (
                Some(json!({"max_output_tokens": 1, "input": ["abcd", "abcd"]})),
                3,
            ),
            (Some(json!({"max_tokens": "x", "messages": []})), 1000),
        ];
        for (body, want) in cases {
            assert_eq!(estimate_tokens(body.as_ref(), 1000), want, "{body:?}");
        }
    }
}
