//! Politeness towards one Kommo account: one pacer shared by every worker, a pause gate for
//! 429s, and a ban gate for 403s.
//!
//! Kommo counts requests in any sliding second and bans the IP when it is over the limit
//! again and again. So requests leave one at a time, in arrival order, under two rules that
//! count from the instant each one *actually* left (the instant `acquire` handed it the turn,
//! after its waiter had been woken), never from the slot it was scheduled for:
//! * a request may leave only when the `max_rps`-th release before it is at least
//!   `1 s + margin` old: any `max_rps + 1` consecutive releases span at least `1 s + margin`,
//!   however late any of them was;
//! * no earlier than a steady rhythm of one spacing (`(1 s + margin) / max_rps`) allows,
//!   give or take half a spacing (a GCRA with that tolerance), so that no burst bunches
//!   requests up on the way.
//!
//! A request that leaves late (its task woke late on a busy machine) therefore delays only
//! what the first rule needs; its successors catch up by up to half a spacing, and the rate
//! stays at `max_rps / (1 s + margin)`.
//!
//! Why not governor: its GCRA records each cell at the instant its own `check()` ran, on its
//! own clock (quanta) and woken by its own timer thread (futures-timer), and keeps a
//! theoretical arrival time from there; there is no way to tell it "the request really left
//! at this instant, count from that". The instant that matters is the one at which `acquire`
//! hands the turn over, after the gates were checked again, and only our own state can hold
//! it. That takes a few lines under a mutex, on tokio's clock (so tests can read it too).
//!
//! What no pacer can see is a delay *after* `acquire` returns (between the release and the
//! moment the bytes reach Kommo). `kommo.spacing_margin_ms` is there for that: the first of
//! eight consecutive requests may be delayed that much on its way without the eight falling
//! into one second.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::{Notify, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// How long requests go at half rate after a 429.
const SLOW_DOWN_FOR: Duration = Duration::from_secs(60);
/// How many release instants [`Politeness::recent_departures`] keeps.
const DEPARTURES_KEPT: usize = 64;

/// The pacing rules for one rate: at most `per` releases in any `window`, in a rhythm of
/// `spacing` with a tolerance of half a spacing.
#[derive(Debug, Clone, Copy)]
struct Pace {
    per: usize,
    window: Duration,
    spacing: Duration,
    tolerance: Duration,
}

impl Pace {
    fn new(per: u32, window: Duration) -> Pace {
        let per = per.max(1);
        Pace {
            per: per as usize,
            window,
            spacing: window / per,
            tolerance: window / per / 2,
        }
    }

    /// The earliest instant the next request may leave, given the last releases (newest
    /// last) and the rhythm's theoretical time for the next one.
    fn due(&self, releases: &VecDeque<Instant>, rhythm: Instant) -> Instant {
        let by_rhythm = rhythm.checked_sub(self.tolerance).unwrap_or(rhythm);
        let by_window = releases
            .len()
            .checked_sub(self.per)
            .map(|i| releases[i] + self.window);
        by_window.map_or(by_rhythm, |w| w.max(by_rhythm))
    }

    /// The most compressed `per` releases these rules allow, ending at `now`, each as late
    /// as it can be: any `k` consecutive releases span at least `k - 1` spacings less the
    /// tolerance (which can be caught up once).
    fn worst_burst(&self, now: Instant) -> VecDeque<Instant> {
        let mut at = Vec::with_capacity(self.per);
        let mut t = now;
        at.push(t);
        for k in 1..self.per {
            let step = if k == 1 {
                self.spacing - self.tolerance
            } else {
                self.spacing
            };
            t = t.checked_sub(step).unwrap_or(t);
            at.push(t);
        }
        at.into_iter().rev().collect()
    }
}

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

#[derive(Debug, Clone, Copy)]
struct Ban {
    /// When requests may go again (monotonic clock, what the gate checks).
    until: Instant,
    /// The same instant on the wall clock, for messages, `status` and the database.
    wall: DateTime<Utc>,
    /// How long this ban was set for (reported; the next one in a row doubles it).
    backoff: Duration,
}

#[derive(Debug)]
struct Gates {
    /// The last `max_rps` (or more) release instants, oldest first, that the pacing rules
    /// count from; at start-up, a stand-in for what a predecessor may just have sent.
    releases: VecDeque<Instant>,
    /// The rhythm's theoretical instant for the next release (GCRA).
    rhythm: Instant,
    /// The last [`DEPARTURES_KEPT`] release instants, oldest first (diagnostics, tests).
    departures: VecDeque<Instant>,
    paused_until: Option<Instant>,
    slow_until: Option<Instant>,
    banned: Option<Ban>,
    locked_out: Option<String>,
    /// How many 403s in a row; the ban back-off doubles with each.
    ban_level: u32,
    bans: u64,
    throttles: u64,
}

/// Counts a waiter out however its wait ends (released, banned, cancelled, dropped).
struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

pub struct Politeness {
    /// One waiter at a time, in arrival order (tokio's semaphore is fair): the holder alone
    /// sleeps until its departure, the others queue behind it. A crowd of waiters woken at once
    /// would race for the slot and delay the winner between its release and its send.
    turn: Semaphore,
    /// Requests waiting for their release right now, and whether the last one released had
    /// to wait for its turn (see [`Politeness::queueing`]).
    waiting: AtomicUsize,
    last_waited: AtomicBool,
    /// Wakes the waiter holding the turn when a gate changes (ban, lock-out, pause), so that it
    /// does not sleep through a ban that began while it waited.
    changed: Notify,
    /// Average time between two releases at full rate: `(1 s + margin) / max_rps`.
    spacing: Duration,
    /// The pacing at full rate, and at half rate after a 429.
    full: Pace,
    half: Pace,
    gates: Mutex<Gates>,
    ban_backoff: Duration,
    ban_backoff_max: Duration,
}

impl Politeness {
    /// `max_rps` requests per sliding second at most, each `(1 s + spacing_margin) / max_rps`
    /// after the previous one's release; 403s back off from `ban_backoff`, doubling up to
    /// `ban_backoff_max`.
    pub fn new(
        max_rps: u32,
        spacing_margin: Duration,
        ban_backoff: Duration,
        ban_backoff_max: Duration,
    ) -> Self {
        let window = Duration::from_secs(1) + spacing_margin;
        let spacing = window / max_rps.max(1);
        let full = Pace::new(max_rps, window);
        // Start as if a predecessor (crashed and restarted at once) had just sent `max_rps`
        // requests as fast as these rules allow, ending now: the first requests of this
        // process keep the window with them. (Two processes alive at once are another
        // matter: see the README.)
        let now = Instant::now();
        let releases = full.worst_burst(now);
        Politeness {
            turn: Semaphore::new(1),
            waiting: AtomicUsize::new(0),
            last_waited: AtomicBool::new(false),
            changed: Notify::new(),
            spacing,
            full,
            // Half the requests in the same window, so that no sliding second holds more
            // than half of the rate (a server stricter than configured stops answering 429).
            half: Pace::new((max_rps / 2).max(1), window),
            gates: Mutex::new(Gates {
                releases,
                // As if the last of those left now.
                rhythm: now + spacing,
                departures: VecDeque::with_capacity(DEPARTURES_KEPT),
                paused_until: None,
                slow_until: None,
                banned: None,
                locked_out: None,
                ban_level: 0,
                bans: 0,
                throttles: 0,
            }),
            ban_backoff,
            ban_backoff_max,
        }
    }

    /// The average spacing between two releases at full rate (twice that while slowed
    /// down); a release follows the one before by at least half of it.
    pub fn spacing(&self) -> Duration {
        self.spacing
    }

    fn gates(&self) -> std::sync::MutexGuard<'_, Gates> {
        self.gates.lock().expect("gates lock")
    }

    /// Waits until one request may be sent, and records that instant as its release. Fails at
    /// once while the account is banned or locked out, so that a ban stops traffic instead of
    /// parking workers for minutes.
    pub async fn acquire(&self, cancel: &CancellationToken) -> Result<(), GateError> {
        if cancel.is_cancelled() {
            return Err(GateError::Cancelled);
        }
        if let Some(err) = self.ban_error(&self.gates()) {
            return Err(err);
        }
        self.waiting.fetch_add(1, Ordering::Relaxed);
        let _waiting = Waiting(&self.waiting);
        let arrived = Instant::now();
        let _turn = tokio::select! {
            biased;
            _ = cancel.cancelled() => return Err(GateError::Cancelled),
            turn = self.turn.acquire() => turn.expect("the turn semaphore is never closed"),
        };
        loop {
            // Registered before the gates are read, so a change in between still wakes us.
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let wake_at = {
                let mut g = self.gates();
                // A ban or a pause may have started while this request waited for its turn.
                if let Some(err) = self.ban_error(&g) {
                    return Err(err);
                }
                let now = Instant::now();
                match g.paused_until.filter(|t| *t > now) {
                    Some(pause_end) => pause_end,
                    None => {
                        let pace = if g.slow_until.is_some_and(|t| t > now) {
                            self.half
                        } else {
                            self.full
                        };
                        let due = pace.due(&g.releases, g.rhythm);
                        if now >= due {
                            // The release: `now` was read after this waiter was woken, so a
                            // late wake-up counts from when it really left.
                            g.rhythm = g.rhythm.max(now) + pace.spacing;
                            g.releases.push_back(now);
                            while g.releases.len() > self.full.per {
                                g.releases.pop_front();
                            }
                            if g.departures.len() == DEPARTURES_KEPT {
                                g.departures.pop_front();
                            }
                            g.departures.push_back(now);
                            // Released later than it came: the rate set its pace.
                            let waited = now > arrived + Duration::from_millis(1);
                            self.last_waited.store(waited, Ordering::Relaxed);
                            return Ok(());
                        }
                        due
                    }
                }
            };
            tokio::select! {
                biased;
                _ = cancel.cancelled() => return Err(GateError::Cancelled),
                _ = &mut changed => {}
                _ = tokio::time::sleep_until(wake_at) => {}
            }
        }
    }

    /// Whether the rate, not the server's latency, sets the pace: a request waits for its
    /// release now, or the last one released had to wait. Then one more request in flight
    /// would not be answered sooner. (A waiter now alone misses a limit that is just met:
    /// between two releases nothing waits.)
    pub fn queueing(&self) -> bool {
        self.waiting.load(Ordering::Relaxed) > 0 || self.last_waited.load(Ordering::Relaxed)
    }

    fn ban_error(&self, g: &Gates) -> Option<GateError> {
        if let Some(reason) = &g.locked_out {
            return Some(GateError::LockedOut(reason.clone()));
        }
        match g.banned {
            Some(ban) if ban.until > Instant::now() => Some(GateError::Banned {
                until: ban.wall,
                backoff: ban.backoff,
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

    /// A 429: every worker waits `wait`, then the account runs at half rate (twice the
    /// spacing) for a minute.
    pub fn throttled(&self, wait: Duration) {
        {
            let mut g = self.gates();
            let until = Instant::now() + wait;
            g.paused_until = Some(g.paused_until.map_or(until, |t| t.max(until)));
            g.slow_until = Some(until + SLOW_DOWN_FOR);
            g.throttles += 1;
        }
        self.changed.notify_waiters();
    }

    /// A 403: all traffic stops for a back-off that doubles with each ban in a row.
    /// Returns the ban's end and length.
    pub fn banned(&self) -> (DateTime<Utc>, Duration) {
        let (wall, backoff) = {
            let mut g = self.gates();
            let backoff = self.ban_duration(g.ban_level);
            g.ban_level = g.ban_level.saturating_add(1);
            g.bans += 1;
            let wall =
                Utc::now() + chrono::Duration::from_std(backoff).unwrap_or(chrono::Duration::MAX);
            g.banned = Some(Ban {
                until: Instant::now() + backoff,
                wall,
                backoff,
            });
            (wall, backoff)
        };
        self.changed.notify_waiters();
        (wall, backoff)
    }

    /// A ban stored by an earlier process (`sync_state.blocked_until`): while it lasts,
    /// `acquire` fails at once and nothing is sent. A ban already over is ignored; a longer one
    /// in force is kept. The ban level is set so that a 403 right after it grows from its
    /// length rather than starting small again.
    pub fn restore_ban(&self, until: DateTime<Utc>) {
        let Ok(left) = (until - Utc::now()).to_std() else {
            return;
        };
        if left.is_zero() {
            return;
        }
        {
            let mut g = self.gates();
            let at = Instant::now() + left;
            if g.banned.is_some_and(|b| b.until >= at) {
                return;
            }
            let mut level = 0;
            while self.ban_duration(level) < left && self.ban_duration(level) < self.ban_backoff_max
            {
                level += 1;
            }
            g.ban_level = g.ban_level.max(level + 1);
            g.banned = Some(Ban {
                until: at,
                wall: until,
                backoff: self.ban_duration(level),
            });
        }
        self.changed.notify_waiters();
    }

    /// The credentials were refused for good: stop all traffic until the process restarts
    /// (after a human fixed them).
    pub fn lock_out(&self, reason: &str) {
        self.gates().locked_out = Some(reason.to_string());
        self.changed.notify_waiters();
    }

    /// Any answer other than 403 shows the block is over: the next ban starts small again.
    pub fn answered(&self) {
        self.gates().ban_level = 0;
    }

    /// Diagnostic: the instants at which the last 64 requests were released, oldest first.
    /// Tests check the spacing with it; nothing in the daemon depends on it.
    pub fn recent_departures(&self) -> Vec<Instant> {
        self.gates().departures.iter().copied().collect()
    }

    pub fn snapshot(&self) -> PolitenessSnapshot {
        let g = self.gates();
        let now = Instant::now();
        PolitenessSnapshot {
            banned_until: g.banned.filter(|b| b.until > now).map(|b| b.wall),
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
    //! Real time: the crate does not enable tokio's `test-util`, so `time::pause()` is not
    //! available. Every assertion on spacing reads the instants the pacer itself recorded, and
    //! those are at least one spacing apart by construction, however loaded the machine; the
    //! one upper bound is loose. "At once" is checked with `now_or_never` (done at the first
    //! poll), not with a stopwatch.

    use std::sync::Arc;

    use futures::FutureExt;

    use super::*;

    const MARGIN: Duration = Duration::from_millis(50);
    /// (1 s + 50 ms) / 7.
    const SPACING: Duration = Duration::from_millis(150);

    fn politeness() -> Politeness {
        Politeness::new(7, MARGIN, Duration::from_secs(60), Duration::from_secs(600))
    }

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

    fn gaps(sent: &[Instant]) -> Vec<Duration> {
        sent.windows(2).map(|w| w[1] - w[0]).collect()
    }

    /// Every 8 consecutive releases span at least 1 s + margin.
    fn assert_every_eight_span_the_window(sent: &[Instant]) {
        for w in sent.windows(8) {
            let span = w[7] - w[0];
            assert!(
                span >= Duration::from_secs(1) + MARGIN,
                "8 releases in {span:?}"
            );
        }
    }

    /// Waits (yielding, not sleeping) until some task holds the turn.
    async fn until_someone_waits(p: &Politeness) {
        while p.turn.available_permits() > 0 {
            tokio::task::yield_now().await;
        }
    }

    #[test]
    fn spacing_is_one_second_and_the_margin_over_the_rate() {
        assert_eq!(politeness().spacing(), SPACING);
        let p = Politeness::new(4, Duration::ZERO, Duration::ZERO, Duration::ZERO);
        assert_eq!(p.spacing(), Duration::from_millis(250));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn any_eight_releases_span_the_window_and_none_bunch_up() {
        let p = Arc::new(politeness());
        let cancel = CancellationToken::new();
        let mut tasks = Vec::new();
        for _ in 0..4 {
            let (p, c) = (p.clone(), cancel.clone());
            tasks.push(tokio::spawn(async move {
                for _ in 0..6 {
                    p.acquire(&c).await.unwrap();
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let sent = p.recent_departures();
        assert_eq!(sent.len(), 24);
        assert!(
            gaps(&sent).iter().all(|g| *g >= SPACING / 2),
            "{:?}",
            gaps(&sent)
        );
        assert!(
            max_in_any_second(&sent) <= 7,
            "{}",
            max_in_any_second(&sent)
        );
        assert_every_eight_span_the_window(&sent);
        // And the rate is kept: 7 in every 1.05 s (loose: this machine may be busy).
        let span = sent[23] - sent[2];
        assert!(span < SPACING * 21 + Duration::from_millis(500), "{span:?}");
    }

    /// The failure seen on a loaded machine: a waiter wakes 53 ms after its slot because its
    /// thread was busy. Its release counts from when it really woke: the window of eight
    /// holds with it, and the requests after it catch up as far as the window allows
    /// instead of all moving back (which a fixed spacing would do, losing the time for good).
    #[tokio::test]
    async fn a_waiter_woken_late_keeps_the_window_and_its_successors_catch_up() {
        let p = Arc::new(politeness());
        let cancel = CancellationToken::new();
        // Past the start-up burst, in the steady rhythm of one spacing.
        let late = 12;
        let (released, mut seen) = tokio::sync::mpsc::unbounded_channel();
        let worker = {
            let (p, c) = (p.clone(), cancel.clone());
            tokio::spawn(async move {
                for i in 0..20 {
                    p.acquire(&c).await.unwrap();
                    released.send(i).unwrap();
                }
            })
        };
        // This test runs on one thread: once release `late - 1` is out and the worker sleeps
        // until its next slot, blocking the thread past that slot makes it wake late.
        while seen.recv().await != Some(late - 1) {}
        until_someone_waits(&p).await;
        std::thread::sleep(SPACING + Duration::from_millis(53));
        worker.await.unwrap();

        let sent = p.recent_departures();
        let gaps = gaps(&sent);
        assert!(gaps.iter().all(|g| *g >= SPACING / 2), "{gaps:?}");
        assert!(
            gaps[late - 1] >= SPACING + Duration::from_millis(53),
            "release {late} was late: {gaps:?}"
        );
        assert!(
            gaps[late] < SPACING,
            "the next one caught up instead of waiting a whole spacing: {gaps:?}"
        );
        assert_every_eight_span_the_window(&sent);
    }

    /// The same from the caller's side: a caller that comes back late (its task was busy
    /// between two requests) is released at once, and the window still holds after it.
    #[tokio::test]
    async fn a_late_caller_is_released_at_once_and_the_window_holds() {
        let p = politeness();
        let cancel = CancellationToken::new();
        for i in 0..16 {
            if i == 10 {
                tokio::time::sleep(SPACING + Duration::from_millis(60)).await;
            }
            p.acquire(&cancel).await.unwrap();
        }
        let sent = p.recent_departures();
        let gaps = gaps(&sent);
        assert!(gaps.iter().all(|g| *g >= SPACING / 2), "{gaps:?}");
        assert!(gaps[9] >= SPACING + Duration::from_millis(60), "{gaps:?}");
        assert_every_eight_span_the_window(&sent);
    }

    /// Requests that wait for their release show as a queue, and so does a rate just met
    /// (the last release had to wait); a request released at once shows none: the engine
    /// splits windows only then.
    #[tokio::test]
    async fn the_queue_shows_while_the_rate_sets_the_pace() {
        let p = std::sync::Arc::new(politeness());
        let cancel = CancellationToken::new();
        assert!(!p.queueing());
        // The first requests of a process keep the window with a worst-case predecessor:
        // these wait.
        let waiters: Vec<_> = (0..3)
            .map(|_| {
                let (p, cancel) = (p.clone(), cancel.clone());
                tokio::spawn(async move { p.acquire(&cancel).await })
            })
            .collect();
        tokio::task::yield_now().await;
        assert!(p.queueing(), "three requests wait for the rate");
        for w in waiters {
            w.await.unwrap().unwrap();
        }
        assert!(p.queueing(), "the last release waited for its turn");
        // Long after: released at once, nothing queues.
        tokio::time::sleep(Duration::from_millis(1_200)).await;
        p.acquire(&cancel).await.unwrap();
        assert!(!p.queueing(), "a request released at once");
        // A waiter that gives up (cancelled) leaves the queue too.
        let stop = CancellationToken::new();
        let gives_up = {
            let (p, stop) = (p.clone(), stop.clone());
            tokio::spawn(async move { p.acquire(&stop).await })
        };
        tokio::task::yield_now().await;
        assert!(p.queueing());
        stop.cancel();
        assert!(gives_up.await.unwrap().is_err());
        assert!(!p.queueing());
    }

    #[tokio::test]
    async fn a_throttle_pauses_every_worker_then_halves_the_rate() {
        let p = Arc::new(politeness());
        let cancel = CancellationToken::new();
        p.acquire(&cancel).await.unwrap();
        let before = Instant::now();
        p.throttled(Duration::from_millis(300));
        let snapshot = p.snapshot();
        assert!(snapshot.slowed_down && snapshot.paused_for.is_some() && snapshot.throttles == 1);
        let tasks: Vec<_> = (0..3)
            .map(|_| {
                let (p, c) = (p.clone(), cancel.clone());
                tokio::spawn(async move { p.acquire(&c).await.unwrap() })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        let sent = p.recent_departures();
        assert_eq!(sent.len(), 4);
        assert!(
            sent[1..]
                .iter()
                .all(|t| *t - before >= Duration::from_millis(300)),
            "every worker waited for the pause"
        );
        assert!(
            gaps(&sent[1..]).iter().all(|g| *g >= SPACING),
            "half rate after the pause (half of twice the spacing at least): {:?}",
            gaps(&sent[1..])
        );
        assert!(p.snapshot().slowed_down, "for a minute");
    }

    #[tokio::test]
    async fn a_restored_ban_refuses_at_once_and_reports_its_end() {
        let p = politeness();
        let cancel = CancellationToken::new();
        let until = Utc::now() + chrono::Duration::seconds(100);
        p.restore_ban(until);
        match p.acquire(&cancel).now_or_never() {
            Some(Err(GateError::Banned { until: u, backoff })) => {
                assert_eq!(u, until);
                assert_eq!(
                    backoff,
                    Duration::from_secs(120),
                    "the back-off level that covers 100 s"
                );
            }
            other => panic!("refused at once, got {other:?}"),
        }
        assert!(p.recent_departures().is_empty(), "nothing was released");
        assert_eq!(p.snapshot().banned_until, Some(until));

        // A ban already over changes nothing; a shorter one does not cut a longer one short.
        p.restore_ban(Utc::now() - chrono::Duration::seconds(5));
        p.restore_ban(Utc::now() + chrono::Duration::seconds(10));
        assert_eq!(p.snapshot().banned_until, Some(until));

        // A 403 right after it grows from its length.
        let (_, next) = p.banned();
        assert_eq!(next, Duration::from_secs(240));

        // A restored ban ends when it says.
        let p = politeness();
        p.restore_ban(Utc::now() + chrono::Duration::milliseconds(200));
        assert!(matches!(
            p.acquire(&cancel).now_or_never(),
            Some(Err(GateError::Banned { .. }))
        ));
        tokio::time::sleep(Duration::from_millis(250)).await;
        assert_eq!(p.snapshot().banned_until, None);
        p.acquire(&cancel).await.unwrap();
    }

    #[tokio::test]
    async fn a_ban_refuses_at_once_and_grows() {
        let p = Politeness::new(7, MARGIN, Duration::from_secs(60), Duration::from_secs(150));
        let cancel = CancellationToken::new();
        let (_, first) = p.banned();
        assert_eq!(first, Duration::from_secs(60));
        assert!(matches!(
            p.acquire(&cancel).now_or_never(),
            Some(Err(GateError::Banned { .. }))
        ));
        let (_, second) = p.banned();
        assert_eq!(second, Duration::from_secs(120));
        let (_, third) = p.banned();
        assert_eq!(third, Duration::from_secs(150), "capped at the maximum");
        assert!(p.snapshot().banned_until.is_some());
    }

    /// A waiter parked on a long 429 pause learns of a ban at once, not after the pause.
    #[tokio::test]
    async fn a_ban_wakes_the_waiter_at_once() {
        let p = Arc::new(politeness());
        let cancel = CancellationToken::new();
        p.throttled(Duration::from_secs(300));
        let waiter = {
            let (p, c) = (p.clone(), cancel.clone());
            tokio::spawn(async move { p.acquire(&c).await })
        };
        until_someone_waits(&p).await;
        p.banned();
        let got = tokio::time::timeout(Duration::from_secs(10), waiter)
            .await
            .expect("woken by the ban, not by the end of the pause")
            .unwrap();
        assert!(matches!(got, Err(GateError::Banned { .. })), "{got:?}");
    }

    #[tokio::test]
    async fn shutdown_ends_every_wait_at_once() {
        let p = Arc::new(politeness());
        let cancel = CancellationToken::new();
        p.throttled(Duration::from_secs(300));
        let waiters: Vec<_> = (0..2)
            .map(|_| {
                let (p, c) = (p.clone(), cancel.clone());
                tokio::spawn(async move { p.acquire(&c).await })
            })
            .collect();
        until_someone_waits(&p).await;
        cancel.cancel();
        for w in waiters {
            let got = tokio::time::timeout(Duration::from_secs(10), w)
                .await
                .expect("ended by the shutdown")
                .unwrap();
            assert_eq!(got, Err(GateError::Cancelled));
        }
        assert_eq!(
            p.acquire(&cancel).now_or_never(),
            Some(Err(GateError::Cancelled))
        );
        assert!(p.recent_departures().is_empty());
    }

    /// Waiters are served one at a time in the order they came: three workers that each come
    /// back for more take turns.
    #[tokio::test]
    async fn waiters_take_turns_in_arrival_order() {
        let p = Arc::new(politeness());
        let cancel = CancellationToken::new();
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for id in 0..3 {
            let (p, c, o) = (p.clone(), cancel.clone(), order.clone());
            tasks.push(tokio::spawn(async move {
                for _ in 0..3 {
                    p.acquire(&c).await.unwrap();
                    o.lock().unwrap().push(id);
                }
            }));
            // One thread: the task runs (and queues) before the next one is spawned.
            tokio::task::yield_now().await;
        }
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(*order.lock().unwrap(), [0, 1, 2].repeat(3));
        assert!(gaps(&p.recent_departures())
            .iter()
            .all(|g| *g >= SPACING / 2));
        assert_every_eight_span_the_window(&p.recent_departures());
    }

    #[tokio::test]
    async fn a_restarted_process_continues_the_rhythm_of_the_one_before() {
        let cancel = CancellationToken::new();
        let mut sent = Vec::new();
        for _process in 0..3 {
            // Each "process" sends at full rate and dies; the next starts at once.
            let p = politeness();
            for _ in 0..6 {
                p.acquire(&cancel).await.unwrap();
            }
            sent.extend(p.recent_departures());
        }
        assert_eq!(sent.len(), 18);
        assert!(
            max_in_any_second(&sent) <= 7,
            "{}",
            max_in_any_second(&sent)
        );
        assert!(
            gaps(&sent).iter().all(|g| *g >= SPACING / 2),
            "every gap, across restarts too, is at least half a spacing: {:?}",
            gaps(&sent)
        );
        // Each process starts as if the one before had just sent its fastest burst.
        assert_every_eight_span_the_window(&sent);
    }

    /// Whatever the lateness, seven consecutive releases never fall within less than five
    /// and a half spacings: the bound a restarted process relies on for its predecessor's.
    #[tokio::test]
    async fn seven_releases_span_five_spacings_whatever_the_lateness() {
        let p = politeness();
        let cancel = CancellationToken::new();
        let pauses = [
            0u64, 200, 0, 0, 90, 0, 310, 0, 0, 0, 40, 0, 0, 170, 0, 0, 0, 0, 260, 0,
        ];
        for ms in pauses.iter().chain(pauses.iter()) {
            tokio::time::sleep(Duration::from_millis(*ms)).await;
            p.acquire(&cancel).await.unwrap();
        }
        let sent = p.recent_departures();
        for w in sent.windows(7) {
            assert!(
                w[6] - w[0] >= SPACING * 6 - SPACING / 2,
                "{:?}",
                w[6] - w[0]
            );
        }
        assert_every_eight_span_the_window(&sent);
    }

    /// A process that starts right after a predecessor's fastest burst keeps the window
    /// with it: its first request waits until the oldest of those would be a window old.
    #[tokio::test]
    async fn a_new_process_waits_out_the_window_its_predecessor_may_have_filled() {
        let cancel = CancellationToken::new();
        let start = Instant::now();
        let p = politeness();
        p.acquire(&cancel).await.unwrap();
        let waited = p.recent_departures()[0] - start;
        // Seven releases span at least six spacings less the tolerance: the oldest of a
        // predecessor's is 825 ms old at most.
        let oldest = SPACING * 6 - SPACING / 2;
        assert!(
            waited >= Duration::from_secs(1) + MARGIN - oldest,
            "{waited:?}"
        );
        assert!(waited < Duration::from_millis(400), "{waited:?}");
    }
}
