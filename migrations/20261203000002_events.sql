-- The event log, deletions from it, and the stage history of leads.
--
-- Lists never return deleted entities: the only way to learn of a deletion is the event log
-- (GET /api/v4/events), mirrored here as it is. Each entity row keeps the newest deletion and
-- the newest restore its events told of; `deleted_at` is derived from them and the row's
-- version, so that events applied late, twice or out of order end the same.

CREATE TABLE events (
    account_id   bigint      NOT NULL,
    id           text        NOT NULL,
    type         text,
    entity_type  text,
    entity_id    bigint,
    created_by   bigint,
    created_at   timestamptz,
    value_before jsonb,
    value_after  jsonb,
    raw          jsonb       NOT NULL,
    synced_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (account_id, id)
);
CREATE INDEX events_entity ON events (entity_type, entity_id);
CREATE INDEX events_type_created_at ON events (type, created_at);
COMMENT ON TABLE events IS 'The account''s event log as Kommo keeps it (append-only): additions, deletions, restores, merges, stage moves, field changes, ... Source: GET /api/v4/events, walked by created_at.';
COMMENT ON COLUMN events.account_id IS 'Kommo account id, as in the entity tables.';
COMMENT ON COLUMN events.id IS 'Kommo''s event id (a string).';
COMMENT ON COLUMN events.type IS 'What happened: lead_added, lead_deleted, lead_restored, lead_status_changed, entity_merged, entity_linked, custom_field_value_changed, ...';
COMMENT ON COLUMN events.entity_type IS 'Kind of the entity, singular: lead, contact, company, task, ...';
COMMENT ON COLUMN events.entity_id IS 'Id of the entity the event is about.';
COMMENT ON COLUMN events.created_by IS 'User who caused it (users.id); 0: a robot or the system.';
COMMENT ON COLUMN events.created_at IS 'When it happened.';
COMMENT ON COLUMN events.value_before IS 'The value before, in Kommo''s shape (an array; empty for deletions and restores).';
COMMENT ON COLUMN events.value_after IS 'The value after, in Kommo''s shape (for stage moves: [{"lead_status": {"id", "pipeline_id"}}]).';
COMMENT ON COLUMN events.raw IS 'The event exactly as Kommo listed it.';
COMMENT ON COLUMN events.synced_at IS 'When the event was stored.';

ALTER TABLE leads ADD COLUMN deleted_event_at timestamptz, ADD COLUMN restored_event_at timestamptz;
ALTER TABLE contacts ADD COLUMN deleted_event_at timestamptz, ADD COLUMN restored_event_at timestamptz;
ALTER TABLE companies ADD COLUMN deleted_event_at timestamptz, ADD COLUMN restored_event_at timestamptz;
ALTER TABLE tasks ADD COLUMN deleted_event_at timestamptz, ADD COLUMN restored_event_at timestamptz;
COMMENT ON COLUMN leads.deleted_event_at IS 'The newest deletion of this lead in the event log.';
COMMENT ON COLUMN leads.restored_event_at IS 'The newest restore of this lead in the event log.';
COMMENT ON COLUMN contacts.deleted_event_at IS 'The newest deletion of this contact in the event log.';
COMMENT ON COLUMN contacts.restored_event_at IS 'The newest restore of this contact in the event log.';
COMMENT ON COLUMN companies.deleted_event_at IS 'The newest deletion of this company in the event log.';
COMMENT ON COLUMN companies.restored_event_at IS 'The newest restore of this company in the event log.';
COMMENT ON COLUMN tasks.deleted_event_at IS 'The newest deletion of this task in the event log.';
COMMENT ON COLUMN tasks.restored_event_at IS 'The newest restore of this task in the event log.';
COMMENT ON COLUMN leads.deleted_at IS 'When the lead was deleted (NULL: it is not). Set from the event log when its newest deletion is newer than its newest restore and not older than this version. A lead deleted before it was ever stored is a tombstone: raw is JSON null. Exclude deleted rows with deleted_at IS NULL.';
COMMENT ON COLUMN contacts.deleted_at IS 'When the contact was deleted (NULL: it is not), from the event log; see leads.deleted_at.';
COMMENT ON COLUMN companies.deleted_at IS 'When the company was deleted (NULL: it is not), from the event log; see leads.deleted_at.';
COMMENT ON COLUMN tasks.deleted_at IS 'When the task was deleted (NULL: it is not), from the event log; see leads.deleted_at.';

CREATE INDEX leads_deleted_at ON leads (deleted_at) WHERE deleted_at IS NOT NULL;

-- Every stage a lead entered: its first stage when it was created, then one row per move.
-- A lead's first stage is the stage its first move left, or its current stage if it never
-- moved (lead_added carries no stage).
CREATE VIEW lead_status_changes AS
SELECT e.account_id,
       e.entity_id AS lead_id,
       e.id AS event_id,
       (e.value_before -> 0 -> 'lead_status' ->> 'pipeline_id')::bigint AS from_pipeline_id,
       (e.value_before -> 0 -> 'lead_status' ->> 'id')::bigint AS from_status_id,
       (e.value_after -> 0 -> 'lead_status' ->> 'pipeline_id')::bigint AS to_pipeline_id,
       (e.value_after -> 0 -> 'lead_status' ->> 'id')::bigint AS to_status_id,
       e.created_at AS changed_at,
       e.created_by AS changed_by
FROM events e
JOIN leads l ON l.account_id = e.account_id AND l.id = e.entity_id
WHERE e.type = 'lead_status_changed' AND e.entity_type = 'lead'
  AND l.deleted_at IS NULL AND l.raw <> 'null'::jsonb
UNION ALL
SELECT l.account_id,
       l.id,
       NULL,
       NULL,
       NULL,
       coalesce(first_move.pipeline_id, l.pipeline_id),
       coalesce(first_move.status_id, l.status_id),
       l.created_at,
       l.created_by
FROM leads l
LEFT JOIN LATERAL (
    SELECT (e.value_before -> 0 -> 'lead_status' ->> 'pipeline_id')::bigint AS pipeline_id,
           (e.value_before -> 0 -> 'lead_status' ->> 'id')::bigint AS status_id
    FROM events e
    WHERE e.type = 'lead_status_changed' AND e.entity_type = 'lead'
      AND e.entity_id = l.id AND e.account_id = l.account_id
    ORDER BY e.created_at, e.id
    LIMIT 1
) first_move ON true
WHERE l.deleted_at IS NULL AND l.raw <> 'null'::jsonb;
COMMENT ON VIEW lead_status_changes IS 'Stage history of leads that are not deleted (the moves of deleted leads stay in events): one row for the stage each lead was created in (event_id NULL, from_* NULL), then one per move (lead_status_changed events). Time in stage: the next row''s changed_at minus this one''s.';
COMMENT ON COLUMN lead_status_changes.lead_id IS 'The lead (leads.id).';
COMMENT ON COLUMN lead_status_changes.event_id IS 'The event of the move (events.id); NULL for the first stage.';
COMMENT ON COLUMN lead_status_changes.from_pipeline_id IS 'Pipeline the lead left; NULL for the first stage.';
COMMENT ON COLUMN lead_status_changes.from_status_id IS 'Stage the lead left; NULL for the first stage.';
COMMENT ON COLUMN lead_status_changes.to_pipeline_id IS 'Pipeline the lead entered.';
COMMENT ON COLUMN lead_status_changes.to_status_id IS 'Stage the lead entered (pipeline_statuses.id with to_pipeline_id); 142 won, 143 lost.';
COMMENT ON COLUMN lead_status_changes.changed_at IS 'When the lead entered the stage.';
COMMENT ON COLUMN lead_status_changes.changed_by IS 'Who moved it (users.id); 0: a robot.';
COMMENT ON COLUMN lead_status_changes.account_id IS 'Kommo account id, as in the entity tables.';
