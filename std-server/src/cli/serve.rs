//! `tether serve`: the server, from its flags (and `--config`).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, ValueEnum};
use tether_server::admin::{Admin, AdminConfig, AdminToken};
use tether_server::default_realm::DefaultRealm;
use tether_server::fd_limit;
use tether_server::log_limit::LogLimitConfig;
use tether_server::secret::{DEFAULT_SECRET_FILE, SecretOrigin, ServerSecret};
use tether_server::server::{Server, ServerConfig, shutdown_signal};
use tether_server::session::SessionConfig;
use tether_server::store::{Store, redact_url};
use tether_server::throttle::ThrottleConfig;
use tracing::{info, warn};

use super::{StoreArgs, secs, with_default_port};

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
    /// Protocol v2: the server's static key file (current and previous
    /// X25519 key), created (mode 0600) with a fresh key if missing;
    /// `tether keys --server` prints its public half for devices.
    #[arg(long, default_value = tether_server::server_key::DEFAULT_SERVER_KEY_FILE)]
    pub server_key_file: PathBuf,
    /// Refuse v1 logins (`version`): only encrypted (protocol v2) sessions.
    #[arg(long)]
    pub require_encryption: bool,
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
    /// Serve the admin API over TLS with this certificate chain (PEM, leaf
    /// first); needs --admin-tls-key.
    #[arg(long, value_name = "PEM", requires = "admin_tls_key")]
    pub admin_tls_cert: Option<PathBuf>,
    /// The private key of --admin-tls-cert (PEM: PKCS#8, PKCS#1 or SEC1).
    #[arg(long, value_name = "PEM", requires = "admin_tls_cert")]
    pub admin_tls_key: Option<PathBuf>,
    /// Re-read the users of live sessions this often (one query for all)
    /// and end with `Goodbye(Revoked)` the sessions of users deactivated,
    /// deleted, whose password changed or who no longer pass
    /// --require-perm/--require-group (0: never).
    #[arg(long, default_value_t = 30.0, value_name = "SECS")]
    pub revalidate: f64,
    /// Forwarding to the Django project.
    #[command(flatten)]
    pub forward: tether_server::forward::ForwardArgs,
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
    /// Log filter: a level (error, warn, info, debug, trace) or tracing
    /// directives (`info,tether_server::login=debug`) [default: info, one
    /// level more per -v]. sqlx's statements are logged only when a
    /// directive names sqlx. Re-read on SIGHUP.
    #[arg(long, env = "RUST_LOG", value_name = "FILTER")]
    pub log_level: Option<String>,
    /// Log line format: text (for people) or json (one object per line:
    /// std-server/README.md lists the fields).
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Read settings from this TOML file: one key per flag, named as the
    /// flag with _ for - (`max_sessions = 10000`). Flags override
    /// environment variables, which override the file. SIGHUP re-reads it:
    /// the log filter and line limits, the handshake, connection and
    /// session limits, the throttle and the timers of new connections
    /// change without dropping a session; any other key that changed is
    /// logged as needing a restart (std-server/README.md, "Reload").
    #[arg(long, env = "TETHER_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Print the effective configuration (flags, environment, file and
    /// defaults; secrets redacted) as TOML and exit.
    #[arg(long)]
    pub print_config: bool,
    /// Every key's effective value as given: a reload compares them.
    #[arg(skip)]
    pub values: super::config::Values,
}

/// The keys SIGHUP applies without a restart (std-server/README.md lists
/// them): the log filter and line limits, the connection, handshake and
/// session limits, the throttle, and the timers of new connections.
pub const RELOADABLE: &[&str] = &[
    "log_level",
    "log_limit_burst",
    "log_limit_interval",
    "handshake_timeout",
    "hello_timeout",
    "max_handshakes",
    "max_startups",
    "max_handshakes_per_address",
    "max_sessions",
    "max_sessions_per_user",
    "sessions_per_user_policy",
    "max_frame",
    "heartbeat",
    "max_calls_in_flight",
    "shutdown_deadline",
    "throttle_pair_failures",
    "throttle_user_failures",
    "throttle_addr_failures",
    "throttle_refill",
    "throttle_addr_refill",
];

/// The format of log lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// `2026-12-07T01:02:03.456789Z  INFO target: message key=value`.
    Text,
    /// One JSON object per line.
    Json,
}

/// What a login beyond `--max-sessions-per-user` does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PerUserPolicy {
    /// The account's oldest session gets `Goodbye { Replaced }`.
    ReplaceOldest,
    /// The new login is refused `busy`.
    Refuse,
}

pub async fn run(mut args: ServeArgs) -> ExitCode {
    // The admin API's settings are checked before anything starts.
    let admin_config = match &args.admin {
        None => None,
        Some(_) => match AdminToken::from_env()
            .map_err(|e| e.to_string())
            .and_then(|token| {
                let tls = match (&args.admin_tls_cert, &args.admin_tls_key) {
                    (Some(cert), Some(key)) => Some(tether_server::admin::tls_config(cert, key)?),
                    _ => None,
                };
                Ok((token, tls))
            }) {
            Ok((token, tls)) => Some(AdminConfig {
                tls,
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
    if let Some(warning) = tether_server::store::missing_sqlite_file(&store_config.url) {
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
    let store_for_reload = store.clone();
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
    let noise_keys = match tether_server::server_key::load_or_create(&args.server_key_file) {
        Ok((keys, origin)) => {
            let public = tether_server::server_key::public_hex(&keys).unwrap_or_default();
            match origin {
                tether_server::server_key::KeyOrigin::Generated(p) => {
                    info!(file = %p.display(), %public, "server static key (v2): generated")
                }
                tether_server::server_key::KeyOrigin::File(p) => {
                    info!(file = %p.display(), %public, previous = keys.previous.is_some(),
                        "server static key (v2): read")
                }
            }
            keys
        }
        Err(e) => {
            warn!(file = %args.server_key_file.display(), error = %e,
                "cannot read or write the server key file; protocol v2 runs NN only \
                 (devices pinning a key are refused unknown_key)");
            tether_core::connection::ServerKeys::default()
        }
    };
    let noise_keys = tether_core::connection::ServerKeys {
        require_encryption: args.require_encryption,
        ..noise_keys
    };
    let config = server_config(&args);
    descriptors(fd_limit::Budget {
        sessions: config.max_sessions as u64,
        handshakes: config.max_handshakes as u64,
        pending: config.max_pending as u64,
        admin: admin_config.as_ref().map_or(0, |c| {
            tether_server::admin::listener::descriptors(c.max_connections) as u64
        }),
        database: db_connections,
    });
    let listen = with_default_port(&args.listen, tether_core::frame::DEFAULT_PORT);
    let server = match Server::bind(
        listen.as_str(),
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
        Ok(s) => s.with_noise_keys(noise_keys),
        Err(e) => {
            eprintln!("tether serve: cannot listen on {listen}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let handle = server.handle();
    let handle_for_reload = handle.clone();
    let admin = match (&args.admin, admin_config) {
        (Some(addr), Some(config)) => match Admin::new(&server, config)
            .bind(&with_default_port(addr, 7421))
            .await
        {
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
        let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
        handle.shutdown();
    });
    #[cfg(unix)]
    tokio::spawn(reload_on_sighup(
        store_for_reload,
        handle_for_reload,
        std::mem::take(&mut args.values),
        ServerKeyFile {
            noise: server.noise_keys(),
            path: args.server_key_file.clone(),
            require_encryption: args.require_encryption,
        },
    ));
    // systemd's Type=notify: listening (and the admin API too) from now on.
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);
    if let Some(f) = &forwarder {
        tether_server::forward::log_start(f);
    }
    server.run().await;
    if let Some(f) = forwarder {
        // The sessions' last events (`disconnected`) are queued by now.
        f.close(tether_server::forward::CLOSE_GRACE).await;
    }
    if let Some(admin) = admin {
        let _ = tokio::time::timeout(Duration::from_secs(5), admin).await;
    }
    ExitCode::SUCCESS
}

/// The server's settings from `serve`'s arguments.
fn server_config(args: &ServeArgs) -> ServerConfig {
    let (early_drop_start, early_drop_rate, max_handshakes) = match args.max_startups {
        Some((start, rate, full)) => (Some(start), rate, full),
        None => (None, 30, args.max_handshakes.unwrap_or(64)),
    };
    ServerConfig {
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
            PerUserPolicy::ReplaceOldest => tether_server::per_user::Policy::ReplaceOldest,
            PerUserPolicy::Refuse => tether_server::per_user::Policy::Refuse,
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
    }
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

/// The server key file SIGHUP reads again (at the path the server started
/// with): a key rotation takes effect for the logins that follow.
#[cfg(unix)]
struct ServerKeyFile {
    noise: tether_server::NoiseKeys,
    path: PathBuf,
    require_encryption: bool,
}

#[cfg(unix)]
impl ServerKeyFile {
    /// Reads the file and hands its keys to the server; a file that cannot
    /// be read leaves the keys as they are.
    fn reload(&self) {
        let path = self.path.display();
        match tether_server::server_key::load(&self.path) {
            Ok(keys) => {
                let public = tether_server::server_key::public_hex(&keys).unwrap_or_default();
                let previous = tether_server::server_key::previous_public_hex(&keys);
                info!(file = %path, %public, previous = previous.as_deref().unwrap_or("none"),
                    "SIGHUP: server static key (v2) reloaded");
                self.noise.replace(tether_core::connection::ServerKeys {
                    require_encryption: self.require_encryption,
                    ..keys
                });
            }
            Err(e) => warn!(file = %path, error = %e,
                "SIGHUP: cannot read the server key file; the keys are unchanged"),
        }
    }
}

/// SIGHUP: the command line is parsed again with the configuration file
/// read anew, and the keys in [`RELOADABLE`] that changed take effect
/// without dropping a session (the log filter and line limits at once; the
/// server's through `tether_server::ServerHandle::reload`). Any other key that changed
/// is logged as needing a restart and keeps its value. The server key file
/// is read again too (a rotation: `tether keys --server --rotate`,
/// `--retire-previous`).
#[cfg(unix)]
async fn reload_on_sighup(
    store: Arc<Store>,
    server: tether_server::ServerHandle,
    mut current: super::config::Values,
    key_file: ServerKeyFile,
) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        warn!("cannot listen for SIGHUP: no reloading");
        return;
    };
    while hup.recv().await.is_some() {
        let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Reloading]);
        match super::reparse_serve() {
            Ok(args) => reload(&store, &server, &mut current, args),
            Err(e) => warn!(error = %e, "SIGHUP: configuration not reloaded"),
        }
        key_file.reload();
        let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);
    }
}

/// Applies what `args` changes that can change live; `current` becomes
/// the values in effect.
#[cfg(unix)]
fn reload(
    store: &Store,
    server: &tether_server::ServerHandle,
    current: &mut super::config::Values,
    args: ServeArgs,
) {
    let changed = super::config::changed(current, &args.values);
    let (live, restart): (Vec<&str>, Vec<&str>) =
        changed.into_iter().partition(|k| RELOADABLE.contains(k));
    let (live, restart) = (live.join(","), restart.join(","));
    let filter = match super::set_log_filter(args.log_level.as_deref()) {
        Ok(f) => f,
        Err(e) => {
            warn!(error = %e, "SIGHUP: log filter unchanged");
            String::from("(unchanged)")
        }
    };
    store.metrics().log_limit().configure(LogLimitConfig {
        burst: args.log_limit_burst,
        interval: secs(args.log_limit_interval),
    });
    let reloaded = server.reload(server_config(&args));
    info!(changed = %live, log_level = %filter, server = ?reloaded.applied,
        "SIGHUP: configuration reloaded");
    if !restart.is_empty() {
        warn!(keys = %restart,
            "SIGHUP: these settings changed but need a restart; they keep their value until then");
    }
    // What needs a restart stays as it was started.
    for (key, value) in args.values {
        if RELOADABLE.contains(&key.as_str()) {
            current.insert(key, value);
        }
    }
}
