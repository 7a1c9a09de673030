//! Reference data of the simulated account: users, groups, pipelines with statuses, loss reasons,
//! tags, task types and custom field definitions, plus their JSON for the reference endpoints.
//!
//! It is fixed (not seeded) so that ids the daemon stores in reference tables stay the same from
//! run to run; the seeded data only picks among them. Tests may still change it while the
//! account runs (remove a user, rename a pipeline, drop a stage, add a field definition), to
//! exercise a client's reference refresh; [`crate::Sim`] keeps it behind a lock for that.

use std::collections::BTreeSet;
use std::sync::Mutex;

use serde_json::{json, Value};

use crate::entity::Entity;

/// Id of the integration robot, the last seeded user: it creates but is never responsible.
pub const ROBOT_USER_ID: i64 = 8_210_010;

/// A name given at run time, kept for the life of the process like the built-in `&'static str`
/// names beside it. Each distinct name is stored once, so renaming back and forth does not grow.
pub fn intern(name: &str) -> &'static str {
    static NAMES: Mutex<BTreeSet<&'static str>> = Mutex::new(BTreeSet::new());
    let mut names = NAMES.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(&n) = names.get(name) {
        return n;
    }
    let n: &'static str = Box::leak(name.to_string().into_boxed_str());
    names.insert(n);
    n
}

/// A user of the account.
#[derive(Clone, Debug)]
pub struct User {
    pub id: i64,
    pub name: &'static str,
    pub email: &'static str,
    pub group_id: i64,
    pub lang: &'static str,
    pub is_admin: bool,
}

/// A pipeline stage. Every pipeline has 142 (won) and 143 (lost).
#[derive(Clone, Debug)]
pub struct Status {
    pub id: i64,
    pub name: &'static str,
    pub sort: i64,
    pub color: &'static str,
    /// 1 = "incoming" (unsorted) stage, 0 otherwise.
    pub kind: i64,
}

/// A sales pipeline.
#[derive(Clone, Debug)]
pub struct Pipeline {
    pub id: i64,
    pub name: &'static str,
    pub sort: i64,
    pub is_main: bool,
    pub statuses: Vec<Status>,
}

/// Value type of a custom field, named as Kommo names it in `field_type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FieldType {
    Text,
    Textarea,
    Numeric,
    Select,
    Multiselect,
    Date,
    Checkbox,
    Multitext,
    Url,
}

impl FieldType {
    /// Every type, in the order errors list them.
    pub const ALL: [FieldType; 9] = [
        FieldType::Text,
        FieldType::Textarea,
        FieldType::Numeric,
        FieldType::Select,
        FieldType::Multiselect,
        FieldType::Date,
        FieldType::Checkbox,
        FieldType::Multitext,
        FieldType::Url,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            FieldType::Text => "text",
            FieldType::Textarea => "textarea",
            FieldType::Numeric => "numeric",
            FieldType::Select => "select",
            FieldType::Multiselect => "multiselect",
            FieldType::Date => "date",
            FieldType::Checkbox => "checkbox",
            FieldType::Multitext => "multitext",
            FieldType::Url => "url",
        }
    }
}

impl std::str::FromStr for FieldType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim().to_ascii_lowercase();
        FieldType::ALL
            .into_iter()
            .find(|f| f.as_str() == t)
            .ok_or_else(|| {
                let names: Vec<&str> = FieldType::ALL.iter().map(|f| f.as_str()).collect();
                format!("unknown field type {s:?} (expected {})", names.join(", "))
            })
    }
}

/// One enum option of a select, multiselect or multitext field.
#[derive(Clone, Debug)]
pub struct EnumOpt {
    pub id: i64,
    pub value: &'static str,
    pub sort: i64,
}

/// A custom field definition.
#[derive(Clone, Debug)]
pub struct FieldDef {
    pub id: i64,
    pub name: &'static str,
    pub code: Option<&'static str>,
    pub ftype: FieldType,
    pub enums: Vec<EnumOpt>,
    pub sort: i64,
    /// Share of entities that carry a value for this field (realistic sparsity). 0 = a
    /// definition no entity uses: generation skips it before drawing anything, so adding such
    /// definitions leaves the seeded entities byte-identical.
    pub presence: f64,
}

impl FieldDef {
    /// Whether generated entities may carry a value for this field.
    pub fn in_use(&self) -> bool {
        self.presence > 0.0
    }
}

/// A tag.
#[derive(Clone, Debug)]
pub struct Tag {
    pub id: i64,
    pub name: &'static str,
    pub color: Option<&'static str>,
}

/// All reference data of the account.
#[derive(Clone, Debug)]
pub struct Reference {
    pub account_id: i64,
    pub users: Vec<User>,
    pub groups: Vec<(i64, &'static str)>,
    pub pipelines: Vec<Pipeline>,
    pub loss_reasons: Vec<(i64, &'static str)>,
    pub task_types: Vec<(i64, &'static str, Option<&'static str>)>,
    /// Indexed by [`Entity::index`]; tasks have none.
    pub fields: [Vec<FieldDef>; 4],
    /// Indexed by [`Entity::index`]; tasks have none.
    pub tags: [Vec<Tag>; 4],
}

fn enums(first_id: i64, values: &[&'static str]) -> Vec<EnumOpt> {
    values
        .iter()
        .enumerate()
        .map(|(i, v)| EnumOpt {
            id: first_id + 2 * i as i64,
            value: v,
            sort: 2 * (i as i64 + 1),
        })
        .collect()
}

fn field(
    id: i64,
    name: &'static str,
    code: Option<&'static str>,
    ftype: FieldType,
    enums: Vec<EnumOpt>,
    sort: i64,
    presence: f64,
) -> FieldDef {
    FieldDef {
        id,
        name,
        code,
        ftype,
        enums,
        sort,
        presence,
    }
}

fn tags(first_id: i64, names: &[&'static str]) -> Vec<Tag> {
    const COLORS: [Option<&str>; 4] = [None, Some("#FFC8C8"), Some("#C1E0FF"), None];
    names
        .iter()
        .enumerate()
        .map(|(i, n)| Tag {
            id: first_id + i as i64,
            name: n,
            color: COLORS[i % COLORS.len()],
        })
        .collect()
}

fn pipeline(
    id: i64,
    name: &'static str,
    sort: i64,
    first_status: i64,
    stages: &[&'static str],
) -> Pipeline {
    const COLORS: [&str; 6] = [
        "#c1c1c1", "#99ccff", "#ffff99", "#ffcc66", "#deff81", "#ccc8f9",
    ];
    let mut statuses = vec![Status {
        id: first_status,
        name: "Incoming leads",
        sort: 10,
        color: "#c1c1c1",
        kind: 1,
    }];
    for (i, s) in stages.iter().enumerate() {
        statuses.push(Status {
            id: first_status + 1 + i as i64,
            name: s,
            sort: 20 + 10 * i as i64,
            color: COLORS[(i + 1) % COLORS.len()],
            kind: 0,
        });
    }
    statuses.push(Status {
        id: 142,
        name: "Closed - won",
        sort: 10000,
        color: "#CCFF66",
        kind: 0,
    });
    statuses.push(Status {
        id: 143,
        name: "Closed - lost",
        sort: 11000,
        color: "#D5D8DB",
        kind: 0,
    });
    Pipeline {
        id,
        name,
        sort,
        is_main: sort == 1,
        statuses,
    }
}

/// Lead fields an account accumulates over the years (tracking, billing, old campaigns) and no
/// seeded lead fills in (presence 0). They take the definitions past 50, Kommo's page size for
/// `/custom_fields`, so that a client must page them.
const UNUSED_LEAD_FIELDS: &[(&str, Option<&str>, FieldType, &[&str])] = {
    use FieldType::*;
    &[
        ("utm_medium", Some("UTM_MEDIUM"), Text, &[]),
        ("utm_campaign", Some("UTM_CAMPAIGN"), Text, &[]),
        ("utm_term", Some("UTM_TERM"), Text, &[]),
        ("utm_content", Some("UTM_CONTENT"), Text, &[]),
        ("utm_referrer", Some("UTM_REFERRER"), Text, &[]),
        ("gclid", Some("GCLID"), Text, &[]),
        ("fbclid", Some("FBCLID"), Text, &[]),
        ("Referrer", None, Url, &[]),
        ("Landing page", None, Url, &[]),
        ("Campaign", None, Text, &[]),
        ("Delivery date", None, Date, &[]),
        ("Invoice number", None, Text, &[]),
        ("Discount, %", None, Numeric, &[]),
        (
            "Payment method",
            None,
            Select,
            &["Card", "Bank transfer", "Cash", "Boleto"],
        ),
        ("Contract number", None, Text, &[]),
        (
            "Region",
            None,
            Select,
            &["North", "South", "East", "West", "Central"],
        ),
        ("Expected close", None, Date, &[]),
        ("Probability, %", None, Numeric, &[]),
        ("Competitor", None, Text, &[]),
        ("Decision maker reached", None, Checkbox, &[]),
        ("Trial requested", None, Checkbox, &[]),
        ("Seats", None, Numeric, &[]),
        ("Plan", None, Select, &["Basic", "Pro", "Enterprise"]),
        (
            "Billing period",
            None,
            Select,
            &["Monthly", "Quarterly", "Yearly"],
        ),
        ("Currency", None, Select, &["USD", "EUR", "BRL", "MXN"]),
        ("Tax id", None, Text, &[]),
        ("PO number", None, Text, &[]),
        ("Shipping address", None, Textarea, &[]),
        ("Delivery notes", None, Textarea, &[]),
        ("Follow-up date", None, Date, &[]),
        ("Meeting date", None, Date, &[]),
        ("Demo done", None, Checkbox, &[]),
        ("Onboarding done", None, Checkbox, &[]),
        ("NPS", None, Numeric, &[]),
        ("Upsell potential", None, Select, &["Low", "Medium", "High"]),
        (
            "Company size",
            None,
            Select,
            &["1-10", "11-50", "51-200", "201-1000", "1000+"],
        ),
        ("Lead score", None, Numeric, &[]),
        ("Source detail", None, Text, &[]),
        ("Partner", None, Text, &[]),
        ("Partner commission", None, Numeric, &[]),
        ("Renewal date", None, Date, &[]),
        ("Contract end", None, Date, &[]),
        (
            "Support tier",
            None,
            Select,
            &["Standard", "Priority", "Dedicated"],
        ),
        (
            "Integrations needed",
            None,
            Multiselect,
            &["ERP", "E-commerce", "Telephony", "BI"],
        ),
        (
            "Languages",
            None,
            Multiselect,
            &["English", "Spanish", "Portuguese"],
        ),
        (
            "Interests",
            None,
            Multiselect,
            &["Pricing", "Features", "Security", "Support"],
        ),
        ("Call recording", None, Url, &[]),
        ("Proposal link", None, Url, &[]),
        ("Internal comment", None, Textarea, &[]),
        ("Approval required", None, Checkbox, &[]),
        ("Approved by", None, Text, &[]),
        ("Budget confirmed", None, Checkbox, &[]),
        (
            "Delivery slot",
            None,
            Select,
            &["Morning", "Afternoon", "Evening"],
        ),
        (
            "Warehouse",
            None,
            Select,
            &["São Paulo", "Bogotá", "Monterrey"],
        ),
        ("Project code", None, Text, &[]),
        ("Old CRM id", None, Numeric, &[]),
    ]
};

/// First id of the unused lead fields (after the 7 fields in use).
const UNUSED_LEAD_FIELD_ID: i64 = 1_100_008;

fn unused_lead_fields() -> Vec<FieldDef> {
    UNUSED_LEAD_FIELDS
        .iter()
        .enumerate()
        .map(|(i, &(name, code, ftype, values))| {
            let i = i as i64;
            field(
                UNUSED_LEAD_FIELD_ID + i,
                name,
                code,
                ftype,
                enums(1_201_001 + 20 * i, values),
                507 + i,
                0.0,
            )
        })
        .collect()
}

/// Enum options of a field added at run time: a few neutral options where the type needs them.
fn default_enums(first_id: i64, ftype: FieldType) -> Vec<EnumOpt> {
    match ftype {
        FieldType::Select | FieldType::Multiselect => {
            enums(first_id, &["Option 1", "Option 2", "Option 3"])
        }
        FieldType::Multitext => enums(first_id, &["WORK", "PRIV", "OTHER"]),
        _ => vec![],
    }
}

impl Reference {
    /// The account's reference data.
    pub fn new(account_id: i64) -> Reference {
        use FieldType::*;
        let u = |id, name, email, group_id, lang, is_admin| User {
            id,
            name,
            email,
            group_id,
            lang,
            is_admin,
        };
        let users = vec![
            u(
                8_210_001,
                "Ana Souza",
                "ana.souza@example.com",
                0,
                "pt",
                true,
            ),
            u(
                8_210_002,
                "Carlos Méndez",
                "carlos.mendez@example.com",
                410_001,
                "es",
                false,
            ),
            u(
                8_210_003,
                "Emily Carter",
                "emily.carter@example.com",
                410_001,
                "en",
                false,
            ),
            u(
                8_210_004,
                "João Pereira",
                "joao.pereira@example.com",
                410_001,
                "pt",
                false,
            ),
            u(
                8_210_005,
                "Lucía Fernández",
                "lucia.fernandez@example.com",
                410_001,
                "es",
                false,
            ),
            u(
                8_210_006,
                "Mark Johnson",
                "mark.johnson@example.com",
                410_002,
                "en",
                false,
            ),
            u(
                8_210_007,
                "Mariana Lima",
                "mariana.lima@example.com",
                410_002,
                "pt",
                false,
            ),
            u(
                8_210_008,
                "Diego Torres",
                "diego.torres@example.com",
                410_002,
                "es",
                false,
            ),
            u(
                8_210_009,
                "Sofia Rossi",
                "sofia.rossi@example.com",
                410_003,
                "en",
                false,
            ),
            u(
                8_210_010,
                "Integration robot",
                "robot@example.com",
                0,
                "en",
                true,
            ),
        ];
        let leads_fields = vec![
            field(
                1_100_001,
                "Lead source",
                None,
                Select,
                enums(
                    1_200_001,
                    &["Website", "Referral", "Cold call", "Exhibition", "Partner"],
                ),
                500,
                0.7,
            ),
            field(1_100_002, "Budget", None, Numeric, vec![], 501, 0.5),
            field(1_100_003, "Contract date", None, Date, vec![], 502, 0.3),
            field(
                1_100_004,
                "Products",
                None,
                Multiselect,
                enums(
                    1_200_101,
                    &["CRM", "Telephony", "Analytics", "Support", "Training"],
                ),
                503,
                0.4,
            ),
            field(1_100_005, "Comment", None, Textarea, vec![], 504, 0.25),
            field(
                1_100_006,
                "Priority client",
                None,
                Checkbox,
                vec![],
                505,
                0.35,
            ),
            field(
                1_100_007,
                "utm_source",
                Some("UTM_SOURCE"),
                Text,
                vec![],
                506,
                0.3,
            ),
        ];
        let mut leads_fields = leads_fields;
        leads_fields.extend(unused_lead_fields());
        let phone = |id, enum_first| {
            field(
                id,
                "Phone",
                Some("PHONE"),
                Multitext,
                enums(
                    enum_first,
                    &["WORK", "WORKDD", "MOB", "FAX", "HOME", "OTHER"],
                ),
                4,
                0.85,
            )
        };
        let email = |id, enum_first, presence| {
            field(
                id,
                "Email",
                Some("EMAIL"),
                Multitext,
                enums(enum_first, &["WORK", "PRIV", "OTHER"]),
                6,
                presence,
            )
        };
        let contacts_fields = vec![
            field(
                1_100_101,
                "Position",
                Some("POSITION"),
                Text,
                vec![],
                2,
                0.4,
            ),
            phone(1_100_102, 1_200_201),
            email(1_100_103, 1_200_221, 0.65),
            field(1_100_104, "Birthday", None, Date, vec![], 510, 0.15),
            field(
                1_100_105,
                "Preferred language",
                None,
                Select,
                enums(1_200_241, &["English", "Spanish", "Portuguese"]),
                511,
                0.3,
            ),
            field(
                1_100_106,
                "Newsletter consent",
                None,
                Checkbox,
                vec![],
                512,
                0.5,
            ),
        ];
        let companies_fields = vec![
            phone(1_100_201, 1_200_301),
            email(1_100_202, 1_200_321, 0.5),
            field(1_100_203, "Web", Some("WEB"), Url, vec![], 8, 0.5),
            field(
                1_100_204,
                "Address",
                Some("ADDRESS"),
                Textarea,
                vec![],
                10,
                0.4,
            ),
            field(
                1_100_205,
                "Industry",
                None,
                Select,
                enums(
                    1_200_341,
                    &[
                        "Retail",
                        "Manufacturing",
                        "Education",
                        "Healthcare",
                        "IT",
                        "Logistics",
                    ],
                ),
                520,
                0.6,
            ),
            field(1_100_206, "Employees", None, Numeric, vec![], 521, 0.35),
        ];
        Reference {
            account_id,
            users,
            groups: vec![
                (0, "Main"),
                (410_001, "Sales"),
                (410_002, "Key accounts"),
                (410_003, "Support"),
            ],
            pipelines: vec![
                pipeline(
                    7_300_001,
                    "Sales",
                    1,
                    61_000_001,
                    &[
                        "First contact",
                        "Negotiation",
                        "Proposal sent",
                        "Decision making",
                    ],
                ),
                pipeline(
                    7_300_002,
                    "Partners",
                    2,
                    61_000_101,
                    &["Qualification", "Agreement"],
                ),
                pipeline(
                    7_300_003,
                    "Renewals",
                    3,
                    61_000_201,
                    &["Reminder sent", "Invoice sent", "Awaiting payment"],
                ),
            ],
            loss_reasons: vec![
                (5_100_001, "Too expensive"),
                (5_100_002, "Chose a competitor"),
                (5_100_003, "No longer needed"),
                (5_100_004, "No response"),
            ],
            task_types: vec![
                (1, "Follow-up", Some("FOLLOW_UP")),
                (2, "Meeting", Some("MEETING")),
                (3_500_001, "Send proposal", None),
            ],
            fields: [leads_fields, contacts_fields, companies_fields, vec![]],
            tags: [
                tags(
                    9_000_001,
                    &["hot", "vip", "website", "expo-2024", "upsell", "follow-up"],
                ),
                tags(9_000_101, &["decision maker", "newsletter", "partner"]),
                tags(9_000_201, &["enterprise", "smb", "partner"]),
                vec![],
            ],
        }
    }

    /// Custom field definitions of a kind that generated entities fill in (presence > 0), in
    /// definition order.
    pub fn fields_in_use(&self, e: Entity) -> Vec<&FieldDef> {
        self.fields[e.index()]
            .iter()
            .filter(|f| f.in_use())
            .collect()
    }

    /// Users who do the work: everyone but the integration robot (everyone, if only it is left).
    pub fn people(&self) -> &[User] {
        match self.users.split_last() {
            Some((last, rest)) if last.id == ROBOT_USER_ID && !rest.is_empty() => rest,
            _ => &self.users,
        }
    }

    /// Removes a user (entities keep pointing at it, as on Kommo after a user is deleted); false
    /// when unknown or the last one (an account always has a user).
    pub fn remove_user(&mut self, id: i64) -> bool {
        if self.users.len() <= 1 {
            return false;
        }
        let before = self.users.len();
        self.users.retain(|u| u.id != id);
        self.users.len() != before
    }

    /// Renames a pipeline; false when unknown.
    pub fn rename_pipeline(&mut self, id: i64, name: &str) -> bool {
        match self.pipelines.iter_mut().find(|p| p.id == id) {
            Some(p) => {
                p.name = intern(name);
                true
            }
            None => false,
        }
    }

    /// Removes a stage from a pipeline (leads in it keep its id). False when either is unknown,
    /// or for 142 and 143: every pipeline keeps its won and lost stages, as on Kommo.
    pub fn remove_status(&mut self, pipeline_id: i64, status_id: i64) -> bool {
        if status_id == 142 || status_id == 143 {
            return false;
        }
        let Some(p) = self.pipelines.iter_mut().find(|p| p.id == pipeline_id) else {
            return false;
        };
        let before = p.statuses.len();
        p.statuses.retain(|s| s.id != status_id);
        p.statuses.len() != before
    }

    /// Adds a custom field definition to a kind (not tasks) and returns its id. No entity
    /// carries a value for it (presence 0), so generation is unaffected.
    pub fn add_custom_field(&mut self, e: Entity, name: &str, ftype: FieldType) -> Option<i64> {
        if e == Entity::Tasks {
            return None;
        }
        let all = self.fields.iter().flatten();
        let id = all.clone().map(|f| f.id).max().unwrap_or(1_100_000) + 1;
        let enum_first = all
            .flat_map(|f| f.enums.iter().map(|o| o.id))
            .max()
            .unwrap_or(1_200_000)
            + 1;
        let sort = self.fields[e.index()]
            .iter()
            .map(|f| f.sort)
            .max()
            .unwrap_or(0)
            + 1;
        let def = field(
            id,
            intern(name),
            None,
            ftype,
            default_enums(enum_first, ftype),
            sort,
            0.0,
        );
        self.fields[e.index()].push(def);
        Some(id)
    }

    /// The group a user belongs to.
    pub fn group_of(&self, user_id: i64) -> i64 {
        self.users
            .iter()
            .find(|u| u.id == user_id)
            .map_or(0, |u| u.group_id)
    }

    /// Pipeline that owns `status_id` (142/143 are in every pipeline, so `pipeline_id` decides).
    pub fn pipeline(&self, pipeline_id: i64) -> Option<&Pipeline> {
        self.pipelines.iter().find(|p| p.id == pipeline_id)
    }

    /// `GET /api/v4/account`; `with` adds task_types, users_groups, datetime_settings.
    pub fn account_json(&self, base: &str, with: &[&str], user_id: i64, now: i64) -> Value {
        let mut v = json!({
            "id": self.account_id,
            "name": "Simulated account",
            "subdomain": "sim",
            "created_at": now - 3 * 365 * 86_400,
            "created_by": 0,
            "updated_at": now - 30 * 86_400,
            "updated_by": 0,
            "current_user_id": user_id,
            "country": "US",
            "currency": "USD",
            "currency_symbol": "$",
            "customers_mode": "disabled",
            "is_unsorted_on": true,
            "is_loss_reason_enabled": true,
            "is_helpbot_enabled": false,
            "is_technical_account": false,
            "contact_name_display_order": 1,
            "_links": {"self": {"href": format!("{base}/api/v4/account")}},
        });
        let mut embedded = serde_json::Map::new();
        if with.contains(&"task_types") {
            let types: Vec<Value> = self
                .task_types
                .iter()
                .map(|(id, name, code)| json!({"id": id, "name": name, "color": null, "icon_id": null, "code": code}))
                .collect();
            embedded.insert("task_types".into(), Value::Array(types));
        }
        if with.contains(&"users_groups") {
            let groups: Vec<Value> = self
                .groups
                .iter()
                .map(|(id, name)| json!({"id": id, "name": name, "uuid": null}))
                .collect();
            embedded.insert("users_groups".into(), Value::Array(groups));
        }
        if with.contains(&"datetime_settings") {
            embedded.insert(
                "datetime_settings".into(),
                json!({
                    "date_pattern": "m/d/Y H:i",
                    "short_date_pattern": "m/d/Y",
                    "short_time_pattern": "H:i",
                    "date_format": "m/d/Y",
                    "time_format": "H:i:s",
                    "timezone": "UTC",
                    "timezone_offset": "+00:00"
                }),
            );
        }
        if !embedded.is_empty() {
            v["_embedded"] = Value::Object(embedded);
        }
        v
    }

    /// `GET /api/v4/leads/pipelines`.
    pub fn pipelines_json(&self, base: &str) -> Value {
        let acc = self.account_id;
        let pipelines: Vec<Value> = self
            .pipelines
            .iter()
            .map(|p| {
                let statuses: Vec<Value> = p
                    .statuses
                    .iter()
                    .map(|s| {
                        json!({
                            "id": s.id, "name": s.name, "sort": s.sort,
                            "is_editable": s.kind == 0 && s.id != 142 && s.id != 143,
                            "pipeline_id": p.id, "color": s.color, "type": s.kind, "account_id": acc,
                            "_links": {"self": {"href": format!("{base}/api/v4/leads/pipelines/{}/statuses/{}", p.id, s.id)}}
                        })
                    })
                    .collect();
                json!({
                    "id": p.id, "name": p.name, "sort": p.sort, "is_main": p.is_main,
                    "is_unsorted_on": true, "is_archive": false, "account_id": acc,
                    "_links": {"self": {"href": format!("{base}/api/v4/leads/pipelines/{}", p.id)}},
                    "_embedded": {"statuses": statuses}
                })
            })
            .collect();
        json!({
            "_total_items": pipelines.len(),
            "_links": {"self": {"href": format!("{base}/api/v4/leads/pipelines")}},
            "_embedded": {"pipelines": pipelines}
        })
    }

    /// Users as `GET /api/v4/users` items.
    pub fn users_json(&self, base: &str) -> Vec<Value> {
        let rights = |admin: bool| {
            let a = if admin { "A" } else { "G" };
            json!({
                "leads": {"view": "A", "edit": "A", "add": "A", "delete": a, "export": a},
                "contacts": {"view": "A", "edit": "A", "add": "A", "delete": a, "export": a},
                "companies": {"view": "A", "edit": "A", "add": "A", "delete": a, "export": a},
                "tasks": {"edit": "A", "delete": "A"},
                "mail_access": true, "catalog_access": true, "status_rights": null,
                "is_admin": admin, "is_free": false, "is_active": true,
                "group_id": null, "role_id": null
            })
        };
        self.users
            .iter()
            .map(|u| {
                json!({
                    "id": u.id, "name": u.name, "email": u.email, "lang": u.lang,
                    "rights": rights(u.is_admin),
                    "_links": {"self": {"href": format!("{base}/api/v4/users/{}", u.id)}}
                })
            })
            .collect()
    }

    /// Custom field definitions of one kind as `GET /api/v4/{entity}/custom_fields` items.
    pub fn custom_fields_json(&self, base: &str, e: Entity) -> Vec<Value> {
        self.fields[e.index()]
            .iter()
            .map(|f| {
                let enums = if f.enums.is_empty() {
                    Value::Null
                } else {
                    Value::Array(
                        f.enums
                            .iter()
                            .map(|o| json!({"id": o.id, "value": o.value, "sort": o.sort}))
                            .collect(),
                    )
                };
                json!({
                    "id": f.id, "name": f.name, "type": f.ftype.as_str(),
                    "account_id": self.account_id, "code": f.code, "sort": f.sort,
                    "is_api_only": false, "enums": enums, "group_id": null,
                    "required_statuses": [], "is_deletable": f.code.is_none(),
                    "is_predefined": f.code.is_some(), "entity_type": e.as_str(),
                    "remind": null, "triggers": [], "currency": null, "hidden_statuses": [],
                    "_links": {"self": {"href": format!("{base}/api/v4/{}/custom_fields/{}", e.as_str(), f.id)}}
                })
            })
            .collect()
    }

    /// Tags of one kind as `GET /api/v4/{entity}/tags` items.
    pub fn tags_json(&self, e: Entity) -> Vec<Value> {
        self.tags[e.index()]
            .iter()
            .map(|t| json!({"id": t.id, "name": t.name, "color": t.color}))
            .collect()
    }

    /// Loss reasons as `GET /api/v4/leads/loss_reasons` items.
    /// Dated from `anchor` (the seeded timeline's now), the same on every request.
    pub fn loss_reasons_json(&self, base: &str, anchor: i64) -> Vec<Value> {
        self.loss_reasons
            .iter()
            .enumerate()
            .map(|(i, (id, name))| {
                json!({
                    "id": id, "name": name, "sort": 100_000 + i as i64 * 100,
                    "created_at": anchor - 400 * 86_400, "updated_at": anchor - 400 * 86_400,
                    "_links": {"self": {"href": format!("{base}/api/v4/leads/loss_reasons/{id}")}}
                })
            })
            .collect()
    }
}
