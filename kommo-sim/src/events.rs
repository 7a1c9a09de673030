//! The account's event log, served by `GET /api/v4/events`.
//!
//! Lists never show deleted entities, so the daemon learns about deletions only from here; the
//! log also records additions, stage moves, responsible changes and completed tasks, with the
//! shapes Kommo uses (`value_before` / `value_after` arrays, singular `entity_type`, string ids).

use rand::Rng;
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
