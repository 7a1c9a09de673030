//! One cron job per enabled stream (tokio-cron-scheduler). A stream never runs twice at
//! once: a tick that finds the previous run still going is skipped and logged.

use std::sync::Arc;

use tokio::sync::Mutex;
use tokio_cron_scheduler::{Job, JobScheduler, JobSchedulerError};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::SyncEngine;
use crate::source::Source;

/// A stream and its cron expression (six fields, with seconds).
#[derive(Debug, Clone)]
pub struct Schedule {
    pub stream: String,
    pub cron: String,
}

/// Runs the schedules until `cancel` fires, then waits for the runs in flight, which stop
/// at their next page boundary.
pub async fn run_schedules<S: Source>(
    engine: Arc<SyncEngine<S>>,
    schedules: Vec<Schedule>,
    run_at_startup: bool,
    cancel: CancellationToken,
    on_ready: Box<dyn FnOnce() + Send>,
) -> Result<(), JobSchedulerError> {
    let mut scheduler = JobScheduler::new().await?;
    // Every run is spawned on this tracker, so shutdown can wait for all of them.
    let tracker = TaskTracker::new();
    let mut starters = Vec::new();
    for schedule in schedules {
        // Held for the whole run: `try_lock` failing means the previous run is still going.
        let busy = Arc::new(Mutex::new(()));
        let tick = {
            let (engine, cancel, tracker, stream) = (
                engine.clone(),
                cancel.clone(),
                tracker.clone(),
                schedule.stream.clone(),
            );
            move || {
                let (engine, cancel, busy, stream) =
                    (engine.clone(), cancel.clone(), busy.clone(), stream.clone());
                tracker.spawn(async move { run_tick(&engine, &stream, &busy, &cancel).await })
            }
        };
        let job_tick = tick.clone();
        scheduler
            .add(Job::new_async(schedule.cron.as_str(), move |_, _| {
                let handle = job_tick();
                Box::pin(async move {
                    let _ = handle.await;
                })
            })?)
            .await?;
        tracing::info!(stream = schedule.stream, cron = schedule.cron, "scheduled");
        starters.push(tick);
    }
    scheduler.start().await?;
    on_ready();
    if run_at_startup {
        for start in &starters {
            start();
        }
    }
    cancel.cancelled().await;
    tracing::info!("shutting down: no new runs; waiting for the pages in flight");
    scheduler.shutdown().await?;
    tracker.close();
    tracker.wait().await;
    Ok(())
}

async fn run_tick<S: Source>(
    engine: &SyncEngine<S>,
    stream: &str,
    busy: &Mutex<()>,
    cancel: &CancellationToken,
) {
    let Ok(_running) = busy.try_lock() else {
        tracing::warn!(
            stream,
            "previous run of this stream is still going; tick skipped"
        );
        return;
    };
    if cancel.is_cancelled() {
        return;
    }
    // Failures are recorded in sync_state and logged by the engine; the next tick retries.
    let _ = engine.run_stream(stream, false, cancel).await;
}
