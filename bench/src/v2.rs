//! The `v2` stage: protocol v2 (Noise, encrypted) next to v1, with one
//! client for both, tether-core's machines driven over tokio
//! (`tether_test_support::client`), so that the only difference between
//! the rows is the protocol. Issue 15's targets: v2 logins at 64 clients
//! at least 0.5 of the bare connection floor, sequential v2 calls at most
//! 1.1x v1's.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tether_core::method::builtin::Echo;
use tether_core::method::decode_reply;
use tether_core::scram::ClientCredentials;
use tether_test_support::client::{self, ClientError, Protocol};
use tokio::net::TcpStream;

use crate::common::{Samples, Users, Window, fmt_dur, fmt_rate, rng};
use crate::load::{self, ARG, OpError, Throughput};
use crate::run::{RunArgs, helper_server, say, tether_serve};

/// The receive buffer of a benchmark device (the max_frame it announces).
const RX: usize = 4096;

/// What the stage measured.
pub struct Results {
    /// Bare connection + two 120-byte round trips, 64 clients.
    pub floor: Throughput,
    /// The floor's CPU over its windows: the bare server's, the clients'.
    pub floor_cpu: Cpu,
    /// Logins at 64 clients by protocol: v1, v2 NK, v2 NN, with the CPU
    /// `tether serve` and the clients used over their windows.
    pub logins: Vec<(&'static str, Throughput, Cpu)>,
    /// Sequential calls over v1.
    pub calls_v1: Throughput,
    /// Sequential calls over v2 (NK).
    pub calls_v2: Throughput,
}

/// The protocols measured, with their row labels.
fn protocols(key: [u8; 32]) -> [(&'static str, Protocol); 3] {
    [
        ("v1", Protocol::V1),
        ("v2 NK", Protocol::V2(Some(key))),
        ("v2 NN", Protocol::V2(None)),
    ]
}

fn failed(name: &str) -> impl Fn(ClientError) -> OpError + '_ {
    move |e| match e.refusal() {
        Some(code) => OpError::Refused(format!("refused: {code}")),
        None => OpError::Failed(format!("{name}: {e}")),
    }
}

/// One login as issue 6 defines it (new TCP connection, SCRAM with the
/// device's cached keys, one `echo`, goodbye), over `protocol`.
pub async fn login(
    addr: SocketAddr,
    users: &Users,
    i: usize,
    protocol: Protocol,
) -> Result<(), OpError> {
    let (name, keys) = users.get(i);
    let mut stream = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    let mut rx = [0u8; RX];
    let mut out = [0u8; 512];
    let mut conn = client::login(
        &mut stream,
        &mut rx,
        name,
        ClientCredentials::Keys(keys),
        protocol,
        &mut rng(),
    )
    .await
    .map_err(failed(name))?;
    let ok = client::call::<Echo, _, _>(
        &mut stream,
        &mut conn,
        &ARG,
        &mut out,
        |r| matches!(decode_reply::<Echo>(r), Ok(s) if s == ARG),
    )
    .await
    .map_err(failed(name))?;
    if !ok {
        return Err(OpError::Failed("echo: wrong reply".into()));
    }
    client::close(&mut stream, &mut conn)
        .await
        .map_err(failed(name))
}

/// Sequential `echo` calls on one connection over `protocol` until the
/// window closes.
pub async fn calls_sequential(
    addr: SocketAddr,
    users: &Users,
    protocol: Protocol,
    window: Window,
) -> Result<Throughput, String> {
    let (name, keys) = users.get(0);
    let mut stream = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    let mut rx = [0u8; RX];
    let mut out = [0u8; 512];
    let mut conn = client::login(
        &mut stream,
        &mut rx,
        name,
        ClientCredentials::Keys(keys),
        protocol,
        &mut rng(),
    )
    .await
    .map_err(|e| format!("login as {name}: {e}"))?;
    let mut samples = Samples::default();
    loop {
        let began = Instant::now();
        if began >= window.stop {
            break;
        }
        let ok = client::call::<Echo, _, _>(
            &mut stream,
            &mut conn,
            &ARG,
            &mut out,
            |r| matches!(decode_reply::<Echo>(r), Ok(s) if s == ARG),
        )
        .await
        .map_err(|e| format!("echo: {e}"))?;
        if !ok {
            return Err("echo: wrong reply".into());
        }
        let now = Instant::now();
        if window.counts(began, now) {
            samples.push(now - began);
        }
    }
    client::close(&mut stream, &mut conn)
        .await
        .map_err(|e| format!("goodbye: {e}"))?;
    Ok(Throughput::from_samples(samples, window.secs()))
}

/// CPU time (user + system) over a stage's windows: the server's process
/// and the clients' (this process: the load runs here), read from
/// /proc/PID/stat as the hostile stage does.
#[derive(Debug, Clone, Copy, Default)]
pub struct Cpu {
    pub server: Duration,
    pub clients: Duration,
}

impl Cpu {
    fn add(self, other: Self) -> Self {
        Self {
            server: self.server + other.server,
            clients: self.clients + other.clients,
        }
    }

    /// How many cores the server and the clients kept busy together over
    /// `t`'s windows.
    pub fn cores(&self, t: &Throughput) -> f64 {
        (self.server + self.clients).as_secs_f64() / t.secs.max(1e-9)
    }

    /// `server + clients`, each per operation of `t`.
    pub fn per_op(&self, t: &Throughput) -> (Duration, Duration) {
        let n = t.count.max(1) as u32;
        (self.server / n, self.clients / n)
    }
}

/// Runs `drive` while reading the CPU `server` and this process use in
/// `w`.
async fn measured<D>(server: u32, w: Window, drive: D) -> Result<(Throughput, Cpu), String>
where
    D: Future<Output = Throughput>,
{
    let (t, cpu) = tokio::join!(
        drive,
        crate::forward::cpu_in(vec![server, std::process::id()], w)
    );
    let cpu = cpu?;
    Ok((
        t,
        Cpu {
            server: cpu[0],
            clients: cpu[1],
        },
    ))
}

fn merge(a: Option<Throughput>, b: Throughput) -> Throughput {
    match a {
        Some(a) => a.merge(b),
        None => b,
    }
}

/// The server's current public key, from the key file `tether serve`
/// made.
pub fn public_key(file: &Path) -> Result<[u8; 32], String> {
    let keys = tether_server::server_key::load(file)
        .map_err(|e| format!("server key {}: {e}", file.display()))?;
    keys.current
        .map(|k| *k.public())
        .ok_or_else(|| format!("server key {}: no current key", file.display()))
}

/// The stage: `rounds` alternating rounds of the bare floor and logins
/// over each protocol (64 clients, `login` = (warm-up, window)); then of
/// sequential calls over v1 and v2 (`calls`).
pub async fn measure(
    a: &RunArgs,
    users: &Arc<Users>,
    rounds: u32,
    login_window: (Duration, Duration),
    calls_window: (Duration, Duration),
    limits: &[&str],
) -> Result<Results, String> {
    let key_file = a.workdir.join("v2-server-key");
    let key_arg = key_file.to_string_lossy().into_owned();
    let (bare, bare_addr) = helper_server(&["bare-server"], "bare server").await?;
    let mut extra = limits.to_vec();
    extra.extend(["--server-key-file", &key_arg]);
    let (server, addr) = tether_serve(a, "serve-v2-logins.log", &extra).await?;
    let key = public_key(&key_file)?;
    let mut floor = None::<Throughput>;
    let mut floor_cpu = Cpu::default();
    let mut logins: Vec<(&'static str, Option<Throughput>, Cpu)> = protocols(key)
        .iter()
        .map(|(l, _)| (*l, None, Cpu::default()))
        .collect();
    for round in 1..=rounds {
        say(&format!(
            "v2 round {round}/{rounds}: bare connections vs logins v1, v2 NK, v2 NN, 64 clients"
        ));
        let w = Window::new(login_window.0, login_window.1);
        let (t, cpu) = measured(
            bare.pid(),
            w,
            load::drive(64, w, move |_| load::bare_connection(bare_addr)),
        )
        .await?;
        t.check("bare connection + 2 round trips, 64 clients")?;
        floor = Some(merge(floor.take(), t));
        floor_cpu = floor_cpu.add(cpu);
        for (slot, (label, protocol)) in logins.iter_mut().zip(protocols(key)) {
            let w = Window::new(login_window.0, login_window.1);
            let u = users.clone();
            let (t, cpu) = measured(
                server.pid(),
                w,
                load::drive(64, w, move |i| {
                    let u = u.clone();
                    async move { login(addr, &u, i, protocol).await }
                }),
            )
            .await?;
            t.check(&format!("{label} logins at 64 clients"))?;
            slot.1 = Some(merge(slot.1.take(), t));
            slot.2 = slot.2.add(cpu);
        }
    }
    drop(server);
    drop(bare);
    let floor = floor.ok_or("no round")?;
    let logins: Vec<(&'static str, Throughput, Cpu)> = logins
        .into_iter()
        .map(|(l, t, c)| (l, t.unwrap_or_default(), c))
        .collect();
    let (fs, fc) = floor_cpu.per_op(&floor);
    say(&format!(
        "  bare floor: {}/s, CPU per connection: server {}, clients {}; cores busy {:.2}",
        fmt_rate(floor.rate),
        fmt_dur(fs),
        fmt_dur(fc),
        floor_cpu.cores(&floor)
    ));
    for (label, t, cpu) in &logins {
        let (s, c) = cpu.per_op(t);
        say(&format!(
            "  {label}: {}/s ({:.2} of the bare floor {}/s), CPU per login: server {}, clients {}; cores busy {:.2}",
            fmt_rate(t.rate),
            t.rate / floor.rate,
            fmt_rate(floor.rate),
            fmt_dur(s),
            fmt_dur(c),
            cpu.cores(t)
        ));
    }

    let (server, addr) = tether_serve(a, "serve-v2-calls.log", &extra).await?;
    let key = public_key(&key_file)?;
    let (mut v1, mut v2) = (None::<Throughput>, None::<Throughput>);
    for round in 1..=rounds {
        say(&format!(
            "v2 round {round}/{rounds}: sequential calls, v1 vs v2 NK"
        ));
        let w = Window::new(calls_window.0, calls_window.1);
        let t = calls_sequential(addr, users, Protocol::V1, w).await?;
        t.check("v1 sequential calls")?;
        v1 = Some(merge(v1.take(), t));
        let w = Window::new(calls_window.0, calls_window.1);
        let t = calls_sequential(addr, users, Protocol::V2(Some(key)), w).await?;
        t.check("v2 sequential calls")?;
        v2 = Some(merge(v2.take(), t));
    }
    drop(server);
    let (calls_v1, calls_v2) = (v1.ok_or("no round")?, v2.ok_or("no round")?);
    say(&format!(
        "  sequential call p50: v1 {}, v2 {}",
        fmt_dur(calls_v1.lat.p50),
        fmt_dur(calls_v2.lat.p50)
    ));
    Ok(Results {
        floor,
        floor_cpu,
        logins,
        calls_v1,
        calls_v2,
    })
}

/// Seconds of CPU per operation, both sides.
fn cpu_total(cpu: &Cpu, t: &Throughput) -> f64 {
    let (s, c) = cpu.per_op(t);
    (s + c).as_secs_f64()
}

/// The stage's rows: `[measurement, Tether, reference, ratio, target]`.
pub fn rows(r: &Results, mark: fn(bool) -> &'static str) -> Vec<[String; 5]> {
    let lat = |t: &Throughput| format!("p50 {} / p99 {}", fmt_dur(t.lat.p50), fmt_dur(t.lat.p99));
    let cell = |t: &Throughput| {
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
    };
    let floor = format!(
        "bare connect + 2x120 B round trips, 64 clients: {}/s",
        fmt_rate(r.floor.rate)
    );
    let per = |cpu: &Cpu, t: &Throughput| {
        let (s, c) = cpu.per_op(t);
        format!("server {} + clients {}", fmt_dur(s), fmt_dur(c))
    };
    let floor_cpu = per(&r.floor_cpu, &r.floor);
    let mut rows = Vec::new();
    for (label, t, cpu) in &r.logins {
        let x = t.rate / r.floor.rate;
        let target = if label.starts_with("v2") {
            format!(">= 0.5: {}", mark(x >= 0.5))
        } else {
            "reference".into()
        };
        rows.push([
            format!(
                "login {label}, 64 concurrent, tether-core client ({})",
                lat(t)
            ),
            cell(t),
            floor.clone(),
            format!("{x:.2}"),
            target,
        ]);
        rows.push([
            format!("CPU per login {label} (user + system, /proc/PID/stat over the windows)"),
            per(cpu, t),
            format!("bare floor: {floor_cpu}"),
            format!(
                "{:.2}x",
                cpu_total(cpu, t) / cpu_total(&r.floor_cpu, &r.floor)
            ),
            "diagnostic".into(),
        ]);
    }
    let x = r.calls_v2.lat.p50.as_secs_f64() / r.calls_v1.lat.p50.as_secs_f64();
    rows.push([
        "call device->server, sequential, v2 NK vs v1 (tether-core client)".into(),
        format!("{}, {}/s", lat(&r.calls_v2), fmt_rate(r.calls_v2.rate)),
        format!("v1: {}, {}/s", lat(&r.calls_v1), fmt_rate(r.calls_v1.rate)),
        format!("{x:.2}x (p50)"),
        format!("<= 1.1x: {}", mark(x <= 1.1)),
    ]);
    rows
}
