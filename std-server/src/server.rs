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

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream, ToSocketAddrs};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::default_realm::Registry;
use crate::log_limit::Noisy;
use crate::login::{self, LoginEnd};
use crate::metrics::{LoginOutcome, Metrics};
use crate::realm::Realm;
use crate::secret::ServerSecret;
use crate::session::{self, SessionConfig};
use crate::store::Store;
use crate::throttle::{Throttle, ThrottleConfig};

/// Server limits and timers.
#[derive(Debug, Clone, Copy)]
pub struct ServerConfig {
    /// Longest a login may take from connect to welcome (default 10 s).
    pub handshake_timeout: Duration,
    /// Logins in progress at once; more are refused `busy` (default 64).
    pub max_handshakes: usize,
    /// Logins in progress at once from one address (IPv6: one /64); more
    /// from it are refused `busy`, so that one address cannot hold every
    /// handshake slot. `None` (the default): half of `max_handshakes`;
    /// `Some(0)`: no limit but `max_handshakes`. Raise it for fleets behind
    /// one NAT or proxy address.
    pub max_handshakes_per_address: Option<usize>,
    /// Connections waiting beyond `max_handshakes` just to be told `busy`;
    /// beyond this they are closed at once (default 256).
    pub max_pending: usize,
    /// Live sessions at once; more logins are refused `busy` (default 10,000).
    pub max_sessions: usize,
    /// Largest frame body the server accepts after login (default 16,384;
    /// at least 512).
    pub max_frame: u16,
    /// Iterations announced in decoy challenges (default 1,000,000, Django
    /// 5.2's default; set it to what your real rows use).
    pub decoy_iterations: u32,
    /// Session timers and limits.
    pub session: SessionConfig,
    /// Failed-login throttle.
    pub throttle: ThrottleConfig,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            handshake_timeout: Duration::from_secs(10),
            max_handshakes: 64,
            max_handshakes_per_address: None,
            max_pending: 256,
            max_sessions: 10_000,
            max_frame: 16_384,
            decoy_iterations: 1_000_000,
            session: SessionConfig::default(),
            throttle: ThrottleConfig::default(),
        }
    }
}

impl ServerConfig {
    /// The effective [`max_handshakes_per_address`](Self::max_handshakes_per_address).
    pub fn per_address_cap(&self) -> usize {
        match self.max_handshakes_per_address {
            None => self.max_handshakes.div_ceil(2).max(1),
            Some(0) => self.max_handshakes.max(1),
            Some(n) => n,
        }
    }
}

/// Handshakes in progress per source address (IPv6 by /64, as the
/// throttle counts them).
pub(crate) struct PerAddress {
    cap: usize,
    counts: Mutex<HashMap<IpAddr, usize>>,
}

/// A login's place among the handshakes in progress: the server's and its
/// address's, held until the login ends.
pub(crate) struct HandshakeSlot {
    _server: OwnedSemaphorePermit,
    _address: AddressSlot,
}

/// One handshake of an address, counted until dropped.
pub(crate) struct AddressSlot {
    owner: Arc<PerAddress>,
    key: IpAddr,
}

impl PerAddress {
    fn new(cap: usize) -> Self {
        Self {
            cap,
            counts: Mutex::new(HashMap::new()),
        }
    }

    /// A slot for `addr`, or `None` when it has `cap` handshakes already.
    fn try_enter(self: &Arc<Self>, addr: IpAddr) -> Option<AddressSlot> {
        let key = crate::throttle::address_key(addr);
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let n = counts.entry(key).or_insert(0);
        if *n >= self.cap {
            return None;
        }
        *n += 1;
        Some(AddressSlot {
            owner: self.clone(),
            key,
        })
    }
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut counts = self.owner.counts.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = counts.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.key);
            }
        }
    }
}

/// State shared by all connections.
pub(crate) struct Shared<R> {
    pub config: ServerConfig,
    pub store: Arc<Store>,
    pub throttle: Arc<Throttle>,
    pub metrics: Metrics,
    /// Every live session, whatever the realm.
    pub live: Registry,
    pub secret: ServerSecret,
    pub realm: R,
    pub next_session_id: AtomicU64,
    pub handshakes: Arc<Semaphore>,
    pub per_address: Arc<PerAddress>,
    pub pending: Arc<Semaphore>,
    pub sessions: Arc<Semaphore>,
    pub shutdown: CancellationToken,
    pub tracker: TaskTracker,
}

/// A bound server, ready to run.
pub struct Server<R: Realm> {
    listener: TcpListener,
    shared: Arc<Shared<R>>,
}

/// Stops a running server from any task.
#[derive(Debug, Clone)]
pub struct ServerHandle {
    shutdown: CancellationToken,
    addr: SocketAddr,
}

impl ServerHandle {
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

impl<R: Realm> Server<R> {
    /// Binds the listener.
    pub async fn bind(
        addr: impl ToSocketAddrs,
        mut config: ServerConfig,
        store: Arc<Store>,
        realm: R,
        secret: ServerSecret,
    ) -> std::io::Result<Self> {
        config.max_frame = config.max_frame.max(tether_core::frame::MIN_MAX_FRAME);
        let listener = TcpListener::bind(addr).await?;
        let metrics = store.metrics().clone();
        let throttle = Arc::new(Throttle::with_metrics(config.throttle, metrics.throttle()));
        metrics.watch_throttle(&throttle);
        Ok(Self {
            listener,
            shared: Arc::new(Shared {
                throttle,
                metrics,
                live: Registry::new(),
                handshakes: Arc::new(Semaphore::new(config.max_handshakes.max(1))),
                per_address: Arc::new(PerAddress::new(config.per_address_cap())),
                pending: Arc::new(Semaphore::new(config.max_pending.max(1))),
                sessions: Arc::new(Semaphore::new(config.max_sessions.max(1))),
                config,
                store,
                secret,
                realm,
                next_session_id: AtomicU64::new(1),
                shutdown: CancellationToken::new(),
                tracker: TaskTracker::new(),
            }),
        })
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
        }
    }

    /// Serves until [`ServerHandle::shutdown`], then shuts down gracefully:
    /// returns when every session has said goodbye (each within the
    /// session's shutdown deadline).
    pub async fn run(self) {
        let Self { listener, shared } = self;
        info!(addr = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(), "listening");
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
        let deadline = shared.config.session.shutdown_deadline + Duration::from_secs(5);
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
    let started = Instant::now();
    // A handshake takes one of its address's slots and one of the server's;
    // without both the connection waits for its hello to be told `busy`.
    let slot = match shared.per_address.try_enter(peer.ip()) {
        None => Err("too many handshakes from this address"),
        Some(address) => match shared.handshakes.clone().try_acquire_owned() {
            Ok(server) => Ok(HandshakeSlot {
                _server: server,
                _address: address,
            }),
            Err(_) => Err("too many handshakes"),
        },
    };
    let pending_permit = if slot.is_err() {
        match shared.pending.clone().try_acquire_owned() {
            Ok(p) => Some(p),
            Err(_) => {
                if shared.metrics.log_limit().allow(Noisy::ConnectionDropped) {
                    warn!(%peer, "too many connections waiting; closed without a reply");
                }
                shared
                    .metrics
                    .login(LoginOutcome::Dropped, None, started.elapsed());
                return;
            }
        }
    } else {
        None
    };
    let in_handshake = shared.metrics.handshake_started();
    let task_shared = shared.clone();
    shared.tracker.spawn(async move {
        let shared = task_shared;
        let metrics = &shared.metrics;
        // Boxed, so that the login's state (SCRAM, handshake buffers) is
        // freed when the login ends instead of living in this task's
        // future for the whole session.
        let login = Box::pin(login::handshake(&shared, stream, peer, slot));
        let timeout = shared.config.handshake_timeout;
        let result = tokio::select! {
            r = tokio::time::timeout(timeout, login) => r,
            _ = shared.shutdown.cancelled() => {
                debug!(%peer, "handshake abandoned: shutting down");
                metrics.login(LoginOutcome::Closed, None, started.elapsed());
                return;
            }
        };
        drop(pending_permit);
        drop(in_handshake);
        let (established, session_permit) = match result {
            Err(_) => {
                if metrics.log_limit().allow(Noisy::LoginTimedOut) {
                    info!(%peer, "login timed out; connection closed");
                }
                metrics.login(LoginOutcome::Timeout, None, started.elapsed());
                return;
            }
            Ok(Err(LoginEnd::Refused(code))) => {
                metrics.login(LoginOutcome::Refused, Some(code), started.elapsed());
                return;
            }
            Ok(Err(LoginEnd::Closed)) => {
                metrics.login(LoginOutcome::Closed, None, started.elapsed());
                return;
            }
            Ok(Ok(ok)) => ok,
        };
        metrics.login(LoginOutcome::Success, None, started.elapsed());
        let live = metrics.session_started();
        let session_id = established.info.id;
        let end = session::run(established, shared.config.session, shared.shutdown.clone()).await;
        shared.live.remove(session_id);
        live.ended(&end);
        drop(live);
        drop(session_permit);
    });
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
