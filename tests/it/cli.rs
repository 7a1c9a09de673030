//! The binary as an operator uses it: --help, bad settings, one-shot sync, status, kill -9,
//! and SIGTERM.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kommo_sim::{Entity, SimConfig};

use crate::helpers::*;

fn binary() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_kommo-sync"));
    c.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default());
    c
}

fn with_env(mut c: Command, env: &[(String, String)]) -> Command {
    c.envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    c
}

#[test]
fn help_lists_every_command() {
    let out = binary().arg("--help").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    for cmd in [
        "run",
        "sync",
        "status",
        "migrate",
        "check",
        "config",
        "reconcile",
        "KOMMO_SYNC__",
        "Exit codes",
    ] {
        assert!(text.contains(cmd), "{cmd} missing from --help:\n{text}");
    }
    let out = binary().args(["sync", "--help"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("--stream") && text.contains("--full"),
        "{text}"
    );
}

#[test]
fn bad_settings_exit_2_and_name_the_key() {
    let out = binary()
        .args(["check"])
        .env("KOMMO_SYNC__KOMMO__SUBDOMAIN", "acme")
        .env("KOMMO_SYNC__KOMMO__TOKEN", "t")
        .env("KOMMO_SYNC__KOMMO__MAX_RPS", "50")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("kommo.max_rps"), "{err}");

    let out = binary()
        .args(["--config", "/nonexistent.toml", "status"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent.toml"));

    let out = binary()
        .args(["sync", "--stream", "deals"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("leads"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_then_status_json_matches_sync_state() {
    let t = spawn_entities(small_account(), &[]).await;
    let env = t.env.clone();
    let out =
        tokio::task::spawn_blocking(move || with_env(binary(), &env).arg("sync").output().unwrap())
            .await
            .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    for s in ["leads", "contacts", "companies", "tasks"] {
        assert!(text.contains(s), "{text}");
    }
    let env = t.env.clone();
    let out = tokio::task::spawn_blocking(move || {
        with_env(binary(), &env)
            .args(["status", "--json"])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(out.status.success());
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let rows: Vec<(String, serde_json::Value, String, i64)> = sqlx::query_as(
        "SELECT stream, cursor, state, rows_written FROM sync_state ORDER BY stream",
    )
    .fetch_all(&t.pool)
    .await
    .unwrap();
    assert_eq!(status.as_array().unwrap().len(), rows.len());
    for (i, (stream, cursor, state, written)) in rows.iter().enumerate() {
        assert_eq!(&status[i]["stream"], stream);
        assert_eq!(&status[i]["cursor"], cursor);
        assert_eq!(&status[i]["state"], state);
        assert_eq!(status[i]["rows_written"].as_i64(), Some(*written));
    }
    let env = t.env.clone();
    let out = tokio::task::spawn_blocking(move || {
        with_env(binary(), &env).arg("status").output().unwrap()
    })
    .await
    .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains("STREAM") && table.contains("leads") && table.contains(" ok "),
        "{table}"
    );
    assert!(
        table.lines().all(|l| l.chars().count() <= 100),
        "fits 100 columns:\n{table}"
    );
    // Only the database settings: every account the schema holds.
    let url = t.db.url.clone();
    let out = tokio::task::spawn_blocking(move || {
        binary()
            .args(["status", "--wide"])
            .env("KOMMO_SYNC__DATABASE__URL", url)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && table.contains("LAST SUCCESS") && table.contains("tasks"),
        "{table}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// After the demo, the `status` line it prints runs as printed and shows what it wrote.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_prints_a_status_command_that_works() {
    let db = TestDb::create().await;
    let url = db.url.clone();
    let out = tokio::task::spawn_blocking(move || {
        binary()
            .args([
                "demo",
                "--leads",
                "300",
                "--contacts",
                "200",
                "--companies",
                "50",
            ])
            .args(["--tasks", "200", "--schema", "demo_status"])
            .env("KOMMO_SYNC__DATABASE__URL", url)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = text
        .lines()
        .find(|l| l.trim_end().ends_with(" status"))
        .unwrap_or_else(|| panic!("no status command printed:\n{text}"));
    let words: Vec<&str> = line.split_whitespace().collect();
    let (vars, command) = words.split_at(words.len() - 2);
    let mut status = Command::new(command[0]);
    status.env_clear().arg(command[1]);
    for v in vars {
        let (k, v) = v.split_once('=').expect("VAR=value");
        status.env(k, v);
    }
    let out = tokio::task::spawn_blocking(move || status.output().unwrap())
        .await
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{table}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for stream in ["leads", "events", "pipelines"] {
        assert!(table.contains(stream), "{table}");
    }
}

/// `check` only checks: a database that does not exist is named and not created.
#[test]
fn check_against_a_missing_database_creates_nothing() {
    let name = format!("kommo_sync_missing_{}", rand::random::<u32>());
    let out = binary()
        .arg("check")
        .env("KOMMO_SYNC__KOMMO__SUBDOMAIN", "acme")
        .env("KOMMO_SYNC__KOMMO__TOKEN", "t")
        .env(
            "KOMMO_SYNC__DATABASE__URL",
            format!("{}/{name}", server_url()),
        )
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&name) && err.contains("does not exist"),
        "{err}"
    );
    let exists = std::process::Command::new("psql")
        .args([&format!("{}/postgres", server_url()), "-Atc"])
        .arg(format!(
            "SELECT count(*) FROM pg_database WHERE datname = '{name}'"
        ))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&exists.stdout).trim(), "0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_sync_then_resume_is_exact() {
    let t = spawn_entities(
        SimConfig {
            leads: 2500,
            contacts: 1500,
            ..small_account()
        },
        &[],
    )
    .await;
    let mut child = with_env(binary(), &t.env)
        .arg("sync")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Let it commit a few pages, then SIGKILL: no chance to clean up.
    let pool = t.pool.clone();
    let start = Instant::now();
    loop {
        let pages: i64 = sqlx::query_scalar("SELECT count(*) FROM leads")
            .fetch_one(&pool)
            .await
            .unwrap_or(0);
        if pages >= 500 || start.elapsed() > Duration::from_secs(20) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    child.kill().unwrap();
    let _ = child.wait();
    let c = t.sim.sim().counters();
    assert!(
        c.max_in_sliding_second <= 7,
        "the killed process alone broke the limit: {c:?}"
    );
    let partial = t.versions(kommo_sim::Entity::Leads).await;
    assert!(
        !partial.is_empty() && partial.len() < 2500,
        "killed mid-way: {} leads",
        partial.len()
    );
    // The restart is a new process, whose limiter starts one spacing after it (t.app, built
    // long before, would not know the killed process's last request, as with two live
    // processes).
    let settings = kommo_sync::config::Settings::load_from(None, t.env.clone()).unwrap();
    let restarted =
        kommo_sync::app::App::build(settings, tokio_util::sync::CancellationToken::new())
            .await
            .unwrap();
    restarted.sync_once(&[], false).await.unwrap();
    let after = t.versions(kommo_sim::Entity::Leads).await;
    assert!(
        partial.iter().all(|(id, x)| after.get(id) == Some(x)),
        "rows were rewritten"
    );
    t.assert_mirrors_simulator().await;
    t.assert_polite();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_a_run_exits_0_quickly_with_nothing_half_written() {
    // A slow server: the run is surely in flight when SIGTERM arrives.
    let t = spawn_entities(
        SimConfig {
            latency: Duration::from_millis(300),
            leads: 3000,
            ..small_account()
        },
        &[],
    )
    .await;
    let mut child = with_env(binary(), &t.env)
        .arg("run")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pool = t.pool.clone();
    let start = Instant::now();
    loop {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM leads")
            .fetch_one(&pool)
            .await
            .unwrap_or(0);
        if n > 0 || start.elapsed() > Duration::from_secs(20) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    let term_sent = Instant::now();
    let ok = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    assert_eq!(status.code(), Some(0));
    assert!(
        term_sent.elapsed() < Duration::from_secs(10),
        "{:?}",
        term_sent.elapsed()
    );
    // Every committed page moved its cursor with it: counts add up.
    let written: i64 = sqlx::query_scalar(
        "SELECT coalesce(sum(rows_written), 0)::bigint FROM sync_state \
             WHERE stream IN ('leads', 'contacts', 'companies', 'tasks')",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    let rows: i64 = sqlx::query_scalar(
        "SELECT (SELECT count(*) FROM leads) + (SELECT count(*) FROM contacts) + (SELECT count(*) FROM companies) + (SELECT count(*) FROM tasks)",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(written, rows);
    let outcomes: Vec<String> = sqlx::query_scalar("SELECT DISTINCT outcome FROM sync_runs")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert!(
        outcomes.iter().all(|o| o == "cancelled" || o == "ok"),
        "{outcomes:?}"
    );
    // And the next run completes the mirror.
    t.sim.sim().set_latency(Duration::ZERO);
    t.sync().await;
    t.let_lag_pass();
    t.sync().await;
    t.assert_mirrors_simulator().await;
}

/// `run` speaks systemd's notify protocol: READY=1 once migrated and scheduled, WATCHDOG=1
/// while healthy, STOPPING=1 on SIGTERM. A datagram socket stands in for systemd.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_notifies_systemd_ready_watchdog_and_stopping() {
    let t = spawn_entities(small_account(), &[]).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify.sock");
    let socket = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut child = with_env(binary(), &t.env)
        .arg("run")
        .env("NOTIFY_SOCKET", &path)
        .env("WATCHDOG_USEC", "1000000")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 512];
    tokio::task::block_in_place(|| {
        while !(seen.iter().any(|m: &String| m.contains("READY=1"))
            && seen.iter().filter(|m| m.contains("WATCHDOG=1")).count() >= 2)
        {
            let n = socket.recv(&mut buf).expect("a notification within 20 s");
            seen.push(String::from_utf8_lossy(&buf[..n]).to_string());
        }
    });
    assert!(seen[0].contains("READY=1"), "ready comes first: {seen:?}");
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let stopping = tokio::task::block_in_place(|| loop {
        let n = socket.recv(&mut buf).expect("STOPPING=1 after SIGTERM");
        let m = String::from_utf8_lossy(&buf[..n]).to_string();
        if m.contains("STOPPING=1") {
            break m;
        }
    });
    assert!(stopping.contains("STOPPING=1"));
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    assert_eq!(status.code(), Some(0));
}

/// Settings that leave `run` or `sync` nothing to do are refused at once, before any
/// connection, with the key to set; and a log level that is no level is not silently `info`.
#[test]
fn nothing_to_run_and_a_bad_log_level_exit_2_at_once() {
    let account = [
        ("KOMMO_SYNC__KOMMO__SUBDOMAIN", "acme"),
        ("KOMMO_SYNC__KOMMO__TOKEN", "t"),
        // Unreachable: nothing may try it.
        (
            "KOMMO_SYNC__DATABASE__URL",
            "postgres://nobody@127.0.0.1:1/none",
        ),
    ];
    let off: Vec<(String, &str)> = kommo_sync::kommo::stream_names()
        .map(|s| {
            (
                format!("KOMMO_SYNC__STREAMS__{}__ENABLED", s.to_uppercase()),
                "false",
            )
        })
        .collect();
    for command in ["run", "sync"] {
        let started = Instant::now();
        let out = binary()
            .arg(command)
            .envs(account)
            .envs(off.iter().map(|(k, v)| (k.as_str(), *v)))
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{command}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("no stream is enabled") && err.contains("enabled = true"),
            "{command}: {err}"
        );
        assert!(started.elapsed() < Duration::from_secs(10), "{command}");
    }
    let out = binary()
        .arg("reconcile")
        .envs(account)
        .envs(off.iter().map(|(k, v)| (k.as_str(), *v)))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no entity stream is enabled") && err.contains("--stream"),
        "{err}"
    );
    let out = binary()
        .arg("status")
        .envs(account)
        .env("KOMMO_SYNC__LOG__LEVEL", "loud")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("log.level"));
}

/// A side server that cannot listen is fatal: `run` exits at once, non-zero, naming the
/// address and the setting, instead of idling until SIGTERM.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_exits_at_once_when_the_side_servers_port_is_taken() {
    let t = spawn_entities(small_account(), &[]).await;
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let started = Instant::now();
    let out = tokio::task::spawn_blocking({
        let mut c = with_env(binary(), &t.env);
        c.arg("run")
            .env("KOMMO_SYNC__SERVER__LISTEN", &addr)
            .env("KOMMO_SYNC__LOG__FORMAT", "text");
        move || {
            let mut child = c
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            let deadline = Instant::now() + Duration::from_secs(30);
            while child.try_wait().unwrap().is_none() {
                if Instant::now() > deadline {
                    let _ = child.kill();
                    panic!("run did not exit with its side server's port taken");
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            child.wait_with_output().unwrap()
        }
    })
    .await
    .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&addr) && err.contains("server.listen"),
        "{err}"
    );
    assert!(started.elapsed() < Duration::from_secs(30));
    drop(taken);
}

/// A daemon's stderr, line by line, as it comes.
fn lines_of(child: &mut std::process::Child) -> std::sync::mpsc::Receiver<String> {
    use std::io::BufRead;
    let stderr = child.stderr.take().expect("stderr is piped");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    rx
}

/// Waits (up to `within`) for a line containing `what`; the lines read meanwhile are kept.
fn wait_for(
    rx: &std::sync::mpsc::Receiver<String>,
    what: &str,
    within: Duration,
) -> Option<Instant> {
    let until = Instant::now() + within;
    while let Some(left) = until.checked_duration_since(Instant::now()) {
        match rx.recv_timeout(left) {
            Ok(line) if line.contains(what) => return Some(Instant::now()),
            Ok(_) => {}
            Err(_) => return None,
        }
    }
    None
}

/// Two daemons (replicas) and a one-shot sync on one account: only the holder of the
/// account's lease sends requests (never more than 7 in a second, no 429), the other stands
/// by; `sync` refuses to run beside it; after `kill -9` of the holder the standby takes
/// over and the mirror ends exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_take_turns_on_an_account_and_fail_over_on_kill_9() {
    let t = spawn_entities(
        SimConfig {
            latency: Duration::from_millis(100),
            ..small_account()
        },
        &[],
    )
    .await;
    let mut env = t.env.clone();
    for e in ENTITIES {
        env.push((
            format!(
                "KOMMO_SYNC__STREAMS__{}__SCHEDULE",
                e.as_str().to_uppercase()
            ),
            "*/2 * * * * *".into(),
        ));
    }
    env.push(("KOMMO_SYNC__LOG__FORMAT".into(), "text".into()));
    let daemon = || {
        with_env(binary(), &env)
            .arg("run")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let mut first = daemon();
    let first_log = lines_of(&mut first);
    let holding = "holding the account's lease";
    assert!(wait_for(&first_log, holding, Duration::from_secs(20)).is_some());
    let mut second = daemon();
    let second_log = lines_of(&mut second);
    assert!(
        wait_for(&second_log, "standing by", Duration::from_secs(20)).is_some(),
        "the second replica stands by"
    );
    let sync_env = env.clone();
    let beside = tokio::task::spawn_blocking(move || {
        with_env(binary(), &sync_env).arg("sync").output().unwrap()
    })
    .await
    .unwrap();
    assert_eq!(beside.status.code(), Some(1));
    let err = String::from_utf8_lossy(&beside.stderr);
    assert!(
        err.contains("another kommo-sync process is syncing"),
        "{err}"
    );
    // Both replicas run their schedule's ticks meanwhile; only one sends.
    tokio::time::sleep(Duration::from_secs(4)).await;
    t.assert_polite();
    let sim = t.sim.sim();
    sim.edit(
        Entity::Leads,
        &[sim.dump(Entity::Leads)[0]["id"].as_i64().unwrap()],
    );

    let killed = Instant::now();
    first.kill().unwrap();
    let _ = first.wait();
    let took_over =
        wait_for(&second_log, holding, Duration::from_secs(20)).expect("the standby takes over");
    eprintln!("take-over after kill -9: {:?}", took_over - killed);
    assert!(took_over - killed < Duration::from_secs(10));
    // The standby goes on from the stored cursor: the edit made before the kill arrives.
    t.let_lag_pass();
    let start = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let leads = t.rows(Entity::Leads).await;
        let dump = sim.dump_with(Entity::Leads, kommo_sim::With::NONE);
        let current = dump.iter().all(|v| {
            leads.get(&v["id"].as_i64().unwrap()).map(|r| r.0) == v["updated_at"].as_i64()
        });
        if current || start.elapsed() > Duration::from_secs(20) {
            break;
        }
    }
    t.assert_mirrors_simulator().await;
    t.assert_polite();
    let _ = Command::new("kill")
        .args(["-TERM", &second.id().to_string()])
        .status();
    let status = tokio::task::spawn_blocking(move || second.wait().unwrap())
        .await
        .unwrap();
    assert_eq!(status.code(), Some(0));
}

/// `config` shows every setting with where it came from, never a secret, and says whether
/// the whole is valid.
#[test]
fn config_shows_each_setting_its_origin_and_no_secret() {
    let dir = std::env::temp_dir().join(format!("kommo-sync-config-{}", rand::random::<u32>()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("k.toml");
    std::fs::write(&file, "[kommo]\nsubdomain = \"acme\"\n").unwrap();
    let out = binary()
        .arg("--config")
        .arg(&file)
        .arg("config")
        .env("KOMMO_SYNC__KOMMO__TOKEN", "tok-s3cr3t")
        .env(
            "KOMMO_SYNC__DATABASE__URL",
            "postgres://u:pw-s3cr3t@db:5432/kommo",
        )
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(!text.contains("s3cr3t"), "{text}");
    let line = |key: &str| {
        text.lines()
            .find(|l| l.starts_with(&format!("{key} ")))
            .unwrap_or_else(|| panic!("{key} missing:\n{text}"))
            .to_string()
    };
    assert!(
        line("kommo.token").contains("<redacted>")
            && line("kommo.token").contains("env KOMMO_SYNC__KOMMO__TOKEN")
    );
    assert!(line("kommo.subdomain").contains("acme") && line("kommo.subdomain").contains("file "));
    assert!(line("sync.lag_secs").contains("300") && line("sync.lag_secs").contains("(default)"));
    assert!(text.contains("settings: valid"), "{text}");

    let out = binary()
        .arg("config")
        .env("KOMMO_SYNC__KOMMO__MAX_RPS", "50")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stdout).contains("NOT valid"));
    std::fs::remove_dir_all(&dir).unwrap();
}
