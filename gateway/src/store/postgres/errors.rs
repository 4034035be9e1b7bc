//! PostgreSQL and pool errors as [`StoreError`]s: anything that means "the database cannot be
//! reached right now" becomes `Unavailable` (the gateway answers 503 and goes on serving from
//! memory); a unique violation becomes the variant the caller names; the rest (statements,
//! privileges, TLS certificates) `Postgres`.

use super::super::StoreError;
use deadpool_postgres::PoolError;
use std::error::Error as _;
use tokio_postgres::error::SqlState;

/// `Unavailable` for the PostgreSQL backend.
pub fn unavailable(reason: impl Into<String>) -> StoreError {
    StoreError::Unavailable {
        backend: "postgres",
        reason: reason.into(),
    }
}

/// The error with its causes, one line.
fn describe(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let more = s.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = s.source();
    }
    text
}

/// Whether a server-reported error means the server is going away or cannot serve us now.
fn is_unavailable_state(code: &SqlState) -> bool {
    let c = code.code();
    c.starts_with("08") // connection exception
        || c.starts_with("57P") // admin/crash shutdown, cannot connect now
        || c == SqlState::TOO_MANY_CONNECTIONS.code()
        || c == SqlState::QUERY_CANCELED.code() // statement_timeout
        || c == SqlState::LOCK_NOT_AVAILABLE.code()
        || c.starts_with("53") // insufficient resources
}

/// The TLS error somewhere in `e`'s causes (tokio-rustls wraps it in an `io::Error`).
fn tls_error<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    let mut current = Some(e);
    while let Some(err) = current {
        if let Some(tls) = err.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        if let Some(inner) = err
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        {
            return Some(inner);
        }
        current = err.source();
    }
    None
}

/// Maps a driver error; see the module doc. A TLS failure (a certificate that does not
/// verify, a server without TLS under `sslmode=require`) is a configuration problem, not an
/// outage: it is not `Unavailable`, so a gateway starting with it stops at once.
pub fn map(e: tokio_postgres::Error) -> StoreError {
    if let Some(tls) = tls_error(&e) {
        return StoreError::Postgres(format!(
            "TLS to the server failed: {tls} (check sslmode and sslrootcert in the store URL)"
        ));
    }
    if let Some(db) = e.as_db_error() {
        let text = format!("{}: {}", db.code().code(), db.message());
        return if is_unavailable_state(db.code()) {
            unavailable(text)
        } else {
            StoreError::Postgres(text)
        };
    }
    if e.is_closed() || e.source().is_some_and(|s| s.is::<std::io::Error>()) {
        return unavailable(describe(&e));
    }
    // The driver's own kinds carry no public tag; these are the ones that are our mistake
    // (a statement, a type, the configuration), not the network's: an I/O error in a TLS
    // handshake was caught above.
    let text = describe(&e);
    let ours = [
        "error serializing",
        "error deserializing",
        "invalid column",
        "query returned",
        "expected ",
        "invalid connection string",
        "invalid configuration",
        "error performing TLS handshake",
    ];
    if ours.iter().any(|p| text.starts_with(p)) {
        StoreError::Postgres(text)
    } else {
        unavailable(text)
    }
}

/// Maps a pool error: no connection within the pool wait, or the connect failed.
pub fn map_pool(e: PoolError) -> StoreError {
    match e {
        PoolError::Backend(e) => map(e),
        PoolError::Timeout(_) => unavailable("no database connection within 5 s"),
        PoolError::Closed => unavailable("the connection pool is closed"),
        other => unavailable(describe(&other)),
    }
}

/// The unique constraint a failed insert violated, if that is what happened.
pub fn unique_violation(e: &tokio_postgres::Error) -> Option<String> {
    let db = e.as_db_error()?;
    (db.code() == &SqlState::UNIQUE_VIOLATION).then(|| db.constraint().unwrap_or("").to_string())
}

impl From<tokio_postgres::Error> for StoreError {
    fn from(e: tokio_postgres::Error) -> StoreError {
        map(e)
    }
}

impl From<PoolError> for StoreError {
    fn from(e: PoolError) -> StoreError {
        map_pool(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_states_that_mean_come_back_later_are_unavailable() {
        for code in [
            SqlState::ADMIN_SHUTDOWN,
            SqlState::CRASH_SHUTDOWN,
            SqlState::CANNOT_CONNECT_NOW,
            SqlState::CONNECTION_FAILURE,
            SqlState::TOO_MANY_CONNECTIONS,
            SqlState::QUERY_CANCELED,
            SqlState::DISK_FULL,
        ] {
            assert!(is_unavailable_state(&code), "{code:?}");
        }
        for code in [
            SqlState::UNIQUE_VIOLATION,
            SqlState::UNDEFINED_TABLE,
            SqlState::INVALID_PASSWORD,
            SqlState::INSUFFICIENT_PRIVILEGE,
            SqlState::RAISE_EXCEPTION,
        ] {
            assert!(!is_unavailable_state(&code), "{code:?}");
        }
    }

    #[test]
    fn causes_are_joined_once() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        assert_eq!(describe(&io), "refused");
        let e = unavailable("x");
        assert!(e.is_unavailable());
        assert!(e
            .to_string()
            .contains("the store (postgres) is unreachable: x"));
    }
}
