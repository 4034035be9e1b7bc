//! The change feed: a dedicated connection that `LISTEN`s on [`CHANNEL`] and hands other
//! gateways' notices to the gateway, skipping its own. When the connection is lost, or
//! cannot be made at start, it says so (`Lost`, once per outage), reconnects with backoff
//! (100 ms doubling to 5 s) and asks for a full reload (`Resync`), since notices sent
//! meanwhile are gone; it also sends `Resync` once first connected, for changes made between
//! the gateway's load and `LISTEN`. It never blocks on a slow consumer: a notice that does
//! not fit the channel is dropped and a `Resync` sent once there is room.

use super::config::Settings;
use crate::store::feed::{FeedEvent, Notice, NoticeSealer, CHANNEL};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_postgres::AsyncMessage;
use tokio_postgres_rustls::MakeRustlsConnect;

/// Capacity of the channel to the gateway.
pub const CAPACITY: usize = 1024;
const BACKOFF_FIRST: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// How often the listener checks that its connection still answers: a peer that vanished
/// without closing the socket is noticed within this plus the ping timeout.
const PING_EVERY: Duration = Duration::from_secs(2);
const PING_TIMEOUT: Duration = Duration::from_secs(3);

/// Notices heard that did not open (logged at 1, 2, 4, 8, … so a flood cannot fill the log).
static UNOPENED: AtomicU64 = AtomicU64::new(0);

/// The next wait before reconnecting.
pub fn next_backoff(current: Duration) -> Duration {
    (current * 2).min(BACKOFF_MAX)
}

/// Hands events to the gateway without ever waiting for it.
struct Sender {
    tx: mpsc::Sender<FeedEvent>,
    /// Something was dropped: a `Resync` is owed.
    owe_resync: bool,
}

/// The gateway dropped its receiver: stop listening.
struct Gone;

impl Sender {
    fn send(&mut self, event: FeedEvent) -> Result<(), Gone> {
        self.settle()?;
        if self.owe_resync {
            return Ok(());
        }
        match self.tx.try_send(event) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.owe_resync = true;
                Ok(())
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Err(Gone),
        }
    }

    /// Sends the owed `Resync` if there is room now.
    fn settle(&mut self) -> Result<(), Gone> {
        if !self.owe_resync {
            return Ok(());
        }
        match self.tx.try_send(FeedEvent::Resync) {
            Ok(()) => {
                self.owe_resync = false;
                Ok(())
            }
            Err(mpsc::error::TrySendError::Full(_)) => Ok(()),
            Err(mpsc::error::TrySendError::Closed(_)) => Err(Gone),
        }
    }
}

/// Starts the listener on `runtime` (the store's).
pub fn spawn(
    runtime: &tokio::runtime::Handle,
    settings: Arc<Settings>,
    tls: MakeRustlsConnect,
    origin: Arc<str>,
    sealer: Arc<dyn NoticeSealer>,
) -> mpsc::Receiver<FeedEvent> {
    let (tx, rx) = mpsc::channel(CAPACITY);
    runtime.spawn(run(
        settings,
        tls,
        origin,
        sealer,
        Sender {
            tx,
            owe_resync: false,
        },
    ));
    rx
}

async fn run(
    settings: Arc<Settings>,
    tls: MakeRustlsConnect,
    origin: Arc<str>,
    sealer: Arc<dyn NoticeSealer>,
    mut out: Sender,
) {
    let mut backoff = BACKOFF_FIRST;
    // Whether the gateway has been told (`Lost`) that changes are not being heard.
    let mut down = false;
    loop {
        let Ok((reason, was_live)) =
            listen_once(&settings, &tls, &origin, &*sealer, &mut out, &mut down).await
        else {
            return;
        };
        if was_live {
            tracing::warn!("store: change feed lost: {reason}; reconnecting");
            backoff = BACKOFF_FIRST;
        } else if !down {
            tracing::warn!("store: change feed cannot connect: {reason}; retrying");
        }
        if !down {
            if out.send(FeedEvent::Lost(reason)).is_err() {
                return;
            }
            down = true;
        }
        tokio::time::sleep(backoff).await;
        backoff = next_backoff(backoff);
    }
}

/// Connects, listens and forwards until the connection fails; returns why, and whether it
/// had been listening (so the loss is news).
async fn listen_once(
    settings: &Settings,
    tls: &MakeRustlsConnect,
    origin: &str,
    sealer: &dyn NoticeSealer,
    out: &mut Sender,
    down: &mut bool,
) -> Result<(String, bool), Gone> {
    let (client, mut connection) = match settings.driver_config().connect(tls.clone()).await {
        Ok(c) => c,
        Err(e) => return Ok((super::errors::map(e).to_string(), false)),
    };
    let (msg_tx, mut msg_rx) = mpsc::unbounded_channel();
    let driver = tokio::spawn(async move {
        let mut stream = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        use futures_util::StreamExt;
        while let Some(m) = stream.next().await {
            let failed = m.is_err();
            if msg_tx.send(m).is_err() || failed {
                break;
            }
        }
    });
    let _abort = AbortOnDrop(driver);
    if let Err(e) = client.batch_execute(&format!("LISTEN {CHANNEL}")).await {
        return Ok((super::errors::map(e).to_string(), false));
    }
    if *down {
        tracing::info!("store: change feed back; resyncing");
        *down = false;
    }
    // Notices sent before LISTEN took effect are not heard: the gateway reloads.
    out.send(FeedEvent::Resync)?;
    let mut ping = tokio::time::interval(PING_EVERY);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ping.tick().await;
    loop {
        tokio::select! {
            m = msg_rx.recv() => match m {
                Some(Ok(AsyncMessage::Notification(n))) => {
                    match Notice::open(n.payload(), sealer) {
                        Some(notice) if notice.origin == origin => continue,
                        Some(notice) => out.send(FeedEvent::Notice(notice))?,
                        // Forged (any role that can connect may NOTIFY), sealed with another
                        // secret.key, or from a newer version: never acted on.
                        None => {
                            let n = UNOPENED.fetch_add(1, Ordering::Relaxed) + 1;
                            if n.is_power_of_two() {
                                tracing::warn!("store: ignored {n} change notices so far that do not open with this gateway's key (forged, or from a gateway with another secret.key)");
                            }
                        }
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return Ok((super::errors::map(e).to_string(), true)),
                None => return Ok(("the connection closed".into(), true)),
            },
            _ = ping.tick() => {
                out.settle()?;
                if out.tx.is_closed() {
                    return Err(Gone);
                }
                match tokio::time::timeout(PING_TIMEOUT, client.simple_query("SELECT 1")).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => return Ok((super::errors::map(e).to_string(), true)),
                    Err(_) => return Ok((format!("no answer to a ping within {} s", PING_TIMEOUT.as_secs()), true)),
                }
            }
        }
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_five_seconds() {
        let mut b = BACKOFF_FIRST;
        let mut seen = vec![b];
        for _ in 0..8 {
            b = next_backoff(b);
            seen.push(b);
        }
        assert_eq!(seen[1], Duration::from_millis(200));
        assert_eq!(seen[5], Duration::from_millis(3200));
        assert_eq!(*seen.last().unwrap(), BACKOFF_MAX);
    }

    #[test]
    fn a_full_channel_drops_notices_and_owes_one_resync() {
        let (tx, mut rx) = mpsc::channel(2);
        let mut out = Sender {
            tx,
            owe_resync: false,
        };
        let lost = |s: &str| FeedEvent::Lost(s.into());
        for i in 0..5 {
            assert!(out.send(lost(&i.to_string())).is_ok());
        }
        assert!(out.owe_resync);
        assert_eq!(rx.try_recv().unwrap(), lost("0"));
        // Room again: the owed Resync goes first; "x" finds no room and is owed again.
        assert!(out.send(lost("x")).is_ok());
        assert!(out.owe_resync);
        assert_eq!(rx.try_recv().unwrap(), lost("1"));
        assert_eq!(rx.try_recv().unwrap(), FeedEvent::Resync);
        assert!(rx.try_recv().is_err());
        assert!(out.settle().is_ok());
        assert!(!out.owe_resync);
        assert_eq!(rx.try_recv().unwrap(), FeedEvent::Resync);
        assert!(out.send(lost("y")).is_ok());
        assert_eq!(rx.try_recv().unwrap(), lost("y"));
        drop(rx);
        assert!(out.send(FeedEvent::Resync).is_err());
    }
}
