//! The source-agnostic sync: the cursor, the walk of one stream (pure), one run of a stream
//! (its I/O), and the schedule.

pub mod cursor;
pub mod log;
pub mod reconcile;
pub mod refresh;
pub mod run;
pub mod scheduler;
pub mod walk;
pub mod write;

pub use run::{EngineSettings, Finished, RunReport, SyncEngine, SyncError};

/// How far a stored cursor (an entity walk's, or a log's `through`) proves the stream
/// stored, in unix seconds of server time; `None` when it proves nothing yet.
pub fn synced_up_to(cursor: &serde_json::Value) -> Option<i64> {
    serde_json::from_value::<cursor::StoredCursor>(cursor.clone())
        .ok()
        .and_then(|c| c.into_current().synced_up_to())
        .or_else(|| {
            serde_json::from_value::<log::LogCursor>(cursor.clone())
                .ok()
                .and_then(|c| c.through)
        })
}
