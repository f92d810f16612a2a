//! The `hostile` stage: the attacks of issue 13 against a release `tether
//! serve` at its default limits, and what a legitimate device sees meanwhile.
//! Every attacker and every device has a source address of its own
//! (127.0.0.0/8 is all loopback on Linux, so any 127.x.y.z can be bound).
//!
//! - **failure table** (item 3): failed logins, each for a new username,
//!   spread over 16,384 addresses so that no address reaches its own
//!   throttle; the rate while the table fills, then once it holds its
//!   100,000 usernames, the server's CPU per failure, and the login latency
//!   of a device next to it.
//! - **idle flood** (item 5): silent connections (never a hello) from two
//!   addresses, each reopened as soon as the server closes it; a device from
//!   a third address tries to log in every 200 ms.
//! - **lockout** (item 7): wrong passwords for one account as fast as one
//!   address can send them, while the account's owner logs in from another
//!   address every 200 ms; then the same account guessed from 256 addresses
//!   at once.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tether_core::message::{self, Handshake, Hello, PROTOCOL_VERSION, Proof, RefusalCode};
use tether_core::method::builtin::Echo;
use tether_core::scram::{ClientCredentials, Mechanism, Mechanisms};
use tether_firmware::{BufferStore, Config, Session, TokioClock, host};
use tokio::io::AsyncReadExt as _;

use crate::common::{Samples, Users, cpu_time, fmt_dur, fmt_rate, rng, rss, v1_config};
use crate::load::{ARG, connect};
use crate::raw::{read_frame, send_handshake};
use crate::run::{Proc, RunArgs, say, tether_serve};

/// One row of the table: measurement, Tether, reference, ratio, target.
pub type Row = [String; 5];

/// The durations of the stage.
struct Plan {
    table_fill: usize,
    table_beyond: Duration,
    neighbour_alone: Duration,
    idle_counts: &'static [usize],
    idle_window: Duration,
    lockout_window: Duration,
}

impl Plan {
    fn new(quick: bool) -> Self {
        let s = Duration::from_secs_f64;
        if quick {
            Self {
                table_fill: 2_000,
                table_beyond: s(1.0),
                neighbour_alone: s(0.5),
                idle_counts: &[64],
                idle_window: s(2.0),
                lockout_window: s(2.0),
            }
        } else {
            Self {
                // The throttle's table holds 100,000 usernames by default.
                table_fill: 100_000,
                table_beyond: s(10.0),
                neighbour_alone: s(3.0),
                idle_counts: &[64, 320],
                idle_window: s(20.0),
                lockout_window: s(20.0),
            }
        }
    }
}

/// Every measurement of the stage, as table rows.
pub async fn measure(a: &RunArgs, users: &Arc<Users>) -> Result<Vec<Row>, String> {
    let plan = Plan::new(a.quick);
    let mut rows = Vec::new();
    failure_table(a, users, &plan, &mut rows).await?;
    idle_flood(a, users, &plan, &mut rows).await?;
    lockout(a, users, &plan, &mut rows).await?;
    Ok(rows)
}

fn ip(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(a, b, c, d))
}

/// How a login attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    /// Logged in, called, said goodbye.
    In,
    /// Refused with this code.
    Refused(RefusalCode),
    /// Closed (or reset) without a refusal.
    Closed,
    /// No answer within the attempt's time.
    TimedOut,
}

/// One failed login: a hello for `username` from `source`, the challenge,
/// a proof of the right shape that no account matches. The refusal, or
/// how the attempt ended without one.
async fn fail_once(addr: SocketAddr, source: IpAddr, username: &str) -> Result<Outcome, String> {
    let mut s = match connect(addr, Some(source)).await {
        Ok(s) => s,
        Err(e) if e.kind() == std::io::ErrorKind::AddrNotAvailable => {
            return Err(format!("connect from {source}: {e}"));
        }
        Err(_) => return Ok(Outcome::Closed),
    };
    let _ = s.set_nodelay(true);
    let nonce = "benchhostileclientnonce0";
    let first = format!("n,,n={username},r={nonce}");
    let hello = Handshake::Hello(Hello {
        version: PROTOCOL_VERSION,
        mechanisms: Mechanisms::ALL,
        max_frame: 512,
        client_first: &first,
    });
    if send_handshake(&mut s, &hello).await.is_err() {
        return Ok(Outcome::Closed);
    }
    let mut buf = vec![0u8; 512];
    let Ok(n) = read_frame(&mut s, &mut buf).await else {
        return Ok(Outcome::Closed);
    };
    let (mechanism, server_first) =
        match message::decode::<Handshake>(&buf[..n]).map_err(|e| e.to_string())? {
            Handshake::Challenge(c) => (c.mechanism, c.server_first.to_string()),
            Handshake::Refused(r) => return Ok(Outcome::Refused(r.code)),
            other => return Err(format!("expected a challenge, got {other:?}")),
        };
    let full_nonce = server_first
        .strip_prefix("r=")
        .and_then(|r| r.split(',').next())
        .ok_or("no nonce in the challenge")?;
    // A proof of the mechanism's length: base64 of zero bytes.
    let proof = match mechanism {
        Mechanism::ScramSha256 => "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
        Mechanism::ScramSha1 => "AAAAAAAAAAAAAAAAAAAAAAAAAAA=",
    };
    let client_final = format!("c=biws,r={full_nonce},p={proof}");
    let proof = Handshake::Proof(Proof {
        client_final: &client_final,
    });
    if send_handshake(&mut s, &proof).await.is_err() {
        return Ok(Outcome::Closed);
    }
    let Ok(n) = read_frame(&mut s, &mut buf).await else {
        return Ok(Outcome::Closed);
    };
    match message::decode::<Handshake>(&buf[..n]).map_err(|e| e.to_string())? {
        Handshake::Refused(r) => Ok(Outcome::Refused(r.code)),
        other => Err(format!("a wrong proof got {other:?}")),
    }
}

fn device_config() -> Config {
    v1_config()
        .with_handshake_timeout(Duration::from_secs(15))
        .with_call_timeout(Duration::from_secs(15))
}

/// A device's login from `source` as user `i`: connect, log in with its
/// cached keys, one `echo`, goodbye, within `limit`.
async fn device_login(
    addr: SocketAddr,
    source: IpAddr,
    users: &Users,
    i: usize,
    limit: Duration,
) -> Outcome {
    let attempt = async {
        let Ok(stream) = connect(addr, Some(source)).await else {
            return Outcome::Closed;
        };
        let (name, keys) = users.get(i);
        let mut store: BufferStore = BufferStore::new();
        let login = Session::login(
            host::transport(stream),
            store.buffers(),
            TokioClock::new(),
            name,
            ClientCredentials::Keys(keys),
            &mut rng(),
            &device_config(),
        )
        .await;
        let mut session = match login {
            Ok(l) => l.session,
            Err(tether_firmware::Error::Refused { code, .. }) => return Outcome::Refused(code),
            Err(_) => return Outcome::Closed,
        };
        match session.call::<Echo, _>(&ARG, &mut ()).await {
            Ok(r) if r == ARG => {}
            _ => return Outcome::Closed,
        }
        let _ = session.close().await;
        Outcome::In
    };
    tokio::time::timeout(limit, attempt)
        .await
        .unwrap_or(Outcome::TimedOut)
}

/// What a device saw over a window of attempts.
#[derive(Debug, Default)]
struct Device {
    attempts: usize,
    logged_in: Samples,
    refused: std::collections::BTreeMap<String, usize>,
    closed: usize,
    timed_out: usize,
}

impl Device {
    fn record(&mut self, outcome: Outcome, took: Duration) {
        self.attempts += 1;
        match outcome {
            Outcome::In => self.logged_in.push(took),
            Outcome::Refused(code) => *self.refused.entry(code.as_str().into()).or_default() += 1,
            Outcome::Closed => self.closed += 1,
            Outcome::TimedOut => self.timed_out += 1,
        }
    }

    fn ins(&self) -> usize {
        self.logged_in.0.len()
    }

    fn share(&self) -> f64 {
        self.ins() as f64 * 100.0 / self.attempts.max(1) as f64
    }

    /// "refused busy 12, closed 3" (what did not get in).
    fn misses(&self) -> String {
        let mut parts: Vec<String> = self
            .refused
            .iter()
            .map(|(code, n)| format!("refused {code} {n}"))
            .collect();
        if self.closed > 0 {
            parts.push(format!("closed without a refusal {}", self.closed));
        }
        if self.timed_out > 0 {
            parts.push(format!("no answer in 15 s {}", self.timed_out));
        }
        if parts.is_empty() {
            "none refused".into()
        } else {
            parts.join(", ")
        }
    }
}

/// A device from `source` logging in as user `i` every `every` until
/// `stop` is set.
fn device_loop(
    addr: SocketAddr,
    source: IpAddr,
    users: Arc<Users>,
    i: usize,
    every: Duration,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Device> {
    tokio::spawn(async move {
        let mut d = Device::default();
        while !stop.load(Ordering::Relaxed) {
            let began = Instant::now();
            let outcome = device_login(addr, source, &users, i, Duration::from_secs(15)).await;
            d.record(outcome, began.elapsed());
            tokio::time::sleep(every.saturating_sub(began.elapsed())).await;
        }
        d
    })
}

async fn failure_table(
    a: &RunArgs,
    users: &Arc<Users>,
    plan: &Plan,
    rows: &mut Vec<Row>,
) -> Result<(), String> {
    say(&format!(
        "hostile: failed logins for {} new usernames from 16,384 addresses, then beyond",
        fmt_rate(plan.table_fill as f64)
    ));
    let (server, addr) = tether_serve(
        a,
        "serve-hostile-table.log",
        &[
            "--max-handshakes",
            "1024",
            "--max-handshakes-per-address",
            "0",
        ],
    )
    .await?;
    let neighbour_ip = ip(127, 9, 0, 1);
    // The neighbour alone.
    let stop = Arc::new(AtomicBool::new(false));
    let alone = device_loop(
        addr,
        neighbour_ip,
        users.clone(),
        0,
        Duration::ZERO,
        stop.clone(),
    );
    tokio::time::sleep(plan.neighbour_alone).await;
    stop.store(true, Ordering::Relaxed);
    let alone = alone.await.map_err(|e| e.to_string())?;

    // 64 attackers; failure i: username `flood-i` from address i % 16,384.
    let next = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let stop_flood = Arc::new(AtomicBool::new(false));
    let mut attackers = Vec::new();
    for _ in 0..64 {
        let (next, done, stop) = (next.clone(), done.clone(), stop_flood.clone());
        attackers.push(tokio::spawn(async move {
            let mut other = None;
            while !stop.load(Ordering::Relaxed) {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let a = (i % 16_384) as u32;
                let source = ip(127, 1, (a >> 8) as u8, a as u8);
                match fail_once(addr, source, &format!("flood-{i}")).await? {
                    Outcome::Refused(RefusalCode::Unauthorized) => {
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                    o => {
                        other.get_or_insert(o);
                    }
                }
            }
            Ok::<_, String>(other)
        }));
    }
    let fill_started = Instant::now();
    let rss0 = rss(server.pid())?;
    let cpu0 = cpu_time(server.pid())?;
    while done.load(Ordering::Relaxed) < plan.table_fill {
        tokio::time::sleep(Duration::from_millis(20)).await;
        if fill_started.elapsed() > Duration::from_secs(600) {
            return Err("the failure table did not fill in 10 minutes".into());
        }
    }
    let fill = fill_started.elapsed();
    let fill_cpu = cpu_time(server.pid())?.saturating_sub(cpu0);
    let filled = done.load(Ordering::Relaxed);
    // Beyond: every failure now is a new username in a full table.
    let stop = Arc::new(AtomicBool::new(false));
    let neighbour = device_loop(
        addr,
        neighbour_ip,
        users.clone(),
        0,
        Duration::ZERO,
        stop.clone(),
    );
    let (n0, cpu0, t0) = (
        done.load(Ordering::Relaxed),
        cpu_time(server.pid())?,
        Instant::now(),
    );
    tokio::time::sleep(plan.table_beyond).await;
    let (n1, cpu1, secs) = (
        done.load(Ordering::Relaxed),
        cpu_time(server.pid())?,
        t0.elapsed().as_secs_f64(),
    );
    let rss1 = rss(server.pid())?;
    stop.store(true, Ordering::Relaxed);
    stop_flood.store(true, Ordering::Relaxed);
    let neighbour = neighbour.await.map_err(|e| e.to_string())?;
    let mut other = None;
    for t in attackers {
        if let Some(o) = t.await.map_err(|e| e.to_string())?? {
            other.get_or_insert(o);
        }
    }
    drop(server);
    let fill_rate = filled as f64 / fill.as_secs_f64();
    let beyond = (n1 - n0) as f64;
    let per =
        |cpu: Duration, n: f64| fmt_dur(Duration::from_secs_f64(cpu.as_secs_f64() / n.max(1.0)));
    let note = other.map_or(String::new(), |o| format!("; also seen: {o:?}"));
    rows.push([
        format!(
            "hostile: failed logins, a new username each, 64 at once from 16,384 addresses: the first {}",
            fmt_rate(filled as f64)
        ),
        format!("{}/s", fmt_rate(fill_rate)),
        format!("server CPU {} per failure{note}", per(fill_cpu, filled as f64)),
        String::new(),
        String::new(),
    ]);
    rows.push([
        format!(
            "hostile: the same, {secs:.0} s more{}",
            if filled >= 100_000 {
                " (the throttle's table full: it keeps 100,000 usernames)"
            } else {
                ""
            }
        ),
        format!("{}/s", fmt_rate(beyond / secs)),
        format!(
            "server CPU {} per failure; server RSS {:.1} -> {:.1} MiB",
            per(cpu1.saturating_sub(cpu0), beyond),
            rss0 as f64 / 1048576.0,
            rss1 as f64 / 1048576.0
        ),
        format!("{:.2} of the rate while filling", beyond / secs / fill_rate),
        "~1.0 (item 3)".into(),
    ]);
    let (alone_p50, during_p50) = (
        alone.logged_in.clone().summary().p50,
        neighbour.logged_in.clone().summary().p50,
    );
    rows.push([
        "hostile: a device's login next to that flood (another address, one login at a time)"
            .into(),
        format!(
            "p50 {} ({} logins; {})",
            fmt_dur(during_p50),
            neighbour.ins(),
            neighbour.misses()
        ),
        format!("alone: p50 {} ({} logins)", fmt_dur(alone_p50), alone.ins()),
        format!(
            "{:.2}x",
            during_p50.as_secs_f64() / alone_p50.as_secs_f64().max(1e-9)
        ),
        String::new(),
    ]);
    Ok(())
}

/// Holds `n` silent connections from `source`: each reopened as soon as
/// the server closes it, until `stop`. Returns how many were opened.
fn silent(
    addr: SocketAddr,
    source: IpAddr,
    n: usize,
    stop: Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<usize>> {
    (0..n)
        .map(|_| {
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut opened = 0;
                while !stop.load(Ordering::Relaxed) {
                    let Ok(mut s) = connect(addr, Some(source)).await else {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    };
                    opened += 1;
                    let mut buf = [0u8; 64];
                    // Until the server closes it (or the stage ends).
                    loop {
                        let read =
                            tokio::time::timeout(Duration::from_millis(200), s.read(&mut buf));
                        match read.await {
                            Ok(Ok(0) | Err(_)) => break,
                            Ok(Ok(_)) => {}
                            Err(_) if stop.load(Ordering::Relaxed) => break,
                            Err(_) => {}
                        }
                    }
                }
                opened
            })
        })
        .collect()
}

async fn idle_flood(
    a: &RunArgs,
    users: &Arc<Users>,
    plan: &Plan,
    rows: &mut Vec<Row>,
) -> Result<(), String> {
    for &n in plan.idle_counts {
        say(&format!(
            "hostile: {n} silent connections from 2 addresses, a device logging in from a third"
        ));
        let (server, addr) = tether_serve(a, "serve-hostile-idle.log", &[]).await?;
        let stop = Arc::new(AtomicBool::new(false));
        let mut holders = silent(addr, ip(127, 2, 0, 1), n / 2, stop.clone());
        holders.extend(silent(addr, ip(127, 2, 0, 2), n - n / 2, stop.clone()));
        tokio::time::sleep(Duration::from_secs(1)).await;
        let device_stop = Arc::new(AtomicBool::new(false));
        let device = device_loop(
            addr,
            ip(127, 3, 0, 1),
            users.clone(),
            1,
            Duration::from_millis(200),
            device_stop.clone(),
        );
        tokio::time::sleep(plan.idle_window).await;
        device_stop.store(true, Ordering::Relaxed);
        let device = device.await.map_err(|e| e.to_string())?;
        stop.store(true, Ordering::Relaxed);
        let mut opened = 0;
        for h in holders {
            opened += h.await.map_err(|e| e.to_string())?;
        }
        drop::<Proc>(server);
        let p50 = device.logged_in.clone().summary().p50;
        rows.push([
            format!(
                "hostile: {n} silent connections (never a hello) from 2 addresses, each reopened when closed ({opened} opened in {:.0} s); a device from a third address tries every 200 ms",
                plan.idle_window.as_secs_f64() + 1.0
            ),
            format!(
                "{} of {} attempts logged in ({:.0}%)",
                device.ins(),
                device.attempts,
                device.share()
            ),
            device.misses(),
            if device.ins() > 0 {
                format!("p50 {} per login", fmt_dur(p50))
            } else {
                String::new()
            },
            "most get in (item 5)".into(),
        ]);
    }
    Ok(())
}

/// What a guesser saw: proofs checked (refused `unauthorized`), refused
/// `throttled` before any check, anything else.
#[derive(Debug, Default, Clone, Copy)]
struct Guesses {
    checked: usize,
    throttled: usize,
    other: usize,
}

/// Wrong passwords for `username` from `source`, one after the other,
/// until `stop`.
fn guesser(
    addr: SocketAddr,
    source: IpAddr,
    username: String,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Result<Guesses, String>> {
    tokio::spawn(async move {
        let mut g = Guesses::default();
        while !stop.load(Ordering::Relaxed) {
            match fail_once(addr, source, &username).await? {
                Outcome::Refused(RefusalCode::Unauthorized) => g.checked += 1,
                Outcome::Refused(RefusalCode::Throttled) => g.throttled += 1,
                _ => g.other += 1,
            }
        }
        Ok(g)
    })
}

async fn lockout(
    a: &RunArgs,
    users: &Arc<Users>,
    plan: &Plan,
    rows: &mut Vec<Row>,
) -> Result<(), String> {
    let victim = 2;
    let name = users.get(victim).0.to_string();
    let secs = plan.lockout_window.as_secs_f64();

    say(
        "hostile: wrong passwords for one account from one address; its owner logs in from another",
    );
    let (server, addr) = tether_serve(a, "serve-hostile-lockout.log", &[]).await?;
    let stop = Arc::new(AtomicBool::new(false));
    let attacker = guesser(addr, ip(127, 4, 0, 1), name.clone(), stop.clone());
    tokio::time::sleep(Duration::from_millis(500)).await;
    let owner = device_loop(
        addr,
        ip(127, 5, 0, 1),
        users.clone(),
        victim,
        Duration::from_millis(200),
        stop.clone(),
    );
    tokio::time::sleep(plan.lockout_window).await;
    stop.store(true, Ordering::Relaxed);
    let owner = owner.await.map_err(|e| e.to_string())?;
    let g = attacker.await.map_err(|e| e.to_string())??;
    drop(server);
    rows.push([
        format!(
            "hostile: wrong passwords for one account from one address, back to back, {secs:.0} s; its owner logs in from another address every 200 ms"
        ),
        format!(
            "owner: {} of {} logged in ({:.0}%)",
            owner.ins(),
            owner.attempts,
            owner.share()
        ),
        format!("owner: {}", owner.misses()),
        format!(
            "attacker: {} guesses checked, {} refused throttled",
            g.checked, g.throttled
        ),
        "owner not locked out (item 7)".into(),
    ]);

    say("hostile: the same account guessed from 256 addresses at once");
    let (server, addr) = tether_serve(a, "serve-hostile-spread.log", &[]).await?;
    let stop = Arc::new(AtomicBool::new(false));
    let guessers: Vec<_> = (0..256u32)
        .map(|k| guesser(addr, ip(127, 6, 0, k as u8), name.clone(), stop.clone()))
        .collect();
    tokio::time::sleep(plan.lockout_window).await;
    stop.store(true, Ordering::Relaxed);
    let mut total = Guesses::default();
    for g in guessers {
        let g = g.await.map_err(|e| e.to_string())??;
        total.checked += g.checked;
        total.throttled += g.throttled;
        total.other += g.other;
    }
    drop(server);
    rows.push([
        format!("hostile: the same account guessed from 256 addresses at once, {secs:.0} s"),
        format!("{} guesses checked", total.checked),
        format!(
            "{} refused throttled, {} other",
            total.throttled, total.other
        ),
        format!(
            "{:.1} checked per minute",
            total.checked as f64 * 60.0 / secs
        ),
        "bounded (item 7)".into(),
    ]);
    Ok(())
}
