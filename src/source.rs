//! What the sync engine needs from a CRM, and nothing more: pages of records of one stream,
//! asked for with the filters and orders the walk chose, plus the server's clock.
//!
//! Kommo implements this in [`crate::kommo`]; a second CRM implements [`Source`] and reuses
//! the walk, the run, the scheduler and the store unchanged.

use std::future::Future;

use chrono::{DateTime, Utc};
use serde_json::Value;

use crate::store::children::ChildTable;
use crate::store::rows::{Cell, Row, TableDecl};

/// How a stream is walked; declared by the source for each stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WalkKind {
    /// Keyset on `updated_at` (`order[updated_at]=asc` inside an `updated_at` window).
    UpdatedAtKeyset,
    /// The source cannot order this stream by `updated_at` (Kommo's tasks): each closed
    /// `updated_at` window is walked with a keyset on `created_at`.
    CreatedAtInWindow,
}

/// How a stream is read, run after run.
#[derive(Debug, Clone, Copy)]
pub enum Strategy {
    /// Entities that change: a proven walk of what changed since the last run.
    Changes(WalkKind),
    /// Reference data (pipelines, users, field definitions): a few pages read whole on every
    /// run and stored in one transaction, so that whatever is no longer listed can be marked
    /// gone. `page_size`: the most the endpoint lists per page (`None`: it is not paged).
    Refresh { page_size: Option<u32> },
    /// An append-only log (Kommo's events), walked by `created_at` in closed windows; see
    /// [`crate::sync::log`]. Each entry may have effects on other streams' rows.
    Log {
        page_size: u32,
        effects: fn(&Record) -> Vec<Effect>,
    },
}

/// What a log entry says about an entity of another stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    /// The entity was deleted at `at` (unix seconds): lists never show it again.
    Deleted {
        stream: &'static str,
        id: i64,
        at: i64,
    },
    /// The entity was restored at `at`.
    Restored {
        stream: &'static str,
        id: i64,
        at: i64,
    },
    /// The entity came back: the entities linked to it list it again without a new version
    /// of theirs (a lead's contacts hide a deleted contact), so they are read again.
    Relinked { stream: &'static str, id: i64 },
    /// The entity changed in a way its list need not show by a new version (its links, a
    /// merge): it is read again by id. `gone_at`: it may have been merged away at that time;
    /// if it is no longer there, it is marked deleted then.
    Refetch {
        stream: &'static str,
        id: i64,
        gone_at: Option<i64>,
    },
}

/// One stream as its source declares it, once: the name used in config, on the command
/// line, in `status` and as the key of its cursor; how it is read; the table it fills; how
/// one of its entities becomes a row of that table; and the tables of rows each entity owns.
#[derive(Debug, Clone)]
pub struct StreamDecl {
    pub name: &'static str,
    pub strategy: Strategy,
    pub table: &'static TableDecl,
    pub to_row: fn(&TableDecl, &Record) -> Row,
    /// Rows owned by one entity (a lead's contacts, a pipeline's statuses), rewritten in
    /// the same transaction whenever the entity's row is.
    pub children: &'static [ChildDecl],
    /// Where this stream's rows sit in a table shared by several streams (e.g. the field
    /// definitions of leads, contacts and companies): column = value, part of the key.
    pub scope: Option<(&'static str, &'static str)>,
}

/// Rows that belong to one entity of a stream, in a table of their own.
#[derive(Debug, Clone)]
pub struct ChildDecl {
    pub table: &'static ChildTable,
    /// The entity's rows of that table, each as the table's cells; `None` when the entity
    /// does not say (the field was not asked for): what is stored for it stays.
    pub rows: fn(&Record) -> Option<Vec<Vec<Cell>>>,
}

impl StreamDecl {
    pub fn rows(&self, records: &[Record]) -> Vec<Row> {
        records
            .iter()
            .map(|r| (self.to_row)(self.table, r))
            .collect()
    }

    /// The incremental walk of this stream, if it has one.
    pub fn walk(&self) -> Option<WalkKind> {
        match self.strategy {
            Strategy::Changes(kind) => Some(kind),
            Strategy::Refresh { .. } | Strategy::Log { .. } => None,
        }
    }
}

/// One entity as received. `raw` is kept verbatim; `id`, `updated_at` and `created_at`
/// drive the walk.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub id: i64,
    /// Unix seconds, server time.
    pub updated_at: i64,
    /// Unix seconds; the key of walks inside a window. `None` when the entity has none (it
    /// is stored, but cannot move a `created_at` walk forward).
    pub created_at: Option<i64>,
    pub raw: Value,
}

/// Sort orders the walk asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Order {
    UpdatedAtAsc,
    UpdatedAtDesc,
    CreatedAtAsc,
    IdAsc,
}

impl Order {
    /// The parameter that asks for this order, for messages.
    pub fn param(self) -> &'static str {
        match self {
            Order::UpdatedAtAsc | Order::UpdatedAtDesc => "order[updated_at]",
            Order::CreatedAtAsc => "order[created_at]",
            Order::IdAsc => "order[id]",
        }
    }
}

/// Bounds to send for one filter, in unix seconds, as the API should read them: the walk
/// has already widened them by a second on each side where it is not known whether the API
/// includes its ends, and keeps on the client only what lies inside.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Bounds {
    pub from: Option<i64>,
    pub to: Option<i64>,
}

/// A request for one page.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PageRequest {
    pub stream: &'static str,
    /// `filter[updated_at]`; `None`: no filter at all.
    pub updated: Option<Bounds>,
    /// `filter[created_at]`.
    pub created: Option<Bounds>,
    pub order: Order,
    /// From 1.
    pub page: u32,
    pub limit: u32,
    /// Ask the server for entities modified after this unix second (`If-Modified-Since`).
    /// Only a hint: the walk never relies on how the server compares, or whether it does.
    pub if_modified_since: Option<i64>,
}

impl PageRequest {
    /// Offset of the page's first item in the list.
    pub fn offset(&self) -> u64 {
        u64::from(self.page.saturating_sub(1)) * u64::from(self.limit)
    }
}

#[derive(Debug, Clone, Default)]
pub struct Page {
    /// The items in the order the server sent them.
    pub records: Vec<Record>,
    /// The server's clock when it answered (unix seconds), from the `Date` header.
    pub server_time: Option<i64>,
    /// How many pages the list has, where the server says (reference lists do; entity
    /// lists cannot count).
    pub page_count: Option<u32>,
    /// The account the page belongs to, where the items do not say it themselves (a
    /// source fills it for reference lists).
    pub account_id: Option<i64>,
}

/// Entities read by id, and what reading them cost.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ById {
    pub records: Vec<Record>,
    /// Requests sent (more than one per chunk where the filter by id is not honoured).
    pub requests: u64,
}

/// How a failed fetch should be handled by the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// The server could not produce a page this large (Kommo's 504): ask again for less.
    AskForLess,
    /// The account's traffic is stopped until `until` (Kommo's 403 IP block).
    Banned { until: DateTime<Utc> },
    /// The credentials were refused and cannot be renewed without a human.
    AuthFailed,
    /// Shutdown was requested while waiting.
    Cancelled,
    /// Anything else that ends the run (the source already retried what was worth it).
    Fatal,
}

/// A fetch that failed, with what the run should do about it and the source's own error.
///
/// `Display` is the source error's message (it already says what happened and what to do);
/// [`std::error::Error::source`] continues with that error's own cause, so a printed chain
/// never says the same thing twice.
#[derive(Debug)]
pub struct FetchError {
    pub kind: FailureKind,
    pub error: Box<dyn std::error::Error + Send + Sync>,
}

impl FetchError {
    pub fn new(
        kind: FailureKind,
        error: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        FetchError {
            kind,
            error: error.into(),
        }
    }

    pub fn cancelled() -> Self {
        FetchError::new(FailureKind::Cancelled, "stopped by shutdown")
    }
}

impl std::fmt::Display for FetchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.error.fmt(f)
    }
}

impl std::error::Error for FetchError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.error.source()
    }
}

/// What the side server and `status` need to know about the source's own state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SourceHealth {
    /// No request is sent before this (a 403 ban, or one stored by an earlier process).
    pub banned_until: Option<DateTime<Utc>>,
    /// The credentials were refused for good; a human must act.
    pub locked_out: Option<String>,
}

pub trait Source: Send + Sync + 'static {
    /// The streams this source offers (its registry).
    fn streams(&self) -> &'static [StreamDecl];

    /// The endpoint a stream is read from, for messages (e.g. `GET /api/v4/leads`).
    fn endpoint(&self, stream: &str) -> String;

    /// Fetches one page. Implementations own politeness (rate limit, retries, back-off).
    fn fetch(&self, req: &PageRequest) -> impl Future<Output = Result<Page, FetchError>> + Send;

    /// Fetches the entities of `stream` with these ids, as its list shows them. Ids that are
    /// not returned are gone (deleted, or merged away): the source makes sure of that, e.g.
    /// by asking one by one where a filter by id is not honoured.
    fn fetch_ids(
        &self,
        stream: &'static str,
        ids: &[i64],
    ) -> impl Future<Output = Result<ById, FetchError>> + Send;

    /// The entities (stream, id) that list this one among their links, as the source says now.
    fn linked_to(
        &self,
        stream: &'static str,
        id: i64,
    ) -> impl Future<Output = Result<Vec<(&'static str, i64)>, FetchError>> + Send;

    /// Fetches one page (from 1) of a [`Strategy::Refresh`] stream, as it is listed.
    fn fetch_reference(
        &self,
        stream: &'static str,
        page: u32,
        limit: u32,
    ) -> impl Future<Output = Result<Page, FetchError>> + Send;

    /// Whether traffic is stopped right now, and why.
    fn health(&self) -> SourceHealth;

    /// Whether requests are waiting for the source's rate limit right now. Then one more
    /// request in flight would not be answered sooner, and the engine neither splits a
    /// window (each part ends with a partial page) nor fetches ahead; while nothing waits,
    /// the server's latency sets the pace and more requests side by side fill the rate.
    fn queueing(&self) -> bool;
}
