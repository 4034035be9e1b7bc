//! Request bodies that may be sent more than once. A retry or fallback needs the body again,
//! so when one may happen the body is buffered up to the gateway's max body size; a larger body
//! streams through once and the request gets no retry or fallback.

use super::{BoxBody, BoxError};
use bytes::Bytes;
use futures_util::{stream, StreamExt};
use http_body::Frame;
use http_body_util::{BodyExt, BodyStream, Full, StreamBody};

/// The body the pipeline hands to forwarding.
pub enum RequestBody {
    /// Already in memory (a policy or dynamicConfig read it).
    Buffered(Bytes),
    /// Still streaming from the client.
    Streamed(BoxBody),
}

/// Why a body could not be prepared for sending.
#[derive(Debug, thiserror::Error)]
#[error("reading the request body failed: {0}")]
pub struct ReplayError(String);

/// A body ready for one or more tries.
pub enum Replay {
    /// In memory: every try gets a copy.
    Many(Bytes),
    /// Streaming: the first try takes it, later tries get nothing.
    Once(Option<BoxBody>),
}

fn full(b: Bytes) -> BoxBody {
    Full::new(b).map_err(|e| match e {}).boxed_unsync()
}

impl Replay {
    /// Makes `body` replayable when `wanted`, buffering at most `limit` bytes; past `limit` the
    /// bytes read so far are put back in front of the rest and it streams once.
    pub async fn prepare(
        body: RequestBody,
        wanted: bool,
        limit: usize,
    ) -> Result<Self, ReplayError> {
        let mut body = match body {
            RequestBody::Buffered(b) => return Ok(Replay::Many(b)),
            RequestBody::Streamed(b) if !wanted => return Ok(Replay::Once(Some(b))),
            RequestBody::Streamed(b) => b,
        };
        let mut chunks: Vec<Bytes> = Vec::new();
        let mut total = 0usize;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| ReplayError(e.to_string()))?;
            // Trailers are not kept in a buffered body (LLM APIs do not use them).
            if let Ok(data) = frame.into_data() {
                total += data.len();
                chunks.push(data);
                if total > limit {
                    let head = stream::iter(
                        chunks
                            .into_iter()
                            .map(|b| Ok::<_, BoxError>(Frame::data(b))),
                    );
                    let rest = BodyStream::new(body);
                    let s = StreamBody::new(head.chain(rest));
                    return Ok(Replay::Once(Some(s.boxed_unsync())));
                }
            }
        }
        let mut buf = bytes::BytesMut::with_capacity(total);
        for c in chunks {
            buf.extend_from_slice(&c);
        }
        Ok(Replay::Many(buf.freeze()))
    }

    /// Can another try be made after this one?
    pub fn replayable(&self) -> bool {
        matches!(self, Replay::Many(_))
    }

    /// The body for the next try; `None` once a streaming body was taken.
    pub fn take(&mut self) -> Option<BoxBody> {
        match self {
            Replay::Many(b) => Some(full(b.clone())),
            Replay::Once(b) => b.take(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn streamed(parts: &[&'static str]) -> RequestBody {
        let s = stream::iter(
            parts
                .iter()
                .map(|p| Ok::<_, BoxError>(Frame::data(Bytes::from_static(p.as_bytes()))))
                .collect::<Vec<_>>(),
        );
        RequestBody::Streamed(StreamBody::new(s).boxed_unsync())
    }

    async fn collect(b: BoxBody) -> Bytes {
        b.collect().await.unwrap().to_bytes()
    }

    #[tokio::test]
    async fn small_body_is_buffered_and_replays() {
        let mut r = Replay::prepare(streamed(&["ab", "cd"]), true, 10)
            .await
            .unwrap();
        assert!(r.replayable());
        assert_eq!(collect(r.take().unwrap()).await, "abcd");
        assert_eq!(collect(r.take().unwrap()).await, "abcd");
    }

    #[tokio::test]
    async fn large_body_streams_once_and_keeps_every_byte() {
        let mut r = Replay::prepare(streamed(&["abc", "def", "gh"]), true, 4)
            .await
            .unwrap();
        assert!(!r.replayable());
        assert_eq!(collect(r.take().unwrap()).await, "abcdefgh");
        assert!(r.take().is_none());
    }

    #[tokio::test]
    async fn not_wanted_streams_untouched() {
        let mut r = Replay::prepare(streamed(&["x"]), false, 0).await.unwrap();
        assert!(!r.replayable());
        assert_eq!(collect(r.take().unwrap()).await, "x");
    }
}
