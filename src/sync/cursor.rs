//! The per-stream cursor and the walk's pure logic: which page to ask for next, and what a
//! page proves. No I/O here, so every rule can be tested on its own.
//!
//! # The model
//! Everything with `updated_at <= watermark` is stored, except what lies in a `pending`
//! segment. A segment `[from, to]` is a window of `updated_at` still being walked.
//!
//! A run first asks for everything above the watermark (no upper bound: one request in the
//! steady state). The answer's `Date` fixes the run's upper end, `upper = server time − lag`;
//! the window `(watermark, upper]` becomes a segment, and the watermark moves to `upper`
//! in the same transaction as the first page. Windows are *closed*: only entities already
//! visible can be in them, and an entity edited again leaves the window (its new
//! `updated_at` is above `upper`) to be picked up by a later run. So a window only shrinks.
//!
//! A window is walked with a keyset, so that entities leaving it never make the walk skip
//! one (page numbers would):
//! * streams ordered by `updated_at`: the key is `updated_at`; a full page moves `from` to
//!   its newest second, and the ids already stored at that second are skipped;
//! * streams that cannot be (Kommo's tasks): the key is `created_at`, inside the fixed
//!   `updated_at` window; the same rules apply to `created_from`.
//!
//! When a full page ends in a crowded `updated_at` second (a bulk edit put many entities on
//! it), the rest of the window is walked by `created_at` like tasks: the `updated_at` keyset
//! would re-read the crowd page after page, and cannot pass a second holding more than a
//! page at all. A full page that shares one `created_at` second as well walks it by page
//! number ordered by id (see [`SecondWalk`]). Large windows are split between workers
//! ([`Cursor::split_largest`]); each segment's progress is committed with its page, so a
//! crash re-fetches at most the pages in flight.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};

use crate::source::{Order, PageRequest, Record, StreamSpec};

/// What is stored in `sync_state.cursor`; versioned so the format can evolve.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "version")]
pub enum StoredCursor {
    #[serde(rename = "1")]
    V1(Cursor),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Cursor {
    /// Unix seconds, server time; -1 before the first run.
    pub watermark: i64,
    #[serde(default)]
    pub pending: Vec<Segment>,
}

impl Default for Cursor {
    fn default() -> Self {
        Cursor {
            watermark: -1,
            pending: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Segment {
    /// `updated_at` window, inclusive.
    pub from: i64,
    pub to: i64,
    /// Walks keyed on `created_at`: everything in the window created before this is stored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_from: Option<i64>,
    /// Ids already stored at the key's current second (`from`, or `created_from`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub seen: Vec<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub second: Option<SecondWalk>,
    /// In-memory identity while a run works on it; not stored.
    #[serde(skip)]
    pub key: u64,
    /// Estimated entities left, from the last page; splitting is only worth a request where
    /// enough is left. Not stored.
    #[serde(skip)]
    pub remaining: Option<f64>,
    /// Where to split (an `updated_at` that halves what is left), when known. Not stored.
    #[serde(skip)]
    pub split_at: Option<i64>,
}

/// Walking one `created_at` second (inside the window) that holds more entities than a
/// page, by page number ordered by id: the last resort, for entities that share both their
/// `updated_at` and their `created_at` second.
///
/// Page numbers over a list that changes can skip items. This list can only shrink (the
/// window is closed, so nothing can join it; an entity edited again leaves it), and a
/// shrink during a pass shows as a smaller size at the end of the pass. So the walk repeats
/// passes until one finds nothing new *and* ends at the same size as the previous one: then
/// nothing left during that pass, so it skipped nothing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecondWalk {
    pub page: u32,
    /// Page size of this pass (a pass must keep one size for its offsets to mean anything).
    pub limit: u32,
    pub found_new: bool,
    pub last_pass_size: Option<u64>,
}

impl SecondWalk {
    fn start(limit: u32) -> Self {
        SecondWalk {
            page: 1,
            limit,
            found_new: false,
            last_pass_size: None,
        }
    }
}

/// The outcome of applying a page to a segment.
#[derive(Debug, Default)]
pub struct Applied {
    /// Records to store (inside the segment, not stored before).
    pub keep: Vec<Record>,
    /// The segment is complete and leaves the cursor.
    pub done: bool,
}

/// A full page whose newest `updated_at` second holds at least this many entities (a tenth
/// of a full page) switches the segment to the `created_at` walk: the next keyset page would
/// re-read all of them, and the second probably holds more (ordinary data shares a second
/// between two or three entities at most).
const CROWDED_SECOND: usize = 25;

fn created(r: &Record) -> i64 {
    r.created_at.unwrap_or(0)
}

impl Segment {
    pub fn new(from: i64, to: i64) -> Self {
        Segment {
            from,
            to,
            created_from: None,
            seen: Vec::new(),
            second: None,
            key: 0,
            remaining: None,
            split_at: None,
        }
    }

    /// The request that moves this segment forward.
    pub fn plan(&self, stream: &StreamSpec, limit: u32) -> PageRequest {
        let base = PageRequest {
            stream: stream.name,
            from: self.from,
            to: Some(self.to),
            created_from: None,
            created_to: None,
            order: Order::UpdatedAtAsc,
            page: 1,
            limit,
            if_modified_since: if_modified_since(self.from),
        };
        if stream.ordered_by_updated_at && self.created_from.is_none() {
            return base;
        }
        // Keyed on `created_at`, over the rest of the window.
        let base = PageRequest {
            created_from: self.created_from,
            order: Order::CreatedAtAsc,
            ..base
        };
        match &self.second {
            None => base,
            Some(sw) => PageRequest {
                created_to: self.created_from,
                order: Order::IdAsc,
                page: sw.page,
                limit: sw.limit,
                ..base
            },
        }
    }

    /// Applies the answer to `req` (planned from this segment for `stream`, whose `to` may
    /// have shrunk since by a split) and returns what to store.
    pub fn apply(
        &mut self,
        stream: &StreamSpec,
        req: &PageRequest,
        records: Vec<Record>,
    ) -> Applied {
        let full = records.len() as u64 >= u64::from(req.limit);
        if self.second.is_some() {
            return self.apply_second(req, records, full);
        }
        match req.order {
            Order::UpdatedAtAsc if stream.ordered_by_updated_at => {
                self.apply_updated_keyset(records, full)
            }
            _ => self.apply_created_keyset(records, full, req.limit),
        }
    }

    /// The `created_at` walk reached the end of the window: the segment is complete.
    fn created_walk_done(&mut self) -> bool {
        self.seen.clear();
        self.created_from = None;
        true
    }

    /// Whether its pages are ordered by `created_at`. Such a page spreads over the whole
    /// `updated_at` window, so a split while one is in flight would drop the part of it that
    /// lands in the other half: these segments are split between pages, by their owner.
    pub fn keyed_on_created(&self, stream: &StreamSpec) -> bool {
        !stream.ordered_by_updated_at || self.created_from.is_some()
    }

    fn in_window(&self, r: &Record) -> bool {
        r.updated_at >= self.from && r.updated_at <= self.to
    }

    fn apply_updated_keyset(&mut self, records: Vec<Record>, full: bool) -> Applied {
        let seen: HashSet<i64> = self.seen.iter().copied().collect();
        // Ascending order: once an item beyond `to` shows up, everything inside came before it.
        let beyond = records.iter().any(|r| r.updated_at > self.to);
        let newest = records.iter().map(|r| r.updated_at).max();
        let keep: Vec<Record> = records
            .into_iter()
            .filter(|r| self.in_window(r) && !(r.updated_at == self.from && seen.contains(&r.id)))
            .collect();
        if !full || beyond {
            return Applied { keep, done: true };
        }
        let newest = newest.expect("a full page has records");
        let rate = keep.len().max(1) as f64 / (newest - self.from + 1) as f64;
        self.remaining = Some(rate * (self.to - newest) as f64);
        self.split_at = None;
        // Ascending order and a full page: everything in the window before `newest` is in
        // this page or was stored before it.
        let at_newest: Vec<i64> = keep
            .iter()
            .filter(|r| r.updated_at == newest)
            .map(|r| r.id)
            .collect();
        let moved = newest > self.from;
        self.from = newest;
        if moved && at_newest.len() < CROWDED_SECOND {
            self.seen = at_newest;
        } else {
            // A crowded second (a bulk edit), or a whole page in one: walk the rest of the
            // window by `created_at`, a keyset again, so entities leaving the window cannot
            // make us skip one. What is stored at `newest` comes back once and is rewritten
            // as a no-op.
            self.seen.clear();
            self.created_from = Some(-1);
        }
        Applied { keep, done: false }
    }

    fn apply_created_keyset(&mut self, records: Vec<Record>, full: bool, limit: u32) -> Applied {
        let seen: HashSet<i64> = self.seen.iter().copied().collect();
        let at = self.created_from;
        let newest = records.iter().map(created).max();
        let mut keep: Vec<Record> = records
            .into_iter()
            .filter(|r| !(Some(created(r)) == at && seen.contains(&r.id)))
            .collect();
        if !full {
            keep.retain(|r| self.in_window(r));
            return Applied {
                done: self.created_walk_done(),
                keep,
            };
        }
        let newest = newest.expect("a full page has records");
        // (-1 marks a walk that starts before any entity: no use for a rate.)
        let start = at
            .filter(|&c| c >= 0)
            .unwrap_or_else(|| keep.iter().map(created).min().unwrap_or(newest));
        // What is left has `created_at` in (newest, to]: estimate it from this page's rate,
        // and split where this page's window items have their median `updated_at`.
        let rate = keep.len().max(1) as f64 / (newest - start + 1) as f64;
        self.remaining = Some(rate * (self.to - newest).max(0) as f64);
        let mut times: Vec<i64> = keep
            .iter()
            .filter(|r| self.in_window(r))
            .map(|r| r.updated_at)
            .collect();
        times.sort_unstable();
        self.split_at = times.get(times.len() / 2).copied();
        if at.is_none_or(|c| newest > c) {
            self.created_from = Some(newest);
            self.seen = keep
                .iter()
                .filter(|r| created(r) == newest)
                .map(|r| r.id)
                .collect();
        } else {
            self.seen.extend(keep.iter().map(|r| r.id));
            self.second = Some(SecondWalk::start(limit));
        }
        keep.retain(|r| self.in_window(r));
        Applied { keep, done: false }
    }

    fn apply_second(&mut self, req: &PageRequest, records: Vec<Record>, full: bool) -> Applied {
        let tie = self.created_from.unwrap_or(0);
        let mut seen: HashSet<i64> = self.seen.iter().copied().collect();
        let count = records.len() as u64;
        let keep: Vec<Record> = records
            .into_iter()
            .filter(|r| created(r) == tie && self.in_window(r))
            .filter(|r| seen.insert(r.id))
            .collect();
        self.seen.extend(keep.iter().map(|r| r.id));
        let sw = self.second.as_mut().expect("in a second walk");
        sw.found_new |= !keep.is_empty();
        if full {
            sw.page += 1;
            return Applied { keep, done: false };
        }
        let size = u64::from(req.page - 1) * u64::from(req.limit) + count;
        if sw.found_new || sw.last_pass_size != Some(size) {
            *sw = SecondWalk {
                page: 1,
                limit: sw.limit,
                found_new: false,
                last_pass_size: Some(size),
            };
            return Applied { keep, done: false };
        }
        // The second is complete: move past it. `created_at <= updated_at`, so past the
        // window's end nothing is left.
        self.second = None;
        self.seen.clear();
        if tie + 1 > self.to {
            return Applied {
                done: self.created_walk_done(),
                keep,
            };
        }
        self.created_from = Some(tie + 1);
        Applied { keep, done: false }
    }

    /// A 504 asked for smaller pages: a second walk must restart its pass with the new size.
    pub fn page_size_changed(&mut self, limit: u32) {
        if let Some(sw) = &mut self.second {
            *sw = SecondWalk {
                page: 1,
                limit,
                found_new: false,
                last_pass_size: sw.last_pass_size,
            };
        }
    }
}

/// `If-Modified-Since` one second before `from`: right whether the server compares with
/// `>` or `>=` (and harmless if it ignores the header).
pub fn if_modified_since(from: i64) -> Option<i64> {
    (from > 0).then_some(from - 1)
}

impl Cursor {
    /// The first request of a run: everything above the watermark, no upper bound.
    pub fn probe(&self, stream: &StreamSpec, limit: u32) -> PageRequest {
        let from = self.watermark + 1;
        PageRequest {
            stream: stream.name,
            from,
            to: None,
            created_from: None,
            created_to: None,
            order: if stream.ordered_by_updated_at {
                Order::UpdatedAtAsc
            } else {
                Order::CreatedAtAsc
            },
            page: 1,
            limit,
            if_modified_since: if_modified_since(from),
        }
    }

    /// Applies the probe's answer: opens the window `(watermark, upper]`, keeps what the
    /// page proves, and moves the watermark to `upper`. Returns the records to store.
    ///
    /// The probe had no upper bound, so it asked for a superset of the window; the page
    /// still is a correct first step of the window's walk: it holds every entity of the
    /// superset, hence of the window, that sorts before its last key.
    pub fn apply_probe(
        &mut self,
        req: &PageRequest,
        records: Vec<Record>,
        upper: i64,
        key: u64,
    ) -> Vec<Record> {
        let from = self.watermark + 1;
        if upper < from {
            // The server's clock is behind the watermark (or the lag grew): nothing to do.
            return Vec::new();
        }
        let mut tail = Segment {
            key,
            ..Segment::new(from, upper)
        };
        let stream = StreamSpec {
            name: req.stream,
            ordered_by_updated_at: req.order == Order::UpdatedAtAsc,
        };
        let applied = tail.apply(&stream, req, records);
        self.watermark = upper;
        if !applied.done {
            self.pending.push(tail);
        }
        applied.keep
    }

    /// Splits, among the `eligible` segments, the one with the most data left, if at least
    /// `min_items` are estimated to be left in it; the new upper part gets `new_key`.
    /// Splitting costs a request, so thin windows are never split.
    pub fn split_largest(
        &mut self,
        eligible: impl Fn(&Segment) -> bool,
        new_key: u64,
        min_items: f64,
    ) -> Option<u64> {
        let seg = self
            .pending
            .iter_mut()
            .filter(|s| eligible(s) && s.to - s.from >= 2 && s.second.is_none())
            .filter(|s| s.remaining.unwrap_or(0.0) >= min_items)
            .max_by(|a, b| {
                a.remaining
                    .unwrap_or(0.0)
                    .total_cmp(&b.remaining.unwrap_or(0.0))
            })?;
        let mid = seg
            .split_at
            .filter(|m| *m > seg.from && *m < seg.to)
            .unwrap_or(seg.from + (seg.to - seg.from) / 2);
        let half = seg.remaining.map(|r| r / 2.0);
        // A `created_at` walk has stored everything created before `created_from` across the
        // whole window: the upper half goes on from there instead of starting over.
        let upper = Segment {
            key: new_key,
            remaining: half,
            created_from: seg.created_from,
            seen: if seg.created_from.is_some() {
                seg.seen.clone()
            } else {
                Vec::new()
            },
            ..Segment::new(mid + 1, seg.to)
        };
        seg.to = mid;
        seg.remaining = half;
        seg.split_at = None;
        self.pending.push(upper);
        Some(new_key)
    }

    pub fn segment_mut(&mut self, key: u64) -> Option<&mut Segment> {
        self.pending.iter_mut().find(|s| s.key == key)
    }

    pub fn remove(&mut self, key: u64) {
        self.pending.retain(|s| s.key != key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const LEADS: StreamSpec = StreamSpec {
        name: "leads",
        ordered_by_updated_at: true,
    };
    const TASKS: StreamSpec = StreamSpec {
        name: "tasks",
        ordered_by_updated_at: false,
    };

    fn rec(id: i64, t: i64) -> Record {
        Record {
            id,
            updated_at: t,
            created_at: Some(t),
            raw: json!({"id": id, "updated_at": t}),
        }
    }

    fn task(id: i64, created: i64, updated: i64) -> Record {
        Record {
            id,
            updated_at: updated,
            created_at: Some(created),
            raw: json!({"id": id}),
        }
    }

    fn ids(rs: &[Record]) -> Vec<i64> {
        rs.iter().map(|r| r.id).collect()
    }

    #[test]
    fn a_short_probe_closes_the_window_in_one_request() {
        let mut c = Cursor {
            watermark: 100,
            pending: vec![],
        };
        let req = c.probe(&LEADS, 250);
        assert_eq!(
            (req.from, req.to, req.if_modified_since),
            (101, None, Some(100))
        );
        let keep = c.apply_probe(&req, vec![rec(1, 150), rec(2, 400)], 300, 1);
        assert_eq!(ids(&keep), vec![1], "400 is beyond upper");
        assert_eq!(
            c,
            Cursor {
                watermark: 300,
                pending: vec![]
            }
        );
    }

    #[test]
    fn a_clock_behind_the_watermark_changes_nothing() {
        let mut c = Cursor {
            watermark: 500,
            pending: vec![],
        };
        let req = c.probe(&LEADS, 250);
        assert!(c.apply_probe(&req, vec![rec(1, 501)], 400, 1).is_empty());
        assert_eq!(c.watermark, 500);
    }

    #[test]
    fn a_full_keyset_page_moves_from_to_its_newest_second() {
        let mut s = Segment::new(0, 1000);
        let req = s.plan(&LEADS, 3);
        let applied = s.apply(&LEADS, &req, vec![rec(1, 10), rec(2, 20), rec(3, 20)]);
        assert!(!applied.done);
        assert_eq!((s.from, s.seen.clone()), (20, vec![2, 3]));
        // The next page starts at 20 again; ids 2 and 3 are skipped, not stored twice.
        let req = s.plan(&LEADS, 3);
        let applied = s.apply(&LEADS, &req, vec![rec(3, 20), rec(2, 20), rec(4, 21)]);
        assert_eq!(ids(&applied.keep), vec![4]);
        assert_eq!(s.from, 21);
    }

    #[test]
    fn a_page_all_in_one_second_walks_the_rest_of_the_window_by_created_at() {
        let mut s = Segment::new(50, 1000);
        let req = s.plan(&LEADS, 2);
        s.apply(&LEADS, &req, vec![task(7, 3, 50), task(5, 4, 50)]);
        let req = s.plan(&LEADS, 2);
        assert_eq!(
            (req.order, req.from, req.to, req.created_from),
            (Order::CreatedAtAsc, 50, Some(1000), Some(-1))
        );
        s.apply(&LEADS, &req, vec![task(7, 3, 50), task(5, 4, 50)]);
        let req = s.plan(&LEADS, 2);
        assert_eq!(req.created_from, Some(4));
        let applied = s.apply(&LEADS, &req, vec![task(8, 12, 700)]);
        assert_eq!(ids(&applied.keep), vec![8], "a later second, same walk");
        assert!(
            applied.done,
            "a short created_at page closes the window, later seconds included"
        );
    }

    #[test]
    fn a_crowded_newest_second_switches_to_created_at_where_it_begins() {
        let mut s = Segment::new(10, 1000);
        // A full page of 30 whose newest second (40) holds 26: a bulk edit.
        let mut page = vec![rec(1, 10), rec(2, 20), rec(3, 30), rec(4, 35)];
        page.extend((100..126).map(|id| task(id, id, 40)));
        let req = s.plan(&LEADS, 30);
        let applied = s.apply(&LEADS, &req, page);
        assert_eq!(applied.keep.len(), 30);
        let next = s.plan(&LEADS, 30);
        assert_eq!(
            (next.order, next.from, next.to, next.created_from),
            (Order::CreatedAtAsc, 40, Some(1000), Some(-1)),
            "everything before second 40 is stored; the crowd and the rest go by created_at"
        );
        // A second shared by a few entities only stays on the updated_at keyset.
        let mut s = Segment::new(10, 1000);
        let mut page: Vec<Record> = (1..28).map(|id| rec(id, 10 + id)).collect();
        page.extend([rec(50, 40), rec(51, 40), rec(52, 40)]);
        s.apply(&LEADS, &s.plan(&LEADS, 30), page);
        let next = s.plan(&LEADS, 30);
        assert_eq!((next.order, next.from), (Order::UpdatedAtAsc, 40));
        assert_eq!(s.seen, vec![50, 51, 52]);
    }

    #[test]
    fn a_second_shared_by_both_keys_is_walked_by_id_until_a_pass_is_stable() {
        let mut s = Segment::new(0, 100);
        s.created_from = Some(7);
        let req = s.plan(&TASKS, 2);
        s.apply(&TASKS, &req, vec![task(1, 7, 50), task(2, 7, 60)]);
        // Pass 1 ordered by id: [1,2], [3] -> found 3 -> another pass.
        let sw = s.plan(&TASKS, 2);
        assert_eq!(
            (sw.order, sw.created_from, sw.created_to),
            (Order::IdAsc, Some(7), Some(7))
        );
        s.apply(&TASKS, &sw, vec![task(1, 7, 50), task(2, 7, 60)]);
        let p2 = s.plan(&TASKS, 2);
        assert_eq!(p2.page, 2);
        assert_eq!(
            ids(&s.apply(&TASKS, &p2, vec![task(3, 7, 70)]).keep),
            vec![3]
        );
        assert_eq!(
            s.created_from,
            Some(7),
            "a pass that found something is checked again"
        );
        // Pass 2: same size (3), nothing new -> the second is complete.
        s.apply(
            &TASKS,
            &s.plan(&TASKS, 2),
            vec![task(1, 7, 50), task(2, 7, 60)],
        );
        s.apply(&TASKS, &s.plan(&TASKS, 2), vec![task(3, 7, 70)]);
        assert_eq!((s.created_from, s.second.clone()), (Some(8), None));
    }

    #[test]
    fn a_shrinking_second_is_walked_again() {
        let mut s = Segment::new(0, 100);
        s.created_from = Some(7);
        s.seen = vec![1, 2];
        s.second = Some(SecondWalk {
            page: 1,
            limit: 2,
            found_new: false,
            last_pass_size: Some(4),
        });
        s.apply(
            &TASKS,
            &s.plan(&TASKS, 2),
            vec![task(1, 7, 50), task(2, 7, 60)],
        );
        s.apply(&TASKS, &s.plan(&TASKS, 2), vec![task(4, 7, 70)]);
        // Nothing new, but the size fell from 4 to 3: something left during the pass.
        assert_eq!(s.created_from, Some(7));
        assert!(s.second.is_some());
    }

    #[test]
    fn an_unordered_window_is_walked_by_created_at() {
        let mut s = Segment::new(100, 200);
        let req = s.plan(&TASKS, 3);
        assert_eq!(
            (req.order, req.created_from, req.to),
            (Order::CreatedAtAsc, None, Some(200))
        );
        let applied = s.apply(
            &TASKS,
            &req,
            vec![task(1, 5, 150), task(2, 9, 120), task(3, 9, 199)],
        );
        assert_eq!(ids(&applied.keep), vec![1, 2, 3]);
        assert_eq!((s.created_from, s.seen.clone()), (Some(9), vec![2, 3]));
        let req = s.plan(&TASKS, 3);
        assert_eq!(
            (req.created_from, req.from, req.to),
            (Some(9), 100, Some(200))
        );
        let applied = s.apply(&TASKS, &req, vec![task(3, 9, 199), task(4, 30, 101)]);
        assert_eq!(ids(&applied.keep), vec![4]);
        assert!(applied.done, "a short page ends the window");
    }

    #[test]
    fn an_unordered_probe_keeps_only_the_window() {
        let mut c = Cursor {
            watermark: 99,
            pending: vec![],
        };
        let req = c.probe(&TASKS, 2);
        assert_eq!(req.order, Order::CreatedAtAsc);
        // Full page: item 2 is beyond upper (150), but item 1 is in the window.
        let keep = c.apply_probe(&req, vec![task(1, 5, 120), task(2, 6, 180)], 150, 1);
        assert_eq!(ids(&keep), vec![1]);
        assert_eq!(c.pending.len(), 1);
        assert_eq!(
            (
                c.pending[0].from,
                c.pending[0].to,
                c.pending[0].created_from
            ),
            (100, 150, Some(6))
        );
    }

    #[test]
    fn a_split_segment_ignores_what_now_belongs_to_the_other_half() {
        let mut c = Cursor {
            watermark: 100,
            pending: vec![Segment {
                key: 1,
                remaining: Some(100.0),
                ..Segment::new(0, 100)
            }],
        };
        let req = c.pending[0].plan(&LEADS, 3);
        assert_eq!(
            c.split_largest(|s| s.key == 1, 2, 1000.0),
            None,
            "too little left to split"
        );
        assert_eq!(c.split_largest(|s| s.key == 1, 2, 50.0), Some(2));
        assert_eq!(
            (c.pending[0].to, c.pending[1].from, c.pending[1].to),
            (50, 51, 100)
        );
        let applied =
            c.segment_mut(1)
                .unwrap()
                .apply(&LEADS, &req, vec![rec(1, 10), rec(2, 60), rec(3, 70)]);
        assert!(
            applied.done,
            "items beyond the new end prove the lower half complete"
        );
        assert_eq!(ids(&applied.keep), vec![1]);
    }

    #[test]
    fn an_unordered_split_cuts_at_the_median_of_what_is_left() {
        let mut s = Segment {
            key: 1,
            ..Segment::new(0, 1000)
        };
        let req = s.plan(&TASKS, 4);
        s.apply(
            &TASKS,
            &req,
            vec![
                task(1, 1, 900),
                task(2, 2, 910),
                task(3, 3, 920),
                task(4, 4, 10),
            ],
        );
        let mut c = Cursor {
            watermark: 1000,
            pending: vec![s],
        };
        c.split_largest(|s| s.key == 1, 2, 1.0).unwrap();
        assert_eq!(
            c.pending[0].to, 910,
            "split at the sample's median, not the window's middle"
        );
        assert_eq!(
            (
                c.pending[1].from,
                c.pending[1].created_from,
                c.pending[1].seen.clone()
            ),
            (911, Some(4), vec![4]),
            "the upper half goes on where the created_at walk is, not from the start"
        );
        assert_eq!(c.pending[1].plan(&TASKS, 4).created_from, Some(4));
    }

    #[test]
    fn the_stored_form_is_versioned() {
        let c = StoredCursor::V1(Cursor {
            watermark: 5,
            pending: vec![Segment::new(1, 5)],
        });
        let v = serde_json::to_value(&c).unwrap();
        assert_eq!(v["version"], "1");
        assert_eq!(serde_json::from_value::<StoredCursor>(v).unwrap(), c);
    }
}
