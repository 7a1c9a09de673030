//! Deletions, restores and stage moves, which lists never show: the event log tells them,
//! and the mirror marks rows (never drops them) and keeps every lead's stage history.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use kommo_sim::{Entity, MutatorConfig};

use crate::helpers::*;

/// `deleted_at IS NOT NULL` of each stored row.
async fn deleted(t: &TestApp, e: Entity) -> BTreeMap<i64, bool> {
    sqlx::query_as::<_, (i64, bool)>(&format!(
        "SELECT id, deleted_at IS NOT NULL FROM {}",
        e.as_str()
    ))
    .fetch_all(&t.pool)
    .await
    .unwrap()
    .into_iter()
    .collect()
}

/// Every entity the simulator deleted is marked, every live one is not.
async fn assert_deletions_marked(t: &TestApp, entities: &[Entity]) {
    let sim = t.sim.sim();
    for &e in entities {
        let marks = deleted(t, e).await;
        let gone: BTreeSet<i64> = sim
            .deleted_ids(e)
            .into_iter()
            .chain(sim.merged_ids(e))
            .collect();
        let live: BTreeSet<i64> = sim
            .dump(e)
            .iter()
            .map(|v| v["id"].as_i64().unwrap())
            .collect();
        let unmarked: Vec<i64> = gone
            .iter()
            .filter(|id| marks.get(id) == Some(&false))
            .copied()
            .collect();
        let wrongly: Vec<i64> = live
            .iter()
            .filter(|id| marks.get(id) == Some(&true))
            .copied()
            .collect();
        assert!(
            unmarked.is_empty() && wrongly.is_empty(),
            "{e}: deleted but not marked {unmarked:?}; live but marked {wrongly:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_entity_is_marked_kept_and_a_restored_one_comes_back() {
    let t = spawn(small_account(), &[]).await;
    t.sync().await;
    let sim = t.sim.sim();
    let leads: Vec<i64> = sim
        .dump(Entity::Leads)
        .iter()
        .take(3)
        .map(|v| v["id"].as_i64().unwrap())
        .collect();
    sim.delete(Entity::Leads, &leads);
    // One created and deleted between two runs: never listed, still known as deleted.
    let unseen = sim.create(Entity::Contacts, 1);
    sim.delete(Entity::Contacts, &unseen);
    let task = sim.dump(Entity::Tasks)[0]["id"].as_i64().unwrap();
    sim.delete(Entity::Tasks, &[task]);
    t.let_lag_pass();
    t.sync().await;
    let marks = deleted(&t, Entity::Leads).await;
    assert!(leads.iter().all(|id| marks[id]), "{marks:?}");
    assert_eq!(
        marks.values().filter(|d| **d).count(),
        3,
        "only the deleted leads are marked"
    );
    assert!(deleted(&t, Entity::Tasks).await[&task]);
    let tombstone: (bool, serde_json::Value) =
        sqlx::query_as("SELECT deleted_at IS NOT NULL, raw FROM contacts WHERE id = $1")
            .bind(unseen[0])
            .fetch_one(&t.pool)
            .await
            .unwrap();
    assert_eq!(tombstone, (true, serde_json::Value::Null));

    sim.advance_clock(3);
    assert_eq!(sim.restore(Entity::Leads, &leads[..1]), leads[..1].to_vec());
    t.let_lag_pass();
    t.sync().await;
    let marks = deleted(&t, Entity::Leads).await;
    assert!(!marks[&leads[0]], "restored");
    assert!(marks[&leads[1]] && marks[&leads[2]], "still deleted");
    assert_deletions_marked(&t, &ENTITIES).await;
    t.assert_mirrors_simulator().await;
}

/// Whatever order events come in, and however often: a late deletion does not hide a newer
/// version, a replayed deletion does not undo a restore.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_replayed_from_the_start_change_nothing() {
    let t = spawn(small_account(), &[]).await;
    let sim = t.sim.sim();
    t.sync().await;
    let ids: Vec<i64> = sim
        .dump(Entity::Companies)
        .iter()
        .take(4)
        .map(|v| v["id"].as_i64().unwrap())
        .collect();
    sim.delete(Entity::Companies, &ids);
    sim.advance_clock(2);
    sim.restore(Entity::Companies, &ids[..2]);
    t.let_lag_pass();
    t.sync().await;
    let before = deleted(&t, Entity::Companies).await;
    // The whole log again (a full run of the events stream), and every stream once more.
    let streams = vec!["events".to_string()];
    t.app.sync_once(&streams, true).await.unwrap();
    t.let_lag_pass();
    t.sync().await;
    assert_eq!(deleted(&t, Entity::Companies).await, before);
    assert!(!before[&ids[0]] && !before[&ids[1]] && before[&ids[2]] && before[&ids[3]]);
    assert_deletions_marked(&t, &ENTITIES).await;
}

/// The acceptance run: the mutator deletes, restores, merges, moves leads between stages and
/// links contacts while syncs run; after it stops and one more run, deletions are marked,
/// restores are not, and the stage history equals the simulator's log of stage moves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_churn_deletions_restores_and_stage_moves_end_exact() {
    let t = spawn(small_account(), &[]).await;
    let sim = t.sim.sim();
    let mutator = sim.start_mutator(MutatorConfig {
        ops_per_sec: 40,
        delete_ratio: 0.15,
        restore_ratio: 0.1,
        merge_ratio: 0.05,
        move_ratio: 0.2,
        link_ratio: 0.05,
        unlink_ratio: 0.05,
        create_ratio: 0.15,
        seed: 21,
        ..MutatorConfig::default()
    });
    t.app.sync_once(&[], true).await.unwrap();
    for _ in 0..2 {
        tokio::time::sleep(Duration::from_millis(400)).await;
        t.app.sync_once(&[], false).await.unwrap();
    }
    let stats = mutator.stop().await;
    assert!(
        stats.deletes > 0 && stats.restores > 0 && stats.moves > 0 && stats.merges > 0,
        "{stats:?}"
    );
    t.let_lag_pass();
    t.sync().await;
    assert_deletions_marked(&t, &ENTITIES).await;
    // Every link between live entities, as the simulator shows them.
    let want: BTreeSet<(i64, i64)> = sim
        .links()
        .lead_contacts
        .iter()
        .map(|l| (l.lead_id, l.contact_id))
        .collect();
    let got: BTreeSet<(i64, i64)> = sqlx::query_as::<_, (i64, i64)>(
        "SELECT x.lead_id, x.contact_id FROM lead_contacts x \
         JOIN leads l ON l.account_id = x.account_id AND l.id = x.lead_id AND l.deleted_at IS NULL \
         JOIN contacts c ON c.account_id = x.account_id AND c.id = x.contact_id AND c.deleted_at IS NULL",
    )
    .fetch_all(&t.pool)
    .await
    .unwrap()
    .into_iter()
    .collect();
    let extra: Vec<_> = got.difference(&want).collect();
    let missing: Vec<_> = want.difference(&got).collect();
    assert!(
        extra.is_empty() && missing.is_empty(),
        "lead contacts: extra {extra:?}, missing {missing:?}"
    );
    t.assert_mirrors_simulator().await;

    // The view holds the history of leads that are not deleted.
    let live: BTreeSet<i64> = sim
        .dump(Entity::Leads)
        .iter()
        .map(|v| v["id"].as_i64().unwrap())
        .collect();
    let want: BTreeSet<(String, i64, i64, i64, i64, i64)> = sim
        .stage_moves()
        .into_iter()
        .filter(|m| live.contains(&m.lead_id))
        .map(|m| {
            (
                m.event_id,
                m.lead_id,
                m.from_pipeline,
                m.from_status,
                m.to_pipeline,
                m.to_status,
            )
        })
        .collect();
    assert!(!want.is_empty());
    let got: BTreeSet<(String, i64, i64, i64, i64, i64)> = sqlx::query_as(
        "SELECT event_id, lead_id, from_pipeline_id, from_status_id, to_pipeline_id, to_status_id \
         FROM lead_status_changes WHERE event_id IS NOT NULL",
    )
    .fetch_all(&t.pool)
    .await
    .unwrap()
    .into_iter()
    .collect();
    assert_eq!(got, want);
    // Every stored lead that is not deleted has a first stage.
    let without: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM leads l WHERE l.raw <> 'null'::jsonb AND l.deleted_at IS NULL AND NOT EXISTS \
         (SELECT 1 FROM lead_status_changes s WHERE s.lead_id = l.id AND s.event_id IS NULL \
          AND s.to_status_id IS NOT NULL)",
    )
    .fetch_one(&t.pool)
    .await
    .unwrap();
    assert_eq!(without, 0);
    t.assert_polite();
}

/// A merge names only the entity merged away, and a link need not give the lead a new
/// version: both are read again by id, so the merged-away contact is marked deleted and
/// every lead's contacts follow, whether or not linking bumps `updated_at`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn merges_and_links_without_a_new_version_are_followed_through_the_log() {
    let t = spawn(small_account(), &[]).await;
    let sim = t.sim.sim();
    assert!(
        !sim.link_bumps_updated_at(),
        "the case where only the log tells"
    );
    t.sync().await;
    let links = sim.links();
    let with_contacts: BTreeSet<i64> = links.lead_contacts.iter().map(|l| l.contact_id).collect();
    let contacts: Vec<i64> = sim
        .dump(Entity::Contacts)
        .iter()
        .map(|v| v["id"].as_i64().unwrap())
        .collect();
    let from = *contacts.iter().find(|c| with_contacts.contains(c)).unwrap();
    let into = *contacts.iter().rev().find(|c| **c != from).unwrap();
    assert!(sim.merge(Entity::Contacts, from, into));
    let lead = links
        .lead_contacts
        .iter()
        .find(|l| l.contact_id != from)
        .unwrap()
        .lead_id;
    let newcomer = *contacts
        .iter()
        .find(|c| {
            **c != from
                && !links
                    .lead_contacts
                    .iter()
                    .any(|l| l.lead_id == lead && l.contact_id == **c)
        })
        .unwrap();
    assert!(sim.link(lead, newcomer));
    t.let_lag_pass();
    t.sync().await;

    assert!(deleted(&t, Entity::Contacts).await[&from], "merged away");
    let want: BTreeSet<(i64, i64)> = sim
        .links()
        .lead_contacts
        .iter()
        .map(|l| (l.lead_id, l.contact_id))
        .collect();
    assert!(want.contains(&(lead, newcomer)));
    let got: BTreeSet<(i64, i64)> = sqlx::query_as::<_, (i64, i64)>(
        "SELECT x.lead_id, x.contact_id FROM lead_contacts x \
         JOIN leads l ON l.account_id = x.account_id AND l.id = x.lead_id AND l.deleted_at IS NULL \
         JOIN contacts c ON c.account_id = x.account_id AND c.id = x.contact_id AND c.deleted_at IS NULL",
    )
    .fetch_all(&t.pool)
    .await
    .unwrap()
    .into_iter()
    .collect();
    assert_eq!(got, want);
    t.assert_mirrors_simulator().await;
}
