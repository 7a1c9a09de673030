//! The side server: `/healthz` (alive), `/readyz` (able to do its job), `/metrics`.
//! Off unless `server.listen` is set; meant for loopback or a private network.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::source::SourceHealth;
use crate::store::Store;

/// What the endpoints look at.
#[derive(Clone)]
pub struct Health {
    pub store: Store,
    /// Whether the source stopped its traffic (a ban, refused credentials).
    pub source: Arc<dyn Fn() -> SourceHealth + Send + Sync>,
    pub metrics: Arc<Metrics>,
    /// The account whose streams the state and freshness gauges show.
    pub account: String,
    /// Set once migrations are applied and the schedule is running.
    pub scheduled: Arc<AtomicBool>,
}

impl Health {
    /// Why the daemon cannot do its job right now, if it cannot.
    pub async fn not_ready(&self) -> Option<String> {
        if !self.scheduled.load(Ordering::Relaxed) {
            return Some(
                "not syncing: the schedule is not running (starting, or standing by while \
                 another process holds the account's lease)"
                    .into(),
            );
        }
        match tokio::time::timeout(Duration::from_secs(2), self.store.ping()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Some(format!("database unreachable: {e}")),
            Err(_) => return Some("database unreachable: no answer within 2 s".into()),
        }
        let p = (self.source)();
        if let Some(reason) = p.locked_out {
            return Some(format!("locked out: {reason}"));
        }
        if let Some(until) = p.banned_until {
            return Some(format!(
                "banned by Kommo (403) until {}",
                until.format("%Y-%m-%d %H:%M:%S UTC")
            ));
        }
        None
    }
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(h): State<Health>) -> impl IntoResponse {
    match h.not_ready().await {
        None => (StatusCode::OK, "ready\n".to_string()),
        Some(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        ),
    }
}

/// Reads each stream's state and how far it is stored into the gauges, within a short
/// deadline: a database that hangs leaves the last values (and `/readyz` says why).
async fn refresh_gauges(h: &Health) {
    let status = tokio::time::timeout(
        Duration::from_secs(2),
        h.store.status(Some(&h.account), &[]),
    );
    let Ok(Ok(rows)) = status.await else {
        return;
    };
    let now = chrono::Utc::now().timestamp();
    for r in rows {
        h.metrics.set_state(&r.stream, &r.state);
        if let Some(upto) = crate::sync::synced_up_to(&r.cursor) {
            h.metrics
                .freshness_seconds
                .get_or_create(&Metrics::stream(&r.stream))
                .set(now - upto);
        }
    }
}

async fn metrics(State(h): State<Health>) -> impl IntoResponse {
    refresh_gauges(&h).await;
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        h.metrics.render(),
    )
}

pub fn router(health: Health) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(health)
}

/// Binds `addr` (so a taken port fails at start, not later) and serves until `cancel`.
pub async fn start(
    addr: SocketAddr,
    health: Health,
    cancel: CancellationToken,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    tracing::info!(%bound, "side server listening (/healthz, /readyz, /metrics)");
    let handle = tokio::spawn(async move {
        let served = axum::serve(listener, router(health))
            .with_graceful_shutdown(async move { cancel.cancelled().await })
            .await;
        if let Err(e) = served {
            tracing::error!(error.message = %e, "side server failed");
        }
    });
    Ok((bound, handle))
}
