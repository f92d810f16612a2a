//! tether-firmware on a real embassy-net stack: an embassy executor (std
//! platform) runs embassy-net bound to a TAP device inside a private network
//! namespace that the test creates, and the firmware client, unmodified,
//! logs in through `tether_firmware::embassy::Link` to the real tether-server
//! (Django fixture database) listening in that namespace, found by name
//! through a DNS server in the namespace before every connection attempt.
//! Calls go both ways; the server kicks the session and the link
//! reconnects with the cached keys; a graceful server shutdown ends the run.
//!
//! The first login (issue 16): a device with a password and erased flash
//! probes, derives its keys offline (slowed past the server's default
//! handshake timeout, as on a microcontroller), logs in with them and saves
//! them in a `KeyStore` on `RamFlash`; a reboot (new stack, new `Link`, the
//! same flash) logs in from flash without PBKDF2; after Django's own
//! `set_password` at a raised iteration count, a device without the
//! password reports stale keys, and one with it derives new ones offline.
//! Needs the Django 5.2 virtualenv (`scripts/django/make-fixtures`, or
//! `TETHER_VENV_DIR`).
//!
//! Needs root (CAP_SYS_ADMIN for the namespace, CAP_NET_ADMIN for the TAP
//! device); the host's network is untouched. Run:
//!
//! ```sh
//! cargo test -p tether-tests --test embassy_tap -- --include-ignored
//! ```

mod firmware_support;

use std::net::UdpSocket;
use std::ops::ControlFlow;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use embassy_executor::{Executor, Spawner};
use embassy_net::{Config as NetConfig, IpEndpoint, Ipv4Address, Ipv4Cidr, Stack, StackResources};
use embassy_net_tuntap::TunTapDevice;
use firmware_support::*;
use tether_core::message::GoodbyeReason;
use tether_core::method::builtin::{Echo, WhoAmI};
use tether_core::scram::CachedKeys;
use tether_firmware::embassy::{Account, DERIVATION_STEP, HostName, Link};
use tether_firmware::storage::{KeyStore, RamFlash, Stored};
use tether_firmware::{Backoff, BufferStore, Config, Error};
use tether_server::SessionEnd;
use tether_server::default_realm::RealmEvent;

const DB: &str = "default.sqlite3";
const SERVER_IP: [u8; 4] = [10, 42, 0, 1];
const DEVICE_IP: [u8; 4] = [10, 42, 0, 2];
const PORT: u16 = 7420;
/// The server's name, as the namespace's DNS server knows it.
const SERVER_NAME: &str = "tether.test";
/// The device's settings (a `static`, as a device keeps them in flash).
static DEVICE_CONFIG: Config = Config::new().with_min_iterations(600_000);

/// A DNS server for the namespace: answers an A query for `SERVER_NAME`
/// with `SERVER_IP` and any other name with NXDOMAIN; counts the queries
/// for `SERVER_NAME` until `stop` is set.
fn dns_server(socket: UdpSocket, queries: Arc<AtomicUsize>, stop: Arc<AtomicBool>) {
    socket
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let mut buf = [0u8; 512];
    while !stop.load(Ordering::Acquire) {
        let Ok((n, peer)) = socket.recv_from(&mut buf) else {
            continue;
        };
        // Header (12 bytes), then the question: labels up to a zero, type, class.
        let mut at = 12;
        let mut name = Vec::new();
        while at < n && buf[at] != 0 {
            let len = buf[at] as usize;
            name.push(String::from_utf8_lossy(&buf[at + 1..at + 1 + len]).into_owned());
            at += 1 + len;
        }
        let question_end = at + 5;
        assert!(question_end <= n, "truncated DNS query");
        let found = name.join(".") == SERVER_NAME;
        let mut reply = buf[..question_end].to_vec();
        reply[2] = 0x81; // response, recursion desired
        reply[3] = if found { 0x80 } else { 0x83 }; // recursion available; NXDOMAIN
        reply[6..8].copy_from_slice(&[0, found as u8]); // answers
        reply[8..12].fill(0);
        if found {
            queries.fetch_add(1, Ordering::AcqRel);
            // The name by pointer to the question, A, IN, TTL 60, the address.
            reply.extend_from_slice(&[0xC0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4]);
            reply.extend_from_slice(&SERVER_IP);
        }
        socket.send_to(&reply, peer).unwrap();
    }
}

/// What the device task reports to the test.
#[derive(Debug, Clone, PartialEq)]
enum Report {
    LoggedIn {
        n: u32,
        session_id: u64,
        new_keys: bool,
    },
    WhoAmI(String, u64),
    Echo(String),
    Device(DeviceEvent),
    Lost(String),
    Done(Result<(), String>),
}

fn sh(cmd: &str) {
    let out = Command::new("sh").arg("-c").arg(cmd).output().unwrap();
    assert!(
        out.status.success(),
        "{cmd}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

// One per boot: the first-login test powers its device on four times, and
// each boot's stack runs until the test ends.
#[embassy_executor::task(pool_size = 5)]
async fn net_task(mut runner: embassy_net::Runner<'static, TunTapDevice>) -> ! {
    runner.run().await
}

#[embassy_executor::task]
async fn device_task(
    stack: Stack<'static>,
    password: &'static str,
    reports: mpsc::Sender<Report>,
    done: &'static AtomicBool,
) {
    stack.wait_config_up().await;
    let (mut sock_rx, mut sock_tx) = ([0u8; 1024], [0u8; 1024]);
    let mut store: BufferStore = BufferStore::new();
    let server = HostName {
        host: SERVER_NAME,
        port: PORT,
    };
    let account = Account {
        username: "alice",
        password: Some(password),
        keys: None,
    };
    let mut link = Link::new(
        stack,
        server,
        &mut sock_rx,
        &mut sock_tx,
        store.buffers(),
        account,
        &DEVICE_CONFIG,
        Backoff::new(Duration::from_millis(100), Duration::from_secs(2)),
    );
    let mind_reports = reports.clone();
    let mut mind = DeviceMind {
        report: move |e| mind_reports.send(Report::Device(e)).unwrap(),
    };
    let mut rng = TestRng(42);
    let mut n = 0;
    let result = link
        .run(&mut rng, async |c| {
            n += 1;
            let s = &mut c.session;
            let _ = reports.send(Report::LoggedIn {
                n,
                session_id: s.session_id(),
                new_keys: c.new_keys.is_some(),
            });
            match s.call::<WhoAmI, _>(&(), &mut mind).await {
                Ok(me) => {
                    let _ = reports.send(Report::WhoAmI(me.username.into(), me.session_id));
                }
                Err(e) => return ControlFlow::Break(Err(format!("whoami: {e:?}"))),
            }
            match s.call::<Echo, _>(&"over embassy-net", &mut mind).await {
                Ok(text) => {
                    let _ = reports.send(Report::Echo(text.into()));
                }
                Err(e) => return ControlFlow::Break(Err(format!("echo: {e:?}"))),
            }
            match s.serve(&mut mind).await {
                Ok(never) => match never {},
                // The server shut down: this run is over.
                Err(Error::Closed(GoodbyeReason::Shutdown)) => ControlFlow::Break(Ok(())),
                Err(lost) => {
                    let _ = reports.send(Report::Lost(format!("{lost:?}")));
                    ControlFlow::Continue(lost)
                }
            }
        })
        .await;
    let result = match result {
        Ok(r) => r,
        Err(e) => Err(format!("link gave up: {e:?}")),
    };
    let _ = reports.send(Report::Done(result));
    done.store(true, Ordering::Release);
}

fn next(reports: &mpsc::Receiver<Report>) -> Report {
    reports
        .recv_timeout(Duration::from_secs(60))
        .expect("no report from the device within 60 s")
}

/// The next `k` reports that are not calls, and the realm's one
/// `device_info` call.
fn reports_besides_calls(reports: &mpsc::Receiver<Report>, k: usize) -> Vec<Report> {
    // The realm's device_info call races the device's own calls: it may
    // be reported before, between or after them, but exactly once.
    let (mut got, mut device_info) = (vec![], false);
    while got.len() < k || !device_info {
        match next(reports) {
            Report::Device(DeviceEvent::Called(m)) => {
                assert_eq!(m, "device_info");
                assert!(!device_info, "device_info called twice");
                device_info = true;
            }
            r => {
                assert!(got.len() < k, "unexpected {r:?} after {got:?}");
                got.push(r);
            }
        }
    }
    got
}

#[test]
#[ignore = "needs root: creates a network namespace and a TAP device"]
fn embassy_net_device_on_a_tap_logs_in_and_calls_both_ways() {
    // Everything from here on (this thread, the threads and processes it
    // starts) lives in a fresh network namespace: the host is untouched.
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
        .expect("unshare(CLONE_NEWNET) needs root");
    let tap = TunTapDevice::new("tap0").expect("TAP device (needs /dev/net/tun)");
    sh("ip link set lo up");
    sh("ip addr add 10.42.0.1/24 dev tap0");
    sh("ip link set tap0 up");

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let db = Db::copy(DB);
    let mut server = rt.block_on(start_server(
        &db,
        &format!("10.42.0.1:{PORT}"),
        Duration::from_secs(30),
    ));

    // The namespace's DNS server, which the device asks for the server.
    let dns_queries = Arc::new(AtomicUsize::new(0));
    let dns_stop = Arc::new(AtomicBool::new(false));
    let dns = std::thread::spawn({
        let socket = UdpSocket::bind("10.42.0.1:53").unwrap();
        let (queries, stop) = (dns_queries.clone(), dns_stop.clone());
        move || dns_server(socket, queries, stop)
    });

    // The device: embassy executor + embassy-net on tap0.
    let (report_tx, reports) = mpsc::channel();
    let password = password(DB, "alice");
    let device = std::thread::spawn(move || {
        let done: &'static AtomicBool = Box::leak(Box::new(AtomicBool::new(false)));
        let config = NetConfig::ipv4_static(embassy_net::StaticConfigV4 {
            address: Ipv4Cidr::new(Ipv4Address::from(DEVICE_IP), 24),
            gateway: None,
            dns_servers: [Ipv4Address::from(SERVER_IP)].into_iter().collect(),
        });
        let resources = Box::leak(Box::new(StackResources::<4>::new()));
        let (stack, runner) = embassy_net::new(tap, config, resources, 0x7e7e_7e7e);
        let executor = Box::leak(Box::new(Executor::new()));
        executor.run_until(
            |spawner: Spawner| {
                spawner.spawn(net_task(runner).unwrap());
                spawner.spawn(device_task(stack, password, report_tx, done).unwrap());
            },
            || done.load(Ordering::Acquire),
        );
    });

    // Session 1: password login (PBKDF2 at 1,000,000 iterations on the
    // device), device -> server calls; the realm's device_info call.
    let Report::LoggedIn {
        n: 1,
        session_id: s1,
        new_keys: true,
    } = next(&reports)
    else {
        panic!("expected the first login")
    };
    rt.block_on(async {
        loop {
            match server.event().await {
                RealmEvent::Connected {
                    session, username, ..
                } => {
                    assert_eq!((session, username.as_str()), (s1, "alice"));
                    let peer_ip = server.registry.list()[0].info.peer.ip().to_string();
                    assert_eq!(peer_ip, "10.42.0.2");
                }
                RealmEvent::DeviceInfo {
                    session, firmware, ..
                } => {
                    assert_eq!((session, firmware.as_str()), (s1, "tether-firmware e2e"));
                    break;
                }
                e => panic!("{e:?}"),
            }
        }
    });
    assert_eq!(
        reports_besides_calls(&reports, 2),
        vec![
            Report::WhoAmI("alice".into(), s1),
            Report::Echo("over embassy-net".into())
        ]
    );

    // Server -> device while it serves; then the server kicks it.
    rt.block_on(async {
        let mind = server.registry.mind(s1).unwrap();
        let r = mind.call::<Echo>(&"from the server").await.unwrap();
        assert_eq!(r.get(), "from the server");
        mind.notify::<Echo>(&"note").await.unwrap();
        mind.close(GoodbyeReason::Kicked);
    });
    loop {
        match next(&reports) {
            Report::Device(DeviceEvent::Called(m)) => assert_eq!(m, "echo"),
            Report::Device(DeviceEvent::Notified(m, _)) => assert_eq!(m, "echo"),
            Report::Lost(e) => {
                assert!(e.contains("Kicked"), "{e}");
                break;
            }
            r => panic!("{r:?}"),
        }
    }
    rt.block_on(async {
        loop {
            if let RealmEvent::Disconnected { session, end, .. } = server.event().await {
                assert_eq!(
                    (session, end),
                    (s1, SessionEnd::Kicked(GoodbyeReason::Kicked))
                );
                break;
            }
        }
    });

    // Session 2: the link reconnected by itself with the cached keys.
    let Report::LoggedIn {
        n: 2,
        session_id: s2,
        new_keys: false,
    } = next(&reports)
    else {
        panic!("expected a re-login with cached keys")
    };
    assert_ne!(s1, s2);
    assert_eq!(
        reports_besides_calls(&reports, 2),
        vec![
            Report::WhoAmI("alice".into(), s2),
            Report::Echo("over embassy-net".into())
        ]
    );
    rt.block_on(async {
        let mind = loop {
            if let Some(m) = server.registry.mind(s2) {
                break m;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let r = mind.call::<Echo>(&"again").await.unwrap();
        assert_eq!(r.get(), "again");
        // Graceful shutdown: the device hears Goodbye(Shutdown) and stops.
        server.handle.shutdown();
    });
    loop {
        match next(&reports) {
            Report::Done(r) => {
                r.unwrap();
                break;
            }
            Report::Device(_) => {}
            r => panic!("{r:?}"),
        }
    }
    device.join().unwrap();
    dns_stop.store(true, Ordering::Release);
    dns.join().unwrap();
    // The name was looked up again for the second connection.
    assert!(
        dns_queries.load(Ordering::Acquire) >= 2,
        "{} DNS queries for two connections",
        dns_queries.load(Ordering::Acquire)
    );
    rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(20), &mut server.join)
            .await
            .expect("server did not shut down")
            .unwrap();
    });
}

/// The device's flash: the key store's region in RAM.
type Flash = RamFlash<4, 1024>;

/// What one boot of the first-login device did.
#[derive(Debug)]
struct Boot {
    /// The keys found in flash at power-on.
    keys_at_boot: Option<CachedKeys>,
    /// Every derivation progress report, `(done, total)`.
    progress: Vec<(u32, u32)>,
    /// How long the offline derivation took (first to last report).
    derivation: Option<Duration>,
    /// The session it logged in to, and whether `Link` handed it new keys
    /// (saved to flash before the session ended).
    session: Option<(u64, Option<CachedKeys>)>,
    /// Why `Link::run` gave up, if it did.
    gave_up: Option<String>,
    /// The flash as the device left it.
    flash: Flash,
}

/// One boot: loads the account from the key store on `flash`, runs a `Link`
/// with `password` (if any), saves the keys it hands over, calls `whoami`
/// and says goodbye. `pause` is slept in every derivation progress report:
/// it makes the host's PBKDF2 as slow as a microcontroller's.
#[embassy_executor::task(pool_size = 4)]
async fn first_login_device(
    stack: Stack<'static>,
    server: IpEndpoint,
    flash: Flash,
    password: Option<&'static str>,
    pause: Duration,
    out: mpsc::Sender<Boot>,
    done: &'static AtomicBool,
) {
    stack.wait_config_up().await;
    let end = flash.as_bytes().len() as u32;
    let mut store = KeyStore::new(flash, 0..end).unwrap();
    let stored = store.load().await.unwrap();
    let keys_at_boot = stored.as_ref().and_then(|s| s.keys.clone());
    let (mut sock_rx, mut sock_tx) = ([0u8; 1024], [0u8; 1024]);
    let mut buffers: BufferStore = BufferStore::new();
    let account = Account {
        username: "alice",
        password,
        keys: keys_at_boot.clone(),
    };
    let mut progress = Vec::new();
    let mut started: Option<std::time::Instant> = None;
    let mut on_progress = |done: u32, total: u32| {
        started.get_or_insert_with(std::time::Instant::now);
        progress.push((done, total));
        std::thread::sleep(pause);
    };
    let mut link = Link::new(
        stack,
        server,
        &mut sock_rx,
        &mut sock_tx,
        buffers.buffers(),
        account,
        &DEVICE_CONFIG,
        Backoff::new(Duration::from_millis(100), Duration::from_secs(2)),
    )
    .on_derivation(&mut on_progress);
    let mut mind = DeviceMind { report: |_| {} };
    let result = link
        .run(&mut TestRng(7), async |c| {
            if let Some(keys) = c.new_keys {
                store.save("alice", Some(keys)).await.unwrap();
            }
            let session_id = c.session.session_id();
            if let Err(e) = c.session.call::<WhoAmI, _>(&(), &mut mind).await {
                return ControlFlow::Break(Err(format!("whoami: {e:?}")));
            }
            ControlFlow::Break(Ok((session_id, c.new_keys.cloned())))
        })
        .await;
    drop(link);
    let derivation = started.map(|t| t.elapsed());
    let (session, gave_up) = match result {
        Ok(Ok(s)) => (Some(s), None),
        Ok(Err(e)) => (None, Some(e)),
        Err(e) => (None, Some(format!("{e:?}"))),
    };
    out.send(Boot {
        keys_at_boot,
        progress,
        derivation,
        session,
        gave_up,
        flash: store.into_inner(),
    })
    .unwrap();
    done.store(true, Ordering::Release);
}

/// Powers the device on with `flash` on a fresh TAP device `tap{n}`
/// (10.42.n.2, the server at 10.42.n.1) and runs it to its end: a new
/// embassy-net stack and `Link` every time, as after a reboot.
fn boot(n: u8, flash: Flash, password: Option<&'static str>, pause: Duration) -> Boot {
    let name = format!("tap{n}");
    let tap = TunTapDevice::new(&name).expect("TAP device (needs /dev/net/tun)");
    sh(&format!("ip addr add 10.42.{n}.1/24 dev {name}"));
    sh(&format!("ip link set {name} up"));
    let (out, result) = mpsc::channel();
    let device = std::thread::spawn(move || {
        let done: &'static AtomicBool = Box::leak(Box::new(AtomicBool::new(false)));
        let config = NetConfig::ipv4_static(embassy_net::StaticConfigV4 {
            address: Ipv4Cidr::new(Ipv4Address::new(10, 42, n, 2), 24),
            gateway: None,
            dns_servers: Default::default(),
        });
        let resources = Box::leak(Box::new(StackResources::<2>::new()));
        let (stack, runner) = embassy_net::new(tap, config, resources, 0x5eed + u64::from(n));
        let server = IpEndpoint::new(Ipv4Address::new(10, 42, n, 1).into(), PORT);
        let executor = Box::leak(Box::new(Executor::new()));
        executor.run_until(
            |spawner: Spawner| {
                spawner.spawn(net_task(runner).unwrap());
                spawner.spawn(
                    first_login_device(stack, server, flash, password, pause, out, done).unwrap(),
                );
            },
            || done.load(Ordering::Acquire),
        );
    });
    let boot = result
        .recv_timeout(Duration::from_secs(180))
        .expect("the device did not finish within 180 s");
    device.join().unwrap();
    boot
}

/// Django's own `set_password` (same password) on alice in `db` after a
/// settings change that raises PBKDF2's iteration count to `iterations`:
/// the row gets a new salt and count, as after a Django upgrade.
fn django_rehash(db: &Db, password: &str, iterations: u32) {
    let repo = fixtures().join("../..");
    let venv = std::env::var("TETHER_VENV_DIR").map_or(repo.clone(), Into::into);
    let python = venv.join(".venv-django-5.2/bin/python");
    let status = Command::new(&python)
        .current_dir(repo.join("scripts/django/project"))
        .env("DJANGO_SETTINGS_MODULE", "tether_project.settings")
        .env("TETHER_DATABASE_URL", format!("sqlite:///{}", db.path.display()))
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("PASSWORD", password)
        .env("ITERATIONS", iterations.to_string())
        .args([
            "-c",
            "import os, django; django.setup()\n\
             from django.contrib.auth import get_user_model\n\
             from django.contrib.auth.hashers import PBKDF2PasswordHasher\n\
             from django.test.utils import override_settings\n\
             class Raised(PBKDF2PasswordHasher):\n    \
                 iterations = int(os.environ['ITERATIONS'])\n\
             with override_settings(PASSWORD_HASHERS=['__main__.Raised']):\n    \
                 u = get_user_model().objects.get(username='alice')\n    \
                 u.set_password(os.environ['PASSWORD']); u.save()\n    \
                 assert u.password.startswith('pbkdf2_sha256$%d$' % Raised.iterations), u.password[:30]",
        ])
        .status()
        .unwrap_or_else(|e| {
            panic!(
                "{}: {e} (run scripts/django/make-fixtures)",
                python.display()
            )
        });
    assert!(status.success(), "Django's set_password failed");
}

#[test]
#[ignore = "needs root: creates a network namespace and TAP devices"]
fn first_login_derives_offline_keeps_keys_in_flash_and_detects_stale_keys() {
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
        .expect("unshare(CLONE_NEWNET) needs root");
    sh("ip link set lo up");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let db = Db::copy(DB);
    // The server's default handshake timeout (start_server keeps it).
    let handshake_timeout = tether_server::ServerConfig::default().handshake_timeout;
    let server = rt.block_on(start_server(
        &db,
        &format!("0.0.0.0:{PORT}"),
        Duration::from_secs(30),
    ));
    let password = password(DB, "alice");
    const ITERATIONS: u32 = 1_000_000;
    let steps = ITERATIONS / DERIVATION_STEP;
    // The derivation takes longer than the server's handshake timeout, as
    // it does on a microcontroller: the link must not hold a connection
    // open meanwhile.
    let pause = (handshake_timeout + Duration::from_secs(1)) / steps;

    // 1. First boot: erased flash, the password. Probe, offline PBKDF2 at
    //    Django 5.2's 1,000,000 iterations with progress, login with the
    //    derived keys, which are handed over and saved.
    let first = boot(1, Flash::new(4), Some(password), pause);
    assert_eq!(first.gave_up, None);
    assert!(first.keys_at_boot.is_none());
    // A report every DERIVATION_STEP iterations, rising, up to the end.
    assert_eq!(
        first.progress.len() as u32,
        steps,
        "{:?}",
        first.progress.last()
    );
    assert!(first.progress.iter().all(|&(_, total)| total == ITERATIONS));
    assert!(
        first
            .progress
            .windows(2)
            .all(|w| w[1].0 - w[0].0 <= DERIVATION_STEP && w[1].0 > w[0].0)
    );
    assert!(
        first.progress[0].0 <= DERIVATION_STEP + 1,
        "{:?}",
        first.progress[0]
    );
    assert_eq!(first.progress.last(), Some(&(ITERATIONS, ITERATIONS)));
    assert!(
        first.derivation.unwrap() > handshake_timeout,
        "{:?}",
        first.derivation
    );
    let (s1, new_keys) = first.session.unwrap();
    let new_keys = new_keys.expect("the first login hands over new keys");
    assert_eq!(new_keys.iterations, ITERATIONS);

    // 2. The keys are in the flash.
    let mut flash = first.flash;
    let stored = rt.block_on(load_account(&mut flash));
    assert_eq!(stored.username.as_str(), "alice");
    assert_eq!(stored.keys.as_ref(), Some(&new_keys));

    // 3. Reboot (a new stack and Link, the same flash), the password still
    //    at hand: the keys from flash log in; no PBKDF2, no new keys.
    let second = boot(2, flash, Some(password), Duration::ZERO);
    assert_eq!(second.gave_up, None);
    assert_eq!(second.keys_at_boot.as_ref(), Some(&new_keys));
    assert_eq!(second.progress, vec![], "a reboot derived keys");
    let (s2, again) = second.session.unwrap();
    assert_ne!(s1, s2);
    assert_eq!(again, None);

    // 4. Django re-hashes alice's row after a settings change (same
    //    password, new salt, 1,200,000 iterations). A device without the
    //    password reports stale keys and gives up: it needs provisioning.
    const RAISED: u32 = 1_200_000;
    django_rehash(&db, password, RAISED);
    let third = boot(3, second.flash, None, Duration::ZERO);
    assert_eq!(third.session, None);
    assert_eq!(third.gave_up.as_deref(), Some("Login(CachedKeysMismatch)"));
    assert_eq!(third.progress, vec![]);

    // 5. With the password, the link drops the stale keys, derives new
    //    ones offline at the new count and hands them over to be saved.
    let fourth = boot(4, third.flash, Some(password), Duration::ZERO);
    assert_eq!(fourth.gave_up, None);
    assert_eq!(fourth.keys_at_boot.as_ref(), Some(&new_keys));
    assert_eq!(fourth.progress.last(), Some(&(RAISED, RAISED)));
    let rederived = fourth.session.unwrap().1.expect("new keys handed over");
    assert_eq!(rederived.iterations, RAISED);
    assert_ne!(rederived, new_keys);
    let mut flash = fourth.flash;
    assert_eq!(rt.block_on(load_account(&mut flash)).keys, Some(rederived));

    server.handle.shutdown();
    rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(20), server.join)
            .await
            .expect("server did not shut down")
            .unwrap();
    });
}

/// What the key store on `flash` holds.
async fn load_account(flash: &mut Flash) -> Stored {
    let end = flash.as_bytes().len() as u32;
    let mut store = KeyStore::new(flash, 0..end).unwrap();
    store.load().await.unwrap().expect("a stored account")
}
