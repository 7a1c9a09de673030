//! Everything Kommo-specific: the HTTP client and its politeness, the list endpoints' query
//! language, and the HAL page format. The rest of the crate sees only [`crate::source`].

pub mod auth;
pub mod client;
pub mod error;
pub mod pages;
pub mod rate_limit;

use std::sync::Arc;

pub use client::KommoClient;
pub use error::KommoError;

use crate::source::{FetchError, Order, Page, PageRequest, Source, StreamSpec};

/// Kommo's four mirrored streams. Tasks cannot be ordered by `updated_at` (the API accepts
/// only `created_at`, `complete_till` and `id` for them).
pub const STREAMS: [StreamSpec; 4] = [
    StreamSpec {
        name: "leads",
        ordered_by_updated_at: true,
    },
    StreamSpec {
        name: "contacts",
        ordered_by_updated_at: true,
    },
    StreamSpec {
        name: "companies",
        ordered_by_updated_at: true,
    },
    StreamSpec {
        name: "tasks",
        ordered_by_updated_at: false,
    },
];

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
        (
            "filter[updated_at][from]".to_string(),
            req.from.max(0).to_string(),
        ),
    ];
    if let Some(to) = req.to {
        q.push(("filter[updated_at][to]".to_string(), to.to_string()));
    }
    if let Some(from) = req.created_from {
        q.push((
            "filter[created_at][from]".to_string(),
            from.max(0).to_string(),
        ));
    }
    if let Some(to) = req.created_to {
        q.push(("filter[created_at][to]".to_string(), to.to_string()));
    }
    let order = match req.order {
        Order::UpdatedAtAsc => "order[updated_at]",
        Order::CreatedAtAsc => "order[created_at]",
        Order::IdAsc => "order[id]",
    };
    q.push((order.to_string(), "asc".to_string()));
    q
}

impl Source for KommoSource {
    fn streams(&self) -> Vec<StreamSpec> {
        STREAMS.to_vec()
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
