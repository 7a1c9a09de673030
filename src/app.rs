//! Wiring: settings → store (migrated) → Kommo client → engine. `App::build` returns a value
//! that the commands use; `run_until_stopped` is the daemon.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use crate::config::{AuthSettings, Settings};
use crate::kommo::{KommoClient, KommoSource};
use crate::metrics::Metrics;
use crate::server::Health;
use crate::source::Source;
use crate::store::lease::Lease;
use crate::store::state::{StreamStatus, StreamTable};
use crate::store::tokens::PgTokens;
use crate::store::Store;
use crate::sync::reconcile::Reconciled;
use crate::sync::run::ProgressFn;
use crate::sync::scheduler::{run_schedules, Schedule};
use crate::sync::{EngineSettings, RunReport, SyncEngine, SyncError};
use crate::tokens::TokenStore;

/// Each stream, the table it fills, and where its rows sit in a shared table, from the
/// source's declarations.
pub fn stream_tables() -> Vec<StreamTable> {
    crate::kommo::STREAMS
        .iter()
        .map(|s| StreamTable {
            stream: s.name,
            table: s.table.name,
            scope: s.scope,
        })
        .collect()
}

/// How long shutdown waits for runs to finish their page before giving up on them.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(8);

pub struct App {
    pub settings: Settings,
    pub store: Store,
    pub client: Arc<KommoClient>,
    pub engine: Arc<SyncEngine<KommoSource>>,
    pub metrics: Arc<Metrics>,
    /// Set once the schedule runs; `/readyz` is unready before.
    pub scheduled: Arc<AtomicBool>,
    /// Fires on SIGTERM/SIGINT (or when a test says so): waits and requests end early,
    /// and no new page is started.
    pub cancel: CancellationToken,
}

impl App {
    /// Connects to Postgres, applies migrations and prepares the client. Sends nothing to
    /// Kommo.
    pub async fn build(settings: Settings, cancel: CancellationToken) -> anyhow::Result<App> {
        Self::build_with(settings, cancel, None).await
    }

    /// Like [`App::build`], with a progress callback for interactive runs.
    pub async fn build_with(
        settings: Settings,
        cancel: CancellationToken,
        progress: Option<ProgressFn>,
    ) -> anyhow::Result<App> {
        let store = Store::connect(&settings.database).await?;
        store.migrate().await?;
        let metrics = Arc::new(Metrics::new());
        metrics.declare_streams(crate::kommo::stream_names());
        let client = client(&settings, &store, &cancel, &metrics).await?;
        let source = Arc::new(KommoSource::new(client.clone()));
        let mut engine = SyncEngine::new(
            source,
            store.clone(),
            settings.kommo.account_key(),
            EngineSettings {
                lag_secs: settings.sync.lag_secs,
                max_clock_jump_secs: settings.sync.max_clock_jump_secs,
                parallelism: settings.sync.parallelism,
                page_size: settings.kommo.page_size,
                reconcile_every: (settings.sync.reconcile_every_hours > 0).then(|| {
                    Duration::from_secs(u64::from(settings.sync.reconcile_every_hours) * 3600)
                }),
            },
        )
        .with_metrics(metrics.clone());
        if let Some(p) = progress {
            engine = engine.with_progress(p);
        }
        Ok(App {
            settings,
            store,
            client,
            engine: Arc::new(engine),
            metrics,
            scheduled: Arc::new(AtomicBool::new(false)),
            cancel,
        })
    }

    /// What the side server's endpoints look at.
    pub fn health(&self) -> Health {
        let source = self.engine.source().clone();
        Health {
            store: self.store.clone(),
            source: Arc::new(move || source.health()),
            metrics: self.metrics.clone(),
            account: self.settings.kommo.account_key(),
            scheduled: self.scheduled.clone(),
        }
    }

    /// `status` of the configured account: one row per stream that has run.
    pub async fn status(&self) -> Result<Vec<StreamStatus>, crate::store::StoreError> {
        self.store
            .status(Some(&self.settings.kommo.account_key()), &stream_tables())
            .await
    }

    /// One pass over `streams` (all enabled ones when empty), side by side under the shared
    /// rate limit. Every stream runs even if another fails; the first failure is returned.
    pub async fn sync_once(
        &self,
        streams: &[String],
        full: bool,
    ) -> Result<Vec<RunReport>, SyncError> {
        let mut reports = Vec::new();
        let mut first_error = None;
        for (_, result) in self.sync_each(streams, full).await? {
            match result {
                Ok(report) => reports.push(report),
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(reports),
        }
    }

    /// Like [`App::sync_once`], with each stream's own result.
    pub async fn sync_each(
        &self,
        streams: &[String],
        full: bool,
    ) -> Result<Vec<(String, Result<RunReport, SyncError>)>, SyncError> {
        let names: Vec<String> = if streams.is_empty() {
            self.settings.enabled_streams()
        } else {
            streams.to_vec()
        };
        for n in &names {
            self.engine.stream(n)?;
        }
        let runs = names
            .iter()
            .map(|n| self.engine.run_stream(n, full, &self.cancel));
        let results = futures::future::join_all(runs).await;
        Ok(names.into_iter().zip(results).collect())
    }

    /// Compares each of `streams` (every enabled entity list when empty) with the mirror by
    /// id now, one after the other; see [`crate::sync::reconcile`]. Stops at the first
    /// failure; `None` for a stream means it was cancelled.
    pub async fn reconcile(
        &self,
        streams: &[String],
    ) -> Result<Vec<(String, Option<Reconciled>)>, SyncError> {
        let names: Vec<String> = if streams.is_empty() {
            let enabled = self.settings.enabled_streams();
            crate::kommo::entity_stream_names()
                .filter(|n| enabled.iter().any(|e| e == n))
                .map(str::to_string)
                .collect()
        } else {
            streams.to_vec()
        };
        let mut out = Vec::new();
        for name in names {
            let done = self.engine.reconcile(&name, &self.cancel).await?;
            out.push((name, done));
        }
        Ok(out)
    }

    /// The daemon: the side server (if configured) and scheduled runs of every enabled
    /// stream, until `cancel` fires.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        let schedules: Vec<Schedule> = self
            .settings
            .streams
            .iter()
            .filter(|(_, s)| s.enabled)
            .map(|(name, s)| Schedule {
                stream: name.clone(),
                cron: s.schedule.clone(),
            })
            .collect();
        if schedules.is_empty() {
            anyhow::bail!(
                "no stream is enabled: set streams.<name>.enabled = true for at least one stream"
            );
        }
        tracing::info!(
            account = self.engine.account(),
            streams = schedules.len(),
            "kommo-sync running"
        );
        let server = match self.settings.server_listen {
            Some(addr) => {
                let (_, handle) = crate::server::start(addr, self.health(), self.cancel.clone())
                    .await
                    .with_context(|| {
                        format!(
                            "cannot serve on {addr} (server.listen): choose a free address, \
                             or leave server.listen empty to turn the side server off"
                        )
                    })?;
                Some(handle)
            }
            None => None,
        };
        // systemd (Type=notify): ready once migrations are applied; a process standing by
        // for the account's lease is a healthy process too.
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
        if let Some(every) = sd_notify::watchdog_enabled() {
            tokio::spawn(watchdog(self.health(), every / 2, self.cancel.clone()));
        }
        let result = self.hold_and_run(schedules).await;
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
        // A token refresh in flight ends with its commit, or the next start is locked out.
        self.client.settle().await;
        if let Some(server) = server {
            let _ = server.await;
        }
        result?;
        tracing::info!("stopped");
        Ok(())
    }
}

impl App {
    /// Takes the account's lease if no other process holds it (see
    /// [`crate::store::lease`]). The holder closes the runs a dead holder left `running`,
    /// and holds back for a ban another process stored.
    pub async fn take_lease(&self) -> anyhow::Result<Option<Lease>> {
        let account = self.settings.kommo.account_key();
        let Some(lease) = self.store.try_lease(&account).await? else {
            return Ok(None);
        };
        let closed = self.store.close_interrupted_runs(&account).await?;
        if closed > 0 {
            tracing::info!(
                runs = closed,
                "closed the runs a stopped process left running (outcome interrupted)"
            );
        }
        if let Some(until) = self.store.stored_ban(&account).await? {
            self.client.politeness().restore_ban(until);
        }
        Ok(Some(lease))
    }

    /// Stands by until the account's lease is free, runs the schedule while it is held,
    /// and stands by again if it is lost (its database connection broke), until `cancel`.
    async fn hold_and_run(&self, schedules: Vec<Schedule>) -> anyhow::Result<()> {
        let mut said = false;
        loop {
            let mut lease = loop {
                if self.cancel.is_cancelled() {
                    return Ok(());
                }
                match self.take_lease().await {
                    Ok(Some(lease)) => break lease,
                    Ok(None) if !said => {
                        tracing::info!(
                            account = self.engine.account(),
                            "another process syncs this account: standing by to take over"
                        );
                        said = true;
                    }
                    Ok(None) => {}
                    Err(e) => {
                        tracing::warn!(error.message = %format!("{e:#}"), "cannot take the account's lease yet")
                    }
                }
                tokio::select! {
                    _ = self.cancel.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(LEASE_POLL) => {}
                }
            };
            said = false;
            tracing::info!(
                account = self.engine.account(),
                "holding the account's lease: syncing"
            );
            let held = self.cancel.child_token();
            let watch = tokio::spawn({
                let held = held.clone();
                async move {
                    loop {
                        tokio::select! {
                            _ = held.cancelled() => return lease,
                            _ = tokio::time::sleep(LEASE_POLL) => {}
                        }
                        if !lease.holds().await {
                            tracing::warn!(
                                "lost the account's lease (its database connection broke): \
                                 stopping the schedule, then standing by"
                            );
                            held.cancel();
                            return lease;
                        }
                    }
                }
            });
            self.scheduled.store(true, Ordering::Relaxed);
            let result = run_schedules(
                self.engine.clone(),
                schedules.clone(),
                self.settings.sync.run_at_startup,
                held.clone(),
                Box::new(|| {}),
            )
            .await
            .context("running the schedule");
            self.scheduled.store(false, Ordering::Relaxed);
            held.cancel();
            let lease = watch.await.context("watching the account's lease")?;
            result?;
            if self.cancel.is_cancelled() {
                lease.release().await;
                return Ok(());
            }
        }
    }
}

/// How often a standby tries the lease, and the holder checks it still holds it.
const LEASE_POLL: Duration = Duration::from_secs(2);

/// The Kommo client of these settings, holding a ban an earlier process stored (a 403
/// outlives the process that met it: nothing is sent before it ends). `store` must hold a
/// migrated mirror.
pub async fn client(
    settings: &Settings,
    store: &Store,
    cancel: &CancellationToken,
    metrics: &Arc<Metrics>,
) -> anyhow::Result<Arc<KommoClient>> {
    // Only OAuth keeps anything in the database; a long-lived token needs no store.
    let tokens: Option<Arc<dyn TokenStore>> = match settings.kommo.auth {
        AuthSettings::OAuth(_) => Some(Arc::new(PgTokens {
            store: store.clone(),
        })),
        AuthSettings::LongLivedToken(_) => None,
    };
    let client = Arc::new(
        KommoClient::new(&settings.kommo, cancel.clone(), metrics.clone(), tokens)
            .context("building the HTTP client")?,
    );
    if let Some(until) = store.stored_ban(&settings.kommo.account_key()).await? {
        client.politeness().restore_ban(until);
        tracing::warn!(
            %until,
            "Kommo blocked this IP (a 403 stored by an earlier run): no request is sent before the ban ends"
        );
    }
    Ok(client)
}

/// Pings systemd's watchdog while the process and its schedule run. A database outage is
/// not a reason to be killed: the daemon survives it (runs fail and retry on schedule), and
/// `/readyz` reports it; a restart by systemd would only add a cold start to the outage.
async fn watchdog(health: Health, every: Duration, cancel: CancellationToken) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]);
        if !matches!(
            tokio::time::timeout(Duration::from_secs(5), health.store.ping()).await,
            Ok(Ok(()))
        ) {
            tracing::warn!("database unreachable: runs fail until it is back (see /readyz)");
        }
    }
}

/// Resolves when SIGTERM or SIGINT arrives.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => tracing::info!("SIGINT received"),
        _ = term => tracing::info!("SIGTERM received"),
    }
}
