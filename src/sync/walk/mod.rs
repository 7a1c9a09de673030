//! The walk of one stream in one run, as a pure state machine: no I/O, no clock, so every
//! rule can be tested on its own and the whole walk can be model-checked (see `model`).
//!
//! The run asks [`Walk::next`] for requests, sends them (several side by side), and hands
//! each answer to [`Walk::apply`], which returns the records to store; the run then commits
//! them together with [`Walk::cursor`] in one transaction. The cursor only ever describes
//! what applied pages proved, never what is in flight, so a crash at any instant loses
//! nothing: the pages in flight are asked for again.
//!
//! A run's first request asks for everything above `through` with no upper bound; its
//! answer's `Date` fixes the run's window `(through, server time − lag]`. Windows left open
//! by an interrupted run are resumed side by side with it.

pub mod page;
pub mod plan;

#[cfg(test)]
mod model;

use std::collections::{HashMap, HashSet};

use crate::source::{Page, PageRequest, Record, WalkKind};
use crate::sync::cursor::{ById, Cursor, Key, Plan, Position, Window};
pub use page::Param;
use page::{Ctx, Fallback, Step};
use plan::{Learned, Target};

/// Items consecutive pages of a walk by offset share at first: two items may leave the list
/// between two pages of one window without a step back.
const OVERLAP: u32 = 3;
/// A window is split for another request only when about this many pages are left in it:
/// each split costs at least one partial page.
const SPLIT_MIN_PAGES: f64 = 3.0;
/// Never ask for pages smaller than this after "ask for less".
const MIN_PAGE: u32 = 10;
/// Pages a walk by offset asks for ahead of its next one, at most. Each one past the end
/// of the list is a request spent for nothing, so only a few, and only while the rate
/// limit is idle (see [`Walk::ahead`]).
const AHEAD_MAX: usize = 3;

#[derive(Debug, Clone)]
pub struct WalkSettings {
    /// Seconds behind the server's clock that a run's window ends.
    pub lag: i64,
    pub page_size: u32,
    /// Bounds on the server's clock, if any (the model checker has none).
    pub clock: Option<ClockBound>,
}

/// How far a server's clock may jump between runs. The window's upper end is the server's
/// time, never the local one, and a server may run ahead or behind this machine; but one
/// answer a year ahead would move the cursor a year ahead, and every later edit would fall
/// below it, never synced. So the skew (server − local) of each run's first answer is kept
/// in the cursor, and one that moved by more than `max_jump` since the last run ends the run
/// before anything is stored.
#[derive(Debug, Clone, Copy)]
pub struct ClockBound {
    /// This machine's clock when the run started (unix seconds).
    pub local_now: i64,
    pub max_jump: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum WalkError {
    #[error(
        "stream `{stream}`: the API does not honour {param} ({detail}), and no other way to walk \
         this stream is left, so what lies past this point cannot be proven stored"
    )]
    Unhonoured {
        stream: &'static str,
        param: Param,
        detail: String,
    },
    #[error(
        "the server's answer had no usable Date header, so the window cannot be bounded by server \
         time (the local clock is never used)"
    )]
    NoServerTime,
    #[error(
        "stream `{stream}`: entities keep leaving the list faster than the walk can prove its \
         pages continuous, and every page that could go on was asked for already in this run; \
         the run stops rather than send a query twice (the next run goes on from here)"
    )]
    WouldRepeat { stream: &'static str },
    #[error(
        "the server's Date ({server}) is {} s {} where its clock stood at the last run, as \
         measured by this machine's clock ({expected}), more than sync.max_clock_jump_secs \
         ({max_jump}); nothing was stored, as a cursor moved by it would skip edits for \
         good. Fix: if this machine's clock was changed (NTP), or the server's clock really \
         moved, raise sync.max_clock_jump_secs for one run",
        (server - expected).abs(),
        if server > expected { "ahead of" } else { "behind" }
    )]
    ServerClock {
        server: i64,
        expected: i64,
        max_jump: i64,
    },
}

/// Identifies a request in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Ticket(u64);

/// What a walk did so far (for logs and `sync_runs`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WalkStats {
    pub planned: u64,
    pub step_backs: u64,
    /// Items outside the `updated_at` range their page was asked for.
    pub strays: u64,
    /// Items received in pages asked with an `updated_at` range.
    pub filtered: u64,
    pub splits: u64,
    /// Pages asked for ahead of a walk by offset's next one (see [`Walk::ahead`]).
    pub ahead: u64,
}

/// Strays are evidence that `filter[updated_at]` is not applied once there are at least this
/// many and they make up at least one in twenty of the items asked with it: one odd item
/// proves little, a steady share proves the filter is off.
const STRAYS_MIN: u64 = 3;
const STRAYS_SHARE: u64 = 20;

/// What applying one page gave.
#[derive(Debug, Default)]
pub struct Applied {
    /// Records to store with the new cursor.
    pub records: Vec<Record>,
    /// Things an operator may want to know (a fallback, a step back, a page-size cap).
    pub notes: Vec<String>,
}

/// A window as the walk drives it: the stored part plus what only matters while running.
#[derive(Debug, Clone)]
struct Live {
    id: u64,
    from: i64,
    /// `None` for the run's first window until its first answer fixes it.
    to: Option<i64>,
    at: Position,
    /// Items whose `updated_at` is below this cannot have raced the list.
    race_bound: i64,
    busy: Option<Ticket>,
    /// Pages of a walk by offset asked for after the one in `busy`, in order, each planned
    /// as if every page before it comes back full and nothing leaves the list meanwhile.
    /// Each is applied in its turn, with the proof of any page: if items did leave, it
    /// shows no overlap and the walk steps back.
    ahead: Vec<Ticket>,
    /// Answers to `ahead` that came before their turn.
    early: HashMap<Ticket, (PageRequest, Page)>,
    overlap: u32,
    remaining: Option<f64>,
    /// Items the window's keyset walk has kept so far: with `from`, the window's average
    /// density, which tempers a dense last page's guess at what is left.
    seen: u64,
    /// The second the count in `seen` starts from (a resumed window starts mid-way).
    counted_from: Option<i64>,
    split_at: Option<i64>,
    /// Bounds a walk by offset keeps while it lasts: a bound learned inclusive halfway
    /// would change its list under it.
    frozen: Option<Learned>,
}

impl Live {
    /// A window nobody has asked for yet.
    fn new(id: u64, from: i64, to: Option<i64>, at: Position, race_bound: i64) -> Live {
        Live {
            id,
            from,
            to,
            at,
            race_bound,
            busy: None,
            ahead: Vec::new(),
            early: HashMap::new(),
            overlap: OVERLAP,
            remaining: None,
            seen: 0,
            counted_from: None,
            split_at: None,
            frozen: None,
        }
    }
}

/// Whether a position walks one list by page offsets.
fn by_offset(at: &Position) -> bool {
    matches!(
        at,
        Position::UpdatedSecond { .. }
            | Position::CreatedSecond { .. }
            | Position::ById { .. }
            | Position::Descending { .. }
    )
}

pub struct Walk {
    stream: &'static str,
    kind: WalkKind,
    lag: i64,
    clock: Option<ClockBound>,
    clock_skew: Option<i64>,
    limit: u32,
    through: Option<i64>,
    probed_at: Option<i64>,
    plan: Plan,
    windows: Vec<Live>,
    learned: Learned,
    /// Every query of this run: none is ever sent twice (Kommo lists "the same data
    /// requested several times in a short period" as a reason to block the IP).
    sent: HashSet<PageRequest>,
    /// Requests in flight: the window, the request, and whether it asks for exactly one
    /// second to learn whether the bounds include their ends.
    tickets: HashMap<Ticket, (u64, PageRequest, bool)>,
    next_id: u64,
    stats: WalkStats,
    /// The length of the last page that was shorter than asked but a round size.
    cap_seen: Option<u32>,
}

impl std::fmt::Debug for Walk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Walk")
            .field("stream", &self.stream)
            .field("through", &self.through)
            .field("plan", &self.plan)
            .field("windows", &self.windows)
            .finish_non_exhaustive()
    }
}

/// Where a fresh window's walk starts.
fn start(plan: &Plan, kind: WalkKind, from: i64) -> Position {
    match (plan, kind) {
        (Plan::Keyset, WalkKind::UpdatedAtKeyset) => Position::UpdatedAt { key: Key::at(from) },
        (Plan::Keyset, WalkKind::CreatedAtInWindow) => Position::CreatedAt { key: None },
        (Plan::ById { .. }, _) => Position::ById {
            by_id: ById::default(),
        },
        (Plan::Descending { .. }, _) => Position::Descending {
            floor: None,
            offset: 0,
        },
    }
}

impl Walk {
    /// A walk that goes on from `cursor` (`Cursor::default()` for a full sync).
    pub fn new(
        stream: &'static str,
        kind: WalkKind,
        cursor: Cursor,
        settings: &WalkSettings,
    ) -> Walk {
        let mut walk = Walk {
            stream,
            kind,
            lag: settings.lag,
            clock: settings.clock,
            limit: settings.page_size.max(1),
            through: cursor.through,
            probed_at: cursor.probed_at,
            clock_skew: cursor.clock_skew,
            plan: cursor.plan,
            windows: Vec::new(),
            learned: Learned::default(),
            sent: HashSet::new(),
            tickets: HashMap::new(),
            next_id: 0,
            stats: WalkStats::default(),
            cap_seen: None,
        };
        let first_from = cursor.through.map_or(0, |t| t + 1);
        let descending = matches!(walk.plan, Plan::Descending { .. });
        let mut probe_from = first_from;
        for w in cursor.windows {
            if descending {
                // One walk from the top covers every window at once.
                probe_from = probe_from.min(w.from);
                continue;
            }
            let id = walk.id();
            // A walk by offset goes on asking for the list its offsets count in.
            let frozen = by_id(&w.at)
                .and_then(|b| b.exact)
                .map(Learned::from_exact_ends);
            // Resumed from an earlier run: every edit made since shows a time newer than
            // that run's first answer.
            let race_bound = cursor.probed_at.unwrap_or(w.to + 1).max(w.to + 1);
            walk.windows.push(Live {
                frozen,
                ..Live::new(id, w.from, Some(w.to), w.at, race_bound)
            });
        }
        let id = walk.id();
        let at = start(&walk.plan, kind, probe_from);
        walk.windows
            .insert(0, Live::new(id, probe_from, None, at, i64::MIN));
        walk
    }

    fn id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    pub fn stream(&self) -> &'static str {
        self.stream
    }

    pub fn stats(&self) -> &WalkStats {
        &self.stats
    }

    /// The page size in use (halved after "ask for less", or a server's silent cap).
    pub fn limit(&self) -> u32 {
        self.limit
    }

    /// Every window is complete.
    pub fn is_done(&self) -> bool {
        self.windows.is_empty()
    }

    /// Whether a window is waiting for a request (so a free request slot can be used now).
    pub fn has_idle(&self) -> bool {
        self.windows.iter().any(|w| w.busy.is_none())
    }

    /// The upper end of this run's window, once the first answer fixed it.
    pub fn through(&self) -> Option<i64> {
        self.through
    }

    /// What is proven stored, in the stored form: commit it with the records of each page.
    pub fn cursor(&self) -> Cursor {
        Cursor {
            through: self.through,
            windows: self
                .windows
                .iter()
                .filter_map(|w| match w.to {
                    Some(to) => Some(Window {
                        from: w.from,
                        to,
                        at: w.at.clone(),
                    }),
                    // A window whose first answer has not come yet has proven nothing; the
                    // part of it that `through` already claims (windows merged into it)
                    // stays open.
                    None => self.through.filter(|t| w.from <= *t).map(|t| Window {
                        from: w.from,
                        to: t,
                        at: w.at.clone(),
                    }),
                })
                .collect(),
            plan: self.plan.clone(),
            probed_at: self.probed_at,
            clock_skew: self.clock_skew,
        }
    }

    /// Queries this process sent for the stream recently (in runs before this one): none of
    /// them is sent again by this walk.
    pub fn avoid(&mut self, recent: impl IntoIterator<Item = PageRequest>) {
        self.sent.extend(recent);
    }

    /// The next request to send, if a window waits for one. With `may_split` (a request
    /// slot would otherwise go unused), a large window is split first so that its parts are
    /// fetched side by side.
    pub fn next(&mut self, may_split: bool) -> Result<Option<(Ticket, PageRequest)>, WalkError> {
        let Some(idx) = self.windows.iter().position(|w| w.busy.is_none()) else {
            return Ok(None);
        };
        if may_split {
            self.split(idx);
        }
        let learned = self.learned;
        let w = &mut self.windows[idx];
        if by_offset(&w.at) && w.frozen.is_none() && !plan::exact_probe(&learned, &w.at) {
            w.frozen = Some(learned);
            if let Some(b) = by_id_mut(&mut w.at) {
                b.exact = Some(learned.exact_ends());
            }
        }
        let w = &self.windows[idx];
        let probe = w.frozen.is_none() && plan::exact_probe(&learned, &w.at);
        let Some(req) = plan::request(
            &Target {
                stream: self.stream,
                from: w.from,
                to: w.to,
                at: &w.at,
                limit: self.limit,
                overlap: w.overlap,
            },
            w.frozen.as_ref().unwrap_or(&self.learned),
            &self.sent,
        ) else {
            return Err(WalkError::WouldRepeat {
                stream: self.stream,
            });
        };
        let wid = w.id;
        let ticket = Ticket(self.id());
        self.sent.insert(req.clone());
        self.tickets.insert(ticket, (wid, req.clone(), probe));
        self.windows[idx].busy = Some(ticket);
        self.stats.planned += 1;
        Ok(Some((ticket, req)))
    }

    /// A page of a walk by offset after those in flight, when no window waits and the rate
    /// limit is idle: a crowded second (or a window walked by id) is one list, walked page
    /// after page, and at high latency one page at a time leaves the limit unused. The
    /// list is closed and can only shrink, so the next pages' offsets are known before the
    /// answers come; each page still proves its continuity when its turn comes.
    pub fn ahead(&mut self) -> Option<(Ticket, PageRequest)> {
        let idx = self.windows.iter().position(|w| self.may_fetch_ahead(w))?;
        let w = &self.windows[idx];
        let last = w.ahead.last().or(w.busy.as_ref())?;
        let last_req = match self.tickets.get(last) {
            Some((_, req, _)) => req,
            None => &w.early.get(last)?.0,
        };
        let mut at = w.at.clone();
        let b = by_id_mut(&mut at)?;
        // As if the page before came back full, its last item the tail.
        *b = ById {
            tail: Some(b.tail.unwrap_or(i64::MIN)),
            next_offset: last_req.offset() + u64::from(last_req.limit),
            exact: b.exact,
        };
        let req = plan::request(
            &Target {
                stream: self.stream,
                from: w.from,
                to: w.to,
                at: &at,
                limit: self.limit,
                overlap: w.overlap,
            },
            w.frozen.as_ref()?,
            &self.sent,
        )?;
        let wid = w.id;
        let ticket = Ticket(self.id());
        self.sent.insert(req.clone());
        self.tickets.insert(ticket, (wid, req.clone(), false));
        self.windows[idx].ahead.push(ticket);
        self.stats.planned += 1;
        self.stats.ahead += 1;
        Some((ticket, req))
    }

    /// Whether a page could be asked for ahead now (see [`Walk::ahead`]).
    pub fn can_fetch_ahead(&self) -> bool {
        self.windows.iter().any(|w| self.may_fetch_ahead(w))
    }

    fn may_fetch_ahead(&self, w: &Live) -> bool {
        // Not beside a request for exactly one second: its answer may restart the walk.
        let head_plain = w
            .busy
            .and_then(|t| self.tickets.get(&t))
            .is_some_and(|(_, req, probe)| !probe && req.limit == self.limit);
        // A walk by offset in a list long enough that more pages are likely (two full pages
        // read), and calm (no step back yet): every page ahead past the end, or before a step
        // back, is a request spent for nothing.
        let long = by_id(&w.at).is_some_and(|b| b.next_offset >= 2 * u64::from(self.limit));
        let calm = w.overlap == OVERLAP;
        // Only once the window is closed (its first answer fixed its upper end): before, an
        // edit may still land inside it, and a page served before another one could hold an
        // older version than the one that page skips as already stored.
        let closed = w.to.is_some();
        long && calm && closed && head_plain && w.frozen.is_some() && w.ahead.len() < AHEAD_MAX
    }

    /// The server asked for smaller pages (Kommo's 504): the window asks again for less.
    pub fn shrink(&mut self, ticket: Ticket) {
        if let Some((wid, req, _)) = self.tickets.remove(&ticket) {
            self.limit = self.limit.min((req.limit / 2).max(MIN_PAGE));
            if let Some(idx) = self.windows.iter().position(|w| w.id == wid) {
                let w = &mut self.windows[idx];
                match w.ahead.iter().position(|t| *t == ticket) {
                    // A page ahead: it and those after it go; the walk asks again later.
                    Some(i) => {
                        let dropped: Vec<Ticket> = w.ahead.drain(i..).collect();
                        for t in dropped {
                            w.early.remove(&t);
                            self.tickets.remove(&t);
                        }
                    }
                    None => {
                        w.busy = None;
                        self.drop_ahead(idx);
                    }
                }
            }
        }
    }

    /// Forgets the pages asked ahead for the window at `idx` (their answers, when they come,
    /// prove nothing any more).
    fn drop_ahead(&mut self, idx: usize) {
        let w = &mut self.windows[idx];
        w.early.clear();
        for t in std::mem::take(&mut w.ahead) {
            self.tickets.remove(&t);
        }
    }

    /// Applies the answer to the request `ticket` and returns what to store.
    pub fn apply(&mut self, ticket: Ticket, page: Page) -> Result<Applied, WalkError> {
        let mut applied = Applied::default();
        let Some((wid, req, probe)) = self.tickets.remove(&ticket) else {
            return Ok(applied);
        };
        // A window replaced by a fallback while this page was in flight: the page proves
        // nothing about the new walk.
        let Some(idx) = self.windows.iter().position(|w| w.id == wid) else {
            return Ok(applied);
        };
        if self.windows[idx].ahead.contains(&ticket) {
            // Its turn comes after the page before it.
            self.windows[idx].early.insert(ticket, (req, page));
            return Ok(applied);
        }
        let mut idx = idx;
        let mut next = Some((req, probe, page));
        while let Some((req, probe, page)) = next.take() {
            let before = self.windows[idx].at.clone();
            let step_backs = self.stats.step_backs;
            // The pages ahead were planned as if this one came back with all it asked for
            // (a server's silent cap makes it shorter, and them misplaced).
            let as_planned = page.records.len() == req.limit as usize;
            let records = std::mem::take(&mut applied.records);
            self.apply_page(idx, req, probe, page, &mut applied)?;
            let mut kept = records;
            kept.append(&mut applied.records);
            applied.records = kept;
            // The pages asked ahead go on in their turn while the walk goes on in the same
            // list; after anything else (the list's end, a step back, a fallback) they
            // prove nothing.
            let Some(idx_now) = self.windows.iter().position(|w| w.id == wid) else {
                break;
            };
            let w = &self.windows[idx_now];
            let goes_on =
                as_planned && same_list(&before, &w.at) && self.stats.step_backs == step_backs;
            if !goes_on || w.ahead.is_empty() || w.busy.is_some() {
                self.drop_ahead(idx_now);
                break;
            }
            idx = idx_now;
            let w = &mut self.windows[idx];
            let head = w.ahead.remove(0);
            w.busy = Some(head);
            if let Some((req, page)) = w.early.remove(&head) {
                self.tickets.remove(&head);
                next = Some((req, false, page));
            }
        }
        Ok(applied)
    }

    /// Applies one page, in its turn, to the window at `idx`.
    fn apply_page(
        &mut self,
        idx: usize,
        req: PageRequest,
        probe: bool,
        page: Page,
        applied: &mut Applied,
    ) -> Result<(), WalkError> {
        self.windows[idx].busy = None;
        if self.windows[idx].to.is_none() {
            let server_time = page.server_time.ok_or(WalkError::NoServerTime)?;
            if let Some(c) = self.clock {
                let skew = server_time - c.local_now;
                if let Some(before) = self.clock_skew {
                    if (skew - before).abs() > c.max_jump {
                        return Err(WalkError::ServerClock {
                            server: server_time,
                            expected: c.local_now + before,
                            max_jump: c.max_jump,
                        });
                    }
                }
                self.clock_skew = Some(skew);
            }
            let upper = server_time - self.lag;
            let w = &mut self.windows[idx];
            if upper < w.from {
                // The server's clock is behind what is stored (or the lag grew): nothing to
                // do in this run.
                self.windows.remove(idx);
                return Ok(());
            }
            w.to = Some(upper);
            w.race_bound = server_time;
            self.through = Some(self.through.map_or(upper, |t| t.max(upper)));
            self.probed_at = Some(self.probed_at.map_or(server_time, |p| p.max(server_time)));
        }
        let len = page.records.len();
        if len < req.limit as usize && page::is_full(len, req.limit) && (len as u32) < self.limit {
            // A short page of a round size may be a server's silent cap, or just the end of
            // a list: the same size twice in a row is a cap, and the walk's offsets must
            // count in it.
            if self.cap_seen == Some(len as u32) {
                applied.notes.push(format!(
                    "the server sends at most {len} items for a page of {}: using pages of {len}",
                    req.limit
                ));
                self.limit = len as u32;
            }
            self.cap_seen = Some(len as u32);
        } else if len > 0 {
            self.cap_seen = None;
        }
        if probe && page.records.is_empty() {
            // The second holds entities, yet asking for exactly it gave nothing: a bound
            // excludes its end. The walk of the second starts again, one second wider.
            self.learned.exact_failed = true;
            return Ok(());
        }
        let race_bound = self.windows[idx].race_bound;
        self.learned.learn(&req, &page.records, race_bound);
        let w = &self.windows[idx];
        let ctx = Ctx {
            order_shown: self.learned.order_shown(req.order, req.limit),
            from: w.from,
            to: w.to.expect("fixed above"),
            race_bound: w.race_bound,
            can_descend: self.kind == WalkKind::UpdatedAtKeyset,
            alone: self.windows.len() == 1,
        };
        if req.updated.is_some() {
            self.stats.filtered += page.records.len() as u64;
        }
        let out = page::apply(&ctx, &w.at, &req, page.records);
        self.stats.strays += out.strays as u64;
        if out.strays > 0 {
            applied.notes.push(format!(
                "{} items outside the asked updated_at range (ignored)",
                out.strays
            ));
        }
        applied.records = out.keep;
        let unhonoured = matches!(out.step, Step::Unhonoured { .. });
        self.step(idx, out.step, out.remaining, out.split_at, applied)?;
        if !unhonoured && self.strays_prove_the_filter_off() {
            self.turn_from_the_filter(applied);
        }
        Ok(())
    }

    /// `filter[updated_at]` is not applied: walk from the newest down where the stream can
    /// be, else as one window by id (windows would each read the same whole list).
    fn turn_from_the_filter(&mut self, applied: &mut Applied) {
        let because = format!(
            "{} is not honoured: {} of {} items came from outside the asked updated_at range",
            Param::FilterUpdatedAt,
            self.stats.strays,
            self.stats.filtered
        );
        match self.kind {
            WalkKind::UpdatedAtKeyset => {
                applied.notes.push(format!(
                    "{because}; walking from the newest down without filters"
                ));
                self.plan = Plan::Descending { because };
                if !self.windows.is_empty() {
                    self.descend();
                }
            }
            WalkKind::CreatedAtInWindow => {
                applied
                    .notes
                    .push(format!("{because}; walking the stream as one window by id"));
                self.plan = Plan::ById { because };
                if !self.windows.is_empty() {
                    self.merge(Position::ById {
                        by_id: ById::default(),
                    });
                }
            }
        }
    }

    /// Whether the strays seen so far prove that the API does not apply the `updated_at`
    /// filter, and the walk has not yet turned away from it.
    fn strays_prove_the_filter_off(&self) -> bool {
        let settled = match (&self.plan, self.kind) {
            (Plan::Descending { .. }, _) => true,
            (Plan::ById { .. }, WalkKind::CreatedAtInWindow) => self.windows.len() <= 1,
            _ => false,
        };
        !settled
            && self.stats.strays >= STRAYS_MIN
            && self.stats.strays * STRAYS_SHARE >= self.stats.filtered
    }

    fn step(
        &mut self,
        idx: usize,
        step: Step,
        remaining: Option<f64>,
        split_at: Option<i64>,
        applied: &mut Applied,
    ) -> Result<(), WalkError> {
        match step {
            Step::Goes(at) => {
                let w = &mut self.windows[idx];
                if std::mem::discriminant(&w.at) != std::mem::discriminant(&at) {
                    w.overlap = OVERLAP;
                    w.frozen = None;
                }
                if w.counted_from.is_none() {
                    // From the oldest item kept, not from the window's lower end: a full
                    // sync's window starts at 0, and counting from 1970 would make any
                    // window look empty and never split.
                    let oldest = applied.records.iter().map(|r| r.updated_at).min();
                    w.counted_from = Some(match &w.at {
                        Position::UpdatedAt { key } => {
                            oldest.unwrap_or(key.second).max(key.second.max(w.from))
                        }
                        _ => w.from,
                    });
                }
                w.at = at;
                w.seen += applied.records.len() as u64;
                w.remaining = match (&w.at, remaining, w.to) {
                    // A bulk change crowds one page; the window's average does not lie
                    // about the rest of it, and a split on a guess costs a partial page.
                    (Position::UpdatedAt { key }, Some(r), Some(to)) => {
                        let from = w.counted_from.unwrap_or(w.from);
                        let span = (key.second - from + 1).max(1) as f64;
                        let average = w.seen as f64 / span * (to - key.second).max(0) as f64;
                        Some(r.min(average))
                    }
                    (_, r, _) => r,
                };
                w.split_at = split_at;
            }
            Step::StepBack(at) => {
                let limit = self.limit;
                let w = &mut self.windows[idx];
                w.at = at;
                w.overlap = (w.overlap * 2).min(limit.saturating_sub(1).max(1));
                self.stats.step_backs += 1;
                applied
                    .notes
                    .push("items left the list between two pages: stepping back".into());
            }
            Step::Done => {
                self.windows.remove(idx);
            }
            Step::Unhonoured {
                param,
                fallback,
                detail,
                switch,
                then,
            } => {
                let fail = || WalkError::Unhonoured {
                    stream: self.stream,
                    param,
                    detail: detail.clone(),
                };
                let because = format!("{param} is not honoured: {detail}");
                match (fallback, self.kind) {
                    (Fallback::None, _) | (Fallback::Descending, WalkKind::CreatedAtInWindow) => {
                        return Err(fail());
                    }
                    (Fallback::Descending, WalkKind::UpdatedAtKeyset) => {
                        if matches!(self.plan, Plan::Descending { .. }) {
                            return Err(fail());
                        }
                        applied.notes.push(format!(
                            "{because}; walking from the newest down without filters"
                        ));
                        self.plan = Plan::Descending { because };
                        self.descend();
                    }
                    (Fallback::OneWindow, _) => {
                        applied
                            .notes
                            .push(format!("{because}; walking the stream as one window by id"));
                        self.plan = Plan::ById { because };
                        self.merge(Position::ById {
                            by_id: ById::default(),
                        });
                    }
                    (Fallback::ById, _)
                        if switch
                            && matches!(param, Param::OrderUpdatedAt | Param::OrderCreatedAt) =>
                    {
                        // Every keyset step so far (this run's, and the runs' that moved
                        // `through`) rested on that order: none of it is proof. The whole
                        // stream is walked again by id, once.
                        applied.notes.push(format!(
                            "{because}; walking the whole stream again by id, as nothing the \
                             order proved can be trusted"
                        ));
                        self.plan = Plan::ById { because };
                        for w in &mut self.windows {
                            w.from = 0;
                        }
                        self.merge(Position::ById {
                            by_id: ById::default(),
                        });
                        // Up to what earlier runs claimed, not only what is open now.
                        let through = self.through;
                        if let (Some(w), Some(t)) = (self.windows.first_mut(), through) {
                            w.to = w.to.map(|to| to.max(t));
                        }
                    }
                    (Fallback::ById, _) => {
                        applied.notes.push(format!("{because}; walking by id"));
                        if switch && !matches!(self.plan, Plan::Descending { .. }) {
                            self.plan = Plan::ById { because };
                            self.convert_others_by_id(idx);
                        }
                        match then {
                            Some(step) => {
                                return self.step(idx, *step, remaining, split_at, applied)
                            }
                            None => {
                                let w = &mut self.windows[idx];
                                by_id_from_proven(w);
                            }
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Every other window goes over to the walk by id. Their pages in flight were planned
    /// for the old walk and are dropped when they come back.
    fn convert_others_by_id(&mut self, keep: usize) {
        for i in 0..self.windows.len() {
            if i == keep || matches!(self.windows[i].at, Position::ById { .. }) {
                continue;
            }
            let id = self.id();
            self.drop_ahead(i);
            let w = &mut self.windows[i];
            w.id = id;
            w.busy = None;
            by_id_from_proven(w);
        }
    }

    /// One walk from the newest down replaces every window (pages in flight are dropped).
    fn descend(&mut self) {
        self.merge(Position::Descending {
            floor: None,
            offset: 0,
        });
    }

    /// One window covering every window replaces them, walked from `at` (pages in flight
    /// are dropped).
    fn merge(&mut self, at: Position) {
        let from = self.windows.iter().map(|w| w.from).min().unwrap_or(0);
        let unresolved = self.windows.iter().any(|w| w.to.is_none());
        let to = if unresolved {
            None
        } else {
            self.windows.iter().filter_map(|w| w.to).max()
        };
        let race_bound = self
            .windows
            .iter()
            .map(|w| w.race_bound)
            .max()
            .unwrap_or(i64::MIN);
        let id = self.id();
        let race_bound = if unresolved { i64::MIN } else { race_bound };
        self.windows = vec![Live::new(id, from, to, at, race_bound)];
    }

    /// Splits the window at `idx` if enough is left in it; the new part is idle.
    fn split(&mut self, idx: usize) {
        let limit = f64::from(self.limit);
        let w = &self.windows[idx];
        let Some(to) = w.to else { return };
        let big = w.remaining.is_some_and(|r| r >= SPLIT_MIN_PAGES * limit);
        let (lower_to, upper) = match &w.at {
            Position::UpdatedAt { key } if big && to - key.second >= 2 => {
                let k = key.second;
                let m = w
                    .split_at
                    .filter(|m| *m > k && *m < to)
                    .unwrap_or(k + (to - k) / 2);
                (
                    m,
                    (
                        m + 1,
                        Position::UpdatedAt {
                            key: Key::at(m + 1),
                        },
                    ),
                )
            }
            Position::CreatedAt { key } if big && to - w.from >= 2 => {
                let m = w
                    .split_at
                    .filter(|m| *m > w.from && *m < to)
                    .unwrap_or(w.from + (to - w.from) / 2);
                // Everything created before the key is stored across the whole window, so
                // the upper part goes on from the same key.
                (m, (m + 1, Position::CreatedAt { key: key.clone() }))
            }
            // The rest of the window after a crowded second goes on beside it.
            Position::UpdatedSecond { second, .. } if *second < to => {
                let s = *second;
                (
                    s,
                    (
                        s + 1,
                        Position::UpdatedAt {
                            key: Key::at(s + 1),
                        },
                    ),
                )
            }
            _ => return,
        };
        let (upper_from, upper_at) = upper;
        let half = w.remaining.map(|r| r / 2.0);
        let race_bound = w.race_bound;
        let id = self.id();
        let w = &mut self.windows[idx];
        w.to = Some(lower_to);
        w.remaining = half;
        w.split_at = None;
        self.windows.push(Live {
            remaining: half,
            ..Live::new(id, upper_from, Some(to), upper_at, race_bound)
        });
        self.stats.splits += 1;
    }
}

/// Whether two positions walk one list by offset (the same bounds), so that pages asked
/// for in one still count in the other.
fn same_list(a: &Position, b: &Position) -> bool {
    match (a, b) {
        (
            Position::UpdatedSecond { since, second, .. },
            Position::UpdatedSecond {
                since: s2,
                second: x2,
                ..
            },
        ) => since == s2 && second == x2,
        (
            Position::CreatedSecond { since, second, .. },
            Position::CreatedSecond {
                since: s2,
                second: x2,
                ..
            },
        ) => since == s2 && second == x2,
        (Position::ById { .. }, Position::ById { .. }) => true,
        _ => false,
    }
}

/// The walk by offset a position is in, if any.
fn by_id(at: &Position) -> Option<&ById> {
    match at {
        Position::ById { by_id }
        | Position::UpdatedSecond { by_id, .. }
        | Position::CreatedSecond { by_id, .. } => Some(by_id),
        _ => None,
    }
}

fn by_id_mut(at: &mut Position) -> Option<&mut ById> {
    match at {
        Position::ById { by_id }
        | Position::UpdatedSecond { by_id, .. }
        | Position::CreatedSecond { by_id, .. } => Some(by_id),
        _ => None,
    }
}

/// Restarts a window's walk by id from what its current walk has proven.
fn by_id_from_proven(w: &mut Live) {
    match &w.at {
        // Everything before the key is stored.
        Position::UpdatedAt { key } => w.from = w.from.max(key.second),
        Position::UpdatedSecond { since, .. } => w.from = w.from.max(*since),
        // `created_at` progress says nothing about ids: the whole window again.
        _ => {}
    }
    w.at = Position::ById {
        by_id: ById::default(),
    };
    w.overlap = OVERLAP;
    w.remaining = None;
    w.split_at = None;
    w.frozen = None;
}

#[cfg(test)]
mod clock_tests {
    use super::*;

    fn run_at(cursor: Cursor, local_now: i64, server_time: i64) -> Result<Cursor, WalkError> {
        let settings = WalkSettings {
            lag: 5,
            page_size: 250,
            clock: Some(ClockBound {
                local_now,
                max_jump: 600,
            }),
        };
        let mut walk = Walk::new("leads", WalkKind::UpdatedAtKeyset, cursor, &settings);
        let (ticket, _) = walk.next(false).unwrap().expect("a first request");
        walk.apply(
            ticket,
            Page {
                records: Vec::new(),
                server_time: Some(server_time),
                ..Page::default()
            },
        )?;
        Ok(walk.cursor())
    }

    /// A server a day ahead of this machine is fine, run after run; one answer a year ahead
    /// of where its clock should stand is refused, and leaves nothing to store.
    #[test]
    fn a_steady_skew_passes_and_a_jump_is_refused() {
        let day = 86_400;
        let first = run_at(Cursor::default(), 1_000_000, 1_000_000 + day).unwrap();
        assert_eq!(first.clock_skew, Some(day));
        let second = run_at(first.clone(), 1_000_300, 1_000_300 + day + 2).unwrap();
        assert_eq!(second.clock_skew, Some(day + 2));
        let err = run_at(second, 1_000_600, 1_000_600 + day + 365 * day).unwrap_err();
        assert!(
            matches!(err, WalkError::ServerClock { max_jump: 600, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("ahead of"), "{err}");
        let behind = run_at(first, 1_000_300, 1_000_300).unwrap_err();
        assert!(behind.to_string().contains("behind"), "{behind}");
    }
}

#[cfg(test)]
mod split_tests {
    use super::*;

    fn spread(first_id: i64, from: i64, step: i64, n: i64) -> Vec<Record> {
        (0..n)
            .map(|i| Record {
                id: first_id + i,
                updated_at: from + i * step,
                created_at: Some(from + i * step),
                raw: serde_json::json!({}),
            })
            .collect()
    }

    /// A full sync's window starts at 0, yet its entities start in this decade: the guess at
    /// what is left counts from the first entity, so that a long window is split at once
    /// (the parts are fetched side by side) instead of being walked one page at a time.
    #[test]
    fn a_full_sync_whose_first_page_shows_many_pages_left_splits_at_once() {
        let settings = WalkSettings {
            lag: 5,
            page_size: 250,
            clock: None,
        };
        let mut walk = Walk::new(
            "leads",
            WalkKind::UpdatedAtKeyset,
            Cursor::default(),
            &settings,
        );
        let (probe, _) = walk.next(true).unwrap().expect("the probe");
        // 250 entities over 2,500 s, in a window of about a million seconds after them.
        walk.apply(
            probe,
            Page {
                records: spread(1, 1_700_000_000, 10, 250),
                server_time: Some(1_701_000_000),
                ..Page::default()
            },
        )
        .unwrap();
        let (_, first) = walk.next(true).unwrap().expect("the next page");
        assert_eq!(walk.stats().splits, 1);
        assert!(walk.has_idle(), "the part split off waits for a request");
        let (_, second) = walk
            .next(false)
            .unwrap()
            .expect("a part split off beside it");
        let (a, b) = (first.updated.unwrap(), second.updated.unwrap());
        assert!(
            a.to.unwrap() < b.from.unwrap() + 2,
            "the parts do not overlap: {a:?} {b:?}"
        );
    }
}
