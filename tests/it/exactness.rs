//! Guarantee 1 (nothing missed) and 2 (always ends) while the account changes under the sync.

use std::time::Duration;

use kommo_sim::{ImsMode, MutatorConfig, SimConfig, TieOrder};

use crate::helpers::*;

/// A full sync and incremental runs while the mutator creates, edits, bulk-edits (1,000
/// entities in one second) and deletes; then one more run after it stops. Postgres must
/// then equal the simulator, whatever `If-Modified-Since` does.
async fn mirrors_exactly_while_the_account_changes(ims_mode: ImsMode) {
    let t = spawn_entities(
        SimConfig {
            ims_mode,
            tie_order: TieOrder::Shuffled,
            visibility_delay_secs: 1,
            leads: 1300,
            contacts: 1200,
            companies: 1100,
            tasks: 1300,
            ..small_account()
        },
        &[],
    )
    .await;
    let sim = t.sim.sim();
    let mutator = sim.start_mutator(MutatorConfig {
        ops_per_sec: 40,
        bulk_every: Some(Duration::from_millis(1200)),
        bulk_size: 1000,
        delete_ratio: 0.1,
        create_ratio: 0.3,
        seed: 11,
        ..MutatorConfig::default()
    });
    let full = t.app.sync_once(&[], true).await.expect("full sync");
    assert_eq!(full.len(), ENTITIES.len());
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(700)).await;
        t.sync().await;
    }
    let stats = mutator.stop().await;
    assert!(
        stats.bulk_edits >= 2,
        "the mutator made bulk edits: {stats:?}"
    );
    assert!(
        stats.creates > 0 && stats.deletes > 0 && stats.edits > 0,
        "{stats:?}"
    );

    t.let_lag_pass();
    t.sync().await;
    t.assert_mirrors_simulator().await;
    t.assert_polite();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exact_when_if_modified_since_means_greater_than() {
    mirrors_exactly_while_the_account_changes(ImsMode::Gt).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exact_when_if_modified_since_means_greater_or_equal() {
    mirrors_exactly_while_the_account_changes(ImsMode::Gte).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exact_when_if_modified_since_is_ignored() {
    mirrors_exactly_while_the_account_changes(ImsMode::Ignore).await;
}

/// Thousands of entities in one second, spread over page boundaries, with ties shuffled on
/// every request: the walk of a single second must still see each one exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bulk_edit_larger_than_several_pages_is_mirrored_once() {
    let t = spawn_entities(
        SimConfig {
            leads: 1500,
            tasks: 1500,
            ..small_account()
        },
        &[],
    )
    .await;
    t.sync().await;
    let sim = t.sim.sim();
    let leads = sim.bulk_edit(kommo_sim::Entity::Leads, 1234);
    let tasks = sim.bulk_edit(kommo_sim::Entity::Tasks, 1100);
    assert_eq!((leads.len(), tasks.len()), (1234, 1100));
    t.let_lag_pass();
    let reports = t.sync().await;
    let leads_report = reports.iter().find(|r| r.stream == "leads").unwrap();
    assert_eq!(leads_report.counts.rows_written, 1234, "{leads_report:?}");
    // The probe, then the bulk second walked by id in one pass: ceil(1234/247) = 5 pages
    // (each overlapping the one before by 3), and a request or two for the rest: 8 here.
    println!(
        "bulk edit of 1234 leads: {} requests",
        leads_report.counts.requests
    );
    assert!(leads_report.counts.requests <= 10, "{leads_report:?}");
    t.assert_mirrors_simulator().await;
    t.assert_polite();
}

/// Edits that reach the lists late (eventual consistency) are not skipped, because the
/// window never reaches closer to the server's "now" than the lag.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_visible_edits_are_not_missed() {
    let t = spawn_entities(
        SimConfig {
            visibility_delay_secs: 2,
            ..small_account()
        },
        &[("KOMMO_SYNC__SYNC__LAG_SECS", "3")],
    )
    .await;
    t.sync().await;
    let sim = t.sim.sim();
    let created = sim.create(kommo_sim::Entity::Contacts, 30);
    // Runs right after the edit: the new contacts are not visible yet, and must not be
    // jumped over.
    t.sync().await;
    sim.advance_clock(1);
    t.sync().await;
    sim.advance_clock(5);
    t.sync().await;
    let rows = t.rows(kommo_sim::Entity::Contacts).await;
    assert!(created.iter().all(|id| rows.contains_key(id)));
    t.assert_mirrors_simulator().await;
}

/// The local clock is never used: a simulator whose clock is a day ahead still syncs
/// exactly (the window comes from the server's Date).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_skewed_server_clock_changes_nothing() {
    let t = spawn_entities(
        SimConfig {
            clock_offset_secs: 86_400,
            ..small_account()
        },
        &[],
    )
    .await;
    t.sync().await;
    let sim = t.sim.sim();
    sim.edit(
        kommo_sim::Entity::Leads,
        &[sim.dump(kommo_sim::Entity::Leads)[0]["id"]
            .as_i64()
            .unwrap()],
    );
    t.let_lag_pass();
    t.sync().await;
    t.assert_mirrors_simulator().await;
}
