//! The schema teaches itself (`\d+`), and the scheduler never runs a stream twice at once.

use std::time::Duration;

use kommo_sim::SimConfig;
use kommo_sync::app::App;
use kommo_sync::config::Settings;
use tokio_util::sync::CancellationToken;

use crate::helpers::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_table_and_column_has_a_comment() {
    let t = spawn(small_account(), &[]).await;
    let uncommented: Vec<(String, String)> = sqlx::query_as(
        "SELECT c.table_name::text, c.column_name::text FROM information_schema.columns c \
         JOIN information_schema.tables t USING (table_schema, table_name) \
         WHERE c.table_schema = 'kommo' AND t.table_type = 'BASE TABLE' AND c.table_name NOT LIKE '\\_sqlx%' \
           AND col_description(format('%I.%I', c.table_schema, c.table_name)::regclass, c.ordinal_position) IS NULL",
    )
    .fetch_all(&t.pool)
    .await
    .unwrap();
    assert!(
        uncommented.is_empty(),
        "columns without COMMENT: {uncommented:?}"
    );
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE n.nspname = 'kommo' AND c.relkind = 'r' AND c.relname NOT LIKE '\\_sqlx%' \
           AND obj_description(c.oid, 'pg_class') IS NULL",
    )
    .fetch_all(&t.pool)
    .await
    .unwrap();
    assert!(tables.is_empty(), "tables without COMMENT: {tables:?}");
}

/// Ticks every second against a server slow enough that a run takes longer: the runs of
/// one stream never overlap (late ticks are skipped), and shutdown ends the daemon.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_never_runs_twice_at_once() {
    let t = spawn(
        SimConfig {
            latency: Duration::from_millis(700),
            ..small_account()
        },
        &[],
    )
    .await;
    let mut env = t.env.clone();
    for s in ["LEADS", "CONTACTS", "COMPANIES", "TASKS"] {
        env.push((
            format!("KOMMO_SYNC__STREAMS__{s}__SCHEDULE"),
            "* * * * * *".into(),
        ));
    }
    let settings = Settings::load_from(None, env).unwrap();
    let cancel = CancellationToken::new();
    let app = App::build(settings, cancel.clone()).await.unwrap();
    let daemon = tokio::spawn(app.run_until_stopped());
    tokio::time::sleep(Duration::from_secs(6)).await;
    cancel.cancel();
    tokio::time::timeout(Duration::from_secs(10), daemon)
        .await
        .expect("stops in time")
        .unwrap()
        .unwrap();

    let runs: Vec<(
        String,
        chrono::DateTime<chrono::Utc>,
        Option<chrono::DateTime<chrono::Utc>>,
    )> = sqlx::query_as(
        "SELECT stream, started_at, finished_at FROM sync_runs ORDER BY stream, started_at",
    )
    .fetch_all(&t.pool)
    .await
    .unwrap();
    // The first runs take several seconds (700 ms per request); ticks meanwhile are skipped,
    // and later ticks start new runs.
    assert!(runs.len() > 4, "later ticks ran again: {runs:?}");
    for pair in runs.windows(2) {
        let ((s1, _, end1), (s2, start2, _)) = (&pair[0], &pair[1]);
        if s1 == s2 {
            let end1 = end1.expect("every run finished or was recorded as cancelled");
            assert!(
                *start2 >= end1,
                "{s1}: a run started at {start2} before the previous ended at {end1}"
            );
        }
    }
    t.assert_polite();
}
