//! The seed's realm, avatar and mind.
//!
//! - A [`Realm`] turns an authenticated Django user into an [`Avatar`]: the
//!   device's view of the server.
//! - The avatar answers the device's calls (async; several in flight per
//!   session) and hears about attachment and detachment.
//! - A [`Mind`] is the server's handle on the device: any task can call the
//!   device's methods through it and await the reply, with a timeout.
//!
//! Calls are typed through [`tether_core::method::Method`]: one definition
//! names the method and its argument and reply types for both ends.
//!
//! ```no_run
//! use tether_core::method::{Method, builtin::{Echo, DeviceInfo}};
//! use tether_server::realm::{Avatar, CallResult, IncomingCall, Mind, Realm, SessionInfo, reply};
//!
//! struct MyRealm;
//! struct MyAvatar { mind: Mind }
//!
//! impl Realm for MyRealm {
//!     type Avatar = MyAvatar;
//!     async fn avatar(&self, _session: &SessionInfo, mind: Mind) -> Result<MyAvatar, tether_core::message::RefusalCode> {
//!         Ok(MyAvatar { mind })
//!     }
//! }
//!
//! impl Avatar for MyAvatar {
//!     async fn call(&self, call: IncomingCall) -> CallResult {
//!         match call.method() {
//!             Echo::NAME => reply::<Echo>(&call.args::<Echo>()?),
//!             _ => Err(call.unknown_method()),
//!         }
//!     }
//!     async fn attached(&self) {
//!         if let Ok(status) = self.mind.call::<DeviceInfo>(&()).await {
//!             println!("device runs {}", status.get().firmware);
//!         }
//!     }
//! }
//! ```

use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use tether_core::connection;
use tether_core::message::{DecodeError, ErrorCode, GoodbyeReason, RefusalCode};
use tether_core::method::{self, Method, ToDevice, ToServer};
use tether_core::scram::Mechanism;
use tokio::sync::{Notify, oneshot};

use crate::metrics::{CallMetrics, CallOutcome};
use crate::queue::Queue;
use crate::session::{MindCall, Outbound};

/// The authenticated Django user of a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// The user's primary key.
    pub id: i64,
    /// The username as stored in the database (`USERNAME_FIELD`).
    pub username: String,
    /// Whether the user is a Django superuser.
    pub is_superuser: bool,
    /// The permission the server requires, which this user holds.
    pub permission: Option<String>,
    /// The group the server requires, of which this user is a member.
    pub group: Option<String>,
}

/// What a realm knows about a new session.
#[derive(Debug, Clone)]
pub struct SessionInfo {
    /// The server's id for the session (also sent to the device).
    pub id: u64,
    /// The device's address.
    pub peer: SocketAddr,
    /// Who logged in.
    pub user: User,
    /// The SCRAM mechanism of the login.
    pub mechanism: Mechanism,
    /// When the login completed.
    pub started: SystemTime,
    /// The stored password hash the login used, as a digest: revalidation
    /// ends the session when the row's hash changes.
    pub(crate) credential: CredentialDigest,
}

/// SHA-256 of the SCRAM verifier a stored password hash gives (of the hash
/// string itself when it gives none): tells whether the credentials changed
/// without keeping them. A row rewritten to another form of the same
/// verifier (`pbkdf2_sha256` to `scram_sha256` with the same salt and
/// iterations, docs/DJANGO.md section 3) keeps its digest. Never printed.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) struct CredentialDigest([u8; 32]);

impl CredentialDigest {
    pub(crate) fn of(encoded_hash: &str) -> Self {
        use sha2::Digest as _;
        let mut h = sha2::Sha256::new();
        match tether_core::django::credentials(encoded_hash) {
            Ok(c) => {
                h.update(b"verifier\0");
                h.update(c.mechanism.to_string().as_bytes());
                h.update(c.iterations.to_be_bytes());
                h.update((c.salt.len() as u32).to_be_bytes());
                h.update(&c.salt);
                h.update(c.stored_key.as_bytes());
                h.update(c.server_key.as_bytes());
            }
            Err(_) => {
                h.update(b"text\0");
                h.update(encoded_hash.as_bytes());
            }
        }
        Self(h.finalize().into())
    }
}

impl fmt::Debug for CredentialDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("CredentialDigest(..)")
    }
}

/// A failed call, as the peer sees it: an [`ErrorCode`] and a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteError {
    /// What kind of failure.
    pub code: ErrorCode,
    /// Human-readable detail (sent to the peer: no secrets).
    pub message: String,
}

impl RemoteError {
    /// An error with a code and a message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    /// `FAILED` with a message.
    pub fn failed(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::FAILED, message)
    }
}

impl fmt::Display for RemoteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl std::error::Error for RemoteError {}

/// The outcome of a call: the postcard-encoded reply, or an error.
pub type CallResult = Result<Vec<u8>, RemoteError>;

/// Encodes a method's reply as a [`CallResult`].
pub fn reply<M: ToServer>(value: &M::Reply<'_>) -> CallResult {
    let mut size = 256;
    loop {
        let mut buf = vec![0u8; size];
        match method::encode_reply::<M>(value, &mut buf) {
            Ok(out) => return Ok(out.to_vec()),
            Err(tether_core::message::EncodeError::BufferFull) if size < 1 << 16 => size *= 4,
            Err(e) => return Err(RemoteError::failed(format!("reply cannot be encoded: {e}"))),
        }
    }
}

/// Encodes a method's arguments.
pub fn encode_args<M: Method>(args: &M::Args<'_>) -> Result<Vec<u8>, CallError> {
    let mut size = 256;
    loop {
        let mut buf = vec![0u8; size];
        match method::encode_args::<M>(args, &mut buf) {
            Ok(out) => return Ok(out.to_vec()),
            Err(tether_core::message::EncodeError::BufferFull) if size < 1 << 16 => size *= 4,
            Err(_) => return Err(CallError::TooLarge),
        }
    }
}

/// A call from the device, owned by the task that answers it.
#[derive(Clone, PartialEq, Eq)]
pub struct IncomingCall {
    /// The device's call id.
    pub id: u32,
    /// The method name.
    pub method: String,
    /// The postcard-encoded arguments.
    pub args: Vec<u8>,
}

impl fmt::Debug for IncomingCall {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IncomingCall")
            .field("id", &self.id)
            .field("method", &self.method)
            .field("args_len", &self.args.len())
            .finish()
    }
}

impl IncomingCall {
    /// The method name.
    pub fn method(&self) -> &str {
        &self.method
    }

    /// Whether this is a call of `M`.
    pub fn is<M: Method>(&self) -> bool {
        self.method == M::NAME
    }

    /// The arguments decoded as `M`'s; `BAD_ARGUMENTS` when they do not
    /// decode.
    pub fn args<M: ToServer>(&self) -> Result<M::Args<'_>, RemoteError> {
        method::decode_args::<M>(&self.args).map_err(|e| {
            RemoteError::new(
                ErrorCode::BAD_ARGUMENTS,
                format!("arguments of {} do not decode: {e}", self.method),
            )
        })
    }

    /// The `UNKNOWN_METHOD` error for this call.
    pub fn unknown_method(&self) -> RemoteError {
        RemoteError::new(
            ErrorCode::UNKNOWN_METHOD,
            format!("no method {:?}", self.method),
        )
    }
}

/// Why a session ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionEnd {
    /// The device said goodbye.
    Goodbye(GoodbyeReason),
    /// The connection closed without a goodbye.
    Closed,
    /// The device sent nothing for three heartbeat intervals.
    IdleTimeout,
    /// The server is shutting down.
    Shutdown,
    /// Server code closed the session ([`Mind::close`]).
    Kicked(GoodbyeReason),
    /// The device broke the protocol (bad frame, bad tag, unknown reply id).
    ProtocolError(String),
    /// Reading or writing the socket failed.
    Io(String),
}

impl fmt::Display for SessionEnd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Goodbye(r) => write!(f, "device said goodbye ({r})"),
            Self::Closed => f.write_str("connection closed"),
            Self::IdleTimeout => f.write_str("idle timeout"),
            Self::Shutdown => f.write_str("server shutdown"),
            Self::Kicked(r) => write!(f, "closed by the server ({r})"),
            Self::ProtocolError(e) => write!(f, "protocol error: {e}"),
            Self::Io(e) => write!(f, "i/o error: {e}"),
        }
    }
}

/// Turns an authenticated user into an avatar (Twisted's `IRealm`).
pub trait Realm: Send + Sync + 'static {
    /// The avatar type of this realm.
    type Avatar: Avatar;

    /// Makes the avatar for a new session, before the welcome is sent.
    /// `mind` reaches the device once the session runs (calls made before
    /// then wait until it does). An error refuses the login with that code.
    /// Once an avatar is made, its [`Avatar::detached`] is always called,
    /// also when the welcome cannot be sent.
    fn avatar(
        &self,
        session: &SessionInfo,
        mind: Mind,
    ) -> impl Future<Output = Result<Self::Avatar, RefusalCode>> + Send;
}

/// The device's view of the server: answers its calls.
///
/// # When the hooks run, and when they are cancelled
///
/// - [`attached`](Self::attached) starts in a task of its own once the
///   welcome is sent, beside the session. When the session ends it gets one
///   more second to return, then it is cancelled (dropped at its next
///   `.await`).
/// - [`call`](Self::call) and [`notify`](Self::notify) run while the
///   session is up; when it ends, the calls still running are cancelled
///   (their answers could not be sent anyway).
/// - [`detached`](Self::detached) runs once, after `attached` has returned
///   or been cancelled, with the mind already closed; it is never
///   cancelled by the session (keep it short: the server's graceful
///   shutdown waits for it).
///
/// Write the hooks so that being dropped at an `.await` leaves nothing
/// half done that `detached` would not clean up.
pub trait Avatar: Send + Sync + 'static {
    /// Answers a call from the device. Its first poll runs on the session's
    /// own task, so a handler that answers at once costs no task switch;
    /// one that has to wait goes on in a task of its own, so several calls
    /// of a session may run at once. Do not block the thread: until the
    /// handler first returns `Pending`, the session reads nothing else.
    fn call(&self, call: IncomingCall) -> impl Future<Output = CallResult> + Send;

    /// Handles a one-way notification from the device (default: ignore).
    fn notify(&self, method: String, args: Vec<u8>) -> impl Future<Output = ()> + Send {
        let _ = (method, args);
        async {}
    }

    /// The session is running (after the welcome). Runs alongside the
    /// session, polled by the session's own task (no task of its own while
    /// the session is idle), so it may call the device through its mind;
    /// like a call handler it must not block the thread. When the session
    /// ends it has one more second to return, then it is dropped, before
    /// [`detached`](Self::detached).
    fn attached(&self) -> impl Future<Output = ()> + Send {
        async {}
    }

    /// The session has ended; the mind no longer reaches the device.
    fn detached(&self, end: SessionEnd) -> impl Future<Output = ()> + Send {
        let _ = end;
        async {}
    }
}

/// Why a call to the device failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    /// The device answered with an error.
    #[error("device answered {0}")]
    Remote(RemoteError),
    /// No answer within the timeout.
    #[error("no answer within the timeout")]
    Timeout,
    /// The session is closed (or closing).
    #[error("session closed")]
    Closed,
    /// The call does not fit in the device's largest frame.
    #[error("call too large for the device's max frame")]
    TooLarge,
    /// The reply does not decode as the method's reply type.
    #[error("reply does not decode: {0}")]
    BadReply(DecodeError),
}

/// A reply from the device to a typed call, checked by [`Mind::call`] to
/// decode as `M::Reply`: read it borrowed with [`get`](Self::get) (the
/// reply type may borrow from its bytes, `&str` for instance), or take it
/// owned with [`into_owned`](Self::into_owned) when the reply type borrows
/// nothing. Neither can fail: one `Result`, `Mind::call`'s, says how the
/// call went.
pub struct Reply<M> {
    bytes: Vec<u8>,
    _method: PhantomData<fn() -> M>,
}

impl<M: Method> Reply<M> {
    /// Checks that `bytes` decode as `M`'s reply.
    fn checked(bytes: Vec<u8>) -> Result<Self, CallError> {
        method::decode_reply::<M>(&bytes).map_err(CallError::BadReply)?;
        Ok(Self {
            bytes,
            _method: PhantomData,
        })
    }

    /// The reply, borrowed from its bytes.
    pub fn get(&self) -> M::Reply<'_> {
        match method::decode_reply::<M>(&self.bytes) {
            Ok(reply) => reply,
            // Decoding is deterministic and these bytes decoded in
            // `checked`: this arm is never taken.
            Err(e) => unreachable!("a checked reply stopped decoding: {e}"),
        }
    }

    /// The reply as an owned value (for reply types that borrow nothing:
    /// numbers, `String`, structs of owned fields).
    pub fn into_owned(self) -> M::Reply<'static>
    where
        M::Reply<'static>: serde::de::DeserializeOwned,
    {
        match tether_core::message::decode::<M::Reply<'static>>(&self.bytes) {
            Ok(reply) => reply,
            // As in `get`: the same bytes, the same type, checked.
            Err(e) => unreachable!("a checked reply stopped decoding: {e}"),
        }
    }

    /// The raw postcard bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }
}

impl<M> fmt::Debug for Reply<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Reply({} bytes)", self.bytes.len())
    }
}

pub(crate) struct MindShared {
    pub(crate) session_id: u64,
    pub(crate) peer: SocketAddr,
    pub(crate) username: String,
    /// Messages for the session's task (crate::queue).
    pub(crate) queue: Queue,
    /// [`Mind`] calls waiting for their outcome.
    pub(crate) in_flight: AtomicUsize,
    /// Signalled when no call is in flight any more.
    pub(crate) idle: Notify,
    /// Set when the session has ended ([`Mind::closed`]).
    pub(crate) ended: Latch,
    /// Set when the session is asked to close ([`Mind::close`]), with
    /// `close_reason`; the session's waker for it is `kick_waker`.
    pub(crate) close: AtomicBool,
    pub(crate) kick_waker: Mutex<Option<std::task::Waker>>,
    pub(crate) close_reason: Mutex<Option<GoodbyeReason>>,
    pub(crate) default_timeout: Duration,
    /// Largest frame body the device accepts.
    pub(crate) peer_max_frame: usize,
    /// Calls the device made to the server.
    pub(crate) calls_in: AtomicU64,
    /// Calls the server made to the device.
    pub(crate) calls_out: AtomicU64,
    pub(crate) metrics: CallMetrics,
}

/// The server's handle on a device (Twisted's mind): calls its methods and
/// awaits their replies. Clone it freely and send it to any task; it stops
/// working (with [`CallError::Closed`]) when the session ends.
#[derive(Clone)]
pub struct Mind {
    pub(crate) shared: Arc<MindShared>,
}

impl fmt::Debug for Mind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Mind")
            .field("session_id", &self.shared.session_id)
            .field("peer", &self.shared.peer)
            .field("username", &self.shared.username)
            .finish_non_exhaustive()
    }
}

impl Mind {
    pub(crate) fn new(
        session_id: u64,
        peer: SocketAddr,
        username: String,
        queue_capacity: usize,
        default_timeout: Duration,
        peer_max_frame: usize,
        metrics: CallMetrics,
    ) -> Self {
        Self {
            shared: Arc::new(MindShared {
                session_id,
                peer,
                username,
                queue: Queue::new(queue_capacity),
                in_flight: AtomicUsize::new(0),
                idle: Notify::new(),
                ended: Latch::new(),
                close: AtomicBool::new(false),
                kick_waker: Mutex::new(None),
                close_reason: Mutex::new(None),
                default_timeout,
                peer_max_frame,
                calls_in: AtomicU64::new(0),
                calls_out: AtomicU64::new(0),
                metrics,
            }),
        }
    }

    /// The session's id.
    pub fn session_id(&self) -> u64 {
        self.shared.session_id
    }

    /// The device's address.
    pub fn peer(&self) -> SocketAddr {
        self.shared.peer
    }

    /// The logged-in username.
    pub fn username(&self) -> &str {
        &self.shared.username
    }

    /// How many calls the device has made to the server in this session.
    pub fn calls_in(&self) -> u64 {
        self.shared.calls_in.load(Ordering::Relaxed)
    }

    /// How many calls the server has made to the device in this session.
    pub fn calls_out(&self) -> u64 {
        self.shared.calls_out.load(Ordering::Relaxed)
    }

    /// The default timeout of [`Mind::call`].
    pub fn default_timeout(&self) -> Duration {
        self.shared.default_timeout
    }

    /// Whether the session has ended.
    pub fn is_closed(&self) -> bool {
        self.shared.ended.is_set()
    }

    /// Completes when the session has ended (at once if it has): the mind
    /// then no longer reaches the device. For a task that serves one device
    /// and should stop with it:
    ///
    /// ```no_run
    /// # async fn f(mind: tether_server::Mind) {
    /// tokio::select! {
    ///     _ = mind.closed() => println!("{} went away", mind.username()),
    ///     _ = tokio::time::sleep(std::time::Duration::from_secs(60)) => {}
    /// }
    /// # }
    /// ```
    ///
    /// Cancel-safe: dropping the future loses nothing.
    pub async fn closed(&self) {
        self.shared.ended.wait().await
    }

    /// Whether the session has ended or is being closed.
    pub(crate) fn is_closing(&self) -> bool {
        self.is_closed() || self.shared.close.load(Ordering::Acquire)
    }

    /// Ends the session: the server sends `Goodbye { reason }` and closes.
    pub fn close(&self, reason: GoodbyeReason) {
        *lock(&self.shared.close_reason) = Some(reason);
        self.shared.close.store(true, Ordering::Release);
        let waker = lock(&self.shared.kick_waker).take();
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    /// Calls `M` on the device with the session's default timeout. The one
    /// `Result` says how the call went; the [`Reply`] is checked to decode:
    /// `reply.get()` borrows it, `reply.into_owned()` owns it.
    ///
    /// `M` is a server -> device method ([`ToDevice`]); calling a device ->
    /// server method does not compile:
    ///
    /// ```compile_fail,E0277
    /// # async fn f(mind: tether_server::Mind) {
    /// use tether_core::method::builtin::WhoAmI; // device -> server
    /// let _ = mind.call::<WhoAmI>(&()).await;
    /// # }
    /// ```
    ///
    /// ```
    /// # async fn f(mind: tether_server::Mind) {
    /// use tether_core::method::builtin::DeviceInfo; // server -> device
    /// let _ = mind.call::<DeviceInfo>(&()).await;
    /// # }
    /// ```
    ///
    /// Cancel safety: dropping the future (an HTTP client hung up, a
    /// `select!` took another branch) gives the call up: its slot is freed
    /// at once ([`calls_in_flight`](Self::calls_in_flight) no longer counts
    /// it) and the device's late answer is dropped. The call may already
    /// have reached the device, which then runs it.
    pub async fn call<M: ToDevice>(&self, args: &M::Args<'_>) -> Result<Reply<M>, CallError> {
        self.call_timeout::<M>(args, self.shared.default_timeout)
            .await
    }

    /// Calls `M` on the device and waits at most `timeout` for the reply,
    /// which is checked to decode as `M::Reply`. Cancel-safe as
    /// [`call`](Self::call).
    pub async fn call_timeout<M: ToDevice>(
        &self,
        args: &M::Args<'_>,
        timeout: Duration,
    ) -> Result<Reply<M>, CallError> {
        let args = encode_args::<M>(args)?;
        let bytes = self.call_raw(M::NAME, args, timeout).await?;
        Reply::checked(bytes)
    }

    /// Calls a method by name with postcard-encoded arguments (no direction
    /// check: for gateways that forward calls they do not know). Cancel-safe
    /// as [`call`](Self::call).
    pub async fn call_raw(
        &self,
        method: &str,
        args: Vec<u8>,
        timeout: Duration,
    ) -> Result<Vec<u8>, CallError> {
        let started = Instant::now();
        let result = self.call_raw_inner(method, args, timeout).await;
        let outcome = match &result {
            Ok(_) => CallOutcome::Ok,
            Err(CallError::Remote(_) | CallError::BadReply(_)) => CallOutcome::Error,
            Err(CallError::Timeout) => CallOutcome::Timeout,
            Err(CallError::Closed) => CallOutcome::Closed,
            Err(CallError::TooLarge) => CallOutcome::Rejected,
        };
        self.shared.metrics.record(outcome, started.elapsed());
        result
    }

    async fn call_raw_inner(
        &self,
        method: &str,
        args: Vec<u8>,
        timeout: Duration,
    ) -> Result<Vec<u8>, CallError> {
        if self.is_closed() {
            return Err(CallError::Closed);
        }
        // The machine's own rule for what fits the device's frame.
        if args.len() > connection::max_args_len(self.shared.peer_max_frame, method) {
            return Err(CallError::TooLarge);
        }
        let (tx, rx) = oneshot::channel();
        let _in_flight = InFlight::new(&self.shared);
        let sent = self
            .shared
            .queue
            .send(Outbound::Call(Box::new(MindCall {
                method: method.to_string(),
                args,
                timeout,
                reply: tx,
            })))
            .await;
        if sent.is_err() {
            return Err(CallError::Closed);
        }
        self.shared.calls_out.fetch_add(1, Ordering::Relaxed);
        // The session's machine times the call out too (its late answer is
        // then dropped); this bounds the wait for a call that waited in
        // the queue for a slot.
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(_)) => Err(CallError::Closed),
            Err(_) => Err(CallError::Timeout),
        }
    }

    /// Sends a one-way notification `M` to the device. Cancel-safe: dropped
    /// before it completes, the notification was either queued whole or
    /// not at all.
    pub async fn notify<M: ToDevice>(&self, args: &M::Args<'_>) -> Result<(), CallError> {
        if self.is_closed() {
            return Err(CallError::Closed);
        }
        let args = encode_args::<M>(args)?;
        if args.len() > connection::max_args_len(self.shared.peer_max_frame, M::NAME) {
            return Err(CallError::TooLarge);
        }
        self.shared
            .queue
            .send(Outbound::Notify(Box::new((M::NAME.to_string(), args))))
            .await
            .map_err(|_| CallError::Closed)
    }

    /// Number of calls to the device still awaiting an answer (abandoned
    /// ones excluded).
    pub fn calls_in_flight(&self) -> usize {
        self.shared.in_flight.load(Ordering::Acquire)
    }

    /// Waits until no call to the device is awaiting an answer.
    pub(crate) async fn wait_idle(&self) {
        loop {
            let notified = self.shared.idle.notified();
            if self.calls_in_flight() == 0 {
                return;
            }
            notified.await;
        }
    }

    /// Marks the session closed and fails every call in flight.
    pub(crate) fn shut(&self) {
        // The session drops the calls' senders, which fails their waiters
        // with `Closed`.
        self.shared.ended.set();
        self.shared.idle.notify_waiters();
    }

    pub(crate) fn close_reason(&self) -> Option<GoodbyeReason> {
        *lock(&self.shared.close_reason)
    }
}

/// A flag set once, which tasks can wait for: what a `CancellationToken`
/// does for a session, kept inside the mind's shared state (a token is an
/// allocation of its own, ~110 bytes per session).
pub(crate) struct Latch {
    set: AtomicBool,
    notify: Notify,
}

impl Latch {
    pub(crate) const fn new() -> Self {
        Self {
            set: AtomicBool::new(false),
            notify: Notify::const_new(),
        }
    }

    /// Sets it and wakes every waiter.
    pub(crate) fn set(&self) {
        self.set.store(true, Ordering::Release);
        self.notify.notify_waiters();
    }

    pub(crate) fn is_set(&self) -> bool {
        self.set.load(Ordering::Acquire)
    }

    /// Completes once it is set (at once if it is). Cancel-safe.
    pub(crate) async fn wait(&self) {
        loop {
            // Registered before the check: a `set` after it wakes this.
            let notified = self.notify.notified();
            if self.is_set() {
                return;
            }
            notified.await;
        }
    }
}

/// Counts one [`Mind`] call waiting for its outcome, for as long as it
/// lives.
struct InFlight<'a>(&'a MindShared);

impl<'a> InFlight<'a> {
    fn new(shared: &'a MindShared) -> Self {
        shared.in_flight.fetch_add(1, Ordering::AcqRel);
        Self(shared)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        // Only the last call wakes `wait_idle`: `notify_waiters` takes a
        // lock every caller of a busy mind would contend for.
        if self.0.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
