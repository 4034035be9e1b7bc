//! The `usage` table: one row per request whose LLM token usage was accounted, and the
//! aggregates `GET /api/v1/usage` shows.

use super::{SqliteStore, StoreError};
use rusqlite::params;
use serde::Serialize;

/// One accounted request, as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct UsageRow {
    /// RFC 3339 UTC with milliseconds (`2026-01-02T03:04:05.678Z`), when the request arrived.
    pub time: String,
    pub user: Option<String>,
    pub groups: Vec<String>,
    pub service: Option<String>,
    pub config: Option<String>,
    pub model: Option<String>,
    pub prompt: u64,
    pub completion: u64,
    pub total: u64,
    /// The provider reported nothing and the numbers are estimates.
    pub estimated: bool,
    /// The gateway that served the request (`--gateway-name`).
    pub gateway: Option<String>,
}

/// What usage is grouped by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UsageKey {
    User,
    /// Each of a record's groups counts it once.
    Group,
    Model,
    Service,
    Config,
}

impl UsageKey {
    /// Parses `user`, `group`, `model`, `service` or `config` (plurals accepted).
    pub fn parse(s: &str) -> Option<UsageKey> {
        Some(match s.trim().trim_end_matches('s') {
            "user" => UsageKey::User,
            "group" => UsageKey::Group,
            "model" => UsageKey::Model,
            "service" => UsageKey::Service,
            "config" => UsageKey::Config,
            _ => return None,
        })
    }

    /// The name as the API spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            UsageKey::User => "user",
            UsageKey::Group => "group",
            UsageKey::Model => "model",
            UsageKey::Service => "service",
            UsageKey::Config => "config",
        }
    }
}

/// Totals for one key value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct UsageTotals {
    /// The user, group, model, service or config name; `-` when the records had none.
    pub key: String,
    pub requests: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
    /// How many of the requests carry estimated (not provider-reported) numbers.
    pub estimated: u64,
}

impl SqliteStore {
    /// Inserts `rows` in one transaction.
    pub fn insert_usage(&self, rows: &[UsageRow]) -> Result<(), StoreError> {
        if rows.is_empty() {
            return Ok(());
        }
        let mut conn = self.lock_relaxed();
        let tx = conn.transaction()?;
        {
            let mut stmt = tx.prepare_cached(
                "INSERT INTO usage (time, user, groups, service, config, model, prompt, completion, total,
                                    estimated, gateway)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
            )?;
            for r in rows {
                let groups = serde_json::to_string(&r.groups).unwrap_or_else(|_| "[]".into());
                stmt.execute(params![
                    r.time,
                    r.user,
                    groups,
                    r.service,
                    r.config,
                    r.model,
                    clamp(r.prompt),
                    clamp(r.completion),
                    clamp(r.total),
                    r.estimated,
                    r.gateway,
                ])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Totals per `by` over the rows at or after `since` (same format as [`UsageRow::time`]),
    /// largest total first.
    pub fn usage_totals(&self, by: UsageKey, since: &str) -> Result<Vec<UsageTotals>, StoreError> {
        let (key, from) = match by {
            UsageKey::User => ("u.user", "usage u"),
            UsageKey::Group => ("g.value", "usage u LEFT JOIN json_each(u.groups) g"),
            UsageKey::Model => ("u.model", "usage u"),
            UsageKey::Service => ("u.service", "usage u"),
            UsageKey::Config => ("u.config", "usage u"),
        };
        let sql = format!(
            "SELECT coalesce({key}, '-') AS k, count(*), sum(u.prompt), sum(u.completion),
                    sum(u.total), sum(u.estimated)
             FROM {from} WHERE u.time >= ?1
             GROUP BY k ORDER BY sum(u.total) DESC, k"
        );
        let conn = self.lock();
        let mut stmt = conn.prepare(&sql)?;
        let rows = stmt.query_map([since], |r| {
            Ok(UsageTotals {
                key: r.get(0)?,
                requests: r.get::<_, i64>(1)? as u64,
                prompt_tokens: r.get::<_, i64>(2)? as u64,
                completion_tokens: r.get::<_, i64>(3)? as u64,
                total_tokens: r.get::<_, i64>(4)? as u64,
                estimated: r.get::<_, i64>(5)? as u64,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

impl SqliteStore {
    /// Every row, oldest first.
    pub fn list_usage(&self) -> Result<Vec<UsageRow>, StoreError> {
        let conn = self.lock();
        let mut stmt = conn.prepare(
            "SELECT time, user, groups, service, config, model, prompt, completion, total,
                    estimated, gateway
             FROM usage ORDER BY time, rowid",
        )?;
        let rows = stmt.query_map([], |r| {
            let groups: String = r.get(2)?;
            Ok(UsageRow {
                time: r.get(0)?,
                user: r.get(1)?,
                groups: serde_json::from_str(&groups).unwrap_or_default(),
                service: r.get(3)?,
                config: r.get(4)?,
                model: r.get(5)?,
                prompt: r.get::<_, i64>(6)?.max(0) as u64,
                completion: r.get::<_, i64>(7)?.max(0) as u64,
                total: r.get::<_, i64>(8)?.max(0) as u64,
                estimated: r.get(9)?,
                gateway: r.get(10)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Total tokens per (UTC day `YYYY-MM-DD`, model) over the rows at or after `since`, of
    /// one `user` or everyone: the portal's chart in one scan.
    pub fn usage_daily(
        &self,
        user: Option<&str>,
        since: &str,
    ) -> Result<Vec<(String, String, u64)>, StoreError> {
        let conn = self.lock();
        let mut stmt = conn.prepare(
            "SELECT substr(time, 1, 10) AS d, coalesce(model, '-') AS m, sum(total)
             FROM usage WHERE time >= ?1 AND (?2 IS NULL OR user = ?2)
             GROUP BY d, m ORDER BY d, m",
        )?;
        let rows = stmt.query_map(rusqlite::params![since, user], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get::<_, i64>(2)?.max(0) as u64))
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

fn clamp(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(
        time: &str,
        user: &str,
        groups: &[&str],
        model: &str,
        p: u64,
        c: u64,
        est: bool,
    ) -> UsageRow {
        UsageRow {
            time: time.into(),
            user: Some(user.into()),
            groups: groups.iter().map(|g| g.to_string()).collect(),
            service: Some("ai".into()),
            config: None,
            model: Some(model.into()),
            prompt: p,
            completion: c,
            total: p + c,
            estimated: est,
            gateway: Some("gw-a".into()),
        }
    }

    #[test]
    fn aggregates_by_each_key_and_window() {
        let store = SqliteStore::open_in_memory().unwrap();
        store
            .insert_usage(&[
                row(
                    "2026-01-01T00:00:00.000Z",
                    "alice",
                    &["dev", "ops"],
                    "m1",
                    11,
                    7,
                    false,
                ),
                row(
                    "2026-01-02T00:00:00.000Z",
                    "alice",
                    &["dev", "ops"],
                    "m2",
                    11,
                    7,
                    false,
                ),
                row("2026-01-02T00:00:01.000Z", "bob", &[], "m1", 1, 2, true),
            ])
            .unwrap();
        let users = store.usage_totals(UsageKey::User, "2000").unwrap();
        assert_eq!(users.len(), 2);
        assert_eq!(
            users[0],
            UsageTotals {
                key: "alice".into(),
                requests: 2,
                prompt_tokens: 22,
                completion_tokens: 14,
                total_tokens: 36,
                estimated: 0
            }
        );
        assert_eq!((users[1].key.as_str(), users[1].estimated), ("bob", 1));

        let groups = store.usage_totals(UsageKey::Group, "2000").unwrap();
        let keys: Vec<_> = groups
            .iter()
            .map(|g| (g.key.as_str(), g.requests, g.total_tokens))
            .collect();
        assert_eq!(keys, vec![("dev", 2, 36), ("ops", 2, 36), ("-", 1, 3)]);

        let recent = store
            .usage_totals(UsageKey::Model, "2026-01-02T00:00:00.000Z")
            .unwrap();
        let keys: Vec<_> = recent
            .iter()
            .map(|g| (g.key.as_str(), g.requests))
            .collect();
        assert_eq!(keys, vec![("m2", 1), ("m1", 1)]);
        let none = store.usage_totals(UsageKey::Config, "2000").unwrap();
        assert_eq!(none[0].key, "-");
        assert!(store
            .usage_totals(UsageKey::Service, "2027")
            .unwrap()
            .is_empty());
    }

    #[test]
    fn keys_parse() {
        assert_eq!(UsageKey::parse("users"), Some(UsageKey::User));
        assert_eq!(UsageKey::parse("group"), Some(UsageKey::Group));
        assert_eq!(UsageKey::parse("nope"), None);
        assert_eq!(UsageKey::Config.as_str(), "config");
    }
}
