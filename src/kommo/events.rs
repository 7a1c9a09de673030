//! Kommo's event log (`GET /api/v4/events`) as a stream: the table of events, and what an
//! event says about the entities of the other streams (deletions and restores, which lists
//! never show).

use serde_json::Value;

use super::rows::{account_of, as_int, cell};
use super::KommoError;
use crate::source::{Effect, Record};
use crate::store::rows::{col, Frame, Kind::*, Row, TableDecl};

/// Kommo answers a `limit` above 100 with 50 entries and no next link.
pub const PAGE_SIZE: u32 = 100;

pub const EVENTS: TableDecl = TableDecl {
    name: "events",
    custom_fields: false,
    frame: Frame::Log { key: "id" },
    columns: &[
        col("id", Text),
        col("type", Text),
        col("entity_type", Text),
        col("entity_id", Int),
        col("created_by", Int),
        col("created_at", Time),
        col("value_before", Json),
        col("value_after", Json),
    ],
};

pub fn to_row(table: &TableDecl, r: &Record) -> Row {
    Row {
        account_id: account_of(&r.raw),
        id: 0,
        updated_at: r.updated_at,
        raw: r.raw.clone(),
        cells: table
            .columns
            .iter()
            .map(|c| cell(c.kind, r.raw.get(c.name)))
            .collect(),
        field_values: Vec::new(),
    }
}

/// The stream an event's `entity_type` (singular) names.
fn stream_of(entity_type: &str) -> Option<&'static str> {
    Some(match entity_type {
        "lead" => "leads",
        "contact" => "contacts",
        "company" => "companies",
        "task" => "tasks",
        _ => return None,
    })
}

/// What an event does to another stream's rows.
pub fn effects(r: &Record) -> Vec<Effect> {
    let kind = r.raw.get("type").and_then(Value::as_str).unwrap_or("");
    let (Some(id), Some(at)) = (as_int(r.raw.get("entity_id")), r.created_at) else {
        return Vec::new();
    };
    let own = r
        .raw
        .get("entity_type")
        .and_then(Value::as_str)
        .and_then(stream_of);
    match kind.rsplit_once('_') {
        Some(("entity", "merged")) => own
            .map(|stream| Effect::Refetch {
                stream,
                id,
                gone_at: Some(at),
            })
            .into_iter()
            .collect(),
        // Whether a link bumps `updated_at` is not documented: both ends are read again, so
        // the links stored with them follow either way.
        Some(("entity", "linked" | "unlinked")) => {
            let mut out: Vec<Effect> = own
                .map(|stream| Effect::Refetch {
                    stream,
                    id,
                    gone_at: None,
                })
                .into_iter()
                .collect();
            for side in ["value_after", "value_before"] {
                let other = r
                    .raw
                    .get(side)
                    .and_then(|v| v.get(0))
                    .and_then(|v| v.get("link"))
                    .and_then(|l| l.get("entity"));
                let oid = other.and_then(|o| as_int(o.get("id")));
                let os = other
                    .and_then(|o| o.get("type"))
                    .and_then(Value::as_str)
                    .and_then(stream_of);
                if let (Some(id), Some(stream)) = (oid, os) {
                    out.push(Effect::Refetch {
                        stream,
                        id,
                        gone_at: None,
                    });
                }
            }
            out
        }
        Some((entity, "deleted")) => stream_of(entity)
            .map(|stream| Effect::Deleted { stream, id, at })
            .into_iter()
            .collect(),
        Some((entity, "restored")) => stream_of(entity)
            .map(|stream| {
                // Read again: a restore and a deletion in one second tie, the list decides.
                let mut out = vec![
                    Effect::Restored { stream, id, at },
                    Effect::Refetch {
                        stream,
                        id,
                        gone_at: None,
                    },
                ];
                // A deleted contact or company is hidden from its leads' lists while it is
                // deleted and shown again after, without a new version of the leads.
                if matches!(stream, "contacts" | "companies") {
                    out.push(Effect::Relinked { stream, id });
                }
                out
            })
            .into_iter()
            .flatten()
            .collect(),
        _ => Vec::new(),
    }
}

/// The events of one page. Each needs a string (or integer) `id` and an integer
/// `created_at`; one without costs only itself (a warning names it).
pub fn records(body: Value) -> Result<(Vec<Record>, Vec<String>), KommoError> {
    let items = match body.get("_embedded").and_then(|e| e.get("events")) {
        Some(Value::Array(items)) => items.clone(),
        _ => {
            return Err(KommoError::BadEntity {
                what: "an events page has no `_embedded.events` array".into(),
            })
        }
    };
    let mut notes = Vec::new();
    let mut out = Vec::with_capacity(items.len());
    for (i, raw) in items.into_iter().enumerate() {
        let has_id = matches!(raw.get("id"), Some(Value::String(s)) if !s.is_empty())
            || as_int(raw.get("id")).is_some();
        match (has_id, as_int(raw.get("created_at"))) {
            (true, Some(at)) => out.push(Record {
                id: 0,
                updated_at: at,
                created_at: Some(at),
                raw,
            }),
            _ => notes.push(format!(
                "event #{i} has no usable `id` or integer `created_at`: skipped"
            )),
        }
    }
    Ok((out, notes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn event(kind: &str, entity_id: i64) -> Record {
        Record {
            id: 0,
            updated_at: 7,
            created_at: Some(7),
            raw: json!({"id": "01x", "type": kind, "entity_id": entity_id, "created_at": 7}),
        }
    }

    #[test]
    fn deletions_and_restores_name_their_stream() {
        assert_eq!(
            effects(&event("lead_deleted", 5)),
            vec![Effect::Deleted {
                stream: "leads",
                id: 5,
                at: 7
            }]
        );
        assert_eq!(
            effects(&event("company_restored", 6)),
            vec![
                Effect::Restored {
                    stream: "companies",
                    id: 6,
                    at: 7
                },
                Effect::Refetch {
                    stream: "companies",
                    id: 6,
                    gone_at: None
                },
                // Its leads list it again without a new version: they are read again.
                Effect::Relinked {
                    stream: "companies",
                    id: 6
                },
            ]
        );
        assert!(effects(&event("lead_status_changed", 5)).is_empty());
        let mut merged = event("entity_merged", 8);
        merged.raw["entity_type"] = json!("contact");
        assert_eq!(
            effects(&merged),
            vec![Effect::Refetch {
                stream: "contacts",
                id: 8,
                gone_at: Some(7)
            }]
        );
        let mut linked = event("entity_linked", 9);
        linked.raw["entity_type"] = json!("lead");
        linked.raw["value_after"] = json!([{"link": {"entity": {"id": 3, "type": "contact"}}}]);
        assert_eq!(
            effects(&linked),
            vec![
                Effect::Refetch {
                    stream: "leads",
                    id: 9,
                    gone_at: None
                },
                Effect::Refetch {
                    stream: "contacts",
                    id: 3,
                    gone_at: None
                },
            ]
        );
        assert!(effects(&event("catalog_deleted", 5)).is_empty());
    }

    /// Kommo answers a larger limit with 50 entries and no next link, which breaks paging.
    #[test]
    fn the_event_log_is_never_asked_for_more_than_100_a_page() {
        let decl = super::super::STREAMS
            .iter()
            .find(|s| s.name == "events")
            .unwrap();
        let crate::source::Strategy::Log { page_size, .. } = decl.strategy else {
            panic!("events is a log");
        };
        assert!(page_size <= 100);
        let walk = crate::sync::log::LogWalk::new("events", Default::default(), page_size, 5, None);
        assert!(walk.first().limit <= 100);
    }

    #[test]
    fn the_documented_events_page_parses() {
        let path = format!(
            "{}/tests/fixtures/kommo/events_list.json",
            env!("CARGO_MANIFEST_DIR")
        );
        let body: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let (recs, notes) = records(body).unwrap();
        assert!(notes.is_empty());
        let row = to_row(&EVENTS, &recs[0]);
        assert_eq!(
            row.cells[0],
            crate::store::rows::Cell::Text(Some("01pz58t6p04ymgsgfbmfyfy1mf".into()))
        );
        assert_eq!(row.account_id, 17079858);
    }
}
