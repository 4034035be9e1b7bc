//! `posternctl usage [--by user|group|model|service|config] [--since 24h] [-o table|json]`.

use super::Context;
use crate::error::{ClientError, Result};
use crate::output::{self, Table};
use serde_json::Value;
use std::io::Write;

/// The `-o` choices of `posternctl usage`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum UsageFormat {
    /// Aligned columns.
    #[default]
    Table,
    /// The API's JSON answer: `{"by", "since", "items": [...]}`.
    Json,
}

/// Arguments of `posternctl usage`.
#[derive(Debug, Clone, clap::Args)]
pub struct UsageArgs {
    /// What to sum by; a request made by a member of two groups counts for each group.
    #[arg(long, default_value = "user", value_parser = ["user", "group", "model", "service", "config"])]
    pub by: String,
    /// How far back: 30m, 24h, 7d, ... or `all`.
    #[arg(long, default_value = "24h")]
    pub since: String,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t = UsageFormat::Table)]
    pub output: UsageFormat,
}

/// Fetches the totals and prints them.
pub fn run(ctx: &Context, args: &UsageArgs, out: &mut dyn Write) -> Result<()> {
    let (client, _) = ctx.authenticated()?;
    let answer: Value = client.get_query(
        &["usage"],
        &[("by", args.by.clone()), ("since", args.since.clone())],
    )?;
    let text = match args.output {
        UsageFormat::Json => output::to_json(&answer),
        UsageFormat::Table => {
            let items = answer
                .get("items")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            usage_table(&items).render()
        }
    };
    out.write_all(text.as_bytes())
        .map_err(|e| ClientError::io("cannot write to", "stdout", e))
}

/// KEY, REQUESTS, PROMPT, COMPLETION, TOTAL, ESTIMATED: one row per item of the API answer.
pub fn usage_table(items: &[Value]) -> Table {
    let num = |v: &Value, k: &str| v.get(k).and_then(Value::as_u64).unwrap_or(0).to_string();
    Table {
        headers: [
            "KEY",
            "REQUESTS",
            "PROMPT",
            "COMPLETION",
            "TOTAL",
            "ESTIMATED",
        ]
        .map(String::from)
        .to_vec(),
        rows: items
            .iter()
            .map(|i| {
                vec![
                    i.get("key")
                        .and_then(Value::as_str)
                        .unwrap_or("-")
                        .to_string(),
                    num(i, "requests"),
                    num(i, "promptTokens"),
                    num(i, "completionTokens"),
                    num(i, "totalTokens"),
                    num(i, "estimated"),
                ]
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_has_one_row_per_key() {
        let items = serde_json::json!([
            {"key": "alice", "requests": 2, "promptTokens": 22, "completionTokens": 14, "totalTokens": 36, "estimated": 0},
            {"key": "bob", "requests": 1, "promptTokens": 3, "completionTokens": 5, "totalTokens": 8, "estimated": 1}
        ]);
        let text = usage_table(items.as_array().unwrap()).render();
        let lines: Vec<_> = text.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[0].starts_with("KEY") && lines[0].ends_with("ESTIMATED"));
        let cells: Vec<_> = lines[2].split_whitespace().collect();
        assert_eq!(cells, ["bob", "1", "3", "5", "8", "1"]);
    }
}
