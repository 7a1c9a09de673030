//! Reference data (pipelines and stages, users, loss reasons, task types, field definitions
//! and their options, tags) and the links between entities: what the entity tables' ids
//! point at, mirrored so that analysts can join to it.

use std::collections::BTreeSet;

use kommo_sim::{Entity, FieldType};
use kommo_sync::app::App;
use kommo_sync::config::Settings;
use tokio_util::sync::CancellationToken;

use crate::helpers::*;

const REFERENCE_STREAMS: [&str; 10] = [
    "pipelines",
    "users",
    "loss_reasons",
    "task_types",
    "lead_custom_fields",
    "contact_custom_fields",
    "company_custom_fields",
    "lead_tags",
    "contact_tags",
    "company_tags",
];

async fn ids(t: &TestApp, sql: &str) -> BTreeSet<i64> {
    sqlx::query_scalar::<_, i64>(sql)
        .fetch_all(&t.pool)
        .await
        .unwrap()
        .into_iter()
        .collect()
}

async fn pairs(t: &TestApp, sql: &str) -> BTreeSet<(i64, i64)> {
    sqlx::query_as::<_, (i64, i64)>(sql)
        .fetch_all(&t.pool)
        .await
        .unwrap()
        .into_iter()
        .collect()
}

/// A second process against the same database: nothing it read in an earlier process
/// keeps it from reading again.
async fn restarted(t: &TestApp) -> App {
    let settings = Settings::load_from(None, t.env.clone()).unwrap();
    App::build(settings, CancellationToken::new())
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_reference_list_and_link_is_mirrored_in_full() {
    let t = spawn(small_account(), &[]).await;
    t.sync().await;
    let sim = t.sim.sim();
    let r = sim.reference();

    let pipelines: BTreeSet<i64> = r.pipelines.iter().map(|p| p.id).collect();
    assert_eq!(ids(&t, "SELECT id FROM pipelines").await, pipelines);
    let stages: BTreeSet<(i64, i64)> = r
        .pipelines
        .iter()
        .flat_map(|p| p.statuses.iter().map(move |s| (p.id, s.id)))
        .collect();
    assert_eq!(
        pairs(&t, "SELECT pipeline_id, id FROM pipeline_statuses").await,
        stages
    );
    let users: BTreeSet<i64> = r.users.iter().map(|u| u.id).collect();
    assert_eq!(ids(&t, "SELECT id FROM users").await, users);
    let reasons: BTreeSet<i64> = r.loss_reasons.iter().map(|l| l.0).collect();
    assert_eq!(ids(&t, "SELECT id FROM loss_reasons").await, reasons);
    let types: BTreeSet<i64> = r.task_types.iter().map(|x| x.0).collect();
    assert_eq!(ids(&t, "SELECT id FROM task_types").await, types);

    // More than 50 lead fields: they list 50 per page, and every page is read.
    let lead_fields: BTreeSet<i64> = r.fields[Entity::Leads.index()]
        .iter()
        .map(|f| f.id)
        .collect();
    assert!(lead_fields.len() > 50, "the account must page its fields");
    assert_eq!(
        ids(
            &t,
            "SELECT id FROM custom_fields WHERE entity_type = 'leads'"
        )
        .await,
        lead_fields
    );
    for e in [Entity::Contacts, Entity::Companies] {
        let want: BTreeSet<i64> = r.fields[e.index()].iter().map(|f| f.id).collect();
        let sql = format!(
            "SELECT id FROM custom_fields WHERE entity_type = '{}'",
            e.as_str()
        );
        assert_eq!(ids(&t, &sql).await, want, "{e}");
    }
    let options: BTreeSet<(i64, i64)> = r
        .fields
        .iter()
        .flatten()
        .flat_map(|f| f.enums.iter().map(move |o| (f.id, o.id)))
        .collect();
    assert_eq!(
        pairs(&t, "SELECT field_id, id FROM custom_field_enums").await,
        options
    );
    for e in [Entity::Leads, Entity::Contacts, Entity::Companies] {
        let want: BTreeSet<i64> = r.tags[e.index()].iter().map(|g| g.id).collect();
        let sql = format!("SELECT id FROM tags WHERE entity_type = '{}'", e.as_str());
        assert_eq!(ids(&t, &sql).await, want, "{e} tags");
    }
    // Every reference row belongs to the account the entities belong to.
    let accounts = ids(
        &t,
        "SELECT account_id FROM users UNION SELECT account_id FROM tags \
         UNION SELECT account_id FROM leads UNION SELECT account_id FROM pipeline_statuses",
    )
    .await;
    assert_eq!(accounts.len(), 1, "{accounts:?}");

    // Links, as the simulator's own index has them.
    let links = sim.links();
    let want: BTreeSet<(i64, i64, bool)> = links
        .lead_contacts
        .iter()
        .map(|l| (l.lead_id, l.contact_id, l.is_main))
        .collect();
    assert!(!want.is_empty());
    let got: BTreeSet<(i64, i64, bool)> =
        sqlx::query_as("SELECT lead_id, contact_id, is_main FROM lead_contacts")
            .fetch_all(&t.pool)
            .await
            .unwrap()
            .into_iter()
            .collect();
    assert_eq!(got, want);
    let want: BTreeSet<(i64, i64)> = links.lead_companies.iter().copied().collect();
    assert_eq!(
        pairs(&t, "SELECT lead_id, company_id FROM lead_companies").await,
        want
    );
    let want: BTreeSet<(i64, i64)> = links.contact_companies.iter().copied().collect();
    assert_eq!(
        pairs(&t, "SELECT contact_id, company_id FROM contact_companies").await,
        want
    );
    t.assert_mirrors_simulator().await;
    t.assert_polite();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_marks_what_left_rewrites_what_changed_and_nothing_else() {
    let t = spawn(small_account(), &[]).await;
    t.sync().await;
    let sim = t.sim.sim();
    let r = sim.reference();
    let gone_user = r.users[1].id;
    let pipeline = &r.pipelines[0];
    let gone_stage = pipeline
        .statuses
        .iter()
        .find(|s| s.id != 142 && s.id != 143 && s.kind == 0)
        .unwrap()
        .id;
    let versions = |table: &'static str| {
        let pool = t.pool.clone();
        async move {
            sqlx::query_as::<_, (i64, i64)>(&format!("SELECT id, xmin::text::bigint FROM {table}"))
                .fetch_all(&pool)
                .await
                .unwrap()
        }
    };
    let users_before = versions("users").await;
    let tags_before = versions("tags").await;

    assert!(sim.remove_user(gone_user));
    assert!(sim.rename_pipeline(pipeline.id, "Renamed funnel"));
    assert!(sim.remove_status(pipeline.id, gone_stage));
    let new_field = sim
        .add_custom_field(Entity::Contacts, "Favourite colour", FieldType::Text)
        .unwrap();

    let app = restarted(&t).await;
    let streams: Vec<String> = REFERENCE_STREAMS.iter().map(|s| s.to_string()).collect();
    let reports = app.sync_once(&streams, false).await.unwrap();
    assert_eq!(reports.len(), REFERENCE_STREAMS.len());

    let gone: Option<bool> =
        sqlx::query_scalar("SELECT gone_at IS NOT NULL FROM users WHERE id = $1")
            .bind(gone_user)
            .fetch_optional(&t.pool)
            .await
            .unwrap();
    assert_eq!(
        gone,
        Some(true),
        "a user no longer listed is kept, marked gone"
    );
    let users_after = versions("users").await;
    let rewritten: Vec<i64> = users_after
        .iter()
        .filter(|v| !users_before.contains(v))
        .map(|v| v.0)
        .collect();
    assert_eq!(
        rewritten,
        vec![gone_user],
        "only the user that left is touched"
    );
    assert_eq!(
        versions("tags").await,
        tags_before,
        "unchanged tags are not rewritten"
    );

    let (name, stage_gone): (String, bool) = sqlx::query_as(
        "SELECT p.name, s.gone_at IS NOT NULL FROM pipelines p \
         JOIN pipeline_statuses s ON s.pipeline_id = p.id WHERE p.id = $1 AND s.id = $2",
    )
    .bind(pipeline.id)
    .bind(gone_stage)
    .fetch_one(&t.pool)
    .await
    .unwrap();
    assert_eq!((name.as_str(), stage_gone), ("Renamed funnel", true));
    let live_stages: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pipeline_statuses WHERE pipeline_id = $1 AND gone_at IS NULL",
    )
    .bind(pipeline.id)
    .fetch_one(&t.pool)
    .await
    .unwrap();
    assert_eq!(live_stages as usize, pipeline.statuses.len() - 1);

    let field: Option<String> = sqlx::query_scalar(
        "SELECT name FROM custom_fields WHERE entity_type = 'contacts' AND id = $1",
    )
    .bind(new_field)
    .fetch_optional(&t.pool)
    .await
    .unwrap();
    assert_eq!(field.as_deref(), Some("Favourite colour"));
}

/// The same process does not read a reference list twice within a minute: a `sync` run
/// twice in a row asks nothing the second time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reference_list_is_not_asked_again_within_a_minute() {
    let t = spawn(small_account(), &[]).await;
    let streams: Vec<String> = REFERENCE_STREAMS.iter().map(|s| s.to_string()).collect();
    let first = t.app.sync_once(&streams, false).await.unwrap();
    assert!(first.iter().all(|r| r.counts.requests >= 1), "{first:?}");
    let sim = t.sim.sim();
    sim.reset_counters();
    let second = t.app.sync_once(&streams, false).await.unwrap();
    assert_eq!(sim.counters().requests, 0);
    assert!(second.iter().all(|r| r.counts.requests == 0));
}

/// Kommo lists a lead's contacts only with `with=contacts`; the daemon asks for them and
/// follows a change of them when the lead's version moves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_link_is_followed_with_its_lead() {
    let t = spawn(small_account(), &[]).await;
    t.sync().await;
    let sim = t.sim.sim();
    sim.set_link_bumps_updated_at(true);
    let links = sim.links();
    let first = links.lead_contacts[0];
    let other = sim
        .dump(Entity::Contacts)
        .iter()
        .map(|c| c["id"].as_i64().unwrap())
        .find(|c| {
            !links
                .lead_contacts
                .iter()
                .any(|l| l.lead_id == first.lead_id && l.contact_id == *c)
        })
        .unwrap();
    assert!(sim.unlink(first.lead_id, first.contact_id));
    assert!(sim.link(first.lead_id, other));
    t.let_lag_pass();
    t.sync().await;
    let got = pairs(
        &t,
        &format!(
            "SELECT lead_id, contact_id FROM lead_contacts WHERE lead_id = {}",
            first.lead_id
        ),
    )
    .await;
    let want: BTreeSet<(i64, i64)> = sim
        .links()
        .lead_contacts
        .iter()
        .filter(|l| l.lead_id == first.lead_id)
        .map(|l| (l.lead_id, l.contact_id))
        .collect();
    assert!(want.contains(&(first.lead_id, other)));
    assert_eq!(got, want);
}
