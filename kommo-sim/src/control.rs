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
use crate::embeds::With;
use crate::entity::Entity;
use crate::faults::{Fault, FaultMix};
use crate::mutator::MutatorConfig;
use crate::reference::FieldType;
use crate::sim::{lock, Sim};

/// Routes under `/_sim`.
pub fn router() -> Router<Arc<Sim>> {
    Router::new()
        .route("/_sim/health", get(health))
        .route("/_sim/counters", get(counters))
        .route("/_sim/counters/reset", post(reset_counters))
        .route("/_sim/dump/:entity", get(dump))
        .route("/_sim/truth", get(truth))
        .route("/_sim/reference", post(reference))
        .route("/_sim/clock/advance", post(advance))
        .route("/_sim/faults", post(faults).delete(clear_faults))
        .route("/_sim/faults/mix", post(fault_mix).delete(clear_fault_mix))
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
        "restore_bumps_updated_at": sim.restore_bumps_updated_at(),
        "link_bumps_updated_at": sim.link_bumps_updated_at(),
        "ban_remaining_secs": sim.ban_remaining().map(|d| d.as_secs_f64()),
        "faults_pending": lock(&sim.faults).pending(),
        "fault_mix": sim.fault_mix().as_ref().map(mix_json),
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

/// `GET /_sim/dump/{entity}[?with=contacts,leads]`: items as a list with that `with` shows them.
async fn dump(
    State(sim): State<Arc<Sim>>,
    Path(e): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let with = q.get("with").map_or(With::NONE, |w| With::from_list(w));
    match e.parse::<Entity>() {
        Ok(e) => Json(json!({
            "entity": e.as_str(),
            "items": sim.dump_with(e, with),
            "deleted_ids": sim.deleted_ids(e),
            "merged_ids": sim.merged_ids(e),
            "restored_ids": sim.restored_ids(e),
        }))
        .into_response(),
        Err(m) => bad(m),
    }
}

/// `GET /_sim/truth`: what a client should have learned beyond the entities themselves.
async fn truth(State(sim): State<Arc<Sim>>) -> Json<Value> {
    let per_kind = |f: &dyn Fn(Entity) -> Value| -> Value {
        Entity::ALL
            .iter()
            .map(|e| (e.as_str().to_string(), f(*e)))
            .collect::<serde_json::Map<_, _>>()
            .into()
    };
    Json(json!({
        "stage_moves": sim.stage_moves(),
        "links": sim.links(),
        "deleted_ids": per_kind(&|e| json!(sim.deleted_ids(e))),
        "merges": per_kind(&|e| json!(sim.merges(e))),
        "restored_ids": per_kind(&|e| json!(sim.restored_ids(e))),
    }))
}

/// A change to the reference data, for refresh tests run out of process.
#[derive(Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
enum ReferenceReq {
    RemoveUser {
        id: i64,
    },
    RenamePipeline {
        id: i64,
        name: String,
    },
    RemoveStatus {
        pipeline_id: i64,
        status_id: i64,
    },
    AddCustomField {
        entity: String,
        name: String,
        r#type: String,
    },
}

async fn reference(State(sim): State<Arc<Sim>>, Json(r): Json<ReferenceReq>) -> Response {
    let done = match r {
        ReferenceReq::RemoveUser { id } => json!(sim.remove_user(id)),
        ReferenceReq::RenamePipeline { id, name } => json!(sim.rename_pipeline(id, &name)),
        ReferenceReq::RemoveStatus {
            pipeline_id,
            status_id,
        } => json!(sim.remove_status(pipeline_id, status_id)),
        ReferenceReq::AddCustomField {
            entity,
            name,
            r#type,
        } => {
            let e = match entity.parse::<Entity>() {
                Ok(e) => e,
                Err(m) => return bad(m),
            };
            let t = match r#type.parse::<FieldType>() {
                Ok(t) => t,
                Err(m) => return bad(m),
            };
            match sim.add_custom_field(e, &name, t) {
                Some(id) => return Json(json!({"ok": true, "id": id})).into_response(),
                None => return bad("tasks have no custom fields"),
            }
        }
    };
    Json(json!({"ok": done})).into_response()
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

/// Clears the queue and the mix.
async fn clear_faults(State(sim): State<Arc<Sim>>) -> Json<Value> {
    sim.clear_faults();
    Json(json!({"ok": true}))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FaultMixReq {
    rate: f64,
    kinds: Vec<String>,
    #[serde(default)]
    seed: u64,
    /// For the kinds that take it, as in `POST /_sim/faults`.
    retry_after: Option<u64>,
}

fn mix_json(m: &FaultMix) -> Value {
    let kinds: Vec<String> = m.kinds.iter().map(Fault::kind).collect();
    json!({"rate": m.rate, "kinds": kinds, "seed": m.seed})
}

/// `POST /_sim/faults/mix`: replaces the mix (its draws restart from the seed).
async fn fault_mix(State(sim): State<Arc<Sim>>, Json(m): Json<FaultMixReq>) -> Response {
    let mix = match FaultMix::parse(m.rate, &m.kinds, m.seed, m.retry_after) {
        Ok(mix) => mix,
        Err(e) => return bad(e.to_string()),
    };
    let shown = mix_json(&mix);
    match sim.set_fault_mix(Some(mix)) {
        Ok(()) => Json(json!({"ok": true, "mix": shown})).into_response(),
        Err(e) => bad(e.to_string()),
    }
}

/// `DELETE /_sim/faults/mix`: stops the mix, leaving queued faults.
async fn clear_fault_mix(State(sim): State<Arc<Sim>>) -> Json<Value> {
    let _ = sim.set_fault_mix(None);
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
    restore_bumps_updated_at: Option<bool>,
    link_bumps_updated_at: Option<bool>,
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
        "restore_bumps_updated_at": sim.restore_bumps_updated_at(),
        "link_bumps_updated_at": sim.link_bumps_updated_at(),
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
    if let Some(b) = s.restore_bumps_updated_at {
        sim.set_restore_bumps_updated_at(b);
    }
    if let Some(b) = s.link_bumps_updated_at {
        sim.set_link_bumps_updated_at(b);
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

/// A direct change. `entity` is needed by all but link / unlink (always a lead's contact).
#[derive(Deserialize)]
struct MutateReq {
    op: String,
    #[serde(default)]
    entity: String,
    #[serde(default)]
    n: usize,
    #[serde(default)]
    ids: Vec<i64>,
    /// merge: the entity merged away and the one kept.
    from: Option<i64>,
    into: Option<i64>,
    /// move: where `ids` (leads) go.
    pipeline_id: Option<i64>,
    status_id: Option<i64>,
    /// link / unlink.
    lead_id: Option<i64>,
    contact_id: Option<i64>,
}

fn need(v: Option<i64>, name: &str) -> Result<i64, String> {
    v.ok_or_else(|| format!("{name} is required"))
}

/// Ops that need no entity kind.
fn mutate_links(sim: &Sim, m: &MutateReq) -> Result<Value, String> {
    let lead = need(m.lead_id, "lead_id")?;
    let contact = need(m.contact_id, "contact_id")?;
    let done = if m.op == "link" {
        sim.link(lead, contact)
    } else {
        sim.unlink(lead, contact)
    };
    Ok(json!({"ok": done, "now": sim.now()}))
}

async fn mutate(State(sim): State<Arc<Sim>>, Json(m): Json<MutateReq>) -> Response {
    if m.op == "link" || m.op == "unlink" {
        return match mutate_links(&sim, &m) {
            Ok(v) => Json(v).into_response(),
            Err(m) => bad(m),
        };
    }
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
        "restore" => sim.restore(e, &m.ids),
        "merge" => {
            let (from, into) = match (need(m.from, "from"), need(m.into, "into")) {
                (Ok(f), Ok(i)) => (f, i),
                (Err(m), _) | (_, Err(m)) => return bad(m),
            };
            if sim.merge(e, from, into) {
                vec![from]
            } else {
                vec![]
            }
        }
        "move" => {
            let (p, st) = match (
                need(m.pipeline_id, "pipeline_id"),
                need(m.status_id, "status_id"),
            ) {
                (Ok(p), Ok(s)) => (p, s),
                (Err(m), _) | (_, Err(m)) => return bad(m),
            };
            m.ids
                .iter()
                .copied()
                .filter(|&id| e == Entity::Leads && sim.move_lead(id, p, st))
                .collect()
        }
        other => {
            return bad(format!(
                "unknown op {other:?}: use create, edit, bulk_edit, delete, restore, merge, move, \
                 link or unlink"
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
