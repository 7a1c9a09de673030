//! Kommo's HAL list pages: `{"_page": N, "_links": {...}, "_embedded": {"leads": [...]}}`.

use serde_json::Value;

use super::error::KommoError;
use crate::source::Record;

/// The records of one list page. Each entity is kept verbatim; only `id` and `updated_at`
/// must be integers, because the mirror is keyed and walked by them. Any other odd field
/// (null, wrong type, unknown) is stored as received.
pub fn records(stream: &str, body: Value) -> Result<Vec<Record>, KommoError> {
    let Value::Object(mut page) = body else {
        return Err(KommoError::BadEntity {
            what: format!("a {stream} page is not a JSON object"),
        });
    };
    let items = match page
        .get_mut("_embedded")
        .and_then(|e| e.get_mut(stream))
        .map(Value::take)
    {
        Some(Value::Array(items)) => items,
        Some(Value::Null) | None => {
            return Err(KommoError::BadEntity {
                what: format!("a {stream} page has no `_embedded.{stream}` array"),
            })
        }
        Some(other) => {
            return Err(KommoError::BadEntity {
                what: format!(
                    "`_embedded.{stream}` is {} instead of an array",
                    type_name(&other)
                ),
            })
        }
    };
    items
        .into_iter()
        .enumerate()
        .map(|(i, raw)| record(stream, i, raw))
        .collect()
}

/// One entity of `stream` (item `i` of its page, for messages).
pub fn record(stream: &str, i: usize, raw: Value) -> Result<Record, KommoError> {
    let id = int_field(&raw, "id");
    let updated_at = int_field(&raw, "updated_at");
    match (id, updated_at) {
        (Some(id), Some(updated_at)) => {
            let created_at = int_field(&raw, "created_at");
            Ok(Record {
                id,
                updated_at,
                created_at,
                raw,
            })
        }
        (None, _) => Err(KommoError::BadEntity {
            what: format!(
                "{stream} item #{i} has no integer `id` (got {})",
                describe(raw.get("id"))
            ),
        }),
        (Some(id), None) => Err(KommoError::BadEntity {
            what: format!(
                "{stream} {id} has no integer `updated_at` (got {})",
                describe(raw.get("updated_at"))
            ),
        }),
    }
}

fn int_field(v: &Value, key: &str) -> Option<i64> {
    v.get(key)?.as_i64()
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn describe(v: Option<&Value>) -> &'static str {
    v.map_or("nothing", type_name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(name: &str) -> Value {
        // Real response bodies from Kommo's and amoCRM's documentation (origin in SOURCES.md).
        let path = format!("{}/tests/fixtures/kommo/{name}", env!("CARGO_MANIFEST_DIR"));
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("fixture {path} cannot be read: {e}"));
        serde_json::from_str(&text).unwrap()
    }

    #[test]
    fn parses_the_documented_leads_page() {
        let recs = records("leads", sample("leads_list.json")).unwrap();
        assert_eq!(
            recs.iter().map(|r| r.id).collect::<Vec<_>>(),
            vec![19619, 14460]
        );
        assert_eq!(recs[0].updated_at, 1502193501);
        assert_eq!(recs[0].raw["name"], "Сделка для примера");
    }

    #[test]
    fn parses_the_documented_tasks_and_contacts_pages() {
        assert_eq!(
            records("tasks", sample("tasks_list.json")).unwrap().len(),
            2
        );
        assert!(!records("contacts", sample("contacts_list.json"))
            .unwrap()
            .is_empty());
        assert!(!records("companies", sample("companies_list.json"))
            .unwrap()
            .is_empty());
    }

    #[test]
    fn a_null_id_or_updated_at_is_a_clear_error() {
        let body = serde_json::json!({"_embedded": {"leads": [{"id": 1, "updated_at": null}]}});
        let err = records("leads", body).unwrap_err().to_string();
        assert!(
            err.contains("leads 1") && err.contains("updated_at") && err.contains("null"),
            "{err}"
        );
        let body = serde_json::json!({"_embedded": {"leads": [{"id": "x", "updated_at": 5}]}});
        assert!(records("leads", body)
            .unwrap_err()
            .to_string()
            .contains("`id`"));
    }

    #[test]
    fn odd_fields_are_kept_verbatim() {
        let body = serde_json::json!({"_embedded": {"leads": [
            {"id": 1, "updated_at": 5, "price": null, "brand_new_field": {"x": [1]}}
        ]}});
        let recs = records("leads", body).unwrap();
        assert_eq!(recs[0].raw["brand_new_field"]["x"][0], 1);
    }

    #[test]
    fn a_page_without_the_stream_is_an_error() {
        let err = records("tasks", serde_json::json!({"_embedded": {"leads": []}})).unwrap_err();
        assert!(err.to_string().contains("_embedded.tasks"));
    }
}
