//! Background churn while a sync runs: creates, edits and deletes at a steady rate, plus
//! periodic bulk edits that put many entities on one `updated_at` second.
//!
//! Operations are paced in real time (`ops_per_sec`) but stamped with the sim clock, so a test
//! that advances the clock sees the churn at the new time.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;

use crate::entity::Entity;
use crate::sim::{lock, Sim};

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
    /// Seed of the mutator's choices.
    pub seed: u64,
}

impl Default for MutatorConfig {
    fn default() -> Self {
        MutatorConfig {
            ops_per_sec: 20,
            bulk_every: None,
            bulk_size: 1000,
            delete_ratio: 0.05,
            create_ratio: 0.3,
            seed: 0,
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
                    one_op(&sim, &cfg, &mut rng, &st);
                }
                _ = async { bulk.as_mut().expect("guarded").tick().await }, if bulk.is_some() => {
                    let e = Entity::ALL[rng.gen_range(0..Entity::ALL.len())];
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

fn one_op(sim: &Sim, cfg: &MutatorConfig, rng: &mut ChaCha8Rng, stats: &Mutex<MutatorStats>) {
    let e = Entity::ALL[rng.gen_range(0..Entity::ALL.len())];
    let r: f64 = rng.gen();
    if r < cfg.delete_ratio {
        let ids = sim.random_live_ids(e, 1, rng);
        if !ids.is_empty() {
            sim.delete(e, &ids);
            lock(stats).deletes += 1;
        }
    } else if r < cfg.delete_ratio + cfg.create_ratio {
        sim.create(e, 1);
        lock(stats).creates += 1;
    } else {
        let ids = sim.random_live_ids(e, 1, rng);
        if !ids.is_empty() {
            sim.edit(e, &ids);
            lock(stats).edits += 1;
        }
    }
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
