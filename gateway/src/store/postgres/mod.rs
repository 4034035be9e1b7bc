//! The PostgreSQL backend: one database shared by several gateways. [`PgStore`] implements
//! [`StoreBackend`](super::StoreBackend) (in `backend.rs`) over a connection pool driven by
//! the store's own small tokio runtime, so its synchronous API can be called from a tokio
//! worker thread as well as from a plain thread. Every write tells the other gateways in the
//! same transaction (`NOTIFY`, see [`super::feed`]); `listen.rs` hears them.

mod backend;
mod certs;
pub mod config;
mod errors;
mod import;
mod leases;
mod limits;
mod listen;
mod records;
mod resources;
pub(crate) mod schema;
mod tls;
mod tunnel;
mod usage;

use super::feed::{Notice, NoticeSealer, Topic, CHANNEL};
use super::StoreError;
use config::Settings;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

/// Longest a store call may take before the caller gets `Unavailable` (the pool wait, the
/// connect timeout and the statement timeout all end before it).
pub const CEILING: Duration = Duration::from_secs(15);

/// What every store call runs with: the pool, this gateway's identity in notices and the key
/// that seals them.
#[derive(Clone)]
pub(crate) struct Db {
    pool: Pool,
    origin: Arc<str>,
    sealer: Arc<dyn NoticeSealer>,
}

impl Db {
    /// A pooled connection.
    async fn client(&self) -> Result<deadpool_postgres::Client, StoreError> {
        Ok(self.pool.get().await?)
    }
}

/// Sends `notice` within `tx`, so other gateways hear of the change exactly when it commits.
async fn notify(
    tx: &deadpool_postgres::Transaction<'_>,
    db: &Db,
    topic: Topic,
    name: Option<&str>,
) -> Result<(), StoreError> {
    send_notice(
        tx,
        db,
        Notice {
            origin: db.origin.to_string(),
            topic,
            name: name.map(str::to_string),
            session: None,
        },
    )
    .await
}

/// Sends a prepared notice within `tx` (a new Session travels whole in its notice).
async fn send_notice(
    tx: &deadpool_postgres::Transaction<'_>,
    db: &Db,
    notice: Notice,
) -> Result<(), StoreError> {
    let stmt = tx.prepare_cached("SELECT pg_notify($1, $2)").await?;
    tx.execute(&stmt, &[&CHANNEL, &notice.seal(&*db.sealer)])
        .await?;
    Ok(())
}

/// The store runtime; dropped without waiting, so a `PgStore` may be dropped anywhere,
/// including inside another runtime.
struct Bridge {
    runtime: Option<tokio::runtime::Runtime>,
}

impl Bridge {
    fn new() -> Result<Bridge, StoreError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("postern-store")
            .enable_all()
            .build()
            .map_err(|e| errors::unavailable(format!("cannot start the store runtime: {e}")))?;
        Ok(Bridge {
            runtime: Some(runtime),
        })
    }

    fn handle(&self) -> &tokio::runtime::Handle {
        self.runtime.as_ref().expect("present until drop").handle()
    }

    /// Runs `fut` on the store runtime and waits for it, at most [`CEILING`].
    fn run<T, Fut>(&self, fut: Fut) -> Result<T, StoreError>
    where
        T: Send + 'static,
        Fut: Future<Output = Result<T, StoreError>> + Send + 'static,
    {
        self.run_within(CEILING, fut)
    }

    /// [`Bridge::run`] with another ceiling, for work whose size the caller knows.
    fn run_within<T, Fut>(&self, ceiling: Duration, fut: Fut) -> Result<T, StoreError>
    where
        T: Send + 'static,
        Fut: Future<Output = Result<T, StoreError>> + Send + 'static,
    {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.handle().spawn(async move {
            let out = match tokio::time::timeout(ceiling, fut).await {
                Ok(out) => out,
                Err(_) => Err(errors::unavailable(format!(
                    "no answer within {} s",
                    ceiling.as_secs()
                ))),
            };
            let _ = tx.send(out);
        });
        rx.recv_timeout(ceiling + Duration::from_secs(1))
            .unwrap_or_else(|_| {
                Err(errors::unavailable(format!(
                    "no answer within {} s",
                    ceiling.as_secs()
                )))
            })
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

/// The PostgreSQL-backed store. Cheap to call from anywhere; see the module doc.
pub struct PgStore {
    db: Db,
    settings: Arc<Settings>,
    tls: tokio_postgres_rustls::MakeRustlsConnect,
    /// The store URL with its password hidden, for messages.
    redacted: String,
    // Last: the pool's connections close on this runtime when it goes.
    bridge: Bridge,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PgStore({})", self.redacted)
    }
}

impl PgStore {
    /// Connects to the database at `url` (see `config.rs`), checks that it answers and
    /// brings its schema up to date. `origin` names this gateway in the notices it sends, so
    /// it can skip its own; make it unique per process. `sealer` seals the notices this store
    /// sends and opens those it hears (see [`super::feed`]): every gateway of the store must
    /// use the same key.
    pub fn connect(
        url: &str,
        origin: &str,
        sealer: Arc<dyn NoticeSealer>,
    ) -> Result<PgStore, StoreError> {
        let redacted = config::redact(url);
        let os_user = std::env::var("USER").unwrap_or_else(|_| "postgres".into());
        let settings = Settings::parse(url, &os_user)
            .map_err(|e| StoreError::Postgres(format!("{e} (store URL {redacted})")))?;
        let tls = tls::connector(&settings)
            .map_err(|e| StoreError::Postgres(format!("{e} (store URL {redacted})")))?;
        let bridge = Bridge::new()?;
        let manager = Manager::from_config(
            settings.driver_config(),
            tls.clone(),
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(settings.pool_max)
            .wait_timeout(Some(settings.pool_wait))
            .create_timeout(Some(settings.connect_timeout))
            .recycle_timeout(Some(settings.connect_timeout))
            .runtime(Runtime::Tokio1)
            .build()
            .map_err(|e| StoreError::Postgres(format!("cannot build the pool: {e}")))?;
        let db = Db {
            pool,
            origin: Arc::from(origin),
            sealer,
        };
        let migrate_db = db.clone();
        bridge
            .run(async move {
                let mut client = migrate_db.client().await?;
                schema::migrate(&mut client).await
            })
            .map_err(|e| match e {
                StoreError::Unavailable { backend, reason } => StoreError::Unavailable {
                    backend,
                    reason: format!("{reason} (store URL {redacted})"),
                },
                other => other,
            })?;
        Ok(PgStore {
            db,
            settings: Arc::new(settings),
            tls,
            redacted,
            bridge,
        })
    }

    /// Runs `f` with the pool on the store runtime and waits for its result.
    fn run<T, F, Fut>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(Db) -> Fut,
        Fut: Future<Output = Result<T, StoreError>> + Send + 'static,
    {
        self.bridge.run(f(self.db.clone()))
    }

    /// [`PgStore::run`] with a ceiling of its own (an import of many rows).
    fn run_within<T, F, Fut>(&self, ceiling: Duration, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(Db) -> Fut,
        Fut: Future<Output = Result<T, StoreError>> + Send + 'static,
    {
        self.bridge.run_within(ceiling, f(self.db.clone()))
    }

    /// The schema version the database is at.
    pub fn schema_version(&self) -> Result<i64, StoreError> {
        self.run(|db| async move { schema::version(&db.client().await?).await })
    }
}
