//! The `tether` command line: `serve`, `demo`, `call`, `keys`, `check`.
//!
//! Logs go to stderr through `tracing`: `RUST_LOG` (e.g.
//! `RUST_LOG=tether_server=debug`) or `-v` / `-vv` choose the detail.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use rand::SeedableRng as _;
use sqlx::{AssertSqlSafe, Row as _};
use tether_core::django::HashAlgorithm;
use tether_core::message::RefusalCode;
use tether_core::method::builtin::{Echo, ServerTime, WhoAmI};
use tether_core::scram::{CachedKeys, ClientCredentials, Mechanism};
use tether_firmware::{
    BufferStore, CallError as DeviceCallError, Config as DeviceConfig, Error as DeviceError,
};
use tracing::{info, warn};

use crate::admin::{Admin, AdminConfig, AdminToken};
use crate::default_realm::DefaultRealm;
use crate::fd_limit;
use crate::log_limit::LogLimitConfig;
use crate::secret::{DEFAULT_SECRET_FILE, SecretOrigin, ServerSecret, to_hex};
use crate::server::{Server, ServerConfig, shutdown_signal};
use crate::session::SessionConfig;
use crate::store::{Backend, Permission, Store, StoreConfig, normalize_url, redact_url};
use crate::throttle::ThrottleConfig;

/// Tether: devices log in with the accounts of a Django site and exchange
/// calls with the server.
#[derive(Debug, Parser)]
#[command(name = "tether", version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    /// More log detail (-v: debug, -vv: trace); RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

/// The commands.
// Parsed once at start: the size of `serve`'s options does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve devices against a Django database.
    Serve(Box<ServeArgs>),
    /// Create a demo database, serve it on 127.0.0.1:7420 and run a
    /// simulated device against it, printing each step.
    Demo(DemoArgs),
    /// Log in to a server and call one method; prints the reply.
    Call(CallArgs),
    /// Derive a device's cached SCRAM keys from its password (provisioning
    /// without storing the password on the device).
    Keys(KeysArgs),
    /// Check that a database has the tables and columns the server needs,
    /// and count the users who can log in by challenge-response.
    Check(CheckArgs),
}

/// Where and how to read Django's users.
#[derive(Debug, Clone, Args)]
pub struct StoreArgs {
    /// Database URL: sqlite://db.sqlite3, postgres://user:pass@host/db,
    /// mysql://user:pass@host/db.
    #[arg(long, env = "DATABASE_URL", default_value = "sqlite://db.sqlite3")]
    pub database: String,
    /// The user table (AUTH_USER_MODEL's db_table).
    #[arg(long, default_value = "auth_user")]
    pub user_table: String,
    /// The USERNAME_FIELD column (e.g. email).
    #[arg(long, default_value = "username")]
    pub username_column: String,
    /// The user's column in the m2m tables [default: MODEL_id, e.g. user_id for auth_user].
    #[arg(long)]
    pub user_fk_column: Option<String>,
    /// The user-groups table [default: USER_TABLE_groups].
    #[arg(long)]
    pub user_groups_table: Option<String>,
    /// The user-permissions table [default: USER_TABLE_user_permissions].
    #[arg(long)]
    pub user_permissions_table: Option<String>,
    /// Only users with this permission (app_label.codename) may log in,
    /// decided as Django's ModelBackend does.
    #[arg(long, value_name = "APP.CODENAME")]
    pub require_perm: Option<Permission>,
    /// Only members of this group may log in.
    #[arg(long, value_name = "NAME")]
    pub require_group: Option<String>,
    /// Do not write last_login on successful logins.
    #[arg(long)]
    pub no_last_login: bool,
    /// Reuse a lookup for this many seconds (0: no cache). A deactivated or
    /// password-changed user can log in for at most this long.
    #[arg(long, default_value_t = 0.0, value_name = "SECS")]
    pub cache_ttl: f64,
    /// Longest a credential lookup may take before the login is refused
    /// `unavailable`.
    #[arg(long, default_value_t = 2.0, value_name = "SECS")]
    pub lookup_timeout: f64,
    /// Most pooled database connections.
    #[arg(long, default_value_t = 8)]
    pub db_connections: u32,
}

impl StoreArgs {
    /// The store configuration.
    pub fn config(&self) -> StoreConfig {
        let mut c = StoreConfig::new(normalize_url(&self.database));
        c.user_table = self.user_table.clone();
        c.username_column = self.username_column.clone();
        c.user_fk_column = self.user_fk_column.clone();
        c.user_groups_table = self.user_groups_table.clone();
        c.user_permissions_table = self.user_permissions_table.clone();
        c.require_perm = self.require_perm.clone();
        c.require_group = self.require_group.clone();
        c.update_last_login = !self.no_last_login;
        c.cache_ttl = secs(self.cache_ttl);
        c.lookup_timeout = secs(self.lookup_timeout).max(Duration::from_millis(10));
        c.max_connections = self.db_connections.max(1);
        c
    }
}

/// `START:RATE:FULL`, as OpenSSH's MaxStartups.
fn parse_max_startups(s: &str) -> Result<(usize, u8, usize), String> {
    let bad =
        || format!("{s:?}: expected START:RATE:FULL, e.g. 32:30:64 (START <= FULL, RATE 0..=100)");
    let mut parts = s.split(':');
    let (Some(start), Some(rate), Some(full), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad());
    };
    let start: usize = start.trim().parse().map_err(|_| bad())?;
    let rate: u8 = rate.trim().parse().map_err(|_| bad())?;
    let full: usize = full.trim().parse().map_err(|_| bad())?;
    if full == 0 || start > full || rate > 100 {
        return Err(bad());
    }
    Ok((start, rate, full))
}

fn secs(s: f64) -> Duration {
    Duration::try_from_secs_f64(s.max(0.0)).unwrap_or(Duration::MAX)
}

/// `tether serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// The database and how to read it.
    #[command(flatten)]
    pub store: StoreArgs,
    /// Address to listen on.
    #[arg(long, default_value = "0.0.0.0:7420")]
    pub listen: String,
    /// The decoy secret (e.g. Django's SECRET_KEY; at least 16 characters).
    /// Without it, --secret-file is used.
    #[arg(long, env = "TETHER_SECRET", hide_env_values = true)]
    pub secret: Option<String>,
    /// File holding the decoy secret; created (mode 0600) with a random
    /// secret if missing.
    #[arg(long, default_value = DEFAULT_SECRET_FILE)]
    pub secret_file: PathBuf,
    /// Iterations of decoy challenges (unknown users and the like) until
    /// the rows have been counted, or when none is pbkdf2; once counted,
    /// decoys take the rows' mechanisms and iteration counts.
    #[arg(long, default_value_t = 1_000_000)]
    pub decoy_iterations: u32,
    /// Longest a login may take, connect to welcome.
    #[arg(long, default_value_t = 10.0, value_name = "SECS")]
    pub handshake_timeout: f64,
    /// Longest a connection may take to send its hello; then it is closed.
    #[arg(long, default_value_t = 5.0, value_name = "SECS")]
    pub hello_timeout: f64,
    /// Logins in progress at once [default: 64]. From half of it on, a new
    /// connection costs someone a place at random, 30% rising to 100% when
    /// full (--max-startups 32:30:64): a connection that has not sent its
    /// hello if there is one, else the newcomer (closed at once); when full
    /// and every login is past its hello, a newcomer is refused `busy`.
    #[arg(long, value_name = "N", conflicts_with = "max_startups")]
    pub max_handshakes: Option<usize>,
    /// OpenSSH's MaxStartups: from START logins in progress on, a new
    /// connection costs someone a place (a silent connection, else itself)
    /// with probability RATE%, rising linearly to 100% at FULL
    /// (= --max-handshakes).
    #[arg(long, value_name = "START:RATE:FULL", value_parser = parse_max_startups)]
    pub max_startups: Option<(usize, u8, usize)>,
    /// Logins in progress at once from one address, IPv6 by /64 (more from
    /// it are refused `busy`) [default: an eighth of --max-handshakes; 0: no
    /// limit but --max-handshakes]. Raise it for fleets behind one NAT or
    /// proxy address.
    #[arg(long, value_name = "N")]
    pub max_handshakes_per_address: Option<usize>,
    /// Live sessions at once (more are refused `busy`).
    #[arg(long, default_value_t = 10_000)]
    pub max_sessions: usize,
    /// Live sessions of one account at once (0: no limit); a login beyond
    /// it is handled by --sessions-per-user-policy.
    #[arg(long, default_value_t = 8)]
    pub max_sessions_per_user: usize,
    /// What a login beyond --max-sessions-per-user does: replace-oldest
    /// (the account's oldest session gets Goodbye(replaced)) or refuse
    /// (the new login is refused `busy`).
    #[arg(long, value_enum, default_value_t = PerUserPolicy::ReplaceOldest)]
    pub sessions_per_user_policy: PerUserPolicy,
    /// Largest frame body accepted after login (512..=65535).
    #[arg(long, default_value_t = 16_384, value_parser = clap::value_parser!(u16).range(512..))]
    pub max_frame: u16,
    /// Heartbeat interval announced to devices; sessions silent for three
    /// intervals are closed.
    #[arg(long, default_value_t = 30, value_name = "SECS", value_parser = clap::value_parser!(u16).range(1..))]
    pub heartbeat: u16,
    /// Calls from one device running at once (more get `busy`; at most 64).
    #[arg(long, default_value_t = 32)]
    pub max_calls_in_flight: usize,
    /// How long calls in flight may take to finish on shutdown.
    #[arg(long, default_value_t = 10.0, value_name = "SECS")]
    pub shutdown_deadline: f64,
    /// Failed logins for one username from one address before it waits
    /// (then one more per --throttle-refill).
    #[arg(long, default_value_t = 5)]
    pub throttle_pair_failures: u32,
    /// Failed logins for one username from any addresses before the
    /// addresses it has not logged in from wait (then one more per
    /// --throttle-refill); addresses it logged in from go on.
    #[arg(long, default_value_t = 10)]
    pub throttle_user_failures: u32,
    /// Failed logins from one source address, any username, before it waits
    /// (then one more per --throttle-addr-refill).
    #[arg(long, default_value_t = 20)]
    pub throttle_addr_failures: u32,
    /// After its free failures, a username (or a username from one
    /// address) may fail once more per this interval.
    #[arg(
        long,
        default_value_t = 300.0,
        value_name = "SECS",
        alias = "throttle-max-delay"
    )]
    pub throttle_refill: f64,
    /// After its free failures, an address may fail once more per this
    /// interval.
    #[arg(long, default_value_t = 30.0, value_name = "SECS")]
    pub throttle_addr_refill: f64,
    /// Serve the admin HTTP API (sessions, calls to devices, kick, health,
    /// Prometheus metrics) on this address, e.g. 127.0.0.1:7421. Off by
    /// default. Requests need `Authorization: Bearer $TETHER_ADMIN_TOKEN`
    /// when that variable is set (16+ characters); without it only a
    /// loopback address is accepted.
    #[arg(long, value_name = "ADDR")]
    pub admin: Option<String>,
    /// How long an admin API call waits for the device's reply (a request
    /// may ask for another with `?timeout=SECS`).
    #[arg(long, default_value_t = 10.0, value_name = "SECS")]
    pub admin_call_timeout: f64,
    /// Re-read the users of live sessions this often (one query for all)
    /// and end with `Goodbye(Revoked)` the sessions of users deactivated,
    /// deleted, whose password changed or who no longer pass
    /// --require-perm/--require-group (0: never).
    #[arg(long, default_value_t = 30.0, value_name = "SECS")]
    pub revalidate: f64,
    /// Forwarding to the Django project.
    #[command(flatten)]
    pub forward: crate::forward::ForwardArgs,
    /// Open admin API connections at once; when all are taken, a new one
    /// with a whole request takes the place of the one that has waited
    /// longest for a request, and others are closed at once.
    #[arg(long, default_value_t = 128, value_name = "N")]
    pub admin_max_connections: usize,
    /// How long an admin request's head may take to arrive (from the
    /// connection's start, or the end of the previous response).
    #[arg(long, default_value_t = 10.0, value_name = "SECS")]
    pub admin_header_timeout: f64,
    /// How long an admin request's body may take to arrive, and a response
    /// may wait for the client to read it.
    #[arg(long, default_value_t = 30.0, value_name = "SECS")]
    pub admin_idle_timeout: f64,
    /// Lines of one kind of repeated warning (refused logins, shed
    /// connections, failed accepts...) written per --log-limit-interval;
    /// the rest are counted in one summary line per interval.
    #[arg(long, default_value_t = 10, value_name = "N")]
    pub log_limit_burst: u32,
    /// The interval of --log-limit-burst.
    #[arg(long, default_value_t = 10.0, value_name = "SECS")]
    pub log_limit_interval: f64,
}

/// What a login beyond `--max-sessions-per-user` does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PerUserPolicy {
    /// The account's oldest session gets `Goodbye { Replaced }`.
    ReplaceOldest,
    /// The new login is refused `busy`.
    Refuse,
}

/// `tether demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:7420")]
    pub listen: String,
    /// The demo database (created if missing).
    #[arg(long, default_value = "sqlite://tether-demo.sqlite3")]
    pub database: String,
    /// Keep serving after the simulated device is done (until Ctrl-C);
    /// by default the demo exits when the device has finished.
    #[arg(long)]
    pub keep_serving: bool,
}

/// The methods `tether call` knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CallMethod {
    /// echo ARG: the server returns ARG.
    Echo,
    /// whoami: the session's identity.
    Whoami,
    /// server_time: the server's clock.
    #[value(name = "server_time", alias = "server-time")]
    ServerTime,
}

/// `tether call`.
#[derive(Debug, Args)]
pub struct CallArgs {
    /// The server.
    #[arg(long, default_value = "127.0.0.1:7420")]
    pub server: String,
    /// The username.
    #[arg(long)]
    pub user: String,
    /// The fewest PBKDF2 iterations to accept from the server (refuse a
    /// server asking for fewer).
    #[arg(long, default_value_t = tether_core::scram::DEFAULT_MIN_ITERATIONS)]
    pub min_iterations: u32,
    /// Seconds to wait for the reply.
    #[arg(long, default_value_t = 10.0)]
    pub timeout: f64,
    /// The method.
    #[arg(value_enum)]
    pub method: CallMethod,
    /// Its argument (echo).
    pub arg: Option<String>,
}

/// Output format of `tether keys`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum KeysFormat {
    /// One field per line.
    Text,
    /// Only the postcard encoding of `CachedKeys`, in hex (what a device
    /// stores and loads with postcard).
    Postcard,
}

/// The mechanism of `tether keys`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum MechanismArg {
    /// SCRAM-SHA-256 (pbkdf2_sha256 rows).
    Sha256,
    /// SCRAM-SHA-1 (pbkdf2_sha1 rows).
    Sha1,
}

/// `tether keys`.
#[derive(Debug, Args)]
pub struct KeysArgs {
    /// The username the keys are for (printed with them).
    #[arg(long)]
    pub user: String,
    /// The salt of the user's Django hash (the third `$` field).
    #[arg(long, required_unless_present = "database")]
    pub salt: Option<String>,
    /// The iteration count of the user's Django hash.
    #[arg(long, required_unless_present = "database")]
    pub iterations: Option<u32>,
    /// The hash's algorithm.
    #[arg(long, value_enum, default_value = "sha256")]
    pub mechanism: MechanismArg,
    /// Read salt, iterations and algorithm from the user's row instead, and
    /// check the password against it.
    #[arg(long)]
    pub database: Option<String>,
    /// The user table (with --database).
    #[arg(long, default_value = "auth_user")]
    pub user_table: String,
    /// The USERNAME_FIELD column (with --database).
    #[arg(long, default_value = "username")]
    pub username_column: String,
    /// Output format.
    #[arg(long, value_enum, default_value = "text")]
    pub format: KeysFormat,
}

/// `tether check`.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// The database and how to read it.
    #[command(flatten)]
    pub store: StoreArgs,
}

/// Runs the command line; the process's exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    // Held to the end: dropping it writes out the log lines still queued.
    let _log_writer = init_tracing(cli.verbose, !matches!(cli.command, Command::Serve(_)));
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tether: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        match cli.command {
            Command::Serve(args) => serve(*args).await,
            Command::Demo(args) => {
                let options = crate::demo::DemoOptions {
                    listen: args.listen,
                    database: args.database,
                    keep_serving: args.keep_serving,
                };
                match crate::demo::run(options).await {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(e) => {
                        eprintln!("tether demo: {e}");
                        ExitCode::FAILURE
                    }
                }
            }
            Command::Call(args) => call(args).await,
            Command::Keys(args) => keys(args).await,
            Command::Check(args) => check(args).await,
        }
    })
}

/// Logs to stderr. Default level: `info` (`warn` for `demo`, `call`, `keys`
/// and `check`, whose output is their stdout); each `-v` one level more.
/// Lines are formatted where they happen and written by a thread of their
/// own (a runtime worker writing to a slow stderr stalls every session on
/// it); when that thread falls behind, loggers wait instead of dropping
/// lines.
fn init_tracing(
    verbose: u8,
    quiet_by_default: bool,
) -> tracing_appender::non_blocking::WorkerGuard {
    use std::io::IsTerminal as _;
    let levels = ["warn", "info", "debug", "trace"];
    let base = if quiet_by_default { 0 } else { 1 };
    let default = levels[(base + verbose as usize).min(levels.len() - 1)];
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(false)
        .thread_name("tether-log")
        .finish(std::io::stderr());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
    guard
}

async fn serve(args: ServeArgs) -> ExitCode {
    // The admin API's settings are checked before anything starts.
    let admin_config = match &args.admin {
        None => None,
        Some(_) => match AdminToken::from_env() {
            Ok(token) => Some(AdminConfig {
                token,
                call_timeout: secs(args.admin_call_timeout).max(Duration::from_millis(1)),
                max_connections: args.admin_max_connections.max(1),
                header_timeout: secs(args.admin_header_timeout).max(Duration::from_millis(1)),
                idle_timeout: secs(args.admin_idle_timeout).max(Duration::from_millis(1)),
                ..AdminConfig::default()
            }),
            Err(e) => {
                eprintln!("tether serve: {e}");
                return ExitCode::FAILURE;
            }
        },
    };
    let store_config = args.store.config();
    let url = redact_url(&store_config.url);
    if let Some(warning) = crate::store::missing_sqlite_file(&store_config.url) {
        warn!("{warning}");
    }
    let db_connections = u64::from(store_config.max_connections);
    let store = match Store::open(store_config) {
        Ok(s) => Arc::new(s),
        Err(e) => {
            eprintln!("tether serve: {e}");
            return ExitCode::FAILURE;
        }
    };
    let forwarder = match args.forward.forwarder(store.metrics()) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("tether serve: {e}");
            return ExitCode::FAILURE;
        }
    };
    store.metrics().log_limit().configure(LogLimitConfig {
        burst: args.log_limit_burst,
        interval: secs(args.log_limit_interval),
    });
    match store.ping().await {
        Ok(()) => info!(database = %url, "credential store ready"),
        Err(e) => warn!(database = %url, error = %e,
            "credential store not reachable; logins are refused `unavailable` until it is"),
    }
    let secret = match &args.secret {
        Some(value) => match ServerSecret::from_value(value) {
            Ok(s) => {
                info!("decoy secret: configured value");
                s
            }
            Err(e) => {
                eprintln!("tether serve: {e}");
                return ExitCode::FAILURE;
            }
        },
        None => match ServerSecret::load_or_create(&args.secret_file) {
            Ok((s, origin)) => {
                match origin {
                    SecretOrigin::Generated(p) => {
                        info!(file = %p.display(), "decoy secret: generated")
                    }
                    SecretOrigin::File(p) => info!(file = %p.display(), "decoy secret: read"),
                    _ => {}
                }
                s
            }
            Err(e) => {
                warn!(file = %args.secret_file.display(), error = %e,
                    "cannot read or write the secret file; using a random secret for this run \
                     (decoy challenges will change on restart: set --secret or TETHER_SECRET)");
                ServerSecret::random()
            }
        },
    };
    let (early_drop_start, early_drop_rate, max_handshakes) = match args.max_startups {
        Some((start, rate, full)) => (Some(start), rate, full),
        None => (None, 30, args.max_handshakes.unwrap_or(64)),
    };
    let config = ServerConfig {
        handshake_timeout: secs(args.handshake_timeout),
        hello_timeout: secs(args.hello_timeout),
        max_handshakes: max_handshakes.max(1),
        early_drop_start,
        early_drop_rate,
        max_handshakes_per_address: args.max_handshakes_per_address,
        max_pending: max_handshakes.max(1) * 4,
        max_sessions: args.max_sessions.max(1),
        max_sessions_per_user: args.max_sessions_per_user,
        sessions_per_user_policy: match args.sessions_per_user_policy {
            PerUserPolicy::ReplaceOldest => crate::per_user::Policy::ReplaceOldest,
            PerUserPolicy::Refuse => crate::per_user::Policy::Refuse,
        },
        max_frame: args.max_frame,
        decoy_iterations: args.decoy_iterations.max(1),
        decoy_census_interval: ServerConfig::default().decoy_census_interval,
        session: SessionConfig {
            heartbeat: Duration::from_secs(args.heartbeat.into()),
            max_calls_in_flight: args.max_calls_in_flight.max(1),
            shutdown_deadline: secs(args.shutdown_deadline),
            ..SessionConfig::default()
        },
        throttle: ThrottleConfig {
            pair_free_failures: args.throttle_pair_failures,
            user_free_failures: args.throttle_user_failures,
            addr_free_failures: args.throttle_addr_failures,
            refill: secs(args.throttle_refill).max(Duration::from_millis(1)),
            addr_refill: secs(args.throttle_addr_refill).max(Duration::from_millis(1)),
            ..ThrottleConfig::default()
        },
        revalidate: Some(secs(args.revalidate)).filter(|d| !d.is_zero()),
    };
    descriptors(fd_limit::Budget {
        sessions: config.max_sessions as u64,
        handshakes: config.max_handshakes as u64,
        pending: config.max_pending as u64,
        admin: admin_config.as_ref().map_or(0, |c| {
            crate::admin::listener::descriptors(c.max_connections) as u64
        }),
        database: db_connections,
    });
    let server = match Server::bind(
        args.listen.as_str(),
        config,
        store,
        match &forwarder {
            Some(f) => DefaultRealm::new().forward_to(f.clone()),
            None => DefaultRealm::new(),
        },
        secret,
    )
    .await
    {
        Ok(s) => s,
        Err(e) => {
            eprintln!("tether serve: cannot listen on {}: {e}", args.listen);
            return ExitCode::FAILURE;
        }
    };
    let handle = server.handle();
    let admin = match (&args.admin, admin_config) {
        (Some(addr), Some(config)) => match Admin::new(&server, config).bind(addr).await {
            Ok(admin) => {
                let handle = handle.clone();
                Some(tokio::spawn(
                    admin.run(async move { handle.shutting_down().await }),
                ))
            }
            Err(e) => {
                eprintln!("tether serve: {e}");
                return ExitCode::FAILURE;
            }
        },
        _ => None,
    };
    tokio::spawn(async move {
        shutdown_signal().await;
        info!("signal received: shutting down gracefully");
        handle.shutdown();
    });
    if let Some(f) = &forwarder {
        crate::forward::log_start(f);
    }
    server.run().await;
    if let Some(f) = forwarder {
        // The sessions' last events (`disconnected`) are queued by now.
        f.close(crate::forward::CLOSE_GRACE).await;
    }
    if let Some(admin) = admin {
        let _ = tokio::time::timeout(Duration::from_secs(5), admin).await;
    }
    ExitCode::SUCCESS
}

/// Raises the soft file descriptor limit to the hard one and warns when the
/// limits may need more than that.
fn descriptors(budget: fd_limit::Budget) {
    let soft = match fd_limit::raise_limit() {
        Ok(l) => {
            if l.soft > l.before {
                info!(
                    from = l.before,
                    to = l.soft,
                    "file descriptor limit raised to the hard limit"
                );
            }
            l.soft
        }
        Err(e) => {
            warn!(error = %e, "cannot read or raise the file descriptor limit");
            return;
        }
    };
    if let Some(warning) = budget.check(soft) {
        warn!("{warning}");
    }
}

fn read_password() -> Result<String, String> {
    if let Ok(p) = std::env::var("TETHER_PASSWORD") {
        return Ok(p);
    }
    rpassword::prompt_password("password: ")
        .map_err(|e| format!("no TETHER_PASSWORD and cannot prompt for a password: {e}"))
}

/// Exit codes of `tether call`: 2 refused, 3 the call failed, 1 anything else.
async fn call(args: CallArgs) -> ExitCode {
    let password = match read_password() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("tether call: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut store: BufferStore<4096, 1024> = BufferStore::new();
    let mut rng = rand::rngs::StdRng::from_rng(&mut rand::rng());
    let timeout = secs(args.timeout);
    let config = DeviceConfig::default()
        .with_min_iterations(args.min_iterations)
        .with_call_timeout(timeout)
        .with_handshake_timeout(timeout);
    let login = match tether_firmware::host::connect(
        args.server.as_str(),
        store.buffers(),
        &args.user,
        ClientCredentials::Password(&password),
        &mut rng,
        &config,
    )
    .await
    {
        Ok(login) => login,
        Err(DeviceError::Refused {
            code,
            retry_after_secs,
        }) => {
            let why = match code {
                RefusalCode::Unauthorized => {
                    "wrong username or password, or the account may not log in"
                }
                RefusalCode::Unsupported => "the server runs none of the mechanisms offered",
                RefusalCode::Throttled => "too many failed logins",
                RefusalCode::Unavailable => "the server cannot reach its user database",
                RefusalCode::Version => "the server speaks another protocol version",
                RefusalCode::Protocol => "the server rejected the handshake",
                RefusalCode::Busy => "the server is at its limit",
            };
            if retry_after_secs > 0 {
                eprintln!(
                    "tether call: login refused: {code}: {why} (retry after {retry_after_secs} s)"
                );
            } else {
                eprintln!("tether call: login refused: {code}: {why}");
            }
            return ExitCode::from(2);
        }
        Err(e) => {
            eprintln!("tether call: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut session = login.session;
    let mut mind = ();
    let result: Result<String, String> = match args.method {
        CallMethod::Echo => {
            let arg = args.arg.clone().unwrap_or_default();
            session
                .call::<Echo, _>(&arg.as_str(), &mut mind)
                .await
                .map(|s| s.to_string())
                .map_err(call_error)
        }
        CallMethod::Whoami => session
            .call::<WhoAmI, _>(&(), &mut mind)
            .await
            .map(|me| {
                format!(
                    "user {} (id {}), session {}, superuser {}",
                    me.username, me.user_id, me.session_id, me.is_superuser
                )
            })
            .map_err(call_error),
        CallMethod::ServerTime => session
            .call::<ServerTime, _>(&(), &mut mind)
            .await
            .map(|ms| ms.to_string())
            .map_err(call_error),
    };
    let _ = session.close().await;
    match result {
        Ok(text) => {
            println!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("tether call: {e}");
            ExitCode::from(3)
        }
    }
}

fn call_error<E: std::fmt::Debug>(e: DeviceCallError<'_, E>) -> String {
    match e {
        DeviceCallError::Remote { code, message } => {
            format!("the server answered {code}: {message}")
        }
        DeviceCallError::Timeout => "no reply in time".into(),
        DeviceCallError::Session(e) => e.to_string(),
        other => format!("{other:?}"),
    }
}

async fn keys(args: KeysArgs) -> ExitCode {
    match keys_inner(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tether keys: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn keys_inner(args: KeysArgs) -> Result<(), String> {
    let mut mechanism = match args.mechanism {
        MechanismArg::Sha256 => Mechanism::ScramSha256,
        MechanismArg::Sha1 => Mechanism::ScramSha1,
    };
    let (mut salt, mut iterations) = (args.salt.clone(), args.iterations);
    let mut row_hash = None;
    if let Some(url) = &args.database {
        let mut config = StoreConfig::new(normalize_url(url));
        config.user_table = args.user_table.clone();
        config.username_column = args.username_column.clone();
        config.update_last_login = false;
        let store = Store::open(config).map_err(|e| e.to_string())?;
        let row = store
            .lookup(&args.user)
            .await
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("no user {:?} in the database", args.user))?;
        store.close().await;
        let parsed = tether_core::django::parse(&row.password).map_err(|e| e.to_string())?;
        mechanism = parsed.mechanism;
        salt = Some(parsed.salt.to_string());
        iterations = Some(parsed.iterations);
        row_hash =
            Some(tether_core::django::credentials(&row.password).map_err(|e| e.to_string())?);
    }
    let salt = salt.ok_or("--salt is required")?;
    let iterations = iterations.ok_or("--iterations is required")?;
    let password = read_password()?;
    let keys = CachedKeys::derive(mechanism, &password, salt.as_bytes(), iterations)
        .map_err(|e| e.to_string())?;
    if let Some(row) = &row_hash
        && !keys.server_key.ct_eq(&row.server_key)
    {
        return Err("the password does not match the user's row".into());
    }
    let mut buf = [0u8; 256];
    let postcard = tether_core::message::encode(&keys, &mut buf).map_err(|e| e.to_string())?;
    match args.format {
        KeysFormat::Postcard => println!("{}", to_hex(postcard)),
        KeysFormat::Text => {
            let b64 = |b: &[u8]| {
                use base64::Engine as _;
                base64::engine::general_purpose::STANDARD.encode(b)
            };
            println!("user: {}", args.user);
            println!("mechanism: {mechanism}");
            println!("iterations: {iterations}");
            println!("salt: {salt}");
            println!("client_key: {}", b64(keys.client_key.as_bytes()));
            println!("server_key: {}", b64(keys.server_key.as_bytes()));
            println!("postcard: {}", to_hex(postcard));
            if row_hash.is_some() {
                println!("checked: the password matches the user's row");
            }
            eprintln!(
                "tether keys: these keys log the device in as {} without the password: \
                 store them as carefully as the password. They stop working when the \
                 password or its hash (salt, iterations) changes.",
                args.user
            );
        }
    }
    Ok(())
}

async fn check(args: CheckArgs) -> ExitCode {
    match check_inner(args).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("tether check: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn check_inner(args: CheckArgs) -> Result<bool, String> {
    let config = args.store.config();
    let url = redact_url(&config.url);
    let store = Store::open(config.clone()).map_err(|e| e.to_string())?;
    let backend = store.backend();
    let q = |s: &str| match backend {
        Backend::MySql => format!("`{s}`"),
        _ => format!("\"{s}\""),
    };
    println!("database: {url} ({})", backend.name());
    let mut ok = true;
    let needs_perm = config.require_perm.is_some();
    let needs_group = config.require_group.is_some();
    let fk = config.fk_column();
    let checks: Vec<(String, Vec<String>, bool)> = vec![
        (
            config.user_table.clone(),
            vec![
                "id".into(),
                config.username_column.clone(),
                "password".into(),
                "is_active".into(),
                "is_superuser".into(),
                "last_login".into(),
            ],
            true,
        ),
        (
            config.groups_table(),
            vec![fk.clone(), "group_id".into()],
            needs_perm || needs_group,
        ),
        (
            config.permissions_table(),
            vec![fk.clone(), "permission_id".into()],
            needs_perm,
        ),
        (
            "auth_group".into(),
            vec!["id".into(), "name".into()],
            needs_group,
        ),
        (
            "auth_group_permissions".into(),
            vec!["group_id".into(), "permission_id".into()],
            needs_perm,
        ),
        (
            "auth_permission".into(),
            vec!["id".into(), "content_type_id".into(), "codename".into()],
            needs_perm,
        ),
        (
            "django_content_type".into(),
            vec!["id".into(), "app_label".into()],
            needs_perm,
        ),
    ];
    for (table, columns, required) in &checks {
        let cols: Vec<String> = columns.iter().map(|c| q(c)).collect();
        let sql = format!("SELECT {} FROM {} WHERE 1 = 0", cols.join(", "), q(table));
        let result = sqlx::query(AssertSqlSafe(sql))
            .fetch_all(store.pool())
            .await;
        match (result, required) {
            (Ok(_), _) => println!("ok      {table} ({})", columns.join(", ")),
            (Err(e), true) => {
                ok = false;
                println!(
                    "MISSING {table} ({}): {}",
                    columns.join(", "),
                    db_message(&e)
                );
            }
            (Err(e), false) => println!(
                "absent  {table} ({}): {} (only needed for --require-perm/--require-group)",
                columns.join(", "),
                db_message(&e)
            ),
        }
    }
    if !ok {
        println!("the server cannot log anyone in with this database and these options");
        return Ok(false);
    }
    match store.ping().await {
        Ok(()) => println!("ok      login query: {}", store.lookup_sql()),
        Err(e) => {
            println!("FAILED  login query: {e}");
            return Ok(false);
        }
    }
    if let Some(perm) = &config.require_perm {
        let sql = format!(
            "SELECT count(*) FROM {p} p JOIN {ct} ct ON ct.{id} = p.{ctid} \
             WHERE ct.{app} = {ph1} AND p.{code} = {ph2}",
            p = q("auth_permission"),
            ct = q("django_content_type"),
            id = q("id"),
            ctid = q("content_type_id"),
            app = q("app_label"),
            code = q("codename"),
            ph1 = if backend == Backend::Postgres {
                "$1"
            } else {
                "?"
            },
            ph2 = if backend == Backend::Postgres {
                "$2"
            } else {
                "?"
            },
        );
        let n: i64 = sqlx::query(AssertSqlSafe(sql))
            .bind(perm.app_label.as_str())
            .bind(perm.codename.as_str())
            .fetch_one(store.pool())
            .await
            .and_then(|r| r.try_get(0))
            .map_err(|e| e.to_string())?;
        if n == 0 {
            println!("WARNING permission {perm} does not exist: only superusers can log in");
        } else {
            println!("ok      permission {perm} exists");
        }
    }
    if let Some(group) = &config.require_group {
        let sql = format!(
            "SELECT count(*) FROM {g} WHERE {name} = {ph}",
            g = q("auth_group"),
            name = q("name"),
            ph = if backend == Backend::Postgres {
                "$1"
            } else {
                "?"
            },
        );
        let n: i64 = sqlx::query(AssertSqlSafe(sql))
            .bind(group.as_str())
            .fetch_one(store.pool())
            .await
            .and_then(|r| r.try_get(0))
            .map_err(|e| e.to_string())?;
        if n == 0 {
            println!("WARNING group {group:?} does not exist: nobody can log in");
        } else {
            println!("ok      group {group:?} exists");
        }
    }
    // Per algorithm: how many active users can log in by challenge-response.
    let sql = format!(
        "SELECT {pw}, CASE WHEN {active} THEN 1 ELSE 0 END FROM {t}",
        pw = q("password"),
        active = q("is_active"),
        t = q(&config.user_table),
    );
    let rows = sqlx::query(AssertSqlSafe(sql))
        .fetch_all(store.pool())
        .await
        .map_err(|e| e.to_string())?;
    let mut by_algorithm: BTreeMap<&'static str, (HashAlgorithm, usize, usize)> = BTreeMap::new();
    let mut iterations: BTreeMap<u32, usize> = BTreeMap::new();
    let (mut can, mut inactive) = (0usize, 0usize);
    for row in &rows {
        let password: String = row.try_get(0).map_err(|e| e.to_string())?;
        let active: i64 = row.try_get(1).map_err(|e| e.to_string())?;
        if active == 0 {
            inactive += 1;
            continue;
        }
        let algorithm = HashAlgorithm::identify(&password);
        let usable = tether_core::django::credentials(&password).is_ok();
        let entry = by_algorithm
            .entry(algorithm.name())
            .or_insert((algorithm, 0, 0));
        if usable {
            entry.1 += 1;
            can += 1;
            if let Ok(p) = tether_core::django::parse(&password) {
                *iterations.entry(p.iterations).or_default() += 1;
            }
        } else {
            entry.2 += 1;
        }
    }
    println!(
        "users: {} ({} inactive, not counted below)",
        rows.len(),
        inactive
    );
    let mut advice = Vec::new();
    for (algorithm, (alg, yes, no)) in &by_algorithm {
        if *no == 0 {
            println!("  {algorithm:<14} {yes:>6} can log in by challenge-response");
        } else if *yes == 0 {
            println!("  {algorithm:<14} {no:>6} cannot log in by challenge-response");
            if !advice.contains(&alg.advice()) {
                advice.push(alg.advice());
            }
        } else {
            println!(
                "  {algorithm:<14} {yes:>6} can, {no} cannot (malformed hash: set the password again)"
            );
        }
    }
    for text in advice {
        println!("  what to do: {text}");
    }
    println!("active users who can log in by challenge-response: {can}");
    // Migration progress to scram_sha256 (docs/DJANGO.md section 4).
    let count = |a: HashAlgorithm| by_algorithm.get(a.name()).map_or(0, |e| e.1);
    let verifiers = count(HashAlgorithm::ScramSha256);
    let convertible = count(HashAlgorithm::Pbkdf2Sha256);
    let equivalent = convertible + count(HashAlgorithm::Pbkdf2Sha1);
    if can > 0 {
        println!(
            "scram_sha256 rows (a copy cannot log a device in): {verifiers} of {can} ({:.0}%)",
            100.0 * verifiers as f64 / can as f64
        );
    }
    if equivalent > 0 {
        println!(
            "hint: {equivalent} pbkdf2 rows are password-equivalent for Tether (a copy of the \
             table logs their devices in): put django_tether.hashers.ScramSHA256PasswordHasher \
             first in PASSWORD_HASHERS, then `manage.py tether_convert_hashes` converts the \
             {convertible} pbkdf2_sha256 rows at once and devices keep their keys; the others \
             convert as their users log in on the site"
        );
    }
    if !iterations.is_empty() {
        let list: Vec<String> = iterations
            .iter()
            .map(|(i, n)| format!("{i} ({n})"))
            .collect();
        println!("PBKDF2 iterations in use: {}", list.join(", "));
    }
    match store
        .census(store.config().lookup_timeout.max(Duration::from_secs(30)))
        .await
    {
        Ok(counts) => match crate::decoy::DecoyMix::from_counts(&counts) {
            Some(mix) => println!(
                "decoy challenges (shares of the pbkdf2 and scram_sha256 rows, inactive too): {mix}"
            ),
            None => {
                println!(
                    "decoy challenges: no pbkdf2 or scram_sha256 row; SCRAM-SHA-256 at --decoy-iterations"
                )
            }
        },
        Err(e) => println!("decoy challenges: cannot count the rows: {e}"),
    }
    if store.backend() == Backend::Sqlite
        && let Ok(row) = sqlx::query("PRAGMA journal_mode")
            .fetch_one(store.pool())
            .await
        && let Ok(mode) = row.try_get::<String, _>(0)
    {
        println!("sqlite journal mode: {mode}");
        if !mode.eq_ignore_ascii_case("wal") {
            println!(
                "hint: WAL mode lets logins read while Django writes: sqlite3 DB 'PRAGMA journal_mode=WAL' (kept in the file)"
            );
        }
    }
    store.close().await;
    Ok(true)
}

fn db_message(e: &sqlx::Error) -> String {
    match e {
        sqlx::Error::Database(d) => d.message().to_string(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_command_line_is_consistent() {
        // clap's own checks (unique argument ids, ...), which otherwise only
        // fire when a debug build parses its arguments.
        <super::Cli as clap::CommandFactory>::command().debug_assert();
    }
}
