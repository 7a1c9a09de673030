//! Guarantee 6: never over the limit; 429 means wait and slow down; 403 means stop all
//! traffic for a growing back-off and say so.

use std::time::{Duration, Instant};

use kommo_sim::{Fault, SimConfig};

use crate::helpers::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_with_retry_after_makes_every_worker_wait_then_succeed() {
    let t = spawn_entities(small_account(), &[]).await;
    let sim = t.sim.sim();
    sim.inject(Fault::Status429WithHeader(2), 1);
    let start = Instant::now();
    t.sync().await;
    assert!(
        start.elapsed() >= Duration::from_secs(2),
        "waited as told: {:?}",
        start.elapsed()
    );
    let c = sim.counters();
    assert_eq!(c.by_status.get(&429), Some(&1), "{c:?}");
    assert_eq!(c.forbidden, 0);
    assert!(c.max_in_sliding_second <= 7);
    t.let_lag_pass();
    t.sync().await;
    t.assert_mirrors_simulator().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_html_429_without_retry_after_backs_off_and_succeeds() {
    let t = spawn_entities(small_account(), &[]).await;
    let sim = t.sim.sim();
    sim.inject(Fault::Html429, 2);
    t.sync().await;
    let c = sim.counters();
    assert_eq!(c.by_status.get(&429), Some(&2), "{c:?}");
    assert_eq!(c.forbidden, 0);
}

/// A server stricter than the configured rate (6 instead of 7 per second): the daemon takes
/// the first 429s, slows down, and is never banned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stricter_server_throttles_once_and_never_bans() {
    let t = spawn_entities(
        SimConfig {
            max_rps: 5,
            leads: 2000,
            contacts: 1500,
            ..small_account()
        },
        &[],
    )
    .await;
    t.sync().await;
    let c = t.sim.sim().counters();
    assert_eq!(c.forbidden, 0, "{c:?}");
    assert!(c.too_many_requests >= 1 && c.too_many_requests < 5, "{c:?}");
    t.let_lag_pass();
    t.sync().await;
    t.assert_mirrors_simulator().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_403_stops_all_traffic_for_the_back_off_and_is_reported() {
    let t = spawn_entities(
        small_account(),
        &[
            ("KOMMO_SYNC__KOMMO__BAN_BACKOFF_SECS", "2"),
            ("KOMMO_SYNC__KOMMO__BAN_BACKOFF_MAX_SECS", "8"),
        ],
    )
    .await;
    let sim = t.sim.sim();
    sim.ban_for(Duration::from_millis(1500));
    let err = t.app.sync_once(&[], false).await.unwrap_err().to_string();
    assert!(err.contains("403"), "{err}");
    let after_ban = sim.counters();
    assert!(
        after_ban.requests <= 2,
        "stopped at the first 403: {after_ban:?}"
    );

    // During the back-off nothing at all is sent.
    let err = t.app.sync_once(&[], false).await.unwrap_err().to_string();
    assert!(err.contains("blocked"), "{err}");
    assert_eq!(sim.counters().requests, after_ban.requests);

    let status = t.app.status().await.unwrap();
    assert_eq!(status.len(), ENTITIES.len());
    for s in &status {
        assert_eq!(s.state, "banned", "{s:?}");
        assert!(
            s.blocked_until.is_some_and(|u| u > chrono::Utc::now()),
            "{s:?}"
        );
        assert!(
            s.last_error.as_deref().unwrap_or("").contains("403"),
            "{s:?}"
        );
    }

    tokio::time::sleep(Duration::from_millis(2100)).await;
    t.sync().await;
    let status = t.app.status().await.unwrap();
    assert!(
        status
            .iter()
            .all(|s| s.state == "ok" && s.last_error.is_none()),
        "{status:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_errors_and_a_gateway_timeout_are_retried_within_bounds() {
    let t = spawn_entities(small_account(), &[]).await;
    let sim = t.sim.sim();
    sim.inject(Fault::Status(500), 2);
    sim.inject(Fault::Status(504), 1);
    sim.inject(Fault::Status(502), 1);
    t.sync().await;
    let c = sim.counters();
    assert_eq!(c.by_status.get(&500), Some(&2));
    assert_eq!(c.by_status.get(&504), Some(&1));
    t.let_lag_pass();
    t.sync().await;
    t.assert_mirrors_simulator().await;
    t.assert_polite();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_that_hangs_times_out_and_is_retried() {
    let t = spawn_entities(
        small_account(),
        &[("KOMMO_SYNC__KOMMO__REQUEST_TIMEOUT_SECS", "1")],
    )
    .await;
    t.sim.sim().inject(Fault::Timeout, 1);
    t.app
        .sync_once(&["leads".to_string()], false)
        .await
        .unwrap();
    t.let_lag_pass();
    t.app
        .sync_once(&["leads".to_string()], false)
        .await
        .unwrap();
    let rows = t.rows(kommo_sim::Entity::Leads).await;
    assert_eq!(rows.len(), t.sim.sim().dump(kommo_sim::Entity::Leads).len());
}
