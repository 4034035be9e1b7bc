//! The 429 a limit answers with.

use super::plan::{Charge, Unit};
use crate::frontdoor::respond::json;
use crate::proxy::BoxBody;
use http::{header, HeaderValue, Response, StatusCode};
use postern_common::api::{ErrorBody, ErrorDetail};

/// A request refused by a limit: which one, and when to try again.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("limit {label}: {limit} {unit} per {per} reached; retry in {retry_after}s")]
pub struct Refusal {
    /// `Service/gemini/rpm`.
    pub label: String,
    pub limit: u64,
    /// `requests` or `tokens`.
    pub unit: &'static str,
    pub per: String,
    /// A budget (`per: day` or `month`) rather than a rate.
    pub budget: bool,
    /// Seconds until the window resets (the `Retry-After` header).
    pub retry_after: u64,
}

impl Refusal {
    pub(super) fn new(c: &Charge, retry_after: u64) -> Self {
        Refusal {
            label: c.label.clone(),
            limit: c.limit,
            unit: match c.unit {
                Unit::Requests => "requests",
                Unit::Tokens => "tokens",
            },
            per: c.per.clone(),
            budget: c.is_budget(),
            retry_after,
        }
    }

    /// `limit <owner>/<name>`, the access log's `reason`.
    pub fn reason(&self) -> String {
        format!("limit {}", self.label)
    }

    /// 429 with `Retry-After` and an OpenAI-shaped error: `rate_limit_error` /
    /// `rate_limit_exceeded` for rates, `insufficient_quota` for budgets, as OpenAI's own
    /// API answers, so SDK retry and quota handling behave as they would against it.
    pub fn response(&self, request_id: &str) -> Response<BoxBody> {
        let (error_type, code) = if self.budget {
            ("insufficient_quota", "insufficient_quota")
        } else {
            ("rate_limit_error", "rate_limit_exceeded")
        };
        let body = ErrorBody {
            error: ErrorDetail {
                message: self.to_string(),
                error_type: error_type.into(),
                code: code.into(),
                request_id: Some(request_id.to_string()),
            },
        };
        let mut resp = json(StatusCode::TOO_MANY_REQUESTS, &body);
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(self.retry_after));
        resp
    }
}
