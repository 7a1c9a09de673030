//! Command line: what each command does, and how it reports.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use chrono::{DateTime, Utc};
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use crate::app::{shutdown_signal, App, SHUTDOWN_GRACE};
use crate::config::Settings;
use crate::kommo::KommoSource;
use crate::store::state::StreamStatus;
use crate::store::Store;

#[derive(Debug, Parser)]
#[command(
    name = "kommo-sync",
    version,
    about = "Mirror a Kommo CRM account into PostgreSQL, incrementally and politely",
    long_about = "Mirror a Kommo CRM account (leads, contacts, companies, tasks) into PostgreSQL, \
incrementally and within Kommo's rate limit (7 requests per second).\n\n\
Settings come from config/default.toml (built in), then the file given with --config, then \
environment variables KOMMO_SYNC__SECTION__KEY (e.g. KOMMO_SYNC__KOMMO__SUBDOMAIN=mycompany, \
KOMMO_SYNC__KOMMO__TOKEN=..., KOMMO_SYNC__DATABASE__URL=postgres://...).",
    after_help = "Exit codes: 0 success (also after SIGTERM/SIGINT), 1 failure (the message says \
why and what to do), 2 bad settings or arguments."
)]
pub struct Cli {
    /// TOML file with settings that override the defaults (see config/default.toml).
    #[arg(
        long,
        short,
        global = true,
        value_name = "FILE",
        env = "KOMMO_SYNC_CONFIG"
    )]
    pub config: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon: each enabled stream on its cron schedule, until SIGTERM or SIGINT.
    Run,
    /// One pass over the streams, then exit (non-zero if any stream failed).
    Sync {
        /// Stream to sync (repeat for several). Default: every enabled stream.
        #[arg(long = "stream", short = 's', value_name = "NAME", value_parser = clap::builder::PossibleValuesParser::new(crate::kommo::stream_names()))]
        streams: Vec<String>,
        /// Start from scratch instead of the stored cursor. Rows are re-read and upserted;
        /// nothing is deleted.
        #[arg(long)]
        full: bool,
    },
    /// Compare entity lists with the mirror by id now, and mark the rows they no longer list
    /// deleted (each is asked for by id first; rows are kept, `deleted_at` is set). The
    /// daemon does this every `sync.reconcile_every_hours`; it catches deletions the event
    /// log no longer shows. Costs one request per 250 entities.
    Reconcile {
        /// Entity stream to compare (repeat for several). Default: every enabled one.
        #[arg(long = "stream", short = 's', value_name = "NAME", value_parser = clap::builder::PossibleValuesParser::new(crate::kommo::entity_stream_names()))]
        streams: Vec<String>,
    },
    /// Show each stream's state, how far it is synced, last success, rows and last error.
    /// Reads the database only: needs no API settings (without an account in the settings,
    /// every account the schema holds is shown) and creates nothing.
    Status {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// Also show when each stream last ran and its whole last error (the table is then
        /// wider than 100 columns).
        #[arg(long)]
        wide: bool,
    },
    /// Apply database migrations and exit.
    Migrate,
    /// Create (if missing) a read-only role for analysts and let it read the mirror: SELECT
    /// on every table and view of the schema, including those later versions add. It gets
    /// nothing in the private schema that holds the OAuth tokens. The role cannot log in;
    /// give it to people: `CREATE ROLE alice LOGIN PASSWORD '...' IN ROLE kommo_reader`.
    AnalystRole {
        /// Name of the role, e.g. kommo_reader (lowercase letters, digits and _).
        name: String,
    },
    /// Print every setting as it takes effect and where it came from (default, the --config
    /// file, or the environment variable that set it); secrets are shown as <redacted>.
    /// Then validate them: exit 2 with the problem and the fix if they are not valid.
    Config,
    /// Validate the settings, reach PostgreSQL, and make one request to the Kommo API.
    Check,
    /// OAuth 2.0 (kommo.auth = "oauth"): store the first token pair, or show the stored one.
    Auth {
        #[command(subcommand)]
        action: AuthAction,
    },
    /// Mirror a generated account from the built-in Kommo simulator into PostgreSQL (schema
    /// `kommo_demo`), then print example queries. Needs no Kommo credentials.
    Demo {
        /// Leads in the generated account.
        #[arg(long, default_value_t = 3000)]
        leads: usize,
        /// Contacts in the generated account.
        #[arg(long, default_value_t = 2000)]
        contacts: usize,
        /// Companies in the generated account.
        #[arg(long, default_value_t = 600)]
        companies: usize,
        /// Tasks in the generated account.
        #[arg(long, default_value_t = 2000)]
        tasks: usize,
        /// Schema for the demo's tables; keep it apart from a real mirror.
        #[arg(long, default_value = "kommo_demo")]
        schema: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum AuthAction {
    /// Trade an authorization code (from the integration's page in Kommo; valid 20 minutes)
    /// for the first access and refresh tokens, and store them in the database.
    Exchange {
        /// The authorization code Kommo shows (or sends to the redirect URI) after a user
        /// allows the integration; single-use, valid 20 minutes.
        #[arg(long)]
        code: String,
    },
    /// Show the auth mode, when the access token expires and how old the refresh token is.
    /// Never prints a token.
    Status,
}

pub async fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Demo {
        leads,
        contacts,
        companies,
        tasks,
        schema,
    } = cli.command
    {
        crate::telemetry::init(crate::config::LogFormat::Text, "warn");
        let opts = crate::demo::DemoOptions {
            leads,
            contacts,
            companies,
            tasks,
            schema,
        };
        return match crate::demo::run(cli.config.as_deref(), opts).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    if let Command::Status { json, wide } = cli.command {
        return status_command(cli.config.as_deref(), json, wide).await;
    }
    if let Command::Config = cli.command {
        return config_command(cli.config.as_deref());
    }
    let settings = match Settings::load(cli.config.as_deref()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    crate::telemetry::init(settings.log.format, &settings.log.level);
    if let Err(e) = runnable(&cli.command, &settings) {
        eprintln!("error: {e}");
        return ExitCode::from(2);
    }
    match execute(cli.command, settings).await {
        Ok(code) => code,
        Err(e) => {
            tracing::error!(error.cause_chain = ?e, error.message = %e, "failed");
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `config`: the effective settings, where each came from, then whether they are valid.
fn config_command(file: Option<&std::path::Path>) -> ExitCode {
    let explained = match Settings::explain(file, std::env::vars()) {
        Ok(e) => e,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let width = explained.iter().map(|e| e.key.len()).max().unwrap_or(0);
    for e in &explained {
        let from = match &e.origin {
            crate::config::Origin::Default => "default".to_string(),
            crate::config::Origin::File => format!(
                "file {}",
                file.map(|f| f.display().to_string()).unwrap_or_default()
            ),
            crate::config::Origin::Environment(var) => format!("env {var}"),
        };
        let value = if e.value.is_empty() {
            "\"\"".to_string()
        } else {
            e.value.clone()
        };
        println!("{:<width$}  {value:<40}  ({from})", e.key);
    }
    match Settings::load_from(file, std::env::vars()) {
        Ok(_) => {
            println!("\nsettings: valid");
            ExitCode::SUCCESS
        }
        Err(e) => {
            println!("\nsettings: NOT valid");
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}

/// SIGTERM or SIGINT cancels a one-shot command: waits end early, no new page starts.
fn cancel_on_shutdown(cancel: &CancellationToken) {
    let cancel = cancel.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        cancel.cancel();
    });
}

/// One process per account: a one-shot command runs only while no other process (a daemon,
/// another `sync`) syncs the account, or the two would share Kommo's limit unknowingly.
async fn hold_the_account(app: &App) -> anyhow::Result<crate::store::lease::Lease> {
    match app.take_lease().await? {
        Some(lease) => Ok(lease),
        None => anyhow::bail!(
            "another kommo-sync process is syncing account {} into schema `{}` right now (a \
             daemon, or another sync); two would share Kommo's rate limit and draw 429s. Its \
             runs cover this one: wait for it, or stop it and run this again",
            app.settings.kommo.account_key(),
            app.store.schema()
        ),
    }
}

/// `status`: reads the database only, so it needs only the database settings; without an
/// account in the settings it shows every account the schema holds. Creates nothing.
async fn status_command(config: Option<&std::path::Path>, json: bool, wide: bool) -> ExitCode {
    let settings = match Settings::load_for_reading(config, std::env::vars()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    crate::telemetry::init(settings.log.format, &settings.log.level);
    let shown = async {
        let store = Store::open(&settings.database).await?;
        store.require_mirror().await?;
        let rows = store
            .status(settings.account.as_deref(), &crate::app::stream_tables())
            .await?;
        if json {
            println!("{}", serde_json::to_string_pretty(&rows)?);
        } else {
            print!("{}", status_table(&rows, wide));
            if rows.is_empty() {
                if let Some(account) = &settings.account {
                    println!(
                        "(nothing stored for account {account} in schema `{}`; leave \
                         kommo.base_url and kommo.subdomain unset to see every account)",
                        store.schema()
                    );
                }
            }
        }
        anyhow::Ok(())
    };
    match shown.await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Settings that are valid in general but leave a command nothing to do: said before any
/// connection is made, as a settings error (exit 2), so that systemd shows why `run` failed.
fn runnable(command: &Command, settings: &Settings) -> Result<(), String> {
    let no_streams = "no stream is enabled: set streams.<name>.enabled = true for at least one \
                      stream (KOMMO_SYNC__STREAMS__LEADS__ENABLED=true)";
    match command {
        Command::Run if settings.enabled_streams().is_empty() => Err(no_streams.into()),
        Command::Sync { streams, .. }
            if streams.is_empty() && settings.enabled_streams().is_empty() =>
        {
            Err(format!("{no_streams}, or name them with --stream"))
        }
        Command::Reconcile { streams }
            if streams.is_empty()
                && !crate::kommo::entity_stream_names()
                    .any(|n| settings.enabled_streams().iter().any(|e| e == n)) =>
        {
            Err(format!(
                "no entity stream is enabled, so there is no list to compare: enable one \
                 (KOMMO_SYNC__STREAMS__LEADS__ENABLED=true), or name it with --stream ({})",
                crate::kommo::entity_stream_names()
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        }
        _ => Ok(()),
    }
}

async fn execute(command: Command, settings: Settings) -> anyhow::Result<ExitCode> {
    match command {
        Command::Migrate => {
            let store = Store::connect(&settings.database).await?;
            store.migrate().await?;
            println!("migrations applied to schema `{}`", store.schema());
            Ok(ExitCode::SUCCESS)
        }
        Command::AnalystRole { name } => {
            if !crate::config::is_identifier(&name) {
                eprintln!(
                    "error: `{name}` is not a plain role name. Fix: use lowercase letters, digits \
                     and _, starting with a letter or _"
                );
                return Ok(ExitCode::from(2));
            }
            let store = Store::connect(&settings.database).await?;
            store.migrate().await?;
            store.grant_read(&name).await?;
            println!(
                "role `{name}` may read schema `{}` (tables and views, also future ones); it \
                 cannot log in: grant it to users with GRANT {name} TO alice",
                store.schema()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Status { .. } => unreachable!("handled before the API settings are loaded"),
        Command::Config => unreachable!("handled before the settings are loaded"),
        Command::Check => {
            println!("settings: ok ({})", settings.kommo.base_url);
            // Checks only: a missing database or schema is reported, never created.
            let store = Store::open(&settings.database).await?;
            let pending = store.pending_migrations().await?;
            let schema = store.schema();
            let mirror = match pending {
                0 => {
                    println!("database: ok (schema `{schema}` up to date)");
                    true
                }
                n if store.require_mirror().await.is_err() => {
                    println!(
                        "database: ok; schema `{schema}` holds no mirror yet ({n} migrations \
                         to apply: `kommo-sync migrate`, `sync` or `run` create it)"
                    );
                    false
                }
                n => {
                    println!(
                        "database: ok; schema `{schema}` has {n} migration(s) to apply (`kommo-sync \
                         migrate`, `sync` or `run` apply them)"
                    );
                    true
                }
            };
            if !mirror && matches!(settings.kommo.auth, crate::config::AuthSettings::OAuth(_)) {
                anyhow::bail!(
                    "OAuth keeps its tokens in the mirror's schema, which does not exist yet: run \
                     `kommo-sync migrate`, then `kommo-sync auth exchange --code CODE`"
                );
            }
            let metrics = std::sync::Arc::new(crate::metrics::Metrics::new());
            let client = if mirror {
                crate::app::client(&settings, &store, &CancellationToken::new(), &metrics).await?
            } else {
                std::sync::Arc::new(crate::kommo::KommoClient::new(
                    &settings.kommo,
                    CancellationToken::new(),
                    metrics,
                    None,
                )?)
            };
            let account = KommoSource::new(client)
                .account()
                .await
                .context("Kommo API")?;
            println!(
                "kommo: ok (account {} \"{}\")",
                account.get("id").map(|v| v.to_string()).unwrap_or_default(),
                account.get("name").and_then(|v| v.as_str()).unwrap_or("")
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Sync { streams, full } => {
            let cancel = CancellationToken::new();
            let shown = if streams.is_empty() {
                settings.enabled_streams()
            } else {
                streams.clone()
            };
            let app = App::build_with(settings, cancel.clone(), progress_display(&shown)).await?;
            let _lease = hold_the_account(&app).await?;
            cancel_on_shutdown(&cancel);
            let result = app.sync_once(&streams, full).await;
            // A token refresh in flight ends with its commit, or the next start is locked out.
            app.client.settle().await;
            match result {
                Ok(reports) => {
                    for r in &reports {
                        println!(
                            "{:<10} requests {:>5}  pages {:>5}  rows seen {:>7}  written {:>7}{}",
                            r.stream,
                            r.counts.requests,
                            r.counts.pages,
                            r.counts.rows_seen,
                            r.counts.rows_written,
                            if r.cancelled() {
                                "  (stopped early)"
                            } else {
                                ""
                            }
                        );
                    }
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => Err(e.into()),
            }
        }
        Command::Reconcile { streams } => {
            let cancel = CancellationToken::new();
            let app = App::build(settings, cancel.clone()).await?;
            let _lease = hold_the_account(&app).await?;
            cancel_on_shutdown(&cancel);
            let result = app.reconcile(&streams).await;
            app.client.settle().await;
            for (stream, done) in result? {
                match done {
                    Some(d) => println!(
                        "{stream:<10} requests {:>5}  listed {:>7}  not listed {:>5}  marked deleted {:>5}  found again {:>5}",
                        d.requests, d.listed, d.candidates, d.gone, d.found
                    ),
                    None => println!("{stream:<10} not compared (stopped, or compared less than a minute ago)"),
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Demo { .. } => unreachable!("handled before settings are loaded"),
        Command::Auth { action } => auth_command(action, settings).await,
        Command::Run => {
            let cancel = CancellationToken::new();
            let app = App::build(settings, cancel.clone()).await?;
            let (client, request_timeout) =
                (app.client.clone(), app.settings.kommo.request_timeout);
            let mut daemon = tokio::spawn(app.run_until_stopped());
            tokio::select! {
                // The daemon ended by itself: a fatal error (the side server's port taken,
                // the schedule could not start). Exit now with the reason, non-zero, so that
                // systemd restarts it or shows it failed, instead of idling until SIGTERM.
                ended = &mut daemon => {
                    return match ended {
                        Ok(Ok(())) => Err(anyhow::anyhow!(
                            "the schedule stopped without a shutdown request"
                        )),
                        Ok(Err(e)) => Err(e),
                        Err(join) => Err(join.into()),
                    };
                }
                _ = shutdown_signal() => {}
            }
            cancel.cancel();
            match tokio::time::timeout(SHUTDOWN_GRACE, daemon).await {
                Ok(Ok(result)) => result?,
                Ok(Err(join)) => return Err(join.into()),
                Err(_) => {
                    tracing::warn!(
                        grace_secs = SHUTDOWN_GRACE.as_secs(),
                        "runs did not stop in time; exiting (uncommitted pages are rolled back)"
                    );
                    // Never cut a token refresh short (bounded by its request timeout).
                    let _ = tokio::time::timeout(request_timeout, client.settle()).await;
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn auth_command(action: AuthAction, settings: Settings) -> anyhow::Result<ExitCode> {
    let oauth = matches!(settings.kommo.auth, crate::config::AuthSettings::OAuth(_));
    match action {
        AuthAction::Exchange { code } => {
            if !oauth {
                eprintln!(
                    "error: kommo.auth is \"long_lived_token\"; set kommo.auth = \"oauth\" \
                     (KOMMO_SYNC__KOMMO__AUTH=oauth) and the [oauth] settings first"
                );
                return Ok(ExitCode::from(2));
            }
            let app = App::build(settings, CancellationToken::new()).await?;
            let crate::kommo::auth::Auth::OAuth(o) = app.client.auth() else {
                unreachable!("checked above")
            };
            let expires_in = o.exchange(&code).await?;
            println!(
                "tokens stored for {}; the access token is valid for {} and is refreshed automatically",
                app.settings.kommo.account_key(),
                human_duration(expires_in)
            );
            Ok(ExitCode::SUCCESS)
        }
        AuthAction::Status => {
            if !oauth {
                println!("auth: long-lived token (kommo.token); nothing is stored or refreshed");
                return Ok(ExitCode::SUCCESS);
            }
            let store = Store::connect(&settings.database).await?;
            store.migrate().await?;
            let account = settings.kommo.account_key();
            match store.load_tokens(&account).await? {
                None => {
                    println!("auth: oauth; no tokens stored for {account}: run `kommo-sync auth exchange --code CODE`");
                    Ok(ExitCode::FAILURE)
                }
                Some(t) => {
                    let expiry = if t.expires_in_secs >= 0.0 {
                        format!("in {}", human_duration(t.expires_in_secs as i64))
                    } else {
                        format!(
                            "{} ago (refreshed on next use)",
                            human_duration(-t.expires_in_secs as i64)
                        )
                    };
                    println!("auth:          oauth ({account})");
                    println!(
                        "state:         {}",
                        if t.state == crate::tokens::TokenState::Ok {
                            "ok"
                        } else {
                            "locked out (refresh token revoked)"
                        }
                    );
                    println!(
                        "access token:  expires {} ({expiry})",
                        t.access_expires_at.format("%Y-%m-%d %H:%M:%S UTC")
                    );
                    println!(
                        "refresh token: issued {} ({} old; Kommo keeps it about 3 months)",
                        t.refresh_issued_at.format("%Y-%m-%d %H:%M:%S UTC"),
                        human_duration((Utc::now() - t.refresh_issued_at).num_seconds())
                    );
                    if let Some(e) = &t.last_error {
                        println!("last error:    {e}");
                    }
                    Ok(if t.state == crate::tokens::TokenState::Ok {
                        ExitCode::SUCCESS
                    } else {
                        ExitCode::FAILURE
                    })
                }
            }
        }
    }
}

fn when(t: Option<DateTime<Utc>>) -> String {
    t.map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
        .unwrap_or_else(|| "-".into())
}

/// Human name of a stream state, as the status table shows it.
fn state_name(state: &str) -> &str {
    match state {
        "backing_off" => "backing off",
        "locked_out" => "locked out",
        other => other,
    }
}

/// The `status` table: one line per stream, within 100 columns (`wide`: when each stream
/// last ran and succeeded, and the whole last error). Lag is how far the mirror is behind
/// now. Rows of several accounts are grouped under a line naming each.
pub fn status_table(rows: &[StreamStatus], wide: bool) -> String {
    if rows.is_empty() {
        return "no stream has run yet\n".into();
    }
    let line = |cells: [&str; 5], extra: [&str; 2], error: &str| {
        let mut l = format!(
            "{:<21} {:<21} {:<16} {:>7} {:>9}",
            cells[0], cells[1], cells[2], cells[3], cells[4]
        );
        if wide {
            l.push_str(&format!(" {:<19} {:<19}", extra[0], extra[1]));
            l.push_str(&format!("  {error}"));
        } else {
            // What is left of 100 columns.
            let room = 100usize.saturating_sub(l.chars().count() + 2);
            let mut e: String = error.chars().take(room).collect();
            if error.chars().count() > room {
                e.pop();
                e.push('…');
            }
            l.push_str(&format!("  {e}"));
        }
        l.trim_end().to_string() + "\n"
    };
    let several = rows.iter().any(|r| r.account != rows[0].account);
    let mut out = line(
        ["STREAM", "STATE", "SYNCED UP TO", "LAG", "ROWS"],
        ["LAST STARTED", "LAST SUCCESS"],
        "LAST ERROR",
    );
    let mut account = None;
    for r in rows {
        if several && account != Some(&r.account) {
            out.push_str(&format!("account {}\n", r.account));
            account = Some(&r.account);
        }
        let upto =
            crate::sync::synced_up_to(&r.cursor).and_then(|u| DateTime::from_timestamp(u, 0));
        let lag = upto
            .map(|u| human_duration((Utc::now() - u).num_seconds()))
            .unwrap_or_else(|| "-".into());
        let mut state = state_name(&r.state).to_string();
        if let Some(until) = r.blocked_until.filter(|u| *u > Utc::now()) {
            state = format!("{state} until {}", until.format("%H:%M:%S"));
        }
        let minutes = |t: Option<DateTime<Utc>>| {
            t.map(|t| t.format("%Y-%m-%d %H:%M").to_string())
                .unwrap_or_else(|| "-".into())
        };
        out.push_str(&line(
            [&r.stream, &state, &minutes(upto), &lag, &r.rows.to_string()],
            [&when(r.last_started_at), &when(r.last_success_at)],
            r.last_error.as_deref().unwrap_or("-"),
        ));
    }
    out
}

fn human_duration(secs: i64) -> String {
    let secs = secs.max(0);
    match secs {
        0..=119 => format!("{secs}s"),
        120..=7199 => format!("{}m", secs / 60),
        7200..=172_799 => format!("{}h", secs / 3600),
        _ => format!("{}d", secs / 86_400),
    }
}

/// Spinners for an interactive `sync`: one line per stream with rows and requests per second.
/// Nothing is drawn when stderr is not a terminal.
fn progress_display(streams: &[String]) -> Option<crate::sync::run::ProgressFn> {
    use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
    use std::collections::HashMap;
    use std::io::IsTerminal;
    if !std::io::stderr().is_terminal() {
        return None;
    }
    let multi = MultiProgress::new();
    let style =
        ProgressStyle::with_template("{spinner} {prefix:<10} {msg}").expect("valid template");
    let started = std::time::Instant::now();
    let bars: HashMap<String, ProgressBar> = streams
        .iter()
        .map(|s| {
            let bar = multi.add(ProgressBar::new_spinner());
            bar.set_style(style.clone());
            bar.set_prefix(s.clone());
            bar.enable_steady_tick(std::time::Duration::from_millis(120));
            (s.clone(), bar)
        })
        .collect();
    Some(std::sync::Arc::new(
        move |stream: &str, c: &crate::store::state::RunCounts| {
            if let Some(bar) = bars.get(stream) {
                let secs = started.elapsed().as_secs_f64().max(0.001);
                bar.set_message(format!(
                    "{:>8} rows  {:>5} requests  {:>6.0} rows/s  {:>4.1} req/s",
                    c.rows_seen,
                    c.requests,
                    c.rows_seen as f64 / secs,
                    c.requests as f64 / secs
                ));
            }
        },
    ))
}
