//! The walk of an append-only log (Kommo's events): everything created up to `through` is
//! stored; each run reads the closed window `[through + 1, server now − lag]` page by page.
//!
//! Nothing in a log changes and nothing is added to a closed window of it (its upper end lies
//! `lag` behind the server's clock, like an entity window), so the window's list is fixed and
//! page numbers count in it whatever order the server keeps: every page of it is read until
//! one comes back empty. A page shorter than asked does not end the window (a server may cap
//! its pages silently; Kommo's events give 50 to a limit above 100), an empty one does.
//!
//! Where the pages prove the list sorted by `created_at` (each page ascending, each starting
//! where the last ended), everything before the last page's newest second is stored, so a
//! long backfill moves `through` page by page and a crash costs at most a page. Items outside
//! the asked range prove that the filter is not applied: the walk stops with an error that
//! names it, rather than take a scan of the newest events for the whole window.

use crate::source::{Bounds, Order, Page, PageRequest, Record};

use super::walk::{ClockBound, WalkError};

/// How far the log's walk has come, as stored in the stream's cursor.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LogCursor {
    /// Unix seconds, server time: every entry created up to this is stored. `None`: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub through: Option<i64>,
    /// The server's clock minus this machine's at the last run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clock_skew: Option<i64>,
}

/// What a page proved.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// Ask for this next.
    Next(PageRequest),
    /// The window is read.
    Done,
}

#[derive(Debug)]
pub struct LogWalk {
    stream: &'static str,
    limit: u32,
    lag: i64,
    clock: Option<ClockBound>,
    cursor: LogCursor,
    /// First second of the window (everything before is stored).
    from: i64,
    /// Last second of the window, from the server's clock at the probe; `None` until then.
    upper: Option<i64>,
    page: u32,
    /// The newest second of the pages read, while they prove the list sorted.
    sorted_up_to: Option<Option<i64>>,
    /// How many pages in a row proved it; one short page could be sorted by luck.
    sorted_pages: u32,
    /// Ids of the last page, to catch a server that ignores `page`.
    last_page: Vec<String>,
}

impl LogWalk {
    /// A walk that goes on from `cursor`.
    pub fn new(
        stream: &'static str,
        cursor: LogCursor,
        limit: u32,
        lag: i64,
        clock: Option<ClockBound>,
    ) -> Self {
        let from = cursor.through.map_or(0, |t| t + 1);
        LogWalk {
            stream,
            limit,
            lag,
            clock,
            cursor,
            from,
            upper: None,
            page: 1,
            sorted_up_to: Some(None),
            sorted_pages: 0,
            last_page: Vec::new(),
        }
    }

    /// The first request: the probe, everything from the window's start on, open-ended.
    /// Its answer gives the server's clock, which closes the window; an empty answer proves
    /// nothing new, so a quiet log costs one request a run.
    pub fn first(&self) -> PageRequest {
        let mut req = self.request();
        if let Some(b) = req.created.as_mut() {
            b.to = None;
        }
        req
    }

    /// Where every entry is stored, as it stands now.
    pub fn cursor(&self) -> LogCursor {
        self.cursor.clone()
    }

    fn request(&self) -> PageRequest {
        PageRequest {
            stream: self.stream,
            updated: None,
            // One second wider on each side: whether the API includes its ends is not
            // documented; what lies outside is dropped here.
            created: Some(Bounds {
                from: Some(self.from - 1),
                to: self.upper.map(|u| u + 1),
            }),
            order: Order::CreatedAtAsc,
            page: self.page,
            limit: self.limit,
            if_modified_since: None,
        }
    }

    fn inside(&self, records: Vec<Record>, upper: i64) -> Vec<Record> {
        let from = self.from;
        records
            .into_iter()
            .filter(|r| r.created_at.is_some_and(|c| c >= from && c <= upper))
            .collect()
    }

    /// Takes the answer to the last request: the entries to store and what to do next.
    /// The cursor ([`LogWalk::cursor`]) then covers what the caller stores with them.
    pub fn take(&mut self, page: Page) -> Result<(Vec<Record>, Step), WalkError> {
        let Some(upper) = self.upper else {
            return self.probed(page);
        };
        let ids: Vec<String> = page.records.iter().map(key).collect();
        if page.records.is_empty() {
            self.cursor.through = Some(upper);
            return Ok((Vec::new(), Step::Done));
        }
        if self.page > 1 && ids == self.last_page {
            return Err(WalkError::Unhonoured {
                stream: self.stream,
                param: super::walk::Param::Page,
                detail: format!("page {} repeats page {}", self.page, self.page - 1),
            });
        }
        self.check_range(&page.records, Some(upper))?;
        // Order evidence: this page ascends and starts where the last one ended.
        let seconds: Vec<i64> = page.records.iter().filter_map(|r| r.created_at).collect();
        self.sorted_up_to = match self.sorted_up_to {
            Some(prev)
                if seconds.windows(2).all(|w| w[0] <= w[1])
                    && prev.is_none_or(|p| seconds[0] >= p) =>
            {
                Some(seconds.last().copied())
            }
            _ => None,
        };
        if self.sorted_up_to.is_some() {
            self.sorted_pages += 1;
        }
        if let (Some(Some(newest)), 2..) = (self.sorted_up_to, self.sorted_pages) {
            // Everything before the newest second is stored; that second may go on.
            let proven = newest.min(upper + 1) - 1;
            if self.cursor.through.is_none_or(|t| proven > t) && proven >= self.from - 1 {
                self.cursor.through = Some(proven);
            }
        }
        self.last_page = ids;
        self.page += 1;
        let kept = self.inside(page.records, upper);
        Ok((kept, Step::Next(self.request())))
    }

    /// The probe's answer: the server's clock closes the window.
    fn probed(&mut self, page: Page) -> Result<(Vec<Record>, Step), WalkError> {
        let server = page.server_time.ok_or(WalkError::NoServerTime)?;
        if let Some(c) = self.clock {
            let skew = server - c.local_now;
            if let Some(before) = self.cursor.clock_skew {
                if (skew - before).abs() > c.max_jump {
                    return Err(WalkError::ServerClock {
                        server,
                        expected: c.local_now + before,
                        max_jump: c.max_jump,
                    });
                }
            }
            self.cursor.clock_skew = Some(skew);
        }
        // One second more than the lag: the second asked beyond the window is closed too.
        let upper = server - self.lag - 1;
        if upper < self.from {
            return Ok((Vec::new(), Step::Done));
        }
        self.check_range(&page.records, None)?;
        if page.records.is_empty() {
            self.cursor.through = Some(upper);
            return Ok((Vec::new(), Step::Done));
        }
        self.upper = Some(upper);
        // What the probe found is stored (entries never change); the closed window is then
        // read from its first page, as the probe's list was still open at its end.
        let kept = self.inside(page.records, upper);
        Ok((kept, Step::Next(self.request())))
    }

    /// The range was asked one second wider on each side: what lies there is dropped, what
    /// lies beyond it proves the filter off.
    fn check_range(&self, records: &[Record], upper: Option<i64>) -> Result<(), WalkError> {
        let outside = records
            .iter()
            .filter(|r| {
                r.created_at
                    .is_none_or(|c| c < self.from - 1 || upper.is_some_and(|u| c > u + 1))
            })
            .count();
        if outside == 0 {
            return Ok(());
        }
        Err(WalkError::Unhonoured {
            stream: self.stream,
            param: super::walk::Param::FilterCreatedAt,
            detail: format!(
                "{outside} of {} entries lie outside the asked created_at range from {}",
                records.len(),
                self.from
            ),
        })
    }
}

/// The string id of a log entry (its `raw.id`).
fn key(r: &Record) -> String {
    match r.raw.get("id") {
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn entry(id: &str, at: i64) -> Record {
        Record {
            id: 0,
            updated_at: at,
            created_at: Some(at),
            raw: json!({"id": id, "created_at": at}),
        }
    }

    fn page(entries: Vec<Record>, now: i64) -> Page {
        Page {
            records: entries,
            server_time: Some(now),
            ..Page::default()
        }
    }

    fn walk(through: Option<i64>) -> LogWalk {
        let cursor = LogCursor {
            through,
            clock_skew: None,
        };
        LogWalk::new("events", cursor, 2, 5, None)
    }

    #[test]
    fn a_quiet_log_costs_one_request() {
        let mut w = walk(Some(50));
        let probe = w.first();
        assert_eq!(
            probe.created,
            Some(Bounds {
                from: Some(50),
                to: None
            })
        );
        assert_eq!(w.take(page(vec![], 100)).unwrap().1, Step::Done);
        assert_eq!(w.cursor().through, Some(94));
    }

    #[test]
    fn a_window_is_read_until_an_empty_page_and_then_proven_whole() {
        let mut w = walk(None);
        // The probe closes the window at the server's clock minus the lag and one second.
        let (kept, step) = w
            .take(page(vec![entry("a", 10), entry("z", 99)], 100))
            .unwrap();
        assert_eq!(kept.len(), 1, "what lies beyond the window waits");
        let Step::Next(first) = step else { panic!() };
        assert_eq!(
            (first.page, first.created),
            (
                1,
                Some(Bounds {
                    from: Some(-1),
                    to: Some(95)
                })
            )
        );
        let (got, step) = w
            .take(page(vec![entry("a", 10), entry("b", 20)], 100))
            .unwrap();
        assert_eq!(got.len(), 2);
        assert!(matches!(step, Step::Next(ref r) if r.page == 2));
        assert_eq!(w.cursor().through, None, "one sorted page may be luck");
        // A short page does not end the window; two sorted pages in a row prove everything
        // before the newest second stored.
        let (_, step) = w.take(page(vec![entry("c", 30)], 101)).unwrap();
        assert!(matches!(step, Step::Next(ref r) if r.page == 3));
        assert_eq!(w.cursor().through, Some(29));
        let (_, step) = w.take(page(vec![], 101)).unwrap();
        assert_eq!(step, Step::Done);
        assert_eq!(w.cursor().through, Some(94));
    }

    #[test]
    fn unsorted_pages_prove_nothing_until_the_window_ends() {
        let mut w = walk(Some(9));
        w.take(page(vec![entry("b", 40)], 100)).unwrap();
        w.take(page(vec![entry("b", 40), entry("a", 12)], 100))
            .unwrap();
        assert_eq!(w.cursor().through, Some(9));
        w.take(page(vec![entry("c", 50), entry("d", 60)], 100))
            .unwrap();
        assert_eq!(
            w.cursor().through,
            Some(9),
            "order once broken stays unproven"
        );
        w.take(page(vec![], 100)).unwrap();
        assert_eq!(w.cursor().through, Some(94));
    }

    #[test]
    fn entries_outside_the_range_name_the_filter() {
        let mut w = walk(Some(50));
        w.take(page(vec![entry("a", 60)], 100)).unwrap();
        let (kept, _) = w
            .take(page(vec![entry("a", 50), entry("b", 60)], 100))
            .unwrap();
        assert_eq!(
            kept.len(),
            1,
            "the second below the window is asked, not kept"
        );
        let err = w
            .take(page(vec![entry("c", 10), entry("d", 60)], 100))
            .unwrap_err();
        assert!(err.to_string().contains("filter[created_at]"), "{err}");
    }

    #[test]
    fn a_repeated_page_names_the_page_parameter() {
        let mut w = walk(None);
        w.take(page(vec![entry("a", 10)], 100)).unwrap();
        w.take(page(vec![entry("a", 10), entry("b", 20)], 100))
            .unwrap();
        let err = w
            .take(page(vec![entry("a", 10), entry("b", 20)], 100))
            .unwrap_err();
        assert!(err.to_string().contains("page"), "{err}");
    }

    #[test]
    fn a_server_clock_behind_the_cursor_asks_nothing_more() {
        let mut w = walk(Some(200));
        assert_eq!(w.take(page(vec![], 100)).unwrap().1, Step::Done);
        assert_eq!(w.cursor().through, Some(200));
    }
}
