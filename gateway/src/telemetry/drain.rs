//! A bounded hand-off from the request path to a background writer thread that wakes on a
//! tick rather than per item.
//!
//! Exists because waking a thread costs a futex call and two context switches: at tens of
//! thousands of requests per second, a writer blocked in `recv` made every request pay for a
//! wake-up that the profile showed as the largest single cost after the socket writes. Here
//! the writer sleeps for one tick, then takes everything queued at once; a push is only an
//! atomic slot claim in a preallocated ring and never blocks. Only [`Drain::flush`] wakes the
//! writer early.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TryRecvError, TrySendError};
use std::thread::Thread;
use std::time::Duration;

enum Msg<T> {
    Item(T),
    Flush(mpsc::Sender<()>),
}

/// The sending side: cheap to share behind an `Arc`; dropping it stops the writer after it
/// has written what was queued.
pub struct Drain<T> {
    tx: SyncSender<Msg<T>>,
    writer: Thread,
    dropped: AtomicU64,
}

impl<T: Send + 'static> Drain<T> {
    /// Starts thread `name`, which every `tick` (or on a flush) hands all queued items to
    /// `sink` in arrival order. `sink` is also called with an empty batch on a flush, so it
    /// can flush its own buffers. At most `capacity` items wait; more are dropped and counted.
    pub fn start(
        name: &str,
        capacity: usize,
        tick: Duration,
        sink: impl FnMut(&mut Vec<T>) + Send + 'static,
    ) -> std::io::Result<Self> {
        Self::spawn(name, capacity, tick, false, sink)
    }

    /// Like [`Drain::start`], but `sink` is called every `tick` even with nothing new, so a
    /// sink holding items it could not write yet retries them on its own.
    pub fn start_ticking(
        name: &str,
        capacity: usize,
        tick: Duration,
        sink: impl FnMut(&mut Vec<T>) + Send + 'static,
    ) -> std::io::Result<Self> {
        Self::spawn(name, capacity, tick, true, sink)
    }

    fn spawn(
        name: &str,
        capacity: usize,
        tick: Duration,
        every_tick: bool,
        sink: impl FnMut(&mut Vec<T>) + Send + 'static,
    ) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::sync_channel(capacity);
        let handle = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || write_loop(rx, tick, capacity, every_tick, sink))?;
        Ok(Drain {
            tx,
            writer: handle.thread().clone(),
            dropped: AtomicU64::new(0),
        })
    }

    /// Queues `item` without blocking; returns `false` (and counts it) when the queue is full.
    pub fn push(&self, item: T) -> bool {
        match self.tx.try_send(Msg::Item(item)) {
            Ok(()) => true,
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                false
            }
        }
    }

    /// Items lost because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Waits (blocking, up to `timeout`) until every item queued before this call has been
    /// handed to the sink. Returns whether that happened in time.
    pub fn flush(&self, timeout: Duration) -> bool {
        let (done_tx, done_rx) = mpsc::channel();
        // Wake the writer first: with the queue full, `send` waits for it to make room.
        self.writer.unpark();
        if self.tx.send(Msg::Flush(done_tx)).is_err() {
            return false;
        }
        self.writer.unpark();
        done_rx.recv_timeout(timeout).is_ok()
    }
}

fn write_loop<T>(
    rx: Receiver<Msg<T>>,
    tick: Duration,
    capacity: usize,
    every_tick: bool,
    mut sink: impl FnMut(&mut Vec<T>),
) {
    let mut batch = Vec::with_capacity(capacity.min(1024));
    let mut waiters = Vec::new();
    loop {
        std::thread::park_timeout(tick);
        let closed = loop {
            match rx.try_recv() {
                Ok(Msg::Item(item)) => batch.push(item),
                Ok(Msg::Flush(done)) => {
                    // Items queued after the flush request wait for the next round, so the
                    // waiter is answered as soon as its own items are out.
                    sink(&mut batch);
                    batch.clear();
                    waiters.push(done);
                }
                Err(TryRecvError::Empty) => break false,
                Err(TryRecvError::Disconnected) => break true,
            }
        };
        if every_tick || !batch.is_empty() {
            sink(&mut batch);
            batch.clear();
        }
        for w in waiters.drain(..) {
            let _ = w.send(());
        }
        if closed {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// The batches a test sink received, in order.
    type Batches = Arc<Mutex<Vec<Vec<u32>>>>;

    fn collecting(tick: Duration, capacity: usize) -> (Drain<u32>, Batches) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        let d = Drain::start("test-drain", capacity, tick, move |b: &mut Vec<u32>| {
            s.lock().unwrap().push(b.clone())
        })
        .unwrap();
        (d, seen)
    }

    #[test]
    fn items_arrive_in_order_in_batches_on_the_tick() {
        let (d, seen) = collecting(Duration::from_millis(50), 100);
        for i in 0..10 {
            assert!(d.push(i));
        }
        std::thread::sleep(Duration::from_millis(200));
        let all: Vec<u32> = seen.lock().unwrap().concat();
        assert_eq!(all, (0..10).collect::<Vec<_>>());
        // Ten pushes in a burst are written in far fewer batches than items.
        assert!(
            seen.lock().unwrap().len() <= 2,
            "{:?}",
            seen.lock().unwrap()
        );
    }

    #[test]
    fn flush_hands_over_everything_queued_without_waiting_for_the_tick() {
        let (d, seen) = collecting(Duration::from_secs(3600), 100);
        d.push(1);
        d.push(2);
        assert!(d.flush(Duration::from_secs(5)));
        assert_eq!(seen.lock().unwrap().concat(), vec![1, 2]);
        // A flush with nothing queued still gives the sink a chance to flush its buffers.
        assert!(d.flush(Duration::from_secs(5)));
        assert_eq!(seen.lock().unwrap().last(), Some(&vec![]));
    }

    #[test]
    fn a_full_queue_drops_and_counts_instead_of_blocking() {
        let (d, seen) = collecting(Duration::from_secs(3600), 4);
        let accepted = (0..10).filter(|i| d.push(*i)).count();
        assert_eq!(accepted, 4);
        assert_eq!(d.dropped(), 6);
        assert!(d.flush(Duration::from_secs(5)));
        assert_eq!(seen.lock().unwrap().concat(), vec![0, 1, 2, 3]);
    }

    #[test]
    fn the_writer_writes_what_is_queued_and_stops_when_the_drain_is_dropped() {
        let (d, seen) = collecting(Duration::from_millis(20), 10);
        d.push(7);
        drop(d);
        std::thread::sleep(Duration::from_millis(200));
        assert_eq!(seen.lock().unwrap().concat(), vec![7]);
    }
}
