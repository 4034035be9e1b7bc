//! One served connection's life after its handshake: the time it may take to send its
//! first request, the time it may sit idle between requests, and the server's shutdown.
//! hyper bounds HTTP/1.1 head reads itself, but nothing bounds a connection that never
//! sends a byte (the protocol sniffing waits for ever) or an HTTP/2 connection that
//! answers pings and sends no request; this does, for every protocol.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::{Instant, Sleep};

/// After asking an idle connection to close (HTTP/2 GOAWAY), how long it has to do so.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// What a connection's requests have done, updated by the service as requests start and
/// their responses end.
#[derive(Debug)]
pub struct Activity {
    started: Instant,
    in_flight: AtomicUsize,
    requests: AtomicU64,
    /// Milliseconds after `started` when the connection last became idle.
    idle_since_ms: AtomicU64,
}

/// The state of [`Activity`] at one moment, for [`close_at`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Snapshot {
    /// Requests whose response has not ended.
    pub in_flight: usize,
    /// Requests seen so far.
    pub requests: u64,
    /// When the connection last became idle, from its start.
    pub idle_since: Duration,
}

/// When a connection in state `s` must be closed, counted from its start: `header_read`
/// after the start while no request came, `idle` after its last response while nothing is
/// in flight, never while a request is.
pub fn close_at(s: Snapshot, header_read: Duration, idle: Duration) -> Option<Duration> {
    if s.in_flight > 0 {
        None
    } else if s.requests == 0 {
        Some(header_read)
    } else {
        Some(s.idle_since + idle)
    }
}

impl Activity {
    /// The activity of a connection starting now.
    pub fn new() -> Arc<Self> {
        Arc::new(Activity {
            started: Instant::now(),
            in_flight: AtomicUsize::new(0),
            requests: AtomicU64::new(0),
            idle_since_ms: AtomicU64::new(0),
        })
    }

    /// Marks a request as started; it ends when the returned guard drops.
    pub fn begin(self: &Arc<Self>) -> RequestGuard {
        self.requests.fetch_add(1, Ordering::AcqRel);
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        RequestGuard(self.clone())
    }

    fn snapshot(&self) -> Snapshot {
        Snapshot {
            in_flight: self.in_flight.load(Ordering::Acquire),
            requests: self.requests.load(Ordering::Acquire),
            idle_since: Duration::from_millis(self.idle_since_ms.load(Ordering::Acquire)),
        }
    }
}

/// One request in flight on a connection.
#[derive(Debug)]
pub struct RequestGuard(Arc<Activity>);

impl Drop for RequestGuard {
    fn drop(&mut self) {
        let ms = self.0.started.elapsed().as_millis() as u64;
        self.0.idle_since_ms.fetch_max(ms, Ordering::AcqRel);
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Asks a served connection to stop taking new requests (HTTP/2: GOAWAY) and close once
/// the current ones end; `graceful_shutdown` of hyper's connection types.
pub type Close<C> = fn(Pin<&mut C>);

/// Why [`drive`] ended a connection itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended<T> {
    /// The connection finished on its own (or after a graceful close), with this result.
    Finished(T),
    /// It sent no request in time, or sat idle too long, and did not close when asked.
    Dropped,
}

pin_project_lite::pin_project! {
    /// Runs a connection until it ends, closing it when [`close_at`] says so or when its
    /// `shutdown` future resolves. A connection asked to close that has not closed after a
    /// short grace, and has nothing in flight, is dropped. A hand-written
    /// future rather than an `async fn`, so hyper's connection bounds need no proof under
    /// the erased lifetimes of a spawned task.
    pub struct Driven<C, S> {
        #[pin]
        conn: C,
        #[pin]
        shutdown: S,
        close: Close<C>,
        activity: Arc<Activity>,
        header_read: Duration,
        idle: Duration,
        timer: Pin<Box<Sleep>>,
        closing_idle: Option<Instant>,
        shutting_down: bool,
    }
}

/// Drives `conn` (see [`Driven`]); `close` is its `graceful_shutdown`.
pub fn drive<C: Future, S: Future<Output = ()>>(
    conn: C,
    close: Close<C>,
    activity: Arc<Activity>,
    header_read: Duration,
    idle: Duration,
    shutdown: S,
) -> Driven<C, S> {
    Driven {
        conn,
        shutdown,
        close,
        activity,
        header_read,
        idle,
        timer: Box::pin(tokio::time::sleep(header_read)),
        closing_idle: None,
        shutting_down: false,
    }
}

/// Resolves once `rx` says true (or its sender is gone).
pub async fn closing(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|closing| *closing).await;
}

impl<C: Future, S: Future<Output = ()>> Future for Driven<C, S> {
    type Output = Ended<C::Output>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        if !*this.shutting_down && this.shutdown.poll(cx).is_ready() {
            *this.shutting_down = true;
            (this.close)(this.conn.as_mut());
            // A stream the client never finished must not hold up the shutdown once
            // nothing is in flight on our side.
            this.closing_idle
                .get_or_insert_with(|| Instant::now() + CLOSE_GRACE);
        }
        loop {
            if let Poll::Ready(out) = this.conn.as_mut().poll(cx) {
                return Poll::Ready(Ended::Finished(out));
            }
            let act = &**this.activity;
            let due = || close_at(act.snapshot(), *this.header_read, *this.idle);
            let wake = match *this.closing_idle {
                Some(deadline) => Some(deadline),
                None => due().map(|d| act.started + d),
            };
            match wake {
                Some(w) if this.timer.deadline() != w => this.timer.as_mut().reset(w),
                Some(_) => {}
                // With requests in flight nothing can expire; look again after `idle`
                // (without touching the timer on every poll of a busy connection).
                None if this.timer.deadline() <= Instant::now() => {
                    this.timer.as_mut().reset(Instant::now() + *this.idle)
                }
                None => {}
            }
            if this.timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            let now = Instant::now();
            if this.closing_idle.is_some() {
                if act.snapshot().in_flight == 0 {
                    return Poll::Ready(Ended::Dropped);
                }
                // A request still in flight: let it finish, and look again.
                *this.closing_idle = Some(now + CLOSE_GRACE);
            } else if due().is_some_and(|d| act.started + d <= now) {
                (this.close)(this.conn.as_mut());
                *this.closing_idle = Some(now + CLOSE_GRACE);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEAD: Duration = Duration::from_secs(15);
    const IDLE: Duration = Duration::from_secs(60);

    fn snap(in_flight: usize, requests: u64, idle_since: u64) -> Snapshot {
        Snapshot {
            in_flight,
            requests,
            idle_since: Duration::from_secs(idle_since),
        }
    }

    #[test]
    fn a_silent_connection_has_the_header_time_only() {
        assert_eq!(close_at(snap(0, 0, 0), HEAD, IDLE), Some(HEAD));
    }

    #[test]
    fn nothing_closes_while_a_request_is_in_flight() {
        assert_eq!(close_at(snap(1, 1, 0), HEAD, IDLE), None);
        assert_eq!(close_at(snap(3, 9, 100), HEAD, IDLE), None);
    }

    #[test]
    fn an_idle_connection_closes_after_the_idle_time() {
        assert_eq!(
            close_at(snap(0, 4, 100), HEAD, IDLE),
            Some(Duration::from_secs(160))
        );
    }

    #[test]
    fn guards_track_requests_and_idle_time() {
        let a = Activity::new();
        let g1 = a.begin();
        let g2 = a.begin();
        assert_eq!(a.snapshot().in_flight, 2);
        drop(g1);
        drop(g2);
        let s = a.snapshot();
        assert_eq!((s.in_flight, s.requests), (0, 2));
    }

    struct Never(Arc<AtomicUsize>);
    impl Future for Never {
        type Output = ();
        fn poll(self: Pin<&mut Self>, _: &mut std::task::Context<'_>) -> std::task::Poll<()> {
            std::task::Poll::Pending
        }
    }
    fn count_close(n: Pin<&mut Never>) {
        n.0.fetch_add(1, Ordering::SeqCst);
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_that_never_sends_a_request_is_closed_then_dropped() {
        let asked = Arc::new(AtomicUsize::new(0));
        let a = Activity::new();
        let (_tx, rx) = watch::channel(false);
        let start = Instant::now();
        let out = drive(
            Never(asked.clone()),
            count_close,
            a,
            HEAD,
            IDLE,
            closing(rx),
        )
        .await;
        assert_eq!(out, Ended::Dropped);
        assert_eq!(asked.load(Ordering::SeqCst), 1);
        let took = start.elapsed();
        assert!(took >= HEAD && took <= HEAD + CLOSE_GRACE + Duration::from_millis(10));
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_closes_the_connection_once_nothing_is_in_flight() {
        let asked = Arc::new(AtomicUsize::new(0));
        let a = Activity::new();
        let busy = a.begin();
        let (tx, rx) = watch::channel(false);
        let task = tokio::spawn({
            let asked = asked.clone();
            async move { drive(Never(asked), count_close, a, HEAD, IDLE, closing(rx)).await }
        });
        tokio::time::sleep(Duration::from_secs(1)).await;
        tx.send(true).unwrap();
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(asked.load(Ordering::SeqCst), 1);
        assert!(!task.is_finished(), "dropped with a request in flight");
        drop(busy);
        tokio::time::sleep(CLOSE_GRACE + Duration::from_millis(10)).await;
        assert!(task.is_finished());
        assert_eq!(task.await.unwrap(), Ended::Dropped);
    }
}
