//! The admin HTTP API against a live server with devices connected through
//! the firmware client (`tether_firmware::host`): every endpoint, its
//! authentication and errors, kick, healthz with the database up and down,
//! metrics moving with logins, the Django snippet run by python3, and
//! `tether serve --admin` as a process.

use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use serde_json::{Value, json};
use tether_core::message::{ErrorCode, GoodbyeReason, RefusalCode};
use tether_core::method::Method;
use tether_core::method::builtin::{DeviceInfo, DeviceStatus, Echo};
use tether_core::scram::{CachedKeys, ClientCredentials};
use tether_firmware::{
    BufferStore, Config as DeviceConfig, Handler, Request, Responded, Responder,
};
use tether_server::admin::{AdminError, AdminServer};
use tether_server::{
    Admin, AdminConfig, AdminToken, DefaultRealm, Server, ServerConfig, ServerHandle, ServerSecret,
    Store, StoreConfig, ThrottleConfig,
};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::common::*;

const DB: &str = "default.sqlite3";
const TOKEN: &str = "test-admin-token-0123456789";
const TETHER: &str = env!("CARGO_BIN_EXE_tether");

// ---------------------------------------------------------------- HTTP client

#[derive(Debug)]
struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Resp {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", String::from_utf8_lossy(&self.body)))
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// One HTTP/1.1 request (`Connection: close`), the whole response.
async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    auth: Option<&str>,
    content_type: Option<&str>,
    body: &[u8],
) -> Resp {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    if let Some(token) = auth {
        head.push_str(&format!("Authorization: Bearer {token}\r\n"));
    }
    if let Some(ct) = content_type {
        head.push_str(&format!("Content-Type: {ct}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(body).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut raw))
        .await
        .expect("response in time")
        .unwrap();
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a complete head");
    let head = String::from_utf8(raw[..split].to_vec()).unwrap();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
        .collect();
    let mut body = raw[split + 4..].to_vec();
    let chunked = headers
        .iter()
        .any(|(n, v)| n.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    if chunked {
        let mut out = Vec::new();
        let mut rest = &body[..];
        loop {
            let eol = rest.windows(2).position(|w| w == b"\r\n").unwrap();
            let size = usize::from_str_radix(std::str::from_utf8(&rest[..eol]).unwrap().trim(), 16)
                .unwrap();
            if size == 0 {
                break;
            }
            out.extend_from_slice(&rest[eol + 2..eol + 2 + size]);
            rest = &rest[eol + 2 + size + 2..];
        }
        body = out;
    }
    Resp {
        status,
        headers,
        body,
    }
}

async fn get(addr: SocketAddr, path: &str) -> Resp {
    http(addr, "GET", path, Some(TOKEN), None, b"").await
}

async fn call_json(addr: SocketAddr, path: &str, args: &Value) -> Resp {
    let body = serde_json::to_vec(args).unwrap();
    http(
        addr,
        "POST",
        path,
        Some(TOKEN),
        Some("application/json"),
        &body,
    )
    .await
}

async fn call_raw(addr: SocketAddr, path: &str, args: &[u8]) -> Resp {
    let ct = Some("application/octet-stream");
    http(addr, "POST", path, Some(TOKEN), ct, args).await
}

// ---------------------------------------------------------------- server

struct Running {
    addr: SocketAddr,
    admin: SocketAddr,
    handle: ServerHandle,
    store: Arc<Store>,
}

async fn start_admin(store: StoreConfig, config: ServerConfig, admin: AdminConfig) -> Running {
    let store = Arc::new(Store::open(store).unwrap());
    let server = Server::bind(
        "127.0.0.1:0",
        config,
        store.clone(),
        DefaultRealm::new(),
        ServerSecret::from_value("test secret, at least 16 bytes").unwrap(),
    )
    .await
    .unwrap();
    let admin: AdminServer = Admin::new(&server, admin)
        .bind("127.0.0.1:0")
        .await
        .unwrap();
    let (addr, admin_addr, handle) = (server.local_addr(), admin.local_addr(), server.handle());
    let stop = handle.clone();
    tokio::spawn(admin.run(async move { stop.shutting_down().await }));
    tokio::spawn(server.run());
    Running {
        addr,
        admin: admin_addr,
        handle,
        store,
    }
}

fn with_token() -> AdminConfig {
    AdminConfig {
        token: Some(AdminToken::new(TOKEN).unwrap()),
        ..AdminConfig::default()
    }
}

async fn start_default(db: &Db) -> Running {
    start_admin(StoreConfig::new(db.url()), test_config(), with_token()).await
}

// ---------------------------------------------------------------- device

/// `sleep(ms) -> ms`: the device answers after `ms` milliseconds.
struct Sleep;
impl Method for Sleep {
    const NAME: &'static str = "sleep";
    type Args<'a> = u64;
    type Reply<'a> = u64;
}
impl tether_core::method::ToDevice for Sleep {}

/// The test device: `device_info` (its firmware name), `echo`, `fail`
/// (FAILED "sensor on fire"), `sleep`, `reverse` (raw bytes reversed).
struct TestDevice {
    firmware: &'static str,
}

impl Handler for TestDevice {
    async fn on_call(&mut self, req: Request<'_>, reply: Responder<'_>) -> Responded {
        if req.is::<DeviceInfo>() {
            reply.ok::<DeviceInfo>(&DeviceStatus {
                firmware: self.firmware,
                uptime_secs: 7,
            })
        } else if req.is::<Echo>() {
            match req.args::<Echo>() {
                Ok(text) => reply.ok::<Echo>(&text),
                Err(_) => reply.bad_arguments(),
            }
        } else if req.is::<Sleep>() {
            let ms = req.args::<Sleep>().unwrap_or(0);
            tokio::time::sleep(Duration::from_millis(ms)).await;
            reply.ok::<Sleep>(&ms)
        } else if req.method() == "fail" {
            reply.error(ErrorCode::FAILED, "sensor on fire")
        } else if req.method() == "reverse" {
            let mut bytes = req.raw_args().to_vec();
            bytes.reverse();
            reply.ok_raw(&bytes)
        } else {
            reply.unknown_method()
        }
    }
}

/// Alice's keys (PBKDF2 once per process).
fn keys(username: &str) -> CachedKeys {
    static KEYS: OnceLock<std::sync::Mutex<Vec<(String, CachedKeys)>>> = OnceLock::new();
    let cache = KEYS.get_or_init(Default::default);
    if let Some((_, k)) = cache.lock().unwrap().iter().find(|(u, _)| u == username) {
        return k.clone();
    }
    let hash = user(DB, username)["password_hash"].as_str().unwrap();
    let parsed = tether_core::django::parse(hash).unwrap();
    let k = CachedKeys::derive(
        parsed.mechanism,
        password(DB, username),
        parsed.salt.as_bytes(),
        parsed.iterations,
    )
    .unwrap();
    cache
        .lock()
        .unwrap()
        .push((username.to_string(), k.clone()));
    k
}

/// A device logged in with the firmware client, served on its own thread.
struct Device {
    session_id: u64,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<String>>,
}

impl Device {
    fn start(addr: SocketAddr, username: &str, firmware: &'static str) -> Self {
        let keys = keys(username);
        let username = username.to_string();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let mut store: BufferStore<2048, 2048> = BufferStore::new();
                let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::from_rng(&mut rand::rng());
                let login = tether_firmware::host::connect(
                    addr,
                    store.buffers(),
                    &username,
                    ClientCredentials::Keys(&keys),
                    &mut rng,
                    &DeviceConfig::default(),
                )
                .await;
                let mut session = match login {
                    Ok(login) => login.session,
                    Err(e) => {
                        let _ = ready_tx.send(Err(format!("{e:?}")));
                        return format!("login failed: {e:?}");
                    }
                };
                let _ = ready_tx.send(Ok(session.session_id()));
                let mut handler = TestDevice { firmware };
                match session.serve_until(&mut handler, stop_rx).await {
                    Ok(_) => {
                        let _ = session.close().await;
                        "stopped".to_string()
                    }
                    Err(e) => format!("{e:?}"),
                }
            })
        });
        let session_id = ready_rx
            .recv_timeout(Duration::from_secs(30))
            .expect("device logs in")
            .expect("device logs in");
        Self {
            session_id,
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }

    /// Waits for the device's session to end; how it ended.
    async fn ended(mut self) -> String {
        let thread = self.thread.take().unwrap();
        tokio::task::spawn_blocking(move || thread.join().unwrap())
            .await
            .unwrap()
    }
}

impl Drop for Device {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

async fn wait_sessions(admin: SocketAddr, n: usize) -> Value {
    for _ in 0..200 {
        let r = get(admin, "/sessions").await;
        assert_eq!(r.status, 200);
        let v = r.json();
        if v["sessions"].as_array().unwrap().len() == n {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("never {n} sessions");
}

// ---------------------------------------------------------------- tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_are_listed_and_calls_reach_the_device() {
    let db = Db::copy(DB);
    let s = start_default(&db).await;
    let empty = get(s.admin, "/sessions").await;
    assert_eq!(empty.status, 200);
    assert_eq!(empty.json(), json!({ "sessions": [] }));
    assert!(
        empty
            .header("content-type")
            .unwrap()
            .starts_with("application/json")
    );

    let device = Device::start(s.addr, "alice", "test-firmware 1.0");
    let listed = wait_sessions(s.admin, 1).await;
    let entry = &listed["sessions"][0];
    assert_eq!(entry["id"], device.session_id);
    assert_eq!(entry["username"], "alice");
    assert_eq!(entry["user_id"], 1);
    assert_eq!(entry["mechanism"], "SCRAM-SHA-256");
    assert!(entry["peer"].as_str().unwrap().starts_with("127.0.0.1:"));
    assert!(entry["connected_since"].as_str().unwrap().ends_with('Z'));
    assert!(entry["connected_since_unix_ms"].as_u64().unwrap() > 1_700_000_000_000);
    assert_eq!(entry["calls_out"], 0);

    // A built-in typed method, JSON in and out: device_info as the device serves it.
    let r = call_json(s.admin, "/sessions/alice/call/device_info", &Value::Null).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.json(),
        json!({
            "session_id": device.session_id,
            "method": "device_info",
            "reply": { "firmware": "test-firmware 1.0", "uptime_secs": 7 },
        })
    );
    // An empty body is `null` for methods without arguments.
    let r = http(
        s.admin,
        "POST",
        "/sessions/alice/call/device_info",
        Some(TOKEN),
        Some("application/json; charset=utf-8"),
        b"",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    // Strings with escapes and non-ASCII survive the JSON -> postcard -> JSON trip.
    let text = "h\u{e9}llo \"device\"\n";
    let r = call_json(s.admin, "/sessions/alice/call/echo", &json!(text)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["reply"], text);

    // Raw postcard bytes in and out, for any method.
    let r = call_raw(s.admin, "/sessions/alice/call/reverse", &[1, 2, 3, 250]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.body, vec![250, 3, 2, 1]);
    assert_eq!(r.header("content-type"), Some("application/octet-stream"));
    assert_eq!(
        r.header("x-tether-session-id"),
        Some(device.session_id.to_string().as_str())
    );
    let mut buf = [0u8; 64];
    let args = tether_core::method::encode_args::<Echo>(&"raw", &mut buf).unwrap();
    let r = call_raw(s.admin, "/sessions/alice/call/echo", args).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        tether_core::method::decode_reply::<Echo>(&r.body).unwrap(),
        "raw"
    );

    // The counters of the session moved.
    let listed = get(s.admin, "/sessions?username=alice").await.json();
    assert_eq!(listed["sessions"][0]["calls_out"], 5);
    assert_eq!(listed["sessions"][0]["calls_in"], 0);
    let other = get(s.admin, "/sessions?username=bob").await.json();
    assert_eq!(other, json!({ "sessions": [] }));

    // A username that needs escaping in the path.
    let r = call_json(
        s.admin,
        "/sessions/o%2Cdd%3Dname/call/device_info",
        &Value::Null,
    )
    .await;
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["message"], "o,dd=name is not connected");

    drop(device);
    s.handle.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn call_errors_map_to_statuses() {
    let db = Db::copy(DB);
    let s = start_default(&db).await;
    let device = Device::start(s.addr, "alice", "fw");
    wait_sessions(s.admin, 1).await;

    // 404: not connected (JSON or raw alike).
    let r = call_json(s.admin, "/sessions/bob/call/device_info", &Value::Null).await;
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["error"], "not_connected");
    assert_eq!(
        call_raw(s.admin, "/sessions/nobody/call/x", b"")
            .await
            .status,
        404
    );

    // 502: the device's remote error, with its code and message.
    let r = call_raw(s.admin, "/sessions/alice/call/fail", b"").await;
    assert_eq!(r.status, 502);
    let body = r.json();
    assert_eq!(body["error"], "remote_error");
    assert_eq!(body["code"], ErrorCode::FAILED.0);
    assert_eq!(body["code_name"], "failed");
    assert_eq!(body["message"], "sensor on fire");
    let r = call_raw(s.admin, "/sessions/alice/call/no_such_method", b"").await;
    assert_eq!(r.status, 502);
    assert_eq!(r.json()["code_name"], "unknown_method");
    // Arguments the device cannot decode.
    let r = call_raw(s.admin, "/sessions/alice/call/echo", &[200]).await;
    assert_eq!(r.status, 502);
    assert_eq!(r.json()["code_name"], "bad_arguments");

    // 504: the device takes longer than the timeout...
    let mut buf = [0u8; 16];
    let args = tether_core::method::encode_args::<Sleep>(&1500, &mut buf).unwrap();
    let started = std::time::Instant::now();
    let r = call_raw(s.admin, "/sessions/alice/call/sleep?timeout=0.2", args).await;
    assert_eq!(r.status, 504, "{}", r.text());
    assert_eq!(r.json()["error"], "timeout");
    assert!(started.elapsed() < Duration::from_millis(1400));
    // ...and the session goes on: its late answer is dropped quietly.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let r = call_json(s.admin, "/sessions/alice/call/echo", &json!("still here")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["reply"], "still here");

    // 4xx: requests that cannot become a call.
    let r = call_json(s.admin, "/sessions/alice/call/sleep", &json!(5)).await;
    assert_eq!(r.status, 415);
    assert!(
        r.json()["message"]
            .as_str()
            .unwrap()
            .contains("device_info")
    );
    let r = http(
        s.admin,
        "POST",
        "/sessions/alice/call/echo",
        Some(TOKEN),
        Some("application/json"),
        b"{not json",
    )
    .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"], "bad_json");
    let r = call_json(s.admin, "/sessions/alice/call/echo", &json!({ "a": 1 })).await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"], "bad_arguments");
    let r = call_raw(s.admin, "/sessions/alice/call/echo?timeout=-1", b"").await;
    assert_eq!(r.status, 400);
    let big = vec![0u8; 40_000];
    let r = call_raw(s.admin, "/sessions/alice/call/echo", &big).await;
    assert_eq!(r.status, 413, "{}", r.text());
    let r = get(s.admin, "/no/such/endpoint").await;
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["error"], "not_found");

    drop(device);
    s.handle.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_endpoint_needs_the_token() {
    let db = Db::copy(DB);
    let s = start_default(&db).await;
    let endpoints = [
        ("GET", "/sessions"),
        ("GET", "/healthz"),
        ("GET", "/metrics"),
        ("POST", "/sessions/alice/call/device_info"),
        ("DELETE", "/sessions/alice"),
        ("GET", "/no/such/endpoint"),
    ];
    for (method, path) in endpoints {
        for auth in [None, Some("wrong-token-0123456789"), Some("")] {
            let r = http(s.admin, method, path, auth, None, b"").await;
            assert_eq!(r.status, 401, "{method} {path} with {auth:?}");
            assert_eq!(r.json()["error"], "unauthorized");
            assert_eq!(
                r.header("www-authenticate"),
                Some("Bearer realm=\"tether\"")
            );
        }
        // Another scheme, or the token with a suffix, is no better.
        let mut raw = tokio::net::TcpStream::connect(s.admin).await.unwrap();
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 0\r\n\
             Authorization: Basic {TOKEN}\r\n\r\n"
        );
        raw.write_all(req.as_bytes()).await.unwrap();
        let mut out = String::new();
        raw.read_to_string(&mut out).await.unwrap();
        assert!(out.starts_with("HTTP/1.1 401"), "{out}");
        let suffixed = format!("{TOKEN}x");
        let r = http(s.admin, method, path, Some(&suffixed), None, b"").await;
        assert_eq!(r.status, 401);
    }
    // Liveness needs no token, and tells nothing but that.
    for auth in [None, Some("wrong-token-0123456789")] {
        let r = http(s.admin, "GET", "/livez", auth, None, b"").await;
        assert_eq!(r.status, 200);
        assert_eq!(r.json(), serde_json::json!({"status": "alive"}));
    }
    // With the token: the endpoints answer (the device is not connected).
    assert_eq!(get(s.admin, "/sessions").await.status, 200);
    assert_eq!(get(s.admin, "/healthz").await.status, 200);
    assert_eq!(get(s.admin, "/metrics").await.status, 200);
    // The OpenAPI document: JSON, every route of the router in it.
    let doc = get(s.admin, "/openapi.json").await;
    assert_eq!(doc.status, 200);
    let doc = doc.json();
    assert_eq!(doc["openapi"], "3.0.3");
    for path in [
        "/livez",
        "/healthz",
        "/metrics",
        "/openapi.json",
        "/sessions",
        "/sessions/{username}",
        "/sessions/{username}/call/{method}",
        "/revoke",
    ] {
        assert!(doc["paths"][path].is_object(), "{path}");
    }
    let r = http(s.admin, "DELETE", "/sessions/alice", Some(TOKEN), None, b"").await;
    assert_eq!(r.status, 404);
    // The scheme is case-insensitive (RFC 9110).
    let mut raw = tokio::net::TcpStream::connect(s.admin).await.unwrap();
    let req = format!(
        "GET /sessions HTTP/1.1\r\nHost: x\r\nConnection: close\r\nauthorization: bearer {TOKEN}\r\n\r\n"
    );
    raw.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    raw.read_to_string(&mut out).await.unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    s.handle.shutdown();
}

#[tokio::test]
async fn non_loopback_without_a_token_is_refused_at_startup() {
    let db = Db::copy(DB);
    let store = Arc::new(Store::open(StoreConfig::new(db.url())).unwrap());
    let server = Server::bind(
        "127.0.0.1:0",
        test_config(),
        store,
        DefaultRealm::new(),
        ServerSecret::random(),
    )
    .await
    .unwrap();
    for addr in ["0.0.0.0:0", "[::]:0"] {
        let e = Admin::new(&server, AdminConfig::default())
            .bind(addr)
            .await
            .unwrap_err();
        assert!(matches!(e, AdminError::NotLoopback(_)), "{e}");
        assert!(e.to_string().contains("TETHER_ADMIN_TOKEN"), "{e}");
    }
    // Loopback without a token is served, with no authentication.
    let admin = Admin::new(&server, AdminConfig::default())
        .bind("127.0.0.1:0")
        .await
        .unwrap();
    let addr = admin.local_addr();
    let handle = server.handle();
    let stop = handle.clone();
    let task = tokio::spawn(admin.run(async move { stop.shutting_down().await }));
    let r = http(addr, "GET", "/sessions", None, None, b"").await;
    assert_eq!(r.status, 200);
    handle.shutdown();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("the admin API stops with the server")
        .unwrap();

    // The command line refuses before serving anything.
    let dir = tempfile::tempdir().unwrap();
    for (token, expected) in [
        (
            None,
            "refusing to serve the admin API on 0.0.0.0:0 without a token",
        ),
        (Some("short"), "too short"),
    ] {
        let mut cmd = Command::new(TETHER);
        cmd.args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--database",
            &db.url(),
            "--admin",
            "0.0.0.0:0",
        ])
        .current_dir(dir.path())
        .env_remove("TETHER_ADMIN_TOKEN")
        .env_remove("RUST_LOG");
        if let Some(t) = token {
            cmd.env("TETHER_ADMIN_TOKEN", t);
        }
        let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
            .await
            .unwrap();
        assert_eq!(out.status.code(), Some(1));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(expected), "{stderr}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kick_ends_sessions_and_several_sessions_are_addressed_by_id() {
    let db = Db::copy(DB);
    let s = start_default(&db).await;
    let old = Device::start(s.addr, "alice", "old device");
    let new = Device::start(s.addr, "alice", "new device");
    let bob = Device::start(s.addr, "bob", "bob's device");
    assert!(new.session_id > old.session_id);
    wait_sessions(s.admin, 3).await;

    // Calls go to the newest session, or to the one asked for.
    let r = call_json(s.admin, "/sessions/alice/call/device_info", &Value::Null).await;
    assert_eq!(r.json()["reply"]["firmware"], "new device");
    assert_eq!(r.json()["session_id"], new.session_id);
    let path = format!(
        "/sessions/alice/call/device_info?session={}",
        old.session_id
    );
    let r = call_json(s.admin, &path, &Value::Null).await;
    assert_eq!(r.json()["reply"]["firmware"], "old device");
    let path = format!(
        "/sessions/alice/call/device_info?session={}",
        bob.session_id
    );
    assert_eq!(call_json(s.admin, &path, &Value::Null).await.status, 404);

    // DELETE ?session=ID kicks that one; the device hears Goodbye { Kicked }.
    let path = format!("/sessions/alice?session={}", old.session_id);
    let r = http(s.admin, "DELETE", &path, Some(TOKEN), None, b"").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json(), json!({ "kicked": [old.session_id] }));
    assert_eq!(old.ended().await, "Closed(Kicked)");
    let listed = get(s.admin, "/sessions").await.json();
    let ids: Vec<u64> = listed["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_u64().unwrap())
        .collect();
    assert_eq!(ids, vec![new.session_id, bob.session_id]);

    // DELETE without ?session kicks every session of the user, no one else's.
    let r = http(s.admin, "DELETE", "/sessions/alice", Some(TOKEN), None, b"").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json(), json!({ "kicked": [new.session_id] }));
    assert_eq!(new.ended().await, "Closed(Kicked)");
    let r = http(s.admin, "DELETE", "/sessions/alice", Some(TOKEN), None, b"").await;
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["error"], "not_connected");
    let r = call_json(s.admin, "/sessions/alice/call/device_info", &Value::Null).await;
    assert_eq!(r.status, 404);
    let listed = wait_sessions(s.admin, 1).await;
    assert_eq!(listed["sessions"][0]["username"], "bob");
    let kicked = "tether_session_ends_total{reason=\"kicked\"}";
    let metrics = scrape_until(s.admin, |t| metric(t, kicked) == 2.0).await;
    assert_eq!(metric(&metrics, kicked), 2.0);
    drop(bob);
    s.handle.shutdown();
}

#[tokio::test]
async fn healthz_follows_the_database() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db.sqlite3");
    let mut store = StoreConfig::new(format!("sqlite://{}", path.display()));
    store.lookup_timeout = Duration::from_millis(500);
    let s = start_admin(store, test_config(), with_token()).await;
    // Down: the file is missing.
    let r = get(s.admin, "/healthz").await;
    assert_eq!(r.status, 503);
    let body = r.json();
    assert_eq!(body["status"], "unavailable");
    assert!(!body["database"].as_str().unwrap().is_empty());
    // Up.
    std::fs::copy(fixtures_dir().join(DB), &path).unwrap();
    let r = get(s.admin, "/healthz").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.json(),
        json!({ "status": "ok", "database": "ok", "sessions": 0 })
    );
    // Healthz pings are not login lookups.
    let metrics = get(s.admin, "/metrics").await.text();
    assert_eq!(
        metric(&metrics, "tether_db_lookup_duration_seconds_count"),
        0.0
    );
    s.store.close().await;
    s.handle.shutdown();
}

/// Scrapes until `done` holds (the server records a refused login after
/// the client has read the refusal), or gives up after 5 s.
async fn scrape_until(admin: SocketAddr, done: impl Fn(&str) -> bool) -> String {
    let mut text = String::new();
    for _ in 0..250 {
        text = get(admin, "/metrics").await.text();
        if done(&text) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    text
}

/// The value of one series in a scrape.
fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no {series} in\n{text}"))
        .trim()
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_move_as_logins_succeed_and_fail() {
    let db = Db::copy(DB);
    let config = ServerConfig {
        throttle: ThrottleConfig {
            user_free_failures: 2,
            refill: Duration::from_secs(60),
            ..ThrottleConfig::default()
        },
        ..test_config()
    };
    let s = start_admin(StoreConfig::new(db.url()), config, with_token()).await;
    let before = get(s.admin, "/metrics").await;
    assert_eq!(before.status, 200);
    assert_eq!(
        before.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    let before = before.text();
    let series = [
        "tether_logins_total{outcome=\"success\"}",
        "tether_logins_total{outcome=\"refused\"}",
        "tether_login_refusals_total{code=\"unauthorized\"}",
        "tether_login_refusals_total{code=\"throttled\"}",
        "tether_login_refusals_total{code=\"protocol\"}",
        "tether_throttle_blocks_total{scope=\"user\"}",
        "tether_throttled_users",
        "tether_throttled_addresses",
        "tether_sessions_active",
        "tether_handshakes_in_progress",
        "tether_handshake_duration_seconds_count{outcome=\"success\"}",
        "tether_handshake_duration_seconds_count{outcome=\"refused\"}",
        "tether_db_lookup_duration_seconds_count",
        "tether_db_lookup_errors_total{kind=\"unavailable\"}",
        "tether_calls_total{direction=\"to_device\",outcome=\"ok\"}",
        "tether_calls_total{direction=\"to_device\",outcome=\"timeout\"}",
        "tether_call_duration_seconds_count{direction=\"to_device\"}",
        "tether_calls_total{direction=\"from_device\",outcome=\"ok\"}",
        "tether_frames_rejected_total{phase=\"handshake\",reason=\"undecodable\"}",
        "tether_frames_rejected_total{phase=\"session\",reason=\"bad_tag\"}",
    ];
    for name in series {
        assert_eq!(metric(&before, name), 0.0, "{name}");
    }

    // A device logs in and is called; it calls the server once.
    let device = Device::start(s.addr, "alice", "fw");
    wait_sessions(s.admin, 1).await;
    let r = call_json(s.admin, "/sessions/alice/call/device_info", &Value::Null).await;
    assert_eq!(r.status, 200);
    let mut live = login(s.addr, "bob", password(DB, "bob")).await.unwrap();
    assert_eq!(live.echo("hi").await, "hi");
    // Bob's session then breaks a tag.
    let mut frame = live.seal(&tether_core::message::Message::Ping { nonce: 1 });
    let last = frame.len() - 1;
    frame[last] ^= 1;
    live.send_raw(&frame).await;
    assert_eq!(live.expect_close().await, Some(GoodbyeReason::BadTag));
    // Wrong passwords for eve: two are free, the second empties her
    // account's bucket, the third is throttled before the database is read.
    for expected in [
        RefusalCode::Unauthorized,
        RefusalCode::Unauthorized,
        RefusalCode::Throttled,
    ] {
        let e = login(s.addr, "eve", "not eve's password")
            .await
            .unwrap_err();
        assert_eq!(e.code(), Some(expected));
    }
    // An unknown user is refused like a wrong password.
    let e = login(s.addr, "nobody", "whatever").await.unwrap_err();
    assert_eq!(e.code(), Some(RefusalCode::Unauthorized));
    // A hello that does not decode.
    let (mut r, mut w) = connect(s.addr).await;
    send_raw_frame(&mut w, &[0xff, 0xff, 0xff]).await;
    match read_handshake(&mut r).await {
        Some(OwnedHandshake::Refused(refusal)) => assert_eq!(refusal.code, RefusalCode::Protocol),
        other => panic!("{other:?}"),
    }

    let after = scrape_until(s.admin, |t| {
        metric(t, "tether_logins_total{outcome=\"refused\"}") >= 5.0
            && metric(t, "tether_sessions_active") == 1.0
    })
    .await;
    let delta = |name: &str| metric(&after, name) - metric(&before, name);
    assert_eq!(delta("tether_logins_total{outcome=\"success\"}"), 2.0);
    assert_eq!(delta("tether_logins_total{outcome=\"refused\"}"), 5.0);
    assert_eq!(
        delta("tether_login_refusals_total{code=\"unauthorized\"}"),
        3.0
    );
    assert_eq!(
        delta("tether_login_refusals_total{code=\"throttled\"}"),
        1.0
    );
    assert_eq!(delta("tether_login_refusals_total{code=\"protocol\"}"), 1.0);
    assert_eq!(delta("tether_throttle_blocks_total{scope=\"user\"}"), 1.0);
    assert_eq!(metric(&after, "tether_throttled_users"), 1.0);
    assert_eq!(metric(&after, "tether_throttled_addresses"), 0.0);
    assert_eq!(metric(&after, "tether_sessions_active"), 1.0);
    assert_eq!(metric(&after, "tether_handshakes_in_progress"), 0.0);
    assert_eq!(
        delta("tether_handshake_duration_seconds_count{outcome=\"success\"}"),
        2.0
    );
    assert_eq!(
        delta("tether_handshake_duration_seconds_count{outcome=\"refused\"}"),
        5.0
    );
    // alice, bob, eve twice, nobody: the throttled and the undecodable
    // logins never reach the database.
    assert_eq!(delta("tether_db_lookup_duration_seconds_count"), 5.0);
    assert_eq!(
        delta("tether_calls_total{direction=\"to_device\",outcome=\"ok\"}"),
        1.0
    );
    assert_eq!(
        delta("tether_call_duration_seconds_count{direction=\"to_device\"}"),
        1.0
    );
    assert_eq!(
        delta("tether_calls_total{direction=\"from_device\",outcome=\"ok\"}"),
        1.0
    );
    assert_eq!(
        delta("tether_frames_rejected_total{phase=\"handshake\",reason=\"undecodable\"}"),
        1.0
    );
    assert_eq!(
        delta("tether_frames_rejected_total{phase=\"session\",reason=\"bad_tag\"}"),
        1.0
    );
    assert_eq!(
        metric(
            &after,
            "tether_session_ends_total{reason=\"protocol_error\"}"
        ),
        1.0
    );
    drop(device);
    s.handle.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_database_errors() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("missing.sqlite3");
    let mut store = StoreConfig::new(format!("sqlite://{}", path.display()));
    store.lookup_timeout = Duration::from_millis(300);
    let s = start_admin(store, test_config(), with_token()).await;
    let e = login(s.addr, "alice", "x").await.unwrap_err();
    assert_eq!(e.code(), Some(RefusalCode::Unavailable));
    let text = scrape_until(s.admin, |t| {
        metric(t, "tether_login_refusals_total{code=\"unavailable\"}") == 1.0
    })
    .await;
    assert_eq!(
        metric(&text, "tether_db_lookup_errors_total{kind=\"unavailable\"}"),
        1.0
    );
    assert_eq!(
        metric(&text, "tether_login_refusals_total{code=\"unavailable\"}"),
        1.0
    );
    assert_eq!(
        metric(&text, "tether_db_lookup_duration_seconds_count"),
        1.0
    );
    s.handle.shutdown();
}

// ---------------------------------------------------------------- Python

fn snippet_path() -> PathBuf {
    repo_root().join("std-server/examples/django_call_device.py")
}

fn python(admin: SocketAddr, args: &[&str]) -> std::process::Output {
    Command::new("python3")
        .args(args)
        .env("TETHER_ADMIN_URL", format!("http://{admin}"))
        .env("TETHER_ADMIN_TOKEN", TOKEN)
        .env("PYTHONPATH", snippet_path().parent().unwrap())
        .env_remove("DJANGO_SETTINGS_MODULE")
        .stdin(Stdio::null())
        .output()
        .expect("python3 runs (the snippet needs only the standard library)")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_django_snippet_calls_a_device() {
    let db = Db::copy(DB);
    let s = start_default(&db).await;
    let device = Device::start(s.addr, "alice", "snippet-firmware 2.0");
    wait_sessions(s.admin, 1).await;
    let admin = s.admin;
    let script = snippet_path().display().to_string();
    let run = |args: Vec<String>| {
        tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            python(admin, &args)
        })
    };
    let s_ = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();

    // As a script: the typed built-ins, JSON in and out.
    let out = run(s_(&[&script, "alice", "device_info"])).await.unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let reply: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        reply,
        json!({ "firmware": "snippet-firmware 2.0", "uptime_secs": 7 })
    );
    let out = run(s_(&[&script, "alice", "echo", "\"gr\\u00fc\\u00dfe\""]))
        .await
        .unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "\"gr\\u00fc\\u00dfe\""
    );
    let out = run(s_(&[&script, "bob", "device_info"])).await.unwrap();
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains("bob is not connected"));

    // As a module, the way a Django view uses it.
    let code = r#"
import time
import django_call_device as t
assert t.call_device("alice", "device_info")["firmware"] == "snippet-firmware 2.0"
assert t.call_device("alice", "reverse", raw=b"\x01\x02\x03") == b"\x03\x02\x01"
try:
    t.call_device("alice", "fail", raw=b"")
    raise SystemExit("no error")
except t.DeviceError as e:
    assert (e.status, e.code, e.code_name, e.message) == (502, 3, "failed", "sensor on fire"), e
try:
    t.call_device("alice", "sleep", raw=b"\x90\x03", timeout=0.1)  # 400 ms
    raise SystemExit("no timeout")
except t.DeviceTimeout as e:
    assert e.status == 504
time.sleep(0.5)  # the late answer has come and gone
try:
    t.call_device("nobody", "device_info")
    raise SystemExit("connected?")
except t.DeviceNotConnected as e:
    assert e.status == 404
sessions = t.list_sessions("alice")
assert [s["username"] for s in sessions] == ["alice"], sessions
assert t.list_sessions("bob") == []
print("kicked", t.kick("alice"))
"#;
    let out = run(s_(&["-c", code])).await.unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("kicked [{}]", device.session_id)
    );
    assert_eq!(device.ended().await, "Closed(Kicked)");
    s.handle.shutdown();
}

#[test]
fn the_readme_shows_the_snippet_file() {
    let file = std::fs::read_to_string(snippet_path()).unwrap();
    let snippet = file
        .split("# --- snippet start\n")
        .nth(1)
        .and_then(|rest| rest.split("# --- snippet end").next())
        .expect("markers in the snippet file");
    let readme = std::fs::read_to_string(repo_root().join("std-server/README.md")).unwrap();
    assert!(
        readme.contains(&format!("```python\n{snippet}```")),
        "std-server/README.md must show std-server/examples/django_call_device.py's snippet verbatim"
    );
}

// ---------------------------------------------------------------- the binary

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tether_serve_admin_as_a_process() {
    let db = Db::copy(DB);
    let mut child = Command::new(TETHER)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--database",
            &db.url(),
            "--admin",
            "127.0.0.1:0",
        ])
        .current_dir(db.dir.path())
        .env("TETHER_ADMIN_TOKEN", TOKEN)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            let _ = tx.send(line);
        }
    });
    let mut log = Vec::new();
    let (mut addr, mut admin) = (None, None);
    while addr.is_none() || admin.is_none() {
        let line = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("serve logs its addresses");
        if let Some(rest) = line.split("addr=").nth(1) {
            addr = Some(rest.trim().parse::<SocketAddr>().unwrap());
        }
        if let Some(rest) = line.split("url=http://").nth(1) {
            admin = Some(
                rest.trim()
                    .trim_end_matches('/')
                    .parse::<SocketAddr>()
                    .unwrap(),
            );
        }
        log.push(line);
    }
    let (addr, admin) = (addr.unwrap(), admin.unwrap());
    assert_eq!(
        http(admin, "GET", "/healthz", None, None, b"").await.status,
        401
    );
    let r = get(admin, "/healthz").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let device = Device::start(addr, "alice", "process test");
    wait_sessions(admin, 1).await;
    let r = call_json(admin, "/sessions/alice/call/device_info", &Value::Null).await;
    assert_eq!(r.json()["reply"]["firmware"], "process test");
    let metrics = get(admin, "/metrics").await.text();
    assert_eq!(metric(&metrics, "tether_sessions_active"), 1.0);
    drop(device);

    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    assert!(exit.success());
    while let Ok(line) = rx.recv_timeout(Duration::from_secs(2)) {
        log.push(line);
    }
    let log = log.join("\n");
    // Every request logged with its outcome; never the token.
    for expected in [
        "method=GET path=/healthz route=/healthz status=401",
        "method=GET path=/healthz route=/healthz status=200",
        "method=POST path=/sessions/alice/call/device_info route=/sessions/{username}/call/{method} status=200",
        "method=GET path=/metrics route=/metrics status=200",
    ] {
        assert!(log.contains(expected), "missing {expected:?} in\n{log}");
    }
    assert!(log.contains("latency_ms="), "{log}");
    assert!(!log.contains(TOKEN), "{log}");
}

// ---------------------------------------------------------------- limits

/// Reads until the server closes the connection (30 s at most).
async fn until_closed(mut stream: tokio::net::TcpStream) -> String {
    let mut out = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut out)).await;
    assert!(read.is_ok(), "the server kept the connection open");
    String::from_utf8_lossy(&out).into_owned()
}

fn local_metric(store: &Store, series: &str) -> f64 {
    metric(&store.metrics().render(), series)
}

const TIMED_OUT: &str = r#"tether_log_events_total{event="admin_connection_timed_out"}"#;
const SHED: &str = r#"tether_log_events_total{event="admin_connection_shed"}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_a_request_and_an_idle_keep_alive_connection_end_at_the_header_timeout() {
    let db = Db::copy(DB);
    let admin = AdminConfig {
        header_timeout: Duration::from_millis(300),
        ..with_token()
    };
    let s = start_admin(StoreConfig::new(db.url()), test_config(), admin).await;
    // A request line and one header, never the blank line.
    let mut half = tokio::net::TcpStream::connect(s.admin).await.unwrap();
    half.write_all(b"GET /healthz HTTP/1.1\r\nHost: tether\r\n")
        .await
        .unwrap();
    // A whole request on a keep-alive connection, then nothing.
    let mut idle = tokio::net::TcpStream::connect(s.admin).await.unwrap();
    let request =
        format!("GET /healthz HTTP/1.1\r\nHost: tether\r\nAuthorization: Bearer {TOKEN}\r\n\r\n");
    idle.write_all(request.as_bytes()).await.unwrap();
    let (half, idle) = tokio::join!(until_closed(half), until_closed(idle));
    assert!(
        half.is_empty() || half.starts_with("HTTP/1.1 408"),
        "{half:?}"
    );
    assert!(idle.starts_with("HTTP/1.1 200"), "{idle:?}");
    assert!(!idle[4..].contains("HTTP/1.1"), "one response: {idle:?}");
    assert_eq!(local_metric(&s.store, TIMED_OUT), 2.0);
    assert_eq!(local_metric(&s.store, "tether_admin_connections"), 0.0);
    s.handle.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_body_that_stops_arriving_is_answered_408_at_the_idle_timeout() {
    let db = Db::copy(DB);
    let admin = AdminConfig {
        idle_timeout: Duration::from_millis(300),
        ..with_token()
    };
    let s = start_admin(StoreConfig::new(db.url()), test_config(), admin).await;
    let mut stream = tokio::net::TcpStream::connect(s.admin).await.unwrap();
    let head = format!(
        "POST /sessions/alice/call/echo HTTP/1.1\r\nHost: tether\r\nAuthorization: Bearer {TOKEN}\r\n\
         Content-Type: application/json\r\nContent-Length: 100\r\nConnection: close\r\n\r\n\"ten bytes"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let answer = until_closed(stream).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains(r#""error":"body_timeout""#), "{answer}");
    // Too large: 413 before anything is called.
    let big = vec![0u8; tether_server::admin::MAX_BODY + 1];
    let r = call_raw(s.admin, "/sessions/alice/call/echo", &big).await;
    assert_eq!(r.status, 413, "{}", r.text());
    assert_eq!(r.json()["error"], "too_large");
    s.handle.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_every_connection_taken_a_whole_request_takes_the_place_of_the_oldest_waiting() {
    let db = Db::copy(DB);
    let admin = AdminConfig {
        max_connections: 4,
        ..with_token()
    };
    let s = start_admin(StoreConfig::new(db.url()), test_config(), admin).await;
    // Four connections that never finish their request, oldest first.
    let mut held = Vec::new();
    for _ in 0..4 {
        let mut c = tokio::net::TcpStream::connect(s.admin).await.unwrap();
        c.write_all(b"GET /healthz HTTP/1.1\r\n").await.unwrap();
        held.push(c);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for _ in 0..500 {
        if local_metric(&s.store, "tether_admin_connections") == 4.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(local_metric(&s.store, "tether_admin_connections"), 4.0);
    // A real request still gets in; the oldest waiting connection left.
    let r = get(s.admin, "/healthz").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(local_metric(&s.store, SHED), 1.0);
    let oldest = held.remove(0);
    assert_eq!(until_closed(oldest).await, "");
    // Full again (once the /healthz connection has given its place back):
    // another half request is closed at once; those already in stay.
    for _ in 0..500 {
        if local_metric(&s.store, "tether_admin_connections") == 3.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(local_metric(&s.store, "tether_admin_connections"), 3.0);
    let mut refill = tokio::net::TcpStream::connect(s.admin).await.unwrap();
    refill
        .write_all(b"GET /healthz HTTP/1.1\r\n")
        .await
        .unwrap();
    held.push(refill);
    for _ in 0..500 {
        if local_metric(&s.store, "tether_admin_connections") == 4.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(local_metric(&s.store, "tether_admin_connections"), 4.0);
    let mut late = tokio::net::TcpStream::connect(s.admin).await.unwrap();
    late.write_all(b"GET /healthz HTTP/1.1\r\n").await.unwrap();
    assert_eq!(until_closed(late).await, "");
    assert_eq!(local_metric(&s.store, SHED), 2.0);
    for c in &held {
        let mut byte = [0u8; 1];
        assert!(
            matches!(c.try_read(&mut byte), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
            "a connection already in was closed"
        );
    }
    // A flood of 300 such connections: never more than 4 open, and the
    // device port and /healthz go on.
    let flood = tokio::spawn({
        let admin = s.admin;
        async move {
            let mut conns = Vec::new();
            for _ in 0..300 {
                if let Ok(mut c) = tokio::net::TcpStream::connect(admin).await {
                    let _ = c.write_all(b"GET /healthz HTTP/1.1\r\n").await;
                    conns.push(c);
                }
            }
            conns
        }
    });
    let mut most = 0.0f64;
    while !flood.is_finished() {
        most = most.max(local_metric(&s.store, "tether_admin_connections"));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let conns = flood.await.unwrap();
    assert!(most <= 4.0, "{most} admin connections open");
    let device = Device::start(s.addr, "alice", "flooded-1.0");
    let r = get(s.admin, "/healthz").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["sessions"], 1);
    assert!(local_metric(&s.store, "tether_admin_connections") <= 4.0);
    drop((conns, held, device));
    s.handle.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_every_connection_running_a_request_a_new_one_waits_for_a_place() {
    let db = Db::copy(DB);
    let admin = AdminConfig {
        max_connections: 1,
        ..with_token()
    };
    let s = start_admin(StoreConfig::new(db.url()), test_config(), admin).await;
    let device = Device::start(s.addr, "alice", "busy-1.0");
    let slow = tokio::spawn({
        let admin = s.admin;
        async move {
            let mut buf = [0u8; 16];
            let args = tether_core::method::encode_args::<Sleep>(&400, &mut buf).unwrap();
            call_raw(admin, "/sessions/alice/call/sleep", args)
                .await
                .status
        }
    });
    // The call's connection is open (and its request, sent in one write,
    // read) before the second one connects.
    for _ in 0..500 {
        if local_metric(&s.store, "tether_admin_connections") == 1.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    // Served once the call's connection gave its place back: the scrape
    // already counts the call.
    let r = get(s.admin, "/metrics").await;
    assert_eq!(r.status, 200);
    assert_eq!(
        metric(
            &r.text(),
            r#"tether_calls_total{direction="to_device",outcome="ok"}"#
        ),
        1.0,
        "/metrics was served while the call ran"
    );
    assert_eq!(slow.await.unwrap(), 200, "the running call was not cut");
    assert_eq!(local_metric(&s.store, SHED), 0.0);
    drop(device);
    s.handle.shutdown();
}
