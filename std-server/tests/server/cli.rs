//! The `tether` binary, run as a process.

use std::io::{BufRead as _, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc::Receiver;
use std::time::Duration;

use tether_core::message::GoodbyeReason;
use tether_core::method::builtin::Echo;
use tether_core::scram::{CachedKeys, Mechanism};
use tether_test_support::free_port;

use crate::common::*;

const TETHER: &str = env!("CARGO_BIN_EXE_tether");
const DB: &str = "default.sqlite3";

fn tether(args: &[&str]) -> Command {
    let mut c = Command::new(TETHER);
    c.args(args)
        .env_remove("DATABASE_URL")
        .env_remove("TETHER_PASSWORD")
        .env_remove("TETHER_SECRET")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null());
    c
}

#[test]
fn demo_runs_end_to_end_and_reuses_its_database() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("demo.sqlite3").display());
    let out = tether(&["demo", "--listen", "127.0.0.1:0", "--database", &url])
        .current_dir(dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    let expected = [
        "demo: created",
        "demo: credentials: username alice, password wonderland",
        "server: listening on 127.0.0.1:",
        "device: connecting",
        "over protocol v2 (Noise_NK, server key ",
        "device: logged in, server verified, session encrypted",
        "device: echo(\"hello from the device\") -> \"hello from the device\"",
        "device: whoami() -> user alice (id 1)",
        "device: goodbye",
        "server: alice disconnected",
        "demo: done",
    ];
    let mut at = 0;
    for line in expected {
        let found = stdout[at..]
            .find(line)
            .unwrap_or_else(|| panic!("missing or out of order: {line:?}\n{stdout}"));
        at += found + line.len();
    }
    for line in [
        "server: alice connected (session 1",
        "device: the server called device_info",
        "server: session 1's device runs \"tether-demo-device",
    ] {
        assert!(stdout.contains(line), "missing {line:?}\n{stdout}");
    }
    // The hash is a genuine Django pbkdf2_sha256 at Django 5.2's default iterations.
    let db = Db {
        path: dir.path().join("demo.sqlite3"),
        dir,
    };
    let hash = db.sql("SELECT password FROM auth_user WHERE username = 'alice'");
    let parsed = tether_core::django::parse(&hash).unwrap();
    assert_eq!(parsed.mechanism, Mechanism::ScramSha256);
    assert_eq!(parsed.iterations, 1_000_000);
    assert_eq!(parsed.salt.len(), 22);
    let keys = CachedKeys::derive(
        Mechanism::ScramSha256,
        "wonderland",
        parsed.salt.as_bytes(),
        parsed.iterations,
    )
    .unwrap();
    let creds = tether_core::django::credentials(&hash).unwrap();
    assert!(keys.server_key.ct_eq(&creds.server_key));
    // Django's schema and migration records for auth and contenttypes.
    assert_eq!(
        db.sql("SELECT count(*) FROM django_migrations WHERE app = 'auth'"),
        "12"
    );
    assert_eq!(db.sql("SELECT count(*) FROM auth_permission"), "16");
    let schema = db.sql("SELECT sql FROM sqlite_master WHERE name = 'auth_user'");
    let fixture = Db::copy(DB).sql("SELECT sql FROM sqlite_master WHERE name = 'auth_user'");
    assert_eq!(schema, fixture);
    assert!(!db.sql("SELECT last_login FROM auth_user").is_empty());

    // A second run uses the existing database.
    let out = tether(&["demo", "--listen", "127.0.0.1:0", "--database", &url])
        .current_dir(db.dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains("demo: using"), "{stdout}");
    assert!(stdout.contains("device: goodbye"), "{stdout}");
}

#[test]
fn demo_refuses_a_foreign_database() {
    let db = Db::copy("custom_user.sqlite3");
    let out = tether(&["demo", "--listen", "127.0.0.1:0", "--database", &db.url()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("not a Django database") || stderr.contains("without the demo user"),
        "{stderr}"
    );
}

#[test]
fn check_reports_tables_and_algorithms() {
    let db = Db::copy(DB);
    let out = tether(&[
        "check",
        "--database",
        &db.url(),
        "--require-perm",
        "devices.connect",
    ])
    .output()
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains("ok      auth_user"), "{stdout}");
    assert!(
        stdout.contains("permission devices.connect exists"),
        "{stdout}"
    );
    assert!(
        stdout.contains("active users who can log in by challenge-response: 9"),
        "{stdout}"
    );
    assert!(stdout.contains("argon2"), "{stdout}");
    // Progress of the migration to scram_sha256: sam's row only.
    assert!(
        stdout.contains("scram_sha256        1 can log in by challenge-response"),
        "{stdout}"
    );
    assert!(
        stdout.contains("scram_sha256 rows (a copy cannot log a device in): 1 of 9 (11%)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("hint: 8 pbkdf2 rows are password-equivalent"),
        "{stdout}"
    );
    assert!(
        stdout.contains("PBKDF2 iterations in use: 260000 (1), 1000000 (8)"),
        "{stdout}"
    );
    // Django's default journal: the hint; after switching to WAL: none.
    assert!(stdout.contains("sqlite journal mode: delete"), "{stdout}");
    assert!(stdout.contains("hint: WAL mode"), "{stdout}");
    db.sql("PRAGMA journal_mode=WAL");
    let out = tether(&["check", "--database", &db.url()])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("sqlite journal mode: wal"), "{stdout}");
    assert!(!stdout.contains("hint: WAL mode"), "{stdout}");
    // The wrong table: a clear failure.
    let db = Db::copy("custom_user.sqlite3");
    let out = tether(&["check", "--database", &db.url()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("MISSING auth_user"));
}

#[test]
fn keys_match_the_row_and_the_core_derivation() {
    let db = Db::copy(DB);
    let u = user(DB, "alice");
    let salt = u["salt"].as_str().unwrap();
    let out = tether(&[
        "keys",
        "--user",
        "alice",
        "--salt",
        salt,
        "--iterations",
        "1000000",
        "--format",
        "postcard",
    ])
    .env("TETHER_PASSWORD", password(DB, "alice"))
    .output()
    .unwrap();
    assert!(out.status.success());
    let hex = String::from_utf8(out.stdout).unwrap();
    let bytes = hex::decode(hex.trim()).unwrap();
    let keys: CachedKeys = tether_core::message::decode(&bytes).unwrap();
    let expected = CachedKeys::derive(
        Mechanism::ScramSha256,
        password(DB, "alice"),
        salt.as_bytes(),
        1_000_000,
    )
    .unwrap();
    assert!(keys == expected);
    // With --database: salt, iterations and mechanism from the row; password checked.
    let out = tether(&["keys", "--user", "bob", "--database", &db.url()])
        .env("TETHER_PASSWORD", password(DB, "bob"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains("mechanism: SCRAM-SHA-1"), "{stdout}");
    assert!(stdout.contains("checked: the password matches"), "{stdout}");
    let out = tether(&["keys", "--user", "bob", "--database", &db.url()])
        .env("TETHER_PASSWORD", "wrong")
        .output()
        .unwrap();
    assert!(!out.status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn call_prints_replies_and_refusals() {
    let db = Db::copy(DB);
    let server = start(&db).await;
    let addr = server.addr.to_string();
    let run = |args: Vec<String>, password: &'static str| {
        tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            tether(&args)
                .env("TETHER_PASSWORD", password)
                .output()
                .unwrap()
        })
    };
    let args = |m: &[&str]| {
        let mut v = vec![
            "call".to_string(),
            "--server".into(),
            addr.clone(),
            "--user".into(),
        ];
        v.extend(m.iter().map(|s| s.to_string()));
        v
    };
    let out = run(args(&["alice", "echo", "hi there"]), "alice-password")
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hi there\n");
    // server_time in RFC 3339, UTC, milliseconds.
    let out = run(args(&["alice", "server_time"]), "alice-password")
        .await
        .unwrap();
    let time = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert_eq!(time.len(), "2026-12-07T01:02:03.456Z".len(), "{time}");
    assert!(time.starts_with("20") && time.ends_with('Z'), "{time}");
    assert_eq!(&time[10..11], "T", "{time}");
    // Any method, with arguments and reply in JSON, hex or a postcard string.
    let stdout = |o: &std::process::Output| String::from_utf8_lossy(&o.stdout).to_string();
    let out = run(
        args(&["alice", "echo", "--json", "\"h\\u00e9\""]),
        "alice-password",
    )
    .await
    .unwrap();
    assert_eq!(stdout(&out), "\"hé\"\n");
    let out = run(
        args(&["alice", "whoami", "--json", "null"]),
        "alice-password",
    )
    .await
    .unwrap();
    let me: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(me["username"], "alice");
    assert_eq!(me["user_id"], 1);
    let out = run(
        args(&["alice", "echo", "--hex", "03616263"]),
        "alice-password",
    )
    .await
    .unwrap();
    assert_eq!(stdout(&out), "03616263\n");
    let out = run(
        args(&["alice", "echo", "--postcard-str", "yo"]),
        "alice-password",
    )
    .await
    .unwrap();
    assert_eq!(stdout(&out), "yo\n");
    let out = run(
        args(&["alice", "no_such_method", "--hex", ""]),
        "alice-password",
    )
    .await
    .unwrap();
    assert_eq!(out.status.code(), Some(3));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with("tether call: the server answered"),
        "{stderr}"
    );
    assert!(
        stderr.contains("no_such_method") || stderr.contains("unknown"),
        "{stderr}"
    );
    let out = run(
        args(&["alice", "thermostat.set", "--json", "{}"]),
        "alice-password",
    )
    .await
    .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no JSON type known for thermostat.set"));
    let out = run(args(&["bob", "whoami"]), "bob-password").await.unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("user bob (id 2)"));
    let out = run(args(&["alice", "whoami"]), "wrong").await.unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("login refused: unauthorized"), "{stderr}");
    let out = run(args(&["carol", "whoami"]), "carol-password")
        .await
        .unwrap();
    // An argon2 row: refused like a wrong password (the reason is in the
    // server's log only).
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("login refused: unauthorized"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn version_names_the_protocol() {
    let out = tether(&["--version"]).output().unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!(
            "tether {} (protocol version {})\n",
            env!("CARGO_PKG_VERSION"),
            tether_core::message::PROTOCOL_VERSION
        )
    );
}

#[test]
fn a_refused_connection_is_one_sentence() {
    // A port nobody listens on.
    let port = free_port();
    let out = tether(&[
        "call",
        "--server",
        &format!("127.0.0.1:{port}"),
        "--user",
        "alice",
        "whoami",
    ])
    .env("TETHER_PASSWORD", "x")
    .output()
    .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        format!(
            "tether call: connection refused by 127.0.0.1:{port} — is `tether serve` running?\n"
        )
    );
    // A name that does not resolve.
    let out = tether(&[
        "call",
        "--server",
        "no-such-host.invalid",
        "--user",
        "alice",
        "whoami",
    ])
    .env("TETHER_PASSWORD", "x")
    .output()
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with("tether call: cannot resolve no-such-host.invalid:7420"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_shuts_down_gracefully_on_sigterm() {
    let db = Db::copy(DB);
    let mut child = tether(&["serve", "--listen", "127.0.0.1:0", "--database", &db.url()])
        .current_dir(db.dir.path())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            let _ = tx.send(line);
        }
    });
    let mut log = Vec::new();
    let addr = loop {
        let line = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("serve logs its address");
        log.push(line.clone());
        if let Some(rest) = line.split("addr=").nth(1) {
            break rest.trim().to_string();
        }
    };
    let addr = addr.parse().unwrap();
    // Refusals say why in their own field (the device is told `unauthorized`).
    for (name, pw) in [("alice", "wrong"), ("eve", "eve-password"), ("nobody", "x")] {
        assert!(login(addr, name, pw).await.is_err());
    }
    let mut s = login(addr, "alice", password(DB, "alice")).await.unwrap();
    assert_eq!(s.echo("before").await, "before");
    // The secret file was generated, private.
    assert!(db.dir.path().join(".tether-secret").exists());
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    assert_eq!(s.expect_close().await, Some(GoodbyeReason::Shutdown));
    let exit = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    assert!(exit.success());
    while let Ok(line) = rx.recv_timeout(Duration::from_secs(2)) {
        log.push(line);
    }
    let log = log.join("\n");
    // One info line per login, the server's (the realm's `connected` is
    // debug); `login refused` lines (alice's wrong password above) do not
    // count: only a session has an id.
    assert!(
        log.lines().any(|l| l.contains(" INFO ")
            && l.contains(": login peer=")
            && l.contains("user=alice")
            && l.contains(" session=")),
        "{log}"
    );
    assert!(!log.contains("alice connected"), "{log}");
    for reason in ["wrong_proof", "inactive", "unknown_user"] {
        assert!(
            log.lines()
                .any(|l| l.contains(" INFO ") && l.contains(&format!("reason={reason}"))),
            "{reason}: {log}"
        );
    }
    assert!(log.contains("alice disconnected"), "{log}");
    assert!(log.contains("shut down"), "{log}");
    // Never a password, proof, key or hash in the log.
    for secret in [
        password(DB, "alice"),
        user(DB, "alice")["password_hash"].as_str().unwrap(),
    ] {
        assert!(!log.contains(secret));
    }
    assert!(!log.contains("p="));
}

/// `tether serve` with its stderr lines sent to the receiver.
/// A `tether serve` process, killed when dropped (a failing test leaves
/// none behind).
struct Serve(std::process::Child);

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn_serve(args: &[&str], dir: &std::path::Path) -> (Serve, Receiver<String>) {
    let mut all = vec!["serve"];
    all.extend_from_slice(args);
    let mut child = tether(&all)
        .current_dir(dir)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            let _ = tx.send(line);
        }
    });
    (Serve(child), rx)
}

/// Lines until one satisfies `done` (which is returned last).
fn lines_until(rx: &Receiver<String>, mut done: impl FnMut(&str) -> bool) -> Vec<String> {
    let mut lines = Vec::new();
    loop {
        let line = rx
            .recv_timeout(Duration::from_secs(10))
            .unwrap_or_else(|_| panic!("no such line; so far:\n{}", lines.join("\n")));
        let last = done(&line);
        lines.push(line);
        if last {
            return lines;
        }
    }
}

fn stop(mut serve: Serve) {
    let _ = Command::new("kill")
        .args(["-TERM", &serve.0.id().to_string()])
        .status();
    let _ = serve.0.wait();
}

#[test]
fn config_file_under_env_under_flags_and_printed_redacted() {
    let db = Db::copy(DB);
    let file = db.dir.path().join("tether.toml");
    std::fs::write(
        &file,
        "database = \"postgres://django:hunter2@db.example/site\"\n\
         heartbeat = 7\nmax_sessions = 500\nsecret = \"file-secret-0123456789\"\n\
         forward_builtin = [\"echo\", \"whoami\"]\nno_last_login = true\n",
    )
    .unwrap();
    let out = tether(&[
        "serve",
        "--config",
        file.to_str().unwrap(),
        "--heartbeat",
        "9",
        "--print-config",
    ])
    .env("DATABASE_URL", db.url())
    .output()
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for line in [
        format!("database = \"{}\"  # environment", db.url()),
        "heartbeat = 9  # flag".into(),
        "max_sessions = 500  # file".into(),
        "# secret = \"<redacted>\"  # file".into(),
        "forward_builtin = [\"echo\", \"whoami\"]  # file".into(),
        "no_last_login = true  # file".into(),
        "max_frame = 16384  # default".into(),
    ] {
        assert!(stdout.lines().any(|l| l == line), "{line:?} in\n{stdout}");
    }
    assert!(!stdout.contains("file-secret") && !stdout.contains("hunter2"));
    // The printed configuration is itself a valid file.
    let printed = db.dir.path().join("printed.toml");
    std::fs::write(&printed, stdout.as_bytes()).unwrap();
    let again = tether(&[
        "serve",
        "--config",
        printed.to_str().unwrap(),
        "--print-config",
    ])
    .output()
    .unwrap();
    assert!(
        again.status.success(),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    assert!(String::from_utf8_lossy(&again.stdout).contains("heartbeat = 9  # file"));

    // A misspelt key: an error naming the nearest, nothing started.
    std::fs::write(&file, "max_sesions = 3\n").unwrap();
    let out = tether(&["serve", "--config", file.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("unknown key \"max_sesions\"; did you mean \"max_sessions\"?"),
        "{stderr}"
    );
    // A bad value is checked as the flag's.
    std::fs::write(&file, "max_frame = 100\n").unwrap();
    let out = tether(&["serve", "--config", file.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--max-frame"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_are_one_object_per_line() {
    let db = Db::copy(DB);
    let (child, rx) = spawn_serve(
        &[
            "--listen",
            "127.0.0.1:0",
            "--database",
            &db.url(),
            "--log-format",
            "json",
        ],
        db.dir.path(),
    );
    let lines = lines_until(&rx, |l| l.contains("\"listening\""));
    let parse = |l: &str| -> serde_json::Value {
        serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"))
    };
    let listening = parse(lines.last().unwrap());
    let addr: std::net::SocketAddr = listening["addr"].as_str().unwrap().parse().unwrap();
    assert!(login(addr, "eve", "eve-password").await.is_err());
    let mut s = login(addr, "alice", password(DB, "alice")).await.unwrap();
    assert_eq!(s.echo("json").await, "json");
    drop(s);
    let more = lines_until(&rx, |l| l.contains("alice disconnected"));
    stop(child);
    let lines: Vec<serde_json::Value> = lines.iter().chain(&more).map(|l| parse(l)).collect();
    for l in &lines {
        for field in ["timestamp", "level", "target", "message"] {
            assert!(l[field].is_string(), "{field} in {l}");
        }
        assert!(l["timestamp"].as_str().unwrap().ends_with('Z'), "{l}");
    }
    let refused = lines
        .iter()
        .find(|l| l["message"] == "login refused")
        .expect("a refusal line");
    assert_eq!(refused["level"], "INFO");
    assert_eq!(refused["user"], "eve");
    assert_eq!(refused["code"], "unauthorized");
    assert_eq!(refused["reason"], "inactive");
    let login = lines
        .iter()
        .find(|l| l["message"] == "login")
        .expect("a login line");
    assert_eq!(login["user"], "alice");
    let disconnected = lines.last().unwrap();
    assert_eq!(disconnected["span"]["name"], "session");
    assert_eq!(disconnected["span"]["user"], "alice");
    assert!(disconnected["reason"].is_string(), "{disconnected}");
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_rereads_the_log_filter() {
    let db = Db::copy(DB);
    let file = db.dir.path().join("tether.toml");
    std::fs::write(&file, "log_level = \"warn\"\n").unwrap();
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let (child, rx) = spawn_serve(
        &[
            "--listen",
            &listen,
            "--database",
            &db.url(),
            "--config",
            file.to_str().unwrap(),
        ],
        db.dir.path(),
    );
    let addr: std::net::SocketAddr = listen.parse().unwrap();
    // At warn, a refusal (info) is not logged.
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(login(addr, "eve", "eve-password").await.is_err());
    std::fs::write(&file, "log_level = \"info\"\n").unwrap();
    let status = Command::new("kill")
        .args(["-HUP", &child.0.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let lines = lines_until(&rx, |l| l.contains("configuration reloaded"));
    assert!(
        !lines.iter().any(|l| l.contains("login refused")),
        "{lines:?}"
    );
    assert!(
        lines.last().unwrap().contains("log_level=info"),
        "{lines:?}"
    );
    assert!(login(addr, "eve", "eve-password").await.is_err());
    let lines = lines_until(&rx, |l| l.contains("login refused"));
    assert!(
        lines.last().unwrap().contains("reason=inactive"),
        "{lines:?}"
    );
    stop(child);
}

/// SIGHUP applies a changed session limit and throttle to the next logins
/// while a session stays up, and names what needs a restart.
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_limits_and_throttle_without_dropping_sessions() {
    use tether_core::message::RefusalCode;
    let db = Db::copy(DB);
    let file = db.dir.path().join("tether.toml");
    std::fs::write(&file, "max_sessions = 1\nthrottle_pair_failures = 5\n").unwrap();
    let (child, rx) = spawn_serve(
        &[
            "--listen",
            "127.0.0.1:0",
            "--database",
            &db.url(),
            "--config",
            file.to_str().unwrap(),
        ],
        db.dir.path(),
    );
    let listening = lines_until(&rx, |l| l.contains("listening"));
    let addr: std::net::SocketAddr = listening
        .last()
        .unwrap()
        .rsplit("addr=")
        .next()
        .unwrap()
        .parse()
        .unwrap();
    // Two wrong passwords: within the 5 free failures.
    for _ in 0..2 {
        let e = login(addr, "nobody", "wrong").await.unwrap_err();
        assert_eq!(e.code(), Some(RefusalCode::Unauthorized));
    }
    let alice = password(DB, "alice");
    // A refused login gives its session place back before the refusal
    // leaves, so a login right after one is not `busy`.
    let mut first = login(addr, "alice", alice).await.unwrap();
    assert_eq!(first.echo("one").await, "one");
    // One session at most: a second login is refused `busy`.
    let e = login(addr, "alice", alice).await.unwrap_err();
    assert_eq!(e.code(), Some(RefusalCode::Busy));
    std::fs::write(
        &file,
        "max_sessions = 2\nthrottle_pair_failures = 2\nrevalidate = 5\n",
    )
    .unwrap();
    let status = Command::new("kill")
        .args(["-HUP", &child.0.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let lines = lines_until(&rx, |l| l.contains("need a restart"));
    let reloaded = lines
        .iter()
        .find(|l| l.contains("configuration reloaded"))
        .unwrap_or_else(|| panic!("{lines:?}"));
    assert!(
        reloaded.contains("changed=max_sessions,throttle_pair_failures"),
        "{reloaded}"
    );
    assert!(
        lines.last().unwrap().contains("keys=revalidate"),
        "{lines:?}"
    );
    // The new limit: a second session; the first is still up.
    let mut second = login(addr, "alice", alice).await.unwrap();
    assert_eq!(second.echo("two").await, "two");
    assert_eq!(first.echo("still up").await, "still up");
    // A third is beyond the new limit.
    let e = login(addr, "alice", alice).await.unwrap_err();
    assert_eq!(e.code(), Some(RefusalCode::Busy));
    // The new throttle: the pair's two failures are its free ones now.
    let e = login(addr, "nobody", "wrong").await.unwrap_err();
    assert_eq!(e.code(), Some(RefusalCode::Throttled));
    // A second SIGHUP with nothing new changes nothing, and still says
    // what waits for a restart.
    let status = Command::new("kill")
        .args(["-HUP", &child.0.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let lines = lines_until(&rx, |l| l.contains("need a restart"));
    assert!(
        lines
            .iter()
            .any(|l| l.contains("configuration reloaded") && l.contains("server=[]")),
        "{lines:?}"
    );
    assert_eq!(first.echo("after").await, "after");
    drop((first, second));
    stop(child);
}

/// deploy/tether.service's ExecStart line, run as systemd would run it
/// (its paths pointed at this build and a temporary state directory):
/// it serves, says READY=1 on NOTIFY_SOCKET once listening, STOPPING=1 on
/// SIGTERM, and keeps its secret in the state directory.
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_units_exec_start_serves_and_notifies_systemd() {
    use std::os::unix::fs::PermissionsExt as _;
    let unit = std::fs::read_to_string(repo_root().join("deploy/tether.service")).unwrap();
    let exec = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .expect("an ExecStart line");
    let db = Db::copy(DB);
    let state = tempfile::tempdir().unwrap();
    let config = state.path().join("tether.toml");
    let port = free_port();
    std::fs::write(
        &config,
        format!(
            "database = \"{}\"\nlisten = \"127.0.0.1:{port}\"\nlog_format = \"json\"\n",
            db.url()
        ),
    )
    .unwrap();
    let line = exec
        .replace("/usr/local/bin/tether", TETHER)
        .replace("/etc/tether/tether.toml", config.to_str().unwrap())
        .replace("${STATE_DIRECTORY}", state.path().to_str().unwrap());
    assert!(!line.contains('$'), "{line}");
    let words: Vec<&str> = line.split_whitespace().collect();
    let notify = state.path().join("notify");
    let socket = std::os::unix::net::UnixDatagram::bind(&notify).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let child = Command::new(words[0])
        .args(&words[1..])
        .current_dir(state.path())
        .env_remove("DATABASE_URL")
        .env_remove("TETHER_SECRET")
        .env_remove("RUST_LOG")
        .env("NOTIFY_SOCKET", &notify)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let serve = Serve(child);
    let mut buf = [0u8; 256];
    let n = socket.recv(&mut buf).expect("READY=1 on NOTIFY_SOCKET");
    assert!(
        String::from_utf8_lossy(&buf[..n]).contains("READY=1"),
        "{}",
        String::from_utf8_lossy(&buf[..n])
    );
    // Ready means listening: a device logs in at once.
    let addr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut s = login(addr, "alice", password(DB, "alice")).await.unwrap();
    assert_eq!(s.echo("unit").await, "unit");
    // The secret and the v2 server key in the state directory, the
    // owner's only.
    for file in ["secret", ".tether-server-key"] {
        let mode = std::fs::metadata(state.path().join(file))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{file}");
    }
    let pid = serve.0.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let n = socket.recv(&mut buf).expect("STOPPING=1 on NOTIFY_SOCKET");
    assert!(String::from_utf8_lossy(&buf[..n]).contains("STOPPING=1"));
    assert_eq!(s.expect_close().await, Some(GoodbyeReason::Shutdown));
    let mut serve = serve;
    let status = serve.0.wait().unwrap();
    assert!(status.success());
}

/// `tether device` as a test device against a real server: it answers
/// device_info, echoes or refuses other calls, prints what arrives, and
/// sends a notification per stdin line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_answers_echoes_prints_and_notifies() {
    use std::io::Write as _;
    use tether_core::method::builtin::DeviceInfo;
    use tether_server::realm::CallError;
    let db = Db::copy(DB);
    let realm = TestRealm::default();
    let server = start_with(
        tether_server::StoreConfig::new(db.url()),
        test_config(),
        realm.clone(),
    )
    .await;
    for refuse in [false, true] {
        let addr = server.addr.to_string();
        let mut args = vec!["device", "--server", &addr, "--user", "alice"];
        if refuse {
            args.push("--refuse-unknown");
        }
        let mut child = tether(&args)
            .env("TETHER_PASSWORD", password(DB, "alice"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut stdin = child.stdin.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let _ = tx.send(line);
            }
        });
        let next = || rx.recv_timeout(Duration::from_secs(10)).expect("a line");
        assert!(next().starts_with("logged in as alice (session "));
        let mind = realm.minds.lock().unwrap().last().unwrap().clone();
        let info = mind.call::<DeviceInfo>(&()).await.unwrap();
        assert_eq!(
            info.get().firmware,
            format!("tether-device/{}", env!("CARGO_PKG_VERSION"))
        );
        assert_eq!(next(), "call device_info  -> answered");
        let r = mind
            .call_raw("thermostat.set", vec![1, 2, 3], Duration::from_secs(5))
            .await;
        if refuse {
            assert!(matches!(r, Err(CallError::Remote(_))), "{r:?}");
            assert_eq!(next(), "call thermostat.set 010203 -> refused");
        } else {
            assert_eq!(r.unwrap(), vec![1, 2, 3]);
            assert_eq!(next(), "call thermostat.set 010203 -> echoed");
        }
        mind.notify::<Echo>(&"hi").await.unwrap();
        assert_eq!(next(), "notify echo 026869");
        stdin.write_all(b"temperature 21.5\n").unwrap();
        assert_eq!(next(), "sent temperature");
        for _ in 0..100 {
            if !realm.notes.lock().unwrap().is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let note = realm.notes.lock().unwrap().pop().unwrap();
        assert_eq!(note, ("temperature".to_string(), b"\x0421.5".to_vec()));
        // Stdin closed: it stays connected until the session ends.
        drop(stdin);
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(child.try_wait().unwrap().is_none());
        mind.close(GoodbyeReason::Kicked);
        let closed = next();
        assert!(closed.starts_with("closed: "), "{closed}");
        let status = tokio::task::spawn_blocking(move || child.wait().unwrap())
            .await
            .unwrap();
        assert!(status.success());
    }
    server.handle.shutdown();
}

/// `--admin-tls-cert/--admin-tls-key`: the admin API speaks HTTPS (a
/// certificate made by openssl, trusted by the client), and plain HTTP gets
/// no answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_api_over_tls() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let db = Db::copy(DB);
    let dir = db.dir.path();
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let made = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
        ])
        .args(["-nodes", "-days", "2", "-subj", "/CN=localhost"])
        .args(["-addext", "subjectAltName=IP:127.0.0.1"])
        .args(["-addext", "basicConstraints=critical,CA:FALSE"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stderr(Stdio::null())
        .status()
        .expect("openssl");
    assert!(made.success());
    let (serve, rx) = spawn_serve(
        &[
            "--listen",
            "127.0.0.1:0",
            "--database",
            &db.url(),
            "--admin",
            "127.0.0.1:0",
            "--admin-tls-cert",
            cert.to_str().unwrap(),
            "--admin-tls-key",
            key.to_str().unwrap(),
        ],
        dir,
    );
    let lines = lines_until(&rx, |l| l.contains("admin API listening"));
    let url = lines
        .last()
        .unwrap()
        .split("url=")
        .nth(1)
        .unwrap()
        .trim()
        .to_string();
    let addr: std::net::SocketAddr = url
        .strip_prefix("https://")
        .expect("an https URL")
        .trim_end_matches('/')
        .parse()
        .unwrap();
    #[allow(deprecated)]
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    {
        use rustls_pki_types::pem::PemObject as _;
        for c in rustls_pki_types::CertificateDer::pem_file_iter(&cert).unwrap() {
            roots.add(c.unwrap()).unwrap();
        }
    }
    let client = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(client));
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls_pki_types::ServerName::IpAddress(addr.ip().into());
    let mut tls = connector.connect(name, tcp).await.unwrap();
    tls.write_all(b"GET /livez HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    tls.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with("{\"status\":\"alive\"}"), "{answer}");
    // Plain HTTP on the TLS port: no HTTP answer.
    let mut plain = tokio::net::TcpStream::connect(addr).await.unwrap();
    plain
        .write_all(b"GET /livez HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut bytes = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), plain.read_to_end(&mut bytes)).await;
    assert!(!bytes.starts_with(b"HTTP/1.1 200"));
    stop(serve);
}

/// A v2 login to `addr` as alice (NK towards `pin`, NN without) and one
/// `echo`; the refusal code if the server refused.
async fn v2_login_echo(addr: std::net::SocketAddr, pin: Option<[u8; 32]>) -> Result<(), String> {
    use tether_test_support::client::{self, Protocol};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut rx = vec![0u8; 4096];
    let mut rng = rand::rng();
    let mut conn = client::login(
        &mut stream,
        &mut rx,
        "alice",
        tether_core::scram::ClientCredentials::Password(password(DB, "alice")),
        Protocol::V2(pin),
        &mut rng,
    )
    .await
    .map_err(|e| {
        e.refusal()
            .map_or_else(|| format!("login: {e}"), str::to_string)
    })?;
    let reply =
        client::call_typed::<Echo, _, _>(&mut stream, &mut conn, &"rotated", |r| r.to_string())
            .await
            .map_err(|e| format!("echo: {e}"))?;
    assert_eq!(reply, "rotated");
    client::close(&mut stream, &mut conn)
        .await
        .map_err(|e| format!("goodbye: {e}"))
}

/// `tether call` against `tether serve` speaks v2 by default: NN without
/// the server's key, NK with it (`--server-key` or `TETHER_SERVER_KEY`),
/// v1 only with `--protocol 1`; a wrong key is one sentence and exit 2.
#[test]
fn call_speaks_v2_by_default_and_pins_the_server_key_when_given() {
    let db = Db::copy(DB);
    let file = db.dir.path().join("server.key");
    let (key, _) = server_key_cmd(&file, &[]);
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let (child, rx) = spawn_serve(
        &[
            "--listen",
            &listen,
            "--database",
            &db.url(),
            "--server-key-file",
            file.to_str().unwrap(),
        ],
        db.dir.path(),
    );
    lines_until(&rx, |l| l.contains("listening"));
    let call = |more: &[&str], env_key: Option<&str>| {
        let mut args = vec!["call", "--server", &listen, "--user", "alice"];
        args.extend_from_slice(more);
        args.extend_from_slice(&["echo", "over the wire"]);
        let mut cmd = tether(&args);
        cmd.env("TETHER_PASSWORD", "alice-password")
            .env_remove("TETHER_SERVER_KEY");
        if let Some(k) = env_key {
            cmd.env("TETHER_SERVER_KEY", k);
        }
        cmd.output().unwrap()
    };
    let logged_in_as = |rx: &Receiver<String>| {
        let lines = lines_until(rx, |l| l.contains("protocol=") && l.contains("session="));
        let line = lines.last().unwrap().clone();
        let field = |name: &str| {
            line.split_whitespace()
                .find_map(|f| f.strip_prefix(&format!("{name}=")))
                .map(|v| v.trim_matches('"').to_string())
                .unwrap_or_default()
        };
        (field("protocol"), field("noise"))
    };
    let hex_key = hex::encode(key);
    for (more, env_key, protocol, noise) in [
        (vec![], None, "2", "NN"),
        (vec!["--server-key", hex_key.as_str()], None, "2", "NK"),
        (vec![], Some(hex_key.as_str()), "2", "NK"),
        (vec!["--protocol", "1"], None, "1", "none"),
    ] {
        let out = call(&more, env_key);
        assert!(
            out.status.success(),
            "{more:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(String::from_utf8_lossy(&out.stdout), "over the wire\n");
        assert_eq!(
            logged_in_as(&rx),
            (protocol.to_string(), noise.to_string()),
            "{more:?} {env_key:?}"
        );
    }
    // A key the server does not hold: refused, said in one sentence.
    let out = call(&["--server-key", &"ab".repeat(32)], None);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("login refused: unknown_key") && stderr.contains("--server-key"),
        "{stderr}"
    );
    // Options that cannot work are refused before connecting.
    for (more, says) in [
        (vec!["--server-key", "abcd"], "2 bytes, a server key is 32"),
        (vec!["--server-key", "not hex"], "not hex"),
        (
            vec!["--protocol", "1", "--server-key", hex_key.as_str()],
            "protocol v1 has no server key",
        ),
    ] {
        let out = call(&more, None);
        assert_eq!(out.status.code(), Some(2), "{more:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(says), "{more:?}: {stderr}");
    }
    stop(child);
}

/// The public key `tether keys --server ARGS` prints, and its stderr.
fn server_key_cmd(file: &std::path::Path, more: &[&str]) -> ([u8; 32], String) {
    let mut args = vec![
        "keys",
        "--server",
        "--server-key-file",
        file.to_str().unwrap(),
    ];
    args.extend_from_slice(more);
    let out = tether(&args).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{stderr}");
    let key = hex::decode(String::from_utf8_lossy(&out.stdout).trim())
        .ok()
        .and_then(|k| k.try_into().ok())
        .unwrap_or_else(|| panic!("not a key: {:?}", out.stdout));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "the key file is the owner's only");
    }
    (key, stderr)
}

/// Key rotation as std-server/README.md has the operator do it, against a
/// running `tether serve`: `--rotate` and SIGHUP, both keys served;
/// `--retire-previous` and SIGHUP, the old pin refused `unknown_key`.
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_rotation_serves_both_keys_until_the_previous_is_retired() {
    let db = Db::copy(DB);
    let file = db.dir.path().join("server.key");
    let (old, _) = server_key_cmd(&file, &[]);
    assert_eq!(
        server_key_cmd(&file, &[]).0,
        old,
        "read again, not made anew"
    );
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let (child, rx) = spawn_serve(
        &[
            "--listen",
            &listen,
            "--database",
            &db.url(),
            "--server-key-file",
            file.to_str().unwrap(),
        ],
        db.dir.path(),
    );
    let hup = |what: &str| {
        let status = Command::new("kill")
            .args(["-HUP", &child.0.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let lines = lines_until(&rx, |l| {
            l.contains("server static key (v2) reloaded")
                || l.contains("cannot read the server key")
        });
        let last = lines.last().unwrap();
        assert!(last.contains("reloaded"), "{what}: {lines:?}");
        last.clone()
    };
    let addr: std::net::SocketAddr = listen.parse().unwrap();
    lines_until(&rx, |l| l.contains("listening"));
    let login_line = |key: &str| {
        let lines = lines_until(&rx, |l| l.contains("protocol=") && l.contains("session="));
        let last = lines.last().unwrap();
        assert!(last.contains(&format!("server_key=\"{key}\"")), "{lines:?}");
    };
    if let Err(e) = v2_login_echo(addr, Some(old)).await {
        let lines: Vec<String> = rx.try_iter().collect();
        panic!("{e}: {lines:#?}");
    }
    login_line("current");

    // Step 1: a new current key, the old one kept as previous.
    let (new, stderr) = server_key_cmd(&file, &["--rotate"]);
    assert_ne!(new, old);
    assert!(stderr.contains(&hex::encode(old)), "{stderr}");
    // Until the server reloads, it holds the old key only.
    assert_eq!(
        v2_login_echo(addr, Some(new)).await.unwrap_err(),
        "unknown_key"
    );
    let line = hup("rotated");
    assert!(
        line.contains(&hex::encode(new)) && line.contains(&hex::encode(old)),
        "{line}"
    );
    // Devices pinning either key log in; the log says which.
    v2_login_echo(addr, Some(old)).await.unwrap();
    login_line("previous");
    v2_login_echo(addr, Some(new)).await.unwrap();
    login_line("current");
    v2_login_echo(addr, None).await.unwrap();
    login_line("none");

    // Step 2: the previous key retired.
    let (current, stderr) = server_key_cmd(&file, &["--retire-previous"]);
    assert_eq!(current, new);
    assert!(!stderr.contains(&hex::encode(old)), "{stderr}");
    let line = hup("retired");
    assert!(line.contains("previous=\"none\""), "{line}");
    assert_eq!(
        v2_login_echo(addr, Some(old)).await.unwrap_err(),
        "unknown_key"
    );
    v2_login_echo(addr, Some(new)).await.unwrap();
    login_line("current");
    stop(child);

    // Rotating a key file that does not exist is an error, not a new key.
    let out = tether(&[
        "keys",
        "--server",
        "--rotate",
        "--server-key-file",
        db.dir.path().join("none.key").to_str().unwrap(),
    ])
    .output()
    .unwrap();
    assert!(!out.status.success());
    assert!(!db.dir.path().join("none.key").exists());
}

/// deploy/run-sandboxed: the unit's ExecStart line under the unit's
/// restrictions applied by hand (namespaces, read-only mounts, uid 61184,
/// no capabilities), against a Django SQLite database; a device logs in,
/// stays connected and is called through the admin API.
#[cfg(target_os = "linux")]
#[test]
#[ignore = "needs root: mount and PID namespaces, setpriv to another uid"]
fn the_unit_runs_under_its_sandbox_applied_by_hand() {
    let out = Command::new(repo_root().join("deploy/run-sandboxed"))
        .env("TETHER_BIN", TETHER)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    for line in [
        "uid 61184, NoNewPrivs 1, CapBnd 0000000000000000, CapEff 0000000000000000",
        "user alice (id 1)",
        "device_info -> ",
        "tether-device/",
        "the unit's ExecStart line serves under its restrictions",
    ] {
        assert!(
            stdout.contains(line),
            "missing {line:?}\n{stdout}\n{stderr}"
        );
    }
}
