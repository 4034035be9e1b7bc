//! Load shedding: a cap on requests in flight in the whole gateway. A request past the cap gets
//! 503 with `Retry-After` at once, so overload costs the gateway one small response per
//! request instead of an ever-growing queue of waiting requests and their buffers.

use super::conn::{Activity, RequestGuard};
use super::limits::Limits;
use super::respond;
use crate::proxy::BoxBody;
use http::{header, HeaderValue, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

/// Counts the gateway's requests in flight against its cap (public listener and tunnel
/// together), and what overload turned away, for the metrics.
#[derive(Debug)]
pub struct Shedder {
    max: usize,
    current: AtomicUsize,
    shed: AtomicU64,
    refused_connections: AtomicU64,
    retry_after: Duration,
}

impl Shedder {
    /// A cap of `max` requests in flight; shed ones are told to come back after `retry_after`.
    pub fn new(max: usize, retry_after: Duration) -> Arc<Self> {
        Arc::new(Shedder {
            max,
            current: AtomicUsize::new(0),
            shed: AtomicU64::new(0),
            refused_connections: AtomicU64::new(0),
            retry_after,
        })
    }

    /// A slot for one more request, or `None` when the listener is at its cap.
    pub fn admit(self: &Arc<Self>) -> Option<Slot> {
        let admitted = self
            .current
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max).then_some(n + 1)
            })
            .is_ok();
        if admitted {
            return Some(Slot(self.clone()));
        }
        let shed = self.shed.fetch_add(1, Ordering::Relaxed) + 1;
        if shed.is_power_of_two() {
            tracing::warn!(
                in_flight = self.max,
                shed_so_far = shed,
                "overloaded: shedding requests with 503 (raise --max-inflight-requests if the host has room)"
            );
        }
        None
    }

    /// Requests in flight now.
    pub fn in_flight(&self) -> usize {
        self.current.load(Ordering::Acquire)
    }

    /// Requests shed since the start.
    pub fn shed_total(&self) -> u64 {
        self.shed.load(Ordering::Relaxed)
    }

    /// Counts a connection closed at the connection cap; returns the count so far.
    pub fn refuse_connection(&self) -> u64 {
        self.refused_connections.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Connections closed at the connection cap since the start.
    pub fn refused_connections(&self) -> u64 {
        self.refused_connections.load(Ordering::Relaxed)
    }

    /// The answer to a shed request.
    pub fn response(&self) -> Response<BoxBody> {
        let secs = self.retry_after.as_secs().max(1);
        let mut resp = respond::error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the gateway is overloaded; retry after {secs} s"),
            None,
        );
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        resp
    }
}

/// One admitted request; frees its place when dropped.
#[derive(Debug)]
pub struct Slot(Arc<Shedder>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.current.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A request let in: counted on its connection and listener until its response ends.
#[derive(Debug)]
pub struct Admitted {
    _request: RequestGuard,
    _slot: Slot,
}

/// Lets a request in, or answers it at once: 503 + `Retry-After` when the listener is at
/// its cap, 431 when it has more header fields than `limits` allow.
pub fn admit(
    activity: &Arc<Activity>,
    shedder: &Arc<Shedder>,
    limits: &Limits,
    headers: &http::HeaderMap,
) -> Result<Admitted, Box<Response<BoxBody>>> {
    let request = activity.begin();
    let Some(slot) = shedder.admit() else {
        return Err(Box::new(shedder.response()));
    };
    if limits.too_many_headers(headers) {
        return Err(Box::new(respond::error(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            format!("more than {} header fields", limits.max_headers),
            None,
        )));
    }
    Ok(Admitted {
        _request: request,
        _slot: slot,
    })
}

impl Admitted {
    /// `resp`, holding this request's place until its body ends.
    pub fn hold(self, resp: Response<BoxBody>) -> Response<BoxBody> {
        resp.map(|body| Guarded::new(body, self).boxed_unsync())
    }
}

pin_project_lite::pin_project! {
    /// A response body that holds `guard` until the body ends or is dropped, so a request
    /// counts as in flight until its last byte is sent, not only until its headers are.
    pub struct Guarded<G> {
        #[pin]
        inner: BoxBody,
        guard: Option<G>,
    }
}

impl<G> Guarded<G> {
    /// Holds `guard` for as long as `inner` streams.
    pub fn new(inner: BoxBody, guard: G) -> Self {
        Guarded {
            inner,
            guard: Some(guard),
        }
    }
}

impl<G> Body for Guarded<G> {
    type Data = bytes::Bytes;
    type Error = crate::proxy::BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let res = this.inner.poll_frame(cx);
        if matches!(res, Poll::Ready(None) | Poll::Ready(Some(Err(_)))) {
            this.guard.take();
        }
        res
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

    #[test]
    fn requests_past_the_cap_are_shed_until_a_slot_frees() {
        let s = Shedder::new(2, Duration::from_secs(3));
        let a = s.admit().unwrap();
        let _b = s.admit().unwrap();
        assert!(s.admit().is_none());
        assert_eq!(s.in_flight(), 2);
        assert_eq!(s.shed_total(), 1);
        drop(a);
        assert!(s.admit().is_some());
        let resp = s.response();
        assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(resp.headers()[header::RETRY_AFTER], "3");
    }

    #[tokio::test]
    async fn a_slot_is_held_until_the_body_ends() {
        let s = Shedder::new(1, Duration::from_secs(1));
        let slot = s.admit().unwrap();
        let body = Guarded::new(respond::full("hello"), slot);
        assert!(s.admit().is_none());
        let bytes = body.collect().await.unwrap().to_bytes();
        assert_eq!(bytes, "hello");
        assert!(s.admit().is_some());
    }
}
