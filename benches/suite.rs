//! The benchmark suite: real-shaped accounts against the simulator, the daemon run as its
//! own process (`kommo-sync sync`), figures printed as the table of `docs/performance.md`.
//!
//! Run: `cargo bench --bench suite`. Knobs (environment):
//! - `BENCH_SCALE` (1.0): the account is 100,000 leads, 100,000 contacts, 50,000 companies
//!   and 100,000 tasks times this; each kind has one import of 20,000 × scale entities
//!   created in one second, the rest spread over two years, and during backfills the
//!   account is edited a few times a second with a bulk edit of 500 each minute.
//! - `BENCH_LATENCIES` ("100,300,800"): server latency of each backfill, in ms.
//! - `BENCH_ONLY` ("backfill,idle,write,load"): scenarios to run; `memory` (a backfill of
//!   1,000,000 × scale entities at 100 ms, for its peak RSS) only when named.
//! - `TEST_DATABASE_URL` (postgres://postgres@127.0.0.1:5432).
//!
//! Every backfill is checked against the account: a fast run that lost entities fails.

use std::collections::HashMap;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use kommo_sim::{Entity, MutatorConfig, SimConfig, SimServer};
use kommo_sync::config::Settings;
use kommo_sync::store::Store;
use serde_json::{json, Value};
use sqlx::{Connection, Executor};

const STREAMS: [&str; 4] = ["leads", "contacts", "companies", "tasks"];
/// The most the API allows: 7 requests per second of 250 entities.
const CEILING: f64 = 7.0 * 250.0;

fn knob<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn server_url() -> String {
    std::env::var("TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into())
}

/// A database of its own, dropped at the end.
struct Db {
    name: String,
}

impl Db {
    async fn create() -> anyhow::Result<Db> {
        let name = format!("kommo_sync_suite_{}", rand::random::<u32>());
        let mut admin = sqlx::PgConnection::connect(&format!("{}/postgres", server_url())).await?;
        admin
            .execute(format!("CREATE DATABASE \"{name}\"").as_str())
            .await?;
        Ok(Db { name })
    }

    fn url(&self) -> String {
        format!("{}/{}", server_url(), self.name)
    }

    async fn drop(self) -> anyhow::Result<()> {
        let mut admin = sqlx::PgConnection::connect(&format!("{}/postgres", server_url())).await?;
        admin
            .execute(format!("DROP DATABASE \"{}\" WITH (FORCE)", self.name).as_str())
            .await?;
        Ok(())
    }
}

fn account(scale: f64, latency: Duration) -> SimConfig {
    let n = |k: f64| ((k * scale) as usize).max(1);
    SimConfig {
        leads: n(100_000.0),
        contacts: n(100_000.0),
        companies: n(50_000.0),
        tasks: n(100_000.0),
        import_crowd: n(20_000.0),
        history_days: 730,
        latency,
        ..SimConfig::default()
    }
}

fn churn() -> MutatorConfig {
    MutatorConfig {
        ops_per_sec: 3,
        bulk_every: Some(Duration::from_secs(60)),
        bulk_size: 500,
        ..MutatorConfig::default()
    }
}

/// What one run of the daemon did.
struct Run {
    elapsed: f64,
    requests: u64,
    too_many: u64,
    stored: u64,
    /// Rows the account had in the four lists when the run started.
    ideal_requests: u64,
    peak_rss_mb: f64,
}

/// Runs `kommo-sync sync` against the simulator and the database; its peak RSS is read off
/// `/proc` while it runs.
async fn daemon(sim: &SimServer, db: &Db, full: bool) -> anyhow::Result<(f64, f64)> {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_kommo-sync"));
    cmd.arg("sync");
    if full {
        cmd.arg("--full");
    }
    for s in STREAMS {
        cmd.args(["--stream", s]);
    }
    cmd.env("KOMMO_SYNC__KOMMO__BASE_URL", sim.base_url())
        .env("KOMMO_SYNC__KOMMO__ALLOW_INSECURE_HTTP", "true")
        .env("KOMMO_SYNC__KOMMO__TOKEN", "sim-token")
        .env("KOMMO_SYNC__DATABASE__URL", db.url())
        .env("KOMMO_SYNC__SYNC__RECONCILE_EVERY_HOURS", "0")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let start = Instant::now();
    let mut child = cmd.spawn().context("starting kommo-sync")?;
    let pid = child.id().context("the child has a pid")?;
    let mut peak_kb = 0u64;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
            if let Some(kb) = s
                .lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            {
                peak_kb = peak_kb.max(kb);
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let elapsed = start.elapsed().as_secs_f64();
    if !status.success() {
        let out = child.wait_with_output().await?;
        anyhow::bail!(
            "kommo-sync sync failed ({status}): {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok((elapsed, peak_kb as f64 / 1024.0))
}

/// Every entity the account lists with `updated_at` up to what each stream proved stored
/// must be in the mirror with that `updated_at`; returns the rows stored.
async fn check_mirror(sim: &SimServer, db: &Db) -> anyhow::Result<u64> {
    let mut conn = sqlx::PgConnection::connect(&db.url()).await?;
    let mut stored = 0;
    for (entity, stream) in Entity::ALL.iter().zip(STREAMS) {
        let (cursor,): (Value,) =
            sqlx::query_as("SELECT cursor FROM kommo.sync_state WHERE stream = $1")
                .bind(stream)
                .fetch_one(&mut conn)
                .await
                .with_context(|| format!("the cursor of {stream}"))?;
        let through = kommo_sync::sync::synced_up_to(&cursor)
            .with_context(|| format!("{stream} proved nothing stored"))?;
        let rows: HashMap<i64, i64> = sqlx::query_as::<_, (i64, i64)>(&format!(
            "SELECT id, extract(epoch FROM updated_at)::bigint FROM kommo.{stream}"
        ))
        .fetch_all(&mut conn)
        .await?
        .into_iter()
        .collect();
        stored += rows.len() as u64;
        let wrong = sim
            .sim()
            .dump(*entity)
            .iter()
            .filter_map(|e| Some((e["id"].as_i64()?, e["updated_at"].as_i64()?)))
            .filter(|(id, u)| *u <= through && rows.get(id) != Some(u))
            .count();
        ensure!(
            wrong == 0,
            "{stream}: {wrong} entities missing or stale in the mirror"
        );
    }
    Ok(stored)
}

async fn backfill(scale: f64, latency_ms: u64, cpu_load: bool) -> anyhow::Result<Run> {
    let cfg = account(scale, Duration::from_millis(latency_ms));
    let ideal_requests = [cfg.leads, cfg.contacts, cfg.companies, cfg.tasks]
        .iter()
        .map(|n| n.div_ceil(250) as u64)
        .sum();
    let sim = SimServer::start(cfg).await?;
    let db = Db::create().await?;
    let mutator = sim.sim().start_mutator(churn());
    let stop = Arc::new(AtomicBool::new(false));
    let burners: Vec<_> = if cpu_load {
        let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
        (0..2 * cpus)
            .map(|_| {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    let mut x = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
                        std::hint::black_box(x);
                    }
                })
            })
            .collect()
    } else {
        Vec::new()
    };
    sim.sim().reset_counters();
    let result = daemon(&sim, &db, true).await;
    stop.store(true, Ordering::Relaxed);
    for b in burners {
        let _ = b.join();
    }
    drop(mutator);
    let counters = sim.sim().counters();
    let checked = match &result {
        Ok(_) => check_mirror(&sim, &db).await,
        Err(_) => Ok(0),
    };
    db.drop().await?;
    let (elapsed, peak_rss_mb) = result?;
    Ok(Run {
        elapsed,
        requests: counters.requests,
        too_many: counters.too_many_requests,
        stored: checked?,
        ideal_requests,
        peak_rss_mb,
    })
}

fn backfill_line(case: &str, r: &Run) -> String {
    let eps = r.stored as f64 / r.elapsed;
    format!(
        "| {case} | {:.1} s | {:.0} | {} (ideal {}) | {:.2} | **{:.3}** | {} | {:.0} MB |",
        r.elapsed,
        eps,
        r.requests,
        r.ideal_requests,
        r.requests as f64 * 1000.0 / r.stored.max(1) as f64,
        eps / CEILING,
        r.too_many,
        r.peak_rss_mb
    )
}

/// After a backfill, runs without changes: what a poll costs when nothing happened.
async fn idle_poll(scale: f64) -> anyhow::Result<String> {
    let sim = SimServer::start(account(scale, Duration::from_millis(100))).await?;
    let db = Db::create().await?;
    let result = async {
        daemon(&sim, &db, true).await?;
        // Let the lag pass, then poll twice; the second poll is the steady state.
        sim.sim().advance_clock(600);
        daemon(&sim, &db, false).await?;
        sim.sim().reset_counters();
        let rows_before = rows_written(&db).await?;
        let (elapsed, _) = daemon(&sim, &db, false).await?;
        let rows = rows_written(&db).await? - rows_before;
        anyhow::Ok(format!(
            "| idle poll, 4 streams, 100 ms | {} requests | {rows} rows written | {elapsed:.2} s (process start included) |",
            sim.sim().counters().requests
        ))
    }
    .await;
    db.drop().await?;
    result
}

async fn rows_written(db: &Db) -> anyhow::Result<i64> {
    let mut conn = sqlx::PgConnection::connect(&db.url()).await?;
    let (n,): (Option<i64>,) =
        sqlx::query_as("SELECT sum(rows_written)::bigint FROM kommo.sync_state")
            .fetch_one(&mut conn)
            .await?;
    Ok(n.unwrap_or(0))
}

/// The write path alone: pages of real-shaped leads (custom fields, tags, contacts)
/// decoded and upserted, one transaction per page, as the engine commits them.
async fn write_path(scale: f64) -> anyhow::Result<Vec<String>> {
    let n = ((50_000.0 * scale) as usize).max(250);
    let sim = SimServer::start(SimConfig {
        leads: n,
        contacts: 0,
        companies: 0,
        tasks: 0,
        ..SimConfig::default()
    })
    .await?;
    let leads = sim.sim().dump_with(
        Entity::Leads,
        kommo_sim::With {
            contacts: true,
            leads: false,
        },
    );
    let db = Db::create().await?;
    let result = async {
        let settings = Settings::load_from(
            None,
            [
                ("KOMMO_SYNC__KOMMO__TOKEN".to_string(), "unused".to_string()),
                ("KOMMO_SYNC__KOMMO__BASE_URL".into(), sim.base_url()),
                ("KOMMO_SYNC__KOMMO__ALLOW_INSECURE_HTTP".into(), "true".into()),
                ("KOMMO_SYNC__DATABASE__URL".into(), db.url()),
            ],
        )?;
        let store = Store::connect(&settings.database).await?;
        store.migrate().await?;
        let decl = kommo_sync::kommo::STREAMS
            .iter()
            .find(|d| d.name == "leads")
            .context("the leads stream")?;
        let mut lines = Vec::new();
        let changed: Vec<Value> = leads
            .iter()
            .map(|l| {
                let mut l = l.clone();
                l["updated_at"] = json!(l["updated_at"].as_i64().unwrap_or(0) + 1);
                l["price"] = json!(l["price"].as_i64().unwrap_or(0) + 1);
                l
            })
            .collect();
        for (case, items) in [("new", &leads), ("unchanged", &leads), ("changed", &changed)] {
            // Pages as the client receives them: bytes, decoded in the timed part.
            let pages: Vec<Vec<u8>> = items
                .chunks(250)
                .map(|chunk| serde_json::to_vec(&json!({"_embedded": {"leads": chunk}})))
                .collect::<Result<_, _>>()?;
            let start = Instant::now();
            let mut written = 0;
            for page in &pages {
                let body: Value = serde_json::from_slice(page)?;
                let records = kommo_sync::kommo::pages::records("leads", body)?;
                let mut tx = store.begin().await?;
                written += kommo_sync::sync::write::entities(&mut tx, decl, &records).await?;
                tx.commit().await?;
            }
            let secs = start.elapsed().as_secs_f64();
            lines.push(format!(
                "| write path, {case} | {n} leads in {secs:.2} s | **{:.0} rows/s** | {written} rows written |",
                n as f64 / secs
            ));
        }
        anyhow::Ok(lines)
    }
    .await;
    db.drop().await?;
    result
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // RUST_LOG=sqlx=debug shows every statement of the write path with its time.
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .init();
    }
    let scale: f64 = knob("BENCH_SCALE", 1.0);
    let latencies: Vec<u64> = std::env::var("BENCH_LATENCIES")
        .unwrap_or_else(|_| "100,300,800".into())
        .split(',')
        .filter_map(|v| v.trim().parse().ok())
        .collect();
    let only = std::env::var("BENCH_ONLY").unwrap_or_else(|_| "backfill,idle,write,load".into());
    let wants = |s: &str| only.split(',').any(|o| o.trim() == s);
    let sizes = account(scale, Duration::ZERO);
    println!(
        "account: {} leads, {} contacts, {} companies, {} tasks; an import of {} per kind in one second; churn during backfills",
        sizes.leads, sizes.contacts, sizes.companies, sizes.tasks, sizes.import_crowd
    );
    println!();
    println!(
        "| case | wall | entities/s | requests | per 1,000 | ratio to ceiling | 429s | peak RSS |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    if wants("backfill") {
        for &ms in &latencies {
            let r = backfill(scale, ms, false).await?;
            println!("{}", backfill_line(&format!("backfill, {ms} ms"), &r));
        }
    }
    if wants("load") {
        let r = backfill(scale, 300, true).await?;
        println!("{}", backfill_line("backfill, 300 ms, every CPU busy", &r));
    }
    if wants("memory") {
        let r = backfill(scale * 10.0, 100, false).await?;
        println!("{}", backfill_line("backfill x10, 100 ms", &r));
    }
    println!();
    if wants("idle") {
        println!("{}", idle_poll(scale).await?);
    }
    if wants("write") {
        for line in write_path(scale).await? {
            println!("{line}");
        }
    }
    Ok(())
}
