//! tether-server as deployed (login + session, over loopback TCP) fed raw
//! and fuzzer-chosen bytes.
//!
//! `server_connection` fuzzes tether-core's `ServerHandshake` /
//! `ServerConnection` in memory, thousands of times faster. This target
//! stays until tether-server's login and session are drivers of those
//! machines (issue 14, next phase): until then it is the only one that
//! reaches the server's own connection code. It runs the real server
//! (DefaultRealm, SQLite copy of fixtures/django/default.sqlite3, throttle
//! off) once per process in a background tokio runtime.
//!
//! Input: `[mode] rest`.
//! - mode even: `rest` is written raw from the first byte of the connection
//!   (hello, SCRAM messages, garbage, several frames, cut frames).
//! - mode odd: the harness logs in as alice with cached keys (a genuine
//!   login), then plays records `[op] [len] payload(len)`:
//!   op % 4 == 0: payload decoded as a `Message` and sealed (valid tag and
//!   sequence); if it does not decode, sent as a body with a bogus tag;
//!   op % 4 == 1: payload written raw to the socket;
//!   op % 4 == 2: wait for the answers owed (calls and pings sent so far);
//!   op % 4 == 3: answer the server's pending calls (`device_info`, which
//!   the realm asks at attach) with the payload as result, or an error
//!   when op & 4.
//!
//! Checked beyond "no panic anywhere in the server" (a panic in any tokio
//! task aborts the process under libFuzzer): every frame the server sends
//! fits our announced maximum, decodes (as `Handshake` before login),
//! opens with the session keys in sequence after login, the server
//! closes the connection within 8 s of our end of stream, and the realm's
//! registry of live sessions is empty again soon after.
#![no_main]

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::path::PathBuf;
use std::sync::LazyLock;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use tether_core::frame::{FrameDecoder, encode_message};
use tether_core::message::{self, ErrorCode, GoodbyeReason, Handshake, Hello, Message, Proof};
use tether_core::scram::{CachedKeys, ClientConfig, ClientCredentials, ClientLogin};
use tether_core::session::{Opener, Role, Sealer};
use tether_fuzz::Counter;

const CLIENT_MAX: usize = 4096;
/// How soon after our end of stream the server must close. Its session
/// teardown has bounded waits of its own (calls, goodbye, writer: a few
/// seconds at worst); this leaves room for a loaded machine.
const CLOSE_WITHIN: Duration = Duration::from_secs(8);
/// How soon a genuine login step must be answered (a database lookup on a
/// possibly loaded machine).
const ANSWER_WITHIN: Duration = Duration::from_secs(10);
const USER: &str = "alice";

struct Fixture {
    port: u16,
    keys: CachedKeys,
    /// The realm's live sessions: empty again after each input.
    registry: tether_server::Registry,
}

static FIXTURE: LazyLock<Fixture> = LazyLock::new(|| {
    let fuzz_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let fixtures = fuzz_dir.join("../fixtures/django");
    let scratch = fuzz_dir.join("target/server_tcp");
    std::fs::create_dir_all(&scratch).expect("scratch dir");
    // Copies left by earlier processes that are gone.
    for entry in std::fs::read_dir(&scratch).expect("scratch dir").flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(pid) = name
            .strip_prefix("default-")
            .and_then(|n| n.split('.').next())
            && !PathBuf::from("/proc").join(pid).exists()
        {
            let _ = std::fs::remove_file(entry.path());
        }
    }
    let db = scratch.join(format!("default-{}.sqlite3", std::process::id()));
    std::fs::copy(fixtures.join("default.sqlite3"), &db).expect("copy fixture db");
    let manifest: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures.join("users.json")).expect("users.json"),
    )
    .expect("json");
    let password = manifest["databases"]["default.sqlite3"]["users"]
        .as_array()
        .expect("users")
        .iter()
        .find(|u| u["username"] == USER)
        .and_then(|u| u["password"].as_str())
        .expect("alice's password")
        .to_owned();

    let realm = tether_server::DefaultRealm::new().ask_device_info(true);
    let registry = realm.registry();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let mut store = tether_server::StoreConfig::new(format!("sqlite://{}", db.display()));
            store.require_perm = Some("devices.connect".parse().expect("perm"));
            store.update_last_login = false;
            let store = std::sync::Arc::new(tether_server::Store::open(store).expect("store"));
            let mut config = tether_server::ServerConfig::default();
            config.throttle = tether_server::ThrottleConfig::disabled();
            config.handshake_timeout = Duration::from_secs(3);
            config.decoy_iterations = 4096;
            let server = tether_server::Server::bind(
                "127.0.0.1:0",
                config,
                store,
                realm,
                tether_server::ServerSecret::from_value("fuzzing secret, 16+ bytes")
                    .expect("secret"),
            )
            .await
            .expect("bind");
            tx.send(server.local_addr().port()).expect("port");
            server.run().await;
        });
    });
    let port = rx.recv().expect("server started");
    let mut conn = Conn::connect(port);
    let session = conn
        .login(ClientCredentials::Password(&password))
        .expect("alice logs in with her password");
    drop(conn);
    wait_for_no_sessions(&registry);
    Fixture {
        port,
        keys: session.keys,
        registry,
    }
});

struct Session {
    tx: Sealer,
    rx: Opener,
    keys: CachedKeys,
    server_max: usize,
}

struct Conn {
    stream: TcpStream,
    pending: Vec<u8>,
    buf: Vec<u8>,
    /// The connection reached its end (EOF or reset).
    closed: bool,
    /// It ended with a reset rather than an orderly close.
    reset: bool,
}

enum Got {
    Frame(Vec<u8>),
    /// End of stream (or reset, see `Conn::reset`).
    Closed,
    Timeout,
}

impl Conn {
    fn connect(port: u16) -> Self {
        let stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        stream.set_nodelay(true).expect("nodelay");
        Self {
            stream,
            pending: Vec::new(),
            buf: vec![0; CLIENT_MAX],
            closed: false,
            reset: false,
        }
    }

    fn write(&mut self, bytes: &[u8]) {
        // The server may have closed already (refusal, bad frame): fine.
        if self.stream.write_all(bytes).is_err() {
            self.closed = true;
        }
    }

    /// The next frame from the server, its length checked against `max`.
    fn recv(&mut self, max: usize, timeout: Duration) -> Got {
        if self.closed && self.pending.is_empty() {
            return Got::Closed;
        }
        self.stream
            .set_read_timeout(Some(timeout))
            .expect("timeout");
        let mut decoder = FrameDecoder::new(&mut self.buf, max);
        loop {
            if !self.pending.is_empty() {
                let (used, body) = decoder
                    .push(&self.pending)
                    .unwrap_or_else(|e| panic!("server sent a bad frame: {e}"));
                let body = body.map(<[u8]>::to_vec);
                self.pending.drain(..used);
                if let Some(body) = body {
                    return Got::Frame(body);
                }
            }
            let mut chunk = [0u8; 4096];
            match self.stream.read(&mut chunk) {
                Ok(0) => {
                    self.closed = true;
                    decoder
                        .finish()
                        .unwrap_or_else(|e| panic!("server closed inside a frame: {e}"));
                    return Got::Closed;
                }
                Ok(n) => self.pending.extend_from_slice(&chunk[..n]),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    return Got::Timeout;
                }
                Err(_) => {
                    // Reset: the server's right after a protocol error.
                    self.closed = true;
                    self.reset = true;
                    self.pending.clear();
                    return Got::Closed;
                }
            }
        }
    }

    /// A genuine login; `None` only when the connection was reset before
    /// the server answered the hello or the proof (an orderly close without
    /// an answer is the server's doing and panics).
    fn login(&mut self, creds: ClientCredentials<'_>) -> Option<Session> {
        let mut rng = Counter(std::process::id() as u64);
        let login = ClientLogin::<256>::new(USER, creds, ClientConfig::default(), &mut rng)
            .expect("client-first");
        let mut out = [0u8; 512];
        let hello = Handshake::Hello(Hello {
            version: message::PROTOCOL_VERSION,
            mechanisms: login.mechanisms(),
            max_frame: CLIENT_MAX as u16,
            client_first: login.client_first(),
        });
        self.write(encode_message(&hello, &mut out, 512).expect("hello"));
        let body = match self.recv(512, ANSWER_WITHIN) {
            Got::Frame(body) => body,
            Got::Closed if self.reset => return None,
            Got::Closed => panic!("server closed without answering a genuine hello"),
            Got::Timeout => panic!("no answer to a genuine hello within {ANSWER_WITHIN:?}"),
        };
        let Ok(Handshake::Challenge(c)) = message::decode::<Handshake>(&body) else {
            panic!("genuine hello not challenged: {body:02x?}");
        };
        let proof = login
            .handle_challenge(c.mechanism, c.server_first)
            .expect("challenge");
        let msg = Handshake::Proof(Proof {
            client_final: proof.client_final(),
        });
        self.write(encode_message(&msg, &mut out, 512).expect("proof"));
        let body = match self.recv(512, ANSWER_WITHIN) {
            Got::Frame(body) => body,
            Got::Closed if self.reset => return None,
            Got::Closed => panic!("server closed without answering a genuine proof"),
            Got::Timeout => panic!("no answer to a genuine proof within {ANSWER_WITHIN:?}"),
        };
        let Ok(Handshake::Welcome(w)) = message::decode::<Handshake>(&body) else {
            panic!("genuine proof not welcomed: {body:02x?}");
        };
        let done = proof
            .handle_server_final(w.server_final)
            .expect("server signature");
        let (tx, rx) = done.session.into_halves(Role::Client);
        Some(Session {
            tx,
            rx,
            keys: done.keys,
            server_max: w.max_frame as usize,
        })
    }
}

/// What the server owes us and we owe it.
#[derive(Default)]
struct Ledger {
    answers_owed: usize,
    server_calls: Vec<u32>,
    ended: bool,
    /// Raw bytes or a forged frame went out: the server owes nothing more
    /// (it closes, or its framing no longer matches ours).
    desynced: bool,
}

fn handle(s: &mut Session, ledger: &mut Ledger, body: &[u8]) {
    let msg =
        s.rx.open(body)
            .unwrap_or_else(|e| panic!("server frame does not open: {e} ({body:02x?})"));
    match msg {
        Message::Reply { .. } | Message::Error { .. } | Message::Pong { .. } => {
            ledger.answers_owed = ledger.answers_owed.saturating_sub(1);
        }
        Message::Call { id, .. } => ledger.server_calls.push(id),
        Message::Goodbye { .. } => ledger.ended = true,
        Message::Notify { .. } | Message::Ping { .. } => {}
    }
}

fn session_records(conn: &mut Conn, s: &mut Session, mut rest: &[u8]) {
    let mut ledger = Ledger::default();
    let mut out = vec![0u8; 2 + 65535];
    while let [op, len, tail @ ..] = rest {
        if conn.closed || ledger.ended {
            break;
        }
        let n = (*len as usize).min(tail.len());
        let (payload, after) = tail.split_at(n);
        rest = after;
        match op % 4 {
            0 => match message::decode::<Message>(payload) {
                Ok(msg) => {
                    if let Ok(frame) = s.tx.seal(&msg, &mut out, s.server_max) {
                        let frame = frame.to_vec();
                        conn.write(&frame);
                        if matches!(msg, Message::Call { .. } | Message::Ping { .. }) {
                            ledger.answers_owed += 1;
                        }
                    }
                }
                Err(_) => {
                    let mut frame = (payload.len() as u16).to_be_bytes().to_vec();
                    frame.extend_from_slice(payload);
                    conn.write(&frame);
                    ledger.desynced = true;
                }
            },
            1 => {
                conn.write(payload);
                ledger.desynced |= !payload.is_empty();
            }
            2 => {
                while ledger.answers_owed > 0 && !ledger.ended && !ledger.desynced {
                    match conn.recv(CLIENT_MAX, Duration::from_secs(2)) {
                        Got::Frame(body) => handle(s, &mut ledger, &body),
                        Got::Closed | Got::Timeout => break,
                    }
                }
            }
            _ => {
                while let Some(id) = ledger.server_calls.pop() {
                    let msg = if op & 4 == 0 {
                        Message::Reply {
                            id,
                            result: payload,
                        }
                    } else {
                        Message::Error {
                            id,
                            code: ErrorCode::FAILED,
                            message: "fuzz",
                        }
                    };
                    if let Ok(frame) = s.tx.seal(&msg, &mut out, s.server_max) {
                        let frame = frame.to_vec();
                        conn.write(&frame);
                    }
                }
            }
        }
    }
    if !conn.closed && !ledger.ended && rest.is_empty() && data_wants_goodbye(s) {
        let bye = Message::Goodbye {
            reason: GoodbyeReason::Normal,
        };
        if let Ok(frame) = s.tx.seal(&bye, &mut out, s.server_max) {
            let frame = frame.to_vec();
            conn.write(&frame);
        }
    }
    // Everything else the server sends must still open, in order.
    let _ = conn.stream.shutdown(Shutdown::Write);
    loop {
        match conn.recv(CLIENT_MAX, CLOSE_WITHIN) {
            Got::Frame(body) => handle(s, &mut ledger, &body),
            Got::Closed => return,
            Got::Timeout => {
                panic!("server kept the session open {CLOSE_WITHIN:?} after our end of stream")
            }
        }
    }
}

/// The server forgets a session soon after its connection closed.
fn wait_for_no_sessions(registry: &tether_server::Registry) {
    let start = std::time::Instant::now();
    while !registry.is_empty() {
        assert!(
            start.elapsed() < CLOSE_WITHIN,
            "{} session(s) still registered {CLOSE_WITHIN:?} after their connection closed",
            registry.len()
        );
        std::thread::sleep(Duration::from_micros(200));
    }
}

/// Say goodbye on every other sequence number, so both endings are covered.
fn data_wants_goodbye(s: &Session) -> bool {
    s.tx.next_seq() % 2 == 0
}

fuzz_target!(|data: &[u8]| {
    let fx = &*FIXTURE;
    let [mode, rest @ ..] = data else {
        return;
    };
    let mut conn = Conn::connect(fx.port);
    if mode % 2 == 0 {
        conn.write(rest);
        let _ = conn.stream.shutdown(Shutdown::Write);
        loop {
            match conn.recv(512, CLOSE_WITHIN) {
                Got::Frame(body) => {
                    let msg = message::decode::<Handshake>(&body)
                        .unwrap_or_else(|e| panic!("server sent an undecodable handshake: {e}"));
                    assert!(
                        matches!(
                            msg,
                            Handshake::Challenge(_) | Handshake::Refused(_) | Handshake::Welcome(_)
                        ),
                        "server sent {msg:?}"
                    );
                    // After a welcome, frames are session frames we cannot
                    // open (no keys: the fuzzer cannot forge a proof).
                    if matches!(msg, Handshake::Welcome(_)) {
                        panic!("a raw input was welcomed without knowing the password");
                    }
                }
                Got::Closed => break,
                Got::Timeout => {
                    panic!("server kept a handshake open {CLOSE_WITHIN:?} after our end of stream")
                }
            }
        }
    } else {
        // Loopback with thousands of connections a second: a connection
        // reset before the server said anything (a recycled port) is the
        // kernel's doing, not the server's; try again, then give up loudly.
        // A reset after the proof is retried too: CI saw one once (the
        // input, replayed alone, logs in), cause not found; three in a row
        // still fail, and an orderly close without an answer always does.
        let mut attempt = 1;
        let mut s = loop {
            match conn.login(ClientCredentials::Keys(&fx.keys)) {
                Some(s) => break s,
                None if attempt < 3 => {
                    attempt += 1;
                    std::thread::sleep(Duration::from_millis(50));
                    conn = Conn::connect(fx.port);
                }
                None => panic!("genuine login reset {attempt} times in a row"),
            }
        };
        assert!(!s.keys.salt.is_empty());
        session_records(&mut conn, &mut s, rest);
        wait_for_no_sessions(&fx.registry);
    }
});
