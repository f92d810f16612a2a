//! A device on a blocking `std::net::TcpStream`, built on tether-core's
//! connection machine. The device's part (`now`, `read_until` and
//! `device`: 131 lines, 120 without blanks and comments) moves bytes and
//! time and holds no protocol rule: handshake order, call ids and the
//! in-flight table, pings and heartbeats, reply ids and goodbyes are all
//! the machine's. Its loops are the one every driver has: poll and handle
//! until nothing is left, send what the machine owes, then wait for input
//! or the machine's next deadline.
//!
//! ```text
//! cargo run -p tether-core --example blocking                        # logs in to the server below
//! cargo run -p tether-core --example blocking -- HOST:PORT USER PASSWORD  # or to `tether serve`
//! ```
//!
//! The second half is a blocking server on the same machines (one Django
//! row, thread per connection), so that the example runs on its own.

use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::OnceLock;
use std::time::Duration;

use getrandom::SysRng;
use tether_core::connection::{
    ClientConfig, ClientHandshake, ConnectionError, Decoy, Event, Instant, ServerConfig,
    ServerHandshake, ServerStep,
};
use tether_core::message::{ErrorCode, GoodbyeReason};
use tether_core::method::builtin::{DeviceInfo, DeviceStatus, Echo, Identity, WhoAmI};
use tether_core::method::{self, Method};
use tether_core::rand_core::UnwrapErr;
use tether_core::scram::{ClientCredentials, Mechanism};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

// ------------------------------------------------------------ the device

/// The machine's clock: milliseconds since the program started.
fn now() -> Instant {
    static START: OnceLock<std::time::Instant> = OnceLock::new();
    let start = START.get_or_init(std::time::Instant::now);
    Instant::from_millis(start.elapsed().as_millis() as u64)
}

/// One read into `buf`, waiting until `deadline` at most: `None` when it
/// passed first.
fn read_until(
    sock: &mut TcpStream,
    buf: &mut [u8],
    deadline: Option<Instant>,
) -> Result<Option<usize>> {
    let wait = deadline
        .map(|d| Duration::from_millis(d.as_millis().saturating_sub(now().as_millis()).max(1)));
    sock.set_read_timeout(wait)?;
    match sock.read(buf) {
        Ok(n) => Ok(Some(n)),
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ) =>
        {
            Ok(None)
        }
        Err(e) => Err(e.into()),
    }
}

/// Logs in, makes two calls, serves the server's calls for a while, says
/// goodbye.
fn device(addr: &str, user: &str, password: &str) -> Result<()> {
    let mut sock = TcpStream::connect(addr)?;
    sock.set_nodelay(true)?;
    let (mut rx, mut tx) = ([0u8; 512], [0u8; 512]);
    let credentials = ClientCredentials::Password(password);
    let config = ClientConfig::default();
    let mut login =
        ClientHandshake::<4>::new(&mut rx, user, credentials, &config, &mut UnwrapErr(SysRng))?;
    let established = loop {
        if let Some(done) = login.poll(now())? {
            break done;
        }
        while let Some(frame) = login.poll_transmit(now(), &mut tx) {
            sock.write_all(frame)?;
        }
        let deadline = login.poll_timeout();
        match read_until(&mut sock, login.receive_buffer(), deadline)? {
            Some(0) => return Err(login.handle_eof().into()),
            Some(n) => login.commit(n),
            None => login.handle_timeout(now()),
        }
    };
    let mut conn = established.connection;
    println!(
        "device: logged in (session {}), keys to keep: {:?}",
        conn.session_id(),
        established.keys
    );

    let (echo, frame) = conn.call::<Echo>(now(), &"hello", Duration::from_secs(5), &mut tx)?;
    sock.write_all(frame)?;
    let (whoami, frame) = conn.call::<WhoAmI>(now(), &(), Duration::from_secs(5), &mut tx)?;
    sock.write_all(frame)?;

    let until = now().saturating_add(Duration::from_secs(1));
    loop {
        match conn.poll_event(now())? {
            Some(Event::Call(call)) if call.is::<DeviceInfo>() => {
                let token = call.into_token();
                let status = DeviceStatus {
                    firmware: "blocking example",
                    uptime_secs: now().as_millis() / 1000,
                };
                sock.write_all(conn.reply_typed::<DeviceInfo>(token, now(), &mut tx, &status)?)?;
            }
            Some(Event::Call(call)) => {
                let token = call.into_token();
                sock.write_all(conn.error(
                    token,
                    now(),
                    &mut tx,
                    ErrorCode::UNKNOWN_METHOD,
                    "unknown method",
                )?)?;
            }
            Some(Event::Reply(reply)) if reply.id == echo => {
                println!(
                    "device: echo -> {:?}",
                    reply.result.map(method::decode_reply::<Echo>)
                );
            }
            Some(Event::Reply(reply)) if reply.id == whoami => {
                println!(
                    "device: whoami -> {:?}",
                    reply.result.map(method::decode_reply::<WhoAmI>)
                );
            }
            Some(_) => {}
            None => {
                let mut sent = false;
                while let Some(frame) = conn.poll_transmit(now(), &mut tx) {
                    sock.write_all(frame)?;
                    sent = true;
                }
                if sent {
                    continue;
                }
                if now() >= until && conn.calls_in_flight() == 0 {
                    break;
                }
                let deadline = conn.poll_timeout().map_or(until, |t| t.min(until));
                match read_until(&mut sock, conn.receive_buffer(), Some(deadline))? {
                    Some(0) => return Err(conn.handle_eof().into()),
                    Some(n) => conn.commit(n),
                    None => conn.handle_timeout(now()),
                }
            }
        }
    }
    conn.close(GoodbyeReason::Normal);
    while let Some(frame) = conn.poll_transmit(now(), &mut tx) {
        sock.write_all(frame)?;
    }
    println!("device: goodbye");
    Ok(())
}

// ------------------------------------------------------------ the server

/// alice / wonderland, as Django 5.2 would store it (4096 iterations).
const ALICE_ROW: &str =
    "pbkdf2_sha256$4096$W8ZxHXvUYrZMB2ce3tJeqs$Gf7trYHHXjQXenT0TXmV2mr2SsIdi492WLVThfHnB/k=";

const DECOY: Decoy<'static> = Decoy {
    secret: b"example secret: use 32 random bytes",
    iterations: 4096,
    mechanism: Mechanism::ScramSha256,
};

/// One connection: the handshake (lookup in a one-row table), then calls
/// both ways until the device says goodbye.
fn serve(mut sock: TcpStream, session_id: u64) -> Result<()> {
    let mut tx = vec![0u8; 2 + 4096];
    let mut handshake =
        ServerHandshake::<Vec<u8>>::new(vec![0; 4096], ServerConfig::default(), now())?;
    let mut conn = loop {
        match handshake.poll() {
            Ok(Some(ServerStep::Login(request))) => {
                let account = (request.username == "alice")
                    .then(|| tether_core::django::credentials(ALICE_ROW))
                    .transpose()?;
                handshake.challenge(account, &DECOY, &mut UnwrapErr(SysRng))?;
            }
            Ok(Some(ServerStep::Verified(_))) => {
                let (conn, frame) = handshake.welcome(session_id, now(), &mut tx)?;
                sock.write_all(frame)?;
                break conn;
            }
            Ok(_) => {}
            Err(e) => {
                // A refusal is the last frame: send it, then close.
                while let Some(frame) = handshake.poll_transmit(&mut tx) {
                    sock.write_all(frame)?;
                }
                return Err(e.into());
            }
        }
        while let Some(frame) = handshake.poll_transmit(&mut tx) {
            sock.write_all(frame)?;
        }
        let deadline = handshake.poll_timeout();
        match read_until(&mut sock, handshake.receive_buffer(), deadline)? {
            Some(0) => return Err(handshake.handle_eof().into()),
            Some(n) => handshake.commit(n),
            None => handshake.handle_timeout(now()),
        }
    };
    let (_, frame) = conn.call::<DeviceInfo>(now(), &(), Duration::from_secs(5), &mut tx)?;
    sock.write_all(frame)?;
    let mut out = vec![0u8; 2 + 512];
    loop {
        match conn.poll_event(now()) {
            Err(ConnectionError::Closed(reason)) => {
                println!("server: device said goodbye ({reason})");
                return Ok(());
            }
            Err(e) => {
                while let Some(frame) = conn.poll_transmit(now(), &mut out) {
                    sock.write_all(frame)?;
                }
                return Err(e.into());
            }
            Ok(Some(Event::Call(call))) => {
                let (method, args) = (call.method().to_owned(), call.args().to_vec());
                let token = call.into_token();
                let frame = match method.as_str() {
                    Echo::NAME => conn.reply(token, now(), &mut out, &args)?,
                    WhoAmI::NAME => {
                        let me = Identity {
                            user_id: 1,
                            username: "alice",
                            session_id,
                            is_superuser: false,
                        };
                        conn.reply_typed::<WhoAmI>(token, now(), &mut out, &me)?
                    }
                    _ => conn.error(
                        token,
                        now(),
                        &mut out,
                        ErrorCode::UNKNOWN_METHOD,
                        &format!("no method {method:?}"),
                    )?,
                };
                sock.write_all(frame)?;
            }
            Ok(Some(Event::Reply(reply))) => {
                println!(
                    "server: device_info -> {:?}",
                    reply.result.map(method::decode_reply::<DeviceInfo>)
                );
            }
            Ok(Some(_)) => {}
            Ok(None) => {
                let mut sent = false;
                while let Some(frame) = conn.poll_transmit(now(), &mut out) {
                    sock.write_all(frame)?;
                    sent = true;
                }
                if !sent {
                    let deadline = conn.poll_timeout();
                    match read_until(&mut sock, conn.receive_buffer(), deadline)? {
                        Some(0) => return Err(conn.handle_eof().into()),
                        Some(n) => conn.commit(n),
                        None => conn.handle_timeout(now()),
                    }
                }
            }
        }
    }
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let [addr, user, password] = &args[..] {
        return device(addr, user, password);
    }
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?.to_string();
    let server = std::thread::spawn(move || -> Result<()> {
        let (sock, _) = listener.accept()?;
        serve(sock, 1).inspect_err(|e| eprintln!("server: {e}"))
    });
    let device = device(&addr, "alice", "wonderland");
    let server = server.join().expect("server thread");
    device.and(server)
}
