//! `tether call`: logs in as a device and calls one method.

use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use clap::Args;
use rand::SeedableRng as _;
use tether_core::message::RefusalCode;
use tether_core::method::builtin::{Echo, ServerTime, WhoAmI};
use tether_core::method::{self, Method as _};
use tether_core::scram::ClientCredentials;
use tether_firmware::{
    BufferStore, CallError as DeviceCallError, Config as DeviceConfig, Error as DeviceError,
    Failure,
};

use super::{connect, read_password, secs, with_default_port};

/// `tether call`.
#[derive(Debug, Args)]
pub struct CallArgs {
    /// The server (port 7420 if none is given).
    #[arg(long, default_value = "127.0.0.1:7420")]
    pub server: String,
    /// The username.
    #[arg(long)]
    pub user: String,
    /// The fewest PBKDF2 iterations to accept from the server (refuse a
    /// server asking for fewer).
    #[arg(long, default_value_t = tether_core::scram::DEFAULT_MIN_ITERATIONS)]
    pub min_iterations: u32,
    /// The protocol.
    #[command(flatten)]
    pub protocol: ProtocolArgs,
    /// Seconds to wait for the reply.
    #[arg(long, default_value_t = 10.0)]
    pub timeout: f64,
    /// The method: any name. echo ARG, whoami and server_time are printed
    /// for people when no format is given; other methods take no
    /// arguments then and their reply is printed in hex.
    pub method: String,
    /// echo's argument (without a format flag).
    pub arg: Option<String>,
    /// The arguments as JSON (the built-in methods: echo, whoami,
    /// server_time, device_info); the reply is printed as JSON.
    #[arg(long, value_name = "JSON", group = "format")]
    pub json: Option<String>,
    /// The postcard-encoded arguments in hex ("" for none); the reply is
    /// printed in hex.
    #[arg(long, value_name = "HEX", group = "format")]
    pub hex: Option<String>,
    /// One string argument, postcard-encoded; the reply is printed as a
    /// postcard string.
    #[arg(long, value_name = "TEXT", group = "format")]
    pub postcard_str: Option<String>,
}

/// How arguments were given, and so how the reply is printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Plain,
    Json,
    Hex,
    Str,
}

/// The postcard arguments of the call and the output format.
fn arguments(args: &CallArgs) -> Result<(Vec<u8>, Format), String> {
    let method = args.method.as_str();
    if let Some(json) = &args.json {
        let value: serde_json::Value =
            serde_json::from_str(json).map_err(|e| format!("--json: {e}"))?;
        return Ok((typed::json_args(method, &value)?, Format::Json));
    }
    if let Some(text) = &args.hex {
        let bytes = hex::decode(text.trim()).map_err(|e| format!("--hex: {e}"))?;
        return Ok((bytes, Format::Hex));
    }
    if let Some(text) = &args.postcard_str {
        let bytes = typed::encode::<Echo>(&text.as_str())?;
        return Ok((bytes, Format::Str));
    }
    let bytes = if method == Echo::NAME {
        let arg = args.arg.as_deref().unwrap_or_default();
        typed::encode::<Echo>(&arg)?
    } else if args.arg.is_some() {
        return Err(format!(
            "{method} takes its arguments through --json, --hex or --postcard-str"
        ));
    } else {
        Vec::new()
    };
    Ok((bytes, Format::Plain))
}

/// The reply as printed.
fn output(method: &str, format: Format, reply: &[u8]) -> Result<String, String> {
    let bad = |e: tether_core::message::DecodeError| format!("the reply does not decode: {e}");
    match format {
        Format::Json => typed::json_reply(method, reply),
        Format::Hex => Ok(hex::encode(reply)),
        Format::Str => method::decode_reply::<Echo>(reply)
            .map(str::to_string)
            .map_err(bad),
        Format::Plain => match method {
            Echo::NAME => method::decode_reply::<Echo>(reply)
                .map(str::to_string)
                .map_err(bad),
            WhoAmI::NAME => method::decode_reply::<WhoAmI>(reply)
                .map(|me| {
                    format!(
                        "user {} (id {}), session {}, superuser {}",
                        me.username, me.user_id, me.session_id, me.is_superuser
                    )
                })
                .map_err(bad),
            ServerTime::NAME => method::decode_reply::<ServerTime>(reply)
                .map(rfc3339_from_unix_ms)
                .map_err(bad),
            _ => Ok(hex::encode(reply)),
        },
    }
}

/// JSON for the methods whose types are known.
pub(super) mod typed {
    use serde::Deserialize as _;
    use serde_json::Value;
    use tether_core::method::builtin::{DeviceInfo, Echo, ServerTime, WhoAmI};
    use tether_core::method::{self, Method};

    fn args<'a, M: Method>(value: &'a Value) -> Result<Vec<u8>, String> {
        let args = M::Args::<'a>::deserialize(value).map_err(|e| format!("--json: {e}"))?;
        encode::<M>(&args)
    }

    /// `M`'s postcard arguments.
    pub fn encode<M: Method>(args: &M::Args<'_>) -> Result<Vec<u8>, String> {
        let mut buf = vec![0u8; usize::from(u16::MAX)];
        let len = method::encode_args::<M>(args, &mut buf)
            .map_err(|e| e.to_string())?
            .len();
        buf.truncate(len);
        Ok(buf)
    }

    fn reply<M: Method>(bytes: &[u8]) -> Result<String, String> {
        let reply = method::decode_reply::<M>(bytes)
            .map_err(|e| format!("the reply does not decode: {e}"))?;
        serde_json::to_string(&reply).map_err(|e| e.to_string())
    }

    fn unknown(method: &str) -> String {
        format!(
            "no JSON type known for {method} (echo, whoami, server_time, device_info): use --hex or --postcard-str"
        )
    }

    /// `value` as the postcard arguments of `method`.
    pub fn json_args(method: &str, value: &Value) -> Result<Vec<u8>, String> {
        let none = Value::Null;
        // No arguments: `null` (or nothing) for `()`.
        let value = if value.is_null() { &none } else { value };
        match method {
            Echo::NAME => args::<Echo>(value),
            WhoAmI::NAME => args::<WhoAmI>(value),
            ServerTime::NAME => args::<ServerTime>(value),
            DeviceInfo::NAME => args::<DeviceInfo>(value),
            _ => Err(unknown(method)),
        }
    }

    /// `method`'s postcard reply as JSON.
    pub fn json_reply(method: &str, bytes: &[u8]) -> Result<String, String> {
        match method {
            Echo::NAME => reply::<Echo>(bytes),
            WhoAmI::NAME => reply::<WhoAmI>(bytes),
            ServerTime::NAME => reply::<ServerTime>(bytes),
            DeviceInfo::NAME => reply::<DeviceInfo>(bytes),
            _ => Err(unknown(method)),
        }
    }
}

/// Exit codes of `tether call`: 2 refused, 3 the call failed, 1 anything else.
pub async fn run(args: CallArgs) -> ExitCode {
    let (call_args, format) = match arguments(&args) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("tether call: {e}");
            return ExitCode::FAILURE;
        }
    };
    let timeout = secs(args.timeout);
    let mut store: BufferStore<4096, 1024> = BufferStore::new();
    let login = LoginArgs {
        who: "tether call",
        server: &args.server,
        user: &args.user,
        min_iterations: args.min_iterations,
        protocol: &args.protocol,
        timeout,
    };
    let mut session = match log_in(&login, store.buffers()).await {
        Ok(s) => s,
        Err(code) => return code,
    };
    let result = call_raw(&mut session, &args.method, &call_args, timeout).await;
    let _ = session.close().await;
    match result.and_then(|reply| output(&args.method, format, &reply)) {
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

/// Calls `method` with postcard `args`; the postcard reply.
async fn call_raw(
    session: &mut tether_firmware::host::HostSession<'_>,
    method: &str,
    args: &[u8],
    timeout: Duration,
) -> Result<Vec<u8>, String> {
    let id = session
        .send_call_raw(method, args, timeout)
        .await
        .map_err(call_error)?;
    let reply = session
        .next_reply(&mut ())
        .await
        .map_err(|e| e.to_string())?;
    if reply.id() != id {
        return Err(format!("a reply to call {} instead of {id}", reply.id()));
    }
    match reply.raw() {
        Ok(bytes) => Ok(bytes.to_vec()),
        Err(Failure::Remote { code, message }) => {
            Err(format!("the server answered {code}: {message}"))
        }
        Err(Failure::Timeout) => Err("no reply in time".into()),
        Err(other) => Err(format!("{other:?}")),
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

/// Which protocol `tether call` and `tether device` speak: v2 unless told
/// otherwise, over `Noise_NK` when the server's key is given.
#[derive(Debug, Args)]
pub struct ProtocolArgs {
    /// The protocol version: 2 (encrypted: Noise, then SCRAM bound to it)
    /// or 1 (authenticated frames, readable on the wire).
    #[arg(long, default_value = "2", value_parser = ["1", "2"])]
    pub protocol: String,
    /// The server's static public key, 64 hex digits (`tether keys
    /// --server` prints it): protocol v2 over Noise_NK, the server
    /// authenticated before anything else is sent. Without it, v2 runs
    /// Noise_NN (encrypted, the server authenticated by SCRAM only).
    #[arg(long, env = "TETHER_SERVER_KEY", value_name = "HEX")]
    pub server_key: Option<String>,
}

impl ProtocolArgs {
    /// The device's protocol setting, or why these options are wrong.
    fn protocol(&self) -> Result<tether_firmware::Protocol, String> {
        use tether_firmware::Protocol;
        match (self.protocol.as_str(), &self.server_key) {
            ("1", Some(_)) => Err(
                "--server-key is for protocol v2 (Noise_NK); protocol v1 has no server key".into(),
            ),
            ("1", None) => Ok(Protocol::V1),
            (_, None) => Ok(Protocol::Unpinned),
            (_, Some(text)) => {
                let bytes = hex::decode(text.trim()).map_err(|e| {
                    format!("--server-key: not hex ({e}); `tether keys --server` prints the key")
                })?;
                let key: [u8; 32] = bytes.try_into().map_err(|b: Vec<u8>| {
                    format!(
                        "--server-key: {} bytes, a server key is 32 (64 hex digits)",
                        b.len()
                    )
                })?;
                Ok(Protocol::Pinned(key))
            }
        }
    }
}

/// Where and as whom `tether call` and `tether device` log in.
pub(super) struct LoginArgs<'a> {
    /// The command, for messages.
    pub who: &'a str,
    pub server: &'a str,
    pub user: &'a str,
    pub min_iterations: u32,
    pub protocol: &'a ProtocolArgs,
    pub timeout: Duration,
}

/// Logs in (password from `TETHER_PASSWORD` or a prompt); on failure the
/// reason is printed in one line and the exit code returned: 2 refused, 1
/// anything else.
pub(super) async fn log_in<'b>(
    login: &LoginArgs<'_>,
    buffers: tether_firmware::Buffers<'b>,
) -> Result<tether_firmware::host::HostSession<'b>, ExitCode> {
    let who = login.who;
    let protocol = match login.protocol.protocol() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("{who}: {e}");
            return Err(ExitCode::from(2));
        }
    };
    let password = match read_password() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("{who}: {e}");
            return Err(ExitCode::FAILURE);
        }
    };
    let mut rng = rand::rngs::StdRng::from_rng(&mut rand::rng());
    let timeout = login.timeout;
    let config = DeviceConfig::default()
        .with_min_iterations(login.min_iterations)
        .with_call_timeout(timeout)
        .with_handshake_timeout(timeout)
        .with_protocol(protocol);
    let addr = with_default_port(login.server, tether_core::frame::DEFAULT_PORT);
    let stream = match connect(&addr, timeout).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{who}: {e}");
            return Err(ExitCode::FAILURE);
        }
    };
    let login = match tether_firmware::Session::login(
        tether_firmware::host::transport(stream),
        buffers,
        tether_firmware::TokioClock::new(),
        login.user,
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
                RefusalCode::Version => {
                    "the server does not speak this protocol version (--protocol 1 or 2)"
                }
                RefusalCode::Protocol => "the server rejected the handshake",
                RefusalCode::Busy => "the server is at its limit",
                RefusalCode::UnknownKey => {
                    "the server does not hold the key given with --server-key (see `tether keys --server` on the server)"
                }
            };
            if retry_after_secs > 0 {
                eprintln!("{who}: login refused: {code}: {why} (retry after {retry_after_secs} s)");
            } else {
                eprintln!("{who}: login refused: {code}: {why}");
            }
            return Err(ExitCode::from(2));
        }
        Err(DeviceError::Transport(e)) => {
            eprintln!("{who}: the connection to {addr} failed during the login: {e}");
            return Err(ExitCode::FAILURE);
        }
        Err(e) => {
            eprintln!("{who}: {e}");
            return Err(ExitCode::FAILURE);
        }
    };
    Ok(login.session)
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
