//! Request bodies from clients: reading one into memory with a size limit, for the few
//! places that must (a policy reading `bodyMap`, the control API), and bounding the time a
//! client may take to send one ([`TimedBody`]), for buffered and streamed bodies alike, so
//! a client trickling its body (a "slow POST") cannot hold a request open for ever.

use super::BoxError;
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, Limited};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::{Instant, Sleep};

/// Why a body could not be buffered.
#[derive(Debug, thiserror::Error)]
pub enum BufferError {
    #[error("request body is larger than {0} bytes")]
    TooLarge(usize),
    #[error("the client took too long to send the request body ({0})")]
    TimedOut(BodyTimedOut),
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
        Err(e) => match e.downcast::<BodyTimedOut>() {
            Ok(t) => Err(BufferError::TimedOut(*t)),
            Err(e) => Err(BufferError::Read(e.to_string())),
        },
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

/// How long a client may keep the gateway waiting for its request body: `timeout` plus one
/// second per `min_rate` bytes already received. Only time spent waiting on the client
/// counts, not time the upstream spends before reading more of a streamed body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyTimeouts {
    /// Waiting allowed before any byte arrives.
    pub timeout: Duration,
    /// Bytes per second that each earn one more second; 0 makes `timeout` the total.
    pub min_rate: u64,
}

impl Default for BodyTimeouts {
    fn default() -> Self {
        BodyTimeouts {
            timeout: Duration::from_secs(30),
            min_rate: 1024,
        }
    }
}

impl BodyTimeouts {
    /// The waiting allowed once `received` bytes have arrived.
    pub fn allowance(&self, received: u64) -> Duration {
        if self.min_rate == 0 {
            return self.timeout;
        }
        let earned = Duration::from_secs_f64(received as f64 / self.min_rate as f64);
        self.timeout.saturating_add(earned)
    }

    /// The waiting still allowed after `waited` in total with `received` bytes in, or
    /// `None` when the client has used it up.
    pub fn remaining(&self, received: u64, waited: Duration) -> Option<Duration> {
        self.allowance(received)
            .checked_sub(waited)
            .filter(|d| !d.is_zero())
    }
}

/// The error a [`TimedBody`] ends with when its client used up its time.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("{received} bytes after waiting {waited:?}")]
pub struct BodyTimedOut {
    /// Bytes received before the cut.
    pub received: u64,
    /// Time spent waiting on the client in all.
    pub waited: Duration,
}

pin_project_lite::pin_project! {
    /// A request body that fails with [`BodyTimedOut`] when its client takes longer than
    /// [`BodyTimeouts`] allows. Upstreams see the failure as an aborted request, never as a
    /// complete one.
    pub struct TimedBody<B> {
        #[pin]
        inner: B,
        limits: BodyTimeouts,
        received: u64,
        waited: Duration,
        waiting_since: Option<Instant>,
        sleep: Option<Pin<Box<Sleep>>>,
        done: bool,
        tripped: Option<Arc<AtomicBool>>,
    }
}

impl<B> TimedBody<B> {
    /// Bounds the time `inner`'s sender may take.
    pub fn new(inner: B, limits: BodyTimeouts) -> Self {
        TimedBody {
            inner,
            limits,
            received: 0,
            waited: Duration::ZERO,
            waiting_since: None,
            sleep: None,
            done: false,
            tripped: None,
        }
    }

    /// Like [`TimedBody::new`], with a flag that turns true if the body times out, for
    /// callers that only see the failure second-hand (an upstream request that failed).
    pub fn watched(inner: B, limits: BodyTimeouts) -> (Self, Arc<AtomicBool>) {
        let flag = Arc::new(AtomicBool::new(false));
        let mut body = Self::new(inner, limits);
        body.tripped = Some(flag.clone());
        (body, flag)
    }
}

impl<B> Body for TimedBody<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        if *this.done {
            return Poll::Ready(None);
        }
        match this.inner.poll_frame(cx) {
            Poll::Ready(res) => {
                if let Some(since) = this.waiting_since.take() {
                    *this.waited += since.elapsed();
                }
                if let Some(Ok(data)) = res.as_ref().map(|r| r.as_ref().map(Frame::data_ref)) {
                    *this.received += data.map_or(0, |d| d.len() as u64);
                }
                Poll::Ready(res.map(|r| r.map_err(Into::into)))
            }
            Poll::Pending => {
                let now = Instant::now();
                let since = *this.waiting_since.get_or_insert(now);
                let waited = *this.waited + (now - since);
                let timed_out = match this.limits.remaining(*this.received, waited) {
                    None => true,
                    Some(left) => {
                        let deadline = now + left;
                        let sleep = this
                            .sleep
                            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                        if sleep.deadline() != deadline {
                            sleep.as_mut().reset(deadline);
                        }
                        sleep.as_mut().poll(cx).is_ready()
                    }
                };
                if !timed_out {
                    return Poll::Pending;
                }
                *this.done = true;
                *this.sleep = None;
                if let Some(flag) = this.tripped {
                    flag.store(true, Ordering::Relaxed);
                }
                Poll::Ready(Some(Err(Box::new(BodyTimedOut {
                    received: *this.received,
                    waited,
                }))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::StreamBody;

    #[test]
    fn allowance_grows_with_the_bytes_received() {
        let t = BodyTimeouts {
            timeout: Duration::from_secs(10),
            min_rate: 1000,
        };
        assert_eq!(t.allowance(0), Duration::from_secs(10));
        assert_eq!(t.allowance(5000), Duration::from_secs(15));
        assert_eq!(
            t.remaining(5000, Duration::from_secs(12)),
            Some(Duration::from_secs(3))
        );
        assert_eq!(t.remaining(5000, Duration::from_secs(15)), None);
        assert_eq!(t.remaining(0, Duration::from_secs(11)), None);
    }

    #[test]
    fn zero_rate_makes_the_timeout_a_total() {
        let t = BodyTimeouts {
            timeout: Duration::from_secs(2),
            min_rate: 0,
        };
        assert_eq!(t.allowance(u64::MAX), Duration::from_secs(2));
    }

    fn trickle(
        every: Duration,
        chunks: usize,
    ) -> impl Body<Data = Bytes, Error = std::convert::Infallible> {
        let s = futures_util::stream::unfold(0, move |i| async move {
            if i == chunks {
                return None;
            }
            tokio::time::sleep(every).await;
            Some((
                Ok::<_, std::convert::Infallible>(Frame::data(Bytes::from_static(b"x"))),
                i + 1,
            ))
        });
        StreamBody::new(s)
    }

    #[tokio::test(start_paused = true)]
    async fn a_trickle_is_cut_off_when_its_time_is_used_up() {
        let limits = BodyTimeouts {
            timeout: Duration::from_secs(5),
            min_rate: 1000,
        };
        let started = Instant::now();
        let body = TimedBody::new(trickle(Duration::from_secs(1), 100), limits);
        match read_limited(body, 1 << 20).await {
            Err(BufferError::TimedOut(t)) => {
                assert!(t.received <= 5, "{t:?}");
                assert!(t.waited >= Duration::from_secs(5), "{t:?}");
            }
            other => panic!("expected a timeout, got {other:?}"),
        }
        assert!(started.elapsed() < Duration::from_secs(6));
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_within_its_time_arrives_whole() {
        let limits = BodyTimeouts {
            timeout: Duration::from_secs(5),
            min_rate: 0,
        };
        let body = TimedBody::new(trickle(Duration::from_millis(400), 10), limits);
        assert_eq!(
            read_limited(body, 1 << 20).await.unwrap(),
            Bytes::from_static(b"xxxxxxxxxx")
        );
    }

    #[tokio::test(start_paused = true)]
    async fn time_the_reader_spends_elsewhere_does_not_count() {
        let limits = BodyTimeouts {
            timeout: Duration::from_secs(2),
            min_rate: 0,
        };
        let mut body = std::pin::pin!(TimedBody::new(trickle(Duration::ZERO, 3), limits));
        for _ in 0..3 {
            assert!(body.frame().await.unwrap().is_ok());
            // A slow upstream: the body is not polled for a while.
            tokio::time::sleep(Duration::from_secs(10)).await;
        }
        assert!(body.frame().await.is_none());
    }
}
