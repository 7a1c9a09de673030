//! Reconciliation: the deletions the event log did not show, found by comparing id sets.
//!
//! Lists never show deleted entities, and the event log, which does, may be shorter than
//! the mirror (an account's history can be trimmed, or the log read too late). So, now and
//! then (`sync.reconcile_every_hours`, or `kommo-sync reconcile`), an entity stream's whole
//! list is read by id and compared with the rows the mirror holds as live. The listing is a
//! census, not a proof: under churn, a deletion shifts later pages and a page-number walk
//! skips an entity, and an account may ignore `order`. So an id the census did not see is
//! only a candidate; it is asked for by id ([`Source::fetch_ids`](crate::source::Source::fetch_ids), which asks one by one
//! where the filter by id is not honoured), and only what that answer lacks is marked
//! deleted. A row the mirror holds as deleted that the census lists alive is marked found.
//!
//! A census that sees less than half of the live rows marks nothing and fails: a wrong
//! token, another account or a broken list must not delete the mirror.

use std::collections::{BTreeSet, HashSet};

use chrono::Utc;
use tokio_util::sync::CancellationToken;

use super::run::{SyncEngine, SyncError, MIN_PAGE};
use crate::source::{FailureKind, Order, Page, PageRequest, Record, Source};
use crate::store::log::{self, Mark};
use crate::store::StoreError;

/// The largest share of the mirror's live rows one reconciliation may mark deleted.
pub const MAX_GONE_SHARE: f64 = 0.5;

/// How the census of one list goes on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    Next(PageRequest),
    Done,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CensusError {
    #[error(
        "page {page} of the list by id repeats page {earlier}: the server ignores `page`, so \
         the list cannot be read whole and no deletion can be proven"
    )]
    PageIgnored { page: u32, earlier: u32 },
    #[error(
        "the list by id goes on past {pages} pages of {limit} although the mirror holds \
         {known} live rows; stopped before it costs more"
    )]
    TooLong {
        pages: u32,
        limit: u32,
        known: usize,
    },
    #[error(
        "{missing} of the {known} live rows are not listed any more; more than half, so \
         nothing was marked (a wrong token or another account would look the same). If the \
         account really lost them, run `kommo-sync sync --full` into a new schema"
    )]
    TooManyMissing { missing: usize, known: usize },
}

/// The reading of one list by id, page after page.
#[derive(Debug)]
pub struct Census {
    stream: &'static str,
    limit: u32,
    page: u32,
    max_pages: u32,
    known: usize,
    seen: HashSet<(i64, i64)>,
    /// Each page's ids, to catch a server that ignores `page`.
    pages: Vec<BTreeSet<i64>>,
    /// The server's clock at the first answer: what the census proves holds from then.
    pub started_at: Option<i64>,
}

impl Census {
    /// A census of `stream`, whose mirror holds `known` live rows.
    pub fn new(stream: &'static str, limit: u32, known: usize) -> Self {
        let limit = limit.max(1);
        // Room for the account to have doubled since, and for a few pages of slack.
        let max_pages = (2 * known as u64 / u64::from(limit) + 10).min(u64::from(u32::MAX)) as u32;
        Census {
            stream,
            limit,
            page: 1,
            max_pages,
            known,
            seen: HashSet::new(),
            pages: Vec::new(),
            started_at: None,
        }
    }

    pub fn first(&self) -> PageRequest {
        self.request(1)
    }

    fn request(&self, page: u32) -> PageRequest {
        PageRequest {
            stream: self.stream,
            updated: None,
            created: None,
            order: Order::IdAsc,
            page,
            limit: self.limit,
            if_modified_since: None,
        }
    }

    /// Takes the answer to the last request; `keys` are `(account_id, id)` of its records.
    pub fn take(&mut self, page: &Page, keys: &[(i64, i64)]) -> Result<Step, CensusError> {
        if self.started_at.is_none() {
            self.started_at = page.server_time;
        }
        let ids: BTreeSet<i64> = page.records.iter().map(|r| r.id).collect();
        if !ids.is_empty() {
            if let Some(earlier) = self.pages.iter().position(|p| *p == ids) {
                return Err(CensusError::PageIgnored {
                    page: self.page,
                    earlier: earlier as u32 + 1,
                });
            }
        }
        self.seen.extend(keys.iter().copied());
        // A short page is the last (a `next` link proves nothing: lists send one on their
        // last page too); what a short page wrongly ended is asked for by id anyway.
        if page.records.len() < self.limit as usize {
            return Ok(Step::Done);
        }
        if self.page >= self.max_pages {
            return Err(CensusError::TooLong {
                pages: self.page,
                limit: self.limit,
                known: self.known,
            });
        }
        self.pages.push(ids);
        self.page += 1;
        Ok(Step::Next(self.request(self.page)))
    }

    /// The live rows of the mirror (`(account_id, id)`) the census did not list: each is
    /// asked for by id before anything is marked.
    pub fn unseen(&self, live: &[(i64, i64)]) -> Result<Vec<(i64, i64)>, CensusError> {
        let missing: Vec<(i64, i64)> = live
            .iter()
            .filter(|k| !self.seen.contains(k))
            .copied()
            .collect();
        if !missing.is_empty() && missing.len() as f64 > MAX_GONE_SHARE * live.len() as f64 {
            return Err(CensusError::TooManyMissing {
                missing: missing.len(),
                known: live.len(),
            });
        }
        Ok(missing)
    }

    /// Of the rows the mirror holds as deleted, those the census listed alive.
    pub fn listed(&self, deleted: &[(i64, i64)]) -> Vec<(i64, i64)> {
        deleted
            .iter()
            .filter(|k| self.seen.contains(k))
            .copied()
            .collect()
    }
}

/// What a read by id says about the candidates: those it returned are alive.
pub fn gone(candidates: &[(i64, i64)], found: &[Record]) -> Vec<(i64, i64)> {
    let alive: HashSet<i64> = found.iter().map(|r| r.id).collect();
    candidates
        .iter()
        .filter(|(_, id)| !alive.contains(id))
        .copied()
        .collect()
}

/// What one reconciliation of a stream did.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Reconciled {
    pub stream: String,
    pub requests: u64,
    /// Entities the list showed.
    pub listed: u64,
    /// Live rows it did not show, asked for by id.
    pub candidates: u64,
    /// Of those, the ones gone: marked deleted.
    pub gone: u64,
    /// Rows held as deleted that the list showed alive: marked found.
    pub found: u64,
}

impl<S: Source> SyncEngine<S> {
    /// Compares the stream's list with the mirror now, if the interval has passed since the
    /// last comparison. The first time only notes the time: the mirror was just read.
    pub async fn reconcile_if_due(
        &self,
        name: &str,
        cancel: &CancellationToken,
    ) -> Result<Option<Reconciled>, SyncError> {
        let Some(every) = self.settings.reconcile_every else {
            return Ok(None);
        };
        match self.store.reconciled_at(&self.account, name).await? {
            None => {
                self.store.note_reconciled(&self.account, name).await?;
                Ok(None)
            }
            Some(at)
                if Utc::now()
                    .signed_duration_since(at)
                    .to_std()
                    .unwrap_or_default()
                    < every =>
            {
                Ok(None)
            }
            Some(_) => self.reconcile(name, cancel).await,
        }
    }

    /// Reads the whole list of an entity stream by id and marks the rows it no longer
    /// shows deleted (after asking for them by id), and the deleted rows it shows found.
    /// `None`: cancelled, or the same census was sent less than a minute ago.
    pub async fn reconcile(
        &self,
        name: &str,
        cancel: &CancellationToken,
    ) -> Result<Option<Reconciled>, SyncError> {
        let decl = self.stream(name)?;
        if decl.walk().is_none() {
            return Err(SyncError::NotReconcilable(name.to_string()));
        }
        let census_error = |source| SyncError::Census {
            endpoint: self.source.endpoint(decl.name),
            source,
        };
        self.store.note_reconciled(&self.account, name).await?;
        let keys = self.store.entity_keys(decl.table).await?;
        let deleted: HashSet<(i64, i64)> = keys.deleted.iter().copied().collect();
        let mut done = Reconciled {
            stream: name.to_string(),
            ..Reconciled::default()
        };
        let mut limit = self.settings.page_size;
        let mut census = Census::new(decl.name, limit, keys.live.len());
        let mut req = census.first();
        let banned = || self.source.health().banned_until.is_some();
        if self.recently_sent(decl.name).contains(&req) && !banned() {
            tracing::info!(stream = name, "this census was sent less than a minute ago");
            return Ok(None);
        }
        // Rows held as deleted that the list shows: written again as listed.
        let mut alive_again = Vec::new();
        // The server's clock minus this machine's, from the first answer.
        let mut offset = 0;
        loop {
            let slot = tokio::select! {
                _ = cancel.cancelled() => return Ok(None),
                s = self.slots.clone().acquire_owned() => s.expect("the slots are never closed"),
            };
            done.requests += 1;
            self.sent(decl.name, &req);
            tracing::debug!(
                stream = name,
                page = req.page,
                limit = req.limit,
                "census request"
            );
            let answer = tokio::select! {
                _ = cancel.cancelled() => return Ok(None),
                a = self.source.fetch(&req) => a,
            };
            drop(slot);
            let page = match answer {
                Ok(p) => p,
                Err(e) if e.kind == FailureKind::Cancelled => return Ok(None),
                // Offsets count in pages of one size: the census starts again.
                Err(e) if e.kind == FailureKind::AskForLess && limit / 2 >= MIN_PAGE => {
                    limit /= 2;
                    census = Census::new(decl.name, limit, keys.live.len());
                    alive_again.clear();
                    req = census.first();
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            if census.started_at.is_none() {
                if let Some(t) = page.server_time {
                    offset = t - Utc::now().timestamp();
                }
            }
            let rows = decl.rows(&page.records);
            let page_keys: Vec<(i64, i64)> = rows.iter().map(|r| (r.account_id, r.id)).collect();
            for (record, key) in page.records.iter().zip(&page_keys) {
                if deleted.contains(key) {
                    alive_again.push(record.clone());
                }
            }
            done.listed += page.records.len() as u64;
            match census.take(&page, &page_keys).map_err(census_error)? {
                Step::Next(next) => req = next,
                Step::Done => break,
            }
        }
        let candidates = census.unseen(&keys.live).map_err(census_error)?;
        done.candidates = candidates.len() as u64;
        let mut found = Vec::new();
        if !candidates.is_empty() {
            let ids: Vec<i64> = candidates.iter().map(|k| k.1).collect();
            let by_id = tokio::select! {
                _ = cancel.cancelled() => return Ok(None),
                f = self.source.fetch_ids(decl.name, &ids) => f,
            };
            let by_id = match by_id {
                Ok(f) => f,
                Err(e) if e.kind == FailureKind::Cancelled => return Ok(None),
                Err(e) => return Err(e.into()),
            };
            done.requests += by_id.requests;
            found = by_id.records;
        }
        // Absent now, so deleted by now (this machine's clock, set to the server's).
        let now = Utc::now().timestamp() + offset;
        let gone: Vec<(i64, i64, i64)> = gone(&candidates, &found)
            .into_iter()
            .map(|(account, id)| (account, id, now))
            .collect();
        let started = census.started_at.unwrap_or(now);
        let listed: Vec<(i64, i64, i64)> = census
            .listed(&keys.deleted)
            .into_iter()
            .map(|(account, id)| (account, id, started))
            .collect();
        found.extend(alive_again);
        let mut tx = self.store.begin().await?;
        super::write::entities(&mut tx, decl, &found).await?;
        done.gone = log::mark(&mut tx, decl.table, Mark::Deleted, &gone).await?;
        let revived = log::mark(&mut tx, decl.table, Mark::Found, &listed).await?;
        tx.commit().await.map_err(|source| StoreError::Query {
            doing: "committing a reconciliation",
            source,
        })?;
        done.found = revived;
        tracing::info!(
            stream = name,
            listed = done.listed,
            candidates = done.candidates,
            gone = done.gone,
            found = done.found,
            requests = done.requests,
            "reconciled the list with the mirror by id"
        );
        Ok(Some(done))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(ids: impl IntoIterator<Item = i64>) -> (Page, Vec<(i64, i64)>) {
        let records: Vec<Record> = ids
            .into_iter()
            .map(|id| Record {
                id,
                updated_at: 1,
                created_at: Some(1),
                raw: serde_json::json!({ "id": id }),
            })
            .collect();
        let keys = records.iter().map(|r| (7, r.id)).collect();
        (
            Page {
                records,
                server_time: Some(1_000),
                ..Page::default()
            },
            keys,
        )
    }

    fn keys(ids: impl IntoIterator<Item = i64>) -> Vec<(i64, i64)> {
        ids.into_iter().map(|id| (7, id)).collect()
    }

    #[test]
    fn a_list_is_read_by_id_until_a_short_page_and_what_it_lacks_is_a_candidate() {
        let mut c = Census::new("leads", 3, 7);
        assert_eq!(c.first().order, Order::IdAsc);
        assert_eq!(
            c.first().updated,
            None,
            "no filter: it may be off for the account"
        );
        let (p, k) = page([1, 2, 3]);
        let Step::Next(next) = c.take(&p, &k).unwrap() else {
            panic!("a full page is not the last")
        };
        assert_eq!(next.page, 2);
        let (p, k) = page([4, 6, 7]);
        assert!(matches!(c.take(&p, &k).unwrap(), Step::Next(_)));
        let (p, k) = page([8]);
        assert_eq!(c.take(&p, &k).unwrap(), Step::Done);
        assert_eq!(c.started_at, Some(1_000));
        assert_eq!(c.unseen(&keys([1, 2, 3, 4, 5, 6, 7])).unwrap(), keys([5]));
        assert_eq!(c.listed(&keys([5, 8, 9])), keys([8]));
    }

    #[test]
    fn an_empty_page_ends_the_list() {
        let mut c = Census::new("leads", 2, 2);
        let (p, k) = page([1, 2]);
        c.take(&p, &k).unwrap();
        let (p, k) = page([]);
        assert_eq!(c.take(&p, &k).unwrap(), Step::Done);
    }

    #[test]
    fn a_server_that_ignores_page_is_an_error_not_a_short_list() {
        let mut c = Census::new("leads", 2, 10);
        let (p, k) = page([1, 2]);
        c.take(&p, &k).unwrap();
        let (p, k) = page([2, 1]);
        assert_eq!(
            c.take(&p, &k).unwrap_err(),
            CensusError::PageIgnored {
                page: 2,
                earlier: 1
            }
        );
    }

    #[test]
    fn a_list_far_longer_than_the_mirror_stops() {
        let mut c = Census::new("leads", 1, 0);
        let mut err = None;
        for id in 1..100 {
            let (p, k) = page([id]);
            if let Err(e) = c.take(&p, &k) {
                err = Some(e);
                break;
            }
        }
        assert!(
            matches!(err, Some(CensusError::TooLong { pages: 10, .. })),
            "{err:?}"
        );
    }

    #[test]
    fn more_than_half_missing_marks_nothing() {
        let mut c = Census::new("leads", 10, 5);
        let (p, k) = page([1, 2]);
        c.take(&p, &k).unwrap();
        assert_eq!(c.unseen(&keys([1, 2, 3, 4])).unwrap(), keys([3, 4]));
        assert_eq!(
            c.unseen(&keys([1, 2, 3, 4, 5])).unwrap_err(),
            CensusError::TooManyMissing {
                missing: 3,
                known: 5
            }
        );
    }

    #[test]
    fn another_account_s_ids_do_not_count_as_listed() {
        let mut c = Census::new("leads", 10, 1);
        let (p, _) = page([1]);
        c.take(&p, &[(8, 1)]).unwrap();
        let err = c.unseen(&keys([1])).unwrap_err().to_string();
        assert!(err.contains("1 of the 1 live rows"), "{err}");
    }

    #[test]
    fn what_the_read_by_id_returns_is_alive() {
        let (p, _) = page([3]);
        assert_eq!(gone(&keys([3, 5]), &p.records), keys([5]));
    }
}
