//! `/_sim/*`: control and inspection endpoints for tests, benchmarks and demos run out of
//! process. Never counted, rate-limited or delayed, so observing the simulator does not change
//! what it measures.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::config::{Bounds, DefaultOrder, IgnoredParam, ImsMode, TieOrder};
use crate::entity::Entity;
use crate::faults::Fault;
use crate::mutator::MutatorConfig;
use crate::sim::{lock, Sim};

/// Routes under `/_sim`.
pub fn router() -> Router<Arc<Sim>> {
    Router::new()
        .route("/_sim/health", get(health))
        .route("/_sim/counters", get(counters))
        .route("/_sim/counters/reset", post(reset_counters))
        .route("/_sim/dump/:entity", get(dump))
        .route("/_sim/clock/advance", post(advance))
        .route("/_sim/faults", post(faults).delete(clear_faults))
        .route("/_sim/ban", post(ban))
        .route("/_sim/settings", post(settings))
        .route("/_sim/race", post(race))
        .route("/_sim/mutate", post(mutate))
        .route("/_sim/mutator/start", post(mutator_start))
        .route("/_sim/mutator/stop", post(mutator_stop))
}

fn bad(msg: impl Into<String>) -> Response {
    (StatusCode::BAD_REQUEST, Json(json!({"error": msg.into()}))).into_response()
}

fn int_param(q: &HashMap<String, String>, key: &str) -> Result<i64, String> {
    q.get(key)
        .ok_or_else(|| format!("query parameter {key} is required"))?
        .parse()
        .map_err(|_| format!("{key} must be an integer"))
}

async fn health(State(sim): State<Arc<Sim>>) -> Json<Value> {
    let live: HashMap<&str, usize> = Entity::ALL
        .iter()
        .map(|e| (e.as_str(), sim.live_count(*e)))
        .collect();
    let mutator = sim.control_mutator.lock().await.as_ref().map(|m| m.stats());
    Json(json!({
        "ok": true,
        "now": sim.now(),
        "base_url": sim.base_url(),
        "live": live,
        "events": sim.event_count(),
        "ims_mode": sim.ims_mode(),
        "tie_order": sim.tie_order(),
        "visibility_delay_secs": sim.visibility_delay(),
        "latency_ms": sim.latency().as_millis() as u64,
        "bounds": sim.bounds(),
        "ignored": sim.ignored(),
        "default_order": sim.default_order(),
        "race_rate": sim.race_rate(),
        "races_pending": sim.races_pending(),
        "max_page_size": sim.max_page_size(),
        "ban_remaining_secs": sim.ban_remaining().map(|d| d.as_secs_f64()),
        "faults_pending": lock(&sim.faults).pending(),
        "mutator": mutator,
    }))
}

async fn counters(State(sim): State<Arc<Sim>>) -> Json<Value> {
    Json(serde_json::to_value(sim.counters()).expect("counters serialize"))
}

async fn reset_counters(State(sim): State<Arc<Sim>>) -> Json<Value> {
    sim.reset_counters();
    Json(json!({"ok": true}))
}

async fn dump(State(sim): State<Arc<Sim>>, Path(e): Path<String>) -> Response {
    match e.parse::<Entity>() {
        Ok(e) => Json(json!({
            "entity": e.as_str(),
            "items": sim.dump(e),
            "deleted_ids": sim.deleted_ids(e),
        }))
        .into_response(),
        Err(m) => bad(m),
    }
}

async fn advance(
    State(sim): State<Arc<Sim>>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    match int_param(&q, "secs") {
        Ok(s) => {
            sim.advance_clock(s);
            Json(json!({"now": sim.now()})).into_response()
        }
        Err(m) => bad(m),
    }
}

#[derive(Deserialize)]
struct FaultReq {
    kind: String,
    #[serde(default = "one")]
    count: u32,
    retry_after: Option<u64>,
}

fn one() -> u32 {
    1
}

async fn faults(State(sim): State<Arc<Sim>>, Json(f): Json<FaultReq>) -> Response {
    match Fault::parse(&f.kind, f.retry_after) {
        Ok(fault) => {
            sim.inject(fault, f.count);
            Json(json!({"ok": true, "pending": lock(&sim.faults).pending()})).into_response()
        }
        Err(m) => bad(m),
    }
}

async fn clear_faults(State(sim): State<Arc<Sim>>) -> Json<Value> {
    sim.clear_faults();
    Json(json!({"ok": true}))
}

async fn ban(State(sim): State<Arc<Sim>>, Query(q): Query<HashMap<String, String>>) -> Response {
    match int_param(&q, "secs") {
        Ok(s) => {
            sim.ban_for(Duration::from_secs(s.max(0) as u64));
            Json(json!({"ok": true, "secs": s.max(0)})).into_response()
        }
        Err(m) => bad(m),
    }
}

/// Knobs to change; an absent field is left as it is.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SettingsReq {
    ims_mode: Option<ImsMode>,
    tie_order: Option<TieOrder>,
    visibility_delay_secs: Option<i64>,
    latency_ms: Option<u64>,
    bounds: Option<Bounds>,
    /// Replaces the whole set (`[]` = nothing ignored).
    ignored: Option<Vec<IgnoredParam>>,
    default_order: Option<DefaultOrder>,
    race_rate: Option<f64>,
    /// 0 removes the cap.
    max_page_size: Option<usize>,
}

fn settings_json(sim: &Sim) -> Value {
    json!({
        "ims_mode": sim.ims_mode(),
        "tie_order": sim.tie_order(),
        "visibility_delay_secs": sim.visibility_delay(),
        "latency_ms": sim.latency().as_millis() as u64,
        "bounds": sim.bounds(),
        "ignored": sim.ignored(),
        "default_order": sim.default_order(),
        "race_rate": sim.race_rate(),
        "max_page_size": sim.max_page_size(),
    })
}

async fn settings(State(sim): State<Arc<Sim>>, Json(s): Json<SettingsReq>) -> Json<Value> {
    if let Some(m) = s.ims_mode {
        sim.set_ims_mode(m);
    }
    if let Some(t) = s.tie_order {
        sim.set_tie_order(t);
    }
    if let Some(d) = s.visibility_delay_secs {
        sim.set_visibility_delay(d);
    }
    if let Some(ms) = s.latency_ms {
        sim.set_latency(Duration::from_millis(ms));
    }
    if let Some(b) = s.bounds {
        sim.set_bounds(b);
    }
    if let Some(i) = s.ignored {
        sim.set_ignored(i);
    }
    if let Some(o) = s.default_order {
        sim.set_default_order(o);
    }
    if let Some(r) = s.race_rate {
        sim.set_race_rate(r);
    }
    if let Some(n) = s.max_page_size {
        sim.set_max_page_size(Some(n));
    }
    Json(settings_json(&sim))
}

#[derive(Deserialize)]
struct RaceReq {
    #[serde(default = "one")]
    count: u32,
    position: Option<usize>,
}

async fn race(State(sim): State<Arc<Sim>>, Json(r): Json<RaceReq>) -> Json<Value> {
    sim.queue_races(r.count, r.position);
    Json(json!({"ok": true, "pending": sim.races_pending()}))
}

#[derive(Deserialize)]
struct MutateReq {
    op: String,
    entity: String,
    #[serde(default)]
    n: usize,
    #[serde(default)]
    ids: Vec<i64>,
}

async fn mutate(State(sim): State<Arc<Sim>>, Json(m): Json<MutateReq>) -> Response {
    let e = match m.entity.parse::<Entity>() {
        Ok(e) => e,
        Err(m) => return bad(m),
    };
    let ids = match m.op.as_str() {
        "create" => sim.create(e, m.n),
        "edit" => {
            sim.edit(e, &m.ids);
            m.ids
        }
        "bulk_edit" => sim.bulk_edit(e, m.n),
        "delete" => {
            sim.delete(e, &m.ids);
            m.ids
        }
        other => {
            return bad(format!(
                "unknown op {other:?}: use create, edit, bulk_edit or delete"
            ))
        }
    };
    Json(json!({"ids": ids, "now": sim.now()})).into_response()
}

async fn mutator_start(
    State(sim): State<Arc<Sim>>,
    body: Option<Json<MutatorConfig>>,
) -> Json<Value> {
    let cfg = body.map(|Json(c)| c).unwrap_or_default();
    let mut slot = sim.control_mutator.lock().await;
    let previous = match slot.take() {
        Some(h) => Some(h.stop().await),
        None => None,
    };
    *slot = Some(sim.start_mutator(cfg.clone()));
    Json(json!({"started": cfg, "previous": previous}))
}

async fn mutator_stop(State(sim): State<Arc<Sim>>) -> Json<Value> {
    let handle = sim.control_mutator.lock().await.take();
    match handle {
        Some(h) => Json(json!({"stopped": true, "stats": h.stop().await})),
        None => Json(json!({"stopped": false})),
    }
}
