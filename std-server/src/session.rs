//! The session after login: tether-server's driver of tether-core's
//! established [`ServerConnection`], which owns every rule of the session
//! (docs/CONNECTION.md): frame sizes, call ids and the table of calls in
//! flight, late replies, `busy` and `shutting_down`, the idle limit, which
//! error gets which goodbye. This file moves bytes and time to it, and
//! runs the realm: the avatar's handlers, the [`Mind`]'s calls.
//!
//! One task owns the connection and its socket, so sequence numbers
//! follow the order of the frames on the wire. It waits for the socket to
//! be readable, a message queued by other tasks (the [`Mind`]'s calls, the
//! answers of calls that had to wait), the machine's next deadline, a kick
//! or the shutdown; it handles every whole frame it has read before it
//! writes, so the answers to a burst of calls leave in one write. Every hop
//! to another task is a wake-up, often on the other core, and was most of
//! a call's cost (bench/README.md):
//!
//! - A device's `Call` is polled once right there: a handler that answers
//!   at once (echo, whoami) costs no task. One that has to wait goes on in
//!   a task of its own, which hands its answer (and the call's
//!   [`ReplyToken`]) back through the queue. A panicking handler answers
//!   `FAILED`.
//! - An idle session holds no read or write buffer: they are lent from a
//!   per-thread pool (`lease.rs`) while bytes are in flight.
//! - On graceful shutdown the machine answers new calls `SHUTTING_DOWN`;
//!   the calls in flight both ways may finish within the deadline, then
//!   the session says `Goodbye { Shutdown }`.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tether_core::connection::{
    CallFailure, ConnectionError, Event, Growable, ReplyToken, SendError, ServerConnection,
    Violation,
};
use tether_core::frame::{FrameError, HEADER_LEN};
use tether_core::message::GoodbyeReason;
use tether_core::session::SessionError;
use tokio::io::AsyncWriteExt as _;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument as _, debug, warn};

use crate::lease::{self, RxStorage};
use crate::log_limit::Noisy;
use crate::metrics::{CallMetrics, CallOutcome, Direction, Metrics, Rejection};
use crate::realm::{
    Avatar, CallError, CallResult, IncomingCall, Mind, MindShared, RemoteError, SessionEnd,
    SessionInfo,
};
use crate::stream::Stream;
use crate::untrusted::Untrusted;

/// Bound of the server's table of its calls to the device waiting for a
/// reply; more [`Mind`] calls wait in the session's queue for a slot.
pub(crate) const CALLS: usize = 32;
/// Most calls of the device that may be owed an answer at once (the cap
/// of [`SessionConfig::max_calls_in_flight`]).
pub(crate) const ANSWERS: usize = 64;

/// The established connection as the server runs it: both call tables
/// grow on demand up to their bounds and are released when the session is
/// quiet (an idle session holds none; fixed, they were 768 bytes).
pub(crate) type ServerConn = ServerConnection<RxStorage, CALLS, ANSWERS, Growable>;

/// The machine's clock: milliseconds since the first use in this process
/// (tokio's clock, so that tests with a paused clock drive it).
pub(crate) mod clock {
    use std::sync::OnceLock;
    use std::time::Duration;

    use tether_core::connection::Instant;

    fn origin() -> tokio::time::Instant {
        static ORIGIN: OnceLock<tokio::time::Instant> = OnceLock::new();
        *ORIGIN.get_or_init(tokio::time::Instant::now)
    }

    /// Now, for the machine.
    pub(crate) fn now() -> Instant {
        let ms = tokio::time::Instant::now()
            .saturating_duration_since(origin())
            .as_millis();
        Instant::from_millis(u64::try_from(ms).unwrap_or(u64::MAX))
    }

    /// The machine's instant on tokio's clock.
    pub(crate) fn to_tokio(at: Instant) -> tokio::time::Instant {
        origin() + Duration::from_millis(at.as_millis())
    }
}

/// A [`Mind`] call's outcome, sent back to the caller.
pub(crate) type CallReply = oneshot::Sender<Result<Vec<u8>, CallError>>;

/// A message for the session task to send, queued by other tasks
/// ([`crate::queue`]). Each is one pointer, so that the queue's buffer,
/// allocated while messages wait, stays small.
#[derive(Debug)]
pub(crate) enum Outbound {
    /// A [`Mind`] call: the machine gives it its id.
    Call(Box<MindCall>),
    /// The answer of a device's call whose handler had to wait.
    Answer(Box<(ReplyToken, CallResult)>),
    /// A [`Mind`] notification: method, arguments.
    Notify(Box<(String, Vec<u8>)>),
}

/// A [`Mind`] call on its way to the session.
#[derive(Debug)]
pub(crate) struct MindCall {
    pub(crate) method: String,
    pub(crate) args: Vec<u8>,
    pub(crate) timeout: Duration,
    pub(crate) reply: CallReply,
}

/// Session limits and timers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionConfig {
    /// Interval announced to the device, in whole seconds (at least 1);
    /// the session ends after three announced intervals without a frame
    /// (default 30 s).
    pub heartbeat: Duration,
    /// Calls from the device running at once per session (default 32, at
    /// most 64).
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

    /// How long a write to a device that reads nothing may stay blocked
    /// before the session ends: as long as the machine's idle limit
    /// ([`tether_core::connection::idle_limit`], three heartbeat intervals),
    /// which ends a silent session.
    pub fn idle_timeout(&self) -> Duration {
        tether_core::connection::idle_limit(self.heartbeat_secs()).unwrap_or(Duration::MAX)
    }
}

/// A logged-in connection, handed from the login to the session.
pub(crate) struct Established<A> {
    pub stream: Stream,
    pub conn: Box<ServerConn>,
    pub info: SessionInfo,
    pub avatar: Arc<A>,
    pub mind: Mind,
    pub metrics: Metrics,
    pub config: SessionConfig,
}

struct Ending {
    end: SessionEnd,
    /// The goodbye to close an open connection with (the machine owes its
    /// own when it ended the connection).
    goodbye: Option<GoodbyeReason>,
}

impl Ending {
    fn new(end: SessionEnd, goodbye: Option<GoodbyeReason>) -> Self {
        Self { end, goodbye }
    }
}

/// Flush once this much is waiting, even in the middle of a burst.
const BATCH_LIMIT: usize = 16 * 1024;
/// Bytes read at once (lent while they are being handled).
const READ_AHEAD: usize = 16 * 1024;
/// Room for a frame the machine owes (pong, `busy`, goodbye).
const OWED_ROOM: usize = 128;
/// How long the avatar's `attached` may go on after the session ended.
const ATTACHED_GRACE: Duration = Duration::from_secs(1);

/// Runs a session to its end.
pub(crate) async fn run<A: Avatar>(
    est: Box<Established<A>>,
    shutdown: CancellationToken,
) -> SessionEnd {
    // (Made by a plain function: its locals are not kept in this future.)
    let (mut session, queue, metrics) = start(est);
    let ending = session.run(&shutdown).await;
    // The end, boxed: its timers and futures (~500 bytes) exist only while
    // the session closes, not in every idle session's task.
    Box::pin(finish(session, queue, metrics, ending)).await
}

/// The session's state, from the login's.
fn start<A: Avatar>(est: Box<Established<A>>) -> (Session<A>, QueueGuard, Metrics) {
    let Established {
        stream,
        conn,
        info,
        avatar,
        mind,
        metrics,
        config,
    } = *est;
    // The session keeps its id only: the username and the peer are the
    // mind's (a whole `SessionInfo` is ~180 bytes and a string).
    let session_id = info.id;
    drop(info);
    let span = session_span(session_id, &mind);
    // Closed when the session is done with it, however it ends: what is
    // still queued is dropped, its senders learn the session closed.
    let queue = QueueGuard(mind.clone());
    let attached = {
        let avatar = avatar.clone();
        let attached: Pin<Box<dyn Future<Output = ()> + Send>> =
            Box::pin(async move { avatar.attached().await }.instrument(span.clone()));
        CatchUnwind(attached)
    };
    let session = Session {
        io: Io {
            stream,
            conn,
            read: ReadAhead::default(),
            batch: Batch::default(),
            waiters: Vec::new(),
            parked: VecDeque::new(),
            metrics: metrics.clone(),
            broken: false,
            events: 0,
        },
        calls: Calls {
            avatar,
            tracker: OnceLock::new(),
            recorded: metrics.calls(Direction::FromDevice),
        },
        mind,
        shutdown_deadline: config.shutdown_deadline,
        heartbeat_secs: config.heartbeat_secs(),
        attached: Some(attached),
        id: session_id,
        span: Some(span),
    };
    (session, queue, metrics)
}

/// Closes a session that has ended: what is owed is sent, the avatar is
/// detached.
async fn finish<A: Avatar>(
    session: Session<A>,
    queue: QueueGuard,
    metrics: Metrics,
    ending: Ending,
) -> SessionEnd {
    let Session {
        mut io,
        calls,
        mind,
        attached,
        span,
        id: session_id,
        ..
    } = session;
    let span = span.unwrap_or_else(|| session_span(session_id, &mind));

    // The mind stops working; calls from the device still running are
    // cancelled. What they answered before the end is sent, then the
    // goodbye (unless the machine ended the connection with its own).
    mind.shut();
    io.waiters.clear();
    io.parked.clear();
    let tracker = calls.tracker();
    tracker.close();
    let closing = async {
        let waiting = tracker.wait();
        tokio::pin!(waiting);
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            loop {
                tokio::select! {
                    _ = &mut waiting => break,
                    o = queue.0.shared.queue.recv() => io.queued(o),
                }
            }
        })
        .await;
        while let Some(o) = queue.0.shared.queue.try_recv() {
            io.queued(o);
        }
        if let Some(reason) = ending.goodbye {
            io.conn.close(reason);
        }
        io.transmit_owed();
        if !io.broken && io.flush_now().await.is_ok() {
            let _ = io.stream.shutdown().await;
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(2), closing).await;
    drop(queue);
    drop(io);
    // `attached` may go on for a moment, then it is cancelled (dropped):
    // it has ended before `detached`.
    if let Some(attached) = attached {
        let finished = tokio::time::timeout(ATTACHED_GRACE, attached)
            .instrument(span.clone())
            .await;
        if let Ok(Err(Panicked)) = finished {
            warn!(session = session_id, "attached panicked");
        }
    }
    let end = ending.end;
    match &end {
        SessionEnd::ProtocolError(e) => {
            if metrics.log_limit().allow(Noisy::SessionProtocolError) {
                warn!(session = session_id, user = %Untrusted(mind.username()), peer = %mind.peer(), error = %e, "session closed: protocol error")
            }
        }
        other => {
            debug!(session = session_id, user = %Untrusted(mind.username()), peer = %mind.peer(), end = %other, "session ended")
        }
    }
    calls.avatar.detached(end.clone()).instrument(span).await;
    end
}

/// The span of a session's log lines (`session{id user peer}`; its fields
/// are a stable part of the JSON log format, std-server/README.md).
fn session_span(id: u64, mind: &Mind) -> tracing::Span {
    tracing::info_span!("session", id, user = %Untrusted(mind.username()), peer = %mind.peer())
}

/// How long a session must have handled no message before it gives its
/// span back while it sleeps (made again at the next wake-up).
const SPAN_QUIET: Duration = Duration::from_secs(1);

/// Completes once the session is asked to close ([`Mind::close`]): the
/// closer wakes the waker it finds beside the flag, so waiting holds no
/// waiter of its own.
fn kick(mind: &MindShared) -> impl Future<Output = ()> + '_ {
    std::future::poll_fn(move |cx| {
        // Registered before the check: a close after it wakes this task.
        {
            let mut waker = crate::realm::lock(&mind.kick_waker);
            match &mut *waker {
                Some(w) if w.will_wake(cx.waker()) => {}
                slot => *slot = Some(cx.waker().clone()),
            }
        }
        if mind.close.load(std::sync::atomic::Ordering::Acquire) {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    })
}

/// Closes the mind's queue when dropped.
struct QueueGuard(Mind);

impl Drop for QueueGuard {
    fn drop(&mut self) {
        self.0.shared.queue.close();
    }
}

/// The session task's state.
struct Session<A> {
    io: Io,
    calls: Calls<A>,
    mind: Mind,
    /// How long calls in flight may take to finish on graceful shutdown.
    shutdown_deadline: Duration,
    /// The announced heartbeat: a write may stay blocked for the idle
    /// limit ([`SessionConfig::idle_timeout`]).
    heartbeat_secs: u16,
    /// The avatar's `attached`, run by the session's task until it returns
    /// (a task of its own would cost an idle session its task, two
    /// cancellation tokens and its span's copy).
    attached: Option<AttachedFuture>,
    id: u64,
    /// The session's span, entered while the task handles what woke it.
    /// A session that has been quiet for [`SPAN_QUIET`] sleeps without
    /// one: a span costs ~370 bytes in four allocations (the registry's
    /// slot, the map and box of its extensions, its formatted fields).
    span: Option<tracing::Span>,
}

/// The avatar's `attached`, boxed: it holds its memory only while it runs.
type AttachedFuture = CatchUnwind<dyn Future<Output = ()> + Send>;

/// What woke the session.
enum Wake {
    Readable,
    Queued(Outbound),
    Timer,
    Kicked,
    ShutdownStarts,
    Drained(bool),
    Attached(Result<(), Panicked>),
}

impl<A: Avatar> Session<A> {
    async fn run(&mut self, shutdown: &CancellationToken) -> Ending {
        // Re-armed only when it fires or the machine wants an earlier
        // deadline (re-arming per frame costs a timer update per call).
        let timer = tokio::time::sleep(Duration::ZERO);
        tokio::pin!(timer);
        // When it is armed for (`u64::MAX`: not armed; one word, not an
        // `Option` of two).
        let mut armed = u64::MAX;
        let mut drain: Option<Pin<Box<dyn Future<Output = bool> + Send>>> = None;
        // (Its own handle on the mind: `self` is borrowed mutably below.)
        let mind = self.mind.clone();
        let kicked = &*mind.shared;
        let (mut seen, mut quiet_since) = (0, clock::now());
        loop {
            self.make_span();
            let entered = self.span.as_ref().map(tracing::Span::enter);
            // (In a block: the result is not kept in the future.)
            {
                let handled = self.io.handle_input(&self.calls, &self.mind);
                drop(entered);
                if let Err(ending) = handled {
                    return ending;
                }
            }
            if self.io.batch.pending()
                && let Err(ending) = self.flush(kicked).await
            {
                return ending;
            }
            self.io.release_idle();
            if let Some(at) = self.io.conn.poll_timeout()
                && at.as_millis() < armed
            {
                timer.as_mut().reset(clock::to_tokio(at));
                armed = at.as_millis();
            }
            if self.io.events != seen {
                (seen, quiet_since) = (self.io.events, clock::now());
            } else if self.attached.is_none()
                && drain.is_none()
                && clock::now().saturating_duration_since(quiet_since) >= SPAN_QUIET
            {
                // Quiet: the span and the call tables' storage go while it
                // sleeps (kept while busy: no allocation per call).
                self.span = None;
                self.io.conn.release_tables();
            }
            let io = &mut self.io;
            let attached = &mut self.attached;
            let wake = tokio::select! {
                r = io.stream.readable() => match r {
                    Ok(()) => Wake::Readable,
                    Err(e) => return Ending::new(SessionEnd::Io(e.to_string()), None),
                },
                o = self.mind.shared.queue.recv() => Wake::Queued(o),
                _ = &mut timer, if armed != u64::MAX => Wake::Timer,
                _ = kick(kicked) => Wake::Kicked,
                _ = shutdown.cancelled(), if drain.is_none() => Wake::ShutdownStarts,
                drained = async { drain.as_mut().expect("guarded").await }, if drain.is_some() => {
                    Wake::Drained(drained)
                }
                r = async { attached.as_mut().expect("guarded").await }, if attached.is_some() => {
                    Wake::Attached(r)
                }
            };
            self.make_span();
            let _entered = self.span.as_ref().map(tracing::Span::enter);
            // Awake: senders need not wake it again until it waits (as a
            // dropped `Notified` no longer wanted waking).
            self.mind.shared.queue.unregister();
            match wake {
                Wake::Readable => {
                    if let Err(ending) = self.io.read() {
                        return ending;
                    }
                }
                Wake::Queued(o) => {
                    self.io.queued(o);
                    while self.io.batch.used < BATCH_LIMIT
                        && let Some(o) = self.mind.shared.queue.try_recv()
                    {
                        self.io.queued(o);
                    }
                }
                Wake::Timer => {
                    armed = u64::MAX;
                    self.io.conn.handle_timeout(clock::now());
                }
                Wake::Kicked => {
                    let reason = self.kick_reason();
                    return Ending::new(SessionEnd::Kicked(reason), Some(reason));
                }
                Wake::ShutdownStarts => {
                    self.io.conn.start_shutdown();
                    debug!("shutting down: letting calls in flight finish");
                    let (tracker, mind) = (self.calls.tracker().clone(), self.mind.clone());
                    let deadline = self.shutdown_deadline;
                    drain = Some(Box::pin(async move {
                        tracker.close();
                        let idle = async {
                            tracker.wait().await;
                            mind.wait_idle().await;
                        };
                        tokio::time::timeout(deadline, idle).await.is_ok()
                    }));
                }
                Wake::Attached(r) => {
                    self.attached = None;
                    if r.is_err() {
                        warn!("attached panicked");
                    }
                }
                Wake::Drained(finished) => {
                    if !finished {
                        warn!("calls still in flight at the shutdown deadline; cancelling them");
                    }
                    return Ending::new(SessionEnd::Shutdown, Some(GoodbyeReason::Shutdown));
                }
            }
        }
    }

    /// Makes the session's span again if it was given back.
    fn make_span(&mut self) {
        if self.span.is_none() {
            self.span = Some(session_span(self.id, &self.mind));
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
    async fn flush(&mut self, kicked: &MindShared) -> Result<(), Ending> {
        let limit =
            tether_core::connection::idle_limit(self.heartbeat_secs).unwrap_or(Duration::MAX);
        let result = tokio::select! {
            biased;
            r = tokio::time::timeout(limit, self.io.flush_now()) => match r {
                Ok(r) => r.map_err(|e| SessionEnd::Io(e.to_string())),
                Err(_) => Err(SessionEnd::Io(format!(
                    "device read nothing for {} s",
                    limit.as_secs()
                ))),
            },
            _ = kick(kicked) => Err(SessionEnd::Kicked(self.kick_reason())),
        };
        result.map_err(|end| {
            self.io.broken = true;
            self.io.conn.abort();
            Ending::new(end, None)
        })
    }
}

/// The socket, the machine and the buffers lent to them.
struct Io {
    stream: Stream,
    /// Boxed: the machine's fixed tables (~1.3 KiB) exist once, never
    /// copied into the several states of the session's future.
    conn: Box<ServerConn>,
    read: ReadAhead,
    batch: Batch,
    /// The [`Mind`] calls in flight, by the id the machine gave them: where
    /// their outcome goes.
    /// (At most the machine's `CALLS`: a short list, searched in order.)
    waiters: Vec<(u32, CallReply)>,
    /// [`Mind`] calls waiting for a slot of the machine's table.
    parked: VecDeque<Box<MindCall>>,
    metrics: Metrics,
    /// Nothing more may be written (a write failed or was cut).
    broken: bool,
    /// Messages handled (events of the machine, queued messages): whether
    /// the session has been quiet.
    events: u32,
}

impl Io {
    /// Reads what the socket has (without waiting) into the read-ahead.
    fn read(&mut self) -> Result<(), Ending> {
        let buf = self.read.room();
        match self.stream.try_read(buf) {
            Ok(0) => {
                // Frames read before the end are handled first.
                self.read.eof = true;
                Ok(())
            }
            Ok(n) => {
                self.read.end += n;
                Ok(())
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(()),
            Err(e) => {
                self.conn.abort();
                Err(Ending::new(SessionEnd::Io(e.to_string()), None))
            }
        }
    }

    /// Feeds what was read to the machine and handles every frame, and
    /// seals what the machine owes into the batch.
    fn handle_input<A: Avatar>(&mut self, calls: &Calls<A>, mind: &Mind) -> Result<(), Ending> {
        loop {
            // Input first: exactly what the current frame still misses.
            while self.read.start < self.read.end {
                let dest = self.conn.receive_buffer();
                if dest.is_empty() {
                    break;
                }
                let k = dest.len().min(self.read.end - self.read.start);
                dest[..k].copy_from_slice(&self.read.bytes()[..k]);
                self.read.start += k;
                self.conn.commit(k);
            }
            let now = clock::now();
            match self.conn.poll_event(now) {
                Ok(Some(event)) => {
                    let owned = owned(event, calls, mind);
                    self.event(owned, calls, mind);
                    continue;
                }
                Ok(None) => {
                    // A call the machine answers `busy` or `shutting_down`
                    // itself (no event): counted before the answer goes.
                    if self.conn.refusing().is_some() {
                        calls.recorded.record(CallOutcome::Rejected, Duration::ZERO);
                    }
                }
                Err(e) => {
                    self.transmit_owed();
                    return Err(self.ended(e));
                }
            }
            if self.transmit_owed() {
                continue;
            }
            if self.read.start < self.read.end && !self.conn.receive_buffer().is_empty() {
                continue;
            }
            if self.read.eof && self.read.start == self.read.end {
                let e = self.conn.handle_eof();
                return Err(self.ended(e));
            }
            return Ok(());
        }
    }

    /// Seals every frame the machine owes into the batch; whether any.
    fn transmit_owed(&mut self) -> bool {
        let mut any = false;
        loop {
            let out = self.batch.room(OWED_ROOM);
            let Some(n) = self.conn.poll_transmit(clock::now(), out).map(<[u8]>::len) else {
                return any;
            };
            self.batch.used += n;
            any = true;
        }
    }

    /// One event of the machine, no longer borrowing it.
    fn event<A: Avatar>(&mut self, event: Owned, calls: &Calls<A>, mind: &Mind) {
        self.events = self.events.wrapping_add(1);
        match event {
            Owned::Call(token, incoming) => {
                mind.shared
                    .calls_in
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if let Some((token, result)) = calls.start(token, incoming, mind) {
                    self.answer(token, result);
                }
            }
            Owned::Reply(id, outcome) => {
                if let Some(i) = self.waiters.iter().position(|(w, _)| *w == id) {
                    let (_, waiter) = self.waiters.swap_remove(i);
                    let _ = waiter.send(outcome);
                }
                self.unpark();
            }
            Owned::Nothing => {}
        }
    }

    /// Seals the answer to a device's call into the batch (a result too
    /// large for the device is answered `FAILED` by the machine).
    fn answer(&mut self, token: ReplyToken, result: CallResult) {
        let now = clock::now();
        let max = HEADER_LEN + self.conn.peer_max_frame();
        let sealed = match &result {
            Ok(bytes) => {
                let out = self.batch.room((bytes.len() + OWED_ROOM).min(max));
                self.conn.reply(token, now, out, bytes).map(<[u8]>::len)
            }
            Err(RemoteError { code, message }) => {
                let out = self.batch.room((message.len() + OWED_ROOM).min(max));
                self.conn
                    .error(token, now, out, *code, message)
                    .map(<[u8]>::len)
            }
        };
        match sealed {
            Ok(n) => self.batch.used += n,
            Err(SendError::Closed) => {}
            Err(e) => warn!(error = %e, "answer not sent; the connection answers the call itself"),
        }
    }

    /// A message queued by another task.
    fn queued(&mut self, o: Outbound) {
        self.events = self.events.wrapping_add(1);
        match o {
            Outbound::Answer(answer) => {
                let (token, result) = *answer;
                self.answer(token, result);
            }
            Outbound::Notify(notify) => {
                let (method, args) = &*notify;
                let max = HEADER_LEN + self.conn.peer_max_frame();
                let out = self
                    .batch
                    .room((method.len() + args.len() + OWED_ROOM).min(max));
                let sealed = self
                    .conn
                    .notify_with(clock::now(), method, out, |buf| copy_into(args, buf));
                match sealed {
                    Ok(frame) => self.batch.used += frame.len(),
                    Err(SendError::Closed) => {}
                    Err(e) => warn!(error = %e, "notification not sent"),
                }
            }
            Outbound::Call(call) => {
                self.parked.push_back(call);
                self.unpark();
            }
        }
    }

    /// Sends the parked [`Mind`] calls the machine's table has room for.
    fn unpark(&mut self) {
        while let Some(call) = self.parked.pop_front() {
            if call.reply.is_closed() {
                continue; // its caller gave up
            }
            let max = HEADER_LEN + self.conn.peer_max_frame();
            let out = self
                .batch
                .room((call.method.len() + call.args.len() + OWED_ROOM).min(max));
            let sealed =
                self.conn
                    .call_with(clock::now(), &call.method, call.timeout, out, |buf| {
                        copy_into(&call.args, buf)
                    });
            match sealed {
                Ok((id, frame)) => {
                    self.batch.used += frame.len();
                    self.waiters.push((id, call.reply));
                }
                Err(SendError::TooManyCalls) => {
                    self.parked.push_front(call);
                    return;
                }
                Err(SendError::TooLarge { .. }) => {
                    let _ = call.reply.send(Err(CallError::TooLarge));
                }
                Err(_) => {
                    let _ = call.reply.send(Err(CallError::Closed));
                }
            }
        }
    }

    /// The session's end for a machine's error (the goodbye it owes, if
    /// any, is in the batch).
    fn ended(&self, e: ConnectionError) -> Ending {
        let rejected = |r| self.metrics.rejected(r);
        let end = match e {
            ConnectionError::Frame(FrameError::Truncated { .. }) => {
                SessionEnd::Io("connection closed in the middle of a frame".into())
            }
            ConnectionError::Frame(e) => {
                rejected(Rejection::BadFrame);
                SessionEnd::ProtocolError(format!("bad frame: {e}"))
            }
            ConnectionError::Session(e) => {
                rejected(match e {
                    SessionError::BadTag => Rejection::BadTag,
                    SessionError::Replayed { .. } => Rejection::Replayed,
                    SessionError::OutOfOrder { .. } => Rejection::OutOfOrder,
                    SessionError::TooShort { .. } => Rejection::TooShort,
                    _ => Rejection::Undecodable,
                });
                SessionEnd::ProtocolError(e.to_string())
            }
            ConnectionError::Protocol(v) => {
                match v {
                    Violation::UnknownReply(_) | Violation::UnknownError(_) => {
                        rejected(Rejection::UnknownReply)
                    }
                    Violation::DuplicateCall(_) => rejected(Rejection::DuplicateCall),
                    _ => {}
                }
                SessionEnd::ProtocolError(v.to_string())
            }
            ConnectionError::Closed(reason) => {
                debug!(%reason, "device said goodbye");
                SessionEnd::Goodbye(reason)
            }
            ConnectionError::Disconnected => SessionEnd::Closed,
            ConnectionError::IdleTimeout => SessionEnd::IdleTimeout,
            e => SessionEnd::Io(e.to_string()),
        };
        Ending::new(end, None)
    }

    /// Gives the lent buffers back once no bytes are in flight.
    fn release_idle(&mut self) {
        if self.read.start == self.read.end {
            self.read.release();
        }
        if self.batch.used == 0 {
            self.batch.release();
        }
        if let Some(storage) = self.conn.idle_receive_storage() {
            storage.release();
        }
    }

    /// Writes the batch.
    async fn flush_now(&mut self) -> std::io::Result<()> {
        if self.broken {
            return Err(std::io::Error::other(
                "session broken: nothing more may be sent",
            ));
        }
        let used = self.batch.used;
        if used == 0 {
            return Ok(());
        }
        let written = self.stream.write_all(&self.batch.buf[..used]).await;
        self.batch.used = 0;
        written?;
        self.stream.flush().await
    }
}

/// What an event asks of the driver, owned.
enum Owned {
    /// A device's call to run.
    Call(ReplyToken, IncomingCall),
    /// The outcome of a [`Mind`] call.
    Reply(u32, Result<Vec<u8>, CallError>),
    /// Handled already (a notification).
    Nothing,
}

/// Takes what the driver needs out of an event (a notification is handed
/// to the avatar at once).
fn owned<A: Avatar>(event: Event<'_>, calls: &Calls<A>, mind: &Mind) -> Owned {
    match event {
        Event::Call(call) => {
            let incoming = IncomingCall {
                id: call.id(),
                method: call.method().to_string(),
                args: call.args().to_vec(),
            };
            Owned::Call(call.into_token(), incoming)
        }
        Event::Notify(n) => {
            calls.notify(n.method, n.args, mind);
            Owned::Nothing
        }
        Event::Reply(reply) => {
            let outcome = match reply.result {
                Ok(bytes) => Ok(bytes.to_vec()),
                Err(CallFailure::Remote { code, message }) => {
                    Err(CallError::Remote(RemoteError::new(code, message)))
                }
                Err(CallFailure::TimedOut) => Err(CallError::Timeout),
            };
            Owned::Reply(reply.id, outcome)
        }
        _ => Owned::Nothing,
    }
}

/// Copies `args` to the start of `buf` (a call's or a notification's
/// arguments, encoded by the caller's task).
fn copy_into(args: &[u8], buf: &mut [u8]) -> Result<usize, tether_core::message::EncodeError> {
    let dest = buf
        .get_mut(..args.len())
        .ok_or(tether_core::message::EncodeError::BufferFull)?;
    dest.copy_from_slice(args);
    Ok(args.len())
}

/// Bytes read from the socket and not yet given to the machine; the
/// buffer is lent only while it holds some.
#[derive(Default)]
struct ReadAhead {
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// The socket read 0 bytes.
    eof: bool,
}

impl ReadAhead {
    fn bytes(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    /// Where the next read goes.
    fn room(&mut self) -> &mut [u8] {
        if self.buf.is_empty() {
            self.buf = lease::take(READ_AHEAD);
        }
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        } else if self.end == self.buf.len() {
            // Never an empty room: a read into it would look like the end.
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        &mut self.buf[self.end..]
    }

    fn release(&mut self) {
        self.start = 0;
        self.end = 0;
        if !self.buf.is_empty() {
            lease::give(std::mem::take(&mut self.buf));
        }
    }
}

/// Sealed frames waiting to be written together; the buffer is lent only
/// while it holds some.
#[derive(Default)]
struct Batch {
    buf: Vec<u8>,
    used: usize,
}

impl Batch {
    fn pending(&self) -> bool {
        self.used > 0
    }

    /// `n` bytes of room after what is batched.
    fn room(&mut self, n: usize) -> &mut [u8] {
        let need = self.used + n;
        if self.buf.len() < need {
            if self.buf.is_empty() {
                self.buf = lease::take(need.max(4096));
            } else {
                let grown = need.max(self.buf.len() * 2);
                self.buf.resize(grown, 0);
            }
        }
        &mut self.buf[self.used..need]
    }

    fn release(&mut self) {
        if !self.buf.is_empty() {
            lease::give(std::mem::take(&mut self.buf));
        }
    }
}

/// The device's calls (and notifications) to the avatar.
struct Calls<A> {
    avatar: Arc<A>,
    /// Calls and notifications that had to wait, each in its own task
    /// (made by the first: most sessions never need one). They end with
    /// the mind ([`Mind::closed`]).
    tracker: OnceLock<TaskTracker>,
    recorded: CallMetrics,
}

impl<A: Avatar> Calls<A> {
    fn tracker(&self) -> &TaskTracker {
        self.tracker.get_or_init(TaskTracker::new)
    }

    /// Runs a call the machine admitted: its answer at once if the handler
    /// is ready on its first poll, else later from its own task through
    /// the mind's queue (`None` here).
    fn start(
        &self,
        token: ReplyToken,
        call: IncomingCall,
        mind: &Mind,
    ) -> Option<(ReplyToken, CallResult)> {
        let started = tokio::time::Instant::now();
        let avatar = self.avatar.clone();
        let mut call = CatchUnwind(Box::pin(async move { avatar.call(call).await }));
        match poll_once(&mut call) {
            Poll::Ready(result) => Some((token, finish_call(result, &self.recorded, started))),
            Poll::Pending => {
                let recorded = self.recorded.clone();
                let mind = mind.clone();
                self.tracker().spawn(
                    async move {
                        let result = tokio::select! {
                            r = call => r,
                            _ = mind.closed() => {
                                recorded.record(CallOutcome::Closed, started.elapsed());
                                return;
                            }
                        };
                        let result = finish_call(result, &recorded, started);
                        let answer = Outbound::Answer(Box::new((token, result)));
                        let _ = mind.shared.queue.send(answer).await;
                    }
                    .in_current_span(),
                );
                None
            }
        }
    }

    /// Hands a notification to the avatar, the same way as a call.
    fn notify(&self, method: &str, args: &[u8], mind: &Mind) {
        let avatar = self.avatar.clone();
        let (method, args) = (method.to_string(), args.to_vec());
        let mut notify = CatchUnwind(Box::pin(async move { avatar.notify(method, args).await }));
        match poll_once(&mut notify) {
            Poll::Ready(Ok(())) => {}
            Poll::Ready(Err(Panicked)) => warn!("notification handler panicked"),
            Poll::Pending => {
                let mind = mind.clone();
                self.tracker().spawn(
                    async move {
                        tokio::select! {
                            r = notify => if r.is_err() { warn!("notification handler panicked") },
                            _ = mind.closed() => {}
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
    result: Result<CallResult, Panicked>,
    recorded: &CallMetrics,
    started: tokio::time::Instant,
) -> CallResult {
    let result = result.unwrap_or_else(|Panicked| {
        warn!("call handler panicked");
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
    if let Err(RemoteError { code, .. }) = &result {
        debug!(%code, "call failed");
    }
    result
}

/// A handler panicked.
#[derive(Debug)]
struct Panicked;

/// A handler's future, with a panic in its `poll` turned into
/// [`Panicked`] (the caller drops the future then, never polls it again).
struct CatchUnwind<F: ?Sized>(Pin<Box<F>>);

impl<F: Future + ?Sized> Future for CatchUnwind<F> {
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
