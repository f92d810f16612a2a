//! Issue 11, end to end: a real Django project (tests/django-forward, whose
//! views check every signature by hand with Python's hmac and hashlib)
//! served by gunicorn with two workers, `tether serve --forward` as a
//! process reading the same SQLite database, and a tether-firmware device
//! over a std socket.
//!
//! - a device call that a view implements with the ORM (it writes a row
//!   and answers from the database) reaches the device; notifications
//!   arrive in order; session events arrive;
//! - with gunicorn stopped, calls fail at once naming the cause, and the
//!   notifications sent meanwhile arrive once it is back;
//! - https to Django with a private CA (and a refusal without it); a wrong
//!   secret gets 403: the device sees the application's refusal;
//! - deactivation through the ORM, `set_password` and a removed permission
//!   end live sessions with `Goodbye(Revoked)` (`--revalidate 1`);
//! - a SQLite file replaced by `mv` is read by the very next login.
//!
//! Needs the venv of tests/django-forward/setup (`TETHER_FORWARD_PYTHON`, or
//! `.venv-django-forward` at the repository root).

mod firmware_support;
mod suite_support;

use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use firmware_support::TestRng;
use serde_json::Value;
use suite_support::tether_bin;
use tether_core::message::{ErrorCode, GoodbyeReason, RefusalCode};
use tether_core::method::Method;
use tether_core::method::builtin::Echo;
use tether_core::scram::{CachedKeys, ClientCredentials};
use tether_firmware::{BufferStore, CallError, Config as DeviceConfig, Error as DeviceError, host};
use tether_test_support::free_port;

const SECRET: &str = "the forwarding end-to-end secret";

/// `note(text) -> text`: the view writes a row and answers from it.
struct NoteMethod;
impl Method for NoteMethod {
    const NAME: &'static str = "note";
    type Args<'a> = &'a str;
    type Reply<'a> = &'a str;
}
impl tether_core::method::ToServer for NoteMethod {}
impl tether_core::method::ToDevice for NoteMethod {}

/// `received() -> [text]`: the user's notifications as Django stored them.
struct Received;
impl Method for Received {
    const NAME: &'static str = "received";
    type Args<'a> = ();
    type Reply<'a> = Vec<&'a str>;
}
impl tether_core::method::ToServer for Received {}
impl tether_core::method::ToDevice for Received {}

/// A view that raises (HTTP 500).
struct Fail;
impl Method for Fail {
    const NAME: &'static str = "fail";
    type Args<'a> = ();
    type Reply<'a> = ();
}
impl tether_core::method::ToServer for Fail {}
impl tether_core::method::ToDevice for Fail {}

/// A view that answers 409 with the application's code 1001.
struct AppError;
impl Method for AppError {
    const NAME: &'static str = "app_error";
    type Args<'a> = ();
    type Reply<'a> = ();
}
impl tether_core::method::ToServer for AppError {}
impl tether_core::method::ToDevice for AppError {}

/// No view.
struct Nope;
impl Method for Nope {
    const NAME: &'static str = "nope";
    type Args<'a> = ();
    type Reply<'a> = ();
}
impl tether_core::method::ToServer for Nope {}
impl tether_core::method::ToDevice for Nope {}

/// The device's notification.
struct Button;
impl Method for Button {
    const NAME: &'static str = "button";
    type Args<'a> = &'a str;
    type Reply<'a> = ();
}
impl tether_core::method::ToServer for Button {}
impl tether_core::method::ToDevice for Button {}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn python() -> PathBuf {
    std::env::var_os("TETHER_FORWARD_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join(".venv-django-forward/bin/python"))
}

/// The Django project: its database, and gunicorn when started.
struct Django {
    dir: tempfile::TempDir,
    db: PathBuf,
    port: u16,
    wal: bool,
    /// gunicorn serves https with this certificate and key.
    tls: Option<(PathBuf, PathBuf)>,
    gunicorn: Option<Child>,
}

impl Django {
    /// A fresh database (Django's migrate) with `users` (password
    /// `<name>-password`, permission devices.connect).
    fn new(users: &[&str], wal: bool) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("db.sqlite3");
        let django = Self {
            db,
            dir,
            port: free_port(),
            wal,
            tls: None,
            gunicorn: None,
        };
        django.manage(&["migrate", "--verbosity", "0"]);
        for user in users {
            django.manage(&["forwardtest", "adduser", user, &format!("{user}-password")]);
        }
        django
    }

    fn command(&self, db: &Path) -> Command {
        let mut c = Command::new(python());
        c.current_dir(repo().join("tests/django-forward"))
            .env("FORWARD_DB", db)
            .env("FORWARD_WAL", if self.wal { "1" } else { "0" })
            .env("TETHER_FORWARD_SECRET", SECRET)
            .env("PYTHONDONTWRITEBYTECODE", "1");
        c
    }

    /// `manage.py ARGS` on the project's database; its stdout.
    fn manage(&self, args: &[&str]) -> String {
        self.manage_on(&self.db, args)
    }

    fn manage_on(&self, db: &Path, args: &[&str]) -> String {
        let out = self
            .command(db)
            .arg("manage.py")
            .args(args)
            .output()
            .unwrap_or_else(|e| {
                panic!(
                    "{}: {e} (run tests/django-forward/setup)",
                    python().display()
                )
            });
        assert!(
            out.status.success(),
            "manage.py {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Makes gunicorn serve https with a certificate for 127.0.0.1 signed by
    /// a CA of its own (openssl); returns the CA's certificate.
    fn use_tls(&mut self) -> PathBuf {
        let dir = self.dir.path();
        let openssl = |args: &[&str]| {
            let out = Command::new("openssl")
                .current_dir(dir)
                .args(args)
                .output()
                .expect("openssl");
            assert!(
                out.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        let key = "-newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2";
        let split = |s: &'static str| s.split(' ').collect::<Vec<_>>();
        let mut ca = split("req -x509 -subj /CN=tether-test-ca -keyout ca.key -out ca.pem");
        ca.extend(split(key));
        openssl(&ca);
        let mut leaf = split("req -subj /CN=127.0.0.1 -keyout key.pem -out leaf.csr");
        leaf.extend(split(key));
        leaf.retain(|a| *a != "-days" && *a != "2");
        openssl(&leaf);
        std::fs::write(
            dir.join("leaf.ext"),
            "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
        )
        .unwrap();
        openssl(&split(
            "x509 -req -in leaf.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 \
             -extfile leaf.ext -out cert.pem",
        ));
        self.tls = Some((dir.join("cert.pem"), dir.join("key.pem")));
        dir.join("ca.pem")
    }

    /// gunicorn, two workers, on the project's port; returns once it
    /// accepts connections.
    fn start(&mut self) {
        let log = std::fs::File::create(self.dir.path().join("gunicorn.log")).unwrap();
        let mut command = self.command(&self.db);
        command.args(["-m", "gunicorn", "forwardsite.wsgi"]);
        if let Some((cert, key)) = &self.tls {
            command
                .arg("--certfile")
                .arg(cert)
                .arg("--keyfile")
                .arg(key);
        }
        let child = command
            .args(["--bind", &format!("127.0.0.1:{}", self.port)])
            .args([
                "--workers",
                "2",
                "--worker-class",
                "gthread",
                "--threads",
                "4",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("gunicorn starts");
        self.gunicorn = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "gunicorn did not listen: {}",
                self.gunicorn_log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops gunicorn (SIGTERM) and waits for it.
    fn stop(&mut self) {
        if let Some(mut child) = self.gunicorn.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let _ = child.wait();
        }
    }

    fn gunicorn_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("gunicorn.log")).unwrap_or_default()
    }

    fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}/tether", self.port)
    }

    /// What Django stored, in arrival order.
    fn deliveries(&self) -> Vec<Value> {
        self.manage(&["forwardtest", "deliveries"])
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

impl Drop for Django {
    fn drop(&mut self) {
        if let Some(mut child) = self.gunicorn.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// `tether serve` as a process.
struct Tether {
    child: Child,
    lines: std::sync::mpsc::Receiver<String>,
    log: Vec<String>,
    addr: SocketAddr,
}

impl Tether {
    fn start(django: &Django, extra: &[&str], secret: &str) -> Self {
        Self::start_env(django, extra, secret, None)
    }

    /// With `SSL_CERT_FILE` (the roots https is checked against).
    fn start_env(django: &Django, extra: &[&str], secret: &str, roots: Option<&Path>) -> Self {
        let mut command = Command::new(tether_bin());
        match roots {
            Some(file) => command.env("SSL_CERT_FILE", file),
            None => command.env_remove("SSL_CERT_FILE"),
        };
        let mut child = command
            .args(["serve", "--listen", "127.0.0.1:0"])
            .arg("--database")
            .arg(format!("sqlite://{}", django.db.display()))
            .args(["--forward", &django.url(), "--forward-timeout", "3"])
            .args(["--revalidate", "1", "--require-perm", "devices.connect"])
            .args(extra)
            .current_dir(django.dir.path())
            .env_remove("DATABASE_URL")
            .env_remove("TETHER_SECRET")
            .env_remove("TETHER_ADMIN_TOKEN")
            .env_remove("TETHER_FORWARD_URL")
            .env("TETHER_FORWARD_SECRET", secret)
            .env("RUST_LOG", "tether_server=debug")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("tether serve starts");
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut tether = Self {
            child,
            lines,
            log: Vec::new(),
            addr: "0.0.0.0:0".parse().unwrap(),
        };
        let line = tether.wait_for("listening addr=");
        let addr = line
            .split("addr=")
            .nth(1)
            .unwrap()
            .split_whitespace()
            .next();
        tether.addr = addr.unwrap().parse().unwrap();
        tether
    }

    fn wait_for(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.log.push(line.clone());
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(_) => panic!("no {needle:?} in the log:\n{}", self.log.join("\n")),
            }
        }
    }

    /// The log so far.
    fn log(&mut self) -> String {
        while let Ok(line) = self.lines.try_recv() {
            self.log.push(line);
        }
        self.log.join("\n")
    }
}

impl Drop for Tether {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn device_config() -> DeviceConfig {
    DeviceConfig::default().with_call_timeout(Duration::from_secs(20))
}

/// Logs `user` in with its password (`Ok`: its keys) or returns the
/// refusal.
async fn login_keys(
    addr: SocketAddr,
    user: &str,
) -> Result<CachedKeys, DeviceError<std::io::Error>> {
    let mut store: BufferStore = BufferStore::new();
    let password = format!("{user}-password");
    let login = host::connect(
        addr,
        store.buffers(),
        user,
        ClientCredentials::Password(&password),
        &mut TestRng(11),
        &device_config(),
    )
    .await?;
    let keys = login.keys.clone();
    let mut session = login.session;
    let _ = session.close().await;
    Ok(keys)
}

/// Polls `f` (every 200 ms, at most 60 s) until it holds.
async fn eventually<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "{what}: not within 60 s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs tests/django-forward/setup (Django, gunicorn)"]
async fn device_calls_notifications_and_events_go_through_django() {
    let mut django = Django::new(&["alice"], true);
    django.start();
    let mut tether = Tether::start(&django, &[], SECRET);
    let keys = login_keys(tether.addr, "alice").await.unwrap();

    let mut store: BufferStore = BufferStore::new();
    let login = host::connect(
        tether.addr,
        store.buffers(),
        "alice",
        ClientCredentials::Keys(&keys),
        &mut TestRng(12),
        &device_config(),
    )
    .await
    .unwrap();
    let mut session = login.session;
    let session_id = session.session_id();
    let mut mind = ();

    // The view writes a row with the ORM and answers from the database.
    let reply = session
        .call::<NoteMethod, _>(&"first light", &mut mind)
        .await
        .unwrap();
    assert_eq!(reply, "note 1: first light (1 from this user)");
    let reply = session
        .call::<NoteMethod, _>(&"second", &mut mind)
        .await
        .unwrap();
    assert_eq!(reply, "note 2: second (2 from this user)");

    // Errors as the contract maps them.
    match session.call::<Fail, _>(&(), &mut mind).await {
        Err(CallError::Remote { code, message }) => {
            assert_eq!(code, ErrorCode::FAILED);
            assert_eq!(message, "application error: HTTP 500 Internal Server Error");
        }
        other => panic!("{other:?}"),
    }
    match session.call::<AppError, _>(&(), &mut mind).await {
        Err(CallError::Remote { code, message }) => {
            assert_eq!((code, message), (ErrorCode(1001), "the valve is stuck"));
        }
        other => panic!("{other:?}"),
    }
    match session.call::<Nope, _>(&(), &mut mind).await {
        Err(CallError::Remote { code, .. }) => assert_eq!(code, ErrorCode::UNKNOWN_METHOD),
        other => panic!("{other:?}"),
    }
    // The built-ins stay on the server.
    assert_eq!(
        session.call::<Echo, _>(&"local", &mut mind).await.unwrap(),
        "local"
    );

    // Notifications arrive in order.
    let sent: Vec<String> = (0..12).map(|i| format!("press {i}")).collect();
    for text in &sent {
        session.notify::<Button>(&text.as_str()).await.unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let got = session.call::<Received, _>(&(), &mut mind).await.unwrap();
        if got.len() == sent.len() {
            assert_eq!(got, sent.iter().map(String::as_str).collect::<Vec<_>>());
            break;
        }
        assert!(got.len() < sent.len(), "{got:?}");
        assert!(Instant::now() < deadline, "notifications: {got:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // gunicorn stops: calls fail at once, naming the cause.
    django.stop();
    let started = Instant::now();
    match session
        .call::<NoteMethod, _>(&"while down", &mut mind)
        .await
    {
        Err(CallError::Remote { code, message }) => {
            assert_eq!(code, ErrorCode::FAILED, "{message}");
            assert!(
                message.contains(&format!(
                    "cannot reach the application at 127.0.0.1:{}",
                    django.port
                )) && message.to_lowercase().contains("refused"),
                "{message}"
            );
        }
        other => panic!("{other:?}"),
    }
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "within --forward-timeout"
    );
    // Notifications sent meanwhile arrive once it is back.
    let down: Vec<String> = (0..5).map(|i| format!("while down {i}")).collect();
    for text in &down {
        session.notify::<Button>(&text.as_str()).await.unwrap();
    }
    session
        .serve_for(&mut mind, Duration::from_secs(2))
        .await
        .unwrap();
    django.start();
    let want: Vec<&str> = sent.iter().chain(&down).map(String::as_str).collect();
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let got = session.call::<Received, _>(&(), &mut mind).await.unwrap();
        if got.len() == want.len() {
            assert_eq!(got, want);
            break;
        }
        assert!(Instant::now() < deadline, "after restart: {got:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    session.close().await.unwrap();

    // The session's events: connected first, disconnected last.
    let events = eventually("the disconnected event", || {
        let events: Vec<Value> = django
            .deliveries()
            .into_iter()
            .filter(|d| d["kind"] == "event" && d["session"] == session_id)
            .collect();
        (events.len() == 2).then_some(events)
    })
    .await;
    assert_eq!(events[0]["body"]["event"], "connected");
    assert_eq!(events[0]["body"]["username"], "alice");
    assert_eq!(events[0]["body"]["session_id"], session_id);
    assert_eq!(events[1]["body"]["event"], "disconnected");
    assert_eq!(events[1]["body"]["reason"], "normal");
    let log = tether.log();
    assert!(!log.contains(SECRET), "the forward secret is never logged");
    assert!(
        log.contains("delivery to the application failed; retrying"),
        "{log}"
    );
}

/// One `note` call from a device logged in with `keys`.
async fn note(
    addr: SocketAddr,
    keys: &CachedKeys,
    text: &str,
) -> Result<String, (ErrorCode, String)> {
    let mut store: BufferStore = BufferStore::new();
    let login = host::connect(
        addr,
        store.buffers(),
        "alice",
        ClientCredentials::Keys(keys),
        &mut TestRng(13),
        &device_config(),
    )
    .await
    .unwrap();
    let mut session = login.session;
    let result = match session.call::<NoteMethod, _>(&text, &mut ()).await {
        Ok(reply) => Ok(reply.to_string()),
        Err(CallError::Remote { code, message }) => Err((code, message.to_string())),
        Err(other) => panic!("{other:?}"),
    };
    session.close().await.unwrap();
    result
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs tests/django-forward/setup (Django, gunicorn)"]
async fn https_to_django_and_a_wrong_secret() {
    let mut django = Django::new(&["alice"], true);
    let ca = django.use_tls();
    django.start();
    // https, with the private CA as the roots.
    let trusting = Tether::start_env(&django, &[], SECRET, Some(&ca));
    let keys = login_keys(trusting.addr, "alice").await.unwrap();
    assert_eq!(
        note(trusting.addr, &keys, "over https").await,
        Ok("note 1: over https (1 from this user)".into())
    );
    // The system's roots do not know that CA: the call fails, naming why.
    let untrusting = Tether::start_env(&django, &[], SECRET, None);
    let (code, message) = note(untrusting.addr, &keys, "unverified")
        .await
        .unwrap_err();
    assert_eq!(code, ErrorCode::FAILED);
    assert!(
        message.contains("cannot reach the application") && message.contains("certificate"),
        "{message}"
    );
    // A wrong secret: Django answers 403; the device sees its refusal.
    let wrong = Tether::start_env(&django, &[], "not the secret Django checks", Some(&ca));
    assert_eq!(
        note(wrong.addr, &keys, "forged?").await,
        Err((ErrorCode::FORBIDDEN, "bad signature".into()))
    );
    // Neither wrote a note.
    assert_eq!(
        note(trusting.addr, &keys, "again").await,
        Ok("note 2: again (2 from this user)".into())
    );
}

/// Waits for the session to end; how it ended.
async fn ended(session: &mut host::HostSession<'_>) -> DeviceError<std::io::Error> {
    tokio::time::timeout(Duration::from_secs(30), session.serve(&mut ()))
        .await
        .expect("revoked within 30 s")
        .unwrap_err()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs tests/django-forward/setup (Django, gunicorn)"]
async fn revoked_through_the_orm_and_a_replaced_database_file() {
    // A rollback journal: a file replaced by `mv` must not meet an old
    // -wal file (see std-server/README.md).
    let mut django = Django::new(&["alice", "bob", "carol", "dave"], false);
    django.start();
    let mut tether = Tether::start(&django, &[], SECRET);
    let addr = tether.addr;

    let mut sessions = Vec::new();
    let mut stores: Vec<BufferStore> = (0..4).map(|_| BufferStore::new()).collect();
    for (store, user) in stores.iter_mut().zip(["alice", "bob", "carol", "dave"]) {
        let password = format!("{user}-password");
        let login = host::connect(
            addr,
            store.buffers(),
            user,
            ClientCredentials::Password(&password),
            &mut TestRng(14),
            &device_config(),
        )
        .await
        .unwrap();
        sessions.push((user, login.session));
    }
    // Revalidation (every second) leaves them alone.
    for (_, s) in sessions.iter_mut() {
        s.serve_for(&mut (), Duration::from_millis(1500))
            .await
            .unwrap();
    }
    let mut sessions = sessions.into_iter();
    let (_, mut alice) = sessions.next().unwrap();
    let (_, mut bob) = sessions.next().unwrap();
    let (_, mut carol) = sessions.next().unwrap();
    let (_, mut dave) = sessions.next().unwrap();

    django.manage(&["forwardtest", "deactivate", "alice"]);
    let end = ended(&mut alice).await;
    assert!(
        matches!(end, DeviceError::Closed(GoodbyeReason::Revoked)),
        "{end:?}"
    );
    django.manage(&["forwardtest", "set-password", "bob", "a new password"]);
    let end = ended(&mut bob).await;
    assert!(
        matches!(end, DeviceError::Closed(GoodbyeReason::Revoked)),
        "{end:?}"
    );
    django.manage(&["forwardtest", "remove-perm", "carol"]);
    let end = ended(&mut carol).await;
    assert!(
        matches!(end, DeviceError::Closed(GoodbyeReason::Revoked)),
        "{end:?}"
    );
    // dave is untouched.
    assert_eq!(
        dave.call::<Echo, _>(&"still", &mut ()).await.unwrap(),
        "still"
    );
    for user in ["alice", "bob", "carol"] {
        match login_keys(addr, user).await {
            Err(DeviceError::Refused { code, .. }) => assert_eq!(code, RefusalCode::Unauthorized),
            other => panic!("{user}: {other:?}"),
        }
    }
    let revoked = eventually("three disconnected events", || {
        let reasons: Vec<Value> = django
            .deliveries()
            .into_iter()
            .filter(|d| d["kind"] == "event" && d["body"]["event"] == "disconnected")
            .map(|d| d["body"]["reason"].clone())
            .collect();
        (reasons.len() >= 3).then_some(reasons)
    })
    .await;
    assert!(revoked.iter().all(|r| r == "revoked"), "{revoked:?}");

    // The database file is replaced by `mv`: dave deactivated and erin
    // added in the new file. The very next logins read it.
    let new = django.dir.path().join("restored.sqlite3");
    std::fs::copy(&django.db, &new).unwrap();
    django.manage_on(&new, &["forwardtest", "deactivate", "dave"]);
    django.manage_on(&new, &["forwardtest", "adduser", "erin", "erin-password"]);
    let status = Command::new("mv")
        .arg(&new)
        .arg(&django.db)
        .status()
        .unwrap();
    assert!(status.success());
    login_keys(addr, "erin")
        .await
        .expect("erin is in the new file");
    match login_keys(addr, "dave").await {
        Err(DeviceError::Refused { code, .. }) => assert_eq!(code, RefusalCode::Unauthorized),
        other => panic!("dave: {other:?}"),
    }
    // And dave's live session is revoked from the new file too.
    let end = ended(&mut dave).await;
    assert!(
        matches!(end, DeviceError::Closed(GoodbyeReason::Revoked)),
        "{end:?}"
    );
    let log = tether.log();
    assert!(log.contains("replaced or removed; reopening it"), "{log}");
}
