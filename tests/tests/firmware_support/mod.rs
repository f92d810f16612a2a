//! Shared by the tether-firmware end-to-end tests (firmware_std.rs,
//! embassy_tap.rs): fixtures, the real tether-server, a device mind.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tether_core::method::builtin::{DeviceInfo, DeviceStatus, Echo};
use tether_firmware::{Handler, Request, Responded, Responder};
use tether_server::default_realm::RealmEvent;
use tether_server::store::Permission;
use tether_server::{
    DefaultRealm, Registry, Server, ServerConfig, ServerHandle, ServerSecret, Store, StoreConfig,
    ThrottleConfig,
};

pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .join("fixtures/django")
}

/// The password of `username` in fixtures/django/users.json (`db` is the
/// database file, e.g. `default.sqlite3`). Read, never copied: salts and
/// hashes change on every regeneration.
pub fn password(db: &str, username: &str) -> &'static str {
    static MANIFEST: OnceLock<serde_json::Value> = OnceLock::new();
    let m = MANIFEST.get_or_init(|| {
        let text = std::fs::read_to_string(fixtures().join("users.json")).unwrap();
        serde_json::from_str(&text).unwrap()
    });
    m["databases"][db]["users"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["username"] == username)
        .unwrap_or_else(|| panic!("{username} not in {db}"))["password"]
        .as_str()
        .unwrap_or_else(|| panic!("{username} has no password"))
}

/// A private copy of a fixture database (the server writes `last_login`).
pub struct Db {
    _dir: tempfile::TempDir,
    pub path: PathBuf,
}

impl Db {
    pub fn copy(fixture: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(fixture);
        std::fs::copy(fixtures().join(fixture), &path).unwrap();
        Self { _dir: dir, path }
    }

    pub fn url(&self) -> String {
        format!("sqlite://{}", self.path.display())
    }
}

/// The real tether-server with the binary's realm.
pub struct RealServer {
    pub addr: SocketAddr,
    pub handle: ServerHandle,
    pub registry: Registry,
    pub events: tokio::sync::mpsc::UnboundedReceiver<RealmEvent>,
    pub join: tokio::task::JoinHandle<()>,
    pub store: Arc<Store>,
}

pub async fn start_server(db: &Db, bind: &str, heartbeat: Duration) -> RealServer {
    start_server_with(db, bind, heartbeat, None).await
}

/// [`start_server`] speaking protocol v1 only, as servers did before v2.
pub async fn start_v1_only_server(db: &Db, bind: &str, heartbeat: Duration) -> RealServer {
    start(db, bind, heartbeat, Server::v1_only).await
}

/// [`start_server`] with `noise`, its protocol v2 keys (static keys for
/// NK, and whether v1 is refused, as `tether serve --require-encryption`);
/// without, v2 over NN only (a server's default).
pub async fn start_server_with(
    db: &Db,
    bind: &str,
    heartbeat: Duration,
    noise: Option<tether_core::connection::ServerKeys>,
) -> RealServer {
    start(db, bind, heartbeat, |server| match noise {
        Some(keys) => server.with_noise_keys(keys),
        None => server,
    })
    .await
}

async fn start(
    db: &Db,
    bind: &str,
    heartbeat: Duration,
    setup: impl FnOnce(Server<DefaultRealm>) -> Server<DefaultRealm>,
) -> RealServer {
    let (tx, events) = tokio::sync::mpsc::unbounded_channel();
    let realm = DefaultRealm::new().ask_device_info(true).with_events(tx);
    let registry = realm.registry();
    let mut config = ServerConfig {
        throttle: ThrottleConfig::disabled(),
        ..ServerConfig::default()
    };
    config.session.heartbeat = heartbeat;
    config.session.shutdown_deadline = Duration::from_secs(2);
    let mut store = StoreConfig::new(db.url());
    // Only users Django says may connect (`user.has_perm("devices.connect")`).
    store.require_perm = Some(Permission {
        app_label: "devices".into(),
        codename: "connect".into(),
    });
    let store = Arc::new(Store::open(store).unwrap());
    let server = Server::bind(
        bind,
        config,
        store.clone(),
        realm,
        ServerSecret::from_value("firmware end-to-end test secret").unwrap(),
    )
    .await
    .unwrap();
    let server = setup(server);
    let addr = server.local_addr();
    let handle = server.handle();
    let join = tokio::spawn(server.run());
    RealServer {
        addr,
        handle,
        registry,
        events,
        join,
        store,
    }
}

impl RealServer {
    /// One series of the server's Prometheus metrics, e.g.
    /// `tether_logins_by_protocol_total{version="2"}`; 0 when absent.
    pub fn metric(&self, series: &str) -> f64 {
        let text = self.store.metrics().render();
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
            .unwrap_or(0.0)
    }

    /// The next realm event, within 30 s.
    pub async fn event(&mut self) -> RealmEvent {
        tokio::time::timeout(Duration::from_secs(30), self.events.recv())
            .await
            .expect("no realm event within 30 s")
            .expect("realm gone")
    }
}

/// What the device tells the test.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceEvent {
    Called(String),
    Notified(String, Vec<u8>),
}

/// The device's mind: echo and device_info; reports every call and
/// notification.
pub struct DeviceMind<F: FnMut(DeviceEvent)> {
    pub report: F,
}

impl<F: FnMut(DeviceEvent)> Handler for DeviceMind<F> {
    async fn on_call(&mut self, req: Request<'_>, reply: Responder<'_>) -> Responded {
        (self.report)(DeviceEvent::Called(req.method().to_string()));
        if req.is::<Echo>() {
            match req.args::<Echo>() {
                Ok(text) => reply.ok::<Echo>(&text),
                Err(_) => reply.bad_arguments(),
            }
        } else if req.is::<DeviceInfo>() {
            reply.ok::<DeviceInfo>(&DeviceStatus {
                firmware: "tether-firmware e2e",
                uptime_secs: 3,
            })
        } else {
            reply.unknown_method()
        }
    }

    async fn on_notify(&mut self, method: &str, args: &[u8]) {
        (self.report)(DeviceEvent::Notified(method.to_string(), args.to_vec()));
    }
}

/// Deterministic; a device would use its TRNG.
pub use tether_test_support::TestRng;
