//! What outlives a process: a ban, the runs it left behind, the cursor's stored form, and
//! `status` of the configured account only.

use std::process::Command;
use std::time::Duration;

use kommo_sim::Entity;
use kommo_sync::app::App;
use kommo_sync::config::Settings;
use tokio_util::sync::CancellationToken;

use crate::helpers::*;

fn binary() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_kommo-sync"));
    c.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default());
    c
}

/// A 403 ban is stored; a second process started while it lasts (a cron `sync`, a daemon
/// restarted by systemd) sends nothing at all until it ends, and says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_started_during_a_stored_ban_sends_nothing() {
    let t = spawn_entities(
        small_account(),
        &[
            ("KOMMO_SYNC__KOMMO__BAN_BACKOFF_SECS", "120"),
            ("KOMMO_SYNC__KOMMO__BAN_BACKOFF_MAX_SECS", "240"),
        ],
    )
    .await;
    let sim = t.sim.sim();
    sim.ban_for(Duration::from_secs(60));
    assert!(t.app.sync_once(&[], false).await.is_err());
    let after_ban = sim.counters().requests;
    assert!(after_ban >= 1, "the ban was met");

    // A new process, as a cron `sync` or a restarted daemon would be.
    let settings = Settings::load_from(None, t.env.clone()).unwrap();
    let second = App::build(settings, CancellationToken::new())
        .await
        .unwrap();
    let err = second.sync_once(&[], false).await.unwrap_err().to_string();
    assert!(err.contains("403") && err.contains("blocked"), "{err}");
    assert_eq!(
        sim.counters().requests,
        after_ban,
        "no request during the stored ban"
    );

    // The binary too: exit 1, the reason on stderr, no request.
    let env = t.env.clone();
    let out = tokio::task::spawn_blocking(move || {
        binary()
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .arg("sync")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("blocked"), "{stderr}");
    assert_eq!(
        sim.counters().requests,
        after_ban,
        "no request from the CLI either"
    );

    let status = second.status().await.unwrap();
    assert!(status.iter().any(|s| s.state == "banned"), "{status:?}");
}

/// `kill -9` leaves a run `running`; the next process to hold the account closes it as
/// interrupted before it starts its own, and its own end as usual.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_left_running_by_a_dead_process_are_closed_as_interrupted() {
    let t = spawn_entities(small_account(), &[]).await;
    let account = t.app.settings.kommo.account_key();
    sqlx::query("INSERT INTO sync_runs (account, stream, full_sync) VALUES ($1, 'leads', true), ('other.kommo.com', 'leads', true)")
        .bind(&account)
        .execute(&t.pool)
        .await
        .unwrap();
    let settings = Settings::load_from(None, t.env.clone()).unwrap();
    let next = App::build(settings, CancellationToken::new())
        .await
        .unwrap();
    let _lease = next.take_lease().await.unwrap().expect("no one holds it");
    let outcomes: Vec<(String, String, Option<String>)> =
        sqlx::query_as("SELECT account, outcome, error FROM sync_runs ORDER BY id")
            .fetch_all(&t.pool)
            .await
            .unwrap();
    assert_eq!(outcomes[0].1, "interrupted", "{outcomes:?}");
    assert!(outcomes[0].2.as_deref().unwrap_or("").contains("stopped"));
    assert_eq!(
        outcomes[1].1, "running",
        "another account's runs are not this process's business"
    );
    next.sync_once(&["leads".to_string()], false).await.unwrap();
    let last: String = sqlx::query_scalar(
        "SELECT outcome FROM sync_runs WHERE account = $1 ORDER BY id DESC LIMIT 1",
    )
    .bind(&account)
    .fetch_one(&t.pool)
    .await
    .unwrap();
    assert_eq!(last, "ok");
}

/// The entity tables hold several accounts' rows; `status` counts the configured one's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_counts_only_the_configured_account() {
    let t = spawn_entities(small_account(), &[]).await;
    t.sync().await;
    sqlx::query(
        "INSERT INTO leads (account_id, id, updated_at, raw) \
         SELECT 999, g, now(), '{}'::jsonb FROM generate_series(1, 50) g",
    )
    .execute(&t.pool)
    .await
    .unwrap();
    let status = t.app.status().await.unwrap();
    let leads = status.iter().find(|s| s.stream == "leads").unwrap();
    let mine: i64 = sqlx::query_scalar("SELECT count(*) FROM leads WHERE account_id <> 999")
        .fetch_one(&t.pool)
        .await
        .unwrap();
    assert_eq!(leads.rows, mine, "{status:?}");
    assert_eq!(mine as usize, t.sim.sim().dump(Entity::Leads).len());
}

/// A cursor stored by the previous version (V1: a watermark and segments) still loads: the
/// next sync goes on from it and ends exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cursor_stored_by_the_previous_version_still_loads() {
    let t = spawn_entities(small_account(), &[]).await;
    t.sync().await;
    let sim = t.sim.sim();
    let ids: Vec<i64> = sim.dump(Entity::Leads)[..20]
        .iter()
        .map(|v| v["id"].as_i64().unwrap())
        .collect();
    sim.edit(Entity::Leads, &ids);
    t.let_lag_pass();
    // What version 1 stored after a run that left a window open from second 0.
    let watermark: i64 = sqlx::query_scalar(
        "SELECT (cursor->>'through')::bigint FROM sync_state WHERE stream = 'leads'",
    )
    .fetch_one(&t.pool)
    .await
    .unwrap();
    let v1 = serde_json::json!({
        "version": "1",
        "watermark": watermark,
        "pending": [{"from": 0, "to": watermark, "seen": []}]
    });
    sqlx::query("UPDATE sync_state SET cursor = $1 WHERE stream = 'leads'")
        .bind(&v1)
        .execute(&t.pool)
        .await
        .unwrap();
    t.sync().await;
    let version: String =
        sqlx::query_scalar("SELECT cursor->>'version' FROM sync_state WHERE stream = 'leads'")
            .fetch_one(&t.pool)
            .await
            .unwrap();
    assert_eq!(version, "2", "stored again in today's form");
    t.assert_mirrors_simulator().await;
}

/// Processes starting at once on a fresh server (no database yet) or a fresh schema all
/// start: they take turns creating the database, the schema and the tables, and none fails
/// on a race it lost (`pg_database_datname_index`, `pg_namespace_nspname_index`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processes_starting_at_once_on_a_fresh_server_all_start() {
    use kommo_sync::store::Store;
    for round in 0..3 {
        let name = format!("kommo_sync_test_race_{}", rand::random::<u64>());
        let _cleanup = TestDb {
            name: name.clone(),
            url: String::new(),
        };
        for schema in ["kommo", "second"] {
            let env = vec![
                (
                    "KOMMO_SYNC__KOMMO__SUBDOMAIN".to_string(),
                    "acme".to_string(),
                ),
                ("KOMMO_SYNC__KOMMO__TOKEN".into(), "t".into()),
                (
                    "KOMMO_SYNC__DATABASE__URL".into(),
                    format!("{}/{name}", server_url()),
                ),
                ("KOMMO_SYNC__DATABASE__SCHEMA".into(), schema.into()),
                ("KOMMO_SYNC__DATABASE__MAX_CONNECTIONS".into(), "2".into()),
            ];
            let settings = Settings::load_from(None, env).unwrap();
            let starts = (0..8).map(|_| {
                let db = settings.database.clone();
                tokio::spawn(async move {
                    let store = Store::connect(&db).await?;
                    store.migrate().await?;
                    Ok::<_, kommo_sync::store::StoreError>(store.schema().to_string())
                })
            });
            for started in futures::future::join_all(starts).await {
                let schema_seen = started
                    .unwrap()
                    .unwrap_or_else(|e| panic!("round {round}, schema {schema}: {e}"));
                assert_eq!(schema_seen, schema);
            }
        }
    }
}
