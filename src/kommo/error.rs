//! Every way a Kommo request can end badly. The variant decides what happens next: the
//! client has already retried what was worth retrying, so each variant here is final for
//! the request, and its message says what a human can do about it.

use std::time::Duration;

use chrono::{DateTime, Utc};

use super::rate_limit::GateError;
use crate::source::{FailureKind, FetchError};

#[derive(Debug, thiserror::Error)]
pub enum KommoError {
    #[error(
        "Kommo answered 429 Too Many Requests {attempts} times for one request; the run stops here. \
         Lower kommo.max_rps, and check that no other tool uses this account from the same IP"
    )]
    RateLimited { attempts: u32 },

    #[error(
        "Kommo blocked this IP (403 Forbidden). All traffic to the account is paused until {} \
         (back-off {}s, doubling while the block lasts). Usual causes: more than 7 requests per \
         second from this IP (another tool?), or the same data requested over and over",
        until.format("%Y-%m-%d %H:%M:%S UTC"),
        backoff.as_secs()
    )]
    Banned {
        until: DateTime<Utc>,
        backoff: Duration,
    },

    #[error(
        "Kommo rejected the access token (401 Unauthorized: {detail}). Fix: issue a new long-lived \
         token in Kommo (Settings > Integrations) and set KOMMO_SYNC__KOMMO__TOKEN"
    )]
    Unauthorized { detail: String },

    #[error("Kommo says the account's paid period has ended (402: {detail}); nothing can be synced until it is renewed")]
    PaymentRequired { detail: String },

    #[error("{path} was not found (404). Check kommo.subdomain / kommo.base_url")]
    NotFound { path: String },

    #[error("Kommo refused the request {path} ({status}: {detail})")]
    Refused {
        path: String,
        status: u16,
        detail: String,
    },

    #[error("Kommo answered 504 Gateway Timeout for a page of {limit}: it wants smaller pages")]
    GatewayTimeout { limit: u32 },

    #[error("Kommo answered {status} to {path} {attempts} times in a row")]
    Server {
        path: String,
        status: u16,
        attempts: u32,
    },

    #[error("request to Kommo ({path}) failed {attempts} times: {message}")]
    Transport {
        path: String,
        attempts: u32,
        message: String,
    },

    #[error(
        "Kommo sent a response to {path} that cannot be read ({what}), {attempts} times in a row"
    )]
    Decode {
        path: String,
        what: String,
        attempts: u32,
    },

    #[error("Kommo sent an entity the mirror cannot key: {what}")]
    BadEntity { what: String },

    #[error(
        "Kommo refused the OAuth request ({status}: {detail}). Fix: check oauth.client_id, \
         oauth.client_secret and oauth.redirect_uri; if they are right, re-authorize the integration \
         in Kommo and run `kommo-sync auth exchange --code NEW_CODE`"
    )]
    TokenRefused { status: u16, detail: String },

    #[error(
        "no OAuth tokens are stored for {account}. Fix: authorize the integration in Kommo, then \
         run `kommo-sync auth exchange --code CODE` (codes expire after 20 minutes)"
    )]
    NoTokens { account: String },

    #[error("OAuth tokens could not be read or stored: {message}")]
    TokenStore { message: String },

    #[error("interrupted at {step}: {why}")]
    Interrupted { step: String, why: String },

    #[error("all requests to this account are stopped: {reason}")]
    LockedOut { reason: String },

    #[error("stopped by shutdown")]
    Cancelled,
}

impl KommoError {
    pub fn failure_kind(&self) -> FailureKind {
        match self {
            KommoError::GatewayTimeout { .. } => FailureKind::AskForLess,
            KommoError::Banned { until, .. } => FailureKind::Banned { until: *until },
            KommoError::Unauthorized { .. }
            | KommoError::LockedOut { .. }
            | KommoError::TokenRefused { .. }
            | KommoError::NoTokens { .. } => FailureKind::AuthFailed,
            KommoError::Cancelled => FailureKind::Cancelled,
            _ => FailureKind::Fatal,
        }
    }
}

impl From<GateError> for KommoError {
    fn from(e: GateError) -> Self {
        match e {
            GateError::Banned { until, backoff } => KommoError::Banned { until, backoff },
            GateError::LockedOut(reason) => KommoError::LockedOut { reason },
            GateError::Cancelled => KommoError::Cancelled,
        }
    }
}

impl From<KommoError> for FetchError {
    fn from(e: KommoError) -> Self {
        FetchError::new(e.failure_kind(), e)
    }
}
