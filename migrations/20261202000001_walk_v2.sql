-- Walk v2: runs left behind by a dead process, and the account each stream's rows belong to.
--
-- A process that dies (kill -9, power loss, a database outage it does not survive) leaves its
-- runs in outcome `running` for ever; each process now closes them as `interrupted` when it
-- starts. The entity tables are keyed by Kommo's numeric account id, `sync_state` by the
-- account's host: `account_id` links the two, so that `status` counts only the configured
-- account's rows.

ALTER TABLE sync_runs DROP CONSTRAINT sync_runs_outcome_check;
ALTER TABLE sync_runs ADD CONSTRAINT sync_runs_outcome_check
    CHECK (outcome IN ('running', 'ok', 'failed', 'cancelled', 'interrupted'));
COMMENT ON COLUMN sync_runs.outcome IS 'running, ok, failed, cancelled (shutdown) or interrupted (the process stopped before the run ended; closed when the next process started).';

ALTER TABLE sync_state ADD COLUMN account_id bigint;
COMMENT ON COLUMN sync_state.account_id IS 'Kommo account id of the rows this stream wrote (the entity tables'' account_id); NULL until a page was stored.';
COMMENT ON COLUMN sync_state.cursor IS 'Where the walk stands (versioned JSON): everything with updated_at up to `through` is stored except inside the open `windows`; `plan` says how the stream is walked on this account.';
