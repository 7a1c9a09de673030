//! `kommo-sim`: an in-memory simulator of the Kommo CRM API v4, faithful to its limits.
//!
//! It is what the daemon's integration tests and benchmarks talk to instead of a real account,
//! so it refuses what Kommo refuses (pages over 250, `order[updated_at]` on tasks, the 8th
//! request in a second, a reused refresh token) and misbehaves the ways Kommo may (eventual
//! consistency, shuffled ties, bans, 5xx, timeouts, truncated bodies, resets, huge bodies).
//! See `docs/simulator.md`.
//!
//! Crate map:
//! - [`config`]: [`SimConfig`], [`AuthConfig`], [`ImsMode`], [`TieOrder`], and the list
//!   behaviours Kommo leaves open: [`Bounds`], [`IgnoredParam`] / [`Param`], [`DefaultOrder`].
//! - [`clock`]: the sim clock (system UTC + offset, advanced by tests).
//! - [`entity`]: [`Entity`], the four synced kinds.
//! - [`reference`]: users, pipelines, custom field definitions, tags and their endpoints' JSON.
//! - [`content`]: realistic entity JSON and edits; [`seed`]: the deterministic initial timeline.
//! - [`store`]: entity version chains and delayed visibility; [`events`]: the event log.
//! - [`links`]: lead–contact and company links; [`embeds`]: what `with=` adds to the JSON.
//! - [`lifecycle`]: restores and merges; [`linking`]: link changes; [`stages`]: lead moves.
//! - [`limits`]: sliding-window rate limit and ban; [`faults`]: injected failures (queued, or
//!   drawn at random by a seeded [`FaultMix`]); [`counters`]: what was served; [`oauth`]: token
//!   grants.
//! - [`query`]: list query parsing; [`api`]: the /api/v4 and /oauth2 surface;
//!   [`control`]: /_sim endpoints; [`mutator`]: background churn; [`sim`]: the shared state.

pub mod api;
pub mod clock;
pub mod config;
pub mod content;
pub mod control;
pub mod counters;
pub mod embeds;
pub mod entity;
pub mod events;
pub mod faults;
pub mod lifecycle;
pub mod limits;
pub mod linking;
pub mod links;
pub mod mutator;
pub mod oauth;
pub mod problem;
pub mod query;
pub mod reference;
pub mod seed;
pub mod sim;
pub mod stages;
pub mod store;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

pub use config::{
    AuthConfig, Bounds, DefaultOrder, IgnoredParam, ImsMode, Param, SimConfig, TieOrder,
};
pub use counters::Counters;
pub use embeds::With;
pub use entity::Entity;
pub use events::{Event, StageMove};
pub use faults::{Fault, FaultMix, FaultMixError};
pub use links::{LeadContact, LinkSnapshot};
pub use mutator::{Focus, MutatorConfig, MutatorHandle, MutatorStats};
pub use reference::FieldType;
pub use sim::Sim;

/// The whole HTTP app for a simulator: /_sim control routes plus the counted Kommo surface.
pub fn app(sim: Arc<Sim>) -> Router {
    control::router().fallback(api::gateway).with_state(sim)
}

/// A running simulator server.
///
/// It serves from a thread and a runtime of its own, like a real server in another process:
/// a busy client (tests run the daemon in the same process) cannot delay when the simulator
/// sees requests arrive, which its sliding-second rate limit depends on.
pub struct SimServer {
    addr: SocketAddr,
    sim: Arc<Sim>,
    stop_tx: oneshot::Sender<()>,
    /// Ends the server at once if a graceful stop takes too long.
    force_tx: oneshot::Sender<()>,
    done_rx: oneshot::Receiver<()>,
}

impl SimServer {
    /// Seeds an account and serves it on 127.0.0.1 with an ephemeral port.
    pub async fn start(cfg: SimConfig) -> anyhow::Result<SimServer> {
        Self::start_on(cfg, SocketAddr::from(([127, 0, 0, 1], 0))).await
    }

    /// Seeds an account and serves it on `addr`.
    pub async fn start_on(cfg: SimConfig, addr: SocketAddr) -> anyhow::Result<SimServer> {
        let listener = std::net::TcpListener::bind(addr)?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let sim = Sim::new(cfg, &format!("http://{addr}"));
        let app = app(sim.clone());
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let (force_tx, force_rx) = oneshot::channel::<()>();
        let (done_tx, done_rx) = oneshot::channel::<()>();
        std::thread::Builder::new()
            .name("kommo-sim".into())
            .spawn(move || {
                // Several workers: one handler building a large page must not hold back the
                // next request's arrival time (the rate limit is measured on arrivals).
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(4)
                    .thread_name("kommo-sim-worker")
                    .enable_all()
                    .build()
                    .expect("simulator runtime");
                rt.block_on(async move {
                    let listener = match TcpListener::from_std(listener) {
                        Ok(l) => l,
                        Err(e) => return tracing::error!("simulator listener failed: {e}"),
                    };
                    let serve = axum::serve(listener, app).with_graceful_shutdown(async {
                        let _ = stop_rx.await;
                    });
                    tokio::select! {
                        served = serve => if let Err(e) = served {
                            tracing::error!("simulator server failed: {e}");
                        },
                        _ = force_rx => {}
                    }
                });
                rt.shutdown_timeout(Duration::from_millis(200));
                let _ = done_tx.send(());
            })?;
        Ok(SimServer {
            addr,
            sim,
            stop_tx,
            force_tx,
            done_rx,
        })
    }

    /// `http://127.0.0.1:PORT`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Shared state, for control from tests.
    pub fn sim(&self) -> Arc<Sim> {
        self.sim.clone()
    }

    /// Stops the control mutator, releases held requests and shuts the server down (forcibly
    /// after 5 s of draining connections).
    pub async fn stop(self) {
        if let Some(h) = self.sim.control_mutator.lock().await.take() {
            h.stop().await;
        }
        let _ = self.sim.shutdown.send(true);
        let _ = self.stop_tx.send(());
        let mut done = self.done_rx;
        if tokio::time::timeout(Duration::from_secs(5), &mut done)
            .await
            .is_err()
        {
            let _ = self.force_tx.send(());
            let _ = tokio::time::timeout(Duration::from_secs(2), done).await;
        }
    }
}
