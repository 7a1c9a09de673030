//! Postgres: the only module that speaks SQL.
//!
//! Every query is written with runtime binds rather than `query!`: the schema name is a
//! setting, applied through the connection's `search_path`, so no single compile-time
//! database could check them. The integration tests run every query against a real server.

pub mod custom_fields;
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
    #[error(
        "cannot reach PostgreSQL at {target}: {source}. Fix: start the server or correct \
         database.url (KOMMO_SYNC__DATABASE__URL)"
    )]
    Connect {
        target: String,
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

fn is_missing_database(e: &sqlx::Error) -> bool {
    e.as_database_error()
        .and_then(|d| d.code())
        .is_some_and(|c| c == "3D000")
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
    tracing::info!(database = %name, "database does not exist; creating it");
    match conn
        .execute(format!("CREATE DATABASE \"{name}\"").as_str())
        .await
    {
        Ok(_) => Ok(()),
        // Another process created it first.
        Err(e)
            if e.as_database_error()
                .and_then(|d| d.code())
                .is_some_and(|c| c == "42P04") =>
        {
            Ok(())
        }
        Err(e) => Err(e),
    }
}

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

#[derive(Clone, Debug)]
pub struct Store {
    pool: PgPool,
    schema: String,
}

impl Store {
    /// Connects with `search_path` set to the mirror's schema, so every name resolves there.
    pub async fn connect(settings: &DatabaseSettings) -> Result<Store, StoreError> {
        let target = format!(
            "{}:{}/{}",
            settings.connect.get_host(),
            settings.connect.get_port(),
            settings.connect.get_database().unwrap_or("")
        );
        let options = settings
            .connect
            .clone()
            .options([("search_path", settings.schema.as_str())]);
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
                    .map_err(|source| StoreError::Connect {
                        target: target.clone(),
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

    /// Creates the schema if needed and applies pending migrations (append-only files in
    /// `migrations/`, embedded at build time).
    pub async fn migrate(&self) -> Result<(), StoreError> {
        // The schema name was validated as a plain identifier, so quoting it is enough.
        sqlx::query(&format!("CREATE SCHEMA IF NOT EXISTS \"{}\"", self.schema))
            .execute(&self.pool)
            .await
            .doing("creating the schema")?;
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
