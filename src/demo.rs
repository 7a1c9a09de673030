//! `kommo-sync demo`: mirrors a generated account served by the built-in simulator, so a
//! newcomer sees the whole path (API → walk → Postgres) without Kommo credentials.
//!
//! The demo writes to its own schema (`kommo_demo` unless `--schema` says otherwise), so
//! simulated rows can never mix with a real mirror.

use std::net::SocketAddr;
use std::path::Path;

use anyhow::Context;
use kommo_sim::{SimConfig, SimServer};
use tokio_util::sync::CancellationToken;

use crate::app::App;
use crate::config::Settings;

/// The simulator listens here when the port is free, so repeated demos share one
/// `sync_state` key; otherwise any free port.
const DEMO_ADDR: ([u8; 4], u16) = ([127, 0, 0, 1], 18099);

pub struct DemoOptions {
    pub leads: usize,
    pub contacts: usize,
    pub companies: usize,
    pub tasks: usize,
    pub schema: String,
}

pub async fn run(config: Option<&Path>, opts: DemoOptions) -> anyhow::Result<()> {
    let sim_cfg = SimConfig {
        leads: opts.leads,
        contacts: opts.contacts,
        companies: opts.companies,
        tasks: opts.tasks,
        ..SimConfig::default()
    };
    let sim = match SimServer::start_on(sim_cfg.clone(), SocketAddr::from(DEMO_ADDR)).await {
        Ok(s) => s,
        Err(_) => SimServer::start(sim_cfg)
            .await
            .context("starting the simulator")?,
    };
    println!("simulator: a generated Kommo account at {}", sim.base_url());
    let demo_env = [
        ("KOMMO_SYNC__KOMMO__BASE_URL", sim.base_url()),
        ("KOMMO_SYNC__KOMMO__ALLOW_INSECURE_HTTP", "true".into()),
        ("KOMMO_SYNC__KOMMO__TOKEN", "sim-token".into()),
        ("KOMMO_SYNC__DATABASE__SCHEMA", opts.schema.clone()),
    ];
    // The demo's own keys win over the environment: it must never talk to a real account.
    let env = std::env::vars()
        .filter(|(k, _)| !demo_env.iter().any(|(d, _)| d == k))
        .chain(demo_env.iter().map(|(k, v)| (k.to_string(), v.clone())));
    let settings = Settings::load_from(config, env)?;
    let app = App::build(settings, CancellationToken::new()).await?;
    println!(
        "database: schema `{}` ready; mirroring (7 requests per second at most)...",
        app.store.schema()
    );
    let started = std::time::Instant::now();
    let reports = app.sync_once(&[], true).await?;
    for r in &reports {
        println!(
            "  {:<10} {:>6} rows in {:>3} requests",
            r.stream, r.counts.rows_written, r.counts.requests
        );
    }
    println!(
        "done in {:.1} s. Try, in psql:",
        started.elapsed().as_secs_f64()
    );
    let s = app.store.schema();
    println!(
        r#"
  -- open pipeline value by stage, with names
  SELECT pipeline_name, status_name, count(*), sum(price) FROM {s}.leads_v
   WHERE NOT is_won AND NOT is_lost GROUP BY 1, 2, status_sort ORDER BY 1, status_sort;

  -- won deals per month and responsible user
  SELECT date_trunc('month', closed_at) AS month, responsible_user_name, count(*), sum(price)
    FROM {s}.leads_v WHERE is_won GROUP BY 1, 2 ORDER BY 1, 2;

  -- contacts' e-mails, without parsing JSON
  SELECT c.name, v.value_text AS email FROM {s}.contacts c
    JOIN {s}.custom_field_values_v v ON v.entity_type = 'contacts' AND v.entity_id = c.id
   WHERE v.field_code = 'EMAIL' AND c.deleted_at IS NULL LIMIT 10;

  -- overdue open tasks per responsible user
  SELECT responsible_user_name, count(*) FROM {s}.tasks_v
   WHERE is_overdue GROUP BY 1 ORDER BY 2 DESC;

  -- more questions with their SQL: docs/analytics.md

  -- how the sync is doing
  SELECT stream, state, last_success_at, rows_written FROM {s}.sync_state;"#
    );
    // Exactly what was written, so that nobody guesses the database or the schema. The
    // password, if any, is never printed.
    let db = &app.settings.database.connect;
    let url = format!(
        "postgres://{}@{}:{}/{}",
        db.get_username(),
        db.get_host(),
        db.get_port(),
        db.get_database().unwrap_or("kommo")
    );
    let exe = std::env::current_exe()
        .ok()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "kommo-sync".into());
    println!(
        "\nThe streams' state (reads the database only; no API settings needed):\n  \
         KOMMO_SYNC__DATABASE__URL={url} KOMMO_SYNC__DATABASE__SCHEMA={s} {exe} status\n\
         The tables:\n  psql \"{url}\" -c 'SET search_path = {s}' -c '\\dt+'"
    );
    sim.stop().await;
    Ok(())
}
