//! Authentication: a long-lived token, or OAuth 2.0 with single-use refresh tokens that can
//! never be lost.
//!
//! # Why a refresh token cannot be lost here
//! Kommo revokes a refresh token the moment it issues the next pair. So:
//! - the refresh happens while holding `SELECT … FOR UPDATE` on the account's row in
//!   `oauth_tokens`: two workers or two daemons never spend the same refresh token; the
//!   second one waits, then finds the new pair and uses it;
//! - the new pair is written and committed right after the answer arrives, with no other
//!   work in between.
//!
//! The one window left is the HTTP round trip itself: if the process dies after Kommo
//! issued the pair but before the commit (or the answer is lost on the way), the stored
//! refresh token is already revoked, and a human must re-authorize (`auth exchange`).
//! Nothing in this program can shrink that further; the tests show it is exactly that one
//! step.

use std::sync::Arc;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde_json::{json, Value};
use tokio::sync::Mutex;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use url::Url;

use super::error::KommoError;
use super::rate_limit::Politeness;
use crate::config::OAuthSettings;
use crate::tokens::{NewPair, TokenRow, TokenState, TokenStore, TokenStoreError};

/// Steps of a refresh, where tests inject a crash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefreshStep {
    BeforeCall,
    AfterResponse,
    BeforeCommit,
    AfterCommit,
}

/// Test hook: returning `Err` at a step makes the refresh stop there, as a crash would
/// (an open transaction is rolled back).
pub type RefreshHook = Arc<dyn Fn(RefreshStep) -> Result<(), String> + Send + Sync>;

#[derive(Clone)]
pub enum Auth {
    LongLived(SecretString),
    OAuth(Arc<OAuth>),
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Auth::LongLived(_) => f.write_str("Auth::LongLived([redacted])"),
            Auth::OAuth(o) => write!(f, "Auth::OAuth(client_id: {})", o.settings.client_id),
        }
    }
}

impl Auth {
    /// The token to send now, refreshed first if it is about to expire.
    pub async fn bearer(&self) -> Result<SecretString, KommoError> {
        match self {
            Auth::LongLived(t) => Ok(t.clone()),
            Auth::OAuth(o) => o.bearer().await,
        }
    }

    /// After a 401: whether a fresh token is now available to retry with (OAuth only).
    pub async fn renew_after_401(&self, used: &SecretString) -> Result<bool, KommoError> {
        match self {
            Auth::LongLived(_) => Ok(false),
            Auth::OAuth(o) => o.renew_after_401(used).await.map(|_| true),
        }
    }
}

struct Cached {
    access: SecretString,
    /// When to stop using it and look at the database again (refresh margin included).
    due: Instant,
}

/// Answer of the token endpoint.
struct Pair {
    access: String,
    refresh: String,
    expires_in: i64,
}

impl Pair {
    fn new_pair(&self) -> NewPair<'_> {
        NewPair {
            access: &self.access,
            refresh: &self.refresh,
            expires_in: self.expires_in,
        }
    }
}

pub struct OAuth {
    /// Where the pair lives (the app wires in Postgres); refreshed only under its lock.
    tokens: Arc<dyn TokenStore>,
    account: String,
    settings: OAuthSettings,
    token_url: Url,
    http: reqwest::Client,
    /// The same limiter as the API requests: the token endpoint is on the same host.
    politeness: Arc<Politeness>,
    cancel: CancellationToken,
    /// The token in use; the lock also serialises refreshes within this process.
    cached: Mutex<Option<Cached>>,
    hook: std::sync::Mutex<Option<RefreshHook>>,
    /// Refreshes in flight. Each runs from its call to its commit in a task of its own: a
    /// shutdown aborts the runs' fetch tasks, and a refresh dropped between Kommo's answer
    /// and the commit would leave only a revoked refresh token behind. The process waits
    /// for them before it exits ([`OAuth::settle`]).
    inflight: tokio_util::task::TaskTracker,
}

impl OAuth {
    pub fn new(
        tokens: Arc<dyn TokenStore>,
        account: String,
        settings: OAuthSettings,
        base_url: &Url,
        http: reqwest::Client,
        politeness: Arc<Politeness>,
        cancel: CancellationToken,
    ) -> Self {
        OAuth {
            tokens,
            account,
            settings,
            token_url: base_url
                .join("/oauth2/access_token")
                .expect("a fixed path joins"),
            http,
            politeness,
            cancel,
            cached: Mutex::new(None),
            hook: std::sync::Mutex::new(None),
            inflight: tokio_util::task::TaskTracker::new(),
        }
    }

    /// Installs a crash-injection hook (tests).
    pub fn set_hook(&self, hook: Option<RefreshHook>) {
        *self.hook.lock().expect("hook lock") = hook;
    }

    /// Waits for refreshes in flight to commit (each is bounded by the request timeout).
    pub async fn settle(&self) {
        self.inflight.close();
        self.inflight.wait().await;
        self.inflight.reopen();
    }

    fn step(&self, step: RefreshStep) -> Result<(), KommoError> {
        let hook = self.hook.lock().expect("hook lock").clone();
        run_hook(&hook, step)
    }

    fn margin_secs(&self) -> f64 {
        self.settings.refresh_margin.as_secs_f64()
    }

    fn cache(&self, access: SecretString, expires_in_secs: f64) -> Cached {
        let usable = (expires_in_secs - self.margin_secs()).max(0.0);
        Cached {
            access,
            due: Instant::now() + Duration::from_secs_f64(usable),
        }
    }

    async fn bearer(&self) -> Result<SecretString, KommoError> {
        let mut cached = self.cached.lock().await;
        if let Some(c) = cached.as_ref().filter(|c| Instant::now() < c.due) {
            return Ok(c.access.clone());
        }
        let row = self.tokens.load(&self.account).await.map_err(store_error)?;
        let row = self.usable(row.as_ref())?;
        let fresh = if row.expires_in_secs > self.margin_secs() {
            self.cache(row.access_token.clone(), row.expires_in_secs)
        } else {
            self.refresh(Some(&row.access_token), false).await?
        };
        let access = fresh.access.clone();
        *cached = Some(fresh);
        Ok(access)
    }

    async fn renew_after_401(&self, used: &SecretString) -> Result<(), KommoError> {
        let mut cached = self.cached.lock().await;
        *cached = None;
        let fresh = self.refresh(Some(used), true).await?;
        *cached = Some(fresh);
        Ok(())
    }

    /// Refreshes under the row lock. `used` is the access token this process was using:
    /// if the row holds another one, someone else refreshed already and it is used instead.
    async fn refresh(
        &self,
        used: Option<&SecretString>,
        force: bool,
    ) -> Result<Cached, KommoError> {
        // Take a turn at the limiter before locking, so the lock is held for the call only.
        self.acquire().await?;
        let mut lock = self.tokens.lock(&self.account).await.map_err(store_error)?;
        let row = self.usable(lock.row())?;
        let someone_else =
            used.is_some_and(|u| u.expose_secret() != row.access_token.expose_secret());
        if (someone_else || !force) && row.expires_in_secs > self.margin_secs() {
            let fresh = self.cache(row.access_token.clone(), row.expires_in_secs);
            lock.commit().await.map_err(store_error)?;
            return Ok(fresh);
        }
        let refresh_token = row.refresh_token.clone();
        self.step(RefreshStep::BeforeCall)?;
        let body = json!({
            "client_id": self.settings.client_id,
            "client_secret": self.settings.client_secret.expose_secret(),
            "grant_type": "refresh_token",
            "refresh_token": refresh_token.expose_secret(),
            "redirect_uri": self.settings.redirect_uri,
        });
        // From the call to the commit, in a task of its own that nothing aborts.
        let critical = {
            let (http, url) = (self.http.clone(), self.token_url.clone());
            let politeness = self.politeness.clone();
            let hook = self.hook.lock().expect("hook lock").clone();
            async move {
                match token_call(&http, url, &politeness, body).await {
                    Ok(pair) => {
                        // The old refresh token is dead now: commit the new pair first.
                        run_hook(&hook, RefreshStep::AfterResponse)?;
                        lock.save(pair.new_pair()).await.map_err(store_error)?;
                        run_hook(&hook, RefreshStep::BeforeCommit)?;
                        lock.commit().await.map_err(store_error)?;
                        run_hook(&hook, RefreshStep::AfterCommit)?;
                        Ok(Ok(pair))
                    }
                    Err(KommoError::TokenRefused { status, detail }) => {
                        let why = format!("Kommo refused the refresh token ({status}: {detail})");
                        lock.mark_revoked(&why).await.map_err(store_error)?;
                        lock.commit().await.map_err(store_error)?;
                        Ok(Err(why))
                    }
                    Err(other) => Err(other),
                }
            }
        };
        let done = self
            .inflight
            .spawn(critical)
            .await
            .map_err(|e| KommoError::Interrupted {
                step: "refresh".into(),
                why: e.to_string(),
            })??;
        match done {
            Ok(pair) => {
                tracing::info!(expires_in = pair.expires_in, "OAuth access token refreshed");
                Ok(self.cache(SecretString::from(pair.access), pair.expires_in as f64))
            }
            Err(why) => Err(self.locked_out(&why)),
        }
    }

    /// Trades an authorization code for the first pair and stores it (`auth exchange`).
    pub async fn exchange(&self, code: &str) -> Result<i64, KommoError> {
        self.acquire().await?;
        let pair = self
            .call(json!({
                "client_id": self.settings.client_id,
                "client_secret": self.settings.client_secret.expose_secret(),
                "grant_type": "authorization_code",
                "code": code,
                "redirect_uri": self.settings.redirect_uri,
            }))
            .await?;
        let mut lock = self.tokens.lock(&self.account).await.map_err(store_error)?;
        lock.save(pair.new_pair()).await.map_err(store_error)?;
        lock.commit().await.map_err(store_error)?;
        *self.cached.lock().await = None;
        Ok(pair.expires_in)
    }

    async fn acquire(&self) -> Result<(), KommoError> {
        self.politeness
            .acquire(&self.cancel)
            .await
            .map_err(KommoError::from)
    }

    /// One POST to the token endpoint; no retry (a lost answer may already have spent the
    /// refresh token, and retrying with it would only confirm that).
    async fn call(&self, body: Value) -> Result<Pair, KommoError> {
        token_call(&self.http, self.token_url.clone(), &self.politeness, body).await
    }

    /// The stored pair, if there is one that Kommo has not refused.
    fn usable<'r>(&self, row: Option<&'r TokenRow>) -> Result<&'r TokenRow, KommoError> {
        let Some(row) = row else {
            return Err(KommoError::NoTokens {
                account: self.account.clone(),
            });
        };
        if row.state == TokenState::Revoked {
            return Err(self.locked_out(
                row.last_error
                    .as_deref()
                    .unwrap_or("the refresh token was revoked"),
            ));
        }
        Ok(row)
    }

    fn locked_out(&self, why: &str) -> KommoError {
        let reason = format!(
            "{why}. A human must re-authorize the integration in Kommo and run \
             `kommo-sync auth exchange --code NEW_CODE`; then restart the daemon"
        );
        self.politeness.lock_out(&reason);
        tracing::error!(reason, "OAuth: account locked out");
        KommoError::LockedOut { reason }
    }
}

fn store_error(e: TokenStoreError) -> KommoError {
    KommoError::TokenStore { message: e.0 }
}

/// One POST to the token endpoint; no retry (a lost answer may already have spent the
/// refresh token, and retrying with it would only confirm that).
async fn token_call(
    http: &reqwest::Client,
    url: Url,
    politeness: &Politeness,
    body: Value,
) -> Result<Pair, KommoError> {
    let path = "/oauth2/access_token";
    // Not raced against shutdown: once sent, Kommo may issue the new pair and revoke the
    // old one, so the answer must be awaited (the client's timeout bounds it) and stored.
    let resp = http
        .post(url)
        .json(&body)
        .send()
        .await
        .map_err(|e| KommoError::Transport {
            path: path.into(),
            attempts: 1,
            message: super::client::transport_message(e),
        })?;
    let status = resp.status().as_u16();
    let bytes = resp.bytes().await.unwrap_or_default();
    let parsed: Option<Value> = serde_json::from_slice(&bytes).ok();
    match status {
        200 => {
            let v = parsed.ok_or_else(|| KommoError::Decode {
                path: path.into(),
                what: "the token answer is not JSON".into(),
                attempts: 1,
            })?;
            let field = |k: &str| v.get(k).and_then(Value::as_str).map(String::from);
            match (field("access_token"), field("refresh_token")) {
                (Some(access), Some(refresh)) => Ok(Pair {
                    access,
                    refresh,
                    expires_in: v
                        .get("expires_in")
                        .and_then(Value::as_i64)
                        .unwrap_or(86_400),
                }),
                _ => Err(KommoError::Decode {
                    path: path.into(),
                    what: "the token answer lacks access_token or refresh_token".into(),
                    attempts: 1,
                }),
            }
        }
        403 => {
            // The IP block, not a verdict on the token: back off like any request.
            let (until, backoff) = politeness.banned();
            Err(KommoError::Banned { until, backoff })
        }
        400 | 401 => {
            // Kommo puts the real reason ("Token has been revoked") in `hint`.
            let text = |k: &str| {
                parsed
                    .as_ref()
                    .and_then(|v| v.get(k))
                    .and_then(Value::as_str)
                    .filter(|t| !t.trim().is_empty())
            };
            let detail = match (text("detail").or_else(|| text("title")), text("hint")) {
                (Some(d), Some(h)) if d != h => format!("{d}; {h}"),
                (Some(d), _) => d.to_string(),
                (None, Some(h)) => h.to_string(),
                (None, None) => "no details".to_string(),
            };
            Err(KommoError::TokenRefused { status, detail })
        }
        429 => Err(KommoError::RateLimited { attempts: 1 }),
        _ => Err(KommoError::Server {
            path: path.into(),
            status,
            attempts: 1,
        }),
    }
}

fn run_hook(hook: &Option<RefreshHook>, step: RefreshStep) -> Result<(), KommoError> {
    match hook {
        Some(h) => h(step).map_err(|why| KommoError::Interrupted {
            step: format!("{step:?}"),
            why,
        }),
        None => Ok(()),
    }
}
