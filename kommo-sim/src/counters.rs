//! What the simulator served, so tests and benchmarks can assert on a client's politeness.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use serde::Serialize;

/// Two identical queries closer than this (real time) count as a repeat: a client re-reading the
/// same page at once wastes the rate budget, while a poll of the same window a few minutes later
/// is normal.
pub const REPEAT_WINDOW: Duration = Duration::from_secs(60);

/// Most examples of repeated queries kept for failure messages.
pub const MAX_REPEAT_EXAMPLES: usize = 20;

/// Totals since the last reset. Only /api/v4 and /oauth2 requests count; /_sim never does.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Counters {
    /// Every counted request, rejected ones included.
    pub requests: u64,
    /// Responses by HTTP status.
    pub by_status: BTreeMap<u16, u64>,
    /// Largest number of requests seen in any trailing 1 s window (rejected ones included).
    pub max_in_sliding_second: u32,
    /// 429 responses (rate limit, and injected 429 faults).
    pub too_many_requests: u64,
    /// 403 responses of bans (injected 403s count in `faults_403_served` instead).
    pub forbidden: u64,
    /// GET requests that got data (200/204) for a (path, sorted query, If-Modified-Since)
    /// already served within the last 60 s of real time.
    pub repeated_queries: u64,
    /// Like `repeated_queries`, but for a key served at any time since the last reset.
    pub repeated_queries_ever: u64,
    /// Up to 20 distinct keys counted in `repeated_queries`, first seen first.
    pub repeated_query_examples: Vec<String>,
    /// Requests by URL path.
    pub requests_by_path: BTreeMap<String, u64>,
    /// Calls to `POST /oauth2/access_token`.
    pub token_requests: u64,
    /// Refresh attempts with a revoked (already used) or unknown refresh token.
    pub refresh_token_reuses: u64,
    /// Entities returned in list pages (a benchmark's "rows served").
    pub items_served: u64,
    /// Requests answered with an injected fault (queued or drawn by the mix).
    pub faults_served: u64,
    /// Injected faults by kind name ("500", "timeout", "reset", ...; see `Fault::kind`).
    pub faults_by_kind: BTreeMap<String, u64>,
    /// Injected 403 answers (`html_403`, or a "403" status fault): a proxy's hiccup, not a ban.
    pub faults_403_served: u64,
    /// List items edited between their page's selection and its rendering (racing edits).
    pub raced_items: u64,
}

/// Counters plus the memory needed to spot repeated queries.
#[derive(Debug, Default)]
pub struct CounterState {
    pub c: Counters,
    /// Every key served since the reset (for `repeated_queries_ever`).
    seen_queries: HashSet<String>,
    /// Key → when it was last served, for keys served within [`REPEAT_WINDOW`].
    recent: HashMap<String, Instant>,
    /// (served at, key) in serving order; pruned from the front so `recent` stays bounded by
    /// the requests of the last minute.
    recent_order: VecDeque<(Instant, String)>,
}

impl CounterState {
    /// Counts an arriving request.
    pub fn arrival(&mut self, path: &str) {
        self.c.requests += 1;
        *self.c.requests_by_path.entry(path.to_string()).or_default() += 1;
    }

    /// Raises the sliding-window maximum.
    pub fn window(&mut self, in_window: u32) {
        self.c.max_in_sliding_second = self.c.max_in_sliding_second.max(in_window);
    }

    /// Counts a response status.
    pub fn status(&mut self, status: u16) {
        *self.c.by_status.entry(status).or_default() += 1;
        match status {
            429 => self.c.too_many_requests += 1,
            403 => self.c.forbidden += 1,
            _ => {}
        }
    }

    /// Counts an injected fault of kind `kind` (its status comes later).
    pub fn fault(&mut self, kind: &str) {
        self.c.faults_served += 1;
        *self.c.faults_by_kind.entry(kind.to_string()).or_default() += 1;
    }

    /// Counts the status of an injected fault's response: like [`CounterState::status`], except
    /// that a 403 is not a ban.
    pub fn injected_status(&mut self, status: u16) {
        *self.c.by_status.entry(status).or_default() += 1;
        match status {
            429 => self.c.too_many_requests += 1,
            403 => self.c.faults_403_served += 1,
            _ => {}
        }
    }

    /// Remembers a query served at `at`; counts it if it was served before (within the window,
    /// and ever).
    pub fn served_query(&mut self, key: String, at: Instant) {
        self.prune(at);
        if let Some(&last) = self.recent.get(&key) {
            if at.saturating_duration_since(last) < REPEAT_WINDOW {
                self.c.repeated_queries += 1;
                let ex = &mut self.c.repeated_query_examples;
                if ex.len() < MAX_REPEAT_EXAMPLES && !ex.contains(&key) {
                    ex.push(key.clone());
                }
            }
        }
        if !self.seen_queries.contains(&key) {
            self.seen_queries.insert(key.clone());
        } else {
            self.c.repeated_queries_ever += 1;
        }
        self.recent.insert(key.clone(), at);
        self.recent_order.push_back((at, key));
    }

    /// Forgets keys last served more than [`REPEAT_WINDOW`] before `at`.
    fn prune(&mut self, at: Instant) {
        while let Some((t, _)) = self.recent_order.front() {
            if at.saturating_duration_since(*t) < REPEAT_WINDOW {
                break;
            }
            let (t, key) = self.recent_order.pop_front().expect("front exists");
            if self.recent.get(&key) == Some(&t) {
                self.recent.remove(&key);
            }
        }
    }

    /// Keys remembered for the 60 s window (for tests of the pruning).
    pub fn recent_len(&self) -> usize {
        self.recent.len()
    }

    /// Back to zero, forgetting served queries.
    pub fn reset(&mut self) {
        *self = CounterState::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeats_count_within_60_s_and_ever() {
        let mut s = CounterState::default();
        let t0 = Instant::now();
        s.served_query("a".into(), t0);
        s.served_query("a".into(), t0 + Duration::from_secs(59));
        assert_eq!((s.c.repeated_queries, s.c.repeated_queries_ever), (1, 1));
        // 59 s after the last serving: still a repeat (the window follows the last one).
        s.served_query("a".into(), t0 + Duration::from_secs(118));
        assert_eq!((s.c.repeated_queries, s.c.repeated_queries_ever), (2, 2));
        // More than 60 s later: a repeat ever, not within the window.
        s.served_query("a".into(), t0 + Duration::from_secs(200));
        assert_eq!((s.c.repeated_queries, s.c.repeated_queries_ever), (2, 3));
        s.served_query("b".into(), t0 + Duration::from_secs(201));
        assert_eq!(s.c.repeated_query_examples, vec!["a".to_string()]);
        // Old keys are pruned.
        s.served_query("c".into(), t0 + Duration::from_secs(400));
        assert_eq!(s.recent_len(), 1);
        s.reset();
        assert_eq!(s.c, Counters::default());
        assert_eq!(s.recent_len(), 0);
    }

    #[test]
    fn examples_are_distinct_and_bounded() {
        let mut s = CounterState::default();
        let t0 = Instant::now();
        for round in 0..3 {
            for k in 0..30 {
                s.served_query(format!("k{k}"), t0 + Duration::from_millis(round * 10 + k));
            }
        }
        assert_eq!(s.c.repeated_queries, 60);
        assert_eq!(s.c.repeated_query_examples.len(), MAX_REPEAT_EXAMPLES);
        assert_eq!(s.c.repeated_query_examples[0], "k0");
    }
}
