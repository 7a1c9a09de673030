//! `kommo-sim` binary: serves a simulated Kommo account until Ctrl-C or SIGTERM.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use kommo_sim::{AuthConfig, ImsMode, MutatorConfig, SimConfig, SimServer, TieOrder};

/// A faithful in-memory simulator of the Kommo CRM API v4 (limits included).
///
/// Serves /api/v4/{leads,contacts,companies,tasks,events,account,users,...} and
/// /oauth2/access_token like a Kommo account, plus /_sim/* control endpoints
/// (health, counters, dump, clock, faults, ban, settings, mutate, mutator).
/// See docs/simulator.md.
#[derive(Parser, Debug)]
#[command(name = "kommo-sim", version)]
struct Cli {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8099")]
    listen: SocketAddr,
    /// Seed of the deterministic data generator.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Number of seeded leads.
    #[arg(long, default_value_t = 1000)]
    leads: usize,
    /// Number of seeded contacts.
    #[arg(long, default_value_t = 1000)]
    contacts: usize,
    /// Number of seeded companies.
    #[arg(long, default_value_t = 1000)]
    companies: usize,
    /// Number of seeded tasks.
    #[arg(long, default_value_t = 1000)]
    tasks: usize,
    /// Days of history over which seeded updated_at values are spread.
    #[arg(long, default_value_t = 365)]
    history_days: i64,
    /// Requests allowed in any trailing second; the next one gets 429 (0 = unlimited).
    #[arg(long, default_value_t = 7)]
    max_rps: u32,
    /// 429s within --ban-window-seconds that get the client banned (403 to everything; 0 = never).
    #[arg(long, default_value_t = 5)]
    ban_after: u32,
    /// Window in which 429 violations are counted towards a ban.
    #[arg(long, default_value_t = 60)]
    ban_window_seconds: u64,
    /// How long a ban lasts.
    #[arg(long, default_value_t = 600)]
    ban_seconds: u64,
    /// retry_after value in the 429 body (Kommo documents 300).
    #[arg(long, default_value_t = 300)]
    retry_after: u64,
    /// How If-Modified-Since compares with updated_at: gt (>), gte (>=) or ignore.
    #[arg(long, default_value = "gt", value_parser = |s: &str| s.parse::<ImsMode>())]
    ims_mode: ImsMode,
    /// Order of list items tying on the sort key: shuffled (fresh random order per request) or id-asc.
    #[arg(long, default_value = "shuffled", value_parser = |s: &str| s.parse::<TieOrder>())]
    tie_order: TieOrder,
    /// Sim-seconds after its updated_at before an edit shows up in lists (eventual consistency).
    #[arg(long, default_value_t = 0)]
    visibility_delay: i64,
    /// Delay added to every /api and /oauth2 response, in milliseconds.
    #[arg(long, default_value_t = 0)]
    latency_ms: u64,
    /// Sim clock = system UTC + this many seconds (negative = behind).
    #[arg(long, default_value_t = 0, allow_hyphen_values = true)]
    clock_offset: i64,
    /// Long-lived bearer token accepted forever (empty = none, OAuth only).
    #[arg(long, default_value = "sim-token")]
    token: String,
    /// Lifetime of OAuth access tokens, in sim seconds.
    #[arg(long, default_value_t = 86_400)]
    access_token_ttl: u64,
    /// OAuth client id.
    #[arg(long, default_value = "sim-client")]
    client_id: String,
    /// OAuth client secret.
    #[arg(long, default_value = "sim-secret")]
    client_secret: String,
    /// OAuth redirect URI every grant must repeat.
    #[arg(long, default_value = "https://example.com/oauth")]
    redirect_uri: String,
    /// Authorization codes accepted once each by the authorization_code grant (repeatable).
    #[arg(long = "auth-code", default_value = "sim-code")]
    auth_codes: Vec<String>,
    /// Background mutator: single create/edit/delete operations per second (0 = off).
    #[arg(long, default_value_t = 0)]
    mutator_ops_per_sec: u32,
    /// Background mutator: a same-second bulk edit every N seconds (0 = never).
    #[arg(long, default_value_t = 0)]
    mutator_bulk_every_secs: u64,
    /// Background mutator: entities per bulk edit.
    #[arg(long, default_value_t = 1000)]
    mutator_bulk_size: usize,
}

impl Cli {
    fn config(&self) -> SimConfig {
        SimConfig {
            seed: self.seed,
            leads: self.leads,
            contacts: self.contacts,
            companies: self.companies,
            tasks: self.tasks,
            history_days: self.history_days,
            max_rps: self.max_rps,
            ban_after_violations: self.ban_after,
            ban_window: Duration::from_secs(self.ban_window_seconds),
            ban_duration: Duration::from_secs(self.ban_seconds),
            retry_after_secs: self.retry_after,
            ims_mode: self.ims_mode,
            tie_order: self.tie_order,
            visibility_delay_secs: self.visibility_delay,
            latency: Duration::from_millis(self.latency_ms),
            clock_offset_secs: self.clock_offset,
            auth: AuthConfig {
                long_lived_token: (!self.token.is_empty()).then(|| self.token.clone()),
                client_id: self.client_id.clone(),
                client_secret: self.client_secret.clone(),
                redirect_uri: self.redirect_uri.clone(),
                access_token_ttl: Duration::from_secs(self.access_token_ttl),
                auth_codes: self.auth_codes.clone(),
                ..AuthConfig::default()
            },
            ..SimConfig::default()
        }
    }
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let cli = Cli::parse();
    let cfg = cli.config();
    let server = SimServer::start_on(cfg.clone(), cli.listen).await?;
    println!("kommo-sim listening on {}", server.base_url());
    match &cfg.auth.long_lived_token {
        Some(t) => println!("token: {t}"),
        None => println!("token: none (OAuth only; client_id {})", cfg.auth.client_id),
    }
    let mutator = (cli.mutator_ops_per_sec > 0 || cli.mutator_bulk_every_secs > 0).then(|| {
        server.sim().start_mutator(MutatorConfig {
            ops_per_sec: cli.mutator_ops_per_sec,
            bulk_every: (cli.mutator_bulk_every_secs > 0)
                .then(|| Duration::from_secs(cli.mutator_bulk_every_secs)),
            bulk_size: cli.mutator_bulk_size,
            seed: cli.seed,
            ..MutatorConfig::default()
        })
    });
    shutdown_signal().await;
    if let Some(m) = mutator {
        let stats = m.stop().await;
        println!("mutator: {stats:?}");
    }
    server.stop().await;
    println!("kommo-sim stopped");
    Ok(())
}
