//! The background task: batches queued records, exports them, backs off while the collector
//! is away. Memory stays bounded: the queue has a fixed capacity and at most one batch is
//! held; a batch whose export fails is dropped (and counted), never retried.

use super::encode::{logs_body, traces_body, EncodeContext, Item};
use super::transport::{Signal, Transport};
use super::OtlpError;
use crate::telemetry::access_log::AccessRecord;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio::time::{Instant, MissedTickBehavior};

/// First pause after a failed export; doubled on each further failure.
const BACKOFF_MIN: Duration = Duration::from_secs(1);
/// Longest pause between attempts while the collector is away.
const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// Requests to the worker besides records.
pub(super) enum Control {
    /// Export everything queued so far (ignoring backoff), then answer.
    Flush(oneshot::Sender<()>),
}

/// What happened to records, shared by the exporter handle and the worker.
#[derive(Debug, Default)]
pub(super) struct Counters {
    pub exported: AtomicU64,
    pub dropped: AtomicU64,
    pub failed: AtomicU64,
}

/// How the worker batches.
pub(super) struct Batching {
    pub max: usize,
    pub interval: Duration,
}

pub(super) struct Worker<T: Transport> {
    pub rx: mpsc::Receiver<Box<AccessRecord>>,
    pub control: mpsc::Receiver<Control>,
    pub transport: T,
    pub ctx: EncodeContext,
    pub counters: Arc<Counters>,
    pub batching: Batching,
}

impl<T: Transport> Worker<T> {
    pub async fn run(mut self) {
        let max = self.batching.max.max(1);
        let mut batch: Vec<Item> = Vec::with_capacity(max);
        let every = self.batching.interval;
        let mut tick = tokio::time::interval_at(Instant::now() + every, every);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut backoff = Backoff::default();
        loop {
            let waiting = backoff.retry_at;
            tokio::select! {
                r = self.rx.recv(), if batch.len() < max => match r {
                    Some(rec) => {
                        batch.push(Item::new(*rec));
                        if batch.len() >= max && backoff.ready() {
                            self.export(&mut batch, &mut backoff).await;
                        }
                    }
                    None => {
                        self.export(&mut batch, &mut backoff).await;
                        return;
                    }
                },
                _ = tick.tick() => {
                    if !batch.is_empty() && backoff.ready() {
                        self.export(&mut batch, &mut backoff).await;
                    }
                }
                _ = sleep_until(waiting), if waiting.is_some() && !batch.is_empty() => {
                    self.export(&mut batch, &mut backoff).await;
                }
                Some(Control::Flush(done)) = self.control.recv() => {
                    self.flush(&mut batch, &mut backoff, max).await;
                    let _ = done.send(());
                }
            }
        }
    }

    /// Drains the queue as it is now, exporting full batches and then the rest.
    async fn flush(&mut self, batch: &mut Vec<Item>, backoff: &mut Backoff, max: usize) {
        loop {
            while batch.len() < max {
                match self.rx.try_recv() {
                    Ok(rec) => batch.push(Item::new(*rec)),
                    Err(_) => break,
                }
            }
            if batch.is_empty() {
                return;
            }
            let full = batch.len() >= max;
            self.export(batch, backoff).await;
            if !full {
                return;
            }
        }
    }

    /// Sends `batch` (logs, then traces) and empties it, whatever the outcome.
    async fn export(&self, batch: &mut Vec<Item>, backoff: &mut Backoff) {
        if batch.is_empty() {
            return;
        }
        let n = batch.len() as u64;
        let result = self.send(batch).await;
        batch.clear();
        match result {
            Ok(()) => {
                self.counters.exported.fetch_add(n, Ordering::Relaxed);
                if backoff.failures > 0 {
                    tracing::info!("OTLP export recovered");
                }
                backoff.succeeded();
            }
            Err(e) => {
                self.counters.failed.fetch_add(n, Ordering::Relaxed);
                if backoff.failures == 0 {
                    tracing::warn!(error = %e, records = n,
                        "OTLP export failed; dropping records and retrying with backoff");
                } else {
                    tracing::debug!(error = %e, records = n, "OTLP export failed again");
                }
                backoff.failed();
            }
        }
    }

    async fn send(&self, batch: &[Item]) -> Result<(), OtlpError> {
        self.transport
            .post(Signal::Logs, logs_body(&self.ctx, batch))
            .await?;
        self.transport
            .post(Signal::Traces, traces_body(&self.ctx, batch))
            .await
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Exponential backoff between failed exports.
#[derive(Debug, Default)]
struct Backoff {
    failures: u32,
    retry_at: Option<Instant>,
}

impl Backoff {
    /// Whether an export may be tried now.
    fn ready(&self) -> bool {
        match self.retry_at {
            Some(at) => Instant::now() >= at,
            None => true,
        }
    }

    fn failed(&mut self) {
        self.failures = self.failures.saturating_add(1);
        let pause = BACKOFF_MIN
            .saturating_mul(1 << self.failures.saturating_sub(1).min(16))
            .min(BACKOFF_MAX);
        self.retry_at = Some(Instant::now() + pause);
    }

    fn succeeded(&mut self) {
        self.failures = 0;
        self.retry_at = None;
    }
}
