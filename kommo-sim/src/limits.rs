//! Kommo's request limits: at most `max_rps` requests in any trailing second (429 above it), and
//! an IP ban (403 to everything) after repeated violations.
//!
//! Uses real `Instant`s, not the sim clock: the limit is about how fast a client really sends.
//! Every counted request enters the window, rejected ones included, as on a real server where a
//! 429 or 403 still costs a request.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// What the limiter decided for one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    /// Within limits.
    Ok,
    /// Over the rate: answer 429. `banned_now` says this violation started a ban.
    TooMany { banned_now: bool },
    /// Banned: answer 403.
    Banned,
}

/// Limits in force.
#[derive(Clone, Copy, Debug)]
pub struct LimitConfig {
    pub max_rps: u32,
    pub ban_after_violations: u32,
    pub ban_window: Duration,
    pub ban_duration: Duration,
}

/// Sliding-window limiter with ban state.
#[derive(Debug, Default)]
pub struct Limiter {
    arrivals: VecDeque<Instant>,
    violations: VecDeque<Instant>,
    banned_until: Option<Instant>,
}

const WINDOW: Duration = Duration::from_secs(1);

impl Limiter {
    /// Records an arrival at `at` and decides its fate. Returns the decision and the number of
    /// arrivals in the trailing window `(at - 1 s, at]`, this one included.
    pub fn admit(&mut self, at: Instant, cfg: &LimitConfig) -> (Admission, u32) {
        // Concurrent requests may take the lock out of arrival order: insert sorted.
        let pos = self
            .arrivals
            .iter()
            .rposition(|&t| t <= at)
            .map_or(0, |p| p + 1);
        self.arrivals.insert(pos, at);
        while let Some(&front) = self.arrivals.front() {
            if at.saturating_duration_since(front) >= WINDOW {
                self.arrivals.pop_front();
            } else {
                break;
            }
        }
        let in_window = self.arrivals.iter().filter(|&&t| t <= at).count() as u32;

        if let Some(until) = self.banned_until {
            if at < until {
                return (Admission::Banned, in_window);
            }
            self.banned_until = None;
        }
        if cfg.max_rps == 0 || in_window <= cfg.max_rps {
            return (Admission::Ok, in_window);
        }
        while let Some(&front) = self.violations.front() {
            if at.saturating_duration_since(front) >= cfg.ban_window {
                self.violations.pop_front();
            } else {
                break;
            }
        }
        self.violations.push_back(at);
        let banned_now = cfg.ban_after_violations > 0
            && self.violations.len() as u32 >= cfg.ban_after_violations;
        if banned_now {
            self.banned_until = Some(at + cfg.ban_duration);
            self.violations.clear();
        }
        (Admission::TooMany { banned_now }, in_window)
    }

    /// Bans from now for `d` (zero lifts a ban).
    pub fn ban_for(&mut self, d: Duration) {
        self.banned_until = if d.is_zero() {
            None
        } else {
            Some(Instant::now() + d)
        };
    }

    /// Time left on the ban, if any.
    pub fn ban_remaining(&self) -> Option<Duration> {
        let until = self.banned_until?;
        let left = until.saturating_duration_since(Instant::now());
        (!left.is_zero()).then_some(left)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> LimitConfig {
        LimitConfig {
            max_rps: 7,
            ban_after_violations: 3,
            ban_window: Duration::from_secs(60),
            ban_duration: Duration::from_secs(600),
        }
    }

    #[test]
    fn eighth_in_a_second_is_rejected_and_window_slides() {
        let mut l = Limiter::default();
        let t0 = Instant::now();
        for i in 0..7 {
            let (a, n) = l.admit(t0 + Duration::from_millis(i * 100), &cfg());
            assert_eq!(a, Admission::Ok);
            assert_eq!(n, i as u32 + 1);
        }
        let (a, n) = l.admit(t0 + Duration::from_millis(999), &cfg());
        assert_eq!(a, Admission::TooMany { banned_now: false });
        assert_eq!(n, 8);
        // At t0 + 1 s the first arrival has left the window (t - 1 s < arrival is false).
        let (a, n) = l.admit(t0 + Duration::from_millis(1000), &cfg());
        assert_eq!(n, 8, "7 from 100..999 ms plus this one");
        assert!(matches!(a, Admission::TooMany { .. }));
        let (a, _) = l.admit(t0 + Duration::from_millis(2500), &cfg());
        assert_eq!(a, Admission::Ok);
    }

    #[test]
    fn repeated_violations_ban() {
        let mut l = Limiter::default();
        let t0 = Instant::now();
        let mut decisions = Vec::new();
        for i in 0..11 {
            decisions.push(l.admit(t0 + Duration::from_millis(i), &cfg()).0);
        }
        assert_eq!(decisions[7], Admission::TooMany { banned_now: false });
        assert_eq!(decisions[9], Admission::TooMany { banned_now: true });
        assert_eq!(decisions[10], Admission::Banned);
        let (a, _) = l.admit(t0 + Duration::from_secs(601), &cfg());
        assert_eq!(a, Admission::Ok, "ban over");
    }
}
