//! The side server as an operator or Prometheus sees it.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use sqlx::{Connection, Executor};
use tokio_util::sync::CancellationToken;

use crate::helpers::*;

async fn serve(t: &TestApp) -> (String, CancellationToken) {
    let cancel = CancellationToken::new();
    let (addr, _) = kommo_sync::server::start(
        "127.0.0.1:0".parse().unwrap(),
        t.app.health(),
        cancel.clone(),
    )
    .await
    .unwrap();
    (format!("http://{addr}"), cancel)
}

async fn get(url: &str) -> (u16, String) {
    let r = reqwest::get(url).await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

/// Parses the Prometheus text format strictly enough to catch a malformed line:
/// `name{labels} value` samples, `# HELP/TYPE/UNIT/EOF` comments.
fn parse_metrics(text: &str) -> BTreeMap<String, f64> {
    let mut samples = BTreeMap::new();
    for line in text.lines().filter(|l| !l.is_empty()) {
        if let Some(comment) = line.strip_prefix("# ") {
            assert!(
                ["HELP ", "TYPE ", "UNIT ", "EOF"]
                    .iter()
                    .any(|p| comment.starts_with(p)),
                "bad comment line: {line}"
            );
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("bad sample line: {line}"));
        let name_end = series.find('{').unwrap_or(series.len());
        let name = &series[..name_end];
        assert!(
            name.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "bad name: {line}"
        );
        if name_end < series.len() {
            assert!(series.ends_with('}'), "bad labels: {line}");
        }
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value: {line}"));
        samples.insert(series.to_string(), value);
    }
    assert!(
        text.trim_end().ends_with("# EOF"),
        "OpenMetrics text ends with # EOF"
    );
    samples
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_parse_and_match_what_the_simulator_counted() {
    let t = spawn_entities(small_account(), &[]).await;
    let (base, cancel) = serve(&t).await;
    let reports = t.sync().await;
    let (status, text) = get(&format!("{base}/metrics")).await;
    assert_eq!(status, 200);
    let samples = parse_metrics(&text);

    let requests: f64 = samples
        .iter()
        .filter(|(k, _)| k.starts_with("kommo_sync_api_requests_total{"))
        .map(|(_, v)| v)
        .sum();
    assert_eq!(requests as u64, t.sim.sim().counters().requests, "{text}");
    for r in &reports {
        let key = format!("kommo_sync_rows_written_total{{stream=\"{}\"}}", r.stream);
        assert_eq!(
            samples.get(&key).copied(),
            Some(r.counts.rows_written as f64),
            "{key} in {text}"
        );
        let success = format!(
            "kommo_sync_last_success_timestamp_seconds{{stream=\"{}\"}}",
            r.stream
        );
        assert!(samples.get(&success).is_some_and(|v| *v > 1e9), "{success}");
        let lag = format!("kommo_sync_lag_seconds{{stream=\"{}\"}}", r.stream);
        if !ENTITIES.iter().any(|e| e.as_str() == r.stream) {
            // Reference lists are read whole: they have no lag behind a cursor.
            assert!(!samples.contains_key(&lag), "{lag}");
            continue;
        }
        assert!(
            samples.get(&lag).is_some_and(|v| *v >= 2.0),
            "{lag}: the lag is at least sync.lag_secs"
        );
        let state = |s: &str| {
            samples
                .get(&format!(
                    "kommo_sync_stream_state{{stream=\"{}\",state=\"{s}\"}}",
                    r.stream
                ))
                .copied()
        };
        assert_eq!(
            (state("ok"), state("banned")),
            (Some(1.0), Some(0.0)),
            "{text}"
        );
        let fresh = format!("kommo_sync_freshness_seconds{{stream=\"{}\"}}", r.stream);
        assert!(
            samples
                .get(&fresh)
                .is_some_and(|v| *v >= 2.0 && *v < 3600.0),
            "{fresh}: now minus what is proven stored"
        );
    }
    assert!(
        samples
            .keys()
            .any(|k| k.starts_with("kommo_sync_build_info{version=")),
        "{text}"
    );
    assert_eq!(samples.get("kommo_sync_api_throttled_total"), Some(&0.0));
    cancel.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_turns_unready_when_the_simulator_bans() {
    let t = spawn_entities(small_account(), &[]).await;
    let (base, cancel) = serve(&t).await;
    assert_eq!(get(&format!("{base}/healthz")).await.0, 200);
    let (status, body) = get(&format!("{base}/readyz")).await;
    assert_eq!(status, 503, "not ready before the schedule runs: {body}");
    t.app.scheduled.store(true, Ordering::Relaxed);
    assert_eq!(get(&format!("{base}/readyz")).await.0, 200);

    t.sim.sim().ban_for(Duration::from_secs(60));
    assert!(t.app.sync_once(&[], false).await.is_err());
    let (status, body) = get(&format!("{base}/readyz")).await;
    assert_eq!(status, 503);
    assert!(body.contains("banned"), "{body}");
    let (_, text) = get(&format!("{base}/metrics")).await;
    assert!(
        text.contains("kommo_sync_stream_state{stream=\"leads\",state=\"banned\"} 1"),
        "{text}"
    );
    assert_eq!(
        get(&format!("{base}/healthz")).await.0,
        200,
        "alive all the same"
    );
    cancel.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_turns_unready_when_postgres_stops() {
    let t = spawn_entities(small_account(), &[]).await;
    let (base, cancel) = serve(&t).await;
    t.app.scheduled.store(true, Ordering::Relaxed);
    assert_eq!(get(&format!("{base}/readyz")).await.0, 200);

    // Stop this test's database only (the server is shared by parallel tests): refuse new
    // connections and end the existing ones, as a stopped server would.
    let mut admin = sqlx::PgConnection::connect(&format!("{}/postgres", server_url()))
        .await
        .unwrap();
    let name = &t.db.name;
    admin
        .execute(format!("ALTER DATABASE \"{name}\" ALLOW_CONNECTIONS false").as_str())
        .await
        .unwrap();
    admin
        .execute(
            format!(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'"
            )
            .as_str(),
        )
        .await
        .unwrap();
    let (status, body) = get(&format!("{base}/readyz")).await;
    assert_eq!(status, 503);
    assert!(body.contains("database"), "{body}");

    admin
        .execute(format!("ALTER DATABASE \"{name}\" ALLOW_CONNECTIONS true").as_str())
        .await
        .unwrap();
    let mut ready = false;
    for _ in 0..50 {
        if get(&format!("{base}/readyz")).await.0 == 200 {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ready, "ready again once the database is back");
    cancel.cancel();
}
