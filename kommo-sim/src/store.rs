//! In-memory entity tables with version chains and delayed visibility.
//!
//! Each entity keeps the versions that lists may still show: the newest version already visible
//! (its `updated_at + delay <= now`) and every newer one waiting to become visible. That is all
//! the eventual consistency model needs: a list shows the newest visible version, `dump` shows the
//! newest version. Versions are kept pre-serialized (`Arc<str>`), so a page is built by joining
//! strings and list requests stay cheap even with hundreds of thousands of entities.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use rand::Rng;
use serde_json::Value;

use crate::config::TieOrder;
use crate::embeds::EmbedSlot;
use crate::entity::Entity;

/// One stored version of an entity, with its sort and filter keys pulled out of the JSON.
#[derive(Clone, Debug)]
pub struct Version {
    pub id: i64,
    pub created_at: i64,
    pub updated_at: i64,
    pub complete_till: Option<i64>,
    /// The entity exactly as a list without `with` serializes it.
    pub raw: Arc<str>,
    /// Where `with=` lists are spliced into `raw`.
    pub(crate) embed: Option<EmbedSlot>,
}

impl Version {
    /// Builds a version from an entity's JSON; `None` when it has no integer `id`.
    pub fn from_value(v: &Value, now: i64) -> Option<Version> {
        let id = v.get("id")?.as_i64()?;
        let updated_at = v.get("updated_at").and_then(Value::as_i64).unwrap_or(now);
        let created_at = v
            .get("created_at")
            .and_then(Value::as_i64)
            .unwrap_or(updated_at);
        let complete_till = v.get("complete_till").and_then(Value::as_i64);
        let raw = serde_json::to_string(v).expect("JSON value serializes");
        let embed = EmbedSlot::find(v, &raw);
        Some(Version {
            id,
            created_at,
            updated_at,
            complete_till,
            raw: Arc::from(raw),
            embed,
        })
    }

    /// The version parsed back into JSON.
    pub fn value(&self) -> Value {
        serde_json::from_str(&self.raw).expect("stored JSON parses")
    }

    fn visible(&self, now: i64, delay: i64) -> bool {
        self.updated_at.saturating_add(delay) <= now
    }
}

/// The versions of one live entity, oldest first, never empty.
#[derive(Debug, Default)]
struct Record {
    versions: Vec<Version>,
}

impl Record {
    fn newest(&self) -> &Version {
        self.versions.last().expect("record has a version")
    }

    fn visible(&self, now: i64, delay: i64) -> Option<&Version> {
        self.versions.iter().rev().find(|v| v.visible(now, delay))
    }

    /// Drops versions older than the newest visible one: no list can show them again.
    fn prune(&mut self, now: i64, delay: i64) {
        if let Some(k) = self.versions.iter().rposition(|v| v.visible(now, delay)) {
            self.versions.drain(..k);
        }
    }
}

/// An entity that left the lists, with its last version (what a restore brings back).
#[derive(Debug)]
struct Gone {
    at: i64,
    last: Version,
}

/// One entity kind: live records, and the ids deleted, merged away and restored so far.
#[derive(Debug, Default)]
struct Table {
    records: BTreeMap<i64, Record>,
    /// Deleted (to the trash, restorable).
    deleted: BTreeMap<i64, Gone>,
    /// Merged into another entity (gone for good): id → (gone, kept id).
    merged: BTreeMap<i64, (Gone, i64)>,
    /// Ever restored.
    restored: BTreeSet<i64>,
    max_id: i64,
}

/// A sort key of list requests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SortField {
    Id,
    CreatedAt,
    UpdatedAt,
    CompleteTill,
}

impl SortField {
    fn key(self, v: &Version) -> i64 {
        match self {
            SortField::Id => v.id,
            SortField::CreatedAt => v.created_at,
            SortField::UpdatedAt => v.updated_at,
            SortField::CompleteTill => v.complete_till.unwrap_or(i64::MIN),
        }
    }
}

/// Filters and order of one list request, already validated.
#[derive(Clone, Debug, Default)]
pub struct ListFilter {
    pub ids: Option<HashSet<i64>>,
    /// Inclusive bounds on `updated_at` (If-Modified-Since is folded into `updated_from`).
    pub updated_from: Option<i64>,
    pub updated_to: Option<i64>,
    pub created_from: Option<i64>,
    pub created_to: Option<i64>,
    /// Sort keys, most significant first; `true` = descending. Empty = id ascending.
    pub order: Vec<(SortField, bool)>,
}

impl ListFilter {
    fn keeps(&self, v: &Version) -> bool {
        let in_range = |x: i64, lo: Option<i64>, hi: Option<i64>| {
            lo.is_none_or(|lo| x >= lo) && hi.is_none_or(|hi| x <= hi)
        };
        self.ids.as_ref().is_none_or(|ids| ids.contains(&v.id))
            && in_range(v.updated_at, self.updated_from, self.updated_to)
            && in_range(v.created_at, self.created_from, self.created_to)
    }
}

/// All entity tables of the account.
#[derive(Debug, Default)]
pub struct Store {
    tables: [Table; 4],
}

impl Store {
    fn table(&self, e: Entity) -> &Table {
        &self.tables[e.index()]
    }

    fn table_mut(&mut self, e: Entity) -> &mut Table {
        &mut self.tables[e.index()]
    }

    /// Stores a new version of an entity (creating it, or resurrecting a deleted id).
    ///
    /// A version older than the current newest one replaces the whole chain: it is a verbatim
    /// overwrite (`put_raw`), not an edit.
    pub fn put(&mut self, e: Entity, v: Version, now: i64, delay: i64) {
        let t = self.table_mut(e);
        t.max_id = t.max_id.max(v.id);
        t.deleted.remove(&v.id);
        t.merged.remove(&v.id);
        let rec = t.records.entry(v.id).or_default();
        if rec
            .versions
            .last()
            .is_some_and(|last| v.updated_at < last.updated_at)
        {
            rec.versions.clear();
        }
        rec.versions.push(v);
        rec.prune(now, delay);
    }

    /// Removes a live entity; returns its newest version if it existed.
    pub fn delete(&mut self, e: Entity, id: i64, now: i64) -> Option<Version> {
        let t = self.table_mut(e);
        let rec = t.records.remove(&id)?;
        let last = rec.versions.last().cloned()?;
        t.deleted.insert(
            id,
            Gone {
                at: now,
                last: last.clone(),
            },
        );
        Some(last)
    }

    /// Takes a deleted entity out of the trash: returns the last version it had (the caller
    /// stores it again, as it is or with a new `updated_at`). `None` if `id` is not deleted.
    pub fn undelete(&mut self, e: Entity, id: i64) -> Option<Version> {
        let t = self.table_mut(e);
        let gone = t.deleted.remove(&id)?;
        t.restored.insert(id);
        Some(gone.last)
    }

    /// Removes a live entity merged into `into`; returns its newest version if it existed.
    pub fn merge_away(&mut self, e: Entity, id: i64, into: i64, now: i64) -> Option<Version> {
        let t = self.table_mut(e);
        let rec = t.records.remove(&id)?;
        let last = rec.versions.last().cloned()?;
        t.merged.insert(
            id,
            (
                Gone {
                    at: now,
                    last: last.clone(),
                },
                into,
            ),
        );
        Some(last)
    }

    /// Whether an entity is live (shown by lists once visible).
    pub fn contains(&self, e: Entity, id: i64) -> bool {
        self.table(e).records.contains_key(&id)
    }

    /// Ids merged away, ascending, with the id each was merged into.
    pub fn merged(&self, e: Entity) -> Vec<(i64, i64)> {
        self.table(e)
            .merged
            .iter()
            .map(|(&id, (_, into))| (id, *into))
            .collect()
    }

    /// Sim time an entity was deleted or merged away, if it is gone.
    pub fn gone_at(&self, e: Entity, id: i64) -> Option<i64> {
        let t = self.table(e);
        t.deleted
            .get(&id)
            .or_else(|| t.merged.get(&id).map(|(g, _)| g))
            .map(|g| g.at)
    }

    /// Ids ever restored, ascending.
    pub fn restored_ids(&self, e: Entity) -> Vec<i64> {
        self.table(e).restored.iter().copied().collect()
    }

    /// A random deleted id (roughly uniform), for restores.
    pub fn random_deleted_id(&self, e: Entity, rng: &mut impl Rng) -> Option<i64> {
        let del = &self.table(e).deleted;
        let (&lo, _) = del.first_key_value()?;
        let (&hi, _) = del.last_key_value()?;
        let x = rng.gen_range(lo..=hi);
        del.range(x..).next().map(|(&id, _)| id)
    }

    /// Newest version of a live entity, visible or not.
    pub fn newest(&self, e: Entity, id: i64) -> Option<&Version> {
        self.table(e).records.get(&id).map(Record::newest)
    }

    /// Newest version of every live entity, by id.
    pub fn newest_all(&self, e: Entity) -> impl Iterator<Item = &Version> {
        self.table(e).records.values().map(Record::newest)
    }

    /// Ids of live entities, ascending.
    pub fn live_ids(&self, e: Entity) -> Vec<i64> {
        self.table(e).records.keys().copied().collect()
    }

    /// A random live id (roughly uniform; ids after gaps are a bit likelier), without copying
    /// the id list: cheap enough to call per mutation on large accounts.
    pub fn random_live_id(&self, e: Entity, rng: &mut impl Rng) -> Option<i64> {
        let recs = &self.table(e).records;
        let (&lo, _) = recs.first_key_value()?;
        let (&hi, _) = recs.last_key_value()?;
        let x = rng.gen_range(lo..=hi);
        recs.range(x..).next().map(|(&id, _)| id)
    }

    /// Number of live entities.
    pub fn len(&self, e: Entity) -> usize {
        self.table(e).records.len()
    }

    /// Deleted ids, ascending.
    pub fn deleted_ids(&self, e: Entity) -> Vec<i64> {
        self.table(e).deleted.keys().copied().collect()
    }

    /// Largest id ever stored for this kind (0 when none).
    pub fn max_id(&self, e: Entity) -> i64 {
        self.table(e).max_id
    }

    /// The most crowded `updated_at` second among the newest versions of live entities, with
    /// its size; ties go to the earliest second so that the answer is deterministic.
    pub fn crowded_second(&self, e: Entity) -> Option<(i64, usize)> {
        let mut by_second: HashMap<i64, usize> = HashMap::new();
        for v in self.newest_all(e) {
            *by_second.entry(v.updated_at).or_default() += 1;
        }
        by_second
            .into_iter()
            .max_by(|a, b| a.1.cmp(&b.1).then(b.0.cmp(&a.0)))
    }

    /// Ids of live entities whose newest version has `updated_at == second`, ascending.
    pub fn ids_updated_at(&self, e: Entity, second: i64) -> Vec<i64> {
        self.newest_all(e)
            .filter(|v| v.updated_at == second)
            .map(|v| v.id)
            .collect()
    }

    /// One page (`offset`, `limit`) of the matching visible versions, sorted as requested,
    /// ties ordered per `tie`.
    #[allow(clippy::too_many_arguments)]
    pub fn list(
        &self,
        e: Entity,
        f: &ListFilter,
        now: i64,
        delay: i64,
        tie: TieOrder,
        rng: &mut impl Rng,
        offset: usize,
        limit: usize,
    ) -> Vec<Arc<str>> {
        self.list_versions(e, f, now, delay, tie, rng, offset, limit)
            .into_iter()
            .map(|v| v.raw)
            .collect()
    }

    /// Like [`Store::list`], but the versions themselves (cheap clones: the JSON is shared), so
    /// that the caller knows which entities the page holds.
    #[allow(clippy::too_many_arguments)]
    pub fn list_versions(
        &self,
        e: Entity,
        f: &ListFilter,
        now: i64,
        delay: i64,
        tie: TieOrder,
        rng: &mut impl Rng,
        offset: usize,
        limit: usize,
    ) -> Vec<Version> {
        let visible = self
            .table(e)
            .records
            .values()
            .filter_map(|r| r.visible(now, delay))
            .filter(|v| f.keeps(v));
        let end = offset.saturating_add(limit);
        let page = |it: &mut dyn Iterator<Item = &Version>| -> Vec<Version> {
            it.skip(offset).take(limit).cloned().collect()
        };
        // Records iterate in id order and ids are unique: an id order needs no sorting.
        match f.order.first() {
            None | Some((SortField::Id, false)) => return page(&mut { visible }),
            Some((SortField::Id, true)) => {
                let all: Vec<&Version> = visible.collect();
                return page(&mut all.into_iter().rev());
            }
            _ => {}
        }
        // Each hit carries its tie-breaker: random per request, or its id.
        let mut hits: Vec<(&Version, i64)> = visible
            .map(|v| {
                let tb = match tie {
                    TieOrder::Shuffled => rng.gen(),
                    TieOrder::IdAsc => v.id,
                };
                (v, tb)
            })
            .collect();
        let cmp = |a: &(&Version, i64), b: &(&Version, i64)| {
            for &(field, desc) in &f.order {
                let c = field.key(a.0).cmp(&field.key(b.0));
                let c = if desc { c.reverse() } else { c };
                if c.is_ne() {
                    return c;
                }
            }
            a.1.cmp(&b.1)
        };
        // Only the first `end` items matter: partition, then sort that prefix.
        if end < hits.len() {
            hits.select_nth_unstable_by(end, cmp);
            hits.truncate(end);
        }
        hits.sort_unstable_by(cmp);
        page(&mut hits.into_iter().map(|(v, _)| v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ver(id: i64, updated_at: i64, name: &str) -> Version {
        Version::from_value(
            &json!({"id": id, "created_at": 1, "updated_at": updated_at, "name": name}),
            0,
        )
        .unwrap()
    }

    fn names(store: &Store, now: i64, delay: i64) -> Vec<String> {
        let mut rng = rand::thread_rng();
        store
            .list(
                Entity::Leads,
                &ListFilter::default(),
                now,
                delay,
                TieOrder::IdAsc,
                &mut rng,
                0,
                250,
            )
            .iter()
            .map(|r| {
                serde_json::from_str::<Value>(r).unwrap()["name"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect()
    }

    #[test]
    fn lists_show_newest_visible_version() {
        let mut s = Store::default();
        s.put(Entity::Leads, ver(1, 100, "a"), 100, 10);
        assert!(
            names(&s, 105, 10).is_empty(),
            "new entity hidden during delay"
        );
        assert_eq!(names(&s, 110, 10), vec!["a"]);
        s.put(Entity::Leads, ver(1, 120, "b"), 120, 10);
        assert_eq!(
            names(&s, 125, 10),
            vec!["a"],
            "old version until the new one is visible"
        );
        assert_eq!(names(&s, 130, 10), vec!["b"]);
        assert_eq!(s.newest(Entity::Leads, 1).unwrap().updated_at, 120);
        s.delete(Entity::Leads, 1, 131);
        assert!(names(&s, 200, 10).is_empty());
        assert_eq!(s.deleted_ids(Entity::Leads), vec![1]);
    }

    #[test]
    fn crowded_second_counts_newest_versions() {
        let mut s = Store::default();
        assert_eq!(s.crowded_second(Entity::Leads), None);
        for (id, up) in [(1, 50), (2, 50), (3, 70), (4, 70), (5, 90)] {
            s.put(Entity::Leads, ver(id, up, "x"), 100, 0);
        }
        assert_eq!(
            s.crowded_second(Entity::Leads),
            Some((50, 2)),
            "earliest of ties"
        );
        s.put(Entity::Leads, ver(5, 95, "y"), 100, 0);
        s.put(Entity::Leads, ver(1, 96, "y"), 100, 0);
        assert_eq!(s.crowded_second(Entity::Leads), Some((70, 2)));
        assert_eq!(s.ids_updated_at(Entity::Leads, 70), vec![3, 4]);
        s.delete(Entity::Leads, 3, 100);
        assert_eq!(s.ids_updated_at(Entity::Leads, 70), vec![4]);
    }

    #[test]
    fn older_put_replaces_chain() {
        let mut s = Store::default();
        s.put(Entity::Leads, ver(1, 100, "a"), 100, 0);
        s.put(Entity::Leads, ver(1, 50, "old"), 100, 0);
        assert_eq!(names(&s, 100, 0), vec!["old"]);
    }
}
