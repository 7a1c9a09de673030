//! Custom field values in long form (`custom_field_values`), rewritten with their entity.

use std::collections::HashSet;

use chrono::DateTime;
use serde_json::Value;

use super::entities::{account_of, as_int, as_num};
use super::{Doing, StoreError, Tx};
use crate::source::Record;

/// One value of one custom field of one entity.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct FieldValue {
    pub account_id: i64,
    pub entity_id: i64,
    pub field_id: i64,
    pub value_index: i32,
    pub field_code: Option<String>,
    pub field_name: Option<String>,
    pub field_type: Option<String>,
    pub value_text: Option<String>,
    pub value_number: Option<String>,
    pub value_time: Option<i64>,
    pub value_bool: Option<bool>,
    pub enum_id: Option<i64>,
    pub enum_code: Option<String>,
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

/// Replaces the long-form values of `records` (which must be of `stream`).
pub async fn replace(tx: &mut Tx, stream: &str, records: &[&Record]) -> Result<(), StoreError> {
    let accounts: Vec<i64> = records.iter().map(|r| account_of(&r.raw)).collect();
    let ids: Vec<i64> = records.iter().map(|r| r.id).collect();
    sqlx::query(
        "DELETE FROM custom_field_values c USING UNNEST($1::bigint[], $2::bigint[]) AS d(account_id, id) \
         WHERE c.entity_type = $3 AND c.account_id = d.account_id AND c.entity_id = d.id",
    )
    .bind(&accounts)
    .bind(&ids)
    .bind(stream)
    .execute(&mut **tx)
    .await
    .doing("clearing custom field values")?;

    let rows: Vec<FieldValue> = records.iter().flat_map(|r| flatten(r)).collect();
    if rows.is_empty() {
        return Ok(());
    }
    macro_rules! column {
        ($f:ident) => {
            rows.iter().map(|r| r.$f.clone()).collect::<Vec<_>>()
        };
    }
    sqlx::query(
        "INSERT INTO custom_field_values (account_id, entity_type, entity_id, field_id, value_index, \
           field_code, field_name, field_type, value_text, value_number, value_time, value_bool, enum_id, enum_code) \
         SELECT u.account_id, $1, u.entity_id, u.field_id, u.value_index, u.field_code, u.field_name, u.field_type, \
           u.value_text, u.value_number::numeric, to_timestamp(u.value_time), u.value_bool, u.enum_id, u.enum_code \
         FROM UNNEST($2::bigint[], $3::bigint[], $4::bigint[], $5::int[], $6::text[], $7::text[], $8::text[], \
           $9::text[], $10::text[], $11::bigint[], $12::boolean[], $13::bigint[], $14::text[]) \
           AS u(account_id, entity_id, field_id, value_index, field_code, field_name, field_type, \
           value_text, value_number, value_time, value_bool, enum_id, enum_code)",
    )
    .bind(stream)
    .bind(column!(account_id))
    .bind(column!(entity_id))
    .bind(column!(field_id))
    .bind(column!(value_index))
    .bind(column!(field_code))
    .bind(column!(field_name))
    .bind(column!(field_type))
    .bind(column!(value_text))
    .bind(column!(value_number))
    .bind(column!(value_time))
    .bind(column!(value_bool))
    .bind(column!(enum_id))
    .bind(column!(enum_code))
    .execute(&mut **tx)
    .await
    .doing("writing custom field values")?;
    Ok(())
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
