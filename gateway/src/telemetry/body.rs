//! A body wrapper that watches bytes go by without holding them back.

use super::usage::{Usage, UsageParser};
use crate::proxy::{BoxBody, BoxError};
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt as _;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

/// What an observed body amounted to, reported once when it ends.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BodyOutcome {
    /// Data bytes that passed through (not counting framing).
    pub bytes: u64,
    /// The model the response named, when a [`UsageParser`] was attached.
    pub model: Option<String>,
    /// Token usage the response reported, when a [`UsageParser`] was attached.
    pub usage: Option<Usage>,
    /// Characters of generated text the response carried (see
    /// [`UsageParser::completion_chars`]), for estimating usage the provider left out.
    pub completion_chars: u64,
    /// `true` when the body reached its end; `false` when it errored or was dropped early
    /// (typically the client went away mid-stream).
    pub completed: bool,
}

/// Called exactly once with the [`BodyOutcome`].
pub type OnEnd = Box<dyn FnOnce(BodyOutcome) + Send>;

struct Observer {
    bytes: u64,
    parser: Option<UsageParser>,
    on_end: Option<OnEnd>,
}

impl Observer {
    fn finish(&mut self, completed: bool) {
        if let Some(cb) = self.on_end.take() {
            let (model, usage, completion_chars) = match self.parser.take() {
                Some(p) => p.finish_with_chars(),
                None => (None, None, 0),
            };
            cb(BodyOutcome {
                bytes: self.bytes,
                model,
                usage,
                completion_chars,
                completed,
            });
        }
    }
}

pin_project_lite::pin_project! {
    /// Wraps a response (or request) body, passing every frame through unchanged and at once,
    /// while counting bytes and optionally feeding a [`UsageParser`].
    ///
    /// Exists so the access log learns size, model and token usage of streamed bodies (SSE from
    /// LLM providers) without buffering them, and learns it whether the stream ends, fails or
    /// is abandoned by the client.
    pub struct ObservedBody<B>
    where
        B: Body<Data = Bytes>,
    {
        #[pin]
        inner: B,
        observer: Observer,
    }

    impl<B> PinnedDrop for ObservedBody<B>
    where
        B: Body<Data = Bytes>,
    {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            // A body hyper never polled because it was already empty still counts as complete.
            let ended = this.inner.is_end_stream();
            this.observer.finish(ended);
        }
    }
}

impl<B: Body<Data = Bytes>> ObservedBody<B> {
    /// Observes a response body, accounting usage with `parser` when given.
    pub fn new(inner: B, parser: Option<UsageParser>, on_end: OnEnd) -> Self {
        Self {
            inner,
            observer: Observer {
                bytes: 0,
                parser,
                on_end: Some(on_end),
            },
        }
    }

    /// Observes a body for its size only (request bodies).
    pub fn counting(inner: B, on_end: OnEnd) -> Self {
        Self::new(inner, None, on_end)
    }
}

impl<B> ObservedBody<B>
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    /// Boxes the observed body into the gateway's [`BoxBody`].
    pub fn boxed(self) -> BoxBody {
        self.map_err(Into::into).boxed_unsync()
    }
}

impl<B> Body for ObservedBody<B>
where
    B: Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.project();
        let res = ready!(this.inner.poll_frame(cx));
        match &res {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    this.observer.bytes += data.len() as u64;
                    if let Some(p) = this.observer.parser.as_mut() {
                        p.feed(data);
                    }
                }
            }
            Some(Err(_)) => this.observer.finish(false),
            None => this.observer.finish(true),
        }
        Poll::Ready(res)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::stream;
    use http_body_util::{Empty, Full, StreamBody};
    use std::sync::{Arc, Mutex};

    type Seen = Arc<Mutex<Vec<BodyOutcome>>>;

    fn recorder() -> (Seen, OnEnd) {
        let seen: Seen = Arc::default();
        let s = seen.clone();
        (seen, Box::new(move |o| s.lock().unwrap().push(o)))
    }

    fn chunks(
        parts: Vec<Result<&'static str, &'static str>>,
    ) -> StreamBody<impl futures_util::Stream<Item = Result<Frame<Bytes>, BoxError>>> {
        StreamBody::new(stream::iter(parts.into_iter().map(|p| match p {
            Ok(s) => Ok(Frame::data(Bytes::from_static(s.as_bytes()))),
            Err(e) => Err(BoxError::from(e)),
        })))
    }

    #[tokio::test]
    async fn frames_pass_one_by_one_and_usage_is_read() {
        let (seen, cb) = recorder();
        let sse = vec![
            Ok("data: {\"model\":\"m1\",\"us"),
            Ok("age\":{\"prompt_tokens\":3,\"completion_tokens\":4}}\n\n"),
            Ok("data: [DONE]\n\n"),
        ];
        let parser = UsageParser::new(Some("text/event-stream"));
        let mut body = ObservedBody::new(chunks(sse.clone()), Some(parser), cb);
        for want in &sse {
            let f = body.frame().await.unwrap().unwrap();
            assert_eq!(f.into_data().unwrap(), want.unwrap().as_bytes());
            assert!(
                seen.lock().unwrap().is_empty(),
                "callback fired before the end"
            );
        }
        assert!(body.frame().await.is_none());
        drop(body);
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 1);
        let o = &seen[0];
        assert!(o.completed);
        assert_eq!(
            o.bytes,
            sse.iter().map(|s| s.unwrap().len() as u64).sum::<u64>()
        );
        assert_eq!(o.model.as_deref(), Some("m1"));
        assert_eq!(o.usage.as_ref().map(|u| u.total_tokens), Some(7));
    }

    #[tokio::test]
    async fn error_fires_once_as_incomplete() {
        let (seen, cb) = recorder();
        let mut body = ObservedBody::counting(chunks(vec![Ok("abc"), Err("reset")]), cb);
        assert!(body.frame().await.unwrap().is_ok());
        assert!(body.frame().await.unwrap().is_err());
        drop(body);
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 1);
        assert_eq!((seen[0].bytes, seen[0].completed), (3, false));
    }

    #[tokio::test]
    async fn early_drop_fires_once_as_incomplete() {
        let (seen, cb) = recorder();
        let mut body = ObservedBody::counting(chunks(vec![Ok("ab"), Ok("cd")]), cb);
        body.frame().await.unwrap().unwrap();
        drop(body);
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 1);
        assert_eq!((seen[0].bytes, seen[0].completed), (2, false));
    }

    #[tokio::test]
    async fn empty_or_unpolled_end_counts_as_complete() {
        let (seen, cb) = recorder();
        drop(ObservedBody::counting(Empty::<Bytes>::new(), cb));
        assert!(seen.lock().unwrap()[0].completed);

        let (seen, cb) = recorder();
        let body = ObservedBody::counting(Full::new(Bytes::from_static(b"hello")), cb).boxed();
        let collected = body.collect().await.unwrap().to_bytes();
        assert_eq!(&collected[..], b"hello");
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 1);
        assert_eq!((seen[0].bytes, seen[0].completed), (5, true));
    }
}
