//! tether-firmware on a real embassy-net stack: an embassy executor (std
//! platform) runs embassy-net bound to a TAP device inside a private network
//! namespace that the test creates, and the firmware client, unmodified,
//! logs in through `tether_firmware::embassy::Link` to the real tether-server
//! (Django fixture database) listening in that namespace, found by name
//! through a DNS server in the namespace before every connection attempt.
//! Calls go both ways; the server kicks the session and the link
//! reconnects with the cached keys; a graceful server shutdown ends the run.
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
use embassy_net::{Config as NetConfig, Ipv4Address, Ipv4Cidr, Stack, StackResources};
use embassy_net_tuntap::TunTapDevice;
use firmware_support::*;
use tether_core::message::GoodbyeReason;
use tether_core::method::builtin::{Echo, WhoAmI};
use tether_firmware::embassy::{Account, HostName, Link};
use tether_firmware::{Backoff, BufferStore, Config, Error};
use tether_server::SessionEnd;
use tether_server::default_realm::RealmEvent;

const DB: &str = "default.sqlite3";
const SERVER_IP: [u8; 4] = [10, 42, 0, 1];
const DEVICE_IP: [u8; 4] = [10, 42, 0, 2];
const PORT: u16 = 7420;
/// The server's name, as the namespace's DNS server knows it.
const SERVER_NAME: &str = "tether.test";

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

#[embassy_executor::task]
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
        Config::default().with_min_iterations(600_000),
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
