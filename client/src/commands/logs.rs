//! `posternctl logs [-f] [--service S] [--user U] [--tail N] [-o text|json]`.

use super::Context;
use crate::error::{ClientError, Result};
use serde_json::Value;
use std::io::{BufRead, Write};

/// The `-o` choices of `posternctl logs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// One readable line per request.
    #[default]
    Text,
    /// The access record as the gateway sent it (one JSON object per line).
    Json,
}

/// Arguments of `posternctl logs`.
#[derive(Debug, Clone, clap::Args)]
pub struct LogsArgs {
    /// Keep printing new requests until interrupted (Ctrl-C).
    #[arg(short, long)]
    pub follow: bool,
    /// Only requests to this Service.
    #[arg(long)]
    pub service: Option<String>,
    /// Only requests by this user.
    #[arg(long)]
    pub user: Option<String>,
    /// How many recent requests to show first (the gateway keeps the last 1000).
    #[arg(long, default_value_t = 20)]
    pub tail: usize,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t = LogFormat::Text)]
    pub output: LogFormat,
}

/// Prints recent requests, then (with `-f`) new ones as they finish.
pub fn run(ctx: &Context, args: &LogsArgs, out: &mut dyn Write) -> Result<()> {
    let (client, _) = ctx.authenticated()?;
    let query = [
        ("service", args.service.clone().unwrap_or_default()),
        ("user", args.user.clone().unwrap_or_default()),
        ("tail", args.tail.to_string()),
        ("follow", if args.follow { "true" } else { "" }.to_string()),
    ];
    let reader = client.get_lines(&["logs"], &query)?;
    let write_err = |e| ClientError::io("cannot write to", "stdout", e);
    for line in reader.lines() {
        let line = line.map_err(|e| ClientError::BadResponse {
            url: client.url(&["logs"]),
            detail: format!("the log stream broke off: {e}"),
        })?;
        if line.trim().is_empty() {
            continue;
        }
        let text = match args.output {
            LogFormat::Json => line,
            LogFormat::Text => match serde_json::from_str::<Value>(&line) {
                Ok(v) => format_record(&v),
                Err(_) => line,
            },
        };
        writeln!(out, "{text}").map_err(write_err)?;
        out.flush().map_err(write_err)?;
    }
    Ok(())
}

/// `time status user service method path model tokens decision @gateway`, `-` for what is
/// absent (the gateway part only when the record names one); tokens are
/// `prompt/completion/total`, with `~` when estimated.
pub fn format_record(v: &Value) -> String {
    let s = |k: &str| v.get(k).and_then(Value::as_str).unwrap_or("-").to_string();
    let tokens = match v.get("usage") {
        Some(u) if u.is_object() => {
            let n = |k: &str| u.get(k).and_then(Value::as_u64).unwrap_or(0);
            let est = if v.get("usageEstimated").and_then(Value::as_bool) == Some(true) {
                "~"
            } else {
                ""
            };
            format!(
                "{est}{}/{}/{}",
                n("prompt_tokens"),
                n("completion_tokens"),
                n("total_tokens")
            )
        }
        _ => "-".into(),
    };
    let status = v
        .get("status")
        .and_then(Value::as_u64)
        .map_or("-".into(), |n| n.to_string());
    let line = format!(
        "{} {status} {} {} {} {} {} {tokens} {}",
        s("time"),
        s("user"),
        s("service"),
        s("method"),
        s("path"),
        s("model"),
        s("decision"),
    );
    match v.get("gateway").and_then(Value::as_str) {
        Some(gateway) => format!("{line} @{gateway}"),
        None => line,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_print_as_one_line() {
        let v = serde_json::json!({"time": "2026-01-02T03:04:05.678Z", "status": 200, "user": "app",
            "service": "gemini", "method": "POST", "path": "/v1/chat/completions",
            "model": "gemini-2.0-flash", "decision": "ALLOW",
            "usage": {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18}});
        assert_eq!(
            format_record(&v),
            "2026-01-02T03:04:05.678Z 200 app gemini POST /v1/chat/completions gemini-2.0-flash 11/7/18 ALLOW"
        );
        let est = serde_json::json!({"status": 401, "method": "GET", "path": "/", "usageEstimated": true,
            "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}});
        assert_eq!(format_record(&est), "- 401 - - GET / - ~1/2/3 -");
        let served =
            serde_json::json!({"status": 200, "method": "GET", "path": "/", "gateway": "gw-b"});
        assert_eq!(format_record(&served), "- 200 - - GET / - - - @gw-b");
    }
}
