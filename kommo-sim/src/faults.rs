//! Injected faults: what a flaky network or an overloaded Kommo does to a client.
//!
//! Faults are queued; each counted /api request, once it has passed the ban, rate-limit and auth
//! checks, takes the next one. That order means a fault never hides a limit the client broke.
//! When the queue is empty, an optional [`FaultMix`] draws a random fault for a share of the
//! requests, for soak tests that want a steady drizzle of failures rather than a script.

mod bodies;
mod mix;

use std::collections::VecDeque;
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderValue, StatusCode};
use axum::response::Response;
use serde_json::json;

use crate::problem;

pub use bodies::HUGE_BYTES;
pub(crate) use bodies::{padded, reset_mid_body};
use mix::MixDraws;
pub use mix::{FaultMix, FaultMixError};

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
    /// The connection is dropped before any answer: a balancer restarting, a NAT entry expiring
    /// or a peer reset. The client gets no status, only a transport error ("connection closed
    /// before message completed"), and cannot know whether the server acted on the request.
    Reset,
    /// 200 and hal+json headers, the first half of the real page, then the connection drops: a
    /// reset mid-body. Unlike [`Fault::Truncated200`], the transfer itself fails, so the error
    /// surfaces while reading the body, not while parsing it.
    ResetBody,
    /// The real answer padded to about 10 MB ([`HUGE_BYTES`]) while staying valid JSON (an extra
    /// top-level `_sim_padding` string): an account with huge custom field values, or an API
    /// that starts sending more than it used to. A client must neither choke nor cap it too low.
    Huge,
    /// 200 with the hal+json content type and 10 MB of non-JSON bytes: an upstream PHP error dump
    /// or a misrouted download behind a proxy that kept the headers.
    HugeJunk,
    /// One 403 with the nginx HTML page a ban answers, without starting a ban: a WAF or proxy
    /// hiccup. Counted in `faults_403_served`, not `forbidden`, so tests can tell it from a ban.
    Html403,
}

impl Fault {
    /// Parses the control API's `kind`: a status code ("500", "502", "504", ...), "timeout",
    /// "non_json", "truncated", "html_429", "429_retry_after" (uses `retry_after`, default 1),
    /// "date_ahead" (`retry_after` seconds ahead, default a year), "reset", "reset_body", "huge",
    /// "huge_junk" or "html_403".
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
            "reset" => Ok(Fault::Reset),
            "reset_body" => Ok(Fault::ResetBody),
            "huge" => Ok(Fault::Huge),
            "huge_junk" => Ok(Fault::HugeJunk),
            "html_403" => Ok(Fault::Html403),
            other => match other.parse::<u16>() {
                Ok(s) if (400..600).contains(&s) => Ok(Fault::Status(s)),
                _ => Err(format!(
                    "unknown fault kind {other:?}: use a 4xx/5xx status, timeout, non_json, \
                     truncated, html_429, 429_retry_after, date_ahead, reset, reset_body, huge, \
                     huge_junk or html_403"
                )),
            },
        }
    }

    /// The `kind` name [`Fault::parse`] takes for this fault (without its parameter), as the
    /// counters and `/_sim/health` show it.
    pub fn kind(&self) -> String {
        match self {
            Fault::Status(s) => s.to_string(),
            Fault::Timeout => "timeout".into(),
            Fault::NonJson200 => "non_json".into(),
            Fault::Truncated200 => "truncated".into(),
            Fault::Html429 => "html_429".into(),
            Fault::Status429WithHeader(_) => "429_retry_after".into(),
            Fault::DateAhead(_) => "date_ahead".into(),
            Fault::Reset => "reset".into(),
            Fault::ResetBody => "reset_body".into(),
            Fault::Huge => "huge".into(),
            Fault::HugeJunk => "huge_junk".into(),
            Fault::Html403 => "html_403".into(),
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
            Fault::Reset => bodies::reset(),
            // Need the real answer too; alone, a stand-in page.
            Fault::ResetBody => reset_mid_body(Bytes::from_static(b"{\"_page\":1,\"_links\":{}}")),
            Fault::Huge => padded(
                problem::raw_response(200, problem::HAL_JSON, String::new()),
                b"{}",
            ),
            Fault::HugeJunk => bodies::junk(),
            Fault::Html403 => problem::html(403),
        }
    }
}

/// Faults waiting for the next requests, in injection order, and the mix that fills in when
/// none is waiting. Both sit behind one lock so a request takes its fault in one step.
#[derive(Debug, Default)]
pub struct FaultQueue {
    queue: VecDeque<(Fault, u32)>,
    mix: Option<MixDraws>,
}

impl FaultQueue {
    /// Queues `count` occurrences of `fault` behind the ones already queued.
    pub fn push(&mut self, fault: Fault, count: u32) {
        if count > 0 {
            self.queue.push_back((fault, count));
        }
    }

    /// Takes the fault for the current request, if any: the next queued one, else a draw of
    /// the mix.
    pub fn take(&mut self) -> Option<Fault> {
        let Some((fault, left)) = self.queue.front_mut() else {
            return self.mix.as_mut().and_then(MixDraws::draw);
        };
        let f = *fault;
        *left -= 1;
        if *left == 0 {
            self.queue.pop_front();
        }
        Some(f)
    }

    /// Faults still queued (the mix not included: it never runs out).
    pub fn pending(&self) -> u64 {
        self.queue.iter().map(|(_, n)| *n as u64).sum()
    }

    /// Replaces the mix (`None` = no random faults); its draws start again from its seed.
    pub fn set_mix(&mut self, mix: Option<FaultMix>) -> Result<(), FaultMixError> {
        self.mix = mix.map(MixDraws::new).transpose()?;
        Ok(())
    }

    /// The mix in force.
    pub fn mix(&self) -> Option<&FaultMix> {
        self.mix.as_ref().map(MixDraws::mix)
    }

    /// Drops every queued fault and the mix.
    pub fn clear(&mut self) {
        self.queue.clear();
        self.mix = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_parses_back_from_its_name() {
        let all = [
            Fault::Status(502),
            Fault::Timeout,
            Fault::NonJson200,
            Fault::Truncated200,
            Fault::Html429,
            Fault::Status429WithHeader(1),
            Fault::DateAhead(365 * 86_400),
            Fault::Reset,
            Fault::ResetBody,
            Fault::Huge,
            Fault::HugeJunk,
            Fault::Html403,
        ];
        for f in all {
            assert_eq!(Fault::parse(&f.kind(), None), Ok(f), "{}", f.kind());
        }
    }

    #[test]
    fn an_unknown_kind_is_named_with_the_choices() {
        let e = Fault::parse("rst", None).unwrap_err();
        assert!(e.contains("\"rst\""), "{e}");
        for k in [
            "reset",
            "reset_body",
            "huge",
            "huge_junk",
            "html_403",
            "date_ahead",
        ] {
            assert!(e.contains(k), "{k} missing from {e}");
        }
        assert!(Fault::parse("200", None).is_err(), "not a failure status");
    }

    #[test]
    fn the_queue_comes_before_the_mix_and_clear_drops_both() {
        let mut q = FaultQueue::default();
        q.set_mix(Some(FaultMix::new(1.0, vec![Fault::Reset], 7)))
            .unwrap();
        q.push(Fault::Status(500), 2);
        assert_eq!(q.take(), Some(Fault::Status(500)));
        assert_eq!(q.take(), Some(Fault::Status(500)));
        assert_eq!(q.take(), Some(Fault::Reset));
        assert_eq!(q.pending(), 0);
        q.clear();
        assert_eq!(q.mix(), None);
        assert_eq!(q.take(), None);
    }
}
