//! Server-to-device calls. The `tether` binary has no way to make the
//! server call a device on demand, so this is tether-server as a library
//! (the same crate, release build), in its own process, with a realm whose
//! avatar answers `echo` and `bench_s2d`: the latter makes the server call
//! the device's `echo` through its `Mind` (sequentially, or with several in
//! flight) for a while and returns what the server measured.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tether_core::message::RefusalCode;
use tether_core::method::Method;
use tether_core::method::builtin::Echo;
use tether_core::scram::ClientCredentials;
use tether_firmware::{BufferStore, Handler, Request, Responded, Responder, host};
use tether_server::realm::reply;
use tether_server::{
    Avatar, CallResult, IncomingCall, Mind, Realm, Server, ServerConfig, ServerSecret, SessionInfo,
    Store, StoreConfig,
};

use crate::common::{Samples, Users, Window, rng, v1_config};
use crate::load::{ARG, Throughput};

/// Device -> server: "call my `echo` for a while and tell me how it went".
pub struct S2d;

impl Method for S2d {
    const NAME: &'static str = "bench_s2d";
    type Args<'a> = S2dArgs;
    type Reply<'a> = S2dStats;
}
impl tether_core::method::ToServer for S2d {}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct S2dArgs {
    /// Calls kept in flight (1: sequential).
    pub in_flight: u32,
    pub warmup_ms: u32,
    pub measure_ms: u32,
}

impl S2dArgs {
    pub fn new(in_flight: u32, warmup: Duration, measure: Duration) -> Self {
        Self {
            in_flight,
            warmup_ms: warmup.as_millis() as u32,
            measure_ms: measure.as_millis() as u32,
        }
    }
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct S2dStats {
    /// Calls completed in the window.
    pub calls: u64,
    pub secs: f64,
    pub p50_ns: u64,
    pub p99_ns: u64,
    pub errors: u64,
}

impl S2dStats {
    /// The device's view of the server's measurement; an error if any call
    /// failed.
    fn throughput(self) -> Result<Throughput, String> {
        if self.errors > 0 {
            return Err(format!("{} server-to-device calls failed", self.errors));
        }
        let mut out = Throughput::from_count(self.calls as usize, self.secs);
        out.lat.p50 = Duration::from_nanos(self.p50_ns);
        out.lat.p99 = Duration::from_nanos(self.p99_ns);
        Ok(out)
    }
}

struct BenchRealm;

struct BenchAvatar {
    mind: Mind,
}

impl Realm for BenchRealm {
    type Avatar = BenchAvatar;

    async fn avatar(&self, _session: &SessionInfo, mind: Mind) -> Result<BenchAvatar, RefusalCode> {
        Ok(BenchAvatar { mind })
    }
}

impl Avatar for BenchAvatar {
    async fn call(&self, call: IncomingCall) -> CallResult {
        if call.is::<Echo>() {
            return reply::<Echo>(&call.args::<Echo>()?);
        }
        if call.is::<S2d>() {
            let args = call.args::<S2d>()?;
            return reply::<S2d>(&drive_mind(self.mind.clone(), args).await);
        }
        Err(call.unknown_method())
    }
}

async fn drive_mind(mind: Mind, args: S2dArgs) -> S2dStats {
    let window = Window::new(
        Duration::from_millis(args.warmup_ms.into()),
        Duration::from_millis(args.measure_ms.into()),
    );
    let mut tasks = Vec::new();
    for _ in 0..args.in_flight.max(1) {
        let mind = mind.clone();
        tasks.push(tokio::spawn(async move {
            let mut samples = Samples::default();
            let mut errors = 0u64;
            loop {
                let began = Instant::now();
                if began >= window.stop {
                    break;
                }
                let result = mind.call::<Echo>(&ARG).await;
                let now = Instant::now();
                match result {
                    Ok(r) if r.get() == ARG => {
                        if window.counts(began, now) {
                            samples.push(now - began);
                        }
                    }
                    _ => {
                        errors += 1;
                        if mind.is_closed() {
                            break;
                        }
                    }
                }
            }
            (samples, errors)
        }));
    }
    let mut all = Samples::default();
    let mut errors = 0;
    for t in tasks {
        match t.await {
            Ok((s, e)) => {
                all.merge(s);
                errors += e;
            }
            Err(_) => errors += 1,
        }
    }
    let calls = all.0.len() as u64;
    let s = all.summary();
    S2dStats {
        calls,
        secs: window.secs(),
        p50_ns: s.p50.as_nanos() as u64,
        p99_ns: s.p99.as_nanos() as u64,
        errors,
    }
}

/// Serves the realm (prints `listening PORT` on stdout once bound).
pub async fn serve(database: &str, listen: &str, max_calls_in_flight: usize) -> Result<(), String> {
    let store = Arc::new(Store::open(StoreConfig::new(database)).map_err(|e| e.to_string())?);
    let mut config = ServerConfig::default();
    config.session.max_calls_in_flight = max_calls_in_flight;
    config.max_handshakes = 1024;
    let server = Server::bind(listen, config, store, BenchRealm, ServerSecret::random())
        .await
        .map_err(|e| format!("bind {listen}: {e}"))?;
    println!("listening {}", server.local_addr().port());
    server.run().await;
    Ok(())
}

/// The device: answers the server's `echo`.
struct EchoDevice;

impl Handler for EchoDevice {
    async fn on_call(&mut self, req: Request<'_>, reply: Responder<'_>) -> Responded {
        if req.is::<Echo>() {
            match req.args::<Echo>() {
                Ok(text) => reply.ok::<Echo>(&text),
                Err(_) => reply.bad_arguments(),
            }
        } else {
            reply.unknown_method()
        }
    }
}

/// Logs a tether-firmware device in to the library server and has the
/// server call it with `in_flight` calls outstanding.
pub async fn server_to_device(
    addr: SocketAddr,
    users: &Users,
    in_flight: u32,
    warmup: Duration,
    measure: Duration,
) -> Result<Throughput, String> {
    let (name, keys) = users.get(0);
    let mut store: BufferStore = BufferStore::new();
    let mut rng = rng();
    let login = host::connect(
        addr,
        store.buffers(),
        name,
        ClientCredentials::Keys(keys),
        &mut rng,
        &v1_config(),
    )
    .await
    .map_err(|e| format!("login as {name}: {e}"))?;
    let mut session = login.session;
    let args = S2dArgs::new(in_flight, warmup, measure);
    let stats = session
        .call_with_timeout::<S2d, _>(
            &args,
            &mut EchoDevice,
            warmup + measure + Duration::from_secs(60),
        )
        .await
        .map_err(|e| format!("bench_s2d: {e:?}"))?;
    let _ = session.close().await;
    stats.throughput()
}

/// As [`server_to_device`], with the device on tether-core alone
/// ([`crate::raw::answer_s2d`]: every read's replies in one write), so the
/// rate is the server's rather than tether-firmware's, which writes each
/// reply on its own.
pub async fn server_to_device_core(
    addr: SocketAddr,
    users: &Users,
    in_flight: u32,
    warmup: Duration,
    measure: Duration,
) -> Result<Throughput, String> {
    let (name, keys) = users.get(0);
    let session = crate::raw::login(addr, name, keys).await?;
    let args = S2dArgs::new(in_flight, warmup, measure);
    let deadline = Instant::now() + warmup + measure + Duration::from_secs(60);
    crate::raw::answer_s2d(session, &args, deadline)
        .await?
        .throughput()
}
