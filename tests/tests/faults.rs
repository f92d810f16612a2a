//! Faults around the real tether-server: its PostgreSQL going away and
//! coming back (through a TCP proxy that is cut and restored, and, as root,
//! the machine's real cluster stopped and started), `tether serve` draining
//! on SIGTERM, and a device whose network link is cut reconnecting with its
//! cached keys.
//!
//! PostgreSQL tests are ignored unless asked for; they need
//! `TETHER_TEST_POSTGRES_URL` (a database made by `scripts/django/migrate-url`,
//! same users and passwords as fixtures/django/default.sqlite3):
//!
//! ```sh
//! scripts/django/migrate-url postgres://postgres@127.0.0.1:5432/tether_ci_pg
//! TETHER_TEST_POSTGRES_URL=postgres://postgres@127.0.0.1:5432/tether_ci_pg \
//!     cargo test -p tether-tests --test faults -- --include-ignored
//! ```

mod firmware_support;
mod suite_support;

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use firmware_support::TestRng;
use suite_support::process::cpu_time;
use suite_support::*;
use tether_core::message::{ErrorCode, GoodbyeReason, RefusalCode};
use tether_core::method::builtin::{DeviceInfo, DeviceStatus, Echo, WhoAmI};
use tether_core::scram::ClientCredentials;
use tether_firmware::{
    Backoff, BufferStore, Error as DeviceError, Handler, Request, Responded, Responder, Retry, host,
};
use tether_server::SessionEnd;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// The PostgreSQL tests share one server (and one of them stops it).
static PG: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn pg_url() -> String {
    std::env::var("TETHER_TEST_POSTGRES_URL")
        .expect("set TETHER_TEST_POSTGRES_URL (see scripts/django/migrate-url)")
}

/// `scheme://user@host:port/db` -> (`host:port`, the same URL through `proxy`).
fn via_proxy(url: &str, proxy: SocketAddr) -> (String, String) {
    let (scheme, rest) = url.split_once("://").unwrap();
    let (userinfo, rest) = rest.split_once('@').unwrap();
    let (hostport, path) = rest.split_once('/').unwrap();
    (
        hostport.to_string(),
        format!("{scheme}://{userinfo}@{proxy}/{path}"),
    )
}

/// A password login of a fixture user with the firmware client; the
/// session is closed with a goodbye right away.
async fn device_login(addr: SocketAddr, name: &str) -> Result<u64, DeviceError<std::io::Error>> {
    let mut store: BufferStore = BufferStore::new();
    let login = host::connect(
        addr,
        store.buffers(),
        name,
        ClientCredentials::Password(password(DB, name)),
        &mut TestRng(7),
        &device_config(),
    )
    .await?;
    let mut session = login.session;
    let id = session.session_id();
    let mut mind = ();
    let me = session.call::<WhoAmI, _>(&(), &mut mind).await.unwrap();
    assert_eq!(me.username, name);
    session.close().await?;
    Ok(id)
}

/// `device_login` refused `unavailable` (retry after 5 s) within `within`.
async fn unavailable_within(addr: SocketAddr, name: &str, within: Duration) {
    let started = Instant::now();
    let r = device_login(addr, name).await;
    let took = started.elapsed();
    let e = r.expect_err("the login should be refused");
    assert!(
        matches!(
            e,
            DeviceError::Refused {
                code: RefusalCode::Unavailable,
                retry_after_secs: 5
            }
        ),
        "{name}: {e:?}"
    );
    // The firmware's reconnect policy: try again, not before 5 s.
    assert_eq!(e.retry(), Retry::Later(Duration::from_secs(5)));
    assert!(took < within, "{name}: refused after {took:?}");
}

const DB_UNAVAILABLE: &str = r#"tether_db_lookup_errors_total{kind="unavailable"}"#;
const REFUSED_UNAVAILABLE: &str = r#"tether_login_refusals_total{code="unavailable"}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL (TETHER_TEST_POSTGRES_URL, made by scripts/django/migrate-url)"]
async fn postgres_cut_sessions_continue_logins_unavailable_then_back_without_restart() {
    let _pg = PG.lock().await;
    let url = pg_url();
    let (upstream, _) = via_proxy(&url, "127.0.0.1:1".parse().unwrap());
    let mut proxy = Proxy::start(&upstream).await;
    let (_, proxied) = via_proxy(&url, proxy.addr);
    let lookup_timeout = Duration::from_secs(1);
    let mut served = serve(proxied, |_, s| s.lookup_timeout = lookup_timeout).await;
    let addr = served.addr;
    // Live sessions: a device calling in a loop, a raw client, and a
    // server-to-device call in flight across the outage.
    let bystander = Bystander::start(addr, "henry").await;
    let (mut raw, _) = raw_login(addr, "alice", password(DB, "alice"))
        .await
        .unwrap();
    let first = device_login(addr, "bob").await.unwrap();
    let base = served.snapshot();

    // PostgreSQL goes away: the pooled connections are reset and nothing
    // listens any more.
    proxy.cut().await;
    for name in ["alice", "bob", "root"] {
        unavailable_within(addr, name, Duration::from_secs(3)).await;
    }
    // Unknown users too: the server cannot tell without the database.
    let mut hs = Handshaking::hello(addr, "nobody", tether_core::scram::Mechanisms::ALL).await;
    assert_eq!(
        hs.challenge().await.unwrap_err().code(),
        Some(RefusalCode::Unavailable)
    );
    served.expect_metric(&base, REFUSED_UNAVAILABLE, 4.0).await;
    served.expect_metric(&base, DB_UNAVAILABLE, 4.0).await;
    // Live sessions never touch the database.
    bystander.progresses().await;
    assert_eq!(raw.echo("during the outage").await, "during the outage");
    let mind = served.registry.mind(raw.session_id).unwrap();
    let call = tokio::spawn(async move { mind.call::<Echo>(&"server to device").await });
    let Some(Msg::Call { id, args, .. }) = raw.recv().await else {
        panic!("the server's call")
    };
    raw.send(&tether_core::message::Message::Reply { id, result: &args })
        .await;
    assert_eq!(call.await.unwrap().unwrap().get(), "server to device");

    // PostgreSQL is back: the same tether process logs devices in again,
    // at once (the pool reconnects by itself).
    proxy.restore().await;
    let again = device_login(addr, "bob").await.unwrap();
    assert!(again > first);
    let (mut fresh, _) = raw_login(addr, "alice", password(DB, "alice"))
        .await
        .unwrap();
    assert_eq!(fresh.echo("after").await, "after");
    assert_eq!(
        raw.echo("still the same session").await,
        "still the same session"
    );
    assert!(!served.events.has_ended(raw.session_id));
    bystander.finish(&mut served).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL (TETHER_TEST_POSTGRES_URL, made by scripts/django/migrate-url)"]
async fn postgres_that_hangs_makes_logins_unavailable_within_the_lookup_timeout() {
    let _pg = PG.lock().await;
    let url = pg_url();
    let (upstream, _) = via_proxy(&url, "127.0.0.1:1".parse().unwrap());
    let mut proxy = Proxy::start(&upstream).await;
    let (_, proxied) = via_proxy(&url, proxy.addr);
    let lookup_timeout = Duration::from_millis(1500);
    let mut served = serve(proxied, |c, s| {
        s.lookup_timeout = lookup_timeout;
        c.handshake_timeout = Duration::from_secs(10);
    })
    .await;
    let addr = served.addr;
    let bystander = Bystander::start(addr, "henry").await;
    // Connections reset, then the "database" accepts and never answers (a
    // hung host, a full connection queue): each login waits at most the
    // lookup timeout, then is refused `unavailable`.
    proxy.hang().await;
    for name in ["alice", "nobody"] {
        let started = Instant::now();
        let mut hs = Handshaking::hello(addr, name, tether_core::scram::Mechanisms::ALL).await;
        let e = hs.challenge().await.unwrap_err();
        let took = started.elapsed();
        match e {
            LoginError::Refused(r) => {
                assert_eq!((r.code, r.retry_after_secs), (RefusalCode::Unavailable, 5))
            }
            other => panic!("{other:?}"),
        }
        assert!(
            took >= lookup_timeout - Duration::from_millis(100)
                && took < lookup_timeout + Duration::from_secs(2),
            "{name}: refused after {took:?}"
        );
    }
    bystander.progresses().await;
    proxy.restore().await;
    proxy.cut_connections();
    let mut ok = false;
    for _ in 0..20 {
        match device_login(addr, "alice").await {
            Ok(_) => {
                ok = true;
                break;
            }
            Err(DeviceError::Refused {
                code: RefusalCode::Unavailable,
                ..
            }) => tokio::time::sleep(Duration::from_millis(250)).await,
            Err(e) => panic!("{e:?}"),
        }
    }
    assert!(ok, "logins did not come back");
    bystander.finish(&mut served).await;
}

/// Starts the machine's PostgreSQL cluster again when dropped, whatever
/// happened, and waits until it accepts connections.
struct RestartPostgres {
    version: String,
}

fn pg_ctlcluster(version: &str, action: &str) -> std::process::ExitStatus {
    Command::new("pg_ctlcluster")
        .args(["--skip-systemctl-redirect", version, "main", action])
        .status()
        .expect("pg_ctlcluster runs")
}

fn pg_ready() -> bool {
    Command::new("pg_isready")
        .args(["-q", "-h", "127.0.0.1", "-p", "5432"])
        .status()
        .is_ok_and(|s| s.success())
}

impl Drop for RestartPostgres {
    fn drop(&mut self) {
        if !pg_ready() {
            let status = pg_ctlcluster(&self.version, "start");
            eprintln!("pg_ctlcluster {} main start: {status}", self.version);
        }
        let started = Instant::now();
        while !pg_ready() && started.elapsed() < Duration::from_secs(60) {
            std::thread::sleep(Duration::from_millis(200));
        }
        assert!(pg_ready(), "PostgreSQL did not come back");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root and the machine's PostgreSQL cluster (stops and restarts it; TETHER_TEST_POSTGRES_URL)"]
async fn real_postgres_stopped_and_restarted_under_live_sessions() {
    let _pg = PG.lock().await;
    let url = pg_url();
    let version = std::fs::read_dir("/etc/postgresql")
        .expect("/etc/postgresql")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().to_string())
        .next()
        .expect("a PostgreSQL cluster version");
    assert!(pg_ready(), "PostgreSQL is not running to begin with");
    let lookup_timeout = Duration::from_secs(1);
    let mut served = serve(url, |_, s| s.lookup_timeout = lookup_timeout).await;
    let addr = served.addr;
    let bystander = Bystander::start(addr, "henry").await;
    let (mut raw, _) = raw_login(addr, "alice", password(DB, "alice"))
        .await
        .unwrap();

    let restart = RestartPostgres {
        version: version.clone(),
    };
    let stop = tokio::task::spawn_blocking(move || pg_ctlcluster(&version, "stop"))
        .await
        .unwrap();
    assert!(stop.success(), "pg_ctlcluster stop: {stop}");
    assert!(!pg_ready());
    // Stopped: new logins are refused `unavailable` quickly.
    for name in ["alice", "bob"] {
        unavailable_within(addr, name, Duration::from_secs(3)).await;
    }
    // Live sessions go on.
    bystander.progresses().await;
    assert_eq!(raw.echo("postgres is down").await, "postgres is down");

    // Started again (the guard's job, here on purpose): the same tether
    // process logs devices in again without a restart.
    tokio::task::spawn_blocking(move || drop(restart))
        .await
        .unwrap();
    let started = Instant::now();
    let mut unavailable = 0;
    loop {
        match device_login(addr, "bob").await {
            Ok(_) => break,
            Err(DeviceError::Refused {
                code: RefusalCode::Unavailable,
                ..
            }) if started.elapsed() < Duration::from_secs(20) => {
                unavailable += 1;
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(e) => panic!("after the restart: {e:?} ({unavailable} unavailable before)"),
        }
    }
    let (mut fresh, _) = raw_login(addr, "alice", password(DB, "alice"))
        .await
        .unwrap();
    assert_eq!(fresh.echo("back").await, "back");
    assert_eq!(raw.echo("same session").await, "same session");
    bystander.finish(&mut served).await;
}

// ------------------------------------------------------------------ SIGTERM

/// The device's mind: answers `device_info` after `delay` (and says when
/// the call arrived), `echo` at once.
struct SlowMind {
    delay: Duration,
    arrived: tokio::sync::mpsc::UnboundedSender<String>,
}

impl Handler for SlowMind {
    async fn on_call(&mut self, req: Request<'_>, reply: Responder<'_>) -> Responded {
        let _ = self.arrived.send(req.method().to_string());
        if req.is::<DeviceInfo>() {
            tokio::time::sleep(self.delay).await;
            reply.ok::<DeviceInfo>(&DeviceStatus {
                firmware: "draining device",
                uptime_secs: 1,
            })
        } else if req.is::<Echo>() {
            match req.args::<Echo>() {
                Ok(text) => reply.ok::<Echo>(&text),
                Err(_) => reply.bad_arguments(),
            }
        } else {
            reply.unknown_method()
        }
    }
}

/// One HTTP/1.1 request; returns (status, body).
async fn http(addr: &str, method: &str, path: &str, body: &str) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    let text = String::from_utf8_lossy(&out).to_string();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP status in {text:?}"));
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    (status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_a_call_in_flight_then_the_device_gets_goodbye_shutdown() {
    let db = Db::copy(DB);
    let mut serve = ServeProcess::start(
        &db,
        &["--admin", "127.0.0.1:0", "--shutdown-deadline", "10"],
        "info",
    );
    let listening = serve.find("listening addr=");
    let addr: SocketAddr = ServeProcess::field(&listening, "addr").parse().unwrap();
    let admin_line = serve.find("admin API listening");
    let admin = ServeProcess::field(&admin_line, "url")
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string();

    // The device: logged in with its keys, serving the server's calls;
    // device_info takes it 1.5 s.
    let (arrived_tx, mut arrived) = tokio::sync::mpsc::unbounded_channel();
    let (called_tx, called) = tokio::sync::oneshot::channel();
    let device = tokio::spawn(async move {
        let mut store: BufferStore = BufferStore::new();
        let keys = fixture_keys("alice");
        let login = host::connect(
            addr,
            store.buffers(),
            "alice",
            ClientCredentials::Keys(&keys),
            &mut TestRng(3),
            &device_config(),
        )
        .await
        .unwrap();
        let mut session = login.session;
        let mut mind = SlowMind {
            delay: Duration::from_millis(1500),
            arrived: arrived_tx,
        };
        assert_eq!(
            session.call::<Echo, _>(&"before", &mut mind).await.unwrap(),
            "before"
        );
        called_tx.send(()).unwrap();
        let end = session.serve(&mut mind).await.unwrap_err();
        format!("{end:?}")
    });
    serve.wait_for("user=alice session="); // the server's login line
    // The device's own call is answered before anything else starts (a
    // call the server reads after SIGTERM is refused `SHUTTING_DOWN`).
    tokio::time::timeout(Duration::from_secs(10), called)
        .await
        .expect("the device's first call is answered")
        .unwrap();

    // The operator's call to the device through the admin API...
    let call = tokio::spawn({
        let admin = admin.clone();
        async move {
            http(
                &admin,
                "POST",
                "/sessions/alice/call/device_info?timeout=30",
                "null",
            )
            .await
        }
    });
    assert_eq!(
        tokio::time::timeout(Duration::from_secs(10), arrived.recv())
            .await
            .unwrap()
            .as_deref(),
        Some("device_info")
    );
    // ...is in flight when SIGTERM arrives.
    let signalled = Instant::now();
    serve.signal("-TERM");
    serve.wait_for("signal received: shutting down gracefully");
    // No new connections from now on.
    eventually(Duration::from_secs(5), "the listener closes", || {
        std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err()
    })
    .await;
    // The call finishes: the operator gets the device's answer...
    let (status, body) = tokio::time::timeout(Duration::from_secs(20), call)
        .await
        .expect("the admin call finishes")
        .unwrap();
    assert_eq!(status, 200, "{body}");
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["reply"]["firmware"], "draining device");
    assert!(
        signalled.elapsed() >= Duration::from_millis(1000),
        "the answer came before the device gave it"
    );
    // ...then the device is told the server is shutting down.
    let end = tokio::time::timeout(Duration::from_secs(20), device)
        .await
        .expect("the device's session ends")
        .unwrap();
    assert_eq!(
        end,
        format!(
            "{:?}",
            DeviceError::<std::io::Error>::Closed(GoodbyeReason::Shutdown)
        )
    );
    let (status, log) = tokio::task::spawn_blocking(move || serve.wait())
        .await
        .unwrap();
    assert!(status.success(), "exit {status}\n{log}");
    assert!(signalled.elapsed() < Duration::from_secs(12), "{log}");
    for line in ["alice disconnected", "shut down"] {
        assert!(log.contains(line), "no {line:?} in\n{log}");
    }
    assert!(!log.contains("did not close in time"), "{log}");
    assert!(!log.contains("cancelling them"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_refuses_new_calls_shutting_down_while_one_drains() {
    // The same through the library (ServerHandle::shutdown is what SIGTERM
    // triggers): a device call arriving during the drain is answered
    // SHUTTING_DOWN, the server's own call in flight still completes.
    let db = Db::copy(DB);
    let mut served = serve(db.url(), |c, _| {
        c.session.shutdown_deadline = Duration::from_secs(10)
    })
    .await;
    let (mut s, _) = raw_login(served.addr, "alice", password(DB, "alice"))
        .await
        .unwrap();
    let mind = served.registry.mind(s.session_id).unwrap();
    let call = tokio::spawn(async move { mind.call::<Echo>(&"in flight").await });
    let Some(Msg::Call { id, args, .. }) = s.recv().await else {
        panic!("the server's call")
    };
    served.handle.shutdown();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut buf = [0u8; 32];
    let echo_args = tether_core::method::encode_args::<Echo>(&"late", &mut buf)
        .unwrap()
        .to_vec();
    s.send(&tether_core::message::Message::Call {
        id: 90,
        method: "echo",
        args: &echo_args,
    })
    .await;
    match s.recv().await {
        Some(Msg::Error { id: 90, code, .. }) => assert_eq!(code, ErrorCode::SHUTTING_DOWN),
        other => panic!("{other:?}"),
    }
    // The answer to the server's call is still taken, then: goodbye.
    s.send(&tether_core::message::Message::Reply { id, result: &args })
        .await;
    assert_eq!(call.await.unwrap().unwrap().get(), "in flight");
    assert_eq!(s.goodbye_then_close().await, Some(GoodbyeReason::Shutdown));
    assert_eq!(
        served.events.ended(s.session_id).await,
        SessionEnd::Shutdown
    );
    tokio::time::timeout(Duration::from_secs(10), served.join)
        .await
        .unwrap()
        .unwrap();
}

// --------------------------------------------------------------- reconnect

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_cut_off_reconnects_and_logs_in_with_cached_keys() {
    let db = Db::copy(DB);
    let mut served = serve(db.url(), |_, _| {}).await;
    // The device reaches the server through a link that can fail.
    let mut link = Proxy::start(&served.addr.to_string()).await;
    let mut store: BufferStore = BufferStore::new();
    let mut rng = TestRng(11);
    let config = device_config();
    let mut mind = ();

    // First login: with the password (PBKDF2 runs once); keep the keys.
    let login = host::connect(
        link.addr,
        store.buffers(),
        "alice",
        ClientCredentials::Password(password(DB, "alice")),
        &mut rng,
        &config,
    )
    .await
    .unwrap();
    assert!(login.derived);
    let keys = login.keys.clone();
    let mut session = login.session;
    let first = session.session_id();
    assert_eq!(
        session.call::<Echo, _>(&"one", &mut mind).await.unwrap(),
        "one"
    );

    // The link drops (connections reset; the server stays up).
    link.cut_connections();
    let e = session
        .call::<Echo, _>(&"lost", &mut mind)
        .await
        .expect_err("the link is gone");
    assert!(e.ends_session(), "{e:?}");
    drop(session);
    assert_eq!(served.events.ended(first).await, SessionEnd::Closed);

    // Reconnect at once with the cached keys: no PBKDF2, a new session.
    let login = host::connect(
        link.addr,
        store.buffers(),
        "alice",
        ClientCredentials::Keys(&keys),
        &mut rng,
        &config,
    )
    .await
    .unwrap();
    assert!(!login.derived);
    let mut session = login.session;
    let second = session.session_id();
    assert!(second > first);
    let me = session.call::<WhoAmI, _>(&(), &mut mind).await.unwrap();
    assert_eq!((me.username, me.session_id), ("alice", second));

    // Now the link is down for a while (nothing answers at all): the
    // device retries by the firmware's policy (backoff with jitter) until
    // it is back, then logs in with the cached keys again.
    link.cut().await;
    let e = session
        .call::<Echo, _>(&"lost again", &mut mind)
        .await
        .expect_err("the link is gone");
    assert!(e.ends_session(), "{e:?}");
    drop(session);
    assert_eq!(served.events.ended(second).await, SessionEnd::Closed);
    let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_millis(400));
    let mut failures = Vec::new();
    let login = loop {
        match host::connect(
            link.addr,
            store.buffers(),
            "alice",
            ClientCredentials::Keys(&keys),
            &mut rng,
            &config,
        )
        .await
        {
            Ok(login) => break login,
            Err(e) => {
                assert!(matches!(e, DeviceError::Transport(_)), "{e:?}");
                let Retry::Later(floor) = e.retry() else {
                    panic!("{e:?} should be retried")
                };
                failures.push(format!("{e:?}"));
                if failures.len() == 3 {
                    link.restore().await;
                }
                assert!(failures.len() < 10, "{failures:?}");
                tokio::time::sleep(backoff.next_delay(&mut rng, floor)).await;
            }
        }
    };
    assert_eq!(failures.len(), 3, "{failures:?}");
    assert!(!login.derived);
    let mut session = login.session;
    let third = session.session_id();
    assert!(third > second);
    assert_eq!(
        session.call::<Echo, _>(&"back", &mut mind).await.unwrap(),
        "back"
    );
    session.close().await.unwrap();
    assert_eq!(
        served.events.ended(third).await,
        SessionEnd::Goodbye(GoodbyeReason::Normal)
    );
    // Three sessions, one account, never a second PBKDF2.
    let connected = served.events.connected();
    assert_eq!(
        connected,
        vec![
            (first, "alice".to_string()),
            (second, "alice".to_string()),
            (third, "alice".to_string())
        ]
    );
}

// ------------------------------------------------------- file descriptors

/// The descriptor limit of the starved server below: room for its own
/// descriptors (about 30: runtime, listener, SQLite readers, spare) and a
/// few dozen connections.
const NOFILE: u64 = 96;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_low_soft_descriptor_limit_is_raised_to_the_hard_one_and_checked_against_the_limits() {
    let db = Db::copy(DB);
    // Soft 100, hard what this shell has (CI: 20,000 or more).
    let hard: u64 = String::from_utf8(
        Command::new("sh")
            .args(["-c", "ulimit -Hn"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap()
    .trim()
    .parse()
    .unwrap_or(u64::MAX);
    assert!(
        hard > 200,
        "this test needs a hard descriptor limit above 200"
    );
    let mut serve = ServeProcess::start_limited(&db, &[], "info", Some("-Sn 100"));
    let raised = serve.find("file descriptor limit raised");
    assert!(raised.contains("from=100"), "{raised}");
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", serve.pid())).unwrap();
    let open_files = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    // "Max open files  SOFT  HARD  files": soft = hard (or, with an
    // unlimited hard limit, the kernel's fs.nr_open).
    let fields: Vec<&str> = open_files.split_whitespace().collect();
    let (soft, hard_now) = (fields[3], fields[4]);
    let nr_open = std::fs::read_to_string("/proc/sys/fs/nr_open").unwrap();
    if hard_now == "unlimited" {
        assert_eq!(soft, nr_open.trim(), "{open_files}");
    } else {
        assert_eq!(soft, hard_now, "{open_files}");
    }
    assert!(
        raised.contains(&format!("to={soft}")),
        "{raised}\n{open_files}"
    );
    serve.addr();
    // The default limits without --admin need 10,392 descriptors: no
    // warning unless the hard limit is below that.
    let warned = serve
        .log_after(Duration::from_millis(300))
        .iter()
        .any(|l| l.contains("is below what the limits may hold"));
    assert_eq!(warned, hard < 10_392, "hard limit {hard}");

    // A hard limit below what the limits need: one warning with the sum.
    let mut serve = ServeProcess::start_limited(
        &db,
        &["--max-sessions", "500", "--admin", "127.0.0.1:0"],
        "info",
        Some("-n 400"),
    );
    let warning = serve.find("is below what the limits may hold");
    assert!(warning.contains(" WARN "), "{warning}");
    assert!(
        warning.contains(
            "limit (400) is below what the limits may hold: 500 sessions + 64 handshakes + 256 \
             waiting + 384 admin connections + 8 database connections + 64 for the process = 1276"
        ),
        "{warning}"
    );
    serve.addr();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_descriptors_a_login_is_refused_busy_at_once_and_the_accept_loop_does_not_spin() {
    let db = Db::copy(DB);
    let mut serve = ServeProcess::start_limited(
        &db,
        &[
            "--max-handshakes",
            "1000",
            "--max-handshakes-per-address",
            "0",
            "--handshake-timeout",
            "300",
            "--log-limit-burst",
            "3",
            "--log-limit-interval",
            "600",
        ],
        "info",
        Some(&format!("-n {NOFILE}")),
    );
    let addr = serve.addr();
    let pid = serve.pid();
    // Silent connections, each holding a handshake (and a descriptor) for
    // the handshake timeout, until the server has none left (its accept
    // fails: EMFILE, logged).
    let mut silent = Vec::new();
    while !serve
        .log_after(Duration::from_millis(5))
        .iter()
        .any(|l| l.contains("Too many open files"))
    {
        assert!(
            silent.len() < 2 * NOFILE as usize,
            "the server never ran out of descriptors"
        );
        silent.push(tokio::net::TcpStream::connect(addr).await.unwrap());
    }
    assert!(
        silent.len() < NOFILE as usize,
        "{} connections",
        silent.len()
    );
    // Out of descriptors: a device is told `busy` and when to come back,
    // not left waiting until its handshake times out (20 s here).
    let mut store: BufferStore = BufferStore::new();
    let refused = host::connect(
        addr,
        store.buffers(),
        "alice",
        ClientCredentials::Password(password(DB, "alice")),
        &mut TestRng(8),
        &device_config().with_handshake_timeout(Duration::from_secs(20)),
    )
    .await
    .map(|_| ())
    .expect_err("no descriptor left for a session");
    assert!(
        matches!(
            refused,
            DeviceError::Refused {
                code: RefusalCode::Busy,
                retry_after_secs: 5
            }
        ),
        "{refused:?}"
    );
    assert_eq!(refused.retry(), Retry::Later(Duration::from_secs(5)));
    // While starved, the accept loop waits between attempts: little CPU,
    // and a few log lines (the burst of 3) instead of one per attempt.
    let (cpu, began) = (cpu_time(pid), Instant::now());
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (cpu, wall) = (cpu_time(pid) - cpu, began.elapsed());
    assert!(
        cpu < wall / 4,
        "{cpu:?} of CPU in {wall:?}: the accept loop spins"
    );
    let log = serve.log_after(Duration::from_millis(200)).to_vec();
    let starved = log
        .iter()
        .filter(|l| l.contains("no file descriptor left") || l.contains("accept failed"))
        .count();
    assert!(
        (1..=3).contains(&starved),
        "{starved} lines about missing descriptors:\n{}",
        log.join("\n")
    );
    // Descriptors back: logins work again.
    drop(silent);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match device_login(addr, "alice").await {
            Ok(_) => break,
            Err(DeviceError::Refused {
                code: RefusalCode::Busy,
                ..
            }) if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(200)).await,
            Err(e) => panic!("no login once descriptors are back: {e:?}"),
        }
    }
}
