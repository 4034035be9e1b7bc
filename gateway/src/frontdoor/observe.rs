//! The observability endpoints of the control API (admins only): `GET /api/v1/usage` sums
//! recorded token usage, `GET /api/v1/logs` returns recent access records as NDJSON and, with
//! `follow=true`, keeps streaming new ones.

use super::respond::{error, json};
use crate::proxy::{BoxBody, BoxError};
use crate::state::Gateway;
use crate::store::usage::UsageKey;
use crate::telemetry::access_log::AccessRecord;
use crate::telemetry::recent::LogFilter;
use bytes::Bytes;
use futures_util::stream;
use http::{header, HeaderValue, Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::broadcast::error::RecvError;

/// Records returned by `logs` when `tail` is not given.
const DEFAULT_TAIL: usize = 100;
/// How often an idle follow stream sends an empty line, so a vanished client is noticed.
const KEEPALIVE: Duration = Duration::from_secs(15);

fn query<B>(req: &Request<B>) -> HashMap<String, String> {
    url::form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes())
        .into_owned()
        .collect()
}

fn bad_request(message: String) -> Response<BoxBody> {
    error(StatusCode::BAD_REQUEST, message, None)
}

/// `GET /api/v1/usage?by=user|group|model|service|config&since=24h`.
pub async fn usage<B>(gw: &Gateway, req: &Request<B>) -> Response<BoxBody> {
    let q = query(req);
    let by_text = q.get("by").map(String::as_str).unwrap_or("user");
    let Some(by) = UsageKey::parse(by_text) else {
        return bad_request(format!(
            "unknown by={by_text:?}; use user, group, model, service or config"
        ));
    };
    let since_text = q.get("since").map(String::as_str).unwrap_or("24h");
    let since = match since_cutoff(since_text, chrono::Utc::now()) {
        Ok(s) => s,
        Err(e) => return bad_request(e),
    };
    let Some(recorder) = gw.telemetry.usage.clone() else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "usage accounting is off in this gateway",
            None,
        );
    };
    let cutoff = since.clone();
    let result = tokio::task::spawn_blocking(move || recorder.totals(by, &cutoff)).await;
    match result {
        Ok(Ok(items)) => json(
            StatusCode::OK,
            &serde_json::json!({"by": by.as_str(), "since": since, "items": items}),
        ),
        Ok(Err(e)) => {
            tracing::error!(error = %e, "reading token usage failed");
            error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string(), None)
        }
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string(), None),
    }
}

/// The RFC 3339 time `since` (`90s`, `30m`, `24h`, `7d`, or `all`) before `now`, in the
/// format usage rows are stored with.
pub fn since_cutoff(since: &str, now: chrono::DateTime<chrono::Utc>) -> Result<String, String> {
    let s = since.trim();
    if s == "all" {
        return Ok("0000".into());
    }
    let invalid = || format!("invalid since={s:?}; use e.g. 30m, 24h, 7d or all");
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: i64 = num.parse().map_err(|_| invalid())?;
    let secs = match unit {
        "" | "s" => n,
        "m" => n.saturating_mul(60),
        "h" => n.saturating_mul(3600),
        "d" => n.saturating_mul(86400),
        _ => return Err(invalid()),
    };
    let cutoff = chrono::Duration::try_seconds(secs)
        .and_then(|d| now.checked_sub_signed(d))
        .ok_or_else(invalid)?;
    Ok(cutoff.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
}

/// `GET /api/v1/logs?service=S&user=U&tail=N&follow=true`.
pub fn logs<B>(gw: &Gateway, req: &Request<B>) -> Response<BoxBody> {
    let q = query(req);
    let filter = LogFilter {
        service: q.get("service").filter(|s| !s.is_empty()).cloned(),
        user: q.get("user").filter(|s| !s.is_empty()).cloned(),
    };
    let tail = match q.get("tail").map(|t| t.parse::<usize>()) {
        None => DEFAULT_TAIL,
        Some(Ok(n)) => n,
        Some(Err(_)) => return bad_request("tail must be a whole number".into()),
    };
    let follow = matches!(q.get("follow").map(String::as_str), Some("true" | "1"));
    let feed = follow.then(|| {
        (
            gw.telemetry.recent.subscribe(),
            gw.telemetry.recent.closing(),
        )
    });
    let mut head = Vec::new();
    for r in gw.telemetry.recent.tail(&filter, tail) {
        head.extend_from_slice(&ndjson(&r));
    }
    let body: BoxBody = match feed {
        None => super::respond::full(head),
        Some((rx, closing)) => {
            let first = stream::iter([Ok::<_, BoxError>(Frame::data(Bytes::from(head)))]);
            let rest = stream::unfold(
                (rx, closing, filter),
                |(mut rx, mut closing, filter)| async move {
                    loop {
                        if *closing.borrow() {
                            return None;
                        }
                        tokio::select! {
                            r = rx.recv() => match r {
                                Ok(rec) if filter.matches(&rec) => {
                                    let frame = Frame::data(Bytes::from(ndjson(&rec)));
                                    return Some((Ok(frame), (rx, closing, filter)));
                                }
                                Ok(_) | Err(RecvError::Lagged(_)) => continue,
                                Err(RecvError::Closed) => return None,
                            },
                            _ = closing.changed() => return None,
                            _ = tokio::time::sleep(KEEPALIVE) => {
                                return Some((Ok(Frame::data(Bytes::from_static(b"\n"))), (rx, closing, filter)));
                            }
                        }
                    }
                },
            );
            StreamBody::new(futures_util::StreamExt::chain(first, rest)).boxed_unsync()
        }
    };
    let mut resp = Response::new(body);
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-ndjson"),
    );
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

fn ndjson(r: &Arc<AccessRecord>) -> Vec<u8> {
    let mut line = serde_json::to_vec(r.as_ref()).unwrap_or_default();
    line.push(b'\n');
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_windows() {
        let now = chrono::DateTime::parse_from_rfc3339("2026-01-02T03:04:05Z")
            .unwrap()
            .with_timezone(&chrono::Utc);
        assert_eq!(
            since_cutoff("24h", now).unwrap(),
            "2026-01-01T03:04:05.000Z"
        );
        assert_eq!(since_cutoff("90", now).unwrap(), "2026-01-02T03:02:35.000Z");
        assert_eq!(since_cutoff("7d", now).unwrap(), "2025-12-26T03:04:05.000Z");
        assert_eq!(since_cutoff("all", now).unwrap(), "0000");
        assert!(since_cutoff("1w", now).is_err());
        assert!(since_cutoff("h", now).is_err());
    }
}
