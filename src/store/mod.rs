//! Postgres: the only module that speaks SQL.
//!
//! Every query is written with runtime binds rather than `query!`: the schema name is a
//! setting, applied through the connection's `search_path`, so no single compile-time
//! database could check them. The integration tests run every query against a real server.

pub mod access;
pub mod children;
pub mod custom_fields;
pub mod lease;
pub mod log;
pub mod reference;
pub mod rows;
pub mod state;
pub mod tokens;

use std::time::Duration;

use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::{Postgres, Transaction};

use crate::config::DatabaseSettings;

pub type Tx = Transaction<'static, Postgres>;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{}", connect_message(.target, .source))]
    Connect {
        target: String,
        #[source]
        source: sqlx::Error,
    },
    #[error(
        "creating database `{name}` failed: {source}. Fix: give the role of database.url the \
         CREATEDB right, or create the database yourself (createdb {name})"
    )]
    CreateDatabase {
        name: String,
        #[source]
        source: sqlx::Error,
    },
    #[error("applying migrations to schema `{schema}` failed: {source}")]
    Migrate {
        schema: String,
        #[source]
        source: sqlx::migrate::MigrateError,
    },
    #[error("database error while {doing}: {source}")]
    Query {
        doing: &'static str,
        #[source]
        source: sqlx::Error,
    },
    #[error(
        "schema `{schema}` holds no mirror yet (no migration was applied to it). Fix: check \
         database.schema and database.url; `kommo-sync migrate` or a first `sync` creates it"
    )]
    NoMirror { schema: String },
    #[error("stored cursor of stream `{stream}` cannot be read: {detail}")]
    BadCursor { stream: String, detail: String },
}

/// Adds what the failing query was doing to a sqlx error.
pub(crate) trait Doing<T> {
    fn doing(self, doing: &'static str) -> Result<T, StoreError>;
}

impl<T> Doing<T> for Result<T, sqlx::Error> {
    fn doing(self, doing: &'static str) -> Result<T, StoreError> {
        self.map_err(|source| StoreError::Query { doing, source })
    }
}

fn sqlstate(e: &sqlx::Error) -> Option<String> {
    e.as_database_error()
        .and_then(|d| d.code())
        .map(|c| c.into_owned())
}

fn is_missing_database(e: &sqlx::Error) -> bool {
    sqlstate(e).as_deref() == Some("3D000")
}

/// Whether a `CREATE … ` lost a race with another process creating the same thing: Postgres
/// says "already exists", or, when both pass the existence check at once, breaks the
/// catalog's unique index (`pg_database_datname_index`, `pg_namespace_nspname_index`).
fn lost_a_creation_race(e: &sqlx::Error) -> bool {
    matches!(sqlstate(e).as_deref(), Some("42P04" | "42P06" | "23505"))
}

/// What went wrong connecting, and the fix: a server that is not there is not a wrong
/// password.
fn connect_message(target: &str, source: &sqlx::Error) -> String {
    match sqlstate(source).as_deref() {
        Some("28P01" | "28000") => format!(
            "PostgreSQL at {target} refused the login: {source}. Fix: correct the user or \
             password in database.url (or database.password_file)"
        ),
        Some("3D000") => format!(
            "database at {target} does not exist: {source}. Fix: correct database.url, or let \
             `kommo-sync migrate` (or `sync`, `run`) create it (the role needs CREATEDB)"
        ),
        Some("53300") => format!(
            "PostgreSQL at {target} has no free connection: {source}. Fix: lower \
             database.max_connections or raise the server's max_connections"
        ),
        Some(_) => format!("PostgreSQL at {target} refused the connection: {source}"),
        None => format!(
            "cannot reach PostgreSQL at {target}: {source}. Fix: start the server or correct \
             database.url (KOMMO_SYNC__DATABASE__URL)"
        ),
    }
}

/// Every process creating the same database takes this lock first, in the `postgres`
/// database (advisory locks live in the database they are taken in).
fn creation_lock(what: &str) -> i64 {
    // FNV-1a: stable across builds and processes, unlike std's hasher.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in format!("kommo-sync:create:{what}").bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    h as i64
}

/// A first start on a fresh server: create the configured database (it needs the CREATEDB
/// right; without it the error says so and nothing else happens).
async fn create_database(settings: &DatabaseSettings) -> Result<(), sqlx::Error> {
    use sqlx::{Connection, Executor};
    let name = settings
        .connect
        .get_database()
        .unwrap_or("kommo")
        .replace('"', "\"\"");
    let admin = settings.connect.clone().database("postgres");
    let mut conn = sqlx::PgConnection::connect_with(&admin).await?;
    // Processes starting at once on a fresh server take turns; the lock ends with the
    // connection.
    sqlx::query("SELECT pg_advisory_lock($1)")
        .bind(creation_lock(&name))
        .execute(&mut conn)
        .await?;
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(name.replace("\"\"", "\""))
            .fetch_one(&mut conn)
            .await?;
    if exists {
        return Ok(());
    }
    tracing::info!(database = %name, "database does not exist; creating it");
    match conn
        .execute(format!("CREATE DATABASE \"{name}\"").as_str())
        .await
    {
        Ok(_) => Ok(()),
        // Another process (not one of ours, or without the lock) created it first.
        Err(e) if lost_a_creation_race(&e) => Ok(()),
        Err(e) => Err(e),
    }
}

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

#[derive(Clone, Debug)]
pub struct Store {
    pool: PgPool,
    schema: String,
}

/// The schema beside the mirror's that holds what analysts must not read (the OAuth tokens).
pub fn private_schema(schema: &str) -> String {
    format!("{schema}_private")
}

/// Where the settings point (`host:port/database`, for messages) and how to connect there,
/// with `search_path` set to the mirror's schema and then the private one (only the token
/// store's names resolve there).
fn connect_options(settings: &DatabaseSettings) -> (String, sqlx::postgres::PgConnectOptions) {
    let target = format!(
        "{}:{}/{}",
        settings.connect.get_host(),
        settings.connect.get_port(),
        settings.connect.get_database().unwrap_or("")
    );
    let path = format!("{},{}", settings.schema, private_schema(&settings.schema));
    let options = settings
        .connect
        .clone()
        .options([("search_path", path.as_str())]);
    (target, options)
}

impl Store {
    /// Connects with `search_path` set to the mirror's schema, so every name resolves there.
    pub async fn connect(settings: &DatabaseSettings) -> Result<Store, StoreError> {
        let (target, options) = connect_options(settings);
        let connect = || {
            PgPoolOptions::new()
                .max_connections(settings.max_connections)
                .acquire_timeout(Duration::from_secs(10))
                .connect_with(options.clone())
        };
        let pool = match connect().await {
            Ok(pool) => pool,
            Err(e) if is_missing_database(&e) => {
                create_database(settings)
                    .await
                    .map_err(|source| StoreError::CreateDatabase {
                        name: settings
                            .connect
                            .get_database()
                            .unwrap_or("kommo")
                            .to_string(),
                        source,
                    })?;
                connect()
                    .await
                    .map_err(|source| StoreError::Connect { target, source })?
            }
            Err(source) => return Err(StoreError::Connect { target, source }),
        };
        Ok(Store {
            pool,
            schema: settings.schema.clone(),
        })
    }

    /// Connects like [`Store::connect`] but never creates anything: for commands that only
    /// read or check. A missing database is an error that names it (a typo in
    /// database.url must not create a new, empty database).
    pub async fn open(settings: &DatabaseSettings) -> Result<Store, StoreError> {
        let (target, options) = connect_options(settings);
        let pool = PgPoolOptions::new()
            .max_connections(2)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options)
            .await
            .map_err(|source| StoreError::Connect { target, source })?;
        Ok(Store {
            pool,
            schema: settings.schema.clone(),
        })
    }

    /// Migrations known to this build that the schema has not applied yet (all of them when
    /// it has none). Changes nothing.
    pub async fn pending_migrations(&self) -> Result<usize, StoreError> {
        let applied: Option<Vec<i64>> = match sqlx::query_scalar(&format!(
            "SELECT version FROM \"{}\"._sqlx_migrations WHERE success",
            self.schema
        ))
        .fetch_all(&self.pool)
        .await
        {
            Ok(v) => Some(v),
            // 42P01: no such table, 3F000: no such schema.
            Err(e) if matches!(sqlstate(&e).as_deref(), Some("42P01" | "3F000")) => None,
            Err(source) => {
                return Err(StoreError::Query {
                    doing: "reading which migrations are applied",
                    source,
                })
            }
        };
        let applied = applied.unwrap_or_default();
        Ok(MIGRATOR
            .iter()
            .filter(|m| !applied.contains(&m.version))
            .count())
    }

    /// Fails naming the schema when it holds no mirror at all.
    pub async fn require_mirror(&self) -> Result<(), StoreError> {
        if self.pending_migrations().await? == MIGRATOR.iter().count() {
            return Err(StoreError::NoMirror {
                schema: self.schema.clone(),
            });
        }
        Ok(())
    }

    /// Creates the schema if needed and applies pending migrations (append-only files in
    /// `migrations/`, embedded at build time).
    ///
    /// Safe when several processes start at once: a schema another process created meanwhile
    /// counts as created, and the migrator takes turns under its own advisory lock (taken
    /// before it creates its bookkeeping table).
    pub async fn migrate(&self) -> Result<(), StoreError> {
        // The schema name was validated as a plain identifier, so quoting it is enough.
        for schema in [self.schema.clone(), private_schema(&self.schema)] {
            match sqlx::query(&format!("CREATE SCHEMA IF NOT EXISTS \"{schema}\""))
                .execute(&self.pool)
                .await
            {
                Ok(_) => {}
                Err(e) if lost_a_creation_race(&e) => {}
                Err(source) => {
                    return Err(StoreError::Query {
                        doing: "creating the schema",
                        source,
                    })
                }
            }
        }
        MIGRATOR
            .run(&self.pool)
            .await
            .map_err(|source| StoreError::Migrate {
                schema: self.schema.clone(),
                source,
            })
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    pub fn schema(&self) -> &str {
        &self.schema
    }

    pub async fn begin(&self) -> Result<Tx, StoreError> {
        self.pool.begin().await.doing("starting a transaction")
    }

    /// Cheap liveness probe.
    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .doing("pinging the database")
            .map(|_| ())
    }
}
