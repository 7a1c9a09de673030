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
