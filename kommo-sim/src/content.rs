//! Realistic entity content: building new leads, contacts, companies and tasks, and editing them.
//!
//! Shared by the seeder and the mutator so that seeded and live-created entities look alike. Every
//! function takes the random source explicitly, which keeps seeding deterministic.

use rand::seq::SliceRandom;
use rand::Rng;
use serde_json::{json, Value};

use crate::entity::Entity;
use crate::reference::{FieldDef, FieldType, Reference};

const FIRST_NAMES: &[&str] = &[
    "Ana",
    "Bruno",
    "Camila",
    "Daniel",
    "Elena",
    "Felipe",
    "Gabriela",
    "Hugo",
    "Isabel",
    "James",
    "Julia",
    "Kevin",
    "Laura",
    "Lucas",
    "Maria",
    "Mateo",
    "Natalia",
    "Oliver",
    "Paula",
    "Rafael",
    "Sara",
    "Thomas",
    "Valentina",
    "William",
    "Ximena",
    "Yusuf",
    "Zoe",
    "Pedro",
    "Fernanda",
    "Sophie",
];
const LAST_NAMES: &[&str] = &[
    "Silva",
    "Santos",
    "García",
    "Martínez",
    "Smith",
    "Johnson",
    "Oliveira",
    "Rodríguez",
    "Brown",
    "López",
    "Costa",
    "Gómez",
    "Williams",
    "Pereira",
    "Hernández",
    "Miller",
    "Almeida",
    "Díaz",
    "Wilson",
    "Ribeiro",
    "Moreno",
    "Taylor",
    "Carvalho",
    "Romero",
    "Anderson",
    "Souza",
    "Ruiz",
];
const COMPANY_WORDS: &[&str] = &[
    "Acme",
    "Andes",
    "Atlântico",
    "Blue River",
    "Cedar",
    "Condor",
    "Delta",
    "Everest",
    "Falcon",
    "Granite",
    "Horizon",
    "Iguazú",
    "Jaguar",
    "Lumen",
    "Maple",
    "Nimbus",
    "Orion",
    "Pampa",
    "Quartz",
    "Sierra",
    "Solaris",
    "Tropic",
    "Vértice",
    "Zenith",
];
const COMPANY_KINDS: &[&str] = &[
    "Logistics",
    "Foods",
    "Tech",
    "Clinic",
    "Academy",
    "Motors",
    "Textiles",
    "Consulting",
    "Retail",
    "Labs",
    "Builders",
    "Travel",
];
const COMPANY_FORMS: &[&str] = &["Ltda.", "S.A.", "Inc.", "LLC", "S.A. de C.V.", "GmbH", ""];
const PRODUCTS: &[&str] = &[
    "annual license",
    "onboarding package",
    "10 seats",
    "premium support",
    "website redesign",
    "training",
    "integration",
    "renewal",
    "hardware bundle",
    "pilot project",
];
const POSITIONS: &[&str] = &[
    "CEO",
    "Sales manager",
    "Purchasing manager",
    "CTO",
    "Office manager",
    "Marketing director",
    "Accountant",
    "Owner",
    "Head of operations",
];
const UTM_SOURCES: &[&str] = &[
    "google",
    "facebook",
    "instagram",
    "newsletter",
    "linkedin",
    "tiktok",
];
const COMMENTS: &[&str] = &[
    "Asked for a discount on the yearly plan.",
    "Wants a demo next week, prefers mornings.",
    "Budget approved by the board.",
    "Comparing us with two competitors.",
    "Call back after the holidays.",
    "Needs an invoice in the company's name.",
    "Interested in the integration with their ERP.",
];
const STREETS: &[&str] = &[
    "Av. Paulista 1000, São Paulo",
    "Calle 93 #11-26, Bogotá",
    "Av. Reforma 222, Ciudad de México",
    "350 Fifth Avenue, New York",
    "Rua das Flores 45, Curitiba",
    "Av. Corrientes 1234, Buenos Aires",
];
const TASK_TEXTS: &[&str] = &[
    "Call the client back",
    "Send the commercial proposal",
    "Schedule a demo",
    "Follow up on the invoice",
    "Confirm the meeting time",
    "Prepare the contract draft",
    "Check whether the payment arrived",
    "Send the onboarding materials",
];
const TASK_RESULTS: &[&str] = &[
    "Done",
    "Client confirmed",
    "Sent by e-mail",
    "No answer, will try again",
    "Meeting moved to next week",
];

/// Where entity links point and which account they belong to.
#[derive(Clone, Copy)]
pub struct Ctx<'a> {
    pub reference: &'a Reference,
    pub base: &'a str,
}

/// Ids that a new entity may link to.
#[derive(Clone, Copy, Default)]
pub struct LinkPool<'a> {
    pub leads: &'a [i64],
    pub contacts: &'a [i64],
    pub companies: &'a [i64],
}

/// A change worth an event in `/api/v4/events`, produced by an edit.
#[derive(Clone, Debug)]
pub struct Change {
    pub kind: &'static str,
    pub before: Value,
    pub after: Value,
}

fn href(base: &str, e: &str, id: i64) -> Value {
    json!({"self": {"href": format!("{base}/api/v4/{e}/{id}")}})
}

fn pick<'a, T>(rng: &mut impl Rng, items: &'a [T]) -> &'a T {
    items.choose(rng).expect("non-empty list")
}

fn person_name(rng: &mut impl Rng) -> (String, String) {
    let first = pick(rng, FIRST_NAMES).to_string();
    let last = if rng.gen_bool(0.9) {
        pick(rng, LAST_NAMES).to_string()
    } else {
        String::new()
    };
    (first, last)
}

fn company_name(rng: &mut impl Rng) -> String {
    let form = pick(rng, COMPANY_FORMS);
    let base = format!("{} {}", pick(rng, COMPANY_WORDS), pick(rng, COMPANY_KINDS));
    if form.is_empty() {
        base
    } else {
        format!("{base} {form}")
    }
}

fn lead_name(rng: &mut impl Rng, id: i64) -> String {
    match rng.gen_range(0..5) {
        0 => format!("Deal #{id}"),
        1 => "Inquiry from the website".to_string(),
        2 => {
            let (f, l) = person_name(rng);
            format!("{f} {l}").trim().to_string()
        }
        _ => format!("{} — {}", company_name(rng), pick(rng, PRODUCTS)),
    }
}

fn slug(s: &str) -> String {
    s.chars()
        .filter_map(|c| match c {
            'a'..='z' | '0'..='9' => Some(c),
            'A'..='Z' => Some(c.to_ascii_lowercase()),
            'á' | 'â' | 'ã' | 'à' => Some('a'),
            'é' | 'ê' => Some('e'),
            'í' => Some('i'),
            'ó' | 'ô' | 'õ' => Some('o'),
            'ú' => Some('u'),
            'ç' => Some('c'),
            'ñ' => Some('n'),
            ' ' | '-' => Some('-'),
            _ => None,
        })
        .collect::<String>()
        .trim_matches('-')
        .to_string()
}

fn phone(rng: &mut impl Rng) -> String {
    match rng.gen_range(0..3) {
        0 => format!(
            "+55 11 9{:04} {:04}",
            rng.gen_range(0..10_000),
            rng.gen_range(0..10_000)
        ),
        1 => format!(
            "+52 55 {:04} {:04}",
            rng.gen_range(0..10_000),
            rng.gen_range(0..10_000)
        ),
        _ => format!(
            "+1 {:03} 555 {:04}",
            rng.gen_range(200..1000),
            rng.gen_range(0..10_000)
        ),
    }
}

fn day_start(t: i64) -> i64 {
    t - t.rem_euclid(86_400)
}

/// One custom field's `values` array, typed as Kommo types it.
fn field_values(f: &FieldDef, rng: &mut impl Rng, name_hint: &str, created_at: i64) -> Value {
    let enum_val = |o: &crate::reference::EnumOpt, with_code: bool| json!({"value": o.value, "enum_id": o.id, "enum_code": if with_code { Value::from(o.value) } else { Value::Null }});
    match f.ftype {
        FieldType::Text => {
            let v = match f.code {
                Some("POSITION") => pick(rng, POSITIONS).to_string(),
                Some("UTM_SOURCE") => pick(rng, UTM_SOURCES).to_string(),
                _ => format!("{} {}", pick(rng, PRODUCTS), rng.gen_range(1..100)),
            };
            json!([{ "value": v }])
        }
        FieldType::Textarea => {
            let v = if f.code == Some("ADDRESS") {
                pick(rng, STREETS).to_string()
            } else {
                pick(rng, COMMENTS).to_string()
            };
            json!([{ "value": v }])
        }
        FieldType::Numeric => {
            // Kommo returns numeric values as strings.
            let n: i64 = if f.name == "Employees" {
                *pick(rng, &[3, 8, 15, 40, 120, 250, 800, 2500])
            } else {
                rng.gen_range(5..2000) * 100
            };
            json!([{ "value": n.to_string() }])
        }
        FieldType::Select => json!([enum_val(pick(rng, &f.enums), false)]),
        FieldType::Multiselect => {
            let k = rng.gen_range(1..=3.min(f.enums.len()));
            let mut opts: Vec<_> = f.enums.choose_multiple(rng, k).collect();
            opts.sort_by_key(|o| o.sort);
            Value::Array(opts.into_iter().map(|o| enum_val(o, false)).collect())
        }
        FieldType::Date => {
            let t = if f.name == "Birthday" {
                rng.gen_range(-300_000_000..950_000_000)
            } else {
                created_at + rng.gen_range(0..60) * 86_400
            };
            json!([{ "value": day_start(t) }])
        }
        FieldType::Checkbox => json!([{ "value": rng.gen_bool(0.5) }]),
        FieldType::Multitext => {
            let n = if rng.gen_bool(0.2) { 2 } else { 1 };
            let mut vals = Vec::new();
            for i in 0..n {
                let code = if f.code == Some("PHONE") {
                    if i == 0 && rng.gen_bool(0.5) {
                        "WORK"
                    } else {
                        "MOB"
                    }
                } else if i == 0 {
                    "WORK"
                } else {
                    "PRIV"
                };
                let opt = f
                    .enums
                    .iter()
                    .find(|o| o.value == code)
                    .unwrap_or(&f.enums[0]);
                let value = if f.code == Some("PHONE") {
                    phone(rng)
                } else {
                    let who = if name_hint.is_empty() {
                        "info"
                    } else {
                        name_hint
                    };
                    let domain = *pick(
                        rng,
                        &["gmail.com", "outlook.com", "empresa.com.br", "corp.example"],
                    );
                    format!(
                        "{}{}@{}",
                        slug(who).replace('-', "."),
                        if i > 0 { "2" } else { "" },
                        domain
                    )
                };
                vals.push(json!({"value": value, "enum_id": opt.id, "enum_code": opt.value}));
            }
            Value::Array(vals)
        }
        FieldType::Url => {
            let n = if name_hint.is_empty() {
                "company"
            } else {
                name_hint
            };
            json!([{ "value": format!("https://{}.com", slug(n)) }])
        }
    }
}

fn field_entry(f: &FieldDef, values: Value) -> Value {
    json!({
        "field_id": f.id, "field_name": f.name, "field_code": f.code,
        "field_type": f.ftype.as_str(), "values": values
    })
}

/// `custom_fields_values` for a new entity: each field present with its own probability; `null`
/// when none is (as Kommo sends it). Fields no entity uses are skipped before any draw, so
/// adding such definitions does not change what a seed generates.
fn custom_fields(
    fields: &[FieldDef],
    rng: &mut impl Rng,
    name_hint: &str,
    created_at: i64,
) -> Value {
    let mut entries: Vec<Value> = Vec::new();
    for f in fields.iter().filter(|f| f.in_use()) {
        if rng.gen_bool(f.presence) {
            entries.push(field_entry(f, field_values(f, rng, name_hint, created_at)));
        }
    }
    if entries.is_empty() {
        Value::Null
    } else {
        Value::Array(entries)
    }
}

fn tags_json(ctx: Ctx, e: Entity, rng: &mut impl Rng, p_any: f64) -> Value {
    let pool = &ctx.reference.tags[e.index()];
    if pool.is_empty() || !rng.gen_bool(p_any) {
        return json!([]);
    }
    let k = rng.gen_range(1..=2.min(pool.len()));
    Value::Array(
        pool.choose_multiple(rng, k)
            .map(|t| json!({"id": t.id, "name": t.name, "color": t.color}))
            .collect(),
    )
}

fn user(ctx: Ctx, rng: &mut impl Rng) -> i64 {
    // The integration robot only creates; people do most of the work.
    pick(rng, ctx.reference.people()).id
}

/// A new entity of kind `e`.
#[allow(clippy::too_many_arguments)]
pub fn make(
    e: Entity,
    ctx: Ctx,
    rng: &mut impl Rng,
    id: i64,
    created_at: i64,
    updated_at: i64,
    pool: LinkPool,
) -> Value {
    match e {
        Entity::Leads => make_lead(ctx, rng, id, created_at, updated_at, pool),
        Entity::Contacts => make_contact(ctx, rng, id, created_at, updated_at, pool),
        Entity::Companies => make_company(ctx, rng, id, created_at, updated_at),
        Entity::Tasks => make_task(ctx, rng, id, created_at, updated_at, pool),
    }
}

fn creator(ctx: Ctx, rng: &mut impl Rng, responsible: i64) -> i64 {
    if rng.gen_bool(0.1) {
        0 // created by a robot / the API
    } else if rng.gen_bool(0.7) {
        responsible
    } else {
        user(ctx, rng)
    }
}

fn make_lead(
    ctx: Ctx,
    rng: &mut impl Rng,
    id: i64,
    created_at: i64,
    updated_at: i64,
    pool: LinkPool,
) -> Value {
    let r = ctx.reference;
    let pidx = match rng.gen_range(0..10) {
        0..=5 => 0,
        6 | 7 => 1,
        _ => 2,
    };
    let p = &r.pipelines[pidx.min(r.pipelines.len() - 1)];
    let roll = rng.gen_range(0..100);
    let status_id = if roll < 25 {
        142
    } else if roll < 45 {
        143
    } else {
        let open: Vec<i64> = p
            .statuses
            .iter()
            .filter(|s| s.id > 143)
            .map(|s| s.id)
            .collect();
        // A pipeline whose open stages were all removed at run time still takes leads: won.
        if open.is_empty() {
            142
        } else {
            *pick(rng, &open)
        }
    };
    let closed_at = if status_id == 142 || status_id == 143 {
        json!(rng.gen_range(created_at..=updated_at))
    } else {
        Value::Null
    };
    let loss_reason_id = if status_id == 143 && rng.gen_bool(0.7) {
        json!(pick(rng, &r.loss_reasons).0)
    } else {
        Value::Null
    };
    let price: i64 = if rng.gen_bool(0.15) {
        0
    } else {
        rng.gen_range(5..500) * *pick(rng, &[10, 50, 100])
    };
    let responsible = user(ctx, rng);
    let created_by = creator(ctx, rng, responsible);
    let updated_by = if updated_at == created_at {
        created_by
    } else {
        user(ctx, rng)
    };
    let mut contacts = Vec::new();
    if !pool.contacts.is_empty() {
        let k = *pick(rng, &[0, 1, 1, 1, 2]);
        for (i, cid) in pool.contacts.choose_multiple(rng, k).enumerate() {
            contacts.push(
                json!({"id": cid, "is_main": i == 0, "_links": href(ctx.base, "contacts", *cid)}),
            );
        }
    }
    let companies: Vec<Value> = if !pool.companies.is_empty() && rng.gen_bool(0.45) {
        let cid = *pick(rng, pool.companies);
        vec![json!({"id": cid, "_links": href(ctx.base, "companies", cid)})]
    } else {
        vec![]
    };
    let name = lead_name(rng, id);
    json!({
        "id": id,
        "name": name,
        "price": price,
        "responsible_user_id": responsible,
        "group_id": r.group_of(responsible),
        "status_id": status_id,
        "pipeline_id": p.id,
        "loss_reason_id": loss_reason_id,
        "source_id": if rng.gen_bool(0.1) { json!(rng.gen_range(40_000_001..40_000_006)) } else { Value::Null },
        "created_by": created_by,
        "updated_by": updated_by,
        "created_at": created_at,
        "updated_at": updated_at,
        "closed_at": closed_at,
        "closest_task_at": null,
        "is_deleted": false,
        "custom_fields_values": custom_fields(&r.fields[Entity::Leads.index()], rng, "", created_at),
        "score": null,
        "account_id": r.account_id,
        "labor_cost": null,
        "_links": href(ctx.base, "leads", id),
        "_embedded": {
            "tags": tags_json(ctx, Entity::Leads, rng, 0.3),
            "companies": companies,
            "contacts": contacts,
        }
    })
}

fn make_contact(
    ctx: Ctx,
    rng: &mut impl Rng,
    id: i64,
    created_at: i64,
    updated_at: i64,
    pool: LinkPool,
) -> Value {
    let r = ctx.reference;
    let (first, last) = person_name(rng);
    let name = format!("{first} {last}").trim().to_string();
    let responsible = user(ctx, rng);
    let created_by = creator(ctx, rng, responsible);
    let companies: Vec<Value> = if !pool.companies.is_empty() && rng.gen_bool(0.5) {
        let cid = *pick(rng, pool.companies);
        vec![json!({"id": cid, "_links": href(ctx.base, "companies", cid)})]
    } else {
        vec![]
    };
    json!({
        "id": id,
        "name": name,
        "first_name": first,
        "last_name": last,
        "responsible_user_id": responsible,
        "group_id": r.group_of(responsible),
        "created_by": created_by,
        "updated_by": if updated_at == created_at { created_by } else { user(ctx, rng) },
        "created_at": created_at,
        "updated_at": updated_at,
        "closest_task_at": null,
        "is_deleted": false,
        "custom_fields_values": custom_fields(&r.fields[Entity::Contacts.index()], rng, &name, created_at),
        "account_id": r.account_id,
        "_links": href(ctx.base, "contacts", id),
        "_embedded": {
            "tags": tags_json(ctx, Entity::Contacts, rng, 0.2),
            "companies": companies,
        }
    })
}

fn make_company(ctx: Ctx, rng: &mut impl Rng, id: i64, created_at: i64, updated_at: i64) -> Value {
    let r = ctx.reference;
    let name = company_name(rng);
    let responsible = user(ctx, rng);
    let created_by = creator(ctx, rng, responsible);
    json!({
        "id": id,
        "name": name,
        "responsible_user_id": responsible,
        "group_id": r.group_of(responsible),
        "created_by": created_by,
        "updated_by": if updated_at == created_at { created_by } else { user(ctx, rng) },
        "created_at": created_at,
        "updated_at": updated_at,
        "closest_task_at": null,
        "is_deleted": false,
        "custom_fields_values": custom_fields(&r.fields[Entity::Companies.index()], rng, &name, created_at),
        "account_id": r.account_id,
        "_links": href(ctx.base, "companies", id),
        "_embedded": {
            "tags": tags_json(ctx, Entity::Companies, rng, 0.2),
        }
    })
}

fn make_task(
    ctx: Ctx,
    rng: &mut impl Rng,
    id: i64,
    created_at: i64,
    updated_at: i64,
    pool: LinkPool,
) -> Value {
    let r = ctx.reference;
    let roll = rng.gen_range(0..100);
    let (entity_id, entity_type) = match roll {
        0..=59 if !pool.leads.is_empty() => (json!(pick(rng, pool.leads)), json!("leads")),
        60..=84 if !pool.contacts.is_empty() => {
            (json!(pick(rng, pool.contacts)), json!("contacts"))
        }
        85..=97 if !pool.companies.is_empty() => {
            (json!(pick(rng, pool.companies)), json!("companies"))
        }
        _ => (Value::Null, Value::Null), // a task bound to no entity
    };
    let complete_till =
        day_start(created_at) + rng.gen_range(1..14) * 86_400 + rng.gen_range(9..19) * 3600 - 1;
    let is_completed = complete_till < updated_at && rng.gen_bool(0.8);
    let result = if is_completed && rng.gen_bool(0.7) {
        json!({"text": pick(rng, TASK_RESULTS)})
    } else {
        json!({})
    };
    let responsible = user(ctx, rng);
    let created_by = creator(ctx, rng, responsible);
    let task_type = pick(rng, &r.task_types).0;
    json!({
        "id": id,
        "created_by": created_by,
        "updated_by": if updated_at == created_at { created_by } else { responsible },
        "created_at": created_at,
        "updated_at": updated_at,
        "responsible_user_id": responsible,
        "group_id": r.group_of(responsible),
        "entity_id": entity_id,
        "entity_type": entity_type,
        "duration": *pick(rng, &[0, 0, 0, 900, 1800, 3600]),
        "is_completed": is_completed,
        "task_type_id": task_type,
        "text": pick(rng, TASK_TEXTS),
        "result": result,
        "complete_till": complete_till,
        "account_id": r.account_id,
        "_links": href(ctx.base, "tasks", id),
    })
}

/// Replaces the value of one custom field (adding the field if absent).
fn set_field(fields: &mut Value, f: &FieldDef, values: Value) {
    if !fields.is_array() {
        *fields = json!([]);
    }
    let arr = fields.as_array_mut().expect("array");
    match arr.iter_mut().find(|x| x["field_id"] == json!(f.id)) {
        Some(x) => x["values"] = values,
        None => arr.push(field_entry(f, values)),
    }
}

/// Edits an entity the way a person or a robot would: changes a few fields, bumps `updated_at`
/// to `now`. The content always differs from before, even within the same second, so a client
/// that dedups by `updated_at` alone is caught. Returns the changes worth an event.
pub fn edit(e: Entity, ctx: Ctx, rng: &mut impl Rng, v: &mut Value, now: i64) -> Vec<Change> {
    let before = v.clone();
    let mut changes = Vec::new();
    let r = ctx.reference;
    let n_ops = rng.gen_range(1..=3);
    for _ in 0..n_ops {
        match e {
            Entity::Leads => edit_lead_once(ctx, rng, v, now, &mut changes),
            Entity::Contacts | Entity::Companies => match rng.gen_range(0..4) {
                0 => {
                    if e == Entity::Contacts {
                        let (f, l) = person_name(rng);
                        v["name"] = json!(format!("{f} {l}").trim());
                        v["first_name"] = json!(f);
                        v["last_name"] = json!(l);
                    } else {
                        v["name"] = json!(company_name(rng));
                    }
                }
                1 => responsible_change(ctx, rng, v, &mut changes),
                _ => {
                    let fields = r.fields_in_use(e);
                    let f = *pick(rng, &fields);
                    let hint = v["name"].as_str().unwrap_or("").to_string();
                    let created = v["created_at"].as_i64().unwrap_or(now);
                    set_field(
                        &mut v["custom_fields_values"],
                        f,
                        field_values(f, rng, &hint, created),
                    );
                }
            },
            Entity::Tasks => match rng.gen_range(0..4) {
                0 => v["text"] = json!(pick(rng, TASK_TEXTS)),
                1 => {
                    let till = v["complete_till"].as_i64().unwrap_or(now);
                    v["complete_till"] = json!(till + rng.gen_range(1..5) * 86_400);
                }
                2 => responsible_change(ctx, rng, v, &mut changes),
                _ => {
                    if v["is_completed"] != json!(true) {
                        v["is_completed"] = json!(true);
                        v["result"] = json!({"text": pick(rng, TASK_RESULTS)});
                        changes.push(Change {
                            kind: "task_completed",
                            before: json!([]),
                            after: json!([]),
                        });
                    } else {
                        v["result"] = json!({"text": pick(rng, TASK_RESULTS)});
                    }
                }
            },
        }
    }
    let content_same = |a: &Value, b: &Value| {
        let strip = |x: &Value| {
            let mut x = x.clone();
            x["updated_at"] = Value::Null;
            x["updated_by"] = Value::Null;
            x
        };
        strip(a) == strip(b)
    };
    // Guarantee a visible change: fall back to fields that cannot collide with the old value.
    if content_same(&before, v) {
        match e {
            Entity::Leads => {
                let p = v["price"].as_i64().unwrap_or(0);
                v["price"] = json!(p + rng.gen_range(1..100) * 10);
            }
            Entity::Tasks => {
                let till = v["complete_till"].as_i64().unwrap_or(now);
                v["complete_till"] = json!(till + 3600);
            }
            _ => {
                let old = v["name"].as_str().unwrap_or("").to_string();
                v["name"] = json!(format!("{old} ({})", rng.gen_range(2..100)));
            }
        }
    }
    v["updated_at"] = json!(now);
    v["updated_by"] = json!(user(ctx, rng));
    changes
}

/// Puts a lead on `status_id` of `pipeline_id` at `now` (closing or reopening it), without
/// touching `updated_at`; returns the `lead_status_changed` change, or `None` if it is there.
pub fn set_stage(v: &mut Value, pipeline_id: i64, status_id: i64, now: i64) -> Option<Change> {
    let old_status = v["status_id"].as_i64().unwrap_or(0);
    let old_pipeline = v["pipeline_id"].as_i64().unwrap_or(0);
    if (old_status, old_pipeline) == (status_id, pipeline_id) {
        return None;
    }
    v["status_id"] = json!(status_id);
    v["pipeline_id"] = json!(pipeline_id);
    let closed = status_id == 142 || status_id == 143;
    let was_closed = old_status == 142 || old_status == 143;
    if !closed {
        v["closed_at"] = Value::Null;
    } else if !was_closed || old_status != status_id {
        v["closed_at"] = json!(now);
    }
    if status_id != 143 {
        v["loss_reason_id"] = Value::Null;
    }
    Some(Change {
        kind: "lead_status_changed",
        before: json!([{"lead_status": {"id": old_status, "pipeline_id": old_pipeline}}]),
        after: json!([{"lead_status": {"id": status_id, "pipeline_id": pipeline_id}}]),
    })
}

fn responsible_change(ctx: Ctx, rng: &mut impl Rng, v: &mut Value, changes: &mut Vec<Change>) {
    let old = v["responsible_user_id"].as_i64().unwrap_or(0);
    let new = user(ctx, rng);
    if new != old {
        v["responsible_user_id"] = json!(new);
        v["group_id"] = json!(ctx.reference.group_of(new));
        changes.push(Change {
            kind: "entity_responsible_changed",
            before: json!([{"responsible_user": {"id": old}}]),
            after: json!([{"responsible_user": {"id": new}}]),
        });
    }
}

fn edit_lead_once(
    ctx: Ctx,
    rng: &mut impl Rng,
    v: &mut Value,
    now: i64,
    changes: &mut Vec<Change>,
) {
    let r = ctx.reference;
    match rng.gen_range(0..6) {
        0 => {
            let id = v["id"].as_i64().unwrap_or(0);
            v["name"] = json!(lead_name(rng, id));
        }
        1 => {
            let p = v["price"].as_i64().unwrap_or(0);
            v["price"] = json!((p + rng.gen_range(-20..50) * 100).max(0));
        }
        2 | 3 => {
            let pid = v["pipeline_id"].as_i64().unwrap_or(0);
            let Some(p) = r.pipeline(pid).or(r.pipelines.first()) else {
                return;
            };
            let old = v["status_id"].as_i64().unwrap_or(0);
            let new = pick(rng, &p.statuses).id;
            if new == old {
                return;
            }
            v["status_id"] = json!(new);
            if new == 142 || new == 143 {
                v["closed_at"] = json!(now);
                if new == 143 && rng.gen_bool(0.7) {
                    v["loss_reason_id"] = json!(pick(rng, &r.loss_reasons).0);
                }
            } else {
                v["closed_at"] = Value::Null;
                v["loss_reason_id"] = Value::Null;
            }
            changes.push(Change {
                kind: "lead_status_changed",
                before: json!([{"lead_status": {"id": old, "pipeline_id": p.id}}]),
                after: json!([{"lead_status": {"id": new, "pipeline_id": p.id}}]),
            });
        }
        4 => responsible_change(ctx, rng, v, changes),
        _ => {
            let fields = r.fields_in_use(Entity::Leads);
            let f = *pick(rng, &fields);
            let created = v["created_at"].as_i64().unwrap_or(now);
            set_field(
                &mut v["custom_fields_values"],
                f,
                field_values(f, rng, "", created),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn edit_always_changes_content() {
        let r = Reference::new(1);
        let ctx = Ctx {
            reference: &r,
            base: "http://x",
        };
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let pool = LinkPool {
            leads: &[1, 2],
            contacts: &[3, 4],
            companies: &[5],
        };
        for e in Entity::ALL {
            for i in 0..200 {
                let mut v = make(e, ctx, &mut rng, 100 + i, 1000, 1000, pool);
                let before = v.clone();
                edit(e, ctx, &mut rng, &mut v, 1000);
                let mut a = before.clone();
                let mut b = v.clone();
                for x in [&mut a, &mut b] {
                    x["updated_by"] = Value::Null;
                }
                assert_ne!(a, b, "{e} edit changed nothing");
            }
        }
    }
}
