//! OAuth 2.0 with single-use refresh tokens: refreshed ahead of expiry, under a row lock,
//! committed at once; refused credentials stop the account instead of looping.

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use kommo_sim::{AuthConfig, SimConfig};
use kommo_sync::app::App;
use kommo_sync::config::Settings;
use kommo_sync::kommo::auth::{Auth, OAuth, RefreshStep};
use tokio_util::sync::CancellationToken;

use crate::helpers::*;

const OAUTH_ENV: &[(&str, &str)] = &[
    ("KOMMO_SYNC__KOMMO__AUTH", "oauth"),
    ("KOMMO_SYNC__KOMMO__TOKEN", ""),
    ("KOMMO_SYNC__OAUTH__CLIENT_ID", "sim-client"),
    ("KOMMO_SYNC__OAUTH__CLIENT_SECRET", "sim-secret"),
    (
        "KOMMO_SYNC__OAUTH__REDIRECT_URI",
        "https://example.com/oauth",
    ),
    ("KOMMO_SYNC__OAUTH__REFRESH_MARGIN_SECS", "2"),
];

/// A simulator that accepts only OAuth access tokens living `ttl` seconds.
fn oauth_account(ttl: u64, cfg: SimConfig) -> SimConfig {
    SimConfig {
        auth: AuthConfig {
            long_lived_token: None,
            access_token_ttl: Duration::from_secs(ttl),
            auth_codes: vec!["sim-code".into(), "second-code".into()],
            ..AuthConfig::default()
        },
        ..cfg
    }
}

fn oauth_of(app: &App) -> Arc<OAuth> {
    match app.client.auth() {
        Auth::OAuth(o) => o.clone(),
        other => panic!("expected OAuth, got {other:?}"),
    }
}

async fn spawn_oauth(ttl: u64, cfg: SimConfig, extra: &[(&str, &str)]) -> TestApp {
    let mut env: Vec<(&str, &str)> = OAUTH_ENV.to_vec();
    env.extend_from_slice(extra);
    let t = spawn_entities(oauth_account(ttl, cfg), &env).await;
    oauth_of(&t.app)
        .exchange("sim-code")
        .await
        .expect("the first code is accepted");
    t
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sync_spanning_several_expiries_never_sees_a_401() {
    let cfg = SimConfig {
        latency: Duration::from_millis(150),
        leads: 2500,
        contacts: 1500,
        ..small_account()
    };
    // Tokens live 3 s and are refreshed 2 s before expiry: each is used for about one
    // second, so a run of ~5 s (31 requests at 7 per second) needs several refreshes
    // whatever the machine's speed.
    let t = spawn_oauth(3, cfg, &[]).await;
    t.sync().await;
    let c = t.sim.sim().counters();
    assert!(
        c.token_requests >= 3,
        "several refreshes happened during the run: {c:?}"
    );
    assert_eq!(
        c.by_status.get(&401),
        None,
        "refreshed ahead of expiry: {c:?}"
    );
    assert_eq!(c.refresh_token_reuses, 0);
    t.let_lag_pass();
    t.sync().await;
    t.assert_mirrors_simulator().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_daemons_refreshing_one_account_never_lock_it_out() {
    // Each daemon gets half the rate: together they stay under the API's limit.
    let t = spawn_oauth(3, small_account(), &[("KOMMO_SYNC__KOMMO__MAX_RPS", "3")]).await;
    let settings = Settings::load_from(None, t.env.clone()).unwrap();
    let other = App::build(settings, CancellationToken::new())
        .await
        .unwrap();
    let sim = t.sim.sim();
    for round in 0..8 {
        sim.create(kommo_sim::Entity::Leads, 3);
        let (a, b) = tokio::join!(t.app.sync_once(&[], false), other.sync_once(&[], false));
        a.unwrap_or_else(|e| panic!("daemon A, round {round}: {e}"));
        b.unwrap_or_else(|e| panic!("daemon B, round {round}: {e}"));
        tokio::time::sleep(Duration::from_millis(600)).await;
    }
    let c = sim.counters();
    assert!(c.token_requests >= 4, "many expiry cycles: {c:?}");
    assert_eq!(
        c.refresh_token_reuses, 0,
        "each refresh token was used once: {c:?}"
    );
    let row = t
        .app
        .store
        .load_tokens(&t.app.settings.kommo.account_key())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(row.state, kommo_sync::tokens::TokenState::Ok);
}

/// A crash at each step of a refresh, then a restart. Only a crash between Kommo's answer
/// and the commit loses the refresh token (the documented window: one round trip).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_at_each_step_of_a_refresh_loses_the_token_only_inside_the_round_trip() {
    for (step, survives) in [
        (RefreshStep::BeforeCall, true),
        (RefreshStep::AfterResponse, false),
        (RefreshStep::BeforeCommit, false),
        (RefreshStep::AfterCommit, true),
    ] {
        let t = spawn_oauth(4, small_account(), &[]).await;
        let oauth = oauth_of(&t.app);
        oauth.set_hook(Some(Arc::new(move |at| {
            if at == step {
                Err("crash".into())
            } else {
                Ok(())
            }
        })));
        // Wait until the token is inside the refresh margin (4 s life, 2 s margin).
        tokio::time::sleep(Duration::from_millis(2300)).await;
        let err = t
            .app
            .sync_once(&["leads".into()], false)
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains(&format!("{step:?}")), "{step:?}: {err}");

        // Restart: a new process with nothing in memory.
        let settings = Settings::load_from(None, t.env.clone()).unwrap();
        let restarted = App::build(settings, CancellationToken::new())
            .await
            .unwrap();
        let result = restarted.sync_once(&["leads".into()], false).await;
        let reuses = t.sim.sim().counters().refresh_token_reuses;
        if survives {
            result.unwrap_or_else(|e| panic!("{step:?}: the restarted daemon must work: {e}"));
            assert_eq!(reuses, 0, "{step:?}");
        } else {
            let err = result.unwrap_err().to_string();
            assert!(
                err.contains("revoked") && err.contains("auth exchange"),
                "{step:?}: {err}"
            );
            assert_eq!(
                reuses, 1,
                "{step:?}: the lost pair shows as one reuse of the old token"
            );
            // Stopped and reporting, never retrying: the next run sends nothing.
            let before = t.sim.sim().counters().requests;
            assert!(restarted.sync_once(&["leads".into()], false).await.is_err());
            assert_eq!(
                t.sim.sim().counters().requests,
                before,
                "{step:?}: no retry loop"
            );
            let status = restarted.status().await.unwrap();
            assert!(
                status.iter().any(|s| s.state == "locked_out"),
                "{step:?}: {status:?}"
            );
            // A human re-authorizes (`auth exchange` is a process of its own), then restarts
            // the daemon: it works again.
            let settings = Settings::load_from(None, t.env.clone()).unwrap();
            let human = App::build(settings.clone(), CancellationToken::new())
                .await
                .unwrap();
            oauth_of(&human).exchange("second-code").await.unwrap();
            let fixed = App::build(settings, CancellationToken::new())
                .await
                .unwrap();
            fixed.sync_once(&["leads".into()], false).await.unwrap();
        }
    }
}

fn cli(t: &TestApp, args: &[&str], extra: &[(&str, &str)]) -> (i32, String) {
    let mut c = Command::new(env!("CARGO_BIN_EXE_kommo-sync"));
    c.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default());
    c.envs(t.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    c.envs(extra.iter().copied());
    let out = c.args(args).output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_explains_refused_credentials_and_exits_non_zero() {
    let t = spawn_entities(oauth_account(60, small_account()), OAUTH_ENV).await;
    let t = &t;
    let (code, text) =
        tokio::task::block_in_place(|| cli(t, &["auth", "exchange", "--code", "not-a-code"], &[]));
    assert_ne!(code, 0);
    assert!(
        text.contains("Authorization code has expired") && text.contains("auth exchange"),
        "{text}"
    );

    let (code, text) = tokio::task::block_in_place(|| {
        cli(
            t,
            &["auth", "exchange", "--code", "sim-code"],
            &[("KOMMO_SYNC__OAUTH__CLIENT_SECRET", "wrong")],
        )
    });
    assert_ne!(code, 0);
    assert!(
        text.contains("Client authentication failed") && text.contains("oauth.client_secret"),
        "{text}"
    );

    let (code, text) = tokio::task::block_in_place(|| cli(t, &["auth", "status"], &[]));
    assert_ne!(code, 0);
    assert!(text.contains("no tokens stored"), "{text}");
    assert_eq!(
        t.sim.sim().counters().token_requests,
        2,
        "one request per attempt, no retries"
    );
}

/// Tokens and the client secret appear in no log line, error or output, at trace level too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_never_reach_logs_errors_or_output() {
    let t = spawn_entities(
        oauth_account(
            4,
            SimConfig {
                latency: Duration::from_millis(100),
                ..small_account()
            },
        ),
        OAUTH_ENV,
    )
    .await;
    let t = &t;
    let trace = [("RUST_LOG", "trace"), ("KOMMO_SYNC__LOG__FORMAT", "json")];
    let mut all = String::new();
    for args in [
        &["auth", "exchange", "--code", "sim-code"][..],
        &["sync"],
        &["auth", "status"],
        &["status"],
    ] {
        let (code, text) = tokio::task::block_in_place(|| cli(t, args, &trace));
        assert_eq!(code, 0, "{args:?}: {text}");
        all.push_str(&text);
    }
    // A refused refresh and a failing run, to cover error paths too.
    sqlx::query("UPDATE oauth_tokens SET access_expires_at = now() - interval '1 hour', refresh_token = 'sim-rt-forged'")
        .execute(&t.pool)
        .await
        .unwrap();
    let (code, text) = tokio::task::block_in_place(|| cli(t, &["sync"], &trace));
    assert_ne!(code, 0);
    all.push_str(&text);
    assert!(
        all.contains("TRACE") || all.contains("\"level\":\"TRACE\""),
        "trace level was on"
    );
    assert!(
        t.sim.sim().counters().token_requests >= 2,
        "refreshes happened"
    );
    for secret in ["sim-at-", "sim-rt-", "sim-secret"] {
        assert!(
            !all.contains(secret),
            "`{secret}` leaked:\n{}",
            &all[all.find(secret).unwrap().saturating_sub(300)..]
        );
    }
}

/// A shutdown while a token refresh is in flight (the run's tasks are aborted) does not
/// drop it: the refresh ends with its commit, and the next start works. Before, the new
/// pair was lost with the aborted task and the restarted daemon was locked out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shutdown_during_a_refresh_keeps_the_new_pair() {
    let t = spawn_oauth(
        4,
        SimConfig {
            latency: Duration::from_millis(1500),
            ..small_account()
        },
        &[],
    )
    .await;
    // Inside the refresh margin (4 s life, 2 s margin).
    tokio::time::sleep(Duration::from_millis(2300)).await;
    let settings = Settings::load_from(None, t.env.clone()).unwrap();
    let app = Arc::new(
        App::build(settings, CancellationToken::new())
            .await
            .unwrap(),
    );
    let sync = tokio::spawn({
        let app = app.clone();
        async move { app.sync_once(&["leads".into()], false).await }
    });
    // The refresh has reached the server (it answers after 1.5 s): stop everything.
    tokio::time::sleep(Duration::from_millis(700)).await;
    sync.abort();
    let _ = sync.await;
    app.client.settle().await;

    let settings = Settings::load_from(None, t.env.clone()).unwrap();
    let restarted = App::build(settings, CancellationToken::new())
        .await
        .unwrap();
    restarted
        .sync_once(&["leads".into()], false)
        .await
        .expect("the restarted daemon is not locked out");
    assert_eq!(t.sim.sim().counters().refresh_token_reuses, 0);
}
