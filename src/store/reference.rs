//! Reference tables (pipelines, users, field definitions), refreshed whole: each run's list
//! is the truth, rows that differ are rewritten, rows that are no longer listed get
//! `gone_at` and stay, because entities mirrored earlier still point at them.

use super::rows::{
    bind_cells, bind_columns, select_expr, sql_type, Cell, Frame, Kind, Row, TableDecl,
};
use super::{Doing, StoreError, Tx};

/// What one refresh changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Refreshed {
    /// Ids of rows inserted, changed, or listed again after being gone.
    pub written: Vec<i64>,
    /// Ids of rows that were listed before and are not now.
    pub gone: Vec<i64>,
}

fn refresh_sql(t: &TableDecl, scope: Option<&str>) -> String {
    let names: Vec<&str> = t.columns.iter().map(|c| c.name).collect();
    let mut cols = vec!["account_id"];
    let mut select = vec!["$1".to_string()];
    if let Some(s) = scope {
        cols.push(s);
        select.push("$2".into());
    }
    cols.extend(["id", "raw"]);
    select.extend(["u.id".to_string(), "u.raw".to_string()]);
    cols.extend(&names);
    select.extend(t.columns.iter().map(select_expr));
    let mut params = vec!["$3::bigint[]".to_string(), "$4::jsonb[]".to_string()];
    params.extend(
        t.columns
            .iter()
            .enumerate()
            .map(|(i, c)| format!("${}::{}", i + 5, sql_type(c.kind))),
    );
    let mut alias = vec!["id", "raw"];
    alias.extend(&names);
    let key = match scope {
        Some(s) => format!("account_id, {s}, id"),
        None => "account_id, id".into(),
    };
    let mut updates: Vec<String> = std::iter::once("raw")
        .chain(names.iter().copied())
        .map(|c| format!("{c} = excluded.{c}"))
        .collect();
    updates.push("synced_at = now()".into());
    updates.push("gone_at = NULL".into());
    format!(
        "INSERT INTO {table} AS t ({cols}, synced_at)\n\
         SELECT {select}, now()\n\
         FROM UNNEST({params}) AS u({alias})\n\
         ON CONFLICT ({key}) DO UPDATE SET {updates}\n\
         WHERE t.raw IS DISTINCT FROM excluded.raw OR t.gone_at IS NOT NULL\n\
         RETURNING t.id",
        table = t.name,
        cols = cols.join(", "),
        select = select.join(", "),
        params = params.join(", "),
        alias = alias.join(", "),
        updates = updates.join(", "),
    )
}

/// Makes `table`'s rows of `account_id` (and of `scope`, a (column, value) the stream's rows
/// share) exactly `rows`: the listed ones are upserted, the others marked gone.
pub async fn refresh(
    tx: &mut Tx,
    table: &TableDecl,
    scope: Option<(&str, &str)>,
    account_id: i64,
    rows: &[Row],
) -> Result<Refreshed, StoreError> {
    let Frame::Reference { scope: column } = table.frame else {
        panic!("{} is not a reference table", table.name);
    };
    assert_eq!(
        column,
        scope.map(|s| s.0),
        "{}: the stream's scope must name the table's scope column",
        table.name
    );
    let mut rows: Vec<&Row> = rows.iter().collect();
    rows.sort_by_key(|r| r.id);
    rows.dedup_by_key(|r| r.id);
    let value = scope.map(|s| s.1);
    let mut written = Vec::new();
    if !rows.is_empty() {
        let sql = refresh_sql(table, column);
        let cells: Vec<&Vec<Cell>> = rows.iter().map(|r| &r.cells).collect();
        let q = sqlx::query_scalar::<_, i64>(&sql)
            .bind(account_id)
            .bind(value)
            .bind(rows.iter().map(|r| r.id).collect::<Vec<_>>())
            .bind(rows.iter().map(|r| r.raw.clone()).collect::<Vec<_>>());
        let q = bind_columns!(q, table.columns, cells);
        written = q
            .fetch_all(&mut **tx)
            .await
            .doing("refreshing reference rows")?;
    }
    let listed: Vec<i64> = rows.iter().map(|r| r.id).collect();
    let scope_clause = column.map_or(String::new(), |c| format!(" AND {c} = $2"));
    let gone = sqlx::query_scalar::<_, i64>(&format!(
        "UPDATE {t} SET gone_at = now() \
         WHERE account_id = $1 AND gone_at IS NULL AND NOT (id = ANY($3)){scope_clause} \
         RETURNING id",
        t = table.name
    ))
    .bind(account_id)
    .bind(value)
    .bind(&listed)
    .fetch_all(&mut **tx)
    .await
    .doing("marking reference rows that are no longer listed")?;
    Ok(Refreshed { written, gone })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::rows::col;

    const T: TableDecl = TableDecl {
        name: "custom_fields",
        columns: &[col("name", Kind::Text), col("enums", Kind::Json)],
        custom_fields: false,
        frame: Frame::Reference {
            scope: Some("entity_type"),
        },
    };

    #[test]
    fn a_scoped_table_keys_and_fills_its_scope_column() {
        let sql = refresh_sql(&T, Some("entity_type"));
        assert!(
            sql.contains("ON CONFLICT (account_id, entity_type, id)"),
            "{sql}"
        );
        assert!(sql.contains("SELECT $1, $2, u.id, u.raw"), "{sql}");
        assert!(sql.contains("$6::jsonb[]") && !sql.contains("$7"), "{sql}");
    }
}
