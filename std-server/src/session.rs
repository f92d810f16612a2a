//! The per-connection session after login: calls both ways with several in
//! flight, heartbeat and idle timeout, goodbye.
//!
//! One task owns the connection: both halves, the [`Opener`] and the
//! [`Sealer`] (so sequence numbers follow the order of the frames on the
//! wire). It waits for a frame from the device or a message queued by
//! other tasks (the [`Mind`]'s calls, the replies of calls that had to
//! wait), and writes what it has to say only once no whole frame is left
//! in its read buffer: the replies to a burst of calls leave in one write.
//! Every hop to another task is a wake-up, often on the other core, and
//! was most of a call's cost (bench/README.md):
//!
//! - A device's `Call` is polled once right there: a handler that answers
//!   at once (echo, whoami) costs no task. One that has to wait goes on in
//!   a task of its own (at most [`SessionConfig::max_calls_in_flight`] at
//!   once; more get `BUSY`). A panicking handler answers `FAILED`.
//! - A `Reply`/`Error` goes to the [`Mind`] call waiting for it; a `Ping`
//!   is answered with a `Pong`.
//! - Nothing received for three heartbeat intervals ends the session with
//!   `Goodbye { IdleTimeout }`. A frame failing authentication, a replay, a
//!   bad length or an answer to no call ends it at once.
//! - On graceful shutdown, new calls get `SHUTTING_DOWN`, the calls in
//!   flight both ways may finish within the deadline, then the server sends
//!   `Goodbye { Shutdown }`.

use std::collections::HashSet;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use tether_core::frame::{FrameError, HEADER_LEN};
use tether_core::message::{ErrorCode, GoodbyeReason, Message};
use tether_core::session::{Opener, Sealer, SessionError, error_message_that_fits};
use tokio::io::AsyncWriteExt as _;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument as _, Span, debug, warn};

use crate::log_limit::Noisy;
use crate::metrics::{CallMetrics, CallOutcome, Direction, Metrics, Rejection};
use crate::realm::{
    Avatar, CallResult, IncomingCall, Mind, RemoteError, SessionEnd, SessionInfo, lock,
};
use crate::untrusted::Untrusted;
use crate::wire::{FrameReader, ReadError};

/// A message for the session task to send, queued by other tasks.
#[derive(Debug)]
pub(crate) enum Outbound {
    Call {
        id: u32,
        method: String,
        args: Vec<u8>,
    },
    Reply {
        id: u32,
        result: Vec<u8>,
    },
    Error {
        id: u32,
        code: ErrorCode,
        message: String,
    },
    Notify {
        method: String,
        args: Vec<u8>,
    },
}

/// Session limits and timers.
#[derive(Debug, Clone, Copy)]
pub struct SessionConfig {
    /// Interval announced to the device; the session ends after three
    /// intervals without a frame (default 30 s).
    pub heartbeat: Duration,
    /// Calls from the device running at once per session (default 32).
    pub max_calls_in_flight: usize,
    /// Default timeout of [`Mind::call`] (default 30 s).
    pub call_timeout: Duration,
    /// How long in-flight calls may take to finish on graceful shutdown
    /// (default 10 s).
    pub shutdown_deadline: Duration,
    /// Outgoing messages queued per session before senders wait (default 64).
    pub outbound_queue: usize,
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            heartbeat: Duration::from_secs(30),
            max_calls_in_flight: 32,
            call_timeout: Duration::from_secs(30),
            shutdown_deadline: Duration::from_secs(10),
            outbound_queue: 64,
        }
    }
}

impl SessionConfig {
    /// The heartbeat in whole seconds as sent in the welcome (1..=65535).
    pub fn heartbeat_secs(&self) -> u16 {
        self.heartbeat.as_secs().clamp(1, u16::MAX as u64) as u16
    }

    /// How long a session may stay silent: three heartbeat intervals.
    pub fn idle_timeout(&self) -> Duration {
        self.heartbeat * 3
    }
}

/// A logged-in connection, handed from the login to the session.
pub(crate) struct Established<A> {
    pub reader: FrameReader<OwnedReadHalf>,
    pub writer: OwnedWriteHalf,
    pub sealer: Sealer,
    pub opener: Opener,
    pub info: SessionInfo,
    pub avatar: Arc<A>,
    pub mind: Mind,
    pub rx: mpsc::Receiver<Outbound>,
    /// Largest frame body the device accepts.
    pub peer_max_frame: usize,
    pub metrics: Metrics,
}

struct Ending {
    end: SessionEnd,
    goodbye: Option<GoodbyeReason>,
}

impl Ending {
    fn new(end: SessionEnd, goodbye: Option<GoodbyeReason>) -> Self {
        Self { end, goodbye }
    }
}

/// Flush once this much is waiting, even in the middle of a burst.
const BATCH_LIMIT: usize = 16 * 1024;
/// How long the avatar's `attached` may go on after the session ended.
const ATTACHED_GRACE: Duration = Duration::from_secs(1);

/// Runs a session to its end.
pub(crate) async fn run<A: Avatar>(
    est: Established<A>,
    config: SessionConfig,
    shutdown: CancellationToken,
) -> SessionEnd {
    let Established {
        reader,
        writer,
        sealer,
        opener,
        info,
        avatar,
        mind,
        rx,
        peer_max_frame,
        metrics,
    } = est;
    let peer = info.peer;
    let span =
        tracing::info_span!("session", id = info.id, user = %Untrusted(&info.user.username), %peer);
    let attached = Attached::spawn(&avatar, &span);
    let mut session = Session {
        reader,
        opener,
        out: Out::new(writer, sealer, peer_max_frame, peer),
        rx,
        calls: Calls {
            avatar,
            tracker: TaskTracker::new(),
            cancel: CancellationToken::new(),
            in_flight: Arc::default(),
            max: config.max_calls_in_flight,
            shutting_down: AtomicBool::new(false),
            recorded: metrics.calls(Direction::FromDevice),
        },
        mind,
        config,
        metrics,
    };
    let ending = session.run(&shutdown).instrument(span.clone()).await;
    let Session {
        reader,
        mut out,
        mut rx,
        calls,
        mind,
        metrics,
        ..
    } = session;

    // The mind stops working; calls from the device still running are
    // cancelled. What was queued before the end is sent, then the goodbye.
    mind.shut();
    calls.cancel.cancel();
    calls.tracker.close();
    let closing = async {
        let waiting = calls.tracker.wait();
        tokio::pin!(waiting);
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            loop {
                tokio::select! {
                    _ = &mut waiting => break,
                    Some(o) = rx.recv() => out.push(&o),
                }
            }
        })
        .await;
        while let Ok(o) = rx.try_recv() {
            out.push(&o);
        }
        if let Some(reason) = ending.goodbye {
            out.push_message(&Message::Goodbye { reason });
        }
        if out.flush().await.is_ok() {
            let _ = out.writer.shutdown().await;
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(2), closing).await;
    drop(reader);
    attached.finish().await;
    let end = ending.end;
    match &end {
        SessionEnd::ProtocolError(e) => {
            if metrics.log_limit().allow(Noisy::SessionProtocolError) {
                warn!(session = info.id, user = %Untrusted(&info.user.username), %peer, error = %e, "session closed: protocol error")
            }
        }
        other => {
            debug!(session = info.id, user = %Untrusted(&info.user.username), %peer, end = %other, "session ended")
        }
    }
    calls.avatar.detached(end.clone()).instrument(span).await;
    end
}

/// The avatar's `attached`, running beside the session in its own task.
/// The task is not joined (a finished task kept for its handle would cost
/// an idle session ~900 bytes); two tokens say when it is done and when it
/// must stop.
struct Attached {
    done: CancellationToken,
    stop: CancellationToken,
}

impl Attached {
    fn spawn<A: Avatar>(avatar: &Arc<A>, span: &Span) -> Self {
        let (done, stop) = (CancellationToken::new(), CancellationToken::new());
        let avatar = avatar.clone();
        let (finished, stopped) = (done.clone().drop_guard(), stop.clone());
        tokio::spawn(
            async move {
                let _finished = finished;
                tokio::select! {
                    _ = avatar.attached() => {}
                    _ = stopped.cancelled() => {}
                }
            }
            .instrument(span.clone()),
        );
        Self { done, stop }
    }

    /// Gives `attached` [`ATTACHED_GRACE`] to return, then cancels it; it
    /// has ended when this returns, so `detached` always comes after it.
    async fn finish(self) {
        if tokio::time::timeout(ATTACHED_GRACE, self.done.cancelled())
            .await
            .is_err()
        {
            self.stop.cancel();
            self.done.cancelled().await;
        }
    }
}

/// The session task's state.
struct Session<A> {
    reader: FrameReader<OwnedReadHalf>,
    opener: Opener,
    out: Out,
    rx: mpsc::Receiver<Outbound>,
    calls: Calls<A>,
    mind: Mind,
    config: SessionConfig,
    metrics: Metrics,
}

/// What woke the session.
enum Event<'a> {
    Frame(Result<&'a [u8], ReadError>),
    Queued(Outbound),
    IdleCheck,
    Kicked,
    ShutdownStarts,
    Drained(bool),
}

impl<A: Avatar> Session<A> {
    async fn run(&mut self, shutdown: &CancellationToken) -> Ending {
        let idle_timeout = self.config.idle_timeout();
        let mut last_frame = Instant::now();
        // Re-armed only when it fires (re-arming per frame costs a timer
        // update per call).
        let idle = tokio::time::sleep(idle_timeout);
        tokio::pin!(idle);
        let mut drain: Option<Pin<Box<dyn Future<Output = bool> + Send>>> = None;
        let kicked = self.mind.shared.close.clone();
        loop {
            // Every whole frame already buffered is handled before writing.
            if !self.reader.has_frame()
                && self.out.pending()
                && let Err(ending) = self.flush(&kicked).await
            {
                return ending;
            }
            let event = tokio::select! {
                r = self.reader.next() => Event::Frame(r),
                Some(o) = self.rx.recv() => Event::Queued(o),
                _ = &mut idle => Event::IdleCheck,
                _ = kicked.cancelled() => Event::Kicked,
                _ = shutdown.cancelled(), if drain.is_none() => Event::ShutdownStarts,
                drained = async { drain.as_mut().expect("guarded").await }, if drain.is_some() => {
                    Event::Drained(drained)
                }
            };
            match event {
                Event::Frame(Ok(body)) => {
                    last_frame = Instant::now();
                    if let Some(ending) = on_frame(
                        body,
                        &mut self.opener,
                        &mut self.out,
                        &self.calls,
                        &self.mind,
                        &self.metrics,
                    ) {
                        return ending;
                    }
                }
                Event::Frame(Err(e)) => return read_error(e, &self.metrics),
                Event::Queued(o) => {
                    self.out.push(&o);
                    while self.out.batch.len() < BATCH_LIMIT
                        && let Ok(o) = self.rx.try_recv()
                    {
                        self.out.push(&o);
                    }
                }
                Event::IdleCheck => {
                    let deadline = last_frame + idle_timeout;
                    if Instant::now() >= deadline {
                        return Ending::new(
                            SessionEnd::IdleTimeout,
                            Some(GoodbyeReason::IdleTimeout),
                        );
                    }
                    idle.as_mut().reset(deadline.into());
                }
                Event::Kicked => {
                    let reason = self.kick_reason();
                    return Ending::new(SessionEnd::Kicked(reason), Some(reason));
                }
                Event::ShutdownStarts => {
                    self.calls.shutting_down.store(true, Ordering::Release);
                    debug!("shutting down: letting calls in flight finish");
                    let (tracker, mind) = (self.calls.tracker.clone(), self.mind.clone());
                    let deadline = self.config.shutdown_deadline;
                    drain = Some(Box::pin(async move {
                        tracker.close();
                        let idle = async {
                            tracker.wait().await;
                            mind.wait_idle().await;
                        };
                        tokio::time::timeout(deadline, idle).await.is_ok()
                    }));
                }
                Event::Drained(finished) => {
                    if !finished {
                        warn!("calls still in flight at the shutdown deadline; cancelling them");
                    }
                    return Ending::new(SessionEnd::Shutdown, Some(GoodbyeReason::Shutdown));
                }
            }
            if self.out.batch.len() >= BATCH_LIMIT
                && let Err(ending) = self.flush(&kicked).await
            {
                return ending;
            }
        }
    }

    /// Why the session was closed through its mind (`Kicked` unless the
    /// closer said otherwise).
    fn kick_reason(&self) -> GoodbyeReason {
        self.mind.close_reason().unwrap_or(GoodbyeReason::Kicked)
    }

    /// Writes what is batched. A device that reads nothing for the idle
    /// timeout, or a kick while the write is blocked, ends the session; the
    /// stream may then be cut in the middle of a frame and nothing more may
    /// be written to it (no goodbye). A kick never pre-empts a write that
    /// can go through: the write is polled first.
    async fn flush(&mut self, kicked: &CancellationToken) -> Result<(), Ending> {
        let limit = self.config.idle_timeout();
        let result = tokio::select! {
            biased;
            r = tokio::time::timeout(limit, self.out.flush()) => match r {
                Ok(r) => r.map_err(|e| SessionEnd::Io(e.to_string())),
                Err(_) => Err(SessionEnd::Io(format!(
                    "device read nothing for {} s",
                    limit.as_secs()
                ))),
            },
            _ = kicked.cancelled() => Err(SessionEnd::Kicked(self.kick_reason())),
        };
        result.map_err(|end| {
            self.out.broken = true;
            Ending::new(end, None)
        })
    }
}

fn read_error(e: ReadError, metrics: &Metrics) -> Ending {
    match e {
        ReadError::Closed => Ending::new(SessionEnd::Closed, None),
        ReadError::Frame(e) => {
            metrics.rejected(Rejection::BadFrame);
            Ending::new(
                SessionEnd::ProtocolError(format!("bad frame: {e}")),
                Some(GoodbyeReason::ProtocolError),
            )
        }
        e @ (ReadError::Truncated | ReadError::Io(_)) => {
            Ending::new(SessionEnd::Io(e.to_string()), None)
        }
    }
}

/// Handles one frame from the device; `Some` ends the session.
fn on_frame<A: Avatar>(
    body: &[u8],
    opener: &mut Opener,
    out: &mut Out,
    calls: &Calls<A>,
    mind: &Mind,
    metrics: &Metrics,
) -> Option<Ending> {
    let msg = match opener.open(body) {
        Ok(msg) => msg,
        Err(e) => {
            metrics.rejected(match e {
                SessionError::BadTag => Rejection::BadTag,
                SessionError::Replayed { .. } => Rejection::Replayed,
                SessionError::OutOfOrder { .. } => Rejection::OutOfOrder,
                SessionError::TooShort { .. } => Rejection::TooShort,
                _ => Rejection::Undecodable,
            });
            let reason = match e {
                SessionError::BadTag
                | SessionError::Replayed { .. }
                | SessionError::OutOfOrder { .. }
                | SessionError::TooShort { .. } => GoodbyeReason::BadTag,
                _ => GoodbyeReason::ProtocolError,
            };
            return Some(Ending::new(
                SessionEnd::ProtocolError(e.to_string()),
                Some(reason),
            ));
        }
    };
    match msg {
        Message::Call { id, method, args } => {
            mind.shared.calls_in.fetch_add(1, Ordering::Relaxed);
            return calls.start(id, method, args, mind, out, metrics);
        }
        Message::Reply { id, result } => {
            if !mind.resolve(id, Ok(result.to_vec())) {
                metrics.rejected(Rejection::UnknownReply);
                return Some(Ending::new(
                    SessionEnd::ProtocolError(format!("reply to call {id}, not in flight")),
                    Some(GoodbyeReason::ProtocolError),
                ));
            }
        }
        Message::Error { id, code, message } => {
            let err = RemoteError::new(code, message);
            if !mind.resolve(id, Err(err)) {
                metrics.rejected(Rejection::UnknownReply);
                return Some(Ending::new(
                    SessionEnd::ProtocolError(format!("error for call {id}, not in flight")),
                    Some(GoodbyeReason::ProtocolError),
                ));
            }
        }
        Message::Notify { method, args } => calls.notify(method, args),
        Message::Ping { nonce } => out.push_message(&Message::Pong { nonce }),
        Message::Pong { .. } => {}
        Message::Goodbye { reason } => {
            debug!(%reason, "device said goodbye");
            return Some(Ending::new(SessionEnd::Goodbye(reason), None));
        }
    }
    None
}

/// The device's calls (and notifications) to the avatar.
struct Calls<A> {
    avatar: Arc<A>,
    /// Calls and notifications that had to wait, each in its own task.
    tracker: TaskTracker,
    /// Cancels them when the session ends.
    cancel: CancellationToken,
    in_flight: Arc<Mutex<HashSet<u32>>>,
    max: usize,
    shutting_down: AtomicBool,
    recorded: CallMetrics,
}

impl<A: Avatar> Calls<A> {
    /// Admits a call and runs it: answered at once if the handler is ready
    /// on its first poll, else from its own task through the mind's queue.
    fn start(
        &self,
        id: u32,
        method: &str,
        args: &[u8],
        mind: &Mind,
        out: &mut Out,
        metrics: &Metrics,
    ) -> Option<Ending> {
        let refused = if self.shutting_down.load(Ordering::Acquire) {
            Some((ErrorCode::SHUTTING_DOWN, "server is shutting down"))
        } else {
            let mut set = lock(&self.in_flight);
            if set.contains(&id) {
                drop(set);
                metrics.rejected(Rejection::DuplicateCall);
                return Some(Ending::new(
                    SessionEnd::ProtocolError(format!("call id {id} already in flight")),
                    Some(GoodbyeReason::ProtocolError),
                ));
            }
            if set.len() >= self.max {
                Some((ErrorCode::BUSY, "too many calls in flight"))
            } else {
                set.insert(id);
                None
            }
        };
        if let Some((code, message)) = refused {
            self.recorded.record(CallOutcome::Rejected, Duration::ZERO);
            out.push_message(&Message::Error { id, code, message });
            return None;
        }
        let call = IncomingCall {
            id,
            method: method.to_string(),
            args: args.to_vec(),
        };
        let started = Instant::now();
        let avatar = self.avatar.clone();
        let mut call = CatchUnwind(Box::pin(async move { avatar.call(call).await }));
        match poll_once(&mut call) {
            Poll::Ready(result) => {
                out.push(&finish_call(
                    id,
                    result,
                    &self.in_flight,
                    &self.recorded,
                    started,
                ));
            }
            Poll::Pending => {
                let (in_flight, recorded) = (self.in_flight.clone(), self.recorded.clone());
                let (cancel, tx) = (self.cancel.clone(), mind.shared.tx.clone());
                self.tracker.spawn(
                    async move {
                        let result = tokio::select! {
                            r = call => r,
                            _ = cancel.cancelled() => {
                                recorded.record(CallOutcome::Closed, started.elapsed());
                                return;
                            }
                        };
                        let reply = finish_call(id, result, &in_flight, &recorded, started);
                        let _ = tx.send(reply).await;
                    }
                    .in_current_span(),
                );
            }
        }
        None
    }

    /// Hands a notification to the avatar, the same way as a call.
    fn notify(&self, method: &str, args: &[u8]) {
        let avatar = self.avatar.clone();
        let (method, args) = (method.to_string(), args.to_vec());
        let mut notify = CatchUnwind(Box::pin(async move { avatar.notify(method, args).await }));
        match poll_once(&mut notify) {
            Poll::Ready(Ok(())) => {}
            Poll::Ready(Err(Panicked)) => warn!("notification handler panicked"),
            Poll::Pending => {
                let cancel = self.cancel.clone();
                self.tracker.spawn(
                    async move {
                        tokio::select! {
                            r = notify => if r.is_err() { warn!("notification handler panicked") },
                            _ = cancel.cancelled() => {}
                        }
                    }
                    .in_current_span(),
                );
            }
        }
    }
}

/// The answer to a finished call, recorded.
fn finish_call(
    id: u32,
    result: Result<CallResult, Panicked>,
    in_flight: &Mutex<HashSet<u32>>,
    recorded: &CallMetrics,
    started: Instant,
) -> Outbound {
    let result = result.unwrap_or_else(|Panicked| {
        warn!(id, "call handler panicked");
        Err(RemoteError::failed("internal error"))
    });
    recorded.record(
        if result.is_ok() {
            CallOutcome::Ok
        } else {
            CallOutcome::Error
        },
        started.elapsed(),
    );
    lock(in_flight).remove(&id);
    match result {
        Ok(result) => Outbound::Reply { id, result },
        Err(RemoteError { code, message }) => {
            debug!(id, %code, "call failed");
            Outbound::Error { id, code, message }
        }
    }
}

/// A handler panicked.
#[derive(Debug)]
struct Panicked;

/// A handler's future, with a panic in its `poll` turned into
/// [`Panicked`] (the caller drops the future then, never polls it again).
struct CatchUnwind<F>(Pin<Box<F>>);

impl<F: Future> Future for CatchUnwind<F> {
    type Output = Result<F::Output, Panicked>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let inner = self.0.as_mut();
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| inner.poll(cx))) {
            Ok(Poll::Ready(v)) => Poll::Ready(Ok(v)),
            Ok(Poll::Pending) => Poll::Pending,
            Err(_) => Poll::Ready(Err(Panicked)),
        }
    }
}

/// Polls a handler once on the session's task. A future that is pending
/// has registered this no-op waker only; it registers the real one when
/// its own task polls it again, which is all a waker promises.
fn poll_once<F: Future>(f: &mut CatchUnwind<F>) -> Poll<Result<F::Output, Panicked>> {
    Pin::new(f).poll(&mut Context::from_waker(Waker::noop()))
}

/// The write side: messages are sealed in order into one buffer and written
/// together by [`Out::flush`].
struct Out {
    writer: OwnedWriteHalf,
    sealer: Sealer,
    /// One sealed frame (the device's largest).
    frame: Vec<u8>,
    /// Sealed frames waiting for the next flush.
    batch: Vec<u8>,
    peer_max: usize,
    peer: SocketAddr,
    /// Nothing more may be written (a write was cut, or sealing failed).
    broken: bool,
}

impl Out {
    fn new(writer: OwnedWriteHalf, sealer: Sealer, peer_max: usize, peer: SocketAddr) -> Self {
        Self {
            writer,
            sealer,
            frame: vec![0u8; HEADER_LEN + peer_max],
            batch: Vec::new(),
            peer_max,
            peer,
            broken: false,
        }
    }

    fn pending(&self) -> bool {
        !self.batch.is_empty() || self.broken
    }

    fn push(&mut self, out: &Outbound) {
        let msg = match out {
            Outbound::Call { id, method, args } => Message::Call {
                id: *id,
                method,
                args,
            },
            Outbound::Reply { id, result } => Message::Reply { id: *id, result },
            Outbound::Error { id, code, message } => Message::Error {
                id: *id,
                code: *code,
                message,
            },
            Outbound::Notify { method, args } => Message::Notify { method, args },
        };
        self.push_message(&msg);
    }

    /// Seals a message into the batch. Every call gets an answer: a reply
    /// too large for the device becomes a `FAILED` error, an error too
    /// large keeps its code with its text cut to fit
    /// ([`error_message_that_fits`]). Any other message too large is
    /// dropped with a warning (calls and notifications are checked against
    /// the device's frame before they are queued); a message that cannot be
    /// sealed at all breaks the session (the next flush fails).
    fn push_message(&mut self, msg: &Message<'_>) {
        if self.broken {
            return;
        }
        let peer = self.peer;
        match self.sealer.seal(msg, &mut self.frame, self.peer_max) {
            Ok(frame) => self.batch.extend_from_slice(frame),
            Err(SessionError::Frame(
                FrameError::TooLong { .. } | FrameError::BufferTooSmall { .. },
            )) => {
                let (id, code, message) = match *msg {
                    Message::Reply { id, .. } => (
                        id,
                        ErrorCode::FAILED,
                        "reply larger than the device's max frame",
                    ),
                    Message::Error { id, code, message } => (id, code, message),
                    _ => {
                        warn!(%peer, "message too large for the device's max frame; dropped");
                        return;
                    }
                };
                let message = error_message_that_fits(id, code, message, self.peer_max);
                let error = Message::Error { id, code, message };
                match self.sealer.seal(&error, &mut self.frame, self.peer_max) {
                    Ok(frame) => self.batch.extend_from_slice(frame),
                    Err(e) => {
                        warn!(%peer, error = %e, "cannot seal error reply; closing");
                        self.broken = true;
                    }
                }
            }
            Err(e) => {
                warn!(%peer, error = %e, "cannot seal message; closing");
                self.broken = true;
            }
        }
    }

    /// Writes the batch with one `write_all`.
    async fn flush(&mut self) -> std::io::Result<()> {
        if self.broken {
            return Err(std::io::Error::other(
                "session broken: nothing more may be sent",
            ));
        }
        if self.batch.is_empty() {
            return Ok(());
        }
        let written = self.writer.write_all(&self.batch).await;
        self.batch.clear();
        written
    }
}
