//! The account's event log, served by `GET /api/v4/events`.
//!
//! Lists never show deleted entities, so the daemon learns about deletions only from here; the
//! log also records additions, stage moves, responsible changes, completed tasks, restores,
//! merges and link changes, with the shapes Kommo uses (`value_before` / `value_after` arrays,
//! singular `entity_type`, string ids). Deletions, restores and merges carry empty arrays;
//! `entity_merged` does not name the entity kept, so a client re-fetches the one named.

use rand::Rng;
use serde::Serialize;
use serde_json::{json, Value};

use crate::entity::Entity;

/// One event.
#[derive(Clone, Debug)]
pub struct Event {
    /// Insertion sequence; ids sort in this order too.
    pub seq: u64,
    pub id: String,
    pub kind: String,
    pub entity: Entity,
    pub entity_id: i64,
    pub created_by: i64,
    pub created_at: i64,
    pub before: Value,
    pub after: Value,
}

impl Event {
    /// The event as the API serializes it.
    pub fn to_json(&self, base: &str, account_id: i64) -> Value {
        json!({
            "id": self.id,
            "type": self.kind,
            "entity_id": self.entity_id,
            "entity_type": self.entity.singular(),
            "created_by": self.created_by,
            "created_at": self.created_at,
            "value_after": self.after,
            "value_before": self.before,
            "account_id": account_id,
            "_links": {"self": {"href": format!("{base}/api/v4/events/{}", self.id)}},
            "_embedded": {"entity": {
                "id": self.entity_id,
                "_links": {"self": {"href": format!("{base}/api/v4/{}/{}", self.entity.as_str(), self.entity_id)}}
            }}
        })
    }
}

/// A lead's move between stages, read back from a `lead_status_changed` event.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct StageMove {
    pub event_id: String,
    pub lead_id: i64,
    pub from_pipeline: i64,
    pub from_status: i64,
    pub to_pipeline: i64,
    pub to_status: i64,
    /// The event's `created_at`.
    pub at: i64,
    /// The event's `created_by`.
    pub by: i64,
}

impl StageMove {
    /// The move an event records; `None` for other events.
    pub fn of(e: &Event) -> Option<StageMove> {
        if e.kind != "lead_status_changed" {
            return None;
        }
        let side = |v: &Value| -> Option<(i64, i64)> {
            let s = v.get(0)?.get("lead_status")?;
            Some((s.get("pipeline_id")?.as_i64()?, s.get("id")?.as_i64()?))
        };
        let (from_pipeline, from_status) = side(&e.before)?;
        let (to_pipeline, to_status) = side(&e.after)?;
        Some(StageMove {
            event_id: e.id.clone(),
            lead_id: e.entity_id,
            from_pipeline,
            from_status,
            to_pipeline,
            to_status,
            at: e.created_at,
            by: e.created_by,
        })
    }
}

/// `value_after` of `entity_linked` (and `value_before` of `entity_unlinked`): the other end.
pub fn link_value(other: Entity, other_id: i64) -> Value {
    json!([{"link": {"entity": {"id": other_id, "type": other.singular()}}}])
}

/// First note id: `lead_added` names the note Kommo writes for a new lead.
const FIRST_NOTE_ID: i64 = 42_000_001;

/// Filters of an events request.
#[derive(Clone, Debug, Default)]
pub struct EventFilter {
    pub types: Option<Vec<String>>,
    pub entities: Option<Vec<Entity>>,
    pub ids: Option<Vec<String>>,
    pub created_from: Option<i64>,
    pub created_to: Option<i64>,
    /// Newest first unless `true`.
    pub ascending: bool,
}

/// Append-only event log.
#[derive(Debug, Default)]
pub struct EventLog {
    events: Vec<Event>,
    next_seq: u64,
    /// Notes written so far (`lead_added` carries a note id, not a stage).
    notes: i64,
}

const CROCKFORD: &[u8; 32] = b"0123456789abcdefghjkmnpqrstvwxyz";

/// A ULID-like id (26 lowercase Crockford base32 chars, time first), like Kommo's event ids.
fn ulid(created_at: i64, seq: u64, rng: &mut impl Rng) -> String {
    let ms = (created_at.max(0) as u128) * 1000 + (seq % 1000) as u128;
    let rand_part: u128 = rng.gen::<u128>() & ((1u128 << 80) - 1);
    let v = (ms << 80) | rand_part;
    (0..26)
        .rev()
        .map(|i| CROCKFORD[((v >> (5 * i)) & 31) as usize] as char)
        .collect()
}

impl EventLog {
    /// Appends an event.
    #[allow(clippy::too_many_arguments)]
    pub fn push(
        &mut self,
        rng: &mut impl Rng,
        kind: &str,
        entity: Entity,
        entity_id: i64,
        created_by: i64,
        created_at: i64,
        before: Value,
        after: Value,
    ) {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.events.push(Event {
            seq,
            id: ulid(created_at, seq, rng),
            kind: kind.to_string(),
            entity,
            entity_id,
            created_by,
            created_at,
            before,
            after,
        });
    }

    /// A fresh note id, for the note a new lead's `lead_added` event points at. Counted, not
    /// drawn, so it does not move any random stream.
    pub fn next_note_id(&mut self) -> i64 {
        self.notes += 1;
        FIRST_NOTE_ID + self.notes - 1
    }

    /// `value_after` of a new lead's `lead_added`: `[{"note": {"id": N}}]`, as Kommo sends it.
    pub fn lead_added_value(&mut self) -> Value {
        json!([{"note": {"id": self.next_note_id()}}])
    }

    /// Every event in insertion order.
    pub fn all(&self) -> &[Event] {
        &self.events
    }

    /// Every `lead_status_changed`, in insertion order.
    pub fn stage_moves(&self) -> Vec<StageMove> {
        self.events.iter().filter_map(StageMove::of).collect()
    }

    /// Number of events.
    pub fn len(&self) -> usize {
        self.events.len()
    }

    /// Whether the log is empty.
    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    /// Matching events in the requested order.
    pub fn list(&self, f: &EventFilter) -> Vec<&Event> {
        let mut hits: Vec<&Event> = self
            .events
            .iter()
            .filter(|e| f.types.as_ref().is_none_or(|t| t.contains(&e.kind)))
            .filter(|e| f.entities.as_ref().is_none_or(|t| t.contains(&e.entity)))
            .filter(|e| f.ids.as_ref().is_none_or(|t| t.contains(&e.id)))
            .filter(|e| f.created_from.is_none_or(|x| e.created_at >= x))
            .filter(|e| f.created_to.is_none_or(|x| e.created_at <= x))
            .collect();
        hits.sort_by_key(|e| (e.created_at, e.seq));
        if !f.ascending {
            hits.reverse();
        }
        hits
    }
}
