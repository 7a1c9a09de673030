//! Configuration of one simulated account.
//!
//! Every knob that a test, a benchmark or the CLI can turn lives here, with defaults that match
//! what Kommo documents (7 rps, `retry_after: 300`, 24 h access tokens). Knobs that tests flip while
//! the server runs (IMS mode, visibility delay, latency, tie order) are copied into the running
//! [`crate::Sim`] and changed there.

use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

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
