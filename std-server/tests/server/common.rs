//! A test-only client built from tether-core primitives (it can also send
//! broken frames on purpose), fixture handling and a test realm.

#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tether_core::frame::{HEADER_LEN, MIN_MAX_FRAME, encode_message, write_frame};
use tether_core::message::{
    self, ErrorCode, GoodbyeReason, Handshake, Hello, Message, PROTOCOL_VERSION, Proof, Refusal,
    RefusalCode,
};
use tether_core::method::Method;
use tether_core::method::builtin::{DeviceInfo, DeviceStatus, Echo};
use tether_core::scram::{
    CachedKeys, ClientConfig, ClientCredentials, ClientLogin, Mechanism, Mechanisms,
};
use tether_core::session::{Opener, Role, Sealer};
use tether_server::realm::{Avatar, CallResult, IncomingCall, Mind, Realm, SessionInfo, reply};
use tether_server::{
    DefaultRealm, Server, ServerConfig, ServerHandle, ServerSecret, SessionEnd, Store, StoreConfig,
};
use tether_test_support::wire::{FrameReader, ReadError};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

/// Held by the ignored tests that share one PostgreSQL or MariaDB database
/// and change its users (a temporary row, `last_login`), so that a test
/// counting the rows (`Store::census`) never sees another test's row.
pub async fn shared_database() -> tokio::sync::MutexGuard<'static, ()> {
    static LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    LOCK.lock().await
}

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

pub fn fixtures_dir() -> PathBuf {
    repo_root().join("fixtures/django")
}

/// users.json, parsed once.
pub fn manifest() -> &'static serde_json::Value {
    static M: OnceLock<serde_json::Value> = OnceLock::new();
    M.get_or_init(|| {
        let text = std::fs::read_to_string(fixtures_dir().join("users.json")).unwrap();
        serde_json::from_str(&text).unwrap()
    })
}

/// A user entry of a fixture database.
pub fn user(db: &str, username: &str) -> &'static serde_json::Value {
    manifest()["databases"][db]["users"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["username"] == username)
        .unwrap_or_else(|| panic!("{username} not in {db}"))
}

pub fn password(db: &str, username: &str) -> &'static str {
    user(db, username)["password"].as_str().unwrap()
}

/// One series of a store's metrics (`tether_logins_total{outcome="evicted"}`);
/// 0 when absent.
pub fn store_metric(store: &Store, series: &str) -> f64 {
    store
        .metrics()
        .render()
        .lines()
        .find_map(|l| {
            l.strip_prefix(series)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or(0.0)
}

/// The `pbkdf2_*` rows of a fixture database by (mechanism, iterations),
/// from users.json: what `Store::census` must count.
pub fn expected_census(db: &str) -> std::collections::BTreeMap<(Mechanism, u32), u64> {
    let mut counts = std::collections::BTreeMap::new();
    for u in manifest()["databases"][db]["users"].as_array().unwrap() {
        let mechanism = match u["algorithm"].as_str() {
            Some("pbkdf2_sha256" | "scram_sha256") => Mechanism::ScramSha256,
            Some("pbkdf2_sha1") => Mechanism::ScramSha1,
            _ => continue,
        };
        let iterations = u["iterations"].as_u64().unwrap() as u32;
        *counts.entry((mechanism, iterations)).or_default() += 1;
    }
    counts
}

/// A private copy of a fixture database.
pub struct Db {
    pub dir: tempfile::TempDir,
    pub path: PathBuf,
}

impl Db {
    pub fn copy(fixture: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(fixture);
        std::fs::copy(fixtures_dir().join(fixture), &path).unwrap();
        Self { dir, path }
    }

    pub fn url(&self) -> String {
        format!("sqlite://{}", self.path.display())
    }

    /// Runs SQL on the copy with the sqlite3 command line (for test setup
    /// and inspection; the server never runs it).
    pub fn sql(&self, sql: &str) -> String {
        let out = std::process::Command::new("sqlite3")
            .args(["-cmd", ".timeout 5000"])
            .arg(&self.path)
            .arg(sql)
            .output()
            .expect("sqlite3");
        assert!(
            out.status.success(),
            "sqlite3 failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    }
}

/// Test defaults: no throttle unless asked, fast decoys.
pub fn test_config() -> ServerConfig {
    ServerConfig {
        throttle: tether_server::ThrottleConfig::disabled(),
        handshake_timeout: Duration::from_secs(5),
        ..Default::default()
    }
}

pub struct TestServer<R: Realm> {
    pub addr: SocketAddr,
    pub handle: ServerHandle,
    pub join: tokio::task::JoinHandle<()>,
    pub store: Arc<Store>,
    pub realm: R,
}

pub async fn start_with<R: Realm + Clone>(
    store: StoreConfig,
    config: ServerConfig,
    realm: R,
) -> TestServer<R> {
    let store = Arc::new(Store::open(store).unwrap());
    let server = Server::bind(
        "127.0.0.1:0",
        config,
        store.clone(),
        realm.clone(),
        ServerSecret::from_value("test secret, at least 16 bytes").unwrap(),
    )
    .await
    .unwrap();
    let addr = server.local_addr();
    let handle = server.handle();
    let join = tokio::spawn(server.run());
    TestServer {
        addr,
        handle,
        join,
        store,
        realm,
    }
}

pub async fn start(db: &Db) -> TestServer<DefaultRealm> {
    start_configured(db, test_config()).await
}

/// [`start`] with `config`.
pub async fn start_configured(db: &Db, config: ServerConfig) -> TestServer<DefaultRealm> {
    start_with(StoreConfig::new(db.url()), config, DefaultRealm::new()).await
}

/// PBKDF2 results, computed once per process.
fn keys_for(mechanism: Mechanism, password: &str, salt: &[u8], iterations: u32) -> CachedKeys {
    type K = (Mechanism, String, Vec<u8>, u32);
    static CACHE: OnceLock<Mutex<HashMap<K, CachedKeys>>> = OnceLock::new();
    let key = (mechanism, password.to_string(), salt.to_vec(), iterations);
    if let Some(k) = CACHE
        .get_or_init(Default::default)
        .lock()
        .unwrap()
        .get(&key)
    {
        return k.clone();
    }
    let k = CachedKeys::derive(mechanism, password, salt, iterations).unwrap();
    CACHE
        .get_or_init(Default::default)
        .lock()
        .unwrap()
        .insert(key, k.clone());
    k
}

#[derive(Debug)]
pub enum LoginError {
    Refused(Refusal),
    /// The server closed without a refusal.
    Closed,
    Other(String),
}

impl LoginError {
    pub fn code(&self) -> Option<RefusalCode> {
        match self {
            Self::Refused(r) => Some(r.code),
            _ => None,
        }
    }
}

/// The parts of a server-first-message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChallengeInfo {
    pub mechanism: Mechanism,
    pub salt: Vec<u8>,
    pub salt_b64: String,
    pub iterations: u32,
    pub server_first: String,
}

/// A login in progress, step by step.
pub struct Handshaking {
    pub reader: FrameReader<OwnedReadHalf>,
    pub writer: OwnedWriteHalf,
    pub username: String,
    pub nonce: String,
    pub challenge: Option<ChallengeInfo>,
    pub max_frame: u16,
}

pub async fn connect(addr: SocketAddr) -> (FrameReader<OwnedReadHalf>, OwnedWriteHalf) {
    connect_from(None, addr).await
}

/// Connects from `source` (another 127.0.0.x: another address to the
/// server), or from the default address.
pub async fn connect_from(
    source: Option<std::net::IpAddr>,
    addr: SocketAddr,
) -> (FrameReader<OwnedReadHalf>, OwnedWriteHalf) {
    let stream = connect_tcp_from(source, addr).await.unwrap();
    let (r, w) = stream.into_split();
    (FrameReader::new(r, 65535), w)
}

/// A TCP connection from `source` (any 127.x.y.z), or from the default
/// address.
pub async fn connect_tcp_from(
    source: Option<std::net::IpAddr>,
    addr: SocketAddr,
) -> std::io::Result<TcpStream> {
    match source {
        None => TcpStream::connect(addr).await,
        Some(ip) => {
            let socket = tokio::net::TcpSocket::new_v4()?;
            socket.bind(SocketAddr::new(ip, 0))?;
            socket.connect(addr).await
        }
    }
}

pub async fn send_handshake(w: &mut OwnedWriteHalf, msg: &Handshake<'_>) {
    let mut buf = [0u8; 600];
    let frame = encode_message(msg, &mut buf, 512).unwrap();
    w.write_all(frame).await.unwrap();
}

/// Reads a handshake reply; `None` when the server closed.
pub async fn read_handshake(r: &mut FrameReader<OwnedReadHalf>) -> Option<OwnedHandshake> {
    let body = r.next().await.ok()?;
    Some(match message::decode::<Handshake>(body).unwrap() {
        Handshake::Challenge(c) => OwnedHandshake::Challenge(c.mechanism, c.server_first.into()),
        Handshake::Welcome(w) => OwnedHandshake::Welcome {
            server_final: w.server_final.into(),
            session_id: w.session_id,
            max_frame: w.max_frame,
            heartbeat_secs: w.heartbeat_secs,
        },
        Handshake::Refused(r) => OwnedHandshake::Refused(r),
        other => panic!("unexpected {other:?}"),
    })
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OwnedHandshake {
    Challenge(Mechanism, String),
    Welcome {
        server_final: String,
        session_id: u64,
        max_frame: u16,
        heartbeat_secs: u16,
    },
    Refused(Refusal),
}

fn parse_server_first(mechanism: Mechanism, s: &str) -> ChallengeInfo {
    use base64::Engine as _;
    let mut salt_b64 = String::new();
    let mut iterations = 0;
    for part in s.split(',') {
        if let Some(v) = part.strip_prefix("s=") {
            salt_b64 = v.to_string();
        } else if let Some(v) = part.strip_prefix("i=") {
            iterations = v.parse().unwrap();
        }
    }
    ChallengeInfo {
        mechanism,
        salt: base64::engine::general_purpose::STANDARD
            .decode(&salt_b64)
            .unwrap(),
        salt_b64,
        iterations,
        server_first: s.to_string(),
    }
}

impl Handshaking {
    pub async fn hello(addr: SocketAddr, username: &str, mechanisms: Mechanisms) -> Self {
        Self::hello_from(None, addr, username, mechanisms).await
    }

    /// [`hello`](Self::hello) from `source` (see [`connect_from`]).
    pub async fn hello_from(
        source: Option<std::net::IpAddr>,
        addr: SocketAddr,
        username: &str,
        mechanisms: Mechanisms,
    ) -> Self {
        Self::hello_with(source, addr, username, mechanisms, 4096).await
    }

    /// [`hello_from`](Self::hello_from) announcing `max_frame`.
    pub async fn hello_with(
        source: Option<std::net::IpAddr>,
        addr: SocketAddr,
        username: &str,
        mechanisms: Mechanisms,
        max_frame: u16,
    ) -> Self {
        let (reader, mut writer) = connect_from(source, addr).await;
        let login = ClientLogin::<256>::new(
            username,
            ClientCredentials::Password("unused"),
            ClientConfig::default(),
            &mut rand::rng(),
        )
        .unwrap();
        let first = login.client_first().to_string();
        let nonce = first.rsplit("r=").next().unwrap().to_string();
        send_handshake(
            &mut writer,
            &Handshake::Hello(Hello {
                version: PROTOCOL_VERSION,
                mechanisms,
                max_frame,
                client_first: &first,
            }),
        )
        .await;
        Self {
            reader,
            writer,
            username: username.to_string(),
            nonce,
            challenge: None,
            max_frame,
        }
    }

    /// Reads the challenge (or the refusal).
    pub async fn challenge(&mut self) -> Result<ChallengeInfo, LoginError> {
        match read_handshake(&mut self.reader).await {
            Some(OwnedHandshake::Challenge(m, s)) => {
                let info = parse_server_first(m, &s);
                self.challenge = Some(info.clone());
                Ok(info)
            }
            Some(OwnedHandshake::Refused(r)) => Err(LoginError::Refused(r)),
            Some(other) => Err(LoginError::Other(format!("{other:?}"))),
            None => Err(LoginError::Closed),
        }
    }

    /// Proves with a password (PBKDF2 cached per process) and reads the
    /// welcome.
    pub async fn prove(mut self, password: &str) -> Result<Session, LoginError> {
        let c = self.challenge.clone().expect("challenge first");
        let keys = keys_for(c.mechanism, password, &c.salt, c.iterations);
        let login = ClientLogin::<256>::with_nonce(
            &self.username,
            ClientCredentials::Keys(&keys),
            ClientConfig::default(),
            &self.nonce,
        )
        .unwrap();
        let sent = login
            .handle_challenge(c.mechanism, &c.server_first)
            .map_err(|e| LoginError::Other(e.to_string()))?;
        send_handshake(
            &mut self.writer,
            &Handshake::Proof(Proof {
                client_final: sent.client_final(),
            }),
        )
        .await;
        match read_handshake(&mut self.reader).await {
            Some(OwnedHandshake::Welcome {
                server_final,
                session_id,
                max_frame,
                heartbeat_secs,
            }) => {
                let done = sent
                    .handle_server_final(&server_final)
                    .map_err(|e| LoginError::Other(format!("server signature: {e}")))?;
                let (sealer, opener) = done.session.into_halves(Role::Client);
                let mut reader = self.reader;
                reader.set_max(self.max_frame as usize);
                Ok(Session {
                    reader,
                    writer: self.writer,
                    sealer,
                    opener,
                    session_id,
                    server_max: max_frame as usize,
                    heartbeat_secs,
                    next_id: 1,
                })
            }
            Some(OwnedHandshake::Refused(r)) => Err(LoginError::Refused(r)),
            Some(other) => Err(LoginError::Other(format!("{other:?}"))),
            None => Err(LoginError::Closed),
        }
    }
}

/// Logs in with both mechanisms offered.
pub async fn login(
    addr: SocketAddr,
    username: &str,
    password: &str,
) -> Result<Session, LoginError> {
    login_with(addr, username, password, Mechanisms::ALL).await
}

pub async fn login_with(
    addr: SocketAddr,
    username: &str,
    password: &str,
    mechanisms: Mechanisms,
) -> Result<Session, LoginError> {
    let mut hs = Handshaking::hello(addr, username, mechanisms).await;
    hs.challenge().await?;
    hs.prove(password).await
}

pub use tether_test_support::Msg;

/// A logged-in test session.
#[derive(Debug)]
pub struct Session {
    pub reader: FrameReader<OwnedReadHalf>,
    pub writer: OwnedWriteHalf,
    pub sealer: Sealer,
    pub opener: Opener,
    pub session_id: u64,
    pub server_max: usize,
    pub heartbeat_secs: u16,
    pub next_id: u32,
}

impl Session {
    /// Seals a message into a frame (not sent).
    pub fn seal(&mut self, msg: &Message<'_>) -> Vec<u8> {
        let mut buf = vec![0u8; HEADER_LEN + self.server_max];
        self.sealer
            .seal(msg, &mut buf, self.server_max)
            .unwrap()
            .to_vec()
    }

    pub async fn send(&mut self, msg: &Message<'_>) {
        let frame = self.seal(msg);
        self.writer.write_all(&frame).await.unwrap();
    }

    pub async fn send_raw(&mut self, bytes: &[u8]) {
        self.writer.write_all(bytes).await.unwrap();
    }

    /// The next message; `None` when the server closed.
    pub async fn recv(&mut self) -> Option<Msg> {
        let body = match self.reader.next().await {
            Ok(body) => body,
            Err(ReadError::Closed) => return None,
            Err(e) => panic!("read: {e}"),
        };
        Some(
            self.opener
                .open(body)
                .expect("server frame authenticates")
                .into(),
        )
    }

    pub async fn recv_timeout(&mut self, t: Duration) -> Option<Msg> {
        tokio::time::timeout(t, self.recv())
            .await
            .expect("server answered in time")
    }

    /// Sends a call and returns its id.
    pub async fn start_call<M: Method>(&mut self, args: &M::Args<'_>) -> u32 {
        let mut buf = [0u8; 1024];
        let args = tether_core::method::encode_args::<M>(args, &mut buf)
            .unwrap()
            .to_vec();
        let id = self.next_id;
        self.next_id += 1;
        self.send(&Message::Call {
            id,
            method: M::NAME,
            args: &args,
        })
        .await;
        id
    }

    /// Calls and waits for the answer (answering pings and device_info on
    /// the way).
    pub async fn call<M: Method>(
        &mut self,
        args: &M::Args<'_>,
    ) -> Result<Vec<u8>, (ErrorCode, String)> {
        let id = self.start_call::<M>(args).await;
        loop {
            match self.recv_timeout(Duration::from_secs(10)).await {
                Some(Msg::Reply { id: rid, result }) if rid == id => return Ok(result),
                Some(Msg::Error {
                    id: rid,
                    code,
                    message,
                }) if rid == id => {
                    return Err((code, message));
                }
                Some(Msg::Call {
                    id: cid, method, ..
                }) if method == DeviceInfo::NAME => {
                    self.answer_device_info(cid).await;
                }
                Some(other) => panic!("unexpected {other:?}"),
                None => panic!("server closed"),
            }
        }
    }

    pub async fn answer_device_info(&mut self, id: u32) {
        let mut buf = [0u8; 128];
        let status = DeviceStatus {
            firmware: "test-device 1.0",
            uptime_secs: 42,
        };
        let result = tether_core::method::encode_reply::<DeviceInfo>(&status, &mut buf)
            .unwrap()
            .to_vec();
        self.send(&Message::Reply {
            id,
            result: &result,
        })
        .await;
    }

    pub async fn echo(&mut self, text: &str) -> String {
        let bytes = self.call::<Echo>(&text).await.unwrap();
        tether_core::method::decode_reply::<Echo>(&bytes)
            .unwrap()
            .to_string()
    }

    /// Reads until the server closes, returning the goodbye if one came.
    pub async fn expect_close(&mut self) -> Option<GoodbyeReason> {
        let mut goodbye = None;
        loop {
            let next = tokio::time::timeout(Duration::from_secs(10), self.reader.next())
                .await
                .expect("server closes in time");
            match next {
                Ok(body) => {
                    if let Ok(Message::Goodbye { reason }) = self.opener.open(body) {
                        goodbye = Some(reason);
                    }
                }
                Err(_) => return goodbye,
            }
        }
    }
}

/// Writes a raw handshake frame body.
pub async fn send_raw_frame(w: &mut OwnedWriteHalf, body: &[u8]) {
    let mut buf = vec![0u8; body.len() + 2];
    let frame = write_frame(body, &mut buf).unwrap();
    w.write_all(frame).await.unwrap();
}

pub const MAX_HANDSHAKE: usize = MIN_MAX_FRAME as usize;

/// A realm for tests: the built-ins plus `slow` (sleeps the given
/// milliseconds, then answers them) and an optional device_info call on
/// attach; records minds and session ends.
#[derive(Clone, Default)]
pub struct TestRealm {
    pub inner: DefaultRealm,
    pub ask_device_info: bool,
    pub minds: Arc<Mutex<Vec<Mind>>>,
    pub ends: Arc<Mutex<Vec<SessionEnd>>>,
    pub device_info: Arc<Mutex<Vec<String>>>,
    /// `attached` never returns by itself.
    pub hang_in_attached: bool,
    /// "attached ended" and "detached", in the order they happened.
    pub hooks: Arc<Mutex<Vec<&'static str>>>,
    /// Notifications from devices: method and arguments.
    pub notes: Arc<Mutex<Vec<Note>>>,
}

/// A notification a device sent: method and postcard arguments.
pub type Note = (String, Vec<u8>);

/// `slow(ms) -> ms`.
pub struct Slow;
impl Method for Slow {
    const NAME: &'static str = "slow";
    type Args<'a> = u64;
    type Reply<'a> = u64;
}
impl tether_core::method::ToServer for Slow {}

pub struct TestAvatar {
    inner: <DefaultRealm as Realm>::Avatar,
    realm: TestRealm,
    mind: Mind,
}

impl Realm for TestRealm {
    type Avatar = TestAvatar;
    async fn avatar(&self, session: &SessionInfo, mind: Mind) -> Result<TestAvatar, RefusalCode> {
        self.minds.lock().unwrap().push(mind.clone());
        Ok(TestAvatar {
            inner: self.inner.avatar(session, mind.clone()).await?,
            realm: self.clone(),
            mind,
        })
    }
}

impl Avatar for TestAvatar {
    async fn call(&self, call: IncomingCall) -> CallResult {
        if call.method() == "panic" {
            panic!("test handler panics");
        }
        if call.is::<Slow>() {
            let ms = call.args::<Slow>()?;
            tokio::time::sleep(Duration::from_millis(ms)).await;
            return reply::<Slow>(&ms);
        }
        self.inner.call(call).await
    }

    async fn notify(&self, method: String, args: Vec<u8>) {
        self.realm.notes.lock().unwrap().push((method, args));
    }

    async fn attached(&self) {
        struct Ended(Arc<Mutex<Vec<&'static str>>>);
        impl Drop for Ended {
            fn drop(&mut self) {
                self.0.lock().unwrap().push("attached ended");
            }
        }
        let _ended = Ended(self.realm.hooks.clone());
        self.inner.attached().await;
        if self.realm.hang_in_attached {
            std::future::pending::<()>().await;
        }
        if self.realm.ask_device_info {
            let r = self.mind.call::<DeviceInfo>(&()).await;
            let text = match r {
                Ok(reply) => reply.get().firmware.to_string(),
                Err(e) => format!("error: {e}"),
            };
            self.realm.device_info.lock().unwrap().push(text);
        }
    }

    async fn detached(&self, end: SessionEnd) {
        self.realm.hooks.lock().unwrap().push("detached");
        self.realm.ends.lock().unwrap().push(end.clone());
        self.inner.detached(end).await;
    }
}

/// Waits until `f` holds (polling), or panics after `t`.
pub async fn eventually(t: Duration, mut f: impl FnMut() -> bool) {
    let start = std::time::Instant::now();
    while !f() {
        assert!(start.elapsed() < t, "condition not met within {t:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
