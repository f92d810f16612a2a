//! Shared by hostile.rs, faults.rs and security.rs.
//!
//! - [`common`]: tether-server's own test client (std-server/tests/server/
//!   common.rs, included by path, not copied): fixtures, step-by-step
//!   handshakes, a session client.
//! - [`serve`]: the real server with the binary's realm reporting
//!   [`RealmEvent`]s, so a test can say how each session ended.
//! - [`Bystander`]: a healthy device (tether-firmware over a std socket, the
//!   real client) that keeps calling `echo` while a test attacks the server
//!   next to it; [`Bystander::finish`] proves it was never disturbed.
//! - [`raw_login`] / [`RawSession`]: a client that knows every SCRAM value
//!   and the session keys, so it can send authentic frames around anything
//!   (garbage, wrong sequence numbers) and tell which secrets a login used.
//! - [`metric`]: a series of the server's Prometheus metrics.
//! - [`Proxy`]: a TCP proxy that can be cut and restored (a database or a
//!   network link going away).
//! - [`tether_bin`]: the `tether` binary, built if needed;
//!   [`process::ServeProcess`]: `tether serve` as a process, its log read.
#![allow(dead_code)]

#[path = "../../../std-server/tests/server/common.rs"]
pub mod common;
pub mod process;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use base64::Engine as _;
use hmac::{KeyInit as _, Mac as _};
use tether_core::frame::HEADER_LEN;
use tether_core::message::{self, GoodbyeReason, Handshake, Message, Proof, Refusal};
use tether_core::method::builtin::{Echo, WhoAmI};
use tether_core::scram::{CachedKeys, ClientConfig, ClientCredentials, ClientLogin, Mechanism};
use tether_core::session::{Opener, Role};
use tether_firmware::{BufferStore, Config as DeviceConfig, Error as DeviceError, host};
use tether_server::default_realm::RealmEvent;
use tether_server::{DefaultRealm, Registry, ServerConfig, ServerHandle, SessionEnd};
use tether_server::{Store, StoreConfig};
use tether_test_support::wire::{FrameReader, ReadError};
use tokio::io::AsyncWriteExt as _;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use crate::firmware_support::{DeviceMind, TestRng};
#[allow(unused_imports)] // each test file uses some
pub use common::{
    Db, Handshaking, LoginError, Msg, OwnedHandshake, connect, password, send_raw_frame, user,
};
#[allow(unused_imports)]
pub use process::ServeProcess;

pub const DB: &str = "default.sqlite3";

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

pub fn hmac256(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes any key length");
    for p in parts {
        mac.update(p);
    }
    mac.finalize().into_bytes().into()
}

pub fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

// ------------------------------------------------------------------ server

/// The real server with the binary's realm ([`DefaultRealm`]) reporting
/// connects and disconnects.
pub struct Served {
    pub addr: SocketAddr,
    pub handle: ServerHandle,
    pub store: Arc<Store>,
    pub registry: Registry,
    pub events: Events,
    pub join: JoinHandle<()>,
}

/// Test defaults (common.rs: no throttle, 5 s handshake timeout), changed
/// by `f`.
pub async fn serve(
    url: impl Into<String>,
    f: impl FnOnce(&mut ServerConfig, &mut StoreConfig),
) -> Served {
    let mut config = common::test_config();
    let mut store = StoreConfig::new(url.into());
    f(&mut config, &mut store);
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let realm = DefaultRealm::new().with_events(tx);
    let registry = realm.registry();
    let s = common::start_with(store, config, realm).await;
    Served {
        addr: s.addr,
        handle: s.handle,
        store: s.store,
        registry,
        events: Events {
            rx,
            seen: Vec::new(),
        },
        join: s.join,
    }
}

impl Served {
    /// A series of this server's metrics (see [`metric`]).
    pub fn metric(&self, series: &str) -> f64 {
        metric(&self.store, series)
    }

    /// All metrics now, to count from (see [`Self::expect_metric`]).
    pub fn snapshot(&self) -> String {
        self.store.metrics().render()
    }

    /// Waits (up to 5 s) until `series` has grown by exactly `delta` since
    /// `base`, and panics if it does not. Counters are recorded when the
    /// server's task for a connection finishes, which may be a little after
    /// the client saw the refusal.
    pub async fn expect_metric(&self, base: &str, series: &str, delta: f64) {
        let from = parse_metric(base, series);
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let now = self.metric(series);
            if now - from == delta {
                // And it stays there a moment (nothing more was coming).
                tokio::time::sleep(Duration::from_millis(20)).await;
                let again = self.metric(series);
                assert_eq!(again - from, delta, "{series} went on growing");
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{series}: grew by {} (expected {delta})\n{}",
                now - from,
                self.snapshot()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// A series in a Prometheus text rendering; 0 when absent.
pub fn parse_metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|line| {
            let rest = line.strip_prefix(series)?;
            rest.strip_prefix(' ')?.trim().parse::<f64>().ok()
        })
        .unwrap_or(0.0)
}

/// The realm's events, kept as they arrive.
pub struct Events {
    rx: tokio::sync::mpsc::UnboundedReceiver<RealmEvent>,
    pub seen: Vec<RealmEvent>,
}

impl Events {
    fn drain(&mut self) {
        while let Ok(e) = self.rx.try_recv() {
            self.seen.push(e);
        }
    }

    fn end_of(&self, session: u64) -> Option<SessionEnd> {
        self.seen.iter().find_map(|e| match e {
            RealmEvent::Disconnected {
                session: s, end, ..
            } if *s == session => Some(end.clone()),
            _ => None,
        })
    }

    /// How `session` ended (waits up to 10 s for it).
    pub async fn ended(&mut self, session: u64) -> SessionEnd {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            self.drain();
            if let Some(end) = self.end_of(session) {
                return end;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "session {session} did not end within 10 s");
            if let Ok(Some(e)) = tokio::time::timeout(left, self.rx.recv()).await {
                self.seen.push(e);
            }
        }
    }

    /// Whether `session` has ended (without waiting).
    pub fn has_ended(&mut self, session: u64) -> bool {
        self.drain();
        self.end_of(session).is_some()
    }

    /// Sessions that connected so far.
    pub fn connected(&mut self) -> Vec<(u64, String)> {
        self.drain();
        self.seen
            .iter()
            .filter_map(|e| match e {
                RealmEvent::Connected {
                    session, username, ..
                } => Some((*session, username.clone())),
                _ => None,
            })
            .collect()
    }
}

/// One series of a store's Prometheus metrics, e.g.
/// `tether_login_refusals_total{code="protocol"}`; 0 when absent.
pub fn metric(store: &Store, series: &str) -> f64 {
    parse_metric(&store.metrics().render(), series)
}

// --------------------------------------------------------------- bystander

/// Keys from a password login, per user and salt, so later logins of the
/// same account skip PBKDF2 (as a device does).
fn cached_keys(username: &str) -> Option<CachedKeys> {
    KEYS.get_or_init(Default::default)
        .lock()
        .unwrap()
        .get(username)
        .cloned()
}

static KEYS: OnceLock<Mutex<HashMap<String, CachedKeys>>> = OnceLock::new();

/// The keys of a default.sqlite3 user, from its row's salt and iterations.
pub fn fixture_keys(username: &str) -> CachedKeys {
    let u = user(DB, username);
    let mechanism = match u["scram_mechanism"].as_str() {
        Some("SCRAM-SHA-1") => Mechanism::ScramSha1,
        _ => Mechanism::ScramSha256,
    };
    derive_keys(
        mechanism,
        password(DB, username),
        u["salt"].as_str().unwrap().as_bytes(),
        u["iterations"].as_u64().unwrap() as u32,
    )
}

pub fn device_config() -> DeviceConfig {
    // henry's row has 260,000 iterations; Django 5.2's 1,000,000.
    DeviceConfig::default().with_min_iterations(200_000)
}

/// A healthy device calling `echo` in a loop beside an attack.
pub struct Bystander {
    pub session_id: u64,
    pub username: String,
    calls: Arc<AtomicU64>,
    stop: tokio::sync::watch::Sender<bool>,
    task: JoinHandle<Result<u64, String>>,
}

impl Bystander {
    /// Logs `username` (a default.sqlite3 user) in with the real firmware
    /// client and starts calling.
    pub async fn start(addr: SocketAddr, username: &str) -> Self {
        let calls = Arc::new(AtomicU64::new(0));
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let (ready_tx, ready) = tokio::sync::oneshot::channel();
        let name = username.to_string();
        let counter = calls.clone();
        let task = tokio::spawn(async move {
            let mut store: BufferStore = BufferStore::new();
            // Keys cached from an earlier password login in this process, or
            // derived from the fixture's row (as a provisioned device has
            // them): no PBKDF2 inside a short handshake timeout.
            let keys = cached_keys(&name).unwrap_or_else(|| fixture_keys(&name));
            let mut rng = TestRng(name.len() as u64);
            let mut login = host::connect(
                addr,
                store.buffers(),
                &name,
                ClientCredentials::Keys(&keys),
                &mut rng,
                &device_config(),
            )
            .await;
            if let Err(DeviceError::Login(tether_core::scram::ScramError::CachedKeysMismatch)) =
                login
            {
                // Another database made with the same passwords, other salts.
                login = host::connect(
                    addr,
                    store.buffers(),
                    &name,
                    ClientCredentials::Password(password(DB, &name)),
                    &mut rng,
                    &device_config(),
                )
                .await;
            }
            let login = login.map_err(|e| format!("bystander {name} cannot log in: {e:?}"))?;
            if login.derived {
                KEYS.get_or_init(Default::default)
                    .lock()
                    .unwrap()
                    .insert(name.clone(), login.keys.clone());
            }
            let mut session = login.session;
            let id = session.session_id();
            let _ = ready_tx.send(id);
            let mut mind = DeviceMind { report: |_| {} };
            let mut n = 0u64;
            while !*stopped.borrow_and_update() {
                let text = format!("{name} call {n}");
                match session.call::<Echo, _>(&text.as_str(), &mut mind).await {
                    Ok(r) if r == text => {}
                    other => return Err(format!("bystander {name} call {n}: {other:?}")),
                }
                n += 1;
                counter.store(n, Ordering::Relaxed);
                session
                    .serve_for(&mut mind, Duration::from_millis(5))
                    .await
                    .map_err(|e| format!("bystander {name} after call {n}: {e:?}"))?;
            }
            let me = session
                .call::<WhoAmI, _>(&(), &mut mind)
                .await
                .map_err(|e| format!("bystander {name} whoami: {e:?}"))?;
            if me.session_id != id || me.username != name {
                return Err(format!("bystander {name}: whoami says {me:?}"));
            }
            session
                .close()
                .await
                .map_err(|e| format!("bystander {name} goodbye: {e:?}"))?;
            Ok(n)
        });
        let session_id = match tokio::time::timeout(Duration::from_secs(60), ready).await {
            Ok(Ok(id)) => id,
            _ => panic!("bystander: {:?}", task.await),
        };
        let b = Self {
            session_id,
            username: username.to_string(),
            calls,
            stop,
            task,
        };
        b.progresses().await;
        b
    }

    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }

    /// Waits until the bystander has completed three more calls (within
    /// 10 s): it is still being served, now.
    pub async fn progresses(&self) {
        let from = self.calls();
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.calls() < from + 3 {
            assert!(
                !self.task.is_finished(),
                "bystander {} stopped after {} calls",
                self.username,
                self.calls()
            );
            assert!(
                Instant::now() < deadline,
                "bystander {} made no progress in 10 s ({} calls)",
                self.username,
                self.calls()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Stops calling and proves the session was untouched: every call
    /// answered correctly, the session id unchanged (`whoami`), the
    /// server still listing it, a clean goodbye, and the realm saw it end
    /// by that goodbye and nothing else.
    pub async fn finish(self, served: &mut Served) -> u64 {
        self.progresses().await;
        assert!(
            !served.events.has_ended(self.session_id),
            "the bystander's session ended: {:?}",
            served.events.seen
        );
        assert!(
            served.registry.mind(self.session_id).is_some(),
            "the bystander's session is not live"
        );
        let _ = self.stop.send(true);
        let calls = tokio::time::timeout(Duration::from_secs(30), self.task)
            .await
            .expect("bystander stops in time")
            .expect("bystander task")
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            served.events.ended(self.session_id).await,
            SessionEnd::Goodbye(GoodbyeReason::Normal)
        );
        calls
    }
}

// -------------------------------------------------------------- raw client

/// Every value of one SCRAM login, as the client saw them.
#[derive(Debug, Clone)]
pub struct LoginRecord {
    pub username: String,
    pub mechanism: Mechanism,
    pub hello_frame: Vec<u8>,
    pub proof_frame: Vec<u8>,
    pub client_first: String,
    pub server_first: String,
    pub client_final: String,
    pub server_final: String,
    pub keys: CachedKeys,
    /// SHA-256 logins only (the session keys are computed here for those).
    pub auth_message: String,
}

impl LoginRecord {
    /// `p=` of the client-final-message.
    pub fn proof_b64(&self) -> &str {
        self.client_final.rsplit(",p=").next().unwrap()
    }

    /// K, K_c2s, K_s2c (PROTOCOL.md section 5).
    pub fn session_keys(&self) -> ([u8; 32], [u8; 32], [u8; 32]) {
        let k = hmac256(
            self.keys.client_key.as_bytes(),
            &[b"tether/1 session", &[0], self.auth_message.as_bytes()],
        );
        (k, hmac256(&k, &[b"c2s"]), hmac256(&k, &[b"s2c"]))
    }
}

/// PBKDF2 once per (mechanism, password, salt, iterations) in the process.
pub fn derive_keys(m: Mechanism, password: &str, salt: &[u8], iterations: u32) -> CachedKeys {
    type K = (Mechanism, String, Vec<u8>, u32);
    static CACHE: OnceLock<Mutex<HashMap<K, CachedKeys>>> = OnceLock::new();
    let key = (m, password.to_string(), salt.to_vec(), iterations);
    let cache = CACHE.get_or_init(Default::default);
    if let Some(k) = cache.lock().unwrap().get(&key) {
        return k.clone();
    }
    let k = CachedKeys::derive(m, password, salt, iterations).unwrap();
    cache.lock().unwrap().insert(key, k.clone());
    k
}

pub fn handshake_frame(msg: &Handshake<'_>) -> Vec<u8> {
    let mut buf = [0u8; HEADER_LEN + 512];
    tether_core::frame::encode_message(msg, &mut buf, 512)
        .unwrap()
        .to_vec()
}

/// The next whole frame (length prefix included) within `t`; `None` when
/// the peer closed.
pub async fn next_frame(r: &mut FrameReader<OwnedReadHalf>, t: Duration) -> Option<Vec<u8>> {
    match tokio::time::timeout(t, r.next()).await {
        Err(_) => panic!("nothing from the server within {t:?}"),
        Ok(Ok(body)) => {
            let mut frame = (body.len() as u16).to_be_bytes().to_vec();
            frame.extend_from_slice(body);
            Some(frame)
        }
        Ok(Err(ReadError::Closed)) => None,
        Ok(Err(e)) => panic!("reading from the server: {e}"),
    }
}

/// Reads the refusal, checks that the server then closed, and returns the
/// refusal's frame bytes.
pub async fn refusal_then_close(r: &mut FrameReader<OwnedReadHalf>) -> (Refusal, Vec<u8>) {
    let frame = next_frame(r, Duration::from_secs(10))
        .await
        .expect("a refusal before the close");
    let refusal = match message::decode::<Handshake>(&frame[HEADER_LEN..]).unwrap() {
        Handshake::Refused(r) => r,
        other => panic!("expected a refusal, got {other:?}"),
    };
    assert_eq!(
        next_frame(r, Duration::from_secs(10)).await,
        None,
        "the server closes after a refusal"
    );
    (refusal, frame)
}

/// The frame bytes of `Refused { code, retry_after_secs }`.
pub fn refusal_frame(code: tether_core::message::RefusalCode, retry_after_secs: u16) -> Vec<u8> {
    handshake_frame(&Handshake::Refused(Refusal {
        code,
        retry_after_secs,
    }))
}

/// A logged-in session whose client side is hand-made: any payload, any
/// sequence number, any key.
pub struct RawSession {
    pub reader: FrameReader<OwnedReadHalf>,
    pub writer: OwnedWriteHalf,
    pub opener: Opener,
    pub k_c2s: [u8; 32],
    pub k_s2c: [u8; 32],
    /// The next sequence number to send.
    pub seq: u64,
    pub session_id: u64,
    pub server_max: usize,
    pub next_id: u32,
}

/// Logs in with a password, step by step (SHA-256 accounts).
pub async fn raw_login(
    addr: SocketAddr,
    username: &str,
    password: &str,
) -> Result<(RawSession, LoginRecord), LoginError> {
    raw_login_with(addr, username, password, 4096).await
}

/// [`raw_login`] announcing `max_frame` (the largest frame it accepts).
pub async fn raw_login_with(
    addr: SocketAddr,
    username: &str,
    password: &str,
    max_frame: u16,
) -> Result<(RawSession, LoginRecord), LoginError> {
    let all = tether_core::scram::Mechanisms::ALL;
    let mut hs = Handshaking::hello_with(None, addr, username, all, max_frame).await;
    let c = hs.challenge().await?;
    let keys = derive_keys(c.mechanism, password, &c.salt, c.iterations);
    let (record, proof) = prove(&hs, &c, &keys);
    hs.writer.write_all(&record.proof_frame).await.unwrap();
    match common::read_handshake(&mut hs.reader).await {
        Some(OwnedHandshake::Welcome {
            server_final,
            session_id,
            max_frame,
            ..
        }) => {
            let done = proof
                .handle_server_final(&server_final)
                .map_err(|e| LoginError::Other(format!("server signature: {e}")))?;
            let (_, opener) = done.session.into_halves(Role::Client);
            let mut record = record;
            record.server_final = server_final;
            let (_, k_c2s, k_s2c) = record.session_keys();
            let mut reader = hs.reader;
            reader.set_max(hs.max_frame as usize);
            Ok((
                RawSession {
                    reader,
                    writer: hs.writer,
                    opener,
                    k_c2s,
                    k_s2c,
                    seq: 0,
                    session_id,
                    server_max: max_frame as usize,
                    next_id: 1,
                },
                record,
            ))
        }
        Some(OwnedHandshake::Refused(r)) => Err(LoginError::Refused(r)),
        Some(other) => Err(LoginError::Other(format!("{other:?}"))),
        None => Err(LoginError::Closed),
    }
}

/// The client-final-message for a challenge with `keys` (not sent).
pub fn prove(
    hs: &Handshaking,
    c: &common::ChallengeInfo,
    keys: &CachedKeys,
) -> (LoginRecord, tether_core::scram::ClientProofSent) {
    let login = ClientLogin::<256>::with_nonce(
        &hs.username,
        ClientCredentials::Keys(keys),
        ClientConfig::default(),
        &hs.nonce,
    )
    .unwrap();
    let client_first = login.client_first().to_string();
    let sent = login
        .handle_challenge(c.mechanism, &c.server_first)
        .unwrap();
    let client_final = sent.client_final().to_string();
    let without_proof = &client_final[..client_final.rfind(",p=").unwrap()];
    let auth_message = format!(
        "{},{},{}",
        client_first.strip_prefix("n,,").unwrap(),
        c.server_first,
        without_proof
    );
    let hello_frame = handshake_frame(&Handshake::Hello(tether_core::message::Hello {
        version: tether_core::message::PROTOCOL_VERSION,
        mechanisms: tether_core::scram::Mechanisms::ALL,
        max_frame: hs.max_frame,
        client_first: &client_first,
    }));
    let proof_frame = handshake_frame(&Handshake::Proof(Proof {
        client_final: &client_final,
    }));
    (
        LoginRecord {
            username: hs.username.clone(),
            mechanism: c.mechanism,
            hello_frame,
            proof_frame,
            client_first,
            server_first: c.server_first.clone(),
            client_final,
            server_final: String::new(),
            keys: keys.clone(),
            auth_message,
        },
        sent,
    )
}

/// RFC 5802 by hand (SHA-256): ClientProof = ClientKey XOR
/// HMAC(H(ClientKey), AuthMessage), base64.
pub fn scram_proof(client_key: &[u8], auth_message: &str) -> String {
    use sha2::Digest as _;
    let stored = sha2::Sha256::digest(client_key);
    let signature = hmac256(&stored, &[auth_message.as_bytes()]);
    let proof: Vec<u8> = client_key
        .iter()
        .zip(signature)
        .map(|(k, s)| k ^ s)
        .collect();
    b64(&proof)
}

/// The combined nonce of a server-first-message.
pub fn nonce_of(server_first: &str) -> &str {
    &server_first[2..server_first.find(',').unwrap()]
}

/// The postcard bytes of a session message.
pub fn encode(msg: &Message<'_>) -> Vec<u8> {
    let mut buf = vec![0u8; 70_000];
    message::encode(msg, &mut buf).unwrap().to_vec()
}

/// A whole session frame: `seq || payload || HMAC(key, seq || payload)[..16]`.
pub fn session_frame(key: &[u8; 32], seq: u64, payload: &[u8]) -> Vec<u8> {
    let seq = seq.to_be_bytes();
    let tag = hmac256(key, &[&seq, payload]);
    let len = (seq.len() + payload.len() + 16) as u16;
    let mut frame = len.to_be_bytes().to_vec();
    frame.extend_from_slice(&seq);
    frame.extend_from_slice(payload);
    frame.extend_from_slice(&tag[..16]);
    frame
}

impl RawSession {
    /// An authentic frame of `payload` (any bytes) with the next sequence
    /// number; the number advances.
    pub fn seal_payload(&mut self, payload: &[u8]) -> Vec<u8> {
        let f = session_frame(&self.k_c2s, self.seq, payload);
        self.seq += 1;
        f
    }

    pub fn seal(&mut self, msg: &Message<'_>) -> Vec<u8> {
        self.seal_payload(&encode(msg))
    }

    pub async fn send_raw(&mut self, bytes: &[u8]) {
        self.writer.write_all(bytes).await.unwrap();
    }

    pub async fn send(&mut self, msg: &Message<'_>) {
        let f = self.seal(msg);
        self.send_raw(&f).await;
    }

    /// The next message from the server (checked by tether-core's
    /// `Opener`); `None` when it closed.
    pub async fn recv(&mut self) -> Option<Msg> {
        let frame = next_frame(&mut self.reader, Duration::from_secs(10)).await?;
        Some(
            self.opener
                .open(&frame[HEADER_LEN..])
                .expect("the server's frames authenticate")
                .into(),
        )
    }

    pub async fn echo(&mut self, text: &str) -> String {
        let mut buf = [0u8; 1024];
        let args = tether_core::method::encode_args::<Echo>(&text, &mut buf)
            .unwrap()
            .to_vec();
        let id = self.next_id;
        self.next_id += 1;
        self.send(&Message::Call {
            id,
            method: "echo",
            args: &args,
        })
        .await;
        match self.recv().await {
            Some(Msg::Reply { id: rid, result }) if rid == id => {
                tether_core::method::decode_reply::<Echo>(&result)
                    .unwrap()
                    .to_string()
            }
            other => panic!("echo: {other:?}"),
        }
    }

    /// Everything the server sends until it closes: its last message must
    /// be the goodbye (if any), and nothing else may come.
    pub async fn goodbye_then_close(&mut self) -> Option<GoodbyeReason> {
        let mut goodbye = None;
        while let Some(frame) = next_frame(&mut self.reader, Duration::from_secs(10)).await {
            assert!(goodbye.is_none(), "a frame after the goodbye");
            match self.opener.open(&frame[HEADER_LEN..]) {
                Ok(Message::Goodbye { reason }) => goodbye = Some(reason),
                other => panic!("expected only a goodbye, got {other:?}"),
            }
        }
        goodbye
    }
}

// ------------------------------------------------------------------- proxy

/// A TCP proxy to `upstream` on a fixed local port: [`Proxy::cut`] is the
/// service going away (connections reset, nothing listening),
/// [`Proxy::restore`] brings it back on the same port, [`Proxy::hang`] a
/// service that accepts and never answers.
pub struct Proxy {
    pub addr: SocketAddr,
    upstream: String,
    listener: Option<JoinHandle<()>>,
    conns: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
    hang: Arc<std::sync::atomic::AtomicBool>,
}

impl Proxy {
    pub async fn start(upstream: &str) -> Self {
        let mut p = Self {
            addr: "127.0.0.1:0".parse().unwrap(),
            upstream: upstream.to_string(),
            listener: None,
            conns: Arc::default(),
            hang: Arc::default(),
        };
        p.restore().await;
        p
    }

    /// Listens again (same port) and forwards.
    pub async fn restore(&mut self) {
        self.hang.store(false, Ordering::SeqCst);
        if self.listener.is_some() {
            return;
        }
        let listener = bind_retrying(self.addr).await;
        self.addr = listener.local_addr().unwrap();
        let upstream = self.upstream.clone();
        let conns = self.conns.clone();
        let hang = self.hang.clone();
        self.listener = Some(tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    continue;
                };
                let upstream = upstream.clone();
                let hang = hang.load(Ordering::SeqCst);
                let task = tokio::spawn(async move {
                    if hang {
                        // Accept, read, never answer.
                        let mut sink = tokio::io::sink();
                        let _ = tokio::io::copy(&mut client, &mut sink).await;
                        std::future::pending::<()>().await;
                    }
                    if let Ok(mut server) = TcpStream::connect(&upstream).await {
                        let _ = server.set_nodelay(true);
                        let _ = client.set_nodelay(true);
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
                conns.lock().unwrap().push(task.abort_handle());
            }
        }));
    }

    /// Closes every proxied connection; keeps listening.
    pub fn cut_connections(&self) {
        for c in self.conns.lock().unwrap().drain(..) {
            c.abort();
        }
    }

    /// Stops listening and closes every proxied connection.
    pub async fn cut(&mut self) {
        if let Some(l) = self.listener.take() {
            l.abort();
            let _ = l.await;
        }
        self.cut_connections();
        // Let the aborted tasks drop their sockets.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    /// Cuts every connection, then accepts new ones without ever answering.
    pub async fn hang(&mut self) {
        self.cut().await;
        self.restore().await;
        self.hang.store(true, Ordering::SeqCst);
    }
}

async fn bind_retrying(addr: SocketAddr) -> TcpListener {
    let mut last = None;
    for _ in 0..50 {
        match TcpListener::bind(addr).await {
            Ok(l) => return l,
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("cannot bind {addr}: {last:?}")
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(l) = self.listener.take() {
            l.abort();
        }
        self.cut_connections();
    }
}

// ------------------------------------------------------------------ binary

/// The `tether` binary of this build (target/<profile>/tether), built once
/// per test process with the same cargo (a no-op when it is up to date).
pub fn tether_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let exe = std::env::current_exe().unwrap();
        // target/<profile>/deps/<test binary>
        let profile_dir = exe.parent().unwrap().parent().unwrap().to_path_buf();
        let target_dir = profile_dir.parent().unwrap().to_path_buf();
        let bin = profile_dir.join("tether");
        let mut cmd = std::process::Command::new(env!("CARGO"));
        cmd.args(["build", "--quiet", "-p", "tether-server", "--bin", "tether"])
            .arg("--target-dir")
            .arg(&target_dir)
            .current_dir(env!("CARGO_MANIFEST_DIR"));
        if profile_dir.file_name().is_some_and(|n| n == "release") {
            cmd.arg("--release");
        }
        let status = cmd.status();
        assert!(
            bin.exists(),
            "{} missing after `cargo build -p tether-server --bin tether` ({status:?})",
            bin.display()
        );
        bin
    })
    .clone()
}

/// Waits until `f` holds (polling every 10 ms), or panics after `t`.
pub async fn eventually(t: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < t, "{what}: not within {t:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The device's error as a refusal code.
pub fn refused<E: std::fmt::Debug>(r: Result<impl Sized, DeviceError<E>>) -> Refusal {
    match r {
        Err(DeviceError::Refused {
            code,
            retry_after_secs,
        }) => Refusal {
            code,
            retry_after_secs,
        },
        Err(e) => panic!("expected a refusal, got {e:?}"),
        Ok(_) => panic!("expected a refusal, got a session"),
    }
}
