//! Injected faults: what a flaky network or an overloaded Kommo does to a client.
//!
//! Faults are queued; each counted /api request, once it has passed the ban, rate-limit and auth
//! checks, takes the next one. That order means a fault never hides a limit the client broke.

use std::collections::VecDeque;
use std::time::Duration;

use axum::http::{HeaderValue, StatusCode};
use axum::response::Response;
use serde_json::json;

use crate::problem;

/// How long a `Timeout` fault holds a request before giving up with 504.
pub const TIMEOUT_HOLD: Duration = Duration::from_secs(120);

/// One kind of misbehaviour.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// That status with a problem+json body (500 carries a `trace_id`, 504 is "Gateway Timeout").
    Status(u16),
    /// No answer for 120 s (then 504).
    Timeout,
    /// 200 with an HTML body.
    NonJson200,
    /// 200, hal+json content type, the real page's body cut in half.
    Truncated200,
    /// 429 with an HTML body and no `retry_after`.
    Html429,
    /// 429 problem+json without `retry_after`, plus header `Retry-After: N`.
    Status429WithHeader(u64),
    /// The real answer, with a `Date` header this many seconds ahead of the sim clock (a
    /// server clock gone wrong for one answer).
    DateAhead(i64),
}

impl Fault {
    /// Parses the control API's `kind`: a status code ("500", "502", "504", ...), "timeout",
    /// "non_json", "truncated", "html_429", "429_retry_after" (uses `retry_after`, default 1) or
    /// "date_ahead" (`retry_after` seconds ahead, default a year).
    pub fn parse(kind: &str, retry_after: Option<u64>) -> Result<Fault, String> {
        match kind {
            "timeout" => Ok(Fault::Timeout),
            "non_json" => Ok(Fault::NonJson200),
            "truncated" => Ok(Fault::Truncated200),
            "html_429" => Ok(Fault::Html429),
            // `retry_after` carries the seconds ahead (default a year).
            "date_ahead" => Ok(Fault::DateAhead(
                retry_after.map_or(365 * 86_400, |s| s as i64),
            )),
            "429_retry_after" | "429_header" => {
                Ok(Fault::Status429WithHeader(retry_after.unwrap_or(1)))
            }
            other => match other.parse::<u16>() {
                Ok(s) if (400..600).contains(&s) => Ok(Fault::Status(s)),
                _ => Err(format!(
                    "unknown fault kind {other:?}: use a 4xx/5xx status, timeout, non_json, truncated, html_429, 429_retry_after or date_ahead"
                )),
            },
        }
    }

    /// The response for faults that do not need the real page or a wait.
    pub fn simple_response(self) -> Response {
        match self {
            Fault::Status(500) => problem::internal_error(),
            Fault::Status(s) => problem::problem(s, problem::title(s)),
            Fault::Timeout => problem::problem(504, "Gateway Timeout"),
            Fault::NonJson200 => {
                let mut r = problem::html(200);
                *r.body_mut() = axum::body::Body::from(
                    "<!DOCTYPE html><html><head><title>Kommo</title></head><body><h1>Technical works</h1><p>We will be back soon.</p></body></html>",
                );
                r
            }
            Fault::Truncated200 => {
                problem::raw_response(200, problem::HAL_JSON, "{\"_page\":1,\"_links\":{".into())
            }
            Fault::Html429 => problem::html(429),
            Fault::Status429WithHeader(n) => {
                let mut v = problem::problem_value(429, "You have sent too many requests in a given amount of time. Please try again later.");
                v["title"] = json!("Too Many Requests");
                let mut r = problem::json_response(429, problem::PROBLEM_JSON, &v);
                r.headers_mut().insert(
                    axum::http::header::RETRY_AFTER,
                    HeaderValue::from_str(&n.to_string()).expect("digits"),
                );
                debug_assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
                r
            }
            // Needs the real answer: served by the gateway; alone, an empty page.
            Fault::DateAhead(_) => problem::raw_response(204, problem::HAL_JSON, String::new()),
        }
    }
}

/// Faults waiting for the next requests, in injection order.
#[derive(Debug, Default)]
pub struct FaultQueue {
    queue: VecDeque<(Fault, u32)>,
}

impl FaultQueue {
    /// Queues `count` occurrences of `fault` behind the ones already queued.
    pub fn push(&mut self, fault: Fault, count: u32) {
        if count > 0 {
            self.queue.push_back((fault, count));
        }
    }

    /// Takes the fault for the current request, if any.
    pub fn take(&mut self) -> Option<Fault> {
        let (fault, left) = self.queue.front_mut()?;
        let f = *fault;
        *left -= 1;
        if *left == 0 {
            self.queue.pop_front();
        }
        Some(f)
    }

    /// Faults still queued.
    pub fn pending(&self) -> u64 {
        self.queue.iter().map(|(_, n)| *n as u64).sum()
    }

    /// Drops every queued fault.
    pub fn clear(&mut self) {
        self.queue.clear();
    }
}
