//! `tether-bench run`: every measurement of issue 6 in one run, one table.

use std::fmt::Write as _;
use std::io::BufRead as _;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::{Manifest, Users, Window, cpu_time, fmt_dur, fmt_rate, loadavg, rss};
use crate::idle::Clients;
use crate::load::{self, Throughput};
use crate::{flood, forward, hostile, libserver, raw, v2};

/// What `run` needs (see `tether-bench run --help`).
#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    /// The release-built `tether` binary.
    #[arg(long)]
    pub tether: PathBuf,
    /// The Django-made SQLite database.
    #[arg(long)]
    pub database: PathBuf,
    /// Its manifest (bench/django_users.py).
    #[arg(long)]
    pub manifest: PathBuf,
    /// Python of the Django virtualenv.
    #[arg(long)]
    pub python: PathBuf,
    /// bench/django_check.py.
    #[arg(long)]
    pub django_check: PathBuf,
    /// Firmware sizes: lines `label<TAB>flash bytes<TAB>static RAM bytes<TAB>note`.
    #[arg(long)]
    pub firmware: Option<PathBuf>,
    /// Scratch directory for server logs.
    #[arg(long)]
    pub workdir: PathBuf,
    /// Short durations and few sessions (CI).
    #[arg(long)]
    pub quick: bool,
    /// Idle sessions to hold (default: 19,000 capped by `ulimit -Hn`; quick: 200).
    #[arg(long)]
    pub idle_sessions: Option<usize>,
    /// Heartbeat of the idle-session server, seconds (default 30, the server's; quick: 1).
    #[arg(long)]
    pub idle_heartbeat: Option<u16>,
    /// Write the table (Markdown) here too.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Only these stages (comma-separated: login,variants,calls,v2,forward,s2d,idle,hostile,flood,django); default all.
    #[arg(long)]
    pub only: Option<String>,
    /// Python of the forwarding test project's venv (tests/django-forward/setup).
    #[arg(long)]
    pub forward_python: Option<PathBuf>,
    /// tests/django-forward (served by gunicorn for the forwarded rows).
    #[arg(long)]
    pub forward_project: Option<PathBuf>,
}

struct Plan {
    /// Alternating rounds of floor and Tether measurements.
    rounds: u32,
    round_login: (Duration, Duration),
    round_calls: (Duration, Duration),
    login: (Duration, Duration),
    calls: (Duration, Duration),
    django: Duration,
    idle_sessions: usize,
    idle_procs: usize,
    idle_heartbeat: u16,
    idle_window_heartbeats: u32,
    /// The admin-port flood: connections, seconds per flood, floods.
    flood: (usize, f64, u32),
}

impl Plan {
    fn new(a: &RunArgs) -> Self {
        let s = Duration::from_secs_f64;
        if a.quick {
            Self {
                rounds: 1,
                round_login: (s(0.2), s(0.8)),
                round_calls: (s(0.1), s(0.4)),
                login: (s(0.2), s(0.8)),
                calls: (s(0.1), s(0.4)),
                django: s(2.0),
                idle_sessions: a.idle_sessions.unwrap_or(200),
                idle_procs: 2,
                idle_heartbeat: a.idle_heartbeat.unwrap_or(1),
                idle_window_heartbeats: 2,
                flood: (300, 3.0, 1),
            }
        } else {
            // One process may open `ulimit -Hn` descriptors: leave the
            // server room for its listener, database and runtime.
            let hard = fd_hard_limit().unwrap_or(20_000);
            Self {
                rounds: 4,
                round_login: (s(0.5), s(2.0)),
                round_calls: (s(0.3), s(1.0)),
                login: (s(1.0), s(5.0)),
                calls: (s(1.0), s(4.0)),
                django: s(10.0),
                idle_sessions: a
                    .idle_sessions
                    .unwrap_or_else(|| 19_000.min(hard.saturating_sub(1_000))),
                idle_procs: 4,
                idle_heartbeat: a.idle_heartbeat.unwrap_or(30),
                idle_window_heartbeats: 2,
                flood: (20_000, 60.0, 3),
            }
        }
    }
}

fn fd_hard_limit() -> Option<usize> {
    let out = Command::new("sh")
        .args(["-c", "ulimit -Hn"])
        .output()
        .ok()?;
    String::from_utf8(out.stdout).ok()?.trim().parse().ok()
}

fn fd_soft_limit() -> Option<usize> {
    let out = Command::new("sh")
        .args(["-c", "ulimit -Sn"])
        .output()
        .ok()?;
    String::from_utf8(out.stdout).ok()?.trim().parse().ok()
}

pub(crate) fn say(msg: &str) {
    eprintln!("bench: [{}] {msg}   (load {})", clock(), loadavg());
}

fn clock() -> String {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    format!("{:02}:{:02}:{:02}", t / 3600 % 24, t / 60 % 60, t % 60)
}

pub fn free_port() -> Result<u16, String> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("bind: {e}"))?;
    Ok(l.local_addr().map_err(|e| e.to_string())?.port())
}

/// The handshake limits of the load measurements: 1,024 slots (the
/// default 64 would refuse 512 concurrent logins `busy`), no random early
/// drop, no per-address share (every load client is 127.0.0.1).
const LOAD_LIMITS: [&str; 4] = [
    "--max-startups",
    "1024:30:1024",
    "--max-handshakes-per-address",
    "0",
];

/// A server process of the benchmark; SIGTERM and reaped on drop.
pub struct Proc {
    child: Child,
    name: String,
}

impl Proc {
    /// A started process, named in errors.
    pub fn new(child: Child, name: String) -> Self {
        Self { child, name }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    fn check_alive(&mut self) -> Result<(), String> {
        match self.child.try_wait() {
            Ok(Some(status)) => Err(format!("{} exited: {status}", self.name)),
            _ => Ok(()),
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until `addr` accepts connections.
async fn wait_listening(proc: &mut Proc, addr: SocketAddr) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        proc.check_alive()?;
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("{} does not listen on {addr}", proc.name));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Starts `tether serve` on a free loopback port, with its default logging.
pub(crate) async fn tether_serve(
    a: &RunArgs,
    log: &str,
    extra: &[&str],
) -> Result<(Proc, SocketAddr), String> {
    tether_serve_env(a, log, extra, false).await
}

/// Starts `tether serve`; `quiet`: `RUST_LOG=warn` (no line per login).
async fn tether_serve_env(
    a: &RunArgs,
    log: &str,
    extra: &[&str],
    quiet: bool,
) -> Result<(Proc, SocketAddr), String> {
    let log_path = a.workdir.join(log);
    spawn_tether(&a.tether, &a.database, &a.workdir, &log_path, extra, quiet).await
}

/// Starts `tether` serve on a free loopback port with this database (unless
/// `extra` has its own `--database`), its log (stderr) in `log_path`.
pub async fn spawn_tether(
    tether: &Path,
    database: &Path,
    workdir: &Path,
    log_path: &Path,
    extra: &[&str],
    quiet: bool,
) -> Result<(Proc, SocketAddr), String> {
    let port = free_port()?;
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    let db = std::fs::canonicalize(database).map_err(|e| format!("database: {e}"))?;
    let log_file = std::fs::File::create(log_path).map_err(|e| format!("{log_path:?}: {e}"))?;
    let mut cmd = Command::new(tether);
    cmd.arg("serve");
    if !extra.contains(&"--database") {
        cmd.args(["--database", &format!("sqlite://{}", db.display())]);
    }
    if quiet {
        cmd.env("RUST_LOG", "warn");
    } else {
        cmd.env_remove("RUST_LOG");
    }
    let child = cmd
        .args(["--listen", &addr.to_string()])
        // A fixed decoy secret: nothing written to the working directory.
        .args(["--secret", "tether-bench-decoy-secret"])
        .args(extra)
        .current_dir(workdir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log_file)
        .spawn()
        .map_err(|e| format!("spawn {}: {e}", tether.display()))?;
    let mut proc = Proc {
        child,
        name: format!("tether serve (log {})", log_path.display()),
    };
    wait_listening(&mut proc, addr).await?;
    Ok((proc, addr))
}

/// Starts this binary as a helper server that prints `listening PORT`.
pub(crate) async fn helper_server(args: &[&str], name: &str) -> Result<(Proc, SocketAddr), String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut child = Command::new(exe)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("spawn {name}: {e}"))?;
    let stdout = child.stdout.take().expect("piped");
    let mut proc = Proc {
        child,
        name: name.into(),
    };
    let line = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        let _ = std::io::BufReader::new(stdout).read_line(&mut line);
        line
    })
    .await
    .map_err(|e| e.to_string())?;
    let port: u16 = line
        .trim()
        .strip_prefix("listening ")
        .and_then(|p| p.parse().ok())
        .ok_or_else(|| format!("{name} did not start: {line:?}"))?;
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    wait_listening(&mut proc, addr).await?;
    Ok((proc, addr))
}

#[derive(Debug, Default)]
struct Django {
    rate: f64,
    procs: usize,
    checks: u64,
    per_check: Duration,
    version: String,
}

fn django_check(a: &RunArgs, secs: f64) -> Result<Django, String> {
    let out = Command::new(&a.python)
        .arg(&a.django_check)
        .arg("--database")
        .arg(&a.database)
        .arg("--manifest")
        .arg(&a.manifest)
        .args(["--seconds", &secs.to_string()])
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("django_check: {e}"))?;
    if !out.status.success() {
        return Err(format!("django_check.py failed: {}", out.status));
    }
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).map_err(|e| format!("django_check.py output: {e}"))?;
    let rate = v["rate"].as_f64().unwrap_or(0.0);
    if rate <= 0.0 {
        return Err(format!("django_check.py measured nothing: {v}"));
    }
    Ok(Django {
        rate,
        procs: v["procs"].as_u64().unwrap_or(0) as usize,
        checks: v["checks"].as_u64().unwrap_or(0),
        per_check: Duration::from_secs_f64(v["seconds_per_check"].as_f64().unwrap_or(0.0)),
        version: v["django"].as_str().unwrap_or("?").to_string(),
    })
}

#[derive(Debug, Default)]
struct Idle {
    sessions: usize,
    login_time: Duration,
    rss_before: u64,
    rss_after: u64,
    heartbeat: u16,
    window: Duration,
    cpu: Duration,
}

async fn idle(a: &RunArgs, plan: &Plan) -> Result<Idle, String> {
    let sessions = plan.idle_sessions;
    let soft = fd_soft_limit().unwrap_or(1024);
    if sessions + 100 > soft {
        return Err(format!(
            "{sessions} idle sessions need `ulimit -n` above {} (now {soft}); bench/run raises it to `ulimit -Hn`",
            sessions + 100
        ));
    }
    let max_sessions = (sessions + 64).to_string();
    let heartbeat = plan.idle_heartbeat.to_string();
    let (server, addr) = tether_serve(
        a,
        "serve-idle.log",
        &[
            "--max-sessions",
            &max_sessions,
            // 256 slots, all usable by the 4 client addresses, no early drop.
            "--max-startups",
            "256:30:256",
            "--max-handshakes-per-address",
            "0",
            "--heartbeat",
            &heartbeat,
            "--no-last-login",
        ],
    )
    .await?;
    // Warm the server (runtime threads, database pool) with one session.
    let users = Arc::new(Users::derive(&Manifest::load(&a.manifest)?)?);
    load::tether_login(addr, &users, 0)
        .await
        .map_err(|e| format!("{e:?}"))?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rss_before = rss(server.pid())?;
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let manifest = a.manifest.clone();
    let procs = plan.idle_procs;
    let (mut clients, login_time) = tokio::task::spawn_blocking(move || {
        Clients::start(
            &exe,
            addr,
            &manifest,
            sessions,
            procs,
            Duration::from_secs(600),
        )
    })
    .await
    .map_err(|e| e.to_string())??;
    // Let the logins' transient allocations settle, then measure a whole
    // number of heartbeat intervals.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let window = Duration::from_secs(
        u64::from(plan.idle_heartbeat) * u64::from(plan.idle_window_heartbeats),
    );
    let cpu0 = cpu_time(server.pid())?;
    let t0 = Instant::now();
    tokio::time::sleep(window).await;
    let cpu1 = cpu_time(server.pid())?;
    let window = t0.elapsed();
    let rss_after = rss(server.pid())?;
    clients.alive()?;
    drop(clients);
    drop(server);
    Ok(Idle {
        sessions,
        login_time,
        rss_before,
        rss_after,
        heartbeat: plan.idle_heartbeat,
        window,
        cpu: cpu1.saturating_sub(cpu0),
    })
}

fn merge(a: Option<Throughput>, b: Throughput) -> Throughput {
    match a {
        Some(a) => a.merge(b),
        None => b,
    }
}

/// A server of the `variants` stage (beside its own copy of the database).
struct Variant {
    label: &'static str,
    /// `tether serve`'s flags.
    flags: &'static [&'static str],
    /// `RUST_LOG=warn`: no log line per login.
    quiet: bool,
    /// The database copy in WAL mode.
    wal: bool,
}

const LOGIN_VARIANTS: [Variant; 6] = [
    Variant {
        label: "defaults (Django's rollback journal, `last_login`, `info` log)",
        flags: &[],
        quiet: false,
        wal: false,
    },
    Variant {
        label: "database in WAL mode (`PRAGMA journal_mode=WAL`), defaults otherwise",
        flags: &[],
        quiet: false,
        wal: true,
    },
    Variant {
        label: "`--no-last-login`",
        flags: &["--no-last-login"],
        quiet: false,
        wal: false,
    },
    Variant {
        label: "`--no-last-login --cache-ttl 600`: no database, log lines as by default",
        flags: &["--no-last-login", "--cache-ttl", "600"],
        quiet: false,
        wal: false,
    },
    Variant {
        label: "`RUST_LOG=warn`: no log line, database as by default",
        flags: &[],
        quiet: true,
        wal: false,
    },
    Variant {
        label: "`--no-last-login --cache-ttl 600`, `RUST_LOG=warn`: no database, no log line",
        flags: &["--no-last-login", "--cache-ttl", "600"],
        quiet: true,
        wal: false,
    },
];

async fn logins(addr: SocketAddr, users: &Arc<Users>, clients: usize, w: Window) -> Throughput {
    let u = users.clone();
    load::drive(clients, w, move |i| {
        let u = u.clone();
        async move { load::tether_login(addr, &u, i).await }
    })
    .await
}

#[derive(Default)]
struct Results {
    floor_conn: Option<Throughput>,
    /// Connect + the login's three round trips (no computation).
    floor_login_shape: Option<Throughput>,
    floor_echo: Option<Throughput>,
    /// The single-threaded blocking echo (no runtime).
    floor_blocking: Option<Throughput>,
    logins: Vec<(usize, Throughput)>,
    login_variants: Vec<(String, Throughput)>,
    /// The bare floor measured in the variants' own rounds.
    variants_floor: Option<Throughput>,
    seq: Option<Throughput>,
    pipe_fw: Option<Throughput>,
    pipe_raw: Option<Throughput>,
    fwd: Option<Forwarded>,
    s2d_seq: Option<Throughput>,
    s2d_pipe: Option<Throughput>,
    s2d_pipe_core: Option<Throughput>,
    idle: Option<Idle>,
    hostile: Vec<hostile::Row>,
    flood: Vec<flood::Round>,
    django: Option<Django>,
    /// Protocol v2 next to v1 (the `v2` stage).
    v2: Option<v2::Results>,
}

/// The forwarded-call rows (the `forward` stage).
struct Forwarded {
    builtin_seq: Throughput,
    seq: Throughput,
    direct: Throughput,
    builtin_pipe: Throughput,
    pipe: Throughput,
    workers: usize,
    /// CPU per forwarded call, 64 in flight: `tether serve`, gunicorn.
    cpu_tether: Duration,
    cpu_django: Duration,
}

/// Built-in `echo` against `echo` forwarded to Django
/// (`--forward-builtin echo`), and Django called directly, in alternating
/// rounds; then 64 in flight through both servers.
async fn forwarded(a: &RunArgs, plan: &Plan, users: &Arc<Users>) -> Result<Forwarded, String> {
    let (Some(python), Some(project)) = (&a.forward_python, &a.forward_project) else {
        return Err("the forward stage needs --forward-python and --forward-project".into());
    };
    let workers = 2;
    let port = free_port()?;
    let gaddr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    let gunicorn = forward::gunicorn(python, project, &a.workdir, port, workers)?;
    forward::wait_ready(gaddr).await?;
    let calls = ["--max-handshakes", "1024", "--max-calls-in-flight", "64"];
    let (_builtin, baddr) = tether_serve(a, "serve-builtin.log", &calls).await?;
    let url = format!("http://127.0.0.1:{port}/tether");
    let mut flags = calls.to_vec();
    flags.extend([
        "--forward",
        &url,
        "--forward-secret",
        forward::SECRET,
        "--forward-builtin",
        "echo",
        "--forward-max-calls-per-session",
        "64",
    ]);
    let (forwarding, faddr) = tether_serve(a, "serve-forward.log", &flags).await?;
    let (mut builtin_seq, mut seq, mut direct) = (None, None, None);
    for round in 1..=plan.rounds {
        say(&format!(
            "round {round}/{}: built-in echo vs forwarded to Django vs Django directly",
            plan.rounds
        ));
        let t = load::calls_sequential(baddr, users, plan.round_calls).await?;
        t.check("built-in calls")?;
        builtin_seq = Some(merge(builtin_seq.take(), t));
        let t = load::calls_sequential(faddr, users, plan.round_calls).await?;
        t.check("forwarded calls")?;
        seq = Some(merge(seq.take(), t));
        let w = Window::new(plan.round_calls.0, plan.round_calls.1);
        let t = forward::direct_sequential(gaddr, w).await?;
        t.check("Django directly")?;
        direct = Some(merge(direct.take(), t));
    }
    let (name, keys) = users.get(0);
    say("calls, 64 in flight: built-in, then forwarded");
    let w = Window::new(plan.calls.0, plan.calls.1);
    let builtin_pipe = raw::pipelined(raw::login(baddr, name, keys).await?, 64, w).await?;
    builtin_pipe.check("built-in calls, 64 in flight")?;
    let session = raw::login(faddr, name, keys).await?;
    let w = Window::new(plan.calls.0, plan.calls.1);
    let cpu = tokio::spawn(forward::cpu_in(vec![forwarding.pid(), gunicorn.pid()], w));
    let pipe = raw::pipelined(session, 64, w).await?;
    pipe.check("forwarded calls, 64 in flight")?;
    let cpu = cpu.await.map_err(|e| e.to_string())??;
    let per_call = |d: Duration| d / (pipe.count.max(1) as u32);
    let r = Forwarded {
        builtin_seq: builtin_seq.expect("measured"),
        seq: seq.expect("measured"),
        direct: direct.expect("measured"),
        builtin_pipe,
        cpu_tether: per_call(cpu[0]),
        cpu_django: per_call(cpu[1]),
        pipe,
        workers,
    };
    say(&format!(
        "  built-in p50 {}, forwarded p50 {}, Django directly p50 {}; 64 in flight {}/s vs {}/s",
        fmt_dur(r.builtin_seq.lat.p50),
        fmt_dur(r.seq.lat.p50),
        fmt_dur(r.direct.lat.p50),
        fmt_rate(r.builtin_pipe.rate),
        fmt_rate(r.pipe.rate)
    ));
    Ok(r)
}

pub async fn run(a: RunArgs) -> Result<(), String> {
    let plan = Plan::new(&a);
    let only: Option<Vec<String>> = a
        .only
        .as_ref()
        .map(|s| s.split(',').map(|x| x.trim().to_string()).collect());
    let want = |stage: &str| only.as_ref().is_none_or(|o| o.iter().any(|x| x == stage));
    let load_start = loadavg();
    let started = Instant::now();
    let manifest = Manifest::load(&a.manifest)?;
    say(&format!(
        "deriving the devices' keys ({} distinct passwords, {} iterations)",
        manifest.passwords.len(),
        manifest.iterations()
    ));
    let users = Arc::new(Users::derive(&manifest)?);
    let mut r = Results::default();

    // Tether and its floor side by side: both servers up, measured in
    // alternating rounds so that the load of the machine (shared with
    // other builds) weighs on both alike. Logins and calls get their own
    // `tether serve` each, so that the logins' database writes, which go on
    // after the logins, do not land in the call measurements.
    if want("login") {
        let (bare, bare_addr) = helper_server(&["bare-server"], "bare server").await?;
        let (server, addr) = tether_serve(&a, "serve-logins.log", &LOAD_LIMITS).await?;
        let mut login64 = None::<Throughput>;
        for round in 1..=plan.rounds {
            say(&format!(
                "round {round}/{}: bare connections vs logins, 64 clients",
                plan.rounds
            ));
            let w = Window::new(plan.round_login.0, plan.round_login.1);
            let t = load::drive(64, w, move |_| load::bare_connection(bare_addr)).await;
            t.check("bare connection + 2 round trips, 64 clients")?;
            r.floor_conn = Some(merge(r.floor_conn.take(), t));
            let w = Window::new(plan.round_login.0, plan.round_login.1);
            let t = load::drive(64, w, move |_| load::bare_login_shape(bare_addr)).await;
            t.check("bare connection + a login's 3 round trips, 64 clients")?;
            r.floor_login_shape = Some(merge(r.floor_login_shape.take(), t));
            let w = Window::new(plan.round_login.0, plan.round_login.1);
            let t = logins(addr, &users, 64, w).await;
            t.check("logins at 64 clients")?;
            login64 = Some(merge(login64.take(), t));
        }
        if let (Some(f), Some(s), Some(l)) = (&r.floor_conn, &r.floor_login_shape, &login64) {
            say(&format!(
                "  bare connections {}/s, with a login's round trips {}/s, logins {}/s",
                fmt_rate(f.rate),
                fmt_rate(s.rate),
                fmt_rate(l.rate)
            ));
        }
        drop(bare);
        for clients in [1usize, 64, 512] {
            if clients == 64 {
                r.logins.push((64, login64.take().expect("measured")));
                continue;
            }
            say(&format!("logins: {clients} concurrent clients"));
            let w = Window::new(plan.login.0, plan.login.1);
            let t = logins(addr, &users, clients, w).await;
            t.check(&format!("logins at {clients} clients"))?;
            say(&format!(
                "  {}/s, p50 {}, p99 {}",
                fmt_rate(t.rate),
                fmt_dur(t.lat.p50),
                fmt_dur(t.lat.p99)
            ));
            r.logins.push((clients, t));
        }
        drop(server);
    }

    if want("calls") {
        let (bare, bare_addr) = helper_server(&["bare-server"], "bare server").await?;
        let (server, addr) = tether_serve(
            &a,
            "serve-calls.log",
            &[&LOAD_LIMITS[..], &["--max-calls-in-flight", "64"]].concat(),
        )
        .await?;
        for round in 1..=plan.rounds {
            say(&format!(
                "round {round}/{}: bare 64 B echo vs sequential calls",
                plan.rounds
            ));
            let w = Window::new(plan.round_calls.0, plan.round_calls.1);
            let t = load::bare_echo(bare_addr, w).await?;
            t.check("bare echo")?;
            r.floor_echo = Some(merge(r.floor_echo.take(), t));
            let w = Window::new(plan.round_calls.0, plan.round_calls.1);
            let t = tokio::task::spawn_blocking(move || load::blocking_echo(w))
                .await
                .map_err(|e| e.to_string())??;
            t.check("blocking echo")?;
            r.floor_blocking = Some(merge(r.floor_blocking.take(), t));
            let t = load::calls_sequential(addr, &users, plan.round_calls).await?;
            t.check("sequential calls")?;
            r.seq = Some(merge(r.seq.take(), t));
        }
        if let (Some(e), Some(s)) = (&r.floor_echo, &r.seq) {
            say(&format!(
                "  bare echo p50 {}, call p50 {}",
                fmt_dur(e.lat.p50),
                fmt_dur(s.lat.p50)
            ));
        }
        drop(bare);
        say("calls: pipelined, tether-firmware");
        let t = load::calls_pipelined_firmware(addr, &users, plan.calls).await?;
        t.check("pipelined calls (tether-firmware)")?;
        r.pipe_fw = Some(t);
        say("calls: pipelined, 64 in flight");
        let (name, keys) = users.get(0);
        let session = raw::login(addr, name, keys).await?;
        let w = Window::new(plan.calls.0, plan.calls.1);
        let t = raw::pipelined(session, 64, w).await?;
        t.check("pipelined calls")?;
        r.pipe_raw = Some(t);
        drop(server);
    }

    if want("v2") {
        r.v2 = Some(
            v2::measure(
                &a,
                &users,
                plan.rounds,
                plan.round_login,
                plan.round_calls,
                &LOAD_LIMITS,
            )
            .await?,
        );
    }

    if want("forward") {
        r.fwd = Some(forwarded(&a, &plan, &users).await?);
    }

    if want("variants") {
        // Where the time of a login goes: the same 64 clients against
        // servers with parts of the default turned off or changed, each
        // with its own copy of the database (a server's `last_login`
        // writes land after its round), all up at once and measured in
        // alternating rounds with the bare floor, as the login stage is.
        let mut servers = Vec::new();
        for (i, v) in LOGIN_VARIANTS.iter().enumerate() {
            let copy = a.workdir.join(format!("variant-{i}.sqlite3"));
            std::fs::copy(&a.database, &copy).map_err(|e| format!("copy database: {e}"))?;
            if v.wal {
                let mode = Command::new(&a.python)
                    .args([
                        "-c",
                        "import sqlite3, sys; print(sqlite3.connect(sys.argv[1]).execute('pragma journal_mode=wal').fetchone()[0])",
                    ])
                    .arg(&copy)
                    .output()
                    .map_err(|e| format!("python: {e}"))?;
                if String::from_utf8_lossy(&mode.stdout).trim() != "wal" {
                    return Err("cannot switch the database copy to WAL".into());
                }
            }
            let extra = [&LOAD_LIMITS[..], v.flags].concat();
            let log = a.workdir.join(format!("serve-variant-{i}.log"));
            let (server, addr) =
                spawn_tether(&a.tether, &copy, &a.workdir, &log, &extra, v.quiet).await?;
            servers.push((server, addr, None::<Throughput>));
        }
        let (bare, bare_addr) = helper_server(&["bare-server"], "bare server").await?;
        let mut floor = None::<Throughput>;
        for round in 1..=plan.rounds {
            say(&format!(
                "round {round}/{}: bare connections vs logins on {} servers, 64 clients",
                plan.rounds,
                servers.len()
            ));
            let w = Window::new(plan.round_login.0, plan.round_login.1);
            let t = load::drive(64, w, move |_| load::bare_connection(bare_addr)).await;
            t.check("bare connection + 2 round trips, 64 clients")?;
            floor = Some(merge(floor.take(), t));
            for (v, (_, addr, sum)) in LOGIN_VARIANTS.iter().zip(&mut servers) {
                let w = Window::new(plan.round_login.0, plan.round_login.1);
                let t = logins(*addr, &users, 64, w).await;
                t.check(&format!("logins ({})", v.label))?;
                *sum = Some(merge(sum.take(), t));
            }
        }
        drop(bare);
        r.variants_floor = floor;
        for (v, (server, _, sum)) in LOGIN_VARIANTS.iter().zip(servers) {
            let t = sum.expect("measured");
            say(&format!("  {}: {}/s", v.label, fmt_rate(t.rate)));
            r.login_variants.push((v.label.to_string(), t));
            drop(server);
        }
    }

    if want("s2d") {
        say("server-to-device calls (tether-server library, Mind::call)");
        let db = std::fs::canonicalize(&a.database).map_err(|e| e.to_string())?;
        let url = format!("sqlite://{}", db.display());
        let (server, addr) = helper_server(
            &[
                "lib-server",
                "--database",
                &url,
                "--max-calls-in-flight",
                "64",
            ],
            "library server",
        )
        .await?;
        let (w, m) = plan.calls;
        r.s2d_seq = Some(libserver::server_to_device(addr, &users, 1, w, m).await?);
        r.s2d_pipe = Some(libserver::server_to_device(addr, &users, 64, w, m).await?);
        r.s2d_pipe_core = Some(libserver::server_to_device_core(addr, &users, 64, w, m).await?);
        drop(server);
    }

    if want("idle") {
        say(&format!(
            "idle: {} sessions over {} client processes",
            plan.idle_sessions, plan.idle_procs
        ));
        let i = idle(&a, &plan).await?;
        say(&format!(
            "  RSS {} -> {} MiB",
            i.rss_before >> 20,
            i.rss_after >> 20
        ));
        r.idle = Some(i);
    }

    if want("hostile") {
        r.hostile = hostile::measure(&a, &users).await?;
    }

    if want("flood") {
        let (connections, hold, rounds) = plan.flood;
        let args = flood::FloodArgs {
            tether: a.tether.clone(),
            database: a.database.clone(),
            manifest: a.manifest.clone(),
            workdir: a.workdir.clone(),
            connections,
            hold,
            rounds,
            settle: if a.quick { 1.0 } else { 10.0 },
            rate: 5_000,
            procs: if a.quick { 1 } else { 4 },
            label: "tether serve".into(),
            serve_args: Vec::new(),
        };
        r.flood = flood::measure(&args, &users).await?;
        if let Some(i) = r.flood.iter().position(|f| !f.after_ok) {
            return Err(format!(
                "after admin flood {}, a device login or /healthz went unanswered",
                i + 1
            ));
        }
    }

    if want("django") {
        say("Django check_password on the same rows");
        let secs = plan.django.as_secs_f64();
        let a2 = a.clone();
        r.django = Some(
            tokio::task::spawn_blocking(move || django_check(&a2, secs))
                .await
                .map_err(|e| e.to_string())??,
        );
    }

    let table = render(&a, &plan, &manifest, &r, &load_start, started.elapsed());
    print!("{table}");
    if let Some(out) = &a.out {
        std::fs::write(out, &table).map_err(|e| format!("{}: {e}", out.display()))?;
    }
    Ok(())
}

fn mark(ok: bool) -> &'static str {
    if ok { "yes" } else { "**NO**" }
}

fn lat(t: &Throughput) -> String {
    format!("p50 {} / p99 {}", fmt_dur(t.lat.p50), fmt_dur(t.lat.p99))
}

/// A login rate, with the refusals if there were any.
fn logins_cell(t: &Throughput) -> String {
    if t.refused == 0 {
        format!("{}/s", fmt_rate(t.rate))
    } else {
        format!(
            "{}/s, **{} refused** ({})",
            fmt_rate(t.rate),
            t.refused,
            t.first_refusal.as_deref().unwrap_or("?")
        )
    }
}

fn render(
    a: &RunArgs,
    plan: &Plan,
    manifest: &Manifest,
    r: &Results,
    load_start: &str,
    took: Duration,
) -> String {
    let mut rows: Vec<[String; 5]> = Vec::new();
    let mut row = |m: &str, t: String, reference: String, ratio: String, target: String| {
        rows.push([m.to_string(), t, reference, ratio, target]);
    };
    let django = r.django.as_ref();
    let django_ref = |d: &Django| format!("Django check_password: {}/s", fmt_rate(d.rate));
    for (clients, t) in &r.logins {
        let (reference, ratio, target) = match django {
            Some(d) => {
                let x = t.rate / d.rate;
                let target = if *clients == 64 {
                    format!(">= 1,000x: {}", mark(x >= 1000.0))
                } else {
                    String::new()
                };
                (django_ref(d), format!("{}x", fmt_rate(x)), target)
            }
            None => Default::default(),
        };
        row(
            &format!("login, {clients} concurrent ({})", lat(t)),
            logins_cell(t),
            reference,
            ratio,
            target,
        );
        if *clients == 64
            && let Some(f) = &r.floor_conn
        {
            let x = t.rate / f.rate;
            row(
                "login, 64 concurrent, vs the bare floor",
                logins_cell(t),
                format!(
                    "bare connect + 2x120 B round trips, 64 clients: {}/s",
                    fmt_rate(f.rate)
                ),
                format!("{:.2}", x),
                format!(">= 0.90 (issue 14): {}", mark(x >= 0.90)),
            );
            if let Some(s) = &r.floor_login_shape {
                // The login's network work without its computation: what
                // of the gap is Tether's own (bench/README.md).
                row(
                    "bare connect + a login's round trips (2x120 B, 64 B), 64 clients",
                    format!("{}/s", fmt_rate(s.rate)),
                    format!("bare floor {}/s", fmt_rate(f.rate)),
                    format!("{:.2}", s.rate / f.rate),
                    "diagnostic: a login's round trips, no work".into(),
                );
                row(
                    "login, 64 concurrent, vs the same round trips bare",
                    logins_cell(t),
                    format!("{}/s", fmt_rate(s.rate)),
                    format!("{:.2}", t.rate / s.rate),
                    "diagnostic: Tether's own cost".into(),
                );
            }
        }
    }
    for (label, t) in &r.login_variants {
        let reference = r
            .variants_floor
            .as_ref()
            .map(|f| {
                (
                    format!("bare floor {}/s", fmt_rate(f.rate)),
                    format!("{:.2}", t.rate / f.rate),
                )
            })
            .unwrap_or_default();
        row(
            &format!("login, 64 concurrent, {label} ({})", lat(t)),
            logins_cell(t),
            reference.0,
            reference.1,
            "diagnostic".into(),
        );
    }
    let echo = r.floor_echo.as_ref();
    if let Some(t) = &r.seq {
        let (reference, ratio, target) = match echo {
            Some(e) => {
                let x = t.lat.p50.as_secs_f64() / e.lat.p50.as_secs_f64();
                (
                    format!("bare 64 B echo: {}, {}/s", lat(e), fmt_rate(e.rate)),
                    format!("{x:.2}x (p50)"),
                    format!("<= 1.3x: {}", mark(x <= 1.3)),
                )
            }
            None => Default::default(),
        };
        row(
            "call device->server, sequential",
            format!("{}, {}/s", lat(t), fmt_rate(t.rate)),
            reference,
            ratio,
            target,
        );
    }
    if let (Some(t), Some(b)) = (&r.seq, &r.floor_blocking) {
        let x = t.lat.p50.as_secs_f64() / b.lat.p50.as_secs_f64();
        row(
            "call device->server, sequential, vs a single-threaded blocking floor",
            format!("p50 {}", fmt_dur(t.lat.p50)),
            format!(
                "blocking 64 B echo, one thread each side: {}, {}/s",
                lat(b),
                fmt_rate(b.rate)
            ),
            format!("{x:.2}x (p50)"),
            "diagnostic".into(),
        );
    }
    if let Some(t) = &r.pipe_fw {
        row(
            &format!(
                "call device->server, pipelined {} in flight (tether-firmware's maximum)",
                tether_firmware::MAX_CALLS_IN_FLIGHT
            ),
            format!("{}/s", fmt_rate(t.rate)),
            String::new(),
            String::new(),
            String::new(),
        );
    }
    if let Some(t) = &r.pipe_raw {
        row(
            "call device->server, pipelined 64 in flight (tether-core client)",
            format!("{}/s", fmt_rate(t.rate)),
            String::new(),
            String::new(),
            format!(">= 300,000/s: {}", mark(t.rate >= 300_000.0)),
        );
    }
    if let Some(v) = &r.v2 {
        for [m, t, reference, ratio, target] in v2::rows(v, mark) {
            row(&m, t, reference, ratio, target);
        }
    }
    if let Some(f) = &r.fwd {
        let p50 = |t: &Throughput| t.lat.p50.as_secs_f64();
        row(
            "call device->server, sequential, built-in `echo` (the server answers)",
            format!(
                "{}, {}/s",
                lat(&f.builtin_seq),
                fmt_rate(f.builtin_seq.rate)
            ),
            String::new(),
            String::new(),
            String::new(),
        );
        row(
            &format!(
                "call device->server, sequential, `echo` forwarded to Django 5.2 behind gunicorn ({} gthread workers x 4 threads, `--forward-builtin echo`)",
                f.workers
            ),
            format!("{}, {}/s", lat(&f.seq), fmt_rate(f.seq.rate)),
            format!(
                "the same view called directly (signed POST, keep-alive): {}",
                lat(&f.direct)
            ),
            format!(
                "hop +{} over Django alone; {:.0}x the built-in (p50)",
                fmt_dur(f.seq.lat.p50.saturating_sub(f.direct.lat.p50)),
                p50(&f.seq) / p50(&f.builtin_seq)
            ),
            String::new(),
        );
        row(
            "call device->server, 64 in flight, built-in `echo` (tether-core client)",
            format!("{}/s", fmt_rate(f.builtin_pipe.rate)),
            String::new(),
            String::new(),
            String::new(),
        );
        row(
            "call device->server, 64 in flight, forwarded to Django",
            format!("{}/s", fmt_rate(f.pipe.rate)),
            format!(
                "Django directly, one connection: {}/s; CPU per call: tether serve {}, gunicorn {}",
                fmt_rate(f.direct.rate),
                fmt_dur(f.cpu_tether),
                fmt_dur(f.cpu_django)
            ),
            format!("{:.2}x", f.pipe.rate / f.direct.rate),
            String::new(),
        );
    }
    if let Some(t) = &r.s2d_seq {
        let (reference, ratio) = match echo {
            Some(e) => (
                format!("bare 64 B echo p50 {}", fmt_dur(e.lat.p50)),
                format!(
                    "{:.2}x (p50)",
                    t.lat.p50.as_secs_f64() / e.lat.p50.as_secs_f64()
                ),
            ),
            None => Default::default(),
        };
        row(
            "call server->device (Mind::call), sequential",
            format!("{}, {}/s", lat(t), fmt_rate(t.rate)),
            reference,
            ratio,
            String::new(),
        );
    }
    if let Some(t) = &r.s2d_pipe {
        row(
            "call server->device, pipelined 64 in flight (tether-firmware device)",
            format!("{}/s", fmt_rate(t.rate)),
            String::new(),
            String::new(),
            String::new(),
        );
    }
    if let Some(t) = &r.s2d_pipe_core {
        row(
            "call server->device, pipelined 64 in flight (tether-core device, replies batched)",
            format!("{}/s", fmt_rate(t.rate)),
            String::new(),
            String::new(),
            format!(">= 500,000/s: {}", mark(t.rate >= 500_000.0)),
        );
    }
    if let Some(i) = &r.idle {
        let per = i.rss_after.saturating_sub(i.rss_before) as f64 / i.sessions as f64;
        row(
            &format!(
                "idle sessions: {} held ({} client processes, logged in in {:.1} s)",
                fmt_rate(i.sessions as f64),
                plan.idle_procs,
                i.login_time.as_secs_f64()
            ),
            format!("{:.1} KiB RSS per session", per / 1024.0),
            format!(
                "server RSS {:.1} -> {:.1} MiB",
                i.rss_before as f64 / 1048576.0,
                i.rss_after as f64 / 1048576.0
            ),
            String::new(),
            format!("<= 16 KiB: {}", mark(per <= 16.0 * 1024.0)),
        );
        let beats = i.sessions as f64 * i.window.as_secs_f64() / f64::from(i.heartbeat);
        let pct = i.cpu.as_secs_f64() / i.window.as_secs_f64() * 100.0;
        row(
            &format!("idle sessions: heartbeat CPU (every {} s)", i.heartbeat),
            format!("{pct:.2}% of one core"),
            format!(
                "{:.1} s CPU in {:.0} s, ~{:.0} ping/pong pairs",
                i.cpu.as_secs_f64(),
                i.window.as_secs_f64(),
                beats
            ),
            format!(
                "{:.1} µs per heartbeat",
                i.cpu.as_secs_f64() * 1e6 / beats.max(1.0)
            ),
            String::new(),
        );
    }
    for [m, t, reference, ratio, target] in r.hostile.iter().cloned() {
        row(&m, t, reference, ratio, target);
    }
    let (connections, hold, _) = plan.flood;
    for (i, f) in r.flood.iter().enumerate() {
        let answered = f.logins_ok == f.probes && f.healthz_ok == f.probes;
        row(
            &format!(
                "admin flood {}: {} connections holding half an HTTP request for {hold:.0} s (held at most {})",
                i + 1,
                fmt_rate(connections as f64),
                fmt_rate(f.held_max as f64)
            ),
            format!(
                "device logins {}/{}, /healthz {}/{} answered (worst {} / {})",
                f.logins_ok,
                f.probes,
                f.healthz_ok,
                f.probes,
                fmt_dur(f.login_worst),
                fmt_dur(f.healthz_worst)
            ),
            format!(
                "server RSS {:.1} -> {:.1} -> {:.1} MiB (before, peak, after), fds <= {}, CPU {:.2} cores, {} log lines",
                f.rss_before as f64 / 1048576.0,
                f.rss_peak as f64 / 1048576.0,
                f.rss_after as f64 / 1048576.0,
                f.fds_peak,
                f.cpu,
                f.log_lines
            ),
            String::new(),
            format!("device port and /healthz answer: {}", mark(answered)),
        );
    }
    if let Some(path) = &a.firmware {
        match std::fs::read_to_string(path) {
            Ok(text) => {
                for line in text.lines().filter(|l| !l.trim().is_empty()) {
                    let f: Vec<&str> = line.split('\t').collect();
                    let label = f.first().copied().unwrap_or("?");
                    match (f.get(1), f.get(2)) {
                        (Some(flash), Some(ram)) if !flash.is_empty() => row(
                            &format!("firmware: {label}"),
                            format!("flash {flash} B, static RAM {ram} B"),
                            f.get(3).copied().unwrap_or("").to_string(),
                            String::new(),
                            String::new(),
                        ),
                        _ => row(
                            &format!("firmware: {label}"),
                            "not built".into(),
                            f.get(3).copied().unwrap_or("").to_string(),
                            String::new(),
                            String::new(),
                        ),
                    }
                }
            }
            Err(e) => row(
                "firmware",
                format!("unreadable: {e}"),
                String::new(),
                String::new(),
                String::new(),
            ),
        }
    }
    if let Some(d) = django {
        row(
            &format!(
                "Django {} check_password ({} processes, {} iterations)",
                d.version,
                d.procs,
                fmt_rate(manifest.iterations() as f64)
            ),
            format!("{}/s", fmt_rate(d.rate)),
            format!(
                "{} checks, {:.0} ms each",
                d.checks,
                d.per_check.as_secs_f64() * 1e3
            ),
            String::new(),
            String::new(),
        );
    }

    let header = [
        "measurement",
        "Tether",
        "reference (same run)",
        "ratio",
        "target",
    ];
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\n{} on {} cores; load average {} at the start, {} at the end; {} users ({} distinct passwords, {}), run took {:.0} s.\n",
        if a.quick {
            "bench/run --quick"
        } else {
            "bench/run"
        },
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        load_start,
        loadavg(),
        fmt_rate(manifest.users as f64),
        manifest.passwords.len(),
        format_args!(
            "Django {} pbkdf2_sha256 at {} iterations",
            manifest.django,
            fmt_rate(manifest.iterations() as f64)
        ),
        took.as_secs_f64()
    );
    let mut widths = header.map(|h| h.chars().count());
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: &[String; 5]| {
        let mut s = String::from("|");
        for (c, w) in cells.iter().zip(widths) {
            let _ = write!(s, " {c}{} |", " ".repeat(w - c.chars().count()));
        }
        s
    };
    let _ = writeln!(out, "{}", line(&header.map(String::from)));
    let _ = writeln!(
        out,
        "|{}",
        widths.map(|w| format!("{}|", "-".repeat(w + 2))).concat()
    );
    for r in &rows {
        let _ = writeln!(out, "{}", line(r));
    }
    out
}
