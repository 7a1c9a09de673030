//! Deterministic initial data: a year of history with the timing quirks a sync must survive.
//!
//! The same seed and anchor give byte-identical data. Each kind draws from its own random
//! stream, so changing the number of tasks does not change the leads. The timeline has:
//! ids increasing with `created_at`; `created_at <= updated_at <= anchor`; a few percent of
//! entities sharing their `updated_at` second with another; one old bulk edit that put 300
//! entities of each kind (or all of them, if fewer) on the same second; and, if asked, one import
//! that created a contiguous block of entities in one second, none of them edited since.

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

/// Where the import block of `k` entities goes: (first index, second), with the second about a
/// third of the way back and `created` staying sorted once the block is set to it.
fn import_block(created: &[i64], k: usize, anchor: i64, span: i64) -> (usize, i64) {
    let n = created.len();
    let mut t = anchor - span / 3;
    let mut s = created.partition_point(|&c| c < t);
    if s + k > n {
        // Too few entities after the third: the block takes the last k, one second after the
        // entity before it (so that entity does not join the crowd).
        s = n - k;
        if s > 0 {
            t = t.max(created[s - 1] + 1).min(anchor);
        }
    }
    (s, t)
}

fn timeline(
    seed: u64,
    e: Entity,
    n: usize,
    anchor: i64,
    history_days: i64,
    import_crowd: usize,
) -> Timeline {
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
    // The import: a contiguous block of ids (ids follow created_at) created in one second. Its
    // times are set now, and the steps below leave it alone, so that it stays exactly `ki`
    // entities on one created_at and updated_at second. Without an import nothing below draws
    // differently, so today's data is unchanged.
    let ki = import_crowd.min(n);
    let block = if ki > 0 {
        let (s, t) = import_block(&created, ki, anchor, span);
        created[s..s + ki].fill(t);
        s..s + ki
    } else {
        0..0
    };
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
    for i in block.clone() {
        updated[i] = created[i];
    }
    // A few percent share their second with another entity (automations, imports).
    if n > 1 {
        for _ in 0..(n * 3 / 100) {
            let i = rng.gen_range(0..n);
            let j = rng.gen_range(0..n);
            if created[i] <= updated[j] && !block.contains(&i) && !block.contains(&j) {
                updated[i] = updated[j];
            }
        }
    }
    // One old bulk edit: BULK_GROUP entities (or all outside the import, if fewer) on one
    // second, about 70 days back, or later if too few entities existed then.
    let outside: Vec<usize> = (0..n).filter(|i| !block.contains(i)).collect();
    let k = BULK_GROUP.min(outside.len());
    let mut bulk_t = anchor - span / 5 - rng.gen_range(0..86_400).min(span / 10);
    if k > 0 {
        bulk_t = bulk_t.max(created[outside[k - 1]]);
    }
    let eligible: Vec<usize> = outside
        .into_iter()
        .filter(|&i| created[i] <= bulk_t)
        .collect();
    for pos in sample(&mut rng, eligible.len(), k) {
        updated[eligible[pos]] = bulk_t;
    }
    Timeline {
        ids,
        created,
        updated,
    }
}

/// (created_at, kind index, id, created_by) of a seeded entity, kept small for the creation
/// events.
type Added = (i64, usize, i64, i64);

/// Generates the initial account content, handing each entity to `sink` as soon as it is built
/// (so a large account never holds all of them as JSON trees at once), and returns the events
/// that created them.
pub fn generate(
    ctx: Ctx,
    seed: u64,
    counts: [usize; 4],
    anchor: i64,
    history_days: i64,
    import_crowd: usize,
    mut sink: impl FnMut(Entity, Value),
) -> EventLog {
    let lines: Vec<Timeline> = Entity::ALL
        .iter()
        .map(|&e| {
            let n = counts[e.index()];
            timeline(seed, e, n, anchor, history_days, import_crowd)
        })
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
            let by = v["created_by"].as_i64().unwrap_or(0);
            added.push((t.created[i], e.index(), t.ids[i], by));
            sink(e, v);
        }
    }

    // Creation events, oldest first. Every lead's `lead_added` names its note, as on Kommo
    // (not its stage: a client learns stages from the lead itself).
    added.sort_unstable();
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0xE7E7);
    let mut events = EventLog::default();
    for (created_at, ei, id, by) in added {
        let e = Entity::ALL[ei];
        let after = if e == Entity::Leads {
            events.lead_added_value()
        } else {
            json!([])
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

#[cfg(test)]
mod tests {
    use super::*;

    const ANCHOR: i64 = 1_750_000_000;

    fn check_invariants(t: &Timeline) {
        assert!(t.ids.windows(2).all(|w| w[0] < w[1]), "ids increase");
        assert!(
            t.created.windows(2).all(|w| w[0] <= w[1]),
            "created_at follows ids"
        );
        for i in 0..t.ids.len() {
            assert!(
                t.created[i] <= t.updated[i] && t.updated[i] <= ANCHOR,
                "{i}"
            );
        }
    }

    /// Indices on the import second (created_at = updated_at = it).
    fn crowd(t: &Timeline) -> (i64, Vec<usize>) {
        let mut by: HashMap<i64, usize> = HashMap::new();
        for &u in &t.updated {
            *by.entry(u).or_default() += 1;
        }
        let (&sec, _) = by.iter().max_by_key(|(s, n)| (**n, -**s)).unwrap();
        (
            sec,
            (0..t.ids.len()).filter(|&i| t.updated[i] == sec).collect(),
        )
    }

    #[test]
    fn import_is_a_contiguous_block_on_one_second() {
        let span = 365 * 86_400;
        for (n, k) in [
            (1000, 500),
            (1000, 1000),
            (400, 350),
            (300, 10_000),
            (2000, 301),
        ] {
            let t = timeline(42, Entity::Leads, n, ANCHOR, 365, k);
            check_invariants(&t);
            let (sec, members) = crowd(&t);
            let k = k.min(n);
            assert_eq!(members.len(), k, "n={n} k={k}");
            assert!(
                members.windows(2).all(|w| w[1] == w[0] + 1),
                "contiguous ids"
            );
            assert!(members.iter().all(|&i| t.created[i] == sec));
            if k < n / 2 {
                let third = ANCHOR - span / 3;
                assert!((sec - third).abs() < span / 10, "about a third back");
            }
            // The old bulk edit stays, outside the import.
            let bulk = BULK_GROUP.min(n - k);
            let mut by: HashMap<i64, usize> = HashMap::new();
            for (i, &u) in t.updated.iter().enumerate() {
                if !members.contains(&i) {
                    *by.entry(u).or_default() += 1;
                }
            }
            if bulk > 0 {
                assert!(by.values().max().copied().unwrap() >= bulk, "n={n} k={k}");
            }
        }
    }

    #[test]
    fn import_is_deterministic_and_absent_by_default() {
        let a = timeline(7, Entity::Tasks, 800, ANCHOR, 365, 400);
        let b = timeline(7, Entity::Tasks, 800, ANCHOR, 365, 400);
        assert_eq!((a.ids, a.created, a.updated), (b.ids, b.created, b.updated));
        let plain = timeline(7, Entity::Tasks, 800, ANCHOR, 365, 0);
        check_invariants(&plain);
        assert_eq!(crowd(&plain).1.len(), BULK_GROUP);
    }
}
