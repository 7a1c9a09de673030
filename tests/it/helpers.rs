//! Test harness: a fresh database per test (dropped afterwards), a simulator, and an app
//! wired to both. Logs are printed only when `TEST_LOG` is set.

use std::collections::{BTreeMap, HashSet};
use std::sync::Once;

use kommo_sim::{Entity, SimConfig, SimServer};
use kommo_sync::app::App;
use kommo_sync::config::Settings;
use serde_json::Value;
use sqlx::postgres::PgPoolOptions;
use sqlx::{Connection, Executor, PgPool};
use tokio_util::sync::CancellationToken;

/// Server for test databases; each test creates and drops its own database there.
pub fn server_url() -> String {
    std::env::var("TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into())
}

static LOG: Once = Once::new();

pub fn init_logs() {
    LOG.call_once(|| {
        if std::env::var("TEST_LOG").is_ok() {
            kommo_sync::telemetry::init(
                kommo_sync::config::LogFormat::Text,
                "kommo_sync=debug,info",
            );
        }
    });
}

/// A database that exists for one test.
pub struct TestDb {
    pub name: String,
    pub url: String,
}

impl TestDb {
    pub async fn create() -> TestDb {
        let name = format!("kommo_sync_test_{}", rand::random::<u64>());
        let mut admin = sqlx::PgConnection::connect(&format!("{}/postgres", server_url()))
            .await
            .expect("PostgreSQL must listen on TEST_DATABASE_URL (default postgres://postgres@127.0.0.1:5432)");
        admin
            .execute(format!("CREATE DATABASE \"{name}\"").as_str())
            .await
            .expect("create test database");
        let url = format!("{}/{name}", server_url());
        TestDb { name, url }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        // Drop runs outside async: use a thread with its own runtime.
        let (name, server) = (self.name.clone(), server_url());
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                if let Ok(mut admin) =
                    sqlx::PgConnection::connect(&format!("{server}/postgres")).await
                {
                    let _ = admin
                        .execute(
                            format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)").as_str(),
                        )
                        .await;
                }
            });
        })
        .join();
    }
}

/// Environment for `Settings::load_from` pointing at a simulator and a database.
pub fn env_for(sim_url: &str, db_url: &str, extra: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut env: BTreeMap<String, String> = [
        ("KOMMO_SYNC__KOMMO__BASE_URL", sim_url),
        ("KOMMO_SYNC__KOMMO__ALLOW_INSECURE_HTTP", "true"),
        ("KOMMO_SYNC__KOMMO__TOKEN", "sim-token"),
        ("KOMMO_SYNC__KOMMO__MAX_RETRIES", "2"),
        ("KOMMO_SYNC__KOMMO__REQUEST_TIMEOUT_SECS", "5"),
        ("KOMMO_SYNC__DATABASE__URL", db_url),
        ("KOMMO_SYNC__SYNC__LAG_SECS", "2"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    for (k, v) in extra {
        env.insert(k.to_string(), v.to_string());
    }
    env.into_iter().collect()
}

/// Tests that run a simulator take turns. They measure request timing against a one-second
/// window, and a 2-core machine running several daemons, simulators and Postgres at once
/// delays requests enough to blur it. The assertions are the same; only the load is not.
static ONE_AT_A_TIME: std::sync::OnceLock<std::sync::Arc<tokio::sync::Mutex<()>>> =
    std::sync::OnceLock::new();

/// Everything a test needs. Dropping it drops the database and lets the next test run.
pub struct TestApp {
    pub sim: SimServer,
    pub db: TestDb,
    pub app: App,
    pub pool: PgPool,
    pub env: Vec<(String, String)>,
    /// Declared last: released after everything above is dropped.
    _turn: tokio::sync::OwnedMutexGuard<()>,
}

pub async fn spawn(cfg: SimConfig, extra: &[(&str, &str)]) -> TestApp {
    init_logs();
    let turn = ONE_AT_A_TIME
        .get_or_init(Default::default)
        .clone()
        .lock_owned()
        .await;
    let sim = SimServer::start(cfg).await.expect("simulator starts");
    let db = TestDb::create().await;
    let env = env_for(&sim.base_url(), &db.url, extra);
    let settings = Settings::load_from(None, env.clone()).expect("test settings are valid");
    let app = App::build(settings, CancellationToken::new())
        .await
        .expect("app builds");
    let pool = PgPoolOptions::new()
        .max_connections(2)
        .connect(&format!(
            "{}?options=-c%20search_path%3Dkommo%2Ckommo_private",
            db.url
        ))
        .await
        .unwrap();
    TestApp {
        sim,
        db,
        app,
        pool,
        env,
        _turn: turn,
    }
}

/// [`spawn`] with every stream but the four entity lists turned off: for tests of the entity
/// walk, which need not read the event log and the reference lists (a small account's log
/// alone is 22 pages). Binaries started with `t.env` inherit the same choice.
pub async fn spawn_entities(cfg: SimConfig, extra: &[(&str, &str)]) -> TestApp {
    let off = entity_streams_only();
    let mut all: Vec<(&str, &str)> = off.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    all.extend_from_slice(extra);
    spawn(cfg, &all).await
}

/// Settings that turn off every declared stream that is not an entity list.
pub fn entity_streams_only() -> Vec<(String, String)> {
    kommo_sync::kommo::stream_names()
        .filter(|s| !ENTITIES.iter().any(|e| e.as_str() == *s))
        .map(|s| {
            (
                format!("KOMMO_SYNC__STREAMS__{}__ENABLED", s.to_uppercase()),
                "false".to_string(),
            )
        })
        .collect()
}

/// A small account: fast to sync, still several pages per stream.
pub fn small_account() -> SimConfig {
    SimConfig {
        leads: 700,
        contacts: 600,
        companies: 300,
        tasks: 600,
        retry_after_secs: 1,
        ..SimConfig::default()
    }
}

pub const ENTITIES: [Entity; 4] = [
    Entity::Leads,
    Entity::Contacts,
    Entity::Companies,
    Entity::Tasks,
];

impl TestApp {
    pub async fn sync(&self) -> Vec<kommo_sync::sync::RunReport> {
        self.app.sync_once(&[], false).await.expect("sync succeeds")
    }

    /// Rows of a table as (id, updated_at unix, raw).
    pub async fn rows(&self, entity: Entity) -> BTreeMap<i64, (i64, Value)> {
        let sql = format!(
            "SELECT id, extract(epoch FROM updated_at)::bigint, raw FROM {} ORDER BY id",
            entity.as_str()
        );
        sqlx::query_as::<_, (i64, i64, Value)>(&sql)
            .fetch_all(&self.pool)
            .await
            .unwrap()
            .into_iter()
            .map(|(id, u, raw)| (id, (u, raw)))
            .collect()
    }

    /// Row versions: (id, xmin). A row rewritten gets a new xmin.
    pub async fn versions(&self, entity: Entity) -> BTreeMap<i64, i64> {
        let sql = format!("SELECT id, xmin::text::bigint FROM {}", entity.as_str());
        sqlx::query_as::<_, (i64, i64)>(&sql)
            .fetch_all(&self.pool)
            .await
            .unwrap()
            .into_iter()
            .collect()
    }

    /// Postgres holds exactly the simulator's live entities (same ids, `updated_at`, `raw`);
    /// extra rows may only be entities the simulator deleted.
    pub async fn assert_mirrors_simulator(&self) {
        self.assert_mirrors(&ENTITIES).await;
    }

    /// [`TestApp::assert_mirrors_simulator`] for some entities only.
    pub async fn assert_mirrors(&self, entities: &[Entity]) {
        let sim = self.sim.sim();
        for &entity in entities {
            let mut rows = self.rows(entity).await;
            // A lead's contacts are not part of its version: Kommo lists them only when
            // asked, and a contact deleted or linked changes them without a new
            // `updated_at`. The entity is compared without them; the links are checked
            // against the simulator's own index (see `reference.rs`).
            for (_, raw) in rows.values_mut() {
                if let Some(e) = raw.get_mut("_embedded").and_then(Value::as_object_mut) {
                    e.remove("contacts");
                }
            }
            let dump = sim.dump_with(entity, kommo_sim::With::NONE);
            // Merged away is gone too.
            let deleted: HashSet<i64> = sim
                .deleted_ids(entity)
                .into_iter()
                .chain(sim.merged_ids(entity))
                .collect();
            let mut missing = Vec::new();
            let mut stale = Vec::new();
            for item in &dump {
                let id = item["id"].as_i64().unwrap();
                match rows.get(&id) {
                    None => missing.push(id),
                    Some((u, raw)) => {
                        if *u != item["updated_at"].as_i64().unwrap() || raw != item {
                            stale.push(id);
                        }
                    }
                }
            }
            let live: HashSet<i64> = dump.iter().map(|v| v["id"].as_i64().unwrap()).collect();
            let unexpected: Vec<i64> = rows
                .keys()
                .filter(|id| !live.contains(id) && !deleted.contains(id))
                .copied()
                .collect();
            assert!(
                missing.is_empty() && stale.is_empty() && unexpected.is_empty(),
                "{}: {} live in the simulator; missing {:?}, stale {:?}, unexpected {:?}",
                entity.as_str(),
                dump.len(),
                &missing[..missing.len().min(10)],
                &stale[..stale.len().min(10)],
                &unexpected[..unexpected.len().min(10)],
            );
        }
    }

    /// The daemon stayed within the limit and was never throttled or banned.
    pub fn assert_polite(&self) {
        let c = self.sim.sim().counters();
        assert!(
            c.max_in_sliding_second <= 7,
            "max in a sliding second: {}",
            c.max_in_sliding_second
        );
        assert_eq!(c.too_many_requests, 0, "429s: {c:?}");
        assert_eq!(c.forbidden, 0, "403s: {c:?}");
    }

    /// Lets the lag pass on the simulator's clock instead of sleeping.
    pub fn let_lag_pass(&self) {
        self.sim.sim().advance_clock(5);
    }
}
