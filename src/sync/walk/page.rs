//! What one page proves about its window: the records to store and where the window's walk
//! goes next. Every page is checked against the request that produced it.
//!
//! The rules each walk relies on:
//! * A page is a contiguous slice of the server's list, sorted as asked. The list a window
//!   asks for is *closed* (nothing can enter it; see [`crate::sync::cursor`]); it only
//!   shrinks. A list that ignores a filter holds *more* than was asked: the proofs still
//!   hold, only progress may stall, which is how an ignored filter shows.
//! * An item whose `updated_at` lies beyond the window has left it (edited again; possibly
//!   while the page was being built, so that the body is newer than what the filter saw):
//!   it proves nothing about the window and is taken by a later run. Only an item newer than
//!   the window but older than the run's start (`race_bound`) cannot have raced: in a page
//!   sorted by `updated_at` it proves that the window ends before it.
//! * A page shorter than its limit ends the list; a `next` link proves nothing.
//! * Walks by id over pages chosen by offset: a page starting at an offset no later than
//!   the item after the tail, whose first id is at most the tail, proves that every item
//!   with an id between the tail and its last id is in it (the list is sorted by id, and
//!   only shrinks). Where the first id is beyond the tail, items before the page left the
//!   list and some may have moved across: the walk steps back instead of repeating passes.

use std::collections::HashSet;

use crate::source::{PageRequest, Record};
use crate::sync::cursor::{ById, Key, Position};

/// A parameter of the list request that the API may not honour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Param {
    FilterUpdatedAt,
    FilterCreatedAt,
    OrderUpdatedAt,
    OrderCreatedAt,
    OrderId,
    /// `page` (a log walked by page numbers).
    Page,
}

impl std::fmt::Display for Param {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Param::FilterUpdatedAt => "filter[updated_at]",
            Param::FilterCreatedAt => "filter[created_at]",
            Param::OrderUpdatedAt => "order[updated_at]",
            Param::OrderCreatedAt => "order[created_at]",
            Param::OrderId => "order[id]",
            Param::Page => "page",
        })
    }
}

/// The window a page belongs to.
#[derive(Debug, Clone, Copy)]
pub struct Ctx {
    pub from: i64,
    pub to: i64,
    /// No edit made after the run started can show an `updated_at` below this.
    pub race_bound: i64,
    /// Whether the stream can be walked from the newest down (ordered by `updated_at`).
    pub can_descend: bool,
    /// Whether the walk has seen enough sorted pages (this one included) that a sorted page
    /// is no luck: until then a full page proves nothing about what lies between its
    /// items, and the window's seconds it spans are walked by id.
    pub order_shown: bool,
    /// Whether this is the walk's only window.
    pub alone: bool,
}

/// What the walk must change when a page shows that a parameter is not honoured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fallback {
    /// Walk windows by id with page offsets (needs `filter[updated_at]` and `order[id]`).
    ById,
    /// Walk from the newest down without filters (needs `order[updated_at]`).
    Descending,
    /// The filter that divides a stream into windows is not applied: walk everything as
    /// one window by id (each window would otherwise read the same list again).
    OneWindow,
    /// Nothing is left: the run fails, naming the parameter.
    None,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// The window's walk goes on from this position.
    Goes(Position),
    /// Continuity was not proven: the walk goes on from an earlier offset (the overlap
    /// grows), never with a query it sent before.
    StepBack(Position),
    /// The window is complete.
    Done,
    /// A parameter is not honoured. `switch`: the stream's plan changes for good (later
    /// runs start with the fallback); otherwise only this window takes the detour.
    Unhonoured {
        param: Param,
        fallback: Fallback,
        detail: String,
        switch: bool,
        /// What this page already proved for the window in the fallback walk; `None`: the
        /// window restarts in the fallback from what is proven so far.
        then: Option<Box<Step>>,
    },
}

#[derive(Debug)]
pub struct Outcome {
    /// Records inside the window, not proven stored before.
    pub keep: Vec<Record>,
    pub step: Step,
    /// Estimated entities left in the window, and where to split it, when known.
    pub remaining: Option<f64>,
    pub split_at: Option<i64>,
    /// Items outside the asked range (the filter was not applied to them).
    pub strays: usize,
}

impl Outcome {
    fn new(keep: Vec<Record>, step: Step) -> Self {
        Outcome {
            keep,
            step,
            remaining: None,
            split_at: None,
            strays: 0,
        }
    }
}

/// Whether a page of `len` items may have more after it. A page shorter than the limit ends
/// the list, except when its length is a whole multiple of 50: Kommo has changed page sizes
/// on the server without notice, and a server that silently serves at most 50, 100 or 200
/// items shows exactly that. Such a page is followed up (one request that proves the end).
pub fn is_full(len: usize, limit: u32) -> bool {
    len >= limit as usize || (len > 0 && len % 50 == 0)
}

/// A newest second holding a tenth of a full page or more is walked by id at once (with the
/// seconds between the key and it): the keyset would re-read all of it on the next page, and
/// such a second is likely a bulk edit or an import larger than a page (ordinary data shares
/// a second between two or three entities at most). Small pages keep the old rule, half a
/// page, so that two or three ordinary neighbours never count as a crowd.
fn crowded(group: usize, limit: u32) -> bool {
    let limit = limit as usize;
    group >= (limit / 10).max((limit / 2).min(3)).max(2)
}

pub(super) fn sorted_by<T: PartialOrd>(items: impl Iterator<Item = T>, asc: bool) -> bool {
    let mut prev: Option<T> = None;
    for x in items {
        if let Some(p) = &prev {
            if (asc && x < *p) || (!asc && x > *p) {
                return false;
            }
        }
        prev = Some(x);
    }
    true
}

fn records_all(values: &[i64], f: impl Fn(i64) -> bool) -> bool {
    !values.is_empty() && values.iter().all(|v| f(*v))
}

fn ids_strictly_ascending(records: &[Record]) -> bool {
    records.windows(2).all(|w| w[0].id < w[1].id)
}

fn in_window(ctx: &Ctx, r: &Record) -> bool {
    r.updated_at >= ctx.from && r.updated_at <= ctx.to
}

fn unhonoured(param: Param, fallback: Fallback, detail: String, switch: bool) -> Step {
    Step::Unhonoured {
        param,
        fallback,
        detail,
        switch,
        then: None,
    }
}

/// Items certainly outside the asked `updated_at` range (the filter did not apply to them):
/// below it, and above it but older than the run (so they cannot have raced).
#[derive(Debug, Clone, Copy, Default)]
struct Strays {
    below: usize,
    above: usize,
}

impl Strays {
    fn of(ctx: &Ctx, req: &PageRequest, records: &[Record]) -> Strays {
        let Some(b) = req.updated else {
            return Strays::default();
        };
        let count = |f: &dyn Fn(i64) -> bool| records.iter().filter(|r| f(r.updated_at)).count();
        Strays {
            below: count(&|u| b.from.is_some_and(|f| u < f)),
            above: count(&|u| b.to.is_some_and(|t| u > t) && u < ctx.race_bound),
        }
    }

    fn total(&self) -> usize {
        self.below + self.above
    }

    /// Most of a full page: the filter was not applied.
    fn dominate(&self, len: usize) -> bool {
        self.total() * 2 > len
    }
}

/// Applies the answer to `req`, planned for a window at `at`.
pub fn apply(ctx: &Ctx, at: &Position, req: &PageRequest, records: Vec<Record>) -> Outcome {
    match at {
        Position::UpdatedAt { key } => updated_keyset(ctx, key, req, records),
        Position::CreatedAt { key } => created_keyset(ctx, key.as_ref(), req, records),
        Position::UpdatedSecond {
            since,
            second,
            by_id,
        } => {
            let (since, second) = (*since, *second);
            let next = |by_id| Position::UpdatedSecond {
                since,
                second,
                by_id,
            };
            let done = if second < ctx.to {
                Step::Goes(Position::UpdatedAt {
                    key: Key::at(second + 1),
                })
            } else {
                Step::Done
            };
            by_id_page(
                ctx,
                by_id,
                req,
                records,
                |r| r.updated_at >= since && r.updated_at <= second,
                next,
                done,
            )
        }
        Position::CreatedSecond {
            since,
            second,
            by_id,
        } => {
            let (since, second) = (*since, *second);
            let created_strays = req.created.and_then(|b| b.from).map_or(0, |f| {
                records
                    .iter()
                    .filter(|r| r.created_at.is_some_and(|c| c < f))
                    .count()
            });
            if is_full(records.len(), req.limit) && created_strays * 2 > records.len() {
                // The list is the whole window: walk it as such, with the same proof.
                let mut out = by_id_page(
                    ctx,
                    by_id,
                    req,
                    records,
                    |_| true,
                    |by_id| Position::ById { by_id },
                    Step::Done,
                );
                if matches!(out.step, Step::Goes(_) | Step::StepBack(_) | Step::Done) {
                    let then = std::mem::replace(&mut out.step, Step::Done);
                    out.step = Step::Unhonoured {
                        param: Param::FilterCreatedAt,
                        fallback: Fallback::ById,
                        detail: format!(
                            "{created_strays} items of a full page lie before the asked created_at"
                        ),
                        switch: true,
                        then: Some(Box::new(then)),
                    };
                }
                return out;
            }
            let next = |by_id| Position::CreatedSecond {
                since,
                second,
                by_id,
            };
            let done = if second < ctx.to {
                Step::Goes(Position::CreatedAt {
                    key: Some(Key::at(second + 1)),
                })
            } else {
                Step::Done
            };
            by_id_page(
                ctx,
                by_id,
                req,
                records,
                |r| {
                    r.created_at
                        .is_some_and(|c| since.is_none_or(|s| c >= s) && c <= second)
                },
                next,
                done,
            )
        }
        Position::ById { by_id } => by_id_page(
            ctx,
            by_id,
            req,
            records,
            |_| true,
            |by_id| Position::ById { by_id },
            Step::Done,
        ),
        Position::Descending { floor, offset } => {
            descending(ctx, floor.as_ref(), *offset, req, records)
        }
    }
}

fn updated_keyset(ctx: &Ctx, key: &Key, req: &PageRequest, records: Vec<Record>) -> Outcome {
    let k = key.second;
    let n_all = records.len();
    let full = is_full(n_all, req.limit);
    // Items that cannot have raced must come sorted; raced ones sit where their old
    // version sorted.
    if !sorted_by(
        records
            .iter()
            .filter(|r| r.updated_at < ctx.race_bound)
            .map(|r| r.updated_at),
        true,
    ) {
        return Outcome::new(
            Vec::new(),
            unhonoured(
                Param::OrderUpdatedAt,
                Fallback::ById,
                "a page was not sorted by updated_at".into(),
                true,
            ),
        );
    }
    let strays = Strays::of(ctx, req, &records);
    let beyond_calm = records
        .iter()
        .any(|r| r.updated_at > ctx.to && r.updated_at < ctx.race_bound);
    // `updated_at` of every item that cannot have raced.
    let at_or_beyond: Vec<i64> = records
        .iter()
        .filter(|r| r.updated_at < ctx.race_bound)
        .map(|r| r.updated_at)
        .collect();
    let seen: HashSet<i64> = key.seen.iter().copied().collect();
    let in_win: Vec<Record> = records
        .into_iter()
        .filter(|r| in_window(ctx, r) && r.updated_at >= k)
        .collect();
    let newest = in_win.iter().map(|r| r.updated_at).max();
    let oldest = in_win.iter().map(|r| r.updated_at).min();
    let at_newest: Vec<i64> = in_win
        .iter()
        .filter(|r| Some(r.updated_at) == newest)
        .map(|r| r.id)
        .collect();
    let n = in_win.len();
    let keep: Vec<Record> = in_win
        .into_iter()
        .filter(|r| !(r.updated_at == k && seen.contains(&r.id)))
        .collect();
    let asked_from = req.updated.and_then(|b| b.from);
    let only_widened =
        asked_from.is_some_and(|f| f < k) && records_all(&at_or_beyond, |u| Some(u) == asked_from);
    let step = if full && strays.dominate(n_all) {
        unhonoured(
            Param::FilterUpdatedAt,
            Fallback::Descending,
            format!(
                "{} of {n_all} items of a full page lie outside the asked updated_at",
                strays.total()
            ),
            true,
        )
    } else if !full {
        // The list ended.
        Step::Done
    } else if beyond_calm && ctx.order_shown {
        // Sorted, and an item newer than the window that cannot have raced: everything in
        // the window came before it.
        Step::Done
    } else if beyond_calm {
        // Sorted maybe by luck: the rest of the window by id.
        Step::Goes(Position::UpdatedSecond {
            since: k,
            second: ctx.to,
            by_id: ById::default(),
        })
    } else if newest.is_none() && only_widened {
        // A full page of the second below the key, asked for only in case the API's lower
        // bound excludes its end: the page shows that it includes it, and the next request
        // (with that learned) asks from the key itself.
        Step::Goes(Position::UpdatedAt { key: key.clone() })
    } else {
        match newest {
            None if strays.below > 0 => unhonoured(
                Param::FilterUpdatedAt,
                Fallback::Descending,
                format!(
                    "a full page held {} items before the asked updated_at and none after it",
                    strays.below
                ),
                true,
            ),
            // Every item is newer than the window and may have raced: nothing proves where
            // the window ends. Walk the rest of it by id.
            None => unhonoured(
                Param::FilterUpdatedAt,
                Fallback::ById,
                "a full page held only items newer than the window".into(),
                false,
            ),
            // A second the keyset cannot pass (a whole page in it), or a crowd it would
            // re-read: walk it by id. Once the order is shown, the page holds every item
            // of the seconds between the key and it; until then (it may be sorted by
            // luck) they are walked by id too, and so is any step of the keyset.
            Some(newest)
                if newest == k || crowded(at_newest.len(), req.limit) || !ctx.order_shown =>
            {
                Step::Goes(Position::UpdatedSecond {
                    since: if ctx.order_shown { newest } else { k },
                    second: newest,
                    by_id: ById::default(),
                })
            }
            Some(newest) => Step::Goes(Position::UpdatedAt {
                key: Key {
                    second: newest,
                    seen: at_newest,
                },
            }),
        }
    };
    let mut out = Outcome::new(keep, step);
    out.strays = strays.total();
    if let (Some(newest), Some(oldest), true) = (newest, oldest, full) {
        // From the oldest item, not the key: a full sync's key is 0.
        let rate = n.max(1) as f64 / (newest - k.max(oldest) + 1) as f64;
        out.remaining = Some(rate * (ctx.to - newest).max(0) as f64);
    }
    out
}

fn created_keyset(
    ctx: &Ctx,
    key: Option<&Key>,
    req: &PageRequest,
    records: Vec<Record>,
) -> Outcome {
    let full = is_full(records.len(), req.limit);
    // `created_at` does not change on edit: every item, raced or not, sorts by it.
    if !sorted_by(records.iter().filter_map(|r| r.created_at), true) {
        return Outcome::new(
            Vec::new(),
            unhonoured(
                Param::OrderCreatedAt,
                Fallback::ById,
                "a page was not sorted by created_at".into(),
                true,
            ),
        );
    }
    let strays = Strays::of(ctx, req, &records).below;
    let created_values: Vec<i64> = records.iter().filter_map(|r| r.created_at).collect();
    let from = key.map(|k| k.second);
    let seen: HashSet<i64> = key
        .map(|k| k.seen.iter().copied().collect())
        .unwrap_or_default();
    // Every item in the list counts for the key (the list holds at least what was asked).
    let keyed: Vec<&Record> = records
        .iter()
        .filter(|r| r.created_at.is_some_and(|c| from.is_none_or(|f| c >= f)))
        .collect();
    let newest = keyed.iter().filter_map(|r| r.created_at).max();
    let oldest = keyed.iter().filter_map(|r| r.created_at).min();
    let at_newest: Vec<i64> = keyed
        .iter()
        .filter(|r| r.created_at == newest)
        .map(|r| r.id)
        .collect();
    let keyed_n = keyed.len();
    let mut times: Vec<i64> = records
        .iter()
        .filter(|r| in_window(ctx, r))
        .map(|r| r.updated_at)
        .collect();
    let keep: Vec<Record> = records
        .into_iter()
        .filter(|r| in_window(ctx, r))
        .filter(|r| match (r.created_at, from) {
            (Some(c), Some(f)) => c > f || (c == f && !seen.contains(&r.id)),
            _ => true,
        })
        .collect();
    let asked_from = req.created.and_then(|b| b.from);
    let only_widened = from.is_some_and(|f| asked_from.is_some_and(|a| a < f))
        && records_all(&created_values, |c| Some(c) == asked_from);
    let step = if !full {
        Step::Done
    } else if keyed_n == 0 && only_widened {
        // A full page of the second below the key, asked for in case the lower bound
        // excludes its end: it does not, and the next request asks from the key.
        Step::Goes(Position::CreatedAt { key: key.cloned() })
    } else if strays * 2 > keyed_n.max(1) && strays * 2 > req.limit as usize {
        unhonoured(
            Param::FilterUpdatedAt,
            Fallback::None,
            format!("{strays} items of a full page lie before the asked updated_at"),
            true,
        )
    } else {
        match newest {
            None => unhonoured(
                Param::FilterCreatedAt,
                Fallback::ById,
                "a full page held nothing at or after the asked created_at".into(),
                true,
            ),
            // All of a full page in one second after the key: no evidence of the order.
            // As for `updated_at`: the crowd by id, with the seconds between the key and it
            // until the order is shown.
            Some(newest)
                if Some(newest) == from
                    || crowded(at_newest.len(), req.limit)
                    || at_newest.len() == keyed_n
                    || !ctx.order_shown =>
            {
                Step::Goes(Position::CreatedSecond {
                    since: if ctx.order_shown { Some(newest) } else { from },
                    second: newest,
                    by_id: ById::default(),
                })
            }
            Some(newest) => Step::Goes(Position::CreatedAt {
                key: Some(Key {
                    second: newest,
                    seen: at_newest,
                }),
            }),
        }
    };
    let mut out = Outcome::new(keep, step);
    out.strays = strays;
    if let (Some(newest), Some(oldest), true) = (newest, oldest, full) {
        let start = from.unwrap_or(oldest);
        let rate = keyed_n.max(1) as f64 / (newest - start + 1) as f64;
        // What is left has created_at in (newest, to] (created_at <= updated_at).
        out.remaining = Some(rate * (ctx.to - newest).max(0) as f64);
        times.sort_unstable();
        out.split_at = times.get(times.len() / 2).copied();
    }
    out
}

#[allow(clippy::too_many_arguments)]
fn by_id_page(
    ctx: &Ctx,
    by_id: &ById,
    req: &PageRequest,
    records: Vec<Record>,
    belongs: impl Fn(&Record) -> bool,
    next: impl Fn(ById) -> Position,
    done: Step,
) -> Outcome {
    if !ids_strictly_ascending(&records) {
        return Outcome::new(
            Vec::new(),
            unhonoured(
                Param::OrderId,
                Fallback::None,
                "a page asked in id order was not sorted by id".into(),
                true,
            ),
        );
    }
    let full = is_full(records.len(), req.limit);
    let strays = Strays::of(ctx, req, &records);
    // Items below the asked range mean the walk reads the whole list; above it (with
    // `If-Modified-Since` narrowing the list instead), everything newer than the window:
    // both still prove what they prove, but where the stream can be walked from the
    // newest down, that is far cheaper.
    if full && strays.dominate(records.len()) && (strays.below > 0 || !ctx.alone || ctx.can_descend)
    {
        return Outcome {
            strays: strays.total(),
            ..Outcome::new(
                Vec::new(),
                unhonoured(
                    Param::FilterUpdatedAt,
                    if ctx.can_descend || strays.below > 0 {
                        Fallback::Descending
                    } else {
                        Fallback::OneWindow
                    },
                    format!(
                        "{} of {} items of a full page lie outside the asked updated_at",
                        strays.total(),
                        records.len()
                    ),
                    true,
                ),
            )
        };
    }
    let strays = strays.total();
    let offset = req.offset();
    let continuous = offset == 0
        || records
            .first()
            .is_some_and(|r| by_id.tail.is_some_and(|t| r.id <= t));
    let tail = by_id.tail;
    let last = records.last().map(|r| r.id);
    let len = records.len() as u64;
    let keep: Vec<Record> = records
        .into_iter()
        .filter(|r| in_window(ctx, r) && belongs(r) && tail.is_none_or(|t| r.id > t))
        .collect();
    let step = if !continuous {
        // The item after the tail now stands at or before `offset`.
        Step::StepBack(next(ById {
            tail,
            next_offset: by_id.next_offset.min(offset),
            exact: by_id.exact,
        }))
    } else if !full {
        done
    } else if last > tail {
        Step::Goes(next(ById {
            tail: last,
            next_offset: offset + len,
            exact: by_id.exact,
        }))
    } else {
        // Nothing past the tail in this page: the item after the tail stands after the page
        // now. That is a fresh lower bound; where the tail was seen last is an upper bound
        // that goes stale as the list shrinks (or, where entities may enter the list, a
        // bound that goes stale the other way). Aim from the page's end: the next page
        // either holds the tail or moves the bound forward.
        Step::Goes(next(ById {
            tail,
            next_offset: offset + len,
            exact: by_id.exact,
        }))
    };
    Outcome {
        strays,
        ..Outcome::new(keep, step)
    }
}

fn descending(
    ctx: &Ctx,
    floor: Option<&Key>,
    offset: u64,
    req: &PageRequest,
    records: Vec<Record>,
) -> Outcome {
    let calm = |r: &Record| r.updated_at < ctx.race_bound;
    if !sorted_by(
        records.iter().filter(|r| calm(r)).map(|r| r.updated_at),
        false,
    ) {
        return Outcome::new(
            Vec::new(),
            unhonoured(
                Param::OrderUpdatedAt,
                Fallback::None,
                "a page asked newest first was not sorted by updated_at".into(),
                true,
            ),
        );
    }
    // Everything in the list above `k` has been read (and what lies in the window stored),
    // and at `k` what `seen` holds. Before any floor, the walk is still above the window.
    let k = floor.map_or(ctx.to, |f| f.second);
    let seen: HashSet<i64> = floor
        .map(|f| f.seen.iter().copied().collect())
        .unwrap_or_default();
    let full = is_full(records.len(), req.limit);
    let here = req.offset();
    // The page starts above `k` if its first two items show newer times: at most one item
    // of a page can have raced (an edit while the page is built), so one of the two is where
    // its time says, and the other stands before it.
    let continuous = here == 0
        || match records.as_slice() {
            [a] => calm(a) && a.updated_at > k,
            [a, b, ..] => a.updated_at > k && b.updated_at > k,
            [] => false,
        };
    let passed = records.iter().any(|r| calm(r) && r.updated_at < ctx.from);
    // The last item that cannot have raced, and where its second begins in the page.
    let last = records.iter().rev().find(|r| calm(r)).map(|r| r.updated_at);
    let group_start = last.and_then(|l| records.iter().position(|r| calm(r) && r.updated_at == l));
    let at_last: Vec<i64> = records
        .iter()
        .filter(|r| calm(r) && Some(r.updated_at) == last)
        .map(|r| r.id)
        .collect();
    let len = records.len() as u64;
    let keep: Vec<Record> = records
        .into_iter()
        .filter(|r| calm(r) && in_window(ctx, r))
        .filter(|r| r.updated_at < k || (r.updated_at == k && !seen.contains(&r.id)))
        .collect();
    let step = if !continuous {
        Step::StepBack(Position::Descending {
            floor: floor.cloned(),
            offset: offset.min(here),
        })
    } else if passed || !full {
        Step::Done
    } else {
        match (last, group_start) {
            (Some(l), Some(i)) if l < k => Step::Goes(Position::Descending {
                floor: Some(Key {
                    second: l,
                    seen: at_last,
                }),
                offset: here + i as u64,
            }),
            (Some(l), Some(i)) if l == k && floor.is_some() => {
                let mut seen_all: Vec<i64> = seen.into_iter().collect();
                seen_all.extend(at_last);
                seen_all.sort_unstable();
                seen_all.dedup();
                // A page that starts just above the second holds at most `limit - 3` of
                // it: once that many distinct entities were seen there, no page can pass
                // it (its ties come in any order, and nothing else narrows the list).
                if seen_all.len() + 4 > req.limit as usize {
                    unhonoured(
                        Param::FilterUpdatedAt,
                        Fallback::None,
                        format!(
                            "updated_at second {k} holds at least {} entities, more than a page, \
                             which cannot be walked without the filter",
                            seen_all.len()
                        ),
                        true,
                    )
                } else {
                    Step::Goes(Position::Descending {
                        floor: Some(Key {
                            second: k,
                            seen: seen_all,
                        }),
                        offset: here + i as u64,
                    })
                }
            }
            (Some(l), Some(i)) if l == k => Step::Goes(Position::Descending {
                floor: Some(Key {
                    second: l,
                    seen: at_last,
                }),
                offset: here + i as u64,
            }),
            // Everything here is still newer than what is proven: read on below it.
            _ => Step::Goes(Position::Descending {
                floor: floor.cloned(),
                offset: here + len,
            }),
        }
    };
    Outcome::new(keep, step)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::source::{Bounds, Order};

    const CTX: Ctx = Ctx {
        from: 100,
        to: 1000,
        race_bound: 1300,
        can_descend: true,
        order_shown: true,
        alone: true,
    };

    fn rec(id: i64, updated_at: i64) -> Record {
        Record {
            id,
            updated_at,
            created_at: Some(updated_at),
            raw: json!({"id": id}),
        }
    }

    fn keyset(from: i64, limit: u32) -> PageRequest {
        PageRequest {
            stream: "leads",
            updated: Some(Bounds {
                from: Some(from - 1),
                to: Some(CTX.to + 1),
            }),
            created: None,
            order: Order::UpdatedAtAsc,
            page: 1,
            limit,
            if_modified_since: Some(from - 2),
        }
    }

    fn at(second: i64) -> Position {
        Position::UpdatedAt {
            key: Key::at(second),
        }
    }

    /// Defect 1 of the walk v2 issue: one entity edited while the page was built carries a
    /// version beyond the window. It has left the window; the rest of the window is still
    /// walked, wherever that entity sits in the page.
    #[test]
    fn a_full_page_with_one_entity_raced_past_the_window_loses_nothing_at_any_position() {
        for position in 0..10 {
            let mut page: Vec<Record> = (0..10).map(|i| rec(i, 200 + i * 10)).collect();
            page[position as usize] = rec(position, 1500);
            let out = apply(&CTX, &at(100), &keyset(100, 10), page);
            let newest = if position == 9 { 280 } else { 290 };
            assert_eq!(
                out.step,
                Step::Goes(Position::UpdatedAt {
                    key: Key {
                        second: newest,
                        seen: vec![if position == 9 { 8 } else { 9 }]
                    }
                }),
                "raced at {position}"
            );
            assert_eq!(
                out.keep.len(),
                9,
                "the raced entity is taken by a later run"
            );
            assert!(out.keep.iter().all(|r| r.updated_at <= CTX.to));
        }
    }

    /// An entity newer than the window that cannot have raced (older than the run) sorts
    /// after every entity of the window: it ends the window.
    #[test]
    fn an_entity_just_beyond_the_window_ends_it() {
        let mut page: Vec<Record> = (0..9).map(|i| rec(i, 900 + i * 10)).collect();
        page.push(rec(50, 1100));
        let out = apply(&CTX, &at(100), &keyset(100, 10), page);
        assert_eq!(out.step, Step::Done);
        assert_eq!(out.keep.len(), 9);
    }

    /// A page that is not sorted as asked: the API ignores the order, and the walk goes on
    /// by id (for good: later runs start that way).
    #[test]
    fn a_page_not_sorted_by_updated_at_turns_the_walk_to_ids() {
        let page = vec![rec(1, 300), rec(2, 200), rec(3, 400)];
        let out = apply(&CTX, &at(100), &keyset(100, 3), page);
        assert!(
            matches!(
                out.step,
                Step::Unhonoured {
                    param: Param::OrderUpdatedAt,
                    fallback: Fallback::ById,
                    switch: true,
                    ..
                }
            ),
            "{:?}",
            out.step
        );
    }

    /// A full page of entities before the asked range, none after it: the filter is not
    /// applied (an account whose API filtering is off).
    #[test]
    fn a_full_page_from_before_the_asked_range_shows_the_filter_is_off() {
        let page: Vec<Record> = (0..5).map(|i| rec(i, 10 + i)).collect();
        let out = apply(&CTX, &at(500), &keyset(500, 5), page);
        assert!(
            matches!(
                out.step,
                Step::Unhonoured {
                    param: Param::FilterUpdatedAt,
                    fallback: Fallback::Descending,
                    ..
                }
            ),
            "{:?}",
            out.step
        );
    }

    /// The second below the key, asked for only in case the API excludes `from`, filling a
    /// whole page is not an ignored filter: the next request (with the bound learned) goes on.
    #[test]
    fn a_page_of_the_second_below_the_key_asks_again_from_the_key() {
        let page: Vec<Record> = (0..5).map(|i| rec(i, 499)).collect();
        let out = apply(&CTX, &at(500), &keyset(500, 5), page);
        assert_eq!(out.step, Step::Goes(at(500)));
    }

    /// A full page all in one second after the key shows no order at all: until earlier
    /// pages have shown it, the walk by id covers that second and every second between the
    /// key and it, so nothing there rests on an order the API may not have kept. Once the
    /// order is shown, the page proves those seconds empty and only the crowd is walked.
    #[test]
    fn a_full_page_all_in_one_later_second_is_walked_by_id_from_the_key() {
        let page: Vec<Record> = (0..5).map(|i| rec(i, 700)).collect();
        let unshown = Ctx {
            order_shown: false,
            ..CTX
        };
        let out = apply(&unshown, &at(100), &keyset(100, 5), page.clone());
        assert_eq!(
            out.step,
            Step::Goes(Position::UpdatedSecond {
                since: 100,
                second: 700,
                by_id: ById::default()
            })
        );
        let out = apply(&CTX, &at(100), &keyset(100, 5), page);
        assert_eq!(
            out.step,
            Step::Goes(Position::UpdatedSecond {
                since: 700,
                second: 700,
                by_id: ById::default()
            })
        );
    }

    /// A page sorted by luck (the order not shown yet) proves nothing about the seconds it
    /// spans: they are walked by id, not stepped over.
    #[test]
    fn a_sorted_page_before_the_order_is_shown_is_walked_by_id() {
        let page: Vec<Record> = [(1, 300), (2, 300), (3, 300), (4, 300), (5, 400)]
            .into_iter()
            .map(|(id, u)| rec(id, u))
            .collect();
        let unshown = Ctx {
            order_shown: false,
            ..CTX
        };
        let out = apply(&unshown, &at(100), &keyset(100, 5), page);
        assert_eq!(
            out.step,
            Step::Goes(Position::UpdatedSecond {
                since: 100,
                second: 400,
                by_id: ById::default()
            })
        );
    }

    #[test]
    fn order_steps_count_the_changes_of_key() {
        use super::super::plan::order_steps;
        assert_eq!(order_steps(&[5, 5, 5, 5, 5, 5, 9]), 1);
        assert_eq!(order_steps(&[1, 2, 3, 3, 4]), 3);
        assert_eq!(order_steps(&[]), 0);
    }

    fn by_id(page: u32, limit: u32) -> PageRequest {
        PageRequest {
            stream: "leads",
            updated: Some(Bounds {
                from: Some(499),
                to: Some(501),
            }),
            created: None,
            order: Order::IdAsc,
            page,
            limit,
            if_modified_since: Some(498),
        }
    }

    fn second(tail: Option<i64>, next_offset: u64) -> Position {
        Position::UpdatedSecond {
            since: 500,
            second: 500,
            by_id: ById {
                tail,
                next_offset,
                exact: None,
            },
        }
    }

    /// Defect 2: a crowded second under churn is walked in one pass. A page that overlaps the
    /// tail proves continuity; one whose first id is past the tail steps back (earlier
    /// offset, more overlap) instead of repeating the whole pass.
    #[test]
    fn a_crowded_second_is_walked_in_one_pass_proving_each_page_continuous() {
        // First page: offset 0.
        let out = apply(
            &CTX,
            &second(None, 0),
            &by_id(1, 4),
            (1..=4).map(|i| rec(i, 500)).collect(),
        );
        assert_eq!(out.step, Step::Goes(second(Some(4), 4)));
        assert_eq!(out.keep.len(), 4);
        // Overlapping page (offset 2, items 3..6): continuous, 5 and 6 are new.
        let out = apply(
            &CTX,
            &second(Some(4), 4),
            &by_id(2, 2),
            vec![rec(3, 500), rec(4, 500)],
        );
        assert_eq!(
            out.step,
            Step::Goes(second(Some(4), 4)),
            "no progress, same position"
        );
        let out = apply(
            &CTX,
            &second(Some(4), 4),
            &PageRequest {
                page: 2,
                limit: 3,
                ..by_id(1, 3)
            },
            vec![rec(4, 500), rec(5, 500), rec(6, 500)],
        );
        assert_eq!(out.step, Step::Goes(second(Some(6), 6)));
        assert_eq!(
            out.keep.iter().map(|r| r.id).collect::<Vec<_>>(),
            vec![5, 6]
        );
        // Two entities before the tail left: the page at offset 3 starts past it.
        let out = apply(
            &CTX,
            &second(Some(6), 6),
            &PageRequest {
                page: 2,
                limit: 3,
                ..by_id(1, 3)
            },
            vec![rec(8, 500), rec(9, 500), rec(10, 500)],
        );
        assert_eq!(out.step, Step::StepBack(second(Some(6), 3)));
        // A short page that holds the tail ends the second; the keyset goes on after it.
        let out = apply(
            &CTX,
            &second(Some(6), 3),
            &by_id(1, 10),
            (1..=6).chain(8..=10).map(|i| rec(i, 500)).collect(),
        );
        assert_eq!(out.step, Step::Goes(at(501)));
    }

    /// Pages asked in id order must come in id order: else the walk has nothing left to
    /// stand on and fails naming the parameter.
    #[test]
    fn a_page_asked_by_id_that_is_not_sorted_by_id_names_order_id() {
        let out = apply(
            &CTX,
            &second(None, 0),
            &by_id(1, 3),
            vec![rec(3, 500), rec(1, 500), rec(2, 500)],
        );
        assert!(matches!(
            out.step,
            Step::Unhonoured {
                param: Param::OrderId,
                fallback: Fallback::None,
                ..
            }
        ));
    }

    #[test]
    fn a_short_page_whose_length_is_a_multiple_of_fifty_is_followed_up() {
        assert!(is_full(250, 250));
        assert!(!is_full(249, 250));
        assert!(is_full(50, 250), "a server that silently serves 50 at most");
        assert!(is_full(100, 250));
        assert!(!is_full(0, 250));
        assert!(!is_full(7, 10));
    }
}
