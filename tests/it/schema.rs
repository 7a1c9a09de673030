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
         WHERE n.nspname = 'kommo' AND c.relkind IN ('r', 'v') AND c.relname NOT LIKE '\\_sqlx%' \
           AND obj_description(c.oid, 'pg_class') IS NULL",
    )
    .fetch_all(&t.pool)
    .await
    .unwrap();
    assert!(
        tables.is_empty(),
        "tables and views without COMMENT: {tables:?}"
    );
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

/// Analysts get a role that reads the mirror and nothing else: not the tokens, no writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_analysts_role_reads_the_mirror_and_not_the_tokens() {
    let t = spawn(small_account(), &[]).await;
    t.sync().await;
    let suffix = rand::random::<u32>();
    let role = format!("kommo_reader_{suffix}");
    let person = format!("analyst_{suffix}");
    t.app.store.grant_read(&role).await.unwrap();
    // Twice is fine (the command may be run again after an upgrade).
    t.app.store.grant_read(&role).await.unwrap();
    sqlx::query(&format!("CREATE ROLE {person} LOGIN IN ROLE {role}"))
        .execute(&t.pool)
        .await
        .unwrap();
    let mut url = url::Url::parse(&t.db.url).unwrap();
    url.set_username(&person).unwrap();
    url.set_password(None).unwrap();
    let reader = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(&format!("{url}?options=-c%20search_path%3Dkommo"))
        .await
        .unwrap();
    let leads: i64 = sqlx::query_scalar("SELECT count(*) FROM leads_v")
        .fetch_one(&reader)
        .await
        .unwrap();
    assert!(leads > 0);
    let tokens = sqlx::query("SELECT * FROM kommo_private.oauth_tokens")
        .execute(&reader)
        .await
        .unwrap_err()
        .to_string();
    assert!(tokens.contains("permission denied"), "{tokens}");
    let write = sqlx::query("DELETE FROM leads")
        .execute(&reader)
        .await
        .unwrap_err()
        .to_string();
    assert!(write.contains("permission denied"), "{write}");
    reader.close().await;
    // Roles belong to the cluster: take them away again.
    for sql in [
        format!("DROP OWNED BY {role}, {person}"),
        format!("DROP ROLE {person}"),
        format!("DROP ROLE {role}"),
    ] {
        sqlx::query(&sql).execute(&t.pool).await.unwrap();
    }
}
