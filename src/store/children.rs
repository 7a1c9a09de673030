//! Rows owned by one entity, in a table of their own: a lead's contacts and companies, a
//! pipeline's statuses. They are written in the same transaction as their entity and only
//! when the entity's row is, so that an unchanged entity costs no write here either.

use super::rows::{bind_cells, bind_columns, unnest, Cell, ColumnDecl, Kind};
use super::{Doing, StoreError, Tx};

/// A table of rows owned by entities of one stream: key `(account_id, parent, ...)`, the
/// typed columns listed here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChildTable {
    pub name: &'static str,
    /// The column that holds the owning entity's id.
    pub parent: &'static str,
    pub columns: &'static [ColumnDecl],
    pub mode: ChildMode,
}

/// How an entity's new set of rows replaces its old one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChildMode {
    /// The rows are the entity's current set and nothing else (links): the old set is
    /// deleted and the new one inserted.
    Replace,
    /// The rows keep their identity by the `key` column (an integer among `columns`); one
    /// that left its entity gets `gone_at` and stays (statuses: old leads still point at it).
    MarkGone { key: &'static str },
}

/// One child row: its owner and its cells in the declared order.
#[derive(Debug, Clone, PartialEq)]
pub struct ChildRow {
    pub account_id: i64,
    pub parent: i64,
    pub cells: Vec<Cell>,
}

/// Makes the child rows of each of `parents` (account, id) exactly `rows`.
pub async fn write(
    tx: &mut Tx,
    table: &ChildTable,
    parents: &[(i64, i64)],
    rows: &[ChildRow],
) -> Result<(), StoreError> {
    if parents.is_empty() {
        return Ok(());
    }
    let accounts: Vec<i64> = parents.iter().map(|p| p.0).collect();
    let ids: Vec<i64> = parents.iter().map(|p| p.1).collect();
    match table.mode {
        ChildMode::Replace => {
            sqlx::query(&format!(
                "DELETE FROM {t} c USING UNNEST($1::bigint[], $2::bigint[]) AS d(account_id, id) \
                 WHERE c.account_id = d.account_id AND c.{p} = d.id",
                t = table.name,
                p = table.parent
            ))
            .bind(&accounts)
            .bind(&ids)
            .execute(&mut **tx)
            .await
            .doing("clearing the rows an entity owns")?;
            insert(tx, table, rows, "ON CONFLICT DO NOTHING").await
        }
        ChildMode::MarkGone { key } => {
            let k = key_index(table, key);
            let mut rows: Vec<&ChildRow> = rows.iter().collect();
            rows.sort_by_key(|r| (r.account_id, r.parent, key_of(r, k)));
            rows.dedup_by_key(|r| (r.account_id, r.parent, key_of(r, k)));
            let names: Vec<&str> = table.columns.iter().map(|c| c.name).collect();
            let conflict = format!(
                "ON CONFLICT (account_id, {p}, {key}) DO UPDATE SET {set}, gone_at = NULL \
                 WHERE ({old}) IS DISTINCT FROM ({new}) OR t.gone_at IS NOT NULL",
                p = table.parent,
                set = names
                    .iter()
                    .map(|c| format!("{c} = excluded.{c}"))
                    .collect::<Vec<_>>()
                    .join(", "),
                old = names
                    .iter()
                    .map(|c| format!("t.{c}"))
                    .collect::<Vec<_>>()
                    .join(", "),
                new = names
                    .iter()
                    .map(|c| format!("excluded.{c}"))
                    .collect::<Vec<_>>()
                    .join(", "),
            );
            let owned: Vec<ChildRow> = rows.into_iter().cloned().collect();
            insert(tx, table, &owned, &conflict).await?;
            let kept_accounts: Vec<i64> = owned.iter().map(|r| r.account_id).collect();
            let kept_parents: Vec<i64> = owned.iter().map(|r| r.parent).collect();
            let kept_keys: Vec<i64> = owned.iter().map(|r| key_of(r, k)).collect();
            sqlx::query(&format!(
                "UPDATE {t} AS c SET gone_at = now() \
                 FROM UNNEST($1::bigint[], $2::bigint[]) AS d(account_id, id) \
                 WHERE c.account_id = d.account_id AND c.{p} = d.id AND c.gone_at IS NULL \
                   AND NOT EXISTS (SELECT 1 FROM UNNEST($3::bigint[], $4::bigint[], $5::bigint[]) \
                       AS k(account_id, parent, key) \
                     WHERE k.account_id = c.account_id AND k.parent = c.{p} AND k.key = c.{key})",
                t = table.name,
                p = table.parent,
            ))
            .bind(&accounts)
            .bind(&ids)
            .bind(&kept_accounts)
            .bind(&kept_parents)
            .bind(&kept_keys)
            .execute(&mut **tx)
            .await
            .doing("marking the rows an entity no longer owns")?;
            Ok(())
        }
    }
}

fn key_index(table: &ChildTable, key: &str) -> usize {
    table
        .columns
        .iter()
        .position(|c| c.name == key && c.kind == Kind::Int)
        .unwrap_or_else(|| panic!("{}: key `{key}` is not an integer column", table.name))
}

fn key_of(r: &ChildRow, k: usize) -> i64 {
    match r.cells.get(k) {
        Some(Cell::Int(Some(v))) => *v,
        _ => i64::MIN,
    }
}

async fn insert(
    tx: &mut Tx,
    table: &ChildTable,
    rows: &[ChildRow],
    conflict: &str,
) -> Result<(), StoreError> {
    if rows.is_empty() {
        return Ok(());
    }
    let u = unnest(table.columns, 3);
    let sql = format!(
        "INSERT INTO {t} AS t (account_id, {p}, {cols}) \
         SELECT u.account_id, u.parent, {select} \
         FROM UNNEST($1::bigint[], $2::bigint[], {params}) AS u(account_id, parent, {cols}) \
         {conflict}",
        t = table.name,
        p = table.parent,
        cols = u.names,
        select = u.select,
        params = u.params,
    );
    let cells: Vec<&Vec<Cell>> = rows.iter().map(|r| &r.cells).collect();
    let q = sqlx::query(&sql)
        .bind(rows.iter().map(|r| r.account_id).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.parent).collect::<Vec<_>>());
    let q = bind_columns!(q, table.columns, cells);
    q.execute(&mut **tx)
        .await
        .doing("writing the rows an entity owns")?;
    Ok(())
}
