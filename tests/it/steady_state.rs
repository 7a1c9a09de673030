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

    // One request per entity stream and one for the event log; reference lists were read
    // whole less than a minute ago and are not asked again.
    let c = sim.counters();
    assert_eq!(c.requests, 5, "{c:?}");
    for path in ENTITIES.iter().map(|e| e.as_str()).chain(["events"]) {
        assert_eq!(
            c.requests_by_path.get(&format!("/api/v4/{path}")),
            Some(&1),
            "{c:?}"
        );
    }
    let entity = |r: &&kommo_sync::sync::RunReport| {
        ENTITIES.iter().any(|e| e.as_str() == r.stream) || r.stream == "events"
    };
    assert!(
        reports
            .iter()
            .filter(entity)
            .all(|r| r.counts.rows_written == 0 && r.counts.requests == 1),
        "{reports:?}"
    );
    assert!(
        reports
            .iter()
            .filter(|r| !entity(r))
            .all(|r| r.counts.requests == 0),
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

/// A later process reads each reference list again: one request per page of it (the lead
/// field definitions take two pages of 50), and an unchanged list rewrites no row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unchanged_reference_list_costs_its_pages_and_writes_nothing() {
    let t = spawn(small_account(), &[]).await;
    t.sync().await;
    let tables = [
        "pipelines",
        "pipeline_statuses",
        "users",
        "custom_fields",
        "custom_field_enums",
        "tags",
    ];
    let mut before = Vec::new();
    for table in tables {
        before.push(xmins(&t, table).await);
    }
    let settings = kommo_sync::config::Settings::load_from(None, t.env.clone()).unwrap();
    let later = kommo_sync::app::App::build(settings, tokio_util::sync::CancellationToken::new())
        .await
        .unwrap();
    let sim = t.sim.sim();
    t.let_lag_pass();
    sim.reset_counters();
    let reports = later.sync_once(&[], false).await.unwrap();
    let lead_fields = sim.reference().fields[Entity::Leads.index()].len();
    for r in &reports {
        let expected = match r.stream.as_str() {
            "lead_custom_fields" => lead_fields.div_ceil(50) as u64,
            _ => 1,
        };
        assert_eq!(r.counts.requests, expected, "{r:?}");
        assert_eq!(r.counts.rows_written, 0, "{r:?}");
    }
    for (i, table) in tables.iter().enumerate() {
        assert_eq!(
            xmins(&t, table).await,
            before[i],
            "{table} rows were rewritten"
        );
    }
}

async fn xmins(t: &TestApp, table: &str) -> Vec<(String, i64)> {
    sqlx::query_as(&format!(
        "SELECT t::text, xmin::text::bigint FROM {table} t ORDER BY 1"
    ))
    .fetch_all(&t.pool)
    .await
    .unwrap()
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
    // Four entity streams, one of them two pages; the event log, which the edit wrote to:
    // its probe, the page of its closed window, and the empty page that ends it.
    let c = sim.counters();
    let path = |p: &str| {
        c.requests_by_path
            .get(&format!("/api/v4/{p}"))
            .copied()
            .unwrap_or(0)
    };
    let entities: u64 = ENTITIES.iter().map(|e| path(e.as_str())).sum();
    assert!(entities <= 5, "{c:?}");
    assert!(path("events") <= 3, "{c:?}");
    assert_eq!(c.requests, entities + path("events"), "nothing else: {c:?}");
    t.assert_mirrors_simulator().await;
}
