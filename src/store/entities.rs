//! Writing pages of entities: one `INSERT … SELECT FROM UNNEST(…)` per page and table.
//!
//! The typed columns are described once per table ([`TABLES`]) and the statement is derived
//! from that description, so the four tables cannot drift apart. Values are extracted
//! leniently: a field with an unexpected type becomes NULL in its typed column and stays
//! intact in `raw`, so one odd field never costs a page.

use std::collections::HashMap;
use std::sync::OnceLock;

use serde_json::Value;

use super::custom_fields;
use super::{Doing, StoreError, Tx};
use crate::source::Record;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Int,
    Num,
    Text,
    Bool,
    Time,
}

struct Column {
    name: &'static str,
    path: &'static [&'static str],
    kind: Kind,
}

const fn col(name: &'static str, kind: Kind) -> Column {
    Column {
        name,
        path: &[],
        kind,
    }
}

struct Table {
    name: &'static str,
    columns: &'static [Column],
    /// Has `custom_fields` and `tags` columns and long-form custom field values.
    custom_fields: bool,
}

use Kind::*;

const TABLES: &[Table] = &[
    Table {
        name: "leads",
        custom_fields: true,
        columns: &[
            col("name", Text),
            col("price", Num),
            col("responsible_user_id", Int),
            col("group_id", Int),
            col("status_id", Int),
            col("pipeline_id", Int),
            col("loss_reason_id", Int),
            col("source_id", Int),
            col("created_by", Int),
            col("updated_by", Int),
            col("created_at", Time),
            col("closed_at", Time),
            col("closest_task_at", Time),
            col("is_deleted", Bool),
            col("score", Num),
            col("labor_cost", Num),
        ],
    },
    Table {
        name: "contacts",
        custom_fields: true,
        columns: &[
            col("name", Text),
            col("first_name", Text),
            col("last_name", Text),
            col("responsible_user_id", Int),
            col("group_id", Int),
            col("created_by", Int),
            col("updated_by", Int),
            col("created_at", Time),
            col("closest_task_at", Time),
            col("is_deleted", Bool),
        ],
    },
    Table {
        name: "companies",
        custom_fields: true,
        columns: &[
            col("name", Text),
            col("responsible_user_id", Int),
            col("group_id", Int),
            col("created_by", Int),
            col("updated_by", Int),
            col("created_at", Time),
            col("closest_task_at", Time),
            col("is_deleted", Bool),
        ],
    },
    Table {
        name: "tasks",
        custom_fields: false,
        columns: &[
            col("text", Text),
            col("task_type_id", Int),
            col("is_completed", Bool),
            col("entity_type", Text),
            col("entity_id", Int),
            col("responsible_user_id", Int),
            col("group_id", Int),
            col("created_by", Int),
            col("updated_by", Int),
            col("created_at", Time),
            col("complete_till", Time),
            col("duration", Int),
            Column {
                name: "result_text",
                path: &["result", "text"],
                kind: Text,
            },
        ],
    },
];

fn table(stream: &str) -> Option<&'static Table> {
    TABLES.iter().find(|t| t.name == stream)
}

fn sql_type(kind: Kind) -> &'static str {
    match kind {
        Int | Time => "bigint[]",
        Num | Text => "text[]",
        Bool => "boolean[]",
    }
}

fn select_expr(c: &Column) -> String {
    match c.kind {
        Time => format!("to_timestamp(u.{})", c.name),
        Num => format!("u.{}::numeric", c.name),
        _ => format!("u.{}", c.name),
    }
}

/// The upsert for one table. Older versions never overwrite newer ones, and an identical
/// version is not rewritten (no new row version, `RETURNING` leaves it out).
fn upsert_sql(t: &Table) -> String {
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
    if t.custom_fields {
        insert_cols.extend(["custom_fields", "tags"]);
        select.push(
            "CASE WHEN jsonb_typeof(u.raw->'custom_fields_values') = 'array' THEN u.raw->'custom_fields_values' END"
                .into(),
        );
        select.push("u.raw->'_embedded'->'tags'".into());
    }
    insert_cols.push("synced_at");
    select.push("now()".into());

    let mut params = vec![
        "$1::bigint[]",
        "$2::bigint[]",
        "$3::bigint[]",
        "$4::jsonb[]",
    ]
    .into_iter()
    .map(String::from)
    .collect::<Vec<_>>();
    params.extend(
        t.columns
            .iter()
            .enumerate()
            .map(|(i, c)| format!("${}::{}", i + 5, sql_type(c.kind))),
    );
    let mut alias = vec!["account_id", "id", "updated_at", "raw"];
    alias.extend(&names);

    let updates: Vec<String> = insert_cols
        .iter()
        .skip(2)
        .map(|c| format!("{c} = excluded.{c}"))
        .collect();
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

fn cached_sql(t: &'static Table) -> &'static str {
    static CACHE: OnceLock<HashMap<&'static str, String>> = OnceLock::new();
    CACHE.get_or_init(|| TABLES.iter().map(|t| (t.name, upsert_sql(t))).collect())[t.name].as_str()
}

fn lookup<'a>(raw: &'a Value, c: &Column) -> Option<&'a Value> {
    if c.path.is_empty() {
        raw.get(c.name)
    } else {
        c.path.iter().try_fold(raw, |v, k| v.get(k))
    }
}

/// Integer from a number (or a string of digits, as some fields arrive); else None.
pub(crate) fn as_int(v: Option<&Value>) -> Option<i64> {
    match v? {
        Value::Number(n) => n.as_i64().or_else(|| {
            n.as_f64()
                .filter(|f| f.fract() == 0.0 && f.abs() < 9e15)
                .map(|f| f as i64)
        }),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// Canonical decimal text of a number or numeric string, for a `numeric` column.
pub(crate) fn as_num(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::Number(n) => Some(n.to_string()),
        Value::String(s) => {
            let s = s.trim();
            let ok = !s.is_empty()
                && s.chars()
                    .all(|c| c.is_ascii_digit() || matches!(c, '.' | '-' | '+' | 'e' | 'E'))
                && s.parse::<f64>().is_ok_and(f64::is_finite);
            ok.then(|| s.to_string())
        }
        _ => None,
    }
}

fn as_text(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    }
}

fn as_bool(v: Option<&Value>) -> Option<bool> {
    v?.as_bool()
}

enum ColumnData {
    Int(Vec<Option<i64>>),
    Num(Vec<Option<String>>),
    Text(Vec<Option<String>>),
    Bool(Vec<Option<bool>>),
}

/// Account of an entity; entities without one are keyed under account 0.
pub(crate) fn account_of(raw: &Value) -> i64 {
    as_int(raw.get("account_id")).unwrap_or(0)
}

/// Keeps one record per (account, id): the newest, or the later one on a tie. A page
/// repeating an id would otherwise make the upsert touch one row twice and fail.
fn dedupe(records: &[Record]) -> Vec<&Record> {
    let mut best: HashMap<(i64, i64), &Record> = HashMap::with_capacity(records.len());
    for r in records {
        let key = (account_of(&r.raw), r.id);
        match best.get(&key) {
            Some(prev) if prev.updated_at > r.updated_at => {}
            _ => {
                best.insert(key, r);
            }
        }
    }
    let mut out: Vec<&Record> = best.into_values().collect();
    out.sort_by_key(|r| r.id);
    out
}

/// Upserts a page into the stream's table (and its custom field values) inside `tx`.
/// Returns how many entity rows were inserted or changed.
pub async fn upsert_page(tx: &mut Tx, stream: &str, records: &[Record]) -> Result<u64, StoreError> {
    let Some(t) = table(stream) else {
        return Err(StoreError::Query {
            doing: "choosing a table",
            source: sqlx::Error::Protocol(format!("no table for stream {stream}")),
        });
    };
    if records.is_empty() {
        return Ok(0);
    }
    let records = dedupe(records);
    let mut q = sqlx::query_as::<_, (i64, i64)>(cached_sql(t))
        .bind(
            records
                .iter()
                .map(|r| account_of(&r.raw))
                .collect::<Vec<_>>(),
        )
        .bind(records.iter().map(|r| r.id).collect::<Vec<_>>())
        .bind(records.iter().map(|r| r.updated_at).collect::<Vec<_>>())
        .bind(records.iter().map(|r| r.raw.clone()).collect::<Vec<_>>());
    for c in t.columns {
        let values = records.iter().map(|r| lookup(&r.raw, c));
        let data = match c.kind {
            Int | Time => ColumnData::Int(values.map(as_int).collect()),
            Num => ColumnData::Num(values.map(as_num).collect()),
            Text => ColumnData::Text(values.map(as_text).collect()),
            Bool => ColumnData::Bool(values.map(as_bool).collect()),
        };
        q = match data {
            ColumnData::Int(v) => q.bind(v),
            ColumnData::Num(v) | ColumnData::Text(v) => q.bind(v),
            ColumnData::Bool(v) => q.bind(v),
        };
    }
    let changed: Vec<(i64, i64)> = q
        .fetch_all(&mut **tx)
        .await
        .doing("upserting a page of entities")?;
    if t.custom_fields && !changed.is_empty() {
        let by_key: HashMap<(i64, i64), &Record> = records
            .iter()
            .map(|r| ((account_of(&r.raw), r.id), *r))
            .collect();
        let rewritten: Vec<&Record> = changed
            .iter()
            .filter_map(|k| by_key.get(k).copied())
            .collect();
        custom_fields::replace(tx, stream, &rewritten).await?;
    }
    Ok(changed.len() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn every_table_statement_binds_each_column_once() {
        for t in TABLES {
            let sql = upsert_sql(t);
            let max = t.columns.len() + 4;
            assert!(sql.contains(&format!("${max}::")), "{sql}");
            assert!(!sql.contains(&format!("${}::", max + 1)), "{sql}");
        }
    }

    #[test]
    fn lenient_extraction_never_fails() {
        assert_eq!(as_int(Some(&json!(5))), Some(5));
        assert_eq!(as_int(Some(&json!("17"))), Some(17));
        assert_eq!(as_int(Some(&json!(3.0))), Some(3));
        assert_eq!(as_int(Some(&json!(3.5))), None);
        assert_eq!(as_int(Some(&json!(null))), None);
        assert_eq!(as_int(Some(&json!({"a": 1}))), None);
        assert_eq!(as_num(Some(&json!("1500"))), Some("1500".into()));
        assert_eq!(as_num(Some(&json!(12.5))), Some("12.5".into()));
        assert_eq!(as_num(Some(&json!("inf"))), None);
        assert_eq!(as_num(Some(&json!("12 apples"))), None);
        assert_eq!(as_text(Some(&json!(7))), Some("7".into()));
    }

    #[test]
    fn a_repeated_id_keeps_the_newest_version() {
        let recs = vec![
            Record {
                id: 1,
                updated_at: 10,
                created_at: None,
                raw: json!({"account_id": 1, "v": "new"}),
            },
            Record {
                id: 1,
                updated_at: 9,
                created_at: None,
                raw: json!({"account_id": 1, "v": "old"}),
            },
            Record {
                id: 2,
                updated_at: 9,
                created_at: None,
                raw: json!({"account_id": 1}),
            },
        ];
        let d = dedupe(&recs);
        assert_eq!(d.len(), 2);
        assert_eq!(d[0].raw["v"], "new");
    }
}
