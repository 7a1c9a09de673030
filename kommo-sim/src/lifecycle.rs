//! Entities leaving and coming back: restores from the trash and merges.
//!
//! Lists never show deleted or merged-away entities, so a client learns about both only from
//! the event log. A restore puts the entity back in the lists (with its old `updated_at`, or a
//! new one: [`crate::SimConfig::restore_bumps_updated_at`]) and logs `*_restored`. A merge
//! folds one contact or company into another: the merged-away one is gone for good (it cannot
//! be restored), logs `entity_merged` naming only itself, and the kept one gets a normal edit.
//! The merged-away entity's links move to the kept one (`entity_linked` on each lead or contact
//! that gains a link).

use serde_json::json;

use crate::entity::Entity;
use crate::events::link_value;
use crate::reference::Reference;
use crate::sim::{lock, Data, Sim};

/// Who changes links, when, how soon lists see it, whether the entity's `updated_at` moves,
/// and the base of the `_links` written.
#[derive(Clone, Copy)]
pub(crate) struct Stamp<'a> {
    pub by: i64,
    pub now: i64,
    pub delay: i64,
    pub bump: bool,
    pub base: &'a str,
}

/// Kinds Kommo can restore from the trash (`lead_restored`, `contact_restored`,
/// `company_restored`; there is no `task_restored`).
pub fn restorable(e: Entity) -> bool {
    e != Entity::Tasks
}

/// Kinds the simulator merges.
pub fn mergeable(e: Entity) -> bool {
    matches!(e, Entity::Contacts | Entity::Companies)
}

impl Data {
    /// Brings a deleted entity back; false when it is not in the trash.
    pub(crate) fn restore_one(
        &mut self,
        r: &Reference,
        e: Entity,
        id: i64,
        now: i64,
        delay: i64,
        bump: bool,
    ) -> bool {
        if !restorable(e) {
            return false;
        }
        let Some(last) = self.store.undelete(e, id) else {
            return false;
        };
        let by = self.someone(r);
        let mut v = last.value();
        if bump {
            v["updated_at"] = json!(now);
            v["updated_by"] = json!(by);
        }
        // Links were kept while it was gone; its own JSON has its company links.
        self.put_value(e, v, now, delay, false);
        let kind = format!("{}_restored", e.singular());
        self.events
            .push(&mut self.rng, &kind, e, id, by, now, json!([]), json!([]));
        true
    }

    /// Replaces company `from` by `into` in the `_embedded.companies` of a lead or contact,
    /// logs `entity_linked` for `into` on it, and bumps its `updated_at` if `bump`.
    fn relink_company(&mut self, kind: Entity, id: i64, (from, into): (i64, i64), s: Stamp) {
        let Stamp {
            by,
            now,
            delay,
            bump,
            base,
        } = s;
        let Some(cur) = self.store.newest(kind, id) else {
            return;
        };
        let mut v = cur.value();
        let Some(list) = v["_embedded"]["companies"].as_array_mut() else {
            return;
        };
        let had_into = list.iter().any(|c| c["id"] == json!(into));
        list.retain(|c| c["id"] != json!(from));
        if !had_into {
            list.push(json!({"id": into, "_links": {"self": {"href": format!("{base}/api/v4/companies/{into}")}}}));
        }
        if bump {
            v["updated_at"] = json!(now);
            v["updated_by"] = json!(by);
        }
        self.put_value(kind, v, now, delay, false);
        if !had_into {
            let after = link_value(Entity::Companies, into);
            self.events.push(
                &mut self.rng,
                "entity_linked",
                kind,
                id,
                by,
                now,
                json!([]),
                after,
            );
        }
    }
}

impl Sim {
    /// Restores deleted leads, contacts or companies (ids not in the trash are skipped):
    /// they reappear in lists and get a `*_restored` event. Returns the ids restored.
    pub fn restore(&self, entity: Entity, ids: &[i64]) -> Vec<i64> {
        let now = self.now();
        let delay = self.visibility_delay();
        let bump = self.restore_bumps_updated_at();
        let r = self.reference();
        let mut d = lock(&self.data);
        ids.iter()
            .copied()
            .filter(|&id| d.restore_one(&r, entity, id, now, delay, bump))
            .collect()
    }

    /// Merges contact or company `from` into `into` (both live, distinct): `from` leaves the
    /// lists for good with an `entity_merged` event, its links move to `into`, and `into` gets a
    /// normal edit at now. False (and nothing done) otherwise.
    pub fn merge(&self, entity: Entity, from: i64, into: i64) -> bool {
        if !mergeable(entity) || from == into {
            return false;
        }
        let now = self.now();
        let delay = self.visibility_delay();
        let bump = self.link_bumps_updated_at();
        let r = self.reference();
        let ctx = self.ctx(&r);
        let mut guard = lock(&self.data);
        let d = &mut *guard;
        if !d.store.contains(entity, from) || !d.store.contains(entity, into) {
            return false;
        }
        let by = d.someone(&r);
        d.store.merge_away(entity, from, into, now);
        d.events.push(
            &mut d.rng,
            "entity_merged",
            entity,
            from,
            by,
            now,
            json!([]),
            json!([]),
        );
        match entity {
            Entity::Contacts => {
                let leads: Vec<i64> = d.links.leads_of_contact(from).collect();
                for lead in leads {
                    let was_main = d.links.unlink(lead, from) == Some(true);
                    if d.links.link(lead, into, was_main) {
                        let after = link_value(Entity::Contacts, into);
                        d.events.push(
                            &mut d.rng,
                            "entity_linked",
                            Entity::Leads,
                            lead,
                            by,
                            now,
                            json!([]),
                            after,
                        );
                        if bump {
                            d.touch(Entity::Leads, lead, by, now, delay);
                        }
                    }
                }
                d.links.set_companies(Entity::Contacts, from, vec![]);
            }
            Entity::Companies => {
                for kind in [Entity::Leads, Entity::Contacts] {
                    let stamp = Stamp {
                        by,
                        now,
                        delay,
                        bump,
                        base: &self.base_url,
                    };
                    for id in d.links.members_of_company(kind, from) {
                        d.relink_company(kind, id, (from, into), stamp);
                    }
                }
            }
            _ => unreachable!("checked by mergeable"),
        }
        d.edit_one(ctx, entity, into, now, delay);
        true
    }

    /// Ids merged away so far, ascending (not in [`Sim::deleted_ids`]: they cannot be restored).
    pub fn merged_ids(&self, entity: Entity) -> Vec<i64> {
        self.merges(entity).into_iter().map(|(id, _)| id).collect()
    }

    /// (merged-away id, kept id) of every merge so far, by merged-away id.
    pub fn merges(&self, entity: Entity) -> Vec<(i64, i64)> {
        lock(&self.data).store.merged(entity)
    }

    /// Ids ever restored, ascending (a restored id may have been deleted again since).
    pub fn restored_ids(&self, entity: Entity) -> Vec<i64> {
        lock(&self.data).store.restored_ids(entity)
    }

    /// A random id in the trash, for the mutator.
    pub(crate) fn random_deleted_id(
        &self,
        entity: Entity,
        rng: &mut impl rand::Rng,
    ) -> Option<i64> {
        lock(&self.data).store.random_deleted_id(entity, rng)
    }
}
