//! Writing rows of a mirrored table: one `INSERT … SELECT FROM UNNEST(…)` per page.
//!
//! A source declares each table it fills ([`TableDecl`]: its typed columns) and turns each
//! entity into a [`Row`] (the cells in the declared order, the entity as received, its custom
//! field values). The store knows nothing of any source's JSON: it derives the statement
//! from the declaration and binds the cells column by column.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

use serde_json::Value;

use super::custom_fields::{self, FieldValue};
use super::{Doing, StoreError, Tx};

/// The SQL type of a typed column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Int,
    Num,
    Text,
    Bool,
    /// Unix seconds, stored as `timestamptz`.
    Time,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ColumnDecl {
    pub name: &'static str,
    pub kind: Kind,
}

pub const fn col(name: &'static str, kind: Kind) -> ColumnDecl {
    ColumnDecl { name, kind }
}

/// A table of one stream: key `(account_id, id)`, `raw`, `synced_at`, the frame's own
/// columns, and the typed columns listed here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableDecl {
    pub name: &'static str,
    pub columns: &'static [ColumnDecl],
    /// Whether the entities have custom field values (kept in `custom_field_values` under
    /// `entity_type = name`, rewritten with the entity).
    pub custom_fields: bool,
    pub frame: Frame,
}

/// What kind of rows a table holds, and so how they are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frame {
    /// Entities that carry their version (`updated_at`): a newer version replaces an older
    /// one, never the other way round; `deleted_at` is set from the source's deletion log.
    Entity,
    /// Reference data without versions, refreshed whole: a row is rewritten when it differs,
    /// and one no longer listed gets `gone_at` (it is kept: old entities still point at it).
    /// `scope`: a key column that tells apart the streams sharing the table (its value is
    /// the stream's [`crate::source::StreamDecl::scope`]).
    Reference { scope: Option<&'static str> },
    /// An append-only log, keyed by `(account_id, key)` (a declared text column): an entry
    /// is written once and never changes.
    Log { key: &'static str },
}

/// One typed value; `None` is SQL NULL.
#[derive(Debug, Clone, PartialEq)]
pub enum Cell {
    Int(Option<i64>),
    /// Canonical decimal text, cast to `numeric` by Postgres.
    Num(Option<String>),
    Text(Option<String>),
    Bool(Option<bool>),
    Time(Option<i64>),
    Json(Option<Value>),
}

/// One entity as a row of its table.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub account_id: i64,
    pub id: i64,
    /// Unix seconds.
    pub updated_at: i64,
    /// The entity exactly as received.
    pub raw: Value,
    /// One per declared column, in order.
    pub cells: Vec<Cell>,
    pub field_values: Vec<FieldValue>,
}

pub(crate) fn sql_type(kind: Kind) -> &'static str {
    match kind {
        Kind::Int | Kind::Time => "bigint[]",
        Kind::Num | Kind::Text => "text[]",
        Kind::Bool => "boolean[]",
        Kind::Json => "jsonb[]",
    }
}

/// Unix seconds PostgreSQL can hold as a time we keep: years 1 to 9999. A value outside
/// (Kommo has sent `closed_at` = 1e14) is NULL in its typed column and intact in `raw`,
/// instead of failing its whole page on every run.
pub const TIME_RANGE: (i64, i64) = (-62_135_596_800, 253_402_300_799);

/// `to_timestamp` of a bigint expression, NULL outside [`TIME_RANGE`].
pub(crate) fn storable_time(expr: &str) -> String {
    format!(
        "CASE WHEN {expr} BETWEEN {} AND {} THEN to_timestamp({expr}) END",
        TIME_RANGE.0, TIME_RANGE.1
    )
}

/// Whether a JSON value holds a NUL character (in a string or a key), which PostgreSQL can
/// store neither in `jsonb` nor in `text`.
pub fn has_nul(v: &Value) -> bool {
    match v {
        Value::String(s) => s.contains('\0'),
        Value::Array(a) => a.iter().any(has_nul),
        Value::Object(o) => o.iter().any(|(k, v)| k.contains('\0') || has_nul(v)),
        _ => false,
    }
}

/// Replaces every NUL character with U+FFFD (the replacement character), so that the
/// entity can be stored; everything else is kept as received.
pub fn without_nul(v: &Value) -> Value {
    let clean = |s: &str| s.replace('\0', "\u{FFFD}");
    match v {
        Value::String(s) => Value::String(clean(s)),
        Value::Array(a) => Value::Array(a.iter().map(without_nul).collect()),
        Value::Object(o) => {
            Value::Object(o.iter().map(|(k, v)| (clean(k), without_nul(v))).collect())
        }
        other => other.clone(),
    }
}

pub(crate) fn select_expr(c: &ColumnDecl) -> String {
    match c.kind {
        Kind::Time => storable_time(&format!("u.{}", c.name)),
        Kind::Num => format!("u.{}::numeric", c.name),
        _ => format!("u.{}", c.name),
    }
}

/// Declared columns as the parts of an `INSERT … SELECT … FROM UNNEST(…)`: their names, one
/// array parameter each from `$first` on, and each one's select expression over `u`.
pub(crate) struct Unnest {
    pub names: String,
    pub params: String,
    pub select: String,
}

pub(crate) fn unnest(columns: &[ColumnDecl], first: usize) -> Unnest {
    let join = |parts: Vec<String>| parts.join(", ");
    Unnest {
        names: join(columns.iter().map(|c| c.name.to_string()).collect()),
        params: join(
            columns
                .iter()
                .enumerate()
                .map(|(i, c)| format!("${}::{}", i + first, sql_type(c.kind)))
                .collect(),
        ),
        select: join(columns.iter().map(select_expr).collect()),
    }
}

/// The upsert for one table. Older versions never overwrite newer ones, and an identical
/// version is not rewritten (no new row version; `RETURNING` leaves it out).
fn upsert_sql(t: &TableDecl) -> String {
    let names: Vec<&str> = t.columns.iter().map(|c| c.name).collect();
    let mut insert_cols = vec!["account_id", "id", "updated_at", "raw"];
    insert_cols.extend(&names);
    let mut select = vec![
        "u.account_id".to_string(),
        "u.id".to_string(),
        "to_timestamp(u.updated_at)".to_string(),
        "u.raw".to_string(),
    ];
    select.extend(t.columns.iter().map(select_expr));
    insert_cols.push("synced_at");
    select.push("now()".into());
    let mut params: Vec<String> = [
        "$1::bigint[]",
        "$2::bigint[]",
        "$3::bigint[]",
        "$4::jsonb[]",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    params.extend(
        t.columns
            .iter()
            .enumerate()
            .map(|(i, c)| format!("${}::{}", i + 5, sql_type(c.kind))),
    );
    let mut alias = vec!["account_id", "id", "updated_at", "raw"];
    alias.extend(&names);
    let mut updates: Vec<String> = insert_cols
        .iter()
        .skip(2)
        .map(|c| format!("{c} = excluded.{c}"))
        .collect();
    // A version newer than the newest deletion is alive again.
    updates.push(format!(
        "deleted_at = {}",
        super::log::DELETED_AT.replace("t.updated_at", "excluded.updated_at")
    ));
    format!(
        "INSERT INTO {table} AS t ({cols})\n\
         SELECT {select}\n\
         FROM UNNEST({params}) AS u({alias})\n\
         ON CONFLICT (account_id, id) DO UPDATE SET {updates}\n\
         WHERE t.updated_at < excluded.updated_at\n\
            OR (t.updated_at = excluded.updated_at AND t.raw IS DISTINCT FROM excluded.raw)\n\
         RETURNING t.account_id, t.id",
        table = t.name,
        cols = insert_cols.join(", "),
        select = select.join(", "),
        params = params.join(", "),
        alias = alias.join(", "),
        updates = updates.join(", "),
    )
}

/// The statement of each table, built once.
fn cached_sql(t: &TableDecl) -> String {
    static CACHE: OnceLock<Mutex<HashMap<&'static str, String>>> = OnceLock::new();
    let mut cache = CACHE
        .get_or_init(Default::default)
        .lock()
        .expect("statement cache lock");
    cache.entry(t.name).or_insert_with(|| upsert_sql(t)).clone()
}

/// Keeps one row per (account, id): the newest, or the later one on a tie. A page repeating
/// an id would otherwise make the upsert touch one row twice and fail.
fn dedupe(rows: &[Row]) -> Vec<&Row> {
    let mut best: HashMap<(i64, i64), &Row> = HashMap::with_capacity(rows.len());
    for r in rows {
        match best.get(&(r.account_id, r.id)) {
            Some(prev) if prev.updated_at > r.updated_at => {}
            _ => {
                best.insert((r.account_id, r.id), r);
            }
        }
    }
    let mut out: Vec<&Row> = best.into_values().collect();
    out.sort_by_key(|r| (r.account_id, r.id));
    out
}

/// Binds column `$i` of every row (`$cells`: a slice of cell vectors) as one array.
macro_rules! bind_cells {
    ($q:expr, $cells:expr, $i:expr, $variant:ident) => {
        $q.bind(
            $cells
                .iter()
                .map(|r| match &r[$i] {
                    Cell::$variant(v) => v.clone(),
                    _ => None,
                })
                .collect::<Vec<_>>(),
        )
    };
}

/// Binds every declared column of `$cells`, in order.
macro_rules! bind_columns {
    ($q:expr, $columns:expr, $cells:expr) => {{
        let mut q = $q;
        for (i, c) in $columns.iter().enumerate() {
            q = match c.kind {
                Kind::Int => bind_cells!(q, $cells, i, Int),
                Kind::Time => bind_cells!(q, $cells, i, Time),
                Kind::Num => bind_cells!(q, $cells, i, Num),
                Kind::Text => bind_cells!(q, $cells, i, Text),
                Kind::Bool => bind_cells!(q, $cells, i, Bool),
                Kind::Json => bind_cells!(q, $cells, i, Json),
            };
        }
        q
    }};
}
pub(crate) use {bind_cells, bind_columns};

/// Upserts `rows` into `table` (and their custom field values) inside `tx`. Returns the
/// keys `(account_id, id)` of the rows inserted or changed: only their owned rows need
/// rewriting.
pub async fn upsert(
    tx: &mut Tx,
    table: &TableDecl,
    rows: &[Row],
) -> Result<Vec<(i64, i64)>, StoreError> {
    assert_eq!(
        table.frame,
        Frame::Entity,
        "{} holds no entities",
        table.name
    );
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    let rows = dedupe(rows);
    let sql = cached_sql(table);
    let mut q = sqlx::query_as::<_, (i64, i64)>(&sql)
        .bind(rows.iter().map(|r| r.account_id).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.id).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.updated_at).collect::<Vec<_>>())
        // By reference: a deep copy of every entity's JSON was a tenth of the write path.
        .bind(
            rows.iter()
                .map(|r| sqlx::types::Json(&r.raw))
                .collect::<Vec<_>>(),
        );
    let cells: Vec<&Vec<Cell>> = rows.iter().map(|r| &r.cells).collect();
    q = bind_columns!(q, table.columns, cells);
    let changed: Vec<(i64, i64)> = q
        .fetch_all(&mut **tx)
        .await
        .doing("upserting a page of entities")?;
    if table.custom_fields && !changed.is_empty() {
        let by_key: HashMap<(i64, i64), &Row> =
            rows.iter().map(|r| ((r.account_id, r.id), *r)).collect();
        let rewritten: Vec<&Row> = changed
            .iter()
            .filter_map(|k| by_key.get(k).copied())
            .collect();
        custom_fields::replace(tx, table.name, &rewritten).await?;
    }
    Ok(changed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nul_characters_are_replaced_in_strings_and_keys_and_nothing_else_changes() {
        let v = serde_json::json!({"a\u{0}": ["x\u{0}y", 1, null, {"b": "\u{0}"}], "c": "ok"});
        assert!(has_nul(&v));
        let clean = without_nul(&v);
        assert!(!has_nul(&clean));
        assert_eq!(
            clean,
            serde_json::json!({"a\u{FFFD}": ["x\u{FFFD}y", 1, null, {"b": "\u{FFFD}"}], "c": "ok"})
        );
        assert!(!has_nul(&serde_json::json!({"c": "ok", "n": [1, 2]})));
    }

    #[test]
    fn times_out_of_range_are_null_in_sql() {
        let e = storable_time("u.closed_at");
        assert!(
            e.starts_with("CASE WHEN u.closed_at BETWEEN -62135596800 AND 253402300799"),
            "{e}"
        );
    }
    use serde_json::json;

    const T: TableDecl = TableDecl {
        name: "things",
        columns: &[
            col("name", Kind::Text),
            col("at", Kind::Time),
            col("tags", Kind::Json),
        ],
        custom_fields: false,
        frame: Frame::Entity,
    };

    #[test]
    fn the_statement_binds_each_column_once() {
        let sql = upsert_sql(&T);
        assert!(sql.contains("$7::jsonb[]"), "{sql}");
        assert!(!sql.contains("$8::"), "{sql}");
        assert!(sql.contains("to_timestamp(u.at)"), "{sql}");
    }

    fn row(id: i64, updated_at: i64, v: &str) -> Row {
        Row {
            account_id: 1,
            id,
            updated_at,
            raw: json!({"v": v}),
            cells: vec![],
            field_values: vec![],
        }
    }

    #[test]
    fn a_repeated_id_keeps_the_newest_version() {
        let rows = vec![row(1, 10, "new"), row(1, 9, "old"), row(2, 9, "x")];
        let d = dedupe(&rows);
        assert_eq!(d.len(), 2);
        assert_eq!(d[0].raw["v"], "new");
    }
}
