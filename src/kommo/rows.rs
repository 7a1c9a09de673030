//! Kommo entities as rows of the mirror: the tables each stream fills and how an entity's
//! JSON becomes their typed columns and custom field values.
//!
//! Values are extracted leniently: a field with an unexpected type becomes NULL in its typed
//! column and stays intact in `raw`, so one odd field never costs a page.

use std::collections::HashSet;

use chrono::DateTime;
use serde_json::Value;

use crate::source::Record;
use crate::store::custom_fields::FieldValue;
use crate::store::rows::{col, Cell, Frame, Kind, Row, TableDecl};

use Kind::*;

pub const LEADS: TableDecl = TableDecl {
    name: "leads",
    custom_fields: true,
    frame: Frame::Entity,
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
        col("custom_fields", Json),
        col("tags", Json),
    ],
};

pub const CONTACTS: TableDecl = TableDecl {
    name: "contacts",
    custom_fields: true,
    frame: Frame::Entity,
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
        col("custom_fields", Json),
        col("tags", Json),
    ],
};

pub const COMPANIES: TableDecl = TableDecl {
    name: "companies",
    custom_fields: true,
    frame: Frame::Entity,
    columns: &[
        col("name", Text),
        col("responsible_user_id", Int),
        col("group_id", Int),
        col("created_by", Int),
        col("updated_by", Int),
        col("created_at", Time),
        col("closest_task_at", Time),
        col("is_deleted", Bool),
        col("custom_fields", Json),
        col("tags", Json),
    ],
};

pub const TASKS: TableDecl = TableDecl {
    name: "tasks",
    custom_fields: false,
    frame: Frame::Entity,
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
        col("result_text", Text),
    ],
};

/// Where a column's value sits in a Kommo entity: a field of the same name, except these.
fn source<'a>(raw: &'a Value, column: &str) -> Option<&'a Value> {
    match column {
        "result_text" => raw.get("result")?.get("text"),
        "custom_fields" => raw.get("custom_fields_values").filter(|v| v.is_array()),
        "tags" => raw.get("_embedded")?.get("tags"),
        other => raw.get(other),
    }
}

pub(crate) fn cell(kind: Kind, v: Option<&Value>) -> Cell {
    match kind {
        Int => Cell::Int(as_int(v)),
        Time => Cell::Time(as_int(v)),
        Num => Cell::Num(as_num(v)),
        Text => Cell::Text(as_text(v)),
        Bool => Cell::Bool(v.and_then(Value::as_bool)),
        Json => Cell::Json(v.filter(|v| !v.is_null()).cloned()),
    }
}

/// A Kommo entity as a row of `table`.
pub fn to_row(table: &TableDecl, record: &Record) -> Row {
    row_from(table, record, source)
}

/// `record` as a row of `table`, each column's value found by `source`.
pub(crate) fn row_from(
    table: &TableDecl,
    record: &Record,
    source: for<'a> fn(&'a Value, &str) -> Option<&'a Value>,
) -> Row {
    Row {
        account_id: account_of(&record.raw),
        id: record.id,
        updated_at: record.updated_at,
        raw: record.raw.clone(),
        cells: table
            .columns
            .iter()
            .map(|c| cell(c.kind, source(&record.raw, c.name)))
            .collect(),
        field_values: if table.custom_fields {
            flatten(record)
        } else {
            Vec::new()
        },
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

/// Account of an entity; entities without one are keyed under account 0.
pub(crate) fn account_of(raw: &Value) -> i64 {
    as_int(raw.get("account_id")).unwrap_or(0)
}

const TIME_TYPES: &[&str] = &["date", "date_time", "birthday"];

/// Flattens `custom_fields_values` of an entity. Fields without an integer `field_id` are
/// skipped (they cannot be keyed; `raw` still holds them); a field repeated in one entity
/// keeps its first occurrence.
pub fn flatten(record: &Record) -> Vec<FieldValue> {
    let Some(Value::Array(fields)) = record.raw.get("custom_fields_values") else {
        return Vec::new();
    };
    let account_id = account_of(&record.raw);
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for field in fields {
        let Some(field_id) = as_int(field.get("field_id")) else {
            continue;
        };
        if !seen.insert(field_id) {
            continue;
        }
        let str_of = |k: &str| field.get(k).and_then(Value::as_str).map(String::from);
        let field_type = str_of("field_type");
        let is_time = field_type
            .as_deref()
            .is_some_and(|t| TIME_TYPES.contains(&t));
        let values = match field.get("values") {
            Some(Value::Array(v)) => v.as_slice(),
            _ => &[],
        };
        for (i, entry) in values.iter().enumerate() {
            // Values come as {"value": …, "enum_id": …}; tolerate a bare scalar too.
            let value = if entry.is_object() {
                entry.get("value")
            } else {
                Some(entry)
            };
            out.push(FieldValue {
                account_id,
                entity_id: record.id,
                field_id,
                value_index: i as i32,
                field_code: str_of("field_code"),
                field_name: str_of("field_name"),
                field_type: field_type.clone(),
                value_text: value.and_then(text_of),
                value_number: value.and_then(|v| as_num(Some(v))),
                value_time: if is_time {
                    value.and_then(time_of)
                } else {
                    None
                },
                value_bool: value.and_then(Value::as_bool),
                enum_id: as_int(entry.get("enum_id")),
                enum_code: entry
                    .get("enum_code")
                    .and_then(Value::as_str)
                    .map(String::from),
            });
        }
    }
    out
}

fn text_of(v: &Value) -> Option<String> {
    match v {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    }
}

/// Unix seconds from a number, a string of digits, or an RFC 3339 date.
fn time_of(v: &Value) -> Option<i64> {
    as_int(Some(v)).or_else(|| {
        DateTime::parse_from_rfc3339(v.as_str()?)
            .ok()
            .map(|d| d.timestamp())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rec(cf: Value) -> Record {
        Record {
            id: 9,
            updated_at: 1,
            created_at: None,
            raw: json!({"account_id": 3, "custom_fields_values": cf}),
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
    fn a_task_row_takes_its_result_text_from_the_nested_result() {
        let r = Record {
            id: 4,
            updated_at: 10,
            created_at: Some(9),
            raw: json!({"id": 4, "account_id": 3, "text": "call", "result": {"text": "done"}, "is_completed": true}),
        };
        let row = to_row(&TASKS, &r);
        assert_eq!(row.account_id, 3);
        let at =
            |name: &str| &row.cells[TASKS.columns.iter().position(|c| c.name == name).unwrap()];
        assert_eq!(at("result_text"), &Cell::Text(Some("done".into())));
        assert_eq!(at("is_completed"), &Cell::Bool(Some(true)));
        assert_eq!(at("duration"), &Cell::Int(None));
    }

    #[test]
    fn a_lead_row_keeps_custom_fields_only_as_an_array_and_tags_from_embedded() {
        let r = Record {
            id: 1,
            updated_at: 10,
            created_at: None,
            raw: json!({"id": 1, "custom_fields_values": null, "_embedded": {"tags": [{"id": 5}]}}),
        };
        let row = to_row(&LEADS, &r);
        let at =
            |name: &str| &row.cells[LEADS.columns.iter().position(|c| c.name == name).unwrap()];
        assert_eq!(at("custom_fields"), &Cell::Json(None));
        assert_eq!(at("tags"), &Cell::Json(Some(json!([{"id": 5}]))));
    }

    #[test]
    fn flattens_every_documented_shape() {
        let r = rec(json!([
            {"field_id": 1, "field_name": "Budget", "field_type": "numeric", "values": [{"value": "1500"}]},
            {"field_id": 2, "field_code": "PHONE", "field_type": "multitext",
             "values": [{"value": "+1 555", "enum_id": 7, "enum_code": "WORK"}, {"value": "+1 556", "enum_id": 8, "enum_code": "MOB"}]},
            {"field_id": 3, "field_type": "date", "values": [{"value": 1700000000}]},
            {"field_id": 4, "field_type": "checkbox", "values": [{"value": true}]},
            {"field_id": 5, "field_type": "date_time", "values": [{"value": "2024-01-02T03:04:05+00:00"}]}
        ]));
        let v = flatten(&r);
        assert_eq!(v.len(), 6);
        assert_eq!(v[0].value_number.as_deref(), Some("1500"));
        assert_eq!(
            (v[2].value_index, v[2].enum_code.as_deref()),
            (1, Some("MOB"))
        );
        assert_eq!(v[3].value_time, Some(1700000000));
        assert_eq!(v[4].value_bool, Some(true));
        assert_eq!(v[5].value_time, Some(1704164645));
        assert!(v.iter().all(|x| x.account_id == 3 && x.entity_id == 9));
    }

    #[test]
    fn odd_shapes_are_skipped_not_fatal() {
        let r = rec(json!([
            {"field_name": "no id", "values": [{"value": 1}]},
            {"field_id": 1, "values": null},
            {"field_id": 2, "values": [{"value": {"nested": true}}]},
            {"field_id": 2, "values": [{"value": "duplicate field"}]}
        ]));
        let v = flatten(&r);
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].value_text.as_deref(), Some(r#"{"nested":true}"#));
        assert!(flatten(&rec(json!(null))).is_empty());
    }
}
