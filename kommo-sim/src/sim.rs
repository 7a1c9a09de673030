//! The shared state of one simulated account and the control surface tests use in-process.
//!
//! Every piece of state sits behind its own short-lived `std::sync::Mutex` (never held across an
//! `.await`), so the HTTP layer, the mutator and test code can act on the account concurrently.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::Duration;

use rand::seq::index::sample;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{json, Value};

use crate::clock::SimClock;
use crate::config::{Bounds, DefaultOrder, IgnoredParam, ImsMode, SimConfig, TieOrder};
use crate::content::{self, Ctx, LinkPool};
use crate::counters::{CounterState, Counters};
use crate::embeds::{self, With};
use crate::entity::Entity;
use crate::events::{Event, EventLog};
use crate::faults::{Fault, FaultMix, FaultMixError, FaultQueue};
use crate::limits::{LimitConfig, Limiter};
use crate::links::{embedded_ids, Links};
use crate::mutator::{MutatorConfig, MutatorHandle};
use crate::oauth::OAuth;
use crate::query::ListRules;
use crate::reference::{FieldType, Reference};
use crate::seed;
use crate::store::{ListFilter, Store, Version};

/// Entities, their links, events, the random source that edits them, and the queued racing
/// edits (kept here so that a list page picks, races and renders under one lock).
pub(crate) struct Data {
    pub store: Store,
    pub links: Links,
    pub events: EventLog,
    pub rng: ChaCha8Rng,
    pub races: RaceQueue,
}

impl Data {
    fn new(seed: u64) -> Data {
        Data {
            store: Store::default(),
            links: Links::default(),
            events: EventLog::default(),
            rng: ChaCha8Rng::seed_from_u64(seed ^ 0x005E_ED0F_ED17),
            races: RaceQueue::default(),
        }
    }

    /// Stores a version of an entity from its whole JSON. The `_embedded` lists Kommo sends only
    /// on request are taken out first: with `links_from_json`, a lead's `contacts` become its
    /// links (new and verbatim entities); otherwise its links stay as they are (edits). Company
    /// links stay in the JSON and are mirrored into the link index.
    pub(crate) fn put_value(
        &mut self,
        e: Entity,
        mut v: Value,
        now: i64,
        delay: i64,
        links_from_json: bool,
    ) -> Option<i64> {
        let mut contacts = None;
        if let Some(emb) = v.get_mut("_embedded").and_then(Value::as_object_mut) {
            for key in embeds::optional_keys(e) {
                let list = emb.remove(*key);
                if e == Entity::Leads {
                    contacts = list;
                }
            }
        }
        let ver = Version::from_value(&v, now)?;
        let id = ver.id;
        if links_from_json && e == Entity::Leads {
            let pairs = contacts
                .as_ref()
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(|c| {
                            Some((
                                c.get("id")?.as_i64()?,
                                c["is_main"].as_bool().unwrap_or(false),
                            ))
                        })
                        .collect()
                })
                .unwrap_or_default();
            self.links.set_lead_contacts(id, pairs);
        }
        self.links
            .set_companies(e, id, embedded_ids(&v, "companies"));
        self.store.put(e, ver, now, delay);
        Some(id)
    }

    /// The JSON of a version with the optional lists `with` asks for.
    pub(crate) fn render(&self, e: Entity, v: &Version, with: With, base: &str) -> Arc<str> {
        let store = &self.store;
        embeds::render(v, e, with, &self.links, |k, id| store.contains(k, id), base)
    }

    /// Someone of the account, for who did a change (the robot included, as for deletions).
    pub(crate) fn someone(&mut self, r: &Reference) -> i64 {
        if r.users.is_empty() {
            return 0;
        }
        r.users[self.rng.gen_range(0..r.users.len())].id
    }

    /// Gives a live entity a new `updated_at` (and `updated_by`) without changing its content.
    pub(crate) fn touch(&mut self, e: Entity, id: i64, by: i64, now: i64, delay: i64) {
        let Some(cur) = self.store.newest(e, id) else {
            return;
        };
        let mut v = cur.value();
        v["updated_at"] = json!(now);
        v["updated_by"] = json!(by);
        self.put_value(e, v, now, delay, false);
    }

    /// Edits one live entity at `now` (content, `updated_at`, events); false when not live.
    pub(crate) fn edit_one(
        &mut self,
        ctx: Ctx,
        entity: Entity,
        id: i64,
        now: i64,
        delay: i64,
    ) -> bool {
        let Some(cur) = self.store.newest(entity, id) else {
            return false;
        };
        let mut v = cur.value();
        let changes = content::edit(entity, ctx, &mut self.rng, &mut v, now);
        let by = v["updated_by"].as_i64().unwrap_or(0);
        self.put_value(entity, v, now, delay, false)
            .expect("edited entity has an id");
        for c in changes {
            self.events.push(
                &mut self.rng,
                c.kind,
                entity,
                id,
                by,
                now,
                c.before,
                c.after,
            );
        }
        true
    }
}

/// Racing edits queued by [`Sim::queue_races`]: (list pages left, position on the page; `None`
/// = a random item).
#[derive(Debug, Default)]
pub(crate) struct RaceQueue {
    queue: VecDeque<(u32, Option<usize>)>,
}

impl RaceQueue {
    fn push(&mut self, count: u32, position: Option<usize>) {
        if count > 0 {
            self.queue.push_back((count, position));
        }
    }

    /// The race of the current page, if one is queued.
    fn take(&mut self) -> Option<Option<usize>> {
        let (left, pos) = self.queue.front_mut()?;
        let p = *pos;
        *left -= 1;
        if *left == 0 {
            self.queue.pop_front();
        }
        Some(p)
    }

    fn pending(&self) -> u64 {
        self.queue.iter().map(|(n, _)| *n as u64).sum()
    }
}

/// One rendered list page: the items' JSON in page order, and how many of them raced.
pub(crate) struct ListPage {
    pub items: Vec<Arc<str>>,
    pub raced: u64,
}

/// One simulated Kommo account.
pub struct Sim {
    pub(crate) cfg: SimConfig,
    /// "Now" of the seeded timeline: reference data is dated from it, so that it reads the
    /// same on every request.
    pub(crate) anchor: i64,
    pub(crate) base_url: String,
    /// Swapped whole when a test changes it, so readers take a cheap snapshot and never hold
    /// the lock while they work (and never alongside `data`).
    reference: RwLock<Arc<Reference>>,
    pub(crate) clock: SimClock,
    pub(crate) data: Mutex<Data>,
    pub(crate) limiter: Mutex<Limiter>,
    pub(crate) counters: Mutex<CounterState>,
    pub(crate) faults: Mutex<FaultQueue>,
    pub(crate) oauth: Mutex<OAuth>,
    ims_mode: Mutex<ImsMode>,
    tie_order: Mutex<TieOrder>,
    list_rules: Mutex<ListRules>,
    /// Probability that a list page with items races one of them.
    race_rate: Mutex<f64>,
    visibility_delay: AtomicI64,
    latency_nanos: AtomicU64,
    restore_bumps: AtomicBool,
    link_bumps: AtomicBool,
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
        let reference = Arc::new(Reference::new(cfg.account_id));
        let anchor = cfg.seed_now.unwrap_or_else(|| clock.now());
        let base = base_url.trim_end_matches('/').to_string();
        let now = clock.now();
        let delay = cfg.visibility_delay_secs;
        let mut data = Data::new(cfg.seed);
        data.events = seed::generate(
            Ctx {
                reference: &reference,
                base: &base,
            },
            cfg.seed,
            [cfg.leads, cfg.contacts, cfg.companies, cfg.tasks],
            anchor,
            cfg.history_days,
            cfg.import_crowd,
            |e, v| {
                data.put_value(e, v, now, delay, true)
                    .expect("seeded entity has an id");
            },
        );
        let (tx, _) = tokio::sync::watch::channel(false);
        Arc::new(Sim {
            anchor,
            data: Mutex::new(data),
            limiter: Mutex::new(Limiter::default()),
            counters: Mutex::new(CounterState::default()),
            faults: Mutex::new(FaultQueue::default()),
            oauth: Mutex::new(OAuth::default()),
            ims_mode: Mutex::new(cfg.ims_mode),
            tie_order: Mutex::new(cfg.tie_order),
            list_rules: Mutex::new(ListRules {
                bounds: cfg.bounds,
                ignored: cfg.ignored.clone(),
                default_order: cfg.default_order,
                max_page_size: cfg.max_page_size.filter(|&n| n > 0),
            }),
            race_rate: Mutex::new(clamp_rate(cfg.race_rate)),
            visibility_delay: AtomicI64::new(cfg.visibility_delay_secs),
            latency_nanos: AtomicU64::new(cfg.latency.as_nanos() as u64),
            restore_bumps: AtomicBool::new(cfg.restore_bumps_updated_at),
            link_bumps: AtomicBool::new(cfg.link_bumps_updated_at),
            control_mutator: tokio::sync::Mutex::new(None),
            shutdown: tx,
            base_url: base,
            reference: RwLock::new(reference),
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

    /// Newest version of every live entity, sorted by id, as lists serialize it once visible:
    /// leads with their `_embedded.contacts` (as `with=contacts` lists them), contacts and
    /// companies without the optional `leads` / `contacts` (as lists without `with` do). That
    /// is the shape dumps always had; [`Sim::dump_with`] chooses the embeds.
    pub fn dump(&self, entity: Entity) -> Vec<Value> {
        let with = match entity {
            Entity::Leads => With::from_list("contacts"),
            _ => With::NONE,
        };
        self.dump_with(entity, with)
    }

    /// Like [`Sim::dump`], as a list with `with` serializes it (e.g. `With::from_list("contacts")`
    /// adds each lead's `_embedded.contacts`).
    pub fn dump_with(&self, entity: Entity, with: With) -> Vec<Value> {
        let d = lock(&self.data);
        d.store
            .newest_all(entity)
            .map(|v| {
                serde_json::from_str(&d.render(entity, v, with, &self.base_url))
                    .expect("rendered JSON parses")
            })
            .collect()
    }

    /// Every event so far, in the order they were logged.
    pub fn events(&self) -> Vec<Event> {
        lock(&self.data).events.all().to_vec()
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

    /// Drops every queued fault and the fault mix.
    pub fn clear_faults(&self) {
        lock(&self.faults).clear();
    }

    /// From now on, each /api request that passes ban, rate and auth checks while no queued
    /// fault waits gets a fault of `mix.kinds` with probability `mix.rate`, drawn from
    /// `mix.seed` afresh (`None` stops the mix). Refuses a rate outside 0..=1 or no kinds.
    pub fn set_fault_mix(&self, mix: Option<FaultMix>) -> Result<(), FaultMixError> {
        lock(&self.faults).set_mix(mix)
    }

    /// The fault mix in force.
    pub fn fault_mix(&self) -> Option<FaultMix> {
        lock(&self.faults).mix().cloned()
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

    /// Whether `filter[...][from|to]` include their bound from now on.
    pub fn set_bounds(&self, b: Bounds) {
        lock(&self.list_rules).bounds = b;
    }

    /// Current bound inclusiveness.
    pub fn bounds(&self) -> Bounds {
        lock(&self.list_rules).bounds
    }

    /// List parameters dropped without an error from now on (replaces the previous set).
    pub fn set_ignored(&self, ignored: Vec<IgnoredParam>) {
        lock(&self.list_rules).ignored = ignored;
    }

    /// Currently ignored list parameters.
    pub fn ignored(&self) -> Vec<IgnoredParam> {
        lock(&self.list_rules).ignored.clone()
    }

    /// What `GET /api/v4/account` reports as `is_api_filter_enabled`: false when every
    /// `filter[...]` is ignored on every list.
    pub fn api_filter_enabled(&self) -> bool {
        !lock(&self.list_rules).filters_off_everywhere()
    }

    /// Order of lists without an honoured `order[...]` from now on.
    pub fn set_default_order(&self, o: DefaultOrder) {
        lock(&self.list_rules).default_order = o;
    }

    /// Current default order.
    pub fn default_order(&self) -> DefaultOrder {
        lock(&self.list_rules).default_order
    }

    /// Silent cap on entity list pages from now on (`None` or `Some(0)` = no cap).
    pub fn set_max_page_size(&self, cap: Option<usize>) {
        lock(&self.list_rules).max_page_size = cap.filter(|&n| n > 0);
    }

    /// Current page-size cap.
    pub fn max_page_size(&self) -> Option<usize> {
        lock(&self.list_rules).max_page_size
    }

    /// The list rules in force (one consistent copy for a request).
    pub(crate) fn list_rules(&self) -> ListRules {
        lock(&self.list_rules).clone()
    }

    /// Probability, per entity list page with items, that one uniformly chosen item of the page
    /// is edited after the page was selected and before it is rendered (clamped to 0..=1).
    pub fn set_race_rate(&self, rate: f64) {
        *lock(&self.race_rate) = clamp_rate(rate);
    }

    /// Current race rate.
    pub fn race_rate(&self) -> f64 {
        *lock(&self.race_rate)
    }

    /// Makes the next `count` entity list pages that have items each race exactly one item: at
    /// `position` on the page (clamped to the page's last item), or a random one if `None`.
    /// Queued races come before (and instead of) the random `race_rate` draw.
    pub fn queue_races(&self, count: u32, position: Option<usize>) {
        lock(&self.data).races.push(count, position);
    }

    /// Queued races not yet spent.
    pub fn races_pending(&self) -> u64 {
        lock(&self.data).races.pending()
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

    pub(crate) fn ctx<'a>(&'a self, reference: &'a Reference) -> Ctx<'a> {
        Ctx {
            reference,
            base: &self.base_url,
        }
    }

    /// Inserts or replaces an entity verbatim; `updated_at` (and visibility) come from the value.
    /// The `_embedded` lists Kommo returns only on request are the exception: a lead's
    /// `contacts` become its links (none if absent), and contacts' and companies' `leads` /
    /// `contacts` are dropped (they follow from the leads' links).
    ///
    /// # Panics
    /// When the value has no integer `id`.
    pub fn put_raw(&self, entity: Entity, value: Value) {
        let now = self.now();
        let delay = self.visibility_delay();
        lock(&self.data)
            .put_value(entity, value, now, delay, true)
            .expect("put_raw needs an integer \"id\"");
    }

    /// Creates `n` entities at sim now; returns their ids (ascending).
    pub fn create(&self, entity: Entity, n: usize) -> Vec<i64> {
        let now = self.now();
        let delay = self.visibility_delay();
        let r = self.reference();
        let ctx = self.ctx(&r);
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
                d.events.lead_added_value()
            } else {
                json!([])
            };
            let by = v["created_by"].as_i64().unwrap_or(0);
            d.put_value(entity, v, now, delay, true)
                .expect("generated entity has an id");
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
        let r = self.reference();
        let ctx = self.ctx(&r);
        let mut d = lock(&self.data);
        for &id in ids {
            d.edit_one(ctx, entity, id, now, delay);
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
    /// `*_deleted` event with empty value arrays. Their links are kept (hidden while they are
    /// gone), so a restore brings them back.
    pub fn delete(&self, entity: Entity, ids: &[i64]) {
        let now = self.now();
        let r = self.reference();
        let mut guard = lock(&self.data);
        let d = &mut *guard;
        for &id in ids {
            if d.store.delete(entity, id, now).is_some() {
                let by = d.someone(&r);
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

    /// The most crowded `updated_at` second among live entities of a kind (newest versions), and
    /// how many share it; `None` when there are none. Ties go to the earliest second.
    pub fn crowded_second(&self, entity: Entity) -> Option<(i64, usize)> {
        lock(&self.data).store.crowded_second(entity)
    }

    /// The most crowded second and the ids on it, for the mutator's `Crowd` focus.
    pub(crate) fn crowd(&self, entity: Entity) -> Option<(i64, Vec<i64>)> {
        let d = lock(&self.data);
        let (second, _) = d.store.crowded_second(entity)?;
        Some((second, d.store.ids_updated_at(entity, second)))
    }

    /// `updated_at` of a live entity's newest version.
    pub(crate) fn updated_at_of(&self, entity: Entity, id: i64) -> Option<i64> {
        lock(&self.data)
            .store
            .newest(entity, id)
            .map(|v| v.updated_at)
    }

    /// Selects one list page and renders it, racing an item if a queued race or the race rate
    /// says so. Selection, edit and rendering share one lock of `data`, so no other mutation
    /// can slip between them.
    pub(crate) fn list_page(
        &self,
        entity: Entity,
        f: &ListFilter,
        with: With,
        offset: usize,
        limit: usize,
    ) -> ListPage {
        let now = self.now();
        let delay = self.visibility_delay();
        let tie = self.tie_order();
        let rate = self.race_rate();
        let r = self.reference();
        let ctx = self.ctx(&r);
        let base = self.base_url.as_str();
        let mut guard = lock(&self.data);
        let d = &mut *guard;
        let mut rng = rand::thread_rng();
        let page = d
            .store
            .list_versions(entity, f, now, delay, tie, &mut rng, offset, limit);
        let mut items: Vec<Arc<str>> = page
            .iter()
            .map(|v| d.render(entity, v, with, base))
            .collect();
        if page.is_empty() {
            return ListPage { items, raced: 0 };
        }
        let last = page.len() - 1;
        let pos = match d.races.take() {
            Some(Some(p)) => Some(p.min(last)),
            Some(None) => Some(d.rng.gen_range(0..=last)),
            None if rate > 0.0 && d.rng.gen_bool(rate) => Some(d.rng.gen_range(0..=last)),
            None => None,
        };
        let mut raced = 0;
        if let Some(pos) = pos {
            let id = page[pos].id;
            if d.edit_one(ctx, entity, id, now, delay) {
                if let Some(v) = d.store.newest(entity, id) {
                    items[pos] = d.render(entity, v, with, base);
                    raced = 1;
                }
            }
        }
        ListPage { items, raced }
    }

    /// `GET /api/v4/{entity}/{id}`: the newest version of a live entity (visible or not, as
    /// before), with the lists `with` asks for.
    pub(crate) fn one(&self, entity: Entity, id: i64, with: With) -> Option<Arc<str>> {
        let d = lock(&self.data);
        let v = d.store.newest(entity, id)?;
        Some(d.render(entity, v, with, &self.base_url))
    }

    /// Starts a background task that creates, edits and deletes entities.
    pub fn start_mutator(self: &Arc<Self>, cfg: MutatorConfig) -> MutatorHandle {
        crate::mutator::start(self.clone(), cfg)
    }

    /// Number of events in the log.
    pub fn event_count(&self) -> usize {
        lock(&self.data).events.len()
    }

    /// The account's reference data as it is now (a snapshot: later changes do not show in it).
    pub fn reference(&self) -> Arc<Reference> {
        self.reference
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Changes the reference data: on a copy, swapped in whole, so a request in flight keeps a
    /// consistent snapshot.
    fn change_reference<T>(&self, f: impl FnOnce(&mut Reference) -> T) -> T {
        let mut guard = self.reference.write().unwrap_or_else(|e| e.into_inner());
        f(Arc::make_mut(&mut guard))
    }

    /// Removes a user from `/api/v4/users` (entities keep its id; it takes no new work). False
    /// when unknown or the account's last user.
    pub fn remove_user(&self, id: i64) -> bool {
        self.change_reference(|r| r.remove_user(id))
    }

    /// Renames a pipeline in `/api/v4/leads/pipelines`; false when unknown.
    pub fn rename_pipeline(&self, id: i64, name: &str) -> bool {
        self.change_reference(|r| r.rename_pipeline(id, name))
    }

    /// Removes a stage from a pipeline (leads on it keep its id); false when unknown, and for
    /// 142 / 143, which every pipeline keeps.
    pub fn remove_status(&self, pipeline_id: i64, status_id: i64) -> bool {
        self.change_reference(|r| r.remove_status(pipeline_id, status_id))
    }

    /// Adds a custom field definition to `/api/v4/{entity}/custom_fields` and returns its id
    /// (`None` for tasks, which have none). No entity gets a value for it.
    pub fn add_custom_field(&self, entity: Entity, name: &str, ftype: FieldType) -> Option<i64> {
        self.change_reference(|r| r.add_custom_field(entity, name, ftype))
    }

    /// Whether a restore sets the entity's `updated_at` to now from now on.
    pub fn set_restore_bumps_updated_at(&self, bump: bool) {
        self.restore_bumps.store(bump, Ordering::SeqCst);
    }

    /// Whether a restore sets the entity's `updated_at` to now.
    pub fn restore_bumps_updated_at(&self) -> bool {
        self.restore_bumps.load(Ordering::SeqCst)
    }

    /// Whether linking or unlinking a lead's contact sets the lead's `updated_at` to now from
    /// now on.
    pub fn set_link_bumps_updated_at(&self, bump: bool) {
        self.link_bumps.store(bump, Ordering::SeqCst);
    }

    /// Whether linking or unlinking a lead's contact sets the lead's `updated_at` to now.
    pub fn link_bumps_updated_at(&self) -> bool {
        self.link_bumps.load(Ordering::SeqCst)
    }
}

/// A probability: NaN and negatives become 0, anything above 1 becomes 1.
fn clamp_rate(r: f64) -> f64 {
    if r.is_nan() {
        0.0
    } else {
        r.clamp(0.0, 1.0)
    }
}
