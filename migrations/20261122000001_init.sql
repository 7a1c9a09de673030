-- kommo-sync: the mirror's first schema.
--
-- Names are unqualified: the daemon sets `search_path` to the configured schema
-- (database.schema, default `kommo`) before it applies migrations, so every table below
-- lands in that schema. Migrations are append-only: never edit this file once applied;
-- add a new one instead.
--
-- Every entity table has the same frame: key (account_id, id), typed columns for every
-- documented field (times as timestamptz), the custom fields as jsonb, the entity exactly
-- as received in `raw`, and bookkeeping (`deleted_at`, `synced_at`).

CREATE TABLE leads (
    account_id          bigint      NOT NULL,
    id                  bigint      NOT NULL,
    name                text,
    price               numeric,
    responsible_user_id bigint,
    group_id            bigint,
    status_id           bigint,
    pipeline_id         bigint,
    loss_reason_id      bigint,
    source_id           bigint,
    created_by          bigint,
    updated_by          bigint,
    created_at          timestamptz,
    updated_at          timestamptz NOT NULL,
    closed_at           timestamptz,
    closest_task_at     timestamptz,
    is_deleted          boolean,
    score               numeric,
    labor_cost          numeric,
    custom_fields       jsonb,
    tags                jsonb,
    raw                 jsonb       NOT NULL,
    deleted_at          timestamptz,
    synced_at           timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (account_id, id)
);
CREATE INDEX leads_updated_at ON leads (updated_at);
CREATE INDEX leads_pipeline_status ON leads (pipeline_id, status_id);

CREATE TABLE contacts (
    account_id          bigint      NOT NULL,
    id                  bigint      NOT NULL,
    name                text,
    first_name          text,
    last_name           text,
    responsible_user_id bigint,
    group_id            bigint,
    created_by          bigint,
    updated_by          bigint,
    created_at          timestamptz,
    updated_at          timestamptz NOT NULL,
    closest_task_at     timestamptz,
    is_deleted          boolean,
    custom_fields       jsonb,
    tags                jsonb,
    raw                 jsonb       NOT NULL,
    deleted_at          timestamptz,
    synced_at           timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (account_id, id)
);
CREATE INDEX contacts_updated_at ON contacts (updated_at);

CREATE TABLE companies (
    account_id          bigint      NOT NULL,
    id                  bigint      NOT NULL,
    name                text,
    responsible_user_id bigint,
    group_id            bigint,
    created_by          bigint,
    updated_by          bigint,
    created_at          timestamptz,
    updated_at          timestamptz NOT NULL,
    closest_task_at     timestamptz,
    is_deleted          boolean,
    custom_fields       jsonb,
    tags                jsonb,
    raw                 jsonb       NOT NULL,
    deleted_at          timestamptz,
    synced_at           timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (account_id, id)
);
CREATE INDEX companies_updated_at ON companies (updated_at);

CREATE TABLE tasks (
    account_id          bigint      NOT NULL,
    id                  bigint      NOT NULL,
    text                text,
    task_type_id        bigint,
    is_completed        boolean,
    entity_type         text,
    entity_id           bigint,
    responsible_user_id bigint,
    group_id            bigint,
    created_by          bigint,
    updated_by          bigint,
    created_at          timestamptz,
    updated_at          timestamptz NOT NULL,
    complete_till       timestamptz,
    duration            bigint,
    result_text         text,
    raw                 jsonb       NOT NULL,
    deleted_at          timestamptz,
    synced_at           timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (account_id, id)
);
CREATE INDEX tasks_updated_at ON tasks (updated_at);
CREATE INDEX tasks_entity ON tasks (entity_type, entity_id);

-- Custom field values in long form: one row per value, so that analysts filter and
-- aggregate with plain SQL instead of parsing JSON. Rewritten for an entity in the same
-- transaction as the entity row, whenever that row changes.
CREATE TABLE custom_field_values (
    account_id   bigint  NOT NULL,
    entity_type  text    NOT NULL,
    entity_id    bigint  NOT NULL,
    field_id     bigint  NOT NULL,
    value_index  integer NOT NULL,
    field_code   text,
    field_name   text,
    field_type   text,
    value_text   text,
    value_number numeric,
    value_time   timestamptz,
    value_bool   boolean,
    enum_id      bigint,
    enum_code    text,
    PRIMARY KEY (account_id, entity_type, entity_id, field_id, value_index)
);
CREATE INDEX custom_field_values_field ON custom_field_values (entity_type, field_id);

-- One row per (account, stream): where the walk stands and how the stream is doing.
CREATE TABLE sync_state (
    account         text        NOT NULL,
    stream          text        NOT NULL,
    cursor          jsonb       NOT NULL,
    state           text        NOT NULL DEFAULT 'ok'
                    CHECK (state IN ('ok', 'backing_off', 'banned', 'locked_out')),
    last_started_at timestamptz,
    last_success_at timestamptz,
    last_error      text,
    last_error_at   timestamptz,
    blocked_until   timestamptz,
    rows_written    bigint      NOT NULL DEFAULT 0,
    updated_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (account, stream)
);

-- One row per run of one stream.
CREATE TABLE sync_runs (
    id           bigserial   PRIMARY KEY,
    account      text        NOT NULL,
    stream       text        NOT NULL,
    full_sync    boolean     NOT NULL,
    started_at   timestamptz NOT NULL DEFAULT now(),
    finished_at  timestamptz,
    outcome      text        NOT NULL DEFAULT 'running'
                 CHECK (outcome IN ('running', 'ok', 'failed', 'cancelled')),
    window_upper timestamptz,
    requests     integer     NOT NULL DEFAULT 0,
    pages        integer     NOT NULL DEFAULT 0,
    rows_seen    integer     NOT NULL DEFAULT 0,
    rows_written integer     NOT NULL DEFAULT 0,
    error        text
);
CREATE INDEX sync_runs_stream_started ON sync_runs (account, stream, started_at DESC);

-- ---------------------------------------------------------------- documentation
COMMENT ON TABLE leads IS 'Kommo leads (deals), one row per lead, as of the last sync. Source: GET /api/v4/leads.';
COMMENT ON TABLE contacts IS 'Kommo contacts (people), one row per contact. Source: GET /api/v4/contacts.';
COMMENT ON TABLE companies IS 'Kommo companies, one row per company. Source: GET /api/v4/companies.';
COMMENT ON TABLE tasks IS 'Kommo tasks, one row per task. Source: GET /api/v4/tasks.';
COMMENT ON TABLE custom_field_values IS 'Custom field values of leads, contacts and companies in long form: one row per value. Rewritten with the entity.';
COMMENT ON TABLE sync_state IS 'Sync cursor and health per account and stream. The cursor moves in the same transaction as the rows it covers.';
COMMENT ON TABLE sync_runs IS 'One row per run of one stream: when, how many requests and rows, and how it ended.';

-- Columns shared by the four entity tables.
DO $$
DECLARE t text;
BEGIN
  FOREACH t IN ARRAY ARRAY['leads', 'contacts', 'companies', 'tasks'] LOOP
    EXECUTE format('COMMENT ON COLUMN %I.account_id IS %L', t, 'Kommo account id (from the entity''s account_id).');
    EXECUTE format('COMMENT ON COLUMN %I.id IS %L', t, 'Kommo id of the entity; unique within the account.');
    EXECUTE format('COMMENT ON COLUMN %I.responsible_user_id IS %L', t, 'User responsible for the entity (see Kommo users).');
    EXECUTE format('COMMENT ON COLUMN %I.group_id IS %L', t, 'Group of the responsible user.');
    EXECUTE format('COMMENT ON COLUMN %I.created_by IS %L', t, 'User who created it; 0 = robot or system.');
    EXECUTE format('COMMENT ON COLUMN %I.updated_by IS %L', t, 'User who changed it last; 0 = robot or system.');
    EXECUTE format('COMMENT ON COLUMN %I.created_at IS %L', t, 'When it was created (server time).');
    EXECUTE format('COMMENT ON COLUMN %I.updated_at IS %L', t, 'When it was last changed (server time). The sync cursor walks this column.');
    EXECUTE format('COMMENT ON COLUMN %I.raw IS %L', t, 'The entity exactly as Kommo sent it (JSON), including fields without a typed column.');
    EXECUTE format('COMMENT ON COLUMN %I.deleted_at IS %L', t, 'When the entity was seen deleted in Kommo; the row is kept. NULL while it exists.');
    EXECUTE format('COMMENT ON COLUMN %I.synced_at IS %L', t, 'When this version of the row was written by kommo-sync (database clock).');
  END LOOP;
  FOREACH t IN ARRAY ARRAY['leads', 'contacts', 'companies'] LOOP
    EXECUTE format('COMMENT ON COLUMN %I.name IS %L', t, 'Name as shown in Kommo.');
    EXECUTE format('COMMENT ON COLUMN %I.closest_task_at IS %L', t, 'Deadline of the nearest open task linked to it.');
    EXECUTE format('COMMENT ON COLUMN %I.is_deleted IS %L', t, 'Kommo''s own is_deleted flag (true only for entities in the trash).');
    EXECUTE format('COMMENT ON COLUMN %I.custom_fields IS %L', t, 'custom_fields_values as sent (array or NULL); see custom_field_values for a long form.');
    EXECUTE format('COMMENT ON COLUMN %I.tags IS %L', t, 'Tags as sent (_embedded.tags: [{id, name, color}]).');
  END LOOP;
END $$;

COMMENT ON COLUMN leads.price IS 'Sale value of the lead, in the account currency.';
COMMENT ON COLUMN leads.status_id IS 'Stage of the lead in its pipeline; 142 = won, 143 = lost in every pipeline.';
COMMENT ON COLUMN leads.pipeline_id IS 'Pipeline the lead is in.';
COMMENT ON COLUMN leads.loss_reason_id IS 'Why a lost lead was lost, if recorded.';
COMMENT ON COLUMN leads.source_id IS 'Source (integration) the lead came from, if any.';
COMMENT ON COLUMN leads.closed_at IS 'When the lead was won or lost.';
COMMENT ON COLUMN leads.score IS 'Lead score, if the account uses scoring.';
COMMENT ON COLUMN leads.labor_cost IS 'Labor cost of the lead (time tracking), if used.';
COMMENT ON COLUMN contacts.first_name IS 'First name of the contact.';
COMMENT ON COLUMN contacts.last_name IS 'Last name of the contact.';
COMMENT ON COLUMN tasks.text IS 'What the task says.';
COMMENT ON COLUMN tasks.task_type_id IS 'Task type: 1 = call, 2 = meeting, others account-defined.';
COMMENT ON COLUMN tasks.is_completed IS 'Whether the task is done.';
COMMENT ON COLUMN tasks.entity_type IS 'Type of the entity the task belongs to: leads, contacts, companies, customers.';
COMMENT ON COLUMN tasks.entity_id IS 'Id of the entity the task belongs to.';
COMMENT ON COLUMN tasks.complete_till IS 'Deadline of the task.';
COMMENT ON COLUMN tasks.duration IS 'Duration of the task in seconds.';
COMMENT ON COLUMN tasks.result_text IS 'Result text entered when the task was completed.';

COMMENT ON COLUMN custom_field_values.account_id IS 'Kommo account id.';
COMMENT ON COLUMN custom_field_values.entity_type IS 'leads, contacts or companies.';
COMMENT ON COLUMN custom_field_values.entity_id IS 'Id of the entity in the table named by entity_type.';
COMMENT ON COLUMN custom_field_values.field_id IS 'Custom field id.';
COMMENT ON COLUMN custom_field_values.value_index IS 'Position of this value among the field''s values (multiselect, phones), from 0.';
COMMENT ON COLUMN custom_field_values.field_code IS 'Field code (PHONE, EMAIL, ...) when the field has one.';
COMMENT ON COLUMN custom_field_values.field_name IS 'Field name as shown in Kommo.';
COMMENT ON COLUMN custom_field_values.field_type IS 'Field type: text, numeric, select, multiselect, date, checkbox, multitext, ...';
COMMENT ON COLUMN custom_field_values.value_text IS 'The value as text (every value has one, except objects).';
COMMENT ON COLUMN custom_field_values.value_number IS 'The value as a number, when it is one (numeric and price fields, numbers in text).';
COMMENT ON COLUMN custom_field_values.value_time IS 'The value as a time, for date, date_time and birthday fields.';
COMMENT ON COLUMN custom_field_values.value_bool IS 'The value as a boolean, for checkbox fields.';
COMMENT ON COLUMN custom_field_values.enum_id IS 'Chosen option id, for select, multiselect, radiobutton and multitext fields.';
COMMENT ON COLUMN custom_field_values.enum_code IS 'Chosen option code (e.g. WORK, MOB for phones).';

COMMENT ON COLUMN sync_state.account IS 'Account host, e.g. mycompany.kommo.com.';
COMMENT ON COLUMN sync_state.stream IS 'leads, contacts, companies or tasks.';
COMMENT ON COLUMN sync_state.cursor IS 'Where the walk stands (versioned JSON): everything up to `watermark` is stored except the `pending` windows.';
COMMENT ON COLUMN sync_state.state IS 'ok; backing_off (the last run failed; the next scheduled run retries); banned (Kommo blocked the IP: no traffic until blocked_until); locked_out (credentials refused: a human must act).';
COMMENT ON COLUMN sync_state.last_started_at IS 'When the last run started.';
COMMENT ON COLUMN sync_state.last_success_at IS 'When the last successful run finished.';
COMMENT ON COLUMN sync_state.last_error IS 'Message of the last failure; cleared by a success.';
COMMENT ON COLUMN sync_state.last_error_at IS 'When the last failure happened.';
COMMENT ON COLUMN sync_state.blocked_until IS 'While banned: when traffic may resume.';
COMMENT ON COLUMN sync_state.rows_written IS 'Entity rows inserted or changed by this stream, ever.';
COMMENT ON COLUMN sync_state.updated_at IS 'When this row last changed.';

COMMENT ON COLUMN sync_runs.id IS 'Run number.';
COMMENT ON COLUMN sync_runs.account IS 'Account host.';
COMMENT ON COLUMN sync_runs.stream IS 'Stream of the run.';
COMMENT ON COLUMN sync_runs.full_sync IS 'True when the run started from scratch (--full or first run).';
COMMENT ON COLUMN sync_runs.started_at IS 'Start (database clock).';
COMMENT ON COLUMN sync_runs.finished_at IS 'End (database clock); NULL while running or if the process died.';
COMMENT ON COLUMN sync_runs.outcome IS 'running, ok, failed or cancelled (shutdown).';
COMMENT ON COLUMN sync_runs.window_upper IS 'Upper end of the run''s window: server time minus the lag.';
COMMENT ON COLUMN sync_runs.requests IS 'Page requests the run made; a request the client retried after a 5xx, a timeout or a 429 counts once (see the metrics for every answer).';
COMMENT ON COLUMN sync_runs.pages IS 'Pages committed.';
COMMENT ON COLUMN sync_runs.rows_seen IS 'Entities received and kept.';
COMMENT ON COLUMN sync_runs.rows_written IS 'Entity rows inserted or changed (unchanged rows are not rewritten).';
COMMENT ON COLUMN sync_runs.error IS 'Why it failed.';
