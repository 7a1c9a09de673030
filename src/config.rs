//! Settings: `config/default.toml` (built in) → `--config FILE` → `KOMMO_SYNC__SECTION__KEY`.
//!
//! This is the only module that reads the environment. Everything is validated here, once,
//! so that a wrong setting fails at start with a message naming the key and the fix, instead
//! of surfacing later as a confusing network or SQL error.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use sqlx::postgres::PgConnectOptions;
use url::Url;

/// The defaults, built into the binary so that it runs without the `config/` folder.
pub const DEFAULT_TOML: &str = include_str!("../config/default.toml");

/// Prefix of environment overrides: `KOMMO_SYNC__KOMMO__TOKEN` sets `kommo.token`.
pub const ENV_PREFIX: &str = "KOMMO_SYNC";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration: {0}")]
    Load(#[from] config::ConfigError),
    #[error("configuration key `{key}`: {problem}. Fix: {fix}")]
    Invalid {
        key: String,
        problem: String,
        fix: String,
    },
    #[error("configuration key `{key}`: cannot read file {path}: {source}")]
    File {
        key: String,
        path: PathBuf,
        source: std::io::Error,
    },
}

/// A level, or a filter of `target=level` directives with at most one bare level. (A bare
/// word is a valid filter for `tracing` — a target name — so "loud" would silently log
/// nothing but errors of a target that does not exist.)
fn is_log_filter(filter: &str) -> bool {
    const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];
    let level = |l: &str| LEVELS.contains(&l.trim().to_ascii_lowercase().as_str());
    !filter.trim().is_empty()
        && filter.split(',').all(|d| match d.split_once('=') {
            None => level(d),
            Some((target, l)) => !target.trim().is_empty() && level(l),
        })
}

fn validate_log(log: &LogSettings) -> Result<(), ConfigError> {
    if is_log_filter(&log.level) {
        return Ok(());
    }
    Err(invalid(
        "log.level",
        format!("`{}` is not a log level or filter", log.level),
        "use error, warn, info, debug or trace (or a filter like \"info,kommo_sync=debug\")",
    ))
}

fn invalid(key: &str, problem: impl Into<String>, fix: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        problem: problem.into(),
        fix: fix.into(),
    }
}

/// Raw shape of the configuration tree; unknown keys are errors so that typos are caught.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSettings {
    kommo: RawKommo,
    oauth: RawOAuth,
    database: RawDatabase,
    sync: SyncSettings,
    streams: BTreeMap<String, StreamSettings>,
    server: RawServer,
    log: LogSettings,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
    listen: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKommo {
    auth: AuthMode,
    subdomain: String,
    base_url: String,
    allow_insecure_http: bool,
    token: SecretString,
    token_file: String,
    max_rps: u32,
    spacing_margin_ms: u64,
    page_size: u32,
    connect_timeout_secs: u64,
    request_timeout_secs: u64,
    max_retries: u32,
    ban_backoff_secs: u64,
    ban_backoff_max_secs: u64,
}

// Hand-written so that no secret can reach `Debug` output, even by a future `{:?}`.
impl std::fmt::Debug for RawKommo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawKommo")
            .field("subdomain", &self.subdomain)
            .field("base_url", &self.base_url)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum AuthMode {
    LongLivedToken,
    Oauth,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOAuth {
    client_id: String,
    client_secret: SecretString,
    client_secret_file: String,
    redirect_uri: String,
    refresh_margin_secs: u64,
}

impl std::fmt::Debug for RawOAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawOAuth")
            .field("client_id", &self.client_id)
            .finish_non_exhaustive()
    }
}

/// How the daemon authenticates to Kommo.
#[derive(Clone)]
pub enum AuthSettings {
    LongLivedToken(SecretString),
    OAuth(OAuthSettings),
}

#[derive(Clone)]
pub struct OAuthSettings {
    pub client_id: String,
    pub client_secret: SecretString,
    pub redirect_uri: String,
    pub refresh_margin: Duration,
}

impl std::fmt::Debug for AuthSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AuthSettings::LongLivedToken(_) => f.write_str("LongLivedToken([redacted])"),
            AuthSettings::OAuth(o) => f
                .debug_struct("OAuth")
                .field("client_id", &o.client_id)
                .field("client_secret", &"[redacted]")
                .field("redirect_uri", &o.redirect_uri)
                .field("refresh_margin", &o.refresh_margin)
                .finish(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDatabase {
    url: SecretString,
    password_file: String,
    schema: String,
    max_connections: u32,
}

impl std::fmt::Debug for RawDatabase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawDatabase")
            .field("schema", &self.schema)
            .finish_non_exhaustive()
    }
}

/// Validated settings, ready to use.
#[derive(Debug, Clone)]
pub struct Settings {
    pub kommo: KommoSettings,
    pub database: DatabaseSettings,
    pub sync: SyncSettings,
    pub streams: BTreeMap<String, StreamSettings>,
    /// Side server address; `None` when off.
    pub server_listen: Option<std::net::SocketAddr>,
    pub log: LogSettings,
}

/// How far [`layered`] stacks the sources.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Layer {
    Defaults,
    File,
    Environment,
}

/// The built-in defaults, then the file, then the environment, up to `upto`.
fn layered(
    file: Option<&Path>,
    env: impl IntoIterator<Item = (String, String)>,
    upto: Layer,
) -> Result<config::Config, ConfigError> {
    let mut builder = config::Config::builder().add_source(config::File::from_str(
        DEFAULT_TOML,
        config::FileFormat::Toml,
    ));
    if let Some(path) = file {
        if !path.exists() {
            return Err(invalid(
                "--config",
                format!("file {} does not exist", path.display()),
                "give the path of a TOML file, or leave --config out to use the defaults",
            ));
        }
        if upto >= Layer::File {
            builder = builder.add_source(
                config::File::from(path.to_path_buf()).format(config::FileFormat::Toml),
            );
        }
    }
    if upto >= Layer::Environment {
        let env: config::Map<String, String> = env
            .into_iter()
            .filter(|(k, _)| k.starts_with(&format!("{ENV_PREFIX}__")))
            .collect();
        builder = builder.add_source(
            config::Environment::with_prefix(ENV_PREFIX)
                .prefix_separator("__")
                .separator("__")
                .try_parsing(true)
                .source(Some(env)),
        );
    }
    Ok(builder.build()?)
}

fn flatten(
    prefix: &str,
    map: &config::Map<String, config::Value>,
    out: &mut BTreeMap<String, String>,
) {
    for (k, v) in map {
        let key = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        match &v.kind {
            config::ValueKind::Table(t) => flatten(&key, t, out),
            _ => {
                out.insert(key, v.to_string());
            }
        }
    }
}

/// A setting's value as it may be shown: secrets never are.
fn redacted(key: &str, value: &str) -> String {
    let leaf = key.rsplit('.').next().unwrap_or(key);
    if value.is_empty() {
        return String::new();
    }
    if matches!(leaf, "token" | "client_secret" | "password") {
        return "<redacted>".into();
    }
    if leaf == "url" {
        if let Ok(mut url) = Url::parse(value) {
            if url.password().is_some() {
                let _ = url.set_password(Some("redacted"));
            }
            return url.to_string();
        }
    }
    value.to_string()
}

/// Where a setting's value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    Default,
    File,
    /// The variable that set it.
    Environment(String),
}

/// One setting, as `kommo-sync config` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Explained {
    pub key: String,
    pub value: String,
    pub origin: Origin,
}

/// Settings of a command that only reads the database; see [`Settings::load_for_reading`].
#[derive(Debug, Clone)]
pub struct ReadingSettings {
    pub database: DatabaseSettings,
    pub log: LogSettings,
    /// The account whose streams to show (`None`: every account stored).
    pub account: Option<String>,
}

#[derive(Clone)]
pub struct KommoSettings {
    pub base_url: Url,
    pub auth: AuthSettings,
    pub max_rps: u32,
    /// Any 8 consecutive requests leave at least 1 s + this apart (network jitter on the way
    /// to Kommo must not put 8 into one of its seconds).
    pub spacing_margin: Duration,
    pub page_size: u32,
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    pub max_retries: u32,
    pub ban_backoff: Duration,
    pub ban_backoff_max: Duration,
}

impl KommoSettings {
    /// A short name of the account, used as the key of its rows in `sync_state`: the host.
    pub fn account_key(&self) -> String {
        account_key_of(&self.base_url)
    }
}

impl std::fmt::Debug for KommoSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KommoSettings")
            .field("base_url", &self.base_url.as_str())
            .field("auth", &self.auth)
            .field("max_rps", &self.max_rps)
            .field("spacing_margin", &self.spacing_margin)
            .field("page_size", &self.page_size)
            .field("connect_timeout", &self.connect_timeout)
            .field("request_timeout", &self.request_timeout)
            .field("max_retries", &self.max_retries)
            .field("ban_backoff", &self.ban_backoff)
            .field("ban_backoff_max", &self.ban_backoff_max)
            .finish()
    }
}

#[derive(Clone)]
pub struct DatabaseSettings {
    /// Holds the parsed URL with its password; never printed.
    pub connect: PgConnectOptions,
    pub schema: String,
    pub max_connections: u32,
}

impl std::fmt::Debug for DatabaseSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DatabaseSettings")
            .field("host", &self.connect.get_host())
            .field("port", &self.connect.get_port())
            .field("database", &self.connect.get_database())
            .field("user", &self.connect.get_username())
            .field("password", &"[redacted]")
            .field("schema", &self.schema)
            .field("max_connections", &self.max_connections)
            .finish()
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyncSettings {
    pub lag_secs: i64,
    pub max_clock_jump_secs: i64,
    pub parallelism: usize,
    pub run_at_startup: bool,
    /// Hours between comparisons of each entity list with the mirror by id; 0: never.
    pub reconcile_every_hours: u32,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamSettings {
    pub enabled: bool,
    pub schedule: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogSettings {
    pub format: LogFormat,
    pub level: String,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Auto,
    Text,
    Json,
}

impl Settings {
    /// Loads defaults, then the optional file, then the process environment.
    pub fn load(file: Option<&Path>) -> Result<Settings, ConfigError> {
        Self::load_from(file, std::env::vars())
    }

    /// Like [`Settings::load`] with an explicit environment, so tests need not mutate the
    /// process environment (which would race with other tests).
    pub fn load_from(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Settings, ConfigError> {
        Self::validate(Self::raw(file, env)?)
    }

    /// What a command that only reads the database needs (`status`): the database and log
    /// settings, validated; the Kommo account when the settings name one, else `None` (every
    /// account stored is shown). No API setting is required.
    pub fn load_for_reading(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<ReadingSettings, ConfigError> {
        let raw = Self::raw(file, env)?;
        validate_log(&raw.log)?;
        let account = base_url_of(&raw.kommo)?.as_ref().map(account_key_of);
        Ok(ReadingSettings {
            database: validate_database(raw.database)?,
            log: raw.log,
            account,
        })
    }

    fn raw(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<RawSettings, ConfigError> {
        Ok(layered(file, env, Layer::Environment)?.try_deserialize()?)
    }

    /// Every setting as it takes effect, with where it came from (`kommo-sync config`).
    /// Secrets are shown as `<redacted>` (a database URL without its password). Works on
    /// settings that do not validate, so that it can show what is wrong.
    pub fn explain(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Vec<Explained>, ConfigError> {
        let env: Vec<(String, String)> = env.into_iter().collect();
        let flat = |layer| -> Result<BTreeMap<String, String>, ConfigError> {
            let mut out = BTreeMap::new();
            flatten(
                "",
                &layered(file, env.clone(), layer)?
                    .try_deserialize::<config::Map<String, config::Value>>()?,
                &mut out,
            );
            Ok(out)
        };
        let (defaults, filed, all) = (
            flat(Layer::Defaults)?,
            flat(Layer::File)?,
            flat(Layer::Environment)?,
        );
        Ok(all
            .iter()
            .map(|(key, value)| {
                let origin = if filed.get(key) != Some(value) {
                    Origin::Environment(format!(
                        "{ENV_PREFIX}__{}",
                        key.replace('.', "__").to_uppercase()
                    ))
                } else if defaults.get(key) != Some(value) {
                    Origin::File
                } else {
                    Origin::Default
                };
                Explained {
                    key: key.clone(),
                    value: redacted(key, value),
                    origin,
                }
            })
            .collect())
    }

    fn validate(raw: RawSettings) -> Result<Settings, ConfigError> {
        let kommo = validate_kommo(raw.kommo, raw.oauth)?;
        let database = validate_database(raw.database)?;
        if raw.sync.max_clock_jump_secs < 1 {
            return Err(invalid(
                "sync.max_clock_jump_secs",
                format!("{} is below 1", raw.sync.max_clock_jump_secs),
                "use 600 (ten minutes), or more for one run if the server's clock really moved",
            ));
        }
        if raw.sync.lag_secs < 1 {
            return Err(invalid(
                "sync.lag_secs",
                format!("{} is below 1", raw.sync.lag_secs),
                "use at least 1 (the default 300 covers Kommo's eventually consistent lists)",
            ));
        }
        if raw.sync.parallelism == 0 || raw.sync.parallelism > 16 {
            return Err(invalid(
                "sync.parallelism",
                "must be between 1 and 16",
                "use 8 (the default)",
            ));
        }
        // The streams are the source's own declarations; a `[streams.X]` block for any
        // other name is a typo.
        let known: Vec<&str> = crate::kommo::stream_names().collect();
        for (name, stream) in &raw.streams {
            if !known.contains(&name.as_str()) {
                return Err(invalid(
                    &format!("streams.{name}"),
                    "unknown stream",
                    format!("use one of: {}", known.join(", ")),
                ));
            }
            croner::Cron::new(&stream.schedule)
                .with_seconds_required()
                .parse()
                .map_err(|e| {
                    invalid(
                    &format!("streams.{name}.schedule"),
                    format!("`{}` is not a cron expression with seconds: {e}", stream.schedule),
                    "write six fields, \"sec min hour day month weekday\", e.g. \"0 */5 * * * *\"",
                )
                })?;
        }
        let listen = raw.server.listen.trim();
        let server_listen = if listen.is_empty() {
            None
        } else {
            Some(listen.parse().map_err(|_| {
                invalid(
                    "server.listen",
                    format!("`{listen}` is not an address with a port"),
                    "write it like 127.0.0.1:9187, or leave it empty to turn the side server off",
                )
            })?)
        };
        validate_log(&raw.log)?;
        Ok(Settings {
            kommo,
            database,
            sync: raw.sync,
            streams: raw.streams,
            server_listen,
            log: raw.log,
        })
    }

    /// Names of enabled streams, in a stable order.
    pub fn enabled_streams(&self) -> Vec<String> {
        self.streams
            .iter()
            .filter(|(_, s)| s.enabled)
            .map(|(n, _)| n.clone())
            .collect()
    }
}

/// The account's base URL as the settings give it, `None` when they give none.
fn base_url_of(raw: &RawKommo) -> Result<Option<Url>, ConfigError> {
    let base = if !raw.base_url.trim().is_empty() {
        raw.base_url.trim().to_string()
    } else if !raw.subdomain.trim().is_empty() {
        let sub = raw.subdomain.trim();
        if !sub.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
            return Err(invalid(
                "kommo.subdomain",
                format!("`{sub}` is not a subdomain"),
                "give only the first label of your account's host, e.g. `mycompany` for https://mycompany.kommo.com",
            ));
        }
        format!("https://{sub}.kommo.com")
    } else {
        return Ok(None);
    };
    Url::parse(&base).map(Some).map_err(|e| {
        invalid(
            "kommo.base_url",
            format!("`{base}` is not a URL: {e}"),
            "write it like https://mycompany.kommo.com",
        )
    })
}

/// How the store names an account: its host, and its port when it has one.
fn account_key_of(url: &Url) -> String {
    let host = url.host_str().unwrap_or("unknown");
    match url.port() {
        Some(p) => format!("{host}:{p}"),
        None => host.to_string(),
    }
}

fn validate_kommo(raw: RawKommo, oauth: RawOAuth) -> Result<KommoSettings, ConfigError> {
    let base_url = base_url_of(&raw)?.ok_or_else(|| {
        invalid(
            "kommo.subdomain",
            "neither kommo.subdomain nor kommo.base_url is set",
            "set KOMMO_SYNC__KOMMO__SUBDOMAIN=mycompany (for https://mycompany.kommo.com) or KOMMO_SYNC__KOMMO__BASE_URL",
        )
    })?;
    let base = base_url.as_str().trim_end_matches('/').to_string();
    match base_url.scheme() {
        "https" => {}
        "http" if raw.allow_insecure_http => {}
        "http" => {
            return Err(invalid(
                "kommo.base_url",
                format!("`{base}` uses plain http, which would send the token unencrypted"),
                "use https://, or set kommo.allow_insecure_http = true for the local simulator",
            ))
        }
        other => {
            return Err(invalid(
                "kommo.base_url",
                format!("unsupported scheme `{other}`"),
                "use https://",
            ))
        }
    }
    if base_url.host_str() == Some("www.kommo.com") {
        return Err(invalid(
            "kommo.base_url",
            "www.kommo.com is not an account host",
            "use your account's own host, https://{subdomain}.kommo.com",
        ));
    }
    let auth = match raw.auth {
        AuthMode::LongLivedToken => {
            let token = read_secret(raw.token, &raw.token_file, "kommo.token_file")?;
            if token.expose_secret().is_empty() {
                return Err(invalid(
                    "kommo.token",
                    "no API token is configured",
                    "set KOMMO_SYNC__KOMMO__TOKEN, or kommo.token_file to a file holding the long-lived token \
                     (or use kommo.auth = \"oauth\")",
                ));
            }
            if token
                .expose_secret()
                .chars()
                .any(|c| c.is_control() || c == ' ')
            {
                // Never echoed: it is a secret. A pasted newline or space would make every
                // request fail to build ("builder error") and be retried for nothing.
                return Err(invalid(
                    "kommo.token",
                    "the token holds a space or a control character (a pasted line break?)",
                    "set the token alone, without quotes, spaces or line breaks (a trailing \
                     newline in kommo.token_file is fine)",
                ));
            }
            AuthSettings::LongLivedToken(token)
        }
        AuthMode::Oauth => AuthSettings::OAuth(validate_oauth(oauth)?),
    };
    if raw.max_rps == 0 || raw.max_rps > 7 {
        return Err(invalid(
            "kommo.max_rps",
            format!("{} is outside 1..=7", raw.max_rps),
            "Kommo answers 429 above 7 requests per second and then bans the IP; use 7 or less",
        ));
    }
    if raw.spacing_margin_ms > 1000 {
        return Err(invalid(
            "kommo.spacing_margin_ms",
            format!("{} ms is more than a second", raw.spacing_margin_ms),
            "use 50 (the default); a larger margin only slows the sync down",
        ));
    }
    if raw.max_retries > 20 {
        return Err(invalid(
            "kommo.max_retries",
            format!("{} is more than 20", raw.max_retries),
            "use 4 (the default); each retry backs off longer, and 20 already means hours",
        ));
    }
    if raw.page_size == 0 || raw.page_size > 250 {
        return Err(invalid(
            "kommo.page_size",
            format!("{} is outside 1..=250", raw.page_size),
            "250 is the API's maximum and the best choice",
        ));
    }
    if raw.request_timeout_secs == 0 || raw.connect_timeout_secs == 0 {
        return Err(invalid(
            "kommo.request_timeout_secs",
            "timeouts must be at least 1 second",
            "use the defaults (10 s connect, 60 s request)",
        ));
    }
    if raw.ban_backoff_secs == 0 || raw.ban_backoff_max_secs < raw.ban_backoff_secs {
        return Err(invalid(
            "kommo.ban_backoff_secs",
            "must be >= 1 and <= kommo.ban_backoff_max_secs",
            "use the defaults (600 and 7200)",
        ));
    }
    Ok(KommoSettings {
        base_url,
        auth,
        max_rps: raw.max_rps,
        spacing_margin: Duration::from_millis(raw.spacing_margin_ms),
        page_size: raw.page_size,
        connect_timeout: Duration::from_secs(raw.connect_timeout_secs),
        request_timeout: Duration::from_secs(raw.request_timeout_secs),
        max_retries: raw.max_retries,
        ban_backoff: Duration::from_secs(raw.ban_backoff_secs),
        ban_backoff_max: Duration::from_secs(raw.ban_backoff_max_secs),
    })
}

fn validate_database(raw: RawDatabase) -> Result<DatabaseSettings, ConfigError> {
    let url = raw.url.expose_secret();
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        return Err(invalid(
            "database.url",
            "does not start with postgres:// or postgresql://",
            "write it like postgres://user@host:5432/dbname",
        ));
    }
    let mut connect = PgConnectOptions::from_str(raw.url.expose_secret()).map_err(|e| {
        // The URL may hold a password: name the key, never echo the value.
        invalid(
            "database.url",
            format!(
                "not a valid PostgreSQL URL ({})",
                redact_url_error(&e.to_string())
            ),
            "write it like postgres://user@host:5432/dbname",
        )
    })?;
    if !raw.password_file.trim().is_empty() {
        let password = read_file_secret("database.password_file", &raw.password_file)?;
        connect = connect.password(password.expose_secret());
    }
    let schema = raw.schema.trim().to_string();
    // Secrets live in `{schema}_private`, which must be a name too.
    if !is_identifier(&schema) || schema.len() > 55 {
        return Err(invalid(
            "database.schema",
            format!("`{schema}` is not a plain identifier of at most 55 characters"),
            "use lowercase letters, digits and _ (starting with a letter or _), at most 55 \
             characters (the daemon adds `_private` for the schema that holds its tokens)",
        ));
    }
    if raw.max_connections < 2 {
        return Err(invalid(
            "database.max_connections",
            "must be at least 2",
            "use 8",
        ));
    }
    Ok(DatabaseSettings {
        connect,
        schema,
        max_connections: raw.max_connections,
    })
}

/// sqlx's URL errors can quote the URL; keep only the part before any quoted text.
fn redact_url_error(msg: &str) -> String {
    msg.split(['"', '\'', '`'])
        .next()
        .unwrap_or("")
        .trim()
        .to_string()
}

pub fn is_identifier(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.chars()
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

/// A secret given inline or through a file; the file wins when both are set.
fn read_secret(
    inline: SecretString,
    file: &str,
    file_key: &str,
) -> Result<SecretString, ConfigError> {
    if !file.trim().is_empty() {
        return read_file_secret(file_key, file);
    }
    Ok(SecretString::from(
        inline.expose_secret().trim().to_string(),
    ))
}

fn validate_oauth(raw: RawOAuth) -> Result<OAuthSettings, ConfigError> {
    let secret = read_secret(
        raw.client_secret,
        &raw.client_secret_file,
        "oauth.client_secret_file",
    )?;
    let missing = |key: &str, env: &str| {
        invalid(
            key,
            "is required when kommo.auth = \"oauth\"",
            format!("set {env} (from the integration's page in Kommo)"),
        )
    };
    if raw.client_id.trim().is_empty() {
        return Err(missing("oauth.client_id", "KOMMO_SYNC__OAUTH__CLIENT_ID"));
    }
    if secret.expose_secret().is_empty() {
        return Err(missing(
            "oauth.client_secret",
            "KOMMO_SYNC__OAUTH__CLIENT_SECRET or oauth.client_secret_file",
        ));
    }
    if raw.redirect_uri.trim().is_empty() {
        return Err(missing(
            "oauth.redirect_uri",
            "KOMMO_SYNC__OAUTH__REDIRECT_URI",
        ));
    }
    Ok(OAuthSettings {
        client_id: raw.client_id.trim().to_string(),
        client_secret: secret,
        redirect_uri: raw.redirect_uri.trim().to_string(),
        refresh_margin: Duration::from_secs(raw.refresh_margin_secs),
    })
}

fn read_file_secret(key: &str, path: &str) -> Result<SecretString, ConfigError> {
    let path = PathBuf::from(path.trim());
    let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::File {
        key: key.into(),
        path: path.clone(),
        source,
    })?;
    let first = text.lines().next().unwrap_or("").trim().to_string();
    if first.is_empty() {
        return Err(invalid(
            key,
            format!("file {} is empty", path.display()),
            "put the secret on its first line",
        ));
    }
    Ok(SecretString::from(first))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn base_env() -> Vec<(String, String)> {
        env(&[
            ("KOMMO_SYNC__KOMMO__SUBDOMAIN", "acme"),
            ("KOMMO_SYNC__KOMMO__TOKEN", "s3cr3t-token"),
        ])
    }

    /// A token with a line break inside, or an absurd retry count, is refused with the key,
    /// and the token never appears in the message.
    #[test]
    fn a_token_with_a_control_character_and_unbounded_retries_are_refused() {
        let mut e = base_env();
        e.push(("KOMMO_SYNC__KOMMO__TOKEN".into(), "abc\ndef-secret".into()));
        let err = Settings::load_from(None, e).unwrap_err().to_string();
        assert!(
            err.contains("kommo.token") && err.contains("control"),
            "{err}"
        );
        assert!(!err.contains("def-secret"), "{err}");
        let mut e = base_env();
        e.push(("KOMMO_SYNC__KOMMO__MAX_RETRIES".into(), "4294967295".into()));
        let err = Settings::load_from(None, e).unwrap_err().to_string();
        assert!(err.contains("kommo.max_retries"), "{err}");
        let mut e = base_env();
        e.push(("KOMMO_SYNC__KOMMO__TOKEN".into(), "abc-def\n".into()));
        assert!(
            Settings::load_from(None, e).is_ok(),
            "a trailing newline is trimmed"
        );
    }

    #[test]
    fn defaults_plus_subdomain_and_token_are_enough() {
        let s = Settings::load_from(None, base_env()).unwrap();
        assert_eq!(s.kommo.base_url.as_str(), "https://acme.kommo.com/");
        assert_eq!(s.kommo.max_rps, 7);
        assert_eq!(s.kommo.page_size, 250);
        assert_eq!(s.database.schema, "kommo");
        let mut declared: Vec<String> = crate::kommo::stream_names().map(String::from).collect();
        declared.sort();
        assert_eq!(
            s.enabled_streams(),
            declared,
            "every stream is on by default"
        );
    }

    #[test]
    fn the_defaults_configure_every_declared_stream_and_nothing_else() {
        let s = Settings::load_from(None, base_env()).unwrap();
        let mut declared: Vec<&str> = crate::kommo::stream_names().collect();
        declared.sort_unstable();
        assert_eq!(
            s.streams.keys().map(String::as_str).collect::<Vec<_>>(),
            declared
        );
    }

    #[test]
    fn an_unknown_stream_names_the_declared_ones() {
        let mut e = base_env();
        e.push(("KOMMO_SYNC__STREAMS__DEALS__ENABLED".into(), "true".into()));
        e.push((
            "KOMMO_SYNC__STREAMS__DEALS__SCHEDULE".into(),
            "0 * * * * *".into(),
        ));
        let err = Settings::load_from(None, e).unwrap_err().to_string();
        assert!(
            err.contains("streams.deals") && err.contains("leads, contacts"),
            "{err}"
        );
    }

    #[test]
    fn environment_overrides_nested_keys() {
        let mut e = base_env();
        e.extend(env(&[
            ("KOMMO_SYNC__KOMMO__MAX_RPS", "5"),
            ("KOMMO_SYNC__STREAMS__TASKS__ENABLED", "false"),
            ("KOMMO_SYNC__SYNC__LAG_SECS", "30"),
        ]));
        let s = Settings::load_from(None, e).unwrap();
        assert_eq!(s.kommo.max_rps, 5);
        assert_eq!(s.sync.lag_secs, 30);
        assert!(!s.enabled_streams().contains(&"tasks".to_string()));
    }

    #[test]
    fn file_is_applied_before_environment() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "[kommo]\nmax_rps = 3\npage_size = 100\n").unwrap();
        let mut e = base_env();
        e.push(("KOMMO_SYNC__KOMMO__MAX_RPS".into(), "4".into()));
        let s = Settings::load_from(Some(&path), e).unwrap();
        assert_eq!(s.kommo.max_rps, 4, "env beats file");
        assert_eq!(s.kommo.page_size, 100, "file beats defaults");
    }

    #[test]
    fn plain_http_is_refused_unless_allowed() {
        let mut e = base_env();
        e.push((
            "KOMMO_SYNC__KOMMO__BASE_URL".into(),
            "http://127.0.0.1:8099".into(),
        ));
        let err = Settings::load_from(None, e.clone())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("kommo.base_url") && err.contains("allow_insecure_http"),
            "{err}"
        );
        e.push((
            "KOMMO_SYNC__KOMMO__ALLOW_INSECURE_HTTP".into(),
            "true".into(),
        ));
        assert!(Settings::load_from(None, e).is_ok());
    }

    #[test]
    fn rate_above_the_api_limit_is_refused() {
        let mut e = base_env();
        e.push(("KOMMO_SYNC__KOMMO__MAX_RPS".into(), "10".into()));
        let err = Settings::load_from(None, e).unwrap_err().to_string();
        assert!(err.contains("kommo.max_rps") && err.contains("7"), "{err}");
    }

    #[test]
    fn missing_token_names_the_variable() {
        let e = env(&[("KOMMO_SYNC__KOMMO__SUBDOMAIN", "acme")]);
        let err = Settings::load_from(None, e).unwrap_err().to_string();
        assert!(err.contains("KOMMO_SYNC__KOMMO__TOKEN"), "{err}");
    }

    #[test]
    fn token_file_is_read_and_trimmed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "  from-file  \n").unwrap();
        let e = env(&[
            ("KOMMO_SYNC__KOMMO__SUBDOMAIN", "acme"),
            ("KOMMO_SYNC__KOMMO__TOKEN_FILE", path.to_str().unwrap()),
        ]);
        let s = Settings::load_from(None, e).unwrap();
        match &s.kommo.auth {
            AuthSettings::LongLivedToken(t) => assert_eq!(t.expose_secret(), "from-file"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn oauth_needs_its_client_and_no_token() {
        let e = env(&[
            ("KOMMO_SYNC__KOMMO__SUBDOMAIN", "acme"),
            ("KOMMO_SYNC__KOMMO__AUTH", "oauth"),
        ]);
        let err = Settings::load_from(None, e.clone())
            .unwrap_err()
            .to_string();
        assert!(err.contains("oauth.client_id"), "{err}");
        let mut e = e;
        e.extend(env(&[
            ("KOMMO_SYNC__OAUTH__CLIENT_ID", "id"),
            ("KOMMO_SYNC__OAUTH__CLIENT_SECRET", "very-secret"),
            ("KOMMO_SYNC__OAUTH__REDIRECT_URI", "https://example.com/cb"),
        ]));
        let s = Settings::load_from(None, e).unwrap();
        assert!(matches!(s.kommo.auth, AuthSettings::OAuth(_)));
        assert!(!format!("{s:?}").contains("very-secret"));
    }

    #[test]
    fn bad_cron_names_the_stream() {
        let mut e = base_env();
        e.push((
            "KOMMO_SYNC__STREAMS__LEADS__SCHEDULE".into(),
            "every minute".into(),
        ));
        let err = Settings::load_from(None, e).unwrap_err().to_string();
        assert!(err.contains("streams.leads.schedule"), "{err}");
    }

    #[test]
    fn unknown_keys_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "[kommo]\nmax_rsp = 3\n").unwrap();
        let err = Settings::load_from(Some(&path), base_env())
            .unwrap_err()
            .to_string();
        assert!(err.contains("max_rsp"), "{err}");
    }

    #[test]
    fn wrong_type_names_the_key() {
        let mut e = base_env();
        e.push(("KOMMO_SYNC__KOMMO__PAGE_SIZE".into(), "lots".into()));
        let err = Settings::load_from(None, e).unwrap_err().to_string();
        assert!(err.contains("page_size"), "{err}");
    }

    #[test]
    fn secrets_never_reach_debug_output() {
        let mut e = base_env();
        e.push((
            "KOMMO_SYNC__DATABASE__URL".into(),
            "postgres://u:db-pa55@localhost/x".into(),
        ));
        let s = Settings::load_from(None, e).unwrap();
        let dbg = format!("{s:?}");
        assert!(
            !dbg.contains("s3cr3t-token") && !dbg.contains("db-pa55"),
            "{dbg}"
        );
    }

    #[test]
    fn bad_database_url_does_not_echo_the_password() {
        let mut e = base_env();
        e.push((
            "KOMMO_SYNC__DATABASE__URL".into(),
            "mysql://u:db-pa55@localhost/x".into(),
        ));
        let err = Settings::load_from(None, e).unwrap_err().to_string();
        assert!(
            err.contains("database.url") && !err.contains("db-pa55"),
            "{err}"
        );
    }

    #[test]
    fn schema_must_be_an_identifier() {
        let mut e = base_env();
        e.push((
            "KOMMO_SYNC__DATABASE__SCHEMA".into(),
            "kommo; drop table x".into(),
        ));
        let err = Settings::load_from(None, e).unwrap_err().to_string();
        assert!(err.contains("database.schema"), "{err}");
    }
}
