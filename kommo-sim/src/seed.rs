//! Deterministic initial data: a year of history with the timing quirks a sync must survive.
//!
//! The same seed and anchor give byte-identical data. Each kind draws from its own random
//! stream, so changing the number of tasks does not change the leads. The timeline has:
//! ids increasing with `created_at`; `created_at <= updated_at <= anchor`; a few percent of
//! entities sharing their `updated_at` second with another; and one old bulk edit that put 300
//! entities of each kind (or all of them, if fewer) on the same second.

use std::collections::HashMap;

use rand::seq::index::sample;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{json, Value};

use crate::content::{self, Ctx, LinkPool};
use crate::entity::Entity;
use crate::events::EventLog;

/// Size of the seeded same-second bulk edit, per kind.
pub const BULK_GROUP: usize = 300;

/// First id of each kind (ids then grow by small random gaps).
pub fn id_base(e: Entity) -> i64 {
    match e {
        Entity::Leads => 21_000_000,
        Entity::Contacts => 11_000_000,
        Entity::Companies => 6_000_000,
        Entity::Tasks => 31_000_000,
    }
}

/// Ids and times of one kind, before content is attached.
struct Timeline {
    ids: Vec<i64>,
    created: Vec<i64>,
    updated: Vec<i64>,
}

fn stream(seed: u64, e: Entity, purpose: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(
        seed ^ (0x9E37_79B9_7F4A_7C15u64.wrapping_mul(e.index() as u64 + 1)) ^ (purpose << 56),
    )
}

fn timeline(seed: u64, e: Entity, n: usize, anchor: i64, history_days: i64) -> Timeline {
    let mut rng = stream(seed, e, 1);
    let span = (history_days.max(1) * 86_400).max(60);
    let start = anchor - span;
    let mut created: Vec<i64> = (0..n).map(|_| rng.gen_range(start..=anchor)).collect();
    created.sort_unstable();
    let mut ids = Vec::with_capacity(n);
    let mut id = id_base(e);
    for _ in 0..n {
        id += rng.gen_range(1..=4);
        ids.push(id);
    }
    // Most edits come soon after creation; a third of entities are never edited.
    let mut updated: Vec<i64> = created
        .iter()
        .map(|&c| {
            if rng.gen_bool(0.35) {
                c
            } else {
                let u: f64 = rng.gen();
                c + ((anchor - c) as f64 * u * u) as i64
            }
        })
        .collect();
    // A few percent share their second with another entity (automations, imports).
    if n > 1 {
        for _ in 0..(n * 3 / 100) {
            let i = rng.gen_range(0..n);
            let j = rng.gen_range(0..n);
            if created[i] <= updated[j] {
                updated[i] = updated[j];
            }
        }
    }
    // One old bulk edit: BULK_GROUP entities (or all, if fewer) on one second, about 70 days
    // back, or later if too few entities existed then.
    let k = BULK_GROUP.min(n);
    let mut bulk_t = anchor - span / 5 - rng.gen_range(0..86_400).min(span / 10);
    if k > 0 {
        bulk_t = bulk_t.max(created[k - 1]);
    }
    let eligible: Vec<usize> = (0..n).filter(|&i| created[i] <= bulk_t).collect();
    for pos in sample(&mut rng, eligible.len(), k) {
        updated[eligible[pos]] = bulk_t;
    }
    Timeline {
        ids,
        created,
        updated,
    }
}

/// (created_at, kind index, id, created_by, lead (status_id, pipeline_id)) of a seeded entity,
/// kept small for the creation events.
type Added = (i64, usize, i64, i64, Option<(i64, i64)>);

/// Generates the initial account content, handing each entity to `sink` as soon as it is built
/// (so a large account never holds all of them as JSON trees at once), and returns the events
/// that created them.
pub fn generate(
    ctx: Ctx,
    seed: u64,
    counts: [usize; 4],
    anchor: i64,
    history_days: i64,
    mut sink: impl FnMut(Entity, Value),
) -> EventLog {
    let lines: Vec<Timeline> = Entity::ALL
        .iter()
        .map(|&e| timeline(seed, e, counts[e.index()], anchor, history_days))
        .collect();
    let pool = LinkPool {
        leads: &lines[Entity::Leads.index()].ids,
        contacts: &lines[Entity::Contacts.index()].ids,
        companies: &lines[Entity::Companies.index()].ids,
    };
    // Tasks first: the others' `closest_task_at` is the earliest deadline of their open tasks.
    let order = [
        Entity::Tasks,
        Entity::Leads,
        Entity::Contacts,
        Entity::Companies,
    ];
    let mut closest: HashMap<(&'static str, i64), i64> = HashMap::new();
    let mut added: Vec<Added> = Vec::new();
    for e in order {
        let mut rng = stream(seed, e, 2);
        let t = &lines[e.index()];
        for i in 0..t.ids.len() {
            let mut v = content::make(e, ctx, &mut rng, t.ids[i], t.created[i], t.updated[i], pool);
            if e == Entity::Tasks {
                note_open_task(&v, &mut closest);
            } else if let Some(till) = closest.get(&(e.as_str(), t.ids[i])) {
                v["closest_task_at"] = json!(till);
            }
            let status = (e == Entity::Leads).then(|| {
                (
                    v["status_id"].as_i64().unwrap_or(0),
                    v["pipeline_id"].as_i64().unwrap_or(0),
                )
            });
            let by = v["created_by"].as_i64().unwrap_or(0);
            added.push((t.created[i], e.index(), t.ids[i], by, status));
            sink(e, v);
        }
    }

    // Creation events, oldest first.
    added.sort_unstable();
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0xE7E7);
    let mut events = EventLog::default();
    for (created_at, ei, id, by, status) in added {
        let e = Entity::ALL[ei];
        let after = match status {
            Some((sid, pid)) => json!([{"lead_status": {"id": sid, "pipeline_id": pid}}]),
            None => json!([]),
        };
        let kind = format!("{}_added", e.singular());
        events.push(&mut rng, &kind, e, id, by, created_at, json!([]), after);
    }
    events
}

/// Records an open task's deadline against the entity it belongs to.
fn note_open_task(t: &Value, closest: &mut HashMap<(&'static str, i64), i64>) {
    if t["is_completed"] == json!(true) {
        return;
    }
    let (Some(kind), Some(id), Some(till)) = (
        t["entity_type"]
            .as_str()
            .and_then(|k| k.parse::<Entity>().ok()),
        t["entity_id"].as_i64(),
        t["complete_till"].as_i64(),
    ) else {
        return;
    };
    let slot = closest.entry((kind.as_str(), id)).or_insert(till);
    *slot = (*slot).min(till);
}
