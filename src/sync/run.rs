//! One run of one stream: the I/O around the pure walk. The run owns its [`Walk`], keeps
//! requests in flight side by side (each on its own task, holding one of the engine's
//! request slots), and commits every answered page together with the cursor that covers it
//! in one transaction. Nothing is locked while a page commits: the walk belongs to this
//! loop alone, and other requests go on in their tasks meanwhile.

use std::sync::Arc;

use chrono::Utc;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::cursor::{Cursor, StoredCursor};
use super::walk::{ClockBound, Ticket, Walk, WalkError, WalkSettings};
use crate::metrics::Metrics;
use crate::source::{FailureKind, FetchError, Page, PageRequest, Source, Strategy, StreamDecl};
use crate::store::state::{RunCounts, RunEnd, RunOutcome, StreamHealth};
use crate::store::{Store, StoreError};

/// Pages never shrink below this after "ask for less".
pub(super) const MIN_PAGE: u32 = 10;

/// How often a reference list that cannot be asked for in smaller pages is asked again after
/// the server timed out building it.
const MAX_ASK_AGAIN: u32 = 2;

#[derive(Debug, Clone)]
pub struct EngineSettings {
    pub lag_secs: i64,
    /// How far the server's `Date` may lie from this machine's clock.
    pub max_clock_jump_secs: i64,
    /// Page requests in flight across every stream of the process.
    pub parallelism: usize,
    pub page_size: u32,
    /// How often each entity list is compared with the mirror by id (see
    /// [`super::reconcile`]); `None`: only when asked.
    pub reconcile_every: Option<std::time::Duration>,
}

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error(transparent)]
    Fetch(#[from] FetchError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{endpoint}: {source}")]
    Walk {
        endpoint: String,
        #[source]
        source: WalkError,
    },
    #[error("{endpoint}: {source}")]
    Refresh {
        endpoint: String,
        #[source]
        source: super::refresh::RefreshError,
    },
    #[error("{endpoint}: {source}")]
    Census {
        endpoint: String,
        #[source]
        source: super::reconcile::CensusError,
    },
    #[error(
        "stream `{0}` is not an entity list: only those are compared with the mirror by id \
         (reference lists are read whole on every run, the event log is never trimmed)"
    )]
    NotReconcilable(String),
    #[error("unknown stream `{0}`")]
    UnknownStream(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl SyncError {
    fn health(&self) -> (StreamHealth, Option<chrono::DateTime<Utc>>) {
        match self {
            SyncError::Fetch(FetchError {
                kind: FailureKind::Banned { until },
                ..
            }) => (StreamHealth::Banned, Some(*until)),
            SyncError::Fetch(FetchError {
                kind: FailureKind::AuthFailed,
                ..
            }) => (StreamHealth::LockedOut, None),
            _ => (StreamHealth::BackingOff, None),
        }
    }
}

/// How a run that did not fail ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Finished {
    /// Every window is walked.
    Completed,
    /// Shutdown: the pages in flight were abandoned (nothing half-committed).
    Cancelled,
}

/// What one run did.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RunReport {
    pub stream: String,
    pub counts: RunCounts,
    pub finished: Finished,
}

impl RunReport {
    pub fn cancelled(&self) -> bool {
        self.finished == Finished::Cancelled
    }
}

/// Called after every committed page with the run's counts so far (progress display).
pub type ProgressFn = Arc<dyn Fn(&str, &RunCounts) + Send + Sync>;

/// Queries are not repeated within this long, across runs too (Kommo lists "the same data
/// requested several times in a short period" as a reason to block the IP).
pub(super) const NO_REPEAT: std::time::Duration = std::time::Duration::from_secs(60);

/// What each stream asked for recently, in this process.
type Recent = std::sync::Mutex<
    std::collections::HashMap<
        &'static str,
        std::collections::VecDeque<(std::time::Instant, PageRequest)>,
    >,
>;

pub struct SyncEngine<S: Source> {
    /// Queries sent in the last minute, per stream: a run never repeats one of an earlier
    /// run (two runs of a stream within one server second would ask the same first page).
    recent: Recent,
    /// When each reference stream was last read whole: it is not read again within
    /// [`NO_REPEAT`] (the same pages, asked again).
    refreshed: std::sync::Mutex<std::collections::HashMap<&'static str, std::time::Instant>>,
    pub(super) source: Arc<S>,
    pub(super) store: Store,
    pub(super) account: String,
    pub(super) settings: EngineSettings,
    /// Request slots shared by every stream: a stream takes more than one only when the
    /// others leave some free (then it splits a window to use it).
    pub(super) slots: Arc<Semaphore>,
    metrics: Option<Arc<Metrics>>,
    progress: Option<ProgressFn>,
}

impl<S: Source> SyncEngine<S> {
    pub fn new(source: Arc<S>, store: Store, account: String, settings: EngineSettings) -> Self {
        SyncEngine {
            recent: Default::default(),
            refreshed: Default::default(),
            slots: Arc::new(Semaphore::new(settings.parallelism.max(1))),
            source,
            store,
            account,
            settings,
            metrics: None,
            progress: None,
        }
    }

    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Calls `progress` after every committed page with the run's counts so far.
    pub fn with_progress(mut self, progress: ProgressFn) -> Self {
        self.progress = Some(progress);
        self
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn source(&self) -> &Arc<S> {
        &self.source
    }

    pub fn account(&self) -> &str {
        &self.account
    }

    pub fn stream(&self, name: &str) -> Result<&'static StreamDecl, SyncError> {
        self.source
            .streams()
            .iter()
            .find(|s| s.name == name)
            .ok_or_else(|| SyncError::UnknownStream(name.to_string()))
    }

    /// Runs one stream once. `full` starts from scratch (rows are kept and re-upserted).
    pub async fn run_stream(
        &self,
        name: &str,
        full: bool,
        cancel: &CancellationToken,
    ) -> Result<RunReport, SyncError> {
        let decl = self.stream(name)?;
        let span = tracing::info_span!(
            "sync_run",
            stream = decl.name,
            full,
            requests = tracing::field::Empty,
            rows_written = tracing::field::Empty,
            outcome = tracing::field::Empty
        );
        async move {
            let initial = stored(&Cursor::default());
            let run_id = self
                .store
                .start_run(&self.account, decl.name, full, &initial)
                .await?;
            let started = std::time::Instant::now();
            let mut run = Run {
                engine: self,
                decl,
                counts: RunCounts::default(),
                synced_up_to: None,
            };
            let result = run.walk(full, cancel).await;
            let counts = run.counts.clone();
            self.record_metrics(
                decl.name,
                &counts,
                run.synced_up_to,
                result.is_ok(),
                started.elapsed(),
            );
            let end = match &result {
                Ok(Finished::Completed) => RunEnd::ok(RunOutcome::Ok),
                Ok(Finished::Cancelled) => RunEnd::ok(RunOutcome::Cancelled),
                Err(e) => {
                    let (health, blocked_until) = e.health();
                    RunEnd {
                        outcome: RunOutcome::Failed,
                        health,
                        error: Some(error_chain(e)),
                        blocked_until,
                    }
                }
            };
            let record = self
                .store
                .finish_run(run_id, &self.account, decl.name, &counts, &end);
            if let Err(e) = record.await {
                tracing::error!(error.message = %e, "could not record the end of the run");
            }
            let span = tracing::Span::current();
            span.record("requests", counts.requests);
            span.record("rows_written", counts.rows_written);
            span.record("outcome", end.outcome.as_str());
            match result {
                Ok(finished) => {
                    tracing::info!(
                        pages = counts.pages,
                        rows_seen = counts.rows_seen,
                        cancelled = finished == Finished::Cancelled,
                        "run finished"
                    );
                    Ok(RunReport {
                        stream: decl.name.to_string(),
                        counts,
                        finished,
                    })
                }
                Err(e) => {
                    tracing::error!(error.message = %error_chain(&e), "run failed");
                    Err(e)
                }
            }
        }
        .instrument(span)
        .await
    }

    /// The queries of `stream` sent within the last minute (older ones are forgotten).
    pub(super) fn recently_sent(&self, stream: &'static str) -> Vec<PageRequest> {
        let mut recent = self.recent.lock().expect("recent queries lock");
        let queue = recent.entry(stream).or_default();
        let now = std::time::Instant::now();
        while queue
            .front()
            .is_some_and(|(at, _)| now.duration_since(*at) >= NO_REPEAT)
        {
            queue.pop_front();
        }
        queue.iter().map(|(_, q)| q.clone()).collect()
    }

    pub(super) fn sent(&self, stream: &'static str, req: &PageRequest) {
        let mut recent = self.recent.lock().expect("recent queries lock");
        recent
            .entry(stream)
            .or_default()
            .push_back((std::time::Instant::now(), req.clone()));
    }

    fn record_metrics(
        &self,
        stream: &str,
        counts: &RunCounts,
        synced_up_to: Option<i64>,
        ok: bool,
        took: std::time::Duration,
    ) {
        let Some(m) = &self.metrics else { return };
        let labels = Metrics::stream(stream);
        m.rows_written
            .get_or_create(&labels)
            .inc_by(counts.rows_written);
        m.run_seconds
            .get_or_create(&labels)
            .observe(took.as_secs_f64());
        if ok {
            m.last_success
                .get_or_create(&labels)
                .set(Utc::now().timestamp() as f64);
        } else {
            m.runs_failed.get_or_create(&labels).inc();
        }
        if let (Some(upper), Some(synced)) = (counts.window_upper, synced_up_to) {
            // The server's clock at the run's first answer, minus what is stored.
            m.lag_seconds
                .get_or_create(&labels)
                .set(upper + self.settings.lag_secs - synced);
        }
    }
}

/// An error and its causes, each said once.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let s = c.to_string();
        if !out.contains(&s) {
            out.push_str(": ");
            out.push_str(&s);
        }
        cause = c.source();
    }
    out
}

fn stored(cursor: &Cursor) -> serde_json::Value {
    serde_json::to_value(StoredCursor::from(cursor.clone())).expect("a cursor serializes")
}

type Fetched = (
    Ticket,
    PageRequest,
    Result<Page, FetchError>,
    OwnedSemaphorePermit,
);

/// What one answer did to the walk.
enum Answered {
    /// The run ends.
    Finished(Finished),
    /// The same page is asked for again, smaller; nothing to store.
    Asked,
    /// Records to store with the cursor that covers them.
    Proved(Proved),
}

/// What an applied answer proved: its records and the cursor as it stood right after it.
struct Proved {
    records: Vec<crate::source::Record>,
    cursor: Cursor,
    through: Option<i64>,
}

struct Run<'e, S: Source> {
    engine: &'e SyncEngine<S>,
    decl: &'static StreamDecl,
    counts: RunCounts,
    synced_up_to: Option<i64>,
}

impl<S: Source> Run<'_, S> {
    async fn load(&self, full: bool) -> Result<Cursor, SyncError> {
        if full {
            return Ok(Cursor::default());
        }
        let stored = self
            .engine
            .store
            .load_cursor(&self.engine.account, self.decl.name)
            .await?;
        match stored {
            None => Ok(Cursor::default()),
            Some(v) => serde_json::from_value::<StoredCursor>(v)
                .map(StoredCursor::into_current)
                .map_err(|e| {
                    StoreError::BadCursor {
                        stream: self.decl.name.into(),
                        detail: e.to_string(),
                    }
                    .into()
                }),
        }
    }

    async fn walk(
        &mut self,
        full: bool,
        cancel: &CancellationToken,
    ) -> Result<Finished, SyncError> {
        let kind = match self.decl.strategy {
            Strategy::Changes(kind) => kind,
            Strategy::Refresh { page_size } => return self.refresh(page_size, cancel).await,
            Strategy::Log { page_size, .. } => return self.log(page_size, full, cancel).await,
        };
        let engine = self.engine;
        let cursor = self.load(full).await?;
        self.synced_up_to = cursor.synced_up_to();
        let mut walk = Walk::new(
            self.decl.name,
            kind,
            cursor,
            &WalkSettings {
                lag: engine.settings.lag_secs,
                page_size: engine.settings.page_size,
                clock: Some(ClockBound {
                    local_now: Utc::now().timestamp(),
                    max_jump: engine.settings.max_clock_jump_secs,
                }),
            },
        );
        walk.avoid(engine.recently_sent(self.decl.name));
        let mut tasks: JoinSet<Fetched> = JoinSet::new();
        let result = self.drive(&mut walk, &mut tasks, cancel).await;
        // Pages still in flight are abandoned: what they would prove is asked again later.
        tasks.abort_all();
        let result = match result {
            // Now and then, the whole list by id: deletions the event log did not show.
            Ok(Finished::Completed) => match engine.reconcile_if_due(self.decl.name, cancel).await?
            {
                Some(done) => {
                    self.counts.requests += done.requests;
                    self.counts.rows_written += done.gone + done.found;
                    Ok(Finished::Completed)
                }
                None if cancel.is_cancelled() => Ok(Finished::Cancelled),
                None => Ok(Finished::Completed),
            },
            other => other,
        };
        let stats = walk.stats();
        tracing::debug!(
            stream = self.decl.name,
            planned = stats.planned,
            step_backs = stats.step_backs,
            splits = stats.splits,
            ahead = stats.ahead,
            strays = stats.strays,
            "walk"
        );
        result
    }

    async fn drive(
        &mut self,
        walk: &mut Walk,
        tasks: &mut JoinSet<Fetched>,
        cancel: &CancellationToken,
    ) -> Result<Finished, SyncError> {
        let slots = self.engine.slots.clone();
        loop {
            self.start(walk, tasks, cancel).await?;
            if cancel.is_cancelled() {
                return Ok(Finished::Cancelled);
            }
            if tasks.is_empty() {
                if walk.is_done() {
                    return Ok(Finished::Completed);
                }
                return Err(SyncError::Internal(format!(
                    "the walk of {} waits for nothing and is not done",
                    self.decl.name
                )));
            }
            let idle = walk.has_idle();
            tokio::select! {
                biased;
                _ = cancel.cancelled() => return Ok(Finished::Cancelled),
                joined = tasks.join_next() => {
                    let fetched = joined
                        .expect("tasks is not empty")
                        .map_err(|e| SyncError::Internal(format!("a page request task failed: {e}")))?;
                    match self.answered(walk, fetched)? {
                        Answered::Finished(finished) => return Ok(finished),
                        Answered::Asked => {}
                        Answered::Proved(proved) => {
                            // The answer may have made the next page known: it is asked
                            // for before this one commits, so the limiter never waits for
                            // the database. The commit holds what the answer proved, not
                            // what is in flight.
                            let started = self.start(walk, tasks, cancel).await;
                            self.commit(proved).await?;
                            started?;
                        }
                    }
                }
                // Another stream freed a slot while this one has a window waiting.
                slot = slots.clone().acquire_owned(), if idle => {
                    let _ = self.send(walk, tasks, slot.expect("the slots are never closed"))?;
                }
            }
        }
    }

    /// Starts what can be started: a stream with nothing in flight waits for a slot (slots
    /// are handed out in turn); with something in flight it only takes a free one.
    async fn start(
        &mut self,
        walk: &mut Walk,
        tasks: &mut JoinSet<Fetched>,
        cancel: &CancellationToken,
    ) -> Result<(), SyncError> {
        let slots = self.engine.slots.clone();
        while !cancel.is_cancelled() {
            let waiting = walk.has_idle();
            if !waiting && !walk.can_fetch_ahead() {
                break;
            }
            let slot = if tasks.is_empty() && waiting {
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    s = slots.clone().acquire_owned() => s.expect("the slots are never closed"),
                }
            } else {
                match slots.clone().try_acquire_owned() {
                    Ok(s) => s,
                    Err(_) => break,
                }
            };
            if !self.send(walk, tasks, slot)? {
                break;
            }
        }
        Ok(())
    }

    fn send(
        &mut self,
        walk: &mut Walk,
        tasks: &mut JoinSet<Fetched>,
        slot: OwnedSemaphorePermit,
    ) -> Result<bool, SyncError> {
        // Splitting and asking ahead cost requests: only when the rate limit is not what
        // holds requests back (and, to split, a slot would otherwise stay free).
        let rate_idle = !self.engine.source.queueing();
        let may_split = rate_idle && self.engine.slots.available_permits() > 0;
        let next = if walk.has_idle() {
            walk.next(may_split)
        } else if rate_idle {
            Ok(walk.ahead())
        } else {
            Ok(None)
        };
        let (ticket, req) = match next {
            Ok(Some(next)) => next,
            Ok(None) => return Ok(false),
            Err(source) => {
                return Err(SyncError::Walk {
                    endpoint: self.engine.source.endpoint(self.decl.name),
                    source,
                })
            }
        };
        self.counts.requests += 1;
        self.engine.sent(self.decl.name, &req);
        tracing::debug!(
            stream = self.decl.name,
            updated = ?req.updated,
            created = ?req.created,
            order = ?req.order,
            page = req.page,
            limit = req.limit,
            "request"
        );
        let source = self.engine.source.clone();
        tasks.spawn(async move {
            let result = source.fetch(&req).await;
            (ticket, req, result, slot)
        });
        Ok(true)
    }

    /// Applies one answer to the walk; what it proved is committed by the caller.
    fn answered(&mut self, walk: &mut Walk, fetched: Fetched) -> Result<Answered, SyncError> {
        let (ticket, req, result, slot) = fetched;
        drop(slot);
        let page = match result {
            Ok(page) => page,
            Err(e) if e.kind == FailureKind::Cancelled => {
                return Ok(Answered::Finished(Finished::Cancelled))
            }
            Err(e) if e.kind == FailureKind::AskForLess && req.limit > MIN_PAGE => {
                tracing::warn!(
                    stream = self.decl.name,
                    limit = req.limit,
                    "the server asked for smaller pages"
                );
                walk.shrink(ticket);
                return Ok(Answered::Asked);
            }
            Err(e) => return Err(e.into()),
        };
        let items = page.records.len();
        let applied = walk.apply(ticket, page).map_err(|source| SyncError::Walk {
            endpoint: self.engine.source.endpoint(self.decl.name),
            source,
        })?;
        for note in &applied.notes {
            tracing::warn!(stream = self.decl.name, "{note}");
        }
        tracing::debug!(
            stream = self.decl.name,
            order = ?req.order,
            page = req.page,
            limit = req.limit,
            items,
            kept = applied.records.len(),
            "page"
        );
        Ok(Answered::Proved(Proved {
            records: applied.records,
            cursor: walk.cursor(),
            through: walk.through(),
        }))
    }

    /// Reads the new entries of a log, committing each page with the cursor it proves.
    async fn log(
        &mut self,
        page_size: u32,
        full: bool,
        cancel: &CancellationToken,
    ) -> Result<Finished, SyncError> {
        use super::log::{LogCursor, LogWalk, Step};
        let engine = self.engine;
        let name = self.decl.name;
        let cursor: LogCursor = if full {
            LogCursor::default()
        } else {
            match engine.store.load_cursor(&engine.account, name).await? {
                None => LogCursor::default(),
                Some(v) => serde_json::from_value(v).map_err(|e| StoreError::BadCursor {
                    stream: name.into(),
                    detail: e.to_string(),
                })?,
            }
        };
        self.synced_up_to = cursor.through;
        let mut walk = LogWalk::new(
            name,
            cursor,
            page_size.min(engine.settings.page_size),
            engine.settings.lag_secs,
            Some(ClockBound {
                local_now: Utc::now().timestamp(),
                max_jump: engine.settings.max_clock_jump_secs,
            }),
        );
        let walk_error = |source| SyncError::Walk {
            endpoint: engine.source.endpoint(name),
            source,
        };
        let mut req = walk.first();
        let recent = engine.recently_sent(name);
        loop {
            // During a ban the run goes on to the source, which refuses and says why.
            if recent.contains(&req) && engine.source.health().banned_until.is_none() {
                // Two runs within one second ask the same window: the next run goes on.
                tracing::info!(stream = name, "this query was sent less than a minute ago");
                return Ok(Finished::Completed);
            }
            let slot = tokio::select! {
                _ = cancel.cancelled() => return Ok(Finished::Cancelled),
                s = engine.slots.clone().acquire_owned() => s.expect("the slots are never closed"),
            };
            self.counts.requests += 1;
            engine.sent(name, &req);
            tracing::debug!(stream = name, created = ?req.created, page = req.page, "request");
            let answer = tokio::select! {
                _ = cancel.cancelled() => return Ok(Finished::Cancelled),
                a = engine.source.fetch(&req) => a,
            };
            drop(slot);
            let page = match answer {
                Ok(p) => p,
                Err(e) if e.kind == FailureKind::Cancelled => return Ok(Finished::Cancelled),
                Err(e) => return Err(e.into()),
            };
            let (records, step) = walk.take(page).map_err(walk_error)?;
            let mut refetched = Vec::new();
            let mut again = super::write::refetches(self.decl, &records);
            for (stream, id) in super::write::relinked(self.decl, &records) {
                self.counts.requests += 1;
                let linked = tokio::select! {
                    _ = cancel.cancelled() => return Ok(Finished::Cancelled),
                    l = engine.source.linked_to(stream, id) => l,
                };
                let linked = match linked {
                    Ok(l) => l,
                    Err(e) if e.kind == FailureKind::Cancelled => return Ok(Finished::Cancelled),
                    Err(e) => return Err(e.into()),
                };
                for (other, other_id) in linked {
                    again
                        .entry(other)
                        .or_default()
                        .entry(other_id)
                        .or_insert(None);
                }
            }
            for (stream, ids) in again {
                let asked: Vec<i64> = ids.keys().copied().collect();
                let found = tokio::select! {
                    _ = cancel.cancelled() => return Ok(Finished::Cancelled),
                    f = engine.source.fetch_ids(stream, &asked) => f,
                };
                let found = match found {
                    Ok(f) => {
                        self.counts.requests += f.requests;
                        f.records
                    }
                    Err(e) if e.kind == FailureKind::Cancelled => return Ok(Finished::Cancelled),
                    Err(e) => return Err(e.into()),
                };
                let present: std::collections::HashSet<i64> = found.iter().map(|r| r.id).collect();
                let gone = ids
                    .iter()
                    .filter(|(id, _)| !present.contains(id))
                    .filter_map(|(id, at)| at.map(|at| (*id, at)))
                    .collect();
                refetched.push(super::write::Refetched {
                    stream,
                    records: found,
                    gone,
                });
            }
            let cursor = walk.cursor();
            let mut tx = engine.store.begin().await?;
            let written = super::write::log(
                &mut tx,
                self.decl,
                engine.source.streams(),
                &records,
                &refetched,
            )
            .await?;
            let account_id = self
                .decl
                .rows(&records[..records.len().min(1)])
                .first()
                .map(|r| r.account_id);
            crate::store::Store::save_cursor(
                &mut tx,
                &engine.account,
                name,
                &serde_json::to_value(&cursor).expect("a cursor serializes"),
                written,
                account_id,
            )
            .await?;
            tx.commit().await.map_err(|source| StoreError::Query {
                doing: "committing a page of the log",
                source,
            })?;
            self.synced_up_to = cursor.through;
            self.counts.pages += 1;
            self.counts.rows_seen += records.len() as u64;
            self.counts.rows_written += written;
            if let Some(progress) = &engine.progress {
                progress(name, &self.counts);
            }
            match step {
                Step::Next(next) => req = next,
                Step::Done => return Ok(Finished::Completed),
            }
        }
    }

    /// Reads a reference list whole and stores it in one transaction.
    async fn refresh(
        &mut self,
        page_size: Option<u32>,
        cancel: &CancellationToken,
    ) -> Result<Finished, SyncError> {
        use super::refresh::{Listing, Next};
        let engine = self.engine;
        let name = self.decl.name;
        let recently = engine
            .refreshed
            .lock()
            .expect("refreshed lock")
            .get(name)
            .map(|at| at.elapsed())
            .filter(|ago| *ago < NO_REPEAT)
            // During a ban the run goes on to the source, which refuses and says why.
            .filter(|_| engine.source.health().banned_until.is_none());
        if let Some(ago) = recently {
            tracing::info!(
                stream = name,
                "read whole {} s ago; not asked again within {} s",
                ago.as_secs(),
                NO_REPEAT.as_secs()
            );
            return Ok(Finished::Completed);
        }
        let mut listing = Listing::new(page_size.map(|p| p.min(engine.settings.page_size)));
        let mut page = 1;
        let mut timeouts = 0;
        loop {
            let slot = tokio::select! {
                _ = cancel.cancelled() => return Ok(Finished::Cancelled),
                s = engine.slots.clone().acquire_owned() => s.expect("the slots are never closed"),
            };
            self.counts.requests += 1;
            tracing::debug!(stream = name, page, limit = listing.limit(), "request");
            let answer = tokio::select! {
                _ = cancel.cancelled() => return Ok(Finished::Cancelled),
                a = engine.source.fetch_reference(name, page, listing.limit()) => a,
            };
            drop(slot);
            engine
                .refreshed
                .lock()
                .expect("refreshed lock")
                .insert(name, std::time::Instant::now());
            let got = match answer {
                Ok(p) => p,
                Err(e) if e.kind == FailureKind::Cancelled => return Ok(Finished::Cancelled),
                // Offsets count in pages of one size: the list is read again from its start.
                Err(e) if e.kind == FailureKind::AskForLess && listing.limit() / 2 >= MIN_PAGE => {
                    tracing::warn!(
                        stream = name,
                        limit = listing.limit(),
                        "the server asked for smaller pages"
                    );
                    listing = Listing::new(Some(listing.limit() / 2));
                    page = 1;
                    continue;
                }
                // An answer that cannot be made smaller (one page, or the smallest): asked
                // again a few times, as any transient failure.
                Err(e) if e.kind == FailureKind::AskForLess && timeouts < MAX_ASK_AGAIN => {
                    timeouts += 1;
                    tracing::warn!(
                        stream = name,
                        "the server timed out building the list; asking again"
                    );
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            let next = listing.take(got).map_err(|source| SyncError::Refresh {
                endpoint: engine.source.endpoint(name),
                source,
            })?;
            match next {
                Next::Page(p) => page = p,
                Next::Done => break,
            }
        }
        for note in &listing.notes {
            tracing::warn!(stream = name, "{note}");
        }
        let server_time = listing.server_time;
        let given = listing.account_id;
        let records = listing.into_records();
        let account_id = given
            .or_else(|| {
                self.decl
                    .rows(&records)
                    .iter()
                    .map(|r| r.account_id)
                    .find(|a| *a != 0)
            })
            .unwrap_or(0);
        let cursor = Cursor {
            through: server_time,
            ..Cursor::default()
        };
        let mut tx = engine.store.begin().await?;
        let done = super::write::reference(&mut tx, self.decl, account_id, &records).await?;
        let written = (done.written.len() + done.gone.len()) as u64;
        crate::store::Store::save_cursor(
            &mut tx,
            &engine.account,
            name,
            &stored(&cursor),
            written,
            (account_id != 0).then_some(account_id),
        )
        .await?;
        tx.commit().await.map_err(|source| StoreError::Query {
            doing: "committing a reference list",
            source,
        })?;
        if !done.gone.is_empty() {
            tracing::info!(
                stream = name,
                gone = done.gone.len(),
                "entries no longer listed, marked gone"
            );
        }
        self.synced_up_to = cursor.synced_up_to();
        self.counts.pages += u64::from(page);
        self.counts.rows_seen += records.len() as u64;
        self.counts.rows_written += written;
        if let Some(progress) = &engine.progress {
            progress(name, &self.counts);
        }
        Ok(Finished::Completed)
    }

    /// Writes the records of an answer and the cursor that covers them in one transaction.
    async fn commit(&mut self, proved: Proved) -> Result<(), SyncError> {
        let engine = self.engine;
        let Proved {
            records,
            cursor,
            through,
        } = proved;
        let records = &records[..];
        let mut tx = engine.store.begin().await?;
        let written = super::write::entities(&mut tx, self.decl, records).await?;
        let account_id = self
            .decl
            .rows(&records[..records.len().min(1)])
            .first()
            .map(|r| r.account_id);
        crate::store::Store::save_cursor(
            &mut tx,
            &engine.account,
            self.decl.name,
            &stored(&cursor),
            written,
            account_id,
        )
        .await?;
        tx.commit().await.map_err(|source| StoreError::Query {
            doing: "committing a page",
            source,
        })?;
        self.synced_up_to = cursor.synced_up_to();
        self.counts.window_upper = through;
        self.counts.pages += 1;
        self.counts.rows_seen += records.len() as u64;
        self.counts.rows_written += written;
        if let Some(progress) = &engine.progress {
            progress(self.decl.name, &self.counts);
        }
        Ok(())
    }
}
