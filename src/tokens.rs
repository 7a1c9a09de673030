//! Where a source keeps its OAuth token pair: a trait the app wires in, so that a client
//! with a long-lived token needs no database at all.
//!
//! The contract that makes single-use refresh tokens impossible to lose: [`TokenStore::lock`]
//! holds the account's pair exclusively (across processes) until the lock is committed or
//! dropped; whoever holds it is the only one who may spend the refresh token, and a new pair
//! is committed the moment it arrives.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use secrecy::SecretString;

/// A stored token pair. `Debug` shows no token.
pub struct TokenRow {
    pub access_token: SecretString,
    pub refresh_token: SecretString,
    pub access_expires_at: DateTime<Utc>,
    /// Seconds until the access token expires, by the store's clock (negative: expired).
    pub expires_in_secs: f64,
    pub refresh_issued_at: DateTime<Utc>,
    pub state: TokenState,
    pub last_error: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenState {
    Ok,
    /// The provider refused the refresh token: a human must authorize again.
    Revoked,
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

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct TokenStoreError(pub String);

/// A new pair to store.
pub struct NewPair<'a> {
    pub access: &'a str,
    pub refresh: &'a str,
    /// Seconds from now (by the store's clock) until the access token expires.
    pub expires_in: i64,
}

#[async_trait]
pub trait TokenStore: Send + Sync {
    /// The account's pair, if one is stored.
    async fn load(&self, account: &str) -> Result<Option<TokenRow>, TokenStoreError>;

    /// Locks the account's pair until the lock is committed or dropped.
    async fn lock(&self, account: &str) -> Result<Box<dyn TokenLock>, TokenStoreError>;
}

/// An exclusive hold on one account's pair. Dropping it without `commit` changes nothing.
#[async_trait]
pub trait TokenLock: Send {
    /// The pair as it was when the lock was taken.
    fn row(&self) -> Option<&TokenRow>;

    /// Replaces the pair (first exchange or refresh); takes effect on `commit`.
    async fn save(&mut self, pair: NewPair<'_>) -> Result<(), TokenStoreError>;

    /// Marks the pair refused by the provider; takes effect on `commit`.
    async fn mark_revoked(&mut self, why: &str) -> Result<(), TokenStoreError>;

    async fn commit(self: Box<Self>) -> Result<(), TokenStoreError>;
}
