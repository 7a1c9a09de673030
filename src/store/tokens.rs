//! The OAuth token pair of an account (`oauth_tokens`), read and replaced under a row lock:
//! the Postgres implementation of [`crate::tokens::TokenStore`].

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use secrecy::SecretString;

use super::{Doing, Store, StoreError, Tx};
use crate::tokens::{NewPair, TokenLock, TokenRow, TokenState, TokenStore, TokenStoreError};

type Row = (
    String,
    String,
    DateTime<Utc>,
    f64,
    DateTime<Utc>,
    String,
    Option<String>,
);

const COLUMNS: &str = "access_token, refresh_token, access_expires_at, \
    extract(epoch FROM access_expires_at - now())::float8, refresh_issued_at, state, last_error";

fn row(r: Row) -> TokenRow {
    TokenRow {
        access_token: SecretString::from(r.0),
        refresh_token: SecretString::from(r.1),
        access_expires_at: r.2,
        expires_in_secs: r.3,
        refresh_issued_at: r.4,
        state: if r.5 == "revoked" {
            TokenState::Revoked
        } else {
            TokenState::Ok
        },
        last_error: r.6,
    }
}

fn token_error(e: StoreError) -> TokenStoreError {
    TokenStoreError(e.to_string())
}

impl Store {
    pub async fn load_tokens(&self, account: &str) -> Result<Option<TokenRow>, StoreError> {
        let r: Option<Row> = sqlx::query_as(&format!(
            "SELECT {COLUMNS} FROM oauth_tokens WHERE account = $1"
        ))
        .bind(account)
        .fetch_optional(self.pool())
        .await
        .doing("reading the OAuth tokens")?;
        Ok(r.map(row))
    }
}

/// The token pairs in `oauth_tokens`; a lock is `SELECT … FOR UPDATE` in a transaction.
#[derive(Clone, Debug)]
pub struct PgTokens {
    pub store: Store,
}

struct PgTokenLock {
    tx: Tx,
    account: String,
    row: Option<TokenRow>,
}

#[async_trait]
impl TokenStore for PgTokens {
    async fn load(&self, account: &str) -> Result<Option<TokenRow>, TokenStoreError> {
        self.store.load_tokens(account).await.map_err(token_error)
    }

    async fn lock(&self, account: &str) -> Result<Box<dyn TokenLock>, TokenStoreError> {
        let mut tx = self.store.begin().await.map_err(token_error)?;
        let r: Option<Row> = sqlx::query_as(&format!(
            "SELECT {COLUMNS} FROM oauth_tokens WHERE account = $1 FOR UPDATE"
        ))
        .bind(account)
        .fetch_optional(&mut *tx)
        .await
        .doing("locking the OAuth tokens")
        .map_err(token_error)?;
        Ok(Box::new(PgTokenLock {
            tx,
            account: account.to_string(),
            row: r.map(row),
        }))
    }
}

#[async_trait]
impl TokenLock for PgTokenLock {
    fn row(&self) -> Option<&TokenRow> {
        self.row.as_ref()
    }

    async fn save(&mut self, pair: NewPair<'_>) -> Result<(), TokenStoreError> {
        sqlx::query(
            "INSERT INTO oauth_tokens (account, access_token, refresh_token, access_expires_at, refresh_issued_at) \
             VALUES ($1, $2, $3, now() + make_interval(secs => $4), now()) \
             ON CONFLICT (account) DO UPDATE SET access_token = excluded.access_token, \
               refresh_token = excluded.refresh_token, access_expires_at = excluded.access_expires_at, \
               refresh_issued_at = excluded.refresh_issued_at, state = 'ok', last_error = NULL, updated_at = now()",
        )
        .bind(&self.account)
        .bind(pair.access)
        .bind(pair.refresh)
        .bind(pair.expires_in as f64)
        .execute(&mut *self.tx)
        .await
        .doing("storing the OAuth tokens")
        .map_err(token_error)
        .map(|_| ())
    }

    async fn mark_revoked(&mut self, why: &str) -> Result<(), TokenStoreError> {
        sqlx::query(
            "UPDATE oauth_tokens SET state = 'revoked', last_error = $2, updated_at = now() WHERE account = $1",
        )
        .bind(&self.account)
        .bind(why)
        .execute(&mut *self.tx)
        .await
        .doing("marking the OAuth tokens revoked")
        .map_err(token_error)
        .map(|_| ())
    }

    async fn commit(self: Box<Self>) -> Result<(), TokenStoreError> {
        self.tx
            .commit()
            .await
            .doing("committing the OAuth tokens")
            .map_err(token_error)
    }
}
