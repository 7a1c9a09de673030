//! HTTP access to one Kommo account: authentication, politeness and the retry rules.
//!
//! | answer            | what happens                                                         |
//! |-------------------|----------------------------------------------------------------------|
//! | 200               | JSON body parsed (a broken or cut body is retried like a 5xx)        |
//! | 204, 304          | "nothing here": an empty page                                        |
//! | 429               | every worker pauses as told (`retry_after`, `Retry-After`, else back-off), then half rate for a minute; the 6th for one request is final |
//! | 403               | the account is banned: all traffic stops for a growing back-off; never retried |
//! | 401               | OAuth: renew the token once and ask again; then final, all traffic locked out |
//! | 402, 404, 4xx     | final, with a message saying what to fix                             |
//! | 504               | final for this page size: the engine asks again for less             |
//! | 5xx, timeout, I/O | up to `kommo.max_retries` retries (backon), jittered exponential back-off from 500 ms, at most 30 s |
//!
//! Every wait (pacer, 429 pause, back-off) and every request in flight ends at once on
//! shutdown.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder, Retryable};
use reqwest::header::{HeaderMap, AUTHORIZATION, DATE, IF_MODIFIED_SINCE, RETRY_AFTER};
use secrecy::{ExposeSecret, SecretString};
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
/// First back-off step of a transient retry.
const RETRY_BASE: Duration = Duration::from_millis(500);
/// No back-off wait is longer than this.
const RETRY_CAP: Duration = Duration::from_secs(30);

/// The useful part of a successful answer.
#[derive(Debug)]
pub struct Answer {
    /// `None` for 204 and 304.
    pub body: Option<Value>,
    /// Server clock from the `Date` header, unix seconds.
    pub server_time: Option<i64>,
}

/// What an OAuth client gets when the app wired in no token store: every use says so.
struct NoTokenStore;

#[async_trait::async_trait]
impl crate::tokens::TokenStore for NoTokenStore {
    async fn load(
        &self,
        _: &str,
    ) -> Result<Option<crate::tokens::TokenRow>, crate::tokens::TokenStoreError> {
        Err(no_store())
    }

    async fn lock(
        &self,
        _: &str,
    ) -> Result<Box<dyn crate::tokens::TokenLock>, crate::tokens::TokenStoreError> {
        Err(no_store())
    }
}

fn no_store() -> crate::tokens::TokenStoreError {
    crate::tokens::TokenStoreError(
        "kommo.auth = \"oauth\" needs the database to keep the token pair, and none was given"
            .into(),
    )
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
        tokens: Option<Arc<dyn crate::tokens::TokenStore>>,
    ) -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder()
            .connect_timeout(settings.connect_timeout)
            .timeout(settings.request_timeout)
            .user_agent(concat!("kommo-sync/", env!("CARGO_PKG_VERSION")))
            .build()?;
        let politeness = Arc::new(Politeness::new(
            settings.max_rps,
            settings.spacing_margin,
            settings.ban_backoff,
            settings.ban_backoff_max,
        ));
        Ok(KommoClient {
            http: http.clone(),
            base_url: settings.base_url.clone(),
            auth: match &settings.auth {
                AuthSettings::LongLivedToken(t) => Auth::LongLived(t.clone()),
                AuthSettings::OAuth(o) => Auth::OAuth(Arc::new(OAuth::new(
                    tokens.unwrap_or_else(|| Arc::new(NoTokenStore)),
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

    /// Waits for an OAuth refresh in flight to commit: call before the process exits.
    pub async fn settle(&self) {
        if let Auth::OAuth(o) = &self.auth {
            o.settle().await;
        }
    }

    pub fn politeness(&self) -> &Arc<Politeness> {
        &self.politeness
    }

    /// GET `path` with `query`, under the account's politeness rules.
    ///
    /// Two layers of retries. Transient failures (transport errors, an unreadable 200, 5xx
    /// other than 504) are retried by backon with [`transient_backoff`], at most
    /// `kommo.max_retries` times per request. The Kommo rules are our own, around it: a 429
    /// pauses every worker and asks again (at most [`MAX_THROTTLES_PER_REQUEST`] times), a 401
    /// renews the OAuth token once, everything else is final.
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
        // Transient failures of this request so far, across 429s and renewals too: the bound
        // is per request, and each backon run below gets what is left of it.
        let failures = AtomicU32::new(0);
        let mut throttles = 0u32;
        let mut renewed = false;
        loop {
            let retries_left = self
                .max_retries
                .saturating_sub(failures.load(Ordering::Relaxed));
            let cancel = self.cancel.clone();
            let outcome = (|| self.attempt(&url, path, query, if_modified_since))
                .retry(transient_backoff(retries_left))
                // Shutdown ends a back-off sleep at once; the attempt that follows sees the
                // token and returns `Cancelled` without sending anything.
                .sleep(move |d: Duration| {
                    let cancel = cancel.clone();
                    async move {
                        tokio::select! {
                            _ = cancel.cancelled() => {}
                            _ = tokio::time::sleep(d) => {}
                        }
                    }
                })
                .when(|f| {
                    let transient = matches!(f, Failure::Transient(_));
                    if transient {
                        failures.fetch_add(1, Ordering::Relaxed);
                    }
                    transient
                })
                .notify(|f, wait| {
                    if let Failure::Transient(t) = f {
                        tracing::warn!(
                            path,
                            attempt = failures.load(Ordering::Relaxed),
                            error.message = %t,
                            retry_in_secs = wait.as_secs_f64(),
                            "request to Kommo failed; retrying"
                        );
                    }
                })
                .await;
            let failure = match outcome {
                Ok(answer) => return Ok(answer),
                Err(f) => f,
            };
            match failure {
                Failure::Final(err) => return Err(err),
                Failure::Transient(t) => {
                    let attempts = failures.load(Ordering::Relaxed);
                    tracing::warn!(path, attempts, error.message = %t, "request to Kommo failed; giving up");
                    return Err(t.into_error(path, attempts));
                }
                Failure::Throttled { retry_after } => {
                    self.metrics.too_many_requests.inc();
                    throttles += 1;
                    let wait = retry_after.unwrap_or_else(|| throttle_backoff(throttles));
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
                Failure::Unauthorized { bearer, detail } => {
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
            }
        }
    }

    /// One request: the token, a turn at the pacer, the send, and the answer sorted into what
    /// `get` does next. Waits end early on shutdown.
    async fn attempt(
        &self,
        url: &Url,
        path: &str,
        query: &[(String, String)],
        if_modified_since: Option<i64>,
    ) -> Result<Answer, Failure> {
        if self.cancel.is_cancelled() {
            return Err(Failure::Final(KommoError::Cancelled));
        }
        // The token first: a refresh takes a turn at the pacer of its own, and must not do so
        // between this request's turn and its send (which would bunch the two).
        let bearer = self.auth.bearer().await.map_err(Failure::Final)?;
        let waiting = std::time::Instant::now();
        self.politeness
            .acquire(&self.cancel)
            .await
            .map_err(|e| Failure::Final(e.into()))?;
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
            _ = self.cancel.cancelled() => return Err(Failure::Final(KommoError::Cancelled)),
            r = req.send() => r,
        };
        let resp = match sent {
            Ok(r) => r,
            Err(e) => {
                self.metrics.request(path, None);
                return Err(Failure::Transient(Transient::Transport(transport_message(
                    e,
                ))));
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
                    _ = self.cancel.cancelled() => return Err(Failure::Final(KommoError::Cancelled)),
                    b = resp.bytes() => b,
                };
                let parsed = match body {
                    Ok(bytes) => serde_json::from_slice::<Value>(&bytes)
                        .map_err(|e| describe_bad_body(&bytes, &e)),
                    Err(e) => Err(format!("body not received: {}", transport_message(e))),
                };
                match parsed {
                    Ok(v) => Ok(Answer {
                        body: Some(v),
                        server_time,
                    }),
                    Err(what) => Err(Failure::Transient(Transient::Decode(what))),
                }
            }
            204 | 304 => Ok(Answer {
                body: None,
                server_time,
            }),
            429 => {
                let headers = resp.headers().clone();
                let body = tokio::select! {
                    _ = self.cancel.cancelled() => return Err(Failure::Final(KommoError::Cancelled)),
                    b = resp.bytes() => b.unwrap_or_default(),
                };
                Err(Failure::Throttled {
                    retry_after: retry_after(&headers, &body),
                })
            }
            403 => {
                self.metrics.bans.inc();
                let (until, backoff) = self.politeness.banned();
                tracing::error!(path, %until, backoff_secs = backoff.as_secs(), "Kommo answered 403: IP blocked, all traffic stopped");
                Err(Failure::Final(KommoError::Banned { until, backoff }))
            }
            401 => Err(Failure::Unauthorized {
                bearer,
                detail: problem_detail(resp).await,
            }),
            402 => Err(Failure::Final(KommoError::PaymentRequired {
                detail: problem_detail(resp).await,
            })),
            404 => Err(Failure::Final(KommoError::NotFound { path: path.into() })),
            504 => {
                let limit = query
                    .iter()
                    .find(|(k, _)| k == "limit")
                    .and_then(|(_, v)| v.parse().ok())
                    .unwrap_or(0);
                Err(Failure::Final(KommoError::GatewayTimeout { limit }))
            }
            500..=599 => Err(Failure::Transient(Transient::Server(status))),
            _ => Err(Failure::Final(KommoError::Refused {
                path: path.into(),
                status,
                detail: problem_detail(resp).await,
            })),
        }
    }
}

/// Why one attempt produced no answer, and so what `get` does next.
enum Failure {
    /// Worth asking again after a back-off (backon's job).
    Transient(Transient),
    /// 429: pause every worker, then ask again (our rule). `None`: Kommo did not say how long.
    Throttled { retry_after: Option<Duration> },
    /// 401 with this token: it may have expired early (OAuth renews once).
    Unauthorized {
        bearer: SecretString,
        detail: String,
    },
    /// Final for this request.
    Final(KommoError),
}

/// The failures that may heal by themselves.
enum Transient {
    /// No answer: connect error, timeout, reset. The cause chain, without the URL.
    Transport(String),
    /// A 200 whose body is not the JSON it should be (or did not arrive whole).
    Decode(String),
    /// 5xx other than 504.
    Server(u16),
}

impl std::fmt::Display for Transient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Transient::Transport(message) => f.write_str(message),
            Transient::Decode(what) => write!(f, "unreadable answer: {what}"),
            Transient::Server(status) => write!(f, "server error {status}"),
        }
    }
}

impl Transient {
    /// The final error once the retries are spent.
    fn into_error(self, path: &str, attempts: u32) -> KommoError {
        match self {
            Transient::Transport(message) => KommoError::Transport {
                path: path.into(),
                attempts,
                message,
            },
            Transient::Decode(what) => KommoError::Decode {
                path: path.into(),
                what,
                attempts,
            },
            Transient::Server(status) => KommoError::Server {
                path: path.into(),
                status,
                attempts,
            },
        }
    }
}

/// Back-off between retries of transient failures, for backon: at most `retries` retries;
/// retry `n` waits a random time in `[s, 2s)` with `s = min(500 ms · 2^(n-1), 15 s)`.
///
/// That is backon's jitter, not "full jitter": backon adds a uniform random `[0, s)` on top of
/// the exponential step `s`. The step is capped at half of [`RETRY_CAP`] so that with the
/// jitter no wait exceeds 30 s, and waits keep their spread once the cap is reached.
fn transient_backoff(retries: u32) -> ExponentialBuilder {
    ExponentialBuilder::new()
        .with_min_delay(RETRY_BASE)
        .with_factor(2.0)
        .with_max_delay(RETRY_CAP / 2)
        .with_jitter()
        .with_max_times(retries as usize)
}

/// How long to pause everyone after the `n`-th 429 of a request when Kommo did not say:
/// the same curve as [`transient_backoff`] (so in `[s, 2s)`, never above 30 s).
fn throttle_backoff(n: u32) -> Duration {
    transient_backoff(n)
        .build()
        .nth(n.saturating_sub(1) as usize)
        .unwrap_or(RETRY_BASE)
}

/// What went wrong with a request that got no answer, for logs and errors: reqwest's own
/// message ("error sending request") followed by its causes ("operation timed out",
/// "connection reset by peer", ...). Never the URL (`without_url`), and reqwest errors carry
/// no header, so no token either.
pub(crate) fn transport_message(e: reqwest::Error) -> String {
    let e = e.without_url();
    let mut parts = vec![e.to_string()];
    let mut source = std::error::Error::source(&e);
    while let Some(cause) = source {
        let text = cause.to_string();
        // Some layers repeat their cause in their own message; say each thing once.
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        source = cause.source();
    }
    parts.join(": ")
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
    fn backoff_is_jittered_exponential_from_half_a_second_and_capped() {
        for _ in 0..200 {
            let waits: Vec<Duration> = transient_backoff(12).build().collect();
            assert_eq!(waits.len(), 12, "one wait per retry");
            for (i, w) in waits.iter().enumerate() {
                let step = (RETRY_BASE * 2u32.pow(i as u32)).min(RETRY_CAP / 2);
                assert!(*w >= step && *w < step * 2, "retry {}: {w:?}", i + 1);
                assert!(*w <= RETRY_CAP);
            }
        }
        assert_eq!(transient_backoff(0).build().next(), None, "no retries");
        for n in 1..20 {
            let d = throttle_backoff(n);
            assert!(d >= RETRY_BASE && d <= RETRY_CAP, "{n}: {d:?}");
        }
        assert!(throttle_backoff(1) < Duration::from_secs(1));
    }

    #[tokio::test]
    async fn a_transport_error_keeps_its_cause_and_not_the_url() {
        // Nothing listens on a port just freed.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let http = reqwest::Client::new();
        let e = http
            .get(format!("http://127.0.0.1:{port}/api/v4/leads?secret=abc"))
            .send()
            .await
            .unwrap_err();
        let m = transport_message(e);
        assert!(m.to_lowercase().contains("refused"), "{m}");
        assert!(!m.contains("secret") && !m.contains("/api/v4"), "{m}");

        // A server that accepts and never answers: the cause is the timeout.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let _hold = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((s, _)) = listener.accept().await {
                held.push(s);
            }
        });
        let http = reqwest::Client::builder()
            .timeout(Duration::from_millis(200))
            .build()
            .unwrap();
        let e = http
            .get(format!("http://{addr}/api/v4/leads?secret=abc"))
            .send()
            .await
            .unwrap_err();
        let m = transport_message(e);
        assert!(m.contains("timed out"), "{m}");
        assert!(!m.contains("secret"), "{m}");
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
