-- Reference data and links: what the entity tables' ids point at.
--
-- Reference tables are refreshed whole by streams of their own (pipelines, users, ...): a
-- row that differs is rewritten, a row no longer listed gets `gone_at` and stays, because
-- entities mirrored earlier still point at it. Links are owned by the entity that lists them
-- (`_embedded` of a lead or a contact) and rewritten with it, in the same transaction.

CREATE TABLE pipelines (
    account_id     bigint      NOT NULL,
    id             bigint      NOT NULL,
    name           text,
    sort           bigint,
    is_main        boolean,
    is_unsorted_on boolean,
    is_archive     boolean,
    raw            jsonb       NOT NULL,
    synced_at      timestamptz NOT NULL DEFAULT now(),
    gone_at        timestamptz,
    PRIMARY KEY (account_id, id)
);
COMMENT ON TABLE pipelines IS 'Sales pipelines (funnels) of leads. Source: GET /api/v4/leads/pipelines, refreshed whole by the `pipelines` stream.';
COMMENT ON COLUMN pipelines.is_main IS 'The account''s main pipeline.';
COMMENT ON COLUMN pipelines.is_unsorted_on IS 'Whether the pipeline has an "incoming leads" (unsorted) stage.';
COMMENT ON COLUMN pipelines.is_archive IS 'Archived pipelines still hold their leads.';

CREATE TABLE pipeline_statuses (
    account_id  bigint      NOT NULL,
    pipeline_id bigint      NOT NULL,
    id          bigint      NOT NULL,
    name        text,
    sort        bigint,
    color       text,
    type        bigint,
    is_editable boolean,
    synced_at   timestamptz NOT NULL DEFAULT now(),
    gone_at     timestamptz,
    PRIMARY KEY (account_id, pipeline_id, id)
);
COMMENT ON TABLE pipeline_statuses IS 'Stages of each pipeline. Every pipeline has 142 (won) and 143 (lost); a stage id is unique only with its pipeline_id. Leads point here by (pipeline_id, status_id).';
COMMENT ON COLUMN pipeline_statuses.type IS '1: the "incoming leads" (unsorted) stage; 0: an ordinary stage.';
COMMENT ON COLUMN pipeline_statuses.sort IS 'Order of the stage in the funnel (ascending).';

CREATE TABLE users (
    account_id bigint      NOT NULL,
    id         bigint      NOT NULL,
    name       text,
    email      text,
    lang       text,
    is_admin   boolean,
    is_active  boolean,
    group_id   bigint,
    role_id    bigint,
    rights     jsonb,
    raw        jsonb       NOT NULL,
    synced_at  timestamptz NOT NULL DEFAULT now(),
    gone_at    timestamptz,
    PRIMARY KEY (account_id, id)
);
COMMENT ON TABLE users IS 'Users of the account. Source: GET /api/v4/users, refreshed whole by the `users` stream. Entities'' responsible_user_id, created_by and updated_by point here; 0 means a robot, and a deleted user may be missing.';
COMMENT ON COLUMN users.rights IS 'The user''s rights as Kommo lists them.';

CREATE TABLE loss_reasons (
    account_id bigint      NOT NULL,
    id         bigint      NOT NULL,
    name       text,
    sort       bigint,
    created_at timestamptz,
    updated_at timestamptz,
    raw        jsonb       NOT NULL,
    synced_at  timestamptz NOT NULL DEFAULT now(),
    gone_at    timestamptz,
    PRIMARY KEY (account_id, id)
);
COMMENT ON TABLE loss_reasons IS 'Why a lead was lost. Source: GET /api/v4/leads/loss_reasons. leads.loss_reason_id points here.';

CREATE TABLE task_types (
    account_id bigint      NOT NULL,
    id         bigint      NOT NULL,
    name       text,
    code       text,
    color      text,
    icon_id    bigint,
    raw        jsonb       NOT NULL,
    synced_at  timestamptz NOT NULL DEFAULT now(),
    gone_at    timestamptz,
    PRIMARY KEY (account_id, id)
);
COMMENT ON TABLE task_types IS 'Task types (call, meeting, ...). Source: GET /api/v4/account?with=task_types. tasks.task_type_id points here.';
COMMENT ON COLUMN task_types.code IS 'FOLLOW_UP and MEETING for the two built-in types; NULL for the account''s own.';

CREATE TABLE custom_fields (
    account_id    bigint      NOT NULL,
    entity_type   text        NOT NULL,
    id            bigint      NOT NULL,
    name          text,
    code          text,
    type          text,
    sort          bigint,
    group_id      text,
    is_api_only   boolean,
    is_predefined boolean,
    is_deletable  boolean,
    enums         jsonb,
    raw           jsonb       NOT NULL,
    synced_at     timestamptz NOT NULL DEFAULT now(),
    gone_at       timestamptz,
    PRIMARY KEY (account_id, entity_type, id)
);
COMMENT ON TABLE custom_fields IS 'Custom field definitions of leads, contacts and companies. Source: GET /api/v4/{entity}/custom_fields (50 per page, all pages read), one stream per entity type. custom_field_values.field_id points here.';
COMMENT ON COLUMN custom_fields.entity_type IS 'leads, contacts or companies.';
COMMENT ON COLUMN custom_fields.type IS 'Kommo''s field type: text, numeric, select, multiselect, date, checkbox, multitext, url, ... (new types appear; values of any type are kept).';
COMMENT ON COLUMN custom_fields.code IS 'Stable code of predefined fields (PHONE, EMAIL, POSITION, ...); NULL for the account''s own.';
COMMENT ON COLUMN custom_fields.enums IS 'The options of select-like fields as Kommo lists them; also one row each in custom_field_enums.';

CREATE TABLE custom_field_enums (
    account_id bigint      NOT NULL,
    field_id   bigint      NOT NULL,
    id         bigint      NOT NULL,
    value      text,
    sort       bigint,
    synced_at  timestamptz NOT NULL DEFAULT now(),
    gone_at    timestamptz,
    PRIMARY KEY (account_id, field_id, id)
);
COMMENT ON TABLE custom_field_enums IS 'Options of select, multiselect and multitext fields. custom_field_values.enum_id points here.';
COMMENT ON COLUMN custom_field_enums.value IS 'The option''s label (for multitext fields: WORK, MOB, ...).';

CREATE TABLE tags (
    account_id  bigint      NOT NULL,
    entity_type text        NOT NULL,
    id          bigint      NOT NULL,
    name        text,
    color       text,
    raw         jsonb       NOT NULL,
    synced_at   timestamptz NOT NULL DEFAULT now(),
    gone_at     timestamptz,
    PRIMARY KEY (account_id, entity_type, id)
);
COMMENT ON TABLE tags IS 'Tags of leads, contacts and companies. Source: GET /api/v4/{entity}/tags. Each entity''s own tags are in its `tags` column.';

CREATE TABLE lead_contacts (
    account_id bigint NOT NULL,
    lead_id    bigint NOT NULL,
    contact_id bigint NOT NULL,
    is_main    boolean,
    PRIMARY KEY (account_id, lead_id, contact_id)
);
CREATE INDEX lead_contacts_contact ON lead_contacts (account_id, contact_id);
COMMENT ON TABLE lead_contacts IS 'Contacts of each lead, from the lead''s _embedded.contacts (asked for with with=contacts); rewritten with the lead.';
COMMENT ON COLUMN lead_contacts.is_main IS 'The lead''s main contact.';

CREATE TABLE lead_companies (
    account_id bigint NOT NULL,
    lead_id    bigint NOT NULL,
    company_id bigint NOT NULL,
    PRIMARY KEY (account_id, lead_id, company_id)
);
CREATE INDEX lead_companies_company ON lead_companies (account_id, company_id);
COMMENT ON TABLE lead_companies IS 'The company of each lead (Kommo allows one), from the lead''s _embedded.companies; rewritten with the lead.';

CREATE TABLE contact_companies (
    account_id bigint NOT NULL,
    contact_id bigint NOT NULL,
    company_id bigint NOT NULL,
    PRIMARY KEY (account_id, contact_id, company_id)
);
CREATE INDEX contact_companies_company ON contact_companies (account_id, company_id);
COMMENT ON TABLE contact_companies IS 'The company of each contact, from the contact''s _embedded.companies; rewritten with the contact.';

COMMENT ON COLUMN pipelines.gone_at IS 'When a refresh first found the entry no longer listed (NULL: listed). Rows are kept: old entities still point at them.';
COMMENT ON COLUMN pipeline_statuses.gone_at IS 'When the stage was first missing from its pipeline (NULL: listed).';
COMMENT ON COLUMN users.gone_at IS 'When the user was first missing from the list (NULL: listed).';
COMMENT ON COLUMN loss_reasons.gone_at IS 'When the reason was first missing from the list (NULL: listed).';
COMMENT ON COLUMN task_types.gone_at IS 'When the type was first missing from the list (NULL: listed).';
COMMENT ON COLUMN custom_fields.gone_at IS 'When the field was first missing from the list (NULL: listed).';
COMMENT ON COLUMN custom_field_enums.gone_at IS 'When the option was first missing from its field (NULL: listed).';
COMMENT ON COLUMN tags.gone_at IS 'When the tag was first missing from the list (NULL: listed).';

COMMENT ON COLUMN pipelines.account_id IS 'Kommo account id, as in the entity tables.';
COMMENT ON COLUMN pipelines.id IS 'Kommo id of the entry.';
COMMENT ON COLUMN pipelines.name IS 'Name as shown in Kommo.';
COMMENT ON COLUMN pipelines.sort IS 'Display order in Kommo (ascending).';
COMMENT ON COLUMN pipelines.raw IS 'The entry exactly as Kommo listed it.';
COMMENT ON COLUMN pipelines.synced_at IS 'When this row was last written.';
COMMENT ON COLUMN pipeline_statuses.account_id IS 'Kommo account id, as in the entity tables.';
COMMENT ON COLUMN pipeline_statuses.pipeline_id IS 'Pipeline the stage belongs to (pipelines.id).';
COMMENT ON COLUMN pipeline_statuses.id IS 'Stage id; leads.status_id points here (with leads.pipeline_id).';
COMMENT ON COLUMN pipeline_statuses.name IS 'Name as shown in Kommo.';
COMMENT ON COLUMN pipeline_statuses.color IS 'Display color (hex), if any.';
COMMENT ON COLUMN pipeline_statuses.is_editable IS 'Whether users may rename or remove the stage (142, 143 and the incoming stage may not).';
COMMENT ON COLUMN pipeline_statuses.synced_at IS 'When this row was last written.';
COMMENT ON COLUMN users.account_id IS 'Kommo account id, as in the entity tables.';
COMMENT ON COLUMN users.id IS 'Kommo id of the entry.';
COMMENT ON COLUMN users.name IS 'Name as shown in Kommo.';
COMMENT ON COLUMN users.email IS 'Login e-mail of the user.';
COMMENT ON COLUMN users.lang IS 'Interface language of the user.';
COMMENT ON COLUMN users.is_admin IS 'Whether the user is an account administrator.';
COMMENT ON COLUMN users.is_active IS 'Whether the user may log in (false: deactivated, still listed).';
COMMENT ON COLUMN users.group_id IS 'Group (department) of the user; 0: none.';
COMMENT ON COLUMN users.role_id IS 'Role of the user, if roles are used.';
COMMENT ON COLUMN users.raw IS 'The entry exactly as Kommo listed it.';
COMMENT ON COLUMN users.synced_at IS 'When this row was last written.';
COMMENT ON COLUMN loss_reasons.account_id IS 'Kommo account id, as in the entity tables.';
COMMENT ON COLUMN loss_reasons.id IS 'Kommo id of the entry.';
COMMENT ON COLUMN loss_reasons.name IS 'The reason as users pick it when a lead is lost.';
COMMENT ON COLUMN loss_reasons.sort IS 'Display order in Kommo (ascending).';
COMMENT ON COLUMN loss_reasons.created_at IS 'When the entry was created.';
COMMENT ON COLUMN loss_reasons.updated_at IS 'When the entry was last changed in Kommo.';
COMMENT ON COLUMN loss_reasons.raw IS 'The entry exactly as Kommo listed it.';
COMMENT ON COLUMN loss_reasons.synced_at IS 'When this row was last written.';
COMMENT ON COLUMN task_types.account_id IS 'Kommo account id, as in the entity tables.';
COMMENT ON COLUMN task_types.id IS 'Kommo id of the entry.';
COMMENT ON COLUMN task_types.name IS 'Name as shown in Kommo.';
COMMENT ON COLUMN task_types.color IS 'Display color (hex), if any.';
COMMENT ON COLUMN task_types.icon_id IS 'Icon of the type in the Kommo interface.';
COMMENT ON COLUMN task_types.raw IS 'The entry exactly as Kommo listed it.';
COMMENT ON COLUMN task_types.synced_at IS 'When this row was last written.';
COMMENT ON COLUMN custom_fields.account_id IS 'Kommo account id, as in the entity tables.';
COMMENT ON COLUMN custom_fields.id IS 'Field id; custom_field_values.field_id points here.';
COMMENT ON COLUMN custom_fields.name IS 'Name as shown in Kommo.';
COMMENT ON COLUMN custom_fields.sort IS 'Display order in Kommo (ascending).';
COMMENT ON COLUMN custom_fields.group_id IS 'Tab (field group) the field is shown on, if any.';
COMMENT ON COLUMN custom_fields.is_api_only IS 'Whether the field is hidden from the interface and set only by integrations.';
COMMENT ON COLUMN custom_fields.is_predefined IS 'Whether Kommo created the field (phone, e-mail, position, ...).';
COMMENT ON COLUMN custom_fields.is_deletable IS 'Whether users may delete the field.';
COMMENT ON COLUMN custom_fields.raw IS 'The entry exactly as Kommo listed it.';
COMMENT ON COLUMN custom_fields.synced_at IS 'When this row was last written.';
COMMENT ON COLUMN custom_field_enums.account_id IS 'Kommo account id, as in the entity tables.';
COMMENT ON COLUMN custom_field_enums.field_id IS 'The field the option belongs to (custom_fields.id).';
COMMENT ON COLUMN custom_field_enums.id IS 'Option id; custom_field_values.enum_id points here.';
COMMENT ON COLUMN custom_field_enums.sort IS 'Display order in Kommo (ascending).';
COMMENT ON COLUMN custom_field_enums.synced_at IS 'When this row was last written.';
COMMENT ON COLUMN tags.account_id IS 'Kommo account id, as in the entity tables.';
COMMENT ON COLUMN tags.entity_type IS 'leads, contacts or companies: tags are kept per entity type.';
COMMENT ON COLUMN tags.id IS 'Kommo id of the entry.';
COMMENT ON COLUMN tags.name IS 'The tag as shown on entities.';
COMMENT ON COLUMN tags.color IS 'Display color (hex), if any.';
COMMENT ON COLUMN tags.raw IS 'The entry exactly as Kommo listed it.';
COMMENT ON COLUMN tags.synced_at IS 'When this row was last written.';
COMMENT ON COLUMN lead_contacts.account_id IS 'Kommo account id, as in the entity tables.';
COMMENT ON COLUMN lead_contacts.lead_id IS 'The lead (leads.id).';
COMMENT ON COLUMN lead_contacts.contact_id IS 'A contact of the lead (contacts.id).';
COMMENT ON COLUMN lead_companies.account_id IS 'Kommo account id, as in the entity tables.';
COMMENT ON COLUMN lead_companies.lead_id IS 'The lead (leads.id).';
COMMENT ON COLUMN lead_companies.company_id IS 'Company of the lead (companies.id).';
COMMENT ON COLUMN contact_companies.account_id IS 'Kommo account id, as in the entity tables.';
COMMENT ON COLUMN contact_companies.contact_id IS 'The contact (contacts.id).';
COMMENT ON COLUMN contact_companies.company_id IS 'Company of the contact (companies.id).';

-- Links of entities mirrored before this version, from what their stored bodies list.
INSERT INTO lead_contacts (account_id, lead_id, contact_id, is_main)
SELECT l.account_id, l.id, (c->>'id')::bigint, (c->>'is_main')::boolean
FROM leads l, jsonb_array_elements(l.raw->'_embedded'->'contacts') c
WHERE jsonb_typeof(l.raw->'_embedded'->'contacts') = 'array' AND c->>'id' ~ '^[0-9]+$'
ON CONFLICT DO NOTHING;
INSERT INTO lead_companies (account_id, lead_id, company_id)
SELECT l.account_id, l.id, (c->>'id')::bigint
FROM leads l, jsonb_array_elements(l.raw->'_embedded'->'companies') c
WHERE jsonb_typeof(l.raw->'_embedded'->'companies') = 'array' AND c->>'id' ~ '^[0-9]+$'
ON CONFLICT DO NOTHING;
INSERT INTO contact_companies (account_id, contact_id, company_id)
SELECT t.account_id, t.id, (c->>'id')::bigint
FROM contacts t, jsonb_array_elements(t.raw->'_embedded'->'companies') c
WHERE jsonb_typeof(t.raw->'_embedded'->'companies') = 'array' AND c->>'id' ~ '^[0-9]+$'
ON CONFLICT DO NOTHING;

-- Leads were listed without `with=contacts` before this version, so their stored bodies do
-- not say who their contacts are: the leads stream walks from the beginning once more (rows
-- are kept; each is rewritten with its contacts).
UPDATE sync_state SET cursor = '{"version": "2"}'::jsonb WHERE stream = 'leads';
