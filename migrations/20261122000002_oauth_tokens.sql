-- OAuth 2.0 token pairs, one row per account (kommo.auth = "oauth").
--
-- The refresh token is single-use: every refresh returns a new pair and revokes the old
-- refresh token. The daemon refreshes under `SELECT ... FOR UPDATE` on this row, so two
-- processes never spend the same refresh token, and commits the new pair the moment it
-- arrives. The tokens are credentials: restrict access to this table like a password file.
CREATE TABLE oauth_tokens (
    account           text        PRIMARY KEY,
    access_token      text        NOT NULL,
    refresh_token     text        NOT NULL,
    access_expires_at timestamptz NOT NULL,
    refresh_issued_at timestamptz NOT NULL,
    state             text        NOT NULL DEFAULT 'ok' CHECK (state IN ('ok', 'revoked')),
    last_error        text,
    updated_at        timestamptz NOT NULL DEFAULT now()
);

COMMENT ON TABLE oauth_tokens IS 'OAuth 2.0 token pair per account; refreshed under a row lock. Credentials: keep access to it restricted.';
COMMENT ON COLUMN oauth_tokens.account IS 'Account host, e.g. mycompany.kommo.com.';
COMMENT ON COLUMN oauth_tokens.access_token IS 'Current access token (secret).';
COMMENT ON COLUMN oauth_tokens.refresh_token IS 'Current refresh token (secret, single use).';
COMMENT ON COLUMN oauth_tokens.access_expires_at IS 'When the access token expires (database clock at receipt + expires_in).';
COMMENT ON COLUMN oauth_tokens.refresh_issued_at IS 'When the current refresh token was issued; Kommo''s live about 3 months.';
COMMENT ON COLUMN oauth_tokens.state IS 'ok, or revoked: Kommo refused the refresh token; a human must run `kommo-sync auth exchange`.';
COMMENT ON COLUMN oauth_tokens.last_error IS 'Why the last refresh failed.';
COMMENT ON COLUMN oauth_tokens.updated_at IS 'When this row last changed.';
