//! Linking and unlinking a lead's contacts, and the link truth tests compare a client with.
//!
//! Each change logs `entity_linked` / `entity_unlinked` on the lead, naming the contact. Whether
//! it also moves the lead's `updated_at` is unknown, so it is a switch
//! ([`crate::SimConfig::link_bumps_updated_at`], off by default): when off, a client that only
//! follows `updated_at` never sees the change, though lists with `with=contacts` show it.

use rand::Rng;
use serde_json::json;

use crate::entity::Entity;
use crate::events::link_value;
use crate::links::LinkSnapshot;
use crate::sim::{lock, Sim};

impl Sim {
    /// Links live contact `contact_id` to live lead `lead_id` (main if the lead has no main
    /// contact); false if either is not live or they are linked already.
    pub fn link(&self, lead_id: i64, contact_id: i64) -> bool {
        self.change_link(lead_id, contact_id, true)
    }

    /// Unlinks a contact from a live lead (the next contact becomes main if it was); false if
    /// they were not linked.
    pub fn unlink(&self, lead_id: i64, contact_id: i64) -> bool {
        self.change_link(lead_id, contact_id, false)
    }

    fn change_link(&self, lead: i64, contact: i64, link: bool) -> bool {
        let now = self.now();
        let delay = self.visibility_delay();
        let bump = self.link_bumps_updated_at();
        let r = self.reference();
        let mut guard = lock(&self.data);
        let d = &mut *guard;
        if !d.store.contains(Entity::Leads, lead) {
            return false;
        }
        let changed = if link {
            d.store.contains(Entity::Contacts, contact) && d.links.link(lead, contact, false)
        } else {
            d.links.unlink(lead, contact).is_some()
        };
        if !changed {
            return false;
        }
        let by = d.someone(&r);
        let (kind, before, after) = if link {
            (
                "entity_linked",
                json!([]),
                link_value(Entity::Contacts, contact),
            )
        } else {
            (
                "entity_unlinked",
                link_value(Entity::Contacts, contact),
                json!([]),
            )
        };
        d.events.push(
            &mut d.rng,
            kind,
            Entity::Leads,
            lead,
            by,
            now,
            before,
            after,
        );
        if bump {
            d.touch(Entity::Leads, lead, by, now, delay);
        }
        true
    }

    /// Every link between live entities, as the API shows them now.
    pub fn links(&self) -> LinkSnapshot {
        let d = lock(&self.data);
        d.links.snapshot(|e, id| d.store.contains(e, id))
    }

    /// (lead id, contact id, is_main) of live leads and live contacts: what lists with
    /// `with=contacts` show.
    pub fn lead_contacts(&self) -> Vec<(i64, i64, bool)> {
        self.links()
            .lead_contacts
            .into_iter()
            .map(|l| (l.lead_id, l.contact_id, l.is_main))
            .collect()
    }

    /// A random (live lead, one of its live contacts), for the mutator's unlinks.
    pub(crate) fn random_lead_contact(&self, rng: &mut impl Rng) -> Option<(i64, i64)> {
        let d = lock(&self.data);
        for _ in 0..8 {
            let lead = d.store.random_live_id(Entity::Leads, rng)?;
            let contacts: Vec<i64> = d
                .links
                .contacts_of(lead)
                .iter()
                .map(|(c, _)| *c)
                .filter(|&c| d.store.contains(Entity::Contacts, c))
                .collect();
            if !contacts.is_empty() {
                return Some((lead, contacts[rng.gen_range(0..contacts.len())]));
            }
        }
        None
    }
}
