//! Usage rows and their aggregates on PostgreSQL, summing every gateway's rows, with the
//! same results as SQLite (`store/usage.rs`). Usage writes send no notice.

use super::super::usage::{UsageKey, UsageRow, UsageTotals};
use super::super::StoreError;
use super::Db;
use deadpool_postgres::Transaction;

/// Many rows in one statement: one array per column, zipped by `unnest` (one round trip
/// per [`BATCH`] rows instead of one per row).
const INSERT: &str = "INSERT INTO usage (time, user_name, groups, service, config, model, prompt,
                                        completion, total, estimated, gateway)
     SELECT t, u, g::jsonb, s, c, m, p, co, tot, e, gw
     FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
                 $7::bigint[], $8::bigint[], $9::bigint[], $10::bool[], $11::text[])
          AS x(t, u, g, s, c, m, p, co, tot, e, gw)";

/// Rows per insert statement.
const BATCH: usize = 5_000;

/// PostgreSQL text cannot hold NUL, which SQLite keeps; a model name or group from an
/// upstream or an IdP may carry one, and must not make the whole batch fail.
fn text(s: &str) -> std::borrow::Cow<'_, str> {
    if s.contains('\0') {
        s.replace('\0', "\u{FFFD}").into()
    } else {
        s.into()
    }
}

fn opt_text(s: &Option<String>) -> Option<std::borrow::Cow<'_, str>> {
    s.as_deref().map(text)
}

pub(super) fn clamp(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Inserts rows with one prepared statement per [`BATCH`] rows.
pub(super) async fn insert_rows(c: &Transaction<'_>, rows: &[UsageRow]) -> Result<(), StoreError> {
    let stmt = c.prepare_cached(INSERT).await?;
    for batch in rows.chunks(BATCH) {
        let col = |f: fn(&UsageRow) -> &Option<String>| -> Vec<Option<std::borrow::Cow<'_, str>>> {
            batch.iter().map(|r| opt_text(f(r))).collect()
        };
        let times: Vec<_> = batch.iter().map(|r| text(&r.time)).collect();
        let groups: Vec<String> = batch
            .iter()
            .map(|r| {
                let gs: Vec<_> = r.groups.iter().map(|g| text(g)).collect();
                serde_json::to_string(&gs).unwrap_or_else(|_| "[]".into())
            })
            .collect();
        let num =
            |f: fn(&UsageRow) -> u64| -> Vec<i64> { batch.iter().map(|r| clamp(f(r))).collect() };
        let estimated: Vec<bool> = batch.iter().map(|r| r.estimated).collect();
        c.execute(
            &stmt,
            &[
                &times,
                &col(|r| &r.user),
                &groups,
                &col(|r| &r.service),
                &col(|r| &r.config),
                &col(|r| &r.model),
                &num(|r| r.prompt),
                &num(|r| r.completion),
                &num(|r| r.total),
                &estimated,
                &col(|r| &r.gateway),
            ],
        )
        .await?;
    }
    Ok(())
}

pub(super) async fn insert(db: Db, rows: Vec<UsageRow>) -> Result<(), StoreError> {
    if rows.is_empty() {
        return Ok(());
    }
    let mut client = db.client().await?;
    let tx = client.transaction().await?;
    insert_rows(&tx, &rows).await?;
    tx.commit().await?;
    Ok(())
}

pub(super) async fn totals(
    db: Db,
    by: UsageKey,
    since: String,
) -> Result<Vec<UsageTotals>, StoreError> {
    let (key, from) = match by {
        UsageKey::User => ("u.user_name", "usage u"),
        UsageKey::Group => (
            "g.value",
            "usage u LEFT JOIN LATERAL jsonb_array_elements_text(u.groups) AS g(value) ON true",
        ),
        UsageKey::Model => ("u.model", "usage u"),
        UsageKey::Service => ("u.service", "usage u"),
        UsageKey::Config => ("u.config", "usage u"),
    };
    let sql = format!(
        "SELECT coalesce({key}, '-') COLLATE \"C\" AS k, count(*), sum(u.prompt)::bigint,
                sum(u.completion)::bigint, sum(u.total)::bigint,
                count(*) FILTER (WHERE u.estimated)
         FROM {from} WHERE u.time >= $1
         GROUP BY 1 ORDER BY sum(u.total) DESC, 1"
    );
    let rows = db.client().await?.query(&sql, &[&since]).await?;
    let n = |v: i64| v.max(0) as u64;
    Ok(rows
        .iter()
        .map(|r| UsageTotals {
            key: r.get(0),
            requests: n(r.get(1)),
            prompt_tokens: n(r.get(2)),
            completion_tokens: n(r.get(3)),
            total_tokens: n(r.get(4)),
            estimated: n(r.get(5)),
        })
        .collect())
}

pub(super) async fn daily(
    db: Db,
    user: Option<String>,
    since: String,
) -> Result<Vec<(String, String, u64)>, StoreError> {
    let rows = db
        .client()
        .await?
        .query(
            "SELECT substr(time, 1, 10) AS d, coalesce(model, '-') AS m, sum(total)::bigint
             FROM usage WHERE time >= $1 AND ($2::text IS NULL OR user_name = $2)
             GROUP BY 1, 2 ORDER BY 1, 2",
            &[&since, &user],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get::<_, i64>(2).max(0) as u64))
        .collect())
}

pub(super) async fn list(db: Db) -> Result<Vec<UsageRow>, StoreError> {
    let rows = db
        .client()
        .await?
        .query(
            "SELECT time, user_name, groups::text, service, config, model, prompt, completion,
                    total, estimated, gateway
             FROM usage ORDER BY time, id",
            &[],
        )
        .await?;
    let n = |v: i64| v.max(0) as u64;
    Ok(rows
        .iter()
        .map(|r| UsageRow {
            time: r.get(0),
            user: r.get(1),
            groups: serde_json::from_str(r.get::<_, &str>(2)).unwrap_or_default(),
            service: r.get(3),
            config: r.get(4),
            model: r.get(5),
            prompt: n(r.get(6)),
            completion: n(r.get(7)),
            total: n(r.get(8)),
            estimated: r.get(9),
            gateway: r.get(10),
        })
        .collect())
}
