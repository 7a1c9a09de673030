//! Links between entities: a lead's contacts (one of them main), and the company a lead or a
//! contact belongs to, with the reverse lookups that `with=leads` / `with=contacts` need.
//!
//! A lead's contacts live here, not in its stored JSON: Kommo returns them only when asked
//! (`with=contacts`), and whether linking bumps the lead's `updated_at` is unknown
//! ([`crate::SimConfig::link_bumps_updated_at`]), so they cannot be part of a version. Company
//! links stay in the JSON (`_embedded.companies` is always returned) and are mirrored here from
//! every stored version, for the reverse lookups.
//!
//! Links of deleted entities are kept, so a restore brings them back; what the API shows skips
//! ends that are not live (see [`crate::embeds`]). Links are not subject to the visibility delay.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;
use serde_json::Value;

use crate::entity::Entity;

/// One lead–contact link.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct LeadContact {
    pub lead_id: i64,
    pub contact_id: i64,
    /// The lead's main contact (Kommo's `is_main`).
    pub is_main: bool,
}

/// Every link between live entities, as the API shows them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct LinkSnapshot {
    /// Live leads' live contacts (what `with=contacts` shows), by lead then link order.
    pub lead_contacts: Vec<LeadContact>,
    /// (lead id, company id) of live leads, from their `_embedded.companies`.
    pub lead_companies: Vec<(i64, i64)>,
    /// (contact id, company id) of live contacts, from their `_embedded.companies`.
    pub contact_companies: Vec<(i64, i64)>,
}

/// The account's link index.
#[derive(Debug, Default)]
pub(crate) struct Links {
    /// lead → its contacts in link order, with `is_main`.
    lead_contacts: BTreeMap<i64, Vec<(i64, bool)>>,
    contact_leads: BTreeMap<i64, BTreeSet<i64>>,
    /// [lead or contact] → companies, as the entity's stored JSON lists them.
    companies: [BTreeMap<i64, Vec<i64>>; 2],
    /// company → [leads, contacts] that list it.
    company_members: [BTreeMap<i64, BTreeSet<i64>>; 2],
}

/// Slot of a kind that carries company links (leads, contacts).
fn member_slot(e: Entity) -> Option<usize> {
    match e {
        Entity::Leads => Some(0),
        Entity::Contacts => Some(1),
        _ => None,
    }
}

/// Ids in an `_embedded` list (`[{ "id": N, ...}, ...]`); anything else is no ids.
pub(crate) fn embedded_ids(v: &Value, key: &str) -> Vec<i64> {
    v.get("_embedded")
        .and_then(|e| e.get(key))
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(|x| x.get("id")?.as_i64()).collect())
        .unwrap_or_default()
}

impl Links {
    /// The contacts of a lead, in link order, with `is_main`.
    pub fn contacts_of(&self, lead: i64) -> &[(i64, bool)] {
        self.lead_contacts.get(&lead).map_or(&[], Vec::as_slice)
    }

    /// Leads linked to a contact, ascending.
    pub fn leads_of_contact(&self, contact: i64) -> impl Iterator<Item = i64> + '_ {
        self.contact_leads
            .get(&contact)
            .into_iter()
            .flatten()
            .copied()
    }

    /// Leads (`Entity::Leads`) or contacts (`Entity::Contacts`) that list a company, ascending.
    pub fn members_of_company(&self, kind: Entity, company: i64) -> Vec<i64> {
        member_slot(kind)
            .and_then(|s| self.company_members[s].get(&company))
            .map(|m| m.iter().copied().collect())
            .unwrap_or_default()
    }

    /// Replaces a lead's contacts (`[(contact, is_main)]`).
    pub fn set_lead_contacts(&mut self, lead: i64, contacts: Vec<(i64, bool)>) {
        for (c, _) in self.lead_contacts.remove(&lead).unwrap_or_default() {
            self.forget_contact_lead(c, lead);
        }
        if contacts.is_empty() {
            return;
        }
        for &(c, _) in &contacts {
            self.contact_leads.entry(c).or_default().insert(lead);
        }
        self.lead_contacts.insert(lead, contacts);
    }

    fn forget_contact_lead(&mut self, contact: i64, lead: i64) {
        if let Some(s) = self.contact_leads.get_mut(&contact) {
            s.remove(&lead);
            if s.is_empty() {
                self.contact_leads.remove(&contact);
            }
        }
    }

    /// Links a contact to a lead; it becomes main if `main` is asked or the lead has no main
    /// contact yet. False if already linked.
    pub fn link(&mut self, lead: i64, contact: i64, main: bool) -> bool {
        let list = self.lead_contacts.entry(lead).or_default();
        if list.iter().any(|(c, _)| *c == contact) {
            return false;
        }
        let main = main || !list.iter().any(|(_, m)| *m);
        if main {
            list.iter_mut().for_each(|(_, m)| *m = false);
        }
        list.push((contact, main));
        self.contact_leads.entry(contact).or_default().insert(lead);
        true
    }

    /// Unlinks a contact from a lead; if it was the main one, the next contact becomes main.
    /// Returns whether it was the main contact, `None` if it was not linked.
    pub fn unlink(&mut self, lead: i64, contact: i64) -> Option<bool> {
        let list = self.lead_contacts.get_mut(&lead)?;
        let pos = list.iter().position(|(c, _)| *c == contact)?;
        let (_, was_main) = list.remove(pos);
        if was_main {
            if let Some(first) = list.first_mut() {
                first.1 = true;
            }
        }
        if list.is_empty() {
            self.lead_contacts.remove(&lead);
        }
        self.forget_contact_lead(contact, lead);
        Some(was_main)
    }

    /// Records the companies an entity's stored JSON lists (leads and contacts; others ignored).
    pub fn set_companies(&mut self, e: Entity, id: i64, companies: Vec<i64>) {
        let Some(s) = member_slot(e) else { return };
        for c in self.companies[s].remove(&id).unwrap_or_default() {
            if let Some(m) = self.company_members[s].get_mut(&c) {
                m.remove(&id);
                if m.is_empty() {
                    self.company_members[s].remove(&c);
                }
            }
        }
        if companies.is_empty() {
            return;
        }
        for &c in &companies {
            self.company_members[s].entry(c).or_default().insert(id);
        }
        self.companies[s].insert(id, companies);
    }

    /// The links whose both ends pass `live`.
    pub fn snapshot(&self, live: impl Fn(Entity, i64) -> bool) -> LinkSnapshot {
        let mut out = LinkSnapshot::default();
        for (&lead, contacts) in &self.lead_contacts {
            if !live(Entity::Leads, lead) {
                continue;
            }
            for &(contact_id, is_main) in contacts {
                if live(Entity::Contacts, contact_id) {
                    out.lead_contacts.push(LeadContact {
                        lead_id: lead,
                        contact_id,
                        is_main,
                    });
                }
            }
        }
        // Company links are shown as the entity's JSON has them, whether the company is live.
        for (slot, e) in [(0, Entity::Leads), (1, Entity::Contacts)] {
            let dest = if slot == 0 {
                &mut out.lead_companies
            } else {
                &mut out.contact_companies
            };
            for (&id, companies) in &self.companies[slot] {
                if live(e, id) {
                    dest.extend(companies.iter().map(|&c| (id, c)));
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_contact_is_main_and_an_unlinked_main_passes_it_on() {
        let mut l = Links::default();
        assert!(l.link(1, 10, false));
        assert!(l.link(1, 11, false));
        assert!(!l.link(1, 11, false), "already linked");
        assert_eq!(l.contacts_of(1), &[(10, true), (11, false)]);
        assert_eq!(l.unlink(1, 10), Some(true));
        assert_eq!(l.contacts_of(1), &[(11, true)]);
        assert_eq!(l.unlink(1, 10), None);
        assert_eq!(l.leads_of_contact(11).collect::<Vec<_>>(), vec![1]);
        assert_eq!(l.leads_of_contact(10).count(), 0);
        assert!(l.link(1, 12, true));
        assert_eq!(l.contacts_of(1), &[(11, false), (12, true)]);
    }

    #[test]
    fn company_members_follow_the_latest_json() {
        let mut l = Links::default();
        l.set_companies(Entity::Leads, 1, vec![100]);
        l.set_companies(Entity::Leads, 2, vec![100]);
        l.set_companies(Entity::Contacts, 5, vec![100]);
        assert_eq!(l.members_of_company(Entity::Leads, 100), vec![1, 2]);
        l.set_companies(Entity::Leads, 1, vec![200]);
        assert_eq!(l.members_of_company(Entity::Leads, 100), vec![2]);
        assert_eq!(l.members_of_company(Entity::Leads, 200), vec![1]);
        assert_eq!(l.members_of_company(Entity::Contacts, 100), vec![5]);
        let snap = l.snapshot(|e, id| !(e == Entity::Leads && id == 2));
        assert_eq!(snap.lead_companies, vec![(1, 200)]);
        assert_eq!(snap.contact_companies, vec![(5, 100)]);
    }
}
