//! Bad input never panics and never loses stored data: a clear error, or a stored row.

use kommo_sim::{Entity, Fault};
use kommo_sync::app::App;
use kommo_sync::config::Settings;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::helpers::*;

async fn cursor(t: &TestApp, stream: &str) -> serde_json::Value {
    t.app
        .store
        .load_cursor(&t.app.settings.kommo.account_key(), stream)
        .await
        .unwrap()
        .unwrap()
}

/// A body that stays broken ends the run with a message naming the problem; what was
/// stored before, and the cursor, are untouched; the next run catches up.
async fn broken_bodies_fail_clearly_and_lose_nothing(fault: Fault, expect: &str) {
    let t = spawn_entities(small_account(), &[]).await;
    t.sync().await;
    let before = t.versions(Entity::Leads).await;
    let cursor_before = cursor(&t, "leads").await;
    let sim = t.sim.sim();
    sim.create(Entity::Leads, 5);
    t.let_lag_pass();
    sim.inject(fault, 10);
    let err = t
        .app
        .sync_once(&["leads".into()], false)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains(expect), "{err}");
    assert_eq!(t.versions(Entity::Leads).await, before);
    assert_eq!(cursor(&t, "leads").await, cursor_before);

    sim.clear_faults();
    t.sync().await;
    t.assert_mirrors_simulator().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_json_200_body() {
    broken_bodies_fail_clearly_and_lose_nothing(Fault::NonJson200, "not JSON").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncated_body() {
    broken_bodies_fail_clearly_and_lose_nothing(Fault::Truncated200, "truncated").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_broken_body_is_retried_transparently() {
    let t = spawn_entities(small_account(), &[]).await;
    t.sim.sim().inject(Fault::NonJson200, 1);
    t.sim.sim().inject(Fault::Truncated200, 1);
    t.sync().await;
    t.let_lag_pass();
    t.sync().await;
    t.assert_mirrors_simulator().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_fields_nulls_and_wrong_types_are_stored() {
    let t = spawn_entities(small_account(), &[]).await;
    let sim = t.sim.sim();
    let now = sim.now();
    sim.put_raw(
        Entity::Leads,
        json!({
            "id": 99_000_001, "account_id": 31_000_001, "name": null, "price": null,
            "status_id": "not-a-number", "pipeline_id": 12.5, "created_at": "yesterday",
            "updated_at": now - 100, "is_deleted": "no",
            "a_field_from_the_future": {"nested": [1, 2, 3]},
            "custom_fields_values": [
                {"field_id": 1, "field_type": "numeric", "values": [{"value": "12 apples"}]},
                {"field_id": 2, "field_type": "date", "values": [{"value": null}]},
                {"field_name": "no id", "values": [{"value": "x"}]}
            ],
            "_embedded": {"tags": "not-an-array"}
        }),
    );
    t.let_lag_pass();
    t.sync().await;
    let row: (Option<String>, Option<i64>, Option<i64>, serde_json::Value) = sqlx::query_as(
        "SELECT price::text, status_id, pipeline_id, raw FROM leads WHERE id = 99000001",
    )
    .fetch_one(&t.pool)
    .await
    .unwrap();
    assert_eq!((row.0, row.1, row.2), (None, None, None));
    assert_eq!(row.3["a_field_from_the_future"]["nested"][2], 3);
    let values: i64 =
        sqlx::query_scalar("SELECT count(*) FROM custom_field_values WHERE entity_id = 99000001")
            .fetch_one(&t.pool)
            .await
            .unwrap();
    assert_eq!(
        values, 2,
        "the field without an id is skipped; the others are kept"
    );
    t.assert_mirrors_simulator().await;
}

/// Values PostgreSQL cannot hold cost only themselves, never their page: a NUL character
/// (refused by `jsonb` and `text`) becomes U+FFFD; a time far out of range (Kommo once sent
/// `closed_at` = 1e14) is NULL in its typed column and intact in `raw`. The rest of the page
/// is stored and the next run rewrites nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nul_characters_and_times_out_of_range_poison_nothing() {
    let t = spawn_entities(small_account(), &[]).await;
    let sim = t.sim.sim();
    let now = sim.now();
    let mut poison = sim.dump(Entity::Leads)[10].clone();
    poison["name"] = json!("deal\u{0}with a NUL");
    poison["closed_at"] = json!(100_000_000_000_000_i64);
    poison["custom_fields_values"] = json!([
        {"field_id": 7, "field_name": "due\u{0}", "field_type": "date",
         "values": [{"value": 100_000_000_000_000_i64}]},
    ]);
    poison["updated_at"] = json!(now - 100);
    let id = poison["id"].as_i64().unwrap();
    sim.put_raw(Entity::Leads, poison);
    let mut contact = sim.dump(Entity::Contacts)[3].clone();
    contact["first_name"] = json!("\u{0}");
    contact["updated_at"] = json!(now - 100);
    sim.put_raw(Entity::Contacts, contact);
    t.let_lag_pass();
    t.sync().await;
    let (name, closed_at, raw): (
        String,
        Option<chrono::DateTime<chrono::Utc>>,
        serde_json::Value,
    ) = sqlx::query_as("SELECT name, closed_at, raw FROM leads WHERE id = $1")
        .bind(id)
        .fetch_one(&t.pool)
        .await
        .unwrap();
    assert_eq!(name, "deal\u{FFFD}with a NUL");
    assert_eq!(closed_at, None);
    assert_eq!(raw["closed_at"], json!(100_000_000_000_000_i64));
    let (field, time): (String, Option<chrono::DateTime<chrono::Utc>>) = sqlx::query_as(
        "SELECT field_name, value_time FROM custom_field_values WHERE entity_id = $1",
    )
    .bind(id)
    .fetch_one(&t.pool)
    .await
    .unwrap();
    assert_eq!((field.as_str(), time), ("due\u{FFFD}", None));
    let live = |e: Entity| sim.live_count(e) as i64;
    for (table, e) in [("leads", Entity::Leads), ("contacts", Entity::Contacts)] {
        let n: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM {table}"))
            .fetch_one(&t.pool)
            .await
            .unwrap();
        assert_eq!(n, live(e), "{table}: every entity of the page is stored");
    }
    let before = t.versions(Entity::Leads).await;
    t.let_lag_pass();
    t.sync().await;
    assert_eq!(t.versions(Entity::Leads).await, before, "nothing rewritten");
    t.assert_mirrors(&[Entity::Companies, Entity::Tasks]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_postgres_is_a_clear_error() {
    let env = env_for(
        "http://127.0.0.1:9",
        "postgres://postgres@127.0.0.1:1/nothing",
        &[],
    );
    let settings = Settings::load_from(None, env).unwrap();
    let err = match App::build(settings, CancellationToken::new()).await {
        Ok(_) => panic!("built without a database"),
        Err(e) => format!("{e:#}"),
    };
    assert!(
        err.contains("cannot reach PostgreSQL at 127.0.0.1:1/nothing"),
        "{err}"
    );
    assert!(err.contains("database.url"), "{err}");
}

/// One answer whose `Date` is a year ahead would move the cursor a year ahead, and every
/// later edit would be skipped for good. The run is refused, naming the setting, with the
/// cursor where it was; the next run (an honest clock) mirrors the edits made meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_date_a_year_ahead_is_refused_and_moves_no_cursor() {
    let t = spawn_entities(small_account(), &[]).await;
    t.sync().await;
    let before = cursor(&t, "leads").await;
    let sim = t.sim.sim();
    sim.edit(Entity::Leads, &[1, 2, 3]);
    t.let_lag_pass();
    sim.inject(Fault::DateAhead(365 * 86_400), 1);
    let err = t
        .app
        .sync_once(&["leads".to_string()], false)
        .await
        .expect_err("a Date a year ahead is refused");
    let message = err.to_string();
    assert!(
        message.contains("max_clock_jump_secs") && message.contains("ahead of"),
        "{message}"
    );
    assert_eq!(cursor(&t, "leads").await, before, "the cursor did not move");
    t.sync().await;
    t.assert_mirrors_simulator().await;
}
