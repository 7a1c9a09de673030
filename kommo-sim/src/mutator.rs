//! Background churn while a sync runs: creates, edits and deletes at a steady rate, plus
//! periodic bulk edits that put many entities on one `updated_at` second. On request it also
//! restores, merges, moves leads between stages and links or unlinks contacts: the changes a
//! client learns about from events rather than from `updated_at`.
//!
//! Operations are paced in real time (`ops_per_sec`) but stamped with the sim clock, so a test
//! that advances the clock sees the churn at the new time. With [`Focus::Crowd`], edits and
//! deletes aim at the most crowded `updated_at` second of each kind: the entities a client is
//! walking when it splits a crowded second, and so the churn most likely to break that walk.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;

use crate::entity::Entity;
use crate::lifecycle;
use crate::sim::{lock, Sim};

/// Where edits and deletes pick their victims.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Focus {
    /// Any live entity of the chosen kind.
    #[default]
    Uniform,
    /// Live entities of the chosen kind still on that kind's most crowded `updated_at` second
    /// (as it was when the mutator started); uniform once that crowd is gone.
    Crowd,
}

impl std::str::FromStr for Focus {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "uniform" => Ok(Focus::Uniform),
            "crowd" => Ok(Focus::Crowd),
            other => Err(format!(
                "unknown mutator focus {other:?} (expected uniform or crowd)"
            )),
        }
    }
}

/// What the mutator does. In JSON, `bulk_every` is in seconds (alias `bulk_every_secs`).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default)]
pub struct MutatorConfig {
    /// Single operations per real second (0 = none).
    pub ops_per_sec: u32,
    /// Period of bulk edits (None = never).
    #[serde(with = "opt_secs", alias = "bulk_every_secs")]
    pub bulk_every: Option<Duration>,
    /// Entities per bulk edit, all of one random kind, all in one sim second.
    pub bulk_size: usize,
    /// Share of single operations that delete.
    pub delete_ratio: f64,
    /// Share of single operations that create (the rest edit).
    pub create_ratio: f64,
    /// Share that restores a deleted lead, contact or company (0 = never).
    pub restore_ratio: f64,
    /// Share that merges one contact or company into another (0 = never).
    pub merge_ratio: f64,
    /// Share that moves a lead to another stage, sometimes of another pipeline (0 = never;
    /// edits move leads too, within their pipeline).
    pub move_ratio: f64,
    /// Share that links a contact to a lead (0 = never).
    pub link_ratio: f64,
    /// Share that unlinks a contact from a lead (0 = never).
    pub unlink_ratio: f64,
    /// Seed of the mutator's choices.
    pub seed: u64,
    /// Where edits and deletes (single ones; bulk edits stay uniform) pick their victims.
    pub focus: Focus,
    /// Kinds the mutator touches (`None` = all four; an empty list = none).
    pub kinds: Option<Vec<Entity>>,
}

impl Default for MutatorConfig {
    fn default() -> Self {
        MutatorConfig {
            ops_per_sec: 20,
            bulk_every: None,
            bulk_size: 1000,
            delete_ratio: 0.05,
            create_ratio: 0.3,
            restore_ratio: 0.0,
            merge_ratio: 0.0,
            move_ratio: 0.0,
            link_ratio: 0.0,
            unlink_ratio: 0.0,
            seed: 0,
            focus: Focus::Uniform,
            kinds: None,
        }
    }
}

/// What a mutator did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct MutatorStats {
    pub creates: u64,
    pub edits: u64,
    pub deletes: u64,
    /// Bulk edit operations.
    pub bulk_edits: u64,
    /// Entities edited by bulk edits.
    pub bulk_edited: u64,
    pub restores: u64,
    pub merges: u64,
    /// Dedicated stage moves (not those edits make).
    pub moves: u64,
    pub links: u64,
    pub unlinks: u64,
}

/// A running mutator.
#[derive(Debug)]
pub struct MutatorHandle {
    stop: watch::Sender<bool>,
    join: JoinHandle<()>,
    stats: Arc<Mutex<MutatorStats>>,
}

impl MutatorHandle {
    /// Stops the mutator after the operation in progress and returns what it did.
    pub async fn stop(self) -> MutatorStats {
        let _ = self.stop.send(true);
        let _ = self.join.await;
        *lock(&self.stats)
    }

    /// What it has done so far.
    pub fn stats(&self) -> MutatorStats {
        *lock(&self.stats)
    }
}

pub(crate) fn start(sim: Arc<Sim>, cfg: MutatorConfig) -> MutatorHandle {
    let (tx, mut rx) = watch::channel(false);
    let stats = Arc::new(Mutex::new(MutatorStats::default()));
    let st = stats.clone();
    let join = tokio::spawn(async move {
        let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
        let kinds: Vec<Entity> = cfg.kinds.clone().unwrap_or_else(|| Entity::ALL.to_vec());
        let mut crowds = match cfg.focus {
            Focus::Uniform => Crowds::default(),
            Focus::Crowd => Crowds::of(&sim, &kinds),
        };
        let mut ops = (cfg.ops_per_sec > 0).then(|| {
            let mut i =
                tokio::time::interval(Duration::from_secs_f64(1.0 / cfg.ops_per_sec as f64));
            i.set_missed_tick_behavior(MissedTickBehavior::Delay);
            i
        });
        let mut bulk = cfg.bulk_every.filter(|d| !d.is_zero()).map(|d| {
            let mut i = tokio::time::interval_at(tokio::time::Instant::now() + d, d);
            i.set_missed_tick_behavior(MissedTickBehavior::Delay);
            i
        });
        loop {
            tokio::select! {
                _ = rx.wait_for(|s| *s) => break,
                _ = async { ops.as_mut().expect("guarded").tick().await }, if ops.is_some() => {
                    if !kinds.is_empty() {
                        one_op(&sim, &cfg, &kinds, &mut crowds, &mut rng, &st);
                    }
                }
                _ = async { bulk.as_mut().expect("guarded").tick().await }, if bulk.is_some() => {
                    if kinds.is_empty() {
                        continue;
                    }
                    let e = kinds[rng.gen_range(0..kinds.len())];
                    let n = sim.bulk_edit(e, cfg.bulk_size).len() as u64;
                    let mut s = lock(&st);
                    s.bulk_edits += 1;
                    s.bulk_edited += n;
                }
            }
        }
    });
    MutatorHandle {
        stop: tx,
        join,
        stats,
    }
}

/// The crowd of each kind, as found when the mutator started: its second and the ids still
/// believed to be on it (members found to have left are dropped).
#[derive(Debug, Default)]
struct Crowds {
    of_kind: [Option<(i64, Vec<i64>)>; 4],
}

/// Picks of a crowd member tried before falling back to a uniform victim.
const CROWD_TRIES: usize = 8;

impl Crowds {
    fn of(sim: &Sim, kinds: &[Entity]) -> Crowds {
        let mut c = Crowds::default();
        for &e in kinds {
            c.of_kind[e.index()] = sim.crowd(e);
        }
        c
    }

    /// A live member of `e`'s crowd still on its second, if one turns up in a few tries.
    fn victim(&mut self, sim: &Sim, e: Entity, rng: &mut ChaCha8Rng) -> Option<i64> {
        let (second, ids) = self.of_kind[e.index()].as_mut()?;
        for _ in 0..CROWD_TRIES {
            if ids.is_empty() {
                return None;
            }
            let i = rng.gen_range(0..ids.len());
            if sim.updated_at_of(e, ids[i]) == Some(*second) {
                return Some(ids[i]);
            }
            ids.swap_remove(i);
        }
        None
    }
}

fn one_op(
    sim: &Sim,
    cfg: &MutatorConfig,
    kinds: &[Entity],
    crowds: &mut Crowds,
    rng: &mut ChaCha8Rng,
    stats: &Mutex<MutatorStats>,
) {
    let e = kinds[rng.gen_range(0..kinds.len())];
    let r: f64 = rng.gen();
    let mut victim = |rng: &mut ChaCha8Rng| match crowds.victim(sim, e, rng) {
        Some(id) => vec![id],
        None => sim.random_live_ids(e, 1, rng),
    };
    if r < cfg.delete_ratio {
        let ids = victim(rng);
        if !ids.is_empty() {
            sim.delete(e, &ids);
            lock(stats).deletes += 1;
        }
    } else if r < cfg.delete_ratio + cfg.create_ratio {
        sim.create(e, 1);
        lock(stats).creates += 1;
    } else if let Some(op) = event_op(cfg, r - cfg.delete_ratio - cfg.create_ratio) {
        // Drawn only when asked for, so configurations without these draw as before.
        event_driven(sim, op, e, kinds, rng, stats);
    } else {
        let ids = victim(rng);
        if !ids.is_empty() {
            sim.edit(e, &ids);
            lock(stats).edits += 1;
        }
    }
}

/// Operations a client learns about from the event log rather than from `updated_at`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum EventOp {
    Restore,
    Merge,
    Move,
    Link,
    Unlink,
}

/// The operation `r` (already past deletes and creates) falls on, if any.
fn event_op(cfg: &MutatorConfig, r: f64) -> Option<EventOp> {
    let mut acc = 0.0;
    for (ratio, op) in [
        (cfg.restore_ratio, EventOp::Restore),
        (cfg.merge_ratio, EventOp::Merge),
        (cfg.move_ratio, EventOp::Move),
        (cfg.link_ratio, EventOp::Link),
        (cfg.unlink_ratio, EventOp::Unlink),
    ] {
        if ratio > 0.0 {
            acc += ratio;
            if r < acc {
                return Some(op);
            }
        }
    }
    None
}

/// `e` if `ok` accepts it, else a random kind of `kinds` that it accepts.
fn kind_for(
    e: Entity,
    kinds: &[Entity],
    ok: impl Fn(Entity) -> bool,
    rng: &mut ChaCha8Rng,
) -> Option<Entity> {
    if ok(e) {
        return Some(e);
    }
    let fit: Vec<Entity> = kinds.iter().copied().filter(|&k| ok(k)).collect();
    (!fit.is_empty()).then(|| fit[rng.gen_range(0..fit.len())])
}

fn event_driven(
    sim: &Sim,
    op: EventOp,
    e: Entity,
    kinds: &[Entity],
    rng: &mut ChaCha8Rng,
    stats: &Mutex<MutatorStats>,
) {
    let done = match op {
        EventOp::Restore => kind_for(e, kinds, lifecycle::restorable, rng)
            .and_then(|k| Some((k, sim.random_deleted_id(k, rng)?)))
            .is_some_and(|(k, id)| !sim.restore(k, &[id]).is_empty()),
        EventOp::Merge => kind_for(e, kinds, lifecycle::mergeable, rng).is_some_and(|k| match sim
            .random_live_ids(k, 2, rng)
            .as_slice()
        {
            &[a, b] => {
                let (from, into) = if rng.gen_bool(0.5) { (a, b) } else { (b, a) };
                sim.merge(k, from, into)
            }
            _ => false,
        }),
        EventOp::Move => kinds.contains(&Entity::Leads) && random_move(sim, rng),
        EventOp::Link => {
            kinds.contains(&Entity::Leads)
                && match (
                    sim.random_live_ids(Entity::Leads, 1, rng).first(),
                    sim.random_live_ids(Entity::Contacts, 1, rng).first(),
                ) {
                    (Some(&lead), Some(&contact)) => sim.link(lead, contact),
                    _ => false,
                }
        }
        EventOp::Unlink => {
            kinds.contains(&Entity::Leads)
                && sim
                    .random_lead_contact(rng)
                    .is_some_and(|(lead, contact)| sim.unlink(lead, contact))
        }
    };
    if done {
        let mut s = lock(stats);
        match op {
            EventOp::Restore => s.restores += 1,
            EventOp::Merge => s.merges += 1,
            EventOp::Move => s.moves += 1,
            EventOp::Link => s.links += 1,
            EventOp::Unlink => s.unlinks += 1,
        }
    }
}

/// Moves a random lead to another stage: of its own pipeline mostly, of another one in a
/// quarter of the moves (when the account has several).
fn random_move(sim: &Sim, rng: &mut ChaCha8Rng) -> bool {
    let Some(&lead) = sim.random_live_ids(Entity::Leads, 1, rng).first() else {
        return false;
    };
    let Some((pipeline, status)) = sim.stage_of(lead) else {
        return false;
    };
    let r = sim.reference();
    let others: Vec<i64> = r
        .pipelines
        .iter()
        .map(|p| p.id)
        .filter(|&p| p != pipeline)
        .collect();
    let target = if !others.is_empty() && (r.pipeline(pipeline).is_none() || rng.gen_bool(0.25)) {
        others[rng.gen_range(0..others.len())]
    } else {
        pipeline
    };
    let Some(p) = r.pipeline(target) else {
        return false;
    };
    let stages: Vec<i64> = p
        .statuses
        .iter()
        .map(|s| s.id)
        .filter(|&s| target != pipeline || s != status)
        .collect();
    if stages.is_empty() {
        return false;
    }
    sim.move_lead(lead, target, stages[rng.gen_range(0..stages.len())])
}

/// `Option<Duration>` as (fractional) seconds in JSON.
mod opt_secs {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_f64(d.as_secs_f64()),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        let v: Option<f64> = Option::deserialize(d)?;
        match v {
            Some(x) if x.is_finite() && x > 0.0 => Ok(Some(Duration::from_secs_f64(x))),
            Some(0.0) | None => Ok(None),
            Some(x) => Err(serde::de::Error::custom(format!(
                "bulk_every must be a positive number of seconds, got {x}"
            ))),
        }
    }
}
