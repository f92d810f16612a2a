//! `tether-bench`: the load generator behind `bench/run` (see bench/README.md).
//!
//! - `run`: every measurement of issue 6 against a release-built `tether
//!   serve`, one table;
//! - `load`: one workload against any running server (for profiling);
//! - `admin-flood`: the admin-port flood of issue 13 against a `tether`
//!   binary (any commit), one table;
//! - `bare-server`, `lib-server`, `idle-client`, `flood-client`: helper
//!   processes `run` and `admin-flood` start themselves.

mod common;
mod flood;
mod forward;
mod hostile;
mod idle;
mod libserver;
mod load;
mod raw;
mod run;
mod v2;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};

use crate::common::{Manifest, Users, Window, fmt_dur, fmt_rate};

#[derive(Debug, Parser)]
#[command(
    name = "tether-bench",
    about = "Tether load generator (bench/run drives it)"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Every measurement, one table.
    Run(run::RunArgs),
    /// One workload against a running server (e.g. one under a profiler).
    Load {
        #[arg(long)]
        addr: SocketAddr,
        #[arg(long)]
        manifest: PathBuf,
        #[arg(long, value_enum)]
        what: Workload,
        #[arg(long, default_value_t = 64)]
        clients: usize,
        #[arg(long, default_value_t = 5.0)]
        secs: f64,
        /// The server's key file (`tether serve --server-key-file`): for
        /// `login-nk`.
        #[arg(long)]
        server_key_file: Option<PathBuf>,
    },
    /// Floods `tether serve --admin` with half-open HTTP requests, repeatedly,
    /// while a device logs in and `/healthz` is asked (issue 13, item 2).
    AdminFlood(flood::FloodArgs),
    /// Holds half-open HTTP requests until stdin closes (`admin-flood` starts it).
    FloodClient {
        #[arg(long)]
        addr: SocketAddr,
        #[arg(long)]
        count: usize,
        #[arg(long)]
        source: IpAddr,
        #[arg(long, default_value_t = 1000)]
        rate: u32,
    },
    /// A bare tokio echo server on a free loopback port (prints `listening PORT`).
    BareServer,
    /// tether-server as a library, with the benchmark's realm (prints `listening PORT`).
    LibServer {
        #[arg(long)]
        database: String,
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: String,
        #[arg(long, default_value_t = 64)]
        max_calls_in_flight: usize,
    },
    /// Holds idle sessions until stdin closes.
    IdleClient {
        #[arg(long)]
        addr: SocketAddr,
        #[arg(long)]
        manifest: PathBuf,
        #[arg(long)]
        first: usize,
        #[arg(long)]
        count: usize,
        #[arg(long)]
        source: IpAddr,
        #[arg(long, default_value_t = 32)]
        concurrency: usize,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Workload {
    /// connect + login + echo + goodbye, `--clients` at once
    Login,
    /// sequential echo calls on one session
    Seq,
    /// 64 echo calls in flight on one session
    Pipe64,
    /// tether-firmware's pipelining (MAX_CALLS_IN_FLIGHT) on one session
    PipeFirmware,
    /// sequential echo calls with the tether-core client (one write, one read per call)
    SeqCore,
    /// server->device calls, one at a time (against `lib-server`)
    S2dSeq,
    /// server->device calls, 64 in flight (against `lib-server`)
    S2dPipe64,
    /// server->device calls, 64 in flight, the device on tether-core with
    /// batched replies (against `lib-server`)
    S2dPipe64Core,
    /// the `v2` stage's login (tether-core client) over v1
    LoginCoreV1,
    /// the `v2` stage's login over v2 NK (needs `--server-key-file`)
    LoginNk,
    /// the `v2` stage's login over v2 NN
    LoginNn,
    /// bare connection + two 120-byte round trips (against `bare-server`)
    BareConn,
    /// bare connection + the login's round trips: 2 x 120 B, 64 B (against
    /// `bare-server`)
    BareLogin,
    /// bare sequential 64-byte echo (against `bare-server`)
    BareEcho,
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = runtime().block_on(async move {
        match cli.command {
            Cmd::Run(args) => run::run(args).await,
            Cmd::Load {
                addr,
                manifest,
                what,
                clients,
                secs,
                server_key_file,
            } => load_one(addr, &manifest, what, clients, secs, server_key_file).await,
            Cmd::AdminFlood(args) => flood::admin_flood(args).await,
            Cmd::FloodClient {
                addr,
                count,
                source,
                rate,
            } => {
                flood::client(addr, count, source, rate).await;
                Ok(())
            }
            Cmd::BareServer => {
                let l = tokio::net::TcpListener::bind("127.0.0.1:0")
                    .await
                    .map_err(|e| e.to_string())?;
                println!(
                    "listening {}",
                    l.local_addr().map_err(|e| e.to_string())?.port()
                );
                load::bare_server(l).await;
                Ok(())
            }
            Cmd::LibServer {
                database,
                listen,
                max_calls_in_flight,
            } => libserver::serve(&database, &listen, max_calls_in_flight).await,
            Cmd::IdleClient {
                addr,
                manifest,
                first,
                count,
                source,
                concurrency,
            } => {
                let users = Arc::new(Users::derive(&Manifest::load(&manifest)?)?);
                idle::client(addr, users, first, count, source, concurrency).await;
                Ok(())
            }
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tether-bench: FAILED: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn load_one(
    addr: SocketAddr,
    manifest: &std::path::Path,
    what: Workload,
    clients: usize,
    secs: f64,
    server_key_file: Option<PathBuf>,
) -> Result<(), String> {
    let users = Arc::new(Users::derive(&Manifest::load(manifest)?)?);
    let (warmup, measure) = (Duration::from_millis(200), Duration::from_secs_f64(secs));
    let w = Window::new(warmup, measure);
    let t = match what {
        Workload::Login => {
            let u = users.clone();
            load::drive(clients, w, move |i| {
                let u = u.clone();
                async move { load::tether_login(addr, &u, i).await }
            })
            .await
        }
        Workload::Seq => load::calls_sequential(addr, &users, (warmup, measure)).await?,
        Workload::Pipe64 => {
            let (name, keys) = users.get(0);
            raw::pipelined(raw::login(addr, name, keys).await?, 64, w).await?
        }
        Workload::SeqCore => {
            let (name, keys) = users.get(0);
            raw::pipelined(raw::login(addr, name, keys).await?, 1, w).await?
        }
        Workload::PipeFirmware => {
            load::calls_pipelined_firmware(addr, &users, (warmup, measure)).await?
        }
        Workload::S2dSeq => libserver::server_to_device(addr, &users, 1, warmup, measure).await?,
        Workload::S2dPipe64 => {
            libserver::server_to_device(addr, &users, 64, warmup, measure).await?
        }
        Workload::S2dPipe64Core => {
            libserver::server_to_device_core(addr, &users, 64, warmup, measure).await?
        }
        Workload::LoginCoreV1 | Workload::LoginNk | Workload::LoginNn => {
            use tether_test_support::client::Protocol;
            let protocol = match what {
                Workload::LoginCoreV1 => Protocol::V1,
                Workload::LoginNn => Protocol::V2(None),
                _ => {
                    let file = server_key_file.ok_or("login-nk needs --server-key-file")?;
                    Protocol::V2(Some(v2::public_key(&file)?))
                }
            };
            let u = users.clone();
            load::drive(clients, w, move |i| {
                let u = u.clone();
                async move { v2::login(addr, &u, i, protocol).await }
            })
            .await
        }
        Workload::BareConn => load::drive(clients, w, move |_| load::bare_connection(addr)).await,
        Workload::BareLogin => load::drive(clients, w, move |_| load::bare_login_shape(addr)).await,
        Workload::BareEcho => load::bare_echo(addr, w).await?,
    };
    t.check("workload")?;
    println!(
        "{what:?}: {}/s, p50 {}, p99 {} ({} samples)",
        fmt_rate(t.rate),
        fmt_dur(t.lat.p50),
        fmt_dur(t.lat.p99),
        t.lat.n
    );
    Ok(())
}
