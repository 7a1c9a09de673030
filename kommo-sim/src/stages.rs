//! Leads moving through pipelines: direct moves for tests and the mutator, and the list of
//! every move the log holds (edits move leads too), which tests compare a client's stage
//! history with.

use serde_json::json;

use crate::content;
use crate::entity::Entity;
use crate::events::StageMove;
use crate::sim::{lock, Sim};

impl Sim {
    /// Moves a live lead to `status_id` of `pipeline_id` (both in the reference data) at now,
    /// with a `lead_status_changed` event; closing stages set `closed_at`. False if the lead is
    /// not live, the stage unknown, or the lead already there.
    pub fn move_lead(&self, id: i64, pipeline_id: i64, status_id: i64) -> bool {
        let r = self.reference();
        let known = r
            .pipeline(pipeline_id)
            .is_some_and(|p| p.statuses.iter().any(|s| s.id == status_id));
        if !known {
            return false;
        }
        let now = self.now();
        let delay = self.visibility_delay();
        let mut guard = lock(&self.data);
        let d = &mut *guard;
        let Some(cur) = d.store.newest(Entity::Leads, id) else {
            return false;
        };
        let mut v = cur.value();
        let Some(change) = content::set_stage(&mut v, pipeline_id, status_id, now) else {
            return false;
        };
        let by = d.someone(&r);
        v["updated_at"] = json!(now);
        v["updated_by"] = json!(by);
        d.put_value(Entity::Leads, v, now, delay, false);
        d.events.push(
            &mut d.rng,
            change.kind,
            Entity::Leads,
            id,
            by,
            now,
            change.before,
            change.after,
        );
        true
    }

    /// Every stage move in the log (direct moves and edits), in the order they happened.
    pub fn stage_moves(&self) -> Vec<StageMove> {
        lock(&self.data).events.stage_moves()
    }

    /// (pipeline id, status id) of a live lead's newest version.
    pub fn stage_of(&self, lead_id: i64) -> Option<(i64, i64)> {
        let d = lock(&self.data);
        let v = d.store.newest(Entity::Leads, lead_id)?.value();
        Some((v["pipeline_id"].as_i64()?, v["status_id"].as_i64()?))
    }
}
