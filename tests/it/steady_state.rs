//! Guarantee 7: a poll that finds nothing new costs one request per stream and writes no
//! entity rows.

use kommo_sim::Entity;

use crate::helpers::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_changed_costs_one_request_per_stream_and_writes_nothing() {
    let t = spawn(small_account(), &[]).await;
    t.sync().await;
    t.let_lag_pass();
    t.sync().await;
    let mut before = Vec::new();
    for e in ENTITIES {
        before.push(t.versions(e).await);
    }
    let sim = t.sim.sim();
    sim.reset_counters();
    t.let_lag_pass();
    let reports = t.sync().await;

    let c = sim.counters();
    assert_eq!(c.requests, 4, "{c:?}");
    for e in ENTITIES {
        assert_eq!(
            c.requests_by_path.get(&format!("/api/v4/{}", e.as_str())),
            Some(&1),
            "{c:?}"
        );
    }
    assert!(
        reports
            .iter()
            .all(|r| r.counts.rows_written == 0 && r.counts.requests == 1),
        "{reports:?}"
    );
    for (i, e) in ENTITIES.iter().enumerate() {
        assert_eq!(
            t.versions(*e).await,
            before[i],
            "{} rows were rewritten",
            e.as_str()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edit_is_picked_up_by_the_next_poll_with_few_requests() {
    let t = spawn(small_account(), &[]).await;
    t.sync().await;
    let sim = t.sim.sim();
    let id = sim.dump(Entity::Companies)[5]["id"].as_i64().unwrap();
    sim.edit(Entity::Companies, &[id]);
    t.let_lag_pass();
    sim.reset_counters();
    let reports = t.sync().await;
    let companies = reports.iter().find(|r| r.stream == "companies").unwrap();
    assert_eq!(companies.counts.rows_written, 1);
    assert!(sim.counters().requests <= 5);
    t.assert_mirrors_simulator().await;
}
