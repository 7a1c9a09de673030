//! What the simulator served, so tests and benchmarks can assert on a client's politeness.

use std::collections::{BTreeMap, HashSet};

use serde::Serialize;

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
    /// 403 responses (bans).
    pub forbidden: u64,
    /// GET requests that got data (200/204) for a (path, sorted query, If-Modified-Since)
    /// already served since the last reset.
    pub repeated_queries: u64,
    /// Requests by URL path.
    pub requests_by_path: BTreeMap<String, u64>,
    /// Calls to `POST /oauth2/access_token`.
    pub token_requests: u64,
    /// Refresh attempts with a revoked (already used) or unknown refresh token.
    pub refresh_token_reuses: u64,
    /// Entities returned in list pages (a benchmark's "rows served").
    pub items_served: u64,
    /// Requests answered with an injected fault.
    pub faults_served: u64,
}

/// Counters plus the memory needed to spot repeated queries.
#[derive(Debug, Default)]
pub struct CounterState {
    pub c: Counters,
    seen_queries: HashSet<String>,
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

    /// Remembers a served query; counts it if it was served before.
    pub fn served_query(&mut self, key: String) {
        if !self.seen_queries.insert(key) {
            self.c.repeated_queries += 1;
        }
    }

    /// Back to zero, forgetting served queries.
    pub fn reset(&mut self) {
        *self = CounterState::default();
    }
}
