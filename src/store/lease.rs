//! One process per account: a Postgres session advisory lock, held on a connection of its
//! own for as long as the process syncs the account.
//!
//! Two processes syncing one account would each use the whole rate limit (Kommo counts
//! per IP or account) and draw 429s, then a ban. With several replicas on one database for
//! high availability, the one holding the lease syncs; the others stand by and take over
//! when it dies: Postgres releases a session lock as soon as its connection ends, a
//! `kill -9` included. Nothing here is home-made but the key.

use sqlx::{Connection, PgConnection};

use super::{Doing, Store, StoreError};

/// The lease of one account, held while this value lives (and its connection does).
#[derive(Debug)]
pub struct Lease {
    conn: PgConnection,
    pub account: String,
}

/// The lock's key: the same for every process mirroring `account` into `schema`.
fn key(schema: &str, account: &str) -> i64 {
    // FNV-1a: stable across builds and processes, unlike std's hasher.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in format!("kommo-sync:lease:{schema}:{account}").bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    h as i64
}

impl Store {
    /// Takes the lease of `account` if no other process holds it.
    pub async fn try_lease(&self, account: &str) -> Result<Option<Lease>, StoreError> {
        let mut conn = self
            .pool()
            .acquire()
            .await
            .doing("taking a connection for the account's lease")?
            .detach();
        let taken: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
            .bind(key(self.schema(), account))
            .fetch_one(&mut conn)
            .await
            .doing("taking the account's lease")?;
        if !taken {
            let _ = conn.close().await;
            return Ok(None);
        }
        Ok(Some(Lease {
            conn,
            account: account.to_string(),
        }))
    }
}

impl Lease {
    /// Whether the lease is still held: its connection answers (a lost connection has
    /// released the lock, and another process may hold it now).
    pub async fn holds(&mut self) -> bool {
        matches!(
            tokio::time::timeout(
                std::time::Duration::from_secs(5),
                sqlx::query("SELECT 1").execute(&mut self.conn)
            )
            .await,
            Ok(Ok(_))
        )
    }

    /// Gives the lease up at once (dropping it would too, when the connection closes).
    pub async fn release(self) {
        let _ = self.conn.close().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_depends_on_the_schema_and_the_account_only() {
        assert_eq!(key("kommo", "a.kommo.com"), key("kommo", "a.kommo.com"));
        assert_ne!(key("kommo", "a.kommo.com"), key("kommo", "b.kommo.com"));
        assert_ne!(key("kommo", "a.kommo.com"), key("other", "a.kommo.com"));
    }
}
