//! Parsing and validating query strings of list endpoints.
//!
//! Kommo's brackets syntax (`filter[id][]=1&filter[id][]=2`, `order[updated_at]=desc`) repeats
//! keys, so the query is read as ordered pairs rather than a map. Invalid values give the 400
//! a client would get from Kommo; unknown parameters are ignored, as Kommo ignores them.
//! [`ListRules`] carry the behaviours Kommo leaves open (bound inclusiveness, parameters an
//! account drops, the default order, a silent page-size cap).

use std::collections::HashSet;

use crate::config::{Bounds, DefaultOrder, IgnoredParam, Param};
use crate::entity::Entity;
use crate::events::EventFilter;
use crate::problem;
use crate::store::{ListFilter, SortField};

/// Kommo's page size cap.
pub const MAX_LIMIT: i64 = 250;
/// Events: the largest limit that works; above it Kommo silently serves 50.
pub const EVENTS_MAX_LIMIT: i64 = 100;
/// Custom field definitions: at most this many a page; a larger limit silently gives it.
pub const CUSTOM_FIELDS_MAX_LIMIT: i64 = 50;

/// Decoded `key=value` pairs in request order.
pub fn pairs(query: Option<&str>) -> Vec<(String, String)> {
    query
        .map(|q| {
            form_urlencoded::parse(q.as_bytes())
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect()
        })
        .unwrap_or_default()
}

/// Re-encodes pairs for `_links` hrefs, leaving brackets readable as Kommo does.
pub fn encode(pairs: &[(String, String)]) -> String {
    fn enc(s: &str) -> String {
        let mut out = String::new();
        for b in s.bytes() {
            match b {
                b'A'..=b'Z'
                | b'a'..=b'z'
                | b'0'..=b'9'
                | b'-'
                | b'_'
                | b'.'
                | b'~'
                | b'['
                | b']'
                | b',' => out.push(b as char),
                _ => out.push_str(&format!("%{b:02X}")),
            }
        }
        out
    }
    pairs
        .iter()
        .map(|(k, v)| format!("{}={}", enc(k), enc(v)))
        .collect::<Vec<_>>()
        .join("&")
}

/// Key identifying "the same query" for the repeated-query counter.
pub fn query_key(
    method: &str,
    path: &str,
    pairs: &[(String, String)],
    ims: Option<&str>,
) -> String {
    let mut sorted = pairs.to_vec();
    sorted.sort();
    format!(
        "{method} {path}?{}|ims={}",
        encode(&sorted),
        ims.unwrap_or("")
    )
}

/// A rejected query parameter; becomes Kommo's 400 with `validation-errors`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Invalid {
    pub path: String,
    pub code: &'static str,
    pub detail: String,
}

impl Invalid {
    fn new(path: &str, code: &'static str, detail: impl Into<String>) -> Invalid {
        Invalid {
            path: path.to_string(),
            code,
            detail: detail.into(),
        }
    }

    /// The 400 response.
    pub fn response(&self) -> axum::response::Response {
        problem::validation(&self.path, self.code, &self.detail)
    }
}

/// Page and limit of a paged request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Paging {
    pub page: i64,
    pub limit: i64,
}

/// A validated entity list request.
#[derive(Clone, Debug)]
pub struct ListParams {
    pub paging: Paging,
    pub filter: ListFilter,
}

/// How the running account reads entity list queries where Kommo's documentation is silent.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ListRules {
    /// Whether `[from]` / `[to]` include their value.
    pub bounds: Bounds,
    /// Parameters dropped after validation, as if never sent.
    pub ignored: Vec<IgnoredParam>,
    /// Order used when no honoured `order[...]` remains.
    pub default_order: DefaultOrder,
    /// Silent cap on items per page (`None` = `limit` is obeyed).
    pub max_page_size: Option<usize>,
}

impl ListRules {
    /// The page size a server with this cap really uses for a requested `limit`.
    pub fn page_size(&self, asked: i64) -> i64 {
        match self.max_page_size {
            Some(cap) => asked.min(cap.max(1) as i64),
            None => asked,
        }
    }

    /// Whether every `filter[...]` is dropped on every list (Kommo's `is_api_filter_enabled`
    /// is then false).
    pub fn filters_off_everywhere(&self) -> bool {
        self.ignored
            .iter()
            .any(|i| i.entity.is_none() && i.param == Param::Filters)
    }

    /// Drops the ignored parameters of `e` from a validated filter, then applies the default
    /// order if no order is left.
    fn apply(&self, e: Entity, f: &mut ListFilter) {
        for ig in self.ignored.iter().filter(|i| i.applies_to(e)) {
            let drop_order = |f: &mut ListFilter, s: SortField| f.order.retain(|(x, _)| *x != s);
            match ig.param {
                Param::FilterUpdatedAt => (f.updated_from, f.updated_to) = (None, None),
                Param::FilterCreatedAt => (f.created_from, f.created_to) = (None, None),
                Param::FilterId => f.ids = None,
                Param::Filters => {
                    (f.updated_from, f.updated_to) = (None, None);
                    (f.created_from, f.created_to) = (None, None);
                    f.ids = None;
                }
                Param::OrderUpdatedAt => drop_order(f, SortField::UpdatedAt),
                Param::OrderCreatedAt => drop_order(f, SortField::CreatedAt),
                Param::OrderId => drop_order(f, SortField::Id),
            }
        }
        if f.order.is_empty() {
            match self.default_order {
                DefaultOrder::IdAsc => {}
                DefaultOrder::IdDesc => f.order.push((SortField::Id, true)),
                DefaultOrder::UpdatedAtDesc => f.order.push((SortField::UpdatedAt, true)),
            }
        }
    }
}

fn int(key: &str, v: &str) -> Result<i64, Invalid> {
    v.trim().parse::<i64>().map_err(|_| {
        Invalid::new(
            key,
            "InvalidType",
            format!("{key} must be an integer, got {v:?}"),
        )
    })
}

/// `page` and `limit` with Kommo's bounds (limit 1..=max, default 50).
pub fn paging(pairs: &[(String, String)], max_limit: i64) -> Result<Paging, Invalid> {
    let mut p = Paging { page: 1, limit: 50 };
    for (k, v) in pairs {
        match k.as_str() {
            "page" if !v.is_empty() => {
                p.page = int("page", v)?;
                if p.page < 1 {
                    return Err(Invalid::new(
                        "page",
                        "RangeError",
                        "page must be 1 or greater",
                    ));
                }
            }
            "limit" if !v.is_empty() => {
                p.limit = int("limit", v)?;
                if !(1..=max_limit).contains(&p.limit) {
                    return Err(Invalid::new(
                        "limit",
                        "RangeError",
                        format!("limit must be between 1 and {max_limit}"),
                    ));
                }
            }
            _ => {}
        }
    }
    Ok(p)
}

/// `page` and `limit` where any valid `limit` above `cap` silently becomes `cap` (Kommo's custom
/// field definitions). `limit` below 1 or not a number is still a 400.
pub fn capped_paging(pairs: &[(String, String)], cap: i64) -> Result<Paging, Invalid> {
    let capped: Vec<(String, String)> = pairs
        .iter()
        .map(|(k, v)| {
            if k == "limit" && v.trim().parse::<i64>().is_ok_and(|l| l > cap) {
                (k.clone(), cap.to_string())
            } else {
                (k.clone(), v.clone())
            }
        })
        .collect();
    paging(&capped, cap)
}

/// Splits `filter[FIELD][SUB]` into (FIELD, Some(SUB)) or `filter[FIELD]` into (FIELD, None).
fn filter_key(k: &str) -> Option<(&str, Option<&str>)> {
    let rest = k.strip_prefix("filter[")?;
    let (field, tail) = rest.split_once(']')?;
    if tail.is_empty() {
        return Some((field, None));
    }
    let sub = tail.strip_prefix('[')?.strip_suffix(']')?;
    Some((field, Some(sub)))
}

fn ids(key: &str, v: &str) -> Result<Vec<i64>, Invalid> {
    v.split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|s| int(key, s))
        .collect()
}

/// Time range from `filter[F][from]`, `filter[F][to]` and `filter[F]=X`, stored as inclusive
/// bounds: an exclusive `[from]=X` becomes `>= X + 1` (times are whole seconds). A bare
/// `filter[F]=X` is always that one second.
fn range(
    (lo, hi): (&mut Option<i64>, &mut Option<i64>),
    bounds: Bounds,
    key: &str,
    sub: Option<&str>,
    v: &str,
) -> Result<(), Invalid> {
    let x = int(key, v)?;
    let tighten_lo = |lo: &mut Option<i64>, x: i64| *lo = Some(lo.map_or(x, |l| l.max(x)));
    let tighten_hi = |hi: &mut Option<i64>, x: i64| *hi = Some(hi.map_or(x, |h| h.min(x)));
    match sub {
        Some("from") if bounds.excludes_from() => tighten_lo(lo, x.saturating_add(1)),
        Some("from") => tighten_lo(lo, x),
        Some("to") if bounds.excludes_to() => tighten_hi(hi, x.saturating_sub(1)),
        Some("to") => tighten_hi(hi, x),
        None => {
            tighten_lo(lo, x);
            tighten_hi(hi, x);
        }
        _ => {}
    }
    Ok(())
}

/// Parses a list request for `e` with today's default rules (inclusive bounds, nothing
/// ignored, id ascending).
pub fn list_params(e: Entity, pairs: &[(String, String)]) -> Result<ListParams, Invalid> {
    list_params_with(e, pairs, &ListRules::default())
}

/// Parses a list request for `e`: validates every parameter first (an invalid one is a 400 even
/// if the account ignores it), then drops what `rules` ignore and applies the default order.
pub fn list_params_with(
    e: Entity,
    pairs: &[(String, String)],
    rules: &ListRules,
) -> Result<ListParams, Invalid> {
    let paging = paging(pairs, MAX_LIMIT)?;
    let b = rules.bounds;
    let mut f = ListFilter::default();
    let mut id_set: Option<HashSet<i64>> = None;
    for (k, v) in pairs {
        if v.is_empty() {
            continue;
        }
        if let Some((field, sub)) = filter_key(k) {
            match field {
                "id" => id_set.get_or_insert_with(HashSet::new).extend(ids(k, v)?),
                "updated_at" => range((&mut f.updated_from, &mut f.updated_to), b, k, sub, v)?,
                "created_at" => range((&mut f.created_from, &mut f.created_to), b, k, sub, v)?,
                _ => {} // other filters are not emulated: ignored
            }
        } else if let Some(field) = k.strip_prefix("order[").and_then(|r| r.strip_suffix(']')) {
            let allowed: &[&str] = if e.can_order_by_updated_at() {
                &["updated_at", "created_at", "id"]
            } else {
                &["created_at", "complete_till", "id"]
            };
            let sort = match field {
                "updated_at" if e.can_order_by_updated_at() => SortField::UpdatedAt,
                "created_at" => SortField::CreatedAt,
                "id" => SortField::Id,
                "complete_till" if e == Entity::Tasks => SortField::CompleteTill,
                _ => {
                    return Err(Invalid::new(
                        k,
                        "NotSupportedChoice",
                        format!(
                            "{} cannot be ordered by {field:?}; allowed: {}",
                            e.as_str(),
                            allowed.join(", ")
                        ),
                    ))
                }
            };
            let desc = match v.to_ascii_lowercase().as_str() {
                "asc" => false,
                "desc" => true,
                _ => {
                    return Err(Invalid::new(
                        k,
                        "NotSupportedChoice",
                        format!("order direction must be asc or desc, got {v:?}"),
                    ))
                }
            };
            f.order.retain(|(s, _)| *s != sort);
            f.order.push((sort, desc));
        }
    }
    f.ids = id_set;
    rules.apply(e, &mut f);
    Ok(ListParams { paging, filter: f })
}

/// Parses an events request. A limit above 100 silently becomes 50, as on Kommo.
pub fn event_params(pairs: &[(String, String)]) -> Result<(Paging, EventFilter), Invalid> {
    let capped: Vec<(String, String)> = pairs
        .iter()
        .map(|(k, v)| {
            if k == "limit" && v.trim().parse::<i64>().is_ok_and(|l| l > EVENTS_MAX_LIMIT) {
                (k.clone(), "50".to_string())
            } else {
                (k.clone(), v.clone())
            }
        })
        .collect();
    let paging = paging(&capped, EVENTS_MAX_LIMIT)?;
    let mut f = EventFilter::default();
    fn list(v: &str) -> impl Iterator<Item = String> + '_ {
        v.split(',')
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
    }
    for (k, v) in pairs {
        if v.is_empty() {
            continue;
        }
        if let Some((field, sub)) = filter_key(k) {
            match field {
                "type" => f.types.get_or_insert_with(Vec::new).extend(list(v)),
                "id" => f.ids.get_or_insert_with(Vec::new).extend(list(v)),
                "entity" => {
                    for name in list(v) {
                        let e: Entity = name
                            .parse()
                            .map_err(|m: String| Invalid::new(k, "NotSupportedChoice", m))?;
                        f.entities.get_or_insert_with(Vec::new).push(e);
                    }
                }
                "created_at" => range(
                    (&mut f.created_from, &mut f.created_to),
                    Bounds::Inclusive,
                    k,
                    sub,
                    v,
                )?,
                _ => {}
            }
        } else if k == "order[created_at]" || k == "order[id]" {
            f.ascending = v.eq_ignore_ascii_case("asc");
        }
    }
    Ok((paging, f))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(q: &str) -> Vec<(String, String)> {
        pairs(Some(q))
    }

    #[test]
    fn parses_brackets_and_repeats() {
        let lp = list_params(
            Entity::Leads,
            &p("filter%5Bid%5D%5B%5D=5&filter[id][]=7&filter[updated_at][from]=10&filter[updated_at][to]=20&order[updated_at]=desc&limit=250&page=2"),
        )
        .unwrap();
        assert_eq!(
            lp.paging,
            Paging {
                page: 2,
                limit: 250
            }
        );
        assert_eq!(lp.filter.ids, Some([5, 7].into_iter().collect()));
        assert_eq!(
            (lp.filter.updated_from, lp.filter.updated_to),
            (Some(10), Some(20))
        );
        assert_eq!(lp.filter.order, vec![(SortField::UpdatedAt, true)]);
        let exact = list_params(Entity::Tasks, &p("filter[updated_at]=15")).unwrap();
        assert_eq!(
            (exact.filter.updated_from, exact.filter.updated_to),
            (Some(15), Some(15))
        );
    }

    #[test]
    fn rejects_bad_limits_and_orders() {
        let path = |e, q| list_params(e, &p(q)).unwrap_err().path;
        assert_eq!(path(Entity::Leads, "limit=251"), "limit");
        assert_eq!(path(Entity::Leads, "limit=0"), "limit");
        assert_eq!(
            path(Entity::Tasks, "order[updated_at]=asc"),
            "order[updated_at]"
        );
        assert_eq!(
            path(Entity::Leads, "order[complete_till]=asc"),
            "order[complete_till]"
        );
        assert_eq!(path(Entity::Leads, "order[id]=up"), "order[id]");
        assert!(list_params(Entity::Tasks, &p("order[complete_till]=asc&foo=bar")).is_ok());
    }

    fn rules(bounds: Bounds, ignored: &[&str], default_order: DefaultOrder) -> ListRules {
        ListRules {
            bounds,
            ignored: ignored.iter().map(|s| s.parse().unwrap()).collect(),
            default_order,
            max_page_size: None,
        }
    }

    #[test]
    fn bounds_move_from_and_to_but_not_a_bare_second() {
        let q = p("filter[updated_at][from]=10&filter[updated_at][to]=20&filter[created_at][from]=1&filter[created_at][to]=5");
        let cases = [
            (Bounds::Inclusive, (10, 20), (1, 5)),
            (Bounds::ExclusiveFrom, (11, 20), (2, 5)),
            (Bounds::ExclusiveTo, (10, 19), (1, 4)),
            (Bounds::Exclusive, (11, 19), (2, 4)),
        ];
        for (b, (ul, uh), (cl, ch)) in cases {
            let r = rules(b, &[], DefaultOrder::IdAsc);
            let f = list_params_with(Entity::Leads, &q, &r).unwrap().filter;
            assert_eq!(
                (f.updated_from, f.updated_to),
                (Some(ul), Some(uh)),
                "{b:?}"
            );
            assert_eq!(
                (f.created_from, f.created_to),
                (Some(cl), Some(ch)),
                "{b:?}"
            );
            let exact = list_params_with(Entity::Tasks, &p("filter[updated_at]=15"), &r).unwrap();
            assert_eq!(
                (exact.filter.updated_from, exact.filter.updated_to),
                (Some(15), Some(15)),
                "{b:?}: a bare value is that second"
            );
        }
        // Events keep inclusive bounds whatever the lists do.
        let (_, ev) =
            event_params(&p("filter[created_at][from]=10&filter[created_at][to]=20")).unwrap();
        assert_eq!((ev.created_from, ev.created_to), (Some(10), Some(20)));
    }

    #[test]
    fn ignored_params_drop_after_validation() {
        let q = p("filter[id][]=5&filter[updated_at][from]=10&filter[created_at][to]=20&order[updated_at]=asc");
        let r = rules(
            Bounds::Inclusive,
            &["leads:filter[id]", "leads:order[updated_at]"],
            DefaultOrder::IdAsc,
        );
        let f = list_params_with(Entity::Leads, &q, &r).unwrap().filter;
        assert_eq!(f.ids, None);
        assert_eq!((f.updated_from, f.created_to), (Some(10), Some(20)));
        assert!(
            f.order.is_empty(),
            "dropped order falls back to id ascending"
        );
        // Another kind is untouched.
        let f = list_params_with(Entity::Contacts, &q, &r).unwrap().filter;
        assert_eq!(f.ids, Some([5].into_iter().collect()));
        assert_eq!(f.order, vec![(SortField::UpdatedAt, false)]);
        // Every filter, on every list.
        let r = rules(Bounds::Inclusive, &["*:filter"], DefaultOrder::IdDesc);
        assert!(r.filters_off_everywhere());
        let f = list_params_with(Entity::Tasks, &p("filter[id]=5&filter[updated_at]=3&filter[created_at][from]=1&order[created_at]=desc"), &r)
            .unwrap()
            .filter;
        assert_eq!(
            (
                f.ids,
                f.updated_from,
                f.updated_to,
                f.created_from,
                f.created_to
            ),
            (None, None, None, None, None)
        );
        assert_eq!(
            f.order,
            vec![(SortField::CreatedAt, true)],
            "orders are kept"
        );
        // Validation comes first: an invalid parameter is a 400 even when ignored.
        let r = rules(
            Bounds::Inclusive,
            &["*:order[updated_at]", "*:filter"],
            DefaultOrder::IdAsc,
        );
        let err = |e, q| list_params_with(e, &p(q), &r).unwrap_err().path;
        assert_eq!(
            err(Entity::Tasks, "order[updated_at]=asc"),
            "order[updated_at]"
        );
        assert_eq!(err(Entity::Leads, "filter[id]=abc"), "filter[id]");
        assert_eq!(
            err(Entity::Leads, "order[updated_at]=up"),
            "order[updated_at]"
        );
        // Only leads ignoring filters is not "off everywhere".
        let r = rules(Bounds::Inclusive, &["leads:filter"], DefaultOrder::IdAsc);
        assert!(!r.filters_off_everywhere());
    }

    #[test]
    fn default_order_fills_in_only_without_an_order() {
        for (d, want) in [
            (DefaultOrder::IdAsc, vec![]),
            (DefaultOrder::IdDesc, vec![(SortField::Id, true)]),
            (
                DefaultOrder::UpdatedAtDesc,
                vec![(SortField::UpdatedAt, true)],
            ),
        ] {
            let r = rules(Bounds::Inclusive, &[], d);
            assert_eq!(
                list_params_with(Entity::Leads, &p(""), &r)
                    .unwrap()
                    .filter
                    .order,
                want
            );
            let explicit =
                list_params_with(Entity::Leads, &p("order[created_at]=asc"), &r).unwrap();
            assert_eq!(explicit.filter.order, vec![(SortField::CreatedAt, false)]);
        }
        // An ignored order makes the default visible.
        let r = rules(Bounds::Inclusive, &["*:order[id]"], DefaultOrder::IdDesc);
        let f = list_params_with(Entity::Companies, &p("order[id]=asc"), &r)
            .unwrap()
            .filter;
        assert_eq!(f.order, vec![(SortField::Id, true)]);
    }

    #[test]
    fn page_size_cap() {
        let mut r = ListRules::default();
        assert_eq!(r.page_size(250), 250);
        r.max_page_size = Some(100);
        assert_eq!((r.page_size(250), r.page_size(30)), (100, 30));
    }

    #[test]
    fn events_limit_above_100_becomes_50() {
        let (pg, _) = event_params(&p("limit=250")).unwrap();
        assert_eq!(pg.limit, 50);
        let (pg, _) = event_params(&p("limit=100")).unwrap();
        assert_eq!(pg.limit, 100);
    }
}
