//! Configuration of one simulated account.
//!
//! Every knob that a test, a benchmark or the CLI can turn lives here, with defaults that match
//! what Kommo documents (7 rps, `retry_after: 300`, 24 h access tokens). Knobs that tests flip while
//! the server runs (IMS mode, visibility delay, latency, tie order, and the list behaviours Kommo
//! leaves open: range bounds, ignored parameters, default order, racing edits, a page-size cap,
//! whether restores and link changes bump `updated_at`) are copied into the running
//! [`crate::Sim`] and changed there.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::entity::Entity;

/// How `If-Modified-Since` compares with an entity's `updated_at`.
///
/// Kommo does not document the comparison, so the daemon must be correct under each of them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ImsMode {
    /// Keep entities with `updated_at > t` (like the v2 API).
    #[default]
    Gt,
    /// Keep entities with `updated_at >= t`.
    Gte,
    /// The header has no effect.
    Ignore,
}

impl FromStr for ImsMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "gt" => Ok(ImsMode::Gt),
            "gte" => Ok(ImsMode::Gte),
            "ignore" => Ok(ImsMode::Ignore),
            other => Err(format!(
                "unknown IMS mode {other:?} (expected gt, gte or ignore)"
            )),
        }
    }
}

/// Order of list items that tie on the requested sort key.
///
/// Kommo does not specify it; `Shuffled` makes a client that relies on a stable tie order fail
/// quickly instead of only in production.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TieOrder {
    /// A fresh random order on every request.
    #[default]
    Shuffled,
    /// Ties broken by ascending id (a friendly server).
    IdAsc,
}

impl FromStr for TieOrder {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().replace('_', "-").as_str() {
            "shuffled" => Ok(TieOrder::Shuffled),
            "id-asc" => Ok(TieOrder::IdAsc),
            other => Err(format!(
                "unknown tie order {other:?} (expected shuffled or id-asc)"
            )),
        }
    }
}

/// Whether `filter[updated_at|created_at][from|to]` on entity lists include their bound.
///
/// Kommo does not say whether `[from]=X` means `>= X` or `> X` (nor `[to]`), so a client must
/// neither lose nor double-count the entities sitting exactly on a bound under any of these.
/// A bare `filter[updated_at]=X` always means "exactly that second".
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Bounds {
    /// `[from]=X` keeps `>= X`, `[to]=Y` keeps `<= Y`.
    #[default]
    Inclusive,
    /// `[from]=X` keeps `> X`; `[to]` is inclusive.
    ExclusiveFrom,
    /// `[to]=Y` keeps `< Y`; `[from]` is inclusive.
    ExclusiveTo,
    /// Both bounds exclusive.
    Exclusive,
}

impl Bounds {
    /// Whether `[from]` excludes its value.
    pub fn excludes_from(self) -> bool {
        matches!(self, Bounds::ExclusiveFrom | Bounds::Exclusive)
    }

    /// Whether `[to]` excludes its value.
    pub fn excludes_to(self) -> bool {
        matches!(self, Bounds::ExclusiveTo | Bounds::Exclusive)
    }
}

impl FromStr for Bounds {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().replace('_', "-").as_str() {
            "inclusive" => Ok(Bounds::Inclusive),
            "exclusive-from" => Ok(Bounds::ExclusiveFrom),
            "exclusive-to" => Ok(Bounds::ExclusiveTo),
            "exclusive" => Ok(Bounds::Exclusive),
            other => Err(format!(
                "unknown bounds {other:?} (expected inclusive, exclusive-from, exclusive-to or exclusive)"
            )),
        }
    }
}

/// A list query parameter (or family of them) that an account may silently ignore.
///
/// On Kommo, API filtering is an "Alpha" feature enabled per account; where it is off every
/// `filter[...]` is dropped without an error. Whether an unsupported `order[...]` is refused or
/// dropped is unknown too. The simulator can drop each of these.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Param {
    #[serde(rename = "filter[updated_at]")]
    FilterUpdatedAt,
    #[serde(rename = "filter[created_at]")]
    FilterCreatedAt,
    #[serde(rename = "filter[id]")]
    FilterId,
    /// Every `filter[...]` (an account whose API filtering is off).
    #[serde(rename = "filter")]
    Filters,
    #[serde(rename = "order[updated_at]")]
    OrderUpdatedAt,
    #[serde(rename = "order[created_at]")]
    OrderCreatedAt,
    #[serde(rename = "order[id]")]
    OrderId,
}

impl Param {
    /// Every parameter, in the order `--help` lists them.
    pub const ALL: [Param; 7] = [
        Param::FilterUpdatedAt,
        Param::FilterCreatedAt,
        Param::FilterId,
        Param::Filters,
        Param::OrderUpdatedAt,
        Param::OrderCreatedAt,
        Param::OrderId,
    ];

    /// The parameter as a client spells it (`filter` = every filter).
    pub fn as_str(self) -> &'static str {
        match self {
            Param::FilterUpdatedAt => "filter[updated_at]",
            Param::FilterCreatedAt => "filter[created_at]",
            Param::FilterId => "filter[id]",
            Param::Filters => "filter",
            Param::OrderUpdatedAt => "order[updated_at]",
            Param::OrderCreatedAt => "order[created_at]",
            Param::OrderId => "order[id]",
        }
    }
}

impl fmt::Display for Param {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Param {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim().to_ascii_lowercase();
        Param::ALL
            .into_iter()
            .find(|p| p.as_str() == t)
            .ok_or_else(|| {
                let forms: Vec<&str> = Param::ALL.iter().map(|p| p.as_str()).collect();
                format!("unknown parameter {s:?} (expected {})", forms.join(", "))
            })
    }
}

/// A parameter silently dropped from the lists of one kind (`entity: None` = every list).
///
/// Written `ENTITY:PARAM` on the command line, e.g. `leads:filter[updated_at]` or `*:filter`;
/// in JSON either that string or `{"entity": "leads" | "*" | null, "param": "filter[id]"}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "IgnoredRepr")]
pub struct IgnoredParam {
    /// The list it applies to; `None` = every entity list.
    pub entity: Option<Entity>,
    pub param: Param,
}

impl IgnoredParam {
    /// Whether this applies to the lists of `e`.
    pub fn applies_to(&self, e: Entity) -> bool {
        self.entity.is_none_or(|x| x == e)
    }
}

/// The two JSON spellings of an [`IgnoredParam`].
#[derive(Deserialize)]
#[serde(untagged)]
enum IgnoredRepr {
    Text(String),
    Object {
        #[serde(default)]
        entity: Option<String>,
        param: Param,
    },
}

impl TryFrom<IgnoredRepr> for IgnoredParam {
    type Error = String;
    fn try_from(r: IgnoredRepr) -> Result<Self, Self::Error> {
        match r {
            IgnoredRepr::Text(s) => s.parse(),
            IgnoredRepr::Object { entity, param } => Ok(IgnoredParam {
                entity: parse_entity_scope(entity.as_deref().unwrap_or("*"))?,
                param,
            }),
        }
    }
}

/// `*` = every list, else one entity kind (plural, as in the URL).
fn parse_entity_scope(s: &str) -> Result<Option<Entity>, String> {
    match s.trim() {
        "*" => Ok(None),
        "leads" => Ok(Some(Entity::Leads)),
        "contacts" => Ok(Some(Entity::Contacts)),
        "companies" => Ok(Some(Entity::Companies)),
        "tasks" => Ok(Some(Entity::Tasks)),
        other => Err(format!(
            "unknown entity {other:?} (expected leads, contacts, companies, tasks or *)"
        )),
    }
}

impl fmt::Display for IgnoredParam {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scope = self.entity.map_or("*", Entity::as_str);
        write!(f, "{scope}:{}", self.param)
    }
}

impl FromStr for IgnoredParam {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let usage = "expected ENTITY:PARAM with ENTITY = leads, contacts, companies, tasks or *, \
                     and PARAM = filter[updated_at], filter[created_at], filter[id], filter, \
                     order[updated_at], order[created_at] or order[id]";
        let (entity, param) = s
            .split_once(':')
            .ok_or_else(|| format!("{s:?} has no ':' ({usage})"))?;
        Ok(IgnoredParam {
            entity: parse_entity_scope(entity)
                .map_err(|_| format!("unknown entity {entity:?} ({usage})"))?,
            param: param
                .parse()
                .map_err(|_: String| format!("unknown parameter {param:?} ({usage})"))?,
        })
    }
}

/// The order of a list that carries no (honoured) `order[...]`.
///
/// Kommo does not document it; a client that omits `order` (or whose order is ignored) must not
/// assume ids ascending.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DefaultOrder {
    /// Ids ascending.
    #[default]
    IdAsc,
    /// Ids descending (newest entities first).
    IdDesc,
    /// Most recently updated first (ties per the tie order).
    UpdatedAtDesc,
}

impl FromStr for DefaultOrder {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().replace('_', "-").as_str() {
            "id-asc" => Ok(DefaultOrder::IdAsc),
            "id-desc" => Ok(DefaultOrder::IdDesc),
            "updated-at-desc" => Ok(DefaultOrder::UpdatedAtDesc),
            other => Err(format!(
                "unknown default order {other:?} (expected id-asc, id-desc or updated-at-desc)"
            )),
        }
    }
}

/// Everything the simulator needs to build and run one account.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// Seed of the deterministic data generator.
    pub seed: u64,
    /// Number of seeded leads.
    pub leads: usize,
    /// Number of seeded contacts.
    pub contacts: usize,
    /// Number of seeded companies.
    pub companies: usize,
    /// Number of seeded tasks.
    pub tasks: usize,
    /// `account_id` of every entity and of `/api/v4/account`.
    pub account_id: i64,
    /// Seeded `updated_at` values are spread over this many days before the seed anchor.
    pub history_days: i64,
    /// Anchor ("now") of the seeded timeline in unix seconds; `None` = sim now at start.
    /// Set it to get byte-identical dumps from two runs with the same seed.
    pub seed_now: Option<i64>,
    /// Requests allowed in any trailing 1 s window (0 = unlimited).
    pub max_rps: u32,
    /// 429s within `ban_window` that trigger the IP ban (0 = never ban).
    pub ban_after_violations: u32,
    /// Window over which 429 violations are counted.
    pub ban_window: Duration,
    /// How long a ban lasts (real time).
    pub ban_duration: Duration,
    /// `retry_after` in the 429 body (Kommo documents 300).
    pub retry_after_secs: u64,
    /// Initial `If-Modified-Since` comparison.
    pub ims_mode: ImsMode,
    /// Initial order of ties.
    pub tie_order: TieOrder,
    /// An edit reaches the lists this many sim-seconds after its `updated_at`.
    pub visibility_delay_secs: i64,
    /// Added to every /api and /oauth2 response.
    pub latency: Duration,
    /// Sim clock = system UTC + this offset (emulates a client whose clock is skewed).
    pub clock_offset_secs: i64,
    /// Tokens and OAuth client.
    pub auth: AuthConfig,
    /// Initial inclusiveness of `filter[...][from|to]` on entity lists.
    pub bounds: Bounds,
    /// Initial list parameters dropped without an error, as if the client had not sent them.
    pub ignored: Vec<IgnoredParam>,
    /// Initial order of lists without an honoured `order[...]`.
    pub default_order: DefaultOrder,
    /// Initial probability, per entity list page with items, that one item of the page is
    /// edited between the list's selection and the body's rendering (0.0 = never).
    pub race_rate: f64,
    /// Initial silent cap on entity list pages, whatever `limit` asks (`None` = no cap).
    pub max_page_size: Option<usize>,
    /// Entities of each kind seeded as one import: they share a `created_at` and `updated_at`
    /// second about a third of the way back (0 = no import).
    pub import_crowd: usize,
    /// Initially, whether restoring a deleted entity sets its `updated_at` to the restore time
    /// (Kommo does not say). When false it comes back with the `updated_at` it had, behind any
    /// client's `updated_at` cursor: only the `*_restored` event tells.
    pub restore_bumps_updated_at: bool,
    /// Initially, whether linking or unlinking a contact (and relinking by a merge) sets the
    /// lead's `updated_at` to now (Kommo does not say). When false the lead keeps its
    /// `updated_at` and only `entity_linked` / `entity_unlinked` tell; lists with
    /// `with=contacts` show the new links at once either way.
    pub link_bumps_updated_at: bool,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            seed: 42,
            leads: 1000,
            contacts: 1000,
            companies: 1000,
            tasks: 1000,
            account_id: 31_000_001,
            history_days: 365,
            seed_now: None,
            max_rps: 7,
            ban_after_violations: 5,
            ban_window: Duration::from_secs(60),
            ban_duration: Duration::from_secs(600),
            retry_after_secs: 300,
            ims_mode: ImsMode::Gt,
            tie_order: TieOrder::Shuffled,
            visibility_delay_secs: 0,
            latency: Duration::ZERO,
            clock_offset_secs: 0,
            auth: AuthConfig::default(),
            bounds: Bounds::Inclusive,
            ignored: Vec::new(),
            default_order: DefaultOrder::IdAsc,
            race_rate: 0.0,
            max_page_size: None,
            import_crowd: 0,
            restore_bumps_updated_at: true,
            link_bumps_updated_at: false,
        }
    }
}

/// Credentials the simulated account accepts.
#[derive(Clone, Debug)]
pub struct AuthConfig {
    /// A private integration's long-lived token, accepted forever.
    pub long_lived_token: Option<String>,
    /// OAuth client id.
    pub client_id: String,
    /// OAuth client secret.
    pub client_secret: String,
    /// Redirect URI registered for the integration; every grant must repeat it.
    pub redirect_uri: String,
    /// Lifetime of an access token in sim time.
    pub access_token_ttl: Duration,
    /// Lifetime of a refresh token in sim time (Kommo: about 3 months).
    pub refresh_token_ttl: Duration,
    /// Codes accepted by the `authorization_code` grant, each once.
    pub auth_codes: Vec<String>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            long_lived_token: Some("sim-token".to_string()),
            client_id: "sim-client".to_string(),
            client_secret: "sim-secret".to_string(),
            redirect_uri: "https://example.com/oauth".to_string(),
            access_token_ttl: Duration::from_secs(86_400),
            refresh_token_ttl: Duration::from_secs(90 * 86_400),
            auth_codes: vec!["sim-code".to_string()],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn knobs_parse_from_cli_spellings() {
        assert_eq!(
            "exclusive-from".parse::<Bounds>(),
            Ok(Bounds::ExclusiveFrom)
        );
        assert_eq!("Exclusive_To".parse::<Bounds>(), Ok(Bounds::ExclusiveTo));
        assert!("open"
            .parse::<Bounds>()
            .unwrap_err()
            .contains("inclusive, exclusive-from"));
        assert_eq!("id-desc".parse::<DefaultOrder>(), Ok(DefaultOrder::IdDesc));
        assert_eq!(
            "updated_at_desc".parse::<DefaultOrder>(),
            Ok(DefaultOrder::UpdatedAtDesc)
        );
        for p in Param::ALL {
            assert_eq!(p.as_str().parse::<Param>(), Ok(p));
        }
    }

    #[test]
    fn ignored_params_round_trip_and_explain_errors() {
        let ip: IgnoredParam = "tasks:order[created_at]".parse().unwrap();
        assert_eq!(
            ip,
            IgnoredParam {
                entity: Some(Entity::Tasks),
                param: Param::OrderCreatedAt
            }
        );
        assert_eq!(ip.to_string(), "tasks:order[created_at]");
        let all: IgnoredParam = "*:filter".parse().unwrap();
        assert_eq!(all.entity, None);
        assert!(all.applies_to(Entity::Leads) && all.applies_to(Entity::Tasks));
        assert!(!ip.applies_to(Entity::Leads));
        for bad in ["leads", "lead:filter", "leads:filter[name]", ":filter"] {
            let e = bad.parse::<IgnoredParam>().unwrap_err();
            assert!(e.contains("ENTITY:PARAM"), "{bad}: {e}");
        }
    }

    #[test]
    fn ignored_params_in_json() {
        let v: Vec<IgnoredParam> = serde_json::from_str(
            r#"["*:filter", {"entity": "leads", "param": "filter[id]"},
                {"entity": null, "param": "order[id]"}, {"entity": "*", "param": "filter[created_at]"},
                {"param": "order[updated_at]"}]"#,
        )
        .unwrap();
        let want = [
            (None, Param::Filters),
            (Some(Entity::Leads), Param::FilterId),
            (None, Param::OrderId),
            (None, Param::FilterCreatedAt),
            (None, Param::OrderUpdatedAt),
        ];
        assert_eq!(v.len(), want.len());
        for (got, (entity, param)) in v.iter().zip(want) {
            assert_eq!((got.entity, got.param), (entity, param));
        }
        let out = serde_json::to_value(v[1]).unwrap();
        assert_eq!(
            out,
            serde_json::json!({"entity": "leads", "param": "filter[id]"})
        );
        assert!(serde_json::from_str::<IgnoredParam>(r#""deals:filter""#).is_err());
        assert!(
            serde_json::from_str::<IgnoredParam>(r#"{"entity": "leads", "param": "x"}"#).is_err()
        );
    }
}
