//! Logging: readable text on a terminal, JSON lines otherwise (systemd, docker).

use std::io::IsTerminal;

use tracing_subscriber::{fmt, EnvFilter};

use crate::config::LogFormat;

/// Installs the global subscriber. `RUST_LOG` overrides `level`. Logs go to stderr, so that
/// stdout stays clean for command output (`status --json`).
pub fn init(format: LogFormat, level: &str) {
    // `level` is validated with the settings; Postgres' notices ("schema already exists,
    // skipping") are noise at every start.
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(level))
        .unwrap_or_else(|_| EnvFilter::new("info"))
        .add_directive(
            "sqlx::postgres::notice=warn"
                .parse()
                .expect("a valid directive"),
        )
        // The scheduler library's own bookkeeping, at INFO, says nothing an operator needs.
        .add_directive(
            "tokio_cron_scheduler=warn"
                .parse()
                .expect("a valid directive"),
        );
    let json = match format {
        LogFormat::Json => true,
        LogFormat::Text => false,
        LogFormat::Auto => !std::io::stderr().is_terminal(),
    };
    let builder = fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let result = if json {
        builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .try_init()
    } else {
        builder.with_target(false).try_init()
    };
    // A second init (tests) keeps the first subscriber.
    let _ = result;
}
