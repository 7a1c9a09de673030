//! The sim clock: system UTC plus an offset that tests can move forward.
//!
//! Data times (`updated_at`, token expiry, the `Date` header) follow this clock so that tests can
//! jump hours ahead without sleeping. Rate limiting and bans use real `Instant`s instead, because
//! they model what a real server does to a client's real request rate.

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Unix-second clock = system time + an adjustable offset.
#[derive(Debug)]
pub struct SimClock {
    offset: AtomicI64,
}

impl SimClock {
    /// A clock `offset_secs` ahead of (or, if negative, behind) the system clock.
    pub fn new(offset_secs: i64) -> Self {
        SimClock {
            offset: AtomicI64::new(offset_secs),
        }
    }

    /// Sim now, unix seconds.
    pub fn now(&self) -> i64 {
        system_now() + self.offset.load(Ordering::SeqCst)
    }

    /// Jumps the clock by `secs` (may be negative, though tests only move forward).
    pub fn advance(&self, secs: i64) {
        self.offset.fetch_add(secs, Ordering::SeqCst);
    }

    /// Sim now as an RFC 7231 HTTP-date, for the `Date` header.
    pub fn http_date(&self) -> String {
        http_date(self.now())
    }
}

/// System UTC in unix seconds.
fn system_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Formats unix seconds as an HTTP-date (`Sun, 06 Nov 1994 08:49:37 GMT`).
pub fn http_date(unix: i64) -> String {
    let t = UNIX_EPOCH + Duration::from_secs(unix.max(0) as u64);
    httpdate::fmt_http_date(t)
}

/// Parses an HTTP-date into unix seconds; `None` when unparseable.
pub fn parse_http_date(s: &str) -> Option<i64> {
    let t = httpdate::parse_http_date(s.trim()).ok()?;
    t.duration_since(UNIX_EPOCH)
        .ok()
        .map(|d| d.as_secs() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_date_round_trips() {
        assert_eq!(http_date(784_111_777), "Sun, 06 Nov 1994 08:49:37 GMT");
        assert_eq!(
            parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(784_111_777)
        );
        assert_eq!(parse_http_date("yesterday"), None);
    }

    #[test]
    fn advance_moves_now() {
        let c = SimClock::new(0);
        let a = c.now();
        c.advance(3600);
        assert!(c.now() >= a + 3600);
    }
}
