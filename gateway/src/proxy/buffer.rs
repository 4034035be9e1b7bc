//! Reading a request body into memory with a size limit, for the few places that must
//! (a policy reading `bodyMap`, the control API). Everything else streams.

use bytes::Bytes;
use http_body::Body;
use http_body_util::{BodyExt, Limited};

/// Why a body could not be buffered.
#[derive(Debug, thiserror::Error)]
pub enum BufferError {
    #[error("request body is larger than {0} bytes")]
    TooLarge(usize),
    #[error("reading the request body failed: {0}")]
    Read(String),
}

/// Collects `body`, failing as soon as it passes `limit` bytes.
pub async fn read_limited<B>(body: B, limit: usize) -> Result<Bytes, BufferError>
where
    B: Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    match Limited::new(body, limit).collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(BufferError::TooLarge(limit)),
        Err(e) => Err(BufferError::Read(e.to_string())),
    }
}

/// True when a declared `Content-Length` is already over `limit`.
pub fn declared_too_large(headers: &http::HeaderMap, limit: usize) -> bool {
    headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .is_some_and(|n| n > limit as u64)
}
