//! How a page of one stream becomes writes: the stream's own rows, then the rows each
//! rewritten entity owns, all inside the caller's transaction.

use std::borrow::Cow;

use crate::source::{Record, StreamDecl};
use crate::store::children::{self, ChildRow};
use crate::store::reference::{self, Refreshed};
use crate::store::rows::Row;
use crate::store::rows::{has_nul, without_nul};
use crate::store::{StoreError, Tx};

/// `records` as PostgreSQL can hold them: a NUL character (which neither `jsonb` nor
/// `text` accepts) becomes U+FFFD, so that one such value costs nothing but that character,
/// never its page or its stream.
fn storable<'a>(decl: &StreamDecl, records: &'a [Record]) -> Cow<'a, [Record]> {
    if !records.iter().any(|r| has_nul(&r.raw)) {
        return Cow::Borrowed(records);
    }
    Cow::Owned(
        records
            .iter()
            .map(|r| {
                if !has_nul(&r.raw) {
                    return r.clone();
                }
                tracing::warn!(
                    stream = decl.name,
                    id = r.id,
                    "the entity holds NUL characters, which PostgreSQL cannot store; stored \
                     with U+FFFD in their place"
                );
                Record {
                    raw: without_nul(&r.raw),
                    ..r.clone()
                }
            })
            .collect(),
    )
}

/// Upserts the entities of `records`; rewrites what each changed one owns. Returns how many
/// entity rows were inserted or changed.
pub async fn entities(
    tx: &mut Tx,
    decl: &StreamDecl,
    records: &[Record],
) -> Result<u64, StoreError> {
    let records = &storable(decl, records)[..];
    let rows = decl.rows(records);
    let changed = crate::store::rows::upsert(tx, decl.table, &rows).await?;
    owned(tx, decl, records, &rows, &changed).await?;
    Ok(changed.len() as u64)
}

/// Makes the reference table of `decl` exactly `records` (one whole listing).
pub async fn reference(
    tx: &mut Tx,
    decl: &StreamDecl,
    account_id: i64,
    records: &[Record],
) -> Result<Refreshed, StoreError> {
    let records = &storable(decl, records)[..];
    let mut rows = decl.rows(records);
    for r in &mut rows {
        r.account_id = account_id;
    }
    let done = reference::refresh(tx, decl.table, decl.scope, account_id, &rows).await?;
    let changed: Vec<(i64, i64)> = done.written.iter().map(|id| (account_id, *id)).collect();
    owned(tx, decl, records, &rows, &changed).await?;
    // What a row that is gone owned is gone with it.
    let gone: Vec<(i64, i64)> = done.gone.iter().map(|id| (account_id, *id)).collect();
    for child in decl.children {
        children::write(tx, child.table, &gone, &[]).await?;
    }
    Ok(done)
}

/// Rewrites the owned rows of the entities in `changed` (keys of `rows`, which are
/// `records` as rows, in the same order).
async fn owned(
    tx: &mut Tx,
    decl: &StreamDecl,
    records: &[Record],
    rows: &[Row],
    changed: &[(i64, i64)],
) -> Result<(), StoreError> {
    if decl.children.is_empty() || changed.is_empty() {
        return Ok(());
    }
    let changed_set: std::collections::HashSet<(i64, i64)> = changed.iter().copied().collect();
    // A page may repeat an id; the newest version is the one the upsert kept.
    let mut newest: std::collections::HashMap<(i64, i64), usize> = Default::default();
    for (i, row) in rows.iter().enumerate() {
        let key = (row.account_id, row.id);
        if !changed_set.contains(&key) {
            continue;
        }
        match newest.get(&key) {
            Some(&j) if rows[j].updated_at > row.updated_at => {}
            _ => {
                newest.insert(key, i);
            }
        }
    }
    let mut parents: Vec<(i64, i64)> = newest.keys().copied().collect();
    parents.sort_unstable();
    for child in decl.children {
        let mut told = Vec::with_capacity(parents.len());
        let mut out = Vec::new();
        for key in &parents {
            let Some(rows) = (child.rows)(&records[newest[key]]) else {
                continue;
            };
            told.push(*key);
            out.extend(rows.into_iter().map(|cells| ChildRow {
                account_id: key.0,
                parent: key.1,
                cells,
            }));
        }
        children::write(tx, child.table, &told, &out).await?;
    }
    Ok(())
}

/// Entities a log page asked to read again, as read.
#[derive(Debug, Default)]
pub struct Refetched {
    pub stream: &'static str,
    pub records: Vec<Record>,
    /// Ids no longer there that may have been merged away, with the merge's time.
    pub gone: Vec<(i64, i64)>,
}

/// The entities whose linked entities a log page asks to read again (restored ones).
pub fn relinked(decl: &StreamDecl, records: &[Record]) -> Vec<(&'static str, i64)> {
    use crate::source::{Effect, Strategy};
    let Strategy::Log { effects, .. } = decl.strategy else {
        return Vec::new();
    };
    let mut out: Vec<(&'static str, i64)> = records
        .iter()
        .flat_map(effects)
        .filter_map(|e| match e {
            Effect::Relinked { stream, id } => Some((stream, id)),
            _ => None,
        })
        .collect();
    out.sort_unstable();
    out.dedup();
    out
}

/// Which entities the entries of a log page ask to read again: per stream, each id with
/// the newest time it may have been merged away at.
pub fn refetches(
    decl: &StreamDecl,
    records: &[Record],
) -> std::collections::BTreeMap<&'static str, std::collections::BTreeMap<i64, Option<i64>>> {
    use crate::source::{Effect, Strategy};
    let mut out: std::collections::BTreeMap<_, std::collections::BTreeMap<i64, Option<i64>>> =
        Default::default();
    let Strategy::Log { effects, .. } = decl.strategy else {
        return out;
    };
    for record in records {
        for effect in effects(record) {
            if let Effect::Refetch {
                stream,
                id,
                gone_at,
            } = effect
            {
                let e = out.entry(stream).or_default().entry(id).or_insert(None);
                *e = (*e).max(gone_at);
            }
        }
    }
    out
}

/// Appends the entries of a log page and applies what they say to the other streams' rows
/// (`streams`: the source's registry), with the entities they asked to read again. Returns
/// how many entries were new.
pub async fn log(
    tx: &mut Tx,
    decl: &StreamDecl,
    streams: &[StreamDecl],
    records: &[Record],
    refetched: &[Refetched],
) -> Result<u64, StoreError> {
    use crate::source::{Effect, Strategy};
    use crate::store::log::{self, Mark};
    let records = &storable(decl, records)[..];
    let rows = decl.rows(records);
    let written = log::append(tx, decl.table, &rows).await?;
    let Strategy::Log { effects, .. } = decl.strategy else {
        return Ok(written);
    };
    // (stream, deleted or restored) → (account, id, at)
    type Marks = std::collections::BTreeMap<(&'static str, bool), Vec<(i64, i64, i64)>>;
    let mut marks: Marks = Default::default();
    for (record, row) in records.iter().zip(&rows) {
        for effect in effects(record) {
            let (stream, deleted, id, at) = match effect {
                Effect::Deleted { stream, id, at } => (stream, true, id, at),
                Effect::Restored { stream, id, at } => (stream, false, id, at),
                Effect::Refetch { .. } | Effect::Relinked { .. } => continue,
            };
            marks
                .entry((stream, deleted))
                .or_default()
                .push((row.account_id, id, at));
        }
    }
    let account = rows.first().map_or(0, |r| r.account_id);
    for r in refetched {
        if let Some(target) = streams.iter().find(|s| s.name == r.stream) {
            entities(tx, target, &r.records).await?;
        }
        // Merged away: gone from its list for good, as a deletion is.
        marks
            .entry((r.stream, true))
            .or_default()
            .extend(r.gone.iter().map(|(id, at)| (account, *id, *at)));
    }
    // The order does not matter: the times decide.
    for ((stream, deleted), list) in &marks {
        let Some(target) = streams.iter().find(|s| s.name == *stream) else {
            continue;
        };
        let mark = if *deleted {
            Mark::Deleted
        } else {
            Mark::Restored
        };
        log::mark(tx, target.table, mark, list).await?;
    }
    // Restored and found when read again: alive, even where a deletion shares its second.
    for r in refetched {
        let Some(restored) = marks.get(&(r.stream, false)) else {
            continue;
        };
        let present: std::collections::HashSet<i64> = r.records.iter().map(|x| x.id).collect();
        let found: Vec<(i64, i64, i64)> = restored
            .iter()
            .filter(|(_, id, _)| present.contains(id))
            .copied()
            .collect();
        if let Some(target) = streams.iter().find(|s| s.name == r.stream) {
            log::mark(tx, target.table, Mark::Found, &found).await?;
        }
    }
    Ok(written)
}
