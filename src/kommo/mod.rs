//! Everything Kommo-specific: the HTTP client and its politeness, the list endpoints' query
//! language, and the HAL page format. The rest of the crate sees only [`crate::source`].

pub mod auth;
pub mod client;
pub mod error;
pub mod events;
pub mod pages;
pub mod rate_limit;
pub mod reference;
pub mod rows;

use std::sync::Arc;

pub use client::KommoClient;
pub use error::KommoError;

use crate::source::{
    ById, ChildDecl, FetchError, Order, Page, PageRequest, Source, SourceHealth, Strategy,
    StreamDecl, WalkKind,
};
use crate::store::rows::{Frame, TableDecl};

/// Kommo's mirrored streams: the four entity lists (tasks cannot be ordered by
/// `updated_at`: the API accepts only `created_at`, `complete_till` and `id` for them), then
/// the reference data their ids point at.
pub const STREAMS: &[StreamDecl] = &[
    entities(
        "leads",
        WalkKind::UpdatedAtKeyset,
        &rows::LEADS,
        reference::LINKS_OF_LEAD,
    ),
    entities(
        "contacts",
        WalkKind::UpdatedAtKeyset,
        &rows::CONTACTS,
        reference::LINKS_OF_CONTACT,
    ),
    entities(
        "companies",
        WalkKind::UpdatedAtKeyset,
        &rows::COMPANIES,
        &[],
    ),
    entities("tasks", WalkKind::CreatedAtInWindow, &rows::TASKS, &[]),
    refresh(
        "pipelines",
        None,
        &reference::PIPELINES,
        None,
        reference::STATUSES_OF_PIPELINE,
    ),
    refresh("users", Some(250), &reference::USERS, None, &[]),
    refresh(
        "loss_reasons",
        Some(250),
        &reference::LOSS_REASONS,
        None,
        &[],
    ),
    refresh("task_types", None, &reference::TASK_TYPES, None, &[]),
    // Field definitions list at most 50 per page, whatever `limit` asks.
    refresh(
        "lead_custom_fields",
        Some(50),
        &reference::CUSTOM_FIELDS,
        Some("leads"),
        reference::ENUMS_OF_FIELD,
    ),
    refresh(
        "contact_custom_fields",
        Some(50),
        &reference::CUSTOM_FIELDS,
        Some("contacts"),
        reference::ENUMS_OF_FIELD,
    ),
    refresh(
        "company_custom_fields",
        Some(50),
        &reference::CUSTOM_FIELDS,
        Some("companies"),
        reference::ENUMS_OF_FIELD,
    ),
    refresh("lead_tags", Some(250), &reference::TAGS, Some("leads"), &[]),
    refresh(
        "contact_tags",
        Some(250),
        &reference::TAGS,
        Some("contacts"),
        &[],
    ),
    refresh(
        "company_tags",
        Some(250),
        &reference::TAGS,
        Some("companies"),
        &[],
    ),
    StreamDecl {
        name: "events",
        strategy: Strategy::Log {
            page_size: events::PAGE_SIZE,
            effects: events::effects,
        },
        table: &events::EVENTS,
        to_row: events::to_row,
        children: &[],
        scope: None,
    },
];

const fn entities(
    name: &'static str,
    walk: WalkKind,
    table: &'static TableDecl,
    children: &'static [ChildDecl],
) -> StreamDecl {
    StreamDecl {
        name,
        strategy: Strategy::Changes(walk),
        table,
        to_row: rows::to_row,
        children,
        scope: None,
    }
}

const fn refresh(
    name: &'static str,
    page_size: Option<u32>,
    table: &'static TableDecl,
    scope: Option<&'static str>,
    children: &'static [ChildDecl],
) -> StreamDecl {
    let scope = match (table.frame, scope) {
        (
            Frame::Reference {
                scope: Some(column),
            },
            Some(value),
        ) => Some((column, value)),
        _ => None,
    };
    StreamDecl {
        name,
        strategy: Strategy::Refresh { page_size },
        table,
        to_row: reference::to_row,
        children,
        scope,
    }
}

/// The names of Kommo's streams, for settings and the command line.
pub fn stream_names() -> impl Iterator<Item = &'static str> {
    STREAMS.iter().map(|s| s.name)
}

/// The entity lists (walked for changes; the ones a reconciliation compares by id).
pub fn entity_stream_names() -> impl Iterator<Item = &'static str> {
    STREAMS
        .iter()
        .filter(|s| s.walk().is_some())
        .map(|s| s.name)
}

/// The list endpoints of one account as a [`Source`].
#[derive(Clone, Debug)]
pub struct KommoSource {
    client: Arc<KommoClient>,
    /// The account's id, asked for once (users and tags do not carry it).
    account_id: Arc<tokio::sync::OnceCell<i64>>,
}

impl KommoSource {
    pub fn new(client: Arc<KommoClient>) -> Self {
        KommoSource {
            client,
            account_id: Default::default(),
        }
    }

    /// The account's id, from `/api/v4/account` the first time it is needed.
    async fn account_id(&self) -> Result<i64, KommoError> {
        self.account_id
            .get_or_try_init(|| async {
                let body = self.account().await?;
                rows::as_int(body.get("id")).ok_or_else(|| KommoError::BadEntity {
                    what: "/api/v4/account answered without an integer `id`".into(),
                })
            })
            .await
            .copied()
    }

    pub fn client(&self) -> &Arc<KommoClient> {
        &self.client
    }

    /// One cheap request that proves the URL and the token work (`check`).
    pub async fn account(&self) -> Result<serde_json::Value, KommoError> {
        let answer = self.client.get("/api/v4/account", &[], None).await?;
        answer.body.ok_or_else(|| KommoError::BadEntity {
            what: "/api/v4/account answered with no body".into(),
        })
    }
}

/// Query string of a list request, as documented for API v4.
pub fn list_query(req: &PageRequest) -> Vec<(String, String)> {
    let mut q = vec![
        ("limit".to_string(), req.limit.to_string()),
        ("page".to_string(), req.page.to_string()),
    ];
    let mut range = |field: &str, b: Option<crate::source::Bounds>| {
        let Some(b) = b else { return };
        if let Some(from) = b.from {
            q.push((format!("filter[{field}][from]"), from.max(0).to_string()));
        }
        if let Some(to) = b.to {
            q.push((format!("filter[{field}][to]"), to.max(0).to_string()));
        }
    };
    range("updated_at", req.updated);
    range("created_at", req.created);
    let (order, dir) = match req.order {
        Order::UpdatedAtAsc => ("order[updated_at]", "asc"),
        Order::UpdatedAtDesc => ("order[updated_at]", "desc"),
        Order::CreatedAtAsc => ("order[created_at]", "asc"),
        Order::IdAsc => ("order[id]", "asc"),
    };
    q.push((order.to_string(), dir.to_string()));
    if let Some(with) = with_for(req.stream) {
        q.push(("with".to_string(), with.to_string()));
    }
    q
}

/// Entities asked for by id in one request.
const IDS_PER_REQUEST: usize = 50;

/// What a list must be asked to embed: a lead's contacts are listed only with
/// `with=contacts` (its companies and tags always are).
fn with_for(stream: &str) -> Option<&'static str> {
    match stream {
        "leads" => Some("contacts"),
        _ => None,
    }
}

impl Source for KommoSource {
    fn streams(&self) -> &'static [StreamDecl] {
        STREAMS
    }

    fn endpoint(&self, stream: &str) -> String {
        match reference::endpoint(stream) {
            Some(e) => format!("GET {}", e.path),
            None => format!("GET /api/v4/{stream}"),
        }
    }

    fn health(&self) -> SourceHealth {
        let p = self.client.politeness().snapshot();
        SourceHealth {
            banned_until: p.banned_until,
            locked_out: p.locked_out,
        }
    }

    fn queueing(&self) -> bool {
        self.client.politeness().queueing()
    }

    async fn fetch(&self, req: &PageRequest) -> Result<Page, FetchError> {
        let path = format!("/api/v4/{}", req.stream);
        let answer = self
            .client
            .get(&path, &list_query(req), req.if_modified_since)
            .await?;
        let records = match answer.body {
            None => Vec::new(),
            Some(body) if req.stream == "events" => {
                let (records, notes) = events::records(body)?;
                for note in notes {
                    tracing::warn!(stream = req.stream, "{note}");
                }
                records
            }
            Some(body) => pages::records(req.stream, body)?,
        };
        Ok(Page {
            records,
            server_time: answer.server_time,
            ..Page::default()
        })
    }

    async fn fetch_ids(&self, stream: &'static str, ids: &[i64]) -> Result<ById, FetchError> {
        let path = format!("/api/v4/{stream}");
        let mut out = Vec::new();
        let mut requests = 0;
        for chunk in ids.chunks(IDS_PER_REQUEST) {
            let mut query: Vec<(String, String)> = chunk
                .iter()
                .map(|id| ("filter[id][]".to_string(), id.to_string()))
                .collect();
            query.push(("limit".into(), IDS_PER_REQUEST.to_string()));
            if let Some(with) = with_for(stream) {
                query.push(("with".into(), with.into()));
            }
            requests += 1;
            let answer = self.client.get(&path, &query, None).await?;
            let records = match answer.body {
                None => Vec::new(),
                Some(body) => pages::records(stream, body)?,
            };
            let asked: std::collections::HashSet<i64> = chunk.iter().copied().collect();
            if records.iter().all(|r| asked.contains(&r.id)) {
                out.extend(records);
                continue;
            }
            // The filter is not applied (filters can be off for a whole account): an id
            // missing from this answer proves nothing. One by one instead.
            tracing::warn!(
                stream,
                "filter[id] is not honoured; reading entities one by one"
            );
            for id in chunk {
                let one = format!("{path}/{id}");
                let with: Vec<(String, String)> = with_for(stream)
                    .map(|w| ("with".to_string(), w.to_string()))
                    .into_iter()
                    .collect();
                requests += 1;
                match self.client.get(&one, &with, None).await {
                    Ok(answer) => {
                        if let Some(raw) = answer.body {
                            out.push(pages::record(stream, 0, raw)?);
                        }
                    }
                    Err(KommoError::NotFound { .. }) => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
        Ok(ById {
            records: out,
            requests,
        })
    }

    async fn linked_to(
        &self,
        stream: &'static str,
        id: i64,
    ) -> Result<Vec<(&'static str, i64)>, FetchError> {
        // Contacts list their leads with `with=leads`; companies their leads and contacts.
        let (with, kinds): (&str, &[&'static str]) = match stream {
            "contacts" => ("leads", &["leads"]),
            "companies" => ("leads,contacts", &["leads", "contacts"]),
            _ => return Ok(Vec::new()),
        };
        let path = format!("/api/v4/{stream}/{id}");
        let answer = match self
            .client
            .get(&path, &[("with".to_string(), with.to_string())], None)
            .await
        {
            Ok(a) => a,
            Err(KommoError::NotFound { .. }) => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        };
        let Some(body) = answer.body else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for kind in kinds {
            let listed = body
                .get("_embedded")
                .and_then(|e| e.get(*kind))
                .and_then(serde_json::Value::as_array);
            for item in listed.into_iter().flatten() {
                if let Some(other) = rows::as_int(item.get("id")) {
                    out.push((*kind, other));
                }
            }
        }
        Ok(out)
    }

    async fn fetch_reference(
        &self,
        stream: &'static str,
        page: u32,
        limit: u32,
    ) -> Result<Page, FetchError> {
        let endpoint = reference::endpoint(stream).ok_or_else(|| {
            FetchError::new(
                crate::source::FailureKind::Fatal,
                format!("`{stream}` is not a reference stream of Kommo"),
            )
        })?;
        let mut query: Vec<(String, String)> = endpoint
            .query
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        if limit > 0 {
            query.push(("page".into(), page.to_string()));
            query.push(("limit".into(), limit.to_string()));
        }
        let answer = self.client.get(endpoint.path, &query, None).await?;
        let Some(body) = answer.body else {
            return Ok(Page {
                server_time: answer.server_time,
                ..Page::default()
            });
        };
        let page_count = body
            .get("_page_count")
            .and_then(serde_json::Value::as_u64)
            .and_then(|c| u32::try_from(c).ok());
        // The account answer carries its own id; other lists learn it once.
        let account_id = match rows::as_int(body.get("id")).filter(|_| stream == "task_types") {
            Some(id) => {
                let _ = self.account_id.set(id);
                id
            }
            None => self.account_id().await?,
        };
        let (records, notes) = reference::records(stream, endpoint.key, body)?;
        for note in notes {
            tracing::warn!(stream, "{note}");
        }
        Ok(Page {
            records,
            server_time: answer.server_time,
            page_count,
            account_id: Some(account_id),
        })
    }
}
