//! The `tether` command line: `serve`, `demo`, `call`, `keys`, `check`,
//! one module each.
//!
//! Logs go to stderr through `tracing`: `RUST_LOG` (e.g.
//! `RUST_LOG=tether_server=debug`) or `-v` / `-vv` choose the detail.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::OnceLock;
use std::time::Duration;

use clap::{Args, CommandFactory as _, FromArgMatches as _, Parser, Subcommand};
use tether_server::store::{Permission, StoreConfig, normalize_url};

mod call;
mod check;
mod config;
mod demo;
mod device;
mod keys;
mod serve;

/// Tether: devices log in with the accounts of a Django site and exchange
/// calls with the server.
#[derive(Debug, Parser)]
#[command(name = "tether", version = version(), about, long_about = None, propagate_version = true)]
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
    Serve(Box<serve::ServeArgs>),
    /// Create a demo database, serve it on 127.0.0.1:7420 and run a
    /// simulated device against it, printing each step.
    Demo(demo::DemoArgs),
    /// Log in to a server and call one method; prints the reply.
    Call(call::CallArgs),
    /// Stay logged in as a test device: answer device_info, echo (or
    /// refuse) other calls, print what arrives, send a notification per
    /// stdin line (`METHOD [TEXT]`).
    Device(device::DeviceArgs),
    /// Derive a device's cached SCRAM keys from its password (provisioning
    /// without storing the password on the device).
    Keys(keys::KeysArgs),
    /// Check that a database has the tables and columns the server needs,
    /// and count the users who can log in by challenge-response.
    Check(check::CheckArgs),
}

/// `tether --version`: the crate's version and the protocol versions the
/// server and the client speak.
pub fn version() -> &'static str {
    static VERSION: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        format!(
            "{} (protocol version {})",
            env!("CARGO_PKG_VERSION"),
            tether_core::message::PROTOCOL_VERSION
        )
    });
    VERSION.as_str()
}

/// `host`, `host:port`, `1.2.3.4`, `[::1]`, `::1` or `[::1]:7420`: the
/// address with `default_port` added when it has none.
pub fn with_default_port(addr: &str, default_port: u16) -> String {
    let addr = addr.trim();
    if addr.parse::<std::net::SocketAddr>().is_ok() {
        return addr.to_string();
    }
    if let Ok(ip) = addr.parse::<std::net::IpAddr>() {
        return std::net::SocketAddr::new(ip, default_port).to_string();
    }
    if let Some(inner) = addr.strip_prefix('[').and_then(|a| a.strip_suffix(']'))
        && let Ok(ip) = inner.parse::<std::net::Ipv6Addr>()
    {
        return std::net::SocketAddr::new(ip.into(), default_port).to_string();
    }
    if addr.contains(':') {
        addr.to_string()
    } else {
        format!("{addr}:{default_port}")
    }
}

/// One sentence for a failed connection to `addr`.
pub fn connect_error(addr: &str, e: &std::io::Error) -> String {
    use std::io::ErrorKind as K;
    match e.kind() {
        K::ConnectionRefused => {
            format!("connection refused by {addr} — is `tether serve` running?")
        }
        K::TimedOut => format!("no answer from {addr} (timed out) — is the address right?"),
        K::HostUnreachable | K::NetworkUnreachable => {
            format!("cannot reach {addr}: {e} — is the address right?")
        }
        K::NotFound | K::InvalidInput => {
            format!("cannot resolve {addr} — is the host name right?")
        }
        _ => format!("cannot connect to {addr}: {e}"),
    }
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

fn secs(s: f64) -> Duration {
    Duration::try_from_secs_f64(s.max(0.0)).unwrap_or(Duration::MAX)
}

/// Runs the command line; the process's exit code.
pub fn main() -> ExitCode {
    let cli = match parse(std::env::args_os().collect()) {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    let (level, format) = match &cli.command {
        Command::Serve(args) => (args.log_level.as_deref(), args.log_format),
        _ => (None, serve::LogFormat::Text),
    };
    // Held to the end: dropping it writes out the log lines still queued.
    let _log_writer = init_tracing(
        cli.verbose,
        !matches!(cli.command, Command::Serve(_)),
        level,
        format,
    );
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
            Command::Serve(args) => serve::run(*args).await,
            Command::Demo(args) => demo::run(args).await,
            Command::Call(args) => call::run(args).await,
            Command::Device(args) => device::run(args).await,
            Command::Keys(args) => keys::run(args).await,
            Command::Check(args) => check::run(args).await,
        }
    })
}

/// The command line with `serve --config`'s file applied (clap exits on
/// bad arguments and `--help`); `--print-config` prints and exits.
fn parse(argv: Vec<OsString>) -> Result<Cli, ExitCode> {
    let mut command = Cli::command();
    command.build();
    let matches = command.clone().get_matches_from(&argv);
    let Some(("serve", given)) = matches.subcommand() else {
        return Cli::from_arg_matches(&matches).map_err(|e| e.exit());
    };
    let serve = command.find_subcommand("serve").unwrap_or(&command);
    let mut from_file = Vec::new();
    let matches = match given.get_one::<PathBuf>("config") {
        Some(path) => {
            let extra = config::file_args(path, serve, given).map_err(|e| {
                eprintln!("tether serve: {e}");
                ExitCode::from(2)
            })?;
            from_file = extra.keys;
            command
                .clone()
                .get_matches_from(argv.iter().cloned().chain(extra.args))
        }
        None => matches,
    };
    if let Some(("serve", m)) = matches.subcommand()
        && m.get_flag("print_config")
    {
        print!("{}", config::print(serve, m, &from_file));
        return Err(ExitCode::SUCCESS);
    }
    let mut cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    if let (Command::Serve(args), Some(("serve", m))) = (&mut cli.command, matches.subcommand()) {
        args.values = config::values(serve, m);
    }
    Ok(cli)
}

/// `serve`'s arguments parsed again, the configuration file read anew
/// (SIGHUP).
fn reparse_serve() -> Result<serve::ServeArgs, String> {
    let argv: Vec<OsString> = std::env::args_os().collect();
    let mut command = Cli::command();
    command.build();
    let matches = command
        .clone()
        .try_get_matches_from(&argv)
        .map_err(|e| e.to_string())?;
    let Some(("serve", given)) = matches.subcommand() else {
        return Err("not serving".into());
    };
    let serve = command.find_subcommand("serve").unwrap_or(&command);
    let matches = match given.get_one::<PathBuf>("config") {
        Some(path) => {
            let extra = config::file_args(path, serve, given)?;
            command
                .clone()
                .try_get_matches_from(argv.iter().cloned().chain(extra.args))
                .map_err(|e| e.to_string())?
        }
        None => matches,
    };
    let values = match matches.subcommand() {
        Some(("serve", m)) => config::values(serve, m),
        _ => return Err("not serving".into()),
    };
    match Cli::from_arg_matches(&matches)
        .map_err(|e| e.to_string())?
        .command
    {
        Command::Serve(args) => Ok(serve::ServeArgs { values, ..*args }),
        _ => Err("not serving".into()),
    }
}

type FilterHandle =
    tracing_subscriber::reload::Handle<tracing_subscriber::EnvFilter, tracing_subscriber::Registry>;

/// The log filter's reload handle and the level when none is configured.
static LOG_FILTER: OnceLock<(FilterHandle, &'static str)> = OnceLock::new();

/// The filter of `level` (or the default level): sqlx's statements only
/// when a directive names sqlx (slow statements still warn).
fn filter_of(level: &str) -> Result<tracing_subscriber::EnvFilter, String> {
    let directives = if level.contains("sqlx") {
        level.to_string()
    } else {
        format!("{level},sqlx=warn")
    };
    tracing_subscriber::EnvFilter::try_new(&directives).map_err(|e| format!("{directives:?}: {e}"))
}

/// Replaces the log filter (SIGHUP); the filter applied.
fn set_log_filter(level: Option<&str>) -> Result<String, String> {
    let (handle, default) = LOG_FILTER.get().ok_or("logging is not set up")?;
    let level = level.unwrap_or(default);
    let filter = filter_of(level)?;
    handle.reload(filter).map_err(|e| e.to_string())?;
    Ok(level.to_string())
}

/// Logs to stderr. Default level: `info` (`warn` for `demo`, `call`, `keys`
/// and `check`, whose output is their stdout); each `-v` one level more;
/// `RUST_LOG` or `--log-level` instead. sqlx's statements are logged only
/// when asked for by name (`RUST_LOG=info,sqlx=debug`).
/// Lines are formatted where they happen and written by a thread of their
/// own (a runtime worker writing to a slow stderr stalls every session on
/// it); when that thread falls behind, loggers wait instead of dropping
/// lines.
fn init_tracing(
    verbose: u8,
    quiet_by_default: bool,
    level: Option<&str>,
    format: serve::LogFormat,
) -> tracing_appender::non_blocking::WorkerGuard {
    use std::io::IsTerminal as _;
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    let levels = ["warn", "info", "debug", "trace"];
    let base = if quiet_by_default { 0 } else { 1 };
    let default = levels[(base + verbose as usize).min(levels.len() - 1)];
    let env = std::env::var("RUST_LOG").ok();
    let wanted = level.or(env.as_deref()).unwrap_or(default);
    let filter = filter_of(wanted).unwrap_or_else(|e| {
        eprintln!("tether: log filter {e}; using {default}");
        filter_of(default).unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default))
    });
    let (filter, handle) = tracing_subscriber::reload::Layer::new(filter);
    let _ = LOG_FILTER.set((handle, default));
    // Buffered: the thread writes every line waiting for it, then flushes
    // (tracing-appender's worker), so that a burst is a few writes instead
    // of one per line (64 clients logging in: ~33,000 lines/s, each its own
    // write(2) unbuffered).
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(false)
        .thread_name("tether-log")
        .finish(std::io::BufWriter::with_capacity(
            64 * 1024,
            std::io::stderr(),
        ));
    let registry = tracing_subscriber::registry().with(filter);
    let _ = match format {
        serve::LogFormat::Text => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(writer)
                    .with_ansi(std::io::stderr().is_terminal()),
            )
            .try_init(),
        serve::LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(true)
                    .with_span_list(false)
                    .with_writer(writer),
            )
            .try_init(),
    };
    guard
}

fn read_password() -> Result<String, String> {
    if let Ok(p) = std::env::var("TETHER_PASSWORD") {
        return Ok(p);
    }
    rpassword::prompt_password("password: ")
        .map_err(|e| format!("no TETHER_PASSWORD and cannot prompt for a password: {e}"))
}

/// Resolves `addr` and connects to the first address that answers; the
/// error is one sentence with the cause.
pub async fn connect(addr: &str, timeout: Duration) -> Result<tokio::net::TcpStream, String> {
    let resolved: Vec<std::net::SocketAddr> = match tokio::net::lookup_host(addr).await {
        Ok(a) => a.collect(),
        Err(e) => {
            return Err(format!(
                "cannot resolve {addr}: {e} — is the host name right?"
            ));
        }
    };
    let mut last = None;
    for a in &resolved {
        match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(a)).await {
            Ok(Ok(s)) => return Ok(s),
            Ok(Err(e)) => last = Some(connect_error(&a.to_string(), &e)),
            Err(_) => {
                last = Some(connect_error(
                    &a.to_string(),
                    &std::io::ErrorKind::TimedOut.into(),
                ))
            }
        }
    }
    Err(last.unwrap_or_else(|| format!("{addr} resolves to no address")))
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_command_line_is_consistent() {
        // clap's own checks (unique argument ids, ...), which otherwise only
        // fire when a debug build parses its arguments.
        <super::Cli as clap::CommandFactory>::command().debug_assert();
    }

    #[test]
    fn addresses_without_a_port_take_the_default() {
        use super::with_default_port as w;
        assert_eq!(w("127.0.0.1", 7420), "127.0.0.1:7420");
        assert_eq!(w("127.0.0.1:9", 7420), "127.0.0.1:9");
        assert_eq!(w("::1", 7420), "[::1]:7420");
        assert_eq!(w("[::1]", 7420), "[::1]:7420");
        assert_eq!(w("[::1]:9", 7420), "[::1]:9");
        assert_eq!(w("example.com", 7421), "example.com:7421");
        assert_eq!(w("example.com:80", 7421), "example.com:80");
    }
}
