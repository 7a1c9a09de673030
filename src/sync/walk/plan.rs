//! Which request moves a window forward: bounds made agnostic of how the API reads its
//! ends, and page offsets chosen so that consecutive pages overlap.

use std::collections::HashSet;

use crate::source::{Bounds, Order, PageRequest};
use crate::sync::cursor::{ById, ExactEnds, Position};

/// What the walk has learned about how the API reads range bounds, per filter. Until a
/// bound is shown to include its end, the walk asks one second wider on that side and keeps
/// on the client only what lies inside, so inclusive and exclusive bounds give the same
/// mirror. (A bound is shown inclusive by an item exactly on it in a page that kept nothing
/// outside it; a bound the API ignores may look inclusive, which changes nothing.)
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Learned {
    pub updated_from: bool,
    pub updated_to: bool,
    pub created_from: bool,
    pub created_to: bool,
    /// A second known to hold entities, asked for exactly, came back empty: a bound
    /// excludes its end, and no exact request is tried again.
    pub exact_failed: bool,
    /// Evidence that the API honours `order[updated_at]` / `order[created_at]`: the steps
    /// between distinct keys in the sorted pages seen so far (see [`order_steps`] and [`order_shown_steps`]).
    pub updated_order_steps: u32,
    pub created_order_steps: u32,
}

/// Sorted pages showing this many steps between distinct keys prove the order: a list in
/// another order (shuffled, or by id over imports and bulk edits, whose blocks can line up
/// by chance) does not come sorted over so many distinct seconds. Pages smaller than that
/// (the model checker's) need one page of distinct keys.
pub fn order_shown_steps(limit: u32) -> u32 {
    12.min(limit.saturating_sub(1)).max(1)
}

/// How much one sorted page shows of its order: the number of times its key changes. A
/// page of 250 items over dozens of seconds shows it at once; a page of a crowd and a bulk
/// edit (two blocks that a list by id may return in either order) shows almost nothing.
pub fn order_steps(keys: &[i64]) -> u32 {
    keys.windows(2).filter(|w| w[0] != w[1]).count() as u32
}

/// Whether a first page of a second asks for exactly that second: the walk knows the second
/// holds entities, so the answer shows at once whether both bounds include their ends (and
/// then no later request needs to be wider). Only while that is unknown.
pub fn exact_probe(learned: &Learned, at: &Position) -> bool {
    let first = |b: &ById| b.tail.is_none() && b.next_offset == 0;
    !learned.exact_failed
        && match at {
            // Only where the walk covers that one second: a wider walk could not tell
            // what an exact page proved.
            Position::UpdatedSecond {
                since,
                second,
                by_id,
            } => since == second && !(learned.updated_from && learned.updated_to) && first(by_id),
            Position::CreatedSecond {
                since,
                second,
                by_id,
            } => {
                *since == Some(*second)
                    && !(learned.created_from && learned.created_to)
                    && first(by_id)
            }
            _ => false,
        }
}

impl Learned {
    fn updated(&self, from: Option<i64>, to: Option<i64>) -> Bounds {
        Bounds {
            from: from.map(|f| widen_down(f, self.updated_from)),
            to: to.map(|t| if self.updated_to { t } else { t + 1 }),
        }
    }

    fn created(&self, from: Option<i64>, to: Option<i64>) -> Bounds {
        Bounds {
            from: from.map(|f| widen_down(f, self.created_from)),
            to: to.map(|t| if self.created_to { t } else { t + 1 }),
        }
    }

    /// Takes what a page shows about the bounds it was asked with.
    /// The range ends known inclusive, as a walk by offset keeps them.
    pub fn exact_ends(&self) -> ExactEnds {
        ExactEnds {
            updated_from: self.updated_from,
            updated_to: self.updated_to,
            created_from: self.created_from,
            created_to: self.created_to,
        }
    }

    /// What a walk by offset resumed from its stored form asks with.
    pub fn from_exact_ends(e: ExactEnds) -> Learned {
        Learned {
            updated_from: e.updated_from,
            updated_to: e.updated_to,
            created_from: e.created_from,
            created_to: e.created_to,
            // A walk by offset never probes: it asks for the list its offsets count in.
            exact_failed: true,
            ..Learned::default()
        }
    }

    /// Whether a sorted page in `order` is evidence enough that the list is in that order.
    pub fn order_shown(&self, order: Order, limit: u32) -> bool {
        let enough = order_shown_steps(limit);
        match order {
            Order::UpdatedAtAsc | Order::UpdatedAtDesc => self.updated_order_steps >= enough,
            Order::CreatedAtAsc => self.created_order_steps >= enough,
            Order::IdAsc => true,
        }
    }

    /// Learns from one answer to `req`: bounds shown inclusive, and the evidence of its
    /// order (items at or above `race_bound` may have raced and sort where their old
    /// version did, so they show nothing).
    pub fn learn(&mut self, req: &PageRequest, records: &[crate::source::Record], race_bound: i64) {
        let keys: Vec<i64> = match req.order {
            Order::UpdatedAtAsc | Order::UpdatedAtDesc => records
                .iter()
                .filter(|r| r.updated_at < race_bound)
                .map(|r| r.updated_at)
                .collect(),
            Order::CreatedAtAsc => records.iter().filter_map(|r| r.created_at).collect(),
            Order::IdAsc => Vec::new(),
        };
        let asc = req.order != Order::UpdatedAtDesc;
        if super::page::sorted_by(keys.iter(), asc) {
            let steps = order_steps(&keys);
            match req.order {
                Order::UpdatedAtAsc | Order::UpdatedAtDesc => {
                    self.updated_order_steps = self.updated_order_steps.saturating_add(steps)
                }
                Order::CreatedAtAsc => {
                    self.created_order_steps = self.created_order_steps.saturating_add(steps)
                }
                Order::IdAsc => {}
            }
        }
        if let Some(b) = req.updated {
            if let Some(f) = b.from {
                let on = records.iter().any(|r| r.updated_at == f);
                let below = records.iter().any(|r| r.updated_at < f);
                self.updated_from |= on && !below && f > 0;
            }
            if let Some(t) = b.to {
                let on = records.iter().any(|r| r.updated_at == t);
                let above = records.iter().any(|r| r.updated_at > t);
                self.updated_to |= on && !above;
            }
        }
        if let Some(b) = req.created {
            if let Some(f) = b.from {
                let on = records.iter().any(|r| r.created_at == Some(f));
                let below = records.iter().any(|r| r.created_at.is_some_and(|c| c < f));
                self.created_from |= on && !below && f > 0;
            }
            if let Some(t) = b.to {
                let on = records.iter().any(|r| r.created_at == Some(t));
                let above = records.iter().any(|r| r.created_at.is_some_and(|c| c > t));
                self.created_to |= on && !above;
            }
        }
    }
}

/// One second lower unless the API is known to include `from`; never below 0 (unix times).
fn widen_down(from: i64, inclusive: bool) -> i64 {
    let f = if inclusive { from } else { from - 1 };
    f.max(0)
}

/// `If-Modified-Since` one second before the asked lower bound: right whether the server
/// compares with `>` or `>=`, and harmless if it ignores the header.
fn ims(from: Option<i64>) -> Option<i64> {
    from.filter(|f| *f > 0).map(|f| f - 1)
}

/// Where a window stands, as far as planning needs it.
pub struct Target<'a> {
    pub stream: &'static str,
    pub from: i64,
    /// `None` for a run's first window before its first answer.
    pub to: Option<i64>,
    pub at: &'a Position,
    pub limit: u32,
    /// How many items consecutive offset pages share (runtime; grows after a step back).
    pub overlap: u32,
}

/// The request that moves `t` forward, never one already in `sent`; `None` when every
/// request that could would repeat one (then the walk stops rather than ask again).
pub fn request(t: &Target, learned: &Learned, sent: &HashSet<PageRequest>) -> Option<PageRequest> {
    // `If-Modified-Since` one second below the first `updated_at` the request needs (not
    // below the widened bound): `>` and `>=` both keep all of it, and a server that honours
    // the header leaves out the second below, which may be a crowd just walked.
    let needed = match t.at {
        Position::UpdatedAt { key } => Some(key.second),
        Position::UpdatedSecond { since, .. } => Some(*since),
        _ => Some(t.from),
    };
    let base = |updated: Option<Bounds>, created: Option<Bounds>, order| PageRequest {
        stream: t.stream,
        if_modified_since: updated.and(ims(needed)),
        updated,
        created,
        order,
        page: 1,
        limit: t.limit,
    };
    let window = learned.updated(Some(t.from), t.to);
    let req = match t.at {
        Position::UpdatedAt { key } => base(
            Some(learned.updated(Some(key.second), t.to)),
            None,
            Order::UpdatedAtAsc,
        ),
        Position::CreatedAt { key } => base(
            Some(window),
            key.as_ref().map(|k| learned.created(Some(k.second), None)),
            Order::CreatedAtAsc,
        ),
        Position::UpdatedSecond {
            since,
            second,
            by_id,
        } => by_offset(
            base(
                Some(if exact_probe(learned, t.at) {
                    Bounds {
                        from: Some(*second),
                        to: Some(*second),
                    }
                } else {
                    learned.updated(Some(*since), Some(*second))
                }),
                None,
                Order::IdAsc,
            ),
            by_id,
            t,
            sent,
        )?,
        Position::CreatedSecond {
            since,
            second,
            by_id,
        } => by_offset(
            base(
                Some(window),
                Some(if exact_probe(learned, t.at) {
                    Bounds {
                        from: Some(*second),
                        to: Some(*second),
                    }
                } else {
                    learned.created(*since, Some(*second))
                }),
                Order::IdAsc,
            ),
            by_id,
            t,
            sent,
        )?,
        Position::ById { by_id } => {
            by_offset(base(Some(window), None, Order::IdAsc), by_id, t, sent)?
        }
        Position::Descending { offset, .. } => {
            let mut req = base(None, None, Order::UpdatedAtDesc);
            // Without filters the header is the only thing that may trim the list.
            req.if_modified_since = ims(Some(widen_down(t.from, false)));
            // Start a little above where the unread part began, so that the page begins
            // with an item already passed (the proof that nothing was skipped).
            let target = offset.saturating_sub(u64::from(t.overlap.max(1)));
            let (page, limit) = choose_page(target, *offset, t.limit, |p, l| {
                sent.contains(&PageRequest {
                    page: p,
                    limit: l,
                    ..req
                })
            })?;
            PageRequest { page, limit, ..req }
        }
    };
    distinct(req, sent)
}

/// A page of a walk by id: the one that starts at most `overlap` items before the item after
/// the tail, so that it holds the tail again unless more than `overlap - 1` items before it
/// have left the list since.
fn by_offset(
    req: PageRequest,
    by_id: &ById,
    t: &Target,
    sent: &HashSet<PageRequest>,
) -> Option<PageRequest> {
    let (target, pass) = if by_id.tail.is_some() {
        (
            by_id
                .next_offset
                .saturating_sub(u64::from(t.overlap.max(1))),
            by_id.next_offset,
        )
    } else {
        (by_id.next_offset, 0)
    };
    let (page, limit) = choose_page(target, pass, t.limit, |p, l| {
        sent.contains(&PageRequest {
            page: p,
            limit: l,
            ..req
        })
    })?;
    Some(PageRequest { page, limit, ..req })
}

/// A keyset request is distinct by construction (each one starts past the previous); if
/// one ever were not, a smaller page makes it a different query rather than a repeated one.
fn distinct(mut req: PageRequest, sent: &HashSet<PageRequest>) -> Option<PageRequest> {
    while sent.contains(&req) {
        if req.limit <= 1 {
            return None;
        }
        req.limit -= 1;
    }
    Some(req)
}

/// Picks `page` and `limit` (≤ `max_limit`) for a page that starts at an offset
/// `(page - 1) × limit` no later than `target` and ends past `pass` (the first offset not
/// read yet), reaching as far as possible; pairs already `taken` are skipped (no query is
/// sent twice in a run). When no page from at most `target` can pass `pass` (offsets must
/// be whole multiples of the page size), a later start is allowed, down to an overlap of
/// one item.
pub fn choose_page(
    target: u64,
    pass: u64,
    max_limit: u32,
    taken: impl Fn(u32, u32) -> bool,
) -> Option<(u32, u32)> {
    let mut fallback = None;
    for t in target..=target.max(pass.saturating_sub(1)) {
        let best = best_page(t, max_limit, &taken);
        if let Some((end, page, limit)) = best {
            if end > pass || pass == 0 {
                return Some((page, limit));
            }
            fallback.get_or_insert((page, limit));
        }
    }
    // No page from near the target reaches past what was read (the good ones were sent
    // already): the one that reaches furthest, or none at all.
    fallback
}

/// The page starting at most at `target` that ends furthest: (end, page, limit). Every page
/// size is tried (at most 250), each with the most pages before it that fit.
fn best_page(
    target: u64,
    max_limit: u32,
    taken: &impl Fn(u32, u32) -> bool,
) -> Option<(u64, u32, u32)> {
    let mut best: Option<(u64, u32, u32)> = None;
    for limit in (1..=max_limit.max(1)).rev() {
        let k = target / u64::from(limit);
        for k in [k, k.saturating_sub(1)] {
            let Ok(page) = u32::try_from(k + 1) else {
                continue;
            };
            if taken(page, limit) {
                continue;
            }
            let end = u64::from(page) * u64::from(limit);
            if best.is_none_or(|(e, _, l)| end > e || (end == e && limit > l)) {
                best = Some((end, page, limit));
            }
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_start_at_or_before_the_target_and_reach_as_far_as_possible() {
        assert_eq!(choose_page(0, 0, 250, |_, _| false), Some((1, 250)));
        // 248: a second page of 248 starts exactly there.
        assert_eq!(choose_page(248, 250, 250, |_, _| false), Some((2, 248)));
        // 498: page 3 of 249 starts at 498 and reaches 747.
        assert_eq!(choose_page(498, 500, 250, |_, _| false), Some((3, 249)));
        // 17 with pages of 7: page 3 starts at 14 and reaches 21.
        assert_eq!(choose_page(17, 20, 7, |_, _| false), Some((3, 7)));
        // Small targets: the first page reaches further.
        assert_eq!(choose_page(3, 5, 250, |_, _| false), Some((1, 250)));
        for target in [1u64, 7, 249, 250, 251, 999, 3997, 12_345, 100_003] {
            let (page, limit) = choose_page(target, target + 1, 250, |_, _| false).unwrap();
            let offset = u64::from(page - 1) * u64::from(limit);
            assert!(offset <= target, "{target}: {page} x {limit}");
            assert!(limit <= 250);
            assert!(
                u64::from(page) * u64::from(limit) > target,
                "{target}: the page covers the target"
            );
        }
    }

    #[test]
    fn a_start_closer_to_the_tail_is_taken_when_no_page_could_pass_it() {
        // Pages of 7 from offset 27 or earlier end at 28 at most; from 28 one reaches 35.
        assert_eq!(choose_page(27, 30, 7, |_, _| false), Some((5, 7)));
    }

    #[test]
    fn a_page_already_sent_is_never_chosen_again() {
        let sent = [(2u32, 248u32)];
        let (p, l) = choose_page(248, 250, 250, |p, l| sent.contains(&(p, l))).unwrap();
        assert_ne!((p, l), (2, 248));
        assert!(u64::from(p - 1) * u64::from(l) <= 248);
    }

    #[test]
    fn when_every_page_was_sent_none_is_chosen() {
        assert_eq!(choose_page(40, 45, 7, |_, _| true), None);
    }

    #[test]
    fn unknown_bounds_are_asked_one_second_wider() {
        let l = Learned::default();
        assert_eq!(
            l.updated(Some(100), Some(200)),
            Bounds {
                from: Some(99),
                to: Some(201)
            }
        );
        let l = Learned {
            updated_from: true,
            updated_to: true,
            ..Learned::default()
        };
        assert_eq!(
            l.updated(Some(100), Some(200)),
            Bounds {
                from: Some(100),
                to: Some(200)
            }
        );
        assert_eq!(Learned::default().updated(Some(0), None).from, Some(0));
    }
}
