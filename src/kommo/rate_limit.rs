//! Politeness towards one Kommo account: one limiter shared by every worker, a pause gate
//! for 429s, and a ban gate for 403s.
//!
//! Kommo counts requests in any sliding second and bans the IP when it is over the limit
//! again and again, so the limiter spaces requests evenly (a GCRA with a burst of one) with a
//! safety margin: eight consecutive requests always span more than a second, even if the
//! network delivers some of them up to 50 ms late.

use std::num::NonZeroU32;
use std::sync::Mutex;
use std::time::Duration;

use chrono::{DateTime, Utc};
use governor::clock::DefaultClock;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

type Limiter = RateLimiter<NotKeyed, InMemoryState, DefaultClock>;

/// Spacing margin: at 7 rps, eight consecutive requests span 1.05 s instead of exactly 1 s,
/// so that up to 50 ms of jitter on the way to Kommo cannot put eight into its one-second
/// window. (2 % proved too thin: a busy machine alone delays requests by more.)
const SPACING_MARGIN: f64 = 1.05;
/// How long requests go at half rate after a 429.
const SLOW_DOWN_FOR: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GateError {
    /// The account is banned until the given time; no request may be sent before it.
    Banned {
        until: DateTime<Utc>,
        backoff: Duration,
    },
    /// The credentials were refused for good; nothing is sent until a human fixes them.
    LockedOut(String),
    Cancelled,
}

/// What the politeness layer is doing right now, for `status`, health and metrics.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PolitenessSnapshot {
    pub banned_until: Option<DateTime<Utc>>,
    pub locked_out: Option<String>,
    pub paused_for: Option<Duration>,
    pub slowed_down: bool,
    pub bans: u64,
    pub throttles: u64,
}

#[derive(Debug, Default)]
struct Gates {
    paused_until: Option<Instant>,
    slow_until: Option<Instant>,
    banned_until: Option<(Instant, DateTime<Utc>)>,
    locked_out: Option<String>,
    /// How many 403s in a row; the ban back-off doubles with each.
    ban_level: u32,
    bans: u64,
    throttles: u64,
}

pub struct Politeness {
    /// One waiter at a time at the limiter, in arrival order: a crowd of waiters woken at
    /// once would delay the winner between its slot and its send, bunching sends up.
    turn: tokio::sync::Semaphore,
    limiter: Limiter,
    /// Half-rate limiter consulted on top of `limiter` while slowed down after a 429.
    slow_limiter: Limiter,
    gates: Mutex<Gates>,
    ban_backoff: Duration,
    ban_backoff_max: Duration,
}

fn limiter_for(rps: u32) -> Limiter {
    let period = Duration::from_secs_f64(SPACING_MARGIN / f64::from(rps.max(1)));
    let quota = Quota::with_period(period)
        .expect("period is positive")
        .allow_burst(NonZeroU32::new(1).expect("1 is not zero"));
    RateLimiter::direct(quota)
}

impl Politeness {
    pub fn new(max_rps: u32, ban_backoff: Duration, ban_backoff_max: Duration) -> Self {
        let limiter = limiter_for(max_rps);
        // Start as if a request had just been sent: a previous process (crashed and restarted
        // at once) sent its last request before this one started, so keeping one spacing
        // after start-up continues its rhythm and no sliding second gets more than its
        // share. (Two processes alive at once are another matter: see the README.)
        let _ = limiter.check();
        Politeness {
            turn: tokio::sync::Semaphore::new(1),
            limiter,
            slow_limiter: limiter_for((max_rps / 2).max(1)),
            gates: Mutex::new(Gates::default()),
            ban_backoff,
            ban_backoff_max,
        }
    }

    /// Waits until one request may be sent. Fails at once while the account is banned, so
    /// that a ban stops traffic instead of parking workers for minutes.
    pub async fn acquire(&self, cancel: &CancellationToken) -> Result<(), GateError> {
        loop {
            let (pause, slow) = {
                let g = self.gates.lock().expect("gates lock");
                if let Some(err) = self.ban_error(&g) {
                    return Err(err);
                }
                let now = Instant::now();
                (
                    g.paused_until.filter(|t| *t > now),
                    g.slow_until.is_some_and(|t| t > now),
                )
            };
            if let Some(until) = pause {
                tokio::select! {
                    _ = cancel.cancelled() => return Err(GateError::Cancelled),
                    _ = tokio::time::sleep_until(until) => continue,
                }
            }
            tokio::select! {
                _ = cancel.cancelled() => return Err(GateError::Cancelled),
                _ = async {
                    let _turn = self.turn.acquire().await;
                    if slow { self.slow_limiter.until_ready().await; }
                    self.limiter.until_ready().await;
                } => {}
            }
            // A ban or a pause may have started while this request waited for its turn.
            let g = self.gates.lock().expect("gates lock");
            if let Some(err) = self.ban_error(&g) {
                return Err(err);
            }
            if g.paused_until.is_some_and(|t| t > Instant::now()) {
                continue;
            }
            return Ok(());
        }
    }

    fn ban_error(&self, g: &Gates) -> Option<GateError> {
        if let Some(reason) = &g.locked_out {
            return Some(GateError::LockedOut(reason.clone()));
        }
        match g.banned_until {
            Some((until, wall)) if until > Instant::now() => Some(GateError::Banned {
                until: wall,
                backoff: self.ban_duration(g.ban_level.saturating_sub(1)),
            }),
            _ => None,
        }
    }

    fn ban_duration(&self, level: u32) -> Duration {
        let factor = 2u32.saturating_pow(level.min(16));
        self.ban_backoff
            .saturating_mul(factor)
            .min(self.ban_backoff_max)
    }

    /// A 429: every worker waits `wait`, then the account runs at half rate for a minute.
    pub fn throttled(&self, wait: Duration) {
        let mut g = self.gates.lock().expect("gates lock");
        let now = Instant::now();
        let until = now + wait;
        g.paused_until = Some(g.paused_until.map_or(until, |t| t.max(until)));
        g.slow_until = Some(until + SLOW_DOWN_FOR);
        g.throttles += 1;
    }

    /// A 403: all traffic stops for a back-off that doubles with each ban in a row.
    /// Returns the ban's end and length.
    pub fn banned(&self) -> (DateTime<Utc>, Duration) {
        let mut g = self.gates.lock().expect("gates lock");
        let backoff = self.ban_duration(g.ban_level);
        g.ban_level = g.ban_level.saturating_add(1);
        g.bans += 1;
        let wall =
            Utc::now() + chrono::Duration::from_std(backoff).unwrap_or(chrono::Duration::MAX);
        g.banned_until = Some((Instant::now() + backoff, wall));
        (wall, backoff)
    }

    /// The credentials were refused for good: stop all traffic until the process restarts
    /// (after a human fixed them).
    pub fn lock_out(&self, reason: &str) {
        self.gates.lock().expect("gates lock").locked_out = Some(reason.to_string());
    }

    /// Any answer other than 403 shows the block is over: the next ban starts small again.
    pub fn answered(&self) {
        let mut g = self.gates.lock().expect("gates lock");
        g.ban_level = 0;
    }

    pub fn snapshot(&self) -> PolitenessSnapshot {
        let g = self.gates.lock().expect("gates lock");
        let now = Instant::now();
        PolitenessSnapshot {
            banned_until: g.banned_until.filter(|(t, _)| *t > now).map(|(_, w)| w),
            locked_out: g.locked_out.clone(),
            paused_for: g.paused_until.filter(|t| *t > now).map(|t| t - now),
            slowed_down: g.slow_until.is_some_and(|t| t > now),
            bans: g.bans,
            throttles: g.throttles,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Counts, for a list of send instants, the most that fall in any window of one second.
    fn max_in_any_second(sent: &[Instant]) -> usize {
        sent.iter()
            .map(|start| {
                sent.iter()
                    .filter(|t| **t >= *start && **t - *start < Duration::from_secs(1))
                    .count()
            })
            .max()
            .unwrap_or(0)
    }

    #[tokio::test]
    async fn never_more_than_max_rps_in_any_sliding_second() {
        let p = std::sync::Arc::new(Politeness::new(
            7,
            Duration::from_secs(60),
            Duration::from_secs(600),
        ));
        let cancel = CancellationToken::new();
        let sent = std::sync::Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for _ in 0..4 {
            let (p, c, s) = (p.clone(), cancel.clone(), sent.clone());
            tasks.push(tokio::spawn(async move {
                for _ in 0..5 {
                    p.acquire(&c).await.unwrap();
                    s.lock().unwrap().push(Instant::now());
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let sent = sent.lock().unwrap().clone();
        assert_eq!(sent.len(), 20);
        assert!(
            max_in_any_second(&sent) <= 7,
            "{}",
            max_in_any_second(&sent)
        );
        let span = *sent.iter().max().unwrap() - *sent.iter().min().unwrap();
        // 20 requests at 7/s with the margin need at least 19 * 1.02 / 7 s.
        assert!(
            span >= Duration::from_secs_f64(19.0 * 1.02 / 7.0 - 0.01),
            "{span:?}"
        );
    }

    #[tokio::test]
    async fn a_restarted_process_continues_the_rhythm_of_the_one_before() {
        let cancel = CancellationToken::new();
        let mut sent = Vec::new();
        for _process in 0..3 {
            // Each "process" sends at full rate and dies; the next starts at once.
            let p = Politeness::new(7, Duration::from_secs(60), Duration::from_secs(600));
            for _ in 0..6 {
                p.acquire(&cancel).await.unwrap();
                sent.push(Instant::now());
            }
        }
        assert!(
            max_in_any_second(&sent) <= 7,
            "{}",
            max_in_any_second(&sent)
        );
        let gaps = sent.windows(2).map(|w| w[1] - w[0]);
        let period = Duration::from_secs_f64(SPACING_MARGIN / 7.0);
        assert!(
            gaps.into_iter()
                .all(|g| g + Duration::from_millis(2) >= period),
            "every gap, across restarts too, is at least one spacing"
        );
    }

    #[tokio::test]
    async fn a_ban_refuses_at_once_and_grows() {
        let p = Politeness::new(7, Duration::from_secs(60), Duration::from_secs(150));
        let cancel = CancellationToken::new();
        let (_, first) = p.banned();
        assert_eq!(first, Duration::from_secs(60));
        assert!(matches!(
            p.acquire(&cancel).await,
            Err(GateError::Banned { .. })
        ));
        let (_, second) = p.banned();
        assert_eq!(second, Duration::from_secs(120));
        let (_, third) = p.banned();
        assert_eq!(third, Duration::from_secs(150), "capped at the maximum");
        assert!(p.snapshot().banned_until.is_some());
    }

    #[tokio::test]
    async fn a_throttle_pauses_every_worker() {
        let p = Politeness::new(7, Duration::from_secs(60), Duration::from_secs(600));
        let cancel = CancellationToken::new();
        p.acquire(&cancel).await.unwrap();
        p.throttled(Duration::from_millis(400));
        let before = Instant::now();
        p.acquire(&cancel).await.unwrap();
        assert!(Instant::now() - before >= Duration::from_millis(400));
        assert!(p.snapshot().slowed_down);
    }
}
