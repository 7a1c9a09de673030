//! The OAuth token pair of an account (`oauth_tokens`), read and replaced under a row lock.

use chrono::{DateTime, Utc};
use secrecy::SecretString;

use super::{Doing, Store, StoreError, Tx};

/// A stored token pair. `Debug` shows no token.
pub struct TokenRow {
    pub access_token: SecretString,
    pub refresh_token: SecretString,
    pub access_expires_at: DateTime<Utc>,
    /// Seconds until the access token expires, by the database's clock (negative: expired).
    pub expires_in_secs: f64,
    pub refresh_issued_at: DateTime<Utc>,
    pub state: String,
    pub last_error: Option<String>,
}

impl std::fmt::Debug for TokenRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenRow")
            .field("access_expires_at", &self.access_expires_at)
            .field("refresh_issued_at", &self.refresh_issued_at)
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

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
        state: r.5,
        last_error: r.6,
    }
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

    /// Locks the account's token row until `tx` ends: whoever holds it is the only one who
    /// may spend the refresh token.
    pub async fn lock_tokens(tx: &mut Tx, account: &str) -> Result<Option<TokenRow>, StoreError> {
        let r: Option<Row> = sqlx::query_as(&format!(
            "SELECT {COLUMNS} FROM oauth_tokens WHERE account = $1 FOR UPDATE"
        ))
        .bind(account)
        .fetch_optional(&mut **tx)
        .await
        .doing("locking the OAuth tokens")?;
        Ok(r.map(row))
    }

    /// Stores a new pair (first exchange or refresh); the access token expires `expires_in`
    /// seconds from now by the database's clock.
    pub async fn save_tokens(
        tx: &mut Tx,
        account: &str,
        access: &str,
        refresh: &str,
        expires_in: i64,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO oauth_tokens (account, access_token, refresh_token, access_expires_at, refresh_issued_at) \
             VALUES ($1, $2, $3, now() + make_interval(secs => $4), now()) \
             ON CONFLICT (account) DO UPDATE SET access_token = excluded.access_token, \
               refresh_token = excluded.refresh_token, access_expires_at = excluded.access_expires_at, \
               refresh_issued_at = excluded.refresh_issued_at, state = 'ok', last_error = NULL, updated_at = now()",
        )
        .bind(account)
        .bind(access)
        .bind(refresh)
        .bind(expires_in as f64)
        .execute(&mut **tx)
        .await
        .doing("storing the OAuth tokens")
        .map(|_| ())
    }

    pub async fn mark_tokens_revoked(
        tx: &mut Tx,
        account: &str,
        error: &str,
    ) -> Result<(), StoreError> {
        sqlx::query("UPDATE oauth_tokens SET state = 'revoked', last_error = $2, updated_at = now() WHERE account = $1")
            .bind(account)
            .bind(error)
            .execute(&mut **tx)
            .await
            .doing("marking the OAuth tokens revoked")
            .map(|_| ())
    }
}
