//! The source-agnostic sync: cursors, the walk of one stream, and the schedule.

pub mod cursor;
pub mod engine;
pub mod scheduler;

pub use engine::{EngineSettings, RunReport, SyncEngine, SyncError};
