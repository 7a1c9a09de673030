-- Views for the common joins. Every view leaves deleted entities out (deleted_at IS NULL)
-- and tombstones (entities known only from a deletion: raw is JSON null).

CREATE VIEW leads_v AS
SELECT l.account_id,
       l.id,
       l.name,
       l.price,
       l.pipeline_id,
       p.name AS pipeline_name,
       p.sort AS pipeline_sort,
       l.status_id,
       s.name AS status_name,
       s.sort AS status_sort,
       l.status_id = 142 AS is_won,
       l.status_id = 143 AS is_lost,
       l.responsible_user_id,
       u.name AS responsible_user_name,
       l.loss_reason_id,
       r.name AS loss_reason_name,
       main.contact_id AS main_contact_id,
       c.name AS main_contact_name,
       lc.company_id,
       co.name AS company_name,
       l.created_at,
       l.updated_at,
       l.closed_at,
       l.tags
FROM leads l
LEFT JOIN pipelines p ON p.account_id = l.account_id AND p.id = l.pipeline_id
LEFT JOIN pipeline_statuses s
       ON s.account_id = l.account_id AND s.pipeline_id = l.pipeline_id AND s.id = l.status_id
LEFT JOIN users u ON u.account_id = l.account_id AND u.id = l.responsible_user_id
LEFT JOIN loss_reasons r ON r.account_id = l.account_id AND r.id = l.loss_reason_id
LEFT JOIN LATERAL (
    SELECT x.contact_id
    FROM lead_contacts x
    JOIN contacts k ON k.account_id = x.account_id AND k.id = x.contact_id AND k.deleted_at IS NULL
    WHERE x.account_id = l.account_id AND x.lead_id = l.id
    ORDER BY x.is_main DESC NULLS LAST, x.contact_id
    LIMIT 1
) main ON true
LEFT JOIN contacts c ON c.account_id = l.account_id AND c.id = main.contact_id
LEFT JOIN LATERAL (
    SELECT x.company_id
    FROM lead_companies x
    JOIN companies k ON k.account_id = x.account_id AND k.id = x.company_id AND k.deleted_at IS NULL
    WHERE x.account_id = l.account_id AND x.lead_id = l.id
    ORDER BY x.company_id
    LIMIT 1
) lc ON true
LEFT JOIN companies co ON co.account_id = l.account_id AND co.id = lc.company_id
WHERE l.deleted_at IS NULL AND l.raw <> 'null'::jsonb;
COMMENT ON VIEW leads_v IS 'Leads that are not deleted, with the names their ids point at: pipeline, stage, responsible user, loss reason, main contact, company.';
COMMENT ON COLUMN leads_v.pipeline_sort IS 'Order of the pipeline in Kommo''s interface.';
COMMENT ON COLUMN leads_v.status_sort IS 'Order of the stage in its pipeline''s funnel.';
COMMENT ON COLUMN leads_v.is_won IS 'In the won stage (142).';
COMMENT ON COLUMN leads_v.is_lost IS 'In the lost stage (143).';
COMMENT ON COLUMN leads_v.main_contact_id IS 'The lead''s main contact (or its first, where none is main); deleted contacts are left out.';
COMMENT ON COLUMN leads_v.company_id IS 'The lead''s company; a deleted company is left out.';

CREATE VIEW tasks_v AS
SELECT t.account_id,
       t.id,
       t.text,
       t.task_type_id,
       tt.name AS task_type_name,
       t.entity_type,
       t.entity_id,
       t.responsible_user_id,
       u.name AS responsible_user_name,
       t.is_completed,
       t.complete_till,
       NOT coalesce(t.is_completed, false) AND t.complete_till < now() AS is_overdue,
       t.result_text,
       t.created_at,
       t.updated_at
FROM tasks t
LEFT JOIN task_types tt ON tt.account_id = t.account_id AND tt.id = t.task_type_id
LEFT JOIN users u ON u.account_id = t.account_id AND u.id = t.responsible_user_id
WHERE t.deleted_at IS NULL AND t.raw <> 'null'::jsonb;
COMMENT ON VIEW tasks_v IS 'Tasks that are not deleted, with their type and responsible user by name, and whether they are overdue.';
COMMENT ON COLUMN tasks_v.is_overdue IS 'Not completed and its deadline (complete_till) has passed.';
COMMENT ON COLUMN tasks_v.entity_type IS 'What the task is attached to: leads, contacts, companies (entity_id points into that table).';

CREATE VIEW custom_field_values_v AS
SELECT v.account_id,
       v.entity_type,
       v.entity_id,
       v.field_id,
       coalesce(f.name, v.field_name) AS field_name,
       coalesce(f.code, v.field_code) AS field_code,
       coalesce(f.type, v.field_type) AS field_type,
       v.value_index,
       v.value_text,
       v.value_number,
       v.value_time,
       v.value_bool,
       v.enum_id,
       coalesce(e.value, v.enum_code) AS enum_value
FROM custom_field_values v
LEFT JOIN custom_fields f
       ON f.account_id = v.account_id AND f.entity_type = v.entity_type AND f.id = v.field_id
LEFT JOIN custom_field_enums e
       ON e.account_id = v.account_id AND e.field_id = v.field_id AND e.id = v.enum_id
WHERE NOT EXISTS (
    SELECT 1 FROM leads d WHERE v.entity_type = 'leads' AND d.account_id = v.account_id
      AND d.id = v.entity_id AND d.deleted_at IS NOT NULL
) AND NOT EXISTS (
    SELECT 1 FROM contacts d WHERE v.entity_type = 'contacts' AND d.account_id = v.account_id
      AND d.id = v.entity_id AND d.deleted_at IS NOT NULL
) AND NOT EXISTS (
    SELECT 1 FROM companies d WHERE v.entity_type = 'companies' AND d.account_id = v.account_id
      AND d.id = v.entity_id AND d.deleted_at IS NOT NULL
);
COMMENT ON VIEW custom_field_values_v IS 'Custom field values of entities that are not deleted, one row per value, with the field''s name and type from its definition and an option''s label. Values of unknown types are in value_text.';
COMMENT ON COLUMN custom_field_values_v.field_name IS 'The field''s name as defined now (as the entity listed it, where the definition is not stored).';
COMMENT ON COLUMN custom_field_values_v.enum_value IS 'Label of the chosen option (select, multiselect) or its code (multitext: WORK, MOB, ...).';

CREATE VIEW lead_custom_fields_v AS
SELECT v.account_id,
       v.entity_id AS lead_id,
       v.field_id,
       v.field_name,
       v.field_type,
       string_agg(coalesce(v.enum_value, v.value_text), ', ' ORDER BY v.value_index) AS value,
       min(v.value_number) AS value_number,
       min(v.value_time) AS value_time,
       bool_or(v.value_bool) AS value_bool
FROM custom_field_values_v v
WHERE v.entity_type = 'leads'
GROUP BY v.account_id, v.entity_id, v.field_id, v.field_name, v.field_type;
COMMENT ON VIEW lead_custom_fields_v IS 'One row per lead and custom field, by field name: the values joined with ", " (option labels for select fields), and the first number, time or flag.';
