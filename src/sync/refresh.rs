//! A run of a reference stream: read the whole list, page after page, then store it in one
//! transaction, so that what is no longer listed can be told apart from what was not read.
//!
//! The list is short (a few pages) and read one page at a time. Its end is proven by a page
//! shorter than asked that the server does not contradict (reference lists say how many
//! pages they have), or by an empty page; a server that sends the same page again whatever
//! `page` says ends the run with an error, never with half a list taken for the whole.

use crate::source::{Page, Record};

/// The most pages one reference list may have; beyond it something is wrong.
pub const MAX_PAGES: u32 = 200;

/// What the pages read so far prove.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// Ask for this page.
    Page(u32),
    /// The list is complete.
    Done,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RefreshError {
    #[error(
        "page {page} repeats page {earlier} exactly: the server ignores `page`, so only the \
         first {limit} entries could be read and the rest of the list cannot be proven"
    )]
    PageIgnored { page: u32, earlier: u32, limit: u32 },
    #[error("the list goes on past {MAX_PAGES} pages of {limit}; it is not reference data")]
    TooLong { limit: u32 },
}

/// The reading of one list: the pages so far and where to go next.
#[derive(Debug)]
pub struct Listing {
    /// Entries per page asked for (`None`: the endpoint is not paged).
    limit: Option<u32>,
    page: u32,
    records: Vec<Record>,
    /// Ids of each page read, to catch a server that ignores `page`.
    pages: Vec<Vec<i64>>,
    pub account_id: Option<i64>,
    pub server_time: Option<i64>,
    /// Things worth a warning (a page longer than asked).
    pub notes: Vec<String>,
}

impl Listing {
    pub fn new(limit: Option<u32>) -> Self {
        Listing {
            limit,
            page: 1,
            records: Vec::new(),
            pages: Vec::new(),
            account_id: None,
            server_time: None,
            notes: Vec::new(),
        }
    }

    /// The limit to send (`0`: none, the endpoint is not paged).
    pub fn limit(&self) -> u32 {
        self.limit.unwrap_or(0)
    }

    /// Takes the answer to the page last asked for.
    pub fn take(&mut self, page: Page) -> Result<Next, RefreshError> {
        self.server_time = self.server_time.or(page.server_time);
        self.account_id = self.account_id.or(page.account_id);
        let n = page.records.len() as u32;
        let Some(limit) = self.limit else {
            self.records.extend(page.records);
            return Ok(Next::Done);
        };
        if n == 0 {
            return Ok(Next::Done);
        }
        let ids: Vec<i64> = page.records.iter().map(|r| r.id).collect();
        if let Some(earlier) = self.pages.iter().position(|p| *p == ids) {
            return Err(RefreshError::PageIgnored {
                page: self.page,
                earlier: earlier as u32 + 1,
                limit,
            });
        }
        if n > limit {
            self.notes.push(format!(
                "page {} has {n} entries although {limit} were asked for",
                self.page
            ));
        }
        self.pages.push(ids);
        self.records.extend(page.records);
        let more_said = page.page_count.map(|c| c > self.page);
        let more = match more_said {
            Some(more) => more,
            None => n >= limit,
        };
        if more_said == Some(true) && n < limit {
            self.notes.push(format!(
                "page {} has {n} of {limit} entries but the server counts {} pages: reading on",
                self.page,
                page.page_count.unwrap_or(0)
            ));
        }
        if !more {
            return Ok(Next::Done);
        }
        if self.page >= MAX_PAGES {
            return Err(RefreshError::TooLong { limit });
        }
        self.page += 1;
        Ok(Next::Page(self.page))
    }

    /// Every entry read, in the order listed.
    pub fn into_records(self) -> Vec<Record> {
        self.records
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn page(ids: std::ops::Range<i64>, page_count: Option<u32>) -> Page {
        Page {
            records: ids
                .map(|id| Record {
                    id,
                    updated_at: 0,
                    created_at: None,
                    raw: json!({"id": id}),
                })
                .collect(),
            page_count,
            ..Page::default()
        }
    }

    #[test]
    fn a_short_page_ends_the_list() {
        let mut l = Listing::new(Some(50));
        assert_eq!(l.take(page(0..50, None)), Ok(Next::Page(2)));
        assert_eq!(l.take(page(50..60, None)), Ok(Next::Done));
        assert_eq!(l.into_records().len(), 60);
    }

    /// Field definitions list at most 50 per page whatever `limit` says: a page of 50 when
    /// 250 were asked for is not the last when the server counts more pages.
    #[test]
    fn a_capped_page_is_not_taken_for_the_last_when_the_server_counts_more() {
        let mut l = Listing::new(Some(250));
        assert_eq!(l.take(page(0..50, Some(2))), Ok(Next::Page(2)));
        assert_eq!(l.take(page(50..61, Some(2))), Ok(Next::Done));
        assert_eq!(l.into_records().len(), 61);
    }

    #[test]
    fn a_full_last_page_is_proven_by_the_count_or_by_an_empty_page() {
        let mut l = Listing::new(Some(50));
        assert_eq!(l.take(page(0..50, Some(1))), Ok(Next::Done));
        let mut l = Listing::new(Some(50));
        assert_eq!(l.take(page(0..50, None)), Ok(Next::Page(2)));
        assert_eq!(l.take(Page::default()), Ok(Next::Done));
    }

    #[test]
    fn a_server_that_ignores_page_is_an_error_not_half_a_list() {
        let mut l = Listing::new(Some(50));
        l.take(page(0..50, None)).unwrap();
        let err = l.take(page(0..50, None)).unwrap_err();
        assert_eq!(
            err,
            RefreshError::PageIgnored {
                page: 2,
                earlier: 1,
                limit: 50
            }
        );
        assert!(err.to_string().contains("ignores `page`"));
    }

    #[test]
    fn an_unpaged_endpoint_is_one_request() {
        let mut l = Listing::new(None);
        assert_eq!(l.take(page(0..3, None)), Ok(Next::Done));
    }
}
