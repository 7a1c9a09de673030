//! An append-only log's table (Kommo's events) and what its entries do to entity rows:
//! deletions and restores.
//!
//! A log is read in pages whose order across pages may be anything, and a page may come
//! again after a crash. So every effect is kept as the newest time of its kind
//! (`deleted_event_at`, `restored_event_at`) and `deleted_at` is derived from them and the
//! row's version: a row is deleted when its newest deletion is not older than its newest
//! restore nor than its own `updated_at` (a version newer than the deletion is alive). Each
//! effect only moves a time forward, so applying them in any order, twice or late, ends the
//! same. Times are seconds, so a deletion and a restore in one second tie: the tie counts as
//! deleted until the entity is read again and found ([`Mark::Found`], which puts the restore
//! one microsecond after the deletion). A deletion of an entity never stored leaves a
//! tombstone (`raw` JSON null, version at 0), so that a late first fetch of an older version
//! stays deleted.

use super::rows::{bind_cells, bind_columns, unnest, Cell, Frame, Kind, Row, TableDecl};
use super::{Doing, Store, StoreError, Tx};

/// `deleted_at` as derived from a row's effect times and version (SQL, columns of `t`).
pub(crate) const DELETED_AT: &str = "CASE WHEN t.deleted_event_at IS NOT NULL \
     AND t.deleted_event_at >= t.updated_at \
     AND (t.restored_event_at IS NULL OR t.deleted_event_at >= t.restored_event_at) \
     THEN t.deleted_event_at END";

/// Appends log entries (those already stored are left alone). Returns how many were new.
pub async fn append(tx: &mut Tx, table: &TableDecl, rows: &[Row]) -> Result<u64, StoreError> {
    let Frame::Log { key } = table.frame else {
        panic!("{} is not a log", table.name);
    };
    if rows.is_empty() {
        return Ok(0);
    }
    let u = unnest(table.columns, 3);
    let sql = format!(
        "INSERT INTO {t} (account_id, raw, {cols}, synced_at) \
         SELECT u.account_id, u.raw, {select}, now() \
         FROM UNNEST($1::bigint[], $2::jsonb[], {params}) AS u(account_id, raw, {cols}) \
         ON CONFLICT (account_id, {key}) DO NOTHING",
        t = table.name,
        cols = u.names,
        select = u.select,
        params = u.params,
    );
    let cells: Vec<&Vec<Cell>> = rows.iter().map(|r| &r.cells).collect();
    let q = sqlx::query(&sql)
        .bind(rows.iter().map(|r| r.account_id).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.raw.clone()).collect::<Vec<_>>());
    let q = bind_columns!(q, table.columns, cells);
    let done = q.execute(&mut **tx).await.doing("appending log entries")?;
    Ok(done.rows_affected())
}

/// Which time an effect moves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mark {
    Deleted,
    Restored,
    /// Read again at `at` and found: alive, whatever tie of seconds the log shows, unless
    /// deleted again after `at`.
    Found,
}

/// Applies effects of one kind to entity rows of `table`: `(account_id, id, at)`. Returns
/// how many rows it deleted or brought back (`deleted_at` changed).
pub async fn mark(
    tx: &mut Tx,
    table: &TableDecl,
    mark: Mark,
    effects: &[(i64, i64, i64)],
) -> Result<u64, StoreError> {
    assert_eq!(
        table.frame,
        Frame::Entity,
        "{} holds no entities",
        table.name
    );
    if effects.is_empty() {
        return Ok(0);
    }
    // One row per entity, its newest time: a statement may touch a row once.
    let mut newest: std::collections::BTreeMap<(i64, i64), i64> = Default::default();
    for &(account, id, at) in effects {
        let e = newest.entry((account, id)).or_insert(at);
        *e = (*e).max(at);
    }
    let accounts: Vec<i64> = newest.keys().map(|k| k.0).collect();
    let ids: Vec<i64> = newest.keys().map(|k| k.1).collect();
    let ats: Vec<i64> = newest.values().copied().collect();
    let sql = match mark {
        Mark::Deleted => format!(
            "INSERT INTO {t} AS t (account_id, id, updated_at, raw, deleted_event_at, deleted_at, synced_at) \
             SELECT u.account_id, u.id, to_timestamp(0), 'null'::jsonb, to_timestamp(u.at), to_timestamp(u.at), now() \
             FROM UNNEST($1::bigint[], $2::bigint[], $3::bigint[]) AS u(account_id, id, at) \
             ON CONFLICT (account_id, id) DO UPDATE SET deleted_event_at = excluded.deleted_event_at \
             WHERE t.deleted_event_at IS NULL OR t.deleted_event_at < excluded.deleted_event_at",
            t = table.name
        ),
        Mark::Found => format!(
            "UPDATE {t} AS t SET restored_event_at = t.deleted_event_at + interval '1 microsecond' \
             FROM UNNEST($1::bigint[], $2::bigint[], $3::bigint[]) AS u(account_id, id, at) \
             WHERE t.account_id = u.account_id AND t.id = u.id AND t.deleted_event_at IS NOT NULL \
               AND t.deleted_event_at <= to_timestamp(u.at) \
               AND (t.restored_event_at IS NULL OR t.restored_event_at <= t.deleted_event_at)",
            t = table.name
        ),
        // A restore of an entity never stored has nothing to restore.
        Mark::Restored => format!(
            "UPDATE {t} AS t SET restored_event_at = to_timestamp(u.at) \
             FROM UNNEST($1::bigint[], $2::bigint[], $3::bigint[]) AS u(account_id, id, at) \
             WHERE t.account_id = u.account_id AND t.id = u.id \
               AND (t.restored_event_at IS NULL OR t.restored_event_at < to_timestamp(u.at))",
            t = table.name
        ),
    };
    sqlx::query(&sql)
        .bind(&accounts)
        .bind(&ids)
        .bind(&ats)
        .execute(&mut **tx)
        .await
        .doing("recording deletions and restores")?;
    let derived = sqlx::query(&format!(
        "UPDATE {t} AS t SET deleted_at = {DELETED_AT} \
         FROM UNNEST($1::bigint[], $2::bigint[]) AS u(account_id, id) \
         WHERE t.account_id = u.account_id AND t.id = u.id \
           AND t.deleted_at IS DISTINCT FROM ({DELETED_AT})",
        t = table.name
    ))
    .bind(&accounts)
    .bind(&ids)
    .execute(&mut **tx)
    .await
    .doing("deriving deleted_at")?;
    Ok(derived.rows_affected())
}

/// The keys `(account_id, id)` of an entity table's rows, live and deleted.
#[derive(Debug, Default)]
pub struct EntityKeys {
    pub live: Vec<(i64, i64)>,
    pub deleted: Vec<(i64, i64)>,
}

impl Store {
    /// Every key of `table`, told apart by `deleted_at` (for a comparison of id sets).
    pub async fn entity_keys(&self, table: &TableDecl) -> Result<EntityKeys, StoreError> {
        let rows: Vec<(i64, i64, bool)> = sqlx::query_as(&format!(
            "SELECT account_id, id, deleted_at IS NOT NULL FROM {} ORDER BY account_id, id",
            table.name
        ))
        .fetch_all(self.pool())
        .await
        .doing("reading the ids the mirror holds")?;
        let mut keys = EntityKeys::default();
        for (account, id, deleted) in rows {
            if deleted {
                keys.deleted.push((account, id));
            } else {
                keys.live.push((account, id));
            }
        }
        Ok(keys)
    }
}
