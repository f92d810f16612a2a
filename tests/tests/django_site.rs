//! Issue 12, end to end: the whole Perspective Broker round trip through
//! django-tether. gunicorn serves examples/django-site (django-tether
//! installed with pip, `scram_sha256` first in PASSWORD_HASHERS), `tether
//! serve --forward` reads the same SQLite database, and a tether-firmware
//! device over a std socket:
//!
//! 1. logs in with a `scram_sha256` row (written by Django's set_password);
//! 2. Django receives `device_connected` (a signal receiver writes a row);
//! 3. the device calls `report_reading`, a Python method that uses
//!    `request.user` and the ORM (postcard both ways), and a notification;
//! 4. Django calls the device with `django_tether.call` (`manage.py
//!    ask_device`) and gets its answer; `django_tether.sessions()` and the
//!    admin's live sessions page list the session;
//! 5. the user is deactivated through the ORM, as the Django admin does:
//!    django-tether's post-commit `POST /revoke` ends the session at once
//!    (`--revalidate 600`, so not the server's revalidation), Django receives
//!    `device_disconnected` with reason `revoked`, and the next login is
//!    refused.
//!
//! Needs the venv of `scripts/django/test-package 5.2` (Django 5.2,
//! gunicorn, django-tether; `TETHER_SITE_PYTHON` overrides it) and a
//! `tether` with `serve --forward` and `POST /revoke` (issue 11).

mod firmware_support;
mod suite_support;

use std::future::Future;
use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use firmware_support::{DeviceMind, TestRng};
use serde::{Deserialize, Serialize};
use suite_support::tether_bin;
use tether_core::message::{ErrorCode, RefusalCode};
use tether_core::method::Method;
use tether_core::scram::{ClientCredentials, Mechanism};
use tether_firmware::{BufferStore, CallError, Config, Error, host};
use tether_test_support::free_port;

const FORWARD_SECRET: &str = "the django-site end-to-end forward secret";
const ADMIN_TOKEN: &str = "django-site-e2e-admin-token-0123456789";
const PASSWORD: &str = "thermostat password";

/// examples/django-site/thermostats/tether.py: `READING` in, `SETPOINT` out.
struct ReportReading;
impl Method for ReportReading {
    const NAME: &'static str = "report_reading";
    type Args<'a> = Reading;
    type Reply<'a> = Setpoint;
}
impl tether_core::method::ToServer for ReportReading {}

#[derive(Debug, Serialize, Deserialize)]
struct Reading {
    celsius: f32,
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Setpoint {
    target_celsius: f32,
    readings: u32,
}

/// The example's `button` notification (a postcard string).
struct Button;
impl Method for Button {
    const NAME: &'static str = "button";
    type Args<'a> = &'a str;
    type Reply<'a> = ();
}
impl tether_core::method::ToServer for Button {}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn python() -> PathBuf {
    std::env::var_os("TETHER_SITE_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join(".venv-django-tether-5.2/bin/python"))
}

/// examples/django-site on a fresh database, and gunicorn once started.
struct Site {
    dir: tempfile::TempDir,
    db: PathBuf,
    port: u16,
    admin_port: u16,
    gunicorn: Option<Child>,
}

impl Site {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let site = Self {
            db: dir.path().join("site.sqlite3"),
            dir,
            port: free_port(),
            admin_port: free_port(),
            gunicorn: None,
        };
        site.manage(&["migrate", "--verbosity", "0"]);
        let out = site.manage(&["add_device_user", "alice"]);
        assert_eq!(out.trim(), "created alice (scram_sha256)");
        site
    }

    fn command(&self) -> Command {
        let mut c = Command::new(python());
        c.current_dir(repo().join("examples/django-site"))
            .env("SITE_DB", &self.db)
            .env("TETHER_FORWARD_SECRET", FORWARD_SECRET)
            .env(
                "TETHER_ADMIN_URL",
                format!("http://127.0.0.1:{}", self.admin_port),
            )
            .env("TETHER_ADMIN_TOKEN", ADMIN_TOKEN)
            .env("TETHER_DEVICE_PASSWORD", PASSWORD)
            .env("PYTHONDONTWRITEBYTECODE", "1");
        c
    }

    /// `manage.py ARGS`: its stdout; panics with its stderr on failure.
    fn manage(&self, args: &[&str]) -> String {
        let out = self
            .command()
            .arg("manage.py")
            .args(args)
            .output()
            .unwrap_or_else(|e| {
                panic!(
                    "{}: {e} (run scripts/django/test-package 5.2)",
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

    /// Python run by `manage.py shell -c`, with the user model as `User`.
    fn shell(&self, code: &str) -> String {
        let code = format!(
            "from django.contrib.auth import get_user_model\n\
             from thermostats.models import DeviceEvent, Reading\n\
             User = get_user_model()\n{code}"
        );
        self.manage(&["shell", "--verbosity", "0", "-c", &code])
    }

    /// The site's DeviceEvent rows: (kind, detail, session id).
    fn events(&self) -> Vec<(String, String, u64)> {
        self.shell(
            "for e in DeviceEvent.objects.all(): print(e.kind, e.detail, e.session_id, sep='\\t')",
        )
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            (f[0].to_owned(), f[1].to_owned(), f[2].parse().unwrap())
        })
        .collect()
    }

    fn start(&mut self) {
        let log = std::fs::File::create(self.dir.path().join("gunicorn.log")).unwrap();
        let child = self
            .command()
            .args(["-m", "gunicorn", "site_config.wsgi"])
            .args(["--bind", &format!("127.0.0.1:{}", self.port)])
            .args(["--workers", "2"])
            // Its default socket is in $HOME, shared by every gunicorn.
            .arg("--no-control-socket")
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
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("gunicorn.log")).unwrap_or_default()
    }
}

impl Drop for Site {
    fn drop(&mut self) {
        if let Some(mut child) = self.gunicorn.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// `tether serve --forward` as a process, with its log.
struct Tether {
    child: Child,
    lines: std::sync::mpsc::Receiver<String>,
    log: Vec<String>,
    addr: SocketAddr,
}

impl Tether {
    fn start(site: &Site) -> Self {
        let mut child = Command::new(tether_bin())
            .args(["serve", "--listen", "127.0.0.1:0"])
            .arg("--database")
            .arg(format!("sqlite://{}", site.db.display()))
            .arg("--forward")
            .arg(format!("http://127.0.0.1:{}/tether", site.port))
            .arg("--admin")
            .arg(format!("127.0.0.1:{}", site.admin_port))
            // Revocation must come from Django's POST /revoke, not from here.
            .args(["--revalidate", "600"])
            .current_dir(site.dir.path())
            .env_remove("DATABASE_URL")
            .env_remove("TETHER_SECRET")
            .env_remove("TETHER_FORWARD_URL")
            .env("TETHER_FORWARD_SECRET", FORWARD_SECRET)
            .env("TETHER_ADMIN_TOKEN", ADMIN_TOKEN)
            .env("RUST_LOG", "tether_server=info")
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
        tether.wait_for("admin API listening");
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

    /// The first log line holding `needle`, read so far or within 30 s.
    fn wait_for(&mut self, needle: &str) -> String {
        if let Some(line) = self.log.iter().find(|l| l.contains(needle)) {
            return line.clone();
        }
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
                Err(_) => panic!(
                    "no {needle:?} in the log (does this tether have serve --forward? \
                     issue 11):\n{}",
                    self.log.join("\n")
                ),
            }
        }
    }

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

/// Runs `f` on a blocking thread (Python processes) as a future the device
/// can serve until.
fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> impl Future<Output = T> {
    let task = tokio::task::spawn_blocking(f);
    async move { task.await.unwrap() }
}

/// Polls the site's events until one of `kind` for `session` (with
/// `detail`, if given) is among them, or 30 s pass.
fn event_arrives(
    site: &Arc<Site>,
    kind: &'static str,
    detail: Option<&'static str>,
    session: u64,
) -> impl Future<Output = Vec<(String, String, u64)>> {
    let site = site.clone();
    blocking(move || {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let events = site.events();
            if events
                .iter()
                .any(|(k, d, s)| k == kind && detail.is_none_or(|want| d == want) && *s == session)
            {
                return events;
            }
            assert!(
                Instant::now() < deadline,
                "Django never stored {kind} {detail:?} of session {session}: {events:?}\n{}",
                site.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs scripts/django/test-package 5.2 (Django, gunicorn, django-tether) and tether serve --forward"]
async fn perspective_broker_round_trip_through_django_tether() {
    let mut site = Site::new();
    site.start();
    let mut tether = Tether::start(&site);
    let site = Arc::new(site);
    let row = site.shell("print(User.objects.get(username='alice').password.split('$')[0])");
    assert_eq!(row.trim(), "scram_sha256");

    // 1. A scram_sha256 row logs the device in: standard SCRAM-SHA-256 at
    //    Django 5.2's count, with no PBKDF2 on the server.
    let config = Config::default().with_min_iterations(100_000);
    let mut store: BufferStore = BufferStore::new();
    let login = host::connect(
        tether.addr,
        store.buffers(),
        "alice",
        ClientCredentials::Password(PASSWORD),
        &mut TestRng(12),
        &config,
    )
    .await
    .unwrap_or_else(|e| panic!("login: {e:?}\n{}", tether.log()));
    assert_eq!(login.keys.mechanism, Mechanism::ScramSha256);
    assert_eq!(login.keys.iterations, 1_000_000);
    let mut session = login.session;
    let id = session.session_id();
    let mut mind = DeviceMind { report: |_| {} };

    // 2. device_connected reached Django (its receiver wrote the row).
    session
        .serve_until(&mut mind, event_arrives(&site, "connected", None, id))
        .await
        .map(|_| ())
        .unwrap_or_else(|e| panic!("{e:?}"));
    let connected = site.events();
    let peer = &connected.iter().find(|e| e.0 == "connected").unwrap().1;
    assert!(peer.starts_with("127.0.0.1:"), "{connected:?}");

    // 3. The device calls Python: request.user and the ORM, postcard both ways.
    for (celsius, readings) in [(21.5, 1), (19.0, 2)] {
        let setpoint = session
            .call::<ReportReading, _>(&Reading { celsius }, &mut mind)
            .await
            .unwrap_or_else(|e| panic!("{e:?}\n{}", site.log()));
        assert_eq!(
            setpoint,
            Setpoint {
                target_celsius: 20.5,
                readings
            }
        );
    }
    let stored = site.shell(
        "print(list(Reading.objects.filter(owner__username='alice').values_list('celsius', flat=True)))",
    );
    assert_eq!(stored.trim(), "[21.5, 19.0]");
    // BadArguments in Python is BAD_ARGUMENTS on the device, with its text.
    match session
        .call::<ReportReading, _>(&Reading { celsius: 500.0 }, &mut mind)
        .await
    {
        Err(CallError::Remote { code, message }) => {
            assert_eq!(code, ErrorCode::BAD_ARGUMENTS);
            assert!(message.contains("not a room temperature"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    session.notify::<Button>(&"up").await.unwrap();
    session
        .serve_until(&mut mind, event_arrives(&site, "button", Some("up"), id))
        .await
        .unwrap_or_else(|e| panic!("{e:?}"));

    // 4. Django calls the device (django_tether.call through the admin API).
    let asking = site.clone();
    let answer = session
        .serve_until(
            &mut mind,
            blocking(move || asking.manage(&["ask_device", "alice"])),
        )
        .await
        .unwrap_or_else(|e| panic!("{e:?}"));
    let answer: serde_json::Value = serde_json::from_str(answer.trim()).unwrap();
    assert_eq!(
        answer,
        serde_json::json!({"firmware": "tether-firmware e2e", "uptime_secs": 3})
    );

    // django_tether.sessions() and the admin's live sessions page list it
    // (the page rendered by Django's test client inside the site).
    let listing = site.clone();
    let listed = session
        .serve_until(
            &mut mind,
            blocking(move || {
                listing.shell(
                    "import django_tether\n\
                     from django.test import Client\n\
                     s, = django_tether.sessions('alice')\n\
                     print(s.id, s.peer, s.user_id == User.objects.get(username='alice').pk, sep='\\t')\n\
                     root = User.objects.create_superuser('root', 'root@example.com', None)\n\
                     c = Client(HTTP_HOST='localhost')\n\
                     c.force_login(root)\n\
                     html = c.get('/admin/django_tether/livesession/').content.decode()\n\
                     print(all(x in html for x in ('>alice<', s.peer, '>%d<' % s.id, 'Disconnect')))",
                )
            }),
        )
        .await
        .unwrap_or_else(|e| panic!("{e:?}"));
    let lines: Vec<&str> = listed.lines().collect();
    assert_eq!(
        lines,
        [format!("{id}\t{peer}\tTrue").as_str(), "True"],
        "{listed}"
    );

    // 5. Deactivated through the ORM, as the admin does: the session ends at
    //    once with Goodbye(Revoked), long before --revalidate 600. The
    //    revocation runs inside save() (post-commit), so the goodbye may
    //    arrive before the Python process has even exited.
    let deactivating = site.clone();
    let started = Instant::now();
    let during_save = session
        .serve_until(
            &mut mind,
            blocking(move || {
                deactivating
                    .shell("u = User.objects.get(username='alice')\nu.is_active = False\nu.save()")
            }),
        )
        .await;
    let ended = match during_save {
        Ok(_) => tokio::time::timeout(Duration::from_secs(10), session.serve(&mut mind))
            .await
            .unwrap_or_else(|_| panic!("the session outlived the save by 10 s\n{}", tether.log()))
            .map(|never| match never {}),
        Err(e) => Err(e),
    };
    match ended {
        // Named, not matched on the variant, so that this file builds
        // before GoodbyeReason::Revoked (issue 11) is merged.
        Err(Error::Closed(reason)) => assert_eq!(format!("{reason:?}"), "Revoked"),
        other => panic!("expected Goodbye(Revoked), got {other:?}\n{}", tether.log()),
    }
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(15),
        "ended {took:?} after the save began"
    );
    eprintln!("django_site: Goodbye(Revoked) {took:?} after `manage.py shell` began the save");
    let events = event_arrives(&site, "disconnected", Some("revoked"), id).await;
    assert_eq!(
        events.iter().map(|e| e.0.as_str()).collect::<Vec<_>>(),
        ["connected", "button", "disconnected"]
    );
    let mut store: BufferStore = BufferStore::new();
    match host::connect(
        tether.addr,
        store.buffers(),
        "alice",
        ClientCredentials::Password(PASSWORD),
        &mut TestRng(13),
        &config,
    )
    .await
    {
        Err(Error::Refused {
            code: RefusalCode::Unauthorized,
            ..
        }) => {}
        other => panic!(
            "a deactivated user logged in again: {:?}",
            other.map(|_| ())
        ),
    }
    let log = tether.log();
    assert!(
        !log.contains(PASSWORD) && !log.contains(ADMIN_TOKEN),
        "{log}"
    );
}
