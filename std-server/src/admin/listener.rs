//! The admin API's listener: its own accept loop over hyper's HTTP/1
//! connections (`axum::serve` has neither a connection limit nor
//! timeouts: 20,000 connections holding half a request each once took
//! every descriptor of the process, and with them the device port).
//!
//! - **At most [`AdminConfig::max_connections`] connections.** When all are
//!   taken, a new connection whose whole request head has already arrived
//!   (its first bytes within [`HEAD_WAIT`]) takes the place of the
//!   connection that has waited longest for a request, which is closed; any
//!   other new connection is closed at once. So connections that send nothing, or
//!   half a request, cannot keep a real request out, and the kernel's
//!   accept queue is drained as fast as connections arrive (a full queue
//!   drops new connections before anything can look at them). When every
//!   connection is busy with a request, a new one with a whole request
//!   waits for the first to end (at most [`AdminConfig::max_connections`]
//!   wait; more are closed).
//! - **Header timeout** ([`AdminConfig::header_timeout`]): from the moment
//!   a connection opens, or its previous response went out, until the whole
//!   request head has arrived; an idle keep-alive connection is closed
//!   after it too (hyper's `header_read_timeout`).
//! - **Idle timeout** ([`AdminConfig::idle_timeout`]): a response the client
//!   does not read (a write blocked that long), or a request body that has
//!   not arrived within it, closes the connection.
//! - **Body limit**: [`MAX_BODY`](super::MAX_BODY) bytes.
//!
//! Requests run on the server's runtime like everything else; what the admin
//! port can take from devices is bounded by these limits (descriptors,
//! memory: a connection's buffers; CPU: one accept and one close per shed
//! connection), measured in bench/README.md.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::Service as _;
use tracing::{debug, info, warn};

use super::AdminConfig;
use crate::log_limit::Noisy;
use crate::metrics::Metrics;

/// When every connection is taken, how long a new one may take to show the
/// first bytes of its request (a real client sends its request as soon as
/// it is connected; behind a full accept queue it has long arrived).
pub const HEAD_WAIT: Duration = Duration::from_millis(20);

/// The most descriptors the admin API holds with `max_connections`: its
/// places, as many new connections being looked at while all are taken,
/// and as many whole requests waiting for a place.
pub fn descriptors(max_connections: usize) -> usize {
    3 * max_connections.max(1)
}

/// The largest request head (request line and headers) read.
const MAX_HEAD: usize = 16 * 1024;

/// How long the accept loop waits after a failed accept (no descriptor
/// left, most often: waiting lets connections close).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// How long the requests in progress may take to finish at shutdown.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// The open connections, for shedding the one idle the longest.
#[derive(Default)]
struct Conns {
    table: Mutex<Table>,
}

#[derive(Default)]
struct Table {
    next_id: u64,
    open: std::collections::HashMap<u64, Entry>,
}

struct Entry {
    /// Since when it has been waiting for a request; `None` while one runs.
    idle_since: Option<Instant>,
    close: CancellationToken,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Conns {
    fn open(self: &Arc<Self>) -> ConnHandle {
        let close = CancellationToken::new();
        let mut t = lock(&self.table);
        t.next_id += 1;
        let id = t.next_id;
        t.open.insert(
            id,
            Entry {
                idle_since: Some(Instant::now()),
                close: close.clone(),
            },
        );
        ConnHandle {
            conns: self.clone(),
            id,
            close,
        }
    }

    /// Closes the connection that has waited for a request the longest.
    fn shed_oldest_idle(&self) -> bool {
        let mut t = lock(&self.table);
        let oldest = t
            .open
            .iter_mut()
            .filter_map(|(_, e)| e.idle_since.map(|since| (since, e)))
            .min_by_key(|(since, _)| *since);
        match oldest {
            Some((_, entry)) => {
                // Never picked twice: it is no longer idle.
                entry.idle_since = None;
                entry.close.cancel();
                true
            }
            None => false,
        }
    }

    fn set_idle(&self, id: u64, idle: bool) {
        if let Some(e) = lock(&self.table).open.get_mut(&id)
            && !e.close.is_cancelled()
        {
            e.idle_since = idle.then(Instant::now);
        }
    }
}

/// A connection's entry in [`Conns`], removed when dropped.
struct ConnHandle {
    conns: Arc<Conns>,
    id: u64,
    close: CancellationToken,
}

impl Drop for ConnHandle {
    fn drop(&mut self) {
        lock(&self.conns.table).open.remove(&self.id);
    }
}

/// Marks a connection busy with a request until dropped.
struct Busy {
    conns: Arc<Conns>,
    id: u64,
}

impl Busy {
    fn new(conns: &Arc<Conns>, id: u64) -> Self {
        conns.set_idle(id, false);
        Self {
            conns: conns.clone(),
            id,
        }
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.conns.set_idle(self.id, true);
    }
}

/// Serves `router` on `listener` within `config`'s limits until `shutdown`
/// resolves; then stops accepting and gives the requests in progress
/// [`SHUTDOWN_GRACE`] to finish.
pub(super) async fn serve(
    listener: TcpListener,
    router: Router,
    config: AdminConfig,
    metrics: Metrics,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let max = config.max_connections.max(1);
    let places = Places {
        slots: Arc::new(Semaphore::new(max)),
        checking: Arc::new(Semaphore::new(max)),
        waiting: Arc::new(Semaphore::new(max)),
        conns: Arc::new(Conns::default()),
    };
    let closing = CancellationToken::new();
    let tracker = TaskTracker::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    if metrics.log_limit().allow(Noisy::AdminAcceptFailed) {
                        warn!(error = %e, "admin API: accept failed; retrying in 100 ms");
                    }
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
        };
        let conn = Connection {
            places: places.clone(),
            router: router.clone(),
            config: config.clone(),
            metrics: metrics.clone(),
            closing: closing.clone(),
            peer,
        };
        tracker.spawn(conn.run(stream));
    }
    drop(listener);
    closing.cancel();
    tracker.close();
    if tokio::time::timeout(SHUTDOWN_GRACE, tracker.wait())
        .await
        .is_err()
    {
        warn!("admin API: requests still running at shutdown were cut");
    }
}

/// The connection places and who holds them.
#[derive(Clone)]
struct Places {
    /// [`AdminConfig::max_connections`] places.
    slots: Arc<Semaphore>,
    /// New connections being looked at while every place is taken.
    checking: Arc<Semaphore>,
    /// New connections with a whole request waiting for a place.
    waiting: Arc<Semaphore>,
    conns: Arc<Conns>,
}

/// Whether a whole request head (up to [`MAX_HEAD`] bytes) is on `stream`,
/// read without consuming it: its first bytes within [`HEAD_WAIT`], and
/// the rest unless a look 2 ms later finds nothing more (half a request,
/// stalled).
async fn head_arrived(stream: &TcpStream) -> bool {
    let mut buf = vec![0u8; MAX_HEAD];
    let deadline = Instant::now() + HEAD_WAIT;
    let mut seen = 0;
    loop {
        let n = match tokio::time::timeout_at(deadline, stream.peek(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => n,
            _ => return false,
        };
        if buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
            return true;
        }
        if n == seen || n == buf.len() {
            return false;
        }
        seen = n;
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

struct Connection {
    places: Places,
    router: Router,
    config: AdminConfig,
    metrics: Metrics,
    closing: CancellationToken,
    peer: SocketAddr,
}

impl Connection {
    /// A place for this connection: a free one; when none is, the place of
    /// the connection that has waited longest for a request, if this one's
    /// request has arrived whole; or, when every connection is running a
    /// request, the first place given back. `None`: closed.
    async fn place(&self, stream: &TcpStream) -> Option<OwnedSemaphorePermit> {
        let places = &self.places;
        if let Ok(permit) = places.slots.clone().try_acquire_owned() {
            return Some(permit);
        }
        let shed = |why: &str| {
            if self.metrics.log_limit().allow(Noisy::AdminConnectionShed) {
                info!(peer = %self.peer, "admin API: every connection taken; {why}");
            }
        };
        let Ok(checking) = places.checking.clone().try_acquire_owned() else {
            shed("closed a new connection (too many arriving at once)");
            return None;
        };
        let whole = head_arrived(stream).await;
        drop(checking);
        if !whole {
            shed("closed a new connection without a whole request");
            return None;
        }
        let Ok(_waiting) = places.waiting.clone().try_acquire_owned() else {
            shed("closed a new connection (too many waiting)");
            return None;
        };
        if places.conns.shed_oldest_idle() {
            shed("closed the one that waited longest for a request");
        }
        tokio::select! {
            permit = places.slots.clone().acquire_owned() => permit.ok(),
            _ = self.closing.cancelled() => None,
        }
    }

    async fn run(self, stream: TcpStream) {
        let Some(_permit) = self.place(&stream).await else {
            return;
        };
        let _open = self.metrics.admin_connection();
        let handle = self.places.conns.open();
        let _ = stream.set_nodelay(true);
        let mut io = tokio_io_timeout::TimeoutStream::new(stream);
        io.set_write_timeout(Some(self.config.idle_timeout));
        let io: Box<dyn Io> = match &self.config.tls {
            None => Box::new(Box::pin(io)),
            Some(tls) => {
                // The handshake is part of the head's time.
                let accept = tokio_rustls::TlsAcceptor::from(tls.clone()).accept(Box::pin(io));
                match tokio::time::timeout(self.config.header_timeout, accept).await {
                    Ok(Ok(stream)) => Box::new(stream),
                    Ok(Err(e)) => {
                        debug!(peer = %self.peer, error = %e, "admin API: TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        debug!(peer = %self.peer, "admin API: TLS handshake timed out");
                        return;
                    }
                }
            }
        };
        let io = TokioIo::new(io);
        let (conns, id, peer, router) = (
            self.places.conns.clone(),
            handle.id,
            self.peer,
            self.router.clone(),
        );
        let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
            request.extensions_mut().insert(ConnectInfo(peer));
            let busy = Busy::new(&conns, id);
            let response = router.clone().call(request);
            async move {
                let response = response.await;
                drop(busy);
                response
            }
        });
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(self.config.header_timeout)
            .max_buf_size(MAX_HEAD)
            .serve_connection(io, service);
        tokio::pin!(conn);
        let result = tokio::select! {
            result = conn.as_mut() => result,
            _ = handle.close.cancelled() => {
                debug!(peer = %self.peer, "admin API: connection closed to make room");
                return;
            }
            _ = self.closing.cancelled() => {
                conn.as_mut().graceful_shutdown();
                conn.await
            }
        };
        if let Err(e) = result {
            if is_timeout(&e) {
                if self
                    .metrics
                    .log_limit()
                    .allow(Noisy::AdminConnectionTimedOut)
                {
                    info!(peer = %self.peer, error = %e, "admin API: connection timed out");
                }
            } else {
                debug!(peer = %self.peer, error = %e, "admin API: connection ended");
            }
        }
    }
}

/// A connection's byte stream: TCP, or TLS over it.
trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin> Io for T {}

/// hyper's header timeout, or a write blocked for the idle timeout.
fn is_timeout(e: &hyper::Error) -> bool {
    if e.is_timeout() {
        return true;
    }
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            return io.kind() == std::io::ErrorKind::TimedOut;
        }
        source = s.source();
    }
    false
}
