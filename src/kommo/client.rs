//! HTTP access to one Kommo account: authentication, politeness and the retry rules.
//!
//! | answer            | what happens                                                         |
//! |-------------------|----------------------------------------------------------------------|
//! | 200               | JSON body parsed (a broken body is retried, bounded)                 |
//! | 204, 304          | "nothing here": an empty page                                        |
//! | 429               | every worker pauses as told (`retry_after`, `Retry-After`, back-off), then half rate for a minute; bounded |
//! | 403               | the account is banned: all traffic stops for a growing back-off      |
//! | 401, 402, 404, 4xx| final, with a message saying what to fix                             |
//! | 504               | final for this page size: the engine asks again for less             |
//! | 5xx, timeout, I/O | bounded retries with jittered exponential back-off                   |

use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use reqwest::header::{HeaderMap, AUTHORIZATION, DATE, IF_MODIFIED_SINCE, RETRY_AFTER};
use secrecy::ExposeSecret;
use serde_json::Value;
use tokio_util::sync::CancellationToken;
use url::Url;

use super::auth::{Auth, OAuth};
use super::error::KommoError;
use super::rate_limit::Politeness;
use crate::config::{AuthSettings, KommoSettings};
use crate::metrics::Metrics;

/// At most this many 429s for one request before the run gives up (each one already
/// paused every worker for as long as Kommo asked).
const MAX_THROTTLES_PER_REQUEST: u32 = 5;
/// A `retry_after` beyond this is treated as this: a typo on the server must not park the
/// daemon for a day. Kommo documents 300 s.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(1800);
const RETRY_BASE: Duration = Duration::from_millis(500);
const RETRY_CAP: Duration = Duration::from_secs(30);

/// The useful part of a successful answer.
#[derive(Debug)]
pub struct Answer {
    /// `None` for 204 and 304.
    pub body: Option<Value>,
    /// Server clock from the `Date` header, unix seconds.
    pub server_time: Option<i64>,
}

pub struct KommoClient {
    http: reqwest::Client,
    base_url: Url,
    /// Where `Authorization: Bearer …` comes from; no `Debug` shows a token.
    auth: Auth,
    politeness: Arc<Politeness>,
    max_retries: u32,
    /// Shutdown: waits (rate limit, pauses, back-off) and requests in flight end early.
    cancel: CancellationToken,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for KommoClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KommoClient")
            .field("base_url", &self.base_url.as_str())
            .finish_non_exhaustive()
    }
}

impl KommoClient {
    pub fn new(
        settings: &KommoSettings,
        cancel: CancellationToken,
        metrics: Arc<Metrics>,
        store: crate::store::Store,
    ) -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder()
            .connect_timeout(settings.connect_timeout)
            .timeout(settings.request_timeout)
            .user_agent(concat!("kommo-sync/", env!("CARGO_PKG_VERSION")))
            .build()?;
        let politeness = Arc::new(Politeness::new(
            settings.max_rps,
            settings.ban_backoff,
            settings.ban_backoff_max,
        ));
        Ok(KommoClient {
            http: http.clone(),
            base_url: settings.base_url.clone(),
            auth: match &settings.auth {
                AuthSettings::LongLivedToken(t) => Auth::LongLived(t.clone()),
                AuthSettings::OAuth(o) => Auth::OAuth(Arc::new(OAuth::new(
                    store,
                    settings.account_key(),
                    o.clone(),
                    &settings.base_url,
                    http.clone(),
                    politeness.clone(),
                    cancel.clone(),
                ))),
            },
            politeness,
            max_retries: settings.max_retries,
            cancel,
            metrics,
        })
    }

    pub fn auth(&self) -> &Auth {
        &self.auth
    }

    pub fn politeness(&self) -> &Arc<Politeness> {
        &self.politeness
    }

    /// GET `path` with `query`, under the account's politeness rules.
    pub async fn get(
        &self,
        path: &str,
        query: &[(String, String)],
        if_modified_since: Option<i64>,
    ) -> Result<Answer, KommoError> {
        let url = self.base_url.join(path).map_err(|e| KommoError::Refused {
            path: path.into(),
            status: 0,
            detail: format!("bad path: {e}"),
        })?;
        let mut failures = 0u32; // 5xx, transport and decode failures
        let mut throttles = 0u32;
        let mut renewed = false;
        loop {
            // The token first: a refresh takes a turn at the limiter of its own, and must not
            // do so between this request's turn and its send (which would bunch the two).
            let bearer = self.auth.bearer().await?;
            let waiting = std::time::Instant::now();
            self.politeness
                .acquire(&self.cancel)
                .await
                .map_err(KommoError::from)?;
            let waited = waiting.elapsed();
            if waited > Duration::from_millis(5) {
                self.metrics.throttle_waits.inc();
                self.metrics
                    .throttle_wait_seconds
                    .inc_by(waited.as_secs_f64());
            }
            let mut req = self
                .http
                .get(url.clone())
                .query(query)
                .header(AUTHORIZATION, format!("Bearer {}", bearer.expose_secret()));
            if let Some(t) = if_modified_since {
                req = req.header(IF_MODIFIED_SINCE, http_date(t));
            }
            let sent = tokio::select! {
                _ = self.cancel.cancelled() => return Err(KommoError::Cancelled),
                r = req.send() => r,
            };
            let resp = match sent {
                Ok(r) => r,
                Err(e) => {
                    self.metrics.request(path, None);
                    failures += 1;
                    tracing::warn!(path, attempt = failures, error.message = %e, "request to Kommo failed");
                    if failures > self.max_retries {
                        return Err(KommoError::Transport {
                            path: path.into(),
                            attempts: failures,
                            message: e.without_url().to_string(),
                        });
                    }
                    self.backoff(failures).await?;
                    continue;
                }
            };
            let status = resp.status().as_u16();
            self.metrics.request(path, Some(status));
            let server_time = server_time(resp.headers());
            if status != 403 {
                self.politeness.answered();
            }
            match status {
                200 => {
                    let body = tokio::select! {
                        _ = self.cancel.cancelled() => return Err(KommoError::Cancelled),
                        b = resp.bytes() => b,
                    };
                    let parsed = match body {
                        Ok(bytes) => serde_json::from_slice::<Value>(&bytes)
                            .map_err(|e| describe_bad_body(&bytes, &e)),
                        Err(e) => Err(format!("body not received: {}", e.without_url())),
                    };
                    match parsed {
                        Ok(v) => {
                            return Ok(Answer {
                                body: Some(v),
                                server_time,
                            })
                        }
                        Err(what) => {
                            failures += 1;
                            tracing::warn!(
                                path,
                                attempt = failures,
                                what,
                                "unreadable answer from Kommo"
                            );
                            if failures > self.max_retries {
                                return Err(KommoError::Decode {
                                    path: path.into(),
                                    what,
                                    attempts: failures,
                                });
                            }
                            self.backoff(failures).await?;
                        }
                    }
                }
                204 | 304 => {
                    return Ok(Answer {
                        body: None,
                        server_time,
                    })
                }
                429 => {
                    self.metrics.too_many_requests.inc();
                    throttles += 1;
                    let headers = resp.headers().clone();
                    let body = resp.bytes().await.unwrap_or_default();
                    let wait =
                        retry_after(&headers, &body).unwrap_or_else(|| backoff_delay(throttles));
                    tracing::warn!(
                        path,
                        wait_secs = wait.as_secs_f64(),
                        attempt = throttles,
                        "Kommo answered 429; pausing all requests"
                    );
                    if throttles > MAX_THROTTLES_PER_REQUEST {
                        return Err(KommoError::RateLimited {
                            attempts: throttles,
                        });
                    }
                    self.politeness.throttled(wait);
                }
                403 => {
                    self.metrics.bans.inc();
                    let (until, backoff) = self.politeness.banned();
                    tracing::error!(path, %until, backoff_secs = backoff.as_secs(), "Kommo answered 403: IP blocked, all traffic stopped");
                    return Err(KommoError::Banned { until, backoff });
                }
                401 => {
                    let detail = problem_detail(resp).await;
                    // OAuth: the token may have expired early; renew once and retry.
                    if !renewed && self.auth.renew_after_401(&bearer).await? {
                        renewed = true;
                        continue;
                    }
                    let err = KommoError::Unauthorized { detail };
                    // A refused credential does not heal: stop all traffic, say so.
                    self.politeness.lock_out(&err.to_string());
                    return Err(err);
                }
                402 => {
                    return Err(KommoError::PaymentRequired {
                        detail: problem_detail(resp).await,
                    })
                }
                404 => return Err(KommoError::NotFound { path: path.into() }),
                504 => {
                    let limit = query
                        .iter()
                        .find(|(k, _)| k == "limit")
                        .and_then(|(_, v)| v.parse().ok())
                        .unwrap_or(0);
                    return Err(KommoError::GatewayTimeout { limit });
                }
                500..=599 => {
                    failures += 1;
                    tracing::warn!(path, status, attempt = failures, "Kommo server error");
                    if failures > self.max_retries {
                        return Err(KommoError::Server {
                            path: path.into(),
                            status,
                            attempts: failures,
                        });
                    }
                    self.backoff(failures).await?;
                }
                _ => {
                    return Err(KommoError::Refused {
                        path: path.into(),
                        status,
                        detail: problem_detail(resp).await,
                    })
                }
            }
        }
    }

    async fn backoff(&self, attempt: u32) -> Result<(), KommoError> {
        tokio::select! {
            _ = self.cancel.cancelled() => Err(KommoError::Cancelled),
            _ = tokio::time::sleep(backoff_delay(attempt)) => Ok(()),
        }
    }
}

/// Full-jitter exponential back-off: uniform in [0, min(cap, base · 2^(attempt-1))], never 0.
fn backoff_delay(attempt: u32) -> Duration {
    let ceiling = RETRY_BASE
        .saturating_mul(2u32.saturating_pow(attempt.saturating_sub(1).min(16)))
        .min(RETRY_CAP);
    let ms =
        rand::thread_rng().gen_range(ceiling.as_millis() as u64 / 2..=ceiling.as_millis() as u64);
    Duration::from_millis(ms.max(50))
}

/// How long a 429 asks us to wait: the body's `retry_after`, else a `Retry-After` header.
fn retry_after(headers: &HeaderMap, body: &[u8]) -> Option<Duration> {
    let from_body = serde_json::from_slice::<Value>(body).ok().and_then(|v| {
        v.get("retry_after")
            .and_then(|r| r.as_f64().or_else(|| r.as_str()?.parse().ok()))
    });
    let from_header = || {
        let h = headers.get(RETRY_AFTER)?.to_str().ok()?;
        if let Ok(secs) = h.trim().parse::<f64>() {
            return Some(secs);
        }
        let at = httpdate::parse_http_date(h).ok()?;
        Some(
            at.duration_since(std::time::SystemTime::now())
                .unwrap_or_default()
                .as_secs_f64(),
        )
    };
    from_body
        .or_else(from_header)
        .filter(|s| s.is_finite() && *s >= 0.0)
        .map(|s| Duration::from_secs_f64(s).min(MAX_RETRY_AFTER))
}

fn server_time(headers: &HeaderMap) -> Option<i64> {
    let h = headers.get(DATE)?.to_str().ok()?;
    let t = httpdate::parse_http_date(h).ok()?;
    Some(t.duration_since(std::time::UNIX_EPOCH).ok()?.as_secs() as i64)
}

pub fn http_date(unix: i64) -> String {
    let t = std::time::UNIX_EPOCH + Duration::from_secs(unix.max(0) as u64);
    httpdate::fmt_http_date(t)
}

/// A short, safe description of a body that is not JSON (an HTML error page, a cut body).
fn describe_bad_body(bytes: &[u8], e: &serde_json::Error) -> String {
    let head: String = String::from_utf8_lossy(&bytes[..bytes.len().min(60)])
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if e.is_eof() {
        format!(
            "JSON ends early after {} bytes (truncated body)",
            bytes.len()
        )
    } else {
        format!("not JSON ({e}); it starts with `{}`", head.trim())
    }
}

async fn problem_detail(resp: reqwest::Response) -> String {
    let bytes = resp.bytes().await.unwrap_or_default();
    match serde_json::from_slice::<Value>(&bytes) {
        Ok(v) => {
            let title = v.get("title").and_then(Value::as_str).unwrap_or("");
            let detail = v.get("detail").and_then(Value::as_str).unwrap_or("");
            let mut s = [title, detail]
                .iter()
                .filter(|s| !s.is_empty())
                .copied()
                .collect::<Vec<_>>()
                .join(": ");
            if let Some(errors) = v.get("validation-errors") {
                s.push_str(&format!(" {errors}"));
            }
            if s.is_empty() {
                "no details".into()
            } else {
                s
            }
        }
        Err(_) => "no details (body is not JSON)".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_prefers_the_body_then_the_header() {
        let mut h = HeaderMap::new();
        h.insert(RETRY_AFTER, "7".parse().unwrap());
        assert_eq!(
            retry_after(&h, br#"{"retry_after": 3}"#),
            Some(Duration::from_secs(3))
        );
        assert_eq!(retry_after(&h, b"<html>"), Some(Duration::from_secs(7)));
        assert_eq!(retry_after(&HeaderMap::new(), b"<html>"), None);
        assert_eq!(
            retry_after(&HeaderMap::new(), br#"{"retry_after": 99999}"#),
            Some(MAX_RETRY_AFTER)
        );
    }

    #[test]
    fn http_date_is_rfc7231() {
        assert_eq!(http_date(784111777), "Sun, 06 Nov 1994 08:49:37 GMT");
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        for attempt in 1..20 {
            let d = backoff_delay(attempt);
            assert!(d <= RETRY_CAP && d >= Duration::from_millis(50));
        }
        assert!(backoff_delay(1) <= Duration::from_millis(500));
    }

    #[test]
    fn bad_bodies_are_described_without_dumping_them() {
        let e = serde_json::from_slice::<Value>(b"<html><body>502").unwrap_err();
        let s = describe_bad_body(b"<html><body>502", &e);
        assert!(s.contains("not JSON") && s.contains("<html>"), "{s}");
        let e = serde_json::from_slice::<Value>(br#"{"_page": 1, "_embedded": {"le"#).unwrap_err();
        assert!(describe_bad_body(b"{}", &e).contains("truncated"));
    }
}
