//! Who may read the mirror: a read-only role for analysts, with SELECT on the mirror's
//! schema (tables, views, and those later migrations add) and nothing in the private schema
//! where the tokens are.

use super::{private_schema, Doing, Store, StoreError};

impl Store {
    /// Creates `role` (NOLOGIN) if it is missing and lets it read the mirror's schema, now
    /// and after later migrations; it gets nothing in the private schema. `role` must be a
    /// plain identifier (checked by the caller).
    pub async fn grant_read(&self, role: &str) -> Result<(), StoreError> {
        let schema = self.schema();
        let private = private_schema(schema);
        let statements = [
            format!(
                "DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{role}') \
                 THEN CREATE ROLE \"{role}\" NOLOGIN; END IF; END $$"
            ),
            format!("GRANT USAGE ON SCHEMA \"{schema}\" TO \"{role}\""),
            format!("GRANT SELECT ON ALL TABLES IN SCHEMA \"{schema}\" TO \"{role}\""),
            format!(
                "ALTER DEFAULT PRIVILEGES IN SCHEMA \"{schema}\" GRANT SELECT ON TABLES TO \"{role}\""
            ),
            format!("REVOKE ALL ON SCHEMA \"{private}\" FROM \"{role}\""),
            format!("REVOKE ALL ON ALL TABLES IN SCHEMA \"{private}\" FROM \"{role}\""),
        ];
        let mut tx = self.begin().await?;
        for sql in &statements {
            sqlx::query(sql)
                .execute(&mut *tx)
                .await
                .doing("granting the analysts' role")?;
        }
        tx.commit().await.doing("granting the analysts' role")?;
        Ok(())
    }
}
