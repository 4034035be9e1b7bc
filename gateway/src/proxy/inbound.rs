//! The client's request body, and what happens to the part nobody read.
//!
//! The gateway often answers before it has read the request body: a bad token (401), a policy
//! that does not read the body (403), a declared length past the limit (413), a rate limit
//! (429). Dropping the unread body then makes HTTP/2 reset the stream (RST_STREAM with
//! NO_ERROR, as RFC 9113 section 8.1 allows) while the client is still uploading; many
//! clients (curl 7.x and 8.x among them) report that as a transport error and never show the
//! refusal, so an SDK cannot tell "refresh your token" from "the network broke". Over
//! HTTP/1.1 the connection has to close instead of being reused.
//!
//! So the door wraps every request body in a [`ClientBody`]. Dropped before its end, it parks
//! the unread rest in its [`Leftover`]; once the response is ready, the door hands the rest
//! to [`Leftover::drain_in_background`], which reads and discards it (bounded in bytes and
//! time) while the response goes out at once. A client that finishes its upload in time sees
//! a clean response on a stream that ends normally; past the bounds the body is dropped and
//! the RFC's reset applies.

use bytes::Bytes;
use http::Request;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

/// Most bytes of an abandoned request body read and discarded after an early response.
pub const DRAIN_MAX_BYTES: u64 = 16 << 20;
/// Longest time spent draining an abandoned request body after an early response.
pub const DRAIN_MAX_TIME: Duration = Duration::from_secs(5);

/// A request as the pipeline and the control plane receive it.
pub type ClientRequest = Request<ClientBody>;

/// The request body from the client: hyper's body, plus the slot its unread rest goes to
/// when the gateway drops it early.
pub struct ClientBody {
    inner: Option<Incoming>,
    leftover: Leftover,
}

/// Where an abandoned request body waits for the door to drain it.
#[derive(Clone, Default)]
pub struct Leftover(Arc<Mutex<Option<Incoming>>>);

/// Wraps the body of `req` so that an unread rest is kept for draining.
pub fn wrap(req: Request<Incoming>) -> (ClientRequest, Leftover) {
    let leftover = Leftover::default();
    let req = req.map(|inner| ClientBody {
        inner: Some(inner),
        leftover: leftover.clone(),
    });
    (req, leftover)
}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.inner.as_mut() {
            Some(inner) => Pin::new(inner).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), Body::size_hint)
    }
}

impl Drop for ClientBody {
    fn drop(&mut self) {
        let Some(inner) = self.inner.take() else {
            return;
        };
        // Only worth parking when the door still holds the other handle and bytes remain.
        if inner.is_end_stream() || Arc::strong_count(&self.leftover.0) < 2 {
            return;
        }
        if let Ok(mut slot) = self.leftover.0.lock() {
            *slot = Some(inner);
        }
    }
}

/// How a drain ended, for the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drained {
    /// The client finished its body: the stream or connection ends normally.
    Complete { bytes: u64 },
    /// More than [`DRAIN_MAX_BYTES`] or [`DRAIN_MAX_TIME`]: the body is dropped (HTTP/2 resets
    /// the stream with NO_ERROR, HTTP/1.1 closes the connection).
    GaveUp { bytes: u64 },
    /// The client reset the stream or the connection broke.
    Broken { bytes: u64 },
}

impl Leftover {
    /// The unread rest of the body, when the gateway dropped it before its end.
    pub fn take(&self) -> Option<Incoming> {
        self.0.lock().ok()?.take()
    }

    /// Reads and discards what the client still sends of an abandoned body, on its own task,
    /// so the response already produced goes out without waiting. Does nothing when the body
    /// was read to its end (or is still being read by the forwarder).
    pub fn drain_in_background(self) {
        if let Some(rest) = self.take() {
            tokio::spawn(async move {
                let outcome = drain(rest, DRAIN_MAX_BYTES, DRAIN_MAX_TIME).await;
                tracing::debug!(?outcome, "drained an abandoned request body");
            });
        }
    }
}

/// Reads `body` to its end and throws the bytes away, stopping after `max_bytes` or
/// `max_time`.
pub async fn drain<B>(mut body: B, max_bytes: u64, max_time: Duration) -> Drained
where
    B: Body<Data = Bytes> + Unpin,
{
    let mut bytes = 0u64;
    let read = async {
        while let Some(frame) = body.frame().await {
            match frame {
                Ok(f) => {
                    if let Some(d) = f.data_ref() {
                        bytes += d.len() as u64;
                    }
                    if bytes > max_bytes {
                        return Drained::GaveUp { bytes };
                    }
                }
                Err(_) => return Drained::Broken { bytes },
            }
        }
        Drained::Complete { bytes }
    };
    match tokio::time::timeout(max_time, read).await {
        Ok(outcome) => outcome,
        Err(_) => Drained::GaveUp { bytes },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::stream;
    use http_body_util::StreamBody;

    fn chunks(n: usize, size: usize) -> impl Body<Data = Bytes, Error = std::io::Error> + Unpin {
        let frames = (0..n).map(move |_| Ok(Frame::data(Bytes::from(vec![b'x'; size]))));
        StreamBody::new(stream::iter(frames))
    }

    #[tokio::test]
    async fn drains_a_body_to_its_end() {
        let out = drain(chunks(10, 1000), 1 << 20, Duration::from_secs(1)).await;
        assert_eq!(out, Drained::Complete { bytes: 10_000 });
    }

    #[tokio::test]
    async fn gives_up_past_the_byte_bound() {
        let out = drain(chunks(10, 1000), 4_500, Duration::from_secs(1)).await;
        assert_eq!(out, Drained::GaveUp { bytes: 5_000 });
    }

    #[tokio::test]
    async fn gives_up_when_the_client_stalls() {
        let (_tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(1);
        let body = StreamBody::new(tokio_stream_from(rx));
        let out = drain(body, 1 << 20, Duration::from_millis(50)).await;
        assert_eq!(out, Drained::GaveUp { bytes: 0 });
    }

    #[tokio::test]
    async fn a_broken_body_stops_the_drain() {
        let frames = vec![
            Ok(Frame::data(Bytes::from_static(b"abc"))),
            Err(std::io::Error::other("reset")),
        ];
        let out = drain(
            StreamBody::new(stream::iter(frames)),
            1 << 20,
            Duration::from_secs(1),
        )
        .await;
        assert_eq!(out, Drained::Broken { bytes: 3 });
    }

    fn tokio_stream_from<T>(
        mut rx: tokio::sync::mpsc::Receiver<T>,
    ) -> impl futures_util::Stream<Item = T> + Unpin {
        Box::pin(stream::poll_fn(move |cx| rx.poll_recv(cx)))
    }
}
