//! Guarantee 3: a run killed at any instant loses nothing, and the next run neither skips
//! nor rewrites rows.

use std::collections::BTreeMap;
use std::time::Duration;

use kommo_sim::SimConfig;
use kommo_sync::app::App;
use kommo_sync::config::Settings;
use rand::{Rng, SeedableRng};
use tokio_util::sync::CancellationToken;

use crate::helpers::*;

/// Asserts that every row seen in `earlier` still has the same version (xmin) in `now`.
fn assert_not_rewritten(earlier: &BTreeMap<i64, i64>, now: &BTreeMap<i64, i64>, what: &str) {
    let rewritten: Vec<i64> = earlier
        .iter()
        .filter(|(id, x)| now.get(id) != Some(x))
        .map(|(id, _)| *id)
        .collect();
    assert!(
        rewritten.is_empty(),
        "{what}: rows written twice: {:?}",
        &rewritten[..rewritten.len().min(10)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sync_dropped_at_random_instants_resumes_exactly_without_rewriting_rows() {
    let t = spawn_entities(
        SimConfig {
            leads: 1500,
            contacts: 1200,
            companies: 600,
            tasks: 1200,
            ..small_account()
        },
        &[],
    )
    .await;
    let settings = Settings::load_from(None, t.env.clone()).unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut first_seen: Vec<BTreeMap<i64, i64>> = vec![BTreeMap::new(); 4];
    let sim = t.sim.sim();
    sim.reset_counters();
    let kills = 6;
    for _ in 0..kills {
        let app = App::build(settings.clone(), CancellationToken::new())
            .await
            .unwrap();
        let run = tokio::spawn(async move { app.sync_once(&[], false).await });
        // Kill at a random instant, after a few pages at least.
        tokio::time::sleep(Duration::from_millis(rng.gen_range(400..1800))).await;
        // Dropping the future mid-flight is what a crash does to the process's work.
        run.abort();
        let _ = run.await;
        for (i, e) in ENTITIES.iter().enumerate() {
            let now = t.versions(*e).await;
            assert_not_rewritten(&first_seen[i], &now, e.as_str());
            for (id, x) in now {
                first_seen[i].entry(id).or_insert(x);
            }
        }
    }
    let partial: usize = first_seen.iter().map(BTreeMap::len).sum();
    assert!(partial > 0, "the killed runs committed some pages");

    // The restart after the last kill is a new process too (t.app was built long before: its
    // limiter would not know the killed run's last request, as with two live processes).
    let restarted = App::build(settings.clone(), CancellationToken::new())
        .await
        .unwrap();
    restarted.sync_once(&[], false).await.unwrap();
    for (i, e) in ENTITIES.iter().enumerate() {
        assert_not_rewritten(&first_seen[i], &t.versions(*e).await, e.as_str());
    }
    t.assert_mirrors_simulator().await;
    t.assert_polite();
    // Each kill loses at most the pages in flight (one per worker, 3 workers per stream):
    // only those are asked for again.
    let repeated = sim.counters().repeated_queries;
    assert!(repeated <= kills * 4 * 3, "repeated queries: {repeated}");
}
