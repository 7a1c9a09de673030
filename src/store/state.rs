//! Sync bookkeeping: the cursor and health of each stream (`sync_state`) and one row per
//! run (`sync_runs`).

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;

use super::{Doing, Store, StoreError, Tx};

/// Health of a stream as shown by `status` and health checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StreamHealth {
    Ok,
    BackingOff,
    Banned,
    LockedOut,
}

impl StreamHealth {
    pub fn as_str(self) -> &'static str {
        match self {
            StreamHealth::Ok => "ok",
            StreamHealth::BackingOff => "backing_off",
            StreamHealth::Banned => "banned",
            StreamHealth::LockedOut => "locked_out",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunOutcome {
    Ok,
    Failed,
    Cancelled,
}

impl RunOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            RunOutcome::Ok => "ok",
            RunOutcome::Failed => "failed",
            RunOutcome::Cancelled => "cancelled",
        }
    }
}

/// Counts of one run, written to `sync_runs`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RunCounts {
    pub requests: u64,
    pub pages: u64,
    pub rows_seen: u64,
    pub rows_written: u64,
    pub window_upper: Option<i64>,
}

/// How a run ended, for `sync_state`.
#[derive(Debug, Clone)]
pub struct RunEnd {
    pub outcome: RunOutcome,
    pub health: StreamHealth,
    pub error: Option<String>,
    pub blocked_until: Option<DateTime<Utc>>,
}

impl RunEnd {
    /// A run that did not fail: the stream is healthy.
    pub fn ok(outcome: RunOutcome) -> RunEnd {
        RunEnd {
            outcome,
            health: StreamHealth::Ok,
            error: None,
            blocked_until: None,
        }
    }
}

/// One row of `status`.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct StreamStatus {
    /// The account's host (one schema may hold several).
    pub account: String,
    pub stream: String,
    pub cursor: Value,
    pub state: String,
    pub last_started_at: Option<DateTime<Utc>>,
    pub last_success_at: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
    pub last_error_at: Option<DateTime<Utc>>,
    pub blocked_until: Option<DateTime<Utc>>,
    pub rows_written: i64,
    pub rows: i64,
}

fn n(v: u64) -> i32 {
    i32::try_from(v).unwrap_or(i32::MAX)
}

/// A stream and where its rows are, for counting them.
#[derive(Debug, Clone, Copy)]
pub struct StreamTable {
    pub stream: &'static str,
    pub table: &'static str,
    /// Column and value that tell this stream's rows apart in a shared table.
    pub scope: Option<(&'static str, &'static str)>,
}

impl Store {
    /// Reads a stream's stored cursor, if it has one.
    pub async fn load_cursor(
        &self,
        account: &str,
        stream: &str,
    ) -> Result<Option<Value>, StoreError> {
        sqlx::query_scalar("SELECT cursor FROM sync_state WHERE account = $1 AND stream = $2")
            .bind(account)
            .bind(stream)
            .fetch_optional(self.pool())
            .await
            .doing("reading the cursor")
    }

    /// When the stream's list was last compared with the mirror by id (see
    /// [`crate::sync::reconcile`]); `None` if never. The time is this machine's.
    pub async fn reconciled_at(
        &self,
        account: &str,
        stream: &str,
    ) -> Result<Option<DateTime<Utc>>, StoreError> {
        let at: Option<Option<DateTime<Utc>>> = sqlx::query_scalar(
            "SELECT reconciled_at FROM sync_state WHERE account = $1 AND stream = $2",
        )
        .bind(account)
        .bind(stream)
        .fetch_optional(self.pool())
        .await
        .doing("reading when the stream was last reconciled")?;
        Ok(at.flatten())
    }

    /// Notes that the stream's list is compared with the mirror now (at the start, so that a
    /// failing comparison is not tried again before its interval has passed).
    pub async fn note_reconciled(&self, account: &str, stream: &str) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE sync_state SET reconciled_at = now(), updated_at = now() \
             WHERE account = $1 AND stream = $2",
        )
        .bind(account)
        .bind(stream)
        .execute(self.pool())
        .await
        .doing("noting the reconciliation")?;
        Ok(())
    }

    /// Records the start of a run (creating the stream's state row with `initial_cursor`
    /// the first time) and returns the run's id.
    pub async fn start_run(
        &self,
        account: &str,
        stream: &str,
        full: bool,
        initial_cursor: &Value,
    ) -> Result<i64, StoreError> {
        let mut tx = self.begin().await?;
        sqlx::query(
            "INSERT INTO sync_state (account, stream, cursor, last_started_at) VALUES ($1, $2, $3, now()) \
             ON CONFLICT (account, stream) DO UPDATE SET last_started_at = now(), updated_at = now()",
        )
        .bind(account)
        .bind(stream)
        .bind(initial_cursor)
        .execute(&mut *tx)
        .await
        .doing("recording the start of a run")?;
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO sync_runs (account, stream, full_sync) VALUES ($1, $2, $3) RETURNING id",
        )
        .bind(account)
        .bind(stream)
        .bind(full)
        .fetch_one(&mut *tx)
        .await
        .doing("recording the start of a run")?;
        tx.commit().await.doing("recording the start of a run")?;
        Ok(id)
    }

    /// Moves a stream's cursor inside the transaction that wrote the rows it covers.
    /// `account_id`: the source's account id of those rows, when the page had any.
    pub async fn save_cursor(
        tx: &mut Tx,
        account: &str,
        stream: &str,
        cursor: &Value,
        rows_written: u64,
        account_id: Option<i64>,
    ) -> Result<(), StoreError> {
        let updated = sqlx::query(
            "UPDATE sync_state SET cursor = $3, rows_written = rows_written + $4, \
               account_id = coalesce($5, account_id), updated_at = now() \
             WHERE account = $1 AND stream = $2",
        )
        .bind(account)
        .bind(stream)
        .bind(cursor)
        .bind(rows_written as i64)
        .bind(account_id)
        .execute(&mut **tx)
        .await
        .doing("moving the cursor")?;
        if updated.rows_affected() != 1 {
            return Err(StoreError::BadCursor {
                stream: stream.into(),
                detail: "its sync_state row is missing (was the table cleared during the run?)"
                    .into(),
            });
        }
        Ok(())
    }

    /// Records the end of a run and the stream's resulting health.
    pub async fn finish_run(
        &self,
        run_id: i64,
        account: &str,
        stream: &str,
        counts: &RunCounts,
        end: &RunEnd,
    ) -> Result<(), StoreError> {
        let mut tx = self.begin().await?;
        sqlx::query(
            "UPDATE sync_runs SET finished_at = now(), outcome = $2, requests = $3, pages = $4, \
               rows_seen = $5, rows_written = $6, window_upper = to_timestamp($7), error = $8 \
             WHERE id = $1",
        )
        .bind(run_id)
        .bind(end.outcome.as_str())
        .bind(n(counts.requests))
        .bind(n(counts.pages))
        .bind(n(counts.rows_seen))
        .bind(n(counts.rows_written))
        .bind(counts.window_upper)
        .bind(&end.error)
        .execute(&mut *tx)
        .await
        .doing("recording the end of a run")?;
        let success = end.outcome == RunOutcome::Ok;
        // A cancelled run says nothing new about the stream: its health stays as it was.
        let health = (end.outcome != RunOutcome::Cancelled).then(|| end.health.as_str());
        sqlx::query(
            "UPDATE sync_state SET state = coalesce($3, state), updated_at = now(), \
               last_success_at = CASE WHEN $4 THEN now() ELSE last_success_at END, \
               last_error = CASE WHEN $4 THEN NULL WHEN $5::text IS NULL THEN last_error ELSE $5 END, \
               last_error_at = CASE WHEN $5::text IS NULL THEN last_error_at ELSE now() END, \
               blocked_until = CASE WHEN $3::text IS NULL THEN blocked_until ELSE $6 END \
             WHERE account = $1 AND stream = $2",
        )
        .bind(account)
        .bind(stream)
        .bind(health)
        .bind(success)
        .bind(&end.error)
        .bind(end.blocked_until)
        .execute(&mut *tx)
        .await
        .doing("recording the end of a run")?;
        tx.commit().await.doing("recording the end of a run")
    }

    /// Closes the runs a dead process left `running`: a process calls this as it starts,
    /// before any run of its own. Returns how many were closed.
    pub async fn close_interrupted_runs(&self, account: &str) -> Result<u64, StoreError> {
        sqlx::query(
            "UPDATE sync_runs SET outcome = 'interrupted', finished_at = now(), \
               error = coalesce(error, 'the process running it stopped before it ended (killed, or \
               the database went away); the next run went on from the stored cursor') \
             WHERE account = $1 AND outcome = 'running'",
        )
        .bind(account)
        .execute(self.pool())
        .await
        .doing("closing runs a stopped process left running")
        .map(|r| r.rows_affected())
    }

    /// The end of a ban (403) stored by an earlier process, if it is not over yet.
    pub async fn stored_ban(&self, account: &str) -> Result<Option<DateTime<Utc>>, StoreError> {
        sqlx::query_scalar(
            "SELECT max(blocked_until) FROM sync_state \
             WHERE account = $1 AND state = 'banned' AND blocked_until > now()",
        )
        .bind(account)
        .fetch_one(self.pool())
        .await
        .doing("reading a stored ban")
    }

    /// Per-stream status for `status`, with the number of rows of the account in each
    /// stream's table (`tables`: from the source's declarations). `account: None`: every
    /// account stored.
    pub async fn status(
        &self,
        account: Option<&str>,
        tables: &[StreamTable],
    ) -> Result<Vec<StreamStatus>, StoreError> {
        // Names and scopes come from the source's declarations, never from input.
        let counts: String = tables
            .iter()
            .map(|t| {
                let scope = t
                    .scope
                    .map_or(String::new(), |(c, v)| format!(" AND t.{c} = '{v}'"));
                format!(
                    "WHEN '{stream}' THEN (SELECT count(*) FROM {table} t \
                     WHERE t.account_id = s.account_id{scope}) ",
                    stream = t.stream,
                    table = t.table
                )
            })
            .collect();
        let rows = if tables.is_empty() {
            "0::bigint".to_string()
        } else {
            format!("CASE s.stream {counts}ELSE 0 END")
        };
        sqlx::query_as::<_, StreamStatus>(&format!(
            "SELECT s.account, s.stream, s.cursor, s.state, s.last_started_at, s.last_success_at, s.last_error, \
               s.last_error_at, s.blocked_until, s.rows_written, coalesce({rows}, 0) AS rows \
             FROM sync_state s WHERE $1::text IS NULL OR s.account = $1 \
             ORDER BY s.account, s.stream"
        ))
        .bind(account)
        .fetch_all(self.pool())
        .await
        .doing("reading the sync status")
    }
}
