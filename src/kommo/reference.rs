//! Kommo's reference data as streams of their own: pipelines and their statuses, users, loss
//! reasons, task types, custom field definitions with their enums, and tags. Each is read
//! whole on its own (slower) schedule; see [`crate::source::Strategy::Refresh`].
//!
//! Also the links between entities (a lead's contacts and companies, a contact's companies):
//! rows owned by the entity that lists them in `_embedded`.

use serde_json::Value;

use super::rows::{as_int, cell};
use crate::source::{ChildDecl, Record};
use crate::store::children::{ChildMode, ChildTable};
use crate::store::rows::{col, Cell, Frame, Kind::*, Row, TableDecl};

/// Where a reference stream is read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Endpoint {
    pub path: &'static str,
    /// Fixed query parameters.
    pub query: &'static [(&'static str, &'static str)],
    /// The key under `_embedded` that holds the entries.
    pub key: &'static str,
}

/// The endpoint of reference stream `stream`.
pub fn endpoint(stream: &str) -> Option<Endpoint> {
    let e = |path, key| Endpoint {
        path,
        query: &[],
        key,
    };
    Some(match stream {
        "pipelines" => e("/api/v4/leads/pipelines", "pipelines"),
        "users" => e("/api/v4/users", "users"),
        "loss_reasons" => e("/api/v4/leads/loss_reasons", "loss_reasons"),
        "task_types" => Endpoint {
            path: "/api/v4/account",
            query: &[("with", "task_types")],
            key: "task_types",
        },
        "lead_custom_fields" => e("/api/v4/leads/custom_fields", "custom_fields"),
        "contact_custom_fields" => e("/api/v4/contacts/custom_fields", "custom_fields"),
        "company_custom_fields" => e("/api/v4/companies/custom_fields", "custom_fields"),
        "lead_tags" => e("/api/v4/leads/tags", "tags"),
        "contact_tags" => e("/api/v4/contacts/tags", "tags"),
        "company_tags" => e("/api/v4/companies/tags", "tags"),
        _ => return None,
    })
}

const REFERENCE: Frame = Frame::Reference { scope: None };

pub const PIPELINES: TableDecl = TableDecl {
    name: "pipelines",
    custom_fields: false,
    frame: REFERENCE,
    columns: &[
        col("name", Text),
        col("sort", Int),
        col("is_main", Bool),
        col("is_unsorted_on", Bool),
        col("is_archive", Bool),
    ],
};

pub const PIPELINE_STATUSES: ChildTable = ChildTable {
    name: "pipeline_statuses",
    parent: "pipeline_id",
    mode: ChildMode::MarkGone { key: "id" },
    columns: &[
        col("id", Int),
        col("name", Text),
        col("sort", Int),
        col("color", Text),
        col("type", Int),
        col("is_editable", Bool),
    ],
};

pub const USERS: TableDecl = TableDecl {
    name: "users",
    custom_fields: false,
    frame: REFERENCE,
    columns: &[
        col("name", Text),
        col("email", Text),
        col("lang", Text),
        col("is_admin", Bool),
        col("is_active", Bool),
        col("group_id", Int),
        col("role_id", Int),
        col("rights", Json),
    ],
};

pub const LOSS_REASONS: TableDecl = TableDecl {
    name: "loss_reasons",
    custom_fields: false,
    frame: REFERENCE,
    columns: &[
        col("name", Text),
        col("sort", Int),
        col("created_at", Time),
        col("updated_at", Time),
    ],
};

pub const TASK_TYPES: TableDecl = TableDecl {
    name: "task_types",
    custom_fields: false,
    frame: REFERENCE,
    columns: &[
        col("name", Text),
        col("code", Text),
        col("color", Text),
        col("icon_id", Int),
    ],
};

pub const CUSTOM_FIELDS: TableDecl = TableDecl {
    name: "custom_fields",
    custom_fields: false,
    frame: Frame::Reference {
        scope: Some("entity_type"),
    },
    columns: &[
        col("name", Text),
        col("code", Text),
        col("type", Text),
        col("sort", Int),
        col("group_id", Text),
        col("is_api_only", Bool),
        col("is_predefined", Bool),
        col("is_deletable", Bool),
        col("enums", Json),
    ],
};

pub const CUSTOM_FIELD_ENUMS: ChildTable = ChildTable {
    name: "custom_field_enums",
    parent: "field_id",
    mode: ChildMode::MarkGone { key: "id" },
    columns: &[col("id", Int), col("value", Text), col("sort", Int)],
};

pub const TAGS: TableDecl = TableDecl {
    name: "tags",
    custom_fields: false,
    frame: Frame::Reference {
        scope: Some("entity_type"),
    },
    columns: &[col("name", Text), col("color", Text)],
};

/// Where a reference column's value sits: a field of the same name, except these.
fn source<'a>(raw: &'a Value, column: &str) -> Option<&'a Value> {
    match column {
        "is_admin" | "is_active" | "group_id" | "role_id" if raw.get("rights").is_some() => {
            raw.get("rights")?.get(column)
        }
        other => raw.get(other),
    }
}

/// A reference entry as a row (the account is set by the refresh, for the whole list).
pub fn to_row(table: &TableDecl, record: &Record) -> Row {
    super::rows::row_from(table, record, source)
}

/// Entries of an array, each as the cells of `table`'s columns; `None` when `v` is no array.
fn entries(v: Option<&Value>, table: &ChildTable) -> Option<Vec<Vec<Cell>>> {
    let items = v?.as_array()?;
    Some(
        items
            .iter()
            .filter(|i| as_int(i.get("id")).is_some())
            .map(|i| {
                table
                    .columns
                    .iter()
                    .map(|c| cell(c.kind, i.get(c.name)))
                    .collect()
            })
            .collect(),
    )
}

fn statuses(r: &Record) -> Option<Vec<Vec<Cell>>> {
    entries(
        r.raw.get("_embedded").and_then(|e| e.get("statuses")),
        &PIPELINE_STATUSES,
    )
}

fn enums(r: &Record) -> Option<Vec<Vec<Cell>>> {
    match r.raw.get("enums") {
        // A field without options says `null`: it owns none.
        Some(Value::Null) => Some(Vec::new()),
        v => entries(v, &CUSTOM_FIELD_ENUMS),
    }
}

pub const STATUSES_OF_PIPELINE: &[ChildDecl] = &[ChildDecl {
    table: &PIPELINE_STATUSES,
    rows: statuses,
}];

pub const ENUMS_OF_FIELD: &[ChildDecl] = &[ChildDecl {
    table: &CUSTOM_FIELD_ENUMS,
    rows: enums,
}];

pub const LEAD_CONTACTS: ChildTable = ChildTable {
    name: "lead_contacts",
    parent: "lead_id",
    mode: ChildMode::Replace,
    columns: &[col("contact_id", Int), col("is_main", Bool)],
};

pub const LEAD_COMPANIES: ChildTable = ChildTable {
    name: "lead_companies",
    parent: "lead_id",
    mode: ChildMode::Replace,
    columns: &[col("company_id", Int)],
};

pub const CONTACT_COMPANIES: ChildTable = ChildTable {
    name: "contact_companies",
    parent: "contact_id",
    mode: ChildMode::Replace,
    columns: &[col("company_id", Int)],
};

/// The ids listed under `_embedded.{key}`, with `is_main` where asked. `None` when the
/// entity does not list them at all (not asked for, or an older body): what is stored stays.
fn linked(r: &Record, key: &str, with_main: bool) -> Option<Vec<Vec<Cell>>> {
    let items = r.raw.get("_embedded")?.get(key)?.as_array()?;
    Some(
        items
            .iter()
            .filter_map(|i| {
                let id = as_int(i.get("id"))?;
                let mut cells = vec![Cell::Int(Some(id))];
                if with_main {
                    cells.push(Cell::Bool(i.get("is_main").and_then(Value::as_bool)));
                }
                Some(cells)
            })
            .collect(),
    )
}

fn lead_contacts(r: &Record) -> Option<Vec<Vec<Cell>>> {
    linked(r, "contacts", true)
}

fn companies(r: &Record) -> Option<Vec<Vec<Cell>>> {
    linked(r, "companies", false)
}

pub const LINKS_OF_LEAD: &[ChildDecl] = &[
    ChildDecl {
        table: &LEAD_CONTACTS,
        rows: lead_contacts,
    },
    ChildDecl {
        table: &LEAD_COMPANIES,
        rows: companies,
    },
];

pub const LINKS_OF_CONTACT: &[ChildDecl] = &[ChildDecl {
    table: &CONTACT_COMPANIES,
    rows: companies,
}];

/// The entries of a reference answer. Only an integer `id` is required of each (the rows
/// are keyed by it); an entry without one is skipped with a note, never the whole list.
pub fn records(
    stream: &str,
    key: &str,
    body: Value,
) -> Result<(Vec<Record>, Vec<String>), super::KommoError> {
    let items = body
        .get("_embedded")
        .and_then(|e| e.get(key))
        .cloned()
        .ok_or_else(|| super::KommoError::BadEntity {
            what: format!("the {stream} answer has no `_embedded.{key}` array"),
        })?;
    let Value::Array(items) = items else {
        return Err(super::KommoError::BadEntity {
            what: format!("`_embedded.{key}` of the {stream} answer is not an array"),
        });
    };
    let mut notes = Vec::new();
    let mut out = Vec::with_capacity(items.len());
    for (i, raw) in items.into_iter().enumerate() {
        match as_int(raw.get("id")) {
            Some(id) => out.push(Record {
                id,
                updated_at: as_int(raw.get("updated_at")).unwrap_or(0),
                created_at: as_int(raw.get("created_at")),
                raw,
            }),
            None => notes.push(format!("{stream} entry #{i} has no integer `id`: skipped")),
        }
    }
    Ok((out, notes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sample(name: &str) -> Value {
        let path = format!("{}/tests/fixtures/kommo/{name}", env!("CARGO_MANIFEST_DIR"));
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    }

    #[test]
    fn the_documented_pipelines_give_their_statuses() {
        let (recs, notes) = records("pipelines", "pipelines", sample("pipelines.json")).unwrap();
        assert!(notes.is_empty());
        let statuses = statuses(&recs[0]).unwrap();
        assert!(statuses.len() >= 3, "{statuses:?}");
        let row = to_row(&PIPELINES, &recs[0]);
        assert_eq!(row.cells[2], Cell::Bool(Some(true)), "is_main");
    }

    #[test]
    fn users_take_their_rights_flags() {
        let (recs, _) = records("users", "users", sample("users.json")).unwrap();
        let row = to_row(&USERS, &recs[0]);
        let at = |n: &str| &row.cells[USERS.columns.iter().position(|c| c.name == n).unwrap()];
        assert!(
            matches!(at("is_admin"), Cell::Bool(Some(_))),
            "{:?}",
            at("is_admin")
        );
        assert!(matches!(at("email"), Cell::Text(Some(_))));
    }

    #[test]
    fn the_documented_account_lists_task_types() {
        let (recs, _) = records("task_types", "task_types", sample("account.json")).unwrap();
        assert!(!recs.is_empty());
    }

    #[test]
    fn a_field_definition_owns_its_enums() {
        let rec = Record {
            id: 3,
            updated_at: 0,
            created_at: None,
            raw: sample("custom_field_single.json"),
        };
        assert_eq!(enums(&rec).unwrap().len(), 6);
        let none = Record {
            raw: json!({"id": 4, "enums": null}),
            ..rec
        };
        assert_eq!(enums(&none), Some(vec![]));
    }

    #[test]
    fn links_are_unknown_unless_listed() {
        let r = |raw| Record {
            id: 1,
            updated_at: 1,
            created_at: None,
            raw,
        };
        assert_eq!(lead_contacts(&r(json!({"_embedded": {"tags": []}}))), None);
        assert_eq!(
            lead_contacts(&r(
                json!({"_embedded": {"contacts": [{"id": 5, "is_main": true}, {"id": "x"}]}})
            )),
            Some(vec![vec![Cell::Int(Some(5)), Cell::Bool(Some(true))]])
        );
        assert_eq!(
            companies(&r(json!({"_embedded": {"companies": []}}))),
            Some(vec![])
        );
    }

    #[test]
    fn an_entry_without_an_id_costs_only_itself() {
        let body = json!({"_embedded": {"users": [{"id": 1}, {"name": "no id"}]}});
        let (recs, notes) = records("users", "users", body).unwrap();
        assert_eq!(recs.len(), 1);
        assert!(notes[0].contains("#1"), "{notes:?}");
    }
}
