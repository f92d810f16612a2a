//! `tether device`: stays logged in as a test device. It answers
//! `device_info`, echoes other calls (or refuses them `unknown_method` with
//! `--refuse-unknown`), prints every call and notification it receives,
//! and sends a notification for each line on stdin: `METHOD [TEXT]`, TEXT
//! postcard-encoded as a string (none: no arguments).
//!
//! Printed on stdout, one line each:
//! - `logged in as USER (session ID)`
//! - `call METHOD ARGS_HEX -> answered|echoed|refused`
//! - `notify METHOD ARGS_HEX`
//! - `sent METHOD`
//! - `closed: REASON`

use std::io::Write as _;
use std::process::ExitCode;
use std::time::Instant;

use clap::Args;
use tether_core::method::builtin::{DeviceInfo, DeviceStatus, Echo};
use tether_firmware::{BufferStore, Handler, Request, Responded, Responder};
use tokio::io::AsyncBufReadExt as _;

use super::call::{LoginArgs, ProtocolArgs, log_in, typed};
use super::secs;

/// `tether device`.
#[derive(Debug, Args)]
pub struct DeviceArgs {
    /// The server (port 7420 if none is given).
    #[arg(long, default_value = "127.0.0.1:7420")]
    pub server: String,
    /// The username.
    #[arg(long)]
    pub user: String,
    /// The fewest PBKDF2 iterations to accept from the server.
    #[arg(long, default_value_t = tether_core::scram::DEFAULT_MIN_ITERATIONS)]
    pub min_iterations: u32,
    /// The protocol.
    #[command(flatten)]
    pub protocol: ProtocolArgs,
    /// Seconds the login may take.
    #[arg(long, default_value_t = 10.0)]
    pub timeout: f64,
    /// Refuse calls other than device_info (`unknown_method`) instead of
    /// echoing their arguments back.
    #[arg(long)]
    pub refuse_unknown: bool,
    /// The firmware name device_info answers.
    #[arg(long, default_value = concat!("tether-device/", env!("CARGO_PKG_VERSION")))]
    pub firmware: String,
}

struct TestDevice {
    refuse_unknown: bool,
    firmware: String,
    booted: Instant,
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

impl Handler for TestDevice {
    async fn on_call(&mut self, req: Request<'_>, reply: Responder<'_>) -> Responded {
        let args = hex::encode(req.raw_args());
        let method = req.method();
        if req.is::<DeviceInfo>() {
            say(&format!("call {method} {args} -> answered"));
            reply.ok::<DeviceInfo>(&DeviceStatus {
                firmware: &self.firmware,
                uptime_secs: self.booted.elapsed().as_secs(),
            })
        } else if self.refuse_unknown {
            say(&format!("call {method} {args} -> refused"));
            reply.unknown_method()
        } else {
            say(&format!("call {method} {args} -> echoed"));
            reply.ok_raw(req.raw_args())
        }
    }

    async fn on_notify(&mut self, method: &str, args: &[u8]) {
        say(&format!("notify {method} {}", hex::encode(args)));
    }
}

/// Exit codes: 0 closed by Ctrl-C or the end of the session after stdin
/// ended, 2 login refused, 1 anything else.
pub async fn run(args: DeviceArgs) -> ExitCode {
    let mut store: BufferStore<4096, 4096> = BufferStore::new();
    let login = LoginArgs {
        who: "tether device",
        server: &args.server,
        user: &args.user,
        min_iterations: args.min_iterations,
        protocol: &args.protocol,
        timeout: secs(args.timeout),
    };
    let mut session = match log_in(&login, store.buffers()).await {
        Ok(s) => s,
        Err(code) => return code,
    };
    say(&format!(
        "logged in as {} (session {})",
        args.user,
        session.session_id()
    ));
    let mut device = TestDevice {
        refuse_unknown: args.refuse_unknown,
        firmware: args.firmware.clone(),
        booted: Instant::now(),
    };
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    let mut stdin_open = true;
    loop {
        let next = async {
            if stdin_open {
                tokio::select! {
                    line = lines.next_line() => Some(line),
                    _ = tokio::signal::ctrl_c() => None,
                }
            } else {
                let _ = tokio::signal::ctrl_c().await;
                None
            }
        };
        match session.serve_until(&mut device, next).await {
            Ok(None) => {
                let _ = session.close().await;
                say("closed: interrupted");
                return ExitCode::SUCCESS;
            }
            Ok(Some(Ok(Some(line)))) => {
                let line = line.trim();
                if line.is_empty() {
                    continue;
                }
                let (method, text) = match line.split_once(' ') {
                    Some((m, t)) => (m, Some(t)),
                    None => (line, None),
                };
                let bytes = match text {
                    Some(t) => match typed::encode::<Echo>(&t) {
                        Ok(b) => b,
                        Err(e) => {
                            eprintln!("tether device: {e}");
                            continue;
                        }
                    },
                    None => Vec::new(),
                };
                match session.notify_raw(method, &bytes).await {
                    Ok(()) => say(&format!("sent {method}")),
                    Err(e) => eprintln!("tether device: cannot send {method}: {e:?}"),
                }
            }
            Ok(Some(_)) => stdin_open = false,
            Err(e) => {
                say(&format!("closed: {e}"));
                return if stdin_open {
                    ExitCode::FAILURE
                } else {
                    ExitCode::SUCCESS
                };
            }
        }
    }
}
