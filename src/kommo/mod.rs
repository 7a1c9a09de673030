//! Everything Kommo-specific: the HTTP client and its politeness, the list endpoints' query
//! language, and the HAL page format. The rest of the crate sees only [`crate::source`].

pub mod auth;
pub mod client;
pub mod error;
pub mod pages;
pub mod rate_limit;
pub mod rows;

use std::sync::Arc;

pub use client::KommoClient;
pub use error::KommoError;

use crate::source::{
    FetchError, Order, Page, PageRequest, Source, SourceHealth, StreamDecl, WalkKind,
};

/// Kommo's four mirrored streams. Tasks cannot be ordered by `updated_at` (the API accepts
/// only `created_at`, `complete_till` and `id` for them).
pub const STREAMS: &[StreamDecl] = &[
    StreamDecl {
        name: "leads",
        walk: WalkKind::UpdatedAtKeyset,
        table: &rows::LEADS,
        to_row: rows::to_row,
    },
    StreamDecl {
        name: "contacts",
        walk: WalkKind::UpdatedAtKeyset,
        table: &rows::CONTACTS,
        to_row: rows::to_row,
    },
    StreamDecl {
        name: "companies",
        walk: WalkKind::UpdatedAtKeyset,
        table: &rows::COMPANIES,
        to_row: rows::to_row,
    },
    StreamDecl {
        name: "tasks",
        walk: WalkKind::CreatedAtInWindow,
        table: &rows::TASKS,
        to_row: rows::to_row,
    },
];

/// The names of Kommo's streams, for settings and the command line.
pub fn stream_names() -> impl Iterator<Item = &'static str> {
    STREAMS.iter().map(|s| s.name)
}

/// The list endpoints of one account as a [`Source`].
#[derive(Clone, Debug)]
pub struct KommoSource {
    client: Arc<KommoClient>,
}

impl KommoSource {
    pub fn new(client: Arc<KommoClient>) -> Self {
        KommoSource { client }
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
    q
}

impl Source for KommoSource {
    fn streams(&self) -> &'static [StreamDecl] {
        STREAMS
    }

    fn endpoint(&self, stream: &str) -> String {
        format!("GET /api/v4/{stream}")
    }

    fn health(&self) -> SourceHealth {
        let p = self.client.politeness().snapshot();
        SourceHealth {
            banned_until: p.banned_until,
            locked_out: p.locked_out,
        }
    }

    async fn fetch(&self, req: &PageRequest) -> Result<Page, FetchError> {
        let path = format!("/api/v4/{}", req.stream);
        let answer = self
            .client
            .get(&path, &list_query(req), req.if_modified_since)
            .await?;
        let records = match answer.body {
            None => Vec::new(),
            Some(body) => pages::records(req.stream, body)?,
        };
        Ok(Page {
            records,
            server_time: answer.server_time,
        })
    }
}
