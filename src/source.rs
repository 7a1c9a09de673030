//! What the sync engine needs from a CRM, and nothing more: pages of records of one stream
//! inside an `updated_at` window, plus the server's clock.
//!
//! Kommo implements this in [`crate::kommo`]; a second CRM would implement [`Source`] and
//! reuse the engine, the cursor, the scheduler and the store unchanged.

use std::future::Future;

use serde_json::Value;

/// One kind of record pulled with one cursor (leads, contacts, ...).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamSpec {
    pub name: &'static str,
    /// Whether the source can order this stream by `updated_at`. When it cannot (Kommo's
    /// tasks), the engine walks each closed `updated_at` window by `created_at` instead, so
    /// the source must then filter and order by `created_at`.
    pub ordered_by_updated_at: bool,
}

/// One entity as received. `raw` is kept verbatim; `id` and `updated_at` drive the walk.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub id: i64,
    /// Unix seconds, server time.
    pub updated_at: i64,
    /// Unix seconds; used as the walk's key for streams that cannot be ordered by
    /// `updated_at`. Entities without one sort as 0.
    pub created_at: Option<i64>,
    pub raw: Value,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    UpdatedAtAsc,
    CreatedAtAsc,
    IdAsc,
}

/// A request for one page. Bounds are inclusive unix seconds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageRequest {
    pub stream: &'static str,
    pub from: i64,
    pub to: Option<i64>,
    /// Inclusive `created_at` bounds, for walks keyed on `created_at`.
    pub created_from: Option<i64>,
    pub created_to: Option<i64>,
    pub order: Order,
    /// From 1.
    pub page: u32,
    pub limit: u32,
    /// Ask the server for entities modified after this unix second (`If-Modified-Since`).
    /// Only an optimisation: the engine never relies on how the server compares.
    pub if_modified_since: Option<i64>,
}

#[derive(Debug, Clone, Default)]
pub struct Page {
    pub records: Vec<Record>,
    /// The server's clock when it answered (unix seconds), from the `Date` header.
    pub server_time: Option<i64>,
}

/// How a failed fetch should be handled by the engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// The server could not produce a page this large (Kommo's 504): ask again for less.
    AskForLess,
    /// The account's traffic is stopped for a back-off (Kommo's 403 IP block).
    Banned,
    /// The credentials were refused and cannot be renewed without a human.
    AuthFailed,
    /// Shutdown was requested while waiting.
    Cancelled,
    /// Anything else that ends the run (the source already retried what was worth it).
    Fatal,
}

#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct FetchError {
    pub kind: FailureKind,
    pub message: String,
}

impl FetchError {
    pub fn new(kind: FailureKind, message: impl Into<String>) -> Self {
        FetchError {
            kind,
            message: message.into(),
        }
    }
}

pub trait Source: Send + Sync + 'static {
    /// The streams this source offers.
    fn streams(&self) -> Vec<StreamSpec>;

    /// Fetches one page. Implementations own politeness (rate limit, retries, back-off).
    fn fetch(&self, req: &PageRequest) -> impl Future<Output = Result<Page, FetchError>> + Send;
}
