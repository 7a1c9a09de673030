//! Custom field values in long form (`custom_field_values`), rewritten with their entity:
//! one row per entity, field and value, so that analysts filter and aggregate with plain SQL.
//! The source turns its own format into [`FieldValue`]s; this module only writes them.

use super::rows::Row;
use super::{Doing, StoreError, Tx};

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

/// Replaces the long-form values of `rows` (entities of type `entity_type`).
pub async fn replace(tx: &mut Tx, entity_type: &str, rows: &[&Row]) -> Result<(), StoreError> {
    let accounts: Vec<i64> = rows.iter().map(|r| r.account_id).collect();
    let ids: Vec<i64> = rows.iter().map(|r| r.id).collect();
    sqlx::query(
        "DELETE FROM custom_field_values c USING UNNEST($1::bigint[], $2::bigint[]) AS d(account_id, id) \
         WHERE c.entity_type = $3 AND c.account_id = d.account_id AND c.entity_id = d.id",
    )
    .bind(&accounts)
    .bind(&ids)
    .bind(entity_type)
    .execute(&mut **tx)
    .await
    .doing("clearing custom field values")?;

    let rows: Vec<&FieldValue> = rows.iter().flat_map(|r| &r.field_values).collect();
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
           u.value_text, u.value_number::numeric, \
           CASE WHEN u.value_time BETWEEN -62135596800 AND 253402300799 THEN to_timestamp(u.value_time) END, \
           u.value_bool, u.enum_id, u.enum_code \
         FROM UNNEST($2::bigint[], $3::bigint[], $4::bigint[], $5::int[], $6::text[], $7::text[], $8::text[], \
           $9::text[], $10::text[], $11::bigint[], $12::boolean[], $13::bigint[], $14::text[]) \
           AS u(account_id, entity_id, field_id, value_index, field_code, field_name, field_type, \
           value_text, value_number, value_time, value_bool, enum_id, enum_code)",
    )
    .bind(entity_type)
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
