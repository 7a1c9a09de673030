//! `with=`: the `_embedded` lists Kommo returns only when a request asks for them.
//!
//! Leads embed `contacts` only with `with=contacts`; contacts embed `leads` only with
//! `with=leads`; companies embed `contacts` and `leads` only when asked. Tags, and a lead's or a
//! contact's companies, are always there: they stay in the stored JSON. The optional lists are
//! spliced into that JSON from the link index when asked, so a list without `with` serves the
//! stored strings as before, and one with `with` costs one string copy per item.

use std::fmt::Write as _;
use std::str::FromStr;
use std::sync::Arc;

use crate::entity::Entity;
use crate::links::Links;
use crate::store::Version;

/// The optional embeds a request asked for. Unknown `with` values are ignored, as on Kommo.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct With {
    /// `with=contacts`: a lead's contacts, a company's contacts.
    pub contacts: bool,
    /// `with=leads`: a contact's leads, a company's leads.
    pub leads: bool,
}

impl With {
    /// Nothing optional (a request without `with`).
    pub const NONE: With = With {
        contacts: false,
        leads: false,
    };
    /// Every optional embed.
    pub const ALL: With = With {
        contacts: true,
        leads: true,
    };

    /// The `with` of a query: comma lists, in one or several `with` parameters.
    pub fn parse(pairs: &[(String, String)]) -> With {
        pairs
            .iter()
            .filter(|(k, _)| k == "with")
            .fold(With::NONE, |w, (_, v)| w.union(With::from_list(v)))
    }

    /// One comma list, e.g. `contacts,leads`.
    pub fn from_list(list: &str) -> With {
        let mut w = With::NONE;
        for item in list.split(',').map(str::trim) {
            match item {
                "contacts" => w.contacts = true,
                "leads" => w.leads = true,
                _ => {}
            }
        }
        w
    }

    fn union(self, o: With) -> With {
        With {
            contacts: self.contacts || o.contacts,
            leads: self.leads || o.leads,
        }
    }

    /// What of this a kind can embed.
    pub fn for_entity(self, e: Entity) -> With {
        match e {
            Entity::Leads => With {
                contacts: self.contacts,
                leads: false,
            },
            Entity::Contacts => With {
                contacts: false,
                leads: self.leads,
            },
            Entity::Companies => self,
            Entity::Tasks => With::NONE,
        }
    }

    /// Whether nothing optional is asked.
    pub fn is_empty(self) -> bool {
        !self.contacts && !self.leads
    }
}

impl FromStr for With {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(With::from_list(s))
    }
}

/// The `_embedded` keys that exist only on request, per kind: stripped from JSON before it is
/// stored (they are derived from the link index instead).
pub(crate) fn optional_keys(e: Entity) -> &'static [&'static str] {
    match e {
        Entity::Leads => &["contacts"],
        Entity::Contacts => &["leads"],
        Entity::Companies => &["contacts", "leads"],
        Entity::Tasks => &[],
    }
}

/// Where the stored JSON's `_embedded` object closes, so that lists can be spliced in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct EmbedSlot {
    /// Byte offset of the `}` that closes `_embedded`.
    pub at: usize,
    /// Whether `_embedded` is `{}` (no comma before the first spliced list).
    pub empty: bool,
}

impl EmbedSlot {
    /// Finds `_embedded` in `raw`, the compact serialization of `v`; `None` when `v` has no
    /// `_embedded` object (then nothing is spliced: such JSON came verbatim from a test).
    pub fn find(v: &serde_json::Value, raw: &str) -> Option<EmbedSlot> {
        let emb = v.get("_embedded")?.as_object()?;
        let inner = serde_json::to_string(emb).ok()?;
        let needle = format!("\"_embedded\":{inner}");
        // Keys serialize sorted, so `_embedded` is usually the very first key.
        let start = if raw[1..].starts_with(&needle) {
            1
        } else {
            raw.find(&needle)?
        };
        Some(EmbedSlot {
            at: start + needle.len() - 1,
            empty: emb.is_empty(),
        })
    }
}

fn push_ref(out: &mut String, base: &str, kind: &str, id: i64, is_main: Option<bool>) {
    let _ = write!(out, "{{\"id\":{id},");
    if let Some(m) = is_main {
        let _ = write!(out, "\"is_main\":{m},");
    }
    let _ = write!(
        out,
        "\"_links\":{{\"self\":{{\"href\":\"{base}/api/v4/{kind}/{id}\"}}}}}}"
    );
}

fn push_list(out: &mut String, key: &str, base: &str, kind: &str, items: &[(i64, Option<bool>)]) {
    if !out.is_empty() {
        out.push(',');
    }
    let _ = write!(out, "\"{key}\":[");
    for (i, &(id, main)) in items.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        push_ref(out, base, kind, id, main);
    }
    out.push(']');
}

/// The JSON of `v` (of kind `e`) with the optional lists `with` asks for, from `links`,
/// skipping ends that `live` says are gone. Shares the stored string when nothing is added.
pub(crate) fn render(
    v: &Version,
    e: Entity,
    with: With,
    links: &Links,
    live: impl Fn(Entity, i64) -> bool,
    base: &str,
) -> Arc<str> {
    let with = with.for_entity(e);
    let Some(slot) = v.embed else {
        return v.raw.clone();
    };
    if with.is_empty() {
        return v.raw.clone();
    }
    let mut lists = String::new();
    if e == Entity::Leads && with.contacts {
        let items: Vec<(i64, Option<bool>)> = links
            .contacts_of(v.id)
            .iter()
            .filter(|(c, _)| live(Entity::Contacts, *c))
            .map(|&(c, m)| (c, Some(m)))
            .collect();
        push_list(&mut lists, "contacts", base, "contacts", &items);
    }
    if e == Entity::Companies && with.contacts {
        let items: Vec<(i64, Option<bool>)> = links
            .members_of_company(Entity::Contacts, v.id)
            .into_iter()
            .filter(|&c| live(Entity::Contacts, c))
            .map(|c| (c, None))
            .collect();
        push_list(&mut lists, "contacts", base, "contacts", &items);
    }
    if with.leads {
        let leads: Vec<i64> = match e {
            Entity::Contacts => links.leads_of_contact(v.id).collect(),
            Entity::Companies => links.members_of_company(Entity::Leads, v.id),
            _ => vec![],
        };
        let items: Vec<(i64, Option<bool>)> = leads
            .into_iter()
            .filter(|&l| live(Entity::Leads, l))
            .map(|l| (l, None))
            .collect();
        push_list(&mut lists, "leads", base, "leads", &items);
    }
    let raw = &v.raw;
    let mut out = String::with_capacity(raw.len() + lists.len() + 1);
    out.push_str(&raw[..slot.at]);
    if !slot.empty {
        out.push(',');
    }
    out.push_str(&lists);
    out.push_str(&raw[slot.at..]);
    Arc::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    #[test]
    fn with_reads_comma_lists_and_ignores_the_unknown() {
        let p = |q: &str| With::parse(&crate::query::pairs(Some(q)));
        assert_eq!(p(""), With::NONE);
        assert_eq!(
            p("with=contacts"),
            With {
                contacts: true,
                leads: false
            }
        );
        assert_eq!(
            p("with=catalog_elements,leads,bogus"),
            With {
                contacts: false,
                leads: true
            }
        );
        assert_eq!(p("with=contacts&with=leads"), With::ALL);
        assert_eq!(
            With::ALL.for_entity(Entity::Leads),
            With {
                contacts: true,
                leads: false
            }
        );
        assert!(With::ALL.for_entity(Entity::Tasks).is_empty());
    }

    #[test]
    fn lists_are_spliced_into_embedded_and_stay_valid_json() {
        let mut links = Links::default();
        links.link(1, 10, false);
        links.link(1, 11, false);
        links.link(1, 12, false);
        for emb in [json!({"tags": [], "companies": []}), json!({})] {
            let v = json!({"id": 1, "name": "L", "updated_at": 5, "_embedded": emb});
            let ver = Version::from_value(&v, 0).unwrap();
            let plain = render(
                &ver,
                Entity::Leads,
                With::NONE,
                &links,
                |_, _| true,
                "http://x",
            );
            assert!(Arc::ptr_eq(&plain, &ver.raw), "no copy without with");
            let out = render(
                &ver,
                Entity::Leads,
                With::ALL,
                &links,
                |_, id| id != 11,
                "http://x",
            );
            let got: Value = serde_json::from_str(&out).unwrap();
            let mut want = v.clone();
            want["_embedded"]["contacts"] = json!([
                {"id": 10, "is_main": true, "_links": {"self": {"href": "http://x/api/v4/contacts/10"}}},
                {"id": 12, "is_main": false, "_links": {"self": {"href": "http://x/api/v4/contacts/12"}}},
            ]);
            assert_eq!(got, want);
        }
        let bare = Version::from_value(&json!({"id": 1, "updated_at": 5}), 0).unwrap();
        let out = render(
            &bare,
            Entity::Leads,
            With::ALL,
            &links,
            |_, _| true,
            "http://x",
        );
        assert!(
            Arc::ptr_eq(&out, &bare.raw),
            "JSON without _embedded is served verbatim"
        );
    }
}
