//! `posternd migrate`: moving an install from one store to another (SQLite to PostgreSQL),
//! all or nothing, with the row counts of both sides compared afterwards.

use super::dump::{Counts, Dump};
use super::feed::NoticeSealer;
use super::location::StoreLocation;
use super::{Store, StoreError};
use std::sync::Arc;

/// Why a migration stopped.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error(transparent)]
    Store(#[from] StoreError),
    /// `--to` names the store `--from` already uses.
    #[error("--to is the store the data directory already uses ({0}); name another store")]
    SameStore(String),
    /// The target does not hold what was written: something else wrote it meanwhile, or
    /// rows were refused. The copy is kept for inspection.
    #[error("after the copy the target holds {found}, but the source held {expected}; check that nothing else writes the target, then run migrate again with --force")]
    Mismatch {
        expected: Box<Counts>,
        found: Box<Counts>,
    },
}

/// `posternd migrate`: opens both stores and [`copy`]s, printing progress to stderr.
/// `sealer` seals the notices the import sends (see [`super::location::notice_sealer`]).
pub fn between(
    source: &StoreLocation,
    target: &StoreLocation,
    replace: bool,
    sealer: Arc<dyn NoticeSealer>,
) -> Result<Counts, MigrateError> {
    if source == target {
        return Err(MigrateError::SameStore(source.describe()));
    }
    eprintln!("copying {} into {}", source.describe(), target.describe());
    let from = source.open("migrate", sealer.clone())?;
    let to = target.open("migrate", sealer)?;
    copy(&from, &to, replace, &mut |line| eprintln!("  {line}"))
}

/// Copies every row of `from` into `to` in one transaction (refused when `to` holds data,
/// unless `replace`), reads `to` back and checks every table's count. `progress` gets one
/// line per step.
pub fn copy(
    from: &Store,
    to: &Store,
    replace: bool,
    progress: &mut dyn FnMut(&str),
) -> Result<Counts, MigrateError> {
    progress(&format!("reading the source ({})", from.backend_name()));
    let dump = from.export()?;
    let expected = dump.counts();
    progress(&format!("read {expected}"));
    progress(&format!(
        "writing the target ({}) in one transaction",
        to.backend_name()
    ));
    to.import(&dump, replace)?;
    progress("verifying");
    let found = Dump::read(&**to)?.counts();
    if found != expected {
        return Err(MigrateError::Mismatch {
            expected: Box::new(expected),
            found: Box::new(found),
        });
    }
    Ok(expected)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::usage::UsageRow;
    use crate::store::CredentialRecord;
    use postern_common::resources::{
        CredentialInfo, CredentialType, GroupSpec, Metadata, Resource,
    };

    fn filled() -> Store {
        let s = Store::open_in_memory().unwrap();
        s.upsert_resources(&[Resource::Group {
            metadata: Metadata {
                name: "admins".into(),
                ..Default::default()
            },
            spec: GroupSpec::default(),
        }])
        .unwrap();
        s.put_secret("openai", b"sealed", false).unwrap();
        s.insert_credential(&CredentialRecord {
            info: CredentialInfo {
                name: "c1".into(),
                user: "alice".into(),
                credential_type: CredentialType::Oauth2,
                client_id: Some("cid".into()),
                created_at: "2026-01-02T03:04:05Z".into(),
                expires_at: None,
            },
            lookup_id: "cid".into(),
            secret_hash: [7; 32],
        })
        .unwrap();
        s.insert_usage(&[UsageRow {
            time: "2026-01-02T03:04:05.000Z".into(),
            user: Some("alice".into()),
            groups: vec!["admins".into()],
            service: Some("ai".into()),
            config: None,
            model: Some("gpt-4o".into()),
            prompt: 10,
            completion: 5,
            total: 15,
            estimated: false,
            gateway: Some("gw-a".into()),
        }])
        .unwrap();
        s
    }

    #[test]
    fn everything_arrives_with_its_timestamps_and_a_second_copy_is_refused() {
        let from = filled();
        let to = Store::open_in_memory().unwrap();
        let mut lines = Vec::new();
        let counts = copy(&from, &to, false, &mut |l| lines.push(l.to_string())).unwrap();
        assert_eq!(counts.resources, 1);
        assert_eq!(counts.usage, 1);
        assert_eq!(from.export().unwrap(), to.export().unwrap());
        assert!(
            lines.iter().any(|l| l.starts_with("read 1 resources")),
            "{lines:?}"
        );

        let again = copy(&from, &to, false, &mut |_| {}).unwrap_err();
        assert!(
            matches!(again, MigrateError::Store(StoreError::NotEmpty { .. })),
            "{again}"
        );
        copy(&from, &to, true, &mut |_| {}).unwrap();
        assert_eq!(from.export().unwrap(), to.export().unwrap());
    }
}
