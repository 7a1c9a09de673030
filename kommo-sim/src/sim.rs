//! The shared state of one simulated account and the control surface tests use in-process.
//!
//! Every piece of state sits behind its own short-lived `std::sync::Mutex` (never held across an
//! `.await`), so the HTTP layer, the mutator and test code can act on the account concurrently.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rand::seq::index::sample;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{json, Value};

use crate::clock::SimClock;
use crate::config::{ImsMode, SimConfig, TieOrder};
use crate::content::{self, Ctx, LinkPool};
use crate::counters::{CounterState, Counters};
use crate::entity::Entity;
use crate::events::EventLog;
use crate::faults::{Fault, FaultQueue};
use crate::limits::{LimitConfig, Limiter};
use crate::mutator::{MutatorConfig, MutatorHandle};
use crate::oauth::OAuth;
use crate::reference::Reference;
use crate::seed;
use crate::store::{Store, Version};

/// Entities, events and the random source that edits them.
pub(crate) struct Data {
    pub store: Store,
    pub events: EventLog,
    pub rng: ChaCha8Rng,
}

/// One simulated Kommo account.
pub struct Sim {
    pub(crate) cfg: SimConfig,
    pub(crate) base_url: String,
    pub(crate) reference: Reference,
    pub(crate) clock: SimClock,
    pub(crate) data: Mutex<Data>,
    pub(crate) limiter: Mutex<Limiter>,
    pub(crate) counters: Mutex<CounterState>,
    pub(crate) faults: Mutex<FaultQueue>,
    pub(crate) oauth: Mutex<OAuth>,
    ims_mode: Mutex<ImsMode>,
    tie_order: Mutex<TieOrder>,
    visibility_delay: AtomicI64,
    latency_nanos: AtomicU64,
    /// The mutator started through `/_sim/mutator/start`.
    pub(crate) control_mutator: tokio::sync::Mutex<Option<MutatorHandle>>,
    /// Flips to `true` when the server stops; releases requests held by `Timeout` faults.
    pub(crate) shutdown: tokio::sync::watch::Sender<bool>,
}

/// Locks a mutex, ignoring poisoning: a panicking test must not wedge the others' server.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Sim {
    /// Builds and seeds an account whose links point at `base_url` (no server is started).
    pub fn new(cfg: SimConfig, base_url: &str) -> Arc<Sim> {
        let clock = SimClock::new(cfg.clock_offset_secs);
        let reference = Reference::new(cfg.account_id);
        let anchor = cfg.seed_now.unwrap_or_else(|| clock.now());
        let base = base_url.trim_end_matches('/').to_string();
        let now = clock.now();
        let delay = cfg.visibility_delay_secs;
        let mut store = Store::default();
        let events = seed::generate(
            Ctx {
                reference: &reference,
                base: &base,
            },
            cfg.seed,
            [cfg.leads, cfg.contacts, cfg.companies, cfg.tasks],
            anchor,
            cfg.history_days,
            |e, v| {
                let ver = Version::from_value(&v, now).expect("seeded entity has an id");
                store.put(e, ver, now, delay);
            },
        );
        let (tx, _) = tokio::sync::watch::channel(false);
        Arc::new(Sim {
            data: Mutex::new(Data {
                store,
                events,
                rng: ChaCha8Rng::seed_from_u64(cfg.seed ^ 0x005E_ED0F_ED17),
            }),
            limiter: Mutex::new(Limiter::default()),
            counters: Mutex::new(CounterState::default()),
            faults: Mutex::new(FaultQueue::default()),
            oauth: Mutex::new(OAuth::default()),
            ims_mode: Mutex::new(cfg.ims_mode),
            tie_order: Mutex::new(cfg.tie_order),
            visibility_delay: AtomicI64::new(cfg.visibility_delay_secs),
            latency_nanos: AtomicU64::new(cfg.latency.as_nanos() as u64),
            control_mutator: tokio::sync::Mutex::new(None),
            shutdown: tx,
            base_url: base,
            reference,
            clock,
            cfg,
        })
    }

    /// The configuration the account was built with (runtime knobs may have moved since).
    pub fn config(&self) -> &SimConfig {
        &self.cfg
    }

    /// Base URL used in `_links`.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// Counters since the last reset.
    pub fn counters(&self) -> Counters {
        lock(&self.counters).c.clone()
    }

    /// Zeroes the counters and forgets served queries.
    pub fn reset_counters(&self) {
        lock(&self.counters).reset();
    }

    /// Sim clock, unix seconds.
    pub fn now(&self) -> i64 {
        self.clock.now()
    }

    /// Jumps the sim clock forward by `secs`.
    pub fn advance_clock(&self, secs: i64) {
        self.clock.advance(secs);
    }

    /// Newest version of every live entity, sorted by id, as lists serialize it once visible.
    pub fn dump(&self, entity: Entity) -> Vec<Value> {
        lock(&self.data)
            .store
            .newest_all(entity)
            .map(Version::value)
            .collect()
    }

    /// Ids deleted so far, ascending.
    pub fn deleted_ids(&self, entity: Entity) -> Vec<i64> {
        lock(&self.data).store.deleted_ids(entity)
    }

    /// Number of live entities.
    pub fn live_count(&self, entity: Entity) -> usize {
        lock(&self.data).store.len(entity)
    }

    /// Queues `fault` for the next `count` /api requests that pass ban, rate and auth checks.
    pub fn inject(&self, fault: Fault, count: u32) {
        lock(&self.faults).push(fault, count);
    }

    /// Drops every queued fault.
    pub fn clear_faults(&self) {
        lock(&self.faults).clear();
    }

    /// Answers 403 to everything for `d` (zero lifts a ban).
    pub fn ban_for(&self, d: Duration) {
        lock(&self.limiter).ban_for(d);
    }

    /// Time left on the current ban.
    pub fn ban_remaining(&self) -> Option<Duration> {
        lock(&self.limiter).ban_remaining()
    }

    /// Delay added to every /api and /oauth2 response.
    pub fn set_latency(&self, d: Duration) {
        self.latency_nanos
            .store(d.as_nanos() as u64, Ordering::SeqCst);
    }

    /// Current response latency.
    pub fn latency(&self) -> Duration {
        Duration::from_nanos(self.latency_nanos.load(Ordering::SeqCst))
    }

    /// How `If-Modified-Since` compares from now on.
    pub fn set_ims_mode(&self, m: ImsMode) {
        *lock(&self.ims_mode) = m;
    }

    /// Current `If-Modified-Since` comparison.
    pub fn ims_mode(&self) -> ImsMode {
        *lock(&self.ims_mode)
    }

    /// Order of ties from now on.
    pub fn set_tie_order(&self, t: TieOrder) {
        *lock(&self.tie_order) = t;
    }

    /// Current order of ties.
    pub fn tie_order(&self) -> TieOrder {
        *lock(&self.tie_order)
    }

    /// Edits reach the lists `secs` sim-seconds after their `updated_at` from now on.
    pub fn set_visibility_delay(&self, secs: i64) {
        self.visibility_delay.store(secs.max(0), Ordering::SeqCst);
    }

    /// Current visibility delay.
    pub fn visibility_delay(&self) -> i64 {
        self.visibility_delay.load(Ordering::SeqCst)
    }

    fn limit_config(&self) -> LimitConfig {
        LimitConfig {
            max_rps: self.cfg.max_rps,
            ban_after_violations: self.cfg.ban_after_violations,
            ban_window: self.cfg.ban_window,
            ban_duration: self.cfg.ban_duration,
        }
    }

    pub(crate) fn limits(&self) -> LimitConfig {
        self.limit_config()
    }

    fn ctx(&self) -> Ctx<'_> {
        Ctx {
            reference: &self.reference,
            base: &self.base_url,
        }
    }

    /// Inserts or replaces an entity verbatim; `updated_at` (and visibility) come from the value.
    ///
    /// # Panics
    /// When the value has no integer `id`.
    pub fn put_raw(&self, entity: Entity, value: Value) {
        let now = self.now();
        let ver = Version::from_value(&value, now).expect("put_raw needs an integer \"id\"");
        let delay = self.visibility_delay();
        lock(&self.data).store.put(entity, ver, now, delay);
    }

    /// Creates `n` entities at sim now; returns their ids (ascending).
    pub fn create(&self, entity: Entity, n: usize) -> Vec<i64> {
        let now = self.now();
        let delay = self.visibility_delay();
        let ctx = self.ctx();
        let mut guard = lock(&self.data);
        let d = &mut *guard;
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            let base = d.store.max_id(entity).max(seed::id_base(entity));
            let id = base + d.rng.gen_range(1..=3);
            let pick = |e: Entity, rng: &mut ChaCha8Rng, store: &Store| -> Vec<i64> {
                (0..3)
                    .filter_map(|_| store.random_live_id(e, rng))
                    .collect()
            };
            let leads = pick(Entity::Leads, &mut d.rng, &d.store);
            let contacts = pick(Entity::Contacts, &mut d.rng, &d.store);
            let companies = pick(Entity::Companies, &mut d.rng, &d.store);
            let pool = LinkPool {
                leads: &leads,
                contacts: &contacts,
                companies: &companies,
            };
            let v = content::make(entity, ctx, &mut d.rng, id, now, now, pool);
            let after = if entity == Entity::Leads {
                json!([{"lead_status": {"id": v["status_id"], "pipeline_id": v["pipeline_id"]}}])
            } else {
                json!([])
            };
            let by = v["created_by"].as_i64().unwrap_or(0);
            let ver = Version::from_value(&v, now).expect("generated entity has an id");
            d.store.put(entity, ver, now, delay);
            let kind = format!("{}_added", entity.singular());
            d.events
                .push(&mut d.rng, &kind, entity, id, by, now, json!([]), after);
            out.push(id);
        }
        out
    }

    /// Edits the given live entities, all in the same sim second (now); unknown ids are skipped.
    pub fn edit(&self, entity: Entity, ids: &[i64]) {
        let now = self.now();
        let delay = self.visibility_delay();
        let ctx = self.ctx();
        let mut guard = lock(&self.data);
        let d = &mut *guard;
        for &id in ids {
            let Some(cur) = d.store.newest(entity, id) else {
                continue;
            };
            let mut v = cur.value();
            let changes = content::edit(entity, ctx, &mut d.rng, &mut v, now);
            let by = v["updated_by"].as_i64().unwrap_or(0);
            let ver = Version::from_value(&v, now).expect("edited entity has an id");
            d.store.put(entity, ver, now, delay);
            for c in changes {
                d.events
                    .push(&mut d.rng, c.kind, entity, id, by, now, c.before, c.after);
            }
        }
    }

    /// Edits `n` random live entities (or all, if fewer) in one sim second; returns their ids.
    pub fn bulk_edit(&self, entity: Entity, n: usize) -> Vec<i64> {
        let ids = {
            let mut guard = lock(&self.data);
            let d = &mut *guard;
            let live = d.store.live_ids(entity);
            let k = n.min(live.len());
            let mut chosen: Vec<i64> = sample(&mut d.rng, live.len(), k)
                .into_iter()
                .map(|i| live[i])
                .collect();
            chosen.sort_unstable();
            chosen
        };
        self.edit(entity, &ids);
        ids
    }

    /// Deletes live entities (unknown ids are skipped); they vanish from lists at once and get a
    /// `*_deleted` event.
    pub fn delete(&self, entity: Entity, ids: &[i64]) {
        let now = self.now();
        let people: Vec<i64> = self.reference.users.iter().map(|u| u.id).collect();
        let mut guard = lock(&self.data);
        let d = &mut *guard;
        for &id in ids {
            if d.store.delete(entity, id, now).is_some() {
                let by = people[d.rng.gen_range(0..people.len())];
                let kind = format!("{}_deleted", entity.singular());
                d.events
                    .push(&mut d.rng, &kind, entity, id, by, now, json!([]), json!([]));
            }
        }
    }

    /// Up to `n` distinct random live ids of a kind.
    pub(crate) fn random_live_ids(&self, entity: Entity, n: usize, rng: &mut impl Rng) -> Vec<i64> {
        let d = lock(&self.data);
        let mut out: Vec<i64> = (0..n * 2)
            .filter_map(|_| d.store.random_live_id(entity, rng))
            .collect();
        out.sort_unstable();
        out.dedup();
        out.truncate(n);
        out
    }

    /// Starts a background task that creates, edits and deletes entities.
    pub fn start_mutator(self: &Arc<Self>, cfg: MutatorConfig) -> MutatorHandle {
        crate::mutator::start(self.clone(), cfg)
    }

    /// Number of events in the log.
    pub fn event_count(&self) -> usize {
        lock(&self.data).events.len()
    }
}
