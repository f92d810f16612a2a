//! The admin-port flood of issue 13 (item 2): many connections to `tether
//! serve --admin`, each holding half an HTTP request (a request line and one
//! header, never the blank line that ends the head), reopened when the
//! server closes them, for a while; then all closed at once; repeated.
//! During each flood a device logs in and `/healthz` is asked every two
//! seconds, and the server's RSS and open descriptors are read from /proc.
//!
//! The flood comes from `flood-client` processes of this binary (one
//! process may hold only `ulimit -Hn` sockets), each from its own loopback
//! source address, opening at most `--rate` connections per second between
//! them (a remote attacker's connections cost this machine nothing; ours
//! share its two cores with the server, so they are paced).

use std::io::{BufRead as _, Write as _};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::sync::Semaphore;

use crate::common::{Manifest, Users, cpu_time, fmt_dur, rss};
use crate::load::{self, OpError};
use crate::run::{free_port, say, spawn_tether};

/// `tether-bench admin-flood`.
#[derive(Debug, Clone, clap::Args)]
pub struct FloodArgs {
    /// The `tether` binary to attack.
    #[arg(long)]
    pub tether: PathBuf,
    /// The Django-made SQLite database (bench/django_users.py).
    #[arg(long)]
    pub database: PathBuf,
    /// Its manifest.
    #[arg(long)]
    pub manifest: PathBuf,
    /// Scratch directory (the server's log).
    #[arg(long)]
    pub workdir: PathBuf,
    /// Connections the flood holds at once.
    #[arg(long, default_value_t = 20_000)]
    pub connections: usize,
    /// Seconds each flood lasts.
    #[arg(long, default_value_t = 60.0)]
    pub hold: f64,
    /// Floods, one after the other.
    #[arg(long, default_value_t = 3)]
    pub rounds: u32,
    /// Seconds between the end of a flood and the RSS reading after it.
    #[arg(long, default_value_t = 10.0)]
    pub settle: f64,
    /// Most new flood connections per second (all processes together).
    #[arg(long, default_value_t = 5_000)]
    pub rate: u32,
    /// Flood client processes (source addresses 127.0.0.20, .21, ...).
    #[arg(long, default_value_t = 4)]
    pub procs: usize,
    /// Label of the server in the table (e.g. its commit).
    #[arg(long, default_value = "tether serve")]
    pub label: String,
    /// More `tether serve` arguments (after `--`).
    #[arg(last = true)]
    pub serve_args: Vec<String>,
}

/// One probe during a flood: a device login and a `/healthz`.
#[derive(Debug, Clone)]
struct Probe {
    login: Result<Duration, String>,
    healthz: Result<Duration, String>,
}

/// What one flood did to the server.
#[derive(Debug, Clone, Default)]
pub struct Round {
    pub held_max: u64,
    pub connects: u64,
    pub connect_failures: u64,
    pub rss_before: u64,
    pub rss_peak: u64,
    pub rss_after: u64,
    pub fds_peak: usize,
    pub logins_ok: usize,
    pub healthz_ok: usize,
    pub probes: usize,
    pub login_worst: Duration,
    pub healthz_worst: Duration,
    pub first_login_error: Option<String>,
    pub first_healthz_error: Option<String>,
    pub log_lines: usize,
    /// The server's CPU (user + system) during the flood, in cores.
    pub cpu: f64,
    /// After the flood: a login and a `/healthz` answered.
    pub after_ok: bool,
}

/// Runs the standalone measurement and prints its table.
pub async fn admin_flood(a: FloodArgs) -> Result<(), String> {
    let users = Arc::new(Users::derive(&Manifest::load(&a.manifest)?)?);
    let rounds = measure(&a, &users).await?;
    print!("{}", table(&a, &rounds));
    Ok(())
}

/// Starts the server, floods it `rounds` times, returns what each did.
pub async fn measure(a: &FloodArgs, users: &Arc<Users>) -> Result<Vec<Round>, String> {
    let admin_port = free_port()?;
    let admin: SocketAddr = format!("127.0.0.1:{admin_port}").parse().expect("addr");
    let mut args: Vec<String> = vec!["--admin".into(), admin.to_string()];
    args.extend(a.serve_args.iter().cloned());
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let log = a.workdir.join("serve-flood.log");
    let (server, addr) =
        spawn_tether(&a.tether, &a.database, &a.workdir, &log, &argv, false).await?;
    // Warm up: one login and one /healthz answered before anything.
    probe(addr, admin, users, 0)
        .await
        .login
        .map_err(|e| format!("login before the flood: {e}"))?;
    healthz(admin)
        .await
        .map_err(|e| format!("/healthz before the flood: {e}"))?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut rounds = Vec::new();
    let mut probe_no = 1;
    for round in 1..=a.rounds {
        say(&format!(
            "admin flood {round}/{}: {} connections holding half a request for {:.0} s",
            a.rounds, a.connections, a.hold
        ));
        let mut r = Round {
            rss_before: rss(server.pid())?,
            ..Round::default()
        };
        let lines_before = count_lines(&log);
        let flood = Flood::start(admin, a.connections, a.procs, a.rate)?;
        let began = Instant::now();
        let cpu_before = cpu_time(server.pid())?;
        let hold = Duration::from_secs_f64(a.hold);
        let mut next_probe = began + Duration::from_secs(2);
        while began.elapsed() < hold {
            tokio::time::sleep(Duration::from_millis(250)).await;
            r.rss_peak = r.rss_peak.max(rss(server.pid())?);
            r.fds_peak = r.fds_peak.max(fds(server.pid()));
            flood.poll(&mut r);
            if Instant::now() >= next_probe {
                let p = probe(addr, admin, users, probe_no).await;
                probe_no += 1;
                r.probes += 1;
                match p.login {
                    Ok(d) => {
                        r.logins_ok += 1;
                        r.login_worst = r.login_worst.max(d);
                    }
                    Err(e) => {
                        r.login_worst = r.login_worst.max(PROBE_TIMEOUT);
                        r.first_login_error.get_or_insert(e);
                    }
                }
                match p.healthz {
                    Ok(d) => {
                        r.healthz_ok += 1;
                        r.healthz_worst = r.healthz_worst.max(d);
                    }
                    Err(e) => {
                        r.healthz_worst = r.healthz_worst.max(PROBE_TIMEOUT);
                        r.first_healthz_error.get_or_insert(e);
                    }
                }
                next_probe = Instant::now() + Duration::from_secs(2);
            }
        }
        flood.poll(&mut r);
        r.cpu = cpu_time(server.pid())?
            .saturating_sub(cpu_before)
            .as_secs_f64()
            / began.elapsed().as_secs_f64();
        drop(flood);
        tokio::time::sleep(Duration::from_secs_f64(a.settle)).await;
        r.rss_after = rss(server.pid())?;
        r.log_lines = count_lines(&log).saturating_sub(lines_before);
        let after = probe(addr, admin, users, probe_no).await;
        probe_no += 1;
        r.after_ok = after.login.is_ok() && after.healthz.is_ok();
        say(&format!(
            "  held {} (connects {}, failed {}), server fds <= {}, RSS {:.1} -> {:.1} -> {:.1} MiB, \
             CPU {:.2} cores, logins {}/{} (worst {}), /healthz {}/{} (worst {}), {} log lines, after: {}",
            r.held_max,
            r.connects,
            r.connect_failures,
            r.fds_peak,
            mib(r.rss_before),
            mib(r.rss_peak),
            mib(r.rss_after),
            r.cpu,
            r.logins_ok,
            r.probes,
            fmt_dur(r.login_worst),
            r.healthz_ok,
            r.probes,
            fmt_dur(r.healthz_worst),
            r.log_lines,
            if r.after_ok { "ok" } else { "**FAILED**" }
        ));
        rounds.push(r);
    }
    drop(server);
    Ok(rounds)
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / 1_048_576.0
}

/// How long a probe may take before it counts as not answered.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

async fn probe(addr: SocketAddr, admin: SocketAddr, users: &Users, i: usize) -> Probe {
    let login = async {
        let began = Instant::now();
        match tokio::time::timeout(PROBE_TIMEOUT, load::tether_login(addr, users, i)).await {
            Ok(Ok(())) => Ok(began.elapsed()),
            Ok(Err(OpError::Refused(e) | OpError::Failed(e))) => Err(e),
            Err(_) => Err(format!("no answer within {} s", PROBE_TIMEOUT.as_secs())),
        }
    };
    let (login, healthz) = tokio::join!(login, healthz(admin));
    Probe { login, healthz }
}

/// `GET /healthz`: its latency when it answers 200 in time.
async fn healthz(admin: SocketAddr) -> Result<Duration, String> {
    let began = Instant::now();
    let get = async {
        let mut s = tokio::net::TcpStream::connect(admin)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: tether\r\nConnection: close\r\n\r\n")
            .await
            .map_err(|e| format!("write: {e}"))?;
        let mut out = Vec::new();
        s.read_to_end(&mut out)
            .await
            .map_err(|e| format!("read: {e}"))?;
        let text = String::from_utf8_lossy(&out);
        if text.starts_with("HTTP/1.1 200") {
            Ok(())
        } else {
            Err(format!(
                "answered {:?}",
                text.lines().next().unwrap_or("nothing")
            ))
        }
    };
    match tokio::time::timeout(PROBE_TIMEOUT, get).await {
        Ok(Ok(())) => Ok(began.elapsed()),
        Ok(Err(e)) => Err(format!("/healthz: {e}")),
        Err(_) => Err(format!(
            "/healthz: no answer within {} s",
            PROBE_TIMEOUT.as_secs()
        )),
    }
}

/// Open descriptors of a process.
fn fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

fn count_lines(path: &Path) -> usize {
    std::fs::read(path).map_or(0, |b| b.iter().filter(|&&c| c == b'\n').count())
}

/// The flood-client processes.
struct Flood {
    children: Vec<Child>,
    stats: Vec<Arc<FloodStats>>,
}

#[derive(Default)]
struct FloodStats {
    held: AtomicU64,
    connects: AtomicU64,
    failures: AtomicU64,
}

impl Flood {
    fn start(
        admin: SocketAddr,
        connections: usize,
        procs: usize,
        rate: u32,
    ) -> Result<Self, String> {
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        let procs = procs.max(1);
        let per = connections.div_ceil(procs);
        let mut flood = Self {
            children: Vec::new(),
            stats: Vec::new(),
        };
        let mut left = connections;
        for k in 0..procs {
            let count = per.min(left);
            left -= count;
            if count == 0 {
                break;
            }
            let mut child = Command::new(&exe)
                .args(["flood-client", "--addr", &admin.to_string()])
                .args(["--count", &count.to_string()])
                .args(["--source", &format!("127.0.0.{}", 20 + k)])
                .args(["--rate", &(rate as usize / procs).max(1).to_string()])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .map_err(|e| format!("spawn flood client: {e}"))?;
            let stdout = child.stdout.take().expect("piped");
            let stats = Arc::new(FloodStats::default());
            let s = stats.clone();
            // Each child prints `held H connects C failed F` every 250 ms.
            std::thread::spawn(move || {
                for line in std::io::BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    let n: Vec<u64> = line
                        .split_whitespace()
                        .filter_map(|w| w.parse().ok())
                        .collect();
                    if let [held, connects, failed] = n[..] {
                        s.held.store(held, Ordering::Relaxed);
                        s.connects.store(connects, Ordering::Relaxed);
                        s.failures.store(failed, Ordering::Relaxed);
                    }
                }
            });
            flood.children.push(child);
            flood.stats.push(stats);
        }
        Ok(flood)
    }

    fn poll(&self, r: &mut Round) {
        let sum = |f: fn(&FloodStats) -> &AtomicU64| -> u64 {
            self.stats
                .iter()
                .map(|s| f(s).load(Ordering::Relaxed))
                .sum()
        };
        r.held_max = r.held_max.max(sum(|s| &s.held));
        r.connects = sum(|s| &s.connects);
        r.connect_failures = sum(|s| &s.failures);
    }
}

impl Drop for Flood {
    fn drop(&mut self) {
        for c in &mut self.children {
            drop(c.stdin.take());
        }
        for c in &mut self.children {
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// `tether-bench flood-client`: holds `count` half-requests to `addr` from
/// `source`, reopening those the server closes, at most `rate` new
/// connections per second, until stdin closes; prints `held H connects C
/// failed F` every 250 ms.
pub async fn client(addr: SocketAddr, count: usize, source: IpAddr, rate: u32) {
    let held = Arc::new(AtomicU64::new(0));
    let connects = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    // Connection attempts are paced by a token bucket refilled every 10 ms.
    let tokens = Arc::new(Semaphore::new(0));
    let per_tick = (rate as usize / 100).max(1);
    {
        let tokens = tokens.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(10));
            loop {
                tick.tick().await;
                let room = (per_tick * 2).saturating_sub(tokens.available_permits());
                tokens.add_permits(per_tick.min(room));
            }
        });
    }
    for _ in 0..count {
        let (held, connects, failed, tokens) = (
            held.clone(),
            connects.clone(),
            failed.clone(),
            tokens.clone(),
        );
        tokio::spawn(async move {
            loop {
                if let Ok(t) = tokens.acquire().await {
                    t.forget();
                }
                connects.fetch_add(1, Ordering::Relaxed);
                let connected =
                    tokio::time::timeout(Duration::from_secs(5), load::connect(addr, Some(source)))
                        .await;
                let mut s = match connected {
                    Ok(Ok(s)) => s,
                    _ => {
                        failed.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue;
                    }
                };
                // Half a request: the head never ends.
                if s.write_all(b"GET /healthz HTTP/1.1\r\nHost: tether\r\n")
                    .await
                    .is_err()
                {
                    failed.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                held.fetch_add(1, Ordering::Relaxed);
                // Held until the server closes it (or answers: 408, 431...).
                let mut buf = [0u8; 512];
                while matches!(s.read(&mut buf).await, Ok(n) if n > 0) {}
                held.fetch_sub(1, Ordering::Relaxed);
            }
        });
    }
    let report = {
        let (held, connects, failed) = (held.clone(), connects.clone(), failed.clone());
        tokio::spawn(async move {
            loop {
                println!(
                    "held {} connects {} failed {}",
                    held.load(Ordering::Relaxed),
                    connects.load(Ordering::Relaxed),
                    failed.load(Ordering::Relaxed)
                );
                let _ = std::io::stdout().flush();
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        })
    };
    let _ = tokio::task::spawn_blocking(|| {
        let mut sink = String::new();
        while std::io::stdin()
            .read_line(&mut sink)
            .map(|n| n > 0)
            .unwrap_or(false)
        {
            sink.clear();
        }
    })
    .await;
    report.abort();
    std::process::exit(0);
}

/// The rounds as a Markdown table.
pub fn table(a: &FloodArgs, rounds: &[Round]) -> String {
    let mut out = format!(
        "\n{}: {} connections holding half an HTTP request to the admin port for {:.0} s per flood \
         (reopened when closed, at most {}/s), {} floods; a device login and a /healthz every 2 s \
         (timeout {} s); RSS read {:.0} s after each flood.\n\n",
        a.label,
        a.connections,
        a.hold,
        a.rate,
        a.rounds,
        PROBE_TIMEOUT.as_secs(),
        a.settle
    );
    out.push_str(
        "| flood | held at most (connects, failed) | server fds at most | server RSS before -> peak -> after | server CPU | device logins answered | /healthz answered | log lines |\n|---|---|---|---|---|---|---|---|\n",
    );
    for (i, r) in rounds.iter().enumerate() {
        out.push_str(&format!(
            "| {} | {} ({}, {}) | {} | {:.1} -> {:.1} -> {:.1} MiB | {:.2} cores | {}/{} (worst {}){} | {}/{} (worst {}){} | {} |\n",
            i + 1,
            r.held_max,
            r.connects,
            r.connect_failures,
            r.fds_peak,
            mib(r.rss_before),
            mib(r.rss_peak),
            mib(r.rss_after),
            r.cpu,
            r.logins_ok,
            r.probes,
            fmt_dur(r.login_worst),
            r.first_login_error
                .as_deref()
                .map(|e| format!(": {e}"))
                .unwrap_or_default(),
            r.healthz_ok,
            r.probes,
            fmt_dur(r.healthz_worst),
            r.first_healthz_error
                .as_deref()
                .map(|e| format!(": {e}"))
                .unwrap_or_default(),
            r.log_lines,
        ));
    }
    out
}
