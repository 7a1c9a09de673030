//! The four synced entity kinds and their names in URLs, JSON and events.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A kind of entity with a list endpoint `GET /api/v4/{as_str}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Entity {
    Leads,
    Contacts,
    Companies,
    Tasks,
}

impl Entity {
    /// Every kind, in a fixed order (also the index order of per-kind tables).
    pub const ALL: [Entity; 4] = [
        Entity::Leads,
        Entity::Contacts,
        Entity::Companies,
        Entity::Tasks,
    ];

    /// Plural name used in URLs and in `_embedded`.
    pub fn as_str(self) -> &'static str {
        match self {
            Entity::Leads => "leads",
            Entity::Contacts => "contacts",
            Entity::Companies => "companies",
            Entity::Tasks => "tasks",
        }
    }

    /// Singular name used by the events API (`entity_type`, `lead_deleted`).
    pub fn singular(self) -> &'static str {
        match self {
            Entity::Leads => "lead",
            Entity::Contacts => "contact",
            Entity::Companies => "company",
            Entity::Tasks => "task",
        }
    }

    /// Position in [`Entity::ALL`].
    pub fn index(self) -> usize {
        match self {
            Entity::Leads => 0,
            Entity::Contacts => 1,
            Entity::Companies => 2,
            Entity::Tasks => 3,
        }
    }

    /// Whether lists of this kind accept `order[updated_at]` (tasks do not).
    pub fn can_order_by_updated_at(self) -> bool {
        self != Entity::Tasks
    }
}

impl fmt::Display for Entity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Entity {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "leads" | "lead" => Ok(Entity::Leads),
            "contacts" | "contact" => Ok(Entity::Contacts),
            "companies" | "company" => Ok(Entity::Companies),
            "tasks" | "task" => Ok(Entity::Tasks),
            other => Err(format!("unknown entity {other:?}")),
        }
    }
}
