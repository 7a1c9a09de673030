-- Reconciliation by id sets (deletions the event log did not show): when each entity stream's
-- list was last compared with the mirror.
ALTER TABLE sync_state ADD COLUMN reconciled_at timestamptz;

COMMENT ON COLUMN sync_state.reconciled_at IS 'When the stream''s whole list was last compared with the mirror by id (sync.reconcile_every_hours, or `kommo-sync reconcile`); rows no longer listed were then marked deleted. NULL: never.';
COMMENT ON COLUMN sync_state.stream IS 'A stream of the source (leads, contacts, companies, tasks, events, pipelines, users, ...).';
