//! Full-sync throughput against the simulator with 300 ms latency per request.
//!
//! Prints entities per second, requests, and the ratio to the ceiling `max_rps × 250`
//! (the most the API allows). Run: `cargo bench --bench full_sync`.
//! Knobs (environment): BENCH_LEADS, BENCH_CONTACTS, BENCH_COMPANIES, BENCH_TASKS,
//! BENCH_LATENCY_MS, BENCH_IMPORT (entities of each kind created in one second by an import),
//! TEST_DATABASE_URL.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use kommo_sim::{Entity, SimConfig, SimServer};
use kommo_sync::app::App;
use kommo_sync::config::Settings;
use sqlx::{Connection, Executor};
use tokio_util::sync::CancellationToken;

fn knob(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // RUST_LOG=kommo_sync=debug shows every page and split (where requests go).
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .init();
    }
    let latency = Duration::from_millis(knob("BENCH_LATENCY_MS", 300) as u64);
    let cfg = SimConfig {
        leads: knob("BENCH_LEADS", 20_000),
        contacts: knob("BENCH_CONTACTS", 15_000),
        companies: knob("BENCH_COMPANIES", 5_000),
        tasks: knob("BENCH_TASKS", 12_000),
        latency,
        import_crowd: knob("BENCH_IMPORT", 0),
        ..SimConfig::default()
    };
    let total = cfg.leads + cfg.contacts + cfg.companies + cfg.tasks;
    let sim = SimServer::start(cfg).await?;

    let server = std::env::var("TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into());
    let db = format!("kommo_sync_bench_{}", rand::random::<u32>());
    let mut admin = sqlx::PgConnection::connect(&format!("{server}/postgres")).await?;
    admin
        .execute(format!("CREATE DATABASE \"{db}\"").as_str())
        .await?;

    // KOMMO_SYNC__* from the environment (e.g. SYNC__PARALLELISM) apply first; the
    // simulator's address and the database always win.
    let mut env: Vec<(String, String)> = std::env::vars()
        .filter(|(k, _)| k.starts_with("KOMMO_SYNC__"))
        .collect();
    env.extend([
        ("KOMMO_SYNC__KOMMO__BASE_URL".to_string(), sim.base_url()),
        (
            "KOMMO_SYNC__KOMMO__ALLOW_INSECURE_HTTP".into(),
            "true".into(),
        ),
        ("KOMMO_SYNC__KOMMO__TOKEN".into(), "sim-token".into()),
        ("KOMMO_SYNC__DATABASE__URL".into(), format!("{server}/{db}")),
    ]);
    let settings = Settings::load_from(None, env)?;
    let schema = settings.database.schema.clone();
    let ceiling = f64::from(settings.kommo.max_rps) * 250.0;
    let app = App::build(settings, CancellationToken::new()).await?;

    // Requests per second over time, to see where the limit goes unused.
    let sampler = {
        let sim = sim.sim();
        tokio::spawn(async move {
            let mut last = 0;
            let mut line = Vec::new();
            loop {
                tokio::time::sleep(Duration::from_secs(2)).await;
                let now = sim.counters().requests;
                line.push(format!("{:.1}", (now - last) as f64 / 2.0));
                last = now;
                if line.len() % 15 == 0 {
                    eprintln!("rps per 2 s: {}", line.join(" "));
                    line.clear();
                }
                if std::env::var("BENCH_TIMELINE").is_err() {
                    line.clear();
                }
            }
        })
    };
    // The entity lists: the ratio is theirs (the event log and the reference lists are
    // separate streams with their own page sizes and schedules).
    let streams: Vec<String> = ["leads", "contacts", "companies", "tasks"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let start = Instant::now();
    let result = app.sync_once(&streams, true).await;
    sampler.abort();
    let elapsed = start.elapsed().as_secs_f64();
    let counters = sim.sim().counters();
    drop(app);
    // A fast sync that lost entities is no result: compare every table with the account.
    let mismatches = match &result {
        Ok(reports) => mirror_mismatches(&sim, &format!("{server}/{db}"), &schema, reports).await?,
        Err(_) => Vec::new(),
    };
    admin
        .execute(format!("DROP DATABASE \"{db}\" WITH (FORCE)").as_str())
        .await?;
    let reports = result?;
    anyhow::ensure!(
        mismatches.is_empty(),
        "the mirror differs from the account: {}",
        mismatches.join("; ")
    );

    let stored: u64 = reports.iter().map(|r| r.counts.rows_written).sum();
    let requests: u64 = reports.iter().map(|r| r.counts.requests).sum();
    let eps = stored as f64 / elapsed;
    println!(
        "full sync: {total} entities in the account, latency {} ms",
        latency.as_millis()
    );
    for r in &reports {
        println!(
            "  {:<10} requests {:>4}  rows {:>6}",
            r.stream, r.counts.requests, r.counts.rows_written
        );
    }
    println!(
        "entities stored      {stored} (mirror checked: every id and updated_at up to each window)"
    );
    println!("elapsed              {elapsed:.2} s");
    println!(
        "requests             {requests} (ideal ceil(n/250) per stream: {})",
        ideal(&reports)
    );
    println!("entities per second  {eps:.0}");
    println!("ceiling              {ceiling:.0} entities/s (max_rps x 250)");
    println!("ratio to ceiling     {:.3}", eps / ceiling);
    println!(
        "politeness           max {} requests in any sliding second, {} x 429, {} x 403",
        counters.max_in_sliding_second, counters.too_many_requests, counters.forbidden
    );
    Ok(())
}

fn ideal(reports: &[kommo_sync::sync::RunReport]) -> u64 {
    reports
        .iter()
        .map(|r| r.counts.rows_written.div_ceil(250))
        .sum()
}

/// Per table, what the mirror lacks or holds stale against the simulator's account.
async fn mirror_mismatches(
    sim: &SimServer,
    url: &str,
    schema: &str,
    reports: &[kommo_sync::sync::RunReport],
) -> anyhow::Result<Vec<String>> {
    let mut conn = sqlx::PgConnection::connect(url).await?;
    let mut out = Vec::new();
    for entity in Entity::ALL {
        // Edits within the lag behind the run's start wait for the next run.
        let Some(through) = reports
            .iter()
            .find(|r| r.stream == entity.as_str())
            .and_then(|r| r.counts.window_upper)
        else {
            continue;
        };
        let sql = format!(
            "SELECT id, extract(epoch FROM updated_at)::bigint FROM \"{schema}\".{}",
            entity.as_str()
        );
        let rows: HashMap<i64, i64> = sqlx::query_as::<_, (i64, i64)>(&sql)
            .fetch_all(&mut conn)
            .await?
            .into_iter()
            .collect();
        let dump: Vec<_> = sim
            .sim()
            .dump(entity)
            .into_iter()
            .filter(|item| item["updated_at"].as_i64().is_some_and(|u| u <= through))
            .collect();
        let wrong: Vec<(i64, i64)> = dump
            .iter()
            .filter_map(|item| {
                let id = item["id"].as_i64()?;
                let updated = item["updated_at"].as_i64()?;
                (rows.get(&id) != Some(&updated)).then_some((id, updated))
            })
            .collect();
        if !wrong.is_empty() {
            out.push(format!(
                "{entity}: {} of {} entities up to {through} missing or stale (first id, updated_at: {:?})",
                wrong.len(),
                dump.len(),
                &wrong[..wrong.len().min(5)]
            ));
        }
    }
    Ok(out)
}
