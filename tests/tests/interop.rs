//! Interop with a SCRAM implementation nobody here wrote: Python's `scramp`.
//!
//! - tether-core's client (`ClientLogin`, `frame`, `session` over a std
//!   `TcpStream`) logs in to `tests/interop/server.py`, a scramp-based
//!   server speaking the Tether handshake and session, and makes calls.
//! - `tests/interop/client.py`, a client written from docs/PROTOCOL.md alone
//!   (framing and postcard by hand, SCRAM from scramp), logs in to
//!   tether-server as Django-made users and makes calls.
//!
//! They need Python with scramp: `tests/interop/setup` creates
//! `.venv-interop`; `TETHER_INTEROP_PYTHON` overrides the interpreter. Run:
//!
//! ```sh
//! tests/interop/setup && cargo test -p tether-tests --test interop -- --include-ignored
//! ```

use std::convert::Infallible;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use tether_core::frame::{FrameDecoder, encode_message};
use tether_core::message::{
    self, ErrorCode, GoodbyeReason, Handshake, Hello, Message, Proof, Refusal, RefusalCode,
};
use tether_core::rand_core::{TryCryptoRng, TryRng};
use tether_core::scram::{
    CachedKeys, ClientConfig, ClientCredentials, ClientLogin, Mechanism, ScramError,
};
use tether_core::session::{Opener, Role, Sealer};

// ---------------------------------------------------------------------------
// Locations

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

fn interop_dir() -> PathBuf {
    repo().join("tests/interop")
}

/// `TETHER_INTEROP_PYTHON`, else `.venv-interop` (tests/interop/setup), else
/// the Django 5.2 fixtures venv (it has the same scramp pin).
fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("TETHER_INTEROP_PYTHON") {
        return p.into();
    }
    for venv in [".venv-interop", ".venv-django-5.2"] {
        let p = repo().join(venv).join("bin/python");
        if p.exists() {
            return p;
        }
    }
    panic!(
        "no Python with scramp: run tests/interop/setup or set TETHER_INTEROP_PYTHON \
         to an interpreter that can `import scramp`"
    );
}

fn users_json() -> Value {
    let path = repo().join("fixtures/django/users.json");
    serde_json::from_str(&std::fs::read_to_string(&path).expect("read users.json"))
        .expect("users.json is JSON")
}

/// A user of `default.sqlite3` from the manifest (passwords are never
/// copied into tests: salts change on every regeneration).
fn fixture_user(name: &str) -> Value {
    users_json()["databases"]["default.sqlite3"]["users"]
        .as_array()
        .expect("users")
        .iter()
        .find(|u| u["username"] == name)
        .unwrap_or_else(|| panic!("{name} in users.json"))
        .clone()
}

fn password_of(name: &str) -> String {
    fixture_user(name)["password"]
        .as_str()
        .expect("a password")
        .to_owned()
}

// ---------------------------------------------------------------------------
// Randomness for nonces, from the OS.

struct OsRng(std::fs::File);

impl OsRng {
    fn new() -> Self {
        Self(std::fs::File::open("/dev/urandom").expect("/dev/urandom"))
    }
}

impl TryRng for OsRng {
    type Error = Infallible;
    fn try_next_u32(&mut self) -> Result<u32, Infallible> {
        let mut b = [0; 4];
        self.try_fill_bytes(&mut b)?;
        Ok(u32::from_le_bytes(b))
    }
    fn try_next_u64(&mut self) -> Result<u64, Infallible> {
        let mut b = [0; 8];
        self.try_fill_bytes(&mut b)?;
        Ok(u64::from_le_bytes(b))
    }
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), Infallible> {
        self.0.read_exact(dest).expect("read /dev/urandom");
        Ok(())
    }
}

impl TryCryptoRng for OsRng {}

// ---------------------------------------------------------------------------
// The Python scramp server

/// Where the Python peers' stderr logs go: the terminal with
/// `TETHER_INTEROP_VERBOSE=1`, nowhere otherwise.
fn log_sink() -> Stdio {
    if std::env::var_os("TETHER_INTEROP_VERBOSE").is_some() {
        Stdio::inherit()
    } else {
        Stdio::null()
    }
}

struct PyServer {
    child: Child,
    port: u16,
}

impl PyServer {
    fn start(extra: &[&str]) -> Self {
        let mut child = Command::new(python())
            .arg(interop_dir().join("server.py"))
            .args(["--port", "0", "--django-users"])
            .arg(repo().join("fixtures/django/users.json"))
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log_sink())
            .spawn()
            .expect("start tests/interop/server.py");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("read server.py's first line");
        let port = line
            .strip_prefix("LISTENING ")
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or_else(|| {
                let _ = child.kill();
                panic!("server.py did not start: {line:?}")
            });
        Self { child, port }
    }
}

impl Drop for PyServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------
// tether-core's client over a std TcpStream

/// A TCP stream plus bytes read past the last frame.
struct Wire {
    stream: TcpStream,
    pending: Vec<u8>,
}

impl Wire {
    fn connect(port: u16) -> Self {
        let stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        stream.set_nodelay(true).unwrap();
        Self {
            stream,
            pending: Vec::new(),
        }
    }

    fn send(&mut self, frame: &[u8]) {
        self.stream.write_all(frame).expect("send frame");
    }

    /// The next frame body, or `None` when the peer closed at a frame
    /// boundary. Bytes go through tether-core's `FrameDecoder` in whatever
    /// chunks the socket returns.
    fn recv(&mut self, decoder: &mut FrameDecoder<&mut Vec<u8>>) -> Option<Vec<u8>> {
        loop {
            if !self.pending.is_empty() {
                let (used, body) = decoder.push(&self.pending).expect("frame decoder");
                let body = body.map(<[u8]>::to_vec);
                self.pending.drain(..used);
                if body.is_some() {
                    return body;
                }
            }
            let mut chunk = [0u8; 1024];
            let n = match self.stream.read(&mut chunk) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => 0,
                Err(e) => panic!("read: {e}"),
            };
            if n == 0 {
                decoder.finish().expect("peer closed inside a frame");
                return None;
            }
            self.pending.extend_from_slice(&chunk[..n]);
        }
    }
}

#[derive(Debug)]
enum Login {
    Welcome(Box<Session>),
    /// Refused, with the refusal's whole frame as received.
    Refused {
        after_proof: bool,
        refusal: Refusal,
        frame: Vec<u8>,
    },
    /// The client's own SCRAM checks failed (it sent nothing more).
    ClientRejected(ScramError),
}

#[derive(Debug)]
struct Session {
    wire_closed_after: bool,
    tx: Sealer,
    rx: Opener,
    server_max: usize,
    session_id: u64,
    keys: CachedKeys,
    derived: bool,
    mechanism: Mechanism,
    #[allow(dead_code)]
    heartbeat_secs: u16,
}

const CLIENT_MAX: usize = 4096;

struct Client {
    wire: Wire,
    buf: Vec<u8>,
}

impl Client {
    fn connect(port: u16) -> Self {
        Self {
            wire: Wire::connect(port),
            buf: vec![0; CLIENT_MAX],
        }
    }

    fn login(&mut self, user: &str, creds: ClientCredentials<'_>) -> Login {
        let mut rng = OsRng::new();
        let login = ClientLogin::<256>::new(user, creds, ClientConfig::default(), &mut rng)
            .expect("client-first");
        let mut out = [0u8; 512];
        let hello = Handshake::Hello(Hello {
            version: message::PROTOCOL_VERSION,
            mechanisms: login.mechanisms(),
            max_frame: CLIENT_MAX as u16,
            client_first: login.client_first(),
        });
        self.wire
            .send(encode_message(&hello, &mut out, 512).expect("encode hello"));

        let mut decoder = FrameDecoder::new(&mut self.buf, 512);
        let body = self.wire.recv(&mut decoder).expect("answer to hello");
        let challenge = match message::decode::<Handshake>(&body).expect("decode") {
            Handshake::Challenge(c) => c,
            Handshake::Refused(refusal) => {
                return self.refused(false, refusal, &body);
            }
            other => panic!("unexpected answer to hello: {other:?}"),
        };
        let proof_sent = match login.handle_challenge(challenge.mechanism, challenge.server_first) {
            Ok(p) => p,
            Err(e) => return Login::ClientRejected(e),
        };
        let proof = Handshake::Proof(Proof {
            client_final: proof_sent.client_final(),
        });
        self.wire
            .send(encode_message(&proof, &mut out, 512).expect("encode proof"));

        let mut decoder = FrameDecoder::new(&mut self.buf, 512);
        let body = self.wire.recv(&mut decoder).expect("answer to proof");
        let welcome = match message::decode::<Handshake>(&body).expect("decode") {
            Handshake::Welcome(w) => w,
            Handshake::Refused(refusal) => return self.refused(true, refusal, &body),
            other => panic!("unexpected answer to proof: {other:?}"),
        };
        let done = match proof_sent.handle_server_final(welcome.server_final) {
            Ok(done) => done,
            Err(e) => {
                // An impostor: close without sending anything more.
                let _ = self.wire.stream.shutdown(Shutdown::Both);
                return Login::ClientRejected(e);
            }
        };
        assert!(
            welcome.max_frame >= 512,
            "server max_frame {}",
            welcome.max_frame
        );
        let (tx, rx) = done.session.into_halves(Role::Client);
        Login::Welcome(Box::new(Session {
            wire_closed_after: false,
            tx,
            rx,
            server_max: welcome.max_frame as usize,
            session_id: welcome.session_id,
            keys: done.keys.clone(),
            derived: done.derived,
            mechanism: challenge.mechanism,
            heartbeat_secs: welcome.heartbeat_secs,
        }))
    }

    fn refused(&mut self, after_proof: bool, refusal: Refusal, body: &[u8]) -> Login {
        let mut frame = (body.len() as u16).to_be_bytes().to_vec();
        frame.extend_from_slice(body);
        // The refusal is the last frame: the server closes.
        let mut decoder = FrameDecoder::new(&mut self.buf, 512);
        assert_eq!(self.wire.recv(&mut decoder), None, "frame after a refusal");
        Login::Refused {
            after_proof,
            refusal,
            frame,
        }
    }

    fn send(&mut self, s: &mut Session, msg: &Message<'_>) {
        let mut out = vec![0u8; s.server_max + 2];
        let frame = s.tx.seal(msg, &mut out, s.server_max).expect("seal");
        self.wire.send(frame);
    }

    /// Calls `method` and returns the owned answer: `Ok(result)` or
    /// `Err((code, message))`.
    fn call(
        &mut self,
        s: &mut Session,
        id: u32,
        method: &str,
        args: &[u8],
    ) -> Result<Vec<u8>, (ErrorCode, String)> {
        self.send(s, &Message::Call { id, method, args });
        let mut decoder = FrameDecoder::new(&mut self.buf, CLIENT_MAX);
        let body = self.wire.recv(&mut decoder).expect("answer to a call");
        match s.rx.open(&body).expect("open the server's frame") {
            Message::Reply { id: got, result } => {
                assert_eq!(got, id);
                Ok(result.to_vec())
            }
            Message::Error {
                id: got,
                code,
                message,
            } => {
                assert_eq!(got, id);
                Err((code, message.to_owned()))
            }
            other => panic!("expected the answer to call {id}, got {other:?}"),
        }
    }

    fn ping(&mut self, s: &mut Session, nonce: u32) {
        self.send(s, &Message::Ping { nonce });
        let mut decoder = FrameDecoder::new(&mut self.buf, CLIENT_MAX);
        let body = self.wire.recv(&mut decoder).expect("pong");
        assert_eq!(
            s.rx.open(&body).expect("open pong"),
            Message::Pong { nonce }
        );
    }

    fn goodbye(&mut self, s: &mut Session) {
        self.send(
            s,
            &Message::Goodbye {
                reason: GoodbyeReason::Normal,
            },
        );
        let mut decoder = FrameDecoder::new(&mut self.buf, CLIENT_MAX);
        // Goodbye is our last frame; the server closes (it may say goodbye).
        while let Some(body) = self.wire.recv(&mut decoder) {
            let msg = s.rx.open(&body).expect("open");
            assert!(
                matches!(msg, Message::Goodbye { .. }),
                "after goodbye: {msg:?}"
            );
        }
        s.wire_closed_after = true;
    }
}

fn expect_welcome(login: Login) -> Session {
    match login {
        Login::Welcome(s) => *s,
        other => panic!("expected a welcome, got {other:?}"),
    }
}

/// postcard of a string: varint length, bytes.
fn pc_string(s: &str) -> Vec<u8> {
    assert!(s.len() < 128);
    let mut v = vec![s.len() as u8];
    v.extend_from_slice(s.as_bytes());
    v
}

// ---------------------------------------------------------------------------
// tether-core client -> scramp server

#[test]
#[ignore = "needs Python with scramp (tests/interop/setup)"]
fn python_wire_matches_protocol_md_vectors() {
    let out = Command::new(python())
        .arg(interop_dir().join("vectors_check.py"))
        .arg(repo().join("docs/PROTOCOL.md"))
        .output()
        .expect("run vectors_check.py");
    assert!(
        out.status.success(),
        "vectors_check.py: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
#[ignore = "needs Python with scramp (tests/interop/setup)"]
fn core_client_logs_in_to_scramp_server_with_a_django_row_and_calls() {
    let server = PyServer::start(&[]);
    let password = password_of("alice");

    let mut c = Client::connect(server.port);
    let mut s = expect_welcome(c.login("alice", ClientCredentials::Password(&password)));
    assert_eq!(s.mechanism, Mechanism::ScramSha256);
    assert!(s.derived, "a password login runs PBKDF2");
    assert_eq!(s.keys.iterations, 1_000_000, "Django 5.2's row");

    let echo = c.call(&mut s, 1, "echo", &pc_string("hi from tether-core"));
    assert_eq!(echo, Ok(pc_string("hi from tether-core")));
    // whoami: { user_id: i64 zigzag, username, session_id: u64, is_superuser }
    let who = c.call(&mut s, 2, "whoami", &[]).expect("whoami");
    let mut want = vec![2]; // zigzag(1)
    want.extend(pc_string("alice"));
    want.extend([s.session_id as u8, 0]);
    assert!(s.session_id < 128);
    assert_eq!(who, want);
    let err = c.call(&mut s, 3, "no_such_method", &[]);
    assert_eq!(err.map_err(|e| e.0), Err(ErrorCode::UNKNOWN_METHOD));
    c.ping(&mut s, 0xdead_beef);
    c.goodbye(&mut s);
    assert!(s.wire_closed_after);

    // Later logins with the cached keys: no PBKDF2, same server.
    let keys = s.keys.clone();
    let mut c = Client::connect(server.port);
    let mut s = expect_welcome(c.login("alice", ClientCredentials::Keys(&keys)));
    assert!(!s.derived, "cached keys: no PBKDF2");
    assert_eq!(
        c.call(&mut s, 1, "echo", &pc_string("cached")),
        Ok(pc_string("cached"))
    );
    c.goodbye(&mut s);
}

#[test]
#[ignore = "needs Python with scramp (tests/interop/setup)"]
fn core_client_sha1_and_escaped_username_against_scramp_server() {
    let server = PyServer::start(&["--scramp-user", "sam:sam-password:sha1"]);

    // bob's Django row is pbkdf2_sha1: SCRAM-SHA-1, HMAC-SHA256 session keys.
    let password = password_of("bob");
    let mut c = Client::connect(server.port);
    let mut s = expect_welcome(c.login("bob", ClientCredentials::Password(&password)));
    assert_eq!(s.mechanism, Mechanism::ScramSha1);
    assert_eq!(
        c.call(&mut s, 7, "echo", &pc_string("sha1")),
        Ok(pc_string("sha1"))
    );
    c.goodbye(&mut s);

    // A SCRAM-SHA-1 key made by scramp itself (random 32-byte salt, 4096).
    let mut c = Client::connect(server.port);
    let mut s = expect_welcome(c.login("sam", ClientCredentials::Password("sam-password")));
    assert_eq!(
        (s.mechanism, s.keys.iterations),
        (Mechanism::ScramSha1, 4096)
    );
    assert_eq!(
        c.call(&mut s, 1, "echo", &pc_string("s")),
        Ok(pc_string("s"))
    );
    c.goodbye(&mut s);

    // `o,dd=name`: escaped as n=o=2Cdd=3Dname, unescaped by scramp.
    let password = password_of("o,dd=name");
    let mut c = Client::connect(server.port);
    let mut s = expect_welcome(c.login("o,dd=name", ClientCredentials::Password(&password)));
    let who = c.call(&mut s, 1, "whoami", &[]).expect("whoami");
    assert_eq!(&who[1..11], pc_string("o,dd=name").as_slice());
    c.goodbye(&mut s);
}

#[test]
#[ignore = "needs Python with scramp (tests/interop/setup)"]
fn scramp_server_refuses_wrong_password_and_unknown_user_alike() {
    let server = PyServer::start(&["--scramp-user", "carl:carl-password"]);

    let mut c = Client::connect(server.port);
    let mut s = expect_welcome(c.login("carl", ClientCredentials::Password("carl-password")));
    c.goodbye(&mut s);

    let mut frames = Vec::new();
    for (user, password) in [("carl", "not-carls"), ("nobody", "carl-password")] {
        let mut c = Client::connect(server.port);
        match c.login(user, ClientCredentials::Password(password)) {
            Login::Refused {
                after_proof: true,
                refusal,
                frame,
            } => {
                assert_eq!(refusal.code, RefusalCode::Unauthorized, "{user}");
                frames.push(frame);
            }
            other => panic!("{user}: expected unauthorized after the proof, got {other:?}"),
        }
    }
    assert_eq!(frames[0], frames[1]);
    assert_eq!(frames[0], [0x00, 0x03, 0x04, 0x00, 0x00]);

    // A user whose mechanism the client cannot do: carl's cached
    // SCRAM-SHA-256 keys offer only SHA-256, sam's row is SCRAM-SHA-1. No
    // `unsupported` at the hello (it would tell that sam exists and needs
    // SHA-1): a decoy challenge in SHA-256 with sam's salt, which carl's
    // keys do not fit, so the client stops there, as it would for any
    // account whose password changed.
    let keys = s.keys.clone();
    let server = PyServer::start(&["--scramp-user", "sam:sam-password:sha1"]);
    let mut c = Client::connect(server.port);
    match c.login("sam", ClientCredentials::Keys(&keys)) {
        Login::ClientRejected(ScramError::CachedKeysMismatch) => {}
        other => panic!("expected a SHA-256 challenge for other keys, got {other:?}"),
    }
}

#[test]
#[ignore = "needs Python with scramp (tests/interop/setup)"]
fn core_client_detects_an_impostor_scramp_server() {
    // The server accepts the proof but sends a wrong ServerSignature.
    let server = PyServer::start(&["--scramp-user", "carl:carl-password", "--impostor"]);
    let mut c = Client::connect(server.port);
    match c.login("carl", ClientCredentials::Password("carl-password")) {
        Login::ClientRejected(ScramError::InvalidServerSignature) => {}
        other => panic!("expected InvalidServerSignature, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------
// Python client (docs/PROTOCOL.md + scramp) -> tether-server

/// tether-server (the library, as `tether serve` runs it) on 127.0.0.1 with
/// an ephemeral port, against a private copy of the Django 5.2 fixture
/// database, requiring `devices.connect` like a real deployment; throttle
/// off so that refusals stay `unauthorized`.
struct TetherServer {
    port: u16,
    handle: tether_server::ServerHandle,
    thread: Option<std::thread::JoinHandle<()>>,
    _db: tempfile::TempDir,
}

impl TetherServer {
    fn start() -> Self {
        let db = tempfile::tempdir().expect("tempdir");
        let path = db.path().join("default.sqlite3");
        std::fs::copy(repo().join("fixtures/django/default.sqlite3"), &path).expect("copy db");
        let (tx, rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("tokio runtime");
            rt.block_on(async move {
                let mut store =
                    tether_server::StoreConfig::new(format!("sqlite://{}", path.display()));
                store.require_perm = Some("devices.connect".parse().expect("permission"));
                let store = std::sync::Arc::new(tether_server::Store::open(store).expect("store"));
                let config = tether_server::ServerConfig {
                    throttle: tether_server::ThrottleConfig::disabled(),
                    ..Default::default()
                };
                let server = tether_server::Server::bind(
                    "127.0.0.1:0",
                    config,
                    store,
                    tether_server::DefaultRealm::new(),
                    tether_server::ServerSecret::random(),
                )
                .await
                .expect("bind");
                tx.send((server.local_addr().port(), server.handle()))
                    .expect("send port");
                server.run().await;
            });
        });
        let (port, handle) = rx.recv().expect("tether-server started");
        Self {
            port,
            handle,
            thread: Some(thread),
            _db: db,
        }
    }
}

impl Drop for TetherServer {
    fn drop(&mut self) {
        self.handle.shutdown();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Runs tests/interop/client.py; returns its exit status and JSON report.
fn client_py(port: u16, user: &str, password: &str, extra: &[&str]) -> (i32, Value) {
    let out = Command::new(python())
        .arg(interop_dir().join("client.py"))
        .args([
            "--port",
            &port.to_string(),
            "--user",
            user,
            "--password",
            password,
        ])
        .args(extra)
        .stderr(log_sink())
        .output()
        .expect("run tests/interop/client.py");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let report: Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("client.py printed no JSON ({e}): {stdout}"));
    (out.status.code().unwrap_or(-1), report)
}

fn varint(bytes: &[u8]) -> u64 {
    let mut v = 0u64;
    for (i, b) in bytes.iter().enumerate() {
        v |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            assert_eq!(i + 1, bytes.len(), "trailing bytes after the varint");
            return v;
        }
    }
    panic!("truncated varint")
}

fn hex_bytes(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}

#[test]
#[ignore = "needs Python with scramp (tests/interop/setup)"]
fn python_client_logs_in_to_tether_server_and_calls() {
    let server = TetherServer::start();
    let text = "héllo from an independent client ✓";
    for (user, mechanism) in [
        ("alice", "SCRAM-SHA-256"),
        ("bob", "SCRAM-SHA-1"),
        ("o,dd=name", "SCRAM-SHA-256"),
        ("root", "SCRAM-SHA-256"),
    ] {
        let row = fixture_user(user);
        let password = row["password"].as_str().unwrap();
        let (status, r) = client_py(
            server.port,
            user,
            password,
            &[
                "--echo",
                text,
                "--whoami",
                "--ping",
                "--call",
                "server_time",
                "--call",
                "no_such_method",
            ],
        );
        assert_eq!(status, 0, "{user}: {r}");
        assert_eq!(r["outcome"], "welcome", "{user}: {r}");
        assert_eq!(r["server_signature_verified"], true);
        assert_eq!(r["challenge"]["mechanism"], mechanism, "{user}");
        assert_eq!(r["challenge"]["iterations"], row["iterations"], "{user}");
        assert_eq!(r["pong"], true);
        let calls = r["calls"].as_array().unwrap();
        assert_eq!(calls[0]["result"], text);
        let who = &calls[1]["result"];
        assert_eq!(who["username"], user);
        assert_eq!(who["user_id"], row["id"]);
        assert_eq!(who["is_superuser"], row["is_superuser"]);
        assert_eq!(who["session_id"], r["welcome"]["session_id"]);
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        let server_ms = varint(&hex_bytes(
            calls[2]["result_hex"].as_str().expect("server_time"),
        ));
        assert!(
            now_ms.abs_diff(server_ms) < 60_000,
            "server_time {server_ms} vs {now_ms}"
        );
        assert_eq!(calls[3]["error"]["code"], 1, "unknown_method: {}", calls[3]);
    }
}

#[test]
#[ignore = "needs Python with scramp (tests/interop/setup)"]
fn python_client_sees_identical_refusals_for_unknown_user_and_wrong_password() {
    let server = TetherServer::start();
    let alice = password_of("alice");
    let cases = [
        ("wrong password", "alice", "not-alices-password", &[][..]),
        ("unknown user", "nobody-here", "alice-password", &[][..]),
        ("inactive user", "eve", &*password_of("eve"), &[][..]),
        (
            "no permission",
            "nogroup",
            &*password_of("nogroup"),
            &[][..],
        ),
        (
            "corrupted proof",
            "alice",
            &*alice,
            &["--corrupt-proof"][..],
        ),
        ("argon2 row", "carol", &*password_of("carol"), &[][..]),
        ("md5 row", "mallory", &*password_of("mallory"), &[][..]),
        (
            "SHA-1 row, client offers SHA-256 only",
            "bob",
            &*password_of("bob"),
            &["--mechanisms", "1"][..],
        ),
        (
            "SHA-256 row, client offers SHA-1 only",
            "alice",
            &*alice,
            &["--mechanisms", "2"][..],
        ),
    ];
    let mut seen: Vec<(&str, Value)> = Vec::new();
    for (what, user, password, extra) in cases {
        let (status, r) = client_py(server.port, user, password, extra);
        assert_eq!(status, 0, "{what}: {r}");
        assert_eq!(r["outcome"], "refused", "{what}: {r}");
        assert_eq!(
            r["refused"]["after"], "proof",
            "{what}: refused only after the proof"
        );
        assert_eq!(r["refused"]["code"], "unauthorized", "{what}");
        assert_eq!(r["closed_after_refusal"], true, "{what}");
        seen.push((what, r));
    }
    // Byte for byte, from the client's side: the same refusal frame, and
    // challenges of the same shape: salt and nonce lengths, a mechanism and
    // iteration count that real rows have (decoys are drawn among the
    // rows' by the server's secret), a frame length that follows from the
    // count.
    let (first, reference) = &seen[0];
    let shapes = [
        ("SCRAM-SHA-256", 1_000_000),
        ("SCRAM-SHA-256", 260_000),
        ("SCRAM-SHA-1", 1_000_000),
    ];
    for (what, r) in &seen {
        assert_eq!(
            r["refused_frame_hex"], reference["refused_frame_hex"],
            "{what} vs {first}"
        );
        let (c, rc) = (&r["challenge"], &reference["challenge"]);
        for field in ["salt_len", "server_nonce_len"] {
            assert_eq!(c[field], rc[field], "{what} vs {first}: {field}");
        }
        let shape = (
            c["mechanism"].as_str().unwrap(),
            c["iterations"].as_u64().unwrap(),
        );
        assert!(shapes.contains(&shape), "{what}: {c}");
        if c["iterations"] == rc["iterations"] {
            assert_eq!(c["frame_len"], rc["frame_len"], "{what} vs {first}");
        }
    }
    assert_eq!(reference["refused_frame_hex"], "0003040000");
}

#[test]
#[ignore = "needs Python with scramp (tests/interop/setup)"]
fn python_client_other_refusals_and_bad_tag() {
    let server = TetherServer::start();
    // A hello offering no mechanism the server runs: refused `unsupported`
    // at the hello, whoever the user.
    for user in ["alice", "nobody-here"] {
        let (status, r) = client_py(server.port, user, "x", &["--mechanisms", "4"]);
        assert_eq!((status, &r["outcome"]), (0, &Value::from("refused")), "{r}");
        assert_eq!(r["refused"]["after"], "hello");
        assert_eq!(r["refused"]["code"], "unsupported");
        assert_eq!(r["refused_frame_hex"], "0003040100");
    }
    // Protocol version 2.
    let (_, r) = client_py(server.port, "alice", "x", &["--version", "2"]);
    assert_eq!(r["refused"]["code"], "version", "{r}");
    assert_eq!(r["refused_frame_hex"], "0003040400");
    // A session frame with a wrong tag ends the session.
    let (status, r) = client_py(server.port, "alice", &password_of("alice"), &["--bad-tag"]);
    assert_eq!(status, 0, "{r}");
    assert_eq!(r["outcome"], "welcome");
    assert_eq!(r["closed_after_bad_tag"], true, "{r}");
}
