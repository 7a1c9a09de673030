//! Runs one stream once: probe, then walk the open windows with a few workers, committing
//! every page together with the cursor that covers it.
//!
//! The engine knows streams, cursors and the store, never Kommo: it talks to a [`Source`].

use std::collections::HashSet;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::cursor::{Cursor, Segment, StoredCursor};
use crate::metrics::Metrics;
use crate::source::{FailureKind, FetchError, Page, PageRequest, Record, Source, StreamSpec};
use crate::store::state::{RunCounts, RunEnd, RunOutcome, StreamHealth};
use crate::store::{Store, StoreError};

/// How many times one step may be retried with a smaller page after "ask for less".
const MAX_SHRINKS: u32 = 5;
/// Never ask for pages smaller than this after 504s.
const MIN_PAGE: u32 = 10;
/// A window is split for another worker only when about this many pages are left in it:
/// each split costs at least one extra request.
const SPLIT_MIN_PAGES: f64 = 2.0;
/// How often an idle worker looks for a window to split.
const IDLE_POLL: std::time::Duration = std::time::Duration::from_millis(50);

#[derive(Debug, Clone)]
pub struct EngineSettings {
    pub lag_secs: i64,
    pub parallelism: usize,
    pub page_size: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error(transparent)]
    Fetch(#[from] FetchError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(
        "the server's answer had no usable Date header, so the window cannot be bounded by server \
         time (the local clock is never used)"
    )]
    NoServerTime,
    #[error("unknown stream `{0}`")]
    UnknownStream(String),
}

impl SyncError {
    fn health(&self) -> StreamHealth {
        match self {
            SyncError::Fetch(e) if e.kind == FailureKind::Banned => StreamHealth::Banned,
            SyncError::Fetch(e) if e.kind == FailureKind::AuthFailed => StreamHealth::LockedOut,
            _ => StreamHealth::BackingOff,
        }
    }

    pub fn is_cancelled(&self) -> bool {
        matches!(self, SyncError::Fetch(e) if e.kind == FailureKind::Cancelled)
    }
}

/// What one run did.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct RunReport {
    pub stream: String,
    pub counts: RunCounts,
    pub cancelled: bool,
}

pub struct SyncEngine<S: Source> {
    /// Windows being fetched right now, across every stream. Extra workers (splits) are
    /// only started while this is below `settings.parallelism`: a split costs a request, and
    /// it is worth it only when the rate limit would otherwise go unused.
    in_flight: Arc<AtomicUsize>,
    source: Arc<S>,
    store: Store,
    account: String,
    settings: EngineSettings,
    /// Optional hook to learn when traffic is blocked (set for the banned health state).
    banned_until: Arc<dyn Fn() -> Option<DateTime<Utc>> + Send + Sync>,
    metrics: Option<Arc<Metrics>>,
    /// Called after every committed page with the run's counts so far (progress display).
    progress: Option<ProgressFn>,
}

/// See [`SyncEngine::with_progress`].
pub type ProgressFn = Arc<dyn Fn(&str, &RunCounts) + Send + Sync>;

impl<S: Source> SyncEngine<S> {
    pub fn new(source: Arc<S>, store: Store, account: String, settings: EngineSettings) -> Self {
        SyncEngine {
            in_flight: Arc::new(AtomicUsize::new(0)),
            source,
            store,
            account,
            settings,
            banned_until: Arc::new(|| None),
            metrics: None,
            progress: None,
        }
    }

    /// Lets the engine report when a ban ends (the source knows; the engine stores it).
    pub fn with_ban_probe(
        mut self,
        probe: Arc<dyn Fn() -> Option<DateTime<Utc>> + Send + Sync>,
    ) -> Self {
        self.banned_until = probe;
        self
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

    pub fn account(&self) -> &str {
        &self.account
    }

    pub fn stream(&self, name: &str) -> Result<StreamSpec, SyncError> {
        self.source
            .streams()
            .into_iter()
            .find(|s| s.name == name)
            .ok_or_else(|| SyncError::UnknownStream(name.to_string()))
    }

    /// Runs one stream once. `full` starts from scratch (rows are kept and re-upserted).
    /// On cancellation the page in flight is abandoned (never half-committed) and the run
    /// ends with `cancelled: true`.
    pub async fn run_stream(
        &self,
        name: &str,
        full: bool,
        cancel: &CancellationToken,
    ) -> Result<RunReport, SyncError> {
        let spec = self.stream(name)?;
        let span = tracing::info_span!(
            "sync_run",
            stream = spec.name,
            full,
            requests = tracing::field::Empty,
            rows_written = tracing::field::Empty,
            outcome = tracing::field::Empty
        );
        async move {
            let initial = serde_json::to_value(StoredCursor::V1(Cursor::default()))
                .expect("cursor serializes");
            let run_id = self
                .store
                .start_run(&self.account, spec.name, full, &initial)
                .await?;
            let started = std::time::Instant::now();
            let walk = Walk::new(self, spec.clone(), cancel.child_token());
            let result = walk.run(full).await;
            let counts = walk.counts();
            self.record_metrics(
                spec.name,
                &counts,
                walk.synced_up_to().await,
                result.is_ok(),
                started.elapsed(),
            );
            let (end, report) = match &result {
                Ok(cancelled) => {
                    let outcome = if *cancelled {
                        RunOutcome::Cancelled
                    } else {
                        RunOutcome::Ok
                    };
                    (
                        RunEnd {
                            outcome,
                            health: StreamHealth::Ok,
                            error: None,
                            blocked_until: None,
                        },
                        Ok(*cancelled),
                    )
                }
                Err(e) if e.is_cancelled() => (
                    RunEnd {
                        outcome: RunOutcome::Cancelled,
                        health: StreamHealth::Ok,
                        error: None,
                        blocked_until: None,
                    },
                    Ok(true),
                ),
                Err(e) => {
                    let health = e.health();
                    let blocked_until = if health == StreamHealth::Banned {
                        (self.banned_until)()
                    } else {
                        None
                    };
                    (
                        RunEnd {
                            outcome: RunOutcome::Failed,
                            health,
                            error: Some(e.to_string()),
                            blocked_until,
                        },
                        Err(()),
                    )
                }
            };
            let record = self
                .store
                .finish_run(run_id, &self.account, spec.name, &counts, &end);
            if let Err(e) = record.await {
                tracing::error!(error.message = %e, "could not record the end of the run");
            }
            let span = tracing::Span::current();
            span.record("requests", counts.requests);
            span.record("rows_written", counts.rows_written);
            span.record("outcome", end.outcome_str());
            match report {
                Ok(cancelled) => {
                    tracing::info!(
                        pages = counts.pages,
                        rows_seen = counts.rows_seen,
                        cancelled,
                        "run finished"
                    );
                    Ok(RunReport {
                        stream: spec.name.to_string(),
                        counts,
                        cancelled,
                    })
                }
                Err(()) => {
                    let e = result.expect_err("failed run");
                    tracing::error!(error.message = %e, "run failed");
                    Err(e)
                }
            }
        }
        .instrument(span)
        .await
    }
}

impl<S: Source> SyncEngine<S> {
    fn record_metrics(
        &self,
        stream: &str,
        counts: &RunCounts,
        synced_up_to: i64,
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
        if let Some(upper) = counts.window_upper {
            // The server's clock at the probe, minus what is stored.
            m.lag_seconds
                .get_or_create(&labels)
                .set(upper + self.settings.lag_secs - synced_up_to);
        }
    }
}

trait OutcomeStr {
    fn outcome_str(&self) -> &'static str;
}

impl OutcomeStr for RunEnd {
    fn outcome_str(&self) -> &'static str {
        match self.outcome {
            RunOutcome::Ok => "ok",
            RunOutcome::Failed => "failed",
            RunOutcome::Cancelled => "cancelled",
        }
    }
}

/// In-memory state of a walk, behind one lock that is also held while a page commits, so
/// that the cursor written with each page is exactly the committed progress.
struct WalkState {
    cursor: Cursor,
    /// Segments some worker is driving.
    active: HashSet<u64>,
    next_key: u64,
    /// An idle worker would take a split of a segment keyed on `created_at`; its owner
    /// splits it after its page in flight (see [`super::cursor::Segment::keyed_on_created`]).
    split_wanted: bool,
}

struct Walk<'e, S: Source> {
    engine: &'e SyncEngine<S>,
    spec: StreamSpec,
    state: Mutex<WalkState>,
    /// Page size; halved for the rest of the run when the server asks for less.
    limit: AtomicU32,
    /// Cancelled on shutdown, or by the first worker that fails, to stop the others.
    cancel: CancellationToken,
    requests: AtomicU64,
    pages: AtomicU64,
    rows_seen: AtomicU64,
    rows_written: AtomicU64,
    upper: std::sync::Mutex<Option<i64>>,
}

impl<'e, S: Source> Walk<'e, S> {
    fn new(engine: &'e SyncEngine<S>, spec: StreamSpec, cancel: CancellationToken) -> Self {
        Walk {
            engine,
            spec,
            state: Mutex::new(WalkState {
                cursor: Cursor::default(),
                active: HashSet::new(),
                next_key: 1,
                split_wanted: false,
            }),
            limit: AtomicU32::new(engine.settings.page_size),
            cancel,
            requests: AtomicU64::new(0),
            pages: AtomicU64::new(0),
            rows_seen: AtomicU64::new(0),
            rows_written: AtomicU64::new(0),
            upper: std::sync::Mutex::new(None),
        }
    }

    fn counts(&self) -> RunCounts {
        RunCounts {
            requests: self.requests.load(Ordering::Relaxed),
            pages: self.pages.load(Ordering::Relaxed),
            rows_seen: self.rows_seen.load(Ordering::Relaxed),
            rows_written: self.rows_written.load(Ordering::Relaxed),
            window_upper: *self.upper.lock().expect("upper lock"),
        }
    }

    /// Everything with `updated_at` up to this is stored.
    async fn synced_up_to(&self) -> i64 {
        let st = self.state.lock().await;
        st.cursor
            .pending
            .iter()
            .map(|s| s.from - 1)
            .fold(st.cursor.watermark, i64::min)
    }

    /// Returns whether the walk was cancelled before it finished.
    async fn run(&self, full: bool) -> Result<bool, SyncError> {
        let store = &self.engine.store;
        let mut cursor = if full {
            Cursor::default()
        } else {
            match store
                .load_cursor(&self.engine.account, self.spec.name)
                .await?
            {
                None => Cursor::default(),
                Some(v) => match serde_json::from_value::<StoredCursor>(v) {
                    Ok(StoredCursor::V1(c)) => c,
                    Err(e) => {
                        return Err(StoreError::BadCursor {
                            stream: self.spec.name.into(),
                            detail: e.to_string(),
                        }
                        .into())
                    }
                },
            }
        };
        {
            let mut st = self.state.lock().await;
            for seg in &mut cursor.pending {
                seg.key = st.next_key;
                st.next_key += 1;
            }
            st.cursor = cursor;
        }
        if self.cancel.is_cancelled() {
            return Ok(true);
        }
        self.probe().await?;
        let workers = (0..self.engine.settings.parallelism).map(|_| self.worker());
        let results = futures::future::join_all(workers).await;
        let mut first_error = None;
        for r in results {
            if let Err(e) = r {
                if first_error.is_none()
                    || first_error.as_ref().is_some_and(SyncError::is_cancelled)
                {
                    first_error = Some(e);
                }
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(self.cancel.is_cancelled()),
        }
    }

    /// The first request of a run: everything above the watermark. Fixes the run's upper end.
    async fn probe(&self) -> Result<(), SyncError> {
        let req = self
            .state
            .lock()
            .await
            .cursor
            .probe(&self.spec, self.limit.load(Ordering::Relaxed));
        // The probe counts towards the in-flight target like any page: other streams must
        // not split for a worker that is not idle.
        let in_flight = &self.engine.in_flight;
        in_flight.fetch_add(1, Ordering::Relaxed);
        let fetched = self.fetch(req, None).await;
        in_flight.fetch_sub(1, Ordering::Relaxed);
        let (req, page) = fetched?;
        let server_time = page.server_time.ok_or(SyncError::NoServerTime)?;
        let upper = server_time - self.engine.settings.lag_secs;
        *self.upper.lock().expect("upper lock") = Some(upper);
        let mut st = self.state.lock().await;
        let key = st.next_key;
        st.next_key += 1;
        let mut next = st.cursor.clone();
        let keep = next.apply_probe(&req, page.records, upper, key);
        self.commit(&mut st, next, keep).await
    }

    async fn worker(&self) -> Result<(), SyncError> {
        let result = self.work().await;
        if let Err(e) = &result {
            if !e.is_cancelled() {
                self.cancel.cancel();
            }
        }
        result
    }

    async fn work(&self) -> Result<(), SyncError> {
        let in_flight = &self.engine.in_flight;
        loop {
            if self.cancel.is_cancelled() {
                return Ok(());
            }
            let claimed = {
                let mut st = self.state.lock().await;
                if st.cursor.pending.is_empty() {
                    return Ok(());
                }
                let free = st
                    .cursor
                    .pending
                    .iter()
                    .map(|s| s.key)
                    .find(|k| !st.active.contains(k));
                // Below the in-flight target anyone may start; a stream with nothing in
                // flight always may (so every stream progresses). This also bounds the
                // workers resuming the many windows a crashed run left behind.
                let room = in_flight.load(Ordering::Relaxed) < self.engine.settings.parallelism;
                let key = match free {
                    Some(k) if room || st.active.is_empty() => Some(k),
                    Some(_) => None,
                    None if room => {
                        let active = st.active.clone();
                        let split = self.split(&mut st, |s| {
                            active.contains(&s.key) && !s.keyed_on_created(&self.spec)
                        });
                        // Otherwise a segment keyed on `created_at` may split after its page.
                        st.split_wanted = split.is_none();
                        split
                    }
                    None => None,
                };
                if let Some(k) = key {
                    st.split_wanted = false;
                    st.active.insert(k);
                    in_flight.fetch_add(1, Ordering::Relaxed);
                }
                key
            };
            let Some(key) = claimed else {
                // Nothing to take now; another stream may finish and leave room for a split.
                tokio::select! {
                    _ = self.cancel.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(IDLE_POLL) => continue,
                }
            };
            let result = self.drive(key).await;
            in_flight.fetch_sub(1, Ordering::Relaxed);
            self.state.lock().await.active.remove(&key);
            result?;
        }
    }

    /// Drives one segment until it is complete (or the walk stops).
    async fn drive(&self, key: u64) -> Result<(), SyncError> {
        loop {
            if self.cancel.is_cancelled() {
                return Ok(());
            }
            let req = {
                let st = self.state.lock().await;
                match st.cursor.pending.iter().find(|s| s.key == key) {
                    Some(seg) => seg.plan(&self.spec, self.limit.load(Ordering::Relaxed)),
                    None => return Ok(()),
                }
            };
            let (req, page) = self.fetch(req, Some(key)).await?;
            let mut st = self.state.lock().await;
            let mut next = st.cursor.clone();
            let Some(seg) = next.segment_mut(key) else {
                return Ok(());
            };
            let items = page.records.len();
            let applied = seg.apply(&self.spec, &req, page.records);
            tracing::debug!(
                stream = self.spec.name,
                segment = key,
                from = req.from,
                to = req.to,
                order = ?req.order,
                items,
                kept = applied.keep.len(),
                done = applied.done,
                "page"
            );
            if applied.done {
                next.remove(key);
            }
            let done = applied.done;
            self.commit(&mut st, next, applied.keep).await?;
            if done {
                return Ok(());
            }
            if st.split_wanted
                && self
                    .split(&mut st, |s| s.key == key && s.keyed_on_created(&self.spec))
                    .is_some()
            {
                st.split_wanted = false;
            }
        }
    }

    /// Splits the largest eligible segment for another worker, if enough is left in it.
    fn split(&self, st: &mut WalkState, eligible: impl Fn(&Segment) -> bool) -> Option<u64> {
        let key = st.next_key;
        let min_items = f64::from(self.limit.load(Ordering::Relaxed)) * SPLIT_MIN_PAGES;
        let split = st.cursor.split_largest(eligible, key, min_items)?;
        st.next_key += 1;
        if let Some(seg) = st.cursor.segment_mut(split) {
            tracing::debug!(
                stream = self.spec.name,
                segment = seg.key,
                from = seg.from,
                to = seg.to,
                "window split for another worker"
            );
        }
        Some(split)
    }

    /// Fetches a page, asking for less after "ask for less" answers. Returns the request
    /// as finally sent (its limit decides whether the page was full).
    async fn fetch(
        &self,
        mut req: PageRequest,
        key: Option<u64>,
    ) -> Result<(PageRequest, Page), SyncError> {
        let mut shrinks = 0;
        loop {
            self.requests.fetch_add(1, Ordering::Relaxed);
            let fetched = tokio::select! {
                _ = self.cancel.cancelled() => Err(FetchError::new(FailureKind::Cancelled, "stopped")),
                r = self.engine.source.fetch(&req) => r,
            };
            match fetched {
                Ok(page) => return Ok((req, page)),
                Err(e)
                    if e.kind == FailureKind::AskForLess
                        && shrinks < MAX_SHRINKS
                        && req.limit > MIN_PAGE =>
                {
                    shrinks += 1;
                    let smaller = (req.limit / 2).max(MIN_PAGE);
                    tracing::warn!(
                        stream = self.spec.name,
                        from = req.limit,
                        to = smaller,
                        "server asked for smaller pages"
                    );
                    self.limit.fetch_min(smaller, Ordering::Relaxed);
                    req.limit = smaller;
                    if let Some(key) = key {
                        let mut st = self.state.lock().await;
                        if let Some(seg) = st.cursor.segment_mut(key) {
                            seg.page_size_changed(smaller);
                            req = seg.plan(&self.spec, smaller);
                        }
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Writes `records` and the new cursor in one transaction, then adopts the cursor.
    /// Called with the walk's lock held, so cursors are written in the order they change.
    async fn commit(
        &self,
        st: &mut WalkState,
        next: Cursor,
        records: Vec<Record>,
    ) -> Result<(), SyncError> {
        let store = &self.engine.store;
        let mut tx = store.begin().await?;
        let written =
            crate::store::entities::upsert_page(&mut tx, self.spec.name, &records).await?;
        let stored =
            serde_json::to_value(StoredCursor::V1(next.clone())).expect("cursor serializes");
        Store::save_cursor(
            &mut tx,
            &self.engine.account,
            self.spec.name,
            &stored,
            written,
        )
        .await?;
        tx.commit().await.map_err(|source| StoreError::Query {
            doing: "committing a page",
            source,
        })?;
        st.cursor = next;
        self.pages.fetch_add(1, Ordering::Relaxed);
        self.rows_seen
            .fetch_add(records.len() as u64, Ordering::Relaxed);
        self.rows_written.fetch_add(written, Ordering::Relaxed);
        if let Some(progress) = &self.engine.progress {
            progress(self.spec.name, &self.counts());
        }
        Ok(())
    }
}
