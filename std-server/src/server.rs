//! The listener (Twisted's portal): accepts connections, runs each login
//! and session in its own task, enforces the limits, shuts down gracefully.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use tether_server::{DefaultRealm, Server, ServerConfig, ServerSecret, Store, StoreConfig};
//! let store = Arc::new(Store::open(StoreConfig::new("sqlite://db.sqlite3"))?);
//! let server = Server::bind("127.0.0.1:7420", ServerConfig::default(), store,
//!     DefaultRealm::new(), ServerSecret::random()).await?;
//! let handle = server.handle();
//! tokio::spawn(async move { tether_server::server::shutdown_signal().await; handle.shutdown() });
//! server.run().await;
//! # Ok(()) }
//! ```

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream, ToSocketAddrs};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::admission::{self, Admission, Admitted, Limits};
use crate::decoy::DecoyMix;
use crate::default_realm::Registry;
use crate::log_limit::Noisy;
use crate::login::{self, LoginEnd};
use crate::metrics::{LoginOutcome, Metrics};
use crate::per_user;
use crate::realm::Realm;
use crate::secret::ServerSecret;
use crate::session::{self, SessionConfig};
use crate::store::Store;
use crate::stream::Stream;
use crate::throttle::{Throttle, ThrottleConfig};

/// Server limits and timers.
///
/// [`ServerHandle::reload`] changes a running server's settings without
/// dropping a session: the connection and handshake limits
/// (`max_handshakes`, `early_drop_start`, `early_drop_rate`,
/// `max_handshakes_per_address`, `max_pending`), `max_sessions`,
/// `max_sessions_per_user` and its policy, and `throttle` apply to the
/// next connection or login; `handshake_timeout`, `hello_timeout`,
/// `max_frame` and `session` to the connections accepted from then on
/// (a session keeps the settings it started with). `decoy_iterations`,
/// `decoy_census_interval` and `revalidate` need a restart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerConfig {
    /// Longest a login may take from connect to welcome (default 10 s).
    pub handshake_timeout: Duration,
    /// Longest a connection may take to send its hello (default 5 s); then
    /// it is closed without a word, slot or not ([`crate::admission`]).
    pub hello_timeout: Duration,
    /// Logins in progress at once (default 64): OpenSSH's MaxStartups
    /// `full`. When every slot is taken, a newcomer takes the slot of a
    /// connection that has not sent its hello; if none is silent it is told
    /// `busy`.
    pub max_handshakes: usize,
    /// From this many logins in progress on, a new connection costs a
    /// random silent connection its slot, or is closed at once if none is
    /// silent, at random (MaxStartups `start`); `None` (the default): half
    /// of `max_handshakes` (at least 1).
    pub early_drop_start: Option<usize>,
    /// The early drop's probability at `early_drop_start`, in percent,
    /// rising linearly to 100 at `max_handshakes` (MaxStartups `rate`;
    /// default 30).
    pub early_drop_rate: u8,
    /// Logins in progress at once from one address (IPv6: one /64); more
    /// from it are refused `busy`, so that a few addresses cannot hold
    /// every handshake slot. `None` (the default): an eighth of
    /// `max_handshakes` (at least 1); `Some(0)`: no limit but
    /// `max_handshakes`. Raise it for fleets behind one NAT or proxy address.
    pub max_handshakes_per_address: Option<usize>,
    /// Connections without a slot waiting for their hello just to be told
    /// `busy` (at most the per-address limit of them from one address);
    /// beyond this they are closed at once (default 256).
    pub max_pending: usize,
    /// Live sessions at once; more logins are refused `busy` (default 10,000).
    pub max_sessions: usize,
    /// Live sessions of one account at once (default 8; 0: no limit): a
    /// login beyond it is handled by `sessions_per_user_policy`
    /// ([`crate::per_user`]).
    pub max_sessions_per_user: usize,
    /// What a login beyond `max_sessions_per_user` does (default: its
    /// account's oldest session gets `Goodbye { Replaced }`).
    pub sessions_per_user_policy: per_user::Policy,
    /// Largest frame body the server accepts after login (default 16,384;
    /// at least 512).
    pub max_frame: u16,
    /// Iterations of decoy challenges until the rows have been counted, or
    /// when no row is `pbkdf2_*` (default 1,000,000, Django 5.2's default).
    /// Once counted, decoys take their mechanism and iteration count from
    /// the rows' shares ([`crate::decoy`]).
    pub decoy_iterations: u32,
    /// How often the rows' mechanisms and iteration counts are counted
    /// again for decoys (default 1 h; zero: only at start).
    pub decoy_census_interval: Duration,
    /// Session timers and limits.
    pub session: SessionConfig,
    /// Failed-login throttle.
    pub throttle: ThrottleConfig,
    /// How often the users of live sessions are re-read; sessions whose
    /// user may no longer log in end with `Goodbye(Revoked)` (default
    /// 30 s; `None`: never). See [`crate::revalidate`].
    pub revalidate: Option<Duration>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            handshake_timeout: Duration::from_secs(10),
            hello_timeout: Duration::from_secs(5),
            max_handshakes: 64,
            early_drop_start: None,
            early_drop_rate: 30,
            max_handshakes_per_address: None,
            max_pending: 256,
            max_sessions: 10_000,
            max_sessions_per_user: 8,
            sessions_per_user_policy: per_user::Policy::ReplaceOldest,
            max_frame: 16_384,
            decoy_iterations: 1_000_000,
            decoy_census_interval: Duration::from_secs(3600),
            session: SessionConfig::default(),
            throttle: ThrottleConfig::default(),
            revalidate: Some(Duration::from_secs(30)),
        }
    }
}

impl ServerConfig {
    /// The effective [`max_handshakes_per_address`](Self::max_handshakes_per_address).
    pub fn per_address_cap(&self) -> usize {
        match self.max_handshakes_per_address {
            None => (self.max_handshakes / 8).max(1),
            Some(0) => self.max_handshakes.max(1),
            Some(n) => n,
        }
    }

    /// The admission limits these settings make ([`crate::admission`]).
    pub fn admission_limits(&self) -> Limits {
        let full = self.max_handshakes.max(1);
        Limits {
            full,
            start: self.early_drop_start.unwrap_or((full / 2).max(1)).min(full),
            rate: self.early_drop_rate.min(100),
            per_address: self.per_address_cap(),
            pending: self.max_pending,
        }
    }
}

/// What [`ServerHandle::reload`] did: the names of the [`ServerConfig`]
/// fields that changed, by whether they took effect.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reloaded {
    /// Changed, and in effect from now on (for the connections accepted
    /// from now on, where [`ServerConfig`] says so).
    pub applied: Vec<&'static str>,
    /// Changed, but kept at their old value until a restart.
    pub needs_restart: Vec<&'static str>,
}

/// The fields of [`ServerConfig`] that a reload applies, and those it
/// cannot.
fn config_changes(old: &ServerConfig, new: &ServerConfig) -> Reloaded {
    let mut r = Reloaded::default();
    let mut field = |name, changed: bool, live: bool| {
        if changed {
            if live {
                &mut r.applied
            } else {
                &mut r.needs_restart
            }
            .push(name);
        }
    };
    field(
        "handshake_timeout",
        old.handshake_timeout != new.handshake_timeout,
        true,
    );
    field(
        "hello_timeout",
        old.hello_timeout != new.hello_timeout,
        true,
    );
    field(
        "max_handshakes",
        old.max_handshakes != new.max_handshakes,
        true,
    );
    field(
        "early_drop_start",
        old.early_drop_start != new.early_drop_start,
        true,
    );
    field(
        "early_drop_rate",
        old.early_drop_rate != new.early_drop_rate,
        true,
    );
    field(
        "max_handshakes_per_address",
        old.max_handshakes_per_address != new.max_handshakes_per_address,
        true,
    );
    field("max_pending", old.max_pending != new.max_pending, true);
    field("max_sessions", old.max_sessions != new.max_sessions, true);
    field(
        "max_sessions_per_user",
        old.max_sessions_per_user != new.max_sessions_per_user,
        true,
    );
    field(
        "sessions_per_user_policy",
        old.sessions_per_user_policy != new.sessions_per_user_policy,
        true,
    );
    field("max_frame", old.max_frame != new.max_frame, true);
    field("session", old.session != new.session, true);
    field("throttle", old.throttle != new.throttle, true);
    field(
        "decoy_iterations",
        old.decoy_iterations != new.decoy_iterations,
        false,
    );
    field(
        "decoy_census_interval",
        old.decoy_census_interval != new.decoy_census_interval,
        false,
    );
    field("revalidate", old.revalidate != new.revalidate, false);
    r
}

/// The settings a reload changes, shared by the server and its handles.
pub(crate) struct Settings {
    /// The settings in effect (restart-only fields keep their first value).
    config: RwLock<ServerConfig>,
    pub admission: Arc<Admission>,
    pub sessions: Arc<SessionSlots>,
    pub throttle: Arc<Throttle>,
}

impl Settings {
    /// The settings in effect now.
    pub fn config(&self) -> ServerConfig {
        *self.config.read().unwrap_or_else(|p| p.into_inner())
    }

    fn reload(&self, new: ServerConfig) -> Reloaded {
        let mut config = self.config.write().unwrap_or_else(|p| p.into_inner());
        let mut new = new;
        new.max_frame = new.max_frame.max(tether_core::frame::MIN_MAX_FRAME);
        // What needs a restart keeps its value.
        new.decoy_iterations = config.decoy_iterations;
        new.decoy_census_interval = config.decoy_census_interval;
        new.revalidate = config.revalidate;
        let changes = config_changes(&config, &new);
        self.admission.set_limits(new.admission_limits());
        self.sessions.set_limit(new.max_sessions);
        if new.throttle != config.throttle {
            self.throttle.reconfigure(new.throttle);
        }
        *config = new;
        changes
    }
}

/// The live-session places: taken at login (after the throttle), given
/// back when the session ends. The limit may change while sessions hold
/// places: a lower one admits no login until enough have ended.
pub(crate) struct SessionSlots {
    used: AtomicUsize,
    limit: AtomicUsize,
}

/// A live session's place, given back when dropped.
pub(crate) struct SessionSlot(Arc<SessionSlots>);

impl SessionSlots {
    fn new(limit: usize) -> Arc<Self> {
        Arc::new(Self {
            used: AtomicUsize::new(0),
            limit: AtomicUsize::new(limit.max(1)),
        })
    }

    fn set_limit(&self, limit: usize) {
        self.limit.store(limit.max(1), Ordering::Release);
    }

    /// A place, if fewer than the limit are taken.
    pub fn try_take(self: &Arc<Self>) -> Option<SessionSlot> {
        let limit = self.limit.load(Ordering::Acquire);
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < limit).then_some(n + 1)
            })
            .ok()
            .map(|_| SessionSlot(self.clone()))
    }
}

impl Drop for SessionSlot {
    fn drop(&mut self) {
        self.0.used.fetch_sub(1, Ordering::AcqRel);
    }
}

/// State shared by all connections.
pub(crate) struct Shared<R> {
    /// What a reload changes.
    pub settings: Arc<Settings>,
    pub store: Arc<Store>,
    pub throttle: Arc<Throttle>,
    pub metrics: Metrics,
    /// Every live session, whatever the realm.
    pub live: Registry,
    pub secret: ServerSecret,
    /// Protocol v2: the static keys (NK) and whether v1 is refused; none
    /// serves v1 only.
    pub noise: NoiseKeys,
    /// The shares decoys are drawn from (refreshed by [`census`]).
    pub mix: RwLock<Arc<DecoyMix>>,
    pub realm: R,
    pub next_session_id: AtomicU64,
    pub shutdown: CancellationToken,
    pub tracker: TaskTracker,
}

impl<R> Shared<R> {
    /// The settings in effect now.
    pub fn config(&self) -> ServerConfig {
        self.settings.config()
    }

    /// The shares decoys are drawn from now.
    pub fn decoy_mix(&self) -> Arc<DecoyMix> {
        self.mix.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// Counts the rows' mechanisms and iteration counts for decoys, now and
/// every `decoy_census_interval`; keeps the last good count when the
/// database does not answer (and tries again within a minute).
async fn census<R>(shared: Arc<Shared<R>>, first: tokio::sync::oneshot::Sender<()>) {
    let mut first = Some(first);
    let mut last: Option<DecoyMix> = None;
    loop {
        let timeout = CENSUS_TIMEOUT.max(shared.store.config().lookup_timeout);
        let retry = match shared.store.census(timeout).await {
            Ok(counts) => {
                let mix = DecoyMix::from_counts(&counts)
                    .unwrap_or_else(|| DecoyMix::only(shared.config().decoy_iterations));
                if last.as_ref() != Some(&mix) {
                    info!(shares = %mix, "decoy challenges follow the rows");
                    *shared.mix.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(mix.clone());
                    last = Some(mix);
                }
                None
            }
            Err(e) => {
                warn!(error = %e, "cannot count the rows' hashes for decoys; trying again in a minute");
                Some(Duration::from_secs(60))
            }
        };
        if let Some(tx) = first.take() {
            let _ = tx.send(());
        }
        let wait = match (retry, shared.config().decoy_census_interval) {
            (Some(retry), interval) if interval.is_zero() || retry < interval => retry,
            (_, interval) if interval.is_zero() => return,
            (_, interval) => interval,
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shared.shutdown.cancelled() => return,
        }
    }
}

/// The longest a census may take (a grouped scan of the user table).
const CENSUS_TIMEOUT: Duration = Duration::from_secs(30);

/// The protocol v2 keys of a server ([`Server::with_noise_keys`]), shared
/// by its logins and changeable while it runs ([`Server::noise_keys`]):
/// each login takes the keys of the moment it starts.
///
/// By default a server speaks v2 over `Noise_NN` beside v1, with no
/// static key (a device that pins one is refused `unknown_key`): hosts
/// log in over v2 by default (tether-firmware's `std` feature), and a
/// server embedded in a program meets them without a key file.
#[derive(Clone)]
pub struct NoiseKeys(Arc<RwLock<Option<tether_core::connection::ServerKeys>>>);

impl std::fmt::Debug for NoiseKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The keys themselves never go into a log.
        let keys = self.get();
        f.debug_struct("NoiseKeys")
            .field("v2", &keys.is_some())
            .field(
                "previous",
                &keys.as_ref().is_some_and(|k| k.previous.is_some()),
            )
            .finish()
    }
}

impl Default for NoiseKeys {
    fn default() -> Self {
        Self(Arc::new(RwLock::new(Some(
            tether_core::connection::ServerKeys::default(),
        ))))
    }
}

impl NoiseKeys {
    /// From now on, logins use `keys` (v2 beside v1, or v2 only when
    /// `keys.require_encryption`).
    pub fn replace(&self, keys: tether_core::connection::ServerKeys) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = Some(keys);
    }

    /// The keys now, if the server speaks v2.
    pub fn get(&self) -> Option<tether_core::connection::ServerKeys> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// A bound server, ready to run.
pub struct Server<R: Realm> {
    listener: TcpListener,
    shared: Arc<Shared<R>>,
}

/// Stops a running server, or changes its settings, from any task.
#[derive(Clone)]
pub struct ServerHandle {
    shutdown: CancellationToken,
    addr: SocketAddr,
    settings: Arc<Settings>,
    serve: Arc<dyn Fn(Stream, SocketAddr) + Send + Sync>,
}

impl std::fmt::Debug for ServerHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerHandle")
            .field("addr", &self.addr)
            .field("shutting_down", &self.is_shutting_down())
            .finish_non_exhaustive()
    }
}

impl ServerHandle {
    /// Changes the running server's settings without dropping a session:
    /// the limits, the throttle and the timers [`ServerConfig`] lists as
    /// reloadable take effect for what arrives from now on; the others
    /// keep their value and are named in [`Reloaded::needs_restart`].
    /// Sessions already above a lowered limit stay; new logins wait for
    /// room.
    ///
    /// ```no_run
    /// # fn f(handle: tether_server::ServerHandle) {
    /// let mut config = handle.config();
    /// config.max_sessions = 20_000;
    /// config.throttle.addr_free_failures = 100;
    /// let reloaded = handle.reload(config);
    /// assert_eq!(reloaded.applied, ["max_sessions", "throttle"]);
    /// # }
    /// ```
    pub fn reload(&self, config: ServerConfig) -> Reloaded {
        self.settings.reload(config)
    }

    /// The settings in effect now.
    pub fn config(&self) -> ServerConfig {
        self.settings.config()
    }

    /// Serves one connection over any byte stream (in-process TLS, a
    /// tunnel, `tokio::io::duplex` in a test), as if the listener had
    /// accepted it from `peer`: the same admission, limits, throttle (by
    /// `peer`'s address), login and session, and the same graceful
    /// shutdown. Returns at once; the connection runs in a task of the
    /// server's (call it within the runtime). After shutdown has started
    /// the stream is dropped (closed) at once.
    ///
    /// Each frame the server writes is flushed, so a buffering stream
    /// (TLS) delivers it. A connection handed in has no socket to look
    /// at, so it counts as silent until its hello is read: when every
    /// handshake slot is taken it may give its slot to a newcomer earlier
    /// than an accepted socket would.
    ///
    /// ```no_run
    /// # async fn f(server: tether_server::Server<tether_server::DefaultRealm>) {
    /// let handle = server.handle();
    /// tokio::spawn(server.run());
    /// // The server's end of an in-process pipe; a device speaks on `device`.
    /// let (device, server_end) = tokio::io::duplex(16 * 1024);
    /// handle.serve_connection(server_end, "127.0.0.1:50000".parse().unwrap());
    /// # drop(device);
    /// # }
    /// ```
    ///
    /// With TLS in the process (tokio-rustls), each accepted TLS stream is
    /// handed in the same way: `handle.serve_connection(acceptor.accept(tcp).await?, peer)`.
    pub fn serve_connection<S>(&self, io: S, peer: SocketAddr)
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
    {
        (self.serve)(Stream::other(io), peer)
    }

    /// Starts the graceful shutdown: stop accepting, let in-flight calls
    /// finish within the deadline, say goodbye, close.
    pub fn shutdown(&self) {
        self.shutdown.cancel();
    }

    /// Whether shutdown has started.
    pub fn is_shutting_down(&self) -> bool {
        self.shutdown.is_cancelled()
    }

    /// Resolves when shutdown starts.
    pub async fn shutting_down(&self) {
        self.shutdown.cancelled().await
    }

    /// The listening address.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

/// The listen queue asked of the kernel (which caps it at
/// `net.core.somaxconn`, 4096 on current Linux): connections it has
/// completed that the accept loop has not taken yet. std's and tokio's
/// `bind` ask for 128; when hundreds of devices connect at once (a server
/// restart, a network coming back) the rest of their SYNs are dropped and
/// each device retries a second later (bench: 512 clients logging in, p99
/// 1 s, `nstat` counting `ListenOverflows`).
pub const LISTEN_BACKLOG: u32 = 4096;

/// Binds a listener as `TcpListener::bind` does (each resolved address in
/// turn, `SO_REUSEADDR` on Unix), with [`LISTEN_BACKLOG`].
pub async fn listen(addr: impl ToSocketAddrs) -> std::io::Result<TcpListener> {
    let mut last_error = None;
    for addr in tokio::net::lookup_host(addr).await? {
        match listen_on(addr) {
            Ok(listener) => return Ok(listener),
            Err(e) => last_error = Some(e),
        }
    }
    Err(last_error.unwrap_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "the address resolved to nothing",
        )
    }))
}

fn listen_on(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    #[cfg(unix)]
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

impl<R: Realm> Server<R> {
    /// Binds the listener ([`listen`]: a listen queue of
    /// [`LISTEN_BACKLOG`]).
    pub async fn bind(
        addr: impl ToSocketAddrs,
        config: ServerConfig,
        store: Arc<Store>,
        realm: R,
        secret: ServerSecret,
    ) -> std::io::Result<Self> {
        let listener = listen(addr).await?;
        Ok(Self::from_listener(listener, config, store, realm, secret))
    }

    /// A server on a listener the application made (bound to a port its
    /// own configuration chose, inherited through systemd socket
    /// activation, or `127.0.0.1:0` in a test): [`run`](Self::run) serves
    /// it.
    ///
    /// ```no_run
    /// # async fn f(store: std::sync::Arc<tether_server::Store>) -> std::io::Result<()> {
    /// use tether_server::{DefaultRealm, Server, ServerConfig, ServerSecret};
    /// let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    /// let server = Server::from_listener(listener, ServerConfig::default(), store,
    ///     DefaultRealm::new(), ServerSecret::random());
    /// println!("devices connect to {}", server.local_addr());
    /// server.run().await;
    /// # Ok(()) }
    /// ```
    pub fn from_listener(
        listener: TcpListener,
        mut config: ServerConfig,
        store: Arc<Store>,
        realm: R,
        secret: ServerSecret,
    ) -> Self {
        config.max_frame = config.max_frame.max(tether_core::frame::MIN_MAX_FRAME);
        let metrics = store.metrics().clone();
        let throttle = Arc::new(Throttle::with_metrics(config.throttle, metrics.throttle()));
        metrics.watch_throttle(&throttle);
        let settings = Arc::new(Settings {
            admission: Arc::new(Admission::new(config.admission_limits())),
            sessions: SessionSlots::new(config.max_sessions),
            throttle: throttle.clone(),
            config: RwLock::new(config),
        });
        Self {
            listener,
            shared: Arc::new(Shared {
                settings,
                throttle,
                metrics,
                live: Registry::new(),
                store,
                secret,
                noise: NoiseKeys::default(),
                mix: RwLock::new(Arc::new(DecoyMix::only(config.decoy_iterations))),
                realm,
                next_session_id: AtomicU64::new(1),
                shutdown: CancellationToken::new(),
                tracker: TaskTracker::new(),
            }),
        }
    }

    /// Speaks protocol v2 with these keys: Noise NN, and NK with `keys`'
    /// static keys; `keys.require_encryption` refuses v1 logins `version`.
    /// Without it, v2 over NN only ([`NoiseKeys`]'s default).
    pub fn with_noise_keys(self, keys: tether_core::connection::ServerKeys) -> Self {
        self.shared.noise.replace(keys);
        self
    }

    /// Speaks protocol v1 only, as servers did before v2: v2 logins are
    /// refused `protocol` (e.g. to test that devices do not fall back).
    /// [`NoiseKeys::replace`] turns v2 back on.
    pub fn v1_only(self) -> Self {
        *self
            .shared
            .noise
            .0
            .write()
            .unwrap_or_else(|p| p.into_inner()) = None;
        self
    }

    /// The server's v2 keys, to change while it runs (a key rotation):
    /// logins that start afterwards use the new keys.
    pub fn noise_keys(&self) -> NoiseKeys {
        self.shared.noise.clone()
    }

    /// The listening address.
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// The metrics the server records into (its store's,
    /// [`Store::metrics`]).
    pub fn metrics(&self) -> &Metrics {
        &self.shared.metrics
    }

    /// Every live session of this server, whatever the realm: listed
    /// before its welcome is sent (a device that is logged in is always
    /// found) until the session has ended. The admin API reads it.
    pub fn sessions(&self) -> Registry {
        self.shared.live.clone()
    }

    /// The credential store.
    pub fn store(&self) -> &Arc<Store> {
        &self.shared.store
    }

    /// A handle to stop the server.
    pub fn handle(&self) -> ServerHandle {
        ServerHandle {
            shutdown: self.shared.shutdown.clone(),
            addr: self.local_addr(),
            settings: self.shared.settings.clone(),
            serve: {
                let shared = self.shared.clone();
                Arc::new(move |stream, peer| {
                    if !shared.shutdown.is_cancelled() {
                        connection(&shared, stream, peer, None);
                    }
                })
            },
        }
    }

    /// Serves until [`ServerHandle::shutdown`], then shuts down gracefully:
    /// returns when every session has said goodbye (each within the
    /// session's shutdown deadline).
    ///
    /// Cancel safety: dropping this future stops accepting at once but
    /// leaves the running sessions to their tasks, without the graceful
    /// goodbye; call [`ServerHandle::shutdown`] and await `run` instead.
    pub async fn run(self) {
        let Self { listener, shared } = self;
        // Decoys follow the rows from the first login on, unless counting
        // them takes longer than a lookup may (then from when it is done).
        let (counted, first) = tokio::sync::oneshot::channel();
        tokio::spawn(census(shared.clone(), counted));
        let _ = tokio::time::timeout(shared.store.config().lookup_timeout, first).await;
        info!(addr = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(), "listening");
        if let Some(every) = shared.config().revalidate.filter(|d| !d.is_zero()) {
            tokio::spawn(crate::revalidate::run(
                shared.live.clone(),
                shared.store.clone(),
                every,
                shared.shutdown.clone(),
            ));
        }
        // Out of descriptors, a device is refused `busy` instead of waiting.
        let mut spare = crate::fd_limit::Spare::new();
        loop {
            tokio::select! {
                _ = shared.shutdown.cancelled() => break,
                accepted = listener.accept() => match accepted {
                    Ok((stream, peer)) => accept(&shared, stream, peer),
                    Err(e) => spare.accept_failed(&listener, e, &shared.metrics).await,
                },
            }
        }
        drop(listener);
        info!("shutting down: no new connections; waiting for sessions to finish");
        shared.tracker.close();
        let deadline = shared.config().session.shutdown_deadline + Duration::from_secs(5);
        if tokio::time::timeout(deadline, shared.tracker.wait())
            .await
            .is_err()
        {
            warn!("some connections did not close in time");
        }
        shared.store.close().await;
        info!("shut down");
    }
}

fn accept<R: Realm>(shared: &Arc<Shared<R>>, stream: TcpStream, peer: SocketAddr) {
    let _ = stream.set_nodelay(true);
    let probe = socket2::SockRef::from(&stream).try_clone().ok();
    connection(shared, Stream::Tcp(stream), peer, probe);
}

/// Admits and serves one connection, accepted or handed in
/// ([`ServerHandle::serve_connection`]); `probe` tells whether a socket
/// has sent its hello before its task reads it (admission.rs).
fn connection<R: Realm>(
    shared: &Arc<Shared<R>>,
    stream: Stream,
    peer: SocketAddr,
    probe: Option<crate::admission::Probe>,
) {
    let started = Instant::now();
    // A slot, a wait to be told `busy`, or nothing (admission.rs).
    let key = crate::throttle::address_key(peer.ip());
    let (ticket, busy) = match shared.settings.admission.admit(key, probe) {
        Admitted::Slot(ticket, evicted) => {
            if evicted {
                debug!(%peer, "every handshake slot taken: a silent connection gave its slot");
            }
            (ticket, None)
        }
        Admitted::Wait(ticket, why) => (ticket, Some(why)),
        Admitted::Drop(why) => {
            if why == admission::EARLY_DROP {
                debug!(%peer, "random early drop: closed without a reply");
            } else if shared.metrics.log_limit().allow(Noisy::ConnectionDropped) {
                warn!(%peer, "{why}; closed without a reply");
            }
            shared
                .metrics
                .login(LoginOutcome::Dropped, None, started.elapsed());
            return;
        }
    };
    // The settings of this connection and its session, whatever a reload
    // changes meanwhile.
    let config = shared.config();
    let in_handshake = shared.metrics.handshake_started();
    // The login and everything it needs, boxed: freed when the login ends
    // instead of staying in the task's future (as its captures would) for
    // the whole session.
    let login = Box::pin(login_phase(
        shared.clone(),
        stream,
        peer,
        ticket,
        busy,
        config,
        started,
        in_handshake,
    ));
    let task_shared = shared.clone();
    shared.tracker.spawn(async move {
        let Some((established, session_permit)) = login.await else {
            return;
        };
        let shared = task_shared;
        let live = shared.metrics.session_started();
        let session_id = established.info.id;
        let end = session::run(established, shared.shutdown.clone()).await;
        shared.live.remove(session_id);
        live.ended(&end);
        drop(live);
        drop(session_permit);
    });
}

/// A connection's login, to its session or its end (counted and logged).
#[allow(clippy::too_many_arguments)]
async fn login_phase<R: Realm>(
    shared: Arc<Shared<R>>,
    stream: Stream,
    peer: SocketAddr,
    ticket: crate::admission::Ticket,
    busy: Option<&'static str>,
    config: ServerConfig,
    started: Instant,
    in_handshake: crate::metrics::HandshakeGuard,
) -> Option<(Box<session::Established<R::Avatar>>, SessionSlot)> {
    let metrics = &shared.metrics;
    let login = login::handshake(&shared, stream, peer, ticket, busy, &config);
    let timeout = config.handshake_timeout;
    let result = tokio::select! {
        r = tokio::time::timeout(timeout, login) => r,
        _ = shared.shutdown.cancelled() => {
            debug!(%peer, "handshake abandoned: shutting down");
            metrics.login(LoginOutcome::Closed, None, started.elapsed());
            return None;
        }
    };
    drop(in_handshake);
    let outcome = match result {
        Err(_) => {
            if metrics.log_limit().allow(Noisy::LoginTimedOut) {
                info!(%peer, "login timed out; connection closed");
            }
            LoginOutcome::Timeout
        }
        Ok(Err(LoginEnd::Refused(code))) => {
            metrics.login(LoginOutcome::Refused, Some(code), started.elapsed());
            return None;
        }
        Ok(Err(LoginEnd::NoHello)) => {
            debug!(%peer, "no hello within the hello timeout; connection closed");
            LoginOutcome::Timeout
        }
        Ok(Err(LoginEnd::Evicted)) => {
            debug!(%peer, "silent connection closed: its slot went to a newcomer");
            LoginOutcome::Evicted
        }
        Ok(Err(LoginEnd::Closed)) => LoginOutcome::Closed,
        Ok(Ok(ok)) => {
            metrics.login(LoginOutcome::Success, None, started.elapsed());
            return Some(ok);
        }
    };
    metrics.login(outcome, None, started.elapsed());
    None
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        let term = async {
            match term.as_mut() {
                Some(t) => {
                    t.recv().await;
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
