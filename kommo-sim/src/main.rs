//! `kommo-sim` binary: serves a simulated Kommo account until Ctrl-C or SIGTERM.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use kommo_sim::{
    AuthConfig, Bounds, DefaultOrder, Entity, Focus, IgnoredParam, ImsMode, MutatorConfig,
    SimConfig, SimServer, TieOrder,
};

/// A faithful in-memory simulator of the Kommo CRM API v4 (limits included).
///
/// Serves /api/v4/{leads,contacts,companies,tasks,events,account,users,...} (with=contacts /
/// with=leads honoured, custom fields 50 a page, tags) and /oauth2/access_token like a Kommo
/// account, plus /_sim/* control endpoints (health, counters, dump, truth, clock, faults, ban,
/// settings, race, mutate, reference, mutator).
/// Switches for what Kommo leaves undocumented (--ims-mode, --tie-order, --bounds,
/// --ignore-param, --default-order, --race-rate, --max-page-size, --restore-bumps-updated-at,
/// --link-bumps-updated-at) let a client be tested against each way the real API may behave.
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
    /// Background mutator: where edits and deletes strike: uniform (any live entity) or crowd
    /// (entities still on their kind's most crowded updated_at second, found at start).
    #[arg(long, default_value = "uniform", value_parser = |s: &str| s.parse::<Focus>())]
    mutator_focus: Focus,
    /// Background mutator: kinds it touches, comma-separated (default: all four).
    #[arg(long, value_delimiter = ',', value_parser = |s: &str| s.parse::<Entity>())]
    mutator_kinds: Option<Vec<Entity>>,
    /// Background mutator: share of operations that restore a deleted lead, contact or company
    /// (a *_restored event; it reappears in lists).
    #[arg(long, default_value_t = 0.0, value_parser = parse_rate)]
    mutator_restore_ratio: f64,
    /// Background mutator: share of operations that merge a contact or company into another
    /// (entity_merged for the one merged away, which leaves the lists; the kept one is edited).
    #[arg(long, default_value_t = 0.0, value_parser = parse_rate)]
    mutator_merge_ratio: f64,
    /// Background mutator: share of operations that move a lead to another stage, sometimes of
    /// another pipeline (lead_status_changed).
    #[arg(long, default_value_t = 0.0, value_parser = parse_rate)]
    mutator_move_ratio: f64,
    /// Background mutator: share of operations that link a contact to a lead (entity_linked).
    #[arg(long, default_value_t = 0.0, value_parser = parse_rate)]
    mutator_link_ratio: f64,
    /// Background mutator: share of operations that unlink a contact from a lead
    /// (entity_unlinked).
    #[arg(long, default_value_t = 0.0, value_parser = parse_rate)]
    mutator_unlink_ratio: f64,
    /// Whether restoring a deleted entity sets its updated_at to the restore time (true), or
    /// brings it back with the updated_at it had (false: behind a client's updated_at cursor,
    /// only the *_restored event tells).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    restore_bumps_updated_at: bool,
    /// Whether linking or unlinking a lead's contact (and relinking by a merge) sets the lead's
    /// updated_at to now (true), or leaves it (false: only entity_linked / entity_unlinked tell;
    /// lists with with=contacts show the new links either way).
    #[arg(long, default_value_t = false, action = clap::ArgAction::Set, value_name = "BOOL")]
    link_bumps_updated_at: bool,
    /// Whether filter[updated_at|created_at][from|to] include their value: inclusive (>= from,
    /// <= to), exclusive-from (> from), exclusive-to (< to) or exclusive (both). A bare
    /// filter[updated_at]=X always means that second.
    #[arg(long, default_value = "inclusive", value_parser = |s: &str| s.parse::<Bounds>())]
    bounds: Bounds,
    /// Drop a list parameter silently, as if never sent (after validation), as ENTITY:PARAM;
    /// repeatable. ENTITY: leads, contacts, companies, tasks or * (every list). PARAM:
    /// filter[updated_at], filter[created_at], filter[id], filter (every filter: an account whose
    /// API filtering is off; /api/v4/account then says is_api_filter_enabled: false when ENTITY is
    /// *), order[updated_at], order[created_at] or order[id].
    #[arg(long = "ignore-param", value_name = "ENTITY:PARAM", value_parser = |s: &str| s.parse::<IgnoredParam>())]
    ignored: Vec<IgnoredParam>,
    /// Order of entity lists without an honoured order[...]: id-asc, id-desc or updated-at-desc.
    #[arg(long, default_value = "id-asc", value_parser = |s: &str| s.parse::<DefaultOrder>())]
    default_order: DefaultOrder,
    /// Probability (0..=1), per entity list page with items, that one item of the page is edited
    /// after the page was selected and before it is rendered: the body shows the new version
    /// (updated_at = now, beyond the requested window) at the old position.
    #[arg(long, default_value_t = 0.0, value_parser = parse_rate)]
    race_rate: f64,
    /// Silently serve at most N items per entity list page whatever limit asks; links and
    /// offsets follow N (a server that changed its page size without notice). Default: no cap.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    max_page_size: Option<u64>,
    /// Seed an import: N entities of each kind (or all, if fewer) with consecutive ids sharing
    /// one created_at and updated_at second, about a third of the way back (0 = none).
    #[arg(long, default_value_t = 0)]
    import_crowd: usize,
}

/// A probability between 0 and 1.
fn parse_rate(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
        _ => Err(format!("{s:?} is not a probability between 0 and 1")),
    }
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
            bounds: self.bounds,
            ignored: self.ignored.clone(),
            default_order: self.default_order,
            race_rate: self.race_rate,
            max_page_size: self.max_page_size.map(|n| n as usize),
            import_crowd: self.import_crowd,
            restore_bumps_updated_at: self.restore_bumps_updated_at,
            link_bumps_updated_at: self.link_bumps_updated_at,
            ..SimConfig::default()
        }
    }
}

impl Cli {
    fn mutator_config(&self) -> MutatorConfig {
        MutatorConfig {
            ops_per_sec: self.mutator_ops_per_sec,
            bulk_every: (self.mutator_bulk_every_secs > 0)
                .then(|| Duration::from_secs(self.mutator_bulk_every_secs)),
            bulk_size: self.mutator_bulk_size,
            seed: self.seed,
            focus: self.mutator_focus,
            kinds: self.mutator_kinds.clone(),
            restore_ratio: self.mutator_restore_ratio,
            merge_ratio: self.mutator_merge_ratio,
            move_ratio: self.mutator_move_ratio,
            link_ratio: self.mutator_link_ratio,
            unlink_ratio: self.mutator_unlink_ratio,
            ..MutatorConfig::default()
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
    let mutator = (cli.mutator_ops_per_sec > 0 || cli.mutator_bulk_every_secs > 0)
        .then(|| server.sim().start_mutator(cli.mutator_config()));
    shutdown_signal().await;
    if let Some(m) = mutator {
        let stats = m.stop().await;
        println!("mutator: {stats:?}");
    }
    server.stop().await;
    println!("kommo-sim stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;
    use kommo_sim::Param;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("kommo-sim").chain(args.iter().copied()))
    }

    #[test]
    fn defaults_match_sim_config() {
        let cfg = parse(&[]).unwrap().config();
        let d = SimConfig::default();
        assert_eq!(cfg.bounds, d.bounds);
        assert_eq!(cfg.ignored, d.ignored);
        assert_eq!(cfg.default_order, d.default_order);
        assert_eq!(cfg.race_rate, d.race_rate);
        assert_eq!(cfg.max_page_size, d.max_page_size);
        assert_eq!(cfg.import_crowd, d.import_crowd);
        assert_eq!(cfg.restore_bumps_updated_at, d.restore_bumps_updated_at);
        assert_eq!(cfg.link_bumps_updated_at, d.link_bumps_updated_at);
        let m = parse(&[]).unwrap().mutator_config();
        assert_eq!((m.focus, m.kinds), (Focus::Uniform, None));
        let md = MutatorConfig::default();
        assert_eq!(
            [
                m.restore_ratio,
                m.merge_ratio,
                m.move_ratio,
                m.link_ratio,
                m.unlink_ratio
            ],
            [
                md.restore_ratio,
                md.merge_ratio,
                md.move_ratio,
                md.link_ratio,
                md.unlink_ratio
            ]
        );
    }

    #[test]
    fn list_behaviour_flags_parse() {
        let cli = parse(&[
            "--bounds",
            "exclusive-from",
            "--ignore-param",
            "leads:filter[updated_at]",
            "--ignore-param",
            "*:filter",
            "--default-order",
            "updated-at-desc",
            "--race-rate",
            "0.25",
            "--max-page-size",
            "100",
            "--import-crowd",
            "700",
            "--mutator-focus",
            "crowd",
            "--mutator-kinds",
            "leads,tasks",
        ])
        .unwrap();
        let cfg = cli.config();
        assert_eq!(cfg.bounds, Bounds::ExclusiveFrom);
        assert_eq!(
            cfg.ignored,
            vec![
                IgnoredParam {
                    entity: Some(Entity::Leads),
                    param: Param::FilterUpdatedAt
                },
                IgnoredParam {
                    entity: None,
                    param: Param::Filters
                },
            ]
        );
        assert_eq!(cfg.default_order, DefaultOrder::UpdatedAtDesc);
        assert_eq!(cfg.race_rate, 0.25);
        assert_eq!(cfg.max_page_size, Some(100));
        assert_eq!(cfg.import_crowd, 700);
        let m = cli.mutator_config();
        assert_eq!(m.focus, Focus::Crowd);
        assert_eq!(m.kinds, Some(vec![Entity::Leads, Entity::Tasks]));
    }

    #[test]
    fn event_driven_flags_parse() {
        let cli = parse(&[
            "--restore-bumps-updated-at",
            "false",
            "--link-bumps-updated-at",
            "true",
            "--mutator-restore-ratio",
            "0.1",
            "--mutator-merge-ratio",
            "0.05",
            "--mutator-move-ratio",
            "0.2",
            "--mutator-link-ratio",
            "0.15",
            "--mutator-unlink-ratio",
            "0.1",
        ])
        .unwrap();
        let cfg = cli.config();
        assert!(!cfg.restore_bumps_updated_at);
        assert!(cfg.link_bumps_updated_at);
        let m = cli.mutator_config();
        assert_eq!(
            [
                m.restore_ratio,
                m.merge_ratio,
                m.move_ratio,
                m.link_ratio,
                m.unlink_ratio
            ],
            [0.1, 0.05, 0.2, 0.15, 0.1]
        );
        assert!(parse(&["--mutator-move-ratio", "2"]).is_err());
        assert!(parse(&["--link-bumps-updated-at", "maybe"]).is_err());
    }

    #[test]
    fn bad_values_name_the_accepted_forms() {
        let err = |args: &[&str]| parse(args).unwrap_err().to_string();
        let e = err(&["--ignore-param", "deals:filter[id]"]);
        assert!(e.contains("leads, contacts, companies, tasks or *"), "{e}");
        let e = err(&["--ignore-param", "leads:filter[name]"]);
        assert!(
            e.contains("filter[updated_at]") && e.contains("order[id]"),
            "{e}"
        );
        let e = err(&["--ignore-param", "leads"]);
        assert!(e.contains("ENTITY:PARAM"), "{e}");
        assert!(err(&["--bounds", "open"]).contains("exclusive-from"));
        assert!(err(&["--default-order", "random"]).contains("updated-at-desc"));
        assert!(err(&["--race-rate", "1.5"]).contains("probability"));
        assert!(parse(&["--max-page-size", "0"]).is_err());
        assert!(err(&["--mutator-focus", "edges"]).contains("uniform or crowd"));
    }

    #[test]
    fn help_lists_every_new_flag() {
        let help = Cli::command().render_long_help().to_string();
        for flag in [
            "--bounds",
            "--ignore-param",
            "--default-order",
            "--race-rate",
            "--max-page-size",
            "--import-crowd",
            "--mutator-focus",
            "--mutator-kinds",
            "--mutator-restore-ratio",
            "--mutator-merge-ratio",
            "--mutator-move-ratio",
            "--mutator-link-ratio",
            "--mutator-unlink-ratio",
            "--restore-bumps-updated-at",
            "--link-bumps-updated-at",
        ] {
            assert!(help.contains(flag), "{flag} missing from --help");
        }
    }
}
