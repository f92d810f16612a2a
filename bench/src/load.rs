//! Client workloads: Tether logins and calls through tether-firmware's host
//! client, and the bare tokio loopback floor they are compared with.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tether_core::method::builtin::Echo;
use tether_core::scram::ClientCredentials;
use tether_firmware::{BufferStore, Config, MAX_CALLS_IN_FLIGHT, Session, TokioClock, host};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpSocket, TcpStream};

use crate::common::{Samples, Summary, Users, Window, rng, v1_config};

/// The argument of every benchmark `echo` call (20 bytes: a call frame is
/// then about 60 bytes on the wire, like the bare 64-byte echo).
pub const ARG: &str = "tether bench payload";

/// The result of a throughput run.
#[derive(Debug, Clone, Default)]
pub struct Throughput {
    /// Operations per second completed in the window.
    pub rate: f64,
    /// Latency of the operations completed in the window.
    pub lat: Summary,
    /// Failed operations, refusals excluded (any fails the benchmark).
    pub errors: usize,
    /// The first failure.
    pub first_error: Option<String>,
    /// Logins the server refused (`unavailable`, `busy`...): the server's
    /// behaviour under load, reported in the table, not a harness failure.
    pub refused: usize,
    /// The first refusal.
    pub first_refusal: Option<String>,
    /// Operations completed in the window(s).
    pub count: usize,
    /// Length of the window(s), seconds.
    pub secs: f64,
    /// The latencies (empty for pipelined runs).
    pub samples: Samples,
}

impl Throughput {
    /// From latency samples taken over `secs`.
    pub fn from_samples(samples: Samples, secs: f64) -> Self {
        let count = samples.0.len();
        Self {
            rate: count as f64 / secs,
            lat: samples.clone().summary(),
            count,
            secs,
            samples,
            ..Default::default()
        }
    }

    /// From a count of operations over `secs` (no latencies).
    pub fn from_count(count: usize, secs: f64) -> Self {
        Self {
            rate: count as f64 / secs,
            lat: Summary {
                n: count,
                ..Default::default()
            },
            count,
            secs,
            ..Default::default()
        }
    }

    /// Two runs of the same measurement as one (interleaved rounds).
    pub fn merge(self, other: Self) -> Self {
        let mut samples = self.samples;
        samples.merge(other.samples);
        let secs = self.secs + other.secs;
        let count = self.count + other.count;
        let mut out = if samples.0.is_empty() {
            Self::from_count(count, secs)
        } else {
            Self::from_samples(samples, secs)
        };
        out.errors = self.errors + other.errors;
        out.first_error = self.first_error.or(other.first_error);
        out.refused = self.refused + other.refused;
        out.first_refusal = self.first_refusal.or(other.first_refusal);
        out
    }

    pub fn check(&self, what: &str) -> Result<(), String> {
        if self.errors > 0 {
            return Err(format!(
                "{what}: {} operations failed, first: {}",
                self.errors,
                self.first_error.as_deref().unwrap_or("?")
            ));
        }
        // Everything refused is the server's answer under load (reported
        // in the table); nothing at all is a broken harness.
        if self.lat.n == 0 && self.refused == 0 {
            return Err(format!("{what}: no operation completed in the window"));
        }
        Ok(())
    }
}

/// Why an operation failed.
#[derive(Debug)]
pub enum OpError {
    /// The server refused the login with this code.
    Refused(String),
    /// Anything else: the benchmark fails.
    Failed(String),
}

impl From<String> for OpError {
    fn from(s: String) -> Self {
        Self::Failed(s)
    }
}

/// Runs `clients` concurrent loops of `op` until the window closes.
pub async fn drive<F, Fut, E>(clients: usize, window: Window, op: F) -> Throughput
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), E>> + Send + 'static,
    E: Into<OpError>,
{
    let op = Arc::new(op);
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (op, next) = (op.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut samples = Samples::default();
            let (mut errors, mut first_error) = (0usize, None);
            let (mut refused, mut first_refusal) = (0usize, None);
            loop {
                let began = Instant::now();
                if began >= window.stop {
                    break;
                }
                let i = next.fetch_add(1, Ordering::Relaxed);
                let result = op(i).await.map_err(Into::into);
                let now = Instant::now();
                match result {
                    Ok(()) if window.counts(began, now) => samples.push(now - began),
                    Ok(()) => {}
                    Err(OpError::Refused(e)) => {
                        refused += 1;
                        first_refusal.get_or_insert(e);
                    }
                    Err(OpError::Failed(e)) => {
                        errors += 1;
                        first_error.get_or_insert(e);
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            }
            (samples, errors, first_error, refused, first_refusal)
        }));
    }
    let mut all = Samples::default();
    let (mut errors, mut first_error) = (0, None);
    let (mut refused, mut first_refusal) = (0, None);
    for t in tasks {
        match t.await {
            Ok((samples, e, first, r, first_r)) => {
                all.merge(samples);
                errors += e;
                if first_error.is_none() {
                    first_error = first;
                }
                refused += r;
                if first_refusal.is_none() {
                    first_refusal = first_r;
                }
            }
            Err(e) => {
                errors += 1;
                first_error.get_or_insert(format!("client task: {e}"));
            }
        }
    }
    let mut out = Throughput::from_samples(all, window.secs());
    out.errors = errors;
    out.first_error = first_error;
    out.refused = refused;
    out.first_refusal = first_refusal;
    out
}

fn device_config() -> Config {
    v1_config()
        .with_handshake_timeout(Duration::from_secs(30))
        .with_call_timeout(Duration::from_secs(30))
}

/// Connects, from `source` when given.
pub async fn connect(addr: SocketAddr, source: Option<IpAddr>) -> std::io::Result<TcpStream> {
    match source {
        None => TcpStream::connect(addr).await,
        Some(ip) => {
            let socket = TcpSocket::new_v4()?;
            socket.bind(SocketAddr::new(ip, 0))?;
            socket.connect(addr).await
        }
    }
}

/// One login as issue 6 defines it: new TCP connection, full SCRAM login
/// (with the device's cached keys), one `echo` call, goodbye.
pub async fn tether_login(addr: SocketAddr, users: &Users, i: usize) -> Result<(), OpError> {
    let (name, keys) = users.get(i);
    let mut store: BufferStore = BufferStore::new();
    let mut rng = rng();
    let login = host::connect(
        addr,
        store.buffers(),
        name,
        ClientCredentials::Keys(keys),
        &mut rng,
        &device_config(),
    )
    .await
    .map_err(|e| match e {
        tether_firmware::Error::Refused { code, .. } => {
            OpError::Refused(format!("refused: {}", code.as_str()))
        }
        e => OpError::Failed(format!("login as {name}: {e}")),
    })?;
    let mut session = login.session;
    let ok = session
        .call::<Echo, _>(&ARG, &mut ())
        .await
        .map(|r| r == ARG)
        .map_err(|e| format!("echo: {e:?}"))?;
    if !ok {
        return Err(OpError::Failed("echo: wrong reply".into()));
    }
    session
        .close()
        .await
        .map(|_| ())
        .map_err(|e| OpError::Failed(format!("goodbye: {e}")))
}

/// The bare floor of a login: new TCP connection and two 120-byte round
/// trips (a login's hello/challenge and proof/welcome), then close.
pub async fn bare_connection(addr: SocketAddr) -> Result<(), String> {
    bare_round_trips(addr, &[120, 120]).await
}

/// A login's network work without its computation: new TCP connection,
/// the two 120-byte round trips of [`bare_connection`] and the login's
/// 64-byte `echo` call, then close (the goodbye left out): how much of a
/// login's cost against [`bare_connection`] is the extra round trip.
pub async fn bare_login_shape(addr: SocketAddr) -> Result<(), String> {
    bare_round_trips(addr, &[120, 120, 64]).await
}

/// New TCP connection, one echo round trip of each size, close.
async fn bare_round_trips(addr: SocketAddr, sizes: &[usize]) -> Result<(), String> {
    let mut s = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    s.set_nodelay(true).map_err(|e| e.to_string())?;
    let msg = [0x5au8; 120];
    let mut buf = [0u8; 120];
    for &n in sizes {
        s.write_all(&msg[..n]).await.map_err(|e| e.to_string())?;
        s.read_exact(&mut buf[..n])
            .await
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// The bare floor of a call: sequential 64-byte echo round trips on one
/// connection.
pub async fn bare_echo(addr: SocketAddr, window: Window) -> Result<Throughput, String> {
    let mut s = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    s.set_nodelay(true).map_err(|e| e.to_string())?;
    let msg = [0x5au8; 64];
    let mut buf = [0u8; 64];
    let mut samples = Samples::default();
    loop {
        let began = Instant::now();
        if began >= window.stop {
            break;
        }
        s.write_all(&msg).await.map_err(|e| e.to_string())?;
        s.read_exact(&mut buf).await.map_err(|e| e.to_string())?;
        let now = Instant::now();
        if window.counts(began, now) {
            samples.push(now - began);
        }
    }
    Ok(Throughput::from_samples(samples, window.secs()))
}

/// The floor without a runtime: a blocking 64-byte echo server on a thread
/// of its own and a blocking client on one thread, sequential round trips
/// over loopback (each side one thread, one blocking syscall per read and
/// per write).
pub fn blocking_echo(window: Window) -> Result<Throughput, String> {
    use std::io::{Read as _, Write as _};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let server = std::thread::spawn(move || {
        let Ok((mut s, _)) = listener.accept() else {
            return;
        };
        let _ = s.set_nodelay(true);
        let mut buf = [0u8; 4096];
        loop {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if s.write_all(&buf[..n]).is_err() {
                        return;
                    }
                }
            }
        }
    });
    let mut s = std::net::TcpStream::connect(addr).map_err(|e| e.to_string())?;
    s.set_nodelay(true).map_err(|e| e.to_string())?;
    let msg = [0x5au8; 64];
    let mut buf = [0u8; 64];
    let mut samples = Samples::default();
    loop {
        let began = Instant::now();
        if began >= window.stop {
            break;
        }
        s.write_all(&msg).map_err(|e| e.to_string())?;
        s.read_exact(&mut buf).map_err(|e| e.to_string())?;
        let now = Instant::now();
        if window.counts(began, now) {
            samples.push(now - began);
        }
    }
    drop(s);
    let _ = server.join();
    Ok(Throughput::from_samples(samples, window.secs()))
}

/// A bare tokio echo server (the other half of the floor).
pub async fn bare_server(listener: tokio::net::TcpListener) {
    loop {
        let Ok((mut s, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let _ = s.set_nodelay(true);
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            loop {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        if s.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                }
            }
        });
    }
}

/// Logs in once for the call benchmarks.
async fn session_for<'b>(
    addr: SocketAddr,
    users: &Users,
    store: &'b mut BufferStore,
) -> Result<Session<'b, host::TcpTransport, TokioClock>, String> {
    let (name, keys) = users.get(0);
    let mut rng = rng();
    let login = host::connect(
        addr,
        store.buffers(),
        name,
        ClientCredentials::Keys(keys),
        &mut rng,
        &device_config(),
    )
    .await
    .map_err(|e| format!("login as {name}: {e}"))?;
    Ok(login.session)
}

/// Sequential `echo` calls on one session (tether-firmware's `call`).
pub async fn calls_sequential(
    addr: SocketAddr,
    users: &Users,
    (warmup, measure): (Duration, Duration),
) -> Result<Throughput, String> {
    let mut store: BufferStore = BufferStore::new();
    let mut session = session_for(addr, users, &mut store).await?;
    let window = Window::new(warmup, measure);
    let mut samples = Samples::default();
    loop {
        let began = Instant::now();
        if began >= window.stop {
            break;
        }
        let ok = session
            .call::<Echo, _>(&ARG, &mut ())
            .await
            .map(|r| r == ARG)
            .map_err(|e| format!("echo: {e:?}"))?;
        if !ok {
            return Err("echo: wrong reply".into());
        }
        let now = Instant::now();
        if window.counts(began, now) {
            samples.push(now - began);
        }
    }
    let _ = session.close().await;
    Ok(Throughput::from_samples(samples, window.secs()))
}

/// Pipelined `echo` calls on one session with tether-firmware's
/// `send_call`/`next_reply`: as many in flight as the client allows
/// ([`MAX_CALLS_IN_FLIGHT`]).
pub async fn calls_pipelined_firmware(
    addr: SocketAddr,
    users: &Users,
    (warmup, measure): (Duration, Duration),
) -> Result<Throughput, String> {
    let mut store: BufferStore = BufferStore::new();
    let mut session = session_for(addr, users, &mut store).await?;
    let window = Window::new(warmup, measure);
    let timeout = Duration::from_secs(30);
    let mut done = 0usize;
    let mut in_flight = 0usize;
    loop {
        let now = Instant::now();
        while in_flight < MAX_CALLS_IN_FLIGHT && now < window.stop {
            let _pending = session
                .send_call::<Echo>(&ARG, timeout)
                .await
                .map_err(|e| format!("send_call: {e:?}"))?;
            in_flight += 1;
        }
        if in_flight == 0 {
            break;
        }
        let reply = session
            .next_reply(&mut ())
            .await
            .map_err(|e| format!("next_reply: {e}"))?;
        match reply.decode::<Echo>() {
            Ok(r) if r == ARG => {}
            other => return Err(format!("echo: {other:?}")),
        }
        in_flight -= 1;
        let now = Instant::now();
        if now >= window.start && now <= window.stop {
            done += 1;
        }
    }
    let _ = session.close().await;
    Ok(Throughput::from_count(done, window.secs()))
}
