-- Secrets apart from the mirror: the OAuth token pair moves to the schema `{schema}_private`
-- (created by the daemon before migrations run), so that granting analysts SELECT on every
-- table of the mirror's schema grants them no token. Rows move with the table.
DO $$
BEGIN
    EXECUTE format('CREATE SCHEMA IF NOT EXISTS %I', current_schema() || '_private');
    EXECUTE format('ALTER TABLE oauth_tokens SET SCHEMA %I', current_schema() || '_private');
END
$$;
