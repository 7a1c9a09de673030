//! Prometheus metrics: one registry per process, passed to whoever records (no globals).
//! Labels are low-cardinality on purpose: endpoint paths and streams, never ids.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub endpoint: String,
    /// HTTP status, or "error" when no answer came (timeout, connection refused).
    pub status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StreamLabels {
    pub stream: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabels {
    pub stream: String,
    pub state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BuildLabels {
    pub version: String,
}

/// The states a stream can be in, as `sync_state.state` and `status` name them.
pub const STATES: [&str; 4] = ["ok", "backing_off", "banned", "locked_out"];

fn run_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.25, 2.0, 14))
}

pub struct Metrics {
    registry: Registry,
    pub requests: Family<RequestLabels, Counter>,
    pub throttle_waits: Counter,
    pub throttle_wait_seconds: Counter<f64, AtomicU64>,
    pub too_many_requests: Counter,
    pub bans: Counter,
    pub rows_written: Family<StreamLabels, Counter>,
    pub runs_failed: Family<StreamLabels, Counter>,
    pub last_success: Family<StreamLabels, Gauge<f64, AtomicU64>>,
    pub lag_seconds: Family<StreamLabels, Gauge>,
    pub run_seconds: Family<StreamLabels, Histogram, fn() -> Histogram>,
    /// 1 for the state each stream is in, 0 for the others (read from the database at
    /// every scrape, as `status` shows it).
    pub stream_state: Family<StateLabels, Gauge>,
    /// Now minus the time up to which the stream is proven stored (updated at every scrape,
    /// so that it grows while runs fail or do not happen).
    pub freshness_seconds: Family<StreamLabels, Gauge>,
    pub build_info: Family<BuildLabels, Gauge>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("kommo_sync");
        let m = Metrics {
            requests: Family::default(),
            throttle_waits: Counter::default(),
            throttle_wait_seconds: Counter::default(),
            too_many_requests: Counter::default(),
            bans: Counter::default(),
            rows_written: Family::default(),
            runs_failed: Family::default(),
            last_success: Family::default(),
            lag_seconds: Family::default(),
            run_seconds: Family::new_with_constructor(run_histogram),
            stream_state: Family::default(),
            freshness_seconds: Family::default(),
            build_info: Family::default(),
            registry: Registry::default(),
        };
        registry.register(
            "api_requests",
            "Requests to the Kommo API by endpoint and answer",
            m.requests.clone(),
        );
        registry.register(
            "throttle_waits",
            "Requests that waited for the rate limiter or a 429 pause",
            m.throttle_waits.clone(),
        );
        registry.register(
            "throttle_wait_seconds",
            "Time requests spent waiting for the rate limiter or a 429 pause",
            m.throttle_wait_seconds.clone(),
        );
        registry.register(
            "api_throttled",
            "429 Too Many Requests answers",
            m.too_many_requests.clone(),
        );
        registry.register(
            "api_bans",
            "403 answers (IP blocked by Kommo)",
            m.bans.clone(),
        );
        registry.register(
            "rows_written",
            "Entity rows inserted or changed, per stream",
            m.rows_written.clone(),
        );
        registry.register(
            "runs_failed",
            "Runs that ended with an error, per stream",
            m.runs_failed.clone(),
        );
        registry.register(
            "last_success_timestamp_seconds",
            "When the stream's last successful run ended (unix seconds)",
            m.last_success.clone(),
        );
        registry.register(
            "lag_seconds",
            "How far the mirror is behind the server's clock at the end of the last run, per stream",
            m.lag_seconds.clone(),
        );
        registry.register(
            "run_duration_seconds",
            "Duration of runs, per stream",
            m.run_seconds.clone(),
        );
        registry.register(
            "stream_state",
            "1 for the state each stream is in (ok, backing_off, banned, locked_out), 0 for the others",
            m.stream_state.clone(),
        );
        registry.register(
            "freshness_seconds",
            "Now minus the time up to which the stream is proven stored (server time), at scrape",
            m.freshness_seconds.clone(),
        );
        registry.register(
            "build_info",
            "The running build: its version as a label, value 1",
            m.build_info.clone(),
        );
        m.build_info
            .get_or_create(&BuildLabels {
                version: env!("CARGO_PKG_VERSION").to_string(),
            })
            .set(1);
        Metrics { registry, ..m }
    }

    pub fn request(&self, endpoint: &str, status: Option<u16>) {
        let status = status.map_or_else(|| "error".to_string(), |s| s.to_string());
        self.requests
            .get_or_create(&RequestLabels {
                endpoint: endpoint.to_string(),
                status,
            })
            .inc();
    }

    /// Creates every per-stream counter at 0, so that the first scrape shows each series
    /// (an absent `runs_failed_total` reads as "no data", not as "no failure"; `increase()`
    /// over a series that appears at 1 misses the first failure).
    pub fn declare_streams<'a>(&self, streams: impl IntoIterator<Item = &'a str>) {
        for s in streams {
            let labels = Self::stream(s);
            self.rows_written.get_or_create(&labels).inc_by(0);
            self.runs_failed.get_or_create(&labels).inc_by(0);
        }
    }

    /// Sets the one-hot state gauge of `stream`.
    pub fn set_state(&self, stream: &str, state: &str) {
        for s in STATES {
            self.stream_state
                .get_or_create(&StateLabels {
                    stream: stream.to_string(),
                    state: s.to_string(),
                })
                .set(i64::from(s == state));
        }
    }

    pub fn stream(stream: &str) -> StreamLabels {
        StreamLabels {
            stream: stream.to_string(),
        }
    }

    /// The Prometheus text format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_state_gauge_is_one_hot_and_the_build_is_named() {
        let m = Metrics::new();
        m.set_state("leads", "backing_off");
        m.set_state("leads", "banned");
        let text = m.render();
        for line in [
            "kommo_sync_stream_state{stream=\"leads\",state=\"banned\"} 1",
            "kommo_sync_stream_state{stream=\"leads\",state=\"backing_off\"} 0",
            "kommo_sync_stream_state{stream=\"leads\",state=\"ok\"} 0",
            "kommo_sync_build_info{version=",
        ] {
            assert!(text.contains(line), "{line} missing from:\n{text}");
        }
    }

    /// The alert rules shipped in `deploy/` name only series this registry exports.
    #[test]
    fn the_shipped_alert_rules_use_only_exported_metrics() {
        let rules = include_str!("../deploy/prometheus/kommo-sync-alerts.yml");
        let m = Metrics::new();
        m.declare_streams(["leads"]);
        m.set_state("leads", "ok");
        m.freshness_seconds
            .get_or_create(&Metrics::stream("leads"))
            .set(1);
        m.request("/api/v4/leads", Some(200));
        let text = m.render();
        let mut named = 0;
        for word in rules.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
            if word.starts_with("kommo_sync_") {
                named += 1;
                assert!(
                    text.lines().any(|l| l.starts_with(&format!("{word}{{"))
                        || l.starts_with(&format!("{word} "))),
                    "{word} is not exported:\n{text}"
                );
            }
        }
        assert!(named >= 5, "{named}");
    }

    /// Every stream's counters exist from the first scrape, at 0.
    #[test]
    fn declared_streams_show_zero_counters_before_anything_happens() {
        let m = Metrics::new();
        m.declare_streams(["leads", "tasks"]);
        let text = m.render();
        for line in [
            "kommo_sync_runs_failed_total{stream=\"leads\"} 0",
            "kommo_sync_runs_failed_total{stream=\"tasks\"} 0",
            "kommo_sync_rows_written_total{stream=\"leads\"} 0",
        ] {
            assert!(text.contains(line), "{line} missing from:\n{text}");
        }
    }
}
