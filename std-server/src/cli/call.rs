//! `tether call`: logs in as a device and calls one method.

use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use clap::{Args, ValueEnum};
use rand::SeedableRng as _;
use tether_core::message::RefusalCode;
use tether_core::method::builtin::{Echo, ServerTime, WhoAmI};
use tether_core::scram::ClientCredentials;
use tether_firmware::{
    BufferStore, CallError as DeviceCallError, Config as DeviceConfig, Error as DeviceError,
};

use super::{connect, read_password, secs, with_default_port};

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

/// Exit codes of `tether call`: 2 refused, 3 the call failed, 1 anything else.
pub async fn run(args: CallArgs) -> ExitCode {
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
    let addr = with_default_port(&args.server, tether_core::frame::DEFAULT_PORT);
    let stream = match connect(&addr, timeout).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("tether call: {e}");
            return ExitCode::FAILURE;
        }
    };
    let login = match tether_firmware::Session::login(
        tether_firmware::host::transport(stream),
        store.buffers(),
        tether_firmware::TokioClock::new(),
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
                RefusalCode::UnknownKey => "the server does not hold the pinned key",
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
        Err(DeviceError::Transport(e)) => {
            eprintln!("tether call: the connection to {addr} failed during the login: {e}");
            return ExitCode::FAILURE;
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
            .map(rfc3339_from_unix_ms)
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

/// `server_time`'s Unix milliseconds in RFC 3339, UTC, milliseconds.
fn rfc3339_from_unix_ms(ms: u64) -> String {
    let format = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    SystemTime::UNIX_EPOCH
        .checked_add(Duration::from_millis(ms))
        .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
        .and_then(|d| time::OffsetDateTime::from_unix_timestamp_nanos(d.as_nanos() as i128).ok())
        .and_then(|t| t.format(format).ok())
        .unwrap_or_else(|| format!("{ms} ms after 1970 (not a date)"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn server_time_is_rfc3339() {
        use super::rfc3339_from_unix_ms as f;
        assert_eq!(f(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(f(1_795_972_114_123), "2026-11-29T17:08:34.123Z");
        assert_eq!(
            f(u64::MAX),
            "18446744073709551615 ms after 1970 (not a date)"
        );
    }
}
